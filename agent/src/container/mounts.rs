//! The host side of a service's mounts, turned into OCI mounts: `tmpfs:` entries,
//! `volumes:` (bind mounts, named and anonymous volumes, tmpfs), and `secrets:` /
//! `configs:` written as files and bind-mounted read-only.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ::spec::model::{FileMount, MountType, Service};
use ::spec::short_syntax::parse_tmpfs;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use oci_spec::runtime::Mount;

use super::{inroot, user, ContainerContext, ContainerError};

fn mount(dest: &str, typ: &str, source: &str, options: Vec<String>) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into());
    m.set_typ(Some(typ.into()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options));
    m
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

/// A name that is one path component: volumes and secret files are named by it.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Every mount the service adds to the default ones, parents before children.
pub fn service_mounts(
    service: &Service,
    ctx: &ContainerContext,
    root: BorrowedFd<'_>,
) -> Result<Vec<Mount>, ContainerError> {
    let mut mounts = Vec::new();
    for (i, entry) in service.tmpfs.iter().enumerate() {
        let t = parse_tmpfs(entry).map_err(|e| ctx.field(format!("tmpfs[{i}]"), e))?;
        // Docker's defaults for --tmpfs.
        let mut options = strings(&["nosuid", "nodev", "noexec"]);
        if let Some(size) = t.size {
            options.push(format!("size={size}"));
        }
        if let Some(mode) = t.mode {
            options.push(format!("mode={mode:o}"));
        }
        options.extend(t.options);
        mounts.push(mount(&t.target, "tmpfs", "tmpfs", options));
    }
    for (i, v) in service.volumes.iter().enumerate() {
        let field = format!("volumes[{i}]");
        if !v.target.starts_with('/') {
            return Err(ctx.field(
                field,
                format!("target {:?} must be an absolute path", v.target),
            ));
        }
        let mut options = match v.kind {
            MountType::Bind => bind_source(v, ctx, &field).map(|source| {
                let propagation = v
                    .bind
                    .as_ref()
                    .and_then(|b| b.propagation.clone())
                    .unwrap_or_else(|| "rprivate".into());
                mounts.push(mount(
                    &v.target,
                    "bind",
                    &source.to_string_lossy(),
                    vec!["rbind".into(), propagation],
                ));
            }),
            MountType::Volume => volume_dir(v, i, ctx, root, &field).map(|data| {
                mounts.push(mount(
                    &v.target,
                    "bind",
                    &data.to_string_lossy(),
                    strings(&["rbind", "rprivate"]),
                ));
            }),
            MountType::Tmpfs => {
                let mut options = strings(&["nosuid", "nodev"]);
                if let Some(t) = &v.tmpfs {
                    if let Some(size) = t.size {
                        options.push(format!("size={size}"));
                    }
                    if let Some(mode) = t.mode {
                        options.push(format!("mode={mode:o}"));
                    }
                }
                mounts.push(mount(&v.target, "tmpfs", "tmpfs", options));
                Ok(())
            }
        };
        options = options.map(|()| {
            if v.read_only {
                if let Some(opts) = mounts.last_mut().and_then(|m| m.options_mut().as_mut()) {
                    opts.push("ro".into());
                }
            }
        });
        options?;
    }
    for (kind, list) in [("secrets", &service.secrets), ("configs", &service.configs)] {
        for (i, fm) in list.iter().enumerate() {
            let field = format!("{kind}[{i}]");
            let source = file_object(kind, fm, ctx, root, &field)?;
            // Configs may be programs (an entrypoint script, a CGI): their mode says
            // whether they run. Secrets never do.
            let options: &[&str] = if kind == "secrets" {
                &["bind", "rprivate", "ro", "nosuid", "nodev", "noexec"]
            } else {
                &["bind", "rprivate", "ro", "nosuid", "nodev"]
            };
            mounts.push(mount(
                &fm.target,
                "bind",
                &source.to_string_lossy(),
                strings(options),
            ));
        }
    }
    // Parents first: `/data` must be mounted before `/data/cache`, whatever the order
    // in the file (Docker sorts the same way).
    mounts.sort_by_key(|m| m.destination().components().count());
    Ok(mounts)
}

fn bind_source(
    v: &::spec::model::Mount,
    ctx: &ContainerContext,
    field: &str,
) -> Result<PathBuf, ContainerError> {
    let Some(source) = v.source.as_deref() else {
        return Err(ctx.field(field, "a bind mount needs a source"));
    };
    let path = PathBuf::from(source);
    if !path.is_absolute() {
        return Err(ctx.field(
            field,
            format!("bind source {source:?} must be an absolute path"),
        ));
    }
    if let Some(subpath) = v.volume.as_ref().and_then(|o| o.subpath.as_ref()) {
        return Err(ctx.field(
            field,
            format!("volume.subpath {subpath:?} applies to volumes, not binds"),
        ));
    }
    match std::fs::symlink_metadata(&path) {
        Ok(_) => Ok(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if v.bind.as_ref().is_some_and(|b| b.create_host_path) {
                std::fs::create_dir_all(&path).map_err(|e| {
                    ctx.field(field, format!("cannot create bind source {source}: {e}"))
                })?;
                Ok(path)
            } else {
                Err(ctx.field(
                    field,
                    format!("bind source {source} does not exist; create it, or set bind.create_host_path: true"),
                ))
            }
        }
        Err(e) => Err(ctx.field(field, format!("bind source {source}: {e}"))),
    }
}

/// `<state>/volumes/<name>/_data`, created on first use and then seeded with what the
/// image has at the mount's target (unless `volume.nocopy`), as Docker does.
fn volume_dir(
    v: &::spec::model::Mount,
    index: usize,
    ctx: &ContainerContext,
    root: BorrowedFd<'_>,
    field: &str,
) -> Result<PathBuf, ContainerError> {
    let options = v.volume.clone().unwrap_or_default();
    if let Some(subpath) = &options.subpath {
        return Err(ctx.field(
            field,
            format!("volume.subpath {subpath:?} is not supported yet"),
        ));
    }
    let name = match &v.source {
        Some(key) => {
            let def = ctx.volumes.get(key);
            if let Some(driver) = def
                .and_then(|d| d.driver.as_deref())
                .filter(|d| *d != "local")
            {
                return Err(ctx.field(
                    field,
                    format!(
                        "volume {key:?} uses driver {driver:?}; only the local driver is supported"
                    ),
                ));
            }
            def.map(|d| d.name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| key.clone())
        }
        // Anonymous: one per container and mount, removed with nothing (like Docker's
        // without --rm); the agent's volume pruning will collect them.
        None => format!("{}-anon-{index}", ctx.id),
    };
    if !plain_name(&name) {
        return Err(ctx.field(
            field,
            format!("volume name {name:?} must be letters, digits, '_', '.' and '-'"),
        ));
    }
    let volume = ctx.state_dir.join("volumes").join(&name);
    let data = volume.join("_data");
    if data.is_dir() {
        return Ok(data);
    }
    std::fs::create_dir_all(&volume).map_err(ctx.io("create volume", &volume))?;
    // Seeded in a side directory and renamed: a crash half-way never leaves a volume
    // that looks seeded but is not. The side directory is this container's own, and
    // the rename never replaces: two containers that make the volume at once (replicas
    // starting together) each seed their own, the first rename wins, and the other
    // uses the winner's (which may already be mounted, so it must not be replaced).
    let fresh = volume.join(format!("_data.new.{}", ctx.id));
    match std::fs::remove_dir_all(&fresh) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx.io("clean", &fresh)(e)),
    }
    std::fs::create_dir(&fresh).map_err(ctx.io("create volume", &fresh))?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755))
        .map_err(ctx.io("chmod", &fresh))?;
    if !options.nocopy {
        seed(root, Path::new(&v.target), &fresh)
            .map_err(ctx.io("seed volume from the image", &fresh))?;
    }
    match nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &fresh,
        nix::fcntl::AT_FDCWD,
        &data,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => {}
        Err(Errno::EEXIST) | Err(Errno::ENOTEMPTY) => {
            let _ = std::fs::remove_dir_all(&fresh);
        }
        Err(e) => return Err(ctx.io("create volume", &data)(e.into())),
    }
    Ok(data)
}

fn seed(root: BorrowedFd<'_>, target: &Path, fresh: &Path) -> io::Result<()> {
    let src = match inroot::open(root, target, OFlag::O_PATH | OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        // Nothing at the target in the image (or not a directory): an empty volume.
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let dst = inroot::open_root(fresh)?;
    let dst = nix::fcntl::openat(
        &dst,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    inroot::copy_tree(&src, &dst)?;
    // The volume's root takes the image directory's owner and mode.
    let st = nix::sys::stat::fstat(&src)?;
    nix::unistd::fchown(
        &dst,
        Some(nix::unistd::Uid::from_raw(st.st_uid)),
        Some(nix::unistd::Gid::from_raw(st.st_gid)),
    )?;
    nix::sys::stat::fchmod(
        &dst,
        nix::sys::stat::Mode::from_bits_truncate(st.st_mode & 0o7777),
    )?;
    Ok(())
}

/// Mounts a tmpfs on a container's `secrets/` directory, once: secrets are written
/// to memory, never to the node's disk (as Docker does), and go when the container's
/// directory is unmounted and removed. Small (secrets are), root's only, and nothing
/// on it can be a device, a set-uid program or run at all.
fn secrets_tmpfs(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(dir);
    if std::fs::metadata(dir)?.dev() != std::fs::metadata(parent)?.dev() {
        return Ok(()); // mounted already (a second secret)
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700,size=16m"),
    )
    .map_err(io::Error::from)
}

/// Writes a secret's or config's content to `<container>/<kind>/<name>` with its
/// owner and mode, and returns the file to bind-mount.
fn file_object(
    kind: &str,
    fm: &FileMount,
    ctx: &ContainerContext,
    root: BorrowedFd<'_>,
    field: &str,
) -> Result<PathBuf, ContainerError> {
    let objects = if kind == "secrets" {
        &ctx.secrets
    } else {
        &ctx.configs
    };
    let Some(obj) = objects.get(&fm.source) else {
        return Err(ctx.field(
            field,
            format!(
                "{} {:?} is not defined in the top-level {kind}",
                &kind[..kind.len() - 1],
                fm.source
            ),
        ));
    };
    if !fm.target.starts_with('/') {
        return Err(ctx.field(
            field,
            format!("target {:?} must be an absolute path", fm.target),
        ));
    }
    if !plain_name(&fm.source) {
        return Err(ctx.field(
            field,
            format!(
                "source {:?} must be letters, digits, '_', '.' and '-'",
                fm.source
            ),
        ));
    }
    let recorded = ctx.data.get(&format!("{kind}.{}", fm.source));
    let content = if let Some(encoded) = recorded {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| ctx.field(field, format!("the recorded content is not base64: {e}")))?
    } else if let Some(text) = &obj.content {
        text.clone().into_bytes()
    } else if let Some(var) = &obj.environment {
        ctx.environment
            .get(var)
            .ok_or_else(|| {
                ctx.field(
                    field,
                    format!(
                        "environment variable {var} (the source of {:?}) is not set",
                        fm.source
                    ),
                )
            })?
            .clone()
            .into_bytes()
    } else if let Some(file) = &obj.file {
        std::fs::read(file).map_err(|e| ctx.field(field, format!("cannot read {file}: {e}")))?
    } else {
        return Err(ctx.field(
            field,
            format!(
                "{:?} is external; external {kind} are not supported yet",
                fm.source
            ),
        ));
    };
    let id = |value: &Option<String>, group: bool| -> Result<u32, ContainerError> {
        match value {
            None => Ok(0),
            Some(v) => user::resolve_id(root.as_fd(), v, group).map_err(|e| ctx.field(field, e)),
        }
    };
    let (uid, gid) = (id(&fm.uid, false)?, id(&fm.gid, true)?);
    let mode = fm.mode.unwrap_or(0o444);
    let dir = ctx.dir().join(kind);
    std::fs::create_dir_all(&dir).map_err(ctx.io("create", &dir))?;
    if kind == "secrets" {
        secrets_tmpfs(&dir).map_err(ctx.io("mount a tmpfs on", &dir))?;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(ctx.io("chmod", &dir))?;
    let path = dir.join(&fm.source);
    let write = || -> io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        io::Write::write_all(&mut file, &content)?;
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()
    };
    write().map_err(ctx.io("write", &path))?;
    Ok(path)
}

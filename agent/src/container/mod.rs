//! From an image and a Compose service to a runnable OCI bundle: the container's
//! overlayfs root filesystem (`rootfs.rs`), its `config.json` built from the image's
//! config and the service with Docker's semantics (`spec.rs`), the user resolved from
//! the image's own /etc/passwd and /etc/group (`user.rs`), and the host side of its
//! mounts: named volumes seeded from the image, bind sources, secrets and configs
//! written as files (`mounts.rs`).
//!
//! Where to start reading: [`prepare`] does all of it for one container and returns a
//! [`runtime::Bundle`] ready for [`runtime::run`]; [`remove`] undoes it.
//!
//! On disk, under the agent's state directory:
//! - `containers/<id>/` is the bundle directory: `rootfs/` (the overlay mount point),
//!   `upper/` and `work/` (the overlay's writable layer), `secrets/` and `configs/`
//!   (the files bind-mounted into the container);
//! - `volumes/<name>/_data` is a named volume, shared by every container using it;
//! - `init/{base,net}` are the init layers, the lowest layer of every container's
//!   overlay: its standard mount points, made once ([`init_layer`]).
//!
//! Every path that comes from the image (the user database, a volume's seed content, the
//! working directory) is opened inside the rootfs with `openat2(RESOLVE_IN_ROOT)`, so a
//! symlink in the image can never make the agent read or write the host's files.

pub mod devices;
pub mod init_layer;
mod inroot;
pub mod mounts;
pub mod rootfs;
mod seccomp;
pub mod spec;
pub mod user;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use spec::bundle_for;

use crate::image::{Image, ImageError, ImageStore};
use crate::runtime::{self, RuntimeError};

pub use rootfs::Rootfs;

/// Why a container could not be prepared. A mistake in the stack names the service
/// and the field, like the loader's diagnostics: `services.web.user: ...`.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("services.{service}.{field}: {reason}")]
    Field {
        service: String,
        field: String,
        reason: String,
    },
    #[error("container {id}: {op} {path}: {source}")]
    Io {
        id: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What a container needs besides its image and service: where it lives, its names,
/// and the stack's top-level objects its service refers to.
#[derive(Debug, Clone, Default)]
pub struct ContainerContext {
    /// The container id: names its directory and (by default) its cgroup.
    pub id: String,
    /// The service's key in the stack, for error messages.
    pub service: String,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// The hostname when the service sets none (Docker uses the container id's prefix).
    pub hostname: String,
    /// `linux.cgroupsPath`; `None` keeps the runtime's default (`berth/<id>`).
    pub cgroups_path: Option<PathBuf>,
    /// The stack's top-level `volumes:`, by key (the volume's real name is inside).
    pub volumes: BTreeMap<String, spec_model::Volume>,
    /// The stack's top-level `secrets:` and `configs:`, by key.
    pub secrets: BTreeMap<String, spec_model::FileObject>,
    pub configs: BTreeMap<String, spec_model::FileObject>,
    /// The environment `environment:`-sourced secrets and configs are read from.
    pub environment: BTreeMap<String, String>,
    /// The content of file-sourced secrets and configs as `up` read it
    /// (`secrets.<key>` -> base64), preferred over reading the file (which a cluster
    /// node other than `up`'s host has not).
    pub data: BTreeMap<String, String>,
    /// The container will get `/etc/hosts` and `/etc/resolv.conf` bind-mounted (it is
    /// connected to a network): its init layer has them (see [`init_layer`]).
    pub network_files: bool,
}

use ::spec::model as spec_model;

impl ContainerContext {
    /// `<state>/containers/<id>`: the bundle directory.
    pub fn dir(&self) -> PathBuf {
        container_dir(&self.state_dir, &self.id)
    }

    pub(crate) fn field(
        &self,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> ContainerError {
        ContainerError::Field {
            service: self.service.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(
        &self,
        op: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> ContainerError {
        let (id, path) = (self.id.clone(), path.to_path_buf());
        move |source| ContainerError::Io {
            id,
            op,
            path,
            source,
        }
    }
}

/// `<state>/containers/<id>`.
pub fn container_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("containers").join(id)
}

/// A container made ready to run: its bundle (config in memory, rootfs mounted).
#[derive(Debug)]
pub struct Prepared {
    pub bundle: runtime::Bundle,
    pub rootfs: Rootfs,
}

/// Mounts the container's rootfs from `image`'s layers, builds its spec from `image`
/// and `service`, and returns the bundle. On error nothing is left mounted.
pub fn prepare(
    store: &ImageStore,
    image: &Image,
    service: &spec_model::Service,
    ctx: &ContainerContext,
) -> Result<Prepared, ContainerError> {
    check_id(&ctx.id)?;
    let mut layers = store.layer_dirs(image)?;
    // Topmost first: the init layer goes under the image's own.
    let init = init_layer::ensure(&ctx.state_dir, ctx.network_files)
        .map_err(ctx.io("create the init layer for", &ctx.state_dir.join("init")))?;
    layers.push(init);
    let rootfs = Rootfs::mount(&ctx.state_dir, &ctx.id, &layers)?;
    let built = bundle_for(image, service, ctx)
        .and_then(|spec| Ok(runtime::Bundle::from_spec(&ctx.dir(), spec)?));
    match built {
        Ok(bundle) => Ok(Prepared { bundle, rootfs }),
        Err(e) => {
            // The error that stopped us matters more than a failed cleanup.
            let _ = remove(&ctx.state_dir, &ctx.id);
            Err(e)
        }
    }
}

/// Unmounts the container's rootfs and deletes its directory (upper layer, secrets).
/// Volumes stay. Removing a container that is already gone is not an error.
pub fn remove(state_dir: &Path, id: &str) -> Result<(), ContainerError> {
    check_id(id)?;
    rootfs::unmount(state_dir, id)?;
    let dir = container_dir(state_dir, id);
    // Secrets live on a tmpfs of their own (`mounts::secrets_tmpfs`).
    rootfs::unmount_all(&dir.join("secrets"), id)?;
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ContainerError::Io {
            id: id.to_string(),
            op: "remove",
            path: dir,
            source,
        }),
    }
}

/// Marks `dir` as a "top directory" for ext4 (`chattr +T`, `FS_TOPDIR_FL`): each new
/// subdirectory goes to a block group of its own choosing (the Orlov allocator spreads
/// them as it does the root's) instead of its parent's. Best effort: other file
/// systems ignore the flag or refuse it, which changes nothing.
///
/// Why: on ext4 without a journal, every inode allocation scans past the inodes freed
/// in the same group in the last minute. All containers' directories and files used
/// to share one group, so after a `down` of N containers each file the next `up`
/// created scanned past all of theirs (half the CPU time of `up -d` of 50 after a
/// `down`, `perf record`). Spread, a container's files land in a group that the last
/// `down` has mostly not touched.
pub(crate) fn spread_subdirectories(dir: &Path) {
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(file) = std::fs::File::open(dir) else {
        return;
    };
    use std::os::fd::AsRawFd;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int into `flags`, which lives for the call;
    // the fd is an open directory we own.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0
        || flags & FS_TOPDIR_FL != 0
    {
        return;
    }
    flags |= FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`, as above.
    unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
}

/// A container id names a directory under the state dir, so it follows the runtime's
/// rule for ids (a plain name): no id can reach outside `containers/`.
fn check_id(id: &str) -> Result<(), ContainerError> {
    Ok(crate::runtime::check_id(id)?)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    const EXT4_SUPER_MAGIC: i64 = 0xEF53;

    fn flags(dir: &std::path::Path) -> libc::c_int {
        let file = std::fs::File::open(dir).expect("open the dir");
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one int into `flags`.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        flags
    }

    #[test]
    fn container_dirs_spread_their_subdirectories_on_ext4() {
        let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let dir = tmp.path().join("containers");
        std::fs::create_dir(&dir).unwrap();
        // SAFETY: statfs fills the zeroed struct we own from a NUL-terminated path.
        let magic = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(libc::statfs(path.as_ptr(), &mut st), 0);
            st.f_type as i64
        };
        super::spread_subdirectories(&dir);
        super::spread_subdirectories(&dir);
        assert!(dir.is_dir());
        if magic == EXT4_SUPER_MAGIC {
            assert_ne!(flags(&dir) & 0x0002_0000, 0, "FS_TOPDIR_FL is set");
        }
    }
}

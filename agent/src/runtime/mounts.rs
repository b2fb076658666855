//! The container's filesystem: the spec's mounts planned in the parent (options parsed,
//! paths split into components, everything a C string) and carried out in the child,
//! before and after `pivot_root`.
//!
//! Every mount destination is resolved once, inside the root filesystem, with
//! `openat2(RESOLVE_IN_ROOT)`: a symlink in the image (`/data -> /etc`) resolves to the
//! image's `/etc`, never the host's (CVE-2021-30465). Missing directories are created
//! one component at a time the same way. The mount itself is made with the kernel's
//! mount API (5.12+): a detached mount is created (`fsopen`/`fsmount` for a new
//! filesystem, `open_tree` for a bind), given its attributes and propagation while
//! still detached (`mount_setattr`), and only then attached onto the resolved
//! descriptor (`move_mount`). There is no second lookup of the destination (a bind's
//! read-only remount used to resolve it again) and no `/proc/self/fd/N` path, which
//! after `pivot_root` would go through the container's own, replaceable, `/proc`.
//!
//! After `pivot_root`, masking binds the null device by descriptor, opened once and
//! checked to be the character device 1:3 (an image's `dev/null` symlink to a host
//! file would otherwise turn every masked path into a writable bind of that file:
//! CVE-2025-31133); writes under `/proc` go through [`open_proc_file`], which checks
//! that it is the kernel's procfs (CVE-2025-52881's pattern).
//!
//! Functions marked "child" run between clone and execve: system calls over prepared
//! data only (see the module doc of `runtime`).

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component as PathComponent, Path, PathBuf};

use libc::{c_int, c_ulong};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};

use super::cgroups::{v1, Hierarchy};
use super::RuntimeError;

/// One component of a destination: the path from the root up to and including it,
/// its parent's path (`None` for the root itself), and its name.
#[derive(Debug)]
pub(crate) struct Component {
    pub path: CString,
    pub parent: Option<CString>,
    pub name: CString,
}

/// A path inside the container's root, split for component-wise resolution.
#[derive(Debug)]
pub(crate) struct Dest {
    pub components: Vec<Component>,
}

impl Dest {
    pub fn new(path: &Path) -> Result<Dest, RuntimeError> {
        let mut components = Vec::new();
        let mut prefix: Option<Vec<u8>> = None;
        for comp in path.components() {
            let name = match comp {
                PathComponent::RootDir | PathComponent::CurDir => continue,
                PathComponent::Normal(n) => n.as_bytes().to_vec(),
                PathComponent::ParentDir | PathComponent::Prefix(_) => {
                    return Err(RuntimeError::unsupported(format!(
                        "path {} must not contain '..'",
                        path.display()
                    )))
                }
            };
            let mut full = prefix
                .clone()
                .map(|mut p| {
                    p.push(b'/');
                    p
                })
                .unwrap_or_default();
            full.extend_from_slice(&name);
            components.push(Component {
                path: cstring(&full)?,
                parent: prefix.as_deref().map(cstring).transpose()?,
                name: cstring(&name)?,
            });
            prefix = Some(full);
        }
        if components.is_empty() {
            return Err(RuntimeError::unsupported(format!(
                "mount destination {} is the root itself",
                path.display()
            )));
        }
        Ok(Dest { components })
    }
}

pub(crate) fn cstring(bytes: &[u8]) -> Result<CString, RuntimeError> {
    CString::new(bytes)
        .map_err(|_| RuntimeError::unsupported("a path or string contains a NUL byte"))
}

pub(crate) fn cpath(path: &Path) -> Result<CString, RuntimeError> {
    cstring(path.as_os_str().as_bytes())
}

/// One mount, ready to make.
#[derive(Debug)]
pub(crate) struct MountOp {
    /// The destination as the spec wrote it, for error messages.
    pub display: String,
    pub dest: Dest,
    /// The destination is a file (a bind mount of a file), not a directory.
    pub file: bool,
    pub kind: MountKind,
    /// `MOUNT_ATTR_*` set on the new mount before it is attached (read-only, nosuid,
    /// nodev, noexec, atime), and those cleared (the atime mask when one is chosen).
    pub attr_set: u64,
    pub attr_clr: u64,
    /// MS_PRIVATE, MS_SLAVE... (without MS_REC), applied before it is attached.
    pub propagation: u64,
    pub propagation_recursive: bool,
}

/// How the mount is made.
#[derive(Debug)]
pub(crate) enum MountKind {
    /// A new filesystem: `fsopen(fstype)`, one `fsconfig` per option (the data string
    /// of mount(2), split at commas, and the superblock flags), `fsmount`.
    Fs {
        fstype: CString,
        source: Option<CString>,
        options: Vec<FsOption>,
    },
    /// A bind of a host path (resolved before `pivot_root`): `open_tree` clone,
    /// recursive for `rbind`.
    Bind { source: CString, recursive: bool },
    /// The container's cgroups on a v1 host, as runc shows them: a tmpfs with the
    /// container's own cgroup directory of each controller bound into it, as
    /// (controller, host directory); read-only when the mount is.
    CgroupV1 {
        controllers: Vec<(CString, CString)>,
        /// The tmpfs's options (`mode=755`, as runc's).
        tmpfs: Vec<FsOption>,
    },
}

/// One `fsconfig` call: `key=value` (FSCONFIG_SET_STRING) or a bare `key`
/// (FSCONFIG_SET_FLAG), as mount(2) splits its data string.
#[derive(Debug)]
pub(crate) struct FsOption {
    pub key: CString,
    pub value: Option<CString>,
}

/// Where the container's cgroups are, for a `cgroup` mount.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CgroupView<'a> {
    pub hierarchy: &'a Hierarchy,
    /// The container's cgroup, relative to the hierarchy's root(s).
    pub rel: &'a Path,
    /// The container has a cgroup namespace of its own.
    pub namespace: bool,
}
/// A device node from `linux.devices`.
#[derive(Debug)]
pub(crate) struct DeviceNode {
    pub display: String,
    pub dest: Dest,
    pub mode: libc::mode_t,
    pub dev: libc::dev_t,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Everything the child does to build its root filesystem before `pivot_root`.
#[derive(Debug, Default)]
pub(crate) struct RootfsPlan {
    pub rootfs: CString,
    /// Propagation of `/` in the new mount namespace (rprivate unless the spec says).
    pub root_propagation: c_ulong,
    /// A `shared` rootfsPropagation, applied to the new `/` after `pivot_root` (see
    /// [`plan`]).
    pub shared_root: Option<c_ulong>,
    pub mounts: Vec<MountOp>,
    /// Symlinks made in /dev when /dev is a fresh tmpfs: (target, name).
    pub dev_symlinks: Vec<(CString, CString)>,
    pub devices: Vec<DeviceNode>,
    pub readonly_root: bool,
}

/// The device nodes every container gets in a tmpfs /dev, bind-mounted from the host's
/// (which works in a user namespace too, where mknod does not).
const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
    ("/proc/kcore", "core"),
];

/// Parses mount options into (flags, propagation, data).
pub(crate) fn parse_options(
    options: &[String],
) -> Result<(c_ulong, c_ulong, Vec<String>), RuntimeError> {
    let mut flags: c_ulong = 0;
    let mut propagation: c_ulong = 0;
    let mut data = Vec::new();
    for opt in options {
        let (set, clear): (c_ulong, c_ulong) = match opt.as_str() {
            "defaults" => (0, 0),
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                propagation = propagation_flags(opt)?;
                continue;
            }
            "tmpcopyup" | "idmap" | "ridmap" | "recursive" => {
                return Err(RuntimeError::unsupported(format!(
                    "mount option {opt} is not supported yet"
                )))
            }
            _ => {
                data.push(opt.clone());
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    Ok((flags, propagation, data))
}

/// The flags of a propagation mode (`rprivate`, `slave`...).
pub(crate) fn propagation_flags(mode: &str) -> Result<c_ulong, RuntimeError> {
    let (rec, base) = match mode.strip_prefix('r') {
        Some(rest) => (libc::MS_REC, rest),
        _ => (0, mode),
    };
    let flag = match base {
        "private" => libc::MS_PRIVATE,
        "shared" => libc::MS_SHARED,
        "slave" => libc::MS_SLAVE,
        "unbindable" => libc::MS_UNBINDABLE,
        _ => {
            return Err(RuntimeError::unsupported(format!(
                "unknown mount propagation {mode}"
            )))
        }
    };
    Ok(flag | rec)
}

/// The `MOUNT_ATTR_*` to set and clear for mount(2) flags.
pub(crate) fn mount_attrs(flags: c_ulong) -> (u64, u64) {
    let mut set = 0;
    let mut clr = 0;
    for (ms, attr) in [
        (libc::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
        (libc::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
        (libc::MS_NODEV, libc::MOUNT_ATTR_NODEV),
        (libc::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
        (libc::MS_NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
    ] {
        if flags & ms != 0 {
            set |= attr;
        }
    }
    // One atime mode, replacing whatever the mount had (relatime is 0).
    for (ms, attr) in [
        (libc::MS_NOATIME, libc::MOUNT_ATTR_NOATIME),
        (libc::MS_STRICTATIME, libc::MOUNT_ATTR_STRICTATIME),
        (libc::MS_RELATIME, libc::MOUNT_ATTR_RELATIME),
    ] {
        if flags & ms != 0 {
            set |= attr;
            clr |= libc::MOUNT_ATTR__ATIME;
            break;
        }
    }
    (set, clr)
}

/// The `fsconfig` calls for a new filesystem: mount(2)'s superblock flags, then its
/// data options.
fn fs_options(flags: c_ulong, data: &[String]) -> Result<Vec<FsOption>, RuntimeError> {
    let mut options = Vec::new();
    for (ms, key) in [
        (libc::MS_RDONLY, "ro"),
        (libc::MS_SYNCHRONOUS, "sync"),
        (libc::MS_DIRSYNC, "dirsync"),
        (libc::MS_MANDLOCK, "mand"),
    ] {
        if flags & ms != 0 {
            options.push(FsOption {
                key: cstring(key.as_bytes())?,
                value: None,
            });
        }
    }
    for d in data
        .iter()
        .flat_map(|d| d.split(','))
        .filter(|d| !d.is_empty())
    {
        let (key, value) = match d.split_once('=') {
            Some((k, v)) => (k, Some(cstring(v.as_bytes())?)),
            None => (d, None),
        };
        options.push(FsOption {
            key: cstring(key.as_bytes())?,
            value,
        });
    }
    Ok(options)
}

/// How a `cgroup` (or `cgroup2`) mount shows the container its own cgroup: on v2 a
/// cgroup2 filesystem, whose root is the container's cgroup namespace (or, without
/// one, a bind of the container's cgroup directory); on v1 a tmpfs with the
/// container's directory of each controller bound into it (runc's `mountCgroupV1`).
fn cgroup_kind(display: &str, view: Option<CgroupView>) -> Result<MountKind, RuntimeError> {
    let Some(view) = view else {
        return Err(RuntimeError::unsupported(format!(
            "mount {display}: the cgroup hierarchy is not known"
        )));
    };
    match view.hierarchy {
        Hierarchy::V2 { .. } if view.namespace => Ok(MountKind::Fs {
            fstype: c"cgroup2".into(),
            source: Some(c"cgroup".into()),
            options: Vec::new(),
        }),
        Hierarchy::V2 { root } => Ok(MountKind::Bind {
            source: cpath(&root.join(view.rel))?,
            recursive: false,
        }),
        Hierarchy::V1 { root } => {
            let mut controllers = Vec::new();
            for c in v1::CONTROLLERS {
                let base: PathBuf = root.join(c);
                if base.is_dir() {
                    controllers.push((cstring(c.as_bytes())?, cpath(&base.join(view.rel))?));
                }
            }
            Ok(MountKind::CgroupV1 {
                controllers,
                tmpfs: fs_options(0, &["mode=755".to_string()])?,
            })
        }
    }
}

/// Plans the spec's mounts (and the default devices when /dev is a tmpfs).
pub(crate) fn plan(
    bundle_dir: &Path,
    rootfs: &Path,
    mounts: &[Mount],
    devices: &[LinuxDevice],
    root_propagation: Option<&str>,
    readonly_root: bool,
    cgroup: Option<CgroupView>,
) -> Result<RootfsPlan, RuntimeError> {
    let mut ops = Vec::new();
    let mut dev_tmpfs = false;
    for m in mounts {
        let display = m.destination().display().to_string();
        if !m.destination().is_absolute() {
            return Err(RuntimeError::unsupported(format!(
                "mount destination {display} must be absolute"
            )));
        }
        let (mut flags, propagation, data) =
            parse_options(m.options().as_deref().unwrap_or_default())?;
        let typ = m.typ().clone().unwrap_or_default();
        if typ == "bind" {
            flags |= libc::MS_BIND;
        }
        let bind = flags & libc::MS_BIND != 0;
        let mut file = false;
        let kind = if bind {
            let src = bundle_dir.join(m.source().clone().unwrap_or_default());
            let meta = std::fs::metadata(&src).map_err(|e| {
                RuntimeError::io(format!("mount {display}: source {}", src.display()), e)
            })?;
            file = !meta.is_dir();
            MountKind::Bind {
                source: cpath(&src)?,
                recursive: flags & libc::MS_REC != 0,
            }
        } else if typ == "cgroup" || typ == "cgroup2" {
            cgroup_kind(&display, cgroup)?
        } else if typ.is_empty() {
            return Err(RuntimeError::unsupported(format!(
                "mount {display}: type is missing (give the filesystem type, or bind)"
            )));
        } else {
            MountKind::Fs {
                fstype: cstring(typ.as_bytes())?,
                source: m.source().as_deref().map(cpath).transpose()?,
                options: fs_options(flags, &data)?,
            }
        };
        if !bind && m.destination() == Path::new("/dev") {
            dev_tmpfs = true;
        }
        let (attr_set, attr_clr) = mount_attrs(flags);
        ops.push(MountOp {
            display,
            dest: Dest::new(m.destination())?,
            file,
            kind,
            attr_set,
            attr_clr,
            propagation: propagation & !libc::MS_REC,
            propagation_recursive: propagation & libc::MS_REC != 0,
        });
    }
    let mut dev_symlinks = Vec::new();
    if dev_tmpfs {
        for name in DEFAULT_DEVICES {
            let dest = Path::new("/dev").join(name);
            if ops.iter().any(|o| o.display == dest.to_string_lossy()) {
                continue;
            }
            ops.push(MountOp {
                display: dest.display().to_string(),
                dest: Dest::new(&dest)?,
                file: true,
                kind: MountKind::Bind {
                    source: cpath(&dest)?,
                    recursive: false,
                },
                attr_set: 0,
                attr_clr: 0,
                propagation: 0,
                propagation_recursive: false,
            });
        }
        for (target, name) in DEV_SYMLINKS {
            dev_symlinks.push((cstring(target.as_bytes())?, cstring(name.as_bytes())?));
        }
    }
    let devices = devices
        .iter()
        .map(|d| {
            let kind = match d.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
                LinuxDeviceType::B => libc::S_IFBLK,
                LinuxDeviceType::P => libc::S_IFIFO,
                LinuxDeviceType::A => {
                    return Err(RuntimeError::unsupported(format!(
                        "linux.devices {}: type a is only valid in resources.devices",
                        d.path().display()
                    )))
                }
            };
            Ok(DeviceNode {
                display: d.path().display().to_string(),
                dest: Dest::new(d.path())?,
                mode: kind | d.file_mode().unwrap_or(0o666),
                dev: libc::makedev(d.major() as u32, d.minor() as u32),
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, RuntimeError>>()?;
    let root_propagation = match root_propagation {
        Some(mode) if !mode.is_empty() => propagation_flags(mode)?,
        _ => libc::MS_PRIVATE | libc::MS_REC,
    };
    // A shared `/` before pivot_root is the host's peer: the rootfs bind and every
    // mount under it would appear in the host's namespace (and pivot_root refuses a
    // shared parent). As runc: slave while the root is built, then the new `/` made
    // shared, a peer group of the container's own.
    let (root_propagation, shared_root) = if root_propagation & libc::MS_SHARED != 0 {
        (libc::MS_SLAVE | libc::MS_REC, Some(root_propagation))
    } else {
        (root_propagation, None)
    };
    Ok(RootfsPlan {
        rootfs: cpath(rootfs)?,
        root_propagation,
        shared_root,
        mounts: ops,
        dev_symlinks,
        devices,
        readonly_root,
    })
}

// ---- child side -------------------------------------------------------------------

/// `errno` of the last failed call.
pub(crate) fn errno() -> c_int {
    nix::errno::Errno::last_raw()
}

/// `openat2(root, path, flags, RESOLVE_IN_ROOT)`. Child.
pub(crate) fn open_in_root(root: c_int, path: &CStr, flags: c_int) -> Result<c_int, c_int> {
    let mut how: libc::open_how = unsafe_zeroed_open_how();
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    openat2(root, path, &how)
}

/// `openat2`, retried while it fails with EAGAIN: with RESOLVE_IN_ROOT or
/// RESOLVE_BENEATH, a `..` walked while anything on the system was renamed or mounted
/// makes the kernel give up rather than risk an escape, and asks the caller to retry
/// (a host busy unpacking images or starting containers does that all the time).
/// Child.
fn openat2(dirfd: c_int, path: &CStr, how: &libc::open_how) -> Result<c_int, c_int> {
    const ATTEMPTS: usize = 4096;
    let mut result = Err(libc::EAGAIN);
    for _ in 0..ATTEMPTS {
        // SAFETY: `path` is NUL-terminated and `how` a valid open_how of the size given.
        result = fd_or_errno(unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                path.as_ptr(),
                how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        });
        if result != Err(libc::EAGAIN) {
            break;
        }
    }
    result
}

fn unsafe_zeroed_open_how() -> libc::open_how {
    // SAFETY: open_how is a plain C struct of integers; all zeroes is its documented
    // "no flags" value.
    unsafe { std::mem::zeroed() }
}

fn close(fd: c_int) {
    // SAFETY: closing a descriptor this code opened and owns.
    unsafe { libc::close(fd) };
}

/// Opens `parent` (or dups the root when `None`) as an O_PATH directory. Child.
fn open_parent(root: c_int, parent: Option<&CString>) -> Result<c_int, c_int> {
    match parent {
        Some(p) => open_in_root(root, p, libc::O_PATH | libc::O_DIRECTORY),
        None => open_in_root(root, c".", libc::O_PATH | libc::O_DIRECTORY),
    }
}

/// Makes sure every component exists as a directory, creating missing ones. Child.
fn ensure_dirs(root: c_int, comps: &[Component]) -> Result<(), c_int> {
    for c in comps {
        match open_in_root(root, &c.path, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => close(fd),
            Err(libc::ENOENT) => {
                let parent = open_parent(root, c.parent.as_ref())?;
                // SAFETY: parent is an open directory fd; name is NUL-terminated.
                let r = unsafe { libc::mkdirat(parent, c.name.as_ptr(), 0o755) };
                let e = errno();
                close(parent);
                if r != 0 && e != libc::EEXIST {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Resolves (creating if missing) a destination inside the root; returns an O_PATH fd.
/// Child.
pub(crate) fn resolve(root: c_int, dest: &Dest, file: bool) -> Result<c_int, c_int> {
    let Some((last, dirs)) = dest.components.split_last() else {
        return Err(libc::EINVAL);
    };
    ensure_dirs(root, dirs)?;
    match open_in_root(root, &last.path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let parent = open_parent(root, last.parent.as_ref())?;
    let r = if file {
        // SAFETY: parent is an open directory fd; name is NUL-terminated. O_EXCL with
        // O_NOFOLLOW: a dangling symlink is refused, never followed out of the root.
        let fd = unsafe {
            libc::openat(
                parent,
                last.name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd >= 0 {
            close(fd);
            0
        } else {
            -1
        }
    } else {
        // SAFETY: as above.
        unsafe { libc::mkdirat(parent, last.name.as_ptr(), 0o755) }
    };
    let e = errno();
    close(parent);
    if r != 0 && e != libc::EEXIST {
        return Err(e);
    }
    open_in_root(root, &last.path, libc::O_PATH)
}

/// `mount(2)`, returning errno on failure. Child.
pub(crate) fn mount(
    source: *const libc::c_char,
    target: *const libc::c_char,
    fstype: *const libc::c_char,
    flags: c_ulong,
    data: *const libc::c_char,
) -> Result<(), c_int> {
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    if unsafe { libc::mount(source, target, fstype, flags, data.cast()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Turns a system call's return into a descriptor or errno. Child.
fn fd_or_errno(ret: libc::c_long) -> Result<c_int, c_int> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret as c_int)
    }
}

/// A new filesystem of type `fstype`, configured and mounted detached, with the
/// `MOUNT_ATTR_*` in `attrs`: returns the mount's descriptor. Child.
fn new_fs(
    fstype: &CStr,
    source: Option<&CStr>,
    options: &[FsOption],
    attrs: u64,
) -> Result<c_int, c_int> {
    // SAFETY: fsopen with a NUL-terminated type name.
    let fs = fd_or_errno(unsafe {
        libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC)
    })?;
    let result = (|| {
        let config = |cmd: libc::c_uint, key: *const libc::c_char, value: *const libc::c_char| {
            // SAFETY: fsconfig on our context with NUL-terminated strings (or null).
            let r = unsafe { libc::syscall(libc::SYS_fsconfig, fs, cmd, key, value, 0) };
            if r < 0 {
                Err(errno())
            } else {
                Ok(())
            }
        };
        if let Some(source) = source {
            config(
                libc::FSCONFIG_SET_STRING,
                c"source".as_ptr(),
                source.as_ptr(),
            )?;
        }
        for o in options {
            match &o.value {
                Some(v) => config(libc::FSCONFIG_SET_STRING, o.key.as_ptr(), v.as_ptr())?,
                None => config(libc::FSCONFIG_SET_FLAG, o.key.as_ptr(), std::ptr::null())?,
            }
        }
        config(
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null(),
            std::ptr::null(),
        )?;
        // SAFETY: fsmount on a created context with integer flags.
        fd_or_errno(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                fs,
                libc::FSMOUNT_CLOEXEC,
                attrs as libc::c_uint,
            )
        })
    })();
    close(fs);
    result
}

/// A detached copy of the mount at `path` (relative to `dirfd`; `c""` with
/// AT_EMPTY_PATH for `dirfd` itself), with its submounts when `recursive`. Child.
fn clone_tree(dirfd: c_int, path: &CStr, recursive: bool) -> Result<c_int, c_int> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH as libc::c_uint;
    }
    // SAFETY: open_tree with a NUL-terminated path and integer flags.
    fd_or_errno(unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) })
}

/// Sets attributes and/or propagation on the mount `mnt` (and its submounts when
/// `recursive`). Child.
fn set_attr(
    mnt: c_int,
    set: u64,
    clr: u64,
    propagation: u64,
    recursive: bool,
) -> Result<(), c_int> {
    if set == 0 && clr == 0 && propagation == 0 {
        return Ok(());
    }
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clr,
        propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: mount_setattr on our mount descriptor with a mount_attr on our stack of
    // the size given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt,
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Attaches the detached mount `mnt` onto what `target` (an O_PATH descriptor) names.
/// Child.
fn attach(mnt: c_int, target: c_int) -> Result<(), c_int> {
    // SAFETY: move_mount between two descriptors we own, with empty paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt,
            c"".as_ptr(),
            target,
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Makes one mount inside the root: the destination is resolved once, the mount is
/// made and given its attributes detached, then attached onto that descriptor. Child.
pub(crate) fn mount_one(root: c_int, op: &MountOp) -> Result<(), c_int> {
    let target = resolve(root, &op.dest, op.file)?;
    let result = mount_at(target, op);
    close(target);
    result
}

fn mount_at(target: c_int, op: &MountOp) -> Result<(), c_int> {
    let mnt = match &op.kind {
        MountKind::Fs {
            fstype,
            source,
            options,
        } => new_fs(fstype, source.as_deref(), options, op.attr_set)?,
        MountKind::Bind { source, recursive } => clone_tree(libc::AT_FDCWD, source, *recursive)?,
        // The tmpfs stays writable until the controllers' directories are made in it.
        MountKind::CgroupV1 { tmpfs, .. } => new_fs(
            c"tmpfs",
            Some(c"tmpfs"),
            tmpfs,
            (op.attr_set & !libc::MOUNT_ATTR_RDONLY)
                | libc::MOUNT_ATTR_NOSUID
                | libc::MOUNT_ATTR_NODEV
                | libc::MOUNT_ATTR_NOEXEC,
        )?,
    };
    let result = (|| {
        if let MountKind::Bind { .. } = op.kind {
            set_attr(mnt, op.attr_set, op.attr_clr, 0, false)?;
        }
        set_attr(mnt, 0, 0, op.propagation, op.propagation_recursive)?;
        attach(mnt, target)?;
        // Still the same mount, now attached: the rest happens inside it, by
        // descriptor.
        if let MountKind::CgroupV1 { controllers, .. } = &op.kind {
            for (name, source) in controllers {
                bind_cgroup(mnt, name, source, op.attr_set, op.attr_clr)?;
            }
            set_attr(mnt, op.attr_set & libc::MOUNT_ATTR_RDONLY, 0, 0, false)?;
        }
        Ok(())
    })();
    close(mnt);
    result
}

/// Binds the container's cgroup directory `source` of one v1 controller at `name` in
/// the tmpfs `dir`, never writable to more than the mount allows, and never suid,
/// dev or exec. Child.
fn bind_cgroup(
    dir: c_int,
    name: &CStr,
    source: &CStr,
    attr_set: u64,
    attr_clr: u64,
) -> Result<(), c_int> {
    // SAFETY: mkdirat/openat in a directory we own, with a NUL-terminated name.
    let target = unsafe {
        if libc::mkdirat(dir, name.as_ptr(), 0o755) != 0 && errno() != libc::EEXIST {
            return Err(errno());
        }
        fd_or_errno(libc::openat(
            dir,
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        ) as libc::c_long)?
    };
    let result = (|| {
        let mnt = clone_tree(libc::AT_FDCWD, source, false)?;
        let r = set_attr(
            mnt,
            attr_set | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC,
            attr_clr,
            0,
            false,
        )
        .and_then(|()| attach(mnt, target));
        close(mnt);
        r
    })();
    close(target);
    result
}

/// Creates a device node from `linux.devices`. Child.
pub(crate) fn make_device(root: c_int, d: &DeviceNode) -> Result<(), c_int> {
    let Some((last, dirs)) = d.dest.components.split_last() else {
        return Err(libc::EINVAL);
    };
    ensure_dirs(root, dirs)?;
    let parent = open_parent(root, last.parent.as_ref())?;
    // SAFETY: parent is an open directory fd and the name NUL-terminated.
    let mut r = unsafe { libc::mknodat(parent, last.name.as_ptr(), d.mode, d.dev) };
    if r == 0 {
        // mknod applies the umask (022 by default: a 0666 device became 0644); the
        // spec's fileMode is the mode the node must have, as runc makes it.
        // SAFETY: as above; the node was just made in a /dev nothing else runs in.
        r = unsafe { libc::fchmodat(parent, last.name.as_ptr(), d.mode & 0o7777, 0) };
    }
    if r == 0 {
        // SAFETY: as above; AT_SYMLINK_NOFOLLOW keeps the chown on the node itself.
        r = unsafe {
            libc::fchownat(
                parent,
                last.name.as_ptr(),
                d.uid,
                d.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
    }
    let e = errno();
    close(parent);
    if r != 0 && e != libc::EEXIST {
        return Err(e);
    }
    Ok(())
}

/// Creates /dev's symlinks in a fresh tmpfs /dev. Child.
pub(crate) fn dev_symlinks(root: c_int, links: &[(CString, CString)]) -> Result<(), c_int> {
    let dev = open_in_root(root, c"dev", libc::O_PATH | libc::O_DIRECTORY)?;
    for (target, name) in links {
        // SAFETY: dev is an open directory fd; both strings are NUL-terminated.
        if unsafe { libc::symlinkat(target.as_ptr(), dev, name.as_ptr()) } != 0
            && errno() != libc::EEXIST
        {
            let e = errno();
            close(dev);
            return Err(e);
        }
    }
    close(dev);
    Ok(())
}

/// Makes the root (open as `root`) the process's `/`, detaching the old one. Child.
pub(crate) fn pivot_root(root: c_int) -> Result<(), c_int> {
    // SAFETY: plain system calls on an fd we own and static strings. pivot_root(".", ".")
    // stacks the old root on top of the new one; unmounting "." then removes it.
    unsafe {
        if libc::fchdir(root) != 0 {
            return Err(errno());
        }
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            return Err(errno());
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(errno());
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// Why a path could not be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskError {
    /// `/dev/null` is missing, or not the null device (1:3): nothing is bound from it.
    DevNull(c_int),
    Mount(c_int),
}

/// `openat2(AT_FDCWD, path, flags)` refusing magic links (`/proc/*/fd`, `/proc/*/root`),
/// which could name a descriptor or a root outside the container. Child.
fn open_no_magic(path: &CStr, flags: c_int, resolve: u64) -> Result<c_int, c_int> {
    let mut how: libc::open_how = unsafe_zeroed_open_how();
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve | libc::RESOLVE_NO_MAGICLINKS;
    openat2(libc::AT_FDCWD, path, &how)
}

fn fstat(fd: c_int) -> Result<libc::stat, c_int> {
    // SAFETY: fstat into a zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(errno());
    }
    Ok(st)
}

fn fs_magic(fd: c_int) -> Result<libc::c_long, c_int> {
    // SAFETY: fstatfs into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return Err(errno());
    }
    Ok(st.f_type)
}

/// Opens the container's `/dev/null` (after `pivot_root`) without following a symlink
/// and checks that it is the null device, character 1:3 (runc's fix of
/// CVE-2025-31133): ELOOP for a symlink, ENODEV for anything else. Child.
pub(crate) fn open_dev_null() -> Result<c_int, c_int> {
    let fd = open_no_magic(c"/dev/null", libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    let check = fstat(fd).and_then(|st| match st.st_mode & libc::S_IFMT {
        libc::S_IFCHR if st.st_rdev == libc::makedev(1, 3) => Ok(()),
        libc::S_IFLNK => Err(libc::ELOOP),
        _ => Err(libc::ENODEV),
    });
    match check {
        Ok(()) => Ok(fd),
        Err(e) => {
            close(fd);
            Err(e)
        }
    }
}

/// Hides `path`: the null device over a file, an empty read-only tmpfs over a
/// directory. A path that does not exist is fine. The path is resolved once; the null
/// device is bound from `dev_null`, opened and checked by [`open_dev_null`] at the
/// first file to mask (-1 until then; the caller closes it). Child.
pub(crate) fn mask_path(path: &CStr, dev_null: &mut c_int) -> Result<(), MaskError> {
    let target = match open_no_magic(path, libc::O_PATH, 0) {
        Ok(fd) => fd,
        Err(libc::ENOENT | libc::ENOTDIR) => return Ok(()),
        Err(e) => return Err(MaskError::Mount(e)),
    };
    let result = (|| {
        let st = fstat(target).map_err(MaskError::Mount)?;
        let mnt = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            new_fs(c"tmpfs", Some(c"tmpfs"), &[], libc::MOUNT_ATTR_RDONLY)
                .map_err(MaskError::Mount)?
        } else {
            if *dev_null < 0 {
                *dev_null = open_dev_null().map_err(MaskError::DevNull)?;
            }
            clone_tree(*dev_null, c"", false).map_err(MaskError::Mount)?
        };
        let r = attach(mnt, target).map_err(MaskError::Mount);
        close(mnt);
        r
    })();
    close(target);
    result
}

/// Makes `path` read-only, with everything mounted under it: a recursive bind onto
/// itself, made read-only while detached (keeping the nosuid, nodev, noexec it had). A
/// path that does not exist is fine. Child.
pub(crate) fn readonly_path(path: &CStr) -> Result<(), c_int> {
    let target = match open_no_magic(path, libc::O_PATH, 0) {
        Ok(fd) => fd,
        Err(libc::ENOENT | libc::ENOTDIR) => return Ok(()),
        Err(e) => return Err(e),
    };
    let result = (|| {
        let mnt = clone_tree(target, c"", true)?;
        let r =
            set_attr(mnt, libc::MOUNT_ATTR_RDONLY, 0, 0, true).and_then(|()| attach(mnt, target));
        close(mnt);
        r
    })();
    close(target);
    result
}

/// Why a file under `/proc` was not opened for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcError {
    /// `/proc` is not the root of a procfs, or the path leaves it (a mount or a
    /// symlink in the way): errno EXDEV, ELOOP or the check's.
    NotProcfs(c_int),
    Open(c_int),
}

/// Opens `path` (relative to `/proc`, e.g. `sys/net/ipv4/ip_forward`) for writing,
/// only if it is a file of the kernel's procfs: `/proc` must be the root of a procfs
/// mount (filesystem magic and root inode), and the path is resolved beneath it without
/// crossing a mount or following a magic link (nor any symlink when
/// `no_symlinks`), and the file found checked to be on procfs. A volume over `/proc`
/// or a bind over a file in it is refused (the pattern of CVE-2025-52881). Child.
pub(crate) fn open_proc_file(path: &CStr, no_symlinks: bool) -> Result<c_int, ProcError> {
    const PROC_ROOT_INO: u64 = 1;
    let proc = open_no_magic(
        c"/proc",
        libc::O_PATH | libc::O_DIRECTORY,
        libc::RESOLVE_NO_SYMLINKS,
    )
    .map_err(|e| match e {
        libc::ELOOP | libc::EXDEV => ProcError::NotProcfs(e),
        e => ProcError::Open(e),
    })?;
    let result = (|| {
        let is_proc_root = fs_magic(proc).map_err(ProcError::Open)? == libc::PROC_SUPER_MAGIC
            && fstat(proc).map_err(ProcError::Open)?.st_ino == PROC_ROOT_INO;
        if !is_proc_root {
            return Err(ProcError::NotProcfs(libc::EXDEV));
        }
        let mut how: libc::open_how = unsafe_zeroed_open_how();
        how.flags = (libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_XDEV | libc::RESOLVE_NO_MAGICLINKS;
        if no_symlinks {
            how.resolve |= libc::RESOLVE_NO_SYMLINKS;
        }
        let fd = openat2(proc, path, &how).map_err(|e| match e {
            libc::EXDEV | libc::ELOOP => ProcError::NotProcfs(e),
            e => ProcError::Open(e),
        })?;
        match fs_magic(fd) {
            Ok(m) if m == libc::PROC_SUPER_MAGIC => Ok(fd),
            r => {
                close(fd);
                Err(ProcError::NotProcfs(r.err().unwrap_or(libc::EXDEV)))
            }
        }
    })();
    close(proc);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let opts: Vec<String> = [
            "nosuid",
            "noexec",
            "mode=755",
            "size=65536k",
            "rslave",
            "ro",
        ]
        .map(String::from)
        .to_vec();
        let (flags, prop, data) = parse_options(&opts).unwrap();
        assert_eq!(flags, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_RDONLY);
        assert_eq!(prop, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(data, vec!["mode=755", "size=65536k"]);
        let (flags, _, _) = parse_options(&["ro".into(), "rw".into()]).unwrap();
        assert_eq!(flags, 0);
        assert!(parse_options(&["tmpcopyup".into()]).is_err());
    }

    #[test]
    fn destinations_split_into_components() {
        let d = Dest::new(Path::new("/dev/pts")).unwrap();
        let parts: Vec<_> = d
            .components
            .iter()
            .map(|c| {
                (
                    c.path.to_str().unwrap(),
                    c.parent.as_ref().map(|p| p.to_str().unwrap()),
                    c.name.to_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            parts,
            vec![("dev", None, "dev"), ("dev/pts", Some("dev"), "pts")]
        );
        assert!(Dest::new(Path::new("/a/../b")).is_err());
        assert!(Dest::new(Path::new("/")).is_err());
    }

    #[test]
    fn flags_become_mount_attributes_and_superblock_options() {
        let (set, clr) = mount_attrs(libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC);
        assert_eq!(
            (set, clr),
            (
                libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC,
                0
            )
        );
        // An atime mode replaces the mount's: the mask is cleared.
        let (set, clr) = mount_attrs(libc::MS_NODEV | libc::MS_STRICTATIME);
        assert_eq!(
            (set, clr),
            (
                libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_STRICTATIME,
                libc::MOUNT_ATTR__ATIME
            )
        );
        let opts = fs_options(
            libc::MS_RDONLY | libc::MS_NOSUID,
            &["mode=755,size=65536k".into(), "newinstance".into()],
        )
        .unwrap();
        let pairs: Vec<_> = opts
            .iter()
            .map(|o| {
                (
                    o.key.to_str().unwrap(),
                    o.value.as_ref().map(|v| v.to_str().unwrap()),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("ro", None),
                ("mode", Some("755")),
                ("size", Some("65536k")),
                ("newinstance", None)
            ]
        );
    }

    #[test]
    fn cgroup_mounts_show_the_containers_own_cgroup() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "pids"] {
            std::fs::create_dir(root.path().join(c)).unwrap();
        }
        let rel = Path::new("berth/c1");
        let v1 = Hierarchy::V1 {
            root: root.path().to_path_buf(),
        };
        let view = |hierarchy, namespace| {
            Some(CgroupView {
                hierarchy,
                rel,
                namespace,
            })
        };
        match cgroup_kind("/sys/fs/cgroup", view(&v1, true)).unwrap() {
            MountKind::CgroupV1 { controllers, .. } => {
                let names: Vec<_> = controllers
                    .iter()
                    .map(|(c, s)| {
                        (
                            c.to_str().unwrap().to_string(),
                            s.to_str().unwrap().to_string(),
                        )
                    })
                    .collect();
                let dir = |c: &str| root.path().join(c).join(rel).display().to_string();
                assert_eq!(
                    names,
                    vec![
                        ("memory".to_string(), dir("memory")),
                        ("pids".to_string(), dir("pids"))
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        let v2 = Hierarchy::V2 {
            root: "/sys/fs/cgroup".into(),
        };
        assert!(matches!(
            cgroup_kind("/sys/fs/cgroup", view(&v2, true)).unwrap(),
            MountKind::Fs { fstype, .. } if fstype.as_c_str() == c"cgroup2"
        ));
        assert!(matches!(
            cgroup_kind("/sys/fs/cgroup", view(&v2, false)).unwrap(),
            MountKind::Bind { source, .. } if source.as_c_str() == c"/sys/fs/cgroup/berth/c1"
        ));
        assert!(cgroup_kind("/sys/fs/cgroup", None).is_err());
    }

    #[test]
    fn propagation_modes() {
        assert_eq!(
            propagation_flags("rprivate").unwrap(),
            libc::MS_PRIVATE | libc::MS_REC
        );
        assert_eq!(propagation_flags("shared").unwrap(), libc::MS_SHARED);
        assert!(propagation_flags("sideways").is_err());
    }

    /// A shared root is built as a slave (a shared one would be the host's peer, and
    /// every mount made for the container would appear on the host), then made shared.
    #[test]
    fn a_shared_root_is_built_as_a_slave() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let plan_with =
            |prop: &str| plan(dir.path(), &rootfs, &[], &[], Some(prop), false, None).unwrap();
        let p = plan_with("rshared");
        assert_eq!(p.root_propagation, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(p.shared_root, Some(libc::MS_SHARED | libc::MS_REC));
        let p = plan_with("rslave");
        assert_eq!(p.root_propagation, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(p.shared_root, None);
    }
}

//! The container's filesystem: the spec's mounts planned in the parent (options parsed,
//! paths split into components, everything a C string) and carried out in the child,
//! before and after `pivot_root`.
//!
//! Every mount destination is resolved inside the root filesystem with
//! `openat2(RESOLVE_IN_ROOT)`: a symlink in the image (`/data -> /etc`) resolves to the
//! image's `/etc`, never the host's. Missing directories are created one component at a
//! time the same way, and the mount is made onto the resolved file descriptor through
//! `/proc/self/fd/N`, so nothing can swap the path between the check and the mount.
//!
//! Functions marked "child" run between clone and execve: system calls over prepared
//! data only (see the module doc of `runtime`).

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component as PathComponent, Path};

use libc::{c_int, c_ulong};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};

use super::cgroups::Hierarchy;
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
    pub source: Option<CString>,
    pub fstype: Option<CString>,
    pub flags: c_ulong,
    pub data: Option<CString>,
    /// For bind mounts with flags: the remount that applies them (a bind ignores them).
    pub remount: Option<c_ulong>,
    /// MS_PRIVATE, MS_SLAVE... (with MS_REC), applied after the mount.
    pub propagation: c_ulong,
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

/// Plans the spec's mounts (and the default devices when /dev is a tmpfs).
pub(crate) fn plan(
    bundle_dir: &Path,
    rootfs: &Path,
    mounts: &[Mount],
    devices: &[LinuxDevice],
    root_propagation: Option<&str>,
    readonly_root: bool,
    hierarchy: Option<&Hierarchy>,
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
        let mut typ = m.typ().clone().unwrap_or_default();
        if typ == "bind" {
            flags |= libc::MS_BIND;
        }
        let bind = flags & libc::MS_BIND != 0;
        let mut source = m.source().clone();
        let mut file = false;
        if bind {
            let src = bundle_dir.join(source.clone().unwrap_or_default());
            let meta = std::fs::metadata(&src).map_err(|e| {
                RuntimeError::io(format!("mount {display}: source {}", src.display()), e)
            })?;
            file = !meta.is_dir();
            source = Some(src);
        } else if typ == "cgroup" || typ == "cgroup2" {
            match hierarchy {
                Some(Hierarchy::V2 { .. }) => typ = "cgroup2".into(),
                // FIXME(i17-oci, temporary): the mounts work of issue 17 gives v1 hosts
                // the container's own controllers here (as runc does); until it lands,
                // an empty tmpfs (read-only as the spec asks) lets runc's default bundle
                // run. Drop this arm when merging that change.
                Some(Hierarchy::V1 { .. }) => typ = "tmpfs".into(),
                None => {
                    return Err(RuntimeError::unsupported(format!(
                        "mount {display}: mounting cgroups in a container is only supported on cgroup v2 hosts; remove this mount"
                    )))
                }
            }
        }
        if !bind && m.destination() == Path::new("/dev") {
            dev_tmpfs = true;
        }
        // A bind mount ignores every flag but MS_REC; the others need a remount.
        let extra = flags & !(libc::MS_BIND | libc::MS_REC);
        let remount = (bind && extra != 0).then_some(libc::MS_BIND | libc::MS_REMOUNT | extra);
        ops.push(MountOp {
            display,
            dest: Dest::new(m.destination())?,
            file,
            source: source.as_deref().map(cpath).transpose()?,
            fstype: (!bind && !typ.is_empty())
                .then(|| cstring(typ.as_bytes()))
                .transpose()?,
            flags: if bind {
                flags & (libc::MS_BIND | libc::MS_REC)
            } else {
                flags
            },
            data: (!data.is_empty())
                .then(|| cstring(data.join(",").as_bytes()))
                .transpose()?,
            remount,
            propagation,
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
                source: Some(cpath(&dest)?),
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                remount: None,
                propagation: 0,
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

/// Writes `/proc/self/fd/<fd>\0` into `buf` without allocating. Child.
pub(crate) fn fd_path(fd: c_int, buf: &mut [u8; 32]) -> *const libc::c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr().cast()
}

/// `openat2(root, path, flags, RESOLVE_IN_ROOT)`. Child.
pub(crate) fn open_in_root(root: c_int, path: &CStr, flags: c_int) -> Result<c_int, c_int> {
    let mut how: libc::open_how = unsafe_zeroed_open_how();
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is NUL-terminated and `how` is a valid open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd as c_int)
    }
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

fn ptr(s: &Option<CString>) -> *const libc::c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
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

/// Makes one mount inside the root. Child.
pub(crate) fn mount_one(root: c_int, op: &MountOp) -> Result<(), c_int> {
    let fd = resolve(root, &op.dest, op.file)?;
    let mut buf = [0u8; 32];
    let result = mount(
        ptr(&op.source),
        fd_path(fd, &mut buf),
        ptr(&op.fstype),
        op.flags,
        ptr(&op.data),
    );
    close(fd);
    result?;
    if op.remount.is_none() && op.propagation == 0 {
        return Ok(());
    }
    // The fd named the directory under the new mount; the remount and the
    // propagation change apply to the mount itself, found by resolving again.
    let Some(last) = op.dest.components.last() else {
        return Err(libc::EINVAL);
    };
    let fd = open_in_root(root, &last.path, libc::O_PATH)?;
    let target = fd_path(fd, &mut buf);
    let result = (|| {
        if let Some(flags) = op.remount {
            mount(
                std::ptr::null(),
                target,
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )?;
        }
        if op.propagation != 0 {
            mount(
                std::ptr::null(),
                target,
                std::ptr::null(),
                op.propagation,
                std::ptr::null(),
            )?;
        }
        Ok(())
    })();
    close(fd);
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

/// Hides `path`: /dev/null over a file, an empty read-only tmpfs over a directory.
/// A path that does not exist is fine. Child.
pub(crate) fn mask_path(path: &CStr) -> Result<(), c_int> {
    // SAFETY: stat into a zeroed struct we own; path is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } != 0 {
        return match errno() {
            libc::ENOENT | libc::ENOTDIR => Ok(()),
            e => Err(e),
        };
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mount(
            c"tmpfs".as_ptr(),
            path.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY,
            std::ptr::null(),
        )
    } else {
        mount(
            c"/dev/null".as_ptr(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    }
}

/// Makes `path` read-only (a bind onto itself, remounted read-only, keeping the
/// nosuid/nodev/noexec it had). A path that does not exist is fine. Child.
pub(crate) fn readonly_path(path: &CStr) -> Result<(), c_int> {
    match mount(
        path.as_ptr(),
        path.as_ptr(),
        std::ptr::null(),
        libc::MS_BIND | libc::MS_REC,
        std::ptr::null(),
    ) {
        Err(libc::ENOENT) => return Ok(()),
        r => r?,
    }
    // SAFETY: statvfs into a zeroed struct we own; path is NUL-terminated. glibc's
    // statvfs is the statfs system call plus a field copy.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(errno());
    }
    let mut keep: c_ulong = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            keep |= ms_flag;
        }
    }
    mount(
        path.as_ptr(),
        path.as_ptr(),
        std::ptr::null(),
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC | keep,
        std::ptr::null(),
    )
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
    fn fd_paths_are_formatted_without_allocating() {
        let mut buf = [0u8; 32];
        let p = fd_path(1234, &mut buf);
        // SAFETY: fd_path wrote a NUL-terminated string into buf.
        let s = unsafe { CStr::from_ptr(p) };
        assert_eq!(s.to_str().unwrap(), "/proc/self/fd/1234");
        fd_path(0, &mut buf);
        assert_eq!(
            CStr::from_bytes_until_nul(&buf).unwrap().to_str().unwrap(),
            "/proc/self/fd/0"
        );
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

//! A container's root filesystem: an overlayfs whose lower layers are the image's
//! unpacked layer directories (shared, never written) and whose upper layer is the
//! container's own `upper/`, mounted at `<state>/containers/<id>/rootfs`.
//!
//! # Many layers
//!
//! `mount(2)` passes the options as one page (4096 bytes here), so `lowerdir=a:b:c...`
//! with absolute layer paths (each ~100 bytes under the state dir) stops fitting at
//! around 40 layers; images with 50-120 layers exist. When the classic options string
//! does not fit, berth uses the new mount API instead: `fsopen("overlay")`, one
//! `fsconfig(lowerdir+)` per layer (Linux 6.8+), `fsmount`, `move_mount`. Each layer is
//! then its own string, so only overlayfs's own depth limit (500) applies. Docker's
//! answer (short symlinks under `l/` and a `chdir` before mounting) needs a `chdir`,
//! which is process-wide and so not safe in the multi-threaded agent; flattening would
//! copy every image once per layer count. Short images keep the classic call, so older
//! kernels work for them and `/proc/mounts` shows readable paths.
//!
//! # Mount namespace hygiene
//!
//! The mount is made private right away: nothing mounted later under it on the host
//! propagates into other namespaces, and the container's own mount namespace (which
//! the runtime also makes private) gets a copy that does not propagate back.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{container_dir, ContainerError};

/// A mounted container rootfs. Dropping it does not unmount: containers outlive the
/// agent's handles. [`unmount`] (or [`super::remove`]) does.
#[derive(Debug)]
pub struct Rootfs {
    dir: PathBuf,
}

// Not in every libc version this crate builds with; values from <linux/mount.h>.
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system; no memory is touched.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

impl Rootfs {
    /// Creates `<state>/containers/<id>/{upper,work,rootfs}` and mounts the overlay of
    /// `layers` (topmost first, as [`crate::image::ImageStore::layer_dirs`] gives them).
    pub fn mount(state_dir: &Path, id: &str, layers: &[PathBuf]) -> Result<Rootfs, ContainerError> {
        let dir = container_dir(state_dir, id);
        let err = |op: &'static str, path: &Path| {
            let (id, path) = (id.to_string(), path.to_path_buf());
            move |source| ContainerError::Io {
                id,
                op,
                path,
                source,
            }
        };
        if layers.is_empty() {
            return Err(ContainerError::Io {
                id: id.to_string(),
                op: "mount the rootfs of",
                path: dir,
                source: io::Error::new(io::ErrorKind::InvalidInput, "the image has no layers"),
            });
        }
        std::fs::create_dir_all(state_dir.join("containers"))
            .map_err(err("create", &state_dir.join("containers")))?;
        super::spread_subdirectories(&state_dir.join("containers"));
        // The container dir is new: a leftover one would carry another container's
        // upper layer into this one.
        std::fs::create_dir(&dir).map_err(err("create", &dir))?;
        let rootfs = Rootfs { dir };
        for sub in ["upper", "work", "rootfs"] {
            let p = rootfs.dir.join(sub);
            std::fs::create_dir(&p).map_err(err("create", &p))?;
        }
        let target = rootfs.path();
        let result = mount_overlay(layers, &rootfs.upper(), &rootfs.dir.join("work"), &target)
            .and_then(|()| make_private(&target));
        result.map_err(err("mount overlayfs at", &target))?;
        Ok(rootfs)
    }

    /// The bundle directory, `<state>/containers/<id>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mount point, `<state>/containers/<id>/rootfs`.
    pub fn path(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The container's writable layer: everything it changes lands here.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
}

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn mount_overlay(layers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    let plain = |p: &Path| !p.as_os_str().as_bytes().iter().any(|b| b":,\\".contains(b));
    let lower: Vec<&[u8]> = layers.iter().map(|p| p.as_os_str().as_bytes()).collect();
    let mut data = b"lowerdir=".to_vec();
    data.extend(lower.join(&b':'));
    data.extend(b",upperdir=");
    data.extend(upper.as_os_str().as_bytes());
    data.extend(b",workdir=");
    data.extend(work.as_os_str().as_bytes());
    // One page including the NUL; paths with ':' ',' or '\' would need escaping there.
    let fits =
        data.len() < page_size() && layers.iter().all(|p| plain(p)) && plain(upper) && plain(work);
    if fits {
        let (src, fstype, data, target) = (
            cstr(b"overlay")?,
            cstr(b"overlay")?,
            cstr(&data)?,
            cstr(target.as_os_str().as_bytes())?,
        );
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let ret = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        check(ret.into()).map(drop)
    } else {
        mount_overlay_fsconfig(layers, upper, work, target)
    }
}

/// The new mount API: one `fsconfig` per layer, so no single string holds them all.
fn mount_overlay_fsconfig(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    let overlay = cstr(b"overlay")?;
    // SAFETY: fsopen reads the NUL-terminated name; the fd it returns is owned below.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, overlay.as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fs is a new fd that nothing else owns.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    let set = |key: &[u8], value: &Path| -> io::Result<()> {
        let key = cstr(key)?;
        let value = cstr(value.as_os_str().as_bytes())?;
        // SAFETY: key and value are NUL-terminated strings alive for the call; aux is 0.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })
        .map(drop)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "fsconfig {}={}: {e} (many-layer images need Linux 6.8 or later)",
                    String::from_utf8_lossy(key.as_bytes()),
                    value.to_string_lossy()
                ),
            )
        })
    };
    // lowerdir+ appends below the layers already given: topmost first, as given.
    for layer in layers {
        set(b"lowerdir+", layer)?;
    }
    set(b"upperdir", upper)?;
    set(b"workdir", work)?;
    // SAFETY: no pointer arguments.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: no pointer arguments; the returned fd is owned below.
    let mnt = check(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            0 as libc::c_uint,
        )
    })?;
    // SAFETY: mnt is a new fd that nothing else owns.
    let mnt = unsafe { OwnedFd::from_raw_fd(mnt as i32) };
    let empty = cstr(b"")?;
    let target = cstr(target.as_os_str().as_bytes())?;
    // SAFETY: the path arguments are NUL-terminated strings alive for the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

fn make_private(target: &Path) -> io::Result<()> {
    let target = cstr(target.as_os_str().as_bytes())?;
    // SAFETY: target is a NUL-terminated string; the other pointers may be null for a
    // propagation change.
    let ret = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    check(ret.into()).map(drop)
}

/// Unmounts `<state>/containers/<id>/rootfs` if it is mounted (every stacked mount,
/// detaching a busy one so that a lingering process cannot keep the upper layer
/// pinned forever).
pub fn unmount(state_dir: &Path, id: &str) -> Result<(), ContainerError> {
    unmount_all(&container_dir(state_dir, id).join("rootfs"), id)
}

/// Unmounts everything mounted at `target` (of container `id`), lazily if busy; a
/// path with nothing mounted (or none at all) is fine.
pub fn unmount_all(target: &Path, id: &str) -> Result<(), ContainerError> {
    let target = target.to_path_buf();
    let err = |source| ContainerError::Io {
        id: id.to_string(),
        op: "unmount",
        path: target.clone(),
        source,
    };
    let c = cstr(target.as_os_str().as_bytes()).map_err(err)?;
    loop {
        // SAFETY: c is a NUL-terminated string alive for the call.
        let ret = unsafe { libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW) };
        if ret == 0 {
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Not a mount point (any more), or already gone.
            Some(libc::EINVAL) | Some(libc::ENOENT) => return Ok(()),
            Some(libc::EBUSY) => {
                // SAFETY: as above.
                let ret =
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
                if ret != 0 {
                    return Err(err(io::Error::last_os_error()));
                }
            }
            _ => return Err(err(e)),
        }
    }
}

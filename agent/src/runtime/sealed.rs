//! Sealed programs: what runs in a container's namespaces never runs from a writable
//! host binary (runc's CVE-2019-5736).
//!
//! Every process berth puts into a container is, until its `execve`, a copy of the
//! program that cloned it: `/proc/PID/exe` names that program's file. A container
//! process that opens it (or runs `#!/proc/self/exe`, which makes the kernel execute
//! it inside the container) holds a descriptor to the host's binary, and can write it
//! through `/proc/self/fd/N` once nothing executes it any more (ETXTBSY until then):
//! the next run of that binary on the host is the attacker's, as root. Being
//! non-dumpable (`init::enter`) stops the open while berth's code runs there, but not
//! the `#!/proc/self/exe` route, nor a container granted CAP_SYS_PTRACE.
//!
//! So the programs that enter containers (the shim, which clones every container's
//! init, the exec helper, and the shim's `--run` for `berth runtime run`) run from a
//! sealed view of their file, which no process can write, whatever it holds. Two
//! ways, runc's (`libcontainer/exeseal`), tried in this order:
//! - an overlay mount that is never attached anywhere, whose only layers are the
//!   program's directory and an empty one: with no upper layer it can never be
//!   written, nor remounted writable; the program is executed through it. No copy:
//!   a few system calls (about 1.5 ms: bench/README.md, `runtime.sh`);
//! - a memfd copy of the program's image (its segments, without the debug sections:
//!   3.4 MB for a release berth-shim), sealed with `F_SEAL_WRITE | F_SEAL_SHRINK |
//!   F_SEAL_GROW | F_SEAL_SEAL`, where overlayfs or the mount API is missing.
//!
//! Either way one [`SealedProgram`] serves every shim and helper its owner starts
//! (the daemon keeps one), and nothing is done per container start.

use std::ffi::{CString, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::RuntimeError;

/// The seals that make a memfd immutable for good.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// `MFD_EXEC` (Linux 6.3): ask for an executable memfd where `vm.memfd_noexec` would
/// otherwise make it non-executable; older kernels refuse the flag and get none.
const MFD_EXEC: libc::c_uint = 0x10;

/// A sealed, executable copy of a program, alive while this value (or a process
/// executing it) is.
#[derive(Debug, Clone)]
pub struct SealedProgram {
    fd: Arc<OwnedFd>,
    /// The file it was copied from, for messages.
    source: PathBuf,
}

impl SealedProgram {
    /// A sealed view of `path`: through a read-only overlay of its directory when the
    /// kernel allows (no copy: a few system calls), else a sealed memfd copy.
    pub fn seal(path: &Path) -> Result<SealedProgram, RuntimeError> {
        match overlay_view(path) {
            Ok(fd) => Ok(SealedProgram {
                fd: Arc::new(fd),
                source: path.to_path_buf(),
            }),
            Err(_) => SealedProgram::copy(path),
        }
    }

    /// Copies `path` into a new sealed memfd.
    pub fn copy(path: &Path) -> Result<SealedProgram, RuntimeError> {
        let context = |what: &str| format!("seal a copy of {}: {what}", path.display());
        let mut file = std::fs::File::open(path)
            .map_err(|e| RuntimeError::io(context("open the program"), e))?;
        let name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| OsString::from("berth"));
        let fd = memfd(&name).map_err(|e| RuntimeError::io(context("memfd_create"), e))?;
        let mut out = std::fs::File::from(fd);
        copy_image(&mut file, &mut out).map_err(|e| RuntimeError::io(context("copy"), e))?;
        let fd = OwnedFd::from(out);
        // SAFETY: fcntl on a descriptor we own, with integer arguments.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
            return Err(RuntimeError::io(
                context("seal"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(SealedProgram {
            fd: Arc::new(fd),
            source: path.to_path_buf(),
        })
    }

    /// The path that executes it from this process (and from children it spawns,
    /// before their exec closes the descriptor): `/proc/self/fd/N`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The program it was copied from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// Whether `/proc/self/exe` is a sealed copy or view (this process runs from a
/// [`SealedProgram`]).
pub fn running_sealed() -> bool {
    match std::fs::File::open("/proc/self/exe") {
        Ok(f) => is_sealed(&f) || is_read_only_overlay(&f),
        Err(_) => false,
    }
}

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// A file on an overlay that is read-only (a lower-only overlay, as [`overlay_view`]
/// makes, cannot be made writable: it has no upper layer to write to).
fn is_read_only_overlay(f: &impl AsRawFd) -> bool {
    // SAFETY: fstatfs and fstatvfs into zeroed buffers we own.
    let (mut st, mut vst): (libc::statfs, libc::statvfs) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: as above.
    let ok = unsafe {
        libc::fstatfs(f.as_raw_fd(), &mut st) == 0 && libc::fstatvfs(f.as_raw_fd(), &mut vst) == 0
    };
    ok && st.f_type == OVERLAYFS_SUPER_MAGIC && vst.f_flag & libc::ST_RDONLY != 0
}

/// runc's zero-copy seal: an overlay mount, never attached anywhere, whose only layers
/// are the program's directory and an empty one (two lower layers and no upper: the
/// overlay can never be written, nor remounted writable), and the program opened
/// through it. Executing that file gives the process an exe on the overlay.
fn overlay_view(path: &Path) -> std::io::Result<OwnedFd> {
    let real = std::fs::canonicalize(path)?;
    let (dir, name) = match (real.parent(), real.file_name()) {
        (Some(d), Some(n)) => (d.to_path_buf(), n.to_os_string()),
        _ => return Err(std::io::ErrorKind::InvalidInput.into()),
    };
    let empty = tempfile_dir()?;
    let result = (|| {
        let escape = |p: &Path| {
            p.to_string_lossy()
                .replace('\\', "\\\\")
                .replace(':', "\\:")
        };
        let lower = CString::new(format!("{}:{}", escape(&dir), escape(&empty)))?;
        // SAFETY: fsopen of a NUL-terminated name; the result is checked, then owned.
        let ctx =
            unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), libc::FSOPEN_CLOEXEC) };
        if ctx < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let ctx = unsafe { OwnedFd::from_raw_fd(ctx as i32) };
        // SAFETY: fsconfig with NUL-terminated key and value, then the create command.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                ctx.as_raw_fd(),
                libc::FSCONFIG_SET_STRING,
                c"lowerdir".as_ptr(),
                lower.as_ptr(),
                0,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                ctx.as_raw_fd(),
                libc::FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fsmount of our context; the result is checked, then owned.
        let mnt = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                ctx.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOSUID,
            )
        };
        if mnt < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let mnt = unsafe { OwnedFd::from_raw_fd(mnt as i32) };
        let name = CString::new(name.as_bytes())?;
        // SAFETY: openat of a NUL-terminated name under our mount's descriptor.
        let fd = unsafe {
            libc::openat(
                mnt.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if !is_read_only_overlay(&fd) {
            return Err(std::io::Error::other("the overlay is not read-only"));
        }
        Ok(fd)
    })();
    let _ = std::fs::remove_dir(&empty);
    result
}

/// A new empty directory for the overlay's second layer (it may go once mounted).
fn tempfile_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..100u32 {
        let dir = base.join(format!(".berth-seal-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::ErrorKind::AlreadyExists.into())
}

fn is_sealed(f: &impl AsRawFd) -> bool {
    // SAFETY: fcntl with an integer command on a descriptor we hold.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & SEALS == SEALS
}

/// Makes sure this process runs from a sealed copy of itself: returns at once if it
/// does, else copies `/proc/self/exe`, seals it and re-executes it with the same
/// arguments and environment (it never returns then, unless that fails). For programs
/// whose very purpose is to enter containers (the shim and the exec helper), so that
/// the invariant holds whoever started them.
pub fn reexec_sealed() -> Result<(), RuntimeError> {
    if running_sealed() {
        return Ok(());
    }
    let me = std::fs::read_link("/proc/self/exe")
        .map_err(|e| RuntimeError::io("re-exec sealed: read /proc/self/exe", e))?;
    let sealed = SealedProgram::seal(&me)?;
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| RuntimeError::io("re-exec sealed", e.into()))?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec_bytes();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv)
        })
        .collect::<Result<_, _>>()
        .map_err(|e| RuntimeError::io("re-exec sealed", e.into()))?;
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: execveat of our own descriptor with NUL-terminated arrays of C strings
    // that live across the call; it returns only on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            sealed.fd.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(RuntimeError::io(
        "re-exec from a sealed copy",
        std::io::Error::last_os_error(),
    ))
}

trait IntoVecBytes {
    fn into_vec_bytes(self) -> Vec<u8>;
}

impl IntoVecBytes for OsString {
    fn into_vec_bytes(self) -> Vec<u8> {
        std::os::unix::ffi::OsStringExt::into_vec(self)
    }
}

fn memfd(name: &OsStr) -> std::io::Result<OwnedFd> {
    let name = CString::new(name.as_bytes()).map_err(std::io::Error::from)?;
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a NUL-terminated name and integer flags; the result is
    // checked, then owned.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), base | MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above, without the flag older kernels do not know.
        fd = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Copies what running `from` needs into `to`: for an ELF program, its image (the file
/// up to the end of its last segment) without the sections after it, which are only
/// debug information and symbols (a release berth-shim is 3 MB of image and 75 MB of
/// DWARF); anything else whole. The copy's ELF header then names no section table, so
/// it is a valid program on its own.
fn copy_image(from: &mut std::fs::File, to: &mut std::fs::File) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut header = [0u8; 64];
    let n = read_up_to(from, &mut header)?;
    from.seek(SeekFrom::Start(0))?;
    let image = match (n == header.len()).then(|| elf_image_len(&header, from)) {
        Some(Ok(Some(len))) => Some(len),
        Some(Err(e)) => return Err(e),
        _ => None,
    };
    from.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = image.unwrap_or(u64::MAX);
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n])?;
        left -= n as u64;
    }
    if image.is_some() {
        // e_shoff, e_shnum, e_shstrndx: no section header table (it was cut off).
        use std::os::unix::fs::FileExt;
        to.write_all_at(&[0u8; 8], 0x28)?;
        to.write_all_at(&[0u8; 2], 0x3c)?;
        to.write_all_at(&[0u8; 2], 0x3e)?;
    }
    Ok(())
}

/// For a 64-bit little-endian ELF file whose header is `header`: the end of its last
/// segment (the largest `p_offset + p_filesz`); `None` for anything else.
fn elf_image_len(header: &[u8; 64], file: &mut std::fs::File) -> std::io::Result<Option<u64>> {
    use std::io::{Seek, SeekFrom};
    // ELFCLASS64, ELFDATA2LSB.
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(None);
    }
    let u16_at = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]) as u64;
    let u64_at = |b: &[u8], o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let (phoff, phentsize, phnum) = (u64_at(header, 0x20), u16_at(0x36), u16_at(0x38));
    if phentsize < 56 || phnum == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(phoff))?;
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    if read_up_to(file, &mut table)? != table.len() {
        return Ok(None);
    }
    let end = table
        .chunks(phentsize as usize)
        .map(|ph| u64_at(ph, 0x08).saturating_add(u64_at(ph, 0x20)))
        .max()
        .unwrap_or(0)
        .max(phoff + phentsize * phnum);
    Ok(Some(end))
}

fn read_up_to(from: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match from.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_copy_cannot_be_written_or_resized() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("prog");
        std::fs::write(&src, b"#!/bin/sh\nexit 0\n").unwrap();
        let sealed = SealedProgram::copy(&src).unwrap();
        assert!(is_sealed(&*sealed.fd));
        // Opening it for writing may succeed; no write does.
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(sealed.path()) {
            let err = f.write_all(b"evil").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        }
        // SAFETY: ftruncate of a descriptor the test holds.
        let r = unsafe { libc::ftruncate(sealed.fd.as_raw_fd(), 0) };
        assert_eq!(r, -1);
        assert_eq!(
            std::fs::read(sealed.path()).unwrap(),
            b"#!/bin/sh\nexit 0\n"
        );
    }

    #[test]
    fn an_elf_program_is_copied_without_its_debug_sections_and_still_runs() {
        let sealed = SealedProgram::copy(Path::new("/bin/true")).unwrap();
        let copy = std::fs::metadata(sealed.path()).unwrap().len();
        assert!(copy > 0 && copy <= std::fs::metadata("/bin/true").unwrap().len());
        let status = std::process::Command::new(sealed.path()).status().unwrap();
        assert!(status.success());
        // This test binary: an ELF with its debug information after its segments.
        let me = std::env::current_exe().unwrap();
        let big = SealedProgram::copy(&me).unwrap();
        let (copy, file) = (
            std::fs::metadata(big.path()).unwrap().len(),
            std::fs::metadata(&me).unwrap().len(),
        );
        assert!(copy < file / 2, "image {copy} of {file} bytes");
        let header = std::fs::read(big.path()).unwrap();
        assert_eq!(&header[..4], b"\x7fELF");
        assert_eq!(&header[0x3c..0x40], &[0, 0, 0, 0]);
    }

    #[test]
    fn a_sealed_view_runs_and_cannot_be_opened_for_writing() {
        let sealed = SealedProgram::seal(Path::new("/bin/true")).unwrap();
        let status = std::process::Command::new(sealed.path()).status().unwrap();
        assert!(status.success());
        let f = std::fs::File::open(sealed.path()).unwrap();
        assert!(is_sealed(&f) || is_read_only_overlay(&f));
        if let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(sealed.path()) {
            assert!(w.write_all(b"evil").is_err());
        }
    }
}

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
//! init, and the exec helper) run from a memfd: a copy of the binary sealed against
//! every change (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), which
//! no process can write, whatever it holds. runc's `exeseal` does the same.
//!
//! What it costs: the copy (a few MB, once per daemon and per CLI call that needs it;
//! every shim started from one [`SealedProgram`] runs the same memfd, so its pages are
//! shared, not copied per container), and nothing per container start.

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
        copy_all(&mut file, &mut out).map_err(|e| RuntimeError::io(context("copy"), e))?;
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

/// Whether `/proc/self/exe` is a sealed copy (this process runs from a [`SealedProgram`]).
pub fn running_sealed() -> bool {
    match std::fs::File::open("/proc/self/exe") {
        Ok(f) => is_sealed(&f),
        Err(_) => false,
    }
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
    let sealed = SealedProgram::copy(Path::new("/proc/self/exe"))?;
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

fn copy_all(from: &mut std::fs::File, to: &mut std::fs::File) -> std::io::Result<()> {
    // copy_file_range into a memfd is not supported everywhere; sendfile is, but a
    // plain loop is simple and runs once per program.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
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
}

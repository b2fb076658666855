//! The one way berth replaces a file's contents: readers see the old file or the new
//! one, never a part of either.
//!
//! Every write says how durable it must be ([`Durability`]), because the two answers
//! cost differently and are right for different files:
//! - [`Durability::Durable`]: the file must survive a power loss as written. The new
//!   contents are fsynced before the rename, and the directory after it (without the
//!   second fsync the rename itself can be lost). Raft's hard state and snapshots, the
//!   image index, cluster membership and credentials: after a crash, something's
//!   correctness depends on reading back exactly what was acknowledged.
//! - [`Durability::Atomic`]: readers must never see a torn file, but after a power
//!   loss the file may be the old one or missing. Files that describe running things
//!   (a shim's container state, the network's attachments, a pid file): a reboot ends
//!   what they describe, and the daemon rebuilds them from the store and the kernel.
//!   Skipping the two fsyncs keeps them off the path of every container start (an
//!   fsync costs milliseconds on most disks).
//!
//! The temporary file is made next to the target (a rename is only atomic within one
//! filesystem), with a name no other writer uses, `create_new` (never following a
//! planted symlink), and the mode set exactly (the umask can only take bits away).
//! It is removed when anything fails.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How durable a write must be; see the crate's documentation for which to choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Survives a power loss: fsync of the file, rename, fsync of the directory.
    Durable,
    /// Atomic for readers only: no fsync.
    Atomic,
}

/// Replaces the contents of `path` with `bytes`, as a file of mode `mode`.
///
/// The directory must exist. On error, `path` is unchanged and no temporary file is
/// left behind.
pub fn write(path: &Path, bytes: &[u8], mode: u32, durability: Durability) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = temp_path(path);
    let result = write_temp(&tmp, bytes, mode, durability).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durability == Durability::Durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn write_temp(tmp: &Path, bytes: &[u8], mode: u32, durability: Durability) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    if durability == Durability::Durable {
        file.sync_all()?;
    }
    Ok(())
}

/// `.<name>.<pid>.<n>.tmp` beside `path`: unique among this process's writers (the
/// counter) and other processes' (the pid), and hidden from directory listings that
/// skip dot files.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_contents_with_the_exact_mode_and_leaves_no_temp_file() {
        for durability in [Durability::Durable, Durability::Atomic] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.json");
            fs::write(&path, b"old contents, longer than the new").unwrap();
            write(&path, b"new", 0o640, durability).unwrap();
            assert_eq!(fs::read(&path).unwrap(), b"new");
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o640, "{durability:?}");
            assert_eq!(entries(dir.path()), ["state.json"]);
        }
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails after the temp file
        // was written.
        let path = dir.path().join("busy");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        let err = write(&path, b"new", 0o600, Durability::Durable).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::IsADirectory | io::ErrorKind::DirectoryNotEmpty
            ),
            "{err:?}"
        );
        assert_eq!(entries(dir.path()), ["busy"]);
        assert_eq!(fs::read(path.join("inside")).unwrap(), b"x");
    }

    #[test]
    fn a_symlink_planted_at_a_temp_name_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("target");
        // The next temp name this process would use.
        let planted = temp_path(&path);
        let next = {
            let s = planted.to_string_lossy().into_owned();
            let (head, tail) = s.rsplit_once('.').unwrap().0.rsplit_once('.').unwrap();
            let n: u64 = tail.parse().unwrap();
            PathBuf::from(format!("{head}.{}.tmp", n + 1))
        };
        std::os::unix::fs::symlink(&victim, &next).unwrap();
        // Whether or not this write lands on the planted name, it never writes
        // through the link.
        let _ = write(&path, b"new", 0o600, Durability::Atomic);
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn a_second_write_replaces_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        write(&path, b"1", 0o600, Durability::Durable).unwrap();
        write(&path, b"2", 0o600, Durability::Durable).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"2");
    }
}

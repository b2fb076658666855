//! The one way berth replaces a file's contents: readers see the old file or the new
//! one, never a part of either.
//!
//! Every write says how durable it must be ([`Durability`]), because the two answers
//! cost differently and are right for different files:
//! - [`Durability::Durable`]: the file must survive a power loss as written. The new
//!   contents are fsynced before the rename, and the directory after it (without the
//!   second fsync the rename itself can be lost). Raft's snapshots, the
//!   image index, cluster membership and credentials: after a crash, something's
//!   correctness depends on reading back exactly what was acknowledged.
//! - [`Durability::Atomic`]: readers must never see a torn file, but after a power
//!   loss the file may be the old one or missing. Files that describe running things
//!   (a shim's container state, the network's attachments, a pid file): a reboot ends
//!   what they describe, and the daemon rebuilds them from the store and the kernel.
//!   Skipping the two fsyncs keeps them off the path of every container start (an
//!   fsync costs milliseconds on most disks).
//!
//! The temporary file is `.<name>.tmp` next to the target (a rename is only atomic
//! within one filesystem). One name per target, not one per write, so that a crash
//! leaves at most one leftover per file and the next write removes it (a unique name
//! per write would pile up half-written keys and states). That needs one writer per
//! file at a time: within a process, writes of one path wait for each other here;
//! across processes, every file berth writes has one owner (the daemon, a shim, the
//! CLI's pid file) or is written under the owner's lock (the image index). The
//! temporary file is opened `create_new` (never through a planted symlink), its mode is
//! set exactly (the umask can only take bits away), and it is removed when anything
//! fails.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

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
    let _writing = Writing::start(&tmp);
    // A leftover of a crash would make `create_new` fail.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
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

/// `.<name>.tmp` beside `path`: where a write of `path` keeps its contents until the
/// rename (and where a crash may leave them, for a reader that wants to clear it).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// This process's writes in progress, by temporary path: a second write of one path
/// waits for the first instead of removing its temporary file.
static WRITING: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
static DONE: Condvar = Condvar::new();

struct Writing(PathBuf);

impl Writing {
    fn start(tmp: &Path) -> Writing {
        let mut set = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        while set.get_or_insert_with(HashSet::new).contains(tmp) {
            set = DONE.wait(set).unwrap_or_else(|p| p.into_inner());
        }
        set.get_or_insert_with(HashSet::new)
            .insert(tmp.to_path_buf());
        Writing(tmp.to_path_buf())
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        let mut set = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = set.as_mut() {
            set.remove(&self.0);
        }
        DONE.notify_all();
    }
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
    fn a_leftover_or_a_symlink_at_the_temp_name_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        // A crash left half a file.
        fs::write(dir.path().join(".node.key.tmp"), b"half a key").unwrap();
        write(&path, b"key", 0o600, Durability::Durable).unwrap();
        assert_eq!(entries(dir.path()), ["node.key"]);
        // Someone planted a symlink at the temp name.
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".node.key.tmp")).unwrap();
        write(&path, b"key 2", 0o600, Durability::Atomic).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&path).unwrap(), b"key 2");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
    }

    #[test]
    fn concurrent_writes_of_one_path_all_succeed_and_one_wins_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        write(&path, &[i; 4096], 0o600, Durability::Atomic).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|b| *b == bytes[0]));
        assert_eq!(entries(dir.path()), ["state.json"]);
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

//! Finding and removing what clusters leave: processes in their namespaces, links,
//! namespaces, and whole clusters whose test process died before dropping them.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::NETNS_DIR;

/// SIGKILLs every process in these namespaces until none is left (at most a few
/// seconds: a process in uninterruptible sleep may outlast it).
pub(super) fn kill_in_netns(inodes: &BTreeSet<u64>) {
    if inodes.is_empty() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_in_netns(inodes);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        // Never ourselves: a test process whose main thread joined a host (run_in
        // uses a thread of its own, so this is only a guard) would kill the test run.
        let me = std::process::id() as i32;
        if pids == [me] {
            return;
        }
        for pid in pids.into_iter().filter(|&pid| pid != me) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The inode of a namespace file (its identity, as `/proc/<pid>/ns/net` shows it).
pub(super) fn netns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Live processes (zombies have left their namespaces) in any of these namespaces.
pub(super) fn pids_in_netns(inodes: &BTreeSet<u64>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
                })
                .is_some_and(|ino: u64| inodes.contains(&ino))
        })
        .collect()
}

/// A cluster's directory is `<temp dir>/berth-<prefix>-<random>`.
pub(super) const DIR_PREFIX: &str = "berth-";

/// The file in a cluster's directory that its owning process holds locked (flock)
/// until the cluster is dropped. The kernel releases the lock when the process dies
/// however it dies, so an unlocked one names a cluster whose owner was killed before
/// its `Drop` could run (a test killed by a timeout, `kill -9`).
pub(super) const OWNER_LOCK: &str = "owner.lock";

/// `flock(LOCK_EX | LOCK_NB)`: whether the lock was taken.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor this function borrows; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(true)
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

/// Makes `dir/owner.lock` already locked: locked under another name, then renamed,
/// so no sweep can ever see it unlocked.
pub(super) fn hold_owner_lock(dir: &Path) -> io::Result<File> {
    let fresh = dir.join(".owner.lock.new");
    let file = File::create(&fresh)?;
    if !try_lock(&file)? {
        return Err(io::Error::other(
            "a file just made is locked by someone else",
        ));
    }
    std::fs::rename(&fresh, dir.join(OWNER_LOCK))?;
    Ok(file)
}

/// The cluster prefix in a directory name `berth-tXXXXX-...`, if it is one.
fn prefix_of_dir(name: &str) -> Option<&str> {
    let prefix = name.strip_prefix(DIR_PREFIX)?.get(..6)?;
    let is_prefix = prefix.starts_with('t')
        && prefix[1..].bytes().all(|b| b.is_ascii_hexdigit())
        && name.as_bytes().get(DIR_PREFIX.len() + 6) == Some(&b'-');
    is_prefix.then_some(prefix)
}

/// Removes what clusters whose owning process died without dropping them left
/// (processes, links, namespaces, their directory), and returns what it removed.
/// [`Cluster::new`] calls it, so a test run killed half way is cleaned up by the next
/// one. Clusters of live processes, and the kept logs of panicked tests, are left
/// alone.
pub fn sweep_stale() -> Vec<String> {
    let mut swept = Vec::new();
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return swept;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(prefix) = prefix_of_dir(&name) else {
            continue;
        };
        let Ok(lock) = File::open(entry.path().join(OWNER_LOCK)) else {
            continue;
        };
        if !try_lock(&lock).unwrap_or(false) {
            continue;
        }
        remove_by_prefix(prefix);
        let _ = std::fs::remove_dir_all(entry.path());
        swept.push(format!(
            "the cluster {prefix} of a process that died ({})",
            entry.path().display()
        ));
    }
    swept
}

/// Kills the processes in, and deletes, every namespace and root-side link named
/// with `prefix`.
fn remove_by_prefix(prefix: &str) {
    let netns: Vec<PathBuf> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    let inodes: BTreeSet<u64> = netns.iter().filter_map(|p| netns_inode(p)).collect();
    kill_in_netns(&inodes);
    for left in crate::netns::leftovers(prefix) {
        if let Some(link) = left.strip_prefix("link ") {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
    for path in netns {
        if let Some(name) = path.file_name() {
            let _ = Command::new("ip")
                .arg("netns")
                .arg("del")
                .arg(name)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// What is left on the machine under `prefix`: links and root nftables tables
/// ([`crate::netns::leftovers`]), network namespaces, and processes inside them.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut out = crate::netns::leftovers(prefix);
    let mut inodes = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                inodes.extend(netns_inode(&entry.path()));
                out.push(format!("netns {name}"));
            }
        }
    }
    for pid in pids_in_netns(&inodes) {
        out.push(format!("process {pid}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_directories_are_recognized_by_their_prefix() {
        assert_eq!(prefix_of_dir("berth-t1a2b3-XyZ123"), Some("t1a2b3"));
        assert_eq!(prefix_of_dir("berth-t1a2bz-XyZ123"), None);
        assert_eq!(prefix_of_dir("berth-t1a2b3"), None);
        assert_eq!(prefix_of_dir("berth-t1234-0-net"), None);
        assert_eq!(prefix_of_dir("other"), None);
    }
}

//! Test helpers shared by berth's crates: real, tiny container images made from
//! Debian's `busybox-static`, so tests never need a registry on the internet.
//!
//! `.ci/run` installs busybox-static; on a machine without it, the helpers fail with a
//! message that says so rather than skipping the test.

pub mod hosts;
pub mod linearizability;
pub mod netns;
pub mod oci;
pub mod registry;
pub mod tokenserver;

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets linked into every test rootfs: enough for shells, networking checks and
/// the process, mount and limit probes the runtime tests make.
pub const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "cat",
    "echo",
    "ls",
    "sleep",
    "true",
    "false",
    "id",
    "hostname",
    "ps",
    "mount",
    "wget",
    "nc",
    "httpd",
    "nslookup",
    "env",
    "pwd",
    "grep",
    "head",
    "tail",
    "dd",
    "yes",
    "touch",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "ln",
    "stat",
    "readlink",
    "wc",
    "kill",
    "printf",
    "test",
    "[",
    "sed",
    "awk",
    "seq",
    "whoami",
    "uname",
    "date",
    "chmod",
    "chown",
    "top",
    "free",
    "df",
    "find",
    "xargs",
    "tr",
    "cut",
    "sort",
    "uniq",
    "umount",
    "tty",
    "stty",
    "ip",
    "ifconfig",
    "ping",
    "nproc",
    "timeout",
    "md5sum",
    "sha256sum",
    "mknod",
    "fuser",
];

/// The busybox binary, or an error telling how to get it.
pub fn busybox() -> io::Result<PathBuf> {
    let path = PathBuf::from(BUSYBOX);
    if path.is_file() {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "/bin/busybox not found: install Debian's busybox-static (apt-get install -y busybox-static; .ci/run does)",
        ))
    }
}

/// Fills `root` with a minimal busybox root filesystem: `/bin/busybox` plus applet
/// symlinks, `/etc/passwd` and `/etc/group` (root, a user `app` 1000:1000, nobody),
/// and the empty directories a container expects.
pub fn busybox_rootfs(root: &Path) -> io::Result<()> {
    let bb = busybox()?;
    for dir in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "home/app", "var/run",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy(&bb, root.join("bin/busybox"))?;
    for applet in APPLETS {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            symlink("busybox", &link)?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n",
    )?;
    std::fs::write(root.join("etc/hostname"), "busybox\n")?;
    Ok(())
}

/// Writes `root` as an uncompressed tar (a rootfs tar as `docker export` makes, and as
/// `berth image import` takes), with paths relative to the root.
pub fn tar_dir(root: &Path, out: &Path) -> io::Result<()> {
    let file = std::fs::File::create(out)?;
    let mut builder = tar::Builder::new(file);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", root)?;
    builder.into_inner()?.sync_all()
}

/// A busybox rootfs tar in `dir`, returned by path.
pub fn busybox_rootfs_tar(dir: &Path) -> io::Result<PathBuf> {
    let root = dir.join("rootfs");
    busybox_rootfs(&root)?;
    let out = dir.join("rootfs.tar");
    tar_dir(&root, &out)?;
    Ok(out)
}

/// A name unique to this test process and call, for kernel objects (cgroups, netns,
/// mounts) that must not collide when tests run in parallel: `berth-t<pid>-<n>-<tag>`.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("berth-t{}-{n}-{tag}", std::process::id())
}

/// Removes the cgroup `rel` (a path under the hierarchy roots) from every cgroup v1
/// controller and from cgroup v2, children first; missing ones are skipped. For tests
/// that give each container its own top-level cgroup (`linux.cgroupsPath = /<name>`),
/// so that nothing shared is left behind.
pub fn remove_cgroup(rel: &str) {
    fn remove_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path());
                }
            }
        }
        // cgroup directories are removed with rmdir even though they list files; a
        // process killed a moment ago may still be leaving it (EBUSY).
        for _ in 0..100 {
            match std::fs::remove_dir(dir) {
                Err(e) if e.raw_os_error() == Some(16) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() || rel.contains("..") {
        return;
    }
    let mut roots = vec![
        PathBuf::from("/sys/fs/cgroup"),
        PathBuf::from("/sys/fs/cgroup/unified"),
    ];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    for root in roots {
        let dir = root.join(rel);
        if dir.is_dir() {
            remove_tree(&dir);
        }
    }
}

/// Removes its cgroup (see [`remove_cgroup`]) when dropped, even if the test failed,
/// and the cgroup the shim of a container of that id runs in (`berth-shim/<id>`),
/// which a shim killed by the test could not remove.
#[derive(Debug)]
pub struct CgroupGuard(pub String);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        remove_cgroup(&self.0);
        let id = self.0.trim_start_matches('/');
        if !id.is_empty() && !id.contains('/') {
            remove_cgroup(&format!("berth-shim/{id}"));
        }
    }
}

/// Compiles `source` (C) into a static program named `name` under `dir`, for tests that
/// put an attacker inside a container: a static binary runs in any rootfs, busybox's
/// included. Needs gcc and the static C library (Debian's gcc and libc6-dev; `.ci/run`
/// installs them); fails with a message that says so.
pub fn static_c_program(dir: &Path, name: &str, source: &str) -> io::Result<PathBuf> {
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(name);
    std::fs::write(&src, source)?;
    let result = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("run gcc ({e}): install gcc and libc6-dev (.ci/run does)"),
            )
        })?;
    if !result.status.success() {
        return Err(io::Error::other(format!(
            "gcc -static {}: {}",
            src.display(),
            String::from_utf8_lossy(&result.stderr)
        )));
    }
    Ok(out)
}

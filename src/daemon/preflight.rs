//! What `berth daemon` checks before it serves: that this host gives it what every
//! container needs. A daemon started without it used to "start" every container,
//! which then showed as `Exited (0)` and was gone, with nothing in the log (under `ip
//! netns exec`, which mounts a fresh /sys, /sys/fs/cgroup is an empty directory).
//! Now it refuses to run, naming each thing missing and what to do about it.
//!
//! Checked: the state directory is writable; /proc is procfs and the kernel has the
//! namespaces a container gets; the cgroup hierarchy is visible and writable with the
//! controllers the runtime uses; overlayfs mounts with its upper directory in the
//! state directory (a real mount, which also loads the module); the shim program is
//! an executable file. Each check is a function of its paths, so the tests point
//! them at fixtures.

use std::path::{Path, PathBuf};

/// One thing the daemon needs and does not have: what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.fix)
    }
}

fn missing(what: impl Into<String>, fix: impl Into<String>) -> Missing {
    Missing {
        what: what.into(),
        fix: fix.into(),
    }
}

/// The cgroup v1 controllers a container needs: limits (memory, cpu, pids), CPU
/// accounting (`stats`), device rules (the devices a container may use) and the
/// freezer (`pause`). cpuset and blkio are used when the host has them.
pub const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "devices", "freezer"];

/// The cgroup v2 controllers a container needs (freezing is built into v2).
pub const V2_CONTROLLERS: &[&str] = &["memory", "cpu", "pids"];

/// Namespaces every container gets.
const NAMESPACES: &[&str] = &["mnt", "pid", "net", "uts", "ipc"];

const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const SYSFS_MAGIC: i64 = 0x6265_6572;

/// The file system type of `path` (statfs's magic), or the error.
// statfs's f_type is not an i64 on every target.
#[allow(clippy::unnecessary_cast)]
pub fn fs_type(path: &Path) -> std::io::Result<i64> {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 as i64)
        .map_err(std::io::Error::from)
}

/// Every check on this host, for a daemon with state in `state_dir` and `shim` as its
/// shim; an error listing everything missing.
pub fn check(state_dir: &Path, shim: &agent::shim::ShimProgram) -> anyhow::Result<()> {
    let mut all = Vec::new();
    all.extend(state_dir_writable(state_dir));
    all.extend(procfs(Path::new("/proc"), &fs_type));
    all.extend(cgroups(Path::new("/sys/fs/cgroup"), &fs_type));
    // Only where the state directory is fine: the probe mounts inside it.
    if all.is_empty() {
        all.extend(overlayfs(state_dir));
    }
    all.extend(shim_program(&shim.program));
    all.extend(mount_api());
    if all.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = all.iter().map(|m| format!("  - {m}")).collect();
    anyhow::bail!(
        "this host lacks what containers need, so the daemon does not start:\n{}",
        list.join("\n")
    )
}

/// The kernel has the mount API the runtime mounts with (`open_tree`, `move_mount`,
/// `mount_setattr`: Linux 5.12): asked with no arguments, it answers EINVAL or EBADF,
/// not ENOSYS.
pub fn mount_api() -> Option<Missing> {
    // SAFETY: mount_setattr with a bad descriptor, a NULL path and NULL attributes: it
    // reads nothing and fails, and the errno says whether the system call exists.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<u8>(),
            0,
        )
    };
    (r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)).then(|| {
        missing(
            "the kernel's mount API (mount_setattr, Linux 5.12)",
            "run berth on Linux 5.12 or later",
        )
    })
}

/// The state directory takes a new file.
pub fn state_dir_writable(state_dir: &Path) -> Option<Missing> {
    let probe = state_dir.join(format!(".preflight-{}", std::process::id()));
    let written = std::fs::write(&probe, b"berth");
    let _ = std::fs::remove_file(&probe);
    written.err().map(|e| {
        missing(
            format!(
                "the state directory {} is not writable ({e})",
                state_dir.display()
            ),
            "give berth a writable one with --state-dir (or $BERTH_STATE_DIR), as root",
        )
    })
}

/// `proc` is procfs (the runtime writes sysctls and reads processes there) and shows
/// this kernel's namespaces.
pub fn procfs(proc: &Path, fs_type: &dyn Fn(&Path) -> std::io::Result<i64>) -> Vec<Missing> {
    match fs_type(proc) {
        Ok(PROC_SUPER_MAGIC) => {}
        Ok(other) => {
            return vec![missing(
                format!(
                    "{} is not procfs (file system type {other:#x})",
                    proc.display()
                ),
                format!("mount proc there (mount -t proc proc {})", proc.display()),
            )]
        }
        Err(e) => {
            return vec![missing(
                format!("{} cannot be read ({e})", proc.display()),
                format!("mount proc there (mount -t proc proc {})", proc.display()),
            )]
        }
    }
    NAMESPACES
        .iter()
        .filter(|ns| !proc.join("self/ns").join(ns).exists())
        .map(|ns| {
            missing(
                format!("this kernel has no {ns} namespaces"),
                "run berth on a kernel built with them (CONFIG_NAMESPACES and its options)",
            )
        })
        .collect()
}

/// The cgroup hierarchy at `root` is visible (v2, or v1 controllers under a tmpfs),
/// with every controller containers need, and this process may make cgroups in it.
pub fn cgroups(root: &Path, fs_type: &dyn Fn(&Path) -> std::io::Result<i64>) -> Vec<Missing> {
    let not_visible = |detail: String| {
        vec![missing(
            format!(
                "cgroup hierarchy not visible at {} ({detail}; is /sys remounted, as under \
                 `ip netns exec`?)",
                root.display()
            ),
            "run berth daemon in the host's mount namespace, with the cgroup file systems \
             mounted (systemd mounts them at boot)",
        )]
    };
    let writable = |dir: &Path| -> Option<Missing> {
        nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
            .err()
            .map(|e| {
                missing(
                    format!("cgroup directory {} is not writable ({e})", dir.display()),
                    "run berth daemon as root, with /sys/fs/cgroup mounted read-write",
                )
            })
    };
    match fs_type(root) {
        Err(e) => not_visible(e.to_string()),
        Ok(CGROUP2_SUPER_MAGIC) => {
            let file = root.join("cgroup.controllers");
            let available = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) => return not_visible(format!("{}: {e}", file.display())),
            };
            let have: Vec<&str> = available.split_whitespace().collect();
            let mut out: Vec<Missing> = V2_CONTROLLERS
                .iter()
                .filter(|c| !have.contains(c))
                .map(|c| {
                    missing(
                        format!("cgroup v2 at {} has no {c} controller", root.display()),
                        format!(
                            "enable it: it must be listed in {} (a kernel built with it, \
                             not disabled with cgroup_disable=)",
                            file.display()
                        ),
                    )
                })
                .collect();
            out.extend(writable(root));
            out
        }
        Ok(TMPFS_MAGIC) => {
            let mut out = Vec::new();
            let mut found = 0;
            for c in V1_CONTROLLERS {
                let dir = root.join(c);
                match fs_type(&dir) {
                    Ok(CGROUP_SUPER_MAGIC) => {
                        found += 1;
                        out.extend(writable(&dir));
                    }
                    _ => out.push(missing(
                        format!(
                            "the {c} cgroup controller is not mounted at {}",
                            dir.display()
                        ),
                        format!(
                            "mount it (mount -t cgroup -o {c} cgroup {}), or boot with the \
                             unified hierarchy (cgroup v2)",
                            dir.display()
                        ),
                    )),
                }
            }
            if found == 0 {
                return not_visible("a tmpfs with no cgroup controller mounted in it".into());
            }
            out
        }
        Ok(SYSFS_MAGIC) => not_visible("it is an empty directory of sysfs".into()),
        Ok(other) => not_visible(format!(
            "neither cgroup2 nor a tmpfs of v1 controllers: file system type {other:#x}"
        )),
    }
}

/// overlayfs mounts with its upper and work directories in the state directory, as
/// every container's root file system does. A real mount: it also loads the module.
pub fn overlayfs(state_dir: &Path) -> Option<Missing> {
    let dir = state_dir.join(format!(".preflight-overlay-{}", std::process::id()));
    let result = try_overlay(&dir);
    if result.is_err() {
        let _ = nix::mount::umount2(&dir.join("merged"), nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&dir);
    result.err().map(|e| {
        missing(
            format!(
                "overlayfs cannot be mounted with its upper directory in {} ({e})",
                state_dir.display()
            ),
            "load the overlay module (modprobe overlay), and keep --state-dir on a file \
             system overlayfs accepts as upper (ext4, xfs, btrfs, tmpfs; not overlayfs itself \
             on older kernels, nor NFS)",
        )
    })
}

fn try_overlay(dir: &Path) -> std::io::Result<()> {
    let sub = |s: &str| -> std::io::Result<PathBuf> {
        let p = dir.join(s);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    };
    let (lower, upper, work, merged) = (sub("lower")?, sub("upper")?, sub("work")?, sub("merged")?);
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let mount = |data: &str| {
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data),
        )
    };
    // `volatile` (Linux 5.10): unmounting an overlay otherwise syncs its upper file
    // system, the whole disk of the state directory (measured 1-4 s on a busy host).
    // The probe's data is thrown away, so nothing needs syncing.
    if mount(&format!("{data},volatile")).is_err() {
        mount(&data)?;
    }
    // Written through the overlay: the upper directory really takes the copy.
    std::fs::write(merged.join("probe"), b"berth")?;
    nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH)?;
    Ok(())
}

/// The shim program is an executable file.
pub fn shim_program(program: &Path) -> Option<Missing> {
    let fix = "install berth-shim next to berth, or point $BERTH_SHIM at it (or say \
               BERTH_SHIM=builtin)";
    match std::fs::metadata(program) {
        Ok(m) if m.is_file() => nix::unistd::access(program, nix::unistd::AccessFlags::X_OK)
            .err()
            .map(|e| {
                missing(
                    format!(
                        "the shim program {} is not executable ({e})",
                        program.display()
                    ),
                    fix,
                )
            }),
        Ok(_) => Some(missing(
            format!("the shim program {} is not a file", program.display()),
            fix,
        )),
        Err(e) => Some(missing(
            format!(
                "the shim program {} cannot be found ({e})",
                program.display()
            ),
            fix,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// File system types by path, as a fixture host has them.
    fn types(list: &[(&Path, i64)]) -> impl Fn(&Path) -> std::io::Result<i64> {
        let list: Vec<(PathBuf, i64)> = list.iter().map(|(p, t)| (p.to_path_buf(), *t)).collect();
        move |p: &Path| {
            list.iter()
                .find(|(q, _)| q == p)
                .map(|(_, t)| *t)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    }

    #[test]
    fn an_empty_sys_fs_cgroup_is_named_with_what_to_do() {
        // What `ip netns exec` leaves: a fresh sysfs, whose cgroup directory is empty.
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        let out = cgroups(root, &types(&[(root, SYSFS_MAGIC)]));
        assert_eq!(out.len(), 1, "{out:?}");
        let text = out[0].to_string();
        assert!(text.contains("cgroup hierarchy not visible at"), "{text}");
        assert!(text.contains("ip netns exec"), "{text}");
        assert!(text.contains("host's mount namespace"), "{text}");
        // A tmpfs with nothing mounted in it says the same.
        let out = cgroups(root, &types(&[(root, TMPFS_MAGIC)]));
        assert!(out[0].what.contains("not visible"), "{out:?}");
    }

    #[test]
    fn v1_names_each_missing_controller() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        let mut list = vec![(root.to_path_buf(), TMPFS_MAGIC)];
        for c in V1_CONTROLLERS.iter().filter(|c| **c != "pids") {
            std::fs::create_dir(root.join(c)).expect("mkdir");
            list.push((root.join(c), CGROUP_SUPER_MAGIC));
        }
        let borrowed: Vec<(&Path, i64)> = list.iter().map(|(p, t)| (p.as_path(), *t)).collect();
        let out = cgroups(root, &types(&borrowed));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0]
                .what
                .contains("the pids cgroup controller is not mounted"),
            "{out:?}"
        );
    }

    #[test]
    fn v2_names_each_missing_controller() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory\n").expect("write");
        let out = cgroups(root, &types(&[(root, CGROUP2_SUPER_MAGIC)]));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].what.contains("has no pids controller"), "{out:?}");
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").expect("write");
        assert!(cgroups(root, &types(&[(root, CGROUP2_SUPER_MAGIC)])).is_empty());
    }

    #[test]
    fn proc_must_be_procfs() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = procfs(t.path(), &types(&[(t.path(), TMPFS_MAGIC)]));
        assert!(out[0].what.contains("is not procfs"), "{out:?}");
        // The real one passes.
        assert!(procfs(Path::new("/proc"), &fs_type).is_empty());
    }

    #[test]
    fn the_shim_must_be_an_executable_file() {
        let t = tempfile::tempdir().expect("tempdir");
        let file = t.path().join("shim");
        std::fs::write(&file, "#!/bin/sh\n").expect("write");
        assert!(shim_program(&t.path().join("nothere"))
            .expect("missing")
            .what
            .contains("cannot be found"));
        assert!(shim_program(t.path())
            .expect("a dir")
            .what
            .contains("not a file"));
        assert!(shim_program(Path::new("/bin/sh")).is_none());
    }

    #[test]
    fn this_kernel_has_the_mount_api() {
        assert!(mount_api().is_none());
    }

    #[test]
    fn a_read_only_state_dir_is_named() {
        // Root writes through mode bits, so the test uses a file where a directory
        // should be: nothing can be made under it either.
        let t = tempfile::tempdir().expect("tempdir");
        let file = t.path().join("file");
        std::fs::write(&file, "").expect("write");
        let m = state_dir_writable(&file).expect("not writable");
        assert!(m.what.contains("is not writable"), "{m}");
        assert!(state_dir_writable(t.path()).is_none());
    }
}

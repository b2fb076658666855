//! Mount destinations and the working directory are paths inside the container's
//! root, resolved there, once.
//!
//! - CVE-2021-30465 (runc): a symlink at a mount's destination (absolute, or `..`
//!   climbing above the root, or in a middle component) must resolve inside the root,
//!   never to the host's directory of that name.
//! - The destination is resolved once for the whole mount (a bind's read-only flag is
//!   set before it is attached): a symlink swapped in between cannot send the
//!   read-only step elsewhere and leave the volume writable.
//! - CVE-2024-21626 (runc): a working directory at `/proc/self/fd/N`, a descriptor to a
//!   host directory the runtime leaked, is refused.

use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use oci_spec::runtime::Mount;

use crate::mounts_kit::TestBundle;

fn tmpfs(dest: &str) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into());
    m.set_typ(Some("tmpfs".into()));
    m.set_source(Some("tmpfs".into()));
    m.set_options(Some(vec!["nosuid".into(), "nodev".into()]));
    m
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// CVE-2021-30465: three destinations that are symlinks to host directories (by
/// absolute path, by `..` above the root, and through a middle component with
/// directories still to create). Each mount lands at that path inside the root (the
/// image has directories of those names), and nothing is created in the host's.
#[test]
fn symlinks_at_mount_destinations_resolve_inside_the_root() {
    let hosts: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for h in &hosts {
        std::fs::write(h.path().join("host-file"), "host").unwrap();
    }
    let host = |i: usize| hosts[i].path().to_str().unwrap().to_string();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("inside"), "inside").unwrap();
    let mut b = TestBundle::new(
        "target-link",
        &format!(
            "for d in {0} {1} {2}/made/deeper; do echo $d: $(ls $d); done",
            host(0),
            host(1),
            host(2)
        ),
    );
    let root = b.rootfs();
    // The image has directories of the same names: that is where the mounts belong.
    for i in 0..3 {
        std::fs::create_dir_all(root.join(host(i).trim_start_matches('/'))).unwrap();
    }
    symlink(host(0), root.join("abs")).unwrap();
    symlink(
        format!("../../../../../../../..{}", host(1)),
        root.join("rel"),
    )
    .unwrap();
    symlink(host(2), root.join("mid")).unwrap();
    b.set_mount(tmpfs("/abs"));
    b.bind(source.path(), "/rel", &["rbind", "ro"]);
    b.set_mount(tmpfs("/mid/made/deeper"));
    let out = b.output();
    // Inside: the tmpfs is empty, the bind shows its source; none shows the host file.
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&format!("{}:", host(0)).as_str()), "{out}");
    assert!(
        lines.contains(&format!("{}: inside", host(1)).as_str()),
        "{out}"
    );
    assert!(
        lines.contains(&format!("{}/made/deeper:", host(2)).as_str()),
        "{out}"
    );
    // On the host, nothing was created in the directories the symlinks name.
    for h in &hosts {
        assert_eq!(entries(h.path()), ["host-file"], "{out}");
    }
    assert_eq!(entries(source.path()), ["inside"]);
}

/// The destination of a read-only bind is swapped, as fast as the kernel allows,
/// between a directory and a symlink to another mount of the container (a racing
/// container sharing the volume would do it). Wherever the bind lands, it is
/// read-only: the volume's host directory never gets the container's write. Resolved
/// twice (mount, then remount read-only by path), the race can leave the volume
/// writable and make another mount read-only instead.
#[test]
fn a_read_only_bind_stays_read_only_when_its_destination_is_swapped() {
    let volume = tempfile::tempdir().unwrap();
    let mut b = TestBundle::new(
        "target-swap",
        "touch /vol/written 2>/dev/null; touch /other/written 2>/dev/null; true",
    );
    let root = b.rootfs();
    std::fs::create_dir(root.join("vol")).unwrap();
    std::fs::create_dir(root.join("other")).unwrap();
    symlink("/other", root.join("vol.link")).unwrap();
    b.set_mount(tmpfs("/other"));
    b.bind(volume.path(), "/vol", &["rbind", "ro"]);
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (a, c) = (root.join("vol"), root.join("vol.link"));
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            // Until told to stop, or until the test's directory is gone (it failed).
            while !stop.load(Ordering::Relaxed)
                && nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &a,
                    nix::fcntl::AT_FDCWD,
                    &c,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .is_ok()
            {
                swaps += 1;
            }
            swaps
        })
    };
    for _ in 0..100 {
        let (result, out) = b.run();
        assert!(
            !volume.path().join("written").exists(),
            "the read-only volume was written: {out}"
        );
        // Wherever the bind landed, the container started (the test is not vacuous).
        let report = result.unwrap_or_else(|e| panic!("{e}\noutput:\n{out}"));
        assert_eq!(report.status(), 0, "{out}");
    }
    stop.store(true, Ordering::Relaxed);
    assert!(swapper.join().unwrap() > 0);
}

/// CVE-2024-21626: `process.cwd` at `/proc/self/fd/N`, where N is a descriptor to a
/// host directory the child inherited, is refused (resolved inside the root without
/// magic links); the program never runs in the host's directory.
#[test]
fn a_cwd_through_proc_self_fd_is_refused() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("secret"), "host file").unwrap();
    let fd = nix::fcntl::open(
        host.path(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let mut b = TestBundle::new("cwd-fd", "cat secret; touch planted; pwd");
    let cwd = format!("/proc/self/fd/{}", fd.as_raw_fd());
    b.spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_cwd(cwd.clone().into());
    let (result, out) = b.run();
    drop(fd);
    let err = result.expect_err(&format!("the container ran in a host directory: {out}"));
    assert!(err.to_string().contains(&cwd), "{err}");
    assert!(!out.contains("host file"), "{out}");
    assert_eq!(entries(host.path()), ["secret"]);
}

//! Class: kernel attack surface through system calls the default seccomp profile
//! lets through. io_uring is the case in point (a long run of kernel privilege
//! escalations, and operations that bypass seccomp once a ring exists): Docker's
//! profile stopped allowing `io_uring_setup`, `io_uring_enter` and
//! `io_uring_register` in 25.0, and so does berth's. The same attacker checks the other
//! calls Docker refuses to a default container (the keyring, bpf, perf events,
//! userfaultfd, user namespaces, mounts) and `clone3`'s ENOSYS.
//!
//! Each case runs twice: under the default profile, where the call must fail with the
//! profile's errno, and with seccomp off, where io_uring must not (so it is the profile
//! that refuses, not the kernel).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use agent::runtime::{self, Bundle, RunOptions, Stdio};

const ATTACKER: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#define SYS_io_uring_enter 426
#define SYS_io_uring_register 427
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

/* Prints "name=0" when the call succeeded, "name=<errno>" when it failed. */
static void report(const char *name, long ret) {
    printf("%s=%d\n", name, ret >= 0 ? 0 : errno);
}

int main(void) {
    unsigned char params[120]; /* struct io_uring_params */
    memset(params, 0, sizeof params);
    report("io_uring_setup", syscall(SYS_io_uring_setup, 4, params));
    report("io_uring_enter", syscall(SYS_io_uring_enter, 999, 0, 0, 0, NULL, 0));
    report("io_uring_register", syscall(SYS_io_uring_register, 999, 0, NULL, 0));
    /* KEYCTL_GET_KEYRING_ID of the session keyring */
    report("keyctl", syscall(SYS_keyctl, 0, -3, 0));
    report("add_key", syscall(SYS_add_key, "user", "berth", "x", 1, -3));
    report("request_key", syscall(SYS_request_key, "user", "berth", NULL, 0));
    /* BPF_MAP_CREATE with an empty attr */
    unsigned char attr[64];
    memset(attr, 0, sizeof attr);
    report("bpf", syscall(SYS_bpf, 0, attr, sizeof attr));
    unsigned char pattr[128];
    memset(pattr, 0, sizeof pattr);
    report("perf_event_open", syscall(SYS_perf_event_open, pattr, 0, -1, -1, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    report("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
    report("clone3", syscall(SYS_clone3, NULL, 0));
    return 0;
}
"#;

/// Runs the attacker in a default container, with its seccomp profile or none, and
/// returns what each call got.
fn attack(tag: &str, seccomp: bool) -> BTreeMap<String, i32> {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    testkit::busybox_rootfs(&rootfs).unwrap();
    testkit::static_c_program(&rootfs, "attacker", ATTACKER).unwrap();
    let mut spec = runtime::default_spec(Path::new("rootfs"), &["/attacker".to_string()]).unwrap();
    let id = testkit::unique_name(tag);
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
    if !seccomp {
        linux.set_seccomp(None);
    }
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();
    let _cgroup = testkit::CgroupGuard(id.clone());
    let out = File::create(dir.path().join("out")).unwrap();
    let opts = RunOptions {
        stdio: Stdio {
            stdin: None,
            stdout: Some(out.as_fd()),
            stderr: Some(out.as_fd()),
        },
        ..RunOptions::default()
    };
    let report = runtime::run(&Bundle::load(dir.path()).unwrap(), &id, &opts).unwrap();
    let text = std::fs::read_to_string(dir.path().join("out")).unwrap();
    assert_eq!(report.code, Some(0), "the attacker failed: {text}");
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// io_uring is refused with EPERM (the default action, as in Docker's profile, which
/// simply does not list it); with seccomp off the same calls reach the kernel: setup
/// makes a ring (when the host's `kernel.io_uring_disabled` is 0) and enter and
/// register on a bad descriptor get EBADF. Fails with io_uring back in the list.
#[test]
fn io_uring_is_refused_by_the_default_profile() {
    let confined = attack("seccomp-iouring", true);
    let get =
        |r: &BTreeMap<String, i32>, k: &str| *r.get(k).unwrap_or_else(|| panic!("no {k} in {r:?}"));
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert_eq!(get(&confined, call), libc::EPERM, "{call}: {confined:?}");
    }

    let open = attack("seccomp-iouring-off", false);
    assert_eq!(get(&open, "io_uring_enter"), libc::EBADF, "{open:?}");
    assert_eq!(get(&open, "io_uring_register"), libc::EBADF, "{open:?}");
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "0".into());
    if disabled == "0" {
        assert_eq!(get(&open, "io_uring_setup"), 0, "{open:?}");
    } else {
        // The host refuses io_uring itself: the kernel's answer, not the profile's.
        assert_ne!(get(&open, "io_uring_setup"), 0, "{open:?}");
    }
}

/// The rest of what Docker's profile refuses to a default container: EPERM from the
/// profile (its default action), and ENOSYS for clone3 so that libcs fall back to
/// clone, whose flags the profile can check.
#[test]
fn default_profile_refuses_what_docker_refuses() {
    let r = attack("seccomp-docker", true);
    for call in [
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "unshare_user",
    ] {
        assert_eq!(r.get(call), Some(&libc::EPERM), "{call}: {r:?}");
    }
    assert_eq!(r.get("clone3"), Some(&libc::ENOSYS), "{r:?}");
}

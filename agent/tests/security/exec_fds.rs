//! CVE-2016-9962 class: a process entering the container (an exec, a health probe)
//! carries none of its caller's descriptors, and cannot be read or traced before its
//! execve.
//!
//! Before the fix, exec and probes were clones of the caller (the CLI, the daemon)
//! that kept every descriptor of it until the close-on-exec sweep just before
//! execve: a container process that reached them through `/proc/PID/fd` reopened
//! the daemon's Raft log read-write. Now the caller starts the exec helper, a
//! program of its own that holds only its control socket and the stdio it is given,
//! and the process it clones closes everything else before it joins anything.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;

use agent::shim::ExecStdio;
use oci_spec::runtime::Capability;

use super::exe_seal::{Options, Target};

/// The targets of `pid`'s descriptors, as the host sees them.
fn fd_targets(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A file this test process holds open without close-on-exec: what a careless
/// caller (a daemon's log or store, opened by a library) would leak.
fn canary(dir: &Path) -> (OwnedFd, String) {
    let path = dir.join("canary-secret");
    std::fs::write(&path, "secret").unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: open of a NUL-terminated path; the result is checked, then owned.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR) };
    assert!(fd >= 0);
    // SAFETY: a new descriptor nothing else owns.
    (
        unsafe { OwnedFd::from_raw_fd(fd) },
        path.to_string_lossy().into_owned(),
    )
}

/// The exec'd process is the child of a helper that is not the caller, and neither
/// holds the caller's descriptors: only the control socket, stdio and /dev/null.
#[test]
fn cve_2016_9962_an_exec_holds_none_of_its_callers_descriptors() {
    let t = Target::start("fds-helper", Options::default());
    let dir = tempfile::tempdir().unwrap();
    let (_canary, canary_path) = canary(dir.path());
    let out = std::fs::File::create(dir.path().join("out")).unwrap();
    let session = t.start_exec(
        &["sleep", "30"],
        ExecStdio {
            stdin: None,
            stdout: Some(out.as_fd()),
            stderr: Some(out.as_fd()),
        },
    );
    let pid = session.pid();
    let helper = parent_of(pid);
    assert_ne!(
        helper,
        std::process::id() as i32,
        "the exec is the caller's own child"
    );
    for who in [helper, pid] {
        let fds = fd_targets(who);
        assert!(
            !fds.iter().any(|f| f.contains("canary")),
            "process {who} holds the caller's {canary_path}: {fds:?}"
        );
    }
    // The exec'd process: exactly its stdio.
    let fds = fd_targets(pid);
    assert_eq!(fds.len(), 3, "{fds:?}");
    // The helper: stdio (the control socket and /dev/null), the stdio it passes on,
    // the pidfds it waits with; nothing that names a file of the caller's.
    let helper_fds = fd_targets(helper);
    assert!(
        helper_fds.iter().all(|f| f.starts_with("socket:")
            || f.starts_with("pipe:")
            || f.starts_with("anon_inode:")
            || f == "/dev/null"
            || f.ends_with("/out")),
        "{helper_fds:?}"
    );
    // SAFETY: signalling the process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = session.wait();
}

/// An attacker with CAP_SYS_PTRACE (so non-dumpability does not hide anything)
/// watches every descriptor of every process that enters its container while 20
/// execs come and go (for 4 s): none is a file of the caller's, only the stdio it was
/// given, pipes, sockets and the runtime's pidfd.
#[test]
fn cve_2016_9962_processes_entering_the_container_carry_nothing_of_the_callers() {
    let t = Target::start(
        "fds-watch",
        Options {
            extra_caps: vec![Capability::SysPtrace],
            ..Options::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let (_canary, _) = canary(dir.path());
    let report_path = dir.path().join("report");
    let report = std::fs::File::create(&report_path).unwrap();
    let watcher = t.start_exec(
        &["/attacker", "watch-fds", "4000"],
        ExecStdio {
            stdin: None,
            stdout: Some(report.as_fd()),
            stderr: Some(report.as_fd()),
        },
    );
    // Execs of a program that runs for a moment, while the watcher scans.
    for _ in 0..20 {
        let (r, out) = t.exec(&["sleep", "0.05"]);
        assert_eq!(r.status(), 0, "{out}");
    }
    watcher.wait().unwrap();
    let report = std::fs::read_to_string(&report_path).unwrap();
    let seen = report.lines().filter(|l| l.starts_with("fd=")).count();
    assert!(seen > 0, "the watcher saw no process at all: {report}");
    for line in report.lines().filter_map(|l| l.strip_prefix("fd=")) {
        let target = line.splitn(3, ':').nth(2).unwrap_or("");
        assert!(
            target.starts_with("pipe:")
                || target.starts_with("socket:")
                || target.starts_with("anon_inode:")
                || target.ends_with("/null")
                || target.starts_with("/dev/pts/")
                // the stdout the test gives each exec, before it becomes fd 1
                || target.contains("/out-"),
            "a process entering the container carried {target:?} in: {line}"
        );
    }
}

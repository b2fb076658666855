//! `berth runtime exec` through the real binary (as root): the process's exit status
//! is berth's, the overrides reach it, `-t` gives it a terminal, and mistakes are
//! messages naming the container. The shim is `berth runtime shim`
//! (`BERTH_SHIM=builtin`), as in `runtime_lifecycle_cli.rs`.

// Helpers are test code: a panic is how they fail (clippy.toml covers #[test] fns only).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output, Stdio};

/// A running `sleep` container with a bundle, a state directory and a cgroup of its
/// own; the guard kills it and removes the cgroup even when the test fails.
struct Running {
    id: String,
    _cgroup: testkit::CgroupGuard,
    _bundle: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Running {
    fn start(tag: &str) -> Running {
        let bundle = tempfile::tempdir().unwrap();
        let dir = bundle.path();
        let id = testkit::unique_name(tag);
        common::spec_bundle(dir, &["sleep", "1000"], &id);
        let c = Running {
            _cgroup: testkit::CgroupGuard(id.clone()),
            id,
            _bundle: bundle,
            state: tempfile::tempdir().unwrap(),
        };
        let bundle_dir = c._bundle.path().to_str().unwrap().to_string();
        let out = c.run(&["runtime", "run", "-d", "--bundle", &bundle_dir, &c.id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .env("BERTH_STATE_DIR", self.state.path())
            .env("BERTH_SHIM", "builtin")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.run(&["runtime", "stop", "-t", "0", &self.id]);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn exec_exits_with_the_processs_status_and_applies_the_overrides() {
    let c = Running::start("cliexec");
    let out = c.run(&[
        "runtime",
        "exec",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "-u",
        "app",
        &c.id,
        "sh",
        "-c",
        "echo $GREETING; pwd; id -u; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi there\n/tmp\n1000\n");

    // -t without a terminal on this side: a terminal of 24x80 inside.
    let out = c.run(&["runtime", "exec", "-t", &c.id, "sh", "-c", "tty; stty size"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout).replace('\r', "");
    assert!(stdout.starts_with("/dev/pts/"), "{stdout:?}");
    assert!(stdout.ends_with("24 80\n"), "{stdout:?}");
}

#[test]
fn exec_mistakes_are_messages_naming_the_container() {
    let c = Running::start("cliexecerr");
    let out = c.run(&["runtime", "exec", &c.id, "no-such-program"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&c.id) && err.contains("exec: \"no-such-program\": executable file not found"),
        "{err}"
    );
    let out = c.run(&["runtime", "exec", "nothere", "true"]);
    assert!(text(&out.stderr).contains("container nothere does not exist"));
    let out = c.run(&["runtime", "stop", "-t", "0", &c.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = c.run(&["runtime", "exec", &c.id, "true"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&c.id) && err.contains("is not running"),
        "{err}"
    );
}

/// The admin's terminal never enters the container (the `berth exec -T` escape):
/// `berth runtime exec` without `-t`, run from a terminal that is its controlling
/// terminal, gives the process pipes, not that terminal, and a session of its own,
/// so it can neither read the terminal nor reopen it as /dev/tty, nor type into it
/// with TIOCSTI. A static attacker (the security suite's) tries all three.
#[test]
fn exec_without_t_never_hands_the_callers_terminal_in() {
    use std::os::unix::process::CommandExt;
    let c = Running::start("cliexectty");
    let attacker = testkit::static_c_program(
        c._bundle.path(),
        "attacker",
        include_str!("../agent/tests/security/attacker.c"),
    )
    .unwrap();
    std::fs::copy(&attacker, c._bundle.path().join("rootfs/attacker")).unwrap();

    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors it opens; no name, termios or size given.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: the descriptors openpty just opened, owned here alone.
    let (master, slave) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.env("BERTH_STATE_DIR", c.state.path())
        .env("BERTH_SHIM", "builtin")
        .args(["runtime", "exec", &c.id, "/attacker", "tty"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: between fork and exec: setsid and an ioctl on descriptor 0, both
    // async-signal-safe; the terminal becomes the caller's controlling terminal, as
    // an admin's shell's is.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().unwrap();
    // What berth wrote to the terminal: the attacker's report.
    // SAFETY: fcntl with integer arguments on the master we hold.
    unsafe {
        use std::os::fd::AsRawFd;
        let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut report = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &master, &mut report);
    let report = text(&report).replace('\r', "");
    assert!(status.success(), "{report}");
    assert!(report.contains("stdin_tty=0"), "{report}");
    assert!(
        report.contains("dev_tty=No such device or address"),
        "{report}"
    );
    assert!(
        !report.contains("tiocsti_0=ok") && !report.contains("tiocsti_1=ok"),
        "{report}"
    );
    // Nothing was typed into the terminal's input for the admin's shell to run.
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int into our variable.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::ioctl(slave.as_raw_fd(), libc::FIONREAD, &mut pending);
    }
    assert_eq!(pending, 0, "input was pushed into the caller's terminal");
}

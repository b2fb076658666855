//! `exec` into running containers, on the real kernel, as root: each test creates a
//! busybox container under the `berth-shim` binary (state directory, bundle and a
//! top-level cgroup of its own), runs processes in it with `shim::exec` (through the exec helper), and checks
//! what they saw. The guard kills the container and its shim and removes the cgroup
//! even when a test fails.

// Helpers are test code: a panic is how they fail (clippy.toml covers #[test] fns only).
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::runtime::{self, ExitReport};
use agent::shim::{self, CreateOptions, ExecRequest, ExecStdio, ShimError, ShimProgram, Status};

const DEADLINE: Duration = Duration::from_secs(60);

struct Running {
    id: String,
    _cgroup: testkit::CgroupGuard,
    state: tempfile::TempDir,
    _bundle: tempfile::TempDir,
    out: tempfile::TempDir,
    program: ShimProgram,
}

impl Running {
    /// A container running `script` (ready when it has logged `ready`).
    fn start(tag: &str, script: &str, hostname: Option<&str>) -> Running {
        let bundle = tempfile::tempdir().unwrap();
        testkit::busybox_rootfs(&bundle.path().join("rootfs")).unwrap();
        let args = ["sh".to_string(), "-c".to_string(), script.to_string()];
        let mut spec = runtime::default_spec(Path::new("rootfs"), &args).unwrap();
        let id = testkit::unique_name(tag);
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
        spec.set_hostname(hostname.map(str::to_string));
        std::fs::write(
            bundle.path().join("config.json"),
            serde_json::to_string(&spec).unwrap(),
        )
        .unwrap();
        let c = Running {
            _cgroup: testkit::CgroupGuard(id.clone()),
            id,
            state: tempfile::tempdir().unwrap(),
            _bundle: bundle,
            out: tempfile::tempdir().unwrap(),
            program: ShimProgram::new(PathBuf::from(env!("CARGO_BIN_EXE_berth-shim")), Vec::new())
                .sealed()
                .unwrap(),
        };
        let opts = CreateOptions::new(c.program.clone());
        shim::create(c.state.path(), c._bundle.path(), &c.id, &opts).unwrap();
        c
    }

    fn state(&self) -> &Path {
        self.state.path()
    }

    /// Runs `script` with `sh -c` in the container; returns how it ended and its output.
    fn exec(&self, script: &str, user: Option<&str>, req: ExecRequest) -> (ExitReport, String) {
        let path = self.out.path().join("out");
        let out = File::create(&path).unwrap();
        let req = ExecRequest {
            args: vec!["sh".into(), "-c".into(), script.into()],
            user: user.map(str::to_string),
            ..req
        };
        let stdio = ExecStdio {
            stdin: None,
            stdout: Some(out.as_fd()),
            stderr: Some(out.as_fd()),
        };
        let p = shim::exec(&self.program, self.state(), &self.id, &req, stdio).unwrap();
        let report = p.wait().unwrap();
        (report, std::fs::read_to_string(path).unwrap())
    }

    /// Starts `req` (no stdio) and returns the error it fails with.
    fn exec_error(&self, id: &str, req: ExecRequest) -> ShimError {
        shim::exec(&self.program, self.state(), id, &req, ExecStdio::default()).unwrap_err()
    }

    fn init_pid(&self) -> i32 {
        shim::state(self.state(), &self.id).unwrap().pid.unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(s) = shim::state(self.state(), &self.id) {
            let _ = shim::kill(self.state(), &self.id, libc::SIGKILL);
            let _ = shim::wait(self.state(), &self.id, Some(Duration::from_secs(10)));
            if s.shim_pid > 0 && s.status != Status::Stopped {
                // SAFETY: signalling the shim this test started, if it did not finish.
                unsafe { libc::kill(s.shim_pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn exec_runs_inside_the_containers_namespaces_and_returns_the_exit_code() {
    let c = Running::start("ns", "sleep 1000", Some("exec-box"));
    let (report, out) = c.exec(
        "hostname; echo procs: $(ls /proc | grep -c '^[0-9]'); \
         tr '\\0' ' ' < /proc/1/cmdline; echo; echo me: $$; ls /bin/busybox; exit 42",
        None,
        ExecRequest::default(),
    );
    assert_eq!((report.code, report.status()), (Some(42), 42), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "exec-box", "{out}");
    // Its own pid namespace: the container's sleep is pid 1, and only a handful of
    // processes (sleep, this sh, the subshell, ls, grep) are visible.
    let procs: u32 = lines[1].strip_prefix("procs: ").unwrap().parse().unwrap();
    assert!((2..=6).contains(&procs), "{out}");
    assert_eq!(lines[2].trim(), "sleep 1000", "{out}");
    let me: i32 = lines[3].strip_prefix("me: ").unwrap().parse().unwrap();
    assert!(me > 1 && me < 100, "{out}");
    // The container's root filesystem, not the host's.
    assert_eq!(lines[4], "/bin/busybox", "{out}");
}

#[test]
fn exec_joins_the_containers_cgroup() {
    let c = Running::start("cg", "sleep 1000", None);
    let path = c.out.path().join("out");
    let out = File::create(&path).unwrap();
    let req = ExecRequest {
        args: vec!["sleep".into(), "1000".into()],
        ..ExecRequest::default()
    };
    let stdio = ExecStdio {
        stdin: None,
        stdout: Some(out.as_fd()),
        stderr: Some(out.as_fd()),
    };
    let p = shim::exec(&c.program, c.state(), &c.id, &req, stdio).unwrap();
    let procs = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/pids")
            .join(&c.id)
            .join("cgroup.procs"),
    )
    .unwrap();
    assert!(
        procs.lines().any(|l| l == p.pid().to_string()),
        "{} not in {procs}",
        p.pid()
    );
    // SAFETY: signalling the process this test started.
    unsafe { libc::kill(p.pid(), libc::SIGTERM) };
    assert_eq!(p.wait().unwrap().signal, Some(libc::SIGTERM));
}

#[test]
fn exec_applies_env_user_and_cwd_overrides() {
    let c = Running::start("overrides", "sleep 1000", None);
    let (report, out) = c.exec(
        "echo foo=$FOO; echo path=$PATH; id -u; id -g; pwd",
        Some("app"),
        ExecRequest {
            env: vec!["FOO=bar baz".into()],
            cwd: Some(PathBuf::from("/tmp")),
            ..ExecRequest::default()
        },
    );
    assert_eq!(report.status(), 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "foo=bar baz", "{out}");
    // The bundle's environment is kept under the additions.
    assert!(
        lines[1].starts_with("path=/") && lines[1].contains("/bin"),
        "{out}"
    );
    assert_eq!(&lines[2..], ["1000", "1000", "/tmp"], "{out}");

    let (_, out) = c.exec("id -u; id -g", Some("4321:8765"), ExecRequest::default());
    assert_eq!(out, "4321\n8765\n");
    let err = c
        .exec_error(
            &c.id,
            ExecRequest {
                args: vec!["true".into()],
                user: Some("nosuchuser".into()),
                ..ExecRequest::default()
            },
        )
        .to_string();
    assert!(err.contains("nosuchuser") && err.contains(&c.id), "{err}");
}

#[test]
fn a_privileged_exec_alone_gets_every_capability() {
    let c = Running::start("privileged", "sleep 1000", None);
    let caps = |privileged| {
        let (report, out) = c.exec(
            "grep -E '^Cap(Eff|Bnd)' /proc/self/status",
            None,
            ExecRequest {
                privileged,
                ..ExecRequest::default()
            },
        );
        assert_eq!(report.status(), 0, "{out}");
        out
    };
    let plain = caps(false);
    let privileged = caps(true);
    // Docker's default set is 00000000a80425fb; every capability sets far more bits,
    // SYS_ADMIN (bit 21) among them.
    let eff = |out: &str| {
        let hex = out
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim()
            .to_string();
        u64::from_str_radix(&hex, 16).unwrap()
    };
    assert_eq!(eff(&plain) & (1 << 21), 0, "{plain}");
    assert_ne!(eff(&privileged) & (1 << 21), 0, "{privileged}");
    // The container itself keeps its own set: a later plain exec is as before.
    assert_eq!(caps(false), plain);
}

#[test]
fn exec_with_a_tty_gets_a_terminal_of_the_given_size() {
    let c = Running::start("tty", "sleep 1000", None);
    let opts = ExecRequest {
        args: vec![
            "sh".into(),
            "-c".into(),
            "tty; stty size; [ -t 0 ] && echo stdin-is-a-tty".into(),
        ],
        tty: Some((33, 77)),
        ..ExecRequest::default()
    };
    let mut p = shim::exec(&c.program, c.state(), &c.id, &opts, ExecStdio::default()).unwrap();
    let master = p.take_master().unwrap();
    let path = c.out.path().join("tty");
    let out = File::create(&path).unwrap();
    runtime::relay(&master, None, out.as_fd(), &mut || {}).unwrap();
    assert_eq!(p.wait().unwrap().status(), 0);
    let text = std::fs::read_to_string(path).unwrap().replace('\r', "");
    let lines: Vec<&str> = text.lines().collect();
    // A pty of the container's own /dev/pts instance.
    assert!(lines[0].starts_with("/dev/pts/"), "{text:?}");
    assert_eq!(lines[1], "33 77", "{text:?}");
    assert_eq!(lines[2], "stdin-is-a-tty", "{text:?}");
}

/// The lines of /proc/<pid>/status that say how a process is confined.
fn confinement(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| {
            [
                "CapInh",
                "CapPrm",
                "CapEff",
                "CapBnd",
                "CapAmb",
                "NoNewPrivs",
                "Seccomp:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn exec_is_confined_like_the_containers_init() {
    let c = Running::start("confine", "sleep 1000", None);
    let init =
        confinement(&std::fs::read_to_string(format!("/proc/{}/status", c.init_pid())).unwrap());
    let (_, out) = c.exec("cat /proc/self/status", None, ExecRequest::default());
    let exec = confinement(&out);
    assert_eq!(exec, init);
    assert_eq!(init.len(), 7, "{init:?}");
    // And that is not the host's (unconfined) state.
    assert!(
        init.iter()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2')),
        "{init:?}"
    );
    assert!(init.contains(&"NoNewPrivs:\t1".to_string()), "{init:?}");
    let mine = confinement(&std::fs::read_to_string("/proc/self/status").unwrap());
    assert_ne!(exec, mine);
}

#[test]
fn exec_reports_a_missing_program_a_stopped_container_and_a_missing_one() {
    let c = Running::start("errors", "sleep 1000", None);
    let err = c
        .exec_error(
            &c.id,
            ExecRequest {
                args: vec!["no-such-program".into()],
                ..ExecRequest::default()
            },
        )
        .to_string();
    assert!(
        err.contains("exec: \"no-such-program\": executable file not found"),
        "{err}"
    );

    shim::kill(c.state(), &c.id, libc::SIGKILL).unwrap();
    let start = Instant::now();
    while shim::state(c.state(), &c.id).unwrap().status != Status::Stopped {
        assert!(start.elapsed() < DEADLINE);
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = c.exec_error(
        &c.id,
        ExecRequest {
            args: vec!["true".into()],
            ..ExecRequest::default()
        },
    );
    assert!(matches!(err, ShimError::NotRunning { .. }), "{err}");
    assert!(err.to_string().contains("is not running"), "{err}");

    let err = c.exec_error(
        "no-such-container",
        ExecRequest {
            args: vec!["true".into()],
            ..ExecRequest::default()
        },
    );
    assert!(matches!(err, ShimError::NotFound { .. }), "{err}");
}

/// A caller that does not ask the shim program for its build first tells the exec
/// helper which build it must be: a helper from another build refuses, saying what
/// to do, and runs nothing.
#[test]
fn an_exec_helper_from_another_build_refuses() {
    let c = Running::start("build", "sleep 1000", None);
    let stale = c.program.clone().expecting_build("not-this-build");
    let err = shim::exec(
        &stale,
        c.state(),
        &c.id,
        &ExecRequest {
            args: vec!["true".into()],
            ..ExecRequest::default()
        },
        ExecStdio::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("from another build"), "{err}");
    let same = c.program.clone().expecting_build(agent::BUILD_ID);
    let req = ExecRequest {
        args: vec!["true".into()],
        ..ExecRequest::default()
    };
    let p = shim::exec(&same, c.state(), &c.id, &req, ExecStdio::default()).unwrap();
    assert_eq!(p.wait().unwrap().status(), 0);
}

//! The detached container lifecycle through the real binary (as root):
//! `berth runtime run -d` and `state/kill/stop/logs/list/delete`, and above all that a
//! container outlives the process that created it, even one killed with SIGKILL.
//!
//! The shim is `berth runtime shim` (`BERTH_SHIM=builtin`), so these tests do not
//! depend on whether the agent's `berth-shim` binary happens to be built; the agent's
//! own tests (`agent/tests/shim.rs`) run that one.

// Helpers are test code: a panic is how they fail (clippy.toml covers #[test] fns only).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// A bundle, a state directory and a cgroup of its own; the guard kills the container
/// and removes the cgroup even when the test fails.
struct Fixture {
    id: String,
    _cgroup: testkit::CgroupGuard,
    bundle: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Fixture {
    fn new(tag: &str, script: &str) -> Fixture {
        let bundle = tempfile::tempdir().unwrap();
        let dir = bundle.path();
        let id = testkit::unique_name(tag);
        common::spec_bundle(dir, &["sh", "-c", script], &id);
        Fixture {
            _cgroup: testkit::CgroupGuard(id.clone()),
            id,
            bundle,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn berth(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.env("BERTH_STATE_DIR", self.state.path())
            .env("BERTH_SHIM", "builtin");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.berth().args(args).output().unwrap()
    }

    fn state(&self) -> serde_json::Value {
        let out = self.run(&["runtime", "state", &self.id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn log_text(&self) -> String {
        let out = self.run(&["runtime", "logs", &self.id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.bundle.path().join("rootfs")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.run(&["runtime", "kill", &self.id, "KILL"]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let out = self.run(&["runtime", "state", &self.id]);
            if !out.status.success() || !text(&out.stdout).contains("\"running\"") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sends SIGKILL to a process group (dash's `kill` takes `-PGID` after the signal).
fn kill_group(pgid: i64) -> bool {
    Command::new("sh")
        .args(["-c", &format!("kill -9 -{pgid}")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills the caller's process group if the test fails before it does.
struct KillGroup(i64);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -9 -{} 2>/dev/null", self.0)])
            .status();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The session id of a process (field 6 of /proc/<pid>/stat).
fn session_of(pid: i64) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn a_container_outlives_its_caller_killed_with_sigkill_and_a_new_caller_adopts_it() {
    let f = Fixture::new(
        "adopt",
        "i=0; while [ ! -e /stop ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; echo bye; exit 5",
    );
    // The caller: a shell that creates the container and then stays alive, in a
    // process group of its own so the whole group can be killed at once.
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        "\"$BERTH\" runtime run -d --bundle \"$1\" \"$2\" >/dev/null && echo created && exec sleep 1000",
        "caller",
    ])
    .arg(f.bundle.path())
    .arg(&f.id)
    .env("BERTH", env!("CARGO_BIN_EXE_berth"))
    .env("BERTH_STATE_DIR", f.state.path())
    .env("BERTH_SHIM", "builtin")
    .stdout(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut sh, 0);
    let mut caller = sh.spawn().unwrap();
    let caller_pid = i64::from(caller.id());
    let _caller_guard = KillGroup(caller_pid);
    let mut line = String::new();
    std::io::BufReader::new(caller.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line, "created\n",
        "the caller failed to create the container"
    );

    let before = f.state();
    assert_eq!(before["status"], "running", "{before}");
    let shim_pid = before["shim_pid"].as_i64().unwrap();
    assert_ne!(session_of(shim_pid), session_of(caller_pid));

    // kill -9 the caller's whole process group.
    assert!(kill_group(caller_pid), "kill -9 -{caller_pid} failed");
    caller.wait().unwrap();

    // A new caller: the container still runs, and its log keeps growing.
    let after = f.state();
    assert_eq!(after["status"], "running", "{after}");
    assert_eq!(after["pid"], before["pid"]);
    let ticks = |t: &str| t.lines().filter(|l| l.starts_with("tick ")).count();
    let seen = ticks(&f.log_text());
    f.wait_until("more log lines", || ticks(&f.log_text()) > seen + 2);
    let listed = text(&f.run(&["runtime", "list"]).stdout);
    assert!(
        listed.contains(&f.id) && listed.contains("\"running\""),
        "{listed}"
    );

    // Let it finish: the exit report is readable by the new caller.
    std::fs::write(f.rootfs().join("stop"), "").unwrap();
    f.wait_until("the container to stop", || f.state()["status"] == "stopped");
    let end = f.state();
    assert_eq!(end["exit"]["code"], 5, "{end}");
    assert!(f.log_text().ends_with("bye\n"));

    let out = f.run(&["runtime", "delete", &f.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let gone = f.run(&["runtime", "state", &f.id]);
    assert!(!gone.status.success());
    let err = text(&gone.stderr);
    assert!(
        err.contains(&f.id) && err.contains("berth runtime list"),
        "{err}"
    );
}

#[test]
fn stop_with_a_grace_period_and_errors_that_name_the_container() {
    let f = Fixture::new("cli-stop", "echo ready; sleep 1000");
    let out = f.run(&[
        "runtime",
        "run",
        "-d",
        "--bundle",
        f.bundle.path().to_str().unwrap(),
        &f.id,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    f.wait_until("ready", || f.log_text().contains("ready"));

    let out = f.run(&["runtime", "delete", &f.id]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&f.id) && err.contains("berth runtime stop"),
        "{err}"
    );

    // sh as pid 1 ignores SIGTERM: after the 1 s grace period, SIGKILL.
    let out = f.run(&["runtime", "stop", "-t", "1", &f.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["exit"]["signal"], 9, "{s}");

    let out = f.run(&["runtime", "kill", &f.id, "TERM"]);
    let err = text(&out.stderr);
    assert!(err.contains(&f.id) && err.contains("not running"), "{err}");
    let out = f.run(&["runtime", "logs", "--tail", "1", "--json", &f.id]);
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entry["log"], "ready\n");
    assert_eq!(entry["stream"], "stdout");
}

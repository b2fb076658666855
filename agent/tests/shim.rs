//! The container lifecycle through the shim, on the real kernel, as root: each test
//! creates a busybox container under the `berth-shim` binary of this crate, with a
//! state directory, a bundle and a top-level cgroup of its own, and checks what the
//! lifecycle functions report. `TestContainer`'s guard kills whatever is left (the
//! container, its shim) and removes the cgroup even when the test fails.

// Helpers are test code: a panic is how they fail (clippy.toml covers #[test] fns only).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::runtime;
use agent::shim::{self, CreateOptions, LogEntry, LogOptions, ShimError, ShimProgram, Status};

/// Generous: the VM may be slow, the tests only wait for states to be reached.
const DEADLINE: Duration = Duration::from_secs(60);

struct TestContainer {
    id: String,
    // Dropped in this order, after `Drop::drop`: the cgroup, then the directories.
    _cgroup: testkit::CgroupGuard,
    state: tempfile::TempDir,
    bundle: tempfile::TempDir,
}

impl TestContainer {
    fn new(tag: &str, script: &str) -> TestContainer {
        TestContainer::new_with(tag, script, false)
    }

    /// With `terminal`, the container's stdio is a pty (`process.terminal`).
    fn new_with(tag: &str, script: &str, terminal: bool) -> TestContainer {
        let bundle = tempfile::tempdir().unwrap();
        testkit::busybox_rootfs(&bundle.path().join("rootfs")).unwrap();
        let args = ["sh".to_string(), "-c".to_string(), script.to_string()];
        let mut spec = runtime::default_spec(Path::new("rootfs"), &args).unwrap();
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_terminal(Some(terminal));
        let id = testkit::unique_name(tag);
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
        std::fs::write(
            bundle.path().join("config.json"),
            serde_json::to_string(&spec).unwrap(),
        )
        .unwrap();
        TestContainer {
            _cgroup: testkit::CgroupGuard(id.clone()),
            id,
            state: tempfile::tempdir().unwrap(),
            bundle,
        }
    }

    /// berth-shim, from one sealed copy shared by the tests (as the daemon shares
    /// one), rather than a copy each shim would make of itself.
    fn options() -> CreateOptions {
        static PROGRAM: std::sync::OnceLock<ShimProgram> = std::sync::OnceLock::new();
        let program = PROGRAM.get_or_init(|| {
            ShimProgram::new(PathBuf::from(env!("CARGO_BIN_EXE_berth-shim")), Vec::new())
                .sealed()
                .unwrap()
        });
        CreateOptions::new(program.clone())
    }

    fn create(&self) -> shim::ContainerState {
        self.create_with(&Self::options()).unwrap()
    }

    fn create_with(&self, opts: &CreateOptions) -> Result<shim::ContainerState, ShimError> {
        shim::create(self.state(), self.bundle.path(), &self.id, opts)
    }

    fn state(&self) -> &Path {
        self.state.path()
    }

    fn dir(&self) -> PathBuf {
        self.state().join("containers").join(&self.id)
    }

    fn logs(&self) -> Vec<LogEntry> {
        let mut out = Vec::new();
        shim::logs(self.state(), &self.id, LogOptions::default(), &mut |e| {
            out.push(e.clone());
            Ok(())
        })
        .unwrap();
        out
    }

    /// Waits until the log holds a line equal to `line` (its newline included).
    fn wait_for_log(&self, line: &str) -> Vec<LogEntry> {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            if logs.iter().any(|e| e.log == line) {
                return logs;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no {line:?} in the log: {logs:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(&self) -> shim::ContainerState {
        shim::wait(self.state(), &self.id, Some(DEADLINE)).unwrap()
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        if let Ok(s) = shim::state(self.state(), &self.id) {
            let _ = shim::kill(self.state(), &self.id, libc::SIGKILL);
            let _ = shim::wait(self.state(), &self.id, Some(Duration::from_secs(10)));
            if s.shim_pid > 0 && s.status != Status::Stopped {
                // SAFETY: signalling a pid; the shim is ours (its start time was
                // checked by `state`) and is killed only if it did not finish.
                unsafe { libc::kill(s.shim_pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn a_created_container_runs_detached_and_logs_stdout_and_stderr_as_json_lines() {
    let c = TestContainer::new("logs", "echo to-stdout; echo to-stderr >&2; sleep 1000");
    let created = c.create();
    assert_eq!(created.status, Status::Running, "{created:?}");
    let pid = created.pid.unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    c.wait_for_log("to-stderr\n");
    let logs = c.wait_for_log("to-stdout\n");
    assert!(logs
        .iter()
        .any(|e| e.stream == shim::Stream::Stdout && e.log == "to-stdout\n"));
    assert!(logs
        .iter()
        .any(|e| e.stream == shim::Stream::Stderr && e.log == "to-stderr\n"));
    // The file itself is Docker's json-file format, one object per line.
    let text = std::fs::read_to_string(c.dir().join("log.json")).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3, "{line}");
        let time = v["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 30, "{time}");
        assert!(["stdout", "stderr"].contains(&v["stream"].as_str().unwrap()));
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(c.dir()).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);

    let listed = shim::list(c.state()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].status),
        (c.id.as_str(), Status::Running)
    );
    let err = shim::delete(c.state(), &c.id).unwrap_err().to_string();
    assert!(
        err.contains(&c.id) && err.contains("stop it first"),
        "{err}"
    );
    let again = c.create_with(&TestContainer::options()).unwrap_err();
    assert!(matches!(again, ShimError::Exists { .. }), "{again}");
}

#[test]
fn the_exit_code_is_recorded_and_delete_removes_the_state() {
    let c = TestContainer::new("exit3", "echo bye; exit 3");
    c.create();
    let s = c.wait();
    assert_eq!(s.status, Status::Stopped);
    let exit = s.exit.unwrap();
    assert_eq!((exit.code, exit.signal, exit.status()), (Some(3), None, 3));
    assert!(c.logs().iter().any(|e| e.log == "bye\n"));
    let err = shim::kill(c.state(), &c.id, libc::SIGTERM)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not running") && err.contains("exit 3"),
        "{err}"
    );
    shim::delete(c.state(), &c.id).unwrap();
    assert!(!c.dir().exists());
    let err = shim::state(c.state(), &c.id).unwrap_err();
    assert!(matches!(err, ShimError::NotFound { .. }), "{err}");
}

#[test]
fn stop_lets_a_container_that_handles_sigterm_exit_within_the_grace_period() {
    let c = TestContainer::new(
        "trap",
        "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
    );
    c.create();
    c.wait_for_log("ready\n");
    let s = shim::stop(c.state(), &c.id, libc::SIGTERM, DEADLINE).unwrap();
    let exit = s.exit.unwrap();
    assert_eq!((exit.code, exit.signal), (Some(0), None), "{s:?}");
    assert!(c.logs().iter().any(|e| e.log == "got-term\n"));
}

#[test]
fn stop_kills_a_container_that_ignores_sigterm_once_the_grace_period_is_over() {
    // A pid namespace's init ignores signals it has no handler for: SIGTERM does nothing.
    let c = TestContainer::new("ignore", "echo ready; sleep 1000");
    c.create();
    c.wait_for_log("ready\n");
    let s = shim::stop(c.state(), &c.id, libc::SIGTERM, Duration::from_millis(500)).unwrap();
    let exit = s.exit.unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{s:?}");
    assert_eq!(exit.status(), 137);
}

#[test]
fn log_rotation_keeps_at_most_max_files() {
    let c = TestContainer::new("rotate", "seq 1 3000; echo done");
    let opts = CreateOptions {
        log_max_size: 8192,
        log_max_files: 2,
        ..TestContainer::options()
    };
    c.create_with(&opts).unwrap();
    assert_eq!(c.wait().exit.unwrap().code, Some(0));
    let mut logs: Vec<String> = std::fs::read_dir(c.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("log.json"))
        .collect();
    logs.sort();
    assert_eq!(logs, ["log.json", "log.json.1"]);
    for name in &logs {
        assert!(std::fs::metadata(c.dir().join(name)).unwrap().len() <= 8192);
    }
    let entries = c.logs();
    assert_eq!(entries.last().unwrap().log, "done\n");
    // The oldest lines were rotated away; what is kept is contiguous.
    let tail = shim::logs(
        c.state(),
        &c.id,
        LogOptions {
            follow: false,
            tail: Some(2),
        },
        &mut |_| Ok(()),
    );
    assert!(tail.is_ok());
    assert!(
        entries.len() < 3001 && entries.len() > 100,
        "{}",
        entries.len()
    );
}

#[test]
fn follow_reads_until_the_container_stops() {
    let c = TestContainer::new(
        "follow",
        "for i in 1 2 3 4 5; do echo line $i; sleep 0.1; done",
    );
    c.create();
    let mut seen = Vec::new();
    let opts = LogOptions {
        follow: true,
        tail: None,
    };
    shim::logs(c.state(), &c.id, opts, &mut |e| {
        seen.push(e.log.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        (1..=5).map(|i| format!("line {i}\n")).collect::<Vec<_>>()
    );
}

#[test]
fn a_container_that_cannot_start_returns_the_runtimes_error_and_leaves_nothing() {
    let c = TestContainer::new("nostart", "true");
    let config = c.bundle.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"sh\",", "\"no-such-program\",")).unwrap();
    let err = c.create_with(&TestContainer::options()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ShimError::Start { .. }), "{text}");
    assert!(
        text.contains(&c.id) && text.contains("no-such-program") && text.contains("ENOENT"),
        "{text}"
    );
    assert!(!c.dir().exists());
}

/// Field `n` (1-based, as in proc(5)) of /proc/<pid>/stat.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    rest.split_whitespace().nth(n - 3).map(str::to_string)
}

fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    ["memory", "pids", "cpu", "unified", ""]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c).join(id))
        .filter(|d| d.is_dir())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_containers_first_process_is_the_shims_own_child() {
    let c = TestContainer::new("parent", "sleep 1000");
    let s = c.create();
    let pid = s.pid.unwrap();
    // No runner process in between: the shim cloned the container itself.
    assert_eq!(stat_field(pid, 4).unwrap(), s.shim_pid.to_string());
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", s.shim_pid)).unwrap();
    assert_eq!(
        children.split_whitespace().collect::<Vec<_>>(),
        [pid.to_string()]
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.shim_pid)).unwrap();
    assert!(status.contains("Threads:\t1\n"), "{status}");
    assert_eq!(s.cgroup, Some(PathBuf::from(&c.id)));
}

#[test]
fn a_shim_killed_by_hand_takes_its_container_with_it_and_delete_cleans_up() {
    let c = TestContainer::new("shimkill", "sleep 1000 & sleep 1000 & echo ready; wait");
    let s = c.create();
    c.wait_for_log("ready\n");
    let pid = s.pid.unwrap();
    let pid_start = stat_field(pid, 22).unwrap();
    assert!(!cgroup_dirs(&c.id).is_empty());
    // SAFETY: signalling the shim this test started.
    unsafe { libc::kill(s.shim_pid, libc::SIGKILL) };
    // The container's init (and with it its pid namespace) dies with the shim.
    wait_until("the container has died", || {
        stat_field(pid, 22).as_deref() != Some(pid_start.as_str())
            || stat_field(pid, 3).as_deref() == Some("Z")
    });
    let after = shim::state(c.state(), &c.id).unwrap();
    assert_eq!(after.status, Status::Stopped, "{after:?}");
    let error = after.error.clone().unwrap();
    assert!(
        error.contains("shim") && error.contains("killed") && error.contains("delete"),
        "{error}"
    );
    assert_eq!(after.exit, None);
    assert_eq!(shim::list(c.state()).unwrap()[0].status, Status::Stopped);
    assert_eq!(
        shim::wait(c.state(), &c.id, Some(DEADLINE)).unwrap().status,
        Status::Stopped
    );
    let err = shim::kill(c.state(), &c.id, libc::SIGTERM)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not running") && err.contains("shim"), "{err}");
    // The shim could not remove the (now empty) cgroup; delete does.
    wait_until("the cgroup is empty", || {
        cgroup_dirs(&c.id).iter().all(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .map(|p| p.trim().is_empty())
                .unwrap_or(true)
        })
    });
    assert!(
        !cgroup_dirs(&c.id).is_empty(),
        "the cgroup should still be there"
    );
    shim::delete(c.state(), &c.id).unwrap();
    assert!(cgroup_dirs(&c.id).is_empty(), "{:?}", cgroup_dirs(&c.id));
    assert!(!c.dir().exists());
}

/// Reads frames from an attached shim until it closes the connection: (kind, bytes).
fn read_attached(sock: &mut std::os::unix::net::UnixStream) -> Vec<(u8, String)> {
    use std::io::Read;
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut all = Vec::new();
    sock.read_to_end(&mut all).unwrap();
    let mut d = shim::attach::Decoder::default();
    d.push(&all)
        .unwrap()
        .into_iter()
        .map(|(k, b)| (k, String::from_utf8_lossy(&b).to_string()))
        .collect()
}

#[test]
fn an_attached_client_drives_a_containers_terminal() {
    use std::io::Write;
    let c = TestContainer::new_with(
        "tty",
        "echo early; read line; echo got=$line; tty; stty size",
        true,
    );
    let mut opts = TestContainer::options();
    opts.stdin = true;
    c.create_with(&opts).unwrap();
    // Output written before anyone attached is replayed to the first client.
    c.wait_for_log("early\r\n");
    let mut sock = shim::attach::connect(c.state(), &c.id).unwrap();
    sock.write_all(&shim::attach::resize_frame(runtime::WindowSize {
        rows: 50,
        cols: 132,
    }))
    .unwrap();
    sock.write_all(&shim::attach::frame(shim::attach::STDIN, b"typed\n"))
        .unwrap();
    let mut frames = read_attached(&mut sock);
    assert_eq!(
        frames.pop().map(|f| f.0),
        Some(shim::attach::END),
        "the stream ends with an end frame"
    );
    let text: String = frames.iter().map(|(_, t)| t.as_str()).collect();
    assert!(
        frames.iter().all(|(k, _)| *k == shim::attach::STDOUT),
        "a terminal is one stream: {frames:?}"
    );
    assert!(text.starts_with("early"), "{text}");
    assert!(text.contains("got=typed"), "{text}");
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("50 132"), "{text}");
    assert_eq!(c.wait().exit.unwrap().code, Some(0));
    // The log has it too, and the socket is gone with the container.
    assert!(c.logs().iter().any(|e| e.log.contains("got=typed")));
    assert!(shim::attach::connect(c.state(), &c.id).is_err());
}

#[test]
fn an_open_stdin_without_a_terminal_gets_input_until_the_client_closes_it() {
    use std::io::Write;
    let c = TestContainer::new("stdin", "cat; echo err-line >&2; echo cat-ended");
    let mut opts = TestContainer::options();
    opts.stdin = true;
    c.create_with(&opts).unwrap();
    let mut sock = shim::attach::connect(c.state(), &c.id).unwrap();
    sock.write_all(&shim::attach::frame(shim::attach::STDIN, b"line one\n"))
        .unwrap();
    sock.write_all(&shim::attach::frame(shim::attach::CLOSE_STDIN, &[]))
        .unwrap();
    let frames = read_attached(&mut sock);
    let out: String = frames
        .iter()
        .filter(|(k, _)| *k == shim::attach::STDOUT)
        .map(|(_, t)| t.as_str())
        .collect();
    let err: String = frames
        .iter()
        .filter(|(k, _)| *k == shim::attach::STDERR)
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(out, "line one\ncat-ended\n");
    assert_eq!(err, "err-line\n");
    assert_eq!(c.wait().exit.unwrap().code, Some(0));
}

#[test]
fn a_container_without_open_stdin_cannot_be_attached_and_reads_eof() {
    let c = TestContainer::new("nostdin", "cat; echo eof-at-once; sleep 1000");
    c.create();
    c.wait_for_log("eof-at-once\n");
    let err = shim::attach::connect(c.state(), &c.id)
        .unwrap_err()
        .to_string();
    assert!(err.contains("attach"), "{err}");
}

#[test]
fn a_container_that_does_not_read_its_input_still_has_its_output_read() {
    use std::io::Write;
    // It writes a lot before reading anything; the client sends a lot meanwhile. With
    // blocking writes in the shim both would wait on each other forever.
    let c = TestContainer::new("noread", "seq 1 200000; cat > /dev/null; echo drained");
    let mut opts = TestContainer::options();
    opts.stdin = true;
    // A one-off: its output waits for its first client rather than being cut.
    opts.stdin_once = true;
    c.create_with(&opts).unwrap();
    // Late, as a busy caller may be.
    std::thread::sleep(Duration::from_millis(300));
    let sock = shim::attach::connect(c.state(), &c.id).unwrap();
    let mut writer = sock.try_clone().unwrap();
    let input = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..32 {
            writer
                .write_all(&shim::attach::frame(shim::attach::STDIN, &chunk))
                .unwrap();
        }
        writer
            .write_all(&shim::attach::frame(shim::attach::CLOSE_STDIN, &[]))
            .unwrap();
    });
    let mut sock = sock;
    let frames = read_attached(&mut sock);
    input.join().unwrap();
    let out: String = frames
        .iter()
        .filter(|(k, _)| *k == shim::attach::STDOUT)
        .map(|(_, t)| t.as_str())
        .collect();
    assert!(out.starts_with("1\n2\n"), "{}", &out[..out.len().min(100)]);
    assert!(
        out.contains("\n200000\ndrained\n"),
        "{}",
        &out[out.len().saturating_sub(100)..]
    );
    assert_eq!(frames.last().map(|f| f.0), Some(shim::attach::END));
    assert_eq!(c.wait().exit.unwrap().code, Some(0));
}

#[test]
fn a_one_offs_stdin_closes_when_its_client_goes() {
    use std::io::Write;
    let c = TestContainer::new("once", "cat; echo stdin-closed");
    let mut opts = TestContainer::options();
    opts.stdin = true;
    opts.stdin_once = true;
    c.create_with(&opts).unwrap();
    let mut sock = shim::attach::connect(c.state(), &c.id).unwrap();
    sock.write_all(&shim::attach::frame(shim::attach::STDIN, b"before\n"))
        .unwrap();
    // The caller dies without closing stdin.
    drop(sock);
    let logs = c.wait_for_log("stdin-closed\n");
    assert!(logs.iter().any(|e| e.log == "before\n"), "{logs:?}");
    assert_eq!(c.wait().exit.unwrap().code, Some(0));
}

#[test]
fn a_container_with_a_long_id_can_be_attached() {
    use std::io::Write;
    // The socket's full path is past the 108 bytes of a unix socket address.
    let c = TestContainer::new(&"long".repeat(20), "cat");
    assert!(
        c.dir().join("attach.sock").as_os_str().len() > 108,
        "{}",
        c.dir().display()
    );
    let mut opts = TestContainer::options();
    opts.stdin = true;
    c.create_with(&opts).unwrap();
    let mut sock = shim::attach::connect(c.state(), &c.id).unwrap();
    sock.write_all(&shim::attach::frame(
        shim::attach::STDIN,
        b"via a long path\n",
    ))
    .unwrap();
    sock.write_all(&shim::attach::frame(shim::attach::CLOSE_STDIN, &[]))
        .unwrap();
    let frames = read_attached(&mut sock);
    assert_eq!(
        frames[0],
        (shim::attach::STDOUT, "via a long path\n".to_string())
    );
    assert_eq!(c.wait().exit.unwrap().code, Some(0));
}

/// The OOM killer takes a container before its shim: the shim lowers its own score
/// (where CAP_SYS_RESOURCE allows), and the container never inherits the shim's
/// score but gets its spec's, or Docker's 0. Here the test raises its own score to
/// 300 first (raising needs no privilege), so a container that inherited it would
/// show 300.
#[test]
fn a_container_gets_its_own_oom_score_never_its_shims() {
    std::fs::write("/proc/self/oom_score_adj", "300").unwrap();
    let c = TestContainer::new("oom", "cat /proc/self/oom_score_adj; sleep 1000");
    let s = c.create();
    let logs = c.wait_for_log("0\n");
    assert_eq!(logs[0].log, "0\n");
    let shim_score: i32 = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", s.shim_pid))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let can_lower = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        // Bit 24 is CAP_SYS_RESOURCE.
        .is_some_and(|caps| caps & (1 << 24) != 0);
    if can_lower {
        assert_eq!(shim_score, agent::runtime::SHIM_OOM_SCORE_ADJ);
    } else {
        // This sandbox cannot lower any score: the shim keeps what it inherited.
        assert_eq!(shim_score, 300);
    }
}

/// The shim's own work (the container's log) is accounted and bounded: it runs in a
/// cgroup of its own, `berth-shim/<id>`, with half a CPU, and that cgroup goes when
/// the container does.
#[test]
fn the_shim_runs_in_a_cpu_limited_cgroup_of_its_own() {
    let c = TestContainer::new("shimcpu", "while :; do echo flood-flood-flood; done");
    let s = c.create();
    let cpu = Path::new("/sys/fs/cgroup/cpu/berth-shim").join(&c.id);
    let (procs, quota) = if cpu.is_dir() {
        (cpu.join("cgroup.procs"), cpu.join("cpu.cfs_quota_us"))
    } else {
        let v2 = Path::new("/sys/fs/cgroup/berth-shim").join(&c.id);
        (v2.join("cgroup.procs"), v2.join("cpu.max"))
    };
    let members = std::fs::read_to_string(&procs).unwrap();
    assert!(
        members.lines().any(|l| l == s.shim_pid.to_string()),
        "shim {} not in {}: {members}",
        s.shim_pid,
        procs.display()
    );
    // The container is not in it.
    assert!(!members
        .lines()
        .any(|l| Some(l) == s.pid.map(|p| p.to_string()).as_deref()));
    let quota = std::fs::read_to_string(&quota).unwrap();
    assert!(quota.starts_with("50000"), "{quota}");
    shim::kill(c.state(), &c.id, libc::SIGKILL).unwrap();
    c.wait();
    wait_until("the shim's cgroup to go", || !procs.exists());
}

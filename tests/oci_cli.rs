//! The OCI runtime command line through the real binary (as root), as runtime-spec's
//! runtime.md defines it and runc speaks it: `create` leaves the program waiting,
//! `start` runs it, `state` prints runtime.md's JSON, `kill` reaches created and
//! running containers, `delete` refuses what is not stopped unless `--force`; and
//! runc's own default bundle (`runc spec`) runs under berth as under runc.
//!
//! The shim is `berth runtime shim` (`BERTH_SHIM=builtin`), as in
//! `runtime_lifecycle_cli.rs`.

// Helpers are test code: a panic is how they fail (clippy.toml covers #[test] fns only).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// A busybox bundle running `script`, a `--root` of its own and a cgroup of its own;
/// dropping it force-deletes the container and removes the cgroup, even when the
/// test fails.
struct Oci {
    id: String,
    _cgroup: testkit::CgroupGuard,
    bundle: tempfile::TempDir,
    root: tempfile::TempDir,
}

impl Oci {
    fn new(tag: &str, script: &str) -> Oci {
        let bundle = tempfile::tempdir().unwrap();
        let dir = bundle.path();
        let id = testkit::unique_name(tag);
        let mut spec = common::spec_bundle(dir, &["sh", "-c", script], &id);
        spec["annotations"] = serde_json::json!({ "org.example.test": tag });
        common::write_spec(dir, &spec);
        Oci {
            _cgroup: testkit::CgroupGuard(id.clone()),
            id,
            bundle,
            root: tempfile::tempdir().unwrap(),
        }
    }

    /// `berth runtime --root ROOT ARGS...`, stdio to /dev/null unless set.
    fn berth(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.env("BERTH_SHIM", "builtin")
            .args(["runtime", "--root"])
            .arg(self.root.path())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.berth(args).output().unwrap()
    }

    /// `create`, with its (and so the container's) stdout and stderr going to `out`:
    /// the caller's stdio is the container's, so a pipe would stay open as long as it
    /// runs. Returns whether it succeeded and what it wrote.
    fn create(&self, out: &Path, extra: &[&str]) -> (bool, String) {
        let file = std::fs::File::create(out).unwrap();
        let bundle = self.bundle.path().to_str().unwrap().to_string();
        let mut args = vec!["create", "--bundle", &bundle];
        args.extend_from_slice(extra);
        args.push(&self.id);
        let status = self
            .berth(&args)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .unwrap();
        (status.success(), std::fs::read_to_string(out).unwrap())
    }

    fn state(&self) -> serde_json::Value {
        let out = self.run(&["state", &self.id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn wait_for(&self, status: &str) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let s = self.state();
            if s["status"] == status {
                return s;
            }
            assert!(start.elapsed() < DEADLINE, "never {status}: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Oci {
    fn drop(&mut self) {
        let _ = self.run(&["delete", "--force", &self.id]);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wait_for_file(path: &Path, want: &str) -> String {
    let start = Instant::now();
    loop {
        let got = std::fs::read_to_string(path).unwrap_or_default();
        if got.contains(want) || start.elapsed() > DEADLINE {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn create_waits_for_start_and_state_follows_runtime_md() {
    let c = Oci::new(
        "oci-life",
        "echo started; echo to-stderr >&2; touch /ran; exec sleep 1000",
    );
    let out_file = c.root.path().join("stdio");
    let pid_file = c.root.path().join("pid");
    let (ok, said) = c.create(&out_file, &["--pid-file", pid_file.to_str().unwrap()]);
    assert!(ok, "{said}");

    // Created: set up, with a pid, but the program has not run.
    let s = c.state();
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["id"], c.id.as_str());
    assert!(s["ociVersion"].is_string(), "{s}");
    assert_eq!(
        Path::new(s["bundle"].as_str().unwrap()),
        std::fs::canonicalize(c.bundle.path()).unwrap()
    );
    assert_eq!(s["annotations"]["org.example.test"], "oci-life", "{s}");
    let pid = s["pid"].as_i64().unwrap();
    assert!(pid > 0, "{s}");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!c.bundle.path().join("rootfs/ran").exists());
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "");

    // Deleting a created container is refused and changes nothing.
    let out = c.run(&["delete", &c.id]);
    assert!(!out.status.success());
    assert_eq!(c.state()["status"], "created");

    // Start: the same process runs the program, on the caller's stdio.
    let out = c.run(&["start", &c.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = c.wait_for("running");
    assert_eq!(s["pid"].as_i64().unwrap(), pid, "{s}");
    let stdio = wait_for_file(&out_file, "to-stderr");
    assert!(
        stdio.contains("started\n") && stdio.contains("to-stderr\n"),
        "{stdio:?}"
    );
    assert!(c.bundle.path().join("rootfs/ran").exists());

    // A second start is an error and does not run the program again.
    let out = c.run(&["start", &c.id]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not created"),
        "{}",
        text(&out.stderr)
    );

    // kill with runc's signal forms; sh as pid 1 ignores TERM, KILL stops it.
    let out = c.run(&["kill", &c.id, "SIGKILL"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = c.wait_for("stopped");
    assert_eq!(s["pid"], 0, "{s}");
    let out = c.run(&["kill", &c.id, "KILL"]);
    assert!(
        !out.status.success(),
        "kill of a stopped container must fail"
    );

    let out = c.run(&["delete", &c.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!c.run(&["state", &c.id]).status.success());
}

#[test]
fn created_containers_can_be_killed_and_force_deleted() {
    let c = Oci::new("oci-kill", "touch /ran");
    let (ok, said) = c.create(&c.root.path().join("stdio"), &[]);
    assert!(ok, "{said}");
    assert_eq!(c.state()["status"], "created");

    let out = c.run(&["delete", "--force", &c.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!c.run(&["state", &c.id]).status.success());
    assert!(!c.bundle.path().join("rootfs/ran").exists());
    assert!(
        !Path::new("/sys/fs/cgroup/pids").join(&c.id).exists(),
        "the cgroup is removed"
    );

    // The same id can be created again, and KILL reaches the waiting process.
    let (ok, said) = c.create(&c.root.path().join("stdio"), &[]);
    assert!(ok, "{said}");
    let out = c.run(&["kill", &c.id, "9"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = c.wait_for("stopped");
    assert!(!c.bundle.path().join("rootfs/ran").exists(), "{s}");
    let out = c.run(&["start", &c.id]);
    assert!(
        !out.status.success(),
        "start of a stopped container must fail"
    );
}

#[test]
fn runc_global_flags_are_accepted_and_unknown_ids_are_errors() {
    let c = Oci::new("oci-flags", "true");
    let log = c.root.path().join("log.json");
    let out = c.run(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "state",
        "no-such-container",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no-such-container does not exist"),
        "{}",
        text(&out.stderr)
    );
    let out = c.run(&["start", "no-such-container"]);
    assert!(!out.status.success());
    // As runc: a forced delete is how callers clean up, whatever is left.
    let out = c.run(&["delete", "--force", "no-such-container"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = c.run(&["delete", "no-such-container"]);
    assert!(!out.status.success());
}

/// Receives one descriptor sent with SCM_RIGHTS on `stream` (what containerd's
/// console socket does with runc's).
fn receive_fd(stream: &std::os::unix::net::UnixStream) -> std::fs::File {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: recvmsg into buffers on this stack frame; the control message is read
    // only within the length the kernel reports.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        assert!(libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) > 0);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS);
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
        std::fs::File::from_raw_fd(fd)
    }
}

/// A config with `process.terminal` needs `--console-socket`: the terminal's master
/// goes there, and the container's program runs on its slave once started.
#[test]
fn a_terminal_goes_to_the_console_socket() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let c = Oci::new("oci-tty", "echo on-tty; tty; exec sleep 1000");
    let config = c.bundle.path().join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    spec["process"]["terminal"] = true.into();
    std::fs::write(&config, spec.to_string()).unwrap();

    let (ok, said) = c.create(&c.root.path().join("stdio"), &[]);
    assert!(!ok && said.contains("--console-socket"), "{said}");

    let socket = c.root.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (ok, said) = c.create(
        &c.root.path().join("stdio"),
        &["--console-socket", socket.to_str().unwrap()],
    );
    assert!(ok, "{said}");
    let (conn, _) = listener.accept().unwrap();
    let mut master = receive_fd(&conn);
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    assert_eq!(c.state()["status"], "created");

    let out = c.run(&["start", &c.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut seen = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("/dev/pts/") {
        assert!(start.elapsed() < DEADLINE, "{:?}", text(&seen));
        let mut buf = [0u8; 256];
        match master.read(&mut buf) {
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(text(&seen).contains("on-tty"), "{:?}", text(&seen));
}

/// `berth runtime list` on a state directory the daemon also uses: its container
/// directories hold an OCI bundle's config.json, not a shim's; they are not listed
/// (they used to fail the whole list with "config.json: missing field id").
#[test]
fn list_skips_directories_that_are_not_shim_containers() {
    let c = Oci::new("oci-list", "exec sleep 1000");
    let foreign = c.root.path().join("containers/made-by-the-daemon");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::copy(
        c.bundle.path().join("config.json"),
        foreign.join("config.json"),
    )
    .unwrap();
    let (ok, said) = c.create(&c.root.path().join("stdio"), &[]);
    assert!(ok, "{said}");

    let out = c.run(&["list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ids: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
        .collect();
    assert_eq!(ids, vec![format!("\"{}\"", c.id)]);
}

/// The bundle `runc spec` writes (on this host: a `cgroup` mount, ambient capabilities
/// without inheritable ones), with only its command and terminal changed, runs under
/// `berth runtime run` as under `runc run`.
#[test]
fn runc_spec_bundle_runs_unchanged_side_by_side_with_runc() {
    if Command::new("runc").arg("--version").output().is_err() {
        panic!("runc is missing: apt-get install -y runc (.ci/run installs it)");
    }
    let bundle = tempfile::tempdir().unwrap();
    let dir = bundle.path();
    testkit::busybox_rootfs(&dir.join("rootfs")).unwrap();
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "runc spec: {}", text(&out.stderr));
    let config = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    // What makes it interesting is left as runc wrote it.
    let caps = &spec["process"]["capabilities"];
    assert!(caps["ambient"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(caps
        .get("inheritable")
        .is_none_or(|i| i.as_array().is_some_and(|a| a.is_empty())));
    let id = testkit::unique_name("runc-spec");
    let _cgroup = testkit::CgroupGuard(id.clone());
    spec["process"]["args"] = serde_json::json!(["sh", "-c", "true"]);
    spec["process"]["terminal"] = false.into();
    spec["linux"]["cgroupsPath"] = serde_json::Value::from(format!("/{id}"));
    std::fs::write(&config, spec.to_string()).unwrap();

    let runc_root = tempfile::tempdir().unwrap();
    let runc = Command::new("runc")
        .arg("--root")
        .arg(runc_root.path())
        .args(["run", "--bundle"])
        .arg(dir)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(runc.status.success(), "runc: {}", text(&runc.stderr));

    let berth = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["runtime", "run", "--bundle"])
        .arg(dir)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(berth.status.success(), "berth: {}", text(&berth.stderr));
}

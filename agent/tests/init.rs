//! berth's init as the container's PID 1 (`berth.init=true`, Compose's `init: true`),
//! on the real kernel, as root: orphans are reaped and signals reach the program. Each
//! case is run with and without the init, so that each test can fail: without it the
//! zombies are there and SIGTERM is ignored.

// Helpers are test code: a panic is how they fail (clippy.toml covers #[test] fns only).
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::runtime::{self, Bundle, Container, RunOptions, Stdio};

const DEADLINE: Duration = Duration::from_secs(30);

// Dropped in this order: the container (killed if still running), its cgroup, the
// bundle directory.
struct Started {
    container: Option<Container>,
    _cgroup: testkit::CgroupGuard,
    dir: tempfile::TempDir,
}

impl Started {
    fn new(tag: &str, script: &str, init: bool) -> Started {
        let dir = tempfile::tempdir().unwrap();
        testkit::busybox_rootfs(&dir.path().join("rootfs")).unwrap();
        let args = ["sh".to_string(), "-c".to_string(), script.to_string()];
        let mut spec = runtime::default_spec(Path::new("rootfs"), &args).unwrap();
        let id = testkit::unique_name(tag);
        spec.linux_mut()
            .as_mut()
            .unwrap()
            .set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
        if init {
            spec.set_annotations(Some(
                [(runtime::INIT_ANNOTATION.to_string(), "true".to_string())].into(),
            ));
        }
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&spec).unwrap(),
        )
        .unwrap();
        let cgroup = testkit::CgroupGuard(id.clone());
        let out = File::create(dir.path().join("out")).unwrap();
        let bundle = Bundle::load(dir.path()).unwrap();
        let opts = RunOptions {
            stdio: Stdio {
                stdin: None,
                stdout: Some(out.as_fd()),
                stderr: Some(out.as_fd()),
            },
            ..RunOptions::default()
        };
        let container = runtime::spawn(&bundle, &id, &opts).unwrap();
        Started {
            dir,
            container: Some(container),
            _cgroup: cgroup,
        }
    }

    fn pid(&self) -> i32 {
        self.container.as_ref().unwrap().pid()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap()
    }

    fn wait_for_output(&self, text: &str) {
        let start = Instant::now();
        while !self.output().contains(text) {
            assert!(
                start.elapsed() < DEADLINE,
                "no {text:?} in {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait(&mut self) -> runtime::ExitReport {
        self.container.take().unwrap().wait().unwrap()
    }
}

/// Every process below `pid`, with its state letter and command name.
fn descendants(pid: i32) -> Vec<(char, String)> {
    let mut out = Vec::new();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace() {
        let child: i32 = child.parse().unwrap();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let open = stat.find('(').unwrap();
        let close = stat.rfind(')').unwrap();
        let state = stat[close + 2..].chars().next().unwrap();
        out.push((state, stat[open + 1..close].to_string()));
        out.extend(descendants(child));
    }
    out
}

fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Three processes orphaned at once (their parent subshell exits), which end soon
/// after; then the program becomes `sleep`, which never reaps anything.
const ORPHANS: &str = "for i in 1 2 3; do (sleep 0.1 &); done; exec sleep 1000";

#[test]
fn without_init_orphans_stay_zombies() {
    let mut c = Started::new("noinit", ORPHANS, false);
    let pid = c.pid();
    poll_until("three zombies", || {
        descendants(pid).iter().filter(|(s, _)| *s == 'Z').count() == 3
    });
    // SAFETY: signalling the container this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    c.wait();
}

#[test]
fn with_init_orphans_are_reaped() {
    let mut c = Started::new("init", ORPHANS, true);
    let pid = c.pid();
    // PID 1 is berth's init; the program (sh, then sleep) is its child, and the
    // orphans are reparented to it. Only the program is left once they are reaped;
    // unreaped they would stay as zombies and this would time out.
    poll_until("the orphans are reaped", || {
        descendants(pid) == [('S', "sleep".to_string())]
    });
    // SAFETY: signalling the container this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    c.wait();
}

#[test]
fn with_init_sigterm_reaches_a_program_that_has_no_handler() {
    let mut c = Started::new("term", "echo ready; exec sleep 1000", true);
    c.wait_for_output("ready");
    poll_until("the program runs sleep", || {
        descendants(c.pid()).first().map(|d| d.1.as_str()) == Some("sleep")
    });
    // SAFETY: signalling the container this test started.
    unsafe { libc::kill(c.pid(), libc::SIGTERM) };
    let report = c.wait();
    // The program died of SIGTERM; PID 1 exits with the shell's 128 + 15.
    assert_eq!(
        (report.code, report.status()),
        (Some(143), 143),
        "{report:?}"
    );
}

#[test]
fn without_init_sigterm_is_ignored_by_pid_1() {
    let mut c = Started::new("noterm", "echo ready; exec sleep 1000", false);
    c.wait_for_output("ready");
    // SAFETY: signalling the container this test started.
    unsafe { libc::kill(c.pid(), libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.container.is_some());
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.pid())).unwrap();
    assert!(!stat.contains(") Z"), "{stat}");
    // SAFETY: as above.
    unsafe { libc::kill(c.pid(), libc::SIGKILL) };
    assert_eq!(c.wait().signal, Some(libc::SIGKILL));
}

#[test]
fn with_init_the_programs_handler_runs_and_its_status_is_the_containers() {
    let mut c = Started::new(
        "handler",
        "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.01; done",
        true,
    );
    c.wait_for_output("ready");
    // SAFETY: signalling the container this test started.
    unsafe { libc::kill(c.pid(), libc::SIGTERM) };
    let report = c.wait();
    assert_eq!(report.code, Some(3), "{report:?} {}", c.output());
    assert!(c.output().contains("got-term"), "{}", c.output());
}

#[test]
fn compose_init_true_runs_the_service_under_berths_init() {
    use agent::container::{self, ContainerContext};
    use agent::image::{self, ImageStore};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("src/rootfs");
    testkit::busybox_rootfs(&root).unwrap();
    let tar = tmp.path().join("src/rootfs.tar");
    testkit::tar_dir(&root, &tar).unwrap();
    let state = tmp.path().join("state");
    let store = ImageStore::open(&state).unwrap();
    let img = image::import(&store, &tar, "test/busybox:1").unwrap();
    let id = testkit::unique_name("compose");
    let _cgroup = testkit::CgroupGuard(id.clone());
    let ctx = ContainerContext {
        service: "web".into(),
        state_dir: state.clone(),
        hostname: "web-1".into(),
        cgroups_path: Some(PathBuf::from(format!("/{id}"))),
        id: id.clone(),
        ..ContainerContext::default()
    };
    let service = spec::model::Service {
        image: Some("test/busybox:1".into()),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/1/comm; echo me=$$".into(),
        ]),
        init: Some(true),
        ..spec::model::Service::default()
    };
    /// Unmounts the rootfs and removes the container's directory, even on failure.
    struct Remove(PathBuf, String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = container::remove(&self.0, &self.1);
        }
    }
    let _remove = Remove(state.clone(), id.clone());
    let prepared = container::prepare(&store, &img, &service, &ctx).unwrap();
    let annotations = prepared.bundle.spec.annotations().clone().unwrap();
    assert_eq!(annotations[runtime::INIT_ANNOTATION], "true");
    let out_path = tmp.path().join("out");
    let out = File::create(&out_path).unwrap();
    let opts = RunOptions {
        stdio: Stdio {
            stdin: None,
            stdout: Some(out.as_fd()),
            stderr: Some(out.as_fd()),
        },
        ..RunOptions::default()
    };
    let result = runtime::run(&prepared.bundle, &id, &opts);
    let text = std::fs::read_to_string(out_path).unwrap();
    assert_eq!(result.unwrap().status(), 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    // PID 1 is berth's init, named so (not the caller's command line, a host path),
    // and the program is not PID 1.
    assert_eq!(lines[0].trim(), "berth-init", "{text}");
    assert_eq!(lines[1], "berth-init", "{text}");
    assert_ne!(lines[2], "me=1", "{text}");
}

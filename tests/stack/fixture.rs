//! The fixture the single-host tests share (`stack_cli.rs`, `shared_ports.rs`): the real
//! binary and a real daemon with this test's own state directory, project, cgroup parent
//! and network prefix and pool; its `Drop` kills the daemon and removes every container
//! and network object it left, so a failing test leaves nothing mounted or running.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub project: String,
    /// The daemon's network object prefix and address pool, unique to this test.
    pub net_prefix: String,
    pub net_pool: String,
    pub daemon: Option<Child>,
}

impl Fixture {
    /// An empty state directory and project directory, with this test's names.
    pub fn empty(tag: &str) -> Fixture {
        let f = Fixture {
            tmp: tempfile::tempdir().expect("tempdir"),
            project: testkit::unique_name(tag).replace('_', "-").to_lowercase(),
            net_prefix: testkit::netns::short_prefix(),
            net_pool: format!("10.{}.0.0/16", testkit::netns::pool_octet()),
            daemon: None,
        };
        std::fs::create_dir_all(f.dir()).expect("project dir");
        f
    }

    /// A state directory with the `busybox:local` image, and a project directory
    /// holding `compose` (its `name:` set to this test's project name).
    pub fn new(tag: &str, compose: &str) -> Fixture {
        let f = Fixture::empty(tag);
        f.write_compose(compose);
        let tar = testkit::busybox_rootfs_tar(f.tmp.path()).expect("busybox tar");
        let tar = tar.to_str().expect("utf-8");
        f.ok(&["image", "import", tar, "busybox:local"]);
        f
    }

    /// A state directory with the examples' image (made by examples/make-image.sh).
    pub fn for_examples(tag: &str) -> Fixture {
        let f = Fixture::empty(tag);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join("examples/make-image.sh"))
            .arg(env!("CARGO_BIN_EXE_berth"))
            .env("BERTH_STATE_DIR", f.state())
            .output()
            .expect("run examples/make-image.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        f
    }

    /// berth with an example's compose file, under this test's project name.
    pub fn example(&self, name: &str, args: &[&str]) -> Output {
        self.example_env(name, args, &[])
    }

    pub fn example_env(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name)
            .join("compose.yaml");
        let file = file.to_str().expect("utf-8").to_string();
        let mut all = vec!["-f", &file, "-p", &self.project];
        all.extend_from_slice(args);
        self.berth_env(&all, env)
    }

    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("project")
    }

    pub fn write_compose(&self, compose: &str) {
        let text = format!("name: {}\n{compose}", self.project);
        std::fs::write(self.dir().join("compose.yaml"), text).expect("write compose.yaml");
    }

    pub fn berth(&self, args: &[&str]) -> Output {
        self.berth_env(args, &[])
    }

    pub fn berth_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run berth")
    }

    /// `berth args...` with this test's state, names and project directory, for tests
    /// that drive the process themselves (stdin, signals).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.env("BERTH_CGROUP_PARENT", &self.project)
            .env("BERTH_NET_PREFIX", &self.net_prefix)
            .env("BERTH_NET_POOL", &self.net_pool)
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .current_dir(self.dir());
        cmd
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Starts the daemon in the foreground of a child we own (so the fixture can kill it).
    pub fn start_daemon(&mut self) {
        self.start_daemon_env(&[]);
    }

    pub fn start_daemon_env(&mut self, env: &[(&str, &str)]) {
        std::fs::create_dir_all(self.state()).expect("state dir");
        let log = std::fs::File::create(self.tmp.path().join("daemon.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .envs(env.iter().copied())
            .env("BERTH_CGROUP_PARENT", &self.project)
            .env("BERTH_NET_PREFIX", &self.net_prefix)
            .env("BERTH_NET_POOL", &self.net_pool)
            .arg("--state-dir")
            .arg(self.state())
            .arg("daemon")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start berth daemon");
        self.daemon = Some(child);
        wait_for(
            || self.state().join("berth.sock").exists(),
            "the daemon's socket",
        );
        wait_for(
            || self.berth(&["ls"]).status.success(),
            "the daemon to answer",
        );
    }

    pub fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// `ps --format json`, as (name, id, state) rows.
    pub fn ps(&self, all: bool) -> Vec<(String, String, String)> {
        let mut args = vec!["ps", "--format", "json"];
        if all {
            args.push("-a");
        }
        let out = self.ok(&args);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("ps json");
        rows.iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (s("Name"), s("ID"), s("State"))
            })
            .collect()
    }

    pub fn container_pid(&self, id: &str) -> i32 {
        let path = self
            .state()
            .join("run/containers")
            .join(id)
            .join("state.json");
        let text = std::fs::read_to_string(&path).expect("state.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["pid"].as_i64().expect("pid") as i32
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.kill_daemon();
        // Whatever the test left: stop and remove every container, unmount its rootfs.
        let executor = agent::executor::Executor {
            state_dir: self.state(),
            shim: agent::shim::ShimProgram::new(
                PathBuf::from(env!("CARGO_BIN_EXE_berth")),
                vec!["runtime".into(), "shim".into()],
            ),
            cgroup_parent: self.project.clone(),
            net: None,
            images: None,
            node: None,
        };
        for id in executor.containers() {
            executor.remove_stray(&id);
        }
        if let Ok(entries) = std::fs::read_dir(self.state().join("containers")) {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str() {
                    let _ = agent::container::remove(&self.state(), id);
                }
            }
        }
        // Every network object the test's daemons made, by prefix.
        let mut cfg = overlay_net::NetConfig::new(self.state());
        cfg.prefix = self.net_prefix.clone();
        cfg.netns_dir = self.state().join("netns");
        if let Ok(net) = overlay_net::NetworkManager::open(cfg) {
            let _ = net.gc(&[], &[]);
        }
        testkit::remove_cgroup(&self.project);
    }
}

pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Fixture {
    /// The names of the running containers (`ps`).
    pub fn running(&self) -> Vec<String> {
        let out = self.ok(&["ps", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("ps json");
        rows.iter()
            .filter(|r| r["State"] == "running")
            .filter_map(|r| r["Name"].as_str().map(String::from))
            .collect()
    }

    /// The addresses `name` resolves to from inside the `client` container.
    pub fn resolve(&self, name: &str) -> Vec<String> {
        let out = self.berth(&["exec", "-T", "client", "nslookup", name]);
        let text = String::from_utf8_lossy(&out.stdout);
        // busybox: the server's `Address:` (with its port 53) first, then the answers.
        text.lines()
            .filter_map(|l| l.strip_prefix("Address:"))
            .map(str::trim)
            .filter(|a| !a.ends_with(":53") && a.parse::<Ipv4Addr>().is_ok())
            .map(String::from)
            .collect()
    }
}

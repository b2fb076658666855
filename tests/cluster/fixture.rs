//! The cluster fixture the cluster tests share: `berth daemon` processes in
//! network-namespace hosts (`testkit::hosts`), made into a cluster with the CLI, with
//! whatever they ran removed when the fixture drops (even when a test fails).

// Each test binary uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use testkit::hosts::{leftovers, poll_until, Cluster, Process};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");
/// Kernel objects a daemon makes are named with this. Links and tables are per network
/// namespace, and each host is one: a short prefix is enough.
const NET_PREFIX: &str = "bc";

/// A cluster of `n` hosts, each with a berth daemon's state directory.
pub struct Fixture {
    pub hosts: Cluster,
    pub daemons: Vec<Option<Process>>,
}

impl Fixture {
    pub fn new(n: usize) -> Fixture {
        let hosts = Cluster::new(n).expect("make the hosts");
        Fixture {
            hosts,
            daemons: (0..n).map(|_| None).collect(),
        }
    }

    /// `n` hosts, the first three of them managers of one cluster, all voting.
    pub fn three_managers(n: usize) -> Fixture {
        let mut f = Fixture::new(n);
        let (_, manager_token) = f.init();
        f.join(1, &manager_token);
        f.join(2, &manager_token);
        f.wait_managers(0, 3);
        f
    }

    pub fn state(&self, i: usize) -> PathBuf {
        self.hosts.host(i).dir().join("state")
    }

    pub fn addr(&self, i: usize) -> String {
        format!("{}:7377", self.hosts.addr(i))
    }

    /// Starts (or restarts) host `i`'s daemon and waits until it answers.
    pub fn start(&mut self, i: usize) {
        self.start_env(i, &[]);
    }

    /// Starts (or restarts) host `i`'s daemon with `env` added to its environment.
    pub fn start_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let prefix = self.hosts.prefix().to_string();
        let mut cmd = Command::new(BERTH);
        cmd.arg("--state-dir")
            .arg(self.state(i))
            .arg("daemon")
            .env("BERTH_NET_PREFIX", NET_PREFIX)
            .env("BERTH_CGROUP_PARENT", format!("{prefix}-{i}"))
            .envs(env.iter().copied());
        let p = self.hosts.host(i).spawn(cmd).expect("start a daemon");
        self.daemons[i] = Some(p);
        let ok = poll_until(Duration::from_secs(20), || {
            self.berth(i, &["cluster", "status"]).status.success()
        });
        assert!(ok, "daemon {i} does not answer; its log:\n{}", self.log(i));
    }

    /// The cgroup host `i`'s daemon puts its containers under.
    pub fn cgroup_parent(&self, i: usize) -> String {
        format!("{}-{i}", self.hosts.prefix())
    }

    /// Imports the busybox test image as `busybox:local` into host `i`'s store.
    pub fn import_busybox(&self, i: usize) {
        let tar = testkit::busybox_rootfs_tar(self.hosts.host(i).dir()).expect("busybox tar");
        let out = Command::new(BERTH)
            .arg("--state-dir")
            .arg(self.state(i))
            .args(["image", "import"])
            .arg(&tar)
            .arg("busybox:local")
            .output()
            .expect("run berth image import");
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// The containers host `i`'s state directory holds (task ids).
    pub fn containers_on(&self, i: usize) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.state(i).join("containers"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Stops and removes every container host `i` holds, with their network objects
    /// (inside the host's namespace) and their cgroups: what a test leaves, even if it
    /// failed. The host's daemon must be stopped first.
    pub fn remove_containers(&self, i: usize) {
        let state = self.state(i);
        let executor = agent::executor::Executor {
            state_dir: state.clone(),
            shim: agent::shim::ShimProgram::new(
                PathBuf::from(BERTH),
                vec!["runtime".into(), "shim".into()],
            ),
            cgroup_parent: self.cgroup_parent(i),
            net: None,
            images: None,
            node: None,
        };
        for id in executor.containers() {
            executor.remove_stray(&id);
        }
        for id in self.containers_on(i) {
            let _ = agent::container::remove(&state, &id);
        }
        let _ = self.hosts.host(i).run_in(|| {
            let mut cfg = overlay_net::NetConfig::new(&state);
            cfg.prefix = NET_PREFIX.into();
            cfg.netns_dir = state.join("netns");
            if let Ok(net) = overlay_net::NetworkManager::open(cfg) {
                let _ = net.gc(&[], &[]);
            }
        });
        testkit::remove_cgroup(&self.cgroup_parent(i));
    }

    pub fn log(&self, i: usize) -> String {
        self.daemons[i]
            .as_ref()
            .map(|p| p.stderr())
            .unwrap_or_default()
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.daemons[i].take() {
            p.kill9().expect("kill -9 a daemon");
        }
    }

    /// A berth command that runs inside host `i` (`nsenter` into its network
    /// namespace), whatever its exit status.
    pub fn command_in(&self, i: usize) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!(
            "--net={}",
            self.hosts.host(i).netns_path().display()
        ))
        .arg("--")
        .arg(BERTH)
        .env_remove("BERTH_HOST")
        .env_remove("BERTH_TLS_DIR")
        .env("BERTH_CONTEXT", "/nonexistent");
        cmd
    }

    /// Runs the berth CLI inside host `i` against its own daemon.
    pub fn berth(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = self.command_in(i);
        cmd.arg("--state-dir").arg(self.state(i)).args(args);
        cmd.output().expect("run berth in a host")
    }

    /// Like [`Fixture::berth`], and the command must succeed; returns its stdout.
    pub fn ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.berth(i, args);
        assert!(
            out.status.success(),
            "berth {args:?} on host {i} failed: {}\n{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log(i)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI in host `from` against the manager in host `to` with the
    /// certificate in `tls_dir`.
    pub fn remote(
        &self,
        from: usize,
        to: usize,
        tls_dir: &std::path::Path,
        args: &[&str],
    ) -> Output {
        let mut cmd = self.command_in(from);
        cmd.arg("--state-dir")
            .arg(self.state(from))
            .arg("--host")
            .arg(self.addr(to))
            .arg("--tls-dir")
            .arg(tls_dir)
            .args(args);
        cmd.output().expect("run berth in a host")
    }

    pub fn status(&self, i: usize) -> serde_json::Value {
        let out = self.berth(i, &["node", "ls", "--format", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// `cluster init` on host 0; returns (worker token, manager token).
    pub fn init(&mut self) -> (String, String) {
        self.init_with(&[])
    }

    /// `cluster init` on host 0 with `extra` flags; returns (worker token, manager
    /// token).
    pub fn init_with(&mut self, extra: &[&str]) -> (String, String) {
        self.start(0);
        let addr = self.addr(0);
        let mut args = vec!["cluster", "init", "--advertise-addr", &addr];
        args.extend_from_slice(extra);
        self.ok(0, &args);
        let worker = self.ok(0, &["cluster", "join-token", "-q", "worker"]);
        let manager = self.ok(0, &["cluster", "join-token", "-q", "manager"]);
        (worker.trim().to_string(), manager.trim().to_string())
    }

    pub fn join(&mut self, i: usize, token: &str) {
        self.start(i);
        let addr = self.addr(0);
        self.ok(i, &["cluster", "join", "--token", token, &addr]);
    }

    /// Waits until host `i`'s manager sees `managers` voters, all reachable, one leader.
    pub fn wait_managers(&self, i: usize, managers: usize) {
        let ok = poll_until(Duration::from_secs(30), || {
            let nodes = self.status(i);
            let Some(list) = nodes.as_array() else {
                return false;
            };
            let voters = list
                .iter()
                .filter(|n| n["role"] == "manager" && n["raft"] == "voter")
                .filter(|n| n["reachability"] == "reachable")
                .count();
            let leaders = list.iter().filter(|n| n["leader"] == true).count();
            voters == managers && leaders == 1
        });
        assert!(
            ok,
            "the cluster never had {managers} reachable voting managers: {}\nlogs:\n{}",
            self.status(i),
            (0..self.daemons.len())
                .map(|h| format!("--- host {h}\n{}", self.log(h)))
                .collect::<String>()
        );
    }

    pub fn node_id(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.state(i).join("cluster/config.json"))
            .expect("a member's cluster config");
        let v: serde_json::Value = serde_json::from_str(&text).expect("config json");
        v["node_id"].as_str().expect("node id").to_string()
    }

    /// Manager `i`'s `cluster status` (Null if it does not answer).
    pub fn cluster_status(&self, i: usize) -> serde_json::Value {
        let out = self.berth(i, &["cluster", "status", "--format", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// (applied version, state hash) as manager `i` reports it, once it is ready.
    pub fn hash(&self, i: usize) -> Option<(u64, String)> {
        let s = self.cluster_status(i);
        if s["ready"] != true {
            return None;
        }
        Some((
            s["version"].as_u64()?,
            s["state_hash"].as_str()?.to_string(),
        ))
    }

    /// The host whose manager leads, as manager `asked` sees it.
    pub fn leader(&self, asked: usize) -> Option<usize> {
        let nodes = self.status(asked);
        let addr = nodes.as_array()?.iter().find(|n| n["leader"] == true)?["addr"]
            .as_str()?
            .to_string();
        (0..self.daemons.len()).find(|&i| self.addr(i) == addr)
    }

    /// Waits until every listed manager reports the same version and hash.
    pub fn wait_converged(&self, managers: &[usize]) {
        let ok = poll_until(Duration::from_secs(20), || {
            let all: Vec<_> = managers.iter().map(|&i| self.hash(i)).collect();
            all.iter().all(|h| h.is_some() && *h == all[0])
        });
        let all: Vec<_> = managers.iter().map(|&i| self.hash(i)).collect();
        assert!(ok, "managers did not converge: {all:?}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for d in self.daemons.iter_mut() {
            if let Some(mut p) = d.take() {
                let _ = p.kill9();
            }
        }
        for i in 0..self.daemons.len() {
            self.remove_containers(i);
        }
    }
}

/// A GET on a daemon's unix socket, the whole answer as text.
pub fn raw_get(socket: &std::path::Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts nothing the cluster made is left once it is dropped.
pub fn drop_and_check(f: Fixture) {
    let prefix = f.hosts.prefix().to_string();
    drop(f);
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
}

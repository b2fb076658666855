//! A berth cluster for real: `berth daemon` processes in network-namespace hosts
//! (`testkit::hosts`), made into a cluster with the CLI (`cluster init`, `cluster
//! join`), then faults: kill -9 of managers while clients write and read (the history
//! must be linearizable), an isolated leader, all managers restarted at once, and every
//! way a connection must be refused (no certificate, another CA, a worker certificate
//! on a manager endpoint, a rotated token, a removed node).
//!
//! The store's writes here are node labels (`berth node update --label-add`), its fresh
//! reads `berth node inspect --fresh` (a ReadIndex through the leader): a register per
//! label key, which the linearizability checker understands.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use testkit::hosts::{leftovers, poll_until, Cluster, Process};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// A cluster of `n` hosts, each with a berth daemon's state directory.
struct Fixture {
    hosts: Cluster,
    daemons: Vec<Option<Process>>,
}

impl Fixture {
    fn new(n: usize) -> Fixture {
        let hosts = Cluster::new(n).expect("make the hosts");
        Fixture {
            hosts,
            daemons: (0..n).map(|_| None).collect(),
        }
    }

    fn state(&self, i: usize) -> PathBuf {
        self.hosts.host(i).dir().join("state")
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:7377", self.hosts.addr(i))
    }

    /// Starts (or restarts) host `i`'s daemon and waits until it answers.
    fn start(&mut self, i: usize) {
        let prefix = self.hosts.prefix().to_string();
        let mut cmd = Command::new(BERTH);
        cmd.arg("--state-dir")
            .arg(self.state(i))
            .arg("daemon")
            // Kernel objects a daemon might make are named for this test.
            // Links and tables are per network namespace: a short prefix is enough.
            .env("BERTH_NET_PREFIX", "bc")
            .env("BERTH_CGROUP_PARENT", format!("{prefix}-{i}"));
        let p = self.hosts.host(i).spawn(cmd).expect("start a daemon");
        self.daemons[i] = Some(p);
        let ok = poll_until(Duration::from_secs(20), || {
            self.berth(i, &["cluster", "status"]).status.success()
        });
        assert!(ok, "daemon {i} does not answer; its log:\n{}", self.log(i));
    }

    fn log(&self, i: usize) -> String {
        self.daemons[i]
            .as_ref()
            .map(|p| p.stderr())
            .unwrap_or_default()
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.daemons[i].take() {
            p.kill9().expect("kill -9 a daemon");
        }
    }

    /// A berth command that runs inside host `i` (`nsenter` into its network
    /// namespace), whatever its exit status.
    fn command_in(&self, i: usize) -> Command {
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
    fn berth(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = self.command_in(i);
        cmd.arg("--state-dir").arg(self.state(i)).args(args);
        cmd.output().expect("run berth in a host")
    }

    /// Like [`Fixture::berth`], and the command must succeed; returns its stdout.
    fn ok(&self, i: usize, args: &[&str]) -> String {
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
    fn remote(&self, from: usize, to: usize, tls_dir: &std::path::Path, args: &[&str]) -> Output {
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

    fn status(&self, i: usize) -> serde_json::Value {
        let out = self.berth(i, &["node", "ls", "--format", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// `cluster init` on host 0; returns (worker token, manager token).
    fn init(&mut self) -> (String, String) {
        self.start(0);
        let addr = self.addr(0);
        self.ok(0, &["cluster", "init", "--advertise-addr", &addr]);
        let worker = self.ok(0, &["cluster", "join-token", "-q", "worker"]);
        let manager = self.ok(0, &["cluster", "join-token", "-q", "manager"]);
        (worker.trim().to_string(), manager.trim().to_string())
    }

    fn join(&mut self, i: usize, token: &str) {
        self.start(i);
        let addr = self.addr(0);
        self.ok(i, &["cluster", "join", "--token", token, &addr]);
    }

    /// Waits until host `i`'s manager sees `managers` voters, all reachable, one leader.
    fn wait_managers(&self, i: usize, managers: usize) {
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

    fn node_id(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.state(i).join("cluster/config.json"))
            .expect("a member's cluster config");
        let v: serde_json::Value = serde_json::from_str(&text).expect("config json");
        v["node_id"].as_str().expect("node id").to_string()
    }

    /// (applied version, state hash) as manager `i` reports it.
    fn hash(&self, i: usize) -> Option<(u64, String)> {
        let out = self.berth(i, &["cluster", "status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("Store:"))?;
        let version = line
            .split("version ")
            .nth(1)?
            .split(',')
            .next()?
            .parse()
            .ok()?;
        let hash = line.split("hash ").nth(1)?.trim().to_string();
        Some((version, hash))
    }

    /// Waits until every listed manager reports the same version and hash.
    fn wait_converged(&self, managers: &[usize]) {
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
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn managers_and_workers_join_and_every_wrong_credential_is_refused() {
    let mut f = Fixture::new(5);
    let (worker_token, manager_token) = f.init();
    f.join(1, &manager_token);
    f.join(2, &manager_token);
    f.wait_managers(0, 3);
    f.join(3, &worker_token);
    let worker = f.node_id(3);
    let ok = poll_until(Duration::from_secs(20), || {
        f.status(0).as_array().is_some_and(|l| {
            l.iter().any(|n| {
                n["id"] == worker.as_str()
                    && n["role"] == "worker"
                    && n["reachability"] == "reachable"
            })
        })
    });
    assert!(ok, "the worker never showed up reachable: {}", f.status(0));

    // A label written through one manager is read fresh through another.
    let first = f.node_id(0);
    f.ok(1, &["node", "update", "--label-add", "zone=a", &first]);
    let read = f.ok(2, &["node", "inspect", "--fresh", &first]);
    assert!(read.contains("\"zone\": \"a\""), "{read}");
    f.wait_converged(&[0, 1, 2]);

    // The admin certificate `init` wrote works from another host.
    let admin = f.state(0).join("cluster/admin");
    let out = f.remote(4, 1, &admin, &["node", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(leader)"));

    // A worker's certificate on a manager endpoint: refused by role.
    let worker_dir = f.state(3).join("cluster/node");
    let out = f.remote(4, 0, &worker_dir, &["node", "ls"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("worker"), "{}", stderr(&out));

    // Another cluster's CA: the handshake fails.
    let other = tempfile::tempdir().expect("temp dir");
    let ca = pki::Ca::create(std::time::SystemTime::now()).expect("a CA");
    ca.issue(
        &pki::CertRequest::new(pki::Identity::new(
            pki::NodeId::generate(),
            pki::Role::Admin,
        )),
        std::time::SystemTime::now(),
    )
    .expect("an admin certificate")
    .save(other.path())
    .expect("save it");
    // The host can read the test's temp dir: the same file system.
    let out = f.remote(4, 0, other.path(), &["node", "ls"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));

    // No certificate at all: only joining is allowed, and only with a valid token.
    f.start(4);
    let bad = format!("{}x", &worker_token[..worker_token.len() - 1]);
    let out = f.berth(4, &["cluster", "join", "--token", &bad, &f.addr(0)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("rotated or mistyped"),
        "{}",
        stderr(&out)
    );

    // A rotated-out token stops working.
    f.ok(0, &["cluster", "join-token", "--rotate", "worker"]);
    let out = f.berth(
        4,
        &["cluster", "join", "--token", &worker_token, &f.addr(0)],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("rotated or mistyped"),
        "{}",
        stderr(&out)
    );

    // A removed node's certificate is refused at the handshake.
    f.kill9(3);
    f.ok(0, &["node", "rm", "--force", &worker]);
    let removed = poll_until(Duration::from_secs(10), || {
        let out = f.remote(4, 0, &worker_dir, &["node", "ls"]);
        stderr(&out).contains("removed")
    });
    let out = f.remote(4, 0, &worker_dir, &["node", "ls"]);
    assert!(removed, "{}", stderr(&out));
    drop_and_check(f);
}

/// Asserts nothing the cluster made is left once it is dropped.
fn drop_and_check(f: Fixture) {
    let prefix = f.hosts.prefix().to_string();
    drop(f);
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[allow(dead_code)]
fn elapsed_ms(t: Instant) -> u128 {
    t.elapsed().as_millis()
}

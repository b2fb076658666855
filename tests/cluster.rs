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

#[path = "cluster/fixture.rs"]
mod fixture;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use fixture::{drop_and_check, raw_get, stderr, Fixture, BERTH};
use testkit::hosts::poll_until;

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

    // Keys and the Raft data are root's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| {
        std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    for i in [0, 1] {
        let state = f.state(i);
        assert_eq!(mode(state.join("cluster")), 0o700);
        assert_eq!(mode(state.join("cluster/node/node.key")), 0o600);
        assert_eq!(mode(state.join("cluster/config.json")), 0o600);
        assert_eq!(mode(state.join("manager/raft")), 0o700);
        for entry in std::fs::read_dir(state.join("manager/raft/log")).expect("the raft log") {
            let path = entry.expect("an entry").path();
            assert_eq!(mode(path.clone()), 0o600, "{}", path.display());
        }
    }
    assert_eq!(mode(f.state(0).join("cluster/admin/node.key")), 0o600);

    // The API never shows the cluster's secrets: the CA key and the join tokens stay
    // in the managers' store.
    let state = raw_get(&f.state(1).join("berth.sock"), "/v1/state");
    assert!(state.contains("\"cluster\""), "{state}");
    assert!(
        !state.contains("PRIVATE KEY"),
        "the CA key is shown: {state}"
    );
    assert!(!state.contains(&worker_token), "a join token is shown");
    assert!(!state.contains(&manager_token), "a join token is shown");

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
    let out = f.berth(4, &["node", "ls"]);
    assert!(stderr(&out).contains("single host"), "{}", stderr(&out));
    let out = f.berth(3, &["ls"]);
    assert!(
        stderr(&out).contains("this node is a worker"),
        "{}",
        stderr(&out)
    );
    // The token with its last character changed (to one it certainly is not).
    let last = if worker_token.ends_with('x') {
        "y"
    } else {
        "x"
    };
    let bad = format!("{}{last}", &worker_token[..worker_token.len() - 1]);
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

/// What a client thread needs to run the CLI in the client host against any manager.
#[derive(Clone)]
struct Remote {
    netns: PathBuf,
    state: PathBuf,
    admin: PathBuf,
    managers: Vec<String>,
    /// The node whose labels are the registers.
    node: String,
}

impl Remote {
    fn new(f: &Fixture, client_host: usize, managers: &[usize]) -> Remote {
        Remote {
            netns: f.hosts.host(client_host).netns_path(),
            state: f.state(client_host),
            admin: f.state(0).join("cluster/admin"),
            managers: managers.iter().map(|&i| f.addr(i)).collect(),
            node: f.node_id(0),
        }
    }

    fn run(&self, manager: usize, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(BERTH)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--host")
            .arg(&self.managers[manager % self.managers.len()])
            .arg("--tls-dir")
            .arg(&self.admin)
            .args(args)
            .env("BERTH_CONTEXT", "/nonexistent")
            .output()
            .expect("run berth")
    }

    /// Writes label `key=value` through manager `manager`; Ok if it was acknowledged.
    fn put(&self, manager: usize, key: &str, value: &str) -> bool {
        let kv = format!("{key}={value}");
        self.run(manager, &["node", "update", "--label-add", &kv, &self.node])
            .status
            .success()
    }

    /// A linearizable read of label `key` through manager `manager`.
    fn get(&self, manager: usize, key: &str) -> Option<Option<String>> {
        let out = self.run(manager, &["node", "inspect", "--fresh", &self.node]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v["labels"][key].as_str().map(String::from))
    }
}

/// Three managers and a client host: clients write and read three registers through
/// random managers while managers are killed with SIGKILL and restarted, the leader
/// most often. Every acknowledged write must be kept and the whole history must be
/// linearizable; afterwards every manager's state hash is the same.
#[test]
fn kill9_of_managers_under_writes_keeps_a_linearizable_history() {
    use testkit::linearizability::{check_bounded, History, Op, Output as Out};
    let mut f = Fixture::three_managers(4);
    let remote = Remote::new(&f, 3, &[0, 1, 2]);
    let history = History::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (remote, client, stop) = (remote.clone(), history.client(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 1;
                    let key = format!("k{}", n % 3);
                    let manager = (n as usize + c) % 3;
                    if n.is_multiple_of(2) {
                        let value = format!("c{c}-{n}");
                        let call = client.invoke(Op::put(&key, &value));
                        if remote.put(manager, &key, &value) {
                            call.ok(Out::Put);
                        } else {
                            // It may have been committed before the manager died.
                            call.unknown();
                        }
                    } else {
                        let call = client.invoke(Op::get(&key));
                        match remote.get(manager, &key) {
                            Some(v) => call.ok(Out::value(v.as_deref())),
                            None => call.failed(),
                        }
                    }
                }
            })
        })
        .collect();
    let mut killed_leader = 0;
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        let victim = match f.leader(round % 3).or_else(|| f.leader((round + 1) % 3)) {
            Some(l) => {
                killed_leader += 1;
                l
            }
            None => round % 3,
        };
        f.kill9(victim);
        std::thread::sleep(Duration::from_millis(1000));
        f.start(victim);
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.join().expect("a client thread");
    }
    f.wait_converged(&[0, 1, 2]);
    let entries = history.entries();
    let acknowledged = entries
        .iter()
        .filter(|e| matches!(e.ret, Some((_, Out::Put))))
        .count();
    eprintln!(
        "history: {} operations, {acknowledged} acknowledged writes, leader killed {killed_leader} times",
        entries.len()
    );
    assert!(
        killed_leader >= 2,
        "the leader was killed only {killed_leader} times"
    );
    assert!(
        acknowledged >= 10,
        "only {acknowledged} writes were acknowledged: the faults stopped the cluster\n{}",
        history.dump()
    );
    if let Err(e) = check_bounded(&history, 2_000_000) {
        panic!("not linearizable: {e}\n{}", history.dump());
    }
    drop_and_check(f);
}

/// A leader cut off from the others steps down; the side without a quorum accepts no
/// write and serves no fresh read, while the majority elects a leader and goes on; a
/// one-way cut and a slow, lossy link do not give two leaders one term; after healing
/// everybody converges.
#[test]
fn an_isolated_leader_steps_down_and_the_minority_neither_writes_nor_reads() {
    let f = Fixture::three_managers(3);
    let node = f.node_id(0);
    let old = f.leader(0).expect("a leader");
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    f.hosts.isolate(old).expect("isolate the leader");
    let stepped_down = poll_until(Duration::from_secs(10), || {
        f.cluster_status(old)["raft_role"] != "leader"
    });
    assert!(
        stepped_down,
        "the isolated leader still leads: {}",
        f.cluster_status(old)
    );
    // The majority elects a new leader and takes writes.
    let ok = poll_until(Duration::from_secs(20), || {
        f.berth(
            others[0],
            &["node", "update", "--label-add", "side=majority", &node],
        )
        .status
        .success()
    });
    assert!(ok, "the majority does not take writes");
    // The minority: no write, no fresh read.
    let out = f.berth(
        old,
        &["node", "update", "--label-add", "side=minority", &node],
    );
    assert!(!out.status.success(), "the isolated manager took a write");
    let out = f.berth(old, &["node", "inspect", "--fresh", &node]);
    assert!(
        !out.status.success(),
        "the isolated manager served a fresh read: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    f.hosts.heal_all().expect("heal");
    f.wait_converged(&[0, 1, 2]);
    let read = f.ok(old, &["node", "inspect", "--fresh", &node]);
    assert!(read.contains("\"side\": \"majority\""), "{read}");

    // A one-way cut from the leader to a follower, and a slow lossy link on another.
    let leader = f.leader(others[0]).expect("a leader");
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    f.hosts
        .partition_one_way(leader, followers[0])
        .expect("one-way cut");
    f.hosts.loss(followers[1], 20).expect("loss");
    f.hosts
        .slow_link(followers[1], 2_000_000)
        .expect("slow link");
    for n in 0..5 {
        let value = format!("n={n}");
        let wrote = poll_until(Duration::from_secs(20), || {
            (0..3).any(|i| {
                f.berth(i, &["node", "update", "--label-add", &value, &node])
                    .status
                    .success()
            })
        });
        assert!(wrote, "no manager takes writes under the faults");
    }
    f.hosts.heal_all().expect("heal");
    f.wait_converged(&[0, 1, 2]);
    // At most one leader per term, over everything above.
    let mut terms: Vec<u64> = (0..3)
        .flat_map(|i| {
            f.cluster_status(i)["led_terms"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|t| t.as_u64())
        .collect();
    let all = terms.len();
    terms.sort_unstable();
    terms.dedup();
    assert_eq!(terms.len(), all, "two managers led the same term");
    drop_and_check(f);
}

/// All managers killed at once and started again, then one at a time, then the leader
/// paused: the store is intact each time and the managers converge.
#[test]
fn managers_restarted_all_at_once_and_one_at_a_time_keep_the_store() {
    let mut f = Fixture::three_managers(3);
    let node = f.node_id(0);
    for n in 0..10 {
        f.ok(
            n % 3,
            &[
                "node",
                "update",
                "--label-add",
                &format!("k{n}=v{n}"),
                &node,
            ],
        );
    }
    let before = f.hash(0).expect("a hash");
    for i in 0..3 {
        f.kill9(i);
    }
    for i in 0..3 {
        f.start(i);
    }
    f.wait_converged(&[0, 1, 2]);
    assert_eq!(
        f.hash(1),
        Some(before.clone()),
        "the store changed across a restart"
    );
    for i in 0..3 {
        f.kill9(i);
        f.ok(
            (i + 1) % 3,
            &["node", "update", "--label-add", &format!("r{i}=x"), &node],
        );
        f.start(i);
        f.wait_converged(&[0, 1, 2]);
    }
    // A leader paused (SIGSTOP, like a VM that stalls): the others elect a new one and
    // take writes; once it resumes, it follows and catches up.
    let paused = f.leader(0).expect("a leader");
    let other = (paused + 1) % 3;
    f.hosts.freeze(paused).expect("SIGSTOP the leader's host");
    let wrote = poll_until(Duration::from_secs(20), || {
        f.berth(
            other,
            &["node", "update", "--label-add", "paused=yes", &node],
        )
        .status
        .success()
    });
    f.hosts.thaw(paused).expect("SIGCONT");
    assert!(wrote, "no write while the leader was paused");
    f.wait_converged(&[0, 1, 2]);
    let read = f.ok(paused, &["node", "inspect", "--fresh", &node]);
    assert!(read.contains("\"paused\": \"yes\""), "{read}");
    assert_ne!(f.leader(paused), None);

    let read = f.ok(2, &["node", "inspect", "--fresh", &node]);
    for key in ["k0", "k9", "r0", "r1", "r2"] {
        assert!(
            read.contains(&format!("\"{key}\"")),
            "{key} is missing: {read}"
        );
    }
    drop_and_check(f);
}

/// `node promote` turns a worker into a voting manager (it gets a manager certificate
/// and a replica of the store); `node demote` turns a manager into a worker, whose
/// certificate then no longer opens manager endpoints.
#[test]
fn promote_makes_a_worker_a_voting_manager_and_demote_the_reverse() {
    let mut f = Fixture::new(3);
    let (worker_token, manager_token) = f.init();
    f.join(1, &manager_token);
    f.join(2, &worker_token);
    f.wait_managers(0, 2);
    let (one, two) = (f.node_id(1), f.node_id(2));
    f.ok(0, &["node", "promote", &two]);
    f.wait_managers(0, 3);
    let ready = poll_until(Duration::from_secs(20), || {
        let s = f.cluster_status(2);
        s["role"] == "manager" && s["ready"] == true
    });
    assert!(
        ready,
        "host 2 is not a ready manager: {}\n{}",
        f.cluster_status(2),
        f.log(2)
    );
    f.wait_converged(&[0, 1, 2]);

    f.ok(0, &["node", "demote", &one]);
    let demoted = poll_until(Duration::from_secs(20), || {
        let s = f.cluster_status(1);
        s["role"] == "worker"
    });
    assert!(
        demoted,
        "host 1 did not become a worker: {}\n{}",
        f.cluster_status(1),
        f.log(1)
    );
    f.wait_managers(0, 2);
    let nodes = f.status(0);
    let one_now = nodes
        .as_array()
        .and_then(|l| l.iter().find(|n| n["id"] == one.as_str()).cloned())
        .expect("host 1 is still listed");
    assert_eq!(one_now["role"], "worker", "{nodes}");
    assert_eq!(one_now["raft"], "-", "{nodes}");
    // Its certificate is a worker's now: manager endpoints refuse it.
    let out = f.remote(1, 0, &f.state(1).join("cluster/node"), &["node", "ls"]);
    assert!(!out.status.success(), "a demoted node listed the nodes");
    assert!(stderr(&out).contains("worker"), "{}", stderr(&out));
    // The last manager cannot be demoted... but two remain: demote one and the other stays.
    let out = f.berth(0, &["node", "demote", &two]);
    assert!(out.status.success(), "{}", stderr(&out));
    let zero = f.node_id(0);
    let out = f.berth(0, &["node", "demote", &zero]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("last manager"), "{}", stderr(&out));
    drop_and_check(f);
}

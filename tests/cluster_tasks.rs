//! Tasks on every node of a cluster, for real: `berth daemon` processes in
//! network-namespace hosts (`testkit::hosts`), a manager and workers made with the CLI,
//! real containers (busybox) placed by the scheduler, handed to each node's agent by the
//! dispatcher, and the faults the cluster must ride out (a worker's daemon killed, a
//! worker cut off, drained, paused).

#[path = "cluster/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use fixture::Fixture;
use testkit::hosts::poll_until;

/// One row of `berth ps --format json`.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    id: String,
    service: String,
    state: String,
    status: String,
    node: String,
}

impl Fixture {
    /// `n` hosts: host 0 a manager, hosts 1 to `joined - 1` workers (the rest join
    /// later, with the returned worker token); `init` flags in `extra`. Only the
    /// manager has the test image: the workers fetch it from it.
    fn manager_and_workers(n: usize, joined: usize, extra: &[&str]) -> (Fixture, String) {
        let mut f = Fixture::new(n);
        f.import_busybox(0);
        let (worker_token, _) = f.init_with(extra);
        for i in 1..joined {
            f.join(i, &worker_token);
        }
        f.wait_ready(0, joined);
        (f, worker_token)
    }

    /// Waits until manager `i` counts `n` nodes, all ready.
    fn wait_ready(&self, i: usize, n: usize) {
        let ok = poll_until(Duration::from_secs(30), || {
            let nodes = self.status(i);
            nodes.as_array().is_some_and(|list| {
                list.len() == n && list.iter().all(|node| node["status"] == "ready")
            })
        });
        assert!(
            ok,
            "the cluster never had {n} ready nodes: {}",
            self.status(i)
        );
    }

    /// Writes `compose` (a stack named `name`) into the cluster's directory.
    fn compose(&self, name: &str, compose: &str) -> PathBuf {
        let path = self.hosts.dir().join(format!("{name}.yaml"));
        std::fs::write(&path, format!("name: {name}\n{compose}")).expect("write compose file");
        path
    }

    /// `berth ps -a --format json` of stack `name` on manager `i`.
    fn ps(&self, i: usize, name: &str) -> Vec<Row> {
        let out = self.berth(i, &["-p", name, "ps", "-a", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.iter()
            .map(|r| Row {
                name: r["Name"].as_str().unwrap_or_default().into(),
                id: r["ID"].as_str().unwrap_or_default().into(),
                service: r["Service"].as_str().unwrap_or_default().into(),
                state: r["State"].as_str().unwrap_or_default().into(),
                status: r["Status"].as_str().unwrap_or_default().into(),
                node: r["NodeID"].as_str().unwrap_or_default().into(),
            })
            .collect()
    }

    /// The running tasks of `service`, per node id.
    fn running_per_node(&self, i: usize, name: &str, service: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.ps(i, name) {
            if r.service == service && r.state == "running" {
                *out.entry(r.node).or_default() += 1;
            }
        }
        out
    }

    /// How many tasks node `node` runs (every stack's, `node ps` on the manager).
    fn running_on(&self, node: &str) -> usize {
        let out = self.berth(0, &["node", "ps", "--format", "json", node]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.iter().filter(|r| r["State"] == "running").count()
    }

    /// Waits for `what` to hold of stack `name`'s rows, showing them if it never does.
    fn wait_rows(&self, name: &str, what: &str, mut cond: impl FnMut(&[Row]) -> bool) {
        let ok = poll_until(Duration::from_secs(60), || cond(&self.ps(0, name)));
        assert!(
            ok,
            "{what}: never so; ps:\n{:#?}\nlogs:\n{}",
            self.ps(0, name),
            (0..self.daemons.len())
                .map(|h| format!("--- host {h}\n{}", self.log(h)))
                .collect::<String>()
        );
    }
}

const SLEEP: &str = "image: busybox:local\n    command: [\"sleep\", \"3600\"]";

#[test]
fn tasks_spread_over_nodes_follow_constraints_and_global_services_follow_nodes() {
    // Host 3 joins later, for the global service to follow.
    let (mut f, token) = Fixture::manager_and_workers(4, 3, &[]);
    let ids: Vec<String> = (0..3).map(|i| f.node_id(i)).collect();
    let file = f.compose(
        "spread",
        &format!(
            "services:
  web:
    {SLEEP}
    deploy:
      replicas: 4
  db:
    {SLEEP}
    deploy:
      placement:
        constraints: [node.labels.tier == db]
  mon:
    {SLEEP}
    deploy:
      mode: global
"
        ),
    );
    let file = file.to_str().expect("utf-8");
    f.ok(0, &["-f", file, "up", "-d"]);
    f.wait_rows("spread", "4 web, 3 mon running; db pending", |rows| {
        let running = |s: &str| {
            rows.iter()
                .filter(|r| r.service == s && r.state == "running")
                .count()
        };
        running("web") == 4
            && running("mon") == 3
            && rows
                .iter()
                .any(|r| r.service == "db" && r.status.contains("node.labels.tier"))
    });
    let web = f.running_per_node(0, "spread", "web");
    assert!(
        web.len() >= 3 && web.values().all(|n| *n <= 2),
        "web spreads over the nodes, at most 2 on one: {web:?}"
    );
    let mon = f.running_per_node(0, "spread", "mon");
    assert_eq!(mon.len(), 3, "one mon per node: {mon:?}");
    // Each container is on the host the manager says, and only there.
    for r in f.ps(0, "spread").iter().filter(|r| r.state == "running") {
        let host = (0..3).find(|&i| ids[i] == r.node).expect("a known node");
        for i in 0..3 {
            assert_eq!(
                f.containers_on(i).contains(&r.id),
                i == host,
                "{} on host {i}",
                r.name
            );
        }
    }
    // The pending task is placed once a node gets the label.
    f.ok(0, &["node", "update", "--label-add", "tier=db", &ids[2]]);
    f.wait_rows("spread", "db runs on the labelled node", |rows| {
        rows.iter()
            .any(|r| r.service == "db" && r.state == "running" && r.node == ids[2])
    });
    // A node that joins gets the global service's task.
    f.join(3, &token);
    let late = f.node_id(3);
    f.wait_rows("spread", "mon follows the node that joined", |rows| {
        rows.iter()
            .any(|r| r.service == "mon" && r.state == "running" && r.node == late)
    });
    f.ok(0, &["-f", file, "down"]);
    f.wait_rows("spread", "everything is gone", |rows| rows.is_empty());
    for i in 0..4 {
        assert!(
            f.containers_on(i).is_empty(),
            "host {i} holds {:?}",
            f.containers_on(i)
        );
    }
}

/// The running tasks of stack `name` as (task id, node id), from manager `i`.
fn running(rows: &[Row]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.state == "running")
        .map(|r| (r.id.clone(), r.node.clone()))
        .collect();
    out.sort();
    out
}

#[test]
fn a_lost_worker_is_replaced_and_stops_what_was_replaced_when_it_returns() {
    let (mut f, _) = Fixture::manager_and_workers(3, 3, &["--node-grace", "3s"]);
    let ids: Vec<String> = (0..3).map(|i| f.node_id(i)).collect();
    let file = f.compose(
        "lost",
        &format!(
            "services:
  web:
    {SLEEP}
    deploy:
      replicas: 3
"
        ),
    );
    let file = file.to_str().expect("utf-8");
    f.ok(0, &["-f", file, "up", "-d"]);
    f.wait_rows("lost", "3 web running, one per node", |rows| {
        let nodes: std::collections::BTreeSet<&str> = rows
            .iter()
            .filter(|r| r.state == "running")
            .map(|r| r.node.as_str())
            .collect();
        running(rows).len() == 3 && nodes.len() == 3
    });
    let before = running(&f.ps(0, "lost"));

    // kill -9 of a worker's daemon: its container keeps running, and the new daemon
    // takes it back without a restart or a duplicate.
    let on_1 = f.containers_on(1);
    f.kill9(1);
    f.start(1);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(running(&f.ps(0, "lost")), before, "nothing was replaced");
    assert_eq!(f.containers_on(1), on_1, "nor duplicated on the node");

    // Worker 2 cut off: its task runs elsewhere once the grace is over.
    let lost: Vec<String> = before
        .iter()
        .filter(|(_, n)| *n == ids[2])
        .map(|(t, _)| t.clone())
        .collect();
    assert_eq!(lost.len(), 1);
    f.hosts.isolate(2).expect("cut host 2 off");
    let cut = std::time::Instant::now();
    f.wait_rows("lost", "3 web running on the two nodes left", |rows| {
        let now = running(rows);
        now.len() == 3 && now.iter().all(|(_, n)| *n != ids[2])
    });
    let took = cut.elapsed();
    assert!(
        took < Duration::from_secs(3 + 6),
        "replaced {took:?} after the cut (grace 3 s)"
    );
    let nodes = f.status(0);
    let down = nodes
        .as_array()
        .and_then(|l| l.iter().find(|n| n["id"] == ids[2].as_str()))
        .map(|n| n["status"].clone());
    assert_eq!(down, Some(serde_json::json!("down")), "{nodes}");

    // Healed: the stale container stops first, and the service is spread over the
    // three nodes again (rebalanced), never running more than 3 at once.
    f.hosts.heal().expect("heal");
    let mut most = 0;
    let ok = testkit::hosts::poll_until(Duration::from_secs(60), || {
        let on_node: Vec<serde_json::Value> =
            serde_json::from_str(&f.ok(0, &["node", "ps", "-a", "--format", "json", &ids[2]]))
                .unwrap_or_default();
        let stale_stopped = on_node
            .iter()
            .any(|t| t["ID"] == lost[0].as_str() && t["State"] == "shutdown");
        let all: usize = ids.iter().map(|n| f.running_on(n)).sum();
        most = most.max(all);
        let now = running(&f.ps(0, "lost"));
        let nodes: std::collections::BTreeSet<&str> = now.iter().map(|(_, n)| n.as_str()).collect();
        stale_stopped && now.len() == 3 && nodes.len() == 3
    });
    assert!(
        ok,
        "after the heal: {}\nps: {:#?}\nlog:\n{}",
        f.ok(0, &["node", "ps", "-a", &ids[2]]),
        f.ps(0, "lost"),
        f.log(2)
    );
    // One over at most: the stale task until its node stops it, then a task moving
    // back (start-first), which waits for the stale one to be stopped.
    assert!(most <= 4, "{most} tasks ran at once");
    f.ok(0, &["-f", file, "down"]);
    f.wait_rows("lost", "everything is gone", |rows| rows.is_empty());
}

#[test]
fn drain_moves_tasks_before_stopping_them_and_pause_places_nothing_new() {
    let (f, _) = Fixture::manager_and_workers(3, 3, &[]);
    let ids: Vec<String> = (0..3).map(|i| f.node_id(i)).collect();
    let file = f.compose(
        "drain",
        &format!(
            "services:
  web:
    {SLEEP}
    deploy:
      replicas: 3
"
        ),
    );
    let file = file.to_str().expect("utf-8");
    f.ok(0, &["-f", file, "up", "-d"]);
    f.wait_rows("drain", "3 web running", |rows| running(rows).len() == 3);

    // Pause node 1, scale up: nothing new lands there.
    f.ok(0, &["node", "update", "--availability", "pause", &ids[1]]);
    let on_1_before = f
        .running_per_node(0, "drain", "web")
        .get(&ids[1])
        .copied()
        .unwrap_or(0);
    f.ok(0, &["-f", file, "up", "-d", "--scale", "web=6"]);
    f.wait_rows("drain", "6 web running", |rows| running(rows).len() == 6);
    let per_node = f.running_per_node(0, "drain", "web");
    assert_eq!(
        per_node.get(&ids[1]).copied().unwrap_or(0),
        on_1_before,
        "a paused node gets nothing new: {per_node:?}"
    );

    // Drain node 2: its tasks move, and the service never runs fewer than 6.
    f.ok(0, &["node", "update", "--availability", "drain", &ids[2]]);
    // Counted over every task (ps shows a slot's newest only, which is the
    // replacement while it starts).
    let mut fewest = usize::MAX;
    let ok = testkit::hosts::poll_until(Duration::from_secs(60), || {
        let all: usize = ids.iter().map(|n| f.running_on(n)).sum();
        fewest = fewest.min(all);
        let now = running(&f.ps(0, "drain"));
        now.len() == 6 && now.iter().all(|(_, n)| *n != ids[2])
    });
    assert!(ok, "drained node still runs tasks: {:#?}", f.ps(0, "drain"));
    assert!(
        fewest >= 6,
        "the service dropped to {fewest} running while moving"
    );
    f.ok(0, &["-f", file, "down"]);
    f.wait_rows("drain", "everything is gone", |rows| rows.is_empty());
}

#[test]
fn a_leader_failover_replaces_no_task() {
    let mut f = Fixture::new(4);
    f.import_busybox(0);
    let (worker, manager) = f.init_with(&["--node-grace", "5s"]);
    f.join(1, &manager);
    f.join(2, &manager);
    f.wait_managers(0, 3);
    f.join(3, &worker);
    f.wait_ready(0, 4);
    let file = f.compose(
        "failover",
        &format!(
            "services:
  web:
    {SLEEP}
    deploy:
      replicas: 4
"
        ),
    );
    let file = file.to_str().expect("utf-8");
    f.ok(0, &["-f", file, "up", "-d"]);
    f.wait_rows("failover", "4 web running on 4 nodes", |rows| {
        let now = running(rows);
        let nodes: std::collections::BTreeSet<&str> = now.iter().map(|(_, n)| n.as_str()).collect();
        now.len() == 4 && nodes.len() == 4
    });
    let before = running(&f.ps(0, "failover"));
    let leader = f.leader(0).expect("a leader");
    let other = (0..3).find(|&i| i != leader).expect("another manager");
    f.kill9(leader);
    f.start(leader);
    let ok = poll_until(Duration::from_secs(30), || f.leader(other).is_some());
    assert!(ok, "no new leader");
    // Past the grace, counted from the new leader's election: nothing was replaced.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(running(&f.ps(other, "failover")), before);
    f.ok(other, &["-f", file, "down"]);
    let ok = poll_until(Duration::from_secs(60), || {
        f.ps(other, "failover").is_empty()
    });
    assert!(ok, "{:#?}", f.ps(other, "failover"));
}

#[test]
fn a_secret_reaches_only_the_node_whose_task_uses_it_and_never_its_disk() {
    let (f, _) = Fixture::manager_and_workers(3, 3, &[]);
    let ids: Vec<String> = (0..3).map(|i| f.node_id(i)).collect();
    let token = format!("token-{}", testkit::unique_name("s"));
    let secret = f.hosts.dir().join("api_token.txt");
    std::fs::write(&secret, &token).expect("write the secret");
    let file = f.compose(
        "secret",
        &format!(
            "services:
  uses:
    {SLEEP}
    secrets: [api_token]
    deploy:
      placement:
        constraints: [node.id == {}]
  other:
    {SLEEP}
    deploy:
      placement:
        constraints: [node.id == {}]
secrets:
  api_token:
    file: {}
",
            ids[1],
            ids[2],
            secret.display()
        ),
    );
    let file = file.to_str().expect("utf-8");
    f.ok(0, &["-f", file, "up", "-d"]);
    f.wait_rows("secret", "both running", |rows| running(rows).len() == 2);
    let uses = f
        .ps(0, "secret")
        .into_iter()
        .find(|r| r.service == "uses")
        .expect("the task using the secret");
    // On the node that runs it: in the container's secrets, on a tmpfs.
    let dir = f.state(1).join("containers").join(&uses.id).join("secrets");
    assert_eq!(
        std::fs::read_to_string(dir.join("api_token")).expect("the secret's file"),
        token
    );
    let fs = nix::sys::statfs::statfs(&dir).expect("statfs");
    assert_eq!(fs.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
    // Nowhere on the other worker (disk or tmpfs), and never in the API's answers.
    let found = std::process::Command::new("grep")
        .args(["-rl", "--", &token])
        .arg(f.state(2))
        .output()
        .expect("grep");
    assert!(
        found.stdout.is_empty(),
        "the secret is on host 2: {}",
        String::from_utf8_lossy(&found.stdout)
    );
    let state = fixture::raw_get(&f.state(0).join("berth.sock"), "/v1/state");
    assert!(!state.contains(&token), "the API shows the secret");
    f.ok(0, &["-f", file, "down"]);
    f.wait_rows("secret", "everything is gone", |rows| rows.is_empty());
    assert!(!dir.exists(), "the secret's tmpfs is left");
}

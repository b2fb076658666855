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

    /// Deploys stack `name` from manager 0: one service, `web`, of `replicas` sleeping
    /// busybox containers; returns the compose file's path.
    fn up_web(&self, name: &str, replicas: u32) -> String {
        let file = self.compose(
            name,
            &format!("services:\n  web:\n    {SLEEP}\n    deploy:\n      replicas: {replicas}\n"),
        );
        let file = file.to_str().expect("utf-8").to_string();
        self.ok(0, &["-f", &file, "up", "-d"]);
        file
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
    // Reservations: two of big's tasks fit a node (every host is this machine), a
    // third does not.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let big_cpus = cpus * 1000 * 2 / 5;
    // A bind source is the node's own: one missing there fails the task, saying where.
    let missing = f.hosts.dir().join("no-such-dir");
    let file = f.compose(
        "spread",
        &(format!(
            "services:
  web:
    {SLEEP}
    volumes: [data:/data]
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
  big:
    {SLEEP}
    deploy:
      replicas: 7
      resources:
        reservations:
          cpus: \"{big_cpus}\"
  files:
    {SLEEP}
    volumes:
      - type: bind
        source: {missing}
        target: /data
        bind:
          create_host_path: false
    deploy:
      placement:
        constraints: [node.id == {worker}]
",
            missing = missing.display(),
            big_cpus = big_cpus as f64 / 1000.0,
            worker = ids[1],
        ) + "volumes:\n  data: {}\n"),
    );
    let file = file.to_str().expect("utf-8");
    let up = f.berth(0, &["-f", file, "up", "-d"]);
    let err = String::from_utf8_lossy(&up.stderr);
    assert!(
        !up.status.success()
            && err.contains(&format!(
                "spread-files-1 could not start: on node {}",
                manager::cluster::ops::clean_hostname(&manager::cluster::ops::hostname())
            ))
            && err.contains(&format!("({}): services.files.volumes[0]", ids[1]))
            && err.contains(&format!("bind source {} does not exist", missing.display())),
        "up fails, naming the node and the path: {err}"
    );
    f.wait_rows("spread", "4 web, 3 mon running; db pending", |rows| {
        let running = |s: &str| {
            rows.iter()
                .filter(|r| r.service == s && r.state == "running")
                .count()
        };
        running("web") == 4
            && running("mon") == 3
            && running("big") == 6
            && rows
                .iter()
                .any(|r| r.service == "big" && r.status.contains("insufficient cpu"))
            && rows
                .iter()
                .any(|r| r.service == "db" && r.status.contains("node.labels.tier"))
            && rows.iter().any(|r| {
                r.service == "files"
                    && r.node == ids[1]
                    && r.status.contains("on node ")
                    && r.status.contains(&format!("({})", ids[1]))
                    && r.status.contains(&missing.display().to_string())
            })
    });
    let web = f.running_per_node(0, "spread", "web");
    assert!(
        web.len() >= 3 && web.values().all(|n| *n <= 2),
        "web spreads over the nodes, at most 2 on one: {web:?}"
    );
    let mon = f.running_per_node(0, "spread", "mon");
    assert_eq!(mon.len(), 3, "one mon per node: {mon:?}");
    let big = f.running_per_node(0, "spread", "big");
    assert!(
        big.values().all(|n| *n == 2),
        "reservations hold: two of big per node, {big:?}"
    );
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
    // The task of big that fitted nowhere fits the new node.
    f.wait_rows("spread", "big's last task runs on the new node", |rows| {
        rows.iter()
            .any(|r| r.service == "big" && r.state == "running" && r.node == late)
    });
    let big = f.running_per_node(0, "spread", "big");
    assert!(
        big.values().all(|n| *n <= 2) && big.values().sum::<usize>() == 7,
        "reservations hold on four nodes: {big:?}"
    );
    // What the stack made on each node: its network there, and web's volume.
    let entries = |i: usize, dir: &str| -> Vec<String> {
        std::fs::read_dir(f.state(i).join(dir))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (node, _) in f.running_per_node(0, "spread", "web") {
        let i = (0..4)
            .find(|&i| f.node_id(i) == node)
            .expect("a known node");
        assert!(
            !entries(i, "network/networks").is_empty(),
            "host {i}'s network"
        );
        assert!(!entries(i, "volumes").is_empty(), "host {i}'s volume");
    }
    // `down -v` removes them on every node, not only on the manager it was sent to.
    f.ok(0, &["-f", file, "down", "-v"]);
    f.wait_rows("spread", "everything is gone", |rows| rows.is_empty());
    for i in 0..4 {
        assert!(
            f.containers_on(i).is_empty(),
            "host {i} holds {:?}",
            f.containers_on(i)
        );
        assert_eq!(
            entries(i, "network/networks"),
            Vec::<String>::new(),
            "host {i}"
        );
        assert_eq!(entries(i, "volumes"), Vec::<String>::new(), "host {i}");
    }
}

/// Whether host `i`'s store has `busybox:local`.
fn has_busybox(f: &Fixture, i: usize) -> bool {
    let store = agent::image::ImageStore::open(&f.state(i)).expect("a host's image store");
    let reference = agent::image::Reference::parse("busybox:local").expect("a reference");
    store.image(&reference).is_ok()
}

#[test]
fn an_image_only_on_one_worker_runs_elsewhere_and_one_no_node_has_is_refused() {
    // No registry, and the image only on worker A (host 1), imported there once its
    // daemon runs, as a user would.
    let mut f = Fixture::new(3);
    let (token, _) = f.init();
    f.join(1, &token);
    f.join(2, &token);
    f.wait_ready(0, 3);
    f.import_busybox(1);
    let (a, b) = (f.node_id(1), f.node_id(2));
    let manager = f.node_id(0);
    // `web` (pull_policy missing, the default) must run on worker B; `pinned`
    // (`never`: no registry pull, and present on a node is enough) on the manager.
    let file = f.compose(
        "elsewhere",
        &format!(
            "services:
  web:
    {SLEEP}
    deploy:
      placement:
        constraints: [node.id == {b}]
  pinned:
    {SLEEP}
    pull_policy: never
    deploy:
      placement:
        constraints: [node.role == manager]
"
        ),
    );
    let file = file.to_str().expect("utf-8");
    let out = f.berth(0, &["-f", file, "up", "-d"]);
    let said = fixture::stderr(&out);
    assert!(out.status.success(), "up: {said}\nlog:\n{}", f.log(0));
    assert!(
        said.contains(&format!("web Image busybox:local is on node {a} (")),
        "up says where the image is: {said}"
    );
    f.wait_rows(
        "elsewhere",
        "web runs on B, pinned on the manager",
        |rows| {
            let on = |service: &str, node: &str| {
                rows.iter()
                    .any(|r| r.service == service && r.state == "running" && r.node == node)
            };
            on("web", &b) && on("pinned", &manager)
        },
    );
    // Each fetched it from A, the only node that had it, digests checked on the way.
    assert!(has_busybox(&f, 2) && has_busybox(&f, 0));
    for i in [0, 2] {
        assert!(
            f.log(i)
                .contains(&format!("fetched image busybox:local from node {a} (")),
            "host {i}'s log:\n{}",
            f.log(i)
        );
    }

    // An image no node has and no registry gives: refused before anything changes,
    // naming the service, the image and what to do.
    let nowhere = f.compose(
        "nowhere",
        "services:
  app:
    image: 127.0.0.1:1/nope:1
  strict:
    image: 127.0.0.1:1/nope:1
    pull_policy: never
",
    );
    let before = fixture::raw_get(&f.state(0).join("berth.sock"), "/v1/state");
    let out = f.berth(0, &["-f", nowhere.to_str().expect("utf-8"), "up", "-d"]);
    let said = fixture::stderr(&out);
    assert!(
        !out.status.success(),
        "up of an image nowhere succeeded: {said}"
    );
    for wanted in [
        "services.app.image: no node of the cluster has image \"127.0.0.1:1/nope:1\", and no \
         registry gave it (",
        "services.strict.image: no node of the cluster has image \"127.0.0.1:1/nope:1\", and \
         pull_policy is never; import or load it on any node of the cluster",
        "nothing was changed",
    ] {
        assert!(said.contains(wanted), "{wanted:?} not in: {said}");
    }
    assert!(f.ps(0, "nowhere").is_empty(), "{:?}", f.ps(0, "nowhere"));
    let after = fixture::raw_get(&f.state(0).join("berth.sock"), "/v1/state");
    let stacks = |answer: &str| -> serde_json::Value {
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str::<serde_json::Value>(body).expect("the state")["stacks"].clone()
    };
    assert_eq!(stacks(&after), stacks(&before), "the stacks changed");
    assert!(!f.containers_on(0).iter().any(|c| c.starts_with("nowhere")));

    f.ok(0, &["-f", file, "down"]);
    f.wait_rows("elsewhere", "everything is gone", |rows| rows.is_empty());
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
    let file = f.up_web("lost", 3);
    let file = file.as_str();
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
    let file = f.up_web("drain", 3);
    let file = file.as_str();
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
    let file = f.up_web("failover", 4);
    let file = file.as_str();
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
    // The node's disk copy of its view names the secret, never holds it (its content
    // would be base64 in `data`).
    let copy = std::fs::read_to_string(f.state(1).join("worker").join("view.json"))
        .expect("the worker's copy of its view");
    assert!(
        !copy.contains(&token),
        "the secret is in the view's copy: {copy}"
    );
    let copy: serde_json::Value = serde_json::from_str(&copy).expect("JSON");
    let record = &copy["stacks"]["secret"];
    assert!(
        record["stack"]["secrets"]["api_token"].is_object(),
        "{copy}"
    );
    assert!(record.get("data").is_none(), "{copy}");
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

/// The answer's status to `GET path` on host `to`'s cluster port, from host `from`
/// with host `from`'s own node certificate (the server verified as node `to`).
fn node_get(f: &Fixture, from: usize, to: usize, path: &str) -> u16 {
    use std::io::{Read, Write};
    let creds = pki::NodeCredentials::load(&f.state(from).join("cluster/node"))
        .expect("host's node credentials");
    let config =
        manager::port::http_client_config(&creds, &pki::DenyList::new()).expect("client settings");
    let id = pki::NodeId::new(&f.node_id(to)).expect("a node id");
    let addr = f.addr(to);
    let answer = f
        .hosts
        .host(from)
        .run_in(|| {
            let tcp = std::net::TcpStream::connect(&addr).expect("connect to the node");
            let conn = rustls::ClientConnection::new(config, pki::tls::node_server_name(&id))
                .expect("a TLS session");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            write!(
                tls,
                "GET {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n"
            )
            .expect("send");
            let mut out = String::new();
            let _ = tls.read_to_string(&mut out);
            out
        })
        .expect("run in the host");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[test]
fn logs_exec_top_and_kill_reach_tasks_on_workers() {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let (f, _) = Fixture::manager_and_workers(3, 3, &[]);
    let ids: Vec<String> = (0..3).map(|i| f.node_id(i)).collect();
    // Says it started, then one line each time /tmp/go appears.
    let file = f.compose(
        "remote",
        "services:
  web:
    image: busybox:local
    command: [\"sh\", \"-c\", \"echo started; while true; do if [ -f /tmp/go ]; then rm /tmp/go; echo later; fi; sleep 0.1; done\"]
    deploy:
      replicas: 2
      placement:
        constraints: [node.role == worker]
        max_replicas_per_node: 1
",
    );
    let file = file.to_str().expect("utf-8");
    f.ok(0, &["-f", file, "up", "-d"]);
    f.wait_rows("remote", "web runs on both workers", |rows| {
        let now = running(rows);
        now.len() == 2 && now.iter().all(|(_, n)| *n != ids[0])
    });
    let rows = f.ps(0, "remote");
    let first = rows
        .iter()
        .find(|r| r.name == "remote-web-1")
        .expect("replica 1")
        .clone();
    let worker = (1..3).find(|&i| ids[i] == first.node).expect("on a worker");

    // logs, from the manager, of containers on the workers.
    let ok = poll_until(Duration::from_secs(10), || {
        f.ok(0, &["-p", "remote", "logs", "web"])
            .matches("started")
            .count()
            == 2
    });
    assert!(ok, "{}", f.ok(0, &["-p", "remote", "logs", "web"]));

    // logs -f streams what the container writes after it started.
    let mut follow = f
        .command_in(0)
        .arg("--state-dir")
        .arg(f.state(0))
        .args(["-p", "remote", "logs", "-f", "--no-log-prefix", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start berth logs -f");
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = follow.stdout.take().expect("its stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if line.trim() == want => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    assert!(wait_for("started"), "logs -f shows what came before");

    // exec -T in the worker's container: output, stderr and the exit status, from the
    // manager's host.
    let out = f.berth(
        0,
        &[
            "-p",
            "remote",
            "exec",
            "-T",
            "web",
            "sh",
            "-c",
            "touch /tmp/go; echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", fixture::stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("out\n"), "{stdout:?}");
    assert!(
        fixture::stderr(&out).contains("err"),
        "{}",
        fixture::stderr(&out)
    );
    assert!(wait_for("later"), "logs -f streams a line written since");
    let _ = follow.kill();
    let _ = follow.wait();

    // stdin reaches the command, and ends.
    let mut cat = f
        .command_in(0)
        .arg("--state-dir")
        .arg(f.state(0))
        .args(["-p", "remote", "exec", "-T", "web", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start berth exec cat");
    cat.stdin
        .take()
        .expect("its stdin")
        .write_all(b"through the manager\n")
        .expect("write its stdin");
    let out = cat.wait_with_output().expect("berth exec cat");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through the manager\n"
    );

    // A CLI that goes away ends its command on the worker.
    let mut gone = f
        .command_in(0)
        .arg("--state-dir")
        .arg(f.state(0))
        .args([
            "-p", "remote", "exec", "-T", "--index", "1", "web", "sleep", "1234",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start berth exec sleep");
    let top = || f.ok(0, &["-p", "remote", "top", "web"]);
    assert!(
        poll_until(Duration::from_secs(10), || top().contains("sleep 1234")),
        "{}",
        top()
    );
    gone.kill().expect("kill the CLI");
    let _ = gone.wait();
    assert!(
        poll_until(Duration::from_secs(10), || !top().contains("sleep 1234")),
        "the command outlived its CLI: {}",
        top()
    );

    // With a terminal (berth's own stdin is one, under `script`): the command gets
    // one of the container's.
    let line = format!(
        "{} --state-dir {} -p remote exec web sh -c 'tty; exit 5'",
        fixture::BERTH,
        f.state(0).display()
    );
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", f.hosts.host(0).netns_path().display()))
        .args(["--", "script", "-qec", &line, "/dev/null"])
        .env_remove("BERTH_HOST")
        .env_remove("BERTH_TLS_DIR")
        .env("BERTH_CONTEXT", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("run berth exec under script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{text}{}",
        fixture::stderr(&out)
    );
    assert!(text.contains("/dev/pts/"), "{text:?}");

    // A remote CLI (an admin certificate, --host) on another host reaches it too.
    let admin = f.state(0).join("cluster/admin");
    let out = f.remote(
        worker,
        0,
        &admin,
        &[
            "-p",
            "remote",
            "exec",
            "-T",
            "web",
            "sh",
            "-c",
            "echo remote; exit 4",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", fixture::stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "remote\n");

    // top and stats of containers on the workers.
    let top = f.ok(0, &["-p", "remote", "top", "web"]);
    assert!(
        top.contains("remote-web-1") && top.contains("remote-web-2") && top.contains("sleep"),
        "{top}"
    );
    let stats = f.ok(0, &["-p", "remote", "stats", "web"]);
    assert!(
        stats.contains("remote-web-1") && stats.contains("remote-web-2"),
        "{stats}"
    );

    // A worker may not reach into another worker's containers, nor into its own
    // through the port; a manager may.
    let other = 3 - worker;
    let path = format!("/v1/node/tasks/{}/top", first.id);
    assert_eq!(node_get(&f, other, worker, &path), 403);
    assert_eq!(node_get(&f, worker, worker, &path), 403);
    assert_eq!(node_get(&f, 0, worker, &path), 200);
    // Nor a manager into a task that is not the node's.
    let elsewhere = rows
        .iter()
        .find(|r| r.node != first.node)
        .expect("a task on the other worker");
    let path = format!("/v1/node/tasks/{}/top", elsewhere.id);
    assert_eq!(node_get(&f, 0, worker, &path), 404);

    // kill, from the manager: the workers' containers get the signal.
    f.ok(0, &["-p", "remote", "kill", "web"]);
    let killed: Vec<String> = running(&rows).into_iter().map(|(t, _)| t).collect();
    f.wait_rows("remote", "the killed containers no longer run", |rows| {
        rows.iter()
            .all(|r| !(killed.contains(&r.id) && r.state == "running"))
    });
    f.ok(0, &["-f", file, "down"]);
    f.wait_rows("remote", "everything is gone", |rows| rows.is_empty());
}

/// `BERTH_EXEC_BENCH=N cargo test --test cluster_tasks exec_latency -- --nocapture`:
/// N runs of `berth exec -T SERVICE true` per path (direct, through the local daemon
/// to a worker, `--host` to the manager for its own container and for a worker's),
/// median and minimum (docs/decisions.md). Without the variable, nothing runs.
#[test]
fn exec_latency_direct_and_through_the_api() {
    let Some(runs) = std::env::var("BERTH_EXEC_BENCH")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
    else {
        return;
    };
    let (f, _) = Fixture::manager_and_workers(2, 2, &[]);
    let manager = f.node_id(0);
    let file = f.compose(
        "bench",
        &format!(
            "services:
  here:
    {SLEEP}
    deploy:
      placement:
        constraints: [node.id == {manager}]
  there:
    {SLEEP}
    deploy:
      placement:
        constraints: [node.role == worker]
"
        ),
    );
    f.ok(0, &["-f", file.to_str().expect("utf-8"), "up", "-d"]);
    f.wait_rows("bench", "both run", |rows| running(rows).len() == 2);
    let admin = f.state(0).join("cluster/admin");
    fn exec(service: &str) -> [&str; 6] {
        ["-p", "bench", "exec", "-T", service, "true"]
    }
    let time = |what: &str, run: &dyn Fn() -> std::process::Output| {
        let mut took: Vec<Duration> = (0..runs)
            .map(|_| {
                let started = std::time::Instant::now();
                let out = run();
                assert!(out.status.success(), "{what}: {}", fixture::stderr(&out));
                started.elapsed()
            })
            .collect();
        took.sort();
        eprintln!(
            "{what}: median {:.1} ms, min {:.1} ms",
            took[runs / 2].as_secs_f64() * 1e3,
            took[0].as_secs_f64() * 1e3
        );
    };
    time("berth ps (a CLI call's floor)", &|| {
        f.berth(0, &["-p", "bench", "ps"])
    });
    time("direct (container on the CLI's host)", &|| {
        f.berth(0, &exec("here"))
    });
    time("local daemon -> worker", &|| f.berth(0, &exec("there")));
    time("--host -> manager, its container", &|| {
        f.remote(0, 0, &admin, &exec("here"))
    });
    time("--host -> manager -> worker", &|| {
        f.remote(0, 0, &admin, &exec("there"))
    });
    f.ok(0, &["-p", "bench", "down"]);
}

#[test]
fn a_rolling_update_on_a_cluster_keeps_every_replica_and_rolls_back_a_failing_one() {
    let (f, _) = Fixture::manager_and_workers(3, 3, &[]);
    let ids: Vec<String> = (0..3).map(|i| f.node_id(i)).collect();
    let web = |version: &str, check: &str| {
        format!(
            r#"services:
  web:
    image: busybox:local
    environment: {{VERSION: "{version}"}}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    healthcheck:
      test: ["CMD", "{check}"]
      interval: 200ms
      retries: 1
    deploy:
      replicas: 3
      update_config: {{parallelism: 1, monitor: 500ms, failure_action: rollback, order: start-first}}
      rollback_config: {{parallelism: 0, monitor: 200ms}}
"#
        )
    };
    let file = f.compose("roll", &web("v1", "true"));
    let file = file.to_str().expect("utf-8").to_string();
    f.ok(
        0,
        &["-f", &file, "up", "-d", "--wait", "--wait-timeout", "60"],
    );
    let ids_running = |f: &Fixture| -> Vec<String> {
        let mut v: Vec<String> = f
            .ps(0, "roll")
            .into_iter()
            .filter(|r| r.state == "running")
            .map(|r| r.id)
            .collect();
        v.sort();
        v
    };
    let v1 = ids_running(&f);
    assert_eq!(v1.len(), 3);

    // v2 rolls start-first, one at a time: the nodes never run fewer than 3 of them.
    f.compose("roll", &web("v2", "true"));
    let fewest = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let all: usize = ids.iter().map(|n| f.running_on(n)).sum();
                fewest.fetch_min(all, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let out = f.berth(
            0,
            &["-f", &file, "up", "-d", "--wait", "--wait-timeout", "90"],
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(out.status.success(), "{}", fixture::stderr(&out));
    });
    assert!(
        fewest.load(std::sync::atomic::Ordering::Relaxed) >= 3,
        "fewer than 3 ran during the update"
    );
    let v2 = ids_running(&f);
    assert_eq!(v2.len(), 3);
    assert!(v2.iter().all(|id| !v1.contains(id)), "{v1:?} -> {v2:?}");
    let ps = f.ok(0, &["-p", "roll", "ps"]);
    assert!(ps.contains("service web: update completed"), "{ps}");

    // A failing definition: rolled back by itself, the v2 tasks kept, `up` says why.
    f.compose("roll", &web("v3", "false"));
    let out = f.berth(
        0,
        &["-f", &file, "up", "-d", "--wait", "--wait-timeout", "90"],
    );
    let err = fixture::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the update of service web failed and"),
        "{err}"
    );
    assert!(err.contains("unhealthy"), "{err}");
    f.wait_rows("roll", "the rollback to finish", |_| {
        f.ok(0, &["ls"]).contains("web: rolled back")
    });
    assert_eq!(ids_running(&f), v2, "the healthy v2 tasks were kept");
    f.ok(0, &["-f", &file, "down"]);
    f.wait_rows("roll", "everything is gone", |rows| rows.is_empty());
}

#[test]
fn generic_resources_reach_the_task_and_a_task_needing_more_stays_pending() {
    // One node, a cluster of its own (the scheduler runs on clusters), advertising two
    // named GPUs and a count of SSDs.
    let mut f = Fixture::new(1);
    f.import_busybox(0);
    f.start_env(
        0,
        &[("BERTH_NODE_GENERIC_RESOURCE", "GPU=gpu-a,GPU=gpu-b,SSD=1")],
    );
    let addr = f.addr(0);
    f.ok(0, &["cluster", "init", "--advertise-addr", &addr]);
    f.wait_ready(0, 1);
    let id = f.node_id(0);
    let ok = poll_until(Duration::from_secs(30), || {
        let out = f.berth(0, &["node", "inspect", &id]);
        String::from_utf8_lossy(&out.stdout).contains("gpu-b")
    });
    assert!(ok, "node inspect never showed the GPUs: {}", f.log(0));

    let reserve = |kind: &str, n: u32| {
        format!(
            "    deploy:\n      resources:\n        reservations:\n          \
             generic_resources: [{{discrete_resource_spec: {{kind: {kind}, value: {n}}}}}]\n"
        )
    };
    let file = f.compose(
        "gen",
        &format!(
            "services:\n  gpu:\n    {SLEEP}\n{}  disks:\n    {SLEEP}\n{}",
            reserve("GPU", 1),
            reserve("SSD", 2)
        ),
    );
    let file = file.to_str().expect("utf-8").to_string();
    f.ok(0, &["-f", &file, "up", "-d"]);
    f.wait_rows("gen", "gpu running, disks pending with the reason", |rows| {
        rows.iter()
            .any(|r| r.service == "gpu" && r.state == "running")
            && rows.iter().any(|r| {
                r.service == "disks"
                    && r.status
                        .contains("insufficient generic resource SSD: needs 2, more than the node has (1)")
            })
    });
    let out = f.ok(
        0,
        &[
            "-p",
            "gen",
            "exec",
            "-T",
            "gpu",
            "sh",
            "-c",
            "echo $DOCKER_RESOURCE_GPU",
        ],
    );
    assert_eq!(out.trim(), "gpu-a");
    f.ok(0, &["-f", &file, "down"]);
    fixture::drop_and_check(f);
}

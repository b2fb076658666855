//! Git-ops on a cluster, for real: three voting managers (`berth daemon` processes in
//! network-namespace hosts, `testkit::hosts`), a local-directory source they all see at
//! the same path, and the Raft leader killed with SIGKILL. The controller runs on the
//! leader only: the new leader takes the source over, deploys the next change once
//! (one run, not one per manager), and the old leader, back as a follower, changes
//! nothing.

#[path = "cluster/fixture.rs"]
mod fixture;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fixture::Fixture;
use serde_json::Value;

/// The source's name and its one stack's.
const SOURCE: &str = "stacks";
const STACK: &str = "relay";

/// One row of `berth ps --format json`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    id: String,
    node: String,
}

/// The stack file: one busybox service with `MODE` in its environment, pinned to node
/// `node` (a manager the test does not kill, so that the failover is all it sees: no
/// task on a dead node waiting out the node grace).
fn stack_file(mode: &str, node: &str) -> String {
    format!(
        "services:
  web:
    image: busybox:local
    command: [sleep, '100000']
    stop_grace_period: 1s
    environment:
      MODE: {mode}
    deploy:
      placement:
        constraints: [node.id == {node}]
"
    )
}

/// The source directory, in the cluster's directory (every host sees it at the same
/// path: they share this machine's filesystem).
fn src(f: &Fixture) -> PathBuf {
    f.hosts.dir().join("src")
}

/// Writes the stack file as an editor saves: a temporary file renamed over the old one.
fn write_stack(f: &Fixture, text: &str) {
    let path = src(f).join(format!("{STACK}.yaml"));
    let tmp = path.with_extension("swp~");
    std::fs::write(&tmp, text).expect("write the stack file");
    std::fs::rename(&tmp, &path).expect("rename the stack file");
}

/// The stack's `gitops status --format json` as manager `i` shows it (None: it does
/// not answer, or does not know the stack).
fn status(f: &Fixture, i: usize) -> Option<Value> {
    let out = f.berth(i, &["gitops", "status", "--format", "json"]);
    if !out.status.success() {
        return None;
    }
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    all.into_iter().find(|v| v["stack"] == STACK)
}

fn runs(st: &Value) -> Vec<Value> {
    st["runs"].as_array().cloned().unwrap_or_default()
}

/// The `deploy` runs of `st` about revision `digest`.
fn deploys_of(st: &Value, digest: &str) -> usize {
    runs(st)
        .iter()
        .filter(|r| r["action"] == "deploy" && r["digest"] == digest)
        .count()
}

/// The stack's running containers as manager `i` shows them.
fn running(f: &Fixture, i: usize) -> Vec<Row> {
    let out = f.berth(i, &["-p", STACK, "ps", "--format", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.iter()
        .filter(|r| r["State"] == "running")
        .map(|r| Row {
            id: r["ID"].as_str().unwrap_or_default().into(),
            node: r["NodeID"].as_str().unwrap_or_default().into(),
        })
        .collect()
}

/// `MODE` in the stack's running container, through manager `i`.
fn mode(f: &Fixture, i: usize) -> String {
    let out = f.berth(
        i,
        &["-p", STACK, "exec", "-T", "web", "sh", "-c", "echo $MODE"],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every daemon's log, for a failure's message.
fn logs(f: &Fixture) -> String {
    (0..f.daemons.len())
        .map(|h| format!("--- host {h}\n{}", f.log(h)))
        .collect()
}

/// Polls `cond` every 100 ms (each poll runs CLI processes: not every 5 ms on a
/// shared machine) until it holds or `secs` pass.
fn wait(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until manager `i` shows the stack's status satisfying `cond`; returns it.
fn wait_status(f: &Fixture, i: usize, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    let ok = wait(30, || {
        last = status(f, i);
        last.as_ref().is_some_and(&cond)
    });
    assert!(
        ok,
        "{what}: never so on manager {i}; status: {last:#?}\nps: {:?}\nlogs:\n{}",
        running(f, i),
        logs(f)
    );
    last.expect("a status")
}

#[test]
fn a_new_leader_takes_over_the_source_and_deploys_the_next_change_once() {
    let started = Instant::now();
    let mut f = Fixture::three_managers(3);
    // Every manager may lead, and the leader makes a deployment's images present.
    for i in 0..3 {
        f.import_busybox(i);
    }
    let first_leader = f.leader(0).expect("a leader");
    // The stack runs on a follower, which stays up throughout.
    let pinned = (0..3).find(|&i| i != first_leader).expect("a follower");
    let pinned_id = f.node_id(pinned);
    std::fs::create_dir_all(src(&f)).expect("the source directory");
    write_stack(&f, &stack_file("one", &pinned_id));

    // Added through the CLI of a manager that is not the leader: the leader's
    // controller acts, and `add` waits for its first sync.
    let asked = (0..3)
        .find(|&i| i != first_leader && i != pinned)
        .expect("the third manager");
    let dir = src(&f);
    let added = f.ok(
        asked,
        &[
            "gitops",
            "add",
            dir.to_str().expect("utf-8"),
            "--name",
            SOURCE,
        ],
    );
    assert!(
        added.contains(STACK) && added.contains("synced"),
        "add shows the first sync: {added}"
    );
    let first = wait_status(&f, asked, "synced and healthy", |v| {
        v["result"] == "synced" && v["health"] == "healthy"
    });
    let d1 = first["digest"].as_str().expect("a digest").to_string();
    assert_eq!(first["deployed"], d1.as_str());
    assert_eq!(deploys_of(&first, &d1), 1, "{first:#?}");
    assert_eq!(runs(&first).len(), 1, "one run: {first:#?}");
    let mut before = Vec::new();
    let ok = wait(30, || {
        before = running(&f, asked);
        before.len() == 1
    });
    assert!(
        ok,
        "the stack's container never ran: {before:?}\n{}",
        logs(&f)
    );
    assert_eq!(before[0].node, pinned_id, "placed where pinned: {before:?}");
    assert_eq!(mode(&f, asked), "one");
    eprintln!("deployed by the first leader at {:?}", started.elapsed());

    // The leader killed, and kept down: the two others elect a new one.
    let killed = f.leader(asked).expect("a leader");
    assert_ne!(
        killed, pinned,
        "the leadership moved to the node the stack is pinned to"
    );
    f.kill9(killed);
    let live: Vec<usize> = (0..3).filter(|&i| i != killed).collect();
    let mut new_leader = None;
    let ok = wait(30, || {
        let seen: Vec<Option<usize>> = live.iter().map(|&i| f.leader(i)).collect();
        new_leader = seen[0];
        seen.iter().all(|l| l.is_some() && *l == seen[0]) && seen[0] != Some(killed)
    });
    assert!(ok, "no new leader among {live:?}\n{}", logs(&f));
    let new_leader = new_leader.expect("a new leader");
    eprintln!(
        "host {killed} killed; host {new_leader} leads at {:?}",
        started.elapsed()
    );
    // The new leader's controller takes the source over: an unchanged source is left
    // alone (no run, nothing recreated).
    std::thread::sleep(Duration::from_millis(1000));
    let taken = wait_status(&f, new_leader, "still synced", |v| v["result"] == "synced");
    assert_eq!(runs(&taken), runs(&first), "a takeover changes nothing");
    assert_eq!(running(&f, new_leader), before);

    // A change: deployed by the new leader, once.
    let (written, written_at) = (unix_ms(), started.elapsed());
    write_stack(&f, &stack_file("two", &pinned_id));
    let changed = wait_status(&f, new_leader, "the change deployed", |v| {
        v["digest"] != d1.as_str()
            && v["deployed"] == v["digest"]
            && v["result"] == "synced"
            && v["health"] == "healthy"
    });
    let d2 = changed["digest"].as_str().expect("a digest").to_string();
    let deployed_at = runs(&changed)
        .last()
        .and_then(|r| r["at"].as_u64())
        .unwrap_or_default();
    eprintln!(
        "the change written at {written_at:?}: its deploy run {} ms later, healthy {} ms \
         later (a cluster's update monitors the new task 5 s)",
        deployed_at.saturating_sub(written),
        unix_ms() - written
    );
    let mut after = Vec::new();
    let ok = wait(30, || {
        after = running(&f, new_leader);
        after.len() == 1 && after[0].id != before[0].id
    });
    assert!(
        ok,
        "the container was not recreated: before {before:?}, now {after:?}\n{}",
        logs(&f)
    );
    assert_eq!(after[0].node, pinned_id);
    let ok = wait(30, || mode(&f, new_leader) == "two");
    assert!(
        ok,
        "MODE is {:?}, not two\n{}",
        mode(&f, new_leader),
        logs(&f)
    );
    eprintln!("the change converged at {:?}", started.elapsed());
    // Time for a second controller (if one also acted) to show its run.
    std::thread::sleep(Duration::from_millis(1500));
    for &i in &live {
        let st = status(&f, i).expect("a status");
        assert_eq!(
            deploys_of(&st, &d2),
            1,
            "one deploy run for the change, on manager {i}: {st:#?}\nlogs:\n{}",
            logs(&f)
        );
        let kinds: Vec<(String, String)> = runs(&st)
            .iter()
            .map(|r| {
                (
                    r["action"].as_str().unwrap_or_default().to_string(),
                    r["digest"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("deploy".to_string(), d1.clone()),
                ("deploy".to_string(), d2.clone())
            ],
            "the first deployment and the change's, nothing else, on manager {i}: {st:#?}"
        );
        let revisions = st["revisions"].as_array().cloned().unwrap_or_default();
        assert_eq!(revisions.len(), 2, "two revisions: {st:#?}");
        assert_eq!(revisions[1][0], d2.as_str(), "{st:#?}");
        assert_eq!(st["result"], "synced");
        assert_eq!(running(&f, i), after, "ps on manager {i}");
    }
    let settled = status(&f, new_leader).expect("a status");

    // The old leader back, as a follower: it catches up and acts on nothing.
    f.start(killed);
    f.wait_managers(killed, 3);
    f.wait_converged(&[0, 1, 2]);
    std::thread::sleep(Duration::from_millis(1500));
    eprintln!(
        "host {killed} back; host {:?} leads at {:?}",
        f.leader(killed),
        started.elapsed()
    );
    for i in 0..3 {
        let st = status(&f, i).expect("a status");
        assert_eq!(
            runs(&st),
            runs(&settled),
            "the runs on manager {i} after the restart: {st:#?}\nlogs:\n{}",
            logs(&f)
        );
        assert_eq!(deploys_of(&st, &d2), 1, "{st:#?}");
        assert_eq!(st["result"], "synced", "manager {i}: {st:#?}");
        assert_eq!(st["digest"], d2.as_str());
        assert_eq!(st["deployed"], d2.as_str());
        assert_eq!(st["health"], "healthy", "manager {i}: {st:#?}");
        assert_eq!(running(&f, i), after, "ps on manager {i}");
    }
    assert_eq!(mode(&f, killed), "two");
    eprintln!("done at {:?}", started.elapsed());
    // Cleaned up as every cluster test is, and nothing left behind.
    fixture::drop_and_check(f);
}

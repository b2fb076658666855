//! The cluster's operations as tables of cases: the state and a request in, the change
//! or a typed refusal out (`manager::cluster::ops`'s pure functions). Each refused case
//! also checks that the state was left as it was: the store would run the same
//! function inside a transaction and commit whatever it changed.

use std::collections::BTreeMap;

use manager::cluster::liveness::NodeStatus;
use manager::cluster::ops::{
    self, admit_node, change, change_settings, find, record_init, resolve, rotate_token, token,
    undo_init, views, NodeChange, Refused, SettingsChange,
};
use manager::state::model::State;
use manager::state::model::{ClusterRecord, NodeRecord};
use manager::state::raft::{Progress, Status};
use pki::NodeRole;
use spec::task::{Task, TaskState, TaskStatus};

fn node(id: &str, hostname: &str, role: NodeRole, raft_id: u64) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        role,
        addr: "10.0.0.1:7377".into(),
        hostname: hostname.into(),
        raft_id,
        joined_at: 0,
        labels: BTreeMap::new(),
        availability: Default::default(),
        platform: Default::default(),
        capacity: Default::default(),
        generic_resources: Default::default(),
    }
}

fn task(id: &str, on: &str, state: TaskState) -> Task {
    let t: Task = serde_json::from_value(serde_json::json!({
        "id": id, "stack": "s", "service": "web", "slot": 1, "generation": 1,
        "spec_hash": "h", "desired": "running", "created_at": 0,
    }))
    .expect("task");
    Task {
        node: Some(on.into()),
        status: TaskStatus {
            state: Some(state),
            ..Default::default()
        },
        ..t
    }
}

fn cluster_record() -> ClusterRecord {
    ClusterRecord {
        id: "c".into(),
        created_at: 0,
        ca_cert: String::new(),
        ca_key: String::new(),
        worker_token: "w".into(),
        manager_token: "m".into(),
        next_raft_id: 3,
        removed: Default::default(),
        settings: Default::default(),
    }
}

/// Two managers (`m1aa` on host `alpha`, `m2bb`), two workers (`w1cc`, `w1dd`, both
/// ids starting `w1`); `w1cc` runs a container, `w1dd` only has a removed one.
fn cluster() -> State {
    let mut s = State {
        cluster: Some(cluster_record()),
        ..State::default()
    };
    for n in [
        node("m1aa", "alpha", NodeRole::Manager, 1),
        node("m2bb", "beta", NodeRole::Manager, 2),
        node("w1cc", "gamma", NodeRole::Worker, 0),
        node("w1dd", "delta", NodeRole::Worker, 0),
    ] {
        s.nodes.insert(n.id.clone(), n);
    }
    for t in [
        task("s-web-1.1", "w1cc", TaskState::Running),
        task("s-web-2.1", "w1dd", TaskState::Removed),
    ] {
        s.tasks.insert(t.id.clone(), t);
    }
    s
}

#[test]
fn nodes_are_named_by_id_unique_prefix_or_hostname() {
    let s = cluster();
    let cases: &[(&str, Result<&str, Refused>)] = &[
        ("m1aa", Ok("m1aa")),
        ("m2", Ok("m2bb")),
        ("alpha", Ok("m1aa")),
        ("delta", Ok("w1dd")),
        ("w1", Err(Refused::Ambiguous("w1".into()))),
        ("nope", Err(Refused::NoSuchNode("nope".into()))),
    ];
    for (name, want) in cases {
        let got = resolve(&s.nodes, name);
        assert_eq!(got, want.clone().map(String::from), "{name}");
        assert_eq!(
            find(&s, name).map(|n| n.id),
            want.clone().map(String::from),
            "{name}"
        );
    }
}

/// What a node change does to the state, or why it is refused.
#[test]
fn node_changes() {
    let labels = |add: &[(&str, &str)], remove: &[&str]| NodeChange::Labels {
        add: add
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        remove: remove.iter().map(|k| k.to_string()).collect(),
    };
    /// (node name, change, reachable nodes, the node's id or the refusal, what the state
    /// must look like after).
    type Case<'a> = (
        &'a str,
        NodeChange,
        &'a [&'a str],
        Result<&'a str, Refused>,
        fn(&State),
    );
    let cases: Vec<Case> = vec![
        ("w1dd", NodeChange::Promote, &[], Ok("w1dd"), |s| {
            let n = &s.nodes["w1dd"];
            assert_eq!((n.role, n.raft_id), (NodeRole::Manager, 3));
            assert_eq!(
                s.cluster.as_ref().unwrap().next_raft_id,
                4,
                "raft ids are never reused"
            );
        }),
        (
            "m1",
            NodeChange::Promote,
            &[],
            Err(Refused::AlreadyManager("m1aa".into())),
            |_| {},
        ),
        ("beta", NodeChange::Demote, &[], Ok("m2bb"), |s| {
            let n = &s.nodes["m2bb"];
            assert_eq!((n.role, n.raft_id), (NodeRole::Worker, 0));
        }),
        (
            "w1dd",
            NodeChange::Demote,
            &[],
            Err(Refused::AlreadyWorker("w1dd".into())),
            |_| {},
        ),
        // An up node's live containers would be left unmanaged.
        (
            "w1cc",
            NodeChange::Remove { force: true },
            &["w1cc"],
            Err(Refused::RunsContainers {
                id: "w1cc".into(),
                containers: vec!["s-web-1".into()],
            }),
            |_| {},
        ),
        // A removed container does not count.
        (
            "w1dd",
            NodeChange::Remove { force: false },
            &[],
            Ok("w1dd"),
            |s| {
                assert!(!s.nodes.contains_key("w1dd"));
                assert!(s.cluster.as_ref().unwrap().removed.contains("w1dd"));
            },
        ),
        (
            "w1dd",
            NodeChange::Remove { force: false },
            &["w1dd"],
            Err(Refused::IsUp("w1dd".into())),
            |_| {},
        ),
        (
            "w1dd",
            NodeChange::Remove { force: true },
            &["w1dd"],
            Ok("w1dd"),
            |s| assert!(!s.nodes.contains_key("w1dd")),
        ),
        (
            "m2bb",
            NodeChange::Remove { force: true },
            &[],
            Err(Refused::IsManager("m2bb".into())),
            |_| {},
        ),
        (
            "gamma",
            labels(&[("zone", "a"), ("disk", "ssd")], &["none"]),
            &[],
            Ok("w1cc"),
            |s| {
                let l = &s.nodes["w1cc"].labels;
                assert_eq!(
                    (l["zone"].as_str(), l["disk"].as_str(), l.len()),
                    ("a", "ssd", 2)
                );
            },
        ),
        (
            "w1",
            NodeChange::Promote,
            &[],
            Err(Refused::Ambiguous("w1".into())),
            |_| {},
        ),
        (
            "x",
            labels(&[], &[]),
            &[],
            Err(Refused::NoSuchNode("x".into())),
            |_| {},
        ),
    ];
    for (name, what, reachable, want, check) in cases {
        let mut s = cluster();
        let reachable: Vec<String> = reachable.iter().map(|r| r.to_string()).collect();
        let got = change(&mut s, name, &what, &reachable);
        assert_eq!(got, want.clone().map(String::from), "{name} {what:?}");
        if want.is_err() {
            assert_eq!(
                s,
                cluster(),
                "a refused {what:?} of {name} changed the state"
            );
        }
        check(&s);
    }
}

#[test]
fn the_last_manager_cannot_be_demoted() {
    let mut s = cluster();
    change(&mut s, "m2bb", &NodeChange::Demote, &[]).unwrap();
    let before = s.clone();
    assert_eq!(
        change(&mut s, "m1aa", &NodeChange::Demote, &[]),
        Err(Refused::LastManager("m1aa".into()))
    );
    assert_eq!(s, before);
    let message = Refused::LastManager("m1aa".into()).to_string();
    assert!(message.contains("promote another node first"), "{message}");
}

#[test]
fn an_admitted_manager_gets_the_next_raft_id_and_a_worker_none() {
    let mut s = cluster();
    let addr = "10.0.0.9:7377".parse().unwrap();
    assert_eq!(
        admit_node(&mut s, "m3", NodeRole::Manager, addr, "h3", 7),
        Ok(3)
    );
    assert_eq!(
        admit_node(&mut s, "m4", NodeRole::Manager, addr, "h4", 7),
        Ok(4)
    );
    assert_eq!(
        admit_node(&mut s, "w9", NodeRole::Worker, addr, "h9", 7),
        Ok(0)
    );
    assert_eq!(s.cluster.as_ref().unwrap().next_raft_id, 5);
    let m3 = &s.nodes["m3"];
    assert_eq!(
        (
            m3.role,
            m3.addr.as_str(),
            m3.hostname.as_str(),
            m3.joined_at
        ),
        (NodeRole::Manager, "10.0.0.9:7377", "h3", 7)
    );
    // A store without a cluster admits nobody.
    let mut single = State::default();
    assert_eq!(
        admit_node(&mut single, "m3", NodeRole::Manager, addr, "h3", 7),
        Err(Refused::NoCluster)
    );
    assert_eq!(single, State::default());
}

#[test]
fn hostnames_are_cleaned_for_a_terminal() {
    let cases = [
        ("web-1.example_a", "web-1.example_a"),
        ("evil\x1b[31mred", "evil31mred"),
        ("sp ace/slash", "spaceslash"),
    ];
    for (raw, want) in cases {
        assert_eq!(ops::clean_hostname(raw), want, "{raw:?}");
    }
    assert_eq!(ops::clean_hostname(&"a".repeat(100)).len(), 64);
}

#[test]
fn rotating_a_token_replaces_only_that_one() {
    let ca = pki::Ca::create(std::time::SystemTime::now()).unwrap();
    let tokens = pki::JoinTokens::generate(ca.digest());
    let mut s = cluster();
    {
        let c = s.cluster.as_mut().unwrap();
        c.worker_token = tokens.token(NodeRole::Worker).to_string();
        c.manager_token = tokens.token(NodeRole::Manager).to_string();
    }
    let (worker, manager) = (
        token(&s, NodeRole::Worker).unwrap(),
        token(&s, NodeRole::Manager).unwrap(),
    );
    rotate_token(&mut s, NodeRole::Worker).unwrap();
    assert_ne!(token(&s, NodeRole::Worker).unwrap(), worker);
    assert_eq!(token(&s, NodeRole::Manager).unwrap(), manager);
    let mut single = State::default();
    assert_eq!(
        rotate_token(&mut single, NodeRole::Worker),
        Err(Refused::NoCluster)
    );
    assert_eq!(token(&single, NodeRole::Worker), Err(Refused::NoCluster));
}

/// `init` puts the host's tasks on its node; undoing an unfinished init gives them
/// back to the single host, and undoing twice changes nothing.
#[test]
fn init_and_its_undo() {
    let mut s = State::default();
    s.tasks
        .insert("t".into(), task("t", "elsewhere", TaskState::Running));
    s.nodes
        .insert("stale".into(), node("stale", "x", NodeRole::Worker, 0));
    record_init(
        &mut s,
        cluster_record(),
        node("me", "h", NodeRole::Manager, 1),
    );
    assert_eq!(s.nodes.keys().collect::<Vec<_>>(), ["me"]);
    assert_eq!(s.tasks["t"].node.as_deref(), Some("me"));
    assert!(s.cluster.is_some());
    assert!(undo_init(&mut s));
    assert!(s.cluster.is_none() && s.nodes.is_empty());
    assert_eq!(s.tasks["t"].node, None);
    let after = s.clone();
    assert!(!undo_init(&mut s));
    assert_eq!(s, after);
}

/// Managers are reachable as the leader's Raft progress says; every node's status is
/// its heartbeats' (as the leader's liveness says), and its usage is its tasks'.
#[test]
fn node_views_say_who_is_reachable() {
    let s = cluster();
    let status = Status {
        leader: 1,
        voters: vec![1, 2],
        progress: vec![
            Progress {
                id: 1,
                matched: 10,
                recent_active: true,
            },
            Progress {
                id: 2,
                matched: 7,
                recent_active: false,
            },
        ],
        ..Status::default()
    };
    let live = |id: &str| match id {
        "w1cc" | "m1aa" => NodeStatus::Ready,
        "w1dd" => NodeStatus::Down,
        _ => NodeStatus::Unknown,
    };
    let usage = manager::scheduler::usage(&s.stacks, &s.tasks);
    let got: Vec<(String, bool, String, String, String, u64)> =
        views(&s.nodes, &status, &live, &usage)
            .into_iter()
            .map(|v| {
                (
                    v.record.id,
                    v.leader,
                    v.status,
                    v.reachability,
                    v.raft,
                    v.matched,
                )
            })
            .collect();
    let want = [
        ("m1aa", true, "ready", "reachable", "voter", 10),
        ("m2bb", false, "unknown", "unreachable", "voter", 7),
        ("w1cc", false, "ready", "reachable", "-", 0),
        ("w1dd", false, "down", "unreachable", "-", 0),
    ];
    let want: Vec<(String, bool, String, String, String, u64)> = want
        .iter()
        .map(|(id, l, st, r, raft, m)| {
            (
                id.to_string(),
                *l,
                st.to_string(),
                r.to_string(),
                raft.to_string(),
                *m,
            )
        })
        .collect();
    assert_eq!(got, want);
    // The running container of w1cc counts; the removed one of w1dd does not.
    let views = views(&s.nodes, &status, &live, &usage);
    assert_eq!(views[2].usage.tasks, 1);
    assert_eq!(views[3].usage.tasks, 0);
    // A worker the leader knows nothing of is unknown.
    let got = views_unknown(&s);
    assert_eq!(got, "unknown");
}

fn views_unknown(s: &State) -> String {
    let got = views(
        &s.nodes,
        &Status::default(),
        &|_| NodeStatus::Unknown,
        &Default::default(),
    );
    got[2].reachability.clone()
}

#[test]
fn settings_change_only_what_is_given_and_refuse_a_grace_under_two_seconds() {
    let mut s = cluster();
    let set = |s: &mut State, grace: Option<u64>, rebalance: Option<bool>| {
        change_settings(
            s,
            &SettingsChange {
                node_grace_ms: grace,
                rebalance,
            },
        )
    };
    let got = set(&mut s, Some(30_000), None).expect("a grace");
    assert_eq!((got.node_grace_ms, got.no_rebalance), (30_000, false));
    let got = set(&mut s, None, Some(false)).expect("no rebalancing");
    assert_eq!((got.node_grace_ms, got.no_rebalance), (30_000, true));
    let before = s.clone();
    assert!(set(&mut s, Some(1_000), Some(true)).is_err());
    assert_eq!(s, before, "a refused change changes nothing");
    let mut single = State::default();
    assert!(set(&mut single, Some(5_000), None).is_err());
}

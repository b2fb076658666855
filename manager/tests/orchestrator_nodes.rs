//! The leader's pass on a cluster, as the daemon runs it (`orchestrator::run`): the
//! nodes' facts (`orchestrator::nodes`), the orchestrator with them
//! (`reconcile_on`), then the scheduler (`run::place`), over a state in memory, with an
//! agent that runs what it is given on every node that is up. Each case checks what
//! users of a cluster count on: a lost node's tasks are replaced and not doubled when
//! it returns, a drained node's tasks move without the service running fewer, a global
//! service follows its nodes, and a settled cluster stays settled.

use std::collections::{BTreeMap, BTreeSet};

use manager::orchestrator::{nodes::nodes, reconcile_on, run};
use manager::state::model::{Availability, NodeRecord, State};
use pki::NodeRole;
use spec::model::{
    Constraint, Deploy, DeployMode, Placement, ResourceSet, Resources, Service, Stack,
};
use spec::task::{DesiredState, StackRecord, Task, TaskState, TaskStatus};

const NOW: u64 = 1_000_000;

struct Cluster {
    state: State,
    down: BTreeSet<String>,
}

impl Cluster {
    fn new(node_ids: &[&str]) -> Cluster {
        let mut state = State::default();
        for id in node_ids {
            state.nodes.insert(id.to_string(), node(id));
        }
        Cluster {
            state,
            down: BTreeSet::new(),
        }
    }

    fn deploy(&mut self, services: &[(&str, Service)]) {
        let record = StackRecord::new(Stack::of_services(
            "app",
            services.iter().map(|(k, s)| (k.to_string(), s.clone())),
        ));
        self.state.stacks.insert("app".into(), record);
    }

    /// One leader pass; returns whether it changed anything.
    fn pass(&mut self) -> bool {
        let before = self.state.clone();
        let facts = nodes(&self.state, self.down.clone(), &BTreeMap::new());
        let tasks: Vec<Task> = self.state.tasks.values().cloned().collect();
        let plan = reconcile_on(&self.state.stacks, &tasks, NOW, &facts);
        run::apply(&mut self.state, &plan);
        run::place(&mut self.state, &facts);
        self.state != before
    }

    /// Passes until nothing changes.
    fn settle(&mut self) {
        for _ in 0..20 {
            if !self.pass() {
                return;
            }
        }
        panic!("the leader's pass does not settle: {:#?}", self.state.tasks);
    }

    /// Every node that is up runs what it is given: starts new tasks, stops and
    /// removes what it is told to.
    fn agents(&mut self) {
        for t in self.state.tasks.values_mut() {
            let Some(node) = &t.node else { continue };
            if self.down.contains(node) {
                continue;
            }
            t.status = match (t.desired, t.status.state()) {
                (DesiredState::Running, TaskState::New) => TaskStatus {
                    state: Some(TaskState::Running),
                    started_at: Some(NOW),
                    ..TaskStatus::default()
                },
                (DesiredState::Shutdown, s) if !s.is_terminal() => TaskStatus {
                    state: Some(TaskState::Shutdown),
                    ..t.status.clone()
                },
                (DesiredState::Remove, _) => TaskStatus {
                    state: Some(TaskState::Removed),
                    ..t.status.clone()
                },
                _ => continue,
            };
        }
    }

    /// Settles, lets the agents act, until both are done.
    fn converge(&mut self) {
        for _ in 0..20 {
            self.settle();
            let before = self.state.clone();
            self.agents();
            if self.state == before {
                return;
            }
        }
        panic!("no convergence: {:#?}", self.state.tasks);
    }

    /// Running tasks of `service`, per node.
    fn running(&self, service: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for t in self.state.tasks.values() {
            if t.service == service && t.status.state() == TaskState::Running {
                *out.entry(t.node.clone().unwrap_or_default()).or_default() += 1;
            }
        }
        out
    }

    fn total_running(&self, service: &str) -> usize {
        self.running(service).values().sum()
    }
}

fn node(id: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        role: NodeRole::Worker,
        addr: String::new(),
        hostname: format!("host-{id}"),
        raft_id: 0,
        joined_at: 0,
        labels: BTreeMap::new(),
        availability: Availability::Active,
        platform: Default::default(),
        capacity: Default::default(),
        generic_resources: Default::default(),
    }
}

fn replicated(n: u32) -> Service {
    Service {
        image: Some("busybox".into()),
        deploy: Some(Deploy {
            replicas: Some(n),
            ..Deploy::default()
        }),
        ..Service::default()
    }
}

fn global() -> Service {
    Service {
        image: Some("busybox".into()),
        deploy: Some(Deploy {
            mode: DeployMode::Global,
            ..Deploy::default()
        }),
        ..Service::default()
    }
}

fn constrained(n: u32, constraint: &str) -> Service {
    let mut s = replicated(n);
    if let Some(d) = s.deploy.as_mut() {
        d.placement = Some(Placement {
            constraints: vec![constraint.parse::<Constraint>().expect("a constraint")],
            ..Placement::default()
        });
    }
    s
}

#[test]
fn a_lost_nodes_tasks_are_replaced_whatever_the_restart_policy_and_not_doubled_on_return() {
    let mut c = Cluster::new(&["n1", "n2", "n3"]);
    c.deploy(&[("web", replicated(3))]);
    c.converge();
    assert_eq!(c.running("web").len(), 3, "{:?}", c.running("web"));
    let on_n3: Vec<String> = c
        .state
        .tasks
        .values()
        .filter(|t| t.node.as_deref() == Some("n3"))
        .map(|t| t.id.clone())
        .collect();

    c.down.insert("n3".into());
    c.converge();
    // Replaced on the others (no restart policy: losing a node is not a failure).
    assert_eq!(
        c.total_running("web") - c.running("web").get("n3").unwrap_or(&0),
        3
    );
    for id in &on_n3 {
        assert_eq!(c.state.tasks[id].desired, DesiredState::Shutdown, "{id}");
    }
    // A lost task does not hold its slot's ports or name: the replacement exists.
    let slots: BTreeSet<u32> = c
        .state
        .tasks
        .values()
        .filter(|t| t.desired == DesiredState::Running)
        .map(|t| t.slot)
        .collect();
    assert_eq!(slots, BTreeSet::from([1, 2, 3]));

    // Back: it stops what was replaced, the count holds, and the service is spread
    // again (a task moves back to it).
    c.down.clear();
    c.converge();
    for id in &on_n3 {
        assert_eq!(
            c.state.tasks[id].status.state(),
            TaskState::Shutdown,
            "{id}"
        );
    }
    assert_eq!(c.total_running("web"), 3);
    assert_eq!(c.running("web").len(), 3, "{:?}", c.running("web"));
    assert!(!c.pass(), "a settled cluster stays settled");
}

#[test]
fn a_task_being_removed_on_a_lost_node_is_forgotten_and_a_removed_node_counts_as_lost() {
    let mut c = Cluster::new(&["n1", "n2"]);
    c.deploy(&[("web", replicated(2))]);
    c.converge();
    // n2 is removed from the cluster (node rm): its task is replaced.
    c.state.nodes.remove("n2");
    c.down.insert("n2".into());
    c.converge();
    assert_eq!(c.running("web").get("n1"), Some(&2));
    // The stack goes while n2 never answers: nothing waits for it.
    c.state.stacks.clear();
    c.converge();
    let left: Vec<&Task> = c.state.tasks.values().collect();
    assert!(left.is_empty(), "{left:#?}");
}

#[test]
fn drain_starts_each_replacement_before_it_stops_the_old_task() {
    let mut c = Cluster::new(&["n1", "n2", "n3"]);
    c.deploy(&[("web", replicated(3))]);
    c.converge();
    c.state.nodes.get_mut("n2").expect("n2").availability = Availability::Drain;
    // One pass: the replacement is made and placed, the old task still wants to run.
    c.settle();
    let old: Vec<&Task> = c
        .state
        .tasks
        .values()
        .filter(|t| t.node.as_deref() == Some("n2"))
        .collect();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].desired, DesiredState::Running, "kept until replaced");
    let replacement = c
        .state
        .tasks
        .values()
        .find(|t| t.slot == old[0].slot && t.generation > old[0].generation)
        .expect("a replacement");
    assert!(matches!(
        replacement.node.as_deref(),
        Some("n1") | Some("n3")
    ));
    assert_eq!(c.total_running("web"), 3, "nothing stopped yet");
    // The replacement runs: now the old one goes.
    c.converge();
    assert_eq!(c.total_running("web"), 3);
    assert_eq!(c.running("web").get("n2"), None);
    assert!(!c.pass());
}

#[test]
fn a_replacement_with_nowhere_to_go_leaves_the_old_task_running() {
    let mut c = Cluster::new(&["n1"]);
    c.deploy(&[("web", replicated(1))]);
    c.converge();
    c.state.nodes.get_mut("n1").expect("n1").availability = Availability::Drain;
    c.converge();
    assert_eq!(
        c.running("web").get("n1"),
        Some(&1),
        "never below the running count"
    );
    let pending = c
        .state
        .tasks
        .values()
        .find(|t| t.node.is_none())
        .expect("a pending replacement");
    assert!(
        pending.status.message.contains("drain"),
        "{}",
        pending.status.message
    );
}

#[test]
fn a_task_whose_node_stops_meeting_its_constraints_moves() {
    let mut c = Cluster::new(&["n1", "n2"]);
    for n in ["n1", "n2"] {
        let labels = &mut c.state.nodes.get_mut(n).expect("node").labels;
        labels.insert("tier".into(), "db".into());
    }
    c.deploy(&[("db", constrained(2, "node.labels.tier == db"))]);
    c.converge();
    assert_eq!(c.total_running("db"), 2);
    c.state.nodes.get_mut("n1").expect("n1").labels.clear();
    c.converge();
    assert_eq!(c.running("db"), BTreeMap::from([("n2".to_string(), 2)]));
}

#[test]
fn a_global_service_runs_one_task_per_eligible_node_and_follows_them() {
    let mut c = Cluster::new(&["n1", "n2"]);
    c.deploy(&[("mon", global())]);
    c.converge();
    assert_eq!(
        c.running("mon"),
        BTreeMap::from([("n1".to_string(), 1), ("n2".to_string(), 1)])
    );
    let slot_of = |c: &Cluster, n: &str| {
        c.state
            .tasks
            .values()
            .find(|t| t.node.as_deref() == Some(n) && t.desired == DesiredState::Running)
            .map(|t| t.slot)
    };
    let n2_slot = slot_of(&c, "n2");

    // A node joins: it gets a task; the others keep theirs (same slot, same task).
    c.state.nodes.insert("n0".into(), node("n0"));
    c.converge();
    assert_eq!(c.running("mon").len(), 3);
    assert_eq!(slot_of(&c, "n2"), n2_slot);

    // Down: its task stays, nothing replaces it elsewhere.
    c.down.insert("n1".into());
    c.converge();
    assert_eq!(c.total_running("mon"), 3, "{:?}", c.running("mon"));
    c.down.clear();

    // Paused keeps its task; drained loses it.
    c.state.nodes.get_mut("n1").expect("n1").availability = Availability::Pause;
    c.converge();
    assert_eq!(c.running("mon").get("n1"), Some(&1));
    c.state.nodes.get_mut("n1").expect("n1").availability = Availability::Drain;
    c.converge();
    assert_eq!(c.running("mon").get("n1"), None);
    assert_eq!(c.total_running("mon"), 2);
    assert!(!c.pass());
}

#[test]
fn an_unplaceable_task_says_why_and_is_placed_once_a_node_fits() {
    let mut c = Cluster::new(&["n1", "n2"]);
    c.deploy(&[("gpu", constrained(1, "node.labels.gpu == yes"))]);
    c.converge();
    let t = c.state.tasks.values().next().expect("the task");
    assert_eq!(t.node, None);
    assert!(
        t.status.message.contains("2 nodes") && t.status.message.contains("node.labels.gpu"),
        "{}",
        t.status.message
    );
    assert!(!c.pass(), "an unchanged reason is not written again");
    c.state
        .nodes
        .get_mut("n2")
        .expect("n2")
        .labels
        .insert("gpu".into(), "yes".into());
    c.converge();
    assert_eq!(c.running("gpu"), BTreeMap::from([("n2".to_string(), 1)]));
    let t = c.state.tasks.values().next().expect("the task");
    assert!(t.status.message.is_empty(), "{}", t.status.message);
}

#[test]
fn a_node_that_joins_gets_tasks_moved_to_it_one_at_a_time_never_below_the_count() {
    let mut c = Cluster::new(&["n1", "n2"]);
    c.deploy(&[("web", replicated(6))]);
    c.converge();
    assert_eq!(
        c.running("web").values().copied().collect::<Vec<_>>(),
        [3, 3]
    );
    c.state.nodes.insert("n3".into(), node("n3"));
    // Step by step: at most one move of the service at a time, never fewer running.
    for _ in 0..40 {
        c.settle();
        let in_flight = c
            .state
            .tasks
            .values()
            .filter(|t| {
                t.desired == DesiredState::Running && t.status.state() != TaskState::Running
            })
            .count();
        assert!(in_flight <= 1, "one move at a time: {in_flight}");
        assert!(c.total_running("web") >= 6);
        let before = c.state.clone();
        c.agents();
        if c.state == before {
            break;
        }
    }
    assert_eq!(
        c.running("web").values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{:?}",
        c.running("web")
    );
    assert!(!c.pass());
}

#[test]
fn rebalancing_can_be_turned_off() {
    let mut c = Cluster::new(&["n1", "n2"]);
    c.state.cluster = Some(
        serde_json::from_value(serde_json::json!({
            "id": "c", "created_at": 0, "ca_cert": "", "ca_key": "", "worker_token": "",
            "manager_token": "", "next_raft_id": 2, "settings": {"no_rebalance": true},
        }))
        .expect("a cluster record"),
    );
    c.deploy(&[("web", replicated(4))]);
    c.converge();
    c.state.nodes.insert("n3".into(), node("n3"));
    c.converge();
    assert_eq!(c.running("web").get("n3"), None);
}

#[test]
fn a_global_service_gets_no_task_on_a_node_without_room_until_it_has_some() {
    const MIB: u64 = 1 << 20;
    let mut c = Cluster::new(&["n1", "n2"]);
    for (n, memory) in [("n1", 1024 * MIB), ("n2", 256 * MIB)] {
        c.state.nodes.get_mut(n).expect("node").capacity.memory = memory;
    }
    let mut mon = global();
    if let Some(d) = mon.deploy.as_mut() {
        d.resources = Some(Resources {
            reservations: Some(ResourceSet {
                memory: Some(512 * MIB),
                ..ResourceSet::default()
            }),
            ..Resources::default()
        });
    }
    c.deploy(&[("mon", mon)]);
    c.converge();
    assert_eq!(c.running("mon"), BTreeMap::from([("n1".to_string(), 1)]));
    // n2's task is made for it and waits there, saying why; nothing runs it.
    let pending = c
        .state
        .tasks
        .values()
        .find(|t| t.for_node.as_deref() == Some("n2"))
        .expect("n2's task");
    assert_eq!(pending.node, None);
    assert!(
        pending.status.message.contains("insufficient memory"),
        "{}",
        pending.status.message
    );
    assert!(!c.pass(), "a settled cluster stays settled");
    // Room on n2: its task is placed there.
    c.state.nodes.get_mut("n2").expect("n2").capacity.memory = 1024 * MIB;
    c.converge();
    assert_eq!(
        c.running("mon"),
        BTreeMap::from([("n1".to_string(), 1), ("n2".to_string(), 1)])
    );
    // The stack goes: the running tasks are removed, and nothing waits on a node.
    c.state.stacks.clear();
    c.converge();
    assert!(c.state.tasks.is_empty(), "{:#?}", c.state.tasks);
}

#[test]
fn a_task_no_node_took_goes_at_once_when_it_is_no_longer_wanted() {
    // Stopped (`stop`, or `down`'s stop waves, which wait for its tasks to end).
    let mut c = Cluster::new(&["n1"]);
    c.deploy(&[("db", constrained(1, "node.labels.tier == db"))]);
    c.converge();
    assert_eq!(c.state.tasks.len(), 1, "pending");
    if let Some(r) = c.state.stacks.get_mut("app") {
        r.stopped.push("db".into());
    }
    c.converge();
    assert!(c.state.tasks.is_empty(), "{:#?}", c.state.tasks);
    // Started again, then its stack removed.
    if let Some(r) = c.state.stacks.get_mut("app") {
        r.stopped.clear();
    }
    c.converge();
    assert_eq!(c.state.tasks.len(), 1, "pending again");
    c.state.stacks.clear();
    c.converge();
    assert!(c.state.tasks.is_empty(), "{:#?}", c.state.tasks);
}

//! The scheduler as tables of cases: nodes, stacks and tasks in, a placement plan out.
//! One test per filter, per ranking rule, for spread preferences, global services and
//! the pending reasons' words; then proptests for what must hold of every plan
//! (constraints, reservations and `max_replicas_per_node` respected, global services'
//! tasks included, spread within one, the same input giving the same plan).

use std::collections::{BTreeMap, BTreeSet};

use manager::scheduler::{apply, global_nodes, schedule, Input, Pending, Plan};
use manager::state::model::{Availability, Capacity, NodeRecord, Platform};
use pki::NodeRole;
use proptest::prelude::*;
use serde_json::json;
use spec::generic::Units;
use spec::model::{Service, Stack};
use spec::task::{DesiredState, StackRecord, Task, TaskState, TaskStatus};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A cluster as the scheduler sees it.
#[derive(Debug, Default, Clone)]
struct World {
    nodes: BTreeMap<String, NodeRecord>,
    ready: BTreeSet<String>,
    stacks: BTreeMap<String, StackRecord>,
    tasks: BTreeMap<String, Task>,
    images: BTreeMap<String, Platform>,
}

impl World {
    /// A ready, active worker with 4 CPUs and 8 GiB, linux/amd64.
    fn node(mut self, id: &str) -> Self {
        self.ready.insert(id.into());
        self.nodes.insert(
            id.into(),
            NodeRecord {
                id: id.into(),
                role: NodeRole::Worker,
                addr: String::new(),
                hostname: format!("host-{id}"),
                raft_id: 0,
                joined_at: 0,
                labels: BTreeMap::new(),
                availability: Availability::Active,
                platform: Platform {
                    os: "linux".into(),
                    arch: "amd64".into(),
                },
                capacity: Capacity {
                    millicpus: 4000,
                    memory: 8 * GIB,
                },
                generic_resources: Default::default(),
            },
        );
        self
    }

    fn with(mut self, id: &str, f: impl FnOnce(&mut NodeRecord)) -> Self {
        f(self.nodes.get_mut(id).expect("node defined"));
        self
    }

    fn not_ready(mut self, id: &str) -> Self {
        self.ready.remove(id);
        self
    }

    fn label(self, id: &str, key: &str, value: &str) -> Self {
        self.with(id, |n| {
            n.labels.insert(key.into(), value.into());
        })
    }

    /// A service of stack `app` (from its JSON form) with `replicas` unassigned tasks.
    fn service(self, name: &str, def: serde_json::Value, replicas: u32) -> Self {
        self.service_in("app", name, def, replicas)
    }

    fn service_in(
        mut self,
        stack: &str,
        name: &str,
        def: serde_json::Value,
        replicas: u32,
    ) -> Self {
        let mut def = def;
        def["image"] = json!("img");
        let service: Service = serde_json::from_value(def).expect("a service");
        let record = self
            .stacks
            .entry(stack.into())
            .or_insert_with(|| StackRecord::new(Stack::of_services(stack, BTreeMap::new())));
        record.stack.services.insert(name.into(), service);
        for slot in 1..=replicas {
            self = self.task(stack, name, slot, None, TaskState::New);
        }
        self
    }

    fn task(
        mut self,
        stack: &str,
        service: &str,
        slot: u32,
        node: Option<&str>,
        state: TaskState,
    ) -> Self {
        let id = Task::make_id(stack, service, slot, 1);
        self.tasks.insert(
            id.clone(),
            Task {
                id,
                stack: stack.into(),
                service: service.into(),
                slot,
                generation: 1,
                spec_hash: "h".into(),
                desired: DesiredState::Running,
                status: TaskStatus {
                    state: Some(state),
                    ..TaskStatus::default()
                },
                created_at: 0,
                restarts: 0,
                stop_grace_ms: None,
                deps_seen: BTreeMap::new(),
                node: node.map(Into::into),
                for_node: None,
                generic_resources: Default::default(),
            },
        );
        self
    }

    /// A global service of stack `app`: one unassigned task made for each of `nodes`,
    /// as the orchestrator makes them (slot i + 1 for node i).
    fn global(mut self, name: &str, def: serde_json::Value, nodes: &[&str]) -> Self {
        let mut def = def;
        def["deploy"]["mode"] = json!("global");
        self = self.service(name, def, 0);
        for (i, node) in nodes.iter().enumerate() {
            let slot = i as u32 + 1;
            self = self.task("app", name, slot, None, TaskState::New);
            let id = Task::make_id("app", name, slot, 1);
            self.tasks.get_mut(&id).expect("task").for_node = Some(node.to_string());
        }
        self
    }

    /// A running task of `service` already on `node` (slot numbers from 100 up).
    fn running(self, service: &str, slot: u32, node: &str) -> Self {
        self.task("app", service, 100 + slot, Some(node), TaskState::Running)
    }

    /// Records that task `id` holds named units of `kind`.
    fn with_units(mut self, id: &str, kind: &str, units: &[&str]) -> Self {
        let t = self.tasks.get_mut(id).expect("task defined");
        t.generic_resources.insert(kind.into(), strings(units));
        self
    }

    fn plan(&self) -> Plan {
        schedule(&Input {
            stacks: &self.stacks,
            tasks: &self.tasks,
            nodes: &self.nodes,
            ready: &self.ready,
            images: &self.images,
        })
    }
}

/// Where each of a service's unassigned tasks went, by slot: the node or "-".
fn placements(plan: &Plan, service: &str, replicas: u32) -> Vec<String> {
    (1..=replicas)
        .map(|slot| {
            let id = Task::make_id("app", service, slot, 1);
            plan.assignments
                .get(&id)
                .cloned()
                .unwrap_or_else(|| "-".into())
        })
        .collect()
}

/// How many of `service`'s unassigned tasks each node got.
fn per_node(plan: &Plan, service: &str) -> BTreeMap<String, usize> {
    let prefix = format!("app-{service}-");
    let mut counts = BTreeMap::new();
    for (task, node) in &plan.assignments {
        if task.starts_with(&prefix) {
            *counts.entry(node.clone()).or_default() += 1;
        }
    }
    counts
}

fn reason(plan: &Plan, task: &str) -> String {
    plan.pending
        .get(task)
        .unwrap_or_else(|| panic!("{task} is not pending: {plan:?}"))
        .to_string()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn only_ready_nodes_take_tasks() {
    let w = World::default()
        .node("a")
        .node("b")
        .not_ready("a")
        .service("web", json!({}), 2);
    assert_eq!(placements(&w.plan(), "web", 2), strings(&["b", "b"]));
    let w = w.not_ready("b");
    assert_eq!(
        reason(&w.plan(), "app-web-1.1"),
        "no suitable node (2 nodes: not ready)"
    );
}

#[test]
fn paused_and_drained_nodes_take_nothing_new() {
    let w = World::default()
        .node("a")
        .node("b")
        .node("c")
        .with("a", |n| n.availability = Availability::Pause)
        .with("b", |n| n.availability = Availability::Drain)
        .service("web", json!({}), 2);
    assert_eq!(placements(&w.plan(), "web", 2), strings(&["c", "c"]));
    let w = w.with("c", |n| n.availability = Availability::Pause);
    assert_eq!(
        reason(&w.plan(), "app-web-2.1"),
        "no suitable node (2 nodes: availability pause; 1 node: drained)"
    );
}

#[test]
fn the_image_platform_must_match_the_node_when_both_are_known() {
    let w = World::default()
        .node("amd")
        .node("arm")
        .node("unknown")
        .with("arm", |n| n.platform.arch = "aarch64".into())
        .with("unknown", |n| n.platform = Platform::default())
        // `platform:` names the image's platform; uname's aarch64 is arm64.
        .service("web", json!({"platform": "linux/arm64/v8"}), 2)
        // Without `platform:`, what is known of the image.
        .service("api", json!({}), 2);
    let mut w = w;
    w.images.insert(
        "img".into(),
        Platform {
            os: "linux".into(),
            arch: "x86_64".into(),
        },
    );
    let plan = w.plan();
    assert_eq!(placements(&plan, "web", 2), strings(&["arm", "unknown"]));
    assert_eq!(placements(&plan, "api", 2), strings(&["amd", "unknown"]));
    let w = w
        .with("unknown", |n| n.platform.arch = "riscv64".into())
        .with("amd", |n| n.platform.os = "freebsd".into());
    let plan = w.plan();
    assert_eq!(
        reason(&plan, "app-api-2.1"),
        "no suitable node (3 nodes: platform is not linux/amd64)"
    );
}

#[test]
fn constraints_select_nodes_on_every_key() {
    let w = World::default()
        .node("a")
        .node("b")
        .node("c")
        .with("a", |n| n.role = NodeRole::Manager)
        .label("a", "tier", "gpu")
        .label("b", "tier", "cpu")
        .with("c", |n| n.platform.arch = "arm64".into());
    // (constraint, the nodes that meet it)
    let cases: &[(&str, &[&str])] = &[
        ("node.id==b", &["b"]),
        ("node.id!=b", &["a", "c"]),
        ("node.hostname==host-c", &["c"]),
        ("node.hostname != host-c", &["a", "b"]),
        ("node.role==manager", &["a"]),
        ("node.role==worker", &["b", "c"]),
        ("node.role!=manager", &["b", "c"]),
        ("node.labels.tier==gpu", &["a"]),
        ("node.labels.tier==GPU", &["a"]),
        ("node.labels.tier!=gpu", &["b", "c"]),
        ("node.labels.zone==east", &[]),
        ("node.labels.zone!=east", &["a", "b", "c"]),
        ("node.platform.os==linux", &["a", "b", "c"]),
        ("node.platform.os!=linux", &[]),
        ("node.platform.arch==arm64", &["c"]),
        ("node.platform.arch!=arm64", &["a", "b"]),
        ("engine.labels.os==linux", &[]),
        ("engine.labels.os!=windows", &["a", "b", "c"]),
    ];
    for (constraint, want) in cases {
        let w = w.clone().service(
            "web",
            json!({"deploy": {"placement": {"constraints": [constraint]}}}),
            3,
        );
        let plan = w.plan();
        let mut got: Vec<String> = per_node(&plan, "web").into_keys().collect();
        got.sort();
        assert_eq!(got, strings(want), "{constraint}: {plan:?}");
        // global_nodes applies the same filter.
        let service = &w.stacks["app"].stack.services["web"];
        assert_eq!(
            global_nodes(service, &w.nodes, &w.images),
            strings(want),
            "{constraint}"
        );
    }
    // All constraints must hold.
    let w = w.service(
        "web",
        json!({"deploy": {"placement": {"constraints": ["node.role==worker", "node.labels.tier!=cpu"]}}}),
        2,
    );
    assert_eq!(placements(&w.plan(), "web", 2), strings(&["c", "c"]));
}

#[test]
fn reservations_are_never_over_committed_across_a_pass() {
    let w = World::default()
        .node("a")
        .node("b")
        .with("a", |n| n.capacity.memory = GIB)
        .with("b", |n| n.capacity.memory = 800 * MIB)
        // 288 MiB of b are already reserved by a running task.
        .service(
            "db",
            json!({"deploy": {"resources": {"reservations": {"memory": 512 * MIB}}}}),
            0,
        )
        .running("db", 1, "b")
        .service(
            "web",
            json!({"deploy": {"resources": {"reservations": {"memory": 400 * MIB}}}}),
            3,
        )
        .service(
            "zz",
            json!({"deploy": {"resources": {"reservations": {"memory": 250 * MIB}}}}),
            2,
        );
    let plan = w.plan();
    // web: a takes two (800 of 1024 MiB), b has 288 MiB left: one pending.
    assert_eq!(placements(&plan, "web", 3), strings(&["a", "a", "-"]));
    assert_eq!(
        reason(&plan, "app-web-3.1"),
        "no suitable node (2 nodes: insufficient memory: needs 400 MiB, at most 288 MiB free)"
    );
    // zz comes after web in the same pass and sees what web took: a has 224 MiB left,
    // b 288 MiB; one fits on b, the other nowhere.
    assert_eq!(placements(&plan, "zz", 2), strings(&["b", "-"]));
    assert_eq!(
        reason(&plan, "app-zz-2.1"),
        "no suitable node (2 nodes: insufficient memory: needs 250 MiB, at most 224 MiB free)"
    );
    // An ended task reserves nothing: with db failed, b has room for one web task.
    let w = w.task("app", "db", 101, Some("b"), TaskState::Failed);
    assert_eq!(placements(&w.plan(), "web", 3), strings(&["a", "b", "a"]));
}

#[test]
fn cpu_reservations_and_reservations_larger_than_any_node() {
    let w = World::default()
        .node("a")
        .node("b")
        .with("b", |n| n.capacity.millicpus = 2000)
        .service(
            "web",
            json!({"deploy": {"resources": {"reservations": {"cpus": 1.5}}}}),
            4,
        )
        .service(
            "big",
            json!({"deploy": {"resources": {"reservations": {"cpus": 8}}}}),
            1,
        )
        .service(
            "huge",
            json!({"deploy": {"resources": {"reservations": {"memory": 64 * GIB}}}}),
            1,
        );
    let plan = w.plan();
    // a: 4 CPUs take two, b: 2 CPUs one; the ranking puts the first two on a and b.
    assert_eq!(placements(&plan, "web", 4), strings(&["a", "b", "a", "-"]));
    assert_eq!(
        reason(&plan, "app-web-4.1"),
        "no suitable node (2 nodes: insufficient cpu: needs 1.5 CPUs, at most 1 CPU free)"
    );
    assert_eq!(
        reason(&plan, "app-big-1.1"),
        "no suitable node (2 nodes: insufficient cpu: needs 8 CPUs, more than any of them has (largest 4 CPUs))"
    );
    assert_eq!(
        reason(&plan, "app-huge-1.1"),
        "no suitable node (2 nodes: insufficient memory: needs 64 GiB, more than any of them has (largest 8 GiB))"
    );
    // A node that reported no capacity offers nothing to a task that reserves.
    let w = World::default()
        .node("a")
        .with("a", |n| n.capacity = Capacity::default())
        .service(
            "web",
            json!({"deploy": {"resources": {"reservations": {"cpus": 0.25}}}}),
            1,
        )
        .service("free", json!({}), 1);
    let plan = w.plan();
    assert_eq!(
        reason(&plan, "app-web-1.1"),
        "no suitable node (1 node: insufficient cpu: needs 0.25 CPUs, the node reported no capacity)"
    );
    assert_eq!(placements(&plan, "free", 1), strings(&["a"]));
}

#[test]
fn a_host_port_is_taken_once_per_node() {
    let host = |port: &str| json!({"ports": [{"target": 80, "published": port, "protocol": "tcp", "mode": "host"}]});
    let w = World::default()
        .node("a")
        .node("b")
        .node("c")
        // c already runs another service's task on host port 8080.
        .service("old", host("8080"), 0)
        .running("old", 1, "c")
        .service("web", host("8080"), 3)
        // Ingress ports and other protocols do not take a node's host port.
        .service(
            "mesh",
            json!({"ports": [{"target": 80, "published": "8080", "protocol": "tcp", "mode": "ingress"},
                             {"target": 53, "published": "8080", "protocol": "udp", "mode": "host"}]}),
            3,
        );
    let plan = w.plan();
    assert_eq!(placements(&plan, "web", 3), strings(&["a", "b", "-"]));
    assert_eq!(
        reason(&plan, "app-web-3.1"),
        "no suitable node (3 nodes: host port 8080/tcp already in use)"
    );
    assert_eq!(placements(&plan, "mesh", 3), strings(&["a", "b", "c"]));
    // A range needs one free port of it: two tasks per node.
    let w = World::default()
        .node("a")
        .service("web", host("8080-8081"), 3);
    let plan = w.plan();
    assert_eq!(placements(&plan, "web", 3), strings(&["a", "a", "-"]));
    assert_eq!(
        reason(&plan, "app-web-3.1"),
        "no suitable node (1 node: host port 8080-8081/tcp already in use)"
    );
}

#[test]
fn max_replicas_per_node_caps_each_node() {
    let w = World::default()
        .node("a")
        .node("b")
        .service(
            "web",
            json!({"deploy": {"placement": {"max_replicas_per_node": 2}}}),
            0,
        )
        .running("web", 1, "a")
        .service(
            "web",
            json!({"deploy": {"placement": {"max_replicas_per_node": 2}}}),
            4,
        );
    let plan = w.plan();
    // a already runs one: it takes one more, b two.
    assert_eq!(placements(&plan, "web", 4), strings(&["b", "a", "b", "-"]));
    assert_eq!(
        reason(&plan, "app-web-4.1"),
        "no suitable node (2 nodes: max_replicas_per_node (2) reached)"
    );
}

#[test]
fn ranking_prefers_fewest_of_the_service_then_fewest_overall_then_id() {
    // Fewest tasks of the service wins over fewest tasks overall.
    let w = World::default()
        .node("a")
        .node("b")
        .service("other", json!({}), 0)
        .running("other", 1, "b")
        .running("other", 2, "b")
        .running("other", 3, "b")
        .service("web", json!({}), 0)
        .running("web", 1, "a")
        .service("web", json!({}), 1);
    assert_eq!(placements(&w.plan(), "web", 1), strings(&["b"]));
    // Same number of the service: fewest overall.
    let w = World::default()
        .node("a")
        .node("b")
        .service("other", json!({}), 0)
        .running("other", 1, "a")
        .service("web", json!({}), 1);
    assert_eq!(placements(&w.plan(), "web", 1), strings(&["b"]));
    // A tie: the smaller id, then the counts move with every placement.
    let w = World::default()
        .node("b")
        .node("a")
        .node("c")
        .service("web", json!({}), 5);
    assert_eq!(
        placements(&w.plan(), "web", 5),
        strings(&["a", "b", "c", "a", "b"])
    );
    // Tasks of other services placed earlier in the pass count as overall tasks.
    let w = World::default()
        .node("a")
        .node("b")
        .service("aa", json!({}), 1)
        .service("bb", json!({}), 1);
    let plan = w.plan();
    assert_eq!(placements(&plan, "aa", 1), strings(&["a"]));
    assert_eq!(placements(&plan, "bb", 1), strings(&["b"]));
}

#[test]
fn spread_preferences_balance_over_label_values_first() {
    let w = World::default()
        .node("e1")
        .node("e2")
        .node("e3")
        .node("w1")
        .node("x1")
        .label("e1", "zone", "east")
        .label("e2", "zone", "east")
        .label("e3", "zone", "east")
        .label("w1", "zone", "west");
    // Without the preference: one task per node.
    let plain = w.clone().service("web", json!({}), 5);
    assert_eq!(per_node(&plain.plan(), "web").len(), 5);
    // With it: east, west and the unlabelled x1 (its own group) get two each.
    let spread = w.clone().service(
        "web",
        json!({"deploy": {"placement": {"preferences": [{"spread": "node.labels.zone"}]}}}),
        6,
    );
    let counts = per_node(&spread.plan(), "web");
    let east: usize = ["e1", "e2", "e3"]
        .iter()
        .map(|n| counts.get(*n).copied().unwrap_or(0))
        .sum();
    assert_eq!(east, 2, "{counts:?}");
    assert_eq!(counts.get("w1"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("x1"), Some(&2), "{counts:?}");
    // Tasks already running count in their value's group: west has two already.
    let spread = spread.running("web", 1, "w1").running("web", 2, "w1");
    let counts = per_node(&spread.plan(), "web");
    assert_eq!(counts.get("w1"), None, "{counts:?}");
    // Two levels: zone, then rack inside it.
    let racks = w
        .label("e1", "rack", "r1")
        .label("e2", "rack", "r1")
        .label("e3", "rack", "r2")
        .service(
            "web",
            json!({"deploy": {"placement": {"preferences": [{"spread": "node.labels.zone"}, {"spread": "node.labels.rack"}]}}}),
            6,
        );
    let counts = per_node(&racks.plan(), "web");
    // East's two: one per rack (r1 on e1, r2 on e3).
    assert_eq!(counts.get("e1"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("e2"), None, "{counts:?}");
    assert_eq!(counts.get("e3"), Some(&1), "{counts:?}");
}

#[test]
fn global_services_belong_on_every_eligible_node() {
    let w = World::default()
        .node("a")
        .node("b")
        .node("c")
        .node("d")
        .node("e")
        .not_ready("a")
        .with("b", |n| n.availability = Availability::Drain)
        .with("c", |n| n.availability = Availability::Pause)
        .label("e", "monitoring", "off")
        .service(
            "exporter",
            json!({"deploy": {"mode": "global", "placement": {"constraints": ["node.labels.monitoring!=off"]}}}),
            0,
        );
    let service = &w.stacks["app"].stack.services["exporter"];
    // A node that misses heartbeats keeps its slot; drained, paused and unmatched do not.
    assert_eq!(
        global_nodes(service, &w.nodes, &w.images),
        strings(&["a", "d"])
    );
}

#[test]
fn a_global_task_goes_on_its_own_node_only_once_its_reservations_fit() {
    let w = World::default()
        .node("a")
        .node("b")
        .node("c")
        .node("d")
        .with("b", |n| n.capacity.memory = 800 * MIB)
        .not_ready("c")
        .service(
            "db",
            json!({"deploy": {"resources": {"reservations": {"memory": 512 * MIB}}}}),
            0,
        )
        .running("db", 1, "b")
        .global(
            "mon",
            json!({"deploy": {"resources": {"reservations": {"memory": 512 * MIB}}}}),
            &["a", "b", "c", "gone"],
        );
    let plan = w.plan();
    // a has room: its task goes there, and nowhere else (d is empty, but not its node).
    assert_eq!(placements(&plan, "mon", 4), strings(&["a", "-", "-", "-"]));
    assert_eq!(
        reason(&plan, "app-mon-2.1"),
        "no suitable node (1 node: insufficient memory: needs 512 MiB, 288 MiB free of 800 MiB)"
    );
    assert_eq!(
        reason(&plan, "app-mon-3.1"),
        "no suitable node (1 node: not ready)"
    );
    assert_eq!(
        reason(&plan, "app-mon-4.1"),
        "its node gone is no longer in the cluster"
    );
    // Room made on b (its db task ended): the next pass places it.
    let mut w = w;
    w.tasks.get_mut("app-db-101.1").expect("db").status.state = Some(TaskState::Complete);
    assert_eq!(
        placements(&w.plan(), "mon", 4),
        strings(&["a", "b", "-", "-"])
    );
}

#[test]
fn global_tasks_take_their_nodes_before_other_services_and_never_over_commit() {
    // One node of 1 GiB: "api" (sorted first) would take it and leave the global task
    // without room; global tasks go first, as in Swarm.
    let w = World::default()
        .node("a")
        .with("a", |n| n.capacity.memory = GIB)
        .service(
            "api",
            json!({"deploy": {"resources": {"reservations": {"memory": 768 * MIB}}}}),
            1,
        )
        .global(
            "mon",
            json!({"deploy": {"resources": {"reservations": {"memory": 512 * MIB}}}}),
            &["a"],
        );
    let plan = w.plan();
    assert_eq!(placements(&plan, "mon", 1), strings(&["a"]));
    assert_eq!(
        reason(&plan, "app-api-1.1"),
        "no suitable node (1 node: insufficient memory: needs 768 MiB, 512 MiB free of 1 GiB)"
    );
    // Two global services on one node: the second waits for room.
    let w = World::default()
        .node("a")
        .with("a", |n| n.capacity.millicpus = 1000)
        .global(
            "log",
            json!({"deploy": {"resources": {"reservations": {"cpus": 0.75}}}}),
            &["a"],
        )
        .global(
            "mon",
            json!({"deploy": {"resources": {"reservations": {"cpus": 0.5}}}}),
            &["a"],
        );
    let plan = w.plan();
    assert_eq!(placements(&plan, "log", 1), strings(&["a"]));
    assert!(
        reason(&plan, "app-mon-1.1").contains("insufficient cpu"),
        "{plan:?}"
    );
}

#[test]
fn pending_reasons_count_nodes_per_filter_in_pipeline_order() {
    let w = World::default()
        .node("a")
        .node("b")
        .node("c")
        .node("d")
        .node("e")
        .label("c", "tier", "gpu")
        .with("c", |n| n.capacity.memory = 800 * MIB)
        .not_ready("d")
        .with("e", |n| n.platform.arch = "arm64".into())
        .service(
            "train",
            json!({"platform": "linux/amd64", "deploy": {
                "placement": {"constraints": ["node.labels.tier==gpu"]},
                "resources": {"reservations": {"memory": 512 * MIB}}}}),
            0,
        )
        .running("train", 1, "c")
        .service(
            "train",
            json!({"platform": "linux/amd64", "deploy": {
                "placement": {"constraints": ["node.labels.tier==gpu"]},
                "resources": {"reservations": {"memory": 512 * MIB}}}}),
            2,
        );
    let plan = w.plan();
    let want = "no suitable node (1 node: not ready; 1 node: platform is not linux/amd64; \
                2 nodes: constraint node.labels.tier == gpu not met; \
                1 node: insufficient memory: needs 512 MiB, 288 MiB free of 800 MiB)";
    assert_eq!(reason(&plan, "app-train-1.1"), want);
    assert_eq!(reason(&plan, "app-train-2.1"), want);
    // No nodes at all; a task whose service is gone.
    let mut w = World::default().service("web", json!({}), 1);
    assert_eq!(
        reason(&w.plan(), "app-web-1.1"),
        "no suitable node (the cluster has no nodes)"
    );
    w.stacks.clear();
    assert_eq!(
        w.plan().pending.get("app-web-1.1"),
        Some(&Pending::NoService)
    );
}

#[test]
fn only_unassigned_running_tasks_are_scheduled() {
    let mut w = World::default()
        .node("a")
        .service("web", json!({}), 3)
        .task("app", "web", 4, Some("a"), TaskState::Running)
        .task("app", "web", 5, None, TaskState::Failed);
    w.tasks.get_mut("app-web-3.1").expect("task").desired = DesiredState::Shutdown;
    let plan = w.plan();
    let ids: Vec<&String> = plan.assignments.keys().collect();
    assert_eq!(ids, ["app-web-1.1", "app-web-2.1"]);
    assert!(plan.pending.is_empty());
    // Applied, the next pass has nothing to do.
    apply(&mut w.tasks, &plan);
    assert_eq!(w.plan(), Plan::default());
}

// ---- properties ----

/// `reservations.generic_resources` of `kind`, `n` units.
fn generic(kind: &str, n: u64) -> serde_json::Value {
    json!({"deploy": {"resources": {"reservations": {"generic_resources": [
        {"discrete_resource_spec": {"kind": kind, "value": n}}
    ]}}}})
}

fn named(units: &[&str]) -> Units {
    Units::Named(strings(units))
}

#[test]
fn generic_resources_place_tasks_on_the_nodes_that_have_them() {
    let w = World::default()
        .node("a")
        .node("b")
        .node("c")
        .with("b", |n| {
            n.generic_resources.insert("SSD".into(), Units::Discrete(3));
        })
        .with("c", |n| {
            n.generic_resources
                .insert("NVIDIA-GPU".into(), named(&["GPU-1", "GPU-2"]));
        })
        .service("ssd", generic("SSD", 2), 2)
        .service("gpu", generic("NVIDIA-GPU", 1), 3);
    let plan = w.plan();
    // Only b has SSDs; after one task, 1 of its 3 is free.
    assert_eq!(placements(&plan, "ssd", 2), strings(&["b", "-"]));
    assert_eq!(
        reason(&plan, "app-ssd-2.1"),
        "no suitable node (3 nodes: insufficient generic resource SSD: needs 2, at most 1 free)"
    );
    // Discrete kinds give no units; named ones give each task its own.
    assert!(!plan.units.contains_key("app-ssd-1.1"));
    assert_eq!(placements(&plan, "gpu", 3), strings(&["c", "c", "-"]));
    assert_eq!(
        plan.units["app-gpu-1.1"],
        BTreeMap::from([("NVIDIA-GPU".to_string(), strings(&["GPU-1"]))])
    );
    assert_eq!(
        plan.units["app-gpu-2.1"],
        BTreeMap::from([("NVIDIA-GPU".to_string(), strings(&["GPU-2"]))])
    );
    assert_eq!(
        reason(&plan, "app-gpu-3.1"),
        "no suitable node (3 nodes: insufficient generic resource NVIDIA-GPU: needs 1, at most 0 free)"
    );
    // apply records the units on the task.
    let mut tasks = w.tasks.clone();
    apply(&mut tasks, &plan);
    assert_eq!(
        tasks["app-gpu-2.1"].generic_resources["NVIDIA-GPU"],
        strings(&["GPU-2"])
    );
}

#[test]
fn generic_resources_pending_reasons_name_the_kind_and_what_is_free() {
    let w = World::default()
        .node("b")
        .with("b", |n| {
            n.generic_resources.insert("SSD".into(), Units::Discrete(3));
        })
        .service("ssd", generic("SSD", 2), 0)
        .running("ssd", 1, "b")
        .service("more", generic("SSD", 2), 1)
        .service("gpu", generic("GPU", 1), 1)
        .service("many", generic("SSD", 4), 1);
    let plan = w.plan();
    assert_eq!(
        reason(&plan, "app-more-1.1"),
        "no suitable node (1 node: insufficient generic resource SSD: needs 2, 1 free of 3)"
    );
    assert_eq!(
        reason(&plan, "app-gpu-1.1"),
        "no suitable node (1 node: insufficient generic resource GPU: needs 1, the node has none)"
    );
    assert_eq!(
        reason(&plan, "app-many-1.1"),
        "no suitable node (1 node: insufficient generic resource SSD: needs 4, more than the node has (3))"
    );
}

#[test]
fn named_units_are_never_given_twice_and_free_again_when_their_task_ends() {
    let w = World::default()
        .node("c")
        .with("c", |n| {
            n.generic_resources
                .insert("GPU".into(), named(&["g1", "g2", "g3"]));
        })
        .service("gpu", generic("GPU", 1), 2)
        // A running task holds g2 (as its record says, whatever its service reserves
        // now); a task that has ended held g1, which is free again.
        .running("gpu", 1, "c")
        .task("app", "gpu", 102, Some("c"), TaskState::Complete)
        .with_units("app-gpu-101.1", "GPU", &["g2"])
        .with_units("app-gpu-102.1", "GPU", &["g1"]);
    let plan = w.plan();
    assert_eq!(placements(&plan, "gpu", 2), strings(&["c", "c"]));
    assert_eq!(plan.units["app-gpu-1.1"]["GPU"], strings(&["g1"]));
    assert_eq!(plan.units["app-gpu-2.1"]["GPU"], strings(&["g3"]));

    // A new pass sees what the last one recorded: no unit is left for a third task.
    let mut w = w.service("gpu2", generic("GPU", 1), 1);
    apply(&mut w.tasks, &plan);
    let plan = w.plan();
    assert_eq!(
        reason(&plan, "app-gpu2-1.1"),
        "no suitable node (1 node: insufficient generic resource GPU: needs 1, 0 free of 3)"
    );
}

/// A random cluster: nodes with a tier label (or none), some capacity, maybe paused or
/// not ready; services with a constraint on the tier, reservations, a cap per node.
fn world() -> impl Strategy<Value = World> {
    let node = (0..3u8, 0..5u64, 0..9u64, any::<bool>(), any::<bool>());
    let service = (0..5u8, 0..3u64, 0..4u64, 0..3u32, 0..25u32, any::<bool>());
    (
        prop::collection::vec(node, 0..10),
        prop::collection::vec(service, 1..5),
    )
        .prop_map(|(nodes, services)| {
            let mut w = World::default();
            for (i, (tier, cpus, mem, active, ready)) in nodes.into_iter().enumerate() {
                let id = format!("n{i}");
                w = w.node(&id).with(&id, |n| {
                    n.capacity = Capacity {
                        millicpus: cpus * 500,
                        memory: mem * 256 * MIB,
                    };
                    if tier > 0 {
                        n.labels.insert("tier".into(), format!("t{tier}"));
                    }
                    if !active {
                        n.availability = Availability::Pause;
                    }
                });
                if !ready {
                    w = w.not_ready(&id);
                }
            }
            let ids: Vec<String> = w.nodes.keys().cloned().collect();
            for (i, (constraint, cpus, mem, max, replicas, global)) in services.into_iter().enumerate() {
                let constraints: Vec<String> = match constraint {
                    0 | 1 => vec![],
                    2 => vec!["node.labels.tier==t1".into()],
                    3 => vec!["node.labels.tier!=t1".into()],
                    _ => vec!["node.labels.tier==t2".into()],
                };
                let def = json!({"deploy": {
                    "placement": {"constraints": constraints, "max_replicas_per_node": max},
                    "resources": {"reservations": {"cpus": cpus as f64 * 0.25, "memory": mem * 128 * MIB}}}});
                w = if global {
                    // A task for every node, as if each belonged (the scheduler checks
                    // the constraints again).
                    let on: Vec<&str> = ids.iter().map(String::as_str).collect();
                    w.global(&format!("s{i}"), def, &on)
                } else {
                    w.service(&format!("s{i}"), def, replicas)
                };
            }
            w
        })
}

fn service_of<'a>(w: &'a World, task: &str) -> &'a Service {
    let t = &w.tasks[task];
    &w.stacks[&t.stack].stack.services[&t.service]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_plan_respects_constraints_reservations_and_caps(w in world()) {
        let plan = w.plan();
        // Every unassigned task is decided, once.
        for (id, t) in &w.tasks {
            let decided = plan.assignments.contains_key(id) as u8 + plan.pending.contains_key(id) as u8;
            prop_assert_eq!(decided, u8::from(t.node.is_none()), "{}", id);
        }
        let mut cpu: BTreeMap<&str, u64> = BTreeMap::new();
        let mut mem: BTreeMap<&str, u64> = BTreeMap::new();
        let mut per: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        for (task, node) in &plan.assignments {
            let record = &w.nodes[node];
            let service = service_of(&w, task);
            let deploy = service.deploy.as_ref().expect("deploy");
            let placement = deploy.placement.as_ref().expect("placement");
            for c in &placement.constraints {
                let label = record.labels.get("tier").map(String::as_str);
                prop_assert!(c.matches(label), "{} on {} breaks {}", task, node, c);
            }
            prop_assert!(w.ready.contains(node) && record.availability == Availability::Active);
            if let Some(own) = &w.tasks[task].for_node {
                prop_assert_eq!(own, node, "a global task goes on its own node only");
            }
            let r = deploy.resources.as_ref().and_then(|r| r.reservations.as_ref()).expect("reservations");
            *cpu.entry(node).or_default() += (r.cpus.unwrap_or(0.0) * 1000.0).round() as u64;
            *mem.entry(node).or_default() += r.memory.unwrap_or(0);
            let count = per.entry((node, w.tasks[task].service.as_str())).or_default();
            *count += 1;
            if let Some(max) = placement.max_replicas_per_node.filter(|m| *m > 0) {
                prop_assert!(*count <= max, "{} tasks of {} on {}", count, task, node);
            }
        }
        for (node, used) in cpu {
            prop_assert!(used <= w.nodes[node].capacity.millicpus, "cpu over-committed on {}", node);
        }
        for (node, used) in mem {
            prop_assert!(used <= w.nodes[node].capacity.memory, "memory over-committed on {}", node);
        }
        // The same input gives the same plan; applied, nothing more is placed that was
        // not pending before.
        prop_assert_eq!(&w.plan(), &plan);
        let mut after = w.clone();
        apply(&mut after.tasks, &plan);
        let again = after.plan();
        prop_assert!(again.assignments.is_empty(), "{:?}", again.assignments);
        prop_assert_eq!(again.pending.keys().collect::<Vec<_>>(), plan.pending.keys().collect::<Vec<_>>());
    }

    #[test]
    fn without_constraints_the_spread_over_nodes_is_within_one(
        nodes in 1..12usize,
        replicas in prop::collection::vec(0..40u32, 1..5),
    ) {
        let mut w = World::default();
        for i in 0..nodes {
            w = w.node(&format!("n{i:02}"));
        }
        for (i, r) in replicas.iter().enumerate() {
            w = w.service(&format!("s{i}"), json!({}), *r);
        }
        let plan = w.plan();
        prop_assert!(plan.pending.is_empty());
        let mut total: BTreeMap<String, usize> = BTreeMap::new();
        for (i, wanted) in replicas.iter().enumerate() {
            let counts = per_node(&plan, &format!("s{i}"));
            let placed: usize = counts.values().sum();
            prop_assert_eq!(placed, *wanted as usize);
            let max = counts.values().max().copied().unwrap_or(0);
            let min = if counts.len() < nodes { 0 } else { counts.values().min().copied().unwrap_or(0) };
            prop_assert!(max - min <= 1, "s{}: {:?}", i, counts);
            for (n, c) in counts {
                *total.entry(n).or_default() += c;
            }
        }
        // And over all services together.
        let max = total.values().max().copied().unwrap_or(0);
        let min = if total.len() < nodes { 0 } else { total.values().min().copied().unwrap_or(0) };
        prop_assert!(max - min <= 1, "all: {:?}", total);
    }
}

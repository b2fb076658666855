//! Times the scheduler alone, in process: one pass that places every task of a cluster
//! whose tasks are all unassigned (the worst case: a whole cluster's `up` at once).
//! Building the input is not timed; the pass is, several times, and the best and the
//! median are printed with the cost per task. Figures and the comparison with
//! swarmkit's are in `bench/scheduler.md`.
//!
//! `cargo run --release -p manager --example scheduler_bench [RUNS]`

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use manager::scheduler::{schedule, Input};
use manager::state::model::{Availability, Capacity, NodeRecord, Platform};
use pki::NodeRole;
use spec::model::{Deploy, Placement, Preference, ResourceSet, Resources, Service, Stack};
use spec::task::{DesiredState, StackRecord, Task, TaskStatus};

/// One shape of cluster.
struct Shape {
    name: &'static str,
    nodes: usize,
    services: usize,
    replicas: u32,
    /// Half the services constrained to the half of the nodes labelled `tier=a`.
    constraints: bool,
    /// Every service spread over 10 zones.
    spread: bool,
}

fn main() -> anyhow::Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 5,
    };
    let shapes = [
        Shape {
            name: "10,000 tasks (1 service), 1,000 nodes",
            nodes: 1_000,
            services: 1,
            replicas: 10_000,
            constraints: false,
            spread: false,
        },
        Shape {
            name: "100,000 tasks (1 service), 1,000 nodes",
            nodes: 1_000,
            services: 1,
            replicas: 100_000,
            constraints: false,
            spread: false,
        },
        Shape {
            name: "100,000 tasks (1 service), 100,000 nodes",
            nodes: 100_000,
            services: 1,
            replicas: 100_000,
            constraints: false,
            spread: false,
        },
        Shape {
            name: "100,000 tasks (1,000 services x 100), 1,000 nodes",
            nodes: 1_000,
            services: 1_000,
            replicas: 100,
            constraints: false,
            spread: false,
        },
        Shape {
            name: "100,000 tasks (100 services x 1,000), 1,000 nodes",
            nodes: 1_000,
            services: 100,
            replicas: 1_000,
            constraints: false,
            spread: false,
        },
        Shape {
            name: "100,000 tasks (1,000 x 100), 1,000 nodes, constraints + spread",
            nodes: 1_000,
            services: 1_000,
            replicas: 100,
            constraints: true,
            spread: true,
        },
        Shape {
            name: "100,000 tasks (10,000 services x 10), 1,000 nodes",
            nodes: 1_000,
            services: 10_000,
            replicas: 10,
            constraints: false,
            spread: false,
        },
    ];
    println!("{runs} runs each; best and median of one scheduling pass");
    for shape in &shapes {
        let (stacks, tasks, nodes, ready) = build(shape);
        let images = BTreeMap::new();
        let input = Input {
            stacks: &stacks,
            tasks: &tasks,
            nodes: &nodes,
            ready: &ready,
            images: &images,
        };
        let mut times: Vec<Duration> = Vec::new();
        let mut placed = 0;
        for _ in 0..runs {
            let start = Instant::now();
            let plan = schedule(&input);
            times.push(start.elapsed());
            placed = plan.assignments.len();
            anyhow::ensure!(
                plan.pending.is_empty(),
                "{}: {} pending",
                shape.name,
                plan.pending.len()
            );
        }
        times.sort();
        let best = times[0];
        let median = times[times.len() / 2];
        let per_task = |d: Duration| d.as_nanos() / placed.max(1) as u128;
        println!(
            "{:<64} best {:>7.1} ms ({:>5} ns/task), median {:>7.1} ms ({:>5} ns/task)",
            shape.name,
            best.as_secs_f64() * 1e3,
            per_task(best),
            median.as_secs_f64() * 1e3,
            per_task(median),
        );
    }
    Ok(())
}

type Built = (
    BTreeMap<String, StackRecord>,
    BTreeMap<String, Task>,
    BTreeMap<String, NodeRecord>,
    BTreeSet<String>,
);

fn build(shape: &Shape) -> Built {
    let mut nodes = BTreeMap::new();
    let mut ready = BTreeSet::new();
    for i in 0..shape.nodes {
        let id = format!("node-{i:05}");
        let mut labels = BTreeMap::new();
        labels.insert("zone".to_string(), format!("z{}", i % 10));
        labels.insert(
            "tier".to_string(),
            if i % 2 == 0 { "a" } else { "b" }.to_string(),
        );
        nodes.insert(
            id.clone(),
            NodeRecord {
                id: id.clone(),
                role: NodeRole::Worker,
                addr: String::new(),
                hostname: format!("host-{i}"),
                raft_id: 0,
                joined_at: 0,
                labels,
                availability: Availability::Active,
                platform: Platform {
                    os: "linux".into(),
                    arch: "amd64".into(),
                },
                capacity: Capacity {
                    millicpus: 64_000,
                    memory: 256 << 30,
                },
                generic_resources: Default::default(),
            },
        );
        ready.insert(id);
    }
    let mut services = BTreeMap::new();
    let mut tasks = BTreeMap::new();
    for s in 0..shape.services {
        let name = format!("svc-{s:05}");
        let constraints = if shape.constraints && s % 2 == 0 {
            vec!["node.labels.tier==a"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"))]
        } else {
            vec![]
        };
        let preferences = if shape.spread {
            vec![Preference {
                spread: "node.labels.zone".into(),
            }]
        } else {
            vec![]
        };
        let service = Service {
            image: Some("img".into()),
            deploy: Some(Deploy {
                replicas: Some(shape.replicas),
                resources: Some(Resources {
                    limits: None,
                    reservations: Some(ResourceSet {
                        cpus: Some(0.1),
                        memory: Some(64 << 20),
                        ..ResourceSet::default()
                    }),
                }),
                placement: Some(Placement {
                    constraints,
                    preferences,
                    max_replicas_per_node: None,
                }),
                ..Deploy::default()
            }),
            ..Service::default()
        };
        services.insert(name.clone(), service);
        for slot in 1..=shape.replicas {
            let id = Task::make_id("bench", &name, slot, 1);
            tasks.insert(
                id.clone(),
                Task {
                    id,
                    stack: "bench".into(),
                    service: name.clone(),
                    slot,
                    generation: 1,
                    spec_hash: String::new(),
                    desired: DesiredState::Running,
                    status: TaskStatus::default(),
                    created_at: 0,
                    restarts: 0,
                    stop_grace_ms: None,
                    deps_seen: BTreeMap::new(),
                    node: None,
                    for_node: None,
                    generic_resources: Default::default(),
                },
            );
        }
    }
    let record = StackRecord::new(Stack::of_services("bench", services));
    let stacks = BTreeMap::from([("bench".to_string(), record)]);
    (stacks, tasks, nodes, ready)
}

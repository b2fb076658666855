//! The scheduler: which node runs each task that has none. A plain function (DESIGN
//! invariant 2), [`schedule`]: `(stacks, tasks, nodes, readiness, image platforms) ->
//! Plan`, no store, no clock, no I/O. The plan says, for every unassigned task (desired
//! `running`, no `node`, not ended), either the node to put it on or why it stays
//! pending. The leader runs it in its pass, after the orchestrator
//! (`crate::orchestrator::run::place`).
//!
//! The pipeline, after swarmkit's `manager/scheduler`:
//!
//! 1. **What is where.** Every node (in id order) gets counters from the tasks already
//!    on it that may still be running (any task with that `node` whose state has not
//!    ended, whatever its desired state: a task being stopped still holds its ports and
//!    memory): its number of tasks, its reserved CPU and memory, its host ports.
//! 2. **Per service.** Unassigned tasks are grouped by service (stack, service), groups
//!    in name order, tasks in slot order. A group's tasks need the same
//!    ([`filters::Needs`]), so the filters run once per service, not once per task.
//! 3. **Static filters** (the node's record only), each a small function with its own
//!    [`Rejection`]: ready (the caller's view of heartbeats, which stay out of Raft),
//!    availability `active`, platform (the image's os/arch against the node's, when both
//!    are known), placement constraints (`spec::constraint`, checked at load time).
//! 4. **Ranking** of the nodes that pass ([`rank`]): fewest tasks of the service, then
//!    fewest tasks overall, then node id; `placement.preferences` spreads balance over a
//!    label's values first. Deterministic: the same input gives the same plan.
//! 5. **Dynamic filters** on the best-ranked node: reservations (cpus, memory,
//!    `generic_resources` by kind) against its capacity minus what its tasks reserve,
//!    its host-mode published ports,
//!    `max_replicas_per_node`. A node that fails is out for the rest of the service's
//!    group (a pass only adds to a node); one that passes takes the task, and its
//!    counters move, so a pass never over-commits a node and the next task (of this
//!    service or a later one) sees it.
//! 6. **Pending.** When no candidate is left, the task and the rest of its group are
//!    pending with every node's rejection counted by reason ([`Pending`]): `no suitable
//!    node (2 nodes: constraint node.labels.tier == gpu not met; 1 node: insufficient
//!    memory: needs 512 MiB, 288 MiB free of 800 MiB)`.
//!
//! Cost: O(nodes x services) for the static filters plus O((tasks + nodes) log nodes)
//! for placing; never tasks x nodes (`bench/scheduler.md` has the figures).
//!
//! Decisions:
//! - Readiness is an input, not a `NodeRecord` field: heartbeats live in the leader's
//!   memory (DESIGN), so the caller says which nodes are ready.
//! - Capacity is in millicores and bytes (integers: exact sums, `Eq` records). A node
//!   that reported none (zero) offers nothing to a task that reserves.
//! - A task counts against its node with its service's *current* reservations (the
//!   task does not carry its own); a task whose service is gone counts as a task but
//!   reserves nothing.
//! - A task on a node the store no longer has is neither counted nor placed again:
//!   replacing it is the node-loss logic's (the orchestrator's, `orchestrator::Nodes`).
//! - A named generic resource kind gives each new task the first free units of the
//!   node's list ([`Plan::units`], recorded on the task by the caller): a task's own
//!   record, not its service, says which units it holds, so a new leader counts them
//!   taken; a discrete kind is counted with the service's current reservation.
//! - A published port range needs one free port of the range; which one the node took
//!   is not recorded, so the lowest free one stands for it.
//! - A global service's tasks are made for their node by the orchestrator (one slot per
//!   node [`global_nodes`] lists, the node in `Task::for_node`). The scheduler places
//!   each on that node only, before any other task (Swarm's order), once the node
//!   passes every filter: a node without its reservations free gets no task of the
//!   service (it stays pending with the reason), and never an over-committed one.

mod explain;
mod filters;
mod rank;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use spec::model::Service;
use spec::task::{DesiredState, StackRecord, Task};

pub use explain::{Pending, Rejected};
pub use filters::Rejection;

use crate::state::model::{NodeRecord, Platform};
use filters::{Needs, NodeState};
use rank::Tree;

/// What the scheduler reads: the store's stacks, tasks and nodes, and what the caller
/// knows beyond the store.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub stacks: &'a BTreeMap<String, StackRecord>,
    pub tasks: &'a BTreeMap<String, Task>,
    pub nodes: &'a BTreeMap<String, NodeRecord>,
    /// The ids of the nodes whose heartbeats are current (the leader's memory).
    pub ready: &'a BTreeSet<String>,
    /// What is known of images' platforms (image reference -> os/arch); an image not
    /// listed, and a service with no `platform:`, has an unknown platform.
    pub images: &'a BTreeMap<String, Platform>,
}

/// The scheduler's decisions for one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Task id -> the node id to run it.
    pub assignments: BTreeMap<String, String>,
    /// Task id -> why no node takes it now.
    pub pending: BTreeMap<String, Pending>,
    /// Task id (of `assignments`) -> the named generic resource units it is given on
    /// its node, by kind; only tasks given some are listed.
    pub units: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// A task the scheduler places: wanted running, on no node, not ended.
pub fn is_unassigned(t: &Task) -> bool {
    t.node.is_none() && t.desired == DesiredState::Running && !t.status.state().is_terminal()
}

/// The plan for every unassigned task of `input`. Pure and deterministic.
pub fn schedule(input: &Input<'_>) -> Plan {
    let mut plan = Plan::default();
    let mut nodes: Vec<NodeState<'_>> = input
        .nodes
        .values()
        .map(|r| NodeState::new(r, input.ready.contains(&r.id)))
        .collect();
    let index: HashMap<&str, usize> = input
        .nodes
        .keys()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();

    // 1. What is where, and 2. the unassigned tasks by service.
    let mut needs: HashMap<(&str, &str), Option<Needs<'_>>> = HashMap::new();
    let mut placed: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    let mut groups: BTreeMap<(&str, &str), Vec<&Task>> = BTreeMap::new();
    let mut global: BTreeMap<(&str, &str), Vec<&Task>> = BTreeMap::new();
    for t in input.tasks.values() {
        let group = (t.stack.as_str(), t.service.as_str());
        if is_unassigned(t) {
            let into = if t.for_node.is_some() {
                &mut global
            } else {
                &mut groups
            };
            into.entry(group).or_default().push(t);
            continue;
        }
        let on = t.node.as_deref().and_then(|n| index.get(n).copied());
        let (Some(i), false) = (on, t.status.state().is_terminal()) else {
            continue;
        };
        let need = needs
            .entry(group)
            .or_insert_with(|| service_of(input.stacks, t).map(|s| Needs::of(s, input.images)));
        match need {
            Some(need) => nodes[i].take_existing(need, &t.generic_resources),
            None => nodes[i].take_existing(&Needs::default(), &t.generic_resources),
        }
        placed.entry(group).or_default().push(i);
    }

    // Global tasks first: each has one node it may go on, the others a choice.
    for (group, tasks) in global {
        let Some(service) = service_of(input.stacks, tasks[0]) else {
            for t in tasks {
                plan.pending.insert(t.id.clone(), Pending::NoService);
            }
            continue;
        };
        let need = Needs::of(service, input.images);
        let on_nodes = placed.get(&group).map(Vec::as_slice).unwrap_or_default();
        for t in tasks {
            match place_on_its_node(&mut nodes, &index, &need, on_nodes, t) {
                Ok((node, units)) => {
                    plan.assignments.insert(t.id.clone(), node);
                    if !units.is_empty() {
                        plan.units.insert(t.id.clone(), units);
                    }
                }
                Err(why) => {
                    plan.pending.insert(t.id.clone(), why);
                }
            }
        }
    }
    for (group, mut tasks) in groups {
        tasks.sort_by(|a, b| (a.slot, a.generation, &a.id).cmp(&(b.slot, b.generation, &b.id)));
        let Some(service) = service_of(input.stacks, tasks[0]) else {
            for t in tasks {
                plan.pending.insert(t.id.clone(), Pending::NoService);
            }
            continue;
        };
        let need = Needs::of(service, input.images);
        let on_nodes = placed.get(&group).map(Vec::as_slice).unwrap_or_default();
        place_group(&mut plan, &mut nodes, &need, on_nodes, &tasks);
    }
    plan
}

/// Places one service's unassigned `tasks`; `on_nodes` lists the node of each of the
/// service's tasks already placed (one entry per task).
fn place_group<'a>(
    plan: &mut Plan,
    nodes: &mut [NodeState<'a>],
    need: &Needs<'_>,
    on_nodes: &[usize],
    tasks: &[&Task],
) {
    let mut service_tasks = vec![0u32; nodes.len()];
    for &i in on_nodes {
        service_tasks[i] += 1;
    }
    let mut tally = explain::Tally::default();
    let mut tree = Tree::default();
    // Each candidate's label values, one per spread preference (none without any: most
    // services have no preference, and a pass may build thousands of rankings).
    let mut paths: Vec<Vec<&'a str>> = if need.spread.is_empty() {
        Vec::new()
    } else {
        vec![Vec::new(); nodes.len()]
    };
    for (i, node) in nodes.iter().enumerate() {
        match filters::static_check(need, node) {
            Err(why) => tally.add(why),
            Ok(()) if paths.is_empty() => tree.insert(&[], (service_tasks[i], node.tasks, i)),
            Ok(()) => {
                let record: &'a NodeRecord = node.record;
                paths[i] = need
                    .spread
                    .iter()
                    .map(|label| {
                        label
                            .and_then(|l| record.labels.get(l))
                            .map_or("", String::as_str)
                    })
                    .collect();
                tree.insert(&paths[i], (service_tasks[i], node.tasks, i));
            }
        }
    }
    for (n, task) in tasks.iter().enumerate() {
        let node = loop {
            let Some(key) = tree.best() else {
                break None;
            };
            let i = key.2;
            match filters::dynamic_check(need, &nodes[i], key.0) {
                Err(why) => {
                    tally.add(why);
                    tree.remove_best(path(&paths, i));
                }
                Ok(()) => {
                    let units = nodes[i].take_new(need);
                    tree.placed(path(&paths, i), (key.0 + 1, nodes[i].tasks, i));
                    break Some((i, units));
                }
            }
        };
        match node {
            Some((i, units)) => {
                plan.assignments
                    .insert(task.id.clone(), nodes[i].record.id.clone());
                if !units.is_empty() {
                    plan.units.insert(task.id.clone(), units);
                }
            }
            None => {
                let why = tally.pending();
                for t in &tasks[n..] {
                    plan.pending.insert(t.id.clone(), why.clone());
                }
                return;
            }
        }
    }
}

/// Places a global service's task on the node it is made for (`Task::for_node`) if
/// that node passes every filter, and counts it there; else why not. `on_nodes` lists
/// the node of each of the service's tasks already placed.
fn place_on_its_node(
    nodes: &mut [NodeState<'_>],
    index: &HashMap<&str, usize>,
    need: &Needs<'_>,
    on_nodes: &[usize],
    task: &Task,
) -> Result<(String, BTreeMap<String, Vec<String>>), Pending> {
    let id = task.for_node.as_deref().unwrap_or_default();
    let Some(&i) = index.get(id) else {
        return Err(Pending::NodeGone(id.to_string()));
    };
    let service_tasks = on_nodes.iter().filter(|&&n| n == i).count() as u32;
    filters::static_check(need, &nodes[i])
        .and_then(|()| filters::dynamic_check(need, &nodes[i], service_tasks))
        .map_err(|why| Pending::NoSuitableNode(vec![Rejected { nodes: 1, why }]))?;
    let units = nodes[i].take_new(need);
    Ok((nodes[i].record.id.clone(), units))
}

/// A candidate's place in the ranking tree (the root without spread preferences).
fn path<'p, 'a>(paths: &'p [Vec<&'a str>], i: usize) -> &'p [&'a str] {
    paths.get(i).map_or(&[], Vec::as_slice)
}

/// The service a task was made from, found as the orchestrator finds it: the stack's
/// services, then its orphans, then its one-off runs.
fn service_of<'a>(stacks: &'a BTreeMap<String, StackRecord>, t: &Task) -> Option<&'a Service> {
    let record = stacks.get(&t.stack)?;
    record
        .stack
        .services
        .get(&t.service)
        .or_else(|| record.orphans.get(&t.service))
        .or_else(|| record.oneoffs.get(&t.service))
}

/// The nodes a `deploy.mode: global` service belongs on, in id order: those active and
/// of a matching platform that meet its constraints. Readiness and reservations are not
/// asked: a node that misses heartbeats keeps its slot (its task is the node-loss
/// logic's), and whether a node has room is the scheduler's to check when the task is
/// placed.
///
/// How the orchestrator uses it (`orchestrator::nodes`): one slot per node listed, its
/// task made for that node (`for_node`), which [`schedule`] gives it once the node has
/// room for the service's reservations (until then it is pending); a task on a node no
/// longer listed is removed (drained, constraints no longer met), except on a paused
/// node, which keeps what it runs and gets nothing new (Swarm's rule); a node that
/// joins, or starts meeting the constraints, gets its slot on the next pass.
pub fn global_nodes(
    service: &Service,
    nodes: &BTreeMap<String, NodeRecord>,
    images: &BTreeMap<String, Platform>,
) -> Vec<String> {
    let need = Needs::of(service, images);
    nodes
        .values()
        .map(|r| NodeState::new(r, true))
        .filter(|n| {
            filters::availability(n).is_ok()
                && filters::platform(&need, n).is_ok()
                && filters::constraints(&need, n).is_ok()
        })
        .map(|n| n.record.id.clone())
        .collect()
}

/// Whether `node` still suits a task of `service` it runs: its platform and the
/// service's constraints. A task whose node stops fitting (its labels changed) is moved
/// by the orchestrator. Availability is not asked: a paused node keeps its tasks, and a
/// drained one is the orchestrator's own case.
pub fn still_fits(
    service: &Service,
    node: &NodeRecord,
    images: &BTreeMap<String, Platform>,
) -> bool {
    let need = Needs::of(service, images);
    let n = NodeState::new(node, true);
    filters::platform(&need, &n).is_ok() && filters::constraints(&need, &n).is_ok()
}

/// What each node runs, as the scheduler counts it: its tasks that may still run and
/// the CPU and memory they reserve (`berth node ls`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub tasks: u32,
    pub millicpus: u64,
    pub memory: u64,
}

/// [`Usage`] per node id, counted as a scheduling pass counts it.
pub fn usage(
    stacks: &BTreeMap<String, StackRecord>,
    tasks: &BTreeMap<String, Task>,
) -> BTreeMap<String, Usage> {
    let mut out: BTreeMap<String, Usage> = BTreeMap::new();
    let none = BTreeMap::new();
    for t in tasks.values() {
        let Some(node) = &t.node else { continue };
        if t.status.state().is_terminal() {
            continue;
        }
        let u = out.entry(node.clone()).or_default();
        u.tasks += 1;
        if let Some(service) = service_of(stacks, t) {
            let need = Needs::of(service, &none);
            u.millicpus = u.millicpus.saturating_add(need.millicpus);
            u.memory = u.memory.saturating_add(need.memory);
        }
    }
    out
}

/// Applies a plan's assignments to the tasks (for the loop that will run the
/// scheduler, and for tests): each assigned task gets its `node`.
pub fn apply(tasks: &mut BTreeMap<String, Task>, plan: &Plan) {
    for (task, node) in &plan.assignments {
        if let Some(t) = tasks.get_mut(task) {
            t.node = Some(node.clone());
            t.generic_resources = plan.units.get(task).cloned().unwrap_or_default();
        }
    }
}

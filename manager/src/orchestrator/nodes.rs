//! What a cluster's nodes mean for the orchestrator ([`super::Nodes`]), worked out from
//! the store's state and the nodes found down. Pure: the loop (`run`) gives it the
//! state inside its transaction and the leader's liveness view.

use std::collections::{BTreeMap, BTreeSet};

use spec::model::DeployMode;
use spec::task::{DesiredState, Task, TaskState};

use super::Nodes;
use crate::scheduler::{self, still_fits};
use crate::state::model::{Availability, Platform, State};

/// The orchestrator's view of `state`'s nodes, given the ids of those whose
/// heartbeats stopped (`down`). Nodes the tasks name that the store no longer has
/// (removed with `node rm`) are down too: what ran there is replaced.
pub fn nodes(state: &State, down: BTreeSet<String>, images: &BTreeMap<String, Platform>) -> Nodes {
    let mut down = down;
    for t in state.tasks.values() {
        if let Some(n) = &t.node {
            if !state.nodes.contains_key(n) {
                down.insert(n.clone());
            }
        }
    }
    let mut moving = BTreeSet::new();
    // Paused nodes that run a live task of each service: they keep a global task.
    let mut paused_with: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for t in state.tasks.values() {
        let Some(node) = t.node.as_ref().and_then(|n| state.nodes.get(n)) else {
            continue;
        };
        if t.desired == DesiredState::Running && node.availability == Availability::Pause {
            paused_with
                .entry((&t.stack, &t.service))
                .or_default()
                .insert(&node.id);
        }
    }
    let mut global = BTreeMap::new();
    for (stack_name, record) in &state.stacks {
        for (name, service) in &record.stack.services {
            if service.deploy.as_ref().map(|d| d.mode) != Some(DeployMode::Global) {
                continue;
            }
            let mut on = scheduler::global_nodes(service, &state.nodes, images);
            // A paused node keeps the task it runs (it only gets nothing new).
            for id in paused_with
                .get(&(stack_name.as_str(), name.as_str()))
                .into_iter()
                .flatten()
            {
                let fits = state
                    .nodes
                    .get(*id)
                    .is_some_and(|n| still_fits(service, n, images));
                if fits && !on.iter().any(|o| o == id) {
                    on.push(id.to_string());
                }
            }
            on.sort();
            global.insert((stack_name.clone(), name.clone()), on);
        }
    }
    let is_global: BTreeSet<(&str, &str)> = global
        .keys()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    for t in state.tasks.values() {
        let Some(node) = t.node.as_ref().and_then(|n| state.nodes.get(n)) else {
            continue;
        };
        if t.desired != DesiredState::Running || down.contains(&node.id) {
            continue;
        }
        // A global task is never moved: it belongs on its node, or goes.
        if is_global.contains(&(t.stack.as_str(), t.service.as_str())) {
            continue;
        }
        let Some(service) = state
            .stacks
            .get(&t.stack)
            .and_then(|r| r.stack.services.get(&t.service))
        else {
            continue;
        };
        if node.availability == Availability::Drain || !still_fits(service, node, images) {
            moving.insert(t.id.clone());
        }
    }
    // A move under way (a slot with a newer live task: its replacement) goes on until
    // the replacement runs, whatever started it.
    let mut newest: BTreeMap<(&str, &str, u32), u32> = BTreeMap::new();
    for t in state
        .tasks
        .values()
        .filter(|t| t.desired == DesiredState::Running)
    {
        let g = newest.entry((&t.stack, &t.service, t.slot)).or_default();
        *g = (*g).max(t.generation);
    }
    for t in state
        .tasks
        .values()
        .filter(|t| t.desired == DesiredState::Running)
    {
        if newest[&(t.stack.as_str(), t.service.as_str(), t.slot)] > t.generation {
            moving.insert(t.id.clone());
        }
    }
    let rebalance = !state
        .cluster
        .as_ref()
        .is_some_and(|c| c.settings.no_rebalance);
    if rebalance && moving.is_empty() {
        moving.extend(rebalancing(state, &down, &global, images));
    }
    Nodes {
        down,
        moving,
        global,
        placed: true,
    }
}

/// Services spread unevenly (a node joined or came back, and the others run more of
/// them) are rebalanced gradually: per service, when nothing of it is starting or
/// moving, one task moves from the node that runs the most of it, if that is two more
/// than a node that could run it runs. Its replacement starts first, placed by the
/// scheduler on the emptiest node, so the service never runs fewer tasks. Swarm never
/// does this (moby issue 24103).
///
/// Only services the scheduler places on counts alone take part: one that reserves
/// resources, publishes host-mode ports or limits replicas per node may not fit where
/// the counts say, and a move that cannot be placed would leave a pending replacement.
/// Nodes are eligible when up, active and meeting the service's constraints.
fn rebalancing(
    state: &State,
    down: &BTreeSet<String>,
    global: &BTreeMap<(String, String), Vec<String>>,
    images: &BTreeMap<String, Platform>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_service: BTreeMap<(&str, &str), Vec<&Task>> = BTreeMap::new();
    // Services with a task on its way out that may still run (a node that came back
    // stops the tasks replaced while it was away): those go first.
    let mut stopping: BTreeSet<(&str, &str)> = BTreeSet::new();
    for t in state.tasks.values() {
        if t.desired == DesiredState::Running {
            by_service
                .entry((&t.stack, &t.service))
                .or_default()
                .push(t);
        } else if !t.status.state().is_terminal() {
            stopping.insert((&t.stack, &t.service));
        }
    }
    for ((stack, name), tasks) in by_service {
        if stopping.contains(&(stack, name))
            || global.contains_key(&(stack.to_string(), name.to_string()))
        {
            continue;
        }
        let Some(service) = state
            .stacks
            .get(stack)
            .and_then(|r| r.stack.services.get(name))
        else {
            continue;
        };
        if !counts_alone(service) {
            continue;
        }
        // Something of it is starting, pending or moving: wait for it.
        let settled = tasks
            .iter()
            .all(|t| t.node.is_some() && t.status.state() == TaskState::Running);
        let mut slots = BTreeSet::new();
        if !settled || !tasks.iter().all(|t| slots.insert(t.slot)) {
            continue;
        }
        let eligible: Vec<&str> = state
            .nodes
            .values()
            .filter(|n| !down.contains(&n.id) && n.availability == Availability::Active)
            .filter(|n| still_fits(service, n, images))
            .map(|n| n.id.as_str())
            .collect();
        let mut count: BTreeMap<&str, usize> = eligible.iter().map(|n| (*n, 0)).collect();
        for t in &tasks {
            if let Some(c) = t.node.as_deref().and_then(|n| count.get_mut(n)) {
                *c += 1;
            }
        }
        let Some((&fullest, &most)) = count
            .iter()
            .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))
        else {
            continue;
        };
        let least = count.values().copied().min().unwrap_or(0);
        if most < least + 2 {
            continue;
        }
        // The highest slot on the fullest node moves.
        if let Some(t) = tasks
            .iter()
            .filter(|t| t.node.as_deref() == Some(fullest))
            .max_by_key(|t| t.slot)
        {
            out.push(t.id.clone());
        }
    }
    out
}

/// Whether the scheduler places a service's tasks by counts alone: no reservations,
/// no host-mode published ports, no replicas-per-node limit.
fn counts_alone(service: &spec::model::Service) -> bool {
    let deploy = service.deploy.as_ref();
    let reserves = deploy
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.reservations.as_ref())
        .is_some_and(|r| r.cpus.is_some() || r.memory.is_some() || !r.generic_resources.is_empty());
    let per_node = deploy
        .and_then(|d| d.placement.as_ref())
        .is_some_and(|p| p.max_replicas_per_node.is_some());
    let host_ports = service
        .ports
        .iter()
        .any(|p| p.mode == spec::model::PortMode::Host && p.published.is_some());
    !(reserves || per_node || host_ports)
}

//! What a cluster's nodes mean for the orchestrator ([`super::Nodes`]), worked out from
//! the store's state and the nodes found down. Pure: the loop (`run`) gives it the
//! state inside its transaction and the leader's liveness view.

use std::collections::{BTreeMap, BTreeSet};

use spec::model::DeployMode;
use spec::task::DesiredState;

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
    let mut global = BTreeMap::new();
    for (stack_name, record) in &state.stacks {
        for (name, service) in &record.stack.services {
            if service.deploy.as_ref().map(|d| d.mode) == Some(DeployMode::Global) {
                let mut on = scheduler::global_nodes(service, &state.nodes, images);
                // A paused node keeps the task it runs (it only gets nothing new).
                for t in state.tasks.values() {
                    let keeps = t.stack == *stack_name
                        && t.service == *name
                        && t.desired == DesiredState::Running;
                    let Some(node) = t.node.as_ref().and_then(|n| state.nodes.get(n)) else {
                        continue;
                    };
                    if keeps
                        && node.availability == Availability::Pause
                        && still_fits(service, node, images)
                        && !on.contains(&node.id)
                    {
                        on.push(node.id.clone());
                    }
                }
                on.sort();
                global.insert((stack_name.clone(), name.clone()), on);
            }
        }
    }
    for t in state.tasks.values() {
        let Some(node) = t.node.as_ref().and_then(|n| state.nodes.get(n)) else {
            continue;
        };
        if t.desired != DesiredState::Running || down.contains(&node.id) {
            continue;
        }
        // A global task is never moved: it belongs on its node, or goes.
        if global.contains_key(&(t.stack.clone(), t.service.clone())) {
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
    Nodes {
        down,
        moving,
        global,
    }
}

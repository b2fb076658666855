//! What a node does once when it (re)starts, before its loops run: containers keep
//! running without the daemon (DESIGN invariant 6), so a new daemon removes what a
//! crash left behind and takes back what died with the old one.

use std::collections::HashSet;

use spec::task::{DesiredState, Health, Task, TaskState};

use super::{Assignments, Containers, View};

/// Containers on disk that no task of this node knows (a crash between creating one
/// and recording it) are removed. On a cluster, only tasks placed on this node count
/// as known here: `view` is this node's.
pub fn remove_strays<C: Containers>(view: &View, containers: &C) -> Vec<String> {
    let known: HashSet<&str> = view.tasks.keys().map(String::as_str).collect();
    let mut removed = Vec::new();
    for id in containers.list() {
        if !known.contains(id.as_str()) {
            eprintln!("berth daemon: removing container {id}, which no task knows");
            containers.remove_stray(&id);
            removed.push(id);
        }
    }
    removed
}

/// The same while the loops run, on a node whose view comes from elsewhere (a worker's,
/// from the managers): a node cut off from the cluster comes back to a view without
/// the tasks the cluster replaced meanwhile, and their containers must go. The
/// containers are listed before the view is read, so a container just made for a task
/// of a newer view is never taken for a stray (views only move forward).
pub fn remove_strays_now<A: Assignments, C: Containers>(
    assignments: &A,
    containers: &C,
) -> Vec<String> {
    let listed = containers.list();
    let view = assignments.view();
    let mut removed = Vec::new();
    for id in listed {
        // A task's `pre_start` step runs in a container of its own while the task
        // starts: it is the task's, not a stray. (At a restart, `remove_strays`
        // removes it: the job that ran it died with the old daemon.)
        let owner = crate::executor::pre_start_owner(&id).unwrap_or(&id);
        if !view.tasks.contains_key(owner) {
            eprintln!("berth daemon: removing container {id}, which no task of this node knows");
            containers.remove_stray(&id);
            removed.push(id);
        }
    }
    removed
}

/// After a restart: remove what a crash left of the network (attachments of
/// containers that no longer run, networks of stacks no longer deployed), and hold the
/// published ports of the running containers again (their reservations died with the
/// old daemon).
pub fn readopt_network(view: &View, net: &overlay_net::NetworkManager) {
    let live_networks: Vec<String> = view
        .stacks
        .values()
        .flat_map(|r| {
            let project = r.stack.name.clone();
            r.stack.networks.iter().map(move |(k, n)| {
                if n.name.is_empty() {
                    format!("{project}_{k}")
                } else {
                    n.name.clone()
                }
            })
        })
        .collect();
    let running: Vec<&Task> = view
        .tasks
        .values()
        .filter(|t| t.status.state() == TaskState::Running)
        .collect();
    let live_containers: Vec<&str> = running.iter().map(|t| t.id.as_str()).collect();
    let nets: Vec<&str> = live_networks.iter().map(String::as_str).collect();
    match net.gc(&nets, &live_containers) {
        Ok(report) if report != overlay_net::GcReport::default() => {
            eprintln!("berth daemon: removed network leftovers: {report:?}")
        }
        Ok(_) => {}
        Err(e) => eprintln!("berth daemon: network cleanup: {e}"),
    }
    for t in running {
        if let Some((_, service)) = view.service_of(t) {
            // Serving as before the restart (running without a check, or healthy),
            // unless it is to stop; first, so that its ports are published with it.
            let serving = t.desired == DesiredState::Running
                && matches!(t.status.health, Health::None | Health::Healthy);
            if let Err(e) = net.set_healthy(&t.id, serving) {
                eprintln!("berth daemon: {}: marking it healthy again: {e}", t.name());
            }
            if !service.ports.is_empty() {
                if let Err(e) = net.publish(&t.id, &t.service, &service.ports) {
                    eprintln!("berth daemon: {}: publish ports again: {e}", t.name());
                }
            }
        }
    }
}

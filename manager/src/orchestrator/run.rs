//! The loop that runs the orchestrator: whenever the store changes (or a plan asked to
//! be woken), it makes a plan from the current state and applies it in one store
//! transaction. The thin shell around the pure [`super::reconcile`].
//!
//! On a cluster only the leader runs it, and the same transaction also places the
//! tasks that have no node (`crate::scheduler::schedule`), with the nodes the leader
//! finds down (`crate::cluster::liveness`). Since nodes go down without the store
//! changing, the leader also looks every second, and at the moment the first node's
//! grace runs out (`Liveness::next_down`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::StateRole;

use super::{Change, Nodes, Plan};
use crate::cluster::liveness::Liveness;
use crate::scheduler;
use crate::state::model::State;
use crate::state::store::Store;

/// How often the leader of a cluster looks at its nodes even if nothing changed.
const CLUSTER_TICK: Duration = Duration::from_secs(1);

/// How long the leader may sleep: its tick, or less if a node's grace runs out
/// sooner (`next_down`), so a silent node is acted on as soon as it is down.
fn until(next_down: Option<Instant>) -> Duration {
    next_down.map_or(CLUSTER_TICK, |at| {
        at.saturating_duration_since(Instant::now())
            .min(CLUSTER_TICK)
    })
}

/// Applies an orchestrator plan to a state (inside a store transaction).
pub fn apply(state: &mut State, plan: &Plan) {
    for change in &plan.changes {
        match change {
            Change::Create(task) => {
                state.tasks.insert(task.id.clone(), (**task).clone());
            }
            Change::SetDesired { task, desired } => {
                if let Some(t) = state.tasks.get_mut(task) {
                    t.desired = *desired;
                }
            }
            Change::Delete { task } => {
                state.tasks.remove(task);
            }
            Change::SetUpdate {
                stack,
                service,
                status,
            } => {
                if let Some(r) = state.stacks.get_mut(stack) {
                    r.updates.insert(service.clone(), status.clone());
                }
            }
            Change::Rollback {
                stack,
                service,
                status,
            } => {
                if let Some(r) = state.stacks.get_mut(stack) {
                    roll_back(r, service, status.clone());
                }
            }
        }
    }
}

/// Swaps service `name`'s definition with its previous one (so that a second
/// rollback returns to the first, as Swarm's) and records `status`.
pub fn roll_back(
    record: &mut spec::task::StackRecord,
    name: &str,
    status: spec::task::UpdateStatus,
) {
    let (Some(previous), Some(current)) = (
        record.previous.remove(name),
        record.stack.services.get_mut(name),
    ) else {
        return;
    };
    let failed = std::mem::replace(current, previous);
    record.previous.insert(name.to_string(), failed);
    record.updates.insert(name.to_string(), status);
}

/// Places the tasks of `state` that have no node, on the nodes not `down`: each placed
/// task gets its node, each pending one says why in its status message (written only
/// when it changes, so that a pass over an unchanged cluster writes nothing).
pub fn place(state: &mut State, nodes: &Nodes) {
    let ready = state
        .nodes
        .keys()
        .filter(|id| !nodes.down.contains(*id))
        .cloned()
        .collect();
    let plan = scheduler::schedule(&scheduler::Input {
        stacks: &state.stacks,
        tasks: &state.tasks,
        nodes: &state.nodes,
        ready: &ready,
        images: &BTreeMap::new(),
    });
    for (id, node) in &plan.assignments {
        if let Some(t) = state.tasks.get_mut(id) {
            t.node = Some(node.clone());
            t.generic_resources = plan.units.get(id).cloned().unwrap_or_default();
            t.status.message.clear();
        }
    }
    for (id, why) in &plan.pending {
        if let Some(t) = state.tasks.get_mut(id) {
            let why = why.to_string();
            if t.status.message != why {
                t.status.message = why;
            }
        }
    }
}

/// The cluster's grace for nodes (the default on a single host, where it is unused).
fn grace(state: &State) -> Duration {
    state
        .cluster
        .as_ref()
        .map(|c| c.settings.node_grace())
        .unwrap_or_default()
}

/// Runs the orchestrator whenever the store changes, or when a plan asked to be woken
/// (a restart back-off), until the process ends. On a cluster (`liveness` is the
/// leader's memory of heartbeats) only the leader orchestrates, and it places tasks.
pub async fn run_orchestrator(store: Arc<Store>, liveness: Option<Arc<Liveness>>) {
    let mut watch = store.watch();
    // What the last pass that changed nothing saw (the store's version, the nodes
    // down), and when its plan asked to be woken: a tick that finds the same has
    // nothing to do. A pass copies and compares the whole state (27% of a manager's
    // CPU under 500 idle nodes before it was skipped).
    let mut settled: Option<(u64, BTreeSet<String>)> = None;
    let mut wake_at: Option<u64> = None;
    loop {
        if let Some(live) = &liveness {
            let leader = store.node().status().role == StateRole::Leader;
            live.set_leader(leader, Instant::now());
            if !leader {
                settled = None;
                // Leadership changes without a store change: look again soon.
                let _ = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
                continue;
            }
            let look = Instant::now();
            let (seen, next_down) = store.read(|s| {
                let grace = grace(s);
                (
                    (s.version, live.down(&s.nodes, look, grace)),
                    live.next_down(&s.nodes, look, grace),
                )
            });
            let due = wake_at.is_some_and(|at| spec::task::now_ms() >= at);
            if settled.as_ref() == Some(&seen) && !due {
                let _ = tokio::time::timeout(until(next_down), watch.changed()).await;
                continue;
            }
        }
        let now = spec::task::now_ms();
        // The plan is made inside the transaction: if another manager's write wins
        // first, it is made again from the state that includes it, never replayed
        // stale (which could give a slot two tasks).
        let before = store.read(|s| s.version);
        // With the plan, the version and the nodes down it was made from.
        let planned = store.update(|s| {
            let tasks: Vec<_> = s.tasks.values().cloned().collect();
            let seen = s.version;
            match &liveness {
                None => {
                    let plan = super::reconcile(&s.stacks, &tasks, now);
                    apply(s, &plan);
                    Ok((plan, seen, BTreeSet::new()))
                }
                Some(live) => {
                    let down = live.down(&s.nodes, Instant::now(), grace(s));
                    let nodes = super::nodes::nodes(s, down.clone(), &BTreeMap::new());
                    let plan = super::reconcile_on(&s.stacks, &tasks, now, &nodes);
                    apply(s, &plan);
                    place(s, &nodes);
                    Ok((plan, seen, down))
                }
            }
        });
        let plan = match planned {
            Ok((plan, _, _)) if !plan.changes.is_empty() && store.read(|s| s.version) != before => {
                continue
            }
            Ok((plan, seen, down)) => {
                // Settled on what the pass saw (not what is there now: a node that went
                // down since must still be acted on), and only if it wrote nothing (one
                // that placed tasks runs once more, on what it wrote).
                let wrote = store.read(|s| s.version) != seen;
                settled = (liveness.is_some() && !wrote).then_some((seen, down));
                wake_at = plan.wake_at;
                plan
            }
            Err(e) => {
                eprintln!("berth daemon: orchestrator: {e}");
                let _ = tokio::time::timeout(Duration::from_secs(1), watch.changed()).await;
                continue;
            }
        };
        let mut sleep = plan
            .wake_at
            .map(|at| Duration::from_millis(at.saturating_sub(now).max(1)))
            .unwrap_or(Duration::from_secs(60));
        if let Some(live) = &liveness {
            let look = Instant::now();
            let next_down = store.read(|s| live.next_down(&s.nodes, look, grace(s)));
            sleep = sleep.min(until(next_down));
        }
        let _ = tokio::time::timeout(sleep, watch.changed()).await;
    }
}

//! The manager: desired state and the loops that act on it.
//!
//! - `store`: stacks and tasks, changed in transactions, replicated through Raft
//!   (one voter on a single host), watched;
//! - `replicated`: the store's state as a Raft state machine (transactions with
//!   optimistic concurrency on the state's version);
//! - `orchestrator`: the pure function from stacks and tasks to the changes that make
//!   them match (DESIGN invariant 2);
//! - `api`: the HTTP API (axum) over a unix socket; the only module that knows HTTP and
//!   JSON (DESIGN invariant 8). What it needs of the node it runs on (logs, volumes) it
//!   asks through the `Node` trait, so the manager never depends on the agent.
//! - `port`: the cluster port: mutual TLS, Raft frames and the HTTP API on one TCP
//!   port told apart by ALPN; it serves `api`'s router and only knows HTTP as a
//!   transport (plus the refusal of an unauthorized request).
//!
//! The scheduler and dispatcher are trivial on one node (every task goes to it) and
//! arrive with the cluster issue.

pub mod api;
pub mod cluster;
pub mod deploy;
pub mod orchestrator;
pub mod port;
pub mod progress;
pub mod raft;
pub mod replicated;
pub mod store;

use orchestrator::{Change, Plan};
use store::State;

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
        }
    }
}

/// Runs the orchestrator whenever the store changes, or when a plan asked to be woken
/// (a restart back-off), until the process ends. On a cluster (`placement`
/// is this manager's node id) only the leader orchestrates, and the tasks it creates
/// run on its node until the scheduler places them.
pub async fn run_orchestrator(store: std::sync::Arc<store::Store>, placement: Option<String>) {
    let mut watch = store.watch();
    loop {
        if placement.is_some() && store.node().status().role != raft::Role::Leader {
            // Leadership changes without a store change: look again soon.
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(200), watch.changed()).await;
            continue;
        }
        let now = now_ms();
        // The plan is made inside the transaction: if another manager's write wins
        // first, it is made again from the state that includes it, never replayed
        // stale (which could give a slot two tasks).
        let before = store.read(|s| s.version);
        let planned = store.update(|s| {
            let tasks: Vec<_> = s.tasks.values().cloned().collect();
            let plan = orchestrator::reconcile(&s.stacks, &tasks, now);
            apply(s, &plan);
            if let Some(node) = &placement {
                for change in &plan.changes {
                    if let Change::Create(task) = change {
                        if let Some(t) = s.tasks.get_mut(&task.id) {
                            t.node = Some(node.clone());
                        }
                    }
                }
            }
            Ok(plan)
        });
        let plan = match planned {
            Ok(plan) if !plan.changes.is_empty() && store.read(|s| s.version) != before => continue,
            Ok(plan) => plan,
            Err(e) => {
                eprintln!("berth daemon: orchestrator: {e}");
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), watch.changed()).await;
                continue;
            }
        };
        let sleep = plan
            .wake_at
            .map(|at| std::time::Duration::from_millis(at.saturating_sub(now).max(1)))
            .unwrap_or(std::time::Duration::from_secs(60));
        let _ = tokio::time::timeout(sleep, watch.changed()).await;
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

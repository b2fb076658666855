//! The loop that runs the orchestrator: whenever the store changes (or a plan asked to
//! be woken), it makes a plan from the current state and applies it in one store
//! transaction. The thin shell around the pure [`super::reconcile`].

use raft::StateRole;

use super::{Change, Plan};
use crate::state::model::State;
use crate::state::store::Store;

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
pub async fn run_orchestrator(store: std::sync::Arc<Store>, placement: Option<String>) {
    let mut watch = store.watch();
    loop {
        if placement.is_some() && store.node().status().role != StateRole::Leader {
            // Leadership changes without a store change: look again soon.
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(200), watch.changed()).await;
            continue;
        }
        let now = spec::task::now_ms();
        // The plan is made inside the transaction: if another manager's write wins
        // first, it is made again from the state that includes it, never replayed
        // stale (which could give a slot two tasks).
        let before = store.read(|s| s.version);
        let planned = store.update(|s| {
            let tasks: Vec<_> = s.tasks.values().cloned().collect();
            let plan = super::reconcile(&s.stacks, &tasks, now);
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

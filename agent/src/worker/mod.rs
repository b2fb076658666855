//! The worker: the loops that make this node's containers match the tasks assigned to
//! it, and report what they saw (after swarmkit's `agent/worker.go`).
//!
//! The loops are generic over three small seams, so that the same loops run on every
//! kind of node and are tested over fakes:
//! - [`Assignments`]: what hands the node its tasks, as a [`View`] (its tasks and the
//!   stack records they come from) and a way to wait for the view's next change. On a
//!   single host and on a manager it is the store (the binary's `daemon::store_side`);
//!   on a worker it will be the dispatcher's client.
//! - [`StatusReporter`]: what takes status back, in batches (one store commit per
//!   batch, not per container). Whoever records a report merges it with
//!   [`spec::task::TaskStatus::merge_report`]: a state never moves back.
//! - [`Containers`]: the container work (start, stop, remove, observe, probe), done by
//!   [`crate::executor::Executor`] on this node's runtime.
//!
//! The loops:
//! - [`tasks`]: for every task, act if its container does not match the task's desired
//!   state, observe it otherwise. What to do is a pure function ([`decide`]); the shell
//!   ([`TaskLoop`]) runs each action on a blocking thread, one at a time per task.
//! - [`health`]: runs every running task's healthcheck on its schedule
//!   ([`crate::health::Checker`]) and reports health changes.
//! - [`recover`]: what a (re)started node does once before the loops: remove stray
//!   containers, re-adopt its network state.

mod containers;
pub mod decide;
pub mod health;
pub mod recover;
pub mod tasks;

use std::collections::BTreeMap;

use spec::model::Service;
use spec::task::{Health, StackRecord, Task, TaskStatus};

pub use containers::Containers;
pub use decide::{decide, Action};
pub use health::{run_health, HealthChecks};
pub use tasks::TaskLoop;

/// What a node is assigned: its tasks, with the stack records they are made from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// This node's tasks, by id.
    pub tasks: BTreeMap<String, Task>,
    /// The stacks the tasks come from, by name (a task's service is found in its
    /// stack's services, one-offs or orphans).
    pub stacks: BTreeMap<String, StackRecord>,
}

impl View {
    /// The view of node `me` (its cluster node id; `None` on a single host, where the
    /// one node runs every task) out of every task: only the tasks placed on it.
    pub fn for_node(
        mut tasks: BTreeMap<String, Task>,
        stacks: BTreeMap<String, StackRecord>,
        me: Option<&str>,
    ) -> View {
        tasks.retain(|_, t| t.node.as_deref() == me);
        View { tasks, stacks }
    }

    /// The service a task is made from (one-offs and orphans included), with its stack.
    pub fn service_of(&self, task: &Task) -> Option<(&StackRecord, &Service)> {
        let record = self.stacks.get(&task.stack)?;
        let service = record
            .stack
            .services
            .get(&task.service)
            .or_else(|| record.oneoffs.get(&task.service))
            .or_else(|| record.orphans.get(&task.service))?;
        Some((record, service))
    }
}

/// How a loop waits for the view's next change: a watch whose value changes with it
/// (the store's version). It may also wake when nothing the node sees changed.
pub type Changes = tokio::sync::watch::Receiver<u64>;

/// What hands the node its tasks.
pub trait Assignments: Send + Sync + 'static {
    /// The node's tasks now.
    fn view(&self) -> View;

    /// A watch that changes when the view may have changed. Each loop takes its own.
    fn changes(&self) -> Changes;
}

/// What takes status back. Each call is one batch; reporting blocks until the batch
/// is recorded (or failed), and a failed batch is not retried (the loops observe the
/// containers again and report what they see then).
pub trait StatusReporter: Send + Sync + 'static {
    type Error: std::fmt::Display;

    /// Task statuses the agent loop saw, by task id. Tasks the recorder no longer
    /// knows are skipped.
    fn report(&self, statuses: &[(String, TaskStatus)]) -> Result<(), Self::Error>;

    /// Health changes the health loop saw, by task id (recorded only for tasks that
    /// still run: [`TaskStatus::merge_health`]).
    fn report_health(&self, changes: &[(String, Health)]) -> Result<(), Self::Error>;
}

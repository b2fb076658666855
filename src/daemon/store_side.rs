//! The worker's seams over the manager's store, for a node that holds the store (a
//! single host, or a manager of a cluster): the node's tasks come from the store's
//! state (`Store::snapshot`, woken by `Store::watch`), its reports go back into it in
//! one transaction per batch (`Store::update`), merged by the rule every recorder of
//! reports follows (`TaskStatus::merge_report`). And the API's view of the node
//! (`manager::api::Node`), which `agent::node` serves.

use std::sync::Arc;

use agent::node::LocalNode;
use agent::worker::{Assignments, Changes, StatusReporter, View};
use manager::api::{LogLine, Node};
use manager::store::{Store, StoreError};
use spec::model::Stack;
use spec::task::{Health, TaskStatus};

/// This node's side of the store: its tasks out, their statuses in.
#[derive(Debug, Clone)]
pub struct StoreSide {
    store: Arc<Store>,
    /// This node's cluster node id; `None` on a single host, where every task is
    /// this node's.
    me: Option<String>,
}

impl StoreSide {
    pub fn new(store: Arc<Store>, me: Option<String>) -> StoreSide {
        StoreSide { store, me }
    }
}

impl Assignments for StoreSide {
    /// The store's stacks, with only the tasks this node runs.
    fn view(&self) -> View {
        let state = self.store.snapshot();
        View::for_node(state.tasks, state.stacks, self.me.as_deref())
    }

    fn changes(&self) -> Changes {
        self.store.watch()
    }
}

impl StatusReporter for StoreSide {
    type Error = StoreError;

    /// Records reported statuses in one transaction; a state never moves back.
    fn report(&self, statuses: &[(String, TaskStatus)]) -> Result<(), StoreError> {
        // The transaction may run again (another manager committed first): it reads
        // the reports, not takes them.
        self.store.update(|s| {
            for (id, status) in statuses {
                if let Some(t) = s.tasks.get_mut(id) {
                    t.status = t.status.merge_report(status);
                }
            }
            Ok(())
        })
    }

    fn report_health(&self, changes: &[(String, Health)]) -> Result<(), StoreError> {
        self.store.update(|s| {
            for (id, health) in changes {
                if let Some(t) = s.tasks.get_mut(id) {
                    t.status.merge_health(*health);
                }
            }
            Ok(())
        })
    }
}

/// The node as the API sees it: `agent::node`, its errors as messages.
pub struct ApiNode(pub LocalNode);

impl Node for ApiNode {
    fn logs(
        &self,
        task: &str,
        follow: bool,
        tail: Option<usize>,
        sink: &mut dyn FnMut(LogLine) -> bool,
    ) -> Result<(), String> {
        let mut entry = |e: &agent::shim::LogEntry| {
            sink(LogLine {
                time: e.time.clone(),
                stream: match e.stream {
                    agent::shim::Stream::Stdout => "stdout".into(),
                    agent::shim::Stream::Stderr => "stderr".into(),
                },
                line: e.log.clone(),
            })
        };
        self.0
            .logs(task, follow, tail, &mut entry)
            .map_err(|e| e.to_string())
    }

    fn kill(&self, task: &str, signal: &str) -> Result<(), String> {
        self.0.kill(task, signal).map_err(|e| e.to_string())
    }

    fn freeze(&self, task: &str, frozen: bool) -> Result<(), String> {
        self.0.freeze(task, frozen).map_err(|e| e.to_string())
    }

    fn inspect(&self, task: &str, what: &str) -> Result<serde_json::Value, String> {
        self.0.inspect(task, what).map_err(|e| e.to_string())
    }

    fn remove_networks(&self, stack: &Stack) -> Result<Vec<String>, String> {
        self.0.remove_networks(stack).map_err(|e| e.to_string())
    }

    fn remove_volumes(&self, stack: &Stack) -> Result<Vec<String>, String> {
        self.0.remove_volumes(stack).map_err(|e| e.to_string())
    }
}

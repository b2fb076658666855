//! The worker's seams over the manager's store, for a node that holds the store (a
//! single host, or a manager of a cluster): the node's tasks come from the store's
//! state (`Store::snapshot`, woken by `Store::watch`), its reports go back into it in
//! one transaction per batch (`Store::update`), merged by the rule every recorder of
//! reports follows (`TaskStatus::merge_report`). And the API's view of the node
//! (`manager::api::NodeAgent`), which `agent::node` serves.

use std::sync::Arc;

use agent::node::LocalNode;
use agent::worker::{Assignments, Changes, StatusReporter, View};
use manager::api::exec::{ExecError, ExecSpec, ExecStream, Starting};
use manager::api::{LogLine, NodeAgent};
use manager::state::store::{Store, StoreError};
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
        // Only this node's tasks are copied: a manager of a large cluster must not copy
        // every node's tasks for its own loops (it did, at 14% of its CPU).
        match self.me.as_deref() {
            Some(me) => self.store.read_node(me, |state, ids| View {
                tasks: ids
                    .filter_map(|id| Some((id.clone(), state.tasks.get(id)?.clone())))
                    .collect(),
                stacks: state.stacks.clone(),
            }),
            None => self
                .store
                .read(|state| View::for_node(state.tasks.clone(), state.stacks.clone(), None)),
        }
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
                    t.status.merge_health(*health, spec::task::now_ms());
                }
            }
            Ok(())
        })
    }
}

/// The node as the API sees it: `agent::node`, its errors as messages.
pub struct ApiNode(pub LocalNode);

impl NodeAgent for ApiNode {
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

    /// Started on a blocking thread (the helper answers once the command runs); the
    /// session is served as `super::exec` says.
    fn exec(&self, task: &str, spec: ExecSpec) -> Starting {
        let (node, task) = (self.0.clone(), task.to_string());
        Box::pin(async move {
            let failed = |e: &dyn std::fmt::Display| ExecError::new(500, e.to_string());
            let stream =
                tokio::task::spawn_blocking(move || super::exec::start(&node, &task, &spec))
                    .await
                    .map_err(|e| failed(&e))??;
            stream.set_nonblocking(true).map_err(|e| failed(&e))?;
            let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| failed(&e))?;
            Ok(Box::new(stream) as ExecStream)
        })
    }

    fn remove_networks(&self, stack: &Stack) -> Result<Vec<String>, String> {
        self.0.remove_networks(stack).map_err(|e| e.to_string())
    }

    fn remove_volumes(&self, stack: &Stack) -> Result<Vec<String>, String> {
        self.0.remove_volumes(stack).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::task::{DesiredState, Task, TaskState};

    fn task(slot: u32, node: Option<&str>, state: TaskState) -> Task {
        Task {
            id: Task::make_id("app", "web", slot, 1),
            stack: "app".into(),
            service: "web".into(),
            slot,
            generation: 1,
            spec_hash: String::new(),
            desired: DesiredState::Running,
            status: TaskStatus {
                state: Some(state),
                ..TaskStatus::default()
            },
            created_at: 0,
            restarts: 0,
            stop_grace_ms: None,
            deps_seen: Default::default(),
            node: node.map(str::to_string),
            for_node: None,
            generic_resources: Default::default(),
        }
    }

    fn store_with(tasks: &[Task]) -> (tempfile::TempDir, Arc<Store>) {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(tmp.path()).expect("open the store");
        store
            .update(|s| {
                for t in tasks {
                    s.tasks.insert(t.id.clone(), t.clone());
                }
                Ok(())
            })
            .expect("add the tasks");
        (tmp, Arc::new(store))
    }

    fn status(store: &Store, id: &str) -> TaskStatus {
        store.read(|s| s.tasks[id].status.clone())
    }

    #[test]
    fn the_view_holds_only_this_nodes_tasks() {
        let tasks = [
            task(1, Some("n1"), TaskState::New),
            task(2, Some("n2"), TaskState::New),
            task(3, None, TaskState::New),
        ];
        let (_tmp, store) = store_with(&tasks);
        let ids = |me: Option<&str>| -> Vec<String> {
            let view = StoreSide::new(store.clone(), me.map(str::to_string)).view();
            view.tasks.into_keys().collect()
        };
        assert_eq!(ids(Some("n1")), [tasks[0].id.clone()]);
        assert_eq!(ids(None), [tasks[2].id.clone()]);
    }

    #[test]
    fn reports_are_merged_in_one_commit_and_never_move_state_back() {
        let (a, b) = (
            task(1, None, TaskState::Running),
            task(2, None, TaskState::New),
        );
        let (_tmp, store) = store_with(&[a.clone(), b.clone()]);
        let side = StoreSide::new(store.clone(), None);
        let version = store.read(|s| s.version);
        let late = TaskStatus {
            state: Some(TaskState::Preparing),
            message: "late".into(),
            ..TaskStatus::default()
        };
        let started = TaskStatus {
            state: Some(TaskState::Running),
            pid: Some(7),
            ..TaskStatus::default()
        };
        side.report(&[
            (a.id.clone(), late),
            (b.id.clone(), started),
            ("app-gone-1.1".into(), TaskStatus::default()),
        ])
        .expect("report");
        assert_eq!(store.read(|s| s.version), version + 1, "one commit");
        let a_now = status(&store, &a.id);
        assert_eq!(a_now.state(), TaskState::Running);
        assert_eq!(a_now.message, "late");
        assert_eq!(status(&store, &b.id).pid, Some(7));
        assert!(store.read(|s| !s.tasks.contains_key("app-gone-1.1")));
    }

    #[test]
    fn health_is_recorded_only_for_running_tasks_and_kept_by_later_reports() {
        let (a, b) = (
            task(1, None, TaskState::Running),
            task(2, None, TaskState::Failed),
        );
        let (_tmp, store) = store_with(&[a.clone(), b.clone()]);
        let side = StoreSide::new(store.clone(), None);
        side.report_health(&[
            (a.id.clone(), Health::Healthy),
            (b.id.clone(), Health::Healthy),
        ])
        .expect("report health");
        assert_eq!(status(&store, &a.id).health, Health::Healthy);
        assert_eq!(status(&store, &b.id).health, Health::None);
        // The agent loop's next report does not overwrite it.
        side.report(&[(
            a.id.clone(),
            TaskStatus {
                state: Some(TaskState::Running),
                health: Health::Starting,
                ..TaskStatus::default()
            },
        )])
        .expect("report");
        assert_eq!(status(&store, &a.id).health, Health::Healthy);
    }
}

//! The dispatcher: what each node is assigned, and the status it sends back (after
//! swarmkit's `manager/dispatcher`). Every node's agent talks to the managers over the
//! cluster port (mutual TLS, the node's certificate says who it is):
//!
//! - **Assignments** (`GET /v1/dispatcher/assignments`, a long poll): the node's
//!   [`Assignment`], a complete view of what it runs, and then each time it changes.
//!   A view is versioned by the store's version when it was made, so a node that hears
//!   from a lagging manager, or gets an answer late, never goes back to an older view
//!   (the node keeps the highest version it saw). The node says which view it has by
//!   its digest; the manager answers as soon as the node's view differs from it.
//! - **Status** (`POST /v1/dispatcher/status`): batches of task statuses and health
//!   changes, merged by the rule every recorder follows
//!   ([`spec::task::TaskStatus::merge_report`]: a state never moves back), and accepted
//!   only for tasks assigned to the node that reports them.
//!
//! A view holds exactly what the node's tasks need: their services (nothing of the
//! stack's other services), the stack's networks and volumes, and only the secrets and
//! configs those services use, with their content. Nothing else of the store reaches a
//! node.
//!
//! Views are complete, not deltas: a node's view is its tasks (tens, not thousands),
//! and a complete view makes a lost or reordered answer harmless.
//!
//! This file is the pure core; the endpoints are in `crate::api::dispatcher`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spec::model::Service;
use spec::task::{Health, StackRecord, Task, TaskStatus};

use crate::state::model::State;

/// What a node is assigned, as of store version `version`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub version: u64,
    /// A digest of `tasks` and `stacks`: equal views have equal digests, whatever
    /// their version.
    pub digest: String,
    /// The node's tasks, by id.
    pub tasks: BTreeMap<String, Task>,
    /// The stacks they come from, trimmed to what the tasks need.
    pub stacks: BTreeMap<String, StackRecord>,
}

/// The assignment of node `node` in `state`. Pure.
pub fn assignment_for(state: &State, node: &str) -> Assignment {
    let ids = state
        .tasks
        .iter()
        .filter(|(_, t)| t.node.as_deref() == Some(node))
        .map(|(id, _)| id);
    Assignment::of(view_of(state, ids))
}

/// What a node's view holds, before its digest: its tasks and the trimmed stacks.
#[derive(Debug)]
pub struct ViewParts {
    pub version: u64,
    pub tasks: BTreeMap<String, Task>,
    pub stacks: BTreeMap<String, StackRecord>,
}

/// The parts of the view of the node whose tasks are `ids` (found by a scan, or by
/// the store's index: `Store::read_node`). Only copies: the digest, the costly part,
/// is left for [`Assignment::of`], outside the store's lock.
pub fn view_of<'a>(state: &State, ids: impl Iterator<Item = &'a String>) -> ViewParts {
    let tasks: BTreeMap<String, Task> = ids
        .filter_map(|id| Some((id.clone(), state.tasks.get(id)?.clone())))
        .collect();
    let mut used: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for t in tasks.values() {
        used.entry(&t.stack).or_default().insert(&t.service);
    }
    let stacks: BTreeMap<String, StackRecord> = used
        .into_iter()
        .filter_map(|(stack, services)| {
            let record = state.stacks.get(stack)?;
            Some((stack.to_string(), trimmed(record, &services)))
        })
        .collect();
    ViewParts {
        version: state.version,
        tasks,
        stacks,
    }
}

impl Assignment {
    /// The assignment made of `parts`, with its digest.
    pub fn of(parts: ViewParts) -> Assignment {
        let ViewParts {
            version,
            tasks,
            stacks,
        } = parts;
        let digest = {
            let mut h = Sha256::new();
            h.update(serde_json::to_vec(&tasks).unwrap_or_default());
            h.update([0]);
            h.update(serde_json::to_vec(&stacks).unwrap_or_default());
            hex::encode(h.finalize())
        };
        Assignment {
            version,
            digest,
            tasks,
            stacks,
        }
    }
}

/// `record` with only `services` (of its services, orphans and one-offs) and only the
/// secrets, configs, their contents and the variables they read that those services
/// use.
fn trimmed(record: &StackRecord, services: &BTreeSet<&str>) -> StackRecord {
    let keep = |map: &BTreeMap<String, Service>| -> BTreeMap<String, Service> {
        map.iter()
            .filter(|(name, _)| services.contains(name.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    // Cloned without its services first: a stack of a hundred services sends a node
    // running one of them one, and copies one.
    let s = &record.stack;
    // Field by field, so that a field added to the record is a compile error here
    // until someone decides whether nodes get it.
    let mut out = StackRecord {
        stack: spec::model::Stack {
            name: s.name.clone(),
            services: keep(&s.services),
            networks: s.networks.clone(),
            volumes: s.volumes.clone(),
            secrets: s.secrets.clone(),
            configs: s.configs.clone(),
            extensions: s.extensions.clone(),
        },
        files: record.files.clone(),
        project_dir: record.project_dir.clone(),
        orphans: keep(&record.orphans),
        oneoffs: keep(&record.oneoffs),
        scale: record.scale.clone(),
        secret_env: record.secret_env.clone(),
        contents: record.contents.clone(),
        data: record.data.clone(),
        restarted: record.restarted.clone(),
        stopped: record.stopped.clone(),
        // What a rollback returns to and how an update stands are the managers'.
        previous: BTreeMap::new(),
        updates: BTreeMap::new(),
        // Which git-ops source deployed it is the managers' too.
        source: None,
        taking_down: false,
    };
    let all = out
        .stack
        .services
        .values()
        .chain(out.orphans.values())
        .chain(out.oneoffs.values());
    let (mut secrets, mut configs) = (BTreeSet::new(), BTreeSet::new());
    for service in all {
        secrets.extend(service.secrets.iter().map(|m| m.source.clone()));
        configs.extend(service.configs.iter().map(|m| m.source.clone()));
    }
    out.stack.secrets.retain(|k, _| secrets.contains(k));
    out.stack.configs.retain(|k, _| configs.contains(k));
    let used_key = |key: &String| match key.split_once('.') {
        Some(("secrets", name)) => secrets.contains(name),
        Some(("configs", name)) => configs.contains(name),
        _ => false,
    };
    out.data.retain(|k, _| used_key(k));
    out.contents.retain(|k, _| used_key(k));
    let vars: BTreeSet<&String> = out
        .stack
        .secrets
        .values()
        .chain(out.stack.configs.values())
        .filter_map(|o| o.environment.as_ref())
        .collect();
    out.secret_env.retain(|k, _| vars.contains(k));
    out
}

/// A node's batch of reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusBatch {
    #[serde(default)]
    pub statuses: Vec<(String, TaskStatus)>,
    #[serde(default)]
    pub health: Vec<(String, Health)>,
}

/// What became of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Reports recorded.
    pub accepted: usize,
    /// Task ids refused: not assigned to the reporting node (or no longer known).
    pub refused: Vec<String>,
    /// The store's version once the batch is in: a view older than this one does not
    /// hold it, and the node ignores it.
    #[serde(default)]
    pub version: u64,
}

/// Records `batch`, reported by node `node`, in `state`: only for tasks assigned to
/// it, states only moving forward, health only for running tasks (a change to healthy
/// seen at `now`). Pure.
pub fn accept(state: &mut State, node: &str, batch: &StatusBatch, now: u64) -> Accepted {
    let mut out = Accepted::default();
    for (id, status) in &batch.statuses {
        match state.tasks.get_mut(id) {
            Some(t) if t.node.as_deref() == Some(node) => {
                t.status = t.status.merge_report(status);
                out.accepted += 1;
            }
            _ => out.refused.push(id.clone()),
        }
    }
    for (id, health) in &batch.health {
        match state.tasks.get_mut(id) {
            Some(t) if t.node.as_deref() == Some(node) => {
                t.status.merge_health(*health, now);
                out.accepted += 1;
            }
            _ => out.refused.push(id.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::model::{FileMount, FileObject, Stack};
    use spec::task::{DesiredState, TaskState};

    fn task(id: &str, service: &str, node: &str) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": id, "stack": "app", "service": service, "slot": 1, "generation": 1,
            "spec_hash": "h", "desired": "running", "status": {}, "created_at": 0,
            "node": node,
        }))
        .expect("a task")
    }

    fn secret(name: &str) -> FileObject {
        FileObject {
            name: name.into(),
            file: Some(format!("/run/{name}")),
            environment: None,
            content: None,
            external: false,
            labels: Default::default(),
            extensions: Default::default(),
        }
    }

    /// `web` uses secret `a`, `db` secret `b`; web runs on n1, db on n2.
    fn state() -> State {
        let uses = |s: &str| Service {
            image: Some("busybox".into()),
            secrets: vec![FileMount {
                source: s.into(),
                target: format!("/run/secrets/{s}"),
                uid: None,
                gid: None,
                mode: None,
            }],
            ..Service::default()
        };
        let mut stack = Stack::of_services(
            "app",
            [
                ("web".to_string(), uses("a")),
                ("db".to_string(), uses("b")),
            ],
        );
        stack.secrets.insert("a".into(), secret("a"));
        stack.secrets.insert("b".into(), secret("b"));
        let mut record = StackRecord::new(stack);
        record.data.insert("secrets.a".into(), "QQ==".into());
        record.data.insert("secrets.b".into(), "Qg==".into());
        let mut s = State::default();
        s.stacks.insert("app".into(), record);
        for t in [
            task("app-web-1.1", "web", "n1"),
            task("app-db-1.1", "db", "n2"),
        ] {
            s.tasks.insert(t.id.clone(), t);
        }
        s.version = 7;
        s
    }

    #[test]
    fn a_node_is_sent_only_its_tasks_and_the_secrets_they_use() {
        let s = state();
        let a = assignment_for(&s, "n1");
        assert_eq!(a.version, 7);
        assert_eq!(a.tasks.keys().collect::<Vec<_>>(), ["app-web-1.1"]);
        let record = &a.stacks["app"];
        assert_eq!(record.stack.services.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(record.stack.secrets.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(record.data.keys().collect::<Vec<_>>(), ["secrets.a"]);
        // A node with no task gets nothing of any stack.
        let none = assignment_for(&s, "n3");
        assert!(none.tasks.is_empty() && none.stacks.is_empty());
    }

    #[test]
    fn the_digest_follows_the_view_not_the_version() {
        let mut s = state();
        let a = assignment_for(&s, "n1");
        s.version += 5;
        s.tasks.get_mut("app-db-1.1").expect("db").status.message = "x".into();
        assert_eq!(assignment_for(&s, "n1").digest, a.digest, "n2's change");
        s.tasks.get_mut("app-web-1.1").expect("web").desired = DesiredState::Shutdown;
        assert_ne!(assignment_for(&s, "n1").digest, a.digest);
    }

    #[test]
    fn reports_count_only_for_the_reporting_nodes_tasks_and_never_move_back() {
        let mut s = state();
        s.tasks.get_mut("app-web-1.1").expect("web").status.state = Some(TaskState::Running);
        let report = |state| TaskStatus {
            state: Some(state),
            ..TaskStatus::default()
        };
        let batch = StatusBatch {
            statuses: vec![
                ("app-web-1.1".into(), report(TaskState::Preparing)),
                ("app-db-1.1".into(), report(TaskState::Failed)),
                ("gone".into(), report(TaskState::Failed)),
            ],
            health: vec![("app-db-1.1".into(), Health::Healthy)],
        };
        let got = accept(&mut s, "n1", &batch, 1);
        assert_eq!(got.accepted, 1);
        assert_eq!(got.refused, ["app-db-1.1", "gone", "app-db-1.1"]);
        assert_eq!(s.tasks["app-web-1.1"].status.state(), TaskState::Running);
        assert_eq!(s.tasks["app-db-1.1"].status.state(), TaskState::New);
        assert_eq!(s.tasks["app-db-1.1"].status.health, Health::None);
    }
}

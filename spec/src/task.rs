//! The task model shared by the manager and the agent (after swarmkit's): a service has
//! slots, each slot runs one task at a time, and a task is one container's life.
//!
//! The manager writes a task's `desired` state; the agent writes its `status`. The
//! observed state only moves forward ([`TaskState::advance`]), so a late report never
//! rolls a task back. A restart or an update is a *new* task in the same slot; the
//! old one stays as history until the orchestrator trims it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Stack;

/// A deployed stack, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackRecord {
    pub stack: Stack,
    /// The files it came from and its project directory, for `ls` and error messages.
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub project_dir: String,
    /// Services of an earlier deployment that the last `up` no longer names, kept running
    /// until `up --remove-orphans` or `down` (as Compose does).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub orphans: BTreeMap<String, crate::model::Service>,
    /// One-off containers of `berth run`, by their name (`<service>-run-<hex>`): each a
    /// copy of its service with the run's command, never restarted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub oneoffs: BTreeMap<String, crate::model::Service>,
    /// Per-service replica counts given with `up --scale`, over the file's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scale: BTreeMap<String, u32>,
    /// The variables that `secrets`/`configs` with `environment:` read, taken from the
    /// environment of the `up` that deployed the stack.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// A digest of each file-sourced secret's and config's content
    /// (`secrets.<key>` -> hex), read by `up`: a changed file recreates its users.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contents: BTreeMap<String, String>,
    /// How many times `berth restart` restarted each service: with the service's hash,
    /// what a dependent with `depends_on.<svc>.restart: true` follows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restarted: BTreeMap<String, u32>,
    /// Services stopped by `berth stop`: their tasks are shut down, not restarted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<String>,
}

/// What the manager wants of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    /// Stopped, its container kept (for logs and `ps -a`).
    Shutdown,
    /// Stopped and its container deleted; the task record goes once the agent says so.
    Remove,
}

/// Where a task is in its life, as the agent observed it. Ordered: a task only moves
/// to a later state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Preparing,
    Starting,
    Running,
    /// Exited with code 0.
    Complete,
    /// Exited non-zero, killed, or could not be started.
    Failed,
    /// Stopped because the manager asked.
    Shutdown,
    /// The agent could not run it at all (no such image, bad mount source...).
    Rejected,
    /// Its container is gone (deleted on `Remove`, or vanished behind berth's back).
    Removed,
}

impl TaskState {
    /// The task's process has ended (or never will run).
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// The later of two states: observed state never goes back.
    pub fn advance(self, to: TaskState) -> TaskState {
        self.max(to)
    }
}

/// A task's health, from its healthcheck.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The service has no healthcheck.
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// What the agent reports about a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: Option<TaskState>,
    /// Why it is in this state, for `ps` (an error, "exited with code 1", ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    #[serde(default)]
    pub health: Health,
    /// Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// The container's main pid while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

impl TaskStatus {
    pub fn state(&self) -> TaskState {
        self.state.unwrap_or(TaskState::New)
    }

    /// Its container could not be made or started (a missing bind source, a port in
    /// use, a program not in the image): refused before it ran, or failed with no
    /// start time. `message` says why.
    pub fn never_started(&self) -> bool {
        match self.state() {
            TaskState::Rejected => true,
            TaskState::Failed => self.started_at.is_none(),
            _ => false,
        }
    }
}

/// One run of one slot of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique, and the container's id: `<stack>-<service>-<slot>.<generation>`.
    pub id: String,
    pub stack: String,
    pub service: String,
    /// 1-based, as in container names (`web-1`).
    pub slot: u32,
    /// Counts the tasks this slot has had; part of the id.
    pub generation: u32,
    /// The hash of what the task was made from (service definition and the objects
    /// it uses): a different hash means the task is out of date.
    pub spec_hash: String,
    pub desired: DesiredState,
    #[serde(default)]
    pub status: TaskStatus,
    /// Unix milliseconds.
    pub created_at: u64,
    /// How many tasks of this slot were started before this one since the last
    /// change of definition (for `on-failure:N` and restart back-off).
    #[serde(default)]
    pub restarts: u32,
    /// How long to wait for it to stop before SIGKILL, when `down -t` / `stop -t` said;
    /// else the service's `stop_grace_period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_ms: Option<u64>,
    /// For each dependency with `restart: true`, the state of it this task was started
    /// against (see `orchestrator::dependency_marker`): when the dependency is updated
    /// or restarted, the task is recreated.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deps_seen: BTreeMap<String, String>,
    /// The cluster node that runs it (its id); `None` on a single host, where the one
    /// node runs every task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Task {
    /// The container's name as Compose spells it: `<project>-<service>-<slot>`.
    pub fn name(&self) -> String {
        format!("{}-{}-{}", self.stack, self.service, self.slot)
    }

    pub fn make_id(stack: &str, service: &str, slot: u32, generation: u32) -> String {
        format!("{stack}-{service}-{slot}.{generation}")
    }
}

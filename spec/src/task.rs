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

/// Unix time in milliseconds: the clock every time in the task model is read in
/// (`started_at`, `finished_at`, `joined_at`, ...), on managers and agents alike. The
/// pure cores take `now` as an argument; only their shells call this.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
    /// The content of each file-sourced secret and config (`secrets.<key>` -> base64),
    /// read by `up` on its host, so that a task on any node gets the same bytes (a
    /// cluster node has not the file). Never shown by the API, never written to a
    /// worker's disk; a node is sent only those its tasks use.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// How many times `berth restart` restarted each service: with the service's hash,
    /// what a dependent with `depends_on.<svc>.restart: true` follows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restarted: BTreeMap<String, u32>,
    /// Services stopped by `berth stop`: their tasks are shut down, not restarted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<String>,
    /// Each service's definition before its last change, by `up` or by a rollback:
    /// what a rollback returns to (Swarm's `PreviousSpec`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub previous: BTreeMap<String, crate::model::Service>,
    /// The rolling update (or rollback) of each service that rolls, as the
    /// orchestrator keeps it: what `ls`, `ps`, `events` and `up --wait` show.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub updates: BTreeMap<String, UpdateStatus>,
    /// The git-ops source that deployed it (None: deployed by hand, with `berth up`).
    /// A source changes only stacks it deployed; one deployed otherwise is not adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `down` is taking it down (its services stop wave by wave): not a change to put
    /// back, whoever watches for drift.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub taking_down: bool,
}

/// Where a service's rolling update stands. Written by the orchestrator only (and
/// reset by `up` and `rollback`), in the transaction that acts on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    /// The definition's hash being rolled to (a task's `spec_hash`).
    pub to_hash: String,
    /// Unix ms.
    pub started_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// Slots whose task failed within `monitor` during this update (each counted once).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub failed: std::collections::BTreeSet<u32>,
    /// Slots whose new task was updated (ready past `monitor`): what becomes of it
    /// afterwards is no longer the update's failure.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub done: std::collections::BTreeSet<u32>,
    /// Slots running the new definition (past `monitor`), of `total`.
    #[serde(default)]
    pub updated: u32,
    #[serde(default)]
    pub total: u32,
    /// Why it paused or rolled back; or a note (start-first done as stop-first, why).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    /// Stopped by `failure_action: pause`; `berth up` starts it again.
    Paused,
    RollingBack,
    /// The rollback itself failed and paused.
    RollbackPaused,
    RolledBack,
    Completed,
}

impl UpdateStatus {
    /// An update (or rollback) to `to_hash` beginning at `now`.
    pub fn begin(state: UpdateState, to_hash: String, now: u64, message: String) -> UpdateStatus {
        UpdateStatus {
            state,
            to_hash,
            started_at: now,
            finished_at: None,
            failed: std::collections::BTreeSet::new(),
            done: std::collections::BTreeSet::new(),
            updated: 0,
            total: 0,
            message,
        }
    }

    /// It is (or was) a rollback.
    pub fn rolls_back(&self) -> bool {
        matches!(
            self.state,
            UpdateState::RollingBack | UpdateState::RollbackPaused | UpdateState::RolledBack
        )
    }
}

impl UpdateState {
    /// Still moving: the orchestrator replaces tasks.
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollingBack)
    }
}

impl std::fmt::Display for UpdateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (n, m) = (self.updated, self.total);
        match self.state {
            UpdateState::Updating => write!(f, "updating {n}/{m}")?,
            UpdateState::Paused => write!(f, "update paused {n}/{m}")?,
            UpdateState::RollingBack => write!(f, "rolling back {n}/{m}")?,
            UpdateState::RollbackPaused => write!(f, "rollback paused {n}/{m}")?,
            UpdateState::RolledBack => write!(f, "rolled back")?,
            UpdateState::Completed => write!(f, "update completed")?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl StackRecord {
    /// The record of a first deployment of `stack`: nothing recorded beside it yet (no
    /// files, scale, orphans, one-offs, restarts, or stopped services).
    pub fn new(stack: Stack) -> StackRecord {
        StackRecord {
            stack,
            files: Vec::new(),
            project_dir: String::new(),
            orphans: BTreeMap::new(),
            oneoffs: BTreeMap::new(),
            scale: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            contents: BTreeMap::new(),
            data: BTreeMap::new(),
            restarted: BTreeMap::new(),
            stopped: Vec::new(),
            previous: BTreeMap::new(),
            updates: BTreeMap::new(),
            source: None,
            taking_down: false,
        }
    }
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
    /// Since when (unix ms) its healthcheck has passed without a break: a rolling
    /// update's `monitor` counts from here for a service with a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_at: Option<u64>,
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

    /// What a task's status becomes when its agent reports `report`: the report, except
    /// that the state never moves back ([`TaskState::advance`]: a late report of an
    /// earlier state loses) and that a health already set stays (health is the health
    /// loop's to write, through [`TaskStatus::merge_health`]; a report only sets the
    /// first value, `starting` for a task that has a check).
    ///
    /// The store applies it to every batch an agent reports; a dispatcher applies the
    /// same rule to reports that come over the network.
    pub fn merge_report(&self, report: &TaskStatus) -> TaskStatus {
        let mut merged = report.clone();
        merged.state = Some(self.state().advance(report.state()));
        if self.health != Health::None {
            merged.health = self.health;
        }
        merged.healthy_at = self.healthy_at;
        merged
    }

    /// Records a health change from the health loop, seen at `now`: only while the
    /// task runs (a probe that finished after its container stopped says nothing about
    /// the task).
    pub fn merge_health(&mut self, health: Health, now: u64) {
        if self.state() == TaskState::Running {
            if health != Health::Healthy {
                self.healthy_at = None;
            } else if self.health != Health::Healthy || self.healthy_at.is_none() {
                self.healthy_at = Some(now);
            }
            self.health = health;
        }
    }

    /// Since when the task has been what a rolling update waits for: running, and
    /// healthy if it has a healthcheck. None while it is not.
    pub fn ready_since(&self) -> Option<u64> {
        if self.state() != TaskState::Running {
            return None;
        }
        match self.health {
            Health::None => self.started_at,
            Health::Healthy => self.healthy_at.or(self.started_at),
            Health::Starting | Health::Unhealthy => None,
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
    /// The node a `deploy.mode: global` service's task is made for (its id), kept for
    /// the task's life; `None` for every other task. Such a task gets `node` from the
    /// scheduler, only this one, and only once the node has room for its reservations
    /// (till then it is pending, with the reason, as any other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_node: Option<String>,
    /// The named generic resource units the scheduler gave it with its node, by kind
    /// (its container sees them in `DOCKER_RESOURCE_<KIND>`): recorded in the task, so a
    /// new leader knows which units are taken, and free again once the task has ended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generic_resources: BTreeMap<String, Vec<String>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: TaskState, health: Health, message: &str) -> TaskStatus {
        TaskStatus {
            state: Some(state),
            health,
            message: message.into(),
            ..TaskStatus::default()
        }
    }

    #[test]
    fn a_report_moves_state_forward_and_never_back() {
        use TaskState::*;
        // (stored, reported, merged)
        let cases = [
            (New, Preparing, Preparing),
            (Preparing, Running, Running),
            (Running, Failed, Failed),
            (Running, Shutdown, Shutdown),
            (Shutdown, Removed, Removed),
            // Late reports: a job's Preparing after its Running, a Running after a stop.
            (Running, Preparing, Running),
            (Shutdown, Running, Shutdown),
            (Removed, Shutdown, Removed),
            (Failed, Complete, Failed),
        ];
        for (stored, reported, merged) in cases {
            let got = status(stored, Health::None, "").merge_report(&status(
                reported,
                Health::None,
                "reported",
            ));
            assert_eq!(got.state(), merged, "{stored:?} + {reported:?}");
            // Everything else is the report's.
            assert_eq!(got.message, "reported", "{stored:?} + {reported:?}");
        }
    }

    #[test]
    fn a_report_without_a_state_keeps_the_stored_one() {
        let got = status(TaskState::Running, Health::None, "").merge_report(&TaskStatus::default());
        assert_eq!(got.state(), TaskState::Running);
    }

    #[test]
    fn a_report_sets_the_first_health_and_never_overwrites_one() {
        use Health::*;
        // (stored, reported, merged)
        let cases = [
            (None, Starting, Starting),
            (None, None, None),
            (Starting, None, Starting),
            (Healthy, Starting, Healthy),
            (Unhealthy, Healthy, Unhealthy),
        ];
        for (stored, reported, merged) in cases {
            let got = status(TaskState::Running, stored, "").merge_report(&status(
                TaskState::Running,
                reported,
                "",
            ));
            assert_eq!(got.health, merged, "{stored:?} + {reported:?}");
        }
    }

    #[test]
    fn health_is_recorded_only_while_the_task_runs() {
        for (state, recorded) in [
            (TaskState::Running, true),
            (TaskState::Starting, false),
            (TaskState::Failed, false),
            (TaskState::Shutdown, false),
        ] {
            let mut s = status(state, Health::Starting, "");
            s.merge_health(Health::Healthy, 7);
            assert_eq!(s.healthy_at.is_some(), recorded, "{state:?}");
            let want = if recorded {
                Health::Healthy
            } else {
                Health::Starting
            };
            assert_eq!(s.health, want, "{state:?}");
        }
    }
}

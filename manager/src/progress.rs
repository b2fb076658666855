//! How far a stack has come to running: what `berth up` waits on, per container.
//!
//! [`progress`] is a plain function of the store's state (DESIGN invariant 2), using the
//! orchestrator's own rules for what a slot should run ([`spec_hash`], [`replicas`])
//! and when a dependency can no longer be met ([`dependency_state`]), so that `up`
//! never disagrees with what the orchestrator does. It reads only the stack asked
//! about: a stack of 1,000 tasks is answered without copying the rest of the store.
//!
//! [`answer`] serves it as a long poll (`GET /v1/stacks/{name}/progress?wait=&after=`):
//! it answers at once when the store has moved past the version the caller last saw,
//! else when the store next changes or after [`LONG_POLL`], so a waiting CLI makes one
//! request per change instead of polling.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spec::task::{DesiredState, Health, Task, TaskState};

use crate::orchestrator::{dependency_state, replicas, spec_hash, DependencyState};
use crate::state::model::State;
use crate::state::store::Store;

/// How long [`answer`] waits for a change before it answers with the same version.
pub const LONG_POLL: Duration = Duration::from_secs(1);

/// Where a stack stands, as of one version of the store. As JSON:
///
/// ```json
/// {"version": 42, "deployed": true, "containers": [
///   {"name": "app-db-1", "service": "db", "state": "healthy"},
///   {"name": "app-web-1", "service": "web", "state": "could_not_start",
///    "message": "port 80 is in use"},
///   {"name": "app-api-1", "service": "api", "state": "dependency_failed",
///    "dependency": "migrate"}]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The store version this reflects: the `after` of the next long poll.
    pub version: u64,
    /// False when the stack is not deployed (it was taken down while `up` waited).
    pub deployed: bool,
    /// One per slot the stack wants running, services by name, slots in order; none
    /// of a service `berth stop` stopped.
    pub containers: Vec<ContainerProgress>,
    /// The rolling update of each service that has one (what `up` reports, and stops
    /// on when it pauses or rolls back).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub updates: BTreeMap<String, spec::task::UpdateStatus>,
}

/// One slot of a service: its container's name and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerProgress {
    /// `<stack>-<service>-<slot>`, as `ps` shows it.
    pub name: String,
    /// The service the slot is of.
    pub service: String,
    #[serde(flatten)]
    pub state: SlotState,
}

/// Where one slot stands, from not created to what `up` waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SlotState {
    /// No container yet: the orchestrator waits for its `depends_on` conditions.
    Waiting,
    /// No container, and there will be none: `dependency` had to complete
    /// successfully and failed.
    DependencyFailed { dependency: String },
    /// Its container is made but has not started.
    Starting,
    /// Its container started but is not yet what `up` waits for: running, and
    /// healthy when asked to wait for health.
    Pending,
    /// Its container runs (or ran).
    Started,
    /// Its container runs and its healthcheck passes (asked to wait for health, and
    /// the service has a healthcheck).
    Healthy,
    /// Its healthcheck fails (asked to wait for health).
    Unhealthy,
    /// Its container could not be made or started; `message` says why.
    CouldNotStart { message: String },
    /// No node of the cluster can run it now (`message`: why, per node); it is
    /// placed as soon as one can, so `up` does not wait for it.
    Unplaced { message: String },
}

impl SlotState {
    /// Whether `up` still waits for it (it may yet start, or become healthy).
    pub fn is_pending(&self) -> bool {
        matches!(
            self,
            SlotState::Waiting | SlotState::Starting | SlotState::Pending
        )
    }

    /// Whether the slot has a container that has not failed to start: one that was
    /// reported as unable to start before is no longer.
    pub fn has_live_container(&self) -> bool {
        matches!(
            self,
            SlotState::Starting
                | SlotState::Pending
                | SlotState::Started
                | SlotState::Healthy
                | SlotState::Unhealthy
        )
    }
}

/// The query of `GET /v1/stacks/{name}/progress`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressQuery {
    /// Count services with a healthcheck as up only once healthy (`up --wait`).
    #[serde(default)]
    pub wait: bool,
    /// The version the caller last saw: answer once the store is past it (or after
    /// [`LONG_POLL`]). None: answer at once.
    #[serde(default)]
    pub after: Option<u64>,
    /// Wait at most this long (milliseconds, capped at [`LONG_POLL`]): a caller with a
    /// deadline of its own (`up --wait-timeout`) is answered by then.
    #[serde(default)]
    pub max_wait_ms: Option<u64>,
}

/// Where stack `name` stands in `state`. `wait_healthy`: a service with a healthcheck
/// is up once healthy, not once started. Pure.
pub fn progress(state: &State, name: &str, wait_healthy: bool) -> Progress {
    let Some(deployed) = state.stacks.get(name) else {
        return Progress {
            version: state.version,
            deployed: false,
            containers: Vec::new(),
            updates: BTreeMap::new(),
        };
    };
    // The stack's tasks by service, read once: a slot's lookups stay within its
    // service, however many tasks the store holds.
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values().filter(|t| t.stack == name) {
        by_service.entry(t.service.as_str()).or_default().push(t);
    }
    let of = |service: &str| by_service.get(service).map(Vec::as_slice).unwrap_or(&[]);

    let mut containers = Vec::new();
    for (svc_name, svc) in &deployed.stack.services {
        if deployed.stopped.contains(svc_name) {
            continue;
        }
        let hash = spec_hash(deployed, svc);
        let wants_health = wait_healthy
            && svc
                .healthcheck
                .as_ref()
                .is_some_and(|h| !h.disable && h.test.first().is_some_and(|t| t != "NONE"));
        // Not created yet: its dependencies are not met, or one can no longer be.
        let not_created = || {
            let failed = svc.depends_on.iter().find(|(dep, d)| {
                let of_dep = of(dep)
                    .iter()
                    .copied()
                    .filter(|t| t.desired != DesiredState::Remove);
                dependency_state(of_dep, d.condition) == DependencyState::Failed
            });
            match failed {
                Some((dep, _)) => SlotState::DependencyFailed {
                    dependency: dep.clone(),
                },
                None => SlotState::Waiting,
            }
        };
        for slot in slots(state, deployed, svc_name, svc, of(svc_name)) {
            let current = of(svc_name)
                .iter()
                .filter(|t| t.slot == slot && t.spec_hash == hash)
                .filter(|t| t.desired == DesiredState::Running)
                .max_by_key(|t| t.generation);
            let (name, state) = match current {
                None => (format!("{name}-{svc_name}-{slot}"), not_created()),
                Some(t) => (t.name(), task_state(t, wants_health)),
            };
            containers.push(ContainerProgress {
                name,
                service: svc_name.clone(),
                state,
            });
        }
    }
    Progress {
        version: state.version,
        deployed: true,
        containers,
        updates: deployed.updates.clone(),
    }
}

/// The slots of a service `up` waits for: `1..=replicas`, or for a global service on
/// a cluster, one per node, the slots its tasks hold (the orchestrator numbers them
/// per node); slot 1 until it made any.
fn slots(
    state: &State,
    record: &spec::task::StackRecord,
    name: &str,
    service: &spec::model::Service,
    tasks: &[&Task],
) -> Vec<u32> {
    let global = service.deploy.as_ref().map(|d| d.mode) == Some(spec::model::DeployMode::Global);
    if !(global && state.cluster.is_some()) {
        return (1..=replicas(record, name, service)).collect();
    }
    let mut held: Vec<u32> = tasks
        .iter()
        .filter(|t| t.desired == DesiredState::Running)
        .map(|t| t.slot)
        .collect();
    held.sort_unstable();
    held.dedup();
    if held.is_empty() {
        held.push(1);
    }
    held
}

/// Where a slot's current task stands.
fn task_state(t: &Task, wants_health: bool) -> SlotState {
    if t.node.is_none() && t.status.state() == TaskState::New && !t.status.message.is_empty() {
        return SlotState::Unplaced {
            message: t.status.message.clone(),
        };
    }
    if t.status.never_started() {
        return SlotState::CouldNotStart {
            message: t.status.message.clone(),
        };
    }
    if t.status.started_at.is_none() {
        return SlotState::Starting;
    }
    let up = t.status.state() >= TaskState::Running;
    match (up, wants_health, t.status.health) {
        (true, false, _) => SlotState::Started,
        (true, true, Health::Healthy) => SlotState::Healthy,
        (_, true, Health::Unhealthy) => SlotState::Unhealthy,
        _ => SlotState::Pending,
    }
}

/// Stack `name`'s progress, once the store has moved past `query.after` (at once
/// without it), or when [`LONG_POLL`] has passed without a change.
pub async fn answer(store: &Store, name: &str, query: ProgressQuery) -> Progress {
    if let Some(after) = query.after {
        // Subscribed before the version is read, so no change falls in between.
        let mut watch = store.watch();
        let wait = query
            .max_wait_ms
            .map_or(LONG_POLL, |ms| Duration::from_millis(ms).min(LONG_POLL));
        let deadline = tokio::time::Instant::now() + wait;
        while store.read(|s| s.version) <= after {
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(Ok(())) => {}
                // The time is up, or the store is closing: answer with what it has.
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }
    store.read(|s| progress(s, name, query.wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_as_json() {
        let p = Progress {
            version: 42,
            deployed: true,
            containers: vec![
                ContainerProgress {
                    name: "app-db-1".into(),
                    service: "db".into(),
                    state: SlotState::Healthy,
                },
                ContainerProgress {
                    name: "app-web-1".into(),
                    service: "web".into(),
                    state: SlotState::CouldNotStart {
                        message: "port 80 is in use".into(),
                    },
                },
                ContainerProgress {
                    name: "app-api-1".into(),
                    service: "api".into(),
                    state: SlotState::DependencyFailed {
                        dependency: "migrate".into(),
                    },
                },
            ],
            updates: BTreeMap::new(),
        };
        let json = serde_json::to_value(&p).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"version": 42, "deployed": true, "containers": [
                {"name": "app-db-1", "service": "db", "state": "healthy"},
                {"name": "app-web-1", "service": "web", "state": "could_not_start",
                 "message": "port 80 is in use"},
                {"name": "app-api-1", "service": "api", "state": "dependency_failed",
                 "dependency": "migrate"},
            ]})
        );
        let back: Progress = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, p);
    }
}

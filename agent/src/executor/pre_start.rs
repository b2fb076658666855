//! A service's `pre_start` steps (init containers): each runs to completion, in order,
//! in an ephemeral container of its own, before the service's container is made.
//!
//! A step's container is the service's (its volumes and binds, networks, environment,
//! secrets, resources and security settings) with the step's changes: its image (the
//! service's by default), its command (else the image's; the entrypoint is always the
//! image's), its user and working directory (else the service's when it runs the
//! service's image, the image's otherwise), its variables over the service's, and
//! `privileged` as the step says. It publishes no ports, never serves its service's
//! DNS name, and is removed once it exited; a step that exits non-zero fails the task
//! with its exit code and the end of its output, and no service container is made.
//!
//! Once per service, as docker compose runs them: not again while a container of the
//! same service and definition runs on this node (a scale-up, a replica restarted
//! beside running ones). The replicas of a service starting together on a node take
//! turns ([`turn`]), so the first runs the steps and the others find it running. On a
//! cluster this holds per node: each node's first replica runs them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use spec::model::{PreStartHook, Service, Stack};
use spec::task::Task;

use super::{Executor, ExecutorError};
use crate::hooks::{HookError, Interruptible, Phase, OUTPUT_TAIL};
use crate::shim::{self, Status};

/// The bundle annotation holding a container's task's `spec_hash`.
pub(super) const SPEC_HASH_ANNOTATION: &str = "berth.spec-hash";

/// The task whose `pre_start` step container `id` is (`<task>.pre-start-<i>`), if it
/// is one.
pub fn pre_start_owner(id: &str) -> Option<&str> {
    let (task, index) = id.rsplit_once(".pre-start-")?;
    (!index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())).then_some(task)
}

/// One lock per `stack/service` with `pre_start` steps, for this process.
static TURNS: LazyLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = LazyLock::new(Default::default);

/// The lock the replicas of `task`'s service take turns with, from their steps to
/// their container's start; `None` for a service without steps.
pub(super) fn turn(task: &Task, service: &Service) -> Option<Arc<Mutex<()>>> {
    if service.pre_start.is_empty() {
        return None;
    }
    let mut turns = TURNS.lock().unwrap_or_else(PoisonError::into_inner);
    let key = format!("{}/{}", task.stack, task.service);
    Some(turns.entry(key).or_default().clone())
}

/// Whether `id` is a container of service `service` of `stack`
/// (`<stack>-<service>-<slot>.<generation>`, `spec::task::Task::make_id`).
fn is_replica(id: &str, stack: &str, service: &str) -> bool {
    let Some(rest) = id.strip_prefix(&format!("{stack}-{service}-")) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    rest.split_once('.')
        .is_some_and(|(slot, generation)| digits(slot) && digits(generation))
}

impl Executor {
    /// Runs the `pre_start` steps of `task`'s service, unless another container of the
    /// same service and definition runs on this node. Called in the service's turn.
    pub(super) fn pre_start(
        &self,
        task: &Task,
        stack: &Stack,
        service: &Service,
        env: &BTreeMap<String, String>,
        data: &BTreeMap<String, String>,
    ) -> Result<(), ExecutorError> {
        if service.pre_start.is_empty() || self.replica_runs(task) {
            return Ok(());
        }
        for (i, step) in service.pre_start.iter().enumerate() {
            self.pre_start_step(task, stack, service, env, data, i, step)?;
        }
        Ok(())
    }

    /// Whether a container of `task`'s service made from the same definition runs.
    fn replica_runs(&self, task: &Task) -> bool {
        let Ok(containers) = shim::list(&self.shim_root()) else {
            return false;
        };
        containers
            .iter()
            .filter(|c| c.id != task.id && c.status == Status::Running)
            .filter(|c| is_replica(&c.id, &task.stack, &task.service))
            .any(|c| {
                crate::runtime::Bundle::load(&c.bundle).is_ok_and(|b| {
                    b.spec
                        .annotations()
                        .as_ref()
                        .and_then(|a| a.get(SPEC_HASH_ANNOTATION))
                        == Some(&task.spec_hash)
                })
            })
    }

    #[allow(clippy::too_many_arguments)]
    fn pre_start_step(
        &self,
        task: &Task,
        stack: &Stack,
        service: &Service,
        env: &BTreeMap<String, String>,
        data: &BTreeMap<String, String>,
        index: usize,
        step: &PreStartHook,
    ) -> Result<(), ExecutorError> {
        let step_task = Task {
            // `pre_start_owner` reads it back.
            id: format!("{}.pre-start-{index}", task.id),
            ..task.clone()
        };
        let container = step_service(task, service, step, index);
        let started = self.try_start(&step_task, stack, &container, env, data, false);
        let result = match started {
            Err(e) => Err(ExecutorError::PreStart {
                service: task.service.clone(),
                index,
                source: Box::new(e),
            }),
            Ok(_) => {
                let (root, id) = (self.shim_root(), step_task.id.clone());
                let interruptible = Interruptible::new(&task.id, move || {
                    let _ = shim::kill(&root, &id, libc::SIGKILL);
                });
                let ended = shim::wait(&self.shim_root(), &step_task.id, None);
                match ended.map(|s| s.exit.map(|e| e.status())) {
                    _ if interruptible.interrupted() => {
                        Err(ExecutorError::Hook(HookError::Interrupted {
                            service: task.service.clone(),
                            phase: Phase::PreStart,
                            index,
                        }))
                    }
                    Ok(Some(0)) => Ok(()),
                    Ok(code) => Err(ExecutorError::Hook(HookError::Exited {
                        service: task.service.clone(),
                        phase: Phase::PreStart,
                        index,
                        command: step.command.clone().unwrap_or_default(),
                        // Its shim died: its end is unknown.
                        code: code.unwrap_or(-1),
                        output: self.output_tail(&step_task.id),
                    })),
                    Err(e) => Err(ExecutorError::PreStart {
                        service: task.service.clone(),
                        index,
                        source: Box::new(e.into()),
                    }),
                }
            }
        };
        // Done with it, whatever its end: its output is in the error.
        let _ = self.remove(&step_task, None, Some(Duration::ZERO));
        result
    }

    /// The last lines container `id` wrote, at most [`OUTPUT_TAIL`] bytes.
    fn output_tail(&self, id: &str) -> String {
        let mut lines = Vec::new();
        let opts = shim::LogOptions {
            follow: false,
            tail: Some(20),
        };
        let _ = shim::logs(&self.shim_root(), id, opts, &mut |entry| {
            lines.push(entry.log.trim_end().to_string());
            Ok(())
        });
        let text = lines.join("\n");
        let cut = text.len().saturating_sub(OUTPUT_TAIL);
        let cut = (cut..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[cut..].to_string()
    }
}

/// The service a step's container is made from: the service with the step's changes,
/// and nothing that only the service's own containers should have.
fn step_service(task: &Task, service: &Service, step: &PreStartHook, index: usize) -> Service {
    let mut s = service.clone();
    if let Some(image) = &step.image {
        s.image = Some(image.clone());
        // Another image: its own user and working directory, unless the step says.
        s.user = None;
        s.working_dir = None;
    }
    s.entrypoint = None;
    s.command = step.command.clone();
    if step.user.is_some() {
        s.user = step.user.clone();
    }
    if step.working_dir.is_some() {
        s.working_dir = step.working_dir.clone();
    }
    s.privileged = step.privileged;
    for (k, v) in &step.environment {
        s.environment.insert(k.clone(), v.clone());
    }
    // Its own name, so that it does not take the replica's; no ports, no terminal,
    // no hooks, no restarts: it runs once, to its end.
    s.container_name = Some(format!("{}-{}-pre-start-{index}", task.stack, task.service));
    s.ports.clear();
    s.tty = false;
    s.stdin_open = false;
    s.restart = None;
    s.healthcheck = None;
    s.pre_start.clear();
    s.post_start.clear();
    s.pre_stop.clear();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_told_by_their_id() {
        assert!(is_replica("p-web-1.1", "p", "web"));
        assert!(is_replica("p-web-12.3", "p", "web"));
        // Another service whose name starts the same, and a step's own container.
        assert!(!is_replica("p-web-x-1.1", "p", "web"));
        assert!(!is_replica("p-web-1.1.pre-start-0", "p", "web"));
        assert!(!is_replica("q-web-1.1", "p", "web"));
        assert_eq!(pre_start_owner("p-web-1.1.pre-start-0"), Some("p-web-1.1"));
        assert_eq!(pre_start_owner("p-web-1.1"), None);
        assert_eq!(pre_start_owner("p-web-1.1.pre-start-x"), None);
    }

    #[test]
    fn a_step_runs_the_service_with_its_changes() {
        let task = Task {
            id: "p-web-1.1".into(),
            stack: "p".into(),
            service: "web".into(),
            slot: 1,
            generation: 1,
            spec_hash: "h".into(),
            desired: spec::task::DesiredState::Running,
            status: Default::default(),
            created_at: 0,
            restarts: 0,
            stop_grace_ms: None,
            deps_seen: BTreeMap::new(),
            node: None,
            for_node: None,
            generic_resources: Default::default(),
        };
        let service = Service {
            image: Some("app".into()),
            entrypoint: Some(vec!["/entry".into()]),
            command: Some(vec!["serve".into()]),
            user: Some("app".into()),
            working_dir: Some("/srv".into()),
            environment: BTreeMap::from([("A".into(), Some("service".into()))]),
            ports: vec![serde_json::from_value(
                serde_json::json!({"target": 80, "protocol": "tcp"}),
            )
            .unwrap_or_else(|e| panic!("{e}"))],
            post_start: vec![Default::default()],
            ..Default::default()
        };
        let step = PreStartHook {
            command: Some(vec!["migrate".into()]),
            environment: BTreeMap::from([("A".into(), Some("step".into()))]),
            ..Default::default()
        };
        let s = step_service(&task, &service, &step, 0);
        assert_eq!(s.image.as_deref(), Some("app"));
        assert_eq!(s.entrypoint, None);
        assert_eq!(s.command, Some(vec!["migrate".to_string()]));
        assert_eq!(s.user.as_deref(), Some("app"));
        assert_eq!(s.working_dir.as_deref(), Some("/srv"));
        assert_eq!(s.environment["A"].as_deref(), Some("step"));
        assert!(s.ports.is_empty() && s.post_start.is_empty());
        assert_eq!(s.container_name.as_deref(), Some("p-web-pre-start-0"));

        let other = PreStartHook {
            image: Some("tools".into()),
            ..Default::default()
        };
        let s = step_service(&task, &service, &other, 1);
        assert_eq!(s.image.as_deref(), Some("tools"));
        assert_eq!((s.command, s.user, s.working_dir), (None, None, None));
    }
}

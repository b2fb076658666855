//! The container work the worker's loops need, as a trait: [`Executor`] does it on this
//! node's runtime; tests use a fake that records what it was asked.
//!
//! Every method blocks (on the disk, the kernel, a stop's grace period): the loops call
//! `start`, `stop`, `remove`, `probe` and `release` on blocking threads. What goes wrong
//! in a start, stop or removal is not an error here but the task's status: its state
//! and message say it (the executor's typed [`crate::executor::ExecutorError`] becomes
//! that message).

use std::collections::BTreeMap;
use std::time::Duration;

use spec::model::{Healthcheck, Service, Stack};
use spec::task::{Task, TaskStatus};

use crate::executor::Executor;

pub trait Containers: Clone + Send + Sync + 'static {
    /// Creates and starts the container of `task` from `service` of `stack`, with the
    /// variables its secrets and configs read (`env`) and the content of those that
    /// come from files (`data`: `secrets.<key>` -> base64, the stack record's); the
    /// status it ended in.
    fn start(
        &self,
        task: &Task,
        stack: &Stack,
        service: &Service,
        env: &BTreeMap<String, String>,
        data: &BTreeMap<String, String>,
    ) -> TaskStatus;

    /// Stops the container of `task` (its stop signal, `grace` or the service's grace
    /// period, then SIGKILL), keeping it.
    fn stop(&self, task: &Task, service: Option<&Service>, grace: Option<Duration>) -> TaskStatus;

    /// Stops and deletes the container of `task`.
    fn remove(&self, task: &Task, service: Option<&Service>, grace: Option<Duration>)
        -> TaskStatus;

    /// What the container of `task` is doing now, as a status; `None` when it has no
    /// container (never started, or removed).
    fn observe(&self, task: &Task) -> Option<TaskStatus>;

    /// Frees what an ended container held on the network (address, ports, DNS name).
    fn release(&self, id: &str);

    /// The healthcheck of `service` (its own, else its image's), or `None`.
    fn healthcheck(&self, service: &Service) -> Option<Healthcheck>;

    /// Runs one health probe in container `id`: true if `command` exits 0 in time.
    fn probe(&self, id: &str, command: &[String], timeout: Duration) -> bool;

    /// Marks container `id` healthy or not: only a healthy one answers for its
    /// service in DNS and gets new connections on the host ports it publishes.
    fn set_healthy(&self, id: &str, healthy: bool);

    /// Takes container `id` out of its service's DNS answers and its host ports'
    /// backends for good: called before it is stopped or removed, so that no new
    /// lookup or connection reaches it during its stop grace period.
    fn leave(&self, id: &str);

    /// The ids of every container on this node.
    fn list(&self) -> Vec<String>;

    /// Removes a container no task knows, at once.
    fn remove_stray(&self, id: &str);

    /// The start of task `id` is still running but the task is to stop: end what it
    /// waits on that has no end of its own (a lifecycle hook), so the start ends and
    /// the stop can run. Nothing by default.
    fn interrupt_start(&self, _id: &str) {}
}

impl Containers for Executor {
    fn start(
        &self,
        task: &Task,
        stack: &Stack,
        service: &Service,
        env: &BTreeMap<String, String>,
        data: &BTreeMap<String, String>,
    ) -> TaskStatus {
        Executor::start(self, task, stack, service, env, data)
    }

    fn stop(&self, task: &Task, service: Option<&Service>, grace: Option<Duration>) -> TaskStatus {
        Executor::stop(self, task, service, grace)
    }

    fn remove(
        &self,
        task: &Task,
        service: Option<&Service>,
        grace: Option<Duration>,
    ) -> TaskStatus {
        Executor::remove(self, task, service, grace)
    }

    fn observe(&self, task: &Task) -> Option<TaskStatus> {
        Executor::observe(self, task)
    }

    fn release(&self, id: &str) {
        Executor::release(self, id)
    }

    fn healthcheck(&self, service: &Service) -> Option<Healthcheck> {
        Executor::healthcheck(self, service)
    }

    fn probe(&self, id: &str, command: &[String], timeout: Duration) -> bool {
        Executor::probe(self, id, command, timeout)
    }

    fn set_healthy(&self, id: &str, healthy: bool) {
        Executor::set_healthy(self, id, healthy)
    }

    fn leave(&self, id: &str) {
        Executor::leave(self, id)
    }

    fn list(&self) -> Vec<String> {
        Executor::containers(self)
    }

    fn remove_stray(&self, id: &str) {
        Executor::remove_stray(self, id)
    }

    fn interrupt_start(&self, id: &str) {
        crate::hooks::interrupt(id)
    }
}

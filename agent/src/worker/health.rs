//! The health loop: runs every running task's healthcheck on its schedule and reports
//! health changes. [`HealthChecks`] is the pure core (which tasks are checked, which
//! probes are due, what a result changes; the time is given), over
//! [`crate::health::Checker`]; [`run_health`] is the shell that runs the probes on
//! blocking threads.

use std::collections::BTreeMap;
use std::time::Duration;

use spec::model::{Healthcheck, Service};
use spec::task::{Health, TaskState};

use super::{Assignments, Containers, StatusReporter, View};
use crate::health::{probe_command, Checker};
use spec::task::now_ms;

/// The health checks of a node's running tasks.
#[derive(Debug, Default)]
pub struct HealthChecks {
    checks: BTreeMap<String, Probing>,
}

#[derive(Debug)]
struct Probing {
    checker: Checker,
    command: Vec<String>,
    /// A probe runs now.
    busy: bool,
}

/// A probe to run: `command` in container `id`, killed after `timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub id: String,
    pub command: Vec<String>,
    pub timeout: Duration,
}

impl HealthChecks {
    /// Forgets tasks that no longer run and starts checking the running tasks that have
    /// a check (`healthcheck` finds it: the service's or its image's). Returns the
    /// health of every new check whose task does not say it yet (`starting`).
    pub fn track(
        &mut self,
        view: &View,
        now: u64,
        healthcheck: impl Fn(&Service) -> Option<Healthcheck>,
    ) -> Vec<(String, Health)> {
        let mut changes = Vec::new();
        self.checks.retain(|id, _| {
            view.tasks
                .get(id)
                .is_some_and(|t| t.status.state() == TaskState::Running)
        });
        for task in view.tasks.values() {
            if task.status.state() != TaskState::Running || self.checks.contains_key(&task.id) {
                continue;
            }
            let Some((_, service)) = view.service_of(task) else {
                continue;
            };
            let Some(check) = healthcheck(service) else {
                continue;
            };
            let Some(command) = probe_command(&check) else {
                continue;
            };
            // What the task says already (a restarted daemon) is where it goes on from.
            let started = task.status.started_at.unwrap_or(now);
            let checker = Checker::resume(&check, started, task.status.health);
            if task.status.health != checker.status() {
                changes.push((task.id.clone(), checker.status()));
            }
            self.checks.insert(
                task.id.clone(),
                Probing {
                    checker,
                    command,
                    busy: false,
                },
            );
        }
        changes
    }

    /// The probes due at `now`; each is marked running until its result is recorded.
    pub fn due(&mut self, now: u64) -> Vec<Probe> {
        let mut due = Vec::new();
        for (id, p) in self.checks.iter_mut() {
            if p.busy || p.checker.next_probe() > now {
                continue;
            }
            p.busy = true;
            due.push(Probe {
                id: id.clone(),
                command: p.command.clone(),
                timeout: p.checker.timeout(),
            });
        }
        due
    }

    /// Records the result of a probe of `id` that finished at `at`. Returns the task's
    /// health if it changed, or if the view does not say it yet.
    pub fn record(&mut self, view: &View, id: &str, healthy: bool, at: u64) -> Option<Health> {
        let p = self.checks.get_mut(id)?;
        p.busy = false;
        let before = p.checker.status();
        let after = p.checker.record(healthy, at);
        let stale = view.tasks.get(id).is_some_and(|t| t.status.health != after);
        (before != after || stale).then_some(after)
    }

    /// How long the loop may sleep at `now` before a probe is due: between 5 ms and a
    /// second (it also wakes at every change of the view and every probe's end).
    pub fn next_wake(&self, now: u64) -> Duration {
        let ms = self
            .checks
            .values()
            .filter(|p| !p.busy)
            .map(|p| p.checker.next_probe())
            .min()
            .map_or(1000, |at| at.saturating_sub(now).clamp(5, 1000));
        Duration::from_millis(ms)
    }

    /// The tasks being checked.
    pub fn tracked(&self) -> impl Iterator<Item = &str> {
        self.checks.keys().map(String::as_str)
    }
}

/// Runs the health loop forever: every running task's healthcheck on its schedule,
/// health changes marked on the network (DNS answers only with healthy containers)
/// and reported.
pub async fn run_health<A: Assignments, R: StatusReporter, C: Containers>(
    assignments: A,
    reporter: R,
    containers: C,
) {
    let mut checks = HealthChecks::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool, u64)>();
    let mut changes = assignments.changes();
    let mut arrived: Vec<(String, bool, u64)> = Vec::new();
    loop {
        let view = assignments.view();
        let now = now_ms();
        let mut health = checks.track(&view, now, |s| containers.healthcheck(s));
        for probe in checks.due(now) {
            let (c, tx) = (containers.clone(), tx.clone());
            tokio::task::spawn_blocking(move || {
                let healthy = c.probe(&probe.id, &probe.command, probe.timeout);
                let _ = tx.send((probe.id, healthy, now_ms()));
            });
        }
        while let Ok(msg) = rx.try_recv() {
            arrived.push(msg);
        }
        for (id, healthy, at) in arrived.drain(..) {
            if let Some(h) = checks.record(&view, &id, healthy, at) {
                health.push((id, h));
            }
        }
        for (id, h) in &health {
            containers.set_healthy(id, *h == Health::Healthy);
        }
        if !health.is_empty() {
            if let Err(e) = reporter.report_health(&health) {
                eprintln!("berth daemon: recording health: {e}");
            }
        }
        let next = checks.next_wake(now_ms());
        tokio::select! {
            _ = changes.changed() => {}
            Some(msg) = rx.recv() => arrived.push(msg),
            _ = tokio::time::sleep(next) => {}
        }
    }
}

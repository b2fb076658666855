//! The agent loop's shell: for every task of the node's [`View`], run what [`decide`]
//! says (start, stop, remove: each on a blocking thread, one at a time per task),
//! observe the rest, and report every status change in batches.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use spec::task::{DesiredState, Task, TaskState, TaskStatus};
use tokio::sync::mpsc;

use super::decide::{self, decide, Action};
use super::{Assignments, Containers, StatusReporter, View};
use spec::task::now_ms;

/// How often the agent looks at every container even when its view did not change:
/// how soon a container that exited or was removed behind berth's back is noticed.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(500);

/// One action on one task's container, run on a blocking thread.
type Job<C> = Box<dyn FnOnce(&C) -> TaskStatus + Send>;

/// The agent loop of one node: [`TaskLoop::run`] forever, or [`TaskLoop::pass`] and
/// [`TaskLoop::finished`] one step at a time (tests).
#[derive(Debug)]
pub struct TaskLoop<A, R, C> {
    assignments: A,
    reporter: R,
    containers: C,
    /// Tasks with an action running; cleared when its result is reported, so that no
    /// pass acts on a task between its job's end and the report of what it did.
    busy: HashSet<String>,
    done_tx: mpsc::UnboundedSender<(String, TaskStatus)>,
    done_rx: mpsc::UnboundedReceiver<(String, TaskStatus)>,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Statuses reported (observations, and `preparing` for each start).
    pub reported: usize,
    /// Actions started on blocking threads.
    pub started: usize,
}

impl<A: Assignments, R: StatusReporter, C: Containers> TaskLoop<A, R, C> {
    pub fn new(assignments: A, reporter: R, containers: C) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        TaskLoop {
            assignments,
            reporter,
            containers,
            busy: HashSet::new(),
            done_tx,
            done_rx,
        }
    }

    /// Runs forever: a pass at every change of the view, every finished batch of
    /// actions, and every [`OBSERVE_EVERY`].
    pub async fn run(mut self) {
        let mut changes = self.assignments.changes();
        // When running containers were last looked at. Not at every store change: during
        // an `up` of N services the store changes about N times, and looking at every
        // running container each time (its state.json, /proc) made `up` quadratic.
        let mut observed: Option<Instant> = None;
        loop {
            let observe = observed.is_none_or(|t| t.elapsed() >= OBSERVE_EVERY);
            if observe {
                observed = Some(Instant::now());
            }
            self.pass(observe);
            // Wait for a change of the view, a finished job, or the observation tick.
            let tick =
                OBSERVE_EVERY.saturating_sub(observed.map_or(Duration::ZERO, |t| t.elapsed()));
            tokio::select! {
                _ = changes.changed() => {}
                _ = self.finished() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// One pass over the view: starts the actions it needs (on blocking threads; needs
    /// a tokio runtime), observes running containers when `observe`, and reports what
    /// it saw in one batch.
    pub fn pass(&mut self, observe: bool) -> Pass {
        let view = self.assignments.view();
        let mut reports = Vec::new();
        let mut started = 0;
        for task in view.tasks.values() {
            let found = view.service_of(task);
            let busy = self.busy.contains(&task.id);
            if busy && task.desired != DesiredState::Running {
                // A start still running (its hooks have no end of their own) is ended
                // so that the stop can run: a no-op for any other job.
                self.containers.interrupt_start(&task.id);
            }
            let Some(action) = decide(task, found.is_some(), busy, observe, || {
                container_runs(&self.containers, task)
            }) else {
                continue;
            };
            if action == Action::Observe {
                let seen = decide::observed(task, self.containers.observe(task), now_ms());
                if seen.release {
                    // Ended or gone: its address, ports and DNS name are free.
                    let (c, id) = (self.containers.clone(), task.id.clone());
                    tokio::task::spawn_blocking(move || c.release(&id));
                }
                if let Some(status) = seen.report {
                    reports.push((task.id.clone(), status));
                }
                continue;
            }
            let Some(job) = job(&view, task, action) else {
                continue;
            };
            self.busy.insert(task.id.clone());
            started += 1;
            if let Some(first) = decide::first_report(task, action) {
                reports.push((task.id.clone(), first));
            }
            let (c, tx, id) = (
                self.containers.clone(),
                self.done_tx.clone(),
                task.id.clone(),
            );
            let name = task.name();
            tokio::task::spawn_blocking(move || {
                let status = job(&c);
                // `ps`, `events` and `up` show it from the store; the log says it too.
                if action == Action::Start && status.never_started() {
                    eprintln!(
                        "berth daemon: container {name} ({id}) could not start: {}",
                        status.message
                    );
                }
                let _ = tx.send((id, status));
            });
        }
        let reported = reports.len();
        self.report(&reports);
        Pass { reported, started }
    }

    /// Waits for a running action to finish, then reports its result with those of
    /// every other action finished by then (one batch). Never returns while no action
    /// runs.
    pub async fn finished(&mut self) -> usize {
        let Some(first) = self.done_rx.recv().await else {
            // Unreachable: the loop holds a sender.
            return std::future::pending().await;
        };
        let mut batch = vec![first];
        while let Ok(more) = self.done_rx.try_recv() {
            batch.push(more);
        }
        for (id, _) in &batch {
            self.busy.remove(id);
        }
        self.report(&batch);
        batch.len()
    }

    /// How many tasks have an action running.
    pub fn busy(&self) -> usize {
        self.busy.len()
    }

    fn report(&self, reports: &[(String, TaskStatus)]) {
        if reports.is_empty() {
            return;
        }
        if let Err(e) = self.reporter.report(reports) {
            eprintln!("berth daemon: recording task status: {e}");
        }
    }
}

/// The job that does `action` on the container of `task`; `None` for a start whose
/// service is gone (`decide` does not ask for one).
fn job<C: Containers>(view: &View, task: &Task, action: Action) -> Option<Job<C>> {
    let found = view.service_of(task);
    let grace = task.stop_grace_ms.map(Duration::from_millis);
    let t = task.clone();
    match action {
        Action::Start => {
            let (record, service) = found?;
            let (stack, service) = (record.stack.clone(), service.clone());
            let (env, data) = (record.secret_env.clone(), record.data.clone());
            Some(Box::new(move |c: &C| {
                c.start(&t, &stack, &service, &env, &data)
            }))
        }
        // Out of DNS and the port backends first, then the stop signal: the grace
        // period is for the requests it has, not for new ones.
        Action::Stop => {
            let service = found.map(|f| f.1.clone());
            Some(Box::new(move |c: &C| {
                c.leave(&t.id);
                c.stop(&t, service.as_ref(), grace)
            }))
        }
        Action::Remove => {
            let service = found.map(|f| f.1.clone());
            Some(Box::new(move |c: &C| {
                c.leave(&t.id);
                c.remove(&t, service.as_ref(), grace)
            }))
        }
        Action::Observe => None,
    }
}

/// Whether the container of `task` runs now.
fn container_runs<C: Containers>(containers: &C, task: &Task) -> bool {
    containers
        .observe(task)
        .is_some_and(|s| s.state() == TaskState::Running)
}

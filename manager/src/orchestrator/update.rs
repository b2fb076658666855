//! The rolling updater: which slots of a service may be replaced now, and where the
//! service's update stands. A plain function of the service, its tasks, its recorded
//! [`UpdateStatus`] and `now`, as the rest of the orchestrator (DESIGN invariant 2):
//! no timers of its own. What it cannot do yet (a `delay`, a `monitor` still running)
//! it asks to be woken for, and the next pass looks again.
//!
//! The rules, after Swarm's updater (swarmkit `manager/orchestrator/update`), with its
//! known traps closed:
//! - a slot is *outdated* while the task it keeps runs an older definition, *in flight*
//!   from the moment it is being replaced until its new task has been ready (running,
//!   and healthy if it has a healthcheck) for `monitor`, then *updated*;
//! - at most `parallelism` slots are in flight (0: all at once), and a new one starts
//!   only `delay` after the last slot finished;
//! - a new task that fails, or turns unhealthy, before it is updated is a *failure* of
//!   its slot (each slot counted once); past `max_failure_ratio` of the slots,
//!   `failure_action` applies: `pause` stops starting slots (`up` starts it again),
//!   `rollback` returns the service to its previous definition (which then rolls by
//!   `rollback_config`), `continue` goes on. A failed slot is no longer in flight, so
//!   a failing task cannot hold the update forever (Swarm's never times out);
//! - `start-first` starts the new task beside the old one and stops the old one only
//!   once the new one is ready; where the two would clash (a host-mode port, a fixed
//!   container name or address) it is done as `stop-first`, and the status says so.
//!
//! A service without `update_config` on a single host is replaced all at once, as
//! Compose does; on a cluster, Swarm's defaults apply (one at a time, `monitor` 5 s,
//! pause on failure).

use spec::model::{FailureAction, Service, UpdateConfig, UpdateOrder};
use spec::task::{DesiredState, Health, Task, TaskState, UpdateState, UpdateStatus};
use std::collections::BTreeSet;

use super::Nodes;

/// How one service rolls: its `update_config` (or `rollback_config` while rolling back)
/// with Swarm's defaults for what it leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub parallelism: u32,
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    pub monitor_ms: u64,
    pub max_failure_ratio: f64,
    pub order: UpdateOrder,
}

impl Policy {
    /// The policy of `service` (rolling back: its rollback policy). None: the service
    /// does not roll, it is replaced all at once (a single host, no `update_config`).
    pub fn of(service: &Service, rolling_back: bool, cluster: bool) -> Option<Policy> {
        let deploy = service.deploy.as_ref();
        let update = deploy.and_then(|d| d.update_config.as_ref());
        let rollback = deploy.and_then(|d| d.rollback_config.as_ref());
        let config = if rolling_back { rollback } else { update };
        let rolls = cluster || update.is_some() || config.is_some();
        if !rolls {
            return None;
        }
        let c = config.cloned().unwrap_or_default();
        Some(Policy::from_config(&c))
    }

    fn from_config(c: &UpdateConfig) -> Policy {
        Policy {
            parallelism: c.parallelism.unwrap_or(1),
            delay_ms: c.delay.map_or(0, |d| d.as_millis() as u64),
            failure_action: c.failure_action.unwrap_or(FailureAction::Pause),
            monitor_ms: c.monitor.unwrap_or(spec::DEFAULT_MONITOR).as_millis() as u64,
            max_failure_ratio: c.max_failure_ratio.unwrap_or(0.0),
            order: c.order.unwrap_or(UpdateOrder::StopFirst),
        }
    }
}

/// One slot of the service: its tasks, oldest first.
#[derive(Debug)]
pub struct Slot<'a> {
    pub slot: u32,
    pub history: &'a [&'a Task],
}

/// What the updater decided for one service.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decision {
    /// Outdated slots that may be replaced now.
    pub replace: BTreeSet<u32>,
    /// Replace by starting the new task first.
    pub start_first: bool,
    /// The status to record, when it changed (`Some(None)`: forget it).
    pub status: Option<UpdateStatus>,
    /// Roll back to the previous definition, with this status.
    pub rollback: bool,
    /// Look again at this time (a delay or a monitor runs out).
    pub wake_at: Option<u64>,
}

/// Where a slot stands in an update to `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stand {
    /// Its task runs an older definition.
    Outdated,
    /// Being replaced, or its new task is not yet past `monitor`; `Some(t)`: ready at
    /// t, updated at t + monitor.
    InFlight(Option<u64>),
    /// Its new task has been ready past `monitor` since this time (ready + monitor).
    Updated(u64),
    /// Its new task failed within `monitor` (why).
    Failed,
    /// Nothing to update (no task: the orchestrator creates one of the new definition).
    Empty,
}

/// The task a slot keeps: the newest live one of the definition `hash`, else the
/// newest live one. The same rule as the orchestrator's (`plan_slot`).
pub fn kept<'a>(live: &[&'a Task], hash: &str) -> Option<&'a Task> {
    live.iter()
        .rev()
        .find(|t| t.spec_hash == hash)
        .or(live.last())
        .copied()
}

/// The update a slot is looked at in: to `hash`, begun at `since`.
struct At<'a> {
    hash: &'a str,
    since: u64,
    monitor_ms: u64,
    now: u64,
    nodes: &'a Nodes,
    /// Slots already counted as updated.
    done: &'a BTreeSet<u32>,
}

/// Where `slot` stands in the update `at`; a failure's text goes to `why`.
fn stand(slot: &Slot, at: &At, why: &mut String) -> Stand {
    let At {
        hash,
        since,
        monitor_ms,
        now,
        nodes,
        done: counted,
    } = *at;
    let live: Vec<&Task> = slot
        .history
        .iter()
        .copied()
        .filter(|t| t.desired == DesiredState::Running && !nodes.lost(t))
        .collect();
    // A task of this update that failed before it was updated fails the slot.
    let failed = slot
        .history
        .iter()
        .find(|t| t.spec_hash == hash && t.created_at >= since && failed_early(t, monitor_ms));
    match kept(&live, hash) {
        Some(t) if t.spec_hash != hash => Stand::Outdated,
        // Once updated, what becomes of it is no longer the update's (a later failure
        // is a restart's business).
        Some(t) if counted.contains(&slot.slot) && t.created_at >= since => Stand::Updated(
            t.status
                .ready_since()
                .map_or(since, |r| r.saturating_add(monitor_ms)),
        ),
        Some(t) => {
            if let Some(f) = failed {
                if t.created_at < since || !done(t, monitor_ms, now) {
                    *why = failure_text(f);
                    return Stand::Failed;
                }
            }
            if t.created_at < since && !t.status.state().is_terminal() {
                // It ran this definition before the update began.
                return Stand::Updated(since);
            }
            if t.status.state() == TaskState::Complete {
                return Stand::Updated(t.status.finished_at.unwrap_or(since));
            }
            match t.status.ready_since() {
                Some(r) if r.saturating_add(monitor_ms) <= now => {
                    Stand::Updated(r.saturating_add(monitor_ms))
                }
                ready => Stand::InFlight(ready.map(|r| r.saturating_add(monitor_ms))),
            }
        }
        // Its old task removed (stop-first) and the new one not made yet: in flight.
        None if slot
            .history
            .last()
            .is_some_and(|t| t.spec_hash != hash && t.desired == DesiredState::Remove) =>
        {
            Stand::InFlight(None)
        }
        None => match failed {
            Some(f) => {
                *why = failure_text(f);
                Stand::Failed
            }
            None => Stand::Empty,
        },
    }
}

static NONE: BTreeSet<u32> = BTreeSet::new();

/// Updated: ready for `monitor` by `now`.
fn done(t: &Task, monitor_ms: u64, now: u64) -> bool {
    t.status
        .ready_since()
        .is_some_and(|r| r.saturating_add(monitor_ms) <= now)
}

/// A task that ended badly, or turned unhealthy, before it was ready for `monitor`.
fn failed_early(t: &Task, monitor_ms: u64) -> bool {
    let s = &t.status;
    match s.state() {
        TaskState::Rejected => true,
        TaskState::Failed => match (s.started_at, s.finished_at) {
            (Some(start), Some(end)) => end.saturating_sub(start) < monitor_ms,
            _ => true,
        },
        TaskState::Running => s.health == Health::Unhealthy,
        _ => false,
    }
}

fn failure_text(t: &Task) -> String {
    let s = &t.status;
    let what = match s.state() {
        TaskState::Running => "is unhealthy".to_string(),
        _ if !s.message.is_empty() => s.message.clone(),
        _ => match s.exit_code {
            Some(code) => format!("exited with code {code}"),
            None => "failed".to_string(),
        },
    };
    format!("task {} {what}", t.name())
}

/// What the updater looks at for one service.
#[derive(Debug)]
pub struct Input<'a> {
    pub service: &'a Service,
    /// Its definition before the last change, if it has one: what older tasks may run.
    pub previous: Option<&'a Service>,
    /// How it rolls; None: it does not, it is replaced all at once.
    pub policy: Option<&'a Policy>,
    /// Its update's status as recorded.
    pub status: Option<&'a UpdateStatus>,
    /// The hash of its current definition.
    pub hash: &'a str,
    pub slots: &'a [Slot<'a>],
}

/// The updater's decision for one service at `now`.
pub fn decide(input: &Input, nodes: &Nodes, now: u64) -> Decision {
    let Input {
        service,
        previous,
        policy,
        status,
        hash,
        slots,
    } = *input;
    let mut d = Decision::default();
    // An update begins when a service that rolls has a slot of an older definition
    // and no status for this one.
    let current = status.filter(|s| s.to_hash == hash);
    let Some(policy) = policy else {
        // Not rolling: everything at once. A rollback (`berth rollback`) is still
        // followed to its end, for `ls` and `up --wait`.
        d.replace = slots.iter().map(|s| s.slot).collect();
        if let Some(s) = current.filter(|s| s.state.in_progress()) {
            let mut why = String::new();
            let at = At {
                hash,
                since: s.started_at,
                monitor_ms: 0,
                now,
                nodes,
                done: &s.done,
            };
            let stands: Vec<Stand> = slots.iter().map(|sl| stand(sl, &at, &mut why)).collect();
            if stands
                .iter()
                .all(|st| matches!(st, Stand::Updated(_) | Stand::Empty | Stand::Failed))
            {
                let mut next = s.clone();
                next.state = finished(s.state);
                next.finished_at = Some(now);
                next.updated = slots.len() as u32;
                next.total = slots.len() as u32;
                d.status = Some(next);
            }
        }
        return d;
    };
    let since = current.map_or(now, |s| s.started_at);
    let mut why = String::new();
    let at = At {
        hash,
        since,
        monitor_ms: policy.monitor_ms,
        now,
        nodes,
        done: current.map_or(&NONE, |s| &s.done),
    };
    let stands: Vec<(u32, Stand)> = slots
        .iter()
        .map(|s| (s.slot, stand(s, &at, &mut why)))
        .collect();
    let outdated: Vec<u32> = stands
        .iter()
        .filter(|(_, s)| *s == Stand::Outdated)
        .map(|(slot, _)| *slot)
        .collect();
    let mut status = match current {
        Some(s) => s.clone(),
        None if outdated.is_empty() => return d,
        None => UpdateStatus::begin(UpdateState::Updating, hash.to_string(), now, String::new()),
    };
    d.start_first = policy.order == UpdateOrder::StartFirst;
    if d.start_first {
        // The old tasks' definition matters as much: one that holds a host-mode port
        // keeps it until it goes.
        let clash =
            spec::start_first_clash(service).or_else(|| previous.and_then(spec::start_first_clash));
        if let Some(why) = clash {
            d.start_first = false;
            if status.message.is_empty() {
                status.message = format!("start-first done as stop-first: {why}");
            }
        }
    }
    for (slot, s) in &stands {
        match s {
            Stand::Failed => {
                status.failed.insert(*slot);
            }
            // Counted once it is past `monitor` in this update (not a task that ran
            // the definition before the update began).
            Stand::Updated(at) if *at > status.started_at => {
                status.done.insert(*slot);
            }
            _ => {}
        }
    }
    status.total = slots.len() as u32;
    status.updated = stands
        .iter()
        .filter(|(_, s)| matches!(s, Stand::Updated(_)))
        .count() as u32;
    let in_flight = stands
        .iter()
        .filter(|(_, s)| matches!(s, Stand::InFlight(_)))
        .count() as u32;
    for (_, s) in &stands {
        if let Stand::InFlight(Some(at)) = s {
            d.wake_at = Some(d.wake_at.map_or(*at, |w: u64| w.min(*at)));
        }
    }

    // Past the failure ratio: the failure action.
    let total = status.total.max(1) as f64;
    let over = status.failed.len() as f64 / total > policy.max_failure_ratio;
    if over && status.state.in_progress() {
        let reason = format!(
            "{} of {} tasks failed ({why})",
            status.failed.len(),
            status.total
        );
        match (status.state, policy.failure_action) {
            (_, FailureAction::Continue) => {}
            (UpdateState::Updating, FailureAction::Rollback) => {
                status.message = reason;
                d.rollback = true;
            }
            (UpdateState::Updating, FailureAction::Pause) => {
                status.state = UpdateState::Paused;
                status.message = reason;
            }
            // A rollback that fails pauses (Swarm's rollback has no rollback).
            (_, _) => {
                status.state = UpdateState::RollbackPaused;
                status.message = reason;
            }
        }
    }
    if d.rollback {
        d.status = Some(status);
        return d;
    }

    if status.state.in_progress() {
        // Which outdated slots start now: up to `parallelism` in flight, `delay` after
        // the last slot finished.
        let budget = match policy.parallelism {
            0 => u32::MAX,
            p => p.saturating_sub(in_flight),
        };
        let last_done = stands
            .iter()
            .filter_map(|(_, s)| match s {
                Stand::Updated(at) if *at > status.started_at => Some(*at),
                _ => None,
            })
            .max();
        let free_at = last_done.map_or(0, |at| at.saturating_add(policy.delay_ms));
        if budget > 0 && !outdated.is_empty() {
            if now >= free_at || policy.delay_ms == 0 {
                d.replace = outdated.iter().copied().take(budget as usize).collect();
            } else {
                d.wake_at = Some(d.wake_at.map_or(free_at, |w| w.min(free_at)));
            }
        }
        if outdated.is_empty() && in_flight == 0 {
            status.state = finished(status.state);
            status.finished_at = Some(now);
            if !status.failed.is_empty() && status.message.is_empty() {
                status.message = format!(
                    "{} of {} tasks failed ({why})",
                    status.failed.len(),
                    status.total
                );
            }
        }
    }
    if current != Some(&status) {
        d.status = Some(status);
    }
    d
}

fn finished(state: UpdateState) -> UpdateState {
    match state {
        UpdateState::RollingBack => UpdateState::RolledBack,
        UpdateState::Updating => UpdateState::Completed,
        other => other,
    }
}

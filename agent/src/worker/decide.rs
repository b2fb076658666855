//! The agent loop's decisions, as plain functions over plain data: given a task (and
//! what the loop knows of it), which action its container needs, and what an
//! observation of it means. No clock, no disk, no container: [`super::TaskLoop`] runs
//! what these decide.

use spec::task::{DesiredState, Task, TaskState, TaskStatus};

/// What the container of one task needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create and start it (the task should run and has not started). Reported as
    /// `preparing` at once, then as what the start ended in.
    Start,
    /// Stop it, keeping it (the task should be shut down and may still run).
    Stop,
    /// Stop and delete it (the task should be removed and is not yet).
    Remove,
    /// Look at it and report what changed (it should run and was started).
    Observe,
}

/// The action the container of `task` needs, if any:
/// - `has_service`: its service is in its stack (a task whose service is gone is
///   never started);
/// - `busy`: an action on it is still running (one at a time per task);
/// - `observe_due`: it is time to look at running containers again;
/// - `container_live`: whether its container runs now, asked only for a task that
///   should be shut down but already is by its state (an observation: it may have
///   been started again behind the store's back, e.g. across a restart).
pub fn decide(
    task: &Task,
    has_service: bool,
    busy: bool,
    observe_due: bool,
    container_live: impl FnOnce() -> bool,
) -> Option<Action> {
    if busy {
        return None;
    }
    let state = task.status.state();
    match task.desired {
        DesiredState::Running if state == TaskState::New => has_service.then_some(Action::Start),
        DesiredState::Shutdown if !state.is_terminal() || container_live() => Some(Action::Stop),
        DesiredState::Remove if state != TaskState::Removed => Some(Action::Remove),
        DesiredState::Running
            if observe_due && matches!(state, TaskState::Starting | TaskState::Running) =>
        {
            Some(Action::Observe)
        }
        _ => None,
    }
}

/// What to report at once when `action` begins on `task`: `preparing` for a start,
/// so that `ps` and `up` see the start under way.
pub fn first_report(task: &Task, action: Action) -> Option<TaskStatus> {
    (action == Action::Start).then(|| TaskStatus {
        state: Some(TaskState::Preparing),
        ..task.status.clone()
    })
}

/// What an observation of a running task means.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Its status, if it differs from the stored one.
    pub report: Option<TaskStatus>,
    /// It ended or vanished: what it held on the network (address, ports, DNS name)
    /// is free.
    pub release: bool,
}

/// Reads an observation `seen` of `task` (`None`: it has no container) at `now`.
pub fn observed(task: &Task, seen: Option<TaskStatus>, now: u64) -> Observed {
    let seen = seen.unwrap_or_else(|| vanished(task, now));
    Observed {
        release: seen.state().is_terminal(),
        report: (seen != task.status).then_some(seen),
    }
}

/// A task whose container is gone though the task should run: removed behind berth's
/// back. It counts as failed for the restart policy.
pub fn vanished(task: &Task, now: u64) -> TaskStatus {
    TaskStatus {
        state: Some(TaskState::Removed),
        message: "its container was removed outside berth".into(),
        pid: None,
        finished_at: Some(now),
        ..task.status.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(desired: DesiredState, state: Option<TaskState>) -> Task {
        Task {
            id: "app-web-1.1".into(),
            stack: "app".into(),
            service: "web".into(),
            slot: 1,
            generation: 1,
            spec_hash: String::new(),
            desired,
            status: TaskStatus {
                state,
                ..TaskStatus::default()
            },
            created_at: 0,
            restarts: 0,
            stop_grace_ms: None,
            deps_seen: Default::default(),
            node: None,
            for_node: None,
            generic_resources: Default::default(),
        }
    }

    #[test]
    fn the_action_for_each_desired_and_observed_state() {
        use Action::*;
        use DesiredState as D;
        use TaskState as S;
        // (desired, state, has_service, busy, observe_due, container_live, action)
        type Case = (D, Option<S>, bool, bool, bool, bool, Option<Action>);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            (D::Running, None, true, false, false, false, Some(Start)),
            (D::Running, Some(S::New), true, false, true, false, Some(Start)),
            // Its service is gone: nothing to start it from.
            (D::Running, None, false, false, true, false, None),
            // Busy: never a second action at once.
            (D::Running, None, true, true, true, false, None),
            (D::Shutdown, Some(S::Running), true, true, true, true, None),
            (D::Remove, Some(S::Running), true, true, true, true, None),
            // Started: looked at only when it is time.
            (D::Running, Some(S::Running), true, false, true, false, Some(Observe)),
            (D::Running, Some(S::Starting), true, false, true, false, Some(Observe)),
            (D::Running, Some(S::Running), true, false, false, false, None),
            // Being prepared (a job runs) or ended: the orchestrator's to replace.
            (D::Running, Some(S::Preparing), true, false, true, false, None),
            (D::Running, Some(S::Failed), true, false, true, false, None),
            (D::Running, Some(S::Complete), true, false, true, false, None),
            (D::Shutdown, Some(S::Running), true, false, false, false, Some(Stop)),
            (D::Shutdown, Some(S::Preparing), false, false, false, false, Some(Stop)),
            (D::Shutdown, None, true, false, false, false, Some(Stop)),
            // Shut down by its state, yet its container runs: stop it again.
            (D::Shutdown, Some(S::Shutdown), true, false, false, true, Some(Stop)),
            (D::Shutdown, Some(S::Shutdown), true, false, false, false, None),
            (D::Shutdown, Some(S::Failed), true, false, true, false, None),
            (D::Remove, Some(S::Running), true, false, false, false, Some(Remove)),
            (D::Remove, Some(S::Shutdown), false, false, false, false, Some(Remove)),
            (D::Remove, None, true, false, false, false, Some(Remove)),
            (D::Remove, Some(S::Removed), true, false, true, true, None),
        ];
        for &(desired, state, has_service, busy, due, live, want) in cases {
            let t = task(desired, state);
            let got = decide(&t, has_service, busy, due, || live);
            assert_eq!(
                got, want,
                "desired {desired:?}, state {state:?}, service {has_service}, busy {busy}, \
                 due {due}, live {live}"
            );
        }
    }

    #[test]
    fn whether_the_container_runs_is_asked_only_of_a_shut_down_task_to_shut_down() {
        for (desired, state) in [
            (DesiredState::Running, None),
            (DesiredState::Running, Some(TaskState::Running)),
            (DesiredState::Shutdown, Some(TaskState::Running)),
            (DesiredState::Remove, Some(TaskState::Removed)),
        ] {
            let t = task(desired, state);
            decide(&t, true, false, true, || {
                panic!("asked for {desired:?} {state:?}")
            });
        }
    }

    #[test]
    fn a_start_is_reported_as_preparing_first_and_nothing_else_is() {
        let t = task(DesiredState::Running, None);
        let first = first_report(&t, Action::Start).expect("a start reports");
        assert_eq!(first.state, Some(TaskState::Preparing));
        for action in [Action::Stop, Action::Remove, Action::Observe] {
            assert_eq!(first_report(&t, action), None, "{action:?}");
        }
    }

    #[test]
    fn an_observation_reports_changes_and_frees_what_ended() {
        let running = task(DesiredState::Running, Some(TaskState::Running));
        // Unchanged: nothing to report.
        let same = observed(&running, Some(running.status.clone()), 7);
        assert_eq!(
            same,
            Observed {
                report: None,
                release: false
            }
        );
        // Exited: reported, released.
        let exited = TaskStatus {
            state: Some(TaskState::Failed),
            exit_code: Some(1),
            ..running.status.clone()
        };
        let seen = observed(&running, Some(exited.clone()), 7);
        assert_eq!(
            seen,
            Observed {
                report: Some(exited),
                release: true
            }
        );
        // Gone: removed outside berth, failed for the restart policy.
        let gone = observed(&running, None, 7);
        assert!(gone.release);
        let report = gone.report.expect("a vanished container is reported");
        assert_eq!(report.state, Some(TaskState::Removed));
        assert_eq!(report.message, "its container was removed outside berth");
        assert_eq!(report.finished_at, Some(7));
    }
}

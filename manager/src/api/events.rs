//! `GET /v1/events`: the changes of containers' states, as `berth events` shows them,
//! computed from two states of the store ([`events_between`], pure) and streamed.

use axum::body::Body;
use axum::extract::State as AxState;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::state::model::State;

/// A change of a container's state, as `berth events` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Unix milliseconds.
    pub time: u64,
    /// `create`, `start`, `die`, `health_status: healthy`, `destroy`, ...
    pub action: String,
    pub stack: String,
    pub service: String,
    pub container: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// On `die` of a container that never started: why it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A service's rolling update moved (action `update`; no container): where it
    /// stands now, as `ps` says it (`updating 2/4`, `rolled back: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<String>,
    /// A git-ops source acted on the stack (action `gitops`; no container): what it
    /// did and why (`deploy from stacks: services.web: image: a -> b`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops: Option<String>,
}

/// The events between two states of the store.
pub fn events_between(before: &State, after: &State, now: u64) -> Vec<Event> {
    use spec::task::{Health, TaskState};
    let mut out = gitops_events(before, after, now);
    // Rolling updates first: an update's step comes before the tasks it changes.
    for (name, record) in &after.stacks {
        let was = before.stacks.get(name).map(|r| &r.updates);
        for (service, status) in &record.updates {
            // What a reader sees change (not a failed slot's bookkeeping alone).
            let text = status.to_string();
            if was.and_then(|w| w.get(service)).map(|s| s.to_string()) != Some(text.clone()) {
                out.push(Event {
                    time: now,
                    action: "update".to_string(),
                    stack: name.clone(),
                    service: service.clone(),
                    container: String::new(),
                    id: String::new(),
                    exit_code: None,
                    error: None,
                    update: Some(text),
                    gitops: None,
                });
            }
        }
    }
    let mut push = |t: &spec::task::Task, action: &str| {
        out.push(Event {
            time: now,
            action: action.to_string(),
            stack: t.stack.clone(),
            service: t.service.clone(),
            container: t.name(),
            id: t.id.clone(),
            exit_code: if action == "die" {
                t.status.exit_code
            } else {
                None
            },
            error: (action == "die" && t.status.never_started())
                .then(|| t.status.message.clone())
                .filter(|m| !m.is_empty()),
            update: None,
            gitops: None,
        })
    };
    for (id, t) in &after.tasks {
        let old = before.tasks.get(id);
        let (was, is) = (old.map(|o| o.status.state()), t.status.state());
        if old.is_none() {
            push(t, "create");
        }
        if was != Some(is) {
            let was_live = was.is_some_and(|w| !w.is_terminal());
            if is == TaskState::Running {
                push(t, "start");
            } else if is.is_terminal() && was_live {
                push(t, "die");
            }
            if is == TaskState::Removed {
                push(t, "destroy");
            }
        }
        let was_health = old.map(|o| o.status.health).unwrap_or_default();
        if t.status.health != was_health && t.status.health != Health::None {
            let word = match t.status.health {
                Health::Healthy => "healthy",
                Health::Unhealthy => "unhealthy",
                _ => "starting",
            };
            push(t, &format!("health_status: {word}"));
        }
    }
    for (id, t) in &before.tasks {
        if !after.tasks.contains_key(id) && t.status.state() != TaskState::Removed {
            push(t, "destroy");
        }
    }
    out
}

/// The runs git-ops recorded between two states: each new run of a source's stack is
/// one event, saying what was done and why.
fn gitops_events(before: &State, after: &State, now: u64) -> Vec<Event> {
    let mut out = Vec::new();
    for (name, source) in &after.gitops {
        for (stack, st) in &source.stacks {
            let seen = before
                .gitops
                .get(name)
                .and_then(|s| s.stacks.get(stack))
                .and_then(|s| s.runs.last())
                .map(|r| (r.at, r.action.clone()));
            // Runs are kept newest last; the new ones are those after the last seen.
            let from = seen
                .and_then(|last| {
                    st.runs
                        .iter()
                        .position(|r| (r.at, r.action.clone()) == last)
                })
                .map_or(0, |i| i + 1);
            let new = &st.runs[from.min(st.runs.len())..];
            for run in new {
                let mut text = format!("{} from {name}", run.action);
                if !run.reasons.is_empty() {
                    text.push_str(": ");
                    text.push_str(&run.reasons.join("; "));
                }
                out.push(Event {
                    time: if run.at > 0 { run.at } else { now },
                    action: "gitops".to_string(),
                    stack: stack.clone(),
                    service: String::new(),
                    container: String::new(),
                    id: String::new(),
                    exit_code: None,
                    error: None,
                    update: None,
                    gitops: Some(text),
                });
            }
        }
    }
    out
}

pub(crate) async fn events(AxState(cx): AxState<Ctx>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(256);
    let store = cx.store.clone();
    tokio::spawn(async move {
        let mut watch = store.watch();
        let mut before = store.snapshot();
        while watch.changed().await.is_ok() {
            let after = store.snapshot();
            for e in events_between(&before, &after, spec::task::now_ms()) {
                let line = serde_json::to_string(&e).unwrap_or_default() + "\n";
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            before = after;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::new(Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::task::{Task, TaskState, TaskStatus};

    fn task(status: TaskStatus) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": "s-web-1.1", "stack": "s", "service": "web", "slot": 1, "generation": 1,
            "spec_hash": "h", "desired": "running", "created_at": 0,
        }))
        .map(|t: Task| Task { status, ..t })
        .expect("task")
    }

    fn state(status: TaskStatus) -> State {
        let mut s = State::default();
        s.tasks.insert("s-web-1.1".into(), task(status));
        s
    }

    /// Each new run of a git-ops source is one event, saying what and why; a state
    /// with the same runs gives none.
    #[test]
    fn git_ops_runs_are_events() {
        use crate::state::gitops::{Run, Source, SourceKind, StackState};
        let run = |at: u64, action: &str| Run {
            at,
            action: action.into(),
            reasons: vec!["services.web: image: a -> b".into()],
            digest: String::new(),
            commit: String::new(),
        };
        let with_runs = |runs: Vec<Run>| {
            let mut s = State::default();
            let mut stacks = std::collections::BTreeMap::new();
            stacks.insert(
                "web".to_string(),
                StackState {
                    runs,
                    ..Default::default()
                },
            );
            let kind = SourceKind::Dir { path: "/s".into() };
            s.gitops.insert(
                "src".into(),
                Source {
                    stacks,
                    ..Source::new("src", kind, 0)
                },
            );
            s
        };
        let before = with_runs(vec![run(1, "deploy")]);
        let after = with_runs(vec![run(1, "deploy"), run(2, "redeploy")]);
        let events = events_between(&before, &after, 9);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].action, "gitops");
        assert_eq!(events[0].stack, "web");
        assert_eq!(
            events[0].gitops.as_deref(),
            Some("redeploy from src: services.web: image: a -> b")
        );
        assert!(events_between(&after, &after, 9).is_empty());
    }

    /// The `die` of a container that could not start says why; one that ran and
    /// exited gives its exit code instead.
    #[test]
    fn die_events_carry_why_a_container_never_started() {
        let preparing = TaskStatus {
            state: Some(TaskState::Preparing),
            ..Default::default()
        };
        let cases = [
            (
                TaskState::Rejected,
                None,
                None,
                Some("bind source /x does not exist"),
            ),
            (TaskState::Failed, None, None, Some("exec /nope: ENOENT")),
            (TaskState::Failed, Some(5), Some(1), None),
        ];
        for (to, started_at, exit_code, error) in cases {
            let after = TaskStatus {
                state: Some(to),
                message: error.unwrap_or("exited with code 1").into(),
                started_at,
                exit_code,
                ..Default::default()
            };
            let events = events_between(&state(preparing.clone()), &state(after), 9);
            let die = events
                .iter()
                .find(|e| e.action == "die")
                .unwrap_or_else(|| panic!("no die in {events:?}"));
            assert_eq!(die.error.as_deref(), error, "{to:?} {started_at:?}");
            assert_eq!(die.exit_code, exit_code);
        }
    }
}

//! The HTTP API (axum), served on the daemon's unix socket and on the cluster port: the
//! manager's one HTTP boundary (DESIGN invariant 8: nothing else knows HTTP or JSON).
//! Handlers check what a request names, turn it into a typed command and call a plain
//! function ([`crate::stacks`] for the stack verbs, [`crate::cluster`] for the cluster's,
//! in [`cluster`]); what the manager cannot do itself (read a container's log, delete a
//! volume) it asks of the node through [`NodeAgent`].
//!
//! Routes (all JSON):
//! - `GET /v1/ping`
//! - `GET /v1/state`: stacks and tasks
//! - `PUT /v1/stacks/{name}`: deploy ([`UpRequest`] -> [`UpResponse`])
//! - `DELETE /v1/stacks/{name}?volumes=&timeout=`: take down; returns once every
//!   container of the stack is gone ([`DownResponse`])
//! - `POST /v1/stacks/{name}/{stop|start|restart|rm|kill}` ([`ServicesRequest`])
//! - `POST /v1/stacks/{name}/runs` ([`RunRequest`] -> the one-off's name), and
//!   `DELETE /v1/stacks/{name}/run/{key}` to remove it (`berth run --rm`)
//! - `GET /v1/tasks/{id}/{top|stats|ports}`: a container's processes, its memory and
//!   CPU, its published ports
//! - `GET /v1/events`: newline-delimited [`Event`]s, streamed as tasks change
//! - `GET /v1/tasks/{id}/logs?follow=&tail=`: newline-delimited [`LogLine`]s, streamed
//! - the cluster's routes (`/v1/cluster`, `/v1/nodes`, `/v1/dispatcher/...`): see
//!   [`cluster`]
//!
//! Every name a request carries (the stack in the path, the names in a deployed
//! record, a service, a task id) is checked against Compose's rules
//! (`spec::names`) before anything uses it, and refused with 400 naming the field:
//! these names become container ids, cgroup names and paths under the state
//! directory.

pub mod cluster;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use spec::model::Stack;

use crate::stacks::{self, RunRequest, ServicesRequest, UpRequest, UpResponse};
use crate::state::model::State;
use crate::state::store::{Store, StoreError};

/// What the API needs from the node it runs on: what lives on the node and not in the
/// store (a container's log and processes, its signals, the stack's networks and
/// volumes). The daemon implements it over the agent, so the manager never depends on
/// the agent.
pub trait NodeAgent: Send + Sync + 'static {
    /// Calls `sink` with each log line of container `task`, following new lines while
    /// `follow` and the container runs; stops early when `sink` returns false.
    fn logs(
        &self,
        task: &str,
        follow: bool,
        tail: Option<usize>,
        sink: &mut dyn FnMut(LogLine) -> bool,
    ) -> Result<(), String>;

    /// Sends `signal` (a name or number) to the main process of container `task`.
    fn kill(&self, task: &str, signal: &str) -> Result<(), String>;

    /// Freezes or thaws a container's processes.
    fn freeze(&self, task: &str, frozen: bool) -> Result<(), String>;

    /// A container's processes and resource use, as JSON (`top`, `stats`).
    fn inspect(&self, task: &str, what: &str) -> Result<serde_json::Value, String>;

    /// Deletes the stack's networks (not external ones); returns their names.
    fn remove_networks(&self, stack: &Stack) -> Result<Vec<String>, String>;

    /// Deletes the stack's named volumes that it does not mark external; returns their
    /// names.
    fn remove_volumes(&self, stack: &Stack) -> Result<Vec<String>, String>;
}

/// One log line, as the API streams it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DownQuery {
    #[serde(default)]
    pub volumes: bool,
    /// Seconds to wait for each container to stop before SIGKILL.
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DownResponse {
    pub removed_containers: Vec<String>,
    #[serde(default)]
    pub removed_networks: Vec<String>,
    pub removed_volumes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub tail: Option<usize>,
}

/// An API error: a status and a message for the user.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(skip)]
    status: u16,
    pub error: String,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status: status.as_u16(),
            error: error.into(),
        }
    }
}

/// The stack name of a request's path: Compose's project name rule.
fn check_stack_name(name: &str) -> Result<(), ApiError> {
    spec::names::check_project_name(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("stack name: {e}")))
}

/// A service, container or one-off name of a request (`field` says which).
fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    spec::names::check_resource_name(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{field}: {e}")))
}

impl From<spec::names::NameError> for ApiError {
    fn from(e: spec::names::NameError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Rejected(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

#[derive(Clone)]
struct Ctx {
    store: Arc<Store>,
    node: Arc<dyn NodeAgent>,
}

/// The API's routes over `store`, asking `node` for what lives on the node.
pub fn router(store: Arc<Store>, node: Arc<dyn NodeAgent>) -> Router {
    Router::new()
        .route("/v1/ping", get(|| async { "ok" }))
        .route("/v1/state", get(state))
        .route("/v1/stacks/{name}", put(up).delete(down))
        .route("/v1/stacks/{name}/{verb}", post(services_verb))
        .route(
            "/v1/stacks/{name}/run/{key}",
            axum::routing::delete(remove_run),
        )
        .route("/v1/stacks/{name}/runs", post(run))
        .route("/v1/tasks/{id}/logs", get(logs))
        .route("/v1/events", get(events))
        .route("/v1/tasks/{id}/{what}", get(inspect))
        .with_state(Ctx { store, node })
}

async fn state(AxState(cx): AxState<Ctx>) -> Json<State> {
    Json(redacted(cx.store.snapshot()))
}

/// The state as the API shows it: without the cluster's secrets (the CA key and the
/// join tokens), which only managers' own code reads from the store. An admin or a
/// member of the socket's group sees everything else.
pub fn redacted(mut state: State) -> State {
    if let Some(c) = state.cluster.as_mut() {
        c.ca_key = String::new();
        c.worker_token = String::new();
        c.manager_token = String::new();
    }
    state
}

async fn up(
    AxState(cx): AxState<Ctx>,
    Path(name): Path<String>,
    Json(req): Json<UpRequest>,
) -> Result<Json<UpResponse>, ApiError> {
    check_stack_name(&name)?;
    spec::names::check_record(&req.record)?;
    if req.record.stack.name != name {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the stack is named {:?}, not {name:?}",
                req.record.stack.name
            ),
        ));
    }
    let resp = cx.store.update(|s| Ok(stacks::up(s, &name, &req)))?;
    Ok(Json(resp))
}

async fn down(
    AxState(cx): AxState<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<DownQuery>,
) -> Result<Json<DownResponse>, ApiError> {
    // A stack of a bad name that a berth before these checks stored can still be
    // taken down: `down` uses the name only to find its records, and the agent
    // refuses the bad container ids themselves.
    if !cx.store.read(|s| s.stacks.contains_key(&name)) {
        check_stack_name(&name)?;
    }
    let grace = q.timeout.map(|t| t.saturating_mul(1000));
    let Some(stacks::Down { record, containers }) = stacks::down(&cx.store, &name, grace).await?
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no stack named {name:?} is deployed (berth ls lists them)"),
        ));
    };
    let mut resp = DownResponse {
        removed_containers: containers,
        ..DownResponse::default()
    };
    if let Some(record) = &record {
        // Networks go once their containers have, unless another deployment of the
        // same name came back meanwhile.
        let node = cx.node.clone();
        let stack = record.stack.clone();
        resp.removed_networks = tokio::task::spawn_blocking(move || node.remove_networks(&stack))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    }
    if let (true, Some(record)) = (q.volumes, record) {
        let node = cx.node.clone();
        resp.removed_volumes =
            tokio::task::spawn_blocking(move || node.remove_volumes(&record.stack))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    }
    Ok(Json(resp))
}

async fn services_verb(
    AxState(cx): AxState<Ctx>,
    Path((name, verb)): Path<(String, String)>,
    Json(req): Json<ServicesRequest>,
) -> Result<Json<Vec<String>>, ApiError> {
    check_stack_name(&name)?;
    for svc in &req.services {
        check_name("services", svc)?;
    }
    let done = cx
        .store
        .update(|s| stacks::services(s, &name, &verb, &req.services))?;
    if verb == "pause" || verb == "unpause" {
        let targets = cx.store.read(|s| stacks::running(s, &name, &done));
        let (node, frozen) = (cx.node.clone(), verb == "pause");
        tokio::task::spawn_blocking(move || {
            targets.iter().try_for_each(|id| node.freeze(id, frozen))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    if verb == "kill" {
        let signal = req.signal.clone().unwrap_or_else(|| "KILL".into());
        let targets = cx.store.read(|s| stacks::live(s, &name, &done));
        let node = cx.node.clone();
        tokio::task::spawn_blocking(move || {
            targets.iter().try_for_each(|id| node.kill(id, &signal))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    Ok(Json(done))
}

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
}

/// The events between two states of the store.
pub fn events_between(before: &State, after: &State, now: u64) -> Vec<Event> {
    use spec::task::{Health, TaskState};
    let mut out = Vec::new();
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

async fn events(AxState(cx): AxState<Ctx>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(256);
    let store = cx.store.clone();
    tokio::spawn(async move {
        let mut watch = store.watch();
        let mut before = store.snapshot();
        while watch.changed().await.is_ok() {
            let after = store.snapshot();
            for e in events_between(&before, &after, crate::now_ms()) {
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

async fn logs(
    AxState(cx): AxState<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    check_name("task id", &id)?;
    if !cx.store.read(|s| s.tasks.contains_key(&id)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task {id:?}"),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(256);
    let node = cx.node.clone();
    tokio::task::spawn_blocking(move || {
        let result = node.logs(&id, q.follow, q.tail, &mut |line| {
            let text = serde_json::to_string(&line).unwrap_or_default() + "\n";
            tx.blocking_send(Ok(text)).is_ok()
        });
        if let Err(e) = result {
            let line = LogLine {
                time: String::new(),
                stream: "error".into(),
                line: e,
            };
            let _ = tx.blocking_send(Ok(serde_json::to_string(&line).unwrap_or_default() + "\n"));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Response::new(Body::from_stream(stream)))
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::UnixListener,
    store: Arc<Store>,
    node: Arc<dyn NodeAgent>,
) -> std::io::Result<()> {
    axum::serve(listener, router(store, node)).await
}

async fn run(
    AxState(cx): AxState<Ctx>,
    Path(name): Path<String>,
    Json(req): Json<RunRequest>,
) -> Result<Json<String>, ApiError> {
    check_stack_name(&name)?;
    check_name("service", &req.service)?;
    if let Some(definition) = &req.definition {
        spec::names::check_service("definition", definition)?;
    }
    let key = format!("{}-run-{:06x}", req.service, crate::now_ms() % 0x100_0000);
    let created = cx.store.update(|s| stacks::run(s, &name, &key, &req))?;
    Ok(Json(created))
}

async fn remove_run(
    AxState(cx): AxState<Ctx>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<bool>, ApiError> {
    check_stack_name(&name)?;
    check_name("one-off container", &key)?;
    let removed = cx
        .store
        .update(|s| Ok(stacks::remove_run(s, &name, &key)))?;
    Ok(Json(removed))
}

async fn inspect(
    AxState(cx): AxState<Ctx>,
    Path((id, what)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_name("task id", &id)?;
    if !["top", "stats", "ports"].contains(&what.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such view {what:?}: top, stats or ports"),
        ));
    }
    if !cx.store.read(|s| s.tasks.contains_key(&id)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task {id:?}"),
        ));
    }
    let node = cx.node.clone();
    let value = tokio::task::spawn_blocking(move || node.inspect(&id, &what))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    Ok(Json(value))
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

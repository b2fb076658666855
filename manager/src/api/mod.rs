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
//! - [`stacks`]: `PUT /v1/stacks/{name}`: deploy ([`crate::stacks::UpRequest`] ->
//!   [`crate::stacks::UpResponse`])
//! - `DELETE /v1/stacks/{name}?volumes=&timeout=`: take down; returns once every
//!   container of the stack is gone ([`stacks::DownResponse`])
//! - `POST /v1/stacks/{name}/{stop|start|restart|rm|kill}`
//!   ([`crate::stacks::ServicesRequest`])
//! - `GET /v1/stacks/{name}/progress?wait=&after=&max_wait_ms=`: how far the stack
//!   has come to running, per container, as a long poll ([`crate::progress`])
//! - `POST /v1/stacks/{name}/runs` ([`crate::stacks::RunRequest`] -> the one-off's
//!   name), and `DELETE /v1/stacks/{name}/run/{key}` to remove it (`berth run --rm`)
//! - [`tasks`]: `GET /v1/tasks/{id}/{top|stats|ports}`: a container's processes, its
//!   memory and CPU, its published ports
//! - `GET /v1/tasks/{id}/logs?follow=&tail=`: newline-delimited [`LogLine`]s, streamed
//! - [`exec`]: `POST /v1/tasks/{id}/exec`: a command in the container, its stdio over
//!   an HTTP/1.1 upgrade
//! - [`events`]: `GET /v1/events`: newline-delimited [`events::Event`]s, streamed as
//!   tasks change
//! - the cluster's routes (`/v1/cluster`, `/v1/nodes`, `/v1/dispatcher/...`): see
//!   [`cluster`]
//! - [`images`]: `GET /v1/cluster/images/manifest?ref=` and
//!   `GET /v1/cluster/images/blobs/{digest}`: this node's images, for other nodes
//!   (their own router, [`images::router`], over the [`images::NodeImages`] seam; on
//!   every node's cluster port only); and `GET /v1/cluster/images/holders?ref=`: which
//!   nodes hold an image, for nodes and the CLI ([`images::holders_router`], over the
//!   [`images::ImageHolders`] seam; on managers)
//! - [`node`]: `/v1/node/tasks/{id}/...`: a node's own endpoints (logs, kill, freeze,
//!   top/stats/ports, exec) for the managers, which ask them of the node a task runs
//!   on (their own router, on every node's cluster port)
//!
//! Every name a request carries (the stack in the path, the names in a deployed
//! record, a service, a task id) is checked against Compose's rules
//! (`spec::names`) before anything uses it, and refused with 400 naming the field:
//! these names become container ids, cgroup names and paths under the state
//! directory.

pub mod cluster;
pub mod dispatcher;
pub mod events;
pub mod exec;
pub mod images;
pub mod node;
pub mod stacks;
pub mod tasks;

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use spec::model::Stack;

use crate::state::model::State;
use crate::state::store::{Store, StoreError};

/// What the API needs from the nodes: what lives on a node and not in the store (a
/// container's log and processes, its signals, exec, the stack's networks and
/// volumes). The daemon implements it over the agent, so the manager never depends on
/// the agent; on a cluster its implementation finds the node a task runs on and asks
/// that node's own endpoints ([`node`]) when it is another.
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

    /// Starts `spec` in container `task`; once it runs, its session's byte stream
    /// ([`exec`]'s frames).
    fn exec(&self, task: &str, spec: exec::ExecSpec) -> exec::Starting;

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

/// An API error: a status and a message for the user.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(skip)]
    status: u16,
    pub error: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status: status.as_u16(),
            error: error.into(),
        }
    }
}

/// The stack name of a request's path: Compose's project name rule.
pub(crate) fn check_stack_name(name: &str) -> Result<(), ApiError> {
    spec::names::check_project_name(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("stack name: {e}")))
}

/// A service, container or one-off name of a request (`field` says which).
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
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

/// What every handler gets: the store, the node it runs on, and what it knows of the
/// cluster's nodes.
#[derive(Clone)]
pub(crate) struct Ctx {
    store: Arc<Store>,
    node: Arc<dyn NodeAgent>,
    facts: NodeFacts,
}

/// The orchestrator's facts about the nodes of the state it is given (which are down,
/// where global services go): a cluster's leader knows them from heartbeats; a single
/// host has none ([`Nodes::default`]).
pub type NodeFacts = Arc<dyn Fn(&State) -> crate::orchestrator::Nodes + Send + Sync>;

/// The API's routes over `store`, asking `node` for what lives on the node (a single
/// host's: no node facts).
pub fn router(store: Arc<Store>, node: Arc<dyn NodeAgent>) -> Router {
    router_with(store, node, Arc::new(|_: &State| Default::default()))
}

/// The API's routes, with the cluster's node facts for `up --dry-run`'s placements.
pub fn router_with(store: Arc<Store>, node: Arc<dyn NodeAgent>, facts: NodeFacts) -> Router {
    Router::new()
        .route("/v1/ping", get(|| async { "ok" }))
        .route("/v1/state", get(state))
        .route("/v1/stacks/{name}", put(stacks::up).delete(stacks::down))
        .route("/v1/stacks/{name}/{verb}", post(stacks::services_verb))
        .route("/v1/stacks/{name}/progress", get(stacks::progress))
        .route("/v1/stacks/{name}/plan", post(stacks::plan))
        .route(
            "/v1/stacks/{name}/run/{key}",
            axum::routing::delete(stacks::remove_run),
        )
        .route("/v1/stacks/{name}/runs", post(stacks::run))
        .route("/v1/tasks/{id}/logs", get(tasks::logs))
        .route("/v1/tasks/{id}/exec", post(tasks::exec))
        .route("/v1/events", get(events::events))
        .route("/v1/tasks/{id}/{what}", get(tasks::inspect))
        .with_state(Ctx { store, node, facts })
}

async fn state(AxState(cx): AxState<Ctx>) -> Json<State> {
    Json(redacted(cx.store.snapshot()))
}

/// The state as the API shows it: without the cluster's secrets (the CA key and the
/// join tokens) and the contents of the stacks' secrets and configs, which only managers' own code reads from the store. An admin or a
/// member of the socket's group sees everything else.
pub fn redacted(mut state: State) -> State {
    if let Some(c) = state.cluster.as_mut() {
        c.ca_key = String::new();
        c.worker_token = String::new();
        c.manager_token = String::new();
    }
    // Secrets' and configs' contents reach only the nodes whose tasks use them.
    for record in state.stacks.values_mut() {
        record.data.clear();
    }
    // The revisions git-ops keeps are whole records, contents included.
    for source in state.gitops.values_mut() {
        for stack in source.stacks.values_mut() {
            for rev in &mut stack.revisions {
                rev.record.data.clear();
            }
        }
    }
    state
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::UnixListener,
    store: Arc<Store>,
    node: Arc<dyn NodeAgent>,
) -> std::io::Result<()> {
    axum::serve(listener, router(store, node)).await
}

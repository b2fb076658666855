//! A node's own endpoints, on its cluster port, for the managers: what lives on the
//! node and not in the store, about the tasks assigned to it. A manager's API asks
//! them when a task runs on another node (the binary's routing `NodeAgent`); every
//! node serves them, workers and managers alike.
//!
//! Routes (`{id}` a task id):
//! - `GET /v1/node/tasks/{id}/logs?follow=&tail=`: newline-delimited [`LogLine`]s,
//!   streamed (as `/v1/tasks/{id}/logs`)
//! - `GET /v1/node/tasks/{id}/{top|stats|ports}`: JSON (as `/v1/tasks/{id}/...`)
//! - `POST /v1/node/tasks/{id}/kill` ([`KillRequest`]), `POST .../freeze`
//!   ([`FreezeRequest`])
//! - `POST /v1/node/tasks/{id}/exec`: an exec session ([`super::exec`])
//! - `POST /v1/node/stacks/{networks|volumes}/remove` (a [`Stack`]): `down`'s removal
//!   of what the stack left on this node (its networks; with `-v`, its volumes), once
//!   its tasks have ended; the names removed
//!
//! Who may ask: the port lets only manager certificates through
//! (`port::authorize`, the node class); here the caller must also be a manager this
//! node knows now ([`NodeScope::manager`]: a worker keeps the list its heartbeats
//! bring), and the task must be one assigned to this node ([`NodeScope::assigned`])
//! before its id names anything: a node never reaches into a container on the word of
//! a request alone.
//!
//! [`LogLine`]: super::LogLine

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::tasks::{check_view, inspect_on, stream_logs, LogsQuery};
use super::{check_name, ApiError, NodeAgent};
use crate::port::Peer;
use spec::model::Stack;

/// Which tasks and which callers a node's endpoints serve.
pub trait NodeScope: Send + Sync + 'static {
    /// Whether task `id` is assigned to this node now.
    fn assigned(&self, id: &str) -> bool;

    /// Whether node `id` is a manager of this node's cluster as far as this node
    /// knows.
    fn manager(&self, id: &str) -> bool;
}

/// `POST /v1/node/tasks/{id}/kill`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillRequest {
    /// A signal name or number.
    pub signal: String,
}

/// `POST /v1/node/tasks/{id}/freeze`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreezeRequest {
    pub frozen: bool,
}

#[derive(Clone)]
struct NodeCtx {
    node: Arc<dyn NodeAgent>,
    scope: Arc<dyn NodeScope>,
}

/// The node's own routes over `node` (this node's containers), for the tasks and
/// callers `scope` allows.
pub fn router(node: Arc<dyn NodeAgent>, scope: Arc<dyn NodeScope>) -> Router {
    Router::new()
        .route("/v1/node/tasks/{id}/logs", get(logs))
        .route("/v1/node/tasks/{id}/kill", post(kill))
        .route("/v1/node/tasks/{id}/freeze", post(freeze))
        .route("/v1/node/tasks/{id}/exec", post(exec))
        .route("/v1/node/tasks/{id}/{what}", get(inspect))
        .route("/v1/node/stacks/{what}/remove", post(remove))
        .with_state(NodeCtx { node, scope })
}

/// The caller is a manager this node knows, and task `id` a plain name of a task
/// assigned here.
fn check(cx: &NodeCtx, peer: Option<&Peer>, id: &str) -> Result<(), ApiError> {
    check_caller(cx, peer)?;
    check_name("task id", id)?;
    if !cx.scope.assigned(id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("task {id} is not assigned to this node"),
        ));
    }
    Ok(())
}

/// The caller is a manager this node knows.
fn check_caller(cx: &NodeCtx, peer: Option<&Peer>) -> Result<(), ApiError> {
    let caller = peer.and_then(|p| p.0.as_ref());
    let known = caller
        .is_some_and(|who| who.role == pki::Role::Manager && cx.scope.manager(who.id.as_str()));
    if !known {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            match caller {
                Some(who) => format!(
                    "a node's own endpoints are for its cluster's managers; node {} is not one this node knows",
                    who.id
                ),
                None => "a node's own endpoints are for its cluster's managers, on the cluster port".into(),
            },
        ));
    }
    Ok(())
}

async fn logs(
    AxState(cx): AxState<NodeCtx>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    check(&cx, peer.as_deref(), &id)?;
    Ok(stream_logs(cx.node.clone(), id, q))
}

async fn inspect(
    AxState(cx): AxState<NodeCtx>,
    peer: Option<Extension<Peer>>,
    Path((id, what)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check(&cx, peer.as_deref(), &id)?;
    check_view(&what)?;
    inspect_on(cx.node.clone(), id, what).await
}

async fn kill(
    AxState(cx): AxState<NodeCtx>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
    Json(req): Json<KillRequest>,
) -> Result<Json<()>, ApiError> {
    check(&cx, peer.as_deref(), &id)?;
    let node = cx.node.clone();
    tokio::task::spawn_blocking(move || node.kill(&id, &req.signal))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(()))
}

async fn freeze(
    AxState(cx): AxState<NodeCtx>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
    Json(req): Json<FreezeRequest>,
) -> Result<Json<()>, ApiError> {
    check(&cx, peer.as_deref(), &id)?;
    let node = cx.node.clone();
    tokio::task::spawn_blocking(move || node.freeze(&id, req.frozen))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(()))
}

async fn exec(
    AxState(cx): AxState<NodeCtx>,
    peer: Option<Extension<Peer>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    check(&cx, peer.as_deref(), &id)?;
    super::exec::serve(cx.node.clone(), id, req).await
}

/// `down` on a manager: the stack's networks or volumes on this node go. A network a
/// container still uses stays, with an error (as on a single host).
async fn remove(
    AxState(cx): AxState<NodeCtx>,
    peer: Option<Extension<Peer>>,
    Path(what): Path<String>,
    Json(stack): Json<Stack>,
) -> Result<Json<Vec<String>>, ApiError> {
    check_caller(&cx, peer.as_deref())?;
    super::check_stack_name(&stack.name)?;
    let node = cx.node.clone();
    let removed = match what.as_str() {
        "networks" => tokio::task::spawn_blocking(move || node.remove_networks(&stack)).await,
        "volumes" => tokio::task::spawn_blocking(move || node.remove_volumes(&stack)).await,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such removal: {what:?} (networks or volumes)"),
            ))
        }
    };
    removed
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))
}

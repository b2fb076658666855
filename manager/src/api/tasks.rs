//! A container's endpoints: its log (streamed), its processes, resource use and ports,
//! which the node has and the store does not ([`super::NodeAgent`]), and exec
//! ([`super::exec`]). The same answers serve a node's own endpoints ([`super::node`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{check_name, ApiError, Ctx, LogLine, NodeAgent};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub tail: Option<usize>,
}

/// The views of `GET /v1/tasks/{id}/{what}`.
pub const VIEWS: &[&str] = &["top", "stats", "ports"];

/// Task `id` of a request: a plain name the store knows.
fn known_task(cx: &Ctx, id: &str) -> Result<(), ApiError> {
    check_name("task id", id)?;
    if !cx.store.read(|s| s.tasks.contains_key(id)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task {id:?}"),
        ));
    }
    Ok(())
}

pub(crate) async fn logs(
    AxState(cx): AxState<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    known_task(&cx, &id)?;
    Ok(stream_logs(cx.node.clone(), id, q))
}

/// Container `id`'s log from `node`, as newline-delimited [`LogLine`]s streamed as
/// they come; a failure is the last line (stream `error`).
pub(crate) fn stream_logs(node: Arc<dyn NodeAgent>, id: String, q: LogsQuery) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(256);
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
    Response::new(Body::from_stream(stream))
}

pub(crate) async fn inspect(
    AxState(cx): AxState<Ctx>,
    Path((id, what)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_name("task id", &id)?;
    check_view(&what)?;
    known_task(&cx, &id)?;
    inspect_on(cx.node.clone(), id, what).await
}

pub(crate) fn check_view(what: &str) -> Result<(), ApiError> {
    if VIEWS.contains(&what) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such view {what:?}: top, stats or ports"),
    ))
}

/// View `what` of container `id`, asked of `node`; its refusal is a conflict.
pub(crate) async fn inspect_on(
    node: Arc<dyn NodeAgent>,
    id: String,
    what: String,
) -> Result<Json<serde_json::Value>, ApiError> {
    let value = tokio::task::spawn_blocking(move || node.inspect(&id, &what))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    Ok(Json(value))
}

/// `POST /v1/tasks/{id}/exec`: a command in the task's container, wherever it runs
/// ([`super::exec`]).
pub(crate) async fn exec(
    AxState(cx): AxState<Ctx>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    known_task(&cx, &id)?;
    super::exec::serve(cx.node.clone(), id, req).await
}

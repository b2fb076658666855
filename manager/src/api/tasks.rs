//! A container's endpoints: its log (streamed) and its processes, resource use and
//! ports, which the node has and the store does not ([`super::NodeAgent`]).

use axum::body::Body;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{check_name, ApiError, Ctx, LogLine};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub tail: Option<usize>,
}

pub(crate) async fn logs(
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

pub(crate) async fn inspect(
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

//! The dispatcher's endpoints on the cluster port (`crate::dispatcher` is the pure
//! core): a node's assignments as a long poll, and its status batches. The caller is
//! the node its verified certificate names; the port lets workers and managers in.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::cluster::{caller, error, not_a_node};
use crate::cluster::Member;
use crate::dispatcher::{accept, assignment_for, StatusBatch};
use crate::port::Peer;

/// How many status batches are written at once; the others wait their turn.
const STATUS_WRITERS: usize = 4;

fn status_writers() -> &'static tokio::sync::Semaphore {
    static WRITERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(STATUS_WRITERS);
    &WRITERS
}

/// The longest a poll for assignments waits for a change.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

pub fn routes(member: Arc<Member>) -> Router {
    Router::new()
        .route("/v1/dispatcher/assignments", get(assignments))
        .route("/v1/dispatcher/status", post(status))
        .with_state(member)
}

#[derive(Debug, Deserialize)]
struct Poll {
    /// The digest of the view the node has (absent: none yet).
    #[serde(default)]
    have: Option<String>,
    /// How long to wait for a change, in ms (at most [`MAX_WAIT`]).
    #[serde(default)]
    wait_ms: Option<u64>,
}

fn unknown_node(node: &str) -> Response {
    error(
        StatusCode::FORBIDDEN,
        format!("node {node} is not a member of this cluster (removed, or not yet joined)"),
    )
}

/// The node's assignment as soon as it differs from the one it has (`have`), or 204
/// No Content once `wait_ms` passed without a change.
async fn assignments(
    State(m): State<Arc<Member>>,
    peer: Option<Extension<Peer>>,
    Query(poll): Query<Poll>,
) -> Response {
    let Some(identity) = caller(peer) else {
        return not_a_node();
    };
    let node = identity.id.as_str().to_string();
    let wait = Duration::from_millis(poll.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut watch = m.store.watch();
    loop {
        // Marked seen before reading, so a change in between wakes the wait below.
        watch.borrow_and_update();
        let view = m.store.read(|s| {
            s.nodes
                .contains_key(&node)
                .then(|| assignment_for(s, &node))
        });
        let Some(view) = view else {
            return unknown_node(&node);
        };
        if poll.have.as_deref() != Some(view.digest.as_str()) {
            return Json(view).into_response();
        }
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => continue,
            _ => return StatusCode::NO_CONTENT.into_response(),
        }
    }
}

/// Records a batch of the node's reports (for its own tasks only).
async fn status(
    State(m): State<Arc<Member>>,
    peer: Option<Extension<Peer>>,
    Json(batch): Json<StatusBatch>,
) -> Response {
    let Some(identity) = caller(peer) else {
        return not_a_node();
    };
    let node = identity.id.as_str().to_string();
    let store = m.store.clone();
    // Not on the blocking pool: a node's reports must not wait behind this node's own
    // container jobs. At most `STATUS_WRITERS` at once (they take turns at the store's
    // writer anyway): a thread each for a thousand nodes' batches exhausted memory.
    let Ok(_permit) = status_writers().acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the manager is stopping");
    };
    let done = crate::cluster::own_thread(move || {
        store.update(|s| {
            if !s.nodes.contains_key(&node) {
                return Ok(None);
            }
            Ok(Some(accept(s, &node, &batch)))
        })
    })
    .await;
    match done {
        Some(Ok(Some(mut accepted))) => {
            accepted.version = m.store.read(|s| s.version);
            Json(accepted).into_response()
        }
        Some(Ok(None)) => unknown_node(identity.id.as_str()),
        Some(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("record the status: {e}"),
        ),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "recording the status failed (its thread could not run)",
        ),
    }
}

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
use crate::dispatcher::{accept, view_of, Accepted, Assignment, StatusBatch};
use crate::port::Peer;
use crate::state::store::{Store, StoreError};

/// The longest a poll for assignments waits for a change.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

pub fn routes(member: Arc<Member>) -> Router {
    let status = StatusWriter::start(member.store.clone());
    Router::new()
        .route("/v1/dispatcher/assignments", get(assignments))
        .with_state(member)
        .merge(
            Router::new()
                .route("/v1/dispatcher/status", post(status_batch))
                .with_state(status),
        )
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
    // Woken only by transactions that touch this node's tasks, their stacks or its
    // record: a thousand polls do not all look again at every store version.
    let mut watch = m.store.watch_node(&node);
    loop {
        // Marked seen before reading, so a change in between wakes the wait below.
        watch.borrow_and_update();
        let parts = m.store.read_node(&node, |s, ids| {
            s.nodes.contains_key(&node).then(|| view_of(s, ids))
        });
        let Some(parts) = parts else {
            return unknown_node(&node);
        };
        let view = Assignment::of(parts);
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
async fn status_batch(
    State(writer): State<Arc<StatusWriter>>,
    peer: Option<Extension<Peer>>,
    Json(batch): Json<StatusBatch>,
) -> Response {
    let Some(identity) = caller(peer) else {
        return not_a_node();
    };
    let node = identity.id.as_str().to_string();
    match writer.record(node.clone(), batch).await {
        Some(Ok(Some(accepted))) => Json(accepted).into_response(),
        Some(Ok(None)) => unknown_node(&node),
        Some(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("record the status: {e}"),
        ),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the manager is stopping"),
    }
}

/// What a batch came to: its `Accepted`, None if its node is not a member.
type Recorded = Result<Option<Accepted>, StoreError>;

/// One batch waiting for the writer.
#[derive(Debug)]
struct Queued {
    node: String,
    batch: StatusBatch,
    done: tokio::sync::oneshot::Sender<Recorded>,
}

/// The one writer of status batches: the batches that arrive while it commits one
/// transaction all go into the next, together, so that a burst (a thousand nodes
/// reporting a deploy) costs fewer transactions, each of which copies and compares the
/// whole state; and they wait in a queue, not on a thread each (a thread per batch
/// exhausted memory at 1,000 nodes).
#[derive(Debug)]
pub struct StatusWriter {
    queue: std::sync::mpsc::Sender<Queued>,
}

impl StatusWriter {
    /// Starts the writer's thread; it ends with the last handle on the writer.
    fn start(store: Arc<Store>) -> Arc<StatusWriter> {
        let (queue, batches) = std::sync::mpsc::channel::<Queued>();
        let spawned = std::thread::Builder::new()
            .name("berth-status".into())
            .spawn(move || {
                // Blocks for the first batch, then takes whatever else is queued.
                while let Ok(first) = batches.recv() {
                    let mut round = vec![first];
                    round.extend(batches.try_iter());
                    write_round(&store, round);
                }
            });
        if let Err(e) = spawned {
            // Every batch is then answered "stopping" (its sender dropped at once),
            // and the node keeps it to send again.
            eprintln!("berth daemon: cannot start the status writer: {e}");
        }
        Arc::new(StatusWriter { queue })
    }

    /// Queues `batch` from `node`; its outcome once written (None: the writer is gone).
    async fn record(&self, node: String, batch: StatusBatch) -> Option<Recorded> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.queue.send(Queued { node, batch, done }).ok()?;
        outcome.await.ok()
    }
}

/// Records a round of batches in one transaction and answers each.
fn write_round(store: &Store, round: Vec<Queued>) {
    let written = store.update(|s| {
        Ok(round
            .iter()
            .map(|q| {
                s.nodes
                    .contains_key(&q.node)
                    .then(|| accept(s, &q.node, &q.batch, spec::task::now_ms()))
            })
            .collect::<Vec<_>>())
    });
    // Read after the transaction applied: a view older than this lacks the batch.
    let version = store.read(|s| s.version);
    match written {
        Ok(outcomes) => {
            for (q, outcome) in round.into_iter().zip(outcomes) {
                let outcome = outcome.map(|mut accepted| {
                    accepted.version = version;
                    accepted
                });
                let _ = q.done.send(Ok(outcome));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for q in round {
                let _ = q.done.send(Err(StoreError::Rejected(message.clone())));
            }
        }
    }
}

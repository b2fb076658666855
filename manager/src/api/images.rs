//! A node's images as other nodes fetch them over the cluster port, so that a node
//! that must run an image it lacks needs no registry (`agent::image::peer` is the
//! logic of both ends; the binary implements [`NodeImages`] over it):
//!
//! - `GET /v1/cluster/images/manifest?ref=REF`: [`ManifestAnswer`], the manifest the
//!   reference names, byte for byte as stored;
//! - `GET /v1/cluster/images/blobs/{digest}`: the blob's bytes (`application/octet-stream`,
//!   with its length), streamed, if an image in the store uses it.
//!
//! Only cluster nodes may call them. The port lets only worker and manager
//! certificates through (`crate::port::authorize`), and each handler checks again that
//! the request came through the port from a node: merged into the unix socket's router
//! by mistake, the routes refuse everyone rather than serve the store to the socket's
//! group.

use std::io::Read;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::cluster::{caller, error, not_a_node};
use crate::port::Peer;

/// A blob is read and sent in pieces of this size...
const CHUNK: usize = 64 << 10;
/// ...with at most this many waiting for a slow client, so a layer of any size costs
/// the server about a megabyte.
const CHUNKS_QUEUED: usize = 16;

/// What the node's image store gives other nodes. Blocking: the handlers call it on
/// blocking threads.
pub trait NodeImages: Send + Sync + 'static {
    /// The manifest `reference` (as a user writes it) names.
    fn manifest(&self, reference: &str) -> Result<ManifestAnswer, ImageRefusal>;

    /// Blob `digest` (`sha256:<hex>`, as the request gives it), opened, with its size.
    fn open_blob(&self, digest: &str) -> Result<(Box<dyn Read + Send>, u64), ImageRefusal>;
}

/// Why a [`NodeImages`] request is not answered with content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRefusal {
    /// The request names no valid reference or digest (400).
    BadRequest(String),
    /// This node has no such image or blob (404): another node may.
    NotFound(String),
    /// The store could not answer (500).
    Failed(String),
}

impl IntoResponse for ImageRefusal {
    fn into_response(self) -> Response {
        match self {
            ImageRefusal::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
            ImageRefusal::NotFound(m) => error(StatusCode::NOT_FOUND, m),
            ImageRefusal::Failed(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

/// The answer to `GET /v1/cluster/images/manifest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestAnswer {
    pub media_type: String,
    /// `sha256:<hex>` of the manifest's bytes, as the serving node knows them; the
    /// receiver hashes the bytes again.
    pub digest: Option<String>,
    /// The manifest's JSON text, exactly as stored: a JSON string carries any UTF-8
    /// text unchanged, and a manifest is UTF-8 JSON.
    pub manifest: String,
}

/// The routes of this module, over `images`. For the cluster port only.
pub fn router(images: Arc<dyn NodeImages>) -> Router {
    Router::new()
        .route("/v1/cluster/images/manifest", get(manifest))
        .route("/v1/cluster/images/blobs/{digest}", get(blob))
        .with_state(images)
}

/// `Some(refusal)` unless the request came from a cluster node (a worker or a manager).
fn only_nodes(peer: Option<Extension<Peer>>) -> Option<Response> {
    match caller(peer) {
        Some(who) if pki::access::DISPATCHER.contains(&who.role) => None,
        Some(who) => Some(error(
            StatusCode::FORBIDDEN,
            format!(
                "images are served to cluster nodes; the client presented a {} certificate",
                who.role
            ),
        )),
        None => Some(not_a_node()),
    }
}

#[derive(Debug, Deserialize)]
struct ManifestQuery {
    #[serde(rename = "ref")]
    reference: Option<String>,
}

async fn manifest(
    State(images): State<Arc<dyn NodeImages>>,
    peer: Option<Extension<Peer>>,
    Query(q): Query<ManifestQuery>,
) -> Response {
    if let Some(refused) = only_nodes(peer) {
        return refused;
    }
    let Some(reference) = q.reference else {
        return ImageRefusal::BadRequest("name the image: ?ref=NAME[:TAG]".into()).into_response();
    };
    match tokio::task::spawn_blocking(move || images.manifest(&reference)).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(refusal)) => refusal.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn blob(
    State(images): State<Arc<dyn NodeImages>>,
    peer: Option<Extension<Peer>>,
    Path(digest): Path<String>,
) -> Response {
    if let Some(refused) = only_nodes(peer) {
        return refused;
    }
    let (reader, size) = match tokio::task::spawn_blocking(move || images.open_blob(&digest)).await
    {
        Ok(Ok(opened)) => opened,
        Ok(Err(refusal)) => return refusal.into_response(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(CHUNKS_QUEUED);
    tokio::task::spawn_blocking(move || send_blob(reader, &tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    // The length up front: the client reads exactly that much, and a body cut short by
    // a read error (hyper drops the connection) shows as short, not as complete.
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(size));
    response
}

/// Reads `reader` into `tx` until its end, an error (sent on, which ends the body), or
/// a client that went away (the receiver is dropped).
fn send_blob(
    mut reader: Box<dyn Read + Send>,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    loop {
        let mut chunk = vec![0; CHUNK];
        match reader.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                chunk.truncate(n);
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

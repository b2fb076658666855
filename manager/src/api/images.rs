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
//! group. Every node serves them on its cluster port, workers too: an image imported,
//! loaded or pulled on any node can run on any other.
//!
//! Which nodes hold an image is not tracked (a list per node in every heartbeat would
//! cost the leader a thousand lists a second to learn what is asked a few times a
//! deployment); a manager finds out when asked, over the [`ImageHolders`] seam:
//!
//! - `GET /v1/cluster/images/holders?ref=REF`: [`HoldersAnswer`], the nodes whose store
//!   has the reference's manifest, each asked in parallel for a bounded time (one that
//!   does not answer in time is named, not waited for). For nodes (a node fetching an
//!   image no manager has) and admins (`berth up`, which accepts an image some node
//!   holds), and on the unix socket, whose users see the nodes with `node ls` anyway:
//!   its own router, [`holders_router`], on managers only.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
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

/// Where an image is: what a manager does when asked ([`holders_router`]). The binary
/// implements it, since asking the nodes takes its HTTP client.
pub trait ImageHolders: Send + Sync + 'static {
    /// The nodes whose store has the image `reference` (as a user writes it) names,
    /// leaving out node `skip` (the caller, which asks because it lacks it).
    fn holders(
        &self,
        reference: String,
        skip: Option<String>,
    ) -> Pin<Box<dyn Future<Output = Result<HoldersAnswer, ImageRefusal>> + Send>>;
}

/// The answer to `GET /v1/cluster/images/holders`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldersAnswer {
    /// The nodes that have the image, in node id order.
    pub holders: Vec<Holder>,
    /// How many nodes were asked (the answering manager's own store included).
    #[serde(default)]
    pub asked: usize,
    /// The nodes asked that gave no answer in time, or a failure: the image may be on
    /// them. Those known to be down are not asked and not listed.
    #[serde(default)]
    pub unanswered: Vec<Unanswered>,
}

/// A node that holds an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub id: String,
    pub hostname: String,
    /// Its cluster port, where it serves the image.
    pub addr: String,
    /// The digest of its manifest of the image (`sha256:<hex>`), as the node says.
    #[serde(default)]
    pub digest: Option<String>,
}

/// A node asked for an image that did not say whether it has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unanswered {
    pub id: String,
    pub reason: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} ({}, {})", self.id, self.hostname, self.addr)
    }
}

/// The lookup's route, over `holders`. For a manager: on its cluster port (where
/// `crate::port::authorize` lets nodes and admins through) and its unix socket.
pub fn holders_router(holders: Arc<dyn ImageHolders>) -> Router {
    Router::new()
        .route(HOLDERS_PATH, get(find_holders))
        .with_state(holders)
}

/// Where [`holders_router`] answers.
pub const HOLDERS_PATH: &str = "/v1/cluster/images/holders";

/// The request for the nodes that hold `reference` (as a user writes it).
pub fn holders_path(reference: &str) -> String {
    format!("{HOLDERS_PATH}?ref={}", query_escape(reference))
}

/// `text` made safe in a URL's query: anything but unreserved characters and the `/`,
/// `:` and `@` of a reference is percent-encoded (an IPv6 registry's `[` and `]`).
pub fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn find_holders(
    State(holders): State<Arc<dyn ImageHolders>>,
    peer: Option<Extension<Peer>>,
    Query(q): Query<ManifestQuery>,
) -> Response {
    let Some(reference) = q.reference else {
        return ImageRefusal::BadRequest("name the image: ?ref=NAME[:TAG]".into()).into_response();
    };
    // A node asks because it lacks the image: asking it too would only cost time.
    let skip = caller(peer)
        .filter(|who| who.role != pki::Role::Admin)
        .map(|who| who.id.to_string());
    match holders.holders(reference, skip).await {
        Ok(answer) => Json(answer).into_response(),
        Err(refusal) => refusal.into_response(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_survive_the_query_string() {
        assert_eq!(
            query_escape("[::1]:5000/x/y:1.0_a-b"),
            "%5B::1%5D:5000/x/y:1.0_a-b"
        );
        assert_eq!(query_escape("a b&c=d#e"), "a%20b%26c%3Dd%23e");
        assert_eq!(
            holders_path("reg:5000/app@sha256:00"),
            "/v1/cluster/images/holders?ref=reg:5000/app@sha256:00"
        );
    }
}

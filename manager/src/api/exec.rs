//! `berth exec` through the API: `POST /v1/tasks/{id}/exec` (and a node's own
//! `POST /v1/node/tasks/{id}/exec`, [`super::node`]) with an [`ExecSpec`] as its JSON
//! body and `Connection: Upgrade`, `Upgrade: berth-exec` (Docker's exec "hijack", as an
//! HTTP/1.1 upgrade). The node starts the command first: if it cannot (no such
//! container, not running, no such program or user), the answer is an ordinary error
//! status and message; once it runs, the answer is `101 Switching Protocols` and the
//! connection becomes the session's byte stream.
//!
//! On that stream both sides speak the frames of the shim's attach socket
//! (`[kind u8][length u32 BE][payload]`): the client sends stdin (0), a window size
//! (1: rows and columns, two u16 BE) and the end of its input (2); the node sends
//! stdout (1), stderr (2) and, last, the end (3) whose payload is the command's exit
//! status (i32 BE; 128 + n when killed by signal n). A terminal has only stdout.
//!
//! This module only carries the bytes: the node behind [`super::NodeAgent::exec`]
//! speaks the frames (the binary's local exec, or a connection to the node that runs
//! the container), so a manager forwarding to another node copies the stream as it is.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use super::{ApiError, NodeAgent};

/// The `Upgrade` protocol name of an exec session.
pub const PROTOCOL: &str = "berth-exec";

/// A request body larger than this is not an exec request.
const MAX_SPEC: usize = 256 << 10;

/// What to run in a container, as the CLI sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The program and its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Docker's `USER[:GROUP]`, resolved in the container.
    #[serde(default)]
    pub user: Option<String>,
    /// The working directory, inside the container.
    #[serde(default)]
    pub workdir: Option<String>,
    /// A terminal of this size (rows, columns) instead of pipes.
    #[serde(default)]
    pub tty: Option<(u16, u16)>,
}

/// Why a node did not start an exec: the status it answers with (404: no such
/// container here, 409: it does not run, 400: the request cannot run, 502: the node
/// that runs it did not answer) and a message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    pub status: u16,
    pub message: String,
}

impl ExecError {
    pub fn new(status: u16, message: impl Into<String>) -> ExecError {
        ExecError {
            status,
            message: message.into(),
        }
    }
}

/// A started session's byte stream (frames both ways, as the module doc says).
pub trait ExecIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> ExecIo for T {}

/// A boxed [`ExecIo`].
pub type ExecStream = Box<dyn ExecIo>;

/// What [`NodeAgent::exec`] returns: the session's stream once the command runs.
pub type Starting = futures_util::future::BoxFuture<'static, Result<ExecStream, ExecError>>;

/// Serves one exec request for task `id` (already checked by the caller: a plain name,
/// and one the caller may reach) on `node`: reads the spec, starts it, and answers
/// `101` with the session's stream copied both ways, or the node's refusal.
pub(crate) async fn serve(
    node: Arc<dyn NodeAgent>,
    id: String,
    mut req: Request,
) -> Result<Response, ApiError> {
    let asks_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    let on_upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .filter(|_| asks_upgrade)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "exec is an HTTP upgrade: send Connection: Upgrade and Upgrade: {PROTOCOL}"
                ),
            )
        })?;
    let body = axum::body::to_bytes(req.into_body(), MAX_SPEC)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("exec request: {e}")))?;
    let spec: ExecSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("exec request: {e}")))?;
    if spec.args.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "exec needs a command",
        ));
    }
    let mut stream = node.exec(&id, spec).await.map_err(|e| {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.message)
    })?;
    tokio::spawn(async move {
        // A client that went before the switch: dropping the stream hangs up on the
        // session, which ends the command.
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut client = TokioIo::new(upgraded);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
    });
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    Ok(resp)
}

//! The cluster port: one TCP port per manager (like Swarm's 2377), always mutual TLS
//! with the cluster CA, on which a connection is either Raft traffic or the HTTP API,
//! told apart by the protocol the client asked for in the handshake (ALPN):
//!
//! - `berth-raft/1` ([`ALPN_RAFT`]): a manager's [`crate::state::raft::tls::TlsTransport`].
//!   The client must hold a manager certificate; then its `len u32 LE | protobuf`
//!   frames (the format of `raft/tcp.rs`) go into this node's Raft inbox, held by a
//!   [`RaftSink`] so the port can start before the node.
//! - `http/1.1` ([`ALPN_HTTP`]): the API (remote CLIs with an admin certificate,
//!   joiners with none, agents, managers asking a node's own endpoints; a worker's
//!   port, [`http_server_config`], serves only those). Every request is first checked by
//!   [`authorize`] (path + verified certificate, pure), then reaches the router with a
//!   [`Peer`] extension naming the client.
//!
//! A client that asks for neither is closed. The server accepts clients without a
//! certificate (joiners), so everything but the open paths depends on `authorize`.
//!
//! Handshakes are bounded in time and in number ([`PortOptions`]): a client that
//! connects and never finishes cannot hold a task, and a flood of them waits in the
//! kernel's backlog rather than in memory. [`Port`] tracks every open connection by
//! the peer's node id, so [`Port::close_denied`] can close those of a node removed
//! from the cluster (the deny list only stops new handshakes).

mod authorize;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use pki::{access, DenyList, Identity, NodeCredentials, NodeId};
use protobuf::Message as _;
use raft::eraftpb::Message;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::state::raft::tcp::MAX_FRAME;
use crate::state::raft::Inbox;

pub use authorize::{authorize, Refusal};

/// ALPN of Raft traffic between managers.
pub const ALPN_RAFT: &[u8] = b"berth-raft/1";
/// ALPN of the HTTP API.
pub const ALPN_HTTP: &[u8] = b"http/1.1";

/// Why a cluster port configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("cluster port: {0}")]
    Tls(#[from] pki::TlsError),
}

/// The port's server side: `creds` presented, clients verified against the cluster CA
/// and `deny` if they present a certificate (a joiner does not), both protocols offered.
pub fn server_config(
    creds: &NodeCredentials,
    deny: &DenyList,
) -> Result<Arc<ServerConfig>, PortError> {
    let mut config = pki::tls::server_config(creds, pki::ClientAuth::Optional, deny)?;
    config.alpn_protocols = vec![ALPN_RAFT.to_vec(), ALPN_HTTP.to_vec()];
    Ok(Arc::new(config))
}

/// A worker's port: HTTP only (a worker has no Raft, so a Raft client fails the
/// handshake instead of sending frames nobody reads), and a client certificate
/// required (nobody joins through a worker).
pub fn http_server_config(
    creds: &NodeCredentials,
    deny: &DenyList,
) -> Result<Arc<ServerConfig>, PortError> {
    let mut config = pki::tls::server_config(creds, pki::ClientAuth::Required, deny)?;
    config.alpn_protocols = vec![ALPN_HTTP.to_vec()];
    Ok(Arc::new(config))
}

/// What a manager's Raft transport dials with (see `raft::tls::TlsTransport`).
pub fn raft_client_config(
    creds: &NodeCredentials,
    deny: &DenyList,
) -> Result<Arc<ClientConfig>, PortError> {
    client_config(creds, deny, ALPN_RAFT)
}

/// What an HTTP client of the port (CLI, agent, another manager) dials with.
pub fn http_client_config(
    creds: &NodeCredentials,
    deny: &DenyList,
) -> Result<Arc<ClientConfig>, PortError> {
    client_config(creds, deny, ALPN_HTTP)
}

fn client_config(
    creds: &NodeCredentials,
    deny: &DenyList,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, PortError> {
    let mut config = pki::tls::client_config(creds, deny)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Where the port delivers Raft messages: this node's [`Inbox`] once its Raft node
/// runs ([`RaftSink::set`]), nowhere before or after ([`RaftSink::clear`]; messages
/// are dropped, Raft resends). Clones share the slot.
#[derive(Clone, Default)]
pub struct RaftSink(Arc<RwLock<Option<Inbox>>>, Arc<RwLock<Option<SenderCheck>>>);

/// Whether Raft id `from` belongs to the node that sent the frame (the id in its
/// verified certificate): the certificate says who is on the line, only the cluster's
/// records say which Raft member that is.
pub type SenderCheck = Arc<dyn Fn(&NodeId, u64) -> bool + Send + Sync>;

impl std::fmt::Debug for RaftSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftSink").finish_non_exhaustive()
    }
}

impl RaftSink {
    pub fn new() -> RaftSink {
        RaftSink::default()
    }

    /// From now on, frames whose `from` is not the sender's Raft id are dropped, so a
    /// manager cannot speak for another.
    pub fn check_senders(&self, check: SenderCheck) {
        *self.1.write().unwrap_or_else(PoisonError::into_inner) = Some(check);
    }

    fn allows(&self, sender: &NodeId, from: u64) -> bool {
        match &*self.1.read().unwrap_or_else(PoisonError::into_inner) {
            Some(check) => check(sender, from),
            None => true,
        }
    }

    pub fn set(&self, inbox: Inbox) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(inbox);
    }

    pub fn clear(&self) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn inbox(&self) -> Option<Inbox> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The verified client of an HTTP request (None: it presented no certificate), an
/// extension on every request the port hands to the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer(pub Option<Identity>);

/// Limits of a [`Port`].
#[derive(Debug, Clone)]
pub struct PortOptions {
    /// A connection whose TLS handshake has not finished by then is closed.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; further connections wait to be accepted.
    pub max_handshakes: usize,
    /// An HTTP client must send a request's headers within this (hyper's
    /// `header_read_timeout`), so an idle API connection does not stay open forever.
    pub header_timeout: Duration,
}

impl Default for PortOptions {
    fn default() -> Self {
        PortOptions {
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 64,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// What a connection carries, once its handshake chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Raft,
    Http,
}

/// One open connection, as [`Port::connections`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Unique among this port's connections, in the order they were accepted.
    pub id: u64,
    /// The verified client (None: no certificate, or still in its handshake).
    pub peer: Option<NodeId>,
    /// None while the handshake is in progress.
    pub kind: Option<Kind>,
}

/// A running cluster port. Dropping it stops accepting and closes every connection.
#[derive(Debug)]
pub struct Port {
    shared: Arc<Shared>,
    accept: AbortHandle,
}

#[derive(Debug, Default)]
struct Shared {
    conns: Mutex<Conns>,
    /// Raft messages delivered to the inbox, by sending node.
    raft_delivered: Mutex<HashMap<NodeId, u64>>,
}

#[derive(Debug, Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, Conn>,
    /// The deny list last given to `close_denied`: a connection whose handshake was
    /// verified just before its node was denied, and registers just after, is closed
    /// at registration instead of slipping through.
    denied: Option<DenyList>,
}

#[derive(Debug)]
struct Conn {
    peer: Option<NodeId>,
    kind: Option<Kind>,
    /// Set before `abort`: aborting a task that is being polled takes effect only at
    /// the end of that poll, in which hyper may already be reading the next request;
    /// the flag makes sure nothing more reaches the router or the inbox once
    /// `close_denied` has returned.
    closed: Arc<AtomicBool>,
    abort: AbortHandle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps, never left half-updated across a panic point.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Port {
    /// Closes every open connection (Raft and HTTP) of a node in `deny`, and any
    /// that completes its handshake later with such a node's certificate. Returns
    /// how many were closed. Call it whenever nodes are added to the deny list.
    pub fn close_denied(&self, deny: &DenyList) -> usize {
        let mut conns = lock(&self.shared.conns);
        conns.denied = Some(deny.clone());
        let mut closed = 0;
        conns.open.retain(|_, c| {
            let denied = c.peer.as_ref().is_some_and(|p| deny.contains(p));
            if denied {
                c.closed.store(true, Ordering::SeqCst);
                c.abort.abort();
                closed += 1;
            }
            !denied
        });
        closed
    }

    /// Every open connection.
    pub fn connections(&self) -> Vec<Connection> {
        lock(&self.shared.conns)
            .open
            .iter()
            .map(|(&id, c)| Connection {
                id,
                peer: c.peer.clone(),
                kind: c.kind,
            })
            .collect()
    }

    /// How many Raft messages from node `from` were delivered to the inbox.
    pub fn raft_delivered(&self, from: &NodeId) -> u64 {
        lock(&self.shared.raft_delivered)
            .get(from)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, c) in lock(&self.shared.conns).open.drain() {
            c.closed.store(true, Ordering::SeqCst);
            c.abort.abort();
        }
    }
}

/// Serves the cluster port on `listener` (on the current tokio runtime) with the
/// default [`PortOptions`].
pub fn spawn(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    raft: RaftSink,
    router: axum::Router,
) -> Port {
    spawn_with(listener, tls, raft, router, PortOptions::default())
}

/// [`spawn`] with explicit limits.
pub fn spawn_with(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    raft: RaftSink,
    router: axum::Router,
    options: PortOptions,
) -> Port {
    let shared = Arc::new(Shared::default());
    let server = Arc::new(Server {
        acceptor: TlsAcceptor::from(tls),
        raft,
        router,
        options,
        shared: shared.clone(),
    });
    let accept = tokio::spawn(accept_loop(listener, server)).abort_handle();
    Port { shared, accept }
}

/// What every connection task needs.
struct Server {
    acceptor: TlsAcceptor,
    raft: RaftSink,
    router: axum::Router,
    options: PortOptions,
    shared: Arc<Shared>,
}

async fn accept_loop(listener: TcpListener, server: Arc<Server>) {
    let handshakes = Arc::new(Semaphore::new(server.options.max_handshakes.max(1)));
    loop {
        // Taken before accepting: at the cap, new clients wait in the backlog.
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return; // never closed
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted:
                // keep serving, without spinning on a persistent error.
                eprintln!("berth: cluster port: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A Raft heartbeat or an API answer must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        // Registered under the lock the task takes to deregister, so a task that ends
        // at once cannot leave its entry behind.
        let mut conns = lock(&server.shared.conns);
        let id = conns.next;
        conns.next += 1;
        let closed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(connection(id, tcp, permit, closed.clone(), server.clone()));
        conns.open.insert(
            id,
            Conn {
                peer: None,
                kind: None,
                closed,
                abort: task.abort_handle(),
            },
        );
    }
}

/// Removes a connection's entry when its task ends, however it ends (aborted too).
struct Registration {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shared.conns).open.remove(&self.id);
    }
}

impl Shared {
    /// Records who a connection is; false if that node is already denied.
    fn identify(&self, id: u64, peer: Option<&NodeId>, kind: Kind) -> bool {
        let mut conns = lock(&self.conns);
        if let (Some(p), Some(deny)) = (peer, conns.denied.as_ref()) {
            if deny.contains(p) {
                return false;
            }
        }
        if let Some(c) = conns.open.get_mut(&id) {
            c.peer = peer.cloned();
            c.kind = Some(kind);
        }
        true
    }
}

async fn connection(
    id: u64,
    tcp: tokio::net::TcpStream,
    permit: tokio::sync::OwnedSemaphorePermit,
    closed: Arc<AtomicBool>,
    server: Arc<Server>,
) {
    let _registration = Registration {
        id,
        shared: server.shared.clone(),
    };
    let handshake = server.acceptor.accept(tcp);
    let tls = match tokio::time::timeout(server.options.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        // A refused certificate or a client that gave up: rustls has already sent
        // the alert that tells it why.
        Ok(Err(_)) | Err(_) => return,
    };
    drop(permit);
    let conn = tls.get_ref().1;
    // The handshake verified any certificate presented (CA, expiry, deny list, a
    // berth identity), so this is None only for a client without one.
    let peer = pki::peer_identity(conn).ok();
    let kind = match conn.alpn_protocol() {
        Some(p) if p == ALPN_RAFT => Kind::Raft,
        Some(p) if p == ALPN_HTTP => Kind::Http,
        _ => return,
    };
    if !server
        .shared
        .identify(id, peer.as_ref().map(|p| &p.id), kind)
    {
        return;
    }
    match kind {
        Kind::Raft => {
            // Raft is for managers only: a worker's or the CLI's certificate, or none,
            // is closed before a single frame is read.
            let sender = match pki::authorize(conn, access::RAFT) {
                Ok(who) => who.id,
                Err(e) => {
                    eprintln!("berth: cluster port: refused a raft connection: {e}");
                    return;
                }
            };
            serve_raft(tls, &sender, &closed, &server).await;
        }
        Kind::Http => serve_http(tls, Peer(peer), closed, &server).await,
    }
}

/// Reads frames into the Raft inbox until the peer closes or sends something that is
/// not a frame of a Raft message.
async fn serve_raft(
    tls: TlsStream<tokio::net::TcpStream>,
    sender: &NodeId,
    closed: &AtomicBool,
    server: &Server,
) {
    let mut r = tokio::io::BufReader::with_capacity(256 << 10, tls);
    let mut buf = Vec::new();
    while let Some(msg) = read_frame(&mut r, &mut buf).await {
        if closed.load(Ordering::SeqCst) {
            return;
        }
        // No node running (yet, or any more): dropped, as a lossy network would.
        let Some(inbox) = server.raft.inbox() else {
            continue;
        };
        if !server.raft.allows(sender, msg.from) {
            continue;
        }
        if inbox.deliver(msg) {
            *lock(&server.shared.raft_delivered)
                .entry(sender.clone())
                .or_default() += 1;
        }
    }
}

/// One `len u32 LE | protobuf` frame; None at the end of the stream or on anything
/// malformed (which ends the connection: a stream out of step cannot be resynced).
async fn read_frame(r: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<Message> {
    let len = r.read_u32_le().await.ok()? as usize;
    if len > MAX_FRAME {
        return None;
    }
    buf.resize(len, 0);
    r.read_exact(buf).await.ok()?;
    Message::parse_from_bytes(buf).ok()
}

/// Serves HTTP/1.1 on one connection: each request authorized, then routed with its
/// [`Peer`].
async fn serve_http(
    tls: TlsStream<tokio::net::TcpStream>,
    peer: Peer,
    closed: Arc<AtomicBool>,
    server: &Server,
) {
    let router = server.router.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut router = router.clone();
        let peer = peer.clone();
        let closed = closed.clone();
        async move {
            if closed.load(Ordering::SeqCst) {
                // An error from the service makes hyper drop the connection unanswered.
                return Err(ConnectionClosed);
            }
            if let Err(refusal) = authorize(req.uri().path(), peer.0.as_ref()) {
                return Ok(refused(refusal));
            }
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(peer);
            match tower_service::Service::call(&mut router, req).await {
                Ok(resp) => Ok(resp),
                Err(never) => match never {},
            }
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(server.options.header_timeout);
    // Errors are the client's (a reset, a malformed request hyper already answered).
    let _ = http
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await;
}

/// A request that arrived on a connection `close_denied` had already closed.
#[derive(Debug, thiserror::Error)]
#[error("the connection was closed: its node was removed from the cluster")]
struct ConnectionClosed;

fn refused(refusal: Refusal) -> axum::response::Response {
    let status = axum::http::StatusCode::from_u16(refusal.status)
        .unwrap_or(axum::http::StatusCode::FORBIDDEN);
    (
        status,
        axum::Json(serde_json::json!({ "error": refusal.message })),
    )
        .into_response()
}

//! The cluster's side of the manager: `berth cluster init/join`, join tokens, the node
//! list and its changes (promote, demote, rm, labels), and the membership loop that
//! keeps the Raft group, the Raft transport's peers and the TLS deny list in line with
//! the store.
//!
//! - [`plan`]: the pure plan of the next Raft configuration change, over the
//!   cluster's records in the store (`crate::state::model`);
//! - [`ops`]: init, admitting a joiner, joining, node changes: pure functions over the
//!   state, and the thin functions that run them in a store transaction;
//! - [`files`]: what a member keeps under `<state>/cluster/`;
//! - [`membership`]: the loop every manager runs, and the worker's heartbeat loop.
//!
//! Their HTTP endpoints are in `crate::api::cluster`.
//!
//! Becoming a member (init, join) rewrites `<state>/cluster/` and then restarts the
//! daemon in place (`exec` of itself): containers run under their shims and the store
//! is on disk, so nothing stops, and the new process starts in cluster mode with the
//! cluster's Raft settings, transport and port. One start-up path for every mode is
//! simpler to get right than switching a running store's transport and timing. The
//! manager does not exec itself: the daemon hands in how ([`Daemon::restart`]), and
//! how to call another manager's API ([`Daemon::call`]).

pub mod files;
pub mod liveness;
pub mod membership;
pub mod ops;
pub mod plan;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::raft::StateRole;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::raft::tls::TlsTransport;
use crate::state::store::Store;

use files::ClusterConfig;

/// What the cluster side needs of the daemon process it runs in, which only the
/// daemon can give: the binary implements it.
pub trait Daemon: Send + Sync + 'static {
    /// One request to the API of the manager at `addr` (`ip:port`) over mutual TLS
    /// with `tls` (the server's certificate must be valid for
    /// `pki::tls::manager_server_name()`), giving up after `timeout` without an
    /// answer: the JSON answer, or why there is none (an error answer's message).
    /// Blocking.
    fn call(
        &self,
        addr: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        request: Call<'_>,
    ) -> Result<serde_json::Value, CallError>;

    /// Restarts this daemon in place, in the mode its files now say, once the current
    /// answer had time to reach the caller. Containers keep running (they are the
    /// shims'); `store`'s Raft node is stopped first so its log is closed cleanly.
    fn restart(&self, store: Option<Arc<Store>>);

    /// What this node says of itself with each heartbeat: this machine's platform and
    /// size, and the generic resources the daemon was told to advertise.
    fn report(&self) -> membership::NodeReport {
        membership::NodeReport::of_this_host()
    }
}

/// One request of [`Daemon::call`].
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The JSON body, if any.
    pub body: Option<&'a serde_json::Value>,
}

/// Why a call to another manager got no answer (its text says why, the manager's own
/// error message included).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CallError(pub String);

/// Calls `method path` on the manager at `addr` through `daemon`, with `body` as JSON,
/// and reads the answer as a `T`.
pub fn call<T: DeserializeOwned>(
    daemon: &dyn Daemon,
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    method: &str,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<T, CallError> {
    let body = body
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| CallError(format!("encode the request {method} {path}: {e}")))?;
    let answer = daemon.call(
        addr,
        tls,
        timeout,
        Call {
            method,
            path,
            body: body.as_ref(),
        },
    )?;
    serde_json::from_value(answer)
        .map_err(|e| CallError(format!("the daemon's answer to {method} {path}: {e}")))
}

/// Runs blocking `f` on a thread of its own, not on tokio's blocking pool, and waits
/// for its result (None if the thread could not start or panicked). For the cluster's
/// control traffic (heartbeats, the dispatcher's polls and reports, membership calls):
/// during a large `up` the blocking pool is full of container jobs, each holding a
/// thread for up to its grace period, and a heartbeat queued behind them arrives too
/// late, so that a busy node looks down. A thread costs tens of microseconds, once a
/// second at most per loop.
pub async fn own_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-cluster".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    rx.await.ok()
}

/// How often a worker tells the leader it is up ([`membership::worker_loop`]).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long one node waits for another's answer.
pub const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A manager's cluster side, shared by its endpoints and loops.
pub struct Member {
    pub state_dir: PathBuf,
    pub config: ClusterConfig,
    pub creds: pki::NodeCredentials,
    pub store: Arc<Store>,
    pub transport: Arc<TlsTransport>,
    pub deny: pki::DenyList,
    /// Client settings for calling another manager's API with this node's certificate.
    pub http: Arc<rustls::ClientConfig>,
    /// The cluster port, once listening (to close connections of removed nodes).
    pub port: Mutex<Option<crate::port::Port>>,
    /// Set once the store holds everything committed before this start (a quorum
    /// answered a ReadIndex): until then only `cluster status` answers.
    pub ready: std::sync::atomic::AtomicBool,
    /// Managers (Raft id, node id, address) learned outside the store: those this node
    /// joined with, and those another manager listed while this one was catching up.
    /// A manager that missed a membership change cannot learn it from the store until
    /// it hears from the leader, which it may not know.
    pub known: Mutex<Vec<(u64, String, String)>>,
    /// When each node was last heard from (on the manager it heartbeats to: the
    /// leader), and since when this manager leads.
    pub liveness: Arc<liveness::Liveness>,
    /// What only the daemon can do: call another manager, restart itself.
    pub daemon: Arc<dyn Daemon>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("node", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Member {
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Calls the manager at `addr`, authenticated as this node (blocking).
    pub fn call<T: DeserializeOwned>(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CallError> {
        call(
            &*self.daemon,
            addr,
            self.http.clone(),
            NODE_CALL_TIMEOUT,
            method,
            path,
            body,
        )
    }

    /// The leader's address, if it is another manager the store knows.
    pub fn leader_addr(&self) -> Option<String> {
        let status = self.store.node().status();
        if status.leader == 0 || status.leader == status.id {
            return None;
        }
        self.store
            .read(|s| plan::manager_by_raft_id(&s.nodes, status.leader).map(|n| n.addr.clone()))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_leader(&self) -> bool {
        self.store.node().status().role == StateRole::Leader
    }
}

/// Which node may send Raft messages as which Raft id. A Raft id the store gives to a
/// manager is that manager's only. One it does not know is accepted only if it was
/// allocated after what this store has seen (the store is behind: a joiner before the
/// leader's snapshot, a manager that missed a join) and a manager told this node whose
/// it is (`Member::known`). An id the store allocated but no manager holds any more (a
/// demoted or removed manager's) is refused, whatever certificate comes with it.
pub fn sender_check(member: &Arc<Member>) -> crate::port::SenderCheck {
    let member = Arc::downgrade(member);
    Arc::new(move |sender: &pki::NodeId, from: u64| {
        let Some(member) = member.upgrade() else {
            return false;
        };
        let (owner, next) = member.store.read(|s| {
            (
                plan::manager_by_raft_id(&s.nodes, from).map(|n| n.id.clone()),
                s.cluster.as_ref().map(|c| c.next_raft_id),
            )
        });
        if let Some(owner) = owner {
            return owner == sender.as_str();
        }
        let behind = next.is_none_or(|n| from >= n);
        behind
            && member
                .known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|(r, n, _)| *r == from && n == sender.as_str())
    })
}

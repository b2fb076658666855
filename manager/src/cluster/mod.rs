//! The daemon's cluster side: `berth cluster init/join`, join tokens, the node list and
//! its changes (promote, demote, rm, labels), and the membership loop that keeps the
//! Raft group, the Raft transport's peers and the TLS deny list in line with the store.
//!
//! - [`files`]: what a member keeps under `<state>/cluster/`;
//! - [`ops`]: init, admitting a joiner, joining, node changes (store transactions over
//!   the pure model in `manager::cluster`);
//! - [`membership`]: the loop every manager runs;
//! - [`routes`]: the HTTP endpoints, on the unix socket and on the cluster port.
//!
//! Becoming a member (init, join) rewrites `<state>/cluster/` and then restarts the
//! daemon in place (`exec` of itself): containers run under their shims and the store
//! is on disk, so nothing stops, and the new process starts in cluster mode with the
//! cluster's Raft settings, transport and port. One start-up path for every mode is
//! simpler to get right than switching a running store's transport and timing.

pub mod files;
pub mod membership;
pub mod ops;
pub mod routes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use manager::raft::tls::TlsTransport;
use manager::store::Store;

pub use files::ClusterConfig;

/// How long one node waits for another's answer.
pub const NODE_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
    pub port: Mutex<Option<manager::port::Port>>,
    /// Set once the store holds everything committed before this start (a quorum
    /// answered a ReadIndex): until then only `cluster status` answers.
    pub ready: std::sync::atomic::AtomicBool,
    /// Managers (Raft id, node id, address) learned outside the store: those this node
    /// joined with, and those another manager listed while this one was catching up.
    /// A manager that missed a membership change cannot learn it from the store until
    /// it hears from the leader, which it may not know.
    pub known: Mutex<Vec<(u64, String, String)>>,
    /// When each worker was last heard from (on the manager it heartbeats to: the
    /// leader).
    pub heartbeats: Mutex<HashMap<String, Instant>>,
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

    /// A client of the manager at `addr`, authenticated as this node.
    pub fn client_of(&self, addr: &str) -> crate::client::Client {
        crate::client::Client::tls(addr, self.http.clone(), pki::tls::manager_server_name())
            .with_timeout(NODE_CALL_TIMEOUT)
    }

    /// The leader's address, if it is another manager the store knows.
    pub fn leader_addr(&self) -> Option<String> {
        let status = self.store.node().status();
        if status.leader == 0 || status.leader == status.id {
            return None;
        }
        self.store.read(|s| {
            manager::cluster::manager_by_raft_id(&s.nodes, status.leader).map(|n| n.addr.clone())
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_leader(&self) -> bool {
        self.store.node().status().role == manager::raft::Role::Leader
    }
}

/// Which node may send Raft messages as which Raft id. A Raft id the store gives to a
/// manager is that manager's only. One it does not know is accepted only if it was
/// allocated after what this store has seen (the store is behind: a joiner before the
/// leader's snapshot, a manager that missed a join) and a manager told this node whose
/// it is (`Member::known`). An id the store allocated but no manager holds any more (a
/// demoted or removed manager's) is refused, whatever certificate comes with it.
pub fn sender_check(member: &Arc<Member>) -> manager::port::SenderCheck {
    let member = Arc::downgrade(member);
    Arc::new(move |sender: &pki::NodeId, from: u64| {
        let Some(member) = member.upgrade() else {
            return false;
        };
        let (owner, next) = member.store.read(|s| {
            (
                manager::cluster::manager_by_raft_id(&s.nodes, from).map(|n| n.id.clone()),
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

/// Restarts this daemon in place, in the mode its files now say, once the current
/// answer had time to reach the caller. Containers keep running (they are the shims'),
/// the Raft node is stopped first so its log is closed cleanly.
pub fn restart_daemon(store: Option<Arc<Store>>) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if let Some(store) = store {
            store.node().kill();
        }
        eprintln!("berth daemon: restarting to take up its new cluster role");
        let err = exec_self();
        eprintln!(
            "berth daemon: cannot restart itself ({err}); exiting so that a supervisor restarts it"
        );
        std::process::exit(1);
    });
}

fn exec_self() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    // /proc/self/exe works even if the binary was replaced since this process started.
    std::process::Command::new("/proc/self/exe")
        .args(std::env::args_os().skip(1))
        .exec()
}

//! [`LocalCluster`]: a Raft group of real nodes (real logs on disk, real fsyncs) in one
//! process, connected by a [`MemNetwork`] (faults on demand) or by TCP on loopback
//! (the real transport). The Raft tests and the benchmark use it, and so can tests of
//! anything built on a replicated state machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::NodeConfig;
use super::error::NodeError;
use super::node::{bootstrap, RaftNode};
use super::state_machine::StateMachine;
use super::tcp::{RaftListener, TcpListenerHandle, TcpTransport};
use super::transport::{MemNetwork, Transport};
use raft::StateRole;

/// Nodes `id` with their directories under one base directory.
#[derive(Debug)]
pub struct LocalCluster<S: StateMachine + Default> {
    // Nodes are declared (so dropped) before the network they send into.
    nodes: BTreeMap<u64, Arc<RaftNode<S>>>,
    /// The in-memory network; its fault controls do nothing to a TCP cluster.
    pub net: MemNetwork,
    tcp: Option<Tcp>,
    base: PathBuf,
    template: NodeConfig,
    /// (term, id) of every leadership of nodes since crashed (their status is gone).
    past_leaders: Vec<(u64, u64)>,
}

/// The TCP wiring: every node's address (kept across restarts) and its endpoints.
#[derive(Debug, Default)]
struct Tcp {
    addrs: BTreeMap<u64, SocketAddr>,
    transports: BTreeMap<u64, Arc<TcpTransport>>,
    listeners: BTreeMap<u64, TcpListenerHandle>,
}

impl<S: StateMachine + Default> LocalCluster<S> {
    /// Bootstraps voters `ids` (each with a fresh state machine) and starts them.
    /// `template` gives every setting but the id.
    pub fn start(base: &Path, ids: &[u64], template: NodeConfig) -> Result<Self, NodeError> {
        Self::start_with(base, ids, template, None)
    }

    /// Like [`LocalCluster::start`], with the nodes talking TCP over 127.0.0.1.
    pub fn start_tcp(base: &Path, ids: &[u64], template: NodeConfig) -> Result<Self, NodeError> {
        Self::start_with(base, ids, template, Some(Tcp::default()))
    }

    fn start_with(
        base: &Path,
        ids: &[u64],
        template: NodeConfig,
        tcp: Option<Tcp>,
    ) -> Result<Self, NodeError> {
        for &id in ids {
            bootstrap(&base.join(format!("n{id}")), ids, &S::default())?;
        }
        let mut cluster = LocalCluster {
            nodes: BTreeMap::new(),
            net: MemNetwork::new(),
            tcp,
            base: base.to_path_buf(),
            template,
            past_leaders: Vec::new(),
        };
        for &id in ids {
            cluster.start_node(id)?;
        }
        Ok(cluster)
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.base.join(format!("n{id}"))
    }

    /// Starts (or restarts) node `id` on its directory; a node that has none yet
    /// starts empty and waits to be added and sent a snapshot.
    pub fn start_node(&mut self, id: u64) -> Result<(), NodeError> {
        let cfg = NodeConfig {
            id,
            ..self.template.clone()
        };
        let dir = self.dir(id);
        let Some(tcp) = self.tcp.as_mut() else {
            let node = RaftNode::start(cfg, &dir, S::default(), self.net.transport())?;
            self.net.register(id, node.inbox());
            self.nodes.insert(id, Arc::new(node));
            return Ok(());
        };
        let tcp_err = |e: super::tcp::TcpError| NodeError::Stopped {
            id,
            reason: e.to_string(),
        };
        // A restarted node listens where it did before: its peers know that address.
        let want = tcp
            .addrs
            .get(&id)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = RaftListener::bind(want).map_err(tcp_err)?;
        let addr = listener.addr();
        if tcp.addrs.insert(id, addr).is_none() {
            for t in tcp.transports.values() {
                t.set_peer(id, addr).map_err(tcp_err)?;
            }
        }
        let peers: Vec<(u64, SocketAddr)> = tcp
            .addrs
            .iter()
            .filter(|(&p, _)| p != id)
            .map(|(&p, &a)| (p, a))
            .collect();
        let transport = TcpTransport::new(&peers).map_err(tcp_err)?;
        let node = RaftNode::start(
            cfg,
            &dir,
            S::default(),
            transport.clone() as Arc<dyn Transport>,
        )?;
        let handle = listener.serve(node.inbox()).map_err(tcp_err)?;
        tcp.transports.insert(id, transport);
        tcp.listeners.insert(id, handle);
        self.nodes.insert(id, Arc::new(node));
        Ok(())
    }

    /// Kills node `id` (see [`RaftNode::kill`]) and takes it off the network.
    pub fn crash(&mut self, id: u64) {
        self.net.unregister(id);
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.listeners.remove(&id);
            tcp.transports.remove(&id);
        }
        if let Some(node) = self.nodes.remove(&id) {
            node.kill();
            let terms = node.status().led_terms;
            self.past_leaders.extend(terms.into_iter().map(|t| (t, id)));
        }
    }

    /// Every term in which some node was leader, with the nodes that led in it, over
    /// the cluster's whole life (crashed incarnations included). Raft allows one.
    pub fn leadership(&self) -> BTreeMap<u64, BTreeSet<u64>> {
        let mut by_term: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        let live = self
            .nodes
            .values()
            .flat_map(|n| n.status().led_terms.into_iter().map(|t| (t, n.id())))
            .collect::<Vec<_>>();
        for (term, id) in self.past_leaders.iter().copied().chain(live) {
            by_term.entry(term).or_default().insert(id);
        }
        by_term
    }

    /// Node `id`'s TCP address, in a TCP cluster.
    pub fn addr(&self, id: u64) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|t| t.addrs.get(&id).copied())
    }

    pub fn node(&self, id: u64) -> Option<Arc<RaftNode<S>>> {
        self.nodes.get(&id).cloned()
    }

    /// The ids of the running nodes.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The running node among `among` that is leader in the highest term, if any.
    pub fn leader_among(&self, among: &[u64]) -> Option<u64> {
        among
            .iter()
            .filter_map(|id| self.nodes.get(id))
            .map(|n| n.status())
            .filter(|s| s.role == StateRole::Leader)
            .max_by_key(|s| s.term)
            .map(|s| s.id)
    }

    /// Polls until one of `among` is leader and every other running node of `among`
    /// follows it, or `timeout` passes.
    pub fn wait_leader(&self, among: &[u64], timeout: Duration) -> Option<u64> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader_among(among) {
                let term = self.nodes.get(&l).map(|n| n.status().term);
                let agreed = among.iter().filter_map(|id| self.nodes.get(id)).all(|n| {
                    let s = n.status();
                    s.leader == l && Some(s.term) == term
                });
                if agreed {
                    return Some(l);
                }
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls until every running node has applied the same index as the others and
    /// their state machines hash the same, or `timeout` passes. Returns whether they
    /// converged.
    pub fn wait_converged(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let views: Vec<(u64, u64, [u8; 32])> = self
                .nodes
                .values()
                .map(|n| {
                    let s = n.status();
                    (s.applied, s.commit, n.hash())
                })
                .collect();
            let first = views.first();
            if first.is_some_and(|f| views.iter().all(|v| v.0 == f.0 && v.2 == f.2 && v.1 == f.1)) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

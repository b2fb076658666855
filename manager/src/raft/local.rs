//! [`LocalCluster`]: a Raft group of real nodes (real logs on disk, real fsyncs) in one
//! process, connected by a [`MemNetwork`]. The Raft tests and the benchmark use it,
//! and so can tests of anything built on a replicated state machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::node::{bootstrap, Node, NodeConfig, NodeError, Role};
use super::state_machine::StateMachine;
use super::transport::MemNetwork;

/// Nodes `id` with their directories under one base directory.
#[derive(Debug)]
pub struct LocalCluster<S: StateMachine + Default> {
    // Nodes are declared (so dropped) before the network they send into.
    nodes: BTreeMap<u64, Arc<Node<S>>>,
    pub net: MemNetwork,
    base: PathBuf,
    template: NodeConfig,
}

impl<S: StateMachine + Default> LocalCluster<S> {
    /// Bootstraps voters `ids` (each with a fresh state machine) and starts them.
    /// `template` gives every setting but the id.
    pub fn start(base: &Path, ids: &[u64], template: NodeConfig) -> Result<Self, NodeError> {
        for &id in ids {
            bootstrap(&base.join(format!("n{id}")), ids, &S::default())?;
        }
        let mut cluster = LocalCluster {
            nodes: BTreeMap::new(),
            net: MemNetwork::new(),
            base: base.to_path_buf(),
            template,
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
        let node = Node::start(cfg, &self.dir(id), S::default(), self.net.transport())?;
        self.net.register(id, node.inbox());
        self.nodes.insert(id, Arc::new(node));
        Ok(())
    }

    /// Kills node `id` (see [`Node::kill`]) and takes it off the network.
    pub fn crash(&mut self, id: u64) {
        self.net.unregister(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.kill();
        }
    }

    pub fn node(&self, id: u64) -> Option<Arc<Node<S>>> {
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
            .filter(|s| s.role == Role::Leader)
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

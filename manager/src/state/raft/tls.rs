//! [`TlsTransport`]: Raft messages to peers over mutual TLS, the way managers of a
//! cluster send them. The receiving side is the cluster port (`crate::port`), which
//! serves Raft and the HTTP API on one TCP port and tells them apart by ALPN.
//!
//! Each peer is dialed by its node id as the TLS server name
//! ([`pki::tls::node_server_name`]): the certificate must be that node's, so a peer
//! whose address now belongs to another node (or a node of another cluster) is never
//! sent a message. The client config is the caller's
//! (`crate::port::raft_client_config`: berth's credentials, the deny list, ALPN
//! `berth-raft/1`). Everything else (a writer thread per peer, a bounded queue,
//! batching, reconnecting with back-off, the frames) is `tcp.rs`'s, shared.

use std::collections::HashMap;
use std::io::BufWriter;
use std::net::SocketAddr;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};

use pki::NodeId;
use raft::eraftpb::Message;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::tcp::{connect, spawn_writer, CONNECT_TIMEOUT};
use super::transport::Transport;

/// Sends to peers by Raft id over mutual TLS.
pub struct TlsTransport {
    client: Arc<ClientConfig>,
    peers: Mutex<HashMap<u64, Peer>>,
}

struct Peer {
    node: NodeId,
    addr: SocketAddr,
    queue: Option<SyncSender<Message>>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("peers", &self.peers())
            .finish_non_exhaustive()
    }
}

impl TlsTransport {
    /// A transport with no peers yet; `client` is what it dials with.
    pub fn new(client: Arc<ClientConfig>) -> Arc<TlsTransport> {
        Arc::new(TlsTransport {
            client,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Sets where Raft peer `raft_id` is: node `node` at `addr`. Nothing happens if that
    /// is already what the transport knows (so the caller may call it on every store
    /// change); otherwise the peer's old connection and queue are dropped and a new
    /// writer starts.
    ///
    /// If the writer thread cannot be started (the process is out of threads), the
    /// peer is recorded without one and its messages are dropped, as a down link's
    /// are; the next call with the same peer tries again.
    pub fn set_peer(&self, raft_id: u64, node: NodeId, addr: SocketAddr) {
        let mut peers = self.lock();
        if let Some(p) = peers.get(&raft_id) {
            if p.node == node && p.addr == addr && p.queue.is_some() {
                return;
            }
        }
        let queue = self.spawn_writer(raft_id, &node, addr);
        // An old writer (if any) ends when its queue's sender is dropped here.
        peers.insert(raft_id, Peer { node, addr, queue });
    }

    /// A writer thread dialing `node` at `addr`; None if no thread could be started.
    fn spawn_writer(
        &self,
        raft_id: u64,
        node: &NodeId,
        addr: SocketAddr,
    ) -> Option<SyncSender<Message>> {
        let client = self.client.clone();
        let name = pki::tls::node_server_name(node);
        spawn_writer(raft_id, move || {
            let conn = ClientConnection::new(client.clone(), name.clone())
                .map_err(std::io::Error::other)?;
            let sock = connect(addr)?;
            let mut stream = StreamOwned::new(conn, sock);
            // Finish the handshake here, bounded, so a server we refuse (not node
            // `node`, another CA, denied) fails this connect and backs off. The
            // server's refusal of *our* certificate arrives only later (TLS 1.3),
            // as a failed write, which backs off too.
            stream.sock.set_read_timeout(Some(CONNECT_TIMEOUT))?;
            while stream.conn.is_handshaking() {
                stream.conn.complete_io(&mut stream.sock)?;
            }
            Ok(BufWriter::with_capacity(256 << 10, stream))
        })
        .ok()
    }

    /// Closes the connection to every peer whose node is in `deny` (the deny list is
    /// checked at handshake; an open connection outlives it). The peer stays known,
    /// and every reconnection is refused at the handshake until it is allowed again
    /// or removed. Returns how many peers were cut. Call it, with the port's
    /// `close_denied`, whenever nodes are denied.
    pub fn close_denied(&self, deny: &pki::DenyList) -> usize {
        let denied: Vec<(u64, NodeId, SocketAddr)> = self
            .peers()
            .into_iter()
            .filter(|(_, node, _)| deny.contains(node))
            .collect();
        let mut peers = self.lock();
        for (id, node, addr) in &denied {
            // A fresh writer: the old one's queue sender is dropped, so it ends and
            // its connection with it.
            let queue = self.spawn_writer(*id, node, *addr);
            peers.insert(
                *id,
                Peer {
                    node: node.clone(),
                    addr: *addr,
                    queue,
                },
            );
        }
        denied.len()
    }

    /// Forgets peer `raft_id`; its writer ends once its queue is drained.
    pub fn remove_peer(&self, raft_id: u64) {
        self.lock().remove(&raft_id);
    }

    /// Every known peer: (Raft id, node id, address), by Raft id.
    pub fn peers(&self) -> Vec<(u64, NodeId, SocketAddr)> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .map(|(&id, p)| (id, p.node.clone(), p.addr))
            .collect();
        out.sort_by_key(|p| p.0);
        out
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Peer>> {
        // A map of queues cannot be left half-updated by a panic in a way that matters.
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Transport for TlsTransport {
    fn send(&self, msg: Message) {
        let peers = self.lock();
        if let Some(queue) = peers.get(&msg.to).and_then(|p| p.queue.as_ref()) {
            // A full queue drops, as a lossy network would: Raft resends.
            let _ = queue.try_send(msg);
        }
    }
}

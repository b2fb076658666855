//! The Raft group over mutual TLS, the way managers of a cluster talk: every node has
//! its own cluster port (`manager::port`) on 127.0.0.1 and a `TlsTransport`, with
//! certificates from one `pki::Ca`. Elections, replication through every node, a
//! leader's death, a node put in the deny list, and a stranger from another CA.
//!
//! `commit_latency_over_mtls_vs_plain_tcp` is also the measurement of what TLS costs:
//! `BERTH_RAFT_TLS_BENCH=1000 cargo test --release -p manager --test raft_tls --
//! --nocapture commit_latency` prints p50/p99 of that many sequential writes on each
//! transport (without the variable: 30 writes, a smoke run).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{block, put};
use manager::port::{self, RaftSink};
use manager::state::raft::kv::{Kv, KvResponse};
use manager::state::raft::tls::TlsTransport;
use manager::state::raft::{bootstrap, LocalCluster, NodeConfig, RaftNode, Transport};
use pki::{Ca, CertRequest, DenyList, Identity, NodeCredentials, NodeId, Role};
use raft::StateRole;

fn config() -> NodeConfig {
    NodeConfig {
        snapshot_entries: 30,
        ..common::fast_config()
    }
}

const SECS5: Duration = Duration::from_secs(5);

fn name(id: u64) -> NodeId {
    NodeId::new(&format!("m{id}")).expect("node id")
}

fn creds(ca: &Ca, node: &NodeId) -> NodeCredentials {
    ca.issue(
        &CertRequest::new(Identity::new(node.clone(), Role::Manager)).address("127.0.0.1"),
        SystemTime::now(),
    )
    .expect("issue manager credentials")
}

/// One manager: its Raft node, its port, its transport.
struct Member {
    node: Arc<RaftNode<Kv>>,
    port: port::Port,
    transport: Arc<TlsTransport>,
}

/// Three (or more) managers over mutual TLS in one process. Ports run on `rt`;
/// dropping the cluster kills the nodes and closes the ports.
struct TlsCluster {
    members: BTreeMap<u64, Member>,
    addrs: BTreeMap<u64, SocketAddr>,
    /// Shared by every node's configs: as if the store had replicated it everywhere.
    deny: DenyList,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl TlsCluster {
    fn start(ids: &[u64], cfg: NodeConfig) -> TlsCluster {
        let ca = Ca::create(SystemTime::now()).expect("CA");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let deny = DenyList::new();
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for &id in ids {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            addrs.insert(id, l.local_addr().expect("addr"));
            listeners.insert(id, l);
        }
        let mut members = BTreeMap::new();
        for &id in ids {
            let node_dir = dir.path().join(format!("n{id}"));
            bootstrap(&node_dir, ids, &Kv::default()).expect("bootstrap");
            let creds = creds(&ca, &name(id));
            let transport =
                TlsTransport::new(port::raft_client_config(&creds, &deny).expect("client config"));
            for (&peer, &addr) in addrs.iter().filter(|(&p, _)| p != id) {
                transport.set_peer(peer, name(peer), addr);
            }
            let node = RaftNode::start(
                NodeConfig { id, ..cfg.clone() },
                &node_dir,
                Kv::default(),
                transport.clone() as Arc<dyn Transport>,
            )
            .expect("start node");
            let sink = RaftSink::new();
            sink.set(node.inbox());
            let tls = port::server_config(&creds, &deny).expect("server config");
            let listener = listeners.remove(&id).expect("listener");
            let port = {
                let _guard = rt.enter();
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                port::spawn(listener, tls, sink, axum::Router::new())
            };
            members.insert(
                id,
                Member {
                    node: Arc::new(node),
                    port,
                    transport,
                },
            );
        }
        TlsCluster {
            members,
            addrs,
            deny,
            rt,
            _dir: dir,
        }
    }

    fn node(&self, id: u64) -> Arc<RaftNode<Kv>> {
        self.members[&id].node.clone()
    }

    fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// Kills node `id` and closes its port.
    fn crash(&mut self, id: u64) {
        if let Some(m) = self.members.remove(&id) {
            m.node.kill();
            let _guard = self.rt.enter();
            drop(m.port);
        }
    }

    /// Polls until one of `among` leads and the others of `among` follow it.
    fn wait_leader(&self, among: &[u64]) -> Option<u64> {
        let end = Instant::now() + SECS5;
        while Instant::now() < end {
            let statuses: Vec<_> = among.iter().map(|&i| self.node(i).status()).collect();
            if let Some(l) = statuses.iter().find(|s| s.role == StateRole::Leader) {
                if statuses
                    .iter()
                    .all(|s| s.leader == l.id && s.term == l.term)
                {
                    return Some(l.id);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Polls until `among` have applied the same index and hash the same.
    fn wait_converged(&self, among: &[u64]) -> bool {
        let end = Instant::now() + SECS5;
        while Instant::now() < end {
            let views: BTreeSet<_> = among
                .iter()
                .map(|&i| {
                    let n = self.node(i);
                    (n.status().applied, n.hash())
                })
                .collect();
            if views.len() == 1 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Writes through node `via` (a follower forwards to the leader), retrying while
    /// an election is under way.
    fn write(&self, via: u64, key: &str, value: &str) -> KvResponse {
        let end = Instant::now() + SECS5;
        loop {
            match block(self.node(via).propose(put(key, value))) {
                Ok(resp) => return KvResponse::decode(&resp).expect("response"),
                Err(e) => assert!(Instant::now() < end, "write {key} via {via}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The ids of node `at`'s open Raft connections from node `from`.
    fn raft_connections(&self, at: u64, from: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = self.members[&at]
            .port
            .connections()
            .into_iter()
            .filter(|c| c.kind == Some(port::Kind::Raft) && c.peer == Some(name(from)))
            .map(|c| c.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn wait_for(&self, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + SECS5;
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        f()
    }

    fn delivered(&self, at: u64, from: u64) -> u64 {
        self.members[&at].port.raft_delivered(&name(from))
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        // Nodes first (they send into the ports), then the ports on their runtime.
        for m in self.members.values() {
            m.node.kill();
        }
        let _guard = self.rt.enter();
        self.members.clear();
    }
}

#[test]
fn three_nodes_over_mtls_replicate_through_every_node_and_survive_a_leader_kill() {
    let mut c = TlsCluster::start(&[1, 2, 3], config());
    let leader = c.wait_leader(&[1, 2, 3]).expect("a leader over mTLS");
    for i in 0..30 {
        let via = [1, 2, 3][i % 3];
        assert!(c.write(via, &format!("k{i}"), "a").ok);
    }
    assert!(c.wait_converged(&[1, 2, 3]));
    for id in [1, 2, 3] {
        assert_eq!(
            c.node(id)
                .with_state(|kv| kv.values.get("k29").cloned())
                .as_deref(),
            Some("a"),
            "node {id}"
        );
        // Leader and followers heard from each other over their ports (followers
        // talk only to the leader).
        if id != leader {
            assert!(
                c.delivered(id, leader) > 0,
                "node {id} got nothing from the leader"
            );
            assert!(
                c.delivered(leader, id) > 0,
                "the leader got nothing from {id}"
            );
        }
    }
    assert_eq!(
        c.members[&1]
            .transport
            .peers()
            .iter()
            .map(|p| (p.0, p.1.clone(), p.2))
            .collect::<Vec<_>>(),
        vec![(2, name(2), c.addrs[&2]), (3, name(3), c.addrs[&3])]
    );

    // set_peer with what the transport already knows keeps the connection...
    let f = [1, 2, 3]
        .into_iter()
        .find(|&i| i != leader)
        .expect("follower");
    let before = c.raft_connections(f, leader);
    assert_eq!(before.len(), 1, "{before:?}");
    for _ in 0..5 {
        c.members[&leader]
            .transport
            .set_peer(f, name(f), c.addrs[&f]);
    }
    assert!(c.write(leader, "same-peer", "x").ok);
    assert_eq!(c.raft_connections(f, leader), before);
    // ...while the wrong node id for f's address is refused by name: f hears nothing
    // more from the leader (the other follower keeps the quorum)...
    c.members[&leader]
        .transport
        .set_peer(f, name(9), c.addrs[&f]);
    assert!(c.wait_for(|| c.raft_connections(f, leader).is_empty()));
    let behind = c.node(f).status().applied;
    for i in 0..5 {
        assert!(c.write(leader, &format!("w{i}"), "x").ok);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.node(f).status().applied, behind);
    // ...until its real id is set again, and it catches up.
    c.members[&leader]
        .transport
        .set_peer(f, name(f), c.addrs[&f]);
    assert!(c.wait_converged(&[1, 2, 3]));

    c.crash(leader);
    let rest = c.ids();
    let new = c
        .wait_leader(&rest)
        .expect("a new leader among the two left");
    assert_ne!(new, leader);
    for i in 30..60 {
        let via = rest[i % 2];
        assert!(c.write(via, &format!("k{i}"), "b").ok);
    }
    assert!(c.wait_converged(&rest));
    assert_eq!(
        c.node(rest[0])
            .with_state(|kv| kv.values.get("k59").cloned())
            .as_deref(),
        Some("b")
    );
}

#[test]
fn a_denied_node_is_cut_off_and_another_ca_never_gets_through() {
    let c = TlsCluster::start(&[1, 2, 3], config());
    let leader = c.wait_leader(&[1, 2, 3]).expect("leader");
    for i in 0..5 {
        assert!(c.write(leader, &format!("k{i}"), "a").ok);
    }
    assert!(c.wait_converged(&[1, 2, 3]));

    // A stranger with a manager certificate of another CA, claiming to be node 9,
    // sends to every node for a while: nothing is ever delivered.
    let other = Ca::create(SystemTime::now()).expect("other CA");
    let stranger = TlsTransport::new(
        port::raft_client_config(&creds(&other, &name(9)), &DenyList::new()).expect("config"),
    );
    for id in c.ids() {
        stranger.set_peer(id, name(id), c.addrs[&id]);
    }
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        for id in c.ids() {
            let mut msg = manager::state::raft::eraftpb::Message::default();
            msg.set_msg_type(manager::state::raft::eraftpb::MessageType::MsgHeartbeat);
            msg.from = 9;
            msg.to = id;
            stranger.send(msg);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for id in c.ids() {
        assert_eq!(
            c.delivered(id, 9),
            0,
            "node {id} took the stranger's messages"
        );
    }

    // A follower is removed: denied everywhere and its open connections closed.
    let f = c
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("follower");
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != f).collect();
    c.deny.deny(name(f));
    for id in c.ids() {
        c.members[&id].port.close_denied(&c.deny);
        c.members[&id].transport.close_denied(&c.deny);
    }
    let before: Vec<u64> = others.iter().map(|&o| c.delivered(o, f)).collect();
    assert!(
        c.delivered(leader, f) > 0,
        "node {f} talked to the leader before"
    );
    let f_applied = c.node(f).status().applied;
    // The other two keep a quorum and commit.
    for i in 5..25 {
        assert!(c.write(leader, &format!("k{i}"), "b").ok);
    }
    assert!(c.wait_converged(&others));
    // Let f try for a while (it reconnects every 50 ms and campaigns when it hears
    // nothing): still nothing of it gets in, and nothing reaches it.
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<u64> = others.iter().map(|&o| c.delivered(o, f)).collect();
    assert_eq!(
        before, after,
        "node {f}'s messages were delivered after its removal"
    );
    let st = c.node(f).status();
    assert_eq!(
        st.applied, f_applied,
        "node {f} still receives entries after its removal: {st:?}"
    );
    assert!(c.node(leader).status().applied > f_applied);
    // The leader kept its leadership: f's campaigns never reached it.
    assert_eq!(c.wait_leader(&others), Some(leader));
}

/// Sequential writes through the leader, one at a time: each one's commit latency.
fn latencies(node: &RaftNode<Kv>, n: usize) -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let value = "x".repeat(100);
    (0..n)
        .map(|i| {
            let start = Instant::now();
            let resp = rt
                .block_on(node.propose(put(&format!("k{i}"), &value)))
                .expect("write acknowledged");
            assert!(KvResponse::decode(&resp).expect("response").ok);
            start.elapsed()
        })
        .collect()
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e3
}

#[test]
fn commit_latency_over_mtls_vs_plain_tcp() {
    let n: usize = std::env::var("BERTH_RAFT_TLS_BENCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let cfg = NodeConfig {
        tick: Duration::from_millis(10),
        request_timeout: Duration::from_secs(5),
        ..NodeConfig::new(0)
    };

    let tmp = tempfile::tempdir().unwrap();
    let tcp = LocalCluster::<Kv>::start_tcp(tmp.path(), &[1, 2, 3], cfg.clone()).unwrap();
    let leader = tcp.wait_leader(&[1, 2, 3], SECS5).expect("tcp leader");
    let plain = latencies(&tcp.node(leader).unwrap(), n);
    drop(tcp);

    let tls = TlsCluster::start(&[1, 2, 3], cfg);
    let leader = tls.wait_leader(&[1, 2, 3]).expect("tls leader");
    let mutual = latencies(&tls.node(leader), n);
    assert!(tls.wait_converged(&[1, 2, 3]));

    for (label, v) in [("tcp", &plain), ("mtls", &mutual)] {
        println!(
            "raft 3 nodes, {n} sequential writes over {label:<4}: p50={:.3}ms p99={:.3}ms",
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }
}

//! The Raft group over the real transport: TCP on 127.0.0.1, one listener per node.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use common::{block, put};
use manager::state::raft::kv::{Kv, KvResponse};
use manager::state::raft::{LocalCluster, NodeConfig};

fn config() -> NodeConfig {
    NodeConfig {
        snapshot_entries: 30,
        ..common::fast_config()
    }
}

const SECS5: Duration = Duration::from_secs(5);

/// Writes through the running nodes in turn until one acknowledges.
fn write(c: &LocalCluster<Kv>, key: &str, value: &str) -> KvResponse {
    let end = Instant::now() + SECS5;
    let ids = c.ids();
    for via in ids.iter().cycle() {
        assert!(Instant::now() < end, "write {key} not acknowledged in time");
        let Some(node) = c.node(*via) else { continue };
        if let Ok(resp) = block(node.propose(put(key, value))) {
            return KvResponse::decode(&resp).expect("response");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    unreachable!("cycle over a non-empty list")
}

fn hashes(c: &LocalCluster<Kv>) -> BTreeSet<[u8; 32]> {
    c.ids()
        .into_iter()
        .map(|id| c.node(id).expect("node").hash())
        .collect()
}

#[test]
fn three_nodes_over_tcp_commit_survive_a_leader_kill_and_take_a_fourth() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::<Kv>::start_tcp(tmp.path(), &[1, 2, 3], config()).unwrap();
    let leader = c.wait_leader(&[1, 2, 3], SECS5).expect("leader over tcp");
    for i in 0..20 {
        assert!(write(&c, &format!("k{i}"), "a").ok);
    }
    assert!(c.wait_converged(SECS5));

    let addr = c.addr(leader).unwrap();
    c.crash(leader);
    let rest: Vec<u64> = c.ids();
    let new = c.wait_leader(&rest, SECS5).expect("a new leader");
    assert_ne!(new, leader);
    for i in 20..60 {
        assert!(write(&c, &format!("k{i}"), "b").ok);
    }
    // The old leader comes back on its address, behind a compacted log.
    c.start_node(leader).unwrap();
    assert_eq!(c.addr(leader), Some(addr));
    assert!(
        c.wait_converged(SECS5),
        "the restarted node catches up over tcp"
    );
    assert_eq!(hashes(&c).len(), 1);

    // A fourth node joins over TCP: the others learn its address, it gets a snapshot.
    c.start_node(4).unwrap();
    let leader = c.wait_leader(&[1, 2, 3], SECS5).expect("leader");
    block(c.node(leader).unwrap().add_voter(4)).unwrap();
    assert!(write(&c, "after-join", "c").ok);
    assert!(c.wait_converged(SECS5), "node 4 catches up over tcp");
    let st = c.node(4).unwrap().status();
    assert!(st.snapshots_installed >= 1, "{st:?}");
    assert_eq!(
        c.node(4)
            .unwrap()
            .with_state(|kv| kv.values.get("k59").cloned())
            .as_deref(),
        Some("b")
    );
}

#[test]
fn garbage_on_a_raft_port_is_dropped_and_the_node_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let c = LocalCluster::<Kv>::start_tcp(tmp.path(), &[1, 2, 3], config()).unwrap();
    c.wait_leader(&[1, 2, 3], SECS5).expect("leader");
    for id in [1, 2, 3] {
        let addr = c.addr(id).unwrap();
        // An impossible length, then a frame that is not a Raft message.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&8u32.to_le_bytes()).unwrap();
        s.write_all(&[0xff; 8]).unwrap();
    }
    for i in 0..10 {
        assert!(write(&c, &format!("k{i}"), "v").ok);
    }
    assert!(c.wait_converged(SECS5));
    assert_eq!(hashes(&c).len(), 1);
}

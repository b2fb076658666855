//! Raft groups of real nodes (logs on disk, fsyncs) in one process over the in-memory
//! network: elections, commits, follower forwarding, ReadIndex, partitions (both ways
//! and one way), message loss, crashes and restarts, snapshot install, conf changes.
//! Every test ends by checking that the nodes' state machines hash the same.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use common::{block, put};
use manager::state::raft::kv::{Kv, KvCommand, KvResponse};
use manager::state::raft::{LocalCluster, NodeConfig, NodeError};
use raft::StateRole;

fn config() -> NodeConfig {
    NodeConfig {
        snapshot_entries: 10_000,
        segment_bytes: 64 << 10,
        ..common::fast_config()
    }
}

/// Runs `f` for at most `d`.
fn block_timeout<F: Future>(d: Duration, f: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    block(async { tokio::time::timeout(d, f).await })
}

fn start(tmp: &tempfile::TempDir, ids: &[u64], cfg: NodeConfig) -> LocalCluster<Kv> {
    LocalCluster::start(tmp.path(), ids, cfg).expect("start cluster")
}

/// Proposes `cmd`, first through `prefer`, then through the other running nodes,
/// retrying while there is no leader or a node stops, until `within` passes.
async fn write(
    c: &LocalCluster<Kv>,
    prefer: u64,
    cmd: Vec<u8>,
    within: Duration,
) -> anyhow::Result<KvResponse> {
    let end = Instant::now() + within;
    let mut order = vec![prefer];
    order.extend(c.ids().into_iter().filter(|&i| i != prefer));
    let mut last = None;
    for via in order.iter().cycle() {
        if Instant::now() >= end {
            break;
        }
        let Some(node) = c.node(*via) else { continue };
        match tokio::time::timeout(Duration::from_secs(1), node.propose(cmd.clone())).await {
            Ok(Ok(resp)) => return KvResponse::decode(&resp).context("undecodable response"),
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => last = Some("no answer within 1s".to_string()),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("write not acknowledged within {within:?}: {last:?}")
}

fn value(c: &LocalCluster<Kv>, id: u64, key: &str) -> Option<String> {
    c.node(id)
        .expect("node running")
        .with_state(|kv| kv.values.get(key).cloned())
}

fn hashes(c: &LocalCluster<Kv>) -> BTreeSet<[u8; 32]> {
    c.ids()
        .into_iter()
        .map(|id| c.node(id).expect("node").hash())
        .collect()
}

/// Terms in which more than one node was leader (must be none), crashed nodes'
/// earlier lives included.
fn split_terms(c: &LocalCluster<Kv>) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut by_term = c.leadership();
    by_term.retain(|_, ids| ids.len() > 1);
    by_term
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

const SECS5: Duration = Duration::from_secs(5);

#[test]
fn one_node_elects_itself_commits_and_keeps_its_state_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = start(&tmp, &[1], config());
    assert_eq!(c.wait_leader(&[1], SECS5), Some(1));
    let r1 = block(write(&c, 1, put("a", "1"), SECS5)).unwrap();
    let r2 = block(write(&c, 1, put("a", "2"), SECS5)).unwrap();
    assert!(r1.ok && r2.ok);
    assert_eq!(
        r2.prev.as_deref(),
        Some("1"),
        "the response is the state machine's"
    );
    assert!(r2.index > r1.index);
    let node = c.node(1).unwrap();
    let read = block(node.read(|kv| kv.values.get("a").cloned())).unwrap();
    assert_eq!(read.as_deref(), Some("2"));
    let before = node.hash();
    drop(node);

    c.crash(1);
    c.start_node(1).unwrap();
    assert_eq!(c.wait_leader(&[1], SECS5), Some(1));
    let node = c.node(1).unwrap();
    assert!(wait_until(SECS5, || node.status().applied >= r2.index));
    assert_eq!(node.hash(), before, "replayed to the same state");
    let r3 = block(write(&c, 1, put("a", "3"), SECS5)).unwrap();
    assert_eq!(r3.prev.as_deref(), Some("2"));
    assert!(r3.index > r2.index);
}

#[test]
fn three_nodes_elect_one_leader_forward_follower_writes_and_converge() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(&tmp, &[1, 2, 3], config());
    let leader = c.wait_leader(&[1, 2, 3], SECS5).expect("a leader");
    let follower = *c.ids().iter().find(|&&i| i != leader).unwrap();

    // A follower's proposal travels to the leader (raft-rs MsgPropose) and the
    // follower answers its caller when it applies the entry itself.
    let node = c.node(follower).unwrap();
    let resp = block(node.propose(put("from-follower", "yes"))).unwrap();
    let resp = KvResponse::decode(&resp).unwrap();
    assert!(resp.ok);
    assert_eq!(value(&c, follower, "from-follower").as_deref(), Some("yes"));
    let ls = c.node(leader).unwrap().status();
    assert!(
        ls.last_index >= resp.index,
        "the entry is in the leader's log"
    );

    for i in 0..30 {
        let via = [1, 2, 3][i % 3];
        let r = block(write(&c, via, put(&format!("k{i}"), &i.to_string()), SECS5)).unwrap();
        assert!(r.ok);
    }
    assert!(c.wait_converged(SECS5), "all nodes apply the same entries");
    assert_eq!(hashes(&c).len(), 1);
    for id in c.ids() {
        assert_eq!(value(&c, id, "k29").as_deref(), Some("29"));
        assert_eq!(c.node(id).unwrap().status().voters, vec![1, 2, 3]);
    }
    assert!(split_terms(&c).is_empty(), "{:?}", split_terms(&c));

    // Linearizable reads work on followers too.
    let read = block(c.node(follower).unwrap().read(|kv| kv.values.len())).unwrap();
    assert_eq!(read, 31);
    // Many at once share read rounds, and each still sees every acknowledged write.
    let last = block(write(&c, leader, put("last", "1"), SECS5))
        .unwrap()
        .index;
    let node = c.node(follower).unwrap();
    let reads =
        block(async { futures_util::future::join_all((0..100).map(|_| node.read_index())).await });
    for r in reads {
        assert!(r.unwrap() >= last);
    }
    assert_eq!(value(&c, follower, "last").as_deref(), Some("1"));
}

#[test]
fn many_concurrent_proposals_share_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(&tmp, &[1], config());
    c.wait_leader(&[1], SECS5).expect("leader");
    let node = c.node(1).unwrap();
    let before = node.status().log_syncs;
    let n = 300;
    let results = block(async {
        let futs: Vec<_> = (0..n)
            .map(|i| node.propose(put(&format!("c{i}"), "v")))
            .collect();
        futures_util::future::join_all(futs).await
    });
    assert!(
        results.iter().all(|r| r.is_ok()),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    // The status is published at the end of the loop's turn, after the answers.
    let last = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter_map(|b| KvResponse::decode(b))
        .map(|r| r.index)
        .max()
        .unwrap();
    assert!(wait_until(SECS5, || node.status().applied >= last));
    let syncs = node.status().log_syncs - before;
    assert!(syncs >= 1, "the writes were fsynced");
    assert!(
        syncs * 4 < n,
        "{n} proposals took {syncs} fsyncs: they were not batched"
    );
    assert_eq!(node.with_state(|kv| kv.values.len()), n as usize);
}

#[test]
fn a_node_without_a_leader_refuses_at_once_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = start(&tmp, &[1, 2, 3], config());
    c.crash(2);
    c.crash(3);
    let node = c.node(1).unwrap();
    // Alone, node 1 can never win an election (pre-vote fails), so it knows no leader.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let err = block(node.propose(put("x", "y"))).unwrap_err();
    // Refused, not left to run into the 2 s request timeout.
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(matches!(err, NodeError::NoLeader { id: 1 }), "{err}");
    assert!(err.to_string().contains("retry"), "{err}");
    let err = block(node.read_index()).unwrap_err();
    assert!(matches!(err, NodeError::NoLeader { .. }), "{err}");
    let err = block(node.propose(Vec::new())).unwrap_err();
    assert!(matches!(err, NodeError::EmptyCommand), "{err}");
    assert_ne!(node.status().role, StateRole::Leader);
}

#[test]
fn an_isolated_leader_steps_down_and_the_minority_commits_nothing_and_reads_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(&tmp, &[1, 2, 3], config());
    let old = c.wait_leader(&[1, 2, 3], SECS5).expect("leader");
    block(write(&c, old, put("before", "1"), SECS5)).unwrap();
    assert!(c.wait_converged(SECS5));
    let majority: Vec<u64> = c.ids().into_iter().filter(|&i| i != old).collect();

    c.net.isolate(old, &majority);
    let old_node = c.node(old).unwrap();
    // While it may still believe it leads: a write there does not commit, and a
    // ReadIndex there is not answered (Safe read-only: it needs a quorum's heartbeat acks).
    let minority_read = block_timeout(Duration::from_millis(300), old_node.read_index());
    assert!(!matches!(minority_read, Ok(Ok(_))), "{minority_read:?}");
    let minority_write = block_timeout(
        Duration::from_millis(800),
        old_node.propose(put("minority", "lost")),
    );
    assert!(!matches!(minority_write, Ok(Ok(_))), "{minority_write:?}");

    // check_quorum: the cut-off leader steps down by itself.
    assert!(wait_until(SECS5, || old_node.status().role != StateRole::Leader));
    let new = c
        .wait_leader(&majority, SECS5)
        .expect("the majority elects a leader");
    assert_ne!(new, old);
    assert!(c.node(new).unwrap().status().term > c.node(old).unwrap().status().term - 1);
    let r = block(write(&c, new, put("after", "2"), SECS5)).unwrap();
    assert!(r.ok);

    // No stale read on the minority: its local state lacks the write, and its
    // ReadIndex still does not return.
    assert_eq!(value(&c, old, "after"), None);
    let stale = block_timeout(Duration::from_millis(300), old_node.read_index());
    assert!(!matches!(stale, Ok(Ok(_))), "{stale:?}");

    c.net.heal();
    assert!(
        c.wait_converged(SECS5),
        "the old leader catches up after healing"
    );
    for id in c.ids() {
        assert_eq!(value(&c, id, "after").as_deref(), Some("2"));
        assert_eq!(value(&c, id, "before").as_deref(), Some("1"));
        assert_eq!(
            value(&c, id, "minority"),
            None,
            "node {id} applied a minority write"
        );
    }
    assert_eq!(hashes(&c).len(), 1);
    assert!(split_terms(&c).is_empty(), "{:?}", split_terms(&c));
    // And the old leader serves linearizable reads again.
    let read = block(old_node.read(|kv| kv.values.get("after").cloned())).unwrap();
    assert_eq!(read.as_deref(), Some("2"));
}

#[test]
fn one_way_partitions_and_lossy_links_keep_one_leader_per_term_and_converge() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(&tmp, &[1, 2, 3, 4, 5], config());
    let ids = c.ids();
    let leader = c.wait_leader(&ids, SECS5).expect("leader");
    c.net.set_drop_rate(0.2);
    c.net
        .set_delay(Duration::from_millis(1), Duration::from_millis(4));
    let mut acked = Vec::new();
    let deaf = *ids.iter().find(|&&i| i != leader).unwrap();
    // Phase 1: the leader's messages to one follower are lost (one way). The
    // follower's pre-votes fail, since the others still hear the leader.
    c.net.block(leader, deaf);
    for i in 0..30 {
        let via = ids[i % ids.len()];
        if let Ok(r) = block(write(&c, via, put(&format!("p{i}"), "v"), SECS5)) {
            assert!(r.ok);
            acked.push(format!("p{i}"));
        }
    }
    // Phase 2: the leader cannot hear anyone (one way in): it must step down, and
    // the others elect a new leader.
    c.net.heal();
    for &o in ids.iter().filter(|&&i| i != leader) {
        c.net.block(o, leader);
    }
    for i in 30..60 {
        let via = ids[i % ids.len()];
        if let Ok(r) = block(write(&c, via, put(&format!("p{i}"), "v"), SECS5)) {
            assert!(r.ok);
            acked.push(format!("p{i}"));
        }
    }
    assert!(
        acked.len() >= 50,
        "only {} of 60 writes acknowledged",
        acked.len()
    );
    c.net.heal();
    c.net.set_drop_rate(0.0);
    c.net.set_delay(Duration::ZERO, Duration::ZERO);
    assert!(c.wait_leader(&ids, SECS5).is_some());
    assert!(
        c.wait_converged(Duration::from_secs(10)),
        "converged after healing"
    );
    assert_eq!(hashes(&c).len(), 1);
    for id in &ids {
        for k in &acked {
            assert_eq!(
                value(&c, *id, k).as_deref(),
                Some("v"),
                "node {id} lost {k}"
            );
        }
    }
    assert!(split_terms(&c).is_empty(), "{:?}", split_terms(&c));
    let (delivered, dropped) = c.net.counts();
    assert!(
        dropped * 10 > delivered,
        "the network did drop messages: {dropped}/{delivered}"
    );
}

#[test]
fn nodes_killed_and_restarted_while_a_client_writes_lose_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        // Small snapshots and segments, so restarts replay after a snapshot and
        // segments are rotated and dropped while the test runs.
        snapshot_entries: 40,
        segment_bytes: 4 << 10,
        ..config()
    };
    let c = Arc::new(Mutex::new(start(&tmp, &[1, 2, 3], cfg)));
    let ids = [1u64, 2, 3];
    c.lock().unwrap().wait_leader(&ids, SECS5).expect("leader");
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut acked: Vec<u64> = Vec::new();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let node = c.lock().expect("cluster").node(ids[(i % 3) as usize]);
                let Some(node) = node else { continue };
                let res = rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        node.propose(put(&format!("w{i}"), &i.to_string())),
                    )
                    .await
                });
                if let Ok(Ok(resp)) = res {
                    assert!(KvResponse::decode(&resp).expect("response").ok);
                    acked.push(i);
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            acked
        })
    };
    for round in 0..8u64 {
        std::thread::sleep(Duration::from_millis(150));
        let victim = {
            let c = c.lock().unwrap();
            // Every other round the leader: the hardest case for the client.
            if round % 2 == 0 {
                c.leader_among(&ids).unwrap_or(1)
            } else {
                ids[(round % 3) as usize]
            }
        };
        c.lock().unwrap().crash(victim);
        std::thread::sleep(Duration::from_millis(100));
        c.lock().unwrap().start_node(victim).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let acked = client.join().unwrap();
    assert!(
        acked.len() >= 20,
        "only {} writes acknowledged",
        acked.len()
    );

    let c = c.lock().unwrap();
    assert!(c.wait_leader(&ids, SECS5).is_some());
    assert!(c.wait_converged(Duration::from_secs(10)));
    for id in ids {
        let lost: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|i| value(&c, id, &format!("w{i}")) != Some(i.to_string()))
            .collect();
        assert!(
            lost.is_empty(),
            "node {id} lost acknowledged writes {lost:?}"
        );
        let st = c.node(id).unwrap().status();
        assert!(st.snapshot_index > 1, "node {id} never snapshotted: {st:?}");
    }
    assert_eq!(hashes(&c).len(), 1);
    let leadership = c.leadership();
    assert!(
        leadership.len() >= 3,
        "leaders were killed, others elected: {leadership:?}"
    );
    assert!(split_terms(&c).is_empty(), "{:?}", split_terms(&c));
}

#[test]
fn all_nodes_restarted_at_once_keep_the_state() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        snapshot_entries: 25,
        ..config()
    };
    let mut c = start(&tmp, &[1, 2, 3], cfg);
    let leader = c.wait_leader(&[1, 2, 3], SECS5).expect("leader");
    for i in 0..60 {
        block(write(&c, leader, put(&format!("k{i}"), "v"), SECS5)).unwrap();
    }
    assert!(c.wait_converged(SECS5));
    let before = hashes(&c);
    for id in [1, 2, 3] {
        c.crash(id);
    }
    for id in [1, 2, 3] {
        c.start_node(id).unwrap();
    }
    let leader = c
        .wait_leader(&[1, 2, 3], SECS5)
        .expect("a leader after the restart");
    assert!(c.wait_converged(SECS5));
    assert_eq!(hashes(&c), before, "same state after restarting everyone");
    let r = block(write(&c, leader, put("k0", "w"), SECS5)).unwrap();
    assert_eq!(r.prev.as_deref(), Some("v"));
}

#[test]
fn a_node_that_missed_compactions_catches_up_through_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        snapshot_entries: 20,
        ..config()
    };
    let mut c = start(&tmp, &[1, 2, 3], cfg);
    let leader = c.wait_leader(&[1, 2, 3], SECS5).expect("leader");
    let lagging = *c.ids().iter().find(|&&i| i != leader).unwrap();
    let missed_from = c.node(lagging).unwrap().status().last_index;
    c.crash(lagging);
    for i in 0..100 {
        block(write(
            &c,
            leader,
            put(&format!("k{i}"), &i.to_string()),
            SECS5,
        ))
        .unwrap();
    }
    let ls = c.node(leader).unwrap().status();
    assert!(
        ls.first_index > missed_from + 1,
        "the leader compacted past what the lagging node has: {ls:?}"
    );
    c.start_node(lagging).unwrap();
    assert!(c.wait_converged(SECS5));
    let st = c.node(lagging).unwrap().status();
    assert!(st.snapshots_installed >= 1, "{st:?}");
    assert_eq!(value(&c, lagging, "k99").as_deref(), Some("99"));
    assert_eq!(hashes(&c).len(), 1);
    // It restarts from the installed snapshot, too.
    c.crash(lagging);
    c.start_node(lagging).unwrap();
    assert!(c.wait_converged(SECS5));
    assert_eq!(value(&c, lagging, "k0").as_deref(), Some("0"));
}

#[test]
fn a_fourth_node_is_added_and_a_follower_removed_while_the_cluster_keeps_committing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = start(&tmp, &[1, 2, 3], config());
    let leader = c.wait_leader(&[1, 2, 3], SECS5).expect("leader");
    for i in 0..10 {
        block(write(&c, leader, put(&format!("a{i}"), "v"), SECS5)).unwrap();
    }
    // Node 4 starts on an empty directory: no configuration, waits to be added.
    c.start_node(4).unwrap();
    assert!(c.node(4).unwrap().status().voters.is_empty());
    // The change is proposed on a follower and forwarded like any proposal.
    let follower = *c.ids().iter().find(|&&i| i != leader && i != 4).unwrap();
    let cs = block(c.node(follower).unwrap().add_voter(4)).unwrap();
    assert_eq!(
        cs.voters.iter().copied().collect::<BTreeSet<_>>(),
        [1, 2, 3, 4].into()
    );
    for i in 0..10 {
        block(write(&c, leader, put(&format!("b{i}"), "v"), SECS5)).unwrap();
    }
    assert!(c.wait_converged(SECS5), "node 4 catches up");
    let st4 = c.node(4).unwrap().status();
    assert!(
        st4.snapshots_installed >= 1,
        "a new node starts from a snapshot: {st4:?}"
    );
    assert_eq!(value(&c, 4, "a0").as_deref(), Some("v"));

    let removed = *c.ids().iter().find(|&&i| i != leader && i != 4).unwrap();
    let cs = block(c.node(leader).unwrap().remove_node(removed)).unwrap();
    assert!(!cs.voters.contains(&removed));
    c.crash(removed);
    let rest: Vec<u64> = c.ids();
    for i in 0..10 {
        block(write(
            &c,
            rest[i % rest.len()],
            put(&format!("c{i}"), "v"),
            SECS5,
        ))
        .unwrap();
    }
    assert!(c.wait_converged(SECS5));
    for id in c.ids() {
        let mut voters = c.node(id).unwrap().status().voters;
        voters.sort_unstable();
        assert_eq!(voters, rest, "node {id}'s configuration");
        assert_eq!(value(&c, id, "c9").as_deref(), Some("v"));
    }
    assert_eq!(hashes(&c).len(), 1);

    // The configuration survives restarts: node 4 (which joined by snapshot) and an
    // original member come back with the same voters (snapshot + replayed changes).
    let original = *rest.iter().find(|&&i| i != 4).unwrap();
    for id in [4, original] {
        c.crash(id);
        c.start_node(id).unwrap();
    }
    assert!(c.wait_leader(&rest, SECS5).is_some());
    block(write(&c, rest[0], put("d", "v"), SECS5)).unwrap();
    assert!(c.wait_converged(SECS5));
    for id in [4, original] {
        let mut voters = c.node(id).unwrap().status().voters;
        voters.sort_unstable();
        assert_eq!(voters, rest, "node {id}'s configuration after a restart");
    }
    assert_eq!(hashes(&c).len(), 1);
}

#[test]
fn a_node_restarted_on_a_log_with_a_torn_tail_repairs_it_and_rejoins() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = start(&tmp, &[1, 2, 3], config());
    let leader = c.wait_leader(&[1, 2, 3], SECS5).expect("leader");
    for i in 0..20 {
        block(write(&c, leader, put(&format!("k{i}"), "v"), SECS5)).unwrap();
    }
    assert!(c.wait_converged(SECS5));
    let victim = *c.ids().iter().find(|&&i| i != leader).unwrap();
    c.crash(victim);
    // What a power cut in the middle of a write leaves: half a record at the end.
    let log_dir = c.dir(victim).join("log");
    let mut segs: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let newest = segs.last().unwrap().clone();
    let good = std::fs::metadata(&newest).unwrap().len();
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap()
        .write_all(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
        .unwrap();
    for i in 20..30 {
        block(write(&c, leader, put(&format!("k{i}"), "v"), SECS5)).unwrap();
    }
    c.start_node(victim).unwrap();
    assert_eq!(
        std::fs::metadata(&newest).unwrap().len(),
        good,
        "torn tail cut"
    );
    assert!(c.wait_converged(SECS5));
    assert_eq!(value(&c, victim, "k29").as_deref(), Some("v"));
    assert_eq!(hashes(&c).len(), 1);
}

#[test]
fn a_second_conf_change_before_the_first_is_applied_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(&tmp, &[1, 2, 3], config());
    let leader = c.wait_leader(&[1, 2, 3], SECS5).expect("leader");
    let node = c.node(leader).unwrap();
    // Both proposed in the same turn of the leader's loop: the second finds the
    // first unapplied.
    let (first, second) = block(async { tokio::join!(node.add_learner(7), node.add_learner(8)) });
    let first = first.unwrap();
    assert!(first.learners.contains(&7));
    let err = second.unwrap_err();
    assert!(matches!(err, NodeError::ConfChange { .. }), "{err}");
    assert!(err.to_string().contains("retry"), "{err}");
    let cs = block(node.add_learner(8)).unwrap();
    assert!(cs.learners.contains(&8) && cs.learners.contains(&7));
}

/// A state machine that panics on the command "boom".
#[derive(Debug, Default)]
struct Fragile(Kv);

impl manager::state::raft::StateMachine for Fragile {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        assert!(command != b"boom", "fragile state machine met a boom");
        self.0.apply(index, command)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }
    fn restore(&mut self, s: &[u8]) -> Result<(), manager::state::raft::RestoreError> {
        self.0.restore(s)
    }
    fn hash(&self) -> [u8; 32] {
        self.0.hash()
    }
}

#[test]
fn a_panicking_state_machine_stops_its_node_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let c = LocalCluster::<Fragile>::start(tmp.path(), &[1], config()).unwrap();
    c.wait_leader(&[1], SECS5).expect("leader");
    let node = c.node(1).unwrap();
    block(node.propose(put("a", "1"))).unwrap();
    let err = block(node.propose(b"boom".to_vec())).unwrap_err();
    assert!(matches!(err, NodeError::Stopped { id: 1, .. }), "{err}");
    assert!(err.to_string().contains("panicked"), "{err}");
    assert!(node.status().stopped.is_some());
    // Later calls say the same instead of hanging.
    let err = block(node.propose(put("b", "2"))).unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
}

#[test]
fn a_learner_catches_up_is_promoted_and_a_removed_leader_hands_over() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = start(&tmp, &[1, 2, 3], config());
    let leader = c.wait_leader(&[1, 2, 3], SECS5).expect("leader");
    for i in 0..10 {
        block(write(&c, leader, put(&format!("a{i}"), "v"), SECS5)).unwrap();
    }
    c.start_node(4).unwrap();
    let cs = block(c.node(leader).unwrap().add_learner(4)).unwrap();
    assert!(cs.learners.contains(&4) && !cs.voters.contains(&4));
    assert!(c.wait_converged(SECS5), "the learner receives the log");
    assert_eq!(value(&c, 4, "a9").as_deref(), Some("v"));
    // A learner never leads.
    assert!(c.node(4).unwrap().status().led_terms.is_empty());
    let cs = block(c.node(leader).unwrap().add_voter(4)).unwrap();
    assert!(
        cs.voters.contains(&4) && !cs.learners.contains(&4),
        "{cs:?}"
    );

    // The leader removes itself: the others elect a leader among themselves and go on.
    let cs = block(c.node(leader).unwrap().remove_node(leader)).unwrap();
    assert!(!cs.voters.contains(&leader));
    let rest: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    let new = c.wait_leader(&rest, SECS5).unwrap_or_else(|| {
        let st: Vec<_> = c
            .ids()
            .iter()
            .map(|&i| c.node(i).unwrap().status())
            .collect();
        panic!("no leader among {rest:?}: {st:#?}")
    });
    assert_ne!(new, leader);
    c.crash(leader);
    let r = block(write(&c, new, put("after", "v"), SECS5)).unwrap();
    assert!(r.ok);
    assert!(c.wait_converged(SECS5));
    assert_eq!(hashes(&c).len(), 1);
    assert!(split_terms(&c).is_empty(), "{:?}", split_terms(&c));
}

#[test]
fn random_faults_lose_no_acknowledged_append_and_every_answer_matches_the_log() {
    // Rounds of one random fault each (a two-way cut, a one-way cut, lossy links, a
    // kill and restart), while a client appends unique values to one list through
    // random nodes. An append's answer says at which position its value landed: the
    // final list must hold every acknowledged value at exactly that position.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        snapshot_entries: 30,
        segment_bytes: 8 << 10,
        ..config()
    };
    let c = Arc::new(Mutex::new(start(&tmp, &[1, 2, 3, 4, 5], cfg)));
    let ids = [1u64, 2, 3, 4, 5];
    c.lock().unwrap().wait_leader(&ids, SECS5).expect("leader");
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            let mut acked: Vec<(String, usize)> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let node = c.lock().expect("cluster").node(ids[(i * 7 % 5) as usize]);
                let Some(node) = node else { continue };
                let value = format!("v{i}");
                let cmd = KvCommand::Append {
                    key: "log".into(),
                    value: value.clone(),
                }
                .encode();
                let res = rt.block_on(async {
                    tokio::time::timeout(Duration::from_millis(400), node.propose(cmd)).await
                });
                match res {
                    Ok(Ok(resp)) => {
                        let r = KvResponse::decode(&resp).expect("response");
                        let pos = r.prev.expect("position").parse().expect("number");
                        acked.push((value, pos));
                    }
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            acked
        })
    };
    // A fixed sequence of pseudo-random choices, so a failure can be replayed.
    let mut seed = 0x5EED_u64;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for _ in 0..10 {
        let a = ids[next(5) as usize];
        let b = ids[next(5) as usize];
        match next(4) {
            0 => {
                let others: Vec<u64> = ids.iter().copied().filter(|&i| i != a).collect();
                c.lock().unwrap().net.isolate(a, &others);
            }
            1 => c.lock().unwrap().net.block(a, b),
            2 => {
                c.lock().unwrap().net.set_drop_rate(0.25);
                c.lock()
                    .unwrap()
                    .net
                    .set_delay(Duration::from_millis(1), Duration::from_millis(5));
            }
            _ => {
                c.lock().unwrap().crash(a);
                std::thread::sleep(Duration::from_millis(100));
                c.lock().unwrap().start_node(a).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(250));
        let c = c.lock().unwrap();
        c.net.heal();
        c.net.set_drop_rate(0.0);
        c.net.set_delay(Duration::ZERO, Duration::ZERO);
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let acked = client.join().unwrap();
    assert!(
        acked.len() >= 20,
        "only {} appends acknowledged",
        acked.len()
    );

    let c = c.lock().unwrap();
    assert!(c.wait_leader(&ids, SECS5).is_some());
    assert!(c.wait_converged(Duration::from_secs(10)));
    assert_eq!(hashes(&c).len(), 1);
    assert!(split_terms(&c).is_empty(), "{:?}", split_terms(&c));
    for id in ids {
        let list = c
            .node(id)
            .unwrap()
            .with_state(|kv| kv.lists.get("log").cloned().unwrap_or_default());
        for (value, pos) in &acked {
            assert_eq!(
                list.get(*pos),
                Some(value),
                "node {id}: acknowledged {value} at position {pos}"
            );
        }
        let unique: BTreeSet<&String> = list.iter().collect();
        assert_eq!(unique.len(), list.len(), "node {id}: a value applied twice");
    }
}

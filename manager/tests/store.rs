//! The store over Raft: a one-voter group on disk (what `berth daemon` runs), and
//! stores over the nodes of a three-node group in one process (follower forwarding,
//! concurrent writers from two managers, convergence).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use manager::state::model::State;
use manager::state::raft::{LocalCluster, NodeConfig};
use manager::state::replicated::StoreMachine;
use manager::state::store::{Store, StoreError};
use spec::task::StackRecord;

fn stack(name: &str) -> StackRecord {
    serde_json::from_str(&format!(r#"{{"stack":{{"name":"{name}"}}}}"#)).expect("stack record")
}

fn add_stack(store: &Store, name: &str) {
    store
        .update(|s| {
            s.stacks.insert(name.to_string(), stack(name));
            Ok(())
        })
        .expect("add a stack");
}

/// Adds one to the `counter` entry of stack `name`'s scale map (a read-modify-write:
/// a lost update shows as a count below the number of increments).
fn increment(store: &Store, name: &str) {
    store
        .update(|s| {
            let r = s
                .stacks
                .get_mut(name)
                .ok_or_else(|| StoreError::Rejected(format!("no stack {name}")))?;
            *r.scale.entry("counter".into()).or_insert(0) += 1;
            Ok(())
        })
        .expect("increment");
}

fn counter(store: &Store, name: &str) -> u32 {
    store.read(|s| {
        s.stacks
            .get(name)
            .and_then(|r| r.scale.get("counter").copied())
            .unwrap_or(0)
    })
}

fn open(dir: &Path) -> Store {
    Store::open(dir).expect("open the store")
}

#[test]
fn commits_persist_across_reopen_and_watchers_see_every_version() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    assert!(tmp.path().join("raft/snapshot").exists(), "bootstrapped");
    let mut watch = store.watch();
    assert_eq!(*watch.borrow_and_update(), 0);
    add_stack(&store, "a");
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 1);
    for _ in 0..5 {
        increment(&store, "a");
        assert_eq!(*watch.borrow_and_update(), store.read(|s| s.version));
    }
    let before = store.snapshot();
    assert_eq!(before.version, 6);
    assert_eq!(counter(&store, "a"), 5);
    drop(store);

    let again = open(tmp.path());
    assert_eq!(again.snapshot(), before, "replayed to the same state");
    increment(&again, "a");
    assert_eq!(again.read(|s| s.version), 7);
    assert!(!tmp.path().join("state.json").exists());
}

#[test]
fn a_failed_or_empty_transaction_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let watch = store.watch();
    let last = store.node().status().last_index;
    let err = store.update(|s| {
        s.stacks.insert("a".into(), stack("a"));
        Err::<(), _>(StoreError::Rejected("no".into()))
    });
    assert!(matches!(err, Err(StoreError::Rejected(_))), "{err:?}");
    assert_eq!(store.update(|_| Ok(42)).unwrap(), 42);
    // Changing only the version is no change either.
    store
        .update(|s| {
            s.version = 99;
            Ok(())
        })
        .unwrap();
    assert_eq!(store.snapshot(), State::default());
    assert!(!watch.has_changed().unwrap());
    assert_eq!(
        store.node().status().last_index,
        last,
        "nothing was proposed"
    );
}

#[test]
fn a_state_json_of_an_older_berth_is_migrated_into_the_raft_group() {
    let tmp = tempfile::tempdir().unwrap();
    let mut old = State {
        version: 7,
        ..State::default()
    };
    old.stacks.insert("web".into(), stack("web"));
    std::fs::write(
        tmp.path().join("state.json"),
        serde_json::to_vec(&old).unwrap(),
    )
    .unwrap();
    let store = open(tmp.path());
    assert_eq!(store.snapshot(), old, "nothing lost");
    assert!(!tmp.path().join("state.json").exists());
    assert!(tmp.path().join("state.json.migrated").exists());
    increment(&store, "web");
    assert_eq!(store.read(|s| s.version), 8);
    let after = store.snapshot();
    drop(store);
    // The group is the state from now on: a reopen does not migrate again.
    let again = open(tmp.path());
    assert_eq!(again.snapshot(), after);
}

#[test]
fn a_corrupt_state_json_or_raft_dir_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("state.json"), "{not json").unwrap();
    let err = Store::open(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("state.json is not a berth state file"),
        "{err}"
    );
    assert!(
        !tmp.path().join("raft/snapshot").exists(),
        "nothing bootstrapped from a file that could not be read"
    );

    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    add_stack(&store, "a");
    drop(store);
    std::fs::write(tmp.path().join("raft/snapshot"), b"garbage, not a snapshot").unwrap();
    let err = Store::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("raft/snapshot"), "{err}");
    assert!(err.contains("moving it away starts an empty one"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_from_many_async_tasks_at_once_neither_block_the_runtime_nor_lose_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(open(tmp.path()));
    add_stack(&store, "a");
    // More tasks than workers, each committing from inside the runtime, as the API's
    // handlers do; a timer task must keep running meanwhile.
    let ticker = tokio::spawn(async {
        let mut ticks = 0;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            ticks += 1;
        }
        ticks
    });
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    increment(&store, "a");
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ticker.await.unwrap(), 5);
    assert_eq!(counter(&store, "a"), 40);
}

/// Three store nodes on an in-memory network, and the one that leads.
fn three_nodes(dir: &Path) -> (LocalCluster<StoreMachine>, u64) {
    let c =
        LocalCluster::<StoreMachine>::start(dir, &[1, 2, 3], cluster_config()).expect("cluster");
    let leader = c
        .wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .expect("leader");
    (c, leader)
}

fn cluster_config() -> NodeConfig {
    NodeConfig {
        tick: Duration::from_millis(10),
        election_ticks: 10,
        heartbeat_ticks: 2,
        request_timeout: Duration::from_secs(5),
        ..NodeConfig::new(0)
    }
}

fn stores(c: &LocalCluster<StoreMachine>) -> Vec<Store> {
    c.ids()
        .into_iter()
        .map(|id| Store::over(c.node(id).expect("node")))
        .collect()
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

#[test]
fn updates_through_any_node_are_applied_and_watched_on_all() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, leader) = three_nodes(tmp.path());
    let stores = stores(&c);
    let mut watches: Vec<_> = stores.iter().map(|s| s.watch()).collect();
    // Through every node in turn: followers forward to the leader.
    for (i, store) in stores.iter().enumerate() {
        add_stack(store, &format!("s{i}"));
        assert!(
            store.read(|s| s.stacks.contains_key(&format!("s{i}"))),
            "the writer reads its write when update returns"
        );
    }
    assert!(c.wait_converged(Duration::from_secs(5)));
    for (store, watch) in stores.iter().zip(watches.iter_mut()) {
        assert_eq!(store.read(|s| (s.version, s.stacks.len())), (3, 3));
        assert_eq!(
            *watch.borrow_and_update(),
            3,
            "every replica's watchers woke"
        );
    }
    assert_eq!(
        stores
            .iter()
            .map(|s| s.node().hash())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        1
    );
    assert!(stores.iter().any(|s| s.node().id() == leader));
}

#[test]
fn two_writers_on_two_nodes_incrementing_the_same_counter_lose_no_update() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, leader) = three_nodes(tmp.path());
    let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    // A follower's copy lags the leader's, so its writes conflict and retry.
    let a = Arc::new(Store::over(c.node(leader).unwrap()));
    let b = Arc::new(Store::over(c.node(followers[0]).unwrap()));
    add_stack(&a, "x");
    assert!(wait_until(Duration::from_secs(5), || b
        .read(|s| s.stacks.contains_key("x"))));
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|store| {
            std::thread::spawn(move || {
                for _ in 0..50 {
                    increment(&store, "x");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert!(c.wait_converged(Duration::from_secs(5)));
    let third = Store::over(c.node(followers[1]).unwrap());
    for store in [&a, &b, &Arc::new(third)] {
        assert_eq!(counter(store, "x"), 100);
        assert_eq!(store.read(|s| s.version), 101);
    }
    assert_eq!(a.node().hash(), b.node().hash());
}

#[test]
fn a_transaction_that_lost_to_another_manager_runs_again_on_the_fresh_state() {
    let tmp = tempfile::tempdir().unwrap();
    let c = LocalCluster::<StoreMachine>::start(tmp.path(), &[1, 2, 3], cluster_config())
        .expect("cluster");
    c.wait_leader(&[1, 2, 3], Duration::from_secs(5))
        .expect("leader");
    let a = Store::over(c.node(1).unwrap());
    let b = Store::over(c.node(2).unwrap());
    add_stack(&a, "x");
    assert!(wait_until(Duration::from_secs(5), || b
        .read(|s| s.stacks.contains_key("x"))));
    // b's closure, on its first run, lets a commit in between: b's transaction is then
    // computed from a state that is no longer the latest, so it must conflict and run
    // again, seeing a's increment.
    let mut runs = Vec::new();
    b.update(|s| {
        let seen = s.stacks["x"].scale.get("counter").copied().unwrap_or(0);
        runs.push(seen);
        if runs.len() == 1 {
            increment(&a, "x");
        }
        *s.stacks
            .get_mut("x")
            .expect("x")
            .scale
            .entry("counter".into())
            .or_insert(0) = seen + 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(runs, vec![0, 1], "ran twice, the second time on a's write");
    assert!(c.wait_converged(Duration::from_secs(5)));
    assert_eq!(counter(&a, "x"), 2);
    assert_eq!(counter(&b, "x"), 2);
}

/// A store pipelines its own transactions: many threads writing through one store
/// share fsyncs (fewer log syncs than transactions, where taking turns costs at least
/// one each), and none is lost, also when they all read-modify-write the same counter
/// while a second store on another node writes it too (its transactions break the
/// pipeline's chain: those computed after a transaction that lost must not apply on
/// the other writer's state).
#[test]
fn one_store_pipelines_its_writers_and_loses_no_update() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, leader) = three_nodes(tmp.path());
    let follower = c
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    let a = Arc::new(Store::over(c.node(leader).unwrap()));
    let b = Arc::new(Store::over(c.node(follower).unwrap()));
    add_stack(&a, "x");
    assert!(wait_until(Duration::from_secs(5), || b
        .read(|s| s.stacks.contains_key("x"))));

    // Contention: 16 threads on the leader's store and 2 on the follower's increment
    // one counter.
    let mut writers: Vec<_> = (0..16)
        .map(|_| {
            let store = a.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    increment(&store, "x");
                }
            })
        })
        .collect();
    writers.extend((0..2).map(|_| {
        let store = b.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                increment(&store, "x");
            }
        })
    }));
    for w in writers {
        w.join().unwrap();
    }
    assert!(c.wait_converged(Duration::from_secs(5)));
    assert_eq!(counter(&a, "x"), 16 * 20 + 2 * 20, "an increment was lost");
    assert_eq!(counter(&b, "x"), 16 * 20 + 2 * 20);
    assert_eq!(a.node().hash(), b.node().hash());

    // Over a network with 5 ms of delay each way, a commit takes a round trip of
    // 10 ms: writers that took turns would never have two transactions in flight.
    // 16 threads write their own stacks through the leader's store.
    c.net.set_delay(Duration::from_millis(5), Duration::ZERO);
    let writers: Vec<_> = (0..16)
        .map(|t| {
            let store = a.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    add_stack(&store, &format!("s{t}-{i}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(a.read(|s| s.stacks.len()), 1 + 16 * 10);
    assert!(
        a.pipeline_peak() >= 4,
        "at most {} transactions were in flight at once: the store did not pipeline",
        a.pipeline_peak()
    );
}

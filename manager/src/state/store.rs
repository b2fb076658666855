//! The store: berth's desired and observed state (stacks and tasks) as typed objects,
//! changed only in transactions, replicated and persisted before a transaction
//! returns, and watched by the orchestrator, the agent and the API.
//!
//! The state ([`State`], in [`super::model`]) is a Raft state machine
//! ([`super::replicated::StoreMachine`]): a transaction runs its closure on a copy of
//! the applied state, [`diff`]s the copy into [`Op`](super::model::Op)s, proposes them
//! with the version they were computed from, and returns once the Raft group committed
//! and this node applied them. A single host is a group of one
//! voter ([`Store::open`], in `<state>/manager/raft/`); a manager of a cluster is one
//! node of a larger group ([`Store::over`]). Reads and watches are local: they see
//! what this node applied.
//!
//! [`Store::update`] is synchronous (the daemon's loops and the API's handlers call it
//! alike). It waits for the Raft node, which runs on its own thread and needs no tokio,
//! so waiting can never deadlock on the runtime; on a worker of a multi-threaded tokio
//! runtime it waits inside `block_in_place`, so the worker's other tasks move elsewhere
//! meanwhile.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::model::{diff, State};
use super::raft::{bootstrap, NodeConfig, NodeError, RaftNode, Transport};
use super::replicated::{Shared, StoreMachine, Txn, TxnResponse};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a berth state file ({message}); move it away to start afresh")]
    Corrupt { path: PathBuf, message: String },
    #[error("{0}")]
    Rejected(String),
    #[error("cannot open the store's raft log in {dir}: {source} (on a single host this directory is the whole store: moving it away starts an empty one)")]
    Open {
        dir: PathBuf,
        #[source]
        source: NodeError,
    },
    #[error("the store could not commit a transaction: {0}")]
    Raft(#[source] NodeError),
    #[error("the transaction lost to concurrent writers {attempts} times in a row; retry it")]
    Conflict { attempts: u32 },
    #[error("the store's state machine refused a transaction: {0}")]
    Invalid(String),
}

/// How many times a transaction is re-run after losing to a concurrent writer (on
/// another manager: this store's own transactions take turns) before it gives up.
const MAX_ATTEMPTS: u32 = 64;
/// How long a transaction or the opening read waits for a leader to be elected.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// The node id of a single-host group's only voter.
const SINGLE_HOST_ID: u64 = 1;

/// The store: a handle on one Raft node of the store's state machine and on the state
/// that node applied.
#[derive(Debug)]
pub struct Store {
    node: Arc<RaftNode<StoreMachine>>,
    shared: Arc<Shared>,
    /// This store's own transactions in flight (see [`Store::update`]).
    writer: Mutex<Pipeline>,
}

/// A store pipelines its own transactions: each is computed on the state the ones
/// before it will have made, and proposed before they are applied, so that many
/// callers share Raft rounds and fsyncs instead of waiting for each other. Each
/// transaction names the one it follows (`Txn::after`), so none can apply on a state
/// it was not computed from; when one does not apply, the others after it cannot
/// either, and their callers start again from the applied state.
#[derive(Debug, Default)]
struct Pipeline {
    /// The state once every transaction in flight is applied.
    projected: State,
    in_flight: usize,
    /// The most that were ever in flight at once.
    peak: usize,
    /// One did not apply: `projected` is not what will be.
    broken: bool,
}

/// The transport of a one-voter group: it has no peer to send to (raft-rs addresses
/// no message to a node outside the configuration).
#[derive(Debug)]
struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, _msg: super::raft::eraftpb::Message) {}
}

/// Settings of a single-host group: with no peer to hear from, a short election
/// timeout only shortens the daemon's start (it elects itself within 100-200 ms).
pub fn single_host_config() -> NodeConfig {
    NodeConfig {
        tick: Duration::from_millis(20),
        election_ticks: 5,
        heartbeat_ticks: 1,
        // A snapshot is the whole state as JSON: often enough that a restart replays
        // little, rarely enough that writing it costs little.
        snapshot_entries: 1_000,
        ..NodeConfig::new(SINGLE_HOST_ID)
    }
}

/// Settings of a cluster's manager: elections after 0.5-1 s without a leader, so a
/// loaded host or a slow link does not depose a working leader.
pub fn cluster_config(raft_id: u64) -> NodeConfig {
    NodeConfig {
        tick: Duration::from_millis(50),
        election_ticks: 10,
        heartbeat_ticks: 2,
        snapshot_entries: 1_000,
        // A proposal lost with a dead leader is proposed again after this (see
        // `Store::propose`), so a write waits out an election, not much longer.
        request_timeout: Duration::from_secs(2),
        ..NodeConfig::new(raft_id)
    }
}

impl Store {
    /// Opens the single-host store under `manager_dir` (`<state>/manager`): a Raft group
    /// of one voter in `raft/`, bootstrapped on first start. A `state.json` left by a
    /// berth that kept the state in one file becomes the group's initial state and is
    /// renamed `state.json.migrated`. Returns once the node is leader and has applied
    /// its whole log.
    pub fn open(manager_dir: &Path) -> Result<Store, StoreError> {
        let raft_dir = manager_dir.join("raft");
        let legacy = manager_dir.join("state.json");
        // The bootstrap snapshot is written atomically: it marks a bootstrapped group.
        if !raft_dir.join("snapshot").exists() {
            let initial = read_state_file(&legacy)?.unwrap_or_default();
            bootstrap(&raft_dir, &[SINGLE_HOST_ID], &StoreMachine::new(initial)).map_err(|e| {
                StoreError::Open {
                    dir: raft_dir.clone(),
                    source: e.into(),
                }
            })?;
        }
        // Only once the group holds its state (after a crash between the two steps, on
        // the next start).
        if legacy.exists() {
            let migrated = manager_dir.join("state.json.migrated");
            std::fs::rename(&legacy, &migrated).map_err(|source| StoreError::Io {
                path: legacy.clone(),
                source,
            })?;
        }
        let sm = StoreMachine::default();
        let shared = sm.shared();
        let node = RaftNode::start(single_host_config(), &raft_dir, sm, Arc::new(NoPeers))
            .map_err(|source| StoreError::Open {
                dir: raft_dir.clone(),
                source,
            })?;
        let store = Store {
            node: Arc::new(node),
            shared,
            writer: Mutex::default(),
        };
        store.wait_ready().map_err(|e| match e {
            StoreError::Raft(source) => StoreError::Open {
                dir: raft_dir.clone(),
                source,
            },
            other => other,
        })?;
        Ok(store)
    }

    /// Opens this manager's replica of a cluster's store under `manager_dir`
    /// (`<state>/manager/raft/`), as Raft node `cfg.id` sending through `transport`.
    /// The directory is the single host's group made into the cluster's first member
    /// (`berth cluster init` keeps it), or empty for a manager that joined: it then
    /// starts with no configuration and waits for the leader's snapshot. Returns at once;
    /// [`Store::wait_ready`] waits for the group.
    pub fn open_member(
        manager_dir: &Path,
        cfg: NodeConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<Store, StoreError> {
        let raft_dir = manager_dir.join("raft");
        let sm = StoreMachine::default();
        let shared = sm.shared();
        let node =
            RaftNode::start(cfg, &raft_dir, sm, transport).map_err(|source| StoreError::Open {
                dir: raft_dir.clone(),
                source,
            })?;
        Ok(Store {
            node: Arc::new(node),
            shared,
            writer: Mutex::default(),
        })
    }

    /// A store over a running node of a larger group (a cluster's manager, or a test's
    /// [`super::raft::LocalCluster`]). Reads see what this node applied so far.
    pub fn over(node: Arc<RaftNode<StoreMachine>>) -> Store {
        let shared = node.with_state(|sm| sm.shared());
        Store {
            node,
            shared,
            writer: Mutex::default(),
        }
    }

    /// Waits until a leader confirms a read point and this node applied up to it: the
    /// state then holds every transaction committed before the call.
    pub fn wait_ready(&self) -> Result<(), StoreError> {
        blocking(|| self.wait_ready_here())
    }

    fn wait_ready_here(&self) -> Result<(), StoreError> {
        let end = Instant::now() + LEADER_WAIT;
        loop {
            match wait(self.node.read_index()) {
                Ok(_) => return Ok(()),
                Err(NodeError::NoLeader { .. }) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                // Asked of a leader that died: ask again.
                Err(NodeError::Timeout { .. }) if Instant::now() < end => {}
                Err(e) => return Err(StoreError::Raft(e)),
            }
        }
    }

    pub fn node(&self) -> &Arc<RaftNode<StoreMachine>> {
        &self.node
    }

    /// Whether this manager leads the Raft group now (a single host's one voter does):
    /// what the loops that act on the whole cluster's state (the orchestrator,
    /// git-ops) run on, and only there.
    pub fn is_leader(&self) -> bool {
        self.node.status().role == raft::StateRole::Leader
    }

    /// A snapshot of the applied state.
    pub fn snapshot(&self) -> State {
        self.shared.lock().clone()
    }

    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.shared.lock())
    }

    /// Runs `f` on a copy of the state and commits the changes it made (replicated,
    /// persisted, version bumped, watchers woken) if `f` returns Ok and changed
    /// anything; returns `f`'s result once this node applied them. If another manager
    /// committed first, `f` runs again on the fresh state (so it may run more than once
    /// and must only change the state it is given).
    pub fn update<R>(
        &self,
        f: impl FnMut(&mut State) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        blocking(|| self.update_here(f))
    }

    fn update_here<R>(
        &self,
        mut f: impl FnMut(&mut State) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let end = Instant::now() + LEADER_WAIT;
        let mut conflicts = 0;
        loop {
            // Computed and queued to the node in one turn, so the node receives this
            // store's transactions in the order they were computed.
            let submitted = {
                let mut p = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                if p.in_flight == 0 || p.broken {
                    p.projected = self.snapshot();
                    p.broken = false;
                }
                let base = &p.projected;
                let mut next = base.clone();
                let result = f(&mut next)?;
                let ops = diff(base, &next);
                if ops.is_empty() {
                    if p.in_flight == 0 {
                        return Ok(result);
                    }
                    // Nothing to change, if what is in flight applies: wait and see.
                    None
                } else {
                    let id = txn_id();
                    let txn = Txn {
                        base_version: base.version,
                        ops,
                        id,
                        after: Some(base.last_txn),
                    };
                    let answer = self.node.submit(txn.encode()).map_err(StoreError::Raft)?;
                    next.version += 1;
                    next.last_txn = id;
                    p.projected = next;
                    p.in_flight += 1;
                    p.peak = p.peak.max(p.in_flight);
                    Some((answer, result))
                }
            };
            let Some((answer, result)) = submitted else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            let answer = wait(answer);
            let mut p = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            p.in_flight -= 1;
            let applied = matches!(
                answer.as_ref().map(|b| TxnResponse::decode(b)),
                Ok(TxnResponse::Applied { .. })
            );
            if !applied {
                p.broken = true;
            }
            if p.in_flight == 0 {
                // The next transaction starts from the applied state: a second copy
                // of the whole state kept meanwhile would only cost memory.
                p.projected = State::default();
            }
            drop(p);
            match answer {
                Ok(bytes) => match TxnResponse::decode(&bytes) {
                    TxnResponse::Applied { .. } => return Ok(result),
                    // This node applied the winner before answering: the next
                    // projection starts from it.
                    TxnResponse::Conflict { .. } => {
                        conflicts += 1;
                        if conflicts >= MAX_ATTEMPTS {
                            return Err(StoreError::Conflict {
                                attempts: MAX_ATTEMPTS,
                            });
                        }
                        // A writer whose replica lags (a follower) keeps losing to a
                        // busy leader's pipeline if it retries at once: after a few
                        // losses it waits a random while, up to 64 ms, for the burst
                        // to pass.
                        if conflicts > 2 {
                            let cap = 1u64 << conflicts.min(6);
                            std::thread::sleep(Duration::from_millis(1 + txn_id() % cap));
                        }
                    }
                    TxnResponse::Invalid { message } => return Err(StoreError::Invalid(message)),
                },
                Err(NodeError::NoLeader { .. }) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                // A follower forwards proposals to the leader it knows; if that leader
                // died, the proposal is lost and times out. Computing and proposing it
                // again is safe: if the first copy did commit, the state has it and
                // the closure sees it (or the second copy conflicts, changing nothing).
                Err(NodeError::Timeout { .. }) if Instant::now() < end => {}
                Err(e) => return Err(StoreError::Raft(e)),
            }
        }
    }

    /// The most transactions this store has had in flight at once: how much its
    /// writers overlap (1 if they never did).
    pub fn pipeline_peak(&self) -> usize {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).peak
    }

    /// A receiver that sees the version of every transaction this node applies.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.watch()
    }

    /// Runs `f` on the applied state and the ids of node `node`'s tasks in it: a look
    /// at one node's tasks without a scan of all of them.
    pub fn read_node<R>(
        &self,
        node: &str,
        f: impl FnOnce(&State, &mut dyn Iterator<Item = &String>) -> R,
    ) -> R {
        self.shared.read_node(node, f)
    }

    /// A receiver that sees a new version whenever a transaction this node applies
    /// touches node `node`'s tasks, the stacks they come from, or its record.
    pub fn watch_node(&self, node: &str) -> watch::Receiver<u64> {
        self.shared.watch_node(node)
    }
}

/// Reads a state file of the berth that kept the store in one JSON file.
pub fn read_state_file(path: &Path) -> Result<Option<State>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Runs `f`, which waits for the Raft node (and for this store's turn), telling a
/// multi-threaded tokio runtime first so that it moves this worker's other tasks away.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        // A current-thread runtime has no other worker to hand its tasks to; the node
        // does not need it to make progress, so waiting is slow there, not a deadlock.
        _ => f(),
    }
}

/// A fresh, non-zero transaction id (`RandomState` is seeded from the OS once per
/// process and varies per call).
fn txn_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        | 1
}

/// Waits for a future of the Raft node (replies over channels, driven by the node's
/// thread, no runtime needed) from synchronous code.
fn wait<F: Future>(f: F) -> F::Output {
    park_on(f)
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` on this thread, parking between polls.
fn park_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

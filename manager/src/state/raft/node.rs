//! [`RaftNode`]: the handle callers use to talk to one Raft node (async methods, replies
//! over oneshot channels). The node itself runs on its own thread, in `driver.rs`; what
//! both sides use is below them: its settings (`config.rs`), its errors (`error.rs`),
//! its inputs and [`Inbox`] (`inbox.rs`), and the state machine and published
//! [`Status`] they share (`shared.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfChangeType, ConfChangeV2, ConfState};
use raft::{RawNode, ReadOnlyOption};
use tokio::sync::oneshot;

use super::config::NodeConfig;
use super::driver::Driver;
use super::error::NodeError;
use super::inbox::{Inbox, Input};
use super::log::{LogError, LogOptions, LogStore};
use super::shared::{lock, Shared, Status};
use super::state_machine::StateMachine;
use super::storage::DiskStorage;
use super::transport::Transport;

/// Makes the directory of one of a new cluster's first members: its log starts with
/// `voters` as the configuration and `initial`'s state. Nodes added later start from
/// an empty directory and get a snapshot from the leader.
pub fn bootstrap<S: StateMachine>(dir: &Path, voters: &[u64], initial: &S) -> Result<(), LogError> {
    LogStore::bootstrap(dir, voters, initial.snapshot())
}

/// A running Raft node. Dropping it is [`RaftNode::kill`].
pub struct RaftNode<S: StateMachine> {
    id: u64,
    tx: mpsc::Sender<Input>,
    shared: Arc<Shared<S>>,
    killed: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<S: StateMachine> std::fmt::Debug for RaftNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("id", &self.id).finish()
    }
}

impl<S: StateMachine> RaftNode<S> {
    /// Opens the node's directory (recovering log, hard state and snapshot), restores
    /// the state machine from the snapshot and starts the driver thread. Committed
    /// entries after the snapshot are applied again by the driver.
    pub fn start(
        cfg: NodeConfig,
        dir: &Path,
        mut sm: S,
        transport: Arc<dyn Transport>,
    ) -> Result<RaftNode<S>, NodeError> {
        let id = cfg.id;
        let log = LogStore::open(
            dir,
            LogOptions {
                segment_bytes: cfg.segment_bytes,
            },
        )?;
        let snap = log.snapshot().clone();
        let applied = snap.get_metadata().index;
        if applied > 0 {
            sm.restore(snap.get_data())
                .map_err(|source| NodeError::Restore { id, source })?;
        }
        let conf_state = snap.get_metadata().get_conf_state().clone();
        let storage = DiskStorage::new(log);
        let raft_cfg = raft::Config {
            id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        let raft_err = |source| NodeError::Raft { id, source };
        raft_cfg.validate().map_err(raft_err)?;
        let raw = RawNode::new(&raft_cfg, storage.clone(), &logger(id)).map_err(raft_err)?;

        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            sm: Mutex::new(sm),
            status: Mutex::new(Status {
                id,
                ..Status::default()
            }),
        });
        let killed = Arc::new(AtomicBool::new(false));
        let mut driver = Driver {
            id,
            killed: killed.clone(),
            raw,
            storage,
            rx,
            transport,
            shared: shared.clone(),
            cfg: cfg.clone(),
            incarnation: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            next_seq: 0,
            proposals: HashMap::new(),
            reads: HashMap::new(),
            read_batch: Vec::new(),
            reads_to_apply: Vec::new(),
            conf_state,
            applied,
            led_terms: Vec::new(),
            snapshots_installed: 0,
            snapshot_reports: Vec::new(),
        };
        driver.publish();
        let status = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                // A panic (in a state machine's apply, say) ends this node only; its
                // callers are told why instead of finding a silent, dead node.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run()));
                if let Err(panic) = run {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_string());
                    lock(&status.status).stopped = Some(format!("its driver panicked: {what}"));
                }
            })
            .map_err(|source| NodeError::Thread { id, source })?;
        Ok(RaftNode {
            id,
            tx,
            shared,
            killed,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where the transport delivers this node's messages.
    pub fn inbox(&self) -> Inbox {
        Inbox::new(self.tx.clone())
    }

    fn stopped(&self) -> NodeError {
        NodeError::Stopped {
            id: self.id,
            reason: self
                .status()
                .stopped
                .unwrap_or_else(|| "it was shut down".to_string()),
        }
    }

    fn send(&self, input: Input) -> Result<(), NodeError> {
        self.tx.send(input).map_err(|_| self.stopped())
    }

    /// Replicates `command` and returns the state machine's response once it is
    /// committed and applied on this node. On a follower the proposal goes to the
    /// leader; without a known leader it fails at once with [`NodeError::NoLeader`].
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Propose { command, reply })?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// [`RaftNode::propose`], with the proposal queued to the node before this returns: the
    /// node appends proposals in the order they were submitted, so a caller can
    /// pipeline commands that depend on each other's order. The future answers as
    /// `propose` does.
    pub fn submit(
        &self,
        command: Vec<u8>,
    ) -> Result<impl Future<Output = Result<Vec<u8>, NodeError>> + use<S>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::Propose { command, reply })?;
        let id = self.id;
        let status = self.shared.clone();
        Ok(async move {
            rx.await.map_err(|_| NodeError::Stopped {
                id,
                reason: lock(&status.status)
                    .stopped
                    .clone()
                    .unwrap_or_else(|| "it was shut down".to_string()),
            })?
        })
    }

    /// Proposes a configuration change; returns the configuration once applied here.
    pub async fn propose_conf_change(&self, cc: ConfChangeV2) -> Result<ConfState, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::ConfChange { cc, reply })?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Adds node `id` as a voter (start it on an empty directory; it receives a snapshot).
    pub async fn add_voter(&self, id: u64) -> Result<ConfState, NodeError> {
        self.propose_conf_change(single_change(ConfChangeType::AddNode, id))
            .await
    }

    pub async fn add_learner(&self, id: u64) -> Result<ConfState, NodeError> {
        self.propose_conf_change(single_change(ConfChangeType::AddLearnerNode, id))
            .await
    }

    pub async fn remove_node(&self, id: u64) -> Result<ConfState, NodeError> {
        self.propose_conf_change(single_change(ConfChangeType::RemoveNode, id))
            .await
    }

    /// A linearizable read point: returns an index once the leader confirmed with a
    /// quorum (ReadOnlyOption::Safe) that it is still leader, and this node has
    /// applied up to it. State read after this is at least as fresh as every write
    /// acknowledged before the call. A node cut off from a majority never returns
    /// (its caller gets a Timeout).
    pub async fn read_index(&self) -> Result<u64, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::ReadIndex { reply })?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// A linearizable read of the state machine.
    pub async fn read<R>(&self, f: impl FnOnce(&S) -> R) -> Result<R, NodeError> {
        self.read_index().await?;
        Ok(self.with_state(f))
    }

    /// A local (possibly stale) read of the state machine.
    pub fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&lock(&self.shared.sm))
    }

    pub fn hash(&self) -> [u8; 32] {
        self.with_state(|s| s.hash())
    }

    pub fn status(&self) -> Status {
        lock(&self.shared.status).clone()
    }
}

impl<S: StateMachine> RaftNode<S> {
    /// Stops the node's thread at the next step it takes, with no flush or farewell:
    /// what a `kill -9` leaves, since everything acknowledged was already fsynced.
    /// Waiting callers get [`NodeError::Stopped`].
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Input::Stop);
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl<S: StateMachine> Drop for RaftNode<S> {
    fn drop(&mut self) {
        self.kill();
    }
}

fn single_change(change_type: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(change_type);
    single.node_id = node_id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc
}

/// raft-rs logs through slog: nowhere by default, to standard error with
/// `BERTH_RAFT_LOG=1` (for debugging a test).
fn logger(id: u64) -> slog::Logger {
    if std::env::var_os("BERTH_RAFT_LOG").is_some() {
        slog::Logger::root(StderrDrain { id }, slog::o!())
    } else {
        slog::Logger::root(slog::Discard, slog::o!())
    }
}

struct StderrDrain {
    id: u64,
}

impl slog::Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        eprintln!(
            "raft[{}] {} {}",
            self.id,
            record.level().as_short_str(),
            record.msg()
        );
        Ok(())
    }
}

//! The node driver: one thread per Raft node that owns raft-rs's `RawNode`, the log and
//! the state machine, and runs the Ready loop as raft-rs documents it.
//!
//! Callers talk to it through [`Node`] (async methods, replies over oneshot channels);
//! peers through [`Inbox::deliver`]. Each turn of the loop takes one message, then
//! every other message already queued (so many concurrent proposals land in one Ready
//! and share one fsync), ticks when the tick is due, and handles the Ready:
//!
//! 1. send `messages()` (a leader's appends may go out before its own write);
//! 2. install a received snapshot (persisted, then `StateMachine::restore`);
//! 3. apply the committed entries (raft-rs hands out only entries that are both
//!    committed and persisted here) and answer their proposers;
//! 4. append the new entries and the hard state and fsync them (`must_sync`: not for
//!    a change of the commit index alone);
//! 5. only now send `persisted_messages()` (votes and append acks promise what is on disk);
//! 6. `advance`, then the LightReady: record the commit index, send, apply, `advance_apply`;
//! 7. answer ReadIndex requests whose read index is applied; take a snapshot and compact
//!    the log when it has grown past the threshold.
//!
//! A proposal carries a request id in its entry's context: `(node id, incarnation,
//! sequence)`. Every node applies every entry, and the node whose id and incarnation
//! match answers its waiting caller with the state machine's response; so a follower's
//! proposal (forwarded to the leader by raft-rs as `MsgPropose`) is answered by the
//! follower itself when it applies the entry. The incarnation is random per start, so
//! entries replayed after a restart never answer a new request.
//!
//! A storage error (a failed fsync above all) stops the node: it never retries an
//! fsync, whose failure may have dropped the dirty pages it was meant to write.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use super::log::{LogError, LogOptions, LogStore};
use super::state_machine::{RestoreError, StateMachine};
use super::storage::DiskStorage;
use super::transport::Transport;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("raft node {id} knows no leader right now (an election is under way, or it is cut off from a majority); retry shortly")]
    NoLeader { id: u64 },
    #[error("raft node {id}: {what} did not complete within {after:?}; it may still commit, so read before retrying a write that is not idempotent")]
    Timeout {
        id: u64,
        what: &'static str,
        after: Duration,
    },
    #[error("raft node {id} has stopped: {reason}")]
    Stopped { id: u64, reason: String },
    #[error("an empty command cannot be proposed: raft uses empty entries for itself")]
    EmptyCommand,
    #[error("raft node {id} refused the configuration change: {reason}")]
    ConfChange { id: u64, reason: String },
    #[error("raft node {id}: {source}")]
    Raft {
        id: u64,
        #[source]
        source: raft::Error,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("raft node {id}: {source}")]
    Restore {
        id: u64,
        #[source]
        source: RestoreError,
    },
    #[error("raft node {id}: cannot start its thread: {source}")]
    Thread {
        id: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Tunables of a node. The defaults suit managers on a LAN; tests use short ticks.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// One Raft tick.
    pub tick: Duration,
    /// Ticks without a leader's heartbeat before a follower campaigns (randomized by
    /// raft-rs between this and twice this).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Applied entries past the last snapshot that make the node take a new snapshot
    /// and compact its log.
    pub snapshot_entries: u64,
    pub segment_bytes: u64,
    /// How long a proposal or ReadIndex waits before its caller gets a Timeout.
    pub request_timeout: Duration,
}

impl NodeConfig {
    pub fn new(id: u64) -> NodeConfig {
        NodeConfig {
            id,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_entries: 10_000,
            segment_bytes: LogOptions::default().segment_bytes,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What a node is, as of its last Ready.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// A node's view of the group, published after every turn of its loop.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub id: u64,
    pub term: u64,
    /// The leader this node knows of (0: none).
    pub leader: u64,
    pub role: Role,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    /// The configuration as of the applied index.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Every term in which this node became leader (since it started).
    pub led_terms: Vec<u64>,
    /// Snapshots installed from a leader (since it started).
    pub snapshots_installed: u64,
    /// fsyncs of new log records (since it started): fewer than proposals when
    /// proposals batch.
    pub log_syncs: u64,
    /// Set when the node stopped on an error.
    pub stopped: Option<String>,
}

/// Makes the directory of one of a new cluster's first members: its log starts with
/// `voters` as the configuration and `initial`'s state. Nodes added later start from
/// an empty directory and get a snapshot from the leader.
pub fn bootstrap<S: StateMachine>(dir: &Path, voters: &[u64], initial: &S) -> Result<(), LogError> {
    LogStore::bootstrap(dir, voters, initial.snapshot())
}

/// What the driver thread is asked to do.
#[derive(Debug)]
enum Input {
    Message(Box<Message>),
    Propose {
        command: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NodeError>>,
    },
    ConfChange {
        cc: ConfChangeV2,
        reply: oneshot::Sender<Result<ConfState, NodeError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, NodeError>>,
    },
    Stop,
}

/// Where a transport delivers a node's incoming messages.
#[derive(Debug, Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Input>,
}

impl Inbox {
    /// Hands `msg` to the node; false if the node has stopped.
    pub fn deliver(&self, msg: Message) -> bool {
        self.tx.send(Input::Message(Box::new(msg))).is_ok()
    }
}

struct Shared<S> {
    sm: Mutex<S>,
    status: Mutex<Status>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The driver never leaves the state machine or the status half-updated across a
    // panic point it could resume from, so a poisoned lock's contents are usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running Raft node. Dropping it is [`Node::kill`].
pub struct Node<S: StateMachine> {
    id: u64,
    tx: mpsc::Sender<Input>,
    shared: Arc<Shared<S>>,
    killed: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<S: StateMachine> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

impl<S: StateMachine> Node<S> {
    /// Opens the node's directory (recovering log, hard state and snapshot), restores
    /// the state machine from the snapshot and starts the driver thread. Committed
    /// entries after the snapshot are applied again by the driver.
    pub fn start(
        cfg: NodeConfig,
        dir: &Path,
        mut sm: S,
        transport: Arc<dyn Transport>,
    ) -> Result<Node<S>, NodeError> {
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
        Ok(Node {
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
        Inbox {
            tx: self.tx.clone(),
        }
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

impl<S: StateMachine> Node<S> {
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

impl<S: StateMachine> Drop for Node<S> {
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

type ReadReply = oneshot::Sender<Result<u64, NodeError>>;

enum Waiting {
    Command(oneshot::Sender<Result<Vec<u8>, NodeError>>),
    Conf(oneshot::Sender<Result<ConfState, NodeError>>),
}

struct Driver<S: StateMachine> {
    id: u64,
    killed: Arc<AtomicBool>,
    raw: RawNode<DiskStorage>,
    storage: DiskStorage,
    rx: mpsc::Receiver<Input>,
    transport: Arc<dyn Transport>,
    shared: Arc<Shared<S>>,
    cfg: NodeConfig,
    incarnation: u64,
    next_seq: u64,
    /// Proposals made here, by sequence, waiting to be applied.
    proposals: HashMap<u64, (Instant, Waiting)>,
    /// ReadIndex requests waiting for the leader's answer.
    reads: HashMap<u64, (Instant, Vec<ReadReply>)>,
    /// ReadIndex requests received in this turn: they share one raft read.
    read_batch: Vec<ReadReply>,
    /// ReadIndex requests with a read index, waiting for it to be applied.
    reads_to_apply: Vec<(u64, ReadReply)>,
    conf_state: ConfState,
    applied: u64,
    led_terms: Vec<u64>,
    snapshots_installed: u64,
    snapshot_reports: Vec<u64>,
}

impl<S: StateMachine> Drop for Driver<S> {
    fn drop(&mut self) {
        // Runs before the waiting callers' reply channels are dropped, so a caller
        // woken by a panic finds the reason already published.
        if std::thread::panicking() {
            lock(&self.shared.status).stopped =
                Some("its driver panicked (the panic is on standard error)".to_string());
        }
    }
}

/// The most inputs taken in one turn: bounds the latency one turn adds to a tick.
const MAX_BATCH: usize = 4096;
const CONTEXT_LEN: usize = 24;

impl<S: StateMachine> Driver<S> {
    fn run(&mut self) {
        let tick = self.cfg.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            if self.killed.load(Ordering::SeqCst) {
                return;
            }
            // Work raft has ready (a turn handles one Ready) is not left waiting for
            // the next input or tick.
            let wait = if self.raw.has_ready() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            match self.rx.recv_timeout(wait) {
                Ok(Input::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(input) => {
                    self.handle(input);
                    for _ in 0..MAX_BATCH {
                        if self.killed.load(Ordering::Relaxed) {
                            return;
                        }
                        match self.rx.try_recv() {
                            Ok(Input::Stop) => return,
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.start_reads();
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = (next_tick + tick).max(now);
                self.expire(now);
                self.hand_over_if_removed();
            }
            if let Err(e) = self.on_ready() {
                self.fail(e.to_string());
                return;
            }
        }
    }

    fn context(&mut self) -> (u64, Vec<u8>) {
        self.next_seq += 1;
        let mut ctx = Vec::with_capacity(CONTEXT_LEN);
        ctx.extend_from_slice(&self.id.to_le_bytes());
        ctx.extend_from_slice(&self.incarnation.to_le_bytes());
        ctx.extend_from_slice(&self.next_seq.to_le_bytes());
        (self.next_seq, ctx)
    }

    /// The sequence number of a request made by this very process, if `ctx` is one.
    fn ours(&self, ctx: &[u8]) -> Option<u64> {
        if ctx.len() != CONTEXT_LEN {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&ctx[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        (word(0) == self.id && word(1) == self.incarnation).then(|| word(2))
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.request_timeout
    }

    fn no_leader_or(&self, e: raft::Error) -> NodeError {
        match e {
            raft::Error::ProposalDropped => NodeError::NoLeader { id: self.id },
            source => NodeError::Raft {
                id: self.id,
                source,
            },
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Message(m) => {
                // Messages from unknown peers or stale terms are refused by raft;
                // nothing for us to do about them.
                let _ = self.raw.step(*m);
            }
            Input::Propose { command, reply } => {
                if command.is_empty() {
                    let _ = reply.send(Err(NodeError::EmptyCommand));
                    return;
                }
                let (seq, ctx) = self.context();
                match self.raw.propose(ctx, command) {
                    Ok(()) => {
                        let deadline = self.deadline();
                        self.proposals
                            .insert(seq, (deadline, Waiting::Command(reply)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.no_leader_or(e)));
                    }
                }
            }
            Input::ConfChange { cc, reply } => {
                // raft-rs turns a second change proposed before the first is applied
                // into an empty entry, which would leave the caller waiting for
                // nothing: refuse it here (a follower's forward can still meet this
                // at the leader, and then ends in a Timeout).
                if self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf() {
                    let _ = reply.send(Err(NodeError::ConfChange {
                        id: self.id,
                        reason:
                            "another configuration change is still being applied; retry when it is"
                                .into(),
                    }));
                    return;
                }
                let (seq, ctx) = self.context();
                match self.raw.propose_conf_change(ctx, cc) {
                    Ok(()) => {
                        let deadline = self.deadline();
                        self.proposals.insert(seq, (deadline, Waiting::Conf(reply)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.no_leader_or(e)));
                    }
                }
            }
            Input::ReadIndex { reply } => self.read_batch.push(reply),
            Input::Stop => {}
        }
    }

    /// Asks raft for one read index on behalf of every ReadIndex request of this turn
    /// (one quorum round for all of them, not one each).
    fn start_reads(&mut self) {
        if self.read_batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.read_batch);
        // raft-rs silently drops a ReadIndex it cannot forward.
        if self.raw.raft.leader_id == raft::INVALID_ID {
            for reply in batch {
                let _ = reply.send(Err(NodeError::NoLeader { id: self.id }));
            }
            return;
        }
        let (seq, ctx) = self.context();
        self.raw.read_index(ctx);
        let deadline = self.deadline();
        self.reads.insert(seq, (deadline, batch));
    }

    /// Answers the requests whose time is up.
    fn expire(&mut self, now: Instant) {
        let (id, after) = (self.id, self.cfg.request_timeout);
        let timeout = |what| NodeError::Timeout { id, what, after };
        let late: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, (d, _))| *d <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in late {
            match self.proposals.remove(&seq) {
                Some((_, Waiting::Command(r))) => {
                    let _ = r.send(Err(timeout("the proposal")));
                }
                Some((_, Waiting::Conf(r))) => {
                    let _ = r.send(Err(timeout("the configuration change")));
                }
                None => {}
            }
        }
        let late: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, (d, _))| *d <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in late {
            for r in self.reads.remove(&seq).map(|(_, b)| b).unwrap_or_default() {
                let _ = r.send(Err(timeout("the read index")));
            }
        }
    }

    fn send_messages(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // Reported as delivered right away: if it was lost, the follower's
                // next rejection makes the leader send it again.
                self.snapshot_reports.push(m.to);
            }
            self.transport.send(m);
        }
    }

    fn on_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            self.publish();
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            if ss.raft_state == StateRole::Leader {
                self.led_terms.push(self.raw.raft.term);
            }
        }
        if !ready.messages().is_empty() {
            let msgs = ready.take_messages();
            self.send_messages(msgs);
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install(snap)?;
        }
        self.apply(ready.take_committed_entries())?;
        {
            let mut log = self.storage.wl();
            log.append(ready.entries())?;
            if let Some(hs) = ready.hs() {
                log.set_hard_state(hs);
            }
            // New entries, a new term or a vote must be on disk before anything that
            // depends on them is sent; a hard state whose only change is the commit
            // index need not be (the commit index is learnt again from the leader), so
            // it waits for the next fsync instead of costing one.
            if ready.must_sync() {
                log.sync()?;
            }
        }
        for rs in ready.take_read_states() {
            if let Some((_, batch)) = self
                .ours(&rs.request_ctx)
                .and_then(|s| self.reads.remove(&s))
            {
                self.reads_to_apply
                    .extend(batch.into_iter().map(|reply| (rs.index, reply)));
            }
        }
        if !ready.persisted_messages().is_empty() {
            let msgs = ready.take_persisted_messages();
            self.send_messages(msgs);
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            // Buffered: the commit index is an optimisation for restarts, and rides
            // along with the next fsync instead of costing one of its own.
            self.storage.wl().set_commit(commit);
        }
        let msgs = light.take_messages();
        self.send_messages(msgs);
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        for to in std::mem::take(&mut self.snapshot_reports) {
            self.raw.report_snapshot(to, SnapshotStatus::Finish);
        }
        self.answer_reads();
        self.maybe_snapshot()?;
        self.publish();
        Ok(())
    }

    fn install(&mut self, snap: Snapshot) -> Result<(), NodeError> {
        let meta = snap.get_metadata().clone();
        self.storage.wl().install_snapshot(snap.clone())?;
        lock(&self.shared.sm)
            .restore(snap.get_data())
            .map_err(|source| NodeError::Restore {
                id: self.id,
                source,
            })?;
        self.applied = meta.index;
        self.conf_state = meta.get_conf_state().clone();
        self.snapshots_installed += 1;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    // Empty entries are raft's own (a new leader's first entry).
                    if !e.data.is_empty() {
                        let resp = lock(&self.shared.sm).apply(e.index, &e.data);
                        if let Some((_, Waiting::Command(r))) = self
                            .ours(&e.context)
                            .and_then(|s| self.proposals.remove(&s))
                        {
                            let _ = r.send(Ok(resp));
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let result = if e.get_entry_type() == EntryType::EntryConfChange {
                        ConfChange::parse_from_bytes(&e.data)
                            .map_err(|err| err.to_string())
                            .and_then(|cc| {
                                self.raw.apply_conf_change(&cc).map_err(|e| e.to_string())
                            })
                    } else {
                        ConfChangeV2::parse_from_bytes(&e.data)
                            .map_err(|err| err.to_string())
                            .and_then(|cc| {
                                self.raw.apply_conf_change(&cc).map_err(|e| e.to_string())
                            })
                    };
                    if let Ok(cs) = &result {
                        self.conf_state = cs.clone();
                        self.hand_over_if_removed();
                    }
                    if let Some((_, Waiting::Conf(r))) = self
                        .ours(&e.context)
                        .and_then(|s| self.proposals.remove(&s))
                    {
                        let id = self.id;
                        let _ =
                            r.send(result.map_err(|reason| NodeError::ConfChange { id, reason }));
                    }
                }
            }
            self.applied = e.index;
        }
        Ok(())
    }

    /// raft-rs leaves a leader that removed itself leading the others (it even keeps
    /// them from electing anyone, since its heartbeats go on). Hand leadership to the
    /// most up-to-date voter instead: it campaigns at once and the old leader steps
    /// down when it sees the new term.
    ///
    /// Tried again on every tick until it happens: the chosen voter refuses to campaign
    /// while it has not applied the removal itself, and raft-rs then drops the
    /// transfer after an election timeout.
    fn hand_over_if_removed(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader
            || self.conf_state.voters.contains(&self.id)
            || raft.lead_transferee.is_some()
        {
            return;
        }
        let best = raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.id && self.conf_state.voters.contains(id))
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id);
        if let Some(to) = best {
            self.raw.transfer_leader(to);
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_to_apply)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_to_apply = waiting;
        for (index, reply) in done {
            let _ = reply.send(Ok(index));
        }
    }

    /// Takes a snapshot of the state machine at the applied index and compacts the log
    /// once `snapshot_entries` entries were applied since the last one, or when raft
    /// needs a newer snapshot to send to a peer.
    fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        let (snap_index, term) = {
            let log = self.storage.rl();
            (log.snapshot_index(), log.term(self.applied))
        };
        let wanted = self.storage.take_snapshot_wanted();
        if self.applied <= snap_index
            || (!wanted && self.applied < snap_index + self.cfg.snapshot_entries)
        {
            return Ok(());
        }
        let Some(term) = term else {
            return Ok(());
        };
        let mut snap = Snapshot::default();
        snap.set_data(lock(&self.shared.sm).snapshot().into());
        let meta = snap.mut_metadata();
        meta.index = self.applied;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        self.storage.wl().compact(snap)?;
        Ok(())
    }

    fn publish(&self) {
        let log = self.storage.rl();
        let raft = &self.raw.raft;
        let mut st = lock(&self.shared.status);
        st.term = raft.term;
        st.leader = raft.leader_id;
        st.role = match raft.state {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        };
        st.commit = raft.raft_log.committed;
        st.applied = self.applied;
        st.first_index = log.first_index();
        st.last_index = log.last_index();
        st.snapshot_index = log.snapshot_index();
        st.voters = self.conf_state.voters.clone();
        st.learners = self.conf_state.learners.clone();
        if st.led_terms.len() != self.led_terms.len() {
            st.led_terms = self.led_terms.clone();
        }
        st.snapshots_installed = self.snapshots_installed;
        st.log_syncs = log.syncs();
    }

    /// Stops the node on an error it cannot recover from, telling every waiter why.
    fn fail(&mut self, reason: String) {
        lock(&self.shared.status).stopped = Some(reason.clone());
        let stopped = || NodeError::Stopped {
            id: self.id,
            reason: reason.clone(),
        };
        for (_, (_, w)) in self.proposals.drain() {
            match w {
                Waiting::Command(r) => {
                    let _ = r.send(Err(stopped()));
                }
                Waiting::Conf(r) => {
                    let _ = r.send(Err(stopped()));
                }
            }
        }
        for r in self
            .reads
            .drain()
            .flat_map(|(_, (_, b))| b)
            .chain(self.read_batch.drain(..))
        {
            let _ = r.send(Err(stopped()));
        }
        for (_, r) in self.reads_to_apply.drain(..) {
            let _ = r.send(Err(stopped()));
        }
    }
}

//! The node driver: one thread per Raft node that owns raft-rs's `RawNode`, the log and
//! the state machine, and runs the Ready loop as raft-rs documents it.
//!
//! Callers talk to it through [`RaftNode`](super::RaftNode) (async methods, replies over oneshot channels);
//! peers through [`Inbox::deliver`](super::Inbox::deliver). Each turn of the loop takes one message, then
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use super::config::NodeConfig;
use super::error::NodeError;
use super::inbox::Input;
use super::shared::{lock, Progress, Shared};
use super::state_machine::StateMachine;
use super::storage::DiskStorage;
use super::transport::Transport;

pub(super) type ReadReply = oneshot::Sender<Result<u64, NodeError>>;

pub(super) enum Waiting {
    Command(oneshot::Sender<Result<Vec<u8>, NodeError>>),
    Conf(oneshot::Sender<Result<ConfState, NodeError>>),
}

pub(super) struct Driver<S: StateMachine> {
    pub(super) id: u64,
    pub(super) killed: Arc<AtomicBool>,
    pub(super) raw: RawNode<DiskStorage>,
    pub(super) storage: DiskStorage,
    pub(super) rx: mpsc::Receiver<Input>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) shared: Arc<Shared<S>>,
    pub(super) cfg: NodeConfig,
    pub(super) incarnation: u64,
    pub(super) next_seq: u64,
    /// Proposals made here, by sequence, waiting to be applied.
    pub(super) proposals: HashMap<u64, (Instant, Waiting)>,
    /// ReadIndex requests waiting for the leader's answer.
    pub(super) reads: HashMap<u64, (Instant, Vec<ReadReply>)>,
    /// ReadIndex requests received in this turn: they share one raft read.
    pub(super) read_batch: Vec<ReadReply>,
    /// ReadIndex requests with a read index, waiting for it to be applied.
    pub(super) reads_to_apply: Vec<(u64, ReadReply)>,
    pub(super) conf_state: ConfState,
    pub(super) applied: u64,
    pub(super) led_terms: Vec<u64>,
    pub(super) snapshots_installed: u64,
    pub(super) snapshot_reports: Vec<u64>,
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
    pub(super) fn run(&mut self) {
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
        // Reads that have their index wait for this node to apply it, which a node cut
        // off from the leader may never do; forget those whose caller has gone.
        self.reads_to_apply.retain(|(_, r)| !r.is_closed());
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

    pub(super) fn publish(&self) {
        let log = self.storage.rl();
        let raft = &self.raw.raft;
        let mut st = lock(&self.shared.status);
        st.term = raft.term;
        st.leader = raft.leader_id;
        st.role = raft.state;
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
        st.progress.clear();
        if raft.state == StateRole::Leader {
            st.progress
                .extend(raft.prs().iter().map(|(&id, pr)| Progress {
                    id,
                    matched: pr.matched,
                    recent_active: pr.recent_active || id == self.id,
                }));
            st.progress.sort_by_key(|p| p.id);
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

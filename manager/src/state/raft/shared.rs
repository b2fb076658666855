//! What a node's handle (`node.rs`) and its driver thread (`driver.rs`) share: the
//! state machine and the published [`Status`] (with each member's [`Progress`] on the
//! leader), each behind a lock.

use std::sync::{Mutex, MutexGuard};

use raft::StateRole;

/// A node's view of the group, published after every turn of its loop.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub id: u64,
    pub term: u64,
    /// The leader this node knows of (0: none).
    pub leader: u64,
    /// What the node is, as of its last Ready (raft-rs's own role type).
    pub role: StateRole,
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
    /// On the leader: each member's (id, highest index known to match the leader's
    /// log, heard from within the last election timeout). Empty elsewhere.
    pub progress: Vec<Progress>,
}

/// How far one member's log matches the leader's, as the leader sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub id: u64,
    pub matched: u64,
    pub recent_active: bool,
}

pub(super) struct Shared<S> {
    pub(super) sm: Mutex<S>,
    pub(super) status: Mutex<Status>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The driver never leaves the state machine or the status half-updated across a
    // panic point it could resume from, so a poisoned lock's contents are usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

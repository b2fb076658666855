//! [`DiskStorage`]: raft-rs's `Storage` trait served from berth's [`LogStore`].
//!
//! raft-rs owns its `Storage` inside the `RawNode` and only reads through it; the node
//! driver writes (append, hard state, snapshots) through a second handle to the same
//! log. Both live on the driver's thread, so the lock is never contended; it is there
//! because raft-rs wants an owned value and the driver needs `&mut`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::log::LogStore;

/// A shared handle to one node's [`LogStore`].
#[derive(Debug, Clone)]
pub struct DiskStorage {
    log: Arc<RwLock<LogStore>>,
    /// Set when raft wanted a snapshot the stored one cannot serve (it predates the
    /// peer's addition); the driver then takes a fresh one.
    snapshot_wanted: Arc<AtomicBool>,
}

impl DiskStorage {
    pub fn new(log: LogStore) -> DiskStorage {
        DiskStorage {
            log: Arc::new(RwLock::new(log)),
            snapshot_wanted: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether raft asked for a snapshot that must be taken afresh (and clears it).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    /// Read access. A panic while holding the lock cannot leave the log half-changed
    /// in a way a reader would misread (every change is a whole push or truncate), so
    /// a poisoned lock is used as is.
    pub fn rl(&self) -> RwLockReadGuard<'_, LogStore> {
        self.log.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wl(&self) -> RwLockWriteGuard<'_, LogStore> {
        self.log.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let log = self.rl();
        Ok(RaftState::new(
            log.hard_state().clone(),
            log.conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let log = self.rl();
        if low < log.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > log.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut ents = log.entries(low, high).to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let log = self.rl();
        if idx < log.snapshot_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        log.term(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.rl().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.rl().last_index())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let log = self.rl();
        let snap = log.snapshot();
        let meta = snap.get_metadata();
        let cs = meta.get_conf_state();
        // A peer refuses a snapshot whose configuration does not name it (a node added
        // after the snapshot was taken), and one older than it asked for is no use:
        // ask the driver for a fresh one; raft tries again on a later heartbeat.
        let names_peer = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .any(|&id| id == to);
        if meta.index < request_index || meta.index == 0 || !names_peer {
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap.clone())
    }
}

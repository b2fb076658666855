//! [`DiskStorage`]: raft-rs's `Storage` trait served from berth's [`LogStore`].
//!
//! raft-rs owns its `Storage` inside the `RawNode` and only reads through it; the node
//! driver writes (append, hard state, snapshots) through a second handle to the same
//! log. Both live on the driver's thread, so the lock is never contended; it is there
//! because raft-rs wants an owned value and the driver needs `&mut`.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::log::LogStore;

/// A shared handle to one node's [`LogStore`].
#[derive(Debug, Clone)]
pub struct DiskStorage {
    log: Arc<RwLock<LogStore>>,
}

impl DiskStorage {
    pub fn new(log: LogStore) -> DiskStorage {
        DiskStorage {
            log: Arc::new(RwLock::new(log)),
        }
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

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let log = self.rl();
        let snap = log.snapshot();
        // A snapshot is taken by the driver when the log grows; until one covers the
        // index asked for, raft retries later.
        if snap.get_metadata().index < request_index || snap.get_metadata().index == 0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snap.clone())
    }
}

//! [`NodeError`]: why a Raft node, or a request to it, failed. Returned by the handle
//! (`node.rs`) and given to waiting callers by the driver thread (`driver.rs`).

use std::time::Duration;

use super::log::LogError;
use super::state_machine::RestoreError;

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

//! [`NodeConfig`]: a Raft node's settings, which the handle (`node.rs`) starts the node
//! with and its driver thread (`driver.rs`) runs by.

use std::time::Duration;

use super::log::LogOptions;

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

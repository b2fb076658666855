//! Helpers shared by the Raft test files (each `tests/*.rs` is its own crate: the
//! files that use these say `mod common;`).

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use manager::state::raft::kv::KvCommand;
use manager::state::raft::NodeConfig;

/// Settings for groups in tests: 10 ms ticks, so elections take 100-200 ms. Callers
/// set what they test (snapshot frequency, segment size).
pub fn fast_config() -> NodeConfig {
    NodeConfig {
        tick: Duration::from_millis(10),
        election_ticks: 10,
        heartbeat_ticks: 2,
        request_timeout: Duration::from_secs(2),
        ..NodeConfig::new(0)
    }
}

/// Runs a node's future to completion on a small runtime of its own.
pub fn block<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A KV put, encoded as the state machine reads it.
pub fn put(key: &str, value: &str) -> Vec<u8> {
    KvCommand::Put {
        key: key.into(),
        value: value.into(),
    }
    .encode()
}

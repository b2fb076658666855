//! The Raft core of the replicated store: a state machine replicated over a Raft group
//! with TiKV's raft-rs, generic over the state it replicates.
//!
//! - [`state_machine`]: the [`StateMachine`] trait a replicated state implements
//!   (deterministic apply, snapshot, restore, hash); [`kv`] is a small one for tests
//!   and the benchmark.
//! - [`log`]: berth's own durable log (segments of CRC-framed records, fsynced files
//!   and directories, torn-tail repair, atomic snapshots, compaction); [`storage`]
//!   serves it to raft-rs as its `Storage`.
//! - `driver`: the thread that runs one node's Ready loop; [`node`]: [`RaftNode`], the
//!   handle callers use: `propose` (forwarded to the leader from a follower), conf changes,
//!   `read_index` for linearizable reads.
//! - `config`, `error`, `inbox`, `shared`: what the handle and the driver both use:
//!   [`NodeConfig`], [`NodeError`], the driver's inputs and the [`Inbox`] a transport
//!   delivers to, and the state machine and published [`Status`] behind locks.
//! - [`transport`]: the [`Transport`] seam for messages between nodes, and
//!   [`MemNetwork`], an in-memory network with partitions, drops and delays for tests.
//! - [`tcp`]: [`tcp::TcpTransport`] and [`tcp::RaftListener`], the same messages
//!   between processes over TCP (length-prefixed protobuf frames).
//! - [`tls`]: [`tls::TlsTransport`], the same frames over mutual TLS to peers dialed by
//!   node id; they arrive on the cluster port (`crate::port`).
//! - [`local`]: [`LocalCluster`], a group of real nodes in one process on a
//!   [`MemNetwork`], for tests and the benchmark.
//!
//! raft-rs never touches disk or network itself; everything here is the application
//! side of its documented contract.

mod config;
mod driver;
mod error;
mod inbox;
pub mod kv;
pub mod local;
pub mod log;
pub mod node;
mod shared;
pub mod state_machine;
pub mod storage;
pub mod tcp;
pub mod tls;
pub mod transport;

pub use config::NodeConfig;
pub use error::NodeError;
pub use inbox::Inbox;
pub use local::LocalCluster;
pub use node::{bootstrap, RaftNode};
pub use shared::{Progress, Status};
pub use state_machine::{RestoreError, StateMachine};
pub use transport::{MemNetwork, Transport};

/// raft-rs's message and configuration types, for callers of this module.
pub use ::raft::eraftpb;

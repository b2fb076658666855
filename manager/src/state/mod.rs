//! The state: what the manager knows (stacks, tasks, the cluster and its nodes), how it
//! changes (transactions) and how every manager comes to hold the same copy (Raft).
//! swarmkit's `manager/state` is the model.
//!
//! From the bottom up (each module uses only those above it in this list):
//! - [`raft`]: a state machine replicated over a Raft group (TiKV's raft-rs), generic
//!   over the state; its own durable log; transports (memory, TCP, TLS);
//! - [`gitops`]: the git-ops sources and what they did, part of the data (pure);
//! - [`model`]: the data: [`model::State`] and the [`model::Op`]s a transaction is
//!   replicated as (pure);
//! - [`by_node`]: the tasks by node and a change signal per node, kept beside the state
//!   (what the dispatcher reads and waits on);
//! - [`replicated`]: [`model::State`] as a Raft state machine (transactions with
//!   optimistic concurrency on the state's version);
//! - [`store`]: the handle everyone else uses: reads, watches and transactions, over a
//!   Raft node (one voter on a single host).

pub mod by_node;
pub mod gitops;
pub mod model;
pub mod raft;
pub mod replicated;
pub mod store;

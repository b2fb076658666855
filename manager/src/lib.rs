//! The manager: desired state and the loops that act on it, laid out as the pipeline
//! it is (swarmkit's `manager/` is the model):
//!
//! - [`api`]: the HTTP API (axum), on the daemon's unix socket and on the cluster port;
//!   the only module that knows HTTP and JSON (DESIGN invariant 8). Its handlers turn
//!   requests into typed commands and call the plain functions below. What it needs of
//!   the node it runs on (logs, volumes) it asks through the [`api::NodeAgent`] trait,
//!   so the manager never depends on the agent.
//! - [`deploy`]: what a loaded Compose project becomes in the store (a
//!   `StackRecord`), for the CLI's `up` today and git-ops tomorrow;
//! - [`progress`]: where a stack stands on its way to running, per container
//!   (`up`'s wait), answered per stack as a long poll;
//! - [`stacks`]: the stack verbs (up, down, stop/start/restart/rm, run) as plain
//!   functions: each change a pure function over the state, and `down`'s stop waves;
//! - [`orchestrator`]: the pure function from stacks and tasks to the changes that
//!   make them match (DESIGN invariant 2), and [`orchestrator::run`], the loop that
//!   applies it;
//! - [`scheduler`]: the pure function from unassigned tasks and nodes to a placement
//!   plan (filters that explain their rejections, then ranking), run by the leader;
//! - [`cluster`]: the cluster's membership: the pure plan of Raft configuration
//!   changes, the node changes (init, join, promote, demote, rm, labels)
//!   as pure functions over the state, the files a member keeps, and the membership
//!   and worker-heartbeat loops;
//! - [`state`]: stacks, tasks, the cluster's record and its nodes', changed in
//!   transactions, replicated through Raft (one voter on a single host), watched;
//! - [`port`]: the cluster port: mutual TLS, Raft frames and the HTTP API on one TCP
//!   port told apart by ALPN; it serves `api`'s router and only knows HTTP as a
//!   transport (plus the refusal of an unauthorized request).
//!
//! - [`dispatcher`]: what each node is sent (its tasks and only what they need) and what
//!   it may report (its own tasks' status); served by `api::dispatcher`.
//!
//! On a cluster the leader's pass ([`orchestrator::run::run_orchestrator`]) runs the
//! orchestrator with the nodes' facts and then the scheduler, in one transaction; a
//! manager's agent reads its tasks from its store replica, a worker's from the
//! dispatcher.

pub mod api;
pub mod cluster;
pub mod deploy;
pub mod dispatcher;
pub mod orchestrator;
pub mod plan;
pub mod port;
pub mod progress;
pub mod scheduler;
pub mod stacks;
pub mod state;

//! The manager: desired state replicated with Raft, the orchestrator (services -> tasks),
//! the scheduler (tasks -> nodes), the dispatcher (assignments to agents) and the HTTP API.
//!
//! Nothing lives here yet: the store and the Raft group arrive with the cluster issue, the
//! reconcile loop with `berth up`. See ARCHITECTURE.md for where each piece will go.

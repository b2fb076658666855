//! The node agent: everything a node does to run its tasks' containers.
//!
//! - `worker`: the loops that make this node's containers match the tasks assigned to
//!   it and report what they saw, over small seams (assignments in, status out,
//!   container work); start-up recovery.
//! - `executor`: the container work on this node's runtime (start, stop, remove,
//!   observe, probe), with typed errors that become task statuses.
//! - `namespace_modes`: a service's `network_mode`, `pid`, `ipc`, `uts`, `cgroup` and
//!   `userns_mode` made into its container's namespaces (the host's, or another
//!   container's joined).
//! - `node`: what the node serves about itself (logs, signals, freeze, processes,
//!   ports, stats; removing a stack's networks and volumes).
//! - `hooks`: a service's `post_start` and `pre_stop` commands, run in its container
//!   through the exec helper.
//! - `health`: healthchecks as Docker runs them, a pure state machine.
//! - `image`: the content-addressed image store (import, load, pull, safe unpack).
//! - `container`: an image and a Compose service turned into a runnable bundle
//!   (overlayfs rootfs, mounts, user).
//! - `runtime`: berth's own container runtime (namespaces, cgroups, capabilities,
//!   seccomp, mounts).
//! - `shim`: the per-container shim that keeps a container's stdio, exit code and logs
//!   while the daemon restarts.

pub mod container;
pub mod executor;
pub mod health;
pub mod hooks;
pub mod image;
pub mod namespace_modes;
pub mod node;
pub mod runtime;
pub mod shim;
pub mod volumes_from;
pub mod worker;

/// Changes with every build of this crate: `berth-shim --build-id` prints it, so that
/// `berth` uses a `berth-shim` only if it was built from the same agent code.
pub const BUILD_ID: &str = env!("BERTH_AGENT_BUILD");

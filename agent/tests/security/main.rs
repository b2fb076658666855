//! The security suite: one module per escape class (runc's, crun's and youki's CVEs,
//! and what an audit of berth's own runtime found), each a small attacker inside a real
//! container on the real kernel, as root. Every test names the CVE or class it covers
//! and asserts that the attacker reached nothing; docs/design/security.md (the threat
//! model that ARCHITECTURE.md sums up) lists which test proves what.

// Helpers are test code: a panic is how they fail (clippy.toml covers #[test] fns only).
#![allow(clippy::unwrap_used)]

mod cgroup_devices;
mod cgroup_view;
mod exe_seal;
mod exec_fds;
mod masked_paths;
mod mount_targets;
mod mounts_kit;
mod proc_writes;
mod seccomp;

//! The node agent: image store, overlayfs rootfs, berth's own container runtime
//! (namespaces, cgroups, capabilities, seccomp, mounts), the per-container shim, health
//! checks, restart policies and logs.
//!
//! Built so far: the image store (`image`) and the runtime core (`runtime`).

pub mod image;
pub mod runtime;
pub mod shim;

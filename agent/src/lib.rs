//! The node agent: image store, overlayfs rootfs, berth's own container runtime
//! (namespaces, cgroups, capabilities, seccomp, mounts), the per-container shim, health
//! checks, restart policies and logs.
//!
//! Built so far: the image store (`image`), the runtime core (`runtime`), and
//! `container`, which turns an image and a Compose service into a runnable bundle.

pub mod container;
pub mod executor;
pub mod health;
pub mod image;
pub mod runtime;
pub mod shim;

/// Changes with every build of this crate: `berth-shim --build-id` prints it, so that
/// `berth` uses a `berth-shim` only if it was built from the same agent code.
pub const BUILD_ID: &str = env!("BERTH_AGENT_BUILD");

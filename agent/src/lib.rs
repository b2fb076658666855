//! The node agent: image store, overlayfs rootfs, berth's own container runtime
//! (namespaces, cgroups, capabilities, seccomp, mounts), the per-container shim, health
//! checks, restart policies and logs.
//!
//! Nothing lives here yet: the runtime and image store arrive with their own issue. See
//! ARCHITECTURE.md for where each piece will go.

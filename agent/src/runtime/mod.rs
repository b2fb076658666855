//! berth's container runtime: an OCI bundle in, an isolated, limited, hardened
//! container out, without runc, containerd or Docker.
//!
//! Where to start reading: [`run`] (in `process.rs`) is `runc run`: it loads the bundle
//! (`bundle.rs`), turns it into an [`init::InitPlan`] (every path, string, mask and
//! BPF program the container's first process will need, prepared in the parent), creates
//! the cgroup (`cgroups/`), clones the child into its new namespaces, lets it run the
//! plan (`init.rs`, `mounts.rs`), and waits for it.
//!
//! # Why the child runs a prepared plan (and not Rust code that allocates)
//!
//! The child is made with `clone(2)` from the caller's process, which may be
//! multi-threaded (the agent is; `cargo test` is). After such a clone only the calling
//! thread exists in the child, so any lock another thread held at that moment (the
//! allocator's, stdio's, the environment's) stays locked forever: between clone and
//! `execve` the child must do only async-signal-safe work. Re-executing
//! `/proc/self/exe` as the init (runc's way) avoids that but costs an extra `execve`
//! of a large binary on every start, and `/proc/self/exe` is not berth in the agent's
//! tests. So berth takes the third way: the parent prepares everything (C strings,
//! path components, capability masks, clamped rlimits, the seccomp BPF) and the child
//! only makes system calls over that data, through raw `libc` calls; it never
//! allocates, formats or panics (errors travel to the parent as a fixed-size
//! `(step, index, errno)` record over a pipe). The identity-changing calls go to the
//! kernel directly (`SYS_setresuid`...) because glibc's wrappers would try to signal
//! the parent's threads, which do not exist in the child.
//!
//! Each concept has its file: `spec.rs` (the default config.json), `seccomp.rs`
//! (profile table and BPF compilation), `caps.rs`, `rlimits.rs`, `namespaces.rs`,
//! `mounts.rs`, `cgroups/` (v1 and v2, chosen at run time), `tty.rs` (a container's
//! terminal: its master passed back, window sizes, the relay).

pub mod bundle;
pub mod caps;
pub mod cgroups;
pub(crate) mod exec;
mod init;
mod mounts;
pub mod namespaces;
mod oom;
mod process;
pub mod rlimits;
pub mod sealed;
pub mod seccomp;
pub mod spec;
#[cfg(target_arch = "x86_64")]
mod syscalls_x86_64;
pub(crate) mod tty;

use std::path::PathBuf;

pub use bundle::Bundle;
pub use exec::{exec, ExecOptions, ExecProcess, ExecTarget};
pub use namespaces::JOIN_OWNER_ANNOTATION;
pub use oom::{protect_from_oom, DAEMON_OOM_SCORE_ADJ, SHIM_OOM_SCORE_ADJ};
pub use process::{
    cgroup_of, check_id, remove_cgroup, run, spawn, start_gated, sysctl_namespace, Container,
    ExitReport, RunOptions, SignalForwarding, Stdio, SysctlNamespace, INIT_ANNOTATION,
};
pub use spec::default_spec;
pub use tty::{relay, relay_stdio, set_window_size, window_size, WindowSize};

/// Everything that can stop a container from starting or being cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("bundle {path}: {message}")]
    Bundle { path: PathBuf, message: String },
    #[error("config.json: {0}")]
    Unsupported(String),
    /// A container id that cannot name a cgroup or a state directory.
    #[error("container id {0:?} is invalid: use letters, digits, '_', '.' and '-' (up to 128), starting with a letter or digit")]
    InvalidId(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    /// `exec` into a container whose first process is gone (or was never started).
    #[error("container {id} is not running")]
    NotRunning { id: String },
    /// `exec` of a program the container does not have (Docker's words).
    #[error("container {id}: exec: {program:?}: executable file not found in $PATH")]
    ExecNotFound { id: String, program: String },
    #[error("container {id}: {step}: {errno}")]
    Init {
        id: String,
        step: String,
        errno: nix::errno::Errno,
    },
}

/// The start time of `pid` (field 22 of /proc/<pid>/stat, clock ticks after boot), or
/// None if it is gone: with the pid, it names a process for good (pids are recycled).
pub fn start_time(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        RuntimeError::Unsupported(what.into())
    }
}

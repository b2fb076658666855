//! The OCI runtime lifecycle (runtime-spec's runtime.md) on top of the shim: what
//! `berth runtime create|start|state|kill|delete` do, so that tools written for runc
//! (runtime-tools' validation suite, containerd-style callers) drive berth unchanged.
//!
//! `create` ([`super::create`] with [`super::CreateOptions::oci`]) starts a shim as
//! for any container, but the container's process stops before execve, its
//! namespaces, mounts, cgroup and identity in place, and waits on a fifo in the
//! container's directory ([`super::START_FIFO`], runc's `exec.fifo`). Its stdio is the
//! caller's, passed through (runc's detached mode), not the shim's log. The shim
//! stays its parent, as it is for every container, so `create` returns at once and
//! the container outlives it. [`start`] writes the byte the process waits for and
//! removes the fifo: from then on [`super::state`] reports it `running` (a `created`
//! container is one whose fifo still exists). `kill` works on `created` containers
//! too; `delete` refuses any that is not stopped unless forced ([`delete_force`]).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use super::{container_dir, state, ContainerState, ShimError, Status, START_FIFO};

/// A copy of this process's stdout that a spawned program inherits (no close-on-exec),
/// for the shim to hand to an OCI container. Only for single-threaded callers (the
/// CLI): a program another thread spawns meanwhile would inherit it too.
pub(crate) fn inheritable_stdout() -> Result<OwnedFd, ShimError> {
    // SAFETY: F_DUPFD duplicates descriptor 1 to a new descriptor nothing else owns;
    // the result is checked before it is owned.
    let fd = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD, 3) };
    if fd < 0 {
        return Err(ShimError::io(
            "duplicate stdout for the container",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a new descriptor, owned here alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// In the shim: makes `fd` (the caller's stdout, [`inheritable_stdout`]) its stdout,
/// which the container inherits, in place of the readiness pipe's /dev/null.
pub(crate) fn take_stdout(fd: i32) {
    // SAFETY: dup2 and close of descriptors this process inherited for the purpose.
    unsafe {
        if fd != libc::STDOUT_FILENO && libc::dup2(fd, libc::STDOUT_FILENO) >= 0 {
            libc::close(fd);
        }
    }
}

/// In the shim, once the container holds the caller's stdio: the shim's own 0, 1 and
/// 2 become /dev/null.
pub(crate) fn release_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 of a descriptor we hold onto the standard ones.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Sends a terminal's master to the unix socket at `path` (runc's `--console-socket`
/// protocol: one SCM_RIGHTS message whose bytes name the file), then closes ours.
pub(crate) fn send_console(path: &Path, master: std::fs::File) -> Result<(), String> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("connect to the console socket {}: {e}", path.display()))?;
    let fds = [master.as_raw_fd()];
    let name = b"/dev/ptmx";
    let iov = [std::io::IoSlice::new(name)];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("send the terminal to {}: {e}", path.display()))?;
    Ok(())
}

/// Starts the program of a `created` container. An error if it is not `created`
/// (never created with the OCI lifecycle, started already, or stopped).
pub fn start(state_dir: &Path, id: &str) -> Result<ContainerState, ShimError> {
    let s = state(state_dir, id)?;
    let not_created = |s: &ContainerState| ShimError::NotCreated {
        id: id.to_string(),
        status: s.describe(),
    };
    if s.status != Status::Created {
        return Err(not_created(&s));
    }
    let fifo = container_dir(state_dir, id)?.join(START_FIFO);
    if !crate::runtime::start_gated(&fifo)? {
        return Err(not_created(&state(state_dir, id)?));
    }
    state(state_dir, id)
}

/// `delete --force`: kills a `created` or `running` container (SIGKILL, and waits for
/// it to stop), then deletes it. A container that does not exist is no error (runc's
/// behaviour: callers clean up with it unconditionally).
pub fn delete_force(state_dir: &Path, id: &str) -> Result<(), ShimError> {
    match super::kill(state_dir, id, libc::SIGKILL) {
        Ok(()) | Err(ShimError::NotRunning { .. }) => {}
        Err(ShimError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    }
    super::wait(state_dir, id, Some(Duration::from_secs(10)))?;
    super::delete(state_dir, id)
}

/// The spec version of the state berth reports (the one its config parser follows).
fn oci_version() -> String {
    oci_spec::runtime::Spec::default().version().clone()
}

/// The state as runtime.md defines it (`ociVersion`, `id`, `status` of `created`,
/// `running` or `stopped`, `pid`, `bundle`, `annotations` from the bundle), followed
/// by what berth knows besides (`shim_pid`, `exit`, `error`...). A container whose
/// fate is unknown (its shim was killed) is `stopped`.
pub fn state_json(s: &ContainerState) -> serde_json::Value {
    let status = match s.status {
        Status::Created => "created",
        Status::Running => "running",
        Status::Stopped | Status::Unknown => "stopped",
    };
    let annotations = crate::runtime::Bundle::load(&s.bundle)
        .ok()
        .and_then(|b| b.spec.annotations().clone())
        .unwrap_or_default();
    let mut out = serde_json::Map::new();
    out.insert("ociVersion".into(), oci_version().into());
    out.insert("id".into(), s.id.clone().into());
    out.insert("status".into(), status.into());
    // runc reports 0 for a stopped container; a running one's pid is its init's.
    let pid = match s.status {
        Status::Created | Status::Running => s.pid.unwrap_or(0),
        _ => 0,
    };
    out.insert("pid".into(), pid.into());
    out.insert(
        "bundle".into(),
        s.bundle.to_string_lossy().into_owned().into(),
    );
    out.insert(
        "annotations".into(),
        serde_json::to_value(annotations).unwrap_or_default(),
    );
    if let Ok(serde_json::Value::Object(extra)) = serde_json::to_value(s) {
        for (k, v) in extra {
            out.entry(k).or_insert(v);
        }
    }
    serde_json::Value::Object(out)
}

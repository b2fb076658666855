//! The per-container shim and the container lifecycle built on it: containers that
//! outlive whoever started them.
//!
//! [`create`] starts a shim for a bundle and returns once the container runs (or with
//! the runtime's error). Everything else ([`state`], [`kill`], [`stop`], [`wait`],
//! [`delete`], [`list`], [`logs`]) is a plain function over the state directory: a
//! caller keeps nothing in memory, so a caller that restarts (even after `kill -9`)
//! re-adopts every container by reading `<state>/containers/` again.
//!
//! # On disk: `<state>/containers/<id>/` (mode 0700)
//! - `config.json`: what the shim was asked to run (bundle path, log limits), written
//!   by `create` before the shim starts;
//! - `state.json`: written by the shim, always atomically (temporary file + rename):
//!   status (`created`, `running`, `stopped`), the shim's and the container's pids
//!   with their start times (so a recycled pid is never signalled), and once the
//!   container has exited its exit report (code, signal, OOM kill);
//! - `log.json`, `log.json.1`...: the container's stdout and stderr as Docker's
//!   json-file lines, rotated by size (`log.rs`).
//!
//! # The shim process (`serve.rs`)
//! The shim is a separate program, exec'd, never a bare fork of the caller: the caller
//! (the agent, `cargo test`) is multi-threaded, and a forked copy of a multi-threaded
//! process may run only async-signal-safe code until it execs, while the shim runs
//! ordinary Rust (the runtime, JSON). Exec'ing also means the shim's memory is its own
//! small binary's, not a copy-on-write image of the agent's heap. The program is given
//! by [`ShimProgram`]: the tiny `berth-shim` binary of this crate (`main.rs`), or the
//! `berth` binary re-executed as `berth runtime shim` (the CLI's fallback when
//! `berth-shim` is not installed next to it). `bench/shim.sh` measures both.
//!
//! Once exec'd the shim double-forks and calls `setsid`, so it is neither the
//! caller's child nor in its process group or session; it moves itself to the root
//! cgroup of every hierarchy, so stopping the caller's cgroup (a systemd unit) does not
//! stop it either; its stdio is /dev/null. It is single-threaded and has no async
//! runtime. It starts the container with [`crate::runtime::spawn`], so the
//! container's first process is the shim's own child (two processes per container:
//! the shim and the container), and it is a child subreaper, so orphans of a
//! container without a pid namespace are its to reap. One `poll` loop reads the
//! stdout/stderr pipes into the log and SIGCHLD (a signalfd) to reap; when the
//! container has exited it records the exit report (the runtime removes the cgroup)
//! and exits.
//!
//! # When the shim is killed by hand
//! The container dies with it: the runtime arms the parent-death signal (SIGKILL) on
//! the container's first process, which takes its whole pid namespace with it. A
//! container nobody records is one nobody can see stop, so it must not outlive its
//! shim. [`state`] then reports it `stopped`, with an error saying its shim was
//! killed and its exit status is unknown (never a stale `running`), and [`delete`]
//! removes what the shim could not: the cgroup (killing anything left in it, e.g. the
//! processes of a container without a pid namespace) and the state directory.
//!
//! # exec
//! [`exec`] starts another process in a running container (`berth runtime exec`):
//! it reads the container's pid and bundle from here and calls
//! [`crate::runtime::exec`]; the shim is not involved.

pub mod attach;
mod enter;
mod log;
pub mod oci;
mod run;
mod serve;

use std::ffi::{CString, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use enter::{exec, helper_main, ExecRequest, ExecSession, ExecStdio, HangUp};
pub use log::{format_rfc3339, LogEntry, Stream};
pub use run::run_main;
pub use serve::main as shim_main;

/// Docker's json-file defaults: 10 MB per file, 3 files.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 10 * 1024 * 1024;
pub const DEFAULT_LOG_MAX_FILES: u32 = 3;

/// Everything the lifecycle functions can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("container {id} does not exist: `berth runtime list` shows the containers")]
    NotFound { id: String },
    #[error("container {id} exists already: delete it first (berth runtime delete {id})")]
    Exists { id: String },
    #[error("container {id} is not running ({status})")]
    NotRunning { id: String, status: String },
    #[error("container {id} is not created ({status}): only a created container can be started")]
    NotCreated { id: String, status: String },
    #[error("container {id} is still running: stop it first (berth runtime stop {id})")]
    StillRunning { id: String },
    #[error("container {id} failed to start: {message}")]
    Start { id: String, message: String },
    #[error("container {id}: exec: {message}")]
    Exec { id: String, message: String },
    #[error("container {id}: timed out waiting for it to stop")]
    Timeout { id: String },
    #[error("unknown signal {0:?}: give a name (TERM, KILL, HUP) or a number")]
    BadSignal(String),
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}

impl ShimError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ShimError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The program that becomes the shim: `program args... <container dir>`, with the
/// readiness pipe as its stdout; and the exec helper: `program args... --exec <state>`
/// (see `enter.rs`).
///
/// Both enter containers, so both run from a sealed copy of the program
/// ([`crate::runtime::sealed`]): [`ShimProgram::sealed`] makes one copy that every
/// shim and helper started from this value shares; a shim started from the plain
/// file seals a copy of itself before it does anything else.
#[derive(Debug, Clone)]
pub struct ShimProgram {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    sealed: Option<crate::runtime::sealed::SealedProgram>,
    /// The build of berth the program must be, which it checks itself (the exec
    /// helper refuses otherwise): set by a caller that did not ask it first.
    build: Option<String>,
}

impl ShimProgram {
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>) -> ShimProgram {
        ShimProgram {
            program: program.into(),
            args,
            sealed: None,
            build: None,
        }
    }

    /// The same program, told to refuse to serve as the exec helper unless it is
    /// build `id` (`agent::BUILD_ID`): cheaper than asking it with `--build-id` first.
    pub fn expecting_build(mut self, id: &str) -> ShimProgram {
        self.build = Some(id.to_string());
        self
    }

    /// The same program, started from now on from one sealed copy of it.
    pub fn sealed(mut self) -> Result<ShimProgram, ShimError> {
        self.sealed = Some(crate::runtime::sealed::SealedProgram::seal(&self.program)?);
        Ok(self)
    }

    /// `program args...`, from the sealed copy when there is one (its argv[0] still
    /// names the program, for `ps`).
    pub fn command(&self) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = match &self.sealed {
            Some(sealed) => {
                let mut cmd = std::process::Command::new(sealed.path());
                cmd.arg0(&self.program);
                cmd
            }
            None => std::process::Command::new(&self.program),
        };
        cmd.args(&self.args);
        cmd
    }
}

/// How to create a container.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub shim: ShimProgram,
    /// Rotate the log when it would pass this size (bytes).
    pub log_max_size: u64,
    /// Keep at most this many log files (the current one included).
    pub log_max_files: u32,
    /// Keep its stdin open for `attach` (Compose's `stdin_open`, `run -i`): a pipe the
    /// shim holds, or its terminal.
    pub stdin: bool,
    /// Close that stdin pipe when the first attached client goes (Docker's
    /// `StdinOnce`, for `berth run`): a one-off whose caller died must not wait for
    /// input forever.
    pub stdin_once: bool,
    /// The OCI lifecycle (`berth runtime create`, then `start`): the container's stdio
    /// is the caller's own, passed through (no log), and its process waits before
    /// execve until [`start`]; [`Status::Created`] until then. See [`oci`].
    pub oci: bool,
    /// With `oci` and a spec asking for a terminal: the unix socket to send the
    /// terminal's master to (runc's `--console-socket`), instead of the shim keeping it.
    pub console_socket: Option<PathBuf>,
}

impl CreateOptions {
    pub fn new(shim: ShimProgram) -> CreateOptions {
        CreateOptions {
            shim,
            log_max_size: DEFAULT_LOG_MAX_SIZE,
            log_max_files: DEFAULT_LOG_MAX_FILES,
            stdin: false,
            stdin_once: false,
            oci: false,
            console_socket: None,
        }
    }
}

/// `config.json`: what the shim runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShimConfig {
    pub id: String,
    pub bundle: PathBuf,
    pub log_max_size: u64,
    pub log_max_files: u32,
    /// Keep the container's stdin open for attached clients (a pipe, or its terminal).
    #[serde(default)]
    pub stdin: bool,
    /// Close its stdin when the first attached client goes.
    #[serde(default)]
    pub stdin_once: bool,
    /// The OCI lifecycle: the container gets the shim's stdio and waits at
    /// [`START_FIFO`] until [`start`].
    #[serde(default)]
    pub oci: bool,
    /// With `oci`: the caller's stdout, at this descriptor number in the shim (its own
    /// stdout is the readiness pipe until it answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_fd: Option<i32>,
    /// With `oci`: where the terminal's master goes ([`CreateOptions::console_socket`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_socket: Option<PathBuf>,
}

/// With [`CreateOptions::oci`]: the fifo in the container's directory on which its
/// process waits for [`start`] (runc's `exec.fifo`); it exists while the container
/// is `created`.
pub(crate) const START_FIFO: &str = "exec.fifo";

/// How a container ended (the runtime's [`crate::runtime::ExitReport`], on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
}

impl Exit {
    /// The shell convention: the exit code, or 128 + the signal.
    pub fn status(&self) -> i32 {
        crate::runtime::ExitReport {
            code: self.code,
            signal: self.signal,
            oom_killed: self.oom_killed,
        }
        .status()
    }
}

impl From<crate::runtime::ExitReport> for Exit {
    fn from(r: crate::runtime::ExitReport) -> Exit {
        Exit {
            code: r.code,
            signal: r.signal,
            oom_killed: r.oom_killed,
        }
    }
}

/// The recorded status of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The shim is starting it.
    Created,
    Running,
    Stopped,
    /// The shim is gone without recording an exit (killed by hand): the container's
    /// fate is not known.
    Unknown,
}

/// `state.json`, and what [`state`] returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    pub status: Status,
    /// The shim's pid and its start time (clock ticks after boot).
    pub shim_pid: i32,
    #[serde(default)]
    pub shim_start: u64,
    /// The container's first process, as seen from the host.
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub pid_start: u64,
    /// The container's cgroup, relative to the hierarchy roots: what `delete` removes
    /// if the shim could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    #[serde(default)]
    pub exit: Option<Exit>,
    /// Why the container failed to start, or what went wrong in the shim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ContainerState {
    /// `running (pid 123)`, `stopped (exit 3)`: for messages.
    pub fn describe(&self) -> String {
        match (self.status, self.exit) {
            (Status::Stopped, Some(e)) if e.signal.is_some() => {
                format!("stopped, killed by signal {}", e.signal.unwrap_or(0))
            }
            (Status::Stopped, Some(e)) => format!("stopped, exit {}", e.status()),
            (Status::Running, _) => format!("running, pid {}", self.pid.unwrap_or(0)),
            (Status::Stopped, None) => match &self.error {
                Some(e) => format!("stopped: {e}"),
                None => "stopped".into(),
            },
            (s, _) => format!("{s:?}").to_lowercase(),
        }
    }
}

fn containers(state: &Path) -> PathBuf {
    state.join("containers")
}

fn container_dir(state: &Path, id: &str) -> Result<PathBuf, ShimError> {
    check_id(id)?;
    Ok(containers(state).join(id))
}

/// A container id names its state directory and its cgroup: the runtime's rule for ids
/// (a plain name), checked here before anything touches the disk.
fn check_id(id: &str) -> Result<(), ShimError> {
    crate::runtime::check_id(id).map_err(|e| ShimError::Start {
        id: id.to_string(),
        message: e.to_string(),
    })
}

/// Writes `value` as JSON to `path` atomically: readers see the old or the new file.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), ShimError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| ShimError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // Atomic, not durable: a container's state is rewritten at every change of it,
    // and a reboot that could lose the write ends the container it describes.
    atomic_file::write(path, &json, 0o600, atomic_file::Durability::Atomic)
        .map_err(|e| ShimError::io(format!("write {}", path.display()), e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ShimError> {
    let text =
        std::fs::read(path).map_err(|e| ShimError::io(format!("read {}", path.display()), e))?;
    serde_json::from_slice(&text).map_err(|e| ShimError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The start time of `pid` (field 22 of /proc/<pid>/stat), or None if it is gone.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// The state letter and start time of `pid`, from one read of `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22, starttime: the 20th after the state (field 3).
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is still the process that started at `start` (not a recycled pid,
/// not a zombie). One read of its stat: the daemon asks it of every container twice a
/// second.
fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && stat(pid).is_some_and(|(state, s)| state != 'Z' && s == start)
}

/// Starts container `id` from `bundle` under a new shim. Returns when the container
/// runs (or has already exited), or with the runtime's error when it could not start;
/// then nothing is left behind.
pub fn create(
    state: &Path,
    bundle: &Path,
    id: &str,
    opts: &CreateOptions,
) -> Result<ContainerState, ShimError> {
    let dir = container_dir(state, id)?;
    // Fail early, in the caller, on a bundle the runtime would refuse.
    let bundle = std::fs::canonicalize(bundle)
        .map_err(|e| ShimError::io(format!("bundle {}", bundle.display()), e))?;
    crate::runtime::Bundle::load(&bundle)?;
    let parent = containers(state);
    std::fs::create_dir_all(&parent)
        .map_err(|e| ShimError::io(format!("create {}", parent.display()), e))?;
    crate::container::spread_subdirectories(&parent);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ShimError::Exists { id: id.to_string() })
        }
        Err(e) => return Err(ShimError::io(format!("create {}", dir.display()), e)),
    }
    let result = start_shim(&dir, &bundle, id, opts);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn start_shim(
    dir: &Path,
    bundle: &Path,
    id: &str,
    opts: &CreateOptions,
) -> Result<ContainerState, ShimError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ShimError::io(format!("chmod {}", dir.display()), e))?;
    // The OCI lifecycle passes this process's stdio to the container: stdin and stderr
    // as the shim's own, stdout (the shim's is the readiness pipe) at another number.
    let passed_stdout = if opts.oci {
        Some(oci::inheritable_stdout()?)
    } else {
        None
    };
    write_json_atomic(
        &dir.join("config.json"),
        &ShimConfig {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            log_max_size: opts.log_max_size.max(1024),
            log_max_files: opts.log_max_files.max(1),
            stdin: opts.stdin,
            stdin_once: opts.stdin_once,
            oci: opts.oci,
            stdout_fd: passed_stdout.as_ref().map(|f| f.as_raw_fd()),
            console_socket: opts.console_socket.clone(),
        },
    )?;

    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io("create a pipe", e.into()))?;
    // The readiness pipe is the shim's stdout: no `pre_exec`, so std spawns it with
    // posix_spawn rather than a fork of this (large, multi-threaded) process.
    let mut cmd = opts.shim.command();
    cmd.arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(ready_w))
        .stderr(std::process::Stdio::null());
    if opts.oci {
        cmd.stdin(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit());
    }
    let mut child = cmd.spawn().map_err(|e| {
        ShimError::io(
            format!(
                "container {id}: start the shim {}",
                opts.shim.program.display()
            ),
            e,
        )
    })?;
    // The parent's copy of the write end is closed: `cmd` holds it until dropped.
    drop(cmd);
    drop(passed_stdout);
    // The exec'd shim forks its daemon and exits at once: reap it.
    let _ = child.wait();

    let mut answer = String::new();
    std::fs::File::from(ready_r)
        .read_to_string(&mut answer)
        .map_err(|e| ShimError::io(format!("container {id}: read the shim's answer"), e))?;
    if let Some(message) = answer.strip_prefix("error ") {
        return Err(ShimError::Start {
            id: id.to_string(),
            message: message.trim_end().to_string(),
        });
    }
    if !answer.starts_with("ok") {
        return Err(ShimError::Start {
            id: id.to_string(),
            message: format!(
                "the shim {} exited without reporting (it must accept a container directory and answer on its stdout)",
                opts.shim.program.display()
            ),
        });
    }
    read_json(&dir.join("state.json"))
}

/// The container's state, re-checked against the live processes: a container whose
/// shim has vanished without recording an exit is [`Status::Unknown`].
pub fn state(state: &Path, id: &str) -> Result<ContainerState, ShimError> {
    let dir = container_dir(state, id)?;
    let path = dir.join("state.json");
    if !dir.is_dir() {
        return Err(ShimError::NotFound { id: id.to_string() });
    }
    let mut s: ContainerState = match read_json(&path) {
        Ok(s) => s,
        // A directory without state: a create in progress, or one that died before
        // its shim wrote anything.
        Err(ShimError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            // A directory that is no shim's (a bundle the daemon made under the same
            // state directory, with an OCI config.json) is no container of this root.
            let config: ShimConfig = match read_json(&dir.join("config.json")) {
                Ok(c) => c,
                Err(ShimError::Corrupt { .. }) => {
                    return Err(ShimError::NotFound { id: id.to_string() })
                }
                Err(ShimError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Err(ShimError::NotFound { id: id.to_string() })
                }
                Err(e) => return Err(e),
            };
            return Ok(ContainerState {
                id: id.to_string(),
                bundle: config.bundle,
                status: Status::Unknown,
                shim_pid: 0,
                shim_start: 0,
                pid: None,
                pid_start: 0,
                cgroup: None,
                exit: None,
                error: Some("no state recorded".into()),
            });
        }
        Err(e) => return Err(e),
    };
    // An OCI container is `created` until `start` removed its fifo.
    if s.status == Status::Created
        && !dir.join(START_FIFO).exists()
        && s.pid.is_some_and(|p| alive(p, s.pid_start))
    {
        s.status = Status::Running;
    }
    if matches!(s.status, Status::Created | Status::Running) && !alive(s.shim_pid, s.shim_start) {
        // The shim may have written the exit just now: read again before deciding.
        s = read_json(&path)?;
        if matches!(s.status, Status::Created | Status::Running) {
            if s.pid.is_some_and(|p| alive(p, s.pid_start)) {
                // Only for a moment: the kernel kills the container with its shim
                // (parent-death signal). Still running, so still stoppable.
                s.error = Some(format!("its shim (pid {}) is gone", s.shim_pid));
            } else {
                s.status = Status::Stopped;
                s.error = Some(format!(
                    "its shim (pid {}) was killed, and the container with it: the exit status is unknown (berth runtime delete {id} cleans up)",
                    s.shim_pid
                ));
            }
        }
    }
    Ok(s)
}

/// Every container under `<state>/containers/`, sorted by id: what a restarted caller
/// adopts.
pub fn list(state: &Path) -> Result<Vec<ContainerState>, ShimError> {
    let dir = containers(state);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ShimError::io(format!("read {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match self::state(state, &name) {
            Ok(s) => out.push(s),
            Err(ShimError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Sends `signal` to the container's first process.
pub fn kill(state: &Path, id: &str, signal: i32) -> Result<(), ShimError> {
    let s = self::state(state, id)?;
    // A created container's process waits before execve (the OCI lifecycle): it may
    // be signalled too, as runc's.
    let pid = match (s.status, s.pid) {
        (Status::Running | Status::Created, Some(pid)) if alive(pid, s.pid_start) => pid,
        _ => {
            return Err(ShimError::NotRunning {
                id: id.to_string(),
                status: s.describe(),
            })
        }
    };
    // SAFETY: kill takes plain integers; the pid was checked to be the container's
    // process (same start time) just above.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(ShimError::io(
                format!("container {id}: send signal {signal} to pid {pid}"),
                e,
            ));
        }
    }
    Ok(())
}

/// Waits until the container has stopped (or its fate is unknown) and returns its
/// state; `timeout` None waits as long as it takes.
pub fn wait(
    state: &Path,
    id: &str,
    timeout: Option<Duration>,
) -> Result<ContainerState, ShimError> {
    let start = Instant::now();
    loop {
        let s = self::state(state, id)?;
        if matches!(s.status, Status::Stopped | Status::Unknown) {
            return Ok(s);
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return Err(ShimError::Timeout { id: id.to_string() });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Docker's stop: `signal`, up to `grace` for the container to exit, then SIGKILL.
/// Returns the final state. Stopping a stopped container is not an error.
pub fn stop(
    state: &Path,
    id: &str,
    signal: i32,
    grace: Duration,
) -> Result<ContainerState, ShimError> {
    match kill(state, id, signal) {
        Ok(()) => {}
        Err(ShimError::NotRunning { .. }) => return self::state(state, id),
        Err(e) => return Err(e),
    }
    match wait(state, id, Some(grace)) {
        Ok(s) => return Ok(s),
        Err(ShimError::Timeout { .. }) => {}
        Err(e) => return Err(e),
    }
    match kill(state, id, libc::SIGKILL) {
        Ok(()) | Err(ShimError::NotRunning { .. }) => {}
        Err(e) => return Err(e),
    }
    wait(state, id, None)
}

/// Removes a stopped container's state (its log included).
pub fn delete(state: &Path, id: &str) -> Result<(), ShimError> {
    let s = self::state(state, id)?;
    if matches!(s.status, Status::Created | Status::Running) {
        return Err(ShimError::StillRunning { id: id.to_string() });
    }
    // A shim that exited normally removed the cgroups; one killed by hand could not.
    if let Some(cgroup) = &s.cgroup {
        crate::runtime::remove_cgroup(cgroup)?;
    }
    let _ = crate::runtime::remove_cgroup(&serve::shim_cgroup_path(id));
    let dir = container_dir(state, id)?;
    std::fs::remove_dir_all(&dir).map_err(|e| ShimError::io(format!("remove {}", dir.display()), e))
}

/// Starts a process in running container `id` from this very process: `user` is
/// Docker's `USER[:GROUP]` (names resolved in the container's own /etc/passwd and
/// /etc/group), the rest as in [`crate::runtime::ExecOptions`]. The process is the
/// caller's child: wait for it with [`crate::runtime::ExecProcess::wait`].
///
/// Only the exec helper calls this (see `enter.rs`): everyone else goes through
/// [`exec`], so that nothing of theirs enters the container.
pub(crate) fn exec_here(
    state: &Path,
    id: &str,
    user: Option<&str>,
    mut opts: crate::runtime::ExecOptions,
) -> Result<crate::runtime::ExecProcess, ShimError> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let s = self::state(state, id)?;
    let not_running = |s: &ContainerState| ShimError::NotRunning {
        id: id.to_string(),
        status: s.describe(),
    };
    let pid = match (s.status, s.pid) {
        (Status::Running, Some(pid)) if alive(pid, s.pid_start) => pid,
        _ => return Err(not_running(&s)),
    };
    let bundle = crate::runtime::Bundle::load(&s.bundle)?;
    if let Some(user) = user {
        let root = format!("/proc/{pid}/root");
        let c = CString::new(root.clone()).map_err(|e| ShimError::io(&root, e.into()))?;
        // SAFETY: open of a NUL-terminated path; the result is checked, then owned.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(not_running(&s));
        }
        // SAFETY: a new descriptor nothing else owns.
        let root_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let resolved =
            crate::container::user::resolve(&root_fd, user).map_err(|message| ShimError::Exec {
                id: id.to_string(),
                message: format!("user {user:?}: {message}"),
            })?;
        opts.user = Some((resolved.uid, resolved.gid, resolved.additional_gids));
    }
    let target = crate::runtime::ExecTarget {
        id,
        pid,
        pid_start: s.pid_start,
    };
    match crate::runtime::exec(&bundle, target, &opts) {
        Ok(p) => Ok(p),
        Err(crate::runtime::RuntimeError::NotRunning { .. }) => {
            Err(not_running(&self::state(state, id)?))
        }
        Err(e) => Err(e.into()),
    }
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number (`15`).
pub fn parse_signal(text: &str) -> Result<i32, ShimError> {
    if let Ok(n) = text.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| ShimError::BadSignal(text.to_string()))
}

/// What [`logs`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOptions {
    /// Keep reading as the container writes, until it stops.
    pub follow: bool,
    /// Only the last N entries already written.
    pub tail: Option<usize>,
}

/// Calls `sink` with each log entry of the container, oldest first.
pub fn logs(
    state: &Path,
    id: &str,
    opts: LogOptions,
    sink: &mut dyn FnMut(&LogEntry) -> std::io::Result<()>,
) -> Result<(), ShimError> {
    let dir = container_dir(state, id)?;
    if !dir.is_dir() {
        return Err(ShimError::NotFound { id: id.to_string() });
    }
    log::read(&dir, opts, sink, &mut || {
        self::state(state, id)
            .map(|s| matches!(s.status, Status::Created | Status::Running))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod stat_tests {
    use super::*;

    #[test]
    fn alive_knows_a_process_by_its_pid_and_start_time_and_not_a_zombie() {
        let me = std::process::id() as i32;
        let start = start_time(me).expect("this process's start time");
        assert!(alive(me, start));
        assert!(!alive(me, start + 1), "a recycled pid is another process");
        assert!(!alive(0, start));
        // A child that exited and was not reaped yet is a zombie: not alive.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id() as i32;
        let born = start_time(pid).expect("the child's start time");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stat(pid).is_some_and(|(s, _)| s != 'Z') && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!alive(pid, born), "a zombie is not alive");
        child.wait().expect("reap");
        assert!(!alive(pid, born), "a reaped process is gone");
    }
}

//! A service's lifecycle hooks (`post_start`, `pre_stop`): commands run inside its
//! running container, as `berth exec` runs one. (`pre_start` steps run in containers
//! of their own: `executor::pre_start`; they fail with the same [`HookError`].)
//!
//! A hook goes through the exec helper (`shim::exec`), the one way into a container's
//! namespaces, like a health probe: never a fork of the daemon. It runs with the
//! container's own hardening (seccomp, no_new_privs, masked paths, cgroup) as the
//! service's user unless it names another; `privileged: true` gives its process, and
//! only it, every capability. Its environment is the container's with the hook's
//! variables on top. What it writes to stdout and stderr is kept (the last
//! [`OUTPUT_TAIL`] bytes) to say why it failed.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use spec::model::ServiceHook;

use crate::shim::{self, ExecRequest, ExecStdio, ShimError, ShimProgram};

/// How much of a failed hook's output its error carries.
pub const OUTPUT_TAIL: usize = 2048;

/// Which list a hook is from: its place in the Compose file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A step run in an ephemeral container before the service's starts.
    PreStart,
    PostStart,
    PreStop,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::PreStart => "pre_start",
            Phase::PostStart => "post_start",
            Phase::PreStop => "pre_stop",
        })
    }
}

/// Why a hook failed. Each names the hook as the file does
/// (`services.web.post_start[1]`).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("services.{service}.{phase}[{index}]: {} exited with code {code}{}", describe(.command), output_suffix(.output))]
    Exited {
        service: String,
        phase: Phase,
        index: usize,
        command: Vec<String>,
        code: i32,
        output: String,
    },
    #[error("services.{service}.{phase}[{index}]: {} was still running after {timeout:?} and was killed{}", describe(.command), output_suffix(.output))]
    TimedOut {
        service: String,
        phase: Phase,
        index: usize,
        command: Vec<String>,
        timeout: Duration,
        output: String,
    },
    #[error("services.{service}.{phase}[{index}]: {source}")]
    Exec {
        service: String,
        phase: Phase,
        index: usize,
        #[source]
        source: ShimError,
    },
    /// The task was to stop while it ran: ended, and the start with it.
    #[error(
        "services.{service}.{phase}[{index}]: ended before it finished: the container is to stop"
    )]
    Interrupted {
        service: String,
        phase: Phase,
        index: usize,
    },
    #[error("services.{service}.{phase}[{index}]: keeping its output: {source}")]
    Output {
        service: String,
        phase: Phase,
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

impl HookError {
    /// The container was not running (it exited, or was stopped meanwhile): not the
    /// hook's fault, and for `pre_stop` nothing to do.
    pub fn not_running(&self) -> bool {
        matches!(
            self,
            HookError::Exec {
                source: ShimError::NotRunning { .. } | ShimError::NotFound { .. },
                ..
            }
        )
    }
}

/// A hook's command as the error shows it; a `pre_start` step may run its image's.
fn describe(command: &[String]) -> String {
    if command.is_empty() {
        "the image's command".to_string()
    } else {
        format!("{command:?}")
    }
}

fn output_suffix(output: &str) -> String {
    let trimmed = output.trim_end();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!(": {trimmed}")
    }
}

/// What ends the hook or step a task's start waits on, and whether it was used.
type Ender = (Box<dyn Fn() + Send>, bool);

/// The [`Ender`] of each task whose start waits on a hook or step, by task id (see
/// [`interrupt`]).
static STARTS: LazyLock<Mutex<HashMap<String, Ender>>> = LazyLock::new(Default::default);

/// Ends what the start of `task` waits on, if it waits on a `post_start` command or a
/// `pre_start` step: its task is to stop, and neither has a timeout of its own, so one
/// that never ends would otherwise hold the task's start job, and its stop, forever.
/// The start then fails with [`HookError::Interrupted`]. Does nothing otherwise.
pub fn interrupt(task: &str) {
    let mut starts = STARTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((end, used)) = starts.get_mut(task) {
        if !*used {
            *used = true;
            end();
        }
    }
}

/// While it lives, [`interrupt`] of `task` calls `end`.
pub(crate) struct Interruptible(String);

impl Interruptible {
    pub(crate) fn new(task: &str, end: impl Fn() + Send + 'static) -> Interruptible {
        let mut starts = STARTS.lock().unwrap_or_else(PoisonError::into_inner);
        starts.insert(task.to_string(), (Box::new(end), false));
        Interruptible(task.to_string())
    }

    /// Whether [`interrupt`] was called.
    pub(crate) fn interrupted(&self) -> bool {
        let starts = STARTS.lock().unwrap_or_else(PoisonError::into_inner);
        starts.get(&self.0).is_some_and(|(_, used)| *used)
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        let mut starts = STARTS.lock().unwrap_or_else(PoisonError::into_inner);
        starts.remove(&self.0);
    }
}

/// What the exec helper is asked for one hook: `timeout` kills it when it runs longer.
pub fn request(hook: &ServiceHook, timeout: Option<Duration>) -> ExecRequest {
    ExecRequest {
        args: hook.command.clone(),
        // A variable named without a value (and not set where the file was loaded)
        // leaves the container's own as it is.
        env: hook
            .environment
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect(),
        user: hook.user.clone(),
        cwd: hook.working_dir.as_ref().map(Into::into),
        tty: None,
        timeout_ms: timeout.map(|t| t.as_millis().clamp(1, u64::MAX as u128) as u64),
        privileged: hook.privileged,
    }
}

/// Where one hook is: the container it runs in and its place in the file.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub shim: &'a ShimProgram,
    pub shim_root: &'a Path,
    /// The container (the task's id).
    pub id: &'a str,
    pub service: &'a str,
    pub phase: Phase,
}

/// Runs `hook`, the `index`th of its list, in the container and waits for it; `Ok`
/// when it exits 0.
pub fn run(
    target: Target,
    index: usize,
    hook: &ServiceHook,
    timeout: Option<Duration>,
) -> Result<(), HookError> {
    let exec_error = |source| HookError::Exec {
        service: target.service.to_string(),
        phase: target.phase,
        index,
        source,
    };
    let output_error = |source| HookError::Output {
        service: target.service.to_string(),
        phase: target.phase,
        index,
        source,
    };
    // A memory file, not a pipe: a hook that leaves a background process holding its
    // stdout open must not keep us reading.
    let out = memfd().map_err(output_error)?;
    let stdio = ExecStdio {
        stdin: None,
        stdout: Some(out.as_fd()),
        stderr: Some(out.as_fd()),
    };
    let req = request(hook, timeout);
    let mut interruptible = None;
    let waited =
        shim::exec(target.shim, target.shim_root, target.id, &req, stdio).and_then(|session| {
            // A `pre_stop` command runs in a stop already, bounded by its grace period.
            if target.phase == Phase::PostStart {
                let hang_up = session.hang_up_handle()?;
                interruptible = Some(Interruptible::new(target.id, move || hang_up.hang_up()));
            }
            session.wait()
        });
    if interruptible
        .as_ref()
        .is_some_and(Interruptible::interrupted)
    {
        return Err(HookError::Interrupted {
            service: target.service.to_string(),
            phase: target.phase,
            index,
        });
    }
    let output = || tail(&out).unwrap_or_default();
    match waited {
        Ok(report) if report.status() == 0 => Ok(()),
        Ok(report) => Err(HookError::Exited {
            service: target.service.to_string(),
            phase: target.phase,
            index,
            command: hook.command.clone(),
            code: report.status(),
            output: output(),
        }),
        Err(ShimError::Timeout { .. }) => Err(HookError::TimedOut {
            service: target.service.to_string(),
            phase: target.phase,
            index,
            command: hook.command.clone(),
            timeout: timeout.unwrap_or_default(),
            output: output(),
        }),
        Err(e) => Err(exec_error(e)),
    }
}

fn memfd() -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name and flags; the result is
    // checked, then owned.
    let fd = unsafe { libc::memfd_create(c"berth-hook".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The last [`OUTPUT_TAIL`] bytes written to `fd`, as text.
fn tail(fd: &OwnedFd) -> std::io::Result<String> {
    let mut file = std::fs::File::from(fd.try_clone()?);
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_TAIL as u64)))?;
    let mut bytes = Vec::with_capacity(OUTPUT_TAIL);
    file.take(OUTPUT_TAIL as u64).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_request_carries_the_hooks_options_and_skips_unset_variables() {
        let hook = ServiceHook {
            command: vec!["sh".into(), "-c".into(), "true".into()],
            user: Some("1000:1000".into()),
            privileged: true,
            working_dir: Some("/data".into()),
            environment: BTreeMap::from([
                ("A".to_string(), Some("1".to_string())),
                ("UNSET".to_string(), None),
            ]),
        };
        let req = request(&hook, Some(Duration::from_secs(2)));
        assert_eq!(req.args, ["sh", "-c", "true"]);
        assert_eq!(req.env, ["A=1"]);
        assert_eq!(req.user.as_deref(), Some("1000:1000"));
        assert_eq!(req.cwd.as_deref(), Some(Path::new("/data")));
        assert_eq!(req.timeout_ms, Some(2000));
        assert!(req.privileged);
        assert!(!request(&ServiceHook::default(), None).privileged);
    }

    #[test]
    fn an_error_names_the_hook_its_exit_code_and_the_end_of_its_output() {
        let e = HookError::Exited {
            service: "web".into(),
            phase: Phase::PostStart,
            index: 1,
            command: vec!["false".into()],
            code: 3,
            output: "no such file\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "services.web.post_start[1]: [\"false\"] exited with code 3: no such file"
        );
    }

    #[test]
    fn the_output_kept_is_its_tail() {
        use std::io::Write;
        let fd = memfd().unwrap();
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        f.write_all(&vec![b'a'; OUTPUT_TAIL]).unwrap();
        f.write_all(b"end").unwrap();
        let t = tail(&fd).unwrap();
        assert_eq!(t.len(), OUTPUT_TAIL);
        assert!(t.ends_with("aend"), "{t}");
    }
}

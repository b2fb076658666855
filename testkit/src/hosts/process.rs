//! A process started inside a host, and what a test does to it: kill -9, stop,
//! continue, wait, read its output.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::HostsError;

/// A process started in a host. Dropping the handle kills it (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pid: u32,
    host: usize,
    name: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Process {
    pub(super) fn new(
        child: Child,
        host: usize,
        name: String,
        stdout_path: PathBuf,
        stderr_path: PathBuf,
    ) -> Process {
        Process {
            pid: child.id(),
            child,
            host,
            name,
            stdout_path,
            stderr_path,
            status: None,
        }
    }

    /// Its pid (in the machine's pid namespace).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The host it runs in.
    pub fn host(&self) -> usize {
        self.host
    }

    /// `<program>-<n>`, the stem of its log files.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn error(&self, what: impl Into<String>) -> HostsError {
        HostsError::Process {
            name: self.name.clone(),
            pid: self.pid,
            host: self.host,
            what: what.into(),
        }
    }

    /// Sends `signal`; an exited (reaped) process is an error, since the pid may
    /// already be someone else's.
    pub fn signal(&self, signal: Signal) -> Result<(), HostsError> {
        if self.status.is_some() {
            return Err(self.error(format!("cannot send {signal}: it has exited")));
        }
        // The pid cannot be reused before we reap it, so this reaches our process.
        kill(Pid::from_raw(self.pid as i32), signal)
            .map_err(|e| self.error(format!("sending {signal}: {e}")))
    }

    /// `kill -9`, then waits for it: the process is gone when this returns.
    pub fn kill9(&mut self) -> Result<ExitStatus, HostsError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        self.signal(Signal::SIGKILL)?;
        self.wait()
    }

    /// SIGSTOP, and waits until the kernel reports it stopped, so it answers nothing
    /// from the moment this returns.
    pub fn stop(&self) -> Result<(), HostsError> {
        self.signal(Signal::SIGSTOP)?;
        self.wait_state(true)
    }

    /// SIGCONT, and waits until it is no longer stopped.
    pub fn cont(&self) -> Result<(), HostsError> {
        self.signal(Signal::SIGCONT)?;
        self.wait_state(false)
    }

    /// Whether the kernel reports it stopped (`T` in `/proc/<pid>/stat`).
    pub fn is_stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| {
                // "pid (comm) S ...": comm may hold spaces and parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "T"))
            })
            .unwrap_or(false)
    }

    fn wait_state(&self, stopped: bool) -> Result<(), HostsError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_stopped() != stopped {
            if Instant::now() > deadline {
                let want = if stopped { "stopped" } else { "running" };
                return Err(self.error(format!("did not become {want} within 5 s")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Its exit status if it has exited (reaping it), `None` if it is still running.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, HostsError> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| self.error(format!("waiting: {e}")))?;
        }
        Ok(self.status)
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> Result<ExitStatus, HostsError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .map_err(|e| self.error(format!("waiting: {e}")))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Waits at most `timeout` for it to exit (polling every few milliseconds).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, HostsError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// What it wrote to stdout so far (lossy UTF-8; empty if the file is gone).
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// The file its stdout goes to.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// The file its stderr goes to.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

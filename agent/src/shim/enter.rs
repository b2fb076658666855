//! `exec` into a running container through a small helper process, never from the
//! caller itself: the CLI's `berth exec`, the daemon's health probes and `berth
//! runtime exec` all come here.
//!
//! Why a helper (CVE-2016-9962, CVE-2019-5736): the process that joins a container's
//! namespaces is, until its execve, a copy of whoever cloned it, with that process's
//! memory and descriptors. Cloned from the daemon, a probe would carry the daemon's
//! Raft log, its API listener and its heap into the container; cloned from the CLI, the
//! admin's terminal. The helper is the shim's program (`berth-shim --exec STATE`),
//! run from a sealed copy, single-threaded, holding nothing but what it is given: the
//! control socket (its stdin) and the three descriptors that become the process's
//! stdio, passed over that socket. The runtime then makes the process non-dumpable
//! and closes the rest before it joins anything (`runtime::init::enter`).
//!
//! The protocol is three messages over a `SOCK_SEQPACKET` pair (one JSON object per
//! packet, descriptors as SCM_RIGHTS): the caller sends an [`ExecRequest`] with
//! stdin, stdout and stderr; the helper answers `started` (the pid, and the terminal's
//! master with `tty`) or `error`; then `exited` with the exit report, or `timed out`
//! after killing the process. The caller never hands over its own terminal: without a
//! `tty` it passes pipes or /dev/null ([`ExecStdio`]), and the process gets a session
//! of its own, so no `/dev/tty` inside reaches the caller's terminal either.
//!
//! A helper that cannot report (killed, stopped) is the caller's to kill: the
//! process it started dies with it (the parent-death signal), and a caller that
//! gave a timeout never waits much longer than that.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use super::{ShimError, ShimProgram};
use crate::runtime::{ExitReport, WindowSize};

/// What to run in the container, as sent to the helper.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The program and its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Docker's `USER[:GROUP]`, resolved in the container's own /etc/passwd and group.
    #[serde(default)]
    pub user: Option<String>,
    /// The working directory, instead of the container's.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// A terminal of this size (rows, cols) instead of the given stdio.
    #[serde(default)]
    pub tty: Option<(u16, u16)>,
    /// Kill the process (SIGKILL) if it runs longer, and report that (a probe's
    /// timeout).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Every capability for the process (a lifecycle hook's `privileged`); never the
    /// container's own, which keeps what it has.
    #[serde(default)]
    pub privileged: bool,
}

/// The process's standard streams: descriptors the caller owns (pipes, files,
/// /dev/null), never inherited. `None` is /dev/null.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExecStdio<'a> {
    pub stdin: Option<BorrowedFd<'a>>,
    pub stdout: Option<BorrowedFd<'a>>,
    pub stderr: Option<BorrowedFd<'a>>,
}

/// The helper's answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Started {
        pid: i32,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    TimedOut,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ErrorKind {
    NotFound,
    NotRunning,
    Other,
}

/// A process started in a container by [`exec`]: wait for it with
/// [`ExecSession::wait`].
#[derive(Debug)]
pub struct ExecSession {
    id: String,
    helper: Option<std::process::Child>,
    control: OwnedFd,
    pid: i32,
    master: Option<OwnedFd>,
    timeout: Option<Duration>,
}

/// How long a caller waits, past the process's own timeout, for the helper to say
/// it has killed it, before killing the helper.
const HELPER_GRACE: Duration = Duration::from_secs(5);

/// Starts `req` in running container `id` (shim state under `state`) through a helper
/// run from `shim`; returns once the program has been exec'd, or with why it was not
/// (the container is missing or not running, the program or user is not there...).
pub fn exec(
    shim: &ShimProgram,
    state: &Path,
    id: &str,
    req: &ExecRequest,
    stdio: ExecStdio,
) -> Result<ExecSession, ShimError> {
    // Fail fast, without a helper, on what the caller can see itself.
    super::container_dir(state, id)?;
    if req.args.is_empty() {
        return Err(ShimError::Exec {
            id: id.to_string(),
            message: "exec needs a command".into(),
        });
    }
    let io = |what: &str, e: std::io::Error| ShimError::io(format!("container {id}: {what}"), e);
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| io("exec: socket pair", e.into()))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| io("open /dev/null", e))?;
    let mut cmd = shim.command();
    cmd.arg("--exec").arg(state);
    if let Some(build) = &shim.build {
        cmd.arg(build);
    }
    cmd.stdin(std::process::Stdio::from(theirs))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let helper = cmd.spawn().map_err(|e| {
        io(
            &format!("start the exec helper {}", shim.program.display()),
            e,
        )
    })?;
    drop(cmd);
    let mut session = ExecSession {
        id: id.to_string(),
        helper: Some(helper),
        control: ours,
        pid: 0,
        master: None,
        timeout: req.timeout_ms.map(Duration::from_millis),
    };
    let message = serde_json::to_vec(&(id, req)).map_err(|e| io("exec request", e.into()))?;
    let fds = [
        stdio.stdin.unwrap_or(null.as_fd()).as_raw_fd(),
        stdio.stdout.unwrap_or(null.as_fd()).as_raw_fd(),
        stdio.stderr.unwrap_or(null.as_fd()).as_raw_fd(),
    ];
    send(&session.control, &message, &fds).map_err(|e| io("send the exec request", e))?;
    drop(null);
    // Starting takes a few milliseconds; a helper stopped for longer than this is not
    // coming back.
    let deadline = Instant::now() + session.timeout.unwrap_or(Duration::ZERO) + HELPER_GRACE * 6;
    let (reply, fd) = session.receive(Some(deadline))?;
    match reply {
        Reply::Started { pid } => {
            session.pid = pid;
            session.master = fd;
            Ok(session)
        }
        Reply::Error { kind, message } => {
            let _ = session.finish_helper();
            Err(match kind {
                ErrorKind::NotFound => ShimError::NotFound { id: id.to_string() },
                ErrorKind::NotRunning => ShimError::NotRunning {
                    id: id.to_string(),
                    status: message,
                },
                ErrorKind::Other => ShimError::Exec {
                    id: id.to_string(),
                    message,
                },
            })
        }
        other => Err(session.protocol(&other)),
    }
}

impl ExecSession {
    /// The process, as seen from the host.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The master side of its terminal (with `tty`): whoever takes it relays it.
    pub fn take_master(&mut self) -> Option<OwnedFd> {
        self.master.take()
    }

    /// A handle that ends the process from another thread while [`ExecSession::wait`]
    /// waits for it (the caller's client went away): it hangs up the control socket,
    /// on which the helper kills the process; `wait` then returns an error.
    pub fn hang_up_handle(&self) -> Result<HangUp, ShimError> {
        let dup = self
            .control
            .try_clone()
            .map_err(|e| ShimError::io(format!("container {}: exec control socket", self.id), e))?;
        Ok(HangUp(dup))
    }

    /// Waits for the process to end. With a timeout in the request, a process that
    /// ran longer was killed: that is [`ShimError::Timeout`].
    pub fn wait(mut self) -> Result<ExitReport, ShimError> {
        let deadline = self.timeout.map(|t| Instant::now() + t + HELPER_GRACE);
        let result = match self.receive(deadline) {
            Ok((Reply::Exited { code, signal }, _)) => Ok(ExitReport {
                code,
                signal,
                oom_killed: false,
            }),
            Ok((Reply::TimedOut, _)) => Err(ShimError::Timeout {
                id: self.id.clone(),
            }),
            Ok((other, _)) => Err(self.protocol(&other)),
            Err(e) => Err(e),
        };
        let _ = self.finish_helper();
        result
    }

    fn protocol(&self, reply: &Reply) -> ShimError {
        ShimError::Exec {
            id: self.id.clone(),
            message: format!("the exec helper answered out of turn: {reply:?}"),
        }
    }

    /// The next reply; past `deadline` (or if the helper is gone without one), the
    /// helper is killed, and with it the process it started.
    fn receive(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<(Reply, Option<OwnedFd>), ShimError> {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match receive(&self.control, timeout) {
            Ok(Some((bytes, mut fds))) => {
                let reply: Reply = serde_json::from_slice(&bytes).map_err(|e| ShimError::Exec {
                    id: self.id.clone(),
                    message: format!("the exec helper's answer: {e}"),
                })?;
                Ok((reply, fds.pop()))
            }
            Ok(None) => {
                let status = self.finish_helper();
                Err(ShimError::Exec {
                    id: self.id.clone(),
                    message: format!("the exec helper ended without answering ({status})"),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.kill_helper();
                Err(ShimError::Timeout {
                    id: self.id.clone(),
                })
            }
            Err(e) => {
                self.kill_helper();
                Err(ShimError::io(
                    format!("container {}: exec helper", self.id),
                    e,
                ))
            }
        }
    }

    fn kill_helper(&mut self) {
        if let Some(mut h) = self.helper.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
    }

    fn finish_helper(&mut self) -> String {
        match self.helper.take().map(|mut h| h.wait()) {
            Some(Ok(status)) => status.to_string(),
            Some(Err(e)) => e.to_string(),
            None => "gone".into(),
        }
    }
}

/// See [`ExecSession::hang_up_handle`].
#[derive(Debug)]
pub struct HangUp(OwnedFd);

impl HangUp {
    /// Kills the session's process, if it still runs.
    pub fn hang_up(&self) {
        // Both directions: the helper's end then polls as hung up (a close of this
        // duplicate alone would not, the session holds the socket open too).
        let _ = nix::sys::socket::shutdown(self.0.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        // A session dropped unwaited (the caller gave up): the process goes with the
        // helper.
        self.kill_helper();
    }
}

/// The helper's side: `berth-shim --exec STATE [BUILD-ID]`, with the control socket
/// as stdin. Returns its exit status (0 once it has reported how the process ended).
/// With `build`, a helper from another build of berth refuses, saying what to do.
pub fn helper_main(state: &Path, build: Option<&str>) -> i32 {
    // Nothing of whoever started us beyond stdio: a descriptor its program left
    // inheritable must not reach the process we start.
    // SAFETY: prctl and close_range with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    // SAFETY: fd 0 is our stdin, the control socket; it is owned here from now on.
    let control = unsafe { OwnedFd::from_raw_fd(libc::STDIN_FILENO) };
    let Ok(Some((bytes, fds))) = receive(&control, Some(Duration::from_secs(30))) else {
        return 2;
    };
    let reply = |r: &Reply, fd: Option<RawFd>| {
        let bytes = serde_json::to_vec(r).unwrap_or_default();
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let _ = send(&control, &bytes, &fds);
    };
    if build.is_some_and(|b| b != crate::BUILD_ID) {
        reply(
            &Reply::Error {
                kind: ErrorKind::Other,
                message: "the berth-shim next to berth is from another build of berth: install both from one build (or set BERTH_SHIM=builtin)".into(),
            },
            None,
        );
        return 1;
    }
    let (id, req): (String, ExecRequest) = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            reply(
                &Reply::Error {
                    kind: ErrorKind::Other,
                    message: format!("bad exec request: {e}"),
                },
                None,
            );
            return 2;
        }
    };
    let [stdin, stdout, stderr] = match <[OwnedFd; 3]>::try_from(fds) {
        Ok(fds) => fds,
        Err(_) => {
            reply(
                &Reply::Error {
                    kind: ErrorKind::Other,
                    message: "the exec request must carry stdin, stdout and stderr".into(),
                },
                None,
            );
            return 2;
        }
    };
    let opts = crate::runtime::ExecOptions {
        args: req.args.clone(),
        env: req.env.clone(),
        cwd: req.cwd.clone(),
        tty: req.tty.map(|(rows, cols)| WindowSize { rows, cols }),
        stdio: crate::runtime::Stdio {
            stdin: Some(stdin.as_fd()),
            stdout: Some(stdout.as_fd()),
            stderr: Some(stderr.as_fd()),
        },
        kill_with_parent: true,
        privileged: req.privileged,
        ..Default::default()
    };
    let mut process = match super::exec_here(state, &id, req.user.as_deref(), opts) {
        Ok(p) => p,
        Err(e) => {
            let kind = match &e {
                ShimError::NotFound { .. } => ErrorKind::NotFound,
                ShimError::NotRunning { .. } => ErrorKind::NotRunning,
                _ => ErrorKind::Other,
            };
            let message = match &e {
                ShimError::NotRunning { status, .. } => status.clone(),
                ShimError::Exec { message, .. } => message.clone(),
                other => other.to_string(),
            };
            reply(&Reply::Error { kind, message }, None);
            return 1;
        }
    };
    drop((stdin, stdout, stderr));
    let master = process.take_master();
    reply(
        &Reply::Started { pid: process.pid() },
        master.as_ref().map(|m| m.as_raw_fd()),
    );
    drop(master);

    let timed_out = wait_or_kill(
        process.pid(),
        &control,
        req.timeout_ms.map(Duration::from_millis),
    );
    let report = process.wait();
    match (timed_out, report) {
        (true, _) => reply(&Reply::TimedOut, None),
        (false, Ok(r)) => reply(
            &Reply::Exited {
                code: r.code,
                signal: r.signal,
            },
            None,
        ),
        (false, Err(e)) => reply(
            &Reply::Error {
                kind: ErrorKind::Other,
                message: e.to_string(),
            },
            None,
        ),
    }
    0
}

/// Waits until process `pid` (our child) ends; kills it when `timeout` passes or the
/// caller hangs up the control socket (nobody is left to read its output). Returns
/// whether it was killed for the timeout.
fn wait_or_kill(pid: i32, control: &OwnedFd, timeout: Option<Duration>) -> bool {
    // SAFETY: pidfd_open with a pid and flags; the result is checked, then owned.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return false;
    }
    // SAFETY: a new descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let deadline = timeout.map(|t| Instant::now() + t);
    let kill = || {
        // SAFETY: a signal through our own pidfd (it names this very process, even
        // once reaped: never a recycled pid).
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                0,
                0,
            )
        };
    };
    loop {
        let wait_ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    kill();
                    return true;
                }
                left.as_millis().min(i32::MAX as u128) as i32
            }
            None => -1,
        };
        let mut fds = [
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: control.as_raw_fd(),
                events: 0,
                revents: 0,
            },
        ];
        // SAFETY: poll over a stack array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[0].revents != 0 {
            return false;
        }
        if fds[1].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            kill();
            return false;
        }
    }
}

/// Sends one packet with `fds` attached.
fn send(socket: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(socket.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// Receives one packet and the descriptors that came with it; `None` when the peer
/// has closed; `WouldBlock` when `timeout` passed first.
fn receive(
    socket: &OwnedFd,
    timeout: Option<Duration>,
) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    if let Some(t) = timeout {
        let mut pfd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = t.as_millis().clamp(1, i32::MAX as u128) as i32;
        loop {
            // SAFETY: poll over one stack pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            break;
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(std::io::Error::from)?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let n = msg.bytes;
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

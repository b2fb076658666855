//! `exec`: another process in a running container, like `runc exec`.
//!
//! The parent (any caller, possibly multi-threaded) checks that the container's
//! first process is still the one recorded (pid and start time, then pinned with a
//! pidfd), prepares an [`InitPlan`] from the bundle's `process` with the caller's
//! overrides, and clones a child that joins the container's namespaces through the
//! pidfd (one `setns`, all at once) and forks the real process with `CLONE_PARENT`:
//! joining a pid namespace only applies to children, and `CLONE_PARENT` makes that
//! process the caller's own child, so the caller waits for it. The parent moves it
//! into the container's cgroup, then lets it run the same hardening as the
//! container's init (`init::finish`: rlimits, no_new_privs, user and groups,
//! capabilities, a cwd resolved inside the root, descriptors closed, seccomp).
//!
//! With a terminal the pty is opened inside the container (its own /dev/pts
//! instance, so `tty` inside names a device the container can see) and its master is
//! sent back to the caller, who relays it ([`relay`]).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::cgroups::{Cgroup, Hierarchy};
use super::init::{self, ExecFds, Step};
use super::process::{cgroup_path, pipe, plan_process, read_full, ChildGuard};
use super::{Bundle, ExitReport, RuntimeError, Stdio};

/// The running container to exec into: its id and its first process as recorded
/// when it started (the pid with its start time, so a recycled pid is refused).
#[derive(Debug, Clone, Copy)]
pub struct ExecTarget<'a> {
    pub id: &'a str,
    pub pid: i32,
    pub pid_start: u64,
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// What to run, and how it differs from the bundle's `process`.
#[derive(Debug, Default)]
pub struct ExecOptions<'a> {
    /// The program and its arguments (required).
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to the bundle's environment (replacing a same key).
    pub env: Vec<String>,
    /// (uid, gid, additional gids) instead of the bundle's user.
    pub user: Option<(u32, u32, Vec<u32>)>,
    /// The working directory instead of the bundle's.
    pub cwd: Option<PathBuf>,
    /// Run on a new terminal of this size; [`ExecProcess::take_master`] gives its
    /// master side. `stdio` is then ignored.
    pub tty: Option<WindowSize>,
    pub stdio: Stdio<'a>,
    /// The cgroup layout; `None` detects this host's.
    pub hierarchy: Option<Hierarchy>,
    /// SIGKILL the process when the thread that called [`exec`] dies (the exec
    /// helper's choice: a helper killed for a timeout takes its probe with it).
    pub kill_with_parent: bool,
}

/// A process started by [`exec`]: the caller's child.
#[derive(Debug)]
pub struct ExecProcess {
    pid: Pid,
    child: ChildGuard,
    master: Option<OwnedFd>,
}

impl ExecProcess {
    /// The process, as seen from the caller.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// The master side of its terminal (with [`ExecOptions::tty`]).
    pub fn take_master(&mut self) -> Option<OwnedFd> {
        self.master.take()
    }

    /// Waits for it to end.
    pub fn wait(mut self) -> Result<ExitReport, RuntimeError> {
        let status = self.child.wait()?;
        Ok(match status {
            WaitStatus::Exited(_, code) => ExitReport {
                code: Some(code),
                signal: None,
                oom_killed: false,
            },
            WaitStatus::Signaled(_, sig, _) => ExitReport {
                code: None,
                signal: Some(sig as i32),
                oom_killed: false,
            },
            _ => ExitReport {
                code: None,
                signal: None,
                oom_killed: false,
            },
        })
    }
}

/// Starts `opts.args` inside the running container `target` of `bundle`; returns once
/// the program has been exec'd (or with what failed: the container is not running,
/// the program is not found in it...).
pub fn exec(
    bundle: &Bundle,
    target: ExecTarget,
    opts: &ExecOptions,
) -> Result<ExecProcess, RuntimeError> {
    let not_running = || RuntimeError::NotRunning {
        id: target.id.to_string(),
    };
    if opts.args.is_empty() {
        return Err(RuntimeError::unsupported("exec needs a command"));
    }
    if super::start_time(target.pid) != Some(target.pid_start) {
        return Err(not_running());
    }
    // SAFETY: pidfd_open takes a pid and flags; the result is checked, then owned.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, target.pid, 0) };
    if raw < 0 {
        return Err(not_running());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    // The pidfd names the process that had this pid when it was opened: checking the
    // start time again proves it is the container's, for the rest of the call.
    if super::start_time(target.pid) != Some(target.pid_start) {
        return Err(not_running());
    }
    let ns_flags = namespaces_to_join(target.pid)?;

    let hierarchy = match &opts.hierarchy {
        Some(h) => h.clone(),
        None => Hierarchy::detect()?,
    };
    let linux = bundle.spec.linux().clone().unwrap_or_default();
    let cgroup = Cgroup::open(
        &hierarchy,
        &cgroup_path(linux.cgroups_path().as_deref(), target.id)?,
    );

    let mut process = bundle
        .spec
        .process()
        .clone()
        .ok_or_else(|| RuntimeError::unsupported("process is missing"))?;
    process.set_args(Some(opts.args.clone()));
    process.set_env(Some(merge_env(
        process.env().as_deref().unwrap_or_default(),
        &opts.env,
    )));
    if let Some(cwd) = &opts.cwd {
        process.set_cwd(cwd.clone());
    }
    if let Some((uid, gid, groups)) = &opts.user {
        let mut user = process.user().clone();
        user.set_uid(*uid);
        user.set_gid(*gid);
        user.set_additional_gids(Some(groups.clone()));
        process.set_user(user);
    }
    let mut plan = plan_process(&process, &linux, opts.stdio)?;
    plan.kill_with_parent = opts.kill_with_parent;

    let tty = match opts.tty {
        Some(size) => {
            let (parent, child) = console_socket_pair()?;
            plan.tty_socket = Some(child.as_raw_fd());
            plan.tty_size = (size.rows, size.cols);
            Some((parent, child))
        }
        None => None,
    };
    plan.seal();

    let (pid_r, pid_w) = pipe()?;
    let (sync_r, sync_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    plan.keep(&[
        pidfd.as_raw_fd(),
        pid_w.as_raw_fd(),
        sync_r.as_raw_fd(),
        err_w.as_raw_fd(),
    ]);
    let fds = ExecFds {
        pidfd: pidfd.as_raw_fd(),
        ns_flags,
        pid_pipe: pid_w.as_raw_fd(),
        sync_pipe: sync_r.as_raw_fd(),
        parent_end: sync_w.as_raw_fd(),
        error_pipe: err_w.as_raw_fd(),
    };
    let mut stack = vec![0u8; 1 << 20];
    let plan_ref = &plan;
    // SAFETY: as in `spawn`: the child has a copy of this process's memory (no
    // CLONE_VM) and only this thread; `exec_child_main` makes only system calls over
    // the prepared plan and ends in execve or _exit.
    let intermediate = unsafe {
        nix::sched::clone(
            Box::new(move || init::exec_child_main(plan_ref, fds)),
            &mut stack,
            nix::sched::CloneFlags::empty(),
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| RuntimeError::io("clone the exec process", e.into()))?;
    let mut intermediate = ChildGuard(Some(intermediate));
    drop((pid_w, sync_r, err_w));
    let tty_parent = tty.map(|(parent, child)| {
        drop(child);
        parent
    });
    let mut err_file = std::fs::File::from(err_r);
    let fail = |err_file: &mut std::fs::File, plan: &init::InitPlan| {
        let mut buf = [0u8; init::FAILURE_SIZE];
        match read_full(err_file, &mut buf) {
            Ok(n) if n == init::FAILURE_SIZE => {
                exec_failure(target.id, plan, &init::Failure::from_bytes(&buf))
            }
            Ok(_) => RuntimeError::io(
                format!("container {}: exec", target.id),
                std::io::Error::other("the exec process ended without reporting"),
            ),
            Err(e) => e,
        }
    };

    let mut pid_buf = [0u8; 4];
    let n = read_full(&mut std::fs::File::from(pid_r), &mut pid_buf)?;
    intermediate.reap();
    if n != 4 {
        return Err(fail(&mut err_file, &plan));
    }
    let pid = Pid::from_raw(i32::from_ne_bytes(pid_buf));
    let mut child = ChildGuard(Some(pid));

    let master = match tty_parent {
        Some(socket) => match receive_fd(&socket) {
            Some(master) => {
                if let Some(size) = opts.tty {
                    set_window_size(master.as_raw_fd(), size);
                }
                Some(master)
            }
            None => {
                child.reap();
                return Err(fail(&mut err_file, &plan));
            }
        },
        None => None,
    };
    if let Err(e) = cgroup.add(pid.as_raw()) {
        // The container may have stopped meanwhile (its cgroup removed).
        if super::start_time(target.pid) != Some(target.pid_start) {
            return Err(not_running());
        }
        return Err(e.into());
    }
    let mut sync_w = std::fs::File::from(sync_w);
    std::io::Write::write_all(&mut sync_w, &[1])
        .map_err(|e| RuntimeError::io("start the exec process", e))?;
    let mut buf = [0u8; init::FAILURE_SIZE];
    let n = read_full(&mut err_file, &mut buf)?;
    drop(sync_w);
    if n == init::FAILURE_SIZE {
        child.reap();
        return Err(exec_failure(
            target.id,
            &plan,
            &init::Failure::from_bytes(&buf),
        ));
    }
    Ok(ExecProcess { pid, child, master })
}

/// The message for a failed step; a program that is not there gets Docker's words.
fn exec_failure(id: &str, plan: &init::InitPlan, f: &init::Failure) -> RuntimeError {
    if f.step == Step::Exec as u32 && matches!(f.errno, libc::ENOENT | libc::ENOTDIR) {
        let program = plan
            .argv
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        return RuntimeError::ExecNotFound {
            id: id.to_string(),
            program,
        };
    }
    RuntimeError::Init {
        id: id.to_string(),
        step: init::describe(plan, f),
        errno: nix::errno::Errno::from_raw(f.errno),
    }
}

/// The bundle's environment with `extra` applied: a `KEY=VALUE` replaces the same key.
fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let mut out: Vec<String> = base
        .iter()
        .filter(|b| !extra.iter().any(|x| key(x) == key(b)))
        .cloned()
        .collect();
    out.extend(extra.iter().cloned());
    out
}

/// The CLONE_NEW* flags of the namespaces of `pid` that are not ours (joining one's
/// own user namespace is an error, and the others would be no-ops).
fn namespaces_to_join(pid: i32) -> Result<libc::c_int, RuntimeError> {
    use std::os::unix::fs::MetadataExt;
    const KINDS: &[(&str, libc::c_int)] = &[
        ("user", libc::CLONE_NEWUSER),
        ("mnt", libc::CLONE_NEWNS),
        ("pid", libc::CLONE_NEWPID),
        ("uts", libc::CLONE_NEWUTS),
        ("ipc", libc::CLONE_NEWIPC),
        ("net", libc::CLONE_NEWNET),
        ("cgroup", libc::CLONE_NEWCGROUP),
    ];
    let mut flags = 0;
    for (name, flag) in KINDS {
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{name}"));
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"));
        match (theirs, ours) {
            (Ok(t), Ok(o)) if (t.dev(), t.ino()) != (o.dev(), o.ino()) => flags |= flag,
            (Ok(_), Ok(_)) => {}
            (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            (Err(e), _) | (_, Err(e)) => {
                return Err(RuntimeError::io(format!("read /proc/{pid}/ns/{name}"), e))
            }
        }
    }
    Ok(flags)
}

/// The socket pair over which a process opening a terminal inside the container sends
/// its master back (ours first, the child's second).
pub(crate) fn console_socket_pair() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| RuntimeError::io("create the console socket pair", e.into()))
}

/// Receives one descriptor (SCM_RIGHTS) from `socket`; None if the peer closed first.
pub(crate) fn receive_fd(socket: &OwnedFd) -> Option<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for cmsg in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            let fd = *fds.first()?;
            // SAFETY: the kernel just installed this descriptor for us.
            return Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    None
}

/// Sets a terminal's size (TIOCSWINSZ).
pub fn set_window_size(fd: RawFd, size: WindowSize) {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: an ioctl reading a winsize from our stack.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// A terminal's size (TIOCGWINSZ), if `fd` is a terminal with a size.
pub fn window_size(fd: RawFd) -> Option<WindowSize> {
    // SAFETY: an ioctl writing a winsize into our stack variable.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    // A terminal nobody sized (0x0, as `script` leaves one) is as good as none.
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(WindowSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Copies `input` to the terminal's `master` and the master to `output` until the
/// process side of the terminal is closed (every process on it has exited). When a
/// poll is interrupted by a signal, `on_signal` runs (the CLI copies the window size
/// there after SIGWINCH).
pub fn relay(
    master: &OwnedFd,
    input: Option<BorrowedFd>,
    output: BorrowedFd,
    on_signal: &mut dyn FnMut(),
) -> Result<(), RuntimeError> {
    let mut input = input.map(|i| i.as_raw_fd());
    let mut buf = [0u8; 16 * 1024];
    loop {
        let mut fds = vec![libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(fd) = input {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: a valid pollfd array of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                on_signal();
                continue;
            }
            return Err(RuntimeError::io("poll the terminal", e));
        }
        if fds[0].revents != 0 {
            // SAFETY: reading into our buffer from our descriptor.
            let k = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if k <= 0 {
                // EIO: the last process on the terminal has gone.
                return Ok(());
            }
            write_all(output.as_raw_fd(), &buf[..k as usize])?;
        }
        if let (Some(fd), Some(p)) = (input, fds.get(1)) {
            if p.revents != 0 {
                // SAFETY: as above.
                let k = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if k <= 0 {
                    input = None;
                } else {
                    write_all(master.as_raw_fd(), &buf[..k as usize])?;
                }
            }
        }
    }
}

/// The CLI's relay: this process's stdin and stdout with `master`, this terminal in
/// raw mode meanwhile (restored afterwards), its size copied when it changes.
pub fn relay_stdio(master: &OwnedFd) -> Result<(), RuntimeError> {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let _raw = RawMode::enter(stdin.as_fd());
    let _winch = Winch::watch();
    relay(master, Some(stdin.as_fd()), stdout.as_fd(), &mut || {
        if WINCHED.swap(false, std::sync::atomic::Ordering::Relaxed) {
            if let Some(size) = window_size(stdin.as_raw_fd()) {
                set_window_size(master.as_raw_fd(), size);
            }
        }
    })
}

/// This terminal in raw mode (keys go to the container's terminal as typed) until
/// dropped; nothing when stdin is not a terminal.
pub(crate) struct RawMode {
    fd: std::os::fd::RawFd,
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    pub(crate) fn enter(fd: std::os::fd::BorrowedFd) -> RawMode {
        use nix::sys::termios;
        let saved = termios::tcgetattr(fd).ok();
        if let Some(old) = &saved {
            let mut raw = old.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(fd, termios::SetArg::TCSANOW, &raw);
        }
        RawMode {
            fd: fd.as_raw_fd(),
            saved,
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(old) = &self.saved {
            // SAFETY: fd is this process's stdin, open for the whole run.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
            let _ = nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, old);
        }
    }
}

pub(crate) static WINCHED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_winch(_: libc::c_int) {
    WINCHED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGWINCH noted in [`WINCHED`] while alive; it interrupts the relay's poll.
pub(crate) struct Winch(Option<libc::sigaction>);

impl Winch {
    pub(crate) fn watch() -> Winch {
        // SAFETY: installing a handler that only stores to an atomic; both structs
        // are ours and initialised.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_winch as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            let ok = libc::sigaction(libc::SIGWINCH, &action, &mut old) == 0;
            Winch(ok.then_some(old))
        }
    }
}

impl Drop for Winch {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restoring the previous disposition.
            unsafe { libc::sigaction(libc::SIGWINCH, old, std::ptr::null_mut()) };
        }
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) -> Result<(), RuntimeError> {
    while !data.is_empty() {
        // SAFETY: writing from our buffer to a descriptor.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RuntimeError::io("relay the terminal", e));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_additions_replace_the_same_key() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let out = merge_env(&base, &["A=2".to_string(), "B=3".to_string()]);
        assert_eq!(out, ["PATH=/bin", "A=2", "B=3"]);
    }
}

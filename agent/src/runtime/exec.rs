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
//! sent back to the caller, who relays it ([`relay`](super::tty::relay)).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::cgroups::{Cgroup, Hierarchy};
use super::init::{self, ExecFds, Step};
use super::process::{cgroup_path, pipe, plan_process, read_full, ChildGuard};
use super::tty::{console_socket_pair, receive_fd, set_window_size, WindowSize};
use super::{Bundle, ExitReport, RuntimeError, Stdio};

/// The running container to exec into: its id and its first process as recorded
/// when it started (the pid with its start time, so a recycled pid is refused).
#[derive(Debug, Clone, Copy)]
pub struct ExecTarget<'a> {
    pub id: &'a str,
    pub pid: i32,
    pub pid_start: u64,
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
    /// Every capability for this process (Docker's `exec --privileged`): bounding,
    /// permitted and effective, as far as the caller's own bounding set allows; the
    /// rest of the hardening (seccomp, no_new_privs, user) stays the bundle's.
    pub privileged: bool,
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
    if opts.privileged {
        let all = super::spec::grantable_capabilities();
        let mut caps = process.capabilities().clone().unwrap_or_default();
        caps.set_bounding(Some(all.clone()));
        caps.set_permitted(Some(all.clone()));
        caps.set_effective(Some(all));
        process.set_capabilities(Some(caps));
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

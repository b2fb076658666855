//! The container's init: what the cloned child does, in runc's order, between clone
//! and `execve`. Everything it uses is prepared by the parent in an [`InitPlan`]; the
//! child only makes system calls (see the module doc of `runtime` for why). A failed
//! step is reported to the parent as a [`Failure`] record on the error pipe, which
//! the parent turns into a message with [`describe`].

use std::ffi::CString;
use std::os::fd::RawFd;

use libc::{c_int, c_long};
use seccompiler::BpfProgram;

use super::caps::CapMasks;
use super::mounts::{self, errno, MaskError, ProcError, RootfsPlan};
use super::rlimits::Rlimit;

/// Everything the child needs, prepared by the parent.
#[derive(Debug)]
pub(crate) struct InitPlan {
    /// Descriptors to make the container's 0, 1, 2 (`None`: inherit the caller's).
    pub stdio: [Option<RawFd>; 3],
    /// Existing namespaces to join: (fd, CLONE_NEW* type).
    pub joins: Vec<(RawFd, c_int)>,
    /// In a new user namespace whose maps include 0: become its root first.
    pub become_userns_root: bool,
    pub unshare_cgroup: bool,
    pub rootfs: RootfsPlan,
    pub hostname: Option<CString>,
    pub domainname: Option<CString>,
    /// (path under /proc: `sys/net/...`, value)
    pub sysctls: Vec<(CString, Vec<u8>)>,
    pub masked: Vec<CString>,
    pub readonly: Vec<CString>,
    pub oom_score_adj: Option<Vec<u8>>,
    pub rlimits: Vec<Rlimit>,
    pub umask: Option<libc::mode_t>,
    pub no_new_privs: bool,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    pub caps: CapMasks,
    pub seccomp: Vec<BpfProgram>,
    pub cwd: CString,
    /// Where to look for the program: argv[0] itself if it has a slash, else each
    /// directory of the container's PATH joined with it.
    pub exec_paths: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// NULL-terminated pointer arrays into `argv` and `envp`, made by [`InitPlan::seal`]
    /// in the parent (the child sees the same addresses in its copy of memory).
    pub argv_ptrs: Vec<*const libc::c_char>,
    pub envp_ptrs: Vec<*const libc::c_char>,
    /// Kill the container (SIGKILL) when the process that started it dies: the
    /// shim's contract (see `shim`), so that no container outlives its shim unseen.
    pub kill_with_parent: bool,
    /// Run berth's minimal init as PID 1 (the bundle's `berth.init` annotation): it
    /// forks the program, forwards signals to it and reaps every zombie.
    pub init: bool,
    /// With `init`: where this process's argv lives (arg_start, arg_end from
    /// /proc/self/stat), which PID 1 overwrites with `berth-init`, so that the
    /// container's `ps` does not show the caller's command line (a host path).
    pub own_args: Option<(usize, usize)>,
    /// For `exec` with a terminal: the socket on which to send the master of a pty
    /// opened in the container's own /dev/pts (see `exec.rs`).
    pub tty_socket: Option<RawFd>,
    /// The OCI lifecycle's start gate (see [`wait_at_gate`]): the read end of the
    /// container's `exec.fifo`, on which the init waits for `start` before execve.
    pub start_gate: Option<RawFd>,
    /// The terminal's size (rows, cols), set before the program runs: a program that
    /// asks at once (`stty size`) must not see 0x0.
    pub tty_size: (u16, u16),
    /// The only descriptors (beyond 0-2) the child keeps from the caller, sorted: the
    /// ones this plan names, and the pipes of the clone itself ([`InitPlan::keep`]).
    /// Everything else the caller had open (a daemon's log, its store, its listening
    /// sockets) is closed before the child joins or makes any namespace.
    pub keep_fds: Vec<RawFd>,
}

impl InitPlan {
    /// Builds the pointer arrays for execve; call once the plan is complete.
    pub fn seal(&mut self) {
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        self.argv_ptrs = ptrs(&self.argv);
        self.envp_ptrs = ptrs(&self.envp);
    }

    /// Sets [`InitPlan::keep_fds`]: the plan's own descriptors (stdio, namespaces to
    /// join, the terminal socket) and `extra` (the clone's pipes).
    pub fn keep(&mut self, extra: &[RawFd]) {
        let mut fds: Vec<RawFd> = self.stdio.iter().flatten().copied().collect();
        fds.extend(self.joins.iter().map(|(fd, _)| *fd));
        fds.extend(self.tty_socket);
        fds.extend(self.start_gate);
        fds.extend_from_slice(extra);
        fds.retain(|fd| *fd > 2);
        fds.sort_unstable();
        fds.dedup();
        self.keep_fds = fds;
    }
}

/// Which step failed; `index` says which mount, path or limit for the list steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Step {
    Stdio = 1,
    Setns,
    Sync,
    UserRoot,
    UnshareCgroup,
    RootPropagation,
    BindRootfs,
    OpenRootfs,
    Mount,
    Device,
    DevSymlinks,
    PivotRoot,
    ReadonlyRoot,
    Hostname,
    Domainname,
    Sysctl,
    MaskPath,
    ReadonlyPath,
    OomScoreAdj,
    Rlimit,
    NoNewPrivs,
    Seccomp,
    Bounding,
    KeepCaps,
    Setgroups,
    Setgid,
    Setuid,
    Capset,
    Ambient,
    Cwd,
    CwdOutsideRoot,
    CloseFds,
    Exec,
    ParentDeath,
    InitFork,
    Fork,
    Tty,
    Dumpable,
    Setsid,
    /// The container's `/dev/null`, which masked files are bound from, is not the null
    /// device (CVE-2025-31133).
    MaskDevNull,
    /// `/proc` is not the kernel's procfs where a sysctl is written (CVE-2025-52881).
    SysctlNotProcfs,
    /// The same, for `oom_score_adj`.
    OomScoreAdjNotProcfs,
    Gate,
}

const STEPS: &[Step] = &[
    Step::Stdio,
    Step::Setns,
    Step::Sync,
    Step::UserRoot,
    Step::UnshareCgroup,
    Step::RootPropagation,
    Step::BindRootfs,
    Step::OpenRootfs,
    Step::Mount,
    Step::Device,
    Step::DevSymlinks,
    Step::PivotRoot,
    Step::ReadonlyRoot,
    Step::Hostname,
    Step::Domainname,
    Step::Sysctl,
    Step::MaskPath,
    Step::ReadonlyPath,
    Step::OomScoreAdj,
    Step::Rlimit,
    Step::NoNewPrivs,
    Step::Seccomp,
    Step::Bounding,
    Step::KeepCaps,
    Step::Setgroups,
    Step::Setgid,
    Step::Setuid,
    Step::Capset,
    Step::Ambient,
    Step::Cwd,
    Step::CwdOutsideRoot,
    Step::CloseFds,
    Step::Exec,
    Step::ParentDeath,
    Step::InitFork,
    Step::Fork,
    Step::Tty,
    Step::Dumpable,
    Step::Setsid,
    Step::MaskDevNull,
    Step::SysctlNotProcfs,
    Step::OomScoreAdjNotProcfs,
    Step::Gate,
];

/// What the child writes to the error pipe when a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Failure {
    pub step: u32,
    pub index: u32,
    pub errno: i32,
}

pub(crate) const FAILURE_SIZE: usize = std::mem::size_of::<Failure>();

impl Failure {
    pub fn to_bytes(self) -> [u8; FAILURE_SIZE] {
        let mut b = [0u8; FAILURE_SIZE];
        b[0..4].copy_from_slice(&self.step.to_ne_bytes());
        b[4..8].copy_from_slice(&self.index.to_ne_bytes());
        b[8..12].copy_from_slice(&self.errno.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; FAILURE_SIZE]) -> Failure {
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        Failure {
            step: u32::from_ne_bytes(word(0)),
            index: u32::from_ne_bytes(word(4)),
            errno: i32::from_ne_bytes(word(8)),
        }
    }
}

/// A failure as a message naming the step and what it was working on.
pub(crate) fn describe(plan: &InitPlan, f: &Failure) -> String {
    let step = STEPS.iter().find(|s| **s as u32 == f.step);
    let i = f.index as usize;
    let item = |list: &[CString]| {
        list.get(i)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let sysctl = |i: usize| {
        plan.sysctls
            .get(i)
            .map(|s| s.0.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match step {
        Some(Step::Mount) => {
            let m = plan.rootfs.mounts.get(i);
            format!("mount {}", m.map(|m| m.display.as_str()).unwrap_or("?"))
        }
        Some(Step::Device) => format!(
            "create device {}",
            plan.rootfs
                .devices
                .get(i)
                .map(|d| d.display.as_str())
                .unwrap_or("?")
        ),
        Some(Step::Sysctl) => format!("write sysctl /proc/{}", sysctl(i)),
        Some(Step::SysctlNotProcfs) => format!(
            "write sysctl /proc/{}: refused, it is not a file of the kernel's procfs mounted at /proc (a mount, volume or symlink in the way)",
            sysctl(i)
        ),
        // The usual failure: a score below the current one needs CAP_SYS_RESOURCE.
        Some(Step::OomScoreAdj) => format!(
            "write {} to /proc/self/oom_score_adj (lowering the score below the current one needs CAP_SYS_RESOURCE)",
            plan.oom_score_adj
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
        ),
        Some(Step::OomScoreAdjNotProcfs) => "write /proc/self/oom_score_adj: refused, it is not a file of the kernel's procfs mounted at /proc (a mount, volume or symlink in the way)".to_string(),
        Some(Step::MaskPath) => format!("mask {}", item(&plan.masked)),
        Some(Step::MaskDevNull) => format!(
            "mask {}: refused, the container's /dev/null is not the null device (character device 1:3); it must not be a symlink or another file (CVE-2025-31133)",
            item(&plan.masked)
        ),
        Some(Step::ReadonlyPath) => format!("make {} read-only", item(&plan.readonly)),
        Some(Step::Rlimit) => format!("set rlimit {:?}", plan.rlimits.get(i).map(|r| r.resource)),
        Some(Step::Cwd) => format!(
            "cwd {} (it must be a directory inside the container)",
            plan.cwd.to_string_lossy()
        ),
        Some(Step::CwdOutsideRoot) => format!(
            "cwd {} resolves outside the container's root",
            plan.cwd.to_string_lossy()
        ),
        Some(Step::Exec) => format!(
            "exec {}",
            plan.argv
                .first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        Some(Step::Tty) => match i {
            0 => "open /dev/ptmx for the terminal (process.terminal needs devpts mounted at /dev/pts)".to_string(),
            1 => "unlock the terminal's pty".to_string(),
            2 => "open the terminal's pty slave".to_string(),
            4 => "make the pty the controlling terminal".to_string(),
            5 => "make the pty stdin, stdout and stderr".to_string(),
            7 => "give the pty to the process's user".to_string(),
            8 => "set the terminal's size".to_string(),
            _ => "send the terminal to the runtime".to_string(),
        },
        Some(Step::Gate) => "wait for `start` (the container's exec.fifo was closed: its shim is gone)".to_string(),
        Some(Step::BindRootfs) => format!(
            "bind root filesystem {}",
            plan.rootfs.rootfs.to_string_lossy()
        ),
        Some(s) => format!("{s:?}").to_lowercase(),
        None => format!("unknown step {}", f.step),
    }
}

type StepResult = Result<(), Failure>;

fn fail(step: Step, index: usize, errno: c_int) -> Failure {
    Failure {
        step: step as u32,
        index: index as u32,
        errno,
    }
}

/// Turns a -1/0 return into a step result.
fn check(step: Step, index: usize, ret: c_long) -> StepResult {
    if ret < 0 {
        Err(fail(step, index, errno()))
    } else {
        Ok(())
    }
}

fn at(step: Step, index: usize) -> impl Fn(c_int) -> Failure {
    move |e| fail(step, index, e)
}

/// The child's entry point: runs the plan and execs, or reports the failed step on
/// `error_pipe` and exits. Never returns. `parent_end` is the parent's end of the sync
/// pipe, which this copy of the parent's descriptors closes at once: the pipe must
/// hang up when the parent dies.
pub(crate) fn child_main(
    plan: &InitPlan,
    sync_pipe: RawFd,
    parent_end: RawFd,
    error_pipe: RawFd,
) -> ! {
    // SAFETY: closing a descriptor number this copy of the process owns.
    unsafe { libc::close(parent_end) };
    reset_signals();
    let failure = match enter(plan).and_then(|()| run(plan, sync_pipe, error_pipe)) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    let bytes = failure.to_bytes();
    // SAFETY: writing a stack buffer to the error pipe, then exiting without running
    // any of the parent's atexit handlers or destructors.
    unsafe {
        libc::write(error_pipe, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// What every process berth puts into a container does first, before it joins or
/// makes any namespace (runc's nsexec does the same):
/// - it becomes non-dumpable: until its execve, nothing in the container without
///   CAP_SYS_PTRACE can open its `/proc/PID/{exe,fd,mem,environ}` or ptrace it, so
///   neither the caller's program (CVE-2019-5736) nor the descriptors below can be
///   reached through it (CVE-2016-9962). execve makes the container's program
///   dumpable again, as any process is; berth's init as PID 1 never execs and stays
///   non-dumpable;
/// - it closes every descriptor of the caller's but the plan's own
///   ([`InitPlan::keep_fds`]): a daemon's store, log and listening sockets never
///   enter, even for the instants before the close-on-exec sweep.
///
/// The session comes later (`setsid` in the process that execs), so that no caller's
/// controlling terminal can be reopened as `/dev/tty` inside (berth exec -T).
fn enter(plan: &InitPlan) -> StepResult {
    // SAFETY: prctl and close_range with integer arguments; the keep list was
    // prepared by the parent and is only read.
    unsafe {
        check(
            Step::Dumpable,
            0,
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) as c_long,
        )?;
        let mut next: c_int = 3;
        for &fd in &plan.keep_fds {
            if fd > next {
                check(
                    Step::CloseFds,
                    1,
                    libc::syscall(libc::SYS_close_range, next as u32, (fd - 1) as u32, 0u32),
                )?;
            }
            next = next.max(fd + 1);
        }
        check(
            Step::CloseFds,
            1,
            libc::syscall(libc::SYS_close_range, next as u32, u32::MAX, 0u32),
        )?;
    }
    Ok(())
}

/// The caller's blocked signals and ignored SIGPIPE (Rust ignores it, the shim blocks
/// SIGCHLD for its signalfd) would be inherited through execve: the program gets a
/// clean slate, as under Docker.
pub(crate) fn reset_signals() {
    // SAFETY: sigemptyset fills a stack sigset; sigprocmask and sigaction are system
    // calls over stack data; both are async-signal-safe.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut());
    }
}

fn run(
    plan: &InitPlan,
    sync_pipe: RawFd,
    error_pipe: RawFd,
) -> Result<std::convert::Infallible, Failure> {
    // SAFETY: every call in this block is a system call on descriptors this process
    // owns, or on NUL-terminated strings, integer masks and stack buffers prepared by
    // the parent that outlive the call. Nothing allocates.
    unsafe {
        // A session of its own: no controlling terminal of the caller's (`berth runtime
        // run` from a shell) can be reopened inside as /dev/tty. With a terminal, the
        // container's own pty becomes the controlling one (`open_tty`).
        check(Step::Setsid, 0, libc::setsid() as c_long)?;
        for (i, fd) in plan.stdio.iter().enumerate() {
            if let Some(fd) = fd {
                check(Step::Stdio, i, libc::dup2(*fd, i as c_int) as c_long)?;
            }
        }
        for (i, (fd, typ)) in plan.joins.iter().enumerate() {
            check(Step::Setns, i, libc::setns(*fd, *typ) as c_long)?;
        }
        // Wait until the parent has written our id maps and put us in the cgroup.
        let mut byte = 0u8;
        let n = libc::read(sync_pipe, (&mut byte as *mut u8).cast(), 1);
        if n != 1 {
            return Err(fail(
                Step::Sync,
                0,
                if n < 0 { errno() } else { libc::EPIPE },
            ));
        }
        if plan.become_userns_root {
            check(
                Step::UserRoot,
                0,
                libc::syscall(libc::SYS_setresgid, 0, 0, 0),
            )?;
            check(
                Step::UserRoot,
                1,
                libc::syscall(libc::SYS_setresuid, 0, 0, 0),
            )?;
        }
        if plan.unshare_cgroup {
            check(
                Step::UnshareCgroup,
                0,
                libc::unshare(libc::CLONE_NEWCGROUP) as c_long,
            )?;
        }

        // The root filesystem, as runc's prepareRootfs: no mount event may leak back to
        // the host, the rootfs must be a mount point for pivot_root.
        let rp = &plan.rootfs;
        mounts::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            rp.root_propagation,
            std::ptr::null(),
        )
        .map_err(at(Step::RootPropagation, 0))?;
        mounts::mount(
            rp.rootfs.as_ptr(),
            rp.rootfs.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
        .map_err(at(Step::BindRootfs, 0))?;
        // Opened after the bind, so that it names the new mount and not the directory
        // underneath it.
        let root = libc::open(
            rp.rootfs.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        check(Step::OpenRootfs, 0, root as c_long)?;
        for (i, op) in rp.mounts.iter().enumerate() {
            mounts::mount_one(root, op).map_err(at(Step::Mount, i))?;
        }
        for (i, d) in rp.devices.iter().enumerate() {
            mounts::make_device(root, d).map_err(at(Step::Device, i))?;
        }
        if !rp.dev_symlinks.is_empty() {
            mounts::dev_symlinks(root, &rp.dev_symlinks).map_err(at(Step::DevSymlinks, 0))?;
        }
        mounts::pivot_root(root).map_err(at(Step::PivotRoot, 0))?;
        libc::close(root);
        if let Some(flags) = rp.shared_root {
            mounts::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
            .map_err(at(Step::RootPropagation, 1))?;
        }

        if let Some(h) = &plan.hostname {
            check(
                Step::Hostname,
                0,
                libc::sethostname(h.as_ptr(), h.as_bytes().len()) as c_long,
            )?;
        }
        if let Some(d) = &plan.domainname {
            check(
                Step::Domainname,
                0,
                libc::setdomainname(d.as_ptr(), d.as_bytes().len()) as c_long,
            )?;
        }
        // Sysctls before the read-only paths: /proc/sys becomes read-only there.
        // Only into the kernel's procfs: /proc may be a volume (CVE-2025-52881).
        for (i, (path, value)) in plan.sysctls.iter().enumerate() {
            let fd = mounts::open_proc_file(path, true).map_err(|e| match e {
                ProcError::NotProcfs(e) => fail(Step::SysctlNotProcfs, i, e),
                ProcError::Open(e) => fail(Step::Sysctl, i, e),
            })?;
            let n = libc::write(fd, value.as_ptr().cast(), value.len());
            libc::close(fd);
            check(Step::Sysctl, i, n as c_long)?;
        }
        let mut dev_null = -1;
        for (i, p) in plan.masked.iter().enumerate() {
            let masked = mounts::mask_path(p, &mut dev_null);
            if let Err(e) = masked {
                if dev_null >= 0 {
                    libc::close(dev_null);
                }
                return Err(match e {
                    MaskError::DevNull(e) => fail(Step::MaskDevNull, i, e),
                    MaskError::Mount(e) => fail(Step::MaskPath, i, e),
                });
            }
        }
        if dev_null >= 0 {
            libc::close(dev_null);
        }
        for (i, p) in plan.readonly.iter().enumerate() {
            mounts::readonly_path(p).map_err(at(Step::ReadonlyPath, i))?;
        }
        if rp.readonly_root {
            mounts::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
            .map_err(at(Step::ReadonlyRoot, 0))?;
        }
        // A terminal from the container's own /dev/pts, mounted by now.
        if let Some(socket) = plan.tty_socket {
            open_tty(socket, plan.uid, plan.gid, plan.tty_size)?;
        }
    }
    finish(plan, sync_pipe, error_pipe)
}

/// The part of the init that `exec` shares: oom score, rlimits, umask, no_new_privs,
/// identity and capabilities, cwd, descriptors, seccomp, then execve (through berth's
/// init when the plan asks for it).
pub(crate) fn finish(
    plan: &InitPlan,
    sync_pipe: RawFd,
    error_pipe: RawFd,
) -> Result<std::convert::Infallible, Failure> {
    // SAFETY: as in `run`: system calls over data prepared by the parent.
    unsafe {
        if let Some(adj) = &plan.oom_score_adj {
            // Only into the kernel's procfs: /proc may be a volume (CVE-2025-52881).
            let fd = mounts::open_proc_file(c"self/oom_score_adj", false).map_err(|e| match e {
                ProcError::NotProcfs(e) => fail(Step::OomScoreAdjNotProcfs, 0, e),
                ProcError::Open(e) => fail(Step::OomScoreAdj, 0, e),
            })?;
            let n = libc::write(fd, adj.as_ptr().cast(), adj.len());
            libc::close(fd);
            check(Step::OomScoreAdj, 0, n as c_long)?;
        }
        for (i, r) in plan.rlimits.iter().enumerate() {
            let lim = libc::rlimit {
                rlim_cur: r.soft,
                rlim_max: r.hard,
            };
            check(Step::Rlimit, i, libc::setrlimit(r.resource, &lim) as c_long)?;
        }
        if let Some(mask) = plan.umask {
            libc::umask(mask);
        }
        if plan.no_new_privs {
            check(
                Step::NoNewPrivs,
                0,
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as c_long,
            )?;
        } else {
            // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, which the
            // capability step may drop: install it now (as runc does).
            install_seccomp(&plan.seccomp)?;
        }
        set_identity(plan)?;

        // Resolve the cwd inside the root, refusing magic links: /proc/self/fd/N could
        // name a directory of the host that a descriptor still points at.
        let mut how: libc::open_how = std::mem::zeroed();
        how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        let cwd = libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            plan.cwd.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        );
        if cwd < 0 && matches!(errno(), libc::EPERM | libc::ENOSYS) {
            // A seccomp profile older than openat2 (Docker's before 20.10,
            // runtime-tools' default) refuses it, and without no_new_privs the filter
            // is in place already: a plain chdir, as runc's, with the check below
            // (runc's CVE-2024-21626 fix) still refusing a cwd outside the root.
            check(Step::Cwd, 0, libc::chdir(plan.cwd.as_ptr()) as c_long)?;
        } else {
            check(Step::Cwd, 0, cwd)?;
            let r = libc::fchdir(cwd as c_int);
            libc::close(cwd as c_int);
            check(Step::Cwd, 0, r as c_long)?;
        }
        // And check where we are: the kernel reports a directory outside our root as
        // "(unreachable)/...", not an absolute path.
        let mut buf = [0u8; 256];
        let n = libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len());
        if n > 0 && buf[0] != b'/' {
            return Err(fail(Step::CwdOutsideRoot, 0, libc::EPERM));
        }

        // Descriptors beyond stdio must not reach the program: mark them close-on-exec
        // (closing them now would also close the error pipe, which must report a
        // failed execve).
        check(
            Step::CloseFds,
            0,
            close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC),
        )?;
        if plan.kill_with_parent {
            // After the identity change, which clears the parent-death signal. The
            // parent holds the sync pipe's write end until we have exec'd: a hang-up
            // now means it died before the signal was armed.
            check(
                Step::ParentDeath,
                0,
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as c_long,
            )?;
            let mut pfd = libc::pollfd {
                fd: sync_pipe,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 0) > 0 && pfd.revents & libc::POLLHUP != 0 {
                return Err(fail(Step::ParentDeath, 1, libc::ESRCH));
            }
        }
        if let Some(gate) = plan.start_gate {
            wait_at_gate(gate, error_pipe)?;
        }
        if plan.no_new_privs {
            install_seccomp(&plan.seccomp)?;
        }
        if plan.init {
            return init_and_exec(plan, error_pipe);
        }
        exec(plan)
    }
}

/// `close_range(2)`; where a seccomp profile older than it refuses it (runtime-tools'
/// default, Docker's before 20.10: without no_new_privs the filter is in place this
/// early), the same one descriptor at a time, up to the descriptor limit, as runc
/// falls back to.
fn close_range(first: u32, last: u32, flags: libc::c_uint) -> c_long {
    // SAFETY: close_range, getrlimit into a stack struct, and fcntl/close of
    // descriptor numbers: system calls with integer arguments.
    unsafe {
        let r = libc::syscall(libc::SYS_close_range, first, last, flags);
        if r == 0 || !matches!(errno(), libc::EPERM | libc::ENOSYS) {
            return r;
        }
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return -1;
        }
        let end = lim.rlim_max.min(1 << 20) as u32;
        for fd in first..end.min(last.saturating_add(1)) {
            if flags & libc::CLOSE_RANGE_CLOEXEC != 0 {
                libc::fcntl(fd as c_int, libc::F_SETFD, libc::FD_CLOEXEC);
            } else {
                libc::close(fd as c_int);
            }
        }
        0
    }
}

/// Whether a record from the error pipe says the init waits at the start gate.
pub(crate) fn is_at_gate(f: &Failure) -> bool {
    f.step == Step::Gate as u32 && f.errno == 0
}

/// The OCI lifecycle's gate, runc's `exec.fifo`: the container is set up (mounts,
/// identity, cwd, descriptors) but its program not started. The init tells the
/// parent so with a [`Failure`] record of step [`Step::Gate`] and errno 0 (what
/// `create` waits for), then blocks reading `gate`, the read end of a fifo whose
/// other end the parent keeps open; `start` writes one byte to it. EOF means every
/// writer is gone (the parent died before `start`): the init gives up. Placed before
/// the no_new_privs seccomp filter, as runc's, so that no profile has to allow it.
pub(crate) fn wait_at_gate(gate: RawFd, error_pipe: RawFd) -> StepResult {
    let ready = fail(Step::Gate, 0, 0).to_bytes();
    // SAFETY: close_range, write and read of stack buffers on descriptors this
    // process owns.
    unsafe {
        // The wait may be long: it holds nothing of its parent's but these two (a
        // copy of the shim's readiness pipe would keep `create` waiting for EOF).
        let (low, high) = (error_pipe.min(gate) as u32, error_pipe.max(gate) as u32);
        let close = |first: u32, last: u32| {
            if first <= last {
                close_range(first, last, 0);
            }
        };
        close(3, low.wrapping_sub(1));
        close(low + 1, high - 1);
        close(high + 1, u32::MAX);
        let n = libc::write(error_pipe, ready.as_ptr().cast(), ready.len());
        check(Step::Gate, 0, n as c_long)?;
        let mut byte = 0u8;
        loop {
            let n = libc::read(gate, (&mut byte as *mut u8).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return Err(fail(
                Step::Gate,
                1,
                if n < 0 { errno() } else { libc::EPIPE },
            ));
        }
        libc::close(gate);
    }
    Ok(())
}

/// berth's init (like tini, docker-init): PID 1 forks the program and stays, so that
/// signals reach it (a pid namespace's init ignores signals it has no handler for) and
/// orphans are reaped. Runs with the container's identity, capabilities and seccomp
/// filter already in place, allocation-free like the rest of this file.
fn init_and_exec(plan: &InitPlan, error_pipe: RawFd) -> Result<std::convert::Infallible, Failure> {
    // SAFETY: signal-mask calls over stack sigsets, a fork-like raw clone (no
    // CLONE_VM: the child has its own copy of memory), close_range, and `supervise`,
    // which makes only system calls.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut old: libc::sigset_t = std::mem::zeroed();
        // Blocked before the fork: no signal can slip between it and the wait loop.
        libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD as c_long, 0, 0, 0, 0);
        if pid < 0 {
            return Err(fail(Step::InitFork, 0, errno()));
        }
        if pid == 0 {
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            return exec(plan);
        }
        // PID 1 keeps no descriptor beyond stdio: the error pipe must reach EOF when
        // the program execs, and the shim's pipes must not be held open by us.
        let _ = error_pipe;
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        // Our copy of the caller's argv (this process's own memory: no CLONE_VM)
        // becomes "berth-init", and so does the command name.
        if let Some((start, end)) = plan.own_args {
            const NAME: &[u8] = b"berth-init\0";
            if end > start + NAME.len() {
                std::ptr::write_bytes(start as *mut u8, 0, end - start);
                std::ptr::copy_nonoverlapping(NAME.as_ptr(), start as *mut u8, NAME.len());
            }
        }
        libc::prctl(libc::PR_SET_NAME, c"berth-init".as_ptr(), 0, 0, 0);
        supervise(pid as libc::pid_t, &all)
    }
}

/// PID 1's loop: every signal but SIGCHLD goes to the program; SIGCHLD reaps every
/// zombie; when the program is reaped, exit with its status (128 + n if signal n killed
/// it, the shell convention, since PID 1 cannot die of its own signal).
fn supervise(child: libc::pid_t, all: &libc::sigset_t) -> ! {
    loop {
        // SAFETY: sigwaitinfo with a valid set and no info buffer.
        let sig = unsafe { libc::sigwaitinfo(all, std::ptr::null_mut()) };
        if sig < 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // SAFETY: kill with plain integers.
            unsafe { libc::kill(child, sig) };
            continue;
        }
        let mut exit = None;
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into our stack variable.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == child {
                exit = Some(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
        }
        if let Some(code) = exit {
            // SAFETY: ends PID 1; the kernel kills what is left of the namespace.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The descriptors of an `exec`'s child (see `exec.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExecFds {
    /// A pidfd of the container's first process, to join its namespaces through.
    pub pidfd: RawFd,
    /// Which namespaces to join (CLONE_NEW* flags): those that differ from ours.
    pub ns_flags: c_int,
    /// Where the intermediate process writes the pid of the process it forks.
    pub pid_pipe: RawFd,
    pub sync_pipe: RawFd,
    /// The parent's end of the sync pipe, closed here at once.
    pub parent_end: RawFd,
    pub error_pipe: RawFd,
}

/// The entry point of `exec`'s child: join the container's namespaces, fork once more
/// (the pid namespace applies to children only; CLONE_PARENT makes the new process
/// the caller's child, so the caller waits for it), report its pid and exit; the new
/// process sets up its terminal or stdio, waits until the parent has put it in the
/// container's cgroup, then runs the shared end of the init (`finish`). Never returns.
pub(crate) fn exec_child_main(plan: &InitPlan, fds: ExecFds) -> ! {
    // SAFETY: closing a descriptor this copy of the process owns.
    unsafe { libc::close(fds.parent_end) };
    reset_signals();
    let failure = match enter(plan).and_then(|()| exec_child(plan, fds)) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    let bytes = failure.to_bytes();
    // SAFETY: as in `child_main`.
    unsafe {
        libc::write(fds.error_pipe, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

fn exec_child(plan: &InitPlan, fds: ExecFds) -> Result<std::convert::Infallible, Failure> {
    // SAFETY: system calls over descriptors we own and data the parent prepared; the
    // raw clone has no CLONE_VM, so each side has its own copy of memory and stack.
    unsafe {
        if fds.ns_flags != 0 {
            check(
                Step::Setns,
                0,
                libc::setns(fds.pidfd, fds.ns_flags) as c_long,
            )?;
        }
        let pid = libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as c_long,
            0,
            0,
            0,
            0,
        );
        if pid < 0 {
            return Err(fail(Step::Fork, 0, errno()));
        }
        if pid > 0 {
            let pid = pid as i32;
            let bytes = pid.to_ne_bytes();
            libc::write(fds.pid_pipe, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0)
        }
        libc::close(fds.pid_pipe);
        // A session of its own, as the init's: never the caller's terminal.
        check(Step::Setsid, 0, libc::setsid() as c_long)?;
        if let Some(socket) = plan.tty_socket {
            open_tty(socket, plan.uid, plan.gid, plan.tty_size)?;
        } else {
            for (i, fd) in plan.stdio.iter().enumerate() {
                if let Some(fd) = fd {
                    check(Step::Stdio, i, libc::dup2(*fd, i as c_int) as c_long)?;
                }
            }
        }
        let mut byte = 0u8;
        let n = libc::read(fds.sync_pipe, (&mut byte as *mut u8).cast(), 1);
        if n != 1 {
            return Err(fail(
                Step::Sync,
                0,
                if n < 0 { errno() } else { libc::EPIPE },
            ));
        }
        finish(plan, fds.sync_pipe, fds.error_pipe)
    }
}

/// Opens a pty in the container's own /dev/pts (so `tty` names a device the
/// container can see), makes its slave our (a session leader's) controlling terminal
/// and stdio, and sends the master to the caller over `socket` (SCM_RIGHTS).
fn open_tty(
    socket: RawFd,
    uid: libc::uid_t,
    gid: libc::gid_t,
    (rows, cols): (u16, u16),
) -> StepResult {
    // SAFETY: open/ioctl/setsid/dup2/sendmsg over our own descriptors; the message
    // header, iovec and control buffer live on this stack frame for the call.
    unsafe {
        let master = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        check(Step::Tty, 0, master as c_long)?;
        let unlock: c_int = 0;
        check(
            Step::Tty,
            1,
            libc::ioctl(master, libc::TIOCSPTLCK, &unlock) as c_long,
        )?;
        let slave = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
        check(Step::Tty, 2, slave as c_long)?;
        // The terminal belongs to the process's user, as a login's does: programs that
        // reopen it by name (ssh, gpg, script) need that (runc's fixStdioPermissions).
        check(Step::Tty, 7, libc::fchown(slave, uid, gid) as c_long)?;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        check(
            Step::Tty,
            8,
            libc::ioctl(slave, libc::TIOCSWINSZ, &size) as c_long,
        )?;
        // The caller has made us a session leader (Step::Setsid) without a terminal.
        check(
            Step::Tty,
            4,
            libc::ioctl(slave, libc::TIOCSCTTY, 0) as c_long,
        )?;
        for i in 0..3 {
            check(Step::Tty, 5, libc::dup2(slave, i) as c_long)?;
        }
        if slave > 2 {
            libc::close(slave);
        }
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), master);
        check(Step::Tty, 6, libc::sendmsg(socket, &msg, 0) as c_long)?;
        libc::close(master);
        libc::close(socket);
    }
    Ok(())
}

fn install_seccomp(programs: &[BpfProgram]) -> StepResult {
    for (i, program) in programs.iter().enumerate() {
        let prog = libc::sock_fprog {
            len: program.len() as u16,
            // seccompiler's sock_filter is the kernel's struct, like libc's.
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at a BPF program the parent built and validated; the
        // kernel copies it.
        let r = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            )
        };
        check(Step::Seccomp, i, r as c_long)?;
    }
    Ok(())
}

/// Drops the bounding set, switches user and group (keeping capabilities across the
/// uid change), then sets the effective, permitted, inheritable and ambient sets.
fn set_identity(plan: &InitPlan) -> StepResult {
    let caps = &plan.caps;
    // SAFETY: prctl/capset/raw set*id system calls with integer arguments and a
    // capability header/data pair on our stack. Raw syscalls, not glibc's wrappers:
    // those broadcast to every thread glibc believes exists, and the parent's threads
    // do not exist here.
    unsafe {
        for cap in 0..=caps.last_cap {
            if caps.bounding & (1u64 << cap) == 0 {
                let r = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                if r != 0 && errno() != libc::EINVAL {
                    return Err(fail(Step::Bounding, cap as usize, errno()));
                }
            }
        }
        check(
            Step::KeepCaps,
            0,
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) as c_long,
        )?;
        check(
            Step::Setgroups,
            0,
            libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()),
        )?;
        check(
            Step::Setgid,
            0,
            libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid),
        )?;
        check(
            Step::Setuid,
            0,
            libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid),
        )?;
        check(
            Step::KeepCaps,
            1,
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) as c_long,
        )?;

        let mut header = libc_cap_header();
        let low = |m: u64| m as u32;
        let high = |m: u64| (m >> 32) as u32;
        let data = [
            CapData {
                effective: low(caps.effective),
                permitted: low(caps.permitted),
                inheritable: low(caps.inheritable),
            },
            CapData {
                effective: high(caps.effective),
                permitted: high(caps.permitted),
                inheritable: high(caps.inheritable),
            },
        ];
        check(
            Step::Capset,
            0,
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            ),
        )?;
        check(
            Step::Ambient,
            0,
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) as c_long,
        )?;
        for cap in 0..=caps.last_cap {
            if caps.ambient & (1u64 << cap) != 0 {
                let r = libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                );
                check(Step::Ambient, cap as usize, r as c_long)?;
            }
        }
    }
    Ok(())
}

/// `struct __user_cap_header_struct`
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

/// `struct __user_cap_data_struct`
#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn libc_cap_header() -> CapHeader {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    }
}

/// Tries each candidate path, as execvp does: a missing file moves on to the next, a
/// file that exists but cannot run is the error reported.
fn exec(plan: &InitPlan) -> Result<std::convert::Infallible, Failure> {
    if plan.argv_ptrs.last() != Some(&std::ptr::null())
        || plan.envp_ptrs.last() != Some(&std::ptr::null())
    {
        return Err(fail(Step::Exec, 0, libc::EINVAL));
    }
    let mut error = libc::ENOENT;
    for path in &plan.exec_paths {
        // SAFETY: path and both arrays are NUL-terminated and live across the call.
        unsafe {
            libc::execve(
                path.as_ptr(),
                plan.argv_ptrs.as_ptr(),
                plan.envp_ptrs.as_ptr(),
            )
        };
        match errno() {
            libc::ENOENT | libc::ENOTDIR => {}
            e => error = e,
        }
    }
    Err(fail(Step::Exec, 0, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_round_trip_through_bytes() {
        let f = fail(Step::Mount, 3, libc::EPERM);
        assert_eq!(Failure::from_bytes(&f.to_bytes()), f);
    }

    #[test]
    fn every_step_is_listed() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(*s as usize, i + 1);
        }
    }
}

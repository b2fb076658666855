//! The parent side of `run`: plan the init from the bundle, create the cgroup, clone
//! the child into its namespaces, write its id maps, put it in the cgroup, let it go,
//! report how it ended, and clean up.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, Spec};

use super::cgroups::{Cgroup, Hierarchy, Resources};
use super::init::{self, InitPlan};
use super::mounts::{cpath, cstring};
use super::namespaces::{self, NamespacePlan};
use super::{caps, mounts, rlimits, seccomp, Bundle, RuntimeError};

/// Where the container's standard streams go; `None` inherits the caller's.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stdio<'a> {
    pub stdin: Option<BorrowedFd<'a>>,
    pub stdout: Option<BorrowedFd<'a>>,
    pub stderr: Option<BorrowedFd<'a>>,
}

/// How to run a bundle.
#[derive(Debug, Default)]
pub struct RunOptions<'a> {
    /// The cgroup layout; `None` detects this host's.
    pub hierarchy: Option<Hierarchy>,
    pub stdio: Stdio<'a>,
    /// Forward SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2 received by this process to
    /// the container while it runs (the CLI does; a library caller with its own
    /// signal handling does not).
    pub forward_signals: bool,
    /// SIGKILL the container's first process when the thread that called [`spawn`]
    /// dies (`PR_SET_PDEATHSIG`): the shim's choice, so a killed shim never leaves a
    /// container running unseen. Only for single-threaded callers: the kernel counts
    /// the death of the calling *thread*.
    pub kill_with_parent: bool,
    /// The OCI lifecycle (`create`, then `start`): make a fifo at this path, and have
    /// the init wait on it, set up but before execve, until someone writes a byte to
    /// it ([`start_gated`]). [`spawn`] then returns once the init waits there.
    pub start_gate: Option<PathBuf>,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

impl ExitReport {
    /// The shell convention: the exit code, or 128 + the signal.
    pub fn status(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// Checks a container id: it names the cgroup directory, so it must be a plain name.
pub fn check_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_string()))
    }
}

/// Runs the bundle's process as container `id` in the foreground and returns how it
/// ended, like `runc run`: [`spawn`] then [`Container::wait`].
pub fn run(bundle: &Bundle, id: &str, opts: &RunOptions) -> Result<ExitReport, RuntimeError> {
    let mut container = spawn(bundle, id, opts)?;
    let forwarding = opts
        .forward_signals
        .then(|| SignalForwarding::start(container.pid));
    // A container with a terminal is relayed to this process's stdio, as `runc run`
    // does, until every process on the terminal has closed it.
    if let Some(master) = container.take_console() {
        super::tty::relay_stdio(&master)?;
    }
    let report = container.wait();
    drop(forwarding);
    report
}

/// A started container: its first process has exec'd the bundle's program. It is the
/// caller's child; [`Container::wait`] (or [`Container::exited`], for a caller that
/// reaps its children itself) reports how it ended and removes its cgroup. Dropped
/// before that, it kills the container and removes the cgroup.
#[derive(Debug)]
pub struct Container {
    id: String,
    pid: Pid,
    child: ChildGuard,
    cgroup: CgroupGuard,
    console: Option<OwnedFd>,
    /// With a start gate: a write end of the fifo, so that the init's read blocks
    /// (rather than seeing EOF) until `start`; and the error pipe, still open so that
    /// an execve failing after `start` can write its record.
    _gate: Option<(OwnedFd, std::fs::File)>,
}

impl Container {
    /// The container's first process, as seen from the caller.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The master side of the container's terminal, when its spec asks for one
    /// (`process.terminal`): its stdin, stdout and stderr are the slave, opened in the
    /// container's own /dev/pts. Whoever takes it relays it (the shim); dropping it
    /// hangs the terminal up.
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// Waits for the container's first process to end, then reports and cleans up.
    pub fn wait(mut self) -> Result<ExitReport, RuntimeError> {
        let status = self.child.wait()?;
        self.finish(status)
    }

    /// Reports and cleans up after the caller reaped the first process itself (a
    /// subreaper's `waitpid(-1)` loop) and got `status`.
    pub fn exited(mut self, status: WaitStatus) -> Result<ExitReport, RuntimeError> {
        self.child.0 = None;
        self.finish(status)
    }

    fn finish(self, status: WaitStatus) -> Result<ExitReport, RuntimeError> {
        let oom_killed = self
            .cgroup
            .0
            .as_ref()
            .map(|c| c.oom_kills().unwrap_or(0))
            .unwrap_or(0)
            > 0;
        let (code, signal) = match status {
            WaitStatus::Exited(_, code) => (Some(code), None),
            WaitStatus::Signaled(_, sig, _) => (None, Some(sig as i32)),
            _ => (None, None),
        };
        self.cgroup.delete()?;
        Ok(ExitReport {
            code,
            signal,
            oom_killed,
        })
    }
}

/// Starts the bundle's process as container `id` and returns once it has exec'd the
/// program (or with the step that failed, nothing left behind).
pub fn spawn(bundle: &Bundle, id: &str, opts: &RunOptions) -> Result<Container, RuntimeError> {
    check_id(id)?;
    let hierarchy = match &opts.hierarchy {
        Some(h) => h.clone(),
        None => Hierarchy::detect()?,
    };
    let spec = &bundle.spec;
    let linux = spec.linux().clone().unwrap_or_default();
    let ns = namespaces::plan(linux.namespaces().as_deref().unwrap_or_default())?;
    let joins = namespaces::open_joins(&ns, spec.annotations().as_ref())?;
    let mut plan = plan_init(bundle, id, &ns, &hierarchy, opts)?;
    // In a new user namespace the init cannot write its own oom_score_adj: it is not
    // dumpable, so its /proc files belong to the host's root, not to the namespace's.
    // The parent writes it instead, before the init goes on (runc's nsexec does it
    // before the user namespace too).
    let oom_score_adj = if ns.user {
        plan.oom_score_adj.take()
    } else {
        None
    };
    plan.joins = joins.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();
    let process = spec.process().clone().unwrap_or_default();
    // With a terminal, the init opens a pty in the container's own /dev/pts once its
    // mounts are made, and sends the master back over this socket (as runc's console
    // socket).
    let console = if process.terminal().unwrap_or(false) {
        let (parent, child) = super::tty::console_socket_pair()?;
        plan.tty_socket = Some(child.as_raw_fd());
        if let Some(b) = process.console_size() {
            plan.tty_size = (
                b.height().try_into().unwrap_or(u16::MAX),
                b.width().try_into().unwrap_or(u16::MAX),
            );
        }
        Some((parent, child))
    } else {
        None
    };
    let gate = match &opts.start_gate {
        Some(path) => Some(open_gate(path)?),
        None => None,
    };
    plan.start_gate = gate.as_ref().map(|(reader, _)| reader.as_raw_fd());
    plan.seal();

    let resources = match linux.resources() {
        Some(r) => Resources::from_spec(r)?,
        None => Resources::default(),
    };
    let cgroup = CgroupGuard(Some(Cgroup::create(
        &hierarchy,
        &cgroup_path(linux.cgroups_path().as_deref(), id)?,
        &resources,
    )?));

    let (sync_r, sync_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    plan.keep(&[sync_r.as_raw_fd(), err_w.as_raw_fd()]);
    // A stack for the child; clone without CLONE_VM gives it a private copy of the
    // whole address space, this buffer included.
    let mut stack = vec![0u8; 1 << 20];
    let clone_flags = nix::sched::CloneFlags::from_bits_retain(ns.clone_flags);
    let (sync_fd, parent_end, err_fd) = (sync_r.as_raw_fd(), sync_w.as_raw_fd(), err_w.as_raw_fd());
    let plan_ref = &plan;
    // A pid namespace to join is this thread's for its children while it clones.
    let pid_ns = match &ns.pid_join {
        Some(path) => Some(PidNamespaceEntered::enter(
            path,
            spec.annotations().as_ref(),
        )?),
        None => None,
    };
    // SAFETY: the callback runs in the child, which has a copy of this process's memory
    // (no CLONE_VM) and only this thread. It runs `child_main`, which does only
    // async-signal-safe work (system calls over `plan`, prepared above; no allocation,
    // no locks) and ends in execve or _exit, never returning into Rust code that
    // assumes the parent's threads. The 1 MiB stack outlives the call in the child.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(move || init::child_main(plan_ref, sync_fd, parent_end, err_fd)),
            &mut stack,
            clone_flags,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| RuntimeError::io("clone the container's init", e.into()))?;
    drop(pid_ns);
    let mut child = ChildGuard(Some(pid));
    drop(sync_r);
    drop(err_w);
    drop(joins);
    // The child has its copy of the console socket's other end; ours must go, so
    // that a child failing before it sends the master reads as EOF here.
    let console = console.map(|(parent, child_end)| {
        drop(child_end);
        parent
    });
    // Ours of the gate's read end goes too; the write end stays (see `Container`).
    let gate_writer = gate.map(|(reader, writer)| {
        drop(reader);
        writer
    });

    if let Some(adj) = &oom_score_adj {
        let path = format!("/proc/{pid}/oom_score_adj");
        std::fs::write(&path, adj).map_err(|e| RuntimeError::io(path, e))?;
    }
    if ns.user {
        write_id_maps(pid, &linux)?;
    }
    if let Some(cg) = &cgroup.0 {
        cg.add(pid.as_raw())?;
    }
    let mut sync_w = std::fs::File::from(sync_w);
    std::io::Write::write_all(&mut sync_w, &[1])
        .map_err(|e| RuntimeError::io("start the container's init", e))?;

    // EOF means execve succeeded (the pipe is close-on-exec); a record means a step
    // failed. The sync pipe stays open until then: the child reads a hang-up as this
    // process's death (`kill_with_parent`).
    let mut buf = [0u8; init::FAILURE_SIZE];
    let mut err_file = std::fs::File::from(err_r);
    let n = read_full(&mut err_file, &mut buf)?;
    drop(sync_w);
    let mut gate = None;
    if n == init::FAILURE_SIZE && init::is_at_gate(&init::Failure::from_bytes(&buf)) {
        gate = gate_writer.map(|w| (w, err_file));
    } else if n == init::FAILURE_SIZE {
        let failure = init::Failure::from_bytes(&buf);
        child.reap();
        return Err(RuntimeError::Init {
            id: id.to_string(),
            step: init::describe(&plan, &failure),
            errno: nix::errno::Errno::from_raw(failure.errno),
        });
    }
    // The init sent the master before it exec'd, so it is waiting in the socket.
    let console = match console {
        Some(socket) => {
            let master = super::tty::receive_fd(&socket).ok_or_else(|| {
                RuntimeError::io(
                    format!("container {id}: receive its terminal"),
                    std::io::Error::other("the init exec'd without sending its terminal"),
                )
            })?;
            let size = process.console_size().as_ref().map_or(
                super::tty::WindowSize { rows: 24, cols: 80 },
                |b| super::tty::WindowSize {
                    rows: b.height().try_into().unwrap_or(u16::MAX),
                    cols: b.width().try_into().unwrap_or(u16::MAX),
                },
            );
            super::tty::set_window_size(master.as_raw_fd(), size);
            Some(master)
        }
        None => None,
    };
    Ok(Container {
        id: id.to_string(),
        pid,
        child,
        cgroup,
        console,
        _gate: gate,
    })
}

/// This thread's children start in another pid namespace until dropped: `setns` of
/// a pid namespace changes only where the caller's next children go (the caller
/// itself stays), and the drop goes back to the thread's own.
struct PidNamespaceEntered(OwnedFd);

impl PidNamespaceEntered {
    fn enter(
        path: &Path,
        annotations: Option<&std::collections::HashMap<String, String>>,
    ) -> Result<PidNamespaceEntered, RuntimeError> {
        let open = |p: &Path| {
            std::fs::File::open(p)
                .map(OwnedFd::from)
                .map_err(|e| RuntimeError::io(format!("namespace {}", p.display()), e))
        };
        let own = open(Path::new("/proc/thread-self/ns/pid_for_children"))?;
        let target = open(path)?;
        namespaces::check_owner(annotations, libc::CLONE_NEWPID, path)?;
        nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| {
            RuntimeError::io(format!("join pid namespace {}", path.display()), e.into())
        })?;
        Ok(PidNamespaceEntered(own))
    }
}

impl Drop for PidNamespaceEntered {
    fn drop(&mut self) {
        let _ = nix::sched::setns(&self.0, nix::sched::CloneFlags::CLONE_NEWPID);
    }
}

/// Makes the start gate's fifo at `path` (mode 0600) and opens it twice: a blocking
/// read end for the init, and a write end the caller keeps (see [`InitPlan::start_gate`]).
fn open_gate(path: &Path) -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
    let err = |what: &str, e: nix::errno::Errno| {
        RuntimeError::io(format!("{what} {}", path.display()), e.into())
    };
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| err("create the start fifo", e))?;
    let cloexec = OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    // Non-blocking, so that neither open waits for the other side; then the read end
    // is made blocking for the init.
    let reader = open(
        path,
        OFlag::O_RDONLY | cloexec,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| err("open", e))?;
    let writer = open(
        path,
        OFlag::O_WRONLY | cloexec,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| err("open", e))?;
    fcntl(&reader, FcntlArg::F_SETFL(OFlag::empty())).map_err(|e| err("open", e))?;
    Ok((reader, writer))
}

/// `start`: lets a container made with [`RunOptions::start_gate`] run its program,
/// from any process. Returns false if it is not waiting there (never created with a
/// gate, started already, or dead). The fifo is removed before the byte is written,
/// so that of two racing `start`s only one succeeds.
pub fn start_gated(path: &Path) -> Result<bool, RuntimeError> {
    use nix::fcntl::{open, OFlag};
    let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    // ENXIO: no reader, the init is gone; ENOENT: started already.
    let fd = match open(path, flags, nix::sys::stat::Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENXIO) => return Ok(false),
        Err(e) => {
            return Err(RuntimeError::io(
                format!("open {}", path.display()),
                e.into(),
            ))
        }
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(RuntimeError::io(format!("remove {}", path.display()), e)),
    }
    nix::unistd::write(&fd, &[0])
        .map_err(|e| RuntimeError::io(format!("write {}", path.display()), e.into()))?;
    Ok(true)
}

/// The container's cgroup (relative to the hierarchy's roots), as [`spawn`] names it:
/// for `exec` to join it and for cleaning up after a container whose shim died.
pub fn cgroup_of(bundle: &Bundle, id: &str) -> Result<PathBuf, RuntimeError> {
    let linux = bundle.spec.linux().clone().unwrap_or_default();
    cgroup_path(linux.cgroups_path().as_deref(), id)
}

/// Kills what is left in a container's cgroup `rel` (as [`cgroup_of`] named it) and
/// removes it: the cleanup of a container whose [`Container`] handle was lost with
/// its process (a shim killed by hand). A missing cgroup is not an error.
pub fn remove_cgroup(rel: &Path) -> Result<(), RuntimeError> {
    let rel = cgroup_path(Some(rel), "")?;
    Cgroup::open(&Hierarchy::detect()?, &rel)
        .delete()
        .map_err(RuntimeError::from)
}

/// The cgroup path relative to the hierarchy root: the spec's `linux.cgroupsPath`
/// (absolute paths are taken from the root), or `berth/<id>`.
pub(crate) fn cgroup_path(spec_path: Option<&Path>, id: &str) -> Result<PathBuf, RuntimeError> {
    let Some(p) = spec_path else {
        return Ok(Path::new("berth").join(id));
    };
    if p.to_string_lossy().contains(':') {
        return Err(RuntimeError::unsupported(format!(
            "linux.cgroupsPath {}: systemd slice paths are not supported; give a path",
            p.display()
        )));
    }
    let mut rel = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(RuntimeError::unsupported(format!(
                    "linux.cgroupsPath {} must not contain '..'",
                    p.display()
                )))
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(RuntimeError::unsupported(
            "linux.cgroupsPath must not be the root cgroup",
        ));
    }
    Ok(rel)
}

/// The namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNamespace {
    Ipc,
    Net,
    Uts,
}

/// Which of the container's own namespaces scopes `key` (runc's list), if any: a sysctl
/// outside them would change the host.
pub fn sysctl_namespace(key: &str) -> Option<SysctlNamespace> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if key.contains("..") || key.contains('/') {
        return None;
    }
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(SysctlNamespace::Ipc)
    } else if key.starts_with("net.") {
        Some(SysctlNamespace::Net)
    } else if key == "kernel.domainname" {
        Some(SysctlNamespace::Uts)
    } else {
        None
    }
}

/// Sysctls a container may set: those scoped by namespaces this container has of its own.
fn check_sysctl(key: &str, ns: &NamespacePlan) -> Result<(), RuntimeError> {
    let ok = match sysctl_namespace(key) {
        Some(SysctlNamespace::Ipc) => ns.clone_flags & libc::CLONE_NEWIPC != 0,
        Some(SysctlNamespace::Net) => {
            ns.new_net || ns.join.iter().any(|j| j.1 == libc::CLONE_NEWNET)
        }
        Some(SysctlNamespace::Uts) => ns.clone_flags & libc::CLONE_NEWUTS != 0,
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::unsupported(format!(
            "linux.sysctl {key}: not namespaced for this container; setting it would change the host"
        )))
    }
}

/// Prepares everything the child will do.
fn plan_init(
    bundle: &Bundle,
    id: &str,
    ns: &NamespacePlan,
    hierarchy: &Hierarchy,
    opts: &RunOptions,
) -> Result<InitPlan, RuntimeError> {
    let spec: &Spec = &bundle.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| RuntimeError::unsupported("process is missing"))?;
    let linux = spec.linux().clone().unwrap_or_default();
    let mut plan = plan_process(process, &linux, opts.stdio)?;

    let has_uts = ns.clone_flags & libc::CLONE_NEWUTS != 0
        || ns.join.iter().any(|j| j.1 == libc::CLONE_NEWUTS);
    let name = |value: &Option<String>, what: &str| -> Result<Option<CString>, RuntimeError> {
        match value.as_deref().filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(_) if !has_uts => Err(RuntimeError::unsupported(format!(
                "{what} needs a uts namespace"
            ))),
            Some(v) => Ok(Some(cstring(v.as_bytes())?)),
        }
    };

    for (key, value) in linux.sysctl().iter().flatten() {
        check_sysctl(key, ns)?;
        plan.sysctls.push((
            cstring(format!("sys/{}", key.replace('.', "/")).as_bytes())?,
            value.as_bytes().to_vec(),
        ));
    }

    plan.rootfs = mounts::plan(
        &bundle.dir,
        &bundle.rootfs,
        spec.mounts().as_deref().unwrap_or_default(),
        linux.devices().as_deref().unwrap_or_default(),
        linux.rootfs_propagation().as_deref(),
        spec.root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        Some(mounts::CgroupView {
            hierarchy,
            rel: &cgroup_path(linux.cgroups_path().as_deref(), id)?,
            namespace: ns.cgroup,
        }),
    )?;
    let paths = |list: &Option<Vec<String>>| {
        list.iter()
            .flatten()
            .map(|p| cstring(p.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
    };
    let map_has_root = |maps: &Option<Vec<LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .any(|m| m.container_id() == 0 && m.size() > 0)
    };
    plan.become_userns_root =
        ns.user && map_has_root(linux.uid_mappings()) && map_has_root(linux.gid_mappings());
    plan.unshare_cgroup = ns.cgroup;
    plan.hostname = name(spec.hostname(), "hostname")?;
    plan.domainname = name(spec.domainname(), "domainname")?;
    plan.masked = paths(linux.masked_paths())?;
    plan.readonly = paths(linux.readonly_paths())?;
    plan.kill_with_parent = opts.kill_with_parent;
    plan.init = wants_init(spec)?;
    if plan.init {
        plan.own_args = own_args();
    }
    Ok(plan)
}

/// The part of the plan about the process itself (what `exec` needs too): program,
/// environment, cwd, limits, identity, capabilities, seccomp. The container-level
/// fields (mounts, hostname, sysctls, paths) are left empty.
pub(crate) fn plan_process(
    process: &oci_spec::runtime::Process,
    linux: &oci_spec::runtime::Linux,
    stdio: Stdio,
) -> Result<InitPlan, RuntimeError> {
    let args = process.args().clone().unwrap_or_default();
    let argv = args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let env = process.env().clone().unwrap_or_default();
    let envp = env
        .iter()
        .map(|e| cstring(e.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let program = args.first().cloned().unwrap_or_default();
    let exec_paths = if program.contains('/') {
        vec![cstring(program.as_bytes())?]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstring(format!("{d}/{program}").as_bytes()))
            .collect::<Result<Vec<_>, _>>()?
    };

    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(RuntimeError::unsupported(format!(
            "process.cwd {} must be absolute",
            cwd.display()
        )));
    }
    let seccomp = match linux.seccomp() {
        Some(profile) => seccomp::compile(profile)?,
        None => Vec::new(),
    };
    let user = process.user();
    let fd = |f: Option<BorrowedFd>| f.map(|f| f.as_raw_fd());
    Ok(InitPlan {
        stdio: [fd(stdio.stdin), fd(stdio.stdout), fd(stdio.stderr)],
        joins: Vec::new(),
        become_userns_root: false,
        unshare_cgroup: false,
        rootfs: mounts::RootfsPlan::default(),
        hostname: None,
        domainname: None,
        sysctls: Vec::new(),
        masked: Vec::new(),
        readonly: Vec::new(),
        // The spec's score, else Docker's 0: never the caller's own, which the daemon
        // and the shims lower so that the OOM killer takes containers first
        // (`protect_from_oom`), and which a container must not inherit. (When the
        // caller's is 0 already, nothing needs writing.)
        oom_score_adj: process
            .oom_score_adj()
            .or_else(|| (super::oom::own_score() != 0).then_some(0))
            .map(|a| a.to_string().into_bytes()),
        rlimits: rlimits::plan(process.rlimits().as_deref().unwrap_or_default())?,
        umask: user.umask(),
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        caps: caps::masks(process.capabilities().as_ref(), caps::last_cap()?)?,
        seccomp,
        cwd: cpath(cwd)?,
        exec_paths,
        argv,
        envp,
        argv_ptrs: Vec::new(),
        envp_ptrs: Vec::new(),
        kill_with_parent: false,
        init: false,
        own_args: None,
        tty_socket: None,
        start_gate: None,
        tty_size: (24, 80),
        keep_fds: Vec::new(),
    })
}

/// The annotation that asks for berth's init as PID 1 (Compose's `init: true`).
pub const INIT_ANNOTATION: &str = "berth.init";

/// Where this process's argv strings are (fields 48 and 49 of /proc/self/stat).
fn own_args() -> Option<(usize, usize)> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(45);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    (start != 0 && end > start).then_some((start, end))
}

fn wants_init(spec: &Spec) -> Result<bool, RuntimeError> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(INIT_ANNOTATION))
        .map(String::as_str)
    {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(RuntimeError::unsupported(format!(
            "annotations.{INIT_ANNOTATION} is {other:?}: use \"true\" or \"false\""
        ))),
    }
}

fn write_id_maps(pid: Pid, linux: &oci_spec::runtime::Linux) -> Result<(), RuntimeError> {
    let text = |maps: &Option<Vec<LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    for (file, maps) in [
        ("uid_map", linux.uid_mappings()),
        ("gid_map", linux.gid_mappings()),
    ] {
        let path = format!("/proc/{pid}/{file}");
        let content = text(maps);
        if content.is_empty() {
            return Err(RuntimeError::unsupported(format!(
                "a user namespace needs linux.{}",
                if file == "uid_map" {
                    "uidMappings"
                } else {
                    "gidMappings"
                }
            )));
        }
        std::fs::write(&path, content).map_err(|e| RuntimeError::io(path, e))?;
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::io("create a pipe", e.into()))
}

/// Reads until `buf` is full or EOF; returns how much was read.
pub(crate) fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> Result<usize, RuntimeError> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RuntimeError::io("read the init's status", e)),
        }
    }
    Ok(n)
}

/// Deletes the cgroup when dropped (on every early return).
#[derive(Debug)]
struct CgroupGuard(Option<Cgroup>);

impl CgroupGuard {
    fn delete(mut self) -> Result<(), RuntimeError> {
        match self.0.take() {
            Some(cg) => cg.delete().map_err(RuntimeError::from),
            None => Ok(()),
        }
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            let _ = cg.delete();
        }
    }
}

/// Kills and reaps the child when dropped before it was waited for.
#[derive(Debug)]
pub(crate) struct ChildGuard(pub(crate) Option<Pid>);

impl ChildGuard {
    pub(crate) fn wait(&mut self) -> Result<WaitStatus, RuntimeError> {
        let Some(pid) = self.0 else {
            return Err(RuntimeError::io(
                "wait",
                std::io::Error::other("already reaped"),
            ));
        };
        loop {
            match waitpid(pid, None) {
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    self.0 = None;
                    return Ok(status);
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(RuntimeError::io("wait for the container", e.into())),
            }
        }
    }

    pub(crate) fn reap(&mut self) {
        if let Some(pid) = self.0 {
            let _ = self.wait();
            self.0 = None;
            let _ = pid;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// The container's pid for the signal handler (0: none).
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

const FORWARDED: &[libc::c_int] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGUSR1/2 received by this process to
/// a container's first process while alive (the CLI of `runtime run` and of `run`
/// without a terminal: Ctrl-C reaches the container, as with Compose); restores the old
/// handlers on drop.
#[derive(Debug)]
pub struct SignalForwarding {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalForwarding {
    pub fn start(pid: Pid) -> SignalForwarding {
        FORWARD_TO.store(pid.as_raw(), Ordering::Relaxed);
        let mut old = Vec::new();
        for sig in FORWARDED {
            // SAFETY: installing a handler that only calls kill (async-signal-safe);
            // both sigaction structs are ours and fully initialised.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = forward as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(*sig, &action, &mut previous) == 0 {
                    old.push((*sig, previous));
                }
            }
        }
        SignalForwarding { old }
    }
}

impl Drop for SignalForwarding {
    fn drop(&mut self) {
        for (sig, previous) in &self.old {
            // SAFETY: restoring the handler sigaction returned earlier.
            unsafe { libc::sigaction(*sig, previous, std::ptr::null_mut()) };
        }
        FORWARD_TO.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "web-1", "x.y_z", "0abc"] {
            check_id(ok).unwrap();
        }
        for bad in ["", "-a", "a/b", "..", "a b", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cgroup_paths() {
        assert_eq!(cgroup_path(None, "c1").unwrap(), Path::new("berth/c1"));
        assert_eq!(
            cgroup_path(Some(Path::new("/my/c1")), "x").unwrap(),
            Path::new("my/c1")
        );
        assert!(cgroup_path(Some(Path::new("/a/../b")), "x").is_err());
        assert!(cgroup_path(Some(Path::new("system.slice:berth:c1")), "x").is_err());
        assert!(cgroup_path(Some(Path::new("/")), "x").is_err());
    }

    #[test]
    fn exit_status_is_the_shell_convention() {
        let r = |code, signal| {
            ExitReport {
                code,
                signal,
                oom_killed: false,
            }
            .status()
        };
        assert_eq!(r(Some(3), None), 3);
        assert_eq!(r(None, Some(9)), 137);
    }
}

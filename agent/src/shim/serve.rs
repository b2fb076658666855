//! The shim process itself (see the module doc of `shim` for why it looks like this):
//! detach, spawn the container as its own child, pump the container's output into the
//! log, reap, record the state, exit after the container.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::log::{LineBuffer, LogWriter, Stream};
use super::{read_json, start_time, write_json_atomic, ContainerState, Exit, ShimConfig, Status};
use crate::runtime::{self, Bundle, RunOptions, Stdio};

/// The shim's entry point, for `berth-shim DIR` and `berth runtime shim DIR`: `dir`
/// is the container's state directory (with `config.json`), its stdout the readiness
/// pipe, on which it answers `create` once: `ok <pid>` or `error <message>`.
/// Returns the exit status of the exec'd process, which exits at once while the
/// detached shim carries on.
///
/// Why stdout and not a descriptor of its own: `create` can then start the shim with
/// a plain `Command` (no `pre_exec`), which std runs with `posix_spawn` (a vfork-like
/// clone) instead of `fork`ing the whole multi-threaded daemon and copying its page
/// tables for every container.
pub fn main(dir: &Path) -> i32 {
    // SAFETY: fstat of descriptor 1 into a zeroed stat buffer we own.
    let is_pipe = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(libc::STDOUT_FILENO, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
    };
    if !is_pipe {
        return 2;
    }
    // Moved off fd 1 (close-on-exec: the container must not inherit it), and /dev/null
    // put there instead, so that the pipe closes when the answer is sent.
    // SAFETY: F_DUPFD_CLOEXEC duplicates fd 1 (open, checked above) to a new fd that
    // nothing else owns.
    let fd = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return 2;
    }
    // SAFETY: fd is the new descriptor made above, owned here alone.
    let ready = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ready = Ready(Some(File::from(ready)));
    match std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1 from a descriptor we hold; the File closes its own.
        Ok(null) => unsafe {
            libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
        },
        Err(e) => {
            ready.send(&format!("error open /dev/null: {e}"));
            return 1;
        }
    }
    let config: ShimConfig = match read_json(&dir.join("config.json")) {
        Ok(c) => c,
        Err(e) => {
            ready.send(&format!("error {e}"));
            return 1;
        }
    };
    if let Some(fd) = config.stdout_fd {
        super::oci::take_stdout(fd);
    }

    // Detach: fork (the exec'd process exits, so the caller reaps it at once), new
    // session, fork again (the daemon is no session leader and can never get a
    // controlling terminal). The caller's death, its process group or its session
    // ending cannot reach the daemon.
    // SAFETY: this process is single-threaded (the shim starts no threads), so the
    // child may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            ready.send(&format!("error fork the shim: {e}"));
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
    // SAFETY: still single-threaded, as above.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            // SAFETY: _exit ends the middle process without running anything else;
            // nothing of it needs flushing.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            ready.send(&format!("error fork the shim: {e}"));
            // SAFETY: as above.
            unsafe { libc::_exit(1) }
        }
    }
    let _ = std::env::set_current_dir("/");
    leave_callers_cgroup();
    // Best effort (it needs CAP_SYS_RESOURCE): the OOM killer takes the container, whose
    // own score the runtime sets, before its shim.
    let _ = runtime::protect_from_oom(runtime::SHIM_OOM_SCORE_ADJ);
    let shim_cgroup = enter_shim_cgroup(&config.id);
    let code = serve(dir, &config, &mut ready);
    if let Some(cg) = shim_cgroup {
        leave_callers_cgroup();
        let _ = cg.delete();
    }
    // SAFETY: the daemon is done; _exit skips nothing it needs.
    unsafe { libc::_exit(code) }
}

/// The shim's own CPU budget: half a CPU (of a 100 ms period). Its work is the
/// container's output (a JSON line per line written): a container flooding stdout
/// is slowed by its full pipe, not paid for by the host.
const SHIM_CPU_QUOTA: i64 = 50_000;

/// The cgroup each shim runs in, `berth-shim/<id>`, next to (not inside) the
/// container's: in the container's own, the shim would be frozen by `pause`, counted
/// in its pids limit and charged its memory, and on v2 killed with it. Best effort:
/// a host that refuses leaves the shim in the root cgroups. The container itself is
/// moved to its own cgroup before its init runs anything (`runtime::spawn`).
fn enter_shim_cgroup(id: &str) -> Option<runtime::cgroups::Cgroup> {
    use runtime::cgroups::devices::{DeviceKind, DeviceRule, ACC_MKNOD, ACC_READ, ACC_WRITE};
    use runtime::cgroups::{Cgroup, Hierarchy, Resources};
    let resources = Resources {
        cpu_quota: Some(SHIM_CPU_QUOTA),
        cpu_period: Some(100_000),
        // The shim uses devices as the host does (its terminals, /dev/null).
        devices: vec![DeviceRule {
            allow: true,
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: ACC_MKNOD | ACC_READ | ACC_WRITE,
        }],
        ..Resources::default()
    };
    let cgroup = Cgroup::create(
        &Hierarchy::detect().ok()?,
        &shim_cgroup_path(id),
        &resources,
    )
    .ok()?;
    match cgroup.add(std::process::id() as i32) {
        Ok(()) => Some(cgroup),
        Err(_) => {
            let _ = cgroup.delete();
            None
        }
    }
}

/// Where the shim of container `id` accounts its CPU.
pub(super) fn shim_cgroup_path(id: &str) -> std::path::PathBuf {
    Path::new("berth-shim").join(id)
}

/// The readiness pipe, answered once.
struct Ready(Option<File>);

impl Ready {
    fn send(&mut self, message: &str) {
        if let Some(mut f) = self.0.take() {
            // The caller may be gone (killed): the container goes on regardless.
            let _ = f.write_all(message.as_bytes());
        }
    }
}

/// Moves this process to the root cgroup of every hierarchy (v1 controllers and v2),
/// so that killing the caller's cgroup (a systemd unit being stopped) spares it.
/// Best effort: a hierarchy that refuses keeps it where it was.
fn leave_callers_cgroup() {
    let pid = std::process::id().to_string();
    let mut roots = vec![
        std::path::PathBuf::from("/sys/fs/cgroup"),
        std::path::PathBuf::from("/sys/fs/cgroup/unified"),
    ];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    for root in roots {
        let procs = root.join("cgroup.procs");
        if procs.is_file() {
            let _ = std::fs::write(procs, &pid);
        }
    }
}

fn serve(dir: &Path, config: &ShimConfig, ready: &mut Ready) -> i32 {
    let shim_pid = std::process::id() as i32;
    let mut state = ContainerState {
        id: config.id.clone(),
        bundle: config.bundle.clone(),
        status: Status::Created,
        shim_pid,
        shim_start: start_time(shim_pid).unwrap_or(0),
        pid: None,
        pid_start: 0,
        cgroup: None,
        exit: None,
        error: None,
    };
    let state_path = dir.join("state.json");
    let fail = |state: &mut ContainerState, ready: &mut Ready, message: String| {
        state.status = Status::Stopped;
        state.error = Some(message.clone());
        let _ = write_json_atomic(&state_path, state);
        ready.send(&format!("error {message}"));
        1
    };
    if let Err(e) = write_json_atomic(&state_path, &state) {
        return fail(&mut state, ready, e.to_string());
    }
    let mut log = match LogWriter::open(dir, config.log_max_size, config.log_max_files) {
        Ok(l) => l,
        Err(e) => return fail(&mut state, ready, format!("open the log: {e}")),
    };
    // Orphans of a container without its own pid namespace become ours to reap, not
    // the host init's.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let sigchld = match ChildSignals::open() {
        Ok(s) => s,
        Err(e) => return fail(&mut state, ready, format!("watch for SIGCHLD: {e}")),
    };
    let pipes = (|| -> nix::Result<_> {
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        Ok((
            nix::unistd::pipe2(flags)?,
            nix::unistd::pipe2(flags)?,
            nix::unistd::pipe2(flags)?,
        ))
    })();
    let ((out_r, out_w), (err_r, err_w), (in_r, in_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return fail(&mut state, ready, format!("create pipes: {e}")),
    };
    let bundle = match Bundle::load(&config.bundle) {
        Ok(b) => b,
        Err(e) => return fail(&mut state, ready, e.to_string()),
    };
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    // A client may attach to a terminal, or to an open stdin (`attach.rs`).
    let listener = if terminal || config.stdin {
        let path = super::attach::socket_path(dir);
        let _ = std::fs::remove_file(&path);
        match super::attach::with_short_path(dir, |p| std::os::unix::net::UnixListener::bind(p)) {
            Ok(l) => {
                let _ = l.set_nonblocking(true);
                Some(l)
            }
            Err(e) => {
                return fail(
                    &mut state,
                    ready,
                    format!("listen on {}: {e}", path.display()),
                )
            }
        }
    } else {
        None
    };

    // The container's init is this process's own child.
    let started = (|| {
        let null = File::open("/dev/null").map_err(|e| runtime::RuntimeError::Io {
            context: "open /dev/null".into(),
            source: e,
        })?;
        let cgroup = runtime::cgroup_of(&bundle, &config.id)?;
        let opts = RunOptions {
            stdio: Stdio {
                stdin: Some(if config.stdin {
                    in_r.as_fd()
                } else {
                    null.as_fd()
                }),
                stdout: Some(out_w.as_fd()),
                stderr: Some(err_w.as_fd()),
            },
            kill_with_parent: true,
            ..RunOptions::default()
        };
        // The OCI lifecycle: the caller's stdio (the shim's own), and a start gate.
        let opts = if config.oci {
            RunOptions {
                stdio: Stdio::default(),
                start_gate: Some(dir.join(super::START_FIFO)),
                ..opts
            }
        } else {
            opts
        };
        runtime::spawn(&bundle, &config.id, &opts).map(|c| (c, cgroup))
    })();
    drop((out_w, err_w, in_r));
    drop(bundle);
    // The container's stdin, while it stays open: the pipe, or the terminal.
    let stdin = (config.stdin && !terminal).then(|| File::from(in_w));
    let (mut container, console) = match started {
        Ok((mut c, cgroup)) => {
            let mut console = c.take_console().map(File::from);
            // The OCI lifecycle hands the terminal to whoever asked for it.
            if let (true, Some(path)) = (config.oci, config.console_socket.as_ref()) {
                if let Some(master) = console.take() {
                    if let Err(e) = super::oci::send_console(path, master) {
                        return fail(&mut state, ready, e);
                    }
                }
            }
            state.status = if config.oci {
                Status::Created
            } else {
                Status::Running
            };
            if config.oci {
                // The container has its copies of the caller's stdio: the caller's
                // readers see EOF when the container is done, not when the shim is.
                super::oci::release_stdio();
            }
            state.pid = Some(c.pid());
            state.pid_start = start_time(c.pid()).unwrap_or(0);
            state.cgroup = Some(cgroup);
            (Some(c), console)
        }
        Err(e) => return fail(&mut state, ready, e.to_string()),
    };
    let mut log_error = None;
    if let Err(e) = write_json_atomic(&state_path, &state) {
        log_error.get_or_insert_with(|| e.to_string());
    }
    ready.send(&format!("ok {}\n", state.pid.unwrap_or(0)));
    // Starting the container (bundle, seccomp programs, plan, the clone stack) used
    // most of the heap the shim will ever use: give it back to the system for the
    // container's lifetime.
    // SAFETY: malloc_trim only releases free memory of the allocator.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };

    // A terminal is one stream, read from its master; else the two pipes.
    let mut streams = match console.as_ref().map(File::try_clone) {
        // The OCI lifecycle's container writes to the caller's stdio itself.
        _ if config.oci => [None, None],
        Some(Ok(master)) => [Some((master, Stream::Stdout, LineBuffer::default())), None],
        _ => [
            Some((File::from(out_r), Stream::Stdout, LineBuffer::default())),
            Some((File::from(err_r), Stream::Stderr, LineBuffer::default())),
        ],
    };
    // Input to the container: the stdin pipe, or the terminal (whose master the output
    // side reads too). Non-blocking, queued: a container that does not read its input
    // must never stop this loop from reading its output.
    let input = stdin.or_else(|| {
        console
            .as_ref()
            .filter(|_| config.stdin)
            .and_then(|c| c.try_clone().ok())
    });
    for f in input.iter().chain(console.iter()) {
        set_nonblocking(f.as_raw_fd());
    }
    let mut attached = Attached::new(
        config.stdin,
        config.stdin_once,
        input,
        console.as_ref().map(|c| c.as_raw_fd()),
    );
    let mut report = None;
    let mut buf = vec![0u8; 64 * 1024];
    // Until the container has exited and both pipes are closed (a process it left
    // behind may hold them a little longer; its cgroup's removal kills it).
    while container.is_some() || streams.iter().any(Option::is_some) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut watch = |fd: i32, events: libc::c_short| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            })
        };
        // A client that reads slower than the container writes slows the container
        // down (its pipe fills), as `docker attach` does; the log waits with it.
        if !attached.backlogged() {
            for s in streams.iter().flatten() {
                watch(s.0.as_raw_fd(), libc::POLLIN);
            }
        }
        if container.is_some() {
            watch(sigchld.fd.as_raw_fd(), libc::POLLIN);
        }
        if let Some(l) = listener.as_ref() {
            watch(l.as_raw_fd(), libc::POLLIN);
        }
        if let Some((fd, events)) = attached.client_events() {
            watch(fd, events);
        }
        if let Some(fd) = attached.input_waiting() {
            watch(fd, libc::POLLOUT);
        }
        // SAFETY: fds is a valid array of pollfd of the given length, alive for the call.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                attached.poll_timeout(),
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
        let revents = |fd: i32| fds.iter().find(|p| p.fd == fd).map_or(0, |p| p.revents);
        let ready_fds: Vec<i32> = fds
            .iter()
            .filter(|p| p.revents != 0)
            .map(|p| p.fd)
            .collect();
        for slot in streams.iter_mut() {
            let Some((file, stream, lines)) = slot else {
                continue;
            };
            if !ready_fds.contains(&file.as_raw_fd()) {
                continue;
            }
            let (stream, chunk) = match file.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(0) | Err(_) => {
                    let rest = lines.finish();
                    let stream = *stream;
                    *slot = None;
                    (stream, rest.into_iter().collect::<Vec<_>>())
                }
                Ok(k) => {
                    attached.output(*stream, &buf[..k]);
                    (*stream, lines.push(&buf[..k]))
                }
            };
            for line in chunk {
                if let Err(e) = log.write(stream, &line) {
                    log_error.get_or_insert_with(|| format!("write the log: {e}"));
                }
            }
        }
        if let Some(l) = listener.as_ref() {
            if ready_fds.contains(&l.as_raw_fd()) {
                if let Ok((client, _)) = l.accept() {
                    attached.attach(client);
                }
            }
        }
        if let Some((fd, _)) = attached.client_events() {
            let ev = revents(fd);
            if ev & libc::POLLOUT != 0 {
                attached.flush_out();
            }
            if ev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                attached.read_client(&mut buf);
            }
        }
        if let Some(fd) = attached.input_waiting() {
            if revents(fd) != 0 {
                attached.flush_in();
            }
        }
        if ready_fds.contains(&sigchld.fd.as_raw_fd()) {
            sigchld.drain();
            // Reap every zombie: the container's init, and orphans adopted as subreaper.
            let pid = container.as_ref().map(|c| c.pid());
            while let Ok(status) =
                nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            {
                if status == nix::sys::wait::WaitStatus::StillAlive {
                    break;
                }
                if status.pid().map(|p| p.as_raw()) == pid {
                    if let Some(c) = container.take() {
                        report = Some(c.exited(status));
                    }
                }
            }
        }
    }
    if let Some(c) = container.take() {
        report = Some(c.wait());
    }
    // The attached client gets the rest and the end of the stream; nobody can attach
    // any more.
    attached.finish();
    if listener.is_some() {
        let _ = std::fs::remove_file(super::attach::socket_path(dir));
    }

    state.status = Status::Stopped;
    match report {
        Some(Ok(r)) => {
            state.exit = Some(Exit::from(r));
            state.error = log_error;
        }
        Some(Err(e)) => state.error = Some(format!("clean up after the container: {e}")),
        None => state.error = Some("the shim lost track of the container".into()),
    }
    match write_json_atomic(&state_path, &state) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Output queued for a slow client before the container's output is paused.
const OUT_LIMIT: usize = 1024 * 1024;
/// Input queued for a container that does not read before the client is not read.
const IN_LIMIT: usize = 256 * 1024;
/// How long a one-off's output waits for its caller to attach before the oldest of it
/// is dropped.
const FIRST_CLIENT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The attached client, if any (`attach.rs`), the queues both ways, and what the
/// container wrote before the first client came. Every descriptor here is
/// non-blocking: the shim's one loop waits on nothing but `poll`.
struct Attached {
    client: Option<std::os::unix::net::UnixStream>,
    decoder: super::attach::Decoder,
    /// Frames for the client not written yet.
    out: Vec<u8>,
    /// `Some` until the first client attaches, for containers with an open stdin: the
    /// newest frames, at most `REPLAY_LIMIT` bytes.
    replay: Option<std::collections::VecDeque<Vec<u8>>>,
    /// Where input goes (the stdin pipe, or the terminal's master) while it is open.
    input: Option<File>,
    pending_in: Vec<u8>,
    /// Close the stdin pipe once `pending_in` is written.
    close_input: bool,
    /// The terminal, for window sizes.
    terminal: Option<i32>,
    /// Close stdin when the first client goes (a one-off's: `berth run`).
    stdin_once: bool,
    started: std::time::Instant,
}

impl Attached {
    fn new(
        interactive: bool,
        stdin_once: bool,
        input: Option<File>,
        terminal: Option<i32>,
    ) -> Attached {
        Attached {
            client: None,
            decoder: super::attach::Decoder::default(),
            out: Vec::new(),
            replay: interactive.then(std::collections::VecDeque::new),
            input,
            pending_in: Vec::new(),
            close_input: false,
            terminal,
            stdin_once,
            started: std::time::Instant::now(),
        }
    }

    /// A new client replaces the old one and gets what it missed before anyone came.
    fn attach(&mut self, client: std::os::unix::net::UnixStream) {
        let _ = client.set_nonblocking(true);
        self.client = Some(client);
        self.decoder = super::attach::Decoder::default();
        self.out.clear();
        if let Some(replay) = self.replay.take() {
            for frame in replay {
                self.out.extend_from_slice(&frame);
            }
        }
        self.flush_out();
    }

    /// The client went away (or failed): its queue goes; a one-off's stdin closes.
    fn detach(&mut self) {
        self.client = None;
        self.out.clear();
        if self.stdin_once && self.terminal.is_none() {
            self.close_input = true;
            self.flush_in();
        }
    }

    /// What to poll the client for, if one is attached.
    fn client_events(&self) -> Option<(i32, libc::c_short)> {
        let c = self.client.as_ref()?;
        let mut events = 0;
        if self.pending_in.len() < IN_LIMIT {
            events |= libc::POLLIN;
        }
        if !self.out.is_empty() {
            events |= libc::POLLOUT;
        }
        Some((c.as_raw_fd(), events))
    }

    /// The input descriptor, while input waits for the container to read it.
    fn input_waiting(&self) -> Option<i32> {
        self.input
            .as_ref()
            .filter(|_| !self.pending_in.is_empty())
            .map(|f| f.as_raw_fd())
    }

    /// Whether to stop reading the container's output for now: a slow client's queue
    /// is full, or a one-off's first client has not come yet and the replay is full
    /// (its caller attaches right after the start: its output waits for it, up to
    /// [`FIRST_CLIENT_WAIT`], rather than being cut).
    fn backlogged(&self) -> bool {
        if self.out.len() >= OUT_LIMIT {
            return true;
        }
        match &self.replay {
            Some(replay) if self.stdin_once => {
                self.started.elapsed() < FIRST_CLIENT_WAIT
                    && replay.iter().map(Vec::len).sum::<usize>() >= super::attach::REPLAY_LIMIT
            }
            _ => false,
        }
    }

    /// How long `poll` may wait: a paused one-off must notice when its wait is over.
    fn poll_timeout(&self) -> libc::c_int {
        if self.backlogged() && self.client.is_none() {
            200
        } else {
            -1
        }
    }

    /// Output of the container: to the client, or kept for the first one.
    fn output(&mut self, stream: Stream, data: &[u8]) {
        let kind = match stream {
            Stream::Stdout => super::attach::STDOUT,
            Stream::Stderr => super::attach::STDERR,
        };
        let frame = super::attach::frame(kind, data);
        if self.client.is_some() {
            self.out.extend_from_slice(&frame);
            self.flush_out();
        } else if let Some(replay) = self.replay.as_mut() {
            replay.push_back(frame);
            // A one-off waiting for its caller keeps all of it (reading pauses at the
            // limit, so it passes it by one read at most); anything else keeps the
            // newest.
            if self.stdin_once && self.started.elapsed() < FIRST_CLIENT_WAIT {
                return;
            }
            let mut total: usize = replay.iter().map(Vec::len).sum();
            while total > super::attach::REPLAY_LIMIT {
                total -= replay.pop_front().map_or(0, |f| f.len());
            }
        }
    }

    /// Writes what the client can take now.
    fn flush_out(&mut self) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        while !self.out.is_empty() {
            match c.write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return self.detach(),
            }
        }
    }

    /// Reads the client's frames: input is queued for the container.
    fn read_client(&mut self, buf: &mut [u8]) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let frames = match client.read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Ok(0) | Err(_) => return self.detach(),
            Ok(k) => self.decoder.push(&buf[..k]),
        };
        let Ok(frames) = frames else {
            return self.detach();
        };
        for (kind, data) in frames {
            match kind {
                super::attach::STDIN if self.input.is_some() && !self.close_input => {
                    self.pending_in.extend_from_slice(&data)
                }
                super::attach::RESIZE => {
                    if let (Some(master), Some(size)) =
                        (self.terminal, super::attach::parse_resize(&data))
                    {
                        runtime::set_window_size(master, size);
                    }
                }
                // A terminal's input does not end: its programs see ^D as typed.
                super::attach::CLOSE_STDIN if self.terminal.is_none() => self.close_input = true,
                _ => {}
            }
        }
        self.flush_in();
    }

    /// Writes what the container's input can take now.
    fn flush_in(&mut self) {
        while let (Some(input), false) = (self.input.as_mut(), self.pending_in.is_empty()) {
            match input.write(&self.pending_in) {
                Ok(n) => {
                    self.pending_in.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The container closed its stdin: what is queued has nowhere to go.
                Err(_) => {
                    self.pending_in.clear();
                    self.input = None;
                }
            }
        }
        if self.close_input && self.pending_in.is_empty() {
            self.input = None;
        }
    }

    /// The container has exited: the client gets what is queued and an end frame
    /// (within a bound: a client that does not read is left behind).
    fn finish(mut self) {
        let Some(mut c) = self.client.take() else {
            return;
        };
        self.out
            .extend_from_slice(&super::attach::frame(super::attach::END, &[]));
        let _ = c.set_nonblocking(false);
        let _ = c.set_write_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = c.write_all(&self.out);
    }
}

/// SIGCHLD as a readable descriptor (a signalfd), so the poll loop sees a child's
/// exit like any other event. SIGCHLD is blocked in this process; the runtime gives
/// the container a clean signal mask.
struct ChildSignals {
    fd: OwnedFd,
}

impl ChildSignals {
    fn open() -> std::io::Result<ChildSignals> {
        // SAFETY: sigset calls on a stack set; sigprocmask and signalfd are system
        // calls; the returned descriptor is checked and then owned.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(ChildSignals {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    /// Consumes the pending notifications (several exits may make one).
    fn drain(&self) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        // SAFETY: reading into a stack buffer of the right size from our descriptor.
        while unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {
        }
    }
}

//! The shim process itself (see the module doc of `shim` for why it looks like this):
//! detach, fork the runner, pump the container's output into the log, record the
//! state, exit after the container.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::log::{LineBuffer, LogWriter, Stream};
use super::{read_json, start_time, write_json_atomic, ContainerState, Exit, ShimConfig, Status};
use crate::runtime::{self, Bundle, RunOptions, Stdio};

/// The fd on which the shim answers `create`: `ok <pid>` or `error <message>`.
pub(crate) const READY_FD: i32 = 3;

/// The shim's entry point, for `berth-shim DIR` and `berth runtime shim DIR`: `dir`
/// is the container's state directory (with `config.json`), fd 3 the readiness pipe.
/// Returns the exit status of the exec'd process, which exits at once while the
/// detached shim carries on.
pub fn main(dir: &Path) -> i32 {
    // SAFETY: fcntl on a descriptor number; F_GETFD only asks whether it is open.
    if unsafe { libc::fcntl(READY_FD, libc::F_GETFD) } < 0 {
        return 2;
    }
    // SAFETY: fd 3 is open (checked above) and was handed to this process by
    // `create` for it alone; nothing else in this process uses it.
    let ready = unsafe { OwnedFd::from_raw_fd(READY_FD) };
    let mut ready = Ready(Some(File::from(ready)));
    // The container and the runner must not inherit it.
    // SAFETY: fcntl on fd 3, which this process owns (above).
    unsafe { libc::fcntl(READY_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let config: ShimConfig = match read_json(&dir.join("config.json")) {
        Ok(c) => c,
        Err(e) => {
            ready.send(&format!("error {e}"));
            return 1;
        }
    };

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
    let code = serve(dir, &config, &mut ready);
    // SAFETY: the daemon is done; _exit skips nothing it needs.
    unsafe { libc::_exit(code) }
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
    let pipes = (|| -> nix::Result<_> {
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        Ok((
            nix::unistd::pipe2(flags)?,
            nix::unistd::pipe2(flags)?,
            nix::unistd::pipe2(flags)?,
        ))
    })();
    let ((out_r, out_w), (err_r, err_w), (res_r, res_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return fail(&mut state, ready, format!("create pipes: {e}")),
    };

    // SAFETY: single-threaded; the child runs ordinary code and ends in _exit.
    let runner = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop((out_r, err_r, res_r));
            ready.0 = None;
            let code = run_container(config, out_w, err_w, res_w);
            // SAFETY: the runner is done; its report is written.
            unsafe { libc::_exit(code) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
        Err(e) => return fail(&mut state, ready, format!("fork the runner: {e}")),
    };
    drop((out_w, err_w, res_w));

    let own_exe = exe_id(shim_pid);
    let mut streams = [
        Some((File::from(out_r), Stream::Stdout, LineBuffer::default())),
        Some((File::from(err_r), Stream::Stderr, LineBuffer::default())),
    ];
    let mut result_pipe = Some(File::from(res_r));
    let mut result = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut log_error = None;
    while streams.iter().any(Option::is_some) || result_pipe.is_some() {
        let mut fds: Vec<libc::pollfd> = streams
            .iter()
            .flatten()
            .map(|s| s.0.as_raw_fd())
            .chain(result_pipe.iter().map(|f| f.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Until the container is seen running, look at it every 20 ms.
        let timeout = if state.status == Status::Created {
            20
        } else {
            -1
        };
        // SAFETY: fds is a valid array of pollfd of the given length, alive for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
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
                Ok(0) | Err(_) => {
                    let rest = lines.finish();
                    let stream = *stream;
                    *slot = None;
                    (stream, rest.into_iter().collect::<Vec<_>>())
                }
                Ok(k) => (*stream, lines.push(&buf[..k])),
            };
            for line in chunk {
                if let Err(e) = log.write(stream, &line) {
                    log_error.get_or_insert_with(|| format!("write the log: {e}"));
                }
            }
        }
        if let Some(f) = result_pipe.as_mut() {
            if ready_fds.contains(&f.as_raw_fd()) {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => result_pipe = None,
                    Ok(k) => result.push_str(&String::from_utf8_lossy(&buf[..k])),
                }
            }
        }
        if state.status == Status::Created {
            if let Some(pid) = started_container(runner.as_raw(), own_exe) {
                state.status = Status::Running;
                state.pid = Some(pid);
                state.pid_start = start_time(pid).unwrap_or(0);
                if let Err(e) = write_json_atomic(&state_path, &state) {
                    log_error.get_or_insert_with(|| e.to_string());
                }
                ready.send(&format!("ok {pid}\n"));
            }
        }
    }
    let _ = nix::sys::wait::waitpid(runner, None);

    if let Some(message) = result.strip_prefix("error ") {
        return fail(&mut state, ready, message.trim_end().to_string());
    }
    state.status = Status::Stopped;
    state.exit = parse_exit(&result);
    state.error = match state.exit {
        Some(_) => log_error,
        None => Some("the runner died without reporting how the container ended".into()),
    };
    if let Err(e) = write_json_atomic(&state_path, &state) {
        ready.send(&format!("error {e}"));
        return 1;
    }
    // A container that exited before it was seen running still ran.
    ready.send(&format!("ok {}\n", state.pid.unwrap_or(0)));
    0
}

/// The runner: runs the container in the foreground and writes how it ended.
fn run_container(config: &ShimConfig, out: OwnedFd, err: OwnedFd, result: OwnedFd) -> i32 {
    // Rust ignores SIGPIPE; the container must get the default, as under Docker.
    // SAFETY: setting a signal disposition to its default; no handler is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let mut result = File::from(result);
    let outcome = (|| {
        let stdin = File::open("/dev/null").map_err(|e| runtime::RuntimeError::Io {
            context: "open /dev/null".into(),
            source: e,
        })?;
        let bundle = Bundle::load(&config.bundle)?;
        let opts = RunOptions {
            stdio: Stdio {
                stdin: Some(stdin.as_fd()),
                stdout: Some(out.as_fd()),
                stderr: Some(err.as_fd()),
            },
            ..RunOptions::default()
        };
        runtime::run(&bundle, &config.id, &opts)
    })();
    let text = match outcome {
        Ok(r) => format!(
            "exit {} {} {}\n",
            r.code.map_or("-".to_string(), |c| c.to_string()),
            r.signal.map_or("-".to_string(), |s| s.to_string()),
            u8::from(r.oom_killed)
        ),
        Err(e) => format!("error {e}\n"),
    };
    match result.write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn parse_exit(text: &str) -> Option<Exit> {
    let mut parts = text.strip_prefix("exit ")?.split_whitespace();
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<i32>().ok());
    Some(Exit {
        code: num(parts.next()),
        signal: num(parts.next()),
        oom_killed: parts.next() == Some("1"),
    })
}

/// (device, inode) of a process's executable.
fn exe_id(pid: i32) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The runner's child once it has exec'd the container's program: before that it
/// is a copy of this program (same executable), after it is not.
fn started_container(runner: i32, own_exe: Option<(u64, u64)>) -> Option<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{runner}/task/{runner}/children")).ok()?;
    let pid: i32 = children.split_whitespace().next()?.parse().ok()?;
    let exe = exe_id(pid)?;
    (Some(exe) != own_exe).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_lines() {
        assert_eq!(
            parse_exit("exit 3 - 0\n"),
            Some(Exit {
                code: Some(3),
                signal: None,
                oom_killed: false
            })
        );
        assert_eq!(
            parse_exit("exit - 9 1\n"),
            Some(Exit {
                code: None,
                signal: Some(9),
                oom_killed: true
            })
        );
        assert_eq!(parse_exit(""), None);
    }
}

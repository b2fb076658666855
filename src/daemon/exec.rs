//! An exec session in one of this node's containers, for the API
//! (`manager::api::exec`): the command started through the exec helper
//! (`agent::node::LocalNode::exec`, as `berth exec` on the host does), and its stdio
//! spoken as the attach socket's frames (`agent::shim::attach`) on one end of a socket
//! pair, whose other end the API copies to the client's connection.
//!
//! Threads, as the CLI's own exec: one copies the client's frames to the command's
//! stdin (or terminal, with its window size); one per output stream frames what the
//! command writes; one waits for the command's exit, gives the output streams a
//! moment to drain (a process it left in the background may hold them open), then
//! sends the end frame with the exit status. A client that hangs up first ends the
//! command ([`agent::shim::HangUp`]).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::node::LocalNode;
use agent::shim::attach::{self, Decoder};
use agent::shim::{self, ShimError};
use manager::api::exec::{ExecError, ExecSpec};

/// How long output may still come once the command has exited.
const DRAIN: Duration = Duration::from_millis(500);

/// Where the command's stdin goes.
enum Input {
    Pipe(Option<std::io::PipeWriter>),
    Terminal(std::fs::File),
}

/// Starts `spec` in container `task` of this node; returns the client's end of the
/// session's stream.
pub fn start(node: &LocalNode, task: &str, spec: &ExecSpec) -> Result<UnixStream, ExecError> {
    let req = shim::ExecRequest {
        args: spec.args.clone(),
        env: spec.env.clone(),
        user: spec.user.clone(),
        cwd: spec.workdir.as_ref().map(PathBuf::from),
        tty: spec.tty,
        timeout_ms: None,
        privileged: false,
    };
    let internal = |what: &str, e: std::io::Error| {
        ExecError::new(500, format!("container {task}: exec: {what}: {e}"))
    };
    let (ours, theirs) = UnixStream::pair().map_err(|e| internal("socket pair", e))?;
    let (session, input, outputs) = if spec.tty.is_some() {
        let mut session = node
            .exec(task, &req, shim::ExecStdio::default())
            .map_err(refusal)?;
        let master = session
            .take_master()
            .ok_or_else(|| ExecError::new(500, format!("container {task}: exec: no terminal")))?;
        let writer = master
            .try_clone()
            .map_err(|e| internal("the terminal", e))?;
        let outputs: Vec<(u8, Box<dyn Read + Send>)> =
            vec![(attach::STDOUT, Box::new(std::fs::File::from(master)))];
        (
            session,
            Input::Terminal(std::fs::File::from(writer)),
            outputs,
        )
    } else {
        let pipe = || std::io::pipe().map_err(|e| internal("pipes", e));
        let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
        let session = node
            .exec(
                task,
                &req,
                shim::ExecStdio {
                    stdin: Some(in_r.as_fd()),
                    stdout: Some(out_w.as_fd()),
                    stderr: Some(err_w.as_fd()),
                },
            )
            .map_err(refusal)?;
        let outputs: Vec<(u8, Box<dyn Read + Send>)> = vec![
            (attach::STDOUT, Box::new(out_r)),
            (attach::STDERR, Box::new(err_r)),
        ];
        (session, Input::Pipe(Some(in_w)), outputs)
    };
    let hang_up = session
        .hang_up_handle()
        .map_err(|e| ExecError::new(500, e.to_string()))?;
    let clone = |s: &UnixStream| s.try_clone().map_err(|e| internal("socket pair", e));
    let reader = clone(&ours)?;
    let writer = Arc::new(Mutex::new(ours));
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|e| internal("a thread", e))
    };
    spawn(
        "exec-stdin",
        Box::new(move || {
            copy_input(reader, input);
            // The client is gone (or the session over): nobody reads what the command
            // writes, nobody would see its end.
            hang_up.hang_up();
        }),
    )?;
    let mut pumps = Vec::new();
    for (kind, from) in outputs {
        let writer = writer.clone();
        pumps.push(spawn(
            "exec-output",
            Box::new(move || pump(from, kind, &writer)),
        )?);
    }
    spawn(
        "exec-wait",
        Box::new(move || {
            let status = match session.wait() {
                Ok(report) => report.status(),
                Err(e) => {
                    let message = format!("berth: {e}\r\n");
                    let _ = send(&writer, &attach::frame(attach::STDERR, message.as_bytes()));
                    255
                }
            };
            let deadline = Instant::now() + DRAIN;
            for p in &pumps {
                while !p.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            let _ = send(&writer, &attach::end_frame(status));
            // Output a background process writes after this goes nowhere.
            let _ = lock(&writer).shutdown(std::net::Shutdown::Write);
        }),
    )?;
    Ok(theirs)
}

/// A helper's refusal, as the API answers it.
fn refusal(e: ShimError) -> ExecError {
    let status = match &e {
        ShimError::NotFound { .. } => 404,
        ShimError::NotRunning { .. } => 409,
        ShimError::Exec { .. } => 400,
        _ => 500,
    };
    ExecError::new(status, e.to_string())
}

fn lock(writer: &Mutex<UnixStream>) -> std::sync::MutexGuard<'_, UnixStream> {
    writer.lock().unwrap_or_else(|p| p.into_inner())
}

fn send(writer: &Mutex<UnixStream>, bytes: &[u8]) -> std::io::Result<()> {
    lock(writer).write_all(bytes)
}

/// The client's frames to the command, until the client hangs up.
fn copy_input(mut from: UnixStream, mut input: Input) {
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Ok(frames) = decoder.push(&buf[..n]) else {
            return;
        };
        for (kind, data) in frames {
            match (kind, &mut input) {
                (attach::STDIN, Input::Pipe(w)) => {
                    // A command that closed its stdin gets no more of it.
                    *w = w
                        .take()
                        .and_then(|mut p| p.write_all(&data).is_ok().then_some(p));
                }
                (attach::STDIN, Input::Terminal(t)) => {
                    let _ = t.write_all(&data);
                }
                (attach::CLOSE_STDIN, Input::Pipe(w)) => {
                    *w = None;
                }
                (attach::RESIZE, Input::Terminal(t)) => {
                    if let Some(size) = attach::parse_resize(&data) {
                        agent::runtime::set_window_size(t.as_raw_fd(), size);
                    }
                }
                // A terminal's input does not end (its programs see ^D as typed); a
                // pipe has no size.
                _ => {}
            }
        }
    }
}

/// One output stream of the command to the client, framed as `kind`.
fn pump(mut from: Box<dyn Read + Send>, kind: u8, to: &Mutex<UnixStream>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            // EIO from a terminal: the last process on it has gone.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if send(to, &attach::frame(kind, &buf[..n])).is_err() {
                    return;
                }
            }
        }
    }
}

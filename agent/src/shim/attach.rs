//! Attaching to a container's stdio through its shim (`berth run` in the foreground,
//! with or without a terminal).
//!
//! A shim whose container has a terminal or an open stdin listens on
//! `<state>/containers/<id>/attach.sock` (in the 0700 container directory: root only).
//! One client at a time is attached; a new one replaces the old. Both directions are
//! frames of `[kind: u8][length: u32, big-endian][payload]`:
//! - client to shim: [`STDIN`] bytes for the container's stdin (the terminal's master,
//!   or the stdin pipe), [`RESIZE`] with rows and columns (two big-endian u16) for the
//!   terminal, [`CLOSE_STDIN`] when the client's input has ended;
//! - shim to client: [`STDOUT`] and [`STDERR`] bytes as the container writes them (a
//!   terminal has only one stream: stdout). What the container wrote before the first
//!   client attached (up to [`REPLAY_LIMIT`]) is sent first, so a prompt printed at
//!   once is not lost. The shim closes the connection when the container has exited.
//!
//! The framing is pure ([`frame`], [`Decoder`]); [`attach_stdio`] is the CLI's end.
//! An exec session through the API (`manager::api::exec`) speaks the same frames, its
//! [`END`] carrying the command's exit status ([`end_frame`]): the CLI's end is the
//! same function.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::ShimError;
use crate::runtime::tty::{window_size, RawMode, Winch, WindowSize, WINCHED};

pub const STDIN: u8 = 0;
pub const RESIZE: u8 = 1;
pub const CLOSE_STDIN: u8 = 2;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// The last frame: the container has exited and everything it wrote was sent. Empty
/// from the shim; an exec session's carries the exit status (i32, big-endian).
pub const END: u8 = 3;

/// Output kept for the first client, at most.
pub const REPLAY_LIMIT: usize = 64 * 1024;
/// A frame larger than this is a broken peer, not data.
const MAX_FRAME: usize = 1 << 20;

pub(crate) fn socket_path(dir: &Path) -> PathBuf {
    dir.join("attach.sock")
}

/// Runs `f` with a path to `dir`'s attach socket short enough for a unix socket
/// address (108 bytes), however long the state directory and container id are: the
/// directory opened, and named through `/proc/self/fd`.
pub(crate) fn with_short_path<T>(
    dir: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let full = socket_path(dir);
    if full.as_os_str().len() < 100 {
        return f(&full);
    }
    let handle = std::fs::File::open(dir)?;
    f(&PathBuf::from(format!(
        "/proc/self/fd/{}/attach.sock",
        handle.as_raw_fd()
    )))
}

/// One frame's bytes.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A resize frame.
pub fn resize_frame(size: WindowSize) -> Vec<u8> {
    let mut p = size.rows.to_be_bytes().to_vec();
    p.extend_from_slice(&size.cols.to_be_bytes());
    frame(RESIZE, &p)
}

/// An exec session's last frame, with the command's exit status.
pub fn end_frame(status: i32) -> Vec<u8> {
    frame(END, &status.to_be_bytes())
}

/// The rows and columns of a resize frame's payload.
pub fn parse_resize(payload: &[u8]) -> Option<WindowSize> {
    let b: [u8; 4] = payload.try_into().ok()?;
    Some(WindowSize {
        rows: u16::from_be_bytes([b[0], b[1]]),
        cols: u16::from_be_bytes([b[2], b[3]]),
    })
}

/// Splits a byte stream into frames, however it was cut.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// The complete frames in what has arrived so far; `Err` on a frame too large to
    /// be one of ours.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            if self.buf.len() < 5 {
                break;
            }
            let len =
                u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
            if len > MAX_FRAME {
                return Err(format!("a frame of {len} bytes"));
            }
            if self.buf.len() < 5 + len {
                break;
            }
            let payload = self.buf[5..5 + len].to_vec();
            out.push((self.buf[0], payload));
            self.buf.drain(..5 + len);
        }
        Ok(out)
    }
}

/// Connects to container `id`'s shim.
pub fn connect(state: &Path, id: &str) -> Result<UnixStream, ShimError> {
    let dir = super::container_dir(state, id)?;
    if !dir.exists() {
        return Err(ShimError::NotFound { id: id.to_string() });
    }
    with_short_path(&dir, |p| UnixStream::connect(p)).map_err(|e| {
        ShimError::io(
            format!("container {id}: attach (it has no terminal nor open stdin, or has exited)"),
            e,
        )
    })
}

/// How an attachment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The other end sent everything and the end frame: the container (or the exec'd
    /// command) has exited, with this status if the end frame said it.
    Complete { status: Option<i32> },
    /// The connection closed without the end frame; `received` says whether any
    /// output came (if none did, the caller can show the container's log instead).
    Cut { received: bool },
}

/// The CLI's end: this process's stdin to the container, its output to this process's
/// stdout and stderr, until the other end ends the stream (the container, or the
/// command of an exec session, exited). `sock` is the shim's attach socket, or a
/// socket relayed to an exec session. With `tty`, this terminal is in raw mode
/// meanwhile and its size follows along.
///
/// Input is copied on a thread of its own, so a container that does not read its
/// input never stops its output from being shown, and the other way round.
pub fn attach_stdio(sock: UnixStream, tty: bool) -> std::io::Result<Ended> {
    use std::sync::{Arc, Mutex};
    let stdin = std::io::stdin();
    let _raw = tty.then(|| RawMode::enter(stdin.as_fd()));
    let _winch = tty.then(Winch::watch);
    let writer = Arc::new(Mutex::new(sock.try_clone()?));
    let send = move |w: &Mutex<UnixStream>, bytes: &[u8]| {
        w.lock().unwrap_or_else(|p| p.into_inner()).write_all(bytes)
    };
    let resize = {
        let writer = writer.clone();
        move || {
            if tty && WINCHED.swap(false, std::sync::atomic::Ordering::Relaxed) {
                if let Some(size) = window_size(std::io::stdin().as_raw_fd()) {
                    let _ = send(&writer, &resize_frame(size));
                }
            }
        }
    };
    if tty {
        if let Some(size) = window_size(stdin.as_raw_fd()) {
            send(&writer, &resize_frame(size))?;
        }
    }
    // Left running when the container ends first: it is blocked reading our stdin,
    // and the process exits soon after.
    let input_writer = writer.clone();
    let input_resize = resize.clone();
    std::thread::Builder::new()
        .name("attach-stdin".to_string())
        .spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    // The container's stdin ends too (a terminal's does not: its
                    // programs see ^D as typed, if they asked for it).
                    Ok(0) => {
                        let _ = send(&input_writer, &frame(CLOSE_STDIN, &[]));
                        return;
                    }
                    Ok(k) => {
                        if send(&input_writer, &frame(STDIN, &buf[..k])).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => input_resize(),
                    Err(_) => return,
                }
            }
        })?;
    let mut reader = sock;
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 32 * 1024];
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let mut received = false;
    loop {
        let k = match reader.read(&mut buf) {
            Ok(0) => return Ok(Ended::Cut { received }),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                resize();
                continue;
            }
            // The shim went away with the container.
            Err(_) => return Ok(Ended::Cut { received }),
        };
        let frames = decoder
            .push(&buf[..k])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        for (kind, data) in frames {
            match kind {
                END => {
                    let status = <[u8; 4]>::try_from(data.as_slice())
                        .ok()
                        .map(i32::from_be_bytes);
                    return Ok(Ended::Complete { status });
                }
                STDERR => {
                    stderr.write_all(&data)?;
                    stderr.flush()?;
                }
                _ => {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                }
            }
            received = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_cut() {
        let mut stream = frame(STDIN, b"hello");
        stream.extend(resize_frame(WindowSize {
            rows: 40,
            cols: 120,
        }));
        stream.extend(frame(CLOSE_STDIN, &[]));
        for cut in 0..stream.len() {
            let mut d = Decoder::default();
            let mut got = d.push(&stream[..cut]).unwrap();
            got.extend(d.push(&stream[cut..]).unwrap());
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[0], (STDIN, b"hello".to_vec()));
            assert_eq!(
                parse_resize(&got[1].1),
                Some(WindowSize {
                    rows: 40,
                    cols: 120
                })
            );
            assert_eq!(got[2], (CLOSE_STDIN, vec![]));
        }
        let mut d = Decoder::default();
        assert!(d.push(&[0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(parse_resize(b"abc"), None);
    }
}

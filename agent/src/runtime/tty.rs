//! The terminal side of a container's process: the socket pair over which a process
//! opening a terminal inside the container sends its master back, window sizes, and
//! the relay between that master and the caller's own terminal (raw mode, SIGWINCH
//! followed). Used by `run`/`spawn` (`process.rs`), `exec` (`exec.rs`) and the shim's
//! attach socket.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::RuntimeError;

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
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

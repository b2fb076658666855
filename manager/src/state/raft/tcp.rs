//! [`TcpTransport`]: Raft messages between processes over plain TCP, one connection per
//! peer and direction, each message a frame of `len: u32 LE | protobuf bytes`.
//!
//! Plain threads, no runtime: a writer thread per peer drains a bounded queue (a full
//! queue drops, as a lossy network would; Raft retries) and batches every queued
//! message into one write; [`TcpListenerHandle`] accepts connections and gives each a
//! reader thread that delivers into the node's [`Inbox`]. The mutual-TLS transport
//! (`tls.rs`) runs the same writer loop and framing over rustls streams; its receiving
//! side is the cluster port (`crate::port`).

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::Message;

use super::inbox::Inbox;
use super::transport::Transport;

/// The largest frame accepted: a snapshot travels in one message.
pub(crate) const MAX_FRAME: usize = 512 << 20;
/// Messages waiting for one peer before new ones are dropped.
const QUEUE: usize = 4096;
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// A write that makes no progress for this long counts as a dead connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("raft transport: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("raft transport: cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Sends to peers by id over TCP.
#[derive(Debug)]
pub struct TcpTransport {
    peers: Mutex<HashMap<u64, SyncSender<Message>>>,
}

impl TcpTransport {
    /// A transport that knows `peers` (id -> address); more can be added with
    /// [`TcpTransport::set_peer`] (after a conf change).
    pub fn new(peers: &[(u64, SocketAddr)]) -> Result<Arc<TcpTransport>, TcpError> {
        let t = Arc::new(TcpTransport {
            peers: Mutex::new(HashMap::new()),
        });
        for &(id, addr) in peers {
            t.set_peer(id, addr)?;
        }
        Ok(t)
    }

    /// Sets (or replaces) the address of peer `id`.
    pub fn set_peer(&self, id: u64, addr: SocketAddr) -> Result<(), TcpError> {
        let tx = spawn_writer(id, move || {
            Ok(BufWriter::with_capacity(256 << 10, connect(addr)?))
        })
        .map_err(TcpError::Thread)?;
        // The old writer (if any) ends when its sender is dropped here.
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        Ok(())
    }

    pub fn remove_peer(&self, id: u64) {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

impl Transport for TcpTransport {
    fn send(&self, msg: Message) {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = peers.get(&msg.to) {
            match tx.try_send(msg) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}

/// Writes one frame: `len: u32 LE | protobuf bytes`.
fn frame(msg: &Message, out: &mut impl Write) -> std::io::Result<()> {
    let bytes = msg.write_to_bytes().map_err(std::io::Error::other)?;
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(&bytes)
}

/// A TCP connection to a peer, set up as every Raft sender wants it: no Nagle (a
/// heartbeat must not wait for an ACK), and writes that give up on a stuck peer.
pub(super) fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    Ok(s)
}

/// Starts peer `id`'s writer thread (see [`write_loop`]) and returns its queue.
pub(super) fn spawn_writer<W, C>(id: u64, connect: C) -> std::io::Result<SyncSender<Message>>
where
    W: Write,
    C: FnMut() -> std::io::Result<W> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name(format!("raft-tx-{id}"))
        .spawn(move || write_loop(connect, rx))?;
    Ok(tx)
}

/// Sends one peer's messages over connections made by `connect` (plain TCP or TLS);
/// reconnects on the next message after an error. A message that cannot be sent is
/// dropped: Raft resends what matters. Ends when every sender of `rx` is gone.
fn write_loop<W: Write>(
    mut connect: impl FnMut() -> std::io::Result<W>,
    rx: mpsc::Receiver<Message>,
) {
    let mut conn: Option<W> = None;
    // After a failed connect, messages are dropped until this instant instead of each
    // paying for a connect attempt to a peer that is down.
    let mut retry_at = Instant::now();
    while let Ok(first) = rx.recv() {
        if conn.is_none() && Instant::now() >= retry_at {
            conn = connect().ok();
            if conn.is_none() {
                retry_at = Instant::now() + RECONNECT_DELAY;
            }
        }
        let Some(w) = conn.as_mut() else { continue };
        // Everything already queued goes out in the same write.
        let mut result = frame(&first, w);
        while result.is_ok() {
            match rx.try_recv() {
                Ok(m) => result = frame(&m, w),
                Err(_) => break,
            }
        }
        if result.and_then(|()| w.flush()).is_err() {
            conn = None;
            // A broken connection is redialed after the same pause as a failed
            // connect: in TLS 1.3 a client learns that the server refused its
            // certificate only on a later write, and would otherwise redial a peer
            // that refuses it once per message.
            retry_at = Instant::now() + RECONNECT_DELAY;
        }
    }
}

/// Accepts peers' connections and delivers their messages to one node. Dropping it
/// stops accepting and closes every connection it accepted.
#[derive(Debug)]
pub struct TcpListenerHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A bound, not yet serving, Raft listener: bind first to learn the address (port 0
/// picks one), start the node, then [`RaftListener::serve`] its inbox.
#[derive(Debug)]
pub struct RaftListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl RaftListener {
    pub fn bind(addr: SocketAddr) -> Result<RaftListener, TcpError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| TcpError::Listen { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| TcpError::Listen { addr, source })?;
        // Polled, so that dropping the handle ends the thread without a wake-up
        // connection.
        listener
            .set_nonblocking(true)
            .map_err(|source| TcpError::Listen { addr, source })?;
        Ok(RaftListener {
            listener,
            addr: local,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts connections and delivers their messages to `inbox`.
    pub fn serve(self, inbox: Inbox) -> Result<TcpListenerHandle, TcpError> {
        let RaftListener {
            listener,
            addr: local,
        } = self;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("raft-listen".into())
            .spawn(move || accept_loop(listener, inbox, flag))
            .map_err(TcpError::Thread)?;
        Ok(TcpListenerHandle {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }
}

impl TcpListenerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpListenerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, inbox: Inbox, stop: Arc<AtomicBool>) {
    let mut readers = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (inbox, stop) = (inbox.clone(), stop.clone());
                if let Ok(t) = std::thread::Builder::new()
                    .name("raft-rx".into())
                    .spawn(move || read_loop(stream, inbox, stop))
                {
                    readers.push(t);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
        readers.retain(|t| !t.is_finished());
    }
    for t in readers {
        let _ = t.join();
    }
}

/// Reads frames until the peer closes, a frame is malformed, or the listener stops.
fn read_loop(stream: TcpStream, inbox: Inbox, stop: Arc<AtomicBool>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    // Wakes up now and then to notice a stop.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut r = std::io::BufReader::with_capacity(256 << 10, stream);
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if !read_full(&mut r, &mut len, &stop) {
            return;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return;
        }
        buf.resize(len, 0);
        if !read_full(&mut r, &mut buf, &stop) {
            return;
        }
        let Ok(msg) = Message::parse_from_bytes(&buf) else {
            return;
        };
        if !inbox.deliver(msg) {
            return;
        }
    }
}

/// Fills `buf`, riding out read timeouts; false on EOF, error or stop.
fn read_full(r: &mut impl Read, buf: &mut [u8], stop: &AtomicBool) -> bool {
    let mut done = 0;
    while done < buf.len() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match r.read(&mut buf[done..]) {
            Ok(0) => return false,
            Ok(n) => done += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
    true
}

//! The server around the records: per network, a UDP socket and a TCP listener on the
//! gateway address (so the socket a query arrives on tells which network asked), a
//! thread for each, and who may ask. Answers come from [`Records`]; what is not ours
//! is forwarded (`upstream.rs`) on a thread of its own.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use super::records::Records;
use super::upstream::{forward, forward_tcp, upstream_for};
use super::wire::{fit_udp, read_tcp_message, respond, servfail, write_tcp_message};

struct Listener {
    stop: Arc<AtomicBool>,
    /// The address asked for (port 0: any) and the one bound.
    addr: SocketAddr,
    bound: SocketAddr,
    thread: Option<JoinHandle<()>>,
    tcp: Option<JoinHandle<()>>,
    /// The TCP listener's descriptor, to wake its blocked accept by shutting it down.
    tcp_socket: Option<TcpListener>,
}

/// The running server: records plus one listening thread per network.
pub struct DnsServer {
    records: Arc<RwLock<Records>>,
    upstream: Arc<Vec<SocketAddr>>,
    rotation: Arc<AtomicUsize>,
    listeners: Mutex<BTreeMap<String, Listener>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// A server with no networks yet; unknown names go to `upstream`.
    pub fn new(upstream: Vec<SocketAddr>) -> DnsServer {
        DnsServer {
            records: Arc::default(),
            upstream: Arc::new(upstream),
            rotation: Arc::default(),
            listeners: Mutex::default(),
        }
    }

    /// The records, for cheap updates (a write lock held for a map insert).
    pub fn records(&self) -> &RwLock<Records> {
        &self.records
    }

    /// Starts answering for `network` on `addr` (the network's gateway, port 53);
    /// already listening there is a no-op.
    pub fn listen(&self, network: &str, addr: SocketAddr) -> io::Result<()> {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if listeners.get(network).is_some_and(|l| l.addr == addr) {
            return Ok(());
        }
        if let Some(old) = listeners.remove(network) {
            stop(old);
        }
        let (socket, bound, tcp) = bind_pair(addr)?;
        let tcp_socket = tcp.try_clone()?;
        let stop_flag = Arc::new(AtomicBool::new(false));
        let ctx = Serve {
            socket,
            network: network.to_string(),
            records: self.records.clone(),
            upstream: self.upstream.clone(),
            rotation: self.rotation.clone(),
            stop: stop_flag.clone(),
        };
        let answers = ctx.answers();
        let thread = std::thread::Builder::new()
            .name(format!("dns-{network}"))
            .spawn(move || ctx.run())?;
        let stop_tcp = stop_flag.clone();
        let tcp = std::thread::Builder::new()
            .name(format!("dns-tcp-{network}"))
            .spawn(move || serve_tcp(tcp, answers, stop_tcp))?;
        listeners.insert(
            network.to_string(),
            Listener {
                stop: stop_flag,
                addr,
                bound,
                thread: Some(thread),
                tcp: Some(tcp),
                tcp_socket: Some(tcp_socket),
            },
        );
        Ok(())
    }

    /// Where the server answers for `network` (UDP and TCP), if it does.
    pub fn address(&self, network: &str) -> Option<SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(network)
            .map(|l| l.bound)
    }

    /// Stops answering for `network`.
    pub fn unlisten(&self, network: &str) {
        let old = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(network);
        if let Some(old) = old {
            stop(old);
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let all = std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, l) in all {
            stop(l);
        }
    }
}

/// A UDP socket and a TCP listener on the same address. When the caller lets the
/// kernel pick the port (port 0), the UDP one it picked may be taken over TCP by
/// someone else: try another a few times.
fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, SocketAddr, TcpListener)> {
    let mut tries = 0;
    loop {
        let socket = UdpSocket::bind(addr)?;
        let bound = socket.local_addr()?;
        match TcpListener::bind(bound) {
            Ok(tcp) => return Ok((socket, bound, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && addr.port() == 0 && tries < 16 => {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn stop(mut l: Listener) {
    l.stop.store(true, Ordering::SeqCst);
    // Wake the blocked recv with an empty datagram instead of waiting for its timeout.
    if let Ok(s) = UdpSocket::bind(SocketAddr::new(l.bound.ip(), 0)) {
        let _ = s.send_to(&[], l.bound);
    }
    if let Some(t) = l.thread.take() {
        let _ = t.join();
    }
    // And the blocked accept: shutting a listening socket down makes accept fail at
    // once (a wake-up connection could be filtered, or its address gone).
    if let Some(sock) = l.tcp_socket.take() {
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            nix::sys::socket::Shutdown::Both,
        );
    }
    if let Some(t) = l.tcp.take() {
        let _ = t.join();
    }
}

struct Serve {
    socket: UdpSocket,
    network: String,
    records: Arc<RwLock<Records>>,
    upstream: Arc<Vec<SocketAddr>>,
    rotation: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Serve {
    fn run(self) {
        // A timeout too, in case the wake-up datagram is lost.
        let _ = self
            .socket
            .set_read_timeout(Some(Duration::from_millis(500)));
        let own = self.socket.local_addr().map(|a| a.ip()).ok();
        let mut buf = [0u8; 4096];
        while !self.stop.load(Ordering::SeqCst) {
            let Ok((n, peer)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
            let records = self.records.read().unwrap_or_else(|p| p.into_inner());
            if !may_ask(&records, &self.network, peer.ip(), own) {
                continue;
            }
            match respond(
                &records,
                &self.network,
                Some(peer.ip()),
                &buf[..n],
                rotation,
            ) {
                Some(Ok(reply)) => {
                    drop(records);
                    let _ = self.socket.send_to(&fit_udp(&buf[..n], reply), peer);
                }
                Some(Err(packet)) => {
                    let upstream = upstream_for(&records, &self.network, peer.ip(), &self.upstream);
                    drop(records);
                    // Forwarding waits on the network: never on the answering thread,
                    // and with a bound on how many wait at once.
                    if FORWARDS.fetch_add(1, Ordering::SeqCst) >= MAX_FORWARDS {
                        FORWARDS.fetch_sub(1, Ordering::SeqCst);
                        if let Some(reply) = servfail(&packet) {
                            let _ = self.socket.send_to(&reply, peer);
                        }
                    } else if let Ok(socket) = self.socket.try_clone() {
                        std::thread::spawn(move || {
                            forward(&socket, &packet, peer, &upstream);
                            FORWARDS.fetch_sub(1, Ordering::SeqCst);
                        });
                    } else {
                        FORWARDS.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                None => {}
            }
        }
    }
}

/// What a TCP connection needs to answer: the same records and upstreams as the UDP
/// loop of its network.
#[derive(Clone)]
struct Answers {
    network: String,
    records: Arc<RwLock<Records>>,
    upstream: Arc<Vec<SocketAddr>>,
    rotation: Arc<AtomicUsize>,
}

impl Serve {
    fn answers(&self) -> Answers {
        Answers {
            network: self.network.clone(),
            records: self.records.clone(),
            upstream: self.upstream.clone(),
            rotation: self.rotation.clone(),
        }
    }
}

/// TCP connections served at once for one network: past it, new connections are
/// closed at once (the client retries or gives up), not given a thread.
const MAX_TCP_CONNECTIONS: usize = 16;
/// How long a TCP connection may wait for, or take to send, one whole query; and how
/// long a reply may take to be taken (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(5);

fn serve_tcp(listener: TcpListener, answers: Answers, stop: Arc<AtomicBool>) {
    // Connections of this network being served: each network has its own allowance,
    // so one network's clients cannot take another's.
    let open = Arc::new(AtomicUsize::new(0));
    let own = listener.local_addr().map(|a| a.ip()).ok();
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let allowed = conn.peer_addr().is_ok_and(|peer| {
            let records = answers.records.read().unwrap_or_else(|p| p.into_inner());
            may_ask(&records, &answers.network, peer.ip(), own)
        });
        if !allowed || open.fetch_add(1, Ordering::SeqCst) >= MAX_TCP_CONNECTIONS {
            if allowed {
                open.fetch_sub(1, Ordering::SeqCst);
            }
            continue;
        }
        let answers = answers.clone();
        let open_here = open.clone();
        let spawned = std::thread::Builder::new()
            .name("dns-tcp-conn".to_string())
            .spawn(move || {
                let _ = answers.serve_connection(conn);
                open_here.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Who may ask a network's server: its members, and the host itself (the gateway's
/// own address, or loopback). The gateway address is the host's, reachable from every
/// network the host is on: without this any neighbour could use berth as an open
/// resolver, and take its TCP connections.
fn may_ask(records: &Records, network: &str, peer: IpAddr, own: Option<IpAddr>) -> bool {
    let member = match peer {
        IpAddr::V4(ip) => records.client(network, ip).is_some(),
        IpAddr::V6(_) => false,
    };
    member || peer.is_loopback() || Some(peer) == own || is_local(peer)
}

/// Whether `ip` is one of this host's addresses (the kernel lets us bind only those).
fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

impl Answers {
    /// Answers queries on one connection, in order, until the client closes it or is
    /// idle for [`TCP_IDLE`].
    fn serve_connection(&self, mut conn: TcpStream) -> io::Result<()> {
        conn.set_write_timeout(Some(TCP_IDLE))?;
        conn.set_nodelay(true)?;
        let peer = conn.peer_addr()?;
        loop {
            let packet = read_tcp_message(&mut conn, TCP_IDLE)?;
            let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
            let records = self.records.read().unwrap_or_else(|p| p.into_inner());
            let reply = match respond(&records, &self.network, Some(peer.ip()), &packet, rotation) {
                Some(Ok(reply)) => Some(reply),
                Some(Err(packet)) => {
                    let upstream = upstream_for(&records, &self.network, peer.ip(), &self.upstream);
                    drop(records);
                    forward_tcp(&packet, &upstream).or_else(|| servfail(&packet))
                }
                None => return Ok(()),
            };
            if let Some(reply) = reply {
                write_tcp_message(&mut conn, &reply)?;
            }
        }
    }
}

/// Forwarded queries in flight in this process, and the most allowed: past it, SERVFAIL
/// (a client retries) rather than one more thread.
static FORWARDS: AtomicUsize = AtomicUsize::new(0);
const MAX_FORWARDS: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::fixture::records;
    use std::net::Ipv4Addr;

    #[test]
    fn only_members_and_the_host_may_ask() {
        let r = records();
        let own = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let ip = |d: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, d));
        assert!(may_ask(&r, "front", ip(2), own), "a member");
        assert!(
            may_ask(&r, "front", ip(1), own),
            "the host, from the gateway"
        );
        assert!(may_ask(&r, "front", IpAddr::V4(Ipv4Addr::LOCALHOST), own));
        // db-1 is 10.0.0.2 on "back" only; 10.0.0.9 is nobody's.
        assert!(!may_ask(&r, "front", ip(9), own), "a neighbour");
        assert!(!may_ask(&r, "back", ip(3), own), "another network's member");
        assert!(!may_ask(&r, "front", "2001:db8::7".parse().unwrap(), own));
    }
}

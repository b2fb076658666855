//! Published ports on the host's IPv6 addresses: a userspace relay.
//!
//! Containers on a network without `enable_ipv6` are IPv4-only and nftables cannot
//! translate between address families (there is no NAT64 in it), so a client that
//! connects to `[::1]:8080` or to the host's global IPv6 address is served the way
//! Docker's `docker-proxy` serves it: berth listens on the IPv6 address (with
//! `IPV6_V6ONLY`, so the IPv4 side stays with the DNAT rules) and relays every TCP
//! connection or UDP flow to the container's IPv4 address. The container sees the
//! bridge's gateway as the client, as it does behind docker-proxy.
//!
//! Containers with IPv6 get their IPv6 side by `ip6` DNAT instead
//! (`firewall::PortRule6`), except for `::1`, which the kernel never routes off the host
//! (IPv6 has no `route_localnet`): a connection to `[::1]:P` still reaches the relay,
//! which then connects to the container's IPv6 address, as docker-proxy does.
//!
//! A relay sends each new TCP connection or UDP flow to the next of its current
//! [`Backends`] in turn, as the IPv4 side's DNAT map does: the containers behind the
//! port that are serving (healthy, not leaving). A connection or flow keeps the
//! backend it started with; with no backend, a new connection is closed at once.
//!
//! The relays run as tasks of one small tokio runtime on a thread of their own, started
//! on first use. A [`Relay`] value owns its listener: dropping it stops the relay and
//! frees the port, so unpublishing is dropping the reservation, as for IPv4.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrIn6,
};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// How long a UDP flow (one client address) lives without traffic, as in docker-proxy.
const UDP_IDLE: Duration = Duration::from_secs(90);
/// The most UDP flows one published port keeps; a new client past it replaces the
/// least recently used one. Each flow holds a socket and a receive buffer, and anyone
/// on the network can start one with a datagram from a new source port.
const MAX_UDP_FLOWS: usize = 256;
/// The most TCP connections one published port relays at once; past it new ones are
/// closed at once. Each holds two of the daemon's descriptors.
const MAX_TCP_CONNECTIONS: usize = 1024;
/// How long a relayed TCP connection may take to reach the container.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime the relays run on, started on first use and kept for the process.
fn runtime() -> io::Result<Handle> {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("berth-proxy".to_string())
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Where a relay sends new connections: shared with the manager, which changes it
/// when containers join or leave the port, or stop serving.
#[derive(Debug, Clone, Default)]
pub struct Backends(Arc<BackendsInner>);

#[derive(Debug, Default)]
struct BackendsInner {
    /// IPv4 addresses, or IPv6 ones for containers on an `enable_ipv6` network.
    list: Mutex<Vec<SocketAddr>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Backends {
    pub fn new<A: Into<SocketAddr>>(list: Vec<A>) -> Backends {
        let b = Backends::default();
        b.set(list);
        b
    }

    /// Replaces the backends; connections already relayed keep theirs.
    pub fn set<A: Into<SocketAddr>>(&self, list: Vec<A>) {
        let list = list.into_iter().map(Into::into).collect();
        *self.0.list.lock().unwrap_or_else(|p| p.into_inner()) = list;
    }

    /// The backend for a new connection: each in turn; `None` when there is none.
    pub fn pick(&self) -> Option<SocketAddr> {
        let list = self.0.list.lock().unwrap_or_else(|p| p.into_inner());
        if list.is_empty() {
            return None;
        }
        let n = self
            .0
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        list.get(n % list.len()).copied()
    }
}

/// An IPv6 socket bound (and, for TCP, listening) on a host port: the port is held from
/// here on, so a taken port is an error before any rule or relay exists.
#[derive(Debug)]
pub struct Bound {
    fd: OwnedFd,
    udp: bool,
    port: u16,
}

impl Bound {
    /// Binds `addr` for `proto` ("tcp" or "udp"); port 0 lets the kernel pick.
    pub fn new(proto: &str, addr: SocketAddrV6) -> nix::Result<Bound> {
        let udp = proto == "udp";
        let ty = if udp {
            SockType::Datagram
        } else {
            SockType::Stream
        };
        let fd = socket(
            AddressFamily::Inet6,
            ty,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        // IPv4 connections belong to the DNAT rules and the IPv4 reservation.
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
        if !udp {
            // As any server: a restarted daemon rebinds while old connections linger.
            setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        }
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn6::from(addr),
        )?;
        if !udp {
            listen(&fd, Backlog::new(128)?)?;
        }
        let bound: SockaddrIn6 =
            nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
        Ok(Bound {
            fd,
            udp,
            port: bound.port(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts relaying what arrives to `backends`.
    pub fn relay(self, backends: Backends) -> io::Result<Relay> {
        let handle = runtime()?;
        let _guard = handle.enter();
        let (stopped, done) = std::sync::mpsc::channel();
        let task = if self.udp {
            let socket = UdpSocket::from_std(std::net::UdpSocket::from(self.fd))?;
            // Every flow's task shares the socket: the last one to go signals.
            let listener = Listener {
                socket: Arc::new(socket),
                _stopped: Arc::new(Stopped(stopped)),
            };
            handle.spawn(relay_udp(listener, backends))
        } else {
            // One value owns both, so the listener closes before the signal whether the
            // task is aborted mid-await or before it was ever polled (an async block's
            // captures drop in no order one can rely on).
            let listener = TcpOwned {
                listener: TcpListener::from_std(std::net::TcpListener::from(self.fd))?,
                _stopped: Stopped(stopped),
            };
            handle.spawn(relay_tcp(listener, backends))
        };
        Ok(Relay { task, done })
    }
}

/// A UDP relay's socket as its tasks hold it: the socket is dropped before the signal
/// (fields drop in order), so the signal means the port is closed.
#[derive(Clone)]
struct Listener {
    socket: Arc<UdpSocket>,
    _stopped: Arc<Stopped>,
}

/// A TCP relay's listener as its task holds it: the listener drops before the signal.
struct TcpOwned {
    listener: TcpListener,
    _stopped: Stopped,
}

/// Dropped with the relay's task (and so after its listener): tells [`Relay::drop`].
struct Stopped(std::sync::mpsc::Sender<()>);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A running relay; dropping it stops it and closes its listener before returning, so
/// the port is free for the next publication at once.
#[derive(Debug)]
pub struct Relay {
    task: JoinHandle<()>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        // The runtime drops the task's future on its own thread, soon; a bound anyway.
        let _ = self.done.recv_timeout(Duration::from_secs(2));
    }
}

async fn relay_tcp(owned: TcpOwned, backends: Backends) {
    let listener = &owned.listener;
    // Connections in flight end with the relay, as they would with the DNAT rules.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // Out of descriptors or similar: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // None serving: closed at once, as the IPv4 side refuses.
                let Some(target) = backends.pick() else {
                    drop(client);
                    continue;
                };
                if conns.len() >= MAX_TCP_CONNECTIONS {
                    drop(client);
                    continue;
                }
                conns.spawn(async move {
                    let _ = client.set_nodelay(true);
                    let connect = TcpStream::connect(target);
                    // A container that does not answer closes the client's connection,
                    // as a refused DNAT'd connection would.
                    let Ok(Ok(upstream)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await
                    else {
                        return;
                    };
                    let _ = upstream.set_nodelay(true);
                    let (mut a, mut b) = (client, upstream);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One client address's flow: a socket connected to the container, so replies can be
/// told apart by the socket they arrive on, the task relaying its replies, and when
/// the client last sent (for eviction).
struct Flow {
    upstream: Arc<UdpSocket>,
    replies: tokio::task::AbortHandle,
    last_sent: tokio::time::Instant,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Flow>>>;

async fn relay_udp(listener: Listener, backends: Backends) {
    let flows: Flows = Arc::default();
    let mut replies = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            received = listener.socket.recv_from(&mut buf) => {
                let Ok((n, client)) = received else { continue };
                let existing = {
                    let mut flows = flows.lock().unwrap_or_else(|p| p.into_inner());
                    flows.get_mut(&client).map(|f| {
                        f.last_sent = tokio::time::Instant::now();
                        f.upstream.clone()
                    })
                };
                let upstream = match existing {
                    Some(s) => s,
                    None => {
                        let Some(target) = backends.pick() else { continue };
                        let Ok(s) = new_flow(target).await else { continue };
                        let s = Arc::new(s);
                        let task = replies.spawn(relay_replies(
                            listener.clone(),
                            s.clone(),
                            client,
                            flows.clone(),
                        ));
                        let mut flows = flows.lock().unwrap_or_else(|p| p.into_inner());
                        if flows.len() >= MAX_UDP_FLOWS {
                            evict_oldest(&mut flows);
                        }
                        flows.insert(client, Flow {
                            upstream: s.clone(),
                            replies: task,
                            last_sent: tokio::time::Instant::now(),
                        });
                        s
                    }
                };
                let _ = upstream.send(&buf[..n]).await;
            }
            Some(_) = replies.join_next(), if !replies.is_empty() => {}
        }
    }
}

/// Ends the flow whose client sent least recently.
fn evict_oldest(flows: &mut HashMap<SocketAddr, Flow>) {
    let oldest = flows
        .iter()
        .min_by_key(|(_, f)| f.last_sent)
        .map(|(client, _)| *client);
    if let Some(client) = oldest {
        if let Some(flow) = flows.remove(&client) {
            flow.replies.abort();
        }
    }
}

async fn new_flow(target: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, 0, 0, 0).into(),
    };
    let s = UdpSocket::bind(any).await?;
    s.connect(target).await?;
    Ok(s)
}

/// Sends the container's datagrams back to `client` until the flow is idle.
async fn relay_replies(
    listener: Listener,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    flows: Flows,
) {
    let mut buf = vec![0u8; 65536];
    // An error (e.g. ICMP port unreachable from the container) ends the flow too; the
    // client's next datagram starts a new one. Idle means neither side sent.
    loop {
        let idle_since = flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .map(|f| f.last_sent);
        let Some(last_sent) = idle_since else { return };
        let deadline = last_sent + UDP_IDLE;
        match tokio::time::timeout_at(deadline, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let _ = listener.socket.send_to(&buf[..n], client).await;
                if let Some(f) = flows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&client)
                {
                    f.last_sent = tokio::time::Instant::now();
                }
            }
            Ok(Err(_)) => break,
            // Timed out: over unless the client sent meanwhile.
            Err(_) => {
                let sent = flows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&client)
                    .map(|f| f.last_sent);
                if sent.is_none_or(|s| s + UDP_IDLE <= tokio::time::Instant::now()) {
                    break;
                }
            }
        }
    }
    flows
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&client);
}

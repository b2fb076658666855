//! Service discovery: berth's DNS server.
//!
//! [`Records`] is the pure part: which addresses a name has on one network. The
//! [`DnsServer`] is the thin shell around it: one UDP socket per network bound to the
//! network's gateway address (so the socket a query arrives on tells which network
//! asked), one thread per socket, messages encoded and decoded with hickory-proto.
//! Updates take a write lock on the records and are visible to the next query.
//!
//! An answer too large for the client's UDP payload (512 bytes, or its EDNS size) goes
//! out truncated (TC set, no records), and the client asks again over TCP: each network
//! also has a TCP listener on the same address, answering the same way and forwarding
//! over TCP what it forwards (RFC 7766).

use std::collections::BTreeMap;
use std::io;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

pub use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Edns, Message, MessageType};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// One container on one network, as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub container: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub project: String,
    pub service: String,
    /// The container's own names (container name, hostname): always resolvable.
    pub names: Vec<String>,
    /// Network aliases: like the service name, only while healthy.
    pub aliases: Vec<String>,
    pub healthy: bool,
    /// The service's `dns:` servers, used instead of the host's for forwarding.
    pub upstream: Vec<SocketAddr>,
}

/// What the server does with an A query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name is ours; these addresses (possibly none: NOERROR with no records).
    Addresses(Vec<Ipv4Addr>),
    /// The name is in our domain but unknown.
    NxDomain,
    /// Not ours: ask the upstream resolvers.
    Forward,
}

/// Every endpoint of every network, keyed by (network, container).
#[derive(Debug, Default, Clone)]
pub struct Records {
    endpoints: BTreeMap<(String, String), Endpoint>,
}

impl Records {
    pub fn insert(&mut self, ep: Endpoint) {
        self.endpoints
            .insert((ep.network.clone(), ep.container.clone()), ep);
    }

    /// Removes a container from every network.
    pub fn remove_container(&mut self, container: &str) {
        self.endpoints.retain(|(_, c), _| c != container);
    }

    /// Marks a container healthy or not on every network; false if it is unknown.
    pub fn set_healthy(&mut self, container: &str, healthy: bool) -> bool {
        let mut found = false;
        for ((_, c), ep) in self.endpoints.iter_mut() {
            if c == container {
                ep.healthy = healthy;
                found = true;
            }
        }
        found
    }

    fn on<'a, 'n>(&'a self, network: &'n str) -> impl Iterator<Item = &'a Endpoint> + use<'a, 'n> {
        self.endpoints
            .iter()
            .filter(move |((n, _), _)| n == network)
            .map(|(_, ep)| ep)
    }

    /// The endpoint with address `ip` on `network` (the client of a query).
    pub fn client(&self, network: &str, ip: Ipv4Addr) -> Option<&Endpoint> {
        self.on(network).find(|ep| ep.ip == ip)
    }

    /// Answers `name` (any case, with or without the final dot) for a client on
    /// `network`. Service names and aliases give the healthy members' addresses,
    /// rotated by `rotation`; `tasks.<service>` gives them all in address order;
    /// `<service>.<project>` works like `<service>`; container names and hostnames give
    /// that container. Single-label names and names under a project of this network
    /// are ours (NXDOMAIN when unknown); anything else is forwarded.
    pub fn answer(&self, network: &str, name: &str, rotation: usize) -> Answer {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let (tasks, wanted) = match name.strip_prefix("tasks.") {
            Some(rest) => (true, rest),
            None => (false, name.as_str()),
        };
        let is_service = |ep: &Endpoint| {
            ep.service == wanted
                || ep.aliases.iter().any(|a| a == wanted)
                || wanted
                    .strip_suffix(ep.project.as_str())
                    .and_then(|s| s.strip_suffix('.'))
                    .is_some_and(|s| s == ep.service)
        };
        let mut service: Vec<Ipv4Addr> = self
            .on(network)
            .filter(|ep| ep.healthy && is_service(ep))
            .map(|ep| ep.ip)
            .collect();
        let mut known = self.on(network).any(is_service);
        if !tasks {
            for ep in self.on(network) {
                if ep.names.iter().any(|n| n == wanted) {
                    known = true;
                    if !service.contains(&ep.ip) {
                        service.push(ep.ip);
                    }
                }
            }
        }
        if known {
            service.sort();
            if !tasks && !service.is_empty() {
                let len = service.len();
                service.rotate_left(rotation % len);
            }
            return Answer::Addresses(service);
        }
        let ours = !name.contains('.')
            || tasks
            || self
                .on(network)
                .any(|ep| name.ends_with(&format!(".{}", ep.project)));
        if ours {
            Answer::NxDomain
        } else {
            Answer::Forward
        }
    }
}

/// The answer to one query packet, or `None` when it must be forwarded (or is not a
/// query we can read). Pure: records, the asking network and client, and the bytes.
pub fn respond(
    records: &Records,
    network: &str,
    packet: &[u8],
    rotation: usize,
) -> Option<Result<Vec<u8>, Vec<u8>>> {
    let query = Message::from_vec(packet).ok()?;
    let q = query.queries().first()?.clone();
    let answer = records.answer(network, &q.name().to_ascii(), rotation);
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(q.clone());
    if let Some(asked) = query.extensions() {
        // An EDNS query gets an OPT record back, with the payload size we accept; a
        // version we do not speak (only 0 exists) gets BADVERS (RFC 6891 6.1.3).
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        reply.set_edns(edns);
        if asked.version() > 0 {
            reply.set_response_code(ResponseCode::BADVERS);
            return reply.to_vec().ok().map(Ok);
        }
    }
    match answer {
        Answer::Forward => return Some(Err(packet.to_vec())),
        Answer::NxDomain => {
            reply.set_authoritative(true);
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Answer::Addresses(ips) => {
            reply.set_authoritative(true);
            if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                for ip in ips {
                    // TTL 0: answers change as tasks come and go; clients must not cache.
                    reply.add_answer(Record::from_rdata(q.name().clone(), 0, RData::A(A(ip))));
                }
            }
        }
    }
    reply.to_vec().ok().map(Ok)
}

/// The largest UDP reply we send, whatever a client's EDNS offers (our receive
/// buffers are this size too).
const MAX_UDP_PAYLOAD: u16 = 4096;

/// `reply` as it may go over UDP in answer to `query`: unchanged if it fits the
/// client's payload size (512 bytes without EDNS), else the header and question with
/// TC set, which sends the client to TCP. Pure.
pub fn fit_udp(query: &[u8], reply: Vec<u8>) -> Vec<u8> {
    // Nearly every reply fits the smallest size: no second parse of the query for it.
    if reply.len() <= 512 {
        return reply;
    }
    let limit = Message::from_vec(query)
        .map(|q| q.max_payload().min(MAX_UDP_PAYLOAD))
        .unwrap_or(512) as usize;
    if reply.len() <= limit {
        return reply;
    }
    match Message::from_vec(&reply).and_then(|m| m.truncate().to_vec()) {
        Ok(short) => short,
        Err(_) => reply,
    }
}

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
            match respond(&records, &self.network, &buf[..n], rotation) {
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

/// One DNS message over TCP: a two-byte length, then the message, all of it within
/// `within` (a client sending a byte at a time cannot hold the connection longer).
fn read_tcp_message(conn: &mut TcpStream, within: Duration) -> io::Result<Vec<u8>> {
    let deadline = std::time::Instant::now() + within;
    let read_all = |conn: &mut TcpStream, buf: &mut [u8]| -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            conn.set_read_timeout(Some(left))?;
            match conn.read(&mut buf[done..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let mut len = [0u8; 2];
    read_all(conn, &mut len)?;
    let mut packet = vec![0u8; u16::from_be_bytes(len) as usize];
    read_all(conn, &mut packet)?;
    Ok(packet)
}

fn write_tcp_message(conn: &mut TcpStream, packet: &[u8]) -> io::Result<()> {
    let len = u16::try_from(packet.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 64 KiB"))?;
    let mut out = Vec::with_capacity(packet.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    conn.write_all(&out)
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
            let reply = match respond(&records, &self.network, &packet, rotation) {
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

/// Asks the first upstream that answers within 2 s over TCP; `None` if none does.
fn forward_tcp(packet: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    upstream.iter().find_map(|up| {
        let mut s = TcpStream::connect_timeout(up, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write_tcp_message(&mut s, packet).ok()?;
        read_tcp_message(&mut s, Duration::from_secs(2)).ok()
    })
}

/// Where a client's forwarded queries go: its service's `dns:` servers, else the
/// node's upstream resolvers.
fn upstream_for(
    records: &Records,
    network: &str,
    client: IpAddr,
    default: &[SocketAddr],
) -> Vec<SocketAddr> {
    let own = match client {
        IpAddr::V4(ip) => records
            .client(network, ip)
            .map(|ep| ep.upstream.clone())
            .filter(|u| !u.is_empty()),
        IpAddr::V6(_) => None,
    };
    own.unwrap_or_else(|| default.to_vec())
}

/// Forwarded queries in flight in this process, and the most allowed: past it, SERVFAIL
/// (a client retries) rather than one more thread.
static FORWARDS: AtomicUsize = AtomicUsize::new(0);
const MAX_FORWARDS: usize = 128;

/// Relays one query to the first upstream that answers within 2 s per try.
fn forward(socket: &UdpSocket, packet: &[u8], peer: SocketAddr, upstream: &[SocketAddr]) {
    for up in upstream {
        let bind: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(s) = UdpSocket::bind(bind) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.send_to(packet, up).is_err() {
            continue;
        }
        // As large as a datagram can be: the upstream answers within the client's
        // EDNS size, which may be more than ours; cut to what the client takes.
        let mut buf = vec![0u8; 65535];
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            if from == *up {
                let _ = socket.send_to(&fit_udp(packet, buf[..n].to_vec()), peer);
                return;
            }
        }
    }
    // No upstream answered: say so at once rather than let the client time out.
    if let Some(reply) = servfail(packet) {
        let _ = socket.send_to(&reply, peer);
    }
}

/// A SERVFAIL reply to a query packet.
fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(ResponseCode::ServFail);
    for q in query.queries() {
        reply.add_query(q.clone());
    }
    reply.to_vec().ok()
}

/// The `nameserver` lines of a resolv.conf, as port-53 socket addresses.
pub fn parse_nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// A minimal stub resolver for tests, benchmarks and health probes: asks `server` for
/// the A records of `name` over UDP. `Ok(Ok(addresses))` on NOERROR, `Ok(Err(code))`
/// on another response code.
pub fn query_a(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    id: u16,
) -> io::Result<Result<Vec<Ipv4Addr>, ResponseCode>> {
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    let invalid =
        |e: hickory_proto::ProtoError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(
        Name::from_ascii(name).map_err(invalid)?,
        RecordType::A,
    ));
    socket.send_to(&m.to_vec().map_err(invalid)?, server)?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        if from != server {
            continue;
        }
        let reply = Message::from_vec(&buf[..n]).map_err(invalid)?;
        if reply.id() != id {
            continue;
        }
        if reply.response_code() != ResponseCode::NoError {
            return Ok(Err(reply.response_code()));
        }
        return Ok(Ok(reply
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn ep(container: &str, network: &str, ip: u8, service: &str, healthy: bool) -> Endpoint {
        Endpoint {
            container: container.into(),
            network: network.into(),
            ip: Ipv4Addr::new(10, 0, 0, ip),
            project: "shop".into(),
            service: service.into(),
            names: vec![container.into(), format!("{container}-host")],
            aliases: vec![format!("{service}-alias")],
            healthy,
            upstream: vec![],
        }
    }

    fn records() -> Records {
        let mut r = Records::default();
        r.insert(ep("web-1", "front", 2, "web", true));
        r.insert(ep("web-2", "front", 3, "web", true));
        r.insert(ep("web-3", "front", 4, "web", false));
        r.insert(ep("db-1", "back", 2, "db", true));
        r
    }

    fn ips(v: &[u8]) -> Answer {
        Answer::Addresses(v.iter().map(|i| Ipv4Addr::new(10, 0, 0, *i)).collect())
    }

    #[test]
    fn names_resolve_per_network() {
        let r = records();
        let cases = [
            ("front", "web", 0, ips(&[2, 3])),
            ("front", "web.", 1, ips(&[3, 2])),
            ("front", "WEB.shop", 0, ips(&[2, 3])),
            ("front", "tasks.web", 1, ips(&[2, 3])),
            ("front", "web-alias", 0, ips(&[2, 3])),
            // A container resolves by its own names even while unhealthy.
            ("front", "web-3", 0, ips(&[4])),
            ("front", "web-3-host", 0, ips(&[4])),
            // Another network's members are unknown here.
            ("front", "db", 0, Answer::NxDomain),
            ("front", "db.shop", 0, Answer::NxDomain),
            ("front", "tasks.db", 0, Answer::NxDomain),
            ("back", "db", 5, ips(&[2])),
            ("back", "web", 0, Answer::NxDomain),
            ("front", "example.com", 0, Answer::Forward),
        ];
        for (net, name, rot, want) in cases {
            assert_eq!(r.answer(net, name, rot), want, "{net} {name}");
        }
    }

    #[test]
    fn health_and_removal_change_answers() {
        let mut r = records();
        assert!(r.set_healthy("web-3", true));
        assert_eq!(r.answer("front", "tasks.web", 0), ips(&[2, 3, 4]));
        r.remove_container("web-1");
        r.remove_container("web-2");
        assert!(r.set_healthy("web-3", false));
        // Still a known service, with no healthy member: empty NOERROR, not NXDOMAIN.
        assert_eq!(r.answer("front", "web", 0), ips(&[]));
        r.remove_container("web-3");
        assert_eq!(r.answer("front", "web", 0), Answer::NxDomain);
        assert!(!r.set_healthy("nobody", true));
    }

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(77).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
    }

    #[test]
    fn packets_get_answers_nxdomain_or_forwarding() {
        let r = records();
        let reply = respond(&r, "front", &query("web.", RecordType::A), 0)
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.id(), 77);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        let got: Vec<String> = m.answers().iter().map(|a| a.data().to_string()).collect();
        assert_eq!(got, ["10.0.0.2", "10.0.0.3"]);
        let reply = respond(&r, "front", &query("web.", RecordType::AAAA), 0)
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(
            (m.response_code(), m.answers().len()),
            (ResponseCode::NoError, 0)
        );
        let reply = respond(&r, "front", &query("nope.", RecordType::A), 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            Message::from_vec(&reply).unwrap().response_code(),
            ResponseCode::NXDomain
        );
        let packet = query("example.com.", RecordType::A);
        assert_eq!(respond(&r, "front", &packet, 0), Some(Err(packet.clone())));
        assert_eq!(respond(&r, "front", b"garbage", 0), None);
    }

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

    #[test]
    fn an_edns_version_we_do_not_speak_gets_badvers() {
        let r = records();
        let mut m = Message::new();
        m.set_id(9).add_query(Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_version(1);
        m.set_edns(e);
        let reply = respond(&r, "front", &m.to_vec().unwrap(), 0)
            .unwrap()
            .unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        // BADVERS shares its number (16) with BADSIG, which hickory reads it back as.
        assert_eq!(
            u16::from(reply.response_code()),
            u16::from(ResponseCode::BADVERS)
        );
        assert!(reply.answers().is_empty());
    }

    #[test]
    fn a_tcp_query_must_arrive_whole_within_its_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A client that sends a byte every 50 ms and never finishes.
        let trickle = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            for _ in 0..40 {
                // A length of 0xffff, then a body that never completes.
                if c.write_all(&[0xff]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (mut conn, _) = listener.accept().unwrap();
        let started = std::time::Instant::now();
        let err = read_tcp_message(&mut conn, Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{err}"
        );
        // Bounded by the whole-message deadline, not by the trickle.
        assert!(started.elapsed() < Duration::from_millis(1500));
        drop(conn);
        trickle.join().unwrap();
    }

    #[test]
    fn nameservers_are_read() {
        let text = "# c\nnameserver 10.255.255.53\nsearch x\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "10.255.255.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}

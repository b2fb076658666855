//! The cluster port over real TLS on 127.0.0.1: who reaches which HTTP path, who may
//! speak Raft, and which connections are refused or closed (another CA, a denied node,
//! a client that never finishes its handshake).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::routing::get;
use axum::{Extension, Router};
use manager::port::{self, Kind, Peer, PortOptions, RaftSink, ALPN_HTTP, ALPN_RAFT};
use manager::state::raft::kv::Kv;
use manager::state::raft::{bootstrap, NodeConfig, RaftNode};
use pki::{Ca, CertRequest, DenyList, Identity, NodeCredentials, NodeId, Role};
use protobuf::Message as _;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Every wait in these tests is bounded by this, so a regression fails, not hangs.
const WAIT: Duration = Duration::from_secs(5);

fn ca() -> Ca {
    Ca::create(SystemTime::now()).expect("create CA")
}

fn creds(ca: &Ca, name: &str, role: Role) -> NodeCredentials {
    ca.issue(
        &CertRequest::new(Identity::new(node(name), role)).address("127.0.0.1"),
        SystemTime::now(),
    )
    .expect("issue test credentials")
}

fn node(name: &str) -> NodeId {
    NodeId::new(name).expect("test node id")
}

/// Answers with who the port says the client is.
async fn echo(Extension(peer): Extension<Peer>) -> String {
    match peer.0 {
        Some(who) => format!("{} {}", who.id, who.role),
        None => "anonymous".to_string(),
    }
}

fn router() -> Router {
    Router::new()
        .route("/v1/state", get(echo))
        .route("/v1/cluster/join", get(echo))
        .route("/v1/dispatcher/{what}", get(echo))
}

/// A port serving `router()` on 127.0.0.1 for manager `m1` of `ca`.
struct TestPort {
    addr: SocketAddr,
    port: port::Port,
    deny: DenyList,
    raft: RaftSink,
}

async fn start(ca: &Ca, options: PortOptions) -> TestPort {
    let deny = DenyList::new();
    let tls = port::server_config(&creds(ca, "m1", Role::Manager), &deny).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let raft = RaftSink::new();
    let port = port::spawn_with(listener, tls, raft.clone(), router(), options);
    TestPort {
        addr,
        port,
        deny,
        raft,
    }
}

/// A client with no certificate (a joiner), verifying the server against `ca`.
fn anonymous(ca: &Ca, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert().der().clone()).expect("CA root");
    let mut config = ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn dial(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name: ServerName<'static> = pki::tls::manager_server_name();
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// One HTTP/1.1 response: (status, body).
async fn read_response(s: &mut TlsStream<TcpStream>) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(resp) = parse(&buf) {
            return Ok(resp);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("response timed out"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A complete response with a Content-Length body, if `buf` holds one.
fn parse(buf: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= len).then(|| (status, body[..len].to_string()))
}

async fn request(s: &mut TlsStream<TcpStream>, path: &str) -> std::io::Result<(u16, String)> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: berth-manager\r\n\r\n").as_bytes())
        .await?;
    s.flush().await?;
    read_response(s).await
}

/// GET `path` on a new connection made with `config`.
async fn get_with(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = dial(config, addr).await?;
    request(&mut s, path).await
}

fn http(creds: &NodeCredentials) -> Arc<ClientConfig> {
    port::http_client_config(creds, &DenyList::new()).expect("client config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_paths_are_authorized_by_certificate_role() {
    let ca = ca();
    let p = start(&ca, PortOptions::default()).await;
    let admin = http(&creds(&ca, "cli", Role::Admin));
    let worker = http(&creds(&ca, "w1", Role::Worker));
    let manager = http(&creds(&ca, "m2", Role::Manager));
    let nobody = anonymous(&ca, ALPN_HTTP);

    // The router sees the verified client as the Peer extension.
    let ok = get_with(admin.clone(), p.addr, "/v1/state").await.unwrap();
    assert_eq!(ok, (200, "cli admin".to_string()));
    let ok = get_with(manager.clone(), p.addr, "/v1/state")
        .await
        .unwrap();
    assert_eq!(ok, (200, "m2 manager".to_string()));

    // No certificate: only the open paths.
    let (status, body) = get_with(nobody.clone(), p.addr, "/v1/state").await.unwrap();
    assert_eq!(status, 401, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("needs a manager or admin certificate; the client presented none"),
        "{body}"
    );
    let ok = get_with(nobody.clone(), p.addr, "/v1/cluster/join")
        .await
        .unwrap();
    assert_eq!(ok, (200, "anonymous".to_string()));
    let (status, _) = get_with(nobody, p.addr, "/v1/dispatcher/x").await.unwrap();
    assert_eq!(status, 401);

    // A worker: the dispatcher, not the control API.
    let (status, body) = get_with(worker.clone(), p.addr, "/v1/state").await.unwrap();
    assert_eq!(status, 403, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        err["error"],
        "/v1/state: this endpoint needs a manager or admin certificate; the client presented a worker certificate for node w1"
    );
    let ok = get_with(worker.clone(), p.addr, "/v1/dispatcher/x")
        .await
        .unwrap();
    assert_eq!(ok, (200, "w1 worker".to_string()));
    // A path that would be the dispatcher's after normalization is judged as written.
    let (status, _) = get_with(worker, p.addr, "/v1/dispatcher/../state")
        .await
        .unwrap();
    assert_eq!(status, 403);
    // The CLI has no business on the dispatcher.
    let (status, _) = get_with(admin, p.addr, "/v1/dispatcher/x").await.unwrap();
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ca_and_denied_nodes_fail_the_handshake() {
    let ca = ca();
    let p = start(&ca, PortOptions::default()).await;

    // A certificate of another cluster's CA (trusting our CA, so only the client side
    // is wrong): refused by the server's verifier.
    let other = ca_with_our_root(&ca);
    let result = get_with(other, p.addr, "/v1/cluster/join").await;
    let err = result.expect_err("another CA's client got in");
    assert_eq!(
        alert(&err),
        Some(rustls::AlertDescription::UnknownCA),
        "{err}"
    );

    // A denied node: refused at handshake, even on the open path.
    let worker = creds(&ca, "w1", Role::Worker);
    let config = http(&worker);
    assert_eq!(
        get_with(config.clone(), p.addr, "/v1/dispatcher/x")
            .await
            .unwrap()
            .0,
        200
    );
    p.deny.deny(node("w1"));
    let result = get_with(config, p.addr, "/v1/cluster/join").await;
    let err = result.expect_err("a denied node got in");
    assert_eq!(
        alert(&err),
        Some(rustls::AlertDescription::CertificateRevoked),
        "{err}"
    );
}

/// The TLS alert the server sent, if that is why `err` happened.
fn alert(err: &std::io::Error) -> Option<rustls::AlertDescription> {
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => Some(*a),
        _ => None,
    }
}

/// Credentials from a second CA, in a client config that trusts `ours` for the
/// server: the handshake can only fail on the client certificate.
fn ca_with_our_root(ours: &Ca) -> Arc<ClientConfig> {
    let stranger = creds(&ca(), "m9", Role::Manager);
    let mut roots = RootCertStore::empty();
    roots.add(ours.cert().der().clone()).expect("CA root");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
        rustls::pki_types::pem::PemObject::from_pem_slice(stranger.key_pem().as_bytes())
            .expect("key"),
    );
    let mut config = ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![stranger.cert_der().clone()], key)
        .expect("client auth");
    config.alpn_protocols = vec![ALPN_HTTP.to_vec()];
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_denied_closes_open_connections_of_the_node() {
    let ca = ca();
    let p = start(&ca, PortOptions::default()).await;
    let mut w1 = dial(http(&creds(&ca, "w1", Role::Worker)), p.addr)
        .await
        .unwrap();
    let mut w2 = dial(http(&creds(&ca, "w2", Role::Worker)), p.addr)
        .await
        .unwrap();
    assert_eq!(request(&mut w1, "/v1/dispatcher/a").await.unwrap().0, 200);
    assert_eq!(request(&mut w2, "/v1/dispatcher/a").await.unwrap().0, 200);
    assert_eq!(open(&p, "w1", Kind::Http), 1);

    p.deny.deny(node("w1"));
    // The deny list alone only stops new handshakes: w1's open connection still works.
    assert_eq!(request(&mut w1, "/v1/dispatcher/b").await.unwrap().0, 200);
    assert_eq!(p.port.close_denied(&p.deny), 1);
    let closed = request(&mut w1, "/v1/dispatcher/c").await;
    assert!(
        closed.is_err(),
        "w1 still served after close_denied: {closed:?}"
    );
    assert_eq!(open(&p, "w1", Kind::Http), 0);
    // Others are untouched.
    assert_eq!(request(&mut w2, "/v1/dispatcher/c").await.unwrap().0, 200);
}

fn open(p: &TestPort, who: &str, kind: Kind) -> usize {
    p.port
        .connections()
        .iter()
        .filter(|c| c.peer.as_ref() == Some(&node(who)) && c.kind == Some(kind))
        .count()
}

/// A single-voter KV node whose inbox the port delivers into, so the test can count
/// what a Raft connection got through.
fn raft_node(dir: &std::path::Path) -> RaftNode<Kv> {
    bootstrap(dir, &[1], &Kv::default()).expect("bootstrap");
    RaftNode::start(
        NodeConfig::new(1),
        dir,
        Kv::default(),
        manager::state::raft::MemNetwork::new().transport(),
    )
    .expect("start node")
}

fn frame() -> Vec<u8> {
    let mut msg = manager::state::raft::eraftpb::Message::default();
    msg.set_msg_type(manager::state::raft::eraftpb::MessageType::MsgHeartbeat);
    msg.from = 2;
    msg.to = 1;
    let bytes = msg.write_to_bytes().expect("encode");
    let mut out = (bytes.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out
}

async fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_alpn_needs_a_manager_certificate() {
    let ca = ca();
    let p = start(&ca, PortOptions::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let node1 = raft_node(tmp.path());
    p.raft.set(node1.inbox());

    // A manager's frames reach the inbox.
    let config = port::raft_client_config(&creds(&ca, "m2", Role::Manager), &p.deny).unwrap();
    let mut m2 = dial(config, p.addr).await.unwrap();
    m2.write_all(&frame()).await.unwrap();
    m2.write_all(&frame()).await.unwrap();
    m2.flush().await.unwrap();
    assert!(
        wait_for(|| p.port.raft_delivered(&node("m2")) == 2).await,
        "a manager's raft frames were not delivered"
    );
    assert_eq!(open(&p, "m2", Kind::Raft), 1);

    // A worker's and the CLI's are closed without delivering anything.
    for (name, role) in [("w1", Role::Worker), ("cli", Role::Admin)] {
        let config = port::raft_client_config(&creds(&ca, name, role), &p.deny).unwrap();
        let mut s = dial(config, p.addr).await.unwrap();
        // The frame may or may not be written before the close arrives; either way
        // nothing may be delivered, and the server ends the connection.
        let _ = s.write_all(&frame()).await;
        let _ = s.flush().await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{name}: raft connection not closed: {read:?}"
        );
        assert_eq!(p.port.raft_delivered(&node(name)), 0, "{name}");
    }
    // No certificate at all: closed as well.
    let mut s = dial(anonymous(&ca, ALPN_RAFT), p.addr).await.unwrap();
    let _ = s.write_all(&frame()).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");

    // With no node behind the sink (not started yet, or stopped), frames are dropped
    // and the connection stays; once the sink is set again they flow.
    p.raft.clear();
    m2.write_all(&frame()).await.unwrap();
    m2.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(p.port.raft_delivered(&node("m2")), 2);
    p.raft.set(node1.inbox());
    m2.write_all(&frame()).await.unwrap();
    m2.flush().await.unwrap();
    assert!(wait_for(|| p.port.raft_delivered(&node("m2")) == 3).await);

    // With a sender check, a manager may only speak as its own Raft id: m2 is 2, so
    // a frame from m2 claiming to be 3 is dropped, and m2's own still flow.
    p.raft
        .check_senders(std::sync::Arc::new(|sender: &NodeId, from: u64| {
            (sender.as_str(), from) == ("m2", 2)
        }));
    let mut forged = manager::state::raft::eraftpb::Message::default();
    forged.set_msg_type(manager::state::raft::eraftpb::MessageType::MsgHeartbeat);
    forged.from = 3;
    forged.to = 1;
    let bytes = forged.write_to_bytes().expect("encode");
    m2.write_all(&(bytes.len() as u32).to_le_bytes())
        .await
        .unwrap();
    m2.write_all(&bytes).await.unwrap();
    m2.write_all(&frame()).await.unwrap();
    m2.flush().await.unwrap();
    assert!(wait_for(|| p.port.raft_delivered(&node("m2")) == 4).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        p.port.raft_delivered(&node("m2")),
        4,
        "a frame with another member's Raft id was delivered"
    );

    // A manager denied afterwards: its open raft connection is closed.
    p.deny.deny(node("m2"));
    assert_eq!(p.port.close_denied(&p.deny), 1);
    assert!(wait_for(|| open(&p, "m2", Kind::Raft) == 0).await);
    let _ = m2.write_all(&frame()).await;
    let _ = m2.flush().await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, m2.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert_eq!(p.port.raft_delivered(&node("m2")), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let ca = ca();
    let timeout = Duration::from_millis(300);
    let options = PortOptions {
        handshake_timeout: timeout,
        max_handshakes: 2,
        ..PortOptions::default()
    };
    let p = start(&ca, options).await;
    let started = Instant::now();
    // Two silent clients take every handshake slot...
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(p.addr).await.unwrap());
    }
    // ...so a real client behind them waits in the backlog until they are dropped.
    let admin = http(&creds(&ca, "cli", Role::Admin));
    let queued = tokio::spawn(async move {
        let asked = Instant::now();
        let answer = get_with(admin, p.addr, "/v1/state").await;
        (answer, asked.elapsed())
    });
    for s in &mut silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent client was not dropped: {read:?}"
        );
    }
    let waited = started.elapsed();
    assert!(waited >= timeout, "dropped before the timeout: {waited:?}");
    let (answer, took) = queued.await.unwrap();
    assert_eq!(answer.unwrap().0, 200);
    assert!(
        took >= timeout / 2,
        "the cap on handshakes did not hold the third client back: {took:?}"
    );
    assert!(wait_for(|| p.port.connections().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_alpn_is_closed_and_dropping_the_port_closes_everything() {
    let ca = ca();
    let p = start(&ca, PortOptions::default()).await;
    let mut plain = (*http(&creds(&ca, "cli", Role::Admin))).clone();
    plain.alpn_protocols.clear();
    let result = get_with(Arc::new(plain), p.addr, "/v1/state").await;
    assert!(
        result.is_err(),
        "a client without ALPN was served: {result:?}"
    );

    let mut s = dial(http(&creds(&ca, "cli", Role::Admin)), p.addr)
        .await
        .unwrap();
    assert_eq!(request(&mut s, "/v1/state").await.unwrap().0, 200);
    let addr = p.addr;
    drop(p);
    let closed = request(&mut s, "/v1/state").await;
    assert!(
        closed.is_err(),
        "served after the port was dropped: {closed:?}"
    );
    // Nobody accepts any more (the listener is closed once the accept task ends).
    assert!(
        wait_for(|| std::net::TcpStream::connect(addr).is_err()).await,
        "the port still accepts after drop"
    );
}

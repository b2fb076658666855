//! A tiny request/response protocol over real TLS on loopback, to show what the pki
//! crate's configs let through and what they refuse.
//!
//! A request is one line: `whoami`, `raft` (managers only), `control` (managers and
//! admins), or `join <token>` followed by a CSR in PEM and a line `END`. The answer is
//! one line (`ok ...` or `denied: ...`), or for a successful join a certificate in PEM
//! followed by `END`.
#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pki::{access, Ca, CertRequest, Identity, JoinTokens, NodeCredentials, NodeId, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Every network wait in these tests is bounded by this, so a regression fails
/// instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("test node id")
}

/// A second handle on the same CA (a `Ca` is not `Clone`: it holds a private key).
pub fn copy(ca: &Ca) -> Ca {
    Ca::from_pem(&ca.cert().to_pem(), &ca.key_pem()).expect("copy CA")
}

/// Credentials for `name` with `role`, issued by `ca` now.
pub fn creds(ca: &Ca, name: &str, role: Role) -> NodeCredentials {
    ca.issue(
        &CertRequest::new(Identity::new(id(name), role)).address("127.0.0.1"),
        SystemTime::now(),
    )
    .expect("issue test credentials")
}

/// What the server saw of one connection.
#[derive(Debug)]
pub enum Outcome {
    /// The handshake succeeded and the request was answered with this (first line).
    Answered(String),
    /// The handshake failed; the rustls error, if the failure was one.
    Refused {
        message: String,
        tls: Option<rustls::Error>,
    },
}

impl Outcome {
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            Outcome::Refused { tls, .. } => tls.as_ref(),
            Outcome::Answered(_) => None,
        }
    }
}

pub struct ServerState {
    pub ca: Ca,
    pub tokens: Mutex<JoinTokens>,
}

/// A TLS server on 127.0.0.1:<ephemeral>; aborted on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<ServerState>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Serves with `config`; `ca` and tokens answer join requests.
    pub async fn start(config: rustls::ServerConfig, ca: Ca) -> Self {
        let tokens = JoinTokens::generate(ca.digest());
        let state = Arc::new(ServerState {
            ca,
            tokens: Mutex::new(tokens),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, outcomes) = mpsc::unbounded_channel();
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let state = task_state.clone();
                tokio::spawn(async move {
                    let outcome = match acceptor.accept(tcp).await {
                        Ok(stream) => Outcome::Answered(serve(stream, &state).await),
                        Err(e) => Outcome::Refused {
                            message: e.to_string(),
                            tls: rustls_error(&e),
                        },
                    };
                    let _ = tx.send(outcome);
                });
            }
        });
        Self {
            addr,
            state,
            outcomes,
            task,
        }
    }

    /// The outcome of the next connection the server finished with.
    pub async fn outcome(&mut self) -> Outcome {
        tokio::time::timeout(WAIT, self.outcomes.recv())
            .await
            .expect("the server reported no outcome in time")
            .expect("the server task ended")
    }
}

pub fn rustls_error(e: &std::io::Error) -> Option<rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
}

async fn serve(stream: tokio_rustls::server::TlsStream<TcpStream>, state: &ServerState) -> String {
    let (_, conn) = stream.get_ref();
    // Authorize now: the endpoints below answer by these.
    let whoami = pki::authorize(conn, &[Role::Manager, Role::Worker, Role::Admin]);
    let raft = pki::authorize(conn, access::RAFT);
    let control = pki::authorize(conn, access::CONTROL_API);
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    if stream.read_line(&mut line).await.is_err() {
        return "read error".to_string();
    }
    let line = line.trim_end().to_string();
    let answer = match line.split_once(' ').unwrap_or((line.as_str(), "")) {
        ("whoami", _) => match &whoami {
            Ok(who) => format!("ok {} {}", who.id, who.role),
            Err(e) => format!("denied: {e}"),
        },
        ("raft", _) => match raft {
            Ok(_) => "ok raft".to_string(),
            Err(e) => format!("denied: {e}"),
        },
        ("control", _) => match control {
            Ok(_) => "ok control".to_string(),
            Err(e) => format!("denied: {e}"),
        },
        ("join", token) => {
            let csr = read_pem(&mut stream).await;
            join(state, token, &csr)
        }
        // A node renews its certificate: same identity as the verified peer's, new key.
        ("renew", _) => {
            let csr = read_pem(&mut stream).await;
            match whoami {
                Ok(peer) => {
                    match state
                        .ca
                        .sign_csr(&csr, &CertRequest::new(peer), SystemTime::now())
                    {
                        Ok(pem) => format!("{pem}END"),
                        Err(e) => format!("denied: {e}"),
                    }
                }
                Err(e) => format!("denied: {e}"),
            }
        }
        _ => format!("denied: unknown request {line:?}"),
    };
    let _ = stream.get_mut().write_all(answer.as_bytes()).await;
    let _ = stream.get_mut().write_all(b"\n").await;
    let _ = stream.get_mut().shutdown().await;
    answer.lines().next().unwrap_or_default().to_string()
}

/// Lines up to `END`.
async fn read_pem(stream: &mut BufReader<tokio_rustls::server::TlsStream<TcpStream>>) -> String {
    let mut pem = String::new();
    loop {
        let mut l = String::new();
        match stream.read_line(&mut l).await {
            Ok(0) | Err(_) => break,
            Ok(_) if l.trim_end() == "END" => break,
            Ok(_) => pem.push_str(&l),
        }
    }
    pem
}

/// The manager's side of a join, as the daemon will do it.
fn join(state: &ServerState, token: &str, csr: &str) -> String {
    let tokens = state.tokens.lock().expect("tokens lock").clone();
    match pki::join::admit(&state.ca, &tokens, token, csr, &[], SystemTime::now()) {
        Ok((_, pem)) => format!("{pem}END"),
        Err(e) => format!("denied: {e}"),
    }
}

/// Sends one request and returns the whole answer. An error is the client's TLS or
/// I/O error (a refused handshake shows up here, at the latest on the first read).
pub async fn request(
    config: rustls::ClientConfig,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    request: &str,
) -> Result<(String, Option<Identity>), std::io::Error> {
    tokio::time::timeout(WAIT, async move {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut stream = connector.connect(server_name, tcp).await?;
        let server = pki::peer_identity(stream.get_ref().1).ok();
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(b"\n").await?;
        stream.flush().await?;
        let mut answer = String::new();
        let mut reader = BufReader::new(stream);
        loop {
            let mut l = String::new();
            if reader.read_line(&mut l).await? == 0 {
                break;
            }
            answer.push_str(&l);
        }
        if answer.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection without an answer",
            ));
        }
        Ok((answer.trim_end().to_string(), server))
    })
    .await
    .expect("the request did not finish in time")
}

/// A client config that trusts `trust`'s CA but presents `present`'s certificate:
/// to show a server refusing a certificate from another CA, whatever the client trusts.
pub fn mixed_client_config(
    trust: &NodeCredentials,
    present: Option<&NodeCredentials>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(trust.ca().der().clone())
        .expect("add trust anchor");
    let builder = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots);
    match present {
        None => builder.with_no_client_auth(),
        Some(creds) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(creds.cert_der().to_vec())],
                PrivateKeyDer::from_pem_slice(creds.key_pem().as_bytes()).expect("key pem"),
            )
            .expect("client auth cert"),
    }
}

/// `der` as PEM with `label`, one base64 line (the parser accepts any line length).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut body = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                body.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                body.push('=');
            }
        }
    }
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
}

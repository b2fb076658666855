//! The CLI's side of the API: HTTP/1.1 over the daemon's unix socket, small enough to
//! need no async runtime in the CLI (a request per command; streamed bodies are read
//! as they come, chunked or not). One exception, [`Client::upgrade`]: an HTTP/1.1
//! upgrade (exec's session) is async, so that its stream can be read and written at
//! once over TLS, and a daemon can relay it to another node's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where the API is: the local daemon's unix socket, or a manager's cluster port over
/// mutual TLS (a remote CLI with an admin certificate, or a node calling a manager).
#[derive(Clone)]
pub struct Client {
    pub target: Target,
    /// How long a read may wait (None: forever, for streams like `logs -f`).
    pub timeout: Option<Duration>,
}

#[derive(Clone)]
pub enum Target {
    Unix(PathBuf),
    Tls {
        addr: String,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    },
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Unix(p) => write!(f, "Client(unix:{})", p.display()),
            Target::Tls { addr, .. } => write!(f, "Client(tls:{addr})"),
        }
    }
}

/// A byte stream to the API: a unix socket or a TLS session over TCP.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// How long a remote manager gets to accept a connection and finish the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A response whose body is read as it arrives.
pub struct Response {
    pub status: u16,
    pub body: Box<dyn BufRead>,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            target: Target::Unix(socket.to_path_buf()),
            timeout: None,
        }
    }

    /// Reads give up after `timeout`: for calls between nodes, which must never hang
    /// on a peer that paused or was cut off mid-answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = Some(timeout);
        self
    }

    /// A client of the manager at `addr` (`host:port`) over mutual TLS with `config`,
    /// expecting the server's certificate to be valid for `server_name`.
    pub fn tls(
        addr: &str,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Client {
        Client {
            target: Target::Tls {
                addr: addr.to_string(),
                config,
                server_name,
            },
            timeout: None,
        }
    }

    fn connect(&self) -> anyhow::Result<Box<dyn Stream>> {
        match &self.target {
            Target::Unix(socket) => {
                let s = UnixStream::connect(socket).with_context(|| {
                    format!(
                        "no berth daemon answers on {} (berth up starts one; or run berth daemon)",
                        socket.display()
                    )
                })?;
                Ok(Box::new(s))
            }
            Target::Tls {
                addr,
                config,
                server_name,
            } => {
                let sock = addr
                    .to_socket_addrs()
                    .with_context(|| format!("resolve the manager address {addr}"))?
                    .next()
                    .with_context(|| format!("the manager address {addr} resolves to nothing"))?;
                let tcp = TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT)
                    .with_context(|| format!("no berth manager answers on {addr}"))?;
                tcp.set_nodelay(true)?;
                tcp.set_read_timeout(Some(CONNECT_TIMEOUT))?;
                let conn = rustls::ClientConnection::new(config.clone(), server_name.clone())
                    .context("start a TLS session")?;
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                // Finish the handshake now, so a refusal is reported as one and not as a
                // broken request.
                while tls.conn.is_handshaking() {
                    tls.conn
                        .complete_io(&mut tls.sock)
                        .map_err(|e| handshake_error(addr, e))?;
                }
                tls.sock.set_read_timeout(self.timeout)?;
                Ok(Box::new(tls))
            }
        }
    }

    /// Whether a daemon answers on the socket.
    pub fn ping(&self) -> bool {
        self.request("GET", "/v1/ping", None)
            .is_ok_and(|r| r.status == 200)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response> {
        let mut stream = self.connect()?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // With TLS 1.3 a server that refuses the client's certificate says so after the
        // client's side of the handshake is done: here, at the first read.
        reader
            .read_line(&mut line)
            .map_err(|e| match &self.target {
                Target::Tls { addr, .. } => handshake_error(addr, e),
                Target::Unix(_) => anyhow::Error::new(e).context("read the daemon's answer"),
            })?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("the daemon answered {line:?}, not HTTP"))?;
        let mut chunked = false;
        let mut length: Option<u64> = None;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if k == "content-length" {
                    length = v.parse().ok();
                }
            }
        }
        let body: Box<dyn BufRead> = if chunked {
            Box::new(BufReader::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            }))
        } else if let Some(n) = length {
            Box::new(BufReader::new(reader.take(n)))
        } else {
            Box::new(reader)
        };
        Ok(Response { status, body })
    }

    /// A JSON request with a JSON answer; an error answer becomes the daemon's message.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let bytes = body.map(serde_json::to_vec).transpose()?;
        let mut resp = self.request(method, path, bytes)?;
        let mut text = String::new();
        resp.body.read_to_string(&mut text)?;
        if resp.status >= 400 {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or(text);
            bail!("{message}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("the daemon's answer to {method} {path}"))
    }
}

/// The answer to [`Client::upgrade`].
pub enum Upgrade {
    /// `101 Switching Protocols`: the connection is the new protocol's.
    Switched(manager::api::exec::ExecStream),
    /// Any other answer: its status and the daemon's message.
    Refused { status: u16, message: String },
}

/// How long the answer to an upgrade request may take (the command is started
/// before it, on another node maybe).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// An answer's head larger than this is not one of ours.
const MAX_HEAD: usize = 16 << 10;
/// A refusal's body larger than this is cut.
const MAX_REFUSAL: u64 = 64 << 10;

impl Client {
    /// `POST path` with the JSON `body`, asking to switch the connection to `protocol`
    /// (an HTTP/1.1 upgrade), on the current tokio runtime.
    pub async fn upgrade(
        &self,
        path: &str,
        protocol: &str,
        body: &[u8],
    ) -> anyhow::Result<Upgrade> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, addr): (manager::api::exec::ExecStream, Option<&str>) = match &self.target
        {
            Target::Unix(socket) => {
                let s = tokio::net::UnixStream::connect(socket)
                    .await
                    .with_context(|| format!("no berth daemon answers on {}", socket.display()))?;
                (Box::new(s), None)
            }
            Target::Tls {
                addr,
                config,
                server_name,
            } => {
                let tcp = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::TcpStream::connect(addr.as_str()),
                )
                .await
                .map_err(|_| anyhow::anyhow!("no berth node answers on {addr} (timed out)"))?
                .with_context(|| format!("no berth node answers on {addr}"))?;
                tcp.set_nodelay(true)?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    connector.connect(server_name.clone(), tcp),
                )
                .await
                .map_err(|_| anyhow::anyhow!("TLS with {addr} timed out"))?
                .map_err(|e| handshake_error(addr, e))?;
                (Box::new(tls), Some(addr.as_str()))
            }
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: berth\r\nConnection: Upgrade\r\n\
             Upgrade: {protocol}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await?;
        // Byte by byte: what follows the head is the new protocol's, and must stay in
        // the stream. A node that never answers (paused, cut off) is given up on.
        let mut answer = Vec::new();
        let read_head = async {
            while !answer.ends_with(b"\r\n\r\n") {
                if answer.len() > MAX_HEAD {
                    bail!("the daemon's answer to POST {path} has no end to its head");
                }
                let byte = stream.read_u8().await.map_err(|e| match addr {
                    // A server that refuses the client's certificate says so here.
                    Some(addr) => handshake_error(addr, e),
                    None => anyhow::Error::new(e).context("read the daemon's answer"),
                })?;
                answer.push(byte);
            }
            Ok(())
        };
        tokio::time::timeout(HEAD_TIMEOUT, read_head)
            .await
            .map_err(|_| anyhow::anyhow!("no answer to POST {path} in {HEAD_TIMEOUT:?}"))??;
        let head = String::from_utf8_lossy(&answer);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("the daemon answered {status_line:?}, not HTTP"))?;
        if status == 101 {
            return Ok(Upgrade::Switched(stream));
        }
        let length = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<u64>().ok());
        let mut text = Vec::new();
        let _ = stream
            .take(length.unwrap_or(MAX_REFUSAL).min(MAX_REFUSAL))
            .read_to_end(&mut text)
            .await;
        let text = String::from_utf8_lossy(&text).into_owned();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(text);
        Ok(Upgrade::Refused { status, message })
    }
}

/// A failed TLS handshake, said the way a user can act on.
fn handshake_error(addr: &str, e: std::io::Error) -> anyhow::Error {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let why = match tls {
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)) => {
            "the manager refused this node's certificate: the node was removed from the cluster"
                .to_string()
        }
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::CertificateRequired,
        )) => "the manager refused this client's certificate (is it from this cluster's CA?)"
            .to_string(),
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!(
                "the manager's certificate is not valid for this client: {c:?} (another cluster?)"
            )
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    };
    anyhow::anyhow!("TLS with the manager at {addr} failed: {why}")
}

/// Reads an HTTP/1.1 chunked body.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF after the previous chunk.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size {size:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let max = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            self.done = true;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

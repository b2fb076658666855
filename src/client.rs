//! The CLI's side of the API: HTTP/1.1 over the daemon's unix socket, small enough to
//! need no async runtime in the CLI (a request per command; streamed bodies are read
//! as they come, chunked or not). One exception, [`Client::upgrade`]: an HTTP/1.1
//! upgrade (exec's session) is async, so that its stream can be read and written at
//! once over TLS, and a daemon can relay it to another node's.
//!
//! The same client carries calls between nodes over mutual TLS. Those whose answer is
//! read whole ([`Client::fetch`], and [`Client::call`] on it: heartbeats, the
//! dispatcher's polls and status batches) keep their connection for the next request
//! to the same manager ([`keepalive`]); a streamed answer ([`Client::request`]), an
//! upgrade and everything on the unix socket use a connection once (`Connection:
//! close`).

mod keepalive;
#[cfg(test)]
mod tests;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Whether every request of this client may be sent twice (see
    /// [`Client::idempotent`]).
    idempotent: bool,
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
            idempotent: false,
        }
    }

    /// Reads give up after `timeout`: for calls between nodes, which must never hang
    /// on a peer that paused or was cut off mid-answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = Some(timeout);
        self
    }

    /// Says that every request of this client is safe to send twice. A request on a
    /// kept connection that the server closed meanwhile (idle timeout, restart, a
    /// removed node's connections closed) fails before any answer arrives; it is then
    /// sent again on a fresh connection. GET, HEAD, PUT, DELETE and OPTIONS are sent
    /// again anyway (idempotent by HTTP's rules); a POST only from a client marked so,
    /// since the server may have acted on it before the connection went.
    pub fn idempotent(mut self) -> Client {
        self.idempotent = true;
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
            idempotent: false,
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
                let tls = connect_tls(addr, config, server_name)?;
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

    /// A request on a connection of its own, whose answer is read as it arrives (a
    /// stream, a blob); the connection is closed after it.
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
        let head = Head::read(&line, &mut reader)?;
        let body: Box<dyn BufRead> = if head.chunked {
            Box::new(BufReader::new(Chunked::new(reader)))
        } else if let Some(n) = head.length {
            Box::new(BufReader::new(reader.take(n)))
        } else {
            Box::new(reader)
        };
        Ok(Response {
            status: head.status,
            body,
        })
    }

    /// A request whose answer is read whole: its status and body. Over mutual TLS
    /// the connection is kept for the next request to the same address with the same
    /// TLS settings, if the answer left it clean ([`keepalive`]); on the unix socket
    /// it is [`Client::request`] read to its end.
    pub fn fetch(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, String)> {
        let Target::Tls {
            addr,
            config,
            server_name,
        } = &self.target
        else {
            let mut resp = self.request(method, path, body)?;
            let mut text = String::new();
            resp.body.read_to_string(&mut text)?;
            return Ok((resp.status, text));
        };
        let body = body.unwrap_or_default();
        let key = keepalive::Key::new(addr, config, server_name);
        let mut kept = None;
        while let Some((mut tls, opened)) = KEPT.take(&key, Instant::now()) {
            if keepalive::still_open(&mut tls) {
                kept = Some((tls, opened));
                break;
            }
        }
        let mut answered = None;
        if let Some((mut tls, opened)) = kept {
            match self.exchange(&mut tls, method, path, &body) {
                Ok(answer) => answered = Some((answer, tls, opened)),
                // The server closed the connection between `still_open` and the
                // request, before answering: most likely it never read the request, but
                // it may have acted on it and died before its answer went out. So the
                // request goes again on a fresh connection only if it is safe to repeat:
                // by its method, or because the caller said so (heartbeats, status
                // batches: see their callers).
                Err(Failure::BeforeAnswer(e)) if closed(&e) && self.may_repeat(method) => {}
                Err(Failure::BeforeAnswer(e)) if closed(&e) => bail!(
                    "the manager at {addr} closed the connection before answering \
                     {method} {path}: it may or may not have done it"
                ),
                Err(Failure::BeforeAnswer(e)) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("no answer to {method} {path} from {addr}")))
                }
                Err(Failure::After(e)) => return Err(e),
            }
        }
        let ((status, text, reusable), tls, opened) = match answered {
            Some(answered) => answered,
            None => {
                let mut tls = connect_tls(addr, config, server_name)?;
                let opened = Instant::now();
                match self.exchange(&mut tls, method, path, &body) {
                    Ok(answer) => (answer, tls, opened),
                    // With TLS 1.3 a server that refuses the client's certificate says
                    // so after the client's side of the handshake is done: here.
                    Err(Failure::BeforeAnswer(e)) => return Err(handshake_error(addr, e)),
                    Err(Failure::After(e)) => return Err(e),
                }
            }
        };
        if reusable {
            KEPT.put(key, tls, opened, Instant::now());
        }
        Ok((status, text))
    }

    fn may_repeat(&self, method: &str) -> bool {
        self.idempotent || matches!(method, "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS")
    }

    /// One request and its whole answer on `tls`, which may have carried others: the
    /// status, the body, and whether the connection may carry the next request.
    fn exchange(
        &self,
        tls: &mut keepalive::TlsStream,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, String, bool), Failure> {
        let after = |e: std::io::Error| Failure::After(e.into());
        // Each request's own limits, whatever the connection's last request had.
        tls.sock
            .set_read_timeout(self.timeout)
            .and_then(|()| tls.sock.set_write_timeout(self.timeout))
            .map_err(after)?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: berth\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        // rustls' `write` buffers and ignores socket errors: `flush` reports them.
        tls.write_all(&request)
            .and_then(|()| tls.flush())
            .map_err(Failure::BeforeAnswer)?;
        let mut reader = BufReader::new(&mut *tls);
        loop {
            match reader.fill_buf() {
                Ok([]) => {
                    return Err(Failure::BeforeAnswer(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection closed before an answer",
                    )))
                }
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::BeforeAnswer(e)),
            }
        }
        let mut line = String::new();
        reader.read_line(&mut line).map_err(after)?;
        let head = Head::read(&line, &mut reader).map_err(Failure::After)?;
        let (body, complete) = head.read_body(&mut reader, method).map_err(after)?;
        // Bytes past the answer would be taken for the next answer's.
        let clean = reader.buffer().is_empty();
        drop(reader);
        let reusable = complete && clean && head.keep_alive() && keepalive::nothing_pending(tls);
        let text = String::from_utf8(body).map_err(|_| {
            Failure::After(anyhow::anyhow!(
                "the answer to {method} {path} is not UTF-8 text"
            ))
        })?;
        Ok((head.status, text, reusable))
    }

    /// A JSON request with a JSON answer; an error answer becomes the daemon's message.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let bytes = body.map(serde_json::to_vec).transpose()?;
        let (status, text) = self.fetch(method, path, bytes)?;
        if status >= 400 {
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

/// The idle connections of every [`Client`] of this process.
static KEPT: keepalive::Pool<keepalive::TlsStream> = keepalive::Pool::new();

/// How a request on a connection failed.
enum Failure {
    /// Before any byte of an answer arrived: writing the request, or waiting for the
    /// answer's first byte.
    BeforeAnswer(std::io::Error),
    /// Later: the answer is not one, or was cut off.
    After(anyhow::Error),
}

/// Whether `e` says the connection is gone (as opposed to a timeout, or a TLS error).
fn closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected
    )
}

/// A TCP connection to `addr` and a finished mutual-TLS handshake on it.
fn connect_tls(
    addr: &str,
    config: &Arc<rustls::ClientConfig>,
    server_name: &rustls::pki_types::ServerName<'static>,
) -> anyhow::Result<keepalive::TlsStream> {
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
    // Finish the handshake now, so a refusal is reported as one and not as a broken
    // request.
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| handshake_error(addr, e))?;
    }
    Ok(tls)
}

/// An answer's status line and the headers its framing and connection depend on.
struct Head {
    status: u16,
    /// HTTP/1.1, whose connections persist unless one side says otherwise.
    http11: bool,
    /// `Transfer-Encoding: chunked`.
    chunked: bool,
    /// `Content-Length`, the last one given.
    length: Option<u64>,
    /// Framing this client does not read (another transfer coding, conflicting
    /// lengths): the body runs to the connection's end.
    unframed: bool,
    /// The server said `Connection: close`.
    close: bool,
}

impl Head {
    /// The head whose status line is `line`, its headers read from `reader`.
    fn read(line: &str, reader: &mut impl BufRead) -> anyhow::Result<Head> {
        let mut words = line.split_whitespace();
        let version = words.next().unwrap_or_default();
        let status: u16 = words
            .next()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("the daemon answered {line:?}, not HTTP"))?;
        let mut head = Head {
            status,
            http11: version == "HTTP/1.1",
            chunked: false,
            length: None,
            unframed: false,
            close: false,
        };
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((k, v)) = header.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" {
                if v.eq_ignore_ascii_case("chunked") {
                    head.chunked = true;
                } else {
                    head.unframed = true;
                }
            } else if k == "content-length" {
                let n = v.parse().ok();
                if n.is_none() || head.length.is_some_and(|l| Some(l) != n) {
                    head.unframed = true;
                }
                head.length = n;
            } else if k == "connection" {
                head.close |= v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
            }
        }
        Ok(head)
    }

    /// Whether the server lets the connection carry another request.
    fn keep_alive(&self) -> bool {
        self.http11 && !self.close
    }

    /// The body of the answer to `method`, read from `reader` to its end, and whether
    /// that end was the framed one (the connection then stands at the next answer's
    /// first byte) rather than a cut or the connection's end.
    fn read_body(
        &self,
        reader: &mut impl BufRead,
        method: &str,
    ) -> std::io::Result<(Vec<u8>, bool)> {
        let mut body = Vec::new();
        // An interim or switching answer: not one this client can read past.
        if self.status < 200 {
            return Ok((body, false));
        }
        // No body, whatever the headers say (RFC 9112, 6.3): the dispatcher's "no
        // change" is a 204 with neither length nor chunks.
        if method == "HEAD" || self.status == 204 || self.status == 304 {
            return Ok((body, true));
        }
        if self.unframed {
            reader.read_to_end(&mut body)?;
            return Ok((body, false));
        }
        if self.chunked {
            let mut chunks = Chunked::new(reader);
            chunks.read_to_end(&mut body)?;
            return Ok((body, chunks.complete));
        }
        if let Some(n) = self.length {
            reader.take(n).read_to_end(&mut body)?;
            let complete = body.len() as u64 == n;
            return Ok((body, complete));
        }
        reader.read_to_end(&mut body)?;
        Ok((body, false))
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
    /// The last chunk and the trailer section after it were read: the body ended as
    /// framed, not cut off.
    complete: bool,
}

impl<R> Chunked<R> {
    fn new(inner: R) -> Chunked<R> {
        Chunked {
            inner,
            left: 0,
            done: false,
            complete: false,
        }
    }
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
                // The trailer section, to its empty line: only then does the
                // connection stand at the next answer.
                loop {
                    line.clear();
                    if self.inner.read_line(&mut line)? == 0 {
                        break;
                    }
                    if line.trim_end().is_empty() {
                        self.complete = true;
                        break;
                    }
                }
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

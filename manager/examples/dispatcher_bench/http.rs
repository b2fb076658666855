//! A minimal HTTP/1.1 client: one request at a time on one connection, the answer read
//! by its Content-Length (or chunks, or to the end when the server closes). Enough for
//! the API's JSON answers, over the daemon's unix socket or a TLS session on the
//! cluster port; hyper's client would need the manager to build hyper again with
//! another feature set.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// One HTTP/1.1 connection.
pub struct Http<S> {
    io: S,
    buf: Vec<u8>,
}

/// A connection to a manager's cluster port.
pub type Tls = Http<TlsStream<TcpStream>>;

/// A mutual-TLS connection to the manager at `addr`, handshake done, with `config`
/// (its ALPN must be `http/1.1`).
pub async fn tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    // As berth's own client: a request must not wait for Nagle.
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(config)
        .connect(pki::tls::manager_server_name(), tcp)
        .await?;
    Ok(Http::new(tls))
}

/// A connection to the daemon's API socket.
pub async fn unix(socket: &Path) -> io::Result<Http<UnixStream>> {
    Ok(Http::new(UnixStream::connect(socket).await?))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Http<S> {
    fn new(io: S) -> Self {
        Http {
            io,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends one request and reads its answer: (status, body). `close` asks the server
    /// to close the connection after answering (berth's own client always does).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        close: bool,
    ) -> io::Result<(u16, Vec<u8>)> {
        let body = body.unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.io.write_all(&req).await?;
        self.io.flush().await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill().await? == 0 {
                return Err(eof("before the answer's headers"));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("not an HTTP answer: {head:?}")))?;
        let (mut length, mut chunked) = (None, false);
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse::<usize>().ok();
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let body = if status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else if chunked {
            self.chunked().await?
        } else if let Some(n) = length {
            self.exactly(n).await?
        } else {
            while self.fill().await? > 0 {}
            std::mem::take(&mut self.buf)
        };
        Ok((status, body))
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 << 10];
        let n = self.io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn exactly(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(eof("in the answer's body"));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> io::Result<String> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                break i;
            }
            if self.fill().await? == 0 {
                return Err(eof("in a chunked body"));
            }
        };
        let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 2);
        Ok(line)
    }

    async fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(out);
            }
            out.extend(self.exactly(size).await?);
            self.line().await?;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn eof(where_: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the server closed the connection {where_}"),
    )
}

fn bad(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

//! What the PKI costs: CA creation, certificate issuance, and a full mutual-TLS
//! handshake over loopback (berth disables resumption; the resumed figure shows what
//! that choice gives up).
//!
//! Run: `cargo run --release -p pki --example handshake [connections]`

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pki::tls::{client_config, manager_server_name, server_config};
use pki::{Ca, CertRequest, ClientAuth, DenyList, Identity, NodeId, NodeKey, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn time<T>(runs: u32, mut f: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(f());
    }
    start.elapsed() / runs
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let connections: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let now = SystemTime::now();
    let create = time(20, || Ca::create(now).map(|_| ()));
    let ca = Ca::create(now)?;
    let req = CertRequest::new(Identity::new(NodeId::new("n1")?, Role::Worker));
    let issue = time(200, || ca.issue(&req, now).map(|_| ()));
    let key = NodeKey::generate()?;
    let csr = key.csr_pem()?;
    let sign = time(200, || ca.sign_csr(&csr, &req, now).map(|_| ()));
    println!("CA create     {:>8.1} us", create.as_secs_f64() * 1e6);
    println!("issue (+key)  {:>8.1} us", issue.as_secs_f64() * 1e6);
    println!("sign CSR      {:>8.1} us", sign.as_secs_f64() * 1e6);

    let manager = ca.issue(
        &CertRequest::new(Identity::new(NodeId::new("m1")?, Role::Manager)),
        now,
    )?;
    let worker = ca.issue(&req, now)?;
    let deny = DenyList::new();
    for (resumed, nodelay) in [(false, false), (false, true), (true, true)] {
        let mut server = server_config(&manager, ClientAuth::Required, &deny)?;
        let mut client = client_config(&worker, &deny)?;
        if resumed {
            server.session_storage = rustls::server::ServerSessionMemoryCache::new(256);
            server.send_tls13_tickets = 2;
            client.resumption = rustls::client::Resumption::default();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let serve = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                // Without it a full handshake takes ~40 ms: the client's certificate
                // flight and its first write meet Nagle and the server's delayed ACK.
                let _ = tcp.set_nodelay(nodelay);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut byte = [0u8; 1];
                        if tls.read_exact(&mut byte).await.is_ok() {
                            let _ = tls.write_all(&byte).await;
                            let _ = tls.shutdown().await;
                        }
                    }
                });
            }
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let mut latencies = Vec::with_capacity(connections);
        let start = Instant::now();
        for _ in 0..connections {
            let t = Instant::now();
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(nodelay)?;
            let mut tls = connector.connect(manager_server_name(), tcp).await?;
            // One byte each way: the server has verified the client when it answers.
            tls.write_all(b"x").await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            latencies.push(t.elapsed());
        }
        let total = start.elapsed();
        serve.abort();
        latencies.sort();
        println!(
            "mTLS connect + 1-byte echo, {connections} sequential, {:<22} p50 {:.0} us, p99 {:.0} us, {:.0} connections/s",
            match (resumed, nodelay) {
                (false, false) => "full, Nagle on:",
                (false, true) => "full, TCP_NODELAY:",
                (true, _) => "resumed, TCP_NODELAY:",
            },
            percentile(&latencies, 0.5).as_secs_f64() * 1e6,
            percentile(&latencies, 0.99).as_secs_f64() * 1e6,
            connections as f64 / total.as_secs_f64(),
        );
    }
    Ok(())
}

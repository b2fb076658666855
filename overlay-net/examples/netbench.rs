//! Benchmarks for the networking issue (run as root; see bench/net.sh):
//!
//! - attach: time of `NetworkManager::attach` per container (namespace, veth, address,
//!   routes, DNS registration) and of `detach`;
//! - dns: queries per second and latency percentiles against berth's DNS server, from
//!   inside a container's network namespace (through its veth and the bridge);
//! - ports: a published port through nftables DNAT vs a minimal userspace proxy
//!   (thread per connection), for connect+request+reply round trips from loopback.
//!
//! Everything is made under a prefix of its own and collected at the end.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use overlay_net::dns::query_a;
use overlay_net::ipam::{Pool, Subnet};
use overlay_net::{AttachRequest, NetConfig, NetworkManager, NetworkRequest};
use spec::model::{Port, PortMode, PortRange, Protocol, ServiceNetwork};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    println!(
        "{what}: n={} mean={:.3}ms p50={:.3}ms p99={:.3}ms",
        v.len(),
        mean.as_secs_f64() * 1e3,
        pct(&v, 0.5).as_secs_f64() * 1e3,
        pct(&v, 0.99).as_secs_f64() * 1e3
    );
}

fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = std::fs::File::open(netns).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let state = tempfile::tempdir()?;
    let netns = tempfile::tempdir()?;
    let mut cfg = NetConfig::new(state.path());
    cfg.prefix = "bnch".into();
    cfg.netns_dir = netns.path().to_path_buf();
    cfg.pool = Pool {
        ranges: vec![Subnet::new(Ipv4Addr::new(10, 250, 0, 0), 16)],
        len: 24,
    };
    cfg.upstream = Some(Vec::new());
    let mgr = NetworkManager::open(cfg)?;
    // What an interrupted earlier run left behind (same prefix, lost state dir).
    mgr.gc(&[], &[])?;
    let result = run(&mgr, n);
    mgr.gc(&[], &[])?;
    result
}

fn run(mgr: &NetworkManager, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let net = mgr.ensure_network(&NetworkRequest {
        name: "bench_default".into(),
        project: "bench".into(),
        internal: false,
        ipam: None,
        enable_ipv6: false,
        ipam6: None,
    })?;
    let mut attach = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("bench-{i}");
        let req = AttachRequest {
            container_id: id.clone(),
            container_name: format!("bench-app-{i}"),
            project: "bench".into(),
            service: "app".into(),
            networks: vec![(net.name.clone(), ServiceNetwork::default())],
            healthy: true,
            ..AttachRequest::default()
        };
        let t = Instant::now();
        mgr.attach(&req)?;
        attach.push(t.elapsed());
        ids.push(id);
    }
    report(
        "attach (netns + veth + address + route + DNS record)",
        attach,
    );

    // DNS from inside the first container's namespace.
    let netns = mgr_netns(mgr, &ids[0]);
    let server = SocketAddr::new(net.addressing.gateway.into(), 53);
    let latency = in_netns(&netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let mut v = Vec::new();
        for i in 0..20_000u32 {
            let t = Instant::now();
            query_a(&s, server, "app", i as u16)
                .expect("query")
                .expect("answer");
            v.push(t.elapsed());
        }
        v
    })
    .join()
    .expect("dns thread");
    report(
        "dns sequential query latency (service with 50 tasks)",
        latency,
    );
    for clients in [1usize, 2, 4, 8] {
        let dur = Duration::from_secs(2);
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                in_netns(&netns, move || {
                    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                    s.set_read_timeout(Some(Duration::from_secs(1)))
                        .expect("timeout");
                    let start = Instant::now();
                    let mut lat = Vec::new();
                    let mut id = 0u16;
                    while start.elapsed() < dur {
                        id = id.wrapping_add(1);
                        let t = Instant::now();
                        if let Ok(Ok(_)) = query_a(&s, server, "app", id) {
                            lat.push(t.elapsed());
                        }
                    }
                    lat
                })
            })
            .collect();
        let mut all: Vec<Duration> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("client"))
            .collect();
        all.sort();
        println!(
            "dns load: {clients} clients in lockstep -> {:.0} qps, p50={:.3}ms p99={:.3}ms",
            all.len() as f64 / dur.as_secs_f64(),
            pct(&all, 0.5).as_secs_f64() * 1e3,
            pct(&all, 0.99).as_secs_f64() * 1e3
        );
    }

    let t = Instant::now();
    for id in &ids[1..] {
        mgr.detach(id)?;
    }
    report("detach", vec![t.elapsed() / (n as u32 - 1).max(1)]);

    ports(mgr, &ids[0])?;
    Ok(())
}

fn mgr_netns(mgr: &NetworkManager, id: &str) -> std::path::PathBuf {
    mgr.config()
        .netns_dir
        .join(format!("{}-{id}", mgr.config().prefix))
}

/// An echo-ish server in the container's namespace: reads a line, writes it back.
fn serve(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = stream;
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf) {
                let _ = s.write_all(&buf[..n]);
            }
        });
    }
}

/// The userspace alternative: accept on the host, connect to the container, copy.
fn proxy(listener: TcpListener, target: SocketAddr) {
    for client in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let Ok(upstream) = TcpStream::connect(target) else {
                return;
            };
            let (mut c1, mut u1) = (
                client.try_clone().expect("clone"),
                upstream.try_clone().expect("clone"),
            );
            let t = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut u1);
                let _ = u1.shutdown(std::net::Shutdown::Write);
            });
            let (mut c2, mut u2) = (client, upstream);
            let _ = std::io::copy(&mut u2, &mut c2);
            let _ = c2.shutdown(std::net::Shutdown::Write);
            let _ = t.join();
        });
    }
}

fn round_trips(addr: SocketAddr, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"ping\n").expect("write");
            let mut buf = [0u8; 8];
            let got = s.read(&mut buf).expect("read");
            assert_eq!(&buf[..got], b"ping\n");
            t.elapsed()
        })
        .collect()
}

fn throughput(addr: SocketAddr) -> f64 {
    // One connection, 256 MiB each way through a sink: the server side here echoes
    // only 64 bytes, so measure upload into a discard server instead.
    let mut s = TcpStream::connect(addr).expect("connect");
    let chunk = vec![0u8; 1 << 16];
    let t = Instant::now();
    let total = 256usize << 20;
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).expect("write");
        sent += chunk.len();
    }
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    (total as f64 / (1 << 20) as f64) / t.elapsed().as_secs_f64()
}

fn ports(mgr: &NetworkManager, id: &str) -> Result<(), Box<dyn std::error::Error>> {
    let netns = mgr_netns(mgr, id);
    let echo = in_netns(&netns, || {
        TcpListener::bind("0.0.0.0:7000").expect("bind echo")
    })
    .join()
    .expect("netns");
    let sink = in_netns(&netns, || {
        TcpListener::bind("0.0.0.0:7001").expect("bind sink")
    })
    .join()
    .expect("netns");
    std::thread::spawn(move || serve(echo));
    std::thread::spawn(move || {
        for s in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            });
        }
    });
    // Free on IPv4 and IPv6: publishing binds both (the IPv6 side is berth's relay).
    let probe = |p: u16| TcpListener::bind(("::", p)).is_ok();
    let (dnat_echo, dnat_sink) = (17000u16, 17001u16);
    assert!(
        probe(dnat_echo) && probe(dnat_sink),
        "ports 17000/17001 must be free"
    );
    let port = |published: u16, target: u16| Port {
        name: None,
        target,
        published: Some(PortRange::single(published)),
        host_ip: None,
        protocol: Protocol::Tcp,
        mode: PortMode::Ingress,
        app_protocol: None,
    };
    let published = mgr.publish(id, "bench", &[port(dnat_echo, 7000), port(dnat_sink, 7001)])?;
    let ip = published[0].container_ip;
    let proxy_echo = TcpListener::bind("127.0.0.1:0")?;
    let proxy_sink = TcpListener::bind("127.0.0.1:0")?;
    let (pe, ps) = (proxy_echo.local_addr()?, proxy_sink.local_addr()?);
    std::thread::spawn(move || proxy(proxy_echo, SocketAddr::new(ip.into(), 7000)));
    std::thread::spawn(move || proxy(proxy_sink, SocketAddr::new(ip.into(), 7001)));
    let direct = SocketAddr::new(ip.into(), 7000);
    let dnat = SocketAddr::from((Ipv4Addr::LOCALHOST, dnat_echo));
    // Warm up, then measure each path.
    round_trips(dnat, 100);
    round_trips(pe, 100);
    for (what, addr) in [
        ("direct to container", direct),
        ("nftables DNAT via 127.0.0.1", dnat),
        ("userspace proxy via 127.0.0.1", pe),
        (
            "berth's IPv6 relay via [::1]",
            SocketAddr::from((Ipv6Addr::LOCALHOST, dnat_echo)),
        ),
    ] {
        let t = Instant::now();
        let v = round_trips(addr, 2000);
        let rate = 2000.0 / t.elapsed().as_secs_f64();
        println!("ports {what}: {rate:.0} connections/s");
        report(&format!("ports {what}: connect+echo"), v);
    }
    for (what, addr) in [
        ("direct to container", SocketAddr::new(ip.into(), 7001)),
        (
            "nftables DNAT via 127.0.0.1",
            SocketAddr::from((Ipv4Addr::LOCALHOST, dnat_sink)),
        ),
        ("userspace proxy via 127.0.0.1", ps),
        (
            "berth's IPv6 relay via [::1]",
            SocketAddr::from((Ipv6Addr::LOCALHOST, dnat_sink)),
        ),
    ] {
        println!("ports {what}: throughput {:.0} MiB/s", throughput(addr));
    }
    Ok(())
}

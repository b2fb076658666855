//! Container networking on the real kernel, as root: busybox containers run by
//! `agent::runtime::run` in network namespaces made by `overlay_net::NetworkManager`.
//!
//! Every test makes its own manager with a prefix unique to it (`testkit::netns`),
//! its own address pool and state directory; the `TestNet` guard garbage-collects
//! everything of that prefix when dropped, even after a failure, and containers are
//! stopped (a `/stop` file their script waits for) before that.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent::runtime::{self, Bundle, RunOptions, Stdio};
use oci_spec::runtime::LinuxNamespaceType;
use overlay_net::dns::{query_a, query_aaaa, DnsServer, Endpoint};
use overlay_net::ipam::{Pool, Subnet};
use overlay_net::{
    AttachRequest, Attachment, NetConfig, NetworkInfo, NetworkManager, NetworkRequest,
};
use spec::model::{Port, PortMode, PortRange, Protocol, ServiceNetwork};

/// A manager with its own prefix, pool, state and netns directories; removes
/// everything of its prefix on drop.
struct TestNet {
    mgr: NetworkManager,
    prefix: String,
    _state: tempfile::TempDir,
    netns: tempfile::TempDir,
}

fn config(
    prefix: &str,
    state: &Path,
    netns: &Path,
    upstream: Option<Vec<SocketAddr>>,
) -> NetConfig {
    let mut cfg = NetConfig::new(state);
    cfg.prefix = prefix.to_string();
    cfg.netns_dir = netns.to_path_buf();
    cfg.pool = Pool {
        ranges: vec![Subnet::new(
            Ipv4Addr::new(10, testkit::netns::pool_octet(), 0, 0),
            16,
        )],
        len: 24,
    };
    cfg.upstream = upstream;
    cfg
}

impl TestNet {
    fn new() -> TestNet {
        TestNet::with_upstream(Some(Vec::new()))
    }

    fn with_upstream(upstream: Option<Vec<SocketAddr>>) -> TestNet {
        let prefix = testkit::netns::short_prefix();
        let state = tempfile::tempdir().expect("state dir");
        let netns = tempfile::tempdir().expect("netns dir");
        let mgr = NetworkManager::open(config(&prefix, state.path(), netns.path(), upstream))
            .expect("open network manager");
        TestNet {
            mgr,
            prefix,
            _state: state,
            netns,
        }
    }

    fn network(&self, name: &str, internal: bool) -> NetworkInfo {
        self.network_with(name, internal, false)
    }

    /// An `enable_ipv6` network (with the default ULA subnet).
    fn network6(&self, name: &str, internal: bool) -> NetworkInfo {
        self.network_with(name, internal, true)
    }

    fn network_with(&self, name: &str, internal: bool, enable_ipv6: bool) -> NetworkInfo {
        self.mgr
            .ensure_network(&NetworkRequest {
                name: format!("{}_{name}", self.prefix),
                project: self.prefix.clone(),
                internal,
                ipam: None,
                enable_ipv6,
                ipam6: None,
            })
            .expect("ensure network")
    }

    fn request(&self, id: &str, service: &str, nets: &[&NetworkInfo]) -> AttachRequest {
        AttachRequest {
            container_id: id.to_string(),
            container_name: format!("{}-{id}", self.prefix),
            project: self.prefix.clone(),
            service: service.to_string(),
            networks: nets
                .iter()
                .map(|n| (n.name.clone(), ServiceNetwork::default()))
                .collect(),
            healthy: true,
            ..AttachRequest::default()
        }
    }
}

/// Collects everything of a configuration's prefix when dropped, for tests that make
/// managers by hand.
struct GcGuard(NetConfig);

impl Drop for GcGuard {
    fn drop(&mut self) {
        match NetworkManager::open(self.0.clone()) {
            Ok(m) => {
                if let Err(e) = m.gc(&[], &[]) {
                    eprintln!("gc after test: {e}");
                }
            }
            Err(e) => eprintln!("open for gc after test: {e}"),
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Err(e) = self.mgr.gc(&[], &[]) {
            eprintln!("gc after test: {e}");
        }
    }
}

/// A busybox container attached to networks, running `script` on a thread.
struct Container {
    id: String,
    dir: tempfile::TempDir,
    att: Attachment,
    run: Option<JoinHandle<(i32, String)>>,
}

impl Container {
    fn start(net: &TestNet, service: &str, nets: &[&NetworkInfo], script: &str) -> Container {
        let id = testkit::unique_name(service);
        let req = net.request(&id, service, nets);
        Container::start_with(net, req, script)
    }

    fn start_with(net: &TestNet, req: AttachRequest, script: &str) -> Container {
        let id = req.container_id.clone();
        let att = net.mgr.attach(&req).expect("attach");
        let dir = tempfile::tempdir().expect("bundle dir");
        let rootfs = dir.path().join("rootfs");
        testkit::busybox_rootfs(&rootfs).expect("busybox rootfs");
        std::fs::write(rootfs.join("etc/resolv.conf"), &att.resolv_conf).expect("resolv.conf");
        std::fs::write(rootfs.join("etc/hosts"), &att.hosts).expect("hosts");
        let args = ["sh".to_string(), "-c".to_string(), script.to_string()];
        let mut spec = runtime::default_spec(Path::new("rootfs"), &args).expect("spec");
        let linux = spec.linux_mut().as_mut().expect("linux");
        linux.set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
        let mut namespaces = linux.namespaces().clone().expect("namespaces");
        for ns in namespaces.iter_mut() {
            if ns.typ() == LinuxNamespaceType::Network {
                ns.set_path(Some(att.netns.clone()));
            }
        }
        linux.set_namespaces(Some(namespaces));
        let json = serde_json::to_string_pretty(&spec).expect("spec json");
        std::fs::write(dir.path().join("config.json"), json).expect("config.json");
        let bundle_dir = dir.path().to_path_buf();
        let run_id = id.clone();
        let run = std::thread::spawn(move || {
            let _cgroup = testkit::CgroupGuard(run_id.clone());
            let out_path = bundle_dir.join("output");
            let out = File::create(&out_path).expect("output file");
            let bundle = Bundle::load(&bundle_dir).expect("bundle");
            let opts = RunOptions {
                stdio: Stdio {
                    stdin: None,
                    stdout: Some(out.as_fd()),
                    stderr: Some(out.as_fd()),
                },
                ..RunOptions::default()
            };
            let status = match runtime::run(&bundle, &run_id, &opts) {
                Ok(report) => report.status(),
                Err(e) => {
                    eprintln!("run {run_id}: {e}");
                    -1
                }
            };
            (
                status,
                std::fs::read_to_string(out_path).unwrap_or_default(),
            )
        });
        Container {
            id,
            dir,
            att,
            run: Some(run),
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn ip(&self) -> Ipv4Addr {
        self.att.interfaces[0].address
    }

    /// Waits for the script to end (after asking a server loop to stop).
    fn finish(&mut self) -> (i32, String) {
        let _ = std::fs::write(self.rootfs().join("stop"), "");
        self.run
            .take()
            .map(|t| t.join().expect("container thread"))
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Keeps a server container alive until `finish`.
const UNTIL_STOPPED: &str = "while [ ! -e /stop ]; do sleep 0.05; done";

#[test]
fn services_resolve_and_talk_on_their_network_and_are_isolated_from_others() {
    let net = TestNet::new();
    let front = net.network("front", false);
    let other = net.network("other", false);
    let _web = Container::start(
        &net,
        "web",
        &[&front],
        &format!("mkdir -p /www && echo hello-from-web > /www/index.html && httpd -p 80 -h /www && {UNTIL_STOPPED}"),
    );
    let mut client = Container::start(
        &net,
        "client",
        &[&front],
        // busybox-static's wget crashes in static glibc's NSS lookups and its nc cannot
        // resolve names, so the name is resolved by nslookup (which asks berth's DNS
        // server) and the page fetched with nc.
        "nslookup web; ip=$(nslookup web | awk '/^Address: /{a=$2} END{print a}'); \
         for i in $(seq 100); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 $ip 80 && break; sleep 0.05; done",
    );
    let (status, out) = client.finish();
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains("hello-from-web"),
        "client did not get the page by service name:\n{out}"
    );
    assert!(
        out.contains(&_web.ip().to_string()),
        "nslookup web did not give web's address:\n{out}"
    );

    // Same names, another network: no answer and no route through.
    let web_ip = _web.ip();
    let mut outsider = Container::start(
        &net,
        "outsider",
        &[&other],
        &format!(
            "nslookup web; echo nslookup=$?; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {web_ip} 80; echo nc=$?"
        ),
    );
    let (_, out) = outsider.finish();
    assert!(
        out.contains("nslookup=1"),
        "web resolved from another network:\n{out}"
    );
    assert!(
        out.contains("nc=1"),
        "web reached from another network:\n{out}"
    );
    assert!(!out.contains("hello-from-web"), "{out}");
}

/// Asks the network's DNS server from the host, the way a container does.
fn resolve(info: &NetworkInfo, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let server = SocketAddr::new(IpAddr::V4(info.addressing.gateway), 53);
    let mut got = query_a(&socket, server, name, 7)
        .unwrap()
        .map_err(|c| c.to_string())?;
    got.sort();
    Ok(got)
}

#[test]
fn scaling_a_service_changes_its_dns_answers_at_once() {
    let net = TestNet::new();
    let front = net.network("front", false);
    let ids: Vec<String> = (0..3).map(|_| testkit::unique_name("api")).collect();
    let mut ips = Vec::new();
    for id in &ids {
        let att = net.mgr.attach(&net.request(id, "api", &[&front])).unwrap();
        ips.push(att.interfaces[0].address);
        // Registration is part of attach: the next query already sees the new task.
        assert_eq!(resolve(&front, "api").unwrap().len(), ips.len());
    }
    ips.sort();
    assert_eq!(resolve(&front, "api").unwrap(), ips);
    assert_eq!(resolve(&front, "tasks.api").unwrap(), ips);
    assert_eq!(
        resolve(&front, &format!("api.{}", net.prefix)).unwrap(),
        ips
    );

    // Unhealthy tasks leave the answer within the 100 ms the issue asks, and come back.
    let t = Instant::now();
    assert!(net.mgr.set_healthy(&ids[0], false).unwrap());
    assert_eq!(resolve(&front, "api").unwrap().len(), 2);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert!(net.mgr.set_healthy(&ids[0], true).unwrap());
    assert_eq!(resolve(&front, "api").unwrap().len(), 3);

    // Scale back to 1.
    net.mgr.detach(&ids[1]).unwrap();
    net.mgr.detach(&ids[2]).unwrap();
    assert_eq!(resolve(&front, "api").unwrap().len(), 1);
    net.mgr.detach(&ids[0]).unwrap();
    assert_eq!(
        resolve(&front, "api"),
        Err("Non-Existent Domain".to_string())
    );
}

/// A tiny upstream resolver on loopback: another berth DNS server that knows
/// `example.org` (service `example` of project `org`).
fn fake_upstream() -> (DnsServer, SocketAddr) {
    let server = DnsServer::new(Vec::new());
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    server.records().write().unwrap().insert(Endpoint {
        container: "up".into(),
        network: "up".into(),
        ip: Ipv4Addr::new(192, 0, 2, 123),
        ip6: None,
        project: "org".into(),
        service: "example".into(),
        names: vec![],
        aliases: vec![],
        healthy: true,
        upstream: vec![],
        links: vec![],
    });
    server.listen("up", addr).unwrap();
    (server, addr)
}

#[test]
fn unknown_names_are_forwarded_upstream_and_hosts_files_are_written() {
    let (_upstream, addr) = fake_upstream();
    let net = TestNet::with_upstream(Some(vec![addr]));
    let front = net.network("front", false);
    let mut req = net.request(&testkit::unique_name("fwd"), "fwd", &[&front]);
    req.hostname = Some("myhost".into());
    req.extra_hosts = vec!["db.example:10.1.2.3".into()];
    req.dns_search = vec!["corp.example".into()];
    let mut c = Container::start_with(
        &net,
        req,
        "nslookup example.org; cat /etc/hosts /etc/resolv.conf",
    );
    let (_, out) = c.finish();
    assert!(
        out.contains("192.0.2.123"),
        "forwarded name not answered:\n{out}"
    );
    assert!(out.contains("10.1.2.3\tdb.example"), "{out}");
    assert!(out.contains(&format!("{}\tmyhost", c.ip())), "{out}");
    assert!(
        out.contains(&format!("nameserver {}", front.addressing.gateway)),
        "{out}"
    );
    assert!(out.contains("search corp.example"), "{out}");
    // Unknown names of berth's own domain are not forwarded: NXDOMAIN at once.
    assert_eq!(
        resolve(&front, "does-not-exist"),
        Err("Non-Existent Domain".to_string())
    );
    assert_eq!(
        resolve(&front, &format!("nope.{}", net.prefix)),
        Err("Non-Existent Domain".to_string())
    );
    // With no upstream answering, a forwarded name fails fast (SERVFAIL), not by timeout.
    let net2 = TestNet::with_upstream(Some(Vec::new()));
    let lonely = net2.network("lonely", false);
    assert_eq!(
        resolve(&lonely, "example.org"),
        Err("Server Failure".to_string())
    );
}

#[test]
fn an_internal_network_has_no_route_out_and_a_normal_one_does() {
    let net = TestNet::new();
    let internal = net.network("private", true);
    let public = net.network("public", false);
    let mut inside = Container::start(
        &net,
        "vault",
        &[&internal],
        "ip route; ip route get 192.0.2.1; echo get=$?",
    );
    let mut outside = Container::start(&net, "app", &[&public], "ip route");
    let (_, out) = inside.finish();
    assert!(
        !out.contains("default"),
        "internal network has a default route:\n{out}"
    );
    assert!(out.contains("get=1") || out.contains("get=2"), "{out}");
    let (_, out) = outside.finish();
    assert!(
        out.contains(&format!("default via {}", public.addressing.gateway)),
        "normal network has no default route:\n{out}"
    );
}

#[test]
fn containers_on_an_ipv6_network_talk_over_ipv6_resolve_aaaa_and_are_published_over_ipv6() {
    let net = TestNet::new();
    let front = net.network6("front", false);
    let other = net.network6("other", false);
    let internal = net.network6("vault", true);
    let a6 = front.addressing6.expect("front has IPv6");
    // The server listens on its IPv6 and IPv4 addresses separately, with a page each:
    // what a client gets says which family reached it.
    let web6 = a6.subnet.nth(0x80).unwrap();
    let web4 = front.addressing.subnet.nth(0x80).unwrap();
    let mut req = net.request(&testkit::unique_name("web"), "web", &[&front]);
    req.networks[0].1.ipv6_address = Some(web6.to_string());
    req.networks[0].1.ipv4_address = Some(web4.to_string());
    let web = Container::start_with(
        &net,
        req,
        &format!(
            "mkdir -p /w6 /w4 && echo hello-over-ipv6 > /w6/index.html && echo hello-over-ipv4 > /w4/index.html && \
             httpd -p [{web6}]:80 -h /w6 && httpd -p {web4}:80 -h /w4 && {UNTIL_STOPPED}"
        ),
    );
    assert_eq!(web.att.interfaces[0].address6, Some(web6));
    assert!(
        web.att.hosts.contains(&format!("{web6}\t")),
        "{}",
        web.att.hosts
    );

    // The DNS server answers AAAA with the IPv6 address, A with the IPv4 one.
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let dns = SocketAddr::new(IpAddr::V4(front.addressing.gateway), 53);
    assert_eq!(query_aaaa(&socket, dns, "web", 1).unwrap(), Ok(vec![web6]));
    assert_eq!(query_a(&socket, dns, "web", 2).unwrap(), Ok(vec![web4]));
    assert_eq!(
        query_aaaa(&socket, dns, "tasks.web", 3).unwrap(),
        Ok(vec![web6])
    );

    // Another container on the network finds it by name over IPv6 and reaches it.
    let mut client = Container::start(
        &net,
        "client",
        &[&front],
        "ip -6 addr; ip -6 route; nslookup -type=AAAA web; \
         ip=$(nslookup -type=AAAA web | awk '/^Address: /{a=$2} END{print a}'); echo aaaa=$ip; \
         ping -6 -c1 -W2 $ip; echo ping=$?; \
         for i in $(seq 100); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 $ip 80 && break; sleep 0.05; done",
    );
    let (status, out) = client.finish();
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains(&format!("aaaa={web6}")),
        "no AAAA for web:\n{out}"
    );
    assert!(out.contains("ping=0"), "ping -6 failed:\n{out}");
    assert!(out.contains("hello-over-ipv6"), "no page over IPv6:\n{out}");
    assert!(
        out.contains(&format!("default via {}", a6.gateway)),
        "no IPv6 default route:\n{out}"
    );

    // From another IPv6 network: no name, no route through (the ip6 isolation).
    let mut outsider = Container::start(
        &net,
        "outsider",
        &[&other],
        &format!(
            "nslookup -type=AAAA web; echo nslookup=$?; ping -6 -c1 -W3 {web6}; echo ping=$?; \
             printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {web6} 80; echo nc=$?"
        ),
    );
    let (_, out) = outsider.finish();
    assert!(
        out.contains("nslookup=1"),
        "web resolved from another network:\n{out}"
    );
    assert!(
        out.contains("ping=1"),
        "web pinged from another network:\n{out}"
    );
    assert!(
        out.contains("nc=1"),
        "web reached from another network:\n{out}"
    );
    assert!(!out.contains("hello-over"), "{out}");

    // An internal IPv6 network has no IPv6 way out either.
    let mut inside = Container::start(
        &net,
        "vault",
        &[&internal],
        &format!(
            "ip -6 route; ip -6 route get {web6}; echo get=$?; ping -6 -c1 -W1 {}; echo ping=$?",
            a6.gateway
        ),
    );
    let (_, out) = inside.finish();
    assert!(
        !out.contains("default"),
        "internal network has an IPv6 default route:\n{out}"
    );
    assert!(
        out.contains("ping=1"),
        "internal network reached the outside:\n{out}"
    );

    // Published: [::1] (the relay, connecting over IPv6), the host's own IPv6 address
    // (ip6 DNAT, here the bridge's) and IPv4 (DNAT) all reach the container, each over
    // its family.
    let hp = free_port();
    let published = net
        .mgr
        .publish(&web.id, "web", &[port(hp, 80, Protocol::Tcp, None)])
        .unwrap();
    assert!(!published.is_empty(), "{published:?}");
    let get = |addr: SocketAddr| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match http_get(addr) {
                Ok(out) if out.contains("hello-over") => return out,
                other if Instant::now() > deadline => panic!("GET {addr}: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    };
    assert!(
        get(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), hp)).contains("hello-over-ipv6"),
        "[::1] did not reach the container over IPv6"
    );
    assert!(
        get(SocketAddr::new(IpAddr::V6(a6.gateway), hp)).contains("hello-over-ipv6"),
        "the host's IPv6 address did not reach the container over IPv6"
    );
    assert!(
        get(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), hp)).contains("hello-over-ipv4"),
        "127.0.0.1 did not reach the container over IPv4"
    );
    // The host's IPv6 addresses are DNAT'd by the kernel, not relayed (only ::1 is).
    let table = overlay_net::names::port_table(&net.prefix, "tcp", None, hp);
    let rules = std::process::Command::new("nft")
        .args(["list", "table", "ip6", &table])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains(&format!("dnat to [{web6}]:80")),
        "no ip6 DNAT for the published port:\n{rules}"
    );
    // The other network reaches the published port at the host's address, not the
    // container itself (as for IPv4).
    let mut visitor = Container::start(
        &net,
        "visitor",
        &[&other],
        &format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} {hp}; echo nc=$?",
            other.addressing6.unwrap().gateway
        ),
    );
    let (_, out) = visitor.finish();
    assert!(
        out.contains("hello-over-ipv6"),
        "published port not reached over IPv6 from another network:\n{out}"
    );
    net.mgr.unpublish(&web.id).unwrap();
    assert!(http_get(SocketAddr::new(IpAddr::V6(a6.gateway), hp))
        .map_or(true, |o| !o.contains("hello")));
}

fn port(published: u16, target: u16, protocol: Protocol, host_ip: Option<&str>) -> Port {
    Port {
        name: None,
        target,
        published: Some(PortRange::single(published)),
        host_ip: host_ip.map(String::from),
        protocol,
        mode: PortMode::Ingress,
        app_protocol: None,
    }
}

/// A port free for TCP and UDP on IPv4 and IPv6 (the `[::]` sockets are dual-stack).
fn free_port() -> u16 {
    let s = std::net::TcpListener::bind("[::]:0").unwrap();
    let p = s.local_addr().unwrap().port();
    let u = UdpSocket::bind(("::", p));
    if u.is_ok() {
        p
    } else {
        free_port()
    }
}

fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Binds a UDP socket inside a namespace: busybox has no UDP server applet, so the
/// test itself listens in the container's network namespace.
fn udp_in_netns(netns: &Path, port: u16) -> UdpSocket {
    let file = File::open(netns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        UdpSocket::bind(("0.0.0.0", port)).expect("bind in netns")
    })
    .join()
    .expect("netns thread")
}

#[test]
fn published_tcp_and_udp_ports_reach_the_container_from_the_host() {
    let net = TestNet::new();
    let front = net.network("front", false);
    let web = Container::start(
        &net,
        "web",
        &[&front],
        &format!("mkdir -p /www && echo published-hello > /www/index.html && httpd -p 80 -h /www && {UNTIL_STOPPED}"),
    );
    let (tcp, udp) = (free_port(), free_port());
    let published = net
        .mgr
        .publish(
            &web.id,
            "web",
            &[
                port(tcp, 80, Protocol::Tcp, None),
                port(udp, 9999, Protocol::Udp, None),
            ],
        )
        .unwrap();
    // Each on 0.0.0.0 and on [::], as Docker publishes.
    assert_eq!(published.len(), 4, "{published:?}");

    // TCP from loopback and from another of the host's addresses.
    for host in [Ipv4Addr::LOCALHOST, front.addressing.gateway] {
        let addr = SocketAddr::new(IpAddr::V4(host), tcp);
        let deadline = Instant::now() + Duration::from_secs(5);
        let body = loop {
            match http_get(addr) {
                Ok(b) if b.contains("published-hello") => break b,
                other if Instant::now() > deadline => panic!("{addr}: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        assert!(body.contains("published-hello"));
    }

    // UDP from loopback to a socket in the container's namespace.
    let inside = udp_in_netns(&web.att.netns, 9999);
    inside
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"udp-ping", ("127.0.0.1", udp)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = inside
        .recv_from(&mut buf)
        .expect("udp datagram reached the container");
    assert_eq!(&buf[..n], b"udp-ping");
    inside.send_to(b"udp-pong", from).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (n, _) = client.recv_from(&mut buf).expect("reply came back");
    assert_eq!(&buf[..n], b"udp-pong");

    // The same ports on the host's IPv6 loopback, through the relay.
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), tcp);
    let body = http_get(v6).unwrap_or_else(|e| panic!("{v6}: {e}"));
    assert!(body.contains("published-hello"), "{body}");
    let client6 = UdpSocket::bind("[::1]:0").unwrap();
    client6.send_to(b"udp6-ping", ("::1", udp)).unwrap();
    let (n, from) = inside
        .recv_from(&mut buf)
        .expect("udp datagram over IPv6 reached the container");
    assert_eq!(&buf[..n], b"udp6-ping");
    inside.send_to(b"udp6-pong", from).unwrap();
    client6
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (n, _) = client6.recv_from(&mut buf).expect("IPv6 reply came back");
    assert_eq!(&buf[..n], b"udp6-pong");
    assert!(
        published
            .iter()
            .any(|p| p.host() == format!("[::]:{tcp}") && p.proto == "tcp"),
        "{published:?}"
    );

    // A container of another network reaches the published port at the host's
    // address, though not the container itself; a sibling on the container's own
    // network does too (its reply comes back from the address it called).
    let other = net.network("other", false);
    let web_ip = web.ip();
    let mut outsider = Container::start(
        &net,
        "outsider",
        &[&other],
        &format!(
            "for i in $(seq 40); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {gw} {tcp} | grep -q published-hello && echo via-host=ok && break; sleep 0.05; done; \
             printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {web_ip} 80; echo direct=$?",
            gw = other.addressing.gateway
        ),
    );
    let (_, out) = outsider.finish();
    assert!(
        out.contains("via-host=ok"),
        "published port not reached from another network:\n{out}"
    );
    assert!(out.contains("direct=1"), "isolation broken:\n{out}");
    let mut sibling = Container::start(
        &net,
        "sibling",
        &[&front],
        &format!(
            "for i in $(seq 40); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {gw} {tcp} | grep -q published-hello && echo via-host=ok && break; sleep 0.05; done",
            gw = front.addressing.gateway
        ),
    );
    let (_, out) = sibling.finish();
    assert!(
        out.contains("via-host=ok"),
        "published port not reached from its own network:\n{out}"
    );

    // An IPv6 host address publishes there only.
    let only6 = free_port();
    let published = net
        .mgr
        .publish(
            &web.id,
            "web",
            &[port(only6, 80, Protocol::Tcp, Some("::1"))],
        )
        .unwrap();
    assert_eq!(published.len(), 1, "{published:?}");
    let body = http_get(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), only6)).unwrap();
    assert!(body.contains("published-hello"), "{body}");
    assert!(
        http_get(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), only6)).is_err(),
        "published on [::1] only, yet 127.0.0.1:{only6} answered"
    );
    // The earlier publication was replaced: its IPv6 port is free again.
    assert!(std::net::TcpListener::bind(("::1", tcp)).is_ok());

    // A host port someone holds is a clear error naming service and port.
    let holder = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let held = holder.local_addr().unwrap().port();
    let err = net
        .mgr
        .publish(&web.id, "web", &[port(held, 80, Protocol::Tcp, None)])
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("service web") && msg.contains(&format!("{held}/tcp")),
        "{msg}"
    );
}

/// Set in the child process of the crash test: the manager's configuration to use.
const CRASH_CHILD: &str = "BERTH_NET_TEST_CRASH_CHILD";

/// The crash test's child: makes a network, a container attachment and a published
/// port, says "ready", and waits to be killed with SIGKILL.
fn crash_child(spec: &str) -> ! {
    let mut parts = spec.split('|');
    let (prefix, state, netns) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mgr = NetworkManager::open(config(
        prefix,
        Path::new(state),
        Path::new(netns),
        Some(Vec::new()),
    ))
    .unwrap();
    let a = mgr
        .ensure_network(&NetworkRequest {
            name: format!("{prefix}_a"),
            project: prefix.into(),
            internal: false,
            ipam: None,
            enable_ipv6: false,
            ipam6: None,
        })
        .unwrap();
    let id = format!("{prefix}-crashed");
    let mut req = AttachRequest {
        container_id: id.clone(),
        container_name: "c".into(),
        project: prefix.into(),
        service: "svc".into(),
        healthy: true,
        ..Default::default()
    };
    req.networks = vec![(a.name.clone(), ServiceNetwork::default())];
    mgr.attach(&req).unwrap();
    mgr.publish(&id, "svc", &[port(free_port(), 80, Protocol::Udp, None)])
        .unwrap();
    println!("\nready");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Runs this very test in a child process in the child role and SIGKILLs it once it
/// has made its objects.
fn run_and_kill_child(prefix: &str, state: &Path, netns: &Path) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "nothing_is_left_after_teardown_nor_after_a_crash",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CRASH_CHILD,
            format!("{prefix}|{}|{}", state.display(), netns.display()),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "ready");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready, "the child died before making its objects");
}

#[test]
fn nothing_is_left_after_teardown_nor_after_a_crash() {
    if let Ok(spec) = std::env::var(CRASH_CHILD) {
        crash_child(&spec);
    }
    {
        let net = TestNet::new();
        let prefix = net.prefix.clone();
        let a = net.network("a", false);
        let b = net.network("b", true);
        let id = testkit::unique_name("c");
        let att = net.mgr.attach(&net.request(&id, "svc", &[&a, &b])).unwrap();
        assert_eq!(att.interfaces.len(), 2);
        net.mgr
            .publish(
                &id,
                "svc",
                &[port(free_port(), 80, Protocol::Tcp, Some("127.0.0.1"))],
            )
            .unwrap();
        assert!(!testkit::netns::leftovers(&prefix).is_empty());
        // The orderly way down.
        net.mgr.detach(&id).unwrap();
        net.mgr.remove_network(&a.name).unwrap();
        net.mgr.remove_network(&b.name).unwrap();
        assert_eq!(testkit::netns::leftovers(&prefix), Vec::<String>::new());
        assert_eq!(std::fs::read_dir(net.netns.path()).unwrap().count(), 0);
    }

    // A crash: a process holding a manager is killed with SIGKILL; a new manager on
    // the same state directory reads its records and collects everything.
    let prefix = testkit::netns::short_prefix();
    let state = tempfile::tempdir().unwrap();
    let netns = tempfile::tempdir().unwrap();
    let cfg = config(&prefix, state.path(), netns.path(), Some(Vec::new()));
    let _cleanup = GcGuard(cfg.clone());
    run_and_kill_child(&prefix, state.path(), netns.path());
    assert!(
        testkit::netns::leftovers(&prefix).len() >= 3,
        "{:?}",
        testkit::netns::leftovers(&prefix)
    );
    let again = NetworkManager::open(cfg.clone()).unwrap();
    assert_eq!(
        again.networks().len(),
        1,
        "records of the killed manager were not read"
    );
    let report = again.gc(&[], &[]).unwrap();
    assert_eq!(report.containers, vec![format!("{prefix}-crashed")]);
    assert_eq!(testkit::netns::leftovers(&prefix), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(netns.path()).unwrap().count(), 0);
    drop(again);

    // The same with the records lost too (a crash between making an object and
    // recording it, or a wiped state directory): gc finds the objects by prefix.
    run_and_kill_child(&prefix, state.path(), netns.path());
    std::fs::remove_dir_all(state.path().join("network")).unwrap();
    let fresh = NetworkManager::open(cfg).unwrap();
    let report = fresh.gc(&[], &[]).unwrap();
    assert!(
        !report.links.is_empty() && !report.tables.is_empty() && !report.netns.is_empty(),
        "{report:?}"
    );
    assert_eq!(testkit::netns::leftovers(&prefix), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(netns.path()).unwrap().count(), 0);
}

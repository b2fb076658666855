//! IPv6 in containers, end to end: the real binary, a real daemon, busybox containers,
//! nftables, as root. Containers on an `enable_ipv6` network get an IPv6 address (a
//! fixed `ipv6_address` from an `ipam.config` IPv6 subnet, or the lowest free one of a
//! default ULA /64), reach each other by name over IPv6 (berth's DNS server answers
//! AAAA), cannot reach another network's containers over IPv6, and a published port
//! reaches the container over IPv6 from `[::1]` and the host's IPv6 addresses (and
//! over IPv4 from IPv4 addresses, as before).
//!
//! The fixture is `tests/stack_cli.rs`'s (`tests/stack/fixture.rs`), whose `Drop`
//! removes everything a test left, even when it fails.

#[path = "stack/fixture.rs"]
mod fixture;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use fixture::{wait_for, Fixture};

fn free_port() -> u16 {
    // Dual-stack: free on IPv4 and IPv6, as a published port needs.
    std::net::TcpListener::bind("[::]:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET /` on `addr`: the body (trimmed), or why it failed.
fn get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    let text = text.replace("\r\n", "\n");
    match text.split_once("\n\n") {
        Some((head, body)) if head.contains(" 200 ") => Ok(body.trim().to_string()),
        _ => Err(format!("bad answer: {text:?}")),
    }
}

/// `berth exec -T <service> sh -c <script>`: its stdout and stderr together.
fn sh(f: &Fixture, service: &str, script: &str) -> String {
    let out = f.berth(&["exec", "-T", service, "sh", "-c", script]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn containers_on_an_ipv6_network_reach_each_other_over_ipv6_and_publish_over_ipv6() {
    let port = free_port();
    // The image and this test's names first; the file, which needs them, after.
    let mut f = Fixture::new("ipv6", "services: {}\n");
    // An IPv6 subnet of this test's own (its IPv4 pool's octet is unique to it).
    let octet: u8 = f
        .net_pool
        .split('.')
        .nth(1)
        .and_then(|o| o.parse().ok())
        .expect("pool octet");
    let subnet = format!("fd42:be47:{octet:x}::/64");
    let web6: Ipv6Addr = format!("fd42:be47:{octet:x}::80").parse().unwrap();
    let gateway6: Ipv6Addr = format!("fd42:be47:{octet:x}::1").parse().unwrap();
    // The web server listens on its IPv6 and its IPv4 address apart, with a page each,
    // so what a client gets says which family reached the container.
    let compose = format!(
        r#"services:
  web:
    image: busybox:local
    command:
      - sh
      - -c
      - |
        trap 'exit 0' TERM
        mkdir -p /w6 /w4
        echo over-ipv6 > /w6/index.html
        echo over-ipv4 > /w4/index.html
        ip4=$$(ip -4 addr show dev eth0 | awk '/inet /{{split($$2, a, "/"); print a[1]}}')
        httpd -p [{web6}]:80 -h /w6
        httpd -p $$ip4:80 -h /w4
        sleep 1000 & wait
    networks:
      front:
        ipv6_address: "{web6}"
        aliases: [site]
    ports: ["{port}:80"]
  client:
    image: busybox:local
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]
    networks: [front]
  outsider:
    image: busybox:local
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]
    networks: [other]
networks:
  front:
    enable_ipv6: true
    ipam:
      config:
        - subnet: "{subnet}"
  other:
    enable_ipv6: true
"#
    );
    f.write_compose(&compose);
    f.start_daemon();
    f.ok(&["up", "-d", "--wait", "--wait-timeout", "30"]);

    // The DNS server answers AAAA for the service, tasks.<service>, an alias and
    // the container's name, with the fixed ipv6_address; A stays IPv4.
    let web_name = format!("{}-web-1", f.project);
    for name in ["web", "tasks.web", "site", web_name.as_str()] {
        let out = sh(&f, "client", &format!("nslookup -type=AAAA {name}"));
        assert!(
            out.contains(&format!("Address: {web6}")),
            "no AAAA {web6} for {name}:\n{out}"
        );
    }
    let out = sh(&f, "client", "nslookup -type=A web");
    assert!(
        !out.contains(&format!("{web6}")) && out.contains("Address: 10."),
        "A for web:\n{out}"
    );

    // The client has its own address from the same subnet and a default route, and
    // reaches web by name over IPv6: ping, then the page from web's IPv6 listener.
    let out = sh(&f, "client", "ip -6 addr show dev eth0; ip -6 route");
    assert!(
        out.contains(&format!("fd42:be47:{octet:x}::2/64"))
            && out.contains(&format!("default via {gateway6}")),
        "{out}"
    );
    let out = sh(
        &f,
        "client",
        "ip=$(nslookup -type=AAAA web | awk '/^Address: /{a=$2} END{print a}'); \
         ping -6 -c1 -W3 $ip; echo ping=$?; \
         for i in $(seq 50); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 $ip 80 && break; sleep 0.1; done",
    );
    assert!(out.contains("ping=0"), "ping -6 web failed:\n{out}");
    assert!(
        out.contains("over-ipv6"),
        "no page from web over IPv6:\n{out}"
    );

    // Another IPv6 network (its default ULA subnet): the outsider has IPv6 but gets
    // no answer for web and no route through to web's address.
    let out = sh(&f, "outsider", "ip -6 addr show dev eth0");
    assert!(
        out.contains("inet6 fd") && out.contains("scope global"),
        "{out}"
    );
    let out = sh(
        &f,
        "outsider",
        &format!(
            "nslookup -type=AAAA web; echo nslookup=$?; ping -6 -c1 -W3 {web6}; echo ping=$?; \
             printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {web6} 80; echo nc=$?"
        ),
    );
    assert!(
        out.contains("nslookup=1"),
        "web resolved from another network:\n{out}"
    );
    assert!(
        out.contains("ping=1"),
        "web pinged over IPv6 from another network:\n{out}"
    );
    assert!(
        out.contains("nc=1") && !out.contains("over-ipv"),
        "web reached over IPv6 from another network:\n{out}"
    );

    // The published port: [::1] and the host's IPv6 address (here the front bridge's)
    // reach web over IPv6, 127.0.0.1 over IPv4.
    let loopback6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
    let host6 = SocketAddr::new(IpAddr::V6(gateway6), port);
    let loopback4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    wait_for(|| get(loopback4).is_ok(), "web to listen");
    assert_eq!(get(loopback6).as_deref(), Ok("over-ipv6"), "[::1]:{port}");
    assert_eq!(get(host6).as_deref(), Ok("over-ipv6"), "{host6}");
    assert_eq!(
        get(loopback4).as_deref(),
        Ok("over-ipv4"),
        "127.0.0.1:{port}"
    );
    // The outsider reaches the published port at its own gateway (a host address),
    // over IPv6, as it would at any host address: ports cross networks.
    let out = sh(
        &f,
        "outsider",
        &format!(
            "gw=$(ip -6 route | awk '/^default/{{print $3}}'); \
             printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $gw {port}"
        ),
    );
    assert!(
        out.contains("over-ipv6"),
        "published port not reached over IPv6 from another network:\n{out}"
    );

    f.ok(&["down", "-t", "1"]);
    assert!(
        get(loopback6).is_err(),
        "[::1]:{port} still answers after down"
    );
    std::net::TcpListener::bind(("::", port)).expect("the port is free after down");
}

//! berth's IPv6 relay on loopback (no root needed): a UDP flow per client, capped,
//! connections spread over the current backends, and the port freed as soon as the
//! relay is dropped.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use overlay_net::proxy::{Backends, Bound};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// An echo server on 127.0.0.1 standing in for the container.
fn udp_echo() -> SocketAddrV4 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = match s.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

#[test]
fn udp_flows_are_relayed_both_ways_and_capped() {
    let bound = Bound::new("udp", SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0)).unwrap();
    let port = bound.port();
    let relay = bound.relay(Backends::new(vec![udp_echo()])).unwrap();
    // 400 clients, each from its own source port: more than the 256 flows kept.
    let clients: Vec<UdpSocket> = (0..400)
        .map(|_| {
            let c = UdpSocket::bind("[::1]:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        })
        .collect();
    let before = open_fds();
    let mut buf = [0u8; 64];
    for (i, c) in clients.iter().enumerate() {
        let msg = format!("ping {i}");
        c.send_to(msg.as_bytes(), ("::1", port)).unwrap();
        let (n, _) = c.recv_from(&mut buf).expect("the echo came back");
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    // Each flow holds one socket: at most 256 of them, whatever the number of clients.
    let deadline = Instant::now() + Duration::from_secs(5);
    let grew = loop {
        let grew = open_fds().saturating_sub(before);
        if grew <= 256 + 8 || Instant::now() > deadline {
            break grew;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(grew <= 256 + 8, "{grew} descriptors for 400 flows");
    // The newest client's flow is alive and still answers.
    clients[399].send_to(b"again", ("::1", port)).unwrap();
    let (n, _) = clients[399].recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"again");
    // Dropping the relay frees the port before it returns.
    drop(relay);
    UdpSocket::bind(("::1", port)).expect("the port is free again");
}

#[test]
fn a_tcp_relay_frees_its_port_when_dropped() {
    let bound = Bound::new("tcp", SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0)).unwrap();
    let port = bound.port();
    let target = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9);
    let relay = bound.relay(Backends::new(vec![target])).unwrap();
    assert!(std::net::TcpListener::bind(("::1", port)).is_err());
    drop(relay);
    std::net::TcpListener::bind(("::1", port)).expect("the port is free again");
}

/// A TCP server on 127.0.0.1 that answers every connection with `name`.
fn tcp_named(name: &'static str) -> SocketAddrV4 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = match l.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            use std::io::Write;
            let _ = c.write_all(name.as_bytes());
        }
    });
    addr
}

fn fetch(port: u16) -> std::io::Result<String> {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(("::1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    Ok(s)
}

#[test]
fn a_tcp_relay_spreads_connections_over_its_current_backends() {
    let (a, b, c) = (tcp_named("a"), tcp_named("b"), tcp_named("c"));
    let backends = Backends::new(vec![a, b]);
    let bound = Bound::new("tcp", SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0)).unwrap();
    let port = bound.port();
    let _relay = bound.relay(backends.clone()).unwrap();
    let got: Vec<String> = (0..4).map(|_| fetch(port).unwrap()).collect();
    // In turn: each backend gets every other connection.
    assert_eq!(got.iter().filter(|s| *s == "a").count(), 2, "{got:?}");
    assert_eq!(got.iter().filter(|s| *s == "b").count(), 2, "{got:?}");
    // A backend that leaves gets no new connection; one that joins does.
    backends.set(vec![c]);
    for _ in 0..3 {
        assert_eq!(fetch(port).unwrap(), "c");
    }
    // None serving: the connection is closed without an answer.
    backends.set(Vec::<SocketAddrV4>::new());
    assert_eq!(fetch(port).unwrap_or_default(), "");
}

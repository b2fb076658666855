//! Large DNS answers: truncated over UDP, whole over TCP, for berth's own names and
//! for forwarded ones. Servers on loopback only; no root needed.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use overlay_net::dns::{DnsServer, Endpoint};

/// A server answering for network `net`, whose service `service` of project `project`
/// has `n` healthy members, listening on a loopback port the kernel picks.
fn server(net: &str, project: &str, service: &str, n: u8, upstream: Vec<SocketAddr>) -> DnsServer {
    let s = DnsServer::new(upstream);
    for i in 0..n {
        s.records().write().unwrap().insert(Endpoint {
            container: format!("{service}-{i}"),
            network: net.into(),
            ip: Ipv4Addr::new(10, 7, 0, i + 1),
            ip6: None,
            project: project.into(),
            service: service.into(),
            names: vec![],
            aliases: vec![],
            healthy: true,
            upstream: vec![],
            links: vec![],
        });
    }
    s.listen(net, "127.0.0.1:0".parse().unwrap()).unwrap();
    s
}

fn query(name: &str, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(4242).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn over_udp(server: SocketAddr, packet: &[u8]) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(packet, server).unwrap();
    let mut buf = [0u8; 65535];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn over_tcp(server: SocketAddr, packets: &[Vec<u8>]) -> Vec<Message> {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    // Several queries on one connection, as RFC 7766 clients may send.
    for p in packets {
        s.write_all(&(p.len() as u16).to_be_bytes()).unwrap();
        s.write_all(p).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).unwrap();
        out.push(Message::from_vec(&buf).unwrap());
    }
    out
}

#[test]
fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    // An upstream that knows a big name of its own, and berth's server in front of it.
    let upstream = server("up", "org", "big", 90, Vec::new());
    let up = upstream.address("up").unwrap();
    let front = server("n", "shop", "many", 100, vec![up]);
    let addr = front.address("n").unwrap();

    // 100 addresses do not fit 512 bytes: TC and no records, so the client asks again
    // over TCP.
    let m = over_udp(addr, &query("many.", None));
    assert!(m.truncated(), "{m:?}");
    assert_eq!(m.answers().len(), 0);
    assert_eq!(m.id(), 4242);
    // A client offering a 4096-byte EDNS payload gets them all over UDP.
    let m = over_udp(addr, &query("many.", Some(4096)));
    assert!(!m.truncated());
    assert_eq!(m.answers().len(), 100);
    assert!(m.extensions().is_some(), "an EDNS query gets an OPT back");
    // Small answers are not touched.
    let small = server("s", "shop", "one", 1, Vec::new());
    let m = over_udp(small.address("s").unwrap(), &query("one.", None));
    assert_eq!((m.truncated(), m.answers().len()), (false, 1));

    // Over TCP: all of them, twice on one connection, and a forwarded big name, which
    // goes upstream over TCP too.
    let replies = over_tcp(
        addr,
        &[
            query("many.", None),
            query("tasks.many.", None),
            query("big.org.", None),
        ],
    );
    assert_eq!(replies[0].answers().len(), 100);
    assert_eq!(replies[1].answers().len(), 100);
    assert_eq!(replies[2].response_code(), ResponseCode::NoError);
    assert_eq!(replies[2].answers().len(), 90, "forwarded over TCP");
    // The same forwarded name over UDP comes back as the upstream sent it: truncated.
    let m = over_udp(addr, &query("big.org.", None));
    assert!(m.truncated(), "{m:?}");
    // Unknown names of our domain: NXDOMAIN over TCP as over UDP.
    let r = over_tcp(addr, &[query("nope.", None)]);
    assert_eq!(r[0].response_code(), ResponseCode::NXDomain);
}

#[test]
fn a_stopped_network_no_longer_answers_over_tcp() {
    let s = server("gone", "shop", "x", 1, Vec::new());
    let addr = s.address("gone").unwrap();
    assert_eq!(over_tcp(addr, &[query("x.", None)])[0].answers().len(), 1);
    s.unlisten("gone");
    assert!(s.address("gone").is_none());
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}

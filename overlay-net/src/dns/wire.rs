//! DNS messages on the wire, encoded and decoded with hickory-proto: the reply to a
//! query packet (pure, from the records), its fit to a UDP payload, SERVFAIL, and the
//! two-byte length framing of a message over TCP (RFC 7766).

use std::io;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

use super::records::{Answer, Family, Records};

/// The answer to one query packet, or `None` when it must be forwarded (or is not a
/// query we can read). Pure: records, the asking network and client, and the bytes.
pub fn respond(
    records: &Records,
    network: &str,
    client: Option<std::net::IpAddr>,
    packet: &[u8],
    rotation: usize,
) -> Option<Result<Vec<u8>, Vec<u8>>> {
    let query = Message::from_vec(packet).ok()?;
    let q = query.queries().first()?.clone();
    let family = match q.query_type() {
        RecordType::AAAA => Family::V6,
        _ => Family::V4,
    };
    let asked = q.name().to_ascii();
    // A link alias of the asking container is answered as its target (the records
    // keep the asked name).
    let name = records.linked(network, client, &asked);
    let answer = records.answer_for(network, name, rotation, family);
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(q.clone());
    if let Some(asked) = query.extensions() {
        // An EDNS query gets an OPT record back, with the payload size we accept; a
        // version we do not speak (only 0 exists) gets BADVERS (RFC 6891 6.1.3).
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        reply.set_edns(edns);
        if asked.version() > 0 {
            reply.set_response_code(ResponseCode::BADVERS);
            return reply.to_vec().ok().map(Ok);
        }
    }
    match answer {
        Answer::Forward => return Some(Err(packet.to_vec())),
        Answer::NxDomain => {
            reply.set_authoritative(true);
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Answer::Addresses(ips) => {
            reply.set_authoritative(true);
            if matches!(
                q.query_type(),
                RecordType::A | RecordType::AAAA | RecordType::ANY
            ) {
                for ip in ips {
                    let rdata = match ip {
                        std::net::IpAddr::V4(ip) => RData::A(A(ip)),
                        std::net::IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
                    };
                    // TTL 0: answers change as tasks come and go; clients must not cache.
                    reply.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
                }
            }
        }
    }
    reply.to_vec().ok().map(Ok)
}

/// The largest UDP reply we send, whatever a client's EDNS offers (our receive
/// buffers are this size too).
const MAX_UDP_PAYLOAD: u16 = 4096;

/// `reply` as it may go over UDP in answer to `query`: unchanged if it fits the
/// client's payload size (512 bytes without EDNS), else the header and question with
/// TC set, which sends the client to TCP. Pure.
pub fn fit_udp(query: &[u8], reply: Vec<u8>) -> Vec<u8> {
    // Nearly every reply fits the smallest size: no second parse of the query for it.
    if reply.len() <= 512 {
        return reply;
    }
    let limit = Message::from_vec(query)
        .map(|q| q.max_payload().min(MAX_UDP_PAYLOAD))
        .unwrap_or(512) as usize;
    if reply.len() <= limit {
        return reply;
    }
    match Message::from_vec(&reply).and_then(|m| m.truncate().to_vec()) {
        Ok(short) => short,
        Err(_) => reply,
    }
}

/// A SERVFAIL reply to a query packet.
pub(super) fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(ResponseCode::ServFail);
    for q in query.queries() {
        reply.add_query(q.clone());
    }
    reply.to_vec().ok()
}

/// One DNS message over TCP: a two-byte length, then the message, all of it within
/// `within` (a client sending a byte at a time cannot hold the connection longer).
pub(super) fn read_tcp_message(conn: &mut TcpStream, within: Duration) -> io::Result<Vec<u8>> {
    let deadline = std::time::Instant::now() + within;
    let read_all = |conn: &mut TcpStream, buf: &mut [u8]| -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            conn.set_read_timeout(Some(left))?;
            match conn.read(&mut buf[done..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let mut len = [0u8; 2];
    read_all(conn, &mut len)?;
    let mut packet = vec![0u8; u16::from_be_bytes(len) as usize];
    read_all(conn, &mut packet)?;
    Ok(packet)
}

pub(super) fn write_tcp_message(conn: &mut TcpStream, packet: &[u8]) -> io::Result<()> {
    let len = u16::try_from(packet.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 64 KiB"))?;
    let mut out = Vec::with_capacity(packet.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    conn.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::fixture::records;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(77).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
    }

    #[test]
    fn packets_get_answers_nxdomain_or_forwarding() {
        let r = records();
        let reply = respond(&r, "front", None, &query("web.", RecordType::A), 0)
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.id(), 77);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        let got: Vec<String> = m.answers().iter().map(|a| a.data().to_string()).collect();
        assert_eq!(got, ["10.0.0.2", "10.0.0.3"]);
        let reply = respond(&r, "front", None, &query("web.", RecordType::AAAA), 0)
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(
            (m.response_code(), m.answers().len()),
            (ResponseCode::NoError, 0)
        );
        // With IPv6 on the network, AAAA answers with it, and A stays IPv4.
        let mut r6 = r.clone();
        let mut ep = r6.endpoint("front", "web-1").unwrap().clone();
        ep.ip6 = Some("fd00::2".parse().unwrap());
        r6.insert(ep);
        let reply = respond(&r6, "front", None, &query("web.", RecordType::AAAA), 0)
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&reply).unwrap();
        let got: Vec<(RecordType, String)> = m
            .answers()
            .iter()
            .map(|a| (a.record_type(), a.data().to_string()))
            .collect();
        assert_eq!(got, [(RecordType::AAAA, "fd00::2".to_string())]);
        let reply = respond(&r6, "front", None, &query("web.", RecordType::A), 0)
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert!(m.answers().iter().all(|a| a.record_type() == RecordType::A));
        let reply = respond(&r, "front", None, &query("nope.", RecordType::A), 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            Message::from_vec(&reply).unwrap().response_code(),
            ResponseCode::NXDomain
        );
        let packet = query("example.com.", RecordType::A);
        assert_eq!(
            respond(&r, "front", None, &packet, 0),
            Some(Err(packet.clone()))
        );
        assert_eq!(respond(&r, "front", None, b"garbage", 0), None);
    }

    #[test]
    fn an_edns_version_we_do_not_speak_gets_badvers() {
        let r = records();
        let mut m = Message::new();
        m.set_id(9).add_query(Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_version(1);
        m.set_edns(e);
        let reply = respond(&r, "front", None, &m.to_vec().unwrap(), 0)
            .unwrap()
            .unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        // BADVERS shares its number (16) with BADSIG, which hickory reads it back as.
        assert_eq!(
            u16::from(reply.response_code()),
            u16::from(ResponseCode::BADVERS)
        );
        assert!(reply.answers().is_empty());
    }

    #[test]
    fn a_tcp_query_must_arrive_whole_within_its_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A client that sends a byte every 50 ms and never finishes.
        let trickle = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            for _ in 0..40 {
                // A length of 0xffff, then a body that never completes.
                if c.write_all(&[0xff]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (mut conn, _) = listener.accept().unwrap();
        let started = std::time::Instant::now();
        let err = read_tcp_message(&mut conn, Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{err}"
        );
        // Bounded by the whole-message deadline, not by the trickle.
        assert!(started.elapsed() < Duration::from_millis(1500));
        drop(conn);
        trickle.join().unwrap();
    }
}

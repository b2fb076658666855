//! A stub resolver, the other end of the server: for tests, benchmarks and probes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

/// A minimal stub resolver for tests, benchmarks and health probes: asks `server` for
/// the A records of `name` over UDP. `Ok(Ok(addresses))` on NOERROR, `Ok(Err(code))`
/// on another response code.
pub fn query_a(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    id: u16,
) -> io::Result<Result<Vec<Ipv4Addr>, ResponseCode>> {
    Ok(query(socket, server, name, id, RecordType::A)?.map(|ips| {
        ips.into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect()
    }))
}

/// [`query_a`] for AAAA records (IPv6 addresses).
pub fn query_aaaa(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    id: u16,
) -> io::Result<Result<Vec<Ipv6Addr>, ResponseCode>> {
    Ok(
        query(socket, server, name, id, RecordType::AAAA)?.map(|ips| {
            ips.into_iter()
                .filter_map(|ip| match ip {
                    IpAddr::V6(a) => Some(a),
                    IpAddr::V4(_) => None,
                })
                .collect()
        }),
    )
}

fn query(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    id: u16,
    rtype: RecordType,
) -> io::Result<Result<Vec<IpAddr>, ResponseCode>> {
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    let invalid =
        |e: hickory_proto::ProtoError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(
        Name::from_ascii(name).map_err(invalid)?,
        rtype,
    ));
    socket.send_to(&m.to_vec().map_err(invalid)?, server)?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        if from != server {
            continue;
        }
        let reply = Message::from_vec(&buf[..n]).map_err(invalid)?;
        if reply.id() != id {
            continue;
        }
        if reply.response_code() != ResponseCode::NoError {
            return Ok(Err(reply.response_code()));
        }
        return Ok(Ok(reply
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()));
    }
}

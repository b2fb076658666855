//! A stub resolver, the other end of the server: for tests, benchmarks and probes.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

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
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    let invalid =
        |e: hickory_proto::ProtoError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(
        Name::from_ascii(name).map_err(invalid)?,
        RecordType::A,
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
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()));
    }
}

//! Forwarding: names that are not ours go to the upstream resolvers (the service's
//! `dns:` servers, else the node's), over UDP or TCP as the client asked.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use super::records::Records;
use super::wire::{fit_udp, read_tcp_message, servfail, write_tcp_message};

/// Asks the first upstream that answers within 2 s over TCP; `None` if none does.
pub(super) fn forward_tcp(packet: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    upstream.iter().find_map(|up| {
        let mut s = TcpStream::connect_timeout(up, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write_tcp_message(&mut s, packet).ok()?;
        read_tcp_message(&mut s, Duration::from_secs(2)).ok()
    })
}

/// Where a client's forwarded queries go: its service's `dns:` servers, else the
/// node's upstream resolvers.
pub(super) fn upstream_for(
    records: &Records,
    network: &str,
    client: IpAddr,
    default: &[SocketAddr],
) -> Vec<SocketAddr> {
    let own = match client {
        IpAddr::V4(ip) => records
            .client(network, ip)
            .map(|ep| ep.upstream.clone())
            .filter(|u| !u.is_empty()),
        IpAddr::V6(_) => None,
    };
    own.unwrap_or_else(|| default.to_vec())
}

/// Relays one query to the first upstream that answers within 2 s per try.
pub(super) fn forward(
    socket: &UdpSocket,
    packet: &[u8],
    peer: SocketAddr,
    upstream: &[SocketAddr],
) {
    for up in upstream {
        let bind: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(s) = UdpSocket::bind(bind) else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.send_to(packet, up).is_err() {
            continue;
        }
        // As large as a datagram can be: the upstream answers within the client's
        // EDNS size, which may be more than ours; cut to what the client takes.
        let mut buf = vec![0u8; 65535];
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            if from == *up {
                let _ = socket.send_to(&fit_udp(packet, buf[..n].to_vec()), peer);
                return;
            }
        }
    }
    // No upstream answered: say so at once rather than let the client time out.
    if let Some(reply) = servfail(packet) {
        let _ = socket.send_to(&reply, peer);
    }
}

/// The `nameserver` lines of a resolv.conf, as port-53 socket addresses.
pub fn parse_nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read() {
        let text = "# c\nnameserver 10.255.255.53\nsearch x\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "10.255.255.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}

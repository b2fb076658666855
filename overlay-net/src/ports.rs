//! Published ports: from a service's `ports:` to host ports held by berth and the DNAT
//! rules that send them to the container.
//!
//! Each IPv4 host port is *reserved* by a socket bound to it (never listening, never
//! read): the kernel then tells us, and anyone else, that the port is taken, while
//! the DNAT rules catch the traffic before it could reach that socket. The host's IPv6
//! addresses get a userspace relay instead ([`crate::proxy`]): containers are
//! IPv4-only, and nftables does not translate between families. A port with no host
//! address is published on both, as Docker does: `0.0.0.0:P` and `[::]:P`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::socket::{bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
use spec::model::{Port, Protocol};

use crate::firewall::PortRule;
use crate::proxy::{Bound, Relay};

/// Why a port could not be published.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("service {service}: host port {port}/{proto} on {host} is already in use (by another program or container); publish another port or stop what holds it")]
    InUse {
        service: String,
        port: String,
        proto: &'static str,
        host: String,
    },
    #[error("service {service}: ports: {what}")]
    Unsupported { service: String, what: String },
    #[error("service {service}: ports: could not reserve host port {port}: {message}")]
    Reserve {
        service: String,
        port: String,
        message: String,
    },
}

/// One port as published: what the daemon reports (`docker compose ps` style).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    pub proto: String,
    /// `None`: every IPv4 address of the host (`0.0.0.0`); `::` is every IPv6 one.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
}

impl Published {
    /// The DNAT rule for an IPv4 publication; IPv6 ones are relayed, not rules.
    pub fn rule(&self) -> Option<PortRule> {
        let host_ip = match self.host_ip {
            None => None,
            Some(IpAddr::V4(ip)) => Some(ip),
            Some(IpAddr::V6(_)) => return None,
        };
        Some(PortRule {
            proto: if self.proto == "udp" { "udp" } else { "tcp" },
            host_ip,
            host_port: self.host_port,
            container_ip: self.container_ip,
            container_port: self.container_port,
        })
    }

    /// The host side as Docker prints it: `0.0.0.0:8080`, `[::]:8080`.
    pub fn host(&self) -> String {
        match self.host_ip {
            None => format!("0.0.0.0:{}", self.host_port),
            Some(ip) => SocketAddr::new(ip, self.host_port).to_string(),
        }
    }
}

/// What holds a published port: a bare IPv4 socket, or an IPv6 relay.
#[derive(Debug)]
enum Hold {
    Socket(#[allow(dead_code)] OwnedFd),
    Relay(#[allow(dead_code)] Relay),
}

/// A held host port.
#[derive(Debug)]
pub struct Reservation {
    pub published: Published,
    _hold: Hold,
}

/// Where a port is published on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostIp {
    /// Every address: IPv4 by DNAT, and IPv6 by relay where the host has IPv6.
    Any,
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// The host address a port binds. Pure.
pub fn host_ip(service: &str, port: &Port) -> Result<HostIp, PublishError> {
    match port.host_ip.as_deref().map(str::trim) {
        None | Some("") => Ok(HostIp::Any),
        Some(text) => match text.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ok(HostIp::Any),
            Ok(IpAddr::V4(ip)) => Ok(HostIp::V4(ip)),
            Ok(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
                Some(v4) if !v4.is_unspecified() => Ok(HostIp::V4(v4)),
                _ => Ok(HostIp::V6(ip)),
            },
            Err(_) => Err(PublishError::Unsupported {
                service: service.to_string(),
                what: format!("host_ip {text:?} is not an IP address"),
            }),
        },
    }
}

fn proto_name(service: &str, p: Protocol) -> Result<&'static str, PublishError> {
    match p {
        Protocol::Tcp => Ok("tcp"),
        Protocol::Udp => Ok("udp"),
        Protocol::Sctp => Err(PublishError::Unsupported {
            service: service.to_string(),
            what: "sctp is not supported; use tcp or udp".to_string(),
        }),
    }
}

fn reserve_v4(proto: &'static str, ip: Option<Ipv4Addr>, port: u16) -> nix::Result<(OwnedFd, u16)> {
    let ty = if proto == "udp" {
        SockType::Datagram
    } else {
        SockType::Stream
    };
    let fd = socket(AddressFamily::Inet, ty, SockFlag::SOCK_CLOEXEC, None)?;
    let addr = SockaddrIn::from(SocketAddrV4::new(ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port));
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    let bound: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
    Ok((fd, bound.port()))
}

/// The host has no IPv6 at all (disabled, or no such address family): `Any` then
/// means IPv4 only, as with Docker on such a host.
fn no_ipv6(e: Errno) -> bool {
    matches!(e, Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL)
}

/// Why holding one candidate port failed.
enum HoldError {
    Sys(Errno),
    Relay(std::io::Error),
}

/// Holds `port` (0: one the kernel picks) for one publication to `target`: the IPv4
/// socket and/or the IPv6 relay its host address needs. All or nothing: on error what
/// was held is dropped, which frees it.
fn hold(
    proto: &'static str,
    ip: HostIp,
    port: u16,
    target: SocketAddrV4,
) -> Result<Vec<Reservation>, HoldError> {
    let mut out = Vec::new();
    let mut port = port;
    let published = |host_ip, host_port| Published {
        proto: proto.to_string(),
        host_ip,
        host_port,
        container_ip: *target.ip(),
        container_port: target.port(),
    };
    if let HostIp::Any | HostIp::V4(_) = ip {
        let v4 = match ip {
            HostIp::V4(a) => Some(a),
            _ => None,
        };
        let (fd, got) = reserve_v4(proto, v4, port).map_err(HoldError::Sys)?;
        // The IPv6 side takes the same number, as Docker's `0.0.0.0:P` and `[::]:P`.
        port = got;
        out.push(Reservation {
            published: published(v4.map(IpAddr::V4), got),
            _hold: Hold::Socket(fd),
        });
    }
    let v6 = match ip {
        HostIp::V6(a) => Some(a),
        HostIp::Any => Some(Ipv6Addr::UNSPECIFIED),
        HostIp::V4(_) => None,
    };
    if let Some(a) = v6 {
        match Bound::new(proto, SocketAddrV6::new(a, port, 0, 0)) {
            Ok(bound) => {
                let got = bound.port();
                let relay = bound.relay(target).map_err(HoldError::Relay)?;
                out.push(Reservation {
                    published: published(Some(IpAddr::V6(a)), got),
                    _hold: Hold::Relay(relay),
                });
            }
            Err(e) if ip == HostIp::Any && no_ipv6(e) => {}
            Err(e) => return Err(HoldError::Sys(e)),
        }
    }
    Ok(out)
}

/// Reserves the host ports of `ports` for a container at `container_ip`: a published
/// range means "one free port of it", as in Compose; no published port means one the
/// kernel picks. All or nothing: on error, what was reserved is released.
pub fn reserve(
    service: &str,
    ports: &[Port],
    container_ip: Ipv4Addr,
) -> Result<Vec<Reservation>, PublishError> {
    let mut out = Vec::new();
    for port in ports {
        let proto = proto_name(service, port.protocol)?;
        let ip = host_ip(service, port)?;
        let target = SocketAddrV4::new(container_ip, port.target);
        let range = port.published.map(|r| (r.start, r.end)).unwrap_or((0, 0));
        let mut last_err = None;
        let mut got = None;
        // With no published port the kernel picks one for IPv4, which IPv6 may have
        // taken: a few fresh picks before calling it in use.
        let candidates: Vec<u16> = if range == (0, 0) {
            vec![0; 8]
        } else {
            (range.0..=range.1).collect()
        };
        for candidate in candidates {
            match hold(proto, ip, candidate, target) {
                Ok(ok) => {
                    got = Some(ok);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let shown = port
            .published
            .map(|r| r.to_string())
            .unwrap_or_else(|| "0".to_string());
        match (got, last_err) {
            (Some(held), _) => out.extend(held),
            (None, Some(HoldError::Sys(Errno::EADDRINUSE))) => {
                return Err(PublishError::InUse {
                    service: service.to_string(),
                    port: shown,
                    proto,
                    host: match ip {
                        HostIp::Any => "0.0.0.0 and [::]".to_string(),
                        HostIp::V4(a) => a.to_string(),
                        HostIp::V6(a) => format!("[{a}]"),
                    },
                })
            }
            (None, Some(HoldError::Sys(Errno::EADDRNOTAVAIL))) => {
                return Err(PublishError::Unsupported {
                    service: service.to_string(),
                    what: format!(
                        "host_ip {} is not an address of this host; use one of its addresses or leave host_ip out",
                        port.host_ip.as_deref().unwrap_or_default()
                    ),
                })
            }
            (None, e) => {
                return Err(PublishError::Reserve {
                    service: service.to_string(),
                    port: shown,
                    message: match e {
                        Some(HoldError::Sys(e)) => e.to_string(),
                        Some(HoldError::Relay(e)) => format!("could not start the IPv6 relay: {e}"),
                        None => String::new(),
                    },
                })
            }
        }
    }
    Ok(out)
}

/// The address a client on the host uses for a published port (for reports and tests).
pub fn local_addr(p: &Published) -> SocketAddr {
    let ip = match p.host_ip {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(IpAddr::V6(a)) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Some(ip) => ip,
    };
    SocketAddr::new(ip, p.host_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::model::{PortMode, PortRange};

    fn port(published: Option<(u16, u16)>, proto: Protocol, host_ip: Option<&str>) -> Port {
        Port {
            name: None,
            target: 80,
            published: published.map(|(start, end)| PortRange { start, end }),
            host_ip: host_ip.map(String::from),
            protocol: proto,
            mode: PortMode::Ingress,
            app_protocol: None,
        }
    }

    #[test]
    fn host_ips_are_read() {
        let p = |ip| port(None, Protocol::Tcp, ip);
        assert_eq!(host_ip("web", &p(None)).unwrap(), HostIp::Any);
        assert_eq!(host_ip("web", &p(Some("0.0.0.0"))).unwrap(), HostIp::Any);
        assert_eq!(
            host_ip("web", &p(Some("127.0.0.1"))).unwrap(),
            HostIp::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            host_ip("web", &p(Some("[::1]"))).unwrap(),
            HostIp::V6(Ipv6Addr::LOCALHOST)
        );
        assert_eq!(
            host_ip("web", &p(Some("::"))).unwrap(),
            HostIp::V6(Ipv6Addr::UNSPECIFIED)
        );
        // An IPv4-mapped address is the IPv4 address.
        assert_eq!(
            host_ip("web", &p(Some("::ffff:127.0.0.1"))).unwrap(),
            HostIp::V4(Ipv4Addr::LOCALHOST)
        );
        assert!(host_ip("web", &p(Some("nope"))).is_err());
    }

    #[test]
    fn published_addresses_print_as_docker_prints_them() {
        let mut p = Published {
            proto: "tcp".to_string(),
            host_ip: None,
            host_port: 8080,
            container_ip: Ipv4Addr::new(10, 89, 0, 2),
            container_port: 80,
        };
        assert_eq!(p.host(), "0.0.0.0:8080");
        assert!(p.rule().is_some());
        p.host_ip = Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(p.host(), "[::]:8080");
        assert_eq!(local_addr(&p).to_string(), "[::1]:8080");
        // IPv6 is relayed, never a DNAT rule.
        assert!(p.rule().is_none());
    }

    #[test]
    fn a_taken_port_is_a_clear_error_and_ranges_pick_a_free_one() {
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().port();
        let e = reserve(
            "web",
            &[port(Some((taken, taken)), Protocol::Tcp, Some("127.0.0.1"))],
            ip,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("service web") && msg.contains(&format!("{taken}/tcp")),
            "{msg}"
        );
        // The kernel picks a port when none is published; the reservation then holds it.
        let r = reserve("web", &[port(None, Protocol::Udp, Some("127.0.0.1"))], ip).unwrap();
        let got = r[0].published.host_port;
        assert_ne!(got, 0);
        assert!(std::net::UdpSocket::bind(("127.0.0.1", got)).is_err());
        drop(r);
        assert!(std::net::UdpSocket::bind(("127.0.0.1", got)).is_ok());
        // A range skips the taken port.
        if taken < u16::MAX {
            let r = reserve(
                "web",
                &[port(
                    Some((taken, taken + 1)),
                    Protocol::Tcp,
                    Some("127.0.0.1"),
                )],
                ip,
            );
            if let Ok(r) = r {
                assert_eq!(r[0].published.host_port, taken + 1);
            }
        }
        assert!(reserve("web", &[port(None, Protocol::Sctp, None)], ip).is_err());
    }
}

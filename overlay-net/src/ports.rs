//! Published ports: from a service's `ports:` to host ports held by berth and the DNAT
//! rules that send them to the container.
//!
//! Each host port is *reserved* by a socket bound to it (never listening, never
//! read): the kernel then tells us, and anyone else, that the port is taken, while
//! the DNAT rules catch the traffic before it could reach that socket.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;

use nix::sys::socket::{bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
use spec::model::{Port, Protocol};

use crate::firewall::PortRule;

/// Why a port could not be published.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
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
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
}

impl Published {
    pub fn rule(&self) -> PortRule {
        PortRule {
            proto: if self.proto == "udp" { "udp" } else { "tcp" },
            host_ip: self.host_ip,
            host_port: self.host_port,
            container_ip: self.container_ip,
            container_port: self.container_port,
        }
    }
}

/// A held host port.
#[derive(Debug)]
pub struct Reservation {
    pub published: Published,
    _socket: OwnedFd,
}

/// The host address a port binds: `None` is every address. Pure.
pub fn host_ip(service: &str, port: &Port) -> Result<Option<Ipv4Addr>, PortError> {
    match port.host_ip.as_deref().map(str::trim) {
        None | Some("") | Some("0.0.0.0") => Ok(None),
        Some(text) => match text.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Ok(Some(ip)),
            Ok(IpAddr::V6(_)) => Err(PortError::Unsupported {
                service: service.to_string(),
                what: format!("host_ip {text}: IPv6 host addresses are not supported yet (containers are IPv4-only); use an IPv4 address"),
            }),
            Err(_) => Err(PortError::Unsupported {
                service: service.to_string(),
                what: format!("host_ip {text:?} is not an IP address"),
            }),
        },
    }
}

fn proto_name(service: &str, p: Protocol) -> Result<&'static str, PortError> {
    match p {
        Protocol::Tcp => Ok("tcp"),
        Protocol::Udp => Ok("udp"),
        Protocol::Sctp => Err(PortError::Unsupported {
            service: service.to_string(),
            what: "sctp is not supported; use tcp or udp".to_string(),
        }),
    }
}

fn reserve_one(
    proto: &'static str,
    ip: Option<Ipv4Addr>,
    port: u16,
) -> nix::Result<(OwnedFd, u16)> {
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

/// Reserves the host ports of `ports` for a container at `container_ip`: a published
/// range means "one free port of it", as in Compose; no published port means one the
/// kernel picks. All or nothing: on error, what was reserved is released.
pub fn reserve(
    service: &str,
    ports: &[Port],
    container_ip: Ipv4Addr,
) -> Result<Vec<Reservation>, PortError> {
    let mut out = Vec::new();
    for port in ports {
        let proto = proto_name(service, port.protocol)?;
        let ip = host_ip(service, port)?;
        let range = port.published.map(|r| (r.start, r.end)).unwrap_or((0, 0));
        let mut last_err = None;
        let mut got = None;
        for candidate in range.0..=range.1 {
            match reserve_one(proto, ip, candidate) {
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
        let (fd, host_port) = match (got, last_err) {
            (Some(ok), _) => ok,
            (None, Some(nix::errno::Errno::EADDRINUSE)) => {
                return Err(PortError::InUse {
                    service: service.to_string(),
                    port: shown,
                    proto,
                    host: ip
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "0.0.0.0".to_string()),
                })
            }
            (None, e) => {
                return Err(PortError::Reserve {
                    service: service.to_string(),
                    port: shown,
                    message: e.map(|e| e.to_string()).unwrap_or_default(),
                })
            }
        };
        out.push(Reservation {
            published: Published {
                proto: proto.to_string(),
                host_ip: ip,
                host_port,
                container_ip,
                container_port: port.target,
            },
            _socket: fd,
        });
    }
    Ok(out)
}

/// The address a client on the host uses for a published port (for reports and tests).
pub fn local_addr(p: &Published) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(p.host_ip.unwrap_or(Ipv4Addr::LOCALHOST)),
        p.host_port,
    )
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
        assert_eq!(host_ip("web", &p(None)).unwrap(), None);
        assert_eq!(host_ip("web", &p(Some("0.0.0.0"))).unwrap(), None);
        assert_eq!(
            host_ip("web", &p(Some("127.0.0.1"))).unwrap(),
            Some(Ipv4Addr::LOCALHOST)
        );
        assert!(host_ip("web", &p(Some("::1")))
            .unwrap_err()
            .to_string()
            .contains("IPv6"));
        assert!(host_ip("web", &p(Some("nope"))).is_err());
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

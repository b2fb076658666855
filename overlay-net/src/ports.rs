//! Published ports: from a service's `ports:` to host ports held by berth, and the
//! DNAT rule that sends one to the containers behind it.
//!
//! Each IPv4 host port is *reserved* by a socket bound to it (never listening, never
//! read): the kernel then tells us, and anyone else, that the port is taken, while
//! the DNAT rules catch the traffic before it could reach that socket (and when no
//! container is serving, there is no rule, and the socket refuses the connection).
//! The host's IPv6 addresses are held by a userspace relay ([`crate::proxy`]): it
//! serves containers that are IPv4-only (nftables does not translate between
//! families) and `[::1]`; containers on an `enable_ipv6` network get the rest of the
//! IPv6 side by `ip6` DNAT to their IPv6 address ([`crate::firewall::PortRule6`]). A
//! port with no host address is published on both, as Docker does: `0.0.0.0:P` and
//! `[::]:P`.
//!
//! A [`HostPort`] is held once however many containers are behind it: which ones, and
//! who may share it, is `crate::port_groups`'s bookkeeping.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::socket::{bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
use spec::model::{Port, PortMode, Protocol};

use crate::firewall::{PortRule, PortRule6};
use crate::proxy::{Backends, Bound, Relay};

/// Why a port could not be published.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("service {service}: host port {port}/{proto} on {host} is already in use by {holder}; publish another port or stop what holds it")]
    InUse {
        service: String,
        port: String,
        proto: &'static str,
        host: String,
        /// `service web of stack shop`, or `another program or container`.
        holder: String,
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

/// A held host port: its IPv4 socket and/or IPv6 relay, whatever the number of
/// containers behind it. Dropping it frees the port.
#[derive(Debug)]
pub struct HostPort {
    pub port: u16,
    /// The IPv4 side, if any: `Some(None)` on every address, `Some(Some(a))` on `a`.
    pub v4: Option<Option<Ipv4Addr>>,
    /// The IPv6 address relayed, if any.
    pub v6: Option<Ipv6Addr>,
    /// Where the IPv6 relay sends new connections; the manager keeps it in step with
    /// the DNAT rule's backends.
    pub relay: Backends,
    _holds: Vec<Hold>,
}

impl HostPort {
    /// What is published for one container behind this port (`backend`): one entry
    /// per side (IPv4, IPv6), as Docker reports them.
    pub fn published(&self, proto: &str, backend: SocketAddrV4) -> Vec<Published> {
        let entry = |host_ip| Published {
            proto: proto.to_string(),
            host_ip,
            host_port: self.port,
            container_ip: *backend.ip(),
            container_port: backend.port(),
        };
        let v4 = self.v4.map(|h| entry(h.map(IpAddr::V4)));
        let v6 = self.v6.map(|a| entry(Some(IpAddr::V6(a))));
        v4.into_iter().chain(v6).collect()
    }

    /// The DNAT rules: the IPv4 side's, and the IPv6 side's when its containers have
    /// IPv6 addresses (`members6`). None when there is neither (an IPv6 side of
    /// IPv4-only containers is relayed).
    pub fn rule(
        &self,
        proto: &'static str,
        (backends, members): (Vec<SocketAddrV4>, Vec<SocketAddrV4>),
        (backends6, members6): (Vec<SocketAddrV6>, Vec<SocketAddrV6>),
    ) -> Option<PortRule> {
        let v6 = self
            .v6
            .filter(|_| !members6.is_empty())
            .map(|host_ip| PortRule6 {
                host_ip,
                backends: backends6,
                members: members6,
            });
        if self.v4.is_none() && v6.is_none() {
            return None;
        }
        let (backends, members) = match self.v4 {
            Some(_) => (backends, members),
            None => (Vec::new(), Vec::new()),
        };
        Some(PortRule {
            proto,
            host_ip: self.v4.flatten(),
            host_port: self.port,
            backends,
            members,
            v6,
        })
    }

    /// The name of this port's nft tables (`ip`, and `ip6` when DNAT'd over IPv6).
    pub fn table(&self, prefix: &str, proto: &str) -> String {
        match (self.v4, self.v6) {
            (None, Some(v6)) => crate::names::port_table6(prefix, proto, v6, self.port),
            (v4, _) => crate::names::port_table(prefix, proto, v4.flatten(), self.port),
        }
    }
}

/// Where a port is published on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
#[derive(Debug)]
pub enum HoldError {
    Sys(Errno),
    Relay(std::io::Error),
}

/// Holds `port` (0: one the kernel picks) on `ip`: the IPv4 socket and/or the IPv6
/// relay (sending to no backend until told) its host address needs. All or nothing:
/// on error what was held is dropped, which frees it.
pub fn hold(proto: &'static str, ip: HostIp, port: u16) -> Result<HostPort, HoldError> {
    let mut holds = Vec::new();
    let mut port = port;
    let mut v4_side = None;
    let mut v6_side = None;
    let relay = Backends::default();
    if let HostIp::Any | HostIp::V4(_) = ip {
        let v4 = match ip {
            HostIp::V4(a) => Some(a),
            _ => None,
        };
        let (fd, got) = reserve_v4(proto, v4, port).map_err(HoldError::Sys)?;
        // The IPv6 side takes the same number, as Docker's `0.0.0.0:P` and `[::]:P`.
        port = got;
        v4_side = Some(v4);
        holds.push(Hold::Socket(fd));
    }
    let v6 = match ip {
        HostIp::V6(a) => Some(a),
        HostIp::Any => Some(Ipv6Addr::UNSPECIFIED),
        HostIp::V4(_) => None,
    };
    if let Some(a) = v6 {
        match Bound::new(proto, SocketAddrV6::new(a, port, 0, 0)) {
            Ok(bound) => {
                port = bound.port();
                holds.push(Hold::Relay(
                    bound.relay(relay.clone()).map_err(HoldError::Relay)?,
                ));
                v6_side = Some(a);
            }
            Err(e) if ip == HostIp::Any && no_ipv6(e) => {}
            Err(e) => return Err(HoldError::Sys(e)),
        }
    }
    Ok(HostPort {
        port,
        v4: v4_side,
        v6: v6_side,
        relay,
        _holds: holds,
    })
}

/// One entry of a service's `ports:`, read: what it asks of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub proto: &'static str,
    pub host: HostIp,
    /// The published port or range; `None`: one the kernel picks.
    pub range: Option<(u16, u16)>,
    pub target: u16,
    /// The replicas of the service may share it: one published port (not a range,
    /// not ephemeral) in the default `mode: ingress`. A range gives each container a
    /// port of its own, as Compose does (that is what a range is for there), and
    /// `mode: host` means one container per port, as on Swarm.
    pub shared: bool,
}

/// Reads one entry of `ports:`. Pure.
pub fn wanted(service: &str, port: &Port) -> Result<Wanted, PublishError> {
    let range = port.published.map(|r| (r.start, r.end));
    Ok(Wanted {
        proto: proto_name(service, port.protocol)?,
        host: host_ip(service, port)?,
        range,
        target: port.target,
        shared: port.mode == PortMode::Ingress && range.is_some_and(|(a, b)| a == b),
    })
}

/// Holds a port for `w`: its one port, the first free port of its range, or one the
/// kernel picks. `taken` says which candidates berth already holds, and for whom: they
/// are skipped (and named if nothing else is free).
pub fn hold_wanted(
    service: &str,
    port: &Port,
    w: &Wanted,
    taken: impl Fn(u16) -> Option<String>,
) -> Result<HostPort, PublishError> {
    // With no published port the kernel picks one for IPv4, which IPv6 may have
    // taken: a few fresh picks before calling it in use.
    let candidates: Vec<u16> = match w.range {
        None => vec![0; 8],
        Some((a, b)) => (a..=b).collect(),
    };
    let mut last_err = None;
    let mut holder = None;
    for candidate in candidates {
        if candidate != 0 {
            if let Some(h) = taken(candidate) {
                holder = Some(h);
                last_err = Some(HoldError::Sys(Errno::EADDRINUSE));
                continue;
            }
        }
        match hold(w.proto, w.host, candidate) {
            Ok(held) => return Ok(held),
            Err(e) => last_err = Some(e),
        }
    }
    Err(hold_error(service, port, w, last_err, holder))
}

/// The error for a port that could not be held (`holder`: who of berth's holds it).
pub fn hold_error(
    service: &str,
    port: &Port,
    w: &Wanted,
    e: Option<HoldError>,
    holder: Option<String>,
) -> PublishError {
    let shown = port
        .published
        .map(|r| r.to_string())
        .unwrap_or_else(|| "0".to_string());
    match e {
        Some(HoldError::Sys(Errno::EADDRINUSE)) => PublishError::InUse {
            service: service.to_string(),
            port: shown,
            proto: w.proto,
            host: match w.host {
                HostIp::Any => "0.0.0.0 and [::]".to_string(),
                HostIp::V4(a) => a.to_string(),
                HostIp::V6(a) => format!("[{a}]"),
            },
            holder: holder.unwrap_or_else(|| "another program or container".to_string()),
        },
        Some(HoldError::Sys(Errno::EADDRNOTAVAIL)) => PublishError::Unsupported {
            service: service.to_string(),
            what: format!(
                "host_ip {} is not an address of this host; use one of its addresses or leave host_ip out",
                port.host_ip.as_deref().unwrap_or_default()
            ),
        },
        e => PublishError::Reserve {
            service: service.to_string(),
            port: shown,
            message: match e {
                Some(HoldError::Sys(e)) => e.to_string(),
                Some(HoldError::Relay(e)) => format!("could not start the IPv6 relay: {e}"),
                None => String::new(),
            },
        },
    }
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
        p.host_ip = Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(p.host(), "[::]:8080");
        assert_eq!(local_addr(&p).to_string(), "[::1]:8080");
    }

    #[test]
    fn only_a_single_published_port_in_ingress_mode_is_shared() {
        let w = |p: Port| wanted("web", &p).unwrap().shared;
        assert!(w(port(Some((8080, 8080)), Protocol::Tcp, None)));
        assert!(!w(port(Some((8080, 8081)), Protocol::Tcp, None)));
        assert!(!w(port(None, Protocol::Tcp, None)));
        let mut host = port(Some((8080, 8080)), Protocol::Udp, None);
        host.mode = PortMode::Host;
        assert!(!w(host));
    }

    #[test]
    fn a_taken_port_is_a_clear_error_and_ranges_pick_a_free_one() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().port();
        let hold = |p: Port| {
            let w = wanted("web", &p).unwrap();
            hold_wanted("web", &p, &w, |_| None)
        };
        let e = hold(port(Some((taken, taken)), Protocol::Tcp, Some("127.0.0.1"))).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("service web")
                && msg.contains(&format!("{taken}/tcp"))
                && msg.contains("in use by another program"),
            "{msg}"
        );
        // Held by berth for another service: that service is named.
        let p = port(Some((taken, taken)), Protocol::Tcp, Some("127.0.0.1"));
        let w = wanted("api", &p).unwrap();
        let e = hold_wanted("api", &p, &w, |_| Some("service web of stack shop".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use by service web of stack shop"), "{e}");
        // The kernel picks a port when none is published; the hold keeps it.
        let r = hold(port(None, Protocol::Udp, Some("127.0.0.1"))).unwrap();
        let got = r.port;
        assert_ne!(got, 0);
        assert!(std::net::UdpSocket::bind(("127.0.0.1", got)).is_err());
        drop(r);
        assert!(std::net::UdpSocket::bind(("127.0.0.1", got)).is_ok());
        // A range skips the taken port.
        if taken < u16::MAX {
            if let Ok(r) = hold(port(
                Some((taken, taken + 1)),
                Protocol::Tcp,
                Some("127.0.0.1"),
            )) {
                assert_eq!(r.port, taken + 1);
            }
        }
        assert!(wanted("web", &port(None, Protocol::Sctp, None)).is_err());
    }
}

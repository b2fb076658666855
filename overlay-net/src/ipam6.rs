//! IPv6 address management for `enable_ipv6` networks, as pure functions beside
//! `ipam` (IPv4): which IPv6 subnet a network gets and which address a container gets
//! in it. No kernel, no disk.
//!
//! A network without an IPv6 `ipam.config` subnet gets a /64 of unique local
//! addresses (RFC 4193, `fd00::/8`) whose 40-bit global ID is derived from the
//! network's name, as Docker gives such networks a ULA /64 from its default pool
//! `fd00::/8`: a name always gets the same prefix, and two networks (or two daemons)
//! practically never share one. A prefix that is already routed on the host or used by
//! another network moves to the next subnet ID (the 16 bits after the global ID).

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ipam::IpamError;

/// An IPv6 prefix, always stored with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet6 {
    addr: Ipv6Addr,
    len: u8,
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

impl Subnet6 {
    /// The prefix `addr/len` (host bits cleared); `len` above 128 is clamped.
    pub fn new(addr: Ipv6Addr, len: u8) -> Subnet6 {
        let len = len.min(128);
        Subnet6 {
            addr: Ipv6Addr::from(u128::from(addr) & mask(len)),
            len,
        }
    }
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask(self.len) == u128::from(self.addr)
    }
    pub fn overlaps(&self, other: &Subnet6) -> bool {
        let len = self.len.min(other.len);
        u128::from(self.addr) & mask(len) == u128::from(other.addr) & mask(len)
    }
    /// The `index`-th address of the prefix (0 is the subnet-router anycast address).
    pub fn nth(&self, index: u128) -> Option<Ipv6Addr> {
        let host_bits = 128 - u32::from(self.len);
        let fits = host_bits >= 128 || index < (1u128 << host_bits);
        fits.then(|| Ipv6Addr::from(u128::from(self.addr) | index))
    }
}

impl fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Subnet6 {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Subnet6, IpamError> {
        let bad = || IpamError::BadSubnet6(s.to_string());
        let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 128 {
            return Err(bad());
        }
        Ok(Subnet6::new(addr, len))
    }
}

impl TryFrom<String> for Subnet6 {
    type Error = IpamError;
    fn try_from(s: String) -> Result<Subnet6, IpamError> {
        s.parse()
    }
}

impl From<Subnet6> for String {
    fn from(s: Subnet6) -> String {
        s.to_string()
    }
}

/// True when `text` is written as an IPv6 prefix (`ipam.config` mixes both families).
pub fn is_ipv6_subnet(text: &str) -> bool {
    text.split_once('/')
        .is_some_and(|(addr, _)| addr.trim().parse::<Ipv6Addr>().is_ok())
}

/// A network's IPv6 addressing: its subnet and the gateway address the bridge holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addressing6 {
    pub subnet: Subnet6,
    pub gateway: Ipv6Addr,
    /// `ipam.config.ip_range`: where automatic addresses come from (inside `subnet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Subnet6>,
}

/// The ULA /64 candidates of network `network`, in order: `fd` + a 40-bit global ID
/// from the name's hash, then each subnet ID from 0.
fn ula_candidates(network: &str) -> impl Iterator<Item = Subnet6> {
    let hash = crate::names::short_hash(&["ipv6", network], 10);
    let global = u128::from_str_radix(&hash, 16).unwrap_or(0);
    let base = (0xfdu128 << 120) | (global << 80);
    (0..=u16::MAX as u128).map(move |sid| Subnet6::new(Ipv6Addr::from(base | (sid << 64)), 64))
}

/// Chooses a network's IPv6 subnet and gateway. `requested` is the IPv6 `ipam.config`
/// entry (subnet, gateway, ip_range as written); `taken` holds the host's IPv6 routes
/// and the other networks' IPv6 subnets. A requested subnet that overlaps another berth
/// network is an error; a default one skips everything taken.
pub fn plan_network6(
    network: &str,
    requested: Option<(&str, Option<&str>, Option<&str>)>,
    taken: &[Subnet6],
    other_networks: &[Subnet6],
) -> Result<Addressing6, IpamError> {
    let subnet = match requested {
        Some((subnet, _, _)) => {
            let subnet: Subnet6 = subnet.parse()?;
            if let Some(other) = other_networks.iter().find(|o| o.overlaps(&subnet)) {
                return Err(IpamError::Overlap6 {
                    network: network.to_string(),
                    subnet,
                    other: *other,
                });
            }
            subnet
        }
        None => ula_candidates(network)
            .find(|c| {
                !taken
                    .iter()
                    .chain(other_networks)
                    // A default route (::/0) overlaps everything and must not count.
                    .any(|t| t.prefix_len() > 0 && t.overlaps(c))
            })
            .ok_or_else(|| IpamError::PoolExhausted {
                network: network.to_string(),
                pool: "fd00::/8 in /64s".to_string(),
            })?,
    };
    let gateway = match requested.and_then(|(_, gw, _)| gw) {
        Some(gw) => {
            let ip: Ipv6Addr = gw
                .trim()
                .parse()
                .map_err(|_| IpamError::BadAddress6(gw.to_string()))?;
            if !subnet.contains(ip) || ip == subnet.addr() {
                return Err(IpamError::NotInSubnet {
                    network: network.to_string(),
                    field: "gateway".to_string(),
                    value: gw.to_string(),
                    subnet: subnet.to_string(),
                });
            }
            ip
        }
        None => subnet.nth(1).ok_or_else(|| IpamError::SubnetFull {
            network: network.to_string(),
            subnet: subnet.to_string(),
        })?,
    };
    let ip_range = match requested.and_then(|(_, _, r)| r) {
        Some(r) => {
            let range: Subnet6 = r.parse()?;
            if !(subnet.contains(range.addr()) && range.prefix_len() >= subnet.prefix_len()) {
                return Err(IpamError::NotInSubnet {
                    network: network.to_string(),
                    field: "ip_range".to_string(),
                    value: range.to_string(),
                    subnet: subnet.to_string(),
                });
            }
            Some(range)
        }
        None => None,
    };
    Ok(Addressing6 {
        subnet,
        gateway,
        ip_range,
    })
}

/// Chooses a container's IPv6 address: `requested` (a service's `ipv6_address`) when
/// it is in the subnet and free, else the lowest free address of the `ip_range` (or the
/// subnet) from its second one. `used` holds the other endpoints' addresses; the
/// gateway and the subnet-router anycast address are never given out.
pub fn plan_address6(
    network: &str,
    service: &str,
    net: &Addressing6,
    used: &BTreeSet<Ipv6Addr>,
    requested: Option<&str>,
) -> Result<Ipv6Addr, IpamError> {
    if let Some(req) = requested {
        let address: Ipv6Addr = req
            .trim()
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| IpamError::BadAddress6(req.to_string()))?;
        if !net.subnet.contains(address) || address == net.subnet.addr() || address == net.gateway {
            return Err(IpamError::AddressOutside6 {
                network: network.to_string(),
                service: service.to_string(),
                address,
                subnet: net.subnet,
            });
        }
        if used.contains(&address) {
            return Err(IpamError::AddressTaken6 {
                network: network.to_string(),
                service: service.to_string(),
                address,
            });
        }
        return Ok(address);
    }
    let from = net.ip_range.unwrap_or(net.subnet);
    // Only `used.len() + 3` candidates can all be taken: the search is short.
    (0..=(used.len() as u128 + 2))
        .filter_map(|i| from.nth(i))
        .find(|ip| *ip != net.subnet.addr() && *ip != net.gateway && !used.contains(ip))
        .ok_or_else(|| IpamError::SubnetFull {
            network: network.to_string(),
            subnet: net.subnet.to_string(),
        })
}

/// Parses the kernel's IPv6 routing table (`/proc/net/ipv6_route`) into the
/// destination prefixes it routes, so default subnets can avoid them.
pub fn parse_proc_net_ipv6_route(text: &str) -> Vec<Subnet6> {
    text.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let dest = u128::from_str_radix(cols.next()?, 16).ok()?;
            let len = u8::from_str_radix(cols.next()?, 16).ok()?;
            Some(Subnet6::new(Ipv6Addr::from(dest), len))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Subnet6 {
        text.parse().unwrap()
    }
    fn ip(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn subnets_parse_print_and_compare() {
        assert_eq!(s("fd00:1::5/64").to_string(), "fd00:1::/64");
        assert!(s("fd00::/8").overlaps(&s("fd12:3456::/64")));
        assert!(!s("fd00:1::/64").overlaps(&s("fd00:2::/64")));
        assert_eq!(s("fd00:1::/64").nth(2), Some(ip("fd00:1::2")));
        assert_eq!(s("fd00:1::/127").nth(2), None);
        for bad in ["fd00::", "fd00::/129", "10.0.0.0/8", "x/64"] {
            assert!(bad.parse::<Subnet6>().is_err(), "{bad}");
        }
        assert!(is_ipv6_subnet("2001:db8::/64"));
        assert!(!is_ipv6_subnet("10.0.0.0/24"));
    }

    #[test]
    fn default_subnets_are_ula_derived_from_the_name_and_skip_what_is_taken() {
        let a = plan_network6("shop_front", None, &[], &[]).unwrap();
        assert_eq!(a.subnet.prefix_len(), 64);
        assert_eq!(a.subnet.addr().octets()[0], 0xfd, "{}", a.subnet);
        assert_eq!(a.gateway, a.subnet.nth(1).unwrap());
        // Stable per name, distinct between names.
        assert_eq!(plan_network6("shop_front", None, &[], &[]).unwrap(), a);
        let b = plan_network6("shop_back", None, &[], &[]).unwrap();
        assert_ne!(a.subnet, b.subnet);
        // A host route or another network on it moves it to the next subnet ID; a
        // default route does not count.
        let routes = [s("::/0"), a.subnet];
        let moved = plan_network6("shop_front", None, &routes, &[]).unwrap();
        assert_ne!(moved.subnet, a.subnet);
        assert_eq!(
            u128::from(moved.subnet.addr()) - u128::from(a.subnet.addr()),
            1 << 64
        );
        let moved2 = plan_network6("shop_front", None, &[], &[a.subnet]).unwrap();
        assert_eq!(moved2, moved);
    }

    #[test]
    fn requested_subnet_gateway_and_range_are_honored_or_explained() {
        let a = plan_network6(
            "n",
            Some((
                "2001:db8:1::/64",
                Some("2001:db8:1::fe"),
                Some("2001:db8:1::100/120"),
            )),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(a.subnet, s("2001:db8:1::/64"));
        assert_eq!(a.gateway, ip("2001:db8:1::fe"));
        assert_eq!(
            plan_address6("n", "web", &a, &BTreeSet::new(), None).unwrap(),
            ip("2001:db8:1::100")
        );
        let e = plan_network6(
            "n",
            Some(("2001:db8:1::/64", Some("2001:db8:2::1"), None)),
            &[],
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("gateway 2001:db8:2::1 is not inside"),
            "{e}"
        );
        let e = plan_network6(
            "n",
            Some(("2001:db8:1::/64", None, None)),
            &[],
            &[s("2001:db8::/32")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlaps 2001:db8::/32"), "{e}");
        let e = plan_network6("n", Some(("10.0.0.0/24", None, None)), &[], &[]).unwrap_err();
        assert!(e.to_string().contains("not an IPv6 subnet"), "{e}");
    }

    #[test]
    fn addresses_are_lowest_free_or_the_requested_one() {
        let net = Addressing6 {
            subnet: s("fd00:5::/64"),
            gateway: ip("fd00:5::1"),
            ip_range: None,
        };
        let mut used = BTreeSet::new();
        assert_eq!(
            plan_address6("n", "web", &net, &used, None).unwrap(),
            ip("fd00:5::2")
        );
        used.extend([ip("fd00:5::2"), ip("fd00:5::4")]);
        assert_eq!(
            plan_address6("n", "web", &net, &used, None).unwrap(),
            ip("fd00:5::3")
        );
        assert_eq!(
            plan_address6("n", "web", &net, &used, Some("fd00:5::beef")).unwrap(),
            ip("fd00:5::beef")
        );
        for (req, what) in [
            ("fd00:5::4", "already used"),
            ("fd00:5::1", "not usable"),
            ("fd00:6::3", "not usable"),
            ("nope", "not an IPv6 address"),
        ] {
            let e = plan_address6("n", "web", &net, &used, Some(req)).unwrap_err();
            assert!(e.to_string().contains(what), "{req}: {e}");
        }
    }

    #[test]
    fn proc_net_ipv6_route_is_read() {
        let text = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0\n\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n\
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000004 00000000 80200001       lo\n";
        assert_eq!(
            parse_proc_net_ipv6_route(text),
            vec![s("fd00::/64"), s("::/0"), s("::1/128")]
        );
    }
}

//! IP address management as pure functions: which subnet a network gets and which
//! address a container gets in it. No kernel, no disk: the manager passes in what is
//! taken (host routes, other networks, other endpoints) and records the answer. The
//! WireGuard overlay will carve per-node slices out of a subnet with the same types.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a subnet or an address could not be given out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("{0:?} is not an IPv4 subnet (expected a.b.c.d/len, for example 10.89.3.0/24)")]
    BadSubnet(String),
    #[error("{0:?} is not an IPv4 address")]
    BadAddress(String),
    #[error("network {network}: gateway {gateway} is not inside subnet {subnet}")]
    GatewayOutside {
        network: String,
        gateway: Ipv4Addr,
        subnet: Subnet,
    },
    #[error(
        "network {network}: subnet {subnet} overlaps {other}; choose another ipam.config.subnet"
    )]
    Overlap {
        network: String,
        subnet: Subnet,
        other: Subnet,
    },
    #[error("network {network}: no free subnet left in the address pool {pool}; free a network or configure a larger pool")]
    PoolExhausted { network: String, pool: String },
    #[error("network {network}: ipam {field} {value} is not inside subnet {subnet}")]
    NotInSubnet {
        network: String,
        field: String,
        value: String,
        /// IPv4 or IPv6, as printed.
        subnet: String,
    },
    #[error("network {network}: no free address left in {subnet}")]
    SubnetFull {
        network: String,
        /// IPv4 or IPv6, as printed.
        subnet: String,
    },
    #[error("network {network}: ipv4_address {address} of service {service} is not usable in subnet {subnet} (it is the network, broadcast or gateway address, or outside the subnet)")]
    AddressOutside {
        network: String,
        service: String,
        address: Ipv4Addr,
        subnet: Subnet,
    },
    #[error("network {network}: ipv4_address {address} of service {service} is already used by another container")]
    AddressTaken {
        network: String,
        service: String,
        address: Ipv4Addr,
    },
    #[error("{0:?} is not an IPv6 subnet (expected an IPv6 prefix, for example fd00:1::/64)")]
    BadSubnet6(String),
    #[error("{0:?} is not an IPv6 address")]
    BadAddress6(String),
    #[error(
        "network {network}: IPv6 subnet {subnet} overlaps {other}; choose another ipam.config.subnet"
    )]
    Overlap6 {
        network: String,
        subnet: crate::ipam6::Subnet6,
        other: crate::ipam6::Subnet6,
    },
    #[error("network {network}: ipv6_address {address} of service {service} is not usable in subnet {subnet} (it is the subnet's first address or the gateway, or outside the subnet)")]
    AddressOutside6 {
        network: String,
        service: String,
        address: std::net::Ipv6Addr,
        subnet: crate::ipam6::Subnet6,
    },
    #[error("network {network}: ipv6_address {address} of service {service} is already used by another container")]
    AddressTaken6 {
        network: String,
        service: String,
        address: std::net::Ipv6Addr,
    },
}

/// An IPv4 prefix, always stored with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    addr: Ipv4Addr,
    len: u8,
}

impl Subnet {
    /// The prefix `addr/len` (host bits cleared); `len` above 32 is clamped.
    pub fn new(addr: Ipv4Addr, len: u8) -> Subnet {
        let len = len.min(32);
        Subnet {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        }
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let len = self.len.min(other.len);
        u32::from(self.addr) & mask(len) == u32::from(other.addr) & mask(len)
    }
    /// The last address (broadcast for a LAN).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.len))
    }
    /// The `index`-th address of the prefix (0 is the network address).
    pub fn nth(&self, index: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.len));
        (u64::from(index) < size).then(|| Ipv4Addr::from(u32::from(self.addr) + index))
    }
    /// Splits the prefix into the sub-prefixes of length `len`, in order.
    pub fn children(&self, len: u8) -> impl Iterator<Item = Subnet> + '_ {
        let count: u64 = if len >= self.len && len <= 32 {
            1u64 << (len - self.len)
        } else {
            0
        };
        let step = if len <= 32 {
            1u64 << (32 - u32::from(len))
        } else {
            0
        };
        (0..count).map(move |i| {
            Subnet::new(
                Ipv4Addr::from((u64::from(u32::from(self.addr)) + i * step) as u32),
                len,
            )
        })
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Subnet {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Subnet, IpamError> {
        let bad = || IpamError::BadSubnet(s.to_string());
        let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        Ok(Subnet::new(addr, len))
    }
}

impl TryFrom<String> for Subnet {
    type Error = IpamError;
    fn try_from(s: String) -> Result<Subnet, IpamError> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// Where networks without `ipam.config` get their subnets: `/len` slices of `ranges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub ranges: Vec<Subnet>,
    pub len: u8,
}

impl Default for Pool {
    /// `10.89.0.0/16` in `/24`s: 256 networks of 253 containers, in a private range
    /// that Docker (172.17/16, 172.18+/16, 192.168/16 pools) and common LANs do not use.
    fn default() -> Pool {
        Pool {
            ranges: vec![Subnet::new(Ipv4Addr::new(10, 89, 0, 0), 16)],
            len: 24,
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self.ranges.iter().map(|r| r.to_string()).collect();
        write!(f, "{} in /{}s", ranges.join(","), self.len)
    }
}

/// A network's addressing: its subnet and the gateway address the bridge holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addressing {
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    /// `ipam.config.ip_range`: where automatic addresses come from (inside `subnet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Subnet>,
}

/// Chooses a network's subnet and gateway. `requested` is the first `ipam.config` entry
/// (subnet and gateway strings as written); `taken` holds the host's routes and the
/// other networks' subnets. A requested subnet that overlaps another berth network is
/// an error; a default one skips everything taken (so it never clashes with a host route).
pub fn plan_network(
    network: &str,
    requested: Option<(&str, Option<&str>)>,
    pool: &Pool,
    taken: &[Subnet],
    other_networks: &[Subnet],
) -> Result<Addressing, IpamError> {
    let subnet = match requested {
        Some((subnet, _)) => {
            let subnet: Subnet = subnet.parse()?;
            if let Some(other) = other_networks.iter().find(|o| o.overlaps(&subnet)) {
                return Err(IpamError::Overlap {
                    network: network.to_string(),
                    subnet,
                    other: *other,
                });
            }
            subnet
        }
        None => pool
            .ranges
            .iter()
            .flat_map(|range| range.children(pool.len))
            .find(|candidate| {
                !taken
                    .iter()
                    .chain(other_networks)
                    // A default route (0.0.0.0/0) overlaps everything and must not count.
                    .any(|t| t.prefix_len() > 0 && t.overlaps(candidate))
            })
            .ok_or_else(|| IpamError::PoolExhausted {
                network: network.to_string(),
                pool: pool.to_string(),
            })?,
    };
    let gateway = match requested.and_then(|(_, gw)| gw) {
        Some(gw) => {
            let gw: Ipv4Addr = gw
                .trim()
                .parse()
                .map_err(|_| IpamError::BadAddress(gw.to_string()))?;
            if !usable(&subnet, gw) {
                return Err(IpamError::GatewayOutside {
                    network: network.to_string(),
                    gateway: gw,
                    subnet,
                });
            }
            gw
        }
        None => subnet.nth(1).ok_or_else(|| IpamError::SubnetFull {
            network: network.to_string(),
            subnet: subnet.to_string(),
        })?,
    };
    Ok(Addressing {
        subnet,
        gateway,
        ip_range: None,
    })
}

/// Applies `ipam.config`'s `ip_range` to `net` and returns the `aux_addresses`, which
/// are never given to containers. Both must lie inside the subnet.
pub fn plan_range(
    network: &str,
    net: &mut Addressing,
    ip_range: Option<&str>,
    aux_addresses: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<Ipv4Addr>, IpamError> {
    let outside = |field: String, value: String| IpamError::NotInSubnet {
        network: network.to_string(),
        field,
        value,
        subnet: net.subnet.to_string(),
    };
    if let Some(range) = ip_range {
        let range: Subnet = range.parse()?;
        if !(net.subnet.contains(range.addr()) && range.prefix_len() >= net.subnet.prefix_len()) {
            return Err(outside("ip_range".to_string(), range.to_string()));
        }
        net.ip_range = Some(range);
    }
    let mut reserved = Vec::new();
    for (name, addr) in aux_addresses {
        let ip: Ipv4Addr = addr
            .trim()
            .parse()
            .map_err(|_| IpamError::BadAddress(addr.clone()))?;
        if !net.subnet.contains(ip) {
            return Err(outside(format!("aux_addresses.{name}"), addr.clone()));
        }
        reserved.push(ip);
    }
    Ok(reserved)
}

/// True when `ip` can be a host in `subnet`: inside it, and neither its network nor its
/// broadcast address (a /31 or /32 has no such reserved addresses).
fn usable(subnet: &Subnet, ip: Ipv4Addr) -> bool {
    subnet.contains(ip)
        && (subnet.prefix_len() >= 31 || (ip != subnet.addr() && ip != subnet.last()))
}

/// Chooses a container's address on a network: `requested` (a service's `ipv4_address`)
/// when it is usable and free, else the lowest free address of the `ip_range` (or the
/// subnet). `used` holds the other endpoints' and the reserved addresses; the gateway is
/// never given out.
pub fn plan_address(
    network: &str,
    service: &str,
    net: &Addressing,
    used: &BTreeSet<Ipv4Addr>,
    requested: Option<&str>,
) -> Result<Ipv4Addr, IpamError> {
    if let Some(req) = requested {
        let address: Ipv4Addr = req
            .trim()
            .parse()
            .map_err(|_| IpamError::BadAddress(req.to_string()))?;
        if !usable(&net.subnet, address) || address == net.gateway {
            return Err(IpamError::AddressOutside {
                network: network.to_string(),
                service: service.to_string(),
                address,
                subnet: net.subnet,
            });
        }
        if used.contains(&address) {
            return Err(IpamError::AddressTaken {
                network: network.to_string(),
                service: service.to_string(),
                address,
            });
        }
        return Ok(address);
    }
    let from = net.ip_range.unwrap_or(net.subnet);
    let size = 1u64 << (32 - u32::from(from.prefix_len()));
    (0..size)
        .filter_map(|i| from.nth(i as u32))
        .find(|ip| usable(&net.subnet, *ip) && *ip != net.gateway && !used.contains(ip))
        .ok_or_else(|| IpamError::SubnetFull {
            network: network.to_string(),
            subnet: net.subnet.to_string(),
        })
}

/// Parses the kernel's IPv4 routing table (`/proc/net/route`) into the destination
/// prefixes it routes, so default subnets can avoid them.
pub fn parse_proc_net_route(text: &str) -> Vec<Subnet> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(cols.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(cols.get(7)?, 16).ok()?;
            // The file prints each address as the hex of a native (little-endian) u32.
            let dest = Ipv4Addr::from(dest.to_le_bytes());
            let len = mask.count_ones() as u8;
            Some(Subnet::new(dest, len))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Subnet {
        text.parse().unwrap()
    }

    #[test]
    fn subnets_parse_print_and_compare() {
        assert_eq!(s("10.1.2.3/24").to_string(), "10.1.2.0/24");
        assert!(s("10.0.0.0/8").overlaps(&s("10.9.0.0/16")));
        assert!(!s("10.1.0.0/16").overlaps(&s("10.2.0.0/16")));
        assert_eq!(s("10.1.2.0/24").last(), Ipv4Addr::new(10, 1, 2, 255));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/24", "10.0.0/24"] {
            assert!(
                matches!(bad.parse::<Subnet>(), Err(IpamError::BadSubnet(_))),
                "{bad}"
            );
        }
        let kids: Vec<String> = s("10.0.0.0/23")
            .children(24)
            .map(|c| c.to_string())
            .collect();
        assert_eq!(kids, ["10.0.0.0/24", "10.0.1.0/24"]);
    }

    #[test]
    fn default_subnets_skip_host_routes_and_other_networks() {
        let pool = Pool::default();
        let cases: &[(&[&str], &[&str], &str)] = &[
            (&[], &[], "10.89.0.0/24"),
            // A default route must not make the whole pool look taken.
            (&["0.0.0.0/0", "192.0.2.0/24"], &[], "10.89.0.0/24"),
            (&["10.89.0.0/23"], &[], "10.89.2.0/24"),
            (&[], &["10.89.0.0/24", "10.89.1.0/24"], "10.89.2.0/24"),
            (&["10.0.0.0/8"], &[], "none"),
        ];
        for (routes, others, want) in cases {
            let routes: Vec<Subnet> = routes.iter().map(|r| s(r)).collect();
            let others: Vec<Subnet> = others.iter().map(|r| s(r)).collect();
            let got = plan_network("n", None, &pool, &routes, &others);
            match got {
                Ok(a) => {
                    assert_eq!(a.subnet.to_string(), *want);
                    assert_eq!(a.gateway, a.subnet.nth(1).unwrap());
                }
                Err(e) => {
                    assert_eq!(*want, "none", "{e}");
                    assert!(e.to_string().contains("no free subnet"), "{e}");
                }
            }
        }
    }

    #[test]
    fn requested_subnet_and_gateway_are_honored_or_explained() {
        let pool = Pool::default();
        let a = plan_network(
            "n",
            Some(("172.30.5.0/24", Some("172.30.5.254"))),
            &pool,
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(a.subnet, s("172.30.5.0/24"));
        assert_eq!(a.gateway, Ipv4Addr::new(172, 30, 5, 254));
        let e = plan_network(
            "n",
            Some(("172.30.5.0/24", Some("172.30.6.1"))),
            &pool,
            &[],
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, IpamError::GatewayOutside { .. }), "{e}");
        let e = plan_network(
            "n",
            Some(("172.30.5.0/24", None)),
            &pool,
            &[],
            &[s("172.30.0.0/16")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlaps 172.30.0.0/16"), "{e}");
    }

    #[test]
    fn addresses_are_lowest_free_or_the_requested_one() {
        let net = Addressing {
            subnet: s("10.5.0.0/29"),
            gateway: Ipv4Addr::new(10, 5, 0, 1),
            ip_range: None,
        };
        let mut used = BTreeSet::new();
        assert_eq!(
            plan_address("n", "web", &net, &used, None).unwrap(),
            Ipv4Addr::new(10, 5, 0, 2)
        );
        used.insert(Ipv4Addr::new(10, 5, 0, 2));
        used.insert(Ipv4Addr::new(10, 5, 0, 4));
        assert_eq!(
            plan_address("n", "web", &net, &used, None).unwrap(),
            Ipv4Addr::new(10, 5, 0, 3)
        );
        assert_eq!(
            plan_address("n", "web", &net, &used, Some("10.5.0.6")).unwrap(),
            Ipv4Addr::new(10, 5, 0, 6)
        );
        for (req, what) in [
            ("10.5.0.4", "already used"),
            ("10.5.0.1", "not usable"),
            ("10.5.0.7", "not usable"),
            ("10.6.0.3", "not usable"),
        ] {
            let e = plan_address("n", "web", &net, &used, Some(req)).unwrap_err();
            assert!(
                e.to_string().contains(what) && e.to_string().contains("service web"),
                "{req}: {e}"
            );
        }
        used.extend([3, 5, 6].map(|i| Ipv4Addr::new(10, 5, 0, i)));
        assert!(matches!(
            plan_address("n", "web", &net, &used, None),
            Err(IpamError::SubnetFull { .. })
        ));
    }

    #[test]
    fn ip_range_and_aux_addresses_limit_automatic_addresses() {
        let mut net = Addressing {
            subnet: s("10.7.0.0/24"),
            gateway: Ipv4Addr::new(10, 7, 0, 1),
            ip_range: None,
        };
        let aux = [("router".to_string(), "10.7.0.130".to_string())].into();
        let reserved = plan_range("n", &mut net, Some("10.7.0.128/25"), &aux).unwrap();
        let used: BTreeSet<Ipv4Addr> = reserved
            .into_iter()
            .chain([Ipv4Addr::new(10, 7, 0, 128), Ipv4Addr::new(10, 7, 0, 129)])
            .collect();
        assert_eq!(
            plan_address("n", "web", &net, &used, None).unwrap(),
            Ipv4Addr::new(10, 7, 0, 131)
        );
        // A static address may still be anywhere in the subnet, as in Docker.
        assert_eq!(
            plan_address("n", "web", &net, &used, Some("10.7.0.9")).unwrap(),
            Ipv4Addr::new(10, 7, 0, 9)
        );
        let e = plan_range(
            "n",
            &mut net.clone(),
            Some("10.8.0.0/25"),
            &Default::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("ip_range 10.8.0.0/25 is not inside"),
            "{e}"
        );
        let bad = [("x".to_string(), "10.9.0.1".to_string())].into();
        let e = plan_range("n", &mut net, None, &bad).unwrap_err();
        assert!(e.to_string().contains("aux_addresses.x"), "{e}");
    }

    #[test]
    fn proc_net_route_is_read() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_proc_net_route(text),
            vec![s("0.0.0.0/0"), s("192.0.2.0/24")]
        );
    }
}

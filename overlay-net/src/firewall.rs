//! nftables rules, planned as text by pure functions and applied by a `Firewall`.
//!
//! Each berth network owns one `ip` table named like its bridge, and each published
//! host port one table of its own (shared by the replicas publishing it), so removing
//! a network or a port is deleting one table, and `gc` finds leftovers by prefix alone.
//! An `enable_ipv6` network, and a port whose containers have IPv6, also own an `ip6`
//! table of the same name with the same rules for IPv6 (applied in the same script);
//! deleting a table deletes both families.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::process::{Command, Stdio};

use crate::ipam::Subnet;
use crate::ipam6::Subnet6;

/// Why nftables refused or could not be run.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("could not run nft (install the nftables package: apt-get install -y nftables): {0}")]
    Spawn(std::io::Error),
    #[error("nft failed: {stderr}\nscript:\n{script}")]
    Failed { stderr: String, script: String },
    #[error("could not read `nft -j list tables` output: {0}")]
    Parse(String),
}

/// The kernel seam for packet filtering and NAT.
pub trait Firewall: Send + Sync {
    /// Applies an nft script atomically (all or nothing).
    fn apply(&self, script: &str) -> Result<(), FirewallError>;
    /// Names of the `ip` and `ip6` family tables (once each).
    fn tables(&self) -> Result<Vec<String>, FirewallError>;
    /// Deletes an `ip` table and the `ip6` table of the same name; a missing one is
    /// not an error.
    fn delete_table(&self, name: &str) -> Result<(), FirewallError> {
        // `add` then `delete` in one transaction: deletes whether or not it existed.
        self.apply(&format!(
            "add table ip {name}\ndelete table ip {name}\nadd table ip6 {name}\ndelete table ip6 {name}\n"
        ))
    }
}

/// The real firewall: the `nft` tool, fed scripts on stdin (`nft -f -`).
#[derive(Debug, Default)]
pub struct NftCli;

impl NftCli {
    fn run(args: &[&str], input: &str) -> Result<String, FirewallError> {
        let mut child = Command::new("nft")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(FirewallError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(FirewallError::Spawn)?;
        }
        let out = child.wait_with_output().map_err(FirewallError::Spawn)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(FirewallError::Failed {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                script: input.to_string(),
            })
        }
    }
}

impl Firewall for NftCli {
    fn apply(&self, script: &str) -> Result<(), FirewallError> {
        NftCli::run(&["-f", "-"], script).map(|_| ())
    }

    fn tables(&self) -> Result<Vec<String>, FirewallError> {
        let out = NftCli::run(&["-j", "list", "tables"], "")?;
        let json: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| FirewallError::Parse(e.to_string()))?;
        let items = json
            .get("nftables")
            .and_then(|v| v.as_array())
            .ok_or_else(|| FirewallError::Parse("no \"nftables\" array".to_string()))?;
        let mut names: Vec<String> = items
            .iter()
            .filter_map(|item| {
                let table = item.get("table")?;
                let family = table.get("family")?.as_str()?;
                (family == "ip" || family == "ip6")
                    .then(|| table.get("name")?.as_str().map(String::from))?
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// What a network's table must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRules<'a> {
    pub prefix: &'a str,
    pub bridge: &'a str,
    pub subnet: Subnet,
    /// The IPv6 subnet of an `enable_ipv6` network: an `ip6` table with the same rules.
    pub subnet6: Option<Subnet6>,
    pub internal: bool,
}

/// The nft script that (re)creates a network's table: isolation from the other berth
/// networks of this prefix, masquerade of outbound traffic unless internal, and no
/// traffic in or out of the bridge at all for an internal network.
pub fn network_script(r: &NetworkRules) -> String {
    let NetworkRules {
        prefix,
        bridge,
        subnet,
        subnet6,
        internal,
    } = r;
    let v4 = network_table(
        "ip",
        prefix,
        bridge,
        &subnet.to_string(),
        "127.0.0.0/8",
        *internal,
    );
    match subnet6 {
        None => v4,
        // The same isolation, NAT and loopback guard for IPv6, in its own family (an
        // `inet` table would change the IPv4 table every network has today).
        Some(s6) => v4 + &network_table("ip6", prefix, bridge, &s6.to_string(), "::1", *internal),
    }
}

/// One family's table of [`network_script`]: `family` is `ip` or `ip6`, `subnet` and
/// `loopback` written in it.
fn network_table(
    family: &str,
    prefix: &str,
    bridge: &str,
    subnet: &str,
    loopback: &str,
    internal: bool,
) -> String {
    let mut forward = String::new();
    let mut post = String::new();
    if internal {
        // Nothing in or out, published ports of other networks included.
        forward.push_str(&format!(
            "    iifname \"{bridge}\" oifname != \"{bridge}\" drop\n    oifname \"{bridge}\" iifname != \"{bridge}\" drop\n"
        ));
    }
    forward.push_str(
        // A connection to a published port (DNAT'd by a container's port table) may
        // cross networks, as it does through Docker's proxy: a container reaches
        // another stack's published port at the host's address. The accept ends only
        // this table's chain; another network's table still applies its own drops.
        "    ct status dnat accept\n",
    );
    forward.push_str(&format!(
        // Every berth bridge name starts with the prefix: a packet from this bridge
        // routed to any other berth bridge is dropped, as Compose isolates networks.
        "    iifname \"{bridge}\" oifname \"{prefix}*\" oifname != \"{bridge}\" drop\n"
    ));
    if !internal {
        post = format!(
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    {family} saddr {subnet} oifname != \"{bridge}\" masquerade\n  }}\n"
        );
    }
    // The bridge has `route_localnet` (so loopback clients reach published ports), which
    // would also let a container address the host's loopback, and through a port
    // published on 127.0.0.1 a container of another network: nothing for 127.0.0.0/8
    // may come in from the bridge (as Docker 28's raw-table rule). (For IPv6 the
    // kernel drops ::1 from a wire anyway; the rule says so.)
    let raw = format!(
        "  chain prerouting {{\n    type filter hook prerouting priority raw; policy accept;\n    iifname \"{bridge}\" {family} daddr {loopback} drop\n  }}\n"
    );
    // Flush by delete-after-add so re-applying replaces the table in one transaction.
    format!(
        "add table {family} {bridge}\ndelete table {family} {bridge}\ntable {family} {bridge} {{\n{raw}  chain forward {{\n    type filter hook forward priority filter; policy accept;\n{forward}  }}\n{post}}}\n"
    )
}

/// One host port as published, resolved: the host side and the containers behind it.
/// Several containers share one host port when they are replicas of one service
/// (`crate::port_groups`); one that publishes it alone has a single backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub proto: &'static str,
    /// `None`: every local address of the host.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    /// Where new connections go, spread evenly over them in turn. Empty: none is
    /// serving (all unhealthy or leaving), so no DNAT rule, and the connection reaches
    /// berth's own bound, unlistening socket: refused, as with no container at all.
    pub backends: Vec<SocketAddrV4>,
    /// Every container still behind the port, serving or not: their replies are
    /// masqueraded, so that connections made before one stopped serving still work.
    pub members: Vec<SocketAddrV4>,
    /// The host's IPv6 side, DNAT'd to the containers' IPv6 addresses (containers on
    /// an `enable_ipv6` network); `None` when relayed or not published on IPv6.
    pub v6: Option<PortRule6>,
}

/// The IPv6 side of a [`PortRule`]: an `ip6` table beside the `ip` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule6 {
    /// `::`: every local address of the host but `::1`, which the kernel never routes
    /// off the host, so the relay serves it (as Docker's proxy does).
    pub host_ip: Ipv6Addr,
    pub backends: Vec<SocketAddrV6>,
    pub members: Vec<SocketAddrV6>,
}

/// The DNAT statement for `backends` (at least one): a plain `dnat to` for one, and
/// for several a `numgen inc` map, which hands each new connection the next backend
/// in turn (conntrack keeps a connection with the backend it got, so changing the map
/// never moves an established connection).
fn dnat(backends: &[SocketAddrV4]) -> String {
    let pairs: Vec<(String, u16)> = backends
        .iter()
        .map(|b| (b.ip().to_string(), b.port()))
        .collect();
    dnat_to("ip", &pairs)
}

/// [`dnat`] in `family` (`ip` or `ip6`) over (address, port) pairs.
fn dnat_to(family: &str, backends: &[(String, u16)]) -> String {
    match backends {
        [(ip, port)] if family == "ip6" => format!("dnat to [{ip}]:{port}"),
        [(ip, port)] => format!("dnat to {ip}:{port}"),
        many => {
            let map: Vec<String> = many
                .iter()
                .enumerate()
                .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
                .collect();
            format!(
                "dnat {family} to numgen inc mod {} map {{ {} }}",
                many.len(),
                map.join(", ")
            )
        }
    }
}

/// The `ip6` table of a port with an IPv6 side DNAT'd to IPv6 containers: from the
/// network (prerouting) and from the host's own programs to its addresses (output),
/// but never `::1`, and the same masquerade of DNAT'd connections from berth networks
/// as the IPv4 side.
fn ports_table6(table: &str, prefix: &str, proto: &str, port: u16, r: &PortRule6) -> String {
    let mut pre = String::new();
    let mut output = String::new();
    let mut post = String::new();
    if !r.backends.is_empty() && !r.host_ip.is_loopback() {
        let pairs: Vec<(String, u16)> = r
            .backends
            .iter()
            .map(|b| (b.ip().to_string(), b.port()))
            .collect();
        let dnat = dnat_to("ip6", &pairs);
        if r.host_ip.is_unspecified() {
            pre = format!("    fib daddr type local {proto} dport {port} {dnat}\n");
            output =
                format!("    ip6 daddr != ::1 fib daddr type local {proto} dport {port} {dnat}\n");
        } else {
            let ip = r.host_ip;
            pre = format!("    ip6 daddr {ip} {proto} dport {port} {dnat}\n");
            output.clone_from(&pre);
        }
    }
    for m in &r.members {
        post.push_str(&format!(
            "    iifname \"{prefix}*\" ip6 daddr {cip} {proto} dport {cp} ct status dnat masquerade\n",
            cip = m.ip(),
            cp = m.port()
        ));
    }
    format!(
        "add table ip6 {table}\ndelete table ip6 {table}\ntable ip6 {table} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{output}  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{post}  }}\n}}\n"
    )
}

/// The nft script for one published host port: DNAT from the network (prerouting)
/// and from the host itself (output, which also covers 127.0.0.1 with the bridge's
/// `route_localnet`), and masquerade of loopback-sourced connections so the
/// containers' replies come back through the bridge. Connections from berth networks
/// (names starting with `prefix`) are masqueraded too: a client on a container's own
/// network would otherwise get the reply straight from the container, not from the
/// address it called, and drop it (unless `br_netfilter` happens to be loaded and
/// un-NATs bridged replies, as it is on some hosts and not on others).
pub fn ports_script(table: &str, prefix: &str, r: &PortRule) -> String {
    let mut dnat_rules = String::new();
    let mut output = String::new();
    let mut post = String::new();
    if !r.backends.is_empty() {
        let dst = match r.host_ip {
            Some(ip) => format!("ip daddr {ip}"),
            None => "fib daddr type local".to_string(),
        };
        let line = format!(
            "    {dst} {proto} dport {hp} {dnat}\n",
            proto = r.proto,
            hp = r.host_port,
            dnat = dnat(&r.backends),
        );
        // A port on a loopback address is for the host's own programs: it is DNAT'd
        // in the output hook only, never for packets that arrive from a network.
        if !r.host_ip.is_some_and(|ip| ip.is_loopback()) {
            dnat_rules.push_str(&line);
        }
        output.push_str(&line);
    }
    for m in &r.members {
        post.push_str(&format!(
            "    ip saddr 127.0.0.0/8 ip daddr {cip} {proto} dport {cp} masquerade\n    iifname \"{prefix}*\" ip daddr {cip} {proto} dport {cp} ct status dnat masquerade\n",
            proto = r.proto,
            cip = m.ip(),
            cp = m.port()
        ));
    }
    let v4 = format!(
        "add table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dnat_rules}  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{output}  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{post}  }}\n}}\n"
    );
    // A port that only lost its IPv6 side (or never had one) has no `ip6` table: the
    // `add`/`delete` pair removes one left from before, or does nothing.
    let v6 = match &r.v6 {
        Some(r6) => ports_table6(table, prefix, r.proto, r.host_port, r6),
        None => format!("add table ip6 {table}\ndelete table ip6 {table}\n"),
    };
    v4 + &v6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_masquerades_unless_internal_and_is_isolated() {
        let mut r = NetworkRules {
            prefix: "berth",
            bridge: "berthb123456",
            subnet: "10.89.0.0/24".parse().unwrap(),
            subnet6: None,
            internal: false,
        };
        let s = network_script(&r);
        assert!(
            s.contains("ip saddr 10.89.0.0/24 oifname != \"berthb123456\" masquerade"),
            "{s}"
        );
        assert!(
            s.contains(
                "iifname \"berthb123456\" oifname \"berth*\" oifname != \"berthb123456\" drop"
            ),
            "{s}"
        );
        assert!(
            !s.contains("oifname \"berthb123456\" iifname != \"berthb123456\" drop"),
            "{s}"
        );
        // Nothing for the host's loopback comes in from the bridge.
        assert!(
            s.contains("iifname \"berthb123456\" ip daddr 127.0.0.0/8 drop"),
            "{s}"
        );
        // Published ports cross networks; isolation still drops everything else.
        let dnat = s.find("ct status dnat accept").expect("dnat accepted");
        let isolation = s.find("oifname \"berth*\"").expect("isolation");
        assert!(dnat < isolation, "{s}");
        r.internal = true;
        let s = network_script(&r);
        // An internal network drops before anything is accepted.
        assert!(
            s.find("oifname != \"berthb123456\" drop")
                .expect("internal drop")
                < s.find("ct status dnat accept").expect("dnat"),
            "{s}"
        );
        assert!(!s.contains("masquerade"), "{s}");
        assert!(
            s.contains("iifname \"berthb123456\" oifname != \"berthb123456\" drop"),
            "{s}"
        );
    }

    fn addr(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 89, 0, last), port)
    }

    #[test]
    fn ports_dnat_from_outside_and_from_the_host() {
        let tcp = PortRule {
            proto: "tcp",
            host_ip: None,
            host_port: 8080,
            backends: vec![addr(2, 80)],
            members: vec![addr(2, 80)],
            v6: None,
        };
        let s = ports_script("berthpabcdef", "berth", &tcp);
        assert_eq!(
            s.matches("fib daddr type local tcp dport 8080 dnat to 10.89.0.2:80")
                .count(),
            2,
            "{s}"
        );
        assert!(
            s.contains(
                "iifname \"berth*\" ip daddr 10.89.0.2 tcp dport 80 ct status dnat masquerade"
            ),
            "{s}"
        );
        let udp = PortRule {
            proto: "udp",
            host_ip: Some(Ipv4Addr::LOCALHOST),
            host_port: 5353,
            backends: vec![addr(2, 53)],
            members: vec![addr(2, 53)],
            v6: None,
        };
        let s = ports_script("berthpabcdef", "berth", &udp);
        // Loopback: from the host's own programs only (the output hook).
        assert_eq!(
            s.matches("ip daddr 127.0.0.1 udp dport 5353 dnat to 10.89.0.2:53")
                .count(),
            1,
            "{s}"
        );
        let output = &s[s.find("chain output").unwrap()..];
        assert!(output.contains("ip daddr 127.0.0.1 udp dport 5353"), "{s}");
        assert!(
            s.contains("ip saddr 127.0.0.0/8 ip daddr 10.89.0.2 udp dport 53 masquerade"),
            "{s}"
        );
    }

    #[test]
    fn a_shared_port_spreads_over_its_serving_backends_and_masquerades_every_member() {
        // Three replicas, one of them leaving (a member, no longer a backend), and a
        // new task listening on another container port.
        let r = PortRule {
            proto: "tcp",
            host_ip: None,
            host_port: 18080,
            backends: vec![addr(2, 80), addr(4, 8080)],
            members: vec![addr(2, 80), addr(3, 80), addr(4, 8080)],
            v6: None,
        };
        let s = ports_script("berthpabcdef", "berth", &r);
        let spread = "tcp dport 18080 dnat ip to numgen inc mod 2 map { 0 : 10.89.0.2 . 80, 1 : 10.89.0.4 . 8080 }";
        assert_eq!(s.matches(spread).count(), 2, "{s}");
        assert!(!s.contains("dnat to 10.89.0.3"), "{s}");
        for m in [
            "10.89.0.2 tcp dport 80",
            "10.89.0.3 tcp dport 80",
            "10.89.0.4 tcp dport 8080",
        ] {
            assert!(
                s.contains(&format!("ip saddr 127.0.0.0/8 ip daddr {m} masquerade")),
                "{s}"
            );
        }
        // None serving: no DNAT at all (the held socket refuses), the table stays.
        let none = PortRule {
            backends: Vec::new(),
            ..r
        };
        let s = ports_script("berthpabcdef", "berth", &none);
        assert!(!s.contains("dnat to") && !s.contains("dnat ip to"), "{s}");
        assert!(s.contains("table ip berthpabcdef {"), "{s}");
    }

    #[test]
    fn an_ipv6_network_gets_the_same_rules_in_an_ip6_table() {
        let mut r = NetworkRules {
            prefix: "berth",
            bridge: "berthb123456",
            subnet: "10.89.0.0/24".parse().unwrap(),
            subnet6: None,
            internal: false,
        };
        let v4_only = network_script(&r);
        assert!(!v4_only.contains("ip6"), "{v4_only}");
        r.subnet6 = Some("fd12:3456:789a::/64".parse().unwrap());
        let s = network_script(&r);
        // The IPv4 table is exactly what a network without IPv6 gets.
        assert!(s.starts_with(&v4_only), "{s}");
        let t6 = &s[v4_only.len()..];
        for want in [
            "add table ip6 berthb123456\ndelete table ip6 berthb123456\ntable ip6 berthb123456 {",
            "ip6 saddr fd12:3456:789a::/64 oifname != \"berthb123456\" masquerade",
            "iifname \"berthb123456\" oifname \"berth*\" oifname != \"berthb123456\" drop",
            "ct status dnat accept",
            "iifname \"berthb123456\" ip6 daddr ::1 drop",
        ] {
            assert!(t6.contains(want), "{want}: {t6}");
        }
        r.internal = true;
        let s = network_script(&r);
        let t6 = &s[s.find("table ip6 berthb123456 {").unwrap()..];
        assert!(!t6.contains("masquerade"), "{t6}");
        assert!(
            t6.find("iifname \"berthb123456\" oifname != \"berthb123456\" drop")
                .expect("internal drop")
                < t6.find("ct status dnat accept").expect("dnat"),
            "{t6}"
        );
    }

    fn addr6(last: u16, port: u16) -> SocketAddrV6 {
        SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last), port, 0, 0)
    }

    #[test]
    fn a_port_of_ipv6_containers_is_dnat_ed_over_ipv6_except_loopback() {
        let mut r = PortRule {
            proto: "tcp",
            host_ip: None,
            host_port: 8080,
            backends: vec![addr(2, 80)],
            members: vec![addr(2, 80)],
            v6: None,
        };
        let v4_only = ports_script("berthpabcdef", "berth", &r);
        // Without IPv6 members: the ip6 table of the same name is only removed.
        assert!(
            v4_only.ends_with("add table ip6 berthpabcdef\ndelete table ip6 berthpabcdef\n"),
            "{v4_only}"
        );
        r.v6 = Some(PortRule6 {
            host_ip: Ipv6Addr::UNSPECIFIED,
            backends: vec![addr6(2, 80)],
            members: vec![addr6(2, 80)],
        });
        let s = ports_script("berthpabcdef", "berth", &r);
        let t6 = &s[s.find("table ip6 berthpabcdef {").expect("ip6 table")..];
        let pre = &t6[..t6.find("chain output").unwrap()];
        assert!(
            pre.contains("fib daddr type local tcp dport 8080 dnat to [fd00::2]:80"),
            "{t6}"
        );
        // ::1 stays with the relay: the kernel does not route it off the host.
        assert!(
            t6.contains(
                "ip6 daddr != ::1 fib daddr type local tcp dport 8080 dnat to [fd00::2]:80"
            ),
            "{t6}"
        );
        assert!(
            t6.contains(
                "iifname \"berth*\" ip6 daddr fd00::2 tcp dport 80 ct status dnat masquerade"
            ),
            "{t6}"
        );
        // Replicas: spread like IPv4; a port on ::1 only has no IPv6 DNAT at all.
        r.v6 = Some(PortRule6 {
            host_ip: Ipv6Addr::UNSPECIFIED,
            backends: vec![addr6(2, 80), addr6(3, 80)],
            members: vec![addr6(2, 80), addr6(3, 80)],
        });
        let s = ports_script("berthpabcdef", "berth", &r);
        assert_eq!(
            s.matches("dnat ip6 to numgen inc mod 2 map { 0 : fd00::2 . 80, 1 : fd00::3 . 80 }")
                .count(),
            2,
            "{s}"
        );
        r.v6 = Some(PortRule6 {
            host_ip: Ipv6Addr::LOCALHOST,
            backends: vec![addr6(2, 80)],
            members: vec![addr6(2, 80)],
        });
        let s = ports_script("berthpabcdef", "berth", &r);
        let t6 = &s[s.find("table ip6 berthpabcdef {").expect("ip6 table")..];
        assert!(!t6.contains("dnat to"), "{t6}");
    }
}

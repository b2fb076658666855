//! The contents of a container's `/etc/resolv.conf` and `/etc/hosts`, as pure
//! functions of its attachment. The daemon writes them into the container's files.

use std::net::{IpAddr, Ipv4Addr};

/// Why a file could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolvError {
    #[error("service {service}: extra_hosts entry {entry:?}: {reason}")]
    ExtraHost {
        service: String,
        entry: String,
        reason: String,
    },
}

/// `/etc/resolv.conf`: berth's DNS server (on the first network's gateway) is the only
/// nameserver, so that service names resolve; the service's `dns` servers are used
/// by that server as upstreams instead of the host's. `dns_search` as written.
pub fn resolv_conf(nameserver: Ipv4Addr, search: &[String], options: &[String]) -> String {
    let mut out = format!("# written by berth\nnameserver {nameserver}\n");
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    let mut opts: Vec<&str> = options.iter().map(String::as_str).collect();
    if !opts.iter().any(|o| o.starts_with("ndots:")) {
        // Docker's choice: service names have no dots, so try them as written first.
        opts.push("ndots:0");
    }
    out.push_str(&format!("options {}\n", opts.join(" ")));
    out
}

/// `/etc/hosts`: localhost, the container's own hostname on its first address, and
/// `extra_hosts` (`host-gateway` is the first network's gateway).
pub fn hosts(
    service: &str,
    hostname: &str,
    own: Option<Ipv4Addr>,
    own6: Option<std::net::Ipv6Addr>,
    gateway: Option<Ipv4Addr>,
    extra_hosts: &[String],
) -> Result<String, ResolvError> {
    let mut out = String::from(
        "# written by berth\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    if let Some(ip) = own {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    // On an enable_ipv6 network the hostname has its IPv6 address too, as with Docker.
    if let Some(ip) = own6 {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    for entry in extra_hosts {
        let err = |reason: String| ResolvError::ExtraHost {
            service: service.to_string(),
            entry: entry.clone(),
            reason,
        };
        let (name, addr) = spec::short_syntax::parse_extra_host(entry).map_err(err)?;
        let addr: IpAddr = if addr == "host-gateway" {
            IpAddr::V4(gateway.ok_or_else(|| {
                err("host-gateway needs the container to be on a network".to_string())
            })?)
        } else {
            addr.parse()
                .map_err(|_| err(format!("{addr:?} is not an IP address")))?
        };
        out.push_str(&format!("{addr}\t{name}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_points_at_berth_dns() {
        let gw = Ipv4Addr::new(10, 89, 0, 1);
        assert_eq!(
            resolv_conf(gw, &[], &[]),
            "# written by berth\nnameserver 10.89.0.1\noptions ndots:0\n"
        );
        let s = resolv_conf(
            gw,
            &["corp.example".into(), "example".into()],
            &["ndots:2".into(), "rotate".into()],
        );
        assert!(s.contains("search corp.example example\n"), "{s}");
        assert!(s.contains("options ndots:2 rotate\n"), "{s}");
    }

    #[test]
    fn hosts_has_self_and_extra_hosts() {
        let gw = Ipv4Addr::new(10, 89, 0, 1);
        let h = hosts(
            "web",
            "web-1",
            Some(Ipv4Addr::new(10, 89, 0, 2)),
            Some("fd00:89::2".parse().unwrap()),
            Some(gw),
            &[
                "db.local:10.0.0.5".into(),
                "v6=[::1]".into(),
                "host.internal:host-gateway".into(),
            ],
        )
        .unwrap();
        assert!(h.contains("10.89.0.2\tweb-1\n"), "{h}");
        assert!(h.contains("fd00:89::2\tweb-1\n"), "{h}");
        assert!(h.contains("10.0.0.5\tdb.local\n"), "{h}");
        assert!(h.contains("::1\tv6\n"), "{h}");
        assert!(h.contains("10.89.0.1\thost.internal\n"), "{h}");
        let e = hosts("web", "w", None, None, None, &["x:host-gateway".into()]).unwrap_err();
        assert!(e.to_string().contains("service web"), "{e}");
        let e = hosts("web", "w", None, None, None, &["x:notanip".into()]).unwrap_err();
        assert!(e.to_string().contains("invalid IP address"), "{e}");
    }
}

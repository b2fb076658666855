//! Names of the kernel objects berth creates. Every one starts with the manager's
//! prefix (so `gc` can find them and tests never collide with a daemon) and ends with
//! a short hash, because interface names are at most 15 bytes.

use sha2::{Digest, Sha256};

/// Longest prefix: the prefix, one kind letter and 6 hex digits must fit 15 bytes.
pub const MAX_PREFIX: usize = 8;

/// Why a prefix cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("network prefix {0:?} must be 1 to 8 lowercase letters or digits, starting with a letter")]
pub struct BadPrefix(pub String);

/// Checks a prefix: short, lowercase alphanumeric (it is used in interface, nftables
/// table and file names).
pub fn check_prefix(prefix: &str) -> Result<(), BadPrefix> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(BadPrefix(prefix.to_string()))
    }
}

/// The first `n` hex digits of SHA-256 over the parts, separated so that ("ab","c")
/// and ("a","bc") differ.
pub fn short_hash(parts: &[&str], n: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let mut s = hex::encode(h.finalize());
    s.truncate(n);
    s
}

/// The bridge of network `network` (its host name, e.g. `myapp_default`); also the
/// name of the network's nftables table.
pub fn bridge(prefix: &str, network: &str) -> String {
    format!("{prefix}b{}", short_hash(&[network], 6))
}

/// The host end of a container's veth on a network.
pub fn veth_host(prefix: &str, container: &str, network: &str) -> String {
    format!("{prefix}v{}", short_hash(&[container, network], 6))
}

/// The nftables table of one published IPv4 host port (`host`: `None` for every
/// address), shared by every container behind it. (Before ports could be shared,
/// each container had a table `<prefix>n<hash>`; `gc` still removes those.)
pub fn port_table(
    prefix: &str,
    proto: &str,
    host: Option<std::net::Ipv4Addr>,
    port: u16,
) -> String {
    let host = host.map(|h| h.to_string()).unwrap_or_default();
    format!(
        "{prefix}p{}",
        short_hash(&[proto, &host, &port.to_string()], 6)
    )
}

/// The nftables tables of a host port published on one IPv6 address only.
pub fn port_table6(prefix: &str, proto: &str, host: std::net::Ipv6Addr, port: u16) -> String {
    format!(
        "{prefix}p{}",
        short_hash(&[proto, &host.to_string(), &port.to_string()], 6)
    )
}

/// The file name of a container's network namespace under the netns directory.
pub fn netns_file(prefix: &str, container: &str) -> String {
    format!("{prefix}-{container}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interfaces_and_carry_the_prefix() {
        let long = "a-very-long-project-name_with-a-very-long-network-name";
        for name in [
            bridge("berthnet", long),
            veth_host("berthnet", long, long),
            port_table("berthnet", "tcp", None, 65535),
        ] {
            assert!(name.len() <= 15, "{name}");
            assert!(name.starts_with("berthnet"), "{name}");
        }
        assert_ne!(veth_host("b", "c1", "n1"), veth_host("b", "c1", "n2"));
        assert_ne!(short_hash(&["ab", "c"], 8), short_hash(&["a", "bc"], 8));
        let lo = Some(std::net::Ipv4Addr::LOCALHOST);
        assert_ne!(
            port_table("b", "tcp", None, 80),
            port_table("b", "udp", None, 80)
        );
        assert_ne!(
            port_table("b", "tcp", None, 80),
            port_table("b", "tcp", lo, 80)
        );
    }

    #[test]
    fn prefixes_are_checked() {
        for ok in ["berth", "t1a2b3c4", "b"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Berth", "1abc", "berth-x", "toolongpre"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}

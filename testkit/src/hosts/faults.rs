//! Which drop rules each host gets for a set of faults: plain data in, an nftables
//! script out, so the rules are tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{FAULT_TABLE, HOST_IF};

/// The faults in force between the hosts of a cluster: plain data, turned into each
/// host's nftables script by [`Faults::nft_script`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// `(from, to)`: packets from host `from` to host `to` are dropped.
    pub blocked: BTreeSet<(usize, usize)>,
    /// Host index -> percent of packets lost on its link, in each direction.
    pub loss: BTreeMap<usize, u8>,
}

impl Faults {
    /// Drops traffic between `a` and `b` both ways.
    pub fn partition(&mut self, a: usize, b: usize) {
        self.partition_one_way(a, b);
        self.partition_one_way(b, a);
    }

    /// Drops packets from `from` to `to`; `to` can still send to `from`.
    pub fn partition_one_way(&mut self, from: usize, to: usize) {
        if from != to {
            self.blocked.insert((from, to));
        }
    }

    /// Cuts host `i` off from the `n - 1` others, both ways.
    pub fn isolate(&mut self, i: usize, n: usize) {
        for j in 0..n {
            self.partition(i, j);
        }
    }

    /// Restores traffic between `a` and `b`, both ways.
    pub fn heal_link(&mut self, a: usize, b: usize) {
        self.blocked.remove(&(a, b));
        self.blocked.remove(&(b, a));
    }

    /// The nftables script (for `nft -f -`) that makes host `host`'s fault table
    /// match these faults, given every host's address: it creates the table, deletes
    /// it and defines it again in one transaction, so rules never pile up and the
    /// change is atomic. With no fault for this host, the table is just removed.
    ///
    /// All rules are in the receiver's input hook: a packet from `j` to `host` is
    /// dropped if `(j, host)` is blocked, with `j`'s loss probability if `j` is lossy,
    /// and with `host`'s own loss probability if it came over the underlay. Two lossy
    /// ends compound, as two lossy links would.
    pub fn nft_script(&self, host: usize, addrs: &[Ipv4Addr]) -> String {
        let mut rules = Vec::new();
        for (j, addr) in addrs.iter().enumerate() {
            if self.blocked.contains(&(j, host)) {
                rules.push(format!("ip saddr {addr} drop"));
            }
        }
        for (&j, &percent) in &self.loss {
            if j != host {
                if let (Some(addr), Some(matcher)) = (addrs.get(j), loss_matcher(percent)) {
                    rules.push(format!("ip saddr {addr} {matcher}drop"));
                }
            }
        }
        if let Some(matcher) = self.loss.get(&host).and_then(|&p| loss_matcher(p)) {
            rules.push(format!("iifname \"{HOST_IF}\" {matcher}drop"));
        }
        let mut script =
            format!("table inet {FAULT_TABLE} {{}}\ndelete table inet {FAULT_TABLE}\n");
        if !rules.is_empty() {
            script.push_str(&format!(
                "table inet {FAULT_TABLE} {{\n  chain input {{\n    type filter hook input priority -100; policy accept;\n"
            ));
            for rule in rules {
                script.push_str(&format!("    {rule}\n"));
            }
            script.push_str("  }\n}\n");
        }
        script
    }
}

/// The nft match that selects `percent`% of packets at random, empty for 100% (every
/// packet), `None` for 0% (no rule). nft refuses `< 100` after `mod 100`.
fn loss_matcher(percent: u8) -> Option<String> {
    match percent {
        0 => None,
        100.. => Some(String::new()),
        p => Some(format!("numgen random mod 100 < {p} ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<Ipv4Addr> {
        (1..=3).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect()
    }

    #[test]
    fn no_fault_removes_the_table() {
        let script = Faults::default().nft_script(0, &addrs());
        assert_eq!(
            script,
            "table inet berth_faults {}\ndelete table inet berth_faults\n"
        );
    }

    #[test]
    fn a_partition_drops_at_both_receivers_and_nowhere_else() {
        let mut f = Faults::default();
        f.partition(0, 1);
        assert!(f.nft_script(0, &addrs()).contains("ip saddr 10.1.0.2 drop"));
        assert!(f.nft_script(1, &addrs()).contains("ip saddr 10.1.0.1 drop"));
        assert!(!f.nft_script(2, &addrs()).contains("drop"));
        f.heal_link(1, 0);
        assert_eq!(f, Faults::default());
    }

    #[test]
    fn a_one_way_partition_drops_only_at_the_receiver() {
        let mut f = Faults::default();
        f.partition_one_way(0, 2);
        assert!(!f.nft_script(0, &addrs()).contains("drop"));
        assert!(f.nft_script(2, &addrs()).contains("ip saddr 10.1.0.1 drop"));
    }

    #[test]
    fn isolate_blocks_every_pair_with_the_host_but_not_itself() {
        let mut f = Faults::default();
        f.isolate(1, 3);
        let expected: BTreeSet<_> = [(0, 1), (1, 0), (1, 2), (2, 1)].into();
        assert_eq!(f.blocked, expected);
    }

    #[test]
    fn loss_rules_are_on_the_lossy_host_and_on_its_peers() {
        let mut f = Faults::default();
        f.loss.insert(1, 30);
        let own = f.nft_script(1, &addrs());
        assert!(own.contains("iifname \"eth0\" numgen random mod 100 < 30 drop"));
        let peer = f.nft_script(0, &addrs());
        assert!(peer.contains("ip saddr 10.1.0.2 numgen random mod 100 < 30 drop"));
        // 100% is a plain drop (nft refuses `< 100` after `mod 100`).
        f.loss.insert(1, 100);
        assert!(f.nft_script(1, &addrs()).contains("iifname \"eth0\" drop"));
    }
}

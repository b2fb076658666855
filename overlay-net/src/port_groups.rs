//! Which containers are behind each published host port: the pure bookkeeping of
//! shared ports, apart from the sockets that hold them (`ports`) and the rules that
//! DNAT them (`firewall`).
//!
//! A host port (protocol, host address, number) is a *group*: held once, by whatever
//! the caller keeps in it (`H`: the sockets and relay of [`crate::ports::HostPort`],
//! `()` in tests), and refcounted by its members. The replicas of one service of one
//! stack share a group, as a published port of a replicated service on Swarm's
//! ingress does: new connections are spread over the members that are *serving*
//! (healthy, and not leaving before their stop). Anything else asking for a port a
//! group holds is refused with the holder's name: another service, another stack, a
//! port with `mode: host`, a range or an ephemeral port (each of those is one
//! container's alone, as in Compose). The last member's leaving releases the hold.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::ports::HostIp;

/// A published host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub proto: &'static str,
    pub host: HostIp,
    pub port: u16,
}

impl PortKey {
    /// Whether a socket holding `self` keeps `other` from being bound (the kernel's
    /// rule): the same protocol and number, and addresses that overlap (equal, or
    /// either a wildcard of the other's family; `Any` is both families' wildcard).
    pub fn overlaps(&self, other: &PortKey) -> bool {
        if self.proto != other.proto || self.port != other.port {
            return false;
        }
        let wild6 = |h: &HostIp| matches!(h, HostIp::V6(a) if a.is_unspecified());
        match (self.host, other.host) {
            (a, b) if a == b => true,
            (HostIp::Any, _) | (_, HostIp::Any) => true,
            (HostIp::V6(_), HostIp::V6(_)) => wild6(&self.host) || wild6(&other.host),
            _ => false,
        }
    }
}

/// Who may share a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sharing {
    /// The replicas (and an old and a new task) of one service of one stack.
    Service { project: String, service: String },
    /// One container only.
    Exclusive,
}

/// One container behind a host port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    backend: SocketAddrV4,
    /// Its IPv6 address and port, on an `enable_ipv6` network.
    backend6: Option<SocketAddrV6>,
    /// Gets new connections (healthy and not leaving).
    serving: bool,
}

/// A held host port and the containers behind it.
#[derive(Debug)]
pub struct Group<H> {
    pub sharing: Sharing,
    /// Who holds it, for errors: `service web of stack shop`.
    pub holder: String,
    pub hold: H,
    /// By container id: spreading is in this order, stable across changes.
    members: BTreeMap<String, Member>,
}

impl<H> Group<H> {
    /// The serving members' addresses, in container id order.
    pub fn backends(&self) -> Vec<SocketAddrV4> {
        self.members
            .values()
            .filter(|m| m.serving)
            .map(|m| m.backend)
            .collect()
    }

    /// Every member's address, serving or not.
    pub fn members(&self) -> Vec<SocketAddrV4> {
        self.members.values().map(|m| m.backend).collect()
    }

    /// The serving members' IPv6 addresses (those that have one), in container id
    /// order.
    pub fn backends6(&self) -> Vec<SocketAddrV6> {
        self.members
            .values()
            .filter(|m| m.serving)
            .filter_map(|m| m.backend6)
            .collect()
    }

    /// Every member's IPv6 address, serving or not (those that have one).
    pub fn members6(&self) -> Vec<SocketAddrV6> {
        self.members.values().filter_map(|m| m.backend6).collect()
    }

    /// Where the IPv6 relay sends new connections: each serving member's IPv6 address
    /// if it has one, else its IPv4 one.
    pub fn relay_backends(&self) -> Vec<SocketAddr> {
        self.members
            .values()
            .filter(|m| m.serving)
            .map(|m| m.backend6.map_or(SocketAddr::V4(m.backend), SocketAddr::V6))
            .collect()
    }
}

/// What a container asking for a host port finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody of ours holds it (someone else may: holding it says).
    Free,
    /// A group it may join holds it.
    Join,
    /// It cannot have it: `holder` has it (or an overlapping address of it).
    Taken { holder: String },
}

/// Every held host port of the node.
#[derive(Debug)]
pub struct Groups<H> {
    groups: BTreeMap<PortKey, Group<H>>,
}

impl<H> Default for Groups<H> {
    fn default() -> Self {
        Groups {
            groups: BTreeMap::new(),
        }
    }
}

/// What a container's leaving did to the groups it was in.
#[derive(Debug)]
pub struct Left<H> {
    /// Groups that still have members, whose backends changed.
    pub changed: Vec<PortKey>,
    /// Groups it was the last member of: removed, their holds to release.
    pub released: Vec<(PortKey, H)>,
}

impl<H> Groups<H> {
    /// What container `id` with `sharing` finds when it asks for `key`.
    pub fn claim(&self, key: &PortKey, sharing: &Sharing, id: &str) -> Claim {
        for (k, g) in &self.groups {
            if !k.overlaps(key) {
                continue;
            }
            let joinable = k == key
                && *sharing != Sharing::Exclusive
                && g.sharing == *sharing
                // One container publishing one host port twice gets it once.
                && !g.members.contains_key(id);
            return if joinable {
                Claim::Join
            } else {
                Claim::Taken {
                    holder: g.holder.clone(),
                }
            };
        }
        Claim::Free
    }

    /// Records a newly held port (after [`Claim::Free`] and holding it).
    pub fn insert(&mut self, key: PortKey, sharing: Sharing, holder: String, hold: H) {
        self.groups.insert(
            key,
            Group {
                sharing,
                holder,
                hold,
                members: BTreeMap::new(),
            },
        );
    }

    /// Puts container `id` behind `key` (after [`Claim::Join`] or [`Self::insert`]);
    /// false if no group holds `key`.
    pub fn join(&mut self, key: &PortKey, id: &str, backend: SocketAddrV4, serving: bool) -> bool {
        self.join_dual(key, id, backend, None, serving)
    }

    /// [`Self::join`] for a container with an IPv6 address too (`backend6`).
    pub fn join_dual(
        &mut self,
        key: &PortKey,
        id: &str,
        backend: SocketAddrV4,
        backend6: Option<SocketAddrV6>,
        serving: bool,
    ) -> bool {
        let Some(g) = self.groups.get_mut(key) else {
            return false;
        };
        g.members.insert(
            id.to_string(),
            Member {
                backend,
                backend6,
                serving,
            },
        );
        true
    }

    /// Takes container `id` out of every group; a group left empty is removed and its
    /// hold handed back, to be released.
    pub fn leave(&mut self, id: &str) -> Left<H> {
        let mut changed = Vec::new();
        let mut emptied = Vec::new();
        for (k, g) in self.groups.iter_mut() {
            if g.members.remove(id).is_some() {
                if g.members.is_empty() {
                    emptied.push(*k);
                } else {
                    changed.push(*k);
                }
            }
        }
        let released = emptied
            .into_iter()
            .filter_map(|k| self.groups.remove(&k).map(|g| (k, g.hold)))
            .collect();
        Left { changed, released }
    }

    /// Removes a group that has no member (one held for a container that then could
    /// not join it); its hold is handed back.
    pub fn discard_empty(&mut self, key: &PortKey) -> Option<H> {
        if self.groups.get(key)?.members.is_empty() {
            return self.groups.remove(key).map(|g| g.hold);
        }
        None
    }

    /// Container `id` starts or stops getting new connections; the groups whose
    /// backends changed.
    pub fn set_serving(&mut self, id: &str, serving: bool) -> Vec<PortKey> {
        let mut changed = Vec::new();
        for (k, g) in self.groups.iter_mut() {
            if let Some(m) = g.members.get_mut(id) {
                if m.serving != serving {
                    m.serving = serving;
                    changed.push(*k);
                }
            }
        }
        changed
    }

    pub fn get(&self, key: &PortKey) -> Option<&Group<H>> {
        self.groups.get(key)
    }

    /// Every held port, in order.
    pub fn keys(&self) -> impl Iterator<Item = &PortKey> {
        self.groups.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn key(host: HostIp, port: u16) -> PortKey {
        PortKey {
            proto: "tcp",
            host,
            port,
        }
    }

    fn web(project: &str) -> Sharing {
        Sharing::Service {
            project: project.into(),
            service: "web".into(),
        }
    }

    fn at(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), 80)
    }

    /// Claims `key` for `id` and joins (holding it first when free), as the manager does.
    fn publish(g: &mut Groups<u32>, k: PortKey, sharing: &Sharing, id: &str, last: u8) -> Claim {
        let claim = g.claim(&k, sharing, id);
        match claim {
            Claim::Free => {
                g.insert(
                    k,
                    sharing.clone(),
                    format!("{id}'s service"),
                    u32::from(last),
                );
                assert!(g.join(&k, id, at(last), true));
            }
            Claim::Join => assert!(g.join(&k, id, at(last), true)),
            Claim::Taken { .. } => {}
        }
        claim
    }

    #[test]
    fn replicas_of_one_service_share_a_port_held_once_and_released_by_the_last() {
        let mut g = Groups::default();
        let k = key(HostIp::Any, 18080);
        assert_eq!(publish(&mut g, k, &web("shop"), "web-1", 2), Claim::Free);
        assert_eq!(publish(&mut g, k, &web("shop"), "web-2", 3), Claim::Join);
        assert_eq!(publish(&mut g, k, &web("shop"), "web-3", 4), Claim::Join);
        assert_eq!(g.get(&k).unwrap().backends(), [at(2), at(3), at(4)]);
        // Held once: the first member's hold stays whoever leaves.
        let left = g.leave("web-1");
        assert_eq!(left.changed, [k]);
        assert!(left.released.is_empty());
        assert_eq!(g.get(&k).unwrap().hold, 2);
        assert!(g.leave("web-2").released.is_empty());
        // A container in no group changes nothing.
        let none = g.leave("web-9");
        assert!(none.changed.is_empty() && none.released.is_empty());
        let last = g.leave("web-3");
        assert!(last.changed.is_empty());
        assert_eq!(last.released, [(k, 2)]);
        assert!(g.get(&k).is_none());
        // Free again, for anyone.
        assert_eq!(g.claim(&k, &Sharing::Exclusive, "x"), Claim::Free);
    }

    #[test]
    fn anyone_else_is_refused_with_the_holders_name() {
        let mut g = Groups::default();
        let k = key(HostIp::Any, 18080);
        publish(&mut g, k, &web("shop"), "web-1", 2);
        let taken = |c: Claim| matches!(c, Claim::Taken { holder } if holder == "web-1's service");
        let api = Sharing::Service {
            project: "shop".into(),
            service: "api".into(),
        };
        assert!(taken(g.claim(&k, &api, "api-1")));
        // The same service name in another stack.
        assert!(taken(g.claim(&k, &web("blog"), "web-1b")));
        // `mode: host`, a range or an ephemeral port: never shared.
        assert!(taken(g.claim(&k, &Sharing::Exclusive, "web-2")));
        // One container publishing the same host port twice.
        assert!(taken(g.claim(&k, &web("shop"), "web-1")));
        // Overlapping addresses: 0.0.0.0 and [::] hold every address of their family.
        assert!(taken(g.claim(
            &key(HostIp::V4(Ipv4Addr::LOCALHOST), 18080),
            &web("shop"),
            "web-2"
        )));
        assert!(taken(g.claim(
            &key(HostIp::V6(Ipv6Addr::LOCALHOST), 18080),
            &web("shop"),
            "web-2"
        )));
        // Another number, protocol or a disjoint address is free.
        assert_eq!(
            g.claim(&key(HostIp::Any, 18081), &api, "api-1"),
            Claim::Free
        );
        let udp = PortKey { proto: "udp", ..k };
        assert_eq!(g.claim(&udp, &api, "api-1"), Claim::Free);
        let mut g = Groups::<u32>::default();
        let lo = key(HostIp::V4(Ipv4Addr::LOCALHOST), 80);
        publish(&mut g, lo, &Sharing::Exclusive, "a", 2);
        let other = key(HostIp::V4(Ipv4Addr::new(127, 0, 0, 2)), 80);
        assert_eq!(g.claim(&other, &Sharing::Exclusive, "b"), Claim::Free);
        let wild6 = key(HostIp::V6(Ipv6Addr::UNSPECIFIED), 80);
        publish(&mut g, wild6, &Sharing::Exclusive, "c", 3);
        assert!(taken_by(g.claim(
            &key(HostIp::V6(Ipv6Addr::LOCALHOST), 80),
            &Sharing::Exclusive,
            "d"
        )));
    }

    fn taken_by(c: Claim) -> bool {
        matches!(c, Claim::Taken { .. })
    }

    #[test]
    fn only_serving_members_are_backends_and_spreading_order_is_stable() {
        let mut g = Groups::default();
        let k = key(HostIp::Any, 18080);
        for (id, last) in [("c", 4), ("a", 2), ("b", 3)] {
            publish(&mut g, k, &web("shop"), id, last);
        }
        assert_eq!(g.get(&k).unwrap().backends(), [at(2), at(3), at(4)]);
        // Unhealthy, or leaving before its stop: out of the backends, still a member.
        assert_eq!(g.set_serving("b", false), [k]);
        assert!(
            g.set_serving("b", false).is_empty(),
            "no change, nothing to apply"
        );
        assert_eq!(g.get(&k).unwrap().backends(), [at(2), at(4)]);
        assert_eq!(g.get(&k).unwrap().members(), [at(2), at(3), at(4)]);
        assert_eq!(g.set_serving("b", true), [k]);
        assert_eq!(g.get(&k).unwrap().backends(), [at(2), at(3), at(4)]);
        // A member that never served (a new task still starting).
        let k2 = key(HostIp::Any, 18081);
        g.insert(k2, web("shop"), "w".into(), 9);
        assert!(g.join(&k2, "d", at(5), false));
        assert!(g.get(&k2).unwrap().backends().is_empty());
        assert_eq!(g.discard_empty(&k2), None, "it has a member");
        let k3 = key(HostIp::Any, 18082);
        g.insert(k3, web("shop"), "w".into(), 7);
        assert_eq!(g.discard_empty(&k3), Some(7));
        assert!(!g.join(&k3, "d", at(5), true));
    }
}

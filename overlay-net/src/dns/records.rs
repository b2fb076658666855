//! The pure part of service discovery: every container's endpoint on every network,
//! and the answer a name gets for a client on one network.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One container on one network, as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub container: String,
    pub network: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on an `enable_ipv6` network: what AAAA queries answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub project: String,
    pub service: String,
    /// The container's own names (container name, hostname): always resolvable.
    pub names: Vec<String>,
    /// Network aliases: like the service name, only while healthy.
    pub aliases: Vec<String>,
    pub healthy: bool,
    /// The service's `dns:` servers, used instead of the host's for forwarding.
    pub upstream: Vec<SocketAddr>,
    /// `links` and `external_links`: names this container (and only it) resolves as
    /// others, `(alias, target)`, both lower case: the target is a service or
    /// container name answered as usual.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<(String, String)>,
}

/// Which addresses a query asks for: A (IPv4) or AAAA (IPv6) records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// What the server does with an A or AAAA query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name is ours; these addresses (possibly none: NOERROR with no records, as
    /// for AAAA on a network without IPv6), all of the family asked for.
    Addresses(Vec<IpAddr>),
    /// The name is in our domain but unknown.
    NxDomain,
    /// Not ours: ask the upstream resolvers.
    Forward,
}

/// Every endpoint of every network, keyed by (network, container).
#[derive(Debug, Default, Clone)]
pub struct Records {
    endpoints: BTreeMap<(String, String), Endpoint>,
}

impl Records {
    pub fn insert(&mut self, ep: Endpoint) {
        self.endpoints
            .insert((ep.network.clone(), ep.container.clone()), ep);
    }

    /// Removes a container from every network.
    pub fn remove_container(&mut self, container: &str) {
        self.endpoints.retain(|(_, c), _| c != container);
    }

    /// Marks a container healthy or not on every network; false if it is unknown.
    pub fn set_healthy(&mut self, container: &str, healthy: bool) -> bool {
        let mut found = false;
        for ((_, c), ep) in self.endpoints.iter_mut() {
            if c == container {
                ep.healthy = healthy;
                found = true;
            }
        }
        found
    }

    /// Whether a container answers for its service on any network now.
    pub fn is_healthy(&self, container: &str) -> bool {
        self.endpoints
            .iter()
            .any(|((_, c), ep)| c == container && ep.healthy)
    }

    fn on<'a, 'n>(&'a self, network: &'n str) -> impl Iterator<Item = &'a Endpoint> + use<'a, 'n> {
        self.endpoints
            .iter()
            .filter(move |((n, _), _)| n == network)
            .map(|(_, ep)| ep)
    }

    /// The endpoint of `container` on `network`.
    pub fn endpoint(&self, network: &str, container: &str) -> Option<&Endpoint> {
        self.endpoints
            .get(&(network.to_string(), container.to_string()))
    }

    /// The endpoint with address `ip` on `network` (the client of a query).
    pub fn client(&self, network: &str, ip: Ipv4Addr) -> Option<&Endpoint> {
        self.on(network).find(|ep| ep.ip == ip)
    }

    /// The name a query for `name` from `client` (its address) stands for: the link
    /// target when the client's container links `name` as an alias (`links: [db:database]`
    /// makes `database` and `database.` mean `db`, for that container only), else
    /// `name` itself.
    pub fn linked<'a>(&'a self, network: &str, client: Option<IpAddr>, name: &'a str) -> &'a str {
        let Some(ep) = client.and_then(|ip| {
            self.on(network).find(|ep| match ip {
                IpAddr::V4(v4) => ep.ip == v4,
                IpAddr::V6(v6) => ep.ip6 == Some(v6),
            })
        }) else {
            return name;
        };
        let bare = name.trim_end_matches('.');
        ep.links
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(bare))
            .map_or(name, |(_, target)| target.as_str())
    }

    /// Answers `name` (any case, with or without the final dot) for a client on
    /// `network`. Service names and aliases give the healthy members' addresses,
    /// rotated by `rotation`; `tasks.<service>` gives them all in address order;
    /// `<service>.<project>` works like `<service>`; container names and hostnames give
    /// that container. Single-label names and names under a project of this network
    /// are ours (NXDOMAIN when unknown); anything else is forwarded.
    pub fn answer(&self, network: &str, name: &str, rotation: usize) -> Answer {
        self.answer_for(network, name, rotation, Family::V4)
    }

    /// [`Self::answer`] for A (`Family::V4`) or AAAA (`Family::V6`) records: the same
    /// names and rules, each member's address of that family (members without an IPv6
    /// address have no AAAA record; the name is still known).
    pub fn answer_for(&self, network: &str, name: &str, rotation: usize, family: Family) -> Answer {
        let addr = |ep: &Endpoint| -> Option<IpAddr> {
            match family {
                Family::V4 => Some(IpAddr::V4(ep.ip)),
                Family::V6 => ep.ip6.map(IpAddr::V6),
            }
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let (tasks, wanted) = match name.strip_prefix("tasks.") {
            Some(rest) => (true, rest),
            None => (false, name.as_str()),
        };
        let is_service = |ep: &Endpoint| {
            ep.service == wanted
                || ep.aliases.iter().any(|a| a == wanted)
                || wanted
                    .strip_suffix(ep.project.as_str())
                    .and_then(|s| s.strip_suffix('.'))
                    .is_some_and(|s| s == ep.service)
        };
        let mut service: Vec<IpAddr> = self
            .on(network)
            .filter(|ep| ep.healthy && is_service(ep))
            .filter_map(addr)
            .collect();
        let mut known = self.on(network).any(is_service);
        if !tasks {
            for ep in self.on(network) {
                if ep.names.iter().any(|n| n == wanted) {
                    known = true;
                    if let Some(ip) = addr(ep).filter(|ip| !service.contains(ip)) {
                        service.push(ip);
                    }
                }
            }
        }
        if known {
            service.sort();
            if !tasks && !service.is_empty() {
                let len = service.len();
                service.rotate_left(rotation % len);
            }
            return Answer::Addresses(service);
        }
        let ours = !name.contains('.')
            || tasks
            || self
                .on(network)
                .any(|ep| name.ends_with(&format!(".{}", ep.project)));
        if ours {
            Answer::NxDomain
        } else {
            Answer::Forward
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::fixture::records;

    fn ips(v: &[u8]) -> Answer {
        Answer::Addresses(
            v.iter()
                .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, *i)))
                .collect(),
        )
    }

    fn ips6(v: &[u16]) -> Answer {
        Answer::Addresses(
            v.iter()
                .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, *i)))
                .collect(),
        )
    }

    #[test]
    fn links_are_aliases_of_the_linking_container_only() {
        let mut r = records();
        let mut ep = r.endpoint("front", "web-2").unwrap().clone();
        ep.links = vec![("store".into(), "web-1".into())];
        r.insert(ep);
        let web2 = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)));
        let web1 = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(r.linked("front", web2, "store"), "web-1");
        assert_eq!(r.linked("front", web2, "STORE."), "web-1");
        assert_eq!(
            r.answer("front", r.linked("front", web2, "store"), 0),
            ips(&[2])
        );
        // Another container, or another network's client, does not have the alias.
        assert_eq!(r.linked("front", web1, "store"), "store");
        assert_eq!(r.linked("back", web2, "store"), "store");
        assert_eq!(r.answer("front", "store", 0), Answer::NxDomain);
        assert_eq!(r.linked("front", None, "store"), "store");
    }

    #[test]
    fn aaaa_answers_follow_the_same_names_with_ipv6_addresses() {
        let mut r = records();
        // `web-1` and `web-3` are on front with IPv6 too; `web-2` is not.
        for (c, i) in [("web-1", 2), ("web-3", 4)] {
            let mut ep = r.endpoint("front", c).unwrap().clone();
            ep.ip6 = Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i));
            r.insert(ep);
        }
        let v6 = Family::V6;
        let cases = [
            ("web", 0, ips6(&[2])),
            ("tasks.web", 0, ips6(&[2])),
            ("web-alias", 0, ips6(&[2])),
            ("web.shop", 0, ips6(&[2])),
            // Its own names even while unhealthy, as for A.
            ("web-3", 0, ips6(&[4])),
            ("web-3-host", 0, ips6(&[4])),
            // Known, without IPv6: NOERROR with no AAAA (not NXDOMAIN).
            ("web-2", 0, ips6(&[])),
            ("db", 0, Answer::NxDomain),
            ("example.com", 0, Answer::Forward),
        ];
        for (name, rot, want) in cases {
            assert_eq!(r.answer_for("front", name, rot, v6), want, "{name}");
        }
        // A is unchanged.
        assert_eq!(r.answer("front", "web", 0), ips(&[2, 3]));
        assert_eq!(r.answer_for("front", "web", 0, Family::V4), ips(&[2, 3]));
        assert!(r.set_healthy("web-3", true));
        assert_eq!(r.answer_for("front", "web", 1, v6), ips6(&[4, 2]));
    }

    #[test]
    fn names_resolve_per_network() {
        let r = records();
        let cases = [
            ("front", "web", 0, ips(&[2, 3])),
            ("front", "web.", 1, ips(&[3, 2])),
            ("front", "WEB.shop", 0, ips(&[2, 3])),
            ("front", "tasks.web", 1, ips(&[2, 3])),
            ("front", "web-alias", 0, ips(&[2, 3])),
            // A container resolves by its own names even while unhealthy.
            ("front", "web-3", 0, ips(&[4])),
            ("front", "web-3-host", 0, ips(&[4])),
            // Another network's members are unknown here.
            ("front", "db", 0, Answer::NxDomain),
            ("front", "db.shop", 0, Answer::NxDomain),
            ("front", "tasks.db", 0, Answer::NxDomain),
            ("back", "db", 5, ips(&[2])),
            ("back", "web", 0, Answer::NxDomain),
            ("front", "example.com", 0, Answer::Forward),
        ];
        for (net, name, rot, want) in cases {
            assert_eq!(r.answer(net, name, rot), want, "{net} {name}");
        }
    }

    #[test]
    fn health_and_removal_change_answers() {
        let mut r = records();
        assert!(r.set_healthy("web-3", true));
        assert_eq!(r.answer("front", "tasks.web", 0), ips(&[2, 3, 4]));
        r.remove_container("web-1");
        r.remove_container("web-2");
        assert!(r.set_healthy("web-3", false));
        // Still a known service, with no healthy member: empty NOERROR, not NXDOMAIN.
        assert_eq!(r.answer("front", "web", 0), ips(&[]));
        r.remove_container("web-3");
        assert_eq!(r.answer("front", "web", 0), Answer::NxDomain);
        assert!(!r.set_healthy("nobody", true));
    }
}

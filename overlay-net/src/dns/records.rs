//! The pure part of service discovery: every container's endpoint on every network,
//! and the answer a name gets for a client on one network.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

/// One container on one network, as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub container: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub project: String,
    pub service: String,
    /// The container's own names (container name, hostname): always resolvable.
    pub names: Vec<String>,
    /// Network aliases: like the service name, only while healthy.
    pub aliases: Vec<String>,
    pub healthy: bool,
    /// The service's `dns:` servers, used instead of the host's for forwarding.
    pub upstream: Vec<SocketAddr>,
}

/// What the server does with an A query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name is ours; these addresses (possibly none: NOERROR with no records).
    Addresses(Vec<Ipv4Addr>),
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

    /// The endpoint with address `ip` on `network` (the client of a query).
    pub fn client(&self, network: &str, ip: Ipv4Addr) -> Option<&Endpoint> {
        self.on(network).find(|ep| ep.ip == ip)
    }

    /// Answers `name` (any case, with or without the final dot) for a client on
    /// `network`. Service names and aliases give the healthy members' addresses,
    /// rotated by `rotation`; `tasks.<service>` gives them all in address order;
    /// `<service>.<project>` works like `<service>`; container names and hostnames give
    /// that container. Single-label names and names under a project of this network
    /// are ours (NXDOMAIN when unknown); anything else is forwarded.
    pub fn answer(&self, network: &str, name: &str, rotation: usize) -> Answer {
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
        let mut service: Vec<Ipv4Addr> = self
            .on(network)
            .filter(|ep| ep.healthy && is_service(ep))
            .map(|ep| ep.ip)
            .collect();
        let mut known = self.on(network).any(is_service);
        if !tasks {
            for ep in self.on(network) {
                if ep.names.iter().any(|n| n == wanted) {
                    known = true;
                    if !service.contains(&ep.ip) {
                        service.push(ep.ip);
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
        Answer::Addresses(v.iter().map(|i| Ipv4Addr::new(10, 0, 0, *i)).collect())
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

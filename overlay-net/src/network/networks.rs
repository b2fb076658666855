//! Networks: a bridge per network with the gateway address, its subnet planned by
//! `ipam`, its nft table (isolation, NAT) and the DNS listener on its gateway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use spec::model::IpamPool;

use super::records::{remove_file, write_json};
use super::{NetError, NetworkManager};
use crate::firewall::{network_script, NetworkRules};
use crate::ipam::{plan_network, plan_range, Addressing};
use crate::ipam6::{is_ipv6_subnet, plan_network6, Addressing6};
use crate::names;

/// A network as the stack file asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRequest {
    /// The name on the host (`<project>_<key>`, spec's `Network::name`).
    pub name: String,
    pub project: String,
    pub internal: bool,
    /// The first IPv4 `ipam.config` entry (or one without a subnet).
    pub ipam: Option<IpamPool>,
    /// `enable_ipv6`: the bridge and every container on it get IPv6 too.
    pub enable_ipv6: bool,
    /// The first IPv6 `ipam.config` entry, when `enable_ipv6`; without one the
    /// network gets a ULA /64 (`ipam6`).
    pub ipam6: Option<IpamPool>,
}

impl NetworkRequest {
    pub fn from_spec(project: &str, net: &spec::model::Network) -> NetworkRequest {
        let config = net.ipam.iter().flat_map(|i| i.config.iter());
        let is_v6 = |p: &&IpamPool| p.subnet.as_deref().is_some_and(is_ipv6_subnet);
        NetworkRequest {
            name: net.name.clone(),
            project: project.to_string(),
            internal: net.internal,
            // Without enable_ipv6, the first entry whatever it is, as before IPv6
            // existed (an IPv6 one is then refused as not IPv4).
            ipam: if net.enable_ipv6 {
                config.clone().find(|p| !is_v6(p)).cloned()
            } else {
                config.clone().next().cloned()
            },
            enable_ipv6: net.enable_ipv6,
            ipam6: if net.enable_ipv6 {
                config.clone().find(|p| is_v6(p)).cloned()
            } else {
                None
            },
        }
    }
}

/// A network as it exists on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub project: String,
    pub bridge: String,
    pub addressing: Addressing,
    pub internal: bool,
    /// `aux_addresses`: never given to containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<Ipv4Addr>,
    /// The `ipam` it was made with: a later request must ask for the same.
    #[serde(default)]
    requested: Option<IpamPool>,
    /// Its IPv6 addressing, for an `enable_ipv6` network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addressing6: Option<Addressing6>,
    /// The IPv6 `ipam` entry it was made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requested6: Option<IpamPool>,
}

impl NetworkInfo {
    /// Whether `req` asks for something else than this network was made with.
    fn differs(&self, req: &NetworkRequest) -> bool {
        self.internal != req.internal
            || self.requested != req.ipam
            || self.addressing6.is_some() != req.enable_ipv6
            || self.requested6 != req.ipam6
    }
}

impl NetworkManager {
    /// The networks this node knows.
    pub fn networks(&self) -> Vec<NetworkInfo> {
        self.lock().networks.values().cloned().collect()
    }

    /// Creates the network, or makes sure an existing one is complete (bridge, address,
    /// rules, DNS listener). Calling it again with the same request changes nothing.
    ///
    /// Every container start calls it, so once this process has made a network
    /// complete it only checks the request: the kernel objects are not looked at again
    /// (that cost an `nft` process, netlink requests and two sysctl writes per
    /// container). A bridge or table removed by hand behind a running daemon comes
    /// back when the daemon next starts (its first `ensure_network` does it all).
    pub fn ensure_network(&self, req: &NetworkRequest) -> Result<NetworkInfo, NetError> {
        if let Some(info) = self.ready_network(req)? {
            return Ok(info);
        }
        let _ensuring = self.ensuring.lock().unwrap_or_else(|p| p.into_inner());
        // Another caller may have finished it while this one waited.
        if let Some(info) = self.ready_network(req)? {
            return Ok(info);
        }
        let info = self.make_network(req)?;
        self.lock().ready.insert(info.name.clone());
        Ok(info)
    }

    /// The network of `req` if this process has already made it complete; an error if
    /// it exists with other settings.
    fn ready_network(&self, req: &NetworkRequest) -> Result<Option<NetworkInfo>, NetError> {
        let st = self.lock();
        match st.networks.get(&req.name) {
            Some(existing) if existing.differs(req) => Err(NetError::NetworkChanged {
                network: req.name.clone(),
            }),
            Some(existing) if st.ready.contains(&req.name) => Ok(Some(existing.clone())),
            _ => Ok(None),
        }
    }

    fn make_network(&self, req: &NetworkRequest) -> Result<NetworkInfo, NetError> {
        let mut st = self.lock();
        let requested = req.ipam.clone();
        let info = match st.networks.get(&req.name) {
            Some(existing) => {
                if existing.differs(req) {
                    return Err(NetError::NetworkChanged {
                        network: req.name.clone(),
                    });
                }
                existing.clone()
            }
            None => {
                let others: Vec<_> = st.networks.values().map(|n| n.addressing.subnet).collect();
                let routes = self.links.host_routes()?;
                let wanted = req
                    .ipam
                    .as_ref()
                    .and_then(|p| p.subnet.as_deref().map(|s| (s, p.gateway.as_deref())));
                let mut addressing =
                    plan_network(&req.name, wanted, &self.cfg.pool, &routes, &others)?;
                let reserved = match &req.ipam {
                    Some(p) => plan_range(
                        &req.name,
                        &mut addressing,
                        p.ip_range.as_deref(),
                        &p.aux_addresses,
                    )?,
                    None => Vec::new(),
                };
                let addressing6 = if req.enable_ipv6 {
                    let others6: Vec<_> = st
                        .networks
                        .values()
                        .filter_map(|n| n.addressing6.map(|a| a.subnet))
                        .collect();
                    let wanted6 = req.ipam6.as_ref().and_then(|p| {
                        p.subnet
                            .as_deref()
                            .map(|s| (s, p.gateway.as_deref(), p.ip_range.as_deref()))
                    });
                    Some(plan_network6(
                        &req.name,
                        wanted6,
                        &self.links.host_routes6()?,
                        &others6,
                    )?)
                } else {
                    None
                };
                let info = NetworkInfo {
                    name: req.name.clone(),
                    project: req.project.clone(),
                    bridge: names::bridge(&self.cfg.prefix, &req.name),
                    addressing,
                    internal: req.internal,
                    reserved,
                    requested,
                    addressing6,
                    requested6: req.ipam6.clone(),
                };
                write_json(&self.network_file(&info.bridge), &info)?;
                st.networks.insert(info.name.clone(), info.clone());
                info
            }
        };
        drop(st);
        self.links.ensure_bridge(
            &info.bridge,
            info.addressing.gateway,
            info.addressing.subnet.prefix_len(),
            info.addressing6.map(|a| (a.gateway, a.subnet.prefix_len())),
        )?;
        if !info.internal {
            // NAT for outbound traffic needs forwarding on, as Docker sets it.
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
            if info.addressing6.is_some() {
                let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1");
            }
        }
        self.firewall.apply(&network_script(&NetworkRules {
            prefix: &self.cfg.prefix,
            bridge: &info.bridge,
            subnet: info.addressing.subnet,
            subnet6: info.addressing6.map(|a| a.subnet),
            internal: info.internal,
        }))?;
        let addr = SocketAddr::new(IpAddr::V4(info.addressing.gateway), self.cfg.dns_port);
        self.dns
            .listen(&info.name, addr)
            .map_err(|source| NetError::Dns {
                network: info.name.clone(),
                addr,
                source,
            })?;
        Ok(info)
    }

    /// Removes a network with no containers attached: DNS listener, rules, bridge,
    /// record. Removing an unknown network is not an error.
    pub fn remove_network(&self, name: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        let users: Vec<&str> = st
            .containers
            .values()
            .filter(|c| c.interfaces.iter().any(|i| i.network == name))
            .map(|c| c.id.as_str())
            .collect();
        if !users.is_empty() {
            return Err(NetError::NetworkInUse {
                network: name.to_string(),
                containers: users.join(", "),
            });
        }
        let Some(info) = st.networks.get(name).cloned() else {
            return Ok(());
        };
        self.dns.unlisten(name);
        self.firewall.delete_table(&info.bridge)?;
        self.links.delete_link(&info.bridge)?;
        remove_file(&self.network_file(&info.bridge))?;
        st.networks.remove(name);
        st.ready.remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::fake::*;

    #[test]
    fn networks_are_idempotent_recorded_and_refuse_changes() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let m = open(dir.path(), &fake);
        let a = m.ensure_network(&net("p_front", false)).unwrap();
        assert_eq!(a.addressing.subnet.to_string(), "127.66.0.0/24");
        assert_eq!(m.ensure_network(&net("p_front", false)).unwrap(), a);
        assert_eq!(fake.k().bridges_created, 1);
        // Made complete once: the next container's call leaves the kernel alone.
        let applied = fake.k().applied;
        fake.k().links.remove(&a.bridge);
        assert_eq!(m.ensure_network(&net("p_front", false)).unwrap(), a);
        assert_eq!(fake.k().applied, applied);
        assert!(!fake.k().links.contains(&a.bridge));
        // A manager opened again (a restarted daemon) repairs it on first use.
        let m = open(dir.path(), &fake);
        assert_eq!(m.ensure_network(&net("p_front", false)).unwrap(), a);
        assert!(fake.k().links.contains(&a.bridge));
        assert_eq!(fake.k().applied, applied + 1);
        let b = m.ensure_network(&net("p_back", true)).unwrap();
        assert_eq!(b.addressing.subnet.to_string(), "127.66.1.0/24");
        assert!(
            fake.k().tables[&b.bridge].contains("oifname != "),
            "internal drop rule"
        );
        assert!(!fake.k().tables[&b.bridge].contains("masquerade"));
        assert!(matches!(
            m.ensure_network(&net("p_front", true)),
            Err(NetError::NetworkChanged { .. })
        ));
        assert!(m.network_file(&a.bridge).is_file());
        m.remove_network("p_back").unwrap();
        assert!(!fake.k().links.contains(&b.bridge));
        assert!(!fake.k().tables.contains_key(&b.bridge));
        assert!(!m.network_file(&b.bridge).exists());
    }

    #[test]
    fn ipam_entries_are_split_by_family_only_with_enable_ipv6() {
        let pool = |subnet: &str| IpamPool {
            subnet: Some(subnet.to_string()),
            ..IpamPool::default()
        };
        let mut spec_net = spec::model::Network {
            name: "p_front".into(),
            ipam: Some(spec::model::Ipam {
                config: vec![pool("fd00:9::/64"), pool("10.9.0.0/24")],
                ..Default::default()
            }),
            ..Default::default()
        };
        // Without enable_ipv6: the first entry, as before (an IPv6 one is refused).
        let r = NetworkRequest::from_spec("p", &spec_net);
        assert_eq!(
            (r.ipam, r.ipam6, r.enable_ipv6),
            (Some(pool("fd00:9::/64")), None, false)
        );
        spec_net.enable_ipv6 = true;
        let r = NetworkRequest::from_spec("p", &spec_net);
        assert_eq!(r.ipam, Some(pool("10.9.0.0/24")));
        assert_eq!(r.ipam6, Some(pool("fd00:9::/64")));
        assert!(r.enable_ipv6);
    }
}

//! Attachments: a container's network namespace, one veth per network with its
//! address, the default route, its `/etc/resolv.conf` and `/etc/hosts`, and its DNS
//! records (and whether they answer for its service and get connections on its host
//! ports: [`NetworkManager::set_healthy`], [`NetworkManager::leave`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spec::model::ServiceNetwork;

use super::records::{check_id, remove_file, write_json};
use super::{NetError, NetworkInfo, NetworkManager, State};
use crate::dns::Endpoint;
use crate::ipam::plan_address;
use crate::ipam6::plan_address6;
use crate::kernel::VethPlan;
use crate::names;
use crate::ports::Published;
use crate::resolv;

/// A container to connect, before it starts.
#[derive(Debug, Clone, Default)]
pub struct AttachRequest {
    /// The runtime's container id (unique on the node).
    pub container_id: String,
    /// The Compose container name (`<project>-<service>-<n>`), resolvable by DNS.
    pub container_name: String,
    pub project: String,
    pub service: String,
    pub hostname: Option<String>,
    /// Networks in interface order (eth0 first) with the service's per-network options.
    pub networks: Vec<(String, ServiceNetwork)>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_opt: Vec<String>,
    pub extra_hosts: Vec<String>,
    /// Whether the container answers for its service name from the start (false for
    /// services with a health check until it passes).
    pub healthy: bool,
    /// `(alias, target)` names only this container resolves (`links`,
    /// `external_links`).
    pub links: Vec<(String, String)>,
}

/// One interface inside a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub network: String,
    pub ifname: String,
    pub host_veth: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// Its IPv6 address, on an `enable_ipv6` network (`ipv6_address` honored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    /// The MAC address asked for (`mac_address`); else one follows from the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    /// `gw_priority`: the default route goes through the highest (ties: the first).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gw_priority: i64,
    /// `link_local_ips`: more addresses of the interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_local: Vec<std::net::IpAddr>,
    /// `driver_opts: {com.docker.network.endpoint.sysctls: ...}`, `IFNAME` replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<(String, String)>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// What the daemon needs to start a connected container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The network namespace to join (OCI `linux.namespaces[type=network].path`).
    pub netns: PathBuf,
    pub interfaces: Vec<Interface>,
    /// Contents for the container's `/etc/resolv.conf` and `/etc/hosts`.
    pub resolv_conf: String,
    pub hosts: String,
}

/// One attached container as recorded: its namespace, interfaces, DNS endpoints and
/// what is published for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ContainerRecord {
    pub(super) id: String,
    pub(super) netns: PathBuf,
    pub(super) interfaces: Vec<Interface>,
    pub(super) endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub(super) published: Vec<Published>,
}

impl NetworkManager {
    /// Connects a container before it starts: a network namespace at
    /// `<netns_dir>/<prefix>-<id>`, one interface per network (`eth0`, `eth1`, ...,
    /// with `ipv4_address` honored), loopback up, a default route through the first
    /// non-internal network, and DNS records. All or nothing.
    pub fn attach(&self, req: &AttachRequest) -> Result<Attachment, NetError> {
        check_id(&req.container_id)?;
        let mut st = self.lock();
        if st.containers.contains_key(&req.container_id) {
            return Err(NetError::AlreadyAttached(req.container_id.clone()));
        }
        let nets: Vec<NetworkInfo> = req
            .networks
            .iter()
            .map(|(n, _)| {
                st.networks
                    .get(n)
                    .cloned()
                    .ok_or_else(|| NetError::UnknownNetwork(n.clone()))
            })
            .collect::<Result<_, _>>()?;
        let mut interfaces = Vec::new();
        for (i, ((name, opts), net)) in req.networks.iter().zip(&nets).enumerate() {
            let used: BTreeSet<Ipv4Addr> = st
                .containers
                .values()
                .flat_map(|c| &c.interfaces)
                .filter(|itf| &itf.network == name)
                .map(|itf| itf.address)
                .chain(
                    interfaces
                        .iter()
                        .filter(|itf: &&Interface| &itf.network == name)
                        .map(|itf| itf.address),
                )
                .chain(net.reserved.iter().copied())
                .collect();
            let address = plan_address(
                name,
                &req.service,
                &net.addressing,
                &used,
                opts.ipv4_address.as_deref(),
            )?;
            let address6 = match (&net.addressing6, opts.ipv6_address.as_deref()) {
                (Some(a6), requested) => {
                    let used6: BTreeSet<Ipv6Addr> = st
                        .containers
                        .values()
                        .flat_map(|c| &c.interfaces)
                        .chain(&interfaces)
                        .filter(|itf| &itf.network == name)
                        .filter_map(|itf| itf.address6)
                        .collect();
                    Some(plan_address6(name, &req.service, a6, &used6, requested)?)
                }
                // As before IPv6 existed here: a network without enable_ipv6 ignores it.
                (None, _) => None,
            };
            let ifname = opts
                .interface_name
                .clone()
                .unwrap_or_else(|| format!("eth{i}"));
            let sysctls = endpoint_sysctls(opts, &ifname);
            interfaces.push(Interface {
                network: name.clone(),
                ifname: ifname.clone(),
                host_veth: names::veth_host(&self.cfg.prefix, &req.container_id, name),
                address,
                prefix_len: net.addressing.subnet.prefix_len(),
                address6,
                mac: opts.mac_address.as_deref().and_then(parse_mac),
                gw_priority: opts.gw_priority.unwrap_or(0),
                link_local: opts
                    .link_local_ips
                    .iter()
                    .filter_map(|ip| ip.parse().ok())
                    .collect(),
                sysctls,
            });
        }
        let hostname = req
            .hostname
            .clone()
            .unwrap_or_else(|| req.container_name.clone());
        let gateway = nets.first().map(|n| n.addressing.gateway);
        let hosts = resolv::hosts(
            &req.service,
            &hostname,
            interfaces.first().map(|i| i.address),
            interfaces.first().and_then(|i| i.address6),
            gateway,
            &req.extra_hosts,
        )?;
        let upstream: Vec<SocketAddr> = req
            .dns
            .iter()
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        let endpoints: Vec<Endpoint> = req
            .networks
            .iter()
            .zip(&interfaces)
            .map(|((name, opts), itf)| Endpoint {
                container: req.container_id.clone(),
                network: name.clone(),
                ip: itf.address,
                ip6: itf.address6,
                project: req.project.to_ascii_lowercase(),
                service: req.service.to_ascii_lowercase(),
                names: [Some(&req.container_name), req.hostname.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter(|n| !n.is_empty())
                    .map(|n| n.to_ascii_lowercase())
                    .collect(),
                aliases: opts
                    .aliases
                    .iter()
                    .map(|a| a.to_ascii_lowercase())
                    .collect(),
                healthy: req.healthy,
                upstream: upstream.clone(),
                links: req
                    .links
                    .iter()
                    .map(|(a, t)| (a.to_ascii_lowercase(), t.to_ascii_lowercase()))
                    .collect(),
            })
            .collect();
        let record = ContainerRecord {
            id: req.container_id.clone(),
            netns: self
                .cfg
                .netns_dir
                .join(names::netns_file(&self.cfg.prefix, &req.container_id)),
            interfaces,
            endpoints,
            published: Vec::new(),
        };
        write_json(&self.container_file(&record.id), &record)?;
        st.containers.insert(record.id.clone(), record.clone());
        // The kernel work runs without the lock: the record (in the state now) already
        // holds this container's addresses, so other attaches plan around it, and
        // containers starting together make their namespaces and veths in parallel
        // (serialized, this was 5-10 ms per container on the critical path of `up`).
        // Nothing else touches this container meanwhile: the agent runs one job per
        // container at a time.
        drop(st);
        if let Err(e) = self.plumb(&record, &nets) {
            let mut st = self.lock();
            let _ = self.teardown(&mut st, &record.id);
            return Err(e);
        }
        {
            let mut records = self
                .dns
                .records()
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for ep in &record.endpoints {
                records.insert(ep.clone());
            }
        }
        let resolv_conf = resolv::resolv_conf(
            gateway.unwrap_or(Ipv4Addr::LOCALHOST),
            &req.dns_search,
            &req.dns_opt,
        );
        Ok(Attachment {
            netns: record.netns,
            interfaces: record.interfaces,
            resolv_conf,
            hosts,
        })
    }

    fn plumb(&self, record: &ContainerRecord, nets: &[NetworkInfo]) -> Result<(), NetError> {
        // The default routes go through the non-internal network of the highest
        // `gw_priority`, the first of those on a tie (Docker's rule); IPv6's through
        // such a network with IPv6, which may not be the IPv4 one's.
        let best = |ok: &dyn Fn(&NetworkInfo) -> bool| {
            (0..nets.len().min(record.interfaces.len()))
                .filter(|&i| ok(&nets[i]))
                .max_by_key(|&i| (record.interfaces[i].gw_priority, std::cmp::Reverse(i)))
        };
        let route_via = best(&|n| !n.internal);
        let route_via6 = best(&|n| !n.internal && n.addressing6.is_some());
        let plans: Vec<VethPlan> = record
            .interfaces
            .iter()
            .zip(nets)
            .enumerate()
            .map(|(i, (itf, net))| VethPlan {
                bridge: net.bridge.clone(),
                host: itf.host_veth.clone(),
                netns: record.netns.clone(),
                ifname: itf.ifname.clone(),
                mac: itf.mac,
                link_local: itf.link_local.clone(),
                sysctls: itf.sysctls.clone(),
                address: itf.address,
                prefix_len: itf.prefix_len,
                default_via: (route_via == Some(i)).then_some(net.addressing.gateway),
                address6: itf
                    .address6
                    .zip(net.addressing6.map(|a| a.subnet.prefix_len())),
                default_via6: (route_via6 == Some(i))
                    .then(|| net.addressing6.map(|a| a.gateway))
                    .flatten(),
            })
            .collect();
        self.links.create_netns(&record.netns, &plans)?;
        Ok(())
    }

    /// Removes everything of one container: ports, DNS records, veths, namespace,
    /// record. Detaching an unknown container is not an error.
    pub fn detach(&self, container_id: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        self.teardown(&mut st, container_id)
    }

    fn teardown(&self, st: &mut State, id: &str) -> Result<(), NetError> {
        let Some(record) = st.containers.get(id).cloned() else {
            return Ok(());
        };
        self.dns
            .records()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove_container(id);
        // Its host ports: released if it was the last one behind them, else their
        // rules no longer name it. (No `nft` run for a container that published none.)
        self.leave_ports(st, id)?;
        st.leaving.remove(id);
        // Dropping the namespace is enough: the kernel then destroys it, and the veths
        // with it (both ends), in its own batched cleanup. Deleting each veth first
        // costs a synchronous teardown per link (about 10 ms each, serialized here),
        // which made `down` of 50 containers take 2.5 s. `gc` removes any prefixed link
        // that somehow outlives its namespace.
        self.links.delete_netns(&record.netns)?;
        remove_file(&self.container_file(id))?;
        st.containers.remove(id);
        Ok(())
    }

    /// Marks a container healthy (it answers for its service name and aliases, and
    /// gets new connections on the host ports it is behind) or not. A container that
    /// is leaving stays out whatever its health. Takes effect for the next DNS query
    /// and the next connection. `Ok(false)` if the container is unknown.
    pub fn set_healthy(&self, container_id: &str, healthy: bool) -> Result<bool, NetError> {
        let mut st = self.lock();
        let serving = healthy && !st.leaving.contains(container_id);
        let known = self
            .dns
            .records()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_healthy(container_id, serving);
        for key in st.ports.set_serving(container_id, serving) {
            self.apply_port(&st, &key)?;
        }
        Ok(known)
    }

    /// Takes a container out of its services' DNS answers and the backends of its
    /// host ports for good, before it is stopped: no new connection or lookup reaches
    /// it while it finishes the ones it has (conntrack keeps established connections
    /// with it). Its own names (container name, hostname) still resolve until it is
    /// detached. Doing it again, or for an unknown container, does nothing.
    pub fn leave(&self, container_id: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        if !st.containers.contains_key(container_id) || !st.leaving.insert(container_id.to_string())
        {
            return Ok(());
        }
        self.dns
            .records()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_healthy(container_id, false);
        for key in st.ports.set_serving(container_id, false) {
            self.apply_port(&st, &key)?;
        }
        Ok(())
    }
}

/// The endpoint sysctls a service network asks for (`driver_opts:
/// {com.docker.network.endpoint.sysctls: "net.ipv4.conf.IFNAME.log_martians=1,..."}`),
/// `IFNAME` made the interface's name.
fn endpoint_sysctls(opts: &ServiceNetwork, ifname: &str) -> Vec<(String, String)> {
    opts.driver_opts
        .get("com.docker.network.endpoint.sysctls")
        .map(|v| {
            v.split(',')
                .filter_map(|item| item.trim().split_once('='))
                .map(|(k, v)| (k.trim().replace("IFNAME", ifname), v.trim().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `02:42:ac:11:00:02` (or with `-`) as bytes; the loader has checked the form.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split([':', '-'])
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::fake::*;

    #[test]
    fn containers_attaching_at_once_get_distinct_addresses_and_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let m = open(dir.path(), &fake);
        m.ensure_network(&net("p_front", false)).unwrap();
        // Their namespaces are made outside the manager's lock, in parallel.
        let addrs: BTreeSet<Ipv4Addr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let m = &m;
                    s.spawn(move || {
                        m.attach(&attach_req(&format!("c{i}"), &[("p_front", None)]))
                            .unwrap()
                            .interfaces[0]
                            .address
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(addrs.len(), 8, "{addrs:?}");
        assert_eq!(fake.k().netns.len(), 8);
        for i in 0..8 {
            m.detach(&format!("c{i}")).unwrap();
        }
        assert!(fake.k().netns.is_empty());
    }

    #[test]
    fn attach_plans_interfaces_routes_and_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let m = open(dir.path(), &fake);
        m.ensure_network(&net("p_private", true)).unwrap();
        let front = m.ensure_network(&net("p_front", false)).unwrap();
        let att = m
            .attach(&attach_req(
                "c1",
                &[("p_private", None), ("p_front", Some("127.66.1.9"))],
            ))
            .unwrap();
        let names: Vec<_> = att.interfaces.iter().map(|i| i.ifname.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1"]);
        assert_eq!(att.interfaces[1].address, Ipv4Addr::new(127, 66, 1, 9));
        let plans = fake.k().plans.clone();
        // The default route goes through the first network that is not internal.
        assert_eq!(plans[0].default_via, None);
        assert_eq!(plans[1].default_via, Some(front.addressing.gateway));
        assert!(
            att.resolv_conf.contains("nameserver 127.66.0.1"),
            "{}",
            att.resolv_conf
        );
        assert!(att.hosts.contains("127.66.0.2\tp-c1"), "{}", att.hosts);

        // The same address again is refused, and nothing of c2 is left.
        let e = m
            .attach(&attach_req("c2", &[("p_front", Some("127.66.1.9"))]))
            .unwrap_err();
        assert!(e.to_string().contains("already used"), "{e}");
        assert!(!m.container_file("c2").exists());
        // A kernel failure half-way is rolled back too.
        fake.k().fail_netns = true;
        assert!(m.attach(&attach_req("c3", &[("p_front", None)])).is_err());
        assert!(!m.container_file("c3").exists());
        fake.k().fail_netns = false;

        let e = m.remove_network("p_front").unwrap_err();
        assert!(e.to_string().contains("c1"), "{e}");
        assert!(matches!(
            m.attach(&attach_req("c1", &[])),
            Err(NetError::AlreadyAttached(_))
        ));
        assert!(matches!(
            m.attach(&attach_req("../x", &[])),
            Err(NetError::BadId(_))
        ));
        assert!(matches!(
            m.attach(&attach_req("c4", &[("nope", None)])),
            Err(NetError::UnknownNetwork(_))
        ));
        m.detach("c1").unwrap();
        assert!(fake.k().netns.is_empty());
        assert!(!fake.k().links.iter().any(|l| l.starts_with("fkv")));
        m.remove_network("p_front").unwrap();
    }

    #[test]
    fn an_ipv6_network_gives_dual_stack_interfaces_routes_and_aaaa_records() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let m = open(dir.path(), &fake);
        let plain = m.ensure_network(&net("p_plain", false)).unwrap();
        assert_eq!(plain.addressing6, None);
        let front = m.ensure_network(&net6("p_front", false)).unwrap();
        let a6 = front.addressing6.expect("IPv6 addressing");
        assert_eq!(a6.subnet.addr().octets()[0], 0xfd, "{}", a6.subnet);
        assert!(
            fake.k().tables[&front.bridge].contains("table ip6 "),
            "{}",
            fake.k().tables[&front.bridge]
        );
        assert!(!fake.k().tables[&plain.bridge].contains("ip6"));
        // Turning IPv6 on for an existing network is a change, as ipam is.
        assert!(matches!(
            m.ensure_network(&net6("p_plain", false)),
            Err(NetError::NetworkChanged { .. })
        ));
        let wanted = a6.subnet.nth(0x99).unwrap();
        let mut req = attach_req("c1", &[("p_plain", None), ("p_front", None)]);
        req.networks[1].1.ipv6_address = Some(wanted.to_string());
        // On a network without IPv6, ipv6_address is ignored, as before.
        req.networks[0].1.ipv6_address = Some("fd00:1::9".into());
        let att = m.attach(&req).unwrap();
        assert_eq!(att.interfaces[0].address6, None);
        assert_eq!(att.interfaces[1].address6, Some(wanted));
        let c2 = m.attach(&attach_req("c2", &[("p_front", None)])).unwrap();
        assert_eq!(c2.interfaces[0].address6, a6.subnet.nth(2));
        let plans = fake.k().plans.clone();
        // IPv4 default route through the first network, IPv6's through the first with
        // IPv6; addresses carry the subnet's length.
        assert_eq!(plans[0].default_via, Some(plain.addressing.gateway));
        assert_eq!((plans[0].address6, plans[0].default_via6), (None, None));
        assert_eq!(plans[1].default_via, None);
        assert_eq!(plans[1].address6, Some((wanted, 64)));
        assert_eq!(plans[1].default_via6, Some(a6.gateway));
        // The same ipv6_address again is refused.
        let mut again = attach_req("c3", &[("p_front", None)]);
        again.networks[0].1.ipv6_address = Some(wanted.to_string());
        let e = m.attach(&again).unwrap_err();
        assert!(e.to_string().contains("already used"), "{e}");
        // DNS: AAAA for the names on the IPv6 network, none on the other.
        let records = m.dns.records().read().unwrap().clone();
        let aaaa = |net: &str, name: &str| records.answer_for(net, name, 0, crate::dns::Family::V6);
        assert_eq!(
            aaaa("p_front", "p-c1"),
            crate::dns::Answer::Addresses(vec![IpAddr::V6(wanted)])
        );
        assert_eq!(
            aaaa("p_plain", "p-c1"),
            crate::dns::Answer::Addresses(vec![])
        );
        // Reopened (a restarted daemon): the records come back with their IPv6.
        drop(m);
        let m = open(dir.path(), &fake);
        assert_eq!(
            m.networks()
                .iter()
                .find(|n| n.name == "p_front")
                .unwrap()
                .addressing6,
            Some(a6)
        );
        let records = m.dns.records().read().unwrap().clone();
        assert_eq!(
            records.answer_for("p_front", "web", 0, crate::dns::Family::V6),
            crate::dns::Answer::Addresses(vec![
                IpAddr::V6(a6.subnet.nth(2).unwrap()),
                IpAddr::V6(wanted)
            ])
        );
    }
}

//! [`NetworkManager`]: one node's networks, container attachments, DNS records and
//! published ports, recorded under `<state>/network/` so a restarted daemon knows
//! what exists and [`NetworkManager::gc`] can remove what a crash left behind.
//!
//! Order of work, so a crash at any point leaves something `gc` can find: the record
//! is written before the kernel objects are made, and removed after they are gone.
//! Every kernel object's name starts with the configured prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use spec::model::{IpamPool, Port, ServiceNetwork};

use crate::dns::{DnsServer, Endpoint};
use crate::firewall::{
    network_script, ports_script, Firewall, FirewallError, NetworkRules, NftCli,
};
use crate::ipam::{plan_address, plan_network, plan_range, Addressing, IpamError, Pool};
use crate::kernel::{LinkError, Links, Rtnetlink, VethPlan};
use crate::names;
use crate::ports::{self, PortError, Published, Reservation};
use crate::resolv::{self, ResolvError};

/// Everything that can go wrong in the manager.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Prefix(#[from] names::BadPrefix),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Resolv(#[from] ResolvError),
    #[error("network state {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("network {network}: DNS server could not listen on {addr}: {source}")]
    Dns {
        network: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("network {0} is not known on this node; create it (ensure_network) before attaching containers")]
    UnknownNetwork(String),
    #[error("network {network} is still used by containers {containers}; detach them first")]
    NetworkInUse { network: String, containers: String },
    #[error("network {network} already exists with different settings (internal or ipam changed); remove it first")]
    NetworkChanged { network: String },
    #[error("container {0:?} is already attached; detach it first")]
    AlreadyAttached(String),
    #[error("container {0:?} has no network attachment")]
    NotAttached(String),
    #[error("container id {0:?} cannot name a file (empty, contains '/', or starts with '.')")]
    BadId(String),
    #[error("container {0}: publishing ports needs at least one network")]
    NoInterface(String),
}

/// Where and how the manager works.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// berth's state directory; records go to `<state_dir>/network/`.
    pub state_dir: PathBuf,
    /// Start of every kernel object's name (see [`names::check_prefix`]).
    pub prefix: String,
    /// Where namespace files are bind-mounted (like `/run/netns` for `ip netns`).
    pub netns_dir: PathBuf,
    /// Where networks without `ipam.config` get subnets.
    pub pool: Pool,
    /// Resolvers for names that are not ours; `None`: the host's `/etc/resolv.conf`.
    pub upstream: Option<Vec<SocketAddr>>,
    /// The DNS server's port on each gateway (53; containers' resolv.conf assumes it).
    pub dns_port: u16,
}

impl NetConfig {
    /// The daemon's defaults: prefix `berth`, namespaces under `/run/berth/netns`.
    pub fn new(state_dir: impl Into<PathBuf>) -> NetConfig {
        NetConfig {
            state_dir: state_dir.into(),
            prefix: "berth".to_string(),
            netns_dir: PathBuf::from("/run/berth/netns"),
            pool: Pool::default(),
            upstream: None,
            dns_port: 53,
        }
    }
}

/// A network as the stack file asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRequest {
    /// The name on the host (`<project>_<key>`, spec's `Network::name`).
    pub name: String,
    pub project: String,
    pub internal: bool,
    /// The first `ipam.config` entry.
    pub ipam: Option<IpamPool>,
}

impl NetworkRequest {
    pub fn from_spec(project: &str, net: &spec::model::Network) -> NetworkRequest {
        NetworkRequest {
            name: net.name.clone(),
            project: project.to_string(),
            internal: net.internal,
            ipam: net.ipam.as_ref().and_then(|i| i.config.first().cloned()),
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
    #[serde(default)]
    requested: Option<IpamPool>,
}

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
}

/// One interface inside a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub network: String,
    pub ifname: String,
    pub host_veth: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
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

/// What [`NetworkManager::gc`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub links: Vec<String>,
    pub tables: Vec<String>,
    pub netns: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContainerRecord {
    id: String,
    netns: PathBuf,
    interfaces: Vec<Interface>,
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    published: Vec<Published>,
}

#[derive(Debug, Default)]
struct State {
    networks: BTreeMap<String, NetworkInfo>,
    containers: BTreeMap<String, ContainerRecord>,
    reservations: BTreeMap<String, Vec<Reservation>>,
    /// Networks this process has made complete (bridge, address, rules, DNS) since it
    /// opened the manager: `ensure_network` of one of them does nothing more.
    ready: BTreeSet<String>,
}

/// One node's container networking. Cheap calls take `&self`; kernel work is
/// serialized by one lock, except a container's namespace and veths in `attach`
/// (planned under the lock, made outside it).
pub struct NetworkManager {
    cfg: NetConfig,
    links: Box<dyn Links>,
    firewall: Box<dyn Firewall>,
    dns: DnsServer,
    state: Mutex<State>,
    /// Held while a network is made complete, so that containers starting together
    /// on a new network wait for the first to finish instead of all redoing it.
    ensuring: Mutex<()>,
}

impl std::fmt::Debug for NetworkManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkManager")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn state_err(path: &Path, e: impl std::fmt::Display) -> NetError {
    NetError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), NetError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| state_err(dir, e))?;
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(value).map_err(|e| state_err(path, e))?;
    std::fs::write(&tmp, json).map_err(|e| state_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| state_err(path, e))
}

fn read_dir_json<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Vec<T>, NetError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(state_err(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "json") {
            let bytes = std::fs::read(&path).map_err(|e| state_err(&path, e))?;
            out.push(serde_json::from_slice(&bytes).map_err(|e| state_err(&path, e))?);
        }
    }
    Ok(out)
}

fn remove_file(path: &Path) -> Result<(), NetError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(state_err(path, e)),
    }
}

fn check_id(id: &str) -> Result<(), NetError> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') || id.contains('\0') {
        return Err(NetError::BadId(id.to_string()));
    }
    Ok(())
}

impl NetworkManager {
    /// Opens the manager on the real kernel (netlink and the `nft` tool).
    pub fn open(cfg: NetConfig) -> Result<NetworkManager, NetError> {
        NetworkManager::with_kernel(cfg, Box::new(Rtnetlink::new()?), Box::new(NftCli))
    }

    /// Opens the manager with the given kernel seams (fakes in unit tests). Reads the
    /// records of an earlier run and resumes DNS for the networks whose bridge exists.
    pub fn with_kernel(
        cfg: NetConfig,
        links: Box<dyn Links>,
        firewall: Box<dyn Firewall>,
    ) -> Result<NetworkManager, NetError> {
        names::check_prefix(&cfg.prefix)?;
        let upstream = match &cfg.upstream {
            Some(u) => u.clone(),
            None => crate::dns::parse_nameservers(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
        };
        let mgr = NetworkManager {
            dns: DnsServer::new(upstream),
            cfg,
            links,
            firewall,
            state: Mutex::default(),
            ensuring: Mutex::default(),
        };
        let networks: Vec<NetworkInfo> = read_dir_json(&mgr.dir("networks"))?;
        let containers: Vec<ContainerRecord> = read_dir_json(&mgr.dir("containers"))?;
        let existing: BTreeSet<String> = mgr.links.link_names()?.into_iter().collect();
        {
            let mut st = mgr.lock();
            for net in networks {
                if existing.contains(&net.bridge) {
                    let addr =
                        SocketAddr::new(IpAddr::V4(net.addressing.gateway), mgr.cfg.dns_port);
                    // A failure here is reported on the next ensure_network.
                    let _ = mgr.dns.listen(&net.name, addr);
                }
                st.networks.insert(net.name.clone(), net);
            }
            let mut records = mgr.dns.records().write().unwrap_or_else(|p| p.into_inner());
            for c in containers {
                for ep in &c.endpoints {
                    records.insert(ep.clone());
                }
                st.containers.insert(c.id.clone(), c);
            }
        }
        Ok(mgr)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, kind: &str) -> PathBuf {
        self.cfg.state_dir.join("network").join(kind)
    }

    fn network_file(&self, bridge: &str) -> PathBuf {
        self.dir("networks").join(format!("{bridge}.json"))
    }

    fn container_file(&self, id: &str) -> PathBuf {
        self.dir("containers").join(format!("{id}.json"))
    }

    /// The configuration this manager runs with.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

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
            Some(existing)
                if existing.internal != req.internal || existing.requested != req.ipam =>
            {
                Err(NetError::NetworkChanged {
                    network: req.name.clone(),
                })
            }
            Some(existing) if st.ready.contains(&req.name) => Ok(Some(existing.clone())),
            _ => Ok(None),
        }
    }

    fn make_network(&self, req: &NetworkRequest) -> Result<NetworkInfo, NetError> {
        let mut st = self.lock();
        let requested = req.ipam.clone();
        let info = match st.networks.get(&req.name) {
            Some(existing) => {
                if existing.internal != req.internal || existing.requested != requested {
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
                let info = NetworkInfo {
                    name: req.name.clone(),
                    project: req.project.clone(),
                    bridge: names::bridge(&self.cfg.prefix, &req.name),
                    addressing,
                    internal: req.internal,
                    reserved,
                    requested,
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
        )?;
        if !info.internal {
            // NAT for outbound traffic needs forwarding on, as Docker sets it.
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        }
        self.firewall.apply(&network_script(&NetworkRules {
            prefix: &self.cfg.prefix,
            bridge: &info.bridge,
            subnet: info.addressing.subnet,
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
            interfaces.push(Interface {
                network: name.clone(),
                ifname: format!("eth{i}"),
                host_veth: names::veth_host(&self.cfg.prefix, &req.container_id, name),
                address,
                prefix_len: net.addressing.subnet.prefix_len(),
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
        let route_via = nets.iter().position(|n| !n.internal);
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
                address: itf.address,
                prefix_len: itf.prefix_len,
                default_via: (route_via == Some(i)).then_some(net.addressing.gateway),
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
        // A ports table exists only while ports are published (publish and unpublish
        // keep the record in step); running `nft` costs a process.
        if !record.published.is_empty() {
            self.firewall
                .delete_table(&names::ports_table(&self.cfg.prefix, id))?;
        }
        st.reservations.remove(id);
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

    /// Marks a container healthy (it answers for its service name and aliases) or not.
    /// Takes effect for the next DNS query. False if the container is unknown.
    pub fn set_healthy(&self, container_id: &str, healthy: bool) -> bool {
        self.dns
            .records()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_healthy(container_id, healthy)
    }

    /// Publishes a container's `ports:` (`service` names it in errors): host ports are
    /// reserved, then DNAT'd to the container's first address on a non-internal network. Replaces what was
    /// published before for this container. Reservations are sockets of this process:
    /// a restarted daemon calls `publish` again for its live containers (after `gc`).
    pub fn publish(
        &self,
        container_id: &str,
        service: &str,
        ports: &[Port],
    ) -> Result<Vec<Published>, NetError> {
        let mut st = self.lock();
        let record = st
            .containers
            .get(container_id)
            .cloned()
            .ok_or_else(|| NetError::NotAttached(container_id.to_string()))?;
        if record.interfaces.is_empty() {
            return Err(NetError::NoInterface(container_id.to_string()));
        }
        // The first address on a network that is not internal: an internal network is
        // reachable from nothing outside, so a container only on internal networks is
        // published nowhere (as with Docker). The IPv6 relay connects from the host
        // itself, past the internal network's forward rules, so this must be decided
        // here and not left to the firewall.
        let ip = record
            .interfaces
            .iter()
            .find(|i| st.networks.get(&i.network).is_some_and(|n| !n.internal))
            .map(|i| i.address);
        st.reservations.remove(container_id);
        let held = match ip {
            Some(ip) => ports::reserve(service, ports, ip)?,
            None => Vec::new(),
        };
        let published: Vec<Published> = held.iter().map(|r| r.published.clone()).collect();
        let rules: Vec<_> = published.iter().filter_map(Published::rule).collect();
        let table = names::ports_table(&self.cfg.prefix, container_id);
        let mut updated = record;
        updated.published = published.clone();
        write_json(&self.container_file(container_id), &updated)?;
        st.containers.insert(container_id.to_string(), updated);
        if rules.is_empty() {
            self.firewall.delete_table(&table)?;
        } else {
            self.firewall
                .apply(&ports_script(&table, &self.cfg.prefix, &rules))?;
        }
        st.reservations.insert(container_id.to_string(), held);
        Ok(published)
    }

    /// What is published for a container now (empty if nothing, or not attached).
    pub fn published(&self, container_id: &str) -> Vec<Published> {
        self.lock()
            .containers
            .get(container_id)
            .map(|r| r.published.clone())
            .unwrap_or_default()
    }

    /// Removes what [`publish`](Self::publish) set up for a container.
    pub fn unpublish(&self, container_id: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        self.firewall
            .delete_table(&names::ports_table(&self.cfg.prefix, container_id))?;
        st.reservations.remove(container_id);
        if let Some(mut record) = st.containers.get(container_id).cloned() {
            record.published.clear();
            write_json(&self.container_file(container_id), &record)?;
            st.containers.insert(container_id.to_string(), record);
        }
        Ok(())
    }

    /// Removes every object of this prefix that the caller does not list as live:
    /// container attachments (namespaces, veths, port tables), networks (bridges,
    /// tables), and any prefixed link, table or namespace file with no record at all
    /// (left by a crash between making it and recording it, or by a lost state dir).
    pub fn gc(
        &self,
        live_networks: &[&str],
        live_containers: &[&str],
    ) -> Result<GcReport, NetError> {
        let mut report = GcReport::default();
        let dead: Vec<String> = {
            let st = self.lock();
            st.containers
                .keys()
                .filter(|id| !live_containers.contains(&id.as_str()))
                .cloned()
                .collect()
        };
        for id in dead {
            self.detach(&id)?;
            report.containers.push(id);
        }
        let dead_nets: Vec<String> = self
            .networks()
            .into_iter()
            .map(|n| n.name)
            .filter(|n| !live_networks.contains(&n.as_str()))
            .collect();
        for net in dead_nets {
            // A network still used by a live container stays (and is reported by
            // remove_network's error if the caller asks for it explicitly).
            if self.remove_network(&net).is_ok() {
                report.networks.push(net);
            }
        }
        let st = self.lock();
        let prefix = &self.cfg.prefix;
        let mut keep_links = BTreeSet::new();
        let mut keep_tables = BTreeSet::new();
        let mut keep_netns = BTreeSet::new();
        for n in st.networks.values() {
            keep_links.insert(n.bridge.clone());
            keep_tables.insert(n.bridge.clone());
        }
        for c in st.containers.values() {
            keep_netns.insert(c.netns.clone());
            keep_tables.insert(names::ports_table(prefix, &c.id));
            for itf in &c.interfaces {
                keep_links.insert(itf.host_veth.clone());
            }
        }
        drop(st);
        let ours = |name: &str| {
            name.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                rest.len() == 7
                    && rest.starts_with(['b', 'v', 'n'])
                    && rest[1..].chars().all(|c| c.is_ascii_hexdigit())
            })
        };
        for link in self.links.link_names()? {
            if ours(&link) && !keep_links.contains(&link) {
                self.links.delete_link(&link)?;
                report.links.push(link);
            }
        }
        for table in self.firewall.tables()? {
            if ours(&table) && !keep_tables.contains(&table) {
                self.firewall.delete_table(&table)?;
                report.tables.push(table);
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.cfg.netns_dir) {
            let start = format!("{prefix}-");
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&start) && !keep_netns.contains(&path) {
                    self.links.delete_netns(&path)?;
                    report.netns.push(path);
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    //! The manager's bookkeeping over fake kernel seams: what it asks the kernel for,
    //! what it records, and what it refuses. The real kernel is tested in
    //! `agent/tests/network.rs`.

    use super::*;
    use crate::ipam::Subnet;
    use std::sync::Arc;

    #[derive(Debug, Default)]
    struct Kernel {
        links: BTreeSet<String>,
        netns: BTreeSet<PathBuf>,
        /// The host ends of the veths made with each namespace: the kernel destroys
        /// them with it.
        netns_links: BTreeMap<PathBuf, Vec<String>>,
        plans: Vec<VethPlan>,
        tables: BTreeMap<String, String>,
        /// Scripts applied, of any kind.
        applied: usize,
        bridges_created: usize,
        fail_netns: bool,
    }

    #[derive(Debug, Clone, Default)]
    struct Fake(Arc<Mutex<Kernel>>);

    impl Fake {
        fn k(&self) -> MutexGuard<'_, Kernel> {
            self.0.lock().expect("fake kernel lock")
        }
    }

    impl Links for Fake {
        fn ensure_bridge(&self, name: &str, _: Ipv4Addr, _: u8) -> Result<(), LinkError> {
            let mut k = self.k();
            if k.links.insert(name.to_string()) {
                k.bridges_created += 1;
            }
            Ok(())
        }
        fn delete_link(&self, name: &str) -> Result<(), LinkError> {
            self.k().links.remove(name);
            Ok(())
        }
        fn link_names(&self) -> Result<Vec<String>, LinkError> {
            Ok(self.k().links.iter().cloned().collect())
        }
        fn host_routes(&self) -> Result<Vec<Subnet>, LinkError> {
            Ok(vec!["0.0.0.0/0".parse().expect("route")])
        }
        fn create_netns(&self, path: &Path, veths: &[VethPlan]) -> Result<(), LinkError> {
            let mut k = self.k();
            if k.fail_netns {
                return Err(LinkError::new(
                    "create netns",
                    path.display(),
                    "injected failure",
                ));
            }
            k.netns.insert(path.to_path_buf());
            for v in veths {
                k.links.insert(v.host.clone());
                k.plans.push(v.clone());
                k.netns_links
                    .entry(path.to_path_buf())
                    .or_default()
                    .push(v.host.clone());
            }
            Ok(())
        }
        fn delete_netns(&self, path: &Path) -> Result<(), LinkError> {
            let mut k = self.k();
            k.netns.remove(path);
            for link in k.netns_links.remove(path).unwrap_or_default() {
                k.links.remove(&link);
            }
            Ok(())
        }
    }

    impl Firewall for Fake {
        fn apply(&self, script: &str) -> Result<(), FirewallError> {
            // Scripts start with "add table ip NAME"; the last table statement wins.
            let name = script
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("add table ip "))
                .unwrap_or("?")
                .to_string();
            self.k().applied += 1;
            if script.contains(&format!("delete table ip {name}\n")) && !script.contains('{') {
                self.k().tables.remove(&name);
            } else {
                self.k().tables.insert(name, script.to_string());
            }
            Ok(())
        }
        fn tables(&self) -> Result<Vec<String>, FirewallError> {
            Ok(self.k().tables.keys().cloned().collect())
        }
    }

    fn open(state: &Path, fake: &Fake) -> NetworkManager {
        let mut cfg = NetConfig::new(state);
        cfg.prefix = "fk".into();
        cfg.netns_dir = state.join("netns");
        // Loopback addresses, so the DNS server can really bind its gateways.
        cfg.pool = Pool {
            ranges: vec![Subnet::new(Ipv4Addr::new(127, 66, 0, 0), 16)],
            len: 24,
        };
        cfg.dns_port = 0;
        cfg.upstream = Some(Vec::new());
        NetworkManager::with_kernel(cfg, Box::new(fake.clone()), Box::new(fake.clone()))
            .expect("open manager")
    }

    fn net(name: &str, internal: bool) -> NetworkRequest {
        NetworkRequest {
            name: name.into(),
            project: "p".into(),
            internal,
            ipam: None,
        }
    }

    fn attach_req(id: &str, nets: &[(&str, Option<&str>)]) -> AttachRequest {
        AttachRequest {
            container_id: id.into(),
            container_name: format!("p-{id}"),
            project: "p".into(),
            service: "web".into(),
            networks: nets
                .iter()
                .map(|(n, ip)| {
                    (
                        n.to_string(),
                        ServiceNetwork {
                            ipv4_address: ip.map(String::from),
                            ..ServiceNetwork::default()
                        },
                    )
                })
                .collect(),
            healthy: true,
            ..AttachRequest::default()
        }
    }

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
    fn ports_go_to_the_first_address_outside_internal_networks() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let m = open(dir.path(), &fake);
        m.ensure_network(&net("p_private", true)).unwrap();
        m.ensure_network(&net("p_front", false)).unwrap();
        m.attach(&attach_req(
            "both",
            &[("p_private", None), ("p_front", Some("127.66.1.9"))],
        ))
        .unwrap();
        m.attach(&attach_req("inside", &[("p_private", None)]))
            .unwrap();
        let port = spec::model::Port {
            name: None,
            target: 80,
            published: None,
            host_ip: Some("127.0.0.1".into()),
            protocol: spec::model::Protocol::Tcp,
            mode: spec::model::PortMode::Ingress,
            app_protocol: None,
        };
        let p = m
            .publish("both", "web", std::slice::from_ref(&port))
            .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].container_ip, Ipv4Addr::new(127, 66, 1, 9));
        // Only on an internal network: published nowhere, no relay nor rule for it.
        assert!(m.publish("inside", "web", &[port]).unwrap().is_empty());
        assert!(m.published("inside").is_empty());
    }

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
    fn a_reopened_manager_knows_its_objects_and_gc_keeps_only_the_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        {
            let m = open(dir.path(), &fake);
            m.ensure_network(&net("p_a", false)).unwrap();
            m.ensure_network(&net("p_b", false)).unwrap();
            m.attach(&attach_req("keep", &[("p_a", None)])).unwrap();
            m.attach(&attach_req("drop", &[("p_b", None)])).unwrap();
        }
        // Objects nobody recorded, and one of another prefix that must stay.
        fake.k().links.extend([
            "fkb123456".to_string(),
            "fkv00ff00".to_string(),
            "eth0".to_string(),
            "fkbzzzzzz".to_string(),
        ]);
        fake.k()
            .tables
            .insert("fkn abcdef".replace(' ', ""), String::new());
        fake.k().tables.insert("otherb123456".into(), String::new());
        let m = open(dir.path(), &fake);
        assert_eq!(m.networks().len(), 2);
        let report = m.gc(&["p_a"], &["keep"]).unwrap();
        assert_eq!(report.containers, ["drop"]);
        assert_eq!(report.networks, ["p_b"]);
        assert_eq!(report.links, ["fkb123456", "fkv00ff00"]);
        assert_eq!(report.tables, ["fknabcdef"]);
        let k = fake.k();
        assert!(k.links.contains("eth0") && k.links.contains("fkbzzzzzz"));
        assert!(k.tables.contains_key("otherb123456"));
        assert_eq!(k.netns.len(), 1);
    }
}

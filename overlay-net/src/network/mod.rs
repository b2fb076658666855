//! [`NetworkManager`]: one node's networks, container attachments, DNS records and
//! published ports, recorded under `<state>/network/` so a restarted daemon knows
//! what exists and [`NetworkManager::gc`] can remove what a crash left behind.
//!
//! Order of work, so a crash at any point leaves something `gc` can find: the record
//! is written before the kernel objects are made, and removed after they are gone.
//! Every kernel object's name starts with the configured prefix.
//!
//! One file per concept, each adding its `impl NetworkManager` block:
//! - this file: the manager itself (its configuration, its errors, its lock, opening
//!   it on an earlier run's records);
//! - `records.rs`: the on-disk state (file layout, JSON writes, reading it back);
//! - `networks.rs`: a network's bridge, subnet, nft table and DNS listener;
//! - `attachments.rs`: a container's namespace, veths, addresses, DNS records, health;
//! - `published.rs`: published ports (host ports held once, shared by a service's
//!   replicas, each with its DNAT table spreading over the serving containers);
//! - `gc.rs`: removing what a crash or a lost state dir left behind.
//!
//! The WireGuard mesh of a later issue lives beside this module (`crate::mesh`, not
//! created yet); a cluster network will ask it for this node's slice and its peers
//! from `networks.rs`.

mod attachments;
mod gc;
mod networks;
mod published;
mod records;

#[cfg(test)]
mod fake;

pub use attachments::{AttachRequest, Attachment, Interface};
pub use gc::GcReport;
pub use networks::{NetworkInfo, NetworkRequest};

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use crate::dns::DnsServer;
use crate::firewall::{Firewall, FirewallError, NftCli};
use crate::ipam::{IpamError, Pool};
use crate::kernel::{LinkError, Links, Rtnetlink};
use crate::names;
use crate::port_groups::Groups;
use crate::ports::{HostPort, PublishError};
use crate::resolv::ResolvError;
use attachments::ContainerRecord;
use records::read_dir_json;

/// Everything that can go wrong in the manager.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Prefix(#[from] names::BadPrefix),
    /// Boxed: the IPv6 variants made it the largest, and every result carries it.
    #[error(transparent)]
    Ipam(Box<IpamError>),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    /// Boxed: with the holder's name it is the largest, and every result carries it.
    #[error(transparent)]
    Publish(Box<PublishError>),
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

impl From<IpamError> for NetError {
    fn from(e: IpamError) -> NetError {
        NetError::Ipam(Box::new(e))
    }
}

impl From<PublishError> for NetError {
    fn from(e: PublishError) -> NetError {
        NetError::Publish(Box::new(e))
    }
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

/// What the manager knows, under its one lock: the records of its networks and
/// attachments (as on disk), and what only this process holds.
#[derive(Debug, Default)]
struct State {
    networks: BTreeMap<String, NetworkInfo>,
    containers: BTreeMap<String, ContainerRecord>,
    /// The host ports this process holds, and the containers behind each.
    ports: Groups<HostPort>,
    /// Containers leaving before their stop ([`NetworkManager::leave`]): out of their
    /// services' DNS answers and port backends until detached, whatever their health.
    leaving: BTreeSet<String>,
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

    /// The configuration this manager runs with.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }
}

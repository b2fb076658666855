//! The manager's bookkeeping over fake kernel seams: what it asks the kernel for,
//! what it records, and what it refuses. The real kernel is tested in
//! `agent/tests/network.rs`. This module holds the fakes and helpers; the tests sit
//! next to the code they test, in each concept's file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use spec::model::ServiceNetwork;

use super::{AttachRequest, NetConfig, NetworkManager, NetworkRequest};
use crate::firewall::{Firewall, FirewallError};
use crate::ipam::{Pool, Subnet};
use crate::kernel::{LinkError, Links, VethPlan};

#[derive(Debug, Default)]
pub(super) struct Kernel {
    pub(super) links: BTreeSet<String>,
    pub(super) netns: BTreeSet<PathBuf>,
    /// The host ends of the veths made with each namespace: the kernel destroys
    /// them with it.
    pub(super) netns_links: BTreeMap<PathBuf, Vec<String>>,
    pub(super) plans: Vec<VethPlan>,
    pub(super) tables: BTreeMap<String, String>,
    /// Scripts applied, of any kind.
    pub(super) applied: usize,
    pub(super) bridges_created: usize,
    pub(super) fail_netns: bool,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Fake(pub(super) Arc<Mutex<Kernel>>);

impl Fake {
    pub(super) fn k(&self) -> MutexGuard<'_, Kernel> {
        self.0.lock().expect("fake kernel lock")
    }
}

impl Links for Fake {
    fn ensure_bridge(
        &self,
        name: &str,
        _: Ipv4Addr,
        _: u8,
        _: Option<(std::net::Ipv6Addr, u8)>,
    ) -> Result<(), LinkError> {
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
    fn host_routes6(&self) -> Result<Vec<crate::ipam6::Subnet6>, LinkError> {
        Ok(vec!["::/0".parse().expect("route")])
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

pub(super) fn open(state: &Path, fake: &Fake) -> NetworkManager {
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

pub(super) fn net(name: &str, internal: bool) -> NetworkRequest {
    NetworkRequest {
        name: name.into(),
        project: "p".into(),
        internal,
        ipam: None,
        enable_ipv6: false,
        ipam6: None,
    }
}

/// An `enable_ipv6` network with the default (ULA) IPv6 subnet.
pub(super) fn net6(name: &str, internal: bool) -> NetworkRequest {
    NetworkRequest {
        enable_ipv6: true,
        ..net(name, internal)
    }
}

pub(super) fn attach_req(id: &str, nets: &[(&str, Option<&str>)]) -> AttachRequest {
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

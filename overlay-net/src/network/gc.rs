//! Garbage collection: removes every object of the manager's prefix that is not
//! live, by record (attachments, networks) and by name (links, tables and namespace
//! files that have no record).

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{NetError, NetworkManager};
use crate::names;

/// What [`NetworkManager::gc`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub links: Vec<String>,
    pub tables: Vec<String>,
    pub netns: Vec<PathBuf>,
}

impl NetworkManager {
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
            // Its host ports' tables, as they were published: a restarted daemon
            // publishes them again over these (replacing each table in one
            // transaction), so published ports keep working across the restart.
            for p in &c.published {
                let v4 = match p.host_ip {
                    None => None,
                    Some(std::net::IpAddr::V4(a)) => Some(a),
                    // A port on one IPv6 address only has tables of its own (`ip6`
                    // DNAT); keeping a name that does not exist is harmless.
                    Some(std::net::IpAddr::V6(a)) => {
                        keep_tables.insert(names::port_table6(prefix, &p.proto, a, p.host_port));
                        continue;
                    }
                };
                keep_tables.insert(names::port_table(prefix, &p.proto, v4, p.host_port));
            }
            for itf in &c.interfaces {
                keep_links.insert(itf.host_veth.clone());
            }
        }
        drop(st);
        let ours = |name: &str| {
            name.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                rest.len() == 7
                    // `n`: a container's own ports table, from before ports were shared.
                    && rest.starts_with(['b', 'v', 'n', 'p'])
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
    use crate::network::fake::*;

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

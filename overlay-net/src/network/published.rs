//! Published ports of an attached container: the glue between its record and
//! `ports` (host port reservations held by this process) and `firewall` (its DNAT
//! table).

use spec::model::Port;

use super::records::write_json;
use super::{NetError, NetworkManager};
use crate::firewall::ports_script;
use crate::names;
use crate::ports::{self, Published};

impl NetworkManager {
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
}

#[cfg(test)]
mod tests {
    use crate::network::fake::*;
    use std::net::Ipv4Addr;

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
}

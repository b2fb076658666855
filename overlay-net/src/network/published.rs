//! Published ports of an attached container: the glue between its record,
//! `port_groups` (which containers are behind each host port, and which of them are
//! serving), `ports` (the host ports held by this process) and `firewall` (each host
//! port's DNAT table).
//!
//! Replicas of one service publishing the same host port share it: the port is held
//! once, while any of them is behind it, and its DNAT rule (and IPv6 relay) spreads new
//! connections over those serving: healthy ([`NetworkManager::set_healthy`]) and not
//! leaving ([`NetworkManager::leave`]).

use std::net::{SocketAddrV4, SocketAddrV6};

use nix::errno::Errno;
use spec::model::Port;

use super::records::write_json;
use super::{NetError, NetworkManager, State};
use crate::firewall::ports_script;
use crate::port_groups::{Claim, PortKey, Sharing};
use crate::ports::{self, HoldError, Published};

impl NetworkManager {
    /// Publishes a container's `ports:` (`service` names it in errors and, with its
    /// stack, says which containers may share a host port): host ports are held (or
    /// joined, when a replica of the same service holds them), then DNAT'd to the
    /// container's first address on a non-internal network, once it serves. Replaces
    /// what was published before for this container. All or nothing. Holds are
    /// sockets of this process: a restarted daemon calls `publish` again for its live
    /// containers (after `gc`).
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
        // Its IPv6 address on that network, if the network has IPv6: the IPv6 side is
        // then DNAT'd to it rather than relayed to the IPv4 address.
        let ip = record
            .interfaces
            .iter()
            .find(|i| st.networks.get(&i.network).is_some_and(|n| !n.internal))
            .map(|i| (i.address, i.address6));
        self.leave_ports(&mut st, container_id)?;
        let project = record
            .endpoints
            .first()
            .map(|e| e.project.clone())
            .unwrap_or_default();
        let serving = self.serving(&st, container_id);
        let mut published = Vec::new();
        if let Some((ip, ip6)) = ip {
            for port in ports {
                let one = self.publish_one(
                    &mut st,
                    container_id,
                    &project,
                    service,
                    port,
                    (
                        SocketAddrV4::new(ip, port.target),
                        ip6.map(|a| SocketAddrV6::new(a, port.target, 0, 0)),
                    ),
                    serving,
                );
                match one {
                    Ok(p) => published.extend(p),
                    Err(e) => {
                        // All or nothing: the ports it got so far go (or lose it).
                        let _ = self.leave_ports(&mut st, container_id);
                        return Err(e);
                    }
                }
            }
        }
        let mut updated = record;
        updated.published = published.clone();
        if let Err(e) = write_json(&self.container_file(container_id), &updated) {
            let _ = self.leave_ports(&mut st, container_id);
            return Err(e);
        }
        st.containers.insert(container_id.to_string(), updated);
        Ok(published)
    }

    /// One entry of `ports:`: the host port held or joined, its rule applied.
    #[allow(clippy::too_many_arguments)]
    fn publish_one(
        &self,
        st: &mut State,
        id: &str,
        project: &str,
        service: &str,
        port: &Port,
        (backend, backend6): (SocketAddrV4, Option<SocketAddrV6>),
        serving: bool,
    ) -> Result<Vec<Published>, NetError> {
        let w = ports::wanted(service, port)?;
        let holder = format!("service {service} of stack {project}");
        let key = match (w.shared, w.range) {
            (true, Some((number, _))) => {
                let key = PortKey {
                    proto: w.proto,
                    host: w.host,
                    port: number,
                };
                let sharing = Sharing::Service {
                    project: project.to_string(),
                    service: service.to_ascii_lowercase(),
                };
                match st.ports.claim(&key, &sharing, id) {
                    Claim::Join => key,
                    Claim::Taken { holder } => {
                        let e = Some(HoldError::Sys(Errno::EADDRINUSE));
                        return Err(ports::hold_error(service, port, &w, e, Some(holder)).into());
                    }
                    Claim::Free => {
                        let held = ports::hold_wanted(service, port, &w, |_| None)?;
                        st.ports.insert(key, sharing, holder, held);
                        key
                    }
                }
            }
            // A range, an ephemeral port or `mode: host`: the container's alone.
            _ => {
                let held = ports::hold_wanted(service, port, &w, |number| {
                    let key = PortKey {
                        proto: w.proto,
                        host: w.host,
                        port: number,
                    };
                    match st.ports.claim(&key, &Sharing::Exclusive, id) {
                        Claim::Taken { holder } => Some(holder),
                        _ => None,
                    }
                })?;
                let key = PortKey {
                    proto: w.proto,
                    host: w.host,
                    port: held.port,
                };
                st.ports.insert(key, Sharing::Exclusive, holder, held);
                key
            }
        };
        st.ports.join_dual(&key, id, backend, backend6, serving);
        self.apply_port(st, &key)?;
        Ok(st
            .ports
            .get(&key)
            .map(|g| g.hold.published(w.proto, backend))
            .unwrap_or_default())
    }

    /// Makes a host port's DNAT table and relay match its members now.
    pub(super) fn apply_port(&self, st: &State, key: &PortKey) -> Result<(), NetError> {
        let Some(g) = st.ports.get(key) else {
            return Ok(());
        };
        g.hold.relay.set(g.relay_backends());
        let v4 = (g.backends(), g.members());
        let v6 = (g.backends6(), g.members6());
        if let Some(rule) = g.hold.rule(key.proto, v4, v6) {
            let table = g.hold.table(&self.cfg.prefix, key.proto);
            self.firewall
                .apply(&ports_script(&table, &self.cfg.prefix, &rule))?;
        }
        Ok(())
    }

    /// Takes a container from behind every host port it is behind: the others' rules
    /// change, and a port it was the last one behind is released (table, then hold).
    pub(super) fn leave_ports(&self, st: &mut State, id: &str) -> Result<(), NetError> {
        let left = st.ports.leave(id);
        let mut result = Ok(());
        for (key, hold) in left.released {
            if hold.v4.is_some() || hold.v6.is_some() {
                let table = hold.table(&self.cfg.prefix, key.proto);
                if let Err(e) = self.firewall.delete_table(&table) {
                    result = result.and(Err(e.into()));
                }
            }
            drop(hold);
        }
        for key in left.changed {
            if let Err(e) = self.apply_port(st, &key) {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Whether a container gets new connections and answers for its service: healthy
    /// (or without a check) and not leaving.
    pub(super) fn serving(&self, st: &State, id: &str) -> bool {
        !st.leaving.contains(id)
            && self
                .dns
                .records()
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_healthy(id)
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
        self.leave_ports(&mut st, container_id)?;
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
    use crate::network::AttachRequest;
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

    fn one_port(published: u16) -> spec::model::Port {
        spec::model::Port {
            name: None,
            target: 80,
            published: Some(spec::model::PortRange::single(published)),
            host_ip: Some("127.0.0.1".into()),
            protocol: spec::model::Protocol::Tcp,
            mode: spec::model::PortMode::Ingress,
            app_protocol: None,
        }
    }

    #[test]
    fn replicas_share_one_table_that_follows_health_leaving_and_the_last_detach() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let m = open(dir.path(), &fake);
        m.ensure_network(&net("p_front", false)).unwrap();
        let number = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let port = one_port(number);
        for id in ["web-1", "web-2"] {
            m.attach(&attach_req(id, &[("p_front", None)])).unwrap();
            m.publish(id, "web", std::slice::from_ref(&port)).unwrap();
        }
        let table = crate::names::port_table("fk", "tcp", Some(Ipv4Addr::LOCALHOST), number);
        let script = || fake.k().tables.get(&table).cloned().unwrap_or_default();
        assert!(script().contains("numgen inc mod 2"), "{}", script());
        // Another service of the same stack: refused, naming the holder.
        m.attach(&AttachRequest {
            service: "api".into(),
            ..attach_req("api-1", &[("p_front", None)])
        })
        .unwrap();
        let e = m
            .publish("api-1", "api", std::slice::from_ref(&port))
            .unwrap_err();
        assert!(
            e.to_string().contains("in use by service web of stack p"),
            "{e}"
        );
        // Unhealthy, then leaving: out of the DNAT (a plain rule to the other one);
        // health no longer brings a leaving container back.
        assert!(m.set_healthy("web-1", false).unwrap());
        assert!(
            !script().contains("numgen") && script().contains("dnat to"),
            "{}",
            script()
        );
        assert!(m.set_healthy("web-1", true).unwrap());
        assert!(script().contains("numgen inc mod 2"));
        m.leave("web-1").unwrap();
        m.set_healthy("web-1", true).unwrap();
        assert!(!script().contains("numgen"), "{}", script());
        // Held once, until the last member goes.
        m.detach("web-1").unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", number)).is_err());
        assert!(fake.k().tables.contains_key(&table));
        m.detach("web-2").unwrap();
        assert!(!fake.k().tables.contains_key(&table));
        std::net::TcpListener::bind(("127.0.0.1", number)).expect("released");
    }

    #[test]
    fn ipv6_containers_get_an_ip6_dnat_table_and_the_relay_their_ipv6_address() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let m = open(dir.path(), &fake);
        let front = m.ensure_network(&net6("p_front", false)).unwrap();
        let a6 = front.addressing6.unwrap();
        let number = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let port = spec::model::Port {
            host_ip: None,
            ..one_port(number)
        };
        m.attach(&attach_req("web-1", &[("p_front", None)]))
            .unwrap();
        let published = m
            .publish("web-1", "web", std::slice::from_ref(&port))
            .unwrap();
        let table = crate::names::port_table("fk", "tcp", None, number);
        let script = fake.k().tables.get(&table).cloned().unwrap_or_default();
        let ip6 = a6.subnet.nth(2).unwrap();
        assert!(
            script.contains(&format!("tcp dport {number} dnat to [{ip6}]:80")),
            "{script}"
        );
        assert!(
            script.contains(&format!("tcp dport {number} dnat to 127.66.0.2:80")),
            "{script}"
        );
        // Where the host has IPv6, the relay (for ::1) sends to the IPv6 address.
        let key = crate::port_groups::PortKey {
            proto: "tcp",
            host: crate::ports::HostIp::Any,
            port: number,
        };
        let st = m.lock();
        let g = st.ports.get(&key).expect("held");
        if g.hold.v6.is_some() {
            assert_eq!(published.len(), 2);
            assert_eq!(
                g.relay_backends(),
                vec![std::net::SocketAddr::new(ip6.into(), 80)]
            );
        }
        drop(st);
        m.detach("web-1").unwrap();
        assert!(!fake.k().tables.contains_key(&table));
    }
}

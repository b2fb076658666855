//! The records the DNS unit tests answer from: service `web` (two healthy members,
//! one not) on network `front`, service `db` on `back`, all of project `shop`.

use std::net::Ipv4Addr;

use super::{Endpoint, Records};

fn ep(container: &str, network: &str, ip: u8, service: &str, healthy: bool) -> Endpoint {
    Endpoint {
        container: container.into(),
        network: network.into(),
        ip: Ipv4Addr::new(10, 0, 0, ip),
        ip6: None,
        project: "shop".into(),
        service: service.into(),
        names: vec![container.into(), format!("{container}-host")],
        aliases: vec![format!("{service}-alias")],
        healthy,
        upstream: vec![],
        links: vec![],
    }
}

pub(super) fn records() -> Records {
    let mut r = Records::default();
    r.insert(ep("web-1", "front", 2, "web", true));
    r.insert(ep("web-2", "front", 3, "web", true));
    r.insert(ep("web-3", "front", 4, "web", false));
    r.insert(ep("db-1", "back", 2, "db", true));
    r
}

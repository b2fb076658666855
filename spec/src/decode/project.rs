//! Decoding the top level of a Compose file: services, networks, volumes, secrets, configs.

use std::collections::BTreeMap;

use serde_norway::Value;

use super::service::decode_service;
use super::{Cx, MapReader, Node};
use crate::diag::join;
use crate::model::*;

/// Decodes a whole file (or the merged files). `name:` is only checked here: the loader
/// reads the project name before interpolation.
pub(crate) fn decode_project(cx: &mut Cx, root: &Value) -> Option<Stack> {
    let mut m = cx.map(Node {
        value: root,
        path: "",
    })?;
    // compose-go refuses a name that YAML reads as a number (`name: 123`): quoted, it is
    // a string and fine.
    m.get(cx, "name", |cx, n| match n.v() {
        Value::String(s) => Some(s.clone()),
        _ => {
            cx.error(n.path, "the project name must be a string; quote it");
            None
        }
    });
    if m.has("version") {
        m.take("version");
        cx.warn(
            "version",
            "the attribute is obsolete and ignored; remove it to avoid confusion",
        );
    }
    // Resolved by the loader before decoding.
    m.take("include");

    let mut stack = Stack {
        name: String::new(),
        services: named(cx, &mut m, "services", decode_service),
        networks: named(cx, &mut m, "networks", network),
        volumes: named(cx, &mut m, "volumes", volume),
        secrets: named(cx, &mut m, "secrets", |cx, n| file_object(cx, n, true)),
        configs: named(cx, &mut m, "configs", |cx, n| file_object(cx, n, false)),
        extensions: BTreeMap::new(),
    };
    for (k, v) in m.extensions() {
        stack.extensions.insert(k, v);
    }
    m.finish(cx);
    Some(stack)
}

/// A mapping of name -> object (`services:`, `networks:` ...), each decoded by `f`.
/// Extension keys (`x-*`) at this level are allowed and skipped, as Compose does.
fn named<T>(
    cx: &mut Cx,
    m: &mut MapReader,
    key: &'static str,
    mut f: impl FnMut(&mut Cx, Node) -> Option<T>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Some(value) = m.take(key) else { return out };
    let path = key.to_string();
    let Some(mut entries) = cx.map(Node { value, path: &path }) else {
        return out;
    };
    entries.ignore_extensions(cx);
    for (name, value) in entries.drain() {
        let item_path = join(&path, &name);
        if let Err(e) = resource_name(&name) {
            cx.error(&item_path, e);
            continue;
        }
        if let Some(t) = f(
            cx,
            Node {
                value,
                path: &item_path,
            },
        ) {
            out.insert(name, t);
        }
    }
    out
}

/// Keys of services, networks, volumes... must be usable in names of host objects.
fn resource_name(name: &str) -> Result<(), String> {
    crate::names::check_resource_name(name)
}

fn string_map(cx: &mut Cx, n: Node) -> BTreeMap<String, String> {
    cx.list_or_map(n)
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect()
}

/// `external: true` or the legacy `external: {name: x}`; returns (external, legacy name).
fn external(cx: &mut Cx, n: Node) -> Option<(bool, Option<String>)> {
    match n.v() {
        Value::Mapping(_) => {
            let mut m = cx.map(n)?;
            let name = m.get(cx, "name", |cx, n| cx.string(n));
            m.finish(cx);
            cx.warn(
                n.path,
                "external.name is deprecated; use name: with external: true",
            );
            Some((true, name))
        }
        _ => cx.bool(n).map(|b| (b, None)),
    }
}

fn network(cx: &mut Cx, n: Node) -> Option<Network> {
    let mut m = cx.map(n)?;
    let (external_, legacy_name) = m.get(cx, "external", external).unwrap_or((false, None));
    let mut net = Network {
        name: m
            .get(cx, "name", |cx, n| cx.string(n))
            .or(legacy_name)
            .unwrap_or_default(),
        driver: m.get(cx, "driver", |cx, n| cx.string(n)),
        driver_opts: m
            .get(cx, "driver_opts", |cx, n| Some(string_map(cx, n)))
            .unwrap_or_default(),
        internal: m.get(cx, "internal", |cx, n| cx.bool(n)).unwrap_or(false),
        external: external_,
        attachable: m.get(cx, "attachable", |cx, n| cx.bool(n)).unwrap_or(false),
        enable_ipv6: m
            .get(cx, "enable_ipv6", |cx, n| cx.bool(n))
            .unwrap_or(false),
        ipam: m.get(cx, "ipam", ipam),
        labels: m
            .get(cx, "labels", |cx, n| Some(string_map(cx, n)))
            .unwrap_or_default(),
        extensions: BTreeMap::new(),
    };
    if m.has("enable_ipv4") {
        m.take("enable_ipv4");
        cx.warn(
            &m.path_of("enable_ipv4"),
            "not supported by berth yet; ignored",
        );
    }
    if let Some(driver) = &net.driver {
        if !matches!(driver.as_str(), "bridge" | "overlay" | "default") {
            cx.warn(
                &m.path_of("driver"),
                format!("driver {driver:?} is not supported by berth; a bridge (one host) or the WireGuard overlay (a cluster) is used"),
            );
        }
    }
    net.extensions.extend(m.extensions());
    m.finish(cx);
    Some(net)
}

fn ipam(cx: &mut Cx, n: Node) -> Option<Ipam> {
    let mut m = cx.map(n)?;
    let ipam = Ipam {
        driver: m.get(cx, "driver", |cx, n| cx.string(n)),
        config: m
            .get(cx, "config", |cx, n| {
                Some(cx.each(n, |cx, n| {
                    let mut pm = cx.map(n)?;
                    let pool = IpamPool {
                        subnet: pm.get(cx, "subnet", |cx, n| cx.parsed(n, cidr)),
                        ip_range: pm.get(cx, "ip_range", |cx, n| cx.parsed(n, cidr)),
                        gateway: pm.get(cx, "gateway", |cx, n| cx.parsed(n, ip)),
                        aux_addresses: pm
                            .get(cx, "aux_addresses", |cx, n| Some(string_map(cx, n)))
                            .unwrap_or_default(),
                    };
                    pm.finish(cx);
                    if let (Some(subnet), Some(gw)) = (&pool.subnet, &pool.gateway) {
                        if !cidr_contains(subnet, gw) {
                            cx.error(
                                n.path,
                                format!("gateway {gw} is not inside subnet {subnet}"),
                            );
                        }
                    }
                    Some(pool)
                }))
            })
            .unwrap_or_default(),
        options: m
            .get(cx, "options", |cx, n| Some(string_map(cx, n)))
            .unwrap_or_default(),
    };
    m.finish(cx);
    Some(ipam)
}

fn ip(s: &str) -> Result<String, String> {
    s.parse::<std::net::IpAddr>()
        .map(|_| s.to_string())
        .map_err(|_| format!("invalid IP address {s:?}"))
}

/// Parses `10.1.0.0/16` or `fd00::/64` into (address, prefix length).
pub(crate) fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn cidr(s: &str) -> Result<String, String> {
    match parse_cidr(s) {
        Some(_) => Ok(s.to_string()),
        None => Err(format!(
            "invalid subnet {s:?}: expected CIDR notation like 10.10.0.0/24"
        )),
    }
}

/// Whether an address lies inside a CIDR subnet.
pub(crate) fn cidr_contains(subnet: &str, addr: &str) -> bool {
    let (Some((net, len)), Ok(addr)) = (parse_cidr(subnet), addr.parse::<std::net::IpAddr>())
    else {
        return false;
    };
    let (net, addr, bits) = match (net, addr) {
        (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
            (u128::from(u32::from(n)), u128::from(u32::from(a)), 32)
        }
        (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
        _ => return false,
    };
    let shift = bits - u32::from(len);
    if shift >= 128 {
        return true;
    }
    (net >> shift) == (addr >> shift)
}

fn volume(cx: &mut Cx, n: Node) -> Option<Volume> {
    let mut m = cx.map(n)?;
    let (external_, legacy_name) = m.get(cx, "external", external).unwrap_or((false, None));
    let mut v = Volume {
        name: m
            .get(cx, "name", |cx, n| cx.string(n))
            .or(legacy_name)
            .unwrap_or_default(),
        driver: m.get(cx, "driver", |cx, n| cx.string(n)),
        driver_opts: m
            .get(cx, "driver_opts", |cx, n| Some(string_map(cx, n)))
            .unwrap_or_default(),
        external: external_,
        labels: m
            .get(cx, "labels", |cx, n| Some(string_map(cx, n)))
            .unwrap_or_default(),
        extensions: BTreeMap::new(),
    };
    // An external volume is made outside the project: what would create it here has
    // nothing to act on. compose-go refuses it for volumes (networks may carry both).
    if v.external {
        for key in ["driver", "driver_opts", "labels"] {
            if m.has(key) {
                cx.error(
                    &m.path_of(key),
                    format!("conflicts with external: true (the volume is made outside the project); remove {key} or external"),
                );
            }
        }
    }
    if let Some(driver) = &v.driver {
        if driver != "local" {
            cx.warn(
                &m.path_of("driver"),
                format!(
                    "volume driver {driver:?} is not supported by berth; local volumes are used"
                ),
            );
        }
    }
    v.extensions.extend(m.extensions());
    m.finish(cx);
    Some(v)
}

/// A top-level secret (`secret == true`) or config.
fn file_object(cx: &mut Cx, n: Node, secret: bool) -> Option<FileObject> {
    let mut m = cx.map(n)?;
    let (external_, legacy_name) = m.get(cx, "external", external).unwrap_or((false, None));
    let mut o = FileObject {
        name: m
            .get(cx, "name", |cx, n| cx.string(n))
            .or(legacy_name)
            .unwrap_or_default(),
        file: m.get(cx, "file", |cx, n| cx.string(n)),
        environment: m.get(cx, "environment", |cx, n| cx.string(n)),
        content: if secret {
            None
        } else {
            m.get(cx, "content", |cx, n| cx.string(n))
        },
        external: external_,
        labels: m
            .get(cx, "labels", |cx, n| Some(string_map(cx, n)))
            .unwrap_or_default(),
        extensions: BTreeMap::new(),
    };
    for key in ["driver", "driver_opts", "template_driver"] {
        if m.has(key) {
            m.take(key);
            cx.warn(&m.path_of(key), "not supported by berth yet; ignored");
        }
    }
    o.extensions.extend(m.extensions());
    let what = if secret { "secret" } else { "config" };
    let sources = [
        o.file.is_some(),
        o.environment.is_some(),
        o.content.is_some(),
        o.external,
    ];
    match sources.iter().filter(|s| **s).count() {
        1 => {}
        0 if cx.fragment => {}
        0 if !m.has("content") => {
            let choices = if secret {
                "file, environment or external"
            } else {
                "file, environment, content or external"
            };
            cx.error(
                n.path,
                format!("a {what} needs exactly one source: {choices}"),
            );
        }
        0 => {}
        _ => cx.error(
            n.path,
            format!("a {what} must have only one of file, environment, content and external"),
        ),
    }
    if secret && m.has("content") {
        // Compose allows inline content only for configs: a secret in the file would be
        // a secret in version control.
        cx.error(
            &m.path_of("content"),
            "secrets cannot have inline content; use file or environment",
        );
        m.take("content");
    }
    if let Some(env) = &o.environment {
        // Only `up` needs the value; `config` may run where the secret is not set (in CI).
        if (cx.env)(env).is_none() {
            cx.warn(
                &m.path_of("environment"),
                format!("environment variable {env} is not set"),
            );
        }
    }
    m.finish(cx);
    Some(o)
}

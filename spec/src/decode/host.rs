//! Decoding of the service attributes that reach into the host or another container:
//! `devices`, `device_cgroup_rules`, `gpus`, device reservations, `blkio_config`,
//! `volumes_from`, `links`, `external_links`, `mac_address`, `cgroup_parent`,
//! `platform`, `storage_opt`, `label_file`.

use std::collections::BTreeMap;

use serde_norway::Value;

use super::{Cx, Node};
use crate::devices::{
    BlkioConfig, DeviceMapping, DeviceRequest, DeviceRule, ThrottleDevice, WeightDevice,
};

/// A `devices` entry: the short syntax, or `{source, target, permissions}`.
pub(super) fn device(cx: &mut Cx, n: Node) -> Option<DeviceMapping> {
    match n.v() {
        Value::Mapping(_) => {
            let mut m = cx.map(n)?;
            let source = m.get(cx, "source", |cx, n| cx.string(n));
            let target = m.get(cx, "target", |cx, n| cx.string(n));
            let permissions = m.get(cx, "permissions", |cx, n| cx.string(n));
            m.finish(cx);
            let Some(source) = source else {
                cx.error(
                    n.path,
                    "a device needs a source (the host path, or a CDI name)",
                );
                return None;
            };
            let d = DeviceMapping {
                target: target.unwrap_or_else(|| source.clone()),
                permissions: permissions.unwrap_or_else(|| "rwm".into()),
                source,
            };
            let d = if d.is_cdi() {
                DeviceMapping {
                    target: String::new(),
                    permissions: String::new(),
                    ..d
                }
            } else {
                d
            };
            match d.check() {
                Ok(()) => Some(d),
                Err(e) => {
                    cx.error(n.path, e);
                    None
                }
            }
        }
        _ => cx.parsed(n, DeviceMapping::parse),
    }
}

pub(super) fn device_rule(cx: &mut Cx, n: Node) -> Option<DeviceRule> {
    cx.parsed(n, DeviceRule::parse)
}

/// `gpus: all`, or a list of requests.
pub(super) fn gpus(cx: &mut Cx, n: Node) -> Option<Vec<DeviceRequest>> {
    match n.v() {
        Value::String(s) if s == "all" => Some(vec![DeviceRequest {
            count: Some(-1),
            capabilities: vec!["gpu".into()],
            ..DeviceRequest::default()
        }]),
        Value::String(_) => {
            cx.error(n.path, "write all, or a list of device requests");
            None
        }
        _ => Some(cx.each(n, |cx, n| {
            device_request(cx, n).map(|mut r| {
                // A GPU request, whatever else it says.
                if r.capabilities.is_empty() {
                    r.capabilities.push("gpu".into());
                }
                r
            })
        })),
    }
}

/// A device request (`gpus` entries, `deploy.resources.reservations.devices`).
pub(super) fn device_request(cx: &mut Cx, n: Node) -> Option<DeviceRequest> {
    let mut m = cx.map(n)?;
    let count = m.get(cx, "count", |cx, n| match n.v() {
        Value::String(s) if s == "all" => Some(-1),
        _ => cx.int_in(n, -1, i64::from(u32::MAX)),
    });
    let r = DeviceRequest {
        driver: m
            .get(cx, "driver", |cx, n| cx.string(n))
            .unwrap_or_default(),
        count,
        device_ids: m
            .get(cx, "device_ids", |cx, n| Some(cx.strings(n)))
            .unwrap_or_default(),
        capabilities: m
            .get(cx, "capabilities", |cx, n| Some(cx.strings(n)))
            .unwrap_or_default(),
        options: m
            .get(cx, "options", |cx, n| {
                Some(
                    cx.list_or_map(n)
                        .into_iter()
                        .map(|(k, v)| (k, v.unwrap_or_default()))
                        .collect(),
                )
            })
            .unwrap_or_default(),
    };
    m.ignore_extensions(cx);
    m.finish(cx);
    if r.count.is_some() && !r.device_ids.is_empty() {
        // Docker's daemon refuses both; compose-go too.
        cx.error(n.path, "count and device_ids cannot be set together");
        return None;
    }
    Some(r)
}

pub(super) fn blkio_config(cx: &mut Cx, n: Node) -> Option<BlkioConfig> {
    let mut m = cx.map(n)?;
    let weight = |cx: &mut Cx, n: Node| -> Option<u16> {
        // 0 is "unset" in Docker; else 10..=1000.
        let w = cx.int_in(n, 0, 1000)?;
        if w != 0 && w < 10 {
            cx.error(n.path, format!("{w} is out of range: 10 to 1000"));
            return None;
        }
        u16::try_from(w).ok()
    };
    let throttles = |cx: &mut Cx, n: Node, bytes: bool| -> Vec<ThrottleDevice> {
        cx.each(n, |cx, n| {
            let mut m = cx.map(n)?;
            let path = m.get(cx, "path", device_path);
            let rate = m.get(cx, "rate", |cx, n| {
                if bytes {
                    super::service::bytes(cx, n)
                } else {
                    cx.int_in(n, 0, i64::MAX).map(|x| x as u64)
                }
            });
            m.finish(cx);
            match (path, rate) {
                (Some(path), Some(rate)) => Some(ThrottleDevice { path, rate }),
                _ => {
                    cx.error(n.path, "needs a path and a rate");
                    None
                }
            }
        })
    };
    let b = BlkioConfig {
        weight: m.get(cx, "weight", weight).filter(|w| *w != 0),
        weight_device: m
            .get(cx, "weight_device", |cx, n| {
                Some(cx.each(n, |cx, n| {
                    let mut m = cx.map(n)?;
                    let path = m.get(cx, "path", device_path);
                    let w = m.get(cx, "weight", weight);
                    m.finish(cx);
                    match (path, w) {
                        (Some(path), Some(weight)) => Some(WeightDevice { path, weight }),
                        _ => {
                            cx.error(n.path, "needs a path and a weight");
                            None
                        }
                    }
                }))
            })
            .unwrap_or_default(),
        device_read_bps: m
            .get(cx, "device_read_bps", |cx, n| Some(throttles(cx, n, true)))
            .unwrap_or_default(),
        device_write_bps: m
            .get(cx, "device_write_bps", |cx, n| Some(throttles(cx, n, true)))
            .unwrap_or_default(),
        device_read_iops: m
            .get(cx, "device_read_iops", |cx, n| {
                Some(throttles(cx, n, false))
            })
            .unwrap_or_default(),
        device_write_iops: m
            .get(cx, "device_write_iops", |cx, n| {
                Some(throttles(cx, n, false))
            })
            .unwrap_or_default(),
    };
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(b)
}

fn device_path(cx: &mut Cx, n: Node) -> Option<String> {
    cx.parsed(n, |s| {
        if s.starts_with('/') {
            Ok(s.to_string())
        } else {
            Err(format!("{s:?} must be the absolute path of a device"))
        }
    })
}

/// `volumes_from`: `SERVICE[:ro|:rw]` or `container:NAME[:ro|:rw]`.
pub(super) fn volumes_from(cx: &mut Cx, n: Node) -> Option<String> {
    cx.parsed(n, |s| {
        let rest = s.strip_prefix("container:").unwrap_or(s);
        let (name, mode) = match rest.rsplit_once(':') {
            Some((name, mode)) => (name, Some(mode)),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(format!(
                "{s:?} names nothing: write SERVICE[:ro|rw] or container:NAME[:ro|rw]"
            ));
        }
        match mode {
            None | Some("ro" | "rw") => Ok(s.to_string()),
            Some(m) => Err(format!("invalid mode {m:?} in {s:?}: ro or rw")),
        }
    })
}

/// `links` and `external_links`: `NAME[:ALIAS]`.
pub(super) fn link(cx: &mut Cx, n: Node) -> Option<String> {
    cx.parsed(n, |s| {
        let (name, alias) = s.split_once(':').unwrap_or((s, s));
        let ok = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        if ok(name) && ok(alias) {
            Ok(s.to_string())
        } else {
            Err(format!(
                "invalid link {s:?}: write NAME or NAME:ALIAS (letters, digits, _ . -)"
            ))
        }
    })
}

/// A MAC address, `02:42:ac:11:00:02`, written back in lower case.
pub(super) fn mac_address(cx: &mut Cx, n: Node) -> Option<String> {
    cx.parsed(n, |s| {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let octets: Option<Vec<u8>> = (parts.len() == 6)
            .then(|| {
                parts
                    .iter()
                    .map(|p| {
                        (p.len() == 2)
                            .then(|| u8::from_str_radix(p, 16).ok())
                            .flatten()
                    })
                    .collect()
            })
            .flatten();
        match octets {
            Some(o) if o[0] & 1 == 1 => Err(format!(
                "{s:?} is a multicast address: a container's MAC address must be unicast (an even first octet)"
            )),
            Some(o) => Ok(o
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")),
            None => Err(format!(
                "invalid MAC address {s:?}: six hexadecimal octets, like 02:42:ac:11:00:02"
            )),
        }
    })
}

/// A network interface's name in the container: what Linux accepts (1 to 15 bytes,
/// no `/`, `:` or white space, not `.` or `..`).
pub(super) fn interface_name(cx: &mut Cx, n: Node) -> Option<String> {
    cx.parsed(n, |s| {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && s != "lo"
            && s.chars().all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
        if ok {
            Ok(s.to_string())
        } else {
            Err(format!(
                "invalid interface name {s:?}: 1 to 15 characters, without '/', ':' or spaces, and not lo"
            ))
        }
    })
}

/// A `link_local_ips` entry: an IPv4 address in 169.254.0.0/16 or an IPv6 one in
/// fe80::/10.
pub(super) fn link_local_ip(cx: &mut Cx, n: Node) -> Option<String> {
    cx.parsed(n, |s| match s.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) if ip.is_link_local() => Ok(ip.to_string()),
        Ok(std::net::IpAddr::V6(ip)) if (ip.segments()[0] & 0xffc0) == 0xfe80 => Ok(ip.to_string()),
        _ => Err(format!(
            "{s:?} is not a link-local address (169.254.0.0/16 or fe80::/10)"
        )),
    })
}

/// The endpoint option berth acts on: network sysctls of the interface.
pub const ENDPOINT_SYSCTLS: &str = "com.docker.network.endpoint.sysctls";
/// The endpoint option that names the interface (as `interface_name`).
pub const ENDPOINT_IFNAME: &str = "com.docker.network.endpoint.ifname";

/// A service network's `driver_opts`: the sysctls option is checked (comma-separated
/// `net.*` settings, `IFNAME` standing for the interface), the interface name too;
/// any other option means something only to one of Docker's drivers: kept, warned.
pub(super) fn endpoint_opts(cx: &mut Cx, n: Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in cx.list_or_map(n) {
        let v = v.unwrap_or_default();
        let path = crate::diag::join(n.path, &k);
        match k.as_str() {
            ENDPOINT_SYSCTLS => {
                for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                    let ok = item.split_once('=').is_some_and(|(key, _)| {
                        key.starts_with("net.")
                            && !key.contains('/')
                            && key.split('.').all(|c| !c.is_empty() && c != "..")
                    });
                    if !ok {
                        cx.error(
                            &path,
                            format!("{item:?} is not a network sysctl: write net.KEY=VALUE (IFNAME stands for the interface), comma-separated"),
                        );
                    }
                }
            }
            ENDPOINT_IFNAME => {}
            _ => cx.warn(
                &path,
                "an option of Docker's network drivers: berth's bridge does not read it; kept, ignored",
            ),
        }
        out.insert(k, v);
    }
    out
}

/// `cgroup_parent`: a cgroup path below the cgroup root, without `..`.
pub(super) fn cgroup_parent(cx: &mut Cx, n: Node) -> Option<String> {
    cx.parsed(n, |s| {
        let trimmed = s.trim_matches('/');
        if trimmed.is_empty()
            || trimmed
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!(
                "invalid cgroup_parent {s:?}: a path of cgroup names below the cgroup root, like berth-limits/web"
            ));
        }
        if trimmed.ends_with(".slice") {
            // systemd's notation: berth drives the cgroup file system itself.
            return Err(format!(
                "{s:?} is a systemd slice: berth manages cgroups with cgroupfs; give a path like {}",
                trimmed.trim_end_matches(".slice")
            ));
        }
        Ok(format!("/{trimmed}"))
    })
}

/// `platform`: `os[/arch[/variant]]`, as OCI image indexes name platforms.
pub(super) fn platform(cx: &mut Cx, n: Node) -> Option<String> {
    cx.parsed(n, |s| {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if (1..=3).contains(&parts.len()) && parts.iter().all(|p| ok(p)) {
            Ok(s.to_ascii_lowercase())
        } else {
            Err(format!(
                "invalid platform {s:?}: write os/arch[/variant], like linux/amd64 or linux/arm64/v8"
            ))
        }
    })
}

/// `storage_opt`: a mapping of option to value.
pub(super) fn storage_opt(cx: &mut Cx, n: Node) -> Option<BTreeMap<String, String>> {
    Some(
        cx.list_or_map(n)
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
    )
}

/// Reads the `label_file`s (absolute already), in order: `KEY=VALUE` lines as env
/// files are written (without interpolation), later files winning.
pub(super) fn read_label_files(
    cx: &mut Cx,
    files: &[String],
    path: &str,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for f in files {
        let text = match crate::yaml::read_limited(std::path::Path::new(f)) {
            Ok(text) => text,
            Err(e) => {
                cx.error(
                    path,
                    format!(
                        "cannot read label file {f}: {e}; create it or remove it from label_file"
                    ),
                );
                continue;
            }
        };
        match crate::dotenv::parse(&text, &|_: &str| None) {
            Ok(pairs) => out.extend(pairs),
            Err(e) => cx.error(path, format!("{f}: {e}")),
        }
    }
    out
}

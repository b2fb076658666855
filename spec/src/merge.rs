//! Merging Compose trees: several `-f` files, `extends`, and the override tags.
//!
//! The rules are the Compose spec's (merge.md), applied to YAML trees before decoding:
//! mappings merge key by key; sequences append; scalars are replaced; and per-attribute
//! exceptions: `command`, `entrypoint` and `healthcheck.test` are replaced; `ports`,
//! `volumes`, `secrets`, `configs`, `devices`, `env_file` and `ipam.config` merge by
//! their unique key (a later entry with the same key replaces the earlier one; pools of
//! one subnet merge); `extra_hosts` keeps every address once; list-or-mapping attributes (`environment`,
//! `labels`, `networks`, `depends_on` ...) merge as mappings whatever form each side
//! uses; `!reset` removes a value and `!override` replaces it without merging.

use serde_norway::value::Tag;
use serde_norway::{Mapping, Value};

use crate::short_syntax;

/// What a path in the tree is, for the attributes that do not merge by the default rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Default,
    Replace,
    /// A list of `KEY=VALUE` or a mapping: merged as a mapping.
    KeyValue,
    /// A list of names or a mapping of name -> options: merged as a mapping.
    NameMap,
    /// Sequences of unique entries, merged by the entry's key.
    Ports,
    Volumes,
    Secrets,
    Configs,
    /// Appended, without repeating an entry already present.
    UniqueList,
    Logging,
    Build,
    /// `ipam.config` pools, merged by subnet.
    IpamPools,
    ExtraHosts,
    /// `devices`, unique by the path in the container.
    Devices,
    /// `env_file`, unique by path in either form.
    EnvFiles,
}

fn rule(path: &[&str]) -> Rule {
    match path {
        ["services", _, attr] => match *attr {
            "command" | "entrypoint" => Rule::Replace,
            "environment" | "labels" | "sysctls" | "annotations" => Rule::KeyValue,
            "networks" | "depends_on" => Rule::NameMap,
            "ports" => Rule::Ports,
            "volumes" => Rule::Volumes,
            "secrets" => Rule::Secrets,
            "configs" => Rule::Configs,
            "dns"
            | "dns_search"
            | "dns_opt"
            | "expose"
            | "cap_add"
            | "cap_drop"
            | "profiles"
            | "tmpfs"
            | "security_opt"
            | "group_add"
            | "links"
            | "external_links"
            | "device_cgroup_rules" => Rule::UniqueList,
            "devices" => Rule::Devices,
            "env_file" => Rule::EnvFiles,
            "logging" => Rule::Logging,
            "build" => Rule::Build,
            "extra_hosts" => Rule::ExtraHosts,
            _ => Rule::Default,
        },
        ["services", _, "healthcheck", "test"] => Rule::Replace,
        ["services", _, "networks", _, "aliases"] => Rule::UniqueList,
        ["networks", _, "ipam", "config"] => Rule::IpamPools,
        ["services", _, "build", "args" | "labels"] => Rule::KeyValue,
        ["services", _, "build", "tags"] => Rule::UniqueList,
        ["services", _, "deploy", "labels"] => Rule::KeyValue,
        ["networks" | "volumes" | "secrets" | "configs", _, "labels" | "driver_opts"] => {
            Rule::KeyValue
        }
        _ => Rule::Default,
    }
}

fn tag_is(v: &Value, name: &str) -> bool {
    matches!(v, Value::Tagged(t) if t.tag == Tag::new(name))
}

/// Merges `over` onto `base` at `path`. `None` means the value was `!reset`: the caller
/// removes the key.
pub(crate) fn merge(base: Value, over: Value, path: &[&str]) -> Option<Value> {
    if tag_is(&over, "reset") {
        return None;
    }
    // `key:` left empty in an override changes nothing (compose-go keeps the base).
    if over.is_null() {
        return strip_tags(base);
    }
    if let Value::Tagged(t) = over {
        if t.tag == Tag::new("override") {
            return strip_tags(t.value);
        }
        return merge(base, t.value, path);
    }
    let base = match base {
        Value::Tagged(t) => t.value,
        b => b,
    };
    let merged = match rule(path) {
        Rule::Replace => over,
        Rule::KeyValue => merge_maps(key_value_map(base), key_value_map(over), path),
        Rule::NameMap => merge_maps(name_map(base), name_map(over), path),
        // compose-go keeps every address: a host may have several, and the override
        // adds to them; only an entry repeated exactly is dropped.
        Rule::ExtraHosts => match (extra_hosts_list(base), extra_hosts_list(over)) {
            (Some(mut a), Some(b)) => {
                for item in b {
                    if !a.contains(&item) {
                        a.push(item);
                    }
                }
                Value::Sequence(a)
            }
            // Invalid entries were reported when the file was checked on its own.
            _ => Value::Null,
        },
        Rule::Ports => merge_by_key(base, over, port_key),
        Rule::Volumes => merge_by_key(base, over, volume_key),
        Rule::Secrets => merge_by_key(base, over, |v| file_mount_key(v, "/run/secrets/")),
        Rule::Configs => merge_by_key(base, over, |v| file_mount_key(v, "/")),
        Rule::UniqueList => match (as_list(base), as_list(over)) {
            (Some(mut a), Some(b)) => {
                for item in b {
                    if !a.contains(&item) {
                        a.push(item);
                    }
                }
                Value::Sequence(a)
            }
            (_, b) => b.map(Value::Sequence).unwrap_or(Value::Null),
        },
        Rule::Logging => {
            // Options merge only when both sides use the same driver (or one names none).
            let driver = |v: &Value| v.get("driver").cloned();
            match (driver(&base), driver(&over)) {
                (Some(a), Some(b)) if a != b => over,
                _ => merge_default(base, over, path),
            }
        }
        Rule::Build => merge_default(build_map(base), build_map(over), path),
        // A pool of the same subnet merges deeply (compose-go): its aux_addresses add up.
        Rule::IpamPools => merge_by_key_with(
            base,
            over,
            |v| v.get("subnet").and_then(scalar_text),
            |a, b| merge_default(a, b, path),
        ),
        Rule::Devices => merge_by_key(base, over, device_key),
        Rule::EnvFiles => merge_by_key(base, over, |v| match v {
            Value::Mapping(_) => v.get("path").and_then(scalar_text),
            other => scalar_text(other),
        }),
        Rule::Default => merge_default(base, over, path),
    };
    strip_tags(merged)
}

fn merge_default(base: Value, over: Value, path: &[&str]) -> Value {
    match (base, over) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            merge_maps(Value::Mapping(a), Value::Mapping(b), path)
        }
        (Value::Sequence(mut a), Value::Sequence(b)) => {
            a.extend(b);
            Value::Sequence(a)
        }
        (_, over) => over,
    }
}

fn merge_maps(base: Value, over: Value, path: &[&str]) -> Value {
    let (Value::Mapping(mut a), Value::Mapping(b)) = (base, over) else {
        return Value::Null;
    };
    for (k, v) in b {
        let key = k.as_str().unwrap_or_default().to_string();
        let mut child_path = path.to_vec();
        child_path.push(&key);
        let merged = match a.remove(&k) {
            Some(existing) => merge(existing, v, &child_path),
            None if tag_is(&v, "reset") => None,
            None => strip_tags(v),
        };
        if let Some(m) = merged {
            a.insert(k, m);
        }
    }
    Value::Mapping(a)
}

/// Removes override tags from a tree that is not merged onto anything: `!reset`
/// entries disappear, `!override` values stay as they are. `None` if the root was reset.
pub(crate) fn strip_tags(mut v: Value) -> Option<Value> {
    if tag_is(&v, "reset") {
        return None;
    }
    strip_tags_in_place(&mut v);
    Some(v)
}

/// [`strip_tags`] without rebuilding the tree: a merged project is large, and most of it
/// carries no tag at all.
fn strip_tags_in_place(v: &mut Value) {
    match v {
        Value::Tagged(t) => {
            let inner = std::mem::take(&mut t.value);
            *v = inner;
            strip_tags_in_place(v);
        }
        Value::Mapping(m) => {
            m.retain(|_, child| !tag_is(child, "reset"));
            for (_, child) in m.iter_mut() {
                strip_tags_in_place(child);
            }
        }
        Value::Sequence(items) => {
            items.retain(|child| !tag_is(child, "reset"));
            items.iter_mut().for_each(strip_tags_in_place);
        }
        _ => {}
    }
}

fn as_list(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Sequence(s) => Some(s),
        Value::Null => Some(Vec::new()),
        // `dns: 8.8.8.8` is a list of one.
        scalar @ (Value::String(_) | Value::Number(_)) => Some(vec![scalar]),
        _ => None,
    }
}

/// `[A=1, B]` -> `{A: "1", B: null}`; a mapping stays as it is.
fn key_value_map(v: Value) -> Value {
    match v {
        Value::Sequence(items) => {
            let mut m = Mapping::new();
            for item in items {
                let Some(text) = scalar_text(&item) else {
                    return Value::Sequence(vec![item]);
                };
                match text.split_once('=') {
                    Some((k, v)) => m.insert(Value::from(k), Value::from(v)),
                    None => m.insert(Value::from(text), Value::Null),
                };
            }
            Value::Mapping(m)
        }
        Value::Null => Value::Mapping(Mapping::new()),
        other => other,
    }
}

/// `[a, b]` -> `{a: null, b: null}`.
fn name_map(v: Value) -> Value {
    match v {
        Value::Sequence(items) => {
            Value::Mapping(items.into_iter().map(|i| (i, Value::Null)).collect())
        }
        Value::Null => Value::Mapping(Mapping::new()),
        other => other,
    }
}

/// Either form of `extra_hosts` as a list of `host=ip`, one address each, so that the
/// same address written two ways is one entry. `None` if an entry is invalid.
fn extra_hosts_list(v: Value) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut add = |text: &str| -> Option<()> {
        for (host, ip) in short_syntax::parse_extra_hosts(text).ok()? {
            out.push(Value::from(format!("{host}={ip}")));
        }
        Some(())
    };
    match v {
        Value::Sequence(items) => {
            for item in items {
                add(&scalar_text(&item)?)?;
            }
        }
        Value::Mapping(m) => {
            for (host, ips) in m {
                let host = scalar_text(&host)?;
                let ips = match ips {
                    Value::Sequence(ips) => ips,
                    one => vec![one],
                };
                for ip in ips {
                    add(&format!("{host}={}", scalar_text(&ip)?))?;
                }
            }
        }
        Value::Null => {}
        _ => return None,
    }
    Some(out)
}

/// A device's path in the container: `/dev/sda` alone, the second part of
/// `/dev/sda:/dev/xvda[:rwm]`, or the long form's `target` (compose-go's key).
fn device_key(v: &Value) -> Option<String> {
    match v {
        Value::Mapping(_) => v.get("target").and_then(scalar_text),
        other => {
            let text = scalar_text(other)?;
            let mut parts = text.split(':');
            let first = parts.next().map(str::to_string);
            parts.next().map(str::to_string).or(first)
        }
    }
}

fn build_map(v: Value) -> Value {
    match v {
        Value::String(context) => {
            let mut m = Mapping::new();
            m.insert(Value::from("context"), Value::from(context));
            Value::Mapping(m)
        }
        other => other,
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Appends `over`'s entries to `base`'s; an entry whose key is already present replaces
/// the earlier one in place. Entries without a key (invalid, reported elsewhere) append.
fn merge_by_key(base: Value, over: Value, key: impl Fn(&Value) -> Option<String>) -> Value {
    merge_by_key_with(base, over, key, |_, over| over)
}

/// [`merge_by_key`], with `combine(earlier, later)` making the entry that replaces an
/// earlier one of the same key.
fn merge_by_key_with(
    base: Value,
    over: Value,
    key: impl Fn(&Value) -> Option<String>,
    combine: impl Fn(Value, Value) -> Value,
) -> Value {
    let (Some(mut a), Some(b)) = (as_list(base), as_list(over)) else {
        return Value::Null;
    };
    for item in b {
        let k = key(&item);
        match k.and_then(|k| a.iter().position(|x| key(x).as_deref() == Some(k.as_str()))) {
            Some(i) => {
                let earlier = std::mem::take(&mut a[i]);
                a[i] = combine(earlier, item);
            }
            None => a.push(item),
        }
    }
    Value::Sequence(a)
}

/// A port's identity: host IP, published port(s), target and protocol.
fn port_key(v: &Value) -> Option<String> {
    match v {
        Value::Mapping(_) => {
            let get = |k: &str| v.get(k).and_then(scalar_text).unwrap_or_default();
            let proto = v
                .get("protocol")
                .and_then(scalar_text)
                .unwrap_or_else(|| "tcp".into());
            Some(format!(
                "{}|{}|{}|{proto}",
                get("host_ip"),
                get("published"),
                get("target")
            ))
        }
        _ => {
            let p = short_syntax::parse_port(&scalar_text(v)?, u32::MAX).ok()?;
            let published = p.published.map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            });
            let target = if p.target.0 == p.target.1 {
                p.target.0.to_string()
            } else {
                format!("{}-{}", p.target.0, p.target.1)
            };
            Some(format!(
                "{}|{}|{target}|{}",
                p.host_ip.unwrap_or_default(),
                published.unwrap_or_default(),
                p.protocol
            ))
        }
    }
}

fn volume_key(v: &Value) -> Option<String> {
    match v {
        Value::Mapping(_) => v.get("target").and_then(scalar_text),
        _ => short_syntax::parse_volume(&scalar_text(v)?)
            .ok()
            .map(|p| p.target),
    }
}

fn file_mount_key(v: &Value, default_dir: &str) -> Option<String> {
    match v {
        Value::Mapping(_) => match v.get("target").and_then(scalar_text) {
            Some(t) if t.starts_with('/') => Some(t),
            Some(t) => Some(format!("{default_dir}{t}")),
            None => v
                .get("source")
                .and_then(scalar_text)
                .map(|s| format!("{default_dir}{s}")),
        },
        _ => scalar_text(v).map(|s| format!("{default_dir}{s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        crate::yaml::parse(s).expect("test YAML parses")
    }

    /// Merges the two files and compares with the expected tree.
    fn check(base: &str, over: &str, want: &str) {
        let got = merge(y(base), y(over), &[]).unwrap_or(Value::Null);
        assert_eq!(got, y(want), "\nbase: {base}\nover: {over}");
    }

    #[test]
    fn merge_rules_table() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("mappings merge, scalars replace",
             "services: {a: {image: x, user: u}}", "services: {a: {image: y}}",
             "services: {a: {image: y, user: u}}"),
            ("sequences append",
             "services: {a: {dns_search: [a.com]}}", "services: {a: {dns_search: [b.com]}}",
             "services: {a: {dns_search: [a.com, b.com]}}"),
            ("unique lists do not repeat",
             "services: {a: {cap_add: [NET_ADMIN]}}", "services: {a: {cap_add: [NET_ADMIN, SYS_TIME]}}",
             "services: {a: {cap_add: [NET_ADMIN, SYS_TIME]}}"),
            ("command is replaced",
             "services: {a: {command: [echo, foo]}}", "services: {a: {command: [echo, bar]}}",
             "services: {a: {command: [echo, bar]}}"),
            ("healthcheck.test is replaced, the rest merges",
             "services: {a: {healthcheck: {test: [CMD, a], retries: 3}}}",
             "services: {a: {healthcheck: {test: [CMD, b]}}}",
             "services: {a: {healthcheck: {test: [CMD, b], retries: 3}}}"),
            ("environment list and map merge as a mapping",
             "services: {a: {environment: [A=1, B=2]}}", "services: {a: {environment: {B: 3, C: 4}}}",
             "services: {a: {environment: {A: '1', B: 3, C: 4}}}"),
            ("volumes merge by target",
             "services: {a: {volumes: ['foo:/work', '/data']}}", "services: {a: {volumes: ['bar:/work']}}",
             "services: {a: {volumes: ['bar:/work', '/data']}}"),
            ("ports merge by ip/published/target/protocol: same key replaces in place",
             "services: {a: {ports: ['8080:80', '53:53/udp']}}",
             "services: {a: {ports: [{target: 80, published: '8080', protocol: tcp, host_ip: ''}, '8443:443']}}",
             "services: {a: {ports: [{target: 80, published: '8080', protocol: tcp, host_ip: ''}, '53:53/udp', '8443:443']}}"),
            ("same short port twice is one",
             "services: {a: {ports: ['8080:80']}}", "services: {a: {ports: ['8080:80']}}",
             "services: {a: {ports: ['8080:80']}}"),
            ("secrets merge by target",
             "services: {a: {secrets: [s1]}}", "services: {a: {secrets: [{source: s1, mode: 0400}]}}",
             "services: {a: {secrets: [{source: s1, mode: 0400}]}}"),
            ("networks list and map",
             "services: {a: {networks: [front]}}", "services: {a: {networks: {back: {aliases: [x]}}}}",
             "services: {a: {networks: {front: null, back: {aliases: [x]}}}}"),
            ("logging with another driver is replaced",
             "services: {a: {logging: {driver: json-file, options: {max-size: 1m}}}}",
             "services: {a: {logging: {driver: syslog}}}",
             "services: {a: {logging: {driver: syslog}}}"),
            ("logging with the same driver merges",
             "services: {a: {logging: {driver: json-file, options: {max-size: 1m}}}}",
             "services: {a: {logging: {options: {max-file: '3'}}}}",
             "services: {a: {logging: {driver: json-file, options: {max-size: 1m, max-file: '3'}}}}"),
            ("build string and mapping",
             "services: {a: {build: ./app}}", "services: {a: {build: {target: prod}}}",
             "services: {a: {build: {context: ./app, target: prod}}}"),
            ("!reset removes",
             "services: {a: {image: x, ports: ['8080:80'], environment: {FOO: bar, K: v}}}",
             "services: {a: {ports: !reset [], environment: {FOO: !reset null}}}",
             "services: {a: {image: x, environment: {K: v}}}"),
            ("!override replaces without merging",
             "services: {a: {ports: ['8080:80']}}", "services: {a: {ports: !override ['8443:443']}}",
             "services: {a: {ports: ['8443:443']}}"),
            ("extension fields merge like any mapping (compose-go)",
             "x-common: {a: 1}", "x-common: {b: 2}", "x-common: {a: 1, b: 2}"),
            ("an empty override keeps the base",
             "services: {a: {networks: {front: {aliases: [www]}}, user: u}}",
             "services: {a: {networks: [front], user: }}",
             "services: {a: {networks: {front: {aliases: [www]}}, user: u}}"),
            ("aliases do not repeat",
             "services: {a: {networks: {front: {aliases: [a1]}}}}",
             "services: {a: {networks: {front: {aliases: [a1, a2]}}}}",
             "services: {a: {networks: {front: {aliases: [a1, a2]}}}}"),
            ("ipam pools merge by subnet",
             "networks: {n: {ipam: {config: [{subnet: 10.5.0.0/16, gateway: 10.5.0.1}]}}}",
             "networks: {n: {ipam: {config: [{subnet: 10.5.0.0/16, gateway: 10.5.0.254}, {subnet: 10.6.0.0/16}]}}}",
             "networks: {n: {ipam: {config: [{subnet: 10.5.0.0/16, gateway: 10.5.0.254}, {subnet: 10.6.0.0/16}]}}}"),
            ("a new service is added whole",
             "services: {a: {image: x}}", "services: {b: {image: y}}",
             "services: {a: {image: x}, b: {image: y}}"),
        ];
        for (name, base, over, want) in cases {
            eprintln!("case: {name}");
            check(base, over, want);
        }
    }

    #[test]
    fn reset_in_a_single_file_is_removed() {
        let v = strip_tags(y("services: {a: {image: x, ports: !reset ['1:1']}}"));
        assert_eq!(v, Some(y("services: {a: {image: x}}")));
    }
}

//! The namespace attributes of a service (`network_mode`, `pid`, `ipc`, `uts`,
//! `userns_mode`, `cgroup`): what each value means, parsed once here for the loader
//! (which rejects a value no runtime could act on) and the agent (which acts on it).

/// Which namespace of a kind a container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceMode {
    /// One of its own (Compose's `private`, `shareable`; berth's default).
    Private,
    /// The host's: the namespace is left out of the container's spec.
    Host,
    /// A network namespace with only loopback (`network_mode: none`).
    None,
    /// The namespace of a running container of this stack's service (`service:NAME`).
    Service(String),
    /// The namespace of a running container named NAME (`container:NAME`).
    Container(String),
}

/// The namespace attributes and the values each accepts, as Compose (and Docker) spell
/// them; `private` is the default of each.
pub const ATTRIBUTES: &[(&str, &[&str])] = &[
    (
        "network_mode",
        &["host", "none", "service:NAME", "container:NAME"],
    ),
    (
        "pid",
        &["host", "private", "service:NAME", "container:NAME"],
    ),
    (
        "ipc",
        &[
            "host",
            "private",
            "shareable",
            "service:NAME",
            "container:NAME",
        ],
    ),
    ("uts", &["host", "private"]),
    ("userns_mode", &["host"]),
    ("cgroup", &["host", "private"]),
];

/// Parses `value` of the namespace attribute `attribute` (one of [`ATTRIBUTES`]).
pub fn parse(attribute: &str, value: &str) -> Result<NamespaceMode, String> {
    let allowed = ATTRIBUTES
        .iter()
        .find(|(a, _)| *a == attribute)
        .map(|(_, v)| *v)
        .unwrap_or_default();
    let joinable = allowed.contains(&"service:NAME");
    let named = |prefix: &str, f: fn(String) -> NamespaceMode| {
        let name = value.strip_prefix(prefix)?;
        Some(if name.is_empty() {
            Err(format!(
                "{value:?} names no {}",
                &prefix[..prefix.len() - 1]
            ))
        } else {
            Ok(f(name.to_string()))
        })
    };
    let mode = match value {
        "host" if allowed.contains(&"host") => Some(Ok(NamespaceMode::Host)),
        "private" | "shareable" if allowed.contains(&value) => Some(Ok(NamespaceMode::Private)),
        "none" if allowed.contains(&"none") => Some(Ok(NamespaceMode::None)),
        _ if joinable => named("service:", NamespaceMode::Service)
            .or_else(|| named("container:", NamespaceMode::Container)),
        _ => None,
    };
    mode.unwrap_or_else(|| {
        Err(format!(
            "{value:?} is not a {attribute} berth knows; use one of: {}",
            allowed.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_per_attribute() {
        use NamespaceMode as M;
        let ok = [
            ("network_mode", "host", M::Host),
            ("network_mode", "none", M::None),
            ("network_mode", "service:db", M::Service("db".into())),
            ("network_mode", "container:x-1", M::Container("x-1".into())),
            ("pid", "host", M::Host),
            ("ipc", "shareable", M::Private),
            ("ipc", "service:db", M::Service("db".into())),
            ("uts", "host", M::Host),
            ("userns_mode", "host", M::Host),
            ("cgroup", "private", M::Private),
        ];
        for (attr, value, want) in ok {
            assert_eq!(parse(attr, value), Ok(want), "{attr}: {value}");
        }
        for (attr, value) in [
            ("network_mode", "mynet"),
            ("network_mode", "bridge"),
            ("network_mode", "service:"),
            ("pid", "none"),
            ("uts", "service:db"),
            ("userns_mode", "private"),
            ("cgroup", "shareable"),
        ] {
            assert!(parse(attr, value).is_err(), "{attr}: {value}");
        }
        let e = parse("uts", "container:x").unwrap_err();
        assert!(e.contains("use one of: host, private"), "{e}");
    }
}

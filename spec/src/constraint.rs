//! Placement constraints (`deploy.placement.constraints`), parsed into a typed
//! [`Constraint`] so that a mistake is reported when the file is loaded, naming the file
//! and `services.X.deploy.placement.constraints[i]`, and the scheduler never parses
//! strings.
//!
//! The keys are Swarm's: `node.id`, `node.hostname`, `node.role`, `node.labels.KEY`,
//! `node.platform.os`, `node.platform.arch`, and `engine.labels.KEY` (berth nodes have no
//! engine labels, so such a constraint sees every label as absent; the loader warns).
//! Operators are `==` and `!=`. Matching follows swarmkit's, so a stack behaves as it did
//! on Swarm: the key's prefix is case-insensitive, a label's name is not, values compare
//! ASCII case-insensitively, and an absent label or attribute is the empty string (so
//! `node.labels.gpu != yes` holds on a node without the label).

use std::fmt;

use serde::{Deserialize, Serialize};

const NODE_LABELS: &str = "node.labels.";
const ENGINE_LABELS: &str = "engine.labels.";

/// What a placement constraint looks at on a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConstraintKey {
    NodeId,
    NodeHostname,
    /// `manager` or `worker`.
    NodeRole,
    /// A node label's name (case-sensitive).
    NodeLabel(String),
    /// An engine label's name: Swarm has them, berth nodes have none.
    EngineLabel(String),
    PlatformOs,
    PlatformArch,
    /// A key the loader refuses, kept only when a stored stack deployed by an older berth
    /// (which did not check keys) has one: it matches no node, as in swarmkit, and
    /// reading the store never fails because of it.
    Unknown(String),
}

impl ConstraintKey {
    /// The key as written in a stack file (the canonical spelling, lowercase prefixes).
    fn parse(key: &str) -> Result<ConstraintKey, String> {
        let lower = key.to_ascii_lowercase();
        let label = |prefix: &str| -> Option<String> {
            lower
                .starts_with(prefix)
                .then(|| key[prefix.len()..].to_string())
        };
        Ok(match lower.as_str() {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::NodeHostname,
            "node.role" => ConstraintKey::NodeRole,
            "node.platform.os" => ConstraintKey::PlatformOs,
            "node.platform.arch" => ConstraintKey::PlatformArch,
            _ => match (label(NODE_LABELS), label(ENGINE_LABELS)) {
                (Some(name), _) if !name.is_empty() => ConstraintKey::NodeLabel(name),
                (_, Some(name)) if !name.is_empty() => ConstraintKey::EngineLabel(name),
                (Some(_), _) | (_, Some(_)) => {
                    return Err(format!("{key:?} names no label: write {key}KEY"));
                }
                _ => {
                    return Err(format!(
                        "unknown key {key:?}: expected node.id, node.hostname, node.role, \
                         node.labels.KEY, node.platform.os or node.platform.arch"
                    ));
                }
            },
        })
    }
}

impl fmt::Display for ConstraintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintKey::NodeId => f.write_str("node.id"),
            ConstraintKey::NodeHostname => f.write_str("node.hostname"),
            ConstraintKey::NodeRole => f.write_str("node.role"),
            ConstraintKey::NodeLabel(name) => write!(f, "{NODE_LABELS}{name}"),
            ConstraintKey::EngineLabel(name) => write!(f, "{ENGINE_LABELS}{name}"),
            ConstraintKey::PlatformOs => f.write_str("node.platform.os"),
            ConstraintKey::PlatformArch => f.write_str("node.platform.arch"),
            ConstraintKey::Unknown(key) => f.write_str(key),
        }
    }
}

/// A placement constraint such as `node.labels.zone == east`, parsed so the scheduler
/// does not parse strings; written back in the same form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Constraint {
    pub key: ConstraintKey,
    /// `==` (true) or `!=` (false).
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    /// Whether a node whose attribute for [`Self::key`] is `actual` (None: the node has
    /// no such label or attribute) meets the constraint. Values compare ASCII
    /// case-insensitively, as swarmkit's do; an [`ConstraintKey::Unknown`] key is never
    /// met. The caller looks the attribute up (and normalizes platform names).
    pub fn matches(&self, actual: Option<&str>) -> bool {
        if matches!(self.key, ConstraintKey::Unknown(_)) {
            return false;
        }
        let same = self.value.eq_ignore_ascii_case(actual.unwrap_or(""));
        same == self.equal
    }

    /// Splits `KEY==VALUE` / `KEY!=VALUE`; only the operator and both sides are checked.
    fn split(s: &str) -> Result<(&str, bool, &str), String> {
        let (key, equal, value) = if let Some((k, v)) = s.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, false, v)
        } else {
            return Err(format!(
                "invalid placement constraint {s:?}: expected KEY==VALUE or KEY!=VALUE, \
                 like node.role==manager"
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            return Err(format!(
                "invalid placement constraint {s:?}: both sides of the operator must be set"
            ));
        }
        Ok((key, equal, value))
    }

    /// How a stored stack's constraint is read back: as [`str::parse`] does, except that
    /// a key or a role the loader would refuse is kept (as [`ConstraintKey::Unknown`], or
    /// a role value that matches nothing), so a store written by an older berth always
    /// loads.
    fn parse_stored(s: &str) -> Result<Constraint, String> {
        let (key, equal, value) = Constraint::split(s)?;
        Ok(Constraint {
            key: ConstraintKey::parse(key).unwrap_or_else(|_| ConstraintKey::Unknown(key.into())),
            equal,
            value: value.to_string(),
        })
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.equal { "==" } else { "!=" };
        write!(f, "{} {op} {}", self.key, self.value)
    }
}

/// The loader's parse: a syntax error, an unknown key or a role that is neither
/// `manager` nor `worker` is an error (the message quotes the constraint).
impl std::str::FromStr for Constraint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, equal, value) = Constraint::split(s)?;
        let key = ConstraintKey::parse(key)
            .map_err(|e| format!("invalid placement constraint {s:?}: {e}"))?;
        if key == ConstraintKey::NodeRole
            && !["manager", "worker"]
                .iter()
                .any(|r| r.eq_ignore_ascii_case(value))
        {
            return Err(format!(
                "invalid placement constraint {s:?}: node.role is manager or worker"
            ));
        }
        Ok(Constraint {
            key,
            equal,
            value: value.to_string(),
        })
    }
}

impl Serialize for Constraint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Constraint::parse_stored(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Checks a spread preference's key (`node.labels.KEY` or `engine.labels.KEY`), as the
/// loader does for `deploy.placement.preferences[i].spread`.
pub fn check_spread(spread: &str) -> Result<(), String> {
    match ConstraintKey::parse(spread.trim()) {
        Ok(ConstraintKey::NodeLabel(_) | ConstraintKey::EngineLabel(_)) => Ok(()),
        _ => Err(format!(
            "invalid spread preference {spread:?}: expected node.labels.KEY, \
             like node.labels.zone"
        )),
    }
}

/// The label a spread preference balances over (`node.labels.zone` -> `zone`); None
/// for anything else (an engine label, or a stored key the loader would refuse), which
/// the scheduler treats as a label no node has.
pub fn spread_label(spread: &str) -> Option<&str> {
    let s = spread.trim();
    s.get(..NODE_LABELS.len())
        .filter(|p| p.eq_ignore_ascii_case(NODE_LABELS))
        .map(|_| &s[NODE_LABELS.len()..])
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_print_back() {
        let cases = [
            ("node.id==abc", ConstraintKey::NodeId, "node.id == abc"),
            (
                "Node.Hostname != h1",
                ConstraintKey::NodeHostname,
                "node.hostname != h1",
            ),
            (
                "node.role==Manager",
                ConstraintKey::NodeRole,
                "node.role == Manager",
            ),
            (
                "node.labels.Zone == east",
                ConstraintKey::NodeLabel("Zone".into()),
                "node.labels.Zone == east",
            ),
            (
                "engine.labels.os != windows",
                ConstraintKey::EngineLabel("os".into()),
                "engine.labels.os != windows",
            ),
            (
                "node.platform.os==linux",
                ConstraintKey::PlatformOs,
                "node.platform.os == linux",
            ),
            (
                "node.platform.arch!=arm64",
                ConstraintKey::PlatformArch,
                "node.platform.arch != arm64",
            ),
        ];
        for (text, key, printed) in cases {
            let c: Constraint = text.parse().unwrap();
            assert_eq!(c.key, key, "{text}");
            assert_eq!(c.to_string(), printed, "{text}");
            assert_eq!(printed.parse::<Constraint>().unwrap(), c, "{text}");
        }
    }

    #[test]
    fn mistakes_are_refused_by_the_loader_but_kept_from_a_store() {
        for (text, error) in [
            ("node.ip==10.0.0.1", "unknown key \"node.ip\""),
            ("node.labels.==x", "names no label"),
            ("node.role==boss", "node.role is manager or worker"),
            ("node.role", "expected KEY==VALUE"),
        ] {
            let e = text.parse::<Constraint>().unwrap_err();
            assert!(e.contains(error), "{text}: {e}");
        }
        let stored: Constraint = serde_json::from_str("\"node.ip == 10.0.0.1\"").unwrap();
        assert_eq!(stored.key, ConstraintKey::Unknown("node.ip".into()));
        assert!(!stored.matches(Some("10.0.0.1")));
        assert!(serde_json::from_str::<Constraint>("\"node.role\"").is_err());
    }

    #[test]
    fn matching_is_case_insensitive_on_values_and_absent_is_empty() {
        let eq: Constraint = "node.labels.tier==GPU".parse().unwrap();
        let ne: Constraint = "node.labels.tier!=gpu".parse().unwrap();
        assert!(eq.matches(Some("gpu")));
        assert!(!eq.matches(Some("cpu")));
        assert!(!eq.matches(None));
        assert!(ne.matches(None));
        assert!(!ne.matches(Some("Gpu")));
    }

    #[test]
    fn spread_keys() {
        assert_eq!(spread_label("node.labels.zone"), Some("zone"));
        assert_eq!(spread_label("Node.Labels.zone"), Some("zone"));
        assert_eq!(spread_label("engine.labels.zone"), None);
        assert_eq!(spread_label("node.labels."), None);
        assert!(check_spread("node.labels.zone").is_ok());
        assert!(check_spread("node.hostname").is_err());
    }
}

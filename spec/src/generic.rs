//! Swarm's generic resources on the node's side: what `berth daemon
//! --node-generic-resource KIND=VALUE` advertises ([`Inventory`]), and the rules a kind
//! follows (shared with the loader, which reads what services reserve).
//!
//! As in Swarm, a VALUE that is an integer is a count of a *discrete* kind (`SSD=3`);
//! anything else is one *named* unit (`NVIDIA-GPU=GPU-8e1a`), and several flags of one
//! kind give it several units. A task given named units sees them in
//! `DOCKER_RESOURCE_<KIND>` ([`env_var`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a node offers of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Units {
    /// Named units, in the order given (the scheduler hands out the first free ones).
    Named(Vec<String>),
    /// A count.
    Discrete(u64),
}

impl Units {
    /// How many units there are.
    pub fn count(&self) -> u64 {
        match self {
            Units::Named(names) => names.len() as u64,
            Units::Discrete(n) => *n,
        }
    }
}

/// A node's generic resources by kind.
pub type Inventory = BTreeMap<String, Units>;

/// Why a `--node-generic-resource` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenericError {
    #[error(
        "invalid generic resource {0:?}: expected KIND=VALUE, like SSD=3 or NVIDIA-GPU=GPU-8e1a"
    )]
    Syntax(String),
    #[error("invalid generic resource {given:?}: {why}")]
    Kind { given: String, why: String },
    #[error("generic resource {0} is given both as a count and as named units; give it one way")]
    Mixed(String),
    #[error("generic resource {0} is given as a count twice; give it once, with the total")]
    TwiceCounted(String),
    #[error("generic resource {kind} names unit {unit:?} twice")]
    TwiceNamed { kind: String, unit: String },
}

/// Whether `kind` can name a generic resource: not empty, and no character that would
/// break `KIND=VALUE` or the environment variable (`=`, `,`, spaces, control characters).
pub fn check_kind(kind: &str) -> Result<(), String> {
    if kind.is_empty() {
        return Err("a generic resource's kind is empty: name it, like SSD".into());
    }
    if let Some(c) = kind
        .chars()
        .find(|c| *c == '=' || *c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "invalid generic resource kind {kind:?}: {c:?} is not allowed in a kind"
        ));
    }
    Ok(())
}

/// The inventory that the flags `KIND=VALUE` (in order) advertise.
pub fn parse(flags: &[String]) -> Result<Inventory, GenericError> {
    let mut out = Inventory::new();
    for flag in flags {
        let (kind, value) = flag
            .split_once('=')
            .filter(|(_, v)| !v.is_empty())
            .ok_or_else(|| GenericError::Syntax(flag.clone()))?;
        check_kind(kind).map_err(|why| GenericError::Kind {
            given: flag.clone(),
            why,
        })?;
        if value.contains(',') || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(GenericError::Kind {
                given: flag.clone(),
                why: "a unit's name has no ',' and no spaces".into(),
            });
        }
        let units = out.get_mut(kind);
        match (value.parse::<u64>(), units) {
            (Ok(n), None) => {
                out.insert(kind.to_string(), Units::Discrete(n));
            }
            (Ok(_), Some(Units::Discrete(_))) => {
                return Err(GenericError::TwiceCounted(kind.to_string()))
            }
            (Err(_), None) => {
                out.insert(kind.to_string(), Units::Named(vec![value.to_string()]));
            }
            (Err(_), Some(Units::Named(names))) => {
                if names.iter().any(|n| n == value) {
                    return Err(GenericError::TwiceNamed {
                        kind: kind.to_string(),
                        unit: value.to_string(),
                    });
                }
                names.push(value.to_string());
            }
            (Ok(_), Some(Units::Named(_))) | (Err(_), Some(Units::Discrete(_))) => {
                return Err(GenericError::Mixed(kind.to_string()))
            }
        }
    }
    Ok(out)
}

/// The environment variable a task given named units of `kind` sees (Swarm's name, the
/// kind as written): `DOCKER_RESOURCE_NVIDIA-GPU=GPU-1,GPU-2`.
pub fn env_var(kind: &str, units: &[String]) -> (String, String) {
    (format!("DOCKER_RESOURCE_{kind}"), units.join(","))
}

/// The inventory as flags again, `KIND=VALUE` (for `berth node inspect`).
pub fn describe(inventory: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, units) in inventory {
        match units {
            Units::Discrete(n) => out.push(format!("{kind}={n}")),
            Units::Named(names) => out.extend(names.iter().map(|n| format!("{kind}={n}"))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: &[&str]) -> Result<Inventory, GenericError> {
        parse(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn named_and_discrete() {
        let inv = flags(&["NVIDIA-GPU=GPU-1", "SSD=3", "NVIDIA-GPU=GPU-2"]).unwrap();
        assert_eq!(
            inv["NVIDIA-GPU"],
            Units::Named(vec!["GPU-1".into(), "GPU-2".into()])
        );
        assert_eq!(inv["SSD"], Units::Discrete(3));
        assert_eq!(
            describe(&inv),
            ["NVIDIA-GPU=GPU-1", "NVIDIA-GPU=GPU-2", "SSD=3"]
        );
    }

    #[test]
    fn refusals() {
        for (given, want) in [
            (&["SSD"][..], "invalid generic resource \"SSD\": expected KIND=VALUE, like SSD=3 or NVIDIA-GPU=GPU-8e1a"),
            (&["=3"], "invalid generic resource \"=3\": a generic resource's kind is empty: name it, like SSD"),
            (&["SSD=3", "SSD=GPU"], "generic resource SSD is given both as a count and as named units; give it one way"),
            (&["SSD=3", "SSD=1"], "generic resource SSD is given as a count twice; give it once, with the total"),
            (&["GPU=a", "GPU=a"], "generic resource GPU names unit \"a\" twice"),
        ] {
            assert_eq!(flags(given).unwrap_err().to_string(), want, "{given:?}");
        }
    }
}

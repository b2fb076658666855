//! Why a task is pending: every node's rejection, counted by reason, in the words
//! `berth ps` shows: `no suitable node (2 nodes: constraint node.labels.tier == gpu not
//! met; 1 node: insufficient memory: needs 512 MiB, 288 MiB free of 800 MiB)`.

use std::fmt;

use super::filters::Rejection;
use crate::state::model::Availability;

/// Why a task was not placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// Every node was rejected: each reason with how many nodes gave it, in pipeline
    /// order (empty: the cluster has no nodes).
    NoSuitableNode(Vec<Rejected>),
    /// The task's service is no longer deployed (the orchestrator removes the task).
    NoService,
    /// A global service's task whose node (its id) the store no longer has (the
    /// orchestrator removes the task).
    NodeGone(String),
}

/// One reason and how many nodes gave it. For reservations, the figures are the
/// best among those nodes (the most free, the largest capacity): how far the closest
/// node is from fitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub nodes: u32,
    pub why: Rejection,
}

/// Counts rejections by reason while the filters run.
#[derive(Debug, Default, Clone)]
pub(super) struct Tally(Vec<Rejected>);

impl Tally {
    pub fn add(&mut self, why: Rejection) {
        for r in &mut self.0 {
            match (&mut r.why, &why) {
                (
                    Rejection::Cpu { free, capacity, .. },
                    Rejection::Cpu {
                        free: f,
                        capacity: c,
                        ..
                    },
                )
                | (
                    Rejection::Memory { free, capacity, .. },
                    Rejection::Memory {
                        free: f,
                        capacity: c,
                        ..
                    },
                ) => {
                    *free = (*free).max(*f);
                    *capacity = (*capacity).max(*c);
                }
                (
                    Rejection::Generic {
                        kind,
                        free,
                        capacity,
                        ..
                    },
                    Rejection::Generic {
                        kind: k,
                        free: f,
                        capacity: c,
                        ..
                    },
                ) if kind == k => {
                    *free = (*free).max(*f);
                    *capacity = (*capacity).max(*c);
                }
                (a, b) if a == b => {}
                _ => continue,
            }
            r.nodes += 1;
            return;
        }
        self.0.push(Rejected { nodes: 1, why });
    }

    /// The pending reason, reasons in pipeline order (stable: first seen first within
    /// a filter).
    pub fn pending(&self) -> Pending {
        let mut list = self.0.clone();
        list.sort_by_key(|r| order(&r.why));
        Pending::NoSuitableNode(list)
    }
}

fn order(why: &Rejection) -> u8 {
    match why {
        Rejection::NotReady => 0,
        Rejection::Unavailable(_) => 1,
        Rejection::Platform { .. } => 2,
        Rejection::Constraint(_) => 3,
        Rejection::Cpu { .. } => 4,
        Rejection::Memory { .. } => 5,
        Rejection::Generic { .. } => 6,
        Rejection::Port { .. } => 7,
        Rejection::MaxReplicas(_) => 8,
    }
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pending::NoService => f.write_str("its service is no longer deployed"),
            Pending::NodeGone(id) => write!(f, "its node {id} is no longer in the cluster"),
            Pending::NoSuitableNode(list) if list.is_empty() => {
                f.write_str("no suitable node (the cluster has no nodes)")
            }
            Pending::NoSuitableNode(list) => {
                f.write_str("no suitable node (")?;
                for (i, r) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    let noun = if r.nodes == 1 { "node" } else { "nodes" };
                    write!(f, "{} {noun}: ", r.nodes)?;
                    explain(f, &r.why, r.nodes)?;
                }
                f.write_str(")")
            }
        }
    }
}

/// One rejection's words; `nodes` tells one node's figures from the best of several.
fn explain(f: &mut fmt::Formatter<'_>, why: &Rejection, nodes: u32) -> fmt::Result {
    match why {
        Rejection::NotReady => f.write_str("not ready"),
        Rejection::Unavailable(Availability::Drain) => f.write_str("drained"),
        Rejection::Unavailable(a) => write!(f, "availability {}", a.as_str()),
        Rejection::Platform { wanted } => {
            let os = if wanted.os.is_empty() {
                "*"
            } else {
                &wanted.os
            };
            let arch = if wanted.arch.is_empty() {
                "*"
            } else {
                &wanted.arch
            };
            write!(f, "platform is not {os}/{arch}")
        }
        Rejection::Constraint(c) => write!(f, "constraint {c} not met"),
        Rejection::Cpu {
            needed,
            free,
            capacity,
        } => {
            f.write_str("insufficient cpu: ")?;
            resource(
                f,
                nodes,
                cpus(*needed),
                cpus(*free),
                cpus(*capacity),
                *needed > *capacity,
                *capacity == 0,
            )
        }
        Rejection::Memory {
            needed,
            free,
            capacity,
        } => {
            f.write_str("insufficient memory: ")?;
            resource(
                f,
                nodes,
                bytes(*needed),
                bytes(*free),
                bytes(*capacity),
                *needed > *capacity,
                *capacity == 0,
            )
        }
        Rejection::Generic {
            kind,
            needed,
            free,
            capacity,
        } => {
            write!(f, "insufficient generic resource {kind}: ")?;
            match (*capacity == 0, nodes == 1) {
                (true, true) => write!(f, "needs {needed}, the node has none"),
                (true, false) => write!(f, "needs {needed}, the nodes have none"),
                (false, _) => resource(
                    f,
                    nodes,
                    needed.to_string(),
                    free.to_string(),
                    capacity.to_string(),
                    *needed > *capacity,
                    false,
                ),
            }
        }
        Rejection::Port { protocol, range } => {
            write!(f, "host port {range}/{protocol} already in use")
        }
        Rejection::MaxReplicas(n) => write!(f, "max_replicas_per_node ({n}) reached"),
    }
}

fn resource(
    f: &mut fmt::Formatter<'_>,
    nodes: u32,
    needed: String,
    free: String,
    capacity: String,
    too_big: bool,
    unreported: bool,
) -> fmt::Result {
    match (nodes == 1, unreported, too_big) {
        (true, true, _) => write!(f, "needs {needed}, the node reported no capacity"),
        (false, true, _) => write!(f, "needs {needed}, the nodes reported no capacity"),
        (true, false, true) => write!(f, "needs {needed}, more than the node has ({capacity})"),
        (false, false, true) => {
            write!(
                f,
                "needs {needed}, more than any of them has (largest {capacity})"
            )
        }
        (true, false, false) => write!(f, "needs {needed}, {free} free of {capacity}"),
        (false, false, false) => write!(f, "needs {needed}, at most {free} free"),
    }
}

/// Millicores as CPUs: `0.25 CPUs`, `2 CPUs`.
fn cpus(milli: u64) -> String {
    let whole = milli / 1000;
    let frac = milli % 1000;
    let noun = if milli == 1000 { "CPU" } else { "CPUs" };
    if frac == 0 {
        format!("{whole} {noun}")
    } else {
        let frac = format!("{frac:03}");
        format!("{whole}.{} {noun}", frac.trim_end_matches('0'))
    }
}

/// Bytes in binary units, at most one decimal: `512 MiB`, `1.5 GiB`, `300 B`.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in UNITS {
        let size = 1u64 << shift;
        if n >= size {
            let tenths = (u128::from(n) * 10 / u128::from(size)) as u64;
            return if tenths.is_multiple_of(10) {
                format!("{} {unit}", tenths / 10)
            } else {
                format!("{}.{} {unit}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_as_a_person_writes_them() {
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(300), "300 B");
        assert_eq!(cpus(250), "0.25 CPUs");
        assert_eq!(cpus(1000), "1 CPU");
        assert_eq!(cpus(2500), "2.5 CPUs");
        assert_eq!(cpus(0), "0 CPUs");
    }
}

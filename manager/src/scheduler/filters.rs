//! The filters: what a service's tasks need ([`Needs`], read once per service), what a
//! node offers in this pass ([`NodeState`]), and one small function per filter that
//! either passes or says why not ([`Rejection`]).
//!
//! Two kinds, because they cost differently. The *static* filters (ready,
//! availability, platform, constraints) look only at the node's record, so they run
//! once per service and node. The *dynamic* ones (reservations, host ports,
//! `max_replicas_per_node`) look at what is already on the node, which placing tasks
//! changes; they run when the ranking proposes a node. Within one pass a dynamic
//! rejection is final for the whole service: its tasks all need the same, and a pass
//! only ever adds to a node.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use spec::generic::Units;

use spec::constraint::{spread_label, ConstraintKey};
use spec::model::{Constraint, GenericResource, PortMode, PortRange, Protocol, Service};

use crate::state::model::{Availability, NodeRecord, Platform};

/// What every task of one service needs of a node.
#[derive(Debug, Clone, Default)]
pub(super) struct Needs<'a> {
    pub constraints: &'a [Constraint],
    /// The image's platform, normalized (None: unknown, any node will do).
    pub platform: Option<Platform>,
    pub millicpus: u64,
    pub memory: u64,
    /// `generic_resources` reservations: how many units of each kind.
    pub generic: Vec<(&'a str, u64)>,
    /// Host-mode published ports: each needs one free port of its range on the node.
    pub ports: Vec<(Protocol, PortRange)>,
    /// `max_replicas_per_node`; 0 is no limit, as in Swarm.
    pub max_per_node: u32,
    /// The labels of `placement.preferences` spreads, outermost first (None: a key that
    /// names no node label, so every node has the same, absent, value).
    pub spread: Vec<Option<&'a str>>,
}

impl<'a> Needs<'a> {
    /// Reads a service's placement, reservations and ports. The image's platform is the
    /// service's `platform:` when it says one, else what `images` knows of its image.
    pub fn of(service: &'a Service, images: &BTreeMap<String, Platform>) -> Needs<'a> {
        let deploy = service.deploy.as_ref();
        let placement = deploy.and_then(|d| d.placement.as_ref());
        let reservations = deploy
            .and_then(|d| d.resources.as_ref())
            .and_then(|r| r.reservations.as_ref());
        let platform = service
            .platform
            .as_deref()
            .map(parse_platform)
            .or_else(|| {
                let image = service.image.as_deref()?;
                images.get(image).map(normalize)
            })
            .filter(|p| !p.is_unknown());
        Needs {
            constraints: placement.map_or(&[], |p| p.constraints.as_slice()),
            platform,
            millicpus: reservations.and_then(|r| r.cpus).map_or(0, millicpus_of),
            memory: reservations.and_then(|r| r.memory).unwrap_or(0),
            generic: reservations
                .map(|r| {
                    r.generic_resources
                        .iter()
                        .filter_map(|g| match g {
                            GenericResource::DiscreteResourceSpec { kind, value } => {
                                Some((kind.as_str(), *value))
                            }
                            // Refused by the loader.
                            GenericResource::NamedResourceSpec { .. } => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            ports: service
                .ports
                .iter()
                .filter(|p| p.mode == PortMode::Host)
                .filter_map(|p| Some((p.protocol, p.published?)))
                .collect(),
            max_per_node: placement.and_then(|p| p.max_replicas_per_node).unwrap_or(0),
            spread: placement
                .map(|p| {
                    p.preferences
                        .iter()
                        .map(|pref| spread_label(&pref.spread))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Compose's `cpus` (a fraction of CPUs) in millicores, rounded up so a reservation is
/// never under-counted; a negative or non-finite value reserves nothing.
pub(super) fn millicpus_of(cpus: f64) -> u64 {
    if cpus.is_finite() && cpus > 0.0 {
        (cpus * 1000.0).ceil() as u64
    } else {
        0
    }
}

/// `linux/arm64/v8` -> linux, arm64 (the variant is not compared).
fn parse_platform(s: &str) -> Platform {
    let mut parts = s.split('/');
    normalize(&Platform {
        os: parts.next().unwrap_or("").to_string(),
        arch: parts.next().unwrap_or("").to_string(),
    })
}

/// A platform in Go's names, lowercase: what `uname -m` says (x86_64, aarch64) and what
/// image indexes say (amd64, arm64) must compare equal.
pub(super) fn normalize(p: &Platform) -> Platform {
    Platform {
        os: p.os.trim().to_ascii_lowercase(),
        arch: normalize_arch(&p.arch),
    }
}

fn normalize_arch(arch: &str) -> String {
    let arch = arch.trim().to_ascii_lowercase();
    match arch.as_str() {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        "armv7l" | "armhf" | "armv6l" => "arm".into(),
        "i386" | "i686" => "386".into(),
        _ => arch,
    }
}

/// One node as the scheduler sees it in a pass: its record, its readiness (given by
/// the caller) and what is on it, counters that placing a task updates.
#[derive(Debug)]
pub(super) struct NodeState<'a> {
    pub record: &'a NodeRecord,
    pub ready: bool,
    pub platform: Platform,
    /// Tasks on it (every service), including those placed in this pass.
    pub tasks: u32,
    pub reserved_millicpus: u64,
    pub reserved_memory: u64,
    /// Units of its discrete generic resources its tasks reserve, by kind.
    pub reserved_generic: HashMap<&'a str, u64>,
    /// Its named generic resource units its tasks hold, by kind.
    pub taken_units: HashMap<&'a str, BTreeSet<&'a str>>,
    /// Host ports taken by its tasks.
    pub ports: HashSet<(Protocol, u16)>,
}

impl<'a> NodeState<'a> {
    pub fn new(record: &'a NodeRecord, ready: bool) -> NodeState<'a> {
        NodeState {
            record,
            ready,
            platform: normalize(&record.platform),
            tasks: 0,
            reserved_millicpus: 0,
            reserved_memory: 0,
            reserved_generic: HashMap::new(),
            taken_units: HashMap::new(),
            ports: HashSet::new(),
        }
    }

    /// Counts a task already on the node: what its service needs, and the named units
    /// the task holds (`held`, from its record: which units are taken is the task's
    /// to say, not its service's).
    pub fn take_existing(&mut self, needs: &Needs<'_>, held: &BTreeMap<String, Vec<String>>) {
        self.take_counts(needs);
        let record: &'a NodeRecord = self.record;
        for (kind, units) in held {
            // Only units the node still advertises count (its flags may have changed).
            let Some((kind, Units::Named(names))) = record.generic_resources.get_key_value(kind)
            else {
                continue;
            };
            let taken = self.taken_units.entry(kind.as_str()).or_default();
            for name in names.iter().filter(|n| units.contains(n)) {
                taken.insert(name.as_str());
            }
        }
    }

    /// Counts a new task of a service needing `needs` as running here, and gives it
    /// the first free units of each named kind it reserves (by kind; empty if it
    /// reserves none). The filters have checked there are enough.
    pub fn take_new(&mut self, needs: &Needs<'_>) -> BTreeMap<String, Vec<String>> {
        self.take_counts(needs);
        let record: &'a NodeRecord = self.record;
        let mut given = BTreeMap::new();
        for (kind, n) in &needs.generic {
            let Some((kind, Units::Named(names))) = record.generic_resources.get_key_value(*kind)
            else {
                continue;
            };
            let taken = self.taken_units.entry(kind.as_str()).or_default();
            let units: Vec<&'a str> = names
                .iter()
                .map(String::as_str)
                .filter(|u| !taken.contains(u))
                .take(*n as usize)
                .collect();
            taken.extend(units.iter().copied());
            given.insert(
                kind.clone(),
                units.into_iter().map(str::to_string).collect(),
            );
        }
        given
    }

    /// The counters every task moves: tasks, CPU, memory, discrete kinds, ports.
    fn take_counts(&mut self, needs: &Needs<'_>) {
        let record: &'a NodeRecord = self.record;
        for (kind, n) in &needs.generic {
            if let Some((kind, Units::Discrete(_))) = record.generic_resources.get_key_value(*kind)
            {
                let r = self.reserved_generic.entry(kind.as_str()).or_default();
                *r = r.saturating_add(*n);
            }
        }
        self.tasks += 1;
        self.reserved_millicpus = self.reserved_millicpus.saturating_add(needs.millicpus);
        self.reserved_memory = self.reserved_memory.saturating_add(needs.memory);
        for (protocol, range) in &needs.ports {
            // A range publishes one of its ports; which one the node picked is not
            // recorded in the task, so the lowest free one stands for it.
            if let Some(port) =
                (range.start..=range.end).find(|p| !self.ports.contains(&(*protocol, *p)))
            {
                self.ports.insert((*protocol, port));
            }
        }
    }

    fn free_millicpus(&self) -> u64 {
        self.record
            .capacity
            .millicpus
            .saturating_sub(self.reserved_millicpus)
    }

    fn free_memory(&self) -> u64 {
        self.record
            .capacity
            .memory
            .saturating_sub(self.reserved_memory)
    }

    /// How many units of generic resource `kind` the node has, and how many are free.
    fn generic(&self, kind: &str) -> (u64, u64) {
        match self.record.generic_resources.get(kind) {
            None => (0, 0),
            Some(Units::Discrete(n)) => {
                let used = self.reserved_generic.get(kind).copied().unwrap_or(0);
                (*n, n.saturating_sub(used))
            }
            Some(Units::Named(names)) => {
                let taken = self.taken_units.get(kind).map_or(0, BTreeSet::len);
                let total = names.len() as u64;
                (total, total.saturating_sub(taken as u64))
            }
        }
    }

    /// The node's value of a constraint's key (None: it has no such label or attribute).
    fn attribute(&self, key: &ConstraintKey) -> Option<&str> {
        let r = self.record;
        match key {
            ConstraintKey::NodeId => Some(&r.id),
            ConstraintKey::NodeHostname => Some(&r.hostname),
            ConstraintKey::NodeRole => Some(r.role.as_str()),
            ConstraintKey::NodeLabel(name) => r.labels.get(name).map(String::as_str),
            ConstraintKey::PlatformOs => Some(&self.platform.os)
                .filter(|s| !s.is_empty())
                .map(String::as_str),
            ConstraintKey::PlatformArch => Some(&self.platform.arch)
                .filter(|s| !s.is_empty())
                .map(String::as_str),
            ConstraintKey::EngineLabel(_) | ConstraintKey::Unknown(_) => None,
        }
    }
}

/// Why one node cannot take a task: one variant per filter, in pipeline order (the
/// order pending reasons list them in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Its heartbeats are not current.
    NotReady,
    /// Paused or drained.
    Unavailable(Availability),
    /// The image's platform differs from the node's (`wanted` is the image's).
    Platform { wanted: Platform },
    /// The first of the service's constraints the node does not meet.
    Constraint(Constraint),
    /// Not enough unreserved CPU: `needed` and `free` in millicores, `capacity` the
    /// node's whole.
    Cpu {
        needed: u64,
        free: u64,
        capacity: u64,
    },
    /// Not enough unreserved memory, in bytes.
    Memory {
        needed: u64,
        free: u64,
        capacity: u64,
    },
    /// Not enough free units of a generic resource (`capacity`: all the node has, 0
    /// when it advertises none of the kind).
    Generic {
        kind: String,
        needed: u64,
        free: u64,
        capacity: u64,
    },
    /// A host-mode port the task publishes is taken (every port of its range).
    Port {
        protocol: Protocol,
        range: PortRange,
    },
    /// It already runs `max_replicas_per_node` tasks of the service.
    MaxReplicas(u32),
}

pub(super) fn ready(node: &NodeState<'_>) -> Result<(), Rejection> {
    if node.ready {
        Ok(())
    } else {
        Err(Rejection::NotReady)
    }
}

pub(super) fn availability(node: &NodeState<'_>) -> Result<(), Rejection> {
    match node.record.availability {
        Availability::Active => Ok(()),
        other => Err(Rejection::Unavailable(other)),
    }
}

/// Both known and different, field by field: an unknown os or arch on either side
/// matches anything (a node that did not report its platform is trusted).
pub(super) fn platform(needs: &Needs<'_>, node: &NodeState<'_>) -> Result<(), Rejection> {
    let Some(wanted) = &needs.platform else {
        return Ok(());
    };
    let differs = |a: &str, b: &str| !a.is_empty() && !b.is_empty() && a != b;
    if differs(&wanted.os, &node.platform.os) || differs(&wanted.arch, &node.platform.arch) {
        Err(Rejection::Platform {
            wanted: wanted.clone(),
        })
    } else {
        Ok(())
    }
}

pub(super) fn constraints(needs: &Needs<'_>, node: &NodeState<'_>) -> Result<(), Rejection> {
    match needs
        .constraints
        .iter()
        .find(|c| !c.matches(node.attribute(&c.key)))
    {
        Some(c) => Err(Rejection::Constraint(c.clone())),
        None => Ok(()),
    }
}

/// The static filters, in order: the first that rejects says why.
pub(super) fn static_check(needs: &Needs<'_>, node: &NodeState<'_>) -> Result<(), Rejection> {
    ready(node)?;
    availability(node)?;
    platform(needs, node)?;
    constraints(needs, node)
}

/// Reservations against what the node has left; a node that reported no capacity has
/// nothing to give a task that reserves.
pub(super) fn resources(needs: &Needs<'_>, node: &NodeState<'_>) -> Result<(), Rejection> {
    if needs.millicpus > node.free_millicpus() {
        return Err(Rejection::Cpu {
            needed: needs.millicpus,
            free: node.free_millicpus(),
            capacity: node.record.capacity.millicpus,
        });
    }
    if needs.memory > node.free_memory() {
        return Err(Rejection::Memory {
            needed: needs.memory,
            free: node.free_memory(),
            capacity: node.record.capacity.memory,
        });
    }
    for (kind, needed) in &needs.generic {
        let (capacity, free) = node.generic(kind);
        if *needed > free {
            return Err(Rejection::Generic {
                kind: kind.to_string(),
                needed: *needed,
                free,
                capacity,
            });
        }
    }
    Ok(())
}

pub(super) fn host_ports(needs: &Needs<'_>, node: &NodeState<'_>) -> Result<(), Rejection> {
    for (protocol, range) in &needs.ports {
        if (range.start..=range.end).all(|p| node.ports.contains(&(*protocol, p))) {
            return Err(Rejection::Port {
                protocol: *protocol,
                range: *range,
            });
        }
    }
    Ok(())
}

/// `service_tasks`: the service's tasks on the node, this pass's included.
pub(super) fn max_replicas(needs: &Needs<'_>, service_tasks: u32) -> Result<(), Rejection> {
    if needs.max_per_node > 0 && service_tasks >= needs.max_per_node {
        Err(Rejection::MaxReplicas(needs.max_per_node))
    } else {
        Ok(())
    }
}

/// The dynamic filters, in order.
pub(super) fn dynamic_check(
    needs: &Needs<'_>,
    node: &NodeState<'_>,
    service_tasks: u32,
) -> Result<(), Rejection> {
    resources(needs, node)?;
    host_ports(needs, node)?;
    max_replicas(needs, service_tasks)
}

//! The state's data: everything the store holds ([`State`]: stacks and tasks, the
//! cluster's own record and one record per node) and the changes a transaction makes
//! to it ([`Op`]), as plain values. Pure: the replicated state machine
//! ([`super::replicated`]) and the store ([`super::store`]) both build on it, and it
//! knows neither; nor anything else of the manager.
//!
//! The cluster's record: its CA, its join tokens, the ids it removed. The CA's key is
//! replicated with the rest of the state, as swarmkit does, so that any manager can
//! admit a joiner: the Raft directory it lives in is root's only (0700, files 0600),
//! like the node's own key.

use std::collections::{BTreeMap, BTreeSet};

use pki::NodeRole;
use serde::{Deserialize, Serialize};
use spec::task::{StackRecord, Task};

/// Everything the store holds. `version` counts committed transactions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u64,
    pub stacks: BTreeMap<String, StackRecord>,
    pub tasks: BTreeMap<String, Task>,
    /// The cluster this store belongs to (None: a single host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRecord>,
    /// The cluster's nodes by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, NodeRecord>,
    /// The id of the last applied transaction (`Txn::id`; 0 before any that had one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_txn: u64,
    /// Git-ops sources by name, with what each did to its stacks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gitops: BTreeMap<String, super::gitops::Source>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The cluster's record: made by `berth cluster init`, absent on a single host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: String,
    /// Unix milliseconds.
    pub created_at: u64,
    /// The cluster CA (PEM), certificate and key.
    pub ca_cert: String,
    pub ca_key: String,
    /// The current join tokens (`BERTHTKN-1-...`); rotating one replaces it here, and
    /// the old one stops working on every manager at once.
    pub worker_token: String,
    pub manager_token: String,
    /// The Raft id the next manager gets. Raft ids are never reused: a removed
    /// member's id coming back would confuse the log's history of configurations.
    pub next_raft_id: u64,
    /// Node ids removed from the cluster: their certificates are refused (the TLS deny
    /// list), for as long as the cluster lives.
    #[serde(default)]
    pub removed: BTreeSet<String>,
    /// Its settings (`berth cluster update`); left out of the JSON while they are the
    /// defaults, so a state written before they existed keeps its hash.
    #[serde(default, skip_serializing_if = "ClusterSettings::is_default")]
    pub settings: ClusterSettings,
}

/// The cluster's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// How long a node may go without a heartbeat before it is down and its tasks are
    /// replaced, in ms (0: [`ClusterSettings::DEFAULT_NODE_GRACE`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub node_grace_ms: u64,
    /// Services spread unevenly are not rebalanced when a node joins or returns
    /// (Swarm's behaviour; berth rebalances by default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_rebalance: bool,
}

impl ClusterSettings {
    pub const DEFAULT_NODE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

    pub fn is_default(&self) -> bool {
        *self == ClusterSettings::default()
    }

    pub fn node_grace(&self) -> std::time::Duration {
        match self.node_grace_ms {
            0 => Self::DEFAULT_NODE_GRACE,
            ms => std::time::Duration::from_millis(ms),
        }
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The id in its certificate.
    pub id: String,
    pub role: NodeRole,
    /// Where other nodes reach its cluster port (`ip:port`).
    pub addr: String,
    pub hostname: String,
    /// Its Raft id while it is a manager (0: none).
    #[serde(default)]
    pub raft_id: u64,
    /// Unix milliseconds.
    pub joined_at: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Whether the scheduler may place tasks here (`berth node update --availability`).
    /// Like the two below, left out of the JSON while it has its default, so a state
    /// written before these fields existed keeps its hash.
    #[serde(default, skip_serializing_if = "Availability::is_active")]
    pub availability: Availability,
    /// Its os and architecture as the node reported them (empty: not reported).
    #[serde(default, skip_serializing_if = "Platform::is_unknown")]
    pub platform: Platform,
    /// What it offers to tasks' reservations (zero: not reported).
    #[serde(default, skip_serializing_if = "Capacity::is_zero")]
    pub capacity: Capacity,
    /// Its generic resources by kind (`berth daemon --node-generic-resource`), which
    /// tasks' `generic_resources` reservations take from (empty: none advertised).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generic_resources: spec::generic::Inventory,
}

/// A node's availability for new tasks, as Swarm's: `pause` places nothing new there,
/// `drain` also moves its tasks away.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn is_active(&self) -> bool {
        *self == Availability::Active
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

/// An operating system and architecture in Go's (and OCI's) names: `linux`, `amd64`,
/// `arm64`. An empty field is unknown, and unknown matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arch: String,
}

impl Platform {
    pub fn is_unknown(&self) -> bool {
        self.os.is_empty() && self.arch.is_empty()
    }
}

/// What a node offers to reservations. CPUs are in millicores (1000 = one CPU; Compose's
/// `cpus: 0.25` is 250), memory in bytes: integers, so the record stays `Eq` and sums are
/// exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capacity {
    #[serde(default)]
    pub millicpus: u64,
    #[serde(default)]
    pub memory: u64,
}

impl Capacity {
    pub fn is_zero(&self) -> bool {
        self.millicpus == 0 && self.memory == 0
    }
}

/// One change to the state, as a transaction is replicated: the Raft log carries these,
/// not closures. [`diff`] makes them from two states, [`apply_ops`] replays them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    PutStack(String, Box<StackRecord>),
    DeleteStack(String),
    PutTask(String, Box<Task>),
    DeleteTask(String),
    SetCluster(Option<Box<ClusterRecord>>),
    PutNode(String, Box<NodeRecord>),
    DeleteNode(String),
    PutSource(String, Box<super::gitops::Source>),
    DeleteSource(String),
}

/// The changes that turn `old` into `new` (the version aside). Pure.
pub fn diff(old: &State, new: &State) -> Vec<Op> {
    fn changes<V: PartialEq + Clone>(
        old: &BTreeMap<String, V>,
        new: &BTreeMap<String, V>,
        put: impl Fn(String, Box<V>) -> Op,
        delete: impl Fn(String) -> Op,
    ) -> Vec<Op> {
        let gone = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| delete(k.clone()));
        let changed = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, v)| put(k.clone(), Box::new(v.clone())));
        gone.chain(changed).collect()
    }
    let mut ops = changes(&old.stacks, &new.stacks, Op::PutStack, Op::DeleteStack);
    ops.extend(changes(&old.tasks, &new.tasks, Op::PutTask, Op::DeleteTask));
    if old.cluster != new.cluster {
        ops.push(Op::SetCluster(new.cluster.clone().map(Box::new)));
    }
    ops.extend(changes(&old.nodes, &new.nodes, Op::PutNode, Op::DeleteNode));
    ops.extend(changes(
        &old.gitops,
        &new.gitops,
        Op::PutSource,
        Op::DeleteSource,
    ));
    ops
}

/// Replays `ops` on `state` (the version aside): what every replica does with a
/// committed transaction. Pure and deterministic. Takes the ops by value, so that the
/// records move into the state: a deploy's transaction holds thousands of tasks, and a
/// copy of each would only raise the manager's peak memory.
pub fn apply_ops(state: &mut State, ops: impl IntoIterator<Item = Op>) {
    for op in ops {
        match op {
            Op::PutStack(k, v) => {
                state.stacks.insert(k, *v);
            }
            Op::DeleteStack(k) => {
                state.stacks.remove(&k);
            }
            Op::PutTask(k, v) => {
                state.tasks.insert(k, *v);
            }
            Op::DeleteTask(k) => {
                state.tasks.remove(&k);
            }
            Op::SetCluster(c) => state.cluster = c.map(|c| *c),
            Op::PutNode(k, v) => {
                state.nodes.insert(k, *v);
            }
            Op::DeleteNode(k) => {
                state.nodes.remove(&k);
            }
            Op::PutSource(k, v) => {
                state.gitops.insert(k, *v);
            }
            Op::DeleteSource(k) => {
                state.gitops.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_record_of_an_older_berth_loads_and_keeps_its_form() {
        let old =
            r#"{"id":"n1","role":"worker","addr":"10.0.0.2:4243","hostname":"h","joined_at":0}"#;
        let node: NodeRecord = serde_json::from_str(old).unwrap();
        assert_eq!(node.availability, Availability::Active);
        assert!(node.platform.is_unknown() && node.capacity.is_zero());
        assert_eq!(
            serde_json::to_string(&node).unwrap(),
            old.replace(r#""joined_at""#, r#""raft_id":0,"joined_at""#)
        );
    }

    #[test]
    fn diffs_replay_to_the_new_state() {
        let stack = |name: &str| -> StackRecord {
            serde_json::from_str(&format!(r#"{{"stack":{{"name":"{name}"}}}}"#)).unwrap()
        };
        let task = |id: &str, slot: u32| -> Task {
            serde_json::from_value(serde_json::json!({
                "id": id, "stack": "a", "service": "web", "slot": slot, "generation": 1,
                "spec_hash": "h", "desired": "running", "status": {"state": "running"},
                "created_at": 0
            }))
            .unwrap()
        };
        let mut old = State::default();
        old.stacks.insert("a".into(), stack("a"));
        old.stacks.insert("b".into(), stack("b"));
        old.tasks.insert("t1".into(), task("t1", 1));
        old.tasks.insert("t2".into(), task("t2", 2));
        let mut new = old.clone();
        new.stacks.remove("b");
        new.stacks.insert("c".into(), stack("c"));
        new.tasks.get_mut("t1").unwrap().slot = 9;
        new.tasks.remove("t2");
        new.tasks.insert("t3".into(), task("t3", 3));
        let ops = diff(&old, &new);
        // Only what changed: b gone, c new, t1 changed, t2 gone, t3 new.
        assert_eq!(ops.len(), 5, "{ops:?}");
        let mut replayed = old.clone();
        apply_ops(&mut replayed, ops.clone());
        assert_eq!(replayed, new);
        assert!(diff(&new, &new).is_empty());
        // The ops survive the wire.
        let wire: Vec<Op> = serde_json::from_slice(&serde_json::to_vec(&ops).unwrap()).unwrap();
        assert_eq!(wire, ops);
    }
}

//! The state's data: everything the store holds ([`State`]) and the changes a
//! transaction makes to it ([`Op`]), as plain values. Pure: the replicated state machine
//! ([`super::replicated`]) and the store ([`super::store`]) both build on it, and it
//! knows neither.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spec::task::{StackRecord, Task};

use crate::cluster::model::{ClusterRecord, NodeRecord};

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
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    ops
}

/// Replays `ops` on `state` (the version aside): what every replica does with a
/// committed transaction. Pure and deterministic.
pub fn apply_ops(state: &mut State, ops: &[Op]) {
    for op in ops {
        match op {
            Op::PutStack(k, v) => {
                state.stacks.insert(k.clone(), (**v).clone());
            }
            Op::DeleteStack(k) => {
                state.stacks.remove(k);
            }
            Op::PutTask(k, v) => {
                state.tasks.insert(k.clone(), (**v).clone());
            }
            Op::DeleteTask(k) => {
                state.tasks.remove(k);
            }
            Op::SetCluster(c) => state.cluster = c.as_deref().cloned(),
            Op::PutNode(k, v) => {
                state.nodes.insert(k.clone(), (**v).clone());
            }
            Op::DeleteNode(k) => {
                state.nodes.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        apply_ops(&mut replayed, &ops);
        assert_eq!(replayed, new);
        assert!(diff(&new, &new).is_empty());
        // The ops survive the wire.
        let wire: Vec<Op> = serde_json::from_slice(&serde_json::to_vec(&ops).unwrap()).unwrap();
        assert_eq!(wire, ops);
    }
}

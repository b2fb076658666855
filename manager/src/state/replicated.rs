//! berth's [`State`] as a Raft [`StateMachine`]: what every manager applies, in the
//! same order, to end with the same stacks, tasks and version.
//!
//! A command is a [`Txn`]: the ops of one store transaction (see [`super::model::diff`])
//! and the version of the state they were computed from. Applying it is optimistic
//! concurrency control done by the log itself: if another transaction committed first
//! (`base_version` is no longer the state's version), the ops are not applied and the
//! proposer gets [`TxnResponse::Conflict`] and re-runs its closure on the fresh state.
//! So a transaction never overwrites a change it did not see, and no write is lost.
//!
//! The state lives in a [`Shared`] the [`super::store::Store`] reads from directly
//! (reads never go through the driver thread) and whose watch channel `apply` wakes.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::by_node::ByNode;
use super::model::{apply_ops, Op, State};
use super::raft::{RestoreError, StateMachine};

/// One store transaction as it sits in the Raft log (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    /// The version of the state `ops` were computed from.
    pub base_version: u64,
    pub ops: Vec<Op>,
    /// Its id (random, non-zero), which the state records as its `last_txn` once applied.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
    /// The id of the transaction that made the base state (`State::last_txn`), when the
    /// proposer knows it. A store pipelines its own transactions: each is computed on
    /// the state its predecessor will make, before that one is applied. Versions alone
    /// cannot tell that predecessor's state from another writer's at the same version;
    /// the id can, so a pipelined transaction never applies on a base it was not
    /// computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Txn {
    pub fn encode(&self) -> Vec<u8> {
        // Ops are plain data (strings, maps, numbers): they always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What applying a [`Txn`] answered its proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResponse {
    /// The ops were applied; the state is now at `version`.
    Applied { version: u64 },
    /// Another transaction committed first: the state is at `version`, not the base.
    Conflict { version: u64 },
    /// The command is not a transaction this version of berth can read.
    Invalid { message: String },
}

impl TxnResponse {
    pub fn decode(bytes: &[u8]) -> TxnResponse {
        serde_json::from_slice(bytes).unwrap_or_else(|e| TxnResponse::Invalid {
            message: format!("unreadable response from the state machine: {e}"),
        })
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The applied state and the channel that announces each new version, shared by the
/// state machine (which writes) and the stores over it (which read and watch).
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// The tasks by node: changed with `state`, under its lock (taken after it).
    by_node: Mutex<ByNode>,
}

impl Shared {
    fn new(state: State) -> Shared {
        let (changed, _) = watch::channel(state.version);
        Shared {
            by_node: Mutex::new(ByNode::of(&state)),
            state: Mutex::new(state),
            changed,
        }
    }

    fn index(&self) -> MutexGuard<'_, ByNode> {
        // Changed only after the state's ops ran, and in steps that cannot panic.
        self.by_node.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the state and the ids of `node`'s tasks in it.
    pub fn read_node<R>(
        &self,
        node: &str,
        f: impl FnOnce(&State, &mut dyn Iterator<Item = &String>) -> R,
    ) -> R {
        let state = self.lock();
        let index = self.index();
        let mut ids = index.tasks_of(node);
        let r = f(&state, &mut ids);
        drop(ids);
        r
    }

    /// A receiver that sees a new version whenever a transaction touches `node`'s
    /// tasks, the stacks they come from, or its record (see [`ByNode::follow`]).
    pub fn watch_node(&self, node: &str) -> watch::Receiver<u64> {
        self.index().watch(node)
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // Apply replaces the state only after the ops ran on it without panicking
        // (they cannot fail), so the state behind a poisoned lock is a whole one.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that sees the version after every applied transaction.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// The state machine: a handle on a [`Shared`].
#[derive(Debug, Clone)]
pub struct StoreMachine {
    shared: Arc<Shared>,
}

impl Default for StoreMachine {
    fn default() -> Self {
        StoreMachine::new(State::default())
    }
}

impl StoreMachine {
    pub fn new(state: State) -> StoreMachine {
        StoreMachine {
            shared: Arc::new(Shared::new(state)),
        }
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn canonical(state: &State) -> Vec<u8> {
        // Through serde_json::Value, whose maps are sorted: equal states give equal
        // bytes even if a nested type keeps a HashMap.
        serde_json::to_value(state)
            .and_then(|v| serde_json::to_vec(&v))
            .unwrap_or_default()
    }
}

/// The pure step: what a transaction does to a state and answers.
pub fn apply_txn(state: &mut State, txn: Txn) -> TxnResponse {
    if conflicts(state, &txn) {
        return TxnResponse::Conflict {
            version: state.version,
        };
    }
    let id = txn.id;
    apply_ops(state, txn.ops);
    state.version += 1;
    state.last_txn = id;
    TxnResponse::Applied {
        version: state.version,
    }
}

/// Whether `txn` was computed from another state than `state` (and so must not apply).
fn conflicts(state: &State, txn: &Txn) -> bool {
    txn.base_version != state.version || txn.after.is_some_and(|a| a != state.last_txn)
}

impl StateMachine for StoreMachine {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        let txn = match serde_json::from_slice::<Txn>(command) {
            Ok(txn) => txn,
            Err(e) => {
                return TxnResponse::Invalid {
                    message: format!("a committed store transaction cannot be read: {e}"),
                }
                .encode()
            }
        };
        let mut state = self.shared.lock();
        let mut index = self.shared.index();
        let touched = match conflicts(&state, &txn) {
            true => None,
            false => Some(index.follow(&state, &txn.ops)),
        };
        let resp = apply_txn(&mut state, txn);
        drop(state);
        if let (TxnResponse::Applied { version }, Some(touched)) = (&resp, touched) {
            index.signal(&touched, *version);
            drop(index);
            self.shared.changed.send_replace(*version);
        }
        resp.encode()
    }

    fn snapshot(&self) -> Vec<u8> {
        StoreMachine::canonical(&self.shared.lock())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let state: State = serde_json::from_slice(snapshot)
            .map_err(|e| RestoreError(format!("not a berth store snapshot: {e}")))?;
        let version = state.version;
        let mut current = self.shared.lock();
        self.shared.index().rebuild(&state);
        *current = state;
        drop(current);
        self.shared.changed.send_replace(version);
        Ok(())
    }

    fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.snapshot()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_stack(name: &str) -> Op {
        Op::PutStack(
            name.into(),
            Box::new(serde_json::from_str(&format!(r#"{{"stack":{{"name":"{name}"}}}}"#)).unwrap()),
        )
    }

    #[test]
    fn a_stale_transaction_conflicts_and_changes_nothing() {
        let mut sm = StoreMachine::default();
        let mut watch = sm.shared().watch();
        let txn = |base| Txn {
            base_version: base,
            ops: vec![put_stack("a")],
            id: 0,
            after: None,
        };
        let r = TxnResponse::decode(&sm.apply(2, &txn(0).encode()));
        assert_eq!(r, TxnResponse::Applied { version: 1 });
        assert_eq!(*watch.borrow_and_update(), 1);
        let before = sm.hash();
        let r = TxnResponse::decode(&sm.apply(3, &txn(0).encode()));
        assert_eq!(r, TxnResponse::Conflict { version: 1 });
        assert_eq!(sm.hash(), before);
        assert!(!watch.has_changed().unwrap());
        let r = TxnResponse::decode(&sm.apply(4, b"garbage"));
        assert!(matches!(r, TxnResponse::Invalid { .. }), "{r:?}");
        assert_eq!(sm.hash(), before);
    }

    /// A pipelined transaction names the one it was computed after: at the right
    /// version but after another writer's transaction, it does not apply.
    #[test]
    fn a_pipelined_transaction_applies_only_after_the_one_it_follows() {
        let mut sm = StoreMachine::default();
        let txn = |base, id, after, name| Txn {
            base_version: base,
            ops: vec![put_stack(name)],
            id,
            after: Some(after),
        };
        // Ours: 11 on the empty state, then 12 after 11.
        let r = TxnResponse::decode(&sm.apply(2, &txn(0, 11, 0, "a").encode()));
        assert_eq!(r, TxnResponse::Applied { version: 1 });
        assert_eq!(sm.shared().lock().last_txn, 11);
        // Another writer's 99 lands at version 1 first...
        let r = TxnResponse::decode(&sm.apply(3, &txn(1, 99, 11, "x").encode()));
        assert_eq!(r, TxnResponse::Applied { version: 2 });
        // ...so 13, computed after a 12 that never applied, conflicts at version 2
        // although the version matches.
        let before = sm.hash();
        let r = TxnResponse::decode(&sm.apply(4, &txn(2, 13, 12, "c").encode()));
        assert_eq!(r, TxnResponse::Conflict { version: 2 });
        assert_eq!(sm.hash(), before);
        let r = TxnResponse::decode(&sm.apply(5, &txn(2, 14, 99, "d").encode()));
        assert_eq!(r, TxnResponse::Applied { version: 3 });
    }

    #[test]
    fn snapshots_restore_the_same_state_and_hash() {
        let mut sm = StoreMachine::default();
        sm.apply(
            2,
            &Txn {
                base_version: 0,
                ops: vec![put_stack("a"), put_stack("b")],
                id: 0,
                after: None,
            }
            .encode(),
        );
        let mut other = StoreMachine::default();
        let mut watch = other.shared().watch();
        other.restore(&sm.snapshot()).unwrap();
        assert_eq!(other.hash(), sm.hash());
        assert_eq!(*other.shared().lock(), *sm.shared().lock());
        assert_eq!(*watch.borrow_and_update(), 1);
        assert!(other.restore(b"{").is_err());
    }
}

//! [`Kv`]: a small key-value state machine (put, compare-and-swap, append to a list).
//! It is what the Raft tests and the benchmark replicate; berth's own store plugs its
//! `State` in through the same [`StateMachine`] trait.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::state_machine::{RestoreError, StateMachine};

/// A command, as JSON in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    Put {
        key: String,
        value: String,
    },
    /// Sets `key` to `value` only if its current value is `expect` (None: absent).
    Cas {
        key: String,
        expect: Option<String>,
        value: String,
    },
    /// Appends `value` to the list at `key`.
    Append {
        key: String,
        value: String,
    },
}

impl KvCommand {
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvResponse {
    /// False for a failed compare-and-swap or an unreadable command.
    pub ok: bool,
    /// The value before the command (for an append: the list's length before).
    pub prev: Option<String>,
    /// The index the command was applied at.
    pub index: u64,
}

impl KvResponse {
    pub fn decode(bytes: &[u8]) -> Option<KvResponse> {
        serde_json::from_slice(bytes).ok()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    pub values: BTreeMap<String, String>,
    pub lists: BTreeMap<String, Vec<String>>,
    /// How many commands were applied (a determinism check in the hash).
    pub applied: u64,
}

impl StateMachine for Kv {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.applied += 1;
        let resp = match serde_json::from_slice::<KvCommand>(command) {
            Ok(KvCommand::Put { key, value }) => KvResponse {
                ok: true,
                prev: self.values.insert(key, value),
                index,
            },
            Ok(KvCommand::Cas { key, expect, value }) => {
                let cur = self.values.get(&key).cloned();
                let ok = cur == expect;
                if ok {
                    self.values.insert(key, value);
                }
                KvResponse {
                    ok,
                    prev: cur,
                    index,
                }
            }
            Ok(KvCommand::Append { key, value }) => {
                let list = self.lists.entry(key).or_default();
                list.push(value);
                KvResponse {
                    ok: true,
                    prev: Some((list.len() - 1).to_string()),
                    index,
                }
            }
            Err(_) => KvResponse {
                ok: false,
                prev: None,
                index,
            },
        };
        serde_json::to_vec(&resp).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        // BTreeMaps serialize in key order: equal states give equal bytes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        *self = serde_json::from_slice(snapshot).map_err(|e| RestoreError(e.to_string()))?;
        Ok(())
    }

    fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.snapshot()).into()
    }
}

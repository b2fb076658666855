//! The state a Raft group replicates, seen from the node driver.

/// A deterministic state machine: every node applies the same commands in the same
/// order and must end in the same state with the same responses.
///
/// `apply` must not fail on a command it cannot use: it answers with an error response
/// instead (a command is committed before any node looks at it, so refusing it would
/// stop the group). Implementations hold no clock, randomness or I/O.
pub trait StateMachine: Send + 'static {
    /// Applies the command committed at `index` and returns the response the proposer
    /// receives.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// The whole state as bytes, for a snapshot.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot's bytes.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;
    /// A digest of the state: equal on every node that applied the same entries.
    fn hash(&self) -> [u8; 32];
}

/// A snapshot a state machine cannot read.
#[derive(Debug, thiserror::Error)]
#[error("snapshot cannot be restored: {0}")]
pub struct RestoreError(pub String);

//! The ranking of one service's candidate nodes, kept ordered while its tasks are
//! placed, so that choosing a node costs a logarithm, not a scan of every node.
//!
//! Without spread preferences it is one min-heap of `(service tasks, all tasks, node
//! index)`: its top is the node with the fewest tasks of the service, then the fewest
//! tasks overall, then the smallest id (node indexes follow id order). A heap, not an
//! ordered set, because only the top is ever taken, changed or dropped, and a heap is
//! built in linear time: with many small services, building the ranking for each is
//! most of a pass.
//! With `spread: node.labels.KEY` preferences it is a tree (swarmkit's decision tree):
//! one level per preference, one branch per value of the label (nodes without it share
//! the branch of the empty value), each branch counting the service's tasks below it.
//! A choice descends into the branch with the fewest tasks (ties: the smaller value)
//! that still has a candidate, then takes the leaf's first node. So values are
//! balanced first, whatever the number of nodes behind each, as Swarm documents.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// A node's place in a leaf: the ranking key.
pub(super) type Key = (u32, u32, usize);

#[derive(Debug, Default)]
pub(super) struct Tree<'a> {
    /// The service's tasks on the candidate nodes below (placed ones included).
    count: u64,
    /// Candidate nodes below that no dynamic filter has ruled out.
    live: usize,
    /// One branch per label value; empty at a leaf.
    branches: BTreeMap<&'a str, Tree<'a>>,
    leaf: BinaryHeap<Reverse<Key>>,
}

impl<'a> Tree<'a> {
    /// Adds a candidate node at `path` (its label values, one per preference).
    pub fn insert(&mut self, path: &[&'a str], key: Key) {
        self.count += u64::from(key.0);
        self.live += 1;
        match path.split_first() {
            None => self.leaf.push(Reverse(key)),
            Some((value, rest)) => self.branches.entry(value).or_default().insert(rest, key),
        }
    }

    /// The best candidate, if any is left.
    pub fn best(&self) -> Option<Key> {
        if self.branches.is_empty() {
            return self.leaf.peek().map(|k| k.0);
        }
        self.branches
            .iter()
            .filter(|(_, b)| b.live > 0)
            .min_by_key(|(value, b)| (b.count, **value))
            .and_then(|(_, b)| b.best())
    }

    /// A task of the service was placed on the best node (at `path`): its key becomes
    /// `new`.
    pub fn placed(&mut self, path: &[&'a str], new: Key) {
        self.count += 1;
        match path.split_first() {
            None => {
                self.leaf.pop();
                self.leaf.push(Reverse(new));
            }
            Some((value, rest)) => {
                if let Some(b) = self.branches.get_mut(value) {
                    b.placed(rest, new);
                }
            }
        }
    }

    /// The best node (at `path`) can take no more of the service's tasks in this pass.
    pub fn remove_best(&mut self, path: &[&'a str]) {
        self.live = self.live.saturating_sub(1);
        match path.split_first() {
            None => {
                self.leaf.pop();
            }
            Some((value, rest)) => {
                if let Some(b) = self.branches.get_mut(value) {
                    b.remove_best(rest);
                }
            }
        }
    }
}

//! The state's tasks by node, and a signal per node that its tasks changed: what lets
//! the dispatcher answer a node's poll with a look at that node's tasks only, and wake
//! it only when a transaction touched them.
//!
//! A cluster of 1,000 nodes with 10 tasks each would otherwise pay, on every store
//! version, a scan of all 10,000 tasks for each of the 1,000 waiting polls (10 million
//! task visits per version, under the store's lock): that is what kept such a cluster
//! from ever converging (bench/dispatcher.md). Kept beside the state and changed in the
//! same step as it ([`super::replicated::StoreMachine::apply`]), so the two never
//! disagree.

use std::collections::{BTreeSet, HashMap};

use tokio::sync::watch;

use super::model::{Op, State};

/// Task ids by node, and the nodes' change signals.
#[derive(Debug, Default)]
pub struct ByNode {
    tasks: HashMap<String, BTreeSet<String>>,
    /// One per node something waits on; its value is the store version of the last
    /// transaction that touched the node's tasks, their stacks or its record.
    signals: HashMap<String, watch::Sender<u64>>,
}

impl ByNode {
    /// The index of `state`.
    pub fn of(state: &State) -> ByNode {
        let mut index = ByNode::default();
        index.rebuild(state);
        index
    }

    /// Indexes `state` afresh (a restored snapshot) and signals every node.
    pub fn rebuild(&mut self, state: &State) {
        self.tasks.clear();
        for (id, t) in &state.tasks {
            if let Some(node) = &t.node {
                self.tasks
                    .entry(node.clone())
                    .or_default()
                    .insert(id.clone());
            }
        }
        for signal in self.signals.values() {
            signal.send_replace(state.version);
        }
    }

    /// The ids of `node`'s tasks.
    pub fn tasks_of(&self, node: &str) -> impl Iterator<Item = &String> {
        self.tasks.get(node).into_iter().flatten()
    }

    /// A receiver of `node`'s signal.
    pub fn watch(&mut self, node: &str) -> watch::Receiver<u64> {
        self.signals
            .entry(node.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Follows `ops`, about to be applied to `before`, and returns the nodes whose view
    /// they may change: the old and new node of each task put or deleted, every node
    /// running a task of a stack put or deleted, each node record put or deleted.
    pub fn follow(&mut self, before: &State, ops: &[Op]) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        for op in ops {
            match op {
                Op::PutTask(id, task) => {
                    let old = before.tasks.get(id).and_then(|t| t.node.clone());
                    if old != task.node {
                        if let Some(old) = &old {
                            self.forget(old, id);
                        }
                        if let Some(new) = &task.node {
                            self.tasks
                                .entry(new.clone())
                                .or_default()
                                .insert(id.clone());
                        }
                    }
                    touched.extend(old);
                    touched.extend(task.node.clone());
                }
                Op::DeleteTask(id) => {
                    if let Some(old) = before.tasks.get(id).and_then(|t| t.node.clone()) {
                        self.forget(&old, id);
                        touched.insert(old);
                    }
                }
                Op::PutStack(name, _) | Op::DeleteStack(name) => {
                    touched.extend(
                        before
                            .tasks
                            .values()
                            .filter(|t| &t.stack == name)
                            .filter_map(|t| t.node.clone()),
                    );
                }
                Op::PutNode(id, _) | Op::DeleteNode(id) => {
                    touched.insert(id.clone());
                }
                // A node's view has no git-ops in it.
                Op::SetCluster(_) | Op::PutSource(..) | Op::DeleteSource(_) => {}
            }
        }
        touched
    }

    /// Tells the nodes `touched` that their view changed at `version`.
    pub fn signal(&self, touched: &BTreeSet<String>, version: u64) {
        for node in touched {
            if let Some(signal) = self.signals.get(node) {
                signal.send_replace(version);
            }
        }
    }

    fn forget(&mut self, node: &str, task: &str) {
        if let Some(set) = self.tasks.get_mut(node) {
            set.remove(task);
            if set.is_empty() {
                self.tasks.remove(node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::model::{apply_ops, diff};
    use spec::task::Task;

    fn task(id: &str, stack: &str, node: Option<&str>) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": id, "stack": stack, "service": "web", "slot": 1, "generation": 1,
            "spec_hash": "h", "desired": "running", "status": {}, "created_at": 0,
            "node": node,
        }))
        .expect("a task")
    }

    fn with(tasks: &[Task]) -> State {
        let mut s = State::default();
        for t in tasks {
            s.tasks.insert(t.id.clone(), t.clone());
        }
        s
    }

    /// Applies the change from `before` to `after` as the state machine does, and
    /// checks the index against one built from scratch.
    fn step(index: &mut ByNode, before: &State, after: &State) -> BTreeSet<String> {
        let ops = diff(before, after);
        let touched = index.follow(before, &ops);
        let mut applied = before.clone();
        apply_ops(&mut applied, ops);
        let fresh = ByNode::of(&applied);
        assert_eq!(index.tasks, fresh.tasks, "the index drifted from the state");
        touched
    }

    #[test]
    fn follows_tasks_that_come_move_and_go_and_names_the_nodes_touched() {
        let s0 = with(&[
            task("a", "app", Some("n1")),
            task("b", "app", Some("n2")),
            task("c", "other", None),
        ]);
        let mut index = ByNode::of(&s0);
        let mut rx = index.watch("n1");
        assert_eq!(index.tasks_of("n1").collect::<Vec<_>>(), ["a"]);

        // c placed on n3, a moved from n1 to n2.
        let s1 = with(&[
            task("a", "app", Some("n2")),
            task("b", "app", Some("n2")),
            task("c", "other", Some("n3")),
        ]);
        let touched = step(&mut index, &s0, &s1);
        assert_eq!(
            touched,
            BTreeSet::from(["n1".into(), "n2".into(), "n3".into()])
        );
        assert_eq!(index.tasks_of("n1").count(), 0);
        assert_eq!(index.tasks_of("n2").collect::<Vec<_>>(), ["a", "b"]);
        index.signal(&touched, 5);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 5);

        // Only b's status changes: n2 alone is touched.
        let mut s2 = s1.clone();
        s2.tasks.get_mut("b").unwrap().status.message = "x".into();
        let touched = step(&mut index, &s1, &s2);
        assert_eq!(touched, BTreeSet::from(["n2".into()]));
        index.signal(&touched, 6);
        assert!(!rx.has_changed().unwrap(), "n1 was not touched");

        // A stack changed: every node with a task of it.
        let mut s3 = s2.clone();
        s3.stacks.insert(
            "app".into(),
            serde_json::from_str(r#"{"stack":{"name":"app"}}"#).unwrap(),
        );
        assert_eq!(
            step(&mut index, &s2, &s3),
            BTreeSet::from(["n2".into()]),
            "n2 runs app's tasks; n3 runs none"
        );

        // Deleted.
        let mut s4 = s3.clone();
        s4.tasks.remove("c");
        assert_eq!(step(&mut index, &s3, &s4), BTreeSet::from(["n3".into()]));
    }
}

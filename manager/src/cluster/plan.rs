//! The pure planning the membership loop ([`super::membership`]) acts on, over the
//! cluster's records in the store ([`crate::state::model::NodeRecord`]): which Raft
//! configuration change comes next, whom to send Raft messages to, which manager has
//! which Raft id.

use std::collections::{BTreeMap, BTreeSet};

use pki::NodeRole;

use crate::state::model::NodeRecord;

/// What the Raft group looks like from its leader: the configuration, and how far each
/// member's log matches the leader's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Raft id -> the highest log index known to match the leader's.
    pub matched: BTreeMap<u64, u64>,
    pub last_index: u64,
}

/// The one Raft configuration change to make next (Raft makes them one at a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfStep {
    /// A new manager joins as a learner first: it catches up (a snapshot) without
    /// counting towards the quorum, so adding it cannot stall the group.
    AddLearner(u64),
    /// A learner that caught up becomes a voter.
    Promote(u64),
    /// A member that no manager record wants any more (demoted, removed).
    Remove(u64),
}

/// A learner counts as caught up when its log is this close to the leader's.
pub const CAUGHT_UP_LAG: u64 = 16;

/// The next configuration change that brings the Raft group to the managers the store
/// lists, if any. Pure.
///
/// Removals come first (a demoted manager should stop voting before anything else),
/// but never of the last voter; then new learners; then promotions of learners that
/// caught up.
pub fn next_conf_step(nodes: &BTreeMap<String, NodeRecord>, view: &RaftView) -> Option<ConfStep> {
    let wanted: BTreeSet<u64> = nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && n.raft_id != 0)
        .map(|n| n.raft_id)
        .collect();
    let members: BTreeSet<u64> = view.voters.iter().chain(&view.learners).copied().collect();
    let voters_wanted = view.voters.iter().filter(|v| wanted.contains(v)).count();
    if let Some(&gone) = view.learners.iter().find(|id| !wanted.contains(id)) {
        return Some(ConfStep::Remove(gone));
    }
    if let Some(&gone) = view.voters.iter().find(|id| !wanted.contains(id)) {
        // Removing a voter when no wanted voter would remain would leave no quorum.
        if voters_wanted > 0 {
            return Some(ConfStep::Remove(gone));
        }
    }
    if let Some(&new) = wanted.iter().find(|id| !members.contains(id)) {
        return Some(ConfStep::AddLearner(new));
    }
    view.learners
        .iter()
        .find(|id| {
            view.matched
                .get(id)
                .is_some_and(|&m| m + CAUGHT_UP_LAG >= view.last_index && m > 0)
        })
        .map(|&id| ConfStep::Promote(id))
}

/// The managers other than `me` that Raft messages go to: (raft id, node id, address).
pub fn raft_peers(nodes: &BTreeMap<String, NodeRecord>, me: &str) -> Vec<(u64, String, String)> {
    nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && n.raft_id != 0 && n.id != me)
        .map(|n| (n.raft_id, n.id.clone(), n.addr.clone()))
        .collect()
}

/// The manager with Raft id `raft_id`, if the store knows it.
pub fn manager_by_raft_id(
    nodes: &BTreeMap<String, NodeRecord>,
    raft_id: u64,
) -> Option<&NodeRecord> {
    nodes
        .values()
        .find(|n| n.role == NodeRole::Manager && n.raft_id == raft_id && raft_id != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, role: NodeRole, raft_id: u64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            role,
            addr: format!("10.0.0.{raft_id}:7377"),
            hostname: id.into(),
            raft_id,
            joined_at: 0,
            labels: BTreeMap::new(),
            availability: Default::default(),
            platform: Default::default(),
            capacity: Default::default(),
            generic_resources: Default::default(),
        }
    }

    fn nodes(list: &[NodeRecord]) -> BTreeMap<String, NodeRecord> {
        list.iter().map(|n| (n.id.clone(), n.clone())).collect()
    }

    fn view(voters: &[u64], learners: &[u64], matched: &[(u64, u64)], last: u64) -> RaftView {
        RaftView {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            matched: matched.iter().copied().collect(),
            last_index: last,
        }
    }

    #[test]
    fn a_new_manager_is_added_as_a_learner_then_promoted_once_caught_up() {
        let n = nodes(&[
            node("a", NodeRole::Manager, 1),
            node("b", NodeRole::Manager, 2),
        ]);
        assert_eq!(
            next_conf_step(&n, &view(&[1], &[], &[(1, 100)], 100)),
            Some(ConfStep::AddLearner(2))
        );
        // Far behind: not yet.
        assert_eq!(
            next_conf_step(&n, &view(&[1], &[2], &[(1, 100), (2, 3)], 100)),
            None
        );
        // Nothing known matched yet: not yet either.
        assert_eq!(
            next_conf_step(&n, &view(&[1], &[2], &[(1, 100)], 100)),
            None
        );
        assert_eq!(
            next_conf_step(&n, &view(&[1], &[2], &[(1, 100), (2, 95)], 100)),
            Some(ConfStep::Promote(2))
        );
        assert_eq!(
            next_conf_step(&n, &view(&[1, 2], &[], &[(1, 100), (2, 100)], 100)),
            None
        );
    }

    #[test]
    fn demoted_and_removed_managers_leave_the_group_but_never_the_last_voter() {
        let n = nodes(&[
            node("a", NodeRole::Manager, 1),
            node("b", NodeRole::Worker, 0),
        ]);
        assert_eq!(
            next_conf_step(&n, &view(&[1, 2], &[], &[], 10)),
            Some(ConfStep::Remove(2))
        );
        assert_eq!(
            next_conf_step(&n, &view(&[1], &[2], &[], 10)),
            Some(ConfStep::Remove(2))
        );
        // The store wants none of the voters: removing one would end the group.
        let none = nodes(&[node("b", NodeRole::Worker, 0)]);
        assert_eq!(next_conf_step(&none, &view(&[1], &[], &[], 10)), None);
    }

    #[test]
    fn workers_are_never_raft_members_nor_peers() {
        let n = nodes(&[
            node("a", NodeRole::Manager, 1),
            node("b", NodeRole::Manager, 2),
            node("w", NodeRole::Worker, 0),
        ]);
        assert_eq!(
            raft_peers(&n, "a"),
            vec![(2, "b".to_string(), "10.0.0.2:7377".to_string())]
        );
        assert_eq!(manager_by_raft_id(&n, 2).map(|n| n.id.as_str()), Some("b"));
        assert_eq!(manager_by_raft_id(&n, 0), None);
    }
}

//! Node liveness: which nodes are up, from their heartbeats. Heartbeats never go
//! through Raft (a write per node per second would be the cluster's busiest traffic and
//! would say nothing the next second does not): each manager keeps, in memory, when it
//! last heard from each node, and the leader, which every node heartbeats to, is the one
//! whose view counts.
//!
//! A node not heard from for the grace period (`ClusterSettings::node_grace`) is down,
//! and its tasks are replaced elsewhere. A manager that has just become leader has heard
//! from nobody yet: every node's grace then starts at the moment it became leader, so a
//! failover never declares the cluster down and reschedules it.
//!
//! [`status`] is the pure rule; [`Liveness`] the leader's memory around it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::state::model::NodeRecord;

/// What the leader makes of a node's heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heard from within the grace period (or still inside the grace a new leader gives).
    Ready,
    /// Not heard from for longer than the grace period: its tasks are replaced.
    Down,
    /// This manager does not lead, so its memory of heartbeats is not the cluster's.
    Unknown,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
            NodeStatus::Unknown => "unknown",
        }
    }
}

/// The rule: a node is down once `grace` has passed since the later of its last
/// heartbeat and the moment this manager became leader (`leader_since`; `None`: not
/// the leader, nothing can be said). Pure.
pub fn status(
    heard: Option<Instant>,
    leader_since: Option<Instant>,
    now: Instant,
    grace: Duration,
) -> NodeStatus {
    let Some(since) = leader_since else {
        return NodeStatus::Unknown;
    };
    let last = heard.map_or(since, |h| h.max(since));
    if now.saturating_duration_since(last) > grace {
        NodeStatus::Down
    } else {
        NodeStatus::Ready
    }
}

/// A manager's memory of heartbeats and of when it became leader.
#[derive(Debug, Default)]
pub struct Liveness {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    heard: HashMap<String, Instant>,
    leader_since: Option<Instant>,
    /// When the leader's loop last looked ([`Liveness::set_leader`]).
    last_look: Option<Instant>,
}

/// A leader whose own loop went this long without looking was stalled (starved of CPU,
/// paused): it cannot tell a silent node from heartbeats it failed to take in, so every
/// node gets a fresh grace, as after a failover.
pub const STALLED_AFTER: Duration = Duration::from_secs(3);

impl Liveness {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Node `id` was heard from at `now`.
    pub fn heard(&self, id: &str, now: Instant) {
        self.inner().heard.insert(id.to_string(), now);
    }

    /// When node `id` was last heard from by this manager.
    pub fn last_heard(&self, id: &str) -> Option<Instant> {
        self.inner().heard.get(id).copied()
    }

    /// Tells it whether this manager leads now (each pass of the leader's loops calls
    /// it, at least every second): becoming leader starts every node's grace afresh, and
    /// so does a pass that comes [`STALLED_AFTER`] or more after the previous one;
    /// losing leadership forgets when.
    pub fn set_leader(&self, leader: bool, now: Instant) {
        let mut inner = self.inner();
        let stalled = inner
            .last_look
            .is_some_and(|t| now.saturating_duration_since(t) >= STALLED_AFTER);
        inner.last_look = Some(now);
        match (leader, inner.leader_since) {
            (true, None) => inner.leader_since = Some(now),
            (true, Some(_)) if stalled => inner.leader_since = Some(now),
            (false, Some(_)) => inner.leader_since = None,
            _ => {}
        }
    }

    /// Node `id`'s status at `now`.
    pub fn status(&self, id: &str, now: Instant, grace: Duration) -> NodeStatus {
        let inner = self.inner();
        status(inner.heard.get(id).copied(), inner.leader_since, now, grace)
    }

    /// The nodes of `nodes` that are down at `now` (none when not the leader).
    pub fn down(
        &self,
        nodes: &BTreeMap<String, NodeRecord>,
        now: Instant,
        grace: Duration,
    ) -> BTreeSet<String> {
        let inner = self.inner();
        nodes
            .keys()
            .filter(|id| {
                status(
                    inner.heard.get(*id).copied(),
                    inner.leader_since,
                    now,
                    grace,
                ) == NodeStatus::Down
            })
            .cloned()
            .collect()
    }

    /// The first moment after `now` at which a node of `nodes` that is ready now would
    /// be down, if it stays silent (None when not the leader, or no node is ready):
    /// the leader looks then, not only on its tick, so a node is found down as its
    /// grace runs out.
    pub fn next_down(
        &self,
        nodes: &BTreeMap<String, NodeRecord>,
        now: Instant,
        grace: Duration,
    ) -> Option<Instant> {
        let inner = self.inner();
        let since = inner.leader_since?;
        nodes
            .keys()
            .map(|id| inner.heard.get(id).map_or(since, |h| (*h).max(since)) + grace)
            // `status` says down once strictly more than the grace has passed.
            .filter(|at| *at >= now)
            .min()
            .map(|at| at + Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn a_node_is_down_only_after_the_grace_counted_from_the_later_of_heartbeat_and_leadership() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        // (last heard, leader since, now, expected)
        let rows = [
            (None, None, s(100), NodeStatus::Unknown),
            (Some(s(0)), None, s(100), NodeStatus::Unknown),
            // Never heard: the grace runs from the leadership.
            (None, Some(s(0)), s(10), NodeStatus::Ready),
            (None, Some(s(0)), s(11), NodeStatus::Down),
            // Heard before the leadership: a failover gives a fresh grace.
            (Some(s(0)), Some(s(50)), s(55), NodeStatus::Ready),
            (Some(s(0)), Some(s(50)), s(61), NodeStatus::Down),
            // Heard after: from the heartbeat.
            (Some(s(20)), Some(s(0)), s(29), NodeStatus::Ready),
            (Some(s(20)), Some(s(0)), s(31), NodeStatus::Down),
        ];
        for (heard, since, now, want) in rows {
            assert_eq!(
                status(heard, since, now, GRACE),
                want,
                "{heard:?} {since:?}"
            );
        }
    }

    #[test]
    fn next_down_is_when_the_first_ready_node_s_grace_runs_out() {
        let t0 = Instant::now();
        let live = Liveness::default();
        let nodes: BTreeMap<String, NodeRecord> = ["a", "b", "c"]
            .iter()
            .map(|id| {
                let n: NodeRecord = serde_json::from_value(serde_json::json!({
                    "id": id, "role": "worker", "addr": "", "hostname": id, "joined_at": 0,
                }))
                .expect("node record");
                (id.to_string(), n)
            })
            .collect();
        assert_eq!(live.next_down(&nodes, t0, GRACE), None, "not the leader");
        live.set_leader(true, t0);
        live.heard("a", t0 + Duration::from_secs(3));
        live.heard("b", t0 + Duration::from_secs(5));
        // c never heard: its grace runs from the leadership.
        let at = live.next_down(&nodes, t0 + Duration::from_secs(6), GRACE);
        assert_eq!(at, Some(t0 + GRACE + Duration::from_millis(1)));
        let next = at.expect("c");
        assert_eq!(
            live.down(&nodes, next, GRACE),
            BTreeSet::from(["c".to_string()])
        );
        // c is down: a's is next.
        let at = live.next_down(&nodes, next, GRACE);
        assert_eq!(
            at,
            Some(t0 + Duration::from_secs(13) + Duration::from_millis(1))
        );
        let at = at.expect("a");
        assert!(live.down(&nodes, at, GRACE).contains("a"));
        assert!(!live
            .down(&nodes, at - Duration::from_millis(2), GRACE)
            .contains("a"));
    }

    #[test]
    fn losing_and_regaining_leadership_restarts_every_grace() {
        let live = Liveness::default();
        let t0 = Instant::now();
        live.heard("a", t0);
        live.set_leader(true, t0);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(live.status("a", later, GRACE), NodeStatus::Down);
        live.set_leader(false, later);
        assert_eq!(live.status("a", later, GRACE), NodeStatus::Unknown);
        live.set_leader(true, later);
        assert_eq!(live.status("a", later, GRACE), NodeStatus::Ready);
        // Staying leader, looking every second, does not move the start.
        for s in 1..=11 {
            live.set_leader(true, later + Duration::from_secs(s));
        }
        assert_eq!(
            live.status("a", later + Duration::from_secs(11), GRACE),
            NodeStatus::Down
        );
    }

    #[test]
    fn a_leader_that_stalled_gives_every_node_a_fresh_grace() {
        let live = Liveness::default();
        let t0 = Instant::now();
        live.set_leader(true, t0);
        live.heard("a", t0);
        // The leader's loop does not run for 20 s (starved): it cannot know whether
        // "a" went silent or its heartbeats were not taken in.
        let after = t0 + Duration::from_secs(20);
        live.set_leader(true, after);
        assert_eq!(live.status("a", after, GRACE), NodeStatus::Ready);
        assert_eq!(
            live.status("a", after + Duration::from_secs(11), GRACE),
            NodeStatus::Down
        );
    }
}

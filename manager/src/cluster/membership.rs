//! The loop every manager runs: after each store change (and every 200 ms, for the
//! Raft progress that changes without one) it
//! - gives the Raft transport the managers' addresses (`raft_peers`);
//! - refuses removed nodes (the deny list) and closes their open connections;
//! - on the leader, makes the next Raft configuration change the store asks for
//!   (`super::plan::next_conf_step`: new managers in as learners, promoted once
//!   caught up; demoted ones out);
//! - notices when this node itself was demoted in the store, gets a worker certificate
//!   and restarts the daemon as a worker.
//!
//! A worker runs [`worker_loop`] instead: it heartbeats to the leader, so `berth node
//! ls` can tell whether it is up, and learns there that it was promoted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pki::NodeRole;
use raft::StateRole;

use super::files::{self, ClusterConfig};
use super::plan::{next_conf_step, raft_peers, ConfStep, RaftView};
use super::{ops, Daemon, Member};
use crate::state::model::{Capacity, Platform};

const TICK: Duration = Duration::from_millis(200);

pub async fn run(member: Arc<Member>) {
    let mut watch = member.store.watch();
    let mut last_error: Option<String> = None;
    let mut learned_at = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        if !member.is_ready() && learned_at.elapsed() >= Duration::from_secs(1) {
            learn_managers(&member).await;
            learned_at = std::time::Instant::now();
        }
        let step = turn(&member);
        let outcome = match step {
            Some(step) => {
                let node = member.store.node();
                let done = match step {
                    ConfStep::AddLearner(id) => node.add_learner(id).await.map(|_| ()),
                    ConfStep::Promote(id) => node.add_voter(id).await.map(|_| ()),
                    ConfStep::Remove(id) => node.remove_node(id).await.map(|_| ()),
                };
                match done {
                    Ok(()) => {
                        eprintln!("berth daemon: cluster membership: {step:?} done");
                        Ok(())
                    }
                    Err(e) => Err(format!("{step:?}: {e}")),
                }
            }
            None => Ok(()),
        };
        match outcome {
            Ok(()) => last_error = None,
            Err(e) if last_error.as_ref() != Some(&e) => {
                eprintln!("berth daemon: cluster membership: {e}");
                last_error = Some(e);
            }
            Err(_) => {}
        }
        if member.store.read(|s| {
            s.nodes
                .get(member.node_id())
                .is_some_and(|n| n.role == NodeRole::Worker)
        }) {
            // Demoted: become a worker (a worker certificate, no Raft) and restart, once
            // the group no longer counts this node (leaving earlier could leave the
            // others a configuration they cannot reach a quorum in). Ask the other
            // managers, as the store lists them now.
            let config = ClusterConfig {
                managers: member
                    .store
                    .read(|s| raft_peers(&s.nodes, member.node_id())),
                ..member.config.clone()
            };
            if still_a_raft_member(&member, &config).await {
                let _ = tokio::time::timeout(TICK, watch.changed()).await;
                continue;
            }
            let renewed = ops::renew_from_cluster(
                &member.state_dir,
                &config,
                &member.creds,
                member.daemon.clone(),
            )
            .await;
            match renewed {
                Ok(()) => {
                    member.daemon.restart(Some(member.store.clone()));
                    return;
                }
                Err(e) => eprintln!("berth daemon: demoted, but cannot become a worker yet: {e}"),
            }
        }
        let _ = tokio::time::timeout(TICK, watch.changed()).await;
    }
}

/// Whether any other manager's applied configuration still has this node's Raft id
/// (true when none answers: stay until one does).
async fn still_a_raft_member(member: &Arc<Member>, config: &ClusterConfig) -> bool {
    for (_, _, addr) in &config.managers {
        let (m, addr) = (member.clone(), addr.clone());
        let path = format!("/v1/dispatcher/raft/{}", member.config.raft_id);
        let asked =
            super::own_thread(move || m.call::<bool>(&addr, "GET", &path, None::<&()>)).await;
        if let Some(Ok(false)) = asked {
            return false;
        }
    }
    true
}

/// While this manager is not ready (it restarted and waits for the group), ask the
/// managers it knows for the current list, so that it can answer a leader that joined
/// while it was away (see `sender_check`).
async fn learn_managers(member: &Arc<Member>) {
    let mut addrs: Vec<String> = member
        .known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|m| m.2.clone())
        .collect();
    addrs.extend(
        member
            .store
            .read(|s| raft_peers(&s.nodes, member.node_id()))
            .into_iter()
            .map(|m| m.2),
    );
    addrs.sort();
    addrs.dedup();
    for addr in addrs {
        if addr == member.config.advertise.to_string() {
            continue;
        }
        let (m, to) = (member.clone(), addr.clone());
        let asked = super::own_thread(move || {
            m.call::<Vec<(u64, String, String)>>(&to, "GET", "/v1/cluster/managers", None::<&()>)
        })
        .await;
        if let Some(Ok(list)) = asked {
            for (raft_id, node, addr) in &list {
                if node != member.node_id() {
                    if let (Ok(id), Ok(sock)) = (pki::NodeId::new(node), addr.parse()) {
                        member.transport.set_peer(*raft_id, id, sock);
                    }
                }
            }
            *member.known.lock().unwrap_or_else(|p| p.into_inner()) = list;
            return;
        }
    }
}

/// One look at the store and the Raft group; returns the configuration change to make,
/// if this node leads and one is due.
fn turn(member: &Member) -> Option<ConfStep> {
    let (nodes, removed) = member.store.read(|s| {
        (
            s.nodes.clone(),
            s.cluster
                .as_ref()
                .map(|c| c.removed.clone())
                .unwrap_or_default(),
        )
    });
    // Peers: every manager the store lists, at its address.
    let peers = raft_peers(&nodes, member.node_id());
    for (raft_id, node, addr) in &peers {
        let (Ok(node), Ok(addr)) = (pki::NodeId::new(node), addr.parse()) else {
            continue;
        };
        member.transport.set_peer(*raft_id, node, addr);
    }
    // Until the store caught up (a joiner before its snapshot, a manager that missed a
    // change), keep the ones it learned of otherwise.
    if member.is_ready() && !peers.is_empty() {
        for (raft_id, _, _) in member.transport.peers() {
            if !peers.iter().any(|p| p.0 == raft_id) {
                member.transport.remove_peer(raft_id);
            }
        }
    }
    // Removed nodes: refused from now on, and their open connections closed.
    let denied: Vec<pki::NodeId> = removed
        .iter()
        .filter_map(|id| pki::NodeId::new(id).ok())
        .collect();
    if denied.iter().any(|id| !member.deny.contains(id)) {
        member.deny.replace(denied);
        if let Some(port) = member
            .port
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            port.close_denied(&member.deny);
        }
        // Outgoing Raft connections to a removed manager, too.
        member.transport.close_denied(&member.deny);
    }
    let status = member.store.node().status();
    if status.role != StateRole::Leader {
        return None;
    }
    let view = RaftView {
        voters: status.voters.clone(),
        learners: status.learners.clone(),
        matched: status.progress.iter().map(|p| (p.id, p.matched)).collect(),
        last_index: status.last_index,
    };
    next_conf_step(&nodes, &view)
}

/// A worker's loop: tell the leader it is up, following the leader as it moves.
pub async fn worker_loop(
    state_dir: PathBuf,
    config: ClusterConfig,
    creds: pki::NodeCredentials,
    daemon: Arc<dyn Daemon>,
) {
    let http = match crate::port::http_client_config(&creds, &pki::DenyList::new()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth daemon: cannot make the TLS client settings: {e}");
            return;
        }
    };
    let mut config = config;
    let report = daemon.report();
    let mut managers: Vec<String> = config.managers.iter().map(|m| m.2.clone()).collect();
    let mut next = 0usize;
    let mut last_error: Option<String> = None;
    loop {
        let started = Instant::now();
        if !managers.is_empty() {
            let addr = managers[next % managers.len()].clone();
            let (d, to, tls, report) = (daemon.clone(), addr.clone(), http.clone(), report.clone());
            let answer = super::own_thread(move || {
                super::call::<Heartbeat>(
                    &*d,
                    &to,
                    tls,
                    super::NODE_CALL_TIMEOUT,
                    "POST",
                    "/v1/dispatcher/heartbeat",
                    Some(&report),
                )
            })
            .await;
            match answer {
                Some(Ok(hb)) => {
                    last_error = None;
                    if hb.role == Some(NodeRole::Manager) {
                        // Promoted: become a manager (a manager certificate, a Raft
                        // replica filled by the leader) and restart.
                        let renewed =
                            ops::renew_from_cluster(&state_dir, &config, &creds, daemon.clone())
                                .await;
                        match renewed {
                            Ok(()) => {
                                daemon.restart(None);
                                return;
                            }
                            Err(e) => eprintln!(
                                "berth daemon: promoted, but cannot become a manager yet: {e}"
                            ),
                        }
                    }
                    if !hb.managers.is_empty() && hb.managers != config.managers {
                        // Remembered, so that a restart or a promotion finds the
                        // cluster even if the managers it joined with are gone.
                        config.managers = hb.managers.clone();
                        if let Err(e) = files::save_config(&state_dir, &config) {
                            eprintln!("berth daemon: remember the cluster's managers: {e}");
                        }
                        managers = hb.managers.iter().map(|m| m.2.clone()).collect();
                    }
                    // Stay with the leader if there is one; it answers node ls.
                    match hb
                        .leader
                        .and_then(|l| managers.iter().position(|m| *m == l))
                    {
                        Some(i) if i != next % managers.len() => next = i,
                        _ => {}
                    }
                }
                Some(Err(e)) => {
                    let e = format!("heartbeat to {addr}: {e}");
                    if last_error.as_ref() != Some(&e) {
                        eprintln!("berth daemon: {e}");
                        last_error = Some(e);
                    }
                    next += 1;
                }
                None => next += 1,
            }
        }
        tokio::time::sleep(super::HEARTBEAT_EVERY.saturating_sub(started.elapsed())).await;
    }
}

/// A manager's own heartbeat: managers run tasks too, so the leader must know they
/// are up like any node. The leader notes its own; the others tell the leader (a
/// manager that cannot reach the leader is, for the cluster, down: its tasks are better
/// run where the leader can see them).
pub async fn manager_heartbeats(member: Arc<Member>) {
    let report = member.daemon.report();
    let me = member.node_id().to_string();
    loop {
        let started = Instant::now();
        if member.is_ready() {
            let (m, report, me) = (member.clone(), report.clone(), me.clone());
            let _ = super::own_thread(move || {
                if m.is_leader() {
                    m.liveness.heard(&me, Instant::now());
                    record_report(&m, &me, &report);
                } else if let Some(addr) = m.leader_addr() {
                    let _ = m.call::<Heartbeat>(
                        &addr,
                        "POST",
                        "/v1/dispatcher/heartbeat",
                        Some(&report),
                    );
                }
            })
            .await;
        }
        tokio::time::sleep(super::HEARTBEAT_EVERY.saturating_sub(started.elapsed())).await;
    }
}

/// A manager's side of node `id`'s heartbeat: it was heard from now; the answer says
/// where the leader is, who the managers are and what the store makes of it.
pub fn heard_from(member: &Member, id: &str) -> Heartbeat {
    member.liveness.heard(id, Instant::now());
    let (managers, role) = member
        .store
        .read(|s| (raft_peers(&s.nodes, ""), s.nodes.get(id).map(|n| n.role)));
    Heartbeat {
        leader: if member.is_leader() {
            None
        } else {
            member.leader_addr()
        },
        managers,
        role,
    }
}

/// What a node says of itself with each heartbeat: what the scheduler needs to know of
/// it. Recorded in the store only when it differs from the node's record (a node's
/// platform and size rarely change), so heartbeats cost no Raft write.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    pub platform: Platform,
    pub capacity: Capacity,
    /// What `--node-generic-resource` advertises (a berth from before sends none).
    #[serde(default)]
    pub generic_resources: spec::generic::Inventory,
}

impl NodeReport {
    /// This machine: its os and architecture in Go's names, its CPUs (as millicores)
    /// and its memory (no generic resources: those are the daemon's flags, added by
    /// [`crate::cluster::Daemon::report`]).
    pub fn of_this_host() -> NodeReport {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_total(&text))
            .unwrap_or(0);
        NodeReport {
            platform: Platform {
                os: std::env::consts::OS.to_string(),
                arch: arch.to_string(),
            },
            capacity: Capacity {
                millicpus: cpus * 1000,
                memory,
            },
            generic_resources: Default::default(),
        }
    }
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether node `id`'s report differs from its record (a read, no write).
pub fn report_differs(member: &Member, id: &str, report: &NodeReport) -> bool {
    member.store.read(|s| {
        s.nodes.get(id).is_some_and(|n| {
            n.platform != report.platform
                || n.capacity != report.capacity
                || n.generic_resources != report.generic_resources
        })
    })
}

/// Records node `id`'s report in the store if it differs from its record (blocking).
pub fn record_report(member: &Member, id: &str, report: &NodeReport) {
    if !report_differs(member, id, report) {
        return;
    }
    let written = member.store.update(|s| {
        if let Some(n) = s.nodes.get_mut(id) {
            n.platform = report.platform.clone();
            n.capacity = report.capacity;
            n.generic_resources = report.generic_resources.clone();
        }
        Ok(())
    });
    if let Err(e) = written {
        eprintln!("berth daemon: record what node {id} reported of itself: {e}");
    }
}

/// A manager's answer to a worker's heartbeat.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    /// The leader's address, if this manager is not it.
    pub leader: Option<String>,
    /// Every manager: (Raft id, node id, address).
    pub managers: Vec<(u64, String, String)>,
    /// The worker's role as the store has it (a promotion shows here first).
    #[serde(default)]
    pub role: Option<NodeRole>,
}

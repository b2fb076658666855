//! The cluster's operations as store transactions and file changes, and the messages
//! the CLI and other nodes exchange with a daemon for them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context};
use manager::cluster::{ClusterRecord, NodeRecord, NodeRole};
use manager::store::{Store, StoreError};
use pki::{Ca, CertRequest, Identity, JoinRole, JoinTokens, NodeId, Role};
use serde::{Deserialize, Serialize};

use super::files::{self, ClusterConfig};
use super::Member;

/// The single host's Raft id, kept by the manager that initializes a cluster.
pub const FIRST_RAFT_ID: u64 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InitRequest {
    /// `IP[:PORT]` other nodes reach this one at.
    pub advertise: String,
    /// `IP[:PORT]` the cluster port listens on (default: every address, the advertised
    /// port).
    #[serde(default)]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitAnswer {
    pub cluster_id: String,
    pub node_id: String,
    pub advertise: String,
    pub worker_token: String,
    pub manager_token: String,
    /// Where the admin client certificate for remote CLIs was written.
    pub admin_dir: String,
}

/// What the CLI asks its own daemon to do: join the cluster of `remote`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinLocalRequest {
    pub token: String,
    pub remote: String,
    pub advertise: String,
    #[serde(default)]
    pub listen: Option<String>,
}

/// What a joiner sends a manager (on the cluster port, with no certificate yet).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub csr: String,
    /// Where the joiner's cluster port is reached.
    pub addr: String,
    pub hostname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub cluster_id: String,
    pub node_id: String,
    pub role: NodeRole,
    /// The joiner's certificate (PEM), for the key of its CSR.
    pub cert: String,
    pub raft_id: u64,
    pub managers: Vec<(u64, String, String)>,
}

/// One node as `berth node ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub record: NodeRecord,
    pub leader: bool,
    /// `reachable`, `unreachable` or `unknown`.
    pub reachability: String,
    /// `voter`, `learner` or `-`, and how far its log matches the leader's.
    pub raft: String,
    pub matched: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// False on a single host (the other fields are then empty).
    pub member: bool,
    /// A manager: its store caught up with the cluster and it serves requests.
    #[serde(default)]
    pub ready: bool,
    pub cluster_id: String,
    pub node_id: String,
    pub role: String,
    pub addr: String,
    pub leader: String,
    pub raft_role: String,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub managers: usize,
    pub workers: usize,
    pub version: u64,
    /// sha256 of the applied state (equal on managers that applied the same index).
    pub state_hash: String,
    /// The terms in which this manager became leader since it started.
    #[serde(default)]
    pub led_terms: Vec<u64>,
}

fn now_ms() -> u64 {
    manager::now_ms()
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// `berth cluster init` on this daemon: makes the cluster CA, the join tokens, this
/// node's manager certificate and an admin certificate, records the cluster and this
/// node in the store (existing tasks stay on this node), then writes the files that
/// make the next start a cluster start. The caller restarts the daemon.
pub fn init(state_dir: &Path, store: &Store, req: &InitRequest) -> anyhow::Result<InitAnswer> {
    if files::config_path(state_dir).exists() {
        bail!("this node is already in a cluster (berth cluster status shows it)");
    }
    let advertise = files::parse_addr(&req.advertise, "--advertise-addr")?;
    let listen = listen_addr(req.listen.as_deref(), advertise)?;
    let now = SystemTime::now();
    let ca = Ca::create(now).context("create the cluster CA")?;
    let tokens = JoinTokens::generate(ca.digest());
    let node_id = NodeId::generate();
    let creds = ca
        .issue(
            &CertRequest::new(Identity::new(node_id.clone(), Role::Manager))
                .address(advertise.ip().to_string()),
            now,
        )
        .context("issue this manager's certificate")?;
    let admin = ca
        .issue(
            &CertRequest::new(Identity::new(NodeId::generate(), Role::Admin)),
            now,
        )
        .context("issue the admin certificate")?;
    let cluster_id = NodeId::generate().as_str().to_string();
    let me = node_id.as_str().to_string();
    let record = ClusterRecord {
        id: cluster_id.clone(),
        created_at: now_ms(),
        ca_cert: ca.cert().to_pem(),
        ca_key: ca.key_pem(),
        worker_token: tokens.token(JoinRole::Worker).to_string(),
        manager_token: tokens.token(JoinRole::Manager).to_string(),
        next_raft_id: FIRST_RAFT_ID + 1,
        removed: Default::default(),
    };
    store.update(|s| {
        // A cluster record without a config file is an init that crashed half-way:
        // it is replaced.
        s.cluster = Some(record.clone());
        s.nodes.clear();
        s.nodes.insert(
            me.clone(),
            NodeRecord {
                id: me.clone(),
                role: NodeRole::Manager,
                addr: advertise.to_string(),
                hostname: hostname(),
                raft_id: FIRST_RAFT_ID,
                joined_at: now_ms(),
                labels: BTreeMap::new(),
            },
        );
        // The containers this host already runs stay here.
        for t in s.tasks.values_mut() {
            t.node = Some(me.clone());
        }
        Ok(())
    })?;
    let config = ClusterConfig {
        cluster_id: cluster_id.clone(),
        node_id: me.clone(),
        role: NodeRole::Manager,
        raft_id: FIRST_RAFT_ID,
        listen,
        advertise,
        managers: vec![(FIRST_RAFT_ID, me.clone(), advertise.to_string())],
    };
    let saved = admin
        .save(&files::admin_dir(state_dir))
        .context("save the admin certificate")
        .and_then(|()| files::save(state_dir, &config, &creds));
    if let Err(e) = saved {
        // Still a single host: undo the store's half, so its containers stay its own.
        if let Err(undo) = leave_unfinished_init(store) {
            eprintln!("berth daemon: cannot undo the failed cluster init in the store: {undo}");
        }
        return Err(e);
    }
    Ok(InitAnswer {
        cluster_id,
        node_id: me,
        advertise: advertise.to_string(),
        worker_token: record.worker_token,
        manager_token: record.manager_token,
        admin_dir: files::admin_dir(state_dir).display().to_string(),
    })
}

/// A single host's store that holds a cluster record is an init that did not finish
/// (its files were never written): the record goes, and every task is this host's
/// again. Run by `init` when writing the files fails, and by a single-host daemon at
/// start (after a crash in between).
pub fn leave_unfinished_init(store: &Store) -> Result<bool, StoreError> {
    store.update(|s| {
        if s.cluster.is_none() && s.nodes.is_empty() {
            return Ok(false);
        }
        s.cluster = None;
        s.nodes.clear();
        for t in s.tasks.values_mut() {
            t.node = None;
        }
        Ok(true)
    })
}

fn listen_addr(listen: Option<&str>, advertise: SocketAddr) -> anyhow::Result<SocketAddr> {
    match listen {
        Some(l) => files::parse_addr(l, "--listen-addr"),
        None if advertise.is_ipv4() => Ok(SocketAddr::new(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
            advertise.port(),
        )),
        None => Ok(SocketAddr::new(
            std::net::Ipv6Addr::UNSPECIFIED.into(),
            advertise.port(),
        )),
    }
}

/// Why a manager refused a join, as the joiner's user should read it.
#[derive(Debug)]
pub enum Refused {
    /// The token is wrong or rotated (401).
    Token(String),
    /// Anything else (400/500).
    Other(anyhow::Error),
}

/// The manager's side of a join: checks the token, signs the joiner's key for a new
/// node id with the token's role, and records the node (a manager gets the next Raft
/// id; the membership loop adds it to the group).
pub fn admit(member: &Member, req: &JoinRequest) -> Result<JoinAnswer, Refused> {
    let cluster = member
        .store
        .read(|s| s.cluster.clone())
        .ok_or_else(|| Refused::Other(anyhow::anyhow!("this manager's store has no cluster")))?;
    let addr = files::parse_addr(&req.addr, "the joiner's address").map_err(Refused::Other)?;
    let ca = Ca::from_pem(&cluster.ca_cert, &cluster.ca_key)
        .map_err(|e| Refused::Other(anyhow::anyhow!("the cluster CA in the store: {e}")))?;
    let tokens = JoinTokens::from_tokens(&cluster.worker_token, &cluster.manager_token)
        .map_err(|e| Refused::Other(anyhow::anyhow!("the join tokens in the store: {e}")))?;
    let (identity, cert) = pki::join::admit(
        &ca,
        &tokens,
        &req.token,
        &req.csr,
        &[addr.ip().to_string()],
        SystemTime::now(),
    )
    .map_err(|e| match e {
        pki::join::JoinError::Token(t) => Refused::Token(t.to_string()),
        other => Refused::Other(other.into()),
    })?;
    let id = identity.id.as_str().to_string();
    let role = match identity.role {
        Role::Manager => NodeRole::Manager,
        _ => NodeRole::Worker,
    };
    // Shown in `node ls` on an admin's terminal: letters, digits, '.', '-', '_' only.
    let hostname: String = req
        .hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect();
    let raft_id = member
        .store
        .update(|s| {
            let c = s
                .cluster
                .as_mut()
                .ok_or_else(|| StoreError::Rejected("the cluster record is gone".into()))?;
            let raft_id = if role == NodeRole::Manager {
                c.next_raft_id += 1;
                c.next_raft_id - 1
            } else {
                0
            };
            s.nodes.insert(
                id.clone(),
                NodeRecord {
                    id: id.clone(),
                    role,
                    addr: addr.to_string(),
                    hostname: hostname.clone(),
                    raft_id,
                    joined_at: now_ms(),
                    labels: BTreeMap::new(),
                },
            );
            Ok(raft_id)
        })
        .map_err(|e| Refused::Other(e.into()))?;
    let managers = member
        .store
        .read(|s| manager::cluster::raft_peers(&s.nodes, &id));
    Ok(JoinAnswer {
        cluster_id: cluster.id,
        node_id: id,
        role,
        cert,
        raft_id,
        managers,
    })
}

/// The joiner's side, run by its daemon for `berth cluster join`: asks the manager at
/// `req.remote` to admit it (pinning the cluster CA by the token), then writes its
/// credentials and configuration. A manager's single-host store is set aside: the
/// cluster's comes from the leader. The caller restarts the daemon.
pub fn join(state_dir: &Path, store: &Store, req: &JoinLocalRequest) -> anyhow::Result<JoinAnswer> {
    if files::config_path(state_dir).exists() {
        bail!("this node is already in a cluster (berth cluster status shows it)");
    }
    let stacks: Vec<String> = store.read(|s| s.stacks.keys().cloned().collect());
    if !stacks.is_empty() {
        bail!(
            "this host runs stacks ({}): joining a cluster replaces this host's store with \
             the cluster's; take them down first (berth down)",
            stacks.join(", ")
        );
    }
    let token: pki::JoinToken = req.token.parse().context("the join token")?;
    let advertise = files::parse_addr(&req.advertise, "--advertise-addr")?;
    let listen = listen_addr(req.listen.as_deref(), advertise)?;
    let remote = files::parse_addr(&req.remote, "the manager address")?;
    let key = pki::NodeKey::generate().context("make this node's key")?;
    let (mut config, pinned) =
        pki::join::client_config(&token).context("prepare the join connection")?;
    config.alpn_protocols = vec![manager::port::ALPN_HTTP.to_vec()];
    let client = crate::client::Client::tls(
        &remote.to_string(),
        Arc::new(config),
        pki::tls::manager_server_name(),
    )
    .with_timeout(std::time::Duration::from_secs(30));
    let answer: JoinAnswer = client
        .call(
            "POST",
            "/v1/cluster/join",
            Some(&JoinRequest {
                token: req.token.clone(),
                csr: key
                    .csr_pem()
                    .context("make this node's certificate request")?,
                addr: advertise.to_string(),
                hostname: hostname(),
            }),
        )
        .with_context(|| format!("join the cluster of the manager at {remote}"))?;
    let creds = pki::join::finish(&token, &pinned, &key, &answer.cert)
        .context("check the certificate the manager sent")?;
    if answer.role == NodeRole::Manager {
        // Its Raft node must not write into the directory as it moves; the daemon
        // restarts next anyway.
        store.node().kill();
        set_aside_single_host_store(state_dir)?;
    }
    let config = ClusterConfig {
        cluster_id: answer.cluster_id.clone(),
        node_id: answer.node_id.clone(),
        role: answer.role,
        raft_id: answer.raft_id,
        listen,
        advertise,
        managers: answer.managers.clone(),
    };
    files::save(state_dir, &config, &creds)?;
    Ok(answer)
}

/// Moves the (empty) single-host Raft group away, so that the daemon's next start
/// begins an empty replica that the leader fills with a snapshot.
fn set_aside_single_host_store(state_dir: &Path) -> anyhow::Result<()> {
    let raft = state_dir.join("manager").join("raft");
    let aside = state_dir.join("manager").join("raft.single-host");
    let _ = std::fs::remove_dir_all(&aside);
    match std::fs::rename(&raft, &aside) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("move {} aside", raft.display())),
    }
}

/// Deletes this node's replica of the cluster store (and any set-aside one).
fn remove_replica(state_dir: &Path) -> anyhow::Result<()> {
    for dir in ["raft", "raft.single-host"] {
        let path = state_dir.join("manager").join(dir);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
        }
    }
    Ok(())
}

/// The nodes with what the leader knows of them. On another manager the caller asks
/// the leader instead (only it knows how far each member's log is).
pub fn node_views(member: &Member) -> Vec<NodeView> {
    let status = member.store.node().status();
    let progress: BTreeMap<u64, manager::raft::Progress> =
        status.progress.iter().map(|p| (p.id, *p)).collect();
    let heartbeats = member
        .heartbeats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    member.store.read(|s| {
        s.nodes
            .values()
            .map(|n| {
                let raft = if status.voters.contains(&n.raft_id) && n.raft_id != 0 {
                    "voter"
                } else if status.learners.contains(&n.raft_id) && n.raft_id != 0 {
                    "learner"
                } else {
                    "-"
                };
                let reachability = match n.role {
                    NodeRole::Manager => match progress.get(&n.raft_id) {
                        Some(p) if p.recent_active => "reachable",
                        Some(_) => "unreachable",
                        None => "unknown",
                    },
                    NodeRole::Worker => match heartbeats.get(&n.id) {
                        Some(at) if at.elapsed() < super::membership::WORKER_DOWN_AFTER => {
                            "reachable"
                        }
                        Some(_) => "unreachable",
                        None => "unknown",
                    },
                };
                NodeView {
                    record: n.clone(),
                    leader: n.raft_id != 0 && n.raft_id == status.leader,
                    reachability: reachability.to_string(),
                    raft: raft.to_string(),
                    matched: progress.get(&n.raft_id).map_or(0, |p| p.matched),
                }
            })
            .collect()
    })
}

pub fn status(member: &Member) -> ClusterStatus {
    let st = member.store.node().status();
    let (version, hash) = (
        member.store.read(|s| s.version),
        hex::encode(member.store.node().hash()),
    );
    member.store.read(|s| ClusterStatus {
        member: true,
        ready: member.is_ready(),
        cluster_id: member.config.cluster_id.clone(),
        node_id: member.config.node_id.clone(),
        role: "manager".into(),
        addr: member.config.advertise.to_string(),
        leader: manager::cluster::manager_by_raft_id(&s.nodes, st.leader)
            .map(|n| format!("{} ({})", n.id, n.addr))
            .unwrap_or_else(|| "none".into()),
        raft_role: format!("{:?}", st.role).to_lowercase(),
        term: st.term,
        commit: st.commit,
        applied: st.applied,
        managers: s
            .nodes
            .values()
            .filter(|n| n.role == NodeRole::Manager)
            .count(),
        workers: s
            .nodes
            .values()
            .filter(|n| n.role == NodeRole::Worker)
            .count(),
        version,
        state_hash: hash,
        led_terms: st.led_terms.clone(),
    })
}

/// The current token for `role`, after replacing it if `rotate`.
pub fn join_token(member: &Member, role: JoinRole, rotate: bool) -> anyhow::Result<String> {
    if rotate {
        member.store.update(|s| {
            let c = s
                .cluster
                .as_mut()
                .ok_or_else(|| StoreError::Rejected("no cluster".into()))?;
            let mut tokens = JoinTokens::from_tokens(&c.worker_token, &c.manager_token)
                .map_err(|e| StoreError::Rejected(e.to_string()))?;
            tokens.rotate(role);
            c.worker_token = tokens.token(JoinRole::Worker).to_string();
            c.manager_token = tokens.token(JoinRole::Manager).to_string();
            Ok(())
        })?;
    }
    member
        .store
        .read(|s| {
            s.cluster.as_ref().map(|c| match role {
                JoinRole::Worker => c.worker_token.clone(),
                JoinRole::Manager => c.manager_token.clone(),
            })
        })
        .context("this manager's store has no cluster")
}

/// Finds a node by id or by a unique prefix of it, or by hostname.
fn resolve(nodes: &BTreeMap<String, NodeRecord>, name: &str) -> Result<String, StoreError> {
    if nodes.contains_key(name) {
        return Ok(name.to_string());
    }
    let found: Vec<&NodeRecord> = nodes
        .values()
        .filter(|n| n.id.starts_with(name) || n.hostname == name)
        .collect();
    match found.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(StoreError::Rejected(format!(
            "no node {name:?} in the cluster (berth node ls lists them)"
        ))),
        _ => Err(StoreError::Rejected(format!(
            "{name:?} names several nodes; give more of the id"
        ))),
    }
}

/// What `berth node promote/demote/rm/update` asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "change")]
pub enum NodeChange {
    Promote,
    Demote,
    Remove {
        #[serde(default)]
        force: bool,
    },
    Labels {
        #[serde(default)]
        add: BTreeMap<String, String>,
        #[serde(default)]
        remove: Vec<String>,
    },
}

/// Applies `change` to node `name`; returns its id. The membership loop makes the
/// Raft configuration follow.
pub fn change_node(member: &Member, name: &str, change: &NodeChange) -> Result<String, StoreError> {
    let reachable: Vec<String> = node_views(member)
        .into_iter()
        .filter(|v| v.reachability == "reachable")
        .map(|v| v.record.id)
        .collect();
    member.store.update(|s| {
        let id = resolve(&s.nodes, name)?;
        let managers = s
            .nodes
            .values()
            .filter(|n| n.role == NodeRole::Manager)
            .count();
        let next_raft_id = s.cluster.as_ref().map_or(0, |c| c.next_raft_id);
        // Until the scheduler can move tasks, a node that stops running containers
        // (a manager demoted to a worker, a removed node) would leave its containers
        // unmanaged: refuse while it has any.
        let live: Vec<String> = s
            .tasks
            .values()
            .filter(|t| t.node.as_deref() == Some(id.as_str()))
            .filter(|t| t.status.state() != spec::task::TaskState::Removed)
            .map(|t| t.name())
            .collect();
        let stops_running = matches!(change, NodeChange::Demote | NodeChange::Remove { .. });
        if stops_running && !live.is_empty() {
            return Err(StoreError::Rejected(format!(
                "node {id} runs containers ({}): take their stacks down first (berth down); \
                 a worker does not run tasks yet, so they would be left unmanaged",
                live.join(", ")
            )));
        }
        let Some(node) = s.nodes.get_mut(&id) else {
            return Err(StoreError::Rejected(format!("no node {id}")));
        };
        match change {
            NodeChange::Promote => {
                if node.role == NodeRole::Manager {
                    return Err(StoreError::Rejected(format!(
                        "node {id} is already a manager"
                    )));
                }
                node.role = NodeRole::Manager;
                node.raft_id = next_raft_id;
                if let Some(c) = s.cluster.as_mut() {
                    c.next_raft_id += 1;
                }
            }
            NodeChange::Demote => {
                if node.role == NodeRole::Worker {
                    return Err(StoreError::Rejected(format!(
                        "node {id} is already a worker"
                    )));
                }
                if managers <= 1 {
                    return Err(StoreError::Rejected(format!(
                        "node {id} is the last manager: demoting it would leave the cluster \
                         without a store; promote another node first"
                    )));
                }
                node.role = NodeRole::Worker;
                node.raft_id = 0;
            }
            NodeChange::Remove { force } => {
                if node.role == NodeRole::Manager {
                    return Err(StoreError::Rejected(format!(
                        "node {id} is a manager: demote it first (berth node demote {id})"
                    )));
                }
                if !force && reachable.contains(&id) {
                    return Err(StoreError::Rejected(format!(
                        "node {id} is up: stop its daemon first, or use --force (its \
                         certificate is refused from now on either way)"
                    )));
                }
                s.nodes.remove(&id);
                if let Some(c) = s.cluster.as_mut() {
                    c.removed.insert(id.clone());
                }
            }
            NodeChange::Labels { add, remove } => {
                for k in remove {
                    node.labels.remove(k);
                }
                for (k, v) in add {
                    node.labels.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(id.clone())
    })
}

/// One node's record as this manager applied it (possibly stale).
pub fn node_local(member: &Member, name: &str) -> Result<NodeRecord, StoreError> {
    member.store.read(|s| {
        let id = resolve(&s.nodes, name)?;
        s.nodes
            .get(&id)
            .cloned()
            .ok_or_else(|| StoreError::Rejected(format!("no node {id}")))
    })
}

/// One node's record, read after a ReadIndex: it holds every change committed before
/// the call (a linearizable read), or fails if no quorum confirms this manager's view.
pub async fn node_fresh(member: &Member, name: &str) -> Result<NodeRecord, StoreError> {
    member
        .store
        .node()
        .read_index()
        .await
        .map_err(StoreError::Raft)?;
    let id = member.store.read(|s| resolve(&s.nodes, name))?;
    member
        .store
        .read(|s| s.nodes.get(&id).cloned())
        .ok_or_else(|| StoreError::Rejected(format!("no node {id}")))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewAnswer {
    pub cert: String,
    pub role: NodeRole,
    pub raft_id: u64,
    pub managers: Vec<(u64, String, String)>,
}

/// The manager's side of a renewal: a certificate for the caller's own node id (from
/// its verified certificate) with the role the store gives it now. This is how a
/// promoted worker gets a manager certificate and a demoted manager a worker one.
pub fn renew(member: &Member, peer: &Identity, req: &RenewRequest) -> Result<RenewAnswer, Refused> {
    let id = peer.id.as_str().to_string();
    let (record, cluster) = member
        .store
        .read(|s| (s.nodes.get(&id).cloned(), s.cluster.clone()));
    let record = record.ok_or_else(|| {
        Refused::Token(format!("node {id} is not in the cluster (it was removed)"))
    })?;
    let cluster =
        cluster.ok_or_else(|| Refused::Other(anyhow::anyhow!("this manager has no cluster")))?;
    let ca = Ca::from_pem(&cluster.ca_cert, &cluster.ca_key)
        .map_err(|e| Refused::Other(anyhow::anyhow!("the cluster CA in the store: {e}")))?;
    let role = match record.role {
        NodeRole::Manager => Role::Manager,
        NodeRole::Worker => Role::Worker,
    };
    let ip = record
        .addr
        .parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mut cert_req = CertRequest::new(Identity::new(peer.id.clone(), role));
    if !ip.is_empty() {
        cert_req = cert_req.address(ip);
    }
    let cert = ca
        .sign_csr(&req.csr, &cert_req, SystemTime::now())
        .map_err(|e| Refused::Other(anyhow::anyhow!("sign the certificate request: {e}")))?;
    Ok(RenewAnswer {
        cert,
        role: record.role,
        raft_id: record.raft_id,
        managers: member
            .store
            .read(|s| manager::cluster::raft_peers(&s.nodes, &id)),
    })
}

/// A node's side of a role change: asks a manager (one of `managers`, in turn) for a
/// certificate with its current role, then rewrites its files for that role. The
/// caller restarts the daemon.
pub async fn renew_from_cluster(
    state_dir: &Path,
    config: &ClusterConfig,
    creds: &pki::NodeCredentials,
) -> anyhow::Result<()> {
    let http = manager::port::http_client_config(creds, &pki::DenyList::new())?;
    let key = pki::NodeKey::generate().context("make a new key")?;
    let csr = key.csr_pem().context("make a certificate request")?;
    let mut last = anyhow::anyhow!("no manager is known");
    for (_, _, addr) in &config.managers {
        let client =
            crate::client::Client::tls(addr, http.clone(), pki::tls::manager_server_name())
                .with_timeout(super::NODE_CALL_TIMEOUT);
        let body = RenewRequest { csr: csr.clone() };
        let answer = tokio::task::spawn_blocking(move || {
            client.call::<RenewAnswer>("POST", "/v1/dispatcher/renew", Some(&body))
        })
        .await?;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                last = e.context(format!("ask the manager at {addr}"));
                continue;
            }
        };
        let renewed =
            pki::NodeCredentials::from_pem(creds.ca().clone(), &answer.cert, &key.key_pem())
                .context("check the renewed certificate")?;
        if answer.role == NodeRole::Manager {
            set_aside_single_host_store(state_dir)?;
        } else {
            // A worker keeps no replica of the store: it holds the CA key.
            remove_replica(state_dir)?;
        }
        let next = ClusterConfig {
            role: answer.role,
            raft_id: answer.raft_id,
            managers: answer.managers,
            ..config.clone()
        };
        files::save(state_dir, &next, &renewed)?;
        return Ok(());
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An init whose files were never written leaves nothing behind in the store: the
    /// cluster record and nodes go, and every task is the single host's again (else the
    /// host's agent would ignore its own containers and remove them as strays).
    #[test]
    fn an_unfinished_init_is_undone_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(
            !leave_unfinished_init(&store).unwrap(),
            "nothing to undo yet"
        );
        let req = InitRequest {
            advertise: "10.1.2.3".into(),
            listen: None,
        };
        let task: spec::task::Task = serde_json::from_value(serde_json::json!({
            "id": "s-web-1.1", "stack": "s", "service": "web", "slot": 1, "generation": 1,
            "spec_hash": "h", "desired": "running", "created_at": 0
        }))
        .unwrap();
        store
            .update(|s| {
                s.tasks.insert(task.id.clone(), task.clone());
                Ok(())
            })
            .unwrap();
        // The files cannot be written: the state dir is a file.
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, b"").unwrap();
        assert!(init(&not_a_dir, &store, &req).is_err());
        let s = store.snapshot();
        assert!(s.cluster.is_none() && s.nodes.is_empty(), "{s:?}");
        assert_eq!(s.tasks["s-web-1.1"].node, None);
        // A crash between the store and the files: the next single-host start undoes it.
        store
            .update(|s| {
                s.nodes.insert(
                    "n".into(),
                    NodeRecord {
                        id: "n".into(),
                        role: NodeRole::Manager,
                        addr: "10.1.2.3:7377".into(),
                        hostname: "h".into(),
                        raft_id: 1,
                        joined_at: 0,
                        labels: BTreeMap::new(),
                    },
                );
                s.tasks.get_mut("s-web-1.1").unwrap().node = Some("n".into());
                Ok(())
            })
            .unwrap();
        assert!(leave_unfinished_init(&store).unwrap());
        assert_eq!(store.snapshot().tasks["s-web-1.1"].node, None);
    }
}

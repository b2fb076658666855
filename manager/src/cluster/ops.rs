//! The cluster's operations (init, admitting a joiner, joining, node views and status,
//! join tokens, node changes, renewals), and the messages the CLI and other nodes
//! exchange with a daemon for them.
//!
//! What each does to the store is a pure function over the state: input the state and
//! the request, output the change (made to the state it is given) or a typed
//! [`Refused`] ([`record_init`], [`undo_init`], [`admit_node`], [`rotate_token`],
//! [`token`], [`resolve`], [`find`], [`change`], [`views`], [`status_of`]). The
//! functions beside them ([`init`], [`admit`], [`change_node`], ...) are thin: they run
//! those in a store transaction and do the I/O around it (certificates, files, calls to
//! other managers).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use pki::{Ca, CertRequest, Identity, JoinTokens, NodeId, NodeRole, Role};
use serde::{Deserialize, Serialize};

use super::files::{self, ClusterConfig, FilesError};
use super::liveness::NodeStatus;
use super::plan::{manager_by_raft_id, raft_peers};
use super::{CallError, Daemon, Member};
use crate::scheduler::Usage;
use crate::state::model::{Availability, ClusterRecord, ClusterSettings, NodeRecord, State};
use crate::state::raft::{Progress, Status};
use crate::state::store::{Store, StoreError};
use spec::task::now_ms;

/// Why a cluster operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The state does not allow it (the message says why and what to do instead).
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("this node is already in a cluster (berth cluster status shows it)")]
    AlreadyMember,
    #[error(
        "this host runs stacks ({}): joining a cluster replaces this host's store with \
         the cluster's; take them down first (berth down)",
        .0.join(", ")
    )]
    RunsStacks(Vec<String>),
    /// A certificate, key, token or TLS setting could not be made or checked (`what`
    /// says which).
    #[error("{what}: {source}")]
    Pki {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another manager did not answer as asked (`what` says which and what for).
    #[error("{what}: {source}")]
    Call {
        what: String,
        #[source]
        source: CallError,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no manager is known")]
    NoManager,
}

/// `map_err` for a `pki` error while doing `what`.
fn pki_error<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> ClusterError {
    move |source| ClusterError::Pki {
        what,
        source: Box::new(source),
    }
}

/// Why a manager refused a cluster operation, as the user who asked should read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The join token is wrong or rotated, or the node was removed (401 on the API).
    #[error("{0}")]
    Token(String),
    #[error("this manager's store has no cluster")]
    NoCluster,
    #[error("no node {0:?} in the cluster (berth node ls lists them)")]
    NoSuchNode(String),
    #[error("{0:?} names several nodes; give more of the id")]
    Ambiguous(String),
    #[error(
        "node {id} is up and runs containers ({}): drain it first (berth node update \
         --availability drain {id}), or take their stacks down (berth down): once \
         removed, nothing would manage them",
        .containers.join(", ")
    )]
    RunsContainers { id: String, containers: Vec<String> },
    #[error("node {0} is already a manager")]
    AlreadyManager(String),
    #[error("node {0} is already a worker")]
    AlreadyWorker(String),
    #[error(
        "node {0} is the last manager: demoting it would leave the cluster without a \
         store; promote another node first"
    )]
    LastManager(String),
    #[error("node {0} is a manager: demote it first (berth node demote {0})")]
    IsManager(String),
    #[error(
        "node {0} is up: stop its daemon first, or use --force (its certificate is \
         refused from now on either way)"
    )]
    IsUp(String),
    /// Anything else the caller got wrong or the manager cannot do (400 on the API).
    #[error("{0}")]
    Other(String),
}

/// Runs `f` in a store transaction, keeping its refusal typed.
fn transact<R>(
    store: &Store,
    mut f: impl FnMut(&mut State) -> Result<R, Refused>,
) -> Result<R, ClusterError> {
    let mut refused = None;
    let done = store.update(|s| {
        f(s).map_err(|e| {
            let message = e.to_string();
            refused = Some(e);
            StoreError::Rejected(message)
        })
    });
    match (done, refused) {
        (Ok(r), _) => Ok(r),
        (Err(StoreError::Rejected(_)), Some(refused)) => Err(refused.into()),
        (Err(e), _) => Err(e.into()),
    }
}

/// An error and its causes in one line, as the user reads it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        cause = c.source();
    }
    text
}

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
    /// The cluster's settings from the start (`--node-grace`, `--no-rebalance`).
    #[serde(default)]
    pub settings: ClusterSettings,
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
    /// From its heartbeats, as the leader sees them: `ready`, `down` (its tasks are
    /// replaced elsewhere) or `unknown` (asked of a manager that does not lead).
    #[serde(default)]
    pub status: String,
    /// `reachable`, `unreachable` or `unknown`.
    pub reachability: String,
    /// `voter`, `learner` or `-`, and how far its log matches the leader's.
    pub raft: String,
    pub matched: u64,
    /// The tasks it runs and what they reserve.
    #[serde(default)]
    pub usage: Usage,
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

/// This machine's hostname, as its node record has it.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// `init`'s change to the state: the cluster recorded with `me` as its only node
/// (any other node record of an init that crashed half-way is replaced), and every
/// task this host already runs stays on it. Pure.
pub fn record_init(s: &mut State, record: ClusterRecord, me: NodeRecord) {
    // A cluster record without a config file is an init that crashed half-way:
    // it is replaced.
    s.cluster = Some(record);
    s.nodes.clear();
    // The containers this host already runs stay here.
    for t in s.tasks.values_mut() {
        t.node = Some(me.id.clone());
    }
    s.nodes.insert(me.id.clone(), me);
}

/// `berth cluster init` on this daemon: makes the cluster CA, the join tokens, this
/// node's manager certificate and an admin certificate, records the cluster and this
/// node in the store (existing tasks stay on this node), then writes the files that
/// make the next start a cluster start. The caller restarts the daemon.
pub fn init(
    state_dir: &Path,
    store: &Store,
    req: &InitRequest,
) -> Result<InitAnswer, ClusterError> {
    if files::config_path(state_dir).exists() {
        return Err(ClusterError::AlreadyMember);
    }
    let advertise = files::parse_addr(&req.advertise, "--advertise-addr")?;
    let listen = listen_addr(req.listen.as_deref(), advertise)?;
    let now = SystemTime::now();
    let ca = Ca::create(now).map_err(pki_error("create the cluster CA"))?;
    let tokens = JoinTokens::generate(ca.digest());
    let node_id = NodeId::generate();
    let creds = ca
        .issue(
            &CertRequest::new(Identity::new(node_id.clone(), Role::Manager))
                .address(advertise.ip().to_string()),
            now,
        )
        .map_err(pki_error("issue this manager's certificate"))?;
    let admin = ca
        .issue(
            &CertRequest::new(Identity::new(NodeId::generate(), Role::Admin)),
            now,
        )
        .map_err(pki_error("issue the admin certificate"))?;
    let cluster_id = NodeId::generate().as_str().to_string();
    let me = node_id.as_str().to_string();
    let record = ClusterRecord {
        id: cluster_id.clone(),
        created_at: now_ms(),
        ca_cert: ca.cert().to_pem(),
        ca_key: ca.key_pem(),
        worker_token: tokens.token(NodeRole::Worker).to_string(),
        manager_token: tokens.token(NodeRole::Manager).to_string(),
        next_raft_id: FIRST_RAFT_ID + 1,
        removed: Default::default(),
        settings: req.settings.clone(),
    };
    let node = NodeRecord {
        id: me.clone(),
        role: NodeRole::Manager,
        addr: advertise.to_string(),
        hostname: hostname(),
        raft_id: FIRST_RAFT_ID,
        joined_at: now_ms(),
        labels: BTreeMap::new(),
        availability: Default::default(),
        platform: Default::default(),
        capacity: Default::default(),
        generic_resources: Default::default(),
    };
    store.update(|s| {
        record_init(s, record.clone(), node.clone());
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
        .map_err(pki_error("save the admin certificate"))
        .and_then(|()| Ok(files::save(state_dir, &config, &creds)?));
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

/// Undoes the store's half of an init that did not finish: the cluster record and
/// nodes go, and every task is the single host's again. Whether there was anything
/// to undo. Pure.
pub fn undo_init(s: &mut State) -> bool {
    if s.cluster.is_none() && s.nodes.is_empty() {
        return false;
    }
    s.cluster = None;
    s.nodes.clear();
    for t in s.tasks.values_mut() {
        t.node = None;
        t.generic_resources.clear();
    }
    true
}

/// A single host's store that holds a cluster record is an init that did not finish
/// (its files were never written): the record goes, and every task is this host's
/// again. Run by `init` when writing the files fails, and by a single-host daemon at
/// start (after a crash in between).
pub fn leave_unfinished_init(store: &Store) -> Result<bool, StoreError> {
    store.update(|s| Ok(undo_init(s)))
}

fn listen_addr(listen: Option<&str>, advertise: SocketAddr) -> Result<SocketAddr, FilesError> {
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

/// Records node `id` (admitted with `role`, reached at `addr`) in the cluster: a
/// manager gets the next Raft id, which this returns (0 for a worker). Pure.
pub fn admit_node(
    s: &mut State,
    id: &str,
    role: NodeRole,
    addr: SocketAddr,
    hostname: &str,
    now_ms: u64,
) -> Result<u64, Refused> {
    let c = s.cluster.as_mut().ok_or(Refused::NoCluster)?;
    let raft_id = if role == NodeRole::Manager {
        c.next_raft_id += 1;
        c.next_raft_id - 1
    } else {
        0
    };
    s.nodes.insert(
        id.to_string(),
        NodeRecord {
            id: id.to_string(),
            role,
            addr: addr.to_string(),
            hostname: hostname.to_string(),
            raft_id,
            joined_at: now_ms,
            labels: BTreeMap::new(),
            availability: Default::default(),
            platform: Default::default(),
            capacity: Default::default(),
            generic_resources: Default::default(),
        },
    );
    Ok(raft_id)
}

/// A hostname as `node ls` may show it on an admin's terminal: letters, digits, '.',
/// '-', '_' only, at most 64 of them.
pub fn clean_hostname(hostname: &str) -> String {
    hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect()
}

/// The manager's side of a join: checks the token, signs the joiner's key for a new
/// node id with the token's role, and records the node (a manager gets the next Raft
/// id; the membership loop adds it to the group).
pub fn admit(member: &Member, req: &JoinRequest) -> Result<JoinAnswer, ClusterError> {
    let cluster = member
        .store
        .read(|s| s.cluster.clone())
        .ok_or(Refused::NoCluster)?;
    let addr = files::parse_addr(&req.addr, "the joiner's address")?;
    let ca = Ca::from_pem(&cluster.ca_cert, &cluster.ca_key)
        .map_err(pki_error("the cluster CA in the store"))?;
    let tokens = JoinTokens::from_tokens(&cluster.worker_token, &cluster.manager_token)
        .map_err(pki_error("the join tokens in the store"))?;
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
        other => Refused::Other(chain(&other)),
    })?;
    let id = identity.id.as_str().to_string();
    let role = match identity.role {
        Role::Manager => NodeRole::Manager,
        _ => NodeRole::Worker,
    };
    let hostname = clean_hostname(&req.hostname);
    let raft_id = transact(&member.store, |s| {
        admit_node(s, &id, role, addr, &hostname, now_ms())
    })?;
    let managers = member.store.read(|s| raft_peers(&s.nodes, &id));
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
pub fn join(
    state_dir: &Path,
    store: &Store,
    req: &JoinLocalRequest,
    daemon: &dyn Daemon,
) -> Result<JoinAnswer, ClusterError> {
    if files::config_path(state_dir).exists() {
        return Err(ClusterError::AlreadyMember);
    }
    let stacks: Vec<String> = store.read(|s| s.stacks.keys().cloned().collect());
    if !stacks.is_empty() {
        return Err(ClusterError::RunsStacks(stacks));
    }
    let token: pki::JoinToken = req.token.parse().map_err(pki_error("the join token"))?;
    let advertise = files::parse_addr(&req.advertise, "--advertise-addr")?;
    let listen = listen_addr(req.listen.as_deref(), advertise)?;
    let remote = files::parse_addr(&req.remote, "the manager address")?;
    let key = pki::NodeKey::generate().map_err(pki_error("make this node's key"))?;
    let (mut config, pinned) =
        pki::join::client_config(&token).map_err(pki_error("prepare the join connection"))?;
    config.alpn_protocols = vec![crate::port::ALPN_HTTP.to_vec()];
    let request = JoinRequest {
        token: req.token.clone(),
        csr: key
            .csr_pem()
            .map_err(pki_error("make this node's certificate request"))?,
        addr: advertise.to_string(),
        hostname: hostname(),
    };
    let answer: JoinAnswer = super::call(
        daemon,
        &remote.to_string(),
        Arc::new(config),
        std::time::Duration::from_secs(30),
        "POST",
        "/v1/cluster/join",
        Some(&request),
    )
    .map_err(|source| ClusterError::Call {
        what: format!("join the cluster of the manager at {remote}"),
        source,
    })?;
    let creds = pki::join::finish(&token, &pinned, &key, &answer.cert)
        .map_err(pki_error("check the certificate the manager sent"))?;
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
fn set_aside_single_host_store(state_dir: &Path) -> Result<(), ClusterError> {
    let raft = state_dir.join("manager").join("raft");
    let aside = state_dir.join("manager").join("raft.single-host");
    let _ = std::fs::remove_dir_all(&aside);
    match std::fs::rename(&raft, &aside) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ClusterError::Io {
            what: "move aside",
            path: raft,
            source,
        }),
    }
}

/// Deletes this node's replica of the cluster store (and any set-aside one).
fn remove_replica(state_dir: &Path) -> Result<(), ClusterError> {
    for dir in ["raft", "raft.single-host"] {
        let path = state_dir.join("manager").join(dir);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ClusterError::Io {
                    what: "remove",
                    path,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// The nodes with what the leader knows of them: from its Raft `status` (managers'
/// reachability and logs), `live` (each node's status from its heartbeats) and `usage`
/// (the tasks each runs and what they reserve). Pure.
pub fn views(
    nodes: &BTreeMap<String, NodeRecord>,
    status: &Status,
    live: &dyn Fn(&str) -> NodeStatus,
    usage: &BTreeMap<String, Usage>,
) -> Vec<NodeView> {
    let progress: BTreeMap<u64, Progress> = status.progress.iter().map(|p| (p.id, *p)).collect();
    nodes
        .values()
        .map(|n| {
            let raft = if status.voters.contains(&n.raft_id) && n.raft_id != 0 {
                "voter"
            } else if status.learners.contains(&n.raft_id) && n.raft_id != 0 {
                "learner"
            } else {
                "-"
            };
            let node_status = live(&n.id);
            let reachability = match n.role {
                NodeRole::Manager => match progress.get(&n.raft_id) {
                    Some(p) if p.recent_active => "reachable",
                    Some(_) => "unreachable",
                    None => "unknown",
                },
                NodeRole::Worker => match node_status {
                    NodeStatus::Ready => "reachable",
                    NodeStatus::Down => "unreachable",
                    NodeStatus::Unknown => "unknown",
                },
            };
            NodeView {
                record: n.clone(),
                leader: n.raft_id != 0 && n.raft_id == status.leader,
                status: node_status.as_str().to_string(),
                reachability: reachability.to_string(),
                raft: raft.to_string(),
                matched: progress.get(&n.raft_id).map_or(0, |p| p.matched),
                usage: usage.get(&n.id).copied().unwrap_or_default(),
            }
        })
        .collect()
}

/// The nodes with what the leader knows of them. On another manager the caller asks
/// the leader instead (only it knows how far each member's log is).
pub fn node_views(member: &Member) -> Vec<NodeView> {
    let status = member.store.node().status();
    let now = Instant::now();
    let live = &member.liveness;
    member.store.read(|s| {
        let grace = s
            .cluster
            .as_ref()
            .map(|c| c.settings.node_grace())
            .unwrap_or_default();
        let usage = crate::scheduler::usage(&s.stacks, &s.tasks);
        views(&s.nodes, &status, &|id| live.status(id, now, grace), &usage)
    })
}

/// `node ls`: the node list comes from the leader, which alone knows how far each
/// manager's log is; another manager asks it, and answers from its own view if it
/// cannot.
pub async fn list_nodes(member: Arc<Member>) -> Vec<NodeView> {
    if !member.is_leader() {
        if let Some(addr) = member.leader_addr() {
            let m = member.clone();
            let asked = tokio::task::spawn_blocking(move || {
                m.call::<Vec<NodeView>>(&addr, "GET", "/v1/nodes", None::<&()>)
            })
            .await;
            if let Ok(Ok(list)) = asked {
                return list;
            }
        }
    }
    node_views(&member)
}

/// `cluster status` of a manager: `config` is its own, `raft` its Raft node's status,
/// `ready` whether it serves requests, `hash` its state's. Pure.
pub fn status_of(
    s: &State,
    raft: &Status,
    config: &ClusterConfig,
    ready: bool,
    hash: String,
) -> ClusterStatus {
    ClusterStatus {
        member: true,
        ready,
        cluster_id: config.cluster_id.clone(),
        node_id: config.node_id.clone(),
        role: "manager".into(),
        addr: config.advertise.to_string(),
        leader: manager_by_raft_id(&s.nodes, raft.leader)
            .map(|n| format!("{} ({})", n.id, n.addr))
            .unwrap_or_else(|| "none".into()),
        raft_role: format!("{:?}", raft.role).to_lowercase(),
        term: raft.term,
        commit: raft.commit,
        applied: raft.applied,
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
        version: s.version,
        state_hash: hash,
        led_terms: raft.led_terms.clone(),
    }
}

pub fn status(member: &Member) -> ClusterStatus {
    let st = member.store.node().status();
    let hash = hex::encode(member.store.node().hash());
    member
        .store
        .read(|s| status_of(s, &st, &member.config, member.is_ready(), hash))
}

/// `status` of a node that is not a manager: a single host (nothing) or a worker
/// (what its configuration says).
pub fn not_a_member() -> ClusterStatus {
    ClusterStatus {
        member: false,
        ready: false,
        cluster_id: String::new(),
        node_id: String::new(),
        role: String::new(),
        addr: String::new(),
        leader: String::new(),
        raft_role: String::new(),
        term: 0,
        commit: 0,
        applied: 0,
        managers: 0,
        workers: 0,
        version: 0,
        state_hash: String::new(),
        led_terms: Vec::new(),
    }
}

/// `cluster status` of a worker, from its configuration.
pub fn worker_status(config: &ClusterConfig) -> ClusterStatus {
    ClusterStatus {
        member: true,
        cluster_id: config.cluster_id.clone(),
        node_id: config.node_id.clone(),
        role: "worker".into(),
        ready: true,
        addr: config.advertise.to_string(),
        leader: String::new(),
        managers: config.managers.len(),
        ..not_a_member()
    }
}

/// Replaces the join token for `role` (the old one stops working on every manager at
/// once). Pure.
pub fn rotate_token(s: &mut State, role: NodeRole) -> Result<(), Refused> {
    let c = s.cluster.as_mut().ok_or(Refused::NoCluster)?;
    let mut tokens = JoinTokens::from_tokens(&c.worker_token, &c.manager_token)
        .map_err(|e| Refused::Other(e.to_string()))?;
    tokens.rotate(role);
    c.worker_token = tokens.token(NodeRole::Worker).to_string();
    c.manager_token = tokens.token(NodeRole::Manager).to_string();
    Ok(())
}

/// The current join token for `role`. Pure.
pub fn token(s: &State, role: NodeRole) -> Result<String, Refused> {
    s.cluster
        .as_ref()
        .map(|c| match role {
            NodeRole::Worker => c.worker_token.clone(),
            NodeRole::Manager => c.manager_token.clone(),
        })
        .ok_or(Refused::NoCluster)
}

/// The current token for `role`, after replacing it if `rotate`.
pub fn join_token(member: &Member, role: NodeRole, rotate: bool) -> Result<String, ClusterError> {
    if rotate {
        transact(&member.store, |s| rotate_token(s, role))?;
    }
    Ok(member.store.read(|s| token(s, role))?)
}

/// Finds a node by id or by a unique prefix of it, or by hostname. Pure.
pub fn resolve(nodes: &BTreeMap<String, NodeRecord>, name: &str) -> Result<String, Refused> {
    if nodes.contains_key(name) {
        return Ok(name.to_string());
    }
    let found: Vec<&NodeRecord> = nodes
        .values()
        .filter(|n| n.id.starts_with(name) || n.hostname == name)
        .collect();
    match found.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(Refused::NoSuchNode(name.to_string())),
        _ => Err(Refused::Ambiguous(name.to_string())),
    }
}

/// The record of the node `name` names ([`resolve`]). Pure.
pub fn find(s: &State, name: &str) -> Result<NodeRecord, Refused> {
    let id = resolve(&s.nodes, name)?;
    s.nodes.get(&id).cloned().ok_or(Refused::NoSuchNode(id))
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
    /// `node update --availability`: `pause` places nothing new there, `drain` also
    /// moves its tasks to other nodes.
    Availability(Availability),
}

/// A change of the cluster's settings (`berth cluster update`): each field given
/// replaces the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsChange {
    #[serde(default)]
    pub node_grace_ms: Option<u64>,
    #[serde(default)]
    pub rebalance: Option<bool>,
}

/// Applies `change` to the cluster's settings; returns them. Pure.
pub fn change_settings(s: &mut State, change: &SettingsChange) -> Result<ClusterSettings, Refused> {
    let Some(c) = s.cluster.as_mut() else {
        return Err(Refused::Other("this node is not in a cluster".into()));
    };
    if let Some(ms) = change.node_grace_ms {
        if ms < 2000 {
            return Err(Refused::Other(format!(
                "a node grace of {ms} ms is too short: nodes heartbeat every second, so it \
                 must be at least 2s"
            )));
        }
        c.settings.node_grace_ms = ms;
    }
    if let Some(on) = change.rebalance {
        c.settings.no_rebalance = !on;
    }
    Ok(c.settings.clone())
}

/// `berth cluster update`: the settings changed in one store transaction.
pub fn update_settings(
    member: &Member,
    change: &SettingsChange,
) -> Result<ClusterSettings, ClusterError> {
    transact(&member.store, |s| change_settings(s, change))
}

/// Applies `change` to node `name` (`reachable`: the ids of the nodes that are up, which
/// `rm` checks); returns its id. Pure: on a refusal the state is unchanged.
pub fn change(
    s: &mut State,
    name: &str,
    change: &NodeChange,
    reachable: &[String],
) -> Result<String, Refused> {
    let id = resolve(&s.nodes, name)?;
    let managers = s
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager)
        .count();
    let next_raft_id = s.cluster.as_ref().map_or(0, |c| c.next_raft_id);
    // A node removed while it is up would keep running its containers with nothing
    // managing them (its tasks are replaced elsewhere): it must be drained first. A
    // node that is down has its tasks replaced already, and a demoted manager goes on
    // running its tasks as a worker.
    let live: Vec<String> = s
        .tasks
        .values()
        .filter(|t| t.node.as_deref() == Some(id.as_str()))
        .filter(|t| t.status.state() != spec::task::TaskState::Removed)
        .map(|t| t.name())
        .collect();
    let stops_running = matches!(change, NodeChange::Remove { .. }) && reachable.contains(&id);
    if stops_running && !live.is_empty() {
        return Err(Refused::RunsContainers {
            id,
            containers: live,
        });
    }
    let Some(node) = s.nodes.get_mut(&id) else {
        return Err(Refused::NoSuchNode(id));
    };
    match change {
        NodeChange::Promote => {
            if node.role == NodeRole::Manager {
                return Err(Refused::AlreadyManager(id));
            }
            node.role = NodeRole::Manager;
            node.raft_id = next_raft_id;
            if let Some(c) = s.cluster.as_mut() {
                c.next_raft_id += 1;
            }
        }
        NodeChange::Demote => {
            if node.role == NodeRole::Worker {
                return Err(Refused::AlreadyWorker(id));
            }
            if managers <= 1 {
                return Err(Refused::LastManager(id));
            }
            node.role = NodeRole::Worker;
            node.raft_id = 0;
        }
        NodeChange::Remove { force } => {
            if node.role == NodeRole::Manager {
                return Err(Refused::IsManager(id));
            }
            if !force && reachable.contains(&id) {
                return Err(Refused::IsUp(id));
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
        NodeChange::Availability(a) => node.availability = *a,
    }
    Ok(id)
}

/// Applies `change` to node `name`; returns its id. The membership loop makes the
/// Raft configuration follow.
pub fn change_node(
    member: &Member,
    name: &str,
    node_change: &NodeChange,
) -> Result<String, ClusterError> {
    let reachable: Vec<String> = node_views(member)
        .into_iter()
        .filter(|v| v.reachability == "reachable")
        .map(|v| v.record.id)
        .collect();
    transact(&member.store, |s| change(s, name, node_change, &reachable))
}

/// A node change as the cluster makes it. Only the leader knows which nodes are up
/// (Raft progress, workers' heartbeats), which `rm` checks: another manager passes it
/// on (the leader's refusal is this one's). Other changes are plain store
/// transactions, which Raft forwards itself.
pub async fn change_on_leader(
    member: Arc<Member>,
    name: String,
    node_change: NodeChange,
) -> Result<String, ClusterError> {
    let forward = matches!(node_change, NodeChange::Remove { .. }) && !member.is_leader();
    if let Some(addr) = forward.then(|| member.leader_addr()).flatten() {
        let m = member.clone();
        let path = format!("/v1/nodes/{name}");
        let asked = tokio::task::spawn_blocking(move || {
            m.call::<String>(&addr, "POST", &path, Some(&node_change))
        })
        .await;
        return match asked {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(e)) => Err(Refused::Other(e.0).into()),
            Err(e) => Err(ClusterError::Call {
                what: "ask the leader".into(),
                source: CallError(e.to_string()),
            }),
        };
    }
    let asked =
        tokio::task::spawn_blocking(move || change_node(&member, &name, &node_change)).await;
    asked.unwrap_or_else(|e| {
        Err(ClusterError::Call {
            what: "change the node".into(),
            source: CallError(e.to_string()),
        })
    })
}

/// One node's record as this manager applied it (possibly stale).
pub fn node_local(member: &Member, name: &str) -> Result<NodeRecord, Refused> {
    member.store.read(|s| find(s, name))
}

/// One node's record, read after a ReadIndex: it holds every change committed before
/// the call (a linearizable read), or fails if no quorum confirms this manager's view.
pub async fn node_fresh(member: &Member, name: &str) -> Result<NodeRecord, ClusterError> {
    member
        .store
        .node()
        .read_index()
        .await
        .map_err(StoreError::Raft)?;
    Ok(member.store.read(|s| find(s, name))?)
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

/// What a renewal gives node `id`: its record (its role now) and the cluster's (whose
/// CA signs). Pure.
pub fn renewal(s: &State, id: &str) -> Result<(NodeRecord, ClusterRecord), Refused> {
    let record = s.nodes.get(id).cloned().ok_or_else(|| {
        Refused::Token(format!("node {id} is not in the cluster (it was removed)"))
    })?;
    let cluster = s.cluster.clone().ok_or(Refused::NoCluster)?;
    Ok((record, cluster))
}

/// The manager's side of a renewal: a certificate for the caller's own node id (from
/// its verified certificate) with the role the store gives it now. This is how a
/// promoted worker gets a manager certificate and a demoted manager a worker one.
pub fn renew(
    member: &Member,
    peer: &Identity,
    req: &RenewRequest,
) -> Result<RenewAnswer, ClusterError> {
    let id = peer.id.as_str().to_string();
    let (record, cluster) = member.store.read(|s| renewal(s, &id))?;
    let ca = Ca::from_pem(&cluster.ca_cert, &cluster.ca_key)
        .map_err(pki_error("the cluster CA in the store"))?;
    let ip = record
        .addr
        .parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mut cert_req = CertRequest::new(Identity::new(peer.id.clone(), record.role.role()));
    if !ip.is_empty() {
        cert_req = cert_req.address(ip);
    }
    let cert = ca
        .sign_csr(&req.csr, &cert_req, SystemTime::now())
        .map_err(pki_error("sign the certificate request"))?;
    Ok(RenewAnswer {
        cert,
        role: record.role,
        raft_id: record.raft_id,
        managers: member.store.read(|s| raft_peers(&s.nodes, &id)),
    })
}

/// A node's side of a role change: asks a manager (one of `managers`, in turn) for a
/// certificate with its current role, then rewrites its files for that role. The
/// caller restarts the daemon.
pub async fn renew_from_cluster(
    state_dir: &Path,
    config: &ClusterConfig,
    creds: &pki::NodeCredentials,
    daemon: Arc<dyn Daemon>,
) -> Result<(), ClusterError> {
    let http = crate::port::http_client_config(creds, &pki::DenyList::new())
        .map_err(pki_error("make the cluster client's TLS settings"))?;
    let key = pki::NodeKey::generate().map_err(pki_error("make a new key"))?;
    let csr = key
        .csr_pem()
        .map_err(pki_error("make a certificate request"))?;
    let mut last = ClusterError::NoManager;
    for (_, _, addr) in &config.managers {
        let body = RenewRequest { csr: csr.clone() };
        let (daemon, http, to) = (daemon.clone(), http.clone(), addr.clone());
        let answer = tokio::task::spawn_blocking(move || {
            super::call::<RenewAnswer>(
                &*daemon,
                &to,
                http,
                super::NODE_CALL_TIMEOUT,
                "POST",
                "/v1/dispatcher/renew",
                Some(&body),
            )
        })
        .await
        .unwrap_or_else(|e| Err(CallError(format!("the call was cut short: {e}"))));
        let answer = match answer {
            Ok(a) => a,
            Err(source) => {
                last = ClusterError::Call {
                    what: format!("ask the manager at {addr}"),
                    source,
                };
                continue;
            }
        };
        let renewed =
            pki::NodeCredentials::from_pem(creds.ca().clone(), &answer.cert, &key.key_pem())
                .map_err(pki_error("check the renewed certificate"))?;
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
            settings: Default::default(),
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
                        availability: Default::default(),
                        platform: Default::default(),
                        capacity: Default::default(),
                        generic_resources: Default::default(),
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

//! `berth cluster ...`, `berth node ...` and `berth context ...`: making and running a
//! cluster, and pointing the CLI at a remote one.
//!
//! Every verb talks to a daemon: the local one over its unix socket, or, with a
//! context (`--host`, `BERTH_HOST`, or the context file), a remote manager over mutual
//! TLS with an admin certificate (`--tls-dir`, `BERTH_TLS_DIR`, the context file, or
//! the `admin/` directory `cluster init` wrote on this host).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::client::Client;
use manager::cluster::ops::{
    ClusterStatus, InitAnswer, InitRequest, JoinAnswer, JoinLocalRequest, NodeChange, NodeView,
};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make this node the first manager of a new cluster (its stacks keep running)
    Init(InitArgs),
    /// Join the cluster of the manager at ADDR with a join token
    Join(JoinArgs),
    /// Print (or --rotate) the token that joins a worker or a manager
    JoinToken(TokenArgs),
    /// Show this node's view of the cluster: leader, Raft state, members
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The address other nodes reach this one at: IP[:PORT] (port 7377 by default)
    #[arg(long = "advertise-addr", value_name = "IP[:PORT]")]
    advertise: String,
    /// Where the cluster port listens [default: every address, the advertised port]
    #[arg(long = "listen-addr", value_name = "IP[:PORT]")]
    listen: Option<String>,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The join token (`berth cluster join-token worker|manager` on a manager prints it)
    #[arg(long)]
    token: String,
    /// This node's address for the others [default: the local address that reaches ADDR]
    #[arg(long = "advertise-addr", value_name = "IP[:PORT]")]
    advertise: Option<String>,
    #[arg(long = "listen-addr", value_name = "IP[:PORT]")]
    listen: Option<String>,
    /// A manager's cluster address, IP[:PORT]
    #[arg(value_name = "ADDR")]
    manager: String,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Replace the token: the old one stops working at once
    #[arg(long)]
    rotate: bool,
    /// Print the token only
    #[arg(short, long)]
    quiet: bool,
    /// worker or manager
    #[arg(value_name = "ROLE")]
    role: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// table or json
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the cluster's nodes
    Ls(NodeLsArgs),
    /// Make workers managers
    Promote(NodesArgs),
    /// Make managers workers
    Demote(NodesArgs),
    /// Remove nodes from the cluster: their certificates are refused from now on
    Rm(NodeRmArgs),
    /// Add or remove node labels
    Update(NodeUpdateArgs),
    /// Show one node's record (--fresh: a linearizable read through the leader)
    Inspect(NodeInspectArgs),
}

#[derive(Debug, Args)]
pub struct NodeLsArgs {
    /// table or json
    #[arg(long, default_value = "table")]
    format: String,
    /// Only ids
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[arg(value_name = "NODE", required = true)]
    nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodeRmArgs {
    /// Remove a node that is still up
    #[arg(short, long)]
    force: bool,
    #[arg(value_name = "NODE", required = true)]
    nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodeUpdateArgs {
    /// KEY=VALUE (repeatable)
    #[arg(long = "label-add", value_name = "KEY=VALUE")]
    add: Vec<String>,
    /// KEY (repeatable)
    #[arg(long = "label-rm", value_name = "KEY")]
    remove: Vec<String>,
    #[arg(value_name = "NODE")]
    node: String,
}

#[derive(Debug, Args)]
pub struct NodeInspectArgs {
    #[arg(long)]
    fresh: bool,
    #[arg(value_name = "NODE")]
    node: String,
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Point every verb at a remote manager (written to the context file)
    Set(ContextSetArgs),
    /// Go back to the local daemon
    Unset,
    /// Show where verbs go
    Show,
}

#[derive(Debug, Args)]
pub struct ContextSetArgs {
    /// A manager's cluster address, IP[:PORT]
    #[arg(long)]
    host: String,
    /// A directory with ca.crt, node.crt and node.key of an admin certificate
    #[arg(long = "tls-dir")]
    tls_dir: PathBuf,
}

/// Where verbs go: the context file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContextFile {
    pub host: Option<String>,
    pub tls_dir: Option<PathBuf>,
}

/// The remote manager this invocation talks to, if any (set once from the command
/// line, the environment and the context file).
static REMOTE: OnceLock<Result<Option<(String, PathBuf)>, String>> = OnceLock::new();

pub fn context_path() -> PathBuf {
    if let Ok(p) = std::env::var("BERTH_CONTEXT") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".config/berth/context.json")
}

fn read_context() -> anyhow::Result<ContextFile> {
    let path = context_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a berth context file; fix it or run berth context unset",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ContextFile::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Settles where verbs go: `--host`/`BERTH_HOST` first, then the context file. The
/// admin certificate comes from `--tls-dir`/`BERTH_TLS_DIR`, the context file, or this
/// host's `<state>/cluster/admin`.
///
/// A broken context file is reported by the first verb that needs to know where to
/// go, not by every command: `berth context unset` must still work.
pub fn set_remote(host: Option<String>, tls_dir: Option<PathBuf>, state_dir: &Path) {
    let host = host.filter(|h| !h.is_empty());
    let context = if host.is_some() && tls_dir.is_some() {
        Ok(ContextFile::default())
    } else {
        read_context().map_err(|e| format!("{e:#}"))
    };
    let remote = context.map(|context| {
        let host = host.or(context.host)?;
        let dir = tls_dir
            .or(context.tls_dir)
            .unwrap_or_else(|| manager::cluster::files::admin_dir(state_dir));
        Some((host, dir))
    });
    let _ = REMOTE.set(remote);
}

fn remote_target() -> anyhow::Result<Option<&'static (String, PathBuf)>> {
    match REMOTE.get() {
        None | Some(Ok(None)) => Ok(None),
        Some(Ok(Some(remote))) => Ok(Some(remote)),
        Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
    }
}

/// A client of the remote manager, when the context names one.
pub fn remote_client() -> anyhow::Result<Option<Client>> {
    let Some((host, dir)) = remote_target()? else {
        return Ok(None);
    };
    let addr = manager::cluster::files::parse_addr(host, "--host")?;
    let creds = pki::NodeCredentials::load(dir).with_context(|| {
        format!(
            "load the admin certificate for {host} from {} (give --tls-dir DIR with ca.crt, \
             node.crt and node.key; `berth cluster init` wrote one in <state>/cluster/admin)",
            dir.display()
        )
    })?;
    let config = manager::port::http_client_config(&creds, &pki::DenyList::new())?;
    Ok(Some(Client::tls(
        &addr.to_string(),
        config,
        pki::tls::manager_server_name(),
    )))
}

/// The daemon verbs go to: the remote manager, or the local daemon.
fn client(state_dir: &Path) -> anyhow::Result<Client> {
    if let Some(c) = remote_client()? {
        return Ok(c);
    }
    let c = Client::new(&crate::daemon::socket_path(state_dir));
    if !c.ping() {
        bail!(
            "no berth daemon is running for {} (start one: berth daemon, or the \
             examples/berth.service unit)",
            state_dir.display()
        );
    }
    Ok(c)
}

/// The local daemon, for what only it can do (becoming a member); started if none
/// runs, as `berth up` does.
fn local(state_dir: &Path, verb: &str) -> anyhow::Result<Client> {
    if remote_target()?.is_some() {
        bail!("berth cluster {verb} changes this host: run it on the node itself, without --host");
    }
    super::stack::connect(state_dir, true)
}

pub fn cluster(state_dir: &Path, cmd: &ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Init(args) => {
            let c = local(state_dir, "init")?;
            let answer: InitAnswer = c.call(
                "POST",
                "/v1/cluster/init",
                Some(&InitRequest {
                    advertise: args.advertise.clone(),
                    listen: args.listen.clone(),
                }),
            )?;
            wait_member(&c)?;
            println!(
                "Cluster {} initialized: this node ({}) is its first manager, at {}.\n\n\
                 To add a worker, run on it:\n    berth cluster join --token {} {}\n\n\
                 To add a manager, run on it:\n    berth cluster join --token {} {}\n\n\
                 An admin certificate for remote CLIs is in {} \
                 (berth --host {} --tls-dir DIR node ls).",
                answer.cluster_id,
                answer.node_id,
                answer.advertise,
                answer.worker_token,
                answer.advertise,
                answer.manager_token,
                answer.advertise,
                answer.admin_dir,
                answer.advertise
            );
        }
        ClusterCommand::Join(args) => {
            let c = local(state_dir, "join")?;
            let remote = manager::cluster::files::parse_addr(&args.manager, "the manager address")?;
            let advertise = match &args.advertise {
                Some(a) => a.clone(),
                None => route_source(remote)?.to_string(),
            };
            let answer: JoinAnswer = c.call(
                "POST",
                "/v1/cluster/join-local",
                Some(&JoinLocalRequest {
                    token: args.token.clone(),
                    remote: remote.to_string(),
                    advertise,
                    listen: args.listen.clone(),
                }),
            )?;
            wait_member(&c)?;
            println!(
                "This node ({}) joined cluster {} as a {}.",
                answer.node_id,
                answer.cluster_id,
                answer.role.as_str()
            );
        }
        ClusterCommand::JoinToken(args) => {
            let c = client(state_dir)?;
            let token: String = if args.rotate {
                c.call(
                    "POST",
                    &format!("/v1/cluster/join-token/{}", args.role),
                    Some(&manager::api::cluster::TokenRequest { rotate: true }),
                )?
            } else {
                c.call(
                    "GET",
                    &format!("/v1/cluster/join-token/{}", args.role),
                    None::<&()>,
                )?
            };
            if args.quiet {
                println!("{token}");
            } else {
                let status: ClusterStatus = c.call("GET", "/v1/cluster", None::<&()>)?;
                if args.rotate {
                    println!(
                        "The {} join token was rotated: the old one no longer works.",
                        args.role
                    );
                }
                println!(
                    "To add a {}, run on it:\n    berth cluster join --token {token} {}",
                    args.role, status.addr
                );
            }
        }
        ClusterCommand::Status(args) => {
            let c = client(state_dir)?;
            let s: ClusterStatus = c.call("GET", "/v1/cluster", None::<&()>)?;
            if args.format == "json" {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(ExitCode::SUCCESS);
            }
            if !s.member {
                println!(
                    "This node is a single host, not in a cluster (berth cluster init makes one)."
                );
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = format!(
                "Cluster:   {}\nNode:      {} ({}, {})\n",
                s.cluster_id, s.node_id, s.role, s.addr
            );
            if s.role == "manager" {
                out += &format!(
                    "Leader:    {}\nRaft:      {} in term {}, commit {}, applied {}\n\
                     Members:   {} managers, {} workers\nStore:     version {}, hash {}\n",
                    s.leader,
                    s.raft_role,
                    s.term,
                    s.commit,
                    s.applied,
                    s.managers,
                    s.workers,
                    s.version,
                    &s.state_hash[..s.state_hash.len().min(16)]
                );
            } else {
                out += &format!("Managers:  {} known\n", s.managers);
            }
            print!("{out}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The local address this host uses to reach `remote` (no packet is sent).
fn route_source(remote: std::net::SocketAddr) -> anyhow::Result<std::net::IpAddr> {
    let any: std::net::SocketAddr = if remote.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = std::net::UdpSocket::bind(any)?;
    sock.connect(remote)
        .with_context(|| format!("this host has no route to {remote}; give --advertise-addr"))?;
    Ok(sock.local_addr()?.ip())
}

/// Waits for the daemon to come back as a cluster member after it restarted itself.
fn wait_member(c: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    // Give the old process time to go: it restarts 300 ms after answering.
    std::thread::sleep(Duration::from_millis(400));
    while Instant::now() < deadline {
        if let Ok(s) = c.call::<ClusterStatus>("GET", "/v1/cluster", None::<&()>) {
            if s.member && s.ready {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the daemon did not come back as a ready cluster member within 30 s (a new manager \
         waits for the leader's snapshot and a quorum); berth cluster status and the \
         daemon's log say why"
    )
}

pub fn node(state_dir: &Path, cmd: &NodeCommand) -> anyhow::Result<ExitCode> {
    let c = client(state_dir)?;
    match cmd {
        NodeCommand::Ls(args) => {
            let nodes: Vec<NodeView> = c.call("GET", "/v1/nodes", None::<&()>)?;
            if args.quiet {
                for n in &nodes {
                    println!("{}", n.record.id);
                }
            } else if args.format == "json" {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print!("{}", node_table(&nodes));
            }
        }
        NodeCommand::Promote(args) => {
            change_all(&c, &args.nodes, &NodeChange::Promote, "promoted")?
        }
        NodeCommand::Demote(args) => change_all(&c, &args.nodes, &NodeChange::Demote, "demoted")?,
        NodeCommand::Rm(args) => change_all(
            &c,
            &args.nodes,
            &NodeChange::Remove { force: args.force },
            "removed",
        )?,
        NodeCommand::Update(args) => {
            let mut add = BTreeMap::new();
            for kv in &args.add {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--label-add {kv:?}: expected KEY=VALUE"))?;
                add.insert(k.to_string(), v.to_string());
            }
            let change = NodeChange::Labels {
                add,
                remove: args.remove.clone(),
            };
            change_all(&c, std::slice::from_ref(&args.node), &change, "updated")?;
        }
        NodeCommand::Inspect(args) => {
            let path = format!(
                "/v1/nodes/{}{}",
                node_name(&args.node)?,
                if args.fresh { "?fresh=true" } else { "" }
            );
            let record: serde_json::Value = c.call("GET", &path, None::<&()>)?;
            println!("{}", serde_json::to_string_pretty(&record)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A node name as the user gave it, checked before it goes into a URL: ids, id
/// prefixes and host names only use these characters.
fn node_name(name: &str) -> anyhow::Result<&str> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        bail!("{name:?} is not a node id or host name (berth node ls lists them)");
    }
    Ok(name)
}

fn change_all(c: &Client, nodes: &[String], change: &NodeChange, done: &str) -> anyhow::Result<()> {
    for n in nodes {
        let n = node_name(n)?;
        let id: String = c.call("POST", &format!("/v1/nodes/{n}"), Some(change))?;
        println!("Node {id} {done}.");
    }
    Ok(())
}

/// `node ls` as a table. Pure.
pub fn node_table(nodes: &[NodeView]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "HOSTNAME".into(),
        "ROLE".into(),
        "STATUS".into(),
        "RAFT".into(),
        "ADDRESS".into(),
    ]];
    for n in nodes {
        let role = if n.leader {
            format!("{} (leader)", n.record.role.as_str())
        } else {
            n.record.role.as_str().to_string()
        };
        let raft = if n.raft == "-" {
            "-".to_string()
        } else {
            format!("{} @{}", n.raft, n.matched)
        };
        rows.push([
            n.record.id.clone(),
            n.record.hostname.clone(),
            role,
            n.reachability.clone(),
            raft,
            n.record.addr.clone(),
        ]);
    }
    // Whatever a node reported about itself is shown without control characters.
    for r in rows.iter_mut() {
        for cell in r.iter_mut() {
            if cell.chars().any(char::is_control) {
                *cell = cell
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
            }
        }
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out += line.join("   ").trim_end();
        out += "\n";
    }
    out
}

pub fn context(cmd: &ContextCommand) -> anyhow::Result<ExitCode> {
    let path = context_path();
    match cmd {
        ContextCommand::Set(args) => {
            manager::cluster::files::parse_addr(&args.host, "--host")?;
            pki::NodeCredentials::load(&args.tls_dir).with_context(|| {
                format!(
                    "{} must hold ca.crt, node.crt and node.key of an admin certificate",
                    args.tls_dir.display()
                )
            })?;
            let tls_dir = std::fs::canonicalize(&args.tls_dir)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let ctx = ContextFile {
                host: Some(args.host.clone()),
                tls_dir: Some(tls_dir),
            };
            std::fs::write(&path, serde_json::to_vec_pretty(&ctx)?)
                .with_context(|| format!("write {}", path.display()))?;
            println!("Verbs now go to {} ({}).", args.host, path.display());
        }
        ContextCommand::Unset => {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
            }
            println!("Verbs now go to the local daemon.");
        }
        ContextCommand::Show => match remote_target()? {
            Some((host, dir)) => {
                println!("{host} (admin certificate in {})", dir.display())
            }
            None => println!("the local daemon"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

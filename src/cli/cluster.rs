//! `berth cluster ...`: making a cluster (`init`), joining one (`join`), its join
//! tokens and this node's view of it (`status`).
//!
//! Every verb talks to a daemon: the local one over its unix socket, or, with a
//! context (`--host`, `BERTH_HOST`, or the context file; see `context`), a remote
//! manager over mutual TLS with an admin certificate (`--tls-dir`, `BERTH_TLS_DIR`, the
//! context file, or the `admin/` directory `cluster init` wrote on this host).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::context::{remote_client, remote_target};
use crate::client::Client;
use manager::cluster::ops::{
    ClusterStatus, InitAnswer, InitRequest, JoinAnswer, JoinLocalRequest, SettingsChange,
};
use manager::state::model::ClusterSettings;

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
    /// Change the cluster's settings (node grace period, rebalancing)
    Update(UpdateArgs),
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// How long a node may miss heartbeats before it is down and its tasks are
    /// replaced on other nodes (e.g. 10s, 1m)
    #[arg(long = "node-grace", value_name = "DURATION", value_parser = parse_grace)]
    node_grace: Option<Duration>,
    /// Rebalance services spread unevenly when a node joins or returns (true|false)
    #[arg(long, value_name = "BOOL")]
    rebalance: Option<bool>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The address other nodes reach this one at: IP[:PORT] (port 7377 by default)
    #[arg(long = "advertise-addr", value_name = "IP[:PORT]")]
    advertise: String,
    /// Where the cluster port listens [default: every address, the advertised port]
    #[arg(long = "listen-addr", value_name = "IP[:PORT]")]
    listen: Option<String>,
    /// How long a node may miss heartbeats before it is down and its tasks are
    /// replaced on other nodes (e.g. 10s, 1m)
    #[arg(long = "node-grace", value_name = "DURATION", default_value = "10s",
          value_parser = parse_grace)]
    node_grace: Duration,
    /// Do not rebalance services spread unevenly when a node joins or returns
    #[arg(long = "no-rebalance")]
    no_rebalance: bool,
}

/// `--node-grace`: Go's duration notation, at least one second (heartbeats come every
/// second: less would declare healthy nodes down).
fn parse_grace(text: &str) -> Result<Duration, String> {
    let d = spec::units::parse_duration(text)?;
    if d < Duration::from_secs(2) {
        return Err(format!(
            "{text:?} is too short: nodes heartbeat every second, so the grace must be \
             at least 2s"
        ));
    }
    Ok(d)
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

/// The daemon verbs go to: the remote manager, or the local daemon.
pub(super) fn client(state_dir: &Path) -> anyhow::Result<Client> {
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
    super::common::connect(state_dir, true)
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
                    settings: ClusterSettings {
                        node_grace_ms: args.node_grace.as_millis() as u64,
                        no_rebalance: args.no_rebalance,
                    },
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
        ClusterCommand::Update(args) => {
            if args.node_grace.is_none() && args.rebalance.is_none() {
                bail!("berth cluster update: nothing to change (--node-grace D, --rebalance true|false)");
            }
            let c = client(state_dir)?;
            let change = SettingsChange {
                node_grace_ms: args.node_grace.map(|d| d.as_millis() as u64),
                rebalance: args.rebalance,
            };
            let s: ClusterSettings = c.call("POST", "/v1/cluster/settings", Some(&change))?;
            println!(
                "Cluster updated: node grace {}, rebalancing {}.",
                spec::units::format_duration(s.node_grace()),
                if s.no_rebalance { "off" } else { "on" }
            );
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

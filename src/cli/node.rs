//! `berth node ...`: the cluster's nodes, listed and changed (promote, demote, remove,
//! labels) through a manager.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::cluster::client;
use crate::client::Client;
use manager::cluster::ops::{ClusterStatus, NodeChange, NodeView};
use manager::state::model::{Availability, State};
use spec::task::{DesiredState, Task};

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
    /// Add or remove node labels, or change a node's availability
    Update(NodeUpdateArgs),
    /// List the tasks of a node (this one by default)
    Ps(NodePsArgs),
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
    /// active, pause (place nothing new here) or drain (also move its tasks away)
    #[arg(long, value_name = "AVAILABILITY", value_parser = parse_availability)]
    availability: Option<Availability>,
    #[arg(value_name = "NODE")]
    node: String,
}

fn parse_availability(text: &str) -> Result<Availability, String> {
    match text {
        "active" => Ok(Availability::Active),
        "pause" => Ok(Availability::Pause),
        "drain" => Ok(Availability::Drain),
        _ => Err(format!("{text:?}: expected active, pause or drain")),
    }
}

#[derive(Debug, Args)]
pub struct NodePsArgs {
    /// Also show tasks that ended
    #[arg(short = 'a', long)]
    all: bool,
    /// table or json
    #[arg(long, default_value = "table")]
    format: String,
    /// The node (id, id prefix or hostname); this one if none
    #[arg(value_name = "NODE")]
    node: Option<String>,
}

#[derive(Debug, Args)]
pub struct NodeInspectArgs {
    #[arg(long)]
    fresh: bool,
    #[arg(value_name = "NODE")]
    node: String,
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
            let node = std::slice::from_ref(&args.node);
            if !add.is_empty() || !args.remove.is_empty() || args.availability.is_none() {
                let change = NodeChange::Labels {
                    add,
                    remove: args.remove.clone(),
                };
                change_all(&c, node, &change, "updated")?;
            }
            if let Some(a) = args.availability {
                change_all(&c, node, &NodeChange::Availability(a), a.as_str())?;
            }
        }
        NodeCommand::Ps(args) => node_ps(&c, args)?,
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

/// `node ps`: the tasks placed on one node, every stack's, newest first per slot.
fn node_ps(c: &Client, args: &NodePsArgs) -> anyhow::Result<()> {
    let state: State = c.call("GET", "/v1/state", None::<&()>)?;
    let id = match &args.node {
        Some(name) => {
            let name = node_name(name)?;
            let record: serde_json::Value =
                c.call("GET", &format!("/v1/nodes/{name}"), None::<&()>)?;
            record["id"].as_str().unwrap_or_default().to_string()
        }
        None => {
            let status: ClusterStatus = c.call("GET", "/v1/cluster", None::<&()>)?;
            if !status.member {
                bail!("this host is not in a cluster: berth ps lists its containers");
            }
            status.node_id
        }
    };
    let mut tasks: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| t.node.as_deref() == Some(id.as_str()))
        .filter(|t| args.all || !t.status.state().is_terminal())
        .collect();
    tasks.sort_by(|a, b| {
        (
            &a.stack,
            &a.service,
            a.slot,
            std::cmp::Reverse(a.generation),
        )
            .cmp(&(
                &b.stack,
                &b.service,
                b.slot,
                std::cmp::Reverse(b.generation),
            ))
    });
    if args.format == "json" {
        let rows: Vec<serde_json::Value> = tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "Name": t.name(), "ID": t.id, "Project": t.stack, "Service": t.service,
                    "NodeID": id, "Desired": desired_word(t.desired),
                    "State": format!("{:?}", t.status.state()).to_lowercase(),
                    "Error": t.status.message,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut out = format!(
        "{:<32} {:<16} {:<10} {:<10} {}\n",
        "NAME", "ID", "DESIRED", "STATE", "ERROR"
    );
    for t in tasks {
        let state = format!("{:?}", t.status.state()).to_lowercase();
        let error: String = t
            .status
            .message
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        out.push_str(&format!(
            "{:<32} {:<16} {:<10} {:<10} {}\n",
            t.name(),
            t.id,
            desired_word(t.desired),
            state,
            error
        ));
    }
    print!("{out}");
    Ok(())
}

fn desired_word(d: DesiredState) -> &'static str {
    match d {
        DesiredState::Running => "running",
        DesiredState::Shutdown => "shutdown",
        DesiredState::Remove => "remove",
    }
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
        "AVAILABILITY".into(),
        "RAFT".into(),
        "TASKS".into(),
        "RESERVED / CAPACITY".into(),
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
        // The heartbeats' word where the leader has one, else Raft's reachability.
        let status = if n.status.is_empty() || n.status == "unknown" {
            n.reachability.clone()
        } else {
            n.status.clone()
        };
        let cap = n.record.capacity;
        let resources = format!(
            "{}/{} CPUs, {}/{}",
            cpus(n.usage.millicpus),
            cpus(cap.millicpus),
            human_bytes(n.usage.memory),
            human_bytes(cap.memory)
        );
        rows.push([
            n.record.id.clone(),
            n.record.hostname.clone(),
            role,
            status,
            n.record.availability.as_str().to_string(),
            raft,
            n.usage.tasks.to_string(),
            resources,
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
    super::common::table(&rows)
}

/// A size for people: `0B`, `512MiB`, `7.6GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!("{}{}", text.trim_end_matches(".0"), UNITS[unit])
}

/// Millicores as CPUs: `2`, `0.5`.
fn cpus(millicpus: u64) -> String {
    if millicpus.is_multiple_of(1000) {
        (millicpus / 1000).to_string()
    } else {
        format!("{:.2}", millicpus as f64 / 1000.0)
            .trim_end_matches('0')
            .to_string()
    }
}

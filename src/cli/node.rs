//! `berth node ...`: the cluster's nodes, listed and changed (promote, demote, remove,
//! labels) through a manager.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::cluster::client;
use crate::client::Client;
use manager::cluster::ops::{NodeChange, NodeView};

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

//! `berth ps`: the project's containers, as a table (Docker's STATUS and PORTS
//! columns), as JSON, or as names.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use manager::state::model::State;
use spec::task::{DesiredState, Task, TaskState};

use super::common::{connect, project_name, table};
use super::{write_stdout, ProjectArgs};
use crate::client::Client;

#[derive(Debug, Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Also show stopped containers
    #[arg(short = 'a', long)]
    all: bool,
    /// Only the container names
    #[arg(short = 'q', long)]
    quiet: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

pub fn ps(state_dir: &Path, project: &ProjectArgs, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    let now = spec::task::now_ms();
    let mut tasks: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| t.stack == name)
        .filter(|t| args.services.is_empty() || args.services.contains(&t.service))
        .filter(|t| t.desired != DesiredState::Remove)
        // One row per container name: the slot's newest task (history stays in the
        // store); without -a, running ones only, as Compose's ps, and those that
        // should run but could not start, with why.
        .filter(|t| latest_of_slot(&state, t))
        .filter(|t| {
            args.all
                || !t.status.state().is_terminal()
                || (t.desired == DesiredState::Running && t.status.never_started())
        })
        .collect();
    tasks.sort_by(|a, b| {
        (&a.service, a.slot, a.generation).cmp(&(&b.service, b.slot, b.generation))
    });
    let text = match (args.quiet, args.format) {
        (true, _) => tasks.iter().map(|t| t.name() + "\n").collect(),
        (false, Format::Json) => {
            let rows: Vec<serde_json::Value> = tasks
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "Name": t.name(), "ID": t.id, "Service": t.service, "Project": t.stack,
                        "Image": image_of(&state, t), "State": state_word(&t.status),
                        "Status": status_text(t, now), "Health": health_word(t),
                        "ExitCode": t.status.exit_code.unwrap_or(0),
                        // Why it could not start, as Docker's State.Error.
                        "Error": if t.status.never_started() { t.status.message.as_str() } else { "" },
                        // On a cluster: where it runs (empty while pending).
                        "Node": node_name(&state, t), "NodeID": t.node.as_deref().unwrap_or(""),
                        // Where its service's rolling update stands, if it had one.
                        "Update": state.stacks.get(&t.stack).and_then(|r| r.updates.get(&t.service)).map(|u| u.to_string()).unwrap_or_default(),
                    })
                })
                .collect();
            serde_json::to_string(&rows)? + "\n"
        }
        (false, Format::Table) => {
            // A cluster's containers say which node runs them.
            let cluster = state.cluster.is_some();
            let mut header = vec!["NAME".to_string(), "IMAGE".into(), "SERVICE".into()];
            if cluster {
                header.push("NODE".into());
            }
            header.extend(["STATUS".into(), "PORTS".into()]);
            let mut rows = vec![header];
            for t in &tasks {
                let mut row = vec![t.name(), image_of(&state, t), t.service.clone()];
                if cluster {
                    row.push(node_name(&state, t));
                }
                row.extend([status_text(t, now), ports_text(&client, t)]);
                rows.push(row);
            }
            let updates = updates_text(&state, &name, &args.services);
            if updates.is_empty() {
                table(&rows)
            } else {
                format!("{}\n{updates}", table(&rows))
            }
        }
    };
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Docker's PORTS column: `0.0.0.0:8080->80/tcp, ...` for a running container.
fn ports_text(client: &Client, t: &Task) -> String {
    if t.status.state() != TaskState::Running {
        return String::new();
    }
    let published: Vec<overlay_net::ports::Published> = client
        .call("GET", &format!("/v1/tasks/{}/ports", t.id), None::<&()>)
        .unwrap_or_default();
    published
        .iter()
        .map(|p| format!("{}->{}/{}", p.host(), p.container_port, p.proto))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The hostname of the node a task is on (its id if the node is gone; empty if none).
fn node_name(state: &State, t: &Task) -> String {
    match &t.node {
        Some(id) => state
            .nodes
            .get(id)
            .map_or_else(|| id.clone(), |n| n.hostname.clone()),
        None => String::new(),
    }
}

/// The slot's newest task not on its way out (a start-first replacement that failed
/// and goes leaves the slot to the task it was to replace).
fn latest_of_slot(state: &State, t: &Task) -> bool {
    !state.tasks.values().any(|o| {
        o.stack == t.stack
            && o.service == t.service
            && o.slot == t.slot
            && o.generation > t.generation
            && o.desired != DesiredState::Remove
    })
}

/// The image a task runs: its service's, or during a rolling update (or after a
/// rollback) the previous definition's if that is what the task was made from.
fn image_of(state: &State, t: &Task) -> String {
    let Some(r) = state.stacks.get(&t.stack) else {
        return String::new();
    };
    let current = r
        .stack
        .services
        .get(&t.service)
        .or(r.orphans.get(&t.service));
    let previous = r
        .previous
        .get(&t.service)
        .filter(|p| manager::orchestrator::spec_hash(r, p) == t.spec_hash);
    previous
        .or(current)
        .and_then(|s| s.image.clone())
        .unwrap_or_default()
}

/// Where the rolling updates of the services shown stand, one line each, under the
/// table (none when no service of them has had one).
fn updates_text(state: &State, stack: &str, services: &[String]) -> String {
    let Some(r) = state.stacks.get(stack) else {
        return String::new();
    };
    r.updates
        .iter()
        .filter(|(svc, _)| services.is_empty() || services.contains(svc))
        .map(|(svc, u)| format!("service {svc}: {u}\n"))
        .collect()
}

fn state_word(status: &spec::task::TaskStatus) -> &'static str {
    if status.never_started() {
        return "dead";
    }
    match status.state() {
        TaskState::New | TaskState::Preparing | TaskState::Starting => "created",
        TaskState::Running => "running",
        TaskState::Complete | TaskState::Failed | TaskState::Shutdown => "exited",
        TaskState::Rejected => "dead",
        TaskState::Removed => "removed",
    }
}

fn health_word(t: &Task) -> &'static str {
    match t.status.health {
        spec::task::Health::None => "",
        spec::task::Health::Starting => "starting",
        spec::task::Health::Healthy => "healthy",
        spec::task::Health::Unhealthy => "unhealthy",
    }
}

/// Docker's STATUS column: `Up 3 seconds (healthy)`, `Exited (1) 2 minutes ago`.
fn status_text(t: &Task, now: u64) -> String {
    let st = t.status.state();
    let health = match health_word(t) {
        "" => String::new(),
        h => format!(" ({h})"),
    };
    if t.status.never_started() {
        return format!("Error: {}", t.status.message);
    }
    match st {
        TaskState::Running => format!(
            "Up {}{health}",
            ago(now.saturating_sub(t.status.started_at.unwrap_or(now)))
        ),
        TaskState::Complete | TaskState::Failed | TaskState::Shutdown => format!(
            "Exited ({}) {} ago",
            t.status.exit_code.unwrap_or(0),
            ago(now.saturating_sub(t.status.finished_at.unwrap_or(now)))
        ),
        TaskState::Rejected => format!("Error: {}", t.status.message),
        TaskState::Removed => format!("Removed: {}", t.status.message),
        // The scheduler found no node for it: why, per node.
        TaskState::New if t.node.is_none() && !t.status.message.is_empty() => {
            format!("Pending: {}", t.status.message)
        }
        _ => "Created".into(),
    }
}

fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => "less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        _ => format!("{} hours", s / 3600),
    }
}

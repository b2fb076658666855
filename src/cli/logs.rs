//! `berth logs`: the output of the project's containers, each line after its
//! container's name; `-f` follows.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use manager::api::LogLine;
use manager::state::model::State;
use spec::task::{DesiredState, Task};

use super::common::{connect, project_name};
use super::{write_stdout, ProjectArgs};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Project name (files go before the verb: berth -f FILE logs -f)
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    pub project_name: Option<String>,
    /// Keep printing new lines
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines of each container
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<usize>,
    /// Show timestamps
    #[arg(short = 't', long)]
    timestamps: bool,
    /// Only lines since this time: a duration back from now (10m, 1h30m) or an
    /// RFC 3339 time (2026-11-23T10:00:00Z)
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Do not prefix lines with the container name
    #[arg(long)]
    no_log_prefix: bool,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

pub fn logs(state_dir: &Path, project: &ProjectArgs, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    let mut tasks: Vec<Task> = state
        .tasks
        .values()
        .filter(|t| t.stack == name && t.desired != DesiredState::Remove)
        .filter(|t| args.services.is_empty() || args.services.contains(&t.service))
        .filter(|t| t.status.started_at.is_some())
        .cloned()
        .collect();
    tasks.sort_by(|a, b| {
        (&a.service, a.slot, a.generation).cmp(&(&b.service, b.slot, b.generation))
    });
    if tasks.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let since = match &args.since {
        None => None,
        Some(text) => Some(since_time(text)?),
    };
    let since = since.as_deref();
    let width = tasks.iter().map(|t| t.name().len()).max().unwrap_or(0);
    let out = std::sync::Mutex::new(());
    std::thread::scope(|scope| {
        for t in &tasks {
            let (client, out) = (&client, &out);
            scope.spawn(move || {
                let mut path = format!("/v1/tasks/{}/logs?follow={}", t.id, args.follow);
                if let Some(n) = args.tail {
                    path.push_str(&format!("&tail={n}"));
                }
                let Ok(resp) = client.request("GET", &path, None) else {
                    return;
                };
                for line in resp.body.lines() {
                    let Ok(line) = line else { break };
                    let Ok(entry) = serde_json::from_str::<LogLine>(&line) else {
                        continue;
                    };
                    // RFC 3339 times in UTC compare as strings.
                    if since.is_some_and(|s| entry.time.as_str() < s) {
                        continue;
                    }
                    let mut text = String::new();
                    if !args.no_log_prefix {
                        text.push_str(&format!("{:<width$} | ", t.name()));
                    }
                    if args.timestamps {
                        text.push_str(&entry.time);
                        text.push(' ');
                    }
                    text.push_str(entry.line.strip_suffix('\n').unwrap_or(&entry.line));
                    text.push('\n');
                    let _guard = out.lock();
                    if write_stdout(&text).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// `--since`: a duration back from now, or a time as written (RFC 3339, UTC).
fn since_time(text: &str) -> anyhow::Result<String> {
    if let Ok(d) = spec::units::parse_duration(text) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let then = now.saturating_sub(d);
        return Ok(agent::shim::format_rfc3339(
            then.as_secs() as i64,
            then.subsec_nanos(),
        ));
    }
    let b = text.as_bytes();
    let looks_like_date =
        b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[7] == b'-';
    if looks_like_date {
        return Ok(text.to_string());
    }
    bail!("--since {text:?}: give a duration (10m, 1h30m) or a UTC time (2026-11-23T10:00:00Z)")
}

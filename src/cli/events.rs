//! `berth events`: the project's container events as they happen.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::common::{connect, project_name};
use super::{write_stdout, ProjectArgs};

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// One JSON object per line
    #[arg(long)]
    json: bool,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

/// Streams the project's container events until interrupted.
pub fn events(
    state_dir: &Path,
    project: &ProjectArgs,
    args: &EventsArgs,
) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let resp = client.request("GET", "/v1/events", None)?;
    for line in resp.body.lines() {
        let line = line?;
        let Ok(e) = serde_json::from_str::<manager::api::events::Event>(&line) else {
            continue;
        };
        if e.stack != name || (!args.services.is_empty() && !args.services.contains(&e.service)) {
            continue;
        }
        let text = if args.json {
            line + "\n"
        } else if let Some(gitops) = &e.gitops {
            format!("{} gitops {}: {gitops}\n", e.time, e.stack)
        } else if let Some(update) = &e.update {
            format!(
                "{} service update (service={}): {update}\n",
                e.time, e.service
            )
        } else {
            let exit = e
                .exit_code
                .map(|c| format!(" (exitCode={c})"))
                .unwrap_or_default();
            let error = e.error.map(|m| format!(" (error={m})")).unwrap_or_default();
            format!(
                "{} container {} {} (service={}){exit}{error}\n",
                e.time, e.action, e.container, e.service
            )
        };
        if write_stdout(&text).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

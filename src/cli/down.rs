//! `berth down`: stops and removes the project's containers, and its networks (and,
//! with `-v`, its named volumes), in the reverse of start order.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use manager::api::stacks::DownResponse;

use super::common::{connect, project_name};
use super::ProjectArgs;

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Also remove the stack's named volumes
    #[arg(short = 'v', long)]
    volumes: bool,
    /// Seconds to wait for each container to stop before killing it
    #[arg(short = 't', long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Accepted for Compose compatibility: down always removes every container of the
    /// stack, orphans included
    #[arg(long)]
    remove_orphans: bool,
}

pub fn down(state_dir: &Path, project: &ProjectArgs, args: &DownArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let mut path = format!("/v1/stacks/{name}?volumes={}", args.volumes);
    if let Some(t) = args.timeout {
        path.push_str(&format!("&timeout={t}"));
    }
    let _ = args.remove_orphans;
    let resp: DownResponse = client.call("DELETE", &path, None::<&()>)?;
    let mut text = String::new();
    for c in &resp.removed_containers {
        text.push_str(&format!(" ✔ Container {c:<30} Removed\n"));
    }
    for n in &resp.removed_networks {
        text.push_str(&format!(" ✔ Network {n:<32} Removed\n"));
    }
    for v in &resp.removed_volumes {
        text.push_str(&format!(" ✔ Volume {v:<33} Removed\n"));
    }
    super::write_stderr(&text);
    Ok(ExitCode::SUCCESS)
}

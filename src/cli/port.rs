//! `berth port`: the host address a container port is published on.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use manager::state::model::State;

use super::common::{connect, project_name, running_tasks};
use super::{write_stdout, ProjectArgs};

#[derive(Debug, Args)]
pub struct PortArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// tcp or udp
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// Which replica (1 is the first)
    #[arg(long, default_value_t = 1, value_name = "N")]
    index: u32,
    #[arg(value_name = "SERVICE")]
    service: String,
    #[arg(value_name = "PRIVATE_PORT")]
    private_port: u16,
}

/// `port`: the host address a container port is published on (`0.0.0.0:8080`).
pub fn port(state_dir: &Path, project: &ProjectArgs, args: &PortArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    let task = running_tasks(&state, &name, std::slice::from_ref(&args.service))
        .into_iter()
        .find(|t| t.slot == args.index)
        .with_context(|| {
            format!(
                "service {:?} has no running container {}",
                args.service, args.index
            )
        })?;
    let published: Vec<overlay_net::ports::Published> =
        client.call("GET", &format!("/v1/tasks/{}/ports", task.id), None::<&()>)?;
    let found = published
        .iter()
        .find(|p| p.container_port == args.private_port && p.proto == args.protocol)
        .with_context(|| {
            format!(
                "{}/{} of {} is not published",
                args.private_port,
                args.protocol,
                task.name()
            )
        })?;
    write_stdout(&format!("{}\n", found.host()))?;
    Ok(ExitCode::SUCCESS)
}

//! `berth kill`: a signal to the services' containers.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use manager::stacks::ServicesRequest;

use super::common::{connect, project_name, report_services};
use super::ProjectArgs;

#[derive(Debug, Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// The signal to send
    #[arg(short = 's', long, default_value = "SIGKILL")]
    signal: String,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

pub fn kill(state_dir: &Path, project: &ProjectArgs, args: &KillArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let req = ServicesRequest {
        services: args.services.clone(),
        signal: Some(args.signal.clone()),
    };
    let done: Vec<String> = client.call("POST", &format!("/v1/stacks/{name}/kill"), Some(&req))?;
    report_services(&done, "Killed");
    Ok(ExitCode::SUCCESS)
}

//! `berth runtime ...`: run OCI bundles directly, like runc. (Placeholder: being written.)

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Run a bundle in the foreground
    Run,
}

pub fn run(_state_dir: &std::path::Path, _cmd: &RuntimeCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("berth runtime is not built yet")
}

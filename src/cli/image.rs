//! `berth image ...`: the local image store. (Placeholder: being written.)

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images
    Ls,
}

pub fn run(_state_dir: &std::path::Path, _cmd: &ImageCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("berth image is not built yet")
}

//! `berth runtime ...`: run OCI bundles directly, like runc (plumbing, hidden from
//! help). `run` is foreground: the container shares berth's stdio, and its exit
//! status becomes berth's (128 + n when killed by signal n).

use std::path::PathBuf;
use std::process::ExitCode;

use agent::runtime::{self, Bundle, RunOptions};
use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Run a bundle in the foreground, like `runc run`
    Run(RunArgs),
    /// Write a default config.json (Docker's defaults) into the bundle directory
    Spec(SpecArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The bundle directory (config.json and the root filesystem)
    #[arg(long, short = 'b', default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    /// The container id (letters, digits, '_', '.', '-')
    id: String,
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Where to write config.json
    #[arg(long, short = 'b', default_value = ".", value_name = "DIR")]
    bundle: PathBuf,
    /// A spec for running without root (not supported yet)
    #[arg(long)]
    rootless: bool,
    /// The command the container runs [default: sh]
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

pub fn run(_state_dir: &std::path::Path, cmd: &RuntimeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RuntimeCommand::Run(args) => run_bundle(args),
        RuntimeCommand::Spec(args) => write_spec(args),
    }
}

fn run_bundle(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::load(&args.bundle)?;
    let opts = RunOptions {
        forward_signals: true,
        ..RunOptions::default()
    };
    let report = runtime::run(&bundle, &args.id, &opts)?;
    if report.oom_killed {
        super::write_stderr(&format!(
            "berth: container {} was killed: out of memory (memory limit reached)\n",
            args.id
        ));
    }
    Ok(ExitCode::from(report.status().clamp(0, 255) as u8))
}

fn write_spec(args: &SpecArgs) -> anyhow::Result<ExitCode> {
    if args.rootless {
        anyhow::bail!("--rootless: rootless specs are not supported yet; run berth as root");
    }
    let path = args.bundle.join("config.json");
    if path.exists() {
        anyhow::bail!(
            "{} exists already: remove it first (berth does not overwrite a spec)",
            path.display()
        );
    }
    let command = if args.args.is_empty() {
        vec!["sh".to_string()]
    } else {
        args.args.clone()
    };
    let spec = runtime::default_spec(std::path::Path::new("rootfs"), &command)?;
    let json = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, json + "\n").with_context(|| format!("write {}", path.display()))?;
    Ok(ExitCode::SUCCESS)
}

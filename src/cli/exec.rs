//! `berth exec`: a command in a running container of a service.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use manager::state::model::State;
use spec::task::{DesiredState, TaskState};

use super::common::{connect, project_name};
use super::ProjectArgs;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Project name (files go before the verb: berth -f FILE exec ...)
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    pub project_name: Option<String>,
    /// No terminal, even when standard input is one
    #[arg(short = 'T', long = "no-TTY")]
    no_tty: bool,
    #[command(flatten)]
    overrides: super::runtime::ExecOverrides,
    /// Which replica (1 is the first)
    #[arg(long, default_value_t = 1, value_name = "N")]
    index: u32,
    /// Accepted for Compose compatibility (berth's exec is never detached)
    #[arg(short = 'i', long, hide = true)]
    interactive: bool,
    #[arg(value_name = "SERVICE")]
    service: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// `exec`: a command in a running container of a service, with a terminal when
/// standard input is one (unless -T), as Compose's.
pub fn exec(state_dir: &Path, project: &ProjectArgs, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    let task = state
        .tasks
        .values()
        .filter(|t| t.stack == name && t.service == args.service && t.slot == args.index)
        .filter(|t| t.desired == DesiredState::Running && t.status.state() == TaskState::Running)
        .max_by_key(|t| t.generation)
        .with_context(|| {
            format!(
                "service {:?} of {name} has no running container {} (berth ps shows what runs)",
                args.service, args.index
            )
        })?;
    let tty = !args.no_tty && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let _ = args.interactive;
    super::runtime::exec_command(
        &state_dir.join("run"),
        &task.id,
        tty,
        &args.overrides,
        &args.cmd,
    )
}

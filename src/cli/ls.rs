//! `berth ls`: the deployed stacks, with how many of their containers run.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use manager::state::model::State;
use spec::task::{DesiredState, TaskState};

use super::common::{connect, table};
use super::write_stdout;

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only the stack names
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn ls(state_dir: &Path, args: &LsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    let mut rows = vec![["NAME".to_string(), "STATUS".into(), "CONFIG FILES".into()]];
    let mut names = String::new();
    for (name, record) in &state.stacks {
        let running = state
            .tasks
            .values()
            .filter(|t| &t.stack == name && t.status.state() == TaskState::Running)
            .count();
        let exited = state
            .tasks
            .values()
            .filter(|t| {
                &t.stack == name
                    && t.desired == DesiredState::Running
                    && t.status.state().is_terminal()
            })
            .count();
        let mut status = format!("running({running})");
        if exited > 0 {
            status.push_str(&format!(", exited({exited})"));
        }
        // Rolling updates that have not completed: where they stand.
        for (svc, u) in &record.updates {
            if u.state != spec::task::UpdateState::Completed {
                status.push_str(&format!(", {svc}: {u}"));
            }
        }
        rows.push([name.clone(), status, record.files.join(",")]);
        names.push_str(name);
        names.push('\n');
    }
    write_stdout(&if args.quiet { names } else { table(&rows) })?;
    Ok(ExitCode::SUCCESS)
}

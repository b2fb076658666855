//! `berth top`: the processes of the project's running containers.

use std::path::Path;
use std::process::ExitCode;

use manager::state::model::State;

use super::common::{connect, project_name, running_tasks, table};
use super::services::ServicesArgs;
use super::{write_stdout, ProjectArgs};

/// `top`: each running container's processes.
pub fn top(
    state_dir: &Path,
    project: &ProjectArgs,
    args: &ServicesArgs,
) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut text = String::new();
    for t in running_tasks(&state, &name, &args.services) {
        let procs: Vec<agent::executor::Process> =
            client.call("GET", &format!("/v1/tasks/{}/top", t.id), None::<&()>)?;
        text.push_str(&t.name());
        text.push('\n');
        let mut rows = vec![[
            "UID".to_string(),
            "PID".into(),
            "PPID".into(),
            "TIME".into(),
            "CMD".into(),
        ]];
        for p in procs {
            let secs = p.ticks / hz;
            rows.push([
                p.uid.to_string(),
                p.pid.to_string(),
                p.ppid.to_string(),
                format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
                p.command,
            ]);
        }
        text.push_str(&table(&rows));
        text.push('\n');
    }
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

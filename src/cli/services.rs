//! The verbs that act on services: `start`, `stop`, `restart`, `rm`, `pause`,
//! `unpause` and `rollback`. Each asks the daemon, then waits until the change shows.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use manager::stacks::ServicesRequest;
use manager::state::model::State;
use spec::task::{DesiredState, TaskState, UpdateState};

use super::common::{connect, project_name, report_services};
use super::ProjectArgs;

#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

pub fn services_verb(
    state_dir: &Path,
    project: &ProjectArgs,
    args: &ServicesArgs,
    verb: &str,
) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let req = ServicesRequest {
        services: args.services.clone(),
        signal: None,
    };
    let done: Vec<String> =
        client.call("POST", &format!("/v1/stacks/{name}/{verb}"), Some(&req))?;
    // Wait until the change shows: stopped services have no running task; started or
    // restarted ones have one.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state: State = client.call("GET", "/v1/state", None::<&()>)?;
        if verb == "rollback" {
            match rolled_back(&state, &name, &done) {
                Ok(true) => break,
                Ok(false) if Instant::now() > deadline => {
                    anyhow::bail!(
                        "still rolling back {} after 120 s; `berth ps` shows how far",
                        done.join(", ")
                    )
                }
                Ok(false) => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        let settled = done.iter().all(|svc| {
            let mut of = state
                .tasks
                .values()
                .filter(|t| t.stack == name && &t.service == svc);
            match verb {
                "rm" => of.all(|t| {
                    t.desired != DesiredState::Remove || t.status.state() == TaskState::Removed
                }),
                // Stopped: every container of the service has ended.
                "stop" => {
                    of.all(|t| t.desired == DesiredState::Remove || t.status.state().is_terminal())
                }
                _ => of.any(|t| {
                    t.desired == DesiredState::Running && t.status.state() == TaskState::Running
                }),
            }
        });
        if settled || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let word = match verb {
        "stop" => "Stopped",
        "start" => "Started",
        "rm" => "Removed",
        "pause" => "Paused",
        "unpause" => "Unpaused",
        "rollback" => "Rolled back",
        _ => "Restarted",
    };
    report_services(&done, word);
    Ok(ExitCode::SUCCESS)
}

/// Whether the rollback of each of `services` has finished; an error naming why if one
/// paused (a task of the previous definition failed too).
fn rolled_back(state: &State, stack: &str, services: &[String]) -> anyhow::Result<bool> {
    let Some(record) = state.stacks.get(stack) else {
        anyhow::bail!("stack {stack} was taken down while rolling back");
    };
    let mut all = true;
    for svc in services {
        match record.updates.get(svc) {
            Some(u) if u.state == UpdateState::RollbackPaused => {
                anyhow::bail!("the rollback of service {svc} paused: {}", u.message)
            }
            Some(u) if u.state == UpdateState::RolledBack => {}
            _ => all = false,
        }
    }
    Ok(all)
}

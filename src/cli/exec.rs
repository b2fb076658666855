//! `berth exec`: a command in a running container of a service. A container on this
//! host, when the CLI talks to its own daemon as root, is entered directly through the
//! exec helper (`runtime::exec_command`, a few milliseconds); any other (on another
//! node of the cluster, or with `--host`) through the API's exec session
//! (`manager::api::exec`), which the daemon runs where the container is.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use manager::api::exec::{ExecSpec, PROTOCOL};
use manager::state::model::State;
use spec::task::{DesiredState, TaskState};

use super::common::{connect, project_name};
use super::ProjectArgs;
use crate::client::{Client, Target, Upgrade};

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
    let here = match &task.node {
        None => true,
        Some(node) => this_node(state_dir).as_deref() == Some(node.as_str()),
    };
    if here && matches!(client.target, Target::Unix(_)) && nix::unistd::geteuid().is_root() {
        return super::runtime::exec_command(
            &state_dir.join("run"),
            &task.id,
            tty,
            &args.overrides,
            &args.cmd,
        );
    }
    let spec = ExecSpec {
        args: args.cmd.clone(),
        env: super::runtime::exec_env(&args.overrides),
        user: args.overrides.user.clone(),
        workdir: args
            .overrides
            .workdir
            .as_ref()
            .map(|w| w.to_string_lossy().into_owned()),
        tty: tty.then(super::runtime::terminal_size),
    };
    exec_over_api(&client, &task.id, &spec)
}

/// This host's node id, from its cluster configuration (None: a single host, or a
/// user who may not read it).
fn this_node(state_dir: &Path) -> Option<String> {
    let path = manager::cluster::files::config_path(state_dir);
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<manager::cluster::files::ClusterConfig>(&bytes)
        .ok()
        .map(|c| c.node_id)
}

/// `spec` in container `task` through the API's exec session; returns its exit
/// status. The session's connection is relayed to a socket pair by a thread of its
/// own (over TLS it must be read and written at once), and this process's stdio is
/// attached to the other end as `berth run` attaches to a container.
fn exec_over_api(client: &Client, task: &str, spec: &ExecSpec) -> anyhow::Result<ExitCode> {
    use agent::shim::attach::{attach_stdio, Ended};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let body = serde_json::to_vec(spec)?;
    let path = format!("/v1/tasks/{task}/exec");
    let mut session = match rt.block_on(client.upgrade(&path, PROTOCOL, &body))? {
        Upgrade::Switched(stream) => stream,
        Upgrade::Refused { message, .. } => anyhow::bail!("{message}"),
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    theirs.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("exec-relay".into())
        .spawn(move || {
            rt.block_on(async move {
                if let Ok(mut theirs) = tokio::net::UnixStream::from_std(theirs) {
                    let _ = tokio::io::copy_bidirectional(&mut session, &mut theirs).await;
                }
            })
        })?;
    match attach_stdio(ours, spec.tty.is_some()).context("exec session")? {
        Ended::Complete {
            status: Some(status),
        } => Ok(ExitCode::from(status.clamp(0, 255) as u8)),
        _ => anyhow::bail!("the exec session ended before the command's exit status came"),
    }
}

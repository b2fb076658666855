//! `berth run`: a one-off container of a service, attached to this terminal, its exit
//! status returned (its dependencies are deployed first).

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use manager::api::LogLine;
use manager::deploy::record_for;
use manager::stacks::{UpRequest, UpResponse};
use manager::state::model::State;
use spec::task::Task;

use super::common::{connect, load};
use super::pull::check_images;
use super::{write_stdout, ProjectArgs};
use crate::client::Client;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Remove the container when it exits
    #[arg(long)]
    rm: bool,
    /// Start it and print its name, without waiting
    #[arg(short = 'd', long)]
    detach: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to pass this one's value)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Run as this user
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// The working directory inside the container
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// Override the image's entrypoint (a command line, split like a shell's)
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Publish the service's ports too
    #[arg(long)]
    service_ports: bool,
    /// Do not start the services it depends on
    #[arg(long)]
    no_deps: bool,
    /// Do not give it a terminal (by default it has one when stdin is a terminal)
    #[arg(short = 'T', long = "no-TTY")]
    no_tty: bool,
    /// Accepted for Compose compatibility: stdin is always attached in the foreground
    #[arg(short = 'i', long = "interactive", hide = true)]
    interactive: bool,
    #[arg(value_name = "SERVICE")]
    service: String,
    /// The command, instead of the service's
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// `run`: a one-off container of a service, its output shown and its exit status
/// returned (its dependencies are started first, as Compose does).
pub fn run(state_dir: &Path, project: &ProjectArgs, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(project, &[])?;
    let stack = loaded.stack.clone();
    let name = stack.name.clone();
    let definition = stack
        .services
        .get(&args.service)
        .cloned()
        .with_context(|| format!("the project has no service {:?}", args.service))?;
    let mut needed = stack.clone();
    if args.no_deps {
        needed.services.retain(|k, _| k == &args.service);
    } else {
        super::config::keep_with_dependencies(&mut needed, std::slice::from_ref(&args.service));
    }
    check_images(state_dir, &needed)?;
    let client = connect(state_dir, true)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    if !state.stacks.contains_key(&name) {
        // Deploy what the one-off depends on (not the service itself).
        let mut deps = needed.clone();
        deps.services.remove(&args.service);
        let record = record_for(&loaded, deps);
        let req = UpRequest {
            record,
            remove_orphans: false,
            force_recreate: false,
            no_recreate: false,
        };
        let _: UpResponse = client.call("PUT", &format!("/v1/stacks/{name}"), Some(&req))?;
    }
    let entrypoint = match &args.entrypoint {
        Some(e) => Some(
            shlex::split(e).with_context(|| format!("--entrypoint {e:?}: unbalanced quotes"))?,
        ),
        None => None,
    };
    let mut env = Vec::new();
    for e in &args.env {
        match e.split_once('=') {
            Some(_) => env.push(e.clone()),
            None => env.push(format!("{e}={}", std::env::var(e).unwrap_or_default())),
        }
    }
    let tty = !args.no_tty && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let req = manager::stacks::RunRequest {
        service: args.service.clone(),
        definition: Some(definition),
        command: (!args.cmd.is_empty()).then(|| args.cmd.clone()),
        entrypoint,
        env,
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        service_ports: args.service_ports,
        // In the foreground, this process's stdin is the container's (as Compose's
        // `run`, whose --interactive is on by default); with a terminal when stdin is
        // one, unless -T.
        interactive: !args.detach,
        tty: (!args.detach).then_some(tty),
    };
    let key: String = client.call("POST", &format!("/v1/stacks/{name}/runs"), Some(&req))?;
    let _ = args.interactive;
    // Wait for it to start (or fail to).
    let deadline = Instant::now() + Duration::from_secs(300);
    let task = loop {
        let state: State = client.call("GET", "/v1/state", None::<&()>)?;
        let t = state
            .tasks
            .values()
            .find(|t| t.stack == name && t.service == key)
            .cloned();
        match t {
            Some(t) if t.status.never_started() => {
                remove_run(&client, &name, &key);
                bail!("{} could not start: {}", t.name(), t.status.message);
            }
            Some(t) if t.status.started_at.is_some() => break t,
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {name}-{key} to start (its dependencies?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if args.detach {
        write_stdout(&format!("{}\n", task.name()))?;
        return Ok(ExitCode::SUCCESS);
    }
    // Attached to its stdio through its shim; a container that has already exited
    // cannot be attached to, and its output is in its log.
    use agent::shim::attach::{self, Ended};
    // Without a terminal, Ctrl-C (and the other signals a shell sends) go to the
    // one-off, as with Compose; with one, they are keys it reads from its terminal.
    let _forwarding = match agent::shim::state(&state_dir.join("run"), &task.id) {
        Ok(s) if !tty => s
            .pid
            .map(|pid| agent::runtime::SignalForwarding::start(nix::unistd::Pid::from_raw(pid))),
        _ => None,
    };
    let shown = match attach::connect(&state_dir.join("run"), &task.id) {
        Ok(sock) => attach::attach_stdio(sock, tty)
            .with_context(|| format!("attached to {}", task.name()))?,
        Err(_) => Ended::Cut { received: false },
    };
    // Nothing came through the attachment (it ended too fast to attach): the log has
    // everything it wrote.
    if shown == (Ended::Cut { received: false }) {
        print_log(&client, &task)?;
    }
    run_exit(&client, &name, &key, args.rm)
}

/// A task's whole log, to this process's stdout and stderr, until it ends.
fn print_log(client: &Client, task: &Task) -> anyhow::Result<()> {
    let resp = client.request(
        "GET",
        &format!("/v1/tasks/{}/logs?follow=true", task.id),
        None,
    )?;
    for line in resp.body.lines() {
        let Ok(line) = line else { break };
        let Ok(entry) = serde_json::from_str::<LogLine>(&line) else {
            continue;
        };
        let text = entry
            .line
            .strip_suffix('\n')
            .unwrap_or(&entry.line)
            .to_string()
            + "\n";
        if entry.stream == "stderr" {
            super::write_stderr(&text);
        } else {
            write_stdout(&text)?;
        }
    }
    Ok(())
}

/// Waits for one-off `key` to be recorded as ended, removes it with `rm`, and returns
/// its exit status.
fn run_exit(client: &Client, name: &str, key: &str, rm: bool) -> anyhow::Result<ExitCode> {
    let code = loop {
        let state: State = client.call("GET", "/v1/state", None::<&()>)?;
        let task = state
            .tasks
            .values()
            .filter(|t| t.stack == name && t.service == key)
            .max_by_key(|t| t.generation);
        match task {
            Some(t) if t.status.state().is_terminal() => break t.status.exit_code.unwrap_or(255),
            None => break 255,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    if rm {
        remove_run(client, name, key);
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// Removes a one-off and waits until its container is gone.
fn remove_run(client: &Client, name: &str, key: &str) {
    let _: anyhow::Result<bool> = client.call(
        "DELETE",
        &format!("/v1/stacks/{name}/run/{key}"),
        None::<&()>,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Ok(state) = client.call::<State>("GET", "/v1/state", None::<&()>) else {
            return;
        };
        if !state
            .tasks
            .values()
            .any(|t| t.stack == name && t.service == key)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

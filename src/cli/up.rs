//! `berth up`: deploys the project (pulling missing images first), waits until its
//! containers have started (with `--wait`, until they are healthy), then, unless
//! detached, shows their output until they exit or Ctrl-C stops them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use manager::api::LogLine;
use manager::progress::{Progress, SlotState};
use manager::stacks::{ServicesRequest, UpRequest, UpResponse};
use manager::state::model::State;
use spec::task::UpdateState;
use spec::task::{DesiredState, StackRecord, Task};

use super::common::{connect, load};
use super::pull::check_images;
use super::{write_stdout, ProjectArgs};
use crate::client::Client;

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Detached: return once the containers run (without it, up shows their output
    /// until they all exit or Ctrl-C stops them)
    #[arg(short = 'd', long)]
    detach: bool,
    /// Stop every container when one exits (attached mode)
    #[arg(long, conflicts_with = "detach")]
    abort_on_container_exit: bool,
    /// Exit with this service's exit code (implies --abort-on-container-exit)
    #[arg(long, value_name = "SERVICE", conflicts_with = "detach")]
    exit_code_from: Option<String>,
    /// Also wait until services with a healthcheck are healthy
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    wait_timeout: u64,
    /// Run N replicas of a service, over the file (SERVICE=N; repeatable)
    #[arg(long, value_name = "SERVICE=N")]
    scale: Vec<String>,
    /// Remove containers of services the file no longer has
    #[arg(long)]
    remove_orphans: bool,
    /// Recreate every container, even unchanged ones
    #[arg(long, conflicts_with = "no_recreate")]
    force_recreate: bool,
    /// Keep existing containers even if their service changed
    #[arg(long)]
    no_recreate: bool,
    /// Print what up would do (per service: create, recreate and why, scale, remove;
    /// images to pull; on a cluster, where new tasks would go) and change nothing
    #[arg(long, conflicts_with_all = ["detach", "wait", "abort_on_container_exit", "exit_code_from"])]
    dry_run: bool,
    /// With --dry-run: exit 2 when up would change something, 0 when not (as
    /// terraform plan's)
    #[arg(long, requires = "dry_run")]
    detailed_exitcode: bool,
    /// Only these services (and what they depend on)
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

pub fn up(state_dir: &Path, project: &ProjectArgs, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(project, &args.services)?;
    let mut stack = loaded.stack.clone();
    if !args.services.is_empty() {
        super::config::keep_with_dependencies(&mut stack, &args.services);
    }
    if !args.dry_run {
        check_images(state_dir, &stack)?;
    }
    let mut scale = BTreeMap::new();
    for s in &args.scale {
        let (svc, n) = s
            .split_once('=')
            .and_then(|(k, v)| Some((k, v.parse::<u32>().ok()?)))
            .with_context(|| format!("--scale {s:?}: expected SERVICE=NUMBER"))?;
        if !stack.services.contains_key(svc) {
            bail!("--scale {s:?}: the project has no service {svc:?}");
        }
        scale.insert(svc.to_string(), n);
    }
    let client = connect(state_dir, true)?;
    let name = stack.name.clone();
    // The deployed state, for what `up` of some services keeps and for the networks a
    // first deployment makes; a plan of the whole stack needs none of it.
    let state: State = if args.dry_run && args.services.is_empty() {
        State::default()
    } else {
        client.call("GET", "/v1/state", None::<&()>)?
    };
    if !args.services.is_empty() {
        // Services not named keep what is deployed.
        if let Some(old) = state.stacks.get(&name) {
            for (k, svc) in &old.stack.services {
                stack
                    .services
                    .entry(k.clone())
                    .or_insert_with(|| svc.clone());
            }
        }
    }
    let record = StackRecord {
        scale,
        ..manager::deploy::record_for(&loaded, stack)
    };
    let req = UpRequest {
        record: record.clone(),
        remove_orphans: args.remove_orphans,
        force_recreate: args.force_recreate,
        no_recreate: args.no_recreate,
    };
    if args.dry_run {
        return super::plan::dry_run(state_dir, &client, &req, args.detailed_exitcode);
    }
    let started = Instant::now();
    let resp: UpResponse = client.call("PUT", &format!("/v1/stacks/{name}"), Some(&req))?;
    if !state.stacks.contains_key(&name) {
        // A first deployment makes the networks its services use (the agent does,
        // when their first container starts).
        let used: BTreeSet<&String> = record
            .stack
            .services
            .values()
            .flat_map(|s| s.networks.keys())
            .collect();
        let text: String = used
            .iter()
            .filter_map(|k| record.stack.networks.get(*k))
            .filter(|n| !n.external)
            .map(|n| format!(" ✔ Network {:<32} Created\n", n.name))
            .collect();
        super::write_stderr(&text);
    }
    let kept: Vec<&String> = resp
        .orphans
        .iter()
        .filter(|o| !resp.removed_orphans.contains(o))
        .collect();
    if !kept.is_empty() {
        super::write_stderr(&format!(
            "berth: warning: found containers of services no longer in the project ({}); \
             run up --remove-orphans to remove them\n",
            kept.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let code = wait_up(&client, &name, args, started)?;
    if args.detach || args.wait {
        return Ok(code);
    }
    attach(&client, &name, args)
}

static INTERRUPTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Attached `up`: every container's output, prefixed with its name, until all have
/// exited (or one has, with --abort-on-container-exit), or Ctrl-C; then the stack's
/// containers are stopped (not removed), as Compose does.
fn attach(client: &Client, name: &str, args: &UpArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: the handler only increments an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    let abort = args.abort_on_container_exit || args.exit_code_from.is_some();
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let out = std::sync::Arc::new(std::sync::Mutex::new(()));
    let mut following: BTreeSet<String> = BTreeSet::new();
    let mut services: Vec<String> = Vec::new();
    let exit_code = loop {
        let state: State = client.call("GET", "/v1/state", None::<&()>)?;
        let tasks: Vec<&Task> = state
            .tasks
            .values()
            .filter(|t| t.stack == name && t.desired == DesiredState::Running)
            .collect();
        let width = tasks.iter().map(|t| t.name().len()).max().unwrap_or(0);
        // `attach: false`: the service runs, its output is not shown (as Compose).
        let quiet = |service: &str| {
            (state.stacks.get(name))
                .and_then(|r| r.stack.services.get(service))
                .is_some_and(|s| s.attach == Some(false))
        };
        for t in &tasks {
            if t.status.started_at.is_some() && !quiet(&t.service) && following.insert(t.id.clone())
            {
                if !services.contains(&t.service) {
                    services.push(t.service.clone());
                }
                let index = services.iter().position(|s| s == &t.service).unwrap_or(0);
                let prefix = prefix(&t.name(), width, color.then_some(index));
                let (client, id, out) = (client.clone(), t.id.clone(), out.clone());
                std::thread::spawn(move || follow(&client, &id, &prefix, &out));
            }
        }
        let ended: Vec<&&Task> = tasks
            .iter()
            .filter(|t| t.status.state().is_terminal())
            .collect();
        if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break 130;
        }
        if abort && !ended.is_empty() {
            let code = match &args.exit_code_from {
                Some(svc) => tasks
                    .iter()
                    .find(|t| &t.service == svc && t.status.state().is_terminal())
                    .and_then(|t| t.status.exit_code),
                None => ended[0].status.exit_code,
            };
            if args.exit_code_from.is_none() || code.is_some() {
                let t = ended[0];
                super::write_stderr(&format!(
                    "{} exited with code {}\nAborting on container exit...\n",
                    t.name(),
                    t.status.exit_code.unwrap_or(0)
                ));
                break code.unwrap_or(0);
            }
        }
        // Every container has exited and none will restart.
        if !tasks.is_empty() && ended.len() == tasks.len() && !restart_pending(&state) {
            std::thread::sleep(Duration::from_millis(300));
            break 0;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    super::write_stderr("Gracefully stopping... (press Ctrl+C again to force)\n");
    let req = ServicesRequest::default();
    let _: Vec<String> = client.call("POST", &format!("/v1/stacks/{name}/stop"), Some(&req))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        let state: State = client.call("GET", "/v1/state", None::<&()>)?;
        let running = state
            .tasks
            .values()
            .filter(|t| {
                t.stack == name
                    && !t.status.state().is_terminal()
                    && t.desired != DesiredState::Running
            })
            .count();
        if running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(ExitCode::from(exit_code.clamp(0, 255) as u8))
}

/// Whether the orchestrator is about to start something (a restart after its back-off).
fn restart_pending(state: &State) -> bool {
    let tasks: Vec<Task> = state.tasks.values().cloned().collect();
    let plan = manager::orchestrator::reconcile(&state.stacks, &tasks, spec::task::now_ms());
    plan.wake_at.is_some() || !plan.changes.is_empty()
}

fn prefix(name: &str, width: usize, color: Option<usize>) -> String {
    const COLORS: [u8; 6] = [36, 33, 32, 35, 34, 31];
    let text = format!("{name:<width$} | ");
    match color {
        Some(i) => format!("\x1b[{}m{text}\x1b[0m", COLORS[i % COLORS.len()]),
        None => text,
    }
}

/// Prints a container's output as it comes, each line after `prefix`.
fn follow(client: &Client, id: &str, prefix: &str, out: &std::sync::Mutex<()>) {
    let Ok(resp) = client.request("GET", &format!("/v1/tasks/{id}/logs?follow=true"), None) else {
        return;
    };
    for line in resp.body.lines() {
        let Ok(line) = line else { break };
        let Ok(entry) = serde_json::from_str::<LogLine>(&line) else {
            continue;
        };
        let text = format!(
            "{prefix}{}\n",
            entry.line.strip_suffix('\n').unwrap_or(&entry.line)
        );
        let _guard = out.lock();
        if write_stdout(&text).is_err() {
            break;
        }
    }
}

/// Follows the stack until every service has started (and, with `--wait`, is healthy),
/// printing a line per container as Compose does. Containers that could not start are
/// reported together, once the others have started or failed too, so one `up` names
/// every cause.
///
/// Where each container stands is the manager's to say (`manager::progress`, with the
/// orchestrator's own rules); each answer comes once the store has changed since the
/// previous one (or after a second without a change), so this makes one request per
/// change, and reads only this stack.
fn wait_up(
    client: &Client,
    name: &str,
    args: &UpArgs,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let deadline = started + Duration::from_secs(args.wait_timeout);
    let mut printed: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut seen: Option<u64> = None;
    loop {
        let mut path = format!("/v1/stacks/{name}/progress?wait={}", args.wait);
        if let Some(version) = seen {
            // Answered by the deadline at the latest, so that --wait-timeout holds.
            let left = deadline.saturating_duration_since(Instant::now());
            path.push_str(&format!(
                "&after={version}&max_wait_ms={}",
                left.as_millis().max(1)
            ));
        }
        let progress: Progress = client.call("GET", &path, None::<&()>)?;
        seen = Some(progress.version);
        if !progress.deployed {
            bail!("stack {name} was taken down while starting");
        }
        // Containers made but not started yet (neither up nor failed).
        let mut starting = 0;
        let mut pending = Vec::new();
        let mut lines = String::new();
        // A service being updated: its new tasks' health is the updater's to judge
        // (it rolls back or pauses, and that is reported first).
        let rolling: BTreeSet<&String> = progress
            .updates
            .iter()
            .filter(|(_, u)| u.state == UpdateState::Updating)
            .map(|(svc, _)| svc)
            .collect();
        // Rolling updates: say how far they are; stop on one that paused or rolled
        // back; with --wait, wait for them to complete (a task can still fail within
        // its monitor after it started).
        for (svc, u) in &progress.updates {
            match u.state {
                UpdateState::Paused | UpdateState::RollbackPaused => bail!(
                    "the update of service {svc} is paused: {}; fix the definition and run `berth up` again (the update starts over), or `berth rollback {svc}`",
                    u.message
                ),
                UpdateState::RollingBack | UpdateState::RolledBack => bail!(
                    "the update of service {svc} failed and {} to its previous definition: {}",
                    if u.state == UpdateState::RolledBack {
                        "was rolled back"
                    } else {
                        "is rolling back"
                    },
                    u.message
                ),
                UpdateState::Updating => {
                    let line = format!(" ⟳ Service {svc:<32} {u}\n");
                    if printed.insert(line.clone()) {
                        lines.push_str(&line);
                    }
                    if args.wait {
                        pending.push(format!("the update of {svc} ({u})"));
                    }
                }
                UpdateState::Completed => {}
            }
        }
        for c in &progress.containers {
            if c.state.has_live_container() {
                failed.remove(&c.name);
            }
            match &c.state {
                SlotState::DependencyFailed { dependency } => bail!(
                    "service {dependency:?} did not complete successfully, so {:?} was not started",
                    c.service
                ),
                SlotState::CouldNotStart { message } => {
                    failed.insert(c.name.clone(), message.clone());
                }
                SlotState::Started | SlotState::Healthy => {
                    if printed.insert(c.name.clone()) {
                        let what = if c.state == SlotState::Healthy {
                            "Healthy"
                        } else {
                            "Started"
                        };
                        lines.push_str(&format!(" ✔ Container {:<30} {what}\n", c.name));
                    }
                }
                SlotState::Unhealthy if rolling.contains(&c.service) => {
                    pending.push(c.name.clone())
                }
                SlotState::Unhealthy => bail!("container {} is unhealthy", c.name),
                // No node can run it now; it starts when one can. `--wait` asked for
                // everything running: that cannot be, so say why.
                SlotState::Unplaced { message } if args.wait => bail!(
                    "container {} cannot run on any node of the cluster: {message}",
                    c.name
                ),
                SlotState::Unplaced { message } => {
                    if printed.insert(c.name.clone()) {
                        lines
                            .push_str(&format!(" ⧖ Container {:<30} Pending: {message}\n", c.name));
                    }
                }
                SlotState::Starting => {
                    starting += 1;
                    pending.push(c.name.clone());
                }
                // A slot waiting for its turn in a rolling update: `up -d` returns
                // once the update is under way (as `docker service update --detach`);
                // `--wait` waits for it.
                SlotState::Waiting if rolling.contains(&c.service) && !args.wait => {}
                SlotState::Waiting | SlotState::Pending => pending.push(c.name.clone()),
            }
        }
        super::write_stderr(&lines);
        if !failed.is_empty() && (starting == 0 || Instant::now() >= deadline) {
            let mut text = String::new();
            for (name, message) in &failed {
                text.push_str(&format!(" ✘ Container {name:<30} Error\nberth: container {name} could not start: {message}\n"));
            }
            super::write_stderr(&text);
            bail!(
                "{} of {name} could not start; fix the cause and run `berth up` again (it starts what is missing), or `berth down`",
                if failed.len() == 1 {
                    "a container".to_string()
                } else {
                    format!("{} containers", failed.len())
                }
            );
        }
        if pending.is_empty() && failed.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {}s waiting for {}",
                args.wait_timeout,
                pending.join(", ")
            );
        }
    }
}

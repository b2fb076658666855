//! The Compose lifecycle verbs (`up`, `down`, `ps`, `logs`, `ls`, `start`, `stop`,
//! `restart`) and `daemon`. Each loads the project where it needs to (as `config`
//! does), then talks to the daemon over its socket (`crate::client`), starting one when
//! `up` finds none.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use manager::api::stacks::DownResponse;
use manager::api::LogLine;
use manager::orchestrator::{dependency_state, replicas, spec_hash, DependencyState};
use manager::stacks::{ServicesRequest, UpRequest, UpResponse};
use manager::state::model::State;
use spec::task::{DesiredState, StackRecord, Task, TaskState};

use super::{print_diagnostics, write_stdout, ProjectArgs};
use crate::client::Client;
use crate::daemon;

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
    /// Only these services (and what they depend on)
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Also remove the stack's named volumes
    #[arg(short = 'v', long)]
    volumes: bool,
    /// Seconds to wait for each container to stop before killing it
    #[arg(short = 't', long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Accepted for Compose compatibility: down always removes every container of the
    /// stack, orphans included
    #[arg(long)]
    remove_orphans: bool,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Also show stopped containers
    #[arg(short = 'a', long)]
    all: bool,
    /// Only the container names
    #[arg(short = 'q', long)]
    quiet: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Project name (files go before the verb: berth -f FILE logs -f)
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    pub project_name: Option<String>,
    /// Keep printing new lines
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines of each container
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<usize>,
    /// Show timestamps
    #[arg(short = 't', long)]
    timestamps: bool,
    /// Only lines since this time: a duration back from now (10m, 1h30m) or an
    /// RFC 3339 time (2026-11-23T10:00:00Z)
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Do not prefix lines with the container name
    #[arg(long)]
    no_log_prefix: bool,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only the stack names
    #[arg(short = 'q', long)]
    quiet: bool,
}

/// The project's name without loading more than needed: `-p`, else the files.
fn project_name(project: &ProjectArgs) -> anyhow::Result<String> {
    if let Some(name) = &project.project_name {
        return Ok(name.clone());
    }
    Ok(load(project, &[])?.stack.name)
}

fn load(project: &ProjectArgs, services: &[String]) -> anyhow::Result<spec::Project> {
    let opts = project.load_options(services)?;
    match spec::load(&opts) {
        Ok(p) => {
            print_diagnostics(&p.warnings, &[]);
            Ok(p)
        }
        Err(e) => {
            print_diagnostics(&e.warnings, &e.errors);
            Err(anyhow::anyhow!(
                "the project has errors (above); nothing was changed"
            ))
        }
    }
}

/// A client of the running daemon; `start` starts one when none answers.
pub(super) fn connect(state_dir: &Path, start: bool) -> anyhow::Result<Client> {
    // A context (--host, BERTH_HOST, the context file) sends verbs to a remote manager.
    if let Some(remote) = super::cluster::remote_client()? {
        return Ok(remote);
    }
    let client = Client::new(&daemon::socket_path(state_dir));
    if client.ping() {
        return Ok(client);
    }
    if !start {
        bail!(
            "no berth daemon is running for {} (berth up starts one)",
            state_dir.display()
        );
    }
    let (mut child, log_from) = start_daemon(state_dir)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if client.ping() {
            return Ok(client);
        }
        // A daemon that refused to run (this host lacks what containers need) says
        // why in its log: show it here rather than wait.
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read(daemon::log_path(state_dir)).unwrap_or_default();
            let said = String::from_utf8_lossy(log.get(log_from..).unwrap_or_default());
            bail!(
                "the berth daemon stopped at once ({status}):\n{}",
                said.trim_end()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!(
        "started a berth daemon but it does not answer; see its log {}",
        daemon::log_path(state_dir).display()
    )
}

/// Starts `berth daemon` in the background, detached from this terminal, its output
/// in `<state>/daemon.log`; returns it and where its output starts in the log.
fn start_daemon(state_dir: &Path) -> anyhow::Result<(std::process::Child, usize)> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let log_path = daemon::log_path(state_dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let log_from = log.metadata().map_or(0, |m| m.len() as usize);
    let me = std::env::current_exe().context("find the berth binary")?;
    let mut cmd = std::process::Command::new(me);
    cmd.arg("--state-dir")
        .arg(state_dir)
        .arg("daemon")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from our session so
    // that closing the terminal does not signal it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("start berth daemon")?;
    super::write_stderr(&format!(
        "berth: started the berth daemon (log: {})\n",
        log_path.display()
    ));
    Ok((child, log_from))
}

pub fn daemon(state_dir: &Path) -> anyhow::Result<ExitCode> {
    daemon::run(state_dir, super::runtime::shim_program()?)?;
    Ok(ExitCode::SUCCESS)
}

pub fn up(state_dir: &Path, project: &ProjectArgs, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(project, &args.services)?;
    let mut stack = loaded.stack.clone();
    if !args.services.is_empty() {
        super::config::keep_with_dependencies(&mut stack, &args.services);
    }
    check_images(state_dir, &stack)?;
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
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
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
        ..record_for(&loaded, stack)
    };
    let req = UpRequest {
        record: record.clone(),
        remove_orphans: args.remove_orphans,
        force_recreate: args.force_recreate,
        no_recreate: args.no_recreate,
    };
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
    let code = wait_up(&client, &record, args, started)?;
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
        for t in &tasks {
            if t.status.started_at.is_some() && following.insert(t.id.clone()) {
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
    let plan = manager::orchestrator::reconcile(&state.stacks, &tasks, manager::now_ms());
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

/// Every service's image must be in the store before anything is deployed: missing
/// ones are pulled (Compose's default `pull_policy: missing`; `always` pulls every
/// time, `never` does not), so that a missing image stops `up` before it changes
/// anything.
fn check_images(state_dir: &Path, stack: &spec::Stack) -> anyhow::Result<()> {
    let store = agent::image::Store::open(state_dir)?;
    let mut missing = Vec::new();
    for (name, svc) in &stack.services {
        let Some(image) = &svc.image else {
            missing.push(format!(
                "services.{name}: no image (berth cannot build images yet; give image:)"
            ));
            continue;
        };
        let policy = svc.pull_policy.as_deref().unwrap_or("missing");
        let reference = match agent::image::Reference::parse(image) {
            Ok(r) => r,
            Err(e) => {
                missing.push(format!("services.{name}.image: {e}"));
                continue;
            }
        };
        let present = store.image(&reference).is_ok();
        let pull = match policy {
            "always" => true,
            "never" => false,
            "build" => {
                missing.push(format!(
                    "services.{name}.pull_policy: build is not supported (berth cannot build images yet)"
                ));
                continue;
            }
            _ => !present,
        };
        if pull {
            super::write_stderr(&format!(" ⠿ {name} Pulling {image}\n"));
            if let Err(e) = pull_one(&store, image, &[], true) {
                missing.push(format!(
                    "services.{name}.image: {image} is not in the store and could not be pulled ({e:#}); \
                     import it with berth image import, load it with berth image load, or pull it \
                     with berth image pull"
                ));
            }
        } else if !present {
            missing.push(format!(
                "services.{name}.image: image {:?} not found and pull_policy is never; import it \
                 with berth image import, load it with berth image load, or pull it",
                reference.familiar()
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        bail!("{}\nnothing was changed", missing.join("\n"))
    }
}

/// What the store keeps of a deployment of `stack` from the project `loaded`.
fn record_for(loaded: &spec::Project, stack: spec::Stack) -> StackRecord {
    StackRecord {
        contents: file_contents(&loaded.stack),
        secret_env: secret_environment(&loaded.stack, &loaded.environment),
        files: loaded
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
        project_dir: loaded.project_dir.display().to_string(),
        stack,
        orphans: BTreeMap::new(),
        oneoffs: BTreeMap::new(),
        scale: BTreeMap::new(),
        restarted: BTreeMap::new(),
        stopped: Vec::new(),
    }
}

/// A digest of every file-sourced secret and config, so that editing one recreates
/// the containers that use it (an unreadable file is left to the container's start
/// to report).
fn file_contents(stack: &spec::Stack) -> BTreeMap<String, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    for (kind, objects) in [("secrets", &stack.secrets), ("configs", &stack.configs)] {
        for (key, o) in objects {
            let Some(bytes) = o.file.as_ref().and_then(|f| std::fs::read(f).ok()) else {
                continue;
            };
            out.insert(
                format!("{kind}.{key}"),
                hex::encode(sha2::Sha256::digest(&bytes)),
            );
        }
    }
    out
}

/// The variables `environment:`-sourced secrets and configs read.
fn secret_environment(
    stack: &spec::Stack,
    env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    stack
        .secrets
        .values()
        .chain(stack.configs.values())
        .filter_map(|o| o.environment.as_ref())
        .filter_map(|k| Some((k.clone(), env.get(k)?.clone())))
        .collect()
}

/// Follows the stack until every service has started (and, with `--wait`, is healthy),
/// printing a line per container as Compose does. Containers that could not start are
/// reported together, once the others have started or failed too, so one `up` names
/// every cause.
fn wait_up(
    client: &Client,
    record: &StackRecord,
    args: &UpArgs,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let name = &record.stack.name;
    let deadline = started + Duration::from_secs(args.wait_timeout);
    let mut printed: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    loop {
        // Containers made but not started yet (neither up nor failed).
        let mut starting = 0;
        let state: State = client.call("GET", "/v1/state", None::<&()>)?;
        let Some(deployed) = state.stacks.get(name) else {
            bail!("stack {name} was taken down while starting");
        };
        let tasks: Vec<&Task> = state.tasks.values().filter(|t| &t.stack == name).collect();
        let mut pending = Vec::new();
        let mut lines = String::new();
        for (svc_name, svc) in &deployed.stack.services {
            if deployed.stopped.contains(svc_name) {
                continue;
            }
            let hash = spec_hash(deployed, svc);
            let wants_health = args.wait
                && svc
                    .healthcheck
                    .as_ref()
                    .is_some_and(|h| !h.disable && h.test.first().is_some_and(|t| t != "NONE"));
            for slot in 1..=replicas(deployed, svc_name, svc) {
                let current = tasks
                    .iter()
                    .filter(|t| t.service == *svc_name && t.slot == slot && t.spec_hash == hash)
                    .filter(|t| t.desired == DesiredState::Running)
                    .max_by_key(|t| t.generation);
                let Some(t) = current else {
                    // Not created yet: its dependencies are not met.
                    for (dep, d) in &svc.depends_on {
                        let of_dep = state.tasks.values().filter(|t| {
                            &t.stack == name
                                && &t.service == dep
                                && t.desired != DesiredState::Remove
                        });
                        if dependency_state(of_dep, d.condition) == DependencyState::Failed {
                            bail!("service {dep:?} did not complete successfully, so {svc_name:?} was not started");
                        }
                    }
                    pending.push(format!("{name}-{svc_name}-{slot}"));
                    continue;
                };
                let st = t.status.state();
                if t.status.never_started() {
                    failed.insert(t.name(), t.status.message.clone());
                    continue;
                }
                failed.remove(&t.name());
                if t.status.started_at.is_none() {
                    starting += 1;
                }
                let healthy = !wants_health || t.status.health == spec::task::Health::Healthy;
                let up = t.status.started_at.is_some() && st >= TaskState::Running;
                if up && healthy {
                    if printed.insert(t.name()) {
                        let what = if wants_health { "Healthy" } else { "Started" };
                        lines.push_str(&format!(" ✔ Container {:<30} {what}\n", t.name()));
                    }
                } else {
                    if wants_health && t.status.health == spec::task::Health::Unhealthy {
                        bail!("container {} is unhealthy", t.name());
                    }
                    pending.push(t.name());
                }
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
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn down(state_dir: &Path, project: &ProjectArgs, args: &DownArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let mut path = format!("/v1/stacks/{name}?volumes={}", args.volumes);
    if let Some(t) = args.timeout {
        path.push_str(&format!("&timeout={t}"));
    }
    let _ = args.remove_orphans;
    let resp: DownResponse = client.call("DELETE", &path, None::<&()>)?;
    let mut text = String::new();
    for c in &resp.removed_containers {
        text.push_str(&format!(" ✔ Container {c:<30} Removed\n"));
    }
    for n in &resp.removed_networks {
        text.push_str(&format!(" ✔ Network {n:<32} Removed\n"));
    }
    for v in &resp.removed_volumes {
        text.push_str(&format!(" ✔ Volume {v:<33} Removed\n"));
    }
    super::write_stderr(&text);
    Ok(ExitCode::SUCCESS)
}

pub fn ps(state_dir: &Path, project: &ProjectArgs, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    let now = manager::now_ms();
    let mut tasks: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| t.stack == name)
        .filter(|t| args.services.is_empty() || args.services.contains(&t.service))
        .filter(|t| t.desired != DesiredState::Remove)
        // One row per container name: the slot's newest task (history stays in the
        // store); without -a, running ones only, as Compose's ps, and those that
        // should run but could not start, with why.
        .filter(|t| latest_of_slot(&state, t))
        .filter(|t| {
            args.all
                || !t.status.state().is_terminal()
                || (t.desired == DesiredState::Running && t.status.never_started())
        })
        .collect();
    tasks.sort_by(|a, b| {
        (&a.service, a.slot, a.generation).cmp(&(&b.service, b.slot, b.generation))
    });
    let text = match (args.quiet, args.format) {
        (true, _) => tasks.iter().map(|t| t.name() + "\n").collect(),
        (false, Format::Json) => {
            let rows: Vec<serde_json::Value> = tasks
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "Name": t.name(), "ID": t.id, "Service": t.service, "Project": t.stack,
                        "Image": image_of(&state, t), "State": state_word(&t.status),
                        "Status": status_text(t, now), "Health": health_word(t),
                        "ExitCode": t.status.exit_code.unwrap_or(0),
                        // Why it could not start, as Docker's State.Error.
                        "Error": if t.status.never_started() { t.status.message.as_str() } else { "" },
                    })
                })
                .collect();
            serde_json::to_string(&rows)? + "\n"
        }
        (false, Format::Table) => {
            let mut rows = vec![[
                "NAME".to_string(),
                "IMAGE".into(),
                "SERVICE".into(),
                "STATUS".into(),
                "PORTS".into(),
            ]];
            for t in &tasks {
                rows.push([
                    t.name(),
                    image_of(&state, t),
                    t.service.clone(),
                    status_text(t, now),
                    ports_text(&client, t),
                ]);
            }
            table(&rows)
        }
    };
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Docker's PORTS column: `0.0.0.0:8080->80/tcp, ...` for a running container.
fn ports_text(client: &Client, t: &Task) -> String {
    if t.status.state() != TaskState::Running {
        return String::new();
    }
    let published: Vec<overlay_net::ports::Published> = client
        .call("GET", &format!("/v1/tasks/{}/ports", t.id), None::<&()>)
        .unwrap_or_default();
    published
        .iter()
        .map(|p| format!("{}->{}/{}", p.host(), p.container_port, p.proto))
        .collect::<Vec<_>>()
        .join(", ")
}

fn latest_of_slot(state: &State, t: &Task) -> bool {
    !state.tasks.values().any(|o| {
        o.stack == t.stack
            && o.service == t.service
            && o.slot == t.slot
            && o.generation > t.generation
    })
}

fn image_of(state: &State, t: &Task) -> String {
    state
        .stacks
        .get(&t.stack)
        .and_then(|r| {
            r.stack
                .services
                .get(&t.service)
                .or(r.orphans.get(&t.service))
        })
        .and_then(|s| s.image.clone())
        .unwrap_or_default()
}

fn state_word(status: &spec::task::TaskStatus) -> &'static str {
    if status.never_started() {
        return "dead";
    }
    match status.state() {
        TaskState::New | TaskState::Preparing | TaskState::Starting => "created",
        TaskState::Running => "running",
        TaskState::Complete | TaskState::Failed | TaskState::Shutdown => "exited",
        TaskState::Rejected => "dead",
        TaskState::Removed => "removed",
    }
}

fn health_word(t: &Task) -> &'static str {
    match t.status.health {
        spec::task::Health::None => "",
        spec::task::Health::Starting => "starting",
        spec::task::Health::Healthy => "healthy",
        spec::task::Health::Unhealthy => "unhealthy",
    }
}

/// Docker's STATUS column: `Up 3 seconds (healthy)`, `Exited (1) 2 minutes ago`.
fn status_text(t: &Task, now: u64) -> String {
    let st = t.status.state();
    let health = match health_word(t) {
        "" => String::new(),
        h => format!(" ({h})"),
    };
    if t.status.never_started() {
        return format!("Error: {}", t.status.message);
    }
    match st {
        TaskState::Running => format!(
            "Up {}{health}",
            ago(now.saturating_sub(t.status.started_at.unwrap_or(now)))
        ),
        TaskState::Complete | TaskState::Failed | TaskState::Shutdown => format!(
            "Exited ({}) {} ago",
            t.status.exit_code.unwrap_or(0),
            ago(now.saturating_sub(t.status.finished_at.unwrap_or(now)))
        ),
        TaskState::Rejected => format!("Error: {}", t.status.message),
        TaskState::Removed => format!("Removed: {}", t.status.message),
        _ => "Created".into(),
    }
}

fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => "less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        _ => format!("{} hours", s / 3600),
    }
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn logs(state_dir: &Path, project: &ProjectArgs, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    let mut tasks: Vec<Task> = state
        .tasks
        .values()
        .filter(|t| t.stack == name && t.desired != DesiredState::Remove)
        .filter(|t| args.services.is_empty() || args.services.contains(&t.service))
        .filter(|t| t.status.started_at.is_some())
        .cloned()
        .collect();
    tasks.sort_by(|a, b| {
        (&a.service, a.slot, a.generation).cmp(&(&b.service, b.slot, b.generation))
    });
    if tasks.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let since = match &args.since {
        None => None,
        Some(text) => Some(since_time(text)?),
    };
    let since = since.as_deref();
    let width = tasks.iter().map(|t| t.name().len()).max().unwrap_or(0);
    let out = std::sync::Mutex::new(());
    std::thread::scope(|scope| {
        for t in &tasks {
            let (client, out) = (&client, &out);
            scope.spawn(move || {
                let mut path = format!("/v1/tasks/{}/logs?follow={}", t.id, args.follow);
                if let Some(n) = args.tail {
                    path.push_str(&format!("&tail={n}"));
                }
                let Ok(resp) = client.request("GET", &path, None) else {
                    return;
                };
                for line in resp.body.lines() {
                    let Ok(line) = line else { break };
                    let Ok(entry) = serde_json::from_str::<LogLine>(&line) else {
                        continue;
                    };
                    // RFC 3339 times in UTC compare as strings.
                    if since.is_some_and(|s| entry.time.as_str() < s) {
                        continue;
                    }
                    let mut text = String::new();
                    if !args.no_log_prefix {
                        text.push_str(&format!("{:<width$} | ", t.name()));
                    }
                    if args.timestamps {
                        text.push_str(&entry.time);
                        text.push(' ');
                    }
                    text.push_str(entry.line.strip_suffix('\n').unwrap_or(&entry.line));
                    text.push('\n');
                    let _guard = out.lock();
                    if write_stdout(&text).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// `--since`: a duration back from now, or a time as written (RFC 3339, UTC).
fn since_time(text: &str) -> anyhow::Result<String> {
    if let Ok(d) = spec::units::parse_duration(text) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let then = now.saturating_sub(d);
        return Ok(agent::shim::format_rfc3339(
            then.as_secs() as i64,
            then.subsec_nanos(),
        ));
    }
    let b = text.as_bytes();
    let looks_like_date =
        b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[7] == b'-';
    if looks_like_date {
        return Ok(text.to_string());
    }
    bail!("--since {text:?}: give a duration (10m, 1h30m) or a UTC time (2026-11-23T10:00:00Z)")
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
        rows.push([name.clone(), status, record.files.join(",")]);
        names.push_str(name);
        names.push('\n');
    }
    write_stdout(&if args.quiet { names } else { table(&rows) })?;
    Ok(ExitCode::SUCCESS)
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
        _ => "Restarted",
    };
    report_services(&done, word);
    Ok(ExitCode::SUCCESS)
}

/// ` ✔ Service web    Stopped`, one line per service.
fn report_services(done: &[String], word: &str) {
    let text: String = done
        .iter()
        .map(|s| format!(" ✔ Service {s:<32} {word}\n"))
        .collect();
    super::write_stderr(&text);
}

#[derive(Debug, Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// The signal to send
    #[arg(short = 's', long, default_value = "SIGKILL")]
    signal: String,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

pub fn kill(state_dir: &Path, project: &ProjectArgs, args: &KillArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let req = ServicesRequest {
        services: args.services.clone(),
        signal: Some(args.signal.clone()),
    };
    let done: Vec<String> = client.call("POST", &format!("/v1/stacks/{name}/kill"), Some(&req))?;
    report_services(&done, "Killed");
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// One JSON object per line
    #[arg(long)]
    json: bool,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

/// Streams the project's container events until interrupted.
pub fn events(
    state_dir: &Path,
    project: &ProjectArgs,
    args: &EventsArgs,
) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let resp = client.request("GET", "/v1/events", None)?;
    for line in resp.body.lines() {
        let line = line?;
        let Ok(e) = serde_json::from_str::<manager::api::events::Event>(&line) else {
            continue;
        };
        if e.stack != name || (!args.services.is_empty() && !args.services.contains(&e.service)) {
            continue;
        }
        let text = if args.json {
            line + "\n"
        } else {
            let exit = e
                .exit_code
                .map(|c| format!(" (exitCode={c})"))
                .unwrap_or_default();
            let error = e.error.map(|m| format!(" (error={m})")).unwrap_or_default();
            format!(
                "{} container {} {} (service={}){exit}{error}\n",
                e.time, e.action, e.container, e.service
            )
        };
        if write_stdout(&text).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Only the image ids
    #[arg(short = 'q', long)]
    quiet: bool,
}

/// The images the project's services use, as `docker compose images`.
pub fn images(
    state_dir: &Path,
    project: &ProjectArgs,
    args: &ImagesArgs,
) -> anyhow::Result<ExitCode> {
    let loaded = load(project, &[])?;
    let store = agent::image::Store::open(state_dir)?;
    let mut rows = vec![[
        "SERVICE".to_string(),
        "REPOSITORY".into(),
        "TAG".into(),
        "IMAGE ID".into(),
        "SIZE".into(),
    ]];
    let mut ids = String::new();
    for (svc, service) in &loaded.stack.services {
        let Some(name) = &service.image else { continue };
        let reference = agent::image::Reference::parse(name)?;
        match store.image(&reference) {
            Ok(image) => {
                let id = image.id().short().to_string();
                ids.push_str(&id);
                ids.push('\n');
                rows.push([
                    svc.clone(),
                    reference.familiar_repository(),
                    reference.tag.clone().unwrap_or_default(),
                    id,
                    format!("{:.1}MB", image.size() as f64 / 1e6),
                ]);
            }
            Err(_) => rows.push([
                svc.clone(),
                reference.familiar_repository(),
                reference.tag.clone().unwrap_or_default(),
                "(missing)".into(),
                String::new(),
            ]),
        }
    }
    write_stdout(&if args.quiet { ids } else { table(&rows) })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Registry that may be reached over plain HTTP (host[:port]; repeatable)
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Carry on when an image cannot be pulled
    #[arg(long)]
    ignore_pull_failures: bool,
    /// No progress output
    #[arg(short, long)]
    quiet: bool,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

/// Pulls the images of the project's services.
pub fn pull(state_dir: &Path, project: &ProjectArgs, args: &PullArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(project, &args.services)?;
    let store = agent::image::Store::open(state_dir)?;
    let mut failed = false;
    for (svc, service) in &loaded.stack.services {
        if !args.services.is_empty() && !args.services.contains(svc) {
            continue;
        }
        let Some(name) = &service.image else { continue };
        match pull_one(&store, name, &args.insecure, !args.quiet) {
            Ok(()) => super::write_stderr(&format!(" ✔ {svc} Pulled\n")),
            Err(e) if args.ignore_pull_failures => {
                super::write_stderr(&format!("berth: warning: services.{svc}.image: {e:#}\n"))
            }
            Err(e) => {
                failed = true;
                super::write_stderr(&format!("berth: services.{svc}.image: {e:#}\n"));
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn pull_one(
    store: &agent::image::Store,
    name: &str,
    insecure: &[String],
    progress: bool,
) -> anyhow::Result<()> {
    let reference = agent::image::Reference::parse(name)?;
    let opts = agent::image::pull::PullOptions {
        credentials: agent::image::pull::Credentials::Auto,
        insecure_registries: insecure.to_vec(),
        progress: super::image::progress_mode(!progress),
        docker_config_dir: None,
    };
    agent::image::pull::pull(store, &reference, &opts)?;
    Ok(())
}

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

/// The running containers of the project (of `services`, if given), newest per slot.
fn running_tasks(state: &State, name: &str, services: &[String]) -> Vec<Task> {
    let mut tasks: Vec<Task> = state
        .tasks
        .values()
        .filter(|t| t.stack == name && t.status.state() == TaskState::Running)
        .filter(|t| services.is_empty() || services.contains(&t.service))
        .cloned()
        .collect();
    tasks.sort_by(|a, b| (&a.service, a.slot).cmp(&(&b.service, b.slot)));
    tasks
}

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

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print one sample and exit (berth stats always does for now)
    #[arg(long)]
    no_stream: bool,
    #[arg(value_name = "SERVICE")]
    services: Vec<String>,
}

/// `stats`: CPU (over a half-second sample) and memory of each running container.
pub fn stats(
    state_dir: &Path,
    project: &ProjectArgs,
    args: &StatsArgs,
) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    let tasks = running_tasks(&state, &name, &args.services);
    let sample = |t: &Task| -> Option<(u64, u64)> {
        let v: serde_json::Value = client
            .call("GET", &format!("/v1/tasks/{}/stats", t.id), None::<&()>)
            .ok()?;
        Some((v["cpu_nanos"].as_u64()?, v["memory_bytes"].as_u64()?))
    };
    let first: Vec<Option<(u64, u64)>> = tasks.iter().map(sample).collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let wall = start.elapsed().as_nanos().max(1) as f64;
    let mut rows = vec![["NAME".to_string(), "CPU %".into(), "MEM USAGE".into()]];
    for (t, before) in tasks.iter().zip(first) {
        let (Some((cpu0, _)), Some((cpu1, mem))) = (before, sample(t)) else {
            continue;
        };
        let cpu = cpu1.saturating_sub(cpu0) as f64 / wall * 100.0;
        rows.push([
            t.name(),
            format!("{cpu:.2}%"),
            format!("{:.1}MiB", mem as f64 / 1048576.0),
        ]);
    }
    let _ = args.no_stream;
    write_stdout(&table(&rows))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct PortArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// tcp or udp
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// Which replica (1 is the first)
    #[arg(long, default_value_t = 1, value_name = "N")]
    index: u32,
    #[arg(value_name = "SERVICE")]
    service: String,
    #[arg(value_name = "PRIVATE_PORT")]
    private_port: u16,
}

/// `port`: the host address a container port is published on (`0.0.0.0:8080`).
pub fn port(state_dir: &Path, project: &ProjectArgs, args: &PortArgs) -> anyhow::Result<ExitCode> {
    let name = project_name(project)?;
    let client = connect(state_dir, false)?;
    let state: State = client.call("GET", "/v1/state", None::<&()>)?;
    let task = running_tasks(&state, &name, std::slice::from_ref(&args.service))
        .into_iter()
        .find(|t| t.slot == args.index)
        .with_context(|| {
            format!(
                "service {:?} has no running container {}",
                args.service, args.index
            )
        })?;
    let published: Vec<overlay_net::ports::Published> =
        client.call("GET", &format!("/v1/tasks/{}/ports", task.id), None::<&()>)?;
    let found = published
        .iter()
        .find(|p| p.container_port == args.private_port && p.proto == args.protocol)
        .with_context(|| {
            format!(
                "{}/{} of {} is not published",
                args.private_port,
                args.protocol,
                task.name()
            )
        })?;
    write_stdout(&format!("{}\n", found.host()))?;
    Ok(ExitCode::SUCCESS)
}

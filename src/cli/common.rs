//! What several verbs share: loading the project, reaching the daemon (`connect`,
//! which `up` uses to start one), the running containers of a project, and the
//! plain-text table and `✔ Service` lines the verbs print.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use manager::state::model::State;
use spec::task::{Task, TaskState};

use super::{print_diagnostics, ProjectArgs};
use crate::client::Client;
use crate::daemon;

/// The project's name without loading more than needed: `-p`, else the files.
pub(super) fn project_name(project: &ProjectArgs) -> anyhow::Result<String> {
    if let Some(name) = &project.project_name {
        return Ok(name.clone());
    }
    Ok(load(project, &[])?.stack.name)
}

/// Loads the project (of `services`, if given), printing its warnings; a project with
/// errors prints them and stops the verb before it changes anything.
pub(super) fn load(project: &ProjectArgs, services: &[String]) -> anyhow::Result<spec::Project> {
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
    if let Some(remote) = super::context::remote_client()? {
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

/// The running containers of the project (of `services`, if given), newest per slot.
pub(super) fn running_tasks(state: &State, name: &str, services: &[String]) -> Vec<Task> {
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

/// Rows as aligned columns, three spaces apart, as Docker prints its tables.
pub(super) fn table<R: AsRef<[String]>>(rows: &[R]) -> String {
    let n = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let mut widths = vec![0usize; n];
    for r in rows {
        for (i, c) in r.as_ref().iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.as_ref().iter().enumerate() {
            if i + 1 == n {
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

/// ` ✔ Service web    Stopped`, one line per service.
pub(super) fn report_services(done: &[String], word: &str) {
    let text: String = done
        .iter()
        .map(|s| format!(" ✔ Service {s:<32} {word}\n"))
        .collect();
    super::write_stderr(&text);
}

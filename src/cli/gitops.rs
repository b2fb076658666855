//! `berth gitops ...`: sources of stacks kept deployed (a watched directory, or a git
//! repository), their status, and the verbs that steer them. Everything goes through
//! the daemon's API (`gitops::api`); the controller acts on the leader.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use gitops::api::{
    AddRequest, PlanLine, RemoveResponse, SourceView, StackVerbRequest, StackView, SyncResponse,
};
use manager::state::gitops::SourceKind;

use super::common::{connect, table};
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum GitopsCommand {
    /// Keep the stacks of a directory (or, with --git, a repository) deployed
    Add(Box<AddArgs>),
    /// List the sources
    Ls(FormatArgs),
    /// Remove a source; its stacks keep running unless --prune
    Rm(RmArgs),
    /// Read a source now (all of them by default) and show where its stacks stand
    Sync(SyncArgs),
    /// Each stack of the sources: what runs, from which revision, and why
    Status(StatusArgs),
    /// What the next sync would do, changing nothing
    Plan(PlanArgs),
    /// Leave a stack alone: no deployment, drift correction or prune until resume
    Suspend(StackArgs),
    /// Let a suspended stack follow its source again
    Resume(StackArgs),
    /// Deploy an earlier revision of a stack and pin it there
    Rollback(RollbackArgs),
    /// Let a pinned stack follow its source again
    Unpin(StackArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The directory of stack files (each NAME.yaml, and each folder with a compose.yaml)
    #[arg(
        value_name = "DIR",
        required_unless_present = "git",
        conflicts_with = "git"
    )]
    dir: Option<String>,
    /// A remote repository instead (file://, https://, ssh://)
    #[arg(long, value_name = "URL")]
    git: Option<String>,
    /// The branch to follow (default: the repository's HEAD)
    #[arg(long, requires = "git")]
    branch: Option<String>,
    /// The repository's folder that holds the stacks
    #[arg(long, requires = "git", value_name = "SUBDIR")]
    path: Option<String>,
    /// How often the repository is fetched
    #[arg(long, requires = "git", default_value = "30s")]
    interval: String,
    /// A file holding an HTTPS token
    #[arg(long, requires = "git")]
    token_file: Option<String>,
    /// A file holding an SSH private key
    #[arg(long, requires = "git")]
    ssh_key_file: Option<String>,
    /// A file holding the webhook's secret (GitHub/Gitea HMAC key, GitLab token)
    #[arg(long, requires = "git")]
    webhook_secret_file: Option<String>,
    /// The source's name (default: the directory's or repository's)
    #[arg(long)]
    name: Option<String>,
    /// How often everything is read again, besides changes
    #[arg(long, default_value = "60s")]
    resync: String,
    /// Pruning a stack also deletes its named volumes
    #[arg(long)]
    prune_volumes: bool,
    /// An age key file for SOPS-encrypted files
    #[arg(long)]
    age_key_file: Option<String>,
    /// Return at once, without waiting for the first sync
    #[arg(short, long)]
    detach: bool,
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    /// table or json
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(value_name = "NAME")]
    name: String,
    /// Also take down the stacks it deployed
    #[arg(long)]
    prune: bool,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// Prune the stacks whose prune is held (a mass delete)
    #[arg(long)]
    confirm_prune: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(value_name = "STACK")]
    stack: Option<String>,
    /// table or json
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[arg(value_name = "NAME")]
    name: Option<String>,
}

#[derive(Debug, Args)]
pub struct StackArgs {
    #[arg(value_name = "STACK")]
    stack: String,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[arg(value_name = "STACK")]
    stack: String,
    /// The revision (a digest or commit prefix, from gitops status; default: the one
    /// before what runs)
    #[arg(value_name = "REV")]
    revision: Option<String>,
}

/// How long a CLI waits for the controller to finish a sync it asked for.
const SYNC_WAIT: Duration = Duration::from_secs(300);

pub fn gitops(state_dir: &Path, cmd: &GitopsCommand) -> anyhow::Result<ExitCode> {
    let c = connect(state_dir, true)?;
    match cmd {
        GitopsCommand::Add(args) => add(&c, args),
        GitopsCommand::Ls(args) => {
            let sources: Vec<SourceView> = c.call("GET", "/v1/gitops", None::<&()>)?;
            if args.format == "json" {
                println!("{}", serde_json::to_string_pretty(&sources)?);
            } else {
                print!("{}", sources_table(&sources));
            }
            Ok(ExitCode::SUCCESS)
        }
        GitopsCommand::Rm(args) => {
            let path = format!("/v1/gitops/{}?prune={}", args.name, args.prune);
            let resp: RemoveResponse = c.call("DELETE", &path, None::<&()>)?;
            for s in &resp.pruned {
                eprintln!(" ✔ Stack {s:<32} Pruned");
            }
            if !resp.released.is_empty() {
                eprintln!(
                    "berth: the stacks of {} keep running, as if deployed by hand: {}",
                    args.name,
                    resp.released.join(", ")
                );
            }
            eprintln!(" ✔ Source {:<31} Removed", args.name);
            Ok(ExitCode::SUCCESS)
        }
        GitopsCommand::Sync(args) => {
            let sources: Vec<SourceView> = c.call("GET", "/v1/gitops", None::<&()>)?;
            let names: Vec<String> = match &args.name {
                Some(n) => vec![n.clone()],
                None => sources.iter().map(|s| s.name.clone()).collect(),
            };
            if names.is_empty() {
                bail!("no git-ops source (berth gitops add DIR adds one)");
            }
            let mut asked = Vec::new();
            for n in &names {
                let path = format!("/v1/gitops/{n}/sync?confirm_prune={}", args.confirm_prune);
                let r: SyncResponse = c.call("POST", &path, None::<&()>)?;
                asked.push((n.clone(), r.requested));
            }
            let sources = wait_synced(&c, &asked)?;
            let shown: Vec<SourceView> = sources
                .into_iter()
                .filter(|s| names.contains(&s.name))
                .collect();
            print!("{}", status_table(&stacks_of(&shown, None)));
            Ok(exit_for(&shown))
        }
        GitopsCommand::Status(args) => {
            let sources: Vec<SourceView> = c.call("GET", "/v1/gitops", None::<&()>)?;
            let stacks = stacks_of(&sources, args.stack.as_deref());
            if let (Some(s), true) = (&args.stack, stacks.is_empty()) {
                bail!(
                    "no git-ops source holds a stack named {s:?} (berth gitops status lists them)"
                );
            }
            if args.format == "json" {
                println!("{}", serde_json::to_string_pretty(&stacks)?);
            } else if args.stack.is_some() {
                print!("{}", stack_detail(&stacks[0]));
            } else {
                print!("{}", status_table(&stacks));
                for s in &sources {
                    for line in [&s.last.error, &s.last.held] {
                        if !line.is_empty() {
                            println!("{}: {line}", s.name);
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        GitopsCommand::Plan(args) => {
            let sources: Vec<SourceView> = c.call("GET", "/v1/gitops", None::<&()>)?;
            let names: Vec<String> = match &args.name {
                Some(n) => vec![n.clone()],
                None => sources.iter().map(|s| s.name.clone()).collect(),
            };
            let mut out = String::new();
            for n in names {
                let lines: Vec<PlanLine> =
                    c.call("GET", &format!("/v1/gitops/{n}/plan"), None::<&()>)?;
                out.push_str(&format!("Plan for source {n} (nothing was changed)\n"));
                for l in lines {
                    out.push_str(&format!("  {:<12} {}\n", l.action, l.stack));
                    for r in l.reasons {
                        out.push_str(&format!("      {r}\n"));
                    }
                }
            }
            super::write_stdout(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        GitopsCommand::Suspend(a) => stack_verb(&c, &a.stack, "suspend", None),
        GitopsCommand::Resume(a) => stack_verb(&c, &a.stack, "resume", None),
        GitopsCommand::Unpin(a) => stack_verb(&c, &a.stack, "unpin", None),
        GitopsCommand::Rollback(a) => stack_verb(&c, &a.stack, "rollback", a.revision.clone()),
    }
}

fn add(c: &Client, args: &AddArgs) -> anyhow::Result<ExitCode> {
    let duration = |flag: &str, text: &str| -> anyhow::Result<u64> {
        let d = spec::units::parse_duration(text)
            .map_err(|e| anyhow::anyhow!("--{flag} {text:?}: {e}"))?;
        if d < Duration::from_secs(1) {
            bail!("--{flag} {text:?}: must be at least 1s");
        }
        Ok(d.as_millis() as u64)
    };
    let absolute = |p: &str| -> anyhow::Result<String> {
        let path = std::path::Path::new(p);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()?.join(path)
        };
        Ok(std::fs::canonicalize(&abs)
            .with_context(|| format!("{p}: no such file or directory"))?
            .display()
            .to_string())
    };
    let (kind, default_name) = match (&args.dir, &args.git) {
        (Some(dir), _) => {
            let path = absolute(dir)?;
            let base = Path::new(&path)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("stacks")
                .to_string();
            (SourceKind::Dir { path }, base)
        }
        (None, Some(url)) => {
            let base = url
                .trim_end_matches('/')
                .rsplit(['/', ':'])
                .next()
                .unwrap_or("repo")
                .trim_end_matches(".git")
                .to_string();
            let file = |f: &Option<String>| f.as_deref().map(absolute).transpose();
            (
                SourceKind::Git {
                    url: url.clone(),
                    branch: args.branch.clone(),
                    path: args
                        .path
                        .clone()
                        .unwrap_or_default()
                        .trim_matches('/')
                        .to_string(),
                    interval_ms: duration("interval", &args.interval)?,
                    token_file: file(&args.token_file)?,
                    ssh_key_file: file(&args.ssh_key_file)?,
                    webhook_secret_file: file(&args.webhook_secret_file)?,
                },
                base,
            )
        }
        (None, None) => bail!("give a directory, or --git URL"),
    };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => spec::names::normalize_project_name(&default_name),
    };
    let req = AddRequest {
        name: name.clone(),
        kind,
        resync_ms: duration("resync", &args.resync)?,
        prune_volumes: args.prune_volumes,
        age_key_file: args.age_key_file.as_deref().map(absolute).transpose()?,
    };
    let added: SourceView = c.call("POST", "/v1/gitops", Some(&req))?;
    eprintln!(" ✔ Source {:<31} Added ({})", added.name, added.location);
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let sources = wait_synced(c, &[(name.clone(), added.sync_requested)])?;
    let shown: Vec<SourceView> = sources.into_iter().filter(|s| s.name == name).collect();
    print!("{}", status_table(&stacks_of(&shown, None)));
    Ok(exit_for(&shown))
}

/// Waits until each source of `asked` has synced up to its number; the sources then.
fn wait_synced(c: &Client, asked: &[(String, u64)]) -> anyhow::Result<Vec<SourceView>> {
    let end = Instant::now() + SYNC_WAIT;
    loop {
        let sources: Vec<SourceView> = c.call("GET", "/v1/gitops", None::<&()>)?;
        let done = asked.iter().all(|(n, want)| {
            sources
                .iter()
                .find(|s| &s.name == n)
                .is_none_or(|s| s.synced >= *want)
        });
        if done {
            return Ok(sources);
        }
        if Instant::now() > end {
            bail!(
                "the sync did not finish within {} s; berth gitops status shows where it stands",
                SYNC_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Non-zero when a stack could not be deployed as its source says, or the source
/// could not be read.
fn exit_for(sources: &[SourceView]) -> ExitCode {
    let bad = sources.iter().any(|s| {
        !s.last.error.is_empty()
            || s.stacks.iter().any(|st| {
                matches!(
                    st.result.as_str(),
                    "invalid" | "failed" | "conflict" | "held"
                )
            })
    });
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn stack_verb(
    c: &Client,
    stack: &str,
    verb: &str,
    revision: Option<String>,
) -> anyhow::Result<ExitCode> {
    let said: String = c.call(
        "POST",
        &format!("/v1/gitops/stacks/{stack}/{verb}"),
        Some(&StackVerbRequest { revision }),
    )?;
    eprintln!("berth: {said}");
    Ok(ExitCode::SUCCESS)
}

fn stacks_of(sources: &[SourceView], only: Option<&str>) -> Vec<StackView> {
    sources
        .iter()
        .flat_map(|s| s.stacks.iter().cloned())
        .filter(|st| only.is_none_or(|o| st.stack == o))
        .collect()
}

fn short(digest: &str) -> String {
    digest.chars().take(12).collect()
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = spec::task::now_ms().saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn sources_table(sources: &[SourceView]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "TYPE".into(),
        "LOCATION".into(),
        "STACKS".into(),
        "LAST ERROR".into(),
    ]];
    for s in sources {
        let kind = match s.kind {
            SourceKind::Dir { .. } => "dir",
            SourceKind::Git { .. } => "git",
        };
        rows.push([
            s.name.clone(),
            kind.into(),
            s.location.clone(),
            s.stacks.len().to_string(),
            s.last.error.lines().next().unwrap_or("").to_string(),
        ]);
    }
    table(&rows)
}

fn status_table(stacks: &[StackView]) -> String {
    let mut rows = vec![[
        "STACK".to_string(),
        "SOURCE".into(),
        "PATH".into(),
        "REVISION".into(),
        "COMMIT".into(),
        "DEPLOYED".into(),
        "RESULT".into(),
        "HEALTH".into(),
        "LAST ERROR".into(),
    ]];
    for s in stacks {
        let mut commit = short(&s.commit);
        if s.dirty && !commit.is_empty() {
            commit.push_str(" (dirty)");
        }
        rows.push([
            s.stack.clone(),
            s.source.clone(),
            s.path.clone(),
            short(&s.digest),
            commit,
            ago(s.deployed_at),
            s.result.clone(),
            s.health.clone(),
            s.error.lines().next().unwrap_or("").to_string(),
        ]);
    }
    table(&rows)
}

fn stack_detail(s: &StackView) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        if !v.is_empty() {
            out.push_str(&format!("{k:<12} {v}\n"));
        }
    };
    line("Stack:", &s.stack);
    line("Source:", &s.source);
    line("Path:", &s.path);
    line("Revision:", &s.digest);
    line("Deployed:", &s.deployed);
    let commit = if s.dirty && !s.commit.is_empty() {
        format!("{} (dirty)", s.commit)
    } else {
        s.commit.clone()
    };
    line("Commit:", &commit);
    line("Deployed at:", &ago(s.deployed_at));
    line("Result:", &s.result);
    line("Health:", &s.health);
    if let Some(p) = &s.pinned {
        line("Pinned:", p);
    }
    if !s.error.is_empty() {
        out.push_str("Last error:\n");
        for l in s.error.lines() {
            out.push_str(&format!("  {l}\n"));
        }
    }
    if !s.runs.is_empty() {
        out.push_str("Runs:\n");
        for r in s.runs.iter().rev() {
            out.push_str(&format!(
                "  {:<9} {:<10} {}\n",
                ago(r.at),
                r.action,
                short(&r.digest)
            ));
            for why in &r.reasons {
                out.push_str(&format!("      {why}\n"));
            }
        }
    }
    if !s.revisions.is_empty() {
        out.push_str("Revisions (berth gitops rollback STACK REV):\n");
        for (d, c, at) in s.revisions.iter().rev() {
            out.push_str(&format!("  {}  {:<12} {}\n", short(d), short(c), ago(*at)));
        }
    }
    out
}

//! `berth context ...`, and where every verb goes: the local daemon, or a remote
//! manager named by `--host`, `BERTH_HOST` or the context file, reached over mutual
//! TLS with an admin certificate (`--tls-dir`, `BERTH_TLS_DIR`, the context file, or
//! this host's `<state>/cluster/admin`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Point every verb at a remote manager (written to the context file)
    Set(ContextSetArgs),
    /// Go back to the local daemon
    Unset,
    /// Show where verbs go
    Show,
}

#[derive(Debug, Args)]
pub struct ContextSetArgs {
    /// A manager's cluster address, IP[:PORT]
    #[arg(long)]
    host: String,
    /// A directory with ca.crt, node.crt and node.key of an admin certificate
    #[arg(long = "tls-dir")]
    tls_dir: PathBuf,
}

/// Where verbs go: the context file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContextFile {
    pub host: Option<String>,
    pub tls_dir: Option<PathBuf>,
}

/// The remote manager this invocation talks to, if any (set once from the command
/// line, the environment and the context file).
static REMOTE: OnceLock<Result<Option<(String, PathBuf)>, String>> = OnceLock::new();

pub fn context_path() -> PathBuf {
    if let Ok(p) = std::env::var("BERTH_CONTEXT") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".config/berth/context.json")
}

fn read_context() -> anyhow::Result<ContextFile> {
    let path = context_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a berth context file; fix it or run berth context unset",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ContextFile::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Settles where verbs go: `--host`/`BERTH_HOST` first, then the context file. The
/// admin certificate comes from `--tls-dir`/`BERTH_TLS_DIR`, the context file, or this
/// host's `<state>/cluster/admin`.
///
/// A broken context file is reported by the first verb that needs to know where to
/// go, not by every command: `berth context unset` must still work.
pub fn set_remote(host: Option<String>, tls_dir: Option<PathBuf>, state_dir: &Path) {
    let host = host.filter(|h| !h.is_empty());
    let context = if host.is_some() && tls_dir.is_some() {
        Ok(ContextFile::default())
    } else {
        read_context().map_err(|e| format!("{e:#}"))
    };
    let remote = context.map(|context| {
        let host = host.or(context.host)?;
        let dir = tls_dir
            .or(context.tls_dir)
            .unwrap_or_else(|| manager::cluster::files::admin_dir(state_dir));
        Some((host, dir))
    });
    let _ = REMOTE.set(remote);
}

pub(super) fn remote_target() -> anyhow::Result<Option<&'static (String, PathBuf)>> {
    match REMOTE.get() {
        None | Some(Ok(None)) => Ok(None),
        Some(Ok(Some(remote))) => Ok(Some(remote)),
        Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
    }
}

/// A client of the remote manager, when the context names one.
pub fn remote_client() -> anyhow::Result<Option<Client>> {
    let Some((host, dir)) = remote_target()? else {
        return Ok(None);
    };
    let addr = manager::cluster::files::parse_addr(host, "--host")?;
    let creds = pki::NodeCredentials::load(dir).with_context(|| {
        format!(
            "load the admin certificate for {host} from {} (give --tls-dir DIR with ca.crt, \
             node.crt and node.key; `berth cluster init` wrote one in <state>/cluster/admin)",
            dir.display()
        )
    })?;
    let config = manager::port::http_client_config(&creds, &pki::DenyList::new())?;
    Ok(Some(Client::tls(
        &addr.to_string(),
        config,
        pki::tls::manager_server_name(),
    )))
}

pub fn context(cmd: &ContextCommand) -> anyhow::Result<ExitCode> {
    let path = context_path();
    match cmd {
        ContextCommand::Set(args) => {
            manager::cluster::files::parse_addr(&args.host, "--host")?;
            pki::NodeCredentials::load(&args.tls_dir).with_context(|| {
                format!(
                    "{} must hold ca.crt, node.crt and node.key of an admin certificate",
                    args.tls_dir.display()
                )
            })?;
            let tls_dir = std::fs::canonicalize(&args.tls_dir)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let ctx = ContextFile {
                host: Some(args.host.clone()),
                tls_dir: Some(tls_dir),
            };
            std::fs::write(&path, serde_json::to_vec_pretty(&ctx)?)
                .with_context(|| format!("write {}", path.display()))?;
            println!("Verbs now go to {} ({}).", args.host, path.display());
        }
        ContextCommand::Unset => {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
            }
            println!("Verbs now go to the local daemon.");
        }
        ContextCommand::Show => match remote_target()? {
            Some((host, dir)) => {
                println!("{host} (admin certificate in {})", dir.display())
            }
            None => println!("the local daemon"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

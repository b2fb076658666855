//! `berth pull`: the images of the project's services into the local store; and
//! [`check_images`], which `up` and `run` call so that a missing image stops them
//! before they change anything.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::common::load;
use super::ProjectArgs;

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
    let store = agent::image::ImageStore::open(state_dir)?;
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
    store: &agent::image::ImageStore,
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

/// Every service's image must be in the store before anything is deployed: missing
/// ones are pulled (Compose's default `pull_policy: missing`; `always` pulls every
/// time, `never` does not), so that a missing image stops `up` before it changes
/// anything.
pub(super) fn check_images(state_dir: &Path, stack: &spec::Stack) -> anyhow::Result<()> {
    let store = agent::image::ImageStore::open(state_dir)?;
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

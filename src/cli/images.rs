//! `berth images`: the images the project's services use, from the local image store
//! (`berth image ...` manages the store itself).

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::common::{load, table};
use super::{write_stdout, ProjectArgs};

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
    let store = agent::image::ImageStore::open(state_dir)?;
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

//! What git-ops needs of this host: each stack's images made present before it is
//! deployed (as `berth up` does on the CLI's side), pulled by the daemon itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agent::image::{pull, ImageStore, Reference};

/// Images for git-ops deployments, in the daemon's image store.
#[derive(Debug)]
pub struct DaemonImages {
    state_dir: PathBuf,
}

impl DaemonImages {
    pub fn new(state_dir: &Path) -> DaemonImages {
        DaemonImages {
            state_dir: state_dir.to_path_buf(),
        }
    }
}

impl gitops::Images for DaemonImages {
    /// Every service's image present, by its `pull_policy` (`missing`, Compose's
    /// default, pulls what the store lacks; `always` pulls; `never` must find it):
    /// Ok, or one line per service that cannot have its image. Blocking; called from a
    /// blocking thread of the daemon's runtime.
    fn ensure(&self, stack: &spec::Stack) -> Result<(), String> {
        let store = ImageStore::open(&self.state_dir)
            .map_err(|e| format!("cannot open the image store: {e}"))?;
        let mut problems = Vec::new();
        // Each image once, however many services use it.
        let mut done: HashMap<String, Result<(), String>> = HashMap::new();
        for (name, svc) in &stack.services {
            let Some(image) = &svc.image else {
                problems.push(format!(
                    "services.{name}: no image (berth cannot build images yet; give image:)"
                ));
                continue;
            };
            let policy = svc.pull_policy.as_deref().unwrap_or("missing");
            let reference = match Reference::parse(image) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("services.{name}.image: {e}"));
                    continue;
                }
            };
            let outcome = done
                .entry(reference.to_string())
                .or_insert_with(|| {
                    let present = store.image(&reference).is_ok();
                    match policy {
                        "never" if !present => Err(format!(
                            "{image} is not in the image store and pull_policy is never"
                        )),
                        "build" => Err("pull_policy: build: berth cannot build images yet".into()),
                        "always" => pull_now(&store, &reference),
                        _ if present => Ok(()),
                        _ => pull_now(&store, &reference),
                    }
                })
                .clone();
            if let Err(e) = outcome {
                problems.push(format!("services.{name}.image: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

fn pull_now(store: &ImageStore, reference: &Reference) -> Result<(), String> {
    let opts = pull::PullOptions {
        credentials: pull::Credentials::Auto,
        insecure_registries: Vec::new(),
        progress: pull::Progress::Off,
        docker_config_dir: None,
    };
    let pulling = pull::pull_async(store, reference, &opts);
    let outcome = match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(pulling),
        Err(_) => {
            return pull::pull(store, reference, &opts)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    outcome.map(|_| ()).map_err(|e| e.to_string())
}

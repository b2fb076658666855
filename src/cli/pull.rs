//! `berth pull`: the images of the project's services into the local store; and
//! [`check_images`], which `up` and `run` call so that a missing image stops them
//! before they change anything.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use manager::api::images::HoldersAnswer;
use manager::cluster::ops::ClusterStatus;

use super::common::load;
use super::ProjectArgs;
use crate::client::Client;

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

/// Every service's image must be where its tasks can get it before anything is
/// deployed, so that a missing image stops `up` before it changes anything. On a single
/// host that is the store: missing images are pulled (Compose's default `pull_policy:
/// missing`; `always` pulls every time, `never` does not; `daily`, `weekly`,
/// `every_<duration>` and `refresh` with `pull_refresh_after` pull again once the image
/// in the store is older than that, by the time the store recorded it was set). On a cluster (the CLI talks
/// to a manager) an image the local store lacks may be on another node, which the node
/// that runs a task fetches it from: one that some node holds needs no pull (`missing`)
/// and is enough for `never`; `always` still pulls.
pub(super) fn check_images(state_dir: &Path, stack: &spec::Stack) -> anyhow::Result<()> {
    let store = agent::image::ImageStore::open(state_dir)?;
    // Asked only once an image is missing here, so a single host with its images in
    // the store talks to no daemon.
    let mut cluster: Option<Option<Client>> = None;
    let mut missing = Vec::new();
    // Each image is looked up once, however many services use it (a thousand services
    // of one image read its index and manifest once, not a thousand times).
    let mut known: HashMap<String, bool> = HashMap::new();
    let mut refreshed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut asked: HashMap<String, Option<Result<HoldersAnswer, String>>> = HashMap::new();
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
        if policy == "build" {
            missing.push(format!(
                "services.{name}.pull_policy: build is not supported (berth cannot build images yet)"
            ));
            continue;
        }
        let key = reference.to_string();
        let mut present = *known
            .entry(key.clone())
            .or_insert_with(|| store.image(&reference).is_ok());
        // daily, weekly, every_<duration>, refresh: an image older than that is pulled
        // again; if that fails, the one in the store is used, with a warning.
        if let (true, Some(max_age)) = (present, svc.pull_max_age()) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let stale = store
                .fetched_at(&reference)
                .is_none_or(|at| now.saturating_sub(at) >= max_age.as_secs());
            if stale && !refreshed.contains(&key) {
                refreshed.insert(key.clone());
                super::write_stderr(&format!(
                    " ⠿ {name} Pulling {image} (older than its pull_policy allows)\n"
                ));
                if let Err(e) = pull_one(&store, image, &[], true) {
                    super::write_stderr(&format!(
                        " ! {name} {image} could not be pulled again ({e:#}); using the one in the store\n"
                    ));
                }
                present = store.image(&reference).is_ok();
            }
        }
        let mut holders = || {
            if let Some(answer) = asked.get(&key) {
                return answer.clone();
            }
            let client = cluster.get_or_insert_with(|| cluster_manager(state_dir));
            let answer = client.as_ref().map(|client| {
                let path = manager::api::images::holders_path(&reference.to_string());
                client
                    .call::<HoldersAnswer>("GET", &path, None::<&()>)
                    .map_err(|e| format!("{e:#}"))
            });
            asked.insert(key.clone(), answer.clone());
            answer
        };
        let mut pulled = false;
        let mut pull = || {
            super::write_stderr(&format!(" ⠿ {name} Pulling {image}\n"));
            let done = pull_one(&store, image, &[], true).map_err(|e| format!("{e:#}"));
            pulled = done.is_ok();
            done
        };
        let familiar = reference.familiar();
        match image_check(name, &familiar, policy, present, &mut holders, &mut pull) {
            Ok(note) => {
                if pulled {
                    // In the store now, for the next services that use it.
                    known.insert(key, true);
                }
                if let Some(note) = note {
                    super::write_stderr(&note);
                }
            }
            Err(refusal) => missing.push(refusal),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        bail!("{}\nnothing was changed", missing.join("\n"))
    }
}

/// The manager this CLI talks to, if it is one (a remote context, or a local daemon
/// that is a cluster's manager); None on a single host, or with no daemon running.
fn cluster_manager(state_dir: &Path) -> Option<Client> {
    let client = match super::context::remote_client() {
        Ok(Some(remote)) => remote,
        // A broken context fails the verb when it connects, with its own message.
        Err(_) => return None,
        Ok(None) => {
            let local = Client::new(&crate::daemon::socket_path(state_dir));
            if !local.ping() {
                return None;
            }
            local
        }
    };
    let status: ClusterStatus = client.call("GET", "/v1/cluster", None::<&()>).ok()?;
    (status.member && status.role == "manager").then_some(client)
}

/// Whether service `service`'s image `image` (its familiar name) is where a task can get
/// it, by `policy`: `present` says whether the local store has it, `holders` which nodes
/// of the cluster do (None: not a cluster), `pull` pulls it into the local store. Ok
/// with a line to show, or the refusal, naming the service and the image and what to
/// do. Asks `holders` and `pull` only when the answer depends on them.
fn image_check(
    service: &str,
    image: &str,
    policy: &str,
    present: bool,
    holders: &mut dyn FnMut() -> Option<Result<HoldersAnswer, String>>,
    pull: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Option<String>, String> {
    const PUT_IT: &str = "import it with berth image import, load it with berth image load, \
                          or pull it with berth image pull";
    if policy == "always" {
        return pull().map(|()| None).map_err(|e| {
            format!(
                "services.{service}.image: {image} is not in the store and could not be \
                 pulled ({e}); {PUT_IT}"
            )
        });
    }
    if present {
        return Ok(None);
    }
    let found = holders();
    if let Some(Ok(answer)) = &found {
        if !answer.holders.is_empty() {
            let nodes: Vec<String> = answer.holders.iter().map(|h| h.to_string()).collect();
            return Ok(Some(format!(
                " ✔ {service} Image {image} is on {} (its tasks fetch it from there)\n",
                nodes.join(", ")
            )));
        }
    }
    // Why the cluster could not say it has the image, for a refusal.
    let cluster = match &found {
        None => None,
        Some(Ok(answer)) if answer.unanswered.is_empty() => Some(String::new()),
        Some(Ok(answer)) => {
            let silent: Vec<String> = answer
                .unanswered
                .iter()
                .map(|u| format!("{}: {}", u.id, u.reason))
                .collect();
            Some(format!(
                " (nodes that did not answer, which may have it: {})",
                silent.join("; ")
            ))
        }
        Some(Err(e)) => Some(format!(" (the nodes could not be asked: {e})")),
    };
    let Some(why) = cluster else {
        // A single host, as before.
        if policy == "never" {
            return Err(format!(
                "services.{service}.image: image {image:?} not found and pull_policy is never; \
                 {PUT_IT}"
            ));
        }
        return pull().map(|()| None).map_err(|e| {
            format!(
                "services.{service}.image: {image} is not in the store and could not be \
                 pulled ({e}); {PUT_IT}"
            )
        });
    };
    const ON_A_NODE: &str = "import or load it on any node of the cluster (berth image \
                             import, berth image load), or pull it on one (berth image pull)";
    if policy == "never" {
        return Err(format!(
            "services.{service}.image: no node of the cluster has image {image:?}{why}, and \
             pull_policy is never; {ON_A_NODE}"
        ));
    }
    pull().map(|()| None).map_err(|e| {
        format!(
            "services.{service}.image: no node of the cluster has image {image:?}{why}, and \
             no registry gave it ({e}); {ON_A_NODE}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use manager::api::images::{Holder, Unanswered};

    /// What a check did: its answer, whether it asked the cluster, whether it pulled.
    fn check(
        policy: &str,
        present: bool,
        cluster: Option<Result<HoldersAnswer, String>>,
        pulls: Result<(), String>,
    ) -> (Result<Option<String>, String>, bool, bool) {
        let (mut asked, mut pulled) = (false, false);
        let got = image_check(
            "web",
            "app:1",
            policy,
            present,
            &mut || {
                asked = true;
                cluster.clone()
            },
            &mut || {
                pulled = true;
                pulls.clone()
            },
        );
        (got, asked, pulled)
    }

    fn on(ids: &[&str]) -> Option<Result<HoldersAnswer, String>> {
        Some(Ok(HoldersAnswer {
            holders: ids
                .iter()
                .map(|id| Holder {
                    id: id.to_string(),
                    hostname: format!("host-{id}"),
                    addr: format!("{id}:7377"),
                    digest: None,
                })
                .collect(),
            asked: 3,
            unanswered: Vec::new(),
        }))
    }

    #[test]
    fn an_image_on_some_node_of_the_cluster_needs_no_pull() {
        let offline = || Err("no registry at 127.0.0.1:1".to_string());
        let found = Ok(Some(
            " ✔ web Image app:1 is on node w2 (host-w2, w2:7377) (its tasks fetch it from \
             there)\n"
                .to_string(),
        ));
        // (policy, present here, the cluster's answer, pull's) -> (answer, asked, pulled)
        assert_eq!(
            check("missing", true, on(&[]), offline()),
            (Ok(None), false, false)
        );
        assert_eq!(
            check("missing", false, on(&["w2"]), offline()),
            (found.clone(), true, false)
        );
        assert_eq!(
            check("never", false, on(&["w2"]), offline()),
            (found, true, false)
        );
        // Always pulls, wherever the image is.
        assert_eq!(
            check("always", true, on(&["w2"]), Ok(())),
            (Ok(None), false, true)
        );
        // On no node: pulled, as on a single host.
        assert_eq!(
            check("missing", false, on(&[]), Ok(())),
            (Ok(None), true, true)
        );
        // A single host: the store and the registry only.
        assert_eq!(
            check("missing", false, None, Ok(())),
            (Ok(None), true, true)
        );
        assert_eq!(
            check("never", true, None, offline()),
            (Ok(None), false, false)
        );
    }

    #[test]
    fn an_image_no_node_and_no_registry_has_is_refused_saying_what_to_do() {
        let offline = || Err("no registry at 127.0.0.1:1".to_string());
        let (got, _, pulled) = check("missing", false, on(&[]), offline());
        assert!(pulled);
        assert_eq!(
            got,
            Err(
                "services.web.image: no node of the cluster has image \"app:1\", and no \
                 registry gave it (no registry at 127.0.0.1:1); import or load it on any node \
                 of the cluster (berth image import, berth image load), or pull it on one \
                 (berth image pull)"
                    .into()
            )
        );
        let (got, _, pulled) = check("never", false, on(&[]), offline());
        assert!(!pulled);
        assert!(
            got.as_ref().is_err_and(|e| e.starts_with(
                "services.web.image: no node of the cluster has image \"app:1\", and \
                 pull_policy is never; import or load it on any node"
            )),
            "{got:?}"
        );
        // Nodes that did not answer, or no answer at all, are named.
        let silent = Some(Ok(HoldersAnswer {
            holders: Vec::new(),
            asked: 3,
            unanswered: vec![Unanswered {
                id: "w3".into(),
                reason: "no answer within 3s".into(),
            }],
        }));
        let (got, _, _) = check("missing", false, silent, offline());
        assert!(
            got.as_ref().is_err_and(|e| e.contains(
                "has image \"app:1\" (nodes that did not answer, which may have it: w3: no \
                 answer within 3s), and no registry gave it"
            )),
            "{got:?}"
        );
        let (got, _, _) = check("missing", false, Some(Err("HTTP 503".into())), offline());
        assert!(
            got.as_ref()
                .is_err_and(|e| e.contains("(the nodes could not be asked: HTTP 503)")),
            "{got:?}"
        );
        // A single host says what it said before.
        let (got, _, _) = check("never", false, None, offline());
        assert_eq!(
            got,
            Err(
                "services.web.image: image \"app:1\" not found and pull_policy is never; \
                 import it with berth image import, load it with berth image load, or pull \
                 it with berth image pull"
                    .into()
            )
        );
        let (got, _, _) = check("always", true, on(&["w2"]), offline());
        assert!(
            got.as_ref().is_err_and(|e| e.starts_with(
                "services.web.image: app:1 is not in the store \
                                              and could not be pulled (no registry"
            )),
            "{got:?}"
        );
    }
}

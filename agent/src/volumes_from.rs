//! `volumes_from`: a container gets the volumes and bind mounts of another container,
//! at the same places, as Docker gives them (`docker run --volumes-from`).
//!
//! Which mounts are "volumes" is recorded in each container's bundle when it is made
//! ([`VOLUMES_ANNOTATION`]: the targets of its service's `volumes` of type volume and
//! bind, plus those it got through `volumes_from` itself, so chains work as in
//! Docker). The other container's mounts are read from its bundle, which berth wrote
//! and the container cannot: the sources are the host paths berth chose for it.
//!
//! The other container must exist on this node (running or stopped, as in Docker):
//! `SERVICE` is that service's container of the lowest slot, `container:NAME` the
//! container of that name. A mode of `ro` makes the mounts read-only; `rw` (the
//! default) keeps each one as the other container has it, since Docker never makes a
//! read-only mount writable.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};
use spec::model::{MountType, Service};

use crate::namespace_modes::{is_named, slot_of};
use crate::shim;

/// The annotation listing a container's volume targets, as JSON.
pub const VOLUMES_ANNOTATION: &str = "berth.volume-targets";

#[derive(Debug, thiserror::Error)]
pub enum VolumesFromError {
    #[error(
        "services.{service}.volumes_from[{index}]: {target} has no container on this node; \
         it must be created first (the task is retried)"
    )]
    NotFound {
        service: String,
        index: usize,
        target: String,
    },
    #[error("services.{service}.volumes_from[{index}]: reading {}: {message}", path.display())]
    Bundle {
        service: String,
        index: usize,
        path: PathBuf,
        message: String,
    },
}

/// One parsed entry.
#[derive(Debug, PartialEq, Eq)]
struct From<'a> {
    container: bool,
    name: &'a str,
    read_only: bool,
}

fn parse(entry: &str) -> From<'_> {
    let (container, rest) = match entry.strip_prefix("container:") {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    let (name, read_only) = match rest.rsplit_once(':') {
        Some((name, "ro")) => (name, true),
        Some((name, "rw")) => (name, false),
        _ => (rest, false),
    };
    From {
        container,
        name,
        read_only,
    }
}

/// The volume targets of the service itself (what another container's
/// `volumes_from` gets from it), before inheritance.
fn own_targets(service: &Service) -> Vec<String> {
    service
        .volumes
        .iter()
        .filter(|v| matches!(v.kind, MountType::Volume | MountType::Bind))
        .map(|v| v.target.clone())
        .collect()
}

/// Adds to `spec` the mounts `service` (named `name`, of `stack`) takes from other
/// containers, and records its volume targets for containers that take from it.
pub fn apply(
    spec: &mut Spec,
    stack: &str,
    name: &str,
    service: &Service,
    shim_root: &Path,
) -> Result<(), VolumesFromError> {
    let mut targets = own_targets(service);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let containers = if service.volumes_from.is_empty() {
        Vec::new()
    } else {
        shim::list(shim_root).unwrap_or_default()
    };
    for (index, entry) in service.volumes_from.iter().enumerate() {
        let from = parse(entry);
        let found = if from.container {
            containers
                .iter()
                .find(|c| is_named(&c.bundle, &c.id, from.name))
        } else {
            lowest_slot(&containers, stack, from.name)
        };
        let Some(other) = found else {
            return Err(VolumesFromError::NotFound {
                service: name.to_string(),
                index,
                target: if from.container {
                    format!("container {:?}", from.name)
                } else {
                    format!("service {:?}", from.name)
                },
            });
        };
        let path = other.bundle.join("config.json");
        let bad = |message: String| VolumesFromError::Bundle {
            service: name.to_string(),
            index,
            path: path.clone(),
            message,
        };
        let other_spec: Spec = std::fs::read(&path)
            .map_err(|e| bad(e.to_string()))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| bad(e.to_string())))?;
        let theirs: Vec<String> = (other_spec.annotations().as_ref())
            .and_then(|a| a.get(VOLUMES_ANNOTATION))
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        for m in other_spec.mounts().iter().flatten() {
            let dest = m.destination().to_string_lossy().into_owned();
            // Only its volumes; and the container's own mount at a place wins.
            if !theirs.contains(&dest) || mounts.iter().any(|x| x.destination() == m.destination())
            {
                continue;
            }
            mounts.push(with_mode(m, from.read_only));
            targets.push(dest);
        }
    }
    // Parents first, as for the service's own mounts.
    mounts.sort_by_key(|m| m.destination().components().count());
    spec.set_mounts(Some(mounts));
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    annotations.insert(
        VOLUMES_ANNOTATION.to_string(),
        serde_json::to_string(&targets).unwrap_or_else(|_| "[]".into()),
    );
    spec.set_annotations(Some(annotations));
    Ok(())
}

fn with_mode(m: &Mount, read_only: bool) -> Mount {
    let mut m = m.clone();
    if read_only {
        let mut opts = m.options().clone().unwrap_or_default();
        opts.retain(|o| o != "rw");
        if !opts.iter().any(|o| o == "ro") {
            opts.push("ro".into());
        }
        m.set_options(Some(opts));
    }
    m
}

/// The container of `service` of `stack` with the lowest slot, whatever its state.
fn lowest_slot<'a>(
    containers: &'a [shim::ContainerState],
    stack: &str,
    service: &str,
) -> Option<&'a shim::ContainerState> {
    containers
        .iter()
        .filter_map(|c| Some((slot_of(&c.id, stack, service)?, c)))
        .min_by_key(|(slot, _)| *slot)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_docker_reads_them() {
        let p = |s| parse(s);
        assert_eq!(
            p("data"),
            From {
                container: false,
                name: "data",
                read_only: false
            }
        );
        assert_eq!(
            p("data:ro"),
            From {
                container: false,
                name: "data",
                read_only: true
            }
        );
        assert_eq!(
            p("container:legacy:rw"),
            From {
                container: true,
                name: "legacy",
                read_only: false
            }
        );
    }

    #[test]
    fn read_only_is_added_and_never_removed() {
        let mut m = Mount::default();
        m.set_options(Some(vec!["rbind".into(), "rw".into()]));
        let ro = with_mode(&m, true);
        assert_eq!(
            ro.options().as_deref(),
            Some(&["rbind".to_string(), "ro".into()][..])
        );
        let mut m2 = Mount::default();
        m2.set_options(Some(vec!["rbind".into(), "ro".into()]));
        assert_eq!(with_mode(&m2, false).options(), m2.options());
    }
}

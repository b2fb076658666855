//! References to other services outside `depends_on`: `links`, `volumes_from` and the
//! namespaces shared with `service:X` (`network_mode`, `ipc`, `pid`, `uts`, `cgroup`).
//!
//! Each one needs X running first, so, as compose-go does, it becomes a dependency
//! with condition `service_started` (unless `depends_on` already names X): start
//! order, cycles and profiles then treat it like any other dependency. A reference to
//! a service that does not exist is reported where it is written.

use std::collections::BTreeMap;

use crate::diag::Diagnostics;
use crate::model::{Condition, Dependency, Service, Stack};
use crate::origin::Origin;

/// A service named by an attribute of another.
struct Reference {
    /// The attribute's path in the service (`links[0]`, `network_mode`).
    at: String,
    service: String,
    /// Whether the dependent is restarted with it: compose-go says yes for links and
    /// shared namespaces (they break when the other container is replaced), no for
    /// `volumes_from` (the volumes outlive it).
    restart: bool,
}

/// The services `svc` refers to: through `links`, `volumes_from` and the namespace
/// attributes.
fn references(svc: &Service) -> Vec<Reference> {
    let mut refs = Vec::new();
    let strings =
        |list: &[String]| -> Vec<(usize, String)> { list.iter().cloned().enumerate().collect() };
    // `db` or `db:alias`.
    for (i, link) in strings(&svc.links) {
        let service = link.split(':').next().unwrap_or_default().to_string();
        refs.push(Reference {
            at: format!("links[{i}]"),
            service,
            restart: true,
        });
    }
    // `db`, `db:ro`; `container:name[:ro]` is a container outside the project.
    for (i, from) in strings(&svc.volumes_from) {
        if from.starts_with("container:") {
            continue;
        }
        let service = from.split(':').next().unwrap_or_default().to_string();
        refs.push(Reference {
            at: format!("volumes_from[{i}]"),
            service,
            restart: false,
        });
    }
    // The namespaces shared with `service:X`.
    let namespaces = [
        ("network_mode", &svc.network_mode),
        ("ipc", &svc.ipc),
        ("pid", &svc.pid),
        ("uts", &svc.uts),
        ("cgroup", &svc.cgroup),
    ];
    for (key, value) in namespaces {
        if let Some(service) = value.as_deref().and_then(|v| v.strip_prefix("service:")) {
            refs.push(Reference {
                at: key.to_string(),
                service: service.to_string(),
                restart: true,
            });
        }
    }
    refs
}

/// Where each implicit dependency was written: (service, dependency) -> (file, path),
/// so that a later problem with it (a disabled profile) names the reference itself.
pub(crate) type Implicit = BTreeMap<(String, String), (String, String)>;

/// Adds the implicit dependencies of every service, and reports the references to
/// services that are not defined (or to the service itself).
pub(crate) fn add_implicit_dependencies(
    stack: &mut Stack,
    origin: &Origin,
    main_file: &str,
    diags: &mut Diagnostics,
) -> Implicit {
    let mut implicit = Implicit::new();
    let names: Vec<String> = stack.services.keys().cloned().collect();
    for (name, svc) in stack.services.iter_mut() {
        for r in references(svc) {
            let file = origin.file(name, &r.at).unwrap_or(main_file);
            let path = format!("services.{name}.{}", r.at);
            if r.service == *name {
                diags.error(file, &path, "a service cannot refer to itself");
                continue;
            }
            if !names.contains(&r.service) {
                diags.error(
                    file,
                    &path,
                    crate::validate::undefined("service", &r.service, names.iter()),
                );
                continue;
            }
            if svc.depends_on.contains_key(&r.service) {
                continue;
            }
            implicit.insert((name.clone(), r.service.clone()), (file.to_string(), path));
            svc.depends_on.insert(
                r.service,
                Dependency {
                    condition: Condition::ServiceStarted,
                    restart: r.restart,
                    required: true,
                },
            );
        }
    }
    implicit
}

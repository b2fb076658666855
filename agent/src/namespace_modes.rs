//! A service's namespace attributes (`network_mode`, `pid`, `ipc`, `uts`, `cgroup`,
//! `userns_mode`) made into its container's OCI namespaces, as Docker does on one host:
//! `host` leaves the namespace out of the spec (the container stays in the host's),
//! `service:NAME` and `container:NAME` join another container's namespace by the path
//! `/proc/<its init>/ns/<kind>`, anything else keeps a namespace of its own.
//!
//! # Whose namespace is joined
//!
//! The pid of the container to join is read from berth's own record of it (its shim's
//! state, written by the shim that started it), never from anything a container can
//! write. A pid is recycled once its process is reaped, so the pid is checked against
//! the start time the shim recorded, here and again by the runtime after it opened the
//! namespace (`runtime::JOIN_OWNER_ANNOTATION`): a namespace opened while the pid still
//! has that start time is the container's, and the open descriptor keeps it. A
//! container that is gone, or not running yet, is an error naming the service and the
//! attribute; the task fails and is retried by its restart policy, so a service that
//! joins another one started after it once that one runs.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use spec::model::Service;
use spec::namespaces::NamespaceMode;

use crate::shim::{self, ContainerState, Status};

/// The annotation that records a container's name in its bundle: what
/// `container:NAME` looks for.
pub const NAME_ANNOTATION: &str = "berth.container-name";

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// A value the loader would reject (a stack stored by an older berth).
    #[error("services.{service}.{attribute}: {message}")]
    Invalid {
        service: String,
        attribute: &'static str,
        message: String,
    },
    #[error(
        "services.{service}.{attribute}: {target} is not running on this node; it must \
         run first (the task is retried)"
    )]
    NotRunning {
        service: String,
        attribute: &'static str,
        target: String,
    },
    #[error(
        "services.{service}.{attribute}: berth cannot join its own namespace with {mode}; \
         name another service or container"
    )]
    Itself {
        service: String,
        attribute: &'static str,
        mode: String,
    },
    #[error(
        "services.{service}.{attribute}: with uts: host the hostname is the host's; \
         remove {attribute} or uts"
    )]
    NameWithHostUts {
        service: String,
        attribute: &'static str,
    },
    #[error(
        "services.{service}.networks: a service with network_mode: {mode} joins no \
         network; remove networks or network_mode"
    )]
    NetworksWithMode { service: String, mode: String },
    #[error("services.{service}.network_mode: reading the host's {}: {source}", path.display())]
    HostFile {
        service: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the container is networked, once its namespaces are planned: what the executor's
/// `connect` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Networking {
    /// Berth's networks (attach, DNS, ports), or none when the service has none.
    Own,
    /// Only loopback: nothing to attach.
    Loopback,
    /// Another's namespace or the host's: nothing to attach, and `/etc/resolv.conf` and
    /// `/etc/hosts` are copies of these files (the host's, or the other container's).
    Shared { resolv_conf: String, hosts: String },
}

/// A running container this one may join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub pid: i32,
    pub pid_start: u64,
    pub bundle: PathBuf,
}

impl Target {
    fn from_state(s: &ContainerState) -> Option<Target> {
        if s.status != Status::Running {
            return None;
        }
        let pid = s.pid?;
        // The shim's record names the process with its start time: only if the pid
        // still has it is it that process (pids are recycled).
        (crate::runtime::start_time(pid) == Some(s.pid_start)).then(|| Target {
            id: s.id.clone(),
            pid,
            pid_start: s.pid_start,
            bundle: s.bundle.clone(),
        })
    }
}

/// Finds the container a `service:NAME` or `container:NAME` means, on this node.
pub trait Targets {
    /// The running container of `service` of `stack`: slot 1, else the lowest running.
    fn service(&self, stack: &str, service: &str) -> Option<Target>;
    /// The running container named `name` (its `container_name`, else
    /// `<stack>-<service>-<slot>`).
    fn container(&self, name: &str) -> Option<Target>;
}

/// [`Targets`] over the shims' state under `shim_root`.
#[derive(Debug)]
pub struct ShimTargets<'a> {
    pub shim_root: &'a Path,
}

impl ShimTargets<'_> {
    fn running(&self) -> Vec<Target> {
        shim::list(self.shim_root)
            .unwrap_or_default()
            .iter()
            .filter_map(Target::from_state)
            .collect()
    }
}

impl Targets for ShimTargets<'_> {
    fn service(&self, stack: &str, service: &str) -> Option<Target> {
        self.running()
            .into_iter()
            .filter_map(|t| Some((slot_of(&t.id, stack, service)?, t)))
            .min_by_key(|(slot, _)| *slot)
            .map(|(_, t)| t)
    }

    fn container(&self, name: &str) -> Option<Target> {
        self.running()
            .into_iter()
            .find(|t| is_named(&t.bundle, &t.id, name))
    }
}

/// The slot of the task container `id` if it is one of `service` of `stack`: task ids
/// are `<stack>-<service>-<slot>.<generation>` (`Task::make_id`); anything else (a
/// `pre_start` step's container, another service's) is None.
pub fn slot_of(id: &str, stack: &str, service: &str) -> Option<u32> {
    let rest = id.strip_prefix(stack)?.strip_prefix('-')?;
    let rest = rest.strip_prefix(service)?.strip_prefix('-')?;
    let (slot, generation) = rest.split_once('.')?;
    generation.parse::<u32>().ok()?;
    slot.parse().ok()
}

/// Whether the container `id` with bundle `bundle` is named `name`: its
/// `NAME_ANNOTATION`, or for a container made before the annotation, its id less the
/// `.<generation>`.
pub fn is_named(bundle: &Path, id: &str, name: &str) -> bool {
    let annotated = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Spec>(&b).ok())
        .and_then(|s| s.annotations().clone())
        .and_then(|a| a.get(NAME_ANNOTATION).cloned());
    match annotated {
        Some(n) => n == name,
        None => id
            .rsplit_once('.')
            .is_some_and(|(n, g)| n == name && g.parse::<u32>().is_ok()),
    }
}

/// The OCI namespace kind and its `/proc/<pid>/ns/` name for an attribute.
fn kind(attribute: &str) -> Option<(LinuxNamespaceType, &'static str)> {
    use LinuxNamespaceType as T;
    Some(match attribute {
        "network_mode" => (T::Network, "net"),
        "pid" => (T::Pid, "pid"),
        "ipc" => (T::Ipc, "ipc"),
        "uts" => (T::Uts, "uts"),
        "cgroup" => (T::Cgroup, "cgroup"),
        "userns_mode" => (T::User, "user"),
        _ => return None,
    })
}

/// The service's namespace attributes, parsed, in a fixed order.
fn modes(
    name: &str,
    service: &Service,
) -> Result<Vec<(&'static str, NamespaceMode)>, NamespaceError> {
    let attributes = [
        ("network_mode", &service.network_mode),
        ("pid", &service.pid),
        ("ipc", &service.ipc),
        ("uts", &service.uts),
        ("cgroup", &service.cgroup),
        ("userns_mode", &service.userns_mode),
    ];
    let mut out = Vec::new();
    for (attribute, value) in attributes {
        let Some(value) = value else { continue };
        let mode = spec::namespaces::parse(attribute, value).map_err(|message| {
            NamespaceError::Invalid {
                service: name.to_string(),
                attribute,
                message,
            }
        })?;
        out.push((attribute, mode));
    }
    Ok(out)
}

/// Whether the service is networked by berth (networks, DNS, ports): `network_mode`
/// unset. For `ExecutorContext::network_files` before the bundle exists.
pub fn own_network(service: &Service) -> bool {
    service.network_mode.is_none()
}

/// Makes `spec`'s namespaces what the service of `stack` named `name` asks, joining
/// the containers `targets` finds, and says how the container is networked.
/// `host_hostname` is the host's name, which a container in the host's network gets
/// (as Docker's) unless the service names one.
pub fn apply(
    spec: &mut Spec,
    stack: &str,
    name: &str,
    service: &Service,
    targets: &dyn Targets,
    host_hostname: &str,
) -> Result<Networking, NamespaceError> {
    let mut networking = Networking::Own;
    let mut host_uts = false;
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    let mut namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for (attribute, mode) in modes(name, service)? {
        let Some((typ, proc_name)) = kind(attribute) else {
            continue;
        };
        match &mode {
            NamespaceMode::Private => {}
            NamespaceMode::Host => {
                namespaces.retain(|n| n.typ() != typ);
                host_uts |= typ == LinuxNamespaceType::Uts;
                if typ == LinuxNamespaceType::Network {
                    networking = Networking::Shared {
                        resolv_conf: host_file(name, "/etc/resolv.conf")?,
                        hosts: host_file(name, "/etc/hosts")?,
                    };
                }
            }
            // A namespace of its own, which the executor connects to nothing.
            NamespaceMode::None => networking = Networking::Loopback,
            NamespaceMode::Service(other) | NamespaceMode::Container(other) => {
                let is_service = matches!(mode, NamespaceMode::Service(_));
                let (what, target) = if is_service {
                    if other == name {
                        return Err(NamespaceError::Itself {
                            service: name.to_string(),
                            attribute,
                            mode: format!("service:{other}"),
                        });
                    }
                    (format!("service {other:?}"), targets.service(stack, other))
                } else {
                    (format!("container {other:?}"), targets.container(other))
                };
                let target = target.ok_or_else(|| NamespaceError::NotRunning {
                    service: name.to_string(),
                    attribute,
                    target: what,
                })?;
                let path = PathBuf::from(format!("/proc/{}/ns/{proc_name}", target.pid));
                match namespaces.iter_mut().find(|n| n.typ() == typ) {
                    Some(n) => {
                        n.set_path(Some(path));
                    }
                    None => {
                        let mut n = oci_spec::runtime::LinuxNamespace::default();
                        n.set_typ(typ);
                        n.set_path(Some(path));
                        namespaces.push(n);
                    }
                }
                // The runtime checks again, once it holds the namespace open.
                annotations.insert(
                    format!("{}{proc_name}", crate::runtime::JOIN_OWNER_ANNOTATION),
                    format!("{}:{}", target.pid, target.pid_start),
                );
                if typ == LinuxNamespaceType::Network {
                    // Docker's rule: the other container's resolver and hosts.
                    let read = |f: &str| {
                        std::fs::read_to_string(target.bundle.join(f)).unwrap_or_default()
                    };
                    networking = Networking::Shared {
                        resolv_conf: read("resolv.conf"),
                        hosts: read("hosts"),
                    };
                }
            }
        }
    }
    if networking != Networking::Own && !service.networks.is_empty() {
        return Err(NamespaceError::NetworksWithMode {
            service: name.to_string(),
            mode: service.network_mode.clone().unwrap_or_default(),
        });
    }
    if host_uts {
        // The runtime would set these in the host's UTS namespace: the host's name.
        for (attribute, set) in [
            ("hostname", service.hostname.is_some()),
            ("domainname", service.domainname.is_some()),
        ] {
            if set {
                return Err(NamespaceError::NameWithHostUts {
                    service: name.to_string(),
                    attribute,
                });
            }
        }
        set_hostname(spec, None, host_hostname);
    } else if service.network_mode.as_deref() == Some("host") && service.hostname.is_none() {
        set_hostname(spec, Some(host_hostname.to_string()), host_hostname);
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_namespaces(Some(namespaces));
    }
    spec.set_annotations(Some(annotations));
    Ok(networking)
}

/// Sets the spec's hostname (none: left as the namespace has it) and the `HOSTNAME`
/// the bundle gave the process, if it was the old hostname (not the service's own).
fn set_hostname(spec: &mut Spec, hostname: Option<String>, shown: &str) {
    let old = spec.hostname().clone().unwrap_or_default();
    if hostname.is_none() {
        spec.set_domainname(None);
    }
    spec.set_hostname(hostname);
    if let Some(process) = spec.process_mut() {
        if let Some(env) = process.env().clone() {
            let env = env
                .into_iter()
                .map(|e| {
                    if e == format!("HOSTNAME={old}") {
                        format!("HOSTNAME={shown}")
                    } else {
                        e
                    }
                })
                .collect();
            process.set_env(Some(env));
        }
    }
}

fn host_file(service: &str, path: &str) -> Result<String, NamespaceError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        // A host without the file: the container gets an empty one, as Docker's.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(NamespaceError::HostFile {
            service: service.to_string(),
            path: path.into(),
            source,
        }),
    }
}

/// The host's name, for containers in its network namespace.
pub fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The annotations as a map, for tests.
#[cfg(test)]
fn annotations(spec: &Spec) -> std::collections::BTreeMap<String, String> {
    spec.annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn slots_are_read_from_task_ids_of_the_service_only() {
        assert_eq!(slot_of("app-web-3.2", "app", "web"), Some(3));
        assert_eq!(slot_of("app-web-3.2.pre-start-0", "app", "web"), None);
        assert_eq!(slot_of("app-webx-3.2", "app", "web"), None);
        assert_eq!(slot_of("app-web-3", "app", "web"), None);
        assert_eq!(slot_of("other-web-3.2", "app", "web"), None);
    }

    use super::*;

    struct Fake(Option<Target>);

    impl Targets for Fake {
        fn service(&self, _: &str, service: &str) -> Option<Target> {
            self.0.clone().filter(|_| service == "db")
        }
        fn container(&self, name: &str) -> Option<Target> {
            self.0.clone().filter(|_| name == "db-box")
        }
    }

    fn db() -> Fake {
        Fake(Some(Target {
            id: "s-db-1.0".into(),
            pid: 4242,
            pid_start: 77,
            bundle: "/nonexistent".into(),
        }))
    }

    fn base() -> Spec {
        let mut spec = crate::runtime::default_spec(Path::new("/r"), &["sh".into()]).unwrap();
        spec.set_hostname(Some("s-web-1".into()));
        if let Some(p) = spec.process_mut() {
            p.set_env(Some(vec!["HOSTNAME=s-web-1".into()]));
        }
        spec
    }

    fn kinds(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        let linux = spec.linux().clone().unwrap_or_default();
        linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    fn service(f: impl FnOnce(&mut Service)) -> Service {
        let mut s = Service::default();
        f(&mut s);
        s
    }

    #[test]
    fn host_modes_leave_namespaces_out() {
        use LinuxNamespaceType as T;
        let mut spec = base();
        let s = service(|s| {
            s.pid = Some("host".into());
            s.uts = Some("host".into());
            s.cgroup = Some("host".into());
            s.ipc = Some("shareable".into());
            s.userns_mode = Some("host".into());
        });
        let net = apply(&mut spec, "s", "web", &s, &db(), "myhost").unwrap();
        assert_eq!(net, Networking::Own);
        let k: Vec<_> = kinds(&spec).into_iter().map(|(t, _)| t).collect();
        assert_eq!(k, vec![T::Network, T::Ipc, T::Mount]);
        // No hostname to set in the host's UTS namespace.
        assert_eq!(spec.hostname(), &None);
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env, vec!["HOSTNAME=myhost".to_string()]);
    }

    #[test]
    fn joins_name_the_targets_init_and_its_start_time() {
        use LinuxNamespaceType as T;
        let mut spec = base();
        let s = service(|s| {
            s.network_mode = Some("service:db".into());
            s.ipc = Some("container:db-box".into());
            s.pid = Some("service:db".into());
        });
        let net = apply(&mut spec, "s", "web", &s, &db(), "h").unwrap();
        assert!(matches!(net, Networking::Shared { .. }), "{net:?}");
        let k = kinds(&spec);
        for (typ, name) in [(T::Network, "net"), (T::Ipc, "ipc"), (T::Pid, "pid")] {
            let want = PathBuf::from(format!("/proc/4242/ns/{name}"));
            assert!(k.contains(&(typ, Some(want))), "{typ:?}: {k:?}");
            assert_eq!(
                annotations(&spec)
                    .get(&format!("{}{name}", crate::runtime::JOIN_OWNER_ANNOTATION))
                    .map(String::as_str),
                Some("4242:77")
            );
        }
        // Its own UTS namespace and hostname stay.
        assert_eq!(spec.hostname().as_deref(), Some("s-web-1"));
    }

    #[test]
    fn mistakes_name_the_service_and_attribute() {
        let cases: Vec<(Service, Fake, &str)> = vec![
            (
                service(|s| s.network_mode = Some("service:db".into())),
                Fake(None),
                "services.web.network_mode: service \"db\" is not running",
            ),
            (
                service(|s| s.ipc = Some("service:web".into())),
                db(),
                "services.web.ipc: berth cannot join its own namespace",
            ),
            (
                service(|s| {
                    s.uts = Some("host".into());
                    s.hostname = Some("x".into());
                }),
                db(),
                "services.web.hostname: with uts: host",
            ),
            (
                service(|s| {
                    s.network_mode = Some("none".into());
                    s.networks.insert("default".into(), Default::default());
                }),
                db(),
                "services.web.networks: a service with network_mode: none",
            ),
            (
                service(|s| s.pid = Some("none".into())),
                db(),
                "services.web.pid: \"none\" is not a pid",
            ),
        ];
        for (s, targets, want) in cases {
            let e = apply(&mut base(), "s", "web", &s, &targets, "h").unwrap_err();
            assert!(e.to_string().starts_with(want), "{e}");
        }
    }

    #[test]
    fn network_mode_host_and_none() {
        let mut spec = base();
        let s = service(|s| s.network_mode = Some("host".into()));
        let net = apply(&mut spec, "s", "web", &s, &db(), "myhost").unwrap();
        assert!(matches!(net, Networking::Shared { .. }), "{net:?}");
        assert!(!kinds(&spec)
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::Network));
        // Docker's: the host's name in a UTS namespace of its own.
        assert_eq!(spec.hostname().as_deref(), Some("myhost"));

        let mut spec = base();
        let s = service(|s| s.network_mode = Some("none".into()));
        let net = apply(&mut spec, "s", "web", &s, &db(), "h").unwrap();
        assert_eq!(net, Networking::Loopback);
        assert!(kinds(&spec).contains(&(LinuxNamespaceType::Network, None)));
    }
}

//! The agent's executor: makes one task's container match the task's desired state and
//! reports what it observed. Blocking functions over the disk and the kernel; the
//! worker's loops (`crate::worker`, through its `Containers` seam) run them on
//! blocking threads, one action at a time per task.
//!
//! A task's container has the task's id. On disk (under the agent's state directory):
//! `containers/<id>/` is its bundle (`agent::container`), `run/containers/<id>/` its
//! shim's state and logs (`agent::shim`). Both survive the daemon, so a restarted
//! daemon observes every container again from the disk alone (DESIGN invariant 6).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use spec::model::{Service, Stack};
use spec::task::{now_ms, Task, TaskState, TaskStatus};

use crate::container::{self, ContainerContext, ContainerError};
use crate::hooks::HookError;
use crate::image::reference::ReferenceError;
use crate::image::source::{self, FindError};
use crate::image::{ImageError, ImageSource, ImageStore, Reference};
use crate::namespace_modes::{self, NamespaceError, Networking};
use crate::runtime::cgroups::CgroupError;
use crate::runtime::RuntimeError;
use crate::shim::{self, CreateOptions, ShimError, Status};

mod lifecycle;
mod pre_start;
pub use pre_start::pre_start_owner;

/// Docker's default grace period before SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Why the executor could not do something to a container. A start that fails becomes
/// the task's status (`ExecutorError::state` says which, the message says why), so a
/// mistake in the stack names the service and the field, as the loader's diagnostics do.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The task's id is no plain name, so it names no container.
    #[error(transparent)]
    Id(#[from] RuntimeError),
    #[error(
        "services.{service}: no image: berth cannot build images yet (build: is ignored); \
         give an image"
    )]
    NoImage { service: String },
    #[error("services.{service}.image: {source}")]
    ImageReference {
        service: String,
        #[source]
        source: ReferenceError,
    },
    #[error("services.{service}.image: {source}")]
    ServiceImage {
        service: String,
        #[source]
        source: ImageError,
    },
    /// The node lacks the image, or `pull_policy: always` wants it again, and the
    /// executor's [`ImageSource`] could not bring it.
    #[error("services.{service}.image: {source}")]
    FetchImage {
        service: String,
        #[source]
        source: FindError,
    },
    /// The image store could not be opened, or a container's claim on its image
    /// could not be dropped.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The container's claim on its image's layers could not be written.
    #[error(transparent)]
    Pin(ImageError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("services.{service}.ports: publishing ports needs a network (network_mode: none?)")]
    PortsWithoutNetwork { service: String },
    #[error(
        "services.{service}.ports: cannot publish ports with network_mode: {mode} (the \
         ports are the other container's); remove ports or network_mode"
    )]
    PortsInJoinedNetwork { service: String, mode: String },
    #[error(transparent)]
    VolumesFrom(#[from] crate::volumes_from::VolumesFromError),
    /// `network_mode`, `pid`, `ipc`, `uts`, `cgroup`, `userns_mode`.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("services.{service}.networks.{network}: external networks are not supported yet")]
    ExternalNetwork { service: String, network: String },
    #[error("networks.{network}: {source}")]
    Network {
        network: String,
        #[source]
        source: overlay_net::NetError,
    },
    #[error("services.{service}.networks: {source}")]
    Attach {
        service: String,
        #[source]
        source: overlay_net::NetError,
    },
    #[error("services.{service}.ports: {source}")]
    Publish {
        service: String,
        #[source]
        source: overlay_net::NetError,
    },
    /// The container's `/etc/resolv.conf` or `/etc/hosts`.
    #[error("write {}: {source}", path.display())]
    NetworkFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bundle's `config.json`, which the shim loads.
    #[error("write {}: {source}", path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error("container {id} is not running ({state})")]
    NotRunning { id: String, state: String },
    #[error("container {id}: its shim recorded no cgroup")]
    NoCgroup { id: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A `post_start` hook failed (the container ran, and was stopped), or a
    /// `pre_start` step exited with an error (the container was not made).
    #[error(transparent)]
    Hook(HookError),
    /// A `pre_start` step's container could not be made or started.
    #[error("services.{service}.pre_start[{index}]: {source}")]
    PreStart {
        service: String,
        index: usize,
        #[source]
        source: Box<ExecutorError>,
    },
}

impl ExecutorError {
    /// The state of a task whose start failed with this error: `Rejected` when the
    /// task cannot run as it is (its stack, its image, its networks), `Failed` when
    /// running it failed.
    pub fn state(&self) -> TaskState {
        match self {
            ExecutorError::Pin(_)
            | ExecutorError::Bundle { .. }
            | ExecutorError::Shim(_)
            | ExecutorError::Hook(_) => TaskState::Failed,
            ExecutorError::PreStart { source, .. } => source.state(),
            // The container to join may run later (or again): retried.
            ExecutorError::Namespace(NamespaceError::NotRunning { .. }) => TaskState::Failed,
            ExecutorError::VolumesFrom(crate::volumes_from::VolumesFromError::NotFound {
                ..
            }) => TaskState::Failed,
            // Failed is retried (with the service's restart policy); Rejected is not.
            ExecutorError::FetchImage { source, .. } if source.may_succeed_later() => {
                TaskState::Failed
            }
            _ => TaskState::Rejected,
        }
    }
}

/// What the executor needs, shared by all tasks.
#[derive(Debug, Clone)]
pub struct Executor {
    pub state_dir: PathBuf,
    /// The node's container networking; `None` runs containers with a network
    /// namespace of their own and only loopback (tests of the runtime alone).
    pub net: Option<std::sync::Arc<overlay_net::NetworkManager>>,
    pub shim: shim::ShimProgram,
    /// The cgroup every container's cgroup is made under (`berth` by default, like
    /// Docker's `docker`); each container gets `<parent>/<id>`.
    pub cgroup_parent: String,
    /// Where an image this node lacks comes from, as the service's `pull_policy` allows
    /// (`agent::image::source::find`); `None` (a single host): a missing image fails
    /// the task.
    pub images: Option<Arc<dyn ImageSource>>,
    /// This node on a cluster, as `hostname (id)`: a start that fails there says on
    /// which node (a missing bind source is the node's own, as in Swarm); `None` on a
    /// single host.
    pub node: Option<String>,
}

impl Executor {
    /// Where the shims keep container state: `<state>/run`.
    pub fn shim_root(&self) -> PathBuf {
        self.state_dir.join("run")
    }

    /// The ids of every container on this node (those with shim state).
    pub fn containers(&self) -> Vec<String> {
        shim::list(&self.shim_root())
            .map(|l| l.into_iter().map(|s| s.id).collect())
            .unwrap_or_default()
    }

    /// What the container of `task` is doing now, as a status; `None` when it has no
    /// container (never started, or already removed).
    pub fn observe(&self, task: &Task) -> Option<TaskStatus> {
        let s = match shim::state(&self.shim_root(), &task.id) {
            Ok(s) => s,
            Err(ShimError::NotFound { .. }) => return None,
            Err(e) => {
                return Some(TaskStatus {
                    state: Some(TaskState::Failed),
                    message: e.to_string(),
                    ..task.status.clone()
                })
            }
        };
        let mut status = task.status.clone();
        match s.status {
            Status::Created => status.state = Some(TaskState::Starting),
            Status::Running => {
                status.state = Some(TaskState::Running);
                status.pid = s.pid;
                status.message.clear();
            }
            Status::Stopped | Status::Unknown => {
                let exit = s.exit;
                status.exit_code = exit.map(|e| e.status());
                status.oom_killed = exit.is_some_and(|e| e.oom_killed);
                status.pid = None;
                status.finished_at.get_or_insert_with(now_ms);
                let code = exit.map(|e| e.status());
                status.state = Some(match (task.desired, code) {
                    (spec::task::DesiredState::Running, Some(0)) => TaskState::Complete,
                    (spec::task::DesiredState::Running, _) => TaskState::Failed,
                    _ => TaskState::Shutdown,
                });
                status.message = match (exit, &s.error) {
                    (_, Some(e)) => e.clone(),
                    (Some(e), None) if e.oom_killed => {
                        format!("exited with code {}: killed by the OOM killer", e.status())
                    }
                    (Some(e), None) => format!("exited with code {}", e.status()),
                    (None, None) => "its shim died; the container's end is unknown".into(),
                };
            }
        }
        Some(status)
    }

    /// Creates and starts the container of `task` from `service` of `stack`.
    pub fn start(
        &self,
        task: &Task,
        stack: &Stack,
        service: &Service,
        env: &BTreeMap<String, String>,
        data: &BTreeMap<String, String>,
    ) -> TaskStatus {
        let mut status = TaskStatus {
            started_at: Some(now_ms()),
            ..task.status.clone()
        };
        // The service's replicas on this node take turns from their `pre_start` steps
        // to their container's start: the next one sees that one runs, and skips them.
        let turn = pre_start::turn(task, service);
        let guard = turn
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(PoisonError::into_inner));
        let started = self
            .pre_start(task, stack, service, env, data)
            .and_then(|()| self.try_start(task, stack, service, env, data, true));
        drop(guard);
        match started.and_then(|s| self.post_start(task, service).map(|()| s)) {
            Ok(s) => {
                status.state = Some(TaskState::Running);
                status.pid = s.pid;
                status.message.clear();
                // Known from the first report on, so that nothing waiting for this
                // service to be healthy mistakes "not checked yet" for "no check".
                if self.healthcheck(service).is_some() {
                    status.health = spec::task::Health::Starting;
                }
                if s.status == Status::Stopped {
                    // It ran and exited before create returned: observe says how.
                    let mut observed = self.observe(task).unwrap_or(status.clone());
                    observed.started_at = status.started_at;
                    return observed;
                }
            }
            Err(e) => {
                // Nothing of the container is left: neither is its claim on the image.
                // (A failed hook leaves a stopped container, removed with its task.)
                if !matches!(e, ExecutorError::Hook(_)) {
                    let _ = self.unpin(&task.id);
                }
                status.state = Some(e.state());
                status.message = match &self.node {
                    Some(node) => format!("on node {node}: {e}"),
                    None => e.to_string(),
                };
                // It never ran: no start time, so that `ps`, `events` and `up` tell
                // it from a container that ran and exited (`TaskStatus::never_started`).
                // A failed `post_start` counts as a start that failed too: `up` says
                // so, naming the hook.
                status.started_at = None;
                status.finished_at = Some(now_ms());
            }
        }
        status
    }

    /// Makes and starts the container. `serve`: once it runs (and has no
    /// healthcheck), its service's DNS answers and port backends include it; a
    /// `pre_start` step's container never serves.
    fn try_start(
        &self,
        task: &Task,
        stack: &Stack,
        service: &Service,
        env: &BTreeMap<String, String>,
        data: &BTreeMap<String, String>,
        serve: bool,
    ) -> Result<shim::ContainerState, ExecutorError> {
        // The id names directories that are removed and written below (the bundle,
        // the image pin) before the shim checks it: a plain name or nothing.
        crate::runtime::check_id(&task.id)?;
        let with_units;
        let service = if task.generic_resources.is_empty() {
            service
        } else {
            with_units = with_generic_units(service, task);
            &with_units
        };
        let image_name = service
            .image
            .as_deref()
            .ok_or_else(|| ExecutorError::NoImage {
                service: task.service.clone(),
            })?;
        let store = ImageStore::open(&self.state_dir)?;
        let reference =
            Reference::parse(image_name).map_err(|source| ExecutorError::ImageReference {
                service: task.service.clone(),
                source,
            })?;
        let image = source::find(
            &store,
            &reference,
            service.pull_policy.as_deref(),
            self.images.as_deref(),
        )
        .map_err(|e| match e {
            FindError::Store(source) => ExecutorError::ServiceImage {
                service: task.service.clone(),
                source,
            },
            source => ExecutorError::FetchImage {
                service: task.service.clone(),
                source,
            },
        })?;
        let ctx = ContainerContext {
            id: task.id.clone(),
            service: task.service.clone(),
            state_dir: self.state_dir.clone(),
            hostname: service
                .container_name
                .clone()
                .unwrap_or_else(|| task.name()),
            // `cgroup_parent` (checked by the loader: a path below the root, no `..`)
            // in place of berth's own parent.
            cgroups_path: Some(PathBuf::from(format!(
                "/{}/{}",
                service
                    .cgroup_parent
                    .as_deref()
                    .map_or(self.cgroup_parent.as_str(), |p| p.trim_matches('/')),
                task.id
            ))),
            volumes: stack.volumes.clone(),
            secrets: stack.secrets.clone(),
            configs: stack.configs.clone(),
            environment: env.clone(),
            data: data.clone(),
            // As `connect` decides: a network, or another's or the host's network
            // namespace, means hosts and resolv.conf bind mounts.
            network_files: (self.net.is_some() && !service.networks.is_empty())
                || service.network_mode.as_deref().is_some_and(|m| m != "none"),
        };
        // A container left by an earlier attempt of this very task (a crash between
        // prepare and create) is cleared first.
        let _ = container::remove(&self.state_dir, &task.id);
        // Its layers are the container's lower dirs now: keep them from collection.
        store.pin(&task.id, &image).map_err(ExecutorError::Pin)?;
        let prepared = container::prepare(&store, &image, service, &ctx)?;
        let mut spec = prepared.bundle.spec.clone();
        // What `container:NAME` of another service finds this container by.
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        annotations.insert(
            namespace_modes::NAME_ANNOTATION.to_string(),
            ctx.hostname.clone(),
        );
        // What a replica's `pre_start` steps look for: one of the same definition runs.
        annotations.insert(
            pre_start::SPEC_HASH_ANNOTATION.to_string(),
            task.spec_hash.clone(),
        );
        spec.set_annotations(Some(annotations));
        // Resolved now, just before the start: a joined container's init is read from
        // its shim's record at this moment (and checked again by the runtime).
        let shim_root = self.shim_root();
        let targets = namespace_modes::ShimTargets {
            shim_root: &shim_root,
        };
        let networking = namespace_modes::apply(
            &mut spec,
            &stack.name,
            &task.service,
            service,
            &targets,
            &namespace_modes::host_hostname(),
        )
        .map_err(ExecutorError::from)
        .and_then(|networking| {
            crate::volumes_from::apply(&mut spec, &stack.name, &task.service, service, &shim_root)?;
            Ok(networking)
        })
        .and_then(|networking| self.connect(task, stack, service, &ctx, &networking, &mut spec));
        if let Err(e) = networking {
            self.release(&task.id);
            let _ = container::remove(&self.state_dir, &task.id);
            return Err(e);
        }
        // The shim loads the bundle from disk: it may outlive this process.
        let config = ctx.dir().join("config.json");
        let written = serde_json::to_vec(&spec)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&config, bytes));
        if let Err(source) = written {
            self.release(&task.id);
            let _ = container::remove(&self.state_dir, &task.id);
            return Err(ExecutorError::Bundle {
                path: config,
                source,
            });
        }
        let mut opts = create_options(&self.shim, service);
        // A one-off (`berth run`, not a service of the file): its stdin ends with the
        // attached caller.
        opts.stdin_once = service.stdin_open && !stack.services.contains_key(&task.service);
        match shim::create(&self.shim_root(), &ctx.dir(), &task.id, &opts) {
            Ok(s) => {
                // Runs: without a healthcheck, it serves from now on; with one, the
                // health loop says when.
                if serve && s.status == Status::Running && self.healthcheck(service).is_none() {
                    self.set_healthy(&task.id, true);
                }
                Ok(s)
            }
            Err(e) => {
                drop(prepared);
                self.release(&task.id);
                let _ = container::remove(&self.state_dir, &task.id);
                Err(e.into())
            }
        }
    }

    /// Stops the container of `task` (its stop signal, the grace period, SIGKILL),
    /// keeping it. A running container first runs its service's `pre_stop` hooks,
    /// within the grace period: the signal gets what the hooks left of it.
    pub fn stop(
        &self,
        task: &Task,
        service: Option<&Service>,
        grace: Option<Duration>,
    ) -> TaskStatus {
        let (signal, grace) = stop_signal_and_grace(service, grace);
        let mut status = task.status.clone();
        // Leave DNS and the port backends before the signal (the worker's job did
        // already; this covers any other caller, and does nothing the second time).
        self.leave(&task.id);
        let began = std::time::Instant::now();
        if let Some(service) = service.filter(|s| !s.pre_stop.is_empty()) {
            let running = matches!(
                shim::state(&self.shim_root(), &task.id),
                Ok(s) if s.status == Status::Running
            );
            if running {
                self.pre_stop(task, service, grace);
            }
        }
        let grace = grace.saturating_sub(began.elapsed());
        match shim::stop(&self.shim_root(), &task.id, signal, grace) {
            Ok(_) | Err(ShimError::NotFound { .. }) => {}
            Err(e) => status.message = e.to_string(),
        }
        if let Some(observed) = self.observe(task) {
            status = observed;
        }
        // A stopped container holds no address, port or DNS name: its successor may.
        self.release(&task.id);
        status.state = Some(status.state().advance(TaskState::Shutdown));
        status
    }

    /// Stops and deletes the container of `task`: its shim state, logs, rootfs and
    /// bundle. Named volumes stay.
    pub fn remove(
        &self,
        task: &Task,
        service: Option<&Service>,
        grace: Option<Duration>,
    ) -> TaskStatus {
        // An id that is no plain name (stored by a berth that did not check the names
        // it was sent) never had a container: the runtime refuses such ids, and its
        // paths must not be touched.
        if crate::runtime::check_id(&task.id).is_err() {
            return TaskStatus {
                state: Some(TaskState::Removed),
                ..task.status.clone()
            };
        }
        let mut status = self.stop(task, service, grace);
        let deleted = match shim::delete(&self.shim_root(), &task.id) {
            Ok(()) | Err(ShimError::NotFound { .. }) => Ok(()),
            Err(e) => Err(ExecutorError::from(e)),
        }
        .and_then(|()| Ok(container::remove(&self.state_dir, &task.id)?))
        .and_then(|()| self.unpin(&task.id));
        match deleted {
            Ok(()) => status.state = Some(TaskState::Removed),
            Err(e) => status.message = format!("could not remove the container: {e}"),
        }
        status
    }

    /// Removes a container no task knows (left by a crash before its task was
    /// recorded): stop it at once, delete it.
    pub fn remove_stray(&self, id: &str) {
        self.release(id);
        let root = self.shim_root();
        let _ = shim::stop(&root, id, libc::SIGKILL, Duration::from_secs(5));
        let _ = shim::delete(&root, id);
        let _ = container::remove(&self.state_dir, id);
        let _ = self.unpin(id);
    }

    fn unpin(&self, id: &str) -> Result<(), ExecutorError> {
        // The pin is the file `images/pins/<id>`.
        crate::runtime::check_id(id)?;
        Ok(ImageStore::open(&self.state_dir).and_then(|s| s.unpin(id))?)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.shim_root().join("containers").join(id)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

/// Writes the container's `/etc/resolv.conf` and `/etc/hosts` into its directory `dir`
/// and bind-mounts them, unless the service mounts its own there.
fn bind_network_files(
    dir: &Path,
    spec: &mut oci_spec::runtime::Spec,
    resolv_conf: &str,
    hosts: &str,
) -> Result<(), ExecutorError> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (file, text) in [("resolv.conf", resolv_conf), ("hosts", hosts)] {
        let path = dir.join(file);
        if let Err(source) = std::fs::write(&path, text) {
            return Err(ExecutorError::NetworkFile { path, source });
        }
        // Not where the service mounts its own.
        let target = PathBuf::from("/etc").join(file);
        if mounts.iter().any(|m| m.destination() == &target) {
            continue;
        }
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination(target);
        m.set_typ(Some("bind".into()));
        m.set_source(Some(path));
        m.set_options(Some(vec!["rbind".into(), "rprivate".into()]));
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// The shim's options from the service's `logging` (json-file's max-size and max-file)
/// and `stdin_open`.
fn create_options(program: &shim::ShimProgram, service: &Service) -> CreateOptions {
    let mut opts = CreateOptions::new(program.clone());
    opts.stdin = service.stdin_open;
    if let Some(logging) = &service.logging {
        if let Some(size) = logging
            .options
            .get("max-size")
            .and_then(|s| spec::units::parse_bytes(s).ok())
        {
            opts.log_max_size = size;
        }
        if let Some(n) = logging.options.get("max-file").and_then(|s| s.parse().ok()) {
            opts.log_max_files = n;
        }
    }
    opts
}

/// The stop signal (the service's, else SIGTERM) and grace period (`grace` as asked,
/// else the service's, else Docker's 10 s) of a container.
fn stop_signal_and_grace(service: Option<&Service>, grace: Option<Duration>) -> (i32, Duration) {
    let signal = service
        .and_then(|s| s.stop_signal.as_deref())
        .and_then(|s| shim::parse_signal(s).ok())
        .unwrap_or(libc::SIGTERM);
    let grace = grace
        .or_else(|| service.and_then(|s| s.stop_grace_period))
        .unwrap_or(DEFAULT_STOP_GRACE);
    (signal, grace)
}

impl Executor {
    /// The healthcheck of a task: the service's, else its image's (Docker's rule), or
    /// `None` when there is none or it is disabled.
    pub fn healthcheck(&self, service: &Service) -> Option<spec::model::Healthcheck> {
        if let Some(check) = &service.healthcheck {
            return crate::health::probe_command(check).map(|_| check.clone());
        }
        let store = ImageStore::open(&self.state_dir).ok()?;
        let image = store
            .image(&Reference::parse(service.image.as_deref()?).ok()?)
            .ok()?;
        let hc = image.config.healthcheck?;
        // Docker stores durations in nanoseconds, 0 meaning "the default".
        let dur = |ns: Option<i64>| {
            ns.filter(|n| *n > 0)
                .map(|n| Duration::from_nanos(n as u64))
        };
        let check = spec::model::Healthcheck {
            test: hc.test,
            interval: dur(hc.interval),
            timeout: dur(hc.timeout),
            retries: hc.retries.and_then(|r| u32::try_from(r).ok()),
            start_period: dur(hc.start_period),
            start_interval: dur(hc.start_interval),
            disable: false,
        };
        crate::health::probe_command(&check).map(|_| check)
    }

    /// Runs one health probe in the container of `task`: `command` exits 0 within
    /// `timeout` (a probe that runs longer is killed and counts as a failure). It
    /// runs through the exec helper (`shim::exec`), never as a fork of this daemon.
    pub fn probe(&self, task: &str, command: &[String], timeout: Duration) -> bool {
        let req = shim::ExecRequest {
            args: command.to_vec(),
            timeout_ms: Some(timeout.as_millis().clamp(1, u64::MAX as u128) as u64),
            ..Default::default()
        };
        let Ok(session) = shim::exec(
            &self.shim,
            &self.shim_root(),
            task,
            &req,
            shim::ExecStdio::default(),
        ) else {
            return false;
        };
        matches!(session.wait(), Ok(report) if report.status() == 0)
    }
}

impl Executor {
    /// Connects the container of `task` to its service's networks before it starts:
    /// the networks exist (made if needed), a network namespace with one interface per
    /// network is made, the spec joins it and bind-mounts the `/etc/resolv.conf` and
    /// `/etc/hosts` written for it, and its ports are published. A container in the
    /// host's or another container's network namespace (`network_mode`) is attached to
    /// nothing and gets copies of their `/etc/resolv.conf` and `/etc/hosts`.
    fn connect(
        &self,
        task: &Task,
        stack: &Stack,
        service: &Service,
        ctx: &ContainerContext,
        networking: &Networking,
        spec: &mut oci_spec::runtime::Spec,
    ) -> Result<(), ExecutorError> {
        match networking {
            Networking::Own => {}
            Networking::Loopback if service.ports.is_empty() => return Ok(()),
            Networking::Loopback => {
                return Err(ExecutorError::PortsWithoutNetwork {
                    service: task.service.clone(),
                })
            }
            Networking::Shared { resolv_conf, hosts } => {
                let mode = service.network_mode.clone().unwrap_or_default();
                // In the host's namespace the ports are the host's own already (the
                // loader warned that they are ignored, as Docker does).
                if !service.ports.is_empty() && mode != "host" {
                    return Err(ExecutorError::PortsInJoinedNetwork {
                        service: task.service.clone(),
                        mode,
                    });
                }
                return bind_network_files(&ctx.dir(), spec, resolv_conf, hosts);
            }
        }
        let Some(net) = &self.net else { return Ok(()) };
        if service.networks.is_empty() {
            if service.ports.is_empty() {
                return Ok(());
            }
            return Err(ExecutorError::PortsWithoutNetwork {
                service: task.service.clone(),
            });
        }
        let mut networks = Vec::new();
        for (key, opts) in &service.networks {
            let def = stack
                .networks
                .get(key)
                .cloned()
                .unwrap_or_else(|| spec::model::Network {
                    name: format!("{}_{key}", stack.name),
                    ..Default::default()
                });
            if def.external {
                return Err(ExecutorError::ExternalNetwork {
                    service: task.service.clone(),
                    network: key.clone(),
                });
            }
            let req = overlay_net::NetworkRequest::from_spec(&stack.name, &def);
            net.ensure_network(&req)
                .map_err(|source| ExecutorError::Network {
                    network: key.clone(),
                    source,
                })?;
            networks.push((def.name.clone(), opts.clone()));
        }
        // The service's `mac_address` is its first interface's, unless that network
        // names one of its own.
        if let (Some(mac), Some((_, first))) = (&service.mac_address, networks.first_mut()) {
            if first.mac_address.is_none() {
                first.mac_address = Some(mac.clone());
            }
        }
        let req = overlay_net::AttachRequest {
            container_id: task.id.clone(),
            container_name: service
                .container_name
                .clone()
                .unwrap_or_else(|| task.name()),
            project: stack.name.clone(),
            service: task.service.clone(),
            hostname: Some(
                service
                    .hostname
                    .clone()
                    .unwrap_or_else(|| ctx.hostname.clone()),
            ),
            networks,
            dns: service.dns.clone(),
            dns_search: service.dns_search.clone(),
            dns_opt: service.dns_opt.clone(),
            extra_hosts: service.extra_hosts.clone(),
            links: links(service),
            // Not serving yet: a container joins its service's DNS answers and port
            // backends once it runs (`try_start`), or once healthy if it has a check.
            healthy: false,
        };
        let attachment = net.attach(&req).map_err(|source| ExecutorError::Attach {
            service: task.service.clone(),
            source,
        })?;
        bind_network_files(&ctx.dir(), spec, &attachment.resolv_conf, &attachment.hosts)?;
        if let Some(linux) = spec.linux_mut() {
            let mut namespaces = linux.namespaces().clone().unwrap_or_default();
            for ns in namespaces.iter_mut() {
                if ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network {
                    ns.set_path(Some(attachment.netns.clone()));
                }
            }
            linux.set_namespaces(Some(namespaces));
        }
        if !service.ports.is_empty() {
            net.publish(&task.id, &task.service, &service.ports)
                .map_err(|source| ExecutorError::Publish {
                    service: task.service.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Disconnects a container from its networks (a no-op when it is not connected).
    pub fn release(&self, id: &str) {
        if let Some(net) = &self.net {
            if let Err(e) = net.detach(id) {
                eprintln!("berth: container {id}: disconnecting it: {e}");
            }
        }
    }

    /// Marks a container healthy or not: its service name answers, and its host ports
    /// send new connections, only to healthy containers.
    pub fn set_healthy(&self, id: &str, healthy: bool) {
        if let Some(net) = &self.net {
            if let Err(e) = net.set_healthy(id, healthy) {
                eprintln!("berth: container {id}: marking it healthy={healthy}: {e}");
            }
        }
    }

    /// Takes a container out of its service's DNS answers and port backends before
    /// it stops (`NetworkManager::leave`).
    pub fn leave(&self, id: &str) {
        if let Some(net) = &self.net {
            if let Err(e) = net.leave(id) {
                eprintln!("berth: container {id}: taking it out of DNS and its ports: {e}");
            }
        }
    }
}

/// A process of a container, for `top`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// CPU time used, in clock ticks.
    pub ticks: u64,
    pub command: String,
}

impl Executor {
    /// The cgroup of a running container, as its shim recorded it.
    fn cgroup(&self, id: &str) -> Result<crate::runtime::cgroups::Cgroup, ExecutorError> {
        let s = shim::state(&self.shim_root(), id)?;
        if s.status != Status::Running {
            return Err(ExecutorError::NotRunning {
                id: id.to_string(),
                state: s.describe(),
            });
        }
        let rel = s
            .cgroup
            .ok_or_else(|| ExecutorError::NoCgroup { id: id.to_string() })?;
        let h = crate::runtime::cgroups::Hierarchy::detect()?;
        Ok(crate::runtime::cgroups::Cgroup::open(&h, &rel))
    }

    /// Memory in use and CPU time so far (cgroup accounting).
    pub fn stats(&self, id: &str) -> Result<crate::runtime::cgroups::Stats, ExecutorError> {
        Ok(self.cgroup(id)?.stats()?)
    }

    /// The container's processes, from its cgroup and /proc.
    pub fn top(&self, id: &str) -> Result<Vec<Process>, ExecutorError> {
        let pids = self.cgroup(id)?.procs()?;
        let mut out = Vec::new();
        for pid in pids {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The command name may hold spaces and parentheses: fields follow the last ')'.
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let num = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                })
                .unwrap_or(0);
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let mut command = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            if command.is_empty() {
                command = format!("[{}]", &stat[stat.find('(').map_or(0, |i| i + 1)..close]);
            }
            out.push(Process {
                pid,
                ppid: num(1) as i32,
                uid,
                ticks: num(11) + num(12),
                command,
            });
        }
        out.sort_by_key(|p| p.pid);
        Ok(out)
    }

    /// Freezes (`pause`) or thaws (`unpause`) every process of the container.
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<(), ExecutorError> {
        Ok(self.cgroup(id)?.freeze(frozen)?)
    }
}

/// `links: [SERVICE[:ALIAS]]` and `external_links: [CONTAINER[:ALIAS]]` as the names
/// this container resolves: the alias (the name itself when there is none) means the
/// service or container, as on Docker's user-defined networks (no environment
/// variables: those were the default bridge's).
fn links(service: &Service) -> Vec<(String, String)> {
    service
        .links
        .iter()
        .chain(&service.external_links)
        .map(|l| match l.split_once(':') {
            Some((target, alias)) => (alias.to_string(), target.to_string()),
            None => (l.clone(), l.clone()),
        })
        .filter(|(alias, target)| alias != target)
        .collect()
}

/// The service as its task runs it: with `DOCKER_RESOURCE_<KIND>=<unit>[,<unit>...]`
/// for the named generic resource units the scheduler gave the task (Swarm's variables,
/// over any of the same name the service sets).
fn with_generic_units(service: &Service, task: &Task) -> Service {
    let mut service = service.clone();
    for (kind, units) in &task.generic_resources {
        let (k, v) = ::spec::generic::env_var(kind, units);
        service.environment.insert(k, Some(v));
    }
    service
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_given_named_units_sees_them_in_docker_resource_variables() {
        let service = Service {
            environment: BTreeMap::from([(
                "DOCKER_RESOURCE_GPU".to_string(),
                Some("mine".to_string()),
            )]),
            ..Service::default()
        };
        let task: Task = serde_json::from_value(serde_json::json!({
            "id": "s-web-1.1", "stack": "s", "service": "web", "slot": 1, "generation": 1,
            "spec_hash": "h", "desired": "running", "created_at": 0,
            "generic_resources": {"GPU": ["g1", "g3"], "NVIDIA-GPU": ["GPU-1"]},
        }))
        .expect("a task");
        let env = with_generic_units(&service, &task).environment;
        assert_eq!(env["DOCKER_RESOURCE_GPU"].as_deref(), Some("g1,g3"));
        assert_eq!(env["DOCKER_RESOURCE_NVIDIA-GPU"].as_deref(), Some("GPU-1"));
    }
}

//! The worker's seams over the dispatcher (`manager::dispatcher`): the node's tasks come
//! from a manager, as complete views over a long poll on the cluster port, and its
//! reports go back in batches. The agent loops (`agent::worker`) run over it exactly as
//! they run over the store on a manager (`store_side`).
//!
//! - Any manager will do: the poll starts with the one that answered last, and moves
//!   to the next on an error or when it answers with a view older than this node's
//!   (it lags), so a worker follows the cluster through leader changes and manager
//!   failures (the list is the one the heartbeat loop keeps in
//!   `<state>/cluster/config.json`).
//! - A view older than the newest one seen (a lagging manager, a late answer) is
//!   ignored, so nothing rolls back.
//! - Until the first complete view arrives, the loops do not start ([`first_view`]):
//!   a worker that restarts never acts on an empty or stale view (it would remove
//!   containers it should keep).
//! - The view the loops act on lives in memory only: it holds the contents of the
//!   secrets and configs its tasks use, which never go to a worker's disk (they reach
//!   a container on a tmpfs).
//! - A copy of it without that material is kept on disk, in [`view_path`]
//!   (`<state>/worker/view.json`, mode 0600 in a 0700 directory), rewritten when a
//!   newer view is taken. Its one use is its version: after a restart it is the floor
//!   below which a manager's view is ignored, so a manager that lags (restarted,
//!   partitioned) cannot roll the node back to before what it last saw. Everything
//!   else in it is for a person reading it.
//!
//! What the disk copy is not:
//! - Not a view to act on. The loops still wait for a manager's complete view; the
//!   disk copy lacks the secrets and configs a start needs, and a stale copy taken for
//!   the truth would stop or remove containers the cluster moved on from or back to.
//! - Not a view to serve. A worker's `ps` is not served locally (it is asked of a
//!   manager). The one reader of this node's view that does not act on it is its own
//!   endpoints' check of which tasks are this node's (`nodes::WorkerScope`), and that
//!   check also admits kill and exec, which act; besides, it would only matter from
//!   the start to the first poll's answer, one round trip to the managers, who are the
//!   ones asking. So nothing reads the copy but a start, for its version.
//! - Not a floor that can wedge a node: store versions only grow within one cluster,
//!   and the copy names the cluster and the node it was made for. A node that left and
//!   joined another cluster (or the same one again, as a new node) ignores a copy of
//!   its former membership, with one line on stderr, and overwrites it with its first
//!   view. A copy that cannot be read or parsed is reported once and ignored.
//! - Without the digests of secret material. A view's digest, a task's `spec_hash`
//!   (and the `deps_seen` markers made of others'), and the record's `contents` are
//!   hashes over secret and config contents, and with the rest of the copy at hand
//!   each would confirm a guessed secret offline; so none is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::worker::{Assignments, Changes, StatusReporter, View};
use manager::cluster::files::ClusterConfig;
use manager::dispatcher::{Accepted, Assignment, StatusBatch};
use serde::{Deserialize, Serialize};
use spec::task::{Health, StackRecord, Task, TaskStatus};
use tokio::sync::watch;

use crate::client::Client;

/// How long one poll waits for a change before asking again.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// After a failed poll, how long before the next manager is asked.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// This worker's side of the dispatcher.
#[derive(Clone)]
pub struct DispatcherSide {
    inner: Arc<Inner>,
}

struct Inner {
    state_dir: PathBuf,
    /// This node's cluster and id, which the disk copy of its view is made for.
    cluster_id: String,
    node_id: String,
    tls: Arc<rustls::ClientConfig>,
    /// The managers' addresses, and the index of the one to ask first.
    managers: Mutex<(Vec<String>, usize)>,
    /// The newest view, with its version and digest.
    view: Mutex<Current>,
    changes: watch::Sender<u64>,
    /// Reports no manager took yet, sent before the next ones.
    unsent: Mutex<StatusBatch>,
    /// What the disk copy of the view holds. Also the lock its writes take, one at a
    /// time, so that an older copy never replaces a newer one.
    saved: Mutex<Saved>,
}

/// The disk copy of the view, as far as this process knows it.
#[derive(Default)]
struct Saved {
    /// The version on disk (loaded at start, or last written); 0: none.
    version: u64,
    /// The last write failed (reported once, until one succeeds).
    failing: bool,
}

#[derive(Default)]
struct Current {
    /// The floor: a manager's view older than this is ignored. The newest view's
    /// version, raised by the versions that hold this node's reports, and at start the
    /// disk copy's.
    version: u64,
    /// The newest manager's view's digest; `None` until a manager's view arrives (the
    /// disk copy has none, and never counts as one).
    digest: Option<String>,
    view: View,
}

impl DispatcherSide {
    /// The side of node `config.node_id`, asking `config.managers` first; its floor is
    /// the version of the disk copy of its view, if there is one of this cluster and
    /// node.
    pub fn new(
        state_dir: PathBuf,
        config: &ClusterConfig,
        tls: Arc<rustls::ClientConfig>,
    ) -> DispatcherSide {
        let managers = config.managers.iter().map(|m| m.2.clone()).collect();
        let floor = load_floor(&view_path(&state_dir), config).unwrap_or(0);
        DispatcherSide {
            inner: Arc::new(Inner {
                state_dir,
                cluster_id: config.cluster_id.clone(),
                node_id: config.node_id.clone(),
                tls,
                managers: Mutex::new((managers, 0)),
                view: Mutex::new(Current {
                    version: floor,
                    ..Current::default()
                }),
                changes: watch::channel(0).0,
                unsent: Mutex::default(),
                saved: Mutex::new(Saved {
                    version: floor,
                    failing: false,
                }),
            }),
        }
    }

    fn client(&self, addr: &str, timeout: Duration) -> Client {
        Client::tls(
            addr,
            self.inner.tls.clone(),
            pki::tls::manager_server_name(),
        )
        .with_timeout(timeout)
        // Status batches merge forward only (a repeat changes nothing), polls are GETs.
        .idempotent()
    }

    /// The manager to ask now, after refreshing the list from the configuration the
    /// heartbeat loop keeps current.
    fn manager(&self) -> Option<String> {
        let mut m = self
            .inner
            .managers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Ok(Some((config, _))) = manager::cluster::files::load(&self.inner.state_dir) {
            let fresh: Vec<String> = config.managers.iter().map(|m| m.2.clone()).collect();
            if !fresh.is_empty() && fresh != m.0 {
                m.0 = fresh;
            }
        }
        if m.0.is_empty() {
            return None;
        }
        let i = m.1 % m.0.len();
        Some(m.0[i].clone())
    }

    fn next_manager(&self) {
        let mut m = self
            .inner
            .managers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.1 = m.1.wrapping_add(1);
    }

    /// Takes `a` if it is not older than the view held (or, before the first, than the
    /// disk copy's), and keeps a copy on disk; returns whether it took it.
    fn take(&self, a: Assignment) -> bool {
        let mut cur = self.inner.view.lock().unwrap_or_else(|p| p.into_inner());
        if a.version < cur.version {
            return false;
        }
        cur.version = a.version;
        cur.digest = Some(a.digest);
        cur.view = View {
            tasks: a.tasks,
            stacks: a.stacks,
        };
        // What no manager took yet is still what this node saw.
        let unsent = self.inner.unsent.lock().unwrap_or_else(|p| p.into_inner());
        merge(&mut cur.view, &unsent);
        drop(unsent);
        let version = a.version;
        drop(cur);
        self.inner.changes.send_modify(|v| *v = version.max(*v + 1));
        // After the loops are woken: they act on the view in memory, and a copy
        // written late only lowers the floor of a restart in between.
        self.save();
        true
    }

    /// Writes the view held to disk without its secret material, unless the copy
    /// there is as new. A version says all of a view: a manager's view is a pure
    /// function of the store at that version and the node (`dispatcher::assignment_for`),
    /// so an equal version is the same view and is not written again. Reports merged
    /// since are not a reason to write: the floor is what the copy is for.
    fn save(&self) {
        let mut saved = self.inner.saved.lock().unwrap_or_else(|p| p.into_inner());
        let (version, bytes) = {
            let cur = self.inner.view.lock().unwrap_or_else(|p| p.into_inner());
            if cur.digest.is_none() || cur.version <= saved.version {
                return;
            }
            let (tasks, stacks) = stripped(&cur.view);
            let copy = DiskView {
                cluster_id: self.inner.cluster_id.clone(),
                node_id: self.inner.node_id.clone(),
                version: cur.version,
                tasks,
                stacks,
            };
            // Strings, numbers and maps with string keys: it always serializes.
            (cur.version, serde_json::to_vec(&copy).unwrap_or_default())
        };
        let path = view_path(&self.inner.state_dir);
        match write_private(&path, &bytes) {
            Ok(()) => {
                saved.version = version;
                saved.failing = false;
            }
            Err(e) => {
                if !saved.failing {
                    eprintln!(
                        "berth daemon: dispatcher: keep a copy of this node's view: {e:#} \
                         (a restart may then take a lagging manager's older view)"
                    );
                }
                saved.failing = true;
            }
        }
    }

    /// One poll: the manager's answer, a view or none (no change within the wait).
    fn poll_once(&self, addr: &str) -> anyhow::Result<Option<Assignment>> {
        let have = self
            .inner
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .digest
            .clone();
        let mut path = format!(
            "/v1/dispatcher/assignments?wait_ms={}",
            POLL_WAIT.as_millis()
        );
        if let Some(d) = have {
            path.push_str(&format!("&have={d}"));
        }
        let (status, text) = self
            .client(addr, POLL_WAIT + Duration::from_secs(10))
            .fetch("GET", &path, None)?;
        match status {
            204 => Ok(None),
            200 => Ok(Some(serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("the assignment from {addr} is not one: {e}")
            })?)),
            status => anyhow::bail!("assignments from {addr}: {status} {}", text.trim()),
        }
    }

    /// Polls the managers for this node's assignments until the process ends.
    pub async fn run(self) {
        let mut last_error: Option<String> = None;
        loop {
            let Some(addr) = self.manager() else {
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            };
            let me = self.clone();
            let to = addr.clone();
            // Its own thread: a poll must not wait behind this node's container jobs
            // (nor the runtime behind the write of the view's disk copy).
            let answer = manager::cluster::own_thread(move || {
                me.poll_once(&to)
                    .map(|a| a.map(|a| (a.version, me.take(a))))
            })
            .await;
            match answer {
                Some(Ok(Some((_, true)))) => last_error = None,
                Some(Ok(Some((version, false)))) => {
                    // A manager behind this node: it would answer again at once with the
                    // same old view (its digest differs), so ask another one.
                    let e = format!(
                        "the manager at {addr} is behind this node (its view is of version \
                         {version}, older than this node's)"
                    );
                    if last_error.as_ref() != Some(&e) {
                        eprintln!("berth daemon: dispatcher: {e}; asking the next manager");
                        last_error = Some(e);
                    }
                    self.next_manager();
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                Some(Ok(None)) => last_error = None,
                Some(Err(e)) => {
                    let e = format!("{e:#}");
                    if last_error.as_ref() != Some(&e) {
                        eprintln!("berth daemon: dispatcher: {e}; asking the next manager");
                        last_error = Some(e);
                    }
                    self.next_manager();
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                None => tokio::time::sleep(RETRY_AFTER).await,
            }
        }
    }

    /// Waits for the first complete view from a manager.
    pub async fn first_view(&self) {
        let mut changes = self.inner.changes.subscribe();
        while self
            .inner
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .digest
            .is_none()
        {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Reports `batch`: merged into the view held at once (the node knows its own
    /// tasks best, and a view not yet showing a start must not start it again), then
    /// sent with whatever earlier batches no manager took. A batch that fails is kept
    /// for the next send.
    fn report_batch(&self, batch: StatusBatch) -> anyhow::Result<()> {
        merge(
            &mut self
                .inner
                .view
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .view,
            &batch,
        );
        let all = {
            let mut unsent = self.inner.unsent.lock().unwrap_or_else(|p| p.into_inner());
            let mut all = std::mem::take(&mut *unsent);
            all.statuses.extend(batch.statuses);
            all.health.extend(batch.health);
            all
        };
        match blocking(|| self.send(&all)) {
            Ok(accepted) => {
                // Views older than the one holding these reports would undo them.
                let mut cur = self.inner.view.lock().unwrap_or_else(|p| p.into_inner());
                cur.version = cur.version.max(accepted.version);
                Ok(())
            }
            Err(e) => {
                let mut unsent = self.inner.unsent.lock().unwrap_or_else(|p| p.into_inner());
                let mut kept = all;
                kept.statuses.append(&mut unsent.statuses);
                kept.health.append(&mut unsent.health);
                *unsent = kept;
                Err(e)
            }
        }
    }

    /// Sends one batch to a manager, trying each once.
    fn send(&self, batch: &StatusBatch) -> anyhow::Result<Accepted> {
        let mut tried = Vec::new();
        let count = self
            .inner
            .managers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .len()
            .max(1);
        for _ in 0..count {
            let Some(addr) = self.manager() else { break };
            match self
                .client(&addr, manager::cluster::NODE_CALL_TIMEOUT)
                .call::<Accepted>("POST", "/v1/dispatcher/status", Some(batch))
            {
                Ok(accepted) => return Ok(accepted),
                Err(e) => {
                    tried.push(format!("{addr}: {e:#}"));
                    self.next_manager();
                }
            }
        }
        anyhow::bail!("no manager took the status: {}", tried.join("; "))
    }
}

impl Assignments for DispatcherSide {
    fn view(&self) -> View {
        self.inner
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .view
            .clone()
    }

    fn changes(&self) -> Changes {
        self.inner.changes.subscribe()
    }
}

impl StatusReporter for DispatcherSide {
    type Error = anyhow::Error;

    fn report(&self, statuses: &[(String, TaskStatus)]) -> anyhow::Result<()> {
        self.report_batch(StatusBatch {
            statuses: statuses.to_vec(),
            health: Vec::new(),
        })
    }

    fn report_health(&self, changes: &[(String, Health)]) -> anyhow::Result<()> {
        self.report_batch(StatusBatch {
            statuses: Vec::new(),
            health: changes.to_vec(),
        })
    }
}

/// Merges reports into a view, by the rule the managers merge them with.
fn merge(view: &mut View, batch: &StatusBatch) {
    for (id, status) in &batch.statuses {
        if let Some(t) = view.tasks.get_mut(id) {
            t.status = t.status.merge_report(status);
        }
    }
    for (id, health) in &batch.health {
        if let Some(t) = view.tasks.get_mut(id) {
            t.status.merge_health(*health, spec::task::now_ms());
        }
    }
}

/// Where a worker keeps the copy of its view: `<state>/worker/view.json`.
pub fn view_path(state_dir: &Path) -> PathBuf {
    state_dir.join("worker").join("view.json")
}

/// The disk copy of a view: whose it is, its version, and the view without its
/// secret material ([`stripped`]).
#[derive(Serialize)]
struct DiskView {
    cluster_id: String,
    node_id: String,
    version: u64,
    tasks: BTreeMap<String, Task>,
    stacks: BTreeMap<String, StackRecord>,
}

/// What a start reads of the disk copy. Not the tasks and stacks: they are not used,
/// and a copy an older berth wrote would otherwise fail to parse for a field that
/// changed, and lose its floor.
#[derive(Deserialize)]
struct DiskHeader {
    cluster_id: String,
    node_id: String,
    version: u64,
}

/// The version of the disk copy at `path`, if it is one of node `config.node_id` in
/// cluster `config.cluster_id`. Anything else is ignored, with one line on stderr
/// naming the file (no file at all is the first start of a worker, and says nothing):
/// the first manager's view replaces it.
fn load_floor(path: &Path, config: &ClusterConfig) -> Option<u64> {
    let ignored = |why: String| {
        eprintln!(
            "berth daemon: dispatcher: {}: {why}; ignored (the first view from a manager \
             replaces it)",
            path.display()
        );
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            ignored(format!("cannot be read: {e}"));
            return None;
        }
    };
    let header: DiskHeader = match serde_json::from_slice(&bytes) {
        Ok(h) => h,
        Err(e) => {
            ignored(format!("not a copy of this node's view: {e}"));
            return None;
        }
    };
    if header.cluster_id != config.cluster_id || header.node_id != config.node_id {
        // A former membership: its versions say nothing of this cluster's, and as a
        // floor it could hold every view of this one back.
        ignored(format!(
            "the view of node {} in cluster {}, and this is node {} in cluster {}",
            header.node_id, header.cluster_id, config.node_id, config.cluster_id
        ));
        return None;
    }
    Some(header.version)
}

/// The tasks and stacks of `view` without what carries secret or config material:
/// the contents (`data`), the values of the variables `environment:`-sourced ones
/// read (`secret_env`), inline contents (`content:` of a secret or config), and every
/// hash over any of them, which would confirm a guess of a secret (the record's
/// `contents` digests; a task's `spec_hash`, which covers them and inline contents;
/// `deps_seen`, made of other services' `spec_hash`). What is left names secrets and
/// configs, their files' paths on the deploying host and their variables' names,
/// never what they hold. Checked by the tests below with a secret in every place.
fn stripped(view: &View) -> (BTreeMap<String, Task>, BTreeMap<String, StackRecord>) {
    let mut tasks = view.tasks.clone();
    for t in tasks.values_mut() {
        t.spec_hash.clear();
        t.deps_seen.values_mut().for_each(String::clear);
    }
    let mut stacks = view.stacks.clone();
    for record in stacks.values_mut() {
        record.data.clear();
        record.contents.clear();
        record.secret_env.clear();
        let objects = record.stack.secrets.values_mut();
        for o in objects.chain(record.stack.configs.values_mut()) {
            o.content = None;
        }
    }
    (tasks, stacks)
}

/// Replaces `path` with `bytes`, mode 0600, in a directory only root may enter (the
/// state directory may be 0711 for a socket group). `Atomic`, not `Durable`: after a
/// power loss the containers the copy describes are gone too, and an older copy or
/// none only lowers the floor, to what a worker had before there was a copy.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    // An existing directory keeps its mode through `create`.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("set the mode of {}", dir.display()))?;
    atomic_file::write(path, bytes, 0o600, atomic_file::Durability::Atomic)
        .with_context(|| format!("write {}", path.display()))
}

/// Runs blocking I/O from wherever the agent loops call: on a multi-threaded runtime's
/// worker the runtime is told first, so its other tasks move to another thread.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::task::{Task, TaskState};

    /// A side in a fresh state directory (dropped with the directory).
    fn side() -> (tempfile::TempDir, DispatcherSide) {
        let state = tempfile::tempdir().expect("a state directory");
        let side = side_in(state.path(), "c1");
        (state, side)
    }

    /// The side of node n1 of cluster `cluster`, with state in `state`.
    fn side_in(state: &Path, cluster: &str) -> DispatcherSide {
        // No manager to ask: sends fail, which is what the unsent tests want.
        let tls = manager::port::http_client_config(&test_credentials(), &pki::DenyList::new())
            .expect("client settings");
        let config = ClusterConfig {
            cluster_id: cluster.into(),
            node_id: "n1".into(),
            role: pki::NodeRole::Worker,
            raft_id: 0,
            listen: "0.0.0.0:7377".parse().expect("an address"),
            advertise: "10.0.0.2:7377".parse().expect("an address"),
            managers: Vec::new(),
        };
        DispatcherSide::new(state.to_path_buf(), &config, tls)
    }

    fn test_credentials() -> pki::NodeCredentials {
        let now = std::time::SystemTime::now();
        let ca = pki::Ca::create(now).expect("a CA");
        let id = pki::Identity::new(pki::NodeId::generate(), pki::Role::Worker);
        ca.issue(&pki::CertRequest::new(id), now)
            .expect("a certificate")
    }

    fn assignment(version: u64, state: TaskState) -> Assignment {
        let task: Task = serde_json::from_value(serde_json::json!({
            "id": "app-web-1.1", "stack": "app", "service": "web", "slot": 1,
            "generation": 1, "spec_hash": "h", "desired": "running",
            "status": {"state": format!("{state:?}").to_lowercase()}, "created_at": 0,
        }))
        .expect("a task");
        Assignment {
            version,
            digest: format!("d{version}"),
            tasks: [(task.id.clone(), task)].into(),
            stacks: Default::default(),
        }
    }

    fn state_of(side: &DispatcherSide) -> TaskState {
        side.view().tasks["app-web-1.1"].status.state()
    }

    #[test]
    fn an_older_view_never_replaces_a_newer_one() {
        let (_state, side) = side();
        assert!(side.take(assignment(5, TaskState::Running)));
        assert!(
            !side.take(assignment(4, TaskState::New)),
            "a lagging manager's"
        );
        assert_eq!(state_of(&side), TaskState::Running);
        assert!(side.take(assignment(6, TaskState::Running)));
    }

    #[test]
    fn reports_show_in_the_view_at_once_and_survive_a_view_that_lacks_them() {
        let (_state, side) = side();
        side.take(assignment(5, TaskState::New));
        let started = TaskStatus {
            state: Some(TaskState::Running),
            pid: Some(42),
            ..TaskStatus::default()
        };
        // No manager takes it: kept, and the view says what the node did.
        let sent = side.report(&[("app-web-1.1".into(), started)]);
        assert!(sent.is_err());
        assert_eq!(state_of(&side), TaskState::Running, "not started twice");
        // A manager's view from before the report (same task, still new) arrives.
        side.take(assignment(6, TaskState::New));
        assert_eq!(state_of(&side), TaskState::Running);
        assert_eq!(side.view().tasks["app-web-1.1"].status.pid, Some(42));
    }

    const TOKEN: &str = "hunter2-the-api-token";
    /// TOKEN's base64, as `up` puts it in the record's `data`.
    const TOKEN_BASE64: &str = "aHVudGVyMi10aGUtYXBpLXRva2Vu";
    /// TOKEN's SHA-256, as `up` puts it in the record's `contents`.
    const TOKEN_SHA256: &str = "fc3aab9ece58c744a6d5e19516e4ad4677b3031ac8bf69b79b69b45a4b699431";
    const INLINE_CONFIG: &str = "inline-config-the-password-is-swordfish";
    const ENV_VALUE: &str = "from-the-environment-s3cret";
    const SPEC_HASH: &str = "5ec4e7a5b1c2";
    const MARKER: &str = "9d8e7f6a5b4c/0";
    const DIGEST: &str = "a-digest-over-the-secret-material";

    /// `assignment(version, state)` with a secret, a config with inline content and a
    /// config from a variable, used by its task, and every hash of them.
    fn with_secrets(mut a: Assignment) -> Assignment {
        use spec::model::{FileMount, FileObject, Service, Stack};
        let mount = |source: &str| FileMount {
            source: source.into(),
            target: format!("/run/{source}"),
            uid: None,
            gid: None,
            mode: None,
        };
        let web = Service {
            image: Some("busybox".into()),
            secrets: vec![mount("api_token")],
            configs: vec![mount("inline"), mount("from_env")],
            ..Service::default()
        };
        let mut stack = Stack::of_services("app", [("web".to_string(), web)]);
        let object = |name: &str| FileObject {
            name: name.into(),
            ..FileObject::default()
        };
        stack.secrets.insert(
            "api_token".into(),
            FileObject {
                file: Some("/srv/api_token.txt".into()),
                ..object("api_token")
            },
        );
        stack.configs.insert(
            "inline".into(),
            FileObject {
                content: Some(INLINE_CONFIG.into()),
                ..object("inline")
            },
        );
        stack.configs.insert(
            "from_env".into(),
            FileObject {
                environment: Some("CONF_VAR".into()),
                ..object("from_env")
            },
        );
        let mut record = StackRecord::new(stack);
        record
            .data
            .insert("secrets.api_token".into(), TOKEN_BASE64.into());
        record
            .contents
            .insert("secrets.api_token".into(), TOKEN_SHA256.into());
        record
            .secret_env
            .insert("CONF_VAR".into(), ENV_VALUE.into());
        a.stacks.insert("app".into(), record);
        let task = a.tasks.get_mut("app-web-1.1").expect("the task");
        task.spec_hash = SPEC_HASH.into();
        task.deps_seen.insert("db".into(), MARKER.into());
        a.digest = DIGEST.into();
        a
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_new_view_is_kept_on_disk_without_its_secrets_and_configs() {
        let (state, side) = side();
        let path = view_path(state.path());
        assert!(side.take(with_secrets(assignment(5, TaskState::Running))));
        // The loops get all of it.
        assert_eq!(side.view().stacks["app"].data.len(), 1);
        let text = std::fs::read_to_string(&path).expect("the view's copy");
        for material in [
            TOKEN,
            TOKEN_BASE64,
            TOKEN_SHA256,
            INLINE_CONFIG,
            ENV_VALUE,
            SPEC_HASH,
            MARKER,
            DIGEST,
        ] {
            assert!(!text.contains(material), "{material} is in {text}");
        }
        // What is left says what the node runs, and whose view it is.
        let copy: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(copy["version"], 5);
        assert_eq!(
            (copy["cluster_id"].as_str(), copy["node_id"].as_str()),
            (Some("c1"), Some("n1"))
        );
        assert_eq!(copy["tasks"]["app-web-1.1"]["status"]["state"], "running");
        let record = &copy["stacks"]["app"];
        assert_eq!(
            record["stack"]["secrets"]["api_token"]["file"],
            "/srv/api_token.txt"
        );
        assert_eq!(
            record["stack"]["configs"]["from_env"]["environment"],
            "CONF_VAR"
        );
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("its directory")), 0o700);

        // The same version again is the same view: not written again.
        std::fs::remove_file(&path).expect("remove the copy");
        assert!(side.take(with_secrets(assignment(5, TaskState::Running))));
        assert!(!path.exists(), "an unchanged view was rewritten");
        assert!(side.take(assignment(6, TaskState::Running)));
        assert!(path.exists(), "a newer view was not written");
    }

    #[tokio::test]
    async fn a_restarted_side_takes_its_floor_from_disk_and_still_waits_for_a_manager() {
        let state = tempfile::tempdir().expect("a state directory");
        let before = side_in(state.path(), "c1");
        assert!(before.take(with_secrets(assignment(5, TaskState::Running))));
        drop(before);

        let after = side_in(state.path(), "c1");
        // The disk copy is no view: nothing for the loops, no first view.
        assert!(after.view().tasks.is_empty());
        let waited = tokio::time::timeout(Duration::from_millis(100), after.first_view()).await;
        assert!(waited.is_err(), "the disk copy counted as a manager's view");
        // A lagging manager's view is older than the copy: ignored.
        assert!(!after.take(assignment(4, TaskState::New)));
        assert!(after.view().tasks.is_empty());
        let waited = tokio::time::timeout(Duration::from_millis(100), after.first_view()).await;
        assert!(waited.is_err(), "an ignored view counted as the first");
        // A manager that is up to date: the first view.
        assert!(after.take(assignment(5, TaskState::Running)));
        tokio::time::timeout(Duration::from_secs(5), after.first_view())
            .await
            .expect("the first view");
        assert_eq!(state_of(&after), TaskState::Running);
    }

    #[test]
    fn a_copy_of_another_cluster_or_a_corrupt_one_sets_no_floor() {
        let state = tempfile::tempdir().expect("a state directory");
        assert!(side_in(state.path(), "c1").take(assignment(50, TaskState::Running)));
        // The node left and joined another cluster, whose versions are lower.
        let joined = side_in(state.path(), "c2");
        assert!(joined.take(assignment(3, TaskState::Running)));
        let copy = std::fs::read_to_string(view_path(state.path())).expect("the copy");
        assert!(copy.contains(r#""cluster_id":"c2""#), "{copy}");

        for corrupt in ["{\"cluster_id\": \"c2\", \"node", "", "[]"] {
            std::fs::write(view_path(state.path()), corrupt).expect("write");
            let side = side_in(state.path(), "c2");
            assert!(side.take(assignment(1, TaskState::Running)), "{corrupt:?}");
        }
    }
}

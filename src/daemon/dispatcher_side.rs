//! The worker's seams over the dispatcher (`manager::dispatcher`): the node's tasks come
//! from a manager, as complete views over a long poll on the cluster port, and its
//! reports go back in batches. The agent loops (`agent::worker`) run over it exactly as
//! they run over the store on a manager (`store_side`).
//!
//! - Any manager will do: the poll starts with the one that answered last, and moves
//!   to the next on an error, so a worker follows the cluster through leader changes
//!   and manager failures (the list is the one the heartbeat loop keeps in
//!   `<state>/cluster/config.json`).
//! - A view older than the newest one seen (a lagging manager, a late answer) is
//!   ignored, so nothing rolls back.
//! - Until the first complete view arrives, the loops do not start ([`first_view`]):
//!   a worker that restarts never acts on an empty or stale view (it would remove
//!   containers it should keep).
//! - A view lives in memory only: it holds the contents of the secrets its tasks use,
//!   which never go to a worker's disk.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::worker::{Assignments, Changes, StatusReporter, View};
use manager::dispatcher::{Accepted, Assignment, StatusBatch};
use spec::task::{Health, TaskStatus};
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
    tls: Arc<rustls::ClientConfig>,
    /// The managers' addresses, and the index of the one to ask first.
    managers: Mutex<(Vec<String>, usize)>,
    /// The newest view, with its version and digest.
    view: Mutex<Current>,
    changes: watch::Sender<u64>,
    /// Reports no manager took yet, sent before the next ones.
    unsent: Mutex<StatusBatch>,
}

#[derive(Default)]
struct Current {
    version: u64,
    digest: Option<String>,
    view: View,
}

impl DispatcherSide {
    pub fn new(
        state_dir: PathBuf,
        managers: Vec<String>,
        tls: Arc<rustls::ClientConfig>,
    ) -> DispatcherSide {
        DispatcherSide {
            inner: Arc::new(Inner {
                state_dir,
                tls,
                managers: Mutex::new((managers, 0)),
                view: Mutex::default(),
                changes: watch::channel(0).0,
                unsent: Mutex::default(),
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

    /// Takes `a` if it is newer than the view held; returns whether it did.
    fn take(&self, a: Assignment) -> bool {
        let mut cur = self.inner.view.lock().unwrap_or_else(|p| p.into_inner());
        if cur.digest.is_some() && a.version < cur.version {
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
        true
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
            // Its own thread: a poll must not wait behind this node's container jobs.
            let answer = manager::cluster::own_thread(move || me.poll_once(&to)).await;
            match answer {
                Some(Ok(Some(a))) => {
                    last_error = None;
                    self.take(a);
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
            t.status.merge_health(*health);
        }
    }
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

    fn side() -> DispatcherSide {
        // No manager to ask: sends fail, which is what the unsent tests want.
        let tls = manager::port::http_client_config(&test_credentials(), &pki::DenyList::new())
            .expect("client settings");
        DispatcherSide::new(
            std::env::temp_dir().join("berth-no-such-state"),
            Vec::new(),
            tls,
        )
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
        let side = side();
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
        let side = side();
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
}

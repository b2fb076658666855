//! The simulated nodes: each joins the cluster as `berth cluster join` does (its own
//! key, a CSR, `POST /v1/cluster/join` with the token's pinning TLS settings) and then
//! runs in process what a worker's daemon runs against the dispatcher, over mutual TLS
//! with its own certificate:
//!
//! - a heartbeat every second (`membership::worker_loop`): `POST
//!   /v1/dispatcher/heartbeat` with a `NodeReport`;
//! - the long poll for its assignment (`dispatcher_side.rs`):
//!   `GET /v1/dispatcher/assignments?wait_ms=25000&have=DIGEST`, a view kept only if
//!   it is not older than the newest one seen;
//! - the agent's reports, as `POST /v1/dispatcher/status` batches: for the tasks of a
//!   new view that should run and are `new`, one batch of `preparing`, then one of
//!   `running` (the container "starts" at once: nothing is started); tasks the view
//!   says to shut down or remove are reported `shutdown` or `removed` at once.
//!
//! [`Connections::Persistent`] (the default) keeps one connection per node for its
//! heartbeats and one for its polls, as berth's worker keeps its connections to a
//! manager (`src/client/keepalive.rs`); [`Connections::PerRequest`] opens a TLS
//! connection per request (full handshake, no resumption, `Connection: close`), as
//! berth's worker did before. Status batches open a connection each in both modes (two
//! per node in this bench; berth's worker reuses a kept one), so the deploy's figures
//! count 2,000 handshakes berth does not make.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use manager::cluster::membership::NodeReport;
use manager::cluster::ops::{JoinAnswer, JoinRequest};
use manager::dispatcher::{Accepted, Assignment, StatusBatch};
use manager::state::model::{Capacity, Platform};
use spec::task::{DesiredState, TaskState, TaskStatus};
use tokio::sync::watch;

use crate::http::{self, Tls};

/// How long one poll waits for a change (as `dispatcher_side::POLL_WAIT`).
const POLL_WAIT_MS: u64 = 25_000;
/// How long a node waits for any answer (`cluster::NODE_CALL_TIMEOUT`; a poll gets its
/// wait on top).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed poll or batch, before the next try (`dispatcher_side::RETRY_AFTER`).
const RETRY_AFTER: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    PerRequest,
    Persistent,
}

/// Counters shared by every simulated node.
#[derive(Debug, Default)]
pub struct Stats {
    pub heartbeats: AtomicU64,
    pub heartbeat_errors: AtomicU64,
    pub views: AtomicU64,
    pub unchanged: AtomicU64,
    pub poll_errors: AtomicU64,
    pub batches: AtomicU64,
    pub batch_errors: AtomicU64,
    pub handshakes: AtomicU64,
    /// Tasks the nodes' newest views hold, and those of them `running`.
    pub assigned: AtomicUsize,
    pub running: AtomicUsize,
    /// Heartbeat round trips (µs) since the last [`Stats::take_latencies`].
    latencies: Mutex<Vec<u32>>,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn take_latencies(&self) -> Vec<u32> {
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn error(&self, counter: &AtomicU64, e: impl std::fmt::Display) {
        counter.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// The counters as plain numbers, to subtract two of them.
    pub fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            heartbeats: get(&self.heartbeats),
            heartbeat_errors: get(&self.heartbeat_errors),
            views: get(&self.views),
            unchanged: get(&self.unchanged),
            poll_errors: get(&self.poll_errors),
            batches: get(&self.batches),
            batch_errors: get(&self.batch_errors),
            handshakes: get(&self.handshakes),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub heartbeats: u64,
    pub heartbeat_errors: u64,
    pub views: u64,
    pub unchanged: u64,
    pub poll_errors: u64,
    pub batches: u64,
    pub batch_errors: u64,
    pub handshakes: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            heartbeats: self.heartbeats - o.heartbeats,
            heartbeat_errors: self.heartbeat_errors - o.heartbeat_errors,
            views: self.views - o.views,
            unchanged: self.unchanged - o.unchanged,
            poll_errors: self.poll_errors - o.poll_errors,
            batches: self.batches - o.batches,
            batch_errors: self.batch_errors - o.batch_errors,
            handshakes: self.handshakes - o.handshakes,
        }
    }
}

/// One simulated node, once joined.
pub struct Node {
    index: usize,
    tls: Arc<rustls::ClientConfig>,
    manager: SocketAddr,
    mode: Connections,
    stats: Arc<Stats>,
    /// The newest store version this node's view or its accepted reports come from.
    version: AtomicU64,
}

/// Joins the cluster at `manager` with `token` as node number `index`: a fresh key, a
/// CSR, the join call, and the credentials checked as `berth cluster join` checks them.
pub async fn join(
    index: usize,
    manager: SocketAddr,
    token: &str,
    mode: Connections,
    stats: Arc<Stats>,
) -> Result<Node> {
    let parsed: pki::JoinToken = token.parse().context("the join token")?;
    let key = pki::NodeKey::generate()?;
    let (mut config, pinned) = pki::join::client_config(&parsed)?;
    config.alpn_protocols = vec![manager::port::ALPN_HTTP.to_vec()];
    let request = JoinRequest {
        token: token.to_string(),
        csr: key.csr_pem()?,
        // Nothing dials a worker's own port in this bench; each gets its own all the
        // same, as distinct hosts would.
        addr: format!("127.0.0.1:{}", 20_000 + index),
        hostname: format!("sim-{index:04}"),
    };
    let mut conn = http::tls(manager, Arc::new(config)).await?;
    let (status, body) = conn
        .request(
            "POST",
            "/v1/cluster/join",
            Some(&serde_json::to_vec(&request)?),
            true,
        )
        .await?;
    if status != 200 {
        bail!(
            "join of node {index}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let answer: JoinAnswer = serde_json::from_slice(&body).context("the join answer")?;
    let creds = pki::join::finish(&parsed, &pinned, &key, &answer.cert)?;
    let tls = manager::port::http_client_config(&creds, &pki::DenyList::new())?;
    Ok(Node {
        index,
        tls,
        manager,
        mode,
        stats,
        version: AtomicU64::new(0),
    })
}

/// What every simulated node says of itself: a 4-CPU, 8 GiB linux/amd64 host.
fn report() -> NodeReport {
    NodeReport {
        platform: Platform {
            os: "linux".into(),
            arch: "amd64".into(),
        },
        capacity: Capacity {
            millicpus: 4000,
            memory: 8 << 30,
        },
        generic_resources: Default::default(),
    }
}

impl Node {
    /// Starts the node's loops on the current runtime; they end with `stop`.
    pub fn spawn(self: Arc<Self>, nodes: usize, stop: watch::Receiver<bool>) {
        let (views, seen) = watch::channel::<Option<Arc<Assignment>>>(None);
        tokio::spawn(until(stop.clone(), self.clone().heartbeats(nodes)));
        tokio::spawn(until(stop.clone(), self.clone().polls(views)));
        tokio::spawn(until(stop, self.agent(seen)));
    }

    /// One request, given up after `timeout`; on a persistent connection (`slot`),
    /// reused, made again once if the server had closed it, and dropped after a
    /// timeout (its answer may still come).
    async fn call(
        &self,
        mut slot: Option<&mut Option<Tls>>,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>)> {
        let once = self.call_once(slot.as_deref_mut(), method, path, body);
        match tokio::time::timeout(timeout, once).await {
            Ok(answer) => answer,
            Err(_) => {
                if let Some(slot) = slot {
                    *slot = None;
                }
                bail!("{method} {path}: no answer within {timeout:?}")
            }
        }
    }

    async fn call_once(
        &self,
        slot: Option<&mut Option<Tls>>,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>)> {
        match (self.mode, slot) {
            (Connections::Persistent, Some(slot)) => {
                if let Some(conn) = slot.as_mut() {
                    match conn.request(method, path, body, false).await {
                        Ok(answer) => return Ok(answer),
                        Err(_) => *slot = None,
                    }
                }
                let conn = slot.insert(self.connect().await?);
                let answer = conn.request(method, path, body, false).await;
                if answer.is_err() {
                    *slot = None;
                }
                Ok(answer?)
            }
            _ => {
                let mut conn = self.connect().await?;
                Ok(conn.request(method, path, body, true).await?)
            }
        }
    }

    async fn connect(&self) -> Result<Tls> {
        self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        Ok(http::tls(self.manager, self.tls.clone()).await?)
    }

    /// Every second, as `membership::worker_loop`; the nodes' first beats are spread
    /// over the first second.
    async fn heartbeats(self: Arc<Self>, nodes: usize) {
        let body = serde_json::to_vec(&report()).unwrap_or_default();
        let offset = Duration::from_millis((self.index * 1000 / nodes.max(1)) as u64);
        tokio::time::sleep(offset).await;
        let mut conn = None;
        let mut every = tokio::time::interval(manager::cluster::HEARTBEAT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let started = Instant::now();
            let answer = self
                .call(
                    Some(&mut conn),
                    "POST",
                    "/v1/dispatcher/heartbeat",
                    Some(&body),
                    CALL_TIMEOUT,
                )
                .await;
            match answer {
                Ok((200, _)) => {
                    self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                    let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    self.stats
                        .latencies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(us);
                }
                Ok((status, body)) => self.stats.error(
                    &self.stats.heartbeat_errors,
                    format!("heartbeat: {status} {}", String::from_utf8_lossy(&body)),
                ),
                Err(e) => self
                    .stats
                    .error(&self.stats.heartbeat_errors, format!("heartbeat: {e:#}")),
            }
        }
    }

    /// The long poll for this node's assignment, as `DispatcherSide::run`.
    async fn polls(self: Arc<Self>, views: watch::Sender<Option<Arc<Assignment>>>) {
        let mut conn = None;
        let mut have: Option<String> = None;
        let (mut assigned, mut running) = (0usize, 0usize);
        loop {
            let mut path = format!("/v1/dispatcher/assignments?wait_ms={POLL_WAIT_MS}");
            if let Some(d) = &have {
                path.push_str(&format!("&have={d}"));
            }
            let wait = Duration::from_millis(POLL_WAIT_MS) + CALL_TIMEOUT;
            match self.call(Some(&mut conn), "GET", &path, None, wait).await {
                Ok((200, body)) => {
                    let a: Assignment = match serde_json::from_slice(&body) {
                        Ok(a) => a,
                        Err(e) => {
                            self.stats.error(&self.stats.poll_errors, e);
                            tokio::time::sleep(RETRY_AFTER).await;
                            continue;
                        }
                    };
                    self.stats.views.fetch_add(1, Ordering::Relaxed);
                    // A view older than what this node saw (or had accepted) is ignored.
                    if have.is_some() && a.version < self.version.load(Ordering::SeqCst) {
                        continue;
                    }
                    self.version.fetch_max(a.version, Ordering::SeqCst);
                    have = Some(a.digest.clone());
                    let now_running = a
                        .tasks
                        .values()
                        .filter(|t| t.status.state() == TaskState::Running)
                        .count();
                    let now_assigned = a.tasks.len();
                    move_count(&self.stats.assigned, assigned, now_assigned);
                    move_count(&self.stats.running, running, now_running);
                    (assigned, running) = (now_assigned, now_running);
                    views.send_replace(Some(Arc::new(a)));
                }
                Ok((204, _)) => {
                    self.stats.unchanged.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, body)) => {
                    self.stats.error(
                        &self.stats.poll_errors,
                        format!("poll: {status} {}", String::from_utf8_lossy(&body)),
                    );
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                Err(e) => {
                    self.stats
                        .error(&self.stats.poll_errors, format!("poll: {e:#}"));
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }

    /// The agent, as the worker's task loop decides (`agent::worker::decide`), with
    /// containers that start and stop at once: for each new view, one batch that
    /// reports the tasks to stop (`shutdown`) or remove (`removed`), then, for the tasks
    /// that should run and are `new`, one batch of `preparing` and one of `running`.
    async fn agent(self: Arc<Self>, mut views: watch::Receiver<Option<Arc<Assignment>>>) {
        // What this node reported of each task: a view that does not show it yet must
        // not make it report again.
        let mut reported: HashMap<String, TaskState> = HashMap::new();
        while views.changed().await.is_ok() {
            let Some(view) = views.borrow_and_update().clone() else {
                continue;
            };
            reported.retain(|id, _| view.tasks.contains_key(id));
            let now = spec::task::now_ms();
            let mut ends = Vec::new();
            let mut starts = Vec::new();
            for t in view.tasks.values() {
                let state = reported
                    .get(&t.id)
                    .copied()
                    .unwrap_or(t.status.state())
                    .max(t.status.state());
                let end = match t.desired {
                    DesiredState::Running if state == TaskState::New => {
                        starts.push(t);
                        None
                    }
                    DesiredState::Shutdown if !state.is_terminal() => Some(TaskState::Shutdown),
                    DesiredState::Remove if state != TaskState::Removed => Some(TaskState::Removed),
                    _ => None,
                };
                if let Some(end) = end {
                    let status = TaskStatus {
                        state: Some(end),
                        pid: None,
                        finished_at: Some(now),
                        ..t.status.clone()
                    };
                    ends.push((t.id.clone(), status));
                }
            }
            let mut batches = Vec::new();
            if !ends.is_empty() {
                batches.push(ends);
            }
            if !starts.is_empty() {
                for state in [TaskState::Preparing, TaskState::Running] {
                    let running = state == TaskState::Running;
                    batches.push(
                        starts
                            .iter()
                            .enumerate()
                            .map(|(n, t)| {
                                let status = TaskStatus {
                                    state: Some(state),
                                    started_at: running.then_some(now),
                                    pid: running.then_some((self.index * 1000 + n) as i32),
                                    ..t.status.clone()
                                };
                                (t.id.clone(), status)
                            })
                            .collect(),
                    );
                }
            }
            for statuses in batches {
                for (id, status) in &statuses {
                    reported.insert(id.clone(), status.state());
                }
                let batch = StatusBatch {
                    statuses,
                    health: Vec::new(),
                };
                self.report(&batch).await;
            }
        }
    }

    /// Sends `batch` until a manager takes it (the real agent keeps what was not taken
    /// and sends it with its next batch: the same thing here, with no other batch).
    async fn report(&self, batch: &StatusBatch) {
        let body = serde_json::to_vec(batch).unwrap_or_default();
        loop {
            let answer = self
                .call(
                    None,
                    "POST",
                    "/v1/dispatcher/status",
                    Some(&body),
                    CALL_TIMEOUT,
                )
                .await;
            match answer {
                Ok((200, body)) => {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    if let Ok(a) = serde_json::from_slice::<Accepted>(&body) {
                        self.version.fetch_max(a.version, Ordering::SeqCst);
                    }
                    return;
                }
                Ok((status, body)) => self.stats.error(
                    &self.stats.batch_errors,
                    format!("status: {status} {}", String::from_utf8_lossy(&body)),
                ),
                Err(e) => self
                    .stats
                    .error(&self.stats.batch_errors, format!("status: {e:#}")),
            }
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }
}

fn move_count(total: &AtomicUsize, from: usize, to: usize) {
    if to >= from {
        total.fetch_add(to - from, Ordering::SeqCst);
    } else {
        total.fetch_sub(from - to, Ordering::SeqCst);
    }
}

/// Runs `f` until `stop` turns true.
async fn until(mut stop: watch::Receiver<bool>, f: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = f => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

//! `berth daemon`: one process holding a manager (store, orchestrator, API) and an agent
//! (executor) for a single node (DESIGN invariant 4: single-host mode is the cluster
//! code with one node).
//!
//! Three loops share the store:
//! - the orchestrator (`manager::orchestrator::run::run_orchestrator`) turns stacks into tasks;
//! - the agent loop below makes containers match the tasks and reports what it saw, in
//!   batches (one store commit per batch, not per container);
//! - the API serves the CLI on `<state>/berth.sock` (mode 0600).
//!
//! Killing the daemon (even `kill -9`) stops no container: each runs under its own
//! shim. A new daemon reads the store and the containers' state from disk and carries on.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::executor::Executor;
use anyhow::Context;
use manager::api::{cluster as cluster_api, LogLine, NodeAgent};
use manager::cluster::files::{self as cluster_files, ClusterConfig};
use manager::cluster::{membership, ops as cluster_ops, Daemon, Member};
use manager::state::store::{self, Store};
use pki::NodeRole;
use spec::model::{Service, Stack};
use spec::task::{DesiredState, StackRecord, Task, TaskState, TaskStatus};

/// How often the agent looks at every container even when the store did not change:
/// how soon a container that exited or was removed behind berth's back is noticed.
const OBSERVE_EVERY: Duration = Duration::from_millis(500);

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("berth.sock")
}

pub fn log_path(state_dir: &Path) -> PathBuf {
    state_dir.join("daemon.log")
}

/// Runs the daemon in the foreground until SIGINT or SIGTERM (containers keep running).
/// Raises this process's soft limit on open files to its hard limit, as dockerd and
/// containerd do: the daemon holds sockets for every published port, DNS client and
/// relayed IPv6 connection, and 1024 (the usual soft limit) runs out under load long
/// before the machine does. Containers get their own limits from the spec, not this.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Containers on a network need `nft` (their firewall tables). Not a refusal: a stack
/// whose services have no network runs without it, and each container that needs it
/// says so when it cannot start.
fn warn_without_nft() {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("nft").is_file()));
    if !found {
        eprintln!(
            "berth daemon: warning: nft is not installed, so containers on a network cannot \
             start (apt-get install -y nftables)"
        );
    }
}

pub fn run(state_dir: &Path, shim: agent::shim::ShimProgram) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create the state directory {}", state_dir.display()))?;
    // Only root may look inside; with a socket group, its members may reach the socket
    // (traverse, not list: everything below stays root's).
    let shared = std::env::var("BERTH_SOCKET_GROUP").is_ok_and(|g| !g.is_empty());
    set_mode(state_dir, if shared { 0o711 } else { 0o700 })?;
    let _lock = lock_daemon(state_dir)?;
    // Before anything is served: what containers need, or a refusal naming it.
    crate::preflight::check(state_dir, &shim)?;
    warn_without_nft();
    raise_open_files_limit();
    if let Err(e) = agent::runtime::protect_from_oom(agent::runtime::DAEMON_OOM_SCORE_ADJ) {
        eprintln!(
            "berth daemon: warning: the OOM killer may take the daemon before containers: {e}"
        );
    }
    let cluster = cluster_files::load(state_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Container jobs run on blocking threads: enough for a stack's starts and stops
        // at once (a stop may wait out its grace period), and idle ones go after two
        // seconds so that the daemon's memory falls back once a burst is over.
        .max_blocking_threads(32)
        .thread_keep_alive(Duration::from_secs(2))
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match cluster {
        Some((config, creds)) if config.role == NodeRole::Worker => {
            rt.block_on(run_worker(state_dir, config, creds))
        }
        cluster => {
            // overlay-net runs its own small runtime for netlink: it is made, and last
            // dropped, outside this one (a runtime cannot be dropped inside another).
            let net = open_network(state_dir)?;
            let result = rt.block_on(run_manager(state_dir, shim, net.clone(), cluster));
            drop(rt);
            drop(net);
            result
        }
    }
}

/// The local API socket, made fresh.
fn bind_socket(state_dir: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let sock = socket_path(state_dir);
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("listen on {}", sock.display()))?;
    share_socket(&sock)?;
    eprintln!("berth daemon: listening on {}", sock.display());
    Ok(listener)
}

/// A single host, or a manager of a cluster (`cluster`): the store, the agent, the API.
async fn run_manager(
    state_dir: &Path,
    shim: agent::shim::ShimProgram,
    net: Arc<overlay_net::NetworkManager>,
    cluster: Option<(ClusterConfig, pki::NodeCredentials)>,
) -> anyhow::Result<()> {
    let manager_dir = state_dir.join("manager");
    let daemon: Arc<dyn Daemon> = Arc::new(crate::process::ThisDaemon);
    let mut member: Option<Arc<Member>> = None;
    let store = match &cluster {
        // A Raft group of one voter in <state>/manager/raft (a state.json of an older
        // berth is migrated into it on first start).
        None => {
            let dir = manager_dir.clone();
            let store = Arc::new(
                tokio::task::spawn_blocking(move || Store::open(&dir))
                    .await?
                    .context("open the store")?,
            );
            if cluster_ops::leave_unfinished_init(&store).context("open the store")? {
                eprintln!(
                    "berth daemon: a cluster init did not finish before the last stop; \
                     this node is a single host again (berth cluster init to retry)"
                );
            }
            store
        }
        Some((config, creds)) => {
            let deny = pki::DenyList::new();
            let transport = manager::state::raft::tls::TlsTransport::new(
                manager::port::raft_client_config(creds, &deny)
                    .context("make the Raft transport's TLS settings")?,
            );
            for (raft_id, node, addr) in &config.managers {
                if let (Ok(node), Ok(addr)) = (pki::NodeId::new(node), addr.parse()) {
                    if *raft_id != config.raft_id {
                        transport.set_peer(*raft_id, node, addr);
                    }
                }
            }
            let store = Arc::new(
                Store::open_member(
                    &manager_dir,
                    store::cluster_config(config.raft_id),
                    transport.clone(),
                )
                .context("open this manager's replica of the cluster store")?,
            );
            let m = Arc::new(Member {
                state_dir: state_dir.to_path_buf(),
                config: config.clone(),
                creds: creds.clone(),
                store: store.clone(),
                transport,
                http: manager::port::http_client_config(creds, &deny)
                    .context("make the cluster client's TLS settings")?,
                deny,
                port: Mutex::new(None),
                ready: Default::default(),
                known: Mutex::new(config.managers.clone()),
                heartbeats: Mutex::default(),
                daemon: daemon.clone(),
            });
            member = Some(m);
            store
        }
    };
    let executor = Executor {
        state_dir: state_dir.to_path_buf(),
        net: Some(net.clone()),
        shim,
        cgroup_parent: std::env::var("BERTH_CGROUP_PARENT")
            .ok()
            .filter(|p| !p.is_empty() && !p.contains(".."))
            .unwrap_or_else(|| "berth".into()),
    };
    let me: Option<String> = member.as_ref().map(|m| m.node_id().to_string());
    let node: Arc<dyn NodeAgent> = Arc::new(LocalNode {
        executor: executor.clone(),
    });
    let api = manager::api::router(store.clone(), node);
    let local =
        match &member {
            None => api.merge(cluster_api::single_host(
                state_dir.to_path_buf(),
                store.clone(),
                daemon.clone(),
            )),
            Some(m) => {
                // The cluster port: Raft and the API over mutual TLS.
                let router = api
                    .clone()
                    .merge(cluster_api::manager(m.clone()))
                    .layer(axum::middleware::from_fn_with_state(
                        store.clone(),
                        cluster_api::check_record,
                    ))
                    .layer(axum::middleware::from_fn_with_state(
                        m.clone(),
                        cluster_api::until_ready,
                    ));
                let tls = manager::port::server_config(&m.creds, &m.deny)
                    .context("make the cluster port's TLS settings")?;
                let listener = tokio::net::TcpListener::bind(m.config.listen)
                    .await
                    .with_context(|| format!("listen on the cluster port {}", m.config.listen))?;
                let sink = manager::port::RaftSink::default();
                sink.set(store.node().inbox());
                sink.check_senders(manager::cluster::sender_check(m));
                let port = manager::port::spawn(listener, tls, sink, router);
                *m.port.lock().unwrap_or_else(|p| p.into_inner()) = Some(port);
                eprintln!(
                    "berth daemon: manager {} of cluster {}, cluster port {} (advertised {})",
                    m.node_id(),
                    m.config.cluster_id,
                    m.config.listen,
                    m.config.advertise
                );
                tokio::spawn(membership::run(m.clone()));
                api.merge(cluster_api::manager(m.clone())).layer(
                    axum::middleware::from_fn_with_state(m.clone(), cluster_api::until_ready),
                )
            }
        };
    let listener = bind_socket(state_dir)?;
    let serve = std::future::IntoFuture::into_future(axum::serve(listener, local));
    tokio::pin!(serve);
    if member.is_some() {
        // Nothing may act on the store before it holds everything committed (a task
        // not yet replayed would make its container look like a stray): wait for a
        // quorum of managers, serving the API and the port meanwhile.
        let ready = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || wait_for_quorum(&store))
        };
        tokio::select! {
            r = ready => {
                r??;
                if let Some(m) = &member {
                    m.ready.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            r = &mut serve => return r.context("serve the API"),
            _ = shutdown_signal() => {
                eprintln!("berth daemon: stopping (containers keep running)");
                return Ok(());
            }
        }
    }
    {
        let (store, executor, net) = (store.clone(), executor.clone(), net.clone());
        let me = me.clone();
        tokio::task::spawn_blocking(move || {
            remove_strays(&store, &executor, me.as_deref());
            readopt_network(&store, &net);
        })
        .await?;
    }
    tokio::spawn(manager::orchestrator::run::run_orchestrator(
        store.clone(),
        me.clone(),
    ));
    tokio::spawn(agent_loop(store.clone(), executor.clone(), me.clone()));
    tokio::spawn(health_loop(store.clone(), executor, me));
    tokio::select! {
        r = &mut serve => r.context("serve the API")?,
        _ = shutdown_signal() => eprintln!("berth daemon: stopping (containers keep running)"),
    }
    Ok(())
}

/// Waits until the cluster's store answers a linearizable read, saying why meanwhile.
fn wait_for_quorum(store: &Store) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match store.wait_ready() {
            Ok(()) => {
                eprintln!(
                    "berth daemon: the cluster store is ready ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Err(store::StoreError::Raft(manager::state::raft::NodeError::Stopped {
                reason,
                ..
            })) => anyhow::bail!("the store's Raft node stopped: {reason}"),
            Err(e) => eprintln!(
                "berth daemon: waiting for a quorum of managers ({:.0} s): {e}",
                started.elapsed().as_secs_f64()
            ),
        }
    }
}

/// A worker of a cluster: it heartbeats to the managers and answers `cluster status`
/// locally. (Running tasks on workers comes with the scheduler and the dispatcher.)
async fn run_worker(
    state_dir: &Path,
    config: ClusterConfig,
    creds: pki::NodeCredentials,
) -> anyhow::Result<()> {
    eprintln!(
        "berth daemon: worker {} of cluster {}",
        config.node_id, config.cluster_id
    );
    let listener = bind_socket(state_dir)?;
    tokio::spawn(membership::worker_loop(
        state_dir.to_path_buf(),
        config.clone(),
        creds,
        Arc::new(crate::process::ThisDaemon),
    ));
    tokio::select! {
        r = axum::serve(listener, cluster_api::worker(config)) => r.context("serve the API")?,
        _ = shutdown_signal() => eprintln!("berth daemon: stopping"),
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        _ => std::future::pending().await,
    }
}

/// The socket is root's only (0600), unless `$BERTH_SOCKET_GROUP` names a group
/// whose members may use berth too (root:group, 0660), like Docker's `docker` group.
fn share_socket(sock: &Path) -> anyhow::Result<()> {
    let Some(group) = std::env::var("BERTH_SOCKET_GROUP")
        .ok()
        .filter(|g| !g.is_empty())
    else {
        return set_mode(sock, 0o600);
    };
    let gid = nix::unistd::Group::from_name(&group)
        .ok()
        .flatten()
        .map(|g| g.gid)
        .with_context(|| format!("BERTH_SOCKET_GROUP={group:?}: no such group"))?;
    nix::unistd::chown(sock, None, Some(gid))
        .with_context(|| format!("give {} to group {group}", sock.display()))?;
    set_mode(sock, 0o660)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("set the mode of {}", path.display()))
}

/// One daemon per state directory: an exclusive lock held for the daemon's life.
fn lock_daemon(state_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = state_dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock on a valid fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another berth daemon is running with state directory {} (its log: {})",
            state_dir.display(),
            log_path(state_dir).display()
        );
    }
    Ok(file)
}

/// The node's networking: object names start with `$BERTH_NET_PREFIX` (default
/// `berth`), default subnets come from `$BERTH_NET_POOL` (default 10.89.0.0/16 in
/// /24s), network namespaces are files under `<state>/netns`.
fn open_network(state_dir: &Path) -> anyhow::Result<Arc<overlay_net::NetworkManager>> {
    let mut cfg = overlay_net::NetConfig::new(state_dir);
    if let Ok(prefix) = std::env::var("BERTH_NET_PREFIX") {
        cfg.prefix = prefix;
    }
    if let Ok(pool) = std::env::var("BERTH_NET_POOL") {
        let range = pool
            .parse()
            .map_err(|e| anyhow::anyhow!("BERTH_NET_POOL={pool:?}: {e}"))?;
        cfg.pool = overlay_net::ipam::Pool {
            ranges: vec![range],
            len: 24,
        };
    }
    cfg.netns_dir = state_dir.join("netns");
    let net = overlay_net::NetworkManager::open(cfg).context("set up container networking")?;
    Ok(Arc::new(net))
}

/// After a restart: remove what a crash left of the network (attachments of
/// containers that no longer run, networks of stacks no longer deployed), and hold the
/// published ports of the running containers again (their reservations died with the
/// old daemon).
fn readopt_network(store: &Store, net: &overlay_net::NetworkManager) {
    let state = store.snapshot();
    let live_networks: Vec<String> = state
        .stacks
        .values()
        .flat_map(|r| {
            let project = r.stack.name.clone();
            r.stack.networks.iter().map(move |(k, n)| {
                if n.name.is_empty() {
                    format!("{project}_{k}")
                } else {
                    n.name.clone()
                }
            })
        })
        .collect();
    let running: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| t.status.state() == TaskState::Running)
        .collect();
    let live_containers: Vec<&str> = running.iter().map(|t| t.id.as_str()).collect();
    let nets: Vec<&str> = live_networks.iter().map(String::as_str).collect();
    match net.gc(&nets, &live_containers) {
        Ok(report) if report != overlay_net::GcReport::default() => {
            eprintln!("berth daemon: removed network leftovers: {report:?}")
        }
        Ok(_) => {}
        Err(e) => eprintln!("berth daemon: network cleanup: {e}"),
    }
    for t in running {
        if let Some((_, service)) = service_of(&state.stacks, t) {
            if !service.ports.is_empty() {
                if let Err(e) = net.publish(&t.id, &t.service, &service.ports) {
                    eprintln!("berth daemon: {}: publish ports again: {e}", t.name());
                }
            }
            if let Some(h) = Some(t.status.health).filter(|h| *h != spec::task::Health::None) {
                net.set_healthy(&t.id, h == spec::task::Health::Healthy);
            }
        }
    }
}

/// Containers on disk that no task knows (a crash between creating one and recording
/// it) are removed at start.
fn remove_strays(store: &Store, executor: &Executor, me: Option<&str>) {
    // On a cluster, only tasks placed on this node count as known here.
    let known: HashSet<String> = store.read(|s| {
        s.tasks
            .values()
            .filter(|t| t.node.as_deref() == me)
            .map(|t| t.id.clone())
            .collect()
    });
    for id in executor.containers() {
        if !known.contains(&id) {
            eprintln!("berth daemon: removing container {id}, which no task knows");
            executor.remove_stray(&id);
        }
    }
}

/// The service a task is made from (orphans included), with its stack.
fn service_of<'a>(
    stacks: &'a BTreeMap<String, StackRecord>,
    task: &Task,
) -> Option<(&'a StackRecord, &'a Service)> {
    let record = stacks.get(&task.stack)?;
    let service = record
        .stack
        .services
        .get(&task.service)
        .or_else(|| record.oneoffs.get(&task.service))
        .or_else(|| record.orphans.get(&task.service))?;
    Some((record, service))
}

/// One action on one task's container, run on a blocking thread.
type Job = Box<dyn FnOnce(&Executor) -> TaskStatus + Send>;

/// The agent: for every task, act if its container does not match its desired state
/// (start, stop, remove: each on a blocking thread, one at a time per task), observe
/// it otherwise; report every status change in batches.
/// The store's state with only the tasks this node runs (`me`: its cluster node id;
/// `None` on a single host, where every task is this node's).
fn mine(mut state: manager::state::model::State, me: Option<&str>) -> manager::state::model::State {
    state.tasks.retain(|_, t| t.node.as_deref() == me);
    state
}

async fn agent_loop(store: Arc<Store>, executor: Executor, me: Option<String>) {
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, TaskStatus)>();
    let mut watch = store.watch();
    // When running containers were last looked at. Not at every store change: during
    // an `up` of N services the store changes about N times, and looking at every
    // running container each time (its state.json, /proc) made `up` quadratic.
    let mut observed: Option<std::time::Instant> = None;
    loop {
        let snapshot = mine(store.snapshot(), me.as_deref());
        let mut reports = Vec::new();
        let observe = observed.is_none_or(|t| t.elapsed() >= OBSERVE_EVERY);
        if observe {
            observed = Some(std::time::Instant::now());
        }
        for task in snapshot.tasks.values() {
            if busy.lock().map(|b| b.contains(&task.id)).unwrap_or(true) {
                continue;
            }
            let state = task.status.state();
            let found = service_of(&snapshot.stacks, task);
            let grace = task.stop_grace_ms.map(Duration::from_millis);
            let job: Option<Job> = match task.desired {
                DesiredState::Running if state == TaskState::New => match found {
                    Some((record, service)) => {
                        let (t, stack, service) =
                            (task.clone(), record.stack.clone(), service.clone());
                        let env = record.secret_env.clone();
                        Some(Box::new(move |ex| ex.start(&t, &stack, &service, &env)))
                    }
                    None => None,
                },
                DesiredState::Shutdown
                    if !state.is_terminal() || state_is_live(&executor, task) =>
                {
                    let (t, service) = (task.clone(), found.map(|f| f.1.clone()));
                    Some(Box::new(move |ex| ex.stop(&t, service.as_ref(), grace)))
                }
                DesiredState::Remove if state != TaskState::Removed => {
                    let (t, service) = (task.clone(), found.map(|f| f.1.clone()));
                    Some(Box::new(move |ex| ex.remove(&t, service.as_ref(), grace)))
                }
                _ => {
                    // Nothing to do: look at it.
                    if observe
                        && task.desired == DesiredState::Running
                        && matches!(state, TaskState::Starting | TaskState::Running)
                    {
                        let observed = executor.observe(task).unwrap_or_else(|| vanished(task));
                        if observed.state().is_terminal() {
                            // Ended or gone: its address, ports and DNS name are free.
                            let (ex, id) = (executor.clone(), task.id.clone());
                            tokio::task::spawn_blocking(move || ex.release(&id));
                        }
                        if observed != task.status {
                            reports.push((task.id.clone(), observed));
                        }
                    }
                    None
                }
            };
            if let Some(job) = job {
                if let Ok(mut b) = busy.lock() {
                    b.insert(task.id.clone());
                }
                if task.desired == DesiredState::Running {
                    reports.push((
                        task.id.clone(),
                        TaskStatus {
                            state: Some(TaskState::Preparing),
                            ..task.status.clone()
                        },
                    ));
                }
                let (ex, tx, busy, id) =
                    (executor.clone(), tx.clone(), busy.clone(), task.id.clone());
                let (name, starts) = (task.name(), task.desired == DesiredState::Running);
                tokio::task::spawn_blocking(move || {
                    let status = job(&ex);
                    // `ps`, `events` and `up` show it from the store; the log says it too.
                    if starts && status.never_started() {
                        eprintln!(
                            "berth daemon: container {name} ({id}) could not start: {}",
                            status.message
                        );
                    }
                    let _ = tx.send((id.clone(), status));
                    if let Ok(mut b) = busy.lock() {
                        b.remove(&id);
                    }
                });
            }
        }
        commit(&store, reports);

        // Wait for a store change, a finished job, or the observation tick.
        tokio::select! {
            _ = watch.changed() => {}
            Some(first) = rx.recv() => {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                commit(&store, batch);
            }
            _ = tokio::time::sleep(
                OBSERVE_EVERY.saturating_sub(observed.map_or(Duration::ZERO, |t| t.elapsed()))
            ) => {}
        }
    }
}

/// A task whose container is gone though the task should run: removed behind berth's
/// back. It counts as failed for the restart policy.
fn vanished(task: &Task) -> TaskStatus {
    TaskStatus {
        state: Some(TaskState::Removed),
        message: "its container was removed outside berth".into(),
        pid: None,
        finished_at: Some(manager::now_ms()),
        ..task.status.clone()
    }
}

fn state_is_live(executor: &Executor, task: &Task) -> bool {
    executor
        .observe(task)
        .is_some_and(|s| s.state() == TaskState::Running)
}

/// Records reported statuses in one transaction; a state never moves back.
fn commit(store: &Store, reports: Vec<(String, TaskStatus)>) {
    if reports.is_empty() {
        return;
    }
    // The transaction may run again (another manager committed first): it reads
    // the reports, not takes them.
    let result = store.update(|s| {
        for (id, status) in &reports {
            let mut status = status.clone();
            if let Some(t) = s.tasks.get_mut(id) {
                let state = t.status.state().advance(status.state());
                status.state = Some(state);
                // Health is the health loop's to write; the agent only sets the
                // first value (`starting` for a task that has a check).
                if t.status.health != spec::task::Health::None {
                    status.health = t.status.health;
                }
                t.status = status;
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("berth daemon: recording task status: {e}");
    }
}

/// The node as the API sees it.
struct LocalNode {
    executor: Executor,
}

impl NodeAgent for LocalNode {
    fn logs(
        &self,
        task: &str,
        follow: bool,
        tail: Option<usize>,
        sink: &mut dyn FnMut(LogLine) -> bool,
    ) -> Result<(), String> {
        let opts = agent::shim::LogOptions { follow, tail };
        let mut write = |e: &agent::shim::LogEntry| {
            let line = LogLine {
                time: e.time.clone(),
                stream: match e.stream {
                    agent::shim::Stream::Stdout => "stdout".into(),
                    agent::shim::Stream::Stderr => "stderr".into(),
                },
                line: e.log.clone(),
            };
            if sink(line) {
                Ok(())
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            }
        };
        match agent::shim::logs(&self.executor.shim_root(), task, opts, &mut write) {
            Ok(()) => Ok(()),
            Err(agent::shim::ShimError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn kill(&self, task: &str, signal: &str) -> Result<(), String> {
        let signal = agent::shim::parse_signal(signal).map_err(|e| e.to_string())?;
        match agent::shim::kill(&self.executor.shim_root(), task, signal) {
            Ok(()) | Err(agent::shim::ShimError::NotRunning { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn freeze(&self, task: &str, frozen: bool) -> Result<(), String> {
        self.executor.freeze(task, frozen)
    }

    fn inspect(&self, task: &str, what: &str) -> Result<serde_json::Value, String> {
        let value = match what {
            "top" => serde_json::to_value(self.executor.top(task)?),
            "ports" => serde_json::to_value(
                self.executor
                    .net
                    .as_ref()
                    .map(|n| n.published(task))
                    .unwrap_or_default(),
            ),
            _ => {
                let s = self.executor.stats(task)?;
                Ok(serde_json::json!({ "memory_bytes": s.memory_bytes, "cpu_nanos": s.cpu_nanos }))
            }
        };
        value.map_err(|e| e.to_string())
    }

    fn remove_networks(&self, stack: &Stack) -> Result<Vec<String>, String> {
        let Some(net) = &self.executor.net else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        for (key, n) in &stack.networks {
            if n.external {
                continue;
            }
            let name = if n.name.is_empty() {
                format!("{}_{key}", stack.name)
            } else {
                n.name.clone()
            };
            if net.networks().iter().any(|i| i.name == name) {
                net.remove_network(&name)
                    .map_err(|e| format!("network {name}: {e}"))?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    fn remove_volumes(&self, stack: &Stack) -> Result<Vec<String>, String> {
        let mut removed = Vec::new();
        for (key, v) in &stack.volumes {
            if v.external {
                continue;
            }
            let name = if v.name.is_empty() {
                key.clone()
            } else {
                v.name.clone()
            };
            // The API checks names as it takes a stack; a store written before it
            // did may still hold one that is not a plain name.
            if !spec::names::is_resource_name(&name) {
                return Err(format!(
                    "volume {key}: {name:?} is not a volume name, so it was left alone"
                ));
            }
            let dir = self.executor.state_dir.join("volumes").join(&name);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("remove volume {name}: {e}")),
            }
        }
        Ok(removed)
    }
}

/// Runs every running task's healthcheck on its schedule (`agent::health::Checker`)
/// and records health changes in the store.
async fn health_loop(store: Arc<Store>, executor: Executor, me: Option<String>) {
    use agent::health::{probe_command, Checker};
    struct Probing {
        checker: Checker,
        command: Vec<String>,
        busy: bool,
    }
    let mut checks: BTreeMap<String, Probing> = BTreeMap::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool, u64)>();
    let mut watch = store.watch();
    let mut arrived: Vec<(String, bool, u64)> = Vec::new();
    loop {
        let snapshot = mine(store.snapshot(), me.as_deref());
        let now = manager::now_ms();
        let mut changes: Vec<(String, spec::task::Health)> = Vec::new();
        // Forget tasks that no longer run; start checking new ones.
        checks.retain(|id, _| {
            snapshot
                .tasks
                .get(id)
                .is_some_and(|t| t.status.state() == TaskState::Running)
        });
        for task in snapshot.tasks.values() {
            if task.status.state() != TaskState::Running || checks.contains_key(&task.id) {
                continue;
            }
            let Some((_, service)) = service_of(&snapshot.stacks, task) else {
                continue;
            };
            let Some(check) = executor.healthcheck(service) else {
                continue;
            };
            let Some(command) = probe_command(&check) else {
                continue;
            };
            let checker = Checker::new(&check, task.status.started_at.unwrap_or(now));
            if task.status.health != checker.status() {
                changes.push((task.id.clone(), checker.status()));
            }
            checks.insert(
                task.id.clone(),
                Probing {
                    checker,
                    command,
                    busy: false,
                },
            );
        }
        // Probes that are due.
        for (id, p) in checks.iter_mut() {
            if p.busy || p.checker.next_probe() > now {
                continue;
            }
            p.busy = true;
            let (ex, tx, id, command, timeout) = (
                executor.clone(),
                tx.clone(),
                id.clone(),
                p.command.clone(),
                p.checker.timeout(),
            );
            tokio::task::spawn_blocking(move || {
                let healthy = ex.probe(&id, &command, timeout);
                let _ = tx.send((id, healthy, manager::now_ms()));
            });
        }
        while let Ok(msg) = rx.try_recv() {
            arrived.push(msg);
        }
        for (id, healthy, at) in arrived.drain(..) {
            if let Some(p) = checks.get_mut(&id) {
                p.busy = false;
                let before = p.checker.status();
                let after = p.checker.record(healthy, at);
                if before != after
                    || snapshot
                        .tasks
                        .get(&id)
                        .is_some_and(|t| t.status.health != after)
                {
                    changes.push((id, after));
                }
            }
        }
        for (id, health) in &changes {
            executor.set_healthy(id, *health == spec::task::Health::Healthy);
        }
        if !changes.is_empty() {
            let result = store.update(|s| {
                for (id, health) in &changes {
                    if let Some(t) = s.tasks.get_mut(id) {
                        if t.status.state() == TaskState::Running {
                            t.status.health = *health;
                        }
                    }
                }
                Ok(())
            });
            if let Err(e) = result {
                eprintln!("berth daemon: recording health: {e}");
            }
        }
        let next = checks
            .values()
            .filter(|p| !p.busy)
            .map(|p| p.checker.next_probe())
            .min()
            .map_or(1000, |at| {
                at.saturating_sub(manager::now_ms()).clamp(5, 1000)
            });
        tokio::select! {
            _ = watch.changed() => {}
            Some(msg) = rx.recv() => arrived.push(msg),
            _ = tokio::time::sleep(Duration::from_millis(next)) => {}
        }
    }
}

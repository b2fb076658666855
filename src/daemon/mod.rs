//! `berth daemon`: one process holding a manager (store, orchestrator, API) and an agent
//! (executor) for a single node (DESIGN invariant 4: single-host mode is the cluster
//! code with one node).
//!
//! Its loops share the store:
//! - the orchestrator (`manager::orchestrator::run::run_orchestrator`) turns stacks
//!   into tasks;
//! - the agent's loops (`agent::worker`: the agent loop and the health loop) make
//!   containers match the tasks and report what they saw, in batches (one store commit
//!   per batch, not per container), through the store-backed seams of `store_side`;
//! - the API serves the CLI on `<state>/berth.sock` (mode 0600).
//!
//! Killing the daemon (even `kill -9`) stops no container: each runs under its own
//! shim. A new daemon reads the store and the containers' state from disk and carries on.
//!
//! This folder is wiring only: `mod.rs` starts the daemon in the mode
//! `<state>/cluster/config.json` says (single host, manager, worker); `store_side`
//! implements the agent's seams over the store; `process` is what the manager's cluster
//! side asks of this process (calls to other managers, a restart in place);
//! `preflight` is what the daemon checks before it serves; `nodes` is the API's way
//! to the node a task runs on, and every node's own endpoints for the managers;
//! `exec` an exec session in one of this node's containers.

mod dispatcher_side;
mod exec;
mod gitops_side;
mod images;
mod nodes;
mod preflight;
mod process;
mod store_side;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::executor::Executor;
use agent::worker::{self, Assignments, TaskLoop};
use anyhow::Context;
use dispatcher_side::DispatcherSide;
use manager::api::{cluster as cluster_api, NodeAgent};
use manager::cluster::files::{self as cluster_files, ClusterConfig};
use manager::cluster::{membership, ops as cluster_ops, Daemon, Member};
use manager::state::store::{self, Store};
use pki::NodeRole;
use store_side::{ApiNode, StoreSide};

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

/// How `berth daemon` was asked to run.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Where git-ops webhooks are served (None: nowhere).
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// What `--node-generic-resource` advertises (sent with heartbeats, so it counts
    /// once this node is in a cluster, where the scheduler runs).
    pub generic_resources: spec::generic::Inventory,
}

pub fn run(state_dir: &Path, shim: agent::shim::ShimProgram, opts: &Options) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create the state directory {}", state_dir.display()))?;
    // Only root may look inside; with a socket group, its members may reach the socket
    // (traverse, not list: everything below stays root's).
    let shared = std::env::var("BERTH_SOCKET_GROUP").is_ok_and(|g| !g.is_empty());
    set_mode(state_dir, if shared { 0o711 } else { 0o700 })?;
    let _lock = lock_daemon(state_dir)?;
    // Before anything is served: what containers need, or a refusal naming it.
    preflight::check(state_dir, &shim)?;
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
            let net = open_network(state_dir)?;
            let result = rt.block_on(run_worker(
                state_dir,
                shim,
                net.clone(),
                config,
                creds,
                opts,
            ));
            drop(rt);
            drop(net);
            result
        }
        cluster => {
            // overlay-net runs its own small runtime for netlink: it is made, and last
            // dropped, outside this one (a runtime cannot be dropped inside another).
            let net = open_network(state_dir)?;
            let result = rt.block_on(run_manager(state_dir, shim, net.clone(), cluster, opts));
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
    opts: &Options,
) -> anyhow::Result<()> {
    let manager_dir = state_dir.join("manager");
    let daemon: Arc<dyn Daemon> = Arc::new(process::ThisDaemon {
        generic_resources: opts.generic_resources.clone(),
    });
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
                liveness: Default::default(),
                daemon: daemon.clone(),
            });
            member = Some(m);
            store
        }
    };
    // A manager looks up which nodes hold an image itself, for its own executor and
    // for the nodes and CLIs that ask it.
    let executor = executor(
        state_dir,
        shim,
        net.clone(),
        member.as_ref().map(|m| {
            images::ClusterImages::new(
                state_dir,
                m.http.clone(),
                managers_from_store(m),
                images::Lookup::new(m, state_dir).for_executor(tokio::runtime::Handle::current()),
            )
        }),
        member.as_ref().map(|m| m.node_id()),
    );
    let me: Option<String> = member.as_ref().map(|m| m.node_id().to_string());
    // The API asks a task's container of the node it runs on.
    let here = Arc::new(ApiNode(agent::node::LocalNode::new(executor.clone())));
    let node: Arc<dyn NodeAgent> = Arc::new(nodes::Nodes::new(
        store.clone(),
        me.clone(),
        here.clone(),
        member.as_ref().map(|m| m.http.clone()),
    ));
    // What `up --dry-run` places new tasks by: on a cluster, the nodes this manager
    // knows down (a follower knows of none) and where global services go.
    let facts: manager::api::NodeFacts = match &member {
        None => Arc::new(|_: &manager::state::model::State| Default::default()),
        Some(m) => {
            let live = m.liveness.clone();
            Arc::new(move |s: &manager::state::model::State| {
                let grace = s
                    .cluster
                    .as_ref()
                    .map(|c| c.settings.node_grace())
                    .unwrap_or_default();
                let down = live.down(&s.nodes, std::time::Instant::now(), grace);
                manager::orchestrator::nodes::nodes(s, down, &Default::default())
            })
        }
    };
    // Git-ops: its endpoints on every manager, its controller acting on the leader.
    let gitops = gitops::Controller {
        store: store.clone(),
        node: node.clone(),
        images: Arc::new(gitops_side::DaemonImages::new(state_dir)),
        fetcher: Arc::new(gitops::fetch::Sources {
            dir: state_dir.join("gitops"),
        }),
    };
    if let Some(addr) = opts.webhook_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen for git-ops webhooks on {addr}"))?;
        eprintln!("berth daemon: git-ops webhooks on {addr}");
        tokio::spawn(gitops::webhook::serve(listener, store.clone()));
    }
    let api = manager::api::router_with(store.clone(), node, facts)
        .merge(gitops::api::router(gitops.clone()));
    let local = match &member {
        None => api.merge(cluster_api::single_host(
            state_dir.to_path_buf(),
            store.clone(),
            daemon.clone(),
        )),
        Some(m) => {
            // The cluster port: Raft and the API over mutual TLS, this node's
            // images for the nodes that lack them and where the others' are, and its
            // own endpoints for the other managers.
            let scope = nodes::ManagerScope {
                store: store.clone(),
                me: m.node_id().to_string(),
            };
            let holders =
                manager::api::images::holders_router(Arc::new(images::Lookup::new(m, state_dir)));
            let router = api
                .clone()
                .merge(cluster_api::manager(m.clone()))
                .merge(holders.clone())
                .merge(images::router(state_dir)?)
                .merge(manager::api::node::router(here.clone(), Arc::new(scope)))
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
            api.merge(cluster_api::manager(m.clone()))
                .merge(holders)
                .layer(axum::middleware::from_fn_with_state(
                    m.clone(),
                    cluster_api::until_ready,
                ))
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
    let side = StoreSide::new(store.clone(), me.clone());
    {
        let (side, executor, net) = (side.clone(), executor.clone(), net.clone());
        tokio::task::spawn_blocking(move || {
            let view = side.view();
            worker::recover::remove_strays(&view, &executor);
            worker::recover::readopt_network(&view, &net);
        })
        .await?;
    }
    if let Some(m) = &member {
        tokio::spawn(membership::manager_heartbeats(m.clone()));
    }
    tokio::spawn(manager::orchestrator::run::run_orchestrator(
        store.clone(),
        member.as_ref().map(|m| m.liveness.clone()),
    ));
    tokio::spawn(gitops.run());
    tokio::spawn(TaskLoop::new(side.clone(), side.clone(), executor.clone()).run());
    tokio::spawn(worker::run_health(side.clone(), side, executor));
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

/// The cluster's managers' addresses, as a node knows them now.
type ManagerList = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// The managers other than itself a worker last heard of (its heartbeats keep
/// `<state>/cluster/config.json` current).
fn managers_from_config(state_dir: &Path) -> ManagerList {
    let dir = state_dir.to_path_buf();
    Box::new(move || {
        cluster_files::load(&dir)
            .ok()
            .flatten()
            .map(|(config, _)| config.managers.iter().map(|m| m.2.clone()).collect())
            .unwrap_or_default()
    })
}

/// The other managers, as a manager's store has them.
fn managers_from_store(member: &Arc<Member>) -> ManagerList {
    let member = Arc::downgrade(member);
    Box::new(move || {
        let Some(m) = member.upgrade() else {
            return Vec::new();
        };
        let me = m.node_id().to_string();
        m.store.read(|s| {
            s.nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager && n.id != me)
                .map(|n| n.addr.clone())
                .collect()
        })
    })
}

/// The node's container executor: containers under `$BERTH_CGROUP_PARENT` (default
/// `berth`), on `net`. A cluster node fetches an image it lacks from the other nodes
/// (`images`), and a start that fails there names the node (its id, `node`).
fn executor(
    state_dir: &Path,
    shim: agent::shim::ShimProgram,
    net: Arc<overlay_net::NetworkManager>,
    images: Option<images::ClusterImages>,
    node: Option<&str>,
) -> Executor {
    let images = images.map(|source| Arc::new(source) as Arc<dyn agent::image::ImageSource>);
    Executor {
        state_dir: state_dir.to_path_buf(),
        net: Some(net),
        shim,
        cgroup_parent: std::env::var("BERTH_CGROUP_PARENT")
            .ok()
            .filter(|p| !p.is_empty() && !p.contains(".."))
            .unwrap_or_else(|| "berth".into()),
        images,
        node: node.map(|id| {
            let host = manager::cluster::ops::clean_hostname(&manager::cluster::ops::hostname());
            format!("{host} ({id})")
        }),
    }
}

/// A worker of a cluster: it heartbeats to the managers, runs the tasks the
/// dispatcher assigns it (the same agent loops as a manager's, over
/// `dispatcher_side`), and answers `cluster status` locally.
async fn run_worker(
    state_dir: &Path,
    shim: agent::shim::ShimProgram,
    net: Arc<overlay_net::NetworkManager>,
    config: ClusterConfig,
    creds: pki::NodeCredentials,
    opts: &Options,
) -> anyhow::Result<()> {
    eprintln!(
        "berth daemon: worker {} of cluster {}",
        config.node_id, config.cluster_id
    );
    let listener = bind_socket(state_dir)?;
    tokio::spawn(membership::worker_loop(
        state_dir.to_path_buf(),
        config.clone(),
        creds.clone(),
        Arc::new(process::ThisDaemon {
            generic_resources: opts.generic_resources.clone(),
        }),
    ));
    let tls = manager::port::http_client_config(&creds, &pki::DenyList::new())
        .context("make the cluster client's TLS settings")?;
    let side = DispatcherSide::new(state_dir.to_path_buf(), &config, tls.clone());
    tokio::spawn(side.clone().run());
    // An image it lacks: from the managers, else from a node they say holds it.
    let source = images::ClusterImages::new(
        state_dir,
        tls.clone(),
        managers_from_config(state_dir),
        images::holders_from_managers(managers_from_config(state_dir), tls.clone()),
    );
    let executor = executor(
        state_dir,
        shim,
        net.clone(),
        Some(source),
        Some(&config.node_id),
    );
    // The cluster port: this node's own endpoints, for the managers, and its images,
    // for the nodes that lack them.
    let here = Arc::new(ApiNode(agent::node::LocalNode::new(executor.clone())));
    let scope = nodes::WorkerScope {
        side: side.clone(),
        state_dir: state_dir.to_path_buf(),
    };
    let _port = nodes::serve_worker_port(
        &config,
        &creds,
        manager::api::node::router(here, Arc::new(scope)).merge(images::router(state_dir)?),
    )
    .await?;
    let serve =
        std::future::IntoFuture::into_future(axum::serve(listener, cluster_api::worker(config)));
    tokio::pin!(serve);
    // Nothing acts before a manager gave a complete view: a worker that restarted
    // must not take its running containers for strays (nor act on the disk copy of
    // its last view, which only sets the oldest view it takes).
    tokio::select! {
        _ = side.first_view() => {}
        r = &mut serve => return r.context("serve the API"),
        _ = shutdown_signal() => {
            eprintln!("berth daemon: stopping (containers keep running)");
            return Ok(());
        }
    }
    {
        let (side, executor, net) = (side.clone(), executor.clone(), net.clone());
        tokio::task::spawn_blocking(move || {
            let view = side.view();
            worker::recover::remove_strays(&view, &executor);
            worker::recover::readopt_network(&view, &net);
        })
        .await?;
    }
    tokio::spawn(TaskLoop::new(side.clone(), side.clone(), executor.clone()).run());
    tokio::spawn(worker::run_health(
        side.clone(),
        side.clone(),
        executor.clone(),
    ));
    tokio::spawn(remove_strays_on_change(side, executor));
    tokio::select! {
        r = &mut serve => r.context("serve the API")?,
        _ = shutdown_signal() => eprintln!("berth daemon: stopping (containers keep running)"),
    }
    Ok(())
}

/// On every new view, the containers no task of it knows go: a worker cut off from the
/// cluster comes back to a view without the tasks that were replaced elsewhere.
async fn remove_strays_on_change(side: DispatcherSide, executor: Executor) {
    let mut changes = side.changes();
    while changes.changed().await.is_ok() {
        let (side, executor) = (side.clone(), executor.clone());
        let _ = tokio::task::spawn_blocking(move || {
            worker::recover::remove_strays_now(&side, &executor)
        })
        .await;
    }
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

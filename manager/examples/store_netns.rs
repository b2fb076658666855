//! Commit latency and throughput of store writes on 1 and 3 managers, each in its own
//! network namespace (`testkit::hosts`), wired as `berth daemon` wires a cluster
//! manager: `Store::open_member` with `cluster_config` on a real disk (fsync),
//! `TlsTransport` with `port::raft_client_config`, the cluster port
//! (`port::spawn` with `port::server_config`) on the host's address, manager
//! certificates from one `pki::Ca`, and the group bootstrapped with its n voters.
//! Every socket and thread of a manager (its Raft driver, transport writers, the
//! port's tokio workers) and every client thread is made inside its host's namespace,
//! so Raft traffic crosses veths and a bridge as between hosts.
//!
//! Run as root (`bench/raft-netns.sh` builds it in release mode and runs it):
//! `store_netns [--writes 1000] [--seconds 5] [--writers 64] [--batch 64]
//! [--window 256] [--managers 1,3] [--slow-follower BITS]`.
//! The store's data goes under `BERTH_BENCH_DIR` (default: the temp dir; it must be a
//! real disk for the fsync to mean anything) and is removed at the end, as are the
//! hosts.
//!
//! What it measures, per group size, from a client on the leader's host and (n > 1)
//! on a follower's:
//! - `sequential`: `--writes` `Store::update`s one after the other, each putting one
//!   node record (latency p50/p99/max);
//! - `shared store`: `--writers` threads calling `Store::update` on the manager's one
//!   `Store` (as the daemon's API handlers and loops do) for `--seconds`;
//! - `own stores`: the same with a `Store::over` handle per thread, so transactions
//!   are proposed concurrently; every transaction carries the store's one version,
//!   so all but one of each concurrent round conflict and re-run (`retries/write`);
//! - `batched txns`: one writer, `--batch` records per `Store::update` (what the agent
//!   loop does with status reports); writes/s counts records;
//! - `raft pipeline`: `Node::propose` of encoded `Txn`s, `--window` in flight from one
//!   proposer with consecutive base versions, so they batch into shared fsyncs and all
//!   apply: the ceiling the Raft layer (TLS, namespaces, fsync) allows a store whose
//!   independent writes did not serialize on one version. Not what `Store::update`
//!   does today.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{FuturesUnordered, StreamExt};
use manager::port::{self, Port, RaftSink};
use manager::state::model::NodeRecord;
use manager::state::model::{Op, State};
use manager::state::raft::tls::TlsTransport;
use manager::state::raft::{bootstrap, Transport};
use manager::state::replicated::{StoreMachine, Txn, TxnResponse};
use manager::state::store::{cluster_config, Store, StoreError};
use pki::NodeRole;
use pki::{Ca, CertRequest, DenyList, Identity, NodeId, Role};
use raft::StateRole;
use testkit::hosts::{Cluster, Host};

/// The cluster port, as in `berth daemon`'s default.
const PORT: u16 = 7377;

#[derive(Debug, Clone)]
struct Args {
    writes: usize,
    seconds: f64,
    writers: usize,
    batch: usize,
    window: usize,
    managers: Vec<usize>,
    slow_follower: Option<u64>,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            writes: 1000,
            seconds: 5.0,
            writers: 64,
            batch: 64,
            window: 256,
            managers: vec![1, 3],
            slow_follower: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| anyhow!("{flag} needs a value (see the usage in the source)"))?;
            let bad = |e: &dyn std::fmt::Display| anyhow!("{flag} {value}: {e}");
            match flag.as_str() {
                "--writes" => args.writes = value.parse().map_err(|e| bad(&e))?,
                "--seconds" => args.seconds = value.parse().map_err(|e| bad(&e))?,
                "--writers" => args.writers = value.parse().map_err(|e| bad(&e))?,
                "--batch" => args.batch = value.parse().map_err(|e| bad(&e))?,
                "--window" => args.window = value.parse().map_err(|e| bad(&e))?,
                "--slow-follower" => args.slow_follower = Some(value.parse().map_err(|e| bad(&e))?),
                "--managers" => {
                    args.managers = value
                        .split(',')
                        .map(|n| n.trim().parse())
                        .collect::<Result<_, _>>()
                        .map_err(|e| bad(&e))?
                }
                other => bail!(
                    "unknown option {other}; options: --writes --seconds --writers --batch \
                     --window --managers --slow-follower"
                ),
            }
        }
        if args.writes == 0 || args.writers == 0 || args.batch == 0 || args.window == 0 {
            bail!("--writes, --writers, --batch and --window must be at least 1");
        }
        if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
            bail!(
                "--seconds {}: give a duration from 0 to 3600 seconds, e.g. 5",
                args.seconds
            );
        }
        if args.managers.iter().any(|&n| n == 0 || n > 7) {
            bail!("--managers takes group sizes from 1 to 7, e.g. 1,3");
        }
        Ok(args)
    }
}

/// One manager in its host: its store (over its Raft node), its cluster port, and the
/// tokio runtime the port runs on (its workers live in the host's namespace).
struct Manager {
    store: Arc<Store>,
    port: Option<Port>,
    rt: Option<tokio::runtime::Runtime>,
}

/// n managers in n hosts. Dropping it stops the nodes and ports, then removes the hosts
/// and the store directories.
struct Group {
    managers: Vec<Manager>,
    cluster: Cluster,
    data: tempfile::TempDir,
}

fn node_id(raft_id: u64) -> Result<NodeId> {
    NodeId::new(&format!("m{raft_id}")).map_err(|e| anyhow!("node id m{raft_id}: {e}"))
}

impl Group {
    fn start(n: usize, data_root: &Path) -> Result<Group> {
        let cluster = Cluster::new(n).context("make the network-namespace hosts (run as root)")?;
        let data = tempfile::Builder::new()
            .prefix("berth-store-netns-")
            .tempdir_in(data_root)
            .with_context(|| format!("make a data directory in {}", data_root.display()))?;
        let ca = Ca::create(SystemTime::now()).context("make the cluster CA")?;
        let ids: Vec<u64> = (1..=n as u64).collect();
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| SocketAddr::from((cluster.addr(i), PORT)))
            .collect();
        let mut group = Group {
            managers: Vec::new(),
            cluster,
            data,
        };
        for (i, &raft_id) in ids.iter().enumerate() {
            let dir = group.data.path().join(format!("m{raft_id}"));
            // What `berth cluster init` leaves for the first manager; here all n start
            // as voters (the learner-then-voter path is the daemon's membership loop).
            bootstrap(&dir.join("raft"), &ids, &StoreMachine::default())
                .with_context(|| format!("bootstrap the Raft group in {}", dir.display()))?;
            let creds = ca
                .issue(
                    &CertRequest::new(Identity::new(node_id(raft_id)?, Role::Manager))
                        .address(group.cluster.addr(i).to_string()),
                    SystemTime::now(),
                )
                .context("issue a manager certificate")?;
            let host = group.cluster.host(i);
            let peers: Vec<(u64, NodeId, SocketAddr)> = ids
                .iter()
                .zip(&addrs)
                .filter(|(&p, _)| p != raft_id)
                .map(|(&p, &a)| Ok((p, node_id(p)?, a)))
                .collect::<Result<_>>()?;
            let manager = host
                .run_in(|| start_manager(raft_id, &dir, &creds, peers, addrs[i]))
                .context("enter the host's network namespace")??;
            group.managers.push(manager);
        }
        Ok(group)
    }

    fn host(&self, i: usize) -> &Host {
        self.cluster.host(i)
    }

    /// Waits until one manager leads and every other follows it; its index.
    fn wait_leader(&self) -> Result<usize> {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            let st: Vec<_> = self
                .managers
                .iter()
                .map(|m| m.store.node().status())
                .collect();
            if let Some(l) = st.iter().position(|s| s.role == StateRole::Leader) {
                if st
                    .iter()
                    .all(|s| s.leader == st[l].id && s.term == st[l].term)
                {
                    return Ok(l);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("no leader elected among the managers within 20 s")
    }
}

/// Runs inside the host's namespace: every thread it starts stays there.
fn start_manager(
    raft_id: u64,
    dir: &Path,
    creds: &pki::NodeCredentials,
    peers: Vec<(u64, NodeId, SocketAddr)>,
    listen: SocketAddr,
) -> Result<Manager> {
    let deny = DenyList::new();
    let transport = TlsTransport::new(port::raft_client_config(creds, &deny)?);
    for (id, node, addr) in peers {
        transport.set_peer(id, node, addr);
    }
    let store = Arc::new(Store::open_member(
        dir,
        cluster_config(raft_id),
        transport.clone() as Arc<dyn Transport>,
    )?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the port's tokio runtime")?;
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    let sink = RaftSink::new();
    sink.set(store.node().inbox());
    let port = {
        let _guard = rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        port::spawn(
            listener,
            port::server_config(creds, &deny)?,
            sink,
            axum::Router::new(),
        )
    };
    Ok(Manager {
        store,
        port: Some(port),
        rt: Some(rt),
    })
}

impl Drop for Group {
    fn drop(&mut self) {
        for m in &mut self.managers {
            m.store.node().kill();
            if let Some(rt) = m.rt.take() {
                {
                    let _guard = rt.enter();
                    drop(m.port.take());
                }
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
        // Then `cluster` (namespaces, veths, bridge) and `data` drop, in that order.
    }
}

/// The record a write puts: node `key` with label `bench` = `value`.
fn put_record(state: &mut State, key: &str, value: u64) {
    let rec = state
        .nodes
        .entry(key.to_string())
        .or_insert_with(|| record(key));
    rec.labels.insert("bench".into(), value.to_string());
}

fn record(key: &str) -> NodeRecord {
    NodeRecord {
        id: key.to_string(),
        role: NodeRole::Worker,
        addr: format!("{}:{PORT}", Ipv4Addr::new(10, 0, 0, 1)),
        hostname: key.to_string(),
        raft_id: 0,
        joined_at: 0,
        labels: BTreeMap::new(),
        availability: Default::default(),
        platform: Default::default(),
        capacity: Default::default(),
        generic_resources: Default::default(),
    }
}

/// One measured run.
struct Run {
    what: String,
    writers: usize,
    latencies: Vec<Duration>,
    /// Records written (a batched transaction writes several).
    records: u64,
    elapsed: Duration,
    /// Closure runs (or proposals) beyond one per committed transaction: rounds lost
    /// to a conflict.
    retries: u64,
    /// Transactions that gave up (`StoreError::Conflict` after every attempt lost).
    gave_up: u64,
    leader_fsyncs: u64,
}

impl Run {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e3
    }

    fn row(&self, n: usize, on: &str) -> String {
        let txns = self.latencies.len().max(1) as f64;
        format!(
            "| {n} | {on} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {} |",
            self.what,
            self.writers,
            self.records,
            self.records as f64 / self.elapsed.as_secs_f64(),
            self.pct(0.5),
            self.pct(0.99),
            self.pct(1.0),
            self.leader_fsyncs as f64 / txns,
            self.retries as f64 / txns,
            self.gave_up,
        )
    }
}

/// `writes` transactions one after the other.
fn sequential(store: &Store, writes: usize, key: &str) -> Result<Run> {
    let mut latencies = Vec::with_capacity(writes);
    let mut calls = 0u64;
    let start = Instant::now();
    for i in 0..writes as u64 {
        let t = Instant::now();
        store.update(|s| {
            calls += 1;
            put_record(s, key, i);
            Ok(())
        })?;
        latencies.push(t.elapsed());
    }
    Ok(Run {
        what: "sequential `Store::update`".into(),
        writers: 1,
        records: writes as u64,
        elapsed: start.elapsed(),
        retries: calls - writes as u64,
        gave_up: 0,
        latencies,
        leader_fsyncs: 0,
    })
}

/// `stores.len()` threads, thread t calling `update` on `stores[t]` until `seconds`
/// pass, each transaction putting `batch` records of its own keys.
fn concurrent(stores: &[Arc<Store>], seconds: f64, batch: usize, what: &str) -> Result<Run> {
    let calls = AtomicU64::new(0);
    let gave_up = AtomicU64::new(0);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let per_thread: Vec<Result<Vec<Duration>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(t, store)| {
                let calls = &calls;
                let gave_up = &gave_up;
                scope.spawn(move || -> Result<Vec<Duration>> {
                    let mut lat = Vec::new();
                    let mut i = 0u64;
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        let r = store.update(|s| {
                            calls.fetch_add(1, Ordering::Relaxed);
                            for b in 0..batch {
                                put_record(s, &format!("w{t}-{b}"), i);
                            }
                            Ok(())
                        });
                        match r {
                            Ok(()) => lat.push(t0.elapsed()),
                            // `update` lost MAX_ATTEMPTS rounds in a row: what a caller
                            // sees as an error. Counted, and the writer goes on.
                            Err(StoreError::Conflict { .. }) => {
                                gave_up.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => return Err(e.into()),
                        }
                        i += 1;
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|p| Err(anyhow!("a writer panicked: {p:?}")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut latencies = Vec::new();
    let (mut fewest, mut most) = (usize::MAX, 0);
    for lat in per_thread {
        let lat = lat?;
        fewest = fewest.min(lat.len());
        most = most.max(lat.len());
        latencies.extend(lat);
    }
    let txns = latencies.len() as u64;
    // How evenly the writers got their turns (a fair queue gives each about as many).
    let what = if stores.len() > 1 {
        format!("{what} (per writer {fewest}-{most})")
    } else {
        what.to_string()
    };
    let gave_up = gave_up.into_inner();
    Ok(Run {
        what,
        writers: stores.len(),
        records: txns * batch as u64,
        elapsed,
        // A transaction that gave up ran its closure once per lost round, too.
        retries: calls.into_inner() - txns,
        gave_up,
        latencies,
        leader_fsyncs: 0,
    })
}

/// `window` proposals of encoded transactions in flight from one proposer, with
/// consecutive base versions so that, in log order, each applies on the one before.
/// A conflict (a proposal lost or reordered) drains the window and starts again from
/// the applied version.
fn pipeline(store: &Store, seconds: f64, window: usize) -> Result<Run> {
    let node = store.node().clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    rt.block_on(async move {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        let mut latencies = Vec::new();
        let mut retries = 0u64;
        let mut base = store.read(|s| s.version);
        let mut in_flight = FuturesUnordered::new();
        let mut draining = false;
        loop {
            while !draining && in_flight.len() < window && Instant::now() < end {
                let mut state = State::default();
                put_record(&mut state, &format!("p{}", base % window as u64), base);
                let ops: Vec<Op> = manager::state::model::diff(&State::default(), &state);
                let command = Txn {
                    base_version: base,
                    ops,
                    id: 0,
                    after: None,
                }
                .encode();
                base += 1;
                let node = node.clone();
                // FuturesUnordered polls new futures in the order they were pushed,
                // so proposals reach the node's queue in base-version order.
                in_flight.push(async move {
                    let t0 = Instant::now();
                    let r = node.propose(command).await;
                    (t0.elapsed(), r)
                });
            }
            let Some((lat, r)) = in_flight.next().await else {
                if Instant::now() >= end {
                    break;
                }
                draining = false;
                base = store.read(|s| s.version);
                continue;
            };
            match TxnResponse::decode(&r?) {
                TxnResponse::Applied { .. } => latencies.push(lat),
                TxnResponse::Conflict { .. } => {
                    retries += 1;
                    draining = true;
                }
                TxnResponse::Invalid { message } => bail!("a benchmark txn was refused: {message}"),
            }
        }
        let records = latencies.len() as u64;
        Ok(Run {
            what: format!("raft pipeline (`Node::propose` of `Txn`s, {window} in flight)"),
            writers: 1,
            records,
            elapsed: start.elapsed(),
            retries,
            gave_up: 0,
            latencies,
            leader_fsyncs: 0,
        })
    })
}

/// The disk's own fdatasync latency (p50, p99) for a 150-byte append, in `dir`.
fn fdatasync_floor(dir: &Path) -> Result<(f64, f64)> {
    use std::io::Write as _;
    let path = dir.join("berth-fsync-probe");
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&[b'x'; 150])?;
        f.sync_data()?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    std::fs::remove_file(&path)?;
    lat.sort_by(f64::total_cmp);
    Ok((lat[99], lat[197]))
}

fn fs_type(dir: &Path) -> String {
    std::process::Command::new("df")
        .arg("--output=fstype")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// Every run on a group of `n`, from a client on host `on`.
fn measure(group: &Group, n: usize, on: usize, role: &str, args: &Args) -> Result<Vec<String>> {
    let leader = group.wait_leader()?;
    let store = group.managers[on].store.clone();
    let leader_node = group.managers[leader].store.node().clone();
    let mut rows = Vec::new();
    let runs: Vec<Box<dyn Fn() -> Result<Run> + Sync + '_>> = vec![
        Box::new(|| sequential(&store, args.writes, &format!("seq-{on}"))),
        Box::new(|| {
            let shared: Vec<_> = (0..args.writers).map(|_| store.clone()).collect();
            concurrent(
                &shared,
                args.seconds,
                1,
                "`Store::update`, one shared store",
            )
        }),
        Box::new(|| {
            let own: Vec<_> = (0..args.writers)
                .map(|_| Arc::new(Store::over(store.node().clone())))
                .collect();
            concurrent(
                &own,
                args.seconds,
                1,
                "`Store::update`, a `Store::over` each",
            )
        }),
        Box::new(|| {
            concurrent(
                std::slice::from_ref(&store),
                args.seconds,
                args.batch,
                &format!("batched `Store::update` ({} records each)", args.batch),
            )
        }),
        Box::new(|| pipeline(&store, args.seconds, args.window)),
    ];
    let names = [
        "sequential",
        "one shared store",
        "a `Store::over` each",
        "batched",
        "raft pipeline",
    ];
    for (run, name) in runs.iter().zip(names) {
        let fsyncs = leader_node.status().log_syncs;
        // The client runs inside the host too, as a client of that manager would.
        let row = match group.host(on).run_in(run)? {
            Ok(mut r) => {
                r.leader_fsyncs = leader_node.status().log_syncs - fsyncs;
                r.row(n, role)
            }
            // A run that fails (a write timed out: a follower too far behind to apply
            // its own write in time) is a result too; the next run goes on.
            Err(e) => format!("| {n} | {role} | {name}: FAILED: {e} | | | | | | | | | |"),
        };
        println!("{row}");
        rows.push(row);
    }
    Ok(rows)
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    let data_root: PathBuf = std::env::var_os("BERTH_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "store over Raft in network namespaces: {} cores, load {}, data on {} ({})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        data_root.display(),
        fs_type(&data_root),
    );
    println!();
    println!(
        "| managers | client on | what | writers | writes | writes/s | p50 ms | p99 ms | max ms \
         | leader fsyncs/txn | retries/txn | gave up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &args.managers {
        let (f50, f99) = fdatasync_floor(&data_root)?;
        println!(
            "| {n} | (disk) | fdatasync of a 150-byte append, 200 times | 1 | 200 | | {f50:.2} | {f99:.2} | | | | |"
        );
        let group = Group::start(n, &data_root)?;
        let leader = group.wait_leader()?;
        for m in &group.managers {
            m.store
                .wait_ready()
                .context("wait for the store to be ready")?;
        }
        if let Some(bits) = args.slow_follower {
            if let Some(f) = (0..n).find(|&i| i != leader) {
                group.cluster.slow_link(f, bits)?;
            }
        }
        measure(&group, n, leader, "leader", &args)?;
        if let Some(f) = (0..n).find(|&i| i != leader) {
            measure(&group, n, f, "follower", &args)?;
        }
        // The replicas agree on what was written.
        let end = Instant::now() + Duration::from_secs(10);
        let agree = loop {
            let hashes: std::collections::BTreeSet<_> = group
                .managers
                .iter()
                .map(|m| (m.store.read(|s| s.version), m.store.node().hash()))
                .collect();
            if hashes.len() == 1 || Instant::now() > end {
                break hashes.len() == 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !agree {
            bail!("the {n} managers did not converge on one state after the runs");
        }
    }
    Ok(())
}

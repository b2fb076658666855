//! The manager under 1,000 nodes (issue 12's benchmark): one real `berth daemon`, made a
//! cluster's only manager, and N simulated worker nodes in this process, each joined
//! with its own certificate and talking to the manager over mutual TLS exactly as a
//! worker's daemon does (heartbeats every second, the assignments long poll, status
//! batches; see `sim.rs`). It deploys a stack of 10 tasks per node and reports the
//! manager's CPU (utime + stime of its process, as cores) and memory (VmRSS, PSS) with
//! the nodes idle, while the stack goes from deployed to all running, and in steady
//! state. Figures: `bench/dispatcher.md`.
//!
//! ```text
//! cargo build --release -p berth -p agent --bin berth --bin berth-shim
//! cargo run --release -p manager --example dispatcher_bench -- \
//!     [--nodes 1000] [--tasks-per-node 10] [--services 1] \
//!     [--connections persistent|per-request] [--window 30] [--settle 10] \
//!     [--idle 15] [--join-concurrency 8] [--ramp-limit 600] [--node-grace 10s] \
//!     [--berth target/release/berth] [--keep] [--perf PREFIX]
//! ```
//!
//! Run as root (the daemon's preflight wants cgroups and an overlayfs mount). The state
//! directory goes under `BERTH_BENCH_DIR` (default: the temp dir) and is removed at the
//! end, with the daemon killed, whatever happened, an error or SIGINT/SIGTERM included
//! (`--keep` keeps the directory and the daemon's log). `--perf PREFIX` records the manager with `perf record -g
//! --call-graph dwarf` over the idle window (`PREFIX-idle.data`), from the deploy to
//! all running (`PREFIX-ramp.data`) and over the steady-state window
//! (`PREFIX-steady.data`); perf takes CPU of its own, so the figures of such a run are
//! not the ones to quote.

mod daemon;
mod http;
mod procfs;
mod sim;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use manager::stacks::UpRequest;
use manager::state::model::State;
use spec::task::TaskState;

use daemon::Daemon;
use procfs::Mark;
use sim::{Connections, Stats};

#[derive(Debug)]
struct Args {
    nodes: usize,
    tasks_per_node: usize,
    services: usize,
    connections: Connections,
    /// Seconds of each measurement.
    window: u64,
    /// Seconds between all running and the steady-state window.
    settle: u64,
    /// Seconds of the idle window (nodes joined, nothing deployed); 0 skips it.
    idle: u64,
    join_concurrency: usize,
    /// Seconds the deploy may take to all running before the run stops.
    ramp_limit: u64,
    /// `cluster init --node-grace` (the default: the cluster's, 10 s).
    node_grace: Option<String>,
    berth: PathBuf,
    keep: bool,
    perf: Option<PathBuf>,
}

impl Args {
    fn parse() -> Result<Args> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut a = Args {
            nodes: 1000,
            tasks_per_node: 10,
            services: 1,
            connections: Connections::Persistent,
            window: 30,
            settle: 10,
            idle: 15,
            join_concurrency: 8,
            ramp_limit: 600,
            node_grace: None,
            berth: root.join("target/release/berth"),
            keep: false,
            perf: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--keep" {
                a.keep = true;
                continue;
            }
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let n = || {
                value
                    .parse::<usize>()
                    .with_context(|| format!("{flag} {value}"))
            };
            match flag.as_str() {
                "--nodes" => a.nodes = n()?,
                "--tasks-per-node" => a.tasks_per_node = n()?,
                "--services" => a.services = n()?.max(1),
                "--window" => a.window = n()? as u64,
                "--settle" => a.settle = n()? as u64,
                "--idle" => a.idle = n()? as u64,
                "--join-concurrency" => a.join_concurrency = n()?.max(1),
                "--ramp-limit" => a.ramp_limit = n()? as u64,
                "--node-grace" => a.node_grace = Some(value.clone()),
                "--berth" => a.berth = PathBuf::from(&value),
                "--perf" => a.perf = Some(PathBuf::from(&value)),
                "--connections" => {
                    a.connections = match value.as_str() {
                        "per-request" => Connections::PerRequest,
                        "persistent" => Connections::Persistent,
                        other => bail!("--connections {other}: per-request or persistent"),
                    }
                }
                other => bail!("unknown argument {other} (see the doc at the top of main.rs)"),
            }
        }
        if a.nodes == 0 || !(a.nodes * a.tasks_per_node).is_multiple_of(a.services) {
            bail!("--nodes must be > 0 and nodes x tasks-per-node a multiple of --services");
        }
        Ok(a)
    }
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    raise_nofile(args.nodes)?;
    on_interrupt();
    let daemon = Daemon::start(&args.berth, args.node_grace.as_deref(), args.keep)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        tokio::select! {
            r = run(&args, &daemon) => r,
            _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Every simulated node's connection closes before the daemon is killed.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if result.is_err() {
        eprintln!("{}", daemon.log_tail());
    }
    drop(daemon);
    result
}

/// Set by SIGINT or SIGTERM: the run stops and cleans up as on an error.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn on_interrupt() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, note_interrupt as *const () as libc::sighandler_t) };
    }
}

async fn interrupted() {
    while !INTERRUPTED.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 1,000 nodes hold 2,000 connections in the persistent mode (and this process holds
/// the other ends): the soft limit goes up to the hard one.
fn raise_nofile(nodes: usize) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    let need = (3 * nodes + 100) as u64;
    if lim.rlim_cur < need {
        bail!(
            "RLIMIT_NOFILE is {} here; {nodes} nodes need about {need} descriptors (ulimit -n)",
            lim.rlim_cur
        );
    }
    Ok(())
}

async fn run(args: &Args, d: &Daemon) -> Result<()> {
    let total = args.nodes * args.tasks_per_node;
    println!(
        "dispatcher_bench: {} nodes x {} tasks ({} service(s)), connections {:?}, node grace {}, \
         manager pid {} at {} (node {} drained)",
        args.nodes,
        args.tasks_per_node,
        args.services,
        args.connections,
        args.node_grace.as_deref().unwrap_or("10s (default)"),
        d.pid,
        d.cluster_addr,
        d.node_id
    );
    let stats = Arc::new(Stats::default());
    let pid = d.pid;

    // 1. Join every node, a few at a time.
    let before = Mark::now(pid)?;
    let nodes: Vec<sim::Node> = stream::iter(0..args.nodes)
        .map(|i| {
            sim::join(
                i,
                d.cluster_addr,
                &d.worker_token,
                args.connections,
                stats.clone(),
            )
        })
        .buffer_unordered(args.join_concurrency)
        .try_collect()
        .await?;
    let joined = before.to(&Mark::now(pid)?);
    println!("joined {} nodes: {}", nodes.len(), joined.line());

    // 2. Start them; wait until the manager recorded every node's report (its first
    //    heartbeat), then measure them idle.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for node in nodes {
        Arc::new(node).spawn(args.nodes, stopped.clone());
    }
    wait_for(
        Duration::from_secs(120),
        "every node's first heartbeat",
        || async {
            let s = state(d).await?;
            Ok(s.nodes
                .values()
                .filter(|n| !n.platform.os.is_empty())
                .count()
                > args.nodes)
        },
    )
    .await?;
    if args.idle > 0 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let perf = Perf::start(args.perf.as_deref(), pid, "idle")?;
        let idle = measure(pid, args.idle, &stats).await?;
        perf.stop();
        println!(
            "idle, {} nodes heartbeating, no task:\n{}\n  nodes down: {}",
            args.nodes,
            idle.text(),
            nodes_down(d).await?
        );
    }

    // 3. Deploy: PUT /v1/stacks/dbench, as `berth up -d` sends it.
    let rss_before_deploy = procfs::status_field(pid, "VmRSS").unwrap_or(0);
    let counts = stats.counts();
    stats.take_latencies();
    let perf = Perf::start(args.perf.as_deref(), pid, "ramp")?;
    let start = Mark::now(pid)?;
    deploy(d, args).await?;
    let mut last = start;
    while stats.running.load(Ordering::SeqCst) < total {
        if !procfs::alive(pid) {
            bail!("the manager died during the deploy");
        }
        let now = Mark::now(pid)?;
        let so_far = start.to(&now);
        if so_far.wall >= args.ramp_limit as f64 {
            let c = stats.counts() - counts;
            bail!(
                "not all {total} tasks ran within {} s (--ramp-limit): {} running in the \
                 nodes' views, {} assigned (replacements included)\n  CPU: {}\n  RSS {:.1} MB, \
                 peak {:.1} MB\n  {} status batches taken; errors: {} heartbeat, {} poll, {} \
                 status (last: {:?})",
                args.ramp_limit,
                stats.running.load(Ordering::SeqCst),
                stats.assigned.load(Ordering::SeqCst),
                so_far.line(),
                procfs::status_field(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0,
                procfs::status_field(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0,
                c.batches,
                c.heartbeat_errors,
                c.poll_errors,
                c.batch_errors,
                stats.last_error()
            );
        }
        if last.to(&now).wall >= 10.0 {
            let c = stats.counts() - counts;
            println!(
                "  ... {:.0} s: {} running, {} assigned in the nodes' views; {} batches; \
                 errors: {} heartbeat, {} poll, {} status; manager {:.2} cores over the last \
                 {:.0} s, RSS {:.0} MB",
                so_far.wall,
                stats.running.load(Ordering::SeqCst),
                stats.assigned.load(Ordering::SeqCst),
                c.batches,
                c.heartbeat_errors,
                c.poll_errors,
                c.batch_errors,
                last.to(&now).manager,
                last.to(&now).wall,
                procfs::status_field(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0,
            );
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp = start.to(&Mark::now(pid)?);
    perf.stop();
    let ramp_counts = stats.counts() - counts;
    let ramp_lat = Latency::of(stats.take_latencies());
    let s = state(d).await?;
    let running = s
        .tasks
        .values()
        .filter(|t| t.node.is_some() && t.status.state() == TaskState::Running)
        .count();
    println!(
        "deploy to all {total} running: {:.1} s (the store: {} tasks, {running} running)\n  \
         CPU: {}\n  RSS {:.1} MB before the deploy, {:.1} MB at the end, peak {:.1} MB\n  \
         {} status batches, {} views, {} handshakes; heartbeats {}; errors: {} heartbeat, \
         {} poll, {} status",
        ramp.wall,
        s.tasks.len(),
        ramp.line(),
        rss_before_deploy as f64 / 1024.0,
        procfs::status_field(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0,
        procfs::status_field(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0,
        ramp_counts.batches,
        ramp_counts.views,
        ramp_counts.handshakes,
        ramp_lat.text(),
        ramp_counts.heartbeat_errors,
        ramp_counts.poll_errors,
        ramp_counts.batch_errors,
    );

    // 4. Steady state.
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let perf = Perf::start(args.perf.as_deref(), pid, "steady")?;
    let steady = measure(pid, args.window, &stats).await?;
    perf.stop();
    println!(
        "steady state, {} nodes, {total} tasks running:\n{}\n  nodes down: {}",
        args.nodes,
        steady.text(),
        nodes_down(d).await?
    );
    let s = state(d).await?;
    let down_or_moved = s.tasks.len() != total;
    println!(
        "the store at the end: version {}, {} nodes, {} tasks{}",
        s.version,
        s.nodes.len(),
        s.tasks.len(),
        if down_or_moved {
            " (more than deployed: some were replaced)"
        } else {
            ""
        }
    );
    let _ = stop.send(true);
    Ok(())
}

/// `perf record` of the manager over one phase, if asked.
struct Perf(Option<std::process::Child>);

impl Perf {
    fn start(prefix: Option<&std::path::Path>, pid: i32, phase: &str) -> Result<Perf> {
        let Some(prefix) = prefix else {
            return Ok(Perf(None));
        };
        let out = format!("{}-{phase}.data", prefix.display());
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-F",
                "199",
                "-g",
                "--call-graph",
                "dwarf,16384",
                "-p",
            ])
            .arg(pid.to_string())
            .args(["-o", &out])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("start perf record")?;
        Ok(Perf(Some(child)))
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for Perf {
    /// perf writes its file on SIGINT; also on an error half-way.
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: plain integers; the pid is the perf this process started.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

/// The stack: `--services` services of `image: dbench/none` (it need not exist: no
/// node starts anything) sharing nodes x tasks-per-node replicas, loaded from a
/// Compose file as `berth up` loads it and sent as `berth up -d` sends it (without
/// `up`'s local image check, which would want the image in the daemon's store).
async fn deploy(d: &Daemon, args: &Args) -> Result<()> {
    let dir = d.state().with_file_name("project");
    std::fs::create_dir_all(&dir)?;
    let replicas = args.nodes * args.tasks_per_node / args.services;
    let mut text = String::from("name: dbench\nservices:\n");
    for i in 0..args.services {
        text += &format!(
            "  s{i}:\n    image: dbench/none:latest\n    deploy:\n      replicas: {replicas}\n"
        );
    }
    let file = dir.join("compose.yaml");
    std::fs::write(&file, text)?;
    let project = spec::load(&spec::LoadOptions {
        files: vec![file],
        working_dir: dir,
        environment: BTreeMap::new(),
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("the bench's compose file: {e}"))?;
    let req = UpRequest {
        record: manager::deploy::record_for(&project, project.stack.clone()),
        remove_orphans: false,
        force_recreate: false,
        no_recreate: false,
    };
    let mut api = http::unix(&d.socket()).await?;
    let (status, body) = api
        .request(
            "PUT",
            "/v1/stacks/dbench",
            Some(&serde_json::to_vec(&req)?),
            true,
        )
        .await?;
    if status != 200 {
        bail!("deploy: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// How many nodes the leader counts as down (`GET /v1/nodes`, what `berth node ls`
/// shows).
async fn nodes_down(d: &Daemon) -> Result<usize> {
    let mut api = http::unix(&d.socket()).await?;
    let (status, body) = api.request("GET", "/v1/nodes", None, true).await?;
    if status != 200 {
        bail!("GET /v1/nodes: {status} {}", String::from_utf8_lossy(&body));
    }
    let views: Vec<manager::cluster::ops::NodeView> = serde_json::from_slice(&body)?;
    Ok(views.iter().filter(|v| v.status == "down").count())
}

/// The daemon's whole state (`GET /v1/state`, what `berth ps` reads).
async fn state(d: &Daemon) -> Result<State> {
    let mut api = http::unix(&d.socket()).await?;
    let (status, body) = api.request("GET", "/v1/state", None, true).await?;
    if status != 200 {
        bail!("GET /v1/state: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

async fn wait_for<F, Fut>(limit: Duration, what: &str, mut done: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    while !done().await? {
        if Instant::now() > deadline {
            bail!("waited {limit:?} for {what}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// A measurement window: CPU over the whole of it and per second, memory sampled
/// every second.
struct Window {
    cpu: procfs::Cpu,
    per_second: Vec<f64>,
    rss_kb: Vec<u64>,
    pss_kb: u64,
    hwm_kb: u64,
    threads: u64,
    counts: sim::Counts,
    latency: Latency,
}

async fn measure(pid: i32, seconds: u64, stats: &Stats) -> Result<Window> {
    let counts = stats.counts();
    stats.take_latencies();
    let first = Mark::now(pid)?;
    let mut prev = first;
    let (mut per_second, mut rss_kb) = (Vec::new(), Vec::new());
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = Mark::now(pid)?;
        per_second.push(prev.to(&m).manager);
        rss_kb.push(procfs::status_field(pid, "VmRSS").unwrap_or(0));
        prev = m;
    }
    Ok(Window {
        cpu: first.to(&prev),
        per_second,
        rss_kb,
        pss_kb: procfs::pss_kb(pid).unwrap_or(0),
        hwm_kb: procfs::status_field(pid, "VmHWM").unwrap_or(0),
        threads: procfs::status_field(pid, "Threads").unwrap_or(0),
        counts: stats.counts() - counts,
        latency: Latency::of(stats.take_latencies()),
    })
}

impl Window {
    fn text(&self) -> String {
        let mb = |kb: u64| kb as f64 / 1024.0;
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let rss_mean = self.rss_kb.iter().sum::<u64>() / self.rss_kb.len().max(1) as u64;
        let secs = self.cpu.wall;
        format!(
            "  CPU: {}\n  manager per second: min {:.3}, max {:.3} cores\n  \
             memory: RSS {:.1} MB (mean; {:.1}-{:.1}), PSS {:.1} MB, peak RSS {:.1} MB, \
             {} threads\n  per second: {:.0} heartbeats ({}), {:.1} views, {:.1} unchanged \
             polls, {:.1} handshakes; errors: {} heartbeat, {} poll",
            self.cpu.line(),
            min(&self.per_second),
            max(&self.per_second),
            mb(rss_mean),
            mb(*self.rss_kb.iter().min().unwrap_or(&0)),
            mb(*self.rss_kb.iter().max().unwrap_or(&0)),
            mb(self.pss_kb),
            mb(self.hwm_kb),
            self.threads,
            self.counts.heartbeats as f64 / secs,
            self.latency.text(),
            self.counts.views as f64 / secs,
            self.counts.unchanged as f64 / secs,
            self.counts.handshakes as f64 / secs,
            self.counts.heartbeat_errors,
            self.counts.poll_errors,
        )
    }
}

/// Heartbeat round trips as the nodes saw them.
struct Latency(Vec<u32>);

impl Latency {
    fn of(mut us: Vec<u32>) -> Latency {
        us.sort_unstable();
        Latency(us)
    }

    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no heartbeat".into();
        }
        let p = |q: f64| self.0[((self.0.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        format!(
            "round trip p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            p(0.5),
            p(0.99),
            p(1.0)
        )
    }
}

//! Commit latency and throughput of the Raft core with fsync, 1 node and 3 nodes over
//! TCP on 127.0.0.1, and linearizable (ReadIndex) reads on a follower, in one process (`bench/raft.sh` runs it with BERTH_RAFT_BENCH=1
//! in release mode). Without that variable it runs a small smoke version, which checks
//! that every write is acknowledged and the figures are computed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use manager::state::raft::kv::{Kv, KvCommand, KvResponse};
use manager::state::raft::{LocalCluster, NodeConfig};

struct Run {
    label: String,
    latencies: Vec<Duration>,
    elapsed: Duration,
    fsyncs: u64,
}

impl Run {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn line(&self, what: &str) -> String {
        let mut line = format!(
            "{:<38} {what}={:<6} p50={:>7.3}ms p99={:>7.3}ms throughput={:>7.0}/s",
            self.label,
            self.latencies.len(),
            self.pct(0.50).as_secs_f64() * 1e3,
            self.pct(0.99).as_secs_f64() * 1e3,
            self.throughput(),
        );
        if what == "writes" {
            line += &format!(
                " leader-fsyncs/write={:.3}",
                self.fsyncs as f64 / self.latencies.len() as f64
            );
        }
        line
    }
}

/// `clients` concurrent linearizable readers (ReadIndex, then a local read) on a
/// follower, `reads` in all.
fn measure_reads(c: &LocalCluster<Kv>, label: &str, clients: usize, reads: usize) -> Run {
    let leader = c
        .wait_leader(&c.ids(), Duration::from_secs(10))
        .expect("a leader");
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap_or(leader);
    let node = c.node(follower).expect("follower node");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (node, counter) = (node.clone(), counter.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while (counter.fetch_add(1, Ordering::Relaxed) as usize) < reads {
                    let t = Instant::now();
                    let n = node
                        .read(|kv| kv.values.len())
                        .await
                        .expect("read answered");
                    lat.push(t.elapsed());
                    assert!(n > 0);
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        all
    });
    Run {
        label: format!("{label} clients={clients}"),
        latencies,
        elapsed: start.elapsed(),
        fsyncs: 0,
    }
}

/// `clients` concurrent writers, each writing its share of `writes` one after the
/// other through the leader (values of 100 bytes).
fn measure(c: &LocalCluster<Kv>, label: &str, clients: usize, writes: usize) -> Run {
    let leader = c
        .wait_leader(&c.ids(), Duration::from_secs(10))
        .expect("a leader");
    let node = c.node(leader).expect("leader node");
    let fsyncs_before = node.status().log_syncs;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let counter = Arc::new(AtomicU64::new(0));
    let value = "x".repeat(100);
    let start = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (node, counter, value) = (node.clone(), counter.clone(), value.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    if i as usize >= writes {
                        return lat;
                    }
                    let cmd = KvCommand::Put {
                        key: format!("key{i}"),
                        value: value.clone(),
                    }
                    .encode();
                    let t = Instant::now();
                    let resp = node.propose(cmd).await.expect("write acknowledged");
                    lat.push(t.elapsed());
                    assert!(KvResponse::decode(&resp).expect("response").ok);
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        all
    });
    let elapsed = start.elapsed();
    Run {
        label: format!("{label} clients={clients}"),
        latencies,
        elapsed,
        fsyncs: node.status().log_syncs - fsyncs_before,
    }
}

/// The disk's own fdatasync latency (p50, p99) for a small append: the floor under a
/// write's latency, printed with the results because it varies with the machine's load.
fn fdatasync_floor(dir: &std::path::Path) -> (Duration, Duration) {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let mut lat: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&[b'x'; 150]).expect("probe write");
            f.sync_data().expect("probe fdatasync");
            t.elapsed()
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    lat.sort_unstable();
    (lat[99], lat[197])
}

#[test]
fn commit_latency_and_throughput() {
    let full = std::env::var_os("BERTH_RAFT_BENCH").is_some();
    let (light, heavy, clients) = if full {
        (2000, 30_000, 256)
    } else {
        (50, 400, 32)
    };
    // A real disk, not a tmpfs: the point is the fsync.
    let base = std::env::var_os("BERTH_RAFT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let cfg = NodeConfig {
        tick: Duration::from_millis(10),
        ..NodeConfig::new(0)
    };
    let mut runs = Vec::new();
    let mut reads = Vec::new();
    let (f50, f99) = fdatasync_floor(&base);
    println!(
        "raft bench: the disk alone: fdatasync of a 150-byte append p50={:.3}ms p99={:.3}ms",
        f50.as_secs_f64() * 1e3,
        f99.as_secs_f64() * 1e3
    );
    {
        let tmp = tempfile::tempdir_in(&base).unwrap();
        let c = LocalCluster::<Kv>::start(tmp.path(), &[1], cfg.clone()).unwrap();
        runs.push(measure(&c, "1 node", 1, light));
        runs.push(measure(&c, "1 node", clients, heavy));
    }
    {
        let tmp = tempfile::tempdir_in(&base).unwrap();
        let c = LocalCluster::<Kv>::start_tcp(tmp.path(), &[1, 2, 3], cfg.clone()).unwrap();
        runs.push(measure(&c, "3 nodes, tcp 127.0.0.1", 1, light));
        runs.push(measure(&c, "3 nodes, tcp 127.0.0.1", clients, heavy));
        assert!(c.wait_converged(Duration::from_secs(10)));
        reads.push(measure_reads(&c, "reads on a follower, tcp", 1, light));
        reads.push(measure_reads(
            &c,
            "reads on a follower, tcp",
            clients,
            heavy,
        ));
    }
    for r in &runs {
        println!("raft bench: {}", r.line("writes"));
        assert_eq!(
            r.latencies.len(),
            if r.label.contains("clients=1 ") || r.label.ends_with("clients=1") {
                light
            } else {
                heavy
            }
        );
        assert!(r.pct(0.5) <= r.pct(0.99));
        assert!(r.throughput() > 0.0);
    }
    for r in &reads {
        println!("raft bench: {}", r.line("reads"));
        assert!(r.latencies.len() == light || r.latencies.len() == heavy);
        assert!(r.pct(0.5) <= r.pct(0.99));
    }
    // Concurrent writers share fsyncs (the whole point of batching a Ready).
    let heavy_1 = &runs[1];
    assert!(
        heavy_1.fsyncs * 2 < heavy as u64,
        "{} fsyncs for {heavy} concurrent writes",
        heavy_1.fsyncs
    );
}

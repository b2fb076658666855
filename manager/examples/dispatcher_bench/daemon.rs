//! The manager under test: a real `berth daemon` (the release binary) on a temporary
//! state directory, made a cluster's only manager with `berth cluster init`, drained
//! so that its own agent takes no task. Dropping it kills the daemon and removes what
//! it made (state directory, cgroup parent), whatever happened before.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use manager::cluster::ops::ClusterStatus;

pub struct Daemon {
    berth: PathBuf,
    tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// Unique to this run, so that nothing it makes meets another daemon's.
    cgroup_parent: String,
    net_prefix: String,
    net_pool: String,
    pub pid: i32,
    pub cluster_addr: std::net::SocketAddr,
    pub node_id: String,
    pub worker_token: String,
    keep: bool,
}

impl Daemon {
    /// Starts the daemon, makes it a cluster manager at `127.0.0.1:<free port>` (with
    /// `--node-grace grace`, if given) and drains its node.
    pub fn start(berth: &Path, grace: Option<&str>, keep: bool) -> Result<Daemon> {
        let shim = berth.with_file_name("berth-shim");
        if !berth.is_file() || !shim.is_file() {
            bail!(
                "{} or {} is missing: build them with `cargo build --release -p berth -p agent \
                 --bin berth --bin berth-shim` (or give --berth PATH)",
                berth.display(),
                shim.display()
            );
        }
        let base = std::env::var_os("BERTH_BENCH_DIR").map_or(std::env::temp_dir(), PathBuf::from);
        let tmp = tempfile::Builder::new()
            .prefix("berth-dbench-")
            .tempdir_in(&base)
            .with_context(|| format!("make a temporary directory in {}", base.display()))?;
        let mut d = Daemon {
            berth: berth.to_path_buf(),
            cgroup_parent: testkit::unique_name("dbench"),
            net_prefix: testkit::netns::short_prefix(),
            net_pool: format!("10.{}.0.0/16", testkit::netns::pool_octet()),
            tmp: Some(tmp),
            child: None,
            pid: 0,
            cluster_addr: "127.0.0.1:0".parse()?,
            node_id: String::new(),
            worker_token: String::new(),
            keep,
        };
        std::fs::create_dir_all(d.state())?;
        let log = std::fs::File::create(d.log_path())?;
        let child = d
            .command(&["daemon"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} daemon", d.berth.display()))?;
        d.pid = child.id() as i32;
        d.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.cli(&["ls"]).is_err() {
            if Instant::now() > deadline {
                bail!("the daemon did not answer within 30 s\n{}", d.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A free port: bound, then released for the daemon (which binds it next).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        d.cluster_addr = format!("127.0.0.1:{port}").parse()?;
        let addr = d.cluster_addr.to_string();
        let mut init = vec!["cluster", "init", "--advertise-addr", &addr];
        if let Some(grace) = grace {
            init.extend(["--node-grace", grace]);
        }
        d.cli(&init)?;
        d.worker_token = d
            .cli(&["cluster", "join-token", "-q", "worker"])?
            .trim()
            .to_string();
        let status: ClusterStatus =
            serde_json::from_str(&d.cli(&["cluster", "status", "--format", "json"])?)
                .context("cluster status --format json")?;
        d.node_id = status.node_id;
        d.cli(&["node", "update", "--availability", "drain", &d.node_id])?;
        Ok(d)
    }

    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    fn dir(&self) -> &Path {
        self.tmp
            .as_ref()
            .map_or(Path::new("/nonexistent"), |t| t.path())
    }

    pub fn socket(&self) -> PathBuf {
        self.state().join("berth.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("daemon.log")
    }

    /// The end of the daemon's log (but the line it writes per join), for an error
    /// message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.ends_with("joined as a worker"))
            .collect();
        let from = lines.len().saturating_sub(20);
        format!(
            "the daemon's log ({}), last lines:\n{}",
            self.log_path().display(),
            lines[from..].join("\n")
        )
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.berth);
        cmd.env("BERTH_CGROUP_PARENT", &self.cgroup_parent)
            .env("BERTH_NET_PREFIX", &self.net_prefix)
            .env("BERTH_NET_POOL", &self.net_pool)
            .env_remove("BERTH_HOST")
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .current_dir(self.dir());
        cmd
    }

    /// `berth ARGS` against this daemon: its standard output, or an error with its
    /// standard error.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run berth {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "berth {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The drained manager ran no container; its cgroup parent may exist all the same.
        testkit::remove_cgroup(&self.cgroup_parent);
        let left = testkit::netns::leftovers(&self.net_prefix);
        if !left.is_empty() {
            eprintln!("dispatcher_bench: the daemon left network objects: {left:?}");
        }
        if let Some(tmp) = self.tmp.take() {
            if self.keep {
                eprintln!("dispatcher_bench: kept {}", tmp.keep().display());
            }
        }
    }
}

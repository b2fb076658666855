//! Several "hosts" on one machine, for cluster tests: each host is a network namespace
//! with one veth into a bridge on the root side (the underlay), its own address, and
//! its own directory for logs and state. Processes run inside a host
//! ([`Host::spawn`]), and faults are injected between hosts ([`Cluster::partition`],
//! [`Cluster::partition_one_way`], [`Cluster::isolate`], [`Cluster::loss`],
//! [`Cluster::slow_link`]), then healed.
//!
//! Everything the cluster makes is named with one short prefix
//! ([`crate::netns::short_prefix`]) and removed when the [`Cluster`] is dropped, also
//! when the test panics: every process still inside a host namespace is killed, then
//! the veths, the bridge and the namespaces are deleted. [`leftovers`] lists what is
//! left under a prefix, so a test can assert that nothing is.
//!
//! How faults are made (and why):
//! - Drops are nftables rules in the *receiving* host's namespace (one table,
//!   [`FAULT_TABLE`], per namespace, replaced atomically by one `nft -f -` script).
//!   Dropping at the receiver is silent, as a real partition is; dropping in the
//!   sender's output hook would make `sendto` fail with EPERM, which no real network
//!   does. Rules match every packet, established connections included, so a partition
//!   also stalls connections that were open before it.
//! - Random loss is `numgen random mod 100 < P drop` on the same input chains.
//! - Delay: this kernel has no `sch_netem` (`tc qdisc add ... netem` fails with
//!   "Specified qdisc kind is unknown"), so there is no fixed added latency. What
//!   exists is `tbf` (and `htb`): [`Cluster::slow_link`] shapes a host's link to a
//!   rate in both directions (tbf on both ends of its veth), so bulk traffic is slow
//!   and queues build up delay, but a lone small packet still crosses at once.
//!
//! The pure part, which rules each host gets for a set of faults, is [`Faults`] and
//! [`Faults::nft_script`], tested without a kernel; the rest is a thin shell over `ip`,
//! `nft` and `tc` (iproute2 and nftables packages) and `setns`.
//!
//! Hosts speak IPv4 only (IPv6 is off in their namespaces), so IPv4 rules cover all
//! their traffic; ARP is never dropped (a partitioned host still resolves its peers'
//! addresses, as on a real LAN whose switch works but whose hosts drop packets).
//!
//! The underlay bridge has no address of its own: hosts reach each other at layer 2
//! only, never the root namespace, so a test's traffic stays between its own hosts.
//! Note that with `br_netfilter` loaded and `bridge-nf-call-iptables = 1`, bridged
//! packets also cross the root namespace's forward hooks: a root-side firewall that
//! drops forwarded traffic (dockerd sets the iptables FORWARD policy to DROP) breaks
//! every cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The nftables table (family `inet`) that holds a host's fault rules, inside its
/// namespace.
pub const FAULT_TABLE: &str = "berth_faults";

/// The interface name of a host's underlay link, inside its namespace.
pub const HOST_IF: &str = "eth0";

/// Where `ip netns add` puts its namespace files.
const NETNS_DIR: &str = "/run/netns";

/// What went wrong making, driving or faulting a cluster.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("{what}: running `{command}` failed: {source} (is iproute2/nftables installed? `apt-get install -y iproute2 nftables`)")]
    Spawn {
        what: String,
        command: String,
        source: io::Error,
    },
    #[error("{what}: `{command}` exited with {status}: {stderr}")]
    Command {
        what: String,
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("a cluster has {n} hosts: host {index} does not exist")]
    NoSuchHost { index: usize, n: usize },
    #[error("loss of {percent}% is not a percentage (0-100)")]
    BadPercent { percent: u8 },
    #[error("a cluster needs 1 to 250 hosts, not {n}")]
    BadSize { n: usize },
    #[error("process {name} (pid {pid}) in host {host}: {what}")]
    Process {
        name: String,
        pid: u32,
        host: usize,
        what: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> HostsError {
    let what = what.into();
    move |source| HostsError::Io { what, source }
}

/// The faults in force between the hosts of a cluster: plain data, turned into each
/// host's nftables script by [`Faults::nft_script`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// `(from, to)`: packets from host `from` to host `to` are dropped.
    pub blocked: BTreeSet<(usize, usize)>,
    /// Host index -> percent of packets lost on its link, in each direction.
    pub loss: BTreeMap<usize, u8>,
}

impl Faults {
    /// Drops traffic between `a` and `b` both ways.
    pub fn partition(&mut self, a: usize, b: usize) {
        self.partition_one_way(a, b);
        self.partition_one_way(b, a);
    }

    /// Drops packets from `from` to `to`; `to` can still send to `from`.
    pub fn partition_one_way(&mut self, from: usize, to: usize) {
        if from != to {
            self.blocked.insert((from, to));
        }
    }

    /// Cuts host `i` off from the `n - 1` others, both ways.
    pub fn isolate(&mut self, i: usize, n: usize) {
        for j in 0..n {
            self.partition(i, j);
        }
    }

    /// Restores traffic between `a` and `b`, both ways.
    pub fn heal_link(&mut self, a: usize, b: usize) {
        self.blocked.remove(&(a, b));
        self.blocked.remove(&(b, a));
    }

    /// The nftables script (for `nft -f -`) that makes host `host`'s fault table
    /// match these faults, given every host's address: it creates the table, deletes
    /// it and defines it again in one transaction, so rules never pile up and the
    /// change is atomic. With no fault for this host, the table is just removed.
    ///
    /// All rules are in the receiver's input hook: a packet from `j` to `host` is
    /// dropped if `(j, host)` is blocked, with `j`'s loss probability if `j` is lossy,
    /// and with `host`'s own loss probability if it came over the underlay. Two lossy
    /// ends compound, as two lossy links would.
    pub fn nft_script(&self, host: usize, addrs: &[Ipv4Addr]) -> String {
        let mut rules = Vec::new();
        for (j, addr) in addrs.iter().enumerate() {
            if self.blocked.contains(&(j, host)) {
                rules.push(format!("ip saddr {addr} drop"));
            }
        }
        for (&j, &percent) in &self.loss {
            if j != host {
                if let (Some(addr), Some(matcher)) = (addrs.get(j), loss_matcher(percent)) {
                    rules.push(format!("ip saddr {addr} {matcher}drop"));
                }
            }
        }
        if let Some(matcher) = self.loss.get(&host).and_then(|&p| loss_matcher(p)) {
            rules.push(format!("iifname \"{HOST_IF}\" {matcher}drop"));
        }
        let mut script =
            format!("table inet {FAULT_TABLE} {{}}\ndelete table inet {FAULT_TABLE}\n");
        if !rules.is_empty() {
            script.push_str(&format!(
                "table inet {FAULT_TABLE} {{\n  chain input {{\n    type filter hook input priority -100; policy accept;\n"
            ));
            for rule in rules {
                script.push_str(&format!("    {rule}\n"));
            }
            script.push_str("  }\n}\n");
        }
        script
    }
}

/// The nft match that selects `percent`% of packets at random, empty for 100% (every
/// packet), `None` for 0% (no rule). nft refuses `< 100` after `mod 100`.
fn loss_matcher(percent: u8) -> Option<String> {
    match percent {
        0 => None,
        100.. => Some(String::new()),
        p => Some(format!("numgen random mod 100 < {p} ")),
    }
}

/// Runs a command to completion; a failure names what it was for, the command line and
/// its stderr.
fn run(what: &str, cmd: &mut Command, stdin: Option<&str>) -> Result<Output, HostsError> {
    let command = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let spawn_err = |source| HostsError::Spawn {
        what: what.to_string(),
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(HostsError::Command {
            what: what.to_string(),
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ip(what: &str, args: &[&str]) -> Result<Output, HostsError> {
    run(what, Command::new("ip").args(args), None)
}

/// Makes `cmd` start inside the network namespace open at `netns`: `setns` in the
/// child between fork and exec. The file must stay open until the command is spawned.
fn enter_netns(cmd: &mut Command, netns: &File) {
    let fd = netns.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and makes a single
    // async-signal-safe system call on a descriptor the parent keeps open.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// One host of a [`Cluster`]: a network namespace with an address on the underlay.
#[derive(Debug)]
pub struct Host {
    index: usize,
    netns: String,
    addr: Ipv4Addr,
    /// The root-side end of its veth, in the bridge.
    outer_if: String,
    dir: PathBuf,
    spawned: AtomicU32,
}

impl Host {
    /// Its position in the cluster, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its address on the underlay (interface [`HOST_IF`]).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The name of its network namespace (as `ip netns` knows it).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The namespace file, to join with `setns` or an OCI spec.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// A directory of its own (logs of its processes, and room for their state),
    /// removed with the cluster.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_netns(&self) -> Result<File, HostsError> {
        File::open(self.netns_path()).map_err(io_err(format!(
            "host {}: opening its network namespace {}",
            self.index,
            self.netns_path().display()
        )))
    }

    /// Starts `cmd` inside this host's network namespace (the mount namespace and
    /// everything else stay the host machine's). Unless the caller set them, stdin is
    /// null and stdout/stderr go to `<dir>/<program>-<n>.stdout` and `.stderr`
    /// ([`Process::stdout`]). The returned handle kills the process when dropped.
    pub fn spawn(&self, mut cmd: Command) -> Result<Process, HostsError> {
        let program = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".to_string());
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let name = format!("{program}-{n}");
        let stdout_path = self.dir.join(format!("{name}.stdout"));
        let stderr_path = self.dir.join(format!("{name}.stderr"));
        let create = |path: &Path| {
            File::create(path).map_err(io_err(format!(
                "host {}: creating {}",
                self.index,
                path.display()
            )))
        };
        cmd.stdin(Stdio::null())
            .stdout(create(&stdout_path)?)
            .stderr(create(&stderr_path)?);
        let netns = self.open_netns()?;
        enter_netns(&mut cmd, &netns);
        let child = cmd.spawn().map_err(|source| HostsError::Spawn {
            what: format!("host {}: starting {name}", self.index),
            command: format!("{cmd:?}"),
            source,
        })?;
        Ok(Process {
            pid: child.id(),
            child,
            host: self.index,
            name,
            stdout_path,
            stderr_path,
            status: None,
        })
    }

    /// Runs `cmd` inside this host to completion and returns its output; a non-zero
    /// exit is an error carrying its stderr.
    pub fn output(&self, mut cmd: Command) -> Result<Output, HostsError> {
        let netns = self.open_netns()?;
        enter_netns(&mut cmd, &netns);
        run(&format!("host {}", self.index), &mut cmd, None)
    }

    /// Runs `f` on a new thread that has joined this host's network namespace, and
    /// returns its result. Sockets `f` creates belong to the host and stay usable from
    /// any thread afterwards: the way for a test to talk from inside a host without a
    /// process of its own.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, HostsError> {
        let netns = self.open_netns()?;
        let index = self.index;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // setns changes only the calling thread, which ends with `f`.
                    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |e| HostsError::Io {
                            what: format!("host {index}: joining its network namespace"),
                            source: e.into(),
                        },
                    )?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn nft(&self, script: &str) -> Result<(), HostsError> {
        let netns = self.open_netns()?;
        let mut cmd = Command::new("nft");
        cmd.args(["-f", "-"]);
        enter_netns(&mut cmd, &netns);
        run(
            &format!("host {}: applying fault rules", self.index),
            &mut cmd,
            Some(script),
        )
        .map(drop)
    }
}

/// A process started in a host. Dropping the handle kills it (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pid: u32,
    host: usize,
    name: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Process {
    /// Its pid (in the machine's pid namespace).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The host it runs in.
    pub fn host(&self) -> usize {
        self.host
    }

    /// `<program>-<n>`, the stem of its log files.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn error(&self, what: impl Into<String>) -> HostsError {
        HostsError::Process {
            name: self.name.clone(),
            pid: self.pid,
            host: self.host,
            what: what.into(),
        }
    }

    /// Sends `signal`; an exited (reaped) process is an error, since the pid may
    /// already be someone else's.
    pub fn signal(&self, signal: Signal) -> Result<(), HostsError> {
        if self.status.is_some() {
            return Err(self.error(format!("cannot send {signal}: it has exited")));
        }
        // The pid cannot be reused before we reap it, so this reaches our process.
        kill(Pid::from_raw(self.pid as i32), signal)
            .map_err(|e| self.error(format!("sending {signal}: {e}")))
    }

    /// `kill -9`, then waits for it: the process is gone when this returns.
    pub fn kill9(&mut self) -> Result<ExitStatus, HostsError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        self.signal(Signal::SIGKILL)?;
        self.wait()
    }

    /// SIGSTOP, and waits until the kernel reports it stopped, so it answers nothing
    /// from the moment this returns.
    pub fn stop(&self) -> Result<(), HostsError> {
        self.signal(Signal::SIGSTOP)?;
        self.wait_state(true)
    }

    /// SIGCONT, and waits until it is no longer stopped.
    pub fn cont(&self) -> Result<(), HostsError> {
        self.signal(Signal::SIGCONT)?;
        self.wait_state(false)
    }

    /// Whether the kernel reports it stopped (`T` in `/proc/<pid>/stat`).
    pub fn is_stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| {
                // "pid (comm) S ...": comm may hold spaces and parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "T"))
            })
            .unwrap_or(false)
    }

    fn wait_state(&self, stopped: bool) -> Result<(), HostsError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_stopped() != stopped {
            if Instant::now() > deadline {
                let want = if stopped { "stopped" } else { "running" };
                return Err(self.error(format!("did not become {want} within 5 s")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Its exit status if it has exited (reaping it), `None` if it is still running.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, HostsError> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| self.error(format!("waiting: {e}")))?;
        }
        Ok(self.status)
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> Result<ExitStatus, HostsError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .map_err(|e| self.error(format!("waiting: {e}")))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Waits at most `timeout` for it to exit (polling every few milliseconds).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, HostsError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// What it wrote to stdout so far (lossy UTF-8; empty if the file is gone).
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// The file its stdout goes to.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// The file its stderr goes to.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// N hosts on one underlay bridge, and the faults between them. Dropping it removes
/// everything it made (see the module doc).
#[derive(Debug)]
pub struct Cluster {
    prefix: String,
    bridge: String,
    hosts: Vec<Host>,
    /// Namespaces and links that exist (or may), in creation order, for cleanup even
    /// when `new` failed half way.
    made_netns: Vec<String>,
    made_links: Vec<String>,
    faults: Mutex<Faults>,
    slow: Mutex<BTreeSet<usize>>,
    dir: PathBuf,
    /// Removes `dir` on drop, unless the test panicked (then its logs are kept).
    tempdir: Option<tempfile::TempDir>,
    /// Held (flock) while the cluster lives: see [`sweep_stale`].
    _owner: File,
}

impl Cluster {
    /// Makes `n` hosts, `10.<pool>.0.1` to `10.<pool>.0.n` on a /24, each with loopback
    /// up. Fails (having removed what it made) if any step does.
    pub fn new(n: usize) -> Result<Cluster, HostsError> {
        if n == 0 || n > 250 {
            return Err(HostsError::BadSize { n });
        }
        for swept in sweep_stale() {
            eprintln!("testkit::hosts: removed {swept}");
        }
        let prefix = crate::netns::short_prefix();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{prefix}-"))
            .tempdir()
            .map_err(io_err("making the cluster's temporary directory"))?;
        let owner = hold_owner_lock(dir.path()).map_err(io_err(format!(
            "locking {}",
            dir.path().join(OWNER_LOCK).display()
        )))?;
        let mut cluster = Cluster {
            bridge: format!("{prefix}br"),
            prefix,
            hosts: Vec::new(),
            made_netns: Vec::new(),
            made_links: Vec::new(),
            faults: Mutex::new(Faults::default()),
            slow: Mutex::new(BTreeSet::new()),
            dir: dir.path().to_path_buf(),
            tempdir: Some(dir),
            _owner: owner,
        };
        cluster.build(n)?;
        Ok(cluster)
    }

    fn build(&mut self, n: usize) -> Result<(), HostsError> {
        let pool = crate::netns::pool_octet();
        let bridge = self.bridge.clone();
        self.made_links.push(bridge.clone());
        ip(
            "making the underlay bridge",
            &["link", "add", &bridge, "type", "bridge"],
        )?;
        ip(
            "bringing the underlay bridge up",
            &["link", "set", &bridge, "up"],
        )?;
        let root = self.dir().to_path_buf();
        for i in 0..n {
            let netns = format!("{}-h{i}", self.prefix);
            let outer = format!("{}h{i}", self.prefix);
            let addr = Ipv4Addr::new(10, pool, 0, (i + 1) as u8);
            let what = format!("making host {i} ({netns})");
            self.made_netns.push(netns.clone());
            ip(&what, &["netns", "add", &netns])?;
            disable_ipv6(&netns).map_err(io_err(format!("{what}: turning IPv6 off")))?;
            self.made_links.push(outer.clone());
            // The inner end is made directly in the namespace, already named eth0.
            ip(
                &what,
                &[
                    "link", "add", &outer, "type", "veth", "peer", "name", HOST_IF, "netns", &netns,
                ],
            )?;
            ip(&what, &["link", "set", &outer, "master", &bridge, "up"])?;
            let cidr = format!("{addr}/24");
            for args in [
                vec!["-n", &netns, "link", "set", "lo", "up"],
                vec!["-n", &netns, "addr", "add", &cidr, "dev", HOST_IF],
                vec!["-n", &netns, "link", "set", HOST_IF, "up"],
            ] {
                ip(&what, &args)?;
            }
            let dir = root.join(format!("h{i}"));
            std::fs::create_dir_all(&dir).map_err(io_err(format!(
                "host {i}: making its directory {}",
                dir.display()
            )))?;
            self.hosts.push(Host {
                index: i,
                netns,
                addr,
                outer_if: outer,
                dir,
                spawned: AtomicU32::new(0),
            });
        }
        Ok(())
    }

    /// The prefix every object of this cluster is named with (for [`leftovers`]).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cluster's temporary directory (each host has a subdirectory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All hosts, by index.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`. Panics if there is no such host: an index out of range is a bug in
    /// the test, as with slices; use [`Cluster::get`] to check.
    pub fn host(&self, i: usize) -> &Host {
        match self.hosts.get(i) {
            Some(h) => h,
            None => panic!("a cluster of {} hosts has no host {i}", self.hosts.len()),
        }
    }

    /// Host `i`, or an error naming the cluster size.
    pub fn get(&self, i: usize) -> Result<&Host, HostsError> {
        self.hosts.get(i).ok_or(HostsError::NoSuchHost {
            index: i,
            n: self.hosts.len(),
        })
    }

    /// Host `i`'s underlay address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.host(i).addr
    }

    /// The faults in force now.
    pub fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes the faults with `change` and applies the result to every host whose
    /// rules differ. On error the recorded faults are the new ones, and the error
    /// names the host that could not be updated.
    fn update(&self, change: impl FnOnce(&mut Faults)) -> Result<(), HostsError> {
        let mut faults = self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let addrs: Vec<Ipv4Addr> = self.hosts.iter().map(|h| h.addr).collect();
        let before = faults.clone();
        change(&mut faults);
        for host in &self.hosts {
            let script = faults.nft_script(host.index, &addrs);
            if script != before.nft_script(host.index, &addrs) {
                host.nft(&script)?;
            }
        }
        Ok(())
    }

    /// Drops all traffic between hosts `a` and `b`, both ways.
    pub fn partition(&self, a: usize, b: usize) -> Result<(), HostsError> {
        self.get(a)?;
        self.get(b)?;
        self.update(|f| f.partition(a, b))
    }

    /// Drops packets from `from` to `to`; packets from `to` to `from` still pass
    /// (so TCP between them fails both ways; test one-way faults with UDP or ICMP).
    pub fn partition_one_way(&self, from: usize, to: usize) -> Result<(), HostsError> {
        self.get(from)?;
        self.get(to)?;
        self.update(|f| f.partition_one_way(from, to))
    }

    /// Cuts host `i` off from every other host, both ways (its loopback still works).
    pub fn isolate(&self, i: usize) -> Result<(), HostsError> {
        self.get(i)?;
        let n = self.hosts.len();
        self.update(|f| f.isolate(i, n))
    }

    /// Restores traffic between `a` and `b`, both ways.
    pub fn heal_link(&self, a: usize, b: usize) -> Result<(), HostsError> {
        self.update(|f| f.heal_link(a, b))
    }

    /// Removes every partition (one-way ones and isolations too); loss and slow links
    /// stay.
    pub fn heal(&self) -> Result<(), HostsError> {
        self.update(|f| f.blocked.clear())
    }

    /// Removes every fault: partitions, loss and slow links.
    pub fn heal_all(&self) -> Result<(), HostsError> {
        self.update(|f| *f = Faults::default())?;
        let slow: Vec<usize> = std::mem::take(
            &mut *self
                .slow
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        for i in slow {
            self.unshape(i)?;
        }
        Ok(())
    }

    /// Host `i`'s link loses `percent`% of packets (chosen at random, independently)
    /// in each direction; 0 removes the loss.
    pub fn loss(&self, i: usize, percent: u8) -> Result<(), HostsError> {
        self.get(i)?;
        if percent > 100 {
            return Err(HostsError::BadPercent { percent });
        }
        self.update(|f| {
            if percent == 0 {
                f.loss.remove(&i);
            } else {
                f.loss.insert(i, percent);
            }
        })
    }

    /// Shapes host `i`'s link to `bits_per_sec` in each direction with a token bucket
    /// (`tc qdisc replace ... tbf`, on both ends of its veth): bulk transfers slow
    /// down and queue, packets beyond about one second of queue are dropped. There is
    /// no fixed added delay: this kernel has no netem (see the module doc).
    pub fn slow_link(&self, i: usize, bits_per_sec: u64) -> Result<(), HostsError> {
        let host = self.get(i)?;
        let rate = format!("{}bit", bits_per_sec.max(8_000));
        // The bucket must hold at least one full frame or nothing ever passes.
        let burst = (bits_per_sec / 8 / 100).max(1600).to_string();
        let args = [
            "qdisc", "replace", "dev", "", "root", "tbf", "rate", &rate, "burst", &burst,
            "latency", "1s",
        ];
        let mut inner = args;
        inner[3] = HOST_IF;
        let mut cmd = Command::new("tc");
        cmd.args(inner);
        host.output(cmd)?;
        let mut outer = args;
        outer[3] = &host.outer_if;
        run(
            &format!("host {i}: shaping its link"),
            Command::new("tc").args(outer),
            None,
        )?;
        self.slow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(i);
        Ok(())
    }

    fn unshape(&self, i: usize) -> Result<(), HostsError> {
        let host = self.get(i)?;
        let mut cmd = Command::new("tc");
        cmd.args(["qdisc", "del", "dev", HOST_IF, "root"]);
        host.output(cmd)?;
        run(
            &format!("host {i}: unshaping its link"),
            Command::new("tc").args(["qdisc", "del", "dev", &host.outer_if, "root"]),
            None,
        )
        .map(drop)
    }

    /// Kills every process whose network namespace is one of this cluster's (the
    /// processes tests started, and whatever those started), and waits until they are
    /// gone, for at most a few seconds.
    pub fn kill_all(&self) {
        let inodes: BTreeSet<u64> = self
            .made_netns
            .iter()
            .filter_map(|n| netns_inode(&Path::new(NETNS_DIR).join(n)))
            .collect();
        kill_in_netns(&inodes);
    }
}

/// SIGKILLs every process in these namespaces until none is left (at most a few
/// seconds: a process in uninterruptible sleep may outlast it).
fn kill_in_netns(inodes: &BTreeSet<u64>) {
    if inodes.is_empty() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_in_netns(inodes);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Turns IPv6 off in a new namespace, before its interface exists: hosts speak IPv4
/// only, so the IPv4 fault rules cover all their traffic, and no link-local chatter
/// (duplicate address detection, router solicitations) crosses the underlay.
fn disable_ipv6(netns: &str) -> io::Result<()> {
    let file = File::open(Path::new(NETNS_DIR).join(netns))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // /proc/sys/net is the namespace of the thread that opens it.
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                for conf in ["all", "default"] {
                    std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The inode of a namespace file (its identity, as `/proc/<pid>/ns/net` shows it).
fn netns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Live processes (zombies have left their namespaces) in any of these namespaces.
fn pids_in_netns(inodes: &BTreeSet<u64>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
                })
                .is_some_and(|ino: u64| inodes.contains(&ino))
        })
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        // Deleting a veth's root end deletes both ends at once (deleting the namespace
        // would remove it too, but later, asynchronously).
        for link in self.made_links.iter().rev() {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
        for netns in self.made_netns.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", netns])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(dir) = self.tempdir.take() {
            if std::thread::panicking() {
                // Keep the logs of a failed test: they are what explains the failure.
                // Without the lock file, no sweep takes them for a crashed cluster's.
                let _ = std::fs::remove_file(dir.path().join(OWNER_LOCK));
                let path = dir.keep();
                eprintln!(
                    "cluster {}: logs kept in {} (the test panicked)",
                    self.prefix,
                    path.display()
                );
            }
        }
    }
}

/// A cluster's directory is `<temp dir>/berth-<prefix>-<random>`.
const DIR_PREFIX: &str = "berth-";

/// The file in a cluster's directory that its owning process holds locked (flock)
/// until the cluster is dropped. The kernel releases the lock when the process dies
/// however it dies, so an unlocked one names a cluster whose owner was killed before
/// its `Drop` could run (a test killed by a timeout, `kill -9`).
const OWNER_LOCK: &str = "owner.lock";

/// `flock(LOCK_EX | LOCK_NB)`: whether the lock was taken.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor this function borrows; no memory is involved.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(true)
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

/// Makes `dir/owner.lock` already locked: locked under another name, then renamed,
/// so no sweep can ever see it unlocked.
fn hold_owner_lock(dir: &Path) -> io::Result<File> {
    let fresh = dir.join(".owner.lock.new");
    let file = File::create(&fresh)?;
    if !try_lock(&file)? {
        return Err(io::Error::other(
            "a file just made is locked by someone else",
        ));
    }
    std::fs::rename(&fresh, dir.join(OWNER_LOCK))?;
    Ok(file)
}

/// The cluster prefix in a directory name `berth-tXXXXX-...`, if it is one.
fn prefix_of_dir(name: &str) -> Option<&str> {
    let prefix = name.strip_prefix(DIR_PREFIX)?.get(..6)?;
    let is_prefix = prefix.starts_with('t')
        && prefix[1..].bytes().all(|b| b.is_ascii_hexdigit())
        && name.as_bytes().get(DIR_PREFIX.len() + 6) == Some(&b'-');
    is_prefix.then_some(prefix)
}

/// Removes what clusters whose owning process died without dropping them left
/// (processes, links, namespaces, their directory), and returns what it removed.
/// [`Cluster::new`] calls it, so a test run killed half way is cleaned up by the next
/// one. Clusters of live processes, and the kept logs of panicked tests, are left
/// alone.
pub fn sweep_stale() -> Vec<String> {
    let mut swept = Vec::new();
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return swept;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(prefix) = prefix_of_dir(&name) else {
            continue;
        };
        let Ok(lock) = File::open(entry.path().join(OWNER_LOCK)) else {
            continue;
        };
        if !try_lock(&lock).unwrap_or(false) {
            continue;
        }
        remove_by_prefix(prefix);
        let _ = std::fs::remove_dir_all(entry.path());
        swept.push(format!(
            "the cluster {prefix} of a process that died ({})",
            entry.path().display()
        ));
    }
    swept
}

/// Kills the processes in, and deletes, every namespace and root-side link named
/// with `prefix`.
fn remove_by_prefix(prefix: &str) {
    let netns: Vec<PathBuf> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    let inodes: BTreeSet<u64> = netns.iter().filter_map(|p| netns_inode(p)).collect();
    kill_in_netns(&inodes);
    for left in crate::netns::leftovers(prefix) {
        if let Some(link) = left.strip_prefix("link ") {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
    for path in netns {
        if let Some(name) = path.file_name() {
            let _ = Command::new("ip")
                .arg("netns")
                .arg("del")
                .arg(name)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// What is left on the machine under `prefix`: links and root nftables tables
/// ([`crate::netns::leftovers`]), network namespaces, and processes inside them.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut out = crate::netns::leftovers(prefix);
    let mut inodes = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                inodes.extend(netns_inode(&entry.path()));
                out.push(format!("netns {name}"));
            }
        }
    }
    for pid in pids_in_netns(&inodes) {
        out.push(format!("process {pid}"));
    }
    out
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes; returns
/// whether it held. For waiting on a cluster to converge without fixed sleeps.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<Ipv4Addr> {
        (1..=3).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect()
    }

    #[test]
    fn cluster_directories_are_recognized_by_their_prefix() {
        assert_eq!(prefix_of_dir("berth-t1a2b3-XyZ123"), Some("t1a2b3"));
        assert_eq!(prefix_of_dir("berth-t1a2bz-XyZ123"), None);
        assert_eq!(prefix_of_dir("berth-t1a2b3"), None);
        assert_eq!(prefix_of_dir("berth-t1234-0-net"), None);
        assert_eq!(prefix_of_dir("other"), None);
    }

    #[test]
    fn no_fault_removes_the_table() {
        let script = Faults::default().nft_script(0, &addrs());
        assert_eq!(
            script,
            "table inet berth_faults {}\ndelete table inet berth_faults\n"
        );
    }

    #[test]
    fn a_partition_drops_at_both_receivers_and_nowhere_else() {
        let mut f = Faults::default();
        f.partition(0, 1);
        assert!(f.nft_script(0, &addrs()).contains("ip saddr 10.1.0.2 drop"));
        assert!(f.nft_script(1, &addrs()).contains("ip saddr 10.1.0.1 drop"));
        assert!(!f.nft_script(2, &addrs()).contains("drop"));
        f.heal_link(1, 0);
        assert_eq!(f, Faults::default());
    }

    #[test]
    fn a_one_way_partition_drops_only_at_the_receiver() {
        let mut f = Faults::default();
        f.partition_one_way(0, 2);
        assert!(!f.nft_script(0, &addrs()).contains("drop"));
        assert!(f.nft_script(2, &addrs()).contains("ip saddr 10.1.0.1 drop"));
    }

    #[test]
    fn isolate_blocks_every_pair_with_the_host_but_not_itself() {
        let mut f = Faults::default();
        f.isolate(1, 3);
        let expected: BTreeSet<_> = [(0, 1), (1, 0), (1, 2), (2, 1)].into();
        assert_eq!(f.blocked, expected);
    }

    #[test]
    fn loss_rules_are_on_the_lossy_host_and_on_its_peers() {
        let mut f = Faults::default();
        f.loss.insert(1, 30);
        let own = f.nft_script(1, &addrs());
        assert!(own.contains("iifname \"eth0\" numgen random mod 100 < 30 drop"));
        let peer = f.nft_script(0, &addrs());
        assert!(peer.contains("ip saddr 10.1.0.2 numgen random mod 100 < 30 drop"));
        // 100% is a plain drop (nft refuses `< 100` after `mod 100`).
        f.loss.insert(1, 100);
        assert!(f.nft_script(1, &addrs()).contains("iifname \"eth0\" drop"));
    }
}

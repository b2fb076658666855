//! Several "hosts" on one machine, for cluster tests: each host is a network namespace
//! with one veth into a bridge on the root side (the underlay), its own address, and
//! its own directory for logs and state. Processes run inside a host
//! ([`Host::spawn`]), and faults are injected between hosts ([`Cluster::partition`],
//! [`Cluster::partition_one_way`], [`Cluster::isolate`], [`Cluster::loss`],
//! [`Cluster::slow_link`], [`Cluster::freeze`]), then healed.
//!
//! ```
//! # fn main() -> Result<(), testkit::hosts::HostsError> {
//! use std::net::TcpStream;
//! use std::process::Command;
//! use std::time::Duration;
//! use testkit::hosts::{poll_until, Cluster};
//!
//! let cluster = Cluster::new(3)?;
//! let mut servers = Vec::new();
//! for host in cluster.hosts() {
//!     // In cluster tests, a `berth` manager with its state in `host.dir()`.
//!     let mut cmd = Command::new("/bin/busybox");
//!     cmd.args(["httpd", "-f", "-p", "8080", "-h"]).arg(host.dir());
//!     servers.push(host.spawn(cmd)?);
//! }
//! let addr0 = (cluster.addr(0), 8080);
//! let reachable = || cluster.host(1).run_in(|| TcpStream::connect(addr0).is_ok());
//! assert!(poll_until(Duration::from_secs(10), || reachable().unwrap_or(false)));
//! cluster.isolate(0)?; // host 0 is cut off from 1 and 2
//! servers[2].kill9()?; // and host 2's server crashes
//! cluster.heal_all()?;
//! // Dropping `servers` and `cluster` kills and removes everything.
//! # Ok(())
//! # }
//! ```
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

mod cleanup;
mod faults;
mod process;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use cleanup::{leftovers, sweep_stale};
pub use faults::Faults;
pub use process::Process;

use cleanup::{
    hold_owner_lock, kill_in_netns, netns_inode, pids_in_netns, sweep_stale as sweep, DIR_PREFIX,
    OWNER_LOCK,
};
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
    #[error("{what}: running `{command}` failed: {source}{hint}")]
    Spawn {
        what: String,
        command: String,
        source: io::Error,
        /// What to do about it, when known (a missing tool: which package has it).
        hint: String,
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

fn cmd_program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// A failure to start `program`, with the package to install when it is one of the
/// tools the harness itself runs.
fn spawn_error(what: String, program: String, command: String, source: io::Error) -> HostsError {
    let hint = match (source.kind(), program.as_str()) {
        (io::ErrorKind::NotFound, "ip" | "tc") => {
            " (install iproute2: apt-get install -y iproute2)"
        }
        (io::ErrorKind::NotFound, "nft") => " (install nftables: apt-get install -y nftables)",
        _ => "",
    };
    HostsError::Spawn {
        what,
        command,
        source,
        hint: hint.to_string(),
    }
}

/// Runs a command to completion; a failure names what it was for, the command line and
/// its stderr.
fn run(what: &str, cmd: &mut Command, stdin: Option<&str>) -> Result<Output, HostsError> {
    let command = format!("{cmd:?}");
    let program = cmd_program(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let spawn_err =
        |source| spawn_error(what.to_string(), program.clone(), command.clone(), source);
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
    /// everything else stay the host machine's). Its stdin is null and its
    /// stdout/stderr go to `<dir>/<program>-<n>.stdout` and `.stderr`
    /// ([`Process::stdout`]), replacing whatever `cmd` had: logs are always on disk,
    /// so they survive the process and explain a failed test. The returned handle
    /// kills the process when dropped.
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
        let child = cmd.spawn().map_err(|source| {
            spawn_error(
                format!("host {}: starting {name}", self.index),
                cmd_program(&cmd),
                format!("{cmd:?}"),
                source,
            )
        })?;
        Ok(Process::new(
            child,
            self.index,
            name,
            stdout_path,
            stderr_path,
        ))
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
        for swept in sweep() {
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

    /// The pids of the live processes in host `i` (those tests started and whatever
    /// those started).
    pub fn pids(&self, i: usize) -> Result<Vec<i32>, HostsError> {
        let host = self.get(i)?;
        let inode = netns_inode(&host.netns_path()).ok_or_else(|| HostsError::Io {
            what: format!("host {i}: reading its namespace file"),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        Ok(pids_in_netns(&BTreeSet::from([inode])))
    }

    /// Freezes host `i` as a paused VM would be: SIGSTOP to every process in it. Its
    /// network stack still answers ARP and completes TCP handshakes, but nothing it
    /// runs does anything until [`Cluster::thaw`]. Processes started later are not
    /// frozen.
    pub fn freeze(&self, i: usize) -> Result<(), HostsError> {
        self.signal_host(i, Signal::SIGSTOP)
    }

    /// Resumes every process of host `i` (SIGCONT).
    pub fn thaw(&self, i: usize) -> Result<(), HostsError> {
        self.signal_host(i, Signal::SIGCONT)
    }

    fn signal_host(&self, i: usize, signal: Signal) -> Result<(), HostsError> {
        for pid in self.pids(i)? {
            // A process that exited meanwhile is no error.
            let _ = kill(Pid::from_raw(pid), signal);
        }
        Ok(())
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

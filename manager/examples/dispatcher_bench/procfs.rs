//! What a process costs, read from /proc: CPU time (utime + stime), resident and
//! proportional memory, threads; and the whole machine's busy time, to tell the
//! manager's share from the bench's own and from whatever else runs on the host.

use std::time::Instant;

use anyhow::{Context, Result};

/// Clock ticks per second (`/proc/<pid>/stat` counts CPU time in them).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no pointer is involved.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User plus system CPU time of process `pid` (all its threads), in ticks.
pub fn cpu_ticks(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name may hold spaces: the fields start after its closing ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Whether process `pid` still runs (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| Some(t.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

/// A `kB` (or plain count) field of /proc/<pid>/status, e.g. `VmRSS`, `VmHWM`,
/// `Threads`.
pub fn status_field(pid: i32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field(&text, key)
}

/// `Pss` of /proc/<pid>/smaps_rollup, in kB: resident memory with shared pages divided
/// among the processes that map them.
pub fn pss_kb(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field(&text, "Pss")
}

fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The machine's busy and total time since boot, in ticks (all CPUs, from /proc/stat).
pub fn machine_ticks() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// A point in time for CPU figures: the manager's, this process's and the machine's
/// counters.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    at: Instant,
    manager: u64,
    bench: u64,
    busy: u64,
    total: u64,
}

impl Mark {
    pub fn now(manager: i32) -> Result<Mark> {
        let (busy, total) = machine_ticks()?;
        Ok(Mark {
            at: Instant::now(),
            manager: cpu_ticks(manager)?,
            bench: cpu_ticks(std::process::id() as i32)?,
            busy,
            total,
        })
    }

    /// CPU used from `self` to `later`, as cores (CPU seconds per wall second).
    pub fn to(&self, later: &Mark) -> Cpu {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let hz = ticks_per_second();
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / hz / wall;
        let cpus = (later.total.saturating_sub(self.total) as f64 / hz / wall).max(1e-9);
        Cpu {
            wall,
            manager: cores(self.manager, later.manager),
            bench: cores(self.bench, later.bench),
            machine: cores(self.busy, later.busy),
            cpus,
        }
    }
}

/// CPU over an interval, in cores.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    pub wall: f64,
    pub manager: f64,
    pub bench: f64,
    /// Every process on the machine.
    pub machine: f64,
    /// How many CPUs the machine has (from its total time).
    pub cpus: f64,
}

impl Cpu {
    pub fn manager_seconds(&self) -> f64 {
        self.manager * self.wall
    }

    pub fn line(&self) -> String {
        format!(
            "manager {:.3} cores ({:.2} CPU s in {:.2} s); bench {:.2} cores; \
             machine busy {:.2} of {:.0} cores (others: {:.2})",
            self.manager,
            self.manager_seconds(),
            self.wall,
            self.bench,
            self.machine,
            self.cpus,
            (self.machine - self.manager - self.bench).max(0.0)
        )
    }
}

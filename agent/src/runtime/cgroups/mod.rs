//! Cgroups: one cgroup per container (`berth/<id>` by default), with its limits
//! (memory with swap, cpu, cpuset, pids, and device access: v1's devices controller,
//! an eBPF program on v2, both from `devices.rs`), its statistics and
//! its OOM kills, and its removal (killing whatever is left first).
//!
//! Both layouts are supported and chosen at run time by [`Hierarchy::detect`]: cgroup
//! v2 when `/sys/fs/cgroup` is a cgroup2 mount, else v1 controllers under it (hybrid
//! hosts have an empty cgroup2 at `/sys/fs/cgroup/unified`, which berth ignores). The
//! root is a parameter, so unit tests run the same code against fixture files in a
//! temporary directory.

pub mod bpf;
pub mod devices;
pub mod v1;
pub mod v2;

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

/// A cgroup file or directory that could not be read, written, created or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup: {0}")]
    Unsupported(String),
    /// The v2 device filter could not be set up: the container must not start
    /// without it. `step` names the system call that failed.
    #[error("cgroup {path}: {step}: {source}")]
    DeviceFilter {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl CgroupError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CgroupError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The limits berth applies, read from the spec's `linux.resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Bytes; the container is OOM-killed above it.
    pub memory_limit: Option<i64>,
    /// Memory + swap in bytes (OCI's v1 meaning); when unset with a memory limit, it
    /// equals the limit: no swap, so the limit is real.
    pub memory_swap: Option<i64>,
    pub memory_reservation: Option<i64>,
    /// v1's `memory.swappiness` (0-100); v2 has none (runc ignores it there too).
    pub memory_swappiness: Option<u64>,
    /// v1's `memory.oom_control` (Docker's --oom-kill-disable); v2 has none.
    pub disable_oom_killer: bool,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// v1's `cpu.rt_period_us` and `cpu.rt_runtime_us` (real-time group scheduling);
    /// v2 has none.
    pub cpu_rt_period: Option<u64>,
    pub cpu_rt_runtime: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub pids_limit: Option<i64>,
    /// The spec's device rules, in order; the defaults are added where they are
    /// applied ([`devices::effective_rules`]).
    pub devices: Vec<devices::DeviceRule>,
    pub block_io: BlockIo,
}

/// Block I/O: a weight (10-1000, v1's scale), weights per device and throttles per
/// device, each device as `(major, minor)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockIo {
    pub weight: Option<u16>,
    pub weight_device: Vec<((i64, i64), u16)>,
    pub read_bps: Vec<((i64, i64), u64)>,
    pub write_bps: Vec<((i64, i64), u64)>,
    pub read_iops: Vec<((i64, i64), u64)>,
    pub write_iops: Vec<((i64, i64), u64)>,
}

impl BlockIo {
    fn from_spec(b: &oci_spec::runtime::LinuxBlockIo) -> BlockIo {
        let throttles = |l: &Option<Vec<oci_spec::runtime::LinuxThrottleDevice>>| {
            l.iter()
                .flatten()
                .map(|t| ((t.major(), t.minor()), t.rate()))
                .collect()
        };
        BlockIo {
            weight: b.weight().filter(|w| *w > 0),
            weight_device: (b.weight_device().iter().flatten())
                .filter_map(|d| Some(((d.major(), d.minor()), d.weight()?)))
                .collect(),
            read_bps: throttles(b.throttle_read_bps_device()),
            write_bps: throttles(b.throttle_write_bps_device()),
            read_iops: throttles(b.throttle_read_iops_device()),
            write_iops: throttles(b.throttle_write_iops_device()),
        }
    }

    /// cgroup v2's `io.max` lines: one per device, its limits together.
    pub fn io_max_lines(&self) -> Vec<String> {
        let mut by_dev: std::collections::BTreeMap<(i64, i64), Vec<String>> = Default::default();
        for (key, list) in [
            ("rbps", &self.read_bps),
            ("wbps", &self.write_bps),
            ("riops", &self.read_iops),
            ("wiops", &self.write_iops),
        ] {
            for (dev, rate) in list {
                by_dev
                    .entry(*dev)
                    .or_default()
                    .push(format!("{key}={rate}"));
            }
        }
        by_dev
            .into_iter()
            .map(|((ma, mi), limits)| format!("{ma}:{mi} {}", limits.join(" ")))
            .collect()
    }
}

/// v1's blkio weight (10-1000) on v2's io.weight scale (1-10000), as runc converts it.
pub fn blkio_weight_to_io_weight(w: u16) -> u64 {
    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
}

impl Resources {
    /// Reads the spec's resources, refusing the ones berth does not apply yet (rather
    /// than running the container without them).
    pub fn from_spec(r: &LinuxResources) -> Result<Resources, CgroupError> {
        let unsupported = |what: &str| {
            Err(CgroupError::Unsupported(format!(
                "linux.resources.{what} is not supported yet"
            )))
        };
        if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
            return unsupported("hugepageLimits");
        }
        if r.network().is_some() {
            return unsupported("network");
        }
        if r.rdma().as_ref().is_some_and(|h| !h.is_empty()) {
            return unsupported("rdma");
        }
        if r.unified().as_ref().is_some_and(|h| !h.is_empty()) {
            return unsupported("unified");
        }
        let mut res = Resources::default();
        if let Some(m) = r.memory() {
            res.memory_limit = m.limit().filter(|l| *l > 0);
            res.memory_swap = m.swap().filter(|s| *s != 0);
            res.memory_reservation = m.reservation().filter(|l| *l > 0);
            // kernel and kernelTCP are deprecated in the runtime spec and the kernel
            // (no kmem limits since 6.1 on v1, none ever on v2): ignored, as runc does.
            res.memory_swappiness = m.swappiness().filter(|s| *s <= 100);
            res.disable_oom_killer = m.disable_oom_killer() == Some(true);
        }
        if let Some(c) = r.cpu() {
            res.cpu_shares = c.shares().filter(|s| *s > 0);
            res.cpu_quota = c.quota().filter(|q| *q != 0);
            res.cpu_period = c.period().filter(|p| *p > 0);
            res.cpuset_cpus = c.cpus().clone().filter(|s| !s.is_empty());
            res.cpuset_mems = c.mems().clone().filter(|s| !s.is_empty());
            res.cpu_rt_period = c.realtime_period().filter(|p| *p > 0);
            res.cpu_rt_runtime = c.realtime_runtime().filter(|r| *r != 0);
        }
        res.pids_limit = r.pids().map(|p| p.limit());
        if let Some(b) = r.block_io() {
            res.block_io = BlockIo::from_spec(b);
        }
        for d in r.devices().iter().flatten() {
            res.devices.push(devices::DeviceRule::from_spec(
                d.allow(),
                d.typ().map(|t| t.as_str().chars().next().unwrap_or('a')),
                d.major(),
                d.minor(),
                d.access().as_deref(),
            )?);
        }
        Ok(res)
    }
}

/// Usage counters, for `berth stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub memory_bytes: u64,
    pub cpu_nanos: u64,
}

/// Which cgroup layout this host has, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One directory per controller under `root` (`root/memory`, `root/pids`...).
    V1 { root: PathBuf },
    /// The unified hierarchy mounted at `root`.
    V2 { root: PathBuf },
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

impl Hierarchy {
    /// The layout of this host's `/sys/fs/cgroup`.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let root = PathBuf::from("/sys/fs/cgroup");
        let stat = nix::sys::statfs::statfs(&root)
            .map_err(|e| CgroupError::io(&root, std::io::Error::from(e)))?;
        if stat.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC {
            Ok(Hierarchy::V2 { root })
        } else {
            Ok(Hierarchy::V1 { root })
        }
    }
}

/// A container's cgroup, created with its limits applied.
#[derive(Debug)]
pub enum Cgroup {
    V1(v1::CgroupV1),
    V2(v2::CgroupV2),
}

impl Cgroup {
    /// Creates the cgroup `rel` (relative to the hierarchy's root, e.g. `berth/<id>`)
    /// and applies `res` to it.
    pub fn create(h: &Hierarchy, rel: &Path, res: &Resources) -> Result<Cgroup, CgroupError> {
        match h {
            Hierarchy::V1 { root } => v1::CgroupV1::create(root, rel, res).map(Cgroup::V1),
            Hierarchy::V2 { root } => {
                v2::CgroupV2::create(root, rel, res, &bpf::KernelBpf).map(Cgroup::V2)
            }
        }
    }

    /// An existing cgroup `rel` (a container's, to join or remove); nothing is created.
    pub fn open(h: &Hierarchy, rel: &Path) -> Cgroup {
        match h {
            Hierarchy::V1 { root } => Cgroup::V1(v1::CgroupV1::open(root, rel)),
            Hierarchy::V2 { root } => Cgroup::V2(v2::CgroupV2::open(root, rel)),
        }
    }

    /// The processes in the cgroup (host pids), for `top`.
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = match self {
            Cgroup::V1(c) => c
                .dir("pids")
                .or_else(|| c.dir("memory"))
                .ok_or_else(|| CgroupError::Unsupported("no pids or memory controller".into()))?
                .to_path_buf(),
            Cgroup::V2(c) => c.dir().to_path_buf(),
        };
        let path = dir.join("cgroup.procs");
        let text = std::fs::read_to_string(&path).map_err(|e| CgroupError::io(&path, e))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Freezes or thaws every process of the cgroup (`pause`/`unpause`): the v1
    /// freezer controller, or v2's `cgroup.freeze`.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let (path, value) = match self {
            Cgroup::V1(c) => (
                c.dir("freezer")
                    .ok_or_else(|| {
                        CgroupError::Unsupported("the freezer controller is not mounted".into())
                    })?
                    .join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
            Cgroup::V2(c) => (
                c.dir().join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            ),
        };
        std::fs::write(&path, value).map_err(|e| CgroupError::io(&path, e))
    }

    /// Moves process `pid` (and its future children) into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        match self {
            Cgroup::V1(c) => c.add(pid),
            Cgroup::V2(c) => c.add(pid),
        }
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        match self {
            Cgroup::V1(c) => c.stats(),
            Cgroup::V2(c) => c.stats(),
        }
    }

    /// How many processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        match self {
            Cgroup::V1(c) => c.oom_kills(),
            Cgroup::V2(c) => c.oom_kills(),
        }
    }

    /// Kills what is left in the cgroup and removes it.
    pub fn delete(&self) -> Result<(), CgroupError> {
        match self {
            Cgroup::V1(c) => c.delete(),
            Cgroup::V2(c) => c.delete(),
        }
    }
}

/// Writes `value` to the cgroup file `path`.
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|e| CgroupError::io(path, e))
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| CgroupError::io(path, e))
}

/// The value of `key` in a flat-keyed file (`key value` lines: memory.events,
/// memory.oom_control, cpu.stat).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Kills every process listed in `procs_file` until it lists none, then removes `dir`.
/// A cgroup whose last process is exiting refuses rmdir (EBUSY) for a moment: retried.
pub(crate) fn kill_and_remove(dir: &Path, procs_file: &Path) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    for _ in 0..1000 {
        let procs = read(procs_file).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => return Err(CgroupError::io(dir, e)),
        }
    }
    Err(CgroupError::io(
        dir,
        std::io::Error::from_raw_os_error(libc::EBUSY),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files() {
        let text = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n";
        assert_eq!(keyed(text, "oom_kill"), Some(2));
        assert_eq!(keyed(text, "oom"), Some(1));
        assert_eq!(keyed(text, "absent"), None);
    }

    #[test]
    fn resources_from_spec_refuse_what_is_not_applied() {
        let json = r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}"#;
        let r: LinuxResources = serde_json::from_str(json).unwrap();
        let e = Resources::from_spec(&r).unwrap_err().to_string();
        assert!(e.contains("hugepageLimits"), "{e}");

        // Block I/O: read, and written per version (io.max groups a device's limits).
        let json = r#"{"blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 200}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 40}, {"major": 7, "minor": 0, "rate": 9}]}}"#;
        let r: LinuxResources = serde_json::from_str(json).unwrap();
        let b = Resources::from_spec(&r).unwrap().block_io;
        assert_eq!(b.weight, Some(500));
        assert_eq!(b.weight_device, [((8, 0), 200)]);
        assert_eq!(
            b.io_max_lines(),
            ["7:0 wiops=9", "8:0 rbps=1048576 wiops=40"]
        );
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(1000), 10000);

        let json = r#"{"memory": {"limit": 33554432}, "pids": {"limit": 10},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
            "devices": [{"allow": false, "access": "rwm"},
                        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}"#;
        let r: LinuxResources = serde_json::from_str(json).unwrap();
        let res = Resources::from_spec(&r).unwrap();
        assert_eq!(res.memory_limit, Some(32 << 20));
        assert_eq!(res.pids_limit, Some(10));
        assert_eq!(res.cpu_quota, Some(50000));
        assert_eq!(res.cpuset_cpus.as_deref(), Some("0"));
        let lines: Vec<_> = res
            .devices
            .iter()
            .map(|d| (d.allow, d.v1_lines()))
            .collect();
        assert_eq!(
            lines,
            vec![(false, vec!["a".into()]), (true, vec!["c 1:3 rwm".into()])]
        );
    }
}

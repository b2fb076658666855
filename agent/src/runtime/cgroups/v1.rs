//! cgroup v1: one directory per controller (`<root>/memory/berth/<id>`,
//! `<root>/pids/berth/<id>`...).

use std::path::{Path, PathBuf};

use super::devices::{self, DeviceKind, DeviceRule};
use super::{keyed, kill_and_remove, read, write, CgroupError, Resources, Stats};

/// The controllers berth creates its cgroup in, when the host has them.
pub const CONTROLLERS: &[&str] = &[
    "memory", "cpu", "cpuacct", "cpuset", "pids", "devices", "freezer", "blkio",
];

/// A container's cgroup in each v1 controller.
#[derive(Debug)]
pub struct CgroupV1 {
    /// (controller, directory) for every controller the host has.
    dirs: Vec<(String, PathBuf)>,
    /// The distinct directories: controllers mounted together (`cpu,cpuacct`) share one.
    unique: Vec<PathBuf>,
}

impl CgroupV1 {
    pub fn create(root: &Path, rel: &Path, res: &Resources) -> Result<CgroupV1, CgroupError> {
        let cg = Self::open(root, rel);
        for (controller, dir) in &cg.dirs {
            if cg.unique.contains(dir) {
                create_levels(&root.join(controller), rel, controller == "cpuset")?;
            }
        }
        if let Err(e) = cg.apply(res) {
            let _ = cg.delete();
            return Err(e);
        }
        Ok(cg)
    }

    /// The cgroup `rel` as it is (for joining or removing an existing one): nothing is
    /// created.
    pub fn open(root: &Path, rel: &Path) -> CgroupV1 {
        let mut dirs: Vec<(String, PathBuf)> = Vec::new();
        let mut unique = Vec::new();
        let mut seen = Vec::new();
        for controller in CONTROLLERS {
            let base = root.join(controller);
            let Ok(real) = base.canonicalize() else {
                continue;
            };
            let dir = base.join(rel);
            dirs.push((controller.to_string(), dir.clone()));
            if !seen.contains(&real) {
                seen.push(real);
                unique.push(dir);
            }
        }
        CgroupV1 { dirs, unique }
    }

    /// The directory of `controller` (or of the mount it shares), if the host has it.
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find_map(|(c, d)| (c == controller).then_some(d.as_path()))
    }

    fn need(&self, controller: &str) -> Result<&Path, CgroupError> {
        self.dir(controller).ok_or_else(|| {
            CgroupError::Unsupported(format!(
                "the {controller} controller is not mounted on this host"
            ))
        })
    }

    /// Writes the limits. Order matters where the kernel checks one file against
    /// another: the memory limit before memory+swap, the period before the quota.
    pub fn apply(&self, res: &Resources) -> Result<(), CgroupError> {
        if let Some(limit) = res.memory_limit {
            let dir = self.need("memory")?;
            write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            // Without swap accounting the file is absent and there is no swap to limit.
            if memsw.exists() {
                let swap = res.memory_swap.unwrap_or(limit);
                write(&memsw, &swap.to_string())?;
            }
        }
        if let Some(swappiness) = res.memory_swappiness {
            write(
                &self.need("memory")?.join("memory.swappiness"),
                &swappiness.to_string(),
            )?;
        }
        if res.disable_oom_killer {
            write(&self.need("memory")?.join("memory.oom_control"), "1")?;
        }
        if let Some(r) = res.memory_reservation {
            write(
                &self.need("memory")?.join("memory.soft_limit_in_bytes"),
                &r.to_string(),
            )?;
        }
        if let Some(shares) = res.cpu_shares {
            write(&self.need("cpu")?.join("cpu.shares"), &shares.to_string())?;
        }
        if let Some(period) = res.cpu_period {
            write(
                &self.need("cpu")?.join("cpu.cfs_period_us"),
                &period.to_string(),
            )?;
        }
        if let Some(quota) = res.cpu_quota {
            write(
                &self.need("cpu")?.join("cpu.cfs_quota_us"),
                &quota.to_string(),
            )?;
        }
        if res.cpu_rt_period.is_some() || res.cpu_rt_runtime.is_some() {
            let dir = self.need("cpu")?;
            let rt = |file: &str, value: String| {
                let path = dir.join(file);
                if !path.exists() {
                    return Err(CgroupError::Unsupported(format!(
                        "{file} is absent: this kernel has no real-time group scheduling (CONFIG_RT_GROUP_SCHED), so cpu_rt_period and cpu_rt_runtime cannot be set"
                    )));
                }
                write(&path, &value).map_err(|e| match e {
                    CgroupError::Io { path, source } => CgroupError::Unsupported(format!(
                        "write {value} to {}: {source} (a real-time runtime must fit in its parent's: give the parent cgroup a budget in its cpu.rt_runtime_us, as dockerd's --cpu-rt-runtime does)",
                        path.display()
                    )),
                    other => other,
                })
            };
            if let Some(period) = res.cpu_rt_period {
                rt("cpu.rt_period_us", period.to_string())?;
            }
            if let Some(runtime) = res.cpu_rt_runtime {
                rt("cpu.rt_runtime_us", runtime.to_string())?;
            }
        }
        if let Some(cpus) = &res.cpuset_cpus {
            write(&self.need("cpuset")?.join("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = &res.cpuset_mems {
            write(&self.need("cpuset")?.join("cpuset.mems"), mems)?;
        }
        if let Some(limit) = res.pids_limit {
            let value = if limit > 0 {
                limit.to_string()
            } else {
                "max".into()
            };
            write(&self.need("pids")?.join("pids.max"), &value)?;
        }
        let b = &res.block_io;
        if *b != super::BlockIo::default() {
            let dir = self.need("blkio")?;
            // A weight needs a proportional I/O scheduler (CFQ, BFQ); without one the
            // files are absent and Docker discards the weight with a warning: so does
            // berth. Throttles work with any scheduler.
            let weight_file = ["blkio.weight", "blkio.bfq.weight"]
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.exists());
            if b.weight.is_some() || !b.weight_device.is_empty() {
                match &weight_file {
                    None => eprintln!(
                        "berth: this kernel's block I/O scheduler has no weights (blkio.weight is absent): blkio_config weights discarded, as Docker does"
                    ),
                    Some(file) => {
                        if let Some(w) = b.weight {
                            write(file, &w.to_string())?;
                        }
                        let device_file = file.with_file_name(format!(
                            "{}_device",
                            file.file_name().and_then(|n| n.to_str()).unwrap_or("blkio.weight")
                        ));
                        for ((ma, mi), w) in &b.weight_device {
                            write(&device_file, &format!("{ma}:{mi} {w}"))?;
                        }
                    }
                }
            }
            for (file, list) in [
                ("blkio.throttle.read_bps_device", &b.read_bps),
                ("blkio.throttle.write_bps_device", &b.write_bps),
                ("blkio.throttle.read_iops_device", &b.read_iops),
                ("blkio.throttle.write_iops_device", &b.write_iops),
            ] {
                for ((ma, mi), rate) in list {
                    write(&dir.join(file), &format!("{ma}:{mi} {rate}"))?;
                }
            }
        }
        if let Some(dir) = self.dir("devices") {
            // Without spec rules the container still gets only the defaults (runc's
            // behaviour): everything is denied first.
            let deny_all = DeviceRule {
                allow: false,
                kind: DeviceKind::All,
                major: None,
                minor: None,
                access: devices::ACC_MKNOD | devices::ACC_READ | devices::ACC_WRITE,
            };
            let spec: &[DeviceRule] = if res.devices.is_empty() {
                std::slice::from_ref(&deny_all)
            } else {
                &res.devices
            };
            for rule in devices::effective_rules(spec) {
                let file = if rule.allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                for line in rule.v1_lines() {
                    write(&dir.join(file), &line)?;
                }
            }
        }
        Ok(())
    }

    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.unique {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let number = |path: PathBuf| -> Result<u64, CgroupError> {
            Ok(read(&path)?.trim().parse().unwrap_or(0))
        };
        Ok(Stats {
            memory_bytes: number(self.need("memory")?.join("memory.usage_in_bytes"))?,
            cpu_nanos: number(self.need("cpuacct")?.join("cpuacct.usage"))?,
        })
    }

    /// OOM kills from `memory.oom_control` (`oom_kill`, kernel >= 4.13).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let Some(dir) = self.dir("memory") else {
            return Ok(0);
        };
        let text = read(&dir.join("memory.oom_control"))?;
        Ok(keyed(&text, "oom_kill").unwrap_or(0))
    }

    pub fn delete(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in &self.unique {
            if let Err(e) = kill_and_remove(dir, &dir.join("cgroup.procs")) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Creates `base/rel` one level at a time. A new cpuset cgroup starts with no cpus and
/// no memory nodes, and refuses processes until given some: each new level copies its
/// parent's.
fn create_levels(base: &Path, rel: &Path, cpuset: bool) -> Result<(), CgroupError> {
    let mut dir = base.to_path_buf();
    for comp in rel.components() {
        let parent = dir.clone();
        dir.push(comp);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CgroupError::io(&dir, e)),
        }
        if cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let mine = dir.join(file);
                if read(&mine).unwrap_or_default().trim().is_empty() {
                    write(&mine, read(&parent.join(file))?.trim())?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake v1 root: controller directories with the files the kernel would show.
    fn fixture() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for c in ["memory", "cpu", "cpuacct", "cpuset", "pids"] {
            std::fs::create_dir(t.path().join(c)).unwrap();
        }
        std::fs::write(t.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(t.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        t
    }

    #[test]
    fn limits_land_in_the_right_files() {
        let t = fixture();
        let rel = Path::new("berth/c1");
        // memsw exists only with swap accounting: pre-create it as the kernel would.
        std::fs::create_dir_all(t.path().join("memory/berth/c1")).unwrap();
        std::fs::write(
            t.path().join("memory/berth/c1/memory.memsw.limit_in_bytes"),
            "",
        )
        .unwrap();
        let res = Resources {
            memory_limit: Some(32 << 20),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(512),
            pids_limit: Some(0),
            ..Resources::default()
        };
        let cg = CgroupV1::create(t.path(), rel, &res).unwrap();
        let file = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(file("memory/berth/c1/memory.limit_in_bytes"), "33554432");
        assert_eq!(
            file("memory/berth/c1/memory.memsw.limit_in_bytes"),
            "33554432"
        );
        assert_eq!(file("cpu/berth/c1/cpu.cfs_quota_us"), "50000");
        assert_eq!(file("cpu/berth/c1/cpu.cfs_period_us"), "100000");
        assert_eq!(file("cpu/berth/c1/cpu.shares"), "512");
        assert_eq!(file("pids/berth/c1/pids.max"), "max");
        assert_eq!(file("cpuset/berth/cpuset.cpus"), "0-1");
        assert_eq!(file("cpuset/berth/c1/cpuset.mems"), "0");

        std::fs::write(
            t.path().join("memory/berth/c1/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills().unwrap(), 1);
        cg.add(42).unwrap();
        assert_eq!(file("pids/berth/c1/cgroup.procs"), "42");
    }

    /// Device rules reach devices.allow / devices.deny in order: the spec's, then the
    /// defaults; a spec without rules is denied everything first. (A fixture file keeps
    /// only the last line written; the kernel's keeps them all.)
    #[test]
    fn device_rules_are_written_spec_first_then_defaults() {
        let t = fixture();
        std::fs::create_dir(t.path().join("devices")).unwrap();
        let rel = Path::new("c");
        let spec_rule = DeviceRule {
            allow: false,
            kind: DeviceKind::Block,
            major: Some(8),
            minor: None,
            access: devices::ACC_READ,
        };
        let file = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
        let res = Resources {
            devices: vec![spec_rule],
            ..Resources::default()
        };
        CgroupV1::create(t.path(), rel, &res).unwrap();
        assert_eq!(file("devices/c/devices.deny"), "b 8:* r");
        assert_eq!(file("devices/c/devices.allow"), "c 10:200 rwm");

        CgroupV1::create(t.path(), Path::new("d"), &Resources::default()).unwrap();
        assert_eq!(file("devices/d/devices.deny"), "a");
        assert_eq!(file("devices/d/devices.allow"), "c 10:200 rwm");
    }
}

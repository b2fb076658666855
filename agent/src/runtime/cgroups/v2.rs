//! cgroup v2: one directory in the unified hierarchy (`<root>/berth/<id>`), with the
//! controllers it needs enabled in every ancestor's `cgroup.subtree_control`.
//!
//! v2 has no devices controller: device rules are an eBPF program attached to the
//! directory (`devices.rs` assembles it, `bpf.rs` loads and attaches it). It is
//! attached to every container's cgroup, with or without rules in the spec, and a
//! container whose program cannot be attached is not created.

use std::path::{Path, PathBuf};

use super::bpf::DeviceFilter;
use super::devices;
use super::{keyed, kill_and_remove, read, write, CgroupError, Resources, Stats};

/// The controllers berth enables for its cgroups, when the host offers them.
const WANTED: &[&str] = &["cpu", "cpuset", "memory", "pids"];

/// A container's cgroup in the unified hierarchy.
#[derive(Debug)]
pub struct CgroupV2 {
    dir: PathBuf,
}

/// OCI's cpu shares (v1, 2..262144, default 1024) as a v2 weight (1..10000, default
/// 100), with runc's formula so both runtimes agree.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

impl CgroupV2 {
    /// Creates the cgroup and applies `res`, its device rules through `filter`.
    pub fn create(
        root: &Path,
        rel: &Path,
        res: &Resources,
        filter: &dyn DeviceFilter,
    ) -> Result<CgroupV2, CgroupError> {
        let mut dir = root.to_path_buf();
        for comp in rel.components() {
            enable_controllers(&dir)?;
            dir.push(comp);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CgroupError::io(&dir, e)),
            }
        }
        let cg = CgroupV2 { dir };
        if let Err(e) = cg.apply(res, filter) {
            let _ = cg.delete();
            return Err(e);
        }
        Ok(cg)
    }

    /// The cgroup `rel` as it is: nothing is created.
    pub fn open(root: &Path, rel: &Path) -> CgroupV2 {
        CgroupV2 {
            dir: root.join(rel),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn apply(&self, res: &Resources, filter: &dyn DeviceFilter) -> Result<(), CgroupError> {
        let f = |name: &str| self.dir.join(name);
        // First: no process is in the cgroup yet, and none may be before it holds.
        let program = devices::program(&devices::effective_rules(&res.devices));
        filter.attach(&self.dir, &program)?;
        if let Some(limit) = res.memory_limit {
            write(&f("memory.max"), &limit.to_string())?;
            // OCI's swap is memory + swap; v2 limits swap alone.
            let swap = match res.memory_swap {
                Some(-1) => "max".to_string(),
                Some(total) => (total - limit).max(0).to_string(),
                None => "0".to_string(),
            };
            if f("memory.swap.max").exists() {
                write(&f("memory.swap.max"), &swap)?;
            }
        }
        if let Some(r) = res.memory_reservation {
            write(&f("memory.low"), &r.to_string())?;
        }
        if let Some(shares) = res.cpu_shares {
            write(&f("cpu.weight"), &shares_to_weight(shares).to_string())?;
        }
        if res.cpu_quota.is_some() || res.cpu_period.is_some() {
            let quota = match res.cpu_quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            let period = res.cpu_period.unwrap_or(100_000);
            write(&f("cpu.max"), &format!("{quota} {period}"))?;
        }
        if res.cpu_rt_period.is_some() || res.cpu_rt_runtime.is_some() {
            return Err(CgroupError::Unsupported(
                "cpu_rt_period and cpu_rt_runtime need cgroup v1: cgroup v2 has no real-time group scheduling".into(),
            ));
        }
        if let Some(cpus) = &res.cpuset_cpus {
            write(&f("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = &res.cpuset_mems {
            write(&f("cpuset.mems"), mems)?;
        }
        if let Some(limit) = res.pids_limit {
            let value = if limit > 0 {
                limit.to_string()
            } else {
                "max".into()
            };
            write(&f("pids.max"), &value)?;
        }
        let b = &res.block_io;
        if b.weight.is_some() || !b.weight_device.is_empty() {
            let file = ["io.bfq.weight", "io.weight"]
                .iter()
                .map(|n| f(n))
                .find(|p| p.exists());
            match file {
                None => eprintln!(
                    "berth: the io controller has no weights here (io.weight is absent): blkio_config weights discarded, as Docker does"
                ),
                Some(file) => {
                    let bfq = file.ends_with("io.bfq.weight");
                    // io.bfq.weight takes v1's scale, io.weight its own.
                    let scale = |w: u16| {
                        if bfq {
                            u64::from(w)
                        } else {
                            super::blkio_weight_to_io_weight(w)
                        }
                    };
                    if let Some(w) = b.weight {
                        write(&file, &format!("default {}", scale(w)))?;
                    }
                    for ((ma, mi), w) in &b.weight_device {
                        write(&file, &format!("{ma}:{mi} {}", scale(*w)))?;
                    }
                }
            }
        }
        for line in b.io_max_lines() {
            write(&f("io.max"), &line)?;
        }
        Ok(())
    }

    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let memory = read(&self.dir.join("memory.current"))?;
        let cpu = read(&self.dir.join("cpu.stat"))?;
        Ok(Stats {
            memory_bytes: memory.trim().parse().unwrap_or(0),
            cpu_nanos: keyed(&cpu, "usage_usec").unwrap_or(0) * 1000,
        })
    }

    /// OOM kills from `memory.events`.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let path = self.dir.join("memory.events");
        if !path.exists() {
            return Ok(0);
        }
        Ok(keyed(&read(&path)?, "oom_kill").unwrap_or(0))
    }

    pub fn delete(&self) -> Result<(), CgroupError> {
        // cgroup.kill (5.14+) kills the whole subtree at once, racing no fork.
        let kill = self.dir.join("cgroup.kill");
        if kill.exists() {
            let _ = write(&kill, "1");
        }
        kill_and_remove(&self.dir, &self.dir.join("cgroup.procs"))
    }
}

/// Enables the wanted controllers that `dir` offers for its children.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = read(&dir.join("cgroup.controllers"))?;
    let enable: Vec<String> = available
        .split_whitespace()
        .filter(|c| WANTED.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if enable.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &enable.join(" "))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::super::devices::{DeviceKind, DeviceRule, Insn, ACC_READ, DEV_BLOCK};
    use super::*;

    /// Records what would be attached where; fails when told to.
    #[derive(Debug, Default)]
    struct FakeBpf {
        attached: RefCell<Vec<(PathBuf, Vec<Insn>)>>,
        fail: bool,
    }

    impl DeviceFilter for FakeBpf {
        fn attach(&self, dir: &Path, program: &[Insn]) -> Result<(), CgroupError> {
            if self.fail {
                return Err(CgroupError::DeviceFilter {
                    path: dir.to_path_buf(),
                    step: "attach the device filter (bpf BPF_PROG_ATTACH)",
                    source: std::io::Error::from_raw_os_error(libc::EPERM),
                });
            }
            self.attached
                .borrow_mut()
                .push((dir.to_path_buf(), program.to_vec()));
            Ok(())
        }
    }

    /// A fake unified root: the files the kernel would show at each level. The kernel
    /// creates a new cgroup's files itself; here they are written before `create`.
    fn fixture(rel: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let mut dir = t.path().to_path_buf();
        std::fs::write(
            dir.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma\n",
        )
        .unwrap();
        for comp in rel.split('/') {
            dir.push(comp);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("cgroup.controllers"), "cpuset cpu memory pids\n").unwrap();
        }
        std::fs::write(dir.join("memory.swap.max"), "").unwrap();
        t
    }

    #[test]
    fn limits_land_in_the_right_files() {
        let t = fixture("berth/c1");
        let res = Resources {
            memory_limit: Some(32 << 20),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(1024),
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(64),
            ..Resources::default()
        };
        let cg =
            CgroupV2::create(t.path(), Path::new("berth/c1"), &res, &FakeBpf::default()).unwrap();
        let file = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(file("cgroup.subtree_control"), "+cpuset +cpu +memory +pids");
        assert_eq!(
            file("berth/cgroup.subtree_control"),
            "+cpuset +cpu +memory +pids"
        );
        assert_eq!(file("berth/c1/memory.max"), "33554432");
        assert_eq!(
            file("berth/c1/memory.swap.max"),
            "0",
            "no swap: the limit is real"
        );
        assert_eq!(file("berth/c1/cpu.max"), "50000 100000");
        assert_eq!(file("berth/c1/cpu.weight"), "39");
        assert_eq!(file("berth/c1/cpuset.cpus"), "0");
        assert_eq!(file("berth/c1/pids.max"), "64");

        cg.add(7).unwrap();
        assert_eq!(file("berth/c1/cgroup.procs"), "7");
    }

    #[test]
    fn oom_kills_and_stats_are_read_from_the_event_files() {
        let t = fixture("c");
        let cg = CgroupV2::create(
            t.path(),
            Path::new("c"),
            &Resources::default(),
            &FakeBpf::default(),
        )
        .unwrap();
        assert_eq!(cg.oom_kills().unwrap(), 0);
        std::fs::write(
            t.path().join("c/memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills().unwrap(), 1);
        std::fs::write(t.path().join("c/memory.current"), "4096\n").unwrap();
        std::fs::write(
            t.path().join("c/cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        )
        .unwrap();
        assert_eq!(
            cg.stats().unwrap(),
            Stats {
                memory_bytes: 4096,
                cpu_nanos: 1_500_000
            }
        );
    }

    #[test]
    fn the_device_filter_is_attached_to_the_container_cgroup() {
        let t = fixture("berth/c1");
        let bpf = FakeBpf::default();
        let disk = DeviceRule {
            allow: true,
            kind: DeviceKind::Block,
            major: Some(8),
            minor: Some(0),
            access: ACC_READ,
        };
        let res = Resources {
            devices: vec![disk],
            ..Resources::default()
        };
        CgroupV2::create(t.path(), Path::new("berth/c1"), &res, &bpf).unwrap();
        let attached = bpf.attached.borrow();
        assert_eq!(attached.len(), 1);
        assert_eq!(attached[0].0, t.path().join("berth/c1"));
        let rules = devices::effective_rules(&res.devices);
        assert_eq!(attached[0].1, devices::program(&rules));
        assert!(devices::allows(&rules, DEV_BLOCK, 8, 0, ACC_READ));

        // Without rules in the spec, a filter all the same: the defaults, deny else.
        let t = fixture("c");
        let bpf = FakeBpf::default();
        CgroupV2::create(t.path(), Path::new("c"), &Resources::default(), &bpf).unwrap();
        assert_eq!(
            bpf.attached.borrow()[0].1,
            devices::program(devices::DEFAULT_ALLOWED)
        );
    }

    #[test]
    fn a_filter_that_cannot_be_attached_refuses_the_cgroup() {
        let t = fixture("c");
        for f in ["cgroup.controllers", "memory.swap.max"] {
            std::fs::remove_file(t.path().join("c").join(f)).unwrap();
        }
        let bpf = FakeBpf {
            fail: true,
            ..FakeBpf::default()
        };
        let e = CgroupV2::create(t.path(), Path::new("c"), &Resources::default(), &bpf)
            .unwrap_err()
            .to_string();
        assert!(e.contains("BPF_PROG_ATTACH"), "{e}");
        assert!(
            !t.path().join("c").exists(),
            "the half-made cgroup is removed"
        );
    }

    #[test]
    fn weights_match_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn delete_removes_the_directory() {
        let t = fixture("c");
        let cg = CgroupV2::create(
            t.path(),
            Path::new("c"),
            &Resources::default(),
            &FakeBpf::default(),
        )
        .unwrap();
        // A real cgroup directory holds only kernel files, which rmdir ignores; the
        // fixture's files must go first.
        for f in ["cgroup.controllers", "memory.swap.max"] {
            std::fs::remove_file(t.path().join("c").join(f)).unwrap();
        }
        cg.delete().unwrap();
        assert!(!t.path().join("c").exists());
    }
}

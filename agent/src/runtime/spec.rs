//! The default OCI runtime spec (what `berth runtime spec` writes, and what the agent
//! starts from for every container): Docker's defaults, so an image behaves under
//! berth as it does under `docker run`.

use std::path::Path;

use super::RuntimeError;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilities, LinuxDeviceCgroup, LinuxNamespace,
    LinuxNamespaceType, LinuxPids, LinuxResources, Mount, PosixRlimitBuilder, PosixRlimitType,
    Process, Root, Spec, User,
};

/// Docker's default capability set (moby `oci/caps/defaults.go`): what a process
/// needs to behave like root inside its own filesystem (chown, setuid to other users,
/// bind low ports, raw sockets for ping), and nothing that reaches the host's kernel
/// configuration (no SYS_ADMIN, NET_ADMIN, SYS_MODULE, SYS_PTRACE...).
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Docker's masked paths: kernel information that leaks host details or is unsafe to
/// read from a container (a file gets /dev/null bound over it, a directory an empty
/// read-only tmpfs).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths: host-wide kernel settings that procfs would let root in
/// the container change.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The default pids limit. Docker sets none, which lets one container's fork bomb take
/// every pid of the host (`kernel.pid_max`) and stop every other container from
/// forking. 4096 is far above what real services use (a JVM with a few hundred threads,
/// a pre-forking server with dozens of workers), yet small enough that a runaway
/// container cannot exhaust the host.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// The default RLIMIT_NOFILE, what Docker's daemon gives containers. The runtime
/// clamps it to the host's hard limit where it cannot be raised (no CAP_SYS_RESOURCE).
pub const DEFAULT_NOFILE: u64 = 1_048_576;

/// The default environment: a PATH, as Docker sets when the image has none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every capability berth knows.
pub fn all_capabilities() -> Capabilities {
    to_oci(::caps::all())
}

/// Every capability this process may still give (its bounding set): what a
/// privileged container or exec gets. A host whose bounding set lacks some (a daemon run in a
/// container, or under a systemd `CapabilityBoundingSet=`) cannot grant them.
pub fn grantable_capabilities() -> Capabilities {
    match ::caps::read(None, ::caps::CapSet::Bounding) {
        Ok(set) => to_oci(set),
        Err(_) => all_capabilities(),
    }
}

fn to_oci(set: impl IntoIterator<Item = ::caps::Capability>) -> Capabilities {
    set.into_iter()
        .filter_map(|c| serde_json::from_value(serde_json::Value::String(c.to_string())).ok())
        .collect()
}

/// A default spec running `args` in the root filesystem `rootfs` (relative to the
/// bundle, usually `rootfs`), with Docker's defaults: new pid, mount, uts, ipc, net and
/// cgroup namespaces; Docker's capabilities, masked and read-only paths and seccomp
/// profile; no_new_privs; a pids limit; /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue,
/// a read-only /sys and the container's own cgroup read-only at /sys/fs/cgroup.
pub fn default_spec(rootfs: &Path, args: &[String]) -> Result<Spec, RuntimeError> {
    let caps: Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps));
    // Empty inheritable and ambient sets, as Docker since CVE-2022-24769: a program
    // with file capabilities must not gain them from the container's defaults.
    capabilities.set_inheritable(Some(Capabilities::new()));
    capabilities.set_ambient(Some(Capabilities::new()));

    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(DEFAULT_NOFILE)
        .soft(DEFAULT_NOFILE)
        .build()?;

    let mut process = Process::default();
    process.set_terminal(Some(false));
    process.set_user(User::default());
    process.set_args(Some(args.to_vec()));
    process.set_env(Some(vec![DEFAULT_PATH.to_string()]));
    process.set_cwd("/".into());
    process.set_capabilities(Some(capabilities));
    process.set_rlimits(Some(vec![nofile]));
    process.set_no_new_privileges(Some(true));

    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(false));

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ);
        ns
    })
    .collect::<Vec<_>>();

    let mut pids = LinuxPids::default();
    pids.set_limit(DEFAULT_PIDS_LIMIT);
    let mut deny_all = LinuxDeviceCgroup::default();
    deny_all.set_allow(false);
    deny_all.set_access(Some("rwm".into()));
    let mut resources = LinuxResources::default();
    resources.set_pids(Some(pids));
    resources.set_devices(Some(vec![deny_all]));

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .masked_paths(strings(DEFAULT_MASKED_PATHS))
        .readonly_paths(strings(DEFAULT_READONLY_PATHS))
        .seccomp(super::seccomp::default_profile()?)
        .build()?;

    let mut spec = Spec::default();
    spec.set_version("1.0.2".into());
    spec.set_root(Some(root));
    spec.set_process(Some(process));
    spec.set_hostname(Some("berth".into()));
    spec.set_mounts(Some(default_mounts()));
    spec.set_linux(Some(linux));
    spec.set_hooks(None);
    spec.set_annotations(None);
    Ok(spec)
}

/// /proc, /dev (a small tmpfs the runtime fills with the standard devices), /dev/pts
/// (its own instance, so the container never sees the host's terminals), /dev/shm,
/// /dev/mqueue, /sys read-only, and the container's own cgroup at /sys/fs/cgroup,
/// read-only.
pub fn default_mounts() -> Vec<Mount> {
    let mount = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        let mut m = Mount::default();
        m.set_destination(dest.into());
        m.set_typ(Some(typ.into()));
        m.set_source(Some(source.into()));
        m.set_options(Some(strings(options)));
        m
    };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        // The container's own cgroup, read-only, as Docker shows it (JVMs, Go and Node
        // read their limits there): its cgroup namespace's cgroup2 on v2, its own
        // directory of each controller on v1.
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_round_trips_through_json() {
        let spec = default_spec(Path::new("rootfs"), &["sh".into()]).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        assert!(json.contains("\"CAP_NET_BIND_SERVICE\""));
        assert!(json.contains("\"SCMP_ACT_ERRNO\""));
    }

    #[test]
    fn default_capabilities_are_dockers_mask() {
        let mask = crate::runtime::caps::mask(DEFAULT_CAPABILITIES.iter()).unwrap();
        assert_eq!(mask, 0xa80425fb);
    }
}

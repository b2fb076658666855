//! A service and its image, turned into the container's OCI spec with Docker's
//! semantics, starting from [`runtime::default_spec`].
//!
//! The image's `Healthcheck` and `ExposedPorts` are not part of the runtime spec: the
//! health checker and the network read them from [`Image::config`] later.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ::spec::model::Service;
use ::spec::security::{Seccomp, SecurityOpts};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBlockIo, LinuxCpu, LinuxDeviceCgroup, LinuxMemory, LinuxPids,
    LinuxThrottleDevice, LinuxThrottleDeviceBuilder, LinuxWeightDeviceBuilder, PosixRlimitBuilder,
    PosixRlimitType, Spec,
};

use super::{devices, inroot, mounts, seccomp, user, ContainerContext, ContainerError};
use crate::image::Image;
use crate::runtime::{self, spec::DEFAULT_CAPABILITIES};

/// The CFS period Docker uses for `--cpus`: 100ms.
const CPU_PERIOD: u64 = 100_000;

/// The spec of the container `ctx.id` of `service`, whose rootfs is already mounted at
/// `<ctx.dir()>/rootfs` (the user database and volume seeds are read from it). It
/// writes the host side of the service's mounts (volumes, secrets) on the way.
pub fn bundle_for(
    image: &Image,
    service: &Service,
    ctx: &ContainerContext,
) -> Result<Spec, ContainerError> {
    let config = &image.config;
    if let Some(p) = &service.platform {
        check_platform(p, image, crate::image::oci::host_architecture())
            .map_err(|e| ctx.field("platform", e))?;
    }
    if !service.storage_opt.is_empty() {
        // Docker limits a container's writable layer only on overlay2 over xfs with
        // project quotas; berth's layer is a plain directory of the state directory.
        return Err(ctx.field(
            "storage_opt",
            format!(
                "berth cannot limit the container's writable layer ({} is a directory of {}); remove storage_opt, or give the service a tmpfs or a volume for what it writes",
                ctx.dir().join("upper").display(),
                ctx.state_dir.display()
            ),
        ));
    }
    let args = command(image, service, ctx)?;
    let mut spec = runtime::default_spec(Path::new("rootfs"), &args)?;
    let rootfs = ctx.dir().join("rootfs");
    let root = inroot::open_root(&rootfs).map_err(ctx.io("open rootfs", &rootfs))?;

    // `init: true`: berth's own init is PID 1 (forwards signals, reaps zombies), asked
    // of the runtime with an annotation (see `runtime::INIT_ANNOTATION`).
    if service.init == Some(true) {
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        annotations.insert(runtime::INIT_ANNOTATION.to_string(), "true".to_string());
        spec.set_annotations(Some(annotations));
    }

    // User: the service's, else the image's; resolved in the image's own files.
    let user_spec = service
        .user
        .clone()
        .or_else(|| config.user.clone())
        .filter(|u| !u.is_empty());
    let resolved = match &user_spec {
        Some(u) => Some(user::resolve(root.as_fd(), u).map_err(|e| ctx.field("user", e))?),
        None => None,
    };

    let hostname = service
        .hostname
        .clone()
        .unwrap_or_else(|| ctx.hostname.clone());
    let mut env = environment(
        &config.env,
        &service.environment,
        &hostname,
        resolved.as_ref(),
    );
    // Devices (host nodes, cgroup rules, CDI devices): read from this host now. A
    // privileged container gets every device of the host, as with Docker.
    let mut dev = devices::edits(service, ctx)?;
    if service.privileged {
        let host = devices::host_devices();
        let named: Vec<PathBuf> = dev.nodes.iter().map(|n| n.path().clone()).collect();
        dev.nodes
            .extend(host.into_iter().filter(|n| !named.contains(n.path())));
    }
    for e in &dev.env {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        env.push(e.clone());
    }

    let cwd = service
        .working_dir
        .clone()
        .or_else(|| config.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(ctx.field("working_dir", format!("{cwd:?} must be an absolute path")));
    }
    // Docker creates a missing working directory.
    inroot::mkdir_all(root.as_fd(), Path::new(&cwd)).map_err(|e| {
        ctx.field(
            "working_dir",
            format!("cannot create {cwd} in the container: {e}"),
        )
    })?;

    let process = spec
        .process_mut()
        .as_mut()
        .ok_or_else(|| ctx.field("command", "no process"))?;
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(&cwd));
    // `tty: true`: the shim relays a pty of the container's own instead of pipes.
    process.set_terminal(service.tty.then_some(true));
    let mut groups = added_groups(root.as_fd(), service, ctx)?;
    groups.extend(&dev.gids);
    if resolved.is_some() || !groups.is_empty() {
        let mut ou = process.user().clone();
        let mut gids = Vec::new();
        if let Some(u) = &resolved {
            ou.set_uid(u.uid);
            ou.set_gid(u.gid);
            gids.extend(&u.additional_gids);
        }
        // `group_add` comes on top of the user's own groups, as Docker's.
        for g in groups {
            if !gids.contains(&g) {
                gids.push(g);
            }
        }
        ou.set_additional_gids((!gids.is_empty()).then_some(gids));
        process.set_user(ou);
    }
    if let Some(adj) = service.oom_score_adj {
        process.set_oom_score_adj(Some(adj));
    }
    let security = SecurityOpts::of(&service.security_opt);
    // Docker's default is off; the runtime's own default spec turns it on, as
    // runtime-tools' does, so the service's choice is always written.
    process.set_no_new_privileges(Some(security.no_new_privileges.unwrap_or(false)));
    let caps = capabilities(service, ctx)?;
    let cap_names: Vec<String> = caps
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let mut c = process.capabilities().clone().unwrap_or_default();
    c.set_bounding(Some(caps.clone()));
    c.set_effective(Some(caps.clone()));
    c.set_permitted(Some(caps));
    process.set_capabilities(Some(c));
    let mut rlimits = process.rlimits().clone().unwrap_or_default();
    for (name, limit) in &service.ulimits {
        let field = format!("ulimits.{name}");
        let typ = rlimit_type(name)
            .ok_or_else(|| ctx.field(&field, format!("unknown ulimit {name:?}")))?;
        let value = |v: i64| u64::try_from(v).unwrap_or(u64::MAX);
        let (soft, hard) = (value(limit.soft), value(limit.hard));
        if soft > hard {
            return Err(ctx.field(
                &field,
                format!(
                    "soft limit {} is above the hard limit {}",
                    limit.soft, limit.hard
                ),
            ));
        }
        let rl = PosixRlimitBuilder::default()
            .typ(typ)
            .soft(soft)
            .hard(hard)
            .build()
            .map_err(|e| ctx.field(&field, e.to_string()))?;
        rlimits.retain(|r| r.typ() != typ);
        rlimits.push(rl);
    }
    process.set_rlimits(Some(rlimits));

    spec.set_hostname(Some(hostname));
    if let Some(d) = &service.domainname {
        spec.set_domainname(Some(d.clone()));
    }
    if service.read_only {
        if let Some(r) = spec.root_mut().as_mut() {
            r.set_readonly(Some(true));
        }
    }

    // Mounts: the defaults (with /dev/shm sized), then the service's.
    let mut all = spec.mounts().clone().unwrap_or_default();
    if let Some(size) = service.shm_size {
        if size == 0 {
            return Err(ctx.field("shm_size", "must be more than 0 bytes"));
        }
        for m in all
            .iter_mut()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
        {
            let mut opts = m.options().clone().unwrap_or_default();
            opts.retain(|o| !o.starts_with("size="));
            opts.push(format!("size={size}"));
            m.set_options(Some(opts));
        }
    }
    if service.privileged {
        // Docker's privileged /sys is writable, and so is its cgroup.
        for m in all.iter_mut().filter(|m| {
            m.destination() == Path::new("/sys") || m.destination() == Path::new("/sys/fs/cgroup")
        }) {
            let opts = m.options().clone().unwrap_or_default();
            m.set_options(Some(opts.into_iter().filter(|o| o != "ro").collect()));
        }
    }
    let added = mounts::service_mounts(service, ctx, root.as_fd())?;
    // A service mount replaces a default one at the same place (e.g. its own /dev/shm).
    all.retain(|d| !added.iter().any(|a| a.destination() == d.destination()));
    all.extend(added);
    // A CDI spec's mounts (driver libraries and the like) come last.
    all.retain(|d| {
        !dev.mounts
            .iter()
            .any(|a| a.destination() == d.destination())
    });
    all.extend(dev.mounts.iter().cloned());
    spec.set_mounts(Some(all));

    // `annotations`: the container's own, beside berth's (which they cannot replace:
    // the loader refuses the `berth.` prefix).
    if !service.annotations.is_empty() {
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        for (k, v) in &service.annotations {
            annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
        spec.set_annotations(Some(annotations));
    }

    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| ctx.field("command", "no linux section"))?;
    if let Some(path) = &ctx.cgroups_path {
        linux.set_cgroups_path(Some(path.clone()));
    }
    let mut sysctls = BTreeMap::new();
    for (key, value) in &service.sysctls {
        if !namespaced_sysctl(key) {
            return Err(ctx.field(
                format!("sysctls.{key}"),
                "not namespaced: setting it in a container would change the whole host; only kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.* and net.* are allowed",
            ));
        }
        sysctls.insert(key.clone(), value.clone());
    }
    if !sysctls.is_empty() {
        linux.set_sysctl(Some(sysctls.into_iter().collect()));
    }
    let mut resources = linux.resources().clone().unwrap_or_default();
    let limits = service
        .deploy
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    let memory_limit = service.mem_limit.or(limits.and_then(|l| l.memory));
    if memory_limit.is_some()
        || service.mem_reservation.is_some()
        || service.mem_swappiness.is_some()
        || service.memswap_limit.is_some()
        || service.oom_kill_disable
    {
        let as_i64 =
            |field: &str, v: u64| i64::try_from(v).map_err(|_| ctx.field(field, "too large"));
        let mut memory = LinuxMemory::default();
        memory.set_limit(memory_limit.map(|v| as_i64("mem_limit", v)).transpose()?);
        memory.set_reservation(
            service
                .mem_reservation
                .map(|v| as_i64("mem_reservation", v))
                .transpose()?,
        );
        // Docker's --memory-swap: memory + swap, -1 unlimited; unset leaves the runtime's
        // default (no swap beyond the limit).
        memory.set_swap(service.memswap_limit);
        memory.set_swappiness(service.mem_swappiness.map(u64::from));
        if service.oom_kill_disable {
            memory.set_disable_oom_killer(Some(true));
        }
        resources.set_memory(Some(memory));
    }
    let cpus = service.cpus.or(limits.and_then(|l| l.cpus));
    if cpus.is_some()
        || service.cpu_shares.is_some()
        || service.cpuset.is_some()
        || service.cpu_period.is_some()
        || service.cpu_quota.is_some()
        || service.cpu_rt_period.is_some()
        || service.cpu_rt_runtime.is_some()
    {
        let mut cpu = LinuxCpu::default();
        if let Some(cpus) = cpus {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(ctx.field("cpus", format!("{cpus} must be a positive number of CPUs")));
            }
            cpu.set_quota(Some((cpus * CPU_PERIOD as f64).round() as i64));
            cpu.set_period(Some(CPU_PERIOD));
        }
        // The loader refuses these beside `cpus`, as Docker's daemon does.
        if service.cpu_period.is_some() {
            cpu.set_period(service.cpu_period);
        }
        if service.cpu_quota.is_some() {
            cpu.set_quota(service.cpu_quota);
        }
        if let (Some(period), Some(runtime)) = (service.cpu_rt_period, service.cpu_rt_runtime) {
            if runtime > 0 && runtime.unsigned_abs() > period {
                return Err(ctx.field(
                    "cpu_rt_runtime",
                    format!("{runtime}us is longer than cpu_rt_period ({period}us)"),
                ));
            }
        }
        cpu.set_realtime_period(service.cpu_rt_period);
        cpu.set_realtime_runtime(service.cpu_rt_runtime);
        cpu.set_shares(service.cpu_shares);
        cpu.set_cpus(service.cpuset.clone());
        resources.set_cpu(Some(cpu));
    }
    if let Some(pids) = service.pids_limit.or(limits.and_then(|l| l.pids)) {
        let mut p = LinuxPids::default();
        // Docker: 0 and -1 mean unlimited.
        p.set_limit(if pids <= 0 { -1 } else { pids });
        resources.set_pids(Some(p));
    }
    if service.privileged {
        let mut allow = LinuxDeviceCgroup::default();
        allow.set_allow(true);
        allow.set_access(Some("rwm".into()));
        resources.set_devices(Some(vec![allow]));
    }
    if !dev.rules.is_empty() {
        let mut rules = resources.devices().clone().unwrap_or_default();
        rules.extend(dev.rules.iter().cloned());
        resources.set_devices(Some(rules));
    }
    if let Some(blkio) = &service.blkio_config {
        resources.set_block_io(Some(block_io(blkio, ctx)?));
    }
    linux.set_resources(Some(resources));
    if !dev.nodes.is_empty() {
        let mut nodes = linux.devices().clone().unwrap_or_default();
        nodes.retain(|n| !dev.nodes.iter().any(|d| d.path() == n.path()));
        nodes.extend(dev.nodes.iter().cloned());
        linux.set_devices(Some(nodes));
    }
    // `privileged` turns off the filter and the path masks; `security_opt` may ask
    // for either alone, or for a profile of its own (which, as in Docker, a privileged
    // container does not get either).
    if service.privileged || security.seccomp == Some(Seccomp::Unconfined) {
        linux.set_seccomp(None);
    } else if let Some(Seccomp::Profile(profile)) = &security.seccomp {
        let oci = seccomp::to_oci(profile, &cap_names).map_err(|e| ctx.field("security_opt", e))?;
        // Compiled once here too, so that a profile the runtime cannot compile is
        // reported against the field that holds it.
        runtime::seccomp::compile(&oci).map_err(|e| ctx.field("security_opt", e.to_string()))?;
        linux.set_seccomp(Some(oci));
    }
    if service.privileged || security.systempaths_unconfined {
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
    }
    Ok(spec)
}

/// `blkio_config` as the runtime spec's block I/O: device paths become the numbers of
/// the devices they are on this host.
fn block_io(
    b: &::spec::devices::BlkioConfig,
    ctx: &ContainerContext,
) -> Result<LinuxBlockIo, ContainerError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let numbers = |field: &str, path: &str| -> Result<(i64, i64), ContainerError> {
        let meta =
            std::fs::metadata(path).map_err(|e| ctx.field(field, format!("device {path}: {e}")))?;
        if !meta.file_type().is_block_device() {
            return Err(ctx.field(
                field,
                format!("{path} is not a block device; name a disk, like /dev/sda"),
            ));
        }
        Ok((
            i64::from(libc::major(meta.rdev())),
            i64::from(libc::minor(meta.rdev())),
        ))
    };
    let mut io = LinuxBlockIo::default();
    io.set_weight(b.weight);
    let mut weights = Vec::new();
    for (i, w) in b.weight_device.iter().enumerate() {
        let (major, minor) = numbers(&format!("blkio_config.weight_device[{i}]"), &w.path)?;
        let d = LinuxWeightDeviceBuilder::default()
            .major(major)
            .minor(minor)
            .weight(w.weight)
            .build()
            .map_err(|e| ctx.field("blkio_config", e.to_string()))?;
        weights.push(d);
    }
    if !weights.is_empty() {
        io.set_weight_device(Some(weights));
    }
    let throttles = |name: &str,
                     list: &[::spec::devices::ThrottleDevice]|
     -> Result<Option<Vec<LinuxThrottleDevice>>, ContainerError> {
        let mut out = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let (major, minor) = numbers(&format!("blkio_config.{name}[{i}]"), &t.path)?;
            let d = LinuxThrottleDeviceBuilder::default()
                .major(major)
                .minor(minor)
                .rate(t.rate)
                .build()
                .map_err(|e| ctx.field("blkio_config", e.to_string()))?;
            out.push(d);
        }
        Ok((!out.is_empty()).then_some(out))
    };
    io.set_throttle_read_bps_device(throttles("device_read_bps", &b.device_read_bps)?);
    io.set_throttle_write_bps_device(throttles("device_write_bps", &b.device_write_bps)?);
    io.set_throttle_read_iops_device(throttles("device_read_iops", &b.device_read_iops)?);
    io.set_throttle_write_iops_device(throttles("device_write_iops", &b.device_write_iops)?);
    Ok(io)
}

/// `platform: os/arch[/variant]` against this host and the image: berth runs images
/// natively (no emulator), so the platform must be the host's, and the image one for it.
fn check_platform(platform: &str, image: &Image, host_arch: &str) -> Result<(), String> {
    let mut parts = platform.split('/');
    let os = parts.next().unwrap_or_default();
    let arch = normalize_arch(parts.next().unwrap_or(host_arch));
    if os != "linux" || arch != host_arch {
        return Err(format!(
            "{platform} cannot run on this linux/{host_arch} host: berth runs images natively, without an emulator; remove platform, or run the service on a node of that platform"
        ));
    }
    let image_arch = normalize_arch(&image.architecture);
    if !image_arch.is_empty() && image_arch != arch {
        return Err(format!(
            "the image {} is for {}/{}, not {platform}: pull it for this platform",
            image.reference.familiar(),
            image.os,
            image.architecture
        ));
    }
    Ok(())
}

/// Go's architecture names for what `uname -m` says.
fn normalize_arch(arch: &str) -> String {
    match arch.to_ascii_lowercase().as_str() {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.to_string(),
    }
}

/// The gids of `group_add`: numbers as they are, names looked up in the image's own
/// /etc/group (read inside the rootfs, as for `user:`).
fn added_groups(
    root: impl AsFd,
    service: &Service,
    ctx: &ContainerContext,
) -> Result<Vec<u32>, ContainerError> {
    let root = root.as_fd();
    service
        .group_add
        .iter()
        .enumerate()
        .map(|(i, g)| {
            user::resolve_id(root, g, true).map_err(|e| {
                ctx.field(
                    format!("group_add[{i}]"),
                    format!("{e}; add the group to the image or give a numeric gid"),
                )
            })
        })
        .collect()
}

/// Docker's rules: the service's `entrypoint` replaces the image's and drops the
/// image's `Cmd`; the service's `command` replaces only `Cmd`.
pub fn command(
    image: &Image,
    service: &Service,
    ctx: &ContainerContext,
) -> Result<Vec<String>, ContainerError> {
    let entrypoint = service
        .entrypoint
        .clone()
        .or_else(|| image.config.entrypoint.clone())
        .unwrap_or_default();
    let cmd = match (&service.command, &service.entrypoint) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image.config.cmd.clone().unwrap_or_default(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(ctx.field(
            "command",
            "nothing to run: the image has no Entrypoint or Cmd; set command (or entrypoint)",
        ));
    }
    Ok(args)
}

/// The image's `Env` with the service's `environment` over it (a variable without a
/// value is left as the image has it), plus Docker's defaults: a `PATH`, `HOSTNAME`,
/// and `HOME` from the user's passwd entry.
pub fn environment(
    image_env: &[String],
    service_env: &BTreeMap<String, Option<String>>,
    hostname: &str,
    user: Option<&user::ResolvedUser>,
) -> Vec<String> {
    fn set(vars: &mut Vec<(String, String)>, k: &str, v: &str) {
        match vars.iter_mut().find(|(name, _)| name == k) {
            Some(entry) => entry.1 = v.to_string(),
            None => vars.push((k.to_string(), v.to_string())),
        }
    }
    let mut vars: Vec<(String, String)> = Vec::new();
    if !image_env.iter().any(|e| e.starts_with("PATH=")) {
        let (k, v) = runtime::spec::DEFAULT_PATH
            .split_once('=')
            .unwrap_or(("PATH", ""));
        set(&mut vars, k, v);
    }
    set(&mut vars, "HOSTNAME", hostname);
    for e in image_env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(&mut vars, k, v);
    }
    for (k, v) in service_env {
        if let Some(v) = v {
            set(&mut vars, k, v);
        }
    }
    if !vars.iter().any(|(k, _)| k == "HOME") {
        let home = user
            .and_then(|u| u.home.clone())
            .unwrap_or_else(|| "/root".into());
        set(&mut vars, "HOME", &home);
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    serde_json::from_value(serde_json::Value::String(full)).ok()
}

/// Docker's `TweakCapabilities`: `cap_add: [ALL]` is every capability but the
/// dropped ones; `cap_drop: [ALL]` is only the added ones; otherwise the defaults
/// minus the dropped plus the added. `privileged` is every capability.
fn capabilities(service: &Service, ctx: &ContainerContext) -> Result<Capabilities, ContainerError> {
    // "All" is all that berth itself may hand on: its bounding set (a host that runs
    // berth without CAP_SYS_RESOURCE, say, cannot give it, and asking would make the
    // container's start fail with EPERM).
    let all = runtime::spec::grantable_capabilities;
    if service.privileged {
        return Ok(all());
    }
    let parse = |field: &str, list: &[String]| -> Result<Vec<Option<Capability>>, ContainerError> {
        list.iter()
            .enumerate()
            .map(|(i, name)| {
                if name.eq_ignore_ascii_case("ALL") {
                    Ok(None)
                } else {
                    parse_capability(name).map(Some).ok_or_else(|| {
                        ctx.field(
                            format!("{field}[{i}]"),
                            format!("unknown capability {name:?}"),
                        )
                    })
                }
            })
            .collect()
    };
    let add = parse("cap_add", &service.cap_add)?;
    let drop = parse("cap_drop", &service.cap_drop)?;
    let added: Vec<Capability> = add.iter().flatten().copied().collect();
    let dropped: Vec<Capability> = drop.iter().flatten().copied().collect();
    Ok(if add.contains(&None) {
        all().into_iter().filter(|c| !dropped.contains(c)).collect()
    } else if drop.contains(&None) {
        added.into_iter().collect()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| !dropped.contains(c))
            .chain(added)
            .collect()
    })
}

fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    use PosixRlimitType::*;
    Some(match name {
        "as" => RlimitAs,
        "core" => RlimitCore,
        "cpu" => RlimitCpu,
        "data" => RlimitData,
        "fsize" => RlimitFsize,
        "locks" => RlimitLocks,
        "memlock" => RlimitMemlock,
        "msgqueue" => RlimitMsgqueue,
        "nice" => RlimitNice,
        "nofile" => RlimitNofile,
        "nproc" => RlimitNproc,
        "rss" => RlimitRss,
        "rtprio" => RlimitRtprio,
        "rttime" => RlimitRttime,
        "sigpending" => RlimitSigpending,
        "stack" => RlimitStack,
        _ => return None,
    })
}

/// The sysctls a service may set, as Docker allows them: those of the container's own
/// IPC (and mqueue) and network namespaces (the runtime's list).
pub fn namespaced_sysctl(key: &str) -> bool {
    use crate::runtime::SysctlNamespace::{Ipc, Net};
    matches!(crate::runtime::sysctl_namespace(key), Some(Ipc | Net))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_environment_overlays_the_image() {
        let image = vec!["PATH=/bin".to_string(), "A=1".into(), "B=2".into()];
        let service: BTreeMap<String, Option<String>> = [
            ("B".to_string(), Some("3".to_string())),
            ("A".into(), None),
            ("C".into(), Some("x=y".into())),
        ]
        .into_iter()
        .collect();
        let env = environment(&image, &service, "h", None);
        assert_eq!(
            env,
            [
                "HOSTNAME=h",
                "PATH=/bin",
                "A=1",
                "B=3",
                "C=x=y",
                "HOME=/root"
            ]
        );
    }

    #[test]
    fn only_namespaced_sysctls_pass() {
        for (key, ok) in [
            ("net.ipv4.ip_forward", true),
            ("kernel.shmmax", true),
            ("fs.mqueue.msg_max", true),
            ("vm.swappiness", false),
            ("kernel.pid_max", false),
            ("net/../../kernel", false),
        ] {
            assert_eq!(namespaced_sysctl(key), ok, "{key}");
        }
    }
}

//! Decoding one `services.<name>` entry into a [`Service`].

use std::collections::BTreeMap;

use serde_norway::Value;

use super::{host, kind, Cx, MapReader, Node};
use crate::diag::join;
use crate::model::*;
use crate::security::SecurityOpt;
use crate::short_syntax::{self, VolumeKind};
use crate::units;

/// A single `ports:` or `expose:` entry may not span more ports than this: a typo like
/// `1-65535:1-65535` should be an error, not 65,535 port objects.
pub(crate) const MAX_PORTS_PER_ENTRY: u32 = 1000;

/// Attributes of the Compose spec that berth accepts and keeps, but does not act on yet.
/// Each one present in a file gets a warning naming it.
pub(crate) const UNSUPPORTED: &[&str] = &[
    "cpu_count",
    "cpu_percent",
    "credential_spec",
    "develop",
    "isolation",
    "models",
    "provider",
    "runtime",
    "use_api_socket",
];

/// Capabilities a container may be given (Linux 6.x), without the `CAP_` prefix.
const CAPABILITIES: &[&str] = &[
    "ALL",
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

const ULIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

pub(crate) fn decode_service(cx: &mut Cx, n: Node) -> Option<Service> {
    let mut m = cx.map(n)?;
    let mut s = Service {
        image: m.get(cx, "image", |cx, n| cx.string(n)),
        build: m.get(cx, "build", build),
        pull_policy: m.get(cx, "pull_policy", |cx, n| cx.parsed(n, pull_policy)),
        command: m.get(cx, "command", command),
        entrypoint: m.get(cx, "entrypoint", command),
        ports: m
            .get(cx, "ports", |cx, n| Some(ports(cx, n)))
            .unwrap_or_default(),
        expose: m
            .get(cx, "expose", |cx, n| Some(expose(cx, n)))
            .unwrap_or_default(),
        volumes: m
            .get(cx, "volumes", |cx, n| Some(cx.each(n, mount)))
            .unwrap_or_default(),
        tmpfs: m
            .get(cx, "tmpfs", |cx, n| Some(tmpfs(cx, n)))
            .unwrap_or_default(),
        networks: m.get(cx, "networks", networks).unwrap_or_default(),
        depends_on: m.get(cx, "depends_on", depends_on).unwrap_or_default(),
        healthcheck: m.get(cx, "healthcheck", healthcheck),
        restart: m.get(cx, "restart", |cx, n| cx.parsed(n, str::parse)),
        deploy: m.get(cx, "deploy", deploy),
        secrets: m
            .get(cx, "secrets", |cx, n| {
                Some(cx.each(n, |cx, n| file_mount(cx, n, "/run/secrets/")))
            })
            .unwrap_or_default(),
        configs: m
            .get(cx, "configs", |cx, n| {
                Some(cx.each(n, |cx, n| file_mount(cx, n, "/")))
            })
            .unwrap_or_default(),
        user: m.get(cx, "user", |cx, n| cx.string(n)),
        working_dir: m.get(cx, "working_dir", absolute_path),
        hostname: m.get(cx, "hostname", |cx, n| cx.string(n)),
        domainname: m.get(cx, "domainname", |cx, n| cx.string(n)),
        labels: m
            .get(cx, "labels", |cx, n| Some(labels(cx, n)))
            .unwrap_or_default(),
        init: m.get(cx, "init", |cx, n| cx.bool(n)),
        read_only: m.get(cx, "read_only", |cx, n| cx.bool(n)).unwrap_or(false),
        privileged: m.get(cx, "privileged", |cx, n| cx.bool(n)).unwrap_or(false),
        tty: m.get(cx, "tty", |cx, n| cx.bool(n)).unwrap_or(false),
        stdin_open: m.get(cx, "stdin_open", |cx, n| cx.bool(n)).unwrap_or(false),
        cap_add: m
            .get(cx, "cap_add", |cx, n| Some(capabilities(cx, n)))
            .unwrap_or_default(),
        cap_drop: m
            .get(cx, "cap_drop", |cx, n| Some(capabilities(cx, n)))
            .unwrap_or_default(),
        ulimits: m.get(cx, "ulimits", ulimits).unwrap_or_default(),
        sysctls: m
            .get(cx, "sysctls", |cx, n| Some(sysctls(cx, n)))
            .unwrap_or_default(),
        security_opt: m
            .get(cx, "security_opt", |cx, n| Some(cx.each(n, security_opt)))
            .unwrap_or_default(),
        group_add: m
            .get(cx, "group_add", |cx, n| Some(cx.each(n, group)))
            .unwrap_or_default(),
        oom_score_adj: m
            .get(cx, "oom_score_adj", |cx, n| cx.int_in(n, -1000, 1000))
            .and_then(|x| i32::try_from(x).ok()),
        stop_signal: m.get(cx, "stop_signal", |cx, n| {
            cx.parsed(n, |s| units::parse_signal(s).map(str::to_string))
        }),
        stop_grace_period: m.get(cx, "stop_grace_period", duration),
        extra_hosts: m
            .get(cx, "extra_hosts", |cx, n| Some(extra_hosts(cx, n)))
            .unwrap_or_default(),
        dns: m
            .get(cx, "dns", |cx, n| Some(cx.strings(n)))
            .unwrap_or_default(),
        dns_search: m
            .get(cx, "dns_search", |cx, n| Some(cx.strings(n)))
            .unwrap_or_default(),
        dns_opt: m
            .get(cx, "dns_opt", |cx, n| Some(cx.strings(n)))
            .unwrap_or_default(),
        shm_size: m.get(cx, "shm_size", bytes),
        pids_limit: m.get(cx, "pids_limit", |cx, n| cx.int_in(n, -1, i64::MAX)),
        mem_limit: m.get(cx, "mem_limit", bytes),
        mem_reservation: m.get(cx, "mem_reservation", bytes),
        cpus: m.get(cx, "cpus", cpus),
        cpu_shares: m
            .get(cx, "cpu_shares", |cx, n| {
                cx.int_in(n, 0, i64::from(u32::MAX))
            })
            .map(|x| x as u64),
        cpuset: m.get(cx, "cpuset", |cx, n| cx.parsed(n, cpuset)),
        cpu_period: m
            .get(cx, "cpu_period", |cx, n| cx.int_in(n, 1000, 1_000_000))
            .map(|x| x as u64),
        cpu_quota: m.get(cx, "cpu_quota", cpu_quota),
        cpu_rt_period: m
            .get(cx, "cpu_rt_period", |cx, n| micros(cx, n, 1))
            .map(|x| x as u64),
        cpu_rt_runtime: m.get(cx, "cpu_rt_runtime", |cx, n| micros(cx, n, -1)),
        // -1 is Docker's "not set".
        mem_swappiness: m
            .get(cx, "mem_swappiness", |cx, n| cx.int_in(n, -1, 100))
            .and_then(|x| u8::try_from(x).ok()),
        memswap_limit: m.get(cx, "memswap_limit", memswap_limit),
        oom_kill_disable: m
            .get(cx, "oom_kill_disable", |cx, n| cx.bool(n))
            .unwrap_or(false),
        scale: m.get(cx, "scale", |cx, n| cx.u32(n)),
        profiles: m
            .get(cx, "profiles", |cx, n| Some(profiles(cx, n)))
            .unwrap_or_default(),
        container_name: m.get(cx, "container_name", |cx, n| cx.parsed(n, container_name)),
        logging: m.get(cx, "logging", logging),
        network_mode: namespace(cx, &mut m, "network_mode"),
        pid: namespace(cx, &mut m, "pid"),
        ipc: namespace(cx, &mut m, "ipc"),
        uts: namespace(cx, &mut m, "uts"),
        userns_mode: namespace(cx, &mut m, "userns_mode"),
        cgroup: namespace(cx, &mut m, "cgroup"),
        devices: m
            .get(cx, "devices", |cx, n| Some(cx.each(n, host::device)))
            .unwrap_or_default(),
        device_cgroup_rules: m
            .get(cx, "device_cgroup_rules", |cx, n| {
                Some(cx.each(n, host::device_rule))
            })
            .unwrap_or_default(),
        gpus: m.get(cx, "gpus", host::gpus).unwrap_or_default(),
        blkio_config: m
            .get(cx, "blkio_config", host::blkio_config)
            .filter(|b| !b.is_empty()),
        volumes_from: m
            .get(cx, "volumes_from", |cx, n| {
                Some(cx.each(n, host::volumes_from))
            })
            .unwrap_or_default(),
        links: m
            .get(cx, "links", |cx, n| Some(cx.each(n, host::link)))
            .unwrap_or_default(),
        external_links: m
            .get(cx, "external_links", |cx, n| Some(cx.each(n, host::link)))
            .unwrap_or_default(),
        mac_address: m.get(cx, "mac_address", host::mac_address),
        cgroup_parent: m.get(cx, "cgroup_parent", host::cgroup_parent),
        annotations: m
            .get(cx, "annotations", |cx, n| Some(labels(cx, n)))
            .unwrap_or_default(),
        label_file: m
            .get(cx, "label_file", |cx, n| Some(cx.strings(n)))
            .unwrap_or_default(),
        attach: m.get(cx, "attach", |cx, n| cx.bool(n)),
        platform: m.get(cx, "platform", host::platform),
        pull_refresh_after: m.get(cx, "pull_refresh_after", duration),
        storage_opt: m
            .get(cx, "storage_opt", host::storage_opt)
            .unwrap_or_default(),
        pre_start: m
            .get(cx, "pre_start", |cx, n| Some(cx.each(n, pre_start_hook)))
            .unwrap_or_default(),
        post_start: m
            .get(cx, "post_start", |cx, n| Some(cx.each(n, hook)))
            .unwrap_or_default(),
        pre_stop: m
            .get(cx, "pre_stop", |cx, n| Some(cx.each(n, hook)))
            .unwrap_or_default(),
        ..Service::default()
    };
    match (s.pull_policy.as_deref(), s.pull_refresh_after) {
        (Some("refresh"), None) => cx.error(
            &m.path_of("pull_policy"),
            "refresh needs pull_refresh_after (how old the local image may be, like 12h)",
        ),
        (policy, Some(_)) if policy != Some("refresh") => cx.warn(
            &m.path_of("pull_refresh_after"),
            "acts only with pull_policy: refresh; ignored",
        ),
        _ => {}
    }
    // berth's own annotations tell its runtime what to join and check: not the file's.
    let reserved: Vec<String> = (s.annotations.keys())
        .filter(|k| k.starts_with("berth."))
        .cloned()
        .collect();
    for k in reserved {
        cx.error(
            &join(&m.path_of("annotations"), &k),
            "annotations starting with berth. are berth's own; use another prefix",
        );
        s.annotations.remove(&k);
    }
    // Labels from files first; `labels` wins, as in compose-go.
    if !s.label_file.is_empty() {
        let mut from_files = host::read_label_files(cx, &s.label_file, &m.path_of("label_file"));
        from_files.append(&mut s.labels);
        s.labels = from_files;
    }

    // environment and env_file: env_file values first, environment wins, as in Compose.
    let env_files = m.get(cx, "env_file", |cx, n| Some(cx.each_or_one(n, env_file)));
    s.env_file = env_files.unwrap_or_default();
    s.environment = read_env_files(cx, &s.env_file, &m.path_of("env_file"));
    if let Some(env) = m.get(cx, "environment", |cx, n| Some(environment(cx, n))) {
        for (k, v) in env {
            // `environment: [FOO]` passes FOO through from the environment of the load.
            let v = v.or_else(|| (cx.env)(&k));
            s.environment.insert(k, v);
        }
    }

    ports_beside_network_mode(cx, &m, &s);
    resource_combinations(cx, &m, &s);

    if m.has("extends") {
        // Resolved before decoding; only a tree that skipped that step gets here.
        m.take("extends");
    }
    for (k, v) in m.extensions() {
        s.unsupported.insert(k, v);
    }
    carry_unsupported(cx, &mut m, &mut s.unsupported);
    m.finish(cx);
    Some(s)
}

/// One `post_start` or `pre_stop` entry. `command` is required (as in compose-go's
/// schema), in either form `command:` takes.
fn hook(cx: &mut Cx, n: Node) -> Option<ServiceHook> {
    let mut m = cx.map(n)?;
    let command = m.get(cx, "command", command);
    let mut h = ServiceHook {
        command: command.clone().unwrap_or_default(),
        user: m.get(cx, "user", |cx, n| cx.string(n)),
        privileged: m.get(cx, "privileged", |cx, n| cx.bool(n)).unwrap_or(false),
        working_dir: m.get(cx, "working_dir", absolute_path),
        environment: BTreeMap::new(),
    };
    if let Some(env) = m.get(cx, "environment", |cx, n| Some(environment(cx, n))) {
        for (k, v) in env {
            let v = v.or_else(|| (cx.env)(&k));
            h.environment.insert(k, v);
        }
    }
    match command {
        Some(c) if !c.is_empty() => {}
        Some(_) => cx.error(
            &m.path_of("command"),
            "is empty: give the command the hook runs",
        ),
        // A command that did not decode was reported already.
        None if m.has("command") => {}
        None => cx.error(
            n.path,
            "a hook needs a command: add command: [...] (the program and its arguments)",
        ),
    }
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(h)
}

/// One `pre_start` step (compose-go's `pre_start_hook`): every key is optional.
/// `per_replica: true` (a step per replica) is refused, as docker compose refuses it.
fn pre_start_hook(cx: &mut Cx, n: Node) -> Option<PreStartHook> {
    let mut m = cx.map(n)?;
    let mut h = PreStartHook {
        image: m.get(cx, "image", |cx, n| cx.string(n)),
        command: m.get(cx, "command", command),
        user: m.get(cx, "user", |cx, n| cx.string(n)),
        privileged: m.get(cx, "privileged", |cx, n| cx.bool(n)).unwrap_or(false),
        working_dir: m.get(cx, "working_dir", absolute_path),
        environment: BTreeMap::new(),
    };
    if let Some(env) = m.get(cx, "environment", |cx, n| Some(environment(cx, n))) {
        for (k, v) in env {
            let v = v.or_else(|| (cx.env)(&k));
            h.environment.insert(k, v);
        }
    }
    if h.command.as_ref().is_some_and(Vec::is_empty) {
        cx.error(
            &m.path_of("command"),
            "is empty: give the command the step runs, or leave command out to run the image's",
        );
    }
    if m.get(cx, "per_replica", |cx, n| cx.bool(n)) == Some(true) {
        cx.error(
            &m.path_of("per_replica"),
            "a step per replica is not supported (nor by docker compose): remove per_replica \
             or set it to false",
        );
    }
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(h)
}

/// `environment:` as a list or a mapping. In the list form, a name followed by spaces
/// (`DEBUG = true`) is refused, as compose-go does: it would set a variable named
/// `DEBUG ` to ` true`, which is never what was meant.
fn environment(cx: &mut Cx, n: Node) -> Vec<(String, Option<String>)> {
    if let Value::Sequence(items) = n.v() {
        for (i, item) in items.iter().enumerate() {
            let Some(text) = item.as_str() else { continue };
            let name = text.split_once('=').map_or(text, |(k, _)| k);
            if name.ends_with(char::is_whitespace) {
                cx.error(
                    &crate::diag::index(n.path, i),
                    format!(
                        "variable {:?} ends with a space; write {}=... with no space before =",
                        name,
                        name.trim_end()
                    ),
                );
            }
        }
    }
    cx.list_or_map(n)
}

/// Published ports mean nothing in another container's network namespace or in one
/// with only loopback (an error, as Compose's); in the host's they are the container's
/// own ports already (ignored with a warning, as Docker's).
fn ports_beside_network_mode(cx: &mut Cx, m: &MapReader, s: &Service) {
    let Some(mode) = s.network_mode.as_deref() else {
        return;
    };
    if s.ports.is_empty() {
        return;
    }
    let path = m.path_of("ports");
    if mode == "host" {
        cx.warn(
            &path,
            "ignored with network_mode: host: the container's ports are the host's own",
        );
    } else {
        cx.error(
            &path,
            format!("cannot publish ports with network_mode: {mode}; remove ports or network_mode"),
        );
    }
}

/// A namespace attribute (`spec::namespaces`), kept as written once its value is known.
fn namespace(cx: &mut Cx, m: &mut MapReader, key: &'static str) -> Option<String> {
    m.get(cx, key, |cx, n| {
        cx.parsed(n, |s| {
            crate::namespaces::parse(key, s).map(|_| s.to_string())
        })
    })
}

/// Moves the present unsupported attributes into `into`, warning about each by name.
/// Attributes Docker acts on for Windows containers only, and ignores on Linux.
const WINDOWS_ONLY: &[&str] = &["cpu_count", "cpu_percent"];

/// Docker's daemon refuses these combinations when the container is created; berth
/// says so at load, naming the field.
fn resource_combinations(cx: &mut Cx, m: &MapReader, s: &Service) {
    let limits = (s.deploy.as_ref())
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    let cpus = s.cpus.or(limits.and_then(|l| l.cpus)).is_some();
    for key in ["cpu_period", "cpu_quota"] {
        if cpus && m.has(key) {
            cx.error(
                &m.path_of(key),
                "cannot be combined with cpus (or deploy.resources.limits.cpus), as in Docker: set cpus alone, or cpu_quota and cpu_period",
            );
        }
    }
    let memory = s.mem_limit.or(limits.and_then(|l| l.memory));
    match (s.memswap_limit, memory) {
        (Some(swap), None) if swap != 0 => cx.error(
            &m.path_of("memswap_limit"),
            "needs a memory limit (mem_limit or deploy.resources.limits.memory), as in Docker",
        ),
        (Some(swap), Some(mem)) if swap > 0 && (swap as u64) < mem => cx.error(
            &m.path_of("memswap_limit"),
            format!("{swap} is less than the memory limit ({mem}): it is memory plus swap, so it must be at least as large"),
        ),
        _ => {}
    }
}

/// `cpu_quota`: microseconds per period; -1 (or 0, Docker's unset) is no limit, else at
/// least 1000 as the daemon checks.
fn cpu_quota(cx: &mut Cx, n: Node) -> Option<i64> {
    let q = cx.int(n)?;
    match q {
        -1 | 0 => Some(-1),
        q if q >= 1000 => Some(q),
        _ => {
            cx.error(
                n.path,
                format!("{q} is out of range: at least 1000 (1ms), or -1 for no limit"),
            );
            None
        }
    }
}

/// A time in microseconds: an integer, or a duration string (`950ms`, `1s`) as
/// compose-go accepts for `cpu_rt_period` and `cpu_rt_runtime`; `min` is the least.
fn micros(cx: &mut Cx, n: Node, min: i64) -> Option<i64> {
    let x = match n.v() {
        Value::Number(_) => cx.int(n)?,
        Value::String(s) if s.trim().parse::<i64>().is_ok() => cx.int(n)?,
        _ => {
            let d = cx.parsed(n, units::parse_duration)?;
            i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
        }
    };
    if x < min {
        cx.error(n.path, format!("{x} is out of range (at least {min})"));
        return None;
    }
    Some(x)
}

/// `memswap_limit`: a size, or -1 for unlimited swap.
fn memswap_limit(cx: &mut Cx, n: Node) -> Option<i64> {
    match n.v() {
        Value::Number(x) if x.as_i64() == Some(-1) => Some(-1),
        Value::String(s) if s.trim() == "-1" => Some(-1),
        _ => bytes(cx, n).map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
    }
}

pub(crate) fn carry_unsupported(
    cx: &mut Cx,
    m: &mut MapReader,
    into: &mut BTreeMap<String, Value>,
) {
    for key in UNSUPPORTED {
        if m.has(key) {
            let path = m.path_of(key);
            if let Some(v) = m.take(key) {
                cx.warn(
                    &path,
                    if WINDOWS_ONLY.contains(key) {
                        "acts only on Windows containers: Docker ignores it on Linux, and so does berth; kept in the stack, but it has no effect"
                    } else {
                        "not supported by berth yet; kept in the stack, but it has no effect"
                    },
                );
                into.insert((*key).to_string(), v.clone());
            }
        }
    }
}

impl Cx<'_> {
    /// One item or a list of them (`env_file: a.env` or `env_file: [a.env, b.env]`).
    fn each_or_one<T>(&mut self, n: Node, f: impl FnMut(&mut Self, Node) -> Option<T>) -> Vec<T> {
        let mut f = f;
        match n.v() {
            Value::Sequence(_) => self.each(n, f),
            _ => f(self, n).into_iter().collect(),
        }
    }
}

fn duration(cx: &mut Cx, n: Node) -> Option<std::time::Duration> {
    cx.parsed(n, units::parse_duration)
}

/// A size: a number of bytes, or a string with a unit (`512m`, `1.5g`).
pub(super) fn bytes(cx: &mut Cx, n: Node) -> Option<u64> {
    match n.v() {
        Value::Number(x) => match x.as_u64() {
            Some(b) => Some(b),
            None => {
                cx.error(
                    n.path,
                    format!("invalid size {x}: expected a whole number of bytes"),
                );
                None
            }
        },
        _ => cx.parsed(n, units::parse_bytes),
    }
}

fn cpus(cx: &mut Cx, n: Node) -> Option<f64> {
    let value = match n.v() {
        Value::Number(x) => x.as_f64(),
        _ => return cx.parsed(n, units::parse_cpus),
    };
    match value {
        Some(f) if f.is_finite() && f >= 0.0 => Some(f),
        _ => {
            cx.error(
                n.path,
                "expected a number of CPUs greater than 0, like 0.5 or 2",
            );
            None
        }
    }
}

/// A file mode: an octal string (`"0440"`, as YAML reads `0440`) or a number as written.
pub(crate) fn mode(cx: &mut Cx, n: Node) -> Option<u32> {
    let parsed = match n.v() {
        Value::Number(x) => x.as_u64().and_then(|m| u32::try_from(m).ok()),
        Value::String(s) => {
            let digits = s.trim().trim_start_matches("0o");
            u32::from_str_radix(digits, 8).ok()
        }
        _ => None,
    };
    match parsed {
        Some(m) if m <= 0o7777 => Some(m),
        _ => {
            cx.error(
                n.path,
                "invalid file mode: expected an octal number like 0440 or 0644",
            );
            None
        }
    }
}

fn absolute_path(cx: &mut Cx, n: Node) -> Option<String> {
    let p = cx.string(n)?;
    if !p.starts_with('/') {
        cx.error(
            n.path,
            format!("{p:?} must be an absolute path in the container"),
        );
        return None;
    }
    Some(p)
}

/// `command`/`entrypoint`: a list as is, or a string split the way a shell would.
fn command(cx: &mut Cx, n: Node) -> Option<Vec<String>> {
    match n.v() {
        Value::Sequence(_) => Some(cx.each(n, |cx, n| cx.scalar(n))),
        _ => {
            let text = cx.string(n)?;
            match shlex::split(&text) {
                Some(words) => Some(words),
                None => {
                    cx.error(n.path, "unterminated quote or escape in the command string");
                    None
                }
            }
        }
    }
}

fn pull_policy(s: &str) -> Result<String, String> {
    let ok = matches!(
        s,
        "always"
            | "never"
            | "missing"
            | "if_not_present"
            | "build"
            | "daily"
            | "weekly"
            | "refresh"
    ) || s
        .strip_prefix("every_")
        .is_some_and(|d| units::parse_duration(d).is_ok());
    if !ok {
        return Err(format!(
            "invalid pull_policy {s:?}: expected always, never, missing, build, daily, weekly, \
             every_<duration> or refresh (with pull_refresh_after)"
        ));
    }
    // `if_not_present` is Compose's older spelling of `missing`.
    Ok(if s == "if_not_present" {
        "missing".into()
    } else {
        s.to_string()
    })
}

fn cpuset(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.split(',').all(|part| {
            let mut bounds = part.splitn(2, '-').map(|x| x.trim().parse::<u32>());
            match (bounds.next(), bounds.next()) {
                (Some(Ok(_)), None) => true,
                (Some(Ok(a)), Some(Ok(b))) => a <= b,
                _ => false,
            }
        });
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid cpuset {s:?}: expected CPU numbers and ranges like 0-3 or 0,2"
        ))
    }
}

fn container_name(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid container_name {s:?}: use letters, digits, '_', '.' and '-', starting \
             with a letter or digit"
        ))
    }
}

fn profiles(cx: &mut Cx, n: Node) -> Vec<String> {
    cx.each(n, |cx, n| {
        cx.parsed(n, |s| {
            let mut chars = s.chars();
            let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if ok {
                Ok(s.to_string())
            } else {
                Err(format!(
                    "invalid profile name {s:?}: use letters, digits, '_', '.' and '-'"
                ))
            }
        })
    })
}

fn labels(cx: &mut Cx, n: Node) -> BTreeMap<String, String> {
    cx.list_or_map(n)
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect()
}

fn sysctls(cx: &mut Cx, n: Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in cx.list_or_map(n) {
        match v {
            Some(v) => {
                out.insert(k, v);
            }
            None => cx.error(
                &join(n.path, &k),
                "a sysctl needs a value, like net.core.somaxconn=1024",
            ),
        }
    }
    out
}

fn capabilities(cx: &mut Cx, n: Node) -> Vec<String> {
    cx.each(n, |cx, n| {
        let raw = cx.string(n)?;
        let upper = raw.to_ascii_uppercase();
        let name = upper.strip_prefix("CAP_").unwrap_or(&upper).to_string();
        if CAPABILITIES.contains(&name.as_str()) {
            return Some(name);
        }
        let hint = super::suggest(&name, CAPABILITIES)
            .map(|s| format!("; did you mean {s:?}?"))
            .unwrap_or_default();
        cx.error(n.path, format!("unknown capability {raw:?}{hint}"));
        None
    })
}

/// A `security_opt` entry. A seccomp profile file (made absolute by the loader) is
/// read now, so that the stack carries the profile itself.
fn security_opt(cx: &mut Cx, n: Node) -> Option<SecurityOpt> {
    let text = cx.string(n)?;
    let inline = match text.split_once(['=', ':']) {
        Some(("seccomp", v)) if v != "unconfined" && !v.trim_start().starts_with('{') => {
            match crate::yaml::read_limited(std::path::Path::new(v)) {
                Ok(profile) => match crate::security::check_seccomp_profile(&profile) {
                    Ok(json) => Some(SecurityOpt::Seccomp(json)),
                    Err(e) => {
                        cx.error(n.path, format!("{v}: {e}"));
                        return None;
                    }
                },
                Err(e) => {
                    cx.error(
                        n.path,
                        format!("cannot read the seccomp profile {v}: {e}; give the path of a JSON file, relative to the project directory"),
                    );
                    return None;
                }
            }
        }
        _ => None,
    };
    let opt = match inline {
        Some(o) => o,
        None => cx.parsed(n, SecurityOpt::parse)?,
    };
    // berth's runtime has no AppArmor or SELinux support (and the hosts it is tested
    // on have neither), so such an option is kept but has no effect. Turning them off
    // is what berth does anyway, so that needs no warning.
    match &opt {
        SecurityOpt::AppArmor(p) if p != "unconfined" => cx.warn(
            n.path,
            "not applied: berth's runtime does not load AppArmor profiles; the container runs unconfined by AppArmor",
        ),
        SecurityOpt::Label(l) if l != "disable" => cx.warn(
            n.path,
            "not applied: berth's runtime does not set SELinux labels; the container runs with its parent's label",
        ),
        _ => {}
    }
    Some(opt)
}

/// A `group_add` entry: a gid or a group name (checked in the image when the
/// container starts, since only the image has its /etc/group).
fn group(cx: &mut Cx, n: Node) -> Option<String> {
    let g = cx.string(n)?;
    if g.is_empty() || g.contains([':', '\n']) {
        cx.error(
            n.path,
            format!("{g:?} is not a group: give a group name or a gid"),
        );
        return None;
    }
    Some(g)
}

fn ulimits(cx: &mut Cx, n: Node) -> Option<BTreeMap<String, Ulimit>> {
    let mut m = cx.map(n)?;
    let mut out = BTreeMap::new();
    for (name, value) in m.drain() {
        let path = join(n.path, &name);
        let node = Node { value, path: &path };
        if !ULIMITS.contains(&name.as_str()) {
            let hint = super::suggest(&name, ULIMITS)
                .map(|s| format!("; did you mean {s:?}?"))
                .unwrap_or_default();
            cx.error(&path, format!("unknown ulimit{hint}"));
            continue;
        }
        let limit = match node.v() {
            Value::Mapping(_) => {
                let Some(mut lm) = cx.map(node) else { continue };
                let soft = lm.get(cx, "soft", |cx, n| cx.int_in(n, -1, i64::MAX));
                let hard = lm.get(cx, "hard", |cx, n| cx.int_in(n, -1, i64::MAX));
                lm.finish(cx);
                match (soft, hard) {
                    // An override file may change one side of a limit.
                    (Some(soft), None) if cx.fragment => Ulimit { soft, hard: soft },
                    (None, Some(hard)) if cx.fragment => Ulimit { soft: hard, hard },
                    (Some(soft), Some(hard)) => Ulimit { soft, hard },
                    _ => {
                        cx.error(&path, "a ulimit mapping needs both soft and hard");
                        continue;
                    }
                }
            }
            _ => match cx.int_in(node, -1, i64::MAX) {
                Some(x) => Ulimit { soft: x, hard: x },
                None => continue,
            },
        };
        // -1 is "unlimited", which is above every number.
        let rank = |x: i64| if x == -1 { i64::MAX } else { x };
        if rank(limit.soft) > rank(limit.hard) {
            cx.error(
                &path,
                format!(
                    "soft limit {} is above hard limit {}",
                    limit.soft, limit.hard
                ),
            );
            continue;
        }
        out.insert(name, limit);
    }
    Some(out)
}

fn extra_hosts(cx: &mut Cx, n: Node) -> Vec<String> {
    let mut out = Vec::new();
    match n.v() {
        Value::Mapping(_) => {
            let Some(mut m) = cx.map(n) else { return out };
            for (host, value) in m.drain() {
                let path = join(n.path, &host);
                let node = Node { value, path: &path };
                for ip in cx.strings(node) {
                    match short_syntax::parse_extra_host(&format!("{host}={ip}")) {
                        Ok((h, ip)) => out.push(format!("{h}={ip}")),
                        Err(e) => cx.error(&path, e),
                    }
                }
            }
        }
        _ => {
            for hosts in cx.each(n, |cx, n| cx.parsed(n, short_syntax::parse_extra_hosts)) {
                out.extend(hosts.into_iter().map(|(h, ip)| format!("{h}={ip}")));
            }
        }
    }
    out
}

fn tmpfs(cx: &mut Cx, n: Node) -> Vec<String> {
    match n.v() {
        Value::Sequence(_) => cx.each(n, |cx, n| {
            cx.parsed(n, |s| short_syntax::parse_tmpfs(s).map(|_| s.to_string()))
        }),
        _ => cx
            .parsed(n, |s| short_syntax::parse_tmpfs(s).map(|_| s.to_string()))
            .into_iter()
            .collect(),
    }
}

fn expose(cx: &mut Cx, n: Node) -> Vec<String> {
    cx.each(n, |cx, n| {
        cx.parsed(n, |s| {
            short_syntax::parse_expose(s, MAX_PORTS_PER_ENTRY).map(|_| s.to_string())
        })
    })
}

fn ports(cx: &mut Cx, n: Node) -> Vec<Port> {
    let mut out = Vec::new();
    for group in cx.each(n, port_entry) {
        out.extend(group);
    }
    out
}

/// One `ports:` entry, which a short-syntax range turns into several ports.
fn port_entry(cx: &mut Cx, n: Node) -> Option<Vec<Port>> {
    match n.v() {
        Value::Mapping(_) => port_long(cx, n).map(|p| vec![p]),
        _ => {
            let short = cx.parsed(n, |s| short_syntax::parse_port(s, MAX_PORTS_PER_ENTRY))?;
            let protocol = protocol(&short.protocol)?;
            let (t0, t1) = short.target;
            let port = |target: u16, published: Option<PortRange>| Port {
                name: None,
                target,
                published,
                host_ip: short.host_ip.clone(),
                protocol,
                mode: PortMode::Ingress,
                app_protocol: None,
            };
            Some(match short.published {
                // A range on both sides maps port to port.
                Some((p0, _)) if t1 > t0 => (t0..=t1)
                    .map(|t| port(t, Some(PortRange::single(p0 + (t - t0)))))
                    .collect(),
                Some((p0, p1)) => vec![port(t0, Some(PortRange { start: p0, end: p1 }))],
                None => (t0..=t1).map(|t| port(t, None)).collect(),
            })
        }
    }
}

fn protocol(s: &str) -> Option<Protocol> {
    match s {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn port_long(cx: &mut Cx, n: Node) -> Option<Port> {
    let mut m = cx.map(n)?;
    let target = m.get(cx, "target", |cx, n| cx.int_in(n, 1, 65535));
    let published = m.get(cx, "published", |cx, n| {
        cx.parsed(n, |s| {
            // The long form's `published` is a port or a range, with the same rules as
            // the short form's published part.
            short_syntax::parse_port(&format!("{s}:1"), MAX_PORTS_PER_ENTRY)
                .map(|p| p.published.map(|(a, b)| PortRange { start: a, end: b }))
        })
    });
    let protocol = m.get(cx, "protocol", |cx, n| {
        cx.parsed(n, |s| {
            protocol(s).ok_or(format!("unknown protocol {s:?}: expected tcp or udp"))
        })
    });
    let mode = m.get(cx, "mode", |cx, n| {
        cx.parsed(n, |s| match s {
            "ingress" => Ok(PortMode::Ingress),
            "host" => Ok(PortMode::Host),
            _ => Err(format!("unknown port mode {s:?}: expected ingress or host")),
        })
    });
    let host_ip = m.get(cx, "host_ip", |cx, n| {
        cx.parsed(n, |s| {
            s.parse::<std::net::IpAddr>()
                .map(|_| s.to_string())
                .map_err(|_| format!("invalid host_ip {s:?}: expected an IPv4 or IPv6 address"))
        })
    });
    let name = m.get(cx, "name", |cx, n| cx.string(n));
    let app_protocol = m.get(cx, "app_protocol", |cx, n| cx.string(n));
    m.ignore_extensions(cx);
    m.finish(cx);
    let Some(target) = target else {
        if !m_has_error_for_target(cx, n) {
            cx.error(n.path, "a port needs a target (the container port)");
        }
        return None;
    };
    Some(Port {
        name,
        target: target as u16,
        published: published.flatten(),
        host_ip,
        protocol: protocol.unwrap_or(Protocol::Tcp),
        mode: mode.unwrap_or_default(),
        app_protocol,
    })
}

/// Whether decoding `target` already reported a problem (so we do not report it twice).
fn m_has_error_for_target(cx: &Cx, n: Node) -> bool {
    let p = join(n.path, "target");
    cx.diags.iter().any(|d| d.path == p)
}

fn mount(cx: &mut Cx, n: Node) -> Option<Mount> {
    match n.v() {
        Value::Mapping(_) => mount_long(cx, n),
        _ => {
            let v = cx.parsed(n, short_syntax::parse_volume)?;
            let mut mount = Mount {
                kind: match v.kind {
                    VolumeKind::Bind => MountType::Bind,
                    VolumeKind::Volume => MountType::Volume,
                },
                source: v.source,
                target: clean_target(&v.target),
                read_only: v.read_only,
                bind: None,
                volume: None,
                tmpfs: None,
            };
            for opt in v.options {
                match (mount.kind, opt.as_str()) {
                    (MountType::Volume, "nocopy") => {
                        mount.volume.get_or_insert_with(Default::default).nocopy = true
                    }
                    (MountType::Bind, "z" | "Z") => {
                        mount.bind.get_or_insert_with(bind_default_short).selinux = Some(opt)
                    }
                    (MountType::Bind, p)
                        if p.contains("private") || p.contains("shared") || p.contains("slave") =>
                    {
                        mount
                            .bind
                            .get_or_insert_with(bind_default_short)
                            .propagation = Some(opt)
                    }
                    // Consistency flags are macOS-only hints; Compose ignores them on Linux.
                    (_, "cached" | "delegated" | "consistent") => {}
                    (_, other) => cx.error(
                        n.path,
                        format!(
                            "option {other:?} does not apply to a {:?} mount",
                            mount.kind
                        ),
                    ),
                }
            }
            if mount.kind == MountType::Bind {
                // The short syntax creates a missing host directory, as Docker always has.
                mount.bind.get_or_insert_with(bind_default_short);
            }
            Some(mount)
        }
    }
}

/// A container path cleaned lexically, as compose-go does with Go's `path.Clean`
/// (`/data/../x` is `/x`, `/srv//cache/` is `/srv/cache`), so that two spellings of
/// one path are one mount target.
fn clean_target(path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            // Above the root is the root.
            ".." if rooted => {}
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

fn bind_default_short() -> BindOptions {
    BindOptions {
        create_host_path: true,
        ..Default::default()
    }
}

fn mount_long(cx: &mut Cx, n: Node) -> Option<Mount> {
    let mut m = cx.map(n)?;
    let kind = m.get(cx, "type", |cx, n| {
        cx.parsed(n, |s| match s {
            "bind" => Ok(MountType::Bind),
            "volume" => Ok(MountType::Volume),
            "tmpfs" => Ok(MountType::Tmpfs),
            _ => Err(format!(
                "unknown mount type {s:?}: expected bind, volume or tmpfs"
            )),
        })
    });
    let source = m.get(cx, "source", |cx, n| cx.string(n));
    let target = m.get(cx, "target", absolute_path);
    let read_only = m.get(cx, "read_only", |cx, n| cx.bool(n)).unwrap_or(false);
    let bind = m.get(cx, "bind", |cx, n| {
        let mut b = cx.map(n)?;
        let opts = BindOptions {
            propagation: b.get(cx, "propagation", |cx, n| {
                cx.parsed(n, |s| match s {
                    "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                        Ok(s.to_string())
                    }
                    _ => Err(format!(
                        "unknown propagation {s:?}: expected private, rprivate, shared, rshared, \
                         slave or rslave"
                    )),
                })
            }),
            // compose-go's default for a `bind:` section that leaves it out.
            create_host_path: b
                .get(cx, "create_host_path", |cx, n| cx.bool(n))
                .unwrap_or(true),
            selinux: b.get(cx, "selinux", |cx, n| {
                cx.parsed(n, |s| match s {
                    "z" | "Z" => Ok(s.to_string()),
                    _ => Err(format!("unknown selinux relabel {s:?}: expected z or Z")),
                })
            }),
        };
        b.finish(cx);
        Some(opts)
    });
    let volume = m.get(cx, "volume", |cx, n| {
        let mut v = cx.map(n)?;
        let opts = VolumeOptions {
            nocopy: v.get(cx, "nocopy", |cx, n| cx.bool(n)).unwrap_or(false),
            subpath: v.get(cx, "subpath", |cx, n| cx.string(n)),
        };
        v.finish(cx);
        Some(opts)
    });
    let tmpfs = m.get(cx, "tmpfs", |cx, n| {
        let mut t = cx.map(n)?;
        let opts = TmpfsOptions {
            size: t.get(cx, "size", bytes),
            mode: t.get(cx, "mode", mode),
        };
        t.finish(cx);
        Some(opts)
    });
    m.get(cx, "consistency", |cx, n| cx.string(n));
    m.ignore_extensions(cx);
    m.finish(cx);

    let (Some(kind), Some(target)) = (kind, target) else {
        if !m_has_error_for(cx, n, &["type", "target"]) {
            cx.error(n.path, "a long-syntax volume needs a type and a target");
        }
        return None;
    };
    if kind == MountType::Bind && source.is_none() {
        cx.error(n.path, "a bind mount needs a source (the host path)");
        return None;
    }
    if kind == MountType::Tmpfs && source.is_some() {
        cx.error(
            &join(n.path, "source"),
            "a tmpfs mount has no source; remove it",
        );
        return None;
    }
    let mismatched = [
        ("bind", bind.is_some(), MountType::Bind),
        ("volume", volume.is_some(), MountType::Volume),
        ("tmpfs", tmpfs.is_some(), MountType::Tmpfs),
    ];
    for (key, present, wants) in mismatched {
        if present && kind != wants {
            cx.error(
                &join(n.path, key),
                format!("{key} options apply only to type: {key}"),
            );
        }
    }
    Some(Mount {
        kind,
        source,
        target: clean_target(&target),
        read_only,
        bind,
        volume,
        tmpfs,
    })
}

fn m_has_error_for(cx: &Cx, n: Node, keys: &[&str]) -> bool {
    keys.iter().any(|k| {
        let p = join(n.path, k);
        cx.diags.iter().any(|d| d.path == p)
    })
}

fn networks(cx: &mut Cx, n: Node) -> Option<BTreeMap<String, ServiceNetwork>> {
    let mut out = BTreeMap::new();
    match n.v() {
        Value::Sequence(_) => {
            for name in cx.each(n, |cx, n| cx.string(n)) {
                out.insert(name, ServiceNetwork::default());
            }
        }
        _ => {
            let mut m = cx.map(n)?;
            for (name, value) in m.drain() {
                let path = join(n.path, &name);
                let node = Node { value, path: &path };
                let Some(mut nm) = cx.map(node) else { continue };
                let mut net = ServiceNetwork {
                    aliases: nm
                        .get(cx, "aliases", |cx, n| Some(cx.strings(n)))
                        .unwrap_or_default(),
                    ipv4_address: nm.get(cx, "ipv4_address", |cx, n| cx.parsed(n, ipv4)),
                    ipv6_address: nm.get(cx, "ipv6_address", |cx, n| cx.parsed(n, ipv6)),
                    priority: nm.get(cx, "priority", |cx, n| cx.int(n)),
                    mac_address: nm.get(cx, "mac_address", host::mac_address),
                    interface_name: nm.get(cx, "interface_name", host::interface_name),
                    gw_priority: nm.get(cx, "gw_priority", |cx, n| cx.int(n)),
                    link_local_ips: nm
                        .get(cx, "link_local_ips", |cx, n| {
                            Some(cx.each(n, host::link_local_ip))
                        })
                        .unwrap_or_default(),
                    driver_opts: nm
                        .get(cx, "driver_opts", |cx, n| Some(host::endpoint_opts(cx, n)))
                        .unwrap_or_default(),
                };
                // Docker's older way to name the interface.
                if net.interface_name.is_none() {
                    net.interface_name = net.driver_opts.get(host::ENDPOINT_IFNAME).cloned();
                }
                nm.ignore_extensions(cx);
                nm.finish(cx);
                out.insert(name, net);
            }
        }
    }
    // Two interfaces cannot have one name in a container.
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (net, opts) in &out {
        if let Some(name) = opts.interface_name.as_deref() {
            if let Some(other) = seen.insert(name, net) {
                cx.error(
                    &join(&join(n.path, net), "interface_name"),
                    format!(
                        "{name:?} is also network {other:?}'s interface name; give each its own"
                    ),
                );
            }
        }
    }
    Some(out)
}

fn ipv4(s: &str) -> Result<String, String> {
    s.parse::<std::net::Ipv4Addr>()
        .map(|_| s.to_string())
        .map_err(|_| format!("invalid IPv4 address {s:?}"))
}

fn ipv6(s: &str) -> Result<String, String> {
    s.parse::<std::net::Ipv6Addr>()
        .map(|_| s.to_string())
        .map_err(|_| format!("invalid IPv6 address {s:?}"))
}

fn depends_on(cx: &mut Cx, n: Node) -> Option<BTreeMap<String, Dependency>> {
    let mut out = BTreeMap::new();
    match n.v() {
        Value::Sequence(_) => {
            for name in cx.each(n, |cx, n| cx.string(n)) {
                out.insert(
                    name,
                    Dependency {
                        required: true,
                        ..Default::default()
                    },
                );
            }
        }
        _ => {
            let mut m = cx.map(n)?;
            for (name, value) in m.drain() {
                let path = join(n.path, &name);
                let node = Node { value, path: &path };
                let Some(mut dm) = cx.map(node) else { continue };
                let dep = Dependency {
                    condition: dm
                        .get(cx, "condition", |cx, n| {
                            cx.parsed(n, |s| match s {
                                "service_started" => Ok(Condition::ServiceStarted),
                                "service_healthy" => Ok(Condition::ServiceHealthy),
                                "service_completed_successfully" => {
                                    Ok(Condition::ServiceCompletedSuccessfully)
                                }
                                _ => Err(format!(
                                    "unknown condition {s:?}: expected service_started, \
                                     service_healthy or service_completed_successfully"
                                )),
                            })
                        })
                        .unwrap_or_default(),
                    restart: dm.get(cx, "restart", |cx, n| cx.bool(n)).unwrap_or(false),
                    required: dm.get(cx, "required", |cx, n| cx.bool(n)).unwrap_or(true),
                };
                dm.ignore_extensions(cx);
                dm.finish(cx);
                out.insert(name, dep);
            }
        }
    }
    Some(out)
}

fn healthcheck(cx: &mut Cx, n: Node) -> Option<Healthcheck> {
    let mut m = cx.map(n)?;
    let test = m.get(cx, "test", |cx, n| match n.v() {
        // A string is run by the container's shell, as CMD-SHELL.
        Value::String(s) => Some(vec!["CMD-SHELL".to_string(), s.clone()]),
        Value::Sequence(_) => {
            let test = cx.each(n, |cx, n| cx.scalar(n));
            match test.first().map(String::as_str) {
                Some("CMD" | "CMD-SHELL") if test.len() >= 2 => Some(test),
                Some("NONE") if test.len() == 1 => Some(test),
                _ => {
                    cx.error(
                        n.path,
                        "a healthcheck test list must start with CMD or CMD-SHELL followed by \
                         the command, or be [NONE]",
                    );
                    None
                }
            }
        }
        other => {
            cx.error(
                n.path,
                format!("expected a string or a list, found {}", kind(other)),
            );
            None
        }
    });
    let hc = Healthcheck {
        test: test.unwrap_or_default(),
        interval: m.get(cx, "interval", duration),
        timeout: m.get(cx, "timeout", duration),
        retries: m.get(cx, "retries", |cx, n| cx.u32(n)),
        start_period: m.get(cx, "start_period", duration),
        start_interval: m.get(cx, "start_interval", duration),
        disable: m.get(cx, "disable", |cx, n| cx.bool(n)).unwrap_or(false),
    };
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(hc)
}

fn logging(cx: &mut Cx, n: Node) -> Option<Logging> {
    let mut m = cx.map(n)?;
    let l = Logging {
        driver: m.get(cx, "driver", |cx, n| cx.string(n)),
        options: m
            .get(cx, "options", |cx, n| Some(labels(cx, n)))
            .unwrap_or_default(),
    };
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(l)
}

fn build(cx: &mut Cx, n: Node) -> Option<Build> {
    cx.warn(
        n.path,
        "building images is not supported by berth yet; the image must exist locally",
    );
    if let Value::String(context) = n.v() {
        return Some(Build {
            context: context.clone(),
            ..Default::default()
        });
    }
    let mut m = cx.map(n)?;
    let mut b = Build {
        context: m
            .get(cx, "context", |cx, n| cx.string(n))
            .unwrap_or_else(|| ".".into()),
        dockerfile: m.get(cx, "dockerfile", |cx, n| cx.string(n)),
        dockerfile_inline: m.get(cx, "dockerfile_inline", |cx, n| cx.string(n)),
        args: m
            .get(cx, "args", |cx, n| Some(cx.list_or_map(n)))
            .unwrap_or_default()
            .into_iter()
            .collect(),
        target: m.get(cx, "target", |cx, n| cx.string(n)),
        labels: m
            .get(cx, "labels", |cx, n| Some(labels(cx, n)))
            .unwrap_or_default(),
        cache_from: m
            .get(cx, "cache_from", |cx, n| Some(cx.strings(n)))
            .unwrap_or_default(),
        network: m.get(cx, "network", |cx, n| cx.string(n)),
        shm_size: m.get(cx, "shm_size", bytes),
        unsupported: BTreeMap::new(),
    };
    // compose-go refuses both: which one builds would be a guess.
    if b.dockerfile.is_some() && b.dockerfile_inline.is_some() {
        cx.error(
            &m.path_of("dockerfile_inline"),
            "dockerfile and dockerfile_inline are mutually exclusive; keep one",
        );
    }
    // The rest of the build section is kept verbatim: berth will read it when it builds.
    for (k, v) in m.drain() {
        b.unsupported.insert(k, v.clone());
    }
    Some(b)
}

fn env_file(cx: &mut Cx, n: Node) -> Option<EnvFile> {
    match n.v() {
        Value::Mapping(_) => {
            let mut m = cx.map(n)?;
            let path = m.get(cx, "path", |cx, n| cx.string(n));
            let required = m.get(cx, "required", |cx, n| cx.bool(n)).unwrap_or(true);
            let format = m.get(cx, "format", |cx, n| {
                cx.parsed(n, |s| match s {
                    "raw" => Ok(s.to_string()),
                    _ => Err(format!(
                        "unknown env_file format {s:?}: the only format is raw"
                    )),
                })
            });
            m.finish(cx);
            match path {
                Some(path) => Some(EnvFile {
                    path,
                    required,
                    format,
                }),
                None => {
                    cx.error(n.path, "an env_file entry needs a path");
                    None
                }
            }
        }
        _ => cx.string(n).map(|path| EnvFile {
            path,
            required: true,
            format: None,
        }),
    }
}

fn file_mount(cx: &mut Cx, n: Node, default_dir: &str) -> Option<FileMount> {
    let (source, target, uid, gid, mode_) = match n.v() {
        Value::Mapping(_) => {
            let mut m = cx.map(n)?;
            let source = m.get(cx, "source", |cx, n| cx.string(n));
            let target = m.get(cx, "target", |cx, n| cx.string(n));
            let uid = m.get(cx, "uid", |cx, n| cx.string(n));
            let gid = m.get(cx, "gid", |cx, n| cx.string(n));
            let mode_ = m.get(cx, "mode", mode);
            m.ignore_extensions(cx);
            m.finish(cx);
            let Some(source) = source else {
                cx.error(n.path, "needs a source (the name of a top-level entry)");
                return None;
            };
            (source, target, uid, gid, mode_)
        }
        _ => (cx.string(n)?, None, None, None, None),
    };
    for (key, id) in [("uid", &uid), ("gid", &gid)] {
        if let Some(id) = id {
            if id.parse::<u32>().is_err() {
                cx.error(
                    &join(n.path, key),
                    format!("{key} must be a number, found {id:?}"),
                );
            }
        }
    }
    let target = match target {
        Some(t) if t.starts_with('/') => t,
        // A relative target is relative to the default directory, as in Compose.
        Some(t) => format!("{default_dir}{t}"),
        None => format!("{default_dir}{source}"),
    };
    Some(FileMount {
        source,
        target,
        uid,
        gid,
        mode: mode_,
    })
}

fn deploy(cx: &mut Cx, n: Node) -> Option<Deploy> {
    let mut m = cx.map(n)?;
    let d = Deploy {
        mode: m
            .get(cx, "mode", |cx, n| {
                cx.parsed(n, |s| match s {
                    "replicated" => Ok(DeployMode::Replicated),
                    "global" => Ok(DeployMode::Global),
                    "replicated-job" => Ok(DeployMode::ReplicatedJob),
                    "global-job" => Ok(DeployMode::GlobalJob),
                    _ => Err(format!(
                        "unknown deploy mode {s:?}: expected replicated, global, replicated-job \
                         or global-job"
                    )),
                })
            })
            .unwrap_or_default(),
        replicas: m.get(cx, "replicas", |cx, n| cx.u32(n)),
        labels: m
            .get(cx, "labels", |cx, n| Some(labels(cx, n)))
            .unwrap_or_default(),
        resources: m.get(cx, "resources", resources),
        restart_policy: m.get(cx, "restart_policy", restart_policy),
        update_config: m.get(cx, "update_config", update_config),
        rollback_config: m.get(cx, "rollback_config", update_config),
        placement: m.get(cx, "placement", placement),
        endpoint_mode: m.get(cx, "endpoint_mode", |cx, n| {
            cx.parsed(n, |s| match s {
                "vip" => Ok(EndpointMode::Vip),
                "dnsrr" => Ok(EndpointMode::Dnsrr),
                _ => Err(format!(
                    "unknown endpoint_mode {s:?}: expected vip or dnsrr"
                )),
            })
        }),
    };
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(d)
}

fn resources(cx: &mut Cx, n: Node) -> Option<Resources> {
    let mut m = cx.map(n)?;
    let r = Resources {
        limits: m.get(cx, "limits", |cx, n| resource_set(cx, n, false)),
        reservations: m.get(cx, "reservations", |cx, n| resource_set(cx, n, true)),
    };
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(r)
}

/// `reservation`: whether this is `reservations` (the only place generic resources go).
fn resource_set(cx: &mut Cx, n: Node, reservation: bool) -> Option<ResourceSet> {
    let mut m = cx.map(n)?;
    let mut r = ResourceSet {
        cpus: m.get(cx, "cpus", cpus),
        memory: m.get(cx, "memory", bytes),
        pids: m.get(cx, "pids", |cx, n| cx.int_in(n, -1, i64::MAX)),
        devices: Vec::new(),
        generic_resources: Vec::new(),
    };
    r.devices = m
        .get(cx, "devices", |cx, n| {
            Some(cx.each(n, host::device_request))
        })
        .unwrap_or_default();
    if !reservation && m.has("generic_resources") {
        let path = m.path_of("generic_resources");
        m.take("generic_resources");
        cx.error(
            &path,
            "generic resources are reserved, not limited: move them under \
             deploy.resources.reservations",
        );
    }
    r.generic_resources = m
        .get(cx, "generic_resources", generic_resources)
        .unwrap_or_default();
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(r)
}

/// A reservation's `generic_resources`: counts of kinds, each kind once.
fn generic_resources(cx: &mut Cx, n: Node) -> Option<Vec<GenericResource>> {
    let items = cx.seq(n)?;
    let mut out: Vec<GenericResource> = Vec::new();
    for (i, value) in items.iter().enumerate() {
        let path = format!("{}[{i}]", n.path);
        let Some(g) = generic_resource(cx, Node { value, path: &path }) else {
            continue;
        };
        if let GenericResource::NamedResourceSpec { kind, .. } = &g {
            cx.error(
                &format!("{path}.named_resource_spec"),
                format!(
                    "a service reserves a count of a kind, not a named unit: write \
                     discrete_resource_spec: {{kind: {kind}, value: 1}} (named units are \
                     what a node advertises: berth daemon --node-generic-resource)"
                ),
            );
            continue;
        }
        if out.iter().any(|o| o.kind() == g.kind()) {
            cx.error(
                &path,
                format!(
                    "generic resource {} is reserved twice; reserve it once, with the total",
                    g.kind()
                ),
            );
            continue;
        }
        out.push(g);
    }
    Some(out)
}

fn generic_resource(cx: &mut Cx, n: Node) -> Option<GenericResource> {
    let mut m = cx.map(n)?;
    let spec = |cx: &mut Cx, n: Node, discrete: bool| -> Option<GenericResource> {
        let mut m = cx.map(n)?;
        let kind_path = m.path_of("kind");
        let kind = m.get(cx, "kind", |cx, n| cx.string(n));
        let value_path = m.path_of("value");
        let g = if discrete {
            let value = m.get(cx, "value", |cx, n| cx.int_in(n, 1, i64::MAX));
            value.map(|v| (v as u64).to_string())
        } else {
            m.get(cx, "value", |cx, n| cx.scalar(n))
        };
        m.ignore_extensions(cx);
        m.finish(cx);
        let kind = match kind {
            Some(k) => k,
            None => {
                cx.error(
                    &kind_path,
                    "missing: a generic resource needs its kind, like SSD",
                );
                return None;
            }
        };
        if let Err(why) = crate::generic::check_kind(&kind) {
            cx.error(&kind_path, why);
            return None;
        }
        let Some(value) = g else {
            cx.error(&value_path, "missing: a generic resource needs its value");
            return None;
        };
        Some(if discrete {
            GenericResource::DiscreteResourceSpec {
                kind,
                value: value.parse().unwrap_or(0),
            }
        } else {
            GenericResource::NamedResourceSpec { kind, value }
        })
    };
    let discrete = m.get(cx, "discrete_resource_spec", |cx, n| spec(cx, n, true));
    let named = m.get(cx, "named_resource_spec", |cx, n| spec(cx, n, false));
    m.ignore_extensions(cx);
    m.finish(cx);
    match (discrete, named) {
        (Some(_), Some(_)) => {
            cx.error(
                n.path,
                "discrete_resource_spec and named_resource_spec cannot be set together",
            );
            None
        }
        (Some(g), None) | (None, Some(g)) => Some(g),
        (None, None) => None,
    }
}

fn restart_policy(cx: &mut Cx, n: Node) -> Option<RestartPolicy> {
    let mut m = cx.map(n)?;
    let p = RestartPolicy {
        condition: m
            .get(cx, "condition", |cx, n| {
                cx.parsed(n, |s| match s {
                    "none" => Ok(RestartCondition::None),
                    "on-failure" => Ok(RestartCondition::OnFailure),
                    "any" => Ok(RestartCondition::Any),
                    _ => Err(format!(
                        "unknown condition {s:?}: expected none, on-failure or any"
                    )),
                })
            })
            .unwrap_or_default(),
        delay: m.get(cx, "delay", duration),
        max_attempts: m.get(cx, "max_attempts", |cx, n| cx.u32(n)),
        window: m.get(cx, "window", duration),
    };
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(p)
}

fn update_config(cx: &mut Cx, n: Node) -> Option<UpdateConfig> {
    let mut m = cx.map(n)?;
    let u = UpdateConfig {
        parallelism: m.get(cx, "parallelism", |cx, n| cx.u32(n)),
        delay: m.get(cx, "delay", duration),
        failure_action: m.get(cx, "failure_action", |cx, n| {
            cx.parsed(n, |s| match s {
                "continue" => Ok(FailureAction::Continue),
                "rollback" => Ok(FailureAction::Rollback),
                "pause" => Ok(FailureAction::Pause),
                _ => Err(format!(
                    "unknown failure_action {s:?}: expected continue, rollback or pause"
                )),
            })
        }),
        monitor: m.get(cx, "monitor", duration),
        max_failure_ratio: m.get(cx, "max_failure_ratio", |cx, n| {
            let f = cx.float(n)?;
            if (0.0..=1.0).contains(&f) {
                Some(f)
            } else {
                cx.error(n.path, format!("{f} is out of range (0-1)"));
                None
            }
        }),
        order: m.get(cx, "order", |cx, n| {
            cx.parsed(n, |s| match s {
                "stop-first" => Ok(UpdateOrder::StopFirst),
                "start-first" => Ok(UpdateOrder::StartFirst),
                _ => Err(format!(
                    "unknown order {s:?}: expected stop-first or start-first"
                )),
            })
        }),
    };
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(u)
}

fn placement(cx: &mut Cx, n: Node) -> Option<Placement> {
    let mut m = cx.map(n)?;
    let p = Placement {
        constraints: m
            .get(cx, "constraints", |cx, n| {
                Some(cx.each(n, |cx, n| {
                    let c: Constraint = cx.parsed(n, str::parse)?;
                    if let ConstraintKey::EngineLabel(_) = c.key {
                        cx.warn(
                            n.path,
                            "berth nodes have no engine labels: this constraint sees the label \
                             as absent; use node.labels.KEY",
                        );
                    }
                    Some(c)
                }))
            })
            .unwrap_or_default(),
        preferences: m
            .get(cx, "preferences", |cx, n| {
                Some(cx.each(n, |cx, n| {
                    let mut pm = cx.map(n)?;
                    let given = pm.has("spread");
                    let spread = pm.get(cx, "spread", |cx, n| {
                        cx.parsed(n, |s| {
                            crate::constraint::check_spread(s).map(|()| s.to_string())
                        })
                    });
                    pm.finish(cx);
                    match spread {
                        Some(spread) => Some(Preference { spread }),
                        None if given => None,
                        None => {
                            cx.error(n.path, "a placement preference needs spread: <label>");
                            None
                        }
                    }
                }))
            })
            .unwrap_or_default(),
        max_replicas_per_node: m.get(cx, "max_replicas_per_node", |cx, n| cx.u32(n)),
    };
    m.ignore_extensions(cx);
    m.finish(cx);
    Some(p)
}

/// Reads `env_file:` entries in order; later files win. A missing file is an error
/// unless the entry says `required: false`.
fn read_env_files(cx: &mut Cx, files: &[EnvFile], path: &str) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for f in files {
        let text = match crate::yaml::read_limited(std::path::Path::new(&f.path)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !f.required => continue,
            Err(e) => {
                cx.error(path, format!("cannot read env file {}: {e}", f.path));
                continue;
            }
        };
        if f.format.as_deref() == Some("raw") {
            // Raw files are for values full of `$` and quotes: taken exactly as written.
            for line in text.lines().map(|l| l.trim_end_matches('\r')) {
                if let Some((k, v)) = line.split_once('=').filter(|(k, _)| !k.trim().is_empty()) {
                    out.insert(k.trim().to_string(), Some(v.to_string()));
                }
            }
            continue;
        }
        let lookup = |name: &str| (cx.env)(name);
        match crate::dotenv::parse(&text, &lookup) {
            Ok(pairs) => {
                for (k, v) in pairs {
                    out.insert(k, Some(v));
                }
            }
            Err(e) => cx.error(path, format!("{}: {e}", f.path)),
        }
    }
    out
}

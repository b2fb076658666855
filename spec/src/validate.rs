//! Checks across the whole project: references, dependency cycles and conflicts.
//!
//! Decoding checked each value on its own; here the project is checked as a whole, after
//! merging and profiles, so that every reported problem is one the user must fix.

use std::collections::{BTreeMap, BTreeSet};

use crate::decode::project::cidr_contains;
use crate::diag::Diagnostics;
use crate::model::{
    DeployMode, Healthcheck, MountType, PortMode, Stack, UpdateConfig, UpdateOrder,
};
use crate::origin::Origin;

pub(crate) fn validate(stack: &Stack, origin: &Origin, main_file: &str, diags: &mut Diagnostics) {
    let file_of = |svc: &str, attr: &str| origin.file(svc, attr).unwrap_or(main_file);
    let mut container_names: BTreeMap<&str, &str> = BTreeMap::new();

    for (name, svc) in &stack.services {
        // Blame the file that last wrote the attribute in question.
        let file = |attr: &str| file_of(name, attr);
        let at = |attr: &str| format!("services.{name}.{attr}");
        if svc.image.is_none() && svc.build.is_none() {
            diags.error(
                file("image"),
                &format!("services.{name}"),
                "a service needs an image (or a build section)",
            );
        }
        for net in svc.networks.keys() {
            if !stack.networks.contains_key(net) {
                diags.error(
                    file(&format!("networks.{net}")),
                    &at(&format!("networks.{net}")),
                    undefined("network", net, stack.networks.keys()),
                );
            }
        }
        for (i, m) in svc.volumes.iter().enumerate() {
            if let (MountType::Volume, Some(src)) = (m.kind, &m.source) {
                if !stack.volumes.contains_key(src) {
                    diags.error(
                        file(&format!("volumes[{i}]")),
                        &at(&format!("volumes[{i}]")),
                        undefined("volume", src, stack.volumes.keys()),
                    );
                }
            }
        }
        for (i, s) in svc.secrets.iter().enumerate() {
            if !stack.secrets.contains_key(&s.source) {
                diags.error(
                    file(&format!("secrets[{i}]")),
                    &at(&format!("secrets[{i}]")),
                    undefined("secret", &s.source, stack.secrets.keys()),
                );
            }
        }
        for (i, c) in svc.configs.iter().enumerate() {
            if !stack.configs.contains_key(&c.source) {
                diags.error(
                    file(&format!("configs[{i}]")),
                    &at(&format!("configs[{i}]")),
                    undefined("config", &c.source, stack.configs.keys()),
                );
            }
        }
        for dep in svc.depends_on.keys() {
            if !stack.services.contains_key(dep) && dep != name {
                diags.error(
                    file(&format!("depends_on.{dep}")),
                    &at(&format!("depends_on.{dep}")),
                    undefined("service", dep, stack.services.keys()),
                );
            }
        }
        if svc.depends_on.contains_key(name) {
            diags.error(
                file(&format!("depends_on.{name}")),
                &at(&format!("depends_on.{name}")),
                "a service cannot depend on itself",
            );
        }

        if svc.network_mode.is_some() && !svc.networks.is_empty() {
            diags.error(
                file("networks"),
                &at("networks"),
                "network_mode and networks are mutually exclusive; remove one",
            );
        }
        // Two mounts on one path: one would hide the other (compose-go refuses it).
        let mut mounts: BTreeMap<&str, String> = BTreeMap::new();
        let tmpfs = svc.tmpfs.iter().enumerate().map(|(i, t)| {
            let target = t.split_once(':').map_or(t.as_str(), |(p, _)| p);
            (format!("tmpfs[{i}]"), target)
        });
        let volumes = (svc.volumes.iter().enumerate())
            .map(|(i, m)| (format!("volumes[{i}]"), m.target.as_str()));
        for (attr, target) in tmpfs.chain(volumes) {
            if let Some(first) = mounts.get(target) {
                diags.error(
                    file(&attr),
                    &at(&attr),
                    format!("{target} is already mounted by services.{name}.{first}; mount one of them elsewhere"),
                );
            } else {
                mounts.insert(target, attr);
            }
        }
        let limits = (svc.deploy.as_ref())
            .and_then(|d| d.resources.as_ref())
            .and_then(|r| r.limits.as_ref());
        let reservations = (svc.deploy.as_ref())
            .and_then(|d| d.resources.as_ref())
            .and_then(|r| r.reservations.as_ref());
        let show_bytes = |b: Option<u64>| b.map(|b| b.to_string()).unwrap_or_default();
        // The service-level shorthands and deploy's resources say the same thing;
        // compose-go refuses them when they differ.
        let pairs = [
            (
                "cpus",
                "deploy.resources.limits.cpus",
                svc.cpus
                    .zip(limits.and_then(|l| l.cpus))
                    .filter(|(a, b)| (a - b).abs() > 1e-9)
                    .map(|(a, b)| (a.to_string(), b.to_string())),
            ),
            (
                "mem_limit",
                "deploy.resources.limits.memory",
                svc.mem_limit
                    .zip(limits.and_then(|l| l.memory))
                    .filter(|(a, b)| a != b)
                    .map(|(a, b)| (show_bytes(Some(a)), show_bytes(Some(b)))),
            ),
            (
                "mem_reservation",
                "deploy.resources.reservations.memory",
                svc.mem_reservation
                    .zip(reservations.and_then(|l| l.memory))
                    .filter(|(a, b)| a != b)
                    .map(|(a, b)| (show_bytes(Some(a)), show_bytes(Some(b)))),
            ),
            (
                "pids_limit",
                "deploy.resources.limits.pids",
                svc.pids_limit
                    .zip(limits.and_then(|l| l.pids))
                    .filter(|(a, b)| a != b)
                    .map(|(a, b)| (a.to_string(), b.to_string())),
            ),
        ];
        for (short, long, differ) in pairs {
            if let Some((a, b)) = differ {
                diags.error(
                    file(short),
                    &at(short),
                    format!("{short} ({a}) and {long} ({b}) disagree; set only one"),
                );
            }
        }

        let replicas = svc.deploy.as_ref().and_then(|d| d.replicas);
        if let (Some(scale), Some(replicas)) = (svc.scale, replicas) {
            if scale != replicas {
                diags.error(
                    file("scale"),
                    &at("scale"),
                    format!(
                        "scale ({scale}) and deploy.replicas ({replicas}) disagree; set only one"
                    ),
                );
            }
        }
        if let Some(d) = &svc.deploy {
            if matches!(d.mode, DeployMode::Global | DeployMode::GlobalJob) && d.replicas.is_some()
            {
                diags.error(file("deploy"), &at("deploy.replicas"), "a global service runs one task per node; remove replicas or use mode: replicated");
            }
            for (key, config) in [
                ("update_config", &d.update_config),
                ("rollback_config", &d.rollback_config),
            ] {
                let Some(config) = config else { continue };
                let path = at(&format!("deploy.{key}"));
                if let Some(why) = monitor_too_short(config, svc.healthcheck.as_ref()) {
                    diags.warn(file("deploy"), &format!("{path}.monitor"), why);
                }
                if config.order == Some(UpdateOrder::StartFirst) {
                    if let Some(why) = start_first_clash(svc) {
                        diags.warn(
                            file("deploy"),
                            &format!("{path}.order"),
                            format!("start-first will be done as stop-first: {why}"),
                        );
                    }
                }
            }
        }
        if let Some(cn) = &svc.container_name {
            if replicas.or(svc.scale).unwrap_or(1) > 1 {
                diags.error(
                    file("container_name"),
                    &at("container_name"),
                    "a service with several replicas cannot have a fixed container_name",
                );
            }
            if let Some(other) = container_names.insert(cn, name) {
                diags.error(
                    file("container_name"),
                    &at("container_name"),
                    format!("container name {cn:?} is already used by service {other:?}"),
                );
            }
        }
        // An IPv6 address on a network without IPv6 would be dropped: say so.
        for (net, attach) in &svc.networks {
            let no_ipv6 = stack
                .networks
                .get(net)
                .is_some_and(|n| !n.external && !n.enable_ipv6);
            if attach.ipv6_address.is_some() && no_ipv6 {
                diags.warn(
                    file(&format!("networks.{net}.ipv6_address")),
                    &at(&format!("networks.{net}.ipv6_address")),
                    format!("network {net:?} does not set enable_ipv6: true, so the container gets no IPv6 address there; ignored"),
                );
            }
        }
        for (net, attach) in &svc.networks {
            let Some(addr) = &attach.ipv4_address else {
                continue;
            };
            // An external network's subnet is not known here; the engine checks it.
            let Some(network) = stack.networks.get(net).filter(|n| !n.external) else {
                continue;
            };
            let subnets: Vec<&str> = network
                .ipam
                .iter()
                .flat_map(|i| &i.config)
                .filter_map(|p| p.subnet.as_deref())
                .collect();
            if subnets.is_empty() {
                diags.error(
                    file(&format!("networks.{net}.ipv4_address")),
                    &at(&format!("networks.{net}.ipv4_address")),
                    format!("network {net:?} has no ipam subnet; a fixed address needs one"),
                );
            } else if !subnets.iter().any(|s| cidr_contains(s, addr)) {
                diags.error(
                    file(&format!("networks.{net}.ipv4_address")),
                    &at(&format!("networks.{net}.ipv4_address")),
                    format!(
                        "{addr} is not inside the subnet of network {net:?} ({})",
                        subnets.join(", ")
                    ),
                );
            }
        }
    }
    port_conflicts(stack, &file_of, diags);
    cycles(stack, &file_of, diags);
}

pub(crate) fn undefined<'a>(
    what: &str,
    name: &str,
    known: impl Iterator<Item = &'a String>,
) -> String {
    let known: Vec<&str> = known.map(String::as_str).collect();
    let hint = match crate::decode::suggest(name, &known) {
        Some(s) => format!("; did you mean {s:?}?"),
        None => format!("; define it under the top-level {what}s: section"),
    };
    format!("{what} {name:?} is not defined{hint}")
}

/// Two services cannot publish the same host port: the second `up` would fail halfway.
fn port_conflicts<'a>(
    stack: &'a Stack,
    file_of: &dyn Fn(&str, &str) -> &'a str,
    diags: &mut Diagnostics,
) {
    let mut seen: Vec<(&str, usize, &crate::model::Port)> = Vec::new();
    for (name, svc) in &stack.services {
        // Replicas of one service sharing a published port is not a conflict: in ingress
        // mode one port serves them all (Swarm's routing mesh), and in host mode the
        // scheduler places at most one such replica per node.
        for (i, p) in svc.ports.iter().enumerate() {
            let Some(published) = p.published else {
                continue;
            };
            for (other, j, q) in &seen {
                let Some(theirs) = q.published else { continue };
                let same_ip = p.host_ip.is_none() || q.host_ip.is_none() || p.host_ip == q.host_ip;
                // Two host-mode ports may land on different nodes; the scheduler decides.
                let both_host = p.mode == PortMode::Host && q.mode == PortMode::Host;
                if same_ip && !both_host && p.protocol == q.protocol && published.overlaps(&theirs)
                {
                    diags.error(
                        file_of(name, "ports"),
                        &format!("services.{name}.ports[{i}]"),
                        format!("host port {published}/{} is already published by services.{other}.ports[{j}]", p.protocol),
                    );
                }
            }
            seen.push((name, i, p));
        }
    }
}

/// Reports each dependency cycle once, as the chain of services that forms it.
fn cycles<'a>(stack: &'a Stack, file_of: &dyn Fn(&str, &str) -> &'a str, diags: &mut Diagnostics) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'s>(
        name: &'s str,
        stack: &'s Stack,
        marks: &mut BTreeMap<&'s str, Mark>,
        path: &mut Vec<&'s str>,
        found: &mut BTreeSet<Vec<&'s str>>,
    ) {
        match marks.get(name) {
            Some(Mark::Done) => return,
            Some(Mark::Visiting) => {
                if let Some(start) = path.iter().position(|n| *n == name) {
                    let mut cycle = path[start..].to_vec();
                    // Rotate so the same cycle found from another entry point is one report.
                    let min = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, n)| **n)
                        .map(|(i, _)| i)
                        .unwrap_or(0);
                    cycle.rotate_left(min);
                    found.insert(cycle);
                }
                return;
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        path.push(name);
        if let Some(svc) = stack.services.get(name) {
            for dep in svc.depends_on.keys() {
                if stack.services.contains_key(dep) && dep != name {
                    visit(dep, stack, marks, path, found);
                }
            }
        }
        path.pop();
        marks.insert(name, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut found = BTreeSet::new();
    for name in stack.services.keys() {
        visit(name, stack, &mut marks, &mut Vec::new(), &mut found);
    }
    for cycle in found {
        let first = cycle[0];
        let mut chain = cycle.clone();
        chain.push(first);
        diags.error(
            file_of(first, "depends_on"),
            &format!("services.{first}.depends_on"),
            format!("dependency cycle: {}", chain.join(" -> ")),
        );
    }
}

/// Swarm's `monitor` when `update_config` leaves it out.
pub const DEFAULT_MONITOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a `start-first` update of `service` must stop the old task before it starts
/// the new one: something the two cannot both hold on one node. None: it can start
/// first. The loader warns with it; the updater follows it and says so.
pub fn start_first_clash(service: &crate::model::Service) -> Option<String> {
    if let Some(p) = service
        .ports
        .iter()
        .find(|p| p.mode == PortMode::Host && p.published.is_some())
    {
        let port = p.published.map(|r| r.to_string()).unwrap_or_default();
        return Some(format!(
            "host port {port} is published in host mode (one container per node)"
        ));
    }
    // A range gives each container a port of its own: the new task needs one free
    // beside the old one's, which a range sized to the replicas does not have.
    if let Some(p) = service
        .ports
        .iter()
        .find(|p| p.published.is_some_and(|r| r.start != r.end))
    {
        let range = p.published.map(|r| r.to_string()).unwrap_or_default();
        return Some(format!(
            "host ports {range} are a range (a port per container)"
        ));
    }
    if let Some(name) = &service.container_name {
        return Some(format!("container_name {name} names one container"));
    }
    if let Some((net, _)) = service
        .networks
        .iter()
        .find(|(_, n)| n.ipv4_address.is_some() || n.ipv6_address.is_some())
    {
        return Some(format!(
            "a fixed address on network {net} is one container's"
        ));
    }
    None
}

/// Why `config`'s `monitor` cannot see a new task fail its healthcheck: the check may
/// first call it unhealthy only after `start_period + interval x retries` (Docker's
/// defaults: 0 s, 30 s, 3), and a task that turns unhealthy after the monitor counts
/// as updated (Swarm's trap). None when it is long enough, or there is no check.
fn monitor_too_short(config: &UpdateConfig, check: Option<&Healthcheck>) -> Option<String> {
    use std::time::Duration;
    let check = check.filter(|c| !c.disable && c.test.first().is_none_or(|t| t != "NONE"))?;
    let interval = check.interval.unwrap_or(Duration::from_secs(30));
    let retries = check.retries.unwrap_or(3);
    let needed = check.start_period.unwrap_or_default() + interval * retries;
    let monitor = config.monitor.unwrap_or(DEFAULT_MONITOR);
    (monitor < needed).then(|| {
        let show = crate::units::format_duration;
        format!(
            "monitor {} is shorter than the healthcheck's start_period + interval x retries \
             ({}): a new task that turns unhealthy later would count as updated; set \
             monitor: {} or more",
            show(monitor),
            show(needed),
            show(needed)
        )
    })
}

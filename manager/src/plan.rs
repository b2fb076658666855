//! `berth up --dry-run`: what `up` would do, per service, without doing it. Pure: the
//! plan is worked out from the state and the request by the same functions `up` and
//! the orchestrator run ([`stacks::up`], [`orchestrator::spec_hash`],
//! [`orchestrator::replicas`], the scheduler's [`crate::orchestrator::run::place`]),
//! so that what it says is what `up` then does (`manager/tests/plan.rs` checks it
//! against `up` followed by the orchestrator run to the end).
//!
//! Per service: created (slots that have no task), recreated (slots whose task was
//! made from another definition, with the attributes that changed, old -> new),
//! scaled (slots added or removed), removed (a service the file dropped, with
//! `--remove-orphans`), kept as an orphan, or unchanged; on a cluster, the node each
//! new task would go to, or why it could not be placed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use spec::model::Service;
use spec::task::{DesiredState, StackRecord, Task};

use crate::orchestrator::{self, Nodes};
use crate::stacks::{self, UpRequest};
use crate::state::model::State;

/// What `up` would do to one stack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpPlan {
    pub stack: String,
    /// By service name.
    pub services: Vec<ServicePlan>,
}

impl UpPlan {
    /// Whether `up` would change anything.
    pub fn changes(&self) -> bool {
        self.services.iter().any(|s| s.action != Action::Unchanged)
    }
}

/// What `up` would do to one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub service: String,
    pub action: Action,
    /// Slots that would get a task where none runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create: Vec<u32>,
    /// Slots whose task would be replaced by one of the new definition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recreate: Vec<u32>,
    /// Slots whose task would be removed, and not replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<u32>,
    /// Live tasks before, slots after.
    pub replicas: (u32, u32),
    /// Why the tasks are recreated: the attributes that changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<AttrChange>,
    /// Dependencies that will have no task, which its new tasks would wait for
    /// forever (their slots are in neither `create` nor `recreate`: a task being
    /// replaced is removed, and its replacement waits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits_for: Vec<String>,
    /// On a cluster, where each new task would go: `(slot, node hostname)`, or why
    /// it could not be placed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placed: Vec<(u32, Placed)>,
    /// How a recreate proceeds when the service rolls (`update_config`, or any
    /// service on a cluster): `2 at a time, start-first, monitor 1s, on failure
    /// rollback`. None: all at once, as Compose does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling: Option<String>,
}

/// A service's fate, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Recreate,
    Scale,
    Remove,
    /// Dropped from the file, kept running (no `--remove-orphans`).
    Orphan,
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Recreate => "recreate",
            Action::Scale => "scale",
            Action::Remove => "remove",
            Action::Orphan => "orphan",
            Action::Unchanged => "unchanged",
        }
    }
}

/// One attribute that changed: its path in the service (`image`,
/// `environment.MODE`, `deploy.replicas`) or what else the task is made from
/// (`secrets.db_password: content`), with its old and new values (JSON; absent: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrChange {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
}

/// Where a new task would go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placed {
    Node(String),
    Pending(String),
}

/// What `up` of `req` as stack `name` would do to `state`, on nodes as `nodes` says
/// (`Nodes::default()` and no node records on a single host). Pure.
pub fn plan_up(state: &State, name: &str, req: &UpRequest, nodes: &Nodes) -> UpPlan {
    let mut after = state.clone();
    stacks::up(&mut after, name, req);
    let record = &after.stacks[name];
    let old = state.stacks.get(name);
    let tasks: Vec<&Task> = after.tasks.values().filter(|t| t.stack == name).collect();
    let before: BTreeMap<&str, &Task> = state
        .tasks
        .values()
        .filter(|t| t.stack == name)
        .map(|t| (t.id.as_str(), t))
        .collect();

    let mut names: BTreeSet<&String> = record.stack.services.keys().collect();
    names.extend(record.orphans.keys());
    if let Some(old) = old {
        names.extend(old.stack.services.keys().chain(old.orphans.keys()));
    }
    let mut plan = UpPlan {
        stack: name.to_string(),
        services: Vec::new(),
    };
    // Hypothetical new tasks, for the scheduler to place (cluster only).
    let mut new_tasks: Vec<Task> = Vec::new();
    // Grouped once: a thousand services must not each scan every task.
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in &tasks {
        by_service.entry(t.service.as_str()).or_default().push(t);
    }
    for svc_name in names {
        let of_service: Vec<&Task> = by_service
            .get(svc_name.as_str())
            .cloned()
            .unwrap_or_default();
        // Live before `up`: what runs now (a stopped service's tasks do not). `up`
        // itself may mark them for replacement (--force-recreate).
        let was_live = |t: &Task| {
            before
                .get(t.id.as_str())
                .is_some_and(|b| b.desired == DesiredState::Running)
        };
        let live_before = of_service.iter().filter(|t| was_live(t)).count() as u32;
        let definition = record
            .stack
            .services
            .get(svc_name)
            .or_else(|| record.orphans.get(svc_name));
        let Some(service) = definition else {
            // Dropped and not kept: removed with `--remove-orphans`.
            let remove: Vec<u32> = slots_of(&of_service, was_live);
            plan.services.push(ServicePlan {
                service: svc_name.clone(),
                action: if remove.is_empty() {
                    Action::Unchanged
                } else {
                    Action::Remove
                },
                create: vec![],
                recreate: vec![],
                replicas: (live_before, 0),
                remove,
                changed: vec![],
                waits_for: vec![],
                placed: vec![],
                rolling: None,
            });
            continue;
        };
        let orphan = !record.stack.services.contains_key(svc_name);
        let hash = orchestrator::spec_hash(record, service);
        let deps_seen: BTreeMap<String, String> = service
            .depends_on
            .iter()
            .filter(|(_, d)| d.restart)
            .filter_map(|(dep, _)| {
                Some((dep.clone(), orchestrator::dependency_marker(record, dep)?))
            })
            .collect();
        let slots: Vec<u32> = match nodes.global.get(&(name.to_string(), svc_name.clone())) {
            Some(on) => {
                let by_slot = by_slot(&of_service);
                orchestrator::global_slots_of(&by_slot, on)
                    .into_iter()
                    .filter(|(node, _)| !nodes.down.contains(*node))
                    .map(|(_, slot)| slot)
                    .collect()
            }
            None => (1..=orchestrator::replicas(record, svc_name, service)).collect(),
        };
        let mut sp = ServicePlan {
            service: svc_name.clone(),
            action: Action::Unchanged,
            create: vec![],
            recreate: vec![],
            remove: vec![],
            replicas: (live_before, slots.len() as u32),
            changed: vec![],
            waits_for: never_met(record, service, nodes, name),
            placed: vec![],
            rolling: None,
        };
        let wanted: BTreeSet<u32> = slots.iter().copied().collect();
        for slot in &slots {
            let in_slot: Vec<&&Task> = of_service.iter().filter(|t| t.slot == *slot).collect();
            let live = in_slot
                .iter()
                .filter(|t| t.desired == DesiredState::Running)
                .max_by_key(|t| t.generation);
            // Running before, marked for replacement by `up` itself (--force-recreate,
            // or a container that never started).
            let marked = in_slot
                .iter()
                .any(|t| t.desired == DesiredState::Remove && was_live(t));
            match live {
                Some(t) if t.spec_hash != hash || moved(t, &deps_seen) => sp.recreate.push(*slot),
                Some(_) => {}
                None if marked => sp.recreate.push(*slot),
                None => sp.create.push(*slot),
            }
        }
        sp.remove = slots_of(&of_service, |t| was_live(t) && !wanted.contains(&t.slot));
        if !sp.waits_for.is_empty() {
            // Nothing new starts: what would be replaced only goes.
            sp.remove.append(&mut sp.recreate);
            sp.remove.sort_unstable();
            sp.create.clear();
        }
        if !sp.recreate.is_empty() {
            let first = sp.recreate[0];
            let task = of_service
                .iter()
                .filter(|t| t.slot == first)
                .max_by_key(|t| t.generation);
            sp.changed = why_recreated(old, record, svc_name, service, task.copied(), &deps_seen);
        }
        sp.action = if orphan && sp.create.is_empty() && sp.recreate.is_empty() {
            if live_before > 0 && old.is_some_and(|o| o.stack.services.contains_key(svc_name)) {
                Action::Orphan
            } else {
                Action::Unchanged
            }
        } else if !sp.recreate.is_empty() {
            Action::Recreate
        } else if live_before == 0 && !sp.create.is_empty() {
            Action::Create
        } else if !sp.create.is_empty() || !sp.remove.is_empty() {
            Action::Scale
        } else {
            Action::Unchanged
        };
        if sp.action == Action::Recreate {
            sp.rolling = rolling_text(service, nodes.placed);
        }
        for slot in sp.create.iter().chain(&sp.recreate) {
            let mut t = Task {
                id: format!("{name}-{svc_name}-{slot}.plan"),
                stack: name.to_string(),
                service: svc_name.clone(),
                slot: *slot,
                generation: u32::MAX,
                spec_hash: hash.clone(),
                desired: DesiredState::Running,
                status: Default::default(),
                created_at: 0,
                restarts: 0,
                stop_grace_ms: None,
                deps_seen: BTreeMap::new(),
                node: None,
                for_node: None,
                generic_resources: Default::default(),
            };
            if let Some(on) = nodes.global.get(&(name.to_string(), svc_name.clone())) {
                let by_slot = by_slot(&of_service);
                // Made for its node; the scheduler places it there if it fits.
                t.for_node = orchestrator::global_slots_of(&by_slot, on)
                    .into_iter()
                    .find(|(_, s)| s == slot)
                    .map(|(n, _)| n.to_string());
            }
            new_tasks.push(t);
        }
        plan.services.push(sp);
    }
    if !after.nodes.is_empty() {
        place_new(&mut plan, after, name, new_tasks, nodes);
    }
    plan
}

/// Runs the scheduler on the state `up` leaves, with the tasks it would replace gone
/// and the new ones in, and records where each new task goes.
fn place_new(plan: &mut UpPlan, mut after: State, name: &str, new: Vec<Task>, nodes: &Nodes) {
    let replaced: BTreeSet<(String, u32)> = plan
        .services
        .iter()
        .flat_map(|s| {
            s.recreate
                .iter()
                .chain(&s.remove)
                .map(|slot| (s.service.clone(), *slot))
        })
        .collect();
    after.tasks.retain(|_, t| {
        !(t.stack == name && replaced.contains(&(t.service.clone(), t.slot)))
            && t.desired == DesiredState::Running
    });
    for t in &new {
        after.tasks.insert(t.id.clone(), t.clone());
    }
    crate::orchestrator::run::place(&mut after, nodes);
    for sp in &mut plan.services {
        for slot in sp.create.iter().chain(&sp.recreate) {
            let id = format!("{name}-{}-{slot}.plan", sp.service);
            let Some(t) = after.tasks.get(&id) else {
                continue;
            };
            let placed = match &t.node {
                Some(node) => Placed::Node(
                    after
                        .nodes
                        .get(node)
                        .map_or_else(|| node.clone(), |n| n.hostname.clone()),
                ),
                None => Placed::Pending(t.status.message.clone()),
            };
            sp.placed.push((*slot, placed));
        }
        sp.placed.sort_by_key(|(slot, _)| *slot);
    }
}

/// The dependencies of `service` that will have no task in `record` (no slot), so
/// that a condition on them is never met.
fn never_met(record: &StackRecord, service: &Service, nodes: &Nodes, stack: &str) -> Vec<String> {
    service
        .depends_on
        .keys()
        .filter(|dep| match record.stack.services.get(*dep) {
            // A dependency the file lacks is an optional one (validation saw to it).
            None => false,
            Some(d) => match nodes.global.get(&(stack.to_string(), dep.to_string())) {
                Some(on) => on.is_empty(),
                None => orchestrator::replicas(record, dep, d) == 0,
            },
        })
        .cloned()
        .collect()
}

fn by_slot<'a>(tasks: &[&'a Task]) -> BTreeMap<u32, Vec<&'a Task>> {
    let mut m: BTreeMap<u32, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        m.entry(t.slot).or_default().push(t);
    }
    for list in m.values_mut() {
        list.sort_by_key(|t| t.generation);
    }
    m
}

fn slots_of(tasks: &[&Task], keep: impl Fn(&Task) -> bool) -> Vec<u32> {
    let set: BTreeSet<u32> = tasks.iter().filter(|t| keep(t)).map(|t| t.slot).collect();
    set.into_iter().collect()
}

fn moved(t: &Task, deps_seen: &BTreeMap<String, String>) -> bool {
    deps_seen
        .iter()
        .any(|(dep, marker)| t.deps_seen.get(dep).is_some_and(|seen| seen != marker))
}

/// Why the task of a recreated slot is replaced: the service's attributes that
/// changed, else what else it is made from (secrets, configs, networks, volumes, a
/// dependency that restarts it), else `up`'s own reason.
fn why_recreated(
    old: Option<&StackRecord>,
    record: &StackRecord,
    name: &str,
    service: &Service,
    task: Option<&Task>,
    deps_seen: &BTreeMap<String, String>,
) -> Vec<AttrChange> {
    let Some(old) = old else {
        return vec![];
    };
    let old_service = old
        .stack
        .services
        .get(name)
        .or_else(|| old.orphans.get(name));
    let mut out = Vec::new();
    if let Some(old_service) = old_service {
        let a = serde_json::to_value(old_service).unwrap_or(Value::Null);
        let b = serde_json::to_value(service).unwrap_or(Value::Null);
        json_diff("", &a, &b, &mut out);
    }
    if out.is_empty() {
        for (label, (a, b)) in inputs(old, old_service.unwrap_or(service))
            .into_iter()
            .map(|(k, v)| (k, (Some(v), None)))
            .chain(
                inputs(record, service)
                    .into_iter()
                    .map(|(k, v)| (k, (None, Some(v)))),
            )
            .fold(
                BTreeMap::<String, (Option<String>, Option<String>)>::new(),
                |mut m, (k, (a, b))| {
                    let e = m.entry(k).or_default();
                    e.0 = e.0.take().or(a);
                    e.1 = e.1.take().or(b);
                    m
                },
            )
        {
            if a != b {
                out.push(AttrChange {
                    path: label,
                    old: None,
                    new: None,
                });
            }
        }
    }
    if out.is_empty() {
        if let Some(t) = task.filter(|t| moved(t, deps_seen)) {
            for (dep, marker) in deps_seen {
                if t.deps_seen.get(dep).is_some_and(|seen| seen != marker) {
                    out.push(AttrChange {
                        path: format!("depends_on.{dep}: updated or restarted (restart: true)"),
                        old: None,
                        new: None,
                    });
                }
            }
        }
    }
    out
}

/// What a task is made from besides its service's definition, as `spec_hash` reads it:
/// label -> the JSON it hashes.
fn inputs(record: &StackRecord, service: &Service) -> BTreeMap<String, String> {
    let stack = &record.stack;
    let json = |v: serde_json::Result<String>| v.unwrap_or_default();
    let mut m = BTreeMap::new();
    for s in &service.secrets {
        m.insert(
            format!("secrets.{}: definition", s.source),
            json(serde_json::to_string(&stack.secrets.get(&s.source))),
        );
        let key = format!("secrets.{}", s.source);
        m.insert(
            format!("{key}: content"),
            record.contents.get(&key).cloned().unwrap_or_default(),
        );
    }
    for c in &service.configs {
        m.insert(
            format!("configs.{}: definition", c.source),
            json(serde_json::to_string(&stack.configs.get(&c.source))),
        );
        let key = format!("configs.{}", c.source);
        m.insert(
            format!("{key}: content"),
            record.contents.get(&key).cloned().unwrap_or_default(),
        );
    }
    for n in service.networks.keys() {
        m.insert(
            format!("networks.{n}: definition"),
            json(serde_json::to_string(&stack.networks.get(n))),
        );
    }
    for v in service.volumes.iter().filter_map(|m| m.source.as_ref()) {
        if let Some(vol) = stack.volumes.get(v) {
            m.insert(
                format!("volumes.{v}: definition"),
                json(serde_json::to_string(vol)),
            );
        }
    }
    m
}

/// The leaves that differ between `a` and `b`, by path (`environment.MODE`,
/// `ports[0].published`); a list whose length changed is one change.
fn json_diff(path: &str, a: &Value, b: &Value, out: &mut Vec<AttrChange>) {
    if a == b {
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                json_diff(
                    &join(k),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ => out.push(AttrChange {
            path: path.to_string(),
            old: (!a.is_null()).then(|| a.to_string()),
            new: (!b.is_null()).then(|| b.to_string()),
        }),
    }
}

/// How a changed `service` rolls, in words, or None if it is recreated all at once.
fn rolling_text(service: &spec::model::Service, cluster: bool) -> Option<String> {
    use spec::model::{FailureAction, UpdateOrder};
    let p = orchestrator::update::Policy::of(service, false, cluster)?;
    let at_a_time = match p.parallelism {
        0 => "all at once".to_string(),
        n => format!("{n} at a time"),
    };
    let mut order = match p.order {
        UpdateOrder::StartFirst => "start-first",
        UpdateOrder::StopFirst => "stop-first",
    }
    .to_string();
    if p.order == UpdateOrder::StartFirst {
        if let Some(why) = spec::start_first_clash(service) {
            order = format!("stop-first ({why})");
        }
    }
    let delay = if p.delay_ms > 0 {
        format!(", {} ms apart", p.delay_ms)
    } else {
        String::new()
    };
    let action = match p.failure_action {
        FailureAction::Pause => "pause",
        FailureAction::Continue => "continue",
        FailureAction::Rollback => "rollback",
    };
    Some(format!(
        "{at_a_time}, {order}{delay}, monitor {} ms, on failure {action}",
        p.monitor_ms
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_diff_names_the_leaves_that_changed() {
        let a = serde_json::json!({"image": "a:1", "environment": {"X": "1", "Y": "2"}, "ports": [1, 2]});
        let b = serde_json::json!({"image": "a:2", "environment": {"X": "1", "Z": "3"}, "ports": [1, 2, 3]});
        let mut out = Vec::new();
        json_diff("", &a, &b, &mut out);
        let paths: Vec<&str> = out.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["environment.Y", "environment.Z", "image", "ports"]);
        assert_eq!(out[0].new, None);
        assert_eq!(out[1].old, None);
        assert_eq!(out[2].old.as_deref(), Some("\"a:1\""));
    }
}

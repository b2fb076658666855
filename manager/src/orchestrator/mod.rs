//! The orchestrator: from the deployed stacks and the tasks the store holds, the changes
//! that make the tasks match the stacks. A plain function (DESIGN invariant 2):
//! `(stacks, tasks, now) -> Plan`, no store, no clock, no I/O; the daemon applies the
//! plan in one store transaction and runs it again whenever something changed or the
//! plan asked to be woken. Running it on its own result changes nothing.
//!
//! Per service of each stack, per slot `1..=replicas`:
//! - no live task (one whose desired state is `running`) → create one, once the
//!   service's `depends_on` conditions hold;
//! - a live task made from an older definition (its `spec_hash` differs) → remove it,
//!   and create the new task once it is gone (Compose recreates: stop, then start);
//! - a live task that has ended → restart it per the restart policy (a new task in the
//!   same slot, after a back-off), or leave it ended;
//! - tasks of slots above `replicas`, of services no longer deployed (and not kept as
//!   orphans), of stacks taken down → remove;
//! - removed tasks whose container is gone → delete the record; old ended tasks beyond
//!   [`HISTORY`] per slot → remove.
//!
//! [`run`] is the loop around it: the plan applied in a store transaction.

pub mod nodes;
pub mod run;
pub mod update;

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use spec::model::{Condition, Restart, RestartCondition, RestartPolicy, Service, Stack};
use spec::task::{DesiredState, Health, StackRecord, Task, TaskState, UpdateState, UpdateStatus};

/// Ended tasks kept per slot, for `ps -a` and logs of what came before.
pub const HISTORY: usize = 2;
/// Restart back-off without a `delay`: doubles from this...
const BACKOFF_START_MS: u64 = 100;
/// ...up to this, as Docker's.
const BACKOFF_MAX_MS: u64 = 10_000;
/// A task that ran this long resets the back-off.
const BACKOFF_RESET_MS: u64 = 10_000;

/// A change to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Create(Box<Task>),
    SetDesired {
        task: String,
        desired: DesiredState,
    },
    Delete {
        task: String,
    },
    /// Records where a service's rolling update stands.
    SetUpdate {
        stack: String,
        service: String,
        status: UpdateStatus,
    },
    /// Returns a service to its previous definition (the two swap, as Swarm's
    /// rollback does), its update now rolling back as `status` says.
    Rollback {
        stack: String,
        service: String,
        status: UpdateStatus,
    },
}

/// What to do now, and when to look again even if nothing changes (a restart back-off).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub wake_at: Option<u64>,
}

impl Plan {
    fn wake(&mut self, at: u64) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// What the orchestrator knows of a cluster's nodes (all empty on a single host). The
/// loop around it works these out from the store, the heartbeats and the scheduler's
/// filters; the orchestrator only follows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Nodes {
    /// Nodes that missed their heartbeats past the grace period, and nodes the store no
    /// longer has: their tasks are lost, and each is replaced by a new task in its slot
    /// (whatever the restart policy: losing a node is not the task's failure). When the
    /// node comes back, it stops what it still runs of them.
    pub down: BTreeSet<String>,
    /// Tasks to move (ids): their node is drained, or no longer meets their service's
    /// constraints. A replacement is created first, and the task is stopped only once
    /// its replacement runs, so the service never runs fewer tasks while it moves.
    pub moving: BTreeSet<String>,
    /// The nodes each `deploy.mode: global` service (stack, service) belongs on: one
    /// slot per node, its tasks created on that node. A global service without an entry
    /// (a single host) has slots like a replicated one.
    pub global: BTreeMap<(String, String), Vec<String>>,
    /// Tasks are placed on nodes (a cluster): a task without a node never ran
    /// anywhere (false on a single host, whose one node runs every task).
    pub placed: bool,
}

impl Nodes {
    fn lost(&self, t: &Task) -> bool {
        t.node.as_ref().is_some_and(|n| self.down.contains(n))
    }

    /// A task no node ever took (pending) that is no longer wanted running: nothing
    /// of it is on a node to stop or remove, so its record goes at once (it must not
    /// hold a slot, nor `down`, which waits for its tasks to end).
    fn never_ran(&self, t: &Task) -> bool {
        self.placed && t.node.is_none() && t.desired != DesiredState::Running
    }
}

/// The plan for `stacks` given `tasks` at time `now` (unix ms), on a single host.
pub fn reconcile(stacks: &BTreeMap<String, StackRecord>, tasks: &[Task], now: u64) -> Plan {
    reconcile_on(stacks, tasks, now, &Nodes::default())
}

/// The plan for `stacks` given `tasks` at time `now` (unix ms), on a cluster whose
/// nodes are as `nodes` says.
pub fn reconcile_on(
    stacks: &BTreeMap<String, StackRecord>,
    tasks: &[Task],
    now: u64,
    nodes: &Nodes,
) -> Plan {
    let mut plan = Plan::default();
    // Tasks by (stack, service, slot), newest generation last.
    let mut slots: BTreeMap<(&str, &str, u32), Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        slots
            .entry((t.stack.as_str(), t.service.as_str(), t.slot))
            .or_default()
            .push(t);
    }
    for list in slots.values_mut() {
        list.sort_by_key(|t| t.generation);
    }

    let mut wanted: BTreeSet<(&str, &str, u32)> = BTreeSet::new();
    for (stack_name, record) in stacks {
        let services = record
            .stack
            .services
            .iter()
            .chain(
                record
                    .orphans
                    .iter()
                    .filter(|(k, _)| !record.stack.services.contains_key(*k)),
            )
            .chain(record.oneoffs.iter());
        for (name, service) in services {
            let replicas = if record.oneoffs.contains_key(name) {
                1
            } else {
                replicas(record, name, service)
            };
            let stopped = record.stopped.iter().any(|s| s == name);
            let hash = spec_hash(record, service);
            let deps_seen: BTreeMap<String, String> = service
                .depends_on
                .iter()
                .filter(|(_, d)| d.restart)
                .filter_map(|(dep, _)| Some((dep.clone(), dependency_marker(record, dep)?)))
                .collect();
            // Replicated: slots 1..=replicas, placed by the scheduler. Global: a slot
            // per node it belongs on, its task made for that node.
            let placed: Vec<(u32, Option<&str>)> =
                match nodes.global.get(&(stack_name.clone(), name.clone())) {
                    None => (1..=replicas).map(|slot| (slot, None)).collect(),
                    Some(on) => global_slots(&slots, stack_name, name, on)
                        .into_iter()
                        .map(|(node, slot)| (slot, Some(node)))
                        .collect(),
                };
            // The rolling updater says which outdated slots may be replaced now.
            let decision =
                if record.oneoffs.contains_key(name) || !record.stack.services.contains_key(name) {
                    update::Decision {
                        replace: placed.iter().map(|(slot, _)| *slot).collect(),
                        ..Default::default()
                    }
                } else {
                    let status = record.updates.get(name);
                    let rolling_back = status.is_some_and(|u| u.to_hash == hash && u.rolls_back());
                    let policy = update::Policy::of(service, rolling_back, nodes.placed);
                    let views: Vec<update::Slot> = placed
                        .iter()
                        .map(|(slot, _)| update::Slot {
                            slot: *slot,
                            history: slots
                                .get(&(stack_name.as_str(), name.as_str(), *slot))
                                .map(Vec::as_slice)
                                .unwrap_or_default(),
                        })
                        .collect();
                    let input = update::Input {
                        service,
                        previous: record.previous.get(name),
                        policy: policy.as_ref(),
                        status,
                        hash: &hash,
                        slots: &views,
                    };
                    update::decide(&input, nodes, now)
                };
            if let Some(at) = decision.wake_at {
                plan.wake(at);
            }
            if let Some(status) = decision.status.clone() {
                if decision.rollback {
                    plan.changes
                        .push(rollback(record, stack_name, name, status, now));
                    // The next pass plans the slots with the previous definition.
                    for (slot, _) in &placed {
                        wanted.insert((stack_name.as_str(), name.as_str(), *slot));
                    }
                    continue;
                }
                plan.changes.push(Change::SetUpdate {
                    stack: stack_name.clone(),
                    service: name.clone(),
                    status,
                });
            }
            for (slot, node) in placed {
                wanted.insert((stack_name.as_str(), name.as_str(), slot));
                // A global slot on a node that is down waits for it: its task is not
                // replaced elsewhere, since it belongs on that node.
                if node.is_some_and(|n| nodes.down.contains(n)) {
                    continue;
                }
                let history = slots
                    .get(&(stack_name.as_str(), name.as_str(), slot))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let ready = || dependencies_ready(record, service, tasks);
                plan_slot(
                    &mut plan,
                    SlotCx {
                        stack: stack_name,
                        service_name: name,
                        service,
                        slot,
                        node,
                        nodes,
                        hash: &hash,
                        stopped,
                        now,
                        deps_seen: &deps_seen,
                        replace: decision.replace.contains(&slot),
                        start_first: decision.start_first,
                    },
                    history,
                    ready,
                );
            }
        }
    }

    // Everything not wanted goes.
    for (key, list) in &slots {
        if !wanted.contains(key) {
            for t in list {
                remove(&mut plan, t);
            }
        }
    }

    // Records of removed tasks whose container is gone are done with, except the
    // newest of a slot that is still wanted: it carries the slot's generation count,
    // so that a container id is never used twice.
    for (key, list) in &slots {
        let keep_last = wanted.contains(key);
        for (i, t) in list.iter().enumerate() {
            let newest = i + 1 == list.len();
            // A lost task's record goes too: its node, if it comes back, removes the
            // container as one no task of its view accounts for.
            let gone = t.status.state() == TaskState::Removed || nodes.lost(t);
            let done = t.desired == DesiredState::Remove && gone && !(newest && keep_last);
            if done || nodes.never_ran(t) {
                plan.changes.push(Change::Delete { task: t.id.clone() });
            }
        }
    }
    plan
}

/// The change that rolls service `name` back to its previous definition, its update's
/// `status` saying why; without a previous definition (nothing to return to) the
/// update pauses instead.
fn rollback(
    record: &StackRecord,
    stack: &str,
    name: &str,
    status: UpdateStatus,
    now: u64,
) -> Change {
    let Some(previous) = record.previous.get(name) else {
        return Change::SetUpdate {
            stack: stack.to_string(),
            service: name.to_string(),
            status: UpdateStatus {
                state: UpdateState::Paused,
                message: format!(
                    "{}; there is no previous definition to roll back to",
                    status.message
                ),
                ..status
            },
        };
    };
    Change::Rollback {
        stack: stack.to_string(),
        service: name.to_string(),
        status: UpdateStatus::begin(
            UpdateState::RollingBack,
            spec_hash(record, previous),
            now,
            status.message,
        ),
    }
}

/// The number of slots of a service: `up --scale`, else `deploy.replicas`, else
/// `scale`, else 1.
pub fn replicas(record: &StackRecord, name: &str, service: &Service) -> u32 {
    record
        .scale
        .get(name)
        .copied()
        .or_else(|| service.deploy.as_ref().and_then(|d| d.replicas))
        .or(service.scale)
        .unwrap_or(1)
}

/// What a task is made from: the service's definition, the top-level objects it refers
/// to, and the content of the files its secrets and configs come from, so that changing
/// a network, a secret's definition or a config file's text recreates its users.
pub fn spec_hash(record: &StackRecord, service: &Service) -> String {
    let stack = &record.stack;
    let mut h = Sha256::new();
    let mut put = |label: &str, value: serde_json::Result<String>| {
        h.update(label.as_bytes());
        h.update(value.unwrap_or_default().as_bytes());
        h.update([0]);
    };
    put("service", serde_json::to_string(service));
    for s in &service.secrets {
        put(
            "secret",
            serde_json::to_string(&stack.secrets.get(&s.source)),
        );
        put(
            "content",
            Ok(record
                .contents
                .get(&format!("secrets.{}", s.source))
                .cloned()
                .unwrap_or_default()),
        );
    }
    for c in &service.configs {
        put(
            "config",
            serde_json::to_string(&stack.configs.get(&c.source)),
        );
        put(
            "content",
            Ok(record
                .contents
                .get(&format!("configs.{}", c.source))
                .cloned()
                .unwrap_or_default()),
        );
    }
    for n in service.networks.keys() {
        put("network", serde_json::to_string(&stack.networks.get(n)));
    }
    for v in service.volumes.iter().filter_map(|m| m.source.as_ref()) {
        if let Some(vol) = stack.volumes.get(v) {
            put("volume", serde_json::to_string(vol));
        }
    }
    hex_prefix(&h.finalize(), 12)
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes
        .iter()
        .take(n / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The slot of each node a global service belongs on (`on`): the slot its newest task
/// on that node has, else the lowest slot no task of the service holds. Slots stay with
/// their node, so a node joining or leaving renames no other node's task.
fn global_slots<'a>(
    slots: &BTreeMap<(&str, &str, u32), Vec<&Task>>,
    stack: &str,
    service: &str,
    on: &'a [String],
) -> Vec<(&'a str, u32)> {
    let of_service = slots
        .range((stack, service, 0)..=(stack, service, u32::MAX))
        .map(|((_, _, slot), list)| (*slot, list.as_slice()));
    slots_on_nodes(of_service, on)
}

/// [`global_slots`] of one service's tasks by slot (each slot's list oldest first), for
/// `up --dry-run`'s plan.
pub fn global_slots_of<'a>(
    by_slot: &BTreeMap<u32, Vec<&Task>>,
    on: &'a [String],
) -> Vec<(&'a str, u32)> {
    slots_on_nodes(
        by_slot.iter().map(|(slot, list)| (*slot, list.as_slice())),
        on,
    )
}

fn slots_on_nodes<'a, 't>(
    of_service: impl Iterator<Item = (u32, &'t [&'t Task])>,
    on: &'a [String],
) -> Vec<(&'a str, u32)> {
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let mut of_node: BTreeMap<&str, u32> = BTreeMap::new();
    for (slot, list) in of_service {
        used.insert(slot);
        if let Some(node) = list
            .last()
            .and_then(|t| t.for_node.as_deref().or(t.node.as_deref()))
        {
            of_node.entry(node).or_insert(slot);
        }
    }
    let mut next = 1;
    on.iter()
        .map(|node| {
            let slot = of_node.get(node.as_str()).copied().unwrap_or_else(|| {
                while used.contains(&next) {
                    next += 1;
                }
                used.insert(next);
                next
            });
            (node.as_str(), slot)
        })
        .collect()
}

struct SlotCx<'a> {
    stack: &'a str,
    service_name: &'a str,
    service: &'a Service,
    slot: u32,
    /// The node a new task of the slot is made for (a global service's: the scheduler
    /// places it there or nowhere); None: the scheduler chooses.
    node: Option<&'a str>,
    nodes: &'a Nodes,
    hash: &'a str,
    stopped: bool,
    now: u64,
    deps_seen: &'a BTreeMap<String, String>,
    /// The rolling updater lets this slot be replaced now if it is outdated.
    replace: bool,
    /// Replace it by starting the new task first.
    start_first: bool,
}

fn plan_slot(plan: &mut Plan, cx: SlotCx, history: &[&Task], ready: impl FnOnce() -> bool) {
    // A task on a lost node is shut down (its node stops it if it comes back), and the
    // slot is planned as if it had none.
    for t in history.iter().filter(|t| cx.nodes.lost(t)) {
        shut_down(plan, t);
    }
    let live: Vec<&Task> = history
        .iter()
        .copied()
        .filter(|t| t.desired == DesiredState::Running && !cx.nodes.lost(t))
        .collect();
    // The task the slot keeps: the newest live one of the current definition, else
    // the newest (while rolling back, a task still running the previous definition
    // is kept, and the newer one of the failed definition goes: moby issue 43081).
    let current = update::kept(&live, cx.hash);
    // A task moving off its node, or replaced start-first, hands over to its
    // replacement: it keeps running until the replacement is ready (running, and
    // healthy if it has a healthcheck). Any other extra live task goes.
    let handing_over = current.is_some_and(|c| c.status.ready_since().is_none());
    for extra in live
        .iter()
        .filter(|t| Some(t.id.as_str()) != current.map(|c| c.id.as_str()))
    {
        let replaced = cx.start_first && current.is_some_and(|c| c.spec_hash == cx.hash);
        if !(handing_over && (cx.nodes.moving.contains(&extra.id) || replaced)) {
            remove(plan, extra);
        }
    }
    // A task on its way out whose process may still run holds the slot: its published
    // ports and its DNS name are still taken (unless its node is lost: then nothing
    // can be known of it).
    let leaving = history.iter().any(|t| {
        t.desired == DesiredState::Remove && !t.status.state().is_terminal() && !cx.nodes.lost(t)
    });
    let next_generation = history.last().map_or(1, |t| t.generation + 1);

    match current {
        Some(t) if cx.stopped => shut_down(plan, t),
        // Outdated, and the updater lets it go now (a dead task always may).
        Some(t) if t.spec_hash != cx.hash && (cx.replace || t.status.state().is_terminal()) => {
            if cx.start_first && !t.status.state().is_terminal() {
                if live.len() == 1 && ready() {
                    let next = new_task(&cx, next_generation, 0);
                    plan.changes.push(Change::Create(Box::new(next)));
                }
            } else {
                remove(plan, t);
            }
        }
        // Outdated, waiting for its turn in a rolling update.
        Some(t) if t.spec_hash != cx.hash => {}
        // A dependency with `restart: true` was updated or restarted since this task
        // started: recreate it, as Compose does.
        Some(t) if dependency_moved(t, cx.deps_seen) => remove(plan, t),
        Some(t) if t.status.state().is_terminal() => {
            let due = restart_after(cx.service, t);
            if let Some(at) = due.filter(|at| *at > cx.now) {
                plan.wake(at);
            } else if due.is_some() && !leaving && ready() {
                shut_down(plan, t);
                let restarts = if ran_long(t, policy(cx.service).window) {
                    0
                } else {
                    t.restarts + 1
                };
                let next = new_task(&cx, next_generation, restarts);
                plan.changes.push(Change::Create(Box::new(next)));
            }
        }
        // Moving off its node (drained, or no longer meeting the constraints): a
        // replacement first, placed elsewhere by the scheduler.
        Some(t) if cx.nodes.moving.contains(&t.id) && live.len() == 1 => {
            if ready() {
                let next = new_task(&cx, next_generation, t.restarts);
                plan.changes.push(Change::Create(Box::new(next)));
            }
        }
        Some(_) => {}
        None if cx.stopped || leaving => {}
        None => {
            if ready() {
                plan.changes
                    .push(Change::Create(Box::new(new_task(&cx, next_generation, 0))));
            }
        }
    }

    // Trim history: ended tasks beyond HISTORY, oldest first.
    let ended: Vec<&&Task> = history
        .iter()
        .filter(|t| t.desired == DesiredState::Shutdown && t.status.state().is_terminal())
        .collect();
    for t in ended.iter().take(ended.len().saturating_sub(HISTORY)) {
        remove(plan, t);
    }
}

fn new_task(cx: &SlotCx, generation: u32, restarts: u32) -> Task {
    Task {
        id: Task::make_id(cx.stack, cx.service_name, cx.slot, generation),
        stack: cx.stack.to_string(),
        service: cx.service_name.to_string(),
        slot: cx.slot,
        generation,
        spec_hash: cx.hash.to_string(),
        desired: DesiredState::Running,
        status: Default::default(),
        created_at: cx.now,
        restarts,
        stop_grace_ms: None,
        deps_seen: cx.deps_seen.clone(),
        // A global task is made for its node, and the scheduler gives it that node
        // once the node has room for it.
        node: None,
        for_node: cx.node.map(str::to_string),
        generic_resources: Default::default(),
    }
}

/// What a dependent follows of dependency `dep`: its definition's hash and how many
/// times `berth restart` restarted it. `None` if the stack has no such service.
pub fn dependency_marker(record: &StackRecord, dep: &str) -> Option<String> {
    let service = record.stack.services.get(dep)?;
    let restarts = record.restarted.get(dep).copied().unwrap_or(0);
    Some(format!("{}/{restarts}", spec_hash(record, service)))
}

fn dependency_moved(t: &Task, now: &BTreeMap<String, String>) -> bool {
    now.iter()
        .any(|(dep, marker)| t.deps_seen.get(dep).is_some_and(|seen| seen != marker))
}

fn remove(plan: &mut Plan, t: &Task) {
    if t.desired != DesiredState::Remove {
        plan.changes.push(Change::SetDesired {
            task: t.id.clone(),
            desired: DesiredState::Remove,
        });
    }
}

fn shut_down(plan: &mut Plan, t: &Task) {
    if t.desired == DesiredState::Running {
        plan.changes.push(Change::SetDesired {
            task: t.id.clone(),
            desired: DesiredState::Shutdown,
        });
    }
}

/// A task that ran this long succeeded as far as restarts go: the back-off and the
/// attempt count start over (`deploy.restart_policy.window`, else 10 s as Docker).
fn ran_long(t: &Task, window: Option<std::time::Duration>) -> bool {
    let needed = window.map_or(BACKOFF_RESET_MS, |w| w.as_millis() as u64);
    match (t.status.started_at, t.status.finished_at) {
        (Some(s), Some(f)) => f.saturating_sub(s) >= needed,
        _ => false,
    }
}

/// The restart policy of a service, as one of deploy's: `deploy.restart_policy` wins
/// over `restart:`; Compose's default is not to restart.
pub fn policy(service: &Service) -> RestartPolicy {
    if let Some(p) = service
        .deploy
        .as_ref()
        .and_then(|d| d.restart_policy.clone())
    {
        return p;
    }
    let (condition, max_attempts) = match service.restart.unwrap_or(Restart::No) {
        Restart::No => (RestartCondition::None, None),
        Restart::Always | Restart::UnlessStopped => (RestartCondition::Any, None),
        Restart::OnFailure { max_retries } => (RestartCondition::OnFailure, max_retries),
    };
    RestartPolicy {
        condition,
        delay: None,
        max_attempts,
        window: None,
    }
}

/// When an ended task `t` should be followed by a new one, if ever.
fn restart_after(service: &Service, t: &Task) -> Option<u64> {
    let p = policy(service);
    let failed = match t.status.state() {
        TaskState::Complete => false,
        TaskState::Shutdown => return None,
        // Failed, Rejected, or a container that vanished behind berth's back.
        _ => true,
    };
    let restart = match p.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => failed,
        RestartCondition::Any => true,
    };
    // A task the agent could not even start (no image, bad mount) is retried only by a
    // new `up`: retrying cannot make the image appear.
    if !restart || t.status.state() == TaskState::Rejected {
        return None;
    }
    // A task that outlived the window succeeded: its attempts start over.
    let attempts = if ran_long(t, p.window) { 0 } else { t.restarts };
    if p.max_attempts.is_some_and(|max| attempts >= max) {
        return None;
    }
    let ended = t.status.finished_at.unwrap_or(t.created_at);
    let delay = match p.delay {
        Some(d) => d.as_millis() as u64,
        None if ran_long(t, p.window) => BACKOFF_START_MS,
        None => BACKOFF_START_MS
            .saturating_mul(1u64 << t.restarts.min(20))
            .min(BACKOFF_MAX_MS),
    };
    Some(ended.saturating_add(delay))
}

/// Whether every `depends_on` condition of `service` holds now.
fn dependencies_ready(record: &StackRecord, service: &Service, tasks: &[Task]) -> bool {
    service.depends_on.iter().all(|(dep, d)| {
        if !record.stack.services.contains_key(dep) {
            // Validation made sure a missing dependency is an optional one.
            return true;
        }
        let of_dep = tasks
            .iter()
            .filter(|t| t.stack == record.stack.name && &t.service == dep)
            .filter(|t| t.desired != DesiredState::Remove);
        dependency_state(of_dep, d.condition) == DependencyState::Met
    })
}

/// Where a dependency stands, for the orchestrator and for `up`'s messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyState {
    Met,
    Waiting,
    /// It can no longer be met (a dependency that had to complete successfully failed).
    Failed,
}

pub fn dependency_state<'a>(
    tasks: impl Iterator<Item = &'a Task>,
    condition: Condition,
) -> DependencyState {
    let latest: BTreeMap<u32, &Task> = tasks.fold(BTreeMap::new(), |mut m, t| {
        let e = m.entry(t.slot).or_insert(t);
        if t.generation > e.generation {
            *e = t;
        }
        m
    });
    if latest.is_empty() {
        return DependencyState::Waiting;
    }
    let each = |t: &Task| match condition {
        Condition::ServiceStarted => match t.status.state() {
            TaskState::Running | TaskState::Complete => DependencyState::Met,
            s if s.is_terminal() => DependencyState::Waiting,
            _ => DependencyState::Waiting,
        },
        Condition::ServiceHealthy => match (t.status.state(), t.status.health) {
            (TaskState::Running, Health::Healthy | Health::None) => DependencyState::Met,
            _ => DependencyState::Waiting,
        },
        Condition::ServiceCompletedSuccessfully => match (t.status.state(), t.status.exit_code) {
            (TaskState::Complete, Some(0)) => DependencyState::Met,
            (s, _) if s.is_terminal() && t.desired != DesiredState::Running => {
                DependencyState::Waiting
            }
            (s, _) if s.is_terminal() => DependencyState::Failed,
            _ => DependencyState::Waiting,
        },
    };
    let states: Vec<DependencyState> = latest.values().map(|t| each(t)).collect();
    if states.contains(&DependencyState::Failed) {
        DependencyState::Failed
    } else if states.iter().all(|s| *s == DependencyState::Met) {
        DependencyState::Met
    } else {
        DependencyState::Waiting
    }
}

/// The order `down` stops services in: first those nothing depends on, then what they
/// depend on, and so on (the reverse of start order, as Compose stops them). Each wave
/// may stop at once.
pub fn stop_waves(stack: &Stack) -> Vec<Vec<String>> {
    // depth(s) = 0 if no service depends on s, else 1 + the deepest dependent's depth.
    let mut depth: BTreeMap<&str, usize> = stack.services.keys().map(|k| (k.as_str(), 0)).collect();
    // Validation rejects cycles; the bound keeps a bad input from looping forever.
    for _ in 0..=stack.services.len() {
        let mut changed = false;
        for (name, svc) in &stack.services {
            let d = depth[name.as_str()];
            for dep in svc.depends_on.keys() {
                if let Some(dd) = depth.get_mut(dep.as_str()) {
                    if *dd < d + 1 {
                        *dd = d + 1;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut waves: Vec<Vec<String>> = Vec::new();
    for (name, d) in depth {
        if waves.len() <= d {
            waves.resize(d + 1, Vec::new());
        }
        waves[d].push(name.to_string());
    }
    waves
}

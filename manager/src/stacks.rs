//! What the stack verbs do: `up`, `down`, `stop`/`start`/`restart`/`rm`/`kill`/
//! `pause`/`unpause` and `run`, as plain functions the API's handlers call with the
//! typed commands they parsed (DESIGN invariant 8). Each change to the state is a pure
//! function over [`State`] that the caller runs in one store transaction; [`down`],
//! which takes a stack down in waves and waits for the agent between them, is the one
//! that drives the store itself.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spec::task::{DesiredState, StackRecord, TaskState, UpdateState, UpdateStatus};

use crate::orchestrator::spec_hash;

use crate::state::model::State;
use crate::state::store::{Store, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpRequest {
    pub record: StackRecord,
    #[serde(default)]
    pub remove_orphans: bool,
    /// Recreate every container, changed or not.
    #[serde(default)]
    pub force_recreate: bool,
    /// Keep existing containers even if their definition changed.
    #[serde(default)]
    pub no_recreate: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpResponse {
    /// Services of the earlier deployment that this one no longer has.
    pub orphans: Vec<String>,
    /// The orphans removed (with `remove_orphans`).
    pub removed_orphans: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServicesRequest {
    /// Empty: every service of the stack.
    #[serde(default)]
    pub services: Vec<String>,
    /// For `kill`: the signal (default SIGKILL, as Compose's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

/// `berth run`: a one-off container of a service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRequest {
    pub service: String,
    /// The service as the caller's file has it (else the deployed one).
    #[serde(default)]
    pub definition: Option<spec::model::Service>,
    /// Replaces the service's command, if given.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` added to the environment.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// Publish the service's ports too (Compose's --service-ports).
    #[serde(default)]
    pub service_ports: bool,
    /// Keep its stdin open for the caller to attach (`run` in the foreground).
    #[serde(default)]
    pub interactive: bool,
    /// Give it a terminal: `Some(true)` or `Some(false)` override the service's `tty`.
    #[serde(default)]
    pub tty: Option<bool>,
}

/// `up`'s change to the state: deploys `req.record` as stack `name`, keeping or
/// removing the services the earlier deployment had and this one drops (orphans), and
/// marking for replacement the containers `up` recreates. Pure; the API runs it in a
/// store transaction.
pub fn up(s: &mut State, name: &str, req: &UpRequest) -> UpResponse {
    let mut record = req.record.clone();
    let mut resp = UpResponse::default();
    if let Some(old) = s.stacks.get(name) {
        let gone: BTreeSet<&String> = old
            .stack
            .services
            .keys()
            .chain(old.orphans.keys())
            .filter(|k| !record.stack.services.contains_key(*k))
            .collect();
        for k in gone {
            resp.orphans.push(k.clone());
            if req.remove_orphans {
                resp.removed_orphans.push(k.clone());
            } else if let Some(svc) = old.stack.services.get(k).or(old.orphans.get(k)) {
                record.orphans.insert(k.clone(), svc.clone());
            }
        }
        // `up` starts what `stop` stopped, as Compose's; one-off containers of
        // `run` are not the file's to remove.
        record.stopped.clear();
        record.oneoffs = old.oneoffs.clone();
        record.restarted = old.restarted.clone();
        if req.no_recreate {
            // Keep each service's old definition where tasks run: adopt it.
            for (k, svc) in record.stack.services.iter_mut() {
                if let Some(o) = old.stack.services.get(k) {
                    *svc = o.clone();
                }
            }
        }
        carry_updates(old, &mut record);
    }
    for t in s.tasks.values_mut() {
        if t.stack != name || t.desired != DesiredState::Running {
            continue;
        }
        // A container that could not start (a port in use, a missing bind source)
        // is tried afresh by the next `up`, as Compose's: its cause may be fixed.
        if req.force_recreate || t.status.never_started() {
            t.desired = DesiredState::Remove;
        }
    }
    s.stacks.insert(name.to_string(), record);
    resp
}

/// What a new deployment `record` keeps of the earlier one's rolling updates: a
/// service whose definition changed remembers the one it had (what a rollback
/// returns to), and its update begins afresh (the orchestrator records it); one left
/// as it was keeps its previous definition and its update's status, except that `up`
/// starts a paused update again and forgets a rollback (the file given again is the
/// definition wanted: what still runs another one is updated to it).
fn carry_updates(old: &StackRecord, record: &mut StackRecord) {
    for (k, svc) in &record.stack.services {
        let Some(before) = old.stack.services.get(k) else {
            continue;
        };
        if spec_hash(old, before) != spec_hash(record, svc) {
            record.previous.insert(k.clone(), before.clone());
            continue;
        }
        if let Some(p) = old.previous.get(k) {
            record.previous.insert(k.clone(), p.clone());
        }
        if let Some(u) = old.updates.get(k) {
            if matches!(u.state, UpdateState::Updating | UpdateState::Completed) {
                record.updates.insert(k.clone(), u.clone());
            }
        }
    }
}

/// `berth rollback [SERVICE...]` (Swarm's `service rollback`): each service (none
/// named: every one that has a previous definition) returns to its previous
/// definition, rolling back by its `rollback_config`; tasks still running that
/// definition are kept. Returns the services rolled back. Pure.
pub fn rollback(
    s: &mut State,
    name: &str,
    services: &[String],
    now: u64,
) -> Result<Vec<String>, StoreError> {
    let record = s.stacks.get_mut(name).ok_or_else(|| {
        StoreError::Rejected(format!(
            "no stack named {name:?} is deployed (berth up deploys it)"
        ))
    })?;
    let chosen: Vec<String> = if services.is_empty() {
        record.previous.keys().cloned().collect()
    } else {
        services.to_vec()
    };
    if chosen.is_empty() {
        return Err(StoreError::Rejected(format!(
            "no service of stack {name:?} has a previous definition to roll back to (a service has one once `berth up` changed it)"
        )));
    }
    for svc in &chosen {
        if !record.stack.services.contains_key(svc) {
            return Err(StoreError::Rejected(format!(
                "stack {name:?} has no service {svc:?}"
            )));
        }
        if !record.previous.contains_key(svc) {
            return Err(StoreError::Rejected(format!(
                "service {svc:?} of stack {name:?} has no previous definition to roll back to (it has one once `berth up` changed it)"
            )));
        }
    }
    for svc in &chosen {
        let previous = &record.previous[svc];
        let status = UpdateStatus::begin(
            UpdateState::RollingBack,
            spec_hash(record, previous),
            now,
            "asked by berth rollback".to_string(),
        );
        crate::orchestrator::run::roll_back(record, svc, status);
    }
    Ok(chosen)
}

/// `stop`, `start`, `restart`, `rm`, `kill`, `pause` and `unpause` of `services`
/// (empty: every service) of stack `name`: the change to the state, and the services
/// chosen. `kill`, `pause` and `unpause` change nothing here; the caller then signals
/// or freezes the containers [`live`] or [`running`] name. Pure.
pub fn services(
    s: &mut State,
    name: &str,
    verb: &str,
    services: &[String],
) -> Result<Vec<String>, StoreError> {
    let record = s.stacks.get_mut(name).ok_or_else(|| {
        StoreError::Rejected(format!(
            "no stack named {name:?} is deployed (berth up deploys it)"
        ))
    })?;
    let all: Vec<String> = record.stack.services.keys().cloned().collect();
    for svc in services {
        if !all.contains(svc) {
            return Err(StoreError::Rejected(format!(
                "stack {name:?} has no service {svc:?} (it has: {})",
                all.join(", ")
            )));
        }
    }
    let chosen = if services.is_empty() {
        all
    } else {
        services.to_vec()
    };
    match verb {
        "stop" => {
            for svc in &chosen {
                if !record.stopped.contains(svc) {
                    record.stopped.push(svc.clone());
                }
            }
            // What the orchestrator would do next, done in the same transaction:
            // a caller that reads the state after `stop` returns (`up` waiting
            // for the stack to stop) sees the tasks on their way down.
            for t in s.tasks.values_mut() {
                if t.stack == name
                    && chosen.contains(&t.service)
                    && t.desired == DesiredState::Running
                {
                    t.desired = DesiredState::Shutdown;
                }
            }
        }
        "start" => record.stopped.retain(|s| !chosen.contains(s)),
        "restart" => {
            record.stopped.retain(|s| !chosen.contains(s));
            for svc in &chosen {
                *record.restarted.entry(svc.clone()).or_default() += 1;
            }
            for t in s.tasks.values_mut() {
                if t.stack == name
                    && chosen.contains(&t.service)
                    && t.desired == DesiredState::Running
                {
                    t.desired = DesiredState::Remove;
                }
            }
        }
        // Removes the stopped containers of the services (Compose's rm).
        "rm" => {
            for t in s.tasks.values_mut() {
                if t.stack == name
                    && chosen.contains(&t.service)
                    && t.desired == DesiredState::Shutdown
                {
                    t.desired = DesiredState::Remove;
                }
            }
        }
        "kill" | "pause" | "unpause" => {}
        other => {
            return Err(StoreError::Rejected(format!(
                "unknown verb {other:?}: stop, start, restart, rm, kill, pause, unpause or rollback"
            )))
        }
    }
    Ok(chosen)
}

/// `berth run`: records one-off container `key` of `req.service` in stack `name`
/// (the orchestrator then creates it); returns `key`. Pure.
pub fn run(s: &mut State, name: &str, key: &str, req: &RunRequest) -> Result<String, StoreError> {
    let record = s
        .stacks
        .get_mut(name)
        .ok_or_else(|| StoreError::Rejected(format!("no stack named {name:?} is deployed")))?;
    let mut service = req
        .definition
        .clone()
        .or_else(|| record.stack.services.get(&req.service).cloned())
        .ok_or_else(|| {
            StoreError::Rejected(format!("stack {name:?} has no service {:?}", req.service))
        })?;
    if let Some(c) = &req.command {
        service.command = Some(c.clone());
    }
    if let Some(e) = &req.entrypoint {
        service.entrypoint = Some(e.clone());
    }
    for kv in &req.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        service
            .environment
            .insert(k.to_string(), Some(v.to_string()));
    }
    if req.user.is_some() {
        service.user = req.user.clone();
    }
    if req.workdir.is_some() {
        service.working_dir = req.workdir.clone();
    }
    if req.interactive {
        service.stdin_open = true;
    }
    if let Some(tty) = req.tty {
        service.tty = tty;
    }
    // A one-off runs once, under its own name, without the service's ports.
    service.restart = None;
    service.container_name = None;
    service.scale = None;
    if let Some(d) = service.deploy.as_mut() {
        d.restart_policy = None;
        d.replicas = None;
    }
    if !req.service_ports {
        service.ports.clear();
    }
    record.oneoffs.insert(key.to_string(), service);
    Ok(key.to_string())
}

/// What [`down`] took down: the stack's record (None if only containers were left) and
/// the names of the containers it removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Down {
    pub record: Option<StackRecord>,
    pub containers: Vec<String>,
}

/// Takes stack `name` down: stops it in waves, dependents before what they depend on
/// (as Compose does): each wave's services are marked stopped, and the next starts once
/// their containers have ended; then removes the stack and waits for the agent to
/// remove every container of it. `grace_ms` replaces the containers' stop grace
/// period. `None` when no such stack is deployed and no container of it is left.
pub async fn down(
    store: &Store,
    name: &str,
    grace_ms: Option<u64>,
) -> Result<Option<Down>, StoreError> {
    let waves = store
        .read(|s| {
            s.stacks
                .get(name)
                .map(|r| crate::orchestrator::stop_waves(&r.stack))
        })
        .unwrap_or_default();
    for wave in waves {
        store.update(|s| {
            stop_wave(s, name, &wave, grace_ms);
            Ok(())
        })?;
        until(store, |s| {
            s.tasks
                .values()
                .filter(|t| t.stack == name && wave.contains(&t.service))
                .all(|t| t.status.state().is_terminal())
        })
        .await;
    }
    let down = store.update(|s| Ok(remove(s, name, grace_ms)))?;
    if down.record.is_none() && down.containers.is_empty() {
        return Ok(None);
    }
    // Wait for the agent to remove every container of the stack.
    until(store, |s| s.tasks.values().all(|t| t.stack != name)).await;
    Ok(Some(down))
}

/// One wave of `down`: its services marked stopped (the orchestrator then stops their
/// containers), every container of the stack given `grace_ms` to stop. One-off
/// containers and orphans go with the first wave. Pure.
pub fn stop_wave(s: &mut State, name: &str, wave: &[String], grace_ms: Option<u64>) {
    for t in s.tasks.values_mut().filter(|t| t.stack == name) {
        if grace_ms.is_some() {
            t.stop_grace_ms = grace_ms;
        }
    }
    if let Some(r) = s.stacks.get_mut(name) {
        r.taking_down = true;
        for svc in wave {
            if !r.stopped.contains(svc) {
                r.stopped.push(svc.clone());
            }
        }
        r.oneoffs.clear();
        r.orphans.clear();
    }
}

/// The end of `down`: the stack's record removed, every container of it marked for
/// removal. Pure.
pub fn remove(s: &mut State, name: &str, grace_ms: Option<u64>) -> Down {
    let record = s.stacks.remove(name);
    let mut containers = Vec::new();
    for t in s.tasks.values_mut().filter(|t| t.stack == name) {
        containers.push(t.name());
        t.desired = DesiredState::Remove;
        if grace_ms.is_some() {
            t.stop_grace_ms = grace_ms;
        }
    }
    let containers = containers
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    Down { record, containers }
}

/// Waits until `done` holds of the store's state, looking again after every change
/// (and every 500 ms).
async fn until(store: &Store, done: impl Fn(&State) -> bool) {
    let mut watch = store.watch();
    while !store.read(&done) {
        let _ = tokio::time::timeout(Duration::from_millis(500), watch.changed()).await;
    }
}

/// The running containers of `services` of stack `name` (what `pause` freezes).
pub fn running(s: &State, name: &str, services: &[String]) -> Vec<String> {
    s.tasks
        .values()
        .filter(|t| t.stack == name && services.contains(&t.service))
        .filter(|t| t.status.state() == TaskState::Running)
        .map(|t| t.id.clone())
        .collect()
}

/// The live containers of `services` of stack `name` (what `kill` signals).
pub fn live(s: &State, name: &str, services: &[String]) -> Vec<String> {
    s.tasks
        .values()
        .filter(|t| t.stack == name && services.contains(&t.service))
        .filter(|t| t.desired == DesiredState::Running && !t.status.state().is_terminal())
        .map(|t| t.id.clone())
        .collect()
}

/// Removes one-off container `key` from stack `name`; whether it was there. Pure.
pub fn remove_run(s: &mut State, name: &str, key: &str) -> bool {
    s.stacks
        .get_mut(name)
        .is_some_and(|r| r.oneoffs.remove(key).is_some())
}

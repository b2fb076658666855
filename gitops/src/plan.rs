//! The controller's decisions, pure: from what a source holds ([`Read`]), the store's
//! state and the time, what to deploy, what to prune, and the source's new status
//! ([`decide`]); and the state change that records a deployment ([`apply_deploy`]).
//! No file, socket or clock is touched here: `tests/plan.rs` drives it with values.
//!
//! The rules, in the order they are checked for each stack of the source:
//! 1. a suspended stack is left alone;
//! 2. a stack whose file does not load keeps what runs, and is reported (`invalid`);
//! 3. a stack of the same name that this source did not deploy (by hand, or by another
//!    source) is never adopted (`conflict`);
//! 4. a pinned stack (`gitops rollback`) runs its pinned revision;
//! 5. it is deployed when what it should run differs from what this source last
//!    deployed (its identity, [`crate::scan::digest`]), or when the store no longer
//!    holds that deployment (drift: `berth down` or `up` by hand, a service stopped,
//!    a container that died or vanished and that nothing else will restart);
//! 6. stacks it deployed that are gone from the source are pruned, unless that looks
//!    like a mistake (the source empty or unreadable, or more than half of its stacks
//!    gone at once): then the prune is held until `gitops sync --confirm-prune`.

use std::collections::{BTreeMap, BTreeSet};

use manager::orchestrator::Nodes;
use manager::stacks::UpRequest;
use manager::state::gitops::{Revision, Run, Source, StackState, SyncResult};
use manager::state::model::State;
use spec::model::RestartCondition;
use spec::task::{DesiredState, StackRecord, Task, TaskState};

/// A source's files, read: each stack found, loaded or not.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// Stack name -> its file or folder (relative) and what loading it gave.
    pub stacks: BTreeMap<String, Found>,
    /// The git commit read, if the source is a repository or a checkout.
    pub commit: String,
    pub dirty: bool,
}

/// One stack of a source, loaded or not.
#[derive(Debug, Clone)]
pub struct Found {
    pub rel: String,
    pub load: Result<Good, Vec<String>>,
}

/// A stack that loaded: what deploying it stores, and its identity.
#[derive(Debug, Clone)]
pub struct Good {
    pub record: StackRecord,
    pub digest: String,
}

/// What to do to the stacks of one source, and the source's status once done.
#[derive(Debug, Clone)]
pub struct Decision {
    pub deploys: Vec<Deploy>,
    pub prunes: Vec<Prune>,
    /// The source as it should be stored before the deployments are recorded
    /// (results of invalid, conflicting, held and synced stacks).
    pub source: Source,
}

impl Decision {
    /// Whether carrying it out changes anything (a deployment, a prune, or the status).
    pub fn changes(&self, before: &Source) -> bool {
        !self.deploys.is_empty() || !self.prunes.is_empty() || self.source != *before
    }
}

/// One deployment to make.
#[derive(Debug, Clone)]
pub struct Deploy {
    pub stack: String,
    /// What to store, `source` set.
    pub record: StackRecord,
    pub digest: String,
    pub commit: String,
    /// `deploy`, `redeploy` (drift) or `rollback` (a pinned revision).
    pub action: &'static str,
    pub reasons: Vec<String>,
    /// Tasks that died behind berth's back and that nothing else restarts: replaced.
    pub replace: Vec<String>,
}

/// One stack to take down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    pub stack: String,
    pub volumes: bool,
}

/// What the source `name` should do now, given what it holds (`read`, or why it could
/// not be read) and the state. Pure.
pub fn decide(
    state: &State,
    name: &str,
    read: &Result<Read, String>,
    now: u64,
) -> Option<Decision> {
    let before = state.gitops.get(name)?;
    let mut src = before.clone();
    let mut decision = Decision {
        deploys: Vec::new(),
        prunes: Vec::new(),
        source: src.clone(),
    };
    let read = match read {
        Ok(read) => read,
        Err(e) => {
            // Nothing is known of the source's stacks: nothing changes but the report.
            src.last.error = e.clone();
            let owned = src.stacks.values().filter(|s| s.owned()).count();
            src.last.held = if owned > 0 {
                format!("the source cannot be read, so none of its {owned} stacks is pruned")
            } else {
                String::new()
            };
            decision.source = src;
            return Some(decision);
        }
    };
    src.last.error.clear();
    src.last.commit = read.commit.clone();
    src.last.dirty = read.dirty;

    for (stack, found) in &read.stacks {
        let st = src.stacks.entry(stack.clone()).or_default();
        st.path = found.rel.clone();
        if st.suspended {
            st.result = SyncResult::Suspended;
            continue;
        }
        let good = match &found.load {
            Err(errors) => {
                note(st, SyncResult::Invalid, "invalid", errors.clone(), now);
                continue;
            }
            Ok(good) => good,
        };
        st.digest = good.digest.clone();
        let existing = state.stacks.get(stack);
        if let Some(rec) = existing {
            let ours = rec.source.as_deref() == Some(name);
            if !ours && !st.owned() {
                let by = match &rec.source {
                    Some(other) => format!("by git-ops source {other:?}"),
                    None => "by hand (berth up)".to_string(),
                };
                let why = format!(
                    "a stack named {stack:?} was deployed {by}; it is not adopted: \
                     take it down (berth down -p {stack}) for this source to deploy it"
                );
                note(st, SyncResult::Conflict, "conflict", vec![why], now);
                continue;
            }
        }
        // What should run: the pinned revision, or what the source holds.
        let pinned = st
            .pinned
            .as_ref()
            .and_then(|d| st.revisions.iter().find(|r| &r.digest == d))
            .cloned();
        if st.pinned.is_some() && pinned.is_none() {
            // A pin on a revision no longer kept cannot be honoured.
            st.pinned = None;
        }
        let (want, digest, commit, action) = match &pinned {
            Some(rev) => (
                (*rev.record).clone(),
                rev.digest.clone(),
                rev.commit.clone(),
                "rollback",
            ),
            None => (
                good.record.clone(),
                good.digest.clone(),
                read.commit.clone(),
                "deploy",
            ),
        };
        let mut reasons = Vec::new();
        let mut replace = Vec::new();
        let mut action = action;
        if st.deployed != digest {
            reasons = match existing {
                None => vec!["new stack".to_string()],
                Some(_) => changes(state, stack, &want),
            };
            if reasons.is_empty() {
                reasons.push("the source's files changed".to_string());
            }
        } else if let Some(why) = drift(state, name, stack, &want, &mut replace) {
            reasons.push(why);
            action = "redeploy";
        }
        if reasons.is_empty() {
            let result = if pinned.is_some() {
                SyncResult::Pinned
            } else {
                SyncResult::Synced
            };
            st.result = result;
            st.error.clear();
            continue;
        }
        let mut record = want;
        record.source = Some(name.to_string());
        decision.deploys.push(Deploy {
            stack: stack.clone(),
            record,
            digest,
            commit,
            action,
            reasons,
            replace,
        });
    }

    // Stacks this source deployed and no longer holds.
    let owned = src.stacks.values().filter(|s| s.owned()).count();
    let gone: Vec<String> = src
        .stacks
        .iter()
        .filter(|(k, s)| s.owned() && !read.stacks.contains_key(*k))
        .map(|(k, _)| k.clone())
        .collect();
    // What it never deployed and no longer holds is forgotten.
    src.stacks
        .retain(|k, s| s.owned() || read.stacks.contains_key(k));
    let mass = !gone.is_empty() && (read.stacks.is_empty() || gone.len() * 2 > owned);
    if mass && !src.confirm_prune {
        let why = format!(
            "{} of the {owned} stacks this source deployed are gone from it at once ({}); \
             nothing is pruned: run berth gitops sync {name} --confirm-prune to take them down",
            gone.len(),
            gone.join(", ")
        );
        for k in &gone {
            if let Some(st) = src.stacks.get_mut(k) {
                if !st.suspended {
                    note(st, SyncResult::Held, "held", vec![why.clone()], now);
                }
            }
        }
        src.last.held = why;
    } else {
        src.last.held.clear();
        for k in gone {
            if src.stacks.get(&k).is_some_and(|s| s.suspended) {
                continue;
            }
            decision.prunes.push(Prune {
                stack: k,
                volumes: src.prune_volumes,
            });
        }
    }
    // A confirmation is spent by the pass that sees it (a held prune needs it, so it
    // is false there already): it never waits for a later mistake.
    src.confirm_prune = false;
    decision.source = src;
    Some(decision)
}

/// Sets a stack's result and error, and records a run when either changed (a resync
/// that finds the same problem again writes nothing).
fn note(st: &mut StackState, result: SyncResult, action: &str, reasons: Vec<String>, now: u64) {
    let error = reasons.join("\n");
    if st.result == result && st.error == error {
        return;
    }
    st.result = result;
    st.error = error;
    st.push_run(Run {
        at: now,
        action: action.to_string(),
        reasons,
        digest: st.digest.clone(),
        commit: String::new(),
    });
}

/// Why deploying `want` changes stack `stack`: the services `up` would create,
/// recreate, scale or remove, with the attributes that changed (values of
/// environment variables and labels are not shown: they may be secrets).
pub fn changes(state: &State, stack: &str, want: &StackRecord) -> Vec<String> {
    let plan = manager::plan::plan_up(state, stack, &request(want), &Nodes::default());
    let mut out = Vec::new();
    for sp in &plan.services {
        use manager::plan::Action;
        match sp.action {
            Action::Unchanged => {}
            Action::Recreate if !sp.changed.is_empty() => {
                let attrs: Vec<String> = sp.changed.iter().map(describe_change).collect();
                out.push(format!("services.{}: {}", sp.service, attrs.join(", ")));
            }
            Action::Scale => out.push(format!(
                "services.{}: replicas {} -> {}",
                sp.service, sp.replicas.0, sp.replicas.1
            )),
            other => out.push(format!("services.{}: {}", sp.service, other.as_str())),
        }
    }
    out
}

fn describe_change(c: &manager::plan::AttrChange) -> String {
    let hidden = ["environment", "labels", "secrets", "configs"]
        .iter()
        .any(|p| c.path == *p || c.path.starts_with(&format!("{p}.")));
    if hidden {
        return format!("{} changed", c.path);
    }
    let show = |v: &Option<String>| {
        let v = v.as_deref().unwrap_or("(none)");
        if v.len() > 60 {
            format!("{}...", &v[..v.floor_char_boundary(57)])
        } else {
            v.to_string()
        }
    };
    format!("{}: {} -> {}", c.path, show(&c.old), show(&c.new))
}

/// The `up` a deployment of `record` is: services the file drops are removed.
pub fn request(record: &StackRecord) -> UpRequest {
    UpRequest {
        record: record.clone(),
        remove_orphans: true,
        force_recreate: false,
        no_recreate: false,
    }
}

/// Why stack `stack`, deployed by this source as `want`, no longer runs as deployed,
/// if it does not: taken down, deployed again by someone else, services stopped or
/// scaled by hand, or containers that died behind berth's back and that no restart
/// policy brings back (those go in `replace`).
fn drift(
    state: &State,
    source: &str,
    stack: &str,
    want: &StackRecord,
    replace: &mut Vec<String>,
) -> Option<String> {
    let Some(rec) = state.stacks.get(stack) else {
        // Put back once the `down` is over (its containers gone), not while it runs.
        if state.tasks.values().any(|t| t.stack == stack) {
            return None;
        }
        return Some("the stack was taken down behind berth's back (berth down)".to_string());
    };
    if rec.taking_down {
        return None;
    }
    if rec.source.as_deref() != Some(source) {
        return Some("the stack was deployed again behind berth's back (berth up)".to_string());
    }
    if rec.stack != want.stack || rec.contents != want.contents {
        return Some("the stack was changed behind berth's back".to_string());
    }
    if !rec.stopped.is_empty() {
        return Some(format!(
            "services stopped behind berth's back (berth stop): {}",
            rec.stopped.join(", ")
        ));
    }
    if !rec.scale.is_empty() {
        return Some("services scaled behind berth's back".to_string());
    }
    let mut dead = Vec::new();
    for t in newest_of_slots(state, stack) {
        let Some(svc) = rec.stack.services.get(&t.service) else {
            continue;
        };
        let vanished = matches!(t.status.state(), TaskState::Failed | TaskState::Removed)
            && !t.status.never_started();
        let restarted = manager::orchestrator::policy(svc).condition != RestartCondition::None;
        if t.desired == DesiredState::Running && vanished && !restarted {
            dead.push(t.name());
            replace.push(t.id.clone());
        }
    }
    if dead.is_empty() {
        return None;
    }
    Some(format!(
        "container{} {} died or vanished behind berth's back",
        if dead.len() == 1 { "" } else { "s" },
        dead.join(", ")
    ))
}

/// The newest task of each slot of `stack`'s services.
fn newest_of_slots<'a>(state: &'a State, stack: &str) -> Vec<&'a Task> {
    let mut newest: BTreeMap<(&str, u32, Option<&str>), &Task> = BTreeMap::new();
    for t in state.tasks.values().filter(|t| t.stack == stack) {
        let key = (t.service.as_str(), t.slot, t.for_node.as_deref());
        match newest.get(&key) {
            Some(n) if n.generation >= t.generation => {}
            _ => {
                newest.insert(key, t);
            }
        }
    }
    newest.into_values().collect()
}

/// Records deployment `d` of source `source` in `s`: the stack deployed as `up` would
/// (services dropped from the file removed), the dead tasks replaced, and the source's
/// status (owned, the revision kept, a run with its reasons). Pure; the controller
/// runs it in the store transaction that deploys.
pub fn apply_deploy(s: &mut State, source: &str, d: &Deploy, now: u64) {
    manager::stacks::up(s, &d.stack, &request(&d.record));
    let replace: BTreeSet<&String> = d.replace.iter().collect();
    for t in s.tasks.values_mut() {
        if replace.contains(&t.id) && t.status.state().is_terminal() {
            t.desired = DesiredState::Remove;
        }
    }
    let Some(src) = s.gitops.get_mut(source) else {
        return;
    };
    let st = src.stacks.entry(d.stack.clone()).or_default();
    st.deployed = d.digest.clone();
    st.deployed_at = now;
    st.commit = d.commit.clone();
    st.error.clear();
    st.result = if st.pinned.is_some() {
        SyncResult::Pinned
    } else {
        SyncResult::Synced
    };
    st.push_run(Run {
        at: now,
        action: d.action.to_string(),
        reasons: d.reasons.clone(),
        digest: d.digest.clone(),
        commit: d.commit.clone(),
    });
    let mut kept = d.record.clone();
    kept.source = Some(source.to_string());
    st.push_revision(Revision {
        digest: d.digest.clone(),
        commit: d.commit.clone(),
        at: now,
        record: Box::new(kept),
    });
}

/// Records that deployment `d` could not be made (an image that cannot be had): what
/// runs keeps running.
pub fn apply_failure(s: &mut State, source: &str, d: &Deploy, error: &str, now: u64) {
    if let Some(st) = s
        .gitops
        .get_mut(source)
        .and_then(|src| src.stacks.get_mut(&d.stack))
    {
        let reasons = error.lines().map(str::to_string).collect();
        note(st, SyncResult::Failed, "failed", reasons, now);
    }
}

/// Records the prune of stack `stack` (taken down, or `error` says why not): a
/// pruned stack is no longer the source's (the next pass forgets it).
pub fn apply_prune(s: &mut State, source: &str, stack: &str, error: Option<&str>, now: u64) {
    let Some(st) = s
        .gitops
        .get_mut(source)
        .and_then(|src| src.stacks.get_mut(stack))
    else {
        return;
    };
    match error {
        Some(e) => note(
            st,
            SyncResult::Failed,
            "prune failed",
            vec![e.to_string()],
            now,
        ),
        None => {
            st.deployed.clear();
            st.pinned = None;
            st.error.clear();
            st.result = SyncResult::Pruned;
            st.push_run(Run {
                at: now,
                action: "prune".to_string(),
                reasons: vec![format!("{} is gone from the source", st.path)],
                digest: String::new(),
                commit: String::new(),
            });
        }
    }
}

/// A stack's health, from its tasks: `healthy` (every wanted container runs, and is
/// healthy where it has a healthcheck), `progressing` (some are starting or an update
/// rolls), `degraded` (some failed or are unhealthy), or `down` (no stack).
pub fn health(state: &State, stack: &str) -> &'static str {
    use spec::task::Health;
    let Some(rec) = state.stacks.get(stack) else {
        return "down";
    };
    let mut progressing = rec.updates.values().any(|u| {
        matches!(
            u.state,
            spec::task::UpdateState::Updating | spec::task::UpdateState::RollingBack
        )
    });
    for t in newest_of_slots(state, stack) {
        if t.desired != DesiredState::Running {
            continue;
        }
        match t.status.state() {
            TaskState::Running => match t.status.health {
                Health::Unhealthy => return "degraded",
                Health::Starting => progressing = true,
                _ => {}
            },
            TaskState::Complete => {}
            TaskState::Failed | TaskState::Rejected | TaskState::Removed => return "degraded",
            _ => progressing = true,
        }
    }
    if progressing {
        "progressing"
    } else {
        "healthy"
    }
}

//! The git-ops planner, pure: sources, stacks and tasks as values, no daemon.

use gitops::plan::{self, Found, Good, Read};
use manager::state::gitops::{Source, SourceKind, StackState, SyncResult};
use manager::state::model::State;
use spec::task::StackRecord;

fn record(name: &str, mode: &str) -> StackRecord {
    serde_json::from_value(serde_json::json!({
        "stack": {
            "name": name,
            "services": {"web": {"image": "busybox:local", "environment": {"MODE": mode}}}
        }
    }))
    .expect("record")
}

fn good(name: &str, mode: &str) -> Found {
    let record = record(name, mode);
    Found {
        rel: format!("{name}.yaml"),
        load: Ok(Good {
            digest: gitops::scan::digest(&record),
            record,
        }),
    }
}

fn read(stacks: &[(&str, Found)]) -> Result<Read, String> {
    Ok(Read {
        stacks: stacks
            .iter()
            .map(|(k, f)| (k.to_string(), f.clone()))
            .collect(),
        commit: String::new(),
        dirty: false,
    })
}

fn state_with_source() -> State {
    let mut s = State::default();
    let kind = SourceKind::Dir {
        path: "/stacks".into(),
    };
    s.gitops.insert("src".into(), Source::new("src", kind, 0));
    s
}

/// Plans and applies as the controller does (without images or prunes' `down`).
fn sync(s: &mut State, r: &Result<Read, String>, now: u64) -> plan::Decision {
    let d = plan::decide(s, "src", r, now).expect("a source");
    s.gitops.insert("src".into(), d.source.clone());
    for dep in &d.deploys {
        plan::apply_deploy(s, "src", dep, now);
    }
    for p in &d.prunes {
        s.stacks.remove(&p.stack);
        plan::apply_prune(s, "src", &p.stack, None, now);
    }
    d
}

fn stack<'a>(s: &'a State, name: &str) -> &'a StackState {
    &s.gitops["src"].stacks[name]
}

#[test]
fn a_stack_is_deployed_once_and_a_thousand_resyncs_change_nothing() {
    let mut s = state_with_source();
    let r = read(&[("a", good("a", "one"))]);
    let d = sync(&mut s, &r, 1);
    assert_eq!(d.deploys.len(), 1);
    assert_eq!(d.deploys[0].reasons, vec!["new stack".to_string()]);
    assert_eq!(s.stacks["a"].source.as_deref(), Some("src"));
    assert_eq!(stack(&s, "a").result, SyncResult::Synced);
    for now in 2..1002 {
        let before = s.gitops["src"].clone();
        let d = plan::decide(&s, "src", &r, now).expect("source");
        assert!(!d.changes(&before), "resync {now} would write: {d:?}");
    }
}

/// The orchestrator's one pass: the stack's tasks made (what the plan of a change
/// compares against).
fn orchestrate(s: &mut State) {
    let tasks: Vec<spec::task::Task> = s.tasks.values().cloned().collect();
    let p = manager::orchestrator::reconcile(&s.stacks, &tasks, 1);
    manager::orchestrator::run::apply(s, &p);
}

#[test]
fn a_change_says_which_attribute_and_hides_environment_values() {
    let mut s = state_with_source();
    sync(&mut s, &read(&[("a", good("a", "one"))]), 1);
    orchestrate(&mut s);
    let d = sync(&mut s, &read(&[("a", good("a", "s3cret"))]), 2);
    assert_eq!(d.deploys.len(), 1);
    let why = d.deploys[0].reasons.join("; ");
    assert!(
        why.contains("services.web") && why.contains("environment.MODE"),
        "{why}"
    );
    assert!(!why.contains("s3cret") && !why.contains("one"), "{why}");
    assert_eq!(stack(&s, "a").revisions.len(), 2);
    assert_eq!(stack(&s, "a").runs.len(), 2);
}

#[test]
fn an_invalid_file_keeps_the_deployment_and_is_reported_once() {
    let mut s = state_with_source();
    sync(&mut s, &read(&[("a", good("a", "one"))]), 1);
    let deployed = s.stacks["a"].clone();
    let bad = Found {
        rel: "a.yaml".into(),
        load: Err(vec!["a.yaml: services.web.ports[0]: not a port".into()]),
    };
    let r = read(&[("a", bad)]);
    let d = sync(&mut s, &r, 2);
    assert!(d.deploys.is_empty() && d.prunes.is_empty());
    assert_eq!(s.stacks["a"], deployed);
    let st = stack(&s, "a");
    assert_eq!(st.result, SyncResult::Invalid);
    assert!(st.error.contains("services.web.ports[0]"));
    let runs = st.runs.len();
    // Seen again: no new run, nothing written.
    let before = s.gitops["src"].clone();
    assert!(!plan::decide(&s, "src", &r, 3)
        .expect("source")
        .changes(&before));
    assert_eq!(stack(&s, "a").runs.len(), runs);
}

#[test]
fn a_stack_deployed_by_hand_or_by_another_source_is_not_adopted() {
    for by in [None, Some("other")] {
        let mut s = state_with_source();
        let mut theirs = record("a", "theirs");
        theirs.source = by.map(String::from);
        s.stacks.insert("a".into(), theirs.clone());
        let d = sync(&mut s, &read(&[("a", good("a", "one"))]), 1);
        assert!(d.deploys.is_empty(), "{by:?}");
        assert_eq!(s.stacks["a"], theirs);
        assert_eq!(stack(&s, "a").result, SyncResult::Conflict);
        // Gone from the source: not pruned, it was never this source's.
        let d = sync(&mut s, &read(&[]), 2);
        assert!(d.prunes.is_empty());
        assert!(s.stacks.contains_key("a"));
    }
}

#[test]
fn mass_deletes_are_held_until_confirmed_and_single_deletes_prune() {
    let mut s = state_with_source();
    let all: Vec<(&str, Found)> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| (*n, good(n, "one")))
        .collect();
    sync(&mut s, &read(&all), 1);
    // One of four gone: pruned.
    let d = sync(&mut s, &read(&all[1..]), 2);
    assert_eq!(d.prunes.len(), 1);
    assert_eq!(d.prunes[0].stack, "a");
    // Two of the three left gone at once: more than half, held.
    let d = sync(&mut s, &read(&all[3..]), 3);
    assert!(d.prunes.is_empty());
    assert_eq!(stack(&s, "b").result, SyncResult::Held);
    assert!(s.gitops["src"].last.held.contains("--confirm-prune"));
    // Empty: held too (the remaining one with them).
    let d = sync(&mut s, &read(&[]), 4);
    assert!(d.prunes.is_empty());
    // Unreadable: nothing pruned, the reason reported.
    let d = sync(
        &mut s,
        &Err("the source directory /stacks does not exist".into()),
        5,
    );
    assert!(d.prunes.is_empty() && d.deploys.is_empty());
    assert!(!s.gitops["src"].last.error.is_empty());
    // Confirmed: pruned, and the confirmation is spent.
    s.gitops.get_mut("src").expect("src").confirm_prune = true;
    let d = sync(&mut s, &read(&[]), 6);
    assert_eq!(d.prunes.len(), 3);
    assert!(!s.gitops["src"].confirm_prune);
}

#[test]
fn drift_is_put_back_but_not_while_down_runs() {
    let mut s = state_with_source();
    let r = read(&[("a", good("a", "one"))]);
    sync(&mut s, &r, 1);
    // `berth up` by hand: the record is no longer this source's.
    s.stacks.get_mut("a").expect("a").source = None;
    let d = sync(&mut s, &r, 2);
    assert_eq!(d.deploys.len(), 1);
    assert_eq!(d.deploys[0].action, "redeploy");
    // `berth down` under way: left to finish.
    s.stacks.get_mut("a").expect("a").taking_down = true;
    assert!(plan::decide(&s, "src", &r, 3)
        .expect("src")
        .deploys
        .is_empty());
    // Down done: put back.
    s.stacks.remove("a");
    let d = sync(&mut s, &r, 4);
    assert_eq!(d.deploys.len(), 1);
    assert!(d.deploys[0].reasons[0].contains("taken down"));
    // Suspended: left alone.
    s.gitops
        .get_mut("src")
        .expect("src")
        .stacks
        .get_mut("a")
        .expect("a")
        .suspended = true;
    s.stacks.remove("a");
    assert!(plan::decide(&s, "src", &r, 5)
        .expect("src")
        .deploys
        .is_empty());
}

#[test]
fn a_pinned_revision_runs_until_unpinned() {
    let mut s = state_with_source();
    sync(&mut s, &read(&[("a", good("a", "one"))]), 1);
    let first = stack(&s, "a").deployed.clone();
    sync(&mut s, &read(&[("a", good("a", "two"))]), 2);
    let st = s
        .gitops
        .get_mut("src")
        .expect("src")
        .stacks
        .get_mut("a")
        .expect("a");
    st.pinned = Some(first.clone());
    let r = read(&[("a", good("a", "three"))]);
    let d = sync(&mut s, &r, 3);
    assert_eq!(d.deploys.len(), 1);
    assert_eq!(d.deploys[0].action, "rollback");
    assert_eq!(stack(&s, "a").deployed, first);
    assert_eq!(stack(&s, "a").result, SyncResult::Pinned);
    assert!(
        sync(&mut s, &r, 4).deploys.is_empty(),
        "pinned stays pinned"
    );
    s.gitops
        .get_mut("src")
        .expect("src")
        .stacks
        .get_mut("a")
        .expect("a")
        .pinned = None;
    let d = sync(&mut s, &r, 5);
    assert_eq!(d.deploys.len(), 1);
    assert_eq!(stack(&s, "a").result, SyncResult::Synced);
}

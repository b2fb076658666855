//! `up --dry-run`'s plan against what `up` then does: for generated changes to a
//! running stack (images, environments, replicas, services added and dropped, secrets'
//! contents, dependencies with `restart: true`, `--force-recreate`,
//! `--remove-orphans`), the slots the plan says are created, recreated and removed are
//! exactly those that `up` followed by the orchestrator, run until nothing changes,
//! creates, replaces and removes.

use std::collections::{BTreeMap, BTreeSet};

use manager::orchestrator::{reconcile, run::apply};
use manager::plan::{plan_up, Action, UpPlan};
use manager::stacks::{up, UpRequest};
use manager::state::model::State;
use proptest::prelude::*;
use spec::model::{Condition, Dependency, Deploy, FileMount, FileObject, Service, Stack};
use spec::task::{DesiredState, StackRecord, Task, TaskState, TaskStatus};

const NOW: u64 = 1_000_000;

/// What one service of a generated stack is.
#[derive(Debug, Clone, PartialEq)]
struct Svc {
    image: u8,
    env: u8,
    replicas: u32,
    /// Uses the secret `s`.
    secret: bool,
    /// Depends on service `a` with `restart: true`.
    after_a: bool,
}

fn record(services: &BTreeMap<String, Svc>, secret_content: u8) -> StackRecord {
    let mut stack = Stack::of_services(
        "app",
        services.iter().map(|(name, s)| {
            let mut svc = Service {
                image: Some(format!("busybox:1.{}", s.image)),
                deploy: Some(Deploy {
                    replicas: Some(s.replicas),
                    ..Deploy::default()
                }),
                ..Service::default()
            };
            svc.environment
                .insert("MODE".into(), Some(format!("m{}", s.env)));
            if s.secret {
                svc.secrets.push(FileMount {
                    source: "s".into(),
                    target: "/run/secrets/s".into(),
                    uid: None,
                    gid: None,
                    mode: None,
                });
            }
            // Only on an `a` that runs: a dependency with no task is never met, and
            // its dependents wait (the orchestrator's matter, not the plan's).
            if s.after_a && name != "a" && services.get("a").is_some_and(|a| a.replicas > 0) {
                svc.depends_on.insert(
                    "a".into(),
                    Dependency {
                        condition: Condition::ServiceStarted,
                        restart: true,
                        required: true,
                    },
                );
            }
            (name.clone(), svc)
        }),
    );
    stack.secrets.insert(
        "s".into(),
        FileObject {
            name: "s".into(),
            file: Some("/dev/null".into()),
            environment: None,
            content: None,
            external: false,
            labels: Default::default(),
            extensions: Default::default(),
        },
    );
    let mut r = StackRecord::new(stack);
    r.contents
        .insert("secrets.s".into(), format!("{secret_content:02x}"));
    r
}

/// The agent's side: every task that should run runs, every task to remove is gone.
fn agent(s: &mut State) {
    for t in s.tasks.values_mut() {
        match t.desired {
            DesiredState::Running if t.status.state() == TaskState::New => {
                t.status = TaskStatus {
                    state: Some(TaskState::Running),
                    started_at: Some(NOW),
                    ..TaskStatus::default()
                }
            }
            DesiredState::Remove => t.status.state = Some(TaskState::Removed),
            DesiredState::Shutdown if !t.status.state().is_terminal() => {
                t.status.state = Some(TaskState::Shutdown)
            }
            _ => {}
        }
    }
}

/// The orchestrator and the agent, in turns, until neither changes anything.
fn settle(s: &mut State) {
    for _ in 0..50 {
        let tasks: Vec<Task> = s.tasks.values().cloned().collect();
        let plan = reconcile(&s.stacks, &tasks, NOW);
        let before = s.clone();
        apply(s, &plan);
        agent(s);
        if *s == before {
            return;
        }
    }
    panic!("the orchestrator and the agent do not settle");
}

/// The live task of each (service, slot).
fn live(s: &State) -> BTreeMap<(String, u32), String> {
    s.tasks
        .values()
        .filter(|t| t.desired == DesiredState::Running)
        .map(|t| ((t.service.clone(), t.slot), t.id.clone()))
        .collect()
}

/// What actually happened between `before` and `after`, per service: (created,
/// recreated, removed) slots.
type Outcome = BTreeMap<String, (BTreeSet<u32>, BTreeSet<u32>, BTreeSet<u32>)>;

fn outcome(before: &State, after: &State) -> Outcome {
    let (b, a) = (live(before), live(after));
    let mut out = Outcome::new();
    for key in b.keys().chain(a.keys()) {
        let e = out.entry(key.0.clone()).or_default();
        match (b.get(key), a.get(key)) {
            (None, Some(_)) => {
                e.0.insert(key.1);
            }
            (Some(x), Some(y)) if x != y => {
                e.1.insert(key.1);
            }
            (Some(_), None) => {
                e.2.insert(key.1);
            }
            _ => {}
        }
    }
    out.retain(|_, (c, r, d)| !(c.is_empty() && r.is_empty() && d.is_empty()));
    out
}

fn planned(plan: &UpPlan) -> Outcome {
    let set = |v: &[u32]| v.iter().copied().collect::<BTreeSet<u32>>();
    plan.services
        .iter()
        .map(|s| {
            (
                s.service.clone(),
                (set(&s.create), set(&s.recreate), set(&s.remove)),
            )
        })
        .filter(|(_, (c, r, d))| !(c.is_empty() && r.is_empty() && d.is_empty()))
        .collect()
}

/// Deploys `first`, settles, then checks the plan of `second` against what `up` of it
/// does. Returns the plan.
fn check(first: StackRecord, second: StackRecord, force: bool, remove_orphans: bool) -> UpPlan {
    let mut s = State::default();
    let deploy = |record: StackRecord| UpRequest {
        record,
        remove_orphans,
        force_recreate: force,
        no_recreate: false,
    };
    up(&mut s, "app", &deploy(first.clone()));
    settle(&mut s);
    let base = s.clone();
    let req = deploy(second);
    let plan = plan_up(&base, "app", &req, &Default::default());
    up(&mut s, "app", &req);
    settle(&mut s);
    assert_eq!(
        planned(&plan),
        outcome(&base, &s),
        "the plan is not what up did: {plan:#?}"
    );
    assert_eq!(
        plan.changes(),
        !outcome(&base, &s).is_empty() || plan.services.iter().any(|s| s.action == Action::Orphan),
        "{plan:#?}"
    );
    plan
}

fn svc(image: u8, replicas: u32) -> Svc {
    Svc {
        image,
        env: 0,
        replicas,
        secret: false,
        after_a: false,
    }
}

fn services(list: &[(&str, Svc)]) -> BTreeMap<String, Svc> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn an_image_change_recreates_every_slot_and_says_what_changed() {
    let first = record(&services(&[("a", svc(1, 2)), ("b", svc(1, 1))]), 0);
    let second = record(&services(&[("a", svc(2, 2)), ("b", svc(1, 1))]), 0);
    let plan = check(first, second, false, false);
    let a = &plan.services[0];
    assert_eq!(a.action, Action::Recreate);
    assert_eq!(a.recreate, [1, 2]);
    assert_eq!(a.changed.len(), 1, "{:?}", a.changed);
    assert_eq!(a.changed[0].path, "image");
    assert_eq!(a.changed[0].old.as_deref(), Some("\"busybox:1.1\""));
    assert_eq!(a.changed[0].new.as_deref(), Some("\"busybox:1.2\""));
    assert_eq!(plan.services[1].action, Action::Unchanged);
}

#[test]
fn a_secret_content_change_recreates_its_users_naming_the_secret() {
    let with_secret = Svc {
        secret: true,
        ..svc(1, 1)
    };
    let list = services(&[("a", with_secret), ("b", svc(1, 1))]);
    let plan = check(record(&list, 1), record(&list, 2), false, false);
    assert_eq!(plan.services[0].action, Action::Recreate);
    assert_eq!(plan.services[0].changed[0].path, "secrets.s: content");
    assert_eq!(plan.services[1].action, Action::Unchanged);
}

#[test]
fn dropped_services_are_orphans_or_removed() {
    let first = record(&services(&[("a", svc(1, 1)), ("b", svc(1, 2))]), 0);
    let second = record(&services(&[("a", svc(1, 1))]), 0);
    let kept = check(first.clone(), second.clone(), false, false);
    assert_eq!(kept.services[1].action, Action::Orphan);
    assert!(kept.changes());
    let removed = check(first, second, false, true);
    assert_eq!(removed.services[1].action, Action::Remove);
    assert_eq!(removed.services[1].remove, [1, 2]);
}

#[test]
fn nothing_changed_plans_nothing() {
    let list = services(&[("a", svc(1, 3))]);
    let plan = check(record(&list, 0), record(&list, 0), false, false);
    assert!(!plan.changes(), "{plan:#?}");
}

fn arb_svc() -> impl Strategy<Value = Svc> {
    (0u8..3, 0u8..3, 0u32..4, any::<bool>(), any::<bool>()).prop_map(
        |(image, env, replicas, secret, after_a)| Svc {
            image,
            env,
            replicas,
            secret,
            after_a,
        },
    )
}

fn arb_stack() -> impl Strategy<Value = BTreeMap<String, Svc>> {
    proptest::collection::btree_map(
        prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")].prop_map(String::from),
        arb_svc(),
        1..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the change, the plan's slots are up's.
    #[test]
    fn the_plan_is_what_up_does(
        first in arb_stack(),
        second in arb_stack(),
        contents in (0u8..2, 0u8..2),
        force in any::<bool>(),
        remove_orphans in any::<bool>(),
    ) {
        check(
            record(&first, contents.0),
            record(&second, contents.1),
            force,
            remove_orphans,
        );
    }
}

/// On a cluster, the plan says where each new task would go, by the scheduler's own
/// rules, and why one that fits nowhere stays pending.
#[test]
fn on_a_cluster_the_plan_places_new_tasks_or_says_why_not() {
    use manager::plan::Placed;
    use manager::state::model::{Availability, NodeRecord};
    use spec::model::Placement;
    let node = |id: &str, tier: &str| NodeRecord {
        id: id.into(),
        role: pki::NodeRole::Worker,
        addr: String::new(),
        hostname: format!("host-{id}"),
        raft_id: 0,
        joined_at: 0,
        labels: BTreeMap::from([("tier".to_string(), tier.to_string())]),
        availability: Availability::Active,
        platform: Default::default(),
        capacity: Default::default(),
        generic_resources: Default::default(),
    };
    let mut s = State::default();
    s.nodes.insert("n1".into(), node("n1", "web"));
    s.nodes.insert("n2".into(), node("n2", "web"));
    let constrained = |tier: &str, replicas: u32| Service {
        image: Some("busybox".into()),
        deploy: Some(Deploy {
            replicas: Some(replicas),
            placement: Some(Placement {
                constraints: vec![format!("node.labels.tier == {tier}")
                    .parse()
                    .expect("a constraint")],
                ..Placement::default()
            }),
            ..Deploy::default()
        }),
        ..Service::default()
    };
    let record = StackRecord::new(Stack::of_services(
        "app",
        [
            ("web".to_string(), constrained("web", 2)),
            ("db".to_string(), constrained("db", 1)),
        ],
    ));
    let req = UpRequest {
        record,
        remove_orphans: false,
        force_recreate: false,
        no_recreate: false,
    };
    let plan = plan_up(&s, "app", &req, &Default::default());
    let web = plan.services.iter().find(|p| p.service == "web").unwrap();
    assert_eq!(web.action, Action::Create);
    // Spread: one on each node.
    let mut hosts: Vec<&Placed> = web.placed.iter().map(|(_, p)| p).collect();
    hosts.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(
        hosts,
        [
            &Placed::Node("host-n1".into()),
            &Placed::Node("host-n2".into())
        ]
    );
    let db = plan.services.iter().find(|p| p.service == "db").unwrap();
    match &db.placed[..] {
        [(1, Placed::Pending(why))] => assert!(
            why.contains("no suitable node") && why.contains("node.labels.tier == db"),
            "{why}"
        ),
        other => panic!("db: {other:?}"),
    }
}

//! The orchestrator as a table of cases: stacks and tasks in, changes out. Each case
//! also checks the level-triggered rule: applying the plan and planning again changes
//! nothing more (until an agent reports something).

use std::collections::BTreeMap;
use std::time::Duration;

use manager::orchestrator::{reconcile, spec_hash, Change, Plan};
use manager::state::model::State;
use spec::model::{Condition, Dependency, Deploy, Restart, Service, Stack};
use spec::task::{DesiredState, Health, StackRecord, Task, TaskState, TaskStatus};

const NOW: u64 = 1_000_000;

fn service(image: &str) -> Service {
    Service {
        image: Some(image.into()),
        ..Service::default()
    }
}

fn stack(services: &[(&str, Service)]) -> StackRecord {
    StackRecord::new(Stack::of_services(
        "app",
        services.iter().map(|(k, s)| (k.to_string(), s.clone())),
    ))
}

fn state(records: &[StackRecord]) -> State {
    State {
        version: 0,
        stacks: records
            .iter()
            .map(|r| (r.stack.name.clone(), r.clone()))
            .collect(),
        tasks: BTreeMap::new(),
        ..State::default()
    }
}

fn plan(s: &State, now: u64) -> Plan {
    let tasks: Vec<Task> = s.tasks.values().cloned().collect();
    reconcile(&s.stacks, &tasks, now)
}

/// Plans and applies until nothing changes; returns every change made.
fn settle(s: &mut State, now: u64) -> Vec<Change> {
    let mut all = Vec::new();
    for _ in 0..10 {
        let p = plan(s, now);
        if p.changes.is_empty() {
            return all;
        }
        manager::orchestrator::run::apply(s, &p);
        all.extend(p.changes);
    }
    panic!("the orchestrator does not settle: {all:#?}");
}

fn created(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Create(t) => Some(t.id.clone()),
            _ => None,
        })
        .collect()
}

/// The agent's side: every task that should run, runs.
fn run_all(s: &mut State) {
    run_all_at(s, NOW)
}

fn run_all_at(s: &mut State, now: u64) {
    for t in s.tasks.values_mut() {
        if t.desired == DesiredState::Running && t.status.state() == TaskState::New {
            t.status = TaskStatus {
                state: Some(TaskState::Running),
                started_at: Some(now),
                ..TaskStatus::default()
            };
        }
        match t.desired {
            DesiredState::Remove => t.status.state = Some(TaskState::Removed),
            DesiredState::Shutdown if !t.status.state().is_terminal() => {
                t.status.state = Some(TaskState::Shutdown)
            }
            _ => {}
        }
    }
}

fn exit(s: &mut State, id: &str, code: i32, at: u64) {
    let t = s.tasks.get_mut(id).expect("task");
    t.status.state = Some(if code == 0 {
        TaskState::Complete
    } else {
        TaskState::Failed
    });
    t.status.exit_code = Some(code);
    t.status.finished_at = Some(at);
}

#[test]
fn replicas_make_one_task_per_slot_and_a_second_pass_changes_nothing() {
    let mut web = service("web:1");
    web.deploy = Some(Deploy {
        replicas: Some(3),
        ..Deploy::default()
    });
    let mut s = state(&[stack(&[("web", web), ("db", service("db:1"))])]);
    let changes = settle(&mut s, NOW);
    assert_eq!(
        created(&changes),
        ["app-db-1.1", "app-web-1.1", "app-web-2.1", "app-web-3.1"]
    );
    run_all(&mut s);
    assert_eq!(plan(&s, NOW), Plan::default());
}

#[test]
fn scale_down_removes_the_highest_slots_and_deletes_them_once_gone() {
    let mut rec = stack(&[("web", service("web:1"))]);
    rec.scale.insert("web".into(), 3);
    let mut s = state(&[rec.clone()]);
    settle(&mut s, NOW);
    run_all(&mut s);
    rec.scale.insert("web".into(), 1);
    s.stacks.insert("app".into(), rec);
    let changes = settle(&mut s, NOW);
    assert_eq!(
        changes,
        vec![
            Change::SetDesired {
                task: "app-web-2.1".into(),
                desired: DesiredState::Remove
            },
            Change::SetDesired {
                task: "app-web-3.1".into(),
                desired: DesiredState::Remove
            },
        ]
    );
    run_all(&mut s);
    let changes = settle(&mut s, NOW);
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| matches!(c, Change::Delete { .. })));
    assert_eq!(s.tasks.keys().collect::<Vec<_>>(), ["app-web-1.1"]);
}

#[test]
fn a_changed_service_is_recreated_after_its_old_task_is_gone() {
    let mut s = state(&[stack(&[("web", service("web:1")), ("db", service("db:1"))])]);
    settle(&mut s, NOW);
    run_all(&mut s);
    s.stacks.insert(
        "app".into(),
        stack(&[("web", service("web:2")), ("db", service("db:1"))]),
    );
    let changes = settle(&mut s, NOW);
    // Stop first; nothing new while the old container still holds the name.
    assert_eq!(
        changes,
        vec![Change::SetDesired {
            task: "app-web-1.1".into(),
            desired: DesiredState::Remove
        }]
    );
    run_all(&mut s);
    let changes = settle(&mut s, NOW);
    assert_eq!(created(&changes), ["app-web-1.2"]);
    let new = &s.tasks["app-web-1.2"];
    assert_eq!(
        new.spec_hash,
        spec_hash(&s.stacks["app"], &service("web:2"))
    );
    // db was not touched.
    assert_eq!(s.tasks["app-db-1.1"].desired, DesiredState::Running);
}

#[test]
fn restart_policies() {
    struct Case {
        restart: Option<Restart>,
        code: i32,
        restarts_before: u32,
        restarted: bool,
    }
    let cases = [
        (None, 1, 0, false),
        (Some(Restart::No), 1, 0, false),
        (Some(Restart::Always), 0, 0, true),
        (Some(Restart::Always), 1, 0, true),
        (Some(Restart::UnlessStopped), 1, 0, true),
        (Some(Restart::OnFailure { max_retries: None }), 0, 0, false),
        (Some(Restart::OnFailure { max_retries: None }), 3, 7, true),
        (
            Some(Restart::OnFailure {
                max_retries: Some(2),
            }),
            3,
            1,
            true,
        ),
        (
            Some(Restart::OnFailure {
                max_retries: Some(2),
            }),
            3,
            2,
            false,
        ),
    ]
    .map(|(restart, code, restarts_before, restarted)| Case {
        restart,
        code,
        restarts_before,
        restarted,
    });
    for (i, c) in cases.iter().enumerate() {
        let mut svc = service("job:1");
        svc.restart = c.restart;
        let mut s = state(&[stack(&[("job", svc)])]);
        settle(&mut s, NOW);
        run_all(&mut s);
        s.tasks.get_mut("app-job-1.1").expect("task").restarts = c.restarts_before;
        exit(&mut s, "app-job-1.1", c.code, NOW + 10);
        // Back-off: nothing before it is due, but a wake-up is asked for.
        let early = plan(&s, NOW + 10);
        if c.restarted {
            assert!(early.changes.is_empty(), "case {i}: restarted too early");
            let due = early.wake_at.expect("a wake-up time");
            assert!(due > NOW + 10, "case {i}");
            let changes = settle(&mut s, due);
            assert_eq!(created(&changes), ["app-job-1.2"], "case {i}");
            assert_eq!(
                s.tasks["app-job-1.1"].desired,
                DesiredState::Shutdown,
                "case {i}"
            );
            assert_eq!(
                s.tasks["app-job-1.2"].restarts,
                c.restarts_before + 1,
                "case {i}"
            );
        } else {
            assert_eq!(early, Plan::default(), "case {i}");
            assert_eq!(plan(&s, NOW + 3_600_000), Plan::default(), "case {i}");
        }
    }
}

#[test]
fn back_off_doubles_and_is_capped() {
    let mut svc = service("crash:1");
    svc.restart = Some(Restart::Always);
    let mut s = state(&[stack(&[("crash", svc)])]);
    settle(&mut s, NOW);
    let mut delays = Vec::new();
    let mut now = NOW;
    for generation in 1..=10 {
        run_all_at(&mut s, now);
        let id = format!("app-crash-1.{generation}");
        exit(&mut s, &id, 1, now);
        let due = plan(&s, now).wake_at.expect("a restart is planned");
        delays.push(due - now);
        now = due;
        settle(&mut s, now);
    }
    assert_eq!(&delays[..4], [100, 200, 400, 800]);
    assert_eq!(*delays.last().expect("delays"), 10_000);
}

#[test]
fn a_task_that_could_not_start_is_not_retried_in_a_loop() {
    let mut svc = service("missing:1");
    svc.restart = Some(Restart::Always);
    let mut s = state(&[stack(&[("web", svc)])]);
    settle(&mut s, NOW);
    let t = s.tasks.get_mut("app-web-1.1").expect("task");
    t.status.state = Some(TaskState::Rejected);
    assert_eq!(plan(&s, NOW + 60_000), Plan::default());
}

#[test]
fn a_container_removed_behind_berths_back_comes_back_per_its_policy() {
    let mut svc = service("web:1");
    svc.restart = Some(Restart::UnlessStopped);
    let mut s = state(&[stack(&[("web", svc)])]);
    settle(&mut s, NOW);
    run_all(&mut s);
    let t = s.tasks.get_mut("app-web-1.1").expect("task");
    t.status.state = Some(TaskState::Removed);
    t.status.finished_at = Some(NOW);
    let changes = settle(&mut s, NOW + 1_000);
    assert_eq!(created(&changes), ["app-web-1.2"]);
}

#[test]
fn depends_on_conditions_gate_creation() {
    for (condition, dep_state, health, code, expect_started) in [
        (
            Condition::ServiceStarted,
            TaskState::Starting,
            Health::None,
            None,
            false,
        ),
        (
            Condition::ServiceStarted,
            TaskState::Running,
            Health::None,
            None,
            true,
        ),
        (
            Condition::ServiceHealthy,
            TaskState::Running,
            Health::Starting,
            None,
            false,
        ),
        (
            Condition::ServiceHealthy,
            TaskState::Running,
            Health::Unhealthy,
            None,
            false,
        ),
        (
            Condition::ServiceHealthy,
            TaskState::Running,
            Health::Healthy,
            None,
            true,
        ),
        (
            Condition::ServiceCompletedSuccessfully,
            TaskState::Running,
            Health::None,
            None,
            false,
        ),
        (
            Condition::ServiceCompletedSuccessfully,
            TaskState::Failed,
            Health::None,
            Some(1),
            false,
        ),
        (
            Condition::ServiceCompletedSuccessfully,
            TaskState::Complete,
            Health::None,
            Some(0),
            true,
        ),
    ] {
        let mut app = service("app:1");
        app.depends_on.insert(
            "db".into(),
            Dependency {
                condition,
                restart: false,
                required: true,
            },
        );
        let mut s = state(&[stack(&[("db", service("db:1")), ("app", app)])]);
        let first = settle(&mut s, NOW);
        assert_eq!(created(&first), ["app-db-1.1"], "{condition:?}");
        let db = s.tasks.get_mut("app-db-1.1").expect("db task");
        db.status.state = Some(dep_state);
        db.status.health = health;
        db.status.exit_code = code;
        let changes = settle(&mut s, NOW);
        assert_eq!(
            !created(&changes).is_empty(),
            expect_started,
            "{condition:?} with db {dep_state:?}/{health:?}"
        );
    }
}

#[test]
fn taking_a_stack_down_removes_every_task_then_every_record() {
    let mut s = state(&[stack(&[("web", service("web:1")), ("db", service("db:1"))])]);
    settle(&mut s, NOW);
    run_all(&mut s);
    s.stacks.clear();
    let changes = settle(&mut s, NOW);
    assert_eq!(changes.len(), 2);
    assert!(s.tasks.values().all(|t| t.desired == DesiredState::Remove));
    run_all(&mut s);
    settle(&mut s, NOW);
    assert!(s.tasks.is_empty());
}

#[test]
fn stopped_services_are_shut_down_and_not_restarted() {
    let mut svc = service("web:1");
    svc.restart = Some(Restart::Always);
    let mut rec = stack(&[("web", svc)]);
    let mut s = state(&[rec.clone()]);
    settle(&mut s, NOW);
    run_all(&mut s);
    rec.stopped.push("web".into());
    s.stacks.insert("app".into(), rec.clone());
    settle(&mut s, NOW);
    assert_eq!(s.tasks["app-web-1.1"].desired, DesiredState::Shutdown);
    run_all(&mut s);
    assert_eq!(plan(&s, NOW + 3_600_000), Plan::default());
    // Started again: a new task.
    rec.stopped.clear();
    s.stacks.insert("app".into(), rec);
    assert_eq!(created(&settle(&mut s, NOW)), ["app-web-1.2"]);
}

#[test]
fn history_is_trimmed_to_the_newest_ended_tasks() {
    let mut svc = service("crash:1");
    svc.restart = Some(Restart::Always);
    svc.deploy = Some(Deploy {
        restart_policy: Some(spec::model::RestartPolicy {
            delay: Some(Duration::from_millis(1)),
            ..Default::default()
        }),
        ..Deploy::default()
    });
    let mut s = state(&[stack(&[("crash", svc)])]);
    settle(&mut s, NOW);
    let mut now = NOW;
    for generation in 1..=5 {
        run_all(&mut s);
        exit(&mut s, &format!("app-crash-1.{generation}"), 1, now);
        now += 10;
        settle(&mut s, now);
        run_all(&mut s);
        settle(&mut s, now);
    }
    let kept: Vec<&String> = s.tasks.keys().collect();
    assert_eq!(kept, ["app-crash-1.4", "app-crash-1.5", "app-crash-1.6"]);
}

#[test]
fn down_stops_dependents_before_what_they_depend_on() {
    let dep = |on: &str| {
        let mut s = service("x:1");
        s.depends_on.insert(on.into(), Dependency::default());
        s
    };
    let mut web = dep("api");
    web.depends_on.insert("cache".into(), Dependency::default());
    let rec = stack(&[
        ("web", web),
        ("api", dep("db")),
        ("cache", service("redis:7")),
        ("db", service("db:1")),
        ("lone", service("x:1")),
    ]);
    assert_eq!(
        manager::orchestrator::stop_waves(&rec.stack),
        vec![vec!["lone", "web"], vec!["api", "cache"], vec!["db"]]
    );
}

#[test]
fn depends_on_restart_true_recreates_the_dependent_when_its_dependency_changes() {
    let mut app = service("app:1");
    app.depends_on.insert(
        "db".into(),
        Dependency {
            condition: Condition::ServiceStarted,
            restart: true,
            required: true,
        },
    );
    let mut plain = service("plain:1");
    plain.depends_on.insert("db".into(), Dependency::default());
    let mut s = state(&[stack(&[
        ("db", service("db:1")),
        ("app", app.clone()),
        ("plain", plain.clone()),
    ])]);
    for _ in 0..3 {
        settle(&mut s, NOW);
        run_all(&mut s);
    }
    assert_eq!(s.tasks.len(), 3);
    // Nothing moves while nothing changes.
    assert_eq!(plan(&s, NOW), Plan::default());
    // db is updated: db and app are recreated, plain is left alone.
    s.stacks.insert(
        "app".into(),
        stack(&[("db", service("db:2")), ("app", app), ("plain", plain)]),
    );
    for _ in 0..4 {
        settle(&mut s, NOW);
        run_all(&mut s);
    }
    let live: Vec<&String> = s
        .tasks
        .values()
        .filter(|t| t.desired == DesiredState::Running)
        .map(|t| &t.id)
        .collect();
    assert_eq!(live, ["app-app-1.2", "app-db-1.2", "app-plain-1.1"]);
    // An explicit restart of db (berth restart db) does the same.
    s.stacks
        .get_mut("app")
        .unwrap()
        .restarted
        .insert("db".into(), 1);
    for _ in 0..4 {
        settle(&mut s, NOW);
        run_all(&mut s);
    }
    assert!(
        s.tasks.contains_key("app-app-1.3"),
        "{:?}",
        s.tasks.keys().collect::<Vec<_>>()
    );
}

#[test]
fn the_restart_window_decides_when_attempts_start_over() {
    let mut svc = service("job:1");
    svc.deploy = Some(Deploy {
        restart_policy: Some(spec::model::RestartPolicy {
            condition: spec::model::RestartCondition::OnFailure,
            max_attempts: Some(1),
            window: Some(Duration::from_secs(60)),
            delay: Some(Duration::from_millis(1)),
        }),
        ..Deploy::default()
    });
    let mut s = state(&[stack(&[("job", svc)])]);
    settle(&mut s, NOW);
    run_all(&mut s);
    // Ran 30 s (inside the window): the one attempt is used.
    exit(&mut s, "app-job-1.1", 1, NOW + 30_000);
    settle(&mut s, NOW + 30_010);
    assert_eq!(s.tasks["app-job-1.2"].restarts, 1);
    run_all_at(&mut s, NOW + 30_010);
    // Ran 90 s (past the window): a success as far as attempts go, so it restarts.
    exit(&mut s, "app-job-1.2", 1, NOW + 120_010);
    settle(&mut s, NOW + 120_020);
    assert_eq!(s.tasks["app-job-1.3"].restarts, 0);
    run_all_at(&mut s, NOW + 120_020);
    // A quick failure now is the one allowed attempt; the next is not restarted.
    exit(&mut s, "app-job-1.3", 1, NOW + 121_000);
    settle(&mut s, NOW + 121_010);
    run_all_at(&mut s, NOW + 121_010);
    exit(&mut s, "app-job-1.4", 1, NOW + 122_000);
    let later = plan(&s, NOW + 200_000);
    assert!(created(&later.changes).is_empty(), "{later:?}");
    assert_eq!(later.wake_at, None);
}

/// A changed `security_opt`, `group_add` or `oom_score_adj` changes the spec hash, so
/// the orchestrator recreates the service's containers with it.
#[test]
fn security_options_groups_and_oom_score_are_part_of_the_spec_hash() {
    use spec::security::SecurityOpt;
    let record = stack(&[("web", service("web:1"))]);
    let base = service("web:1");
    let variants = [
        Service {
            security_opt: vec![SecurityOpt::NoNewPrivileges(true)],
            ..base.clone()
        },
        Service {
            security_opt: vec![SecurityOpt::SeccompUnconfined],
            ..base.clone()
        },
        Service {
            group_add: vec!["wheel".into()],
            ..base.clone()
        },
        Service {
            oom_score_adj: Some(500),
            ..base.clone()
        },
    ];
    let mut hashes = vec![spec_hash(&record, &base)];
    hashes.extend(variants.iter().map(|s| spec_hash(&record, s)));
    let mut unique = hashes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), hashes.len(), "{hashes:?}");
}

//! `up`'s progress as a table of cases: a deployed stack and what its containers did,
//! in; where each slot stands, out. The tasks are made by the orchestrator itself
//! (`settle`), so a case also checks that progress and the orchestrator agree on which
//! task is a slot's current one. Then the long poll over a real store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use manager::orchestrator::reconcile;
use manager::progress::{answer, progress, ContainerProgress, ProgressQuery, SlotState, LONG_POLL};
use manager::state::model::State;
use manager::state::store::Store;
use spec::model::{Condition, Dependency, Healthcheck, Service, Stack};
use spec::task::{Health, StackRecord, Task, TaskState, TaskStatus};

const NOW: u64 = 1_000_000;

fn service(image: &str) -> Service {
    Service {
        image: Some(image.into()),
        ..Service::default()
    }
}

fn checked(image: &str) -> Service {
    Service {
        healthcheck: Some(Healthcheck {
            test: vec!["CMD".into(), "true".into()],
            ..Healthcheck::default()
        }),
        ..service(image)
    }
}

fn depends(image: &str, on: &str, condition: Condition) -> Service {
    let mut s = service(image);
    s.depends_on.insert(
        on.into(),
        Dependency {
            condition,
            restart: false,
            required: true,
        },
    );
    s
}

fn stack(name: &str, services: &[(&str, Service)]) -> StackRecord {
    StackRecord::new(Stack::of_services(
        name,
        services.iter().map(|(k, s)| (k.to_string(), s.clone())),
    ))
}

/// The store's state after the orchestrator has created what it can.
fn deployed(records: &[StackRecord]) -> State {
    let mut s = State {
        version: 7,
        stacks: records
            .iter()
            .map(|r| (r.stack.name.clone(), r.clone()))
            .collect(),
        ..State::default()
    };
    settle(&mut s);
    s
}

fn settle(s: &mut State) {
    for _ in 0..10 {
        let tasks: Vec<Task> = s.tasks.values().cloned().collect();
        let plan = reconcile(&s.stacks, &tasks, NOW);
        if plan.changes.is_empty() {
            return;
        }
        manager::orchestrator::run::apply(s, &plan);
    }
    panic!("the orchestrator does not settle");
}

/// The agent's side: the task `id` reports `status`.
fn report(s: &mut State, id: &str, status: TaskStatus) {
    s.tasks.get_mut(id).expect("task").status = status;
}

fn running() -> TaskStatus {
    TaskStatus {
        state: Some(TaskState::Running),
        started_at: Some(NOW),
        ..TaskStatus::default()
    }
}

fn health(h: Health) -> TaskStatus {
    TaskStatus {
        health: h,
        ..running()
    }
}

fn exited(code: i32) -> TaskStatus {
    TaskStatus {
        state: Some(if code == 0 {
            TaskState::Complete
        } else {
            TaskState::Failed
        }),
        exit_code: Some(code),
        finished_at: Some(NOW),
        ..running()
    }
}

fn refused(why: &str) -> TaskStatus {
    TaskStatus {
        state: Some(TaskState::Rejected),
        message: why.into(),
        ..TaskStatus::default()
    }
}

struct Case {
    name: &'static str,
    state: State,
    wait: bool,
    expect: Vec<(&'static str, SlotState)>,
}

fn check(case: Case) {
    let p = progress(&case.state, "app", case.wait);
    assert_eq!(p.version, case.state.version, "{}: version", case.name);
    assert!(p.deployed, "{}: deployed", case.name);
    let expect: Vec<ContainerProgress> = case
        .expect
        .into_iter()
        .map(|(name, state)| ContainerProgress {
            name: name.into(),
            // `app-<service>-<slot>`
            service: name
                .strip_prefix("app-")
                .and_then(|s| s.rsplit_once('-'))
                .map(|(service, _)| service.to_string())
                .expect("a container name of app"),
            state,
        })
        .collect();
    assert_eq!(p.containers, expect, "{}", case.name);
}

fn could_not_start(message: &str) -> SlotState {
    SlotState::CouldNotStart {
        message: message.into(),
    }
}

#[test]
fn each_slot_says_where_it_stands() {
    let cases = vec![
        Case {
            name: "made, not started yet",
            state: deployed(&[stack("app", &[("web", service("web:1"))])]),
            wait: false,
            expect: vec![("app-web-1", SlotState::Starting)],
        },
        Case {
            name: "a slot per replica, each on its own",
            state: {
                let mut r = stack("app", &[("web", service("web:1"))]);
                r.scale.insert("web".into(), 3);
                let mut s = deployed(&[r]);
                report(&mut s, "app-web-1.1", running());
                report(&mut s, "app-web-3.1", refused("port 80 is in use"));
                s
            },
            wait: false,
            expect: vec![
                ("app-web-1", SlotState::Started),
                ("app-web-2", SlotState::Starting),
                ("app-web-3", could_not_start("port 80 is in use")),
            ],
        },
        Case {
            name: "failed with no start time: it never started",
            state: {
                let mut s = deployed(&[stack("app", &[("web", service("web:1"))])]);
                report(
                    &mut s,
                    "app-web-1.1",
                    TaskStatus {
                        state: Some(TaskState::Failed),
                        message: "exec: \"nginx\": not found".into(),
                        ..TaskStatus::default()
                    },
                );
                s
            },
            wait: false,
            expect: vec![("app-web-1", could_not_start("exec: \"nginx\": not found"))],
        },
        Case {
            name: "a one-shot that ran and completed counts as started",
            state: {
                let mut s = deployed(&[stack("app", &[("job", service("job:1"))])]);
                report(&mut s, "app-job-1.1", exited(0));
                s
            },
            wait: false,
            expect: vec![("app-job-1", SlotState::Started)],
        },
        Case {
            name: "without --wait, a healthcheck is not waited for",
            state: {
                let mut s = deployed(&[stack("app", &[("db", checked("db:1"))])]);
                report(&mut s, "app-db-1.1", health(Health::Starting));
                s
            },
            wait: false,
            expect: vec![("app-db-1", SlotState::Started)],
        },
        Case {
            name: "with --wait, health decides; a service without a check is started",
            state: {
                let mut r = stack(
                    "app",
                    &[
                        ("db", checked("db:1")),
                        ("cache", checked("cache:1")),
                        ("sick", checked("sick:1")),
                        ("web", service("web:1")),
                    ],
                );
                r.scale.insert("db".into(), 2);
                let mut s = deployed(&[r]);
                report(&mut s, "app-db-1.1", health(Health::Healthy));
                report(&mut s, "app-db-2.1", health(Health::Starting));
                report(&mut s, "app-cache-1.1", health(Health::None));
                report(&mut s, "app-sick-1.1", health(Health::Unhealthy));
                report(&mut s, "app-web-1.1", running());
                s
            },
            wait: true,
            expect: vec![
                ("app-cache-1", SlotState::Pending),
                ("app-db-1", SlotState::Healthy),
                ("app-db-2", SlotState::Pending),
                ("app-sick-1", SlotState::Unhealthy),
                ("app-web-1", SlotState::Started),
            ],
        },
        Case {
            name: "a disabled healthcheck or test NONE is not waited for",
            state: {
                let mut off = checked("a:1");
                if let Some(h) = off.healthcheck.as_mut() {
                    h.disable = true;
                }
                let mut none = checked("b:1");
                if let Some(h) = none.healthcheck.as_mut() {
                    h.test = vec!["NONE".into()];
                }
                let mut s = deployed(&[stack("app", &[("a", off), ("b", none)])]);
                report(&mut s, "app-a-1.1", running());
                report(&mut s, "app-b-1.1", running());
                s
            },
            wait: true,
            expect: vec![
                ("app-a-1", SlotState::Started),
                ("app-b-1", SlotState::Started),
            ],
        },
        Case {
            name: "not created while a dependency is not met",
            state: deployed(&[stack(
                "app",
                &[
                    ("db", service("db:1")),
                    ("web", depends("web:1", "db", Condition::ServiceStarted)),
                ],
            )]),
            wait: false,
            expect: vec![
                ("app-db-1", SlotState::Starting),
                ("app-web-1", SlotState::Waiting),
            ],
        },
        Case {
            name: "a dependency that had to complete and failed: never created",
            state: {
                let mut s = deployed(&[stack(
                    "app",
                    &[
                        ("migrate", service("migrate:1")),
                        (
                            "web",
                            depends("web:1", "migrate", Condition::ServiceCompletedSuccessfully),
                        ),
                    ],
                )]);
                report(&mut s, "app-migrate-1.1", exited(3));
                s
            },
            wait: false,
            expect: vec![
                ("app-migrate-1", SlotState::Started),
                (
                    "app-web-1",
                    SlotState::DependencyFailed {
                        dependency: "migrate".into(),
                    },
                ),
            ],
        },
        Case {
            name: "an old definition's task is not the slot's: the new one waits to be made",
            state: {
                let mut s = deployed(&[stack("app", &[("web", service("web:1"))])]);
                report(&mut s, "app-web-1.1", running());
                s.stacks
                    .insert("app".into(), stack("app", &[("web", service("web:2"))]));
                settle(&mut s);
                s
            },
            wait: false,
            expect: vec![("app-web-1", SlotState::Waiting)],
        },
        Case {
            name: "stopped services are not waited for",
            state: {
                let mut r = stack("app", &[("web", service("web:1")), ("db", service("db:1"))]);
                r.stopped.push("db".into());
                deployed(&[r])
            },
            wait: false,
            expect: vec![("app-web-1", SlotState::Starting)],
        },
        Case {
            name: "other stacks' tasks do not count",
            state: {
                let mut s = deployed(&[
                    stack("app", &[("web", service("web:1"))]),
                    stack("app-2", &[("web", service("web:1"))]),
                ]);
                report(&mut s, "app-2-web-1.1", running());
                s
            },
            wait: false,
            expect: vec![("app-web-1", SlotState::Starting)],
        },
    ];
    for case in cases {
        check(case);
    }
}

#[test]
fn a_stack_that_is_not_deployed_says_so() {
    let s = deployed(&[stack("other", &[("web", service("web:1"))])]);
    let p = progress(&s, "app", false);
    assert!(!p.deployed);
    assert!(p.containers.is_empty());
    assert_eq!(p.version, 7);
}

#[test]
fn a_thousand_task_stack_is_answered_for_itself_only() {
    let mut big = stack("big", &[("web", service("web:1"))]);
    big.scale.insert("web".into(), 1000);
    let mut s = deployed(&[big, stack("app", &[("web", service("web:1"))])]);
    for t in s.tasks.values_mut() {
        t.status = running();
    }
    let p = progress(&s, "app", true);
    assert_eq!(p.containers.len(), 1);
    let p = progress(&s, "big", true);
    assert_eq!(p.containers.len(), 1000);
    assert!(p.containers.iter().all(|c| c.state == SlotState::Started));
    assert_eq!(p.containers[999].name, "big-web-1000");
}

#[test]
fn pending_and_live_are_what_up_needs() {
    let table = [
        (SlotState::Waiting, true, false),
        (
            SlotState::DependencyFailed {
                dependency: "x".into(),
            },
            false,
            false,
        ),
        (SlotState::Starting, true, true),
        (SlotState::Pending, true, true),
        (SlotState::Started, false, true),
        (SlotState::Healthy, false, true),
        (SlotState::Unhealthy, false, true),
        (could_not_start("no"), false, false),
    ];
    for (state, pending, live) in table {
        assert_eq!(state.is_pending(), pending, "{state:?} pending");
        assert_eq!(state.has_live_container(), live, "{state:?} live");
    }
}

fn add_stack(store: &Store, name: &str) {
    store
        .update(|s| {
            s.stacks
                .insert(name.to_string(), stack(name, &[("web", service("web:1"))]));
            Ok(())
        })
        .expect("add a stack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_poll_answers_at_a_change_or_after_a_second() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(tmp.path()).expect("open the store"));
    let writer = store.clone();
    tokio::task::spawn_blocking(move || add_stack(&writer, "app"))
        .await
        .expect("join");
    let now = store.read(|s| s.version);
    let query = |after| ProgressQuery {
        wait: false,
        after,
        max_wait_ms: None,
    };

    // Without `after`: at once.
    let started = Instant::now();
    let p = answer(&store, "app", query(None)).await;
    assert_eq!(p.version, now);
    assert!(started.elapsed() < Duration::from_millis(500));

    // Behind the store: at once.
    let started = Instant::now();
    let p = answer(&store, "app", query(Some(now - 1))).await;
    assert_eq!(p.version, now);
    assert!(started.elapsed() < Duration::from_millis(500));

    // Up to date and nothing changes: the same version, after the long poll.
    let started = Instant::now();
    let p = answer(&store, "app", query(Some(now))).await;
    assert_eq!(p.version, now);
    assert!(started.elapsed() >= LONG_POLL - Duration::from_millis(50));

    // Up to date, nothing changes, and the caller's deadline is near: by then.
    let started = Instant::now();
    let p = answer(
        &store,
        "app",
        ProgressQuery {
            max_wait_ms: Some(100),
            ..query(Some(now))
        },
    )
    .await;
    assert_eq!(p.version, now);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(90) && waited < LONG_POLL - Duration::from_millis(300),
        "{waited:?}"
    );

    // Up to date, then a change: answered when it comes, with it.
    let writer = store.clone();
    let change = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(200));
        add_stack(&writer, "other");
    });
    let started = Instant::now();
    let p = answer(&store, "app", query(Some(now))).await;
    assert!(p.version > now, "{p:?}");
    assert!(started.elapsed() < LONG_POLL, "{:?}", started.elapsed());
    change.await.expect("join");
}

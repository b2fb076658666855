//! The stack verbs as tables of cases (`manager::stacks`): a state and a typed command
//! in, the changed state (or a refusal) out; and `down` over a real single-host store.

use manager::stacks::{self, Down, UpRequest};
use manager::state::model::State;
use manager::state::store::{Store, StoreError};
use spec::model::{Service, Stack};
use spec::task::{DesiredState, StackRecord, Task, TaskState, TaskStatus};

fn record(name: &str, services: &[&str]) -> StackRecord {
    StackRecord::new(Stack::of_services(
        name,
        services.iter().map(|s| {
            (
                s.to_string(),
                Service {
                    image: Some("busybox".into()),
                    ..Service::default()
                },
            )
        }),
    ))
}

fn task(service: &str, desired: DesiredState, state: TaskState) -> Task {
    let t: Task = serde_json::from_value(serde_json::json!({
        "id": format!("app-{service}-1.1"), "stack": "app", "service": service, "slot": 1,
        "generation": 1, "spec_hash": "h", "desired": "running", "created_at": 0,
    }))
    .expect("task");
    Task {
        desired,
        status: TaskStatus {
            state: Some(state),
            started_at: Some(1),
            ..Default::default()
        },
        ..t
    }
}

/// `app` with `web` and `db`, each with a running task.
fn deployed() -> State {
    let mut s = State::default();
    s.stacks.insert("app".into(), record("app", &["web", "db"]));
    for t in [
        task("web", DesiredState::Running, TaskState::Running),
        task("db", DesiredState::Running, TaskState::Running),
    ] {
        s.tasks.insert(t.id.clone(), t);
    }
    s
}

fn up(record: StackRecord) -> UpRequest {
    UpRequest {
        record,
        remove_orphans: false,
        force_recreate: false,
        no_recreate: false,
    }
}

#[test]
fn up_keeps_or_removes_the_services_a_new_file_drops() {
    let mut s = deployed();
    let resp = stacks::up(&mut s, "app", &up(record("app", &["web"])));
    assert_eq!(resp.orphans, ["db"]);
    assert!(resp.removed_orphans.is_empty());
    assert!(
        s.stacks["app"].orphans.contains_key("db"),
        "kept as an orphan"
    );

    let mut s = deployed();
    let req = UpRequest {
        remove_orphans: true,
        ..up(record("app", &["web"]))
    };
    let resp = stacks::up(&mut s, "app", &req);
    assert_eq!(
        (resp.orphans, resp.removed_orphans),
        (vec!["db".into()], vec!["db".into()])
    );
    assert!(s.stacks["app"].orphans.is_empty());
}

#[test]
fn up_recreates_when_forced_and_starts_what_stop_stopped() {
    let mut s = deployed();
    s.stacks.get_mut("app").unwrap().stopped = vec!["db".into()];
    let req = UpRequest {
        force_recreate: true,
        ..up(record("app", &["web", "db"]))
    };
    stacks::up(&mut s, "app", &req);
    assert!(s.stacks["app"].stopped.is_empty());
    assert!(s.tasks.values().all(|t| t.desired == DesiredState::Remove));
    // Without force, running containers are left to the orchestrator.
    let mut s = deployed();
    stacks::up(&mut s, "app", &up(record("app", &["web", "db"])));
    assert!(s.tasks.values().all(|t| t.desired == DesiredState::Running));
}

#[test]
fn service_verbs() {
    /// (verb, services asked, the services chosen or a part of the refusal, what the
    /// state must look like after).
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        Result<&'a [&'a str], &'a str>,
        fn(&State),
    );
    let cases: Vec<Case> = vec![
        ("stop", &["web"], Ok(&["web"]), |s| {
            assert_eq!(s.stacks["app"].stopped, ["web"]);
            assert_eq!(s.tasks["app-web-1.1"].desired, DesiredState::Shutdown);
            assert_eq!(s.tasks["app-db-1.1"].desired, DesiredState::Running);
        }),
        ("restart", &[], Ok(&["db", "web"]), |s| {
            assert_eq!(s.stacks["app"].restarted["web"], 1);
            assert!(s.tasks.values().all(|t| t.desired == DesiredState::Remove));
        }),
        // rm removes stopped containers only.
        ("rm", &[], Ok(&["db", "web"]), |s| {
            assert!(s.tasks.values().all(|t| t.desired == DesiredState::Running));
        }),
        ("kill", &["db"], Ok(&["db"]), |s| assert_eq!(*s, deployed())),
        ("start", &["web"], Ok(&["web"]), |s| {
            assert_eq!(*s, deployed())
        }),
        ("stop", &["cache"], Err("has no service \"cache\""), |_| {}),
        ("explode", &[], Err("unknown verb \"explode\""), |_| {}),
    ];
    for (verb, services, want, check) in cases {
        let mut s = deployed();
        let services: Vec<String> = services.iter().map(|x| x.to_string()).collect();
        let got = stacks::services(&mut s, "app", verb, &services);
        match (got, want) {
            (Ok(chosen), Ok(want)) => assert_eq!(chosen, want, "{verb}"),
            (Err(StoreError::Rejected(m)), Err(want)) => assert!(m.contains(want), "{verb}: {m}"),
            (got, want) => panic!("{verb}: got {got:?}, want {want:?}"),
        }
        check(&s);
    }
    let mut s = State::default();
    let err = stacks::services(&mut s, "app", "stop", &[]).unwrap_err();
    assert!(err.to_string().contains("no stack named \"app\""), "{err}");
}

#[test]
fn kill_and_pause_name_their_containers() {
    let mut s = deployed();
    s.tasks.get_mut("app-db-1.1").unwrap().status.state = Some(TaskState::Starting);
    let all = ["web".to_string(), "db".to_string()];
    assert_eq!(stacks::running(&s, "app", &all), ["app-web-1.1"]);
    assert_eq!(stacks::live(&s, "app", &all), ["app-db-1.1", "app-web-1.1"]);
    s.tasks.get_mut("app-web-1.1").unwrap().desired = DesiredState::Shutdown;
    assert_eq!(stacks::live(&s, "app", &all), ["app-db-1.1"]);
}

#[test]
fn down_stops_in_waves_then_removes_everything() {
    let mut s = deployed();
    s.stacks
        .get_mut("app")
        .unwrap()
        .oneoffs
        .insert("web-run-1".into(), Service::default());
    stacks::stop_wave(&mut s, "app", &["web".into()], Some(3_000));
    let r = &s.stacks["app"];
    assert_eq!(r.stopped, ["web"]);
    assert!(r.oneoffs.is_empty(), "one-offs go with the first wave");
    assert!(s.tasks.values().all(|t| t.stop_grace_ms == Some(3_000)));
    let down = stacks::remove(&mut s, "app", None);
    assert_eq!(down.containers, ["app-db-1", "app-web-1"]);
    assert!(down.record.is_some() && s.stacks.is_empty());
    assert!(s.tasks.values().all(|t| t.desired == DesiredState::Remove));
    // Again: only the containers are left to go.
    let again = stacks::remove(&mut s, "app", None);
    assert_eq!((again.record, again.containers.len()), (None, 2));
}

#[test]
fn one_offs_are_recorded_and_removed() {
    let mut s = deployed();
    let req = stacks::RunRequest {
        service: "web".into(),
        command: Some(vec!["sh".into()]),
        env: vec!["A=1".into()],
        ..Default::default()
    };
    assert_eq!(
        stacks::run(&mut s, "app", "web-run-1", &req).unwrap(),
        "web-run-1"
    );
    let one = &s.stacks["app"].oneoffs["web-run-1"];
    assert_eq!(one.command.as_deref(), Some(&["sh".to_string()][..]));
    assert_eq!(one.environment["A"].as_deref(), Some("1"));
    assert!(one.ports.is_empty() && one.restart.is_none());
    assert!(stacks::remove_run(&mut s, "app", "web-run-1"));
    assert!(!stacks::remove_run(&mut s, "app", "web-run-1"));
    let bad = stacks::RunRequest {
        service: "cache".into(),
        ..Default::default()
    };
    assert!(stacks::run(&mut s, "app", "k", &bad).is_err());
}

/// `down` on a real store: a stack without containers goes at once, and a second
/// `down` finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_over_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .update(|s| {
            s.stacks.insert("app".into(), record("app", &["web", "db"]));
            Ok(())
        })
        .unwrap();
    let down = stacks::down(&store, "app", Some(1_000)).await.unwrap();
    let Some(Down {
        record: Some(record),
        containers,
    }) = down
    else {
        panic!("nothing taken down: {down:?}");
    };
    assert!(containers.is_empty(), "{containers:?}");
    let mut stopped = record.stopped.clone();
    stopped.sort();
    assert_eq!(stopped, ["db", "web"], "every service stopped in some wave");
    assert!(store.read(|s| s.stacks.is_empty()));
    assert_eq!(stacks::down(&store, "app", None).await.unwrap(), None);
}

//! The agent loop as a table of cases, over a fake store (assignments in, reports
//! out, merged as the store merges them) and fake containers that record what they
//! were asked. Each case runs the loop until nothing changes (`settle`) and checks
//! the level-triggered rule: a pass over the settled state changes nothing more.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use agent::worker::tasks::Pass;
use agent::worker::{
    recover, Assignments, Changes, Containers, HealthChecks, StatusReporter, TaskLoop, View,
};
use spec::model::{Healthcheck, Service, Stack};
use spec::task::{DesiredState, Health, StackRecord, Task, TaskState, TaskStatus};

// ---- the fake store: a view in, reports out ----

#[derive(Default)]
struct Recorded {
    tasks: BTreeMap<String, Task>,
    stacks: BTreeMap<String, StackRecord>,
    /// Every batch reported, in order.
    batches: Vec<Vec<(String, TaskStatus)>>,
    health: Vec<Vec<(String, Health)>>,
}

#[derive(Clone)]
struct FakeStore {
    inner: Arc<Mutex<Recorded>>,
    version: Arc<tokio::sync::watch::Sender<u64>>,
    me: Option<String>,
}

impl FakeStore {
    fn new(me: Option<&str>, stacks: &[StackRecord], tasks: &[Task]) -> FakeStore {
        let recorded = Recorded {
            tasks: tasks.iter().map(|t| (t.id.clone(), t.clone())).collect(),
            stacks: stacks
                .iter()
                .map(|r| (r.stack.name.clone(), r.clone()))
                .collect(),
            ..Recorded::default()
        };
        FakeStore {
            inner: Arc::new(Mutex::new(recorded)),
            version: Arc::new(tokio::sync::watch::channel(0).0),
            me: me.map(str::to_string),
        }
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().expect("the fake store's lock")
    }

    fn task(&self, id: &str) -> Task {
        self.recorded().tasks[id].clone()
    }

    /// Every state reported for `id`, in order.
    fn states(&self, id: &str) -> Vec<TaskState> {
        self.reports(id).iter().map(TaskStatus::state).collect()
    }

    fn reports(&self, id: &str) -> Vec<TaskStatus> {
        let inner = self.recorded();
        inner
            .batches
            .iter()
            .flatten()
            .filter(|(i, _)| i == id)
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn batches(&self) -> usize {
        self.recorded().batches.len()
    }

    fn health_reports(&self) -> Vec<(String, Health)> {
        self.recorded().health.concat()
    }
}

impl Assignments for FakeStore {
    fn view(&self) -> View {
        let inner = self.recorded();
        View::for_node(
            inner.tasks.clone(),
            inner.stacks.clone(),
            self.me.as_deref(),
        )
    }

    fn changes(&self) -> Changes {
        self.version.subscribe()
    }
}

impl StatusReporter for FakeStore {
    type Error = std::convert::Infallible;

    fn report(&self, statuses: &[(String, TaskStatus)]) -> Result<(), Self::Error> {
        let mut inner = self.recorded();
        inner.batches.push(statuses.to_vec());
        for (id, status) in statuses {
            if let Some(t) = inner.tasks.get_mut(id) {
                t.status = t.status.merge_report(status);
            }
        }
        self.version.send_modify(|v| *v += 1);
        Ok(())
    }

    fn report_health(&self, changes: &[(String, Health)]) -> Result<(), Self::Error> {
        let mut inner = self.recorded();
        inner.health.push(changes.to_vec());
        for (id, health) in changes {
            if let Some(t) = inner.tasks.get_mut(id) {
                t.status.merge_health(*health, spec::task::now_ms());
            }
        }
        self.version.send_modify(|v| *v += 1);
        Ok(())
    }
}

// ---- fake containers ----

/// A container as the fake keeps it: running, or exited with a code.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Run {
    Running,
    Exited(i32),
}

#[derive(Default)]
struct Node {
    containers: BTreeMap<String, Run>,
    /// Services whose containers cannot start, with why.
    refuse: BTreeMap<String, String>,
    /// What each container's health probes answer (healthy when not given).
    probes: BTreeMap<String, bool>,
    /// Every call, as "<verb> <id>".
    calls: Vec<String>,
    healthy: BTreeMap<String, bool>,
    /// While closed, stops wait.
    gate_closed: bool,
}

#[derive(Clone, Default)]
struct FakeContainers {
    node: Arc<Mutex<Node>>,
    gate: Arc<Condvar>,
}

impl FakeContainers {
    fn with(containers: &[(&str, Run)]) -> FakeContainers {
        let fake = FakeContainers::default();
        fake.fake().containers = containers
            .iter()
            .map(|(id, r)| (id.to_string(), *r))
            .collect();
        fake
    }

    fn fake(&self) -> std::sync::MutexGuard<'_, Node> {
        self.node.lock().expect("the fake node's lock")
    }

    fn calls(&self) -> Vec<String> {
        self.fake().calls.clone()
    }

    fn container(&self, id: &str) -> Option<Run> {
        self.fake().containers.get(id).copied()
    }

    fn call(&self, verb: &str, id: &str) {
        self.fake().calls.push(format!("{verb} {id}"));
    }

    fn set_gate(&self, closed: bool) {
        self.fake().gate_closed = closed;
        self.gate.notify_all();
    }
}

struct OpenOnDrop(FakeContainers);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set_gate(false);
    }
}

impl Containers for FakeContainers {
    fn start(
        &self,
        task: &Task,
        _stack: &Stack,
        service: &Service,
        _env: &BTreeMap<String, String>,
        _data: &BTreeMap<String, String>,
    ) -> TaskStatus {
        self.call("start", &task.id);
        let mut node = self.fake();
        if let Some(why) = node.refuse.get(&task.service) {
            // As the executor reports a start that failed: no start time.
            return TaskStatus {
                state: Some(TaskState::Rejected),
                message: why.clone(),
                started_at: None,
                finished_at: Some(2),
                ..task.status.clone()
            };
        }
        node.containers.insert(task.id.clone(), Run::Running);
        TaskStatus {
            state: Some(TaskState::Running),
            started_at: Some(1),
            pid: Some(100),
            health: if service.healthcheck.is_some() {
                Health::Starting
            } else {
                Health::None
            },
            ..task.status.clone()
        }
    }

    fn stop(&self, task: &Task, _: Option<&Service>, _: Option<Duration>) -> TaskStatus {
        self.call("stop", &task.id);
        let mut node = self.fake();
        while node.gate_closed {
            node = self.gate.wait(node).expect("the fake node's lock");
        }
        if let Some(run) = node.containers.get_mut(&task.id) {
            *run = Run::Exited(143);
        }
        TaskStatus {
            state: Some(task.status.state().advance(TaskState::Shutdown)),
            pid: None,
            ..task.status.clone()
        }
    }

    fn remove(&self, task: &Task, _: Option<&Service>, _: Option<Duration>) -> TaskStatus {
        self.call("remove", &task.id);
        self.fake().containers.remove(&task.id);
        TaskStatus {
            state: Some(TaskState::Removed),
            ..task.status.clone()
        }
    }

    fn observe(&self, task: &Task) -> Option<TaskStatus> {
        let run = self.container(&task.id)?;
        let mut status = task.status.clone();
        match run {
            Run::Running => status.state = Some(TaskState::Running),
            Run::Exited(code) => {
                status.state = Some(match (task.desired, code) {
                    (DesiredState::Running, 0) => TaskState::Complete,
                    (DesiredState::Running, _) => TaskState::Failed,
                    _ => TaskState::Shutdown,
                });
                status.exit_code = Some(code);
                status.pid = None;
                status.finished_at.get_or_insert(3);
                status.message = format!("exited with code {code}");
            }
        }
        Some(status)
    }

    fn release(&self, id: &str) {
        self.call("release", id);
    }

    fn healthcheck(&self, service: &Service) -> Option<Healthcheck> {
        service.healthcheck.clone()
    }

    fn probe(&self, id: &str, _command: &[String], _timeout: Duration) -> bool {
        self.fake().probes.get(id).copied().unwrap_or(true)
    }

    fn set_healthy(&self, id: &str, healthy: bool) {
        self.fake().healthy.insert(id.to_string(), healthy);
    }

    fn leave(&self, id: &str) {
        self.call("leave", id);
    }

    fn list(&self) -> Vec<String> {
        self.fake().containers.keys().cloned().collect()
    }

    fn remove_stray(&self, id: &str) {
        self.call("remove_stray", id);
        self.fake().containers.remove(id);
    }
}

// ---- stacks and tasks ----

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

fn task(service: &str, desired: DesiredState, state: Option<TaskState>) -> Task {
    Task {
        id: Task::make_id("app", service, 1, 1),
        stack: "app".into(),
        service: service.into(),
        slot: 1,
        generation: 1,
        spec_hash: String::new(),
        desired,
        status: TaskStatus {
            state,
            ..TaskStatus::default()
        },
        created_at: 0,
        restarts: 0,
        stop_grace_ms: None,
        deps_seen: BTreeMap::new(),
        node: None,
        for_node: None,
        generic_resources: Default::default(),
    }
}

fn running(service: &str) -> Task {
    let mut t = task(service, DesiredState::Running, Some(TaskState::Running));
    t.status.started_at = Some(1);
    t.status.pid = Some(100);
    t
}

type Loop = TaskLoop<FakeStore, FakeStore, FakeContainers>;

fn agent_loop(store: &FakeStore, containers: &FakeContainers) -> Loop {
    TaskLoop::new(store.clone(), store.clone(), containers.clone())
}

/// Runs passes (each observing) and waits for their actions, until a pass does
/// nothing; then checks that another pass changes nothing either.
async fn settle(lp: &mut Loop, store: &FakeStore, containers: &FakeContainers) {
    for _ in 0..10 {
        let pass = lp.pass(true);
        while lp.busy() > 0 {
            lp.finished().await;
        }
        if pass == Pass::default() {
            // A release runs on a blocking thread the loop does not wait for (it
            // is fire-and-forget by design), so it may land at any time: the
            // comparison leaves it out; the tests that care wait for it.
            let acting = || -> Vec<String> {
                containers
                    .calls()
                    .into_iter()
                    .filter(|c| !c.starts_with("release "))
                    .collect()
            };
            let (calls, batches) = (acting(), store.batches());
            assert_eq!(lp.pass(true), Pass::default(), "a settled loop acts again");
            assert_eq!(lp.busy(), 0);
            assert_eq!(acting(), calls, "a settled loop acts again");
            assert_eq!(store.batches(), batches, "a settled loop reports again");
            return;
        }
    }
    panic!("the agent loop does not settle: {:?}", containers.calls());
}

// ---- the cases ----

#[tokio::test]
async fn a_new_task_is_started_and_reported_preparing_then_running() {
    let t = task("web", DesiredState::Running, None);
    let store = FakeStore::new(
        None,
        &[stack(&[("web", service("web:1"))])],
        std::slice::from_ref(&t),
    );
    let containers = FakeContainers::default();
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    assert_eq!(containers.calls(), [format!("start {}", t.id)]);
    assert_eq!(
        store.states(&t.id),
        [TaskState::Preparing, TaskState::Running]
    );
    let stored = store.task(&t.id);
    assert_eq!(stored.status.state(), TaskState::Running);
    assert_eq!(stored.status.pid, Some(100));
    assert_eq!(containers.container(&t.id), Some(Run::Running));
}

#[tokio::test]
async fn a_start_that_fails_is_reported_as_never_started_with_its_message() {
    let t = task("bad", DesiredState::Running, None);
    let store = FakeStore::new(
        None,
        &[stack(&[("bad", service("nope:1"))])],
        std::slice::from_ref(&t),
    );
    let containers = FakeContainers::default();
    containers.fake().refuse.insert(
        "bad".into(),
        "services.bad.image: no such image nope:1".into(),
    );
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    // Started once: a failed task is the orchestrator's to replace, not the agent's
    // to retry.
    assert_eq!(containers.calls(), [format!("start {}", t.id)]);
    assert_eq!(
        store.states(&t.id),
        [TaskState::Preparing, TaskState::Rejected]
    );
    let stored = store.task(&t.id).status;
    assert!(stored.never_started(), "{stored:?}");
    assert_eq!(stored.message, "services.bad.image: no such image nope:1");
}

#[tokio::test]
async fn a_task_whose_service_is_gone_is_not_started() {
    let t = task("gone", DesiredState::Running, None);
    let store = FakeStore::new(
        None,
        &[stack(&[("web", service("web:1"))])],
        std::slice::from_ref(&t),
    );
    let containers = FakeContainers::default();
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    assert!(containers.calls().is_empty(), "{:?}", containers.calls());
    assert!(store.states(&t.id).is_empty());
}

#[tokio::test]
async fn a_task_to_shut_down_is_stopped_and_its_container_kept() {
    let mut t = running("web");
    t.desired = DesiredState::Shutdown;
    let store = FakeStore::new(
        None,
        &[stack(&[("web", service("web:1"))])],
        std::slice::from_ref(&t),
    );
    let containers = FakeContainers::with(&[(&t.id, Run::Running)]);
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    // Out of DNS and the port backends before the stop signal.
    assert_eq!(
        containers.calls(),
        [format!("leave {}", t.id), format!("stop {}", t.id)]
    );
    assert_eq!(store.task(&t.id).status.state(), TaskState::Shutdown);
    assert_eq!(containers.container(&t.id), Some(Run::Exited(143)));
}

#[tokio::test]
async fn a_shut_down_task_whose_container_runs_again_is_stopped_again() {
    let mut t = running("web");
    t.desired = DesiredState::Shutdown;
    t.status.state = Some(TaskState::Shutdown);
    let store = FakeStore::new(
        None,
        &[stack(&[("web", service("web:1"))])],
        std::slice::from_ref(&t),
    );
    // Stopped already and its container gone or ended: nothing to do.
    let containers = FakeContainers::with(&[(&t.id, Run::Exited(0))]);
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    assert!(containers.calls().is_empty(), "{:?}", containers.calls());
    // Running again: stopped again.
    let containers = FakeContainers::with(&[(&t.id, Run::Running)]);
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    assert_eq!(
        containers.calls(),
        [format!("leave {}", t.id), format!("stop {}", t.id)]
    );
}

#[tokio::test]
async fn a_task_to_remove_is_removed() {
    for state in [TaskState::Running, TaskState::Shutdown, TaskState::Failed] {
        let mut t = running("web");
        t.desired = DesiredState::Remove;
        t.status.state = Some(state);
        let store = FakeStore::new(
            None,
            &[stack(&[("web", service("web:1"))])],
            std::slice::from_ref(&t),
        );
        let containers = FakeContainers::with(&[(&t.id, Run::Running)]);
        let mut lp = agent_loop(&store, &containers);
        settle(&mut lp, &store, &containers).await;
        assert_eq!(
            containers.calls(),
            [format!("leave {}", t.id), format!("remove {}", t.id)],
            "{state:?}"
        );
        assert_eq!(
            store.task(&t.id).status.state(),
            TaskState::Removed,
            "{state:?}"
        );
        assert_eq!(containers.container(&t.id), None, "{state:?}");
    }
}

#[tokio::test]
async fn a_running_task_whose_container_vanished_is_reported_removed_outside_berth() {
    let t = running("web");
    let store = FakeStore::new(
        None,
        &[stack(&[("web", service("web:1"))])],
        std::slice::from_ref(&t),
    );
    let containers = FakeContainers::default();
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    let reports = store.reports(&t.id);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].state(), TaskState::Removed);
    assert_eq!(
        reports[0].message,
        "its container was removed outside berth"
    );
    assert!(reports[0].finished_at.is_some());
    assert_eq!(reports[0].pid, None);
    // What it held on the network is released (on a blocking thread of its own).
    wait_until(|| containers.calls().contains(&format!("release {}", t.id))).await;
}

#[tokio::test]
async fn a_running_task_whose_container_exited_is_reported_with_its_exit_code() {
    let t = running("web");
    let store = FakeStore::new(
        None,
        &[stack(&[("web", service("web:1"))])],
        std::slice::from_ref(&t),
    );
    let containers = FakeContainers::with(&[(&t.id, Run::Exited(3))]);
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    let stored = store.task(&t.id).status;
    assert_eq!(stored.state(), TaskState::Failed);
    assert_eq!(stored.exit_code, Some(3));
    assert_eq!(stored.message, "exited with code 3");
    wait_until(|| containers.calls().contains(&format!("release {}", t.id))).await;
}

#[tokio::test]
async fn a_running_task_that_still_runs_is_only_looked_at() {
    let t = running("web");
    let store = FakeStore::new(
        None,
        &[stack(&[("web", service("web:1"))])],
        std::slice::from_ref(&t),
    );
    let containers = FakeContainers::with(&[(&t.id, Run::Running)]);
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    assert!(containers.calls().is_empty(), "{:?}", containers.calls());
    assert!(store.reports(&t.id).is_empty());
}

#[tokio::test]
async fn a_busy_task_is_not_acted_on_twice() {
    let mut t = running("web");
    t.desired = DesiredState::Shutdown;
    let store = FakeStore::new(
        None,
        &[stack(&[("web", service("web:1"))])],
        std::slice::from_ref(&t),
    );
    let containers = FakeContainers::with(&[(&t.id, Run::Running)]);
    containers.set_gate(true);
    // Opened again even when an assertion fails, so that the stop ends and the test
    // fails rather than hangs.
    let _open = OpenOnDrop(containers.clone());
    let mut lp = agent_loop(&store, &containers);
    assert_eq!(
        lp.pass(true),
        Pass {
            reported: 0,
            started: 1
        }
    );
    wait_until(|| containers.calls().len() == 2).await;
    // The stop is under way: passes (at every store change, every tick) leave it be.
    for _ in 0..3 {
        assert_eq!(lp.pass(true), Pass::default());
    }
    assert_eq!(lp.busy(), 1);
    containers.set_gate(false);
    assert_eq!(lp.finished().await, 1);
    settle(&mut lp, &store, &containers).await;
    assert_eq!(
        containers.calls(),
        [format!("leave {}", t.id), format!("stop {}", t.id)]
    );
    assert_eq!(store.task(&t.id).status.state(), TaskState::Shutdown);
}

#[tokio::test]
async fn only_the_nodes_own_tasks_are_touched() {
    let on = |node: Option<&str>, slot: u32| {
        let mut t = task("web", DesiredState::Running, None);
        t.slot = slot;
        t.id = Task::make_id("app", "web", slot, 1);
        t.node = node.map(str::to_string);
        t
    };
    let (mine, theirs, unplaced) = (on(Some("n1"), 1), on(Some("n2"), 2), on(None, 3));
    let tasks = [mine.clone(), theirs.clone(), unplaced.clone()];
    let records = [stack(&[("web", service("web:1"))])];
    let store = FakeStore::new(Some("n1"), &records, &tasks);
    let containers = FakeContainers::default();
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    assert_eq!(containers.calls(), [format!("start {}", mine.id)]);
    assert!(store.reports(&theirs.id).is_empty());
    assert!(store.reports(&unplaced.id).is_empty());

    // On a single host (no node id), every task without a node is this node's.
    let store = FakeStore::new(None, &records, &tasks);
    let containers = FakeContainers::default();
    let mut lp = agent_loop(&store, &containers);
    settle(&mut lp, &store, &containers).await;
    assert_eq!(containers.calls(), [format!("start {}", unplaced.id)]);
}

#[tokio::test]
async fn the_running_loop_starts_a_task_and_reacts_to_a_change() {
    let t = task("web", DesiredState::Running, None);
    let store = FakeStore::new(
        None,
        &[stack(&[("web", service("web:1"))])],
        std::slice::from_ref(&t),
    );
    let containers = FakeContainers::default();
    let handle = tokio::spawn(agent_loop(&store, &containers).run());
    wait_until(|| store.task(&t.id).status.state() == TaskState::Running).await;
    // The manager asks for it to be removed: the store changes, the loop acts.
    store
        .recorded()
        .tasks
        .get_mut(&t.id)
        .expect("the task")
        .desired = DesiredState::Remove;
    store.version.send_modify(|v| *v += 1);
    wait_until(|| store.task(&t.id).status.state() == TaskState::Removed).await;
    handle.abort();
    assert_eq!(
        containers.calls(),
        [
            format!("start {}", t.id),
            format!("leave {}", t.id),
            format!("remove {}", t.id)
        ]
    );
}

// ---- start-up recovery ----

#[test]
fn strays_are_containers_no_task_of_this_node_knows() {
    let mut mine = running("web");
    mine.node = Some("n1".into());
    let mut theirs = running("db");
    theirs.node = Some("n2".into());
    let store = FakeStore::new(Some("n1"), &[], &[mine.clone(), theirs.clone()]);
    let containers = FakeContainers::with(&[
        (&mine.id, Run::Running),
        (&theirs.id, Run::Running),
        ("app-web-9.1", Run::Exited(0)),
    ]);
    let removed = recover::remove_strays(&store.view(), &containers);
    assert_eq!(removed, [theirs.id.clone(), "app-web-9.1".to_string()]);
    assert_eq!(containers.list(), [mine.id]);
}

// ---- health ----

fn check(interval_ms: u64, retries: u32) -> Healthcheck {
    Healthcheck {
        test: vec!["CMD".into(), "true".into()],
        interval: Some(Duration::from_millis(interval_ms)),
        timeout: Some(Duration::from_millis(50)),
        retries: Some(retries),
        start_period: None,
        start_interval: None,
        disable: false,
    }
}

fn checked(interval_ms: u64, retries: u32) -> Service {
    Service {
        healthcheck: Some(check(interval_ms, retries)),
        ..service("web:1")
    }
}

#[test]
fn health_checks_follow_running_tasks_and_turn_probe_results_into_changes() {
    let mut t = running("web");
    t.status.started_at = Some(1000);
    let plain = running("db");
    let store = FakeStore::new(
        None,
        &[stack(&[("web", checked(100, 2)), ("db", service("db:1"))])],
        &[t.clone(), plain.clone()],
    );
    let containers = FakeContainers::default();
    let mut checks = HealthChecks::default();
    let view = store.view();
    // A running task with a check is checked, and starts as `starting`.
    let first = checks.track(&view, 1000, |s| containers.healthcheck(s));
    assert_eq!(first, [(t.id.clone(), Health::Starting)]);
    assert_eq!(checks.tracked().collect::<Vec<_>>(), [t.id.as_str()]);
    // Due at start + interval, once at a time.
    assert!(checks.due(1099).is_empty());
    let due = checks.due(1100);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, t.id);
    assert_eq!(due[0].command, ["true"]);
    assert_eq!(due[0].timeout, Duration::from_millis(50));
    assert!(checks.due(1100).is_empty(), "a probe runs: none is due");
    // A success: healthy.
    assert_eq!(
        checks.record(&view, &t.id, true, 1100),
        Some(Health::Healthy)
    );
    // Two failures (retries: 2): unhealthy, not before.
    assert_eq!(checks.due(1200).len(), 1);
    assert_eq!(
        checks.record(&view, &t.id, false, 1200),
        // Unchanged for the checker, but the view still says `none`: said again.
        Some(Health::Healthy)
    );
    assert_eq!(checks.due(1300).len(), 1);
    assert_eq!(
        checks.record(&view, &t.id, false, 1300),
        Some(Health::Unhealthy)
    );
    // A task that stops running is no longer checked.
    let mut stopped = t.clone();
    stopped.status.state = Some(TaskState::Failed);
    let view = View::for_node(
        [(stopped.id.clone(), stopped)].into(),
        view.stacks.clone(),
        None,
    );
    assert!(checks
        .track(&view, 1400, |s| containers.healthcheck(s))
        .is_empty());
    assert_eq!(checks.tracked().count(), 0);
    assert!(checks.due(10_000).is_empty());
}

#[test]
fn a_restarted_daemon_goes_on_from_the_health_a_task_has() {
    // Healthy before the restart: it stays so (in DNS and its ports' backends) until
    // probes say otherwise, instead of starting over as `starting`.
    let mut t = running("web");
    t.status.started_at = Some(1000);
    t.status.health = Health::Healthy;
    let store = FakeStore::new(None, &[stack(&[("web", checked(100, 2))])], &[t.clone()]);
    let containers = FakeContainers::default();
    let mut checks = HealthChecks::default();
    let view = store.view();
    assert!(checks
        .track(&view, 50_000, |s| containers.healthcheck(s))
        .is_empty());
    assert_eq!(checks.due(50_000).len(), 1, "probed at once");
    assert_eq!(checks.record(&view, &t.id, false, 50_000), None);
    assert_eq!(checks.due(50_100).len(), 1);
    assert_eq!(
        checks.record(&view, &t.id, false, 50_100),
        Some(Health::Unhealthy)
    );
}

#[tokio::test]
async fn the_health_loop_reports_probe_results_as_health_changes() {
    let mut t = running("web");
    t.status.started_at = Some(spec::task::now_ms());
    t.status.health = Health::Starting;
    let store = FakeStore::new(
        None,
        &[stack(&[("web", checked(10, 1))])],
        std::slice::from_ref(&t),
    );
    let containers = FakeContainers::with(&[(&t.id, Run::Running)]);
    let handle = tokio::spawn(agent::worker::run_health(
        store.clone(),
        store.clone(),
        containers.clone(),
    ));
    wait_until(|| store.task(&t.id).status.health == Health::Healthy).await;
    assert_eq!(containers.fake().healthy.get(&t.id), Some(&true));
    // Its probes fail from now on (retries: 1): unhealthy, and out of DNS.
    containers.fake().probes.insert(t.id.clone(), false);
    wait_until(|| store.task(&t.id).status.health == Health::Unhealthy).await;
    assert_eq!(containers.fake().healthy.get(&t.id), Some(&false));
    handle.abort();
    let reported: Vec<Health> = store.health_reports().into_iter().map(|(_, h)| h).collect();
    assert_eq!(reported, [Health::Healthy, Health::Unhealthy]);
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out");
}

//! The rolling updater, driven through the orchestrator against a simulated agent and
//! clock: tasks start, turn healthy (or fail, or turn unhealthy) as their image says,
//! time moves in steps, and each step checks what must hold at every moment
//! (parallelism, start-first never below the replica count).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use manager::orchestrator::{reconcile, Plan};
use manager::stacks::{self, UpRequest};
use manager::state::model::State;
use spec::model::{
    Deploy, FailureAction, Healthcheck, Port, PortMode, PortRange, Protocol, Service, Stack,
    UpdateConfig, UpdateOrder,
};
use spec::task::{DesiredState, Health, StackRecord, Task, TaskState, UpdateState};

const START: u64 = 1_000_000;
const STEP: u64 = 100;
/// The simulated healthcheck passes this long after the task starts.
const HEALTHY_AFTER: u64 = 500;

/// A service of `replicas` replicas of `image` with a healthcheck, rolling by `update`.
fn web(image: &str, replicas: u32, update: Option<UpdateConfig>) -> Service {
    Service {
        image: Some(image.into()),
        healthcheck: Some(Healthcheck {
            test: vec!["CMD".into(), "true".into()],
            ..Healthcheck::default()
        }),
        deploy: Some(Deploy {
            replicas: Some(replicas),
            update_config: update,
            ..Deploy::default()
        }),
        ..Service::default()
    }
}

fn config(parallelism: u32, order: UpdateOrder, action: FailureAction) -> UpdateConfig {
    UpdateConfig {
        parallelism: Some(parallelism),
        monitor: Some(Duration::from_secs(1)),
        order: Some(order),
        failure_action: Some(action),
        ..UpdateConfig::default()
    }
}

fn record(web: Service) -> StackRecord {
    StackRecord::new(Stack::of_services("app", [("web".to_string(), web)]))
}

/// Images named `sick...` never turn healthy; `crash...` exit 1 at once; a task of a
/// slot in `sick_slots` of an image named `*-some` is sick, the others healthy.
struct Sim {
    s: State,
    now: u64,
    sick_slots: BTreeSet<u32>,
    /// Every task ever created, with its creation time.
    created: Vec<(u64, String, String)>,
}

impl Sim {
    fn new(web: Service) -> Sim {
        let mut sim = Sim {
            s: State::default(),
            now: START,
            sick_slots: BTreeSet::new(),
            created: Vec::new(),
        };
        sim.up(web);
        sim.run_for(5_000, |_| {});
        sim
    }

    fn up(&mut self, web: Service) {
        stacks::up(
            &mut self.s,
            "app",
            &UpRequest {
                record: record(web),
                remove_orphans: false,
                force_recreate: false,
                no_recreate: false,
            },
        );
    }

    fn image_of(&self, t: &Task) -> String {
        self.s.stacks["app"]
            .stack
            .services
            .values()
            .chain(self.s.stacks["app"].previous.values())
            .find(|svc| manager::orchestrator::spec_hash(&self.s.stacks["app"], svc) == t.spec_hash)
            .and_then(|svc| svc.image.clone())
            .unwrap_or_default()
    }

    /// One step: the orchestrator settles, then the agent acts, then time moves.
    fn step(&mut self) {
        for _ in 0..10 {
            let tasks: Vec<Task> = self.s.tasks.values().cloned().collect();
            let p: Plan = reconcile(&self.s.stacks, &tasks, self.now);
            if p.changes.is_empty() {
                break;
            }
            for c in &p.changes {
                if let manager::orchestrator::Change::Create(t) = c {
                    self.created
                        .push((self.now, t.id.clone(), t.spec_hash.clone()));
                }
            }
            manager::orchestrator::run::apply(&mut self.s, &p);
        }
        let now = self.now;
        let ids: Vec<String> = self.s.tasks.keys().cloned().collect();
        for id in ids {
            let image = self.image_of(&self.s.tasks[&id]);
            let sick = image.starts_with("sick")
                || (image.ends_with("-some") && self.sick_slots.contains(&self.s.tasks[&id].slot));
            let t = self.s.tasks.get_mut(&id).expect("task");
            match (t.desired, t.status.state()) {
                (DesiredState::Running, TaskState::New) if image.starts_with("crash") => {
                    t.status.state = Some(TaskState::Failed);
                    t.status.started_at = Some(now);
                    t.status.finished_at = Some(now);
                    t.status.exit_code = Some(1);
                }
                (DesiredState::Running, TaskState::New) => {
                    t.status.state = Some(TaskState::Running);
                    t.status.started_at = Some(now);
                    t.status.health = Health::Starting;
                }
                (DesiredState::Running, TaskState::Running)
                    if t.status.health == Health::Starting
                        && t.status.started_at.unwrap_or(now) + HEALTHY_AFTER <= now =>
                {
                    let h = if sick {
                        Health::Unhealthy
                    } else {
                        Health::Healthy
                    };
                    t.status.merge_health(h, now);
                }
                (DesiredState::Remove, s) if s != TaskState::Removed => {
                    t.status.state = Some(TaskState::Removed);
                    t.status.finished_at = Some(now);
                }
                (DesiredState::Shutdown, s) if !s.is_terminal() => {
                    t.status.state = Some(TaskState::Shutdown);
                    t.status.finished_at = Some(now);
                }
                _ => {}
            }
        }
        self.now += STEP;
    }

    /// Steps for `ms`, calling `check` after each.
    fn run_for(&mut self, ms: u64, mut check: impl FnMut(&Sim)) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
            check(self);
        }
    }

    fn status(&self) -> Option<spec::task::UpdateStatus> {
        self.s.stacks["app"].updates.get("web").cloned()
    }

    fn hash(&self) -> String {
        let r = &self.s.stacks["app"];
        manager::orchestrator::spec_hash(r, &r.stack.services["web"])
    }

    /// Running tasks, and those of them ready (healthy).
    fn running(&self) -> (usize, usize) {
        let live = self.s.tasks.values().filter(|t| {
            t.status.state() == TaskState::Running && t.desired != DesiredState::Remove
        });
        let all: Vec<&Task> = live.collect();
        let ready = all
            .iter()
            .filter(|t| t.status.health == Health::Healthy)
            .count();
        (all.len(), ready)
    }

    /// The live tasks' images by slot.
    fn images(&self) -> BTreeMap<u32, String> {
        self.s
            .tasks
            .values()
            .filter(|t| {
                t.desired == DesiredState::Running && t.status.state() == TaskState::Running
            })
            .map(|t| (t.slot, self.image_of(t)))
            .collect()
    }

    /// Creation times of tasks of definition `hash`.
    fn created_of(&self, hash: &str) -> Vec<u64> {
        self.created
            .iter()
            .filter(|(_, _, h)| h == hash)
            .map(|(at, _, _)| *at)
            .collect()
    }
}

#[test]
fn stop_first_one_at_a_time_never_leaves_two_slots_down_and_waits_for_monitor() {
    let cfg = config(1, UpdateOrder::StopFirst, FailureAction::Pause);
    let mut sim = Sim::new(web("web:1", 3, Some(cfg.clone())));
    assert_eq!(sim.running(), (3, 3));
    assert_eq!(sim.status(), None, "a first deployment is not an update");
    sim.up(web("web:2", 3, Some(cfg)));
    let hash = sim.hash();
    sim.run_for(20_000, |sim| {
        let (running, _) = sim.running();
        assert!(running >= 2, "two slots down at once at {}", sim.now);
    });
    let st = sim.status().expect("an update status");
    assert_eq!(st.state, UpdateState::Completed, "{st:?}");
    assert_eq!((st.updated, st.total), (3, 3));
    assert!(
        sim.images().values().all(|i| i == "web:2"),
        "{:?}",
        sim.images()
    );
    // One at a time: each new task made only after the one before was healthy for
    // `monitor` (started, +0.5 s healthy, +1 s monitor).
    let times = sim.created_of(&hash);
    assert_eq!(times.len(), 3, "{times:?}");
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= HEALTHY_AFTER + 1_000, "{times:?}");
    }
}

#[test]
fn start_first_keeps_every_replica_ready_throughout() {
    let cfg = config(1, UpdateOrder::StartFirst, FailureAction::Pause);
    let mut sim = Sim::new(web("web:1", 3, Some(cfg.clone())));
    sim.up(web("web:2", 3, Some(cfg)));
    let mut most = 0;
    sim.run_for(20_000, |sim| {
        let (running, ready) = sim.running();
        assert!(ready >= 3, "only {ready} ready at {}", sim.now);
        most = most.max(running);
    });
    assert_eq!(most, 4, "one extra task at a time");
    assert_eq!(sim.status().map(|s| s.state), Some(UpdateState::Completed));
    assert!(
        sim.images().values().all(|i| i == "web:2"),
        "{:?}",
        sim.images()
    );
    assert_eq!(sim.running(), (3, 3));
}

#[test]
fn parallelism_and_delay_space_the_batches() {
    let mut cfg = config(2, UpdateOrder::StopFirst, FailureAction::Pause);
    cfg.delay = Some(Duration::from_secs(2));
    let mut sim = Sim::new(web("web:1", 4, Some(cfg.clone())));
    sim.up(web("web:2", 4, Some(cfg)));
    let hash = sim.hash();
    sim.run_for(30_000, |sim| {
        let (running, _) = sim.running();
        assert!(running >= 2, "more than two slots down at {}", sim.now);
    });
    let times = sim.created_of(&hash);
    assert_eq!(times.len(), 4, "{times:?}");
    assert_eq!(times[0], times[1], "a batch of two: {times:?}");
    assert_eq!(times[2], times[3], "a batch of two: {times:?}");
    // The second batch waits for the first to be healthy past monitor, then the delay.
    assert!(
        times[2] - times[0] >= HEALTHY_AFTER + 1_000 + 2_000,
        "{times:?}"
    );
    assert_eq!(sim.status().map(|s| s.state), Some(UpdateState::Completed));
}

#[test]
fn a_failing_update_rolls_back_and_keeps_the_tasks_still_on_the_old_definition() {
    let cfg = config(1, UpdateOrder::StopFirst, FailureAction::Rollback);
    let mut sim = Sim::new(web("web:1", 3, Some(cfg.clone())));
    let before: BTreeSet<String> = sim.s.tasks.keys().cloned().collect();
    sim.up(web("sick:2", 3, Some(cfg)));
    sim.run_for(20_000, |_| {});
    let st = sim.status().expect("status");
    assert_eq!(st.state, UpdateState::RolledBack, "{st:?}");
    assert!(st.message.contains("1 of 3 tasks failed"), "{}", st.message);
    assert!(st.message.contains("unhealthy"), "{}", st.message);
    let record = &sim.s.stacks["app"];
    assert_eq!(record.stack.services["web"].image.as_deref(), Some("web:1"));
    assert_eq!(record.previous["web"].image.as_deref(), Some("sick:2"));
    assert!(
        sim.images().values().all(|i| i == "web:1"),
        "{:?}",
        sim.images()
    );
    // Slots 2 and 3 were never touched: their tasks are the ones from before.
    for id in ["app-web-2.1", "app-web-3.1"] {
        assert!(before.contains(id) && sim.s.tasks[id].desired == DesiredState::Running);
    }
}

#[test]
fn start_first_rollback_keeps_the_healthy_old_task() {
    // moby issue 43081: rolling back a start-first update replaced healthy tasks.
    let cfg = config(1, UpdateOrder::StartFirst, FailureAction::Rollback);
    let mut sim = Sim::new(web("web:1", 2, Some(cfg.clone())));
    sim.up(web("sick:2", 2, Some(cfg)));
    sim.run_for(20_000, |sim| {
        assert!(sim.running().1 >= 2, "a ready replica lost at {}", sim.now);
    });
    assert_eq!(sim.status().map(|s| s.state), Some(UpdateState::RolledBack));
    for id in ["app-web-1.1", "app-web-2.1"] {
        assert_eq!(sim.s.tasks[id].desired, DesiredState::Running, "{id}");
    }
}

#[test]
fn pause_stops_the_update_and_up_starts_it_again() {
    let cfg = config(1, UpdateOrder::StopFirst, FailureAction::Pause);
    let mut sim = Sim::new(web("web:1", 3, Some(cfg.clone())));
    sim.up(web("crash:2", 3, Some(cfg.clone())));
    sim.run_for(10_000, |_| {});
    let st = sim.status().expect("status");
    assert_eq!(st.state, UpdateState::Paused, "{st:?}");
    assert!(st.message.contains("exited with code 1"), "{}", st.message);
    let images = sim.images();
    assert_eq!(
        images.values().filter(|i| *i == "web:1").count(),
        2,
        "{images:?}"
    );
    // The same definition again: the update starts over (and pauses again).
    sim.up(web("crash:2", 3, Some(cfg.clone())));
    assert_eq!(sim.status(), None, "up forgets the paused update");
    sim.step();
    assert_eq!(sim.status().map(|s| s.state), Some(UpdateState::Updating));
    // A fixed definition completes.
    sim.up(web("web:3", 3, Some(cfg)));
    sim.run_for(20_000, |_| {});
    assert_eq!(sim.status().map(|s| s.state), Some(UpdateState::Completed));
    assert!(
        sim.images().values().all(|i| i == "web:3"),
        "{:?}",
        sim.images()
    );
}

#[test]
fn continue_goes_on_and_reports_the_failures() {
    let cfg = config(1, UpdateOrder::StopFirst, FailureAction::Continue);
    let mut sim = Sim::new(web("web:1", 3, Some(cfg.clone())));
    sim.up(web("sick:2", 3, Some(cfg)));
    sim.run_for(20_000, |_| {});
    let st = sim.status().expect("status");
    assert_eq!(st.state, UpdateState::Completed, "{st:?}");
    assert_eq!(st.failed.len(), 3, "{st:?}");
    assert!(st.message.contains("3 of 3 tasks failed"), "{}", st.message);
}

#[test]
fn max_failure_ratio_tolerates_up_to_its_share_of_slots() {
    for (sick, want) in [
        (vec![1, 2], UpdateState::Completed),
        (vec![1, 2, 3], UpdateState::Paused),
    ] {
        let mut cfg = config(1, UpdateOrder::StopFirst, FailureAction::Pause);
        cfg.max_failure_ratio = Some(0.5);
        let mut sim = Sim::new(web("web:1", 4, Some(cfg.clone())));
        sim.sick_slots = sick.iter().copied().collect();
        sim.up(web("web:2-some", 4, Some(cfg)));
        sim.run_for(30_000, |_| {});
        let st = sim.status().expect("status");
        assert_eq!(st.state, want, "sick slots {sick:?}: {st:?}");
    }
}

#[test]
fn berth_rollback_returns_to_the_previous_definition() {
    let cfg = config(2, UpdateOrder::StopFirst, FailureAction::Pause);
    let mut sim = Sim::new(web("web:1", 2, Some(cfg.clone())));
    sim.up(web("web:2", 2, Some(cfg)));
    sim.run_for(10_000, |_| {});
    assert_eq!(sim.status().map(|s| s.state), Some(UpdateState::Completed));
    let rolled = stacks::rollback(&mut sim.s, "app", &[], sim.now).expect("rollback");
    assert_eq!(rolled, ["web"]);
    assert_eq!(
        sim.status().map(|s| s.state),
        Some(UpdateState::RollingBack)
    );
    // No rollback_config: Swarm's defaults, one at a time with a 5 s monitor.
    sim.run_for(15_000, |_| {});
    assert_eq!(sim.status().map(|s| s.state), Some(UpdateState::RolledBack));
    assert!(
        sim.images().values().all(|i| i == "web:1"),
        "{:?}",
        sim.images()
    );
    // A second rollback returns to web:2 (the two swap).
    stacks::rollback(&mut sim.s, "app", &["web".into()], sim.now).expect("rollback");
    sim.run_for(15_000, |_| {});
    assert!(
        sim.images().values().all(|i| i == "web:2"),
        "{:?}",
        sim.images()
    );
    // A service never changed has nothing to return to.
    let mut fresh = Sim::new(web("web:1", 1, None));
    let err = stacks::rollback(&mut fresh.s, "app", &["web".into()], fresh.now).unwrap_err();
    assert!(err.to_string().contains("no previous definition"), "{err}");
}

#[test]
fn start_first_with_a_host_mode_port_is_done_stop_first_and_says_so() {
    let cfg = config(1, UpdateOrder::StartFirst, FailureAction::Pause);
    let with_port = |image: &str| {
        let mut s = web(image, 2, Some(cfg.clone()));
        s.ports = vec![Port {
            target: 80,
            published: Some(PortRange {
                start: 8080,
                end: 8080,
            }),
            mode: PortMode::Host,
            name: None,
            host_ip: None,
            protocol: Protocol::Tcp,
            app_protocol: None,
        }];
        s
    };
    let mut sim = Sim::new(with_port("web:1"));
    sim.up(with_port("web:2"));
    sim.run_for(10_000, |sim| {
        assert!(
            sim.running().0 <= 2,
            "old and new ran at once at {}",
            sim.now
        );
    });
    let st = sim.status().expect("status");
    assert_eq!(st.state, UpdateState::Completed);
    assert!(
        st.message.contains("start-first done as stop-first"),
        "{}",
        st.message
    );
    assert!(st.message.contains("8080"), "{}", st.message);
}

#[test]
fn without_update_config_a_single_host_recreates_everything_at_once() {
    let mut sim = Sim::new(web("web:1", 3, None));
    sim.up(web("web:2", 3, None));
    let hash = sim.hash();
    sim.run_for(3_000, |_| {});
    let times = sim.created_of(&hash);
    assert_eq!(times.len(), 3);
    assert!(times.iter().all(|t| *t == times[0]), "{times:?}");
    assert_eq!(sim.status(), None, "Compose's recreate is not an update");
}

#[test]
fn a_cluster_rolls_with_swarms_defaults() {
    use manager::orchestrator::update::Policy;
    let p = Policy::of(&web("web:1", 3, None), false, true).expect("rolls on a cluster");
    assert_eq!(p.parallelism, 1);
    assert_eq!(p.monitor_ms, 5_000);
    assert_eq!(p.failure_action, FailureAction::Pause);
    assert_eq!(p.order, UpdateOrder::StopFirst);
    assert_eq!(p.max_failure_ratio, 0.0);
    assert!(Policy::of(&web("web:1", 3, None), false, false).is_none());
}

#[test]
fn a_task_that_turns_unhealthy_after_its_monitor_is_not_the_updates_failure() {
    let cfg = config(1, UpdateOrder::StopFirst, FailureAction::Pause);
    let mut sim = Sim::new(web("web:1", 3, Some(cfg.clone())));
    sim.up(web("web:2", 3, Some(cfg)));
    let hash = sim.hash();
    // Until slot 1 is updated (healthy for monitor) and slot 2 has begun.
    sim.run_for(2_500, |_| {});
    assert!(
        sim.status().is_some_and(|s| s.done.contains(&1)),
        "{:?}",
        sim.status()
    );
    let one = sim
        .s
        .tasks
        .values()
        .find(|t| t.slot == 1 && t.spec_hash == hash && t.desired == DesiredState::Running)
        .map(|t| t.id.clone())
        .expect("slot 1's new task");
    let now = sim.now;
    sim.s
        .tasks
        .get_mut(&one)
        .expect("task")
        .status
        .merge_health(Health::Unhealthy, now);
    sim.run_for(10_000, |_| {});
    let st = sim.status().expect("status");
    assert_eq!(st.state, UpdateState::Completed, "{st:?}");
    assert!(st.failed.is_empty(), "{st:?}");
}

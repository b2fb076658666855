//! Lifecycle hooks end to end (`post_start`, `pre_stop`): a real daemon runs busybox
//! containers whose hooks leave traces in the container or in a directory bind-mounted
//! from the test, which then reads them.

#[path = "stack/fixture.rs"]
mod fixture;

use std::time::{Duration, Instant};

use fixture::Fixture;

/// A directory of the test, world-writable so that a container's non-root user can
/// write there too, bind-mounted at `/out` by the services below.
fn out_dir(f: &Fixture) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let out = f.dir().join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    out
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The effective capabilities in a `/proc/PID/status` excerpt.
fn cap_eff(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapEff in {status:?}"))
}

const CAP_SYS_ADMIN: u64 = 1 << 21;

#[test]
fn post_start_runs_in_the_container_as_asked_and_pre_stop_runs_before_the_stop_signal() {
    // The main process records its TERM; the hooks record who ran them, where, with
    // what environment and capabilities (`$$` is a literal `$` in Compose).
    let compose = r#"services:
  web:
    image: busybox:local
    user: app
    environment: [FROM_SERVICE=svc, OVERRIDDEN=service]
    volumes: ['./out:/out']
    stop_grace_period: 5s
    command: ["sh", "-c", "trap 'echo term >> /out/order; exit 0' TERM; while true; do sleep 0.1; done"]
    post_start:
      - command: sh -c 'echo "$$(id -u) $$FROM_SERVICE $$OVERRIDDEN $$FROM_HOOK $$(pwd)" > /out/post'
        environment: [FROM_HOOK=hook, OVERRIDDEN=hook]
        working_dir: /etc
      - command: ["sh", "-c", "id -u > /tmp/root; grep CapEff /proc/self/status > /tmp/caps; echo post_start >> /out/order; chmod a+w /out/order"]
        user: root
        privileged: true
    pre_stop:
      - command: ["sh", "-c", "echo pre_stop $$(id -u) >> /out/order"]
"#;
    let mut f = Fixture::new("hooks", compose);
    let out = out_dir(&f);
    f.start_daemon();
    f.ok(&["up", "-d"]);

    // `up` returns once the hooks ran: their files are there at once.
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "-T", "web"];
        all.extend_from_slice(args);
        f.ok(&all)
    };
    // The first hook: the service's user (app, 1000) by default, the service's
    // environment under the hook's own, the working directory it asked for.
    assert_eq!(
        exec(&["cat", "/out/post"]).trim(),
        "1000 svc hook hook /etc"
    );
    // The second: root as asked, and every capability for the hook's process only.
    assert_eq!(exec(&["cat", "/tmp/root"]).trim(), "0");
    let hook_caps = cap_eff(&exec(&["cat", "/tmp/caps"]));
    assert_ne!(hook_caps & CAP_SYS_ADMIN, 0, "{hook_caps:x}");
    let root_exec = f.ok(&[
        "exec",
        "-T",
        "-u",
        "root",
        "web",
        "grep",
        "CapEff",
        "/proc/self/status",
    ]);
    assert_eq!(cap_eff(&root_exec) & CAP_SYS_ADMIN, 0, "{root_exec}");
    assert_eq!(read(&out.join("order")), "post_start\n");

    // `down`: the pre_stop hook (as the service's user) before the stop signal.
    f.ok(&["down"]);
    assert_eq!(
        read(&out.join("order")),
        "post_start\npre_stop 1000\nterm\n",
        "{}",
        read(&f.tmp.path().join("daemon.log"))
    );
}

#[test]
fn a_failing_post_start_fails_up_naming_the_hook_and_stops_the_container() {
    let compose = r#"services:
  bad:
    image: busybox:local
    volumes: ['./out:/out']
    command: ["sleep", "1000"]
    post_start:
      - command: ["sh", "-c", "echo first >> /out/ran"]
      - command: ["sh", "-c", "echo something broke >&2; exit 3"]
      - command: ["sh", "-c", "echo third >> /out/ran"]
"#;
    let mut f = Fixture::new("hookfail", compose);
    let out = out_dir(&f);
    f.start_daemon();
    let res = f.berth(&["up", "-d"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{err}");
    assert!(
        err.contains("services.bad.post_start[1]")
            && err.contains("exited with code 3")
            && err.contains("something broke"),
        "{err}"
    );
    // The hooks ran in order up to the one that failed, and no further.
    assert_eq!(read(&out.join("ran")), "first\n");
    // Its container was stopped: nothing of the service runs.
    assert!(f.running().is_empty(), "{:?}", f.running());
    f.ok(&["down"]);
}

#[test]
fn pre_stop_failures_are_logged_a_slow_one_is_cut_at_the_grace_period_and_an_exited_container_runs_none(
) {
    let compose = r#"services:
  failing:
    image: busybox:local
    volumes: ['./out:/out']
    command: ["sleep", "1000"]
    pre_stop:
      - command: ["sh", "-c", "exit 5"]
      - command: ["sh", "-c", "echo second >> /out/failing"]
  slow:
    image: busybox:local
    volumes: ['./out:/out']
    command: ["sleep", "1000"]
    stop_grace_period: 2s
    pre_stop:
      - command: ["sh", "-c", "echo started >> /out/slow; sleep 60; echo finished >> /out/slow"]
  exited:
    image: busybox:local
    volumes: ['./out:/out']
    command: ["true"]
    pre_stop:
      - command: ["sh", "-c", "echo ran >> /out/exited"]
  pool:
    image: busybox:local
    scale: 2
    volumes: ['./out:/out']
    command: ["sleep", "1000"]
    pre_stop:
      - command: ["sh", "-c", "hostname >> /out/pool"]
"#;
    let mut f = Fixture::new("hookstop", compose);
    let out = out_dir(&f);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    fixture::wait_for(
        || {
            f.ps(true)
                .iter()
                .any(|(n, _, s)| n.contains("exited") && s == "exited")
        },
        "the exited service's container to exit",
    );

    // A scale-down stops the replica it removes, hooks first.
    f.ok(&["up", "-d", "--scale", "pool=1"]);
    fixture::wait_for(
        || read(&out.join("pool")).lines().count() == 1,
        "the removed replica's pre_stop",
    );
    assert!(
        read(&out.join("pool")).ends_with("-pool-2\n"),
        "{}",
        read(&out.join("pool"))
    );

    let began = Instant::now();
    f.ok(&["down"]);
    // The slow hook had the 2 s grace period, not its 60 s.
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(read(&out.join("slow")), "started\n");
    // A failing hook does not stop the next one, nor the stop.
    assert_eq!(read(&out.join("failing")), "second\n");
    // A container that already exited has nothing to prepare for.
    assert!(
        !out.join("exited").exists(),
        "{}",
        read(&out.join("exited"))
    );
    let log = read(&f.tmp.path().join("daemon.log"));
    assert!(
        log.contains("services.failing.pre_stop[0]") && log.contains("exited with code 5"),
        "{log}"
    );
    assert!(f.ps(true).is_empty(), "{:?}", f.ps(true));
}

#[test]
fn pre_start_steps_run_in_order_once_per_service_before_its_containers() {
    // Two replicas: the steps run once, before either starts, and each replica sees
    // what they left in the shared directory.
    let compose = r#"services:
  app:
    image: busybox:local
    user: app
    scale: 2
    environment: [FROM_SERVICE=svc]
    volumes: ['./out:/out']
    command: ["sh", "-c", "cat /out/steps > /out/seen-$$(hostname); sleep 1000"]
    pre_start:
      - command: ["sh", "-c", "echo A $$(id -u) $$FROM_SERVICE $$STEP >> /out/steps"]
        environment: [STEP=one]
      - command: ["sh", "-c", "echo B $$(id -u) $$(pwd) >> /out/steps"]
        user: root
        working_dir: /etc
"#;
    let mut f = Fixture::new("prestart", compose);
    let out = out_dir(&f);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    let steps = "A 1000 svc one\nB 0 /etc\n";
    assert_eq!(read(&out.join("steps")), steps);
    fixture::wait_for(
        || {
            let seen: Vec<String> = std::fs::read_dir(&out)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            seen.iter().filter(|n| n.starts_with("seen-")).count() == 2
        },
        "both replicas to record what they saw",
    );
    for e in std::fs::read_dir(&out).expect("out").flatten() {
        if e.file_name().to_string_lossy().starts_with("seen-") {
            assert_eq!(read(&e.path()), steps, "{:?}", e.file_name());
        }
    }
    // A step's container is gone once it ran: only the replicas are left.
    let containers = std::fs::read_dir(f.state().join("run/containers"))
        .expect("containers")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert_eq!(containers.len(), 2, "{containers:?}");

    // Scaling up beside running replicas of the same definition: no steps again.
    f.ok(&["up", "-d", "--scale", "app=3"]);
    assert_eq!(f.running().len(), 3, "{:?}", f.running());
    assert_eq!(read(&out.join("steps")), steps);

    // A new definition: its first replica runs them again.
    f.write_compose(&compose.replace("FROM_SERVICE=svc", "FROM_SERVICE=v2"));
    f.ok(&["up", "-d", "--scale", "app=3"]);
    assert_eq!(
        read(&out.join("steps")),
        format!("{steps}A 1000 v2 one\nB 0 /etc\n")
    );
    f.ok(&["down"]);
}

#[test]
fn a_failing_pre_start_step_fails_up_naming_it_and_the_service_never_starts() {
    let compose = r#"services:
  broken:
    image: busybox:local
    volumes: ['./out:/out']
    command: ["sh", "-c", "echo main >> /out/ran; sleep 1000"]
    pre_start:
      - command: ["sh", "-c", "echo ran-0 >> /out/ran"]
      - command: ["sh", "-c", "echo migration failed >&2; exit 17"]
"#;
    let mut f = Fixture::new("prestartfail", compose);
    let out = out_dir(&f);
    f.start_daemon();
    let res = f.berth(&["up", "-d"]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{err}");
    assert!(
        err.contains("services.broken.pre_start[1]")
            && err.contains("exited with code 17")
            && err.contains("migration failed"),
        "{err}"
    );
    // The first step ran; the service's own command never did.
    assert_eq!(read(&out.join("ran")), "ran-0\n");
    assert!(f.running().is_empty(), "{:?}", f.running());
    f.ok(&["down"]);
}

#[test]
fn down_ends_a_post_start_command_that_never_ends() {
    // Neither a post_start command nor a pre_start step has a timeout (as in docker
    // compose); a stop of their task must still end them, or `down` would wait for
    // them (60 s here).
    let compose = r#"services:
  stuck:
    image: busybox:local
    volumes: ['./out:/out']
    stop_grace_period: 1s
    command: ["sleep", "1000"]
    post_start:
      - command: ["sh", "-c", "echo hook >> /out/stuck; sleep 60"]
"#;
    let mut f = Fixture::new("hookstuck", compose);
    let out = out_dir(&f);
    f.start_daemon();
    let up = f
        .command(&["up", "-d"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn up");
    fixture::wait_for(|| read(&out.join("stuck")) == "hook\n", "the hook to run");

    let began = Instant::now();
    f.ok(&["down", "-t", "1"]);
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    // `up`, which waited for the start, ends with the stack gone.
    up.wait_with_output().expect("up ends");
    assert!(f.ps(true).is_empty(), "{:?}", f.ps(true));
    let log = read(&f.tmp.path().join("daemon.log"));
    assert!(
        log.contains("services.stuck.post_start[0]: ended before it finished"),
        "{log}"
    );
}

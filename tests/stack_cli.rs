//! `berth up`/`down` and the other Compose verbs, end to end: the real binary, a real
//! daemon, real containers (busybox-static), as root. Each test has its own state
//! directory and project name; the fixture's `Drop` kills the daemon and removes every
//! container it left, so a failing test leaves nothing mounted or running.

#[path = "stack/fixture.rs"]
mod fixture;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fixture::{alive, wait_for, Fixture};

/// Sleeps that end at once on SIGTERM, so `down` is quick.
const SLEEPER: &str = "trap 'exit 0' TERM; sleep 1000 & wait";

#[test]
fn up_ps_logs_idempotent_up_recreate_and_down() {
    let compose = format!(
        r#"services:
  web:
    image: busybox:local
    command: ["sh", "-c", "echo hello from web; {SLEEPER}"]
  worker:
    image: busybox:local
    command: ["sh", "-c", "echo worker $$HOSTNAME; {SLEEPER}"]
    deploy:
      replicas: 2
    depends_on: [web]
"#
    );
    let mut f = Fixture::new("up", &compose);
    f.start_daemon();
    let out = f.berth(&["up", "-d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for n in ["web-1", "worker-1", "worker-2"] {
        assert!(stderr.contains(&format!("{}-{n}", f.project)), "{stderr}");
    }
    let ps = f.ps(false);
    assert_eq!(ps.len(), 3, "{ps:?}");
    assert!(ps.iter().all(|(_, _, s)| s == "running"), "{ps:?}");

    wait_for(
        || f.ok(&["logs"]).matches("worker ").count() == 2,
        "the workers' output",
    );
    let logs = f.ok(&["logs", "web"]);
    assert!(
        logs.contains(&format!("{}-web-1", f.project)) && logs.contains("| hello from web"),
        "{logs}"
    );
    let worker_logs = f.ok(&["logs", "--no-log-prefix", "worker"]);
    assert!(
        worker_logs.contains(&format!("worker {}-worker-1", f.project)),
        "{worker_logs}"
    );

    // A second up with no change touches nothing.
    let ids: Vec<String> = ps.iter().map(|r| r.1.clone()).collect();
    f.ok(&["up", "-d"]);
    let again: Vec<String> = f.ps(false).iter().map(|r| r.1.clone()).collect();
    assert_eq!(again, ids);

    // --dry-run with nothing changed: nothing to do, exit 0 with --detailed-exitcode.
    let plan = f.berth(&["up", "--dry-run", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{plan:?}");
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("nothing to do"), "{text}");

    // A changed service is recreated; the others are left alone. The plan says so
    // first, and changes nothing.
    f.write_compose(&compose.replace("echo worker", "echo changed worker"));
    let plan = f.berth(&["up", "--dry-run", "--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(2), "{plan:?}");
    let text = String::from_utf8_lossy(&plan.stdout);
    let worker_line = text
        .lines()
        .find(|l| l.contains(" worker "))
        .unwrap_or_else(|| panic!("no line for worker: {text}"));
    assert!(
        worker_line.starts_with("  recreate")
            && worker_line.contains("2 of 2 task(s) (slots 1, 2)")
            && worker_line.contains("command[2]")
            && worker_line.contains("changed worker"),
        "{text}"
    );
    let web_line = text
        .lines()
        .find(|l| l.contains(" web "))
        .unwrap_or_default();
    assert!(web_line.starts_with("  unchanged"), "{text}");
    let untouched: Vec<String> = f.ps(false).iter().map(|r| r.1.clone()).collect();
    assert_eq!(untouched, ids, "--dry-run changed something");
    f.ok(&["up", "-d"]);
    let after = f.ps(false);
    let web: Vec<_> = after.iter().filter(|r| r.0.ends_with("-web-1")).collect();
    assert_eq!(web[0].1, ids[0], "web was recreated: {after:?}");
    assert!(
        after
            .iter()
            .filter(|r| r.0.contains("-worker-"))
            .all(|r| !ids.contains(&r.1)),
        "{after:?}"
    );
    assert_eq!(after.len(), 3);

    f.ok(&["down"]);
    assert!(f.ps(true).is_empty());
    let left: Vec<_> = std::fs::read_dir(f.state().join("run/containers"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "containers left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(f.state().to_str().expect("utf-8")),
        "rootfs left mounted"
    );
}

#[test]
fn restart_policies_and_drift() {
    let compose = format!(
        r#"services:
  always:
    image: busybox:local
    command: ["sh", "-c", "{SLEEPER}"]
    restart: always
  once:
    image: busybox:local
    command: ["sh", "-c", "exit 3"]
"#
    );
    let mut f = Fixture::new("restart", &compose);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    let first = f
        .ps(false)
        .into_iter()
        .find(|r| r.0.ends_with("-always-1"))
        .expect("always-1");
    // Killed behind berth's back: a new container takes the slot.
    let pid = f.container_pid(&first.1);
    // SAFETY: kill with plain integers on a pid of our test's container.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_for(
        || {
            f.ps(false)
                .iter()
                .any(|r| r.0.ends_with("-always-1") && r.1 != first.1 && r.2 == "running")
        },
        "the always service to be restarted",
    );
    // Removed behind berth's back: the same.
    let second = f
        .ps(false)
        .into_iter()
        .find(|r| r.0.ends_with("-always-1") && r.2 == "running")
        .expect("restarted");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--state-dir")
        .arg(f.state().join("run"))
        .args(["runtime", "stop", "-t", "1", &second.1])
        .output()
        .expect("runtime stop");
    assert!(out.status.success());
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--state-dir")
        .arg(f.state().join("run"))
        .args(["runtime", "delete", &second.1])
        .output()
        .expect("runtime delete");
    wait_for(
        || {
            f.ps(false)
                .iter()
                .any(|r| r.0.ends_with("-always-1") && r.1 != second.1 && r.2 == "running")
        },
        "the removed container to be replaced",
    );
    // restart: no (the default) leaves an exited container exited.
    let once: Vec<_> = f
        .ps(true)
        .into_iter()
        .filter(|r| r.0.ends_with("-once-1"))
        .collect();
    assert_eq!(once.len(), 1, "{once:?}");
    assert_eq!(once[0].2, "exited");
    let table = f.ok(&["ps", "-a"]);
    assert!(table.contains("Exited (3)"), "{table}");
    f.ok(&["down", "-t", "1"]);
}

#[test]
fn the_daemon_can_be_killed_and_restarted_without_touching_containers() {
    let compose = format!(
        "services:\n  web:\n    image: busybox:local\n    command: [\"sh\", \"-c\", \"{SLEEPER}\"]\n"
    );
    let mut f = Fixture::new("adopt", &compose);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    let before = f.ps(false);
    let pid = f.container_pid(&before[0].1);
    f.kill_daemon();
    assert!(alive(pid), "the container died with the daemon");
    // `up` starts a new daemon, which adopts the container: nothing is recreated.
    let out = f.berth(&["up", "-d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("started the berth daemon"));
    assert_eq!(f.ps(false), before);
    assert!(alive(pid));
    f.ok(&["down"]);
    assert!(!alive(pid));
    // The daemon `up` started is not our child.
    kill_daemon_of(&f.state());
}

/// Kills the daemon that serves `state` (one started by `up`, not by the fixture).
fn kill_daemon_of(state: &Path) {
    let want = state.to_str().expect("utf-8").to_string();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "daemon") && args.iter().any(|a| a == &want) {
            // SAFETY: plain integers; the pid is a berth daemon of this test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn named_volumes_survive_down_and_go_with_down_v() {
    let compose = r#"services:
  db:
    image: busybox:local
    command: ["sh", "-c", "cat /data/seen 2>/dev/null; echo run >> /data/seen; trap 'exit 0' TERM; sleep 1000 & wait"]
    volumes:
      - data:/data
volumes:
  data: {}
"#;
    let mut f = Fixture::new("vol", compose);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    let volume = f
        .state()
        .join("volumes")
        .join(format!("{}_data", f.project));
    wait_for(
        || volume.join("_data/seen").exists(),
        "the first run to write its file",
    );
    f.ok(&["down"]);
    assert!(volume.join("_data/seen").exists(), "volume removed by down");
    f.ok(&["up", "-d"]);
    wait_for(
        || f.ok(&["logs"]).contains("run"),
        "the second run to see the first's file",
    );
    f.ok(&["down", "-v"]);
    assert!(!volume.exists(), "down -v kept the volume");
}

#[test]
fn a_missing_image_stops_up_before_anything_changes() {
    // A loopback registry that is not there: the pull fails at once, offline too.
    let compose =
        "services:\n  web:\n    image: busybox:local\n  api:\n    image: 127.0.0.1:1/nothere:1\n";
    let mut f = Fixture::new("noimg", compose);
    f.start_daemon();
    let out = f.berth(&["up", "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("services.api.image"), "{err}");
    assert!(
        err.contains("berth image pull") || err.contains("pull it"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(f.ok(&["ls", "-q"]), "");
}

#[test]
fn a_failed_up_names_service_and_cause_and_the_next_up_or_down_handles_it() {
    // Someone else holds the port web wants.
    let holder = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let compose = format!(
        r#"services:
  web:
    image: busybox:local
    command: ["sh", "-c", "{SLEEPER}"]
    ports: ["{port}:80"]
  files:
    image: busybox:local
    command: ["sh", "-c", "{SLEEPER}"]
    volumes:
      - type: bind
        source: ./not-there
        target: /data
"#
    );
    let mut f = Fixture::new("upfail", &compose);
    f.start_daemon();
    let out = f.berth(&["up", "-d", "--wait", "--wait-timeout", "30"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("web") && err.contains(&format!("{port}/tcp")) && err.contains("in use"),
        "{err}"
    );
    assert!(
        err.contains("files") && err.contains("not-there"),
        "the bad bind source is named: {err}"
    );
    // Fix both causes: the next `up` finishes the job with what is there.
    drop(holder);
    std::fs::create_dir(f.dir().join("not-there")).expect("mkdir");
    f.ok(&["up", "-d", "--wait", "--wait-timeout", "30"]);
    let ps = f.ps(false);
    assert_eq!(ps.len(), 2, "{ps:?}");
    assert!(ps.iter().all(|r| r.2 == "running"), "{ps:?}");
    f.ok(&["down", "-t", "1"]);
    assert!(f.ps(true).is_empty());
}

#[test]
fn depends_on_completed_successfully_orders_and_fails_clearly() {
    let compose = format!(
        r#"services:
  migrate:
    image: busybox:local
    command: ["sh", "-c", "sleep 0.3; echo migrated > /shared/done"]
    volumes: [shared:/shared]
  app:
    image: busybox:local
    command: ["sh", "-c", "cat /shared/done; {SLEEPER}"]
    volumes: [shared:/shared]
    depends_on:
      migrate:
        condition: service_completed_successfully
volumes:
  shared: {{}}
"#
    );
    let mut f = Fixture::new("deps", &compose);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    wait_for(
        || f.ok(&["logs", "app"]).contains("migrated"),
        "app to see migrate's file",
    );
    f.ok(&["down", "-v"]);

    f.write_compose(&compose.replace("echo migrated > /shared/done", "exit 4"));
    let out = f.berth(&["up", "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"migrate\" did not complete successfully"),
        "{err}"
    );
    f.ok(&["down", "-v"]);
}

#[test]
fn attached_up_streams_prefixed_output_and_exit_code_from() {
    let compose = format!(
        r#"services:
  server:
    image: busybox:local
    command: ["sh", "-c", "echo serving; {SLEEPER}"]
  client:
    image: busybox:local
    command: ["sh", "-c", "sleep 0.3; echo client done; exit 7"]
  quiet:
    image: busybox:local
    attach: false
    command: ["sh", "-c", "echo not shown; {SLEEPER}"]
"#
    );
    let mut f = Fixture::new("attach", &compose);
    f.start_daemon();
    let out = f.berth(&["up", "--exit-code-from", "client"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{}-client-1 | client done", f.project)),
        "{stdout}"
    );
    assert!(stdout.contains("| serving"), "{stdout}");
    // `attach: false`: it ran, its output was not shown.
    assert!(!stdout.contains("not shown"), "{stdout}");
    assert!(stderr.contains("Aborting on container exit"), "{stderr}");
    // The stack is stopped, not removed.
    assert!(f.ps(false).is_empty());
    let all = f.ps(true);
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.iter().all(|r| r.2 == "exited"), "{all:?}");
    f.ok(&["down"]);
}

/// A registry of this test's own holding the busybox test image as
/// `tools/busybox:1`, and that image's full name.
fn registry_with_busybox() -> (testkit::registry::Registry, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tar = testkit::busybox_rootfs_tar(&tmp.path().join("img")).expect("rootfs tar");
    let layout = tmp.path().join("layout");
    testkit::oci::oci_layout(&tar, &layout, "1").expect("layout");
    let registry = testkit::registry::Registry::start().expect("registry");
    registry
        .push_layout(&layout, "1", "tools/busybox:1", None)
        .expect("push");
    let image = format!("{}/tools/busybox:1", registry.addr);
    (registry, image)
}

#[test]
fn pull_policies_with_an_age_pull_again_once_the_image_is_older() {
    // Kept alive (not `_`): dropping it stops the registry.
    let (_registry, image) = registry_with_busybox();
    let compose = |policy: &str| {
        format!(
            "services:\n  svc:\n    image: {image}\n    {policy}\n    command: [\"{SLEEPER}\"]\n"
        )
    };
    let mut f = Fixture::new(
        "pullage",
        &compose("pull_policy: refresh\n    pull_refresh_after: 1s"),
    );
    f.start_daemon();
    let up = |f: &Fixture| {
        let out = f.berth(&["up", "-d"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    // Missing: pulled.
    assert!(up(&f).contains("Pulling"));
    // Younger than a second: used as it is.
    let err = up(&f);
    assert!(!err.contains("Pulling"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Older: pulled again, saying why.
    let err = up(&f);
    assert!(err.contains("older than its pull_policy allows"), "{err}");
    // daily: pulled a moment ago, so not again.
    f.write_compose(&compose("pull_policy: daily"));
    let err = up(&f);
    assert!(!err.contains("Pulling"), "{err}");
    f.ok(&["down"]);
}

#[test]
fn up_pulls_missing_images_and_kill_rm_events_images_work() {
    // Kept alive (not `_`): dropping it stops the registry.
    let (_registry, image) = registry_with_busybox();
    // The test image's entrypoint is `/bin/sh -c`: the command is the script.
    let compose = format!("services:\n  svc:\n    image: {image}\n    command: [\"{SLEEPER}\"]\n");
    let mut f = Fixture::new("pull", &compose);
    f.start_daemon();

    // Events, in the background, from before the stack exists.
    let mut events = Command::new(env!("CARGO_BIN_EXE_berth"))
        .env("BERTH_CGROUP_PARENT", &f.project)
        .arg("--state-dir")
        .arg(f.state())
        .args(["events", "--json"])
        .current_dir(f.dir())
        .stdout(Stdio::piped())
        .spawn()
        .expect("events");

    let out = f.berth(&["up", "-d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Pulling"));
    let images = f.ok(&["images"]);
    assert!(
        images.contains("tools/busybox") && !images.contains("(missing)"),
        "{images}"
    );

    // kill: the container dies of the signal; restart is "no", so it stays exited.
    f.ok(&["kill", "-s", "KILL", "svc"]);
    wait_for(
        || f.ps(true).iter().any(|r| r.2 == "exited"),
        "the killed container to exit",
    );
    let table = f.ok(&["ps", "-a"]);
    assert!(table.contains("Exited (137)"), "{table}");
    // stop then rm: the container record goes.
    f.ok(&["stop"]);
    f.ok(&["rm"]);
    assert!(f.ps(true).is_empty(), "{:?}", f.ps(true));

    let _ = events.kill();
    let output = events.wait_with_output().expect("events output");
    let text = String::from_utf8_lossy(&output.stdout);
    let actions: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["action"].as_str().unwrap_or_default().to_string())
        .collect();
    for want in ["create", "start", "die", "destroy"] {
        assert!(
            actions.iter().any(|a| a == want),
            "no {want} event in {actions:?}"
        );
    }
    f.ok(&["down"]);
}

#[test]
fn example_secrets_files_have_the_owner_and_mode_asked_for() {
    let mut f = Fixture::for_examples("secrets");
    f.start_daemon();
    let out = f.example("secrets", &["up"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "I am app (1000:1000)",
        "/run/secrets/db_password: 400 app:app",
        "/run/secrets/api_token: 440 root:app",
        "/etc/app/app.conf: 444 root:root",
        "password is 15 bytes long",
        // From the example's .env: environment-sourced secrets read the project's env.
        "api token: token-from-the-environment",
        "log level: level = info",
        "secrets are read-only",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert!(f.example("secrets", &["down"]).status.success());
}

#[test]
fn example_workers_share_the_queue_and_scale() {
    let mut f = Fixture::for_examples("workers");
    f.start_daemon();
    for (args, workers) in [(vec!["up"], 3), (vec!["up", "--scale", "worker=5"], 5)] {
        let out = f.example("workers", &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let counts: Vec<u32> = stdout
            .lines()
            .filter_map(|l| l.split(" did ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(counts.len(), workers, "{stdout}");
        assert_eq!(counts.iter().sum::<u32>(), 30, "each job once: {stdout}");
        assert!(f.example("workers", &["down", "-v"]).status.success());
    }
}

#[test]
fn an_image_in_use_cannot_be_removed_until_its_containers_are() {
    let compose = format!(
        "services:\n  web:\n    image: busybox:local\n    command: [\"sh\", \"-c\", \"{SLEEPER}\"]\n"
    );
    let mut f = Fixture::new("inuse", &compose);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    let out = f.berth(&["image", "rm", "busybox:local"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is used by container(s)") && err.contains(&f.project),
        "{err}"
    );
    f.ok(&["down"]);
    f.ok(&["image", "rm", "busybox:local"]);
    assert!(!f.ok(&["image", "ls"]).contains("busybox"));
}

#[test]
fn healthchecks_gate_service_healthy_and_show_in_ps() {
    let compose = format!(
        r#"services:
  store:
    image: busybox:local
    command: ["sh", "-c", "sleep 0.5; touch /shared/ready; {SLEEPER}"]
    volumes: [shared:/shared]
    healthcheck:
      test: ["CMD-SHELL", "test -f /shared/ready"]
      interval: 1s
      start_period: 5s
      start_interval: 100ms
  app:
    image: busybox:local
    command: ["sh", "-c", "test -f /shared/ready && echo saw-ready || echo too-early; {SLEEPER}"]
    volumes: [shared:/shared]
    depends_on:
      store:
        condition: service_healthy
  sick:
    image: busybox:local
    command: ["sh", "-c", "{SLEEPER}"]
    healthcheck:
      test: ["CMD", "false"]
      interval: 100ms
      retries: 2
volumes:
  shared: {{}}
"#
    );
    let mut f = Fixture::new("health", &compose);
    f.start_daemon();
    let out = f.berth(&["up", "-d", "--wait", "--wait-timeout", "20", "store", "app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = f.ok(&["ps"]);
    assert!(table.contains("(healthy)"), "{table}");
    // app started only once store was healthy.
    let logs = f.ok(&["logs", "app"]);
    assert!(logs.contains("saw-ready"), "{logs}");
    let out = f.berth(&["up", "-d", "--wait", "--wait-timeout", "10"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sick-1 is unhealthy"), "{err}");
    wait_for(
        || f.ok(&["ps"]).contains("(unhealthy)"),
        "ps to show unhealthy",
    );
    f.ok(&["down"]);
}

#[test]
fn exec_runs_in_the_service_container() {
    let compose = format!(
        "services:\n  web:\n    image: busybox:local\n    hostname: webhost\n    environment:\n      GREETING: hi\n    command: [\"sh\", \"-c\", \"{SLEEPER}\"]\n"
    );
    let mut f = Fixture::new("exec", &compose);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    let out = f.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "echo $(hostname) $GREETING $EXTRA $(id -u) $(pwd)",
    ]);
    assert_eq!(out.trim(), "webhost hi 0 /");
    let out = f.ok(&[
        "exec",
        "-e",
        "EXTRA=x",
        "-u",
        "app",
        "-w",
        "/tmp",
        "web",
        "sh",
        "-c",
        "echo $EXTRA $(id -un) $(pwd)",
    ]);
    assert_eq!(out.trim(), "x app /tmp");
    let out = f.berth(&["exec", "-T", "web", "sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9));
    let out = f.berth(&["exec", "nope", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no running container"));
    f.ok(&["down"]);
}

#[test]
fn run_makes_a_one_off_container_with_its_exit_status() {
    let compose = format!(
        r#"services:
  db:
    image: busybox:local
    command: ["sh", "-c", "{SLEEPER}"]
  tool:
    image: busybox:local
    command: ["echo", "default command"]
    environment:
      MODE: file
    depends_on: [db]
"#
    );
    let mut f = Fixture::new("run", &compose);
    f.start_daemon();
    // The dependency is started first; the command and env are the run's.
    let out = f.berth(&[
        "run",
        "--rm",
        "-e",
        "MODE=cli",
        "tool",
        "sh",
        "-c",
        "echo mode=$MODE; exit 5",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "mode=cli");
    let ps = f.ps(true);
    assert_eq!(ps.len(), 1, "only db is left: {ps:?}");
    assert!(ps[0].0.ends_with("-db-1"));
    // Without --rm the one-off stays (exited) until down.
    let out = f.berth(&["run", "tool"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "default command"
    );
    assert!(f
        .ps(true)
        .iter()
        .any(|r| r.0.contains("-tool-run-") && r.2 == "exited"));
    f.ok(&["down"]);
    assert!(f.ps(true).is_empty());
}

#[test]
fn run_in_the_foreground_attaches_stdin_and_a_terminal_when_it_has_one() {
    let compose = r#"services:
  tool:
    image: busybox:local
    command: ["true"]
"#;
    let mut f = Fixture::new("runin", compose);
    f.start_daemon();
    // Piped stdin reaches the container, and its end ends `cat`; no terminal.
    let mut child = f
        .command(&["run", "--rm", "tool", "sh", "-c", "cat; tty; exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run berth");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"piped line 1\npiped line 2\n")
            .expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "piped line 1\npiped line 2\nnot a tty\n");

    // Ctrl-C on a one-off without a terminal reaches the container.
    let mut child = f
        .command(&[
            "run",
            "--rm",
            "tool",
            "sh",
            "-c",
            "trap 'echo got-int; exit 7' INT; echo ready; while true; do sleep 0.1; done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run berth");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).expect("read");
    assert_eq!(first, "ready\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("read");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(7), "{rest}");
    assert_eq!(rest, "got-int\n");

    // Under a terminal (util-linux `script` gives berth one), the one-off gets a
    // terminal of its own, sized like ours, and what we type.
    let berth = format!(
        "{} --state-dir {} run --rm tool sh -c 'tty; stty size; read x; echo got=$x'",
        env!("CARGO_BIN_EXE_berth"),
        f.state().display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &berth, "/dev/null"])
        .env("BERTH_CGROUP_PARENT", &f.project)
        .env("BERTH_NET_PREFIX", &f.net_prefix)
        .env("BERTH_NET_POOL", &f.net_pool)
        .env("COLUMNS", "111")
        .env("LINES", "37")
        .current_dir(f.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script (apt-get install -y bsdutils)");
    let mut stdin = child.stdin.take().expect("stdin");
    {
        use std::io::Write;
        // Typed after the container asks: the terminal echoes and delivers it.
        std::thread::sleep(Duration::from_millis(500));
        stdin.write_all(b"typed\n").expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    drop(stdin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("/dev/pts/0"), "{stdout}");
    assert!(stdout.contains("got=typed"), "{stdout}");
    assert!(f.ps(true).is_empty(), "--rm removed both");

    // `tty: true` keeps a shell waiting on its terminal, `stdin_open: true` keeps `cat`
    // reading, as with Docker; without them both would read EOF and exit at once.
    f.write_compose(
        r#"services:
  shell:
    image: busybox:local
    command: ["sh"]
    tty: true
  reader:
    image: busybox:local
    command: ["cat"]
    stdin_open: true
"#,
    );
    f.ok(&["up", "-d", "--wait"]);
    std::thread::sleep(Duration::from_millis(700));
    let ps = f.ps(true);
    assert_eq!(ps.len(), 2, "{ps:?}");
    assert!(ps.iter().all(|r| r.2 == "running"), "{ps:?}");
    let tty = f.ok(&["exec", "-T", "shell", "sh", "-c", "ls -l /proc/1/fd/0"]);
    assert!(tty.contains("/dev/pts/0"), "{tty}");
    f.ok(&["down", "-t", "1"]);
}

/// `GET path` on 127.0.0.1:port; the body.
fn http_get(port: u16, path: &str) -> String {
    http_get_at(
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
        path,
    )
}

/// `GET path` on `addr`; the body.
fn http_get_at(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text)
}

fn free_port() -> u16 {
    // Dual-stack: free on IPv4 and IPv6, as a published port needs.
    std::net::TcpListener::bind("[::]:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn example_quickstart_answers_on_its_published_port() {
    let mut f = Fixture::for_examples("quick");
    f.start_daemon();
    let port = free_port().to_string();
    let env = [("WEB_PORT", port.as_str())];
    let out = f.example_env(
        "quickstart",
        &["up", "-d", "--wait", "--wait-timeout", "60"],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port: u16 = port.parse().expect("port");
    // web -> api (by name, 2 replicas) -> store (by name, healthy, a volume).
    let first = http_get(port, "/");
    assert!(
        first.contains("Hello from berth!") && first.contains("visit number 1,"),
        "{first}"
    );
    let second = http_get(port, "/");
    assert!(second.contains("visit number 2,"), "{second}");
    let ps =
        String::from_utf8_lossy(&f.example_env("quickstart", &["ps"], &env).stdout).to_string();
    assert!(ps.contains(&format!("0.0.0.0:{port}->80/tcp")), "{ps}");
    // Also on the host's IPv6 addresses, through berth's relay.
    assert!(ps.contains(&format!("[::]:{port}->80/tcp")), "{ps}");
    let third = http_get_at(
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        "/",
    );
    assert!(third.contains("visit number 3,"), "{third}");
    let published = f.example_env("quickstart", &["port", "web", "80"], &env);
    assert_eq!(
        String::from_utf8_lossy(&published.stdout).trim(),
        format!("0.0.0.0:{port}")
    );
    // The count lives in the named volume: it survives down and up.
    assert!(f
        .example_env("quickstart", &["down"], &env)
        .status
        .success());
    let out = f.example_env(
        "quickstart",
        &["up", "-d", "--wait", "--wait-timeout", "60"],
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fourth = http_get(port, "/");
    assert!(fourth.contains("visit number 4,"), "{fourth}");
    assert!(f
        .example_env("quickstart", &["down", "-v"], &env)
        .status
        .success());
}

#[test]
fn top_stats_pause_and_unpause() {
    let compose = "services:\n  ticker:\n    image: busybox:local\n    init: true\n    command: [\"sh\", \"-c\", \"i=0; while true; do i=$$((i+1)); echo $$i > /tmp/n; sleep 0.05; done\"]\n";
    let mut f = Fixture::new("pause", compose);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    let top = f.ok(&["top"]);
    assert!(
        top.contains("-ticker-1") && top.contains("PID") && top.contains("sleep 0.05"),
        "{top}"
    );
    let stats = f.ok(&["stats", "--no-stream"]);
    assert!(
        stats.contains("-ticker-1") && stats.contains("MiB"),
        "{stats}"
    );
    let count = || -> u64 {
        f.ok(&["exec", "-T", "ticker", "cat", "/tmp/n"])
            .trim()
            .parse()
            .unwrap_or(0)
    };
    f.ok(&["pause"]);
    // exec cannot join a frozen cgroup's processes' work; read the file from the host.
    let state: serde_json::Value =
        serde_json::from_str(&f.ok(&["ps", "--format", "json"])).expect("ps");
    let id = state[0]["ID"].as_str().expect("id").to_string();
    let pid = f.container_pid(&id);
    let read = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/root/tmp/n"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let frozen = read();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(), frozen, "the counter moved while paused");
    f.ok(&["unpause"]);
    wait_for(|| read() > frozen, "the counter to move again");
    // `echo $i > /tmp/n` truncates before it writes: a read in between sees an empty
    // file (0), which a busy host makes likely enough to fail a single read.
    wait_for(|| count() > frozen, "exec to read the moving counter");
    f.ok(&["down"]);
}

#[test]
fn logs_follow_timestamps_and_since() {
    let compose = "services:\n  talker:\n    image: busybox:local\n    init: true\n    command: [\"sh\", \"-c\", \"echo early; sleep 0.5; echo late; sleep 1000\"]\n";
    let mut f = Fixture::new("logs", compose);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    // -f: a follower started now sees the line written later.
    let follower = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--state-dir")
        .arg(f.state())
        .args(["logs", "-f", "--no-log-prefix"])
        .current_dir(f.dir())
        .stdout(Stdio::piped())
        .spawn()
        .expect("logs -f");
    wait_for(|| f.ok(&["logs"]).contains("late"), "the late line");
    // -t: each line starts with its RFC 3339 time; --since that time drops the first.
    let stamped = f.ok(&["logs", "-t", "--no-log-prefix"]);
    let late_time = stamped
        .lines()
        .find(|l| l.ends_with(" late"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a stamped late line")
        .to_string();
    assert!(
        late_time.ends_with('Z') && late_time.contains('T'),
        "{stamped}"
    );
    let since = f.ok(&["logs", "--no-log-prefix", "--since", &late_time]);
    assert_eq!(since.trim(), "late");
    assert_eq!(
        f.ok(&["logs", "--no-log-prefix", "--since", "1h"]).trim(),
        "early\nlate"
    );
    let bad = f.berth(&["logs", "--since", "yesterday"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("give a duration"));
    // down ends the follower, which saw both lines.
    f.ok(&["down"]);
    let out = follower.wait_with_output().expect("follower output");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "early\nlate");
}

#[test]
fn down_stops_services_in_reverse_dependency_order() {
    let svc = |name: &str, dep: Option<&str>| {
        let deps = dep
            .map(|d| format!("    depends_on: [{d}]\n"))
            .unwrap_or_default();
        format!(
            "  {name}:\n    image: busybox:local\n    volumes: [shared:/shared]\n{deps}    command: [\"sh\", \"-c\", \"trap 'echo {name} >> /shared/order; exit 0' TERM; sleep 1000 & wait\"]\n"
        )
    };
    let compose = format!(
        "services:\n{}{}{}volumes:\n  shared: {{}}\n",
        svc("web", Some("api")),
        svc("api", Some("db")),
        svc("db", None)
    );
    let mut f = Fixture::new("order", &compose);
    f.start_daemon();
    f.ok(&["up", "-d"]);
    f.ok(&["down"]);
    let order = std::fs::read_to_string(
        f.state()
            .join("volumes")
            .join(format!("{}_shared", f.project))
            .join("_data/order"),
    )
    .expect("the order file");
    assert_eq!(order, "web\napi\ndb\n");
}

#[test]
fn the_socket_is_roots_unless_a_group_is_given() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    let mut f = Fixture::new("sock", "services: {}\n");
    f.start_daemon();
    let sock = f.state().join("berth.sock");
    assert_eq!(mode(&sock), 0o600);
    assert_eq!(mode(&f.state()), 0o700);
    f.kill_daemon();
    // Debian's nogroup exists on every machine of this kind.
    let gid = std::fs::read_to_string("/etc/group")
        .expect("/etc/group")
        .lines()
        .find_map(|l| {
            l.strip_prefix("nogroup:x:")?
                .split(':')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .expect("nogroup");
    f.start_daemon_env(&[("BERTH_SOCKET_GROUP", "nogroup")]);
    assert_eq!(mode(&sock), 0o660);
    assert_eq!(std::fs::metadata(&sock).expect("stat").gid(), gid);
    assert_eq!(mode(&f.state()), 0o711);
    f.kill_daemon();
    let _ = std::fs::remove_file(&sock);
    let mut bad = Command::new(env!("CARGO_BIN_EXE_berth"))
        .env("BERTH_SOCKET_GROUP", "no-such-group-here")
        .arg("--state-dir")
        .arg(f.state())
        .arg("daemon")
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    let status = bad.wait().expect("wait");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut bad.stderr.take().expect("stderr"), &mut err).expect("read");
    assert!(!status.success());
    assert!(
        err.contains("no-such-group-here") && err.contains("no such group"),
        "{err}"
    );
}

/// One request to the daemon's API over its socket, as the CLI sends them: the status
/// and the body.
fn api(state: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(state.join("berth.sock")).expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body.as_bytes()).expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn names_from_the_api_are_checked_before_they_become_paths() {
    let mut f = Fixture::new("apinames", "services: {}\n");
    f.start_daemon();
    // Where a stack, service or volume name with `../` would land if it were joined
    // under the state directory (images/pins/<id>, containers/<id>, volumes/<name>):
    // a unique name in /tmp, far enough up from any of them.
    let escape = format!("/tmp/{}", testkit::unique_name("berth-escape"));
    let trav = format!("../../../../../../../../../..{escape}");
    let enc = trav.replace('/', "%2F");
    let project = f.project.clone();
    let record = |stack: &str, extra: &str| {
        format!(
            r#"{{"record": {{"stack": {{"name": {stack:?}, "services": {{"web": {{"image": "busybox:local", "command": ["true"]}}}}{extra}}}}}}}"#
        )
    };
    let service = |name: &str| {
        format!(
            r#"{{"record": {{"stack": {{"name": {project:?}, "services": {{{name:?}: {{"image": "busybox:local"}}}}}}}}}}"#
        )
    };
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "PUT",
            format!("/v1/stacks/{enc}"),
            record(&trav, ""),
            "stack name",
        ),
        (
            "PUT",
            "/v1/stacks/..".into(),
            record("..", ""),
            "stack name",
        ),
        (
            "PUT",
            format!("/v1/stacks/{project}"),
            service(&trav),
            "services",
        ),
        (
            "PUT",
            format!("/v1/stacks/{project}"),
            record(
                &project,
                &format!(r#", "volumes": {{"data": {{"name": {trav:?}}}}}"#),
            ),
            "volumes.data.name",
        ),
        (
            "PUT",
            format!("/v1/stacks/{project}"),
            record(
                &project,
                &format!(r#", "secrets": {{"s": {{"content": "x", "name": {trav:?}}}}}"#),
            ),
            "secrets.s.name",
        ),
        (
            "PUT",
            format!("/v1/stacks/{project}"),
            record(&project, "").replace(
                r#""command": ["true"]"#,
                r#""secrets": [{"source": "../k", "target": "/k"}]"#,
            ),
            "services.web.secrets[0].source",
        ),
        (
            "PUT",
            format!("/v1/stacks/{project}"),
            format!(
                r#"{{"record": {{"stack": {{"name": {project:?}}}, "oneoffs": {{{trav:?}: {{"image": "busybox:local"}}}}}}}}"#
            ),
            "oneoffs",
        ),
        (
            "DELETE",
            format!("/v1/stacks/{enc}"),
            String::new(),
            "stack name",
        ),
        (
            "POST",
            format!("/v1/stacks/{enc}/runs"),
            r#"{"service": "web"}"#.into(),
            "stack name",
        ),
        (
            "POST",
            format!("/v1/stacks/{project}/runs"),
            format!(r#"{{"service": {trav:?}, "definition": {{"image": "busybox:local"}}}}"#),
            "service",
        ),
        (
            "POST",
            format!("/v1/stacks/{project}/stop"),
            format!(r#"{{"services": [{trav:?}]}}"#),
            "services",
        ),
        (
            "DELETE",
            format!("/v1/stacks/{project}/run/{enc}"),
            String::new(),
            "one-off",
        ),
        (
            "GET",
            format!("/v1/tasks/{enc}/logs"),
            String::new(),
            "task id",
        ),
        (
            "GET",
            format!("/v1/tasks/{enc}/top"),
            String::new(),
            "task id",
        ),
    ];
    for (method, path, body, field) in &cases {
        let (status, answer) = api(&f.state(), method, path, body);
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        assert!(
            answer.contains(field),
            "{method} {path}: names {field}? {answer}"
        );
    }
    // Nothing was deployed, and nothing was written where the names pointed, even
    // after the agent had time to act on a stored stack.
    std::thread::sleep(Duration::from_secs(1));
    let (status, state) = api(&f.state(), "GET", "/v1/state", "");
    assert_eq!(status, 200, "{state}");
    let state: serde_json::Value = serde_json::from_str(&state).expect("state json");
    assert!(
        state["stacks"].as_object().is_none_or(|m| m.is_empty()),
        "{state}"
    );
    assert!(
        state["tasks"].as_object().is_none_or(|m| m.is_empty()),
        "{state}"
    );
    let name = Path::new(&escape).file_name().expect("name").to_owned();
    let strays: Vec<_> = std::fs::read_dir("/tmp")
        .expect("/tmp")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&*name.to_string_lossy())
        })
        .map(|e| e.path())
        .collect();
    assert!(
        strays.is_empty(),
        "written outside the state directory: {strays:?}"
    );
    // A valid request still works.
    let (status, answer) = api(
        &f.state(),
        "PUT",
        &format!("/v1/stacks/{project}"),
        &record(&project, ""),
    );
    assert_eq!(status, 200, "{answer}");
    f.ok(&["down", "-t", "1"]);
}

#[test]
fn a_container_that_cannot_start_says_why_in_ps_events_up_and_the_log() {
    // web's program is not in the image (the runtime's exec fails); files' bind
    // source does not exist (the bundle cannot be made).
    let compose = r#"services:
  web:
    image: busybox:local
    command: ["/no/such/program"]
  files:
    image: busybox:local
    command: ["sleep", "1000"]
    volumes:
      - type: bind
        source: ./not-there
        target: /data
"#;
    let mut f = Fixture::new("nostart", compose);
    f.start_daemon();
    let events_out = f.tmp.path().join("events.txt");
    let mut events = f
        .command(&["events"])
        .stdout(std::fs::File::create(&events_out).expect("events file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("berth events");
    // `events` streams from its start: wait until it has connected (a socket among
    // its descriptors), and give the daemon a moment to start watching for it.
    let fds = format!("/proc/{}/fd", events.id());
    wait_for(
        || {
            std::fs::read_dir(&fds).is_ok_and(|d| {
                d.flatten().any(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
            })
        },
        "berth events to connect",
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = f.berth(&["up", "-d"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up must fail: {err}");
    assert!(!err.contains("Started"), "{err}");
    assert!(
        err.contains("web-1") && err.contains("/no/such/program"),
        "{err}"
    );
    assert!(
        err.contains("files-1") && err.contains("not-there"),
        "{err}"
    );

    // ps, without -a too: both say why, as status and as the JSON's Error.
    let out = f.ok(&["ps", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("ps json");
    assert_eq!(rows.len(), 2, "{out}");
    for (service, reason) in [("web", "/no/such/program"), ("files", "not-there")] {
        let row = rows
            .iter()
            .find(|r| r["Service"] == service)
            .unwrap_or_else(|| panic!("no {service} in {out}"));
        let status = row["Status"].as_str().unwrap_or_default();
        assert!(
            status.starts_with("Error: ") && status.contains(reason),
            "{row}"
        );
        assert!(
            row["Error"].as_str().unwrap_or_default().contains(reason),
            "{row}"
        );
        assert_eq!(row["State"], "dead", "{row}");
    }
    let table = f.ok(&["ps"]);
    assert!(!table.contains("Exited (0)"), "{table}");
    assert!(
        table.contains("Error: ") && table.contains("/no/such/program"),
        "{table}"
    );

    // events: each container's die carries the reason.
    wait_for(
        || {
            let text = std::fs::read_to_string(&events_out).unwrap_or_default();
            text.lines()
                .any(|l| l.contains(" die ") && l.contains("/no/such/program"))
                && text
                    .lines()
                    .any(|l| l.contains(" die ") && l.contains("not-there"))
        },
        "die events with the reasons",
    );
    let _ = events.kill();
    let _ = events.wait();

    // The daemon's log says it too.
    let log = std::fs::read_to_string(f.tmp.path().join("daemon.log")).expect("daemon log");
    for reason in ["/no/such/program", "not-there"] {
        assert!(
            log.lines()
                .any(|l| l.contains("could not start") && l.contains(reason)),
            "{log}"
        );
    }
    f.ok(&["down", "-t", "1"]);
}

#[test]
fn the_daemon_refuses_to_start_where_the_cgroup_hierarchy_is_not_visible() {
    // `ip netns exec` mounts a fresh sysfs for the command: /sys/fs/cgroup is empty.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    let ns = Netns(testkit::unique_name("nocg"));
    let made = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .expect("ip netns add");
    assert!(made.success());
    let f = Fixture::new("nocgroup", "services:\n  web:\n    image: busybox:local\n");
    let berth = |args: &[&str]| -> Output {
        let mut all = vec![
            "netns",
            "exec",
            &ns.0,
            env!("CARGO_BIN_EXE_berth"),
            "--state-dir",
        ];
        let state = f.state();
        let state = state.to_str().expect("utf-8");
        all.push(state);
        all.extend_from_slice(args);
        Command::new("ip")
            .args(&all)
            .env("BERTH_CGROUP_PARENT", &f.project)
            .env("BERTH_NET_PREFIX", &f.net_prefix)
            .env("BERTH_NET_POOL", &f.net_pool)
            .current_dir(f.dir())
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec berth")
    };
    let out = berth(&["daemon"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cgroup hierarchy not visible at /sys/fs/cgroup")
            && err.contains("ip netns exec")
            && err.contains("run berth daemon in the host's mount namespace"),
        "{err}"
    );
    // `up`, which starts a daemon when none answers, says why that one stopped.
    let out = berth(&["up", "-d"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("stopped at once") && err.contains("cgroup hierarchy not visible"),
        "{err}"
    );
}

/// `berth events` in the background: its output lines so far.
struct Events {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Events {
    fn start(f: &Fixture) -> Events {
        use std::io::BufRead;
        let mut child = f
            .command(&["events", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("berth events");
        let out = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Events { child, lines }
    }

    /// The events so far, as JSON values.
    fn all(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rolling_updates_roll_in_batches_roll_back_on_failure_and_berth_rollback_returns() {
    let file = |version: &str, check: &str| {
        format!(
            r#"services:
  web:
    image: busybox:local
    command: ["sh", "-c", "echo {version} > /version; {SLEEPER}"]
    healthcheck:
      test: ["CMD", "{check}"]
      interval: 200ms
      retries: 1
    deploy:
      replicas: 3
      update_config: {{parallelism: 2, delay: 2s, monitor: 1s, failure_action: rollback, order: start-first}}
      rollback_config: {{parallelism: 0, monitor: 300ms}}
"#
        )
    };
    let mut f = Fixture::new("rolling", &file("v1", "true"));
    f.start_daemon();
    f.ok(&["up", "-d", "--wait", "--wait-timeout", "30"]);
    let ids = |f: &Fixture| -> Vec<String> {
        let mut v: Vec<String> = f.ps(false).into_iter().map(|(_, id, _)| id).collect();
        v.sort();
        v
    };
    let versions = |f: &Fixture| -> Vec<String> {
        (1..=3)
            .map(|i| {
                f.ok(&["exec", "--index", &i.to_string(), "web", "cat", "/version"])
                    .trim()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(versions(&f), ["v1", "v1", "v1"]);

    // v2 rolls: two at a time, the third 2 s after the first two were healthy for 1 s.
    let events = Events::start(&f);
    std::thread::sleep(Duration::from_millis(300));
    f.write_compose(&file("v2", "true"));
    let plan = f.ok(&["up", "--dry-run"]);
    assert!(
        plan.contains("rolling: 2 at a time, start-first, 2000 ms apart, monitor 1000 ms, on failure rollback"),
        "{plan}"
    );
    let out = f.berth(&["up", "-d", "--wait", "--wait-timeout", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(versions(&f), ["v2", "v2", "v2"]);
    let all = events.all();
    let creates: Vec<u64> = all
        .iter()
        .filter(|e| e["action"] == "create" && e["service"] == "web")
        .map(|e| e["time"].as_u64().unwrap_or_default())
        .collect();
    assert_eq!(creates.len(), 3, "{all:#?}");
    assert!(creates[1] - creates[0] < 500, "a batch of two: {creates:?}");
    assert!(
        creates[2] - creates[1] >= 3_000,
        "monitor + delay: {creates:?}"
    );
    let updates: Vec<String> = all
        .iter()
        .filter(|e| e["action"] == "update")
        .map(|e| e["update"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(updates.iter().any(|u| u == "updating 2/3"), "{updates:?}");
    assert_eq!(
        updates.last().map(String::as_str),
        Some("update completed"),
        "{updates:?}"
    );
    let good = ids(&f);

    // A definition whose healthcheck fails: rolled back, the v2 tasks never touched
    // past the first batch, and `up --wait` says why.
    f.write_compose(&file("v3", "false"));
    let out = f.berth(&["up", "-d", "--wait", "--wait-timeout", "60"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the update of service web failed and"),
        "{err}"
    );
    assert!(err.contains("is unhealthy"), "{err}");
    wait_for(
        || f.ok(&["ls"]).contains("web: rolled back"),
        "the rollback to finish",
    );
    assert_eq!(versions(&f), ["v2", "v2", "v2"]);
    assert_eq!(
        ids(&f),
        good,
        "start-first rollback keeps the healthy tasks"
    );
    let ps = f.ok(&["ps"]);
    assert!(ps.contains("service web: rolled back: "), "{ps}");
    assert!(ps.contains("of 3 tasks failed"), "{ps}");

    // `berth rollback` returns to the definition before the last change (by
    // rollback_config: all at once): v1 deployed over v2, then rolled back to v2.
    f.write_compose(&file("v1", "true"));
    f.ok(&["up", "-d", "--wait", "--wait-timeout", "60"]);
    assert_eq!(versions(&f), ["v1", "v1", "v1"]);
    let out = f.ok(&["rollback", "web"]);
    assert!(out.is_empty(), "{out}");
    assert_eq!(versions(&f), ["v2", "v2", "v2"]);
    assert!(f
        .ok(&["ls"])
        .contains("web: rolled back: asked by berth rollback"));
    f.ok(&["down"]);
}

#[test]
fn max_failure_ratio_tolerates_its_share_then_failure_action_pause_stops_the_update() {
    // Replicas whose hostname ends in one of `sick` fail their healthcheck.
    let file = |version: &str, sick: &str| {
        format!(
            r#"services:
  web:
    image: busybox:local
    environment: {{VERSION: "{version}"}}
    command: ["sh", "-c", "{SLEEPER}"]
    healthcheck:
      test: ["CMD-SHELL", "case $$(hostname) in {sick}) exit 1;; esac"]
      interval: 200ms
      retries: 1
    deploy:
      replicas: 4
      update_config: {{parallelism: 0, monitor: 1s, max_failure_ratio: 0.5, failure_action: pause}}
"#
        )
    };
    let mut f = Fixture::new("ratio", &file("v1", "none"));
    f.start_daemon();
    f.ok(&["up", "-d", "--wait", "--wait-timeout", "30"]);
    // Two of four fail: within the ratio, the update completes and says so.
    f.write_compose(&file("v2", "*-1|*-2"));
    f.ok(&["up", "-d"]);
    wait_for(
        || {
            f.ok(&["ps"])
                .contains("service web: update completed: 2 of 4 tasks failed")
        },
        "the update to complete with two failures",
    );
    // Three of four: past the ratio, the update pauses and `up --wait` says why.
    f.write_compose(&file("v3", "*-1|*-2|*-3"));
    let out = f.berth(&["up", "-d", "--wait", "--wait-timeout", "30"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the update of service web is paused: 3 of 4 tasks failed"),
        "{err}"
    );
    assert!(
        f.ok(&["ls"]).contains("web: update paused"),
        "ls shows the pause"
    );
    f.ok(&["down", "-t", "1"]);
}

//! End to end: the real `berth` binary's `config` command, as a user runs it.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn berth(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .env_remove("COMPOSE_PROJECT_NAME")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("berth runs");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("berth exits")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn examples(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/compose")
        .join(name)
}

#[test]
fn config_prints_the_resolved_stack_and_reloads() {
    let dir = examples("webapp");
    let out = berth(&dir, &["config"], None);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(yaml.starts_with("name: webapp\nservices:\n"), "{yaml}");
    // The override file was found and merged, and only warnings went to stderr.
    assert!(
        text(&out.stderr)
            .lines()
            .all(|l| l.starts_with("berth: warning: ")),
        "{}",
        text(&out.stderr)
    );

    // The printed form is itself a Compose file that gives the same output.
    let again = berth(&dir, &["config", "-f", "-"], Some(&yaml));
    assert!(again.status.success(), "stderr: {}", text(&again.stderr));
    assert_eq!(text(&again.stdout), yaml);
}

#[test]
fn config_json_services_volumes_profiles_and_quiet() {
    let dir = examples("webapp");
    let out = berth(&dir, &["config", "--format", "json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["name"], "webapp");

    let out = berth(&dir, &["config", "--services"], None);
    assert_eq!(text(&out.stdout), "api\ncache\ndb\nweb\nworker\n");
    let out = berth(&dir, &["config", "--volumes"], None);
    assert_eq!(text(&out.stdout), "cache-data\ndb-data\nstatic-assets\n");
    let out = berth(&examples("profiles"), &["config", "--profiles"], None);
    assert!(out.status.success());
    assert!(!text(&out.stdout).is_empty());

    let out = berth(&dir, &["config", "-q"], None);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());

    // Naming a service shows it and what it depends on.
    let out = berth(&dir, &["config", "--services", "web"], None);
    assert_eq!(text(&out.stdout), "api\ncache\ndb\nweb\n");
}

#[test]
fn global_flags_work_before_and_after_the_verb() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.yaml"), "services:\n  one: {image: x}\n").expect("write");
    for args in [
        &["-f", "a.yaml", "-p", "demo", "config"][..],
        &["config", "-f", "a.yaml", "-p", "demo"][..],
    ] {
        let out = berth(dir.path(), args, None);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("name: demo\n"));
    }
    // Files given before and after the verb add up, in order.
    std::fs::write(dir.path().join("b.yaml"), "services:\n  two: {image: y}\n").expect("write");
    let out = berth(
        dir.path(),
        &["-f", "a.yaml", "config", "-f", "b.yaml", "--services"],
        None,
    );
    assert_eq!(text(&out.stdout), "one\ntwo\n", "{}", text(&out.stderr));
}

#[test]
fn errors_go_to_stderr_with_file_and_path_and_a_failing_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let compose = "services:\n  web:\n    image: nginx\n    ports: ['70000:80']\n    imgae: typo\n";
    std::fs::write(dir.path().join("compose.yaml"), compose).expect("write");
    let out = berth(dir.path(), &["config"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout when the load fails"
    );
    assert_eq!(
        text(&out.stderr),
        "berth: compose.yaml: services.web.ports[0]: port 70000 is out of range (1-65535)\n\
         berth: compose.yaml: services.web.imgae: unknown attribute; did you mean \"image\"?\n"
    );
}

#[test]
fn hostile_and_missing_input_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bomb: String = {
        let mut t = String::from("x0: &x0 [a, a, a, a, a, a, a, a, a]\n");
        for i in 1..10 {
            t.push_str(&format!(
                "x{i}: &x{i} [{}]\n",
                vec![format!("*x{}", i - 1); 9].join(", ")
            ));
        }
        t
    };
    let cases: &[(&str, &str)] = &[
        (&bomb, "alias bomb"),
        (
            "services: [a, b]",
            "-: services: expected a mapping, found a list",
        ),
        ("\u{0}\u{1}binary", "invalid YAML"),
        ("", "the file is empty"),
    ];
    for (input, want) in cases {
        let out = berth(dir.path(), &["config", "-f", "-"], Some(input));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{want}: {err}");
        assert!(err.contains(want), "want {want:?} in {err:?}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
    let out = berth(dir.path(), &["config"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no Compose file found"),
        "{}",
        text(&out.stderr)
    );
    let out = berth(dir.path(), &["config", "-f", "missing.yaml"], None);
    assert_eq!(
        text(&out.stderr),
        "berth: missing.yaml: no such file; check the path given with -f or COMPOSE_FILE\n"
    );
}

#[test]
fn project_directory_and_env_file_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).expect("mkdir");
    std::fs::write(
        app.join("compose.yaml"),
        "services:\n  web:\n    image: \"web:${TAG}\"\n    volumes: ['./data:/data']\n",
    )
    .expect("write");
    std::fs::write(app.join(".env"), "TAG=dotenv\n").expect("write");
    std::fs::write(dir.path().join("prod.env"), "TAG=prod\n").expect("write");

    // --project-directory: relative paths and .env are taken from there.
    let out = berth(
        dir.path(),
        &[
            "-f",
            "app/compose.yaml",
            "--project-directory",
            "app",
            "config",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(yaml.contains("image: web:dotenv"), "{yaml}");
    let data = app.join("data");
    assert!(
        yaml.contains(&format!("source: {}", data.display())),
        "{yaml}"
    );

    // --env-file replaces .env.
    let out = berth(
        dir.path(),
        &["-f", "app/compose.yaml", "--env-file", "prod.env", "config"],
        None,
    );
    assert!(
        text(&out.stdout).contains("image: web:prod"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn config_prints_lifecycle_hooks_in_their_long_form_without_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let compose = "name: hooks\nservices:\n  web:\n    image: busybox\n    \
        pre_start: [{command: 'sh -c \"echo init\"'}]\n    \
        post_start: [{command: touch /ready, user: root, privileged: true}]\n    \
        pre_stop: [{command: [sync], environment: [A=1]}]\n";
    std::fs::write(dir.path().join("compose.yaml"), compose).expect("write");
    let out = berth(dir.path(), &["config"], None);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "hooks are supported: no warning");
    let yaml = text(&out.stdout);
    assert!(
        yaml.contains(
            "    pre_start:\n    - command:\n      - sh\n      - -c\n      - echo init\n    \
             post_start:\n    - command:\n      - touch\n      - /ready\n      user: root\n      \
             privileged: true\n    pre_stop:\n    - command:\n      - sync\n      \
             environment:\n        A: '1'\n"
        ),
        "{yaml}"
    );
    let again = berth(dir.path(), &["config", "-f", "-"], Some(&yaml));
    assert_eq!(text(&again.stdout), yaml, "stderr: {}", text(&again.stderr));
}

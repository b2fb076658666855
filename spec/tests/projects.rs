//! Projects made of several files: overrides, extends, include, profiles, env files,
//! project names and file discovery. Each test writes its files into a temp directory.

mod common;

use common::{dir_with, errors, load_files as load, options, warnings};

#[test]
fn override_file_is_discovered_and_merged_with_reset_and_override() {
    let dir = dir_with(&[
        ("compose.yaml", "services:\n  web:\n    image: web:1\n    ports: ['8080:80']\n    environment: {A: '1', B: '2'}\n    dns: [1.1.1.1]\n"),
        ("compose.override.yaml", "services:\n  web:\n    image: web:2\n    ports: !override ['9090:80']\n    environment: {B: !reset null, C: '3'}\n    dns: !reset []\n"),
    ]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let web = &p.stack.services["web"];
    assert_eq!(web.image.as_deref(), Some("web:2"));
    assert_eq!(web.ports.len(), 1);
    assert_eq!(web.ports[0].published.map(|r| r.start), Some(9090));
    let env: Vec<_> = web.environment.keys().map(String::as_str).collect();
    assert_eq!(env, ["A", "C"]);
    assert!(web.dns.is_empty());
    assert_eq!(p.files.len(), 2);
}

#[test]
fn explicit_files_merge_in_order_and_errors_name_their_file() {
    let dir = dir_with(&[
        ("base.yaml", "services:\n  api:\n    image: api\n"),
        (
            "prod.yaml",
            "services:\n  api:\n    deploy: {replicas: 3}\n",
        ),
        (
            "broken.yaml",
            "services:\n  api:\n    deploy: {replicas: -1}\n",
        ),
    ]);
    let p = load(dir.path(), &["base.yaml", "prod.yaml"], &[])
        .unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(
        p.stack.services["api"]
            .deploy
            .as_ref()
            .and_then(|d| d.replicas),
        Some(3)
    );
    let e = load(dir.path(), &["base.yaml", "broken.yaml"], &[]).unwrap_err();
    assert_eq!(
        errors(&e),
        "broken.yaml: services.api.deploy.replicas: -1 is out of range (0-4294967295)"
    );
}

#[test]
fn extends_same_file_and_other_file_with_paths_relative_to_the_extended_file() {
    let dir = dir_with(&[
        ("compose.yaml", "services:\n  base:\n    image: app\n    environment: [A=1]\n  web:\n    extends: base\n    environment: [B=2]\n  worker:\n    extends: {file: lib/common.yaml, service: job}\n    command: [run]\n"),
        ("lib/common.yaml", "services:\n  job:\n    image: job\n    env_file: job.env\n    volumes: ['./cache:/cache']\n"),
        ("lib/job.env", "FROM_FILE=yes\n"),
    ]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let web = &p.stack.services["web"];
    assert_eq!(web.image.as_deref(), Some("app"));
    assert_eq!(web.environment.len(), 2);
    let worker = &p.stack.services["worker"];
    assert_eq!(worker.image.as_deref(), Some("job"));
    assert_eq!(worker.command.as_deref(), Some(&["run".to_string()][..]));
    assert_eq!(
        worker.environment.get("FROM_FILE"),
        Some(&Some("yes".into()))
    );
    let lib = dir.path().join("lib");
    assert_eq!(
        worker.volumes[0].source.as_deref(),
        Some(lib.join("cache").to_str().expect("utf8"))
    );
}

#[test]
fn extends_cycles_and_missing_services_are_errors() {
    let dir = dir_with(&[
        ("cycle.yaml", "services:\n  a: {image: x, extends: b}\n  b: {image: x, extends: c}\n  c: {image: x, extends: a}\n"),
        ("missing.yaml", "services:\n  a: {extends: {service: nope}}\n"),
    ]);
    let e = load(dir.path(), &["cycle.yaml"], &[]).unwrap_err();
    assert!(
        errors(&e).contains("extends cycle: a -> b -> c -> a"),
        "{}",
        errors(&e)
    );
    let e = load(dir.path(), &["missing.yaml"], &[]).unwrap_err();
    assert!(
        errors(&e).contains(
            "missing.yaml: services.a.extends: service \"nope\" not found in missing.yaml"
        ),
        "{}",
        errors(&e)
    );
}

#[test]
fn include_brings_resources_with_their_own_directory_and_env() {
    let dir = dir_with(&[
        ("compose.yaml", "include:\n  - db/compose.yaml\nservices:\n  web:\n    image: web\n    depends_on: [db]\n"),
        ("db/compose.yaml", "services:\n  db:\n    image: postgres:${PG_VERSION}\n    volumes: ['./data:/var/lib/postgresql/data']\nvolumes:\n  unused: {}\n"),
        ("db/.env", "PG_VERSION=16\n"),
    ]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let db = &p.stack.services["db"];
    assert_eq!(db.image.as_deref(), Some("postgres:16"));
    let data = dir.path().join("db/data");
    assert_eq!(db.volumes[0].source.as_deref(), data.to_str());
    assert!(p.stack.volumes.contains_key("unused"));
}

#[test]
fn include_cycles_and_missing_files_are_errors() {
    let dir = dir_with(&[
        (
            "loop.yaml",
            "include: [loop2.yaml]\nservices: {a: {image: x}}\n",
        ),
        (
            "loop2.yaml",
            "include: [loop.yaml]\nservices: {b: {image: x}}\n",
        ),
        (
            "missing.yaml",
            "include: [nope/compose.yaml]\nservices: {a: {image: x}}\n",
        ),
    ]);
    let e = load(dir.path(), &["loop.yaml"], &[]).unwrap_err();
    assert!(errors(&e).contains("include cycle"), "{}", errors(&e));
    let e = load(dir.path(), &["missing.yaml"], &[]).unwrap_err();
    assert!(
        errors(&e).contains("missing.yaml: include[0]: included file nope/compose.yaml not found"),
        "{}",
        errors(&e)
    );
}

const PROFILED: &str = "services:
  web: {image: web, depends_on: {debug: {condition: service_started, required: false}}}
  debug: {image: busybox, profiles: [debug]}
  migrate: {image: tool, profiles: [tools, ops]}
  api: {image: api, profiles: [full], depends_on: [db]}
  db: {image: db, profiles: [db]}
";

fn enabled(p: &spec::Project) -> Vec<&str> {
    p.stack.services.keys().map(String::as_str).collect()
}

#[test]
fn profiles_enable_services() {
    let dir = dir_with(&[("compose.yaml", PROFILED)]);
    let mut opts = options(dir.path(), &[]);
    let p = spec::load(&opts).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(enabled(&p), ["web"]);
    assert!(
        p.stack.services["web"].depends_on.is_empty(),
        "an optional dependency on a disabled service is dropped"
    );
    assert_eq!(p.all_profiles, ["db", "debug", "full", "ops", "tools"]);

    opts.profiles = vec!["debug".into()];
    let p = spec::load(&opts).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(enabled(&p), ["debug", "web"]);

    opts.profiles.clear();
    opts.environment
        .insert("COMPOSE_PROFILES".into(), "tools,db".into());
    let p = spec::load(&opts).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(enabled(&p), ["db", "migrate", "web"]);

    // Naming a service enables it and its profiles.
    let mut opts = options(dir.path(), &[]);
    opts.services = vec!["db".into()];
    let p = spec::load(&opts).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(enabled(&p), ["db", "web"]);

    // A required dependency on a disabled service is an error naming the profile.
    let mut opts = options(dir.path(), &[]);
    opts.profiles = vec!["full".into()];
    let e = spec::load(&opts).unwrap_err();
    assert_eq!(errors(&e), "compose.yaml: services.api.depends_on.db: service \"db\" is disabled by its profiles (db); enable one with --profile, or mark the dependency required: false");

    opts.profiles = vec!["*".into()];
    assert_eq!(
        enabled(&spec::load(&opts).expect("all profiles")),
        ["api", "db", "debug", "migrate", "web"]
    );

    let mut opts = options(dir.path(), &[]);
    opts.services = vec!["dbb".into()];
    assert!(errors(&spec::load(&opts).unwrap_err())
        .contains("no such service: dbb; did you mean \"db\"?"));
}

#[test]
fn environment_precedence_env_file_and_interpolation_warnings() {
    let dir = dir_with(&[
        ("compose.yaml", "services:\n  web:\n    image: \"web:${TAG:-latest}\"\n    environment:\n      FROM_DOTENV: $DOTENV_ONLY\n      UNSET: ${NOT_SET_ANYWHERE}\n"),
        (".env", "TAG=from-dotenv\nDOTENV_ONLY=dotenv\n"),
        ("other.env", "TAG=from-other\n"),
    ]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(
        p.stack.services["web"].image.as_deref(),
        Some("web:from-dotenv")
    );
    assert_eq!(
        p.stack.services["web"].environment["FROM_DOTENV"].as_deref(),
        Some("dotenv")
    );
    assert_eq!(warnings(&p), "compose.yaml: services.web.environment.UNSET: variable NOT_SET_ANYWHERE is not set; using an empty string");

    // The process environment wins over .env.
    let p = load(dir.path(), &[], &[("TAG", "from-shell")]).expect("loads");
    assert_eq!(
        p.stack.services["web"].image.as_deref(),
        Some("web:from-shell")
    );

    // --env-file replaces .env.
    let mut opts = options(dir.path(), &[]);
    opts.env_files = vec!["other.env".into()];
    let p = spec::load(&opts).expect("loads");
    assert_eq!(
        p.stack.services["web"].image.as_deref(),
        Some("web:from-other")
    );

    let missing = dir_with(&[(
        "compose.yaml",
        "services:\n  web:\n    image: ${IMAGE:?set IMAGE to the image to run}\n",
    )]);
    let e = load(missing.path(), &[], &[]).unwrap_err();
    assert_eq!(errors(&e), "compose.yaml: services.web.image: required variable IMAGE is missing a value: set IMAGE to the image to run");
}

#[test]
fn an_ipv6_address_on_a_network_without_ipv6_is_named_in_a_warning() {
    let dir = dir_with(&[(
        "compose.yaml",
        "services:\n  web:\n    image: web\n    networks:\n      v4: {ipv6_address: 'fd00::5'}\n      v6: {ipv6_address: 'fd01::5'}\nnetworks:\n  v4: {}\n  v6: {enable_ipv6: true, ipam: {config: [{subnet: 'fd01::/64'}]}}\n",
    )]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let w = warnings(&p);
    assert!(
        w.contains("compose.yaml: services.web.networks.v4.ipv6_address: network \"v4\" does not set enable_ipv6: true"),
        "{w}"
    );
    assert!(!w.contains("networks.v6.ipv6_address"), "{w}");
}

#[test]
fn label_files_are_read_relative_to_the_project_and_labels_win() {
    let dir = dir_with(&[
        ("compose.yaml", "services:\n  web:\n    image: web\n    label_file: [meta/a.labels, ./b.labels]\n    labels: {c: from-labels}\n"),
        ("meta/a.labels", "# comment\na=from-a\nb=from-a\nc=from-a\n"),
        ("b.labels", "b=from-b\n"),
    ]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let web = &p.stack.services["web"];
    assert_eq!(web.labels["a"], "from-a");
    assert_eq!(web.labels["b"], "from-b", "a later file wins");
    assert_eq!(web.labels["c"], "from-labels", "labels win over files");
    assert!(web.label_file[0].ends_with("meta/a.labels") && web.label_file[0].starts_with('/'));
}

#[test]
fn env_file_attribute_is_read_and_environment_wins() {
    let dir = dir_with(&[
        ("compose.yaml", "services:\n  web:\n    image: web\n    env_file: [web.env, {path: optional.env, required: false}]\n    environment: {B: from-environment}\n"),
        ("web.env", "# comment\nA=from-file\nB=from-file\nexport C=\"quoted value\"\n"),
    ]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let env = &p.stack.services["web"].environment;
    assert_eq!(env["A"].as_deref(), Some("from-file"));
    assert_eq!(env["B"].as_deref(), Some("from-environment"));
    assert_eq!(env["C"].as_deref(), Some("quoted value"));

    let dir = dir_with(&[(
        "compose.yaml",
        "services:\n  web: {image: web, env_file: nope.env}\n",
    )]);
    let e = load(dir.path(), &[], &[]).unwrap_err();
    assert!(
        errors(&e).starts_with("compose.yaml: services.web.env_file: cannot read env file "),
        "{}",
        errors(&e)
    );
}

#[test]
fn project_name_precedence_and_normalization() {
    let dir = dir_with(&[(
        "My Project/compose.yaml",
        "services:\n  web: {image: web}\n",
    )]);
    let project_dir = dir.path().join("My Project");
    let name = |opts: &spec::LoadOptions| {
        spec::load(opts)
            .map(|p| p.stack.name)
            .map_err(|e| errors(&e))
    };

    let mut opts = options(&project_dir, &[]);
    assert_eq!(
        name(&opts).as_deref(),
        Ok("myproject"),
        "directory name, normalized"
    );
    assert_eq!(
        spec::load(&opts).expect("loads").stack.networks["default"].name,
        "myproject_default"
    );

    opts.environment
        .insert("COMPOSE_PROJECT_NAME".into(), "from-env".into());
    assert_eq!(name(&opts).as_deref(), Ok("from-env"));
    opts.project_name = Some("from-flag".into());
    assert_eq!(name(&opts).as_deref(), Ok("from-flag"));
    opts.project_name = Some("Bad Name".into());
    assert_eq!(name(&opts).unwrap_err(), "-p: invalid project name \"Bad Name\": it must contain only lowercase letters, digits, '-' and '_', and start with a letter or digit (for example \"badname\")");

    let dir = dir_with(&[(
        "compose.yaml",
        "name: named-in-file\nservices:\n  web: {image: web}\n",
    )]);
    assert_eq!(
        name(&options(dir.path(), &[])).as_deref(),
        Ok("named-in-file")
    );
}

#[test]
fn discovery_searches_parent_directories_and_compose_file_variable() {
    let dir = dir_with(&[
        ("docker-compose.yml", "services:\n  legacy: {image: x}\n"),
        ("deep/er/placeholder", ""),
        ("alt/one.yaml", "services:\n  one: {image: x}\n"),
        ("alt/two.yaml", "services:\n  two: {image: x}\n"),
    ]);
    let p = spec::load(&options(&dir.path().join("deep/er"), &[]))
        .unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert!(p.stack.services.contains_key("legacy"));
    assert_eq!(p.project_dir, dir.path());

    let p = spec::load(&options(
        dir.path(),
        &[("COMPOSE_FILE", "alt/one.yaml:alt/two.yaml")],
    ))
    .expect("loads");
    assert_eq!(p.stack.services.keys().collect::<Vec<_>>(), ["one", "two"]);

    let empty = tempfile::tempdir().expect("tempdir");
    let e = spec::load(&options(empty.path(), &[])).unwrap_err();
    assert!(
        errors(&e).contains("no Compose file found in"),
        "{}",
        errors(&e)
    );
}

#[test]
fn unsupported_attributes_warn_by_name_and_are_kept() {
    let dir = dir_with(&[("compose.yaml", "version: '3.8'\nservices:\n  web:\n    image: web\n    runtime: runsc\n    use_api_socket: true\n")]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let w = warnings(&p);
    assert!(
        w.contains("compose.yaml: version: the attribute is obsolete and ignored"),
        "{w}"
    );
    assert!(
        w.contains("compose.yaml: services.web.runtime: not supported by berth yet"),
        "{w}"
    );
    assert!(
        w.contains("compose.yaml: services.web.use_api_socket: not supported by berth yet"),
        "{w}"
    );
    assert!(p.stack.services["web"].unsupported.contains_key("runtime"));
}

#[test]
fn update_config_warns_when_its_monitor_is_too_short_and_when_start_first_cannot_be() {
    let file = "services:
  web:
    image: web
    healthcheck: {test: [CMD, check], interval: 10s, retries: 3, start_period: 5s}
    deploy:
      update_config: {parallelism: 1, monitor: 20s}
      rollback_config: {monitor: 40s}
  api:
    image: api
    healthcheck: {test: [CMD, check]}
    deploy:
      update_config: {order: start-first}
  worker:
    image: worker
    ports: [{target: 80, published: 8080, mode: host}]
    deploy:
      update_config: {monitor: 1s, order: start-first}
";
    let dir = dir_with(&[("compose.yaml", file)]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let w = warnings(&p);
    // berth acts on them: no "not supported" warning.
    assert!(!w.contains("not acted on"), "{w}");
    assert!(!w.contains("update_config: not supported"), "{w}");
    // A host-mode port cannot be held by an old and a new task at once.
    assert!(
        w.contains("compose.yaml: services.worker.deploy.update_config.order: start-first will be done as stop-first: host port 8080 is published in host mode"),
        "{w}"
    );
    assert!(
        !w.contains("services.api.deploy.update_config.order"),
        "{w}"
    );
    // 20 s < 5 s + 10 s x 3; 40 s is enough.
    assert!(
        w.contains("compose.yaml: services.web.deploy.update_config.monitor: monitor 20s is shorter than the healthcheck's start_period + interval x retries (35s)"),
        "{w}"
    );
    assert!(!w.contains("rollback_config.monitor"), "{w}");
    // Swarm's default monitor (5 s) against Docker's default check (30 s x 3).
    assert!(
        w.contains("services.api.deploy.update_config.monitor: monitor 5s is shorter than the healthcheck's start_period + interval x retries (1m30s)"),
        "{w}"
    );
    // No healthcheck: nothing to miss.
    assert!(!w.contains("worker.deploy.update_config.monitor"), "{w}");
    assert_eq!(
        p.stack.services["web"]
            .deploy
            .as_ref()
            .and_then(|d| d.update_config.as_ref())
            .and_then(|u| u.parallelism),
        Some(1),
        "kept in the stack"
    );
}

#[test]
fn dependency_cycles_are_reported_once_each() {
    let dir = dir_with(&[("compose.yaml", "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n  c: {image: x, depends_on: [a]}\n  d: {image: x, depends_on: [d]}\n")]);
    let e = load(dir.path(), &[], &[]).unwrap_err();
    assert_eq!(
        errors(&e),
        "compose.yaml: services.d.depends_on.d: a service cannot depend on itself\n\
         compose.yaml: services.a.depends_on: dependency cycle: a -> b -> c -> a"
    );
}

/// Regression tests for behaviour a review found different from Compose.
mod compose_parity {
    use super::*;

    #[test]
    fn compose_project_name_is_set_for_interpolation() {
        let dir = dir_with(&[(
            "app/compose.yaml",
            "services:\n  web: {image: x, container_name: \"${COMPOSE_PROJECT_NAME}-web\"}\n",
        )]);
        let app = dir.path().join("app");
        let p = spec::load(&options(&app, &[])).unwrap_or_else(|e| panic!("{}", errors(&e)));
        assert_eq!(
            p.stack.services["web"].container_name.as_deref(),
            Some("app-web")
        );
        let mut opts = options(&app, &[]);
        opts.project_name = Some("foo".into());
        let p = spec::load(&opts).expect("loads");
        assert_eq!(
            p.stack.services["web"].container_name.as_deref(),
            Some("foo-web")
        );
    }

    #[test]
    fn name_attribute_is_normalized_not_rejected() {
        let dir = dir_with(&[(
            "compose.yaml",
            "name: MyProj\nservices:\n  web: {image: x}\n",
        )]);
        assert_eq!(
            load(dir.path(), &[], &[]).expect("loads").stack.name,
            "myproj"
        );
    }

    #[test]
    fn included_projects_see_the_parents_variables_and_the_parent_wins() {
        let dir = dir_with(&[
            (
                "compose.yaml",
                "include: [sub/compose.yaml]\nservices:\n  web: {image: web}\n",
            ),
            (".env", "TAG=from-parent\n"),
            (
                "sub/compose.yaml",
                "services:\n  db: {image: \"db:${TAG}\", labels: [\"own=${OWN}\"]}\n",
            ),
            ("sub/.env", "TAG=from-include\nOWN=include-default\n"),
        ]);
        let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
        assert_eq!(
            p.stack.services["db"].image.as_deref(),
            Some("db:from-parent")
        );
        assert_eq!(p.stack.services["db"].labels["own"], "include-default");
    }

    #[test]
    fn identical_resources_from_includes_are_one_resource() {
        let dir = dir_with(&[
            ("compose.yaml", "include: [a/compose.yaml, b/compose.yaml]\nservices:\n  web: {image: web, networks: [proxy]}\nnetworks:\n  proxy: {external: true}\n"),
            ("a/compose.yaml", "services:\n  a: {image: a, networks: [proxy]}\nnetworks:\n  proxy: {external: true}\n"),
            ("b/compose.yaml", "services:\n  b: {image: b, networks: [proxy]}\nnetworks:\n  proxy: {external: true}\n"),
        ]);
        let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
        assert_eq!(p.stack.services.len(), 3);
        assert_eq!(p.stack.networks["proxy"].name, "proxy");
    }

    #[test]
    fn override_files_may_hold_partial_objects() {
        let dir = dir_with(&[
            ("a.yaml", "services:\n  web: {image: x, secrets: [s1], ulimits: {nofile: {soft: 10, hard: 20}}}\nsecrets:\n  s1: {file: ./s.txt}\n"),
            ("b.yaml", "services:\n  web: {ulimits: {nofile: {soft: 15}}}\nsecrets:\n  s1: {name: custom_s1}\n"),
        ]);
        let p = load(dir.path(), &["a.yaml", "b.yaml"], &[])
            .unwrap_or_else(|e| panic!("{}", errors(&e)));
        assert_eq!(p.stack.secrets["s1"].name, "custom_s1");
        assert!(p.stack.secrets["s1"]
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("/s.txt")));
        let nofile = &p.stack.services["web"].ulimits["nofile"];
        assert_eq!((nofile.soft, nofile.hard), (15, 20));
    }

    #[test]
    fn problems_name_the_file_that_holds_them() {
        let dir = dir_with(&[
            ("a.yaml", "services:\n  web: {image: x}\n"),
            (
                "b.yaml",
                "services:\n  web: {depends_on: [nope], devices: [/dev/fuse]}\n",
            ),
            (
                "inc.yaml",
                "include: [sub/compose.yaml]\nservices:\n  top: {image: x}\n",
            ),
            (
                "sub/compose.yaml",
                "services:\n  inner: {image: x, networks: [missing]}\n",
            ),
            (
                "ext.yaml",
                "services:\n  web: {extends: {file: common/base.yaml, service: base}}\n",
            ),
            (
                "common/base.yaml",
                "services:\n  base: {image: x, restrat: always}\n",
            ),
        ]);
        let e = load(dir.path(), &["a.yaml", "b.yaml"], &[]).unwrap_err();
        assert!(
            errors(&e).starts_with("b.yaml: services.web.depends_on.nope: "),
            "{}",
            errors(&e)
        );
        let dir_ok = dir_with(&[
            ("a.yaml", "services:\n  web: {image: x}\n"),
            ("b.yaml", "services:\n  web: {runtime: runsc}\n"),
        ]);
        let p = load(dir_ok.path(), &["a.yaml", "b.yaml"], &[]).expect("loads");
        assert!(
            warnings(&p).starts_with("b.yaml: services.web.runtime: not supported"),
            "{}",
            warnings(&p)
        );
        let e = load(dir.path(), &["inc.yaml"], &[]).unwrap_err();
        assert!(
            errors(&e).starts_with("sub/compose.yaml: services.inner.networks.missing: "),
            "{}",
            errors(&e)
        );
        let e = load(dir.path(), &["ext.yaml"], &[]).unwrap_err();
        assert!(
            errors(&e).starts_with("common/base.yaml: services.base.restrat: unknown attribute"),
            "{}",
            errors(&e)
        );
    }

    #[test]
    fn profile_flag_replaces_compose_profiles() {
        let dir = dir_with(&[
            ("compose.yaml", "services:\n  web: {image: x}\n  tool: {image: x, profiles: [tools]}\n  data: {image: x, profiles: [data]}\n"),
            (".env", "COMPOSE_PROFILES=data\n"),
        ]);
        let mut opts = options(dir.path(), &[]);
        assert_eq!(enabled(&spec::load(&opts).expect("loads")), ["data", "web"]);
        opts.profiles = vec!["tools".into()];
        assert_eq!(enabled(&spec::load(&opts).expect("loads")), ["tool", "web"]);
    }

    #[test]
    fn local_bind_volume_device_is_made_absolute() {
        let dir = dir_with(&[("compose.yaml", "services:\n  web: {image: x, volumes: ['data:/data']}\nvolumes:\n  data:\n    driver: local\n    driver_opts: {type: none, o: bind, device: ./data}\n")]);
        let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
        let device = &p.stack.volumes["data"].driver_opts["device"];
        assert_eq!(std::path::Path::new(device), dir.path().join("data"));
    }

    #[test]
    fn raw_env_files_are_taken_literally() {
        let dir = dir_with(&[
            (
                "compose.yaml",
                "services:\n  web: {image: x, env_file: [{path: raw.env, format: raw}]}\n",
            ),
            ("raw.env", "PASS=\"a$b\"\nX=${HOME}\n"),
        ]);
        let p = load(dir.path(), &[], &[("HOME", "/root")])
            .unwrap_or_else(|e| panic!("{}", errors(&e)));
        let env = &p.stack.services["web"].environment;
        assert_eq!(env["PASS"].as_deref(), Some("\"a$b\""));
        assert_eq!(env["X"].as_deref(), Some("${HOME}"));
        assert_eq!(
            p.stack.services["web"].env_file[0].format.as_deref(),
            Some("raw")
        );
    }

    #[test]
    fn extension_fields_are_kept_or_named() {
        let dir = dir_with(&[("compose.yaml", "services:\n  web: {image: x, deploy: {x-note: hi}}\nnetworks:\n  n: {x-owner: team-a}\n")]);
        let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
        assert!(p.stack.networks["n"].extensions.contains_key("x-owner"));
        assert!(warnings(&p).contains("compose.yaml: services.web.deploy.x-note: extension fields are kept at the top level"), "{}", warnings(&p));
    }
}

#[test]
fn interpolation_touches_values_never_keys() {
    let dir = dir_with(&[(
        "compose.yaml",
        "services:\n  web:\n    image: x\n    labels:\n      \"${KEY}\": \"${VALUE}\"\n",
    )]);
    let p = load(dir.path(), &[], &[("KEY", "k"), ("VALUE", "v")])
        .unwrap_or_else(|e| panic!("{}", errors(&e)));
    let labels = &p.stack.services["web"].labels;
    assert_eq!(labels.get("${KEY}").map(String::as_str), Some("v"));
}

#[test]
fn a_seccomp_profile_file_is_read_at_load_relative_to_the_project() {
    let profile = r#"{"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#;
    let dir = dir_with(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: web\n    security_opt: ['seccomp=profiles/strict.json']\n",
        ),
        ("profiles/strict.json", profile),
    ]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let text = spec::canonical::to_yaml(&p.stack).expect("prints");
    assert!(
        text.contains(r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"action":"SCMP_ACT_ERRNO","names":["mkdir"]}]}"#),
        "{text}"
    );
    // What `berth config` printed loads back to the same service.
    let again = dir_with(&[("compose.yaml", text.as_str())]);
    let q = load(again.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(
        q.stack.services["web"].security_opt,
        p.stack.services["web"].security_opt
    );
}

#[test]
fn a_missing_or_malformed_seccomp_profile_is_a_load_error() {
    let dir = dir_with(&[
        (
            "compose.yaml",
            "services:\n  a:\n    image: x\n    security_opt: ['seccomp=nope.json']\n  b:\n    image: x\n    security_opt: ['seccomp=bad.json']\n",
        ),
        ("bad.json", r#"{"syscalls": []}"#),
    ]);
    let e = errors(&load(dir.path(), &[], &[]).expect_err("must fail"));
    assert!(
        e.contains("services.a.security_opt[0]: cannot read the seccomp profile"),
        "{e}"
    );
    assert!(e.contains("nope.json"), "{e}");
    assert!(
        e.contains("services.b.security_opt[0]:") && e.contains("not in Docker's format"),
        "{e}"
    );
}

#[test]
fn apparmor_and_selinux_options_warn_that_they_are_not_applied() {
    let dir = dir_with(&[(
        "compose.yaml",
        "services:\n  web:\n    image: web\n    security_opt: [apparmor=docker-default, 'label=type:svirt_t']\n",
    )]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let w = warnings(&p);
    assert!(w.contains("services.web.security_opt[0]: not applied: berth's runtime does not load AppArmor profiles"), "{w}");
    assert!(w.contains("services.web.security_opt[1]: not applied: berth's runtime does not set SELinux labels"), "{w}");
}

#[test]
fn security_opt_and_group_add_merge_as_lists_oom_score_adj_is_replaced() {
    let dir = dir_with(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: web\n    security_opt: [no-new-privileges]\n    group_add: [wheel]\n    oom_score_adj: 100\n",
        ),
        (
            "compose.override.yaml",
            "services:\n  web:\n    security_opt: [no-new-privileges, seccomp=unconfined]\n    group_add: ['1234']\n    oom_score_adj: 200\n",
        ),
    ]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let web = &p.stack.services["web"];
    let opts: Vec<String> = web.security_opt.iter().map(ToString::to_string).collect();
    assert_eq!(opts, ["no-new-privileges:true", "seccomp=unconfined"]);
    assert_eq!(web.group_add, ["wheel", "1234"]);
    assert_eq!(web.oom_score_adj, Some(200));
}

#[test]
fn lifecycle_hooks_append_across_files_and_a_bad_one_names_its_file() {
    // compose-go appends sequences it has no special rule for: an override adds hooks
    // after the base file's, and `!reset` drops them.
    let dir = dir_with(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: web\n    post_start: [{command: [a]}]\n    pre_stop: [{command: [x]}]\n",
        ),
        (
            "compose.override.yaml",
            "services:\n  web:\n    post_start: [{command: [b], user: root}]\n    pre_stop: !reset []\n",
        ),
    ]);
    let p = load(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let web = &p.stack.services["web"];
    let commands: Vec<&[String]> = web.post_start.iter().map(|h| &h.command[..]).collect();
    assert_eq!(commands, [&["a".to_string()][..], &["b".to_string()][..]]);
    assert_eq!(web.post_start[1].user.as_deref(), Some("root"));
    assert!(web.pre_stop.is_empty(), "{:?}", web.pre_stop);
    assert!(!warnings(&p).contains("post_start"), "{}", warnings(&p));

    let dir = dir_with(&[
        ("compose.yaml", "services:\n  web:\n    image: web\n"),
        (
            "compose.override.yaml",
            "services:\n  web:\n    post_start: [{user: root}]\n",
        ),
    ]);
    let e = load(dir.path(), &[], &[]).expect_err("a hook without a command");
    assert!(
        errors(&e)
            .contains("compose.override.yaml: services.web.post_start[0]: a hook needs a command"),
        "{}",
        errors(&e)
    );
}

//! Cases where berth must decide as compose-go (the library behind `docker compose`)
//! does; each table row is one file and what loading it must give. The cases are
//! learnt from compose-go's own tests (`loader/`, `validation/`, `types/`).

mod common;

use common::{errors, load_text};

/// Loads `text` and returns the error lines, or "" if it loaded.
fn load_errors(text: &str) -> String {
    match load_text(text, &[]) {
        Ok(_) => String::new(),
        Err(e) => errors(&e),
    }
}

/// Each (file, expected substrings of the errors) must fail with all of them.
fn check_refused(cases: &[(&str, &[&str])]) {
    for (text, expected) in cases {
        let got = load_errors(text);
        assert!(!got.is_empty(), "loaded but must be refused:\n{text}");
        for want in *expected {
            assert!(
                got.contains(want),
                "error of\n{text}\nis\n{got}\nmissing {want:?}"
            );
        }
    }
}

const DB: &str = "  db:\n    image: postgres\n";

#[test]
fn service_references_are_implicit_dependencies() {
    // (attribute in `web`, the dependency it makes, whether it restarts with it)
    let cases = [
        ("links: [db]", true),
        ("links: ['db:database']", true),
        ("volumes_from: [db]", false),
        ("volumes_from: ['db:ro']", false),
        ("network_mode: service:db", true),
        ("ipc: service:db", true),
        ("pid: service:db", true),
    ];
    for (attr, restart) in cases {
        let text = format!("services:\n  web:\n    image: web\n    {attr}\n{DB}");
        let p = load_text(&text, &[]).unwrap_or_else(|e| panic!("{attr}: {}", errors(&e)));
        let dep = p.stack.services["web"].depends_on.get("db");
        let dep = dep.unwrap_or_else(|| panic!("{attr}: no dependency on db"));
        assert_eq!(
            dep.condition,
            spec::model::Condition::ServiceStarted,
            "{attr}"
        );
        assert!(dep.required, "{attr}");
        assert_eq!(dep.restart, restart, "{attr}");
    }
    // A container, not a service: no dependency.
    let text = "services:\n  web:\n    image: web\n    volumes_from: ['container:other']\n";
    let p = load_text(text, &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert!(p.stack.services["web"].depends_on.is_empty());
    // An explicit depends_on keeps its own condition.
    let text = format!("services:\n  web:\n    image: web\n    links: [db]\n    depends_on: {{db: {{condition: service_healthy}}}}\n{DB}");
    let p = load_text(&text, &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(
        p.stack.services["web"].depends_on["db"].condition,
        spec::model::Condition::ServiceHealthy
    );
}

#[test]
fn references_to_undefined_services_are_errors_at_their_path() {
    let web = |attr: &str| format!("services:\n  web:\n    image: web\n    {attr}\n{DB}");
    let cases = [
        (
            web("links: [dbb]"),
            "services.web.links[0]: service \"dbb\" is not defined; did you mean \"db\"?",
        ),
        (
            web("links: ['cache:c']"),
            "services.web.links[0]: service \"cache\" is not defined",
        ),
        (
            web("volumes_from: [db, 'nope:ro']"),
            "services.web.volumes_from[1]: service \"nope\" is not defined",
        ),
        (
            web("network_mode: service:dbb"),
            "services.web.network_mode: service \"dbb\" is not defined",
        ),
        (
            web("ipc: service:x"),
            "services.web.ipc: service \"x\" is not defined",
        ),
        (
            web("pid: service:x"),
            "services.web.pid: service \"x\" is not defined",
        ),
    ];
    for (text, want) in &cases {
        let got = load_errors(text);
        // One error, naming the file and then the path.
        assert!(
            got.lines().count() == 1 && got.starts_with(&format!("-: {want}")),
            "{text}\ngave {got}\nnot {want}"
        );
    }
    // Implicit dependencies take part in the cycle check.
    let text = "services:\n  a:\n    image: a\n    links: [b]\n  b:\n    image: b\n    network_mode: service:a\n";
    assert!(
        load_errors(text).contains("dependency cycle: a -> b -> a"),
        "{}",
        load_errors(text)
    );
}

#[test]
fn conflicting_attributes_are_refused() {
    check_refused(&[
        (
            "services:\n  web:\n    image: web\n    environment: ['DEBUG = true']\n",
            &["services.web.environment[0]", "space"],
        ),
        ("name: 123\nservices:\n  web:\n    image: web\n", &["name", "string"]),
        (
            "services:\n  web:\n    image: web\nvolumes:\n  v: {external: true, driver: local}\n",
            &["volumes.v", "external", "driver"],
        ),
        (
            "services:\n  web:\n    image: web\nvolumes:\n  v: {external: true, labels: {a: b}}\n",
            &["volumes.v", "external", "labels"],
        ),
        (
            "services:\n  web:\n    image: web\nvolumes:\n  v: {external: true, driver_opts: {a: b}}\n",
            &["volumes.v", "external", "driver_opts"],
        ),
        (
            "services:\n  web:\n    image: web\n    network_mode: host\n    networks: [front]\nnetworks:\n  front: {}\n",
            &["services.web.networks", "network_mode"],
        ),
        (
            "services:\n  web:\n    image: web\n    tmpfs: [/data]\n    volumes: ['v:/data']\nvolumes:\n  v: {}\n",
            &["services.web.volumes[0]", "/data", "tmpfs[0]"],
        ),
        (
            "services:\n  web:\n    image: web\n    volumes: ['v:/data', '/data']\nvolumes:\n  v: {}\n",
            &["services.web.volumes[1]", "/data", "volumes[0]"],
        ),
        (
            "services:\n  web:\n    build: {context: ., dockerfile: Dockerfile, dockerfile_inline: 'FROM x'}\n",
            &["services.web.build", "dockerfile_inline"],
        ),
        (
            "services:\n  web:\n    image: web\n    cpus: 1\n    deploy: {resources: {limits: {cpus: '2'}}}\n",
            &["services.web.cpus", "deploy.resources.limits.cpus"],
        ),
        (
            "services:\n  web:\n    image: web\n    mem_limit: 1g\n    deploy: {resources: {limits: {memory: 2g}}}\n",
            &["services.web.mem_limit", "deploy.resources.limits.memory"],
        ),
    ]);
}

#[test]
fn agreeing_attributes_are_accepted() {
    let ok = [
        "services:\n  web:\n    image: web\n    environment: ['DEBUG=a b', 'X= y']\n",
        "services:\n  web:\n    image: web\n    cpus: 1.5\n    deploy: {resources: {limits: {cpus: '1.5'}}}\n",
        // compose-go refuses `external` with other keys on volumes only: a network may
        // carry a driver beside it.
        "services:\n  web:\n    image: web\n    networks: [n]\nnetworks:\n  n: {external: true, driver: overlay}\n",
        "services:\n  web:\n    image: web\nvolumes:\n  v: {external: true, name: real, x-note: kept}\n",
        "services:\n  web:\n    image: web\n    network_mode: host\n",
    ];
    for text in ok {
        let got = load_errors(text);
        assert!(got.is_empty(), "{text}\nwas refused: {got}");
    }
}

#[test]
fn files_compose_go_accepts_load() {
    // A fixed address on an external network: its subnet is not known here.
    let text = "services:\n  web:\n    image: web\n    networks: {front: {ipv4_address: 10.5.0.7}}\nnetworks:\n  front: {external: true}\n";
    let p = load_text(text, &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let front = &p.stack.services["web"].networks["front"];
    assert_eq!(front.ipv4_address.as_deref(), Some("10.5.0.7"));

    // Several addresses for one host, in both separators (compose-go splits on commas).
    let text = "services:\n  web:\n    image: web\n    extra_hosts: ['h=10.0.0.1,10.0.0.2', 'g:10.0.0.3,::2', 'v6=::1']\n";
    let p = load_text(text, &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(
        p.stack.services["web"].extra_hosts,
        ["h=10.0.0.1", "h=10.0.0.2", "g=10.0.0.3", "g=::2", "v6=::1"]
    );
}

#[test]
fn empty_override_files_change_nothing() {
    let base = "services:\n  web:\n    image: web\n";
    for empty in ["", "# nothing yet\n"] {
        // Discovered next to compose.yaml.
        let dir = common::dir_with(&[("compose.yaml", base), ("compose.override.yaml", empty)]);
        let p = common::load_files(dir.path(), &[], &[])
            .unwrap_or_else(|e| panic!("{empty:?}: {}", errors(&e)));
        assert_eq!(p.stack.services["web"].image.as_deref(), Some("web"));
        assert_eq!(p.files.len(), 2);
        // Named with -f.
        let dir = common::dir_with(&[("a.yaml", base), ("b.yaml", empty)]);
        let p = common::load_files(dir.path(), &["a.yaml", "b.yaml"], &[])
            .unwrap_or_else(|e| panic!("{empty:?}: {}", errors(&e)));
        assert_eq!(p.stack.services["web"].image.as_deref(), Some("web"));
    }
    // Alone, an empty file is still refused: there is no project in it.
    let dir = common::dir_with(&[("compose.yaml", "")]);
    assert!(common::load_files(dir.path(), &[], &[]).is_err());
}

#[test]
fn a_service_both_included_and_defined_locally_is_merged_local_wins() {
    let dir = common::dir_with(&[
        (
            "compose.yaml",
            "include: [sub/compose.yaml]\nservices:\n  db:\n    image: mine\n    environment: {B: local}\n  app:\n    image: app\n    environment: !override {ONLY: this}\n",
        ),
        (
            "sub/compose.yaml",
            "services:\n  db:\n    image: theirs\n    environment: {A: included, B: included}\n  app:\n    image: app\n    environment: {DROPPED: yes}\n",
        ),
    ]);
    let p = common::load_files(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let db = &p.stack.services["db"];
    assert_eq!(db.image.as_deref(), Some("mine"));
    assert_eq!(db.environment.get("A"), Some(&Some("included".into())));
    assert_eq!(db.environment.get("B"), Some(&Some("local".into())));
    let env: Vec<&str> = p.stack.services["app"]
        .environment
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(env, ["ONLY"]);
}

/// Loads `base` overridden by `over` (two `-f` files).
fn merged(base: &str, over: &str) -> spec::Project {
    let dir = common::dir_with(&[("base.yaml", base), ("over.yaml", over)]);
    common::load_files(dir.path(), &["base.yaml", "over.yaml"], &[])
        .unwrap_or_else(|e| panic!("{}", errors(&e)))
}

#[test]
fn override_keeps_every_extra_host() {
    let p = merged(
        "services:\n  web:\n    image: web\n    extra_hosts: ['h=10.0.0.1', 'a:10.0.0.2']\n",
        "services:\n  web:\n    extra_hosts: {h: 10.0.0.3, a: 10.0.0.2}\n",
    );
    assert_eq!(
        p.stack.services["web"].extra_hosts,
        ["h=10.0.0.1", "a=10.0.0.2", "h=10.0.0.3"]
    );
}

#[test]
fn override_merge_rules_of_compose_go() {
    let s = |p: &spec::Project, path: &[&str]| -> serde_norway::Value {
        let web = &p.stack.services["web"];
        let mut v = serde_norway::to_value(web).expect("serializable");
        for key in path {
            v = v.get(*key).cloned().unwrap_or_default();
        }
        v
    };
    let yaml = |text: &str| -> serde_norway::Value { serde_norway::from_str(text).expect("yaml") };

    // Extensions merge deeply, as any mapping does.
    let p = merged(
        "services:\n  web:\n    image: web\n    x-meta: {owner: a, tags: [one], deep: {k: 1}}\nx-top: {a: 1}\n",
        "services:\n  web:\n    x-meta: {team: b, tags: [two], deep: {j: 2}}\nx-top: {b: 2}\n",
    );
    assert_eq!(
        s(&p, &["x-meta"]),
        yaml("{owner: a, tags: [one, two], deep: {k: 1, j: 2}, team: b}")
    );
    assert_eq!(p.stack.extensions["x-top"], yaml("{a: 1, b: 2}"));

    // Devices are unique by their path in the container; the later one wins in place.
    let p = merged(
        "services:\n  web:\n    image: web\n    devices: ['/dev/sda:/dev/sda', '/dev/sdb:/dev/xvdb:r', '/dev/fuse']\n",
        "services:\n  web:\n    devices: ['/dev/nvme0n1:/dev/sda', '/dev/fuse', '/dev/sdc:/dev/sdc']\n",
    );
    assert_eq!(
        s(&p, &["devices"]),
        yaml("[{source: /dev/nvme0n1, target: /dev/sda, permissions: rwm}, {source: /dev/sdb, target: /dev/xvdb, permissions: r}, {source: /dev/fuse, target: /dev/fuse, permissions: rwm}, {source: /dev/sdc, target: /dev/sdc, permissions: rwm}]")
    );

    // blkio_config device lists append: compose-go does not make them unique by path.
    let p = merged(
        "services:\n  web:\n    image: web\n    blkio_config: {weight: 300, device_read_bps: [{path: /dev/sda, rate: 1k}]}\n",
        "services:\n  web:\n    blkio_config: {device_read_bps: [{path: /dev/sda, rate: 2k}]}\n",
    );
    assert_eq!(
        s(&p, &["blkio_config"]),
        yaml("{weight: 300, device_read_bps: [{path: /dev/sda, rate: 1024}, {path: /dev/sda, rate: 2048}]}")
    );

    // links and build tags: appended, each once.
    let p = merged(
        "services:\n  web:\n    image: web\n    links: [db, 'cache:c']\n    build: {context: ., tags: ['a:1', 'b:1']}\n  db: {image: db}\n  cache: {image: c}\n",
        "services:\n  web:\n    links: ['cache:c', db2]\n    build: {tags: ['b:1', 'c:1']}\n  db2: {image: db}\n",
    );
    assert_eq!(s(&p, &["links"]), yaml("[db, 'cache:c', db2]"));
    assert_eq!(s(&p, &["build", "tags"]), yaml("['a:1', 'b:1', 'c:1']"));

    // env_file: unique by path, whichever form names it.
    let dir = common::dir_with(&[
        (
            "base.yaml",
            "services:\n  web:\n    image: web\n    env_file: [a.env, b.env]\n",
        ),
        (
            "over.yaml",
            "services:\n  web:\n    env_file: [{path: a.env, required: false}, c.env]\n",
        ),
        ("a.env", "A=1\n"),
        ("b.env", "B=1\n"),
        ("c.env", "C=1\n"),
    ]);
    let p = common::load_files(dir.path(), &["base.yaml", "over.yaml"], &[])
        .unwrap_or_else(|e| panic!("{}", errors(&e)));
    let files: Vec<(String, bool)> = p.stack.services["web"]
        .env_file
        .iter()
        .map(|f| {
            let name = std::path::Path::new(&f.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            (name.unwrap_or_default(), f.required)
        })
        .collect();
    assert_eq!(
        files,
        [
            ("a.env".into(), false),
            ("b.env".into(), true),
            ("c.env".into(), true)
        ]
    );
}

#[test]
fn override_merges_ipam_pools_of_one_subnet() {
    let p = merged(
        "services:\n  web: {image: web}\nnetworks:\n  n:\n    ipam:\n      config:\n        - {subnet: 10.1.0.0/16, aux_addresses: {a: 10.1.0.5}}\n        - {subnet: 10.2.0.0/16}\n",
        "networks:\n  n:\n    ipam:\n      config:\n        - {subnet: 10.1.0.0/16, gateway: 10.1.0.1, aux_addresses: {b: 10.1.0.6}}\n        - {subnet: 10.3.0.0/16}\n",
    );
    let pools = &p.stack.networks["n"].ipam.as_ref().expect("ipam").config;
    let subnets: Vec<_> = pools
        .iter()
        .map(|p| p.subnet.clone().unwrap_or_default())
        .collect();
    assert_eq!(subnets, ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"]);
    assert_eq!(pools[0].gateway.as_deref(), Some("10.1.0.1"));
    let aux: Vec<_> = pools[0].aux_addresses.keys().map(String::as_str).collect();
    assert_eq!(aux, ["a", "b"]);
}

#[test]
fn dot_env_discovery_as_docker_compose() {
    let sub = "services:\n  web:\n    image: web:${TAG}\n    profiles: [extra]\n  base:\n    image: base:${OTHER:-none}\n";
    // The working directory's .env names the file, sets TAG and the profiles; the
    // project directory's .env (sub/) only adds what it did not set.
    let dir = common::dir_with(&[
        (
            ".env",
            "COMPOSE_FILE=sub/compose.yaml\nTAG=x\nCOMPOSE_PROFILES=extra\n",
        ),
        ("sub/compose.yaml", sub),
        ("sub/.env", "TAG=ignored\nOTHER=y\n"),
    ]);
    let p = common::load_files(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(p.stack.services["web"].image.as_deref(), Some("web:x"));
    assert_eq!(p.stack.services["base"].image.as_deref(), Some("base:y"));
    // The process environment still wins over both.
    let p = common::load_files(dir.path(), &[], &[("TAG", "env")])
        .unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(p.stack.services["web"].image.as_deref(), Some("web:env"));

    // COMPOSE_DISABLE_ENV_FILE: no default .env at all (so no COMPOSE_FILE either).
    let dir = common::dir_with(&[
        (".env", "TAG=x\n"),
        (
            "compose.yaml",
            "services:\n  web:\n    image: web:${TAG:-unset}\n",
        ),
    ]);
    let p = common::load_files(dir.path(), &[], &[("COMPOSE_DISABLE_ENV_FILE", "true")])
        .unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(p.stack.services["web"].image.as_deref(), Some("web:unset"));
    let e =
        common::load_files(dir.path(), &[], &[("COMPOSE_DISABLE_ENV_FILE", "maybe")]).unwrap_err();
    assert!(
        errors(&e).contains("COMPOSE_DISABLE_ENV_FILE"),
        "{}",
        errors(&e)
    );

    // COMPOSE_ENV_FILES: a comma-separated list used instead of .env, later files win.
    let dir = common::dir_with(&[
        (".env", "TAG=dotenv\n"),
        ("a.env", "TAG=a\nA=1\n"),
        ("b.env", "TAG=b\n"),
        (
            "compose.yaml",
            "services:\n  web:\n    image: web:${TAG}-${A}\n",
        ),
    ]);
    let p = common::load_files(dir.path(), &[], &[("COMPOSE_ENV_FILES", "a.env,b.env")])
        .unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert_eq!(p.stack.services["web"].image.as_deref(), Some("web:b-1"));
    // ... and, named but missing, it is an error.
    let e = common::load_files(dir.path(), &[], &[("COMPOSE_ENV_FILES", "nope.env")]).unwrap_err();
    assert!(errors(&e).contains("nope.env"), "{}", errors(&e));

    // A .env that is a directory is not an env file: skipped.
    let dir = common::dir_with(&[
        (".env/keep", ""),
        ("compose.yaml", "services:\n  web:\n    image: web\n"),
    ]);
    common::load_files(dir.path(), &[], &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
}

#[test]
fn volume_targets_are_cleaned_and_long_binds_create_their_source() {
    let text = "services:\n  web:\n    image: web\n    volumes:\n      - ./a:/data/../x\n      - v:/srv//cache/./\n      - {type: bind, source: ./b, target: /b/, bind: {propagation: rshared}}\n      - {type: bind, source: ./c, target: /c, bind: {create_host_path: false}}\n      - {type: bind, source: ./d, target: /d}\nvolumes:\n  v: {}\n";
    let p = load_text(text, &[]).unwrap_or_else(|e| panic!("{}", errors(&e)));
    let vols = &p.stack.services["web"].volumes;
    let targets: Vec<&str> = vols.iter().map(|m| m.target.as_str()).collect();
    assert_eq!(targets, ["/x", "/srv/cache", "/b", "/c", "/d"]);
    let create: Vec<Option<bool>> = vols
        .iter()
        .map(|m| m.bind.as_ref().map(|b| b.create_host_path))
        .collect();
    // A `bind:` section without create_host_path means true, as in compose-go; a long
    // bind without one has no bind options at all (compose-go's nil).
    assert_eq!(create, [Some(true), None, Some(true), Some(false), None]);
    // Cleaned first, two mounts on one path are found.
    let text =
        "services:\n  web:\n    image: web\n    tmpfs: [/x]\n    volumes: ['./a:/data/../x']\n";
    assert!(
        load_errors(text)
            .contains("services.web.volumes[0]: /x is already mounted by services.web.tmpfs[0]"),
        "{}",
        load_errors(text)
    );
}

#[test]
fn a_self_referencing_alias_is_reported_as_such() {
    for text in [
        "x-a: &a [*a]\nservices:\n  web: {image: web}\n",
        "x-a: &a {k: *a}\nservices:\n  web: {image: web}\n",
    ] {
        let got = load_errors(text);
        assert!(!got.contains("nested too deeply"), "{text}: {got}");
        assert!(
            got.contains("the anchor &a is used inside its own value"),
            "{text}: {got}"
        );
    }
}

#[test]
fn a_reference_to_a_service_disabled_by_profiles_is_reported_where_it_is_written() {
    let text = "services:\n  web:\n    image: web\n    links: [db]\n  db:\n    image: db\n    profiles: [data]\n";
    assert_eq!(
        load_errors(text),
        "-: services.web.links[0]: service \"db\" is disabled by its profiles (data); enable one with --profile"
    );
    let mut opts = common::options(std::path::Path::new("/nonexistent/berth-test/app"), &[]);
    opts.files = vec!["-".into()];
    opts.stdin_text = Some(text.to_string());
    opts.profiles = vec!["data".into()];
    let p = spec::load(&opts).unwrap_or_else(|e| panic!("{}", errors(&e)));
    assert!(p.stack.services["web"].depends_on.contains_key("db"));
}

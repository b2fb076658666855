//! One row per form of a service attribute: what a user writes, and the canonical long
//! form berth carries (as `berth config` prints it). Reads like the Compose spec.

mod common;

use common::{errors, load_text};

/// Loads `services: {s: <attrs>}` (with the networks/volumes/secrets/configs the rows
/// refer to) and returns service `s` in canonical YAML, without the lines every service
/// gets (image, default network).
fn canonical(attrs: &str) -> String {
    let indented: String = attrs.lines().map(|l| format!("    {l}\n")).collect();
    let text = format!(
        "services:\n  s:\n    image: busybox\n{indented}  other:\n    image: busybox\n\
         networks: {{front: {{}}, back: {{ipam: {{config: [{{subnet: 10.5.0.0/16}}]}}}}}}\n\
         volumes: {{data: {{}}}}\n\
         secrets: {{token: {{file: ./token.txt}}}}\n\
         configs: {{conf: {{content: hello}}}}\n"
    );
    let env = [
        ("HOST_PORT", "9090"),
        ("PASSED", "from-env"),
        ("COMPOSE_PROFILES", "debug"),
    ];
    let project = load_text(&text, &env).unwrap_or_else(|e| panic!("{attrs}\n-> {}", errors(&e)));
    let mut svc = project.stack.services["s"].clone();
    svc.image = None;
    if svc.networks.keys().eq(["default"]) {
        svc.networks.clear();
    }
    serde_norway::to_string(&svc).expect("serializes")
}

fn check(cases: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for (input, want) in cases {
        let got = canonical(input);
        let want: String = want
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
            .collect();
        let want = want.trim_start_matches('\n');
        if got.trim_end() != want.trim_end() {
            failures.push(format!(
                "--- input:\n{input}\n--- want:\n{want}\n--- got:\n{got}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn ports() {
    check(&[
        ("ports: ['80']", "
  ports:
  - target: 80
    protocol: tcp
    mode: ingress"),
        ("ports: ['8080:80/udp']", "
  ports:
  - target: 80
    published: '8080'
    protocol: udp
    mode: ingress"),
        ("ports: ['127.0.0.1:${HOST_PORT}:80']", "
  ports:
  - target: 80
    published: '9090'
    host_ip: 127.0.0.1
    protocol: tcp
    mode: ingress"),
        ("ports: ['[::1]:8080:80']", "
  ports:
  - target: 80
    published: '8080'
    host_ip: ::1
    protocol: tcp
    mode: ingress"),
        ("ports: ['8000-8001:9000-9001']", "
  ports:
  - target: 9000
    published: '8000'
    protocol: tcp
    mode: ingress
  - target: 9001
    published: '8001'
    protocol: tcp
    mode: ingress"),
        ("ports: ['8000-8010:80']", "
  ports:
  - target: 80
    published: 8000-8010
    protocol: tcp
    mode: ingress"),
        ("ports: [{target: 80, published: 8080, protocol: udp, mode: host, name: web, app_protocol: http}]", "
  ports:
  - name: web
    target: 80
    published: '8080'
    protocol: udp
    mode: host
    app_protocol: http"),
    ]);
}

#[test]
fn volumes() {
    check(&[
        ("volumes: ['data:/data:ro,nocopy']", "
  volumes:
  - type: volume
    source: data
    target: /data
    read_only: true
    volume:
      nocopy: true"),
        ("volumes: ['/var/data']", "
  volumes:
  - type: volume
    target: /var/data"),
        ("volumes: ['./conf:/etc/app:ro,rshared']", "
  volumes:
  - type: bind
    source: /nonexistent/berth-test/app/conf
    target: /etc/app
    read_only: true
    bind:
      propagation: rshared
      create_host_path: true"),
        ("volumes: [{type: bind, source: ../shared, target: /shared, bind: {create_host_path: false, selinux: z}}]", "
  volumes:
  - type: bind
    source: /nonexistent/berth-test/shared
    target: /shared
    bind:
      create_host_path: false
      selinux: z"),
        ("volumes: [{type: tmpfs, target: /cache, tmpfs: {size: 64m, mode: 01777}}]", "
  volumes:
  - type: tmpfs
    target: /cache
    tmpfs:
      size: 67108864
      mode: '1777'"),
        ("tmpfs: /run", "
  tmpfs:
  - /run"),
    ]);
}

#[test]
fn environment_labels_and_commands() {
    check(&[
        (
            "environment: [A=1, 'B=two words', PASSED, MISSING]",
            "
  environment:
    A: '1'
    B: two words
    MISSING: null
    PASSED: from-env",
        ),
        (
            "environment: {A: 1, B: true, C: null, D: 'x$$y'}",
            "
  environment:
    A: '1'
    B: 'true'
    C: null
    D: x$y",
        ),
        (
            "labels: [com.example=1, flag]",
            "
  labels:
    com.example: '1'
    flag: ''",
        ),
        (
            "command: echo \"hello world\" 'a b'",
            "
  command:
  - echo
  - hello world
  - a b",
        ),
        (
            "entrypoint: [/bin/sh, -c]\ncommand: [exit, 3]",
            "
  command:
  - exit
  - '3'
  entrypoint:
  - /bin/sh
  - -c",
        ),
    ]);
}

#[test]
fn networks_and_dependencies() {
    check(&[
        (
            "networks: [front]",
            "
  networks:
    front: {}",
        ),
        (
            "networks: {back: {aliases: [db, primary], ipv4_address: 10.5.0.7}}",
            "
  networks:
    back:
      aliases:
      - db
      - primary
      ipv4_address: 10.5.0.7",
        ),
        (
            "depends_on: [other]",
            "
  depends_on:
    other:
      condition: service_started
      restart: false
      required: true",
        ),
        (
            "depends_on: {other: {condition: service_healthy, restart: true, required: false}}",
            "
  depends_on:
    other:
      condition: service_healthy
      restart: true
      required: false",
        ),
    ]);
}

#[test]
fn healthcheck_restart_and_lifecycle() {
    check(&[
        ("healthcheck: {test: curl -f http://localhost, interval: 1m30s, timeout: 10s, retries: 3, start_period: 40s, start_interval: 500ms}", "
  healthcheck:
    test:
    - CMD-SHELL
    - curl -f http://localhost
    interval: 1m30s
    timeout: 10s
    retries: 3
    start_period: 40s
    start_interval: 500ms"),
        ("healthcheck: {test: [NONE]}", "
  healthcheck:
    test:
    - NONE"),
        ("healthcheck: {disable: true}", "
  healthcheck:
    disable: true"),
        ("restart: on-failure:3\nstop_signal: TERM\nstop_grace_period: 1m", "
  restart: on-failure:3
  stop_signal: SIGTERM
  stop_grace_period: 1m0s"),
        ("init: true\nread_only: true\nprivileged: true\ntty: true\nstdin_open: true", "
  init: true
  read_only: true
  privileged: true
  tty: true
  stdin_open: true"),
    ]);
}

#[test]
fn lifecycle_hooks() {
    check(&[
        // A string is split as `command:` is (no shell), a list is kept as written.
        ("post_start: [{command: touch /ready}]", "
  post_start:
  - command:
    - touch
    - /ready"),
        ("post_start:\n- command: [sh, -c, 'echo $$X > /f']\n  user: '1000:1000'\n  privileged: true\n  working_dir: /tmp\n  environment: [X=1, PASSED]", "
  post_start:
  - command:
    - sh
    - -c
    - echo $X > /f
    user: 1000:1000
    privileged: true
    working_dir: /tmp
    environment:
      PASSED: from-env
      X: '1'"),
        ("pre_stop: [{command: 'sh -c \"sleep 1\"', environment: {A: b}}, {command: [sync]}]", "
  pre_stop:
  - command:
    - sh
    - -c
    - sleep 1
    environment:
      A: b
  - command:
    - sync"),
        // pre_start: every key optional; the image and command default at run time.
        ("pre_start: [{}, {image: alpine, command: 'sh -c \"echo A\"', user: root, privileged: true, working_dir: /w, environment: [A=1], per_replica: false}]", "
  pre_start:
  - {}
  - image: alpine
    command:
    - sh
    - -c
    - echo A
    user: root
    privileged: true
    working_dir: /w
    environment:
      A: '1'"),
    ]);
}

#[test]
fn resources_and_limits() {
    check(&[
        ("mem_limit: 512m\nmem_reservation: 1g\ncpus: 1.5\ncpu_shares: 512\ncpuset: 0-1\npids_limit: 100\nshm_size: 64M", "
  shm_size: 67108864
  pids_limit: 100
  mem_limit: 536870912
  mem_reservation: 1073741824
  cpus: 1.5
  cpu_shares: 512
  cpuset: 0-1"),
        ("ulimits: {nproc: 65535, nofile: {soft: 20000, hard: 40000}}", "
  ulimits:
    nofile:
      soft: 20000
      hard: 40000
    nproc:
      soft: 65535
      hard: 65535"),
        ("cap_add: [net_admin, CAP_SYS_TIME]\ncap_drop: [ALL]", "
  cap_add:
  - NET_ADMIN
  - SYS_TIME
  cap_drop:
  - ALL"),
        ("sysctls: [net.core.somaxconn=1024]", "
  sysctls:
    net.core.somaxconn: '1024'"),
        ("extra_hosts: ['db:10.0.0.5', 'v6=::1']\ndns: 1.1.1.1\ndns_search: [example.com]", "
  extra_hosts:
  - db=10.0.0.5
  - v6=::1
  dns:
  - 1.1.1.1
  dns_search:
  - example.com"),
        ("extra_hosts: {db: 10.0.0.5}", "
  extra_hosts:
  - db=10.0.0.5"),
        ("deploy: {resources: {reservations: {generic_resources: [{discrete_resource_spec: {kind: SSD, value: 2}}, {discrete_resource_spec: {kind: NVIDIA-GPU, value: 1}}]}}}", "
  deploy:
    mode: replicated
    resources:
      reservations:
        generic_resources:
        - discrete_resource_spec:
            kind: SSD
            value: 2
        - discrete_resource_spec:
            kind: NVIDIA-GPU
            value: 1"),
    ]);
}

#[test]
fn deploy() {
    check(&[
        ("deploy:\n  mode: replicated\n  replicas: '3'\n  resources: {limits: {cpus: '0.5', memory: 256M, pids: 50}, reservations: {memory: 128M}}\n  restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 2m}\n  placement: {constraints: ['node.role==manager'], preferences: [{spread: node.labels.zone}], max_replicas_per_node: 1}\n  endpoint_mode: dnsrr\n  labels: [tier=web]", "
  deploy:
    mode: replicated
    replicas: 3
    labels:
      tier: web
    resources:
      limits:
        cpus: 0.5
        memory: 268435456
        pids: 50
      reservations:
        memory: 134217728
    restart_policy:
      condition: on-failure
      delay: 5s
      max_attempts: 3
      window: 2m0s
    placement:
      constraints:
      - node.role == manager
      preferences:
      - spread: node.labels.zone
      max_replicas_per_node: 1
    endpoint_mode: dnsrr"),
        ("deploy: {mode: global, update_config: {parallelism: 2, delay: 10s, failure_action: rollback, monitor: 1m, max_failure_ratio: 0.2, order: start-first}}", "
  deploy:
    mode: global
    update_config:
      parallelism: 2
      delay: 10s
      failure_action: rollback
      monitor: 1m0s
      max_failure_ratio: 0.2
      order: start-first"),
    ]);
}

#[test]
fn secrets_configs_and_misc() {
    check(&[
        ("secrets: [token]\nconfigs: [conf]", "
  secrets:
  - source: token
    target: /run/secrets/token
  configs:
  - source: conf
    target: /conf"),
        ("secrets: [{source: token, target: api-key, uid: '1000', gid: '1000', mode: 0440}]\nconfigs: [{source: conf, target: /etc/app.conf, mode: 0644}]", "
  secrets:
  - source: token
    target: /run/secrets/api-key
    uid: '1000'
    gid: '1000'
    mode: '0440'
  configs:
  - source: conf
    target: /etc/app.conf
    mode: '0644'"),
        ("user: 1000:1000\nworking_dir: /app\nhostname: h\ndomainname: example.com\ncontainer_name: my-s\nprofiles: [debug]\npull_policy: if_not_present\nscale: 1", "
  pull_policy: missing
  user: 1000:1000
  working_dir: /app
  hostname: h
  domainname: example.com
  scale: 1
  profiles:
  - debug
  container_name: my-s"),
        ("logging: {driver: json-file, options: {max-size: 10m, max-file: 3}}", "
  logging:
    driver: json-file
    options:
      max-file: '3'
      max-size: 10m"),
        ("x-note: kept\ndevices: ['/dev/fuse']", "
  devices:
  - source: /dev/fuse
    target: /dev/fuse
    permissions: rwm
  x-note: kept"),
    ]);
}

/// What reaches into the host or into another container, in its long form.
#[test]
fn devices_links_and_host_attributes() {
    check(&[
        ("devices: ['/dev/fuse:r', '/dev/sda:/dev/xvda:rw', 'vendor.com/class=dev0', {source: /dev/loop0, permissions: rw}]", "
  devices:
  - source: /dev/fuse
    target: /dev/fuse
    permissions: r
  - source: /dev/sda
    target: /dev/xvda
    permissions: rw
  - source: vendor.com/class=dev0
  - source: /dev/loop0
    target: /dev/loop0
    permissions: rw"),
        ("device_cgroup_rules: ['c 1:3 mr', 'b 8:* rwm', 'a *:* m']", "
  device_cgroup_rules:
  - c 1:3 mr
  - b 8:* rwm
  - a *:* m"),
        ("gpus: all", "
  gpus:
  - count: -1
    capabilities:
    - gpu"),
        ("gpus: [{driver: nvidia, device_ids: ['0', '1']}]", "
  gpus:
  - driver: nvidia
    device_ids:
    - '0'
    - '1'
    capabilities:
    - gpu"),
        ("deploy: {resources: {reservations: {devices: [{capabilities: [gpu], count: 1}]}}}", "
  deploy:
    mode: replicated
    resources:
      reservations:
        devices:
        - count: 1
          capabilities:
          - gpu"),
        ("blkio_config: {weight: 300, weight_device: [{path: /dev/sda, weight: 400}], device_read_bps: [{path: /dev/sda, rate: 12mb}], device_write_iops: [{path: /dev/sda, rate: 30}]}", "
  blkio_config:
    weight: 300
    weight_device:
    - path: /dev/sda
      weight: 400
    device_read_bps:
    - path: /dev/sda
      rate: 12582912
    device_write_iops:
    - path: /dev/sda
      rate: 30"),
        ("volumes_from: ['other:ro', 'container:legacy']\nlinks: ['other:db']\nexternal_links: [legacy-db]", "
  depends_on:
    other:
      condition: service_started
      restart: true
      required: true
  volumes_from:
  - other:ro
  - container:legacy
  links:
  - other:db
  external_links:
  - legacy-db"),
        ("mac_address: 02:42:AC:11:00:02\nnetworks: {front: {mac_address: '02-42-ac-11-00-03', interface_name: lan0, gw_priority: 10}}", "
  networks:
    front:
      mac_address: 02:42:ac:11:00:03
      interface_name: lan0
      gw_priority: 10
  mac_address: 02:42:ac:11:00:02"),
        ("cgroup_parent: berth-limits/web/\nannotations: {com.example.a: '1'}\nattach: false\nplatform: linux/AMD64\npull_policy: refresh\npull_refresh_after: 12h\nstorage_opt: {size: 1G}", "
  pull_policy: refresh
  cgroup_parent: /berth-limits/web
  annotations:
    com.example.a: '1'
  attach: false
  platform: linux/amd64
  pull_refresh_after: 12h0m0s
  storage_opt:
    size: 1G"),
    ]);
}

/// Each row: a service attribute with a mistake, and the exact error line.
#[test]
fn security_and_groups() {
    check(&[
        ("security_opt: [no-new-privileges]", "
  security_opt:
  - no-new-privileges:true"),
        ("security_opt: ['no-new-privileges=false', 'seccomp:unconfined', systempaths=unconfined]", "
  security_opt:
  - no-new-privileges:false
  - seccomp=unconfined
  - systempaths=unconfined"),
        // An inline profile (what `berth config` prints for a file) is kept, compacted.
        ("security_opt: ['seccomp={\"defaultAction\": \"SCMP_ACT_ALLOW\"}']", "
  security_opt:
  - seccomp={\"defaultAction\":\"SCMP_ACT_ALLOW\"}"),
        ("security_opt: [apparmor=unconfined, label=disable]", "
  security_opt:
  - apparmor=unconfined
  - label=disable"),
        ("group_add: [wheel, 1234]", "
  group_add:
  - wheel
  - '1234'"),
        ("oom_score_adj: 500", "
  oom_score_adj: 500"),
        ("oom_score_adj: -1000", "
  oom_score_adj: -1000"),
    ]);
}

#[test]
fn cgroup_knobs() {
    check(&[
        (
            "cpu_period: 50000\ncpu_quota: 25000",
            "
  cpu_period: 50000
  cpu_quota: 25000",
        ),
        (
            "cpu_quota: -1",
            "
  cpu_quota: -1",
        ),
        (
            "cpu_quota: 0",
            "
  cpu_quota: -1",
        ),
        (
            "cpu_rt_period: 1000000\ncpu_rt_runtime: 950000",
            "
  cpu_rt_period: 1000000
  cpu_rt_runtime: 950000",
        ),
        (
            "cpu_rt_period: 1400us\ncpu_rt_runtime: 400ms",
            "
  cpu_rt_period: 1400
  cpu_rt_runtime: 400000",
        ),
        (
            "cpu_rt_runtime: -1",
            "
  cpu_rt_runtime: -1",
        ),
        (
            "mem_swappiness: 0",
            "
  mem_swappiness: 0",
        ),
        ("mem_swappiness: -1", "{}"),
        (
            "mem_limit: 64m\nmemswap_limit: 128m",
            "
  mem_limit: 67108864
  memswap_limit: 134217728",
        ),
        (
            "mem_limit: 64m\nmemswap_limit: -1",
            "
  mem_limit: 67108864
  memswap_limit: -1",
        ),
        (
            "oom_kill_disable: true",
            "
  oom_kill_disable: true",
        ),
        ("oom_kill_disable: false", "{}"),
    ]);
}

#[test]
fn attribute_errors() {
    let cases: &[(&str, &str)] = &[
        ("ports: ['70000:80']", "-: services.s.ports[0]: port 70000 is out of range (1-65535)"),
        ("imgae: x", "-: services.s.imgae: unknown attribute; did you mean \"image\"?"),
        ("deploy: {replicas: three}", "-: services.s.deploy.replicas: expected an integer, found \"three\""),
        ("restart: sometimes", "-: services.s.restart: invalid restart policy \"sometimes\": expected no, always, on-failure[:max-retries] or unless-stopped"),
        ("read_only: maybe", "-: services.s.read_only: expected true or false, found \"maybe\""),
        ("cap_add: [NET_ADMN]", "-: services.s.cap_add[0]: unknown capability \"NET_ADMN\"; did you mean \"NET_ADMIN\"?"),
        ("ulimits: {nofiles: 10}", "-: services.s.ulimits.nofiles: unknown ulimit; did you mean \"nofile\"?"),
        ("ulimits: {nofile: {soft: 20, hard: 10}}", "-: services.s.ulimits.nofile: soft limit 20 is above hard limit 10"),
        ("volumes: [{type: bind, target: /x}]", "-: services.s.volumes[0]: a bind mount needs a source (the host path)"),
        ("volumes: [{type: volume, source: data, target: relative}]", "-: services.s.volumes[0].target: \"relative\" must be an absolute path in the container"),
        ("healthcheck: {test: [curl, x]}", "-: services.s.healthcheck.test: a healthcheck test list must start with CMD or CMD-SHELL followed by the command, or be [NONE]"),
        ("depends_on: {other: {condition: service_ready}}", "-: services.s.depends_on.other.condition: unknown condition \"service_ready\": expected service_started, service_healthy or service_completed_successfully"),
        ("deploy: {placement: {constraints: [node.role]}}", "-: services.s.deploy.placement.constraints[0]: invalid placement constraint \"node.role\": expected KEY==VALUE or KEY!=VALUE, like node.role==manager"),
        ("deploy: {placement: {constraints: [node.role==manager, 'node.lables.zone==east']}}", "-: services.s.deploy.placement.constraints[1]: invalid placement constraint \"node.lables.zone==east\": unknown key \"node.lables.zone\": expected node.id, node.hostname, node.role, node.labels.KEY, node.platform.os or node.platform.arch"),
        ("deploy: {placement: {constraints: ['node.role==boss']}}", "-: services.s.deploy.placement.constraints[0]: invalid placement constraint \"node.role==boss\": node.role is manager or worker"),
        ("deploy: {placement: {constraints: ['node.labels.==x']}}", "-: services.s.deploy.placement.constraints[0]: invalid placement constraint \"node.labels.==x\": \"node.labels.\" names no label: write node.labels.KEY"),
        ("deploy: {placement: {preferences: [{spread: node.hostname}]}}", "-: services.s.deploy.placement.preferences[0].spread: invalid spread preference \"node.hostname\": expected node.labels.KEY, like node.labels.zone"),
        ("secrets: [{source: token, mode: 0999}]", "-: services.s.secrets[0].mode: invalid file mode: expected an octal number like 0440 or 0644"),
        ("command: 'echo \"unterminated'", "-: services.s.command: unterminated quote or escape in the command string"),
        ("container_name: 'bad name'", "-: services.s.container_name: invalid container_name \"bad name\": use letters, digits, '_', '.' and '-', starting with a letter or digit"),
        ("environment: 12", "-: services.s.environment: expected a list of KEY=VALUE or a mapping, found 12"),
        ("networks: {back: {ipv4_address: 10.6.0.1}}", "-: services.s.networks.back.ipv4_address: 10.6.0.1 is not inside the subnet of network \"back\" (10.5.0.0/16)"),
        ("networks: [middle]", "-: services.s.networks.middle: network \"middle\" is not defined; define it under the top-level networks: section"),
        ("volumes: ['date:/data']", "-: services.s.volumes[0]: volume \"date\" is not defined; did you mean \"data\"?"),
        ("secrets: [tokn]", "-: services.s.secrets[0]: secret \"tokn\" is not defined; did you mean \"token\"?"),
        ("depends_on: [missing]", "-: services.s.depends_on.missing: service \"missing\" is not defined; define it under the top-level services: section"),
        ("scale: 2\ndeploy: {replicas: 3}", "-: services.s.scale: scale (2) and deploy.replicas (3) disagree; set only one"),
        ("scale: 2\ncontainer_name: fixed", "-: services.s.container_name: a service with several replicas cannot have a fixed container_name"),
        ("ports: ['8080:80', '8080:81']", "-: services.s.ports[1]: host port 8080/tcp is already published by services.s.ports[0]"),
        ("network_mode: bridge", "-: services.s.network_mode: \"bridge\" is not a network_mode berth knows; use one of: host, none, service:NAME, container:NAME"),
        ("uts: 'container:x'", "-: services.s.uts: \"container:x\" is not a uts berth knows; use one of: host, private"),
        ("ipc: 'service:'", "-: services.s.ipc: \"service:\" names no service"),
        ("security_opt: [no-new-privilege]", "-: services.s.security_opt[0]: unknown security option \"no-new-privilege\"; known: no-new-privileges[:true|false], seccomp=unconfined, seccomp=PROFILE.json, apparmor=PROFILE, label=..., systempaths=unconfined"),
        ("security_opt: ['no-new-privileges:yes']", "-: services.s.security_opt[0]: invalid no-new-privileges value \"yes\": use true or false"),
        ("security_opt: [systempaths=ro]", "-: services.s.security_opt[0]: invalid systempaths value \"ro\": the only value is unconfined"),
        ("cpu_period: 999", "-: services.s.cpu_period: 999 is out of range (1000-1000000)"),
        ("cpu_period: 1000001", "-: services.s.cpu_period: 1000001 is out of range (1000-1000000)"),
        ("cpu_quota: 999", "-: services.s.cpu_quota: 999 is out of range: at least 1000 (1ms), or -1 for no limit"),
        ("cpu_quota: 50000\ncpus: 0.5", "-: services.s.cpu_quota: cannot be combined with cpus (or deploy.resources.limits.cpus), as in Docker: set cpus alone, or cpu_quota and cpu_period"),
        ("cpu_period: 50000\ndeploy: {resources: {limits: {cpus: '1'}}}", "-: services.s.cpu_period: cannot be combined with cpus (or deploy.resources.limits.cpus), as in Docker: set cpus alone, or cpu_quota and cpu_period"),
        ("cpu_rt_period: 0", "-: services.s.cpu_rt_period: 0 is out of range (at least 1)"),
        ("cpu_rt_runtime: soon", "-: services.s.cpu_rt_runtime: invalid duration \"soon\": expected a number followed by a unit (ns, us, ms, s, m, h), like 30s or 1m30s"),
        ("mem_swappiness: 101", "-: services.s.mem_swappiness: 101 is out of range (-1-100)"),
        ("memswap_limit: 1g", "-: services.s.memswap_limit: needs a memory limit (mem_limit or deploy.resources.limits.memory), as in Docker"),
        ("mem_limit: 1g\nmemswap_limit: 512m", "-: services.s.memswap_limit: 536870912 is less than the memory limit (1073741824): it is memory plus swap, so it must be at least as large"),
        ("oom_kill_disable: maybe", "-: services.s.oom_kill_disable: expected true or false, found \"maybe\""),
        ("oom_score_adj: 1001", "-: services.s.oom_score_adj: 1001 is out of range (-1000-1000)"),
        ("oom_score_adj: -1001", "-: services.s.oom_score_adj: -1001 is out of range (-1000-1000)"),
        ("group_add: ['a:b']", "-: services.s.group_add[0]: \"a:b\" is not a group: give a group name or a gid"),
        ("devices: ['dev/fuse']", "-: services.s.devices[0]: device \"dev/fuse\" must be an absolute host path (or a CDI name vendor.com/class=name)"),
        ("devices: ['/dev/fuse:/dev/f:rx']", "-: services.s.devices[0]: invalid permissions \"rx\" of device \"/dev/fuse\": some of r, w and m (e.g. rwm)"),
        ("device_cgroup_rules: ['c 1-3 r']", "-: services.s.device_cgroup_rules[0]: invalid device cgroup rule \"c 1-3 r\": write TYPE MAJOR:MINOR ACCESS, e.g. \"c 1:3 rwm\" or \"b 8:* r\" (type a, b or c; numbers or *; access some of r, w, m)"),
        ("gpus: some", "-: services.s.gpus: write all, or a list of device requests"),
        ("gpus: [{count: 1, device_ids: ['0']}]", "-: services.s.gpus[0]: count and device_ids cannot be set together"),
        ("blkio_config: {weight: 5}", "-: services.s.blkio_config.weight: 5 is out of range: 10 to 1000"),
        ("blkio_config: {device_read_bps: [{path: sda, rate: 1}]}", "-: services.s.blkio_config.device_read_bps[0].path: \"sda\" must be the absolute path of a device"),
        ("volumes_from: ['other:rx']", "-: services.s.volumes_from[0]: invalid mode \"rx\" in \"other:rx\": ro or rw"),
        ("volumes_from: [missing]", "-: services.s.volumes_from[0]: service \"missing\" is not defined; define it under the top-level services: section"),
        ("links: ['other:a b']", "-: services.s.links[0]: invalid link \"other:a b\": write NAME or NAME:ALIAS (letters, digits, _ . -)"),
        ("mac_address: 01:00:5e:00:00:01", "-: services.s.mac_address: \"01:00:5e:00:00:01\" is a multicast address: a container's MAC address must be unicast (an even first octet)"),
        ("mac_address: 02:42:ac:11:00", "-: services.s.mac_address: invalid MAC address \"02:42:ac:11:00\": six hexadecimal octets, like 02:42:ac:11:00:02"),
        ("cgroup_parent: ../escape", "-: services.s.cgroup_parent: invalid cgroup_parent \"../escape\": a path of cgroup names below the cgroup root, like berth-limits/web"),
        ("cgroup_parent: user.slice", "-: services.s.cgroup_parent: \"user.slice\" is a systemd slice: berth manages cgroups with cgroupfs; give a path like user"),
        ("platform: 'linux/'", "-: services.s.platform: invalid platform \"linux/\": write os/arch[/variant], like linux/amd64 or linux/arm64/v8"),
        ("label_file: ./no-such.labels", "-: services.s.label_file: cannot read label file /nonexistent/berth-test/app/no-such.labels: No such file or directory (os error 2); create it or remove it from label_file"),
        ("annotations: {berth.init: 'true'}", "-: services.s.annotations.berth.init: annotations starting with berth. are berth's own; use another prefix"),
        ("pull_policy: refresh", "-: services.s.pull_policy: refresh needs pull_refresh_after (how old the local image may be, like 12h)"),
        ("post_start: [{user: root}]", "-: services.s.post_start[0]: a hook needs a command: add command: [...] (the program and its arguments)"),
        ("pre_stop: [{command: []}]", "-: services.s.pre_stop[0].command: is empty: give the command the hook runs"),
        ("post_start: [{command: x, working_dir: tmp}]", "-: services.s.post_start[0].working_dir: \"tmp\" must be an absolute path in the container"),
        ("post_start: [{command: x, privileged: sure}]", "-: services.s.post_start[0].privileged: expected true or false, found \"sure\""),
        ("pre_stop: [{command: x, usr: root}]", "-: services.s.pre_stop[0].usr: unknown attribute; did you mean \"user\"?"),
        ("pre_start: [{command: x, per_replica: true}]", "-: services.s.pre_start[0].per_replica: a step per replica is not supported (nor by docker compose): remove per_replica or set it to false"),
        ("pre_start: [{command: x, volumes: [data:/data]}]", "-: services.s.pre_start[0].volumes: unknown attribute"),
        ("pre_start: [{comand: x}]", "-: services.s.pre_start[0].comand: unknown attribute; did you mean \"command\"?"),
        ("post_start: {command: x}", "-: services.s.post_start: expected a list, found a mapping"),
        ("networks: {back: {link_local_ips: [10.0.0.1]}}", "-: services.s.networks.back.link_local_ips[0]: \"10.0.0.1\" is not a link-local address (169.254.0.0/16 or fe80::/10)"),
        ("networks: {back: {driver_opts: {com.docker.network.endpoint.sysctls: 'kernel.panic=1'}}}", "-: services.s.networks.back.driver_opts.com.docker.network.endpoint.sysctls: \"kernel.panic=1\" is not a network sysctl: write net.KEY=VALUE (IFNAME stands for the interface), comma-separated"),
        ("networks: {front: {interface_name: 'a/b'}}", "-: services.s.networks.front.interface_name: invalid interface name \"a/b\": 1 to 15 characters, without '/', ':' or spaces, and not lo"),
        ("networks: {front: {interface_name: x}, back: {interface_name: x}}", "-: services.s.networks.front.interface_name: \"x\" is also network \"back\"'s interface name; give each its own"),
        ("network_mode: 'service:other'\nports: ['80:80']", "-: services.s.ports: cannot publish ports with network_mode: service:other; remove ports or network_mode"),
        ("deploy: {resources: {reservations: {generic_resources: [{discrete_resource_spec: {kind: SSD, value: 0}}]}}}", "-: services.s.deploy.resources.reservations.generic_resources[0].discrete_resource_spec.value: 0 is out of range (1-9223372036854775807)"),
        ("deploy: {resources: {reservations: {generic_resources: [{discrete_resource_spec: {value: 1}}]}}}", "-: services.s.deploy.resources.reservations.generic_resources[0].discrete_resource_spec.kind: missing: a generic resource needs its kind, like SSD"),
        ("deploy: {resources: {reservations: {generic_resources: [{discrete_resource_spec: {kind: 'a=b', value: 1}}]}}}", "-: services.s.deploy.resources.reservations.generic_resources[0].discrete_resource_spec.kind: invalid generic resource kind \"a=b\": '=' is not allowed in a kind"),
        ("deploy: {resources: {reservations: {generic_resources: [{named_resource_spec: {kind: GPU, value: GPU-1}}]}}}", "-: services.s.deploy.resources.reservations.generic_resources[0].named_resource_spec: a service reserves a count of a kind, not a named unit: write discrete_resource_spec: {kind: GPU, value: 1} (named units are what a node advertises: berth daemon --node-generic-resource)"),
        ("deploy: {resources: {reservations: {generic_resources: [{discrete_resource_spec: {kind: SSD, value: 1}}, {discrete_resource_spec: {kind: SSD, value: 2}}]}}}", "-: services.s.deploy.resources.reservations.generic_resources[1]: generic resource SSD is reserved twice; reserve it once, with the total"),
        ("deploy: {resources: {limits: {generic_resources: [{discrete_resource_spec: {kind: SSD, value: 1}}]}}}", "-: services.s.deploy.resources.limits.generic_resources: generic resources are reserved, not limited: move them under deploy.resources.reservations"),
        ("deploy: {resources: {reservations: {generic_resources: [{discrete_resource_spec: {kind: SSD, valeu: 1}}]}}}", "-: services.s.deploy.resources.reservations.generic_resources[0].discrete_resource_spec.valeu: unknown attribute; did you mean \"value\"?"),
    ];
    let mut failures = Vec::new();
    for (attrs, want) in cases {
        let indented: String = attrs.lines().map(|l| format!("    {l}\n")).collect();
        let text = format!(
            "services:\n  s:\n    image: busybox\n{indented}  other:\n    image: busybox\n\
             networks: {{back: {{ipam: {{config: [{{subnet: 10.5.0.0/16}}]}}}}}}\n\
             volumes: {{data: {{}}}}\nsecrets: {{token: {{file: ./t}}}}\n"
        );
        match load_text(&text, &[]) {
            Ok(_) => failures.push(format!("{attrs}: loaded, expected {want:?}")),
            Err(e) => {
                let got = errors(&e);
                if !got.lines().any(|l| l == *want) {
                    failures.push(format!(
                        "{attrs}:\n  want: {want}\n  got:  {}",
                        got.replace('\n', "\n        ")
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

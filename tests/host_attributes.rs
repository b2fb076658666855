//! The attributes that reach into the host or into another container, end to end on a
//! real daemon: `devices` (host nodes with their cgroup access), `device_cgroup_rules`,
//! CDI devices by name and through `gpus` (from CDI specs in this test's own
//! directory), `blkio_config`, `volumes_from`, `links`, `external_links`,
//! `mac_address`, `cgroup_parent` and `annotations`.
//!
//! The device nodes are made by the test in its own directory with mknod, so nothing
//! depends on which devices this host has: loop-control's numbers (10:237, outside
//! Docker's default device allowlist) for the access checks, a loop disk's (7:0) for
//! the block I/O throttle.

#[path = "stack/fixture.rs"]
mod fixture;

use std::path::Path;

use fixture::Fixture;

fn run(f: &Fixture, service: &str) -> (bool, String, String) {
    let out = f.berth(&["run", "--rm", service]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
    // SAFETY: a valid C string; mknod only creates the node.
    let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o600, libc::makedev(major, minor)) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// This machine's architecture in Go's names, as platforms are written.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Opens the node for writing without writing: "opened", or the shell's error.
const OPEN_W: &str = "(: > /dev/lc) 2>&1 && echo opened";

#[test]
fn devices_rules_cdi_and_blkio_reach_the_container() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lc = tmp.path().join("lc");
    let disk = tmp.path().join("disk");
    let gpu0 = tmp.path().join("gpu0");
    let gpu1 = tmp.path().join("gpu1");
    mknod(&lc, libc::S_IFCHR, 10, 237);
    mknod(&disk, libc::S_IFBLK, 7, 0);
    mknod(&gpu0, libc::S_IFCHR, 10, 237);
    mknod(&gpu1, libc::S_IFCHR, 10, 237);
    let cdi = tmp.path().join("cdi");
    std::fs::create_dir(&cdi).expect("cdi dir");
    std::fs::write(
        cdi.join("test.yaml"),
        format!(
            "cdiVersion: 0.6.0\nkind: berth.test/dev\ncontainerEdits:\n  env: [CDI_KIND=berth.test]\n\
             devices:\n- name: lc\n  containerEdits:\n    env: [CDI_DEVICE=lc]\n    deviceNodes: [{{path: /dev/cdi-lc, hostPath: {}}}]\n",
            lc.display()
        ),
    )
    .expect("cdi spec");
    std::fs::write(
        cdi.join("gpu.json"),
        format!(
            r#"{{"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu", "devices": [
                {{"name": "0", "containerEdits": {{"deviceNodes": [{{"path": "/dev/fakegpu0", "hostPath": "{}"}}]}}}},
                {{"name": "1", "containerEdits": {{"deviceNodes": [{{"path": "/dev/fakegpu1", "hostPath": "{}"}}]}}}}]}}"#,
            gpu0.display(),
            gpu1.display()
        ),
    )
    .expect("gpu spec");

    let sh = |name: &str, script: &str, attrs: &str| {
        format!("  {name}:\n    image: busybox:local\n    command: [\"sh\", \"-c\", \"{script}\"]\n{attrs}")
    };
    let compose = [
        "services:\n".to_string(),
        sh("plain", &format!("ls /dev/lc 2>&1; mknod /dev/lc c 10 237 && {OPEN_W}"), ""),
        sh(
            "read",
            &format!("ls -l /dev/lc; {OPEN_W}"),
            &format!("    devices: ['{}:/dev/lc:r']\n", lc.display()),
        ),
        sh(
            "write",
            OPEN_W,
            &format!("    devices: [{{source: {}, target: /dev/lc, permissions: rw}}]\n", lc.display()),
        ),
        sh(
            "rule",
            &format!("mknod /dev/lc c 10 237 && {OPEN_W}"),
            "    device_cgroup_rules: ['c 10:237 rw']\n",
        ),
        sh(
            "cdi",
            "ls -l /dev/cdi-lc; echo kind=$$CDI_KIND device=$$CDI_DEVICE",
            "    devices: ['berth.test/dev=lc']\n",
        ),
        sh(
            "gpu",
            "ls /dev/ | grep fakegpu | tr '\\n' ' '",
            "    gpus: [{count: 1}]\n",
        ),
        sh(
            "allgpus",
            "ls /dev/ | grep fakegpu | tr '\\n' ' '",
            "    deploy: {resources: {reservations: {devices: [{capabilities: [gpu]}]}}}\n",
        ),
        sh(
            "nocdi",
            "true",
            "    gpus: [{driver: cdi, device_ids: ['berth.test/dev=missing']}]\n",
        ),
        sh(
            "blkio",
            "cat /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device /sys/fs/cgroup/blkio/blkio.throttle.write_iops_device",
            &format!(
                "    blkio_config: {{weight: 300, device_read_bps: [{{path: {d}, rate: 1mb}}], device_write_iops: [{{path: {d}, rate: 40}}]}}\n",
                d = disk.display()
            ),
        ),
        sh("privileged", "ls -l /dev/kmsg /dev/loop-control 2>&1", "    privileged: true\n"),
        sh("unprivileged", "ls -l /dev/kmsg /dev/loop-control 2>&1; true", ""),
        sh("foreign", "true", "    platform: linux/s390x\n"),
        sh("native", "echo native", &format!("    platform: linux/{}\n", host_arch())),
        sh("sized", "true", "    storage_opt: {size: 1G}\n"),
    ]
    .concat();
    let mut f = Fixture::new("hostattrs", &compose);
    f.start_daemon_env(&[("BERTH_CDI_SPEC_DIRS", cdi.to_str().expect("utf-8"))]);

    // Without devices: no node, and one made inside is refused by the cgroup.
    let (_, out, err) = run(&f, "plain");
    assert!(out.contains("No such file"), "{out}{err}");
    assert!(out.contains("Operation not permitted"), "{out}{err}");
    assert!(!out.contains("opened"), "{out}{err}");

    // `:r`: the node is there with the host's numbers; opening it to write is refused.
    let (_, out, err) = run(&f, "read");
    assert!(
        out.contains("10, 237") && out.starts_with('c'),
        "{out}{err}"
    );
    assert!(out.contains("Operation not permitted"), "{out}{err}");
    let (ok, out, err) = run(&f, "write");
    assert!(ok && out.contains("opened"), "{out}{err}");

    // A rule lets the container make and open the device itself.
    let (ok, out, err) = run(&f, "rule");
    assert!(ok && out.contains("opened"), "{out}{err}");

    // CDI by name: the spec's node and environment (the spec's own and the device's).
    let (ok, out, err) = run(&f, "cdi");
    assert!(ok, "{out}{err}");
    assert!(out.contains("10, 237"), "{out}{err}");
    assert!(out.contains("kind=berth.test device=lc"), "{out}{err}");

    // gpus through NVIDIA's CDI kind: count 1 takes the first device, a reservation
    // without a count takes them all.
    let (ok, out, err) = run(&f, "gpu");
    assert!(ok && out.trim() == "fakegpu0", "{out}{err}");
    let (ok, out, err) = run(&f, "allgpus");
    assert!(ok && out.trim() == "fakegpu0 fakegpu1", "{out}{err}");

    // A CDI device no spec has: the field and the device are named.
    let (ok, out, err) = run(&f, "nocdi");
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("services.nocdi")
            && err.contains(".gpus[0]")
            && err.contains("has no device \"missing\""),
        "{err}"
    );

    // privileged: the host's devices (these two are on any Linux host with loop
    // devices), which a container does not otherwise see.
    let (ok, out, err) = run(&f, "privileged");
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("1,  11") && out.contains("10, 237"),
        "{out}{err}"
    );
    let (_, out, err) = run(&f, "unprivileged");
    assert_eq!(out.matches("No such file").count(), 2, "{out}{err}");

    // platform: this host's runs; another is refused before anything runs.
    let (ok, out, err) = run(&f, "native");
    assert!(ok && out.contains("native"), "{out}{err}");
    let (ok, out, err) = run(&f, "foreign");
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains(".platform: linux/s390x cannot run on this linux/"),
        "{err}"
    );
    // storage_opt: no size limit on berth's writable layer, said so.
    let (ok, out, err) = run(&f, "sized");
    assert!(!ok, "{out}{err}");
    assert!(err.contains(".storage_opt: berth cannot limit"), "{err}");

    // Throttles in the container's own blkio cgroup (the weight, which this host's I/O
    // scheduler may not have, is discarded as Docker discards it, not an error).
    let (ok, out, err) = run(&f, "blkio");
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("7:0 1048576") && out.contains("7:0 40"),
        "{out}{err}"
    );
}

#[test]
fn volumes_from_links_cgroup_parent_and_annotations() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bind = tmp.path().join("bind");
    std::fs::create_dir(&bind).expect("bind dir");
    std::fs::write(bind.join("hello"), "from-bind\n").expect("bind file");
    let project = testkit::unique_name("vfrom")
        .replace('_', "-")
        .to_lowercase();
    let compose = format!(
        "services:
  data:
    image: busybox:local
    container_name: {project}-keeper
    command: [sh, -c, 'echo from-data > /shared/file; sleep 600']
    volumes: [shared:/shared, '{bind}:/bind:ro']
    tmpfs: [/scratch]
    annotations: {{com.example.role: keeper}}
  reader:
    image: busybox:local
    command: [sh, -c, 'cat /shared/file /bind/hello; touch /shared/new 2>&1; ls /scratch 2>&1; true']
    volumes_from: ['data:ro']
  writer:
    image: busybox:local
    command: [sh, -c, 'touch /shared/from-writer && echo wrote']
    volumes_from: ['container:{project}-keeper']
  chained:
    image: busybox:local
    command: [sh, -c, 'ls /shared']
    volumes_from: [writer]
  linker:
    image: busybox:local
    command: [sh, -c, 'nslookup store; nslookup keeper2; true']
    links: ['data:store']
    external_links: ['{project}-keeper:keeper2']
  unlinked:
    image: busybox:local
    command: [sh, -c, 'nslookup store 2>&1; true']
  mac:
    image: busybox:local
    command: [cat, /sys/class/net/eth0/address]
    mac_address: 02:42:AC:11:FF:01
  netmac:
    image: busybox:local
    command: [cat, /sys/class/net/eth0/address]
    networks: {{default: {{mac_address: '02-42-ac-11-ff-02'}}}}
  twonets:
    image: busybox:local
    command: [sh, -c, 'echo $$(ls /sys/class/net); ip route | grep default; ip addr show lan0 | grep 169.254; echo martians=$$(cat /proc/sys/net/ipv4/conf/lan0/log_martians)']
    networks:
      default: {{}}
      side:
        interface_name: lan0
        gw_priority: 5
        link_local_ips: [169.254.8.8]
        driver_opts: {{com.docker.network.endpoint.sysctls: 'net.ipv4.conf.IFNAME.log_martians=1'}}
  grouped:
    image: busybox:local
    command: [sleep, '600']
    cgroup_parent: PARENT/custom
volumes:
  shared: {{}}
networks:
  side: {{}}
",
        bind = bind.display()
    );
    let mut f = Fixture::new("vfrom", &compose);
    // Under the fixture's own cgroup, which its Drop removes.
    let compose = compose.replace("PARENT", &f.project);
    f.write_compose(&compose);
    f.start_daemon();
    f.ok(&["up", "-d", "data", "grouped"]);

    // Read-only copies of data's volume and bind mount; its tmpfs is not a volume.
    let (ok, out, err) = run(&f, "reader");
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("from-data") && out.contains("from-bind"),
        "{out}{err}"
    );
    assert!(out.contains("Read-only file system"), "{out}{err}");
    assert!(
        out.contains("/scratch") && out.contains("No such file"),
        "{out}{err}"
    );

    // By container name, read-write as data has it.
    let (ok, out, err) = run(&f, "writer");
    assert!(ok && out.contains("wrote"), "{out}{err}");

    // Chains: chained takes from writer what writer took from data.
    f.ok(&["up", "-d", "writer"]);
    let (ok, out, err) = run(&f, "chained");
    assert!(ok && out.contains("from-writer"), "{out}{err}");

    // links and external_links: the aliases resolve to data's container, for the
    // linking container only.
    let (ok, out, err) = run(&f, "linker");
    assert!(ok, "{out}{err}");
    let answers: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(str::trim)
        .filter(|a| !a.ends_with(":53"))
        .collect();
    assert_eq!(answers.len(), 2, "{out}{err}");
    assert_eq!(answers[0], answers[1], "{out}");
    let (_, out, err) = run(&f, "unlinked");
    assert!(
        !out.lines()
            .any(|l| l.starts_with("Address:") && !l.ends_with(":53")),
        "{out}{err}"
    );

    // mac_address, of the service and of one network.
    let (ok, out, err) = run(&f, "mac");
    assert!(ok && out.trim() == "02:42:ac:11:ff:01", "{out}{err}");
    let (ok, out, err) = run(&f, "netmac");
    assert!(ok && out.trim() == "02:42:ac:11:ff:02", "{out}{err}");

    // interface_name, gw_priority, link_local_ips and the endpoint sysctls option: the
    // second network's interface has its name, its link-local address and its sysctl,
    // and carries the default route.
    let (ok, out, err) = run(&f, "twonets");
    assert!(ok, "{out}{err}");
    assert!(out.contains("eth0 lan0 lo"), "{out}{err}");
    assert!(
        out.contains("default via") && out.contains("dev lan0"),
        "{out}{err}"
    );
    assert!(out.contains("inet 169.254.8.8/16"), "{out}{err}");
    assert!(out.contains("martians=1"), "{out}{err}");

    // cgroup_parent: the container's cgroup is under it, not under berth's parent.
    let full_id = std::fs::read_dir(f.state().join("containers"))
        .expect("containers")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.contains("-grouped-"))
        .expect("grouped's container");
    let pid = f.container_pid(&full_id);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let want = format!("/{}/custom/{full_id}", f.project);
    assert!(cgroup.contains(&want), "{want} not in\n{cgroup}");

    // annotations: in the container's spec, beside berth's own.
    let keeper = std::fs::read_dir(f.state().join("containers"))
        .expect("containers")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("-data-"))
        .expect("data's container");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(keeper.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["annotations"]["com.example.role"], "keeper");
    f.ok(&["down", "-v"]);
}

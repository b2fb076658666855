//! The namespace attributes end to end (`network_mode`, `pid`, `ipc`, `uts`, `cgroup`):
//! one stack on a real daemon whose containers share the host's namespaces or another
//! container's, each checked by the namespace's inode (`/proc/<pid>/ns/<kind>` seen
//! from the host, where this test runs) and by what the container sees.

#[path = "stack/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;

use fixture::Fixture;

/// Sleeps that end at once on SIGTERM, so `down` is quick.
const SLEEPER: &str = "trap 'exit 0' TERM; sleep 1000 & wait";

fn ns(pid: impl std::fmt::Display, kind: &str) -> String {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("ns link");
    link.to_string_lossy().into_owned()
}

#[test]
fn network_pid_ipc_uts_and_cgroup_modes_share_the_host_or_another_container() {
    let compose = |project: &str| {
        format!(
            r#"services:
  db:
    image: busybox:local
    command: ["sh", "-c", "mkdir -p /tmp/w && echo hello-from-db > /tmp/w/index.html && httpd -p 127.0.0.1:8080 -h /tmp/w && {SLEEPER}"]
  side:
    image: busybox:local
    command: ["sh", "-c", "{SLEEPER}"]
    network_mode: "service:db"
    ipc: "service:db"
    depends_on: [db]
  hostnet:
    image: busybox:local
    command: ["sh", "-c", "{SLEEPER}"]
    network_mode: host
    ports: ["18080:80"]
  loopback:
    image: busybox:local
    command: ["sh", "-c", "{SLEEPER}"]
    network_mode: none
  hostns:
    image: busybox:local
    command: ["sh", "-c", "{SLEEPER}"]
    pid: host
    uts: host
    cgroup: host
    userns_mode: host
  peer:
    image: busybox:local
    command: ["sh", "-c", "{SLEEPER}"]
    pid: "container:{project}-db-1"
    depends_on: [db]
"#
        )
    };
    let mut f = Fixture::new("nsmodes", &compose("unknown"));
    // `container:NAME` names a container by its name, which holds the project's.
    f.write_compose(&compose(&f.project));
    f.start_daemon();
    let out = f.berth(&["up", "-d"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Docker's rule: published ports mean nothing in the host's namespace.
    assert!(
        stderr.contains("services.hostnet.ports: ignored with network_mode: host"),
        "{stderr}"
    );
    // None of them is "not supported yet" any more.
    assert!(!stderr.contains("not supported by berth yet"), "{stderr}");

    let ps = f.ps(false);
    assert_eq!(ps.len(), 6, "{ps:?}");
    assert!(ps.iter().all(|(_, _, s)| s == "running"), "{ps:?}");
    let pids: BTreeMap<String, i32> = ps
        .iter()
        .map(|(name, id, _)| {
            let service = name
                .strip_prefix(&format!("{}-", f.project))
                .and_then(|n| n.strip_suffix("-1"))
                .expect("a project-service-1 name");
            (service.to_string(), f.container_pid(id))
        })
        .collect();
    let pid = |s: &str| pids[s];
    let me = std::process::id();

    // service:db: the same network and IPC namespaces as db's, and db on 127.0.0.1.
    assert_eq!(ns(pid("side"), "net"), ns(pid("db"), "net"));
    assert_eq!(ns(pid("side"), "ipc"), ns(pid("db"), "ipc"));
    assert_ne!(ns(pid("db"), "net"), ns(me, "net"));
    // Its own pid and UTS namespaces still.
    assert_ne!(ns(pid("side"), "pid"), ns(pid("db"), "pid"));
    let got = f.ok(&[
        "exec",
        "-T",
        "side",
        "wget",
        "-qO-",
        "http://127.0.0.1:8080/",
    ]);
    assert_eq!(got.trim(), "hello-from-db");

    // host: the host's network namespace, hence its interfaces.
    assert_eq!(ns(pid("hostnet"), "net"), ns(me, "net"));
    assert_ne!(ns(pid("hostnet"), "uts"), ns(me, "uts"));

    // none: a namespace of its own with only loopback.
    assert_ne!(ns(pid("loopback"), "net"), ns(me, "net"));
    let dev = std::fs::read_to_string(format!("/proc/{}/net/dev", pid("loopback"))).unwrap();
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"], "{dev}");

    // pid, uts, cgroup host: the host's namespaces; it sees this test's process and
    // has the host's name. Its network, IPC and mount namespaces are its own.
    for kind in ["pid", "uts", "cgroup"] {
        assert_eq!(ns(pid("hostns"), kind), ns(me, kind), "{kind}");
    }
    for kind in ["net", "ipc", "mnt"] {
        assert_ne!(ns(pid("hostns"), kind), ns(me, kind), "{kind}");
    }
    f.ok(&["exec", "-T", "hostns", "test", "-d", &format!("/proc/{me}")]);
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let got = f.ok(&["exec", "-T", "hostns", "hostname"]);
    assert_eq!(got.trim(), host_name.trim());
    // A private pid namespace does not see it.
    let out = f.berth(&["exec", "-T", "db", "test", "-d", &format!("/proc/{me}")]);
    assert!(!out.status.success());

    f.ok(&["down"]);
}

/// A mode that names a container that is not there fails the task with a message that
/// names the service and the attribute; a hostname beside `uts: host` too.
#[test]
fn joining_a_missing_container_or_renaming_the_host_is_a_clear_error() {
    let compose = r#"services:
  lonely:
    image: busybox:local
    command: ["true"]
    network_mode: "container:no-such-container"
    restart: "no"
  renamer:
    image: busybox:local
    command: ["true"]
    uts: host
    hostname: not-the-host
    restart: "no"
"#;
    let mut f = Fixture::new("nsmodes-err", compose);
    f.start_daemon();
    let out = f.berth(&["up", "-d"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "services.lonely.network_mode: container \"no-such-container\" is not running"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("services.renamer.hostname: with uts: host the hostname is the host's"),
        "{stderr}"
    );
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host_name.trim(), "not-the-host");
}

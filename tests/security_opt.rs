//! `security_opt`, `group_add` and `oom_score_adj` end to end: one stack on a real
//! daemon, each service run once with `berth run --rm`, and what the container's own
//! process sees in /proc checked against what Docker gives.

#[path = "stack/fixture.rs"]
mod fixture;

use fixture::Fixture;

/// What a container reports about itself: no_new_privs and seccomp mode, its groups,
/// its OOM score, and how many mounts mask /proc/keys and make /proc/sys read-only
/// (`$$` is a literal `$` in Compose).
const REPORT: &str = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t' | tr '\\n' ' '; \
     echo groups=$$(id -G) oom=$$(cat /proc/self/oom_score_adj); \
     echo keys=$$(grep -c ' /proc/keys ' /proc/self/mountinfo) sys=$$(grep -c ' /proc/sys ' /proc/self/mountinfo)";

/// A profile in Docker's format that allows everything but mkdir.
const DENY_MKDIR: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
              {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []}],
  "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
}"#;

fn run(f: &Fixture, service: &str) -> (bool, String, String) {
    let out = f.berth(&["run", "--rm", service]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The capability's bit (linux/capability.h).
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this test runs with CAP_SYS_RESOURCE, which lowering an OOM score needs.
fn has_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

#[test]
fn security_options_groups_and_oom_score_reach_the_container() {
    let service = |name: &str, attrs: &str| {
        format!("  {name}:\n    image: busybox:local\n    command: [\"sh\", \"-c\", \"{REPORT}\"]\n{attrs}")
    };
    let compose = [
        "services:\n".to_string(),
        service("plain", ""),
        service("nnp", "    security_opt: [no-new-privileges]\n"),
        service("nnp-off", "    security_opt: ['no-new-privileges:false']\n"),
        service("unconfined", "    security_opt: ['seccomp=unconfined']\n"),
        service("paths", "    security_opt: ['systempaths=unconfined']\n"),
        service("groups", "    group_add: ['1234', nogroup]\n"),
        service("oom", "    oom_score_adj: 500\n"),
        service("oom-low", "    oom_score_adj: -500\n"),
        service("badgroup", "    group_add: [wheel]\n"),
        "  profile:\n    image: busybox:local\n    security_opt: ['seccomp=./deny-mkdir.json']\n    \
         command: [\"sh\", \"-c\", \"grep Seccomp: /proc/self/status; mkdir /tmp/x || echo mkdir-refused\"]\n"
            .to_string(),
    ]
    .concat();
    let mut f = Fixture::new("secopt", &compose);
    // Beside the Compose file: the relative path resolves against the project.
    std::fs::write(f.dir().join("deny-mkdir.json"), DENY_MKDIR).expect("write profile");
    f.start_daemon();

    // Docker's defaults: no no_new_privs, its seccomp filter (mode 2), the user's own
    // groups, score 0, /proc/keys masked and /proc/sys read-only.
    let (ok, out, err) = run(&f, "plain");
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.trim(),
        "NoNewPrivs:0 Seccomp:2 groups=0 oom=0\nkeys=1 sys=1",
        "{err}"
    );

    let (ok, out, err) = run(&f, "nnp");
    assert!(ok && out.contains("NoNewPrivs:1 Seccomp:2"), "{out}{err}");
    let (ok, out, err) = run(&f, "nnp-off");
    assert!(ok && out.contains("NoNewPrivs:0 Seccomp:2"), "{out}{err}");
    let (ok, out, err) = run(&f, "unconfined");
    assert!(ok && out.contains("NoNewPrivs:0 Seccomp:0"), "{out}{err}");
    let (ok, out, err) = run(&f, "paths");
    assert!(ok && out.contains("keys=0 sys=0"), "{out}{err}");
    let (ok, out, err) = run(&f, "groups");
    assert!(ok && out.contains("groups=0 1234 65534 "), "{out}{err}");
    let (ok, out, err) = run(&f, "oom");
    assert!(ok && out.contains("oom=500"), "{out}{err}");

    // The custom profile is in place (mode 2) and refuses mkdir with EPERM.
    let (ok, out, err) = run(&f, "profile");
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("Seccomp:\t2") && out.contains("mkdir-refused"),
        "{out}{err}"
    );

    // A group the image does not have: the service and the group are named.
    let (ok, out, err) = run(&f, "badgroup");
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("services.badgroup")
            && err.contains("group_add[0]")
            && err.contains("group \"wheel\" not found in the image's /etc/group"),
        "{err}"
    );

    // Lowering the score needs CAP_SYS_RESOURCE: without it, a clear error (as
    // Docker's); with it, the score.
    let (ok, out, err) = run(&f, "oom-low");
    if has_sys_resource() {
        assert!(ok && out.contains("oom=-500"), "{out}{err}");
    } else {
        assert!(!ok, "{out}{err}");
        assert!(
            err.contains("write -500 to /proc/self/oom_score_adj")
                && err.contains("CAP_SYS_RESOURCE"),
            "{err}"
        );
    }
    f.ok(&["down"]);
}

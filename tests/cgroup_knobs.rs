//! `cpu_period`, `cpu_quota`, `mem_swappiness`, `memswap_limit` and `oom_kill_disable`
//! end to end: each service run once with `berth run --rm`, reading its own cgroup files
//! (cgroup v1, as on this project's hosts) from inside the container.

#[path = "stack/fixture.rs"]
mod fixture;

use fixture::Fixture;

/// The container's cpu and memory knobs (`$$` is a literal `$` in Compose).
const REPORT: &str = "\
     echo period=$$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us) quota=$$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); \
     echo swappiness=$$(cat /sys/fs/cgroup/memory/memory.swappiness) limit=$$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes) memsw=$$(cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes); \
     echo oom=$$(grep oom_kill_disable /sys/fs/cgroup/memory/memory.oom_control)";

fn run(f: &Fixture, service: &str) -> (bool, String, String) {
    let out = f.berth(&["run", "--rm", service]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cpu_and_memory_knobs_reach_the_cgroup() {
    let service = |name: &str, attrs: &str| {
        format!("  {name}:\n    image: busybox:local\n    command: [\"sh\", \"-c\", \"{REPORT}\"]\n{attrs}")
    };
    let compose = [
        "services:\n".to_string(),
        service("cpu", "    cpu_period: 50000\n    cpu_quota: 25000\n"),
        service(
            "memory",
            "    mem_limit: 64m\n    memswap_limit: 128m\n    mem_swappiness: 10\n    oom_kill_disable: true\n",
        ),
    ]
    .concat();
    let mut f = Fixture::new("cgknobs", &compose);
    f.start_daemon();

    let (ok, out, err) = run(&f, "cpu");
    assert!(ok, "{out}{err}");
    assert!(out.contains("period=50000 quota=25000"), "{out}{err}");

    let (ok, out, err) = run(&f, "memory");
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("swappiness=10 limit=67108864 memsw=134217728"),
        "{out}{err}"
    );
    assert!(out.contains("oom=oom_kill_disable 1"), "{out}{err}");
    f.ok(&["down"]);
}

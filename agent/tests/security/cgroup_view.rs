//! Containers see their own cgroup at /sys/fs/cgroup, read-only, as under Docker (JVMs,
//! Go and Node size themselves from the limits there): on v1 their own directory of
//! each controller, bound into a read-only tmpfs; on v2 their cgroup namespace's
//! cgroup2. They read their limits and can neither raise them nor make cgroups, and
//! they see no other cgroup of the host. runc's default bundle (`runc spec`: a
//! `cgroup` mount, no cgroup namespace) gets the same view.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxMemoryBuilder, LinuxNamespaceType, Mount};

use crate::mounts_kit::TestBundle;

const LIMIT: i64 = 64 << 20;

/// Reads the memory limit, tries to raise it, to make a cgroup and to write the
/// tmpfs, and lists every directory under /sys/fs/cgroup below the controllers'.
const PROBE: &str = "\
f=/sys/fs/cgroup/memory/memory.limit_in_bytes; [ -f /sys/fs/cgroup/memory.max ] && f=/sys/fs/cgroup/memory.max; \
echo limit=$(cat $f); \
echo 1073741824 > $f 2>/dev/null && echo raised-limit; \
echo limit-after=$(cat $f); \
mkdir $(dirname $f)/escape 2>/dev/null && echo made-cgroup; \
touch /sys/fs/cgroup/planted 2>/dev/null && echo wrote-cgroup-root; \
echo others=$(find /sys/fs/cgroup -mindepth 2 -type d | wc -l); \
grep -q ' /sys/fs/cgroup' /proc/self/mountinfo && echo mounted";

fn with_memory_limit(tag: &str) -> TestBundle {
    let mut b = TestBundle::new(tag, PROBE);
    let memory = LinuxMemoryBuilder::default().limit(LIMIT).build().unwrap();
    b.linux()
        .resources_mut()
        .as_mut()
        .unwrap()
        .set_memory(Some(memory));
    b
}

fn check_view(out: &str) {
    assert!(out.contains("mounted"), "{out}");
    assert!(out.contains(&format!("limit={LIMIT}\n")), "{out}");
    assert!(out.contains(&format!("limit-after={LIMIT}\n")), "{out}");
    assert!(!out.contains("raised-limit"), "{out}");
    assert!(!out.contains("made-cgroup"), "{out}");
    assert!(!out.contains("wrote-cgroup-root"), "{out}");
    // Its own cgroup has no children, and no cgroup of the host is visible.
    assert!(out.contains("others=0\n"), "{out}");
}

/// Berth's default spec (a cgroup namespace, Docker's `cgroup` mount).
#[test]
fn a_container_reads_its_own_memory_limit_and_cannot_raise_it() {
    let b = with_memory_limit("cgview");
    let out = b.output();
    check_view(&out);
}

/// runc's default bundle: its mounts exactly as `runc spec` writes them, and no cgroup
/// namespace (runc's namespaces), which berth used to refuse on v1 hosts.
#[test]
fn runc_spec_bundles_cgroup_mount_shows_the_containers_own_cgroup() {
    let mut b = with_memory_limit("cgview-runc");
    let mounts: Vec<Mount> = serde_json::from_str(
        r#"[{"destination":"/proc","type":"proc","source":"proc"},
        {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
        {"destination":"/dev/pts","type":"devpts","source":"devpts","options":["nosuid","noexec","newinstance","ptmxmode=0666","mode=0620","gid=5"]},
        {"destination":"/dev/shm","type":"tmpfs","source":"shm","options":["nosuid","noexec","nodev","mode=1777","size=65536k"]},
        {"destination":"/dev/mqueue","type":"mqueue","source":"mqueue","options":["nosuid","noexec","nodev"]},
        {"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","noexec","nodev","ro"]},
        {"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["nosuid","noexec","nodev","relatime","ro"]}]"#,
    )
    .unwrap();
    b.spec.set_mounts(Some(mounts));
    let namespaces = b.linux().namespaces().clone().unwrap();
    b.linux().set_namespaces(Some(
        namespaces
            .into_iter()
            .filter(|n| n.typ() != LinuxNamespaceType::Cgroup)
            .collect(),
    ));
    let out = b.output();
    check_view(&out);
}

/// The limit the container read is the host's, unchanged after it tried to raise it.
#[test]
fn the_hosts_limit_is_unchanged() {
    let mut b = with_memory_limit("cgview-host");
    let host_file = match agent::runtime::cgroups::Hierarchy::detect().unwrap() {
        agent::runtime::cgroups::Hierarchy::V1 { root } => root
            .join("memory")
            .join(&b.id)
            .join("memory.limit_in_bytes"),
        agent::runtime::cgroups::Hierarchy::V2 { root } => root.join(&b.id).join("memory.max"),
    };
    // The container tries, then waits until the test has read the host's file.
    let script = "echo 1073741824 > /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; \
         echo 1073741824 > /sys/fs/cgroup/memory.max 2>/dev/null; echo tried; \
         while [ ! -e /bundle/checked ]; do sleep 0.05; done"
        .to_string();
    b.spec
        .process_mut()
        .as_mut()
        .unwrap()
        .set_args(Some(vec!["sh".into(), "-c".into(), script]));
    let bundle_dir = b.path().to_path_buf();
    b.bind(&bundle_dir, "/bundle", &["rbind"]);
    let checker = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let output: PathBuf = bundle_dir.join("output");
        while !std::fs::read_to_string(&output)
            .unwrap_or_default()
            .contains("tried")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the container never tried"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let limit = std::fs::read_to_string(&host_file).unwrap();
        std::fs::write(bundle_dir.join("checked"), "").unwrap();
        limit
    });
    let out = b.output();
    assert_eq!(checker.join().unwrap().trim(), LIMIT.to_string(), "{out}");
}

/// A cgroup2 hierarchy to run a container under: /sys/fs/cgroup on a v2 host, the
/// (controller-less) /sys/fs/cgroup/unified of a hybrid one.
fn v2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            nix::sys::statfs::statfs(p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })
}

/// On cgroup v2 (the unified hierarchy forced on this host when it is hybrid), with
/// a cgroup namespace (Docker's default) the container gets a cgroup2 mount whose root
/// is its own cgroup, and without one a bind of its own directory: either way only its
/// own processes, no cgroup above or beside it, and read-only.
#[test]
fn on_cgroup_v2_the_container_sees_only_its_own_cgroup_read_only() {
    let Some(root) = v2_root() else {
        eprintln!("no cgroup2 hierarchy on this host: nothing to check");
        return;
    };
    for namespace in [true, false] {
        let mut b = TestBundle::new(
            "cgview-v2",
            "echo procs=$(cat /sys/fs/cgroup/cgroup.procs | wc -l); \
             echo self=$(cat /proc/self/cgroup); \
             mkdir /sys/fs/cgroup/escape 2>/dev/null && echo made-cgroup; \
             echo 1 > /sys/fs/cgroup/cgroup.freeze 2>/dev/null && echo wrote; \
             echo others=$(find /sys/fs/cgroup -mindepth 1 -type d | wc -l); \
             grep ' /sys/fs/cgroup ' /proc/self/mountinfo",
        );
        b.hierarchy = Some(agent::runtime::cgroups::Hierarchy::V2 { root: root.clone() });
        // The hybrid host's unified hierarchy has no controllers to limit with.
        b.linux().set_resources(None);
        if !namespace {
            let namespaces = b.linux().namespaces().clone().unwrap();
            b.linux().set_namespaces(Some(
                namespaces
                    .into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::Cgroup)
                    .collect(),
            ));
        }
        let out = b.output();
        // sh, the command substitution's subshell, cat and wc: not the host's hundreds.
        let procs: usize = out
            .lines()
            .find_map(|l| l.strip_prefix("procs="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap();
        assert!((1..=5).contains(&procs), "namespace {namespace}: {out}");
        assert!(!out.contains("made-cgroup"), "namespace {namespace}: {out}");
        assert!(!out.contains("wrote"), "namespace {namespace}: {out}");
        assert!(out.contains("others=0\n"), "namespace {namespace}: {out}");
        assert!(out.contains(" ro,"), "namespace {namespace}: {out}");
        if namespace {
            // The container's cgroup is its namespace's root (hybrid hosts list their
            // v1 hierarchies first).
            assert!(
                out.contains(" 0::/\n") || out.contains("self=0::/\n"),
                "{out}"
            );
            assert!(out.contains(" - cgroup2 "), "{out}");
        }
    }
}

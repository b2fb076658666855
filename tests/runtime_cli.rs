//! `berth runtime spec` and `berth runtime run`, through the real binary (as root):
//! the exit status of the container is berth's.

// Helpers are test code: a panic is how they fail (clippy.toml covers #[test] fns only).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

/// A bundle with berth's default spec running `script`, made by `berth runtime spec`.
fn bundle(dir: &Path, script: &str) {
    testkit::busybox_rootfs(&dir.join("rootfs")).unwrap();
    let out = berth()
        .args(["runtime", "spec", "--bundle"])
        .arg(dir)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gives the bundle's container the top-level cgroup `/<id>`, removed by the guard.
fn own_cgroup(dir: &Path, id: &str) -> testkit::CgroupGuard {
    let config = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    spec["linux"]["cgroupsPath"] = serde_json::Value::from(format!("/{id}"));
    std::fs::write(&config, spec.to_string()).unwrap();
    testkit::CgroupGuard(id.to_string())
}

#[test]
fn the_container_exit_code_is_berths() {
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path(), "echo hello; exit 7");
    let id = testkit::unique_name("cli");
    let _cgroup = own_cgroup(dir.path(), &id);
    let out = berth()
        .args(["runtime", "run", "--bundle"])
        .arg(dir.path())
        .arg(&id)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}

#[test]
fn spec_refuses_to_overwrite_and_run_names_the_failed_step() {
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path(), "true");
    let again = berth()
        .args(["runtime", "spec", "--bundle"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    // A program that is not in the image: a clear error, not a hang or a panic.
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"sh\",", "\"no-such-program\",")).unwrap();
    let id = testkit::unique_name("cli-missing");
    let _cgroup = own_cgroup(dir.path(), &id);
    let out = berth()
        .args(["runtime", "run", "--bundle"])
        .arg(dir.path())
        .arg(&id)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("exec no-such-program") && stderr.contains("ENOENT"),
        "{stderr}"
    );
}

/// CVE-2019-5736 through `berth runtime run`: the CLI does not clone the container's
/// init itself but execs the shim's program from a sealed copy, which does. With
/// `init: true`, PID 1 is that clone; a container granted CAP_SYS_PTRACE (so non-dumpability hides
/// nothing) sees a memfd as its exe, and writing it fails, never the berth binary.
#[test]
fn run_clones_the_container_from_a_sealed_copy() {
    let dir = tempfile::tempdir().unwrap();
    bundle(
        dir.path(),
        "readlink /proc/1/exe; echo x 1<>/proc/1/exe && echo written || echo refused",
    );
    let id = testkit::unique_name("cliseal");
    let _cgroup = own_cgroup(dir.path(), &id);
    let config = dir.path().join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    spec["annotations"]["berth.init"] = "true".into();
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push("CAP_SYS_PTRACE".into());
    }
    std::fs::write(&config, spec.to_string()).unwrap();
    let out = berth()
        .args(["runtime", "run", "--bundle"])
        .arg(dir.path())
        .arg(&id)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let exe = lines.next().unwrap_or_default();
    // A sealed memfd, or the shim seen through a lower-only overlay: never the file
    // next to berth.
    let shim = Path::new(env!("CARGO_BIN_EXE_berth")).with_file_name("berth-shim");
    assert!(
        exe.starts_with("/memfd:") || exe == "/berth-shim",
        "{stdout} (the shim is {})",
        shim.display()
    );
    assert_eq!(lines.next(), Some("refused"), "{stdout}");
}

/// `berth runtime run` execs the berth-shim next to it without asking its build first;
/// a shim from another build refuses to run the container, saying what to do.
#[test]
fn a_shim_from_another_build_refuses_to_run() {
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path(), "echo ran");
    let id = testkit::unique_name("clibuild");
    let _cgroup = own_cgroup(dir.path(), &id);
    let shim = Path::new(env!("CARGO_BIN_EXE_berth")).with_file_name("berth-shim");
    let out = Command::new(&shim)
        .arg("--run")
        .arg(&id)
        .arg(dir.path())
        .arg("not-this-build")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("from another build"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! What the `berth runtime` tests share: a busybox bundle made by the real binary.

use std::path::Path;
use std::process::Command;

/// Fills `dir` with a busybox rootfs and the config.json `berth runtime spec` writes
/// for `args`, with the container in the top-level cgroup `/<id>`; returns the spec,
/// for a test to change further (then [`write_spec`]).
pub fn spec_bundle(dir: &Path, args: &[&str], id: &str) -> serde_json::Value {
    testkit::busybox_rootfs(&dir.join("rootfs")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["runtime", "spec", "--bundle"])
        .arg(dir)
        .arg("--")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    spec["linux"]["cgroupsPath"] = serde_json::Value::from(format!("/{id}"));
    write_spec(dir, &spec);
    spec
}

/// Writes `spec` as the bundle's config.json.
pub fn write_spec(dir: &Path, spec: &serde_json::Value) {
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
}

//! `berth image` through the real binary, with its own state directory.

use std::path::Path;
use std::process::{Command, Output};

fn berth(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("running berth")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "berth failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

#[test]
fn import_ls_inspect_rm() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let tar = testkit::busybox_rootfs_tar(tmp.path()).unwrap();
    let tar = tar.to_str().unwrap();

    let id = ok(&berth(&state, &["image", "import", tar, "busybox:1"]));
    assert!(id.starts_with("sha256:"), "{id}");
    ok(&berth(
        &state,
        &["image", "import", tar, "localhost:5000/x/y"],
    ));

    let ls = ok(&berth(&state, &["image", "ls"]));
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines.len(), 3, "{ls}");
    let header: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(header, ["REPOSITORY", "TAG", "IMAGE ID", "SIZE"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..3],
        ["busybox", "1", &id.trim()["sha256:".len()..][..12]]
    );
    assert!(row[3].ends_with("MB"), "{ls}");
    assert!(lines[2].starts_with("localhost:5000/x/y "), "{ls}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&berth(&state, &["image", "inspect", "busybox:1"]))).unwrap();
    assert_eq!(json[0]["reference"], "docker.io/library/busybox:1");
    assert_eq!(json[0]["config_digest"], id.trim());
    assert_eq!(json[0]["os"], "linux");
    assert_eq!(json[0]["layers"].as_array().unwrap().len(), 1);

    let rm = ok(&berth(&state, &["image", "rm", "busybox:1"]));
    assert_eq!(
        rm, "Untagged: busybox:1\n",
        "the other image still uses the blobs"
    );
    let rm = ok(&berth(&state, &["image", "rm", "localhost:5000/x/y"]));
    assert_eq!(
        rm,
        "Untagged: localhost:5000/x/y:latest\nDeleted: 3 blobs, 1 layers\n"
    );
    assert_eq!(ok(&berth(&state, &["image", "ls"])).lines().count(), 1);
}

#[test]
fn missing_images_and_bad_names_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    for args in [&["image", "inspect", "x"][..], &["image", "rm", "x"][..]] {
        let out = berth(&state, args);
        assert!(!out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "berth: image \"x:latest\" not found; import it with berth image import, load it with berth image load, or pull it\n"
        );
    }
    let out = berth(&state, &["image", "import", "/nonexistent.tar", "Bad"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(
            "berth: invalid image reference \"Bad\": repository name must be lowercase"
        ),
        "{err}"
    );
}

#[test]
fn load_an_oci_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let tar = testkit::busybox_rootfs_tar(tmp.path()).unwrap();
    let layout = tmp.path().join("layout");
    testkit::oci::oci_layout(&tar, &layout, "v1").unwrap();
    let layout = layout.to_str().unwrap();

    let out = berth(&state, &["image", "load", layout]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give one with --name NAME"));
    let loaded = ok(&berth(&state, &["image", "load", "--name", "app", layout]));
    assert_eq!(loaded, "Loaded image: app:v1\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&berth(&state, &["image", "inspect", "app:v1"]))).unwrap();
    assert_eq!(json[0]["config"]["Cmd"][0], "echo $GREETING");
}

#[test]
fn importing_what_is_not_a_tar_says_so_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "root:x:0:0:root:/root:/bin/sh\nthis is not a tar archive at all\n",
    )
    .expect("write");
    let out = berth(
        &state,
        &["image", "import", text.to_str().expect("utf-8"), "x:1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("not a tar archive"), "{err}");
    assert!(
        !err.contains("root:x:0:0"),
        "the file's bytes leak into the message: {err}"
    );

    let missing = dir.path().join("missing.tar");
    let out = berth(
        &state,
        &["image", "import", missing.to_str().expect("utf-8"), "x:1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "cause repeated: {err}"
    );
}

#[test]
fn pull_from_a_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let tar = testkit::busybox_rootfs_tar(&dir.path().join("img")).expect("rootfs tar");
    let layout = dir.path().join("layout");
    testkit::oci::oci_layout(&tar, &layout, "1").expect("layout");
    let registry = testkit::registry::Registry::start().expect("registry");
    registry
        .push_layout(&layout, "1", "tools/busybox:1", None)
        .expect("push");

    let name = format!("{}/tools/busybox:1", registry.addr);
    let out = ok(&berth(&state, &["image", "pull", "-q", &name]));
    assert!(out.starts_with(&format!("Pulled {name} (sha256:")), "{out}");
    let ls = ok(&berth(&state, &["image", "ls"]));
    assert!(
        ls.contains(&format!("{}/tools/busybox", registry.addr)),
        "{ls}"
    );
}

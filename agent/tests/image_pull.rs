//! Pulling from a real registry (Debian's docker-registry on a loopback port), with
//! images pushed there by skopeo from OCI layouts made of busybox-static. Also: progress
//! as plain lines when not on a terminal, and a multi-platform index resolved to this
//! machine's platform.

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use agent::image::pull::{pull, Credentials, Progress, PullOptions};
use agent::image::{ImageStore, Reference};
use testkit::registry::Registry;

/// A three-layer busybox image as an OCI layout: the rootfs, then two small layers.
fn three_layer_layout(dir: &Path) -> PathBuf {
    let base = testkit::busybox_rootfs_tar(&dir.join("base")).expect("busybox rootfs tar");
    let mut layers = vec![base];
    for (i, content) in ["first extra layer\n", "second extra layer\n"]
        .iter()
        .enumerate()
    {
        let root = dir.join(format!("extra{i}/root"));
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join(format!("etc/layer{i}.txt")), content).expect("write");
        let tar = dir.join(format!("extra{i}/layer.tar"));
        testkit::tar_dir(&root, &tar).expect("layer tar");
        layers.push(tar);
    }
    let layout = dir.join("layout");
    let refs: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
    testkit::oci::oci_layout_with_layers(&refs, &layout, "1").expect("OCI layout");
    layout
}

fn reference(registry: &Registry, repo_tag: &str) -> Reference {
    Reference::parse(&format!("{}/{repo_tag}", registry.addr)).expect("reference")
}

fn blob_count(store_dir: &Path) -> usize {
    std::fs::read_dir(store_dir.join("images/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn pulls_a_multi_layer_image_and_keeps_its_config() {
    let work = tempfile::tempdir().unwrap();
    let layout = three_layer_layout(work.path());
    let registry = Registry::start().unwrap();
    registry
        .push_layout(&layout, "1", "test/busybox:1", None)
        .unwrap();

    let state = work.path().join("state");
    let store = ImageStore::open(&state).unwrap();
    let r = reference(&registry, "test/busybox:1");
    let image = pull(&store, &r, &PullOptions::default()).unwrap();

    assert_eq!(image.layers.len(), 3);
    assert_eq!(
        image.config.env,
        vec!["PATH=/bin".to_string(), "GREETING=hello".to_string()]
    );
    assert_eq!(
        store.image(&r).unwrap().manifest_digest,
        image.manifest_digest
    );
    // Every layer is unpacked and the top one holds its file.
    let dirs = store.layer_dirs(&image).unwrap();
    assert_eq!(dirs.len(), 3);
    assert!(
        dirs[0].join("etc/layer1.txt").is_file(),
        "topmost layer first: {dirs:?}"
    );
    assert!(dirs[2].join("bin/busybox").is_file());

    // A second pull stores nothing new: every blob is already there.
    let before = blob_count(&state);
    let again = pull(&store, &r, &PullOptions::default()).unwrap();
    assert_eq!(again.manifest_digest, image.manifest_digest);
    assert_eq!(blob_count(&state), before);
}

#[test]
fn pull_by_digest_checks_the_digest() {
    let work = tempfile::tempdir().unwrap();
    let layout = three_layer_layout(work.path());
    let registry = Registry::start().unwrap();
    registry
        .push_layout(&layout, "1", "test/busybox:1", None)
        .unwrap();
    let store = ImageStore::open(&work.path().join("state")).unwrap();
    let by_tag = pull(
        &store,
        &reference(&registry, "test/busybox:1"),
        &PullOptions::default(),
    )
    .unwrap();

    let pinned = reference(
        &registry,
        &format!("test/busybox@{}", by_tag.manifest_digest),
    );
    let image = pull(&store, &pinned, &PullOptions::default()).unwrap();
    assert_eq!(image.manifest_digest, by_tag.manifest_digest);

    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = pull(
        &store,
        &reference(&registry, &format!("test/busybox@{wrong}")),
        &PullOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("test/busybox"), "{err}");
}

#[test]
fn basic_auth_from_flags_and_from_docker_login() {
    let work = tempfile::tempdir().unwrap();
    let layout = three_layer_layout(work.path());
    let registry = Registry::start_with_basic_auth("tester", "s3cret").unwrap();
    registry
        .push_layout(
            &layout,
            "1",
            "private/busybox:1",
            Some(("tester", "s3cret")),
        )
        .unwrap();
    let store = ImageStore::open(&work.path().join("state")).unwrap();
    let r = reference(&registry, "private/busybox:1");
    let empty_docker_dir = work.path().join("no-docker-config");

    let anonymous = PullOptions {
        docker_config_dir: Some(empty_docker_dir.clone()),
        ..Default::default()
    };
    let err = pull(&store, &r, &anonymous).unwrap_err().to_string();
    assert!(
        err.contains("--username"),
        "the error says how to authenticate: {err}"
    );

    let wrong = PullOptions {
        credentials: Credentials::Basic {
            username: "tester".into(),
            password: "nope".into(),
        },
        ..Default::default()
    };
    assert!(pull(&store, &r, &wrong).is_err());

    let right = PullOptions {
        credentials: Credentials::Basic {
            username: "tester".into(),
            password: "s3cret".into(),
        },
        ..Default::default()
    };
    pull(&store, &r, &right).unwrap();

    // The user's existing `docker login` works too ("tester:s3cret" in base64).
    let docker_dir = work.path().join("docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    std::fs::write(
        docker_dir.join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "dGVzdGVyOnMzY3JldA=="}}}}}}"#,
            registry.addr
        ),
    )
    .unwrap();
    let fresh = ImageStore::open(&work.path().join("state2")).unwrap();
    let from_login = PullOptions {
        docker_config_dir: Some(docker_dir),
        ..Default::default()
    };
    pull(&fresh, &r, &from_login).unwrap();
}

#[test]
fn missing_images_and_unreachable_registries_are_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start().unwrap();
    let store = ImageStore::open(&work.path().join("state")).unwrap();
    let err = pull(
        &store,
        &reference(&registry, "test/nothing:1"),
        &PullOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pulling") && err.contains("test/nothing:1"),
        "{err}"
    );
    assert!(
        store.images().unwrap().is_empty(),
        "nothing half-registered"
    );

    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = Reference::parse(&format!("127.0.0.1:{port}/x/y:1")).unwrap();
    let err = pull(&store, &r, &PullOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn progress_off_a_terminal_is_one_plain_line_per_layer_event() {
    let work = tempfile::tempdir().unwrap();
    let layout = three_layer_layout(work.path());
    let registry = Registry::start().unwrap();
    registry
        .push_layout(&layout, "1", "test/busybox:1", None)
        .unwrap();
    let store = ImageStore::open(&work.path().join("state")).unwrap();
    let r = reference(&registry, "test/busybox:1");
    let pull_lines = || {
        let sink = Arc::new(Mutex::new(Vec::<u8>::new()));
        let opts = PullOptions {
            progress: Progress::Lines(sink.clone()),
            ..Default::default()
        };
        let image = pull(&store, &r, &opts).unwrap();
        let text = String::from_utf8(sink.lock().unwrap().clone()).unwrap();
        (image, text)
    };

    let (image, text) = pull_lines();
    assert!(
        !text.contains('\r') && !text.contains('\x1b'),
        "no redraws or escape codes: {text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines {
        let (name, event) = line.split_once(": ").unwrap();
        assert!(
            name.len() == 12 && name.chars().all(|c| c.is_ascii_hexdigit()),
            "{line:?}"
        );
        assert!(
            event.starts_with("downloaded ") || event == "unpacked",
            "{line:?}"
        );
    }
    for layer in &image.layers {
        let name = &layer.digest.hex()[..12];
        for event in ["downloaded", "unpacked"] {
            let n = lines
                .iter()
                .filter(|l| l.starts_with(&format!("{name}: {event}")))
                .count();
            assert_eq!(n, 1, "{name} {event}: {text}");
        }
    }
    // The config is downloaded too; 3 layers x 2 events + 1.
    assert_eq!(lines.len(), 7, "{text}");

    let (_, again) = pull_lines();
    assert_eq!(
        again
            .lines()
            .filter(|l| l.ends_with(": already present"))
            .count(),
        3,
        "{again}"
    );
}

fn arch() -> &'static str {
    agent::image::oci::host_architecture()
}

/// An OCI layout whose tag `multi` is an image index of two single-layer images: one
/// for another architecture (listed first), one for this machine. Each image's layer
/// holds `etc/platform` saying which it is.
fn multi_platform_layout(dir: &Path) -> (PathBuf, String) {
    use sha2::Digest as _;
    let other = if arch() == "arm64" { "amd64" } else { "arm64" };
    let layout = dir.join("multi");
    let mut entries = Vec::new();
    let mut host_manifest = String::new();
    for platform in [other, arch()] {
        let root = dir.join(platform).join("root");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/platform"), platform).expect("write");
        let tar = dir.join(platform).join("layer.tar");
        testkit::tar_dir(&root, &tar).expect("tar");
        let single = dir.join(platform).join("layout");
        testkit::oci::oci_layout(&tar, &single, "1").expect("layout");
        std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
        for blob in std::fs::read_dir(single.join("blobs/sha256")).expect("blobs") {
            let blob = blob.expect("blob").path();
            std::fs::copy(
                &blob,
                layout
                    .join("blobs/sha256")
                    .join(blob.file_name().expect("name")),
            )
            .expect("copy");
        }
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(single.join("index.json")).expect("index"))
                .expect("index json");
        let manifest = &index["manifests"][0];
        if platform == arch() {
            host_manifest = manifest["digest"].as_str().expect("digest").to_string();
        }
        entries.push(serde_json::json!({
            "mediaType": manifest["mediaType"],
            "digest": manifest["digest"],
            "size": manifest["size"],
            "platform": {"os": "linux", "architecture": platform},
        }));
    }
    let image_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string();
    let hex = hex::encode(sha2::Sha256::digest(image_index.as_bytes()));
    std::fs::write(layout.join("blobs/sha256").join(&hex), &image_index).expect("write");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write");
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": image_index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(layout.join("index.json"), top.to_string()).expect("write");
    (layout, host_manifest)
}

#[test]
fn a_multi_platform_index_pulls_this_machines_image() {
    let work = tempfile::tempdir().unwrap();
    let (layout, host_manifest) = multi_platform_layout(work.path());
    let registry = Registry::start().unwrap();
    registry
        .push_layout_all(&layout, "multi", "test/multi:1")
        .unwrap();
    let store = ImageStore::open(&work.path().join("state")).unwrap();
    let image = pull(
        &store,
        &reference(&registry, "test/multi:1"),
        &PullOptions::default(),
    )
    .unwrap();
    assert_eq!(image.manifest_digest.to_string(), host_manifest);
    let dirs = store.layer_dirs(&image).unwrap();
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("etc/platform")).unwrap(),
        arch()
    );
}

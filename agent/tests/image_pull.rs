//! Pulling from a real registry (Debian's docker-registry on a loopback port), with
//! images pushed there by skopeo from OCI layouts made of busybox-static.

use std::path::{Path, PathBuf};

use agent::image::pull::{pull, Credentials, PullOptions};
use agent::image::{Reference, Store};
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
    let store = Store::open(&state).unwrap();
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
    let store = Store::open(&work.path().join("state")).unwrap();
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
    let store = Store::open(&work.path().join("state")).unwrap();
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
    let fresh = Store::open(&work.path().join("state2")).unwrap();
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
    let store = Store::open(&work.path().join("state")).unwrap();
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

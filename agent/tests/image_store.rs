//! The image store end to end on real files: import of a busybox rootfs, load of an
//! OCI layout (directory and tar) and of a `docker save` archive made by skopeo,
//! sharing of blobs and layers, removal and garbage collection.

use std::fs;
use std::path::Path;
use std::process::Command;

use agent::image::{import, load, ImageError, ImageStore, Reference};

fn count(dir: &Path) -> usize {
    fs::read_dir(dir)
        .expect("listing a store directory")
        .filter(|e| {
            let name = e.as_ref().expect("dir entry").file_name();
            !name.to_string_lossy().starts_with('.')
        })
        .count()
}

fn blobs(store: &ImageStore) -> usize {
    count(&store.root().join("blobs/sha256"))
}

fn layers(store: &ImageStore) -> usize {
    count(&store.root().join("layers"))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running a helper tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).expect("a valid test reference")
}

#[test]
fn import_busybox_then_list_and_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = testkit::busybox_rootfs_tar(tmp.path()).unwrap();
    let store = ImageStore::open(&tmp.path().join("state")).unwrap();

    let image = import(&store, &tar, "busybox").unwrap();
    assert_eq!(
        image.reference.to_string(),
        "docker.io/library/busybox:latest"
    );
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.os, "linux");
    assert_eq!(image.config, Default::default());
    // A plain tar is its own diff_id.
    assert_eq!(image.layers[0].digest, image.layers[0].diff_id);
    assert_eq!(store.image(&reference("busybox")).unwrap(), image);

    let dirs = store.layer_dirs(&image).unwrap();
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(dirs[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );

    // Same tar, another name: same image, nothing stored twice.
    let (b, l) = (blobs(&store), layers(&store));
    let again = import(&store, &tar, "localhost:5000/tools/bb:1").unwrap();
    assert_eq!(again.manifest_digest, image.manifest_digest);
    assert_eq!((blobs(&store), layers(&store)), (b, l));
    assert_eq!((b, l), (3, 1));
    let names: Vec<String> = store
        .images()
        .unwrap()
        .iter()
        .map(|i| i.reference.familiar())
        .collect();
    assert_eq!(names, ["busybox:latest", "localhost:5000/tools/bb:1"]);

    let err = store.image(&reference("nope")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "image \"nope:latest\" not found; import it with berth image import, load it with berth image load, or pull it"
    );
}

#[test]
fn load_oci_layout_dir_and_tar_keep_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = testkit::busybox_rootfs_tar(tmp.path()).unwrap();
    let layout = tmp.path().join("layout");
    testkit::oci::oci_layout(&tar, &layout, "v1").unwrap();
    // The layout is a real one: other tools read it.
    run(Command::new("umoci")
        .arg("stat")
        .arg("--image")
        .arg(format!("{}:v1", layout.display())));
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:v1", layout.display())));

    let store = ImageStore::open(&tmp.path().join("state")).unwrap();
    let err = load(&store, &layout, None).unwrap_err();
    assert!(err.to_string().contains("tagged only \"v1\""), "{err}");
    assert!(err.to_string().contains("--name"), "{err}");

    let images = load(&store, &layout, Some("app")).unwrap();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image.reference.to_string(), "docker.io/library/app:v1");
    let c = &image.config;
    assert_eq!(c.env, ["PATH=/bin", "GREETING=hello"]);
    assert_eq!(
        c.entrypoint.as_deref(),
        Some(&["/bin/sh".to_string(), "-c".to_string()][..])
    );
    assert_eq!(c.cmd.as_deref(), Some(&["echo $GREETING".to_string()][..]));
    assert_eq!(c.working_dir.as_deref(), Some("/home/app"));
    assert_eq!(c.user.as_deref(), Some("app"));
    assert!(c.exposed_ports.contains_key("8080/tcp"));
    let hc = c.healthcheck.as_ref().unwrap();
    assert_eq!(
        (hc.test.clone(), hc.interval, hc.retries),
        (
            vec!["CMD".to_string(), "true".to_string()],
            Some(2_000_000_000),
            Some(3)
        )
    );
    assert_eq!(
        image.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_ne!(image.layers[0].digest, image.layers[0].diff_id);
    assert!(store.layer_dirs(image).unwrap()[0]
        .join("bin/busybox")
        .is_file());

    // Loading again, and from a tar of the layout, stores nothing new.
    let (b, l) = (blobs(&store), layers(&store));
    assert_eq!((b, l), (3, 1));
    load(&store, &layout, Some("app")).unwrap();
    let layout_tar = tmp.path().join("layout.tar");
    testkit::tar_dir(&layout, &layout_tar).unwrap();
    let from_tar = load(&store, &layout_tar, Some("other")).unwrap();
    assert_eq!(from_tar[0].manifest_digest, image.manifest_digest);
    assert_eq!((blobs(&store), layers(&store)), (b, l));
}

#[test]
fn load_docker_archive_made_by_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = testkit::busybox_rootfs_tar(tmp.path()).unwrap();
    let layout = tmp.path().join("layout");
    testkit::oci::oci_layout(&tar, &layout, "v1").unwrap();
    let archive = tmp.path().join("saved.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!(
            "docker-archive:{}:example/app:v2",
            archive.display()
        )));

    let store = ImageStore::open(&tmp.path().join("state")).unwrap();
    let oci = load(&store, &layout, Some("app")).unwrap().remove(0);
    let docker = load(&store, &archive, None).unwrap().remove(0);
    assert_eq!(docker.reference.to_string(), "docker.io/example/app:v2");
    assert_eq!(docker.config, oci.config);
    assert_eq!(
        docker.config_digest, oci.config_digest,
        "skopeo keeps the config byte for byte"
    );
    assert_eq!(docker.layers[0].diff_id, oci.layers[0].diff_id);
    // Same content: one unpacked layer, shared.
    assert_eq!(layers(&store), 1);
    assert_eq!(
        store.layer_dirs(&docker).unwrap(),
        store.layer_dirs(&oci).unwrap()
    );

    // Loading the archive twice stores each blob once.
    let before = blobs(&store);
    load(&store, &archive, None).unwrap();
    assert_eq!(blobs(&store), before);
}

#[test]
fn remove_collects_what_no_image_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = testkit::busybox_rootfs_tar(tmp.path()).unwrap();
    let layout = tmp.path().join("layout");
    testkit::oci::oci_layout(&tar, &layout, "v1").unwrap();
    let store = ImageStore::open(&tmp.path().join("state")).unwrap();
    import(&store, &tar, "a").unwrap();
    import(&store, &tar, "b").unwrap();
    load(&store, &layout, Some("c")).unwrap();
    // import: layer, config, manifest; load: gzip layer, config, manifest. One layer dir.
    assert_eq!((blobs(&store), layers(&store)), (6, 1));

    let swept = store.remove_image(&reference("a")).unwrap();
    assert_eq!((swept.blobs, swept.layers), (0, 0), "b still uses them");
    store.remove_image(&reference("b")).unwrap();
    assert_eq!(
        (blobs(&store), layers(&store)),
        (3, 1),
        "c shares the unpacked layer"
    );
    assert!(store
        .layer_dirs(&store.image(&reference("c:v1")).unwrap())
        .is_ok());
    store.remove_image(&reference("c:v1")).unwrap();
    assert_eq!((blobs(&store), layers(&store)), (0, 0));
    assert!(store.images().unwrap().is_empty());

    let err = store.remove_image(&reference("a")).unwrap_err();
    assert!(
        matches!(err, ImageError::NotFound(ref n) if n == "a:latest"),
        "{err}"
    );
}

#[test]
fn corrupted_layer_is_rejected_and_not_tagged() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = testkit::busybox_rootfs_tar(tmp.path()).unwrap();
    let layout = tmp.path().join("layout");
    testkit::oci::oci_layout(&tar, &layout, "v1").unwrap();
    // Flip a byte in the biggest blob: the layer.
    let biggest = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&biggest, bytes).unwrap();

    let store = ImageStore::open(&tmp.path().join("state")).unwrap();
    let err = load(&store, &layout, Some("app")).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(store.images().unwrap().is_empty());
    assert_eq!(layers(&store), 0);
}

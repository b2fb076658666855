//! Pulls that run at the same time as other pulls and as garbage collection, against
//! the real registry behind `testkit::registry::Proxy`, which counts the registry's
//! requests and holds chosen ones so each interleaving is forced, not hoped for.
//!
//! Two images share a large base layer (busybox plus 4 MiB of incompressible data):
//! - two pulls at once fetch the shared layer once: the first puller holds the layer's
//!   blob lock (`images/locks/<hex>`), the second waits on it (seen in /proc/locks),
//!   then finds the layer in the store and skips it;
//! - `image rm` of one image while the other is mid-pull (held on its own layer,
//!   after the shared layer was found in the store) deletes nothing the pull will
//!   reference: collection is deferred while a pull is in flight, the pull completes,
//!   and the next collection deletes only what no image uses.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::image::pull::{pull, PullOptions};
use agent::image::{Digest, ImageStore, Reference};
use testkit::registry::{Proxy, Registry};

struct Images {
    registry: Registry,
    /// The shared base layer's blob digest (gzip), and each image's own layer's.
    base: Digest,
    own_a: Digest,
    own_b: Digest,
}

/// Deterministic bytes gzip cannot shrink (xorshift), so the layer stays large.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn layer_tar(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let root = dir.join(name).join("root");
    for (path, bytes) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }
    let tar = dir.join(name).join("layer.tar");
    testkit::tar_dir(&root, &tar).expect("layer tar");
    tar
}

/// `test/a:1` = [base, a] and `test/b:1` = [base, b] in a fresh registry.
fn two_images_sharing_a_base(dir: &Path) -> Images {
    let base_root = dir.join("base/root");
    testkit::busybox_rootfs(&base_root).expect("busybox rootfs");
    std::fs::write(base_root.join("noise.bin"), noise(4 << 20)).expect("noise");
    let base = dir.join("base/layer.tar");
    testkit::tar_dir(&base_root, &base).expect("base tar");
    let a = layer_tar(dir, "a", &[("etc/a.txt", b"image a\n")]);
    let b = layer_tar(dir, "b", &[("etc/b.txt", b"image b\n")]);
    let registry = Registry::start().expect("registry");
    let mut digests = Vec::new();
    for (name, own) in [("a", &a), ("b", &b)] {
        let layout = dir.join(format!("layout-{name}"));
        testkit::oci::oci_layout_with_layers(&[&base, own], &layout, "1").expect("layout");
        registry
            .push_layout(&layout, "1", &format!("test/{name}:1"), None)
            .expect("push");
        digests.push(layer_digests(&layout));
    }
    assert_eq!(digests[0][0], digests[1][0], "the base layer is shared");
    Images {
        registry,
        base: digests[0][0].clone(),
        own_a: digests[0][1].clone(),
        own_b: digests[1][1].clone(),
    }
}

/// The layer digests of the one image in an OCI layout.
fn layer_digests(layout: &Path) -> Vec<Digest> {
    let read = |d: &str| -> serde_json::Value {
        let hex = d.trim_start_matches("sha256:");
        let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).expect("blob");
        serde_json::from_slice(&bytes).expect("json")
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
            .expect("index json");
    let manifest = read(index["manifests"][0]["digest"].as_str().expect("digest"));
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            l["digest"]
                .as_str()
                .expect("digest")
                .parse::<Digest>()
                .expect("digest")
        })
        .collect()
}

fn reference(addr: &str, name: &str) -> Reference {
    Reference::parse(&format!("{addr}/{name}")).expect("reference")
}

/// Whether some process waits (blocked, `->` in /proc/locks) for a flock on `path`.
fn someone_waits_for(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(ino) = std::fs::metadata(path).map(|m| m.ino()) else {
        return false;
    };
    let locks = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
    locks.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1) == Some(&"->")
            && fields.get(2) == Some(&"FLOCK")
            && fields
                .get(6)
                .is_some_and(|dev_ino| dev_ino.ends_with(&format!(":{ino}")))
    })
}

fn blob_get(digest: &Digest) -> String {
    format!("/blobs/{digest}")
}

#[test]
fn two_concurrent_pulls_download_a_shared_layer_once() {
    let work = tempfile::tempdir().unwrap();
    let images = two_images_sharing_a_base(work.path());
    let proxy = Proxy::start(&images.registry.addr).unwrap();
    let state = work.path().join("state");
    let store = ImageStore::open(&state).unwrap();
    // The first download of the base layer waits in the proxy until the other pull has
    // reached that layer too.
    proxy.hold(&blob_get(&images.base));

    let pullers: Vec<_> = ["test/a:1", "test/b:1"]
        .into_iter()
        .map(|name| {
            let (store, r) = (store.clone(), reference(&proxy.addr, name));
            std::thread::spawn(move || pull(&store, &r, &PullOptions::default()))
        })
        .collect();
    assert!(
        proxy.wait_held(Duration::from_secs(60)),
        "no pull reached the base layer"
    );
    // Either the other puller queues on the blob lock (correct), or it asks the
    // registry for the same blob (the bug this test is for).
    let lock = store.blob_lock_path(&images.base);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !someone_waits_for(&lock) && proxy.count("GET", &blob_get(&images.base)) < 2 {
        assert!(
            Instant::now() < deadline,
            "the second pull never reached the base layer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.release();
    for p in pullers {
        p.join().unwrap().unwrap();
    }

    assert_eq!(
        proxy.count("GET", &blob_get(&images.base)),
        1,
        "the shared layer was downloaded more than once: {:#?}",
        proxy.requests()
    );
    for own in [&images.own_a, &images.own_b] {
        assert_eq!(proxy.count("GET", &blob_get(own)), 1);
    }
    for name in ["test/a:1", "test/b:1"] {
        let image = store.image(&reference(&proxy.addr, name)).unwrap();
        let dirs = store.layer_dirs(&image).unwrap();
        assert!(dirs[1].join("noise.bin").is_file(), "{name}: base unpacked");
    }
}

#[test]
fn image_rm_during_a_pull_deletes_nothing_the_pull_needs() {
    let work = tempfile::tempdir().unwrap();
    let images = two_images_sharing_a_base(work.path());
    let proxy = Proxy::start(&images.registry.addr).unwrap();
    let store = ImageStore::open(&work.path().join("state")).unwrap();
    let a = reference(&proxy.addr, "test/a:1");
    let b = reference(&proxy.addr, "test/b:1");
    let image_a = pull(&store, &a, &PullOptions::default()).unwrap();

    // b's pull finds the base layer in the store (a brought it) and skips it, then
    // waits in the proxy for its own layer. Only a references the base now.
    proxy.hold(&blob_get(&images.own_b));
    let puller = {
        let (store, b) = (store.clone(), b.clone());
        std::thread::spawn(move || pull(&store, &b, &PullOptions::default()))
    };
    assert!(
        proxy.wait_held(Duration::from_secs(60)),
        "b's pull did not start"
    );

    let swept = store.remove_image(&a).unwrap();
    assert!(
        swept.deferred,
        "collection must wait for the pull: {swept:?}"
    );
    assert_eq!((swept.blobs, swept.layers), (0, 0));
    assert!(store.image(&a).is_err(), "the reference itself is gone");
    let base_diff = &image_a.layers[0].diff_id;
    assert!(store.has_blob(&images.base));
    assert!(store.layer_dir(base_diff).is_dir());

    proxy.release();
    let image_b = puller.join().unwrap().unwrap();
    assert_eq!(image_b.layers[0].diff_id, *base_diff);
    assert!(store.layer_dirs(&image_b).unwrap()[1]
        .join("noise.bin")
        .is_file());
    assert_eq!(
        proxy.count("GET", &blob_get(&images.base)),
        1,
        "b reused the base layer"
    );

    // With no pull in flight, collection runs and removes only what a used: its
    // manifest, config and own layer (blob and unpacked dir).
    let lock = store.lock().unwrap();
    let swept = store.collect_garbage(&lock).unwrap();
    drop(lock);
    assert!(!swept.deferred);
    assert_eq!((swept.blobs, swept.layers), (3, 1), "{swept:?}");
    assert!(!store.has_blob(&images.own_a));
    assert!(store.has_blob(&images.base) && store.has_blob(&images.own_b));
    assert!(store.layer_dirs(&image_b).is_ok());
}

//! Images between the nodes of a cluster, without a registry: a node that must run an
//! image it lacks (one imported, loaded or pulled on another node) fetches it from a
//! node that has it, blob by blob.
//!
//! The serving side answers from the store as it is: [`manifest`] gives a reference's
//! manifest byte for byte, as stored, and [`open_blob`] a blob by digest, but only one
//! that an image in the store uses. A digest comes from the network as text and is
//! parsed into a [`Digest`] (64 hex characters) before it names a file, so no request
//! can reach another path; and a blob that only waits for garbage collection (its image
//! was removed) is not handed out.
//!
//! The fetching side, [`fetch`], is pure over the [`BlobSource`] seam (the binary's
//! source calls another node over the cluster port; the tests' source is a second store).
//! It trusts nothing the source says: the manifest is checked against the digest the
//! source states and the one the reference pins, every blob goes through the store's
//! verifying writer and may not exceed the size its manifest gives, and the image is
//! registered only once every blob is in, through the path `pull` uses, so a failed
//! fetch leaves no image behind. Blobs and unpacked layers the store has are not
//! fetched again; the locks are `pull`'s (the store's module doc), so two fetches of one
//! image, or a fetch and a pull, download each layer once.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};

use super::images::{layers_to_fetch, verify, Image};
use super::oci::{Descriptor, Manifest, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_MANIFEST};
use super::reference::Reference;
use super::store::{ImageStore, InFlight};
use super::{Digest, ImageError};

/// A manifest is a small JSON document: a peer sending more is not sending one.
pub const MAX_MANIFEST: usize = 8 << 20;

/// An image's manifest as one node hands it to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerManifest {
    pub media_type: String,
    /// The digest the sender says the bytes have; the receiver hashes them again.
    pub digest: Option<Digest>,
    pub bytes: Vec<u8>,
}

// --- serving ---

/// The manifest `reference` names in `store`, as stored (an image index was resolved
/// to this node's platform when the image came in, so it is always an image manifest).
pub fn manifest(store: &ImageStore, reference: &Reference) -> Result<PeerManifest, ImageError> {
    let image = store.image(reference)?;
    let bytes = store.read_blob(&image.manifest_digest)?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
        what: format!("manifest {}", image.manifest_digest),
        source,
    })?;
    Ok(PeerManifest {
        // OCI lets a manifest leave its media type out; Docker's always has one.
        media_type: manifest
            .media_type
            .unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_string()),
        digest: Some(image.manifest_digest),
        bytes,
    })
}

/// Opens blob `digest` for a peer, with its size, if an image in `store` uses it (as
/// its manifest, its config or a layer).
pub fn open_blob(store: &ImageStore, digest: &Digest) -> Result<(File, u64), ImageError> {
    if !images_blobs(store)?.contains(digest) {
        return Err(ImageError::NoSuchBlob(digest.clone()));
    }
    // Opened, the blob stays readable even if garbage collection removes it meanwhile.
    let file = store.open_blob(digest)?;
    let size = file
        .metadata()
        .map_err(|source| ImageError::Io {
            op: "reading the size of",
            path: store.blob_path(digest),
            source,
        })?
        .len();
    Ok((file, size))
}

/// Every blob the store's images use. An image that cannot be read (a blob corrupted on
/// disk) is left out rather than failing every request: its blobs are not served.
fn images_blobs(store: &ImageStore) -> Result<BTreeSet<Digest>, ImageError> {
    let mut blobs = BTreeSet::new();
    for (name, manifest) in store.references()? {
        let Ok(reference) = Reference::parse(&name) else {
            continue;
        };
        let Ok(image) = store.read_image(reference, &manifest) else {
            continue;
        };
        blobs.insert(image.manifest_digest);
        blobs.insert(image.config_digest);
        blobs.extend(image.layers.into_iter().map(|l| l.digest));
    }
    Ok(blobs)
}

// --- fetching ---

/// Where [`fetch`] gets an image: another node (the binary's implementation calls a
/// manager, or a node that holds the image, over the cluster port), or in tests a
/// second store.
pub trait BlobSource {
    /// The manifest `reference` names at the source.
    fn manifest(&self, reference: &Reference) -> Result<PeerManifest, SourceError>;

    /// Writes the bytes of blob `digest` into `sink` as they arrive. An error from
    /// `sink` (a blob longer than its manifest says) is returned as a
    /// [`SourceError::Failed`].
    fn blob(&self, digest: &Digest, sink: &mut dyn Write) -> Result<(), SourceError>;
}

/// Why a [`BlobSource`] could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source has no such image or blob (another source may).
    #[error("{0}")]
    NotFound(String),
    /// The source could not be reached or failed mid-answer.
    #[error("{0}")]
    Failed(String),
}

/// Why [`fetch`] brought no image in. Nothing was registered.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source has no image by that name.
    #[error("it has no image {reference}")]
    NotFound { reference: String },
    /// The source failed, or sent something berth does not take.
    #[error("{what}: {reason}")]
    Source { what: String, reason: String },
    /// This node's store refused what came (a wrong digest) or could not keep it.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// What [`fetch`] brought in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub image: Image,
    /// Blobs (config and layers) that came from the source, and their bytes; the
    /// others were in the store already.
    pub blobs: usize,
    pub bytes: u64,
}

/// Brings the image `reference` names from `source` into `store` and registers it under
/// `reference` (see the module doc for what is checked). Blocking.
pub fn fetch(
    store: &ImageStore,
    reference: &Reference,
    source: &dyn BlobSource,
) -> Result<Fetched, FetchError> {
    let image = reference.familiar();
    let remote = source.manifest(reference).map_err(|e| match e {
        SourceError::NotFound(_) => FetchError::NotFound {
            reference: image.clone(),
        },
        SourceError::Failed(reason) => FetchError::Source {
            what: format!("manifest of {image}"),
            reason,
        },
    })?;
    let bytes = checked_manifest(reference, remote)?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
        what: format!("manifest of {image} as sent by the source"),
        source,
    })?;

    let mut fetching = Fetching {
        store,
        source,
        // From the first blob written until the image is registered, garbage
        // collection must leave this fetch's blobs and layers alone.
        in_flight: store.in_flight()?,
        image,
        blobs: 0,
        bytes: 0,
    };
    fetching.config(&manifest.config)?;
    let config = store.read_config(&manifest.config.digest)?;
    let layers = layers_to_fetch(&manifest, &config).map_err(|reason| ImageError::Invalid {
        what: format!("image {} as sent by the source", fetching.image),
        reason,
    })?;
    for (layer, diff_id) in layers {
        fetching.layer(layer, diff_id)?;
    }
    let registered = store.register(reference, &bytes)?;
    Ok(Fetched {
        image: registered,
        blobs: fetching.blobs,
        bytes: fetching.bytes,
    })
}

/// The manifest's bytes, once they are what the source says and the reference pins.
fn checked_manifest(reference: &Reference, remote: PeerManifest) -> Result<Vec<u8>, FetchError> {
    let image = reference.familiar();
    let refuse = |reason: String| FetchError::Source {
        what: format!("manifest of {image}"),
        reason,
    };
    if remote.bytes.len() > MAX_MANIFEST {
        return Err(refuse(format!(
            "{} bytes, more than a manifest can be ({MAX_MANIFEST})",
            remote.bytes.len()
        )));
    }
    // A node serves only what its store keeps: image manifests, an index having been
    // resolved to the platform of the node that pulled it.
    if ![MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST].contains(&remote.media_type.as_str()) {
        return Err(refuse(format!(
            "media type {:?} is not an image manifest",
            remote.media_type
        )));
    }
    if let Some(stated) = &remote.digest {
        verify(stated, &remote.bytes, || {
            format!("manifest of {image} as sent by the source")
        })?;
    }
    // A reference by digest names exactly these bytes, whatever the source says.
    if let Some(pinned) = &reference.digest {
        verify(pinned, &remote.bytes, || format!("manifest of {image}"))?;
    }
    Ok(remote.bytes)
}

/// One fetch in progress: where from, where to, and what came so far.
struct Fetching<'a> {
    store: &'a ImageStore,
    source: &'a dyn BlobSource,
    /// Held until the fetch ends (see [`ImageStore::in_flight`]).
    in_flight: InFlight,
    /// The image, as messages name it.
    image: String,
    blobs: usize,
    bytes: u64,
}

impl Fetching<'_> {
    /// Fetches the config unless it is in the store.
    fn config(&mut self, config: &Descriptor) -> Result<(), FetchError> {
        if self.store.has_blob(&config.digest) {
            return Ok(());
        }
        let _lock = self.store.lock_blob(&self.in_flight, &config.digest)?;
        if self.store.has_blob(&config.digest) {
            return Ok(());
        }
        self.copy(config, "config")
    }

    /// Fetches one layer unless it is in the store, and unpacks it, holding its blob
    /// lock throughout: a second fetch or pull of the layer waits, then finds it done.
    fn layer(&mut self, layer: &Descriptor, diff_id: &Digest) -> Result<(), FetchError> {
        if self.store.has_layer(&layer.digest, diff_id) {
            return Ok(());
        }
        let _lock = self.store.lock_blob(&self.in_flight, &layer.digest)?;
        if self.store.has_layer(&layer.digest, diff_id) {
            return Ok(());
        }
        if !self.store.has_blob(&layer.digest) {
            self.copy(layer, "layer")?;
        }
        // Unpacking checks the uncompressed content against the config's diff id.
        self.store.unpack_layer(&layer.digest, diff_id)?;
        Ok(())
    }

    /// Streams one blob (a `kind`, for messages) from the source into the store's
    /// verifying writer: it becomes visible only if it has its digest, and no more than
    /// the manifest's size is taken.
    fn copy(&mut self, blob: &Descriptor, kind: &str) -> Result<(), FetchError> {
        let what = || format!("{kind} {} of {}", blob.digest, self.image);
        let refuse = |reason: String| FetchError::Source {
            what: what(),
            reason,
        };
        let mut sink = Bounded {
            inner: self.store.blob_writer(Some(blob.digest.clone()))?,
            left: blob.size,
            overflowed: false,
        };
        let sent = self.source.blob(&blob.digest, &mut sink);
        if sink.overflowed {
            return Err(refuse(format!(
                "the source sent more than the {} bytes the manifest gives",
                blob.size
            )));
        }
        sent.map_err(|e| refuse(e.to_string()))?;
        // A connection cut mid-blob ends the body early: said as such, not as a bad
        // digest.
        if sink.left > 0 {
            return Err(refuse(format!(
                "the source sent {} of its {} bytes",
                blob.size - sink.left,
                blob.size
            )));
        }
        sink.inner.commit().map_err(|e| match e {
            ImageError::DigestMismatch {
                expected, actual, ..
            } => ImageError::DigestMismatch {
                what: format!("{} as sent by the source", what()),
                expected,
                actual,
            },
            e => e,
        })?;
        self.blobs += 1;
        self.bytes += blob.size;
        Ok(())
    }
}

/// A blob writer that takes at most `left` more bytes: a source cannot fill the disk
/// with a blob that never ends.
struct Bounded<W> {
    inner: W,
    left: u64,
    overflowed: bool,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            self.overflowed = true;
            return Err(io::Error::other(
                "the blob is longer than its manifest says",
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::Path;

    use super::*;

    /// Rewrites a blob's bytes on their way out of a [`StoreSource`].
    type Lie = Box<dyn Fn(&Digest, Vec<u8>) -> Vec<u8>>;

    /// A source backed by another node's store, through the serving functions above, so
    /// the tests cover both ends.
    struct StoreSource {
        store: ImageStore,
        lie: Option<Lie>,
        /// Every blob asked for, in order.
        asked: RefCell<Vec<Digest>>,
    }

    impl StoreSource {
        fn new(store: ImageStore) -> StoreSource {
            StoreSource {
                store,
                lie: None,
                asked: RefCell::default(),
            }
        }
    }

    impl BlobSource for StoreSource {
        fn manifest(&self, reference: &Reference) -> Result<PeerManifest, SourceError> {
            manifest(&self.store, reference).map_err(|e| match e {
                ImageError::NotFound(_) => SourceError::NotFound(e.to_string()),
                e => SourceError::Failed(e.to_string()),
            })
        }

        fn blob(&self, digest: &Digest, sink: &mut dyn Write) -> Result<(), SourceError> {
            self.asked.borrow_mut().push(digest.clone());
            let (mut file, _) =
                open_blob(&self.store, digest).map_err(|e| SourceError::NotFound(e.to_string()))?;
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut file, &mut bytes)
                .map_err(|e| SourceError::Failed(e.to_string()))?;
            if let Some(lie) = &self.lie {
                bytes = lie(digest, bytes);
            }
            sink.write_all(&bytes)
                .map_err(|e| SourceError::Failed(e.to_string()))
        }
    }

    fn reference(text: &str) -> Reference {
        Reference::parse(text).expect("a valid test reference")
    }

    /// A store under `dir` holding busybox imported as `name`, like a manager's after
    /// `berth image import`.
    fn store_with_busybox(dir: &Path, name: &str) -> (ImageStore, Image) {
        let tar = testkit::busybox_rootfs_tar(dir).expect("busybox rootfs tar (busybox-static)");
        let store = ImageStore::open(&dir.join("state")).expect("open the serving store");
        let image = crate::image::import(&store, &tar, name).expect("import busybox");
        (store, image)
    }

    fn empty_store(dir: &Path) -> ImageStore {
        ImageStore::open(&dir.join("state")).expect("open the fetching store")
    }

    #[test]
    fn an_image_moves_between_stores_and_is_usable() {
        let (there, here) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let (served, original) = store_with_busybox(there.path(), "app:1");
        let store = empty_store(here.path());
        let source = StoreSource::new(served);

        let fetched = fetch(&store, &reference("app:1"), &source).expect("fetch app:1");
        assert_eq!(
            fetched.image, original,
            "the same image, under the same name"
        );
        assert_eq!(fetched.blobs, 2, "the config and the one layer");
        let layer = &original.layers[0];
        assert_eq!(
            *source.asked.borrow(),
            [original.config_digest.clone(), layer.digest.clone()]
        );
        assert_eq!(
            fetched.bytes,
            layer.size
                + store
                    .read_blob(&original.config_digest)
                    .expect("config")
                    .len() as u64
        );

        // Usable as if imported here: found by name, its layer unpacked.
        let image = store.image(&reference("app:1")).expect("registered");
        let dirs = store.layer_dirs(&image).expect("layers unpacked");
        assert!(dirs[0].join("bin/busybox").is_file());
        // The manifest is the serving node's, byte for byte.
        assert_eq!(
            store.read_blob(&image.manifest_digest).expect("manifest"),
            source
                .store
                .read_blob(&original.manifest_digest)
                .expect("manifest")
        );
    }

    #[test]
    fn a_second_fetch_fetches_no_layer_again() {
        let (there, here) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let (served, _) = store_with_busybox(there.path(), "app:1");
        let store = empty_store(here.path());
        let source = StoreSource::new(served);
        let first = fetch(&store, &reference("app:1"), &source).expect("first fetch");
        assert_eq!(first.blobs, 2);

        source.asked.borrow_mut().clear();
        let again = fetch(&store, &reference("app:1"), &source).expect("second fetch");
        assert_eq!((again.blobs, again.bytes), (0, 0));
        assert!(
            source.asked.borrow().is_empty(),
            "asked for {:?}",
            source.asked.borrow()
        );
        assert_eq!(again.image, first.image);

        // Another name for the same content: registered, nothing downloaded.
        let tar = there.path().join("rootfs.tar");
        crate::image::import(&source.store, &tar, "other:2").expect("import under a second name");
        let other = fetch(&store, &reference("other:2"), &source).expect("fetch other:2");
        assert_eq!(other.blobs, 0);
        assert!(source.asked.borrow().is_empty());
        assert!(store.image(&reference("other:2")).is_ok());
    }

    #[test]
    fn a_source_that_lies_about_a_layer_is_refused_and_nothing_is_registered() {
        let (there, here) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let (served, original) = store_with_busybox(there.path(), "app:1");
        let layer = original.layers[0].digest.clone();
        let store = empty_store(here.path());

        // Same length, one byte changed: only the digest can tell.
        let mut source = StoreSource::new(served);
        let target = layer.clone();
        source.lie = Some(Box::new(move |digest, mut bytes| {
            if *digest == target {
                bytes[600] ^= 1;
            }
            bytes
        }));
        let err = fetch(&store, &reference("app:1"), &source).expect_err("a tampered layer");
        assert!(
            matches!(err, FetchError::Image(ImageError::DigestMismatch { ref expected, .. }) if *expected == layer),
            "{err}"
        );
        assert!(err.to_string().contains("as sent by the source"), "{err}");
        assert!(matches!(
            store.image(&reference("app:1")),
            Err(ImageError::NotFound(_))
        ));
        assert!(!store.has_blob(&layer), "the tampered blob was not kept");
        assert!(store.layers().expect("layers").is_empty());

        // Longer than the manifest says: cut off, whatever the digest would be.
        let target = layer.clone();
        source.lie = Some(Box::new(move |digest, mut bytes| {
            if *digest == target {
                bytes.extend_from_slice(&[0; 4096]);
            }
            bytes
        }));
        let err = fetch(&store, &reference("app:1"), &source).expect_err("an overlong layer");
        assert!(err.to_string().contains("more than the"), "{err}");
        assert!(store.image(&reference("app:1")).is_err());

        // Cut short (a connection that dropped): said as such.
        let target = layer.clone();
        source.lie = Some(Box::new(move |digest, mut bytes| {
            if *digest == target {
                bytes.truncate(1000);
            }
            bytes
        }));
        let err = fetch(&store, &reference("app:1"), &source).expect_err("a truncated layer");
        assert!(err.to_string().contains("sent 1000 of its"), "{err}");
        assert!(store.image(&reference("app:1")).is_err());

        // The honest source still works afterwards: nothing half-written got in the way.
        source.lie = None;
        fetch(&store, &reference("app:1"), &source).expect("an honest fetch");
    }

    /// A source that answers the manifest with what the test gives.
    struct ManifestOnly(PeerManifest);

    impl BlobSource for ManifestOnly {
        fn manifest(&self, _: &Reference) -> Result<PeerManifest, SourceError> {
            Ok(self.0.clone())
        }

        fn blob(&self, digest: &Digest, _: &mut dyn Write) -> Result<(), SourceError> {
            Err(SourceError::Failed(format!("asked for blob {digest}")))
        }
    }

    #[test]
    fn a_manifest_is_checked_before_any_blob_is_asked_for() {
        let (there, here) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let (served, original) = store_with_busybox(there.path(), "app:1");
        let honest = manifest(&served, &reference("app:1")).expect("served manifest");
        assert_eq!(honest.digest.as_ref(), Some(&original.manifest_digest));
        assert_eq!(honest.media_type, MEDIA_OCI_MANIFEST);
        let store = empty_store(here.path());

        let other = Digest::of(b"another manifest");
        let cases: Vec<(&str, PeerManifest, Reference, &str)> = vec![
            (
                "a digest that is not the bytes'",
                PeerManifest {
                    digest: Some(other.clone()),
                    ..honest.clone()
                },
                reference("app:1"),
                "as sent by the source",
            ),
            (
                "bytes that are not what the reference pins",
                PeerManifest {
                    digest: None,
                    ..honest.clone()
                },
                reference(&format!("app@{other}")),
                "expected sha256:",
            ),
            (
                "an image index",
                PeerManifest {
                    media_type: crate::image::oci::MEDIA_OCI_INDEX.to_string(),
                    ..honest.clone()
                },
                reference("app:1"),
                "is not an image manifest",
            ),
            (
                "too large",
                PeerManifest {
                    digest: None,
                    bytes: vec![b' '; MAX_MANIFEST + 1],
                    ..honest.clone()
                },
                reference("app:1"),
                "more than a manifest can be",
            ),
            (
                "not JSON",
                PeerManifest {
                    digest: None,
                    bytes: b"{not json".to_vec(),
                    ..honest.clone()
                },
                reference("app:1"),
                "invalid JSON",
            ),
        ];
        for (case, sent, wanted, says) in cases {
            let err = fetch(&store, &wanted, &ManifestOnly(sent)).expect_err(case);
            let text = err.to_string();
            assert!(text.contains(says), "{case}: {text}");
            assert!(!text.contains("asked for blob"), "{case}: {text}");
            assert!(store.blobs().expect("blobs").is_empty(), "{case}");
        }

        // Pinned by its own digest, the honest manifest passes that check and moves on
        // to the blobs (which this source refuses).
        let pinned = reference(&format!("app@{}", original.manifest_digest));
        let err = fetch(&store, &pinned, &ManifestOnly(honest)).expect_err("no blobs");
        assert!(err.to_string().contains("asked for blob"), "{err}");
    }

    #[test]
    fn only_blobs_of_images_are_served() {
        let there = tempfile::tempdir().expect("tempdir");
        let (served, image) = store_with_busybox(there.path(), "app:1");
        for blob in [
            &image.manifest_digest,
            &image.config_digest,
            &image.layers[0].digest,
        ] {
            let (_, size) = open_blob(&served, blob).expect("a blob of an image");
            assert_eq!(
                size,
                std::fs::metadata(served.blob_path(blob))
                    .expect("blob")
                    .len()
            );
        }
        let orphan = served.put_blob(b"no image uses this", None).expect("put");
        let err = open_blob(&served, &orphan).expect_err("an orphan blob");
        assert!(matches!(err, ImageError::NoSuchBlob(_)), "{err}");

        // Once its image is removed, its blobs are no longer served (nor, here, kept).
        served.remove_image(&reference("app:1")).expect("image rm");
        assert!(open_blob(&served, &image.layers[0].digest).is_err());
        assert!(matches!(
            manifest(&served, &reference("app:1")),
            Err(ImageError::NotFound(_))
        ));
    }
}

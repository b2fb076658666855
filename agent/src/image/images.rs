//! Images as the rest of the agent sees them: a reference resolved to its manifest,
//! config and layers, plus listing, removal and garbage collection.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use super::digest::Digest;
use super::oci::{ConfigFile, Descriptor, ImageConfig, Manifest};
use super::reference::Reference;
use super::store::{ImageStore, StoreLock, Sweep};
use super::ImageError;

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub reference: Reference,
    pub manifest_digest: Digest,
    /// The config's digest, which is the image id `docker images` shows.
    pub config_digest: Digest,
    pub os: String,
    pub architecture: String,
    pub config: ImageConfig,
    /// Bottom layer first, as in the manifest.
    pub layers: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layer {
    /// The digest of the blob as stored (compressed or not).
    pub digest: Digest,
    /// The digest of the uncompressed tar, which names the unpacked directory.
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

impl Image {
    pub fn id(&self) -> &Digest {
        &self.config_digest
    }

    /// The stored size of its layers.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

fn json<T: serde::de::DeserializeOwned>(what: String, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json { what, source })
}

/// The layers a puller must have for `manifest`, each with the diff id `config` gives
/// it, in the manifest's order and each blob once (an image may list a layer twice).
/// An error when manifest and config disagree on the number of layers.
pub(crate) fn layers_to_fetch<'a>(
    manifest: &'a Manifest,
    config: &'a ConfigFile,
) -> Result<Vec<(&'a Descriptor, &'a Digest)>, String> {
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(format!(
            "the manifest lists {} layers but the config {}",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        ));
    }
    let mut seen = BTreeSet::new();
    Ok(manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .filter(|(layer, _)| seen.insert(&layer.digest))
        .collect())
}

/// Checks that `bytes` have the digest `expected`; `what` names them in the error.
pub(crate) fn verify(
    expected: &Digest,
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<(), ImageError> {
    let actual = Digest::of(bytes);
    if actual == *expected {
        return Ok(());
    }
    Err(ImageError::DigestMismatch {
        what: what(),
        expected: expected.clone(),
        actual,
    })
}

impl ImageStore {
    /// The image `reference` names: by tag, or by digest within its repository.
    pub fn image(&self, reference: &Reference) -> Result<Image, ImageError> {
        let refs = self.references()?;
        let found = match (&reference.tag, &reference.digest) {
            (Some(_), None) => refs.get(&reference.to_string()).cloned(),
            (_, Some(digest)) => refs
                .iter()
                .find(|(name, d)| {
                    *d == digest
                        && Reference::parse(name)
                            .is_ok_and(|r| r.repository() == reference.repository())
                })
                .map(|(_, d)| d.clone()),
            (None, None) => None,
        };
        let manifest = found.ok_or_else(|| ImageError::NotFound(reference.familiar()))?;
        self.read_image(reference.clone(), &manifest)
    }

    /// All tagged images, sorted by reference.
    pub fn images(&self) -> Result<Vec<Image>, ImageError> {
        self.references()?
            .into_iter()
            .map(|(name, manifest)| self.read_image(Reference::parse(&name)?, &manifest))
            .collect()
    }

    pub(crate) fn read_image(
        &self,
        reference: Reference,
        manifest_digest: &Digest,
    ) -> Result<Image, ImageError> {
        let manifest: Manifest = json(
            format!("manifest {manifest_digest}"),
            &self.read_blob(manifest_digest)?,
        )?;
        let config_digest = manifest.config.digest.clone();
        let config = self.read_config(&config_digest)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Invalid {
                what: format!("image {}", reference.familiar()),
                reason: format!(
                    "the manifest has {} layers but the config lists {} diff_ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        let layers = manifest
            .layers
            .into_iter()
            .zip(config.rootfs.diff_ids)
            .map(|(d, diff_id)| Layer {
                digest: d.digest,
                diff_id,
                size: d.size,
                media_type: d.media_type,
            })
            .collect();
        Ok(Image {
            reference,
            manifest_digest: manifest_digest.clone(),
            config_digest,
            os: config.os,
            architecture: config.architecture,
            config: config.config,
            layers,
        })
    }

    /// A stored image config, checked against its digest.
    pub(crate) fn read_config(&self, digest: &Digest) -> Result<ConfigFile, ImageError> {
        json(format!("image config {digest}"), &self.read_blob(digest)?)
    }

    /// Whether a layer is in the store both as a blob and unpacked: a puller has
    /// nothing left to do for it.
    pub(crate) fn has_layer(&self, blob: &Digest, diff_id: &Digest) -> bool {
        self.has_blob(blob) && self.layer_dir(diff_id).is_dir()
    }

    /// The unpacked layer directories of `image` in the order overlayfs's `lowerdir=`
    /// wants them: topmost layer first.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| {
                let dir = self.layer_dir(&l.diff_id);
                if dir.is_dir() {
                    Ok(dir)
                } else {
                    Err(ImageError::Invalid {
                        what: format!("image {}", image.reference.familiar()),
                        reason: format!(
                            "layer {} is not unpacked; load the image again",
                            l.diff_id
                        ),
                    })
                }
            })
            .collect()
    }

    /// Stores a manifest whose config and layer blobs are already in the store, unpacks
    /// its layers and points `references` at it.
    pub(crate) fn commit_image(
        &self,
        lock: &StoreLock,
        references: &[Reference],
        manifest_bytes: &[u8],
    ) -> Result<Vec<Image>, ImageError> {
        let manifest_digest = self.put_blob(manifest_bytes, None)?;
        let image = self.read_image(references[0].clone(), &manifest_digest)?;
        for layer in &image.layers {
            if !self.has_blob(&layer.digest) {
                return Err(ImageError::Invalid {
                    what: format!("image {}", image.reference.familiar()),
                    reason: format!("layer blob {} is missing", layer.digest),
                });
            }
            self.unpack_layer(&layer.digest, &layer.diff_id)?;
        }
        let mut images = Vec::new();
        for reference in references {
            self.set_reference(lock, reference, &manifest_digest)?;
            images.push(Image {
                reference: reference.clone(),
                ..image.clone()
            });
        }
        Ok(images)
    }

    /// Registers the image whose manifest is `manifest_bytes` under `reference`, once
    /// its config and every layer are in the store: how an image fetched blob by blob
    /// (a registry pull, a fetch from another node) becomes visible, all at once.
    pub(crate) fn register(
        &self,
        reference: &Reference,
        manifest_bytes: &[u8],
    ) -> Result<Image, ImageError> {
        let lock = self.lock()?;
        let images = self.commit_image(&lock, std::slice::from_ref(reference), manifest_bytes)?;
        images
            .into_iter()
            .next()
            .ok_or_else(|| ImageError::NotFound(reference.familiar()))
    }

    /// Removes `reference`, then everything no remaining image uses. An image that a
    /// container uses (see [`ImageStore::pin`]) keeps its last reference: removing it is an
    /// error naming the containers, as Docker's `rmi` is.
    pub fn remove_image(&self, reference: &Reference) -> Result<Sweep, ImageError> {
        let lock = self.lock()?;
        if let Ok(image) = self.image(reference) {
            let others = self
                .references()?
                .iter()
                .filter(|(name, d)| **d == image.manifest_digest && **name != reference.to_string())
                .count();
            let users: Vec<String> = self
                .pins()?
                .into_iter()
                .filter(|(_, d)| *d == image.manifest_digest)
                .map(|(c, _)| c)
                .collect();
            if others == 0 && !users.is_empty() {
                return Err(ImageError::InUse {
                    image: reference.familiar(),
                    containers: users.join(", "),
                });
            }
        }
        if !self.remove_reference(&lock, reference)? {
            return Err(ImageError::NotFound(reference.familiar()));
        }
        self.collect_garbage(&lock)
    }

    /// Deletes blobs and unpacked layers that no reference and no container reaches.
    pub fn collect_garbage(&self, lock: &StoreLock) -> Result<Sweep, ImageError> {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        let mut images = self.images()?;
        // The reference only labels the image read; a pin has none of its own.
        let label = Reference::parse("berth/pinned")?;
        for manifest in self.pins()?.into_values() {
            if let Ok(image) = self.read_image(label.clone(), &manifest) {
                images.push(image);
            }
        }
        for image in images {
            blobs.insert(image.manifest_digest);
            blobs.insert(image.config_digest);
            for layer in image.layers {
                blobs.insert(layer.digest);
                layers.insert(layer.diff_id);
            }
        }
        self.sweep(lock, &blobs, &layers)
    }

    fn pins_dir(&self) -> PathBuf {
        self.root().join("pins")
    }

    /// Records that container `container` uses `image`, so that garbage collection
    /// keeps its layers (an overlayfs lower dir must not vanish under a container) and
    /// `remove_image` refuses to drop its last name. Undone by [`ImageStore::unpin`].
    pub fn pin(&self, container: &str, image: &Image) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        // Under the lock: the image cannot be collected between this check and the pin.
        self.read_blob(&image.manifest_digest)?;
        let dir = self.pins_dir();
        let io = |op: &'static str, path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io { op, path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join(container);
        std::fs::write(&path, image.manifest_digest.to_string()).map_err(io("write", &path))
    }

    /// Forgets a [`ImageStore::pin`]; a missing pin is not an error.
    pub fn unpin(&self, container: &str) -> Result<(), ImageError> {
        let path = self.pins_dir().join(container);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ImageError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// Container -> manifest digest, for every pin.
    fn pins(&self) -> Result<BTreeMap<String, Digest>, ImageError> {
        let dir = self.pins_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(ImageError::Io {
                    op: "read",
                    path: dir,
                    source,
                })
            }
        };
        let mut out = BTreeMap::new();
        for e in entries.flatten() {
            let (Some(name), Ok(text)) = (
                e.file_name().to_str().map(String::from),
                std::fs::read_to_string(e.path()),
            ) else {
                continue;
            };
            if let Ok(d) = text.trim().parse::<Digest>() {
                out.insert(name, d);
            }
        }
        Ok(out)
    }
}

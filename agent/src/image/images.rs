//! Images as the rest of the agent sees them: a reference resolved to its manifest,
//! config and layers, plus listing, removal and garbage collection.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use super::digest::Digest;
use super::oci::{ConfigFile, ImageConfig, Manifest};
use super::reference::Reference;
use super::store::{Store, StoreLock, Sweep};
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

impl Store {
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
        let config: ConfigFile = json(
            format!("image config {config_digest}"),
            &self.read_blob(&config_digest)?,
        )?;
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

    /// Removes `reference`, then everything no remaining image uses.
    pub fn remove_image(&self, reference: &Reference) -> Result<Sweep, ImageError> {
        let lock = self.lock()?;
        if !self.remove_reference(&lock, reference)? {
            return Err(ImageError::NotFound(reference.familiar()));
        }
        self.collect_garbage(&lock)
    }

    /// Deletes blobs and unpacked layers that no reference reaches.
    pub fn collect_garbage(&self, lock: &StoreLock) -> Result<Sweep, ImageError> {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for image in self.images()? {
            blobs.insert(image.manifest_digest);
            blobs.insert(image.config_digest);
            for layer in image.layers {
                blobs.insert(layer.digest);
                layers.insert(layer.diff_id);
            }
        }
        self.sweep(lock, &blobs, &layers)
    }
}

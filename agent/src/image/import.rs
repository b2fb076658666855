//! `berth image import`: a root filesystem tar (plain or compressed) becomes a
//! one-layer image, as `docker import` makes it. The config has no `created` time, so
//! importing the same tar twice gives the same image id.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::images::Image;
use super::oci::{
    host_architecture, ConfigFile, Descriptor, ImageConfig, Manifest, RootFs, MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER, MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_LAYER_ZSTD, MEDIA_OCI_MANIFEST,
};
use super::reference::Reference;
use super::store::ImageStore;
use super::unpack::Compression;
use super::{Digest, ImageError};

/// Imports `rootfs_tar` as the image `name` (`name[:tag]`).
pub fn import(store: &ImageStore, rootfs_tar: &Path, name: &str) -> Result<Image, ImageError> {
    let reference = Reference::parse(name)?;
    if reference.digest.is_some() {
        return Err(ImageError::Invalid {
            what: format!("image name {name:?}"),
            reason: "an imported image is named by name[:tag], not by digest".to_string(),
        });
    }
    let io = |op| {
        move |source| ImageError::Io {
            op,
            path: rootfs_tar.to_path_buf(),
            source,
        }
    };
    let file = File::open(rootfs_tar).map_err(io("opening"))?;
    let lock = store.lock()?;
    let (layer, size) = store.put_blob_from(BufReader::new(file), None)?;
    let diff_id = store.diff_id_of(&layer)?;
    let config = ConfigFile {
        created: None,
        architecture: host_architecture().to_string(),
        os: "linux".to_string(),
        config: ImageConfig::default(),
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: vec![diff_id],
        },
    };
    let config_bytes = to_json(&config)?;
    let config_digest = store.put_blob(&config_bytes, None)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.to_string()),
        config: descriptor(MEDIA_OCI_CONFIG, config_digest, config_bytes.len() as u64),
        layers: vec![descriptor(layer_media_type(store, &layer)?, layer, size)],
    };
    let mut images = store.commit_image(&lock, &[reference], &to_json(&manifest)?)?;
    images
        .pop()
        .ok_or_else(|| ImageError::NotFound(name.to_string()))
}

pub(crate) fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        annotations: Default::default(),
        platform: None,
    }
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|source| ImageError::Json {
        what: "a generated image document".to_string(),
        source,
    })
}

/// The OCI media type of a stored layer blob, from its first bytes.
pub(crate) fn layer_media_type(
    store: &ImageStore,
    blob: &Digest,
) -> Result<&'static str, ImageError> {
    let mut magic = [0u8; 4];
    let mut file = store.open_blob(blob)?;
    let n = file.read(&mut magic).map_err(|source| ImageError::Io {
        op: "reading",
        path: store.blob_path(blob),
        source,
    })?;
    Ok(match Compression::detect(&magic[..n]) {
        Compression::None => MEDIA_OCI_LAYER,
        Compression::Gzip => MEDIA_OCI_LAYER_GZIP,
        Compression::Zstd => MEDIA_OCI_LAYER_ZSTD,
    })
}

//! The local image store: content-addressed blobs, image references, and safe layer
//! unpacking. Images come in by [`import`] (a rootfs tar, like `docker import`) or
//! [`load`] (an OCI layout or a `docker save` archive) or [`pull::pull`] (any OCI
//! distribution registry) or [`peer::fetch`] (another node of the cluster), all
//! through the same verifying [`store::BlobWriter`].
//!
//! Where to start: [`ImageStore::open`], then [`ImageStore::image`] and [`ImageStore::layer_dirs`],
//! which is what the runtime needs to build a container's rootfs.

pub mod digest;
mod images;
mod import;
mod load;
pub mod oci;
pub mod peer;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod source;
pub mod store;
pub mod unpack;

use std::io;
use std::path::PathBuf;

pub use digest::Digest;
pub use images::{Image, Layer};
pub use import::import;
pub use load::load;
pub use oci::ImageConfig;
pub use reference::Reference;
pub use source::{ImageSource, ImageSourceError};
pub use store::ImageStore;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what}: content has digest {actual}, expected {expected} (corrupted or tampered)")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("image {0:?} not found; import it with berth image import, load it with berth image load, or pull it")]
    NotFound(String),
    /// A blob asked for by digest that no image in the store uses.
    #[error("no image in this node's store has blob {0}")]
    NoSuchBlob(Digest),
    #[error("image {image:?} is used by container(s) {containers}: remove them first (berth down, or berth rm)")]
    InUse { image: String, containers: String },
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error(transparent)]
    Digest(#[from] digest::DigestError),
    #[error("unpacking layer {layer}: {source}")]
    Unpack {
        layer: Digest,
        source: unpack::UnpackError,
    },
    #[error("{what}: invalid JSON: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

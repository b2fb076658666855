//! `berth image load`: an OCI image layout (directory or tar with `oci-layout`,
//! `index.json` and `blobs/`) or a `docker save` archive (`manifest.json`, layer tars,
//! config JSON). Every blob is checked against its digest on the way in; a
//! `docker save` archive gets an OCI manifest of berth's making, since it has none.
//!
//! Names: an OCI layout names its images by annotation: `io.containerd.image.name`
//! (a full reference) or `org.opencontainers.image.ref.name`, which is often only a
//! tag (`skopeo copy ... oci:DIR:TAG`); then `name` gives the repository.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use serde::Deserialize;

use super::images::Image;
use super::import::{descriptor, layer_media_type, to_json};
use super::oci::{
    host_architecture, ConfigFile, Index, Manifest, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME,
    MEDIA_DOCKER_LIST, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};
use super::reference::Reference;
use super::store::ImageStore;
use super::unpack::Compression;
use super::{Digest, ImageError};

/// JSON documents in an archive are small; a bigger one is not an image.
const MAX_JSON: u64 = 8 << 20;

/// Loads every image in the archive or layout at `path`. `name` names images the
/// archive gives only a tag (or no name at all).
pub fn load(store: &ImageStore, path: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
    let base = name.map(Reference::parse).transpose()?;
    let archive = Archive::open(path)?;
    let lock = store.lock()?;
    if archive.has("oci-layout") {
        load_oci(store, &lock, &archive, base.as_ref())
    } else if archive.has("manifest.json") {
        load_docker(store, &lock, &archive, base.as_ref())
    } else {
        Err(invalid(
            path,
            "neither an OCI image layout (no oci-layout file) nor a docker save archive (no manifest.json)",
        ))
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        what: path.display().to_string(),
        reason: reason.into(),
    }
}

fn json<T: serde::de::DeserializeOwned>(what: String, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json { what, source })
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Reads a JSON blob from the layout, verified, and stores it.
fn copy_json_blob(
    store: &ImageStore,
    archive: &Archive,
    digest: &Digest,
) -> Result<Vec<u8>, ImageError> {
    let bytes = archive.read_all(&blob_name(digest))?;
    store.put_blob(&bytes, Some(digest)).map_err(|e| match e {
        ImageError::DigestMismatch {
            expected, actual, ..
        } => ImageError::DigestMismatch {
            what: format!("{}: {}", archive.path.display(), blob_name(digest)),
            expected,
            actual,
        },
        e => e,
    })?;
    Ok(bytes)
}

fn load_oci(
    store: &ImageStore,
    lock: &super::store::StoreLock,
    archive: &Archive,
    base: Option<&Reference>,
) -> Result<Vec<Image>, ImageError> {
    let index: Index = json(
        format!("{}: index.json", archive.path.display()),
        &archive.read_all("index.json")?,
    )?;
    let mut images = Vec::new();
    for entry in &index.manifests {
        let reference =
            oci_name(&entry.annotations, base).map_err(|reason| invalid(&archive.path, reason))?;
        let mut manifest_digest = entry.digest.clone();
        let mut manifest_bytes = copy_json_blob(store, archive, &manifest_digest)?;
        if entry.media_type == MEDIA_OCI_INDEX || entry.media_type == MEDIA_DOCKER_LIST {
            // A multi-platform image: take this machine's.
            let inner: Index = json(format!("image index {manifest_digest}"), &manifest_bytes)?;
            let arch = host_architecture();
            let chosen = inner.for_this_platform().ok_or_else(|| {
                invalid(
                    &archive.path,
                    format!("image {} has no linux/{arch} variant", reference.familiar()),
                )
            })?;
            manifest_digest = chosen.digest.clone();
            manifest_bytes = copy_json_blob(store, archive, &manifest_digest)?;
        }
        let manifest: Manifest = json(format!("manifest {manifest_digest}"), &manifest_bytes)?;
        copy_json_blob(store, archive, &manifest.config.digest)?;
        for layer in &manifest.layers {
            let reader = archive.member(&blob_name(&layer.digest))?;
            store.put_blob_from(reader, Some(&layer.digest))?;
        }
        images.extend(store.commit_image(lock, &[reference], &manifest_bytes)?);
    }
    Ok(images)
}

/// The reference of an OCI layout entry; see the module doc.
fn oci_name(
    annotations: &std::collections::BTreeMap<String, String>,
    base: Option<&Reference>,
) -> Result<Reference, String> {
    if let Some(full) = annotations.get(ANNOTATION_IMAGE_NAME) {
        return Reference::parse(full).map_err(|e| e.to_string());
    }
    let ref_name = annotations.get(ANNOTATION_REF_NAME);
    match (ref_name, base) {
        (Some(r), Some(base)) if !r.contains(['/', ':', '@']) => {
            base.with_tag(r).map_err(|e| e.to_string())
        }
        (Some(r), _) if r.contains(['/', ':', '@']) => {
            Reference::parse(r).map_err(|e| e.to_string())
        }
        (_, Some(base)) => Ok(base.clone()),
        (Some(tag), None) => Err(format!(
            "the image is tagged only {tag:?}, with no name; give one with --name NAME"
        )),
        (None, None) => Err("an image has no name; give one with --name NAME[:TAG]".to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn load_docker(
    store: &ImageStore,
    lock: &super::store::StoreLock,
    archive: &Archive,
    base: Option<&Reference>,
) -> Result<Vec<Image>, ImageError> {
    let what = |name: &str| format!("{}: {name}", archive.path.display());
    let entries: Vec<DockerManifest> =
        json(what("manifest.json"), &archive.read_all("manifest.json")?)?;
    let mut images = Vec::new();
    for entry in entries {
        let config_bytes = archive.read_all(&entry.config)?;
        let config_digest = Digest::of(&config_bytes);
        // The config's file name is its digest (`<hex>.json` or `blobs/sha256/<hex>`).
        let stem = entry
            .config
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".json");
        if let Ok(named) = Digest::from_hex(stem) {
            if named != config_digest {
                return Err(ImageError::DigestMismatch {
                    what: what(&entry.config),
                    expected: named,
                    actual: config_digest,
                });
            }
        }
        let config: ConfigFile = json(what(&entry.config), &config_bytes)?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(invalid(
                &archive.path,
                format!(
                    "{} lists {} layers but its config {} diff_ids",
                    entry.config,
                    entry.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        store.put_blob(&config_bytes, Some(&config_digest))?;
        let mut layers = Vec::new();
        for (path, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            let (digest, size) = if store.has_blob(diff_id) {
                // An uncompressed layer is its own diff_id: already stored.
                (
                    diff_id.clone(),
                    std::fs::metadata(store.blob_path(diff_id))
                        .map(|m| m.len())
                        .unwrap_or(0),
                )
            } else {
                store.put_blob_from(archive.member(path)?, None)?
            };
            layers.push(descriptor(layer_media_type(store, &digest)?, digest, size));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_MANIFEST.to_string()),
            config: descriptor(MEDIA_OCI_CONFIG, config_digest, config_bytes.len() as u64),
            layers,
        };
        let mut references = Vec::new();
        for tag in entry.repo_tags.iter().flatten() {
            references.push(Reference::parse(tag)?);
        }
        if let Some(base) = base {
            references = vec![base.clone()];
        }
        if references.is_empty() {
            return Err(invalid(
                &archive.path,
                "an image has no RepoTags; give it a name with --name NAME[:TAG]",
            ));
        }
        images.extend(store.commit_image(lock, &references, &to_json(&manifest)?)?);
    }
    Ok(images)
}

/// An image archive: a directory, or an uncompressed tar read in place by offsets.
#[derive(Debug)]
struct Archive {
    path: PathBuf,
    kind: ArchiveKind,
}

#[derive(Debug)]
enum ArchiveKind {
    Dir(OwnedFd),
    /// Member name (normalized) -> (data offset, size).
    Tar(HashMap<String, (u64, u64)>),
}

/// `./a//b/` -> `a/b`; `None` for a name that leaves the archive.
fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

impl Archive {
    fn open(path: &Path) -> Result<Archive, ImageError> {
        let io = |op| {
            move |source: io::Error| ImageError::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        let meta = std::fs::metadata(path).map_err(io("reading"))?;
        if meta.is_dir() {
            let fd = nix::fcntl::open(
                path,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io("opening")(e.into()))?;
            return Ok(Archive {
                path: path.to_path_buf(),
                kind: ArchiveKind::Dir(fd),
            });
        }
        let mut file = File::open(path).map_err(io("opening"))?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(io("reading"))?;
        if Compression::detect(&magic[..n]) != Compression::None {
            return Err(invalid(
                path,
                "compressed archives are not supported; decompress it first",
            ));
        }
        file.seek(SeekFrom::Start(0)).map_err(io("reading"))?;
        let mut members = HashMap::new();
        let mut links = Vec::new();
        let mut tar = tar::Archive::new(BufReader::new(file));
        for entry in tar.entries().map_err(io("reading"))? {
            let entry = entry.map_err(io("reading"))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = normalize(&name) else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    members.insert(name, (entry.raw_file_position(), entry.size()));
                }
                kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned());
                    if let Some(target) = target {
                        // Symlinks are relative to their directory, hard links to the top.
                        let full = match (kind, name.rsplit_once('/')) {
                            (tar::EntryType::Symlink, Some((dir, _))) => format!("{dir}/{target}"),
                            _ => target,
                        };
                        links.push((name, full));
                    }
                }
                _ => {}
            }
        }
        for (name, target) in links {
            if let Some(found) = normalize(&target).and_then(|t| members.get(&t).copied()) {
                members.insert(name, found);
            }
        }
        Ok(Archive {
            path: path.to_path_buf(),
            kind: ArchiveKind::Tar(members),
        })
    }

    fn has(&self, name: &str) -> bool {
        match &self.kind {
            ArchiveKind::Dir(_) => self.member(name).is_ok(),
            ArchiveKind::Tar(members) => members.contains_key(name),
        }
    }

    fn member(&self, name: &str) -> Result<Box<dyn Read>, ImageError> {
        let missing = |source: io::Error| ImageError::Io {
            op: "reading",
            path: self.path.join(name),
            source,
        };
        match &self.kind {
            ArchiveKind::Dir(root) => {
                // Names come from the archive's own JSON: resolved inside it.
                let fd = openat2(
                    root,
                    OsStr::new(name),
                    OpenHow::new()
                        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
                        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
                )
                .map_err(|e| missing(e.into()))?;
                Ok(Box::new(BufReader::new(File::from(fd))))
            }
            ArchiveKind::Tar(members) => {
                let &(offset, size) = normalize(name)
                    .and_then(|n| members.get(&n))
                    .ok_or_else(|| missing(io::ErrorKind::NotFound.into()))?;
                let mut file = File::open(&self.path).map_err(missing)?;
                file.seek(SeekFrom::Start(offset)).map_err(missing)?;
                Ok(Box::new(BufReader::new(file).take(size)))
            }
        }
    }

    fn read_all(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let mut bytes = Vec::new();
        self.member(name)?
            .take(MAX_JSON)
            .read_to_end(&mut bytes)
            .map_err(|source| ImageError::Io {
                op: "reading",
                path: self.path.join(name),
                source,
            })?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_oci_entries() {
        let ann = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let base = Reference::parse("app").unwrap();
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Option<&'a Reference>,
            Result<&'a str, &'a str>,
        );
        let cases: &[Case] = &[
            (
                &[(ANNOTATION_REF_NAME, "v1")],
                Some(&base),
                Ok("docker.io/library/app:v1"),
            ),
            (
                &[(ANNOTATION_REF_NAME, "v1")],
                None,
                Err("tagged only \"v1\""),
            ),
            (
                &[(ANNOTATION_REF_NAME, "x/y:2")],
                None,
                Ok("docker.io/x/y:2"),
            ),
            (
                &[
                    (ANNOTATION_IMAGE_NAME, "localhost:5000/z:3"),
                    (ANNOTATION_REF_NAME, "3"),
                ],
                None,
                Ok("localhost:5000/z:3"),
            ),
            (&[], Some(&base), Ok("docker.io/library/app:latest")),
            (&[], None, Err("no name")),
        ];
        for (annotations, base, want) in cases {
            let got = oci_name(&ann(annotations), *base).map(|r| r.to_string());
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(*w)),
                Err(w) => assert!(got.as_ref().unwrap_err().contains(w), "{got:?}"),
            }
        }
    }

    #[test]
    fn normalizes_member_names() {
        assert_eq!(
            normalize("./blobs//sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("../b"), None);
    }
}

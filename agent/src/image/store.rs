//! The on-disk store under `<state>/images/`:
//!
//! ```text
//! blobs/sha256/<hex>     content-addressed blobs (manifests, configs, layer tars)
//! layers/<diff_id hex>/  unpacked layers, overlayfs lower dirs, shared by images
//! index.json             references: "docker.io/library/busybox:latest" -> manifest digest
//! lock                   flock held by whoever changes the index or collects garbage
//! gc.lock                flock: shared by every pull in flight, exclusive by garbage collection
//! locks/<hex>            flock per blob, held while one puller downloads and unpacks it
//! ```
//!
//! Blobs are written through [`BlobWriter`]: a temp file in the blob directory, hashed
//! while written, fsynced, checked against the expected digest, renamed into place and
//! the directory fsynced. Writers share nothing but the directory, so several (a puller
//! fetching layers concurrently) can stream at once; two writers of the same blob both
//! succeed and one copy is kept.
//!
//! Locking. Three kinds of flock, so they hold across processes (two `berth image pull`
//! at once) as well as threads (each lock opens its own file description):
//! - `gc.lock`, shared, for the whole of a pull ([`ImageStore::in_flight`]): a pull writes
//!   blobs and layers before the image that references them is registered, and garbage
//!   collection must not take them away meanwhile. Collection only runs when it can
//!   take `gc.lock` exclusively at once; when a pull is in flight it is deferred (the
//!   next `image rm` collects), so `image rm` never waits for a slow download.
//! - `locks/<hex>`, exclusive, around fetching and unpacking one blob
//!   ([`ImageStore::lock_blob`]): a second puller of the same layer waits, then finds it
//!   present and skips it, so a layer is downloaded once however many pulls want it.
//!   Lock files are removed only by garbage collection, which holds `gc.lock`
//!   exclusively, so no puller can hold or be about to take one.
//! - `lock`, exclusive, to change `index.json` or collect garbage ([`ImageStore::lock`]).
//!
//! Order: `gc.lock` (shared) before a blob lock before `lock`; collection takes `lock`
//! then only *tries* `gc.lock`, so no cycle can form.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest as _, Sha256};

use super::digest::{Digest, HashingReader};
use super::reference::Reference;
use super::unpack;
use super::ImageError;

const TMP_PREFIX: &str = ".tmp-";

/// The image store of one state directory. Cheap to clone; holds no open files.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// The exclusive store lock; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _lock: Flock<File>,
}

/// A pull in flight: garbage collection is deferred while one exists; released on drop.
#[derive(Debug)]
pub struct InFlight {
    _lock: Flock<File>,
}

/// One blob being fetched (and unpacked) by this puller; released on drop.
#[derive(Debug)]
pub struct BlobLock {
    _lock: Flock<File>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A name no other writer in any process uses.
fn temp_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{TMP_PREFIX}{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn make_dir(path: &Path) -> Result<(), ImageError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("creating", path)(e)),
    }
}

fn sync_dir(path: &Path) -> Result<(), ImageError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", path))
}

/// Writes `bytes` to `path` atomically and durably: the reference index is what
/// `berth images` and every container start read back after a crash.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    atomic_file::write(path, bytes, 0o600, atomic_file::Durability::Durable)
        .map_err(io_err("writing", path))
}

impl ImageStore {
    /// Opens (creating if needed) the store under `state_dir`, root-only.
    pub fn open(state_dir: &Path) -> Result<ImageStore, ImageError> {
        if !state_dir.exists() {
            fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(state_dir)
                .map_err(io_err("creating", state_dir))?;
        }
        let root = state_dir.join("images");
        make_dir(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting permissions of", &root))?;
        for sub in ["blobs", "blobs/sha256", "layers", "locks"] {
            make_dir(&root.join(sub))?;
        }
        Ok(ImageStore { root })
    }

    /// The `images` directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store's exclusive lock, for changing references or collecting garbage.
    pub fn lock(&self) -> Result<StoreLock, ImageError> {
        let lock = flock(&self.root.join("lock"), FlockArg::LockExclusive)?
            .ok_or_else(|| io_err("locking", &self.root)(io::ErrorKind::WouldBlock.into()))?;
        Ok(StoreLock { _lock: lock })
    }

    /// Marks a pull in flight until dropped (see the module doc); waits only while a
    /// garbage collection runs.
    pub fn in_flight(&self) -> Result<InFlight, ImageError> {
        let lock = flock(&self.gc_lock_path(), FlockArg::LockShared)?
            .ok_or_else(|| io_err("locking", &self.root)(io::ErrorKind::WouldBlock.into()))?;
        Ok(InFlight { _lock: lock })
    }

    fn gc_lock_path(&self) -> PathBuf {
        self.root.join("gc.lock")
    }

    /// The lock file of one blob.
    pub fn blob_lock_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("locks").join(digest.hex())
    }

    /// Takes the lock of one blob, waiting while another puller holds it. The caller
    /// holds an [`InFlight`] (so collection cannot remove the lock file meanwhile) and
    /// checks [`ImageStore::has_blob`] again once it has the lock.
    pub fn lock_blob(
        &self,
        _in_flight: &InFlight,
        digest: &Digest,
    ) -> Result<BlobLock, ImageError> {
        let lock = flock(&self.blob_lock_path(digest), FlockArg::LockExclusive)?
            .ok_or_else(|| io_err("locking", &self.root)(io::ErrorKind::WouldBlock.into()))?;
        Ok(BlobLock { _lock: lock })
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A writer for a new blob; `expected` is checked at commit when given.
    pub fn blob_writer(&self, expected: Option<Digest>) -> Result<BlobWriter, ImageError> {
        let dir = self.blob_dir();
        let tmp = dir.join(temp_name());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(file),
            tmp,
            hasher: Sha256::new(),
            size: 0,
            expected,
        })
    }

    /// Stores `bytes` (a manifest or config), unless already present.
    pub fn put_blob(&self, bytes: &[u8], expected: Option<&Digest>) -> Result<Digest, ImageError> {
        let digest = Digest::of(bytes);
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(ImageError::DigestMismatch {
                    what: "blob".to_string(),
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let mut w = self.blob_writer(Some(digest))?;
        w.write_all(bytes)
            .map_err(io_err("writing", &self.blob_dir()))?;
        w.commit()
    }

    /// Copies `reader` into the store, unless a blob with the expected digest is there.
    pub fn put_blob_from(
        &self,
        reader: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), ImageError> {
        if let Some(expected) = expected {
            if let Ok(meta) = fs::metadata(self.blob_path(expected)) {
                return Ok((expected.clone(), meta.len()));
            }
        }
        let mut w = self.blob_writer(expected.cloned())?;
        let mut reader = reader;
        io::copy(&mut reader, &mut w).map_err(io_err("copying a blob into", &self.blob_dir()))?;
        let size = w.size;
        Ok((w.commit()?, size))
    }

    /// A blob's bytes, checked against its digest (for the small JSON blobs).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(ImageError::DigestMismatch {
                what: format!("stored blob {}", path.display()),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File, ImageError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(io_err("opening", &path))
    }

    /// The digests of all stored blobs.
    pub fn blobs(&self) -> Result<BTreeSet<Digest>, ImageError> {
        hex_names(&self.blob_dir())
    }

    // --- references ---

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn index(&self) -> Result<IndexFile, ImageError> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(IndexFile {
                    references: BTreeMap::new(),
                    fetched: BTreeMap::new(),
                })
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            what: path.display().to_string(),
            source,
        })
    }

    /// All references, by their full name.
    pub fn references(&self) -> Result<BTreeMap<String, Digest>, ImageError> {
        Ok(self.index()?.references)
    }

    /// When `reference` was last set (seconds since the epoch); None if unknown (set
    /// by a berth that did not record it, or absent).
    pub fn fetched_at(&self, reference: &Reference) -> Option<u64> {
        self.index()
            .ok()?
            .fetched
            .get(&reference.to_string())
            .copied()
    }

    fn write_index(&self, index: &IndexFile) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|source| ImageError::Json {
            what: "the reference index".to_string(),
            source,
        })?;
        write_atomic(&self.index_path(), &bytes)
    }

    /// Points `reference` at `manifest`, now. The caller holds the lock.
    pub fn set_reference(
        &self,
        _lock: &StoreLock,
        reference: &Reference,
        manifest: &Digest,
    ) -> Result<(), ImageError> {
        let mut index = self.index()?;
        let name = reference.to_string();
        index.references.insert(name.clone(), manifest.clone());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        index.fetched.insert(name, now);
        self.write_index(&index)
    }

    /// Removes `reference`; false if there was none. The caller holds the lock.
    pub fn remove_reference(
        &self,
        _lock: &StoreLock,
        reference: &Reference,
    ) -> Result<bool, ImageError> {
        let mut index = self.index()?;
        let name = reference.to_string();
        let found = index.references.remove(&name).is_some();
        if found {
            index.fetched.remove(&name);
            self.write_index(&index)?;
        }
        Ok(found)
    }

    // --- layers ---

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// The diff ids of all unpacked layers.
    pub fn layers(&self) -> Result<BTreeSet<Digest>, ImageError> {
        hex_names(&self.root.join("layers"))
    }

    /// The digest of the uncompressed content of a stored layer blob.
    pub fn diff_id_of(&self, blob: &Digest) -> Result<Digest, ImageError> {
        let path = self.blob_path(blob);
        let file = self.open_blob(blob)?;
        let stream =
            unpack::decompress(io::BufReader::new(file)).map_err(io_err("reading", &path))?;
        let (digest, _) = HashingReader::new(stream)
            .finish()
            .map_err(io_err("decompressing", &path))?;
        Ok(digest)
    }

    /// Unpacks a stored layer blob into `layers/<diff_id>/` unless it is there already,
    /// checking that its uncompressed content has `diff_id`.
    pub fn unpack_layer(&self, blob: &Digest, diff_id: &Digest) -> Result<PathBuf, ImageError> {
        let target = self.layer_dir(diff_id);
        if target.is_dir() {
            return Ok(target);
        }
        let tmp = self.root.join("layers").join(temp_name());
        make_dir(&tmp)?;
        let result = (|| {
            let file = self.open_blob(blob)?;
            let unpacked = unpack::unpack(io::BufReader::new(file), &tmp).map_err(|source| {
                ImageError::Unpack {
                    layer: blob.clone(),
                    source,
                }
            })?;
            if unpacked.diff_id != *diff_id {
                return Err(ImageError::DigestMismatch {
                    what: format!("uncompressed layer {blob}"),
                    expected: diff_id.clone(),
                    actual: unpacked.diff_id,
                });
            }
            // One syncfs makes every file of the layer durable before it gets its name.
            let dir = File::open(&tmp).map_err(io_err("opening", &tmp))?;
            // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
            if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
                return Err(io_err("syncing", &tmp)(io::Error::last_os_error()));
            }
            match fs::rename(&tmp, &target) {
                Ok(()) => Ok(()),
                // Another unpack of the same layer finished first.
                Err(e)
                    if target.is_dir()
                        && matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) =>
                {
                    remove_tree(&tmp)
                }
                Err(e) => Err(io_err("renaming", &tmp)(e)),
            }
        })();
        if result.is_err() {
            let _ = remove_tree(&tmp);
        }
        result?;
        sync_dir(&self.root.join("layers"))?;
        Ok(target)
    }

    /// Deletes blobs and unpacked layers not in `keep_blobs` / `keep_layers`, unless a
    /// pull is in flight, in which case nothing is deleted and the sweep says
    /// `deferred`. The caller holds the lock. Temp files of writers in progress are left
    /// alone.
    pub fn sweep(
        &self,
        _lock: &StoreLock,
        keep_blobs: &BTreeSet<Digest>,
        keep_layers: &BTreeSet<Digest>,
    ) -> Result<Sweep, ImageError> {
        let mut swept = Sweep::default();
        // Never wait here: a pull holding gc.lock may be waiting for `lock`, which our
        // caller holds.
        let Some(_no_pulls) = flock(&self.gc_lock_path(), FlockArg::LockExclusiveNonblock)? else {
            swept.deferred = true;
            return Ok(swept);
        };
        // No puller holds or waits for a blob lock now; their files can go.
        let locks = self.root.join("locks");
        for entry in fs::read_dir(&locks).map_err(io_err("listing", &locks))? {
            let path = entry.map_err(io_err("listing", &locks))?.path();
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
        }
        for blob in self.blobs()?.difference(keep_blobs) {
            let path = self.blob_path(blob);
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
            swept.blobs += 1;
        }
        for layer in self.layers()?.difference(keep_layers) {
            remove_tree(&self.layer_dir(layer))?;
            swept.layers += 1;
        }
        Ok(swept)
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    pub blobs: usize,
    pub layers: usize,
    /// A pull was in flight, so nothing was deleted; the next collection will.
    pub deferred: bool,
}

/// Takes a flock on `path` (created if needed); `None` if a non-blocking lock is busy.
fn flock(path: &Path, how: FlockArg) -> Result<Option<Flock<File>>, ImageError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("opening", path))?;
    match Flock::lock(file, how) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io_err("locking", path)(e.into())),
    }
}

fn remove_tree(path: &Path) -> Result<(), ImageError> {
    // std's remove_dir_all never follows symlinks out of the tree it removes.
    fs::remove_dir_all(path).map_err(io_err("removing", path))
}

fn hex_names(dir: &Path) -> Result<BTreeSet<Digest>, ImageError> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        if let Some(d) = entry
            .file_name()
            .to_str()
            .and_then(|n| Digest::from_hex(n).ok())
        {
            out.insert(d);
        }
    }
    Ok(out)
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct IndexFile {
    references: BTreeMap<String, Digest>,
    /// When each reference was last set (pulled, imported, loaded), in seconds since
    /// the epoch: what `pull_policy: daily` and the like compare against.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    fetched: BTreeMap<String, u64>,
}

/// A blob being written; see the module doc. Dropped without [`BlobWriter::commit`],
/// its temp file is removed.
#[derive(Debug)]
pub struct BlobWriter {
    store: ImageStore,
    file: Option<File>,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
    expected: Option<Digest>,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already committed"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks the digest and moves the blob into place, durably.
    pub fn commit(mut self) -> Result<Digest, ImageError> {
        let file = self.file.take().ok_or_else(|| {
            io_err("committing", &self.tmp)(io::Error::other("already committed"))
        })?;
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if let Some(expected) = &self.expected {
            if *expected != actual {
                return Err(ImageError::DigestMismatch {
                    what: "blob".to_string(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let target = self.store.blob_path(&actual);
        if target.exists() {
            return Ok(actual);
        }
        file.sync_all().map_err(io_err("syncing", &self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &target).map_err(io_err("renaming", &self.tmp))?;
        sync_dir(&self.store.blob_dir())?;
        Ok(actual)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful rename the temp name is gone and this fails harmlessly.
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let d = store.put_blob(b"hello", None).unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
        // Again: no second copy, no temp file left.
        assert_eq!(store.put_blob(b"hello", Some(&d)).unwrap(), d);
        let names: Vec<_> = fs::read_dir(store.blob_dir()).unwrap().collect();
        assert_eq!(names.len(), 1);

        // A writer whose content does not match the expected digest is refused.
        let mut w = store.blob_writer(Some(Digest::of(b"other"))).unwrap();
        w.write_all(b"tampered").unwrap();
        let e = w.commit().unwrap_err();
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
        assert!(!store.has_blob(&Digest::of(b"tampered")));
        assert_eq!(fs::read_dir(store.blob_dir()).unwrap().count(), 1);

        // A blob corrupted on disk is rejected when read.
        fs::write(store.blob_path(&d), b"jello").unwrap();
        let e = store.read_blob(&d).unwrap_err();
        assert!(e.to_string().contains("expected sha256:"), "{e}");
    }

    #[test]
    fn concurrent_writers_of_one_blob_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let data = vec![7u8; 1 << 20];
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (store, data) = (store.clone(), data.clone());
                std::thread::spawn(move || {
                    store.blob_writer(None).and_then(|mut w| {
                        for chunk in data.chunks(4096) {
                            w.write_all(chunk).unwrap();
                        }
                        w.commit()
                    })
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), Digest::of(&data));
        }
        assert_eq!(fs::read_dir(store.blob_dir()).unwrap().count(), 1);
    }

    #[test]
    fn collection_is_deferred_while_a_pull_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let orphan = store.put_blob(b"no image uses this", None).unwrap();
        let pull = store.in_flight().unwrap();
        let lock = store.blob_lock_path(&orphan);
        drop(store.lock_blob(&pull, &orphan).unwrap());
        assert!(lock.is_file());

        let index = store.lock().unwrap();
        let swept = store
            .sweep(&index, &BTreeSet::new(), &BTreeSet::new())
            .unwrap();
        assert_eq!(
            swept,
            Sweep {
                blobs: 0,
                layers: 0,
                deferred: true
            }
        );
        assert!(store.has_blob(&orphan) && lock.is_file());

        drop(pull);
        let swept = store
            .sweep(&index, &BTreeSet::new(), &BTreeSet::new())
            .unwrap();
        assert_eq!((swept.blobs, swept.deferred), (1, false));
        assert!(!store.has_blob(&orphan));
        assert!(!lock.exists(), "blob lock files go with collection");
    }

    #[test]
    fn store_dirs_are_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = ImageStore::open(&state).unwrap();
        for p in [
            state.clone(),
            store.root().to_path_buf(),
            store.blob_dir(),
            store.root().join("layers"),
        ] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", p.display());
        }
    }
}

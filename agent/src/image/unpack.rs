//! Unpacks one layer tar (plain, gzip or zstd) into a directory that will be an
//! overlayfs lower layer, safely: every path is resolved by the kernel inside the root
//! (openat2 with `RESOLVE_IN_ROOT`), parents are created one component at a time
//! relative to directory fds, and the last component is always created by name in its
//! resolved parent, never followed. A layer that tries to leave the root fails with an
//! error naming the entry, and nothing outside the root is touched.
//!
//! OCI whiteouts become overlayfs ones: `.wh.NAME` a 0:0 character device `NAME`,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` attribute on its directory.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tar::EntryType;

use super::digest::{Digest, HashingReader};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open the unpack root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    #[error("not a tar archive (plain, gzip or zstd compressed)")]
    NotTar,
    #[error("layer entry {entry:?}: {reason}")]
    UnsafePath { entry: String, reason: String },
    #[error(
        "layer entry {entry:?}: parent {parent:?} is not a directory inside the layer \
         (a file, or a symlink that points out of the layer or nowhere)"
    )]
    ParentNotDir { entry: String, parent: String },
    #[error("layer entry {entry:?}: hard link target {target:?} is not an entry of this layer: {source}")]
    LinkTarget {
        entry: String,
        target: String,
        source: io::Error,
    },
    #[error("layer entry {entry:?}: unsupported entry type {kind}")]
    Unsupported { entry: String, kind: String },
    #[error("layer entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        source: io::Error,
    },
}

/// What an unpack read: the digest and size of the uncompressed tar (its `diff_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub diff_id: Digest,
    pub size: u64,
}

/// Which compression a layer uses, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A reader of the uncompressed stream, whatever compression `reader` has.
pub fn decompress<'a>(mut reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match reader.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let whole = io::Cursor::new(magic[..n].to_vec()).chain(reader);
    Ok(match Compression::detect(&magic[..n]) {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(whole)?),
    })
}

/// Unpacks the layer in `reader` into the existing directory `root`.
pub fn unpack(reader: impl Read, root: &Path) -> Result<Unpacked, UnpackError> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Root {
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    let stream = HashingReader::new(decompress(reader).map_err(UnpackError::Read)?);
    let mut archive = tar::Archive::new(stream);
    let mut unpacker = Unpacker {
        root: root_fd,
        dirs: Vec::new(),
    };
    for (i, entry) in archive.entries().map_err(UnpackError::Read)?.enumerate() {
        // A first header that does not parse means this is not a tar at all; the tar
        // crate's own message would quote the file's bytes at the user.
        let mut entry = entry.map_err(|e| {
            if i == 0 {
                UnpackError::NotTar
            } else {
                UnpackError::Read(e)
            }
        })?;
        unpacker.entry(&mut entry)?;
    }
    unpacker.finish_dirs()?;
    let (diff_id, size) = archive.into_inner().finish().map_err(UnpackError::Read)?;
    Ok(Unpacked { diff_id, size })
}

struct Unpacker {
    root: OwnedFd,
    /// Directories whose mtime is set at the end, once nothing is added to them.
    dirs: Vec<(Vec<Vec<u8>>, i64, String)>,
}

/// The metadata of an entry, applied after it is created.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Splits a tar path into its components: `.` and empty ones dropped, `..` and
/// absolute paths refused (a layer never needs them).
fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if raw.is_empty() {
        return Err("empty path".to_string());
    }
    if raw[0] == b'/' {
        return Err("absolute path (entries must be relative to the layer root)".to_string());
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..' (it would leave the layer root)".to_string()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn join(components: &[Vec<u8>]) -> PathBuf {
    if components.is_empty() {
        return PathBuf::from(".");
    }
    PathBuf::from(OsStr::from_bytes(&components.join(&b'/')))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// openat2 of `path` with `dirfd` as the root: absolute symlinks and `..` stay inside.
fn open_in_root(dirfd: impl AsFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    openat2(
        dirfd,
        path,
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
}

/// openat2 of a single name in `dirfd`, following no symlink at all.
fn open_child(dirfd: impl AsFd, name: &OsStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    openat2(
        dirfd,
        name,
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(mode)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS),
    )
}

fn fsetxattr(fd: impl AsFd, name: &str, value: &[u8]) -> io::Result<()> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: fd is a live descriptor, cname a NUL-terminated string and value a valid
    // buffer of value.len() bytes; the kernel only reads them during the call.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_fd().as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

impl Unpacker {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = e.path_bytes().into_owned();
        let name = lossy(&raw);
        let kind = e.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName
        ) {
            return Ok(());
        }
        let io_err = |op: &'static str| {
            let entry = name.clone();
            move |source: io::Error| UnpackError::Io {
                entry: entry.clone(),
                op,
                source,
            }
        };
        let unsafe_path = |reason: String| UnpackError::UnsafePath {
            entry: name.clone(),
            reason,
        };
        let header = e.header();
        let mut meta = Meta {
            uid: header.uid().map_err(io_err("reading uid"))? as u32,
            gid: header.gid().map_err(io_err("reading gid"))? as u32,
            mode: header.mode().map_err(io_err("reading mode"))? & 0o7777,
            mtime: header.mtime().map_err(io_err("reading mtime"))? as i64,
            xattrs: Vec::new(),
        };
        if let Some(exts) = e.pax_extensions().map_err(io_err("reading pax headers"))? {
            for ext in exts {
                let ext = ext.map_err(io_err("reading pax headers"))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(attr) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    // A layer must not forge overlayfs metadata (opaque, redirect):
                    // only whiteout entries make those.
                    if !attr.starts_with("trusted.overlay.") {
                        meta.xattrs
                            .push((attr.to_string(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }

        let comps = components(&raw).map_err(unsafe_path)?;
        let Some((last, parents)) = comps.split_last() else {
            // The root itself (`.` or `./`): only its metadata can change.
            if kind != EntryType::Directory {
                return Err(unsafe_path(
                    "an entry for the layer root itself must be a directory".to_string(),
                ));
            }
            let fd = open_in_root(
                &self.root,
                Path::new("."),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            )
            .map_err(|e| io_err("opening the root")(e.into()))?;
            self.apply_fd_meta(&fd, &meta, &name)?;
            self.dirs.push((Vec::new(), meta.mtime, name));
            return Ok(());
        };
        let last_name = OsStr::from_bytes(last);

        if let Some(target) = last.strip_prefix(WHITEOUT_PREFIX) {
            let parent = self.parent_dir(&name, parents)?;
            if last.as_slice() == OPAQUE_MARKER {
                let dir = open_child(
                    &parent,
                    OsStr::new("."),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    Mode::empty(),
                )
                .map_err(|e| io_err("opening the opaque directory")(e.into()))?;
                return fsetxattr(&dir, OPAQUE_XATTR, b"y")
                    .map_err(io_err("marking the directory opaque"));
            }
            if target.starts_with(WHITEOUT_PREFIX) {
                // Other aufs metadata (.wh..wh.plnk, .wh..wh.aufs) means nothing here.
                return Ok(());
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(unsafe_path(format!(
                    "whiteout of {:?} is not a name in this directory",
                    lossy(target)
                )));
            }
            let target = OsStr::from_bytes(target);
            self.clear(&parent, target, false, &name)?;
            return mknodat(
                &parent,
                target,
                SFlag::S_IFCHR,
                Mode::empty(),
                libc::makedev(0, 0),
            )
            .map_err(|e| io_err("creating the whiteout")(e.into()));
        }

        let parent = self.parent_dir(&name, parents)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear(&parent, last_name, false, &name)?;
                let fd = open_child(
                    &parent,
                    last_name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io_err("creating the file")(e.into()))?;
                let mut file = File::from(fd);
                io::copy(e, &mut file).map_err(io_err("writing the file"))?;
                self.apply_fd_meta(&file, &meta, &name)?;
                let t = TimeSpec::new(meta.mtime, 0);
                futimens(&file, &t, &t).map_err(|e| io_err("setting the mtime")(e.into()))?;
            }
            EntryType::Directory => {
                self.clear(&parent, last_name, true, &name)?;
                match mkdirat(&parent, last_name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_err("creating the directory")(e.into())),
                }
                let fd = open_child(
                    &parent,
                    last_name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                    Mode::empty(),
                )
                .map_err(|e| io_err("opening the directory")(e.into()))?;
                self.apply_fd_meta(&fd, &meta, &name)?;
                self.dirs.push((comps.clone(), meta.mtime, name));
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_path("symlink without a target".to_string()))?;
                self.clear(&parent, last_name, false, &name)?;
                symlinkat(OsStr::from_bytes(&target), &parent, last_name)
                    .map_err(|e| io_err("creating the symlink")(e.into()))?;
                fchownat(
                    &parent,
                    last_name,
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err("setting the owner")(e.into()))?;
                let t = TimeSpec::new(meta.mtime, 0);
                utimensat(&parent, last_name, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| io_err("setting the mtime")(e.into()))?;
            }
            EntryType::Link => {
                let target_raw = e
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_path("hard link without a target".to_string()))?
                    .into_owned();
                let target_name = lossy(&target_raw);
                let link_err = |source: io::Error| UnpackError::LinkTarget {
                    entry: name.clone(),
                    target: target_name.clone(),
                    source,
                };
                // Hard link targets are paths from the layer root; a leading '/' means
                // the same.
                let rel = target_raw.strip_prefix(b"/").unwrap_or(&target_raw);
                let target = components(rel)
                    .map_err(|r| link_err(io::Error::new(io::ErrorKind::InvalidInput, r)))?;
                if target == comps {
                    return Err(link_err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a hard link to itself",
                    )));
                }
                let source = open_in_root(
                    &self.root,
                    &join(&target),
                    OFlag::O_PATH | OFlag::O_NOFOLLOW,
                )
                .map_err(|e| link_err(e.into()))?;
                self.clear(&parent, last_name, false, &name)?;
                linkat(&source, "", &parent, last_name, AtFlags::AT_EMPTY_PATH)
                    .map_err(|e| link_err(e.into()))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let major = e
                            .header()
                            .device_major()
                            .map_err(io_err("reading the device"))?
                            .unwrap_or(0);
                        let minor = e
                            .header()
                            .device_minor()
                            .map_err(io_err("reading the device"))?
                            .unwrap_or(0);
                        let sflag = if kind == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (sflag, libc::makedev(major, minor))
                    }
                };
                self.clear(&parent, last_name, false, &name)?;
                mknodat(&parent, last_name, sflag, Mode::empty(), dev)
                    .map_err(|e| io_err("creating the device node")(e.into()))?;
                fchownat(
                    &parent,
                    last_name,
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| io_err("setting the owner")(e.into()))?;
                // The node was just made by this name in a directory only root can
                // write, so following it can only reach the node itself.
                fchmodat(
                    &parent,
                    last_name,
                    Mode::from_bits_truncate(meta.mode),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| io_err("setting the mode")(e.into()))?;
                let t = TimeSpec::new(meta.mtime, 0);
                utimensat(&parent, last_name, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| io_err("setting the mtime")(e.into()))?;
            }
            other => {
                return Err(UnpackError::Unsupported {
                    entry: name,
                    kind: format!("{other:?}"),
                })
            }
        }
        Ok(())
    }

    /// The directory that holds the entry, resolved inside the root; missing ones are
    /// created component by component.
    fn parent_dir(&self, entry: &str, parents: &[Vec<u8>]) -> Result<OwnedFd, UnpackError> {
        let io_err = |op: &'static str, e: Errno| UnpackError::Io {
            entry: entry.to_string(),
            op,
            source: e.into(),
        };
        let not_dir = |i: usize| UnpackError::ParentNotDir {
            entry: entry.to_string(),
            parent: lossy(&parents[..=i].join(&b'/')),
        };
        let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let mut current = open_in_root(&self.root, Path::new("."), dir_flags)
            .map_err(|e| io_err("opening the root", e))?;
        for i in 0..parents.len() {
            let prefix = join(&parents[..=i]);
            current = match open_in_root(&self.root, &prefix, dir_flags) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    let component = OsStr::from_bytes(&parents[i]);
                    // Something by that name that does not resolve (a dangling symlink,
                    // or one pointing out of the root) is not replaced by a directory.
                    match fstatat(&current, component, AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(_) => return Err(not_dir(i)),
                        Err(Errno::ENOENT) => {}
                        Err(e) => return Err(io_err("inspecting a parent directory", e)),
                    }
                    mkdirat(&current, component, Mode::from_bits_truncate(0o755))
                        .map_err(|e| io_err("creating a parent directory", e))?;
                    open_in_root(&self.root, &prefix, dir_flags)
                        .map_err(|e| io_err("opening a parent directory", e))?
                }
                Err(Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => return Err(not_dir(i)),
                Err(e) => return Err(io_err("opening a parent directory", e)),
            };
        }
        Ok(current)
    }

    /// Makes room for a new entry `name` in `parent`: an existing directory stays if the
    /// new entry is one too, anything else is removed (a later entry wins, as in tar).
    fn clear(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        keep_dir: bool,
        entry: &str,
    ) -> Result<(), UnpackError> {
        let io_err = |op: &'static str| {
            move |e: Errno| UnpackError::Io {
                entry: entry.to_string(),
                op,
                source: e.into(),
            }
        };
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err("inspecting the existing entry")(e)),
            Ok(st) if is_dir(&st) => {
                if keep_dir {
                    Ok(())
                } else {
                    remove_tree(parent, name).map_err(io_err("removing the existing directory"))
                }
            }
            Ok(_) => unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                .map_err(io_err("removing the existing entry")),
        }
    }

    fn apply_fd_meta(&self, fd: impl AsFd, meta: &Meta, entry: &str) -> Result<(), UnpackError> {
        let io_err = |op: &'static str| {
            move |source: io::Error| UnpackError::Io {
                entry: entry.to_string(),
                op,
                source,
            }
        };
        // Owner first: chown clears the setuid and setgid bits the mode then sets.
        fchown(
            &fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| io_err("setting the owner")(e.into()))?;
        fchmod(&fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| io_err("setting the mode")(e.into()))?;
        for (key, value) in &meta.xattrs {
            match fsetxattr(&fd, key, value) {
                Ok(()) => {}
                // "Where permitted": a filesystem without xattrs, or a namespace the
                // kernel refuses, loses the attribute rather than the image.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EPERM | libc::ENOTSUP | libc::EACCES)
                    ) => {}
                Err(e) => return Err(io_err("setting an extended attribute")(e)),
            }
        }
        Ok(())
    }

    /// Sets directory mtimes last, deepest first, since creating entries changes them.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(comps, _, _)| std::cmp::Reverse(comps.len()));
        for (comps, mtime, entry) in dirs {
            let fd = match open_in_root(
                &self.root,
                &join(&comps),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            ) {
                Ok(fd) => fd,
                // Replaced by a later entry of the same layer.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => {
                    return Err(UnpackError::Io {
                        entry,
                        op: "opening the directory",
                        source: e.into(),
                    })
                }
            };
            let t = TimeSpec::new(mtime, 0);
            futimens(&fd, &t, &t).map_err(|e| UnpackError::Io {
                entry,
                op: "setting the mtime",
                source: e.into(),
            })?;
        }
        Ok(())
    }
}

/// Removes the directory `name` in `parent` and everything under it, by fds only.
fn remove_tree(parent: &OwnedFd, name: &OsStr) -> nix::Result<()> {
    let fd = open_child(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )?;
    let mut dir = nix::dir::Dir::from_fd(fd)?;
    let mut children = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            children.push(child.to_vec());
        }
    }
    let dir_fd: OwnedFd = open_child(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY,
        Mode::empty(),
    )?;
    drop(dir);
    for child in children {
        let child = OsStr::from_bytes(&child);
        let st = fstatat(&dir_fd, child, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if is_dir(&st) {
            remove_tree(&dir_fd, child)?;
        } else {
            unlinkat(&dir_fd, child, UnlinkatFlags::NoRemoveDir)?;
        }
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_paths() {
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"/etc/passwd").unwrap_err().contains("absolute"));
        assert!(components(b"a/../../b").unwrap_err().contains(".."));
        assert!(components(b"").is_err());
    }

    #[test]
    fn detects_compression() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"bin/"), Compression::None);
        assert_eq!(Compression::detect(b""), Compression::None);
    }
}

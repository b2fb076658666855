//! Writing a fetched commit's tree out as plain files, and keeping only the newest few.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::SystemTime;

use gix::object::tree::EntryKind;

use super::{error_chain, KEEP_TREES};

/// Writes `commit`'s tree into a fresh directory under `trees`, then renames it to
/// `dest`: a reader sees the whole tree or none of it.
pub(super) fn check_out(
    repo: &gix::Repository,
    commit: gix::ObjectId,
    trees: &Path,
    dest: &Path,
) -> Result<(), String> {
    // Left over by a sync that died midway; the lock says no other sync is writing one.
    remove_temporaries(trees).map_err(|e| format!("{}: {e}", trees.display()))?;
    let tmp = trees.join(format!(".tmp-{commit}"));
    fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let written = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| error_chain(&e))
        .and_then(|tree| write_tree(repo, &tree, &tmp, Path::new("")));
    let renamed = written
        .and_then(|()| fs::rename(&tmp, dest).map_err(|e| format!("{}: {e}", dest.display())));
    if renamed.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    renamed
}

/// Writes `tree`'s entries into `dir`, which is `rel` inside the checkout (for messages).
///
/// Every file and directory is created new (never opened if it exists, never followed
/// if it is a symlink), and names that could leave the directory or make a `.git` are
/// refused, so a crafted tree cannot write outside the checkout.
fn write_tree(
    repo: &gix::Repository,
    tree: &gix::Tree<'_>,
    dir: &Path,
    rel: &Path,
) -> Result<(), String> {
    for entry in tree.iter() {
        let entry = entry.map_err(|e| format!("{}: {}", rel.display(), error_chain(&e)))?;
        let name = entry.filename();
        let rel = rel.join(std::ffi::OsStr::from_bytes(name));
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
            || name.eq_ignore_ascii_case(b".git")
        {
            return Err(format!(
                "the tree has an entry named {:?}, which berth refuses to write",
                rel.display()
            ));
        }
        let path = dir.join(std::ffi::OsStr::from_bytes(name));
        let at = |e: io::Error| format!("{}: {e}", rel.display());
        let object_err = |e: gix::Error| format!("{}: {}", rel.display(), error_chain(&e));
        match entry.mode().kind() {
            EntryKind::Tree => {
                fs::create_dir(&path).map_err(at)?;
                let sub = repo.find_tree(entry.oid().to_owned()).map_err(object_err)?;
                write_tree(repo, &sub, &path, &rel)?;
            }
            kind @ (EntryKind::Blob | EntryKind::BlobExecutable) => {
                let blob = repo.find_blob(entry.oid().to_owned()).map_err(object_err)?;
                let mode = if kind == EntryKind::BlobExecutable {
                    0o755
                } else {
                    0o644
                };
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(at)?;
                file.write_all(&blob.data).map_err(at)?;
            }
            EntryKind::Link => {
                // Written as it is: the loader resolves paths and keeps them inside the tree.
                let blob = repo.find_blob(entry.oid().to_owned()).map_err(object_err)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&blob.data), &path)
                    .map_err(at)?;
            }
            EntryKind::Commit => {
                // A submodule: its commit is in another repository, which berth does not
                // fetch. An empty directory stands for it, as in a git checkout without
                // `--recurse-submodules`.
                fs::create_dir(&path).map_err(at)?;
            }
        }
    }
    Ok(())
}

fn remove_temporaries(trees: &Path) -> io::Result<()> {
    for entry in fs::read_dir(trees)? {
        let entry = entry?;
        if entry.file_name().as_bytes().starts_with(b".tmp-") {
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// Sets `dir`'s modification time to now: pruning keeps the most recently used trees.
pub(super) fn touch(dir: &Path) -> io::Result<()> {
    File::open(dir)?.set_modified(SystemTime::now())
}

/// Removes all trees but the newest [`KEEP_TREES`], never `current`.
pub(super) fn prune(trees: &Path, current: &Path) -> io::Result<()> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(trees)? {
        let entry = entry?;
        let path = entry.path();
        if path == current || entry.file_name().as_bytes().starts_with(b".") {
            continue;
        }
        let modified = entry.metadata()?.modified()?;
        dirs.push((modified, path));
    }
    // Newest first; the current tree is one of the kept.
    dirs.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, path) in dirs.into_iter().skip(KEEP_TREES.saturating_sub(1)) {
        fs::remove_dir_all(&path)?;
    }
    Ok(())
}

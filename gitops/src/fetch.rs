//! Where a source's files are read from: a local directory in place; a remote
//! repository fetched ([`crate::remote::sync`]) and its tree mirrored into a directory
//! of its own that never moves (`<state>/gitops/<source>/checkout`).
//!
//! Why a fixed directory and not the fetched tree's (`trees/<commit>`): a stack's
//! relative paths (`./data:/data`, `env_file: .env`) resolve against it, and its identity
//! is its resolved form. A new commit must change a stack's identity only if it changes
//! what the stack uses, not because its directory name changed; and a bind-mounted
//! folder of the repository stays the same folder, updated in place, as in a checkout
//! a user pulls.

use std::path::{Path, PathBuf};

use manager::state::gitops::{Source, SourceKind};

use crate::remote::{self, Auth, Remote};

/// Reads local directories in place and fetches remote repositories under `dir`.
#[derive(Debug)]
pub struct Sources {
    /// `<state>/gitops`: one folder per remote source (its cache and its checkout).
    pub dir: PathBuf,
}

impl crate::Fetcher for Sources {
    fn fetch(&self, source: &Source) -> Result<(PathBuf, String, bool), String> {
        match &source.kind {
            SourceKind::Dir { .. } => crate::LocalDirs.fetch(source),
            SourceKind::Git {
                url,
                branch,
                path,
                token_file,
                ssh_key_file,
                ..
            } => {
                let auth = match (token_file, ssh_key_file) {
                    (Some(t), _) => Auth::TokenFile(PathBuf::from(t)),
                    (None, Some(k)) => Auth::SshKey(PathBuf::from(k)),
                    (None, None) => Auth::None,
                };
                let remote = Remote {
                    url: url.clone(),
                    branch: branch.clone(),
                    auth,
                };
                let base = self.dir.join(&source.name);
                let fetched =
                    remote::sync(&remote, &base.join("cache")).map_err(|e| e.to_string())?;
                let checkout = base.join("checkout");
                mirror(&fetched.dir, &checkout).map_err(|e| {
                    format!(
                        "cannot write the checkout {} of {}: {e}",
                        checkout.display(),
                        remote::redact_url(url)
                    )
                })?;
                let root = if path.is_empty() {
                    checkout
                } else {
                    // `--path` names a folder of the repository, never outside it.
                    if Path::new(path)
                        .components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                    {
                        return Err(format!(
                            "--path {path:?}: must be a folder inside the repository"
                        ));
                    }
                    checkout.join(path)
                };
                if !root.is_dir() {
                    return Err(format!(
                        "the repository {} has no folder {path:?} at commit {}",
                        remote::redact_url(url),
                        fetched.commit
                    ));
                }
                Ok((root, fetched.commit, false))
            }
        }
    }
}

/// Makes `to` hold exactly what `from` holds (files, folders, symlinks as symlinks),
/// writing only what differs: a file is replaced by a rename of a complete copy, never
/// rewritten in place. Nothing in `to` is followed through a symlink.
pub fn mirror(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::fs;
    let meta = fs::symlink_metadata(to);
    if meta.as_ref().map(|m| !m.is_dir()).unwrap_or(false) {
        fs::remove_file(to)?;
    }
    fs::create_dir_all(to)?;
    let mut names = std::collections::BTreeSet::new();
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        names.insert(name.clone());
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type()?;
        let existing = fs::symlink_metadata(&dst).ok();
        if kind.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                fs::remove_file(&dst)?;
            }
            mirror(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&src)?;
            let same = existing
                .as_ref()
                .is_some_and(|m| m.file_type().is_symlink())
                && fs::read_link(&dst).ok().as_ref() == Some(&target);
            if !same {
                remove_any(&dst)?;
                std::os::unix::fs::symlink(&target, &dst)?;
            }
        } else {
            let same = existing.as_ref().is_some_and(|m| m.is_file())
                && fs::read(&dst).ok() == Some(fs::read(&src)?)
                && existing.as_ref().map(permissions) == Some(permissions(&entry.metadata()?));
            if !same {
                let tmp = to.join(format!(".berth-new-{}", name.to_string_lossy()));
                remove_any(&tmp)?;
                fs::copy(&src, &tmp)?;
                if existing.as_ref().is_some_and(|m| m.is_dir()) {
                    fs::remove_dir_all(&dst)?;
                }
                fs::rename(&tmp, &dst)?;
            }
        }
    }
    for entry in fs::read_dir(to)? {
        let entry = entry?;
        if !names.contains(&entry.file_name()) {
            remove_any(&entry.path())?;
        }
    }
    Ok(())
}

fn permissions(m: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o777
}

/// Removes a file, symlink or folder, if there.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

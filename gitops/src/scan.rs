//! What stacks a source's directory holds, and each one loaded.
//!
//! Each top-level `NAME.yaml`/`NAME.yml` is stack `NAME`; each top-level folder holding
//! a Compose default file (`compose.yaml`, `compose.yml`, `docker-compose.yaml`,
//! `docker-compose.yml`) is stack `FOLDER`, loaded as `docker compose` would in that
//! folder (its override file and `.env` included). Anything else (a README, docs,
//! hidden files and folders) is not a stack.
//!
//! A stack is loaded with no process environment: what it deploys depends on the
//! source's files only, never on the environment of the daemon that happens to lead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use spec::task::StackRecord;

/// One stack of a source, as found in its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// Relative to the source's root: `web.yaml` or `web` (a folder).
    pub rel: String,
    pub folder: bool,
}

/// A source's directory, read: its stacks, and the names that could not be stacks
/// (with why, as a stack's load error).
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// Stack name -> why it cannot be loaded (a bad name, two files of one name).
    pub refused: BTreeMap<String, (String, String)>,
}

/// Lists the stacks in `root`. An error when `root` cannot be read (missing, not a
/// directory): the caller holds every prune then, it does not prune everything.
pub fn list(root: &Path) -> Result<Listing, String> {
    let dir = std::fs::read_dir(root)
        .map_err(|e| format!("cannot read the source directory {}: {e}", root.display()))?;
    let mut found: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for item in dir {
        let item = item.map_err(|e| format!("cannot read {}: {e}", root.display()))?;
        let file_name = item.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        // Followed through a symlink, as a user's `ls` shows it.
        let Ok(meta) = std::fs::metadata(item.path()) else {
            continue;
        };
        let entry = if meta.is_dir() {
            let has_default = spec::DEFAULT_FILES
                .iter()
                .any(|f| item.path().join(f).is_file());
            if !has_default {
                continue;
            }
            Entry {
                name: file_name.to_string(),
                rel: file_name.to_string(),
                folder: true,
            }
        } else if let Some(stem) = file_name
            .strip_suffix(".yaml")
            .or_else(|| file_name.strip_suffix(".yml"))
        {
            Entry {
                name: stem.to_string(),
                rel: file_name.to_string(),
                folder: false,
            }
        } else {
            continue;
        };
        found.entry(entry.name.clone()).or_default().push(entry);
    }
    let mut listing = Listing::default();
    for (name, mut entries) in found {
        entries.sort_by(|a, b| a.rel.cmp(&b.rel));
        if entries.len() > 1 {
            let rels: Vec<&str> = entries.iter().map(|e| e.rel.as_str()).collect();
            listing.refused.insert(
                name.clone(),
                (
                    rels.join(", "),
                    format!(
                        "{} all make stack {name:?}; keep one of them",
                        rels.join(" and ")
                    ),
                ),
            );
            continue;
        }
        let entry = entries.remove(0);
        if let Err(e) = spec::names::check_project_name(&name) {
            listing.refused.insert(
                name.clone(),
                (
                    entry.rel.clone(),
                    format!("{}: the stack name {name:?} is not valid: {e}", entry.rel),
                ),
            );
            continue;
        }
        listing.entries.push(entry);
    }
    Ok(listing)
}

/// A stack of a source, loaded: what deploying it would store, its identity, and the
/// files it was made from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub record: StackRecord,
    /// Its identity: the resolved stack and the contents of the files it uses
    /// ([`digest`]).
    pub digest: String,
    /// Every file it read that is known (its Compose files, env files, file-sourced
    /// secrets and configs), absolute: a change to one of them reloads it.
    pub uses: BTreeSet<PathBuf>,
    pub warnings: Vec<String>,
}

/// The age keys of a source, for its SOPS-encrypted files: the keys, or why there are
/// none (no key file given, or it could not be read).
pub type Keys = Result<std::sync::Arc<crate::sops::Identities>, String>;

/// Loads `entry` of the source at `root`: Ok, or the loader's messages (each naming
/// its file and path). SOPS-encrypted files it reads (Compose files, env files,
/// file-sourced secrets and configs) are decrypted with `keys`.
pub fn load(root: &Path, entry: &Entry, keys: &Keys) -> Result<Loaded, Vec<String>> {
    let (working_dir, files) = if entry.folder {
        (root.join(&entry.rel), Vec::new())
    } else {
        (root.to_path_buf(), vec![root.join(&entry.rel)])
    };
    let opts = spec::LoadOptions {
        files,
        project_name: Some(entry.name.clone()),
        working_dir,
        ..Default::default()
    };
    let filter_keys = keys.clone();
    let loaded = spec::yaml::with_file_filter(
        Box::new(move |path: &Path, text: String| decrypt_text(path, text, &filter_keys)),
        || spec::load(&opts),
    );
    let project = loaded.map_err(|e| {
        e.errors
            .iter()
            .map(|d| relative(root, &d.to_string()))
            .collect::<Vec<_>>()
    })?;
    let mut record = manager::deploy::record_for(&project, project.stack.clone());
    decrypt_objects(&mut record, keys).map_err(|e| vec![relative(root, &e)])?;
    let mut uses: BTreeSet<PathBuf> = project.files.iter().cloned().collect();
    for svc in record.stack.services.values() {
        uses.extend(svc.env_file.iter().map(|f| PathBuf::from(&f.path)));
    }
    for o in record
        .stack
        .secrets
        .values()
        .chain(record.stack.configs.values())
    {
        uses.extend(o.file.iter().map(PathBuf::from));
    }
    if entry.folder {
        uses.insert(root.join(&entry.rel).join(".env"));
    } else {
        uses.insert(root.join(".env"));
    }
    Ok(Loaded {
        digest: digest(&record),
        uses,
        warnings: project
            .warnings
            .iter()
            .map(|d| relative(root, &d.to_string()))
            .collect(),
        record,
    })
}

/// A text file as the loader should see it: decrypted if SOPS encrypted it.
fn decrypt_text(path: &Path, text: String, keys: &Keys) -> Result<String, String> {
    if !crate::sops::is_encrypted(text.as_bytes(), path) {
        return Ok(text);
    }
    let plain = decrypt_bytes(path, text.as_bytes(), keys)?;
    String::from_utf8(plain)
        .map_err(|_| format!("{}: decrypted, it is not UTF-8 text", path.display()))
}

fn decrypt_bytes(path: &Path, bytes: &[u8], keys: &Keys) -> Result<Vec<u8>, String> {
    let keys = keys.as_ref().map_err(|why| {
        format!(
            "{} is SOPS-encrypted and the source has no age key to open it ({why}); \
             give one: berth gitops add ... --age-key-file FILE",
            path.display()
        )
    })?;
    crate::sops::decrypt(bytes, path, keys).map_err(|e| e.to_string())
}

/// File-sourced secrets and configs that SOPS encrypted: the record keeps their
/// plaintext (what the containers read) and its digest (so that re-encrypting the same
/// value, which changes every byte of the file, changes nothing).
fn decrypt_objects(record: &mut StackRecord, keys: &Keys) -> Result<(), String> {
    use base64::Engine as _;
    let stack = record.stack.clone();
    for (kind, objects) in [("secrets", &stack.secrets), ("configs", &stack.configs)] {
        for (key, o) in objects {
            let Some(file) = &o.file else { continue };
            let path = Path::new(file);
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            if !crate::sops::is_encrypted(&bytes, path) {
                continue;
            }
            let plain =
                decrypt_bytes(path, &bytes, keys).map_err(|e| format!("{kind}.{key}: {e}"))?;
            let id = format!("{kind}.{key}");
            record
                .contents
                .insert(id.clone(), hex::encode(Sha256::digest(&plain)));
            record
                .data
                .insert(id, base64::engine::general_purpose::STANDARD.encode(&plain));
        }
    }
    Ok(())
}

/// A stack's identity: the digest of its resolved form and of the contents of the
/// secrets and configs it reads from files and variables (env files are in the
/// resolved form already). Not a commit: a commit that changes nothing the stack uses
/// changes nothing here.
pub fn digest(record: &StackRecord) -> String {
    let mut h = Sha256::new();
    // Serialized from typed maps (ordered): the same input gives the same bytes.
    for part in [
        serde_json::to_vec(&record.stack),
        serde_json::to_vec(&record.contents),
        serde_json::to_vec(&record.secret_env),
    ] {
        let bytes = part.unwrap_or_default();
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    hex::encode(h.finalize())
}

/// A loader message with the source's root taken off its file names, so that status
/// says `web.yaml: services.web.image: ...` as the user's tree has it.
fn relative(root: &Path, message: &str) -> String {
    let mut prefix = root.display().to_string();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    message.replace(&prefix, "")
}

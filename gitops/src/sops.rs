//! Decryption of SOPS-encrypted files (getsops/sops) with age keys, natively.
//!
//! A stack kept in git may hold its secrets in a file encrypted with sops. Such a file
//! keeps its keys readable and each value as `ENC[AES256_GCM,…]`; a `sops` section
//! holds the file's 32-byte data key encrypted to each recipient, and a MAC over all
//! values. Decrypting is: read the format (from the file's extension, as sops does),
//! unwrap the data key with one of our age identities, open each value with
//! AES-256-GCM bound to its path, check the MAC, and write the file back in its own
//! format without the `sops` section.
//!
//! Nothing here prints a secret: errors and `Debug` name files, paths of values and
//! public recipients only. Only age master keys are supported; a file that needs
//! KMS, PGP or Vault, or splits its key over several key groups, is refused with a
//! message that says so.

mod cipher;
mod keys;
mod metadata;
mod tree;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use cipher::{Cipher, Mac, OpenError};
pub use keys::Identities;
use keys::UnwrapError;
use metadata::Metadata;
use tree::{DotenvLine, Node};

/// The file formats sops encrypts, chosen from the file's extension like sops does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Dotenv,
    Yaml,
    Json,
    /// Any other file: sops stores it as JSON, `{"data": "ENC[…]", "sops": {…}}`.
    Binary,
}

impl Format {
    /// `.env` is dotenv, `.yaml`/`.yml` YAML, `.json` JSON, anything else binary.
    pub fn from_path(path: &Path) -> Format {
        // `.env` itself too (no extension to Rust's eyes), as sops reads it.
        let dotenv = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".env"));
        if dotenv {
            return Format::Dotenv;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") | Some("yml") => Format::Yaml,
            Some("json") => Format::Json,
            _ => Format::Binary,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Dotenv => "dotenv",
            Format::Yaml => "YAML",
            Format::Json => "JSON",
            Format::Binary => "sops binary (JSON)",
        })
    }
}

/// Why a key file or an encrypted file could not be used. No variant holds a secret
/// value, a data key or a private key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SopsError {
    #[error("cannot read the age key file {}: {source}", path.display())]
    ReadKeyFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("age key file {key_file}, line {line}: {reason}")]
    KeyFileLine {
        key_file: String,
        line: usize,
        reason: &'static str,
    },
    #[error("age key file {key_file} holds no age secret key: add the AGE-SECRET-KEY-1… line that age-keygen printed")]
    NoKeys { key_file: String },
    #[error("{}: cannot read it as a sops-encrypted {format} file: {reason}", file.display())]
    Malformed {
        file: PathBuf,
        format: Format,
        reason: String,
    },
    #[error("{}: it has no sops metadata, so it is not a sops-encrypted file: encrypt it with `sops encrypt -i`, or keep it out of the secrets", file.display())]
    NotEncrypted { file: PathBuf },
    #[error("{}: its sops metadata is not usable: {reason}", file.display())]
    Metadata { file: PathBuf, reason: String },
    #[error("{}: it is not encrypted for any age key (only for {kinds}), and berth decrypts with age only: add an age recipient with `sops updatekeys` or `sops -r -i --add-age <recipient>`", file.display())]
    NoAgeRecipient { file: PathBuf, kinds: String },
    #[error("{}: none of the age keys in {key_file} ({ours}) can decrypt it; it is encrypted for {theirs}: put one of their secret keys in {key_file}, or re-encrypt the file for one of yours with `sops -r -i --add-age <recipient>`", file.display())]
    NoMatchingKey {
        file: PathBuf,
        key_file: String,
        ours: String,
        theirs: String,
    },
    #[error("{}: its data key does not decrypt with age ({reason}): the `sops` section is damaged; restore the file from git or encrypt it again with sops", file.display())]
    DataKey { file: PathBuf, reason: String },
    #[error("{}: the value at {path} does not decrypt with the file's data key: the file was changed after it was encrypted (a value edited or moved by hand); restore it from git or encrypt it again with sops", file.display())]
    ValueTampered { file: PathBuf, path: String },
    #[error("{}: the value at {path} is not sops-encrypted although the file's rules say it should be: the file was changed after it was encrypted; restore it from git or encrypt it again with sops", file.display())]
    ValueNotEncrypted { file: PathBuf, path: String },
    #[error("{}: the value at {path} {reason}", file.display())]
    BadValue {
        file: PathBuf,
        path: String,
        reason: &'static str,
    },
    #[error("{}: the MAC does not match: the file was changed after it was encrypted (a value edited, added, removed or reordered without sops); restore it from git or encrypt it again with sops", file.display())]
    MacMismatch { file: PathBuf },
}

/// Whether a file carries sops metadata (a top-level `sops` mapping, or `sops_…`
/// lines in dotenv), as sops itself checks before it refuses to encrypt twice.
pub fn is_encrypted(bytes: &[u8], path: &Path) -> bool {
    match Format::from_path(path) {
        Format::Dotenv => tree::parse_dotenv(bytes).is_ok_and(|lines| {
            lines
                .iter()
                .any(|l| matches!(l, DotenvLine::Pair(k, _) if k.starts_with(SOPS_PREFIX)))
        }),
        Format::Yaml => tree::parse_yaml(bytes).is_ok_and(|docs| {
            docs.first()
                .is_some_and(|d| matches!(d.get(SOPS_KEY), Some(Node::Map(_))))
        }),
        Format::Json | Format::Binary => {
            tree::parse_json(bytes).is_ok_and(|doc| matches!(doc.get(SOPS_KEY), Some(Node::Map(_))))
        }
    }
}

/// Decrypts a sops-encrypted file with age keys and returns it in its own format
/// (dotenv text, YAML, JSON, or the raw bytes of a binary file) without the `sops`
/// section. `path` chooses the format and names the file in errors.
///
/// YAML comes back re-written: same data, but comments and layout are not kept.
pub fn decrypt(bytes: &[u8], path: &Path, keys: &Identities) -> Result<Vec<u8>, SopsError> {
    let format = Format::from_path(path);
    let malformed = |reason: String| SopsError::Malformed {
        file: path.to_path_buf(),
        format,
        reason,
    };
    match format {
        Format::Yaml => {
            let mut docs = tree::parse_yaml(bytes).map_err(malformed)?;
            // sops writes its metadata into every document and reads the first copy.
            let sops = docs
                .first_mut()
                .and_then(take_sops)
                .ok_or_else(|| not_encrypted(path))?;
            for doc in docs.iter_mut().skip(1) {
                take_sops(doc);
            }
            let mut file = File::open(path, &sops, keys)?;
            for doc in &mut docs {
                file.walk(doc, &mut Vec::new(), "")?;
            }
            file.verify()?;
            tree::emit_yaml(&docs).map_err(malformed)
        }
        Format::Json | Format::Binary => {
            let mut doc = tree::parse_json(bytes).map_err(malformed)?;
            let sops = take_sops(&mut doc).ok_or_else(|| not_encrypted(path))?;
            let mut file = File::open(path, &sops, keys)?;
            file.walk(&mut doc, &mut Vec::new(), "")?;
            file.verify()?;
            if format == Format::Json {
                return tree::emit_json(&doc).map_err(malformed);
            }
            match doc.get("data") {
                Some(Node::Str(s)) => Ok(s.clone().into_bytes()),
                Some(Node::Bytes(b)) => Ok(b.clone()),
                _ => Err(malformed(
                    "it has no string `data` entry, which holds a binary file's content".into(),
                )),
            }
        }
        Format::Dotenv => {
            let mut lines = tree::parse_dotenv(bytes).map_err(malformed)?;
            let mut flat = Vec::new();
            lines.retain(|line| match line {
                DotenvLine::Pair(k, Node::Str(v)) if k.starts_with(SOPS_PREFIX) => {
                    flat.push((k[SOPS_PREFIX.len()..].to_owned(), v.clone()));
                    false
                }
                _ => true,
            });
            if flat.is_empty() {
                return Err(not_encrypted(path));
            }
            let sops = tree::unflatten(&flat).map_err(|reason| SopsError::Metadata {
                file: path.to_path_buf(),
                reason,
            })?;
            let mut file = File::open(path, &sops, keys)?;
            for line in &mut lines {
                file.dotenv_line(line)?;
            }
            file.verify()?;
            Ok(tree::emit_dotenv(&lines))
        }
    }
}

const SOPS_KEY: &str = "sops";
/// Dotenv has no nesting, so sops flattens its metadata into `sops_…` keys.
const SOPS_PREFIX: &str = "sops_";

fn not_encrypted(path: &Path) -> SopsError {
    SopsError::NotEncrypted {
        file: path.to_path_buf(),
    }
}

/// Removes the top-level `sops` entry of a document and returns it.
fn take_sops(doc: &mut Node) -> Option<Node> {
    let Node::Map(entries) = doc else { return None };
    let at = entries.iter().position(|(k, _)| k == SOPS_KEY)?;
    Some(entries.remove(at).1)
}

/// One file being decrypted: its data key, its rule, and the MAC so far.
struct File<'a> {
    path: &'a Path,
    cipher: Cipher,
    metadata: Metadata,
    mac: Mac,
}

impl<'a> File<'a> {
    /// Reads the metadata and unwraps the data key with the first age stanza that
    /// one of `keys` opens.
    fn open(path: &'a Path, sops: &Node, keys: &Identities) -> Result<File<'a>, SopsError> {
        let metadata = Metadata::from_node(sops).map_err(|reason| SopsError::Metadata {
            file: path.to_path_buf(),
            reason,
        })?;
        if metadata.age.is_empty() {
            return Err(SopsError::NoAgeRecipient {
                file: path.to_path_buf(),
                kinds: metadata.other_kinds.join(", "),
            });
        }
        let mut damaged = None;
        for stanza in &metadata.age {
            match keys.unwrap(&stanza.enc) {
                Ok(plain) => {
                    let key: [u8; 32] = plain[..].try_into().map_err(|_| SopsError::DataKey {
                        file: path.to_path_buf(),
                        reason: format!(
                            "the data key for {} is {} bytes, not 32",
                            stanza.recipient,
                            plain.len()
                        ),
                    })?;
                    let cipher = Cipher::new(Zeroizing::new(key));
                    let mac = Mac::new(metadata.mac_only_encrypted);
                    return Ok(File {
                        path,
                        cipher,
                        metadata,
                        mac,
                    });
                }
                Err(UnwrapError::NoMatch) => {}
                Err(UnwrapError::Other(reason)) => {
                    damaged = Some(format!("for {}: {reason}", stanza.recipient))
                }
            }
        }
        if let Some(reason) = damaged {
            return Err(SopsError::DataKey {
                file: path.to_path_buf(),
                reason,
            });
        }
        let theirs: Vec<&str> = metadata.age.iter().map(|s| s.recipient.as_str()).collect();
        Err(SopsError::NoMatchingKey {
            file: path.to_path_buf(),
            key_file: keys.source().to_owned(),
            ours: keys.recipients().join(", "),
            theirs: theirs.join(", "),
        })
    }

    /// Decrypts every value under `node` in document order, as sops's tree walk does:
    /// `keys` are the mapping keys down to here (list items share their parent's);
    /// `shown` is the same path for messages, with list indices.
    fn walk(
        &mut self,
        node: &mut Node,
        keys: &mut Vec<String>,
        shown: &str,
    ) -> Result<(), SopsError> {
        match node {
            Node::Map(entries) => {
                for (key, value) in entries.iter_mut() {
                    keys.push(key.clone());
                    let shown = if shown.is_empty() {
                        key.clone()
                    } else {
                        format!("{shown}.{key}")
                    };
                    self.walk(value, keys, &shown)?;
                    keys.pop();
                }
            }
            Node::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.walk(item, keys, &format!("{shown}[{i}]"))?;
                }
            }
            // sops skips nulls: nothing to decrypt, nothing hashed.
            Node::Null => {}
            _ => self.leaf(node, keys, shown)?,
        }
        Ok(())
    }

    fn leaf(&mut self, node: &mut Node, keys: &[String], shown: &str) -> Result<(), SopsError> {
        let encrypted = self
            .metadata
            .rule
            .encrypts(keys)
            .unwrap_or_else(|| matches!(node, Node::Str(s) if cipher::is_enc(s)));
        if encrypted {
            let Node::Str(value) = node else {
                return Err(SopsError::ValueNotEncrypted {
                    file: self.path.to_path_buf(),
                    path: shown.to_owned(),
                });
            };
            let opened = self
                .cipher
                .open(value, &cipher::additional_data(keys))
                .map_err(|e| match e {
                    OpenError::Authentication => SopsError::ValueTampered {
                        file: self.path.to_path_buf(),
                        path: shown.to_owned(),
                    },
                    // A plain string where sops wrote ENC[…] is an edit too.
                    OpenError::Malformed(_) if !cipher::is_enc(value) => {
                        SopsError::ValueNotEncrypted {
                            file: self.path.to_path_buf(),
                            path: shown.to_owned(),
                        }
                    }
                    OpenError::Malformed(reason) => SopsError::BadValue {
                        file: self.path.to_path_buf(),
                        path: shown.to_owned(),
                        reason,
                    },
                })?;
            let (plain, mac_bytes) = opened.into_node().map_err(|reason| SopsError::BadValue {
                file: self.path.to_path_buf(),
                path: shown.to_owned(),
                reason,
            })?;
            self.mac.update(&mac_bytes);
            *node = plain;
        } else if !self.metadata.mac_only_encrypted {
            self.mac.update(&cipher::plain_mac_bytes(node));
        }
        Ok(())
    }

    fn dotenv_line(&mut self, line: &mut DotenvLine) -> Result<(), SopsError> {
        match line {
            DotenvLine::Pair(key, value) => self.leaf(value, std::slice::from_ref(key), key),
            DotenvLine::Comment(text) => {
                // A comment sits at the empty path; sops hashes no comment, and keeps
                // one that does not decrypt as it is (older sops left them plain).
                let encrypted = self
                    .metadata
                    .rule
                    .encrypts(&[])
                    .unwrap_or_else(|| cipher::is_enc(text));
                if encrypted {
                    if let Some(plain) =
                        self.cipher.open(text, ":").ok().and_then(|o| o.into_text())
                    {
                        *text = plain;
                    }
                }
                Ok(())
            }
        }
    }

    /// Compares the MAC of the values with the one sops stored, encrypted with the
    /// data key and bound to `lastmodified`.
    fn verify(self) -> Result<(), SopsError> {
        let aad = cipher::mac_additional_data(&self.metadata.last_modified);
        let stored = self
            .cipher
            .open(&self.metadata.mac, &aad)
            .ok()
            .and_then(|o| o.into_text());
        match stored {
            Some(stored) if !stored.is_empty() && stored == self.mac.finish() => Ok(()),
            _ => Err(SopsError::MacMismatch {
                file: self.path.to_path_buf(),
            }),
        }
    }
}

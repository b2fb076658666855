//! Credentials on disk. Directories are 0700 and private keys 0600, from the moment
//! they exist (created with that mode, never chmod-ed down afterwards); certificates
//! are 0644. Every file is written to a temporary name, fsynced, renamed into place and
//! the directory fsynced, so a crash leaves the old file or the new one, never half.
//! Loading refuses a key that group or others can read, as ssh does.
//!
//! Layout: a CA directory holds `ca.crt` and `ca.key`; a node directory holds
//! `ca.crt`, `node.crt` and `node.key`.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ca::Ca;
use crate::cert::CaCert;
use crate::error::CaError;
use crate::node::NodeCredentials;

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.crt";
pub const NODE_KEY_FILE: &str = "node.key";

pub const DIR_MODE: u32 = 0o700;
pub const KEY_MODE: u32 = 0o600;
pub const CERT_MODE: u32 = 0o644;

/// Why credentials could not be saved or loaded. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the private key is readable by group or others (mode {mode:04o}); run `chmod 600 {path}` if it has not leaked, or replace the key")]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: CaError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Ca {
    /// Writes `ca.crt` and `ca.key` into `dir` (made 0700 if it is not).
    pub fn save(&self, dir: &Path) -> Result<(), FileError> {
        private_dir(dir)?;
        write_file(
            &dir.join(CA_CERT_FILE),
            self.cert().to_pem().as_bytes(),
            CERT_MODE,
        )?;
        write_file(&dir.join(CA_KEY_FILE), self.key_pem().as_bytes(), KEY_MODE)
    }

    pub fn load(dir: &Path) -> Result<Self, FileError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert = read_to_string(&cert_path)?;
        let key = read_key(&key_path)?;
        Ca::from_pem(&cert, &key).map_err(|source| FileError::Invalid {
            path: key_path,
            source,
        })
    }
}

impl CaCert {
    /// Reads a CA certificate file (a node's `ca.crt`).
    pub fn load(path: &Path) -> Result<Self, FileError> {
        CaCert::from_pem(&read_to_string(path)?).map_err(|source| FileError::Invalid {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl NodeCredentials {
    /// Writes `ca.crt`, `node.crt` and `node.key` into `dir` (made 0700 if it is not).
    pub fn save(&self, dir: &Path) -> Result<(), FileError> {
        private_dir(dir)?;
        write_file(
            &dir.join(CA_CERT_FILE),
            self.ca().to_pem().as_bytes(),
            CERT_MODE,
        )?;
        // The key before the certificate: a crash in between leaves an old certificate
        // with a new key, which load refuses loudly, rather than the reverse silently.
        write_file(
            &dir.join(NODE_KEY_FILE),
            self.key_pem().as_bytes(),
            KEY_MODE,
        )?;
        write_file(
            &dir.join(NODE_CERT_FILE),
            self.cert_pem().as_bytes(),
            CERT_MODE,
        )
    }

    pub fn load(dir: &Path) -> Result<Self, FileError> {
        let ca = CaCert::load(&dir.join(CA_CERT_FILE))?;
        let cert_path = dir.join(NODE_CERT_FILE);
        let cert = read_to_string(&cert_path)?;
        let key = read_key(&dir.join(NODE_KEY_FILE))?;
        NodeCredentials::from_pem(ca, &cert, &key).map_err(|source| FileError::Invalid {
            path: cert_path,
            source,
        })
    }
}

/// Creates `dir` (and missing parents) as 0700, or tightens an existing one to 0700.
fn private_dir(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io(dir))?;
    let meta = fs::metadata(dir).map_err(io(dir))?;
    if meta.permissions().mode() & 0o777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io(dir))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes`, the file having `mode` from its creation: durably,
/// since a node whose key or certificate is lost after a crash cannot rejoin.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    atomic_file::write(path, bytes, mode, atomic_file::Durability::Durable).map_err(io(path))
}

fn read_to_string(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(io(path))
}

fn read_key(path: &Path) -> Result<String, FileError> {
    let file = File::open(path).map_err(io(path))?;
    let mode = file.metadata().map_err(io(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::KeyExposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    std::io::read_to_string(file).map_err(io(path))
}

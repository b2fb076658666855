//! The manager's on-disk state: one JSON file per network
//! (`<state>/network/networks/<bridge>.json`, a [`NetworkInfo`]) and per container
//! attachment (`<state>/network/containers/<id>.json`, a [`ContainerRecord`]),
//! written whole through a temporary file and a rename, and read back when the
//! manager is opened. The records themselves are defined with their concept
//! (`networks.rs`, `attachments.rs`); this file knows where they live and how.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::{attachments::ContainerRecord, NetworkInfo};
use super::{NetError, NetworkManager};

fn state_err(path: &Path, e: impl std::fmt::Display) -> NetError {
    NetError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), NetError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| state_err(dir, e))?;
    let json = serde_json::to_vec_pretty(value).map_err(|e| state_err(path, e))?;
    // Atomic, not durable: these records describe bridges and veths that a reboot
    // removes, and the daemon's garbage collection reconciles them with the store.
    atomic_file::write(path, &json, 0o600, atomic_file::Durability::Atomic)
        .map_err(|e| state_err(path, e))
}

pub(super) fn read_dir_json<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Vec<T>, NetError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(state_err(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "json") {
            let bytes = std::fs::read(&path).map_err(|e| state_err(&path, e))?;
            out.push(serde_json::from_slice(&bytes).map_err(|e| state_err(&path, e))?);
        }
    }
    Ok(out)
}

pub(super) fn remove_file(path: &Path) -> Result<(), NetError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(state_err(path, e)),
    }
}

pub(super) fn check_id(id: &str) -> Result<(), NetError> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') || id.contains('\0') {
        return Err(NetError::BadId(id.to_string()));
    }
    Ok(())
}

impl NetworkManager {
    pub(super) fn dir(&self, kind: &str) -> PathBuf {
        self.cfg.state_dir.join("network").join(kind)
    }

    pub(super) fn network_file(&self, bridge: &str) -> PathBuf {
        self.dir("networks").join(format!("{bridge}.json"))
    }

    pub(super) fn container_file(&self, id: &str) -> PathBuf {
        self.dir("containers").join(format!("{id}.json"))
    }
}

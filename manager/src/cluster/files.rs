//! What a cluster member keeps on disk, under `<state>/cluster/` (0700): `config.json`
//! (who it is in which cluster, written last and atomically: its presence makes the
//! daemon start in cluster mode), `node/` (its key, certificate and the cluster CA,
//! `pki`'s files) and, on the first manager, `admin/` (an admin client certificate for
//! remote CLIs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pki::NodeRole;
use serde::{Deserialize, Serialize};

/// Why a member's files could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// `action` is what was being done (`read`, `write`, `sync`, ...) to `path`.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("move {} aside: {source}", path.display())]
    MoveAside {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a berth cluster configuration; move it away to leave the cluster: {source}", path.display())]
    NotAConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("load this node's cluster credentials ({}): {source}", path.display())]
    LoadCredentials {
        path: PathBuf,
        #[source]
        source: pki::FileError,
    },
    #[error("save this node's credentials: {0}")]
    SaveCredentials(#[source] pki::FileError),
    #[error(
        "{}: the node certificate is for node {cert}, the configuration for node {config}; \
         the cluster directory is inconsistent",
        path.display()
    )]
    Inconsistent {
        path: PathBuf,
        cert: String,
        config: String,
    },
    #[error(
        "{what} {text:?} is not an IP address with an optional port (e.g. 10.0.0.1 or \
         10.0.0.1:{DEFAULT_PORT}); host names are not accepted, since every node must \
         reach this one at the same address"
    )]
    NotAnAddress { what: String, text: String },
}

/// `map_err` for an I/O error on `path` while doing `action`.
fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FilesError + 'a {
    move |source| FilesError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The cluster port, when `--listen-addr`/`--advertise-addr` give none.
pub const DEFAULT_PORT: u16 = 7377;

/// This node's place in its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub cluster_id: String,
    pub node_id: String,
    pub role: NodeRole,
    /// Its Raft id while a manager (0: a worker).
    pub raft_id: u64,
    /// Where the cluster port listens.
    pub listen: SocketAddr,
    /// Where other nodes reach it.
    pub advertise: SocketAddr,
    /// The managers known when this node joined or last heard of them: (Raft id, node
    /// id, address). A joining manager sends its first Raft answers there; a worker
    /// finds the cluster there after a restart.
    pub managers: Vec<(u64, String, String)>,
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster")
}

pub fn config_path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("config.json")
}

pub fn node_dir(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("node")
}

pub fn admin_dir(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("admin")
}

/// This node's cluster configuration and credentials, or `None` on a single host.
pub fn load(state_dir: &Path) -> Result<Option<(ClusterConfig, pki::NodeCredentials)>, FilesError> {
    let path = config_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    // A crash in the middle of `save`'s swap: the complete old credentials are kept
    // (the configuration, written last, still matches them).
    let (current, old, new) = (
        node_dir(state_dir),
        dir(state_dir).join("node.old"),
        dir(state_dir).join("node.new"),
    );
    if !current.exists() && old.exists() {
        std::fs::rename(&old, &current).map_err(io("restore", &current))?;
    }
    let _ = std::fs::remove_dir_all(&new);
    let config: ClusterConfig =
        serde_json::from_str(&text).map_err(|source| FilesError::NotAConfig {
            path: path.clone(),
            source,
        })?;
    let creds = pki::NodeCredentials::load(&node_dir(state_dir)).map_err(|source| {
        FilesError::LoadCredentials {
            path: path.clone(),
            source,
        }
    })?;
    if creds.identity().id.as_str() != config.node_id {
        return Err(FilesError::Inconsistent {
            path,
            cert: creds.identity().id.as_str().to_string(),
            config: config.node_id,
        });
    }
    Ok(Some((config, creds)))
}

/// Writes the credentials, then the configuration (atomically, fsynced): a crash in
/// between leaves a node that is still a single host and can try again.
pub fn save(
    state_dir: &Path,
    config: &ClusterConfig,
    creds: &pki::NodeCredentials,
) -> Result<(), FilesError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = dir(state_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io("create", &dir))?;
    // The credentials change as a whole (a key without its certificate would leave a
    // node that cannot start nor renew): written aside, then swapped in by renames.
    let new = dir.join("node.new");
    let old = dir.join("node.old");
    let _ = std::fs::remove_dir_all(&new);
    creds.save(&new).map_err(FilesError::SaveCredentials)?;
    for f in ["ca.crt", "node.crt", "node.key"] {
        let file = new.join(f);
        sync(&file).map_err(io("sync", &file))?;
    }
    sync(&new).map_err(io("sync", &new))?;
    let current = node_dir(state_dir);
    if current.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&current, &old).map_err(|source| FilesError::MoveAside {
            path: current.clone(),
            source,
        })?;
    }
    std::fs::rename(&new, &current).map_err(io("write", &current))?;
    sync(&dir).map_err(io("sync", &dir))?;
    let _ = std::fs::remove_dir_all(&old);
    save_config(state_dir, config)
}

/// Rewrites `config.json` (atomically, fsynced).
pub fn save_config(state_dir: &Path, config: &ClusterConfig) -> Result<(), FilesError> {
    let path = config_path(state_dir);
    // A configuration is strings, numbers and addresses: it always serializes.
    let text = serde_json::to_vec_pretty(config).unwrap_or_default();
    atomic_file::write(&path, &text, 0o600, atomic_file::Durability::Durable)
        .map_err(io("write", &path))
}

/// fsyncs a file or directory.
fn sync(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// `ip:port` from a user's `ADDR[:PORT]` (port defaults to the cluster port).
pub fn parse_addr(text: &str, what: &str) -> Result<SocketAddr, FilesError> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(FilesError::NotAnAddress {
        what: what.to_string(),
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(ca: &pki::Ca, id: &pki::NodeId, role: pki::Role) -> pki::NodeCredentials {
        ca.issue(
            &pki::CertRequest::new(pki::Identity::new(id.clone(), role)),
            std::time::SystemTime::now(),
        )
        .unwrap()
    }

    #[test]
    fn credentials_change_as_a_whole_even_across_a_crash_in_the_swap() {
        let state = tempfile::tempdir().unwrap();
        let ca = pki::Ca::create(std::time::SystemTime::now()).unwrap();
        let id = pki::NodeId::generate();
        let config = |role| ClusterConfig {
            cluster_id: "c".into(),
            node_id: id.as_str().into(),
            role,
            raft_id: 0,
            listen: "0.0.0.0:7377".parse().unwrap(),
            advertise: "10.0.0.1:7377".parse().unwrap(),
            managers: vec![],
        };
        let worker = creds(&ca, &id, pki::Role::Worker);
        save(state.path(), &config(NodeRole::Worker), &worker).unwrap();
        let manager = creds(&ca, &id, pki::Role::Manager);
        save(state.path(), &config(NodeRole::Manager), &manager).unwrap();
        let (c, loaded) = load(state.path()).unwrap().unwrap();
        assert_eq!(c.role, NodeRole::Manager);
        assert_eq!(loaded.identity().role, pki::Role::Manager);
        // A crash after the current credentials were moved aside and before the new
        // ones took their place: the old ones come back, with the config that fits.
        let dir = dir(state.path());
        std::fs::rename(dir.join("node"), dir.join("node.old")).unwrap();
        creds(&ca, &id, pki::Role::Worker)
            .save(&dir.join("node.new"))
            .unwrap();
        let (c, loaded) = load(state.path()).unwrap().unwrap();
        assert_eq!(
            (c.role, loaded.identity().role),
            (NodeRole::Manager, pki::Role::Manager)
        );
        assert!(!dir.join("node.new").exists() && !dir.join("node.old").exists());
    }

    #[test]
    fn addresses_get_the_cluster_port_by_default() {
        assert_eq!(
            parse_addr("10.0.0.1", "--advertise-addr").unwrap(),
            "10.0.0.1:7377".parse().unwrap()
        );
        assert_eq!(
            parse_addr("10.0.0.1:9000", "x").unwrap(),
            "10.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            parse_addr("[::1]", "x").unwrap(),
            "[::1]:7377".parse().unwrap()
        );
        let e = parse_addr("manager.example", "--advertise-addr").unwrap_err();
        assert!(e.to_string().contains("--advertise-addr"), "{e}");
    }
}

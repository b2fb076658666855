//! What a cluster member keeps on disk, under `<state>/cluster/` (0700): `config.json`
//! (who it is in which cluster, written last and atomically: its presence makes the
//! daemon start in cluster mode), `node/` (its key, certificate and the cluster CA,
//! `pki`'s files) and, on the first manager, `admin/` (an admin client certificate for
//! remote CLIs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use manager::cluster::NodeRole;
use serde::{Deserialize, Serialize};

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
pub fn load(state_dir: &Path) -> anyhow::Result<Option<(ClusterConfig, pki::NodeCredentials)>> {
    let path = config_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    // A crash in the middle of `save`'s swap: the complete old credentials are kept
    // (the configuration, written last, still matches them).
    let (current, old, new) = (
        node_dir(state_dir),
        dir(state_dir).join("node.old"),
        dir(state_dir).join("node.new"),
    );
    if !current.exists() && old.exists() {
        std::fs::rename(&old, &current)
            .with_context(|| format!("restore {}", current.display()))?;
    }
    let _ = std::fs::remove_dir_all(&new);
    let config: ClusterConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a berth cluster configuration; move it away to leave the cluster",
            path.display()
        )
    })?;
    let creds = pki::NodeCredentials::load(&node_dir(state_dir))
        .with_context(|| format!("load this node's cluster credentials ({})", path.display()))?;
    if creds.identity().id.as_str() != config.node_id {
        anyhow::bail!(
            "{}: the node certificate is for node {}, the configuration for node {}; \
             the cluster directory is inconsistent",
            path.display(),
            creds.identity().id.as_str(),
            config.node_id
        );
    }
    Ok(Some((config, creds)))
}

/// Writes the credentials, then the configuration (atomically, fsynced): a crash in
/// between leaves a node that is still a single host and can try again.
pub fn save(
    state_dir: &Path,
    config: &ClusterConfig,
    creds: &pki::NodeCredentials,
) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = dir(state_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    // The credentials change as a whole (a key without its certificate would leave a
    // node that cannot start nor renew): written aside, then swapped in by renames.
    let new = dir.join("node.new");
    let old = dir.join("node.old");
    let _ = std::fs::remove_dir_all(&new);
    creds.save(&new).context("save this node's credentials")?;
    for f in ["ca.crt", "node.crt", "node.key"] {
        std::fs::File::open(new.join(f))?.sync_all()?;
    }
    std::fs::File::open(&new)?.sync_all()?;
    let current = node_dir(state_dir);
    if current.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(&current, &old)
            .with_context(|| format!("move {} aside", current.display()))?;
    }
    std::fs::rename(&new, &current).with_context(|| format!("write {}", current.display()))?;
    std::fs::File::open(&dir)?.sync_all()?;
    let _ = std::fs::remove_dir_all(&old);
    save_config(state_dir, config)
}

/// Rewrites `config.json` (atomically, fsynced).
pub fn save_config(state_dir: &Path, config: &ClusterConfig) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = dir(state_dir);
    let path = config_path(state_dir);
    let tmp = dir.join("config.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(config)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

/// `ip:port` from a user's `ADDR[:PORT]` (port defaults to the cluster port).
pub fn parse_addr(text: &str, what: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    anyhow::bail!(
        "{what} {text:?} is not an IP address with an optional port (e.g. 10.0.0.1 or \
         10.0.0.1:{DEFAULT_PORT}); host names are not accepted, since every node must \
         reach this one at the same address"
    )
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

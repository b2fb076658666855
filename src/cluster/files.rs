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
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = dir(state_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    creds
        .save(&node_dir(state_dir))
        .context("save this node's credentials")?;
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

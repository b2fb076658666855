//! What the manager's cluster side asks of this process and only the binary can do
//! ([`manager::cluster::Daemon`]): call another manager's API with the CLI's client
//! ([`crate::client`]), and restart the daemon in place when its cluster role changed.

use std::sync::Arc;
use std::time::Duration;

use manager::cluster::{Call, CallError, Daemon};
use manager::state::store::Store;

/// This `berth daemon` process.
#[derive(Debug, Clone, Default)]
pub struct ThisDaemon {
    /// What `--node-generic-resource` advertises.
    pub generic_resources: spec::generic::Inventory,
}

impl Daemon for ThisDaemon {
    fn call(
        &self,
        addr: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        request: Call<'_>,
    ) -> Result<serde_json::Value, CallError> {
        // Safe to send twice, should a kept connection close under it: heartbeats (a
        // report replaces the last), renewals (the node keeps the certificate it
        // gets; another one issued is unused), lists (GET), a forwarded node removal
        // (a repeat finds the node gone and says so; the admin saw an error in that
        // case anyway). A join is the exception, and never goes twice: its TLS
        // settings are made for it alone (`cluster::ops::join`), so it never finds a
        // kept connection to retry on.
        crate::client::Client::tls(addr, tls, pki::tls::manager_server_name())
            .with_timeout(timeout)
            .idempotent()
            .call(request.method, request.path, request.body)
            .map_err(|e| CallError(format!("{e:#}")))
    }

    fn restart(&self, store: Option<Arc<Store>>) {
        restart_daemon(store);
    }

    fn report(&self) -> manager::cluster::membership::NodeReport {
        manager::cluster::membership::NodeReport {
            generic_resources: self.generic_resources.clone(),
            ..manager::cluster::membership::NodeReport::of_this_host()
        }
    }
}

/// Restarts this daemon in place, in the mode its files now say, once the current
/// answer had time to reach the caller. Containers keep running (they are the shims'),
/// the Raft node is stopped first so its log is closed cleanly.
fn restart_daemon(store: Option<Arc<Store>>) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if let Some(store) = store {
            store.node().kill();
        }
        eprintln!("berth daemon: restarting to take up its new cluster role");
        let err = exec_self();
        eprintln!(
            "berth daemon: cannot restart itself ({err}); exiting so that a supervisor restarts it"
        );
        std::process::exit(1);
    });
}

fn exec_self() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    // /proc/self/exe works even if the binary was replaced since this process started.
    std::process::Command::new("/proc/self/exe")
        .args(std::env::args_os().skip(1))
        .exec()
}

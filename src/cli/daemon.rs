//! `berth daemon`: the daemon in the foreground (`crate::daemon` is the daemon
//! itself; `berth up` starts one in the background when none runs).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args, Default)]
pub struct DaemonArgs {
    /// Serve git-ops webhooks (POST /v1/gitops/hook/NAME, signed) on this address
    #[arg(long, value_name = "ADDR", env = "BERTH_GITOPS_WEBHOOK_LISTEN")]
    pub gitops_webhook_listen: Option<SocketAddr>,
    /// Advertise a generic resource to the scheduler, as dockerd does: a count
    /// (SSD=3) or one named unit (NVIDIA-GPU=GPU-8e1a; repeat for several). Tasks
    /// reserve them with deploy.resources.reservations.generic_resources (on a cluster)
    #[arg(
        long = "node-generic-resource",
        value_name = "KIND=VALUE",
        env = "BERTH_NODE_GENERIC_RESOURCE",
        value_delimiter = ','
    )]
    pub node_generic_resources: Vec<String>,
}

pub fn daemon(state_dir: &Path, args: &DaemonArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::daemon::Options {
        webhook_listen: args.gitops_webhook_listen,
        generic_resources: spec::generic::parse(&args.node_generic_resources)
            .map_err(|e| anyhow::anyhow!("--node-generic-resource: {e}"))?,
    };
    crate::daemon::run(state_dir, super::runtime::shim_program()?, &opts)?;
    Ok(ExitCode::SUCCESS)
}

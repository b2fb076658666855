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
}

pub fn daemon(state_dir: &Path, args: &DaemonArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::daemon::Options {
        webhook_listen: args.gitops_webhook_listen,
    };
    crate::daemon::run(state_dir, super::runtime::shim_program()?, &opts)?;
    Ok(ExitCode::SUCCESS)
}

//! `berth daemon`: the daemon in the foreground (`crate::daemon` is the daemon
//! itself; `berth up` starts one in the background when none runs).

use std::path::Path;
use std::process::ExitCode;

pub fn daemon(state_dir: &Path) -> anyhow::Result<ExitCode> {
    crate::daemon::run(state_dir, super::runtime::shim_program()?)?;
    Ok(ExitCode::SUCCESS)
}

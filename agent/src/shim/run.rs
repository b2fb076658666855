//! `berth runtime run` (runc's `run`): a bundle in the foreground, with the caller's
//! stdio, signals forwarded, and the container's exit status as this process's.
//!
//! It runs here, in the shim's program, and not in the `berth` CLI: the process that
//! clones a container's init must run from a sealed copy of itself
//! (`runtime::sealed`), and a sealed copy of the small shim costs a few milliseconds
//! where one of the whole CLI costs tens. The CLI execs this in its place
//! (`berth-shim --run ID BUNDLE`).

use std::path::Path;

use crate::runtime::{self, Bundle, RunOptions};

/// Runs the bundle at `bundle` as container `id`; returns the exit status (the
/// container's, 128 + n if signal n killed it, 1 if it could not start, as for any
/// other error of berth's).
pub fn run_main(bundle: &Path, id: &str) -> i32 {
    let result = Bundle::load(bundle).and_then(|b| {
        runtime::run(
            &b,
            id,
            &RunOptions {
                forward_signals: true,
                ..RunOptions::default()
            },
        )
    });
    match result {
        Ok(report) => {
            if report.oom_killed {
                eprintln!("berth: container {id} was killed: out of memory (memory limit reached)");
            }
            report.status()
        }
        Err(e) => {
            eprintln!("berth: {e}");
            1
        }
    }
}

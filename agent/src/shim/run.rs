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
///
/// `build_id` is the build of berth that asks: a shim from another build (a rebuilt
/// berth next to a stale berth-shim) refuses, saying what to do.
pub fn run_main(bundle: &Path, id: &str, build_id: Option<&str>) -> i32 {
    if build_id.is_some_and(|b| b != crate::BUILD_ID) {
        eprintln!(
            "berth: the berth-shim next to berth is from another build of berth: install both from one build (or set BERTH_SHIM=builtin)"
        );
        return 1;
    }
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

//! The `berth` binary: the command line, and (in later issues) the daemon wiring the
//! manager and the agent together. Only this crate and the tests use anyhow; the
//! libraries return typed errors.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The `berth` binary: the command line, and (in later issues) the daemon wiring the
//! manager and the agent together. Only this crate and the tests use anyhow; the
//! libraries return typed errors.

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            cli::write_stderr(&format!("berth: {e:#}\n"));
            ExitCode::FAILURE
        }
    }
}

//! The `berth` binary: the command line, and the daemon wiring the manager and the
//! agent together. Only this crate and the tests use anyhow; the
//! libraries return typed errors.

mod cli;
mod client;
mod daemon;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            cli::write_stderr(&format!("berth: {}\n", describe(&e)));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, in one line. Our error messages already name their cause
/// (`opening x.tar: No such file or directory`), so a cause whose text is already
/// shown is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

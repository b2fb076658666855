//! `berth-shim DIR`: the per-container shim as its own small program (see
//! `agent::shim`). `create` runs it with the container's state directory and the
//! readiness pipe as its stdout; it detaches at once and this process exits.
//!
//! `berth-shim --exec STATE`: the exec helper (see `agent::shim::exec`), with its
//! control socket as stdin.
//!
//! `berth-shim --run ID BUNDLE`: `berth runtime run` (see `agent::shim::run_main`).
//!
//! Both enter containers, so both first make sure they run from a sealed copy of
//! this program (`agent::runtime::sealed`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--build-id") {
        println!("{}", agent::BUILD_ID);
        return ExitCode::SUCCESS;
    }
    if let Err(e) = agent::runtime::sealed::reexec_sealed() {
        eprintln!("berth-shim: {e}");
        return ExitCode::from(1);
    }
    let code = match args.as_slice() {
        [dir] => agent::shim::shim_main(std::path::Path::new(dir)),
        [flag, state, rest @ ..] if flag == "--exec" && rest.len() <= 1 => {
            let build = rest.first().map(|b| b.to_string_lossy());
            agent::shim::helper_main(std::path::Path::new(state), build.as_deref())
        }
        [flag, id, bundle, rest @ ..] if flag == "--run" && rest.len() <= 1 => {
            let build = rest.first().map(|b| b.to_string_lossy());
            agent::shim::run_main(
                std::path::Path::new(bundle),
                &id.to_string_lossy(),
                build.as_deref(),
            )
        }
        _ => {
            eprintln!(
                "usage: berth-shim CONTAINER-STATE-DIR | --exec STATE [BUILD-ID] | --run ID BUNDLE [BUILD-ID] (started by berth)"
            );
            return ExitCode::from(2);
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

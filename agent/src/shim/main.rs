//! `berth-shim DIR`: the per-container shim as its own small program (see
//! `agent::shim`). `create` runs it with the container's state directory and the
//! readiness pipe as its stdout; it detaches at once and this process exits.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--build-id") {
        println!("{}", agent::BUILD_ID);
        return ExitCode::SUCCESS;
    }
    let [dir] = args.as_slice() else {
        eprintln!(
            "usage: berth-shim CONTAINER-STATE-DIR (started by berth, with a pipe as stdout)"
        );
        return ExitCode::from(2);
    };
    let code = agent::shim::shim_main(std::path::Path::new(dir));
    ExitCode::from(code.clamp(0, 255) as u8)
}

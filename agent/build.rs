//! Stamps the agent crate with an id that changes whenever it is rebuilt, so that
//! `berth` can tell whether the `berth-shim` next to it was built from the same agent
//! code (see `agent::BUILD_ID`). Cargo reruns this script when any file of the crate
//! changes.
fn main() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    println!(
        "cargo:rustc-env=BERTH_AGENT_BUILD={}-{nanos}",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default()
    );
}

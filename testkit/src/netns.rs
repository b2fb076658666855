//! Helpers for network tests: a short object-name prefix unique to the calling test
//! (interface names are at most 15 bytes, too short for [`crate::unique_name`]), and a
//! listing of what is left on the host under a prefix, to assert that tests clean up.

use std::process::Command;

use sha2::{Digest, Sha256};

/// `t` plus 5 hex digits of a [`crate::unique_name`]: unique per test and call, and
/// always 6 bytes, so no test's prefix is the start of another's.
pub fn short_prefix() -> String {
    let name = crate::unique_name("net");
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    format!("t{}", &hash[..5])
}

/// A second octet for a test's private address pool (`10.<octet>.0.0/16`), spread by
/// process and call so parallel tests rarely even try the same subnets.
pub fn pool_octet() -> u8 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (100 + (std::process::id().wrapping_mul(7).wrapping_add(n * 13)) % 150) as u8
}

/// Host links and nftables tables (any family) whose name starts with `prefix`,
/// read with `ip` and `nft` (iproute2 and nftables packages).
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(o) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            // "7: name@peer: <...>" or "7: name: <...>"
            if let Some(name) = line.split(':').nth(1) {
                let name = name.trim().split('@').next().unwrap_or("");
                if name.starts_with(prefix) {
                    out.push(format!("link {name}"));
                }
            }
        }
    }
    if let Ok(o) = Command::new("nft").args(["list", "tables"]).output() {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(name) = line.split_whitespace().nth(2) {
                if name.starts_with(prefix) {
                    out.push(format!("nft {line}"));
                }
            }
        }
    }
    out
}

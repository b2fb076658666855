//! Who the kernel's OOM killer takes first: containers, not the processes that keep
//! their state.

use super::RuntimeError;

/// The OOM score berth's own processes take: the daemon [`DAEMON_OOM_SCORE_ADJ`], each
/// shim [`SHIM_OOM_SCORE_ADJ`], so that when memory runs out the kernel kills a
/// container (score 0 unless its spec says otherwise) before the processes that keep
/// every container's state, as dockerd (-999) and containerd's shims do.
pub const DAEMON_OOM_SCORE_ADJ: i32 = -999;
pub const SHIM_OOM_SCORE_ADJ: i32 = -998;

/// Sets this process's `oom_score_adj`. Lowering it needs CAP_SYS_RESOURCE: without
/// it (some sandboxes), the error says so and the caller carries on unprotected.
pub fn protect_from_oom(score: i32) -> Result<(), RuntimeError> {
    std::fs::write("/proc/self/oom_score_adj", score.to_string()).map_err(|e| {
        RuntimeError::io(
            format!(
                "set oom_score_adj to {score} (lowering it needs CAP_SYS_RESOURCE, which this process lacks)"
            ),
            e,
        )
    })
}

/// This process's `oom_score_adj` (0 if it cannot be read).
pub(crate) fn own_score() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

//! Git-ops: keeps the stacks of a watched directory or a git repository deployed.
//!
//! A source (a local directory, or a remote repository fetched into a checkout) holds
//! stacks: each top-level `NAME.yaml`/`NAME.yml`, and each top-level folder with a
//! Compose default file. The controller loads them, plans against the store (a pure
//! function of the source's stacks, what the store holds and what this source
//! deployed before) and applies the plan through the same stack verbs `berth up` and
//! `berth down` use.

pub mod api;
pub mod controller;
pub mod fetch;
pub mod plan;
pub mod remote;
pub mod scan;
pub mod sops;
pub mod webhook;

pub use controller::{Controller, Fetcher, Images, LocalDirs};

use std::path::Path;

/// The commit a local directory's git checkout is at (empty: not a checkout, or one
/// without a commit), and whether it has changes not committed (tracked files changed
/// in the index or the working tree; untracked files do not count, as `git status`'s
/// "dirty" does not). Read with gix, with no user or system git configuration.
pub fn checkout_state(root: &Path) -> (String, bool) {
    if !root.join(".git").exists() {
        return (String::new(), false);
    }
    let Ok(repo) = gix::open_opts(root, gix::open::Options::isolated()) else {
        return (String::new(), false);
    };
    let commit = repo.head_id().map(|id| id.to_string()).unwrap_or_default();
    let dirty = repo.is_dirty().unwrap_or(false);
    (commit, dirty)
}

//! Git-ops in the store: the sources berth keeps stacks from (`berth gitops add`) and,
//! per stack of a source, what the controller last saw and did. Plain values, like the
//! rest of the model: the controller (the `gitops` crate) writes them in the
//! transactions that act, the API reads them for `berth gitops status`.
//!
//! They are replicated with the stacks, so a new leader takes over a source where the
//! old one left it: what it deployed (ownership), the revisions it keeps, pins,
//! suspensions and a prune being held.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spec::task::StackRecord;

/// How many runs and good revisions of a stack are kept.
pub const KEPT_RUNS: usize = 5;
pub const KEPT_REVISIONS: usize = 5;

/// One source of stacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    /// The full resync's period, in ms (0: [`Source::DEFAULT_RESYNC_MS`]).
    #[serde(default)]
    pub resync_ms: u64,
    /// Pruning a stack also deletes its named volumes (default: they are kept).
    #[serde(default)]
    pub prune_volumes: bool,
    /// An age key file for the SOPS-encrypted files of its stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_key_file: Option<String>,
    /// Unix ms.
    pub created_at: u64,
    /// Bumped by `berth gitops sync`: the controller syncs when it differs from
    /// `synced`, then sets `synced` to it (how a CLI on any manager asks the leader).
    #[serde(default)]
    pub sync_requested: u64,
    #[serde(default)]
    pub synced: u64,
    /// Set by `berth gitops sync --confirm-prune`: the held prune may go ahead once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirm_prune: bool,
    /// The source's own state: where its files were last read from, or why they
    /// could not be (a directory missing, a fetch that failed).
    #[serde(default)]
    pub last: SourceSync,
    /// Its stacks by name: each one it holds or deployed (a stack it deployed stays here
    /// until pruned).
    #[serde(default)]
    pub stacks: BTreeMap<String, StackState>,
}

impl Source {
    pub const DEFAULT_RESYNC_MS: u64 = 60_000;

    /// A source just added: nothing read yet, a first sync asked for.
    pub fn new(name: &str, kind: SourceKind, created_at: u64) -> Source {
        Source {
            name: name.to_string(),
            kind,
            resync_ms: 0,
            prune_volumes: false,
            age_key_file: None,
            created_at,
            sync_requested: 1,
            synced: 0,
            confirm_prune: false,
            last: SourceSync::default(),
            stacks: BTreeMap::new(),
        }
    }

    pub fn resync(&self) -> std::time::Duration {
        std::time::Duration::from_millis(match self.resync_ms {
            0 => Self::DEFAULT_RESYNC_MS,
            ms => ms,
        })
    }
}

/// Where a source's files come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceKind {
    /// A directory on the leader's host (absolute), watched.
    Dir { path: String },
    /// A remote repository, fetched at `interval_ms` and on its webhook.
    Git {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
        /// The folder of the repository that holds the stacks ("" for its root).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
        interval_ms: u64,
        /// A file holding an HTTPS token, or an SSH private key (paths on the leader).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_file: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ssh_key_file: Option<String>,
        /// A file holding the webhook's secret (HMAC key or GitLab token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook_secret_file: Option<String>,
    },
}

impl SourceKind {
    /// Where it is, as `gitops ls` shows it.
    pub fn location(&self) -> String {
        match self {
            SourceKind::Dir { path } => path.clone(),
            SourceKind::Git {
                url, branch, path, ..
            } => {
                let mut s = url.clone();
                if let Some(b) = branch {
                    s.push_str(&format!(" ({b})"));
                }
                if !path.is_empty() {
                    s.push_str(&format!(" /{path}"));
                }
                s
            }
        }
    }
}

/// The source's last read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSync {
    /// Unix ms of the last read that changed something here (0: never).
    #[serde(default)]
    pub at: u64,
    /// The git commit read (a remote's; a local directory's when it is a checkout).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub commit: String,
    /// A local checkout with changes not committed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dirty: bool,
    /// Why the source could not be read (empty: it could).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Why stacks that are gone from the source are not pruned yet (a mass delete).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub held: String,
}

/// What the controller knows of one stack of a source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StackState {
    /// Its file or folder, relative to the source's root.
    pub path: String,
    /// The digest of what the source holds now (its last good load; empty: never
    /// loaded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The digest deployed by this source (empty: this source never deployed it: it
    /// does not own the stack).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deployed: String,
    /// The commit the deployed revision came from, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub commit: String,
    /// Unix ms of the last deployment (0: never).
    #[serde(default)]
    pub deployed_at: u64,
    pub result: SyncResult,
    /// The last error, as the loader, the image check or the deployment said it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Its last runs, newest last ([`KEPT_RUNS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<Run>,
    /// Its last good revisions, newest last ([`KEPT_REVISIONS`]): what
    /// `gitops rollback` deploys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<Revision>,
    /// Pinned to this revision's digest by `gitops rollback` (auto-sync cannot undo
    /// it until `gitops unpin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
    /// `gitops suspend`: left alone (no deployment, no drift correction, no prune).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
}

impl StackState {
    /// Whether this source deployed the stack (and so may change or prune it).
    pub fn owned(&self) -> bool {
        !self.deployed.is_empty()
    }

    /// Records a run, keeping the last [`KEPT_RUNS`].
    pub fn push_run(&mut self, run: Run) {
        self.runs.push(run);
        let extra = self.runs.len().saturating_sub(KEPT_RUNS);
        self.runs.drain(..extra);
    }

    /// Records a deployed revision (once per digest), keeping the last
    /// [`KEPT_REVISIONS`].
    pub fn push_revision(&mut self, rev: Revision) {
        self.revisions.retain(|r| r.digest != rev.digest);
        self.revisions.push(rev);
        let extra = self.revisions.len().saturating_sub(KEPT_REVISIONS);
        self.revisions.drain(..extra);
    }
}

/// Where a stack of a source stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncResult {
    /// Running what the source holds.
    Synced,
    /// The source holds something not deployed yet (or it could not be).
    #[default]
    OutOfSync,
    /// Its file does not load: the last good deployment keeps running.
    Invalid,
    /// Its deployment failed (an image that cannot be had, the store refused it).
    Failed,
    /// Gone from the source, its prune held (a mass delete).
    Held,
    /// `gitops suspend`.
    Suspended,
    /// `gitops rollback`: a revision runs, the source may be ahead.
    Pinned,
    /// A stack of its name exists that this source did not deploy.
    Conflict,
    /// Gone from the source and taken down (forgotten at the next pass).
    Pruned,
}

impl SyncResult {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncResult::Synced => "synced",
            SyncResult::OutOfSync => "out of sync",
            SyncResult::Invalid => "invalid",
            SyncResult::Failed => "failed",
            SyncResult::Held => "held",
            SyncResult::Suspended => "suspended",
            SyncResult::Pinned => "pinned",
            SyncResult::Conflict => "conflict",
            SyncResult::Pruned => "pruned",
        }
    }
}

/// One thing the controller did, or refused to do, to a stack, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Unix ms.
    pub at: u64,
    /// `deploy`, `redeploy` (drift), `prune`, `invalid`, `failed`, `held`, `conflict`,
    /// `rollback`.
    pub action: String,
    /// Why, one line per reason (`services.web: image: a -> b`, `new stack`, `the
    /// container web-1 exited (137) behind berth's back`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The source revision it was about (digest), and its commit if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub commit: String,
}

/// A good revision of a stack, as deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub digest: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub commit: String,
    /// Unix ms it was deployed.
    pub at: u64,
    pub record: Box<StackRecord>,
}

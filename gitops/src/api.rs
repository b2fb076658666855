//! The git-ops endpoints, merged into the manager's API by the daemon (on the unix
//! socket and the cluster port):
//! - `GET /v1/gitops`: every source with its stacks' status ([`SourceView`])
//! - `POST /v1/gitops`: add a source ([`AddRequest`])
//! - `DELETE /v1/gitops/{name}?prune=`: remove a source; with `prune`, take down the
//!   stacks it deployed, else they stay (deployed by hand from then on)
//! - `POST /v1/gitops/{name}/sync?confirm_prune=`: sync now (on the leader); the
//!   answer's `requested` is reached by the source's `synced` once done
//! - `GET /v1/gitops/{name}/plan`: what the next sync would do, changing nothing
//! - `POST /v1/gitops/stacks/{stack}/{suspend|resume|rollback|unpin}`
//!
//! Every change is a store transaction, so a CLI may ask any manager: the leader's
//! controller sees it and acts.

use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use manager::api::ApiError;
use manager::state::gitops::{Run, Source, SourceKind, SourceSync, SyncResult};
use manager::state::model::State;
use serde::{Deserialize, Serialize};

use crate::Controller;

/// `berth gitops add`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRequest {
    pub name: String,
    pub kind: SourceKind,
    #[serde(default)]
    pub resync_ms: u64,
    #[serde(default)]
    pub prune_volumes: bool,
    #[serde(default)]
    pub age_key_file: Option<String>,
}

/// A source as `gitops ls` and `gitops status` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceView {
    pub name: String,
    pub kind: SourceKind,
    pub location: String,
    pub resync_ms: u64,
    pub prune_volumes: bool,
    pub sync_requested: u64,
    pub synced: u64,
    pub last: SourceSync,
    pub stacks: Vec<StackView>,
}

/// One stack of a source, as `gitops status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackView {
    pub stack: String,
    pub source: String,
    pub path: String,
    /// The digest of what the source holds, and of what runs.
    pub digest: String,
    pub deployed: String,
    pub commit: String,
    pub dirty: bool,
    pub deployed_at: u64,
    /// `synced`, `out of sync`, `invalid`, `failed`, `held`, `suspended`, `pinned`
    /// (`pinned; source ahead` when the source holds another revision), `conflict`.
    pub result: String,
    /// `healthy`, `progressing`, `degraded`, `down`.
    pub health: String,
    pub error: String,
    pub runs: Vec<Run>,
    /// The revisions kept (digest, commit, deployed at), newest last.
    pub revisions: Vec<(String, String, u64)>,
    pub pinned: Option<String>,
    pub suspended: bool,
}

/// One line of `gitops plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanLine {
    pub stack: String,
    pub action: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoveQuery {
    #[serde(default)]
    pub prune: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoveResponse {
    pub pruned: Vec<String>,
    /// Stacks it deployed that stay, no longer the source's.
    pub released: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncQuery {
    #[serde(default)]
    pub confirm_prune: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncResponse {
    pub requested: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StackVerbRequest {
    /// For `rollback`: the revision (a digest or its prefix; default: the one before
    /// what runs).
    #[serde(default)]
    pub revision: Option<String>,
}

/// The routes over the controller (its store, node and reader).
pub fn router(controller: Controller) -> Router {
    Router::new()
        .route("/v1/gitops", get(list).post(add))
        .route("/v1/gitops/{name}", axum::routing::delete(remove))
        .route("/v1/gitops/{name}/sync", post(sync))
        .route("/v1/gitops/{name}/plan", get(plan))
        .route("/v1/gitops/stacks/{stack}/{verb}", post(stack_verb))
        .with_state(Arc::new(controller))
}

type Cx = Arc<Controller>;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, message)
}

/// Every source, as views.
pub fn views(state: &State) -> Vec<SourceView> {
    state.gitops.values().map(|src| view(state, src)).collect()
}

fn view(state: &State, src: &Source) -> SourceView {
    let stacks = src
        .stacks
        .iter()
        .map(|(stack, st)| {
            let mut result = st.result.as_str().to_string();
            if st.result == SyncResult::Pinned && st.pinned.as_ref() != Some(&st.digest) {
                result.push_str("; source ahead");
            }
            StackView {
                stack: stack.clone(),
                source: src.name.clone(),
                path: st.path.clone(),
                digest: st.digest.clone(),
                deployed: st.deployed.clone(),
                commit: st.commit.clone(),
                dirty: src.last.dirty,
                deployed_at: st.deployed_at,
                result,
                health: if st.owned() {
                    crate::plan::health(state, stack).to_string()
                } else {
                    String::new()
                },
                error: st.error.clone(),
                runs: st.runs.clone(),
                revisions: st
                    .revisions
                    .iter()
                    .map(|r| (r.digest.clone(), r.commit.clone(), r.at))
                    .collect(),
                pinned: st.pinned.clone(),
                suspended: st.suspended,
            }
        })
        .collect();
    SourceView {
        name: src.name.clone(),
        kind: src.kind.clone(),
        location: src.kind.location(),
        resync_ms: src.resync_ms,
        prune_volumes: src.prune_volumes,
        sync_requested: src.sync_requested,
        synced: src.synced,
        last: src.last.clone(),
        stacks,
    }
}

async fn list(AxState(cx): AxState<Cx>) -> Json<Vec<SourceView>> {
    Json(cx.store.read(views))
}

/// Checks what `add` is given: a good name, a source that can be read from here.
fn check_add(req: &AddRequest) -> Result<(), ApiError> {
    spec::names::check_project_name(&req.name).map_err(|e| bad(format!("source name: {e}")))?;
    match &req.kind {
        SourceKind::Dir { path } => {
            let p = std::path::Path::new(path);
            if !p.is_absolute() {
                return Err(bad(format!(
                    "the source directory {path:?} must be an absolute path"
                )));
            }
            if !p.is_dir() {
                return Err(bad(format!(
                    "the source directory {path} does not exist or is not a directory \
                     (on this host, where the daemon runs)"
                )));
            }
        }
        SourceKind::Git { url, .. } => {
            if url.trim().is_empty() {
                return Err(bad("--git: the repository URL is empty"));
            }
        }
    }
    if let Some(key) = &req.age_key_file {
        if !std::path::Path::new(key).is_file() {
            return Err(bad(format!("--age-key-file {key}: no such file")));
        }
    }
    Ok(())
}

async fn add(
    AxState(cx): AxState<Cx>,
    Json(req): Json<AddRequest>,
) -> Result<Json<SourceView>, ApiError> {
    check_add(&req)?;
    let now = spec::task::now_ms();
    let name = req.name.clone();
    cx.store.update(|s| {
        if let Some(old) = s.gitops.get(&name) {
            return Err(manager::state::store::StoreError::Rejected(format!(
                "a git-ops source named {name:?} exists ({}); remove it first (berth gitops rm {name})",
                old.kind.location()
            )));
        }
        if let Some(other) = s.gitops.values().find(|o| o.kind == req.kind) {
            return Err(manager::state::store::StoreError::Rejected(format!(
                "source {:?} already reads {}",
                other.name,
                other.kind.location()
            )));
        }
        s.gitops.insert(
            name.clone(),
            Source {
                resync_ms: req.resync_ms,
                prune_volumes: req.prune_volumes,
                age_key_file: req.age_key_file.clone(),
                ..Source::new(&name, req.kind.clone(), now)
            },
        );
        Ok(())
    })?;
    let v = cx
        .store
        .read(|s| s.gitops.get(&name).map(|src| view(s, src)))
        .ok_or_else(|| not_found(format!("source {name:?} was removed meanwhile")))?;
    Ok(Json(v))
}

async fn remove(
    AxState(cx): AxState<Cx>,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<RemoveResponse>, ApiError> {
    let owned: Vec<String> = cx
        .store
        .read(|s| {
            s.gitops.get(&name).map(|src| {
                src.stacks
                    .iter()
                    .filter(|(_, st)| st.owned())
                    .map(|(k, _)| k.clone())
                    .collect()
            })
        })
        .ok_or_else(|| {
            not_found(format!(
                "no git-ops source named {name:?} (berth gitops ls lists them)"
            ))
        })?;
    // The source goes first, so that its controller stops before its stacks do.
    let volumes = cx.store.update(|s| {
        let volumes = s.gitops.remove(&name).is_some_and(|src| src.prune_volumes);
        if !q.prune {
            // Its stacks stay, as if deployed by hand.
            for k in &owned {
                if let Some(rec) = s.stacks.get_mut(k) {
                    if rec.source.as_deref() == Some(name.as_str()) {
                        rec.source = None;
                    }
                }
            }
        }
        Ok(volumes)
    })?;
    let mut resp = RemoveResponse::default();
    if !q.prune {
        resp.released = owned;
        return Ok(Json(resp));
    }
    // All at once, as `down` of several stacks would be: each waits for its own
    // containers, not for the others'.
    let mut downs = tokio::task::JoinSet::new();
    for stack in owned {
        let ours = cx.store.read(|s| {
            s.stacks
                .get(&stack)
                .is_some_and(|r| r.source.as_deref() == Some(name.as_str()))
        });
        if !ours {
            continue;
        }
        let (store, node) = (cx.store.clone(), cx.node.clone());
        downs.spawn(async move {
            let done = manager::api::stacks::take_down(&store, &node, &stack, volumes, None).await;
            (stack, done)
        });
    }
    let mut failed = Vec::new();
    while let Some(joined) = downs.join_next().await {
        match joined {
            Ok((stack, Ok(_))) => resp.pruned.push(stack),
            Ok((stack, Err(e))) => failed.push(format!("{stack}: {}", e.error)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    resp.pruned.sort();
    if !failed.is_empty() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "source {name:?} removed; taking down its stacks failed for: {}",
                failed.join("; ")
            ),
        ));
    }
    Ok(Json(resp))
}

async fn sync(
    AxState(cx): AxState<Cx>,
    Path(name): Path<String>,
    Query(q): Query<SyncQuery>,
) -> Result<Json<SyncResponse>, ApiError> {
    let requested = cx.store.update(|s| {
        let src = s.gitops.get_mut(&name).ok_or_else(|| {
            manager::state::store::StoreError::Rejected(format!(
                "no git-ops source named {name:?} (berth gitops ls lists them)"
            ))
        })?;
        src.sync_requested = src.sync_requested.max(src.synced) + 1;
        if q.confirm_prune {
            src.confirm_prune = true;
        }
        Ok(src.sync_requested)
    })?;
    Ok(Json(SyncResponse { requested }))
}

async fn plan(
    AxState(cx): AxState<Cx>,
    Path(name): Path<String>,
) -> Result<Json<Vec<PlanLine>>, ApiError> {
    let c = cx.clone();
    let lines = tokio::task::spawn_blocking(move || c.plan(&name))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(bad)?;
    Ok(Json(
        lines
            .into_iter()
            .map(|(stack, action, reasons)| PlanLine {
                stack,
                action,
                reasons,
            })
            .collect(),
    ))
}

async fn stack_verb(
    AxState(cx): AxState<Cx>,
    Path((stack, verb)): Path<(String, String)>,
    Json(req): Json<StackVerbRequest>,
) -> Result<Json<String>, ApiError> {
    if !matches!(verb.as_str(), "suspend" | "resume" | "rollback" | "unpin") {
        return Err(not_found(format!("no git-ops verb {verb:?}")));
    }
    let said = cx.store.update(|s| {
        let refuse = |m: String| manager::state::store::StoreError::Rejected(m);
        let Some(src) = s
            .gitops
            .values_mut()
            .find(|src| src.stacks.get(&stack).is_some_and(|st| st.owned() || verb != "rollback"))
        else {
            return Err(refuse(format!(
                "no git-ops source holds a stack named {stack:?} (berth gitops status lists them)"
            )));
        };
        let Some(st) = src.stacks.get_mut(&stack) else {
            return Err(refuse(format!("no stack {stack:?}")));
        };
        let said = match verb.as_str() {
            "suspend" => {
                st.suspended = true;
                st.result = SyncResult::Suspended;
                format!("{stack}: suspended; its source no longer changes it")
            }
            "resume" => {
                st.suspended = false;
                format!("{stack}: resumed")
            }
            "unpin" => {
                st.pinned = None;
                format!("{stack}: unpinned; it follows its source again")
            }
            _ => {
                let rev = match &req.revision {
                    Some(r) => st
                        .revisions
                        .iter()
                        .rev()
                        .find(|x| x.digest.starts_with(r.as_str()) || x.commit.starts_with(r.as_str()))
                        .ok_or_else(|| {
                            refuse(format!(
                                "{stack} has no kept revision {r:?} (berth gitops status {stack} lists them)"
                            ))
                        })?,
                    None => st
                        .revisions
                        .iter()
                        .rev()
                        .find(|x| x.digest != st.deployed)
                        .ok_or_else(|| {
                            refuse(format!(
                                "{stack} has no earlier revision to roll back to"
                            ))
                        })?,
                };
                let short: String = rev.digest.chars().take(12).collect();
                st.pinned = Some(rev.digest.clone());
                format!(
                    "{stack}: rolling back to revision {short}; pinned until berth gitops unpin {stack}"
                )
            }
        };
        src.sync_requested = src.sync_requested.max(src.synced) + 1;
        Ok(said)
    })?;
    Ok(Json(said))
}

//! The stack verbs' endpoints: `PUT`/`DELETE /v1/stacks/{name}`, the service verbs,
//! `up`'s progress and one-off containers. Each checks the names it is given and calls
//! [`crate::stacks`].

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{check_name, check_stack_name, ApiError, Ctx};
use crate::stacks::{self, RunRequest, ServicesRequest, UpRequest, UpResponse};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DownQuery {
    #[serde(default)]
    pub volumes: bool,
    /// Seconds to wait for each container to stop before SIGKILL.
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DownResponse {
    pub removed_containers: Vec<String>,
    #[serde(default)]
    pub removed_networks: Vec<String>,
    pub removed_volumes: Vec<String>,
}

/// `GET /v1/stacks/{name}/progress`: where the stack stands, as a long poll
/// ([`crate::progress::answer`]).
pub(crate) async fn progress(
    AxState(cx): AxState<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<crate::progress::ProgressQuery>,
) -> Result<Json<crate::progress::Progress>, ApiError> {
    check_stack_name(&name)?;
    Ok(Json(crate::progress::answer(&cx.store, &name, q).await))
}

pub(crate) async fn up(
    AxState(cx): AxState<Ctx>,
    Path(name): Path<String>,
    Json(req): Json<UpRequest>,
) -> Result<Json<UpResponse>, ApiError> {
    check_request(&name, &req)?;
    let resp = cx.store.update(|s| Ok(stacks::up(s, &name, &req)))?;
    Ok(Json(resp))
}

/// `up --dry-run`: what `up` of this request would do, changing nothing.
pub(crate) async fn plan(
    AxState(cx): AxState<Ctx>,
    Path(name): Path<String>,
    Json(req): Json<UpRequest>,
) -> Result<Json<crate::plan::UpPlan>, ApiError> {
    check_request(&name, &req)?;
    // Worked out on a copy, off the store's lock.
    let state = cx.store.snapshot();
    let nodes = (cx.facts)(&state);
    Ok(Json(crate::plan::plan_up(&state, &name, &req, &nodes)))
}

/// An `up` request for stack `name`: a good name, a record that names itself so.
fn check_request(name: &str, req: &UpRequest) -> Result<(), ApiError> {
    check_stack_name(name)?;
    spec::names::check_record(&req.record)?;
    if req.record.stack.name != name {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the stack is named {:?}, not {name:?}",
                req.record.stack.name
            ),
        ));
    }
    Ok(())
}

pub(crate) async fn down(
    AxState(cx): AxState<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<DownQuery>,
) -> Result<Json<DownResponse>, ApiError> {
    // A stack of a bad name that a berth before these checks stored can still be
    // taken down: `down` uses the name only to find its records, and the agent
    // refuses the bad container ids themselves.
    if !cx.store.read(|s| s.stacks.contains_key(&name)) {
        check_stack_name(&name)?;
    }
    let grace = q.timeout.map(|t| t.saturating_mul(1000));
    match take_down(&cx.store, &cx.node, &name, q.volumes, grace).await? {
        Some(resp) => Ok(Json(resp)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no stack named {name:?} is deployed (berth ls lists them)"),
        )),
    }
}

/// `down` of stack `name`: its containers stopped in waves and removed, then its
/// networks, and with `volumes` its named volumes, on every node. None: no such
/// stack. What `berth down` and a git-ops prune do.
pub async fn take_down(
    store: &std::sync::Arc<crate::state::store::Store>,
    node: &std::sync::Arc<dyn super::NodeAgent>,
    name: &str,
    volumes: bool,
    grace_ms: Option<u64>,
) -> Result<Option<DownResponse>, ApiError> {
    let Some(stacks::Down { record, containers }) = stacks::down(store, name, grace_ms).await?
    else {
        return Ok(None);
    };
    let mut resp = DownResponse {
        removed_containers: containers,
        ..DownResponse::default()
    };
    if let Some(record) = &record {
        // Networks go once their containers have, unless another deployment of the
        // same name came back meanwhile.
        let node = node.clone();
        let stack = record.stack.clone();
        resp.removed_networks = tokio::task::spawn_blocking(move || node.remove_networks(&stack))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    }
    if let (true, Some(record)) = (volumes, record) {
        let node = node.clone();
        resp.removed_volumes =
            tokio::task::spawn_blocking(move || node.remove_volumes(&record.stack))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    }
    Ok(Some(resp))
}

pub(crate) async fn services_verb(
    AxState(cx): AxState<Ctx>,
    Path((name, verb)): Path<(String, String)>,
    Json(req): Json<ServicesRequest>,
) -> Result<Json<Vec<String>>, ApiError> {
    check_stack_name(&name)?;
    for svc in &req.services {
        check_name("services", svc)?;
    }
    let done = cx.store.update(|s| {
        if verb == "rollback" {
            stacks::rollback(s, &name, &req.services, spec::task::now_ms())
        } else {
            stacks::services(s, &name, &verb, &req.services)
        }
    })?;
    if verb == "pause" || verb == "unpause" {
        let targets = cx.store.read(|s| stacks::running(s, &name, &done));
        let (node, frozen) = (cx.node.clone(), verb == "pause");
        tokio::task::spawn_blocking(move || {
            targets.iter().try_for_each(|id| node.freeze(id, frozen))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    if verb == "kill" {
        let signal = req.signal.clone().unwrap_or_else(|| "KILL".into());
        let targets = cx.store.read(|s| stacks::live(s, &name, &done));
        let node = cx.node.clone();
        tokio::task::spawn_blocking(move || {
            targets.iter().try_for_each(|id| node.kill(id, &signal))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    }
    Ok(Json(done))
}

pub(crate) async fn run(
    AxState(cx): AxState<Ctx>,
    Path(name): Path<String>,
    Json(req): Json<RunRequest>,
) -> Result<Json<String>, ApiError> {
    check_stack_name(&name)?;
    check_name("service", &req.service)?;
    if let Some(definition) = &req.definition {
        spec::names::check_service("definition", definition)?;
    }
    let key = format!(
        "{}-run-{:06x}",
        req.service,
        spec::task::now_ms() % 0x100_0000
    );
    let created = cx.store.update(|s| stacks::run(s, &name, &key, &req))?;
    Ok(Json(created))
}

pub(crate) async fn remove_run(
    AxState(cx): AxState<Ctx>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<bool>, ApiError> {
    check_stack_name(&name)?;
    check_name("one-off container", &key)?;
    let removed = cx
        .store
        .update(|s| Ok(stacks::remove_run(s, &name, &key)))?;
    Ok(Json(removed))
}

//! The cluster's HTTP endpoints, over [`crate::cluster`]. On the cluster port the port
//! itself has already checked the client's certificate and role
//! (`crate::port::authorize`); requests on
//! the local unix socket come from root on this host and may do everything, including
//! what only makes sense locally (`init`, `join`).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use pki::{NodeRole, Role};
use serde::{Deserialize, Serialize};

use crate::cluster::files::ClusterConfig;
use crate::cluster::membership::{heard_from, record_report, report_differs, NodeReport};
use crate::cluster::ops::{self, ClusterError, ClusterStatus, NodeChange, Refused};
use crate::cluster::plan::raft_peers;
use crate::cluster::{Daemon, Member};
use crate::port::Peer;
use crate::state::store::{Store, StoreError};

/// An error answer: `{"error": "..."}` with a status, as the rest of the API.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Rejected(m) => error(StatusCode::BAD_REQUEST, m),
        other => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// A join or a renewal that failed: a bad token (or a removed node) is 401, anything
/// else 400.
fn refused(e: ClusterError) -> Response {
    match e {
        ClusterError::Refused(Refused::Token(m)) => error(StatusCode::UNAUTHORIZED, m),
        other => error(StatusCode::BAD_REQUEST, other.to_string()),
    }
}

/// A node change or lookup that failed: refused by the state is 400, a store that
/// cannot answer (no quorum) 503.
fn change_error(e: ClusterError) -> Response {
    match e {
        ClusterError::Refused(r) => error(StatusCode::BAD_REQUEST, r.to_string()),
        ClusterError::Store(e) => store_error(e),
        other => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// The routes of a single host's daemon (not in a cluster): becoming a member, after
/// which `daemon` restarts in its new role.
pub fn single_host(
    state_dir: std::path::PathBuf,
    store: Arc<Store>,
    daemon: Arc<dyn Daemon>,
) -> Router {
    #[derive(Clone)]
    struct Cx {
        state_dir: std::path::PathBuf,
        store: Arc<Store>,
        daemon: Arc<dyn Daemon>,
    }
    async fn status() -> Json<ClusterStatus> {
        Json(ops::not_a_member())
    }
    async fn init(State(cx): State<Cx>, Json(req): Json<ops::InitRequest>) -> Response {
        match ops::init(&cx.state_dir, &cx.store, &req) {
            Ok(answer) => {
                cx.daemon.restart(Some(cx.store.clone()));
                Json(answer).into_response()
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    async fn join(State(cx): State<Cx>, Json(req): Json<ops::JoinLocalRequest>) -> Response {
        let (state_dir, store, daemon) =
            (cx.state_dir.clone(), cx.store.clone(), cx.daemon.clone());
        let joined =
            tokio::task::spawn_blocking(move || ops::join(&state_dir, &store, &req, &*daemon))
                .await;
        match joined {
            Ok(Ok(answer)) => {
                cx.daemon.restart(Some(cx.store.clone()));
                Json(answer).into_response()
            }
            Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    async fn not_in_a_cluster() -> Response {
        error(
            StatusCode::BAD_REQUEST,
            "this node is a single host, not in a cluster (berth cluster init makes one; \
             berth cluster join joins one)",
        )
    }
    Router::new()
        .route("/v1/cluster", get(status))
        .route("/v1/cluster/init", post(init))
        .route("/v1/cluster/join-local", post(join))
        .route(
            "/v1/cluster/join-token/{role}",
            get(not_in_a_cluster).post(not_in_a_cluster),
        )
        .route("/v1/nodes", get(not_in_a_cluster))
        .route(
            "/v1/nodes/{name}",
            get(not_in_a_cluster).post(not_in_a_cluster),
        )
        .with_state(Cx {
            state_dir,
            store,
            daemon,
        })
}

/// The routes of a worker's daemon (on its unix socket): what it is.
pub fn worker(config: ClusterConfig) -> Router {
    let status = ops::worker_status(&config);
    let managers: Vec<String> = config.managers.iter().map(|m| m.2.clone()).collect();
    let elsewhere = move || {
        let managers = managers.join(", ");
        async move {
            error(
                StatusCode::BAD_REQUEST,
                format!(
                    "this node is a worker: the cluster's state lives on its managers; run \
                     the command there, or here with --host MANAGER (managers: {managers})"
                ),
            )
        }
    };
    let cluster_id = config.cluster_id.clone();
    let already = move || {
        let cluster_id = cluster_id.clone();
        async move {
            error(
                StatusCode::BAD_REQUEST,
                format!("this node is already a worker of cluster {cluster_id}"),
            )
        }
    };
    Router::new()
        .route("/v1/ping", get(|| async { "ok" }))
        .route("/v1/cluster", get(move || async move { Json(status) }))
        .route("/v1/cluster/init", post(already.clone()))
        .route("/v1/cluster/join-local", post(already))
        .fallback(elsewhere)
}

#[derive(Debug, Default, Deserialize)]
struct Fresh {
    #[serde(default)]
    fresh: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokenRequest {
    #[serde(default)]
    pub rotate: bool,
}

/// The routes of a manager, on the unix socket and the cluster port.
pub fn manager(member: Arc<Member>) -> Router {
    Router::new()
        .route("/v1/cluster", get(status))
        .route("/v1/cluster/join", post(join))
        .route(
            "/v1/cluster/join-token/{role}",
            get(token).post(token_rotate),
        )
        .route("/v1/cluster/managers", get(managers))
        .route("/v1/cluster/settings", post(settings))
        .route("/v1/cluster/init", post(already_member))
        .route("/v1/cluster/join-local", post(already_member))
        .route("/v1/dispatcher/raft/{id}", get(raft_member))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{name}", get(node).post(change))
        .route("/v1/dispatcher/heartbeat", post(heartbeat))
        .route("/v1/dispatcher/renew", post(renew))
        .with_state(member.clone())
        .merge(super::dispatcher::routes(member))
}

/// On the cluster port: a node certificate counts only as far as the store agrees.
/// The port checked the certificate's role; a manager demoted since it got that
/// certificate keeps it until it renews, so manager endpoints also need the store to
/// still list it as a manager. (Removed nodes never get this far: the deny list
/// refuses their handshake.)
pub async fn check_record(
    State(store): State<Arc<Store>>,
    peer: Option<Extension<Peer>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(Extension(Peer(Some(identity)))) = &peer {
        let path = req.uri().path();
        if identity.role == Role::Manager && !path.starts_with("/v1/dispatcher/") {
            let id = identity.id.as_str();
            let role = store.read(|s| s.nodes.get(id).map(|n| n.role));
            if role != Some(NodeRole::Manager) {
                return error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "node {id} presented a manager certificate but is no longer a manager \
                         of this cluster"
                    ),
                );
            }
        }
    }
    next.run(req).await
}

/// Until the store caught up with the cluster (a quorum answered), requests other
/// than `cluster status` and pings get 503: they would act on a partial state.
pub async fn until_ready(State(m): State<Arc<Member>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !m.is_ready() && path != "/v1/cluster" && path != "/v1/ping" {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this manager is waiting for a quorum of managers before it serves requests;              berth cluster status shows its view",
        );
    }
    next.run(req).await
}

/// Every manager as this one's store has them: (Raft id, node id, address).
async fn managers(State(m): State<Arc<Member>>) -> Json<Vec<(u64, String, String)>> {
    Json(m.store.read(|s| raft_peers(&s.nodes, "")))
}

/// Whether Raft id `id` is still in the group's configuration as this manager applied
/// it: a demoted manager waits for its removal before it stops being one.
async fn raft_member(State(m): State<Arc<Member>>, Path(id): Path<u64>) -> Json<bool> {
    let st = m.store.node().status();
    Json(st.voters.contains(&id) || st.learners.contains(&id))
}

async fn already_member(State(m): State<Arc<Member>>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!(
            "this node is already a manager of cluster {} (berth cluster status shows it)",
            m.config.cluster_id
        ),
    )
}

async fn status(State(m): State<Arc<Member>>) -> Json<ClusterStatus> {
    Json(ops::status(&m))
}

async fn join(State(m): State<Arc<Member>>, Json(req): Json<ops::JoinRequest>) -> Response {
    let m2 = m.clone();
    match tokio::task::spawn_blocking(move || ops::admit(&m2, &req)).await {
        Ok(Ok(answer)) => {
            eprintln!(
                "berth daemon: node {} joined as a {}",
                answer.node_id,
                answer.role.as_str()
            );
            Json(answer).into_response()
        }
        Ok(Err(e)) => refused(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn join_role(role: &str) -> Option<NodeRole> {
    match role {
        "worker" => Some(NodeRole::Worker),
        "manager" => Some(NodeRole::Manager),
        _ => None,
    }
}

fn no_such_role(role: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("no join token for {role:?}: say worker or manager"),
    )
}

async fn token(State(m): State<Arc<Member>>, Path(role): Path<String>) -> Response {
    let Some(role) = join_role(&role) else {
        return no_such_role(&role);
    };
    match ops::join_token(&m, role, false) {
        Ok(t) => Json(t).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn token_rotate(
    State(m): State<Arc<Member>>,
    Path(role): Path<String>,
    Json(req): Json<TokenRequest>,
) -> Response {
    let Some(role) = join_role(&role) else {
        return no_such_role(&role);
    };
    match ops::join_token(&m, role, req.rotate) {
        Ok(t) => Json(t).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn settings(
    State(m): State<Arc<Member>>,
    Json(change): Json<ops::SettingsChange>,
) -> Response {
    match tokio::task::spawn_blocking(move || ops::update_settings(&m, &change)).await {
        Ok(Ok(s)) => Json(s).into_response(),
        Ok(Err(e)) => change_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn nodes(State(m): State<Arc<Member>>) -> Json<Vec<ops::NodeView>> {
    Json(ops::list_nodes(m).await)
}

async fn node(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Query(q): Query<Fresh>,
) -> Response {
    if let Some(refused) = bad_node_name(&name) {
        return refused;
    }
    let record = if q.fresh {
        ops::node_fresh(&m, &name).await
    } else {
        ops::node_local(&m, &name).map_err(ClusterError::from)
    };
    match record {
        Ok(r) => Json(r).into_response(),
        Err(e) => change_error(e),
    }
}

async fn change(
    State(m): State<Arc<Member>>,
    Path(name): Path<String>,
    Json(change): Json<NodeChange>,
) -> Response {
    // The name goes into the path of a request to the leader below.
    if let Some(refused) = bad_node_name(&name) {
        return refused;
    }
    match ops::change_on_leader(m, name, change).await {
        Ok(id) => Json(id).into_response(),
        Err(e) => change_error(e),
    }
}

/// A node named in a request's path (its id or hostname) that is not a plain name:
/// the 400 answer.
fn bad_node_name(name: &str) -> Option<Response> {
    if spec::names::is_resource_name(name) {
        return None;
    }
    Some(error(
        StatusCode::BAD_REQUEST,
        format!(
            "node name {name:?}: a node is named by its id or hostname (letters, digits, \
             '_', '.' and '-'); berth node ls lists them"
        ),
    ))
}

/// The verified node behind a request on the cluster port.
pub(super) fn caller(peer: Option<Extension<Peer>>) -> Option<pki::Identity> {
    match peer {
        Some(Extension(Peer(Some(identity)))) => Some(identity),
        _ => None,
    }
}

pub(super) fn not_a_node() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "this endpoint is for cluster nodes: call it on the cluster port with a node \
         certificate",
    )
}

/// A node's heartbeat, with what it reports of itself (a berth from before reports
/// were sent posts no body).
async fn heartbeat(
    State(m): State<Arc<Member>>,
    peer: Option<Extension<Peer>>,
    body: axum::body::Bytes,
) -> Response {
    let Some(identity) = caller(peer) else {
        return not_a_node();
    };
    let id = identity.id.as_str().to_string();
    let answer = heard_from(&m, &id);
    if let Ok(report) = serde_json::from_slice::<NodeReport>(&body) {
        // A thread only for the rare report that changes the record: one per heartbeat
        // would be a thousand a second on a large cluster.
        if m.is_leader() && report_differs(&m, &id, &report) {
            let _ = crate::cluster::own_thread(move || record_report(&m, &id, &report)).await;
        }
    }
    Json(answer).into_response()
}

async fn renew(
    State(m): State<Arc<Member>>,
    peer: Option<Extension<Peer>>,
    Json(req): Json<ops::RenewRequest>,
) -> Response {
    let Some(identity) = caller(peer) else {
        return not_a_node();
    };
    match ops::renew(&m, &identity, &req) {
        Ok(a) => Json(a).into_response(),
        Err(e) => refused(e),
    }
}

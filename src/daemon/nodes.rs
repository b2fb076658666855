//! The cluster's nodes as the API reaches them, and this node's own endpoints for the
//! managers (`manager::api::node`).
//!
//! - [`Nodes`] is the manager's `NodeAgent`: a task on this node (or any task on a
//!   single host) is asked of the local node ([`ApiNode`]); a task on another node, of
//!   that node's own endpoints at its record's address, over mutual TLS with this
//!   manager's certificate, the node's certificate verified by its id
//!   (`pki::tls::node_server_name`). Where a task is comes from the store
//!   ([`route`], pure). What `down` removes of a stack on nodes (networks; volumes
//!   with `-v`) goes on every node of the cluster ([`Nodes::on_every_node`]); a node
//!   that cannot be reached keeps it (a worker's networks of stacks it no longer runs
//!   go when its daemon restarts, `agent::worker::recover`).
//! - [`ManagerScope`] and [`WorkerScope`] say which tasks a node's own endpoints serve
//!   (those assigned to it) and to whom (the managers it knows).
//! - [`serve_worker_port`] is a worker's cluster port: those endpoints and its images
//!   (`super::images::router`), for the nodes that lack them.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use manager::api::exec::{ExecError, ExecSpec, ExecStream, Starting};
use manager::api::node::{FreezeRequest, KillRequest, NodeScope};
use manager::api::{LogLine, NodeAgent};
use manager::cluster::files::{self as cluster_files, ClusterConfig};
use manager::state::model::State;
use manager::state::store::Store;
use pki::NodeRole;
use spec::model::Stack;

use super::dispatcher_side::DispatcherSide;
use super::store_side::ApiNode;
use crate::client::{Client, Upgrade};

/// How long a call to another node's endpoints may wait for its answer (a log that is
/// followed waits as long as it runs).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the container of a task is, for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Here: this node's task, a task not placed on any node, any task of a single
    /// host, or a task the store does not know (the local node says it has none).
    Local,
    /// On node `node`, whose cluster port is `addr`.
    Remote { node: String, addr: String },
    /// On node `node`, which the cluster no longer lists.
    Gone { node: String },
}

/// Where task `task`'s container is, as `state` says, seen from node `me` (None: a
/// single host).
pub fn route(state: &State, me: Option<&str>, task: &str) -> Route {
    let Some(me) = me else {
        return Route::Local;
    };
    match state.tasks.get(task).and_then(|t| t.node.as_deref()) {
        None => Route::Local,
        Some(node) if node == me => Route::Local,
        Some(node) => match state.nodes.get(node) {
            Some(record) => Route::Remote {
                node: node.to_string(),
                addr: record.addr.clone(),
            },
            None => Route::Gone {
                node: node.to_string(),
            },
        },
    }
}

/// The manager's `NodeAgent`: this node's, or the node's a task runs on.
pub struct Nodes {
    store: Arc<Store>,
    /// This node's id; None on a single host.
    me: Option<String>,
    local: Arc<ApiNode>,
    /// This manager's client settings (None on a single host).
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Another node, as a call to its endpoints.
struct Remote {
    node: String,
    client: Client,
}

impl Nodes {
    pub fn new(
        store: Arc<Store>,
        me: Option<String>,
        local: Arc<ApiNode>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Nodes {
        Nodes {
            store,
            me,
            local,
            tls,
        }
    }

    /// None: the task is this node's.
    fn remote(&self, task: &str) -> Result<Option<Remote>, String> {
        let route = self.store.read(|s| route(s, self.me.as_deref(), task));
        match route {
            Route::Local => Ok(None),
            Route::Gone { node } => Err(format!(
                "task {task} ran on node {node}, which has left the cluster"
            )),
            Route::Remote { node, addr } => {
                let tls = self.tls.clone().ok_or_else(|| {
                    format!("task {task} is on node {node}, and this is no cluster member")
                })?;
                let id = pki::NodeId::new(&node)
                    .map_err(|e| format!("task {task} is on node {node:?}: {e}"))?;
                let client = Client::tls(&addr, tls, pki::tls::node_server_name(&id));
                Ok(Some(Remote { node, client }))
            }
        }
    }
}

impl Remote {
    /// A JSON call to the node's endpoint `path`, its error naming the node.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, String> {
        self.client
            .clone()
            .with_timeout(CALL_TIMEOUT)
            .call(method, path, body)
            .map_err(|e| format!("node {}: {e:#}", self.node))
    }
}

impl NodeAgent for Nodes {
    fn logs(
        &self,
        task: &str,
        follow: bool,
        tail: Option<usize>,
        sink: &mut dyn FnMut(LogLine) -> bool,
    ) -> Result<(), String> {
        let Some(remote) = self.remote(task)? else {
            return self.local.logs(task, follow, tail, sink);
        };
        let mut path = format!("/v1/node/tasks/{task}/logs?follow={follow}");
        if let Some(n) = tail {
            path.push_str(&format!("&tail={n}"));
        }
        // A followed log waits for lines as long as the container runs.
        let client = if follow {
            remote.client.clone()
        } else {
            remote.client.clone().with_timeout(CALL_TIMEOUT)
        };
        let fail = |e: &dyn std::fmt::Display| format!("node {}: {e}", remote.node);
        let mut resp = client
            .request("GET", &path, None)
            .map_err(|e| fail(&format!("{e:#}")))?;
        if resp.status != 200 {
            let mut text = String::new();
            let _ = resp.body.read_to_string(&mut text);
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or(text);
            return Err(fail(&message));
        }
        let mut line = String::new();
        loop {
            line.clear();
            match resp.body.read_line(&mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(fail(&e)),
            }
            let Ok(entry) = serde_json::from_str::<LogLine>(&line) else {
                continue;
            };
            if !sink(entry) {
                return Ok(());
            }
        }
    }

    fn kill(&self, task: &str, signal: &str) -> Result<(), String> {
        match self.remote(task)? {
            None => self.local.kill(task, signal),
            Some(remote) => remote.call(
                "POST",
                &format!("/v1/node/tasks/{task}/kill"),
                Some(&KillRequest {
                    signal: signal.to_string(),
                }),
            ),
        }
    }

    fn freeze(&self, task: &str, frozen: bool) -> Result<(), String> {
        match self.remote(task)? {
            None => self.local.freeze(task, frozen),
            Some(remote) => remote.call(
                "POST",
                &format!("/v1/node/tasks/{task}/freeze"),
                Some(&FreezeRequest { frozen }),
            ),
        }
    }

    fn inspect(&self, task: &str, what: &str) -> Result<serde_json::Value, String> {
        match self.remote(task)? {
            None => self.local.inspect(task, what),
            Some(remote) => {
                remote.call("GET", &format!("/v1/node/tasks/{task}/{what}"), None::<&()>)
            }
        }
    }

    fn exec(&self, task: &str, spec: ExecSpec) -> Starting {
        let remote = match self.remote(task) {
            Ok(None) => return self.local.exec(task, spec),
            Ok(Some(remote)) => remote,
            Err(e) => return Box::pin(async move { Err(ExecError::new(404, e)) }),
        };
        let path = format!("/v1/node/tasks/{task}/exec");
        Box::pin(async move {
            let unreachable =
                |e: anyhow::Error| ExecError::new(502, format!("node {}: {e:#}", remote.node));
            let body = serde_json::to_vec(&spec).map_err(|e| unreachable(e.into()))?;
            let answer = remote
                .client
                .upgrade(&path, manager::api::exec::PROTOCOL, &body)
                .await
                .map_err(unreachable)?;
            match answer {
                Upgrade::Switched(stream) => Ok::<ExecStream, ExecError>(stream),
                Upgrade::Refused { status, message } => Err(ExecError::new(
                    status,
                    format!("node {}: {message}", remote.node),
                )),
            }
        })
    }

    fn remove_networks(&self, stack: &Stack) -> Result<Vec<String>, String> {
        let here = self.local.remove_networks(stack)?;
        Ok(self.on_every_node(stack, "networks", here))
    }

    fn remove_volumes(&self, stack: &Stack) -> Result<Vec<String>, String> {
        let here = self.local.remove_volumes(stack)?;
        Ok(self.on_every_node(stack, "volumes", here))
    }
}

/// How long `down` waits for another node to remove a stack's networks or volumes.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

impl Nodes {
    /// `down`'s removal of `what` (networks, volumes) of `stack` on every other node
    /// of the cluster, all at once; the names removed anywhere, `here`'s first. A node
    /// that fails or cannot be reached is logged and keeps them: the stack is already
    /// gone from the store, and the other nodes' removals stand.
    fn on_every_node(&self, stack: &Stack, what: &str, here: Vec<String>) -> Vec<String> {
        let (Some(me), Some(tls)) = (&self.me, &self.tls) else {
            return here;
        };
        let others: Vec<(String, String)> = self.store.read(|s| {
            s.nodes
                .values()
                .filter(|n| &n.id != me)
                .map(|n| (n.id.clone(), n.addr.clone()))
                .collect()
        });
        let path = format!("/v1/node/stacks/{what}/remove");
        let answers: Vec<Result<Vec<String>, String>> = std::thread::scope(|scope| {
            let calls: Vec<_> = others
                .iter()
                .map(|(node, addr)| {
                    let path = &path;
                    scope.spawn(move || {
                        let id =
                            pki::NodeId::new(node).map_err(|e| format!("node {node:?}: {e}"))?;
                        let client =
                            Client::tls(addr, tls.clone(), pki::tls::node_server_name(&id))
                                .with_timeout(REMOVE_TIMEOUT);
                        client
                            .call::<Vec<String>>("POST", path, Some(stack))
                            .map_err(|e| format!("node {node}: {e:#}"))
                    })
                })
                .collect();
            calls
                .into_iter()
                .map(|c| c.join().unwrap_or_else(|_| Err("the call panicked".into())))
                .collect()
        });
        let mut all = here;
        for answer in answers {
            match answer {
                Ok(names) => all.extend(names),
                Err(e) => eprintln!(
                    "berth daemon: down {}: {what} left on a node: {e}",
                    stack.name
                ),
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        all.retain(|n| seen.insert(n.clone()));
        all
    }
}

/// A manager's own endpoints serve the tasks the store assigns to it, to the nodes the
/// store lists as managers.
pub struct ManagerScope {
    pub store: Arc<Store>,
    pub me: String,
}

impl NodeScope for ManagerScope {
    fn assigned(&self, id: &str) -> bool {
        self.store.read(|s| {
            s.tasks
                .get(id)
                .is_some_and(|t| t.node.as_deref() == Some(self.me.as_str()))
        })
    }

    fn manager(&self, id: &str) -> bool {
        self.store
            .read(|s| s.nodes.get(id).is_some_and(|n| n.role == NodeRole::Manager))
    }
}

/// A worker's own endpoints serve the tasks of its dispatcher's view, to the managers
/// its heartbeats last heard of (`<state>/cluster/config.json`).
pub struct WorkerScope {
    pub side: DispatcherSide,
    pub state_dir: PathBuf,
}

impl NodeScope for WorkerScope {
    fn assigned(&self, id: &str) -> bool {
        agent::worker::Assignments::view(&self.side)
            .tasks
            .contains_key(id)
    }

    fn manager(&self, id: &str) -> bool {
        let path = cluster_files::config_path(&self.state_dir);
        std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ClusterConfig>(&bytes).ok())
            .is_some_and(|c| c.managers.iter().any(|(_, node, _)| node == id))
    }
}

/// A worker's cluster port on `config.listen`: `router` (its own endpoints, for the
/// managers' certificates, and its images, for every node's), HTTP only, each path's
/// callers checked by `manager::port::authorize`.
pub async fn serve_worker_port(
    config: &ClusterConfig,
    creds: &pki::NodeCredentials,
    router: axum::Router,
) -> anyhow::Result<manager::port::Port> {
    let tls = manager::port::http_server_config(creds, &pki::DenyList::new())
        .context("make the cluster port's TLS settings")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "listen on the cluster port {} (a worker serves its containers' logs and \
                 exec there, for the managers, and its images, for the other nodes)",
                config.listen
            )
        })?;
    Ok(manager::port::spawn(
        listener,
        tls,
        manager::port::RaftSink::default(),
        router,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use manager::state::model::NodeRecord;
    use spec::task::Task;

    fn state() -> State {
        let mut state = State::default();
        for (slot, node) in [(1, Some("m1")), (2, Some("w1")), (3, None), (4, Some("w9"))] {
            let t: Task = serde_json::from_value(serde_json::json!({
                "id": format!("app-web-{slot}.1"), "stack": "app", "service": "web",
                "slot": slot, "generation": 1, "spec_hash": "h", "desired": "running",
                "created_at": 0, "node": node,
            }))
            .expect("a task");
            state.tasks.insert(t.id.clone(), t);
        }
        for (id, role, addr) in [
            ("m1", "manager", "10.0.0.1:7377"),
            ("w1", "worker", "10.0.0.2:7377"),
        ] {
            let n: NodeRecord = serde_json::from_value(serde_json::json!({
                "id": id, "role": role, "addr": addr, "hostname": id, "joined_at": 0,
            }))
            .expect("a node record");
            state.nodes.insert(id.to_string(), n);
        }
        state
    }

    #[test]
    fn a_task_is_asked_of_the_node_it_runs_on() {
        let state = state();
        let remote = |node: &str, addr: &str| Route::Remote {
            node: node.into(),
            addr: addr.into(),
        };
        // (seen from, task, route)
        let cases = [
            (Some("m1"), "app-web-1.1", Route::Local),
            (Some("m1"), "app-web-2.1", remote("w1", "10.0.0.2:7377")),
            // Not placed (pending): no container anywhere; the local node says so.
            (Some("m1"), "app-web-3.1", Route::Local),
            (Some("m1"), "app-web-4.1", Route::Gone { node: "w9".into() }),
            (Some("m1"), "app-gone-1.1", Route::Local),
            // Another manager asks this one's task of it.
            (Some("m2"), "app-web-1.1", remote("m1", "10.0.0.1:7377")),
            // A single host: everything is here.
            (None, "app-web-2.1", Route::Local),
        ];
        for (me, task, want) in cases {
            assert_eq!(route(&state, me, task), want, "{task} seen from {me:?}");
        }
    }
}

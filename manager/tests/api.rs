//! The HTTP boundary over a fake node: each handler checks what it is sent, calls the
//! plain function or the node it should, and turns the answer (or the refusal) into a
//! status and a body. The router is called in-process (no socket), over a real
//! single-voter store in a temporary directory; the node is a fake of the
//! `NodeAgent` seam that records what it was asked.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use manager::api::exec::{ExecError, ExecSpec, ExecStream, Starting};
use manager::api::{router, LogLine, NodeAgent};
use manager::progress::{Progress, SlotState};
use manager::stacks::{UpRequest, UpResponse};
use manager::state::store::Store;
use spec::model::{Service, Stack};
use spec::task::{DesiredState, StackRecord, Task, TaskState, TaskStatus};
use tower_service::Service as _;

/// What the fake node was asked, in order; and what it answers.
#[derive(Default)]
struct FakeNode {
    calls: Mutex<Vec<String>>,
    /// When set, every call fails with this message.
    fail: Mutex<Option<String>>,
}

impl FakeNode {
    fn called(&self, call: String) -> Result<(), String> {
        self.calls.lock().expect("the fake's lock").push(call);
        match self.fail.lock().expect("the fake's lock").clone() {
            Some(m) => Err(m),
            None => Ok(()),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("the fake's lock").clone()
    }
}

impl NodeAgent for FakeNode {
    fn logs(
        &self,
        task: &str,
        _follow: bool,
        tail: Option<usize>,
        sink: &mut dyn FnMut(LogLine) -> bool,
    ) -> Result<(), String> {
        self.called(format!("logs {task} tail={tail:?}"))?;
        for (stream, line) in [("stdout", "hello"), ("stderr", "oops")] {
            if !sink(LogLine {
                time: "2026-12-07T00:00:00Z".into(),
                stream: stream.into(),
                line: line.into(),
            }) {
                break;
            }
        }
        Ok(())
    }

    fn kill(&self, task: &str, signal: &str) -> Result<(), String> {
        self.called(format!("kill {task} {signal}"))
    }

    fn freeze(&self, task: &str, frozen: bool) -> Result<(), String> {
        self.called(format!("freeze {task} {frozen}"))
    }

    fn inspect(&self, task: &str, what: &str) -> Result<serde_json::Value, String> {
        self.called(format!("inspect {task} {what}"))?;
        Ok(serde_json::json!({ "task": task, "what": what }))
    }

    /// A session that echoes its stdin as stdout and, once stdin ends, exits 3.
    fn exec(&self, task: &str, spec: ExecSpec) -> Starting {
        let called = self.called(format!("exec {task} {}", spec.args.join(" ")));
        Box::pin(async move {
            called.map_err(|m| ExecError::new(409, m))?;
            let (mut ours, theirs) = tokio::io::duplex(1 << 16);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                loop {
                    let Ok(kind) = ours.read_u8().await else {
                        return;
                    };
                    let Ok(len) = ours.read_u32().await else {
                        return;
                    };
                    let mut data = vec![0; len as usize];
                    if ours.read_exact(&mut data).await.is_err() {
                        return;
                    }
                    match kind {
                        0 => {
                            let _ = ours.write_all(&frame(1, &data)).await;
                        }
                        2 => break,
                        _ => {}
                    }
                }
                let _ = ours.write_all(&frame(3, &3i32.to_be_bytes())).await;
                let _ = ours.shutdown().await;
            });
            Ok(Box::new(theirs) as ExecStream)
        })
    }

    fn remove_networks(&self, stack: &Stack) -> Result<Vec<String>, String> {
        self.called(format!("remove_networks {}", stack.name))?;
        Ok(vec![])
    }

    fn remove_volumes(&self, stack: &Stack) -> Result<Vec<String>, String> {
        self.called(format!("remove_volumes {}", stack.name))?;
        Ok(vec![])
    }
}

/// An exec stream's frame: kind, length (u32 BE), payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

struct Api {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    node: Arc<FakeNode>,
    router: axum::Router,
}

fn api() -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("open the store"));
    let node = Arc::new(FakeNode::default());
    let router = router(store.clone(), node.clone());
    Api {
        _dir: dir,
        store,
        node,
        router,
    }
}

impl Api {
    /// One request: its status and its body.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .expect("request");
        let resp = self.router.call(req).await.expect("the router answers");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, bytes.to_vec())
    }

    /// Stack `app` with services `web` and `db`, and a task per service in the given
    /// states (written as the agent would have reported them).
    fn deploy_with_tasks(&self, web: TaskState, db: TaskState) {
        self.store
            .update(|s| {
                s.stacks.insert("app".into(), record("app", &["web", "db"]));
                for (service, state) in [("web", web), ("db", db)] {
                    let t = task(service, state);
                    s.tasks.insert(t.id.clone(), t);
                }
                Ok(())
            })
            .expect("write the store");
    }
}

fn record(name: &str, services: &[&str]) -> StackRecord {
    StackRecord::new(Stack::of_services(
        name,
        services.iter().map(|s| {
            (
                s.to_string(),
                Service {
                    image: Some("busybox".into()),
                    ..Service::default()
                },
            )
        }),
    ))
}

fn task(service: &str, state: TaskState) -> Task {
    let t: Task = serde_json::from_value(serde_json::json!({
        "id": format!("app-{service}-1.1"), "stack": "app", "service": service, "slot": 1,
        "generation": 1, "spec_hash": "h", "desired": "running", "created_at": 0,
    }))
    .expect("task");
    Task {
        desired: DesiredState::Running,
        status: TaskStatus {
            state: Some(state),
            started_at: Some(1),
            ..Default::default()
        },
        ..t
    }
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[tokio::test]
async fn up_records_the_stack_and_progress_answers_for_it() {
    let mut api = api();
    let req = UpRequest {
        record: record("app", &["web"]),
        remove_orphans: false,
        force_recreate: false,
        no_recreate: false,
    };
    let (status, body) = api
        .call(
            "PUT",
            "/v1/stacks/app",
            Some(serde_json::to_value(&req).expect("json")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    let _: UpResponse = serde_json::from_slice(&body).expect("an UpResponse");
    assert!(api.store.read(|s| s.stacks.contains_key("app")));

    // No orchestrator runs here: the one slot waits for its task.
    let (status, body) = api.call("GET", "/v1/stacks/app/progress", None).await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    let p: Progress = serde_json::from_slice(&body).expect("a Progress");
    assert!(p.deployed);
    assert_eq!(p.containers.len(), 1, "{p:?}");
    assert_eq!(p.containers[0].name, "app-web-1");
    assert_eq!(p.containers[0].state, SlotState::Waiting);

    let (status, body) = api.call("GET", "/v1/stacks/other/progress", None).await;
    assert_eq!(status, StatusCode::OK);
    let p: Progress = serde_json::from_slice(&body).expect("a Progress");
    assert!(!p.deployed);
    assert!(api.node.calls().is_empty(), "{:?}", api.node.calls());
}

#[tokio::test]
async fn names_that_are_no_names_are_refused_before_anything_changes() {
    let mut api = api();
    let req = UpRequest {
        record: record("app", &["web"]),
        remove_orphans: false,
        force_recreate: false,
        no_recreate: false,
    };
    let body = Some(serde_json::to_value(&req).expect("json"));
    // A path that is not the record's stack.
    let (status, msg) = api.call("PUT", "/v1/stacks/other", body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", text(&msg));
    // A stack name that is no name.
    let (status, msg) = api.call("PUT", "/v1/stacks/a..b", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", text(&msg));
    assert!(text(&msg).contains("a..b"), "{}", text(&msg));
    // A task id that is no name never reaches the node.
    let (status, msg) = api.call("GET", "/v1/tasks/..%2Fetc/top", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", text(&msg));
    assert!(api.store.read(|s| s.stacks.is_empty()));
    assert!(api.node.calls().is_empty(), "{:?}", api.node.calls());
}

#[tokio::test]
async fn kill_signals_the_live_containers_only_and_a_node_refusal_is_a_bad_request() {
    let mut api = api();
    api.deploy_with_tasks(TaskState::Running, TaskState::Complete);
    let (status, body) = api
        .call(
            "POST",
            "/v1/stacks/app/kill",
            Some(serde_json::json!({ "signal": "HUP" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert_eq!(api.node.calls(), ["kill app-web-1.1 HUP"]);

    *api.node.fail.lock().expect("the fake's lock") = Some("no such signal: HUP".into());
    let (status, body) = api
        .call(
            "POST",
            "/v1/stacks/app/kill",
            Some(serde_json::json!({ "signal": "HUP" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text(&body).contains("no such signal"), "{}", text(&body));

    // A service the stack does not have: refused by the plain function, not the node.
    let calls = api.node.calls().len();
    let (status, body) = api
        .call(
            "POST",
            "/v1/stacks/app/kill",
            Some(serde_json::json!({ "services": ["cache"] })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text(&body).contains("no service \\\"cache\\\""),
        "{}",
        text(&body)
    );
    assert_eq!(api.node.calls().len(), calls);
}

#[tokio::test]
async fn pause_freezes_the_running_containers() {
    let mut api = api();
    api.deploy_with_tasks(TaskState::Running, TaskState::Running);
    let (status, body) = api
        .call(
            "POST",
            "/v1/stacks/app/pause",
            Some(serde_json::json!({ "services": ["db"] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert_eq!(api.node.calls(), ["freeze app-db-1.1 true"]);
}

#[tokio::test]
async fn inspect_answers_what_the_node_says_and_a_node_error_is_a_conflict() {
    let mut api = api();
    api.deploy_with_tasks(TaskState::Running, TaskState::Running);
    let (status, body) = api.call("GET", "/v1/tasks/app-web-1.1/top", None).await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        value,
        serde_json::json!({ "task": "app-web-1.1", "what": "top" })
    );

    // A view that does not exist, a task that does not exist: never asked of the node.
    let (status, _) = api.call("GET", "/v1/tasks/app-web-1.1/secrets", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.call("GET", "/v1/tasks/app-gone-1.1/top", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.node.calls(), ["inspect app-web-1.1 top"]);

    *api.node.fail.lock().expect("the fake's lock") =
        Some("container app-web-1.1 is not running".into());
    let (status, body) = api.call("GET", "/v1/tasks/app-web-1.1/stats", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(text(&body).contains("is not running"), "{}", text(&body));
}

#[tokio::test]
async fn logs_stream_the_node_s_lines_one_json_per_line_and_its_error_as_a_last_line() {
    let mut api = api();
    api.deploy_with_tasks(TaskState::Running, TaskState::Running);
    let (status, body) = api
        .call("GET", "/v1/tasks/app-web-1.1/logs?tail=2", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<LogLine> = text(&body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one LogLine per line"))
        .collect();
    let got: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l.stream.as_str(), l.line.as_str()))
        .collect();
    assert_eq!(got, [("stdout", "hello"), ("stderr", "oops")]);
    assert_eq!(api.node.calls(), ["logs app-web-1.1 tail=Some(2)"]);

    *api.node.fail.lock().expect("the fake's lock") = Some("its log is unreadable".into());
    let (status, body) = api.call("GET", "/v1/tasks/app-web-1.1/logs", None).await;
    assert_eq!(status, StatusCode::OK);
    let last: LogLine =
        serde_json::from_str(text(&body).lines().last().expect("a line")).expect("a LogLine");
    assert_eq!(last.stream, "error");
    assert_eq!(last.line, "its log is unreadable");
}

#[tokio::test]
async fn down_of_a_stack_that_is_not_deployed_is_not_found_and_touches_nothing() {
    let mut api = api();
    let (status, body) = api
        .call("DELETE", "/v1/stacks/app?volumes=true", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", text(&body));
    assert!(text(&body).contains("berth ls"), "{}", text(&body));
    assert!(api.node.calls().is_empty(), "{:?}", api.node.calls());
}

#[tokio::test]
async fn down_of_a_stack_without_tasks_removes_its_networks_and_volumes_on_the_node() {
    let mut api = api();
    api.store
        .update(|s| {
            s.stacks.insert("app".into(), record("app", &["web"]));
            Ok(())
        })
        .expect("write the store");
    let (status, body) = api
        .call("DELETE", "/v1/stacks/app?volumes=true", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    assert_eq!(
        api.node.calls(),
        ["remove_networks app", "remove_volumes app"]
    );
    assert!(api.store.read(|s| s.stacks.is_empty()));

    // Without volumes=true the volumes stay.
    api.store
        .update(|s| {
            s.stacks.insert("app".into(), record("app", &["web"]));
            Ok(())
        })
        .expect("write the store");
    let (status, _) = api.call("DELETE", "/v1/stacks/app", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        api.node.calls(),
        [
            "remove_networks app",
            "remove_volumes app",
            "remove_networks app"
        ]
    );
}

/// Sends an exec request for `task` over a real socket (an upgrade needs a
/// connection): returns the answer's head, and the connection.
async fn exec_request(
    router: axum::Router,
    task: &str,
    body: &str,
    upgrade: bool,
) -> (String, tokio::net::UnixStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    tokio::spawn(async move {
        let _dir = dir;
        let _ = axum::serve(listener, router).await;
    });
    let mut conn = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect");
    let upgrade = if upgrade {
        "Connection: Upgrade\r\nUpgrade: berth-exec\r\n"
    } else {
        ""
    };
    let head = format!(
        "POST /v1/tasks/{task}/exec HTTP/1.1\r\nHost: berth\r\n{upgrade}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        answer.push(conn.read_u8().await.expect("an answer"));
    }
    (String::from_utf8_lossy(&answer).into_owned(), conn)
}

#[tokio::test]
async fn exec_switches_to_the_node_s_stream_and_carries_it_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = api();
    api.deploy_with_tasks(TaskState::Running, TaskState::Running);
    let spec = serde_json::json!({ "args": ["sh", "-c", "cat"] }).to_string();
    let (head, mut conn) = exec_request(api.router.clone(), "app-web-1.1", &spec, true).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: berth-exec"),
        "{head}"
    );
    conn.write_all(&frame(0, b"hello")).await.expect("stdin");
    conn.write_all(&frame(2, &[])).await.expect("end of stdin");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.expect("the session");
    let mut want = frame(1, b"hello");
    want.extend(frame(3, &3i32.to_be_bytes()));
    assert_eq!(rest, want);
    assert_eq!(api.node.calls(), ["exec app-web-1.1 sh -c cat"]);
}

#[tokio::test]
async fn exec_refusals_are_statuses_before_any_switch() {
    let api = api();
    api.deploy_with_tasks(TaskState::Running, TaskState::Running);
    let spec = serde_json::json!({ "args": ["true"] }).to_string();
    // Not an upgrade, no command, no such task: never asked of the node.
    let (head, _) = exec_request(api.router.clone(), "app-web-1.1", &spec, false).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (head, _) = exec_request(api.router.clone(), "app-web-1.1", r#"{"args":[]}"#, true).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (head, _) = exec_request(api.router.clone(), "app-gone-1.1", &spec, true).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(api.node.calls().is_empty(), "{:?}", api.node.calls());
    // The node's refusal is the answer.
    *api.node.fail.lock().expect("the fake's lock") =
        Some("container app-web-1.1 is not running".into());
    let (head, _) = exec_request(api.router.clone(), "app-web-1.1", &spec, true).await;
    assert!(head.starts_with("HTTP/1.1 409"), "{head}");
}

/// What a node's own endpoints serve: the tasks in `assigned`, to the managers in
/// `managers`.
struct Scope {
    assigned: Vec<&'static str>,
    managers: Vec<&'static str>,
}

impl manager::api::node::NodeScope for Scope {
    fn assigned(&self, id: &str) -> bool {
        self.assigned.contains(&id)
    }

    fn manager(&self, id: &str) -> bool {
        self.managers.contains(&id)
    }
}

#[tokio::test]
async fn a_node_serves_its_own_tasks_to_the_managers_it_knows_and_nobody_else() {
    use manager::port::Peer;
    use pki::{Identity, NodeId, Role};
    let node = Arc::new(FakeNode::default());
    let scope = Arc::new(Scope {
        assigned: vec!["app-web-1.1"],
        managers: vec!["m1"],
    });
    let mut router = manager::api::node::router(node.clone(), scope);
    let who = |id: &str, role| Some(Identity::new(NodeId::new(id).expect("a node id"), role));
    // (path, caller, status)
    let cases = [
        (
            "/v1/node/tasks/app-web-1.1/top",
            who("m1", Role::Manager),
            200,
        ),
        (
            "/v1/node/tasks/app-web-1.1/nothing",
            who("m1", Role::Manager),
            404,
        ),
        // Another node's task, or none: not asked of the node.
        (
            "/v1/node/tasks/app-db-1.1/top",
            who("m1", Role::Manager),
            404,
        ),
        ("/v1/node/tasks/..%2Fetc/top", who("m1", Role::Manager), 400),
        // A manager this node does not know (removed, or not yet heard of), a worker,
        // the CLI, nobody: refused before the task is looked at.
        (
            "/v1/node/tasks/app-web-1.1/top",
            who("m2", Role::Manager),
            403,
        ),
        (
            "/v1/node/tasks/app-web-1.1/top",
            who("m1", Role::Worker),
            403,
        ),
        (
            "/v1/node/tasks/app-web-1.1/top",
            who("m1", Role::Admin),
            403,
        ),
        ("/v1/node/tasks/app-web-1.1/top", None, 403),
    ];
    for (path, peer, want) in cases {
        let mut req = Request::builder()
            .method("GET")
            .uri(path)
            .body(Body::empty())
            .expect("request");
        req.extensions_mut().insert(Peer(peer.clone()));
        let resp = router.call(req).await.expect("the router answers");
        assert_eq!(resp.status().as_u16(), want, "{path} by {peer:?}");
    }
    assert_eq!(node.calls(), ["inspect app-web-1.1 top"]);

    let post = |path: &str, body: serde_json::Value| {
        let mut req = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        req.extensions_mut().insert(Peer(who("m1", Role::Manager)));
        req
    };
    let resp = router
        .call(post(
            "/v1/node/tasks/app-web-1.1/kill",
            serde_json::json!({ "signal": "TERM" }),
        ))
        .await
        .expect("the router answers");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = router
        .call(post(
            "/v1/node/tasks/app-web-1.1/freeze",
            serde_json::json!({ "frozen": true }),
        ))
        .await
        .expect("the router answers");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        node.calls(),
        [
            "inspect app-web-1.1 top",
            "kill app-web-1.1 TERM",
            "freeze app-web-1.1 true"
        ]
    );
}

//! Kept connections over real mutual TLS on 127.0.0.1, with berth's own certificates and
//! TLS settings: against a small HTTP/1.1 server written here (each case chooses how it
//! answers and closes, and it counts the connections it accepts), and against the real
//! cluster port (`manager::port`: hyper, its idle timeout, `close_denied`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pki::{Ca, CertRequest, DenyList, Identity, NodeCredentials, NodeId, Role};
use serde_json::{json, Value};

use super::{keepalive, Client};

fn creds(ca: &Ca, name: &str, role: Role) -> NodeCredentials {
    let id = NodeId::new(name).expect("test node id");
    ca.issue(
        &CertRequest::new(Identity::new(id, role)).address("127.0.0.1"),
        SystemTime::now(),
    )
    .expect("issue test credentials")
}

/// A node's TLS client settings, as `http_client_config` makes them for the daemon.
fn tls(ca: &Ca, name: &str) -> Arc<rustls::ClientConfig> {
    manager::port::http_client_config(&creds(ca, name, Role::Worker), &DenyList::new())
        .expect("client TLS settings")
}

fn client(addr: &str, tls: &Arc<rustls::ClientConfig>) -> Client {
    Client::tls(addr, tls.clone(), pki::tls::manager_server_name())
        .with_timeout(Duration::from_secs(5))
}

/// One request as the test server read it.
struct Request {
    path: String,
    /// The client certificate's node id.
    peer: String,
    /// Which connection (1 for the first accepted) and which request on it (1 for the
    /// first).
    conn: usize,
    nth: usize,
}

/// What the test server does with a request.
enum Reply {
    /// Writes these bytes (one TLS record) and reads the next request.
    Send(Vec<u8>),
    /// Writes these bytes, then closes the connection (close_notify and FIN), as a
    /// server does when its idle timeout fires after an answer.
    SendThenClose(Vec<u8>),
    /// Closes the connection without answering: a server that went away with the
    /// request in flight.
    Close,
    /// Waits, then answers.
    Later(Duration, Vec<u8>),
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A mutual-TLS HTTP/1.1 server with the cluster port's TLS settings, a thread per
/// connection.
struct Server {
    addr: String,
    accepted: Arc<AtomicUsize>,
    /// Every request's method and path, in order.
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(ca: &Ca, handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let config =
            manager::port::server_config(&creds(ca, "m1", Role::Manager), &DenyList::new())
                .expect("server TLS settings");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (n, s, st) = (accepted.clone(), seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = tcp else { continue };
                let conn = n.fetch_add(1, Ordering::SeqCst) + 1;
                let (config, handler, seen) = (config.clone(), handler.clone(), s.clone());
                std::thread::spawn(move || serve(tcp, config, conn, &*handler, &seen));
            }
        });
        Server {
            addr,
            accepted,
            seen,
            stop,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Wakes the accept loop so that it sees the flag and ends (and drops the
        // listener); connection threads end at their read timeout.
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    conn: usize,
    handler: &Handler,
    seen: &Mutex<Vec<String>>,
) {
    // An idle connection the client forgot ends by itself.
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(session) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(session, tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    let peer = pki::peer_identity(&tls.conn)
        .map(|i| i.id.as_str().to_string())
        .unwrap_or_default();
    let mut reader = BufReader::new(tls);
    for nth in 1.. {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or_default().to_string(),
            words.next().unwrap_or_default().to_string(),
        );
        let mut length = 0;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.trim_end().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().expect("seen").push(format!("{method} {path}"));
        let request = Request {
            path,
            peer: peer.clone(),
            conn,
            nth,
        };
        let tls = reader.get_mut();
        match handler(&request) {
            Reply::Send(bytes) => {
                if tls.write_all(&bytes).and_then(|()| tls.flush()).is_err() {
                    return;
                }
            }
            Reply::Later(wait, bytes) => {
                std::thread::sleep(wait);
                if tls.write_all(&bytes).and_then(|()| tls.flush()).is_err() {
                    return;
                }
            }
            Reply::SendThenClose(bytes) => {
                let _ = tls.write_all(&bytes).and_then(|()| tls.flush());
                tls.conn.send_close_notify();
                let _ = tls.flush();
                return;
            }
            Reply::Close => return,
        }
    }
}

/// A 200 answer saying which connection and client it came from.
fn answer(r: &Request) -> Vec<u8> {
    answer_with(r, "")
}

/// [`answer`] with `extra` header lines (each ending in CRLF).
fn answer_with(r: &Request, extra: &str) -> Vec<u8> {
    let body = json!({"conn": r.conn, "peer": r.peer, "path": r.path}).to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Which connection served a call, by the server's answer.
fn conn_of(answer: &Value) -> u64 {
    answer["conn"].as_u64().expect("the server's answer")
}

#[test]
fn sequential_calls_share_one_connection_whatever_the_framing() {
    let ca = Ca::create(SystemTime::now()).expect("CA");
    let server = Server::start(&ca, |r| match r.path.as_str() {
        // Chunked, with a trailer: the end is the empty line after it.
        "/chunked" => {
            let body = json!({"conn": r.conn}).to_string();
            let (a, b) = body.split_at(3);
            Reply::Send(
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                     {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: 1\r\n\r\n",
                    a.len(),
                    b.len()
                )
                .into_bytes(),
            )
        }
        // The dispatcher's "no change": no body, and no length saying so.
        "/none" => Reply::Send(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        _ => Reply::Send(answer(r)),
    });
    let tls = tls(&ca, "w1");
    let c = client(&server.addr, &tls);

    let first: Value = c.call("GET", "/a", None::<&()>).expect("first call");
    assert_eq!(conn_of(&first), 1);
    assert_eq!(first["peer"], "w1");
    // Callers make a new Client for each call: the connection is the process's.
    let again: Value = client(&server.addr, &tls)
        .call("POST", "/b", Some(&json!({"x": 1})))
        .expect("second call");
    assert_eq!(conn_of(&again), 1);
    let chunked: Value = c.call("GET", "/chunked", None::<&()>).expect("chunked");
    assert_eq!(conn_of(&chunked), 1);
    assert_eq!(
        c.fetch("GET", "/none", None).expect("no change"),
        (204, String::new())
    );
    let last: Value = c.call("GET", "/c", None::<&()>).expect("after a 204");
    assert_eq!(conn_of(&last), 1);
    assert_eq!(server.accepted(), 1, "one handshake for five requests");
    assert_eq!(
        server.seen(),
        ["GET /a", "POST /b", "GET /chunked", "GET /none", "GET /c"]
    );
}

#[test]
fn calls_in_flight_at_once_each_take_a_connection_and_both_are_kept() {
    let ca = Ca::create(SystemTime::now()).expect("CA");
    let server = Server::start(&ca, |r| match r.path.as_str() {
        // A long poll.
        "/poll" => Reply::Later(Duration::from_millis(500), answer(r)),
        _ => Reply::Send(answer(r)),
    });
    let tls = tls(&ca, "w1");
    let poller = {
        let c = client(&server.addr, &tls);
        std::thread::spawn(move || c.call::<Value>("GET", "/poll", None::<&()>))
    };
    std::thread::sleep(Duration::from_millis(100));
    let heartbeat: Value = client(&server.addr, &tls)
        .call("POST", "/heartbeat", None::<&()>)
        .expect("a heartbeat during the poll");
    let poll = poller.join().expect("poller").expect("the poll");
    assert_ne!(conn_of(&heartbeat), conn_of(&poll));
    assert_eq!(server.accepted(), 2);
    let key = keepalive::Key::new(&server.addr, &tls, &pki::tls::manager_server_name());
    assert_eq!(super::KEPT.idle(&key), 2, "both kept");
    for _ in 0..3 {
        let _: Value = client(&server.addr, &tls)
            .call("GET", "/a", None::<&()>)
            .expect("a call");
    }
    assert_eq!(server.accepted(), 2);
}

#[test]
fn a_connection_the_server_closed_while_idle_is_not_used() {
    let ca = Ca::create(SystemTime::now()).expect("CA");
    // Every connection closes right after its first answer, without saying so in the
    // answer: an idle timeout, a restart, a removed node's connections closed.
    let server = Server::start(&ca, |r| Reply::SendThenClose(answer(r)));
    let tls = tls(&ca, "w1");
    let c = client(&server.addr, &tls);
    let first: Value = c.call("POST", "/a", None::<&()>).expect("first call");
    std::thread::sleep(Duration::from_millis(100));
    // A POST from a client not marked idempotent: answered, so it was never sent on
    // the closed connection.
    let second: Value = c.call("POST", "/b", None::<&()>).expect("second call");
    assert_eq!((conn_of(&first), conn_of(&second)), (1, 2));
    assert_eq!(server.accepted(), 2);
    assert_eq!(server.seen(), ["POST /a", "POST /b"]);
}

#[test]
fn a_request_cut_off_by_the_connection_closing_is_sent_again_only_if_safe() {
    let ca = Ca::create(SystemTime::now()).expect("CA");
    // Each connection takes its second request and closes without answering: the
    // close races with the request, which `still_open` cannot see coming.
    let server = Server::start(&ca, |r| {
        if r.nth == 2 {
            Reply::Close
        } else {
            Reply::Send(answer(r))
        }
    });
    let tls = tls(&ca, "w1");
    let plain = client(&server.addr, &tls);
    let marked = client(&server.addr, &tls).idempotent();

    let _: Value = plain.call("GET", "/a", None::<&()>).expect("first call");
    // A GET is sent again on a fresh connection.
    let b: Value = plain.call("GET", "/b", None::<&()>).expect("sent again");
    assert_eq!(conn_of(&b), 2);
    // A POST is not: the server may have done it.
    let e = plain
        .call::<Value>("POST", "/c", None::<&()>)
        .expect_err("a POST cut off");
    assert!(
        format!("{e:#}").contains("closed the connection before answering POST /c"),
        "{e:#}"
    );
    assert_eq!(server.accepted(), 2, "and not sent again");
    // Unless the caller said it is safe (a heartbeat, a status batch).
    let _: Value = marked.call("POST", "/d", None::<&()>).expect("fresh");
    let e: Value = marked.call("POST", "/e", None::<&()>).expect("sent again");
    assert_eq!(conn_of(&e), 4);
    assert_eq!(
        server.seen(),
        ["GET /a", "GET /b", "GET /b", "POST /c", "POST /d", "POST /e", "POST /e"]
    );
}

#[test]
fn a_connection_is_not_reused_unless_its_answer_left_it_clean() {
    let ca = Ca::create(SystemTime::now()).expect("CA");
    // The server keeps every connection open and would answer again on it: only the
    // client's rules keep it from doing so.
    let server = Server::start(&ca, |r| match r.path.as_str() {
        "/close" => Reply::Send(answer_with(r, "Connection: close\r\n")),
        "/http10" => Reply::Send(
            String::from_utf8(answer(r))
                .expect("text")
                .replacen("HTTP/1.1", "HTTP/1.0", 1)
                .into_bytes(),
        ),
        // An answer followed by bytes nobody asked for, in the same TLS record: they
        // must never be read as the next request's answer.
        "/extra" => {
            let mut bytes = answer(r);
            bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n\"smuggled\"");
            Reply::Send(bytes)
        }
        // Fewer bytes than announced: the read times out with the body unread.
        "/short" => {
            Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"conn\":".to_vec())
        }
        _ => Reply::Send(answer(r)),
    });
    let tls = tls(&ca, "w1");
    let c = client(&server.addr, &tls);
    let mut expected = 0;
    for path in ["/close", "/http10", "/extra", "/short"] {
        let first = client(&server.addr, &tls)
            .with_timeout(Duration::from_millis(300))
            .call::<Value>("GET", path, None::<&()>);
        expected += 1;
        if path == "/short" {
            assert!(first.is_err(), "a cut-off body is an error");
        } else {
            assert_eq!(conn_of(&first.expect(path)), expected as u64);
        }
        let next: Value = c.call("GET", "/next", None::<&()>).expect("the next call");
        expected += 1;
        assert_eq!(conn_of(&next), expected as u64, "after {path}");
        assert_eq!(next["path"], "/next", "after {path}");
        // Reuses the connection `/next` left clean, and leaves nothing kept for the
        // next round's first call to find.
        let close: Value = c.call("GET", "/close", None::<&()>).expect("close");
        assert_eq!(conn_of(&close), expected as u64, "after {path}");
        assert_eq!(server.accepted(), expected, "after {path}");
    }
}

#[test]
fn a_streamed_answer_never_leaves_its_connection_behind() {
    let ca = Ca::create(SystemTime::now()).expect("CA");
    let server = Server::start(&ca, |r| {
        Reply::Send(
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n{}",
                // Never read: the connection is not the client's to reuse.
                String::from_utf8(answer(r)).expect("text")
            )
            .into_bytes(),
        )
    });
    let tls = tls(&ca, "w1");
    let c = client(&server.addr, &tls);
    let mut streamed = c.request("GET", "/logs", None).expect("a stream");
    let mut text = String::new();
    streamed.body.read_to_string(&mut text).expect("read whole");
    assert_eq!(text, "hi");
    drop(streamed);
    let key = keepalive::Key::new(&server.addr, &tls, &pki::tls::manager_server_name());
    assert_eq!(super::KEPT.idle(&key), 0);
    let (status, _) = c.fetch("GET", "/logs", None).expect("fetched");
    assert_eq!(status, 200);
    assert_eq!(server.accepted(), 2);
}

#[test]
fn connections_are_never_shared_between_tls_settings() {
    let ca = Ca::create(SystemTime::now()).expect("CA");
    let server = Server::start(&ca, |r| Reply::Send(answer(r)));
    let (w1, w2) = (tls(&ca, "w1"), tls(&ca, "w2"));
    let who = |config: &Arc<rustls::ClientConfig>| {
        let answer: Value = client(&server.addr, config)
            .call("GET", "/whoami", None::<&()>)
            .expect("a call");
        (
            answer["peer"].as_str().unwrap_or_default().to_string(),
            conn_of(&answer),
        )
    };
    assert_eq!(who(&w1), ("w1".to_string(), 1));
    assert_eq!(who(&w2), ("w2".to_string(), 2));
    assert_eq!(who(&w1), ("w1".to_string(), 1));
    assert_eq!(who(&w2), ("w2".to_string(), 2));
    // The same identity in other settings (a renewed certificate, say) gets its own.
    let w1_again = tls(&ca, "w1");
    assert_eq!(who(&w1_again), ("w1".to_string(), 3));
    // And another server name at the same address (the manager's node id, which its
    // certificate also carries), its own too.
    let named = Client::tls(
        &server.addr,
        w1.clone(),
        pki::tls::node_server_name(&NodeId::new("m1").expect("id")),
    );
    let answer: Value = named
        .call("GET", "/whoami", None::<&()>)
        .expect("the manager by its id");
    assert_eq!(conn_of(&answer), 4);
    assert_eq!(who(&w1), ("w1".to_string(), 1));
    assert_eq!(server.accepted(), 4);
}

/// The real cluster port with two dispatcher routes, as a manager serves them.
struct Port {
    port: manager::port::Port,
    addr: String,
    deny: DenyList,
    _rt: tokio::runtime::Runtime,
}

impl Port {
    fn start(ca: &Ca, options: manager::port::PortOptions) -> Port {
        use axum::routing::{get, post};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let deny = DenyList::new();
        let config = manager::port::server_config(&creds(ca, "m1", Role::Manager), &deny)
            .expect("server TLS settings");
        let routes = axum::Router::new()
            .route(
                "/v1/dispatcher/heartbeat",
                post(|| async { axum::Json(json!({"ok": true})) }),
            )
            .route(
                "/v1/dispatcher/assignments",
                get(|| async { axum::http::StatusCode::NO_CONTENT }),
            );
        let (port, addr) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let port = manager::port::spawn_with(
                listener,
                config,
                manager::port::RaftSink::new(),
                routes,
                options,
            );
            (port, addr)
        });
        Port {
            port,
            addr,
            deny,
            _rt: rt,
        }
    }

    /// The ids of the open connections.
    fn connections(&self) -> Vec<u64> {
        self.port.connections().iter().map(|c| c.id).collect()
    }
}

#[test]
fn the_cluster_port_serves_a_node_on_one_connection_until_it_is_removed() {
    let ca = Ca::create(SystemTime::now()).expect("CA");
    let port = Port::start(&ca, manager::port::PortOptions::default());
    let tls = tls(&ca, "w1");
    let node = || client(&port.addr, &tls).idempotent();
    let heartbeat = || node().call::<Value>("POST", "/v1/dispatcher/heartbeat", None::<&()>);

    heartbeat().expect("a heartbeat");
    let open = port.connections();
    assert_eq!(open.len(), 1);
    for _ in 0..3 {
        assert_eq!(
            node()
                .fetch("GET", "/v1/dispatcher/assignments?wait_ms=0", None)
                .expect("a poll")
                .0,
            204
        );
        heartbeat().expect("a heartbeat");
    }
    assert_eq!(port.connections(), open, "the same connection all along");

    // Removed: the port closes its connection, and the next call says why it fails.
    port.deny.deny(NodeId::new("w1").expect("id"));
    assert_eq!(port.port.close_denied(&port.deny), 1);
    let e = heartbeat().expect_err("a removed node");
    assert!(
        format!("{e:#}").contains("the node was removed from the cluster"),
        "{e:#}"
    );
}

#[test]
fn the_cluster_port_closing_an_idle_connection_costs_no_call() {
    let ca = Ca::create(SystemTime::now()).expect("CA");
    let port = Port::start(
        &ca,
        manager::port::PortOptions {
            header_timeout: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let tls = tls(&ca, "w1");
    let node = client(&port.addr, &tls).idempotent();
    node.call::<Value>("POST", "/v1/dispatcher/heartbeat", None::<&()>)
        .expect("a heartbeat");
    let first = port.connections();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        port.connections().is_empty(),
        "closed by the port's idle timeout"
    );
    node.call::<Value>("POST", "/v1/dispatcher/heartbeat", None::<&()>)
        .expect("a heartbeat on a fresh connection");
    let second = port.connections();
    assert_eq!(second.len(), 1);
    assert!(second[0] > first[0]);
}

//! A published port of a replicated service, end to end: the real binary, a real
//! daemon, busybox containers, nftables, as root. The replicas share the host port
//! (connections spread over them), only healthy ones get connections and DNS answers,
//! and a replica being stopped leaves before its stop signal, so a client sees no
//! failure while it goes.
//!
//! The fixture is `tests/stack_cli.rs`'s (`tests/stack/fixture.rs`), whose `Drop`
//! removes everything a test left, even when it fails.

#[path = "stack/fixture.rs"]
mod fixture;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fixture::{wait_for, Fixture};

/// The `busybox:local` image, `compose` as the project's file, and a daemon.
fn fixture(tag: &str, compose: &str) -> Fixture {
    let mut f = Fixture::new(tag, compose);
    f.start_daemon();
    f
}

fn free_port() -> u16 {
    // Dual-stack: free on IPv4 and IPv6, as a published port needs.
    std::net::TcpListener::bind("[::]:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` on `addr`: the body (trimmed), or why it failed.
fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    // busybox httpd ends its own headers with CRLF, a CGI script's with LF.
    let text = text.replace("\r\n", "\n");
    match text.split_once("\n\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.trim().to_string())
        }
        _ => Err(format!("bad answer: {text:?}")),
    }
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// `n` requests for `/`: the bodies (each replica answers with its hostname).
fn bodies(addr: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| get(addr, "/").unwrap_or_else(|e| panic!("request {i} to {addr}: {e}")))
        .collect()
}

fn distinct(v: &[String]) -> std::collections::BTreeSet<&str> {
    v.iter().map(String::as_str).collect()
}

/// A web server answering `/` with its hostname; it stops at once on SIGTERM.
const WEB: &str = r#"
    command:
      - sh
      - -c
      - |
        trap 'exit 0' TERM
        mkdir -p /www
        hostname > /www/index.html
        httpd -f -p 80 -h /www &
        wait
"#;

const CLIENT: &str = r#"
  client:
    image: busybox:local
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]
"#;

#[test]
fn replicas_share_a_published_port_and_another_service_cannot_take_it() {
    let port = free_port();
    let compose = format!(
        "services:\n  web:\n    image: busybox:local\n{WEB}    deploy: {{replicas: 3}}\n    ports: [\"{port}:80\"]\n"
    );
    let f = fixture("shared", &compose);
    // Three containers publishing one host port: `up` succeeds.
    f.ok(&["up", "-d", "--wait", "--wait-timeout", "30"]);
    let names = f.running();
    assert_eq!(names.len(), 3, "{names:?}");
    // Running is not listening yet (there is no healthcheck to say so): each
    // replica's httpd starts a moment after its shell.
    wait_for(
        || (0..6).all(|_| get(v4(port), "/").is_ok()),
        "every replica to listen",
    );
    // Connections are spread over all three, on IPv4 (DNAT) and IPv6 (the relay).
    let got = bodies(v4(port), 30);
    let want: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(distinct(&got), want, "{got:?}");
    let got6 = bodies(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port), 9);
    assert_eq!(distinct(&got6), want, "{got6:?}");
    let ports = f.ok(&["ps"]);
    assert_eq!(
        ports.matches(&format!("0.0.0.0:{port}->80/tcp")).count(),
        3,
        "{ports}"
    );

    // Another stack's service on the same port is refused, naming both. (Two
    // services of one file on one port never get here: the loader refuses them.)
    let other = format!("{}-b", f.project);
    let file = f.dir().join("other.yaml");
    std::fs::write(
        &file,
        format!("name: {other}\nservices:\n  api:\n    image: busybox:local\n{WEB}    ports: [\"{port}:80\"]\n"),
    )
    .expect("write other.yaml");
    let file = file.to_str().expect("utf-8");
    let out = f.berth(&["-f", file, "up", "-d", "--wait", "--wait-timeout", "20"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service api")
            && err.contains(&format!("{port}/tcp"))
            && err.contains(&format!("in use by service web of stack {}", f.project)),
        "{err}"
    );
    f.ok(&["-f", file, "down", "-t", "1"]);
    // The replicas still serve it, all three.
    assert_eq!(distinct(&bodies(v4(port), 12)), want);
    f.ok(&["down", "-t", "1"]);
    // The last replica's going released the port.
    std::net::TcpListener::bind(("0.0.0.0", port)).expect("the port is free after down");
}

#[test]
fn only_healthy_replicas_get_connections_and_dns_answers() {
    let port = free_port();
    // Healthy while /tmp/ok exists: replica 1 makes it, replica 2 does not.
    let compose = format!(
        r#"services:
  web:
    image: busybox:local
    command:
      - sh
      - -c
      - |
        trap 'exit 0' TERM
        mkdir -p /www
        hostname > /www/index.html
        case "$$(hostname)" in *-1) touch /tmp/ok;; esac
        httpd -f -p 80 -h /www &
        wait
    deploy: {{replicas: 2}}
    ports: ["{port}:80"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ok"]
      interval: 200ms
      retries: 1
{CLIENT}"#
    );
    let f = fixture("gated", &compose);
    f.ok(&["up", "-d"]);
    let (one, two) = (
        format!("{}-web-1", f.project),
        format!("{}-web-2", f.project),
    );
    wait_for(|| get(v4(port), "/").is_ok(), "replica 1 to be healthy");
    // Replica 2 runs and listens, yet never gets a connection nor a DNS answer.
    let got = bodies(v4(port), 20);
    assert!(got.iter().all(|b| *b == one), "{got:?}");
    wait_for(|| !f.resolve("web").is_empty(), "the client to resolve web");
    let ips = f.resolve("web");
    assert_eq!(ips.len(), 1, "web resolves to replica 1 only: {ips:?}");
    // Its own container name still resolves: it names that one container.
    assert_eq!(f.resolve(&two).len(), 1);
    wait_for(
        || f.ok(&["ps"]).contains("(unhealthy)"),
        "ps to show replica 2 unhealthy",
    );

    // Healthy now: it joins the port's backends and the service's answers.
    f.ok(&["exec", "-T", "--index", "2", "web", "touch", "/tmp/ok"]);
    wait_for(
        || bodies(v4(port), 4).contains(&two),
        "replica 2 to get connections once healthy",
    );
    wait_for(|| f.resolve("web").len() == 2, "web to resolve to both");
    let got = bodies(v4(port), 10);
    assert_eq!(distinct(&got).len(), 2, "{got:?}");

    // Unhealthy again: replica 1 leaves them until it recovers.
    f.ok(&["exec", "-T", "--index", "1", "web", "rm", "/tmp/ok"]);
    wait_for(
        || bodies(v4(port), 6).iter().all(|b| *b == two),
        "replica 1 to get no connections once unhealthy",
    );
    assert_eq!(f.resolve("web").len(), 1);
    f.ok(&["down", "-t", "1"]);
}

#[test]
fn a_replica_being_removed_gets_no_new_connection_and_no_request_fails() {
    let port = free_port();
    // On SIGTERM a replica keeps serving for 3 s (its grace period is 10 s), but
    // answers `draining` from then on: a request that reaches it after its stop
    // signal shows. /cgi-bin/slow answers after 2 s, to hold a connection across it.
    let compose = format!(
        r#"services:
  web:
    image: busybox:local
    command:
      - sh
      - -c
      - |
        trap 'echo draining > /www/index.html; sleep 3; exit 0' TERM
        mkdir -p /www/cgi-bin
        hostname > /www/index.html
        echo '#!/bin/sh' > /www/cgi-bin/slow
        echo 'echo Content-Type: text/plain; echo; sleep 2; hostname' >> /www/cgi-bin/slow
        chmod +x /www/cgi-bin/slow
        httpd -f -p 80 -h /www &
        wait
    deploy: {{replicas: 3}}
    stop_grace_period: 10s
    ports: ["{port}:80"]
"#
    );
    let f = fixture("drain", &compose);
    f.ok(&["up", "-d", "--wait", "--wait-timeout", "30"]);
    let before = f.running();
    assert_eq!(before.len(), 3, "{before:?}");
    wait_for(
        || (0..6).all(|_| get(v4(port), "/").is_ok()),
        "every replica to listen",
    );
    // Three slow requests in a row: one on each replica (connections go in turn).
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let t = std::thread::spawn(move || get(v4(port), "/cgi-bin/slow"));
            std::thread::sleep(Duration::from_millis(50));
            t
        })
        .collect();
    // A client requesting in a loop all along.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(get(v4(port), "/"));
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    f.ok(&["up", "-d", "--scale", "web=2"]);
    wait_for(|| f.running().len() == 2, "one replica to be removed");
    let after = f.running();
    let gone = before
        .iter()
        .find(|n| !after.contains(n))
        .expect("a replica went")
        .clone();
    // `ps` drops it as soon as it is to be removed; it ends 3 s after its signal,
    // and its container (`<state>/run/containers/<name>.<generation>`) is deleted
    // then. The client goes on until that is over.
    let exists = || {
        std::fs::read_dir(f.state().join("run/containers"))
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{gone}."))
                })
            })
            .unwrap_or(false)
    };
    assert!(exists(), "{gone} is still stopping");
    let signalled = Instant::now();
    wait_for(
        || !exists(),
        "the removed replica's container to be deleted",
    );
    assert!(
        signalled.elapsed() > Duration::from_secs(2),
        "{gone} was gone after {:?}: it did not keep serving after its signal",
        signalled.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = client.join().expect("the client loop");
    let failed: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(seen.len() > 20, "only {} requests", seen.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    // The removed replica got its stop signal only after leaving the port.
    let bodies: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(
        !bodies.iter().any(|b| b.as_str() == "draining"),
        "a request reached {gone} after its stop signal"
    );
    // The connection it had when it left was served to the end (conntrack kept it).
    let slow: Vec<String> = slow
        .into_iter()
        .map(|t| {
            t.join()
                .expect("slow request")
                .expect("slow request answered")
        })
        .collect();
    assert_eq!(
        distinct(&slow),
        before.iter().map(String::as_str).collect(),
        "{slow:?}"
    );
    f.ok(&["down", "-t", "1"]);
}

#[test]
fn a_start_first_update_loses_no_request_on_the_port_or_the_service_name() {
    let port = free_port();
    // Each replica answers `<version> <hostname>`; healthy once its httpd answers; on
    // SIGTERM it finishes what it serves for a second (a graceful shutdown).
    let file = |version: &str| {
        format!(
            r#"services:
  web:
    image: busybox:local
    environment: {{VERSION: "{version}"}}
    command:
      - sh
      - -c
      - |
        trap 'sleep 1; exit 0' TERM
        mkdir -p /www
        echo "$$VERSION $$(hostname)" > /www/index.html
        httpd -f -p 80 -h /www &
        wait
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
      interval: 1s
      start_period: 10s
      start_interval: 100ms
    stop_grace_period: 5s
    ports: ["{port}:80"]
    deploy:
      replicas: 3
      update_config: {{parallelism: 1, order: start-first, monitor: 500ms}}
{CLIENT}"#
        )
    };
    let f = fixture("zerodown", &file("v1"));
    f.ok(&["up", "-d", "--wait", "--wait-timeout", "30"]);
    wait_for(
        || (0..6).all(|_| get(v4(port), "/").is_ok()),
        "every replica to answer",
    );
    // A client on the host, on the published port...
    let stop = Arc::new(AtomicBool::new(false));
    let host_loop = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(get(v4(port), "/"));
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    // ...and one in another container, by service name (resolved on every request;
    // no -T: busybox 1.35 wget crashes with it).
    let by_name = {
        let mut cmd = f.command(&[
            "exec",
            "-T",
            "client",
            "sh",
            "-c",
            "while [ ! -f /tmp/stop ]; do wget -q -O - http://web/ 2>&1 || echo FAILED; done",
        ]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().expect("the client loop")
    };
    std::thread::sleep(Duration::from_millis(500));
    f.write_compose(&file("v2"));
    let out = f.berth(&["up", "-d", "--wait", "--wait-timeout", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    f.ok(&["exec", "-T", "client", "touch", "/tmp/stop"]);
    let inside = by_name.wait_with_output().expect("the client loop");
    let seen = host_loop.join().expect("the host loop");

    let failed: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(seen.len() > 50, "only {} requests", seen.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    let bodies: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(bodies.iter().any(|b| b.starts_with("v1 ")), "{bodies:?}");
    assert!(
        bodies.iter().rev().take(10).all(|b| b.starts_with("v2 ")),
        "{bodies:?}"
    );
    let text = String::from_utf8_lossy(&inside.stdout);
    let answers = text.lines().filter(|l| l.starts_with('v')).count();
    assert!(answers > 20, "only {answers} answers by name: {text}");
    assert!(
        !text.contains("FAILED"),
        "a request by name failed:\n{text}"
    );
    assert!(text.contains("v1 ") && text.contains("v2 "), "{text}");
    // Every replica runs the new version, and the update says so.
    assert!(f.ok(&["ps"]).contains("service web: update completed"));
    f.ok(&["down", "-t", "1"]);
}

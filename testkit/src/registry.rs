//! A real OCI distribution registry for tests: Debian's `docker-registry`, started on
//! a free loopback port with its storage in a temporary directory, optionally behind
//! htpasswd basic authentication or bearer tokens from a [`TokenServer`], and stopped
//! when the handle is dropped. [`Proxy`] sits in front of one to count and hold requests.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::tokenserver::{self, TokenServer};

const BINARY: &str = "/usr/bin/docker-registry";

/// A running registry; dropping it stops the process and removes its storage.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`, the registry's host part in image references.
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Registry {
    /// A registry that anyone may pull from and push to.
    pub fn start() -> io::Result<Registry> {
        Registry::launch(Auth::None)
    }

    /// A registry that demands `user`/`password` (basic authentication).
    pub fn start_with_basic_auth(user: &str, password: &str) -> io::Result<Registry> {
        Registry::launch(Auth::Basic(user, password))
    }

    /// A registry that accepts only bearer tokens signed by `tokens` (the registry's
    /// `auth: token:` configuration: realm, service, issuer, rootcertbundle).
    pub fn start_with_token_auth(tokens: &TokenServer) -> io::Result<Registry> {
        Registry::launch(Auth::Token(tokens))
    }

    fn launch(auth: Auth<'_>) -> io::Result<Registry> {
        if !Path::new(BINARY).is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "docker-registry not found: apt-get install -y docker-registry (.ci/run does)",
            ));
        }
        let dir = tempfile::tempdir()?;
        let mut last_error = None;
        // The port is picked free, then handed over; another process can take it in
        // between, so a failed start is retried on a new port.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = format!("127.0.0.1:{port}");
            let mut config = format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            );
            match auth {
                Auth::None => {}
                Auth::Basic(user, password) => {
                    let hash = bcrypt::hash(password, 4).map_err(io::Error::other)?;
                    std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))?;
                    config.push_str(&format!(
                        "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                        dir.path().join("htpasswd").display()
                    ));
                }
                Auth::Token(tokens) => {
                    let bundle = dir.path().join("token-ca.pem");
                    std::fs::write(&bundle, tokens.cert_pem())?;
                    config.push_str(&format!(
                        "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                        tokens.realm(),
                        tokenserver::SERVICE,
                        tokenserver::ISSUER,
                        bundle.display()
                    ));
                }
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config)?;
            let mut child = Command::new(BINARY)
                .arg("serve")
                .arg(&config_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            // Wait for it to listen: this is a readiness wait, not a speed check.
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if TcpStream::connect(&addr).is_ok() {
                    return Ok(Registry { addr, child, dir });
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = Some(io::Error::other(format!(
                        "docker-registry exited: {status}"
                    )));
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("docker-registry did not start")))
    }

    /// Pushes image `tag` of the OCI layout at `layout` to `<addr>/<repo_tag>` with skopeo.
    pub fn push_layout(
        &self,
        layout: &Path,
        tag: &str,
        repo_tag: &str,
        creds: Option<(&str, &str)>,
    ) -> io::Result<()> {
        self.skopeo_copy(layout, tag, repo_tag, creds, false)
    }

    /// [`Registry::push_layout`] of an image index with every image it lists
    /// (`skopeo copy --all`), for multi-platform images.
    pub fn push_layout_all(&self, layout: &Path, tag: &str, repo_tag: &str) -> io::Result<()> {
        self.skopeo_copy(layout, tag, repo_tag, None, true)
    }

    fn skopeo_copy(
        &self,
        layout: &Path,
        tag: &str,
        repo_tag: &str,
        creds: Option<(&str, &str)>,
        all: bool,
    ) -> io::Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        if let Some((user, password)) = creds {
            cmd.arg(format!("--dest-creds={user}:{password}"));
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "skopeo copy failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// The registry's storage directory (to count what was stored).
    pub fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Token(&'a TokenServer),
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on a free loopback port in front of a registry, for pulls: it records
/// each request line (`GET /v2/...`) and can hold requests whose target contains a
/// pattern until the test releases them, which makes interleavings deterministic.
/// Requests are read head by head (bodies with `Content-Length` are passed through;
/// chunked uploads are not understood, so push through the registry itself).
#[derive(Debug)]
pub struct Proxy {
    /// `127.0.0.1:PORT`: use it as the registry host in references.
    pub addr: String,
    shared: Arc<ProxyShared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct ProxyShared {
    state: Mutex<ProxyState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ProxyState {
    requests: Vec<String>,
    hold: Option<String>,
    held: usize,
}

impl Proxy {
    pub fn start(upstream: &str) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(ProxyShared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop, upstream) = (shared.clone(), stop.clone(), upstream.to_string());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let (shared, upstream) = (shared.clone(), upstream.clone());
                        std::thread::spawn(move || {
                            let _ = relay(&shared, conn, &upstream);
                        });
                    }
                }
            })
        };
        Ok(Proxy {
            addr,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Every request line seen so far, in order (`GET /v2/x/blobs/sha256:...`).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// How many `method` requests had a target containing `pattern`.
    pub fn count(&self, method: &str, pattern: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| {
                r.split_once(' ')
                    .is_some_and(|(m, t)| m == method && t.contains(pattern))
            })
            .count()
    }

    /// From now on, requests whose target contains `pattern` wait until [`Proxy::release`].
    pub fn hold(&self, pattern: &str) {
        self.lock().hold = Some(pattern.to_string());
    }

    /// Waits (up to `timeout`) until a request is being held; false on timeout.
    pub fn wait_held(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.held == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match self.shared.changed.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Lets held requests (and later ones) through.
    pub fn release(&self) {
        self.lock().hold = None;
        self.shared.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.release();
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies one client connection to the upstream and back, request head by head.
fn relay(shared: &ProxyShared, mut client: TcpStream, upstream: &str) -> io::Result<()> {
    use std::io::{Read, Write};
    let mut server = TcpStream::connect(upstream)?;
    let back = {
        let (mut from, mut to) = (server.try_clone()?, client.try_clone()?);
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = client.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let body_len: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + body_len {
                break;
            }
            let line = head.lines().next().unwrap_or("").to_string();
            let target = line.split(' ').nth(1).unwrap_or("").to_string();
            {
                let mut state = shared
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state.requests.push(
                    line.rsplit_once(' ')
                        .map(|(r, _)| r)
                        .unwrap_or(&line)
                        .to_string(),
                );
                let mut counted = false;
                while state.hold.as_deref().is_some_and(|p| target.contains(p)) {
                    if !counted {
                        state.held += 1;
                        counted = true;
                        shared.changed.notify_all();
                    }
                    state = shared
                        .changed
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
            server.write_all(&buf[..end + 4 + body_len])?;
            buf.drain(..end + 4 + body_len);
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
    Ok(())
}

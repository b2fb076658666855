//! A bearer-token server for tests, the "authorization service" of the Docker registry
//! token protocol: a thread serving `GET /token?service=..&scope=..` on a free loopback
//! port. It checks the request's basic credentials and answers with a JWT signed ES256
//! by a self-signed certificate, which the registry trusts through its
//! `rootcertbundle` ([`crate::registry::Registry::start_with_token_auth`]).
//!
//! What docker/distribution (2.8, Debian's `docker-registry`) checks in a token, and so
//! what this server writes: `iss` equal to the registry's configured issuer, `aud` equal
//! to its service, `exp`/`nbf` around now, an `x5c` header whose first certificate
//! verifies against the root bundle (here: is in it), an ES256 signature in the JOSE
//! form (r || s, 64 bytes) by that certificate's key, and an `access` claim granting
//! the repository and action the request needs.
//!
//! Access control is a table of (user, repository) grants: a user gets the actions it
//! asks for on a granted repository and nothing on any other (an empty `access`, as
//! Docker Hub's token server does), so the registry, not this server, refuses the pull.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The `service` the registry names in its challenge and expects as the token audience.
pub const SERVICE: &str = "berth-test-registry";
/// The `iss` the registry trusts.
pub const ISSUER: &str = "berth-test-token-issuer";

/// A running token server; dropping it stops the thread.
#[derive(Debug)]
pub struct TokenServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    cert_der: Vec<u8>,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct State {
    key: EcdsaKeyPair,
    x5c: String,
    users: BTreeMap<String, String>,
    grants: Vec<(String, String)>,
    log: Mutex<Vec<String>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("grants", &self.grants)
            .finish()
    }
}

impl TokenServer {
    /// `users` are (name, password); `grants` are (user, repository) pairs the user may
    /// pull from and push to.
    pub fn start(users: &[(&str, &str)], grants: &[(&str, &str)]) -> io::Result<TokenServer> {
        let key_pair = rcgen::KeyPair::generate().map_err(io::Error::other)?;
        let mut params = rcgen::CertificateParams::new(vec!["token-server".to_string()])
            .map_err(io::Error::other)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key_pair).map_err(io::Error::other)?;
        let cert_der = cert.der().to_vec();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| io::Error::other(format!("loading the signing key: {e}")))?;
        let state = Arc::new(State {
            key,
            x5c: STANDARD.encode(&cert_der),
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            grants: grants
                .iter()
                .map(|(u, r)| (u.to_string(), r.to_string()))
                .collect(),
            log: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let state = state.clone();
                        std::thread::spawn(move || {
                            let _ = serve(&state, conn);
                        });
                    }
                }
            })
        };
        Ok(TokenServer {
            addr,
            cert_der,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// The URL the registry sends clients to (its challenge's `realm`).
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The signing certificate as PEM, for the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> String {
        let body = STANDARD.encode(&self.cert_der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// Every request answered so far, as `USER SCOPE -> GRANTED` (or `-> 401`).
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head; the token endpoint takes no body.
fn read_head(conn: &mut TcpStream) -> io::Result<String> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() > 64 * 1024 {
            return Err(io::Error::other("incomplete request"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn serve(state: &State, mut conn: TcpStream) -> io::Result<()> {
    let head = read_head(&mut conn)?;
    let (status, body) = answer(state, &head);
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn answer(state: &State, head: &str) -> (&'static str, String) {
    let mut lines = head.split("\r\n");
    let target = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/token" {
        return ("404 Not Found", r#"{"error":"not found"}"#.to_string());
    }
    let credentials = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, v)| v.trim().strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let scopes: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .collect();
    let user = match credentials {
        Some((user, password)) if state.users.get(&user) == Some(&password) => user,
        other => {
            let who = other.map(|(u, _)| u).unwrap_or_else(|| "-".to_string());
            log(state, format!("{who} {} -> 401", scopes.join(" ")));
            return (
                "401 Unauthorized",
                r#"{"details":"invalid user name or password"}"#.to_string(),
            );
        }
    };
    let mut access = Vec::new();
    let mut granted = Vec::new();
    for scope in &scopes {
        // type:name:actions; a name holds no ':' in this test setup but may hold '/'.
        let Some((kind, rest)) = scope.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        let allowed =
            kind == "repository" && state.grants.iter().any(|(u, r)| *u == user && r == name);
        if allowed {
            let actions: Vec<&str> = actions
                .split(',')
                .filter(|a| matches!(*a, "pull" | "push"))
                .collect();
            granted.push(format!("{name}:{}", actions.join(",")));
            access.push(serde_json::json!({"type": kind, "name": name, "actions": actions}));
        }
    }
    log(
        state,
        format!("{user} {} -> [{}]", scopes.join(" "), granted.join(" ")),
    );
    match sign(state, &user, access) {
        Ok(token) => (
            "200 OK",
            serde_json::json!({"token": token, "access_token": token, "expires_in": 300})
                .to_string(),
        ),
        Err(e) => ("500 Internal Server Error", format!(r#"{{"error":"{e}"}}"#)),
    }
}

fn log(state: &State, line: String) {
    if let Ok(mut l) = state.log.lock() {
        l.push(line);
    }
}

/// A compact JWS (ES256) of the registry's claim set.
fn sign(state: &State, user: &str, access: Vec<serde_json::Value>) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [state.x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user,
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = state
        .key
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|e| format!("signing: {e}"))?;
    Ok(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    ))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A GET over plain HTTP/1.1 (for tests that talk to the registry or this server by
/// hand): the status code and the body.
pub fn http_get(addr: &str, target: &str, headers: &[(&str, &str)]) -> io::Result<(u16, String)> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {text:.80}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `user:password` as a basic `Authorization` header value.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("repository%3Aprivate%2Fbusybox%3Apull"),
            "repository:private/busybox:pull"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }
}

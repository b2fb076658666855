//! `gitops::remote::sync` over HTTPS with a token, against `git http-backend` behind a
//! small TLS server in this process. A test binary of its own: it points the process's
//! trust store at a test CA (`SSL_CERT_FILE`, read by rustls-native-certs under
//! reqwest), which no other test should see.

// Test helpers may unwrap: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use gitops::remote::{sync, Auth, Remote, RemoteError};

mod common;

use common::{read, Fixture};

/// Makes a CA and a certificate for 127.0.0.1 signed by it, writes the CA to `ca_pem`
/// and makes it the only root this process trusts; returns the server's TLS config.
fn trust_a_test_ca(ca_pem: &Path) -> Arc<rustls::ServerConfig> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    fs::write(ca_pem, ca.pem()).unwrap();
    // SAFETY of the env change: this binary's only test calls this before it starts a
    // thread, so nothing reads the environment concurrently.
    std::env::set_var("SSL_CERT_FILE", ca_pem);

    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params
        .signed_by(&key, &Issuer::new(ca_params, &ca_key))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Arc::new(config)
}

/// A git server over HTTPS on loopback: `git http-backend` behind a minimal HTTP/1.1
/// front that demands basic auth with `user:token`, with a certificate from `tls`. It
/// answers connections until the test process ends.
fn serve_git_over_https(
    project_root: PathBuf,
    tls: Arc<rustls::ServerConfig>,
    user: &str,
    token: &str,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected = format!("Basic {}", base64(format!("{user}:{token}").as_bytes()));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let connection = rustls::ServerConnection::new(tls.clone()).unwrap();
            let mut reader = BufReader::new(rustls::StreamOwned::new(connection, stream));
            let mut request_line = String::new();
            // A client that gave up on the handshake is no failure of the server.
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                continue;
            }
            let mut parts = request_line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_owned();
            let target = parts.next().unwrap_or_default().to_owned();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                }
            }
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            let mut body = Vec::new();
            if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size).unwrap();
                    let size = usize::from_str_radix(size.trim(), 16).unwrap();
                    let mut chunk = vec![0; size + 2];
                    reader.read_exact(&mut chunk).unwrap();
                    if size == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..size]);
                }
            } else if let Some(length) = header("content-length") {
                body.resize(length.parse().unwrap(), 0);
                reader.read_exact(&mut body).unwrap();
            }
            let writer = reader.get_mut();
            if header("authorization").as_deref() != Some(expected.as_str()) {
                let _ = writer.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let mut cgi = Command::new("git")
                .arg("http-backend")
                .env("GIT_PROJECT_ROOT", &project_root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("REQUEST_METHOD", &method)
                .env("PATH_INFO", path)
                .env("QUERY_STRING", query)
                .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
                .env("CONTENT_LENGTH", body.len().to_string())
                .env("GIT_PROTOCOL", header("git-protocol").unwrap_or_default())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            cgi.stdin.take().unwrap().write_all(&body).unwrap();
            let out = cgi.wait_with_output().unwrap();
            let split = out
                .stdout
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| (i, 4))
                .or_else(|| {
                    out.stdout
                        .windows(2)
                        .position(|w| w == b"\n\n")
                        .map(|i| (i, 2))
                })
                .unwrap();
            let cgi_headers = String::from_utf8_lossy(&out.stdout[..split.0]).to_string();
            let cgi_body = &out.stdout[split.0 + split.1..];
            let mut status = "200 OK".to_owned();
            let mut response = String::new();
            for line in cgi_headers.lines() {
                match line.strip_prefix("Status:") {
                    Some(s) => status = s.trim().to_owned(),
                    None => response.push_str(&format!("{line}\r\n")),
                }
            }
            let head = format!(
                "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
                cgi_body.len()
            );
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(cgi_body);
            writer.conn.send_close_notify();
            let _ = writer.flush();
        }
    });
    port
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_token_file_authenticates_over_https() {
    let f = Fixture::new();
    let tls = trust_a_test_ca(&f.cache.with_file_name("ca.pem"));
    let head = f.commit(&[("s.yaml", "x\n")], "x");
    f.push("main");
    let port = serve_git_over_https(
        f.origin.parent().unwrap().to_path_buf(),
        tls,
        "x-access-token",
        "tok-0123456789",
    );
    let url = format!("https://127.0.0.1:{port}/origin.git");
    let token = f.cache.with_file_name("token");
    fs::write(&token, "tok-0123456789\n").unwrap();

    let remote = Remote {
        url: url.clone(),
        branch: None,
        auth: Auth::TokenFile(token.clone()),
    };
    let checkout = sync(&remote, &f.cache).unwrap();
    assert_eq!(checkout.commit, head);
    assert_eq!(read(&checkout.dir, "s.yaml"), "x\n");

    // A wrong token is refused, and the message shows neither token.
    fs::write(&token, "wrong-token\n").unwrap();
    let err = sync(&remote, &f.cache).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RemoteError::Fetch { .. }), "{err:?}");
    assert!(
        message.contains(&url) && message.contains("token"),
        "{message}"
    );
    assert!(
        !message.contains("wrong-token") && !message.contains("tok-0123"),
        "{message}"
    );

    // No token at all: refused too, without a prompt.
    let anonymous = Remote {
        url: url.clone(),
        branch: None,
        auth: Auth::None,
    };
    let err = sync(&anonymous, &f.cache).unwrap_err();
    assert!(matches!(err, RemoteError::Fetch { .. }), "{err:?}");
    assert!(err.to_string().contains("needs a token file"), "{err}");
}

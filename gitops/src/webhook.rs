//! Verifying that a webhook request was sent by a forge that knows the shared secret.
//!
//! Pure: the HTTP server hands over the headers and the raw body, and gets back whether
//! to act on the request. Three schemes are understood:
//! - `X-Hub-Signature-256: sha256=<hex>` (GitHub, Gitea, Forgejo): HMAC-SHA256 of the raw
//!   body keyed with the secret;
//! - `X-Gitea-Signature: <hex>` (Gitea, Gogs): the same HMAC, without the prefix;
//! - `X-Gitlab-Token: <secret>` (GitLab): the secret itself.
//!
//! Every one of those headers that is present must verify, and at least one must be
//! present: a forge that sends two (Gitea sends both signatures) cannot be passed by a
//! right one beside a wrong one. Comparisons take the same time whatever the bytes, so
//! timing does not tell an attacker how much of a guess was right.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

const HUB_SIGNATURE: &str = "X-Hub-Signature-256";
const GITEA_SIGNATURE: &str = "X-Gitea-Signature";
const GITLAB_TOKEN: &str = "X-Gitlab-Token";

/// Which header a request was verified by (the first, if it carried several).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    HubSignature256,
    GiteaSignature,
    GitlabToken,
}

/// Why a request was refused. Never holds the secret, nor what the request sent in its
/// place: a refusal may be logged or returned to the sender.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the request has no {HUB_SIGNATURE}, {GITEA_SIGNATURE} or {GITLAB_TOKEN} header; set the webhook's secret in the forge")]
    Missing,
    #[error("the request has {header} more than once")]
    Repeated { header: &'static str },
    #[error("the request's {header} is malformed: {reason}")]
    Malformed {
        header: &'static str,
        reason: &'static str,
    },
    #[error("the request's {header} does not match the configured secret; check that the forge's webhook secret is the one berth has")]
    Mismatch { header: &'static str },
    #[error("the configured webhook secret is empty, and an empty secret authenticates nothing")]
    EmptySecret,
}

/// Checks a webhook request's signature or token against `secret`.
///
/// `headers` are the request's headers as received (names in any case); `body` is the raw
/// body, before any parsing: the signature is over the exact bytes.
pub fn verify(
    headers: &[(String, String)],
    body: &[u8],
    secret: &[u8],
) -> Result<Verified, Refusal> {
    if secret.is_empty() {
        return Err(Refusal::EmptySecret);
    }
    let mut verified = None;
    if let Some(value) = header(headers, HUB_SIGNATURE)? {
        let hex = value.strip_prefix("sha256=").ok_or(Refusal::Malformed {
            header: HUB_SIGNATURE,
            reason: "it does not start with sha256=",
        })?;
        check_hmac(HUB_SIGNATURE, hex, body, secret)?;
        verified.get_or_insert(Verified::HubSignature256);
    }
    if let Some(value) = header(headers, GITEA_SIGNATURE)? {
        check_hmac(GITEA_SIGNATURE, value, body, secret)?;
        verified.get_or_insert(Verified::GiteaSignature);
    }
    if let Some(value) = header(headers, GITLAB_TOKEN)? {
        // Compared as SHA-256 digests, so the time taken does not even tell the length.
        let same: bool = Sha256::digest(value.as_bytes())
            .ct_eq(&Sha256::digest(secret))
            .into();
        if !same {
            return Err(Refusal::Mismatch {
                header: GITLAB_TOKEN,
            });
        }
        verified.get_or_insert(Verified::GitlabToken);
    }
    verified.ok_or(Refusal::Missing)
}

/// The value of header `name`, if the request has it once.
fn header<'a>(
    headers: &'a [(String, String)],
    name: &'static str,
) -> Result<Option<&'a str>, Refusal> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim());
    let first = values.next();
    if values.next().is_some() {
        return Err(Refusal::Repeated { header: name });
    }
    Ok(first)
}

fn check_hmac(header: &'static str, hex: &str, body: &[u8], secret: &[u8]) -> Result<(), Refusal> {
    let malformed = Refusal::Malformed {
        header,
        reason: "the signature is not 64 hex digits",
    };
    let signature = hex::decode(hex).map_err(|_| malformed.clone())?;
    if signature.len() != 32 {
        return Err(malformed);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| Refusal::EmptySecret)?;
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| Refusal::Mismatch { header })
}

/// A webhook secret read from a file.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    bytes: Vec<u8>,
    /// Set when the file is readable by others than its owner: worth a warning in the
    /// log, not a refusal (the operator may have reasons).
    pub warning: Option<String>,
}

impl WebhookSecret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("bytes", &"***")
            .field("warning", &self.warning)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read the webhook secret file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the webhook secret file {} is empty; write the secret the forge signs with into it", path.display())]
    Empty { path: PathBuf },
}

/// Reads a webhook secret from `path`. A trailing line end (an editor's, or `echo`'s) is
/// not part of the secret; anything else is, spaces included, as the forge uses it as typed.
pub fn read_secret(path: &Path) -> Result<WebhookSecret, SecretFileError> {
    let read_err = |source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let mut bytes = fs::read(path).map_err(read_err)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    let warning = (mode & 0o077 != 0).then(|| {
        format!(
            "the webhook secret file {} may be read by others than its owner (mode {mode:o}); chmod 600 it",
            path.display()
        )
    });
    Ok(WebhookSecret { bytes, warning })
}

/// Serves `POST /v1/gitops/hook/{source}` on `listener` until the process ends: a
/// request signed with the source's webhook secret asks for a sync (the leader's
/// controller fetches at once); anything else is refused and changes nothing. Only
/// what is verified is trusted: the body is not read for a branch or a commit, the
/// fetch finds out what changed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: std::sync::Arc<manager::state::store::Store>,
) -> std::io::Result<()> {
    use axum::routing::post;
    let app = axum::Router::new()
        .route("/v1/gitops/hook/{name}", post(hook))
        .with_state(store);
    axum::serve(listener, app).await
}

async fn hook(
    axum::extract::State(store): axum::extract::State<std::sync::Arc<manager::state::store::Store>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    use manager::state::gitops::SourceKind;
    let secret_file = store.read(|s| {
        s.gitops.get(&name).map(|src| match &src.kind {
            SourceKind::Git {
                webhook_secret_file,
                ..
            } => webhook_secret_file.clone(),
            SourceKind::Dir { .. } => None,
        })
    });
    let secret_file = match secret_file {
        None => {
            return (
                StatusCode::NOT_FOUND,
                format!("no git-ops source {name:?}\n"),
            )
        }
        Some(None) => {
            return (
                StatusCode::FORBIDDEN,
                format!(
                "source {name:?} has no webhook secret (berth gitops add --webhook-secret-file)\n"
            ),
            )
        }
        Some(Some(f)) => f,
    };
    let secret = match read_secret(Path::new(&secret_file)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth daemon: git-ops webhook of {name}: {e}");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the webhook secret cannot be read; see the daemon's log\n".to_string(),
            );
        }
    };
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    if let Err(refusal) = verify(&pairs, &body, secret.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, format!("{refusal}\n"));
    }
    let asked = store.update(|s| {
        let Some(src) = s.gitops.get_mut(&name) else {
            return Ok(None);
        };
        src.sync_requested = src.sync_requested.max(src.synced) + 1;
        Ok(Some(src.sync_requested))
    });
    match asked {
        Ok(Some(n)) => (StatusCode::ACCEPTED, format!("{{\"requested\":{n}}}\n")),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("no git-ops source {name:?}\n"),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// HMAC-SHA256 of `body` keyed with `secret`, in hex, computed by OpenSSL: an
    /// implementation independent of the one under test.
    fn openssl_hmac(body: &[u8], secret: &str) -> String {
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-hmac", secret])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("this test needs the openssl program (apt-get install openssl)");
        child.stdin.take().unwrap().write_all(body).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl failed");
        // "SHA2-256(stdin)= <hex>" (older versions: "(stdin)= <hex>")
        let text = String::from_utf8(out.stdout).unwrap();
        text.trim().rsplit("= ").next().unwrap().to_owned()
    }

    #[test]
    fn signatures_computed_by_openssl_verify() {
        let secret = "webhook secret with spaces & symbols";
        let body = br#"{"ref":"refs/heads/main","after":"0123abcd"}"#;
        let hex = openssl_hmac(body, secret);
        assert_eq!(hex.len(), 64, "{hex}");
        let hub = format!("sha256={hex}");
        assert_eq!(
            verify(&headers(&[(HUB_SIGNATURE, &hub)]), body, secret.as_bytes()),
            Ok(Verified::HubSignature256)
        );
        assert_eq!(
            verify(
                &headers(&[(GITEA_SIGNATURE, &hex)]),
                body,
                secret.as_bytes()
            ),
            Ok(Verified::GiteaSignature)
        );
        // One byte more in the body, and the same signature no longer matches.
        let mut longer = body.to_vec();
        longer.push(b'\n');
        assert_eq!(
            verify(
                &headers(&[(HUB_SIGNATURE, &hub)]),
                &longer,
                secret.as_bytes()
            ),
            Err(Refusal::Mismatch {
                header: HUB_SIGNATURE
            })
        );
    }

    #[test]
    fn githubs_documented_example_verifies() {
        // From GitHub's "Validating webhook deliveries".
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify(
                &headers(&[("x-hub-signature-256", sig)]),
                b"Hello, World!",
                b"It's a Secret to Everybody"
            ),
            Ok(Verified::HubSignature256)
        );
    }

    #[test]
    fn refusals() {
        let body = b"{}";
        let secret = b"s3cret";
        let good = openssl_hmac(body, "s3cret");
        let wrong = openssl_hmac(body, "other");
        let cases: Vec<(Vec<(&str, String)>, Refusal)> = vec![
            (vec![], Refusal::Missing),
            (
                vec![("Content-Type", "application/json".into())],
                Refusal::Missing,
            ),
            (
                vec![(HUB_SIGNATURE, good.clone())],
                Refusal::Malformed {
                    header: HUB_SIGNATURE,
                    reason: "it does not start with sha256=",
                },
            ),
            (
                vec![(HUB_SIGNATURE, "sha256=zz".into())],
                Refusal::Malformed {
                    header: HUB_SIGNATURE,
                    reason: "the signature is not 64 hex digits",
                },
            ),
            (
                vec![(GITEA_SIGNATURE, good[..62].to_owned())],
                Refusal::Malformed {
                    header: GITEA_SIGNATURE,
                    reason: "the signature is not 64 hex digits",
                },
            ),
            (
                vec![(HUB_SIGNATURE, format!("sha256={wrong}"))],
                Refusal::Mismatch {
                    header: HUB_SIGNATURE,
                },
            ),
            (
                // A right signature does not excuse a wrong one beside it.
                vec![
                    (HUB_SIGNATURE, format!("sha256={good}")),
                    (GITEA_SIGNATURE, wrong.clone()),
                ],
                Refusal::Mismatch {
                    header: GITEA_SIGNATURE,
                },
            ),
            (
                vec![
                    (GITEA_SIGNATURE, good.clone()),
                    ("x-gitea-signature", good.clone()),
                ],
                Refusal::Repeated {
                    header: GITEA_SIGNATURE,
                },
            ),
            (
                vec![(GITLAB_TOKEN, "s3cre".into())],
                Refusal::Mismatch {
                    header: GITLAB_TOKEN,
                },
            ),
            (
                vec![(GITLAB_TOKEN, "s3cret!".into())],
                Refusal::Mismatch {
                    header: GITLAB_TOKEN,
                },
            ),
        ];
        for (pairs, want) in cases {
            let hs: Vec<(String, String)> = pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect();
            let got = verify(&hs, body, secret);
            assert_eq!(got, Err(want), "{pairs:?}");
            // No refusal's message carries the secret.
            assert!(!got.unwrap_err().to_string().contains("s3cret"));
        }
    }

    #[test]
    fn gitlab_token_and_combinations() {
        let body = b"payload";
        let hex = openssl_hmac(body, "tok");
        assert_eq!(
            verify(&headers(&[("X-GITLAB-TOKEN", " tok ")]), body, b"tok"),
            Ok(Verified::GitlabToken)
        );
        let both = headers(&[
            (GITEA_SIGNATURE, &hex),
            (HUB_SIGNATURE, &format!("sha256={}", hex.to_uppercase())),
        ]);
        assert_eq!(verify(&both, body, b"tok"), Ok(Verified::HubSignature256));
    }

    #[test]
    fn an_empty_secret_verifies_nothing() {
        // HMAC with an empty key is computable by anyone.
        let hex = openssl_hmac(b"x", "");
        assert_eq!(
            verify(&headers(&[(GITEA_SIGNATURE, &hex)]), b"x", b""),
            Err(Refusal::EmptySecret)
        );
        assert_eq!(
            verify(&headers(&[(GITLAB_TOKEN, "")]), b"x", b""),
            Err(Refusal::EmptySecret)
        );
    }

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");

        fs::write(&path, "hunter2 \r\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let secret = read_secret(&path).unwrap();
        assert_eq!(secret.as_bytes(), b"hunter2 ");
        assert_eq!(secret.warning, None);
        assert!(!format!("{secret:?}").contains("hunter2"));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let warning = read_secret(&path).unwrap().warning.unwrap();
        assert!(
            warning.contains("mode 644") && warning.contains("chmod 600"),
            "{warning}"
        );

        fs::write(&path, "\n").unwrap();
        let err = read_secret(&path).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");

        let err = read_secret(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}

//! `berth image pull`: images from any OCI distribution registry.
//!
//! The manifest is fetched raw, so its digest is checked against the bytes berth
//! stores; an image index is resolved to this machine's platform, as `load` does. The
//! config and the layers are streamed into the store's blob writer, which checks each
//! digest before a blob becomes visible. Layers are fetched concurrently (a few at a
//! time) and each is unpacked as soon as it has arrived, while the others download; a
//! layer already in the store is not fetched, and a layer listed twice is fetched once. The image is registered only once every blob is in, through the same
//! path `load` uses, so a failed pull leaves no half image behind.
//!
//! Transport: HTTPS, except for registries on the loopback interface and those the
//! user marks insecure, which may use plain HTTP. Authentication: anonymous, basic
//! (flags, or the user's existing `docker login` entries in `~/.docker/config.json`),
//! and bearer tokens, which the registry's `WWW-Authenticate` challenge leads the
//! client to fetch.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;

use super::images::{layers_to_fetch, verify, Image};
use super::oci::{host_architecture, Index, Manifest, MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX};
pub use super::progress::Progress;
use super::progress::{short, BlobProgress, Reporter};
use super::reference::Reference;
use super::store::{BlobLock, ImageStore, InFlight};
use super::{Digest, ImageError};

/// How many layers download at once: enough to fill a link, few enough not to be
/// rate-limited by public registries.
const CONCURRENT_LAYERS: usize = 4;

/// Manifest media types berth accepts, in order of preference.
const MANIFEST_TYPES: &[&str] = &[
    super::oci::MEDIA_OCI_MANIFEST,
    super::oci::MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
];

/// Credentials for one pull.
#[derive(Clone, Default)]
pub enum Credentials {
    /// No credentials given: `~/.docker/config.json` is consulted, else anonymous.
    #[default]
    Auto,
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    // Never print a password, not even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Auto => f.write_str("Auto"),
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub credentials: Credentials,
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Per-layer progress: bars for a terminal, plain lines for anything else.
    pub progress: Progress,
    /// Where `docker login` keeps credentials; default `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
}

/// Pulls `reference` into `store` (blocking; for callers outside an async runtime).
pub fn pull(
    store: &ImageStore,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<Image, ImageError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| pull_error(reference, format!("cannot start the I/O runtime: {e}")))?;
    runtime.block_on(pull_async(store, reference, opts))
}

fn pull_error(reference: &Reference, reason: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        what: format!("pulling {}", reference.familiar()),
        reason: reason.into(),
    }
}

/// Registries on the loopback interface may use plain HTTP: nothing crosses a network.
fn is_loopback(domain: &str) -> bool {
    let host = match domain.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => domain,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub async fn pull_async(
    store: &ImageStore,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<Image, ImageError> {
    let mut insecure = opts.insecure_registries.clone();
    if is_loopback(&reference.domain) {
        insecure.push(reference.domain.clone());
    }
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure),
        ..Default::default()
    });
    let target: oci_client::Reference = reference
        .to_string()
        .parse()
        .map_err(|e| pull_error(reference, format!("{e}")))?;
    let auth = registry_auth(
        &opts.credentials,
        &reference.domain,
        opts.docker_config_dir.as_deref(),
    );
    let net = |e: oci_client::errors::OciDistributionError| {
        pull_error(reference, describe(&e, &reference.domain))
    };
    // From the first blob written until the image is registered, garbage collection
    // must leave this pull's blobs and layers alone.
    let in_flight = {
        let s = store.clone();
        let guard = tokio::task::spawn_blocking(move || s.in_flight())
            .await
            .map_err(|e| pull_error(reference, format!("waiting for the store: {e}")))??;
        std::sync::Arc::new(guard)
    };

    // With credentials, authenticate up front: oci-client would otherwise swallow a
    // token server's refusal and carry on anonymously, and the user would see "denied"
    // instead of "wrong credentials".
    if !matches!(auth, RegistryAuth::Anonymous) {
        client
            .auth(&target, &auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(net)?;
    }
    // The manifest, raw: its digest is checked against the bytes themselves.
    let (mut bytes, _) = client
        .pull_manifest_raw(&target, &auth, MANIFEST_TYPES)
        .await
        .map_err(net)?;
    if let Some(pinned) = &reference.digest {
        // A reference by digest names exactly these bytes (the index, if it is one).
        verify(pinned, &bytes, || {
            format!("manifest of {}", reference.familiar())
        })?;
    }
    let mut target = target;
    if let Ok(index) = serde_json::from_slice::<Index>(&bytes) {
        if index_like(&bytes) {
            let arch = host_architecture();
            let chosen = index.for_this_platform().ok_or_else(|| {
                pull_error(reference, format!("the image has no linux/{arch} variant"))
            })?;
            target = target.clone_with_digest(chosen.digest.to_string());
            let (platform_bytes, _) = client
                .pull_manifest_raw(&target, &auth, MANIFEST_TYPES)
                .await
                .map_err(net)?;
            verify(&chosen.digest, &platform_bytes, || {
                format!("manifest of {}", reference.familiar())
            })?;
            bytes = platform_bytes;
        }
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        pull_error(
            reference,
            format!("the registry sent an invalid manifest: {e}"),
        )
    })?;

    let report = Reporter::new(&opts.progress);
    // The config first (it is small, and names each layer's uncompressed digest).
    if !store.has_blob(&manifest.config.digest) {
        let _lock = lock_blob(store, &in_flight, &manifest.config.digest, reference).await?;
        if !store.has_blob(&manifest.config.digest) {
            let progress = report.blob(&manifest.config.digest, manifest.config.size);
            fetch_blob(
                &client,
                &target,
                store,
                &manifest.config,
                &progress,
                reference,
            )
            .await?;
            progress.finish();
        }
    }
    let config = store.read_config(&manifest.config.digest)?;

    // Then the layers, each once: downloaded (unless the store has it), verified by the
    // store's writer, and unpacked right away on a blocking thread, so unpacking one
    // layer overlaps with downloading the others.
    let layers = layers_to_fetch(&manifest, &config).map_err(|r| pull_error(reference, r))?;
    let jobs = layers.into_iter().map(|(desc, diff_id)| {
        let progress = report.blob(&desc.digest, desc.size);
        let (client, target, in_flight) = (&client, &target, &in_flight);
        async move {
            if store.has_layer(&desc.digest, diff_id) {
                progress.present();
                return Ok(());
            }
            // Held across download and unpack: another puller of this layer waits here,
            // then finds both done and skips them.
            let _lock = lock_blob(store, in_flight, &desc.digest, reference).await?;
            if store.has_layer(&desc.digest, diff_id) {
                progress.present();
                return Ok(());
            }
            if !store.has_blob(&desc.digest) {
                fetch_blob(client, target, store, desc, &progress, reference).await?;
            }
            let (s, blob, diff) = (store.clone(), desc.digest.clone(), diff_id.clone());
            progress.unpacking();
            tokio::task::spawn_blocking(move || s.unpack_layer(&blob, &diff))
                .await
                .map_err(|e| pull_error(reference, format!("unpacking was interrupted: {e}")))??;
            progress.unpacked();
            Ok::<(), ImageError>(())
        }
    });
    futures_util::stream::iter(jobs)
        .buffer_unordered(CONCURRENT_LAYERS)
        .try_collect::<Vec<()>>()
        .await?;

    let image = store.register(reference, &bytes)?;
    drop(in_flight);
    Ok(image)
}

/// Whether raw manifest bytes are an index (or a Docker manifest list), by media type.
fn index_like(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default, rename = "mediaType")]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(p) => match p.media_type.as_deref() {
            Some(MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST) => true,
            Some(_) => false,
            // OCI allows an index without mediaType; it is the one with `manifests`.
            None => p.manifests.is_some(),
        },
        Err(_) => false,
    }
}

/// Takes `digest`'s blob lock on a blocking thread (it may wait for another puller).
async fn lock_blob(
    store: &ImageStore,
    in_flight: &std::sync::Arc<InFlight>,
    digest: &Digest,
    reference: &Reference,
) -> Result<BlobLock, ImageError> {
    let (s, f, d) = (store.clone(), in_flight.clone(), digest.clone());
    tokio::task::spawn_blocking(move || s.lock_blob(&f, &d))
        .await
        .map_err(|e| {
            pull_error(
                reference,
                format!("waiting for layer {}: {e}", short(digest)),
            )
        })?
}

async fn fetch_blob(
    client: &oci_client::Client,
    target: &oci_client::Reference,
    store: &ImageStore,
    desc: &super::oci::Descriptor,
    progress: &BlobProgress,
    reference: &Reference,
) -> Result<(), ImageError> {
    let descriptor = OciDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.to_string(),
        size: i64::try_from(desc.size).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let mut stream = client
        .pull_blob_stream(target, &descriptor)
        .await
        .map_err(|e| {
            pull_error(
                reference,
                format!(
                    "layer {}: {}",
                    short(&desc.digest),
                    describe(&e, &reference.domain)
                ),
            )
        })?;
    let mut writer = store.blob_writer(Some(desc.digest.clone()))?;
    while let Some(chunk) = stream.stream.next().await {
        let chunk = chunk
            .map_err(|e| pull_error(reference, format!("layer {}: {e}", short(&desc.digest))))?;
        writer.write_all(&chunk).map_err(|e| ImageError::Io {
            op: "writing a blob into",
            path: store.root().to_path_buf(),
            source: e,
        })?;
        progress.inc(chunk.len() as u64);
    }
    // The store checks the digest before the blob becomes visible.
    writer.commit()?;
    progress.downloaded();
    Ok(())
}

/// The registry's own message when it gave one, else the client's, with what to do
/// for the errors a user can fix. `registry` is the host the reference names.
fn describe(e: &oci_client::errors::OciDistributionError, registry: &str) -> String {
    use oci_client::errors::OciDistributionError as E;
    let login = format!(
        "give credentials with --username and --password-stdin, or run docker login {registry}"
    );
    match e {
        // The token server (or the registry's basic auth) turned the credentials down.
        E::AuthenticationFailure(reason) => {
            let reason = reason.trim();
            let reason: String = reason.chars().take(200).collect();
            if reason.is_empty() {
                format!("registry {registry} refused the credentials; {login}")
            } else {
                format!("registry {registry} refused the credentials ({reason}); {login}")
            }
        }
        // Authenticated (or anonymous) but not allowed this repository.
        E::UnauthorizedError { .. } => format!(
            "registry {registry} denied access to this repository (no credentials, or \
             credentials that may not pull it); check the name, then {login}"
        ),
        E::RegistryError { envelope, .. } if envelope.errors.iter().any(|e| {
            matches!(e.code, oci_client::errors::OciErrorCode::Unauthorized | oci_client::errors::OciErrorCode::Denied)
        }) => format!(
            "registry {registry} denied access to this repository ({envelope}); check the name, then {login}"
        ),
        E::RegistryTokenDecodeError(reason) => {
            format!("registry {registry}'s token server sent an unreadable token: {reason}")
        }
        E::ImageManifestNotFoundError(_) => format!("{e}; check the name and the tag"),
        _ => e.to_string(),
    }
}

fn registry_auth(creds: &Credentials, domain: &str, config_dir: Option<&Path>) -> RegistryAuth {
    match creds {
        Credentials::Anonymous => RegistryAuth::Anonymous,
        Credentials::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
        Credentials::Auto => docker_login(domain, config_dir)
            .map(|(u, p)| RegistryAuth::Basic(u, p))
            .unwrap_or(RegistryAuth::Anonymous),
    }
}

/// The `docker login` entry for `domain`, from `config.json`'s `auths` (base64
/// `user:password`). Credential helpers are not supported; such entries are skipped.
fn docker_login(domain: &str, config_dir: Option<&Path>) -> Option<(String, String)> {
    let dir = match config_dir {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os("DOCKER_CONFIG") {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
        },
    };
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = config.get("auths")?.as_object()?;
    // Docker Hub's entry is keyed by its old index URL.
    let keys: Vec<String> = if domain == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "docker.io".into(),
            "index.docker.io".into(),
        ]
    } else {
        vec![
            domain.to_string(),
            format!("https://{domain}"),
            format!("http://{domain}"),
        ]
    };
    let entry = keys.iter().find_map(|k| auths.get(k))?;
    let encoded = entry.get("auth")?.as_str()?;
    let decoded = base64_decode(encoded)?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// Standard base64, as `docker login` writes it (small: not worth a dependency).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_may_use_http() {
        for (domain, want) in [
            ("localhost:5000", true),
            ("127.0.0.1:5000", true),
            ("127.1.2.3", true),
            ("[::1]:5000", true),
            ("docker.io", false),
            ("registry.example.com:5000", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(is_loopback(domain), want, "{domain}");
        }
    }

    #[test]
    fn docker_login_entries_are_read() {
        let dir = tempfile::tempdir().unwrap();
        // "tester:s3cret" and Docker Hub's "hubuser:hubpass"
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"127.0.0.1:5000": {"auth": "dGVzdGVyOnMzY3JldA=="},
                "https://index.docker.io/v1/": {"auth": "aHVidXNlcjpodWJwYXNz"}}}"#,
        )
        .unwrap();
        assert_eq!(
            docker_login("127.0.0.1:5000", Some(dir.path())),
            Some(("tester".into(), "s3cret".into()))
        );
        assert_eq!(
            docker_login("docker.io", Some(dir.path())),
            Some(("hubuser".into(), "hubpass".into()))
        );
        assert_eq!(docker_login("other:5000", Some(dir.path())), None);
    }

    #[test]
    fn base64_matches_known_values() {
        for (text, want) in [
            ("", ""),
            ("YQ==", "a"),
            ("YWI=", "ab"),
            ("YWJj", "abc"),
            ("dGVzdGVyOnMzY3JldA==", "tester:s3cret"),
        ] {
            assert_eq!(
                base64_decode(text).map(|b| String::from_utf8(b).unwrap()),
                Some(want.to_string())
            );
        }
        assert_eq!(base64_decode("!!"), None);
    }

    #[test]
    fn credentials_never_print_a_password() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

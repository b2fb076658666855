//! Images between the nodes of a cluster, without a registry: the binary's two ends of
//! `agent::image::peer` over the cluster port.
//!
//! - Serving: [`router`] is `manager::api::images` over this node's image store, for a
//!   manager's cluster port (where only worker and manager certificates reach it).
//! - Fetching: [`ClusterImages`] is the executor's `ImageSource` on a cluster node. It
//!   asks the managers in turn ([`fetch_from_managers`]), since which node has which
//!   image is not tracked: an image imported, loaded or pulled on a manager (as `berth
//!   up` does) can be fetched; one only on another worker cannot.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent::image::peer::{self, BlobSource, FetchError, PeerManifest, SourceError};
use agent::image::{
    Digest, Image, ImageError, ImageSource, ImageSourceError, ImageStore, Reference,
};
use anyhow::Context;
use manager::api::images::{ImageRefusal, ManifestAnswer, NodeImages};

use crate::client::Client;

/// How long a fetch waits for the next bytes from a manager before it gives up on it:
/// a paused or cut-off manager must not hold a task's start forever.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The routes that serve this node's images (state directory `state_dir`) to the other
/// nodes, for the cluster port's router.
pub(crate) fn router(state_dir: &Path) -> anyhow::Result<axum::Router> {
    let store = ImageStore::open(state_dir).context("open the image store")?;
    Ok(manager::api::images::router(Arc::new(StoreImages(store))))
}

/// This node's store, as `manager::api::images` asks it.
struct StoreImages(ImageStore);

impl NodeImages for StoreImages {
    fn manifest(&self, reference: &str) -> Result<ManifestAnswer, ImageRefusal> {
        let reference =
            Reference::parse(reference).map_err(|e| ImageRefusal::BadRequest(e.to_string()))?;
        let served = peer::manifest(&self.0, &reference).map_err(refusal)?;
        // A stored manifest was parsed as JSON when it came in, so it is UTF-8.
        let manifest = String::from_utf8(served.bytes).map_err(|_| {
            ImageRefusal::Failed(format!(
                "the stored manifest of {} is not UTF-8",
                reference.familiar()
            ))
        })?;
        Ok(ManifestAnswer {
            media_type: served.media_type,
            digest: served.digest.map(|d| d.to_string()),
            manifest,
        })
    }

    fn open_blob(&self, digest: &str) -> Result<(Box<dyn Read + Send>, u64), ImageRefusal> {
        // Parsed before it names anything: `sha256:` and 64 hex characters, no path.
        let digest: Digest = digest
            .parse()
            .map_err(|e: agent::image::digest::DigestError| {
                ImageRefusal::BadRequest(e.to_string())
            })?;
        let (file, size) = peer::open_blob(&self.0, &digest).map_err(refusal)?;
        Ok((Box::new(file), size))
    }
}

fn refusal(e: ImageError) -> ImageRefusal {
    match e {
        ImageError::NotFound(_) | ImageError::NoSuchBlob(_) => {
            ImageRefusal::NotFound(e.to_string())
        }
        e => ImageRefusal::Failed(e.to_string()),
    }
}

/// One manager's images, over the cluster port.
struct ManagerSource {
    client: Client,
}

impl ManagerSource {
    fn new(addr: &str, tls: Arc<rustls::ClientConfig>) -> ManagerSource {
        ManagerSource {
            client: Client::tls(addr, tls, pki::tls::manager_server_name())
                .with_timeout(READ_TIMEOUT),
        }
    }

    /// A `GET` answered 200, or the manager's refusal.
    fn get(&self, path: &str) -> Result<crate::client::Response, SourceError> {
        let response = self
            .client
            .request("GET", path, None)
            .map_err(|e| SourceError::Failed(format!("{e:#}")))?;
        if response.status == 200 {
            return Ok(response);
        }
        // The body of an error is a short `{"error": "..."}`; no more is read.
        let mut text = String::new();
        let _ = response.body.take(64 << 10).read_to_string(&mut text);
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(String::from))
            .unwrap_or(text);
        Err(match response.status {
            404 => SourceError::NotFound(message),
            status => SourceError::Failed(format!("HTTP {status}: {message}")),
        })
    }
}

impl BlobSource for ManagerSource {
    fn manifest(&self, reference: &Reference) -> Result<PeerManifest, SourceError> {
        let path = format!(
            "/v1/cluster/images/manifest?ref={}",
            query_escape(&reference.to_string())
        );
        let response = self.get(&path)?;
        // The manifest travels escaped in a JSON string, where its quotes, backslashes
        // and newlines take two characters each: an answer longer than twice the
        // largest manifest is not one, and is not read further.
        let limit = 2 * peer::MAX_MANIFEST as u64 + 4096;
        let mut bytes = Vec::new();
        response
            .body
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| SourceError::Failed(format!("reading the manifest: {e}")))?;
        let answer: ManifestAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| SourceError::Failed(format!("the manifest answer is not valid: {e}")))?;
        let digest = answer
            .digest
            .map(|d| d.parse::<Digest>())
            .transpose()
            .map_err(|e| SourceError::Failed(format!("the manifest answer is not valid: {e}")))?;
        Ok(PeerManifest {
            media_type: answer.media_type,
            digest,
            bytes: answer.manifest.into_bytes(),
        })
    }

    fn blob(&self, digest: &Digest, sink: &mut dyn std::io::Write) -> Result<(), SourceError> {
        let mut response = self.get(&format!("/v1/cluster/images/blobs/{digest}"))?;
        std::io::copy(&mut response.body, sink).map_err(|e| SourceError::Failed(e.to_string()))?;
        Ok(())
    }
}

/// `text` made safe in a URL's query: anything but unreserved characters and the `/`,
/// `:` and `@` of a reference is percent-encoded (an IPv6 registry's `[` and `]`).
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Why [`fetch_from_managers`] brought no image.
#[derive(Debug)]
pub(crate) enum ManagersFetchError {
    /// This node's own store could not be opened: no manager was asked.
    Store(ImageError),
    /// Every manager was asked; what each answered, in order.
    Managers {
        image: String,
        tried: Vec<(String, FetchError)>,
    },
}

impl ManagersFetchError {
    /// Whether managers were asked and each answered that it has no such image, so
    /// asking again will not help until someone puts it there (as opposed to a
    /// manager that could not be asked or failed while sending it).
    pub(crate) fn none_has_it(&self) -> bool {
        match self {
            ManagersFetchError::Managers { tried, .. } => {
                !tried.is_empty()
                    && tried
                        .iter()
                        .all(|(_, e)| matches!(e, FetchError::NotFound { .. }))
            }
            ManagersFetchError::Store(_) => false,
        }
    }
}

impl std::fmt::Display for ManagersFetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (image, tried) = match self {
            ManagersFetchError::Store(e) => return write!(f, "{e}"),
            ManagersFetchError::Managers { image, tried } => (image, tried),
        };
        if tried.is_empty() {
            return write!(f, "this node knows no manager to fetch image {image} from");
        }
        let answers: Vec<String> = tried
            .iter()
            .map(|(addr, e)| format!("manager {addr}: {e}"))
            .collect();
        if self.none_has_it() {
            write!(
                f,
                "no manager has it ({}); put it on a manager with berth image import, load \
                 or pull",
                answers.join("; ")
            )
        } else {
            write!(f, "no manager gave it ({})", answers.join("; "))
        }
    }
}

impl std::error::Error for ManagersFetchError {}

/// Fetches the image `reference` names into the image store of `state_dir` from the
/// first of `managers` (cluster addresses, `host:port`) that has it, over mutual TLS
/// with `tls` (this node's HTTP client configuration,
/// `manager::port::http_client_config`). Blocking: one request at a time.
pub(crate) fn fetch_from_managers(
    state_dir: &Path,
    reference: &Reference,
    managers: &[String],
    tls: Arc<rustls::ClientConfig>,
) -> Result<Image, ManagersFetchError> {
    let image = reference.familiar();
    let store = ImageStore::open(state_dir).map_err(ManagersFetchError::Store)?;
    let mut tried = Vec::new();
    for addr in managers {
        let source = ManagerSource::new(addr, tls.clone());
        match peer::fetch(&store, reference, &source) {
            Ok(fetched) => {
                eprintln!(
                    "berth daemon: fetched image {image} from manager {addr} ({} blobs, {} \
                     bytes; the rest was here)",
                    fetched.blobs, fetched.bytes
                );
                return Ok(fetched.image);
            }
            Err(e) => tried.push((addr.clone(), e)),
        }
    }
    Err(ManagersFetchError::Managers { image, tried })
}

/// The executor's [`ImageSource`] on a cluster node: the managers, each asked in turn.
pub(crate) struct ClusterImages {
    state_dir: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    managers: Box<dyn Fn() -> Vec<String> + Send + Sync>,
}

impl ClusterImages {
    /// Images for the node with state directory `state_dir`, fetched with `tls` (this
    /// node's HTTP client configuration, `manager::port::http_client_config`) from the
    /// managers `managers` lists when an image is wanted: the list changes with the
    /// cluster (a worker learns it from its heartbeats and keeps it in
    /// `<state>/cluster/config.json`).
    pub(crate) fn new(
        state_dir: &Path,
        tls: Arc<rustls::ClientConfig>,
        managers: impl Fn() -> Vec<String> + Send + Sync + 'static,
    ) -> ClusterImages {
        ClusterImages {
            state_dir: state_dir.to_path_buf(),
            tls,
            managers: Box::new(managers),
        }
    }
}

impl std::fmt::Debug for ClusterImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterImages")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl ImageSource for ClusterImages {
    fn fetch(&self, reference: &Reference) -> Result<(), ImageSourceError> {
        let managers = (self.managers)();
        match fetch_from_managers(&self.state_dir, reference, &managers, self.tls.clone()) {
            Ok(_) => Ok(()),
            Err(e) if e.none_has_it() => Err(ImageSourceError::NotFound(e.to_string())),
            Err(e) => Err(ImageSourceError::Unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Both ends over a real cluster port (mutual TLS on 127.0.0.1), between two stores
    //! in temporary directories: a manager's with busybox imported, a worker's empty.

    use std::time::SystemTime;

    use pki::{Ca, CertRequest, DenyList, Identity, NodeCredentials, NodeId, Role};

    use super::*;

    fn creds(ca: &Ca, name: &str, role: Role) -> NodeCredentials {
        let id = NodeId::new(name).expect("test node id");
        ca.issue(
            &CertRequest::new(Identity::new(id, role)).address("127.0.0.1"),
            SystemTime::now(),
        )
        .expect("issue test credentials")
    }

    fn tls(ca: &Ca, name: &str, role: Role) -> Arc<rustls::ClientConfig> {
        manager::port::http_client_config(&creds(ca, name, role), &DenyList::new())
            .expect("client TLS settings")
    }

    /// A client that presents no certificate, as a joiner does.
    fn anonymous(ca: &Ca) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert().der().clone()).expect("CA root");
        let mut config = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![manager::port::ALPN_HTTP.to_vec()];
        Arc::new(config)
    }

    fn reference(text: &str) -> Reference {
        Reference::parse(text).expect("a valid test reference")
    }

    /// A manager serving its images (busybox as `app:1`) on a cluster port.
    struct Manager {
        dir: tempfile::TempDir,
        addr: String,
        image: Image,
        _port: manager::port::Port,
        rt: tokio::runtime::Runtime,
    }

    impl Manager {
        fn start(ca: &Ca) -> Manager {
            let dir = tempfile::tempdir().expect("tempdir");
            let tar = testkit::busybox_rootfs_tar(dir.path()).expect("busybox rootfs tar");
            let state = dir.path().join("state");
            let store = ImageStore::open(&state).expect("manager's store");
            let image = agent::image::import(&store, &tar, "app:1").expect("import");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let server =
                manager::port::server_config(&creds(ca, "m1", Role::Manager), &DenyList::new())
                    .expect("server TLS settings");
            let routes = router(&state).expect("router");
            let (port, addr) = rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr").to_string();
                let port =
                    manager::port::spawn(listener, server, manager::port::RaftSink::new(), routes);
                (port, addr)
            });
            Manager {
                dir,
                addr,
                image,
                _port: port,
                rt,
            }
        }

        fn store(&self) -> ImageStore {
            ImageStore::open(&self.dir.path().join("state")).expect("manager's store")
        }
    }

    /// An address where no manager answers (a manager that is down).
    fn down() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        addr
    }

    #[test]
    fn an_image_moves_from_a_manager_to_a_worker() {
        let ca = Ca::create(SystemTime::now()).expect("CA");
        let manager = Manager::start(&ca);
        let worker = tempfile::tempdir().expect("tempdir");
        let managers = [down(), manager.addr.clone()];

        let image = fetch_from_managers(
            worker.path(),
            &reference("app:1"),
            &managers,
            tls(&ca, "w1", Role::Worker),
        )
        .expect("fetched from the second manager");
        assert_eq!(image, manager.image);
        let store = ImageStore::open(worker.path()).expect("worker's store");
        let here = store.image(&reference("app:1")).expect("registered");
        assert!(store.layer_dirs(&here).expect("unpacked")[0]
            .join("bin/busybox")
            .is_file());
        assert_eq!(
            store.read_blob(&here.manifest_digest).expect("manifest"),
            manager
                .store()
                .read_blob(&here.manifest_digest)
                .expect("manifest"),
            "the manifest is the manager's, byte for byte"
        );
    }

    #[test]
    fn a_missing_image_names_every_manager_asked_and_why() {
        let ca = Ca::create(SystemTime::now()).expect("CA");
        let manager = Manager::start(&ca);
        let worker = tempfile::tempdir().expect("tempdir");
        let dead = down();
        let images = |managers: Vec<String>| {
            ClusterImages::new(worker.path(), tls(&ca, "w1", Role::Worker), move || {
                managers.clone()
            })
        };

        // Every manager answered and none has it: not worth retrying.
        let err = images(vec![manager.addr.clone()])
            .fetch(&reference("nope:1"))
            .expect_err("no manager has it");
        assert_eq!(
            err,
            ImageSourceError::NotFound(format!(
                "no manager has it (manager {}: it has no image nope:1); put it on a manager \
                 with berth image import, load or pull",
                manager.addr
            ))
        );

        // One manager could not be asked: it may have it, so worth retrying.
        let err = images(vec![dead.clone(), manager.addr.clone()])
            .fetch(&reference("nope:1"))
            .expect_err("no manager gave it");
        let ImageSourceError::Unavailable(text) = &err else {
            panic!("expected Unavailable: {err:?}");
        };
        assert!(
            text.starts_with(&format!(
                "no manager gave it (manager {dead}: manifest of nope:1: no berth manager answers on {dead}"
            )),
            "{text}"
        );
        assert!(
            text.ends_with(&format!(
                "manager {}: it has no image nope:1)",
                manager.addr
            )),
            "{text}"
        );

        let err = images(Vec::new())
            .fetch(&reference("nope:1"))
            .expect_err("no managers");
        assert_eq!(
            err.to_string(),
            "this node knows no manager to fetch image nope:1 from"
        );
    }

    #[test]
    fn only_cluster_nodes_are_served() {
        let ca = Ca::create(SystemTime::now()).expect("CA");
        let manager = Manager::start(&ca);
        let worker = tempfile::tempdir().expect("tempdir");
        let fetch = |tls| {
            fetch_from_managers(
                worker.path(),
                &reference("app:1"),
                std::slice::from_ref(&manager.addr),
                tls,
            )
            .expect_err("refused")
            .to_string()
        };
        let admin = fetch(tls(&ca, "admin", Role::Admin));
        assert!(
            admin.contains("HTTP 403: /v1/cluster/images/manifest: this endpoint needs a worker or manager certificate"),
            "{admin}"
        );
        let nobody = fetch(anonymous(&ca));
        assert!(nobody.contains("HTTP 401: "), "{nobody}");
        assert!(ImageStore::open(worker.path())
            .expect("worker's store")
            .blobs()
            .expect("blobs")
            .is_empty());

        // Routes merged into a router with no port in front (the unix socket's) refuse
        // everyone, for want of a verified node.
        let socket = manager.dir.path().join("api.sock");
        let routes = router(&manager.dir.path().join("state")).expect("router");
        let listener = {
            let _rt = manager.rt.enter();
            tokio::net::UnixListener::bind(&socket).expect("bind the socket")
        };
        manager
            .rt
            .spawn(async move { axum::serve(listener, routes).await });
        let answer = Client::new(&socket)
            .request("GET", "/v1/cluster/images/manifest?ref=app:1", None)
            .expect("an answer");
        assert_eq!(answer.status, 401);
    }

    #[test]
    fn blobs_are_asked_for_by_digest_and_only_images_blobs_are_served() {
        let ca = Ca::create(SystemTime::now()).expect("CA");
        let manager = Manager::start(&ca);
        let orphan = manager
            .store()
            .put_blob(b"no image uses this", None)
            .expect("put");
        let client = Client::tls(
            &manager.addr,
            tls(&ca, "w1", Role::Worker),
            pki::tls::manager_server_name(),
        );
        let status = |path: &str| client.request("GET", path, None).expect("an answer").status;
        let layer = &manager.image.layers[0];
        assert_eq!(
            status(&format!("/v1/cluster/images/blobs/{}", layer.digest)),
            200
        );
        assert_eq!(status(&format!("/v1/cluster/images/blobs/{orphan}")), 404);
        assert_eq!(status("/v1/cluster/images/blobs/sha256:..%2F..%2Fetc"), 403);
        assert_eq!(status("/v1/cluster/images/blobs/sha256:0123"), 400);
        assert_eq!(
            status(&format!("/v1/cluster/images/blobs/{}", layer.digest.hex())),
            400
        );
        assert_eq!(status("/v1/cluster/images/manifest"), 400);
        assert_eq!(
            status("/v1/cluster/images/manifest?ref=NOT%20A%20NAME"),
            400
        );

        // The layer comes whole, as its digest says.
        let mut answer = client
            .request(
                "GET",
                &format!("/v1/cluster/images/blobs/{}", layer.digest),
                None,
            )
            .expect("the layer");
        let mut bytes = Vec::new();
        answer.body.read_to_end(&mut bytes).expect("read the layer");
        assert_eq!(bytes.len() as u64, layer.size);
        assert_eq!(Digest::of(&bytes), layer.digest);
    }

    #[test]
    fn references_survive_the_query_string() {
        assert_eq!(
            query_escape("[::1]:5000/x/y:1.0_a-b"),
            "%5B::1%5D:5000/x/y:1.0_a-b"
        );
        assert_eq!(query_escape("a b&c=d#e"), "a%20b%26c%3Dd%23e");
    }
}

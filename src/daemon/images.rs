//! Images between the nodes of a cluster, without a registry: the binary's two ends of
//! `agent::image::peer` over the cluster port, and the lookup of which nodes hold an
//! image.
//!
//! - Serving: [`router`] is `manager::api::images` over this node's image store, for
//!   every node's cluster port, a worker's too (where only worker and manager
//!   certificates reach it).
//! - Finding: [`Lookup`] is a manager's `ImageHolders`: it asks every node not known to
//!   be down, in parallel and for a bounded time, whether its store has the image (the
//!   manifest route answers 200 or 404), and reads its own store directly. Nothing is
//!   tracked between lookups: nodes reporting their images in heartbeats would cost the
//!   leader every node's list every second, at a thousand nodes, for an answer wanted a
//!   few times a deployment.
//! - Fetching: [`ClusterImages`] is the executor's `ImageSource` on a cluster node. It
//!   asks the managers in turn first (`berth up` pulls there, so that is where an image
//!   usually is), then the nodes a lookup names ([`fetch`]): an image imported, loaded
//!   or pulled on any node can run on any other.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use agent::image::peer::{self, BlobSource, FetchError, PeerManifest, SourceError};
use agent::image::{
    Digest, Image, ImageError, ImageSource, ImageSourceError, ImageStore, Reference,
};
use anyhow::Context;
use manager::api::images::{
    Holder, HoldersAnswer, ImageHolders, ImageRefusal, ManifestAnswer, NodeImages, Unanswered,
};
use manager::cluster::ops::NodeView;
use manager::cluster::Member;

use crate::client::Client;

/// How long a fetch waits for the next bytes from a node before it gives up on it:
/// a paused or cut-off node must not hold a task's start forever.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one node gets to say whether it has an image (connection, handshake and
/// answer): a healthy node answers in milliseconds, and one that does not is skipped,
/// not waited for...
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// ...how many nodes are asked at once (sockets and handshakes of one manager)...
const PROBES_AT_ONCE: usize = 64;
/// ...and how long a lookup takes at most: the nodes not asked by then are named as
/// unanswered. At a thousand nodes that all answer, a lookup takes well under this.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(10);
/// Enough of a node's manifest answer to read its digest; a longer answer still says
/// the node has the image, without the digest.
const PROBE_ANSWER_LIMIT: u64 = 256 << 10;

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

/// One node's images, over its cluster port.
struct NodeSource {
    client: Client,
}

impl NodeSource {
    /// Whichever manager answers at `addr`.
    fn manager(addr: &str, tls: Arc<rustls::ClientConfig>) -> NodeSource {
        NodeSource {
            client: Client::tls(addr, tls, pki::tls::manager_server_name())
                .with_timeout(READ_TIMEOUT),
        }
    }

    /// Node `holder`, its certificate verified by its id: a lookup's answer names the
    /// node, and no other node may stand in for it.
    fn node(holder: &Holder, tls: Arc<rustls::ClientConfig>) -> Result<NodeSource, FetchError> {
        let id = pki::NodeId::new(&holder.id).map_err(|e| FetchError::Source {
            what: format!("node id {:?}", holder.id),
            reason: e.to_string(),
        })?;
        Ok(NodeSource {
            client: Client::tls(&holder.addr, tls, pki::tls::node_server_name(&id))
                .with_timeout(READ_TIMEOUT),
        })
    }

    /// A `GET` answered 200, or the node's refusal.
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
        let message = error_message(&text);
        Err(match response.status {
            404 => SourceError::NotFound(message),
            status => SourceError::Failed(format!("HTTP {status}: {message}")),
        })
    }
}

/// The message of an error answer (`{"error": "..."}`), or its text as it is.
fn error_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(String::from))
        .unwrap_or_else(|| text.to_string())
}

impl BlobSource for NodeSource {
    fn manifest(&self, reference: &Reference) -> Result<PeerManifest, SourceError> {
        let response = self.get(&manifest_path(reference))?;
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

fn manifest_path(reference: &Reference) -> String {
    format!(
        "/v1/cluster/images/manifest?ref={}",
        manager::api::images::query_escape(&reference.to_string())
    )
}

// --- which nodes hold an image ---

/// A node a lookup asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub id: String,
    pub hostname: String,
    pub addr: String,
}

/// The nodes a lookup asks, in id order: every node of `nodes` but `me` (whose store is
/// read directly), `skip` (the node that asks, which lacks the image), and those the
/// leader says are down (they cannot answer, and their tasks are being replaced). A
/// node whose status is unknown is asked: the answer, or its absence, says more. Pure.
pub(crate) fn to_ask(nodes: &[NodeView], me: &str, skip: Option<&str>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = nodes
        .iter()
        .filter(|n| n.record.id != me && Some(n.record.id.as_str()) != skip)
        .filter(|n| n.status != "down")
        .map(|n| Candidate {
            id: n.record.id.clone(),
            hostname: n.record.hostname.clone(),
            addr: n.record.addr.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// What one node said when asked: it has the image (with its manifest's digest, if
/// it gave one), it has not, or why there was no answer.
pub(crate) type Probe = Result<Option<Option<String>>, String>;

/// The lookup's answer from the answers of `candidates` (`answers[i]` is candidate
/// `i`'s; None: not answered before the deadline) and, first, `own`: this manager's
/// own store, if it was read. Pure.
pub(crate) fn answer_of(
    own: Option<(Candidate, Probe)>,
    candidates: &[Candidate],
    answers: Vec<Option<Probe>>,
    deadline: Duration,
) -> HoldersAnswer {
    let mut out = HoldersAnswer::default();
    let asked = own
        .into_iter()
        .chain(candidates.iter().cloned().zip(answers).map(|(c, a)| {
            let a = a.unwrap_or_else(|| {
                Err(format!(
                    "not asked or no answer within the lookup's {deadline:?}"
                ))
            });
            (c, a)
        }));
    for (c, probe) in asked {
        out.asked += 1;
        match probe {
            Ok(Some(digest)) => out.holders.push(Holder {
                id: c.id,
                hostname: c.hostname,
                addr: c.addr,
                digest,
            }),
            Ok(None) => {}
            Err(reason) => out.unanswered.push(Unanswered { id: c.id, reason }),
        }
    }
    out.holders.sort_by(|a, b| a.id.cmp(&b.id));
    out.unanswered.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Asks node `c` whether its store has what `path` (a manifest route) names, over
/// mutual TLS with `tls`, its certificate verified by its id.
async fn probe(c: &Candidate, tls: Arc<rustls::ClientConfig>, path: &str) -> Probe {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let id = pki::NodeId::new(&c.id).map_err(|e| format!("node id {:?}: {e}", c.id))?;
    let tcp = tokio::net::TcpStream::connect(c.addr.as_str())
        .await
        .map_err(|e| format!("no answer on {}: {e}", c.addr))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(pki::tls::node_server_name(&id), tcp)
        .await
        .map_err(|e| format!("TLS with {}: {e}", c.addr))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("asking {}: {e}", c.addr))?;
    let mut answer = Vec::new();
    let read = (&mut stream)
        .take(PROBE_ANSWER_LIMIT)
        .read_to_end(&mut answer)
        .await;
    // A server may close without TLS's close_notify once its answer is out: what came
    // counts if it holds a whole head.
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n");
    let Some(head_end) = head_end else {
        return Err(match read {
            Err(e) => format!("reading the answer of {}: {e}", c.addr),
            Ok(_) => format!("{} gave no HTTP answer", c.addr),
        });
    };
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{} gave no HTTP answer", c.addr))?;
    let body = &answer[head_end + 4..];
    match status {
        200 => Ok(Some(
            serde_json::from_slice::<ManifestAnswer>(body)
                .ok()
                .and_then(|a| a.digest),
        )),
        404 => Ok(None),
        status => Err(format!(
            "HTTP {status}: {}",
            error_message(&String::from_utf8_lossy(body))
        )),
    }
}

/// Asks every node of `candidates` at once (at most `at_once` in flight), each for at
/// most `each`, all of them for at most `deadline`: the answers in `candidates`' order,
/// None for a node not answered by the deadline.
pub(crate) async fn probe_all(
    candidates: &[Candidate],
    tls: Arc<rustls::ClientConfig>,
    reference: &Reference,
    each: Duration,
    at_once: usize,
    deadline: Duration,
) -> Vec<Option<Probe>> {
    let path = Arc::new(manifest_path(reference));
    let slots = Arc::new(tokio::sync::Semaphore::new(at_once.max(1)));
    let mut asking = tokio::task::JoinSet::new();
    for (i, c) in candidates.iter().cloned().enumerate() {
        let (tls, path, slots) = (tls.clone(), path.clone(), slots.clone());
        asking.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let answer = tokio::time::timeout(each, probe(&c, tls, &path))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {each:?}")));
            (i, answer)
        });
    }
    let mut answers: Vec<Option<Probe>> = vec![None; candidates.len()];
    let until = tokio::time::Instant::now() + deadline;
    while let Ok(Some(joined)) = tokio::time::timeout_at(until, asking.join_next()).await {
        if let Ok((i, answer)) = joined {
            answers[i] = Some(answer);
        }
    }
    // Dropping the set stops the probes still waiting.
    answers
}

/// A manager's answer to "which nodes hold this image" ([`ImageHolders`]): its own
/// store, and every other node's, asked over the cluster port.
#[derive(Clone)]
pub(crate) struct Lookup {
    /// Weak: the executor holds a lookup, and must not keep the member alive.
    member: Weak<Member>,
    state_dir: PathBuf,
}

impl Lookup {
    pub(crate) fn new(member: &Arc<Member>, state_dir: &Path) -> Lookup {
        Lookup {
            member: Arc::downgrade(member),
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// The nodes whose store has `reference`'s image, leaving out `skip`.
    pub(crate) async fn find(
        &self,
        reference: &Reference,
        skip: Option<&str>,
    ) -> Result<HoldersAnswer, String> {
        let member = self
            .member
            .upgrade()
            .ok_or("this manager is stopping; ask another")?;
        // The leader's view, which alone says which nodes are down.
        let nodes = manager::cluster::ops::list_nodes(member.clone()).await;
        let me = member.node_id().to_string();
        let own = match nodes.iter().find(|n| n.record.id == me) {
            Some(n) if skip != Some(me.as_str()) => {
                let (dir, reference) = (self.state_dir.clone(), reference.clone());
                let found = tokio::task::spawn_blocking(move || {
                    let store = ImageStore::open(&dir)?;
                    store.image(&reference)
                })
                .await
                .map_err(|e| e.to_string())?;
                let probe = match found {
                    Ok(image) => Ok(Some(Some(image.manifest_digest.to_string()))),
                    Err(ImageError::NotFound(_)) => Ok(None),
                    Err(e) => Err(e.to_string()),
                };
                let c = Candidate {
                    id: me.clone(),
                    hostname: n.record.hostname.clone(),
                    addr: n.record.addr.clone(),
                };
                Some((c, probe))
            }
            _ => None,
        };
        let candidates = to_ask(&nodes, &me, skip);
        let answers = probe_all(
            &candidates,
            member.http.clone(),
            reference,
            PROBE_TIMEOUT,
            PROBES_AT_ONCE,
            LOOKUP_DEADLINE,
        )
        .await;
        Ok(answer_of(own, &candidates, answers, LOOKUP_DEADLINE))
    }

    /// [`Lookup::find`] for a blocking caller (the executor's image source on this
    /// manager), run on the daemon's runtime `rt`.
    fn find_blocking(
        &self,
        rt: &tokio::runtime::Handle,
        reference: &Reference,
    ) -> Result<HoldersAnswer, String> {
        let me = self.member.upgrade().map(|m| m.node_id().to_string());
        let (this, reference) = (self.clone(), reference.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        // A channel rather than `block_on`, which would panic if a caller ever ran on
        // the runtime's own threads.
        rt.spawn(async move {
            let _ = tx.send(this.find(&reference, me.as_deref()).await);
        });
        rx.recv_timeout(LOOKUP_DEADLINE + Duration::from_secs(30))
            .map_err(|_| "the lookup of the other nodes did not finish".to_string())?
    }

    /// A [`HolderLookup`] for this manager's own executor.
    pub(crate) fn for_executor(self, rt: tokio::runtime::Handle) -> HolderLookup {
        Box::new(move |reference| self.find_blocking(&rt, reference))
    }
}

impl ImageHolders for Lookup {
    fn holders(
        &self,
        reference: String,
        skip: Option<String>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<HoldersAnswer, ImageRefusal>> + Send>,
    > {
        let this = self.clone();
        Box::pin(async move {
            let parsed = Reference::parse(&reference)
                .map_err(|e| ImageRefusal::BadRequest(format!("?ref={reference}: {e}")))?;
            this.find(&parsed, skip.as_deref())
                .await
                .map_err(ImageRefusal::Failed)
        })
    }
}

/// The nodes holding an image, as a node finds out: blocking.
pub(crate) type HolderLookup =
    Box<dyn Fn(&Reference) -> Result<HoldersAnswer, String> + Send + Sync>;

/// A worker's [`HolderLookup`]: the managers `managers` lists are asked in turn, over
/// mutual TLS with `tls`, until one answers.
pub(crate) fn holders_from_managers(
    managers: impl Fn() -> Vec<String> + Send + Sync + 'static,
    tls: Arc<rustls::ClientConfig>,
) -> HolderLookup {
    Box::new(move |reference| {
        let path = manager::api::images::holders_path(&reference.to_string());
        let mut failed = Vec::new();
        for addr in managers() {
            // The manager waits up to its lookup's deadline for the nodes.
            let client = Client::tls(&addr, tls.clone(), pki::tls::manager_server_name())
                .with_timeout(LOOKUP_DEADLINE + Duration::from_secs(20));
            match client.call::<HoldersAnswer>("GET", &path, None::<&()>) {
                Ok(answer) => return Ok(answer),
                Err(e) => failed.push(format!("manager {addr}: {e:#}")),
            }
        }
        if failed.is_empty() {
            return Err("no manager known".into());
        }
        Err(failed.join("; "))
    })
}

// --- fetching ---

/// Why [`fetch`] brought no image.
#[derive(Debug)]
pub(crate) enum ClusterFetchError {
    /// This node's own store could not be opened: no node was asked.
    Store(ImageError),
    /// Every node that might have it was asked.
    Nodes {
        image: String,
        /// What each manager answered, in order.
        managers: Vec<(String, FetchError)>,
        /// Which other nodes hold it, or why that is not known (boxed, so that the
        /// error stays small on every caller's stack).
        lookup: Box<Result<HoldersAnswer, String>>,
        /// What each other node the lookup named answered, in order.
        holders: Vec<(Holder, FetchError)>,
    },
}

impl ClusterFetchError {
    /// Whether every node was asked and each answered that it has no such image, so
    /// asking again will not help until someone puts it on a node (as opposed to a
    /// node that could not be asked, or failed while sending it).
    pub(crate) fn none_has_it(&self) -> bool {
        let ClusterFetchError::Nodes {
            managers,
            lookup,
            holders,
            ..
        } = self
        else {
            return false;
        };
        let not_found = |e: &FetchError| matches!(e, FetchError::NotFound { .. });
        let Ok(answer) = &**lookup else {
            return false;
        };
        answer.unanswered.is_empty()
            && managers.iter().all(|(_, e)| not_found(e))
            && holders.iter().all(|(_, e)| not_found(e))
    }
}

impl std::fmt::Display for ClusterFetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (image, managers, lookup, holders) = match self {
            ClusterFetchError::Store(e) => return write!(f, "{e}"),
            ClusterFetchError::Nodes {
                image,
                managers,
                lookup,
                holders,
            } => (image, managers, lookup, holders),
        };
        let mut said: Vec<String> = managers
            .iter()
            .map(|(addr, e)| format!("manager {addr}: {e}"))
            .collect();
        match &**lookup {
            Err(e) => said.push(format!("the other nodes could not be looked up: {e}")),
            Ok(answer) => {
                // Every other holder was tried: none means the lookup found none.
                if holders.is_empty() {
                    said.push(format!("no other node has it ({} asked)", answer.asked));
                }
                said.extend(holders.iter().map(|(h, e)| format!("{h}: {e}")));
                said.extend(
                    answer
                        .unanswered
                        .iter()
                        .map(|u| format!("node {} did not answer: {}", u.id, u.reason)),
                );
            }
        }
        if let (true, Err(e)) = (managers.is_empty(), &**lookup) {
            return write!(
                f,
                "this node knows no manager to fetch image {image} from (looking up other \
                 nodes: {e})"
            );
        }
        if self.none_has_it() {
            write!(
                f,
                "no node has it ({}); put it on any node with berth image import, load or pull",
                said.join("; ")
            )
        } else {
            write!(f, "no node gave it ({})", said.join("; "))
        }
    }
}

impl std::error::Error for ClusterFetchError {}

/// Fetches the image `reference` names into the image store of `state_dir`, over
/// mutual TLS with `tls` (this node's HTTP client configuration,
/// `manager::port::http_client_config`): from the first of `managers` (cluster
/// addresses, `host:port`) that has it, else from the first node `holders` names that
/// gives it. Blocking: one request at a time.
pub(crate) fn fetch(
    state_dir: &Path,
    reference: &Reference,
    managers: &[String],
    holders: &dyn Fn(&Reference) -> Result<HoldersAnswer, String>,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Image, ClusterFetchError> {
    let image = reference.familiar();
    let store = ImageStore::open(state_dir).map_err(ClusterFetchError::Store)?;
    let fetched = |what: &str, f: peer::Fetched| {
        eprintln!(
            "berth daemon: fetched image {image} from {what} ({} blobs, {} bytes; the rest \
             was here)",
            f.blobs, f.bytes
        );
        f.image
    };
    let mut tried = Vec::new();
    for addr in managers {
        match peer::fetch(&store, reference, &NodeSource::manager(addr, tls.clone())) {
            Ok(f) => return Ok(fetched(&format!("manager {addr}"), f)),
            Err(e) => tried.push((addr.clone(), e)),
        }
    }
    let lookup = holders(reference);
    let mut failed = Vec::new();
    if let Ok(answer) = &lookup {
        // The managers were asked already, by address.
        for h in answer
            .holders
            .iter()
            .filter(|h| !managers.contains(&h.addr))
        {
            let got = NodeSource::node(h, tls.clone())
                .and_then(|source| peer::fetch(&store, reference, &source));
            match got {
                Ok(f) => return Ok(fetched(&h.to_string(), f)),
                Err(e) => failed.push((h.clone(), e)),
            }
        }
    }
    Err(ClusterFetchError::Nodes {
        image,
        managers: tried,
        lookup: Box::new(lookup),
        holders: failed,
    })
}

/// The executor's [`ImageSource`] on a cluster node: the managers, each asked in turn,
/// then the other nodes that hold the image.
pub(crate) struct ClusterImages {
    state_dir: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    managers: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    holders: HolderLookup,
}

impl ClusterImages {
    /// Images for the node with state directory `state_dir`, fetched with `tls` (this
    /// node's HTTP client configuration, `manager::port::http_client_config`) from the
    /// managers `managers` lists when an image is wanted (the list changes with the
    /// cluster: a worker learns it from its heartbeats and keeps it in
    /// `<state>/cluster/config.json`), then from the nodes `holders` finds.
    pub(crate) fn new(
        state_dir: &Path,
        tls: Arc<rustls::ClientConfig>,
        managers: impl Fn() -> Vec<String> + Send + Sync + 'static,
        holders: HolderLookup,
    ) -> ClusterImages {
        ClusterImages {
            state_dir: state_dir.to_path_buf(),
            tls,
            managers: Box::new(managers),
            holders,
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
        match fetch(
            &self.state_dir,
            reference,
            &managers,
            &*self.holders,
            self.tls.clone(),
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.none_has_it() => Err(ImageSourceError::NotFound(e.to_string())),
            Err(e) => Err(ImageSourceError::Unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Both ends over real cluster ports (mutual TLS on 127.0.0.1), between stores in
    //! temporary directories: nodes with busybox imported or none, and a worker's store
    //! that fetches.

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

    /// A node serving its images on a cluster port: a manager's (Raft and HTTP, as a
    /// manager's port) or a worker's (HTTP only), with busybox as `app:1` or nothing.
    struct Node {
        dir: tempfile::TempDir,
        addr: String,
        image: Option<Image>,
        _port: manager::port::Port,
        rt: tokio::runtime::Runtime,
    }

    impl Node {
        fn start(ca: &Ca, name: &str, role: Role, with_image: bool) -> Node {
            let dir = tempfile::tempdir().expect("tempdir");
            let state = dir.path().join("state");
            let store = ImageStore::open(&state).expect("the node's store");
            let image = with_image.then(|| {
                let tar = testkit::busybox_rootfs_tar(dir.path()).expect("busybox rootfs tar");
                agent::image::import(&store, &tar, "app:1").expect("import")
            });
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let creds = creds(ca, name, role);
            let server = match role {
                Role::Manager => manager::port::server_config(&creds, &DenyList::new()),
                _ => manager::port::http_server_config(&creds, &DenyList::new()),
            }
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
            Node {
                dir,
                addr,
                image,
                _port: port,
                rt,
            }
        }

        fn image(&self) -> &Image {
            self.image.as_ref().expect("a node with the image")
        }

        fn store(&self) -> ImageStore {
            ImageStore::open(&self.dir.path().join("state")).expect("the node's store")
        }

        /// This node, as a lookup names it.
        fn holder(&self, id: &str) -> Holder {
            Holder {
                id: id.into(),
                hostname: format!("host-{id}"),
                addr: self.addr.clone(),
                digest: None,
            }
        }
    }

    /// A lookup that answers `holders`, every node asked having answered.
    fn found(holders: Vec<Holder>) -> impl Fn(&Reference) -> Result<HoldersAnswer, String> {
        move |_| {
            Ok(HoldersAnswer {
                asked: holders.len() + 1,
                holders: holders.clone(),
                unanswered: Vec::new(),
            })
        }
    }

    /// An address where no node answers (a node that is down).
    fn down() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        addr
    }

    #[test]
    fn an_image_moves_from_a_manager_to_a_worker() {
        let ca = Ca::create(SystemTime::now()).expect("CA");
        let manager = Node::start(&ca, "m1", Role::Manager, true);
        let worker = tempfile::tempdir().expect("tempdir");
        let managers = [down(), manager.addr.clone()];

        let image = fetch(
            worker.path(),
            &reference("app:1"),
            &managers,
            &|_: &Reference| -> Result<HoldersAnswer, String> {
                panic!("a manager had it: no lookup")
            },
            tls(&ca, "w1", Role::Worker),
        )
        .expect("fetched from the second manager");
        assert_eq!(&image, manager.image());
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
    fn a_missing_image_names_every_node_asked_and_why() {
        let ca = Ca::create(SystemTime::now()).expect("CA");
        let manager = Node::start(&ca, "m1", Role::Manager, false);
        let worker = tempfile::tempdir().expect("tempdir");
        let dead = down();
        let images = |managers: Vec<String>, lookup: HolderLookup| {
            ClusterImages::new(
                worker.path(),
                tls(&ca, "w1", Role::Worker),
                move || managers.clone(),
                lookup,
            )
        };

        // Every node answered and none has it: not worth retrying.
        let err = images(vec![manager.addr.clone()], Box::new(found(Vec::new())))
            .fetch(&reference("nope:1"))
            .expect_err("no node has it");
        assert_eq!(
            err,
            ImageSourceError::NotFound(format!(
                "no node has it (manager {}: it has no image nope:1; no other node has it (1 \
                 asked)); put it on any node with berth image import, load or pull",
                manager.addr
            ))
        );

        // One manager could not be asked: it may have it, so worth retrying.
        let err = images(
            vec![dead.clone(), manager.addr.clone()],
            Box::new(found(Vec::new())),
        )
        .fetch(&reference("nope:1"))
        .expect_err("no node gave it");
        let ImageSourceError::Unavailable(text) = &err else {
            panic!("expected Unavailable: {err:?}");
        };
        assert!(
            text.starts_with(&format!(
                "no node gave it (manager {dead}: manifest of nope:1: no berth manager answers on {dead}"
            )),
            "{text}"
        );
        assert!(
            text.ends_with(&format!(
                "manager {}: it has no image nope:1; no other node has it (1 asked))",
                manager.addr
            )),
            "{text}"
        );

        // A node that did not answer the lookup may have it: worth retrying.
        let silent: HolderLookup = Box::new(|_: &Reference| {
            Ok(HoldersAnswer {
                holders: Vec::new(),
                asked: 2,
                unanswered: vec![Unanswered {
                    id: "w9".into(),
                    reason: "no answer within 3 s".into(),
                }],
            })
        });
        let err = images(vec![manager.addr.clone()], silent)
            .fetch(&reference("nope:1"))
            .expect_err("no node gave it");
        assert_eq!(
            err,
            ImageSourceError::Unavailable(format!(
                "no node gave it (manager {}: it has no image nope:1; no other node has it (2 \
                 asked); node w9 did not answer: no answer within 3 s)",
                manager.addr
            ))
        );

        // A worker that knows no manager can neither fetch nor look up.
        let tls_w1 = tls(&ca, "w1", Role::Worker);
        let err = images(Vec::new(), holders_from_managers(Vec::new, tls_w1))
            .fetch(&reference("nope:1"))
            .expect_err("no managers");
        assert_eq!(
            err.to_string(),
            "this node knows no manager to fetch image nope:1 from (looking up other nodes: no \
             manager known)"
        );
    }

    #[test]
    fn an_image_only_on_another_worker_comes_from_it() {
        let ca = Ca::create(SystemTime::now()).expect("CA");
        let manager = Node::start(&ca, "m1", Role::Manager, false);
        let other = Node::start(&ca, "w2", Role::Worker, true);
        let worker = tempfile::tempdir().expect("tempdir");
        let images = |lookup: HolderLookup| {
            ClusterImages::new(
                worker.path(),
                tls(&ca, "w1", Role::Worker),
                {
                    let managers = vec![manager.addr.clone()];
                    move || managers.clone()
                },
                lookup,
            )
        };

        // The lookup names a node at w2's address that is not w2: its certificate does
        // not match, so nothing is taken from it, and the error names it.
        let err = images(Box::new(found(vec![other.holder("w3")])))
            .fetch(&reference("app:1"))
            .expect_err("not the node named");
        let ImageSourceError::Unavailable(text) = &err else {
            panic!("expected Unavailable: {err:?}");
        };
        assert!(
            text.contains(&format!("node w3 (host-w3, {}): ", other.addr)),
            "{text}"
        );
        assert!(ImageStore::open(worker.path())
            .expect("worker's store")
            .blobs()
            .expect("blobs")
            .is_empty());

        // The manager lacks it; worker w2 has it and gives it.
        images(Box::new(found(vec![other.holder("w2")])))
            .fetch(&reference("app:1"))
            .expect("fetched from w2");
        let store = ImageStore::open(worker.path()).expect("worker's store");
        let here = store.image(&reference("app:1")).expect("registered");
        assert_eq!(&here, other.image());
        assert!(store.layer_dirs(&here).expect("unpacked")[0]
            .join("bin/busybox")
            .is_file());
    }

    #[test]
    fn a_lookup_asks_every_node_at_once_and_waits_for_none() {
        let ca = Ca::create(SystemTime::now()).expect("CA");
        let manager = Node::start(&ca, "m1", Role::Manager, false);
        let other = Node::start(&ca, "w2", Role::Worker, true);
        // Accepts connections and never answers: a paused node.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let candidate = |id: &str, addr: &str| Candidate {
            id: id.into(),
            hostname: format!("host-{id}"),
            addr: addr.into(),
        };
        let candidates = vec![
            candidate("m1", &manager.addr),
            candidate("w2", &other.addr),
            candidate("w3", &down()),
            candidate("w4", &silent.local_addr().expect("addr").to_string()),
        ];
        let started = std::time::Instant::now();
        let answers = manager.rt.block_on(probe_all(
            &candidates,
            tls(&ca, "m1", Role::Manager),
            &reference("app:1"),
            Duration::from_millis(500),
            64,
            Duration::from_secs(5),
        ));
        assert!(started.elapsed() < Duration::from_secs(3), "{answers:?}");
        let digest = other.image().manifest_digest.to_string();
        assert_eq!(answers[0], Some(Ok(None)), "m1 lacks it");
        assert_eq!(
            answers[1],
            Some(Ok(Some(Some(digest.clone())))),
            "w2 has it"
        );
        assert!(
            matches!(&answers[2], Some(Err(e)) if e.starts_with("no answer on ")),
            "{answers:?}"
        );
        assert_eq!(
            answers[3],
            Some(Err("no answer within 500ms".into())),
            "w4 says nothing"
        );

        // A deadline shorter than one node's answer: the nodes not heard from are named.
        let answers = manager.rt.block_on(probe_all(
            &candidates[3..],
            tls(&ca, "m1", Role::Manager),
            &reference("app:1"),
            Duration::from_secs(5),
            64,
            Duration::from_millis(300),
        ));
        assert_eq!(answers, vec![None]);

        let own = (candidate("m0", "10.0.0.1:7377"), Ok(None));
        let answer = answer_of(
            Some(own),
            &candidates,
            vec![
                Some(Ok(None)),
                Some(Ok(Some(Some(digest.clone())))),
                Some(Err("no answer on x".into())),
                None,
            ],
            Duration::from_secs(10),
        );
        assert_eq!(
            answer,
            HoldersAnswer {
                holders: vec![Holder {
                    id: "w2".into(),
                    hostname: "host-w2".into(),
                    addr: other.addr.clone(),
                    digest: Some(digest),
                }],
                asked: 5,
                unanswered: vec![
                    Unanswered {
                        id: "w3".into(),
                        reason: "no answer on x".into()
                    },
                    Unanswered {
                        id: "w4".into(),
                        reason: "not asked or no answer within the lookup's 10s".into()
                    },
                ],
            }
        );
    }

    #[test]
    fn a_lookup_asks_the_other_nodes_not_known_to_be_down() {
        let view = |id: &str, status: &str| -> NodeView {
            serde_json::from_value(serde_json::json!({
                "id": id, "role": "worker", "addr": format!("{id}:7377"),
                "hostname": format!("host-{id}"), "joined_at": 0, "leader": false,
                "status": status, "reachability": "unknown", "raft": "-", "matched": 0,
            }))
            .expect("a node view")
        };
        let nodes = vec![
            view("w3", "ready"),
            view("m1", "ready"),
            view("w1", "ready"),
            view("w2", "down"),
            view("w4", "unknown"),
        ];
        let ids = |c: Vec<Candidate>| c.into_iter().map(|c| c.id).collect::<Vec<_>>();
        // Not itself (its store is read directly), not the caller, not a down node; an
        // unknown status is asked.
        assert_eq!(ids(to_ask(&nodes, "m1", Some("w1"))), ["w3", "w4"]);
        assert_eq!(ids(to_ask(&nodes, "m1", None)), ["w1", "w3", "w4"]);
        let w3 = to_ask(&nodes, "m1", None).remove(1);
        assert_eq!(
            w3,
            Candidate {
                id: "w3".into(),
                hostname: "host-w3".into(),
                addr: "w3:7377".into()
            }
        );
    }

    #[test]
    fn only_cluster_nodes_are_served() {
        let ca = Ca::create(SystemTime::now()).expect("CA");
        let manager = Node::start(&ca, "m1", Role::Manager, true);
        let worker = tempfile::tempdir().expect("tempdir");
        let fetch = |tls| {
            super::fetch(
                worker.path(),
                &reference("app:1"),
                std::slice::from_ref(&manager.addr),
                &found(Vec::new()),
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
        let manager = Node::start(&ca, "m1", Role::Manager, true);
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
        let layer = &manager.image().layers[0];
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
}

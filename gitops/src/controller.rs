//! The controller: the I/O shell around [`crate::plan`]. On the leader only, one task
//! per source watches its directory (inotify, through `notify`), waits for a short
//! quiet window so that an editor's rename or a `git checkout` of many files is one
//! change, loads the stacks the change touched, and reconciles: plan against the store,
//! images made present, deployments in one store transaction, prunes through `down`.
//! A resync of every stack (default every 60 s), a `berth gitops sync`, and any change
//! to the store (for drift) reconcile too; a pass that finds nothing to do writes
//! nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use manager::api::NodeAgent;
use manager::state::store::{Store, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::plan::{self, Found, Good, Read};
use crate::scan;

/// How long a source's files must be quiet before a change is read: enough for an
/// editor's write-and-rename or a checkout of many files to land as one change.
pub const QUIET: Duration = Duration::from_millis(80);
/// The longest a change waits for quiet (a directory written to without pause is still
/// read this often).
pub const MAX_WAIT: Duration = Duration::from_millis(500);
/// Drift checks after store changes are at most this often.
const DRIFT_EVERY: Duration = Duration::from_millis(200);

/// What the controller needs of the node for images: each service's image present
/// where its tasks can get it (pulled if missing), or why it cannot be. Blocking.
pub trait Images: Send + Sync + 'static {
    fn ensure(&self, stack: &spec::Stack) -> Result<(), String>;
}

/// How a source's files come to be on this host: a local directory is where it is; a
/// remote repository is fetched into a checkout under the state directory.
pub trait Fetcher: Send + Sync + 'static {
    /// The directory holding the source's stacks, and the commit it is at (empty: not a
    /// git checkout) with a dirty flag. Blocking.
    fn fetch(
        &self,
        source: &manager::state::gitops::Source,
    ) -> Result<(PathBuf, String, bool), String>;
}

/// The controller's shared parts.
#[derive(Clone)]
pub struct Controller {
    pub store: Arc<Store>,
    pub node: Arc<dyn NodeAgent>,
    pub images: Arc<dyn Images>,
    pub fetcher: Arc<dyn Fetcher>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

impl Controller {
    /// Runs the sources of the store while this manager leads, forever.
    pub async fn run(self) {
        let mut running: HashMap<String, (JoinHandle<()>, manager::state::gitops::SourceKind)> =
            HashMap::new();
        let mut watch = self.store.watch();
        loop {
            let leader = self.store.is_leader();
            let wanted: BTreeMap<String, manager::state::gitops::SourceKind> = if leader {
                self.store.read(|s| {
                    s.gitops
                        .iter()
                        .map(|(k, v)| (k.clone(), v.kind.clone()))
                        .collect()
                })
            } else {
                BTreeMap::new()
            };
            running.retain(|name, (handle, kind)| {
                let keep = !handle.is_finished() && wanted.get(name) == Some(kind);
                if !keep {
                    handle.abort();
                }
                keep
            });
            for (name, kind) in wanted {
                if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(name) {
                    let handle = tokio::spawn(self.clone().source_loop(slot.key().clone()));
                    slot.insert((handle, kind));
                }
            }
            // Leadership changes without a store change: look again soon.
            let _ = tokio::time::timeout(Duration::from_millis(250), watch.changed()).await;
        }
    }

    /// One source's loop: watch, wait for quiet, read, reconcile.
    async fn source_loop(self, name: String) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
        let mut watcher: Option<(PathBuf, notify::RecommendedWatcher)> = None;
        let mut cache: Cache = Cache::default();
        let mut store_watch = self.store.watch();
        let mut pending: BTreeSet<PathBuf> = BTreeSet::new();
        let mut first_change: Option<Instant> = None;
        let mut last_change = Instant::now();
        // The first pass reads everything.
        let mut full = true;
        let mut next_resync = Instant::now();
        let mut last_drift = Instant::now();
        loop {
            let Some(source) = self.store.read(|s| s.gitops.get(&name).cloned()) else {
                return;
            };
            let asked = source.sync_requested != source.synced;
            let now = Instant::now();
            let quiet = first_change
                .is_some_and(|first| now >= last_change + QUIET || now >= first + MAX_WAIT);
            if full || asked || now >= next_resync || quiet {
                let paths = std::mem::take(&mut pending);
                first_change = None;
                let whole = full || asked || now >= next_resync;
                full = false;
                let this = self.clone();
                let (n, src) = (name.clone(), source.clone());
                let mut c = std::mem::take(&mut cache);
                let result = tokio::task::spawn_blocking(move || {
                    let changed = if whole { None } else { Some(paths) };
                    let read = this.read(&src, &mut c, changed);
                    (this.reconcile_blocking(&n, &read), read, c)
                })
                .await;
                let Ok((outcome, read, c)) = result else {
                    return;
                };
                cache = c;
                cache.last = Some(read);
                if let Some(prunes) = outcome {
                    self.prune(&name, prunes).await;
                }
                if asked {
                    let wanted = source.sync_requested;
                    let _ = self.store.update(|s| {
                        if let Some(src) = s.gitops.get_mut(&name) {
                            src.synced = src.synced.max(wanted);
                        }
                        Ok(())
                    });
                }
                if whole {
                    next_resync = Instant::now() + period(&source);
                }
                // The watcher follows the directory a local source is read from (a
                // remote's checkout changes only when it is fetched).
                let local = matches!(source.kind, manager::state::gitops::SourceKind::Dir { .. });
                if let Some(root) = cache.root.clone().filter(|_| local) {
                    if watcher.as_ref().map(|(p, _)| p) != Some(&root) {
                        watcher = watch_dir(&root, tx.clone());
                    }
                }
                continue;
            }
            let deadline = match first_change {
                Some(first) => (last_change + QUIET).min(first + MAX_WAIT),
                None => next_resync,
            };
            tokio::select! {
                Some(paths) = rx.recv() => {
                    let relevant: Vec<PathBuf> = paths
                        .into_iter()
                        .filter(|p| cache.relevant(p))
                        .collect();
                    if !relevant.is_empty() {
                        let now = Instant::now();
                        first_change.get_or_insert(now);
                        last_change = now;
                        pending.extend(relevant);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
                changed = store_watch.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Drift: what runs checked against the last read, not too often.
                    if last_drift.elapsed() < DRIFT_EVERY {
                        tokio::time::sleep(DRIFT_EVERY - last_drift.elapsed()).await;
                    }
                    last_drift = Instant::now();
                    if let Some(read) = cache.last.clone() {
                        let this = self.clone();
                        let n = name.clone();
                        let outcome = tokio::task::spawn_blocking(move || {
                            this.reconcile_blocking(&n, &read)
                        })
                        .await
                        .ok()
                        .flatten();
                        if let Some(prunes) = outcome {
                            self.prune(&name, prunes).await;
                        }
                    }
                }
            }
        }
    }

    /// Reads the source: fetches it if remote, lists its stacks, and loads those that
    /// `changed` touches (None: all of them), reusing the cached loads of the rest.
    fn read(
        &self,
        source: &manager::state::gitops::Source,
        cache: &mut Cache,
        changed: Option<BTreeSet<PathBuf>>,
    ) -> Result<Read, String> {
        let (root, commit, dirty) = self.fetcher.fetch(source)?;
        if cache.root.as_ref() != Some(&root) {
            cache.loads.clear();
            cache.root = Some(root.clone());
        }
        let listing = scan::list(&root)?;
        let keys: scan::Keys = match &source.age_key_file {
            Some(f) => crate::sops::Identities::from_file(Path::new(f))
                .map(Arc::new)
                .map_err(|e| e.to_string()),
            None => Err("no --age-key-file".to_string()),
        };
        let mut stacks = BTreeMap::new();
        let mut loads = BTreeMap::new();
        for entry in &listing.entries {
            let cached = cache.loads.remove(&entry.name).filter(|(e, _, uses)| {
                e == entry
                    && changed
                        .as_ref()
                        .is_some_and(|paths| !paths.iter().any(|p| touches(&root, entry, uses, p)))
            });
            let (found, uses) = match cached {
                Some((_, found, uses)) => (found, uses),
                None => match scan::load(&root, entry, &keys) {
                    Ok(loaded) => (
                        Found {
                            rel: entry.rel.clone(),
                            load: Ok(Good {
                                record: loaded.record,
                                digest: loaded.digest,
                            }),
                        },
                        loaded.uses,
                    ),
                    Err(errors) => (
                        Found {
                            rel: entry.rel.clone(),
                            load: Err(errors),
                        },
                        // A file that does not load is read again on any change under
                        // its entry.
                        BTreeSet::new(),
                    ),
                },
            };
            stacks.insert(entry.name.clone(), found.clone());
            loads.insert(entry.name.clone(), (entry.clone(), found, uses));
        }
        for (name, (rel, why)) in listing.refused {
            stacks.insert(
                name,
                Found {
                    rel,
                    load: Err(vec![why]),
                },
            );
        }
        cache.loads = loads;
        Ok(Read {
            stacks,
            commit,
            dirty,
        })
    }

    /// Plans source `name` against the store and carries out what it can in one
    /// transaction (deployments, status); returns the prunes to make (None: nothing
    /// to do). Blocking.
    fn reconcile_blocking(
        &self,
        name: &str,
        read: &Result<Read, String>,
    ) -> Option<Vec<plan::Prune>> {
        let now = spec::task::now_ms();
        let first = self.store.read(|s| {
            let before = s.gitops.get(name)?;
            let d = plan::decide(s, name, read, now)?;
            d.changes(before).then_some(d)
        })?;
        // Images first, off the store: a deployment whose image cannot be had is
        // reported and not made, and what runs keeps running.
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        for d in &first.deploys {
            if let Err(e) = self.images.ensure(&d.record.stack) {
                failed.insert(d.stack.clone(), e);
            }
        }
        let result = self.store.update(|s| {
            let Some(d) = plan::decide(s, name, read, now) else {
                return Ok(Vec::new());
            };
            s.gitops.insert(name.to_string(), d.source.clone());
            for dep in &d.deploys {
                match failed.get(&dep.stack) {
                    Some(e) => plan::apply_failure(s, name, dep, e, now),
                    // A deployment the first plan had not (the store changed in
                    // between) goes ahead: a missing image fails its task, visibly.
                    None => plan::apply_deploy(s, name, dep, now),
                }
            }
            Ok(d.prunes)
        });
        match result {
            Ok(prunes) => Some(prunes),
            Err(e) => {
                eprintln!("berth daemon: git-ops source {name}: the store refused a sync: {e}");
                None
            }
        }
    }

    /// Takes down the stacks a source no longer holds, then records it.
    async fn prune(&self, name: &str, prunes: Vec<plan::Prune>) {
        for p in prunes {
            let outcome =
                manager::api::stacks::take_down(&self.store, &self.node, &p.stack, p.volumes, None)
                    .await;
            let error = outcome.err().map(|e| e.error);
            let now = spec::task::now_ms();
            let recorded: Result<(), StoreError> = self.store.update(|s| {
                plan::apply_prune(s, name, &p.stack, error.as_deref(), now);
                Ok(())
            });
            if let Err(e) = recorded {
                eprintln!("berth daemon: git-ops source {name}: recording a prune: {e}");
            }
        }
    }

    /// What the next sync of source `name` would do, changing nothing: each stack's
    /// action and reasons, and the prunes. Blocking.
    pub fn plan(&self, name: &str) -> Result<Vec<(String, String, Vec<String>)>, String> {
        let source = self
            .store
            .read(|s| s.gitops.get(name).cloned())
            .ok_or_else(|| {
                format!("no git-ops source named {name:?} (berth gitops ls lists them)")
            })?;
        let read = self.read(&source, &mut Cache::default(), None);
        let now = spec::task::now_ms();
        let d = self
            .store
            .read(|s| plan::decide(s, name, &read, now))
            .ok_or_else(|| format!("no git-ops source named {name:?}"))?;
        if let Err(e) = &read {
            return Err(e.clone());
        }
        let mut out = Vec::new();
        for dep in &d.deploys {
            out.push((
                dep.stack.clone(),
                dep.action.to_string(),
                dep.reasons.clone(),
            ));
        }
        for p in &d.prunes {
            let what = if p.volumes {
                "prune (and its volumes)"
            } else {
                "prune"
            };
            out.push((
                p.stack.clone(),
                what.to_string(),
                vec!["gone from the source".to_string()],
            ));
        }
        for (stack, st) in &d.source.stacks {
            if out.iter().any(|(s, _, _)| s == stack) {
                continue;
            }
            let reasons = if st.error.is_empty() {
                Vec::new()
            } else {
                st.error.lines().map(str::to_string).collect()
            };
            out.push((stack.clone(), st.result.as_str().to_string(), reasons));
        }
        out.sort();
        Ok(out)
    }
}

/// How often a source is read in whole: a local directory at its resync period (its
/// changes are watched), a remote at its fetch interval if shorter.
fn period(source: &manager::state::gitops::Source) -> Duration {
    match &source.kind {
        manager::state::gitops::SourceKind::Git { interval_ms, .. } if *interval_ms > 0 => {
            source.resync().min(Duration::from_millis(*interval_ms))
        }
        _ => source.resync(),
    }
}

/// What a source loop remembers between passes.
#[derive(Default)]
struct Cache {
    root: Option<PathBuf>,
    /// Each stack's entry, load and the files it used.
    loads: BTreeMap<String, (scan::Entry, Found, BTreeSet<PathBuf>)>,
    /// The last read, for drift checks between changes.
    last: Option<Result<Read, String>>,
}

impl Cache {
    /// Whether a change to `path` may matter: under the root and not in a hidden
    /// folder (`.git`), unless a stack uses it.
    fn relevant(&self, path: &Path) -> bool {
        let Some(root) = &self.root else {
            return true;
        };
        let Ok(rel) = path.strip_prefix(root) else {
            // Outside the root: only a file a stack uses (an env file of `../`).
            return self.loads.values().any(|(_, _, uses)| uses.contains(path));
        };
        // A commit, a checkout or `git add` moves the checkout's HEAD, refs or index:
        // status follows (the commit and dirty flag), without loading any stack.
        let git_state = rel.starts_with(".git")
            && ["HEAD", "index", "packed-refs"]
                .iter()
                .any(|f| rel == Path::new(".git").join(f))
            || rel.starts_with(".git/refs/heads");
        let hidden = rel
            .components()
            .any(|c| c.as_os_str().to_str().is_some_and(|s| s.starts_with('.')));
        git_state || !hidden || self.loads.values().any(|(_, _, uses)| uses.contains(path))
    }
}

/// Whether a change to `path` touches stack `entry` (its file or folder, or a file it
/// uses).
fn touches(root: &Path, entry: &scan::Entry, uses: &BTreeSet<PathBuf>, path: &Path) -> bool {
    if uses.contains(path) {
        return true;
    }
    let own = root.join(&entry.rel);
    path == root || path.starts_with(&own) || path == own
}

/// Watches `root` recursively, sending the paths of each change to `tx`.
fn watch_dir(
    root: &Path,
    tx: mpsc::UnboundedSender<Vec<PathBuf>>,
) -> Option<(PathBuf, notify::RecommendedWatcher)> {
    use notify::Watcher as _;
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if !event.kind.is_access() {
                let _ = tx.send(event.paths);
            }
        }
    })
    .map_err(|e| {
        eprintln!(
            "berth daemon: git-ops: cannot watch {}: {e}",
            root.display()
        )
    })
    .ok()?;
    watcher
        .watch(root, notify::RecursiveMode::Recursive)
        .map_err(|e| {
            eprintln!(
                "berth daemon: git-ops: cannot watch {}: {e}",
                root.display()
            )
        })
        .ok()?;
    Some((root.to_path_buf(), watcher))
}

/// The fetcher of local directories (remote repositories are not fetched by it).
#[derive(Debug, Default)]
pub struct LocalDirs;

impl Fetcher for LocalDirs {
    fn fetch(
        &self,
        source: &manager::state::gitops::Source,
    ) -> Result<(PathBuf, String, bool), String> {
        match &source.kind {
            manager::state::gitops::SourceKind::Dir { path } => {
                let root = PathBuf::from(path);
                if !root.is_dir() {
                    return Err(format!(
                        "the source directory {path} does not exist or is not a directory"
                    ));
                }
                let (commit, dirty) = crate::checkout_state(&root);
                Ok((root, commit, dirty))
            }
            manager::state::gitops::SourceKind::Git { url, .. } => Err(format!(
                "{url}: remote repositories are not fetched by this berth"
            )),
        }
    }
}

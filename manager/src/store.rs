//! The store: berth's desired and observed state (stacks and tasks) as typed objects,
//! changed only in transactions, persisted before a transaction returns, and watched by
//! the orchestrator, the agent and the API.
//!
//! Persistence is behind [`Backend`]: today [`FileBackend`] writes the whole state as
//! one JSON file (temporary file, fsync, rename, fsync of the directory), so a crash
//! leaves the previous or the next state, never half of one. The Raft issue puts a
//! replicated log behind the same seam; callers do not change.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use spec::task::{StackRecord, Task};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a berth state file ({message}); move it away to start afresh")]
    Corrupt { path: PathBuf, message: String },
    #[error("{0}")]
    Rejected(String),
}

/// Everything the store holds. `version` counts committed transactions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u64,
    pub stacks: BTreeMap<String, StackRecord>,
    pub tasks: BTreeMap<String, Task>,
}

/// One change to the state, as a transaction is replicated: the Raft log carries these,
/// not closures. [`diff`] makes them from two states, [`apply_ops`] replays them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    PutStack(String, Box<StackRecord>),
    DeleteStack(String),
    PutTask(String, Box<Task>),
    DeleteTask(String),
}

/// The changes that turn `old` into `new` (the version aside). Pure.
pub fn diff(old: &State, new: &State) -> Vec<Op> {
    fn changes<V: PartialEq + Clone>(
        old: &BTreeMap<String, V>,
        new: &BTreeMap<String, V>,
        put: impl Fn(String, Box<V>) -> Op,
        delete: impl Fn(String) -> Op,
    ) -> Vec<Op> {
        let gone = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| delete(k.clone()));
        let changed = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, v)| put(k.clone(), Box::new(v.clone())));
        gone.chain(changed).collect()
    }
    let mut ops = changes(&old.stacks, &new.stacks, Op::PutStack, Op::DeleteStack);
    ops.extend(changes(&old.tasks, &new.tasks, Op::PutTask, Op::DeleteTask));
    ops
}

/// Replays `ops` on `state` (the version aside): what every replica does with a
/// committed transaction. Pure and deterministic.
pub fn apply_ops(state: &mut State, ops: &[Op]) {
    for op in ops {
        match op {
            Op::PutStack(k, v) => {
                state.stacks.insert(k.clone(), (**v).clone());
            }
            Op::DeleteStack(k) => {
                state.stacks.remove(k);
            }
            Op::PutTask(k, v) => {
                state.tasks.insert(k.clone(), (**v).clone());
            }
            Op::DeleteTask(k) => {
                state.tasks.remove(k);
            }
        }
    }
}

/// Where committed states go and come back from.
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn load(&self) -> Result<Option<State>, StoreError>;
    fn save(&self, state: &State) -> Result<(), StoreError>;
}

/// One JSON file, replaced atomically on every commit.
#[derive(Debug)]
pub struct FileBackend {
    path: PathBuf,
}

impl FileBackend {
    pub fn new(path: impl Into<PathBuf>) -> FileBackend {
        FileBackend { path: path.into() }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Backend for FileBackend {
    fn load(&self) -> Result<Option<State>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        path: self.path.clone(),
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&self.path)(e)),
        }
    }

    fn save(&self, state: &State) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    }
}

/// The store. Reads see the last committed state; [`Store::update`] runs a closure on
/// a copy and commits it only if the closure succeeds and the backend saved it.
#[derive(Debug)]
pub struct Store {
    state: Mutex<State>,
    backend: Box<dyn Backend>,
    changed: watch::Sender<u64>,
}

impl Store {
    pub fn open(backend: Box<dyn Backend>) -> Result<Store, StoreError> {
        let state = backend.load()?.unwrap_or_default();
        let (changed, _) = watch::channel(state.version);
        Ok(Store {
            state: Mutex::new(state),
            backend,
            changed,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the last committed state in place
        // (transactions work on a copy), so the state behind a poisoned lock is good.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of the committed state.
    pub fn snapshot(&self) -> State {
        self.lock().clone()
    }

    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock())
    }

    /// Runs `f` on a copy of the state and commits the copy (persisted, version bumped,
    /// watchers woken) if `f` returns Ok and changed anything.
    pub fn update<R>(
        &self,
        f: impl FnOnce(&mut State) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        let result = f(&mut next)?;
        next.version = guard.version;
        if next != *guard {
            next.version += 1;
            self.backend.save(&next)?;
            *guard = next;
            self.changed.send_replace(guard.version);
        }
        Ok(result)
    }

    /// A receiver that sees the version of every commit.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Store {
        Store::open(Box::new(FileBackend::new(dir.join("state.json")))).expect("open")
    }

    #[test]
    fn commits_persist_and_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let mut watch = store.watch();
        store
            .update(|s| {
                s.stacks.insert(
                    "a".into(),
                    serde_json::from_str(r#"{"stack":{"name":"a"}}"#).unwrap(),
                );
                Ok(())
            })
            .unwrap();
        assert!(watch.has_changed().unwrap());
        assert_eq!(*watch.borrow_and_update(), 1);
        let again = open(tmp.path());
        assert_eq!(again.snapshot(), store.snapshot());
        assert_eq!(again.snapshot().version, 1);
        // The file is the owner's only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("state.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_or_empty_transaction_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let err = store.update(|s| {
            s.stacks.insert(
                "a".into(),
                serde_json::from_str(r#"{"stack":{"name":"a"}}"#).unwrap(),
            );
            Err::<(), _>(StoreError::Rejected("no".into()))
        });
        assert!(err.is_err());
        store.update(|_| Ok(())).unwrap();
        assert_eq!(store.snapshot(), State::default());
        assert!(!tmp.path().join("state.json").exists());
    }

    #[test]
    fn diffs_replay_to_the_new_state() {
        let stack = |name: &str| -> StackRecord {
            serde_json::from_str(&format!(r#"{{"stack":{{"name":"{name}"}}}}"#)).unwrap()
        };
        let task = |id: &str, slot: u32| -> Task {
            serde_json::from_value(serde_json::json!({
                "id": id, "stack": "a", "service": "web", "slot": slot, "generation": 1,
                "spec_hash": "h", "desired": "running", "status": {"state": "running"},
                "created_at": 0
            }))
            .unwrap()
        };
        let mut old = State::default();
        old.stacks.insert("a".into(), stack("a"));
        old.stacks.insert("b".into(), stack("b"));
        old.tasks.insert("t1".into(), task("t1", 1));
        old.tasks.insert("t2".into(), task("t2", 2));
        let mut new = old.clone();
        new.stacks.remove("b");
        new.stacks.insert("c".into(), stack("c"));
        new.tasks.get_mut("t1").unwrap().slot = 9;
        new.tasks.remove("t2");
        new.tasks.insert("t3".into(), task("t3", 3));
        let ops = diff(&old, &new);
        // Only what changed: b gone, c new, t1 changed, t2 gone, t3 new.
        assert_eq!(ops.len(), 5, "{ops:?}");
        let mut replayed = old.clone();
        apply_ops(&mut replayed, &ops);
        assert_eq!(replayed, new);
        assert!(diff(&new, &new).is_empty());
        // The ops survive the wire.
        let wire: Vec<Op> = serde_json::from_slice(&serde_json::to_vec(&ops).unwrap()).unwrap();
        assert_eq!(wire, ops);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("state.json"), "{not json").unwrap();
        let err =
            Store::open(Box::new(FileBackend::new(tmp.path().join("state.json")))).unwrap_err();
        assert!(
            err.to_string()
                .contains("state.json is not a berth state file"),
            "{err}"
        );
    }
}

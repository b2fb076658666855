//! The durable Raft log: berth's own, small, and explicit about every fsync.
//!
//! Layout of a node's directory (created mode 0700, files 0600):
//!
//! ```text
//! DIR/snapshot          the latest snapshot (metadata + state machine bytes), one framed record
//! DIR/log/NNNN.seg      log segments, replayed in order of NNNN
//! ```
//!
//! A segment is a sequence of framed records: `len: u32 LE | crc32: u32 LE | kind: u8 |
//! payload`, where `len` counts kind + payload and the CRC covers kind + payload. Kinds:
//! an `Entry` (protobuf), a `HardState` (protobuf). Replaying the records in order
//! rebuilds the log with Raft's own rule: an entry at index `i` replaces every entry at
//! `i` and after (a new leader overwrote an uncommitted suffix). The last `HardState`
//! read wins. Every new segment starts with the current hard state, so a segment can be
//! dropped without losing the newest one.
//!
//! Durability: records are buffered by [`LogStore::append`] and
//! [`LogStore::set_hard_state`] and reach the disk in one write + `fdatasync` in
//! [`LogStore::sync`] (one per Ready). New segments are fsynced with their directory.
//! The snapshot is written to `snapshot.tmp`, fsynced, renamed over `snapshot`, and the
//! directory fsynced, so a crash leaves the old or the new snapshot, never half of one.
//!
//! Crash recovery on [`LogStore::open`]: a record cut short, or a bad record followed by
//! nothing but zeros, at the end of the *last* segment is a torn write and is truncated
//! away; any other bad record is corruption and an error naming file and offset.
//! Compaction ([`LogStore::compact`]) writes a snapshot, then deletes the segments
//! whose every entry it covers (never the active one). Installing a snapshot received
//! from the leader ([`LogStore::install_snapshot`]) writes it, then deletes every
//! segment newest first and starts a fresh one; if a crash interrupts the deletions,
//! the entries left conflict with the snapshot at its index and are discarded on open.
//!
//! The whole log above the snapshot is also kept in memory (compaction bounds it); this
//! is what [`super::storage::DiskStorage`] serves to raft-rs.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const HEADER: usize = 8;
/// Larger than any record berth writes; a length above it is corruption, not a record.
const MAX_RECORD: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("raft log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("raft log {path} is corrupt at byte {offset}: {reason}; restore this node's directory from a backup, or remove it and re-add the node to the cluster")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "raft log {dir} already holds a log; bootstrap only an empty directory (open it instead)"
    )]
    AlreadyInitialized { dir: PathBuf },
    #[error("raft log {dir}: {reason}")]
    Invalid { dir: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Tunables of the log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment that grows past this many bytes is closed and a new one started.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 8 << 20,
        }
    }
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// The highest entry index written into this segment (0 if none).
    max_index: u64,
}

/// The on-disk log of one Raft node and its in-memory copy.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    opts: LogOptions,
    hard_state: HardState,
    snapshot: Snapshot,
    /// Entries after the snapshot: `entries[0].index == snapshot index + 1`.
    entries: Vec<Entry>,
    segments: Vec<Segment>,
    active: File,
    active_len: u64,
    /// Framed records not yet written.
    pending: Vec<u8>,
    /// fdatasyncs of the log since it was opened (shows how well Readies batch).
    syncs: u64,
}

/// Appends one framed record to `out`.
pub(crate) fn frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    out.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// What reading one record at an offset found.
#[derive(Debug, PartialEq)]
enum Parsed<'a> {
    Record {
        kind: u8,
        payload: &'a [u8],
        next: usize,
    },
    /// The buffer ends inside this record: a write cut short.
    Short,
    Bad(String),
}

fn parse(buf: &[u8], off: usize) -> Parsed<'_> {
    let rest = &buf[off..];
    if rest.len() < HEADER {
        return Parsed::Short;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > MAX_RECORD {
        return Parsed::Bad(format!("record length {len} is impossible"));
    }
    if rest.len() < HEADER + len {
        return Parsed::Short;
    }
    let body = &rest[HEADER..HEADER + len];
    if crc32fast::hash(body) != crc {
        return Parsed::Bad("checksum mismatch".to_string());
    }
    Parsed::Record {
        kind: body[0],
        payload: &body[1..],
        next: off + HEADER + len,
    }
}

fn create_dir(path: &Path) -> Result<(), LogError> {
    let existed = path.is_dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(path))?;
    if !existed {
        // The new directory's own name must survive a power cut too, or the
        // segments fsynced inside it could vanish with it.
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    // An existing directory keeps its mode; the log is root's alone whatever made it.
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<(), LogError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}

fn segment_path(log_dir: &Path, seq: u64) -> PathBuf {
    log_dir.join(format!("{seq:016}.seg"))
}

fn decode<M: protobuf::Message>(path: &Path, offset: u64, bytes: &[u8]) -> Result<M, LogError> {
    M::parse_from_bytes(bytes).map_err(|e| LogError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: format!("undecodable record: {e}"),
    })
}

fn encode(m: &impl protobuf::Message) -> Vec<u8> {
    // Encoding a well-formed in-memory protobuf message cannot fail (no I/O, no
    // required fields in eraftpb); an empty record would be caught on replay.
    m.write_to_bytes().unwrap_or_default()
}

/// Writes `bytes` to `dir/name` atomically and durably: a snapshot the log was
/// compacted to is the only copy of what it replaced.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LogError> {
    let path = dir.join(name);
    atomic_file::write(&path, bytes, 0o600, atomic_file::Durability::Durable).map_err(io(&path))
}

impl LogStore {
    /// Makes a new log for the first members of a cluster: a snapshot at index 1, term
    /// 1, holding `voters` and the initial state machine bytes. A node joining an existing
    /// cluster starts from an empty directory instead and receives a snapshot.
    pub fn bootstrap(dir: &Path, voters: &[u64], data: Vec<u8>) -> Result<(), LogError> {
        create_dir(dir)?;
        if dir.join("snapshot").exists() || has_segments(&dir.join("log"))? {
            return Err(LogError::AlreadyInitialized {
                dir: dir.to_path_buf(),
            });
        }
        if voters.is_empty() || voters.contains(&0) {
            return Err(LogError::Invalid {
                dir: dir.to_path_buf(),
                reason: format!(
                    "bootstrap needs one or more voters with non-zero ids, got {voters:?}"
                ),
            });
        }
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = 1;
        meta.term = 1;
        meta.mut_conf_state().voters = voters.to_vec();
        let mut buf = Vec::new();
        frame(KIND_SNAPSHOT, &encode(&snap), &mut buf);
        write_atomically(dir, "snapshot", &buf)
    }

    /// Opens (or creates, empty) the log in `dir`, repairing a torn tail.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<LogStore, LogError> {
        create_dir(dir)?;
        let log_dir = dir.join("log");
        create_dir(&log_dir)?;
        // What a crash while writing a snapshot left (`snapshot.tmp` is the name a berth
        // before atomic-file used).
        let _ = fs::remove_file(atomic_file::temp_path(&dir.join("snapshot")));
        let _ = fs::remove_file(dir.join("snapshot.tmp"));
        let snapshot = read_snapshot(&dir.join("snapshot"))?;
        let snap_index = snapshot.get_metadata().index;
        let snap_term = snapshot.get_metadata().term;

        let mut seqs = list_segments(&log_dir)?;
        seqs.sort_unstable();
        let mut hard_state = HardState::default();
        let mut entries: Vec<Entry> = Vec::new();
        let mut segments = Vec::new();
        let count = seqs.len();
        for (i, seq) in seqs.into_iter().enumerate() {
            let path = segment_path(&log_dir, seq);
            let last = i + 1 == count;
            let max_index = replay(&path, last, &mut entries, &mut hard_state)?;
            segments.push(Segment {
                seq,
                path,
                max_index,
            });
        }

        // Entries the snapshot covers are gone from the state machine's point of view.
        // If the log disagrees with the snapshot at its index (a snapshot install was
        // interrupted before the old segments were deleted), nothing after it is ours.
        if snap_index > 0 {
            let conflict = entries
                .iter()
                .any(|e| e.index == snap_index && e.term != snap_term);
            entries.retain(|e| e.index > snap_index);
            if conflict {
                entries.clear();
            }
            hard_state.term = hard_state.term.max(snap_term);
            hard_state.commit = hard_state.commit.max(snap_index);
        }
        if let Some(first) = entries.first() {
            if first.index != snap_index + 1 {
                return Err(LogError::Invalid {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "the log starts at index {} but the snapshot ends at {snap_index}: entries are missing",
                        first.index
                    ),
                });
            }
        }

        let last_index = entries.last().map_or(snap_index, |e| e.index);
        if hard_state.commit > last_index {
            return Err(LogError::Invalid {
                dir: dir.to_path_buf(),
                reason: format!(
                    "the hard state says index {} is committed but the log ends at {last_index}: committed entries are missing",
                    hard_state.commit
                ),
            });
        }
        let seq = segments.last().map_or(1, |s| s.seq + 1);
        let mut store = LogStore {
            dir: dir.to_path_buf(),
            opts,
            hard_state,
            snapshot,
            entries,
            segments,
            // Replaced right below by a fresh segment.
            active: File::open(&log_dir).map_err(io(&log_dir))?,
            active_len: 0,
            pending: Vec::new(),
            syncs: 0,
        };
        // Always write into a new segment after a restart: the old last segment may
        // have been truncated, and appending to a file whose tail we repaired is one
        // more thing to get right.
        store.start_segment(seq)?;
        Ok(store)
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Creates segment `seq`, headed by the current hard state, fsynced with its directory.
    fn start_segment(&mut self, seq: u64) -> Result<(), LogError> {
        let log_dir = self.log_dir();
        let path = segment_path(&log_dir, seq);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        let mut head = Vec::new();
        frame(KIND_HARD_STATE, &encode(&self.hard_state), &mut head);
        f.write_all(&head).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        sync_dir(&log_dir)?;
        self.active = f;
        self.active_len = head.len() as u64;
        self.segments.push(Segment {
            seq,
            path,
            max_index: 0,
        });
        Ok(())
    }

    /// Buffers `ents` (contiguous, ascending) for the next [`LogStore::sync`]; an entry at
    /// an index already held replaces it and everything after it.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), LogError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        let snap_index = self.snapshot_index();
        if first.index <= snap_index || first.index > self.last_index() + 1 {
            return Err(LogError::Invalid {
                dir: self.dir.clone(),
                reason: format!(
                    "append at index {} outside [{}, {}]: raft asked for a gap or a rewrite of compacted entries",
                    first.index,
                    snap_index + 1,
                    self.last_index() + 1
                ),
            });
        }
        let keep = (first.index - snap_index - 1) as usize;
        self.entries.truncate(keep);
        for e in ents {
            frame(KIND_ENTRY, &encode(e), &mut self.pending);
            self.entries.push(e.clone());
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.max_index = seg.max_index.max(ents[ents.len() - 1].index);
        }
        Ok(())
    }

    /// Buffers a new hard state for the next [`LogStore::sync`].
    pub fn set_hard_state(&mut self, hs: &HardState) {
        if *hs != self.hard_state {
            self.hard_state = hs.clone();
            frame(KIND_HARD_STATE, &encode(hs), &mut self.pending);
        }
    }

    /// Records a new commit index (buffered like a hard state change).
    pub fn set_commit(&mut self, commit: u64) {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs);
    }

    /// Writes the buffered records and fdatasyncs the segment. After it returns, they
    /// survive a crash. Starts a new segment when the active one is full.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.active_path();
        self.active.write_all(&self.pending).map_err(io(&path))?;
        // fdatasync also flushes the file size, which is what appending changes.
        self.active.sync_data().map_err(io(&path))?;
        self.syncs += 1;
        self.active_len += self.pending.len() as u64;
        self.pending.clear();
        if self.active_len >= self.opts.segment_bytes {
            let seq = self.segments.last().map_or(1, |s| s.seq + 1);
            self.start_segment(seq)?;
        }
        Ok(())
    }

    fn active_path(&self) -> PathBuf {
        self.segments
            .last()
            .map_or_else(|| self.log_dir(), |s| s.path.clone())
    }

    /// Stores `snap` (taken by this node's state machine at an applied index) and drops
    /// the entries it covers, deleting the segments that hold nothing else.
    pub fn compact(&mut self, snap: Snapshot) -> Result<(), LogError> {
        let index = snap.get_metadata().index;
        if index <= self.snapshot_index() {
            return Ok(());
        }
        if index > self.last_index() {
            return Err(LogError::Invalid {
                dir: self.dir.clone(),
                reason: format!(
                    "snapshot at index {index} is past the last entry {}",
                    self.last_index()
                ),
            });
        }
        // The buffered records must be on disk before segments are judged droppable.
        self.sync()?;
        self.write_snapshot(&snap)?;
        let drop = (index - self.snapshot_index()) as usize;
        self.entries.drain(..drop);
        self.snapshot = snap;
        let last_seq = self.segments.last().map(|s| s.seq);
        let mut removed = false;
        let mut kept = Vec::new();
        // Only a prefix of the segments goes: a newer segment may hold a rewrite that
        // drops entries of an older one (Raft's rule at replay), so deleting it while
        // the older one stays would bring those entries back on the next open.
        for seg in std::mem::take(&mut self.segments) {
            if kept.is_empty() && Some(seg.seq) != last_seq && seg.max_index <= index {
                fs::remove_file(&seg.path).map_err(io(&seg.path))?;
                removed = true;
            } else {
                kept.push(seg);
            }
        }
        self.segments = kept;
        if removed {
            sync_dir(&self.log_dir())?;
        }
        Ok(())
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), LogError> {
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        self.pending.clear();
        let next_seq = self.last_seq_hint() + 1;
        self.write_snapshot(&snap)?;
        // Newest first: an interrupted deletion leaves a prefix of the old log, which
        // open() recognises as conflicting (or as covered) by the snapshot.
        for seg in self.segments.drain(..).rev() {
            fs::remove_file(&seg.path).map_err(io(&seg.path))?;
        }
        sync_dir(&self.log_dir())?;
        self.entries.clear();
        self.snapshot = snap;
        self.hard_state.term = self.hard_state.term.max(term);
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.start_segment(next_seq)
    }

    fn last_seq_hint(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.seq)
    }

    fn write_snapshot(&self, snap: &Snapshot) -> Result<(), LogError> {
        let mut buf = Vec::new();
        frame(KIND_SNAPSHOT, &encode(snap), &mut buf);
        write_atomically(&self.dir, "snapshot", &buf)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The configuration the snapshot was taken in: where raft starts on a restart
    /// before the committed entries after the snapshot (conf changes included) are
    /// applied again.
    pub fn conf_state(&self) -> &ConfState {
        self.snapshot.get_metadata().get_conf_state()
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn first_index(&self) -> u64 {
        self.snapshot_index() + 1
    }

    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// The entries in `[low, high)`; the caller checks the bounds.
    pub fn entries(&self, low: u64, high: u64) -> &[Entry] {
        let base = self.first_index();
        if low < base || high <= low {
            return &[];
        }
        let hi = ((high - base) as usize).min(self.entries.len());
        let lo = ((low - base) as usize).min(hi);
        &self.entries[lo..hi]
    }

    /// The term of entry `idx`, if this log still knows it.
    pub fn term(&self, idx: u64) -> Option<u64> {
        if idx == self.snapshot_index() {
            return Some(self.snapshot.get_metadata().term);
        }
        self.entries(idx, idx + 1).first().map(|e| e.term)
    }

    /// How many times [`LogStore::sync`] fsynced records since the log was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Number of segment files (for tests and status).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

fn has_segments(log_dir: &Path) -> Result<bool, LogError> {
    if !log_dir.exists() {
        return Ok(false);
    }
    Ok(!list_segments(log_dir)?.is_empty())
}

fn list_segments(log_dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut seqs = Vec::new();
    for ent in fs::read_dir(log_dir).map_err(io(log_dir))? {
        let ent = ent.map_err(io(log_dir))?;
        let name = ent.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            seqs.push(seq);
        }
    }
    Ok(seqs)
}

fn read_snapshot(path: &Path) -> Result<Snapshot, LogError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Snapshot::default()),
        Err(e) => return Err(io(path)(e)),
    };
    match parse(&bytes, 0) {
        Parsed::Record {
            kind: KIND_SNAPSHOT,
            payload,
            next,
        } if next == bytes.len() => decode(path, 0, payload),
        Parsed::Record { .. } => Err(LogError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "not a single snapshot record".to_string(),
        }),
        // The snapshot is renamed into place only once complete, so a short one is
        // damage, not a torn write.
        Parsed::Short => Err(LogError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "snapshot is cut short".to_string(),
        }),
        Parsed::Bad(reason) => Err(LogError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason,
        }),
    }
}

/// Replays one segment into `entries` and `hard_state`; returns the highest entry
/// index it held. In the last segment a torn tail is cut off (and the cut fsynced).
fn replay(
    path: &Path,
    last: bool,
    entries: &mut Vec<Entry>,
    hard_state: &mut HardState,
) -> Result<u64, LogError> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(io(path))?;
    let mut off = 0;
    let mut max_index = 0;
    while off < buf.len() {
        match parse(&buf, off) {
            Parsed::Record {
                kind,
                payload,
                next,
            } => {
                match kind {
                    KIND_ENTRY => {
                        let e: Entry = decode(path, off as u64, payload)?;
                        // Raft's rule: a rewrite at index i drops i and everything after.
                        while entries.last().is_some_and(|l| l.index >= e.index) {
                            entries.pop();
                        }
                        if let Some(l) = entries.last() {
                            if l.index + 1 != e.index {
                                return Err(LogError::Corrupt {
                                    path: path.to_path_buf(),
                                    offset: off as u64,
                                    reason: format!(
                                        "entry {} follows entry {}: a gap in the log",
                                        e.index, l.index
                                    ),
                                });
                            }
                        }
                        max_index = max_index.max(e.index);
                        entries.push(e);
                    }
                    KIND_HARD_STATE => *hard_state = decode(path, off as u64, payload)?,
                    other => {
                        return Err(LogError::Corrupt {
                            path: path.to_path_buf(),
                            offset: off as u64,
                            reason: format!("unknown record kind {other}"),
                        })
                    }
                }
                off = next;
            }
            bad => {
                let torn = matches!(bad, Parsed::Short) || buf[off..].iter().all(|&b| b == 0)
                    // A bad record whose claimed length runs to (or past) the end of the
                    // file is the last write, cut short or half-flushed.
                    || record_reaches_end(&buf, off);
                if last && torn {
                    truncate(path, off as u64)?;
                    break;
                }
                let reason = match bad {
                    Parsed::Bad(r) => r,
                    _ => "record cut short in a segment that is not the last".to_string(),
                };
                return Err(LogError::Corrupt {
                    path: path.to_path_buf(),
                    offset: off as u64,
                    reason,
                });
            }
        }
    }
    Ok(max_index)
}

fn record_reaches_end(buf: &[u8], off: usize) -> bool {
    let rest = &buf[off..];
    if rest.len() < 4 {
        return true;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    HEADER.saturating_add(len) >= rest.len()
}

fn truncate(path: &Path, len: u64) -> Result<(), LogError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.set_len(len).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

#[cfg(test)]
mod tests;

use std::io::{Seek, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt;

use proptest::prelude::*;

use super::*;

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("{index}@{term}").into_bytes().into(),
        ..Default::default()
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn small() -> LogOptions {
    LogOptions { segment_bytes: 512 }
}

fn open(dir: &Path) -> LogStore {
    LogStore::open(dir, small()).expect("open log")
}

fn snapshot_at(index: u64, term: u64, data: &str) -> Snapshot {
    let mut s = Snapshot::default();
    s.set_data(data.as_bytes().to_vec().into());
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("log"))
        .expect("read log dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

fn terms(log: &LogStore) -> Vec<(u64, u64)> {
    log.entries(log.first_index(), log.last_index() + 1)
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
}

#[test]
fn entries_and_hard_state_survive_a_reopen_with_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    {
        let mut log = open(&dir);
        log.append(&entries(1..=10, 1)).unwrap();
        log.set_hard_state(&hs(1, 1, 7));
        log.sync().unwrap();
        // A rewrite of an uncommitted suffix by a new leader.
        log.append(&entries(8..=12, 2)).unwrap();
        log.set_hard_state(&hs(2, 2, 9));
        log.sync().unwrap();
    }
    let log = open(&dir);
    let mut want: Vec<(u64, u64)> = (1..=7).map(|i| (i, 1)).collect();
    want.extend((8..=12).map(|i| (i, 2)));
    assert_eq!(terms(&log), want);
    assert_eq!(log.hard_state(), &hs(2, 2, 9));
    assert_eq!(log.entries(8, 9)[0].data.as_ref(), b"8@2");
    for d in [dir.clone(), dir.join("log")] {
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    for f in segments(&dir) {
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[test]
fn unsynced_records_are_not_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = open(tmp.path());
        log.append(&entries(1..=3, 1)).unwrap();
        log.sync().unwrap();
        log.append(&entries(4..=5, 1)).unwrap();
        // dropped without sync: a crash before the fsync
    }
    assert_eq!(open(tmp.path()).last_index(), 3);
}

/// Writes a log of entries 1..=5 and returns the path of the segment holding them.
fn five_entries(dir: &Path) -> PathBuf {
    let mut log = LogStore::open(dir, LogOptions::default()).expect("open");
    log.append(&entries(1..=5, 1)).expect("append");
    log.sync().expect("sync");
    segments(dir).pop().expect("a segment")
}

#[test]
fn a_torn_tail_is_truncated() {
    // Garbage after the last record (a record header claiming more than was written).
    let tmp = tempfile::tempdir().unwrap();
    let seg = five_entries(tmp.path());
    let good_len = fs::metadata(&seg).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 9, 9]).unwrap();
    drop(f);
    let log = LogStore::open(tmp.path(), LogOptions::default()).unwrap();
    assert_eq!(log.last_index(), 5);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len, "tail cut off");

    // The last record cut in the middle: the entries before it survive.
    let tmp = tempfile::tempdir().unwrap();
    let seg = five_entries(tmp.path());
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let mut log = LogStore::open(tmp.path(), LogOptions::default()).unwrap();
    assert_eq!(log.last_index(), 4);
    // And the log goes on from there.
    log.append(&entries(5..=6, 2)).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = LogStore::open(tmp.path(), LogOptions::default()).unwrap();
    assert_eq!(terms(&log).last(), Some(&(6, 2)));

    // A zero-filled tail (a file extended but never written) is a torn tail too.
    let tmp = tempfile::tempdir().unwrap();
    let seg = five_entries(tmp.path());
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0u8; 64]).unwrap();
    drop(f);
    assert_eq!(
        LogStore::open(tmp.path(), LogOptions::default())
            .unwrap()
            .last_index(),
        5
    );
}

#[test]
fn a_checksum_mismatch_before_the_tail_is_an_error_naming_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = five_entries(tmp.path());
    // Flip one byte inside the second record (the first entry's payload): records
    // follow it, so this is damage, not a torn write.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    let Parsed::Record { next, .. } = parse(&buf, 0) else {
        panic!("first record unreadable")
    };
    f.seek(SeekFrom::Start((next + HEADER + 3) as u64)).unwrap();
    f.write_all(&[buf[next + HEADER + 3] ^ 0xff]).unwrap();
    drop(f);
    let err = LogStore::open(tmp.path(), LogOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LogError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&seg.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("at byte {next}")), "{msg}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
}

#[test]
fn damage_in_an_older_segment_is_never_truncated_away() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = five_entries(tmp.path());
    // Reopening starts a new segment: the damaged one is no longer the last.
    drop(LogStore::open(tmp.path(), LogOptions::default()).unwrap());
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let err = LogStore::open(tmp.path(), LogOptions::default()).unwrap_err();
    assert!(err.to_string().contains("cut short"), "{err}");
}

#[test]
fn compaction_drops_covered_segments_and_survives_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir);
    for i in 1..=100 {
        log.append(&[entry(i, 1)]).unwrap();
        log.set_commit(i);
        log.sync().unwrap();
    }
    let before = segments(dir).len();
    assert!(before > 5, "small segments rotate: {before}");
    log.compact(snapshot_at(80, 1, "state@80")).unwrap();
    let after = segments(dir).len();
    assert!(after < before / 2, "{before} segments -> {after}");
    assert_eq!(log.segment_count(), after);
    assert_eq!(log.first_index(), 81);
    assert_eq!(log.term(80), Some(1));
    assert_eq!(log.term(79), None);
    drop(log);
    let log = open(dir);
    assert_eq!(log.first_index(), 81);
    assert_eq!(log.last_index(), 100);
    assert_eq!(log.snapshot().get_data(), b"state@80");
    assert_eq!(log.conf_state().voters, vec![1, 2, 3]);
    assert_eq!(log.hard_state().commit, 100);
}

#[test]
fn a_snapshot_is_replaced_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir);
    log.append(&entries(1..=20, 1)).unwrap();
    log.sync().unwrap();
    log.compact(snapshot_at(10, 1, "old")).unwrap();
    drop(log);
    // A crash in the middle of writing the next snapshot leaves a temp file only.
    let leftover = atomic_file::temp_path(&dir.join("snapshot"));
    fs::write(&leftover, b"half a snapsh").unwrap();
    let log = open(dir);
    assert_eq!(log.snapshot().get_data(), b"old");
    assert!(!leftover.exists(), "leftover removed");
    assert_eq!(
        fs::metadata(dir.join("snapshot"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    drop(log);
    // A damaged snapshot file is an error, never an empty state.
    let mut bytes = fs::read(dir.join("snapshot")).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    fs::write(dir.join("snapshot"), bytes).unwrap();
    let err = LogStore::open(dir, small()).unwrap_err();
    assert!(err.to_string().contains("snapshot"), "{err}");
}

#[test]
fn an_installed_snapshot_replaces_a_conflicting_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir);
    log.append(&entries(1..=50, 1)).unwrap();
    log.set_hard_state(&hs(1, 1, 20));
    log.sync().unwrap();
    log.install_snapshot(snapshot_at(30, 3, "leader's"))
        .unwrap();
    assert_eq!(log.first_index(), 31);
    assert_eq!(log.last_index(), 30);
    log.append(&entries(31..=32, 3)).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir);
    assert_eq!(terms(&log), vec![(31, 3), (32, 3)]);
    assert_eq!(log.hard_state().commit, 30);
    assert_eq!(log.hard_state().term, 3);
}

#[test]
fn an_interrupted_snapshot_install_discards_the_conflicting_old_log() {
    // The snapshot is renamed into place, then the crash comes before the old
    // segments are deleted: entries after index 30 are from another history.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir);
    log.append(&entries(1..=50, 1)).unwrap();
    log.sync().unwrap();
    log.write_snapshot(&snapshot_at(30, 3, "leader's")).unwrap();
    drop(log);
    let log = open(dir);
    assert_eq!(log.first_index(), 31);
    assert_eq!(log.last_index(), 30, "entries after the snapshot discarded");
}

#[test]
fn bootstrap_writes_the_first_configuration_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n1");
    LogStore::bootstrap(&dir, &[1, 2, 3], b"empty".to_vec()).unwrap();
    let log = open(&dir);
    assert_eq!(log.conf_state().voters, vec![1, 2, 3]);
    assert_eq!((log.first_index(), log.last_index()), (2, 1));
    drop(log);
    let err = LogStore::bootstrap(&dir, &[1], Vec::new()).unwrap_err();
    assert!(matches!(err, LogError::AlreadyInitialized { .. }), "{err}");
    let err = LogStore::bootstrap(&tmp.path().join("n2"), &[], Vec::new()).unwrap_err();
    assert!(err.to_string().contains("one or more voters"), "{err}");
}

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` entries of `term` at `back` entries before the end (0: at the end).
    Append {
        back: u64,
        n: u64,
        term: u64,
    },
    /// Compact at `back` entries before the end.
    Compact {
        back: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..6, 1u64..8, 1u64..5).prop_map(|(back, n, term)| Op::Append { back, n, term }),
        1 => (0u64..10).prop_map(|back| Op::Compact { back }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The log behaves like a plain vector of (index, term) with a moving start, across
    /// rewrites, compactions, segment rotations and reopens.
    #[test]
    fn the_log_matches_a_vec_model(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut log = open(dir);
        // model: entries after the snapshot, and the snapshot index.
        let mut model: Vec<(u64, u64)> = Vec::new();
        let mut snap = 0u64;
        for op in ops {
            match op {
                Op::Append { back, n, term } => {
                    let last = snap + model.len() as u64;
                    let at = (last + 1).saturating_sub(back).max(snap + 1);
                    let ents: Vec<Entry> = (at..at + n).map(|i| entry(i, term)).collect();
                    log.append(&ents).unwrap();
                    log.sync().unwrap();
                    model.truncate((at - snap - 1) as usize);
                    model.extend((at..at + n).map(|i| (i, term)));
                }
                Op::Compact { back } => {
                    let last = snap + model.len() as u64;
                    let at = last.saturating_sub(back);
                    if at > snap {
                        let term = model[(at - snap - 1) as usize].1;
                        log.compact(snapshot_at(at, term, &format!("s{at}"))).unwrap();
                        model.drain(..(at - snap) as usize);
                        snap = at;
                    }
                }
                Op::Reopen => {
                    drop(log);
                    log = open(dir);
                }
            }
            prop_assert_eq!(log.first_index(), snap + 1);
            prop_assert_eq!(terms(&log), model.clone());
        }
        drop(log);
        let log = open(dir);
        prop_assert_eq!(terms(&log), model);
        prop_assert_eq!(log.snapshot_index(), snap);
    }
}

//! The linearizability checker against histories whose answer is known: hand-written
//! ones (stale read, lost write, overlapping operations seen in either order, writes of
//! unknown outcome), histories generated from real concurrent executions (always
//! linearizable) and the same with one read corrupted (never), and the recorder used
//! from several threads.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use testkit::linearizability::{
    check, check_bounded, check_entries, check_entries_bounded, CheckError, Entry, History, Op,
    Output,
};

fn us(t: u64) -> Duration {
    Duration::from_micros(t)
}

/// A completed operation by `client` over `[call, ret]` microseconds.
fn done(client: usize, call: u64, ret: u64, op: Op, out: Output) -> Entry {
    Entry {
        client,
        op,
        call: us(call),
        ret: Some((us(ret), out)),
    }
}

/// An operation that never returned.
fn pending(client: usize, call: u64, op: Op) -> Entry {
    Entry {
        client,
        op,
        call: us(call),
        ret: None,
    }
}

fn put(client: usize, call: u64, ret: u64, k: &str, v: &str) -> Entry {
    done(client, call, ret, Op::put(k, v), Output::Put)
}

fn get(client: usize, call: u64, ret: u64, k: &str, v: Option<&str>) -> Entry {
    done(client, call, ret, Op::get(k), Output::value(v))
}

fn cas(
    client: usize,
    call: u64,
    ret: u64,
    k: &str,
    from: Option<&str>,
    to: &str,
    ok: bool,
) -> Entry {
    done(client, call, ret, Op::cas(k, from, to), Output::Cas(ok))
}

fn linearizable(entries: &[Entry]) -> bool {
    match check_entries(entries) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("{e}");
            false
        }
    }
}

#[test]
fn sequential_history_is_linearizable() {
    let h = [
        get(0, 0, 1, "x", None),
        put(0, 2, 3, "x", "1"),
        get(1, 4, 5, "x", Some("1")),
        cas(1, 6, 7, "x", Some("1"), "2", true),
        cas(0, 8, 9, "x", Some("1"), "3", false),
        get(0, 10, 11, "x", Some("2")),
    ];
    assert!(linearizable(&h));
}

#[test]
fn stale_read_is_caught_and_explained() {
    let h = [
        put(0, 0, 10, "x", "1"),
        put(0, 20, 30, "x", "2"),
        get(1, 40, 50, "x", Some("1")),
    ];
    let err = check_entries(&h).unwrap_err();
    assert_eq!(err.key, "x");
    assert_eq!(err.longest, vec![0, 1]);
    assert_eq!(err.stuck, vec![2]);
    let text = err.to_string();
    assert!(text.contains("not linearizable on key \"x\""), "{text}");
    assert!(text.contains("after it the value is \"2\""), "{text}");
    assert!(text.contains("#2 client 1"), "{text}");
}

#[test]
fn lost_write_is_caught() {
    // The put was acknowledged before the read started, yet the read missed it.
    let h = [put(0, 0, 10, "x", "1"), get(1, 20, 30, "x", None)];
    assert!(!linearizable(&h));
}

#[test]
fn a_read_overlapping_a_write_may_see_either_value() {
    let old = [put(0, 0, 100, "x", "1"), get(1, 10, 20, "x", None)];
    let new = [put(0, 0, 100, "x", "1"), get(1, 10, 20, "x", Some("1"))];
    assert!(linearizable(&old));
    assert!(linearizable(&new));
}

#[test]
fn concurrent_writes_may_land_in_either_order_but_only_one() {
    for last in ["a", "b"] {
        let h = [
            put(0, 0, 100, "x", "a"),
            put(1, 0, 100, "x", "b"),
            get(2, 110, 120, "x", Some(last)),
        ];
        assert!(linearizable(&h), "last write {last}");
    }
    // Readers after both writes disagree on which came last: not linearizable.
    let h = [
        put(0, 0, 100, "x", "a"),
        put(1, 0, 100, "x", "b"),
        get(2, 110, 120, "x", Some("a")),
        get(3, 130, 140, "x", Some("b")),
    ];
    assert!(!linearizable(&h));
    // Concurrent readers may disagree while they overlap the writes...
    let h = [
        put(0, 0, 100, "x", "a"),
        put(1, 0, 100, "x", "b"),
        get(2, 10, 20, "x", Some("a")),
        get(3, 30, 40, "x", Some("b")),
        get(2, 50, 60, "x", Some("a")),
    ];
    // ...but a value cannot come back once overwritten (a, b, then a needs a third
    // write).
    assert!(!linearizable(&h));
}

#[test]
fn read_order_must_respect_real_time_between_readers() {
    // Reads overlap the write; the first reader sees the new value and returns before
    // the second starts, so the second must see it too.
    let h = [
        put(0, 0, 100, "x", "1"),
        get(1, 10, 20, "x", Some("1")),
        get(2, 30, 40, "x", None),
    ];
    assert!(!linearizable(&h));
    let h = [
        put(0, 0, 100, "x", "1"),
        get(1, 10, 20, "x", None),
        get(2, 30, 40, "x", Some("1")),
    ];
    assert!(linearizable(&h));
}

#[test]
fn compare_and_swap_succeeds_once_for_one_expected_value() {
    let h = [
        cas(0, 0, 10, "x", None, "1", true),
        cas(1, 20, 30, "x", None, "2", true),
    ];
    assert!(!linearizable(&h));
    // Overlapping, exactly one may win.
    let h = [
        cas(0, 0, 100, "x", None, "1", true),
        cas(1, 0, 100, "x", None, "2", false),
        get(2, 110, 120, "x", Some("1")),
    ];
    assert!(linearizable(&h));
    let h = [
        cas(0, 0, 100, "x", None, "1", true),
        cas(1, 0, 100, "x", None, "2", false),
        get(2, 110, 120, "x", Some("2")),
    ];
    assert!(!linearizable(&h));
}

#[test]
fn a_write_of_unknown_outcome_may_or_may_not_have_happened() {
    // Never seen: fine (it never took effect, or not yet).
    let h = [pending(0, 0, Op::put("x", "1")), get(1, 10, 20, "x", None)];
    assert!(linearizable(&h));
    // Seen long after the client gave up: fine too (it took effect late).
    let h = [
        pending(0, 0, Op::put("x", "1")),
        get(1, 10, 20, "x", None),
        get(1, 1000, 1010, "x", Some("1")),
    ];
    assert!(linearizable(&h));
    // But once seen it cannot be undone.
    let h = [
        pending(0, 0, Op::put("x", "1")),
        get(1, 10, 20, "x", Some("1")),
        get(2, 30, 40, "x", None),
    ];
    assert!(!linearizable(&h));
    // It cannot take effect before it was called.
    let h = [
        get(1, 0, 10, "x", Some("1")),
        pending(0, 20, Op::put("x", "1")),
    ];
    assert!(!linearizable(&h));
    // A compare-and-swap of unknown outcome behaves as its condition says.
    let h = [
        put(0, 0, 10, "x", "1"),
        pending(1, 20, Op::cas("x", Some("1"), "2")),
        get(2, 30, 40, "x", Some("2")),
    ];
    assert!(linearizable(&h));
    let h = [
        put(0, 0, 10, "x", "9"),
        pending(1, 20, Op::cas("x", Some("1"), "2")),
        get(2, 30, 40, "x", Some("2")),
    ];
    assert!(!linearizable(&h));
    // A read that never returned constrains nothing.
    let h = [put(0, 0, 10, "x", "1"), pending(1, 20, Op::get("x"))];
    assert!(linearizable(&h));
}

#[test]
fn a_bounded_check_gives_up_on_a_pathological_history_instead_of_hanging() {
    // Twelve overlapping writes of unknown outcome, then a read nobody explains: the
    // search must try every subset of the writes (4,096) before it can say no.
    let mut h: Vec<Entry> = (0..12)
        .map(|n| pending(n, 0, Op::put("x", &format!("v{n}"))))
        .collect();
    h.push(get(12, 100, 110, "x", Some("never written")));
    match check_entries_bounded(&h, 1_000) {
        Err(CheckError::GaveUp { key, steps }) => {
            assert_eq!((key.as_str(), steps), ("x", 1_000));
        }
        other => panic!("expected the search to give up, got {other:?}"),
    }
    let err = check_entries_bounded(&h, 1_000).unwrap_err().to_string();
    assert!(err.contains("gave up after 1000 steps"), "{err}");
    // Unbounded, it decides.
    assert!(check_entries(&h).is_err());
    assert!(matches!(
        check_entries_bounded(&h, u64::MAX),
        Err(CheckError::NotLinearizable(_))
    ));
    // A linearizable history of 1,000 operations fits a modest budget.
    let history = History::from_entries(execution(3, 1000, 5, 3, 50));
    check_bounded(&history, 100_000).unwrap();
}

#[test]
fn keys_are_independent() {
    let h = [
        put(0, 0, 10, "x", "1"),
        put(1, 0, 10, "y", "2"),
        get(0, 20, 30, "y", Some("2")),
        get(1, 20, 30, "x", Some("1")),
        get(2, 20, 30, "z", None),
    ];
    assert!(linearizable(&h));
    // The same value under another key does not explain a read.
    let h = [put(0, 0, 10, "y", "1"), get(1, 20, 30, "x", Some("1"))];
    let err = check_entries(&h).unwrap_err();
    assert_eq!(err.key, "x");
}

#[test]
fn malformed_entries_are_reported_not_panicked_on() {
    let h = [done(0, 0, 10, Op::put("x", "1"), Output::Cas(true))];
    let err = check_entries(&h).unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
    let h = [get(0, 10, 5, "x", None)];
    assert!(check_entries(&h)
        .unwrap_err()
        .to_string()
        .contains("before it was called"));
}

#[test]
fn the_recorder_works_across_threads() {
    let history = History::new();
    let register = std::sync::Mutex::new(None::<String>);
    std::thread::scope(|s| {
        for c in 0..4 {
            let client = history.client();
            let register = &register;
            s.spawn(move || {
                for i in 0..50 {
                    if i % 2 == 0 {
                        let value = format!("{c}-{i}");
                        let call = client.invoke(Op::put("k", &value));
                        *register.lock().unwrap() = Some(value);
                        call.ok(Output::Put);
                    } else {
                        let call = client.invoke(Op::get("k"));
                        let v = register.lock().unwrap().clone();
                        call.ok(Output::Get(v));
                    }
                }
                // A write that is refused, one that times out.
                client.invoke(Op::put("k", "refused")).failed();
                client.invoke(Op::put("k", "lost")).unknown();
            });
        }
    });
    let entries = history.entries();
    assert_eq!(entries.len(), 4 * 51);
    let dump = history.dump();
    assert_eq!(dump.lines().count(), entries.len());
    assert!(dump.contains("put(\"k\", \"lost\") -> unknown"), "{dump}");
    assert!(dump.starts_with("#0 client "), "{dump}");
    assert_eq!(entries.iter().filter(|e| e.ret.is_none()).count(), 4);
    assert!(entries.iter().all(|e| e.op != Op::put("k", "refused")));
    check(&history).unwrap();
    // The same recorder catches a read the register never held.
    let call = history.client().invoke(Op::get("k"));
    call.ok(Output::value(Some("never written")));
    assert!(check(&history).is_err());
}

/// A small deterministic generator (no `rand` dependency needed for histories).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A real concurrent execution: `clients` clients, each issuing its operations one
/// after another with random durations; each operation takes effect at a random
/// instant inside its interval, on a real map, in the order of those instants. Its
/// results are therefore linearizable by construction. `pending_every`: every n-th
/// write loses its reply (it took effect, the client never learned it).
fn execution(seed: u64, ops: usize, clients: usize, keys: u64, pending_every: usize) -> Vec<Entry> {
    let mut rng = Lcg(seed);
    let mut clock = vec![0u64; clients];
    // (effect time, call, ret, client, op)
    let mut planned = Vec::new();
    for n in 0..ops {
        let c = rng.below(clients as u64) as usize;
        let call = clock[c] + rng.below(20);
        let ret = call + 1 + rng.below(200);
        clock[c] = ret + 1;
        let effect = call + rng.below(ret - call + 1);
        let key = format!("k{}", rng.below(keys));
        let value = format!("v{}", rng.below(5));
        let op = match rng.below(3) {
            0 => Op::put(&key, &value),
            1 => Op::get(&key),
            _ => {
                let expected = (rng.below(3) > 0).then(|| format!("v{}", rng.below(5)));
                Op::cas(&key, expected.as_deref(), &value)
            }
        };
        planned.push((effect, n, call, ret, c, op));
    }
    planned.sort_by_key(|p| (p.0, p.1));
    let mut map = std::collections::HashMap::<String, String>::new();
    let mut entries = Vec::new();
    for (i, (_, _, call, ret, client, op)) in planned.into_iter().enumerate() {
        let out = match &op {
            Op::Put { key, value } => {
                map.insert(key.clone(), value.clone());
                Output::Put
            }
            Op::Get { key } => Output::Get(map.get(key).cloned()),
            Op::Cas { key, expected, new } => {
                let swapped = map.get(key) == expected.as_ref();
                if swapped {
                    map.insert(key.clone(), new.clone());
                }
                Output::Cas(swapped)
            }
        };
        let lost = pending_every > 0 && i % pending_every == 0 && !matches!(op, Op::Get { .. });
        entries.push(Entry {
            client,
            op,
            call: us(call),
            ret: (!lost).then(|| (us(ret), out)),
        });
    }
    entries.sort_by_key(|e| e.call);
    entries
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn real_executions_are_linearizable(
        seed in any::<u64>(), ops in 1usize..150, clients in 1usize..6, keys in 1u64..4,
        pending_every in 0usize..8,
    ) {
        let entries = execution(seed, ops, clients, keys, pending_every);
        let result = check_entries(&entries);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }

    #[test]
    fn writes_that_never_happened_but_never_returned_are_fine(
        seed in any::<u64>(), ops in 1usize..100, extra in 1usize..5,
    ) {
        // Pending writes of fresh values that took no effect: nobody read them, and
        // the checker must be able to leave them out.
        let mut entries = execution(seed, ops, 4, 2, 0);
        for n in 0..extra {
            entries.push(pending(9, 5 * n as u64, Op::put("k0", &format!("ghost{n}"))));
        }
        let result = check_entries(&entries);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }

    #[test]
    fn a_read_of_a_value_never_written_is_never_linearizable(
        seed in any::<u64>(), ops in 1usize..150, which in any::<prop::sample::Index>(),
    ) {
        let mut entries = execution(seed, ops, 5, 3, 0);
        let reads: Vec<usize> = (0..entries.len())
            .filter(|&i| matches!(entries[i].op, Op::Get { .. }))
            .collect();
        prop_assume!(!reads.is_empty());
        let i = reads[which.index(reads.len())];
        let at = entries[i].ret.as_ref().map(|r| r.0).unwrap();
        entries[i].ret = Some((at, Output::value(Some("never written"))));
        let err = check_entries(&entries).unwrap_err();
        prop_assert_eq!(&err.key, entries[i].op.key());
    }
}

/// Prints how long a 1,000-operation, 5-client history over 3 keys takes to check
/// (linearizable, and with one read corrupted near the end, which makes the search
/// exhaust its options), and the same length of history on a single key. A measurement, not an assertion: run with
/// `cargo test -p testkit --release --test linearizability -- --nocapture timing`.
#[test]
fn timing_of_a_thousand_operation_history() {
    let entries = execution(7, 1000, 5, 3, 50);
    let start = Instant::now();
    check_entries(&entries).unwrap();
    let ok = start.elapsed();

    let mut bad = entries.clone();
    let i = (0..bad.len())
        .rev()
        .find(|&i| matches!(bad[i].op, Op::Get { .. }) && bad[i].ret.is_some())
        .unwrap();
    let at = bad[i].ret.as_ref().map(|r| r.0).unwrap();
    bad[i].ret = Some((at, Output::value(Some("never written"))));
    let start = Instant::now();
    let err = check_entries(&bad).unwrap_err();
    let failing = start.elapsed();
    assert!(
        !err.longest.contains(&i),
        "the corrupted read can never be placed"
    );
    // The worst case for per-key partitioning: every operation on one key.
    let one_key = execution(7, 1000, 5, 1, 50);
    let start = Instant::now();
    check_entries(&one_key).unwrap();
    let single = start.elapsed();
    // How many search steps it needs, to the nearest power of two.
    let steps = (0..40)
        .map(|p| 1u64 << p)
        .find(|&budget| check_entries_bounded(&entries, budget).is_ok())
        .unwrap();
    eprintln!(
        "linearizability: 1000 ops, 5 clients, 3 keys: linearizable checked in {ok:?} \
         (at most {steps} steps), with a corrupted read refuted in {failing:?}; \
         all on 1 key: {single:?}"
    );
}

//! A linearizability checker for histories of a key-value store, for the cluster tests:
//! several clients record what they asked (`put`, `get`, `cas`) and what they got back,
//! with the time of the call and of the return ([`History`]); [`check`] says whether
//! some order of the operations, each taking effect at one instant between its call
//! and its return, explains every result, or returns a [`Counterexample`] that says
//! which operation could not be explained and why.
//!
//! ```
//! use testkit::linearizability::{check, History, Op, Output};
//!
//! let history = History::new();
//! let (alice, bob) = (history.client(), history.client());
//! let call = alice.invoke(Op::put("x", "1")); // just before sending the request
//! call.ok(Output::Put); // just after the reply
//! bob.invoke(Op::get("x")).ok(Output::value(None)); // a stale read: "1" was acknowledged
//! let counterexample = check(&history).unwrap_err();
//! assert_eq!(counterexample.key, "x");
//! println!("{counterexample}"); // which order was tried, and why the read fits nowhere
//! ```
//!
//! The algorithm is Wing & Gong's search as Porcupine (Athalye) and Lowe implement it:
//! the calls and returns form a doubly linked list in time order; the search takes
//! any call that comes before the first remaining return, applies it to the model if
//! its result agrees, removes it from the list and starts again; when it meets a
//! return whose operation it has not placed, it backtracks. A cache of (set of placed
//! operations, model state) pairs already explored cuts the search from exponential
//! to what real histories need. A key-value map is P-compositional (Herlihy & Wing:
//! a history is linearizable iff each key's sub-history is), so each key is checked
//! alone, which keeps long histories over several keys fast.
//!
//! Operations whose outcome is unknown (the client crashed or timed out: the write may
//! or may not have happened) are recorded without a return ([`Call::unknown`], or a
//! [`Call`] dropped without an answer). A pending write may take effect at any time
//! after its call, or never; a pending read constrains nothing and is left out. An
//! operation the system definitely refused ([`Call::failed`]) is removed, since it
//! had no effect. Ties between a return and a call at the same instant count as
//! overlapping (the permissive reading; timestamps are nanoseconds, so ties are rare).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// An operation on one key of the register map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Sets `key` to `value`.
    Put { key: String, value: String },
    /// Reads `key`.
    Get { key: String },
    /// Sets `key` to `new` if it holds `expected` (`None`: if it is absent).
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
}

impl Op {
    pub fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    pub fn get(key: &str) -> Op {
        Op::Get {
            key: key.to_string(),
        }
    }

    pub fn cas(key: &str, expected: Option<&str>, new: &str) -> Op {
        Op::Cas {
            key: key.to_string(),
            expected: expected.map(str::to_string),
            new: new.to_string(),
        }
    }

    /// The key it acts on.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Get { key } | Op::Cas { key, .. } => key,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { key, value } => write!(f, "put({key:?}, {value:?})"),
            Op::Get { key } => write!(f, "get({key:?})"),
            Op::Cas { key, expected, new } => {
                write!(f, "cas({key:?}, {}, {new:?})", show(expected.as_deref()))
            }
        }
    }
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// A put was acknowledged.
    Put,
    /// A get read this value (`None`: the key was absent).
    Get(Option<String>),
    /// A cas swapped (`true`) or found another value (`false`).
    Cas(bool),
}

impl Output {
    /// A get's result, from a `&str`.
    pub fn value(v: Option<&str>) -> Output {
        Output::Get(v.map(str::to_string))
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Put => f.write_str("ok"),
            Output::Get(v) => f.write_str(&show(v.as_deref())),
            Output::Cas(swapped) => f.write_str(if *swapped { "swapped" } else { "failed" }),
        }
    }
}

fn show(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "absent".to_string(),
    }
}

/// One operation of a history: who called it, when, and what it returned when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub client: usize,
    pub op: Op,
    /// When it was called, from the start of the history.
    pub call: Duration,
    /// When it returned and with what; `None` if it never did (its effect is unknown).
    pub ret: Option<(Duration, Output)>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ret {
            Some((at, out)) => write!(
                f,
                "client {} [{:?} .. {:?}] {} -> {out}",
                self.client, self.call, at, self.op
            ),
            None => write!(
                f,
                "client {} [{:?} .. never returned] {} -> unknown",
                self.client, self.call, self.op
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Recorded {
    /// `None`: a call that definitely failed, so it is not part of the history.
    entries: Vec<Option<Entry>>,
    clients: usize,
}

/// A history being recorded by several clients (threads) at once. Cloning gives
/// another handle on the same history.
#[derive(Debug, Clone)]
pub struct History {
    start: Instant,
    inner: Arc<Mutex<Recorded>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            inner: Arc::default(),
        }
    }

    /// A history made of given entries (for tests of the checker, or histories read
    /// back from a file).
    pub fn from_entries(entries: Vec<Entry>) -> History {
        let clients = entries.iter().map(|e| e.client + 1).max().unwrap_or(0);
        History {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Recorded {
                entries: entries.into_iter().map(Some).collect(),
                clients,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new client, with the next client id. A client's calls are meant to be
    /// sequential (one outstanding call at a time), as a real client's are; the
    /// checker does not rely on it.
    pub fn client(&self) -> Client {
        let mut inner = self.lock();
        let id = inner.clients;
        inner.clients += 1;
        Client {
            id,
            history: self.clone(),
        }
    }

    /// The operations recorded so far (calls still outstanding have no return).
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.iter().flatten().cloned().collect()
    }

    /// How many operations it holds.
    pub fn len(&self) -> usize {
        self.lock().entries.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The history as text, one operation a line in call order, numbered as in
    /// [`History::entries`] (and so as a [`Counterexample`] of it numbers them): for
    /// writing next to a failed test's logs.
    pub fn dump(&self) -> String {
        let mut text = String::new();
        for (i, entry) in self.entries().iter().enumerate() {
            let _ = writeln!(text, "#{i} {entry}");
        }
        text
    }
}

/// One client of a [`History`]: records its calls.
#[derive(Debug, Clone)]
pub struct Client {
    id: usize,
    history: History,
}

impl Client {
    pub fn id(&self) -> usize {
        self.id
    }

    /// Records that `op` is being called now; call this just *before* sending the
    /// request, and answer the returned [`Call`] just after the reply.
    pub fn invoke(&self, op: Op) -> Call {
        let mut inner = self.history.lock();
        // The time is read under the lock so entries are in call order.
        let call = self.history.start.elapsed();
        inner.entries.push(Some(Entry {
            client: self.id,
            op,
            call,
            ret: None,
        }));
        Call {
            history: self.history.clone(),
            index: inner.entries.len() - 1,
        }
    }
}

/// An outstanding call. Answer it with [`Call::ok`], [`Call::failed`] or
/// [`Call::unknown`]; dropping it unanswered is [`Call::unknown`].
#[must_use = "record how the call ended: ok, failed or unknown"]
#[derive(Debug)]
pub struct Call {
    history: History,
    index: usize,
}

impl Call {
    /// It returned `output` now.
    pub fn ok(self, output: Output) {
        let at = self.history.start.elapsed();
        if let Some(Some(entry)) = self.history.lock().entries.get_mut(self.index) {
            entry.ret = Some((at, output));
        }
    }

    /// It definitely had no effect (the system refused it before doing anything, e.g.
    /// "not the leader" from a node that forwarded nothing): it leaves the history.
    /// Only use this when the system guarantees it; when in doubt, [`Call::unknown`].
    pub fn failed(self) {
        if let Some(slot) = self.history.lock().entries.get_mut(self.index) {
            *slot = None;
        }
    }

    /// Its outcome is unknown (timeout, connection lost, server killed): a write may
    /// take effect at any time after its call, or never.
    pub fn unknown(self) {
        // Nothing to record: an entry without a return is exactly "unknown".
    }
}

/// Why a history is not linearizable: on which key, the longest order of that key's
/// operations the search could explain, and the operations none of which could come
/// next. `Display` gives the whole explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counterexample {
    /// The key whose operations cannot be ordered.
    pub key: String,
    /// Indices (into the checked entries) of the longest linearization found, in order.
    pub longest: Vec<usize>,
    /// Indices of the operations that could not come after `longest`.
    pub stuck: Vec<usize>,
    explanation: String,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explanation)
    }
}

impl std::error::Error for Counterexample {}

/// Why a bounded check ([`check_bounded`]) did not say yes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    NotLinearizable(Counterexample),
    #[error(
        "the linearizability search on key {key:?} gave up after {steps} steps without \
         deciding: too many operations of unknown outcome overlap; record fewer (shorter \
         client timeouts, fewer crashes per run) or allow more steps"
    )]
    GaveUp { key: String, steps: u64 },
}

/// Checks a recorded history (see the module doc). The search always finishes, but a
/// history with many overlapping operations of unknown outcome that is *not*
/// linearizable can take exponential time to refute; tests that crash clients a lot
/// should use [`check_bounded`].
pub fn check(history: &History) -> Result<(), Counterexample> {
    check_entries(&history.entries())
}

/// [`check`] that gives up after `max_steps` steps of the search (one step places or
/// takes back one operation, or moves to the next candidate; a 1,000-operation history
/// takes a few thousand), so a test fails with a message instead of hanging.
pub fn check_bounded(history: &History, max_steps: u64) -> Result<(), CheckError> {
    check_entries_bounded(&history.entries(), max_steps)
}

/// Checks a list of entries; indices in a [`Counterexample`] refer to this list.
pub fn check_entries(entries: &[Entry]) -> Result<(), Counterexample> {
    match check_entries_bounded(entries, u64::MAX) {
        Ok(()) => Ok(()),
        Err(CheckError::NotLinearizable(c)) => Err(c),
        // Not reachable with an unbounded budget, but an answer all the same.
        Err(e @ CheckError::GaveUp { .. }) => Err(Counterexample {
            key: String::new(),
            longest: Vec::new(),
            stuck: Vec::new(),
            explanation: e.to_string(),
        }),
    }
}

/// [`check_entries`] with a budget of steps, as [`check_bounded`].
pub fn check_entries_bounded(entries: &[Entry], max_steps: u64) -> Result<(), CheckError> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        if let Some(problem) = malformed(entry) {
            return Err(CheckError::NotLinearizable(Counterexample {
                key: entry.op.key().to_string(),
                longest: Vec::new(),
                stuck: vec![i],
                explanation: format!("operation #{i} ({entry}) is malformed: {problem}"),
            }));
        }
        by_key.entry(entry.op.key()).or_default().push(i);
    }
    let mut budget = max_steps;
    for (key, indices) in by_key {
        Partition::new(entries, &indices)
            .check(key, &mut budget)
            .map_err(|e| match e {
                None => CheckError::GaveUp {
                    key: key.to_string(),
                    steps: max_steps,
                },
                Some(c) => CheckError::NotLinearizable(c),
            })?;
    }
    Ok(())
}

fn malformed(entry: &Entry) -> Option<&'static str> {
    let (at, out) = entry.ret.as_ref()?;
    if *at < entry.call {
        return Some("it returned before it was called");
    }
    match (&entry.op, out) {
        (Op::Put { .. }, Output::Put)
        | (Op::Get { .. }, Output::Get(_))
        | (Op::Cas { .. }, Output::Cas(_)) => None,
        _ => Some("its output is not of its operation's kind"),
    }
}

/// The register's state: the interned value, or `None` for an absent key.
type State = Option<u32>;

/// One operation of a partition, with values interned.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Put(u32),
    Get(State),
    /// `swapped`: `None` when the outcome is unknown.
    Cas {
        expected: State,
        new: u32,
        swapped: Option<bool>,
    },
}

/// The register model: the state after `kind` takes effect in `state`, or `None` if
/// its recorded result says it cannot have taken effect there.
fn step(state: State, kind: Kind) -> Option<State> {
    match kind {
        Kind::Put(v) => Some(Some(v)),
        Kind::Get(seen) => (seen == state).then_some(state),
        Kind::Cas {
            expected,
            new,
            swapped,
        } => match (state == expected, swapped) {
            (true, Some(true) | None) => Some(Some(new)),
            (false, Some(false) | None) => Some(state),
            _ => None,
        },
    }
}

const HEAD: usize = 0;

/// One key's operations, ready for the search.
struct Partition<'a> {
    entries: &'a [Entry],
    /// Entry index of each op.
    entry: Vec<usize>,
    kind: Vec<Kind>,
    /// Whether the op returned (and so must be placed).
    required: Vec<bool>,
    values: Vec<&'a str>,
    /// Linked list over nodes `1..=events`, with `HEAD` = 0 and tail = events + 1.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Node -> (op, is the return).
    node: Vec<(usize, bool)>,
    call_node: Vec<usize>,
    ret_node: Vec<Option<usize>>,
}

impl<'a> Partition<'a> {
    fn new(entries: &'a [Entry], indices: &[usize]) -> Partition<'a> {
        let mut values: Vec<&'a str> = Vec::new();
        let mut ids: HashMap<&'a str, u32> = HashMap::new();
        let mut intern = |v: &'a str| -> u32 {
            *ids.entry(v).or_insert_with(|| {
                values.push(v);
                (values.len() - 1) as u32
            })
        };
        let mut p = Partition {
            entries,
            entry: Vec::new(),
            kind: Vec::new(),
            required: Vec::new(),
            values: Vec::new(),
            next: Vec::new(),
            prev: Vec::new(),
            node: Vec::new(),
            call_node: Vec::new(),
            ret_node: Vec::new(),
        };
        // (time, is return, op)
        let mut events: Vec<(Duration, bool, usize)> = Vec::new();
        for &i in indices {
            let e = &entries[i];
            let kind = match (&e.op, &e.ret) {
                // A read that never returned constrains nothing.
                (Op::Get { .. }, None) => continue,
                (Op::Get { .. }, Some((_, Output::Get(v)))) => {
                    Kind::Get(v.as_deref().map(&mut intern))
                }
                (Op::Put { value, .. }, _) => Kind::Put(intern(value)),
                (Op::Cas { expected, new, .. }, ret) => Kind::Cas {
                    expected: expected.as_deref().map(&mut intern),
                    new: intern(new),
                    swapped: match ret {
                        Some((_, Output::Cas(s))) => Some(*s),
                        _ => None,
                    },
                },
                // `malformed` rejected every other pairing.
                (Op::Get { .. }, Some(_)) => continue,
            };
            let op = p.kind.len();
            p.entry.push(i);
            p.kind.push(kind);
            p.required.push(e.ret.is_some());
            events.push((e.call, false, op));
            if let Some((at, _)) = &e.ret {
                events.push((*at, true, op));
            }
        }
        p.values = values;
        // Calls before returns at the same instant: ties overlap.
        events.sort_by_key(|&(t, is_ret, op)| (t, is_ret, op));
        let n = events.len();
        p.call_node = vec![0; p.kind.len()];
        p.ret_node = vec![None; p.kind.len()];
        p.node = vec![(usize::MAX, false); n + 2];
        for (k, &(_, is_ret, op)) in events.iter().enumerate() {
            let node = k + 1;
            p.node[node] = (op, is_ret);
            if is_ret {
                p.ret_node[op] = Some(node);
            } else {
                p.call_node[op] = node;
            }
        }
        p.next = (1..=n + 2).collect();
        p.prev = (0..n + 2).map(|k| k.saturating_sub(1)).collect();
        p
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        self.prev[n] = x;
    }

    /// Takes an op out of the list (call, then return); `unlift` must undo lifts in
    /// reverse order, which the search's stack guarantees.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(r) = self.ret_node[op] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(r) = self.ret_node[op] {
            self.relink(r);
        }
        self.relink(self.call_node[op]);
    }

    /// `Err(None)`: the budget ran out first.
    fn check(mut self, key: &str, budget: &mut u64) -> Result<(), Option<Counterexample>> {
        let ops = self.kind.len();
        let tail = self.next.len() - 1;
        let required = self.required.iter().filter(|&&r| r).count();
        let words = ops.div_ceil(64);
        let mut placed = vec![0u64; words];
        let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
        // (op, state before it)
        let mut stack: Vec<(usize, State)> = Vec::new();
        let mut state: State = None;
        let mut placed_required = 0;
        let mut longest: Vec<usize> = Vec::new();
        let mut cursor = self.next[HEAD];
        loop {
            if placed_required == required {
                return Ok(());
            }
            if *budget == 0 {
                return Err(None);
            }
            *budget -= 1;
            let (op, is_ret) = if cursor == tail {
                (usize::MAX, true)
            } else {
                self.node[cursor]
            };
            if !is_ret {
                if let Some(after) = step(state, self.kind[op]) {
                    placed[op / 64] |= 1 << (op % 64);
                    if cache.insert((placed.clone(), after)) {
                        stack.push((op, state));
                        state = after;
                        self.lift(op);
                        if self.required[op] {
                            placed_required += 1;
                        }
                        if stack.len() > longest.len() {
                            longest = stack.iter().map(|&(op, _)| op).collect();
                        }
                        cursor = self.next[HEAD];
                        continue;
                    }
                    placed[op / 64] &= !(1 << (op % 64));
                }
                cursor = self.next[cursor];
            } else {
                // A return of an op not placed: everything after it must come later,
                // so undo the last choice and try the next candidate.
                let Some((op, before)) = stack.pop() else {
                    return Err(Some(self.counterexample(key, &longest)));
                };
                placed[op / 64] &= !(1 << (op % 64));
                state = before;
                self.unlift(op);
                if self.required[op] {
                    placed_required -= 1;
                }
                cursor = self.next[self.call_node[op]];
            }
        }
    }

    fn show_state(&self, state: State) -> String {
        show(state.map(|v| self.values[v as usize]))
    }

    /// Explains why nothing can follow `longest`: replays it, then names the ops that
    /// were candidates to come next and why each could not.
    fn counterexample(&self, key: &str, longest: &[usize]) -> Counterexample {
        let mut text = format!(
            "history is not linearizable on key {key:?} ({} operations on it)\n",
            self.kind.len()
        );
        let mut state: State = None;
        if longest.is_empty() {
            text.push_str("no operation on it can come first; the key starts absent\n");
        } else {
            let _ = writeln!(
                text,
                "longest order that explains the results ({} operations):",
                longest.len()
            );
            for (n, &op) in longest.iter().enumerate() {
                state = step(state, self.kind[op]).unwrap_or(state);
                let _ = writeln!(
                    text,
                    "  {}. #{} {}   => {}",
                    n + 1,
                    self.entry[op],
                    self.entries[self.entry[op]],
                    self.show_state(state)
                );
            }
            let _ = writeln!(
                text,
                "after it the value is {}, and no remaining operation can come next:",
                self.show_state(state)
            );
        }
        let remaining: Vec<usize> = (0..self.kind.len())
            .filter(|op| !longest.contains(op))
            .collect();
        // The op that must come next at the latest: the earliest return left.
        let deadline = remaining
            .iter()
            .filter_map(|&op| {
                self.entries[self.entry[op]]
                    .ret
                    .as_ref()
                    .map(|(t, _)| (*t, op))
            })
            .min();
        let mut stuck = Vec::new();
        for &op in &remaining {
            let e = &self.entries[self.entry[op]];
            if deadline.is_some_and(|(t, _)| e.call > t) {
                continue;
            }
            stuck.push(self.entry[op]);
            let why = match (step(state, self.kind[op]), self.kind[op]) {
                (None, Kind::Get(seen)) => format!(
                    "it read {} but the value was {}",
                    self.show_state(seen),
                    self.show_state(state)
                ),
                (None, Kind::Cas { swapped, .. }) => format!(
                    "it {} but the value was {}",
                    if swapped == Some(true) {
                        "swapped"
                    } else {
                        "failed"
                    },
                    self.show_state(state)
                ),
                (None, Kind::Put(_)) => "a put cannot fail".to_string(),
                (Some(_), _) => {
                    "it could come next, but then no order of the rest explains their results"
                        .to_string()
                }
            };
            let _ = writeln!(text, "  #{} {}: {why}", self.entry[op], e);
        }
        if let Some((t, op)) = deadline {
            let _ = writeln!(
                text,
                "operation #{} returned at {t:?}, so one of these had to take effect by then",
                self.entry[op]
            );
        }
        Counterexample {
            key: key.to_string(),
            longest: longest.iter().map(|&op| self.entry[op]).collect(),
            stuck,
            explanation: text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_follows_each_results_meaning() {
        let cas = |expected, swapped| Kind::Cas {
            expected,
            new: 9,
            swapped,
        };
        assert_eq!(step(None, Kind::Put(1)), Some(Some(1)));
        assert_eq!(step(Some(1), Kind::Get(Some(1))), Some(Some(1)));
        assert_eq!(step(Some(1), Kind::Get(None)), None);
        assert_eq!(step(Some(1), cas(Some(1), Some(true))), Some(Some(9)));
        assert_eq!(step(Some(1), cas(Some(1), Some(false))), None);
        assert_eq!(step(Some(2), cas(Some(1), Some(true))), None);
        assert_eq!(step(Some(2), cas(Some(1), Some(false))), Some(Some(2)));
        // Unknown outcome: whatever the state says it would have done.
        assert_eq!(step(Some(1), cas(Some(1), None)), Some(Some(9)));
        assert_eq!(step(Some(2), cas(Some(1), None)), Some(Some(2)));
    }
}

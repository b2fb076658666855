//! How Raft messages travel between nodes: the [`Transport`] seam, and [`MemNetwork`],
//! an in-memory network for tests that can drop, delay, reorder and partition (both
//! ways or one way).
//!
//! Follower forwarding needs nothing more: raft-rs turns a proposal or a ReadIndex on a
//! follower into a `MsgPropose`/`MsgReadIndex` to the leader, which travels here like
//! every other message.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;

use super::inbox::Inbox;

/// Sends Raft messages to peers. Delivery is best effort: Raft retries what is lost,
/// so a send never blocks on the peer and never fails loudly.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Sends `msg` to node `msg.to`.
    fn send(&self, msg: Message);
}

/// An in-memory network between the nodes of one test.
#[derive(Debug)]
pub struct MemNetwork {
    inner: Arc<Net>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Net {
    state: Mutex<NetState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct NetState {
    inboxes: HashMap<u64, Inbox>,
    /// (from, to) pairs whose messages are dropped.
    blocked: HashSet<(u64, u64)>,
    /// Probability (0..=1) that a message is dropped.
    drop_rate: f64,
    /// Every message waits `delay` plus up to `jitter` (so messages reorder).
    delay: Duration,
    jitter: Duration,
    queue: BinaryHeap<Delayed>,
    seq: u64,
    rng: u64,
    stopped: bool,
    delivered: u64,
    dropped: u64,
}

#[derive(Debug)]
struct Delayed {
    due: Instant,
    seq: u64,
    msg: Message,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    // BinaryHeap is a max-heap: the earliest due message must compare greatest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

impl NetState {
    /// xorshift64*: a deterministic, dependency-free source for drop decisions.
    fn random(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn passes(&mut self, msg: &Message) -> bool {
        if self.blocked.contains(&(msg.from, msg.to)) {
            return false;
        }
        !(self.drop_rate > 0.0 && self.random() < self.drop_rate)
    }
}

impl Net {
    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MemNetwork {
    fn default() -> Self {
        MemNetwork::new()
    }
}

impl MemNetwork {
    pub fn new() -> MemNetwork {
        let inner = Arc::new(Net::default());
        inner.lock().rng = 0x9E37_79B9_7F4A_7C15;
        let net = inner.clone();
        let thread = std::thread::Builder::new()
            .name("raft-memnet".into())
            .spawn(move || deliver_delayed(&net))
            .ok();
        MemNetwork { inner, thread }
    }

    /// The transport node `id` sends with.
    pub fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(MemTransport {
            net: self.inner.clone(),
        })
    }

    /// Connects node `id`'s inbox (replacing an earlier one, as a restarted node does).
    pub fn register(&self, id: u64, inbox: Inbox) {
        self.inner.lock().inboxes.insert(id, inbox);
    }

    pub fn unregister(&self, id: u64) {
        self.inner.lock().inboxes.remove(&id);
    }

    /// Cuts every link between different groups, both ways. Nodes in no group keep
    /// their links.
    pub fn partition(&self, groups: &[&[u64]]) {
        let mut st = self.inner.lock();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a.iter() {
                    for &y in b.iter() {
                        st.blocked.insert((x, y));
                        st.blocked.insert((y, x));
                    }
                }
            }
        }
    }

    /// Drops messages from `from` to `to` (one way).
    pub fn block(&self, from: u64, to: u64) {
        self.inner.lock().blocked.insert((from, to));
    }

    /// Cuts `id` off from `others`, both ways.
    pub fn isolate(&self, id: u64, others: &[u64]) {
        self.partition(&[&[id], others]);
    }

    /// Removes every cut; drop rate and delay stay.
    pub fn heal(&self) {
        self.inner.lock().blocked.clear();
    }

    /// Drops each message with probability `rate` (0 to 1).
    pub fn set_drop_rate(&self, rate: f64) {
        self.inner.lock().drop_rate = rate.clamp(0.0, 1.0);
    }

    /// Delays each message by `delay` plus a random part of `jitter`.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        let mut st = self.inner.lock();
        st.delay = delay;
        st.jitter = jitter;
    }

    /// (delivered, dropped) message counts so far.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.inner.lock();
        (st.delivered, st.dropped)
    }
}

impl Drop for MemNetwork {
    fn drop(&mut self) {
        self.inner.lock().stopped = true;
        self.inner.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
struct MemTransport {
    net: Arc<Net>,
}

impl Transport for MemTransport {
    fn send(&self, msg: Message) {
        let mut st = self.net.lock();
        if !st.passes(&msg) {
            st.dropped += 1;
            return;
        }
        if st.delay.is_zero() && st.jitter.is_zero() {
            let inbox = st.inboxes.get(&msg.to).cloned();
            st.delivered += 1;
            drop(st);
            if let Some(inbox) = inbox {
                inbox.deliver(msg);
            }
            return;
        }
        let jitter = st.jitter.mul_f64(st.random());
        let due = Instant::now() + st.delay + jitter;
        st.seq += 1;
        let seq = st.seq;
        st.queue.push(Delayed { due, seq, msg });
        drop(st);
        self.net.wake.notify_all();
    }
}

fn deliver_delayed(net: &Net) {
    let mut st = net.lock();
    loop {
        if st.stopped {
            return;
        }
        let now = Instant::now();
        match st.queue.peek().map(|d| d.due) {
            Some(due) if due <= now => {
                let Some(d) = st.queue.pop() else { continue };
                // A cut made while the message was on the wire stops it too.
                if st.blocked.contains(&(d.msg.from, d.msg.to)) {
                    st.dropped += 1;
                    continue;
                }
                st.delivered += 1;
                if let Some(inbox) = st.inboxes.get(&d.msg.to).cloned() {
                    drop(st);
                    inbox.deliver(d.msg);
                    st = net.lock();
                }
            }
            Some(due) => {
                st = net
                    .wake
                    .wait_timeout(st, due - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            None => {
                st = net.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

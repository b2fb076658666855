//! The connections [`Client::fetch`](super::Client::fetch) keeps between requests: a
//! process-wide pool of idle mutual-TLS connections, so that a node's heartbeats, polls
//! and status batches do not each pay a full handshake (with 1,000 nodes, the manager's
//! side of those handshakes was 69% of its idle CPU: `bench/dispatcher.md`).
//!
//! Process-wide, because callers make a new `Client` per call (and a thread per
//! heartbeat). A connection is handed only to a request for the same address, the same
//! server name and the very same `rustls::ClientConfig` (the same `Arc`, not equal
//! contents): the config is the identity the connection was authenticated with, so a
//! node's old and renewed certificates, a joiner's settings and an admin's never share
//! a connection.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

/// A mutual-TLS connection to a manager or node, as the client holds it.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// An idle connection is not reused after this long. The cluster port closes a
/// connection that sends no request for 30 s (hyper's header read timeout,
/// `manager::port::PortOptions::header_timeout`); staying well below it means a
/// connection is rarely taken just as the server drops it (which costs a retry, or for
/// a request that must not be repeated, an error).
pub const IDLE_LIMIT: Duration = Duration::from_secs(20);

/// A connection is not reused once this old, however busy it is. Its handshake was the
/// last time the peer's certificate was verified (expiry, and this side's deny list;
/// the server closes a removed node's connections itself, `Port::close_denied`), so
/// this bounds how long a certificate that stopped being valid can still be used. A
/// handshake per connection every few minutes costs next to nothing.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// Idle connections kept per key: a worker has at most a heartbeat, a long poll and a
/// status batch in flight at once, each on a connection of its own.
pub const PER_KEY: usize = 4;

/// Idle connections kept in all (each a file descriptor and TLS buffers).
pub const TOTAL: usize = 64;

/// What a kept connection may be reused for.
#[derive(Clone)]
pub struct Key {
    addr: String,
    /// Held, not only compared: while an entry holds the `Arc`, no other config can be
    /// allocated at its address and pass for it.
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl Key {
    pub fn new(
        addr: &str,
        config: &Arc<rustls::ClientConfig>,
        server_name: &ServerName<'static>,
    ) -> Key {
        Key {
            addr: addr.to_string(),
            config: config.clone(),
            server_name: server_name.clone(),
        }
    }

    fn same(&self, other: &Key) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
            && self.addr == other.addr
            && self.server_name == other.server_name
    }
}

/// Idle connections (`T`: a [`TlsStream`]; anything in the pool's own tests), oldest
/// first.
pub struct Pool<T> {
    idle: Mutex<Vec<Idle<T>>>,
}

struct Idle<T> {
    key: Key,
    conn: T,
    /// When its handshake was done.
    opened: Instant,
    /// When it was put back.
    since: Instant,
}

impl<T> Pool<T> {
    pub const fn new() -> Pool<T> {
        Pool {
            idle: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Idle<T>>> {
        // A plain list, never left half-updated across a panic point.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection for `key`, with when it was opened, if
    /// one is young enough at `now`. It is the caller's now: one request at a time.
    pub fn take(&self, key: &Key, now: Instant) -> Option<(T, Instant)> {
        let mut dropped = Vec::new();
        let found = {
            let mut idle = self.lock();
            expire(&mut idle, now, &mut dropped);
            // The newest: the least likely to have been closed by the server.
            let at = idle.iter().rposition(|e| e.key.same(key));
            at.map(|i| idle.remove(i))
        };
        // Closed outside the lock.
        drop(dropped);
        found.map(|e| (e.conn, e.opened))
    }

    /// Keeps `conn` (opened at `opened`) for the next request for `key`, unless it is too
    /// old; the oldest of its key, or of all, makes room.
    pub fn put(&self, key: Key, conn: T, opened: Instant, now: Instant) {
        if now.saturating_duration_since(opened) >= MAX_AGE {
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut idle = self.lock();
            expire(&mut idle, now, &mut dropped);
            let mut same = idle.iter().enumerate().filter(|(_, e)| e.key.same(&key));
            if let Some((oldest, _)) = same.next() {
                if same.count() + 1 >= PER_KEY {
                    dropped.push(idle.remove(oldest));
                }
            }
            if idle.len() >= TOTAL {
                dropped.push(idle.remove(0));
            }
            idle.push(Idle {
                key,
                conn,
                opened,
                since: now,
            });
        }
        drop(dropped);
    }

    /// How many idle connections `key` has.
    #[cfg(test)]
    pub fn idle(&self, key: &Key) -> usize {
        self.lock().iter().filter(|e| e.key.same(key)).count()
    }
}

/// Moves the entries too long idle or too old at `now` from `idle` to `dropped`.
fn expire<T>(idle: &mut Vec<Idle<T>>, now: Instant, dropped: &mut Vec<Idle<T>>) {
    let mut i = 0;
    while i < idle.len() {
        let e = &idle[i];
        if now.saturating_duration_since(e.since) >= IDLE_LIMIT
            || now.saturating_duration_since(e.opened) >= MAX_AGE
        {
            dropped.push(idle.remove(i));
        } else {
            i += 1;
        }
    }
}

/// Whether an idle connection can carry another request: the server has not closed
/// it (a FIN, a `close_notify`) and sent nothing else since the last answer (which
/// would be read as the next one's). Reads only what already arrived, never waits.
/// Catching a close here, before a request is written, is what makes the retry after
/// a write into a closed connection the rare case.
pub fn still_open(tls: &mut TlsStream) -> bool {
    if tls.sock.set_nonblocking(true).is_err() {
        return false;
    }
    let open = loop {
        match tls.conn.read_tls(&mut tls.sock) {
            // The server's FIN (or its close_notify, read before).
            Ok(0) => break false,
            // Records that arrived while idle: a close_notify, or answer bytes nobody
            // asked for. Handshake messages (a session ticket, a key update) are
            // processed and harmless.
            Ok(_) => match tls.conn.process_new_packets() {
                Ok(io) if io.plaintext_bytes_to_read() == 0 && !io.peer_has_closed() => {}
                _ => break false,
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    open && tls.sock.set_nonblocking(false).is_ok()
}

/// Whether the connection holds nothing past the answer just read: no decrypted bytes
/// waiting, no close seen. Reads nothing from the socket.
pub fn nothing_pending(tls: &mut TlsStream) -> bool {
    tls.conn
        .process_new_packets()
        .is_ok_and(|io| io.plaintext_bytes_to_read() == 0 && !io.peer_has_closed())
}

#[cfg(test)]
mod tests {
    //! The pool's rules on plain values and a clock the test moves; the connections
    //! themselves are tested over real TLS in `client::tests`.

    use super::*;

    fn config() -> Arc<rustls::ClientConfig> {
        let config = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Arc::new(config)
    }

    fn key(addr: &str, config: &Arc<rustls::ClientConfig>) -> Key {
        Key::new(addr, config, &pki::tls::manager_server_name())
    }

    #[test]
    fn a_connection_goes_only_to_the_same_address_name_and_config() {
        let pool = Pool::new();
        let (a, b) = (config(), config());
        let t0 = Instant::now();
        pool.put(key("10.0.0.1:2377", &a), "a", t0, t0);
        assert_eq!(
            pool.take(&key("10.0.0.1:2377", &b), t0),
            None,
            "equal contents, another config"
        );
        assert_eq!(
            pool.take(&key("10.0.0.2:2377", &a), t0),
            None,
            "another address"
        );
        let other_name = Key::new(
            "10.0.0.1:2377",
            &a,
            &ServerName::try_from("node-1").expect("a name"),
        );
        assert_eq!(pool.take(&other_name, t0), None, "another server name");
        assert_eq!(pool.take(&key("10.0.0.1:2377", &a), t0), Some(("a", t0)));
        assert_eq!(pool.take(&key("10.0.0.1:2377", &a), t0), None, "taken once");
    }

    #[test]
    fn the_newest_is_taken_first_and_a_key_keeps_a_few() {
        let pool = Pool::new();
        let a = config();
        let k = key("10.0.0.1:2377", &a);
        let t0 = Instant::now();
        for (i, conn) in ["1", "2", "3", "4", "5"].into_iter().enumerate() {
            pool.put(k.clone(), conn, t0, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(pool.idle(&k), PER_KEY);
        let now = t0 + Duration::from_secs(1);
        let taken: Vec<_> = std::iter::from_fn(|| pool.take(&k, now).map(|(c, _)| c)).collect();
        assert_eq!(taken, ["5", "4", "3", "2"], "the oldest made room");
    }

    #[test]
    fn idle_too_long_or_too_old_is_not_reused() {
        let pool = Pool::new();
        let a = config();
        let k = key("10.0.0.1:2377", &a);
        let t0 = Instant::now();
        pool.put(k.clone(), "idle", t0, t0);
        assert_eq!(pool.take(&k, t0 + IDLE_LIMIT), None);
        assert_eq!(pool.idle(&k), 0, "dropped, not kept");

        // Busy all along, but opened long ago.
        let old = t0 + MAX_AGE - Duration::from_secs(1);
        pool.put(k.clone(), "old", t0, old);
        assert_eq!(pool.take(&k, old), Some(("old", t0)));
        pool.put(k.clone(), "old", t0, t0 + MAX_AGE);
        assert_eq!(pool.idle(&k), 0, "not even put back");
    }

    #[test]
    fn the_pool_as_a_whole_is_bounded() {
        let pool = Pool::new();
        let a = config();
        let t0 = Instant::now();
        for i in 0..TOTAL + 3 {
            pool.put(key(&format!("10.0.{i}.1:2377"), &a), i, t0, t0);
        }
        assert_eq!(pool.lock().len(), TOTAL);
        assert_eq!(
            pool.take(&key("10.0.0.1:2377", &a), t0),
            None,
            "the oldest went"
        );
        assert!(pool
            .take(&key(&format!("10.0.{TOTAL}.1:2377"), &a), t0)
            .is_some());
    }
}

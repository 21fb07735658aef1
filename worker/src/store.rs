//! The Databank drivers behind one small interface: objects addressed by a
//! validated `(type, id)` key, holding the exact JSON text of a JSON object.
//!
//! Owns the storage contract and the `memory` driver; the `sqlite` driver is in
//! `sqlite.rs`, the `mongodb` driver in `mongo.rs`. It must not know about HTTP, validate names (the API does that
//! before a key reaches a driver) or parse JSON bodies: a driver stores and
//! returns the text it is given, byte for byte, so that any key (`$set`,
//! `a.b`, ...) inside a body round-trips exactly and is never interpreted.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why a driver call failed. The API maps `Unavailable` and `Unusable` to
/// 503, `Failed` to 500 and `Full` to 507; the text of the first three is
/// logged, never sent to clients (it may name a host or hold a password),
/// except the file and cause of `Unusable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database cannot be reached (down, timed out, shutting down).
    Unavailable(String),
    /// The database answered with an error that retrying will not fix.
    Failed(String),
    /// The store is at its bound (`params.maxObjects`, `params.maxBytes`):
    /// the write was refused and nothing changed.
    Full(String),
    /// The database file cannot be used now (`sqlite`): the 503 answer names
    /// the file and the cause; nothing was changed.
    Unusable { file: String, fault: Fault, detail: String },
}

/// Why a database file cannot be used: the cause that a 503 answer and
/// `/healthz` give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Another process holds the write lock longer than `params.timeout`.
    Locked,
    /// The file, its directory or the file system cannot be written.
    ReadOnly,
    /// No space left on the file system (or the file at its size limit).
    Full,
    /// The directory of the file does not exist.
    Missing,
    /// The file is not a database, or its content is damaged.
    Corrupt,
    /// Not this worker's schema: another version, or another program's database.
    Schema,
    /// Any other I/O error.
    Io,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Locked => "locked",
            Fault::ReadOnly => "read-only",
            Fault::Full => "full",
            Fault::Missing => "missing",
            Fault::Corrupt => "corrupt",
            Fault::Schema => "wrong schema",
            Fault::Io => "I/O error",
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(s) => write!(f, "database unavailable: {}", s),
            StoreError::Failed(s) => write!(f, "database error: {}", s),
            StoreError::Full(s) => write!(f, "store full: {}", s),
            StoreError::Unusable { file, fault, detail } => {
                write!(f, "database {} unusable: {}: {}", file, fault.as_str(), detail)
            }
        }
    }
}

/// An object store. Implementations are shared by every pool thread.
pub trait Store: Send + Sync {
    /// Driver name for `/healthz` (`memory`, `mongodb`).
    fn name(&self) -> &'static str;
    /// Insert or replace the object `ty`/`id` with `json` (a JSON object's text).
    fn put(&self, ty: &str, id: &str, json: &str) -> Result<(), StoreError>;
    /// The stored text, or `None`.
    fn get(&self, ty: &str, id: &str) -> Result<Option<String>, StoreError>;
    /// Remove the object; `false` when there was none.
    fn delete(&self, ty: &str, id: &str) -> Result<bool, StoreError>;
    /// What is known of the database right now, without waiting for it.
    fn health(&self) -> Health {
        Health::Ok
    }
    /// Whether a call may wait for I/O (then it runs on the pool, never on
    /// the event loop). The memory driver only takes a lock.
    fn may_block(&self) -> bool {
        true
    }
}

/// What `/healthz` says of the database (`"database"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet.
    Unknown,
    Ok,
    Unreachable,
    /// The database file cannot be used (`sqlite`): `/healthz` says why.
    Unusable(Fault),
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Unreachable => "unreachable",
            Health::Unusable(f) => f.as_str(),
        }
    }
}

impl Health {
    fn to_u8(self) -> u8 {
        match self {
            Health::Unknown => 0,
            Health::Ok => 1,
            Health::Unreachable => 2,
            Health::Unusable(f) => 10 + f as u8,
        }
    }

    fn from_u8(v: u8) -> Health {
        const FAULTS: [Fault; 7] =
            [Fault::Locked, Fault::ReadOnly, Fault::Full, Fault::Missing, Fault::Corrupt, Fault::Schema, Fault::Io];
        match v {
            1 => Health::Ok,
            2 => Health::Unreachable,
            v if v >= 10 && ((v - 10) as usize) < FAULTS.len() => Health::Unusable(FAULTS[(v - 10) as usize]),
            _ => Health::Unknown,
        }
    }
}

/// How old the news of the database may be before `/healthz` asks for a check.
pub const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// What a driver last learnt of its database, for `/healthz`, which must
/// never wait for the database itself; and the wish for a new check when
/// that news is older than [`HEALTH_EVERY`], which the driver's health
/// thread ([`HealthNews::watch`]) fulfils. An idle worker does not wake up.
pub struct HealthNews {
    health: AtomicU8,
    /// When `health` was learnt (ms since `born`).
    at: AtomicU64,
    born: Instant,
    wanted: Mutex<bool>,
    cv: Condvar,
}

impl HealthNews {
    pub fn new() -> HealthNews {
        HealthNews {
            health: AtomicU8::new(Health::Unknown.to_u8()),
            at: AtomicU64::new(0),
            born: Instant::now(),
            wanted: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    pub fn set(&self, h: Health) {
        self.health.store(h.to_u8(), Ordering::Relaxed);
        self.at.store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The news, asking for nothing (a driver's own bookkeeping).
    pub fn peek(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// The news, at once; asks for a check when it is stale.
    pub fn get(&self) -> Health {
        let age = (self.born.elapsed().as_millis() as u64).saturating_sub(self.at.load(Ordering::Relaxed));
        if age > HEALTH_EVERY.as_millis() as u64 {
            let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
            if !*wanted {
                *wanted = true;
                self.cv.notify_one();
            }
        }
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Start the health thread: `first` once at start (it says in the log
    /// whether the database can be used), then `check` whenever [`get`]
    /// asks. Both report through [`set`].
    ///
    /// [`get`]: HealthNews::get
    /// [`set`]: HealthNews::set
    pub fn watch(self: &std::sync::Arc<Self>, first: impl FnOnce() + Send + 'static, check: impl Fn() + Send + 'static) {
        let news = self.clone();
        let spawned = std::thread::Builder::new().name("db-health".into()).stack_size(256 * 1024).spawn(move || {
            first();
            loop {
                {
                    let mut wanted = news.wanted.lock().unwrap_or_else(|e| e.into_inner());
                    while !*wanted {
                        wanted = news.cv.wait(wanted).unwrap_or_else(|e| e.into_inner());
                    }
                    *wanted = false;
                }
                check();
            }
        });
        if let Err(e) = spawned {
            log::warn!("cannot start the database health thread: {}", e);
        }
    }
}

thread_local! {
    /// The deadline of the request this pool thread runs (see [`request_deadline`]).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Set by a pool thread before it runs a request: the instant at which the
/// event loop answers it 503 by itself.
pub fn set_request_deadline(deadline: Option<Instant>) {
    DEADLINE.with(|d| d.set(deadline));
}

/// The deadline of the request being run on this thread, if any: a driver
/// that waits (the `sqlite` busy timeout) gives up before it, so that its own,
/// more precise answer is the one the client gets.
pub fn request_deadline() -> Option<Instant> {
    DEADLINE.with(|d| d.get())
}

/// The one string key of an object. `/` cannot occur in a valid type or id, so
/// the pair maps to exactly one key and back (the mongodb driver uses it as `_id`).
pub fn object_key(ty: &str, id: &str) -> String {
    let mut k = String::with_capacity(ty.len() + id.len() + 1);
    k.push_str(ty);
    k.push('/');
    k.push_str(id);
    k
}

/// Bytes charged to each object of the memory driver besides its key and
/// text: the map entry, two string headers and the allocator's rounding.
/// With it, many tiny objects reach `maxBytes` before they cost more memory
/// than it says.
pub const OBJECT_OVERHEAD: u64 = 128;

/// The `memory` driver: a map per process (which is why zero-downtime restarts
/// require a shared store, `sqlite` or `mongodb`: a new worker starts empty), bounded by a number of
/// objects and a number of bytes (key + text + [`OBJECT_OVERHEAD`] each).
pub struct MemoryStore {
    inner: Mutex<Memory>,
    max_objects: u64,
    max_bytes: u64,
}

#[derive(Default)]
struct Memory {
    map: HashMap<String, String>,
    bytes: u64,
}

fn charge(key: &str, json: &str) -> u64 {
    (key.len() + json.len()) as u64 + OBJECT_OVERHEAD
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(u64::MAX, u64::MAX)
    }
}

impl MemoryStore {
    pub fn new(max_objects: u64, max_bytes: u64) -> MemoryStore {
        MemoryStore { inner: Mutex::new(Memory::default()), max_objects, max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        // A panic in a handler (on the loop or a pool thread) must not make the store unusable:
        // every operation leaves the map consistent, so a poisoned lock is safe.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn may_block(&self) -> bool {
        false
    }

    fn put(&self, ty: &str, id: &str, json: &str) -> Result<(), StoreError> {
        let key = object_key(ty, id);
        let new = charge(&key, json);
        let mut m = self.lock();
        let old = m.map.get(&key).map(|v| charge(&key, v));
        if old.is_none() && m.map.len() as u64 >= self.max_objects {
            return Err(StoreError::Full(format!("{} objects (params.maxObjects)", self.max_objects)));
        }
        let bytes = m.bytes - old.unwrap_or(0) + new;
        // A replacement that does not grow is always allowed.
        if bytes > self.max_bytes && new > old.unwrap_or(0) {
            return Err(StoreError::Full(format!("{} bytes (params.maxBytes)", self.max_bytes)));
        }
        m.bytes = bytes;
        m.map.insert(key, json.to_string());
        Ok(())
    }

    fn get(&self, ty: &str, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().map.get(&object_key(ty, id)).cloned())
    }

    fn delete(&self, ty: &str, id: &str) -> Result<bool, StoreError> {
        let key = object_key(ty, id);
        let mut m = self.lock();
        match m.map.remove(&key) {
            Some(v) => {
                m.bytes -= charge(&key, &v);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Log a driver failure at `warn`, at most once a second (a database outage
/// under load would otherwise flood the master's log).
pub fn warn_store_error(e: &StoreError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if LAST.swap(now, Ordering::Relaxed) != now {
        log::warn!(error = e.to_string().as_str(); "database request failed: {}", e);
    } else {
        log::debug!(error = e.to_string().as_str(); "database request failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_round_trip() {
        let s = MemoryStore::default();
        assert_eq!(s.get("a", "b").unwrap(), None);
        s.put("a", "b", r#"{"$set":1}"#).unwrap();
        s.put("a.b", "c", r#"{"x":2}"#).unwrap();
        assert_eq!(s.get("a", "b").unwrap().as_deref(), Some(r#"{"$set":1}"#));
        assert_eq!(s.get("a.b", "c").unwrap().as_deref(), Some(r#"{"x":2}"#));
        s.put("a", "b", "{}").unwrap();
        assert_eq!(s.get("a", "b").unwrap().as_deref(), Some("{}"));
        assert!(s.delete("a", "b").unwrap());
        assert!(!s.delete("a", "b").unwrap());
        assert_eq!(s.get("a", "b").unwrap(), None);
    }

    #[test]
    fn memory_bounds() {
        let per = |json: &str| charge("t/a", json);
        let s = MemoryStore::new(2, 3 * per("{}"));
        s.put("t", "a", "{}").unwrap();
        s.put("t", "b", "{}").unwrap();
        assert!(matches!(s.put("t", "c", "{}"), Err(StoreError::Full(_))), "max objects");
        assert_eq!(s.get("t", "c").unwrap(), None);
        // Replacing is not a new object.
        s.put("t", "a", "{ }").unwrap();
        assert!(s.delete("t", "b").unwrap());
        let big = format!("{{\"k\":\"{}\"}}", "x".repeat(2 * per("{}") as usize));
        assert!(matches!(s.put("t", "b", &big), Err(StoreError::Full(_))), "max bytes");
        assert!(matches!(s.put("t", "a", &big), Err(StoreError::Full(_))), "a growing replacement");
        assert_eq!(s.get("t", "a").unwrap().as_deref(), Some("{ }"), "nothing lost");
        s.put("t", "a", "{}").unwrap();
        s.put("t", "b", "{}").unwrap();
        assert_eq!(s.lock().bytes, 2 * per("{}"));
    }

    #[test]
    fn health_encoding_round_trips() {
        for h in [Health::Unknown, Health::Ok, Health::Unreachable, Health::Unusable(Fault::Io), Health::Unusable(Fault::Locked)] {
            assert_eq!(Health::from_u8(h.to_u8()), h);
        }
        let n = HealthNews::new();
        assert_eq!(n.get(), Health::Unknown);
        n.set(Health::Unusable(Fault::Full));
        assert_eq!(n.get(), Health::Unusable(Fault::Full));
    }

    #[test]
    fn keys_are_unambiguous() {
        assert_eq!(object_key("a.b", "c"), "a.b/c");
        assert_ne!(object_key("a", "b.c"), object_key("a.b", "c"));
    }
}

//! The Databank drivers behind one small interface: objects addressed by a
//! validated `(type, id)` key, holding the exact JSON text of a JSON object.
//!
//! Owns the storage contract and the `memory` driver; the `mongodb` driver is in
//! `mongo.rs`. It must not know about HTTP, validate names (the API does that
//! before a key reaches a driver) or parse JSON bodies: a driver stores and
//! returns the text it is given, byte for byte, so that any key (`$set`,
//! `a.b`, ...) inside a body round-trips exactly and is never interpreted.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a driver call failed. The API maps `Unavailable` to 503 and `Failed`
/// to 500; the text is logged, never sent to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database cannot be reached (down, timed out, shutting down).
    Unavailable(String),
    /// The database answered with an error that retrying will not fix.
    Failed(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(s) => write!(f, "database unavailable: {}", s),
            StoreError::Failed(s) => write!(f, "database error: {}", s),
        }
    }
}

/// An object store. Implementations are shared by every connection thread.
pub trait Store: Send + Sync {
    /// Driver name for `/healthz` (`memory`, `mongodb`).
    fn name(&self) -> &'static str;
    /// Insert or replace the object `ty`/`id` with `json` (a JSON object's text).
    fn put(&self, ty: &str, id: &str, json: &str) -> Result<(), StoreError>;
    /// The stored text, or `None`.
    fn get(&self, ty: &str, id: &str) -> Result<Option<String>, StoreError>;
    /// Remove the object; `false` when there was none.
    fn delete(&self, ty: &str, id: &str) -> Result<bool, StoreError>;
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

/// The `memory` driver: a map per process (which is why zero-downtime restarts
/// require `mongodb`: a new worker starts empty).
#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, String>>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A panic in another request thread must not make the store unusable:
        // every operation leaves the map consistent, so a poisoned lock is safe.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn put(&self, ty: &str, id: &str, json: &str) -> Result<(), StoreError> {
        self.lock().insert(object_key(ty, id), json.to_string());
        Ok(())
    }

    fn get(&self, ty: &str, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().get(&object_key(ty, id)).cloned())
    }

    fn delete(&self, ty: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().remove(&object_key(ty, id)).is_some())
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
    fn keys_are_unambiguous() {
        assert_eq!(object_key("a.b", "c"), "a.b/c");
        assert_ne!(object_key("a", "b.c"), object_key("a.b", "c"));
    }
}

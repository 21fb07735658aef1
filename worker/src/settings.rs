//! The built-in worker's own keys under `params` (zdrestart.json(5)): its
//! deadlines and capacity limits, validated once at start (and by the probe,
//! so that a restart with a bad value is refused).
//!
//! Owns the names, defaults and bounds of these keys; an error names the key
//! (`params.idleTimeout: ...`). It must not do I/O beyond reading
//! `/proc/self/limits` (to keep `maxConnections` under the open-file limit).

use serde_json::{Map, Value};
use std::time::Duration;

/// Default `params.idleTimeout`: a keep-alive connection idle this long is closed.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(5);
/// Default `params.headerTimeout`: a whole request head must arrive within it.
pub const DEFAULT_HEADER: Duration = Duration::from_secs(10);
/// Default `params.minBodyRate` (bytes per second, after `headerTimeout` of grace).
pub const DEFAULT_MIN_RATE: u64 = 16 * 1024;
/// Default `params.maxConnections` (lowered to fit the open-file limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16 * 1024;
/// Default `params.maxObjects` of the memory driver.
pub const DEFAULT_MAX_OBJECTS: u64 = 1_000_000;
/// Default `params.maxBytes` of the memory driver: with the per-object overhead
/// counted (see `store::OBJECT_OVERHEAD`), one worker stays well under 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 128 * 1024 * 1024;
/// File descriptors kept for everything that is not a client connection
/// (listeners, epoll, pipes, the database driver's sockets, log files).
const FD_RESERVE: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub min_body_rate: u64,
    pub max_connections: usize,
    /// Driver requests that may wait for one of the `threads` (beyond those running).
    pub max_queued: usize,
    pub max_objects: u64,
    pub max_bytes: u64,
    /// `params.timeout`: how long a driver request may take before it answers 503.
    pub request_timeout: Duration,
    /// `params.synchronous` of the sqlite driver: when a commit reaches the disk.
    pub synchronous: crate::sqlite::Sync,
}

impl Settings {
    /// Read the keys from `params`; `threads` sizes the default queue and
    /// `request_timeout` is `params.timeout` as the config read it.
    pub fn from_params(params: &Map<String, Value>, threads: u32, request_timeout: Duration) -> Result<Settings, String> {
        let fd_cap = open_file_limit().map(|n| n.saturating_sub(FD_RESERVE + 2 * threads as usize).max(16));
        let max_connections = int(params, "maxConnections", DEFAULT_MAX_CONNECTIONS as u64, 1, 1 << 24)? as usize;
        let max_connections = match fd_cap {
            Some(cap) if cap < max_connections => {
                log::warn!("params.maxConnections: {} lowered to {} to fit the open-file limit", max_connections, cap);
                cap
            }
            _ => max_connections,
        };
        Ok(Settings {
            idle_timeout: seconds(params, "idleTimeout", DEFAULT_IDLE)?,
            header_timeout: seconds(params, "headerTimeout", DEFAULT_HEADER)?,
            min_body_rate: int(params, "minBodyRate", DEFAULT_MIN_RATE, 1, u32::MAX as u64)?,
            max_connections,
            max_queued: int(params, "maxQueued", (threads as u64 * 16).max(64), 0, 1 << 20)? as usize,
            max_objects: int(params, "maxObjects", DEFAULT_MAX_OBJECTS, 1, u64::MAX >> 1)?,
            max_bytes: int(params, "maxBytes", DEFAULT_MAX_BYTES, 1, u64::MAX >> 1)?,
            request_timeout,
            synchronous: synchronous(params)?,
        })
    }

    /// What `Keep-Alive: timeout=N` announces: a second less than the idle
    /// timeout (whole seconds), so that a client honouring it never reuses a
    /// connection just as the worker closes it. `None` under 2 s.
    pub fn announced_idle(&self) -> Option<u64> {
        let s = self.idle_timeout.as_secs();
        (s >= 2).then(|| s - 1)
    }
}

fn synchronous(params: &Map<String, Value>) -> Result<crate::sqlite::Sync, String> {
    match params.get("synchronous") {
        None | Some(Value::Null) => Ok(crate::sqlite::Sync::Normal),
        Some(Value::String(s)) if s == "normal" => Ok(crate::sqlite::Sync::Normal),
        Some(Value::String(s)) if s == "full" => Ok(crate::sqlite::Sync::Full),
        Some(other) => Err(format!("params.synchronous: expected \"normal\" or \"full\", found {}", other)),
    }
}

fn seconds(params: &Map<String, Value>, key: &str, default: Duration) -> Result<Duration, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v > 0.0 && v <= 86400.0 => Ok(Duration::from_secs_f64(v)),
            _ => Err(format!("params.{}: expected a number of seconds greater than 0 and at most 86400, found {}", key, n)),
        },
        Some(other) => Err(format!("params.{}: expected a number of seconds, found {}", key, other)),
    }
}

fn int(params: &Map<String, Value>, key: &str, default: u64, min: u64, max: u64) -> Result<u64, String> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(format!("params.{}: expected an integer from {} to {}, found {}", key, min, max, n)),
        },
        Some(other) => Err(format!("params.{}: expected an integer from {} to {}, found {}", key, min, max, other)),
    }
}

/// The soft limit on open files, from `/proc/self/limits` (no `unsafe`
/// needed); `None` when unknown or unlimited.
fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_and_errors() {
        let s = Settings::from_params(&Map::new(), 4, Duration::from_secs(3)).unwrap();
        assert_eq!((s.idle_timeout, s.header_timeout, s.max_queued), (DEFAULT_IDLE, DEFAULT_HEADER, 64));
        assert_eq!((s.max_objects, s.max_bytes), (DEFAULT_MAX_OBJECTS, DEFAULT_MAX_BYTES));
        assert_eq!(s.announced_idle(), Some(4));
        let s = Settings::from_params(&p(json!({"idleTimeout": 0.5, "maxBytes": 10})), 4, Duration::from_secs(3)).unwrap();
        assert_eq!((s.idle_timeout, s.max_bytes, s.announced_idle()), (Duration::from_millis(500), 10, None));
        let e = Settings::from_params(&p(json!({"headerTimeout": 0})), 4, Duration::from_secs(3)).unwrap_err();
        assert!(e.starts_with("params.headerTimeout: "), "{}", e);
        let e = Settings::from_params(&p(json!({"maxObjects": "many"})), 4, Duration::from_secs(3)).unwrap_err();
        assert!(e.starts_with("params.maxObjects: "), "{}", e);
        let e = Settings::from_params(&p(json!({"maxConnections": 0})), 4, Duration::from_secs(3)).unwrap_err();
        assert!(e.starts_with("params.maxConnections: "), "{}", e);
        let s = Settings::from_params(&p(json!({"synchronous": "full"})), 4, Duration::from_secs(3)).unwrap();
        assert_eq!(s.synchronous, crate::sqlite::Sync::Full);
        let e = Settings::from_params(&p(json!({"synchronous": "off"})), 4, Duration::from_secs(3)).unwrap_err();
        assert_eq!(e, "params.synchronous: expected \"normal\" or \"full\", found \"off\"");
    }
}

//! The compatibility probe (zdrestart-worker(7), "Probe"): `ZDRESTART_PROBE=1`.
//!
//! Owns what the built-in worker answers when the master asks "can this code,
//! with this config, serve beside the running workers?": the magic number, the
//! version, whether the workers' state is shared (`SHARED=1` for `sqlite` and
//! `mongodb`, `SHARED=0` for `memory`), and whether the database the new
//! workers will use can be used: `sqlite` opens the file, checks its schema
//! and commits a small write; `mongodb` pings within a short timeout. It must
//! not open listeners or start serving, and it always ends the process with a
//! clear exit status (0 fit, 1 not).

use crate::mongo::{InitError, MongoStore};
use crate::notify::Notifier;
use std::io::Write;
use std::time::Duration;
use zdrestart::config::{Config, Driver};

/// Longest database ping (mongodb) or lock wait (sqlite) of a probe: the
/// master has `probeTimeout` (10 s by default) for the whole probe.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Write one report line: on the report pipe, or on stdout when run by hand.
fn report(notifier: &Notifier, key: &str, value: &str) {
    if !notifier.send(key, value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}={}", key, crate::notify::one_line(value));
        let _ = out.flush();
    }
}

/// Run the probe; returns the exit status.
pub fn run(cfg: &Config, notifier: &Notifier) -> i32 {
    report(notifier, "MAGIC", &zdrestart::MAGIC.to_string());
    report(notifier, "VERSION", zdrestart::VERSION);
    // Every worker of every generation sees the same objects, or each has its own.
    report(notifier, "SHARED", if cfg.driver == Driver::Memory { "0" } else { "1" });
    // The worker's own params keys: a value the new code cannot use refuses the restart.
    let set = match crate::settings::Settings::from_params(&cfg.params, cfg.threads, cfg.db_timeout) {
        Ok(s) => s,
        Err(m) => return failed(notifier, format!("config: {}", m)),
    };
    if let (Driver::Sqlite, Some(path)) = (cfg.driver, &cfg.sqlite_path) {
        let store = crate::sqlite::SqliteStore::new(path, cfg.db_timeout.min(PING_TIMEOUT), set.synchronous);
        if let Err(e) = store.check() {
            return failed(notifier, e.to_string());
        }
        log::debug!(component = "probe"; "database {} can be used", store.file());
    }
    if cfg.driver == Driver::Mongodb {
        let timeout = cfg.db_timeout.min(PING_TIMEOUT);
        let result = match MongoStore::new(cfg, timeout, 1) {
            Err(InitError::Config(m)) => Err(format!("config: {}", m)),
            Err(InitError::Other(m)) => Err(format!("database unreachable: {}", m)),
            Ok(store) => store.ping().map_err(|e| match e {
                crate::store::StoreError::Unavailable(d)
                | crate::store::StoreError::Failed(d)
                | crate::store::StoreError::Full(d) => format!("database unreachable: {}", d),
                other => other.to_string(),
            }),
        };
        if let Err(msg) = result {
            return failed(notifier, msg);
        }
        log::debug!(component = "probe"; "database answered the ping");
    }
    0
}

/// Report a failure; returns the exit status.
fn failed(notifier: &Notifier, msg: String) -> i32 {
    log::error!(component = "probe"; "probe failed: {}", msg);
    report(notifier, "ERROR", &msg);
    1
}

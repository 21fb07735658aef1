//! The compatibility probe (zdrestart-worker(7), "Probe"): `ZDRESTART_PROBE=1`.
//!
//! Owns what the built-in worker answers when the master asks "can this code,
//! with this config, serve beside the running workers?": the magic number, the
//! version, and (with `mongodb`) whether the database answers a ping within a
//! short timeout. It must not open listeners or start serving, and it always
//! ends the process with a clear exit status (0 fit, 1 not).

use crate::mongo::{InitError, MongoStore};
use crate::notify::Notifier;
use std::io::Write;
use std::time::Duration;
use zdrestart::config::{Config, Driver};

/// Longest database ping of a probe: the master has `probeTimeout` (10 s by
/// default) for the whole probe.
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
    // The worker's own params keys: a value the new code cannot use refuses the restart.
    if let Err(m) = crate::settings::Settings::from_params(&cfg.params, cfg.threads, cfg.db_timeout) {
        let msg = format!("config: {}", m);
        log::error!(component = "probe"; "probe failed: {}", msg);
        report(notifier, "ERROR", &msg);
        return 1;
    }
    if cfg.driver == Driver::Mongodb {
        let timeout = cfg.db_timeout.min(PING_TIMEOUT);
        let result = match MongoStore::new(cfg, timeout, 1) {
            Err(InitError::Config(m)) => Err(format!("config: {}", m)),
            Err(InitError::Other(m)) => Err(format!("database unreachable: {}", m)),
            Ok(store) => store.ping().map_err(|e| match e {
                crate::store::StoreError::Unavailable(d)
                | crate::store::StoreError::Failed(d)
                | crate::store::StoreError::Full(d) => {
                    format!("database unreachable: {}", d)
                }
            }),
        };
        if let Err(msg) = result {
            log::error!(component = "probe"; "probe failed: {}", msg);
            report(notifier, "ERROR", &msg);
            return 1;
        }
        log::debug!(component = "probe"; "database answered the ping");
    }
    0
}

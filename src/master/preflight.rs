//! What a valid configuration still cannot do, said before the master
//! tries (`zdrestart -t`, `zdrestart --check`, and warnings at start):
//! a worker that speaks only sd_notify(3) asked for a probe it cannot
//! answer, a worker program or a directory that does not exist, and the
//! settings under which every zero-downtime restart will be refused.
//!
//! Owns only these findings' wording; it looks at the file system (does a
//! path exist) and never starts, binds or contacts anything. The parser
//! (`config`) decides what is valid; this decides what is worth a warning.

use super::spawn_spec;
use crate::config::{Config, Driver, Notify};
use crate::restart::Reason;
use std::path::Path;

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The master will not start, or its workers will not.
    CannotStart,
    /// The master runs, but refuses every zero-downtime restart (`--check`
    /// says so in its verdict).
    RestartsRefused,
}

/// One finding: the key it is about and what will happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub key: &'static str,
    pub text: String,
}

impl Finding {
    /// One line, as the config's own warnings: `FILE: key "K": text`.
    pub fn line(&self, cfg: &Config) -> String {
        format!("{}: key \"{}\": {}", cfg.path.display(), self.key, self.text)
    }
}

/// The hint for a failed probe of a worker that speaks sd_notify(3) only
/// (`"notify": "systemd"`, the probe on, a `worker` of one's own).
pub fn sd_notify_probe(cfg: &Config) -> Option<String> {
    (cfg.notify == Notify::Systemd && cfg.probe && cfg.worker.is_some()).then(|| {
        format!(
            "\"notify\" is \"systemd\" and \"probe\" is on: the probe runs the worker program with ZDRESTART_PROBE=1 \
             and waits up to probeTimeout ({} s) for MAGIC= on its report pipe, which a server that speaks only \
             sd_notify(3) never writes (it starts serving instead, where it binds on its own); set \"probe\": false \
             with \"magic\", \"version\" and \"sharedState\" (zdrestart.json(5))",
            cfg.probe_timeout.as_secs_f64()
        )
    })
}

/// Every finding about `cfg`, the ones that stop a start first.
pub fn findings(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut cannot = |key, text: String| out.push(Finding { kind: Kind::CannotStart, key, text });
    if let Some(text) = sd_notify_probe(cfg) {
        cannot("probe", text);
    }
    if let Err(e) = spawn_spec::worker_program(cfg) {
        let key = if cfg.worker.is_some() { "worker" } else { "worker (built-in)" };
        cannot(key, format!("{}: no worker can start", e));
    }
    let dirs: [(&'static str, Option<&Path>, &str); 4] = [
        ("controlSocket", cfg.control_socket.as_deref(), "the master cannot create its control socket"),
        ("pidfile", cfg.pidfile.as_deref(), "the master cannot write its pidfile"),
        ("logfile", cfg.logfile.as_deref(), "the master cannot open its log"),
        ("params.path", cfg.sqlite_path.as_deref(), "the workers cannot create the database file"),
    ];
    for (key, path, what) in dirs {
        let Some(dir) = path.and_then(Path::parent).filter(|d| !d.as_os_str().is_empty()) else { continue };
        if !dir.is_dir() {
            cannot(key, format!("directory {} does not exist: {}", dir.display(), what));
        }
    }
    let mut refused = |key, reason: Reason, why: &str| {
        out.push(Finding {
            kind: Kind::RestartsRefused,
            key,
            text: format!("every zero-downtime restart will be refused ({}): {}", reason.wire(), why),
        })
    };
    if cfg.workers < 2 {
        refused("workers", Reason::NoWorkers, "one worker cannot serve while it is replaced; use 2 or more");
    }
    if cfg.worker.is_none() && cfg.driver == Driver::Memory {
        refused("driver", Reason::BadDriver, "\"memory\" keeps objects in each worker; use \"sqlite\" (one host) or \"mongodb\"");
    }
    if !cfg.probe && cfg.shared_state == Some(false) {
        refused("sharedState", Reason::BadDriver, "the workers' state is declared not shared");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(Path::new("/etc/z.json"), text).unwrap()
    }

    fn keys(c: &Config) -> Vec<(&'static str, Kind)> {
        // Unit tests run without the built-in worker beside them.
        findings(c).into_iter().filter(|f| f.key != "worker (built-in)").map(|f| (f.key, f.kind)).collect()
    }

    #[test]
    fn sd_notify_worker_with_the_probe_on() {
        let c = cfg(r#"{"worker": ["/bin/sh"], "notify": "systemd", "driver": "sqlite", "params": {"path": "/tmp/x.db"}}"#);
        assert_eq!(keys(&c), [("probe", Kind::CannotStart)]);
        assert!(findings(&c)[0].line(&c).starts_with("/etc/z.json: key \"probe\": \"notify\" is \"systemd\""));
        let off = r#"{"worker": ["/bin/sh"], "notify": "systemd", "probe": false, "magic": 1, "sharedState": true}"#;
        assert_eq!(keys(&cfg(off)), []);
        // The built-in worker answers the probe whatever `notify` says.
        assert_eq!(keys(&cfg(r#"{"notify": "systemd", "driver": "sqlite", "params": {"path": "/tmp/x.db"}}"#)), []);
        assert_eq!(keys(&cfg(r#"{"worker": ["/bin/sh"], "notify": "both", "driver": "sqlite", "params": {"path": "/tmp/x.db"}}"#)), []);
    }

    #[test]
    fn missing_programs_and_directories() {
        let c = cfg(r#"{"worker": ["no-such-program-zdr"], "controlSocket": "/nonexistent/dir/z.sock", "workers": 1,
            "driver": "sqlite", "params": {"path": "/nonexistent/db/x.db"}}"#);
        assert_eq!(
            keys(&c),
            [
                ("worker", Kind::CannotStart),
                ("controlSocket", Kind::CannotStart),
                ("params.path", Kind::CannotStart),
                ("workers", Kind::RestartsRefused)
            ]
        );
        assert!(findings(&c)[1].text.contains("directory /nonexistent/dir does not exist"));
    }

    #[test]
    fn restarts_refused_by_the_memory_driver_or_a_declared_state() {
        let c = cfg(r#"{"worker": ["/bin/sh"], "probe": false, "magic": 1, "sharedState": false}"#);
        assert_eq!(keys(&c), [("sharedState", Kind::RestartsRefused)]);
        assert!(findings(&c)[0].text.contains("(bad driver)"));
    }
}

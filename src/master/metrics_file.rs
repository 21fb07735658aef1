//! The master's side of its metrics: counting the state machine's facts
//! ([`count`]) and writing `metricsFile` ([`MetricsFile`]) for
//! node_exporter's textfile collector.
//!
//! The file is written on events, never on a clock: the loop asks for a
//! write after a round of events that brought a fact, and the text is
//! written only when it differs from what the file holds. Each write is a
//! new temporary file beside it (`NAME.tmp`, which the collector ignores:
//! it reads `*.prom`), fsync'd, then renamed over it, so a scrape never
//! sees half a file. A failure is a warning naming the path and the
//! operation (once until a write succeeds again): metrics never stop the
//! master. The rendering is [`crate::metrics::render`]'s.

use super::state::{ExitCause, HungThen, Progress};
use crate::metrics::Counters;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Count one fact; `wall` is when it happened.
pub fn count(c: &mut Counters, fact: &Progress, wall: SystemTime) {
    let ended = |c: &mut Counters, took: std::time::Duration| {
        c.last_restart_end_ms = Some(wall.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64);
        c.last_restart_duration_ms = Some(took.as_millis() as u64);
    };
    match fact {
        Progress::Completed { took, .. } => {
            Counters::bump(&mut c.restarts, "complete");
            ended(c, *took);
        }
        Progress::Aborted { took, .. } => {
            Counters::bump(&mut c.restarts, "aborted");
            ended(c, *took);
        }
        Progress::CanaryRolledBack { .. } => Counters::bump(&mut c.restarts, "rolled_back"),
        Progress::Refused { .. } => Counters::bump(&mut c.restarts, "refused"),
        Progress::Upgrade { refused: None, .. } => Counters::bump(&mut c.upgrades, "done"),
        Progress::Upgrade { refused: Some(r), .. } if *r == crate::restart::Reason::ExecFailed => Counters::bump(&mut c.upgrades, "failed"),
        Progress::Upgrade { refused: Some(_), .. } => Counters::bump(&mut c.upgrades, "refused"),
        Progress::WorkerExited { cause, .. } => Counters::bump(&mut c.worker_exits, cause.as_str()),
        Progress::Respawn { .. } => Counters::bump(&mut c.worker_respawns, "exit"),
        Progress::Hung { then: HungThen::Replaced, .. } => Counters::bump(&mut c.worker_respawns, "hung"),
        _ => {}
    }
    debug_assert!(ExitCause::ALL.iter().all(|c| crate::metrics::EXIT_CAUSES.contains(&c.as_str())));
}

/// `metricsFile`: where to write, and what it holds now.
pub struct MetricsFile {
    path: PathBuf,
    tmp: PathBuf,
    /// The text last written (None: not written yet, or the last write failed).
    written: Option<String>,
    /// A failure was logged and no write succeeded since.
    failing: bool,
}

impl MetricsFile {
    pub fn new(path: &Path) -> MetricsFile {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        MetricsFile { path: path.to_path_buf(), tmp: PathBuf::from(tmp), written: None, failing: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `text` unless the file already holds it.
    pub fn update(&mut self, text: &str) {
        if self.written.as_deref() == Some(text) {
            return;
        }
        match self.replace(text) {
            Ok(()) => {
                if self.failing {
                    log::info!(path = self.path.display().to_string(); "metrics file {} written again", self.path.display());
                }
                self.failing = false;
                self.written = Some(text.to_string());
            }
            Err(e) => {
                self.written = None;
                if !self.failing {
                    log::warn!(path = self.path.display().to_string(); "metricsFile: {}; the master serves on without it", e);
                }
                self.failing = true;
            }
        }
    }

    /// Temporary file, fsync, rename over the file. Err names the operation
    /// and the path.
    fn replace(&self, text: &str) -> Result<(), String> {
        let err = |op: &str, p: &Path, e: std::io::Error| format!("{} {}: {}", op, p.display(), crate::sys::strerror(&e));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp)
            .map_err(|e| err("open", &self.tmp, e))?;
        f.write_all(text.as_bytes()).map_err(|e| err("write", &self.tmp, e))?;
        f.sync_all().map_err(|e| err("fsync", &self.tmp, e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            format!("rename {} to {}: {}", self.tmp.display(), self.path.display(), crate::sys::strerror(&e))
        })
    }

    /// At exit: the file stays (its last state, `zdrestart_state{state="stopping"}`
    /// if it stopped cleanly); only a temporary file left by a failed write goes.
    pub fn close(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_changes_and_warns_once() {
        let dir = std::env::temp_dir().join(format!("zdrestart-metrics-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("z.prom");
        let mut m = MetricsFile::new(&p);
        m.update("a 1\n");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 1\n");
        std::fs::write(&p, "changed behind its back\n").unwrap();
        m.update("a 1\n"); // same text: no write
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "changed behind its back\n");
        m.update("a 2\n");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        assert!(!dir.join("z.prom.tmp").exists());
        let mut bad = MetricsFile::new(&dir.join("missing/z.prom"));
        bad.update("a 1\n");
        assert!(bad.failing && bad.written.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

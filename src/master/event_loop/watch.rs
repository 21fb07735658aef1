//! What operators watch: the state machine's facts streamed to the control
//! clients that asked (`... WAIT PROGRESS`) and counted, the STATUS report
//! with what only the loop knows (the counters, resident set sizes), and
//! `metricsFile` brought up to date after the facts of a round. Nothing
//! here runs on a clock: an idle master writes nothing.

use super::*;
use crate::control::PROGRESS;

impl Loop {
    /// A client asked for a restart or an upgrade with `PROGRESS`: it gets
    /// each fact until its answer is sent.
    pub(super) fn watch(&mut self, client: ClientId, progress: bool) {
        if progress {
            self.streams.insert(client);
        }
    }

    /// One fact of the state machine (already logged): counted, streamed.
    pub(super) fn on_fact(&mut self, fact: &super::super::state::Progress) {
        super::super::metrics_file::count(&mut self.counters, fact, SystemTime::now());
        self.metrics_due = true;
        if self.streams.is_empty() {
            return;
        }
        let step = fact.step(self.sm.rollout_view());
        let line = format!("{} {}", PROGRESS, step);
        if let Some(c) = &mut self.control {
            for &client in &self.streams {
                c.stream(client, &line);
            }
        }
    }

    /// STATUS: the state machine's report, the counters, and (`rss`) the
    /// resident set sizes read from /proc now.
    pub(super) fn status_report(&self, rss: bool) -> crate::status::StatusReport {
        let mut st = self.sm.status(std::process::id(), self.started_wall);
        st.counters = self.counters.clone();
        if rss {
            st.rss_bytes = vm_rss("self");
            for w in &mut st.workers {
                w.rss_bytes = w.main_pid.or(w.pid).and_then(|p| vm_rss(&p.to_string()));
            }
        }
        st
    }

    /// After a round of events that brought a fact (or at start): the
    /// metrics file holds the state now.
    pub(super) fn update_metrics_file(&mut self) {
        if !std::mem::take(&mut self.metrics_due) || self.metrics_file.is_none() {
            return;
        }
        let text = crate::metrics::render(&self.status_report(false));
        if let Some(m) = &mut self.metrics_file {
            m.update(&text);
        }
    }
}

/// `VmRSS` of /proc/`pid`/status, in bytes (None: gone, or not readable).
fn vm_rss(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", pid)).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

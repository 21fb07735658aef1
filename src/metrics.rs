//! The master's metrics in the Prometheus text exposition format (version
//! 0.0.4): what `zdrestartctl metrics` prints and what the master writes to
//! `metricsFile` for node_exporter's textfile collector.
//!
//! Owns the counters the master keeps ([`Counters`], part of `STATUS`) and
//! the one rendering ([`render`]) of a [`StatusReport`], so that the file and
//! the command print the same text for the same state. Pure: no clock, no
//! file, no socket. Names, units and types follow Prometheus' conventions
//! (`_total` counters, `_seconds`, `_info` with labels); every label value of
//! a counter is always present (0 until it happens), so that `rate()` and
//! alerts see the first one. Nothing here changes with time alone: the text
//! changes only when the state does (zdrestart.json(5), `metricsFile`).

use crate::status::{MasterState, StatusReport, WorkerState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Outcomes of a restart request (`zdrestart_restarts_total{outcome}`).
pub const RESTART_OUTCOMES: [&str; 4] = ["complete", "aborted", "refused", "rolled_back"];
/// Outcomes of an upgrade of the master (`zdrestart_upgrades_total{outcome}`):
/// `done` is counted by the new image, `failed` when the exec failed.
pub const UPGRADE_OUTCOMES: [&str; 3] = ["done", "refused", "failed"];
/// Causes of a worker's end (`zdrestart_worker_exits_total{cause}`).
pub const EXIT_CAUSES: [&str; 4] = ["stopped", "killed", "unexpected", "spawn_failed"];
/// Why a worker was started again (`zdrestart_worker_respawns_total{cause}`):
/// it died, or it was hung (watchdog) and is replaced.
pub const RESPAWN_CAUSES: [&str; 2] = ["exit", "hung"];

/// What the master counts since it started (carried over an upgrade of the
/// master). Keys are the label values above.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub restarts: BTreeMap<String, u64>,
    pub upgrades: BTreeMap<String, u64>,
    pub worker_exits: BTreeMap<String, u64>,
    pub worker_respawns: BTreeMap<String, u64>,
    /// When the last restart that ran (its probe passed) ended, complete,
    /// aborted or rolled back (Unix time, ms), and how long it took.
    pub last_restart_end_ms: Option<u64>,
    pub last_restart_duration_ms: Option<u64>,
}

impl Counters {
    /// Add one to `family[label]`.
    pub fn bump(family: &mut BTreeMap<String, u64>, label: &str) {
        *family.entry(label.to_string()).or_insert(0) += 1;
    }
}

/// A label value as the text format wants it: `\`, `"` and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {} {}", name, help);
    let _ = writeln!(o, "# TYPE {} {}", name, kind);
}

fn counter(o: &mut String, name: &str, help: &str, key: &str, labels: &[&str], values: &BTreeMap<String, u64>) {
    family(o, name, "counter", help);
    for l in labels {
        let _ = writeln!(o, "{}{{{}=\"{}\"}} {}", name, key, l, values.get(*l).copied().unwrap_or(0));
    }
}

fn gauge(o: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    family(o, name, "gauge", help);
    let _ = writeln!(o, "{} {}", name, value);
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The states a worker can be in (`zdrestart_workers{state}`).
const WORKER_STATES: [WorkerState; 5] =
    [WorkerState::Starting, WorkerState::Soaking, WorkerState::Ready, WorkerState::Hung, WorkerState::Stopping];
/// The master's states (`zdrestart_state{state}`).
const MASTER_STATES: [MasterState; 7] = [
    MasterState::Running,
    MasterState::NotReady,
    MasterState::Restarting,
    MasterState::Canary,
    MasterState::Lockout,
    MasterState::Stopping,
    MasterState::Upgrading,
];

/// The text exposition of `st`, ending with a newline.
pub fn render(st: &StatusReport) -> String {
    let mut o = String::new();
    family(&mut o, "zdrestart_build_info", "gauge",
        "Always 1: the master's version, and the magic number and version of the worker code it runs.");
    // Labels in the order Prometheus and node_exporter print them (sorted).
    let _ = writeln!(o, "zdrestart_build_info{{magic=\"{}\",version=\"{}\",worker_version=\"{}\"}} 1",
        st.magic, label(crate::VERSION), label(&st.version));
    gauge(&mut o, "zdrestart_start_time_seconds", "When the master started, in seconds since the Unix epoch.", seconds(st.started_unix_ms));
    family(&mut o, "zdrestart_state", "gauge", "1 for the state the master is in, 0 for the others.");
    for s in MASTER_STATES {
        let _ = writeln!(o, "zdrestart_state{{state=\"{}\"}} {}", s.as_str().replace(' ', "_"), u8::from(s == st.state));
    }
    gauge(&mut o, "zdrestart_lockout", "1 while restarts are refused after an aborted restart (restart the master).", u8::from(st.lockout));
    gauge(&mut o, "zdrestart_generation", "The generation of workers that serves.", st.generation);
    gauge(&mut o, "zdrestart_workers_configured", "Workers the config of the serving generation asks for.", st.workers_configured);
    family(&mut o, "zdrestart_workers", "gauge", "Workers running, by state and generation.");
    let mut by: BTreeMap<(u64, &str), u64> = BTreeMap::new();
    for s in WORKER_STATES {
        by.insert((st.generation, s.as_str()), 0);
    }
    for w in &st.workers {
        *by.entry((w.generation, w.state.as_str())).or_insert(0) += 1;
    }
    for ((generation, state), n) in &by {
        let _ = writeln!(o, "zdrestart_workers{{generation=\"{}\",state=\"{}\"}} {}", generation, state, n);
    }
    let c = &st.counters;
    counter(&mut o, "zdrestart_restarts_total", "Zero-downtime restart requests, by outcome.", "outcome", &RESTART_OUTCOMES, &c.restarts);
    counter(&mut o, "zdrestart_upgrades_total", "Upgrades of the master in place, by outcome.", "outcome", &UPGRADE_OUTCOMES, &c.upgrades);
    if let (Some(end), Some(took)) = (c.last_restart_end_ms, c.last_restart_duration_ms) {
        gauge(&mut o, "zdrestart_last_restart_duration_seconds",
            "How long the last restart that ran took, from its probe's pass to its end.", seconds(took));
        gauge(&mut o, "zdrestart_last_restart_end_time_seconds",
            "When the last restart that ran ended (complete, aborted or rolled back), in seconds since the Unix epoch.", seconds(end));
    }
    counter(&mut o, "zdrestart_worker_exits_total", "Workers gone, by cause.", "cause", &EXIT_CAUSES, &c.worker_exits);
    counter(&mut o, "zdrestart_worker_respawns_total", "Workers of the serving generation started again, by cause.", "cause",
        &RESPAWN_CAUSES, &c.worker_respawns);
    family(&mut o, "zdrestart_workers_hung_total", "counter", "Workers found hung by the watchdog (watchdogTimeout).");
    let _ = writeln!(o, "zdrestart_workers_hung_total {}", st.workers_hung);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::WorkerStatus;

    #[test]
    fn every_counter_label_is_present_and_values_are_escaped() {
        let mut st = StatusReport { generation: 2, magic: 7, version: "a\"b\\c".into(), started_unix_ms: 1_500, ..Default::default() };
        st.workers.push(WorkerStatus { generation: 1, state: WorkerState::Stopping, ..Default::default() });
        Counters::bump(&mut st.counters.restarts, "complete");
        let t = render(&st);
        assert!(t.contains("worker_version=\"a\\\"b\\\\c\"} 1\n"), "{}", t);
        assert!(t.contains("zdrestart_restarts_total{outcome=\"complete\"} 1\n"));
        assert!(t.contains("zdrestart_restarts_total{outcome=\"rolled_back\"} 0\n"));
        assert!(t.contains("zdrestart_workers{generation=\"2\",state=\"ready\"} 0\n"));
        assert!(t.contains("zdrestart_workers{generation=\"1\",state=\"stopping\"} 1\n"));
        assert!(t.contains("zdrestart_start_time_seconds 1.500\n"));
        assert!(t.contains("zdrestart_state{state=\"not_ready\"} 0\n"));
        assert!(!t.contains("last_restart"), "no restart ran yet");
        assert_eq!(t, render(&st), "the same state renders the same text");
    }
}

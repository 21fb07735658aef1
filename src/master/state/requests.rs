//! The cells of a restart request: taken up in Running (the config checks,
//! then the probe), refused in the other phases, and the probe's verdict,
//! which begins the rollout ([`super::rollout`]) or refuses the request.

use super::event::{Action, Announce, Event, Requester};
use super::progress::Progress;
use super::rollout::Rollout;
use super::{Master, Phase, RestartRecord};
use crate::config::Config;
use crate::master::admission::{self, ProbeFailure, ProbeInfo};
use crate::restart::{Refused, RestartAnswer};
use crate::status::Outcome;
use std::sync::Arc;
use std::time::Instant;

/// The master's own resources: a change applies only after a normal restart.
fn changed_master_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("logfile", new.logfile != old.logfile),
        ("pidfile", new.pidfile != old.pidfile),
        ("controlSocket", new.control_socket != old.control_socket),
        ("metricsFile", new.metrics_file != old.metrics_file),
        ("serverUser", new.server_user != old.server_user),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

impl Master {
    /// A restart request, as every phase logs it first.
    fn requested(ev: Event) -> Option<(Result<Config, String>, Requester, bool)> {
        let Event::Restart { config, by, canary } = ev else { return None };
        let kind = if canary { "canary restart" } else { "zero-downtime restart" };
        log::info!(component = "master", canary = canary; "{} requested ({})", kind, by.via());
        Some((config, by, canary))
    }

    pub(super) fn restart_in_flight(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        if let Some((_, by, _)) = Self::requested(ev) {
            self.refuse(by, Refused::in_flight(), out);
        }
    }

    pub(super) fn restart_in_lockout(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        if let Some((_, by, _)) = Self::requested(ev) {
            self.refuse(by, Refused::aborted_restart(), out);
        }
    }

    pub(super) fn restart_while_stopping(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        if let Some((_, by, _)) = Self::requested(ev) {
            self.refuse(by, Refused::stopping(), out);
        }
    }

    /// (Running, Restart): refused while the serving generation is not
    /// all ready; else taken up, and from here every path ends with
    /// `READY=1` (refused, aborted, rolled back or complete).
    pub(super) fn take_up(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Some((config, by, canary)) = Self::requested(ev) else { return };
        // The same refusal as `zdrestart --check` gives from STATUS.
        if let Err(refused) = admission::check_state(self.state()) {
            return self.refuse(by, refused, out);
        }
        self.take_up_admitted(config, by, canary, now, out);
    }

    /// A restart request past the state check: the config checks, then
    /// the probe.
    pub(super) fn take_up_admitted(&mut self, config: Result<Config, String>, by: Requester, canary: bool, now: Instant, out: &mut Vec<Action>) {
        if let Ok(new) = &config {
            for w in &new.warnings {
                log::warn!("{}", w);
            }
        }
        let text = self.announce_status(&format!("zero-downtime restart requested ({})", by.via()));
        out.push(Action::Announce(Announce::Reloading(text)));
        let new = match admission::check_config(&self.config.listen_display(), config) {
            Ok(new) => new,
            Err(refused) => return self.refuse(by, refused, out),
        };
        for key in changed_master_keys(&self.config, &new) {
            log::warn!(key = key; "config key \"{}\" changed: it applies only after a normal restart of the master", key);
        }
        let config = Arc::new(new);
        let declared = admission::declared(&config);
        if declared.is_none() {
            out.push(Action::Probe { config: config.clone() });
        }
        self.rollout = Some(Rollout::new(by, config, canary, now));
        self.phase = Phase::Probing;
        // `"probe": false`: the config's answer stands for the probe's.
        if let Some(info) = declared {
            log::info!(component = "probe", magic = info.magic, version = info.version.as_str();
                "probe off: the config declares magic number {} (version {})", info.magic, info.version);
            self.probe_verdict(Ok(info), now, out);
        }
    }

    pub(super) fn probe_done(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Event::ProbeDone(result) = ev else { return };
        self.probe_verdict(result, now, out);
    }

    /// The probe's verdict: refused, back to Running; passed, the rollout
    /// begins.
    fn probe_verdict(&mut self, result: Result<ProbeInfo, ProbeFailure>, now: Instant, out: &mut Vec<Action>) {
        let Some(config) = self.rollout.as_ref().map(|r| Arc::clone(&r.config)) else { return };
        let info = match admission::check_probe(self.magic, &config, result) {
            Ok(info) => info,
            Err(refused) => {
                let by = self.rollout.take().map(|r| r.by);
                self.phase = Phase::Running;
                if let Some(by) = by {
                    self.refuse(by, refused, out);
                }
                return;
            }
        };
        let Some(r) = &mut self.rollout else { return };
        self.highest_generation = self.highest_generation.max(self.generation) + 1;
        let generation = self.highest_generation;
        log::info!(event = "restart.start", generation = generation, workers = r.config.workers, version = info.version.as_str(),
            canary = r.canary, min_ready_ms = r.config.min_ready.as_millis() as u64, max_surge = r.config.max_surge;
            "zero-downtime restart started: generation {} ({} workers, version {}{})", generation, r.config.workers, info.version,
            if r.canary { "; canary: one worker, then hold" } else { "" });
        let begins = Progress::RestartBegins { generation, workers: r.config.workers, version: info.version.clone(), magic: info.magic, canary: r.canary };
        Self::tell(begins, out);
        if let Requester::Control { client, wait: false } = r.by {
            out.push(Action::Reply { client, answer: RestartAnswer::Started });
        }
        let steps = r.begin(generation, info.version, now, &self.workers);
        self.last_restart =
            Some(RestartRecord { generation: Some(generation), started_wall: self.wall, outcome: Outcome::InProgress, reason: None, duration_ms: None });
        if r.canary {
            // The old generation serves on (and is respawned) beside the canary.
            self.phase = Phase::Canary;
            self.apply(steps, now, out);
            if let Some(&id) = self.rollout.as_ref().and_then(|r| r.new_workers().first()) {
                self.note(Progress::CanaryStarted { id, generation }, out);
            }
            return;
        }
        self.generation = generation;
        // Pending respawns belong to the old generation: the new one replaces them.
        self.pending.clear();
        self.phase = Phase::Rolling;
        self.apply(steps, now, out);
    }
}

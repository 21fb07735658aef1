//! The cells of a restart request: taken up in Running (the config checks,
//! then the probe), refused in the other phases, and the probe's verdict,
//! which begins the rollout ([`super::rollout`]) or refuses the request.

use super::event::{Action, Announce, Event, Requester};
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
        ("serverUser", new.server_user != old.server_user),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

impl Master {
    /// A restart request, as every phase logs it first.
    fn requested(ev: Event) -> Option<(Result<Config, String>, Requester)> {
        let Event::Restart { config, by } = ev else { return None };
        log::info!(component = "master"; "zero-downtime restart requested ({})", by.via());
        Some((config, by))
    }

    pub(super) fn restart_in_flight(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        if let Some((_, by)) = Self::requested(ev) {
            self.refuse(by, Refused::in_flight(), out);
        }
    }

    pub(super) fn restart_in_lockout(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        if let Some((_, by)) = Self::requested(ev) {
            self.refuse(by, Refused::aborted_restart(), out);
        }
    }

    pub(super) fn restart_while_stopping(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        if let Some((_, by)) = Self::requested(ev) {
            self.refuse(by, Refused::stopping(), out);
        }
    }

    /// (Running, Restart): taken up; from here every path ends with
    /// `READY=1` (refused, aborted or complete).
    pub(super) fn take_up(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Some((config, by)) = Self::requested(ev) else { return };
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
        self.rollout = Some(Rollout::new(by, config, now));
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
        self.generation += 1;
        let generation = self.generation;
        log::info!(event = "restart.start", generation = generation, workers = r.config.workers, version = info.version.as_str();
            "zero-downtime restart started: generation {} ({} workers, version {})", generation, r.config.workers, info.version);
        if let Requester::Control { client, wait: false } = r.by {
            out.push(Action::Reply { client, answer: RestartAnswer::Started });
        }
        // Pending respawns belong to the old generation: the new one replaces them.
        self.pending.clear();
        let steps = r.begin(generation, info.version, now, &self.workers);
        self.last_restart =
            Some(RestartRecord { generation: Some(generation), started_wall: self.wall, outcome: Outcome::InProgress, reason: None, duration_ms: None });
        self.phase = Phase::Rolling;
        self.apply(steps, now, out);
    }
}

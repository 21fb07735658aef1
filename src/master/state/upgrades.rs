//! The cells of an in-place upgrade of the master (ARCHITECTURE.md,
//! "Upgrading the master"): let through in Running or Lockout (the phase
//! Upgrading until the loop has carried it out), refused elsewhere; what the
//! loop could not do comes back as `UpgradeFailed`. And both ends of the
//! hand-over: [`Master::snapshot`] (the old image's state machine) and
//! [`Master::resume`] with the `Resumed` cell (the new image's).

use super::event::{Action, Event, Requester};
use super::progress::Progress;
use super::table::{self, Phase};
use super::workers::{Life, Timeouts, Worker, WorkerId};
use super::{Master, Pending, RestartRecord, UpgradeAsked};
use crate::config::Config;
use crate::control::ClientId;
use crate::master::admission::ProbeInfo;
use crate::master::handover::{MasterSnapshot, PendingSnapshot, WorkerFds, WorkerSnapshot};
use crate::restart::{Reason, Refused, RestartAnswer};
use crate::status::WorkerState;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Master {
    /// An `UPGRADE` refused: logged and answered.
    fn refuse_upgrade(&mut self, client: ClientId, refused: Refused, out: &mut Vec<Action>) {
        let (reason, detail) = (refused.reason.wire(), refused.detail.as_str());
        if refused.reason == Reason::ExecFailed {
            log::error!(event = "upgrade.refused", reason = reason, detail = detail;
                "upgrade of the master failed: {}; carrying on as before", detail);
        } else {
            log::warn!(event = "upgrade.refused", reason = reason, detail = detail; "upgrade of the master refused: {}", refused);
        }
        Self::tell(Progress::Upgrade { refused: Some(refused.reason), detail: refused.detail.clone() }, out);
        out.push(Action::Reply { client, answer: RestartAnswer::Refused(refused) });
    }

    /// (Running or Lockout, Upgrade): the one way out of a lockout without
    /// downtime (zdrestart(8), "Upgrading the master").
    pub(super) fn upgrade(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        let Event::Upgrade { client, wait, restart } = ev else { return };
        log::info!(event = "upgrade.start", restart = restart; "upgrade of the master requested (re-exec in place)");
        self.upgrade = Some(UpgradeAsked { client, wait, restart, from: self.phase });
        self.phase = Phase::Upgrading;
        out.push(Action::Upgrade { client, wait, restart });
    }

    pub(super) fn upgrade_in_flight(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        let Event::Upgrade { client, .. } = ev else { return };
        self.refuse_upgrade(client, Refused::in_flight(), out);
    }

    pub(super) fn upgrade_while_stopping(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        let Event::Upgrade { client, .. } = ev else { return };
        self.refuse_upgrade(client, Refused::new(Reason::Stopping, ""), out);
    }

    pub(super) fn upgrade_again(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        let Event::Upgrade { client, .. } = ev else { return };
        self.refuse_upgrade(client, Refused::new(Reason::UpgradeNotPossible, "another upgrade is in progress"), out);
    }

    /// The loop could not carry the upgrade out: back where it came from.
    pub(super) fn upgrade_failed(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        let Event::UpgradeFailed(refused) = ev else { return };
        let Some(up) = self.upgrade.take() else { return };
        self.phase = up.from;
        self.refuse_upgrade(up.client, refused, out);
    }

    /// (Upgrading, most events): as in the phase the upgrade came from. An
    /// event that moves the master on from there (a restart taken up, a
    /// stop) refuses the upgrade: it cannot hand such a state over.
    pub(super) fn as_before_upgrade(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Some(up) = self.upgrade else { return };
        self.phase = up.from;
        self.upgrade = None;
        (table::cell(up.from, ev.kind()).run)(self, ev, now, out);
        if self.phase == up.from {
            self.upgrade = Some(up);
            self.phase = Phase::Upgrading;
            return;
        }
        out.push(Action::CancelUpgrade);
        let refused = if self.phase == Phase::Stopping { Refused::new(Reason::Stopping, "") } else { Refused::in_flight() };
        self.refuse_upgrade(up.client, refused, out);
    }

    /// (Running, Resumed): this image took the master over. Its client is
    /// answered now, or (`UPGRADE WAIT` with a roll-over) when the roll-over
    /// ends; the roll-over is a restart request like any other.
    pub(super) fn resumed(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Event::Resumed { client, wait, restart } = ev else { return };
        Self::tell(Progress::Upgrade { refused: None, detail: format!("zdrestart {} runs", crate::VERSION) }, out);
        let by = match (client, wait, restart.is_some()) {
            (Some(client), true, true) => Requester::Control { client, wait: true },
            (client, _, _) => {
                if let Some(client) = client {
                    out.push(Action::Reply { client, answer: RestartAnswer::Upgraded });
                }
                Requester::Upgrade
            }
        };
        let Some(config) = restart else { return };
        if self.phase == Phase::Running && self.fleet_short(false) {
            // The fleet the old image left is short (its respawns were
            // scheduled by `resume`): the roll-over, which starts the whole
            // fleet anew, is how it is made whole, so "not ready" does not
            // hold it back.
            log::info!(component = "master"; "zero-downtime restart requested ({}): the roll-over makes the short fleet whole", by.via());
            return self.take_up_admitted(config, by, false, now, out);
        }
        let ev = Event::Restart { config, by, canary: false };
        (table::cell(self.phase, ev.kind()).run)(self, ev, now, out);
    }

    /// The state machine's part of the hand-over state of an upgrade
    /// (`master::handover`); `fds(id)` gives the loop's fds of a worker.
    /// Err: what cannot be handed over (`upgrade not possible`).
    pub fn snapshot(&self, now: Instant, fds: impl Fn(WorkerId) -> Option<WorkerFds>) -> Result<MasterSnapshot, String> {
        // A hung worker waits for its replacement; a rolled-back canary
        // still stopping is of a generation the state does not serve.
        if self.workers.iter().any(|w| w.life == Life::Hung || w.generation > self.generation) {
            return Err("a hung worker is being replaced, or a rolled-back canary is still stopping: retry once it is gone".into());
        }
        let workers = self.workers.iter().map(|w| worker_snapshot(w, now, &fds)).collect::<Result<Vec<_>, _>>()?;
        let status = self.status(0, SystemTime::UNIX_EPOCH);
        Ok(MasterSnapshot {
            generation: self.generation,
            magic: self.magic,
            version: self.version.clone(),
            notified_ready: self.notified_ready,
            lockout: self.locked_out(),
            workers,
            next_worker_id: self.workers.next_id(),
            pending: self
                .pending
                .iter()
                .map(|p| PendingSnapshot { due_in_ms: ms(p.due.saturating_duration_since(now)), generation: p.generation, index: p.index })
                .collect(),
            last_restart: status.last_restart,
            last_restart_ms: self.last_restart.as_ref().map(|l| unix_ms(l.started_wall)),
        })
    }

    /// The master of a new image after an upgrade: the workers of `snap`
    /// under their ids, in Running whatever the old phase was (a lockout
    /// ends here: a fresh state, zdrestart(8)).
    pub fn resume(config: Arc<Config>, snap: &MasterSnapshot, now: Instant) -> Master {
        let wall = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let mut m = Master::new(config, ProbeInfo { magic: snap.magic, version: snap.version.clone(), shared: None });
        m.generation = snap.generation;
        m.highest_generation = snap.generation;
        m.notified_ready = snap.notified_ready;
        for w in &snap.workers {
            m.workers.adopt(adopted(w, &m.config, now));
        }
        m.workers.reserve(snap.next_worker_id);
        m.pending = snap
            .pending
            .iter()
            .map(|p| Pending { due: now + Duration::from_millis(p.due_in_ms), generation: p.generation, index: p.index })
            .collect();
        m.last_restart = snap.last_restart.as_ref().map(|l| RestartRecord {
            generation: l.generation.map(|g| g as u32),
            started_wall: wall(snap.last_restart_ms.unwrap_or(0)),
            outcome: l.outcome,
            reason: l.reason.clone(),
            duration_ms: l.duration_ms,
        });
        m.fill_fleet(now);
        m
    }

    /// The serving generation kept at `workers` (zdrestart(8), "Upgrading
    /// the master"): the workers an aborted restart or crashes in a lockout
    /// left missing are respawned at once, each in a free index, as any
    /// respawn (the loop wakes up for its deadline, `now`).
    fn fill_fleet(&mut self, now: Instant) {
        let generation = self.generation;
        let live: Vec<u32> = self.workers.iter().filter(|w| !w.asked_to_stop()).map(|w| w.index).collect();
        let planned: Vec<u32> = self.pending.iter().filter(|p| p.generation == generation).map(|p| p.index).collect();
        let short = (self.config.workers as usize).saturating_sub(live.len() + planned.len());
        let free = (0..self.config.workers).filter(|i| !live.contains(i) && !planned.contains(i));
        for index in free.take(short) {
            log::warn!(generation = generation, worker = index; "the fleet handed over is short of worker {}: respawning it", index);
            self.pending.push(Pending { due: now, generation, index });
        }
    }
}

fn worker_snapshot(w: &Worker, now: Instant, fds: &impl Fn(WorkerId) -> Option<WorkerFds>) -> Result<WorkerSnapshot, String> {
    let pid = w.pid.ok_or_else(|| format!("worker {} (generation {}) has no pid yet", w.index, w.generation))?;
    let fds = fds(w.id).ok_or_else(|| format!("worker {} has no open fds in the loop", pid))?;
    let left = |d: Instant| ms(d.saturating_duration_since(now));
    Ok(WorkerSnapshot {
        id: w.id,
        pid,
        generation: w.generation,
        index: w.index,
        state: w.state(),
        started_ms: unix_ms(w.started_wall),
        age_ms: ms(now.saturating_duration_since(w.started)),
        ready_left_ms: match w.life {
            Life::Starting { ready_by } => Some(left(ready_by)),
            _ => None,
        },
        kill_left_ms: match w.life {
            Life::Stopping { kill_at } => kill_at.map(left),
            _ => None,
        },
        asked_to_stop: w.asked_to_stop(),
        killed: w.life == Life::Stopping { kill_at: None },
        ready_timeout_ms: Some(ms(w.timeouts.ready)),
        shutdown_timeout_ms: Some(ms(w.timeouts.shutdown)),
        watchdog_timeout_ms: w.timeouts.watchdog.map(ms),
        last_lines: w.last_lines.iter().cloned().collect(),
        reports: w.reports,
        status: w.status.clone(),
        main_pid: w.main_pid,
        fds,
    })
}

/// A worker of the old image, as the new one takes it over. A state from
/// an image that did not record the worker's timeouts gives it the
/// current config's.
fn adopted(w: &WorkerSnapshot, config: &Config, now: Instant) -> Worker {
    let at = |ms: u64| now + Duration::from_millis(ms);
    let current = Timeouts::of(config);
    let timeouts = Timeouts {
        ready: w.ready_timeout_ms.map_or(current.ready, Duration::from_millis),
        shutdown: w.shutdown_timeout_ms.map_or(current.shutdown, Duration::from_millis),
        // Its heartbeats follow the WATCHDOG_USEC it was started with: none
        // recorded (an older image), none expected.
        watchdog: w.watchdog_timeout_ms.map(Duration::from_millis),
    };
    let life = match (w.asked_to_stop, w.state) {
        (true, _) => Life::Stopping { kill_at: if w.killed { None } else { w.kill_left_ms.map(at) } },
        (false, WorkerState::Ready) => Life::Ready,
        (false, _) => Life::Starting { ready_by: at(w.ready_left_ms.unwrap_or(ms(timeouts.ready))) },
    };
    Worker {
        id: w.id,
        pid: Some(w.pid),
        generation: w.generation,
        index: w.index,
        life,
        timeouts,
        reports: w.reports,
        started: now.checked_sub(Duration::from_millis(w.age_ms)).unwrap_or(now),
        started_wall: std::time::UNIX_EPOCH + Duration::from_millis(w.started_ms),
        last_lines: w.last_lines.iter().cloned().collect(),
        status: w.status.clone(),
        main_pid: w.main_pid,
        watchdog_at: match life {
            Life::Ready => timeouts.watchdog.map(|t| now + t),
            _ => None,
        },
        // One the old image asked to exit is on its way out for good here:
        // `fill_fleet` counts only the others, and gives its index a
        // successor if the fleet is short, so its exit is not answered with
        // a respawn, nor does the serving generation's readiness wait for
        // it (a new worker an abort stopped carries the serving number).
        replaced: w.asked_to_stop,
    }
}

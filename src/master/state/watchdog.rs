//! The cells of the watchdog: a worker's heartbeats (`WATCHDOG=1` on its
//! report pipe or with sd_notify(3)) move its deadline; a serving worker
//! past it is hung (`worker.hung`). What becomes of a hung worker depends on
//! the phase: replaced new-before-old in Running and Probing (a replacement
//! starts; once it is ready the hung one gets SIGABRT, SIGKILL after its
//! `shutdownTimeout`), the end of the restart in Rolling and Canary (abort,
//! lockout), SIGABRT at once in Lockout, where nothing is respawned.

use super::event::{Action, Event};
use super::progress::{HungThen, Progress};
use super::workers::{Life, WorkerId};
use super::{Master, Phase};
use std::time::Instant;

impl Master {
    /// (any phase, Heartbeat): a serving worker's watchdog deadline moves
    /// to now + its `watchdogTimeout`; `WATCHDOG=trigger` makes it now.
    pub(super) fn heartbeat(&mut self, ev: Event, now: Instant, _: &mut Vec<Action>) {
        let Event::Heartbeat { id, trigger } = ev else { return };
        let Some(w) = self.workers.get_mut(id) else { return };
        // Before READY=1 the ready deadline rules; a hung or stopping
        // worker is past caring.
        let Some(t) = w.timeouts.watchdog.filter(|_| w.life.serving()) else {
            log::debug!(component = "worker", worker_pid = w.pid_or_0(); "heartbeat ignored (no watchdog running for it)");
            return;
        };
        if trigger {
            log::warn!(component = "worker", worker_pid = w.pid_or_0(); "worker {} says WATCHDOG=trigger", w.pid_or_0());
        }
        w.watchdog_at = Some(if trigger { now } else { now + t });
    }

    /// Worker `id` missed its watchdog deadline (the tick found it).
    pub(super) fn hung(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let then = match self.phase {
            Phase::Rolling | Phase::Canary => HungThen::AbortsRestart,
            Phase::Lockout | Phase::Stopping => HungThen::Killed,
            _ => HungThen::Replaced,
        };
        let Some(w) = self.workers.get_mut(id) else { return };
        let (Some(t), Some(due)) = (w.timeouts.watchdog, w.watchdog_at) else { return };
        // Since the last heartbeat (or READY=1).
        let silent = t + now.saturating_duration_since(due);
        w.life = Life::Hung;
        w.watchdog_at = None;
        w.replaced = then == HungThen::Replaced;
        let (pid, generation, index) = (w.pid_or_0(), w.generation, w.index);
        let failed = w.clone();
        self.hung_total += 1;
        self.note(Progress::Hung { id, pid, generation, index, silent, then }, out);
        match then {
            HungThen::Replaced => {
                let cfg = self.config.clone();
                self.spawn(generation, index, cfg, now, out);
            }
            HungThen::Killed => self.abort_worker(id, now, out),
            HungThen::AbortsRestart => {
                if let Some(step) = self.rollout.as_ref().map(|r| r.hung(&failed, silent)) {
                    self.apply(vec![step], now, out);
                }
            }
        }
    }

    /// Worker `id` just became ready: the hung worker it replaces (same
    /// generation and index) gets SIGABRT, SIGKILL after its
    /// `shutdownTimeout`.
    pub(super) fn retire_hung(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get(id) else { return };
        let (generation, index) = (w.generation, w.index);
        let hung: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|h| h.life == Life::Hung && h.replaced && h.generation == generation && h.index == index)
            .map(|h| h.id)
            .collect();
        for h in hung {
            log::info!(worker_pid = self.workers.get(id).map_or(0, |w| w.pid_or_0());
                "the replacement of hung worker {} is ready", self.workers.get(h).map_or(0, |w| w.pid_or_0()));
            self.abort_worker(h, now, out);
        }
    }
}

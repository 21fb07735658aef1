//! The cells of a worker's life: its start, its reports, its exit, its
//! deadlines, and the master's stop. Each handler is one cell (or several
//! alike) of [`super::table::cell`]; what a rollout makes of an event is its
//! own step ([`super::rollout`]), carried out by [`Master::apply`].

use super::event::{Action, Announce, Event};
use super::progress::{ExitCause, Progress};
use super::workers::{Life, Worker, WorkerId};
use super::{Master, Pending, Phase, Requester, BACKOFF_FIRST, BACKOFF_MAX, CRASH_WINDOW};
use crate::restart::{Reason, Refused, RestartAnswer};
use crate::sys::ExitStatus;
use std::time::{Duration, Instant};

/// What a deadline brought ([`Master::expire`]).
#[derive(Debug, Clone, Copy)]
enum Due {
    /// Not ready within its `readyTimeout`.
    Late(WorkerId),
    /// Its soak (`minReady`) is over.
    Passed(WorkerId),
    /// No heartbeat within its `watchdogTimeout`.
    Hung(WorkerId),
}

impl Master {
    /// (Running, Start): generation 1, `workers` workers.
    pub(super) fn start(&mut self, _: Event, now: Instant, out: &mut Vec<Action>) {
        self.generation = 1;
        let cfg = self.config.clone();
        for index in 0..cfg.workers {
            self.spawn(1, index, cfg.clone(), now, out);
        }
    }

    pub(super) fn spawned(&mut self, ev: Event, _: Instant, out: &mut Vec<Action>) {
        let Event::Spawned { id, pid } = ev else { return };
        if let Some(w) = self.workers.get_mut(id) {
            w.pid = Some(pid);
            log::info!(event = "worker.spawn", worker_pid = pid, generation = w.generation,
                worker = w.index; "spawned worker {} (generation {}, index {})", pid, w.generation, w.index);
            Self::tell(Progress::WorkerSpawned { id, pid, generation: w.generation, index: w.index }, out);
        }
    }

    /// A starting worker becomes ready, or (`soak` not zero: a new worker
    /// of a restart) soaks; its watchdog starts. `announce`: the last of
    /// generation 1 tells the service manager. Ok: it just became ready.
    fn mark_ready(&mut self, id: WorkerId, announce: bool, soak: Duration, now: Instant, out: &mut Vec<Action>) -> bool {
        let Some(w) = self.workers.get_mut(id) else { return false };
        if !matches!(w.life, Life::Starting { .. }) {
            return false;
        }
        w.life = if soak.is_zero() { Life::Ready } else { Life::Soaking { passes_at: now + soak } };
        w.watchdog_at = w.timeouts.watchdog.map(|t| now + t);
        let (pid, generation, index, took) = (w.pid_or_0(), w.generation, w.index, now.duration_since(w.started));
        log::info!(event = "worker.ready", worker_pid = pid, generation = generation, worker = index,
            ms = took.as_millis() as u64; "worker {} ready", pid);
        Self::tell(Progress::WorkerReady { id, pid, generation, index, took }, out);
        if !soak.is_zero() {
            self.note(Progress::SoakStarted { id, pid, generation, min_ready: soak }, out);
        }
        self.retire_hung(id, now, out);
        if announce && !self.notified_ready && generation == 1 {
            let ready = self.workers.iter().filter(|w| w.generation == 1 && w.life == Life::Ready).count();
            if ready as u32 >= self.config.workers {
                self.notified_ready = true;
                let text = self.announce_status("");
                out.push(Action::Announce(Announce::Ready(text)));
            }
        }
        true
    }

    pub(super) fn ready(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Event::Ready { id } = ev else { return };
        self.mark_ready(id, true, Duration::ZERO, now, out);
    }

    pub(super) fn ready_while_stopping(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Event::Ready { id } = ev else { return };
        self.mark_ready(id, false, Duration::ZERO, now, out);
    }

    /// (Rolling or Canary, Ready): a new worker soaks (`minReady`) or, with
    /// no soak, passes at once; then the rollout moves on.
    pub(super) fn ready_in_rollout(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Event::Ready { id } = ev else { return };
        let soak = self.rollout.as_ref().filter(|r| r.owns(id)).map_or(Duration::ZERO, |r| r.soak());
        if self.mark_ready(id, true, soak, now, out) {
            self.rollout_moves(now, out);
        }
    }

    /// A new worker is ready or passed: a canary that now stands says so;
    /// any other rollout advances (old workers drain, new ones start).
    pub(super) fn rollout_moves(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.phase == Phase::Canary {
            if self.rollout.as_ref().is_some_and(|r| r.stands(&self.workers) && !r.stood) {
                self.canary_stands(now, out);
            }
            return;
        }
        let Some(r) = &mut self.rollout else { return };
        let steps = r.advance(&self.workers);
        self.apply(steps, now, out);
    }

    /// A soaking worker's `minReady` is over: it passes.
    fn passed(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(id) else { return };
        if !matches!(w.life, Life::Soaking { .. }) {
            return;
        }
        w.life = Life::Ready;
        let (pid, generation) = (w.pid_or_0(), w.generation);
        self.note(Progress::SoakPassed { id, pid, generation }, out);
        if matches!(self.phase, Phase::Rolling | Phase::Canary) {
            self.rollout_moves(now, out);
        }
    }

    /// The failure of `ReportedError` or `NotifyFailure` (only before the
    /// worker is ready; after, it is logged): (worker, what it means, what
    /// it said).
    fn failure_of(&self, ev: Event) -> Option<(WorkerId, String, String)> {
        match ev {
            Event::ReportedError { id, text } => Some((id, text.clone(), format!("ERROR={}", text))),
            Event::NotifyFailure { id, text } => match self.workers.get(id) {
                Some(w) if matches!(w.life, Life::Starting { .. } | Life::Soaking { .. }) => Some((id, text.clone(), text)),
                Some(w) => {
                    log::info!(component = "worker", worker_pid = w.pid_or_0(); "worker reports {}", text);
                    None
                }
                None => None,
            },
            _ => None,
        }
    }

    /// The worker that reported a failure, logged.
    fn failed(&self, id: WorkerId, text: &str) -> Option<Worker> {
        let w = self.workers.get(id)?;
        let pid = w.pid_or_0();
        log::error!(worker_pid = pid, generation = w.generation, error = text; "worker {} reported an error: {}", pid, text);
        Some(w.clone())
    }

    pub(super) fn failure(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Some((id, text, _)) = self.failure_of(ev) else { return };
        // It exits by protocol; make sure it does.
        if self.failed(id, &text).is_some() {
            self.stop_worker(id, now, out);
        }
    }

    pub(super) fn failure_in_rollout(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Some((id, text, report)) = self.failure_of(ev) else { return };
        let Some(w) = self.failed(id, &text) else { return };
        match self.rollout.as_ref().and_then(|r| r.error(&w, &report)) {
            Some(step) => self.apply(vec![step], now, out),
            None => self.stop_worker(id, now, out),
        }
    }

    /// A worker is gone (`Exited`, or `SpawnFailed`: status None): out of
    /// the table, logged. The worker as it was, and how it ended.
    fn gone(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) -> Option<(Worker, Option<ExitStatus>)> {
        let (id, status) = match ev {
            Event::Exited { id, status } => (id, Some(status)),
            Event::SpawnFailed { id, error } => {
                if let Some(w) = self.workers.get_mut(id) {
                    log::error!(event = "worker.exit", generation = w.generation, worker = w.index, error = error.as_str();
                        "cannot start worker: {}", error);
                    w.last_lines.push_back(error);
                }
                (id, None)
            }
            _ => return None,
        };
        let w = self.workers.remove(id)?;
        if let Some(st) = status {
            // Asked to exit: expected, also in lockout (where the record
            // after it says that it is not respawned).
            let expected = w.asked_to_stop();
            let level = if expected { log::Level::Info } else { log::Level::Error };
            let how = if expected { "exited as asked" } else { "exited unexpectedly" };
            let pid = w.pid_or_0();
            // Either `code` or `signal`, never a null placeholder.
            match st {
                ExitStatus::Code(c) => log::log!(level, event = "worker.exit", worker_pid = pid,
                    generation = w.generation, worker = w.index, code = c; "worker {} {} ({})", pid, how, st),
                ExitStatus::Signal(sig) => log::log!(level, event = "worker.exit", worker_pid = pid,
                    generation = w.generation, worker = w.index, signal = sig; "worker {} {} ({})", pid, how, st),
            }
        }
        let cause = match status {
            None => ExitCause::SpawnFailed,
            Some(ExitStatus::Signal(libc::SIGKILL)) if w.life == (Life::Stopping { kill_at: None }) => ExitCause::Killed,
            Some(_) if w.asked_to_stop() => ExitCause::Stopped,
            Some(_) => ExitCause::Unexpected,
        };
        let status_text = status.map_or_else(|| "not started".to_string(), |s| s.to_string());
        let (pid, generation, index, lived) = (w.pid_or_0(), w.generation, w.index, now.saturating_duration_since(w.started));
        Self::tell(Progress::WorkerExited { id, pid, generation, index, cause, status: status_text, lived }, out);
        Some((w, status))
    }

    pub(super) fn gone_respawn(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Some((w, _)) = self.gone(ev, now, out) else { return };
        // A hung worker that was replaced has its successor already. A
        // worker of an older generation (one a resumed master took over
        // from a lockout) is replaced by one of the serving generation
        // while the fleet is short.
        let serving = w.generation == self.generation || (w.generation < self.generation && self.fleet_short(true));
        if serving && w.index < self.config.workers && !w.replaced {
            self.schedule_respawn(&w, now.duration_since(w.started), now, out);
        }
    }

    /// (Canary, Exited): the canary gone fails the restart; an old worker
    /// is respawned as in Running, so that a rollback finds the fleet whole.
    pub(super) fn gone_in_canary(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let id = match ev {
            Event::Exited { id, .. } | Event::SpawnFailed { id, .. } => id,
            _ => return,
        };
        if self.rollout.as_ref().is_some_and(|r| r.owns(id)) {
            self.gone_in_rollout(ev, now, out);
        } else {
            self.gone_respawn(ev, now, out);
        }
    }

    pub(super) fn gone_in_rollout(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Some((w, status)) = self.gone(ev, now, out) else { return };
        let Some(r) = &mut self.rollout else { return };
        let steps = r.gone(&w, status);
        self.apply(steps, now, out);
        self.after_exit_in_lockout(w.pid_or_0(), out);
    }

    pub(super) fn gone_in_lockout(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Some((w, _)) = self.gone(ev, now, out) else { return };
        self.after_exit_in_lockout(w.pid_or_0(), out);
    }

    pub(super) fn gone_while_stopping(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        if self.gone(ev, now, out).is_some() && self.workers.is_empty() {
            log::info!(event = "master.stop"; "all workers gone; master exiting");
            out.push(Action::Exit(0));
        }
    }

    /// In lockout nothing is respawned: the last worker gone ends the master.
    fn after_exit_in_lockout(&mut self, pid: u32, out: &mut Vec<Action>) {
        if self.phase != Phase::Lockout {
            return;
        }
        log::error!(worker_pid = pid, remaining = self.workers.len() as u64;
            "worker {} is gone and will not be respawned after the aborted restart ({} left): restart the master as soon as possible (zdrestartctl upgrade --wait, or a normal restart)",
            pid, self.workers.len());
        if self.workers.is_empty() {
            log::error!(fatal = true, event = "master.stop";
                "no workers left after the aborted restart; master exiting so the port is released: restart it");
            out.push(Action::Exit(1));
        }
    }

    fn schedule_respawn(&mut self, w: &Worker, lived: Duration, now: Instant, out: &mut Vec<Action>) {
        let streak = self.streak.entry(w.index).or_insert(0);
        if lived < CRASH_WINDOW {
            *streak += 1;
        } else {
            *streak = 0;
        }
        // As the serving generation, whatever the generation of the one gone.
        let generation = self.generation;
        let delay = if *streak == 0 { Duration::ZERO } else { BACKOFF_FIRST.saturating_mul(1 << (*streak - 1).min(10)).min(BACKOFF_MAX) };
        Self::tell(Progress::Respawn { generation, index: w.index, delay }, out);
        if delay.is_zero() {
            log::error!(generation = generation, worker = w.index; "respawning worker {} now", w.index);
            let cfg = self.config.clone();
            self.spawn(generation, w.index, cfg, now, out);
        } else {
            log::error!(generation = generation, worker = w.index, delay_ms = delay.as_millis() as u64;
                "worker {} died within {:?} of starting; respawning in {:?}", w.index, CRASH_WINDOW, delay);
            self.pending.push(Pending { due: now + delay, generation, index: w.index });
        }
    }

    /// SIGKILL to the workers past their kill deadline; what else is due,
    /// for the caller: workers past their ready deadline, soaks over,
    /// workers past their watchdog deadline (hung: before a soak's end).
    fn expire(&mut self, now: Instant, out: &mut Vec<Action>) -> Vec<Due> {
        let mut due = Vec::new();
        for w in self.workers.iter_mut() {
            match w.life {
                Life::Stopping { kill_at: Some(d) } if d <= now => {
                    w.life = Life::Stopping { kill_at: None };
                    if let Some(pid) = w.pid {
                        log::warn!(event = "worker.kill", worker_pid = pid, generation = w.generation;
                            "worker {} did not exit within shutdownTimeout; sending SIGKILL", pid);
                        out.push(Action::Signal { id: w.id, signal: libc::SIGKILL });
                    }
                }
                Life::Starting { ready_by } if ready_by <= now => due.push(Due::Late(w.id)),
                l if l.serving() && w.watchdog_at.is_some_and(|d| d <= now) => due.push(Due::Hung(w.id)),
                Life::Soaking { passes_at } if passes_at <= now => due.push(Due::Passed(w.id)),
                _ => {}
            }
        }
        due
    }

    /// One thing due, as the phase the master is in now (an abort earlier
    /// in the same tick moves it to Lockout).
    fn on_due(&mut self, due: Due, now: Instant, out: &mut Vec<Action>) {
        match due {
            Due::Hung(id) => self.hung(id, now, out),
            Due::Passed(id) => self.passed(id, now, out),
            Due::Late(id) => {
                let step = match self.phase {
                    Phase::Rolling | Phase::Canary => self.rollout.as_ref().zip(self.workers.get(id)).and_then(|(r, w)| r.tick(w)),
                    _ => None,
                };
                match step {
                    Some(step) => self.apply(vec![step], now, out),
                    None => self.stop_late(id, now, out),
                }
            }
        }
    }

    /// A worker not ready in time is stopped.
    fn stop_late(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get(id) else { return };
        log::error!(worker_pid = w.pid_or_0(); "worker {} not ready within readyTimeout; stopping it", w.pid_or_0());
        self.stop_worker(id, now, out);
    }

    /// Respawns whose backoff is over (of the serving generation).
    pub(super) fn due_respawns(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (due, later): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending).into_iter().partition(|p| p.due <= now);
        self.pending = later;
        let generation = self.generation;
        for p in due.into_iter().filter(|p| p.generation == generation) {
            let cfg = self.config.clone();
            self.spawn(p.generation, p.index, cfg, now, out);
        }
    }

    /// Whatever is due now, handled.
    pub(super) fn expire_all(&mut self, now: Instant, out: &mut Vec<Action>) {
        for due in self.expire(now, out) {
            self.on_due(due, now, out);
        }
    }

    pub(super) fn tick(&mut self, _: Event, now: Instant, out: &mut Vec<Action>) {
        self.expire_all(now, out);
        self.due_respawns(now, out);
    }

    pub(super) fn tick_without_respawns(&mut self, _: Event, now: Instant, out: &mut Vec<Action>) {
        self.expire_all(now, out);
        self.pending.retain(|p| p.due > now);
    }

    /// SIGTERM/SIGINT, first: logged, and the service manager told.
    fn announce_stop(&self, signal: &'static str, out: &mut Vec<Action>) {
        log::info!(signal = signal; "{} received: stopping {} workers", signal, self.workers.len());
        out.push(Action::Announce(Announce::Stopping(format!("stopping ({}): {} workers", signal, self.workers.len()))));
    }

    /// Every worker is asked to exit (with its own `shutdownTimeout`); the
    /// master exits when the last one is gone.
    fn stop_all(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.phase = Phase::Stopping;
        self.rollout = None;
        self.pending.clear();
        for id in self.workers.ids() {
            self.stop_worker(id, now, out);
        }
        if self.workers.is_empty() {
            log::info!(event = "master.stop"; "no workers; master exiting");
            out.push(Action::Exit(0));
        }
    }

    /// `NACK stopping` to who is owed an answer by the restart in flight
    /// (`probing`: also a `RESTART` without WAIT, still owed its answer
    /// while the probe runs).
    fn nack_stopping(&self, probing: bool, out: &mut Vec<Action>) {
        let Some(r) = &self.rollout else { return };
        let client = match (r.by, r.waiter) {
            (_, Some(client)) => client,
            (Requester::Control { client, .. }, None) if probing => client,
            _ => return,
        };
        out.push(Action::Reply { client, answer: RestartAnswer::Refused(Refused::new(Reason::Stopping, "")) });
    }

    pub(super) fn stop(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Event::Stop { signal } = ev else { return };
        self.announce_stop(signal, out);
        self.stop_all(now, out);
    }

    pub(super) fn stop_probing(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Event::Stop { signal } = ev else { return };
        self.announce_stop(signal, out);
        out.push(Action::CancelProbe);
        self.nack_stopping(true, out);
        self.stop_all(now, out);
    }

    /// (Rolling or Canary, Stop).
    pub(super) fn stop_rolling(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) {
        let Event::Stop { signal } = ev else { return };
        self.announce_stop(signal, out);
        self.nack_stopping(false, out);
        self.stop_all(now, out);
    }

    pub(super) fn stop_again(&mut self, ev: Event, _: Instant, _: &mut Vec<Action>) {
        let Event::Stop { signal } = ev else { return };
        log::info!("{} received again; already stopping", signal);
    }

    pub(super) fn output(&mut self, ev: Event, _: Instant, _: &mut Vec<Action>) {
        let Event::Output { id, line } = ev else { return };
        if let Some(w) = self.workers.get_mut(id) {
            w.keep_line(line);
        }
    }

    pub(super) fn status_report(&mut self, ev: Event, _: Instant, _: &mut Vec<Action>) {
        let Event::Status { id, text } = ev else { return };
        if let Some(w) = self.workers.get_mut(id) {
            log::debug!(component = "worker", worker_pid = w.pid_or_0(); "status: {}", text);
            w.status = Some(text);
        }
    }

    pub(super) fn main_pid(&mut self, ev: Event, _: Instant, _: &mut Vec<Action>) {
        let Event::MainPid { id, pid } = ev else { return };
        if let Some(w) = self.workers.get_mut(id) {
            if w.main_pid != Some(pid) && w.pid != Some(pid) {
                log::info!(component = "worker", worker_pid = w.pid_or_0(), main_pid = pid;
                    "worker {} names {} its main process (MAINPID=)", w.pid_or_0(), pid);
            }
            w.main_pid = if w.pid == Some(pid) { None } else { Some(pid) };
        }
    }
}

//! The master's decisions: a pure state machine (phase x event -> actions).
//!
//! [`Master::handle`] looks up the cell of the current phase and the event
//! in [`table::cell`] and runs its handler; the table in ARCHITECTURE.md
//! ("The state machine") is rendered from the same function. The master
//! owns the worker table ([`workers`]: ids, lifecycles, the timeouts each
//! worker was spawned with), the phase, at most one restart ([`rollout`]:
//! everything one restart needs, and its steps), at most one upgrade in
//! flight, the respawn backoff and the lifecycle log records. The restart
//! checks are [`super::admission`]'s. It must not touch fds, processes or
//! the clock: the event loop feeds it events with `now` (monotonic, for
//! deadlines) and `wall` (for STATUS) and carries out the actions it
//! returns. Unit tests drive it without processes.
//!
//! The handlers live by subject: `cells.rs` (a worker's life: spawn, ready,
//! soak, failures, exits, deadlines, stop), `watchdog.rs` (heartbeats and
//! hung workers), `requests.rs` (a restart request and its probe),
//! `canary.rs` (a canary restart: it stands, is promoted or rolled back),
//! `upgrades.rs` (an upgrade of the master, the hand-over's snapshot and the
//! resumed master); `event.rs` holds what goes in and out, `progress.rs` the
//! typed facts of a rollout's progress and the workers' health.

mod canary;
mod cells;
pub mod event;
pub mod progress;
mod requests;
pub mod rollout;
pub mod table;
mod upgrades;
mod watchdog;
pub mod workers;

pub use super::admission::{ProbeFailure, ProbeInfo};
pub use crate::control::ClientId;
pub use crate::status::WorkerState;
pub use event::{Action, Announce, Event, Kind, Requester};
pub use progress::{CanaryBy, ExitCause, HungThen, Progress, RolloutView};
pub use rollout::{Rollout, Step};
pub use table::Phase;
pub use workers::{Life, Timeouts, Worker, WorkerId};

use crate::config::Config;
use crate::restart::{AbortCause, Reason, Refused, RestartAnswer};
use crate::status::{LastRestart, MasterState, Outcome, StatusReport, WorkerStatus};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use workers::{Birth, Workers};

/// A worker that dies within this long of its start counts as a crash loop.
const CRASH_WINDOW: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The last restart, for STATUS.
#[derive(Debug, Clone)]
struct RestartRecord {
    generation: Option<u32>,
    started_wall: SystemTime,
    outcome: Outcome,
    /// `reason: detail` of a refusal or an abort.
    reason: Option<String>,
    duration_ms: Option<u64>,
}

/// A respawn waiting for its backoff.
#[derive(Debug)]
struct Pending {
    due: Instant,
    generation: u32,
    index: u32,
}

/// An `UPGRADE` let through: who asked, how, and the phase it came from
/// (Running or Lockout), where the master goes back if it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeAsked {
    pub client: ClientId,
    pub wait: bool,
    pub restart: bool,
    pub from: Phase,
}

pub struct Master {
    /// The current config (the new one once a rollout completes).
    config: Arc<Config>,
    magic: u64,
    version: String,
    /// The generation that serves (during a rollout, the one it rolls to;
    /// while a canary stands, still the old one).
    generation: u32,
    /// The highest generation handed out: a rolled-back canary's number is
    /// not given again.
    highest_generation: u32,
    phase: Phase,
    /// The restart in Probing, Rolling and Canary, and only there.
    rollout: Option<Rollout>,
    /// The upgrade in Upgrading, and only there.
    upgrade: Option<UpgradeAsked>,
    workers: Workers,
    pending: Vec<Pending>,
    /// Consecutive quick crashes per worker index.
    streak: BTreeMap<u32, u32>,
    last_restart: Option<RestartRecord>,
    exited: bool,
    /// `READY=1` was sent for the first generation.
    notified_ready: bool,
    /// Workers found hung since the master started (STATUS).
    hung_total: u64,
    /// Wall-clock time of the event being handled (input of `handle`).
    wall: SystemTime,
}

impl Master {
    pub fn new(config: Arc<Config>, probe: ProbeInfo) -> Master {
        Master {
            config,
            magic: probe.magic,
            version: probe.version,
            generation: 0,
            highest_generation: 0,
            phase: Phase::Running,
            rollout: None,
            upgrade: None,
            workers: Workers::default(),
            pending: Vec::new(),
            streak: BTreeMap::new(),
            last_restart: None,
            exited: false,
            notified_ready: false,
            hung_total: 0,
            wall: std::time::UNIX_EPOCH,
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter()
    }

    /// The state STATUS shows.
    pub fn state(&self) -> MasterState {
        match self.phase {
            Phase::Running if !self.generation_ready() => MasterState::NotReady,
            Phase::Running => MasterState::Running,
            Phase::Probing | Phase::Rolling => MasterState::Restarting,
            Phase::Canary => MasterState::Canary,
            Phase::Lockout => MasterState::Lockout,
            Phase::Stopping => MasterState::Stopping,
            Phase::Upgrading => MasterState::Upgrading,
        }
    }

    /// In lockout, or upgrading from one (STATUS `lockout`).
    pub fn locked_out(&self) -> bool {
        match (self.phase, self.upgrade) {
            (Phase::Upgrading, Some(up)) => up.from == Phase::Lockout,
            (p, _) => p == Phase::Lockout,
        }
    }

    /// The serving fleet is settled: every worker is ready but those on
    /// their way out for good (a hung one replaced, a rolled-back canary);
    /// none is starting, hung, waiting for its respawn or stopping to be
    /// respawned. Counted from the workers, not from `workers` of the
    /// config: after an upgrade out of a lockout the fleet may be smaller,
    /// and its roll-over must not be refused for that.
    fn generation_ready(&self) -> bool {
        let gone_for_good = |w: &Worker| w.asked_to_stop() && (w.generation != self.generation || w.replaced);
        self.pending.is_empty()
            && self.workers.iter().any(|w| w.life == Life::Ready)
            && self.workers.iter().all(|w| w.life == Life::Ready || gone_for_good(w))
    }

    /// Fewer workers run (not asked to stop) than `workers` of the
    /// config; `or_due`: counting the respawns due as running.
    fn fleet_short(&self, or_due: bool) -> bool {
        let due = if or_due { self.pending.len() } else { 0 };
        self.workers.iter().filter(|w| !w.asked_to_stop()).count() + due < self.config.workers as usize
    }

    /// The earliest deadline the loop must wake up for: a worker's (ready,
    /// soak, watchdog, kill), a respawn's, a standing canary's.
    pub fn next_deadline(&self) -> Option<Instant> {
        let w = self.workers.iter().filter_map(|w| w.deadline());
        let canary = self.rollout.as_ref().and_then(|r| r.canary_due);
        w.chain(self.pending.iter().map(|p| p.due)).chain(canary).min()
    }

    /// A fact of progress: logged, and handed to the loop.
    fn note(&mut self, fact: Progress, out: &mut Vec<Action>) {
        fact.log();
        out.push(Action::Progress(fact));
    }

    /// A fact of progress whose cell logged its own record: handed to the
    /// loop only.
    fn tell(fact: Progress, out: &mut Vec<Action>) {
        out.push(Action::Progress(fact));
    }

    /// Where the rollout in flight stands (streamed progress), if one runs
    /// past its probe.
    pub fn rollout_view(&self) -> Option<RolloutView> {
        let r = self.rollout.as_ref().filter(|r| r.generation > 0)?;
        let new = |w: &&Worker| r.owns(w.id);
        let ready = self.workers.iter().filter(new).filter(|w| w.life == Life::Ready).count() as u32;
        let of = if self.phase == Phase::Canary { 1 } else { r.config.workers };
        let old = self.workers.iter().filter(|w| !r.owns(w.id) && w.generation != r.generation).count() as u32;
        Some(RolloutView { generation: r.generation, ready, of, old })
    }

    /// Handle one event at `now` (monotonic: deadlines) and `wall` (the same
    /// instant on the wall clock: STATUS times): the cell of the current
    /// phase and the event runs, then a rollout that is complete ends.
    pub fn handle(&mut self, event: Event, now: Instant, wall: SystemTime) -> Vec<Action> {
        let mut out = Vec::new();
        if self.exited {
            return out;
        }
        self.wall = wall;
        let cell = table::cell(self.phase, event.kind());
        (cell.run)(self, event, now, &mut out);
        if self.phase == Phase::Rolling && self.rollout.as_ref().is_some_and(|r| r.complete(&self.workers)) {
            self.complete(now, &mut out);
        }
        debug_assert_eq!(self.rollout.is_some(), matches!(self.phase, Phase::Probing | Phase::Rolling | Phase::Canary));
        debug_assert_eq!(self.upgrade.is_some(), self.phase == Phase::Upgrading);
        if out.iter().any(|a| matches!(a, Action::Exit(_))) {
            self.exited = true;
        }
        out
    }

    /// The cell of events that change nothing in this phase.
    fn ignore(&mut self, _: Event, _: Instant, _: &mut Vec<Action>) {}

    /// The `STATUS=` text for the service manager: state, generation,
    /// workers, then `tail` (what just happened).
    fn announce_status(&self, tail: &str) -> String {
        let state = match self.state() {
            MasterState::Running => "running",
            MasterState::NotReady => "not ready",
            MasterState::Restarting => "restarting",
            MasterState::Canary => "canary",
            MasterState::Lockout => "LOCKOUT",
            MasterState::Upgrading if self.locked_out() => "LOCKOUT, upgrading",
            MasterState::Upgrading => "upgrading",
            MasterState::Stopping | MasterState::Unknown => "stopping",
        };
        let ready = self.workers.ready();
        let mut s = format!("{}: generation {}, {} of {} workers ready", state, self.generation, ready, self.config.workers);
        if !tail.is_empty() {
            s.push_str("; ");
            s.push_str(tail);
        }
        s
    }

    /// Start a worker of `generation` with `config` (and its timeouts).
    fn spawn(&mut self, generation: u32, index: u32, config: Arc<Config>, now: Instant, out: &mut Vec<Action>) -> WorkerId {
        let id = self.workers.add(Birth { generation, index, config: &config, now, wall: self.wall });
        out.push(Action::Spawn { id, generation, index, config });
        id
    }

    /// Ask a worker to exit: SIGTERM now, SIGKILL after the
    /// `shutdownTimeout` it was spawned with.
    fn stop_worker(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(id) else { return };
        if w.asked_to_stop() {
            return;
        }
        w.life = Life::Stopping { kill_at: Some(now + w.timeouts.shutdown) };
        w.watchdog_at = None;
        // To the worker's process group (the loop): its main process
        // (`MAINPID=`) is one of it.
        if let Some(pid) = w.pid {
            log::info!(worker_pid = pid, generation = w.generation; "asking worker {} to exit (SIGTERM)", pid);
            let (generation, index) = (w.generation, w.index);
            out.push(Action::Signal { id, signal: libc::SIGTERM });
            Self::tell(Progress::WorkerStopping { id, pid, generation, index }, out);
        }
    }

    /// End a hung worker: SIGABRT now (a stopped process gets it once it
    /// runs again), SIGKILL after its `shutdownTimeout`.
    fn abort_worker(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(id) else { return };
        w.life = Life::Stopping { kill_at: Some(now + w.timeouts.shutdown) };
        w.watchdog_at = None;
        if let Some(pid) = w.pid {
            log::warn!(worker_pid = pid, generation = w.generation; "sending SIGABRT to hung worker {}", pid);
            out.push(Action::Signal { id, signal: libc::SIGABRT });
        }
    }

    /// Carry out a rollout's steps.
    fn apply(&mut self, steps: Vec<Step>, now: Instant, out: &mut Vec<Action>) {
        for step in steps {
            match step {
                Step::Spawn { index } => {
                    let Some(r) = &self.rollout else { return };
                    let (generation, config) = (r.generation, r.config.clone());
                    let id = self.spawn(generation, index, config, now, out);
                    if let Some(r) = &mut self.rollout {
                        r.started(id);
                    }
                }
                Step::Drain(id) => self.stop_worker(id, now, out),
                Step::Abort { failed, cause, detail } => self.abort(&failed, cause, detail, now, out),
            }
        }
    }

    /// A refused restart request: logged, answered, recorded.
    fn refuse(&mut self, by: Requester, refused: Refused, out: &mut Vec<Action>) {
        let (reason, detail) = (refused.reason.wire(), refused.detail.as_str());
        log::warn!(event = "restart.refused", reason = reason, detail = detail;
            "zero-downtime restart refused: {}", refused);
        Self::tell(Progress::Refused { reason: refused.reason, detail: refused.detail.clone() }, out);
        // A refusal while a restart runs, or in lockout, must not hide that
        // restart's record from STATUS.
        if !matches!(refused.reason, Reason::InFlight | Reason::AbortedRestart | Reason::Stopping | Reason::NotReady) {
            // The request had been taken up (RELOADING=1): it ends here.
            let text = self.announce_status(&format!("zero-downtime restart refused: {}", refused.reason));
            out.push(Action::Announce(Announce::Ready(text)));
        }
        if !matches!(refused.reason, Reason::InFlight | Reason::AbortedRestart) {
            self.last_restart = Some(RestartRecord {
                generation: None,
                started_wall: self.wall,
                outcome: Outcome::Refused,
                reason: Some(refused.to_string()),
                duration_ms: None,
            });
        }
        if let Requester::Control { client, wait } = by {
            // pump.socket(7) defines RESTART's answer for its five reasons
            // exactly: the detail stays in the record above and in STATUS.
            // RESTART WAIT is zdrestart's own and carries it.
            let answer = if !wait && refused.reason.defined_by_pump_io() { Refused::new(refused.reason, "") } else { refused };
            out.push(Action::Reply { client, answer: RestartAnswer::Refused(answer) });
        }
    }

    /// Abort the rollout and lock out; `failed` is the new worker that
    /// caused it, as it was then. Serving workers stay.
    fn abort(&mut self, failed: &Worker, cause: AbortCause, detail: String, now: Instant, out: &mut Vec<Action>) {
        let Some(r) = self.rollout.take() else { return };
        self.phase = Phase::Lockout;
        let why = cause.text();
        let lines = failed.lines();
        log::error!(event = "restart.abort", reason = why, detail = detail.as_str(), worker_pid = failed.pid_or_0(),
            generation = r.generation, stderr = lines.as_str();
            "zero-downtime restart aborted: {}: {}", why, detail);
        let took = now.duration_since(r.started);
        Self::tell(Progress::Aborted { generation: r.generation, cause: why, detail: detail.clone(), took }, out);
        log::error!(event = "master.lockout";
            "restarts are now refused and no worker will be respawned: restart the master as soon as possible: \
             zdrestartctl upgrade --wait (without downtime, once the cause is fixed), or a normal restart");
        let text = self.announce_status(&format!(
            "zero-downtime restart to generation {} aborted: {}; restarts refused, restart the master as soon as possible \
             (zdrestartctl upgrade --wait, or a normal restart)",
            r.generation, why
        ));
        out.push(Action::Announce(Announce::Ready(text)));
        self.last_restart = Some(RestartRecord {
            generation: Some(r.generation),
            started_wall: self.last_restart.as_ref().map_or(self.wall, |l| l.started_wall),
            outcome: Outcome::Aborted,
            reason: Some(format!("{}: {}", why, detail)),
            duration_ms: Some(now.duration_since(r.started).as_millis() as u64),
        });
        if let Some(client) = r.waiter {
            let refused = Refused::new(Reason::Aborted, format!("{}: {}", why, detail));
            out.push(Action::Reply { client, answer: RestartAnswer::Refused(refused) });
        }
        // The failed worker goes (SIGABRT if hung); so do the new workers
        // that have not passed their soak: unproven code, for which no old
        // worker went. Those that passed serve on, as do the old ones. With
        // no old worker left serving (each replaced, told to exit, or dead)
        // the new generation is all that serves: none of it is stopped.
        match self.workers.get(failed.id).map(|w| w.life) {
            Some(Life::Hung) => self.abort_worker(failed.id, now, out),
            Some(l) if l != Life::Ready => self.stop_worker(failed.id, now, out),
            _ => {}
        }
        let fallback = r.old_serving_besides(failed.id);
        if !fallback {
            log::error!(generation = r.generation;
                "no old worker is left to fall back on: the new generation's other workers serve on");
        }
        for &id in r.new_workers().iter().filter(|_| fallback) {
            if self.workers.get(id).is_some_and(|w| matches!(w.life, Life::Starting { .. } | Life::Soaking { .. })) {
                self.stop_worker(id, now, out);
            }
        }
        self.pending.clear();
    }

    /// The rollout's end: every new worker ready, every old one gone. The
    /// new config becomes current.
    fn complete(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(r) = self.rollout.take() else { return };
        self.phase = Phase::Running;
        let ms = now.duration_since(r.started).as_millis() as u64;
        log::info!(event = "restart.complete", generation = r.generation, duration_ms = ms, workers = r.config.workers;
            "Zero-downtime restart complete");
        Self::tell(Progress::Completed { generation: r.generation, workers: r.config.workers, took: now.duration_since(r.started) }, out);
        self.config = r.config;
        self.version = r.version;
        self.streak.clear();
        let text = self.announce_status("zero-downtime restart complete");
        out.push(Action::Announce(Announce::Ready(text)));
        if let Some(l) = &mut self.last_restart {
            l.outcome = Outcome::Complete;
            l.duration_ms = Some(ms);
        }
        if let Some(client) = r.waiter {
            out.push(Action::Reply { client, answer: RestartAnswer::Complete });
        }
    }

    /// STATUS: the master and every worker (serialized as one JSON line).
    pub fn status(&self, master_pid: u32, started: SystemTime) -> StatusReport {
        let iso = |t: SystemTime| {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            crate::log::iso8601(d.as_secs() as i64, d.subsec_millis())
        };
        StatusReport {
            state: self.state(),
            generation: self.generation.into(),
            lockout: self.locked_out(),
            magic: self.magic,
            version: self.version.clone(),
            master_version: crate::VERSION.to_string(),
            pid: master_pid,
            started: iso(started),
            started_unix_ms: unix_ms(started),
            rss_bytes: None,
            counters: Default::default(),
            workers_configured: self.config.workers,
            // address/port never change without a normal restart.
            listen: self.config.listen_display(),
            last_restart: self.last_restart.as_ref().map(|l| LastRestart {
                generation: l.generation.map(u64::from),
                started: iso(l.started_wall),
                outcome: l.outcome,
                reason: l.reason.clone(),
                duration_ms: l.duration_ms,
            }),
            workers_hung: self.hung_total,
            workers: self
                .workers
                .iter()
                .map(|w| WorkerStatus {
                    pid: w.pid,
                    generation: w.generation.into(),
                    index: w.index,
                    state: w.state(),
                    started: iso(w.started_wall),
                    started_unix_ms: unix_ms(w.started_wall),
                    rss_bytes: None,
                    status: w.status.clone(),
                    main_pid: w.main_pid,
                    canary: self.phase == Phase::Canary && self.rollout.as_ref().is_some_and(|r| r.owns(w.id)),
                })
                .collect(),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod tests;

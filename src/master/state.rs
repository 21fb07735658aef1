//! The master's decisions: a pure state machine (state x event -> actions).
//!
//! Owns the worker table, the phases (running, probing, rolling out, lockout,
//! stopping), every deadline (ready, kill, respawn backoff) and the lifecycle
//! log records; the restart checks are [`super::admission`]'s. It must not
//! touch fds, processes or the clock: the event loop feeds it events with
//! `now` (monotonic, for deadlines) and `wall` (for STATUS) and carries out
//! the actions it returns. Unit tests drive it without processes. The states
//! and events are tabled in ARCHITECTURE.md ("The state machine").

use super::admission::{self, Running};
use super::handover::{MasterSnapshot, PendingSnapshot, WorkerFds, WorkerSnapshot};
use crate::config::Config;
use crate::restart::{AbortCause, Reason, Refused, RestartAnswer};
use crate::status::{LastRestart, MasterState, Outcome, StatusReport, WorkerStatus};
use crate::sys::ExitStatus;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use super::admission::{ProbeFailure, ProbeInfo};
pub use crate::status::WorkerState;

pub type WorkerId = u64;
pub type ClientId = u64;

/// How many output lines of each worker are kept for abort records.
const KEEP_LINES: usize = 10;
/// A worker that dies within this long of its start counts as a crash loop.
const CRASH_WINDOW: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Who asked for a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    Signal,
    /// A control client; `wait`: answer when the restart ends.
    Control { client: ClientId, wait: bool },
    /// The roll-over that follows an in-place upgrade of the master (its
    /// client, if any, is answered as a `Control` one).
    Upgrade,
}

// Events are built and consumed at once, never stored in bulk: the size of
// the Restart variant (a whole Config) costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// Spawn the first generation.
    Start,
    /// SIGUSR2 or RESTART: `config` is the file as re-read now.
    Restart { config: Result<Config, String>, by: Requester },
    /// SIGTERM/SIGINT.
    Stop { signal: &'static str },
    ProbeDone(Result<ProbeInfo, ProbeFailure>),
    Spawned { id: WorkerId, pid: u32 },
    SpawnFailed { id: WorkerId, error: String },
    Ready { id: WorkerId },
    ReportedError { id: WorkerId, text: String },
    Output { id: WorkerId, line: String },
    /// `STATUS=<text>` (report pipe or sd_notify).
    Status { id: WorkerId, text: String },
    /// sd_notify `ERRNO=` or `STOPPING=1`: a failure if the worker is not
    /// ready yet (as `ERROR=`), else only logged.
    NotifyFailure { id: WorkerId, text: String },
    /// sd_notify `MAINPID=`, from the worker's own processes, naming one of
    /// them: the worker's main process from now on (for STATUS; the loop
    /// watches it).
    MainPid { id: WorkerId, pid: u32 },
    Exited { id: WorkerId, status: ExitStatus },
    /// A deadline may have passed.
    Tick,
    /// `UPGRADE` on the control socket: re-exec the master in place.
    Upgrade { client: ClientId, wait: bool, restart: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Spawn { id: WorkerId, generation: u32, index: u32, config: Arc<Config> },
    Signal { id: WorkerId, pid: u32, signal: i32 },
    Probe { config: Arc<Config> },
    CancelProbe,
    /// Answer a control client's `RESTART` or `RESTART WAIT`.
    Reply { client: ClientId, answer: RestartAnswer },
    /// Tell the service manager (sd_notify(3), when `NOTIFY_SOCKET` is set).
    Notify(Notify),
    /// Exit the master with this status (after cleanup).
    Exit(i32),
    /// Hand the master over to its binary on disk (re-exec in place), once
    /// the events queued so far are handled; `master::upgrade` refuses it
    /// then if a restart began meanwhile.
    Upgrade { client: ClientId, wait: bool, restart: bool },
    /// Answer a control client with this line (an `UPGRADE` refusal).
    ReplyLine { client: ClientId, line: String },
}

/// A notification to the service manager: one datagram, whose `STATUS=` is
/// the text held here (what `systemctl status` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// `READY=1`: the first generation is ready, or a restart ended
    /// (complete, refused or aborted).
    Ready(String),
    /// `RELOADING=1` and `MONOTONIC_USEC=` (filled in by the loop, which
    /// owns the clock): a restart request is being handled.
    Reloading(String),
    /// `STOPPING=1`: a graceful stop began.
    Stopping(String),
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: WorkerId,
    pub pid: Option<u32>,
    pub generation: u32,
    pub index: u32,
    pub state: WorkerState,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub ready_deadline: Option<Instant>,
    pub kill_deadline: Option<Instant>,
    /// We asked it to exit: its exit is expected.
    pub asked_to_stop: bool,
    pub killed: bool,
    pub last_lines: VecDeque<String>,
    /// Its last `STATUS=` report.
    pub status: Option<String>,
    /// sd_notify `MAINPID=`: the process that is the worker from then on
    /// (one of its process group, which gets its signals; STATUS shows it).
    pub main_pid: Option<u32>,
}

#[derive(Debug)]
struct Rollout {
    generation: u32,
    config: Arc<Config>,
    version: String,
    started: Instant,
    /// Old workers not yet asked to stop, oldest first.
    old_serving: Vec<WorkerId>,
    spawned: u32,
    requesters: Vec<Requester>,
}

#[derive(Debug)]
enum Phase {
    Running,
    Probing { config: Arc<Config>, requesters: Vec<Requester> },
    Rolling(Rollout),
    Lockout,
    Stopping,
}

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

#[derive(Debug)]
struct Pending {
    due: Instant,
    generation: u32,
    index: u32,
}

pub struct Master {
    config: Arc<Config>,
    magic: u64,
    version: String,
    generation: u32,
    phase: Phase,
    workers: BTreeMap<WorkerId, Worker>,
    next_id: WorkerId,
    pending: Vec<Pending>,
    /// Consecutive quick crashes per worker index.
    streak: BTreeMap<u32, u32>,
    last_restart: Option<RestartRecord>,
    exited: bool,
    /// `READY=1` was sent for the first generation.
    notified_ready: bool,
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
            phase: Phase::Running,
            workers: BTreeMap::new(),
            next_id: 1,
            pending: Vec::new(),
            streak: BTreeMap::new(),
            last_restart: None,
            exited: false,
            notified_ready: false,
            wall: std::time::UNIX_EPOCH,
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn state(&self) -> MasterState {
        match self.phase {
            Phase::Running => MasterState::Running,
            Phase::Probing { .. } | Phase::Rolling(_) => MasterState::Restarting,
            Phase::Lockout => MasterState::Lockout,
            Phase::Stopping => MasterState::Stopping,
        }
    }

    /// The `STATUS=` text for the service manager: state, generation,
    /// workers, then `tail` (what just happened).
    fn notify_status(&self, tail: &str) -> String {
        let ready = self.workers.values().filter(|w| w.state == WorkerState::Ready).count();
        let state = match self.state() {
            MasterState::Running => "running",
            MasterState::Restarting => "restarting",
            MasterState::Lockout => "LOCKOUT",
            MasterState::Stopping | MasterState::Unknown => "stopping",
        };
        let mut s = format!("{}: generation {}, {} of {} workers ready", state, self.generation, ready, self.config.workers);
        if !tail.is_empty() {
            s.push_str("; ");
            s.push_str(tail);
        }
        s
    }

    /// The earliest deadline the loop must wake up for.
    pub fn next_deadline(&self) -> Option<Instant> {
        let w = self.workers.values().flat_map(|w| [w.ready_deadline, w.kill_deadline]).flatten();
        let p = self.pending.iter().map(|p| p.due);
        w.chain(p).min()
    }

    /// Handle one event at `now` (monotonic: deadlines) and `wall` (the same
    /// instant on the wall clock: STATUS times).
    pub fn handle(&mut self, event: Event, now: Instant, wall: SystemTime) -> Vec<Action> {
        let mut out = Vec::new();
        if self.exited {
            return out;
        }
        self.wall = wall;
        match event {
            Event::Start => {
                self.generation = 1;
                let cfg = self.config.clone();
                for index in 0..cfg.workers {
                    self.spawn(1, index, cfg.clone(), now, &mut out);
                }
            }
            Event::Restart { config, by } => self.on_restart(config, by, now, &mut out),
            Event::Stop { signal } => self.on_stop(signal, now, &mut out),
            Event::ProbeDone(result) => self.on_probe(result, now, &mut out),
            Event::Spawned { id, pid } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.pid = Some(pid);
                    log::info!(event = "worker.spawn", worker_pid = pid, generation = w.generation,
                        worker = w.index; "spawned worker {} (generation {}, index {})", pid, w.generation, w.index);
                }
            }
            Event::SpawnFailed { id, error } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    log::error!(event = "worker.exit", generation = w.generation, worker = w.index, error = error.as_str();
                        "cannot start worker: {}", error);
                    w.last_lines.push_back(error);
                }
                self.on_gone(id, None, now, &mut out);
            }
            Event::Ready { id } => self.on_ready(id, now, &mut out),
            Event::ReportedError { id, text } => {
                let report = format!("ERROR={}", text);
                self.on_reported_error(id, &text, &report, now, &mut out)
            }
            Event::Output { id, line } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    if w.last_lines.len() == KEEP_LINES {
                        w.last_lines.pop_front();
                    }
                    w.last_lines.push_back(line);
                }
            }
            Event::Status { id, text } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    log::debug!(component = "worker", worker_pid = w.pid.unwrap_or(0); "status: {}", text);
                    w.status = Some(text);
                }
            }
            Event::NotifyFailure { id, text } => match self.workers.get(&id) {
                Some(w) if w.state == WorkerState::Starting => self.on_reported_error(id, &text, &text, now, &mut out),
                Some(w) => log::info!(component = "worker", worker_pid = w.pid.unwrap_or(0); "worker reports {}", text),
                None => {}
            },
            Event::MainPid { id, pid } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    if w.main_pid != Some(pid) && w.pid != Some(pid) {
                        log::info!(component = "worker", worker_pid = w.pid.unwrap_or(0), main_pid = pid;
                            "worker {} names {} its main process (MAINPID=)", w.pid.unwrap_or(0), pid);
                    }
                    w.main_pid = if w.pid == Some(pid) { None } else { Some(pid) };
                }
            }
            Event::Exited { id, status } => self.on_gone(id, Some(status), now, &mut out),
            Event::Tick => self.on_tick(now, &mut out),
            Event::Upgrade { client, wait, restart } => {
                // Running or lockout: the one way out of a lockout without
                // downtime (zdrestart(8), "Upgrading the master").
                let refused = match self.phase {
                    Phase::Running | Phase::Lockout => None,
                    Phase::Probing { .. } | Phase::Rolling(_) => Some(Reason::InFlight),
                    Phase::Stopping => Some(Reason::Stopping),
                };
                match refused {
                    None => out.push(Action::Upgrade { client, wait, restart }),
                    Some(r) => {
                        log::warn!(event = "upgrade.refused", reason = r.wire(); "upgrade of the master refused: {}", r.wire());
                        out.push(Action::ReplyLine { client, line: format!("NACK {}", r.wire()) });
                    }
                }
            }
        }
        self.check_complete(now, &mut out);
        if out.iter().any(|a| matches!(a, Action::Exit(_))) {
            self.exited = true;
        }
        out
    }

    fn spawn(&mut self, generation: u32, index: u32, config: Arc<Config>, now: Instant, out: &mut Vec<Action>) {
        let id = self.next_id;
        self.next_id += 1;
        self.workers.insert(
            id,
            Worker {
                id,
                pid: None,
                generation,
                index,
                state: WorkerState::Starting,
                started: now,
                started_wall: self.wall,
                ready_deadline: Some(now + config.ready_timeout),
                kill_deadline: None,
                asked_to_stop: false,
                killed: false,
                last_lines: VecDeque::new(),
                status: None,
                main_pid: None,
            },
        );
        out.push(Action::Spawn { id, generation, index, config });
    }

    /// Ask a worker to exit (SIGTERM now, SIGKILL at its kill deadline).
    fn stop_worker(&mut self, id: WorkerId, timeout: Duration, now: Instant, out: &mut Vec<Action>) {
        if let Some(w) = self.workers.get_mut(&id) {
            if w.asked_to_stop {
                return;
            }
            w.asked_to_stop = true;
            w.state = WorkerState::Stopping;
            w.ready_deadline = None;
            w.kill_deadline = Some(now + timeout);
            // To the worker's process group (the loop): its main process
            // (`MAINPID=`) is one of it.
            if let Some(pid) = w.pid {
                log::info!(worker_pid = pid, generation = w.generation; "asking worker {} to exit (SIGTERM)", pid);
                out.push(Action::Signal { id, pid, signal: libc::SIGTERM });
            }
        }
    }

    fn refuse(&mut self, by: Requester, refused: Refused, out: &mut Vec<Action>) {
        let (reason, detail) = (refused.reason.wire(), refused.detail.as_str());
        log::warn!(event = "restart.refused", reason = reason, detail = detail;
            "zero-downtime restart refused: {}", refused);
        // A refusal while a restart runs, or in lockout, must not hide that
        // restart's record from STATUS.
        if !matches!(refused.reason, Reason::InFlight | Reason::AbortedRestart | Reason::Stopping) {
            // The request had been taken up (RELOADING=1): it ends here.
            let text = self.notify_status(&format!("zero-downtime restart refused: {}", refused.reason));
            out.push(Action::Notify(Notify::Ready(text)));
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

    /// The running master as admission sees it.
    fn running(&self) -> Running {
        Running { state: self.state(), listen: self.config.listen_display(), magic: self.magic }
    }

    fn on_restart(&mut self, config: Result<Config, String>, by: Requester, now: Instant, out: &mut Vec<Action>) {
        log::info!(component = "master"; "zero-downtime restart requested ({})",
            match by { Requester::Signal => "SIGUSR2", Requester::Control { .. } => "control socket", Requester::Upgrade => "upgrade of the master" });
        if let (Phase::Running, Ok(new)) = (&self.phase, &config) {
            for w in &new.warnings {
                log::warn!("{}", w);
            }
        }
        if let Phase::Running = self.phase {
            // Taken up: from here every path ends with READY=1 (refused,
            // aborted or complete).
            let by_what = match by { Requester::Signal => "SIGUSR2", Requester::Control { .. } => "control socket", Requester::Upgrade => "upgrade of the master" };
            let text = self.notify_status(&format!("zero-downtime restart requested ({})", by_what));
            out.push(Action::Notify(Notify::Reloading(text)));
        }
        let new = match admission::check_request(&self.running(), config) {
            Ok(new) => new,
            Err(refused) => return self.refuse(by, refused, out),
        };
        let old = &self.config;
        for (key, changed) in [
            ("logfile", new.logfile != old.logfile),
            ("pidfile", new.pidfile != old.pidfile),
            ("controlSocket", new.control_socket != old.control_socket),
            ("serverUser", new.server_user != old.server_user),
        ] {
            if changed {
                log::warn!(key = key; "config key \"{}\" changed: it applies only after a normal restart of the master", key);
            }
        }
        let config = Arc::new(new);
        let declared = admission::declared(&config);
        if declared.is_none() {
            out.push(Action::Probe { config: config.clone() });
        }
        self.phase = Phase::Probing { config, requesters: vec![by] };
        // `"probe": false`: the config's answer stands for the probe's.
        if let Some(info) = declared {
            log::info!(component = "probe", magic = info.magic, version = info.version.as_str();
                "probe off: the config declares magic number {} (version {})", info.magic, info.version);
            self.on_probe(Ok(info), now, out);
        }
    }

    fn on_probe(&mut self, result: Result<ProbeInfo, ProbeFailure>, now: Instant, out: &mut Vec<Action>) {
        let Phase::Probing { .. } = self.phase else { return };
        let Phase::Probing { config, requesters } = std::mem::replace(&mut self.phase, Phase::Running)
        else {
            unreachable!()
        };
        let info = match admission::check_probe(self.magic, &config, result) {
            Ok(info) => info,
            Err(refused) => {
                for by in requesters {
                    self.refuse(by, refused.clone(), out);
                }
                return;
            }
        };
        self.generation += 1;
        let generation = self.generation;
        log::info!(event = "restart.start", generation = generation, workers = config.workers, version = info.version.as_str();
            "zero-downtime restart started: generation {} ({} workers, version {})", generation, config.workers, info.version);
        for by in &requesters {
            if let Requester::Control { client, wait: false } = *by {
                out.push(Action::Reply { client, answer: RestartAnswer::Started });
            }
        }
        self.last_restart = Some(RestartRecord {
            generation: Some(generation),
            started_wall: self.wall,
            outcome: Outcome::InProgress,
            reason: None,
            duration_ms: None,
        });
        // Pending respawns belong to the old generation: the new one replaces them.
        self.pending.clear();
        let old_serving: Vec<WorkerId> =
            self.workers.values().filter(|w| !w.asked_to_stop).map(|w| w.id).collect();
        self.phase = Phase::Rolling(Rollout {
            generation,
            config: config.clone(),
            version: info.version.clone(),
            started: now,
            old_serving,
            spawned: 1,
            requesters,
        });
        self.spawn(generation, 0, config, now, out);
    }

    fn on_ready(&mut self, id: WorkerId, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&id) else { return };
        if w.state != WorkerState::Starting {
            return;
        }
        w.state = WorkerState::Ready;
        w.ready_deadline = None;
        let (pid, generation) = (w.pid.unwrap_or(0), w.generation);
        log::info!(event = "worker.ready", worker_pid = pid, generation = generation, worker = w.index,
            ms = now.duration_since(w.started).as_millis() as u64; "worker {} ready", pid);
        if !self.notified_ready && generation == 1 && !matches!(self.phase, Phase::Stopping) {
            let ready = self.workers.values().filter(|w| w.generation == 1 && w.state == WorkerState::Ready).count();
            if ready as u32 >= self.config.workers {
                self.notified_ready = true;
                let text = self.notify_status("");
                out.push(Action::Notify(Notify::Ready(text)));
            }
        }
        if let Phase::Rolling(r) = &mut self.phase {
            if generation != r.generation {
                return;
            }
            // Surge: one old worker goes for each new one that is ready.
            let mut stop = Vec::new();
            if !r.old_serving.is_empty() {
                stop.push(r.old_serving.remove(0));
            }
            let timeout = r.config.shutdown_timeout;
            let next = if r.spawned < r.config.workers {
                r.spawned += 1;
                Some((r.generation, r.spawned - 1, r.config.clone()))
            } else {
                // Every new worker is spawned; the remaining old ones go once all are ready.
                let all_ready = self
                    .workers
                    .values()
                    .filter(|w| w.generation == r.generation)
                    .all(|w| w.state == WorkerState::Ready);
                if all_ready {
                    stop.append(&mut r.old_serving);
                }
                None
            };
            // Old workers' shutdownTimeout is the new config's: it is the
            // operator's latest word and both are read at restart time.
            for old in stop {
                self.stop_worker(old, timeout, now, out);
            }
            if let Some((g, i, c)) = next {
                self.spawn(g, i, c, now, out);
            }
        }
    }

    fn is_new_in_rollout(&self, id: WorkerId) -> bool {
        match (&self.phase, self.workers.get(&id)) {
            (Phase::Rolling(r), Some(w)) => w.generation == r.generation,
            _ => false,
        }
    }

    /// `report` as the worker said it (`ERROR=...`, `ERRNO=...`), `text` what it means.
    fn on_reported_error(&mut self, id: WorkerId, text: &str, report: &str, now: Instant, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get(&id) else { return };
        let pid = w.pid.unwrap_or(0);
        log::error!(worker_pid = pid, generation = w.generation, error = text; "worker {} reported an error: {}", pid, text);
        if self.is_new_in_rollout(id) {
            let detail = format!("worker {} reported {}", pid, report);
            let w = w.clone();
            self.abort(&w, true, AbortCause::ReportedError, detail, now, out);
        } else if !w.asked_to_stop {
            // It exits by protocol; make sure it does.
            let t = self.config.shutdown_timeout;
            self.stop_worker(id, t, now, out);
        }
    }

    /// Abort the rollout and lock out. `failed` is the new worker that caused
    /// it; `alive` says whether it still runs (and must be stopped).
    fn abort(&mut self, failed: &Worker, alive: bool, cause: AbortCause, detail: String, now: Instant, out: &mut Vec<Action>) {
        let why = cause.text();
        let Phase::Rolling(r) = std::mem::replace(&mut self.phase, Phase::Lockout) else { return };
        let pid = failed.pid.unwrap_or(0);
        let lines = failed.last_lines.iter().cloned().collect::<Vec<_>>().join("\n");
        log::error!(event = "restart.abort", reason = why, detail = detail.as_str(), worker_pid = pid,
            generation = r.generation, stderr = lines.as_str();
            "zero-downtime restart aborted: {}: {}", why, detail);
        log::error!(event = "master.lockout";
            "restarts are now refused and no worker will be respawned: restart the master as soon as possible, \
             without downtime once the cause is fixed: zdrestartctl upgrade --wait");
        let text = self.notify_status(&format!(
            "zero-downtime restart to generation {} aborted: {}; restarts refused, restart the master as soon as possible",
            r.generation, why
        ));
        out.push(Action::Notify(Notify::Ready(text)));
        self.last_restart = Some(RestartRecord {
            generation: Some(r.generation),
            started_wall: self.last_restart.as_ref().map_or(self.wall, |l| l.started_wall),
            outcome: Outcome::Aborted,
            reason: Some(format!("{}: {}", why, detail)),
            duration_ms: Some(now.duration_since(r.started).as_millis() as u64),
        });
        for by in r.requesters {
            if let Requester::Control { client, wait: true } = by {
                let refused = Refused::new(Reason::Aborted, format!("{}: {}", why, detail));
                out.push(Action::Reply { client, answer: RestartAnswer::Refused(refused) });
            }
        }
        // The failed worker is not serving: make sure it goes. Serving ones stay.
        if alive && failed.state != WorkerState::Ready {
            let timeout = self.config.shutdown_timeout;
            self.stop_worker(failed.id, timeout, now, out);
        }
        self.pending.clear();
    }

    fn on_gone(&mut self, id: WorkerId, status: Option<ExitStatus>, now: Instant, out: &mut Vec<Action>) {
        let new_in_rollout = self.is_new_in_rollout(id);
        let Some(w) = self.workers.remove(&id) else { return };
        let pid = w.pid.unwrap_or(0);
        let lived = now.duration_since(w.started);
        if let Some(st) = status {
            let expected = w.asked_to_stop && !matches!(self.phase, Phase::Lockout);
            let level = if expected { log::Level::Info } else { log::Level::Error };
            let how = if expected { "exited" } else { "exited unexpectedly" };
            // Either `code` or `signal`, never a null placeholder.
            match st {
                ExitStatus::Code(c) => log::log!(level, event = "worker.exit", worker_pid = pid,
                    generation = w.generation, worker = w.index, code = c; "worker {} {} ({})", pid, how, st),
                ExitStatus::Signal(sig) => log::log!(level, event = "worker.exit", worker_pid = pid,
                    generation = w.generation, worker = w.index, signal = sig; "worker {} {} ({})", pid, how, st),
            }
        }
        if let Phase::Rolling(r) = &mut self.phase {
            r.old_serving.retain(|&o| o != id);
        }
        if new_in_rollout {
            let what = match status {
                Some(st) => format!("new worker {} exited ({}) before the restart completed", pid, st),
                None => format!("new worker could not be started: {}", w.last_lines.back().cloned().unwrap_or_default()),
            };
            self.abort(&w, false, AbortCause::Exited, what, now, out);
            self.after_exit_in_lockout(pid, out);
            return;
        }
        match self.phase {
            Phase::Running | Phase::Probing { .. } => {
                if w.generation == self.generation && w.index < self.config.workers {
                    self.schedule_respawn(&w, lived, now, out);
                }
            }
            Phase::Rolling(_) => {
                if !w.asked_to_stop {
                    log::error!(worker_pid = pid; "old worker {} died during the restart; the new generation replaces it", pid);
                }
            }
            Phase::Lockout => self.after_exit_in_lockout(pid, out),
            Phase::Stopping => {
                if self.workers.is_empty() {
                    log::info!(event = "master.stop"; "all workers gone; master exiting");
                    out.push(Action::Exit(0));
                }
            }
        }
    }

    fn after_exit_in_lockout(&mut self, pid: u32, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Lockout) {
            return;
        }
        log::error!(worker_pid = pid, remaining = self.workers.len() as u64;
            "worker {} is gone and will not be respawned after the aborted restart ({} left): restart the master as soon as possible",
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
        if *streak == 0 {
            log::error!(generation = w.generation, worker = w.index; "respawning worker {} now", w.index);
            let cfg = self.config.clone();
            self.spawn(w.generation, w.index, cfg, now, out);
        } else {
            let delay = BACKOFF_FIRST.saturating_mul(1 << (*streak - 1).min(10)).min(BACKOFF_MAX);
            log::error!(generation = w.generation, worker = w.index, delay_ms = delay.as_millis() as u64;
                "worker {} died within {:?} of starting; respawning in {:?}", w.index, CRASH_WINDOW, delay);
            self.pending.push(Pending { due: now + delay, generation: w.generation, index: w.index });
        }
    }

    fn on_stop(&mut self, signal: &'static str, now: Instant, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Stopping) {
            log::info!("{} received again; already stopping", signal);
            return;
        }
        log::info!(signal = signal; "{} received: stopping {} workers", signal, self.workers.len());
        out.push(Action::Notify(Notify::Stopping(format!("stopping ({}): {} workers", signal, self.workers.len()))));
        match std::mem::replace(&mut self.phase, Phase::Stopping) {
            Phase::Probing { requesters, .. } => {
                out.push(Action::CancelProbe);
                for by in requesters {
                    if let Requester::Control { client, .. } = by {
                        out.push(Action::Reply { client, answer: RestartAnswer::Refused(Refused::new(Reason::Stopping, "")) });
                    }
                }
            }
            Phase::Rolling(r) => {
                for by in r.requesters {
                    if let Requester::Control { client, wait: true } = by {
                        out.push(Action::Reply { client, answer: RestartAnswer::Refused(Refused::new(Reason::Stopping, "")) });
                    }
                }
            }
            _ => {}
        }
        self.pending.clear();
        let timeout = self.config.shutdown_timeout;
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.stop_worker(id, timeout, now, out);
        }
        if self.workers.is_empty() {
            log::info!(event = "master.stop"; "no workers; master exiting");
            out.push(Action::Exit(0));
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        // SIGKILL for workers past their kill deadline.
        let mut to_kill = Vec::new();
        let mut not_ready = Vec::new();
        for w in self.workers.values_mut() {
            if let Some(d) = w.kill_deadline {
                if d <= now && !w.killed {
                    w.killed = true;
                    w.kill_deadline = None;
                    if let Some(pid) = w.pid {
                        to_kill.push((w.id, pid, w.generation));
                    }
                }
            }
            if let Some(d) = w.ready_deadline {
                if d <= now {
                    w.ready_deadline = None;
                    not_ready.push(w.id);
                }
            }
        }
        for (id, pid, generation) in to_kill {
            log::warn!(event = "worker.kill", worker_pid = pid, generation = generation;
                "worker {} did not exit within shutdownTimeout; sending SIGKILL", pid);
            out.push(Action::Signal { id, pid, signal: libc::SIGKILL });
        }
        for id in not_ready {
            let Some(w) = self.workers.get(&id) else { continue };
            let pid = w.pid.unwrap_or(0);
            if self.is_new_in_rollout(id) {
                let t = match &self.phase {
                    Phase::Rolling(r) => r.config.ready_timeout,
                    _ => self.config.ready_timeout,
                };
                let detail = format!("worker {} did not report READY=1 within readyTimeout ({:?})", pid, t);
                let w = w.clone();
                self.abort(&w, true, AbortCause::NotReady, detail, now, out);
            } else {
                log::error!(worker_pid = pid; "worker {} not ready within readyTimeout; stopping it", pid);
                let t = self.config.shutdown_timeout;
                self.stop_worker(id, t, now, out);
            }
        }
        // Respawns whose backoff is over.
        let (due, later): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending).into_iter().partition(|p| p.due <= now);
        self.pending = later;
        for p in due {
            if matches!(self.phase, Phase::Running | Phase::Probing { .. }) && p.generation == self.generation {
                let cfg = self.config.clone();
                self.spawn(p.generation, p.index, cfg, now, out);
            }
        }
    }

    fn check_complete(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Phase::Rolling(r) = &self.phase else { return };
        let new: Vec<&Worker> = self.workers.values().filter(|w| w.generation == r.generation).collect();
        let done = new.len() as u32 == r.config.workers
            && r.spawned == r.config.workers
            && new.iter().all(|w| w.state == WorkerState::Ready)
            && self.workers.values().all(|w| w.generation == r.generation);
        if !done {
            return;
        }
        let Phase::Rolling(r) = std::mem::replace(&mut self.phase, Phase::Running) else { unreachable!() };
        let ms = now.duration_since(r.started).as_millis() as u64;
        log::info!(event = "restart.complete", generation = r.generation, duration_ms = ms, workers = r.config.workers;
            "Zero-downtime restart complete");
        self.config = r.config;
        self.version = r.version;
        self.streak.clear();
        let text = self.notify_status("zero-downtime restart complete");
        out.push(Action::Notify(Notify::Ready(text)));
        if let Some(l) = &mut self.last_restart {
            l.outcome = Outcome::Complete;
            l.duration_ms = Some(ms);
        }
        for by in r.requesters {
            if let Requester::Control { client, wait: true } = by {
                out.push(Action::Reply { client, answer: RestartAnswer::Complete });
            }
        }
    }

    /// The state machine's part of the hand-over state of an upgrade
    /// (`master::handover`); `fds(pid)` gives the loop's fds of a worker.
    /// Only in Running or Lockout (the loop checks): a restart in flight
    /// cannot be handed over.
    pub fn snapshot(&self, now: Instant, fds: impl Fn(u32) -> Option<WorkerFds>) -> Result<MasterSnapshot, String> {
        let ms = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let left = |d: Option<Instant>| d.map(|d| d.saturating_duration_since(now).as_millis() as u64);
        let mut workers = Vec::new();
        for w in self.workers.values() {
            let pid = w.pid.ok_or_else(|| format!("worker {} (generation {}) has no pid yet", w.index, w.generation))?;
            let fds = fds(pid).ok_or_else(|| format!("worker {} has no open fds in the loop", pid))?;
            workers.push(WorkerSnapshot {
                pid,
                generation: w.generation,
                index: w.index,
                state: w.state,
                started_ms: ms(w.started_wall),
                age_ms: now.saturating_duration_since(w.started).as_millis() as u64,
                ready_left_ms: left(w.ready_deadline),
                kill_left_ms: left(w.kill_deadline),
                asked_to_stop: w.asked_to_stop,
                killed: w.killed,
                last_lines: w.last_lines.iter().cloned().collect(),
                fds,
            });
        }
        let status = self.status(0, SystemTime::UNIX_EPOCH);
        Ok(MasterSnapshot {
            generation: self.generation,
            magic: self.magic,
            version: self.version.clone(),
            notified_ready: self.notified_ready,
            lockout: matches!(self.phase, Phase::Lockout),
            workers,
            pending: self
                .pending
                .iter()
                .map(|p| PendingSnapshot { due_in_ms: p.due.saturating_duration_since(now).as_millis() as u64, generation: p.generation, index: p.index })
                .collect(),
            last_restart: status.last_restart,
            last_restart_ms: self.last_restart.as_ref().map(|l| ms(l.started_wall)),
        })
    }

    /// The master of a new image after an upgrade: the workers of `snap`
    /// (ids 1.., in its order), in Running whatever the old phase was (a
    /// lockout ends here: a fresh state, zdrestart(8)).
    pub fn resume(config: Arc<Config>, snap: &MasterSnapshot, now: Instant) -> Master {
        let wall = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let mut m = Master::new(config, ProbeInfo { magic: snap.magic, version: snap.version.clone(), shared: None });
        m.generation = snap.generation;
        m.notified_ready = snap.notified_ready;
        for w in &snap.workers {
            let id = m.next_id;
            m.next_id += 1;
            m.workers.insert(
                id,
                Worker {
                    id,
                    pid: Some(w.pid),
                    generation: w.generation,
                    index: w.index,
                    state: w.state,
                    started: now.checked_sub(Duration::from_millis(w.age_ms)).unwrap_or(now),
                    started_wall: wall(w.started_ms),
                    ready_deadline: w.ready_left_ms.map(|l| now + Duration::from_millis(l)),
                    kill_deadline: w.kill_left_ms.map(|l| now + Duration::from_millis(l)),
                    asked_to_stop: w.asked_to_stop,
                    killed: w.killed,
                    last_lines: w.last_lines.iter().cloned().collect(),
                    // sd_notify workers are never handed over (the upgrade
                    // is refused while there are any).
                    main_pid: None,
                    status: None,
                },
            );
        }
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
        m
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
            lockout: self.state() == MasterState::Lockout,
            magic: self.magic,
            version: self.version.clone(),
            pid: master_pid,
            started: iso(started),
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
            workers: self
                .workers
                .values()
                .map(|w| WorkerStatus {
                    pid: w.pid,
                    generation: w.generation.into(),
                    index: w.index,
                    state: w.state,
                    started: iso(w.started_wall),
                    status: w.status.clone(),
                    main_pid: w.main_pid,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(json: &str) -> Config {
        Config::parse(Path::new("/t/c.json"), json).unwrap()
    }

    fn mongo(workers: u32) -> Config {
        cfg(&format!(r#"{{"driver":"mongodb","workers":{},"readyTimeout":5,"shutdownTimeout":3}}"#, workers))
    }

    struct H {
        m: Master,
        now: Instant,
        t0: Instant,
        next_pid: u32,
    }

    impl H {
        fn new(c: Config) -> H {
            let m = Master::new(Arc::new(c), ProbeInfo { magic: 7, version: "v".into(), shared: Some(true) });
            let now = Instant::now();
            H { m, now, t0: now, next_pid: 100 }
        }
        /// Feed an event; Spawn actions get pids at once (like the loop).
        fn ev(&mut self, e: Event) -> Vec<Action> {
            let mut acts = self.m.handle(e, self.now, self.wall());
            let mut i = 0;
            while i < acts.len() {
                if let Action::Spawn { id, .. } = acts[i] {
                    self.next_pid += 1;
                    let more = self.m.handle(Event::Spawned { id, pid: self.next_pid }, self.now, self.wall());
                    acts.extend(more);
                }
                i += 1;
            }
            acts
        }
        /// Wall time moves with `now` from a fixed origin.
        fn wall(&self) -> SystemTime {
            std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + self.now.duration_since(self.t0)
        }
        fn advance(&mut self, d: Duration) -> Vec<Action> {
            self.now += d;
            self.ev(Event::Tick)
        }
        fn id_of(&self, pid: u32) -> WorkerId {
            self.m.workers().find(|w| w.pid == Some(pid)).unwrap().id
        }
        fn ready_all(&mut self) -> Vec<Action> {
            let ids: Vec<_> = self.m.workers().filter(|w| w.state == WorkerState::Starting).map(|w| w.id).collect();
            ids.into_iter().flat_map(|id| self.ev(Event::Ready { id })).collect()
        }
        fn restart(&mut self, c: Config, wait: bool) -> Vec<Action> {
            self.ev(Event::Restart { config: Ok(c), by: Requester::Control { client: 1, wait } })
        }
        fn probe_ok(&mut self) -> Vec<Action> {
            self.ev(Event::ProbeDone(Ok(ProbeInfo { magic: 7, version: "v2".into(), shared: Some(true) })))
        }
    }

    fn spawns(a: &[Action]) -> usize {
        a.iter().filter(|a| matches!(a, Action::Spawn { .. })).count()
    }
    /// Pids sent `sig` by these actions.
    fn signaled(a: &[Action], sig: i32) -> Vec<u32> {
        a.iter()
            .filter_map(|a| match a {
                Action::Signal { pid, signal, .. } if *signal == sig => Some(*pid),
                _ => None,
            })
            .collect()
    }
    fn terms(a: &[Action]) -> Vec<u32> {
        signaled(a, libc::SIGTERM)
    }
    fn kills(a: &[Action]) -> Vec<u32> {
        signaled(a, libc::SIGKILL)
    }
    /// The answers as the control socket renders them.
    fn replies(a: &[Action]) -> Vec<String> {
        a.iter()
            .filter_map(|a| match a {
                Action::Reply { answer, .. } => Some(crate::control::render(answer)),
                _ => None,
            })
            .collect()
    }
    fn exit_code(a: &[Action]) -> Option<i32> {
        a.iter().find_map(|a| match a {
            Action::Exit(c) => Some(*c),
            _ => None,
        })
    }

    fn running(c: Config) -> H {
        let mut h = H::new(c);
        let a = h.ev(Event::Start);
        assert_eq!(spawns(&a), h.m.config().workers as usize);
        h.ready_all();
        h
    }

    #[test]
    fn start_spawns_and_respawns_with_backoff() {
        let mut h = running(mongo(2));
        assert_eq!(h.m.generation(), 1);
        // Lived more than a second: immediate respawn.
        h.now += Duration::from_secs(5);
        let id = h.id_of(101);
        let a = h.ev(Event::Exited { id, status: ExitStatus::Signal(9) });
        assert_eq!(spawns(&a), 1);
        // Dies at once: backoff, no immediate spawn.
        let id = h.id_of(103);
        let a = h.ev(Event::Exited { id, status: ExitStatus::Code(1) });
        assert_eq!(spawns(&a), 0);
        assert!(h.m.next_deadline().unwrap() > h.now);
        let a = h.advance(Duration::from_millis(600));
        assert_eq!(spawns(&a), 1);
    }

    #[test]
    fn refusals_in_order() {
        let mut h = running(cfg(r#"{"workers":1}"#));
        // bad config comes before everything that needs the new config.
        let a = h.ev(Event::Restart { config: Err("x: bad".into()), by: Requester::Control { client: 1, wait: false } });
        assert_eq!(replies(&a), vec!["NACK bad config: x: bad"]);
        let a = h.restart(cfg(r#"{"port":9,"workers":1}"#), false);
        assert!(replies(&a)[0].starts_with("NACK listen address changed"));
        let a = h.restart(cfg(r#"{"workers":1,"driver":"mongodb"}"#), false);
        assert!(replies(&a)[0].starts_with("NACK no workers"));
        // Checks pass: the probe runs, and a second request is in flight.
        let a = h.restart(mongo(2), false);
        assert!(a.iter().any(|a| matches!(a, Action::Probe { .. })));
        let a = h.restart(mongo(2), false);
        assert_eq!(replies(&a), vec!["NACK restart in flight"]);
        let a = h.ev(Event::ProbeDone(Ok(ProbeInfo { magic: 8, version: "v".into(), shared: Some(true) })));
        assert!(replies(&a)[0].starts_with("NACK incompatibility"));
        h.restart(mongo(2), false);
        let a = h.ev(Event::ProbeDone(Err(ProbeFailure { magic: Some(7), error: "ERROR=database unreachable".into() })));
        assert!(replies(&a)[0].starts_with("NACK probe failed"));
        // Another magic number is an incompatibility even when the probe also failed.
        h.restart(mongo(2), false);
        let a = h.ev(Event::ProbeDone(Err(ProbeFailure { magic: Some(9), error: "ERROR=x".into() })));
        assert!(replies(&a)[0].starts_with("NACK incompatibility"));
        // Last: the probe says the workers' state is not shared (memory driver).
        h.restart(cfg(r#"{"workers":2}"#), false);
        let a = h.ev(Event::ProbeDone(Ok(ProbeInfo { magic: 7, version: "v".into(), shared: Some(false) })));
        assert!(replies(&a)[0].starts_with("NACK bad driver"));
        // Nothing was touched by any refusal.
        assert_eq!(h.m.generation(), 1);
        assert_eq!(h.m.workers().count(), 1);
        assert!(!(h.m.state() == MasterState::Restarting));
    }

    /// The refusal the state machine answered to a control client.
    fn refusal(a: &[Action]) -> Refused {
        a.iter()
            .find_map(|a| match a {
                Action::Reply { answer: RestartAnswer::Refused(r), .. } => Some(r.clone()),
                _ => None,
            })
            .expect("a refusal")
    }

    /// Every refusal reason, through the state machine and through the path
    /// of `zdrestart --check` (`admission::admit` against the master's STATUS):
    /// the same reason with the same detail.
    #[test]
    fn every_refusal_is_the_same_through_both_paths() {
        let probe_ok = || Ok(ProbeInfo { magic: 7, version: "v2".into(), shared: Some(true) });
        let mut seen = Vec::new();
        let mut case = |h: &mut H, new: Result<Config, String>, probe: Result<ProbeInfo, ProbeFailure>| {
            // The --check path first: it must not change the master.
            let running = Running { state: h.m.state(), listen: h.m.config().listen_display(), magic: 7 };
            let checked = admission::admit(&running, new.as_ref().map_err(String::clone), probe.clone()).unwrap_err();
            // RESTART WAIT: its answer carries the detail (RESTART's is
            // pump.socket(7)'s bare text for pump.io's reasons).
            let mut a = h.ev(Event::Restart { config: new, by: Requester::Control { client: 1, wait: true } });
            if a.iter().any(|a| matches!(a, Action::Probe { .. })) {
                a = h.ev(Event::ProbeDone(probe));
            }
            assert_eq!(refusal(&a), checked);
            seen.push(checked.reason);
        };
        // In flight: a restart is being probed.
        let mut h = running(mongo(2));
        h.restart(mongo(2), false);
        case(&mut h, Ok(mongo(2)), probe_ok());
        // Aborted restart: lockout after a new worker exited.
        let mut h = running(mongo(2));
        h.restart(mongo(2), false);
        h.probe_ok();
        let new = h.m.workers().find(|w| w.generation == 2).unwrap().id;
        h.ev(Event::Exited { id: new, status: ExitStatus::Code(1) });
        case(&mut h, Ok(mongo(2)), probe_ok());
        // The checks on the new config and on the probe.
        let mut h = running(mongo(2));
        case(&mut h, Err("key \"workers\": bad".into()), probe_ok());
        case(&mut h, Ok(cfg(r#"{"driver":"mongodb","workers":2,"port":9}"#)), probe_ok());
        case(&mut h, Ok(mongo(1)), probe_ok());
        case(&mut h, Ok(cfg(r#"{"workers":2}"#)), Ok(ProbeInfo { magic: 7, version: "v2".into(), shared: Some(false) }));
        case(&mut h, Ok(mongo(2)), Ok(ProbeInfo { magic: 8, version: "v9".into(), shared: Some(true) }));
        case(&mut h, Ok(mongo(2)), Err(ProbeFailure { magic: Some(9), error: "ERROR=x".into() }));
        case(&mut h, Ok(mongo(2)), Err(ProbeFailure { magic: Some(7), error: "ERROR=database unreachable".into() }));
        // Stopping.
        let mut h = running(mongo(2));
        h.ev(Event::Stop { signal: "SIGTERM" });
        case(&mut h, Ok(mongo(2)), probe_ok());
        for &r in Reason::REFUSALS.iter().chain(&[Reason::Stopping]) {
            assert!(seen.contains(&r), "{:?} not walked", r);
        }
    }

    #[test]
    fn surge_rollout_one_at_a_time() {
        let mut h = running(mongo(2));
        h.restart(mongo(2), true);
        let a = h.probe_ok();
        assert_eq!(spawns(&a), 1, "one new worker first");
        assert!(terms(&a).is_empty(), "no old worker touched before a new one is ready");
        assert_eq!(h.m.generation(), 2);
        let a = h.ready_all();
        assert_eq!(terms(&a), vec![101], "one old worker goes per ready new worker");
        assert_eq!(spawns(&a), 1);
        let a = h.ready_all();
        assert_eq!(terms(&a), vec![102]);
        assert_eq!(spawns(&a), 0);
        let a = h.ev(Event::Exited { id: h.id_of(101), status: ExitStatus::Code(0) });
        assert!(replies(&a).is_empty());
        let a = h.ev(Event::Exited { id: h.id_of(102), status: ExitStatus::Code(0) });
        assert_eq!(replies(&a), vec!["ACK complete"]);
        assert!(!(h.m.state() == MasterState::Restarting));
        assert!(h.m.workers().all(|w| w.generation == 2));
    }

    /// `"probe": false`: no probe runs; the declared magic number is
    /// compared as a probe's answer would be, on both paths.
    #[test]
    fn declared_magic_stands_for_the_probe() {
        let declared = |magic: u64| {
            cfg(&format!(r#"{{"driver":"mongodb","workers":2,"probe":false,"magic":{},"version":"d{}","sharedState":true}}"#, magic, magic))
        };
        let mut h = running(mongo(2));
        // RESTART WAIT: its refusal carries the detail.
        let a = h.restart(declared(8), true);
        assert!(!a.iter().any(|a| matches!(a, Action::Probe { .. })), "no probe runs");
        let r = refusal(&a);
        assert_eq!(r.reason, Reason::Incompatibility);
        assert!(r.detail.contains("magic number 8 (version d8)"), "{}", r.detail);
        let running = Running { state: h.m.state(), listen: h.m.config().listen_display(), magic: 7 };
        let new = declared(8);
        let info = admission::declared(&new).unwrap();
        assert_eq!(admission::admit(&running, Ok::<_, String>(&new), Ok(info)).unwrap_err(), r);
        let a = h.restart(declared(7), false);
        assert!(!a.iter().any(|a| matches!(a, Action::Probe { .. })));
        assert_eq!(replies(&a), vec!["ACK"]);
        assert_eq!(spawns(&a), 1, "the rollout starts at once");
        assert_eq!(h.m.generation(), 2);
    }

    /// sd_notify `ERRNO=`/`STOPPING=1`: a failure before `READY=1` (abort
    /// in a rollout), only logged after it; `MAINPID=` and the main process are shown in STATUS.
    #[test]
    fn notify_failure_main_pid_and_status() {
        let mut h = running(mongo(2));
        let id = h.id_of(101);
        let a = h.ev(Event::NotifyFailure { id, text: "STOPPING=1".into() });
        assert!(a.is_empty(), "a ready worker that says STOPPING=1 is left alone: {:?}", a);
        h.ev(Event::MainPid { id, pid: 500 });
        h.ev(Event::Status { id, text: "serving".into() });
        let st = h.m.status(1, SystemTime::now());
        let w = st.workers.iter().find(|w| w.pid == Some(101)).unwrap();
        assert_eq!((w.status.as_deref(), w.main_pid), (Some("serving"), Some(500)));
        h.restart(mongo(2), false);
        h.probe_ok();
        let new = h.m.workers().find(|w| w.generation == 2).unwrap().id;
        let a = h.ev(Event::NotifyFailure { id: new, text: "ERRNO=98 (Address in use)".into() });
        assert_eq!(h.m.state(), MasterState::Lockout);
        assert_eq!(terms(&a).len(), 1, "the failed new worker is stopped");
        // Stopping now: SIGTERM goes to the worker (its process group, where
        // its main process is), not to a pid of its choosing.
        let a = h.ev(Event::Stop { signal: "SIGTERM" });
        assert!(terms(&a).contains(&101) && !terms(&a).contains(&500), "{:?}", a);
    }

    #[test]
    fn ack_without_wait_comes_after_probe() {
        let mut h = running(mongo(2));
        let a = h.restart(mongo(2), false);
        assert!(replies(&a).is_empty());
        let a = h.probe_ok();
        assert_eq!(replies(&a), vec!["ACK"]);
    }

    #[test]
    fn worker_count_change_and_old_killed_after_timeout() {
        let mut h = running(mongo(2));
        h.restart(mongo(3), false);
        h.probe_ok();
        let mut total_new = 1;
        for _ in 0..3 {
            let a = h.ready_all();
            total_new += spawns(&a);
        }
        assert_eq!(total_new, 3);
        assert_eq!(h.m.workers().filter(|w| w.generation == 2).count(), 3);
        // Old workers ignore SIGTERM: SIGKILL after shutdownTimeout (3 s).
        let a = h.advance(Duration::from_millis(3100));
        assert_eq!(kills(&a).len(), 2);
        for pid in [101, 102] {
            h.ev(Event::Exited { id: h.id_of(pid), status: ExitStatus::Signal(9) });
        }
        assert!(!(h.m.state() == MasterState::Restarting));
        assert_eq!(h.m.config().workers, 3);
    }

    #[test]
    fn abort_on_exit_locks_out_and_exits_when_last_worker_goes() {
        let mut h = running(mongo(2));
        h.restart(mongo(2), true);
        h.probe_ok();
        let new = h.m.workers().find(|w| w.generation == 2).unwrap().id;
        h.ev(Event::Output { id: new, line: "invalid JSON in config".into() });
        let a = h.ev(Event::Exited { id: new, status: ExitStatus::Code(1) });
        assert!(replies(&a)[0].starts_with("NACK aborted: new worker exited"));
        assert!((h.m.state() == MasterState::Lockout));
        assert!(terms(&a).is_empty(), "serving workers are left alone");
        let a = h.restart(mongo(2), false);
        assert!(replies(&a)[0].starts_with("NACK aborted restart"));
        h.now += Duration::from_secs(10);
        let a = h.ev(Event::Exited { id: h.id_of(101), status: ExitStatus::Signal(9) });
        assert_eq!(spawns(&a), 0, "no respawn in lockout");
        assert_eq!(exit_code(&a), None);
        let a = h.ev(Event::Exited { id: h.id_of(102), status: ExitStatus::Signal(9) });
        assert_eq!(exit_code(&a), Some(1));
    }

    #[test]
    fn abort_on_error_report_and_on_ready_timeout() {
        let mut h = running(mongo(2));
        h.restart(mongo(2), false);
        h.probe_ok();
        let new = h.m.workers().find(|w| w.generation == 2).unwrap();
        let (id, pid) = (new.id, new.pid.unwrap());
        let a = h.ev(Event::ReportedError { id, text: "bind: in use".into() });
        assert!((h.m.state() == MasterState::Lockout));
        assert_eq!(terms(&a), vec![pid], "the failed new worker is stopped");

        let mut h = running(mongo(2));
        h.restart(mongo(2), false);
        h.probe_ok();
        let a = h.advance(Duration::from_secs(6));
        assert!((h.m.state() == MasterState::Lockout));
        assert_eq!(terms(&a).len(), 1);
        assert_eq!(h.m.workers().filter(|w| w.generation == 1 && w.state == WorkerState::Ready).count(), 2);
    }

    #[test]
    fn old_worker_dying_mid_rollout_is_not_respawned() {
        let mut h = running(mongo(2));
        h.restart(mongo(2), false);
        h.probe_ok();
        h.now += Duration::from_secs(2);
        let a = h.ev(Event::Exited { id: h.id_of(102), status: ExitStatus::Signal(9) });
        assert_eq!(spawns(&a), 0);
        h.ready_all(); // new0 ready: old 101 asked to stop, new1 spawned
        h.ready_all();
        h.ev(Event::Exited { id: h.id_of(101), status: ExitStatus::Code(0) });
        assert!(!(h.m.state() == MasterState::Restarting));
        assert_eq!(h.m.workers().count(), 2);
    }

    #[test]
    fn stop_terms_then_kills_then_exits_zero() {
        let mut h = running(mongo(2));
        let a = h.ev(Event::Stop { signal: "SIGTERM" });
        assert_eq!(terms(&a).len(), 2);
        let a = h.advance(Duration::from_secs(4));
        assert_eq!(kills(&a).len(), 2);
        h.ev(Event::Exited { id: h.id_of(101), status: ExitStatus::Signal(9) });
        let a = h.ev(Event::Exited { id: h.id_of(102), status: ExitStatus::Signal(9) });
        assert_eq!(exit_code(&a), Some(0));
    }

    #[test]
    fn stop_during_probe_cancels_it() {
        let mut h = running(mongo(2));
        h.restart(mongo(2), true);
        let a = h.ev(Event::Stop { signal: "SIGINT" });
        assert!(a.contains(&Action::CancelProbe));
        assert_eq!(replies(&a), vec!["NACK stopping"]);
    }

    /// The sd_notify(3) notifications of these actions, as (kind, STATUS text).
    fn notified(a: &[Action]) -> Vec<(&'static str, String)> {
        a.iter()
            .filter_map(|a| match a {
                Action::Notify(Notify::Ready(s)) => Some(("READY", s.clone())),
                Action::Notify(Notify::Reloading(s)) => Some(("RELOADING", s.clone())),
                Action::Notify(Notify::Stopping(s)) => Some(("STOPPING", s.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn service_manager_hears_ready_reloading_and_stopping() {
        let mut h = H::new(mongo(2));
        let a = h.ev(Event::Start);
        assert!(notified(&a).is_empty(), "not ready before the workers");
        let ids: Vec<_> = h.m.workers().map(|w| w.id).collect();
        assert!(notified(&h.ev(Event::Ready { id: ids[0] })).is_empty());
        let a = h.ev(Event::Ready { id: ids[1] });
        assert_eq!(notified(&a), vec![("READY", "running: generation 1, 2 of 2 workers ready".to_string())]);
        // Refused after being taken up: RELOADING then READY.
        let a = h.restart(mongo(1), false);
        let n = notified(&a);
        assert_eq!(n.iter().map(|x| x.0).collect::<Vec<_>>(), vec!["RELOADING", "READY"]);
        assert!(n[1].1.ends_with("zero-downtime restart refused: no workers"), "{:?}", n);
        // Taken up, then in flight: the second request sends nothing.
        assert_eq!(notified(&h.restart(mongo(2), false)).len(), 1);
        assert!(notified(&h.restart(mongo(2), false)).is_empty());
        h.probe_ok();
        let mut done = Vec::new();
        for _ in 0..2 {
            let a = h.ready_all();
            done.extend(notified(&a));
            let old: Vec<u32> = h.m.workers().filter(|w| w.asked_to_stop).filter_map(|w| w.pid).collect();
            for pid in old {
                let id = h.id_of(pid);
                done.extend(notified(&h.ev(Event::Exited { id, status: ExitStatus::Code(0) })));
            }
        }
        assert_eq!(done, vec![("READY", "running: generation 2, 2 of 2 workers ready; zero-downtime restart complete".to_string())]);
        let a = h.ev(Event::Stop { signal: "SIGTERM" });
        assert_eq!(notified(&a), vec![("STOPPING", "stopping (SIGTERM): 2 workers".to_string())]);
    }

    #[test]
    fn idle_master_has_no_deadline() {
        let h = running(mongo(2));
        assert_eq!(h.m.next_deadline(), None);
    }

    #[test]
    fn upgrade_is_let_through_in_running_and_lockout_only() {
        let up = |h: &mut H| h.ev(Event::Upgrade { client: 9, wait: false, restart: true });
        let mut h = H::new(mongo(2));
        h.ev(Event::Start);
        h.ready_all();
        assert_eq!(up(&mut h), vec![Action::Upgrade { client: 9, wait: false, restart: true }]);
        // Probing, then rolling: refused, the restart goes on.
        h.restart(mongo(2), false);
        let nack = vec![Action::ReplyLine { client: 9, line: "NACK restart in flight".into() }];
        assert_eq!(up(&mut h), nack);
        h.probe_ok();
        assert_eq!(up(&mut h), nack);
        // Lockout (a new worker dies): let through, the one way out without downtime.
        let new = h.m.workers().find(|w| w.generation == 2).unwrap().id;
        h.ev(Event::Exited { id: new, status: ExitStatus::Code(1) });
        assert_eq!(h.m.state(), MasterState::Lockout);
        assert_eq!(up(&mut h), vec![Action::Upgrade { client: 9, wait: false, restart: true }]);
        h.ev(Event::Stop { signal: "SIGTERM" });
        assert_eq!(up(&mut h), vec![Action::ReplyLine { client: 9, line: "NACK stopping".into() }]);
    }

    #[test]
    fn snapshot_and_resume_keep_the_workers_and_clear_the_lockout() {
        let mut h = H::new(mongo(2));
        h.ev(Event::Start);
        h.ready_all();
        h.restart(mongo(2), false);
        h.probe_ok();
        let new = h.m.workers().find(|w| w.generation == 2).unwrap().id;
        h.ev(Event::Exited { id: new, status: ExitStatus::Code(1) });
        assert_eq!(h.m.state(), MasterState::Lockout);
        let fds = |pid: u32| Some(WorkerFds { pidfd: None, notify: Some(pid as i32), output: None, control: pid as i32 + 1000 });
        let snap = h.m.snapshot(h.now, fds).unwrap();
        assert!(snap.lockout);
        let r = Master::resume(h.m.config.clone(), &snap, h.now);
        assert_eq!(r.state(), MasterState::Running);
        assert_eq!(r.generation(), 2);
        let pids = |m: &Master| m.workers().map(|w| (w.pid, w.generation, w.index, w.state)).collect::<Vec<_>>();
        assert_eq!(pids(&r), pids(&h.m));
        let st = r.status(1, SystemTime::UNIX_EPOCH);
        assert_eq!(st.last_restart.unwrap().outcome, Outcome::Aborted);
        // A worker without a pid yet cannot be handed over.
        let mut h2 = H::new(mongo(2));
        h2.m.handle(Event::Start, h2.now, h2.wall());
        assert!(h2.m.snapshot(h2.now, fds).is_err());
    }
}

//! One zero-downtime restart: a [`Rollout`] owns everything it needs from
//! the moment the request is taken up to its end: who asked (and who is
//! owed the answer), the new config and generation, the spawn cursor, the
//! new workers started, the old ones still serving and those draining, and
//! whether it is a canary that holds after its first new worker.
//!
//! Its steps ([`Rollout::begin`], [`Rollout::advance`], [`Rollout::promote`],
//! [`Rollout::gone`], [`Rollout::error`], [`Rollout::tick`],
//! [`Rollout::hung`], [`Rollout::complete`]) decide what happens next and
//! say it as typed [`Step`]s, which the master carries out
//! (`super::Master::apply`); each step is also a fact of the restart's
//! progress (a new worker started, an old one drained, the abort). The
//! rollout never touches the worker table: it reads it. How many new
//! workers start at once, and when an old one goes, is decided here only:
//!
//! - a new worker *passes* once it has been ready for `minReady` (its soak;
//!   the master keeps it `Soaking` until then), and only then does an old
//!   worker go: one per new worker passed, the oldest first; once every new
//!   worker has passed, the old ones left go;
//! - `maxSurge` bounds the new workers *starting* (spawned, no `READY=1`
//!   yet): one that says `READY=1` makes room for the next while it soaks,
//!   so soaks overlap and N workers take about N / maxSurge x (start to
//!   ready) + minReady. Capacity never drops below N; at most N + maxSurge
//!   + the soaking ones are alive;
//! - a canary rollout starts its first new worker only and holds there
//!   until [`Rollout::promote`].

use super::event::Requester;
use super::workers::{Life, Worker, WorkerId, Workers};
use crate::config::Config;
use crate::control::ClientId;
use crate::restart::AbortCause;
use crate::sys::ExitStatus;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the master does for the rollout, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// Start the new generation's worker `index` (with the rollout's
    /// config); the master tells the rollout its id ([`Rollout::started`]).
    Spawn { index: u32 },
    /// Ask an old worker to exit (SIGTERM, SIGKILL after its own
    /// `shutdownTimeout`): it drains.
    Drain(WorkerId),
    /// A new worker failed, or a worker hung: abort the rollout and lock
    /// out. `failed` is that worker, as it was when it failed.
    Abort { failed: Box<Worker>, cause: AbortCause, detail: String },
}

#[derive(Debug)]
pub struct Rollout {
    /// Who asked: answered when the probe passed (`RESTART`).
    pub by: Requester,
    /// Who is owed the answer when the rollout ends (`RESTART WAIT`,
    /// `PROMOTE WAIT`), or, for `RESTART CANARY WAIT`, once the canary
    /// stands.
    pub waiter: Option<ClientId>,
    /// The config as re-read for this restart: the new generation's.
    pub config: Arc<Config>,
    /// The generation it rolls to (once its probe passed).
    pub generation: u32,
    /// The new code's version, as its probe reported it.
    pub version: String,
    /// When it was taken up, then when its probe passed (its duration
    /// counts from there).
    pub started: Instant,
    /// A canary restart not promoted yet: it holds after its first new
    /// worker (the canary).
    pub canary: bool,
    /// The canary stood (passed its soak) and was announced.
    pub stood: bool,
    /// When a standing canary is moved on by itself (`canaryTimeout`).
    pub canary_due: Option<Instant>,
    /// Spawn cursor: the index of the next new worker.
    next: u32,
    /// The new workers started, in order.
    new: Vec<WorkerId>,
    /// Old workers still serving, oldest first: one drains per new worker passed.
    serving: VecDeque<WorkerId>,
    /// Old workers asked to exit and not gone yet.
    draining: BTreeSet<WorkerId>,
    /// Old workers drained for new workers that passed.
    drained: u32,
}

/// Has new worker `id` passed (ready, its soak over)?
fn passed(workers: &Workers, id: WorkerId) -> bool {
    workers.get(id).is_some_and(|w| w.life == Life::Ready)
}

impl Rollout {
    /// A restart request taken up: its probe runs.
    pub fn new(by: Requester, config: Arc<Config>, canary: bool, now: Instant) -> Rollout {
        let waiter = match by {
            Requester::Control { client, wait: true } => Some(client),
            _ => None,
        };
        Rollout {
            by,
            waiter,
            config,
            generation: 0,
            version: String::new(),
            started: now,
            canary,
            stood: false,
            canary_due: None,
            next: 0,
            new: Vec::new(),
            serving: VecDeque::new(),
            draining: BTreeSet::new(),
            drained: 0,
        }
    }

    /// The probe passed: roll to `generation`. A canary starts its one new
    /// worker; else every worker now is old (serving, or draining if it was
    /// asked to exit before) and the first new ones start.
    pub fn begin(&mut self, generation: u32, version: String, now: Instant, workers: &Workers) -> Vec<Step> {
        self.generation = generation;
        self.version = version;
        self.started = now;
        if self.canary {
            return vec![self.spawn_next()];
        }
        self.take_old(workers);
        self.advance(workers)
    }

    /// Every worker that is not new is old: serving, or draining.
    fn take_old(&mut self, workers: &Workers) {
        let new = &self.new;
        for w in workers.iter().filter(|w| !new.contains(&w.id)) {
            if w.asked_to_stop() {
                self.draining.insert(w.id);
            } else {
                self.serving.push_back(w.id);
            }
        }
    }

    fn spawn_next(&mut self) -> Step {
        self.next += 1;
        Step::Spawn { index: self.next - 1 }
    }

    /// The master started new worker `id` for a [`Step::Spawn`].
    pub fn started(&mut self, id: WorkerId) {
        self.new.push(id);
    }

    /// Is `id` one of the new workers?
    pub fn owns(&self, id: WorkerId) -> bool {
        self.new.contains(&id)
    }

    /// The new workers started, in order (the canary first).
    pub fn new_workers(&self) -> &[WorkerId] {
        &self.new
    }

    /// Is an old worker other than `failed` still serving, one an abort
    /// can fall back on? None once every old one was replaced or told to
    /// exit (or died, or is the one that failed): then the new generation
    /// is the one serving.
    pub fn old_serving_besides(&self, failed: WorkerId) -> bool {
        self.serving.iter().any(|&o| o != failed)
    }

    /// How long a new worker soaks after `READY=1` (`minReady`; zero: it
    /// passes at once).
    pub fn soak(&self) -> Duration {
        self.config.min_ready
    }

    /// A canary rollout whose canary has passed its soak.
    pub fn stands(&self, workers: &Workers) -> bool {
        self.canary && self.new.first().is_some_and(|&c| passed(workers, c))
    }

    fn drain(&mut self, id: WorkerId) -> Step {
        self.draining.insert(id);
        Step::Drain(id)
    }

    /// What the state of the new workers allows now: an old worker drains
    /// for each new one that passed; once all passed, the old ones left
    /// drain; new workers start while fewer than `maxSurge` are starting.
    /// Nothing while a canary holds.
    pub fn advance(&mut self, workers: &Workers) -> Vec<Step> {
        let mut steps = Vec::new();
        if self.canary {
            return steps;
        }
        let total = self.config.workers;
        let passed_now = self.new.iter().filter(|&&n| passed(workers, n)).count() as u32;
        while self.drained < passed_now {
            let Some(old) = self.serving.pop_front() else { break };
            self.drained += 1;
            steps.push(self.drain(old));
        }
        if passed_now == total {
            while let Some(old) = self.serving.pop_front() {
                steps.push(self.drain(old));
            }
        }
        let starting = |id: &&WorkerId| workers.get(**id).is_some_and(|w| matches!(w.life, Life::Starting { .. }));
        let mut starting_now = self.new.iter().filter(starting).count() as u32;
        while self.next < total && starting_now < self.config.max_surge {
            steps.push(self.spawn_next());
            starting_now += 1;
        }
        steps
    }

    /// The canary is promoted: the rollout carries on as any other, the
    /// workers other than the new ones being its old ones.
    pub fn promote(&mut self, workers: &Workers) -> Vec<Step> {
        self.canary = false;
        self.canary_due = None;
        self.take_old(workers);
        self.advance(workers)
    }

    /// Worker `w` is gone: it exited (`status`) or could not be started
    /// (None). A new one aborts the rollout; an old one is not replaced
    /// (the new generation replaces it).
    pub fn gone(&mut self, w: &Worker, status: Option<ExitStatus>) -> Vec<Step> {
        if self.owns(w.id) {
            let detail = match status {
                Some(st) if w.life.serving() => {
                    format!("new worker {} exited ({}) after READY=1, before the restart completed", w.pid_or_0(), st)
                }
                Some(st) => format!("new worker {} exited ({}) before the restart completed", w.pid_or_0(), st),
                None => format!("new worker could not be started: {}", w.last_lines.back().cloned().unwrap_or_default()),
            };
            return vec![Step::Abort { failed: Box::new(w.clone()), cause: AbortCause::Exited, detail }];
        }
        self.serving.retain(|&o| o != w.id);
        self.draining.remove(&w.id);
        if !w.asked_to_stop() {
            log::error!(worker_pid = w.pid_or_0(); "old worker {} died during the restart; the new generation replaces it", w.pid_or_0());
        }
        Vec::new()
    }

    /// Worker `w` reported a failure (`report`: as it said it): a new one
    /// aborts the rollout.
    pub fn error(&self, w: &Worker, report: &str) -> Option<Step> {
        let detail = format!("worker {} reported {}", w.pid_or_0(), report);
        self.owns(w.id).then(|| Step::Abort { failed: Box::new(w.clone()), cause: AbortCause::ReportedError, detail })
    }

    /// Worker `w` is past its ready deadline: a new one aborts the rollout.
    pub fn tick(&self, w: &Worker) -> Option<Step> {
        let detail = format!("worker {} did not report READY=1 within readyTimeout ({:?})", w.pid_or_0(), w.timeouts.ready);
        self.owns(w.id).then(|| Step::Abort { failed: Box::new(w.clone()), cause: AbortCause::NotReady, detail })
    }

    /// Worker `w` (new or old) is hung: a restart does not go on beside a
    /// hung worker, whatever its generation.
    pub fn hung(&self, w: &Worker, silent: Duration) -> Step {
        let which = if self.owns(w.id) { "new" } else { "old" };
        let detail = format!("{} worker {} (generation {}) sent no heartbeat for {:?} (watchdogTimeout {:?})",
            which, w.pid_or_0(), w.generation, silent, w.timeouts.watchdog.unwrap_or_default());
        Step::Abort { failed: Box::new(w.clone()), cause: AbortCause::Hung, detail }
    }

    /// Every new worker started and passed, every old one gone, no canary
    /// holding.
    pub fn complete(&self, workers: &Workers) -> bool {
        !self.canary
            && self.new.len() as u32 == self.config.workers
            && self.next == self.config.workers
            && self.new.iter().all(|&n| passed(workers, n))
            && self.serving.is_empty()
            && self.draining.is_empty()
    }
}

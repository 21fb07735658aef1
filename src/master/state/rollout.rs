//! One zero-downtime restart: a [`Rollout`] owns everything it needs from
//! the moment the request is taken up to its end: who asked, the new config
//! and generation, the spawn cursor, the new workers started, the old ones
//! still serving and those draining.
//!
//! Its steps ([`Rollout::begin`], [`Rollout::ready`], [`Rollout::gone`],
//! [`Rollout::error`], [`Rollout::tick`], [`Rollout::complete`]) decide what
//! happens next and say it as typed [`Step`]s, which the master carries out
//! (`super::Master::apply`); each step is also a fact of the restart's
//! progress (a new worker started, an old one drained, the abort). The
//! rollout never touches the worker table: it reads it. How many new
//! workers start at once, and when an old one goes, is decided here only.

use super::event::Requester;
use super::workers::{Life, Worker, WorkerId, Workers};
use crate::config::Config;
use crate::restart::AbortCause;
use crate::sys::ExitStatus;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// What the master does for the rollout, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// Start the new generation's worker `index` (with the rollout's
    /// config); the master tells the rollout its id ([`Rollout::started`]).
    Spawn { index: u32 },
    /// Ask an old worker to exit (SIGTERM, SIGKILL after its own
    /// `shutdownTimeout`): it drains.
    Drain(WorkerId),
    /// A new worker failed: abort the rollout and lock out. `failed` is
    /// that worker, as it was when it failed.
    Abort { failed: Box<Worker>, cause: AbortCause, detail: String },
}

#[derive(Debug)]
pub struct Rollout {
    /// Who asked: answered when the probe passed (`RESTART`) or when the
    /// rollout ends (`RESTART WAIT`).
    pub by: Requester,
    /// The config as re-read for this restart: the new generation's.
    pub config: Arc<Config>,
    /// The generation it rolls to (once its probe passed).
    pub generation: u32,
    /// The new code's version, as its probe reported it.
    pub version: String,
    /// When it was taken up, then when its probe passed (its duration
    /// counts from there).
    pub started: Instant,
    /// Spawn cursor: the index of the next new worker.
    next: u32,
    /// The new workers started, in order.
    new: Vec<WorkerId>,
    /// Old workers still serving, oldest first: one drains per new worker ready.
    serving: VecDeque<WorkerId>,
    /// Old workers asked to exit and not gone yet.
    draining: BTreeSet<WorkerId>,
}

impl Rollout {
    /// A restart request taken up: its probe runs.
    pub fn new(by: Requester, config: Arc<Config>, now: Instant) -> Rollout {
        Rollout {
            by,
            config,
            generation: 0,
            version: String::new(),
            started: now,
            next: 0,
            new: Vec::new(),
            serving: VecDeque::new(),
            draining: BTreeSet::new(),
        }
    }

    /// The probe passed: roll to `generation`. Every worker now is old:
    /// serving, or draining if it was asked to exit before.
    pub fn begin(&mut self, generation: u32, version: String, now: Instant, workers: &Workers) -> Vec<Step> {
        self.generation = generation;
        self.version = version;
        self.started = now;
        for w in workers.iter() {
            if w.asked_to_stop() {
                self.draining.insert(w.id);
            } else {
                self.serving.push_back(w.id);
            }
        }
        vec![self.spawn_next()]
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

    fn drain(&mut self, id: WorkerId) -> Step {
        self.draining.insert(id);
        Step::Drain(id)
    }

    /// Worker `id` reported ready. A new one: one old worker drains and the
    /// next new one starts; once every new one is started and ready, the old
    /// ones left drain.
    pub fn ready(&mut self, id: WorkerId, workers: &Workers) -> Vec<Step> {
        if !self.owns(id) {
            return Vec::new();
        }
        let mut steps: Vec<Step> = self.serving.pop_front().map(|old| self.drain(old)).into_iter().collect();
        if self.next < self.config.workers {
            steps.push(self.spawn_next());
        } else if self.new.iter().all(|&n| workers.get(n).is_some_and(|w| w.life == Life::Ready)) {
            while let Some(old) = self.serving.pop_front() {
                steps.push(self.drain(old));
            }
        }
        steps
    }

    /// Worker `w` is gone: it exited (`status`) or could not be started
    /// (None). A new one aborts the rollout; an old one is not replaced
    /// (the new generation replaces it).
    pub fn gone(&mut self, w: &Worker, status: Option<ExitStatus>) -> Vec<Step> {
        if self.owns(w.id) {
            let detail = match status {
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

    /// Every new worker started and ready, every old one gone.
    pub fn complete(&self, workers: &Workers) -> bool {
        self.new.len() as u32 == self.config.workers
            && self.next == self.config.workers
            && self.new.iter().all(|&n| workers.get(n).is_some_and(|w| w.life == Life::Ready))
            && self.serving.is_empty()
            && self.draining.is_empty()
    }
}

//! The worker table of the state machine: one entry per worker the master
//! started and has not seen gone, keyed by a [`WorkerId`] the table hands
//! out (never a position, never a pid). The poll loop keys its fds by the
//! same id; after an upgrade the ids come from the hand-over.
//!
//! Each worker carries what it was spawned with and lives by it: its
//! generation and index, the [`Timeouts`] of its config (its watchdog
//! included), where its reports count. Its lifecycle is a [`Life`]. Pure data and bookkeeping: no
//! decisions (those are the table's, `super::table`), no clock.

use crate::config::{Config, Notify};
use crate::status::WorkerState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

/// How many output lines of each worker are kept for abort records.
const KEEP_LINES: usize = 10;

/// Names one worker for the life of the master (the hand-over carries it
/// across an upgrade); never reused. 0 is never an id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub u64);

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The timeouts a worker lives by: those of the config it was spawned
/// with, whatever config is current later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `readyTimeout`: it must report ready within this of its start.
    pub ready: Duration,
    /// `shutdownTimeout`: asked to exit, it is killed after this.
    pub shutdown: Duration,
    /// `watchdogTimeout` (its `WATCHDOG_USEC`): once ready, a heartbeat at
    /// least this often, or it is hung. None: no watchdog.
    pub watchdog: Option<Duration>,
}

impl Timeouts {
    pub fn of(config: &Config) -> Timeouts {
        Timeouts { ready: config.ready_timeout, shutdown: config.shutdown_timeout, watchdog: config.watchdog_timeout }
    }
}

/// Where a worker is in its life; STATUS shows each as one of its words
/// ([`Life::shown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// Spawned, not ready yet; not ready by `ready_by`: it failed.
    Starting { ready_by: Instant },
    /// A new worker of a restart that reported ready and serves, on trial
    /// until `passes_at` (`minReady`): an exit, an error or a hang before
    /// then fails the restart as if it had never been ready.
    Soaking { passes_at: Instant },
    /// Reported ready (and passed its soak, if any): serving.
    Ready,
    /// Missed its watchdog deadline. Not signalled yet: a replacement is
    /// on its way, and once that one is ready this one gets SIGABRT.
    Hung,
    /// Asked to exit (SIGTERM, or SIGABRT when hung); SIGKILL at `kill_at`,
    /// None once sent.
    Stopping { kill_at: Option<Instant> },
}

impl Life {
    /// The word STATUS shows.
    pub fn shown(self) -> WorkerState {
        match self {
            Life::Starting { .. } => WorkerState::Starting,
            Life::Soaking { .. } => WorkerState::Soaking,
            Life::Ready => WorkerState::Ready,
            Life::Hung => WorkerState::Hung,
            Life::Stopping { .. } => WorkerState::Stopping,
        }
    }

    /// The deadline of the life itself (the watchdog's is the worker's:
    /// [`Worker::deadline`]).
    pub fn deadline(self) -> Option<Instant> {
        match self {
            Life::Starting { ready_by } => Some(ready_by),
            Life::Soaking { passes_at } => Some(passes_at),
            Life::Ready | Life::Hung => None,
            Life::Stopping { kill_at } => kill_at,
        }
    }

    /// Said `READY=1` and serves: ready, or soaking.
    pub fn serving(self) -> bool {
        matches!(self, Life::Ready | Life::Soaking { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: WorkerId,
    /// Known once the loop reports it spawned.
    pub pid: Option<u32>,
    pub generation: u32,
    pub index: u32,
    pub life: Life,
    pub timeouts: Timeouts,
    /// Where its reports count (the config's `notify` when it was spawned).
    pub reports: Notify,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub last_lines: VecDeque<String>,
    /// Its last `STATUS=` report.
    pub status: Option<String>,
    /// sd_notify `MAINPID=`: the process that is the worker from then on
    /// (one of its process group, which gets its signals; STATUS shows it).
    pub main_pid: Option<u32>,
    /// Its next heartbeat is due by then (serving workers with a
    /// watchdog only).
    pub watchdog_at: Option<Instant>,
    /// Found hung and replaced: its exit is not answered with a respawn.
    pub replaced: bool,
}

impl Worker {
    /// The earliest deadline of the worker: its life's or its watchdog's.
    pub fn deadline(&self) -> Option<Instant> {
        [self.life.deadline(), self.watchdog_at].into_iter().flatten().min()
    }

    pub fn state(&self) -> WorkerState {
        self.life.shown()
    }

    /// We asked it to exit: its exit is expected.
    pub fn asked_to_stop(&self) -> bool {
        matches!(self.life, Life::Stopping { .. })
    }

    /// Its pid for log records (0 before it is known).
    pub fn pid_or_0(&self) -> u32 {
        self.pid.unwrap_or(0)
    }

    /// Keep one output line (the last 10).
    pub fn keep_line(&mut self, line: String) {
        if self.last_lines.len() == KEEP_LINES {
            self.last_lines.pop_front();
        }
        self.last_lines.push_back(line);
    }

    /// The lines kept, oldest first, one a line.
    pub fn lines(&self) -> String {
        self.last_lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// What a new worker is spawned as.
pub struct Birth<'a> {
    pub generation: u32,
    pub index: u32,
    pub config: &'a Config,
    pub now: Instant,
    pub wall: SystemTime,
}

/// The table: workers by id, and the next id to hand out.
#[derive(Debug)]
pub struct Workers {
    map: BTreeMap<WorkerId, Worker>,
    next: u64,
}

impl Default for Workers {
    fn default() -> Workers {
        Workers { map: BTreeMap::new(), next: 1 }
    }
}

impl Workers {
    /// A new worker, Starting, under a fresh id.
    pub fn add(&mut self, b: Birth) -> WorkerId {
        let id = WorkerId(self.next);
        self.next += 1;
        let timeouts = Timeouts::of(b.config);
        let worker = Worker {
            id,
            pid: None,
            generation: b.generation,
            index: b.index,
            life: Life::Starting { ready_by: b.now + timeouts.ready },
            timeouts,
            reports: b.config.notify,
            started: b.now,
            started_wall: b.wall,
            last_lines: VecDeque::new(),
            status: None,
            main_pid: None,
            watchdog_at: None,
            replaced: false,
        };
        self.map.insert(id, worker);
        id
    }

    /// A worker handed over by the old image, under its own id.
    pub fn adopt(&mut self, w: Worker) {
        self.next = self.next.max(w.id.0 + 1);
        self.map.insert(w.id, w);
    }

    /// The next id to hand out (for the hand-over).
    pub fn next_id(&self) -> u64 {
        self.next
    }

    /// Never hand out an id below `next` (the old image's counter).
    pub fn reserve(&mut self, next: u64) {
        self.next = self.next.max(next);
    }

    pub fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.map.get_mut(&id)
    }

    pub fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        self.map.remove(&id)
    }

    /// Every worker, oldest (smallest id) first.
    pub fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.map.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.map.values_mut()
    }

    pub fn ids(&self) -> Vec<WorkerId> {
        self.map.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Workers serving now (ready or soaking).
    pub fn ready(&self) -> usize {
        self.map.values().filter(|w| w.life.serving()).count()
    }
}

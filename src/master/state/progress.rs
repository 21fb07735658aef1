//! The typed facts of a rollout's progress and of the workers' health that
//! a restart's safety rests on: a new worker's soak (`minReady`) begun and
//! passed, a worker found hung (watchdog), a canary started, standing,
//! promoted or rolled back. Each fact is logged here, once, with its
//! `event` (zdrestart(8), "Logging"), and handed to the loop as
//! [`super::Action::Progress`]: the one place where streamed progress and
//! metrics hook in. Pure data and its log record; the decisions are the
//! table's.

use super::workers::WorkerId;
use std::time::Duration;

/// What the master does about a hung worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HungThen {
    /// A replacement starts; once it is ready the hung one gets SIGABRT.
    Replaced,
    /// A restart was in flight: it is aborted (the master locks out) and
    /// the hung worker gets SIGABRT.
    AbortsRestart,
    /// No replacement can start (lockout): SIGABRT at once.
    Killed,
}

/// Who moved a canary on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryBy {
    /// `PROMOTE` or `ROLLBACK` on the control socket.
    Operator,
    /// `canaryTimeout` ran out (`canaryAction`).
    Timeout,
}

impl CanaryBy {
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryBy::Operator => "control socket",
            CanaryBy::Timeout => "canaryTimeout",
        }
    }
}

/// One fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A new worker of a restart said `READY=1`: it serves, on trial for
    /// `min_ready`.
    SoakStarted { id: WorkerId, pid: u32, generation: u32, min_ready: Duration },
    /// It lived `minReady` without failing: an old worker may go.
    SoakPassed { id: WorkerId, pid: u32, generation: u32 },
    /// A worker sent no heartbeat for `silent` (its `watchdogTimeout`
    /// passed), or said `WATCHDOG=trigger`.
    Hung { id: WorkerId, pid: u32, generation: u32, index: u32, silent: Duration, then: HungThen },
    /// A canary restart spawned its one new worker.
    CanaryStarted { id: WorkerId, generation: u32 },
    /// The canary passed its soak: both generations serve; the master waits
    /// for `promote` or `rollback` (or `canaryTimeout`).
    CanaryStands { id: WorkerId, pid: u32, generation: u32 },
    /// The rollout carries on to every worker.
    CanaryPromoted { generation: u32, by: CanaryBy },
    /// The canary is stopped; the old fleet serves on, no lockout.
    CanaryRolledBack { generation: u32, by: CanaryBy },
}

impl Progress {
    /// The `event` of its log record.
    pub fn event(&self) -> &'static str {
        match self {
            Progress::SoakStarted { .. } => "worker.soak",
            Progress::SoakPassed { .. } => "worker.passed",
            Progress::Hung { .. } => "worker.hung",
            Progress::CanaryStarted { .. } => "canary.start",
            Progress::CanaryStands { .. } => "canary.ready",
            Progress::CanaryPromoted { .. } => "canary.promote",
            Progress::CanaryRolledBack { .. } => "canary.rollback",
        }
    }

    /// Its one log record.
    pub fn log(&self) {
        let event = self.event();
        let ms = |d: &Duration| d.as_millis() as u64;
        match self {
            Progress::SoakStarted { pid, generation, min_ready, .. } => log::info!(event = event, worker_pid = *pid,
                generation = *generation, min_ready_ms = ms(min_ready);
                "worker {} serves, on trial for minReady ({:?}) before an old worker goes", pid, min_ready),
            Progress::SoakPassed { pid, generation, .. } => log::info!(event = event, worker_pid = *pid, generation = *generation;
                "worker {} passed its soak (minReady)", pid),
            Progress::Hung { pid, generation, index, silent, then, .. } => {
                let what = match then {
                    HungThen::Replaced => "starting a replacement; SIGABRT to it once the replacement is ready",
                    HungThen::AbortsRestart => "the restart in flight is aborted; SIGABRT to it",
                    HungThen::Killed => "no replacement can start (lockout); SIGABRT to it",
                };
                log::error!(event = event, worker_pid = *pid, generation = *generation, worker = *index, silent_ms = ms(silent);
                    "worker {} is hung: no heartbeat (WATCHDOG=1) for {:?}; {}", pid, silent, what)
            }
            Progress::CanaryStarted { generation, .. } => log::info!(event = event, generation = *generation;
                "canary restart: one worker of generation {} starts beside the old fleet", generation),
            Progress::CanaryStands { pid, generation, .. } => log::info!(event = event, worker_pid = *pid, generation = *generation;
                "canary worker {} of generation {} stands beside the old fleet: zdrestartctl promote or zdrestartctl rollback",
                pid, generation),
            Progress::CanaryPromoted { generation, by } => log::info!(event = event, generation = *generation, by = by.as_str();
                "canary of generation {} promoted ({}): rolling every worker over", generation, by.as_str()),
            Progress::CanaryRolledBack { generation, by } => log::info!(event = event, generation = *generation, by = by.as_str();
                "canary of generation {} rolled back ({}): the old fleet serves on", generation, by.as_str()),
        }
    }
}

//! The typed facts of a rollout's progress and of the workers' health: a
//! restart begun (its probe passed), refused, aborted or complete; a worker
//! spawned, ready, asked to exit, gone or respawned; a new worker's soak
//! (`minReady`) begun and passed, a worker found hung (watchdog), a canary
//! started, standing, promoted or rolled back; an upgrade of the master
//! refused or done. Each is handed to the loop as [`super::Action::Progress`]:
//! the one place where streamed progress (`RESTART WAIT PROGRESS`) and the
//! metrics hook in. The facts of a soak, a hung worker and a canary are
//! logged here ([`Progress::log`]); the others are logged by the cell where
//! they happen, with their own record. Pure data, its log record and its
//! streamed form ([`Progress::step`]); the decisions are the table's.

use super::workers::WorkerId;
use crate::restart::Reason;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// How a worker ended (the `cause` of `zdrestart_worker_exits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// Asked to exit (SIGTERM, or SIGABRT when hung), and it did.
    Stopped,
    /// Asked to exit, it did not within `shutdownTimeout`: SIGKILL.
    Killed,
    /// Nobody asked: it died (a crash, or an exit of its own).
    Unexpected,
    /// It could not be started at all (fork or exec failed).
    SpawnFailed,
}

impl ExitCause {
    pub const ALL: [ExitCause; 4] = [ExitCause::Stopped, ExitCause::Killed, ExitCause::Unexpected, ExitCause::SpawnFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            ExitCause::Stopped => "stopped",
            ExitCause::Killed => "killed",
            ExitCause::Unexpected => "unexpected",
            ExitCause::SpawnFailed => "spawn_failed",
        }
    }
}

/// Where a rollout stands, for a streamed step: new workers that passed
/// (ready, soak over) of those the new generation has, and old workers
/// still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutView {
    pub generation: u32,
    pub ready: u32,
    pub of: u32,
    pub old: u32,
}

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
    /// A restart's probe passed: the rollout to `generation` begins.
    RestartBegins { generation: u32, workers: u32, version: String, magic: u64, canary: bool },
    /// A worker's process runs.
    WorkerSpawned { id: WorkerId, pid: u32, generation: u32, index: u32 },
    /// A worker said `READY=1`, `took` after it was spawned.
    WorkerReady { id: WorkerId, pid: u32, generation: u32, index: u32, took: Duration },
    /// A worker was asked to exit (SIGTERM): it drains its connections.
    WorkerStopping { id: WorkerId, pid: u32, generation: u32, index: u32 },
    /// A worker is gone after `lived`; `status` as text (`exit code 0`).
    WorkerExited { id: WorkerId, pid: u32, generation: u32, index: u32, cause: ExitCause, status: String, lived: Duration },
    /// A worker that died is started again, after `delay` (crash loop backoff).
    Respawn { generation: u32, index: u32, delay: Duration },
    /// A restart request refused (nothing changed).
    Refused { reason: Reason, detail: String },
    /// A rollout aborted, `took` after its probe passed: lockout.
    Aborted { generation: u32, cause: &'static str, detail: String, took: Duration },
    /// A rollout complete, `took` after its probe passed.
    Completed { generation: u32, workers: u32, took: Duration },
    /// An upgrade of the master refused or failed (`reason`; the old image
    /// carries on), or done (None: said by the new image).
    Upgrade { refused: Option<Reason>, detail: String },
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
            Progress::RestartBegins { .. } => "restart.start",
            Progress::WorkerSpawned { .. } => "worker.spawn",
            Progress::WorkerReady { .. } => "worker.ready",
            Progress::WorkerStopping { .. } => "worker.stop",
            Progress::WorkerExited { .. } => "worker.exit",
            Progress::Respawn { .. } => "worker.respawn",
            Progress::Refused { .. } => "restart.refused",
            Progress::Aborted { .. } => "restart.abort",
            Progress::Completed { .. } => "restart.complete",
            Progress::Upgrade { refused: Some(_), .. } => "upgrade.refused",
            Progress::Upgrade { refused: None, .. } => "upgrade.done",
        }
    }

    /// A fact of a worker's health or a canary, logged by [`Progress::log`]
    /// (the others are logged by the cell where they happen).
    pub fn logged_here(&self) -> bool {
        matches!(self, Progress::SoakStarted { .. } | Progress::SoakPassed { .. } | Progress::Hung { .. }
            | Progress::CanaryStarted { .. } | Progress::CanaryStands { .. } | Progress::CanaryPromoted { .. }
            | Progress::CanaryRolledBack { .. })
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
            // Logged by the cell where it happens, with its own record.
            _ => {}
        }
    }

    /// Its streamed form (`PROGRESS <json>`, zdrestartctl(8)): `step` (the
    /// log record's `event`), `text` for a person, the fact's own fields,
    /// and where the rollout stands (`ready` of `of`, `old`) if one runs.
    pub fn step(&self, view: Option<RolloutView>) -> Value {
        let ms = |d: &Duration| d.as_millis() as u64;
        let (text, fields) = match self {
            Progress::SoakStarted { pid, generation, min_ready, .. } => (format!("worker {} serves, on trial for minReady ({} ms)", pid, ms(min_ready)),
                json!({"pid": pid, "generation": generation, "min_ready_ms": ms(min_ready)})),
            Progress::SoakPassed { pid, generation, .. } => (format!("worker {} passed its soak", pid), json!({"pid": pid, "generation": generation})),
            Progress::Hung { pid, generation, index, silent, .. } => (format!("worker {} is hung (no heartbeat for {} ms)", pid, ms(silent)),
                json!({"pid": pid, "generation": generation, "worker": index, "silent_ms": ms(silent)})),
            Progress::CanaryStarted { generation, .. } => (format!("canary of generation {} starts", generation), json!({"generation": generation})),
            Progress::CanaryStands { pid, generation, .. } => (format!("canary worker {} stands: promote or rollback", pid), json!({"pid": pid, "generation": generation})),
            Progress::CanaryPromoted { generation, by } => (format!("canary promoted ({})", by.as_str()), json!({"generation": generation, "by": by.as_str()})),
            Progress::CanaryRolledBack { generation, by } => (format!("canary rolled back ({})", by.as_str()), json!({"generation": generation, "by": by.as_str()})),
            Progress::RestartBegins { generation, workers, version, magic, canary } => (
                format!("probe passed (magic {}, version {}): rolling {} workers to generation {}", magic, version, workers, generation),
                json!({"generation": generation, "workers": workers, "version": version, "magic": magic, "canary": canary})),
            Progress::WorkerSpawned { pid, generation, index, .. } => (format!("worker {} started (generation {}, index {})", pid, generation, index),
                json!({"pid": pid, "generation": generation, "worker": index})),
            Progress::WorkerReady { pid, generation, index, took, .. } => (format!("worker {} ready in {} ms", pid, ms(took)),
                json!({"pid": pid, "generation": generation, "worker": index, "ready_ms": ms(took)})),
            Progress::WorkerStopping { pid, generation, index, .. } => (format!("worker {} (generation {}) asked to exit: draining", pid, generation),
                json!({"pid": pid, "generation": generation, "worker": index})),
            Progress::WorkerExited { pid, generation, index, cause, status, lived, .. } => (
                format!("worker {} (generation {}) {} ({})", pid, generation, match cause {
                    ExitCause::Stopped => "stopped and drained", ExitCause::Killed => "killed after shutdownTimeout",
                    ExitCause::Unexpected => "exited unexpectedly", ExitCause::SpawnFailed => "could not be started" }, status),
                json!({"pid": pid, "generation": generation, "worker": index, "cause": cause.as_str(), "status": status, "lived_ms": ms(lived)})),
            Progress::Respawn { generation, index, delay } => (format!("worker {} of generation {} respawns in {} ms", index, generation, ms(delay)),
                json!({"generation": generation, "worker": index, "delay_ms": ms(delay)})),
            Progress::Refused { reason, detail } => (format!("refused: {}{}{}", reason.wire(), if detail.is_empty() { "" } else { ": " }, detail),
                json!({"reason": reason.wire(), "detail": detail})),
            Progress::Aborted { generation, cause, detail, took } => (format!("aborted after {} ms: {}: {}", ms(took), cause, detail),
                json!({"generation": generation, "reason": cause, "detail": detail, "duration_ms": ms(took)})),
            Progress::Completed { generation, workers, took } => (format!("complete: {} workers of generation {} in {} ms", workers, generation, ms(took)),
                json!({"generation": generation, "workers": workers, "duration_ms": ms(took)})),
            Progress::Upgrade { refused: Some(r), detail } => (format!("upgrade refused: {}: {}", r.wire(), detail), json!({"reason": r.wire(), "detail": detail})),
            Progress::Upgrade { refused: None, detail } => (format!("master upgraded: {}", detail), json!({"detail": detail})),
        };
        let mut m = Map::new();
        m.insert("step".into(), self.event().into());
        m.insert("text".into(), text.into());
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        if let Some(v) = view {
            m.insert("rollout".into(), json!({"generation": v.generation, "ready": v.ready, "of": v.of, "old": v.old}));
        }
        Value::Object(m)
    }
}

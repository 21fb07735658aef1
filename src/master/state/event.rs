//! What the state machine is told (events) and what it answers (actions):
//! the vocabulary between [`super::Master`] and the poll loop. Pure data.

use super::progress::Progress;
use super::workers::WorkerId;
use crate::config::Config;
use crate::control::ClientId;
use crate::master::admission::{ProbeFailure, ProbeInfo};
use crate::restart::{Refused, RestartAnswer};
use crate::sys::ExitStatus;
use std::sync::Arc;

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

impl Requester {
    /// How the request came, for the log.
    pub fn via(self) -> &'static str {
        match self {
            Requester::Signal => "SIGUSR2",
            Requester::Control { .. } => "control socket",
            Requester::Upgrade => "upgrade of the master",
        }
    }
}

// Events are built and consumed at once, never stored in bulk: the size of
// the Restart variant (a whole Config) costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// Spawn the first generation.
    Start,
    /// SIGUSR2 or RESTART: `config` is the file as re-read now; `canary`:
    /// `RESTART CANARY`, one new worker beside the old fleet, then hold.
    Restart { config: Result<Config, String>, by: Requester, canary: bool },
    /// `PROMOTE [WAIT]`: carry a standing canary's rollout on.
    Promote { client: ClientId, wait: bool },
    /// `ROLLBACK`: stop the canary; the old fleet serves on.
    Rollback { client: ClientId },
    /// SIGTERM/SIGINT.
    Stop { signal: &'static str },
    ProbeDone(Result<ProbeInfo, ProbeFailure>),
    /// The loop spawned worker `id` (of an [`Action::Spawn`]): its pid.
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
    /// `WATCHDOG=1` (report pipe or sd_notify): the worker's event loop is
    /// alive. `trigger`: `WATCHDOG=trigger`, the worker says it is hung.
    Heartbeat { id: WorkerId, trigger: bool },
    /// `UPGRADE` on the control socket: re-exec the master in place.
    Upgrade { client: ClientId, wait: bool, restart: bool },
    /// The loop could not carry out the upgrade the state machine let
    /// through (hand-over state, the new binary's check, the exec): nothing
    /// changed.
    UpgradeFailed(Refused),
    /// This image took the master over from the old one (`--handover`):
    /// `client` asked for it (`wait`: `UPGRADE WAIT`); `restart`: the config
    /// as re-read for the roll-over that follows, None with `NORESTART`.
    Resumed { client: Option<ClientId>, wait: bool, restart: Option<Result<Config, String>> },
}

/// The kind of an [`Event`]: the rows of the state machine's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Start,
    Restart,
    ProbeDone,
    Promote,
    Rollback,
    Spawned,
    Ready,
    ReportedError,
    NotifyFailure,
    Exited,
    SpawnFailed,
    Stop,
    Tick,
    Heartbeat,
    Output,
    Status,
    MainPid,
    Upgrade,
    UpgradeFailed,
    Resumed,
}

impl Kind {
    /// Every kind, in the order of the table's rows.
    pub const ALL: [Kind; 20] = [
        Kind::Start,
        Kind::Restart,
        Kind::ProbeDone,
        Kind::Promote,
        Kind::Rollback,
        Kind::Spawned,
        Kind::Ready,
        Kind::ReportedError,
        Kind::NotifyFailure,
        Kind::Exited,
        Kind::SpawnFailed,
        Kind::Stop,
        Kind::Tick,
        Kind::Heartbeat,
        Kind::Output,
        Kind::Status,
        Kind::MainPid,
        Kind::Upgrade,
        Kind::UpgradeFailed,
        Kind::Resumed,
    ];
}

impl Event {
    pub fn kind(&self) -> Kind {
        match self {
            Event::Start => Kind::Start,
            Event::Restart { .. } => Kind::Restart,
            Event::Promote { .. } => Kind::Promote,
            Event::Rollback { .. } => Kind::Rollback,
            Event::Heartbeat { .. } => Kind::Heartbeat,
            Event::Stop { .. } => Kind::Stop,
            Event::ProbeDone(_) => Kind::ProbeDone,
            Event::Spawned { .. } => Kind::Spawned,
            Event::SpawnFailed { .. } => Kind::SpawnFailed,
            Event::Ready { .. } => Kind::Ready,
            Event::ReportedError { .. } => Kind::ReportedError,
            Event::Output { .. } => Kind::Output,
            Event::Status { .. } => Kind::Status,
            Event::NotifyFailure { .. } => Kind::NotifyFailure,
            Event::MainPid { .. } => Kind::MainPid,
            Event::Exited { .. } => Kind::Exited,
            Event::Tick => Kind::Tick,
            Event::Upgrade { .. } => Kind::Upgrade,
            Event::UpgradeFailed(_) => Kind::UpgradeFailed,
            Event::Resumed { .. } => Kind::Resumed,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start worker `id` (its id from now on, in events and actions).
    Spawn { id: WorkerId, generation: u32, index: u32, config: Arc<Config> },
    /// To the worker's process group.
    Signal { id: WorkerId, signal: i32 },
    Probe { config: Arc<Config> },
    CancelProbe,
    /// Answer a control client's `RESTART`, `RESTART WAIT`, `PROMOTE`,
    /// `ROLLBACK` or `UPGRADE`.
    Reply { client: ClientId, answer: RestartAnswer },
    /// A fact of a rollout's progress or of a worker's health, typed (it is
    /// also logged, with its `event`, by the state machine): nothing for the
    /// loop to do yet; the place where streamed progress and metrics hook in.
    Progress(Progress),
    /// Tell the service manager (sd_notify(3), when `NOTIFY_SOCKET` is set).
    Announce(Announce),
    /// Exit the master with this status (after cleanup).
    Exit(i32),
    /// Hand the master over to its binary on disk (re-exec in place), once
    /// the events queued so far are handled; a failure comes back as
    /// [`Event::UpgradeFailed`].
    Upgrade { client: ClientId, wait: bool, restart: bool },
    /// The upgrade of an earlier [`Action::Upgrade`] is off (it was
    /// refused meanwhile): do not carry it out.
    CancelUpgrade,
}

/// A message to the service manager: one sd_notify(3) datagram, whose
/// `STATUS=` is the text held here (what `systemctl status` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announce {
    /// `READY=1`: the first generation is ready, or a restart ended
    /// (complete, refused or aborted).
    Ready(String),
    /// `RELOADING=1` and `MONOTONIC_USEC=` (filled in by the loop, which
    /// owns the clock): a restart request is being handled.
    Reloading(String),
    /// `STOPPING=1`: a graceful stop began.
    Stopping(String),
}

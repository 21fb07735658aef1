//! The state machine's table: for each phase and each kind of event, the
//! handler that runs and what it does in words ([`cell`]). `Master::handle`
//! dispatches through [`cell`] and nothing else, and ARCHITECTURE.md's
//! table ("The state machine") is rendered from it ([`markdown`]; a unit
//! test compares the two), so the document and the code cannot drift.
//!
//! Adding a phase: a [`Phase`] variant (and its column in [`Phase::ALL`]),
//! its arms below, a word for STATUS in `Master::state`. Adding an event: an
//! `Event` variant and its [`Kind`], its arms below. Then run the unit
//! tests: the one that compares the table prints the new markdown.

use super::event::{Action, Event, Kind};
use super::Master;
use std::time::Instant;

/// Where the master is. Probing, Rolling and Canary hold a rollout
/// (`Master::rollout`), Upgrading an upgrade (`Master::upgrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// One generation serving.
    Running,
    /// A restart passed the first checks; its probe runs.
    Probing,
    /// The new generation is being started (`maxSurge` at a time, each
    /// soaking `minReady` before an old worker goes).
    Rolling,
    /// A canary restart: one new worker beside the whole old fleet, until
    /// `PROMOTE` (-> Rolling) or `ROLLBACK` (-> Running).
    Canary,
    /// A rollout was aborted: no restart, no respawn.
    Lockout,
    /// SIGTERM/SIGINT: the workers are asked to exit.
    Stopping,
    /// An `UPGRADE` let through (from Running or Lockout) that the loop
    /// carries out once its queue is empty.
    Upgrading,
}

impl Phase {
    /// The table's columns.
    pub const ALL: [Phase; 7] =
        [Phase::Running, Phase::Probing, Phase::Rolling, Phase::Canary, Phase::Lockout, Phase::Stopping, Phase::Upgrading];
}

/// A handler: what the master does with `event` in one phase.
pub type Handler = fn(&mut Master, Event, Instant, &mut Vec<Action>);

/// One cell of the table.
#[derive(Clone, Copy)]
pub struct Cell {
    pub run: Handler,
    /// What `run` does, as ARCHITECTURE.md's table says it (markdown).
    pub says: &'static str,
}

const fn c(run: Handler, says: &'static str) -> Cell {
    Cell { run, says }
}

const IGNORED: Cell = c(Master::ignore, "ignored");
const AS_BEFORE: Cell = c(Master::as_before_upgrade, "as before the upgrade");

/// The cell of `phase` x `kind`: the one place a decision is dispatched.
pub fn cell(phase: Phase, kind: Kind) -> Cell {
    use Kind as K;
    use Phase::*;
    match (phase, kind) {
        (Running, K::Start) => c(Master::start, "spawn generation 1, `workers` workers"),
        (_, K::Start) => IGNORED,
        (Running, K::Restart) => c(Master::take_up, "not every worker of the serving generation ready: NACK `not ready`; else `check_config`: refused -> NACK; else `Probe`, -> Probing (`\"probe\": false`: the declared answer is the `ProbeDone` at once)"),
        (Probing | Rolling | Canary, K::Restart) => c(Master::restart_in_flight, "NACK `restart in flight`"),
        (Lockout, K::Restart) => c(Master::restart_in_lockout, "NACK `aborted restart`"),
        (Stopping, K::Restart) => c(Master::restart_while_stopping, "NACK `stopping`"),
        (Probing, K::ProbeDone) => c(Master::probe_done, "`check_probe`: refused -> NACK, -> Running; else a new generation, `ACK` (RESTART), the rollout begins (its first `maxSurge` new workers), -> Rolling; `RESTART CANARY`: its one new worker, -> Canary"),
        (_, K::ProbeDone) => IGNORED,
        (Canary, K::Promote) => c(Master::promote, "the canary stands: `ACK` (`PROMOTE WAIT`: when the rollout ends), the new generation serves, -> Rolling (an old worker drains, the next new ones start); not yet: NACK `no canary`"),
        (Canary, K::Rollback) => c(Master::rollback, "SIGTERM the canary, `ACK`, the old fleet as it was (no lockout), -> Running"),
        (Upgrading, K::Promote | K::Rollback) => AS_BEFORE,
        (Stopping, K::Promote | K::Rollback) => c(Master::no_canary, "NACK `stopping`"),
        (_, K::Promote | K::Rollback) => c(Master::no_canary, "NACK `no canary`"),
        (_, K::Spawned) => c(Master::spawned, "record its pid (`worker.spawn`)"),
        (Running | Probing | Lockout, K::Ready) => c(Master::ready, "worker ready (the last of generation 1: `READY=1`); the replacement of a hung worker: SIGABRT to the hung one"),
        (Rolling, K::Ready) => c(Master::ready_in_rollout, "worker ready; a new one soaks (`minReady`) and makes room for the next to start (`maxSurge`); one that passes (at once without a soak) drains an old worker; all new ones passed: the old ones left drain"),
        (Canary, K::Ready) => c(Master::ready_in_rollout, "worker ready; the canary soaks (`minReady`), then stands: `ACK canary` (`RESTART CANARY WAIT`), `canaryTimeout` starts"),
        (Stopping, K::Ready) => c(Master::ready_while_stopping, "worker ready"),
        (Rolling | Canary, K::ReportedError) => c(Master::failure_in_rollout, "the rollout's new worker: abort, -> Lockout; another: SIGTERM it"),
        (Upgrading, K::ReportedError | K::NotifyFailure) => AS_BEFORE,
        (_, K::ReportedError) => c(Master::failure, "SIGTERM it (unless already asked)"),
        (Rolling | Canary, K::NotifyFailure) => c(Master::failure_in_rollout, "not ready yet or soaking: as `ReportedError`; else logged"),
        (_, K::NotifyFailure) => c(Master::failure, "not ready yet: as `ReportedError`; else logged"),
        (Running | Probing, K::Exited | K::SpawnFailed) => c(Master::gone_respawn, "respawn, as the serving generation (backoff from 0.5 s to 30 s if it lived < 1 s); not a hung worker already replaced, nor one an upgraded master adopted while it was asked to exit; one of an older generation (after an upgrade out of a lockout) only while the fleet is short of `workers`"),
        (Rolling, K::Exited | K::SpawnFailed) => c(Master::gone_in_rollout, "the rollout's `gone`: a new worker (soaking or not): abort, -> Lockout (no old worker left serving: the other new ones serve on); an old one: not respawned"),
        (Canary, K::Exited | K::SpawnFailed) => c(Master::gone_in_canary, "the canary: abort, -> Lockout; an old one: as Running"),
        (Lockout, K::Exited | K::SpawnFailed) => c(Master::gone_in_lockout, "no respawn; last one gone: `Exit(1)`"),
        (Stopping, K::Exited | K::SpawnFailed) => c(Master::gone_while_stopping, "last one gone: `Exit(0)`"),
        (Running | Lockout, K::Stop) => c(Master::stop, "SIGTERM all, -> Stopping"),
        (Probing, K::Stop) => c(Master::stop_probing, "`CancelProbe`, NACK `stopping`, SIGTERM all, -> Stopping"),
        (Rolling | Canary, K::Stop) => c(Master::stop_rolling, "NACK `stopping` to the client owed an answer, SIGTERM all, -> Stopping"),
        (Stopping, K::Stop) => c(Master::stop_again, "ignored (logged)"),
        (Running | Probing, K::Tick) => c(Master::tick, "SIGKILL past its `shutdownTimeout`; not ready within its `readyTimeout`: SIGTERM; no heartbeat within its `watchdogTimeout`: hung (`worker.hung`), a replacement starts; due respawns"),
        (Rolling, K::Tick) => c(Master::tick_without_respawns, "a new worker not ready in time, or any worker hung: abort, -> Lockout; a soak over: the worker passes (as `Ready` without a soak); else as Running, without respawns"),
        (Canary, K::Tick) => c(Master::tick_in_canary, "the canary not ready in time, or any worker hung: abort, -> Lockout; its soak over: it stands; `canaryTimeout` over: `canaryAction`; else as Running"),
        (Lockout | Stopping, K::Tick) => c(Master::tick_without_respawns, "as Running, without respawns (a hung worker: SIGABRT at once)"),
        (_, K::Heartbeat) => c(Master::heartbeat, "a serving worker's watchdog deadline: now + its `watchdogTimeout` (`WATCHDOG=trigger`: now)"),
        (_, K::Output) => c(Master::output, "keep the worker's last 10 lines (for `restart.abort`)"),
        (_, K::Status) => c(Master::status_report, "keep the worker's last `STATUS=` (STATUS JSON)"),
        (_, K::MainPid) => c(Master::main_pid, "record the worker's main process (STATUS `main_pid`)"),
        (Running, K::Upgrade) => c(Master::upgrade, "`Upgrade`, -> Upgrading"),
        (Lockout, K::Upgrade) => c(Master::upgrade, "`Upgrade`, -> Upgrading (a fresh state ends the lockout)"),
        (Probing | Rolling | Canary, K::Upgrade) => c(Master::upgrade_in_flight, "NACK `restart in flight`"),
        (Stopping, K::Upgrade) => c(Master::upgrade_while_stopping, "NACK `stopping`"),
        (Upgrading, K::Upgrade) => c(Master::upgrade_again, "NACK `upgrade not possible` (one at a time)"),
        (Upgrading, K::UpgradeFailed) => c(Master::upgrade_failed, "NACK with the loop's reason, back to the phase it came from"),
        (_, K::UpgradeFailed) => IGNORED,
        (Running, K::Resumed) => c(Master::resumed, "`ACK upgraded` (`UPGRADE WAIT`: when the roll-over ends); the roll-over is a `Restart` (a fleet short of `workers`: taken up although not ready). A fleet handed over short of `workers` is respawned at once"),
        (_, K::Resumed) => IGNORED,
        (Upgrading, _) => AS_BEFORE,
    }
}

/// The table as ARCHITECTURE.md shows it: a row per kind of event (kinds
/// whose cells all say the same share a row), a column per phase; a cell
/// that says what the one on its left says is "same", one that says at
/// length what Running's says is "as Running".
pub fn markdown() -> String {
    let name = |p: Phase| format!("{:?}", p);
    let mut out = format!("| event \\ phase | {} |\n", Phase::ALL.map(name).join(" | "));
    out += &format!("| --- |{}\n", " --- |".repeat(Phase::ALL.len()));
    let says = |k: Kind| Phase::ALL.map(|p| cell(p, k).says);
    let mut rows: Vec<(Vec<String>, [&str; Phase::ALL.len()])> = Vec::new();
    for k in Kind::ALL {
        match rows.last_mut() {
            Some((names, row)) if *row == says(k) => names.push(format!("`{:?}`", k)),
            _ => rows.push((vec![format!("`{:?}`", k)], says(k))),
        }
    }
    for (names, row) in rows {
        let cells: Vec<&str> = (0..row.len())
            .map(|i| match i {
                0 => row[0],
                _ if row[i] == row[i - 1] => "same",
                _ if row[i] == row[0] && row[i].len() > 24 => "as Running",
                _ => row[i],
            })
            .collect();
        out += &format!("| {} | {} |\n", names.join(", "), cells.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: &str = "<!-- state table: begin (rendered by master::state::table::markdown) -->\n";
    const END: &str = "<!-- state table: end -->";

    /// ARCHITECTURE.md shows the table the code dispatches through.
    #[test]
    fn architecture_md_shows_this_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let shown = doc.split_once(BEGIN).and_then(|(_, rest)| rest.split_once(END)).map(|(t, _)| t);
        let want = markdown();
        assert_eq!(shown, Some(want.as_str()), "ARCHITECTURE.md's state table (between the markers) must be:\n{}{}{}", BEGIN, want, END);
    }

    /// Every cell has words that fit in a markdown cell.
    #[test]
    fn every_cell_says_something() {
        for p in Phase::ALL {
            for k in Kind::ALL {
                let c = cell(p, k);
                assert!(!c.says.is_empty() && !c.says.contains('|') && !c.says.contains('\n'), "{:?} x {:?}", p, k);
            }
        }
    }
}

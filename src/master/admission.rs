//! Restart admission: the pure functions that decide whether a zero-downtime
//! restart may go ahead, and which [`Reason`] refuses it.
//!
//! The state machine refuses by its phase in its table (`master::state::table`:
//! `restart in flight`, `aborted restart`, `stopping`), and in Running by
//! [`check_state`] (`not ready`), then calls
//! [`check_config`] when it takes a request up and [`check_probe`] when the
//! probe of the new code has answered; `zdrestart --check` calls [`admit`],
//! which is [`check_state`] (the same refusals, from the running master's
//! STATUS) and both others, in that order. The checks and their order are
//! those of ARCHITECTURE.md ("Restart admission") and zdrestart(8). No I/O,
//! no clock, no logging.

use crate::config::{Config, Driver};
use crate::restart::{Reason, Refused};
use crate::status::MasterState;
use std::borrow::Borrow;

/// What the probe of the code reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeInfo {
    pub magic: u64,
    pub version: String,
}

/// A probe that failed; `magic` is what it reported before failing, if
/// anything, so that another magic number is refused as `incompatibility`
/// (the earlier check) even when the probe also failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub magic: Option<u64>,
    pub error: String,
}

/// The running master a restart is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub state: MasterState,
    /// `address:port` it listens on ([`Config::listen_display`]).
    pub listen: String,
    /// The magic number it started with.
    pub magic: u64,
}

/// What a worker without a probe (`"probe": false`) declares in its config:
/// `magic` and `version` stand for the probe's answer, and the checks compare
/// them exactly as they compare a probe's. None: the probe runs.
pub fn declared(cfg: &Config) -> Option<ProbeInfo> {
    if cfg.probe {
        return None;
    }
    Some(ProbeInfo { magic: cfg.magic.unwrap_or_default(), version: cfg.version.clone().unwrap_or_default() })
}

/// The refusal of a restart asked for while the master is in `state` (its
/// STATUS word): what the state machine's table answers in that phase.
pub fn check_state(state: MasterState) -> Result<(), Refused> {
    match state {
        MasterState::Restarting | MasterState::Canary => Err(Refused::in_flight()),
        MasterState::Lockout => Err(Refused::aborted_restart()),
        MasterState::Stopping => Err(Refused::stopping()),
        MasterState::NotReady => Err(Refused::not_ready()),
        // Unknown: a STATUS word this build does not know (`--check` against
        // another version); the running master makes its own decision.
        MasterState::Running | MasterState::Unknown => Ok(()),
    }
}

/// The checks on the new config, in order (`Err`: why it could not be
/// loaded), against the master listening on `listen`. Ok: the new config.
pub fn check_config<C: Borrow<Config>>(listen: &str, new: Result<C, String>) -> Result<C, Refused> {
    let config = new.map_err(|e| Refused::new(Reason::BadConfig, e))?;
    let new = config.borrow();
    if new.listen_display() != listen {
        let detail = format!("{} -> {}; use a normal restart", listen, new.listen_display());
        return Err(Refused::new(Reason::ListenChanged, detail));
    }
    if new.workers < 2 {
        return Err(Refused::new(Reason::NoWorkers, format!("workers is {}, at least 2 are needed", new.workers)));
    }
    if new.driver != Driver::Mongodb {
        let detail = format!("driver is \"{}\", zero-downtime restarts need \"mongodb\"", new.driver.as_str());
        return Err(Refused::new(Reason::BadDriver, detail));
    }
    Ok(config)
}

/// The checks on the probe's verdict: another magic number first (even from
/// a probe that also failed), then the failure. Ok: what the new code is.
pub fn check_probe(master_magic: u64, probe: Result<ProbeInfo, ProbeFailure>) -> Result<ProbeInfo, Refused> {
    let info = match probe {
        Ok(i) => i,
        Err(f) if f.magic.is_some_and(|m| m != master_magic) => ProbeInfo {
            magic: f.magic.unwrap_or_default(),
            version: format!("unknown; the probe also failed: {}", f.error),
        },
        Err(f) => return Err(Refused::new(Reason::ProbeFailed, f.error)),
    };
    if info.magic != master_magic {
        let detail = format!(
            "the new code reports magic number {} (version {}), the master started with {}; use a normal restart",
            info.magic, info.version, master_magic
        );
        return Err(Refused::new(Reason::Incompatibility, detail));
    }
    Ok(info)
}

/// Every check, in order: [`check_state`], [`check_config`], [`check_probe`].
pub fn admit<C: Borrow<Config>>(
    running: &Running,
    new: Result<C, String>,
    probe: Result<ProbeInfo, ProbeFailure>,
) -> Result<ProbeInfo, Refused> {
    check_state(running.state)?;
    check_config(&running.listen, new)?;
    check_probe(running.magic, probe)
}

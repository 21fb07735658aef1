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

use crate::config::Config;
use crate::restart::{Reason, Refused};
use crate::status::MasterState;
use std::borrow::Borrow;

/// What the probe of the code reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeInfo {
    pub magic: u64,
    pub version: String,
    /// Whether the workers' state is shared by every worker of every
    /// generation (`SHARED=1` / `SHARED=0`); None: the probe did not say.
    pub shared: Option<bool>,
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
/// `magic`, `version` and `sharedState` stand for the probe's answer, and the
/// checks compare them exactly as they compare a probe's. None: the probe runs.
pub fn declared(cfg: &Config) -> Option<ProbeInfo> {
    if cfg.probe {
        return None;
    }
    Some(ProbeInfo {
        magic: cfg.magic.unwrap_or_default(),
        version: cfg.version.clone().unwrap_or_default(),
        shared: cfg.shared_state,
    })
}

/// The refusal of a restart asked for while the master is in `state` (its
/// STATUS word): what the state machine's table answers in that phase.
pub fn check_state(state: MasterState) -> Result<(), Refused> {
    match state {
        MasterState::Restarting | MasterState::Canary => Err(Refused::in_flight()),
        MasterState::Lockout => Err(Refused::aborted_restart()),
        MasterState::Stopping => Err(Refused::stopping()),
        // A restart asked for while the new binary of an upgrade checks the
        // hand-over is taken up as in the phase the upgrade came from (it
        // refuses the upgrade); from a lockout, the STATUS flag `lockout`
        // makes the caller ask about `Lockout` instead.
        MasterState::Upgrading => Ok(()),
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
    Ok(config)
}

/// The checks on the probe's verdict: another magic number first (even from
/// a probe that also failed), then the failure, then whether the workers'
/// state is shared (the probe's `SHARED=1`, or `sharedState` declared for a
/// worker without a probe): old and new workers serve side by side, so they
/// must see the same data. `new` is the config the probe ran with. Ok: what
/// the new code is.
pub fn check_probe(master_magic: u64, new: &Config, probe: Result<ProbeInfo, ProbeFailure>) -> Result<ProbeInfo, Refused> {
    let info = match probe {
        Ok(i) => i,
        Err(f) if f.magic.is_some_and(|m| m != master_magic) => ProbeInfo {
            magic: f.magic.unwrap_or_default(),
            version: format!("unknown; the probe also failed: {}", f.error),
            shared: None,
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
    if info.shared != Some(true) {
        return Err(Refused::new(Reason::BadDriver, not_shared(new, info.shared)));
    }
    Ok(info)
}

/// Why the workers' state does not count as shared, in the words of the
/// config that says so.
fn not_shared(new: &Config, shared: Option<bool>) -> String {
    const NEED: &str = "zero-downtime restarts need a store every worker shares: \"sqlite\" (one host) or \"mongodb\" (several hosts)";
    if !new.probe {
        return format!("\"sharedState\" is false: the workers keep state of their own; {}", NEED);
    }
    match (new.worker.is_none(), shared) {
        (true, Some(false)) => format!("driver is \"{}\", {}", new.driver.as_str(), NEED),
        (false, Some(false)) => format!("the probe of the worker program reported SHARED=0 (each worker keeps state of its own); {}", NEED),
        _ => format!("the probe of the worker program did not report SHARED=1 or SHARED=0: the master cannot know that old and new workers see the same data; {}", NEED),
    }
}

/// Every check, in order: [`check_state`], [`check_config`], [`check_probe`].
pub fn admit<C: Borrow<Config>>(
    running: &Running,
    new: Result<C, String>,
    probe: Result<ProbeInfo, ProbeFailure>,
) -> Result<ProbeInfo, Refused> {
    check_state(running.state)?;
    let config = check_config(&running.listen, new)?;
    check_probe(running.magic, config.borrow(), probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(json: &str) -> Config {
        Config::parse(Path::new("/t/c.json"), json).unwrap()
    }

    fn probe(shared: Option<bool>) -> Result<ProbeInfo, ProbeFailure> {
        Ok(ProbeInfo { magic: 7, version: "v".into(), shared })
    }

    #[test]
    fn shared_state_is_the_probes_word() {
        let sqlite = cfg(r#"{"driver":"sqlite","params":{"path":"/x.db"}}"#);
        assert!(check_probe(7, &sqlite, probe(Some(true))).is_ok());
        let memory = cfg(r#"{"driver":"memory"}"#);
        let r = check_probe(7, &memory, probe(Some(false))).unwrap_err();
        assert_eq!(r.reason, Reason::BadDriver);
        assert!(r.detail.starts_with("driver is \"memory\", zero-downtime restarts need a store every worker shares: \"sqlite\" (one host) or \"mongodb\" (several hosts)"), "{}", r.detail);
        // The driver key means nothing to a worker program of its own: its probe decides.
        let own = cfg(r#"{"driver":"memory","worker":["/bin/w"]}"#);
        assert!(check_probe(7, &own, probe(Some(true))).is_ok());
        let r = check_probe(7, &own, probe(None)).unwrap_err();
        assert_eq!(r.reason, Reason::BadDriver);
        assert!(r.detail.contains("did not report SHARED=1 or SHARED=0"), "{}", r.detail);
        // Without a probe, the config's sharedState is the answer.
        let off = cfg(r#"{"probe":false,"magic":7,"sharedState":false,"worker":["/bin/w"]}"#);
        let r = check_probe(7, &off, Ok(declared(&off).unwrap())).unwrap_err();
        assert_eq!(r.reason, Reason::BadDriver);
        assert!(r.detail.starts_with("\"sharedState\" is false"), "{}", r.detail);
        let on = cfg(r#"{"probe":false,"magic":7,"sharedState":true,"worker":["/bin/w"]}"#);
        assert!(check_probe(7, &on, Ok(declared(&on).unwrap())).is_ok());
        // Another magic number and a failed probe come first.
        assert_eq!(check_probe(8, &memory, probe(Some(false))).unwrap_err().reason, Reason::Incompatibility);
        let failed = Err(ProbeFailure { magic: Some(7), error: "ERROR=x".into() });
        assert_eq!(check_probe(7, &memory, failed).unwrap_err().reason, Reason::ProbeFailed);
    }
}

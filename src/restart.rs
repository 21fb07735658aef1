//! The restart vocabulary: every reason a zero-downtime restart is refused or
//! aborted, with its wire text, its description and its advice in one table,
//! and the typed answers the state machine gives a control client.
//!
//! Owns the words, not the decisions: which reason applies is decided by
//! [`crate::master::admission`] and the state machine; how an answer becomes a
//! line on the control socket is [`crate::control::render`]. Pure data, no I/O.
//! The reasons are stable strings (ARCHITECTURE.md, "Restart vocabulary";
//! zdrestartctl(8)); adding one means adding a variant here and a line in the
//! man pages.

/// Why a restart was refused or did not complete. On the wire: `NACK <wire>`
/// or `NACK <wire>: <detail>`; in the `restart.refused` log record and in
/// STATUS `last_restart.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A restart is being probed or rolled out.
    InFlight,
    /// An earlier restart was aborted: the master is in lockout.
    AbortedRestart,
    /// The config file on disk is unreadable or invalid.
    BadConfig,
    /// `address` or `port` changed.
    ListenChanged,
    /// Fewer than 2 workers.
    NoWorkers,
    /// The new code reports another magic number.
    Incompatibility,
    /// The probe of the new code failed.
    ProbeFailed,
    /// The workers' state is not shared by every worker (the `memory`
    /// driver; a probe without `SHARED=1`; `sharedState` false).
    BadDriver,
    /// The master is stopping (a refusal, or the end of a restart it ran).
    Stopping,
    /// A started restart was aborted (answer to `RESTART WAIT`; the detail
    /// starts with the [`AbortCause`]).
    Aborted,
    /// SIGUSR2 while the master starts (before it spawns its first
    /// generation: config, pidfile, listeners, probe): only
    /// in the `restart.refused` record, the control socket is not open yet.
    Starting,
}

/// One row of the table: wire text, description, advice.
struct Words {
    wire: &'static str,
    describe: &'static str,
    advice: &'static str,
}

impl Reason {
    /// Every reason: the refusals of a restart request first, in the order
    /// they are checked, then the ends of a restart that did not complete.
    pub const ALL: [Reason; 11] = [
        Reason::InFlight,
        Reason::AbortedRestart,
        Reason::BadConfig,
        Reason::ListenChanged,
        Reason::NoWorkers,
        Reason::Incompatibility,
        Reason::ProbeFailed,
        Reason::BadDriver,
        Reason::Stopping,
        Reason::Aborted,
        Reason::Starting,
    ];

    /// The refusals of a restart request, in the order they are checked.
    pub const REFUSALS: &'static [Reason] = Reason::ALL.split_at(8).0;

    const fn words(self) -> Words {
        match self {
            Reason::InFlight => Words {
                wire: "restart in flight",
                describe: "a zero-downtime restart is already in progress",
                advice: "Wait for it to end (`zdrestartctl restart --wait` reports the outcome, \
                         `zdrestartctl status` shows it), then retry if it is still needed.",
            },
            Reason::AbortedRestart => Words {
                wire: "aborted restart",
                describe: "an earlier zero-downtime restart was aborted: the master refuses restarts and respawns no workers",
                advice: "Workers still serving keep serving, but none that dies is replaced. Fix the cause \
                         (see the `restart.abort` record in the master's log), then restart the master as \
                         soon as possible: `zdrestartctl upgrade --wait` does it without downtime (the master \
                         re-executes itself in place with a fresh state and rolls every worker over), or a \
                         normal restart (stop and start the service).",
            },
            Reason::BadConfig => Words {
                wire: "bad config",
                describe: "the config file on disk is unreadable, not JSON, or invalid",
                advice: "Fix the config file (`zdrestart --check` names the key and the problem), then retry. \
                         Nothing was changed.",
            },
            Reason::ListenChanged => Words {
                wire: "listen address changed",
                describe: "`address` or `port` changed in the config",
                advice: "The listeners cannot move without downtime: restore the old `address`/`port`, or do \
                         a normal restart of the master (stop and start the service) to apply them.",
            },
            Reason::NoWorkers => Words {
                wire: "no workers",
                describe: "fewer than 2 workers are configured",
                advice: "Zero-downtime restarts need `workers` of 2 or more, so that one can serve while \
                         another is replaced: raise it, or do a normal restart.",
            },
            Reason::BadDriver => Words {
                wire: "bad driver",
                describe: "the workers' state is not shared by every worker (the `memory` driver, or a worker \
                           that does not say its state is shared)",
                advice: "Old and new workers serve side by side during a zero-downtime restart, so they must \
                         see the same data: use `\"driver\": \"sqlite\"` (one host: a database file every \
                         worker shares) or `\"driver\": \"mongodb\"` (several hosts); a worker program of \
                         your own says so with `SHARED=1` from its probe, or `\"sharedState\": true` without \
                         one. Or do a normal restart.",
            },
            Reason::Incompatibility => Words {
                wire: "incompatibility",
                describe: "the new code reports another magic number than the code the master started with",
                advice: "Old and new code must not serve side by side (their magic numbers differ): do a \
                         normal restart of the master (stop and start the service) to switch to the new code.",
            },
            Reason::ProbeFailed => Words {
                wire: "probe failed",
                describe: "the probe of the new code failed, timed out, or reported an error",
                advice: "See the `restart.refused` record in the master's log for the probe's error (often \
                         a config the new worker cannot use, or an unreachable database), fix it, then retry. \
                         Nothing was changed.",
            },
            Reason::Stopping => Words {
                wire: "stopping",
                describe: "the master is stopping; the restart did not complete",
                advice: "Start the master again if it should be running.",
            },
            Reason::Starting => Words {
                wire: "starting",
                describe: "the master is starting: it has not started its first generation of workers yet",
                advice: "Wait until the master has started (`master.start` in its log), then retry.",
            },
            Reason::Aborted => Words {
                wire: "aborted",
                describe: "the zero-downtime restart was aborted: a new worker failed before the restart completed",
                advice: "The master now refuses restarts and respawns no workers; workers still serving keep \
                         serving. See the `restart.abort` record in the master's log, fix the cause, then \
                         restart the master as soon as possible (normal restart: stop and start the service).",
            },
        }
    }

    /// The stable text on the wire and in logs.
    pub const fn wire(self) -> &'static str {
        self.words().wire
    }

    /// What it means, in one sentence for an operator.
    pub const fn describe(self) -> &'static str {
        self.words().describe
    }

    /// What an operator should do next.
    pub const fn advice(self) -> &'static str {
        self.words().advice
    }

    /// One of the five reasons pump.socket(7) defines for `RESTART`: its
    /// answer is exactly `NACK <wire>`, with no detail.
    pub const fn defined_by_pump_io(self) -> bool {
        matches!(
            self,
            Reason::NoWorkers | Reason::BadDriver | Reason::AbortedRestart | Reason::InFlight | Reason::Incompatibility
        )
    }

    /// The reason whose wire text is `key` (the part before the first `:`).
    pub fn from_wire(key: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.wire() == key)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire())
    }
}

/// Why a started restart was aborted (`restart.abort` record `reason`; the
/// first part of the detail of [`Reason::Aborted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCause {
    /// A new worker exited, or could not be started.
    Exited,
    /// A new worker reported `ERROR=`.
    ReportedError,
    /// A new worker did not report `READY=1` within readyTimeout.
    NotReady,
}

impl AbortCause {
    pub const fn text(self) -> &'static str {
        match self {
            AbortCause::Exited => "new worker exited",
            AbortCause::ReportedError => "new worker reported an error",
            AbortCause::NotReady => "new worker not ready",
        }
    }
}

/// A refusal: the reason and what exactly was wrong (may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: Reason,
    pub detail: String,
}

impl Refused {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Refused {
        Refused { reason, detail: detail.into() }
    }
}

impl std::fmt::Display for Refused {
    /// `reason` or `reason: detail`: the text after `NACK `.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            f.write_str(self.reason.wire())
        } else {
            write!(f, "{}: {}", self.reason.wire(), self.detail)
        }
    }
}

/// The master's answer to a `RESTART` or `RESTART WAIT` of a control client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartAnswer {
    /// `ACK`: the probe passed and the rollout started (`RESTART`).
    Started,
    /// `ACK complete`: every new worker is ready, every old one gone (`RESTART WAIT`).
    Complete,
    /// `NACK <reason>[: <detail>]`.
    Refused(Refused),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_texts_are_distinct_and_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_wire(r.wire()), Some(r));
            assert!(!r.wire().contains(':') && !r.describe().contains('\n'), "{:?}", r);
        }
        assert_eq!(Reason::from_wire("nonsense"), None);
        assert_eq!(Refused::new(Reason::NoWorkers, "").to_string(), "no workers");
        assert_eq!(Refused::new(Reason::BadConfig, "x: bad").to_string(), "bad config: x: bad");
    }
}

//! The restart vocabulary: every reason a zero-downtime restart or an
//! in-place upgrade of the master is refused or aborted, with its wire text,
//! its description and its advice in one table, and the typed answers the
//! state machine gives a control client.
//!
//! Owns the words, not the decisions: which reason applies is decided by
//! [`crate::master::admission`] and the state machine; how an answer becomes a
//! line on the control socket is [`crate::control::render`]. Pure data, no I/O.
//! The reasons are stable strings (ARCHITECTURE.md, "Restart vocabulary";
//! zdrestartctl(8)); adding one means adding a variant here, its row in
//! `WORDS`, and a line in the man pages.

/// Why a restart (or an upgrade of the master) was refused or did not
/// complete. On the wire: `NACK <wire>` or `NACK <wire>: <detail>`; in the
/// `restart.refused` (`upgrade.refused`) log record and in STATUS
/// `last_restart.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A restart is being probed or rolled out.
    InFlight,
    /// An earlier restart was aborted: the master is in lockout.
    AbortedRestart,
    /// Not every worker of the current generation is ready.
    NotReady,
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
    /// A canary restart was rolled back (answer to `RESTART CANARY WAIT`
    /// when it happened before the canary stood).
    RolledBack,
    /// SIGUSR2 while the master starts (before it spawns its first
    /// generation: config, pidfile, listeners, probe): only
    /// in the `restart.refused` record, the control socket is not open yet.
    Starting,
    /// `UPGRADE`: the hand-over state could not be gathered (a worker or a
    /// control client that cannot be handed over, no executable).
    UpgradeNotPossible,
    /// `UPGRADE`: the executable on disk refused the hand-over in its check.
    UpgradeCheckFailed,
    /// `UPGRADE`: the exec itself failed; the master carries on.
    ExecFailed,
    /// `PROMOTE` or `ROLLBACK` without a canary to act on.
    NoCanary,
}

/// One row of the table: wire text, description, advice.
struct Words {
    wire: &'static str,
    describe: &'static str,
    advice: &'static str,
}

/// The words of each reason, in the order of [`Reason::ALL`] (a unit test
/// checks the order).
const WORDS: [Words; 17] = [
    Words {
        wire: "restart in flight",
        describe: "a zero-downtime restart is already in progress",
        advice: "Wait for it to end (`zdrestartctl restart --wait` reports the outcome, \
                 `zdrestartctl status` shows it), then retry if it is still needed.",
    },
    Words {
        wire: "aborted restart",
        describe: "an earlier zero-downtime restart was aborted: the master refuses restarts and respawns no workers",
        advice: "Workers still serving keep serving, but none that dies is replaced. Fix the cause \
                 (see the `restart.abort` record in the master's log), then restart the master as \
                 soon as possible: `zdrestartctl upgrade --wait` does it without downtime (the master \
                 re-executes itself in place with a fresh state and rolls every worker over), or a \
                 normal restart (stop and start the service).",
    },
    Words {
        wire: "not ready",
        describe: "not every worker of the current generation is ready (one is starting, being respawned, or hung and being replaced)",
        advice: "Wait until `zdrestartctl status` shows every worker ready, then retry: a restart is judged against a \
                 generation that serves. Workers that never become ready are not serving: the master's log says why \
                 they fail; fix that, and restart the master the normal way if nothing serves. Nothing was changed.",
    },
    Words {
        wire: "bad config",
        describe: "the config file on disk is unreadable, not JSON, or invalid",
        advice: "Fix the config file (`zdrestart --check` names the key and the problem), then retry. \
                 Nothing was changed.",
    },
    Words {
        wire: "listen address changed",
        describe: "`address` or `port` changed in the config",
        advice: "The listeners cannot move without downtime: restore the old `address`/`port`, or do \
                 a normal restart of the master (stop and start the service) to apply them.",
    },
    Words {
        wire: "no workers",
        describe: "fewer than 2 workers are configured",
        advice: "Zero-downtime restarts need `workers` of 2 or more, so that one can serve while \
                 another is replaced: raise it, or do a normal restart.",
    },
    Words {
        wire: "incompatibility",
        describe: "the new code reports another magic number than the code the master started with",
        advice: "Old and new code must not serve side by side (their magic numbers differ): do a \
                 normal restart of the master (stop and start the service) to switch to the new code.",
    },
    Words {
        wire: "probe failed",
        describe: "the probe of the new code failed, timed out, or reported an error",
        advice: "See the `restart.refused` record in the master's log for the probe's error (often \
                 a config the new worker cannot use, or an unreachable database), fix it, then retry. \
                 Nothing was changed.",
    },
    Words {
        wire: "bad driver",
        describe: "the workers' state is not shared by every worker (the `memory` driver, or a worker \
                   that does not say its state is shared)",
        advice: "Old and new workers serve side by side during a zero-downtime restart, so they must \
                 see the same data: use `\"driver\": \"sqlite\"` (one host: a database file every \
                 worker shares) or `\"driver\": \"mongodb\"` (several hosts); a worker program of \
                 your own says so with `SHARED=1` from its probe, or `\"sharedState\": true` without \
                 one. Or do a normal restart.",
    },
    Words {
        wire: "stopping",
        describe: "the master is stopping; the restart did not complete",
        advice: "Start the master again if it should be running.",
    },
    Words {
        wire: "aborted",
        describe: "the zero-downtime restart was aborted: a new worker failed (or a worker hung) before the restart completed",
        advice: "The master now refuses restarts and respawns no workers; workers still serving keep \
                 serving. See the `restart.abort` record in the master's log, fix the cause, then \
                 restart the master as soon as possible: `zdrestartctl upgrade --wait` does it without \
                 downtime (a fresh state, every worker rolled over), or a normal restart (stop and start \
                 the service).",
    },
    Words {
        wire: "rolled back",
        describe: "the canary restart was rolled back: the canary was stopped and every worker is of the old generation again",
        advice: "Nothing failed and the master is not locked out: fix the new code or configuration, then try again \
                 (`zdrestartctl restart --canary`).",
    },
    Words {
        wire: "starting",
        describe: "the master is starting: it has not started its first generation of workers yet",
        advice: "Wait until the master has started (`master.start` in its log), then retry.",
    },
    Words {
        wire: "upgrade not possible",
        describe: "the master could not prepare the hand-over",
        advice: "Nothing changed. The detail says what could not be handed over: a control client owed an \
                 answer, a worker not started yet, or a state that changed during each check of the new \
                 binary pass (retry); no executable resolved at start, or another upgrade in progress (wait \
                 for its answer). A lockout also ends with a normal restart of the master (stop and start \
                 the service).",
    },
    Words {
        wire: "upgrade check failed",
        describe: "the master's executable on disk refused to take the running master over (its check of the hand-over state failed)",
        advice: "Nothing changed. Read the detail: an incompatible hand-over version or a broken binary needs a normal \
                 restart of the master; a bad config must be fixed first.",
    },
    Words {
        wire: "exec failed",
        describe: "the master could not execute its executable on disk",
        advice: "Nothing changed; the master carries on. Check the file named in the detail (present, executable).",
    },
    Words {
        wire: "no canary",
        describe: "no canary to act on: `promote` needs a canary restart whose new worker has passed its soak, `rollback` one in progress",
        advice: "Nothing changed. `zdrestartctl status` shows the state: `canary` while a canary restart is in progress \
                 (its worker marked canary; `soaking` or `starting` until it stands); `zdrestartctl restart --canary` \
                 starts one.",
    },
];

impl Reason {
    /// Every reason: the refusals of a restart request first, in the order
    /// they are checked, then the ends of a restart that did not complete,
    /// then the refusals of an upgrade of the master, then that of `PROMOTE`
    /// and `ROLLBACK`.
    pub const ALL: [Reason; 17] = [
        Reason::InFlight,
        Reason::AbortedRestart,
        Reason::NotReady,
        Reason::BadConfig,
        Reason::ListenChanged,
        Reason::NoWorkers,
        Reason::Incompatibility,
        Reason::ProbeFailed,
        Reason::BadDriver,
        Reason::Stopping,
        Reason::Aborted,
        Reason::RolledBack,
        Reason::Starting,
        Reason::UpgradeNotPossible,
        Reason::UpgradeCheckFailed,
        Reason::ExecFailed,
        Reason::NoCanary,
    ];

    /// The refusals of a restart request, in the order they are checked.
    pub const REFUSALS: &'static [Reason] = Reason::ALL.split_at(9).0;

    /// The answers of the old image to an `UPGRADE` it refused, before any
    /// exec: nothing changed. (Any other answer comes from the new image:
    /// the master was upgraded, and the roll-over that followed was refused
    /// or aborted. The roll-over is the first event the new image handles,
    /// so it cannot meet `restart in flight`.)
    pub const UPGRADE_REFUSALS: [Reason; 5] =
        [Reason::InFlight, Reason::Stopping, Reason::UpgradeNotPossible, Reason::UpgradeCheckFailed, Reason::ExecFailed];

    const fn words(self) -> &'static Words {
        &WORDS[self as usize]
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
    /// A worker (new or old) missed its watchdog deadline during the restart.
    Hung,
}

impl AbortCause {
    pub const fn text(self) -> &'static str {
        match self {
            AbortCause::Exited => "new worker exited",
            AbortCause::ReportedError => "new worker reported an error",
            AbortCause::NotReady => "new worker not ready",
            AbortCause::Hung => "worker hung",
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

    /// A restart asked for while one is being probed or rolled out.
    pub fn in_flight() -> Refused {
        Refused::new(Reason::InFlight, "")
    }

    /// A restart asked for in lockout.
    pub fn aborted_restart() -> Refused {
        Refused::new(Reason::AbortedRestart, "restart the master as soon as possible: zdrestartctl upgrade --wait, or a normal restart")
    }

    /// A restart asked for while the current generation is not all ready.
    pub fn not_ready() -> Refused {
        Refused::new(Reason::NotReady, "not every worker of the current generation is ready")
    }

    /// A restart asked for while the master stops.
    pub fn stopping() -> Refused {
        Refused::new(Reason::Stopping, "the master is stopping")
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

/// The master's answer to a control client's `RESTART`, `RESTART WAIT` or
/// `UPGRADE`: the commands whose answer the state machine gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartAnswer {
    /// `ACK`: the probe passed and the rollout started (`RESTART`).
    Started,
    /// `ACK upgraded <version>`: this image took the master over (`UPGRADE`
    /// without `WAIT`, or with `NORESTART`).
    Upgraded,
    /// `ACK complete`: every new worker is ready, every old one gone (`RESTART WAIT`).
    Complete,
    /// `ACK canary`: the canary passed its soak and stands beside the old
    /// fleet (`RESTART CANARY WAIT`).
    CanaryStands,
    /// `ACK`: `PROMOTE` (without `WAIT`) or `ROLLBACK` done.
    Accepted,
    /// `NACK <reason>[: <detail>]`.
    Refused(Refused),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_texts_are_distinct_and_round_trip() {
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i, "WORDS is in the order of ALL");
            assert_eq!(Reason::from_wire(r.wire()), Some(r));
            assert!(!r.wire().contains(':') && !r.describe().contains('\n'), "{:?}", r);
        }
        assert_eq!(Reason::from_wire("nonsense"), None);
        assert_eq!(Refused::new(Reason::NoWorkers, "").to_string(), "no workers");
        assert_eq!(Refused::new(Reason::BadConfig, "x: bad").to_string(), "bad config: x: bad");
    }
}

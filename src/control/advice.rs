//! The words an operator reads about a NACK: what it means and what to do.
//! Shared by `zdrestartctl` and `zdrestart --check`.
//!
//! Owns only the protocol NACKs' wording; the restart and upgrade reasons
//! carry their own ([`crate::restart::Reason::describe`], [`Reason::advice`]).
//! Pure.

use super::wire::{NACK_INVALID, NACK_LINE_TOO_LONG, NACK_TOO_MANY_CLIENTS, NACK_UNKNOWN, NACK_UNKNOWN_ARGUMENT};
use crate::restart::Reason;

/// The stable part of a reason: what comes before the first `:` (`aborted:
/// new worker 12 exited` → `aborted`), trimmed.
pub fn reason_key(reason: &str) -> &str {
    reason.split(':').next().unwrap_or("").trim()
}

/// (description, advice) of a protocol NACK.
fn protocol_words(key: &str) -> Option<(&'static str, &'static str)> {
    let check_version = "Check that zdrestartctl and the running master are the same version (`zdrestartctl version`).";
    let levels = "the log level must be one of trace, debug, info, warn, error, fatal, or restore";
    Some(match key {
        NACK_UNKNOWN => ("the master does not know this command", check_version),
        NACK_UNKNOWN_ARGUMENT => ("the master does not accept this argument", check_version),
        NACK_INVALID => (levels, "Use one of: trace debug info warn error fatal restore."),
        NACK_LINE_TOO_LONG => (
            "the command line was longer than the master accepts",
            "Send shorter command lines (at most 4096 bytes).",
        ),
        NACK_TOO_MANY_CLIENTS => (
            "too many clients are connected to the control socket, all waiting for an answer from the master",
            "Retry in a moment, once some of them are answered (such as a `zdrestartctl restart \
             --wait` that waits for a restart to end); idle connections would have made room.",
        ),
        _ => return None,
    })
}

/// What a reason means, in one sentence for an operator.
pub fn describe(reason: &str) -> &'static str {
    let key = reason_key(reason);
    match Reason::from_wire(key) {
        Some(r) => r.describe(),
        None => protocol_words(key).map_or("the master refused", |w| w.0),
    }
}

/// What an operator should do next about a reason (a restart refusal,
/// `aborted: ...` from `RESTART WAIT`, or a protocol NACK).
pub fn advice(reason: &str) -> &'static str {
    let key = reason_key(reason);
    match Reason::from_wire(key) {
        Some(r) => r.advice(),
        None => protocol_words(key).map_or("See the master's log for details.", |w| w.1),
    }
}

/// The full text for an operator: `<reason>: <describe>.\n<advice>`.
pub fn operator_message(reason: &str) -> String {
    format!("{}: {}.\n{}", reason, describe(reason), advice(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_covers_every_reason() {
        let generic = advice("something nobody defined");
        for r in Reason::ALL {
            assert_ne!(advice(r.wire()), generic, "{}", r);
            assert_ne!(describe(r.wire()), describe("something nobody defined"), "{}", r);
        }
        for r in [
            "aborted: new worker 1234 exited with status 1",
            NACK_UNKNOWN,
            NACK_UNKNOWN_ARGUMENT,
            NACK_INVALID,
            NACK_LINE_TOO_LONG,
            NACK_TOO_MANY_CLIENTS,
        ] {
            assert_ne!(advice(r), generic, "{}", r);
        }
    }

    #[test]
    fn advice_wording() {
        assert_eq!(reason_key("aborted: new worker 1234 exited with status 1"), "aborted");
        assert_eq!(reason_key("bad config"), "bad config");
        let a = advice("aborted: new worker 1234 exited with status 1");
        assert!(a.contains("refuses restarts") && a.contains("respawns no workers"), "{}", a);
        assert!(a.contains("restart the master as soon as possible"), "{}", a);
        assert!(advice(Reason::AbortedRestart.wire()).contains("restart the master as soon as possible"));
        assert!(advice(Reason::ListenChanged.wire()).contains("normal restart"));
        assert!(advice(Reason::BadConfig.wire()).contains("zdrestart --check"));
        let m = operator_message("aborted: new worker 1234 exited with status 1");
        assert!(m.starts_with("aborted: new worker 1234 exited with status 1: the zero-downtime restart was aborted"));
        assert!(!describe(Reason::BadDriver.wire()).contains('\n'));
    }
}

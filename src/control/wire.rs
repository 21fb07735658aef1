//! The control protocol on the wire: command lines in, `ACK`/`NACK` lines
//! out. Pure: parsing and formatting, no sockets (those are [`super::server`]).
//!
//! Owns the command names, the protocol's own NACK reasons and the rendering
//! of the state machine's typed restart answers ([`render`]). The protocol is
//! described in ARCHITECTURE.md ("The control protocol") and zdrestartctl(8).
//!
//! # Compatibility with pump.io's control socket
//!
//! What pump.io does, from its sources (`pump-io/pump.io`, `doc/pump.socket.7`,
//! the pump.socket(7) man page written with the implementation in pull request
//! #1662 "Introduce a control socket", 2018, and `bin/pumpctl`, its client):
//! - one command a line, terminated by a newline; command names are
//!   case-insensitive and traditionally written in uppercase;
//! - the answer is `ACK` directly followed by a newline, or `ACK <data>\n`
//!   (a single space, then data without newline or NUL), or `NACK <reason>\n`;
//!   a NACK always carries a reason; reasons are stable across versions;
//! - any unrecognised command answers `NACK unknown`;
//! - `LOGLEVEL <level>` answers `ACK`, and its only NACK reason is `invalid`
//!   (not a valid log level);
//! - `CMDS` answers a space-separated, uppercase list of the commands the
//!   daemon understands, and never NACKs; `VERSION` answers `ACK <version of the
//!   master>` and never NACKs;
//! - `RESTART` answers `ACK` once the restart is queued (not complete), or NACK
//!   with `no workers`, `bad driver`, `aborted restart`, `restart in flight`,
//!   `incompatibility` ("other reason strings may be added");
//! - `LOGLEVEL <level>` takes a bunyan level (`fatal error warn info debug
//!   trace`) or `restore` (pumpctl's list);
//! - a client need not wait for an answer before sending the next command
//!   (pipelining); `echo RESTART | nc -U pump.socket` is the documented use;
//! - the socket is created read-write for its owner only.
//!
//! pump.io's client splits input with the npm `split` module, whose default
//! separator is `/\r?\n/`: we accept `\r\n` too, and answer with `\n` only.
//! Where the sources are silent we chose: a last line without newline before
//! EOF counts as a line (what `split` does at end of stream); blank lines are
//! ignored; extra or wrong arguments of `RESTART` and `STATUS` answer `NACK
//! unknown argument`. Wherever pump.socket(7) defines an answer, the wire
//! text is exactly its text and any detail goes to the master's log: a
//! missing, unknown or extra `LOGLEVEL` argument answers `NACK invalid`;
//! `CMDS` and `VERSION` never NACK (pump.io ignores their arguments, so do
//! we); `RESTART` refused for one of pump.io's five reasons answers exactly
//! `NACK <reason>` (the detail is in the `restart.refused` record and in
//! STATUS `last_restart`; [`crate::restart::Reason::defined_by_pump_io`]).
//!
//! zdrestart adds `STATUS`, `RESTART WAIT`, `RESTART CANARY`, `PROMOTE`,
//! `ROLLBACK`, `UPGRADE` and the reasons `bad config`, `listen address
//! changed`, `probe failed`, ... ([`crate::restart::Reason`]). A `RESTART`
//! with no argument is answered exactly as pump.socket(7) says.

use crate::restart::RestartAnswer;

/// Line terminator of answers (pump.io: a newline, no carriage return).
pub const LINE_END: &str = "\n";

/// Commands the master understands, as `CMDS` lists them (pump.io: uppercase,
/// separated by one space).
pub const COMMANDS: &[&str] = &["CMDS", "VERSION", "LOGLEVEL", "STATUS", "RESTART", "UPGRADE", "PROMOTE", "ROLLBACK"];

/// NACK reasons of the protocol itself (stable strings). The restart
/// reasons are [`crate::restart::Reason`].
pub const NACK_UNKNOWN: &str = "unknown";
pub const NACK_UNKNOWN_ARGUMENT: &str = "unknown argument";
/// pump.socket(7): "The only NACK reason string that this command
/// [LOGLEVEL] returns is `invalid`".
pub const NACK_INVALID: &str = "invalid";
pub const NACK_LINE_TOO_LONG: &str = "line too long";
pub const NACK_TOO_MANY_CLIENTS: &str = "too many clients";
/// The first word of a streamed step (`RESTART WAIT PROGRESS`, `PROMOTE
/// WAIT PROGRESS`, `UPGRADE WAIT PROGRESS`): `PROGRESS <one-line JSON>`,
/// zero or more before the one answer line (`ACK ...` or `NACK ...`).
pub const PROGRESS: &str = "PROGRESS";
/// Data of the `ACK` that answers `RESTART WAIT` when the restart completed.
pub const ACK_COMPLETE: &str = "complete";
/// Data of the `ACK` that answers `RESTART CANARY WAIT` once the canary
/// stands (passed its soak, beside the old fleet).
pub const ACK_CANARY: &str = "canary";

/// One command read from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `CMDS`: answer [`cmds_answer`].
    Cmds,
    /// `VERSION`: answer `ACK <version>`.
    Version,
    /// `LOGLEVEL <level>` (`fatal` is `Error`).
    LogLevel(log::LevelFilter),
    /// `LOGLEVEL restore`: back to the level of the config.
    LogLevelRestore,
    /// `STATUS`: `ACK <one-line JSON>` ([`crate::status::StatusReport`]).
    Status,
    /// `RESTART` (answer when accepted or refused) or `RESTART WAIT` (answer
    /// when the restart ends: `ACK complete`, or `NACK <reason>`); with
    /// `CANARY` (zdrestart's own): start one new worker beside the old fleet
    /// and stop there (`WAIT`: answer `ACK canary` once it stands).
    /// `PROGRESS` (with `WAIT` only, zdrestart's own): before the answer,
    /// one `PROGRESS <json>` line per step of the restart ([`PROGRESS`]).
    Restart { wait: bool, canary: bool, progress: bool },
    /// `PROMOTE [WAIT]`: carry a canary restart on (`WAIT`: answer when it
    /// ends, as `RESTART WAIT`).
    Promote { wait: bool, progress: bool },
    /// `ROLLBACK`: stop the canary, the old fleet serves on.
    Rollback,
    /// `UPGRADE [WAIT] [NORESTART]`: re-exec the master in place (zdrestart's
    /// own). Answered by the new image: `ACK upgraded <version>`, or with
    /// `WAIT` when the roll-over that follows ends (`ACK complete` or `NACK
    /// <reason>`); `NACK <reason>` when refused.
    Upgrade { wait: bool, restart: bool, progress: bool },
    /// Not a command: answer `NACK unknown` ([`NACK_UNKNOWN`]). Holds the word.
    Unknown(String),
    /// A known command used wrongly: answer `NACK <nack>`; `detail` says
    /// what was wrong, for the log only (the wire text is pump.io's).
    Bad { nack: &'static str, detail: String },
}

impl Command {
    /// Answered later, by the state machine (`RESTART` after its probe,
    /// `RESTART WAIT` when the restart ends, `UPGRADE` by the new image):
    /// the server marks the client waiting until then.
    pub fn deferred(&self) -> bool {
        matches!(self, Command::Restart { .. } | Command::Upgrade { .. } | Command::Promote { .. } | Command::Rollback)
    }
}

/// Parse one line (without or with its line terminator). `None` for a blank
/// line, which is ignored (no answer). Case-insensitive.
pub fn parse_command(line: &str) -> Option<Command> {
    let mut words = line.split_ascii_whitespace();
    let first = words.next()?;
    let rest: Vec<&str> = words.collect();
    let bad = |nack: &'static str, detail: String| Some(Command::Bad { nack, detail });
    let cmd = first.to_ascii_uppercase();
    match cmd.as_str() {
        "CMDS" | "VERSION" | "STATUS" => {
            // pump.socket(7): CMDS and VERSION do not return NACK (pump.io
            // ignores their arguments); STATUS is ours.
            if !rest.is_empty() && cmd == "STATUS" {
                return bad(NACK_UNKNOWN_ARGUMENT, format!("STATUS takes no argument, got \"{}\"", rest.join(" ")));
            }
            Some(match cmd.as_str() {
                "CMDS" => Command::Cmds,
                "VERSION" => Command::Version,
                _ => Command::Status,
            })
        }
        "LOGLEVEL" => match rest.as_slice() {
            [] => bad(NACK_INVALID, "LOGLEVEL: missing level".into()),
            [level] if level.eq_ignore_ascii_case("restore") => Some(Command::LogLevelRestore),
            [level] => match crate::config::parse_level(level) {
                Some(l) => Some(Command::LogLevel(l)),
                None => bad(NACK_INVALID, format!("LOGLEVEL: unknown level \"{}\"", level)),
            },
            _ => bad(NACK_INVALID, format!("LOGLEVEL: one level expected, got \"{}\"", rest.join(" "))),
        },
        "RESTART" => match flags(&rest, ["WAIT", "CANARY", "PROGRESS"]) {
            Some([wait, canary, progress]) if wait || !progress => Some(Command::Restart { wait, canary, progress }),
            _ => bad(NACK_UNKNOWN_ARGUMENT, format!("RESTART: unknown argument \"{}\" (PROGRESS needs WAIT)", rest.join(" "))),
        },
        "PROMOTE" => match flags(&rest, ["WAIT", "PROGRESS"]) {
            Some([wait, progress]) if wait || !progress => Some(Command::Promote { wait, progress }),
            _ => bad(NACK_UNKNOWN_ARGUMENT, format!("PROMOTE: unknown argument \"{}\" (PROGRESS needs WAIT)", rest.join(" "))),
        },
        "ROLLBACK" => match rest.as_slice() {
            [] => Some(Command::Rollback),
            _ => bad(NACK_UNKNOWN_ARGUMENT, format!("ROLLBACK takes no argument, got \"{}\"", rest.join(" "))),
        },
        "UPGRADE" => match flags(&rest, ["WAIT", "NORESTART", "PROGRESS"]) {
            Some([wait, norestart, progress]) if wait || !progress => Some(Command::Upgrade { wait, restart: !norestart, progress }),
            _ => bad(NACK_UNKNOWN_ARGUMENT, format!("UPGRADE: unknown argument \"{}\"", rest.join(" "))),
        },
        _ => Some(Command::Unknown(first.to_string())),
    }
}

/// Which of the words `known` are among `words` (case-insensitive, any
/// order); None when a word is unknown or given twice.
fn flags<const N: usize>(words: &[&str], known: [&str; N]) -> Option<[bool; N]> {
    let mut set = [false; N];
    for w in words {
        let i = known.iter().position(|k| k.eq_ignore_ascii_case(w))?;
        if std::mem::replace(&mut set[i], true) {
            return None;
        }
    }
    Some(set)
}

/// `ACK` alone (empty `data`) or `ACK <data>`.
pub fn ack(data: &str) -> String {
    if data.is_empty() {
        "ACK".to_string()
    } else {
        format!("ACK {}", data)
    }
}

/// `NACK <reason>`.
pub fn nack(reason: &str) -> String {
    format!("NACK {}", reason)
}

/// The answer to `CMDS`: `ACK CMDS VERSION LOGLEVEL STATUS RESTART UPGRADE
/// PROMOTE ROLLBACK`.
pub fn cmds_answer() -> String {
    ack(&COMMANDS.join(" "))
}

/// An answer line as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `ACK` (empty data) or `ACK <data>`.
    Ack(String),
    /// `NACK <reason>` (pump.io: a NACK always has a reason).
    Nack(String),
}

/// Parse an answer line (a trailing `\n` or `\r\n` is ignored). `None` if the
/// line is neither `ACK...` nor `NACK...`.
pub fn parse_answer(line: &str) -> Option<Answer> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line == "ACK" {
        return Some(Answer::Ack(String::new()));
    }
    if let Some(d) = line.strip_prefix("ACK ") {
        return Some(Answer::Ack(d.to_string()));
    }
    if line == "NACK" {
        return Some(Answer::Nack(String::new()));
    }
    if let Some(r) = line.strip_prefix("NACK ") {
        return Some(Answer::Nack(r.to_string()));
    }
    None
}

/// The line for an answer of the state machine: `ACK`, `ACK complete`,
/// `ACK canary`, `ACK upgraded <version>`, `NACK <reason>` or `NACK
/// <reason>: <detail>`.
pub fn render(answer: &RestartAnswer) -> String {
    match answer {
        RestartAnswer::Started | RestartAnswer::Accepted => ack(""),
        RestartAnswer::CanaryStands => ack(ACK_CANARY),
        RestartAnswer::Upgraded => ack(&format!("upgraded {}", crate::VERSION)),
        RestartAnswer::Complete => ack(ACK_COMPLETE),
        RestartAnswer::Refused(r) => nack(&r.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restart::{Reason, Refused};
    use log::LevelFilter;

    #[test]
    fn parse_basic_commands() {
        assert_eq!(parse_command("CMDS"), Some(Command::Cmds));
        assert_eq!(parse_command("cmds\n"), Some(Command::Cmds));
        assert_eq!(parse_command("Version\r\n"), Some(Command::Version));
        assert_eq!(parse_command("  status  "), Some(Command::Status));
        assert_eq!(parse_command("RESTART"), Some(Command::Restart { wait: false, canary: false, progress: false }));
        assert_eq!(parse_command("restart wait"), Some(Command::Restart { wait: true, canary: false, progress: false }));
        assert_eq!(parse_command("RESTART\tWait"), Some(Command::Restart { wait: true, canary: false, progress: false }));
        assert_eq!(parse_command("RESTART canary"), Some(Command::Restart { wait: false, canary: true, progress: false }));
        assert_eq!(parse_command("restart WAIT Canary"), Some(Command::Restart { wait: true, canary: true, progress: false }));
        assert_eq!(parse_command("PROMOTE"), Some(Command::Promote { wait: false, progress: false }));
        assert_eq!(parse_command("promote wait"), Some(Command::Promote { wait: true, progress: false }));
        assert_eq!(parse_command("restart wait progress"), Some(Command::Restart { wait: true, canary: false, progress: true }));
        assert_eq!(parse_command("PROMOTE PROGRESS WAIT"), Some(Command::Promote { wait: true, progress: true }));
        assert_eq!(parse_command("upgrade wait progress"), Some(Command::Upgrade { wait: true, restart: true, progress: true }));
        for no_wait in ["RESTART PROGRESS", "PROMOTE PROGRESS", "UPGRADE PROGRESS", "RESTART WAIT PROGRESS PROGRESS"] {
            assert!(matches!(parse_command(no_wait), Some(Command::Bad { nack: NACK_UNKNOWN_ARGUMENT, .. })), "{}", no_wait);
        }
        assert_eq!(parse_command("Rollback"), Some(Command::Rollback));
    }

    #[test]
    fn parse_blank_and_unknown() {
        assert_eq!(parse_command(""), None);
        assert_eq!(parse_command("   \r\n"), None);
        assert_eq!(parse_command("HELLO there"), Some(Command::Unknown("HELLO".into())));
        let nack_of = |l: &str| match parse_command(l) {
            Some(Command::Bad { nack, .. }) => nack,
            other => panic!("{:?}: {:?}", l, other),
        };
        assert_eq!(nack_of("RESTART NOW"), NACK_UNKNOWN_ARGUMENT);
        assert_eq!(nack_of("RESTART CANARY CANARY"), NACK_UNKNOWN_ARGUMENT);
        assert_eq!(nack_of("PROMOTE NOW"), NACK_UNKNOWN_ARGUMENT);
        assert_eq!(nack_of("ROLLBACK WAIT"), NACK_UNKNOWN_ARGUMENT);
        assert_eq!(nack_of("STATUS x"), NACK_UNKNOWN_ARGUMENT);
        // pump.socket(7): CMDS and VERSION do not return NACK.
        assert_eq!(parse_command("CMDS x"), Some(Command::Cmds));
        assert_eq!(parse_command("VERSION x y"), Some(Command::Version));
    }

    #[test]
    fn parse_loglevel() {
        assert_eq!(parse_command("LOGLEVEL debug"), Some(Command::LogLevel(LevelFilter::Debug)));
        assert_eq!(parse_command("loglevel TRACE"), Some(Command::LogLevel(LevelFilter::Trace)));
        assert_eq!(parse_command("LOGLEVEL fatal"), Some(Command::LogLevel(LevelFilter::Error)));
        assert_eq!(parse_command("LOGLEVEL warn"), Some(Command::LogLevel(LevelFilter::Warn)));
        assert_eq!(parse_command("LOGLEVEL Restore"), Some(Command::LogLevelRestore));
        // pump.socket(7): `invalid` is LOGLEVEL's only NACK reason.
        for l in ["LOGLEVEL", "LOGLEVEL loud", "LOGLEVEL info debug"] {
            assert!(matches!(parse_command(l), Some(Command::Bad { nack: NACK_INVALID, .. })), "{}", l);
        }
    }

    #[test]
    fn answers() {
        assert_eq!(ack(""), "ACK");
        assert_eq!(ack("0.1.0"), "ACK 0.1.0");
        assert_eq!(nack("unknown"), "NACK unknown");
        assert_eq!(cmds_answer(), "ACK CMDS VERSION LOGLEVEL STATUS RESTART UPGRADE PROMOTE ROLLBACK");
        assert_eq!(parse_answer("ACK\n"), Some(Answer::Ack(String::new())));
        assert_eq!(parse_answer("ACK complete\r\n"), Some(Answer::Ack("complete".into())));
        assert_eq!(parse_answer("NACK bad driver\n"), Some(Answer::Nack("bad driver".into())));
        assert_eq!(parse_answer("ACKNOWLEDGED"), None);
        assert_eq!(parse_answer("hello"), None);
    }

    #[test]
    fn renders_restart_answers() {
        assert_eq!(render(&RestartAnswer::Started), "ACK");
        assert_eq!(render(&RestartAnswer::Complete), "ACK complete");
        assert_eq!(render(&RestartAnswer::CanaryStands), "ACK canary");
        assert_eq!(render(&RestartAnswer::Accepted), "ACK");
        assert_eq!(render(&RestartAnswer::Upgraded), format!("ACK upgraded {}", crate::VERSION));
        assert_eq!(render(&RestartAnswer::Refused(Refused::new(Reason::Stopping, ""))), "NACK stopping");
        let r = Refused::new(Reason::Aborted, "new worker exited: new worker 12 exited (exit status 1)");
        assert_eq!(render(&RestartAnswer::Refused(r)), "NACK aborted: new worker exited: new worker 12 exited (exit status 1)");
    }

    #[test]
    fn parses_upgrade() {
        assert_eq!(parse_command("upgrade"), Some(Command::Upgrade { wait: false, restart: true, progress: false }));
        assert_eq!(parse_command("UPGRADE wait NoRestart"), Some(Command::Upgrade { wait: true, restart: false, progress: false }));
        assert_eq!(parse_command("UPGRADE norestart WAIT"), Some(Command::Upgrade { wait: true, restart: false, progress: false }));
        for bad in ["UPGRADE now", "UPGRADE WAIT WAIT", "UPGRADE NORESTART NORESTART"] {
            assert!(matches!(parse_command(bad), Some(Command::Bad { nack: NACK_UNKNOWN_ARGUMENT, .. })), "{}", bad);
        }
    }
}

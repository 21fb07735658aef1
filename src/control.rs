//! The control socket of the master (DESIGN.md section 8): transport, command
//! parsing, and the shared wording of refusal reasons and operator advice.
//!
//! Owns: the Unix socket file (created mode 0600, a stale one replaced, a live
//! one never stolen, removed by [`ControlServer::close`]), the non-blocking
//! handling of clients inside the master's `poll(2)` loop, the line protocol
//! (framing, bounds, answers) and the text `zdrestartctl` and `zdrestart
//! --check` show to an operator ([`advice`], [`describe`]). It does not decide
//! anything about restarts: the master turns each [`Command`] into exactly one
//! answer line ([`ControlServer::reply`]).
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
//! STATUS `last_restart`).
//!
//! zdrestart adds `STATUS`, `RESTART WAIT` and the reasons `bad config`,
//! `listen address changed`, `probe failed` (DESIGN.md section 4).
//!
//! # Bounds (no client can block, crash or slow the master)
//!
//! Everything is non-blocking. Per wake-up a client costs at most one `read`
//! of [`READ_CHUNK`] bytes and the answers to the lines it completed; the
//! listener accepts at most [`MAX_ACCEPT_PER_CALL`] connections per wake-up.
//! - a line longer than [`Limits::max_line`] (4096 bytes) answers
//!   `NACK line too long` and the client is closed once that answer is sent;
//! - at most [`Limits::max_clients`] (64) clients are connected. When the
//!   table is full, a new connection evicts one client (see *Eviction* below)
//!   and is served; only when no client is evictable is it answered `NACK too
//!   many clients` (best effort, never waiting) and closed;
//! - answers waiting for a client that does not read are bounded by
//!   [`Limits::max_output`] (64 KiB): past it the client is dropped. The
//!   master also stops reading from a client while an answer to it is still
//!   unsent, so a client that never reads stalls only itself;
//! - a client with no activity (nothing read from it, nothing written to it)
//!   for [`Limits::idle_timeout`] (60 s) is closed, except while the master
//!   owes it the answer to `RESTART WAIT` ([`ControlServer::set_waiting`]).
//!
//! Answers come back in the order of the commands: while a client waits for
//! the answer to `RESTART WAIT`, its further lines are not read (they stay in
//! the socket) and are handled once that answer is sent.
//!
//! # Eviction (a full table never locks the operator out)
//!
//! Idle or hostile clients cannot keep `zdrestartctl` out until they time out.
//! When a connection arrives and [`Limits::max_clients`] clients are
//! connected, the server closes the *evictable* client that has been idle
//! longest (oldest last activity: a byte read from it or written to it; ties:
//! the oldest connection), logs that at debug level, and accepts the new one.
//!
//! A client is evictable when the master owes it nothing: it is not marked
//! waiting ([`ControlServer::set_waiting`], i.e. `RESTART WAIT`, or `RESTART`
//! while its probe runs) and every command handed out for it was answered
//! ([`ControlServer::reply`]). Whatever else its state, it is evictable: idle
//! after its answers, connected without sending anything, in the middle of a
//! line, or stalled with answers queued that it does not read (its unsent
//! answers are dropped with it). A client owed an answer, above all one
//! waiting for `RESTART WAIT`, is never evicted. Only when no client is
//! evictable is the new connection refused with `NACK too many clients`.
//!
//! An evicted client's socket is shut down at once (its peer sees EOF) and
//! its fd is closed at the next [`ControlServer::expire`], so that a fd
//! number of the current round of `poll(2)` results never names two clients.
//! A client that sends its command right after connecting is read within a
//! wake-up or two, before [`MAX_ACCEPT_PER_CALL`] (16) connections per wake-up
//! can push it to the head of the eviction order.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Identifies one connected client for the life of the server (never reused).
pub type ClientId = u64;

/// Longest command line accepted, in bytes, without its newline.
pub const MAX_LINE: usize = 4096;
/// Most clients connected at once.
pub const MAX_CLIENTS: usize = 64;
/// Most answer bytes queued for one client that does not read them.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// A client with no activity for this long is closed (unless waiting).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from one client per wake-up.
pub const READ_CHUNK: usize = 4096;
/// Connections accepted per wake-up of the listener.
pub const MAX_ACCEPT_PER_CALL: usize = 16;
/// Line terminator of answers (pump.io: a newline, no carriage return).
pub const LINE_END: &str = "\n";

/// Commands the master understands, as `CMDS` lists them (pump.io: uppercase,
/// separated by one space).
pub const COMMANDS: &[&str] = &["CMDS", "VERSION", "LOGLEVEL", "STATUS", "RESTART"];

/// NACK reasons of the protocol itself (stable strings).
pub const NACK_UNKNOWN: &str = "unknown";
pub const NACK_UNKNOWN_ARGUMENT: &str = "unknown argument";
/// pump.socket(7): "The only NACK reason string that this command
/// [LOGLEVEL] returns is `invalid`".
pub const NACK_INVALID: &str = "invalid";
pub const NACK_LINE_TOO_LONG: &str = "line too long";
pub const NACK_TOO_MANY_CLIENTS: &str = "too many clients";

/// Refusal reasons of DESIGN.md section 4 (stable strings, also in the
/// `restart.refused` log record).
pub const REASON_RESTART_IN_FLIGHT: &str = "restart in flight";
pub const REASON_ABORTED_RESTART: &str = "aborted restart";
pub const REASON_BAD_CONFIG: &str = "bad config";
pub const REASON_LISTEN_ADDRESS_CHANGED: &str = "listen address changed";
pub const REASON_NO_WORKERS: &str = "no workers";
pub const REASON_BAD_DRIVER: &str = "bad driver";
pub const REASON_INCOMPATIBILITY: &str = "incompatibility";
pub const REASON_PROBE_FAILED: &str = "probe failed";
/// Prefix of the answer to `RESTART WAIT` when the rollout was aborted:
/// `NACK aborted: <detail>`.
pub const REASON_ABORTED: &str = "aborted";
/// Answer to `RESTART WAIT` when the master stops before the restart ends.
pub const REASON_STOPPING: &str = "stopping";
/// Data of the `ACK` that answers `RESTART WAIT` when the restart completed.
pub const ACK_COMPLETE: &str = "complete";

/// The refusal reasons of section 4, in the order the master checks them.
pub const REFUSAL_REASONS: &[&str] = &[
    REASON_RESTART_IN_FLIGHT,
    REASON_ABORTED_RESTART,
    REASON_BAD_CONFIG,
    REASON_LISTEN_ADDRESS_CHANGED,
    REASON_NO_WORKERS,
    REASON_BAD_DRIVER,
    REASON_INCOMPATIBILITY,
    REASON_PROBE_FAILED,
];

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
    /// `STATUS`: `ACK <one-line JSON>` ([`StatusReport`]).
    Status,
    /// `RESTART` (answer when accepted or refused) or `RESTART WAIT` (answer
    /// when the restart ends: `ACK complete`, or `NACK <reason>`; call
    /// [`ControlServer::set_waiting`] while it runs).
    Restart { wait: bool },
    /// Not a command: answer `NACK unknown` ([`NACK_UNKNOWN`]). Holds the word.
    Unknown(String),
    /// A known command used wrongly: answer `NACK <nack>`; `detail` says
    /// what was wrong, for the log only (the wire text is pump.io's).
    Bad { nack: &'static str, detail: String },
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
        "RESTART" => match rest.as_slice() {
            [] => Some(Command::Restart { wait: false }),
            [w] if w.eq_ignore_ascii_case("wait") => Some(Command::Restart { wait: true }),
            _ => bad(NACK_UNKNOWN_ARGUMENT, format!("RESTART: unknown argument \"{}\"", rest.join(" "))),
        },
        _ => Some(Command::Unknown(first.to_string())),
    }
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

/// The answer to `CMDS`: `ACK CMDS VERSION LOGLEVEL STATUS RESTART`.
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

/// The stable part of a reason: what comes before the first `:` (`aborted:
/// new worker 12 exited` → `aborted`), trimmed.
pub fn reason_key(reason: &str) -> &str {
    reason.split(':').next().unwrap_or("").trim()
}

/// What a reason means, in one sentence for an operator. Shared by
/// `zdrestartctl` and `zdrestart --check`.
pub fn describe(reason: &str) -> &'static str {
    match reason_key(reason) {
        REASON_RESTART_IN_FLIGHT => "a zero-downtime restart is already in progress",
        REASON_ABORTED_RESTART => {
            "an earlier zero-downtime restart was aborted: the master refuses restarts and respawns no workers"
        }
        REASON_BAD_CONFIG => "the config file on disk is unreadable, not JSON, or invalid",
        REASON_LISTEN_ADDRESS_CHANGED => "`address` or `port` changed in the config",
        REASON_NO_WORKERS => "fewer than 2 workers are configured",
        REASON_BAD_DRIVER => "the configured driver is not `mongodb`",
        REASON_INCOMPATIBILITY => "the new code reports another magic number than the code the master started with",
        REASON_PROBE_FAILED => "the probe of the new code failed, timed out, or reported an error",
        REASON_ABORTED => "the zero-downtime restart was aborted: a new worker failed before the restart completed",
        REASON_STOPPING => "the master is stopping; the restart did not complete",
        NACK_UNKNOWN => "the master does not know this command",
        NACK_UNKNOWN_ARGUMENT => "the master does not accept this argument",
        NACK_INVALID => {
            "the log level must be one of trace, debug, info, warn, error, fatal, or restore"
        }
        NACK_LINE_TOO_LONG => "the command line was longer than the master accepts",
        NACK_TOO_MANY_CLIENTS => {
            "too many clients are connected to the control socket, all waiting for an answer from the master"
        }
        _ => "the master refused",
    }
}

/// What an operator should do next about a reason (refusal of section 4,
/// `aborted: ...` from `RESTART WAIT`, or a protocol NACK). Shared by
/// `zdrestartctl` and `zdrestart --check`.
pub fn advice(reason: &str) -> &'static str {
    match reason_key(reason) {
        REASON_RESTART_IN_FLIGHT => {
            "Wait for it to end (`zdrestartctl restart --wait` reports the outcome, \
             `zdrestartctl status` shows it), then retry if it is still needed."
        }
        REASON_ABORTED_RESTART => {
            "Workers still serving keep serving, but none that dies is replaced. Fix the cause \
             (see the `restart.abort` record in the master's log), then restart the master as \
             soon as possible with a normal restart (stop and start the service)."
        }
        REASON_BAD_CONFIG => {
            "Fix the config file (`zdrestart --check` names the key and the problem), then retry. \
             Nothing was changed."
        }
        REASON_LISTEN_ADDRESS_CHANGED => {
            "The listeners cannot move without downtime: restore the old `address`/`port`, or do \
             a normal restart of the master (stop and start the service) to apply them."
        }
        REASON_NO_WORKERS => {
            "Zero-downtime restarts need `workers` of 2 or more, so that one can serve while \
             another is replaced: raise it, or do a normal restart."
        }
        REASON_BAD_DRIVER => {
            "With the `memory` driver every worker has its own data, so old and new workers \
             cannot serve side by side: use `\"driver\": \"mongodb\"`, or do a normal restart."
        }
        REASON_INCOMPATIBILITY => {
            "Old and new code must not serve side by side (their magic numbers differ): do a \
             normal restart of the master (stop and start the service) to switch to the new code."
        }
        REASON_PROBE_FAILED => {
            "See the `restart.refused` record in the master's log for the probe's error (often \
             a config the new worker cannot use, or an unreachable database), fix it, then retry. \
             Nothing was changed."
        }
        REASON_ABORTED => {
            "The master now refuses restarts and respawns no workers; workers still serving keep \
             serving. See the `restart.abort` record in the master's log, fix the cause, then \
             restart the master as soon as possible (normal restart: stop and start the service)."
        }
        REASON_STOPPING => "Start the master again if it should be running.",
        NACK_UNKNOWN | NACK_UNKNOWN_ARGUMENT => {
            "Check that zdrestartctl and the running master are the same version (`zdrestartctl version`)."
        }
        NACK_INVALID => "Use one of: trace debug info warn error fatal restore.",
        NACK_LINE_TOO_LONG => "Send shorter command lines (at most 4096 bytes).",
        NACK_TOO_MANY_CLIENTS => {
            "Retry in a moment, once some of them are answered (such as a `zdrestartctl restart \
             --wait` that waits for a restart to end); idle connections would have made room."
        }
        _ => "See the master's log for details.",
    }
}

/// The full text for an operator: `<reason>: <describe>.\n<advice>`.
pub fn operator_message(reason: &str) -> String {
    format!("{}: {}.\n{}", reason, describe(reason), advice(reason))
}

/// The JSON of `STATUS` (one line after `ACK `). Offered to the master for
/// building it; `zdrestartctl` reads it leniently (unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `running`, `restarting`, `lockout` or `stopping`.
    pub state: String,
    pub generation: u64,
    pub lockout: bool,
    pub magic: u64,
    pub version: String,
    /// Pid of the master.
    pub pid: u32,
    /// When the master started (ISO 8601 UTC).
    pub started: String,
    /// `workers` of the config the current generation runs with.
    pub workers_configured: u32,
    /// `address:port` the master listens on (bound once, at start).
    pub listen: String,
    pub last_restart: Option<LastRestart>,
    pub workers: Vec<WorkerStatus>,
}

/// The last restart in [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRestart {
    /// None for a refused restart (no generation was started).
    pub generation: Option<u64>,
    pub started: String,
    /// `complete`, `refused`, `aborted` or `in progress`.
    pub outcome: String,
    pub reason: Option<String>,
    pub duration_ms: Option<u64>,
}

/// One worker in [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// None only between the decision to spawn and the fork.
    pub pid: Option<u32>,
    pub generation: u64,
    pub index: u32,
    /// `starting`, `ready` or `stopping`.
    pub state: String,
    pub started: String,
}

/// Bounds of a [`ControlServer`]. `Default` gives the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_line: usize,
    /// Most clients connected at once. When full, a new connection evicts
    /// the evictable client idle longest (one the master owes no answer: not
    /// waiting for `RESTART WAIT`, no command unanswered; stalled clients that
    /// do not read their answers included); only if none is evictable is it
    /// answered `NACK too many clients` and closed. See the module doc.
    pub max_clients: usize,
    pub max_output: usize,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_line: MAX_LINE, max_clients: MAX_CLIENTS, max_output: MAX_OUTPUT, idle_timeout: IDLE_TIMEOUT }
    }
}

struct Client {
    stream: UnixStream,
    fd: RawFd,
    /// Bytes read and not yet parsed (at most `max_line + READ_CHUNK`).
    inbuf: Vec<u8>,
    /// Answer bytes not yet written, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    last_activity: Instant,
    /// The master said it owes a `RESTART WAIT` answer: no idle timeout.
    waiting: bool,
    /// Commands handed to the master and not answered yet.
    owed: usize,
    /// The client shut its writing side (read returned 0).
    eof: bool,
    /// A line was too long: answer `NACK line too long` once `owed` is 0.
    too_long: bool,
    /// Read no more; close once `owed` is 0 and `out` is sent.
    closing: bool,
}

impl Client {
    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn has_line(&self) -> bool {
        self.inbuf.contains(&b'\n') || (self.eof && !self.inbuf.is_empty())
    }

    /// Queue one answer line; false if that overflows the output bound.
    fn queue(&mut self, line: &str, max_output: usize) -> bool {
        if self.pending() + line.len() + LINE_END.len() > max_output {
            return false;
        }
        if self.out_pos > 0 && self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        // An answer is one line: a newline or NUL inside would break framing.
        self.out.extend(line.bytes().map(|b| if b == b'\n' || b == b'\r' || b == 0 { b' ' } else { b }));
        self.out.extend_from_slice(LINE_END.as_bytes());
        true
    }

    /// Write what the socket takes now. Err: the client is gone.
    fn flush(&mut self, now: Instant) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match (&self.stream).write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => {
                    self.out_pos += n;
                    self.last_activity = now;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }

    /// May the server read more from this client now?
    fn may_read(&self) -> bool {
        !self.eof && !self.closing && self.owed == 0 && self.pending() == 0 && !self.has_line()
    }

    fn done(&self) -> bool {
        self.owed == 0 && self.pending() == 0 && (self.closing || (self.eof && self.inbuf.is_empty()))
    }

    /// May this client be closed to make room for a new one? Yes unless the
    /// master owes it an answer (module doc, *Eviction*).
    fn evictable(&self) -> bool {
        !self.waiting && self.owed == 0
    }
}

/// The control socket: a non-blocking listener and its clients, driven by the
/// master's poll loop ([`poll_fds`](Self::poll_fds), [`on_ready`](Self::on_ready),
/// [`next_deadline`](Self::next_deadline), [`expire`](Self::expire)).
///
/// The master must answer every command [`on_ready`](Self::on_ready) returns
/// with exactly one [`reply`](Self::reply) (at once, or later for `RESTART
/// WAIT`), in order.
///
/// Dropping it closes the fds but leaves the socket file: only
/// [`close`](Self::close) removes it, so that a failed start or a panic in a
/// test cannot remove a file it did not decide to remove; a file left behind
/// by a dead master is replaced by the next [`bind`](Self::bind).
pub struct ControlServer {
    path: PathBuf,
    listener: UnixListener,
    /// (device, inode) of the socket file we created, to remove only ours.
    ident: (u64, u64),
    limits: Limits,
    clients: BTreeMap<ClientId, Client>,
    next_id: ClientId,
    /// Evicted clients' sockets, shut down but not closed until the next
    /// [`expire`](Self::expire): their fd numbers must not be reused by a
    /// client accepted in the same round of poll results.
    evicted: Vec<UnixStream>,
}

fn err_at(path: &Path, kind: ErrorKind, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(kind, format!("control socket {}: {}", path.display(), what))
}

/// Decide what to do with an existing path: Ok if it is free (absent, or a
/// stale socket that was removed), Err if it is in use or not a socket.
fn clear_stale(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err_at(path, e.kind(), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(err_at(path, ErrorKind::AlreadyExists, "exists and is not a socket (not removed)"));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(err_at(path, ErrorKind::AddrInUse, "in use by a running master")),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(err_at(path, e.kind(), format_args!("cannot remove stale socket: {}", e))),
            }
            log::info!(component = "control"; "removed stale control socket {} (no master listens on it)", path.display());
            Ok(())
        }
        Err(e) => Err(err_at(path, e.kind(), format_args!("cannot tell whether a master uses it: {}", e))),
    }
}

/// A private directory beside the socket, removed with its content on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0.join("s"));
        let _ = fs::remove_dir(&self.0);
    }
}

impl ControlServer {
    /// Bind at `path` with [`Limits::default`].
    ///
    /// The socket is bound inside a fresh mode-0700 directory beside `path`,
    /// set to mode 0600, then hard-linked to `path` (which fails instead of
    /// replacing if a path appeared meanwhile), so it is never reachable by
    /// others with wider permissions, whatever the umask. If `path` exists:
    /// a socket a master accepts on → error `control socket PATH: in use by a
    /// running master`; a socket nobody listens on → removed and replaced;
    /// anything else → error. The parent directory must exist. The listener
    /// is non-blocking and close-on-exec.
    pub fn bind(path: &Path) -> io::Result<ControlServer> {
        Self::bind_with(path, Limits::default())
    }

    /// [`bind`](Self::bind) with other bounds (tests).
    pub fn bind_with(path: &Path, limits: Limits) -> io::Result<ControlServer> {
        let path = crate::config::absolute(path);
        let parent = path.parent().ok_or_else(|| err_at(&path, ErrorKind::InvalidInput, "not a file path"))?;
        if path.file_name().is_none() {
            return Err(err_at(&path, ErrorKind::InvalidInput, "not a file path"));
        }
        clear_stale(&path)?;

        let mut tmp = None;
        for n in 0..100u32 {
            let dir = parent.join(format!(".zdctl.{}.{}", std::process::id(), n));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    tmp = Some(TempDir(dir));
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err_at(&path, e.kind(), format_args!("cannot create {}: {}", dir.display(), e))),
            }
        }
        let tmp = tmp.ok_or_else(|| err_at(&path, ErrorKind::AlreadyExists, "cannot create a temporary directory"))?;
        let tmp_sock = tmp.0.join("s");
        let listener =
            UnixListener::bind(&tmp_sock).map_err(|e| err_at(&path, e.kind(), format_args!("bind: {}", e)))?;
        fs::set_permissions(&tmp_sock, fs::Permissions::from_mode(0o600))
            .map_err(|e| err_at(&path, e.kind(), format_args!("chmod: {}", e)))?;
        listener.set_nonblocking(true).map_err(|e| err_at(&path, e.kind(), e))?;

        // Link into place; if something appeared since clear_stale, look again once.
        let mut tries = 0;
        loop {
            match fs::hard_link(&tmp_sock, &path) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && tries == 0 => {
                    tries += 1;
                    clear_stale(&path)?;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(err_at(&path, ErrorKind::AddrInUse, "in use by a running master"))
                }
                Err(e) => {
                    // No hard links on this file system: rename (replaces a
                    // path that appeared in the last microseconds; acceptable).
                    fs::rename(&tmp_sock, &path)
                        .map_err(|e2| err_at(&path, e2.kind(), format_args!("link: {}; rename: {}", e, e2)))?;
                    break;
                }
            }
        }
        drop(tmp);
        let meta = fs::symlink_metadata(&path).map_err(|e| err_at(&path, e.kind(), e))?;
        Ok(ControlServer {
            path,
            listener,
            ident: (meta.dev(), meta.ino()),
            limits,
            clients: BTreeMap::new(),
            next_id: 1,
            evicted: Vec::new(),
        })
    }

    /// The socket's path (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bounds in use.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Append the fds to poll with their events (`libc::POLLIN`/`POLLOUT`).
    /// A client may be listed with no events: poll still reports its hang-up.
    pub fn poll_fds(&self, out: &mut Vec<(RawFd, i16)>) {
        out.push((self.listener.as_raw_fd(), libc::POLLIN));
        for c in self.clients.values() {
            let mut ev: i16 = 0;
            if c.may_read() {
                ev |= libc::POLLIN;
            }
            // POLLOUT also wakes us (at once) to handle lines left in the
            // buffer after a RESTART WAIT was answered.
            if c.pending() > 0 || (c.owed == 0 && !c.closing && c.has_line()) {
                ev |= libc::POLLOUT;
            }
            out.push((c.fd, ev));
        }
    }

    /// Handle `revents` of one fd from [`poll_fds`](Self::poll_fds): accept,
    /// read, write, parse. Returns the complete commands, in order. Never
    /// blocks; bounded work per call. Unknown fds are ignored.
    pub fn on_ready(&mut self, fd: RawFd, revents: i16, now: Instant) -> Vec<(ClientId, Command)> {
        let mut cmds = Vec::new();
        if fd == self.listener.as_raw_fd() {
            if revents & libc::POLLIN != 0 {
                self.accept_some(now);
            }
            return cmds;
        }
        let Some(id) = self.clients.iter().find(|(_, c)| c.fd == fd).map(|(id, _)| *id) else {
            return cmds;
        };
        let limits = self.limits;
        let c = self.clients.get_mut(&id).expect("client");
        let mut drop_it = revents & libc::POLLNVAL != 0;
        if !drop_it && revents & libc::POLLOUT != 0 && c.flush(now).is_err() {
            drop_it = true;
        }
        if !drop_it {
            // Lines already buffered first (left after a RESTART WAIT), then
            // one read if nothing is buffered or owed.
            Self::parse_lines(id, c, &limits, &mut cmds);
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && c.may_read() {
                let mut buf = [0u8; READ_CHUNK];
                match (&c.stream).read(&mut buf) {
                    Ok(0) => c.eof = true,
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&buf[..n]);
                        c.last_activity = now;
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(_) => drop_it = true,
                }
                Self::parse_lines(id, c, &limits, &mut cmds);
            }
        }
        if c.too_long && c.owed == 0 && !c.closing {
            c.closing = true;
            if !c.queue(&nack(NACK_LINE_TOO_LONG), limits.max_output) {
                drop_it = true;
            }
        }
        if !drop_it && c.pending() > 0 && c.flush(now).is_err() {
            drop_it = true;
        }
        // POLLHUP: the peer closed completely; nothing more can reach it. Its
        // last commands are still returned (like `echo RESTART | nc -U`).
        if drop_it || revents & (libc::POLLHUP | libc::POLLERR) != 0 || c.done() {
            self.clients.remove(&id);
        }
        cmds
    }

    /// Extract complete lines into commands, stopping after a `RESTART WAIT`
    /// (answers stay in order) or at a line that is too long.
    fn parse_lines(id: ClientId, c: &mut Client, limits: &Limits, cmds: &mut Vec<(ClientId, Command)>) {
        while !c.too_long && !c.closing && c.owed_allows_more(cmds, id) {
            let (line_end, next) = match c.inbuf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, i + 1),
                None if c.eof && !c.inbuf.is_empty() => (c.inbuf.len(), c.inbuf.len()),
                None => break,
            };
            let mut line = &c.inbuf[..line_end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.len() > limits.max_line {
                c.too_long = true;
                c.inbuf.clear();
                break;
            }
            let cmd = parse_command(&String::from_utf8_lossy(line));
            c.inbuf.drain(..next);
            if let Some(cmd) = cmd {
                let wait = matches!(cmd, Command::Restart { wait: true });
                c.owed += 1;
                cmds.push((id, cmd));
                if wait {
                    break;
                }
            }
        }
        if !c.inbuf.contains(&b'\n') && c.inbuf.len() > limits.max_line {
            c.too_long = true;
            c.inbuf.clear();
        }
    }

    fn accept_some(&mut self, now: Instant) {
        for _ in 0..MAX_ACCEPT_PER_CALL {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.clients.len() >= self.limits.max_clients && !self.evict_one(now) {
                        // Nobody evictable (all are owed an answer). Best
                        // effort, never waits: the socket buffer is empty.
                        let _ = (&stream).write(format!("{}{}", nack(NACK_TOO_MANY_CLIENTS), LINE_END).as_bytes());
                        log::debug!(component = "control";
                            "control client refused: too many clients ({}), all owed an answer", self.clients.len());
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    let fd = stream.as_raw_fd();
                    self.clients.insert(
                        id,
                        Client {
                            stream,
                            fd,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            out_pos: 0,
                            last_activity: now,
                            waiting: false,
                            owed: 0,
                            eof: false,
                            too_long: false,
                            closing: false,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS...: the connection stays in the
                    // backlog; try again on the next wake-up.
                    log::warn!(component = "control"; "control socket accept: {}", e);
                    break;
                }
            }
        }
    }

    /// Make room for one client: shut down and forget the evictable client
    /// idle longest (module doc, *Eviction*). False if none is evictable.
    fn evict_one(&mut self, now: Instant) -> bool {
        // min_by_key keeps the first of equal keys: the oldest connection.
        let victim = self.clients.iter().filter(|(_, c)| c.evictable()).min_by_key(|(_, c)| c.last_activity);
        let Some(id) = victim.map(|(id, _)| *id) else {
            return false;
        };
        let c = self.clients.remove(&id).expect("client");
        log::debug!(component = "control";
            "control client evicted to admit a new one (too many clients, {}): idle for {} ms, {} answer bytes unsent",
            self.limits.max_clients, now.saturating_duration_since(c.last_activity).as_millis(), c.pending());
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        self.evicted.push(c.stream);
        true
    }

    /// Queue one answer line for `client` (`ACK`, `ACK data`, `NACK reason`;
    /// the line terminator is added, newlines inside are replaced by spaces)
    /// and write what the socket takes now. Unknown or closed client: ignored.
    /// A client whose unsent answers would pass the output bound is dropped.
    pub fn reply(&mut self, client: ClientId, line: &str) {
        let now = Instant::now();
        let limits = self.limits;
        let Some(c) = self.clients.get_mut(&client) else { return };
        c.owed = c.owed.saturating_sub(1);
        if c.owed == 0 && c.waiting {
            c.waiting = false;
            c.last_activity = now;
        }
        let mut ok = c.queue(line, limits.max_output);
        if !ok {
            log::warn!(component = "control"; "control client dropped: it does not read its answers ({} bytes pending)", c.pending());
        }
        if ok && c.too_long && c.owed == 0 && !c.closing {
            c.closing = true;
            ok = c.queue(&nack(NACK_LINE_TOO_LONG), limits.max_output);
        }
        if ok {
            ok = c.flush(now).is_ok();
        }
        if !ok || c.done() {
            self.clients.remove(&client);
        }
    }

    /// Mark `client` as waiting for a `RESTART WAIT` answer (no idle timeout)
    /// or not. Cleared by the [`reply`](Self::reply) that answers it.
    pub fn set_waiting(&mut self, client: ClientId, waiting: bool) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.waiting = waiting;
            if !waiting {
                c.last_activity = Instant::now();
            }
        }
    }

    /// Earliest idle deadline of a client, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.values().filter(|c| !c.waiting).map(|c| c.last_activity + self.limits.idle_timeout).min()
    }

    /// Close the clients idle past their deadline (no byte read from or
    /// written to them for the idle timeout), except waiting ones, and the
    /// fds of clients evicted since the last call. Call it once per round of
    /// poll results, after handling them.
    pub fn expire(&mut self, now: Instant) {
        self.evicted.clear();
        let idle = self.limits.idle_timeout;
        let before = self.clients.len();
        self.clients.retain(|_, c| c.waiting || now < c.last_activity + idle);
        if self.clients.len() < before {
            log::debug!(component = "control"; "closed {} idle control client(s)", before - self.clients.len());
        }
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Answer bytes queued and not yet taken by clients (at most
    /// `max_output` per client).
    pub fn queued_bytes(&self) -> usize {
        self.clients.values().map(|c| c.pending()).sum()
    }

    /// Clients the master owes an answer to `RESTART WAIT` (see `set_waiting`).
    pub fn waiting_clients(&self) -> Vec<ClientId> {
        self.clients.iter().filter(|(_, c)| c.waiting).map(|(id, _)| *id).collect()
    }

    /// Close every client and remove the socket file, if it is still the one
    /// this server created (call at exit).
    pub fn close(self) {
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.ident {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

impl Client {
    /// Stop handing out commands once one is owed for a `RESTART WAIT` (the
    /// last command pushed for this client in this batch, or from before).
    fn owed_allows_more(&self, cmds: &[(ClientId, Command)], id: ClientId) -> bool {
        if self.owed == 0 {
            return true;
        }
        // Commands of this batch are answered after on_ready returns, in order:
        // only a RESTART WAIT (now or earlier) stops further parsing.
        let in_batch = cmds.iter().filter(|(i, _)| *i == id).count();
        if self.owed > in_batch {
            return false; // owed from an earlier call: a RESTART WAIT
        }
        !matches!(cmds.iter().rev().find(|(i, _)| *i == id), Some((_, Command::Restart { wait: true })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::LevelFilter;

    #[test]
    fn parse_basic_commands() {
        assert_eq!(parse_command("CMDS"), Some(Command::Cmds));
        assert_eq!(parse_command("cmds\n"), Some(Command::Cmds));
        assert_eq!(parse_command("Version\r\n"), Some(Command::Version));
        assert_eq!(parse_command("  status  "), Some(Command::Status));
        assert_eq!(parse_command("RESTART"), Some(Command::Restart { wait: false }));
        assert_eq!(parse_command("restart wait"), Some(Command::Restart { wait: true }));
        assert_eq!(parse_command("RESTART\tWait"), Some(Command::Restart { wait: true }));
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
        assert_eq!(cmds_answer(), "ACK CMDS VERSION LOGLEVEL STATUS RESTART");
        assert_eq!(parse_answer("ACK\n"), Some(Answer::Ack(String::new())));
        assert_eq!(parse_answer("ACK complete\r\n"), Some(Answer::Ack("complete".into())));
        assert_eq!(parse_answer("NACK bad driver\n"), Some(Answer::Nack("bad driver".into())));
        assert_eq!(parse_answer("ACKNOWLEDGED"), None);
        assert_eq!(parse_answer("hello"), None);
    }

    #[test]
    fn advice_covers_every_reason() {
        let generic = advice("something nobody defined");
        for r in REFUSAL_REASONS {
            assert_ne!(advice(r), generic, "{}", r);
            assert_ne!(describe(r), describe("something nobody defined"), "{}", r);
        }
        for r in [
            "aborted: new worker 1234 exited with status 1",
            REASON_STOPPING,
            NACK_UNKNOWN,
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
        assert!(advice(REASON_ABORTED_RESTART).contains("restart the master as soon as possible"));
        assert!(advice(REASON_LISTEN_ADDRESS_CHANGED).contains("normal restart"));
        assert!(advice(REASON_BAD_CONFIG).contains("zdrestart --check"));
        let m = operator_message("aborted: new worker 1234 exited with status 1");
        assert!(m.starts_with("aborted: new worker 1234 exited with status 1: the zero-downtime restart was aborted"));
        assert!(!describe(REASON_BAD_DRIVER).contains('\n'));
    }

    #[test]
    fn status_json_shape() {
        let s = StatusReport {
            state: "running".into(),
            generation: 2,
            lockout: false,
            magic: 1,
            version: "0.1.0".into(),
            pid: 10,
            started: "2024-01-01T00:00:00.000Z".into(),
            workers_configured: 2,
            listen: "127.0.0.1:8080".into(),
            last_restart: Some(LastRestart {
                generation: Some(2),
                started: "2024-01-01T00:01:00.000Z".into(),
                outcome: "complete".into(),
                reason: None,
                duration_ms: Some(1200),
            }),
            workers: vec![WorkerStatus {
                pid: Some(11),
                generation: 2,
                index: 0,
                state: "ready".into(),
                started: "2024-01-01T00:01:00.000Z".into(),
            }],
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(!j.contains('\n'));
        assert!(j.starts_with("{\"state\":\"running\",\"generation\":2,\"lockout\":false,\"magic\":1,"));
        let back: StatusReport = serde_json::from_str(&j).unwrap();
        assert_eq!(back, s);
    }
}

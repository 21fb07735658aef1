//! The worker protocol, version 1 (ARCHITECTURE.md, "The worker protocol";
//! zdrestart-worker(7)): report lines, the names of the environment
//! variables and the fd numbers a worker finds its pipes at.
//!
//! Owns the wire format shared by the master, the built-in worker and any
//! third-party worker. Pure: no I/O beyond formatting and parsing.

/// Environment variable names.
pub const ENV_LISTEN_FDS: &str = "LISTEN_FDS";
pub const ENV_LISTEN_PID: &str = "LISTEN_PID";
pub const ENV_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
pub const ENV_NOTIFY_FD: &str = "ZDRESTART_NOTIFY_FD";
pub const ENV_CONFIG: &str = "ZDRESTART_CONFIG";
pub const ENV_GENERATION: &str = "ZDRESTART_GENERATION";
pub const ENV_WORKER: &str = "ZDRESTART_WORKER";
pub const ENV_PROBE: &str = "ZDRESTART_PROBE";
/// Log level the master asks new workers to use (`LOGLEVEL` on the control socket).
pub const ENV_LOGLEVEL: &str = "ZDRESTART_LOGLEVEL";
/// Read end of the control pipe: newline-terminated `KEY=VALUE` lines from
/// the master to a running worker. Only `LOGLEVEL=<level>` exists; a worker
/// ignores lines it does not know, and may ignore the pipe altogether.
pub const ENV_CONTROL_FD: &str = "ZDRESTART_CONTROL_FD";
/// sd_notify(3)'s socket, offered to workers whose config says `"notify":
/// "systemd"` or `"both"`: the absolute path of a file system socket.
pub const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog (sd_watchdog_enabled(3)'s convention, set only when
/// `watchdogTimeout` is): a ready worker must send a heartbeat, `WATCHDOG=1`
/// on the report pipe or with sd_notify(3), within this many microseconds of
/// the last one (systemd advises every half of it).
pub const ENV_WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid the watchdog is meant for: the worker's own (a process it forks
/// inherits the variables and must not send heartbeats for it).
pub const ENV_WATCHDOG_PID: &str = "WATCHDOG_PID";
/// First inherited listener fd (systemd convention).
pub const LISTEN_FDS_START: i32 = 3;

/// The fd at which a child with `nlisten` listeners finds its report pipe
/// (`ZDRESTART_NOTIFY_FD`): right after the listeners.
pub const fn notify_fd(nlisten: usize) -> i32 {
    LISTEN_FDS_START + nlisten as i32
}

/// The fd at which a child with `nlisten` listeners finds the read end of
/// its control pipe (`ZDRESTART_CONTROL_FD`): right after the report pipe.
pub const fn control_fd(nlisten: usize) -> i32 {
    notify_fd(nlisten) + 1
}
/// Longest report line the master keeps; longer lines are cut.
pub const MAX_REPORT_LINE: usize = 4096;

/// One report line from a worker or probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Ready,
    Error(String),
    Status(String),
    /// `WATCHDOG=1`: a heartbeat.
    Watchdog,
    /// `WATCHDOG=trigger`: the worker says it is hung.
    WatchdogTrigger,
    Magic(u64),
    Version(String),
    /// Probe: `SHARED=1` (every worker of every generation serves the same
    /// data: a zero-downtime restart may run old and new side by side) or
    /// `SHARED=0` (each worker has state of its own).
    Shared(bool),
    /// A `MAGIC=` whose value is not a u64.
    BadMagic(String),
    /// Any other line, kept for the log.
    Unknown(String),
}

impl Report {
    /// Parse one line (without its newline).
    pub fn parse(line: &str) -> Report {
        let line = line.trim_end_matches(['\r', '\n']);
        match line.split_once('=') {
            Some(("READY", "1")) => Report::Ready,
            Some(("ERROR", v)) => Report::Error(v.to_string()),
            Some(("STATUS", v)) => Report::Status(v.to_string()),
            Some(("WATCHDOG", "1")) => Report::Watchdog,
            Some(("WATCHDOG", "trigger")) => Report::WatchdogTrigger,
            Some(("VERSION", v)) => Report::Version(v.to_string()),
            Some(("SHARED", "1")) => Report::Shared(true),
            Some(("SHARED", "0")) => Report::Shared(false),
            Some(("MAGIC", v)) => match v.trim().parse::<u64>() {
                Ok(n) => Report::Magic(n),
                Err(_) => Report::BadMagic(v.to_string()),
            },
            _ => Report::Unknown(line.to_string()),
        }
    }
}

/// Splits a byte stream into lines, keeping at most `max` bytes of each line.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// True while discarding the rest of an over-long line.
    skipping: bool,
}

impl LineBuffer {
    /// Feed bytes; returns the complete lines (lossy UTF-8, without newline).
    pub fn push(&mut self, data: &[u8], max: usize) -> Vec<String> {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                if !self.skipping {
                    out.push(String::from_utf8_lossy(&self.buf).into_owned());
                }
                self.buf.clear();
                self.skipping = false;
            } else if self.skipping {
                continue;
            } else if self.buf.len() < max {
                self.buf.push(b);
            } else if !self.skipping {
                // Emit what we have and drop the rest of the line.
                out.push(String::from_utf8_lossy(&self.buf).into_owned());
                self.buf.clear();
                self.skipping = true;
            }
        }
        out
    }

    /// What it holds between reads: the bytes of the line not terminated
    /// yet, and whether the rest of an over-long line is being dropped (an
    /// upgrade hands them over: [`Self::resume`]).
    pub fn rest(&self) -> (&[u8], bool) {
        (&self.buf, self.skipping)
    }

    /// A buffer holding what [`Self::rest`] gave.
    pub fn resume(bytes: &[u8], skipping: bool) -> LineBuffer {
        LineBuffer { buf: bytes.to_vec(), skipping }
    }

    /// The unterminated rest, at end of stream.
    pub fn finish(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            None
        } else {
            let s = String::from_utf8_lossy(&self.buf).into_owned();
            self.buf.clear();
            Some(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports() {
        assert_eq!(Report::parse("READY=1\n"), Report::Ready);
        assert_eq!(Report::parse("ERROR=bind: in use"), Report::Error("bind: in use".into()));
        assert_eq!(Report::parse("MAGIC=42"), Report::Magic(42));
        assert_eq!(Report::parse("MAGIC=x"), Report::BadMagic("x".into()));
        assert_eq!(Report::parse("VERSION=1.0"), Report::Version("1.0".into()));
        assert_eq!(Report::parse("FOO=bar"), Report::Unknown("FOO=bar".into()));
        assert_eq!(Report::parse("READY=0"), Report::Unknown("READY=0".into()));
        assert_eq!(Report::parse("SHARED=1"), Report::Shared(true));
        assert_eq!(Report::parse("SHARED=0\n"), Report::Shared(false));
        assert_eq!(Report::parse("SHARED=yes"), Report::Unknown("SHARED=yes".into()));
        assert_eq!(Report::parse("WATCHDOG=1"), Report::Watchdog);
        assert_eq!(Report::parse("WATCHDOG=trigger"), Report::WatchdogTrigger);
        assert_eq!(Report::parse("WATCHDOG=2"), Report::Unknown("WATCHDOG=2".into()));
    }

    #[test]
    fn line_buffer_splits_and_bounds() {
        let mut lb = LineBuffer::default();
        assert_eq!(lb.push(b"ab", 4), Vec::<String>::new());
        assert_eq!(lb.push(b"c\nde\n", 4), vec!["abc", "de"]);
        assert_eq!(lb.push(b"123456789\nx\n", 4), vec!["1234", "x"]);
        lb.push(b"tail", 10);
        assert_eq!(lb.finish().as_deref(), Some("tail"));
        // Handed over mid-line (an upgrade): the line comes out whole.
        lb.push(b"li", 10);
        let (bytes, skipping) = lb.rest();
        let mut next = LineBuffer::resume(bytes, skipping);
        assert_eq!(next.push(b"ne\n", 10), vec!["line"]);
        lb.push(b"0123456789ab", 10);
        let (bytes, skipping) = lb.rest();
        assert!(skipping && bytes.is_empty());
        assert_eq!(LineBuffer::resume(bytes, skipping).push(b"cd\nx\n", 10), vec!["x"]);
    }
}

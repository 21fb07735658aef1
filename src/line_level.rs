//! The level of a plain text line a worker (or probe) writes on its stdout or
//! stderr, so that `bunyan -l warn` shows a server's errors (zdrestart-worker(7),
//! "Output").
//!
//! Owns only the reading of a line's own words: gunicorn's `[ERROR]`,
//! Python logging's `ERROR:name:`, uWSGI's `*** WARNING: ...`, Ruby Logger's
//! `] ERROR -- :`, Python's `path:1: DeprecationWarning:`, and Python
//! tracebacks (every line of one). A line without any of these is `info`,
//! and so is a line that merely mentions an error in its message. The
//! lines that continue a message (indented, as gunicorn's multi-line
//! records and traceback frames are) take the level of the line they
//! continue. Pure: one [`LineLevels`] per pipe, no I/O, no logging.

/// A level a line can state. `Fatal` is bunyan's 60 (CRITICAL, FATAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

/// Python's first line of a traceback.
const TRACEBACK: &str = "Traceback (most recent call last):";
/// Python's lines between the tracebacks of chained exceptions.
const CHAINED: [&str; 2] = [
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
];
/// How far into a line a bracketed level may stand (gunicorn's is after
/// its time stamp and pid: about 36 bytes in).
const BRACKET_WITHIN: usize = 80;

/// The level of a level word as loggers write it (`WARNING`, `warn`, `Error`).
fn word_level(word: &str) -> Option<LineLevel> {
    Some(match word.to_ascii_uppercase().as_str() {
        "TRACE" => LineLevel::Trace,
        "DEBUG" => LineLevel::Debug,
        "INFO" | "NOTICE" => LineLevel::Info,
        "WARN" | "WARNING" => LineLevel::Warn,
        "ERROR" | "ERR" => LineLevel::Error,
        "CRITICAL" | "CRIT" | "FATAL" | "ALERT" | "EMERG" | "EMERGENCY" | "PANIC" => LineLevel::Fatal,
        _ => return None,
    })
}

/// gunicorn's `[2024-01-01 00:00:00 +0000] [12] [ERROR] msg`: the first
/// bracketed upper-case level word near the start of the line.
fn bracketed(line: &str) -> Option<LineLevel> {
    let head = &line[..line.len().min(BRACKET_WITHIN)];
    let mut rest = head;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let close = after.find(']')?;
        let word = &after[..close];
        if !word.is_empty() && word.bytes().all(|b| b.is_ascii_uppercase()) {
            if let Some(l) = word_level(word) {
                return Some(l);
            }
        }
        rest = &after[close..];
    }
    None
}

/// A level word that starts the line and ends with `:` (Python logging's
/// `ERROR:root:msg`, `Error: ...` of a command-line tool), after uWSGI's
/// `*** ` or `!!! `.
fn leading(line: &str) -> Option<LineLevel> {
    let s = line.trim_start_matches(['*', '!', ' ']);
    let end = s.find(|c: char| !c.is_ascii_alphabetic())?;
    if !s[end..].starts_with(':') {
        return None;
    }
    let word = &s[..end];
    if word.is_empty() {
        return None;
    }
    // `Error:` or `ERROR:`, not `eRRor:`: a word written as a level.
    let cased = word.bytes().all(|b| b.is_ascii_uppercase())
        || (word.as_bytes()[0].is_ascii_uppercase() && word[1..].bytes().all(|b| b.is_ascii_lowercase()))
        || word.bytes().all(|b| b.is_ascii_lowercase());
    if cased {
        word_level(word)
    } else {
        None
    }
}

/// Ruby Logger's `E, [2024-01-01T00:00:00.000 #12] ERROR -- app: msg`.
fn ruby_logger(line: &str) -> Option<LineLevel> {
    let close = line.find("] ")?;
    // Logger pads the level to five characters (` WARN`, ` INFO`).
    let rest = line[close + 2..].trim_start();
    let (word, tail) = rest.split_once(' ')?;
    if tail.starts_with("-- ") && word.bytes().all(|b| b.is_ascii_uppercase()) {
        word_level(word)
    } else {
        None
    }
}

/// Python's warnings module: `/srv/app.py:3: DeprecationWarning: msg`.
fn python_warning(line: &str) -> Option<LineLevel> {
    let i = line.find("Warning: ")?;
    let before = &line[..i];
    let name_start = before.rfind(": ")? + 2;
    let name = &before[name_start..];
    let is_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()) && name.as_bytes()[0].is_ascii_uppercase();
    (is_name && before[..name_start - 2].contains(':')).then_some(LineLevel::Warn)
}

/// The level one line states by itself, if any.
pub fn stated(line: &str) -> Option<LineLevel> {
    bracketed(line).or_else(|| leading(line)).or_else(|| ruby_logger(line)).or_else(|| python_warning(line))
}

/// The levels of the lines of one pipe, in order: a traceback or a
/// multi-line message spans lines.
#[derive(Debug, Default, Clone)]
pub struct LineLevels {
    /// The level of the message the next indented line continues.
    current: Option<LineLevel>,
    /// Inside a Python traceback (after its first line, before its last).
    traceback: bool,
}

impl LineLevels {
    /// The level of the next line of the pipe.
    pub fn level(&mut self, line: &str) -> LineLevel {
        let indented = line.starts_with([' ', '\t']);
        let t = line.trim_end();
        if t == TRACEBACK || CHAINED.contains(&t) {
            self.traceback = t == TRACEBACK;
            self.current = Some(LineLevel::Error);
            return LineLevel::Error;
        }
        if self.traceback {
            // Frames are indented; the exception's own line ends it.
            self.traceback = indented;
            self.current = Some(LineLevel::Error);
            return LineLevel::Error;
        }
        if indented {
            if let Some(l) = self.current {
                return l;
            }
        }
        self.current = stated(line);
        self.current.unwrap_or(LineLevel::Info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LineLevel::*;

    fn levels(text: &str) -> Vec<LineLevel> {
        let mut l = LineLevels::default();
        text.lines().map(|line| l.level(line)).collect()
    }

    #[test]
    fn gunicorn_records_and_their_traceback() {
        // Written by gunicorn 20.1.0 (Debian 12) for an application that raises.
        let out = "\
[2026-12-04 00:55:30 +0000] [4305] [INFO] Starting gunicorn 20.1.0
[2026-12-04 00:55:30 +0000] [4568] [DEBUG] GET /
[2026-12-04 00:55:30 +0000] [4568] [ERROR] Error handling request /
Traceback (most recent call last):
  File \"/usr/lib/python3/dist-packages/gunicorn/workers/sync.py\", line 136, in handle
    self.handle_request(listener, req, client, addr)
               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
ZeroDivisionError: division by zero
[2026-12-04 00:55:35 +0000] [4305] [INFO] Handling signal: term
[2026-12-04 00:55:35 +0000] [4305] [WARNING] Worker with pid 4568 was terminated due to signal 9
[2026-12-04 00:55:35 +0000] [4305] [CRITICAL] WORKER TIMEOUT (pid:4568)";
        assert_eq!(levels(out), [Info, Debug, Error, Error, Error, Error, Error, Error, Info, Warn, Fatal]);
    }

    #[test]
    fn multi_line_records_continue_at_their_level() {
        let out = "[2026-12-04 00:55:30 +0000] [4305] [DEBUG] Current configuration:\n  config: ./gunicorn.conf.py\n  workers: 1\nplain\n  indented after plain";
        assert_eq!(levels(out), [Debug, Debug, Debug, Info, Info]);
    }

    #[test]
    fn python_logging_uwsgi_ruby_and_warnings() {
        assert_eq!(stated("ERROR:myapp:app error via basicConfig"), Some(Error));
        assert_eq!(stated("WARNING:root:careful"), Some(Warn));
        assert_eq!(stated("CRITICAL:root:gone"), Some(Fatal));
        assert_eq!(stated("*** WARNING: you are running uWSGI as root !!! (use the --uid flag) *** "), Some(Warn));
        assert_eq!(stated("Error: 'x' is not a valid port number."), Some(Error));
        assert_eq!(stated("E, [2024-01-01T00:00:00.000000 #12] ERROR -- app: boom"), Some(Error));
        assert_eq!(stated("W, [2024-01-01T00:00:00.000000 #12]  WARN -- : hmm"), Some(Warn));
        assert_eq!(stated("I, [2024-01-01T00:00:00.000000 #12]  INFO -- : started"), Some(Info));
        assert_eq!(stated("/srv/app.py:5: DeprecationWarning: something old"), Some(Warn));
        assert_eq!(stated("[2024-01-01T00:00:00Z ERROR app] env_logger"), None, "not a level alone in brackets");
    }

    #[test]
    fn words_in_a_message_are_not_levels() {
        for line in [
            "no ERROR here",
            "Booting worker with pid: 4568",
            "spawned uWSGI worker 1 (pid: 5751, cores: 1)",
            "[pid: 5751|app: 0|req: 1/1] 127.0.0.1 () GET / => generated 0 bytes (HTTP/1.1 500)",
            "eRRor: odd case",
            "errors: 3",
            "a Warning: in the middle",
        ] {
            assert_eq!(stated(line), None, "{}", line);
        }
    }

    #[test]
    fn chained_tracebacks_are_errors_to_the_last_line() {
        let out = "\
Traceback (most recent call last):
  File \"a.py\", line 1, in <module>
KeyError: 'x'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"a.py\", line 3, in <module>
ValueError: y
unable to load app 0 (mountpoint='') (callable not found or import error)";
        assert_eq!(levels(out), [Error, Error, Error, Info, Error, Info, Error, Error, Error, Info]);
    }
}

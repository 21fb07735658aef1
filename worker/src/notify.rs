//! The report pipe of the worker protocol (zdrestart-worker(7), "Reports"):
//! `KEY=VALUE` lines on the fd named by `ZDRESTART_NOTIFY_FD`.
//!
//! Owns that fd and the line format on our side. It must not decide what to
//! report, and a failed write never stops the worker (the master may have
//! closed its end; the log still has the facts).

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use zdrestart::protocol::ENV_NOTIFY_FD;

pub struct Notifier {
    pipe: Option<Mutex<File>>,
}

impl Notifier {
    /// Adopt the fd named by `ZDRESTART_NOTIFY_FD`, if set. Errors are fatal
    /// at start (we could not even report them on the pipe).
    pub fn from_env() -> Result<Notifier, String> {
        let raw = match std::env::var(ENV_NOTIFY_FD) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => return Ok(Notifier { pipe: None }),
        };
        let fd: i32 = raw
            .trim()
            .parse()
            .ok()
            .filter(|&fd| fd >= 0)
            .ok_or_else(|| format!("{}={:?} is not a file descriptor number", ENV_NOTIFY_FD, raw))?;
        let owned = zdrestart::sys::adopt_fd(fd).map_err(|e| format!("{}={}: {}", ENV_NOTIFY_FD, fd, e))?;
        Ok(Notifier { pipe: Some(Mutex::new(File::from(owned))) })
    }

    /// A notifier without a pipe (used when the pipe itself is unusable).
    pub fn none() -> Notifier {
        Notifier { pipe: None }
    }

    /// The fd number, to keep listener fds from colliding with it.
    pub fn fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.pipe.as_ref().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).as_raw_fd())
    }

    /// Write one report line; returns whether it was written.
    pub fn send(&self, key: &str, value: &str) -> bool {
        let Some(pipe) = &self.pipe else { return false };
        let line = format!("{}={}\n", key, one_line(value));
        let mut f = pipe.lock().unwrap_or_else(|e| e.into_inner());
        match f.write_all(line.as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                log::debug!(error = e.to_string().as_str(); "report pipe write failed");
                false
            }
        }
    }
}

/// A report value on one line, bounded well below the master's limit.
pub fn one_line(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
    let max = zdrestart::protocol::MAX_REPORT_LINE - 64;
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_are_one_line() {
        assert_eq!(super::one_line("a\nb\r\nc"), "a b  c");
        assert!(super::one_line(&"é".repeat(5000)).len() < zdrestart::protocol::MAX_REPORT_LINE);
    }
}

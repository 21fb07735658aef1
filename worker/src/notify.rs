//! The report pipe of the worker protocol (zdrestart-worker(7), "Reports"):
//! `KEY=VALUE` lines on the fd named by `ZDRESTART_NOTIFY_FD`; and the
//! watchdog's heartbeats on it ([`Watchdog`]), which the event loop sends
//! itself, so that a loop that hangs or spins stops them.
//!
//! Owns that fd and the line format on our side. It must not decide what to
//! report, and a failed write never stops the worker (the master may have
//! closed its end; the log still has the facts).

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zdrestart::protocol::{ENV_NOTIFY_FD, ENV_WATCHDOG_PID, ENV_WATCHDOG_USEC};

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

/// The heartbeats the master asks for (sd_watchdog_enabled(3)'s rules:
/// `WATCHDOG_USEC` set and above 0, `WATCHDOG_PID` unset or our pid): one
/// `WATCHDOG=1` every half of the timeout, as systemd advises.
pub struct Watchdog {
    every: Duration,
    next: Instant,
}

impl Watchdog {
    /// From `usec` and `pid` (the variables' values); None: no heartbeats.
    pub fn new(usec: Option<&str>, pid: Option<&str>, now: Instant) -> Option<Watchdog> {
        let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
        if pid.is_some_and(|p| p.trim().parse::<u32>().ok() != Some(std::process::id())) {
            return None;
        }
        let every = Duration::from_micros(usec / 2).max(Duration::from_millis(1));
        Some(Watchdog { every, next: now })
    }

    /// From the environment the master gave us.
    pub fn from_env(now: Instant) -> Option<Watchdog> {
        let var = |k| std::env::var(k).ok();
        Watchdog::new(var(ENV_WATCHDOG_USEC).as_deref(), var(ENV_WATCHDOG_PID).as_deref(), now)
    }

    /// How long the loop may wait before the next heartbeat is due.
    pub fn wait(&self, now: Instant) -> Duration {
        self.next.saturating_duration_since(now)
    }

    /// Send the heartbeat if it is due.
    pub fn beat(&mut self, now: Instant, notifier: &Notifier) {
        if now >= self.next {
            notifier.send("WATCHDOG", "1");
            self.next = now + self.every;
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
    use super::*;

    #[test]
    fn watchdog_follows_sd_watchdog_enabled() {
        let now = Instant::now();
        let me = std::process::id().to_string();
        let w = Watchdog::new(Some("2000000"), Some(&me), now).unwrap();
        assert_eq!((w.every, w.wait(now)), (Duration::from_secs(1), Duration::ZERO), "at once, then every half");
        assert!(Watchdog::new(Some("2000000"), None, now).is_some(), "WATCHDOG_PID unset: ours");
        assert!(Watchdog::new(Some("2000000"), Some("1"), now).is_none(), "another process's");
        assert!(Watchdog::new(Some("0"), None, now).is_none());
        assert!(Watchdog::new(Some("x"), None, now).is_none());
        assert!(Watchdog::new(None, Some(&me), now).is_none());
        let mut w = w;
        w.beat(now, &Notifier::none());
        assert_eq!(w.wait(now), Duration::from_secs(1));
    }

    #[test]
    fn values_are_one_line() {
        assert_eq!(super::one_line("a\nb\r\nc"), "a b  c");
        assert!(super::one_line(&"é".repeat(5000)).len() < zdrestart::protocol::MAX_REPORT_LINE);
    }
}

//! `zdrestartctl status` for a person: one summary line (state, generation,
//! version, magic number, uptime, the last restart and its outcome), one
//! line about the master, a table of the workers (index, pid, generation,
//! state, uptime, RSS, the worker's own STATUS text), then what the state
//! asks of the operator. Pure: the STATUS JSON and the time now in, text out.

use zdrestart::restart::Reason;
use zdrestart::status::{MasterState, StatusReport};

/// A duration for a person: `45s`, `3m 12s`, `2h 05m`, `3d 04h`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}s", s),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Bytes for a person, in KiB or MiB.
fn size(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b < 10 << 20 => format!("{:.1} MiB", b as f64 / 1048576.0).replace(".0 MiB", " MiB"),
        Some(b) => format!("{} MiB", b >> 20),
    }
}

/// Milliseconds as seconds with three decimals.
pub fn secs(ms: u64) -> String {
    format!("{}.{:03} s", ms / 1000, ms % 1000)
}

fn since(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        "-".into()
    } else {
        age(now_ms.saturating_sub(then_ms))
    }
}

/// The summary line.
fn summary(st: &StatusReport, now_ms: u64) -> String {
    let mut s = format!("{}: generation {}, version {}, magic {}, up {}", st.state, st.generation,
        if st.version.is_empty() { "-" } else { &st.version }, st.magic, since(now_ms, st.started_unix_ms));
    match &st.last_restart {
        None => s += "; last restart: none",
        Some(lr) => {
            s += &format!("; last restart: {}", lr.outcome);
            if let Some(g) = lr.generation {
                s += &format!(" (generation {})", g);
            }
            if let Some(ms) = lr.duration_ms {
                s += &format!(" in {}", secs(ms));
            }
            if let Some(r) = &lr.reason {
                s += &format!(": {}", r);
            }
            s += &format!(", started {}", lr.started);
        }
    }
    s
}

/// STATUS for a person; `now_ms`: the time now (Unix, ms), for uptimes.
pub fn render_status(st: &StatusReport, now_ms: u64) -> String {
    let mut o = summary(st, now_ms);
    o += "\n";
    o += &format!("master pid {}, RSS {}, listening on {}, {} workers ({} configured)",
        st.pid, size(st.rss_bytes), if st.listen.is_empty() { "-" } else { &st.listen }, st.workers.len(), st.workers_configured);
    if st.workers_hung > 0 {
        o += &format!(", {} hung workers since the master started (watchdog)", st.workers_hung);
    }
    o += "\n";
    if !st.workers.is_empty() {
        o += &format!("{:>5} {:>8} {:>4}  {:<16} {:>8} {:>9}  {}\n", "INDEX", "PID", "GEN", "STATE", "UPTIME", "RSS", "STATUS");
        for w in &st.workers {
            let state = if w.canary { format!("{} (canary)", w.state) } else { w.state.to_string() };
            let pid = match (w.pid, w.main_pid) {
                (_, Some(m)) => format!("{}*", m),
                (Some(p), None) => p.to_string(),
                (None, None) => "-".into(),
            };
            o += &format!("{:>5} {:>8} {:>4}  {:<16} {:>8} {:>9}  {}\n", w.index, pid, w.generation, state,
                since(now_ms, w.started_unix_ms), size(w.rss_bytes), w.status.as_deref().unwrap_or("-"));
        }
        if st.workers.iter().any(|w| w.main_pid.is_some()) {
            o += "  (*: the worker's main process, named with sd_notify MAINPID=)\n";
        }
    }
    if st.lockout {
        let r = Reason::AbortedRestart;
        o += &format!("\nLockout: {}.\n{}\n", r.describe(), r.advice());
    }
    if st.state == MasterState::Canary {
        o += "\nA canary restart is in progress: `zdrestartctl promote` carries it on to every worker once the canary \
              stands, `zdrestartctl rollback` stops the canary.\n";
    }
    if st.state == MasterState::NotReady {
        let r = Reason::NotReady;
        o += &format!("\nNot ready: {}; restarts are refused until it is.\n", r.describe());
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_status() {
        let v: StatusReport = serde_json::from_str(
            r#"{"state":"lockout","generation":3,"lockout":true,"magic":1,"version":"0.1.0","pid":100,
            "started":"2024-01-01T00:00:00.000Z","started_unix_ms":1000,"rss_bytes":2097152,"listen":"127.0.0.1:80",
            "last_restart":{"generation":3,"started":"2024-01-01T00:10:00.000Z",
            "outcome":"aborted","reason":"new worker 12 exited with status 1","duration_ms":1500},
            "workers":[{"pid":11,"generation":2,"index":0,"state":"ready","started":"2024-01-01T00:00:01.000Z",
            "started_unix_ms":2000,"rss_bytes":3500000,"status":"Gunicorn arbiter booted","main_pid":12}]}"#,
        )
        .unwrap();
        let s = render_status(&v, 3_723_000);
        assert!(s.starts_with("lockout: generation 3, version 0.1.0, magic 1, up 1h 02m; last restart: aborted (generation 3) \
            in 1.500 s: new worker 12 exited with status 1, started 2024-01-01T00:10:00.000Z\n"), "{}", s);
        assert!(s.contains("\nmaster pid 100, RSS 2 MiB, listening on 127.0.0.1:80, 1 workers (0 configured)\n"), "{}", s);
        assert!(s.contains("INDEX      PID  GEN  STATE              UPTIME       RSS  STATUS\n"), "{}", s);
        assert!(s.contains("    0      12*    2  ready              1h 02m   3.3 MiB  Gunicorn arbiter booted\n"), "{}", s);
        assert!(s.contains("restart the master as soon as possible"), "{}", s);
        let v: StatusReport = serde_json::from_str(
            r#"{"state":"canary","generation":1,"workers_hung":2,"workers":[{"pid":11,"generation":1,"state":"ready"},
            {"pid":12,"generation":2,"state":"soaking","canary":true}]}"#,
        )
        .unwrap();
        let s = render_status(&v, 0);
        assert!(s.starts_with("canary: generation 1") && s.contains("2 hung workers since"), "{}", s);
        assert!(s.contains("    0       12    2  soaking (canary)        -         -  -\n"), "{}", s);
        assert!(s.contains("zdrestartctl promote") && s.contains("zdrestartctl rollback"), "{}", s);
        let v: StatusReport = serde_json::from_str(r#"{"state":"running","last_restart":null,"workers":[]}"#).unwrap();
        let s = render_status(&v, 0);
        assert!(s.contains("last restart: none") && s.contains(", 0 workers"), "{}", s);
        assert_eq!((age(59_999), age(60_000), age(86_400_000)), ("59s".into(), "1m 00s".into(), "1d 00h".into()));
    }
}

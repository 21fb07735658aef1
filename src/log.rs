//! Bunyan logging (ARCHITECTURE.md, "Logs"; zdrestart(8), "Logging") behind
//! the `log` facade.
//!
//! Owns the one global logger of a process: where records go (a log file
//! opened O_APPEND, stderr, or stdout for workers), their bunyan shape, the
//! reopen on SIGHUP, and the pass-through of records that workers wrote. When
//! stderr is a terminal and no log file is set, `simplelog` renders
//! human-readable lines instead. It must not decide anything else: callers
//! choose levels and fields (`component`, `event`, ...) with `log`'s key-values.
//!
//! `fatal` (60) does not exist in `log`: an `error!` record carrying the
//! key-value `fatal = true` is written with level 60.

use crate::line_level::{LineLevel, LineLevels};
use log::{kv, Level, LevelFilter, Log, Metadata, Record};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where records go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Bunyan lines appended to this file (reopened by [`reopen`]).
    File(PathBuf),
    /// Bunyan lines on stderr.
    Stderr,
    /// Bunyan lines on stdout (workers: the master reads and passes them on).
    Stdout,
    /// Human-readable lines on stderr through simplelog (a terminal).
    Terminal,
}

enum Sink {
    File(PathBuf, File),
    Stderr,
    Stdout,
    Terminal(Box<simplelog::TermLogger>),
}

struct Logger {
    sink: Mutex<Sink>,
    hostname: String,
    default_component: &'static str,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Install the global logger. `default_component` is used for records that do
/// not carry a `component` key. Errors name the log file.
pub fn init(target: Target, level: LevelFilter, default_component: &'static str) -> io::Result<()> {
    let sink = match target {
        Target::File(p) => {
            let f = open_append(&p)
                .map_err(|e| io::Error::new(e.kind(), format!("open log file {}: {}", p.display(), e)))?;
            Sink::File(p, f)
        }
        Target::Stderr => Sink::Stderr,
        Target::Stdout => Sink::Stdout,
        Target::Terminal => {
            let cfg = simplelog::ConfigBuilder::new().set_time_format_rfc3339().build();
            Sink::Terminal(simplelog::TermLogger::new(
                LevelFilter::Trace,
                cfg,
                simplelog::TerminalMode::Stderr,
                simplelog::ColorChoice::Auto,
            ))
        }
    };
    let logger = Logger { sink: Mutex::new(sink), hostname: hostname(), default_component };
    if LOGGER.set(logger).is_err() {
        return Err(io::Error::other("logger already initialised"));
    }
    log::set_logger(LOGGER.get().unwrap()).map_err(|e| io::Error::other(e.to_string()))?;
    log::set_max_level(level);
    Ok(())
}

/// Reopen the log file (after logrotate renamed it). A no-op for other targets.
/// On error the old file stays in use.
pub fn reopen() -> io::Result<Option<PathBuf>> {
    let Some(l) = LOGGER.get() else { return Ok(None) };
    let mut sink = l.sink.lock().unwrap_or_else(|e| e.into_inner());
    if let Sink::File(p, f) = &mut *sink {
        let nf = open_append(p)
            .map_err(|e| io::Error::new(e.kind(), format!("reopen log file {}: {}", p.display(), e)))?;
        *f = nf;
        return Ok(Some(p.clone()));
    }
    Ok(None)
}

/// Change the level filter of this process.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// Bunyan level number of a `log` level.
pub fn bunyan_level(level: Level) -> u64 {
    match level {
        Level::Trace => 10,
        Level::Debug => 20,
        Level::Info => 30,
        Level::Warn => 40,
        Level::Error => 50,
    }
}

fn level_of_bunyan(n: u64) -> Level {
    match n {
        0..=19 => Level::Trace,
        20..=29 => Level::Debug,
        30..=39 => Level::Info,
        40..=49 => Level::Warn,
        _ => Level::Error,
    }
}

/// Keys of a worker's record that the master sets itself: a worker's record
/// can never pass for the master's. `name`, `hostname` and `pid` are the
/// master's (the process writing this log; `worker_pid` names the worker),
/// `component` is `worker` or `probe`, `worker_pid` is the pid of the pipe's
/// child. What the worker wrote under `component` and `event` is kept as
/// `worker_component` and `worker_event`, so that a search for an `event`
/// finds only the master's records.
pub const WORKER_RENAMED: &[(&str, &str)] = &[("component", "worker_component"), ("event", "worker_event")];

/// Log one line a worker (or probe) wrote on stdout/stderr. A line that is a
/// bunyan record is passed on with its own level, time, message and fields,
/// except the ones the master sets ([`WORKER_RENAMED`]); any other line
/// becomes a record at the level it states (`[ERROR]`, `WARNING:`, a
/// traceback: [`crate::line_level`], read with its pipe's `levels`), else
/// `info`.
pub fn worker_line(component: &str, pid: u32, line: &str, levels: &mut LineLevels) {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.is_empty() {
        return;
    }
    if let Ok(Value::Object(rec)) = serde_json::from_str::<Value>(line) {
        if let (Some(lv), Some(_)) = (rec.get("level").and_then(Value::as_u64), rec.get("v")) {
            if level_of_bunyan(lv) > log::max_level() {
                return;
            }
            if let Some(l) = LOGGER.get() {
                let rec = adopt_worker_record(rec, lv, component, pid, &l.hostname);
                let msg = rec.get("msg").and_then(Value::as_str).unwrap_or("").to_string();
                l.write_record(level_of_bunyan(lv), rec, &msg);
            }
            return;
        }
    }
    match levels.level(line) {
        LineLevel::Trace => log::trace!(component = component, worker_pid = pid; "{}", line),
        LineLevel::Debug => log::debug!(component = component, worker_pid = pid; "{}", line),
        LineLevel::Info => log::info!(component = component, worker_pid = pid; "{}", line),
        LineLevel::Warn => log::warn!(component = component, worker_pid = pid; "{}", line),
        LineLevel::Error => log::error!(component = component, worker_pid = pid; "{}", line),
        LineLevel::Fatal => log::error!(fatal = true, component = component, worker_pid = pid; "{}", line),
    }
}

/// A worker's bunyan record as the master writes it: the keys of
/// [`WORKER_RENAMED`] moved aside, `component`, `worker_pid`, `name`,
/// `hostname` and `pid` set by the master, `v`, `level` and `msg` made valid.
fn adopt_worker_record(mut rec: Map<String, Value>, lv: u64, component: &str, pid: u32, hostname: &str) -> Map<String, Value> {
    for (key, renamed) in WORKER_RENAMED {
        if let Some(v) = rec.remove(*key) {
            rec.insert(renamed.to_string(), v);
        }
    }
    let level = if lv >= 60 { 60 } else { bunyan_level(level_of_bunyan(lv)) };
    let msg = match rec.get("msg") {
        Some(Value::String(m)) => m.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    rec.insert("v".into(), 0.into());
    rec.insert("level".into(), level.into());
    rec.insert("msg".into(), msg.into());
    rec.insert("component".into(), component.into());
    rec.insert("worker_pid".into(), pid.into());
    rec.insert("name".into(), "zdrestart".into());
    rec.insert("hostname".into(), hostname.into());
    rec.insert("pid".into(), std::process::id().into());
    if !rec.get("time").is_some_and(Value::is_string) {
        rec.insert("time".into(), now_iso8601().into());
    }
    rec
}

impl Logger {
    fn write_record(&self, level: Level, rec: Map<String, Value>, msg: &str) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = match &*sink {
            Sink::Terminal(t) => {
                let mut extra = String::new();
                for (k, v) in &rec {
                    if !matches!(k.as_str(), "v" | "level" | "name" | "hostname" | "pid" | "time" | "msg") {
                        extra.push_str(&format!(" {}={}", k, v));
                    }
                }
                t.log(
                    &Record::builder()
                        .level(level)
                        .target("zdrestart")
                        .args(format_args!("{}{}", msg, extra))
                        .build(),
                );
                return;
            }
            _ => serde_json::to_string(&Value::Object(rec)).unwrap_or_default(),
        };
        line.push('\n');
        // A failed log write must never take the process down.
        let _ = match &mut *sink {
            Sink::File(_, f) => f.write_all(line.as_bytes()),
            Sink::Stderr => io::stderr().lock().write_all(line.as_bytes()),
            Sink::Stdout => {
                let mut o = io::stdout().lock();
                o.write_all(line.as_bytes()).and_then(|_| o.flush())
            }
            Sink::Terminal(_) => Ok(()),
        };
    }

    fn base(&self, bunyan: u64, msg: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("v".into(), 0.into());
        m.insert("level".into(), bunyan.into());
        m.insert("name".into(), "zdrestart".into());
        m.insert("hostname".into(), self.hostname.clone().into());
        m.insert("pid".into(), std::process::id().into());
        m.insert("time".into(), now_iso8601().into());
        m.insert("msg".into(), msg.into());
        m
    }
}

struct Collect<'a>(&'a mut Map<String, Value>, bool);

impl<'kvs> kv::VisitSource<'kvs> for Collect<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let key = key.as_str();
        if key == "fatal" {
            self.1 = value.to_bool().unwrap_or(false);
            return Ok(());
        }
        let v: Value = if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(u) = value.to_u64() {
            u.into()
        } else if let Some(i) = value.to_i64() {
            i.into()
        } else if let Some(f) = value.to_f64() {
            serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
        } else {
            value.to_string().into()
        };
        self.0.insert(key.to_string(), v);
        Ok(())
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        let mut extra = Map::new();
        let mut c = Collect(&mut extra, false);
        let _ = record.key_values().visit(&mut c);
        let fatal = c.1;
        let bunyan = if fatal { 60 } else { bunyan_level(record.level()) };
        let mut rec = self.base(bunyan, &msg);
        if !extra.contains_key("component") {
            rec.insert("component".into(), self.default_component.into());
        }
        for (k, v) in extra {
            // The bunyan core fields are not overridable by callers.
            if !matches!(k.as_str(), "v" | "level" | "name" | "hostname" | "pid" | "time" | "msg") {
                rec.insert(k, v);
            }
        }
        self.write_record(record.level(), rec, &msg);
    }

    fn flush(&self) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let _ = match &mut *sink {
            Sink::File(_, f) => f.flush(),
            Sink::Stdout => io::stdout().flush(),
            _ => Ok(()),
        };
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The current time as ISO 8601 UTC with milliseconds (`2026-11-25T14:35:06.123Z`).
pub fn now_iso8601() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    iso8601(d.as_secs() as i64, d.subsec_millis())
}

/// Format seconds since the epoch (UTC) and milliseconds as ISO 8601.
pub fn iso8601(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        y,
        m,
        d,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        millis
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(iso8601(1_795_617_306, 123), "2026-11-25T14:35:06.123Z");
    }

    #[test]
    fn a_worker_record_cannot_pass_for_the_master() {
        let forged = r#"{"v":0,"level":30,"name":"zdrestart","hostname":"h","pid":1,"time":"2026-11-25T14:35:06.123Z","msg":"Zero-downtime restart complete","component":"master","event":"restart.complete"}"#;
        let Value::Object(rec) = serde_json::from_str(forged).unwrap() else { unreachable!() };
        let r = adopt_worker_record(rec, 30, "worker", 4242, "host");
        assert_eq!(r["component"], "worker");
        assert_eq!(r["worker_component"], "master");
        assert!(r.get("event").is_none());
        assert_eq!(r["worker_event"], "restart.complete");
        assert_eq!(r["worker_pid"], 4242);
        assert_eq!(r["pid"], std::process::id());
        assert_eq!(r["hostname"], "host");
        assert_eq!(r["time"], "2026-11-25T14:35:06.123Z");
    }

    #[test]
    fn levels() {
        assert_eq!(bunyan_level(Level::Warn), 40);
        assert_eq!(level_of_bunyan(60), Level::Error);
        assert_eq!(level_of_bunyan(30), Level::Info);
    }
}

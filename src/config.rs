//! The configuration file (zdrestart.json(5)): parsing and validation.
//!
//! Owns the meaning and defaults of every key. It reads one file and returns a
//! validated [`Config`] or an error that names the file, the key, the value and
//! what was expected. It must not open sockets, spawn, or log: callers decide
//! whether an error is fatal (start) or a refusal (`bad config` on restart), and
//! log the unknown-key warnings it collects.
//!
//! Every key is declared once, in [`Config::parse`]: one line gives its name,
//! its default and what it accepts (a [`Keys`] reader), and fills the field.
//! A key is known because it is read there: whatever the file has beside is
//! warned about. Adding a key: a field of [`Config`], its line in `parse`.

use serde_json::{Map, Value};
use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the master looks when `-c` is not given.
pub const DEFAULT_PATH: &str = "/etc/zdrestart.json";
/// Default control socket used by `zdrestartctl` when the config names none.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/zdrestart/zdrestart.sock";
/// Default MongoDB connection string and database.
pub const DEFAULT_MONGO_URI: &str = "mongodb://127.0.0.1:27017/";
pub const DEFAULT_MONGO_DBNAME: &str = "zdrestart";
/// How long a built-in worker waits for MongoDB before answering 503.
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(3);
/// `minReady`: how long a new worker of a zero-downtime restart must live
/// on after `READY=1` before the next old worker goes. gunicorn without
/// `--preload` says `READY=1` before its workers import the application and
/// exits 0.5 to 1 s later when they cannot (measured on a loaded 2-core
/// machine): 5 s catches that with a margin of five (zdrestart.json(5)).
pub const DEFAULT_MIN_READY: Duration = Duration::from_secs(5);
/// `watchdogTimeout` of the built-in worker, whose event loop sends a
/// heartbeat every half of it: the loop never blocks (driver requests run on
/// threads), so a heartbeat 30 s late means a hung or stopped loop, and 30 s
/// is gunicorn's `timeout`. Other workers: off unless configured.
pub const DEFAULT_BUILTIN_WATCHDOG: Duration = Duration::from_secs(30);

/// The Databank driver the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Memory,
    /// One SQLite database file shared by every worker of this host.
    Sqlite,
    Mongodb,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Memory => "memory",
            Driver::Sqlite => "sqlite",
            Driver::Mongodb => "mongodb",
        }
    }
}

/// Where a worker reports readiness (`notify`): the report pipe of this
/// project, systemd's `$NOTIFY_SOCKET` (sd_notify(3)), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Notify {
    /// `ZDRESTART_NOTIFY_FD` only (the default: today's workers unchanged).
    #[default]
    Zdrestart,
    /// `$NOTIFY_SOCKET` only: any server that speaks sd_notify(3).
    Systemd,
    /// Both; a report counts from either.
    Both,
}

impl Notify {
    pub fn as_str(self) -> &'static str {
        match self {
            Notify::Zdrestart => "zdrestart",
            Notify::Systemd => "systemd",
            Notify::Both => "both",
        }
    }

    /// Reports on the report pipe count.
    pub fn pipe(self) -> bool {
        self != Notify::Systemd
    }

    /// The worker is offered `$NOTIFY_SOCKET`.
    pub fn socket(self) -> bool {
        self != Notify::Zdrestart
    }
}

/// What the master does when a canary has stood `canaryTimeout` seconds
/// without a `promote` or `rollback` (`canaryAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryAction {
    Promote,
    Rollback,
}

impl CanaryAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryAction::Promote => "promote",
            CanaryAction::Rollback => "rollback",
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Absolute path of the file this was read from.
    pub path: PathBuf,
    pub workers: u32,
    pub address: String,
    pub port: u16,
    pub driver: Driver,
    /// Driver parameters as given (for workers that want more than we validate).
    pub params: Map<String, Value>,
    /// `params.uri` (mongodb).
    pub mongo_uri: String,
    /// `params.dbname` (mongodb).
    pub mongo_dbname: String,
    /// `params.timeout` (sqlite, mongodb): seconds before a request answers 503.
    pub db_timeout: Duration,
    /// `params.path` (sqlite, required with it): the database file, absolute.
    pub sqlite_path: Option<PathBuf>,
    pub logfile: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    pub pidfile: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// `metricsFile`: the Prometheus text the master keeps up to date for
    /// node_exporter's textfile collector (absolute).
    pub metrics_file: Option<PathBuf>,
    pub server_user: Option<String>,
    /// Worker argv; `None` means the built-in worker.
    pub worker: Option<Vec<String>>,
    pub shutdown_timeout: Duration,
    pub ready_timeout: Duration,
    pub probe_timeout: Duration,
    pub threads: u32,
    /// `notify`: where workers report.
    pub notify: Notify,
    /// `probe`: run the probe of the worker program (false: the config
    /// declares what it would have reported, `magic` and `version`).
    pub probe: bool,
    /// `magic`: the magic number declared for a worker without a probe
    /// (always `Some` when `probe` is false).
    pub magic: Option<u64>,
    /// `version`: the version declared for a worker without a probe.
    pub version: Option<String>,
    /// `sharedState`: whether every worker of every generation serves the
    /// same data, declared for a worker without a probe (always `Some`
    /// when `probe` is false).
    pub shared_state: Option<bool>,
    /// `minReady`: a new worker of a restart must stay alive and well this
    /// long after `READY=1` before an old worker goes (zero: at once).
    pub min_ready: Duration,
    /// `maxSurge`: new workers of a restart that may be starting (spawned,
    /// not ready yet) at once.
    pub max_surge: u32,
    /// `watchdogTimeout`: a ready worker must send a heartbeat (`WATCHDOG=1`)
    /// within this of the last one (None: no watchdog).
    pub watchdog_timeout: Option<Duration>,
    /// `canaryTimeout`: a canary that stood this long is promoted or rolled
    /// back (`canary_action`); None: it waits for the operator.
    pub canary_timeout: Option<Duration>,
    /// `canaryAction`.
    pub canary_action: CanaryAction,
    /// Non-fatal findings (unknown keys), for the caller to log.
    pub warnings: Vec<String>,
}

/// A configuration error. `Display` gives one line that names the file and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: key \"{}\": {}", self.path.display(), k, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read and validate `path`. The path is made absolute (workers get it in
    /// `ZDRESTART_CONFIG` and may run in another directory).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let abs = absolute(path);
        let text = std::fs::read_to_string(&abs).map_err(|e| ConfigError {
            path: abs.clone(),
            key: None,
            message: format!("cannot read: {}", e),
        })?;
        Config::parse(&abs, &text)
    }

    /// Validate the text of a config file; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError { path: path.to_path_buf(), key: None, message };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| err(format!("invalid JSON at line {} column {}: {}", e.line(), e.column(), e)))?;
        let obj = match value {
            Value::Object(o) => o,
            other => return Err(err(format!("expected a JSON object, found {}", kind(&other)))),
        };
        let k = Keys::new(&obj, path, "");
        let params = k.object("params")?;
        // `params`: the keys the master knows; others are the worker's (no warning).
        let p = Keys::new(&params, path, "params.");
        let drivers = [("memory", Driver::Memory), ("sqlite", Driver::Sqlite), ("mongodb", Driver::Mongodb)];
        let driver = k.choice("driver", &drivers, Driver::Memory)?;
        // Only the sqlite driver's: other workers may give params.path a meaning of their own.
        let sqlite_path = if driver == Driver::Sqlite { p.path("path")? } else { None };
        let mut c = Config {
            path: path.to_path_buf(),
            workers: k.int("workers", 2, 1, 1024)? as u32,
            address: k.text("address", "127.0.0.1", "an IP address or host name")?,
            port: k.int("port", 8080, 0, 65535)? as u16,
            driver,
            mongo_uri: p.string("uri")?.unwrap_or_else(|| DEFAULT_MONGO_URI.into()),
            mongo_dbname: p.dbname("dbname", DEFAULT_MONGO_DBNAME)?,
            db_timeout: p.seconds("timeout", DEFAULT_DB_TIMEOUT)?,
            sqlite_path,
            params,
            logfile: k.path("logfile")?,
            log_level: k.level("logLevel", log::LevelFilter::Info)?,
            pidfile: k.path("pidfile")?,
            control_socket: k.path("controlSocket")?,
            metrics_file: k.path("metricsFile")?,
            server_user: k.name("serverUser", "a user name")?,
            worker: k.argv("worker")?,
            shutdown_timeout: k.seconds("shutdownTimeout", Duration::from_secs(30))?,
            ready_timeout: k.seconds("readyTimeout", Duration::from_secs(30))?,
            probe_timeout: k.seconds("probeTimeout", Duration::from_secs(10))?,
            threads: k.int("threads", 4, 1, 1024)? as u32,
            notify: k.choice("notify", &[("zdrestart", Notify::Zdrestart), ("systemd", Notify::Systemd), ("both", Notify::Both)], Notify::Zdrestart)?,
            probe: k.boolean("probe", true)?,
            magic: k.magic("magic")?,
            version: k.string("version")?,
            shared_state: k.flag("sharedState")?,
            min_ready: k.seconds_or_zero("minReady", DEFAULT_MIN_READY)?,
            max_surge: k.int("maxSurge", 1, 1, 1024)? as u32,
            watchdog_timeout: None,
            canary_timeout: k.optional_seconds("canaryTimeout")?,
            canary_action: k.choice("canaryAction", &[("rollback", CanaryAction::Rollback), ("promote", CanaryAction::Promote)], CanaryAction::Rollback)?,
            warnings: Vec::new(),
        };
        // Off for a worker of one's own (it may know nothing of heartbeats),
        // on for the built-in worker, which sends them from its event loop.
        let watchdog_default = if c.worker.is_none() { DEFAULT_BUILTIN_WATCHDOG } else { Duration::ZERO };
        c.watchdog_timeout = Some(k.seconds_or_zero("watchdogTimeout", watchdog_default)?).filter(|d| !d.is_zero());
        c.warnings = k.unknown();
        c.check_together()?;
        Ok(c)
    }

    /// The rules between keys, once each is valid on its own.
    fn check_together(&mut self) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| ConfigError { path: self.path.clone(), key: Some(key.into()), message };
        if self.driver == Driver::Mongodb && !(self.mongo_uri.starts_with("mongodb://") || self.mongo_uri.starts_with("mongodb+srv://")) {
            return Err(fail("params.uri", format!("expected a mongodb:// connection string, found \"{}\"", self.mongo_uri)));
        }
        if self.driver == Driver::Sqlite && self.sqlite_path.is_none() {
            return Err(fail("params.path", "required with driver \"sqlite\": the database file every worker shares".into()));
        }
        if self.probe {
            let declared = [("magic", self.magic.is_some()), ("version", self.version.is_some()), ("sharedState", self.shared_state.is_some())];
            for (key, set) in declared {
                if set {
                    self.warnings.push(format!(
                        "{}: key \"{}\" ignored: it is used only when \"probe\" is false (the probe reports it)",
                        self.path.display(),
                        key
                    ));
                }
            }
        } else if self.magic.is_none() {
            return Err(fail("magic", "required when \"probe\" is false: the magic number the probe would have reported".into()));
        } else if self.shared_state.is_none() {
            return Err(fail(
                "sharedState",
                "required when \"probe\" is false: true if every worker of every generation serves the same data \
                 (a store they share: zero-downtime restarts need it), false if each worker keeps state of its own"
                    .into(),
            ));
        }
        if self.canary_timeout.is_none() && self.canary_action != CanaryAction::Rollback {
            self.warnings.push(format!(
                "{}: key \"canaryAction\" ignored: it is used only with \"canaryTimeout\"",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// `address:port` as written in logs and errors (IPv6 in brackets).
    pub fn listen_display(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// Parse a bunyan/pump.io level name (`fatal` maps to the `log` crate's Error).
pub fn parse_level(s: &str) -> Option<log::LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "trace" => log::LevelFilter::Trace,
        "debug" => log::LevelFilter::Debug,
        "info" => log::LevelFilter::Info,
        "warn" => log::LevelFilter::Warn,
        "error" | "fatal" => log::LevelFilter::Error,
        _ => return None,
    })
}

/// `path` made absolute against the current directory, without touching the disk.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf())
    }
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {}", b),
        Value::Number(n) => format!("number {}", n),
        Value::String(s) => format!("string \"{}\"", s),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Reads the keys of one JSON object, each under its name in messages
/// (`prefix` + key), and remembers which it read: the others are unknown.
struct Keys<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
    prefix: &'static str,
    read: RefCell<Vec<&'static str>>,
}

impl<'a> Keys<'a> {
    fn new(obj: &'a Map<String, Value>, path: &'a Path, prefix: &'static str) -> Keys<'a> {
        Keys { obj, path, prefix, read: RefCell::new(Vec::new()) }
    }

    /// The value of `key` (absent and null are the same: the default).
    fn get(&self, key: &'static str) -> Option<&'a Value> {
        self.read.borrow_mut().push(key);
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn fail(&self, key: &str, message: String) -> ConfigError {
        ConfigError { path: self.path.to_path_buf(), key: Some(format!("{}{}", self.prefix, key)), message }
    }

    /// Warnings for the keys of the object that were never read.
    fn unknown(&self) -> Vec<String> {
        let read = self.read.borrow();
        let unknown = self.obj.keys().filter(|k| !read.contains(&k.as_str()));
        unknown.map(|k| format!("{}: unknown key \"{}\" ignored", self.path.display(), k)).collect()
    }

    fn int(&self, key: &'static str, default: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
        let expected = |found: String| self.fail(key, format!("expected an integer from {} to {}, found {}", min, max, found));
        match self.get(key) {
            None => Ok(default),
            Some(Value::Number(n)) if n.as_i64().is_some() => {
                let v = n.as_i64().unwrap_or_default();
                if v < min || v > max {
                    Err(expected(v.to_string()))
                } else {
                    Ok(v)
                }
            }
            Some(other) => Err(expected(kind(other))),
        }
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.fail(key, format!("expected a string, found {}", kind(other)))),
        }
    }

    /// A non-empty string, `what` it must be.
    fn name(&self, key: &'static str, what: &str) -> Result<Option<String>, ConfigError> {
        match self.string(key)? {
            Some(s) if s.is_empty() => Err(self.fail(key, format!("expected {}, found \"\"", what))),
            other => Ok(other),
        }
    }

    /// A non-empty string with a default.
    fn text(&self, key: &'static str, default: &str, what: &str) -> Result<String, ConfigError> {
        Ok(self.name(key, what)?.unwrap_or_else(|| default.into()))
    }

    /// One of `choices` (its words, as the file spells them).
    fn choice<T: Copy>(&self, key: &'static str, choices: &[(&str, T)], default: T) -> Result<T, ConfigError> {
        let Some(word) = self.string(key)? else { return Ok(default) };
        if let Some(&(_, v)) = choices.iter().find(|(w, _)| *w == word) {
            return Ok(v);
        }
        let quoted: Vec<String> = choices.iter().map(|(w, _)| format!("\"{}\"", w)).collect();
        let expected = match quoted.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {}", rest.join(", "), last),
            None => String::new(),
        };
        Err(self.fail(key, format!("expected {}, found \"{}\"", expected, word)))
    }

    fn boolean(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.fail(key, format!("expected true or false, found {}", kind(other)))),
        }
    }

    /// A boolean without a default: absent is `None`.
    fn flag(&self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.fail(key, format!("expected true or false, found {}", kind(other)))),
        }
    }

    fn object(&self, key: &'static str) -> Result<Map<String, Value>, ConfigError> {
        match self.get(key) {
            None => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(other) => Err(self.fail(key, format!("expected an object, found {}", kind(other)))),
        }
    }

    fn path(&self, key: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) if s.is_empty() || s.contains('\0') => Err(self.fail(key, format!("expected a file path, found \"{}\"", s))),
            Some(s) => Ok(Some(absolute(Path::new(&s)))),
        }
    }

    fn seconds(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v > 0.0 && v <= 86400.0 => Ok(Duration::from_secs_f64(v)),
                _ => Err(self.fail(key, format!("expected a number of seconds greater than 0 and at most 86400, found {}", n))),
            },
            Some(other) => Err(self.fail(key, format!("expected a number of seconds greater than 0, found {}", kind(other)))),
        }
    }

    /// Seconds from 0 (off) to 86400.
    fn seconds_or_zero(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if (0.0..=86400.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
                _ => Err(self.fail(key, format!("expected a number of seconds from 0 (off) to 86400, found {}", n))),
            },
            Some(other) => Err(self.fail(key, format!("expected a number of seconds from 0 (off) to 86400, found {}", kind(other)))),
        }
    }

    /// Seconds, or none when the key is absent.
    fn optional_seconds(&self, key: &'static str) -> Result<Option<Duration>, ConfigError> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.seconds(key, Duration::ZERO).map(Some)
    }

    fn level(&self, key: &'static str, default: log::LevelFilter) -> Result<log::LevelFilter, ConfigError> {
        match self.string(key)? {
            None => Ok(default),
            Some(s) => parse_level(&s)
                .ok_or_else(|| self.fail(key, format!("expected one of trace, debug, info, warn, error, fatal, found \"{}\"", s))),
        }
    }

    /// The worker's argv: a non-empty array of non-empty strings.
    fn argv(&self, key: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
        let a = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(other) => return Err(self.fail(key, format!("expected a non-empty array of strings (argv), found {}", other))),
        };
        let mut argv = Vec::new();
        for v in a {
            match v {
                Value::String(s) if !s.is_empty() && !s.contains('\0') => argv.push(s.clone()),
                other => {
                    return Err(self.fail(key, format!("expected an array of non-empty strings (argv), found element {}", other)))
                }
            }
        }
        Ok(Some(argv))
    }

    /// A MongoDB database name.
    fn dbname(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let name = self.string(key)?.unwrap_or_else(|| default.into());
        if name.is_empty() || name.len() > 63 || name.contains(|c: char| "/\\. \"$\0".contains(c)) {
            let message = format!("expected a database name (1-63 characters, none of /\\. \"$), found \"{}\"", name);
            return Err(self.fail(key, message));
        }
        Ok(name)
    }

    /// A magic number: an integer from 0 to 2^64-1.
    fn magic(&self, key: &'static str) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(other) => Err(self.fail(key, format!("expected an integer from 0 to {}, found {}", u64::MAX, kind(other)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/z.json"), s)
    }

    #[test]
    fn defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.address, "127.0.0.1");
        assert_eq!(c.port, 8080);
        assert_eq!(c.driver, Driver::Memory);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.ready_timeout, Duration::from_secs(30));
        assert_eq!(c.probe_timeout, Duration::from_secs(10));
        assert_eq!(c.threads, 4);
        assert_eq!(c.mongo_uri, DEFAULT_MONGO_URI);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let e = parse(r#"{"workers": 0}"#).unwrap_err();
        assert_eq!(e.to_string(), "/etc/z.json: key \"workers\": expected an integer from 1 to 1024, found 0");
        let e = parse(r#"{"port": "80"}"#).unwrap_err();
        assert!(e.to_string().contains("key \"port\""), "{}", e);
        assert!(e.to_string().contains("string \"80\""), "{}", e);
        let e = parse(r#"{"driver": "redis"}"#).unwrap_err();
        assert!(e.to_string().contains("\"redis\""));
        let e = parse(r#"{"shutdownTimeout": -1}"#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("shutdownTimeout"));
        let e = parse(r#"{"logLevel": "loud"}"#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("logLevel"));
        let e = parse(r#"{"worker": []}"#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("worker"));
        let e = parse(r#"{"driver":"sqlite"}"#).unwrap_err();
        assert_eq!(e.to_string(), "/etc/z.json: key \"params.path\": required with driver \"sqlite\": the database file every worker shares");
        let e = parse(r#"{"driver":"sqlite","params":{"path":""}}"#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("params.path"));
        let c = parse(r#"{"driver":"sqlite","params":{"path":"rel/z.db"}}"#).unwrap();
        assert_eq!(c.driver, Driver::Sqlite);
        assert!(c.sqlite_path.unwrap().is_absolute());
        let e = parse(r#"{"driver":"mongodb","params":{"uri":"http://x"}}"#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("params.uri"));
        let e = parse(r#"{"params":{"dbname":"a.b"}}"#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("params.dbname"));
    }

    #[test]
    fn bad_json_names_line() {
        let e = parse("{\n\"workers\": 2,,\n}").unwrap_err();
        assert!(e.key.is_none());
        assert!(e.to_string().contains("line 2"), "{}", e);
        assert!(parse("[1]").unwrap_err().to_string().contains("expected a JSON object"));
    }

    #[test]
    fn unknown_keys_warn() {
        let c = parse(r#"{"wokers": 3}"#).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("\"wokers\""));
    }

    #[test]
    fn fractional_timeouts_and_paths() {
        let c = parse(r#"{"readyTimeout": 0.5, "logfile": "rel/x.log"}"#).unwrap();
        assert_eq!(c.ready_timeout, Duration::from_millis(500));
        assert!(c.logfile.unwrap().is_absolute());
    }

    #[test]
    fn notify_and_declared_probe() {
        let c = parse("{}").unwrap();
        assert_eq!((c.notify, c.probe, c.magic), (Notify::Zdrestart, true, None));
        let c = parse(r#"{"notify": "systemd", "probe": false, "magic": 18446744073709551615, "version": "g1", "sharedState": true}"#).unwrap();
        assert_eq!((c.notify, c.probe, c.magic, c.version.as_deref()), (Notify::Systemd, false, Some(u64::MAX), Some("g1")));
        assert_eq!(c.shared_state, Some(true));
        let e = parse(r#"{"probe": false, "magic": 1}"#).unwrap_err();
        assert_eq!(e.to_string(), "/etc/z.json: key \"sharedState\": required when \"probe\" is false: true if every worker of every generation serves the same data (a store they share: zero-downtime restarts need it), false if each worker keeps state of its own");
        let e = parse(r#"{"probe": false, "magic": 1, "sharedState": "yes"}"#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sharedState"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(parse(r#"{"notify": "both"}"#).unwrap().notify, Notify::Both);
        let e = parse(r#"{"notify": "sd"}"#).unwrap_err();
        assert_eq!(e.to_string(), "/etc/z.json: key \"notify\": expected \"zdrestart\", \"systemd\" or \"both\", found \"sd\"");
        let e = parse(r#"{"probe": "no"}"#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("probe"));
        let e = parse(r#"{"probe": false}"#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("magic"), "{}", e);
        for bad in [r#"-1"#, r#"1.5"#, r#""7""#] {
            let e = parse(&format!(r#"{{"probe": false, "magic": {}, "sharedState": true}}"#, bad)).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("magic"), "{}", e);
        }
        let e = parse(r#"{"probe": false, "magic": 1, "version": 2, "sharedState": true}"#).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("version"));
        // With the probe on, a declared magic number is not used: say so.
        let c = parse(r#"{"magic": 3}"#).unwrap();
        assert!(c.warnings[0].contains("\"magic\" ignored"), "{:?}", c.warnings);
    }

    #[test]
    fn rollout_keys() {
        let c = parse("{}").unwrap();
        assert_eq!((c.min_ready, c.max_surge), (DEFAULT_MIN_READY, 1));
        assert_eq!(c.watchdog_timeout, Some(DEFAULT_BUILTIN_WATCHDOG), "the built-in worker's");
        assert_eq!((c.canary_timeout, c.canary_action), (None, CanaryAction::Rollback));
        // A worker of one's own: no watchdog unless configured.
        assert_eq!(parse(r#"{"worker": ["/bin/w"]}"#).unwrap().watchdog_timeout, None);
        let c = parse(r#"{"worker": ["/bin/w"], "watchdogTimeout": 2.5, "minReady": 0, "maxSurge": 4,
            "canaryTimeout": 60, "canaryAction": "promote"}"#).unwrap();
        assert_eq!(c.watchdog_timeout, Some(Duration::from_millis(2500)));
        assert_eq!((c.min_ready, c.max_surge), (Duration::ZERO, 4));
        assert_eq!((c.canary_timeout, c.canary_action), (Some(Duration::from_secs(60)), CanaryAction::Promote));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(parse(r#"{"watchdogTimeout": 0}"#).unwrap().watchdog_timeout, None, "0 turns it off");
        for (bad, key) in [(r#"{"minReady": -1}"#, "minReady"), (r#"{"maxSurge": 0}"#, "maxSurge"),
            (r#"{"watchdogTimeout": "5"}"#, "watchdogTimeout"), (r#"{"canaryTimeout": 0}"#, "canaryTimeout"),
            (r#"{"canaryAction": "wait"}"#, "canaryAction")] {
            assert_eq!(parse(bad).unwrap_err().key.as_deref(), Some(key), "{}", bad);
        }
        let e = parse(r#"{"minReady": 90000}"#).unwrap_err();
        assert_eq!(e.to_string(), "/etc/z.json: key \"minReady\": expected a number of seconds from 0 (off) to 86400, found 90000");
        let c = parse(r#"{"canaryAction": "promote"}"#).unwrap();
        assert!(c.warnings[0].contains("\"canaryAction\" ignored"), "{:?}", c.warnings);
    }

    #[test]
    fn ipv6_display() {
        let c = parse(r#"{"address": "::1", "port": 9}"#).unwrap();
        assert_eq!(c.listen_display(), "[::1]:9");
    }
}

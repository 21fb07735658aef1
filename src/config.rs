//! The configuration file (zdrestart.json(5)): parsing and validation.
//!
//! Owns the meaning and defaults of every key. It reads one file and returns a
//! validated [`Config`] or an error that names the file, the key, the value and
//! what was expected. It must not open sockets, spawn, or log: callers decide
//! whether an error is fatal (start) or a refusal (`bad config` on restart), and
//! log the unknown-key warnings it collects.

use serde_json::{Map, Value};
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

const KNOWN_KEYS: &[&str] = &[
    "workers",
    "address",
    "port",
    "driver",
    "params",
    "logfile",
    "logLevel",
    "pidfile",
    "controlSocket",
    "serverUser",
    "worker",
    "shutdownTimeout",
    "readyTimeout",
    "probeTimeout",
    "threads",
];

/// The Databank driver the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Memory,
    Mongodb,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Memory => "memory",
            Driver::Mongodb => "mongodb",
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
    /// `params.timeout` (mongodb): seconds before a request answers 503.
    pub db_timeout: Duration,
    pub logfile: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    pub pidfile: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub server_user: Option<String>,
    /// Worker argv; `None` means the built-in worker.
    pub worker: Option<Vec<String>>,
    pub shutdown_timeout: Duration,
    pub ready_timeout: Duration,
    pub probe_timeout: Duration,
    pub threads: u32,
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
        let err = |key: Option<&str>, message: String| ConfigError {
            path: path.to_path_buf(),
            key: key.map(str::to_string),
            message,
        };
        let value: Value = serde_json::from_str(text).map_err(|e| {
            err(None, format!("invalid JSON at line {} column {}: {}", e.line(), e.column(), e))
        })?;
        let obj = match value {
            Value::Object(o) => o,
            other => {
                return Err(err(None, format!("expected a JSON object, found {}", kind(&other))))
            }
        };
        let mut warnings = Vec::new();
        for k in obj.keys() {
            if !KNOWN_KEYS.contains(&k.as_str()) {
                warnings.push(format!("{}: unknown key \"{}\" ignored", path.display(), k));
            }
        }
        let r = Reader { obj: &obj, path };

        let workers = r.int("workers", 2, 1, 1024)? as u32;
        let address = r.string("address")?.unwrap_or_else(|| "127.0.0.1".into());
        if address.is_empty() {
            return Err(err(Some("address"), "expected an IP address or host name, found \"\"".into()));
        }
        let port = r.int("port", 8080, 0, 65535)? as u16;
        let driver = match r.string("driver")?.as_deref() {
            None | Some("memory") => Driver::Memory,
            Some("mongodb") => Driver::Mongodb,
            Some(other) => {
                return Err(err(
                    Some("driver"),
                    format!("expected \"memory\" or \"mongodb\", found \"{}\"", other),
                ))
            }
        };
        let params = match obj.get("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(err(Some("params"), format!("expected an object, found {}", kind(other))))
            }
        };
        let pr = Reader { obj: &params, path };
        let mongo_uri = pr.string_as("uri", "params.uri")?.unwrap_or_else(|| DEFAULT_MONGO_URI.into());
        if driver == Driver::Mongodb
            && !(mongo_uri.starts_with("mongodb://") || mongo_uri.starts_with("mongodb+srv://"))
        {
            return Err(err(
                Some("params.uri"),
                format!("expected a mongodb:// connection string, found \"{}\"", mongo_uri),
            ));
        }
        let mongo_dbname =
            pr.string_as("dbname", "params.dbname")?.unwrap_or_else(|| DEFAULT_MONGO_DBNAME.into());
        if mongo_dbname.is_empty()
            || mongo_dbname.len() > 63
            || mongo_dbname.contains(|c: char| "/\\. \"$\0".contains(c))
        {
            return Err(err(
                Some("params.dbname"),
                format!(
                    "expected a database name (1-63 characters, none of /\\. \"$), found \"{}\"",
                    mongo_dbname
                ),
            ));
        }
        let db_timeout = pr.seconds_as("timeout", "params.timeout", DEFAULT_DB_TIMEOUT)?;

        let logfile = r.path("logfile")?;
        let log_level = match r.string("logLevel")? {
            None => log::LevelFilter::Info,
            Some(s) => parse_level(&s).ok_or_else(|| {
                err(
                    Some("logLevel"),
                    format!("expected one of trace, debug, info, warn, error, fatal, found \"{}\"", s),
                )
            })?,
        };
        let pidfile = r.path("pidfile")?;
        let control_socket = r.path("controlSocket")?;
        let server_user = r.string("serverUser")?;
        if server_user.as_deref() == Some("") {
            return Err(err(Some("serverUser"), "expected a user name, found \"\"".into()));
        }
        let worker = match obj.get("worker") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if !a.is_empty() => {
                let mut argv = Vec::new();
                for v in a {
                    match v {
                        Value::String(s) if !s.is_empty() && !s.contains('\0') => argv.push(s.clone()),
                        other => {
                            return Err(err(
                                Some("worker"),
                                format!("expected an array of non-empty strings (argv), found element {}", other),
                            ))
                        }
                    }
                }
                Some(argv)
            }
            Some(other) => {
                return Err(err(
                    Some("worker"),
                    format!("expected a non-empty array of strings (argv), found {}", other),
                ))
            }
        };
        let shutdown_timeout = r.seconds("shutdownTimeout", Duration::from_secs(30))?;
        let ready_timeout = r.seconds("readyTimeout", Duration::from_secs(30))?;
        let probe_timeout = r.seconds("probeTimeout", Duration::from_secs(10))?;
        let threads = r.int("threads", 4, 1, 1024)? as u32;

        Ok(Config {
            path: path.to_path_buf(),
            workers,
            address,
            port,
            driver,
            params,
            mongo_uri,
            mongo_dbname,
            db_timeout,
            logfile,
            log_level,
            pidfile,
            control_socket,
            server_user,
            worker,
            shutdown_timeout,
            ready_timeout,
            probe_timeout,
            threads,
            warnings,
        })
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

struct Reader<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Reader<'_> {
    fn fail(&self, key: &str, message: String) -> ConfigError {
        ConfigError { path: self.path.to_path_buf(), key: Some(key.into()), message }
    }

    fn int(&self, key: &str, default: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) if n.as_i64().is_some() => {
                let v = n.as_i64().unwrap();
                if v < min || v > max {
                    Err(self.fail(key, format!("expected an integer from {} to {}, found {}", min, max, v)))
                } else {
                    Ok(v)
                }
            }
            Some(other) => Err(self.fail(
                key,
                format!("expected an integer from {} to {}, found {}", min, max, kind(other)),
            )),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.string_as(key, key)
    }

    fn string_as(&self, key: &str, name: &str) -> Result<Option<String>, ConfigError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.fail(name, format!("expected a string, found {}", kind(other)))),
        }
    }

    fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) if s.is_empty() || s.contains('\0') => {
                Err(self.fail(key, format!("expected a file path, found \"{}\"", s)))
            }
            Some(s) => Ok(Some(absolute(Path::new(&s)))),
        }
    }

    fn seconds(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.seconds_as(key, key, default)
    }

    fn seconds_as(&self, key: &str, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v > 0.0 && v <= 86400.0 => Ok(Duration::from_secs_f64(v)),
                _ => Err(self.fail(
                    name,
                    format!("expected a number of seconds greater than 0 and at most 86400, found {}", n),
                )),
            },
            Some(other) => Err(self.fail(
                name,
                format!("expected a number of seconds greater than 0, found {}", kind(other)),
            )),
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
    fn ipv6_display() {
        let c = parse(r#"{"address": "::1", "port": 9}"#).unwrap();
        assert_eq!(c.listen_display(), "[::1]:9");
    }
}

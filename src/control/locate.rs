//! Where a client finds the master's control socket, the way the operator
//! started the master: `-s SOCKET`; else the `controlSocket` of `-c FILE`,
//! of `$ZDRESTART_CONFIG` (which `zdrestart` honours too), or of
//! /etc/zdrestart.json; else /run/zdrestart/zdrestart.sock. And, when no
//! master answers there, what exactly to pass instead ([`Located::hint`]).
//!
//! Reads the config file only; never connects, never logs (the client
//! prints what it returns).

use crate::config::{self, Config, DEFAULT_CONTROL_SOCKET, DEFAULT_PATH};
use crate::protocol::ENV_CONFIG;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Where the config file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFrom {
    /// `-c FILE`.
    Option,
    /// `$ZDRESTART_CONFIG`.
    Env,
    /// /etc/zdrestart.json (neither of the above).
    Default,
}

/// Where the socket came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketFrom {
    /// `-s SOCKET`.
    Option,
    /// The config's `controlSocket`, as written (relative or not).
    Config { written: String },
    /// The default config exists (readable or not) and sets no
    /// `controlSocket`: the default socket is tried. (A config named by
    /// `-c` or `$ZDRESTART_CONFIG` without one is an error.)
    ConfigWithout,
    /// No config file at all: the default socket.
    NoConfig,
}

/// The socket to connect to, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub socket: PathBuf,
    pub from: SocketFrom,
    /// The config read (absolute), and where its name came from.
    pub config: Option<(PathBuf, ConfigFrom)>,
    /// Non-fatal findings for stderr (an unreadable or invalid default config).
    pub warnings: Vec<String>,
}

/// The config file a command uses when `-c` is not given: `$ZDRESTART_CONFIG`
/// when set and not empty, else /etc/zdrestart.json.
pub fn config_path(option: Option<&Path>, env: Option<&std::ffi::OsStr>) -> (PathBuf, ConfigFrom) {
    match (option, env) {
        (Some(p), _) => (p.to_path_buf(), ConfigFrom::Option),
        (None, Some(e)) if !e.is_empty() => (PathBuf::from(e), ConfigFrom::Env),
        _ => (PathBuf::from(DEFAULT_PATH), ConfigFrom::Default),
    }
}

/// The socket for `-s` (`socket`) and `-c` (`config`), with `$ZDRESTART_CONFIG`
/// as `env`. Err: a config named by `-c` or `$ZDRESTART_CONFIG` that cannot be
/// read (the operator said to use it), or that sets no `controlSocket`.
pub fn locate(socket: Option<&Path>, config: Option<&Path>, env: Option<&std::ffi::OsStr>) -> Result<Located, String> {
    let (cfg, from) = config_path(config, env);
    let cfg = config::absolute(&cfg);
    if let Some(s) = socket {
        return Ok(Located { socket: config::absolute(s), from: SocketFrom::Option, config: None, warnings: vec![] });
    }
    let default = PathBuf::from(DEFAULT_CONTROL_SOCKET);
    let mut out = Located { socket: default.clone(), from: SocketFrom::ConfigWithout, config: Some((cfg.clone(), from.clone())), warnings: vec![] };
    let text = match std::fs::read_to_string(&cfg) {
        Ok(t) => t,
        Err(e) if from == ConfigFrom::Default && e.kind() == ErrorKind::NotFound => {
            out.from = SocketFrom::NoConfig;
            out.config = None;
            return Ok(out);
        }
        Err(e) if from != ConfigFrom::Default => {
            let by = if from == ConfigFrom::Env { format!(" (${})", ENV_CONFIG) } else { String::new() };
            return Err(format!("cannot read config {}{}: {}", cfg.display(), by, crate::sys::strerror(&e)));
        }
        Err(e) => {
            out.warnings.push(format!("cannot read {}: {}; using {}", cfg.display(), crate::sys::strerror(&e), default.display()));
            return Ok(out);
        }
    };
    // Read as JSON only: an invalid config (being edited?) may still name
    // the socket.
    let written = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("controlSocket").and_then(|s| s.as_str()).map(str::to_string))
        .filter(|s| !s.is_empty());
    if written.is_none() {
        if let Err(e) = Config::parse(&cfg, &text) {
            out.warnings.push(format!("{}; using {}", e, default.display()));
        }
    }
    match written {
        Some(w) => {
            out.socket = config::absolute(Path::new(&w));
            out.from = SocketFrom::Config { written: w };
        }
        // A master started with this config has no control socket: the
        // default one would be another master's.
        None if from != ConfigFrom::Default => return Err(out.hint()),
        None => {}
    }
    Ok(out)
}

impl Located {
    /// What to pass, when no master answers on the socket (it does not
    /// exist, or nothing listens): one paragraph for stderr.
    pub fn hint(&self) -> String {
        let pass = format!(
            "Pass what the master was started with: `zdrestartctl -c FILE COMMAND` (or `export {}=FILE`) for \
             `zdrestart -c FILE`, or `zdrestartctl -s SOCKET COMMAND` for its controlSocket.",
            ENV_CONFIG
        );
        let cfg = self.config.as_ref().map(|(p, _)| p.display().to_string()).unwrap_or_default();
        match &self.from {
            SocketFrom::Option => "No master listens on the socket given with -s: is the master running, and is this its \
                                   controlSocket?"
                .into(),
            SocketFrom::NoConfig => format!(
                "This is the default socket: no -s or -c was given, ${} is not set, and {} does not exist. {}",
                ENV_CONFIG, DEFAULT_PATH, pass
            ),
            SocketFrom::ConfigWithout => format!(
                "{} sets no controlSocket, so a master started with it has no control socket. Add \
                 \"controlSocket\" to it and restart the master; until then signals work (kill -USR2 MASTER_PID \
                 for a zero-downtime restart). If the master was started with another config: {}",
                cfg, pass
            ),
            SocketFrom::Config { written } if Path::new(written).is_relative() => {
                let here = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
                format!(
                    "The controlSocket of {} is relative (\"{}\"): the master resolved it against the directory it \
                     was started in, zdrestartctl against this one ({}). Run zdrestartctl in the master's \
                     directory, or pass the absolute path with -s. Is the master running? {}",
                    cfg, written, here, pass
                )
            }
            SocketFrom::Config { .. } => format!("Is the master started with {} running? {}", cfg, pass),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_option_wins_then_the_environment_then_etc() {
        let env = Some(OsStr::new("/srv/z.json"));
        assert_eq!(config_path(Some(Path::new("/a.json")), env), (PathBuf::from("/a.json"), ConfigFrom::Option));
        assert_eq!(config_path(None, env), (PathBuf::from("/srv/z.json"), ConfigFrom::Env));
        assert_eq!(config_path(None, Some(OsStr::new(""))), (PathBuf::from(DEFAULT_PATH), ConfigFrom::Default));
        assert_eq!(config_path(None, None), (PathBuf::from(DEFAULT_PATH), ConfigFrom::Default));
    }

    #[test]
    fn a_named_config_that_cannot_be_read_is_an_error() {
        let e = locate(None, None, Some(OsStr::new("/nonexistent/z.json"))).unwrap_err();
        assert!(e.contains("/nonexistent/z.json ($ZDRESTART_CONFIG)"), "{}", e);
        let l = locate(Some(Path::new("/x.sock")), None, Some(OsStr::new("/nonexistent/z.json"))).unwrap();
        assert_eq!((l.socket, l.from), (PathBuf::from("/x.sock"), SocketFrom::Option));
    }
}

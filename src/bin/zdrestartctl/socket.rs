//! Which control socket to use (`-s`, else `controlSocket` of the config,
//! else the default), and what to say when it cannot be reached: the
//! pidfile's lock tells whether a master runs.

use super::Opts;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use zdrestart::config::{self, Config};

/// An io::Error as text without std's " (os error N)" suffix.
pub fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// The socket to use: -s, else controlSocket of the config, else the default.
/// Warnings (config unreadable or invalid) go to stderr; an explicit -c that
/// cannot be read is an error.
pub fn socket_path(opts: &Opts) -> Result<PathBuf, String> {
    if let Some(s) = &opts.socket {
        return Ok(config::absolute(s));
    }
    let default = PathBuf::from(config::DEFAULT_CONTROL_SOCKET);
    let (cfg, explicit) = match &opts.config {
        Some(c) => (config::absolute(c), true),
        None => (PathBuf::from(config::DEFAULT_PATH), false),
    };
    let text = match std::fs::read_to_string(&cfg) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == ErrorKind::NotFound => return Ok(default),
        Err(e) if explicit => return Err(format!("cannot read config {}: {}", cfg.display(), os_text(&e))),
        Err(e) => {
            eprintln!(
                "zdrestartctl: warning: cannot read {}: {}; using {}",
                cfg.display(),
                os_text(&e),
                default.display()
            );
            return Ok(default);
        }
    };
    match Config::parse(&cfg, &text) {
        Ok(c) => Ok(c.control_socket.unwrap_or(default)),
        Err(e) => {
            // An invalid config (being edited?) may still name the socket.
            let named = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("controlSocket").and_then(|s| s.as_str()).map(|s| s.to_string()))
                .filter(|s| !s.is_empty());
            match named {
                Some(s) => Ok(config::absolute(Path::new(&s))),
                None => {
                    eprintln!("zdrestartctl: warning: {}; using {}", e, default.display());
                    Ok(default)
                }
            }
        }
    }
}

/// Whether a master runs, by the test the master's pidfile is made for (its
/// lock, not the pid in it: zdrestart(8), FILES), when the config read for
/// the socket names a `pidfile`. None when there is nothing to say.
pub fn pidfile_hint(opts: &Opts) -> Option<String> {
    if opts.socket.is_some() && opts.config.is_none() {
        return None;
    }
    let path = config::absolute(opts.config.as_deref().unwrap_or(Path::new(config::DEFAULT_PATH)));
    let cfg = Config::parse(&path, &std::fs::read_to_string(&path).ok()?).ok()?;
    let pidfile = cfg.pidfile?;
    Some(match zdrestart::master::pidfile::holder(&pidfile) {
        Ok(Some(pid)) => format!("pidfile {}: a master runs (pid {}, it holds the pidfile's lock)", pidfile.display(), pid),
        Ok(None) => format!("pidfile {}: no master holds its lock: the master is not running", pidfile.display()),
        Err(e) => format!("pidfile {}: {}", pidfile.display(), os_text(&e)),
    })
}

pub fn connect_hint(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => " (is the master running with controlSocket set?)",
        ErrorKind::PermissionDenied => " (the socket is mode 0600: run as the user that runs the master)",
        _ => "",
    }
}

//! Which control socket to use (`-s`, else `controlSocket` of `-c`,
//! `$ZDRESTART_CONFIG` or /etc/zdrestart.json, else the default:
//! `zdrestart::control::locate`), and what to say when it cannot be
//! reached: the pidfile's lock tells whether a master runs.

use super::Opts;
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::Path;
use zdrestart::config::Config;
use zdrestart::control::locate::{self, Located};

/// An io::Error as text without std's " (os error N)" suffix.
pub fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// The socket to use (`zdrestart::control::locate`): -s, else controlSocket
/// of -c, `$ZDRESTART_CONFIG` or /etc/zdrestart.json, else the default.
/// Warnings (default config unreadable or invalid) go to stderr; a config
/// named by -c or `$ZDRESTART_CONFIG` that cannot be read is an error.
pub fn socket_path(opts: &Opts) -> Result<Located, String> {
    let env = std::env::var_os(zdrestart::protocol::ENV_CONFIG);
    let located = locate::locate(opts.socket.as_deref(), opts.config.as_deref(), env.as_deref())?;
    for w in &located.warnings {
        eprintln!("zdrestartctl: warning: {}", w);
    }
    Ok(located)
}

/// Whether a master runs, by the test the master's pidfile is made for (its
/// lock, not the pid in it: zdrestart(8), FILES), when the config read for
/// the socket names a `pidfile`. None when there is nothing to say.
/// The bool: a master holds the pidfile's lock.
pub fn pidfile_hint(located: &Located) -> Option<(String, bool)> {
    let path = &located.config.as_ref()?.0;
    let cfg = Config::parse(path, &std::fs::read_to_string(path).ok()?).ok()?;
    let pidfile = cfg.pidfile?;
    Some(match zdrestart::master::pidfile::holder(&pidfile) {
        Ok(Some(pid)) => (
            format!("pidfile {}: a master runs (pid {}, it holds the pidfile's lock)", pidfile.display(), pid),
            true,
        ),
        Ok(None) => (format!("pidfile {}: no master holds its lock: the master is not running", pidfile.display()), false),
        Err(e) => (format!("pidfile {}: {}", pidfile.display(), os_text(&e)), false),
    })
}

/// Nothing listens on `sock` (no such file, or a socket nobody accepts on):
/// the client looked in the wrong place, or no master runs.
pub fn no_master_there(sock: &Path) -> bool {
    match UnixStream::connect(sock) {
        Ok(_) => false,
        Err(e) => matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused),
    }
}

pub fn connect_hint(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::PermissionDenied => " (the socket is mode 0600: run as the user that runs the master)",
        _ => "",
    }
}

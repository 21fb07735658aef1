//! The spawn spec of a worker or probe: program path, argv and environment
//! of the worker protocol (zdrestart-worker(7)), built before fork so that
//! the child only makes async-signal-safe calls ([`crate::sys::spawn`]).
//!
//! Owns the choice of the worker program and the protocol's environment
//! variables. It must not fork or touch fds.

use crate::config::Config;
use crate::protocol;
use crate::sys::{self, SpawnSpec};
use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The worker argv: `worker` from the config, else the built-in worker next
/// to this executable, else the packaged one.
fn worker_argv(cfg: &Config) -> Vec<String> {
    if let Some(w) = &cfg.worker {
        return w.clone();
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("zdrestart-worker")))
        .filter(|p| p.is_file());
    let path = beside.unwrap_or_else(|| PathBuf::from("/usr/lib/zdrestart/zdrestart-worker"));
    vec![path.to_string_lossy().into_owned()]
}

fn resolve_program(name: &str) -> Result<PathBuf, String> {
    if name.contains('/') {
        return Ok(crate::config::absolute(Path::new(name)));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!("worker program \"{}\" not found in PATH", name))
}

fn cstring(s: impl AsRef<[u8]>, what: &str) -> Result<CString, String> {
    CString::new(s.as_ref().to_vec()).map_err(|_| format!("{} contains a NUL byte", what))
}

/// What a child is spawned as.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    /// A worker of `generation`, number `index`, inheriting `listeners`;
    /// `notify_socket`: the master's `$NOTIFY_SOCKET` for a worker that
    /// reports with sd_notify(3) (`"notify": "systemd"` or `"both"`).
    Worker { generation: u32, index: u32, listeners: &'a [RawFd], notify_socket: Option<&'a str> },
    /// The probe: no listeners, `ZDRESTART_PROBE=1`.
    Probe,
}

/// Everything a spawn spec is built from.
#[derive(Debug, Clone, Copy)]
pub struct SpawnRequest<'a> {
    pub config: &'a Config,
    pub role: Role<'a>,
    /// `LOGLEVEL` override of the control socket (`ZDRESTART_LOGLEVEL`).
    pub loglevel: Option<&'a str>,
    /// `serverUser` of the master's start.
    pub server_user: Option<&'a str>,
}

/// The master's environment, less what is the master's own: the worker
/// protocol's variables of another master (`LISTEN_*`, `ZDRESTART_*`) and
/// those of its service manager (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
/// `WATCHDOG_PID`): a worker must not speak for the master to the service
/// manager (a worker that reports with sd_notify gets the master's own
/// socket for workers instead, and the master's watchdog if configured).
fn inherited_env() -> Result<Vec<CString>, String> {
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        let kb = k.as_bytes();
        let managers = [protocol::ENV_NOTIFY_SOCKET, protocol::ENV_WATCHDOG_USEC, protocol::ENV_WATCHDOG_PID];
        if kb.starts_with(b"LISTEN_") || kb.starts_with(b"ZDRESTART_") || managers.iter().any(|m| kb == m.as_bytes()) {
            continue;
        }
        let mut e = kb.to_vec();
        e.push(b'=');
        e.extend_from_slice(v.as_bytes());
        env.push(cstring(e, "environment")?);
    }
    Ok(env)
}

/// The worker protocol's environment (zdrestart-worker(7)).
fn protocol_env(req: &SpawnRequest, env: &mut Vec<CString>) -> Result<(), String> {
    let mut set = |k: &str, v: String| -> Result<(), String> {
        env.push(cstring(format!("{}={}", k, v), k)?);
        Ok(())
    };
    let listeners = match req.role {
        Role::Worker { generation, index, listeners, notify_socket } => {
            set(protocol::ENV_LISTEN_FDS, listeners.len().to_string())?;
            set(protocol::ENV_LISTEN_FDNAMES, vec!["http"; listeners.len()].join(":"))?;
            set(protocol::ENV_GENERATION, generation.to_string())?;
            set(protocol::ENV_WORKER, index.to_string())?;
            // `"notify": "systemd"`: the report pipe stays at its fd (the
            // control pipe's number does not move) but is not offered.
            if req.config.notify.pipe() {
                set(protocol::ENV_NOTIFY_FD, protocol::notify_fd(listeners.len()).to_string())?;
            }
            if let Some(name) = notify_socket {
                set(protocol::ENV_NOTIFY_SOCKET, name.to_string())?;
            }
            // sd_watchdog_enabled(3)'s convention; WATCHDOG_PID is the
            // child's own pid (filled in by the child, as LISTEN_PID).
            if let Some(t) = req.config.watchdog_timeout {
                set(protocol::ENV_WATCHDOG_USEC, t.as_micros().max(1).to_string())?;
            }
            listeners.len()
        }
        Role::Probe => {
            set(protocol::ENV_PROBE, "1".into())?;
            set(protocol::ENV_NOTIFY_FD, protocol::notify_fd(0).to_string())?;
            0
        }
    };
    set(protocol::ENV_CONTROL_FD, protocol::control_fd(listeners).to_string())?;
    set(protocol::ENV_CONFIG, req.config.path.to_string_lossy().into_owned())?;
    if let Some(l) = req.loglevel {
        set(protocol::ENV_LOGLEVEL, l.to_string())?;
    }
    Ok(())
}

/// Everything the child needs, built before fork.
pub fn build_spec(req: &SpawnRequest) -> Result<SpawnSpec, String> {
    let argv = worker_argv(req.config);
    let path = resolve_program(&argv[0])?;
    let mut env = inherited_env()?;
    protocol_env(req, &mut env)?;
    let user = match req.server_user {
        None => None,
        Some(name) => match sys::lookup_user(name) {
            Ok(Some(u)) => Some(u),
            Ok(None) => return Err(format!("serverUser \"{}\": no such user", name)),
            Err(e) => return Err(format!("serverUser \"{}\": lookup failed: {}", name, sys::strerror(&e))),
        },
    };
    let (pid_vars, listen_fds) = match req.role {
        Role::Worker { listeners, .. } => {
            let mut vars = vec![protocol::ENV_LISTEN_PID];
            if req.config.watchdog_timeout.is_some() {
                vars.push(protocol::ENV_WATCHDOG_PID);
            }
            (vars, listeners.to_vec())
        }
        Role::Probe => (Vec::new(), Vec::new()),
    };
    Ok(SpawnSpec {
        path: cstring(path.as_os_str().as_bytes(), "worker path")?,
        argv: argv.iter().map(|a| cstring(a, "worker argv")).collect::<Result<_, _>>()?,
        env,
        pid_vars,
        listen_fds,
        user,
    })
}

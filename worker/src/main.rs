//! `zdrestart-worker`: the built-in worker (zdrestart-worker(7); ARCHITECTURE.md,
//! "The tree" and "The worker protocol"), an HTTP/1.1 JSON object store on a Databank driver (`memory`, `sqlite` or `mongodb`).
//!
//! This file owns start-up: arguments, config, logging, the listeners
//! (inherited through `LISTEN_FDS`, or bound by hand), the driver, the probe
//! mode, and the exit status. It must not hold request logic (`api.rs`,
//! `http.rs`) or serving logic (`server.rs`). A fatal start-up error is
//! reported as `ERROR=<text>` on the report pipe and ends the process with
//! status 1; no `unsafe` here: inherited fds are taken with
//! `zdrestart::sys::adopt_fd`.
#![deny(unsafe_code)]

mod api;
mod http;
mod mongo;
mod notify;
mod pool;
mod probe;
mod server;
mod settings;
mod shared;
mod sqlite;
mod store;

use notify::Notifier;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use zdrestart::config::{Config, Driver};
use zdrestart::protocol::{
    ENV_CONFIG, ENV_CONTROL_FD, ENV_GENERATION, ENV_WORKER, ENV_LISTEN_FDS, ENV_LISTEN_PID, ENV_LOGLEVEL, ENV_PROBE, LISTEN_FDS_START,
};

const USAGE: &str = "\
Usage: zdrestart-worker [-c FILE]

The built-in worker of zdrestart: an HTTP/1.1 JSON object store.
Normally started by the zdrestart master, which passes the listening sockets
(LISTEN_FDS) and a report pipe (ZDRESTART_NOTIFY_FD). Run by hand, it binds
address:port of the config itself.

Options:
  -c, --config FILE  config file (default: $ZDRESTART_CONFIG, else /etc/zdrestart.json)
  -h, --help         print this help
  -V, --version      print the version

Environment:
  ZDRESTART_CONFIG      config file when -c is not given
  ZDRESTART_LOGLEVEL    overrides logLevel (trace, debug, info, warn, error, fatal)
  ZDRESTART_PROBE=1     probe mode: print MAGIC=, VERSION= and SHARED=, check the config
                        and the database (sqlite: open, check, write; mongodb: ping),
                        then exit 0, or print ERROR= and exit 1
  ZDRESTART_GENERATION  generation number reported by /healthz
  LISTEN_FDS, LISTEN_PID  inherited listeners (fds 3..), systemd convention

API: GET /healthz; GET, PUT, DELETE /objects/{type}/{id}; GET /delay/{ms}.
Deadlines and limits: params.idleTimeout, headerTimeout, minBodyRate, maxConnections,
maxQueued, maxObjects, maxBytes of the config (zdrestart.json(5)).
Signals: SIGTERM, SIGINT: stop accepting, finish requests in flight, close each idle
connection at its idle timeout, exit 0.";

enum Args {
    Run(Option<PathBuf>),
    Help,
    Version,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut config = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-h" | "--help" => return Ok(Args::Help),
            "-V" | "--version" => return Ok(Args::Version),
            "-c" | "--config" => {
                i += 1;
                let v = args.get(i).ok_or_else(|| format!("{} needs a file name", args[i - 1]))?;
                config = Some(PathBuf::from(v));
            }
            s if s.starts_with("--config=") => config = Some(PathBuf::from(&s["--config=".len()..])),
            other => return Err(format!("unknown argument {:?}", other)),
        }
        i += 1;
    }
    Ok(Args::Run(config))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config_arg = match parse_args(&args) {
        Ok(Args::Help) => {
            println!("{}", USAGE);
            return;
        }
        Ok(Args::Version) => {
            println!("zdrestart-worker {}", zdrestart::VERSION);
            return;
        }
        Ok(Args::Run(c)) => c,
        Err(e) => {
            eprintln!("zdrestart-worker: {}\n\n{}", e, USAGE);
            std::process::exit(2);
        }
    };
    std::process::exit(start(config_arg));
}

/// Log a fatal start-up error and report it; returns the exit status.
fn fail(notifier: &Notifier, msg: &str) -> i32 {
    log::error!("{}", msg);
    if !notifier.send("ERROR", msg) {
        if std::env::var(ENV_PROBE).is_ok_and(|v| v == "1") {
            // A probe run by hand reports on stdout, like MAGIC= and VERSION=.
            println!("ERROR={}", notify::one_line(msg));
        } else {
            // Make sure a person running it by hand sees it.
            eprintln!("zdrestart-worker: {}", msg);
        }
    }
    1
}

/// Follow the master's control pipe (`ZDRESTART_CONTROL_FD`), if any, on a
/// thread of its own: `LOGLEVEL=<level>` lines set this worker's log level
/// (the operator's `zdrestartctl loglevel`); other lines are ignored. The
/// thread ends at EOF, when the master is gone.
fn listen_to_master() {
    use std::io::BufRead;
    let Some(fd) = std::env::var(ENV_CONTROL_FD).ok().and_then(|v| v.trim().parse::<i32>().ok()) else { return };
    let file = match zdrestart::sys::adopt_fd(fd) {
        Ok(f) => std::fs::File::from(f),
        Err(e) => {
            log::warn!("{}={}: {}; log levels from the master are not followed", ENV_CONTROL_FD, fd, e);
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("master-control".into()).stack_size(64 * 1024).spawn(move || {
        for line in std::io::BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            match line.trim().split_once('=') {
                Some(("LOGLEVEL", v)) => match zdrestart::config::parse_level(v) {
                    Some(level) => {
                        zdrestart::log::set_level(level);
                        log::info!(level = v; "log level set to {} by the master", v);
                    }
                    None => log::warn!("control line {:?}: not a level", line),
                },
                _ => log::debug!("control line {:?} ignored", line),
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("cannot start the control pipe reader: {}", e);
    }
}

/// `ZDRESTART_LOGLEVEL`, when set and valid.
fn env_level() -> Option<log::LevelFilter> {
    std::env::var(ENV_LOGLEVEL).ok().and_then(|s| zdrestart::config::parse_level(s.trim()))
}

fn start(config_arg: Option<PathBuf>) -> i32 {
    let probe_mode = std::env::var(ENV_PROBE).is_ok_and(|v| v == "1");
    // Logs: bunyan lines on stdout, which the master reads and passes on.
    let _ = zdrestart::log::init(
        zdrestart::log::Target::Stdout,
        env_level().unwrap_or(log::LevelFilter::Info),
        if probe_mode { "probe" } else { "worker" },
    );
    let notifier = match Notifier::from_env() {
        Ok(n) => n,
        Err(e) => return fail(&Notifier::none(), &e),
    };

    let path = config_arg
        .or_else(|| std::env::var_os(ENV_CONFIG).filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(zdrestart::config::DEFAULT_PATH));
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(&notifier, &format!("config: {}", e)),
    };
    match std::env::var(ENV_LOGLEVEL) {
        Ok(v) if env_level().is_none() => {
            zdrestart::log::set_level(cfg.log_level);
            log::warn!("{}={:?} is not a level (trace..fatal): using logLevel of the config", ENV_LOGLEVEL, v);
        }
        Ok(_) => {}
        Err(_) => zdrestart::log::set_level(cfg.log_level),
    }
    for w in &cfg.warnings {
        log::warn!("{}", w);
    }

    if probe_mode {
        return probe::run(&cfg, &notifier);
    }
    listen_to_master();

    // Early, so that a SIGTERM during start-up (e.g. while the driver is being
    // prepared) means "exit 0 once started" instead of the default death.
    let signals = match server::Signals::install() {
        Ok(s) => s,
        Err(e) => return fail(&notifier, &format!("cannot install signal handlers: {}", e)),
    };
    let generation = std::env::var(ENV_GENERATION).ok().and_then(|g| g.trim().parse::<u64>().ok()).unwrap_or(0);
    let pid = std::process::id();
    log::info!(
        event = "worker.start",
        generation = generation,
        worker = std::env::var(ENV_WORKER).unwrap_or_default().as_str(),
        driver = cfg.driver.as_str(),
        version = zdrestart::VERSION,
        threads = cfg.threads as u64;
        "Worker starting"
    );

    let set = match settings::Settings::from_params(&cfg.params, cfg.threads, cfg.db_timeout) {
        Ok(s) => s,
        Err(e) => return fail(&notifier, &format!("config: {}", e)),
    };

    let listeners = match take_listeners(&cfg, notifier.fd()) {
        Ok(l) => l,
        Err(e) => return fail(&notifier, &e),
    };
    for l in &listeners {
        if let Ok(a) = l.local_addr() {
            log::info!(address = a.to_string().as_str(); "Listening on {}", a);
        }
    }

    let mut file = None;
    let store: Arc<dyn store::Store> = match (cfg.driver, &cfg.sqlite_path) {
        (Driver::Memory, _) => Arc::new(store::MemoryStore::new(set.max_objects, set.max_bytes)),
        (Driver::Sqlite, None) => return fail(&notifier, "config: params.path: required with driver \"sqlite\""),
        (Driver::Sqlite, Some(path)) => {
            let s = Arc::new(sqlite::SqliteStore::new(path, cfg.db_timeout, set.synchronous));
            file = Some(s.file().to_string());
            // As with mongodb: never wait for the database before serving;
            // requests answer 503 (naming the file and the cause) until it
            // can be used, and the health thread says so in the log.
            s.watch_health();
            s
        }
        (Driver::Mongodb, _) => match mongo::MongoStore::new(&cfg, cfg.db_timeout, cfg.threads) {
            Ok(s) => {
                let s = Arc::new(s);
                // Never wait for the database before serving: it may be down,
                // and requests answer 503 until it is back. The health
                // thread tells /healthz (and the log) whether it answers.
                s.watch_health();
                s
            }
            Err(mongo::InitError::Config(m)) => return fail(&notifier, &format!("config: {}", m)),
            Err(mongo::InitError::Other(m)) => return fail(&notifier, &m),
        },
    };

    let who = api::Identity { pid, generation, driver: store.name(), file };
    let shared = Arc::new(shared::Shared::new(store, who, cfg.threads as usize));
    match server::run(listeners, shared, &set, signals, &notifier) {
        Ok(()) => 0,
        Err(e) => {
            // Before READY this is a start-up error; after it the master sees us exit.
            fail(&notifier, &format!("serving failed: {}", e))
        }
    }
}

/// The listeners: inherited (`LISTEN_FDS`, `LISTEN_PID`), or bound from the config.
fn take_listeners(cfg: &Config, notify_fd: Option<i32>) -> Result<Vec<TcpListener>, String> {
    let n = match std::env::var(ENV_LISTEN_FDS) {
        Err(_) => {
            let l = TcpListener::bind((cfg.address.as_str(), cfg.port))
                .map_err(|e| format!("cannot listen on {}: {}", cfg.listen_display(), e))?;
            return Ok(vec![l]);
        }
        Ok(v) => v
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|&n| (1..=1024).contains(&n))
            .ok_or_else(|| format!("{}={:?}: expected a number of listeners from 1 to 1024", ENV_LISTEN_FDS, v))?,
    };
    let pid = std::process::id();
    let listen_pid = std::env::var(ENV_LISTEN_PID).unwrap_or_default();
    if listen_pid.trim().parse::<u32>().ok() != Some(pid) {
        return Err(format!(
            "{} is set but {}={:?} is not this process ({}): the listeners are not ours",
            ENV_LISTEN_FDS, ENV_LISTEN_PID, listen_pid, pid
        ));
    }
    let mut out = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n {
        if Some(fd) == notify_fd {
            return Err(format!("listener fd {} is also the report pipe", fd));
        }
        let owned = zdrestart::sys::adopt_fd(fd).map_err(|e| format!("listener fd {}: {}", fd, e))?;
        let l = TcpListener::from(owned);
        // A socket that is not TCP (or not a socket) has no IP local address.
        l.local_addr().map_err(|e| format!("listener fd {} is not a TCP socket: {}", fd, e))?;
        out.push(l);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args() {
        assert!(matches!(parse_args(&s(&[])), Ok(Args::Run(None))));
        assert!(matches!(parse_args(&s(&["-c", "/x"])), Ok(Args::Run(Some(p))) if p.as_path() == std::path::Path::new("/x")));
        assert!(matches!(parse_args(&s(&["--config=/y"])), Ok(Args::Run(Some(p))) if p.as_path() == std::path::Path::new("/y")));
        assert!(matches!(parse_args(&s(&["--help"])), Ok(Args::Help)));
        assert!(matches!(parse_args(&s(&["-V"])), Ok(Args::Version)));
        assert!(parse_args(&s(&["-c"])).is_err());
        assert!(parse_args(&s(&["--bogus"])).is_err());
    }
}

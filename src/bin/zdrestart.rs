//! `zdrestart`: the master daemon. Parses the command line into one run mode
//! ([`Mode`]: the master, `-t`, `--check`, the two internal modes of an
//! upgrade), loads the config, sets up logging and hands over to the event
//! loop. Never daemonizes.
#![deny(unsafe_code)]

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zdrestart::config::{Config, DEFAULT_PATH};
use zdrestart::control;
use zdrestart::master::admission::{self, ProbeFailure, ProbeInfo, Running};
use zdrestart::master::event_loop::{self, Options};
use zdrestart::master::probe::probe_blocking;
use zdrestart::master::upgrade;
use zdrestart::signals::SignalPipe;
use zdrestart::status::{MasterState, StatusReport};

const HELP: &str = "\
zdrestart: run a network service as a master and N workers, and roll the
workers over to new code or configuration without downtime on SIGUSR2.

Usage: zdrestart [-c FILE] [-t | --check]
       zdrestart --help | --version

Options:
  -c, --config FILE  configuration file (default /etc/zdrestart.json)
  -t, --test-config  test the configuration only (syntax, values, serverUser
                     exists) and exit 0 (valid) or 1 (the error names the
                     file and the key); starts nothing, contacts nothing
      --check        validate the configuration, run the probe of the worker
                     program (with \"probe\": false, take the declared \"magic\",
                     \"version\" and \"sharedState\" instead), say whether its
                     state is shared and whether a zero-downtime restart would
                     be accepted, and exit 0 (yes) or 1 (no)
  -h, --help         print this help
  -V, --version      print the version and the magic number

Signals (handled from the first instant, before the config is read):
  SIGUSR2            zero-downtime restart (killall -USR2 zdrestart); refused
                     (reason starting) while the master starts, and (restart
                     in flight) while a restart or a canary is in progress
  SIGTERM, SIGINT    graceful stop: SIGTERM to every worker's process group,
                     SIGKILL after shutdownTimeout, pidfile and control socket
                     removed, exit 0 (also while starting)
  SIGHUP             reopen the log file (logrotate)

Canary restarts (one new worker beside the old ones, then promote or
rollback) and the watchdog of hung workers: zdrestartctl(8), zdrestart(8).

Upgrading the master itself without downtime: `zdrestartctl upgrade` (the
master re-executes its executable on disk in place, same pid, listeners and
workers kept, then rolls the workers over; it also ends a lockout).

Exit status: 0 after a graceful stop, a valid -t or a successful --check;
1 on a configuration error, a start-up failure, a refused --check, or when the last
worker is gone after an aborted restart; 2 on a usage error.

See zdrestart(8), zdrestart.json(5), zdrestartctl(8), zdrestart-worker(7).
";

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("zdrestart: {}\nTry 'zdrestart --help'.", msg);
    ExitCode::from(2)
}

/// What this run of `zdrestart` is, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Help,
    Version,
    /// The master: run until stopped.
    Master { config: PathBuf },
    /// `-t`: the configuration alone.
    TestConfig { config: PathBuf },
    /// `--check`: would a zero-downtime restart be accepted?
    Check { config: PathBuf },
    /// `--handover FD`: the new image of an upgrade (internal; zdrestart(8)).
    Resume { fd: String },
    /// `--handover-check FD`: the new binary's check of an upgrade's state
    /// (internal).
    HandoverCheck { fd: String },
}

/// The command line (without argv[0]) as a run mode. `--help`,
/// `--version` and `--handover-check` take effect where they stand.
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Mode, String> {
    let mut config = PathBuf::from(DEFAULT_PATH);
    let (mut check, mut test_config, mut handover) = (false, false, None);
    let mut args = args.into_iter();
    let fd = |args: &mut dyn Iterator<Item = OsString>, opt: &str| {
        args.next().map(|f| f.to_string_lossy().into_owned()).ok_or_else(|| format!("option {} needs an FD", opt))
    };
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("-h") | Some("--help") => return Ok(Mode::Help),
            Some("-V") | Some("--version") => return Ok(Mode::Version),
            Some("--check") => check = true,
            Some(upgrade::ARG_CHECK) => return Ok(Mode::HandoverCheck { fd: fd(&mut args, upgrade::ARG_CHECK)? }),
            Some(upgrade::ARG_HANDOVER) => handover = Some(fd(&mut args, upgrade::ARG_HANDOVER)?),
            Some("-t") | Some("--test-config") => test_config = true,
            Some("-c") | Some("--config") => config = PathBuf::from(args.next().ok_or("option -c needs a FILE")?),
            Some(s) if s.starts_with("--config=") => config = PathBuf::from(&s["--config=".len()..]),
            _ => return Err(format!("unknown argument '{}'", a.to_string_lossy())),
        }
    }
    Ok(match (test_config, check, handover) {
        (true, true, _) => return Err("-t and --check exclude each other".into()),
        (true, false, _) => Mode::TestConfig { config },
        (false, true, _) => Mode::Check { config },
        (false, false, Some(fd)) => Mode::Resume { fd },
        (false, false, None) => Mode::Master { config },
    })
}

fn main() -> ExitCode {
    if let Err(e) = zdrestart::sys::ensure_std_fds() {
        return usage_error(&format!("open /dev/null: {}", e));
    }
    let mode = match parse_args(std::env::args_os().skip(1)) {
        Ok(m) => m,
        Err(e) => return usage_error(&e),
    };
    match mode {
        Mode::Help => {
            print!("{}", HELP);
            ExitCode::SUCCESS
        }
        Mode::Version => {
            println!("zdrestart {} (magic {})", zdrestart::VERSION, zdrestart::MAGIC);
            ExitCode::SUCCESS
        }
        Mode::HandoverCheck { fd } => ExitCode::from(upgrade::check_main(&fd) as u8),
        Mode::TestConfig { config } => offline(&config, |cfg| run_config_test(&cfg)),
        Mode::Check { config } => offline(&config, run_check),
        // The master's very first action: from here no signal it uses can
        // kill it with the default action (zdrestart(8), SIGNALS).
        Mode::Resume { fd } => with_signals(|signals| resume(&fd, signals)),
        Mode::Master { config } => with_signals(|signals| run_master(&config, signals)),
    }
}

/// `-t` and `--check` only shrug off the master's restart and reopen signals
/// (an operator's `killall -USR2 zdrestart` must not kill them; Ctrl-C still
/// ends them); then `run` gets the config.
fn offline(path: &Path, run: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    if let Err(e) = zdrestart::signals::shrug_off(&[libc::SIGUSR2, libc::SIGHUP]) {
        eprintln!("zdrestart: install signal handlers: {}", e);
        return ExitCode::from(1);
    }
    match Config::load(path) {
        Ok(c) => run(c),
        Err(e) => {
            eprintln!("zdrestart: {}", e);
            ExitCode::from(1)
        }
    }
}

/// The master's signal handlers first, then `run`.
fn with_signals(run: impl FnOnce(SignalPipe) -> ExitCode) -> ExitCode {
    match event_loop::install_signals() {
        Ok(s) => run(s),
        Err(e) => {
            eprintln!("zdrestart: {}", e);
            ExitCode::from(1)
        }
    }
}

/// The master: config, log, then the event loop until it stops.
fn run_master(path: &Path, signals: SignalPipe) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zdrestart: {}", e);
            return ExitCode::from(1);
        }
    };
    if let Err(e) = init_log(&cfg) {
        eprintln!("zdrestart: {}", e);
        return ExitCode::from(1);
    }
    for w in &cfg.warnings {
        log::warn!("{}", w);
        eprintln!("zdrestart: warning: {}", w);
    }
    let opts = Options { no_pidfd: std::env::var_os("ZDRESTART_NO_PIDFD").is_some_and(|v| v == "1") };
    if std::env::var_os("ZDRESTART_NO_CLOSE_RANGE").is_some_and(|v| v == "1") {
        zdrestart::sys::disable_close_range();
    }
    match event_loop::run(cfg, opts, signals) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            log::error!(fatal = true, event = "master.stop"; "{}", e);
            eprintln!("zdrestart: {}", e);
            ExitCode::from(1)
        }
    }
}

fn init_log(cfg: &Config) -> Result<(), String> {
    let target = match &cfg.logfile {
        Some(p) => zdrestart::log::Target::File(p.clone()),
        None if std::io::stderr().is_terminal() => zdrestart::log::Target::Terminal,
        None => zdrestart::log::Target::Stderr,
    };
    zdrestart::log::init(target, cfg.log_level, "master").map_err(|e| e.to_string())
}

/// `--handover FD`: the new image of an upgrade. Its check
/// (`--handover-check`) passed on these very bytes before the old image
/// exec'd, so a failure here is not expected; if it happens there is no
/// way back: say why and exit (the workers get their parent-death signal).
fn resume(fd: &str, signals: SignalPipe) -> ExitCode {
    let fail = |e: String| {
        log::error!(fatal = true, event = "master.stop"; "upgrade: {}", e);
        eprintln!("zdrestart: upgrade: {}", e);
        ExitCode::from(1)
    };
    if std::env::var_os("ZDRESTART_NO_CLOSE_RANGE").is_some_and(|v| v == "1") {
        zdrestart::sys::disable_close_range();
    }
    let h = match upgrade::read_state(fd) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    if let Err(e) = zdrestart::master::handover::check_fds(&h, zdrestart::sys::fd_is_open) {
        return fail(e);
    }
    let cfg = match Config::load(&h.config_path) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = init_log(&cfg) {
        return fail(e);
    }
    match event_loop::resume(cfg, h, signals) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => fail(e),
    }
}

/// `-t`: the configuration alone, as the init script's `configtest` and the
/// unit's reload need it before they touch a running master. Unlike `--check`
/// it runs no probe and asks no master, so it says "valid" for a
/// memory-driver configuration that `--check` must refuse.
fn run_config_test(cfg: &Config) -> ExitCode {
    for w in &cfg.warnings {
        eprintln!("zdrestart: warning: {}", w);
    }
    // The one check that needs the system: the master fails at start
    // without this user, so a test that passes must not hide it.
    if let Some(name) = &cfg.server_user {
        let missing = match zdrestart::sys::lookup_user(name) {
            Ok(Some(_)) => None,
            Ok(None) => Some(format!("no such user \"{}\"", name)),
            Err(e) => Some(format!("lookup of user \"{}\" failed: {}", name, zdrestart::sys::strerror(&e))),
        };
        if let Some(m) = missing {
            eprintln!("zdrestart: {}: key \"serverUser\": {}", cfg.path.display(), m);
            return ExitCode::from(1);
        }
    }
    println!("zdrestart: configuration {} is valid", cfg.path.display());
    ExitCode::SUCCESS
}

/// `--check`: the verdict an operator wants before sending SIGUSR2, from the
/// same admission function as the master's (`admission::admit`).
fn run_check(cfg: Config) -> ExitCode {
    for w in &cfg.warnings {
        println!("warning: {}", w);
    }
    println!(
        "config {}: valid ({} workers, driver {}, listen {})",
        cfg.path.display(),
        cfg.workers,
        cfg.driver.as_str(),
        cfg.listen_display()
    );
    let verdict = probe_verdict(&cfg);
    let running = running_master(&cfg);
    match admission::admit(&running, Ok::<_, String>(&cfg), verdict) {
        Ok(_) => {
            println!("verdict: a zero-downtime restart would be accepted");
            ExitCode::SUCCESS
        }
        Err(refused) => {
            println!("verdict: a zero-downtime restart would be refused: {}", refused);
            println!("{}", control::operator_message(refused.reason.wire()));
            ExitCode::from(1)
        }
    }
}

/// What the new code is: the probe's answer, or the config's declaration.
fn probe_verdict(cfg: &Config) -> Result<ProbeInfo, ProbeFailure> {
    if let Some(info) = admission::declared(cfg) {
        let shared = info.shared.unwrap_or(false);
        println!("probe: off; the config declares magic {}, version {}, sharedState {}", info.magic, info.version, shared);
        return Ok(info);
    }
    let outcome = probe_blocking(cfg, None).unwrap_or_default();
    for l in &outcome.output {
        println!("probe output: {}", l);
    }
    let verdict = outcome.for_restart(cfg.probe_timeout);
    match &verdict {
        Ok(info) => {
            let shared = match info.shared {
                Some(true) => "yes (SHARED=1)",
                Some(false) => "no (SHARED=0)",
                None => "not said (no SHARED= line)",
            };
            println!("probe: magic {}, version {}, state shared by every worker: {}", info.magic, info.version, shared)
        }
        Err(f) => println!("probe: failed: {}", f.error),
    }
    verdict
}

/// The running master, if its control socket answers: its recorded magic
/// number, state and listen address are what a restart is checked against.
fn running_master(cfg: &Config) -> Running {
    if let Some(st) = cfg.control_socket.as_deref().and_then(master_status) {
        println!("running master: pid {}, state {}, magic {}", st.pid, st.state, st.magic);
        // An upgrade from a lockout: a restart meets the lockout.
        let state = if st.state == MasterState::Upgrading && st.lockout { MasterState::Lockout } else { st.state };
        return Running { state, listen: st.listen, magic: st.magic };
    }
    // A worker without a probe declares its own number: there is nothing to
    // compare it with but a running master's.
    let magic = match admission::declared(cfg) {
        Some(info) => {
            println!("running master: not reachable (no controlSocket, or not running): the declared magic {} is not compared", info.magic);
            info.magic
        }
        None => {
            println!("running master: not reachable (no controlSocket, or not running): comparing with this zdrestart's magic {}", zdrestart::MAGIC);
            zdrestart::MAGIC
        }
    };
    Running { state: MasterState::Running, listen: cfg.listen_display(), magic }
}

/// STATUS of the master on `sock`, or None when nobody answers (bounded: 2 s).
fn master_status(sock: &std::path::Path) -> Option<StatusReport> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    (&s).write_all(b"STATUS\n").ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    serde_json::from_str(line.trim_end().strip_prefix("ACK ")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(args: &[&str]) -> Result<Mode, String> {
        parse_args(args.iter().map(OsString::from))
    }

    #[test]
    fn the_command_line_is_one_run_mode() {
        let etc = || PathBuf::from(DEFAULT_PATH);
        assert_eq!(mode(&[]), Ok(Mode::Master { config: etc() }));
        assert_eq!(mode(&["-c", "x.json"]), Ok(Mode::Master { config: "x.json".into() }));
        assert_eq!(mode(&["--config=y.json", "-t"]), Ok(Mode::TestConfig { config: "y.json".into() }));
        assert_eq!(mode(&["--check"]), Ok(Mode::Check { config: etc() }));
        assert_eq!(mode(&["--handover", "5"]), Ok(Mode::Resume { fd: "5".into() }));
        assert_eq!(mode(&["--handover", "5", "--check"]), Ok(Mode::Check { config: etc() }));
        assert_eq!(mode(&["--handover-check", "0", "--bogus"]), Ok(Mode::HandoverCheck { fd: "0".into() }));
        assert_eq!(mode(&["-t", "--help"]), Ok(Mode::Help));
        assert_eq!(mode(&["-V"]), Ok(Mode::Version));
        assert_eq!(mode(&["-t", "--check"]), Err("-t and --check exclude each other".into()));
        assert_eq!(mode(&["-c"]), Err("option -c needs a FILE".into()));
        assert_eq!(mode(&["--handover"]), Err("option --handover needs an FD".into()));
        assert_eq!(mode(&["--bogus", "--help"]), Err("unknown argument '--bogus'".into()));
    }
}

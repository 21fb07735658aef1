//! zdrestartctl: the client of the master's control socket (zdrestartctl(8);
//! ARCHITECTURE.md, "The control protocol").
//!
//! Sends one command, prints the answer for a person (or the raw JSON of
//! `status --json`), and exits with a status a script or a fleet tool can
//! branch on ([`Exit`]): 0 complete, 1 refused (nothing changed), 2 usage or
//! protocol error, 3 aborted (the master is in lockout), 4 not possible right
//! now (retry later), 5 timed out, 6 no master. The reason and advice of a
//! NACK go to stderr, in the same wording as `zdrestart --check`
//! (`zdrestart::control`). Never links MongoDB.
#![deny(unsafe_code)]

mod progress;
mod socket;
mod status_table;

use progress::{Display, Mode};
use socket::{connect_hint, no_master_there, os_text, pidfile_hint, socket_path};
use status_table::render_status;
use std::io::IsTerminal;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use zdrestart::config;
use zdrestart::control::locate::SocketFrom;
use zdrestart::control::{self, Answer};
use zdrestart::restart::Reason;
use zdrestart::status::StatusReport;

/// The exit statuses (zdrestartctl(8), EXIT STATUS; `--help`). Distinct, so
/// that a fleet tool rolling a release host by host can tell "stop the
/// rollout" (1, 3) from "try again in a moment" (4) from "the host has no
/// master" (6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Exit {
    /// ACK: done; for `--wait`, the restart is complete.
    Ok = 0,
    /// NACK: refused before any worker was touched (the reason says why).
    Refused = 1,
    /// Usage, an unreadable `-c` file, a socket we may not use, an answer
    /// that is neither ACK nor NACK.
    Usage = 2,
    /// The restart was aborted, or is refused because an earlier one was:
    /// the workers that serve keep serving, the master is in lockout.
    Aborted = 3,
    /// Not possible right now: a restart in flight, a worker of the serving
    /// generation not ready (starting, respawned, replaced), the master
    /// starting, too many control clients. Retry later.
    Retry = 4,
    /// No answer within `--timeout` (a restart may still be in progress).
    Timeout = 5,
    /// No master: nothing listens on the socket, or the master went away
    /// (stopping, or it closed the connection without answering).
    NoMaster = 6,
}

/// The exit status of a NACK, by its reason.
fn nack_exit(reason: &str) -> Exit {
    let key = control::reason_key(reason);
    match Reason::from_wire(key) {
        Some(Reason::Aborted | Reason::AbortedRestart) => Exit::Aborted,
        Some(Reason::InFlight | Reason::NotReady | Reason::Starting | Reason::UpgradeNotPossible) => Exit::Retry,
        Some(Reason::Stopping) => Exit::NoMaster,
        None if key == control::wire::NACK_TOO_MANY_CLIENTS => Exit::Retry,
        _ => Exit::Refused,
    }
}

/// Why there is no answer to print: the message and the exit status.
#[derive(Debug, PartialEq)]
struct Failure {
    exit: Exit,
    msg: String,
    /// The connection itself failed (nothing was sent).
    at_connect: bool,
}

fn failure(exit: Exit, msg: String) -> Failure {
    Failure { exit, msg, at_connect: false }
}

/// Default timeout of every command but `restart --wait`.
const DEFAULT_TIMEOUT_SECS: f64 = 30.0;
/// Longest answer line read (STATUS of many workers stays far below).
const MAX_ANSWER: u64 = 4 * 1024 * 1024;

const USAGE: &str = "\
Usage: zdrestartctl [-s SOCKET] [-t SECONDS] [-c CONFIG] COMMAND

Talk to a running zdrestart master through its control socket.

Commands:
  restart [--wait [--json]]
                       zero-downtime restart (like SIGUSR2). Without --wait:
                       returns once the master accepted or refused it. With
                       --wait: shows each step as it happens (on a terminal
                       one progress line updated in place, else one line per
                       step, with --json one JSON object per step and one for
                       the answer) and returns when the restart is complete
                       (exit 0), or was refused or aborted (reason and advice
                       on stderr; exit status below)
  restart --canary [--wait]
                       canary restart: one new worker starts beside the whole
                       old fleet and the restart stops there; both generations
                       serve. With --wait: returns once the canary passed its
                       soak and stands (exit 0), or failed (exit 3 when the
                       master locks out, 1 when the canary was rolled back)
  promote [--wait [--json]]
                       carry a standing canary's restart on to every worker
                       (--wait: until it is complete, showing each step)
  rollback             stop the canary: every worker is of the old generation
                       again, no lockout
  upgrade [--wait [--json]] [--no-restart]
                       upgrade the master itself with zero downtime: it re-execs
                       its executable on disk in place (same pid, listeners and
                       workers kept), then rolls the workers over (not with
                       --no-restart). Also ends a lockout. Without --wait:
                       returns once the new master runs; with --wait: when the
                       roll-over that follows is complete (exit 0) or was
                       refused or aborted, showing its steps as restart --wait
  status [--json]      a summary line (state, generation, version, magic,
                       uptime, last restart and its outcome) and a table of
                       the workers (index, pid, generation, state, uptime,
                       RSS, the worker's own STATUS text); --json prints the
                       master's one-line JSON as it is (state, generation,
                       lockout, magic, version, master_version, workers, ...)
  metrics              the master's metrics in the Prometheus text format (the
                       text it writes to metricsFile)
  version              version of the running master
  loglevel LEVEL       set the log level of the master and its workers:
                       trace, debug, info, warn, error, fatal (the same as
                       error: both log errors and fatal records), or
                       restore (back to logLevel of the config)
  cmds                 commands the master understands

  --wait may also be written -w or wait (restart -w, upgrade wait).

Options:
  -s, --socket SOCKET  control socket (default: controlSocket of the config,
                       else /run/zdrestart/zdrestart.sock)
  -c, --config CONFIG  config file to read controlSocket (and pidfile) from:
                       the one the master was started with (default:
                       $ZDRESTART_CONFIG, else /etc/zdrestart.json)
  -t, --timeout SECS   give up after SECS seconds without an answer (exit 5);
                       0 waits forever. Default: 30, except restart --wait,
                       promote --wait and upgrade --wait, which wait
                       without limit: the master bounds every step of a
                       restart (readyTimeout, minReady, shutdownTimeout) and
                       answers when it ends, or closes the connection if it
                       exits. A timeout leaves a restart running
  -h, --help           this help
  -V, --version        version of zdrestartctl

Exit status (distinct, for scripts and fleet tools):
  0  complete: the master answered ACK (with --wait: the restart is complete)
  1  refused: nothing changed; the reason is on stderr (bad config, listen
     address changed, no workers, incompatibility, probe failed, bad driver,
     upgrade check failed, exec failed, or a command the master rejects)
  2  usage error, a -c file that cannot be read, a socket this user may not
     use, or an answer that is neither ACK nor NACK
  3  aborted: the restart was aborted (or refused as \"aborted restart\"
     after an earlier one): workers that serve keep serving, the master is
     in lockout until it is upgraded (upgrade --wait) or restarted
  4  not possible right now: a restart in flight, a worker of the serving
     generation not ready (starting, respawned, replaced), the master
     starting (its pidfile is locked but its socket is not open yet), an
     upgrade already under way, too many control clients: retry later
  5  timed out: no answer within --timeout (a restart may still be running)
  6  no master: nothing listens on the socket and no master holds the
     pidfile, the master is stopping, or it closed the connection without
     answering (it exited)

Examples of the output:
  $ zdrestartctl restart --wait          (not a terminal: one line per step)
  [  0.115 s] probe passed (magic 1, version 0.1.0): rolling 2 workers to
              generation 2 (generation 2: 0 of 2 ready, 2 old left)
  [  0.115 s] worker 860 ready in 39 ms (generation 2: 1 of 2 ready, 2 old left)
  [  0.396 s] worker 791 (generation 1) stopped and drained (exit status 0) (...)
  [  0.721 s] complete: 2 workers of generation 2 in 624 ms
  zero-downtime restart complete
  $ zdrestartctl restart --wait --json
  {\"step\":\"worker.ready\",\"text\":\"worker 860 ready in 39 ms\",\"pid\":860,...}
  {\"step\":\"answer\",\"ok\":true,\"answer\":\"complete\",\"elapsed_ms\":721}
  $ zdrestartctl status
  running: generation 2, version 0.1.0, magic 1, up 3s; last restart:
  complete (generation 2) in 0.624 s, started 2026-12-04T01:25:16.919Z
  master pid 787, RSS 2 MiB, listening on 127.0.0.1:8080, 2 workers (2 configured)
  INDEX      PID  GEN  STATE              UPTIME       RSS  STATUS
      0      860    2  ready                  0s    10 MiB  -
  $ zdrestartctl metrics
  zdrestart_build_info{magic=\"1\",version=\"0.1.0\",worker_version=\"0.1.0\"} 1
  zdrestart_restarts_total{outcome=\"complete\"} 1
  ...
";

#[derive(Debug, Clone, PartialEq)]
enum Cmd {
    Restart { wait: bool, canary: bool },
    Promote { wait: bool },
    Rollback,
    Upgrade { wait: bool, restart: bool },
    Status { json: bool },
    Metrics,
    Version,
    LogLevel(String),
    Cmds,
}

impl Cmd {
    fn line(&self) -> String {
        match self {
            // WAIT always asks for the steps (PROGRESS lines before the answer).
            Cmd::Restart { wait, canary } => {
                format!("RESTART{}{}", if *canary { " CANARY" } else { "" }, if *wait { " WAIT PROGRESS" } else { "" })
            }
            Cmd::Promote { wait: false } => "PROMOTE".into(),
            Cmd::Promote { wait: true } => "PROMOTE WAIT PROGRESS".into(),
            Cmd::Rollback => "ROLLBACK".into(),
            Cmd::Upgrade { wait, restart } => {
                format!("UPGRADE{}{}", if *wait { " WAIT PROGRESS" } else { "" }, if *restart { "" } else { " NORESTART" })
            }
            Cmd::Status { .. } | Cmd::Metrics => "STATUS".into(),
            Cmd::Version => "VERSION".into(),
            Cmd::LogLevel(l) => format!("LOGLEVEL {}", l),
            Cmd::Cmds => "CMDS".into(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Cmd::Restart { .. } => "restart",
            Cmd::Promote { .. } => "promote",
            Cmd::Rollback => "rollback",
            Cmd::Upgrade { .. } => "upgrade",
            Cmd::Status { .. } => "status",
            Cmd::Metrics => "metrics",
            Cmd::Version => "version",
            Cmd::LogLevel(_) => "loglevel",
            Cmd::Cmds => "cmds",
        }
    }
}

#[derive(Debug)]
struct Opts {
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    timeout: Option<f64>,
    cmd: Cmd,
    /// `--json` of `restart`, `promote`, `upgrade`: steps as JSON objects.
    json: bool,
}

enum Parsed {
    Run(Opts),
    Help,
    Version,
}

/// The command line: options, then the command and its words.
fn parse_args(args: &[String]) -> Result<Parsed, String> {
    let (socket, config, timeout, words) = match parse_options(args)? {
        Options::Run { socket, config, timeout, words } => (socket, config, timeout, words),
        Options::Help => return Ok(Parsed::Help),
        Options::Version => return Ok(Parsed::Version),
    };
    let Some((first, rest)) = words.split_first() else {
        return Err("missing command".into());
    };
    let mut rest: Vec<&str> = rest.iter().map(|s| s.as_str()).collect();
    let mut json = false;
    if matches!(first.as_str(), "restart" | "promote" | "upgrade") {
        let n = rest.len();
        rest.retain(|w| *w != "--json");
        json = rest.len() < n;
        if n - rest.len() > 1 {
            return Err(format!("{}: --json given twice", first));
        }
    }
    let cmd = parse_command(first, &rest)?;
    if json && !matches!(cmd, Cmd::Restart { wait: true, .. } | Cmd::Promote { wait: true } | Cmd::Upgrade { wait: true, .. }) {
        return Err(format!("{}: --json goes with --wait (it shows the steps)", first));
    }
    Ok(Parsed::Run(Opts { socket, config, timeout, cmd, json }))
}

/// The options, apart from the command's words.
enum Options {
    Run { socket: Option<PathBuf>, config: Option<PathBuf>, timeout: Option<f64>, words: Vec<String> },
    Help,
    Version,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let (mut socket, mut config, mut timeout) = (None, None, None);
    let mut words: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let value = |i: &mut usize| -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            *i += 1;
            args.get(*i).cloned().ok_or_else(|| format!("option {} needs a value", name))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Options::Help),
            "-V" | "--version" => return Ok(Options::Version),
            "-s" | "--socket" => socket = Some(PathBuf::from(value(&mut i)?)),
            "-c" | "--config" => config = Some(PathBuf::from(value(&mut i)?)),
            "-t" | "--timeout" => timeout = Some(parse_timeout(&value(&mut i)?)?),
            "--wait" | "-w" | "--json" | "--no-restart" | "--canary" => words.push(a.clone()),
            "--" => {
                words.extend(args[i + 1..].iter().cloned());
                break;
            }
            s if s.starts_with('-') && s.len() > 1 && s.parse::<f64>().is_err() => return Err(format!("unknown option {}", a)),
            _ => words.push(a.clone()),
        }
        i += 1;
    }
    Ok(Options::Run { socket, config, timeout, words })
}

fn parse_timeout(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(t) if (0.0..=1e9).contains(&t) => Ok(t),
        _ => Err(format!("invalid timeout \"{}\": expected a number of seconds (0: no timeout)", v)),
    }
}

/// The command and its words.
fn parse_command(first: &str, rest: &[&str]) -> Result<Cmd, String> {
    let unexpected = |x: &str| format!("{}: unexpected argument \"{}\"", first, x);
    let none = |cmd: Cmd| rest.first().map_or(Ok(cmd), |x| Err(unexpected(x)));
    Ok(match first {
        "restart" => {
            let (mut wait, mut canary) = (false, false);
            for w in rest {
                match *w {
                    "--wait" | "-w" | "wait" if !wait => wait = true,
                    "--canary" if !canary => canary = true,
                    x => return Err(unexpected(x)),
                }
            }
            Cmd::Restart { wait, canary }
        }
        "promote" => match rest {
            [] => Cmd::Promote { wait: false },
            ["--wait" | "-w" | "wait"] => Cmd::Promote { wait: true },
            r => return Err(unexpected(r[r.len() - 1])),
        },
        "rollback" => none(Cmd::Rollback)?,
        "upgrade" => {
            let (mut wait, mut restart) = (false, true);
            for w in rest {
                match *w {
                    "--wait" | "-w" | "wait" if !wait => wait = true,
                    "--no-restart" if restart => restart = false,
                    x => return Err(unexpected(x)),
                }
            }
            Cmd::Upgrade { wait, restart }
        }
        "status" => match rest {
            [] => Cmd::Status { json: false },
            ["--json"] => Cmd::Status { json: true },
            r => return Err(unexpected(r[r.len() - 1])),
        },
        "version" => none(Cmd::Version)?,
        "metrics" => none(Cmd::Metrics)?,
        "cmds" => none(Cmd::Cmds)?,
        "loglevel" => match rest {
            [] => return Err("loglevel: missing LEVEL (trace, debug, info, warn, error, fatal or restore)".into()),
            [l] => {
                let l = l.to_ascii_lowercase();
                if l != "restore" && config::parse_level(&l).is_none() {
                    return Err(format!("loglevel: invalid level \"{}\": expected trace, debug, info, warn, error, fatal or restore", l));
                }
                Cmd::LogLevel(l)
            }
            [_, r @ ..] => return Err(unexpected(r[0])),
        },
        other => return Err(format!("unknown command \"{}\"", other)),
    })
}

/// Send one command line and read one answer line.
fn exchange(sock: &Path, line: &str, timeout: Option<Duration>, wait: bool, steps: Option<&mut Display>) -> Result<String, Failure> {
    let stream = UnixStream::connect(sock).map_err(|e| {
        let msg = format!("connect {}: {}{}", sock.display(), os_text(&e), connect_hint(e.kind()));
        // Nothing listens there: "no master" (run() may find it starting).
        let exit = match e.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => Exit::NoMaster,
            _ => Exit::Usage,
        };
        Failure { exit, msg, at_connect: true }
    })?;
    let setup = |e: std::io::Error| failure(Exit::Usage, format!("{}: {}", sock.display(), os_text(&e)));
    stream.set_read_timeout(timeout).map_err(setup)?;
    stream.set_write_timeout(timeout).map_err(setup)?;
    // A terminal's progress line is redrawn every second: the reads wake
    // up that often, and the timeout is counted here.
    if let Some(t) = steps.as_ref().and_then(|d| d.tick_every()) {
        stream.set_read_timeout(Some(timeout.map_or(t, |d| d.min(t)))).map_err(setup)?;
    }
    converse(&stream, sock, line, timeout, wait, steps)
}

/// Read up to the answer line into `buf`: the `PROGRESS <json>` lines
/// before it go to `steps` (without `steps` the first line is the answer);
/// on a terminal a read that times out redraws the progress line, until
/// `timeout` passed with no line at all.
fn read_answer(r: &mut impl BufRead, buf: &mut Vec<u8>, timeout: Option<Duration>, mut steps: Option<&mut Display>) -> std::io::Result<usize> {
    let mut active = Instant::now();
    loop {
        let read = r.read_until(b'\n', buf);
        let timed_out = matches!(&read, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
        let Some(d) = steps.as_deref_mut() else { return read };
        if read.is_ok() && buf.ends_with(b"\n") && buf.starts_with(b"PROGRESS ") {
            d.step(&String::from_utf8_lossy(&buf["PROGRESS ".len()..]));
            buf.clear();
            active = Instant::now();
        } else if timed_out && d.tick_every().is_some() && timeout.is_none_or(|t| active.elapsed() < t) {
            d.tick();
        } else {
            return read;
        }
    }
}

/// The exchange on a connected stream (timeouts set).
///
/// The master may answer and close before it reads the command (`NACK too
/// many clients` at accept): then the send fails (EPIPE, ECONNRESET) while the
/// answer waits to be read. So a failed send still reads what was sent; only
/// if there is no answer is the send error reported.
fn converse(
    stream: &UnixStream,
    sock: &Path,
    line: &str,
    timeout: Option<Duration>,
    wait: bool,
    steps: Option<&mut Display>,
) -> Result<String, Failure> {
    let still = if wait { "; the restart may still be in progress: see `zdrestartctl status`" } else { "" };
    let timed_out = |secs: f64| failure(Exit::Timeout, format!("{}: no answer within {} s{}", sock.display(), secs, still));
    let send_err = match (&*stream).write_all(format!("{}\n", line).as_bytes()) {
        Ok(()) => None,
        // The master does not read: waiting again for an answer is pointless.
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return Err(timed_out(timeout.map_or(0.0, |d| d.as_secs_f64())));
        }
        Err(e) => {
            // The peer is gone or going: an answer, if any, is already there.
            // Never wait long for it.
            let short = Duration::from_secs(1);
            let _ = stream.set_read_timeout(Some(timeout.map_or(short, |t| t.min(short))));
            Some(failure(Exit::NoMaster, format!("send to {}: {}", sock.display(), os_text(&e))))
        }
    };
    let mut buf = Vec::new();
    let mut r = BufReader::new(stream.take(MAX_ANSWER));
    let read = read_answer(&mut r, &mut buf, timeout, steps);
    if let Some(e) = send_err {
        if buf.is_empty() {
            return Err(e);
        }
    }
    match read {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return Err(timed_out(timeout.map_or(0.0, |d| d.as_secs_f64())));
        }
        Err(e) => {
            return Err(failure(Exit::NoMaster, format!("read from {}: {}{}", sock.display(), os_text(&e), still)))
        }
    }
    if buf.last() != Some(&b'\n') {
        if buf.is_empty() {
            return Err(failure(
                Exit::NoMaster,
                format!(
                    "{}: the master closed the connection without answering{}",
                    sock.display(),
                    if wait { " (did it exit? see its log)" } else { "" }
                ),
            ));
        }
        if buf.len() as u64 >= MAX_ANSWER {
            return Err(failure(Exit::Usage, format!("{}: answer longer than {} bytes", sock.display(), MAX_ANSWER)));
        }
    }
    Ok(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string())
}


/// Was an `UPGRADE` answered `NACK <reason>` by the old image, before any
/// exec (nothing changed)? Otherwise the new image answered it.
fn refused_before_exec(reason: &str) -> bool {
    Reason::from_wire(control::reason_key(reason)).is_some_and(|r| Reason::UPGRADE_REFUSALS.contains(&r))
}

/// Print the outcome of one command; returns the exit status.
fn report(cmd: &Cmd, answer: Answer) -> Result<Exit, String> {
    match answer {
        Answer::Nack(reason) => {
            let verb = match cmd {
                Cmd::Restart { .. } | Cmd::Promote { .. }
                    if Reason::from_wire(control::reason_key(&reason)) == Some(Reason::Aborted) =>
                {
                    "restart failed"
                }
                Cmd::Restart { canary: true, .. } if Reason::from_wire(control::reason_key(&reason)) == Some(Reason::RolledBack) => {
                    "canary rolled back"
                }
                Cmd::Restart { .. } => "restart refused",
                Cmd::Promote { .. } => "promote refused",
                Cmd::Rollback => "rollback refused",
                Cmd::Upgrade { .. } if refused_before_exec(&reason) => "upgrade refused",
                // The new master answered: upgraded, but its roll-over did not complete.
                Cmd::Upgrade { .. } => "upgrade done, restart failed",
                other => other.name(),
            };
            eprintln!("zdrestartctl: {}: {}", verb, control::operator_message(&reason));
            Ok(nack_exit(&reason))
        }
        Answer::Ack(data) => {
            match cmd {
                Cmd::Restart { wait: false, canary: false } => {
                    println!("zero-downtime restart started (`zdrestartctl status` follows it)")
                }
                Cmd::Restart { wait: false, canary: true } => {
                    println!("canary restart started: one new worker beside the old fleet (`zdrestartctl status` follows it)")
                }
                Cmd::Restart { wait: true, canary: true } => {
                    println!("canary stands beside the old fleet: `zdrestartctl promote` or `zdrestartctl rollback`")
                }
                Cmd::Restart { wait: true, canary: false } | Cmd::Promote { wait: true } => {
                    if data.is_empty() || data == control::ACK_COMPLETE {
                        println!("zero-downtime restart complete");
                    } else {
                        println!("zero-downtime restart complete: {}", data);
                    }
                }
                Cmd::Promote { wait: false } => println!("canary promoted: rolling every worker over (`zdrestartctl status` follows it)"),
                Cmd::Rollback => println!("canary rolled back: the old generation serves on"),
                Cmd::Upgrade { wait: true, restart: true } => println!("master upgraded; zero-downtime restart complete"),
                Cmd::Upgrade { .. } => println!("master {}", data),
                Cmd::Status { json: true } => println!("{}", data),
                Cmd::Status { json: false } => {
                    let st: StatusReport = serde_json::from_str(&data)
                        .map_err(|e| format!("STATUS answer is not JSON ({}): {}", e, data))?;
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    print!("{}", render_status(&st, now.as_millis() as u64));
                }
                Cmd::Metrics => {
                    let st: StatusReport = serde_json::from_str(&data)
                        .map_err(|e| format!("STATUS answer is not JSON ({}): {}", e, data))?;
                    print!("{}", zdrestart::metrics::render(&st));
                }
                Cmd::Version | Cmd::Cmds => println!("{}", data),
                Cmd::LogLevel(l) if l == "restore" => println!("log level restored to logLevel of the config"),
                Cmd::LogLevel(l) => println!("log level set to {}", l),
            }
            Ok(Exit::Ok)
        }
    }
}

fn run(args: &[String]) -> u8 {
    let opts = match parse_args(args) {
        Ok(Parsed::Help) => {
            print!("{}", USAGE);
            return Exit::Ok as u8;
        }
        Ok(Parsed::Version) => {
            println!("zdrestartctl {}", zdrestart::VERSION);
            return Exit::Ok as u8;
        }
        Ok(Parsed::Run(o)) => o,
        Err(e) => {
            eprintln!("zdrestartctl: {}\nTry 'zdrestartctl --help'.", e);
            return Exit::Usage as u8;
        }
    };
    let located = match socket_path(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("zdrestartctl: {}", e);
            return Exit::Usage as u8;
        }
    };
    let wait = matches!(opts.cmd, Cmd::Restart { wait: true, .. } | Cmd::Upgrade { wait: true, .. } | Cmd::Promote { wait: true });
    let secs = opts.timeout.unwrap_or(if wait { 0.0 } else { DEFAULT_TIMEOUT_SECS });
    let timeout = if secs > 0.0 { Some(Duration::from_secs_f64(secs)) } else { None };
    let sock = located.socket.clone();
    let what = match opts.cmd {
        Cmd::Upgrade { .. } => "upgrade",
        _ => "restart",
    };
    let mode = if opts.json { Mode::Json } else if std::io::stdout().is_terminal() { Mode::Terminal } else { Mode::Plain };
    let mut steps = wait.then(|| Display::new(mode, what));
    let line = match exchange(&sock, &opts.cmd.line(), timeout, wait, steps.as_mut()) {
        Ok(l) => l,
        Err(f) => {
            eprintln!("zdrestartctl: {}", f.msg);
            let mut exit = f.exit;
            if f.at_connect {
                let mut starting = false;
                if let Some((hint, held)) = pidfile_hint(&located) {
                    eprintln!("zdrestartctl: {}", hint);
                    // A relative controlSocket may be the master's, resolved in
                    // another directory: the lock then says nothing of the socket.
                    let relative = matches!(&located.from, SocketFrom::Config { written } if Path::new(written).is_relative());
                    if held && exit == Exit::NoMaster && !relative {
                        // Its socket opens once its probe has passed.
                        eprintln!(
                            "zdrestartctl: the master is starting (its control socket opens once its probe has passed), \
                             or it runs without this controlSocket: retry later"
                        );
                        exit = Exit::Retry;
                        starting = true;
                    }
                }
                if !starting && no_master_there(&sock) {
                    eprintln!("zdrestartctl: {}", located.hint());
                }
            }
            return exit as u8;
        }
    };
    let Some(answer) = control::parse_answer(&line) else {
        eprintln!("zdrestartctl: {}: unexpected answer: {:?}", sock.display(), line);
        return Exit::Usage as u8;
    };
    if let Some(d) = &mut steps {
        d.finish(&answer);
        if d.mode() == Mode::Json && matches!(answer, Answer::Ack(_)) {
            return Exit::Ok as u8;
        }
    }
    match report(&opts.cmd, answer) {
        Ok(exit) => exit as u8,
        Err(e) => {
            eprintln!("zdrestartctl: {}: {}", sock.display(), e);
            Exit::Usage as u8
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ExitCode::from(run(&args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn cmd(args: &[&str]) -> Opts {
        match p(args) {
            Ok(Parsed::Run(o)) => o,
            Ok(_) => panic!("not a command: {:?}", args),
            Err(e) => panic!("{:?}: {}", args, e),
        }
    }

    #[test]
    fn parses_commands_and_options() {
        assert_eq!(cmd(&["restart"]).cmd, Cmd::Restart { wait: false, canary: false });
        assert_eq!(cmd(&["restart", "--wait"]).cmd, Cmd::Restart { wait: true, canary: false });
        assert_eq!(cmd(&["restart", "--canary", "--wait"]).cmd, Cmd::Restart { wait: true, canary: true });
        assert_eq!(Cmd::Restart { wait: true, canary: true }.line(), "RESTART CANARY WAIT PROGRESS");
        assert_eq!(cmd(&["promote", "--wait"]).cmd, Cmd::Promote { wait: true });
        assert_eq!(Cmd::Promote { wait: true }.line(), "PROMOTE WAIT PROGRESS");
        assert_eq!(cmd(&["rollback"]).cmd, Cmd::Rollback);
        assert!(cmd(&["restart", "--wait", "--json"]).json && cmd(&["upgrade", "--json", "--wait"]).json);
        assert!(!cmd(&["restart", "--wait"]).json);
        assert!(p(&["restart", "--json"]).is_err() && p(&["status", "--json", "--json"]).is_err());
        assert_eq!(cmd(&["metrics"]).cmd, Cmd::Metrics);
        assert_eq!(cmd(&["upgrade"]).cmd, Cmd::Upgrade { wait: false, restart: true });
        assert_eq!(cmd(&["upgrade", "--no-restart", "--wait"]).cmd, Cmd::Upgrade { wait: true, restart: false });
        assert_eq!(Cmd::Upgrade { wait: true, restart: false }.line(), "UPGRADE WAIT PROGRESS NORESTART");
        assert!(p(&["upgrade", "--wait", "--wait"]).is_err());
        assert!(p(&["upgrade", "now"]).is_err());
        assert_eq!(cmd(&["status"]).cmd, Cmd::Status { json: false });
        assert_eq!(cmd(&["status", "--json"]).cmd, Cmd::Status { json: true });
        assert_eq!(cmd(&["loglevel", "DEBUG"]).cmd, Cmd::LogLevel("debug".into()));
        assert_eq!(cmd(&["loglevel", "restore"]).cmd, Cmd::LogLevel("restore".into()));
        let o = cmd(&["-s", "/tmp/x.sock", "-t", "5", "-c", "/etc/z.json", "version"]);
        assert_eq!(o.socket, Some(PathBuf::from("/tmp/x.sock")));
        assert_eq!(o.config, Some(PathBuf::from("/etc/z.json")));
        assert_eq!(o.timeout, Some(5.0));
        assert_eq!(o.cmd, Cmd::Version);
        let o = cmd(&["restart", "--wait", "--timeout=0", "--socket=/s"]);
        assert_eq!((o.timeout, o.socket), (Some(0.0), Some(PathBuf::from("/s"))));
        assert!(matches!(p(&["--help"]), Ok(Parsed::Help)));
        assert!(matches!(p(&["status", "-V"]), Ok(Parsed::Version)));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &[][..],
            &["frob"][..],
            &["restart", "now"][..],
            &["restart", "--canary", "--canary"][..],
            &["rollback", "--wait"][..],
            &["promote", "now"][..],
            &["status", "--yaml"][..],
            &["loglevel"][..],
            &["loglevel", "loud"][..],
            &["-t", "soon", "status"][..],
            &["-t", "-1", "status"][..],
            &["-s"][..],
            &["--bogus", "status"][..],
            &["version", "x"][..],
        ] {
            assert!(p(bad).is_err(), "{:?} should be a usage error", bad);
        }
    }

    #[test]
    fn command_lines() {
        assert_eq!(Cmd::Restart { wait: true, canary: false }.line(), "RESTART WAIT PROGRESS");
        assert_eq!(Cmd::Upgrade { wait: true, restart: false }.line(), "UPGRADE WAIT PROGRESS NORESTART");
        assert_eq!(Cmd::Metrics.line(), "STATUS");
        assert_eq!(Cmd::Restart { wait: false, canary: true }.line(), "RESTART CANARY");
        assert_eq!(Cmd::LogLevel("warn".into()).line(), "LOGLEVEL warn");
        assert_eq!(Cmd::Status { json: true }.line(), "STATUS");
    }

    #[test]
    fn answer_sent_before_close_is_read_even_if_the_send_fails() {
        // The master answers `NACK too many clients` and closes before it
        // reads the command: the send fails (EPIPE), the NACK is still read.
        let sock = Path::new("/run/test.sock");
        let t = Some(Duration::from_secs(5));
        let (client, master) = UnixStream::pair().unwrap();
        (&master).write_all(b"NACK too many clients\n").unwrap();
        drop(master);
        let e = (&client).write_all(b"x").expect_err("the send must fail for this test");
        assert!(matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset), "{:?}", e);
        let (client, master) = UnixStream::pair().unwrap();
        (&master).write_all(b"NACK too many clients\n").unwrap();
        drop(master);
        assert_eq!(converse(&client, sock, "STATUS", t, false, None), Ok("NACK too many clients".to_string()));

        // Closed without an answer: the send error, as before.
        let (client, master) = UnixStream::pair().unwrap();
        drop(master);
        let err = converse(&client, sock, "RESTART WAIT", None, true, None).unwrap_err();
        assert_eq!(err, failure(Exit::NoMaster, "send to /run/test.sock: Broken pipe".into()));

        // Send fine, answer read (the usual case).
        let (client, master) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let mut l = String::new();
            BufReader::new(&master).read_line(&mut l).unwrap();
            (&master).write_all(b"ACK 0.1.0\n").unwrap();
            l
        });
        assert_eq!(converse(&client, sock, "VERSION", t, false, None), Ok("ACK 0.1.0".to_string()));
        assert_eq!(peer.join().unwrap(), "VERSION\n");
    }

    #[test]
    fn exit_status_of_each_nack() {
        // Every reason and protocol NACK has its class; the classes are distinct numbers.
        let codes = [Exit::Ok, Exit::Refused, Exit::Usage, Exit::Aborted, Exit::Retry, Exit::Timeout, Exit::NoMaster];
        let mut n: Vec<u8> = codes.iter().map(|e| *e as u8).collect();
        n.dedup();
        assert_eq!(n, vec![0, 1, 2, 3, 4, 5, 6]);
        for r in Reason::ALL {
            let want = match r {
                Reason::Aborted | Reason::AbortedRestart => Exit::Aborted,
                Reason::InFlight | Reason::NotReady | Reason::Starting | Reason::UpgradeNotPossible => Exit::Retry,
                Reason::Stopping => Exit::NoMaster,
                _ => Exit::Refused,
            };
            assert_eq!(nack_exit(r.wire()), want, "{}", r);
        }
        assert_eq!(nack_exit("aborted: new worker exited: new worker 12 exited (exit status 1)"), Exit::Aborted);
        assert_eq!(nack_exit("probe failed: ERROR=database unreachable"), Exit::Refused);
        assert_eq!(nack_exit("too many clients"), Exit::Retry);
        assert_eq!(nack_exit("unknown"), Exit::Refused);
        assert_eq!(nack_exit("invalid"), Exit::Refused);
    }

    #[test]
    fn strips_os_error_suffix() {
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(os_text(&e), "No such file or directory");
    }
}

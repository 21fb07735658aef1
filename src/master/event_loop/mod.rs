//! The master's poll loop: turns fds into events and actions into syscalls.
//!
//! Owns the fds of the master's children (keyed by the state machine's
//! worker ids), the probe in flight, the control server and the signal pipe
//! while the master runs, and the start-up sequence ([`run`]). It decides
//! nothing: every decision is in [`super::state::Master`], and what the loop
//! learns (a child's exit, a report, an upgrade that failed) goes back to it
//! as an event. One thread; the only blocking call is poll(2) with the
//! earliest deadline as its timeout, so an idle master does not wake up.
//! The pieces it drives live beside it: [`super::child`] (a child's fds),
//! [`super::probe`], [`super::spawn_spec`], [`super::listeners`],
//! [`super::pidfile`] and [`crate::signals`]. Its jobs have files of their
//! own: the children (`children.rs`: spawn, signal, read, reap), the
//! signals and the control socket (`commands.rs`), the upgrade of the master
//! (`reexec.rs`) and the workers' sd_notify socket (`workers_socket.rs`).

mod children;
mod commands;
mod reexec;
mod watch;
mod workers_socket;

pub use reexec::resume;
use reexec::UpgradeRun;

use super::admission;
use super::child::Child;
use super::listeners::bind_listeners;
use super::notify_socket::NotifySocket;
use super::pidfile::Pidfile;
use super::probe::{probe_blocking, ProbeOutcome, ProbeRun};
use super::state::{Action, Announce, ClientId, Event, Master, ProbeFailure, ProbeInfo, WorkerId};
use super::upgrade;
use crate::config::Config;
use crate::control::{self, ControlServer};
use crate::restart::Reason;
use crate::sdnotify::{self, Notifier};
use crate::signals::SignalPipe;
use crate::sys;
use super::metrics_file::MetricsFile;
use crate::metrics::Counters;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The signals the master handles, from its first instant
/// ([`install_signals`]).
pub const SIGNALS: [i32; 5] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR2, libc::SIGHUP, libc::SIGCHLD];

/// Install the master's signal handlers: the first thing `zdrestart` does
/// (before the config, the listeners and the probe), so that no signal the
/// master uses can kill it with the default action while it starts.
pub fn install_signals() -> Result<SignalPipe, String> {
    let pipe = SignalPipe::install(&SIGNALS).map_err(|e| format!("install signal handlers: {}", sys::strerror(&e)))?;
    // After an upgrade the old image blocked them across the exec (they
    // wait, pending): the handlers are in place, let them in.
    sys::mask_signals(&SIGNALS, false).map_err(|e| format!("unblock signals: {}", sys::strerror(&e)))?;
    Ok(pipe)
}

/// Options from the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Use SIGCHLD only, as on kernels without pidfd_open (tests, old kernels).
    pub no_pidfd: bool,
}

/// A poll slot: what an entry of the pollfd array stands for.
enum Slot {
    Signals,
    Pidfd(WorkerId),
    Pipe(WorkerId),
    ProbePidfd,
    ProbePipe,
    Control(RawFd),
    /// The workers' `$NOTIFY_SOCKET`.
    WorkersSocket,
    /// The pidfd of a worker's main process (`MAINPID=`).
    MainPidfd(WorkerId),
    /// The new binary's check of an upgrade: its pidfd, its output.
    CheckPidfd,
    CheckPipe,
}

/// The pollfd array of one round and what each entry stands for (reused
/// across rounds: no allocation once warm).
#[derive(Default)]
struct PollSet {
    fds: Vec<libc::pollfd>,
    slots: Vec<Slot>,
    /// Scratch for the control server's fds.
    control: Vec<(RawFd, i16)>,
}

impl PollSet {
    fn clear(&mut self) {
        self.fds.clear();
        self.slots.clear();
        self.control.clear();
    }

    fn add(&mut self, fd: RawFd, events: i16, slot: Slot) {
        self.fds.push(libc::pollfd { fd, events, revents: 0 });
        self.slots.push(slot);
    }
}

struct Loop {
    opts: Options,
    sm: Master,
    listeners: Vec<TcpListener>,
    /// The fds of each worker, by the state machine's id.
    children: BTreeMap<WorkerId, Child>,
    probe: Option<ProbeRun>,
    control: Option<ControlServer>,
    signals: SignalPipe,
    queue: VecDeque<Event>,
    exit: Option<i32>,
    started_wall: SystemTime,
    /// LOGLEVEL override from the control socket, passed to new workers.
    loglevel: Option<String>,
    /// The pidfile locked and written at start, held until exit (a changed
    /// `pidfile` applies only after a normal restart).
    pidfile: Option<Pidfile>,
    /// `serverUser` at start: like the pidfile, it changes only with a normal restart.
    server_user: Option<String>,
    /// The log level in force from the config (not a LOGLEVEL override).
    config_level: log::LevelFilter,
    /// sd_notify(3) sender, when `$NOTIFY_SOCKET` is set.
    service_manager: Option<Notifier>,
    /// sd_notify(3) for workers, bound when the first worker that uses it
    /// is spawned.
    workers_socket: Option<NotifySocket>,
    /// The executable the master was started from, resolved at start: what
    /// an upgrade runs (`master::upgrade`).
    exe: Result<PathBuf, String>,
    /// An `UPGRADE` the state machine let through: its check runs beside
    /// the loop; it is carried out once the queue is empty (unless it is
    /// cancelled meanwhile).
    upgrade: Option<UpgradeRun>,
    /// Control clients owed the answer to a `... WAIT PROGRESS`: each fact
    /// goes to them as a `PROGRESS` line until their answer is sent.
    streams: BTreeSet<ClientId>,
    /// Restarts, upgrades, exits and respawns counted (metrics).
    counters: Counters,
    /// `metricsFile` (from the config the master started with), and
    /// whether a fact came since it was last brought up to date.
    metrics_file: Option<MetricsFile>,
    metrics_due: bool,
}

/// What a loop starts from: a fresh start ([`run`]) or the hand-over of an
/// upgrade ([`resume`]).
struct Parts {
    opts: Options,
    sm: Master,
    listeners: Vec<TcpListener>,
    children: BTreeMap<WorkerId, Child>,
    control: Option<ControlServer>,
    signals: SignalPipe,
    started_wall: SystemTime,
    loglevel: Option<String>,
    pidfile: Option<Pidfile>,
    exe: Result<PathBuf, String>,
    /// The workers' sd_notify socket of an older image.
    workers_socket: Option<NotifySocket>,
    /// The counters of an older image.
    counters: Counters,
}

impl Loop {
    fn new(p: Parts) -> Loop {
        let service_manager = Notifier::from_env().unwrap_or_else(|e| {
            log::warn!("{}; not notifying the service manager", e);
            None
        });
        let cfg = p.sm.config().clone();
        Loop {
            opts: p.opts,
            sm: p.sm,
            listeners: p.listeners,
            children: p.children,
            probe: None,
            control: p.control,
            signals: p.signals,
            queue: VecDeque::new(),
            exit: None,
            started_wall: p.started_wall,
            loglevel: p.loglevel,
            pidfile: p.pidfile,
            server_user: cfg.server_user.clone(),
            config_level: cfg.log_level,
            service_manager,
            workers_socket: p.workers_socket,
            exe: p.exe,
            upgrade: None,
            streams: BTreeSet::new(),
            counters: p.counters,
            metrics_file: cfg.metrics_file.as_deref().map(MetricsFile::new),
            // Written once at start, then on facts.
            metrics_due: true,
        }
    }
}

/// Run the master until it stops. `signals` were installed first thing
/// ([`install_signals`]). Start-up errors come back as `Err` with a message
/// naming the object and operation; the caller logs and exits 1.
pub fn run(cfg: Config, opts: Options, signals: SignalPipe) -> Result<i32, String> {
    let started_wall = SystemTime::now();
    // Descendants orphaned below the master (a worker's helpers) come back
    // to it, to be reaped and ended (zdrestart-worker(7)).
    if let Err(e) = sys::set_child_subreaper() {
        log::warn!("prctl PR_SET_CHILD_SUBREAPER: {}; orphans of workers go to init", sys::strerror(&e));
    }
    // First of the master's resources: a second master must be refused
    // before it binds or probes anything.
    let mut pidfile = match &cfg.pidfile {
        Some(p) => Some(Pidfile::acquire(p)?),
        None => None,
    };
    let started = match prepare(&cfg, &signals) {
        Ok(Some(r)) => r,
        other => {
            if let Some(p) = pidfile.take() {
                p.remove();
            }
            return other.map(|_| 0);
        }
    };
    let (listeners, info, control) = started;
    let exe = upgrade::resolve_exe();
    match &exe {
        Ok(p) => log::info!(exe = p.display().to_string(); "executable: {} (what an upgrade runs)", p.display()),
        Err(e) => log::warn!("{}; upgrades are not possible", e),
    }
    log::info!(event = "master.start", workers = cfg.workers, listen = cfg.listen_display(), magic = info.magic,
        version = info.version.as_str(), driver = cfg.driver.as_str();
        "zdrestart {} master started on {} with {} workers", crate::VERSION, cfg.listen_display(), cfg.workers);
    let sm = Master::new(Arc::new(cfg), info);
    let parts =
        Parts { opts, sm, listeners, children: BTreeMap::new(), control, signals, started_wall, loglevel: None, pidfile, exe, workers_socket: None, counters: Counters::default() };
    let mut lp = Loop::new(parts);
    lp.queue.push_back(Event::Start);
    let code = lp.run();
    lp.shutdown();
    Ok(code)
}

/// Bind, probe, open the control socket: what must succeed before the first
/// worker is spawned. `Ok(None)`: SIGTERM or SIGINT stopped the start.
#[allow(clippy::type_complexity)]
fn prepare(cfg: &Config, signals: &SignalPipe) -> Result<Option<(Vec<TcpListener>, ProbeInfo, Option<ControlServer>)>, String> {
    // Signals that came before the logger existed are handled now.
    if starting_signals(signals) {
        return Ok(None);
    }
    let listeners = bind_listeners(cfg)?;
    for l in &listeners {
        if let Ok(a) = l.local_addr() {
            log::info!(address = a.to_string(); "listening on {}", a);
        }
    }
    let info = match admission::declared(cfg) {
        Some(info) => {
            log::info!(component = "probe", magic = info.magic, version = info.version.as_str();
                "probe off: the config declares magic number {} (version {})", info.magic, info.version);
            info
        }
        None => {
            let mut on_signal = || starting_signals(signals);
            let Some(outcome) = probe_blocking(cfg, Some((signals.as_raw_fd(), &mut on_signal))) else {
                return Ok(None);
            };
            start_verdict(cfg, &outcome)?
        }
    };
    if starting_signals(signals) {
        return Ok(None);
    }
    let control = match &cfg.control_socket {
        None => None,
        // ControlServer errors already name the socket path.
        Some(p) => Some(ControlServer::bind(p).map_err(|e| e.to_string())?),
    };
    Ok(Some((listeners, info, control)))
}

/// The probe at start: a magic number is enough (an `ERROR=` with it, for
/// the built-in worker a database down, is only a warning).
fn start_verdict(cfg: &Config, outcome: &ProbeOutcome) -> Result<ProbeInfo, String> {
    let info = match (&outcome.magic, &outcome.spawn_error) {
        (_, Some(e)) => return Err(format!("probe of the worker program failed: {}", e)),
        (Some(m), None) => ProbeInfo { magic: *m, version: outcome.version.clone().unwrap_or_default(), shared: outcome.shared },
        (None, None) => {
            let why = outcome.for_restart(cfg.probe_timeout).err().map(|f| f.error).unwrap_or_default();
            let hint = super::preflight::sd_notify_probe(cfg).map(|h| format!(" ({})", h)).unwrap_or_default();
            return Err(format!("probe of the worker program failed: {}{}", why, hint));
        }
    };
    if let Some(e) = &outcome.error {
        // A database down at start is not fatal: workers answer 503 until it is back.
        log::warn!(component = "probe", error = e.as_str(); "the probe reported a problem: {} (starting anyway)", e);
    }
    log::info!(component = "probe", magic = info.magic, version = info.version.as_str();
        "worker program reports magic number {} (version {})", info.magic, info.version);
    if info.shared != Some(true) {
        // Not fatal: the service runs; only its zero-downtime restarts are refused.
        log::warn!(component = "probe";
            "the workers' state is not shared (probe: {}): zero-downtime restarts will be refused (bad driver)",
            match info.shared { Some(false) => "SHARED=0", _ => "no SHARED= line" });
    }
    Ok(info)
}

/// The signals of the start-up window, before the loop runs: SIGUSR2 is
/// refused as `starting`, SIGHUP reopens the log, SIGTERM and SIGINT stop
/// (true: stop now). SIGCHLD is left to whoever waits for the child.
fn starting_signals(signals: &SignalPipe) -> bool {
    signals.drain();
    if signals.take(libc::SIGHUP) {
        reopen_log();
    }
    if signals.take(libc::SIGUSR2) {
        let reason = Reason::Starting;
        log::warn!(event = "restart.refused", reason = reason.wire(), detail = "the master is starting";
            "zero-downtime restart refused: {}: the master is starting (SIGUSR2 before it started its first generation)", reason);
    }
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        if signals.take(sig) {
            log::info!(event = "master.stop", signal = name;
                "{} received while starting: stopping before any worker was started", name);
            return true;
        }
    }
    false
}

/// SIGHUP: reopen the log file (logrotate).
fn reopen_log() {
    match crate::log::reopen() {
        Ok(Some(p)) => log::info!(event = "log.reopen", path = p.display().to_string(); "log file reopened"),
        Ok(None) => log::info!(event = "log.reopen"; "SIGHUP: no log file to reopen"),
        Err(e) => log::error!(event = "log.reopen"; "{}", e),
    }
}

impl Loop {
    fn run(&mut self) -> i32 {
        let mut set = PollSet::default();
        loop {
            self.process_queue();
            self.update_metrics_file();
            if let Some(code) = self.exit {
                return code;
            }
            // Start the check or exec (it returns only if it failed, with
            // `UpgradeFailed` queued).
            self.advance_upgrade();
            if !self.queue.is_empty() {
                continue;
            }
            self.fill(&mut set);
            let deadline = [
                self.sm.next_deadline(),
                self.probe.as_ref().map(|p| p.deadline),
                self.control.as_ref().and_then(|c| c.next_deadline()),
                self.upgrade.as_ref().and_then(|u| u.check()).map(|c| c.deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = sys::poll(&mut set.fds, timeout) {
                log::error!("poll: {}", e);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let now = Instant::now();
            for (pfd, slot) in set.fds.iter().zip(&set.slots) {
                if pfd.revents != 0 {
                    self.on_ready(slot, pfd.revents, now);
                }
            }
            if let Some(p) = &self.probe {
                if p.deadline <= now || p.child.pidfd.is_none() {
                    self.check_probe(now);
                }
            }
            if let Some(c) = self.upgrade.as_ref().and_then(|u| u.check()) {
                if c.deadline <= now || c.poll_fds().0.is_none() {
                    self.on_check(now);
                }
            }
            if let Some(c) = &mut self.control {
                c.expire(now);
            }
            if self.sm.next_deadline().is_some_and(|d| d <= now) {
                self.queue.push_back(Event::Tick);
            }
        }
    }

    /// The fds to poll this round: signals, children, probe, control socket.
    fn fill(&self, set: &mut PollSet) {
        set.clear();
        // The workers' sd_notify socket first: a worker's datagrams
        // (`MAINPID=` above all) sent before its process exited are handled
        // before that exit is, whether a pidfd or SIGCHLD tells it.
        if let Some(n) = &self.workers_socket {
            set.add(n.fd(), libc::POLLIN, Slot::WorkersSocket);
        }
        set.add(self.signals.as_raw_fd(), libc::POLLIN, Slot::Signals);
        // Before the children's pidfds: what a worker sent just before it
        // exited (MAINPID=, READY=1) is read before its exit is handled, as
        // systemd reads its notify socket before SIGCHLD.
        if let Some(n) = &self.workers_socket {
            set.add(n.fd(), libc::POLLIN, Slot::WorkersSocket);
        }
        for (&id, c) in &self.children {
            let (pidfd, pipes) = c.poll_fds();
            if let Some(fd) = pidfd {
                set.add(fd, libc::POLLIN, Slot::Pidfd(id));
            }
            for fd in pipes.into_iter().flatten() {
                set.add(fd, libc::POLLIN, Slot::Pipe(id));
            }
            if let Some(fd) = c.main_pidfd() {
                set.add(fd, libc::POLLIN, Slot::MainPidfd(id));
            }
        }
        if let Some(p) = &self.probe {
            let (pidfd, pipes) = p.child.poll_fds();
            if let Some(fd) = pidfd {
                set.add(fd, libc::POLLIN, Slot::ProbePidfd);
            }
            for fd in pipes.into_iter().flatten() {
                set.add(fd, libc::POLLIN, Slot::ProbePipe);
            }
        }
        if let Some(c) = self.upgrade.as_ref().and_then(|u| u.check()) {
            let (pidfd, pipes) = c.poll_fds();
            if let Some(fd) = pidfd {
                set.add(fd, libc::POLLIN, Slot::CheckPidfd);
            }
            for fd in pipes.into_iter().flatten() {
                set.add(fd, libc::POLLIN, Slot::CheckPipe);
            }
        }
        if let Some(c) = &self.control {
            c.poll_fds(&mut set.control);
            for &(fd, ev) in &set.control {
                set.fds.push(libc::pollfd { fd, events: ev, revents: 0 });
                set.slots.push(Slot::Control(fd));
            }
        }
    }

    /// One fd of the poll set is ready.
    fn on_ready(&mut self, slot: &Slot, revents: i16, now: Instant) {
        match *slot {
            Slot::Signals => self.on_signals(),
            Slot::Pidfd(id) => self.check_child(id),
            Slot::Pipe(id) => self.read_child(id, false),
            Slot::ProbePidfd => self.check_probe(now),
            Slot::ProbePipe => {
                if let Some(p) = &mut self.probe {
                    p.absorb(false);
                }
            }
            Slot::Control(fd) => self.on_control(fd, revents, now),
            Slot::WorkersSocket => self.on_workers_socket(now),
            Slot::MainPidfd(id) => self.check_child(id),
            Slot::CheckPidfd => self.on_check(now),
            Slot::CheckPipe => {
                if let Some(c) = self.upgrade.as_mut().and_then(|u| u.check_mut()) {
                    c.absorb();
                }
            }
        }
    }

    fn process_queue(&mut self) {
        while let Some(ev) = self.queue.pop_front() {
            let actions = self.sm.handle(ev, Instant::now(), SystemTime::now());
            for a in actions {
                self.execute(a);
            }
        }
        // A completed restart may bring another logLevel: the master follows
        // it unless an operator set one with LOGLEVEL.
        let level = self.sm.config().log_level;
        if level != self.config_level {
            self.config_level = level;
            if self.loglevel.is_none() {
                crate::log::set_level(level);
            }
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Spawn { id, generation, index, config } => self.spawn_worker(id, generation, index, &config),
            Action::Signal { id, signal } => self.signal_worker(id, signal),
            Action::Probe { config } => {
                match ProbeRun::start(&config, self.opts.no_pidfd, self.loglevel.as_deref(), self.server_user.as_deref()) {
                    Ok(p) => self.probe = Some(p),
                    Err(error) => self.queue.push_back(Event::ProbeDone(Err(ProbeFailure { magic: None, error }))),
                }
            }
            Action::CancelProbe => {
                if let Some(mut p) = self.probe.take() {
                    p.kill();
                }
            }
            Action::Reply { client, answer } => {
                self.reply(client, &control::render(&answer));
                self.streams.remove(&client);
            }
            Action::Announce(a) => self.announce(a),
            Action::Exit(code) => self.exit = Some(code),
            Action::Upgrade { client, wait, restart } => self.upgrade = Some(UpgradeRun::new(client, wait, restart)),
            Action::CancelUpgrade => {
                if let Some(up) = self.upgrade.take() {
                    up.cancel();
                }
            }
            // Logged by the state machine: counted, streamed.
            Action::Progress(fact) => self.on_fact(&fact),
        }
    }

    /// One sd_notify(3) datagram to the service manager; a failure is
    /// logged, never fatal.
    fn announce(&self, a: Announce) {
        let Some(manager) = &self.service_manager else { return };
        let text = match a {
            Announce::Ready(status) => sdnotify::message("READY=1", &status),
            Announce::Reloading(status) => {
                let head = format!("RELOADING=1\nMONOTONIC_USEC={}", sys::monotonic_usec());
                sdnotify::message(&head, &status)
            }
            Announce::Stopping(status) => sdnotify::message("STOPPING=1", &status),
        };
        match manager.send(&text) {
            Ok(()) => log::debug!(sd_notify = text.as_str(); "told the service manager: {}", text.replace('\n', " ")),
            Err(e) => log::warn!("{}", e),
        }
    }


    fn shutdown(&mut self) {
        if let Some(mut p) = self.probe.take() {
            p.kill();
        }
        if let Some(up) = self.upgrade.take() {
            up.cancel();
        }
        // Workers still running when the master exits (fatal paths) get
        // PDEATHSIG; say so rather than leave it implicit.
        for c in self.children.values() {
            let _ = sys::kill_group(c.pid, libc::SIGTERM);
        }
        // Nothing the workers left behind outlives the master.
        self.reap_adopted();
        if let Some(c) = self.control.take() {
            c.close();
        }
        if let Some(p) = self.pidfile.take() {
            p.remove();
        }
        if let Some(n) = self.workers_socket.take() {
            n.remove();
        }
        self.update_metrics_file();
        if let Some(m) = self.metrics_file.take() {
            m.close();
        }
        log::logger().flush();
    }
}

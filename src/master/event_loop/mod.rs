//! The master's poll loop: turns fds into events and actions into syscalls.
//!
//! Owns the children table, the probe in flight, the control server and the
//! signal pipe while the master runs, and the start-up sequence ([`run`]).
//! It decides nothing: every decision is in [`super::state::Master`]. One
//! thread; the only blocking call is poll(2) with the earliest deadline as
//! its timeout, so an idle master does not wake up. The pieces it drives
//! live beside it: [`super::child`] (a child's fds), [`super::probe`],
//! [`super::spawn_spec`], [`super::listeners`], [`super::pidfile`] and
//! [`crate::signals`]; two jobs of the loop have files of their own: the
//! upgrade of the master ([`reexec`]) and the workers' sd_notify socket
//! ([`workers_notify`]).

mod reexec;
mod workers_notify;

pub use reexec::resume;

use super::admission;
use super::child::{Child, MainProcess};
use super::listeners::bind_listeners;
use super::notify_socket::{Delivery, Message, NotifySocket};
use super::orphans;
use super::pidfile::Pidfile;
use super::probe::{probe_blocking, ProbeOutcome, ProbeRun};
use super::spawn_spec::build_spec;
use super::handover::{self, Handover, UpgradeRequest};
use super::upgrade;
use super::state::{Action, ClientId, Event, Master, Notify, ProbeFailure, ProbeInfo, Requester, WorkerId};
use crate::config::Config;
use crate::control::{self, Command, ControlServer};
use crate::protocol::Report;
use crate::restart::Reason;
use crate::sdnotify::{self, Notifier};
use crate::signals::SignalPipe;
use crate::sys::{self, ExitStatus};
use std::collections::{BTreeMap, VecDeque};
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
    Notify,
    /// The pidfd of a worker's main process (`MAINPID=`).
    MainPidfd(WorkerId),
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
    notifier: Option<Notifier>,
    /// sd_notify(3) for workers, bound when the first worker that uses it
    /// is spawned.
    notify: Option<NotifySocket>,
    /// The executable the master was started from, resolved at start: what
    /// an upgrade runs (`master::upgrade`).
    exe: Result<PathBuf, String>,
    /// An `UPGRADE` the state machine let through, carried out once the
    /// queue is empty.
    upgrade: Option<(ClientId, bool, bool)>,
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
    let notifier = match Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            log::warn!("{}; not notifying the service manager", e);
            None
        }
    };
    let cfg = Arc::new(cfg);
    let exe = upgrade::resolve_exe();
    match &exe {
        Ok(p) => log::info!(exe = p.display().to_string(); "executable: {} (what an upgrade runs)", p.display()),
        Err(e) => log::warn!("{}; upgrades are not possible", e),
    }
    log::info!(event = "master.start", workers = cfg.workers, listen = cfg.listen_display(), magic = info.magic,
        version = info.version.as_str(), driver = cfg.driver.as_str();
        "zdrestart {} master started on {} with {} workers", crate::VERSION, cfg.listen_display(), cfg.workers);
    let mut lp = Loop {
        opts,
        sm: Master::new(cfg.clone(), info),
        listeners,
        children: BTreeMap::new(),
        probe: None,
        control,
        signals,
        queue: VecDeque::from([Event::Start]),
        exit: None,
        started_wall,
        loglevel: None,
        pidfile,
        server_user: cfg.server_user.clone(),
        config_level: cfg.log_level,
        notifier,
        notify: None,
        exe,
        upgrade: None,
    };
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
            return Err(format!("probe of the worker program failed: {}", why));
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
            if let Some(code) = self.exit {
                return code;
            }
            if let Some((client, wait, restart)) = self.upgrade.take() {
                // Returns only if the upgrade was refused or failed.
                self.do_upgrade(client, wait, restart);
                continue;
            }
            self.fill(&mut set);
            let deadline = [
                self.sm.next_deadline(),
                self.probe.as_ref().map(|p| p.deadline),
                self.control.as_ref().and_then(|c| c.next_deadline()),
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
        set.add(self.signals.as_raw_fd(), libc::POLLIN, Slot::Signals);
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
        if let Some(n) = &self.notify {
            set.add(n.fd(), libc::POLLIN, Slot::Notify);
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
            Slot::Notify => self.on_notify(now),
            Slot::MainPidfd(id) => self.check_child(id),
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
            Action::Spawn { id, generation, index, config } => {
                let fds: Vec<RawFd> = self.listeners.iter().map(|l| l.as_raw_fd()).collect();
                let socket = match config.notify.socket() {
                    false => None,
                    true => match self.notify_socket() {
                        Ok(name) => Some(name),
                        Err(error) => return self.queue.push_back(Event::SpawnFailed { id, error }),
                    },
                };
                let user = self.server_user.as_deref();
                let level = self.loglevel.as_deref();
                let spec = match build_spec(&config, generation, index, &fds, false, level, user, socket.as_deref()) {
                    Ok(s) => s,
                    Err(error) => return self.queue.push_back(Event::SpawnFailed { id, error }),
                };
                match sys::spawn(&spec) {
                    Ok(sp) => {
                        let pidfd = if self.opts.no_pidfd {
                            None
                        } else {
                            match sys::pidfd_open(sp.pid) {
                                Ok(f) => Some(f),
                                Err(e) => {
                                    if e.raw_os_error() != Some(libc::ENOSYS) {
                                        log::warn!("pidfd_open {}: {}; relying on SIGCHLD", sp.pid, sys::strerror(&e));
                                    }
                                    None
                                }
                            }
                        };
                        let pid = sp.pid;
                        let mut child = Child::new(sp, pidfd);
                        child.reports = config.notify;
                        self.children.insert(id, child);
                        self.queue.push_back(Event::Spawned { id, pid });
                        // A child that died before we had its pidfd is found here.
                        self.check_child(id);
                    }
                    Err(e) => self.queue.push_back(Event::SpawnFailed {
                        id,
                        error: format!("spawn {}: {}", spec.path.to_string_lossy(), e),
                    }),
                }
            }
            Action::Signal { id, pid, signal } => {
                // Only a child we have not reaped: its pid (and so its
                // process group's id) cannot have been reused. The whole
                // group: whatever the worker started gets it too, its main
                // process (`MAINPID=`, one of the group) included, also once
                // the spawned process is gone (the group's id stays reserved
                // while it has members).
                if self.children.get(&id).is_some_and(|c| c.pid == pid) {
                    let reaped = self.children.get(&id).is_some_and(|c| c.spawned_status.is_some());
                    let sent = sys::kill_group(pid, signal).or_else(|e| if reaped { Err(e) } else { sys::kill(pid, signal) });
                    if let Err(e) = sent {
                        log::warn!(worker_pid = pid; "kill {} {}: {}", sys::signal_name(signal), pid, sys::strerror(&e));
                    }
                }
            }
            Action::Probe { config } => match ProbeRun::start(
                &config,
                self.opts.no_pidfd,
                self.loglevel.as_deref(),
                self.server_user.as_deref(),
            ) {
                Ok(p) => self.probe = Some(p),
                Err(error) => self.queue.push_back(Event::ProbeDone(Err(ProbeFailure { magic: None, error }))),
            },
            Action::CancelProbe => {
                if let Some(mut p) = self.probe.take() {
                    p.kill();
                }
            }
            Action::Reply { client, answer } => self.reply(client, &control::render(&answer)),
            Action::Notify(n) => self.notify(n),
            Action::Exit(code) => self.exit = Some(code),
            Action::Upgrade { client, wait, restart } => self.upgrade = Some((client, wait, restart)),
            Action::ReplyLine { client, line } => self.reply(client, &line),
        }
    }

    /// One sd_notify(3) datagram; a failure is logged, never fatal.
    fn notify(&self, n: Notify) {
        let Some(notifier) = &self.notifier else { return };
        let text = match n {
            Notify::Ready(status) => sdnotify::message("READY=1", &status),
            Notify::Reloading(status) => {
                let head = format!("RELOADING=1\nMONOTONIC_USEC={}", sys::monotonic_usec());
                sdnotify::message(&head, &status)
            }
            Notify::Stopping(status) => sdnotify::message("STOPPING=1", &status),
        };
        match notifier.send(&text) {
            Ok(()) => log::debug!(sd_notify = text.as_str(); "told the service manager: {}", text.replace('\n', " ")),
            Err(e) => log::warn!("{}", e),
        }
    }

    fn reply(&mut self, client: ClientId, line: &str) {
        if let Some(c) = &mut self.control {
            c.set_waiting(client, false);
            c.reply(client, line);
        }
    }

    fn on_signals(&mut self) {
        self.signals.drain();
        if self.signals.take(libc::SIGCHLD) {
            let ids: Vec<WorkerId> = self.children.keys().copied().collect();
            for id in ids {
                self.check_child(id);
            }
            self.check_probe(Instant::now());
            self.reap_adopted();
        }
        if self.signals.take(libc::SIGHUP) {
            reopen_log();
        }
        if self.signals.take(libc::SIGTERM) {
            self.queue.push_back(Event::Stop { signal: "SIGTERM" });
        }
        if self.signals.take(libc::SIGINT) {
            self.queue.push_back(Event::Stop { signal: "SIGINT" });
        }
        if self.signals.take(libc::SIGUSR2) {
            let config = self.reload_config();
            self.queue.push_back(Event::Restart { config, by: Requester::Signal });
        }
    }

    fn reload_config(&self) -> Result<Config, String> {
        Config::load(&self.sm.config().path).map_err(|e| e.to_string())
    }

    /// Read a child's pipes once; lines become events.
    fn read_child(&mut self, id: WorkerId, drain: bool) {
        let Some(c) = self.children.get_mut(&id) else { return };
        let pid = c.pid;
        let lines = c.read(drain);
        for l in lines.output {
            crate::log::worker_line("worker", pid, &l);
            self.queue.push_back(Event::Output { id, line: l });
        }
        if !c.reports.pipe() && !lines.reports.is_empty() {
            // `"notify": "systemd"`: the pipe is not offered; nothing on it counts.
            log::debug!(component = "worker", worker_pid = pid; "report pipe ignored (notify is systemd): {:?}", lines.reports);
            return;
        }
        for r in lines.reports {
            match Report::parse(&r) {
                Report::Ready => self.queue.push_back(Event::Ready { id }),
                Report::Error(text) => self.queue.push_back(Event::ReportedError { id, text }),
                Report::Status(text) => self.queue.push_back(Event::Status { id, text }),
                other => log::info!(component = "worker", worker_pid = pid; "unknown report ignored: {:?}", other),
            }
        }
    }

    /// The pids whose process groups are the service's: the workers and the probe.
    fn leaders(&self) -> Vec<u32> {
        self.children.values().map(|c| c.pid).chain(self.probe.as_ref().map(|p| p.child.pid)).collect()
    }

    /// The workers' main processes (`MAINPID=`): adopted once the spawned
    /// process is gone, reaped by [`Self::check_child`] for their status.
    fn mains(&self) -> Vec<u32> {
        self.children.values().filter_map(|c| c.main.as_ref().map(|m| m.pid)).collect()
    }

    /// Reap adopted children that exited, and end the ones a worker left
    /// behind (zdrestart-worker(7)); our own exited children are handed to
    /// [`Self::check_child`] / [`Self::check_probe`].
    fn reap_adopted(&mut self) {
        for _ in 0..64 {
            let leaders = self.leaders();
            let mains = self.mains();
            let known = orphans::reap_adopted(|pid| leaders.contains(&pid) || mains.contains(&pid));
            if known.is_empty() {
                break;
            }
            for pid in known {
                let ours = |c: &Child| c.pid == pid || c.main.as_ref().is_some_and(|m| m.pid == pid);
                let id = self.children.iter().find(|(_, c)| ours(c)).map(|(&id, _)| id);
                match id {
                    Some(id) => self.check_child(id),
                    None => self.check_probe(Instant::now()),
                }
            }
        }
        orphans::end_strays(&self.leaders());
    }

    /// Reap a child if it has exited, after reading what it left in its
    /// pipes; then end what is left of its process group. A worker whose
    /// main process (`MAINPID=`) is another one lives as long as that one.
    fn check_child(&mut self, id: WorkerId) {
        let Some(c) = self.children.get_mut(&id) else { return };
        if c.spawned_status.is_none() {
            let st = match sys::try_wait(c.pid) {
                Ok(st) => st,
                Err(e) => {
                    // ECHILD: someone else reaped it; treat as gone.
                    log::error!("waitpid {}: {}", c.pid, sys::strerror(&e));
                    Some(ExitStatus::Code(-1))
                }
            };
            if st.is_some() {
                c.spawned_status = st;
                c.pidfd = None;
                if let Some(m) = &c.main {
                    log::debug!(worker_pid = c.pid, main_pid = m.pid;
                        "spawned process {} exited; its main process {} goes on", c.pid, m.pid);
                }
            }
        }
        let status = match &c.main {
            None => c.spawned_status,
            Some(m) if Child::pidfd_exited(&m.pidfd) => {
                // Adopted once its parent exited (the master is a child
                // subreaper): its status is ours; else its parent's, unknown.
                Some(sys::try_wait(m.pid).ok().flatten().unwrap_or(ExitStatus::Code(-1)))
            }
            Some(_) => None,
        };
        let Some(status) = status else { return };
        let pid = c.pid;
        self.read_child(id, true);
        self.children.remove(&id);
        // What is left of its group goes: a spawned process that outlived
        // its main one included (reaped then as any child nobody knows).
        orphans::end_group(pid);
        self.queue.push_back(Event::Exited { id, status });
    }

    fn check_probe(&mut self, now: Instant) {
        let Some(p) = &mut self.probe else { return };
        if let Some(verdict) = p.poll_done(now) {
            self.probe = None;
            self.queue.push_back(Event::ProbeDone(verdict));
        }
    }

    fn on_control(&mut self, fd: RawFd, revents: i16, now: Instant) {
        let Some(c) = &mut self.control else { return };
        let cmds = c.on_ready(fd, revents, now);
        for (client, cmd) in cmds {
            self.on_command(client, cmd);
        }
    }

    fn on_command(&mut self, client: ClientId, cmd: Command) {
        let answer = match cmd {
            Command::Cmds => control::cmds_answer(),
            Command::Version => control::ack(crate::VERSION),
            Command::Status => {
                let st = self.sm.status(std::process::id(), self.started_wall);
                control::ack(&serde_json::to_string(&st).unwrap_or_default())
            }
            Command::LogLevel(level) => {
                crate::log::set_level(level);
                let name = level.to_string().to_lowercase();
                log::info!(component = "control", level = name.as_str(); "log level set to {}", name);
                self.send_all(&format!("LOGLEVEL={}\n", name));
                self.loglevel = Some(name);
                control::ack("")
            }
            Command::LogLevelRestore => {
                let level = self.sm.config().log_level;
                crate::log::set_level(level);
                self.loglevel = None;
                let name = level.to_string().to_lowercase();
                log::info!(component = "control"; "log level restored to {}", name);
                self.send_all(&format!("LOGLEVEL={}\n", name));
                control::ack("")
            }
            Command::Restart { wait } => {
                if let Some(c) = &mut self.control {
                    c.set_waiting(client, true);
                }
                let config = self.reload_config();
                self.queue.push_back(Event::Restart { config, by: Requester::Control { client, wait } });
                return;
            }
            Command::Upgrade { wait, restart } => {
                if let Some(c) = &mut self.control {
                    c.set_waiting(client, true);
                }
                self.queue.push_back(Event::Upgrade { client, wait, restart });
                return;
            }
            Command::Unknown(_) => control::nack(control::NACK_UNKNOWN),
            Command::Bad { nack, detail } => {
                // The wire text is pump.io's; what was wrong goes to the log.
                log::info!(component = "control", nack = nack; "control command refused: {}", detail);
                control::nack(nack)
            }
        };
        if let Some(c) = &mut self.control {
            c.reply(client, &answer);
        }
    }

    /// A control line to every running worker.
    fn send_all(&self, line: &str) {
        for c in self.children.values() {
            c.send(line);
        }
    }

    fn shutdown(&mut self) {
        if let Some(mut p) = self.probe.take() {
            p.kill();
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
        log::logger().flush();
    }
}

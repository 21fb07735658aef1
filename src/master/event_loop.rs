//! The master's poll loop: turns fds into events and actions into syscalls.
//!
//! Owns the listeners, the signal self-pipe, each child's pidfd and pipes, the
//! probe child, the control socket and the pidfile. It decides nothing: every
//! decision is in [`super::state::Master`]. One thread; the only blocking call
//! is poll(2) with the earliest deadline as its timeout, so an idle master
//! does not wake up.

use super::state::{Action, ClientId, Event, Master, Notify, ProbeFailure, ProbeInfo, Requester, WorkerId};
use crate::config::Config;
use crate::control::{self, Command, ControlServer};
use crate::pidfile::Pidfile;
use crate::sdnotify::{self, Notifier};
use crate::protocol::{self, LineBuffer, Report};
use crate::sys::{self, ExitStatus, SpawnSpec};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How much the loop reads from one pipe per wake-up (bounded work per fd).
const READ_CHUNK: usize = 8192;

/// Options from the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Use SIGCHLD only, as on kernels without pidfd_open (tests, old kernels).
    pub no_pidfd: bool,
}

/// A child's pipes, read line by line.
struct Pipes {
    notify: Option<File>,
    notify_buf: LineBuffer,
    output: Option<File>,
    output_buf: LineBuffer,
}

impl Pipes {
    fn new(notify: OwnedFd, output: OwnedFd) -> Pipes {
        // Non-blocking: a child that writes half a line must not stall us.
        let _ = sys::set_nonblocking(notify.as_fd(), true);
        let _ = sys::set_nonblocking(output.as_fd(), true);
        Pipes {
            notify: Some(File::from(notify)),
            notify_buf: LineBuffer::default(),
            output: Some(File::from(output)),
            output_buf: LineBuffer::default(),
        }
    }
}

/// Read once (or until EAGAIN when `drain`) from `file`; complete lines go to
/// `lines`. Returns false at EOF or on error (the caller drops the fd).
fn read_lines(file: &mut File, buf: &mut LineBuffer, drain: bool, lines: &mut Vec<String>) -> bool {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => {
                lines.extend(buf.finish());
                return false;
            }
            Ok(n) => {
                lines.extend(buf.push(&chunk[..n], protocol::MAX_REPORT_LINE));
                if !drain {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

struct Child {
    pid: u32,
    pidfd: Option<OwnedFd>,
    pipes: Pipes,
    /// Write end of the worker's control pipe (non-blocking).
    control: File,
}

impl Child {
    fn new(sp: sys::Spawned, pidfd: Option<OwnedFd>) -> Child {
        // Non-blocking: a worker that does not read its control pipe only
        // misses lines, it never stalls the master.
        let _ = sys::set_nonblocking(sp.control.as_fd(), true);
        Child { pid: sp.pid, pidfd, pipes: Pipes::new(sp.notify, sp.output), control: File::from(sp.control) }
    }

    /// Send one control line; a full or closed pipe drops it.
    fn send(&self, line: &str) {
        use std::io::Write;
        let _ = (&self.control).write(line.as_bytes());
    }
}

/// What a probe of the worker program said.
#[derive(Debug, Clone, Default)]
pub struct ProbeOutcome {
    pub magic: Option<u64>,
    pub version: Option<String>,
    pub error: Option<String>,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    /// Could not run at all (exec failure etc.).
    pub spawn_error: Option<String>,
    pub output: Vec<String>,
}

impl ProbeOutcome {
    /// The verdict for a restart: every problem is a failure.
    pub fn for_restart(&self, timeout: Duration) -> Result<ProbeInfo, ProbeFailure> {
        let fail = |error: String| Err(ProbeFailure { magic: self.magic, error });
        if let Some(e) = &self.spawn_error {
            return fail(e.clone());
        }
        if self.timed_out {
            return fail(format!("no answer within probeTimeout ({:?})", timeout));
        }
        if let Some(e) = &self.error {
            return fail(format!("ERROR={}", e));
        }
        match self.status {
            Some(st) if !st.success() => return fail(format!("probe exited with {}", st)),
            _ => {}
        }
        match self.magic {
            Some(m) => Ok(ProbeInfo { magic: m, version: self.version.clone().unwrap_or_default() }),
            None => fail("the probe reported no MAGIC=".into()),
        }
    }
}

/// A probe child in flight.
struct ProbeRun {
    child: Child,
    deadline: Instant,
    timeout: Duration,
    outcome: ProbeOutcome,
}

impl ProbeRun {
    fn start(cfg: &Config, no_pidfd: bool, loglevel: Option<&str>, user: Option<&str>) -> Result<ProbeRun, String> {
        let spec = build_spec(cfg, 0, 0, &[], true, loglevel, user)?;
        let sp = sys::spawn(&spec).map_err(|e| format!("cannot run probe {}: {}", spec.path.to_string_lossy(), e))?;
        log::debug!(component = "probe", worker_pid = sp.pid; "probe {} started", sp.pid);
        let pidfd = if no_pidfd { None } else { sys::pidfd_open(sp.pid).ok() };
        Ok(ProbeRun {
            child: Child::new(sp, pidfd),
            deadline: Instant::now() + cfg.probe_timeout,
            timeout: cfg.probe_timeout,
            outcome: ProbeOutcome::default(),
        })
    }

    fn absorb(&mut self, drain: bool) {
        let pid = self.child.pid;
        let p = &mut self.child.pipes;
        let mut lines = Vec::new();
        if let Some(f) = p.notify.as_mut() {
            if !read_lines(f, &mut p.notify_buf, drain, &mut lines) {
                p.notify = None;
            }
        }
        for l in lines.drain(..) {
            match Report::parse(&l) {
                Report::Magic(m) => self.outcome.magic = Some(m),
                Report::Version(v) => self.outcome.version = Some(v),
                Report::Error(e) => self.outcome.error = Some(e),
                Report::BadMagic(v) => self.outcome.error = Some(format!("MAGIC={} is not a number", v)),
                other => log::debug!(component = "probe", worker_pid = pid; "probe report {:?}", other),
            }
        }
        if let Some(f) = p.output.as_mut() {
            if !read_lines(f, &mut p.output_buf, drain, &mut lines) {
                p.output = None;
            }
        }
        for l in lines {
            crate::log::worker_line("probe", pid, &l);
            if self.outcome.output.len() == 10 {
                self.outcome.output.remove(0);
            }
            self.outcome.output.push(l);
        }
    }

    /// Reap if it exited; true when finished.
    fn check_exit(&mut self) -> bool {
        if let Ok(Some(st)) = sys::try_wait(self.child.pid) {
            self.outcome.status = Some(st);
            self.absorb(true);
            return true;
        }
        false
    }

    fn kill(&mut self) {
        let _ = sys::kill(self.child.pid, libc::SIGKILL);
        if let Ok(st) = sys::wait(self.child.pid) {
            self.outcome.status = Some(st);
        }
        self.absorb(true);
    }
}

/// Run the probe to completion (start-up and `--check`), blocking.
pub fn probe_blocking(cfg: &Config) -> ProbeOutcome {
    let mut run = match ProbeRun::start(cfg, false, None, cfg.server_user.as_deref()) {
        Ok(r) => r,
        Err(e) => return ProbeOutcome { spawn_error: Some(e), ..Default::default() },
    };
    loop {
        if run.check_exit() {
            break;
        }
        let now = Instant::now();
        if now >= run.deadline {
            run.outcome.timed_out = true;
            run.kill();
            break;
        }
        let mut fds = Vec::new();
        for fd in [
            run.child.pidfd.as_ref().map(|f| f.as_raw_fd()),
            run.child.pipes.notify.as_ref().map(|f| f.as_raw_fd()),
            run.child.pipes.output.as_ref().map(|f| f.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        }
        // Without a pidfd, poll in short steps for the exit.
        let step = if run.child.pidfd.is_none() { Duration::from_millis(20) } else { run.deadline - now };
        let _ = sys::poll(&mut fds, Some(step.min(run.deadline - now)));
        run.absorb(false);
    }
    run.outcome
}

/// Bind every address `address:port` resolves to. Errors name the address.
pub fn bind_listeners(cfg: &Config) -> Result<Vec<TcpListener>, String> {
    let shown = cfg.listen_display();
    let addrs: Vec<_> = (cfg.address.as_str(), cfg.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {}: {}", shown, sys::strerror(&e)))?
        .collect();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for a in addrs {
        if seen.contains(&a) {
            continue;
        }
        seen.push(a);
        // std sets SO_REUSEADDR and CLOEXEC on listeners.
        let l = TcpListener::bind(a).map_err(|e| format!("bind {}: {}", a, sys::strerror(&e)))?;
        out.push(l);
    }
    if out.is_empty() {
        return Err(format!("resolve {}: no addresses", shown));
    }
    Ok(out)
}

/// The worker argv: `worker` from the config, else the built-in worker next
/// to this executable, else the packaged one.
pub fn worker_argv(cfg: &Config) -> Vec<String> {
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

/// Everything the child needs, built before fork.
fn build_spec(
    cfg: &Config,
    generation: u32,
    index: u32,
    listeners: &[RawFd],
    probe: bool,
    loglevel: Option<&str>,
    server_user: Option<&str>,
) -> Result<SpawnSpec, String> {
    let argv = worker_argv(cfg);
    let path = resolve_program(&argv[0])?;
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        let kb = k.as_bytes();
        // NOTIFY_SOCKET is the master's: a worker must not speak for it to
        // the service manager.
        if kb.starts_with(b"LISTEN_") || kb.starts_with(b"ZDRESTART_") || kb == crate::sdnotify::ENV_NOTIFY_SOCKET.as_bytes() {
            continue;
        }
        let mut e = kb.to_vec();
        e.push(b'=');
        e.extend_from_slice(v.as_bytes());
        env.push(cstring(e, "environment")?);
    }
    let mut set = |k: &str, v: String| -> Result<(), String> {
        env.push(cstring(format!("{}={}", k, v), k)?);
        Ok(())
    };
    if !probe {
        set(protocol::ENV_LISTEN_FDS, listeners.len().to_string())?;
        set(protocol::ENV_LISTEN_FDNAMES, vec!["http"; listeners.len()].join(":"))?;
        set(protocol::ENV_GENERATION, generation.to_string())?;
        set(protocol::ENV_WORKER, index.to_string())?;
    } else {
        set(protocol::ENV_PROBE, "1".into())?;
    }
    set(protocol::ENV_NOTIFY_FD, sys::notify_fd_number(listeners.len()).to_string())?;
    set(protocol::ENV_CONTROL_FD, sys::control_fd_number(listeners.len()).to_string())?;
    set(protocol::ENV_CONFIG, cfg.path.to_string_lossy().into_owned())?;
    if let Some(l) = loglevel {
        set(protocol::ENV_LOGLEVEL, l.to_string())?;
    }
    let user = match server_user {
        None => None,
        Some(name) => match sys::lookup_user(name) {
            Ok(Some(u)) => Some(u),
            Ok(None) => return Err(format!("serverUser \"{}\": no such user", name)),
            Err(e) => return Err(format!("serverUser \"{}\": lookup failed: {}", name, sys::strerror(&e))),
        },
    };
    Ok(SpawnSpec {
        path: cstring(path.as_os_str().as_bytes(), "worker path")?,
        argv: argv.iter().map(|a| cstring(a, "worker argv")).collect::<Result<_, _>>()?,
        env,
        listen_pid: !probe,
        listen_fds: listeners.to_vec(),
        user,
    })
}

/// Signals, as flags set by handlers plus one self-pipe that wakes poll.
struct Signals {
    pipe_r: UnixStream,
    term: Arc<AtomicBool>,
    int: Arc<AtomicBool>,
    usr2: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    chld: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> io::Result<Signals> {
        let (r, w) = UnixStream::pair()?;
        r.set_nonblocking(true)?;
        w.set_nonblocking(true)?;
        let s = Signals {
            pipe_r: r,
            term: Arc::default(),
            int: Arc::default(),
            usr2: Arc::default(),
            hup: Arc::default(),
            chld: Arc::default(),
        };
        for (sig, flag) in [
            (libc::SIGTERM, &s.term),
            (libc::SIGINT, &s.int),
            (libc::SIGUSR2, &s.usr2),
            (libc::SIGHUP, &s.hup),
            (libc::SIGCHLD, &s.chld),
        ] {
            // The flag first, then the wake-up byte: the loop sees both.
            signal_hook::flag::register(sig, flag.clone())?;
            signal_hook::low_level::pipe::register(sig, w.try_clone()?)?;
        }
        Ok(s)
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.pipe_r).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

/// A poll slot: what an entry of the pollfd array stands for.
enum Slot {
    Signals,
    Pidfd(WorkerId),
    Notify(WorkerId),
    Output(WorkerId),
    ProbePidfd,
    ProbeNotify,
    ProbeOutput,
    Control(RawFd),
}

struct Loop {
    opts: Options,
    sm: Master,
    listeners: Vec<TcpListener>,
    children: BTreeMap<WorkerId, Child>,
    probe: Option<ProbeRun>,
    control: Option<ControlServer>,
    signals: Signals,
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
}

/// Run the master until it stops. Start-up errors come back as `Err` with a
/// message naming the object and operation; the caller logs and exits 1.
pub fn run(cfg: Config, opts: Options) -> Result<i32, String> {
    let started_wall = SystemTime::now();
    // First of the master's resources: a second master must be refused
    // before it binds or probes anything.
    let mut pidfile = match &cfg.pidfile {
        Some(p) => Some(Pidfile::acquire(p)?),
        None => None,
    };
    let (listeners, info, control) = match prepare(&cfg) {
        Ok(r) => r,
        Err(e) => {
            if let Some(p) = pidfile.take() {
                p.remove();
            }
            return Err(e);
        }
    };
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            if let Some(p) = pidfile.take() {
                p.remove();
            }
            if let Some(c) = control {
                c.close();
            }
            return Err(format!("install signal handlers: {}", e));
        }
    };
    let notifier = match Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            log::warn!("{}; not notifying the service manager", e);
            None
        }
    };
    let cfg = Arc::new(cfg);
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
    };
    let code = lp.run();
    lp.shutdown();
    Ok(code)
}

/// Bind, probe, open the control socket: what must succeed before the first
/// worker is spawned.
fn prepare(cfg: &Config) -> Result<(Vec<TcpListener>, ProbeInfo, Option<ControlServer>), String> {
    let listeners = bind_listeners(cfg)?;
    for l in &listeners {
        if let Ok(a) = l.local_addr() {
            log::info!(address = a.to_string(); "listening on {}", a);
        }
    }
    let outcome = probe_blocking(cfg);
    let info = match (&outcome.magic, &outcome.spawn_error) {
        (_, Some(e)) => return Err(format!("probe of the worker program failed: {}", e)),
        (Some(m), None) => ProbeInfo { magic: *m, version: outcome.version.clone().unwrap_or_default() },
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
    let control = match &cfg.control_socket {
        None => None,
        // ControlServer errors already name the socket path.
        Some(p) => Some(ControlServer::bind(p).map_err(|e| e.to_string())?),
    };
    Ok((listeners, info, control))
}

impl Loop {
    fn run(&mut self) -> i32 {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        let mut control_fds: Vec<(RawFd, i16)> = Vec::new();
        loop {
            self.process_queue();
            if let Some(code) = self.exit {
                return code;
            }
            fds.clear();
            slots.clear();
            let add = |fds: &mut Vec<libc::pollfd>, slots: &mut Vec<Slot>, fd: RawFd, ev: i16, s: Slot| {
                fds.push(libc::pollfd { fd, events: ev, revents: 0 });
                slots.push(s);
            };
            add(&mut fds, &mut slots, self.signals.pipe_r.as_raw_fd(), libc::POLLIN, Slot::Signals);
            for (&id, c) in &self.children {
                if let Some(p) = &c.pidfd {
                    add(&mut fds, &mut slots, p.as_raw_fd(), libc::POLLIN, Slot::Pidfd(id));
                }
                if let Some(f) = &c.pipes.notify {
                    add(&mut fds, &mut slots, f.as_raw_fd(), libc::POLLIN, Slot::Notify(id));
                }
                if let Some(f) = &c.pipes.output {
                    add(&mut fds, &mut slots, f.as_raw_fd(), libc::POLLIN, Slot::Output(id));
                }
            }
            if let Some(p) = &self.probe {
                if let Some(f) = &p.child.pidfd {
                    add(&mut fds, &mut slots, f.as_raw_fd(), libc::POLLIN, Slot::ProbePidfd);
                }
                if let Some(f) = &p.child.pipes.notify {
                    add(&mut fds, &mut slots, f.as_raw_fd(), libc::POLLIN, Slot::ProbeNotify);
                }
                if let Some(f) = &p.child.pipes.output {
                    add(&mut fds, &mut slots, f.as_raw_fd(), libc::POLLIN, Slot::ProbeOutput);
                }
            }
            if let Some(c) = &self.control {
                control_fds.clear();
                c.poll_fds(&mut control_fds);
                for &(fd, ev) in &control_fds {
                    add(&mut fds, &mut slots, fd, ev, Slot::Control(fd));
                }
            }
            let deadline = [
                self.sm.next_deadline(),
                self.probe.as_ref().map(|p| p.deadline),
                self.control.as_ref().and_then(|c| c.next_deadline()),
            ]
            .into_iter()
            .flatten()
            .min();
            let now = Instant::now();
            let timeout = deadline.map(|d| d.saturating_duration_since(now));
            if let Err(e) = sys::poll(&mut fds, timeout) {
                log::error!("poll: {}", e);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let now = Instant::now();
            for (i, pfd) in fds.iter().enumerate() {
                if pfd.revents == 0 {
                    continue;
                }
                match slots[i] {
                    Slot::Signals => self.on_signals(),
                    Slot::Pidfd(id) => self.check_child(id),
                    Slot::Notify(id) => self.read_child(id, false),
                    Slot::Output(id) => self.read_child(id, false),
                    Slot::ProbePidfd => self.check_probe(now),
                    Slot::ProbeNotify | Slot::ProbeOutput => {
                        if let Some(p) = &mut self.probe {
                            p.absorb(false);
                        }
                    }
                    Slot::Control(fd) => self.on_control(fd, pfd.revents, now),
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

    fn process_queue(&mut self) {
        while let Some(ev) = self.queue.pop_front() {
            let actions = self.sm.handle(ev, Instant::now());
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
                let user = self.server_user.as_deref();
                let spec = match build_spec(&config, generation, index, &fds, false, self.loglevel.as_deref(), user) {
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
                        self.children.insert(id, Child::new(sp, pidfd));
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
                // Only a child we have not reaped: its pid cannot have been reused.
                if self.children.get(&id).is_some_and(|c| c.pid == pid) {
                    if let Err(e) = sys::kill(pid, signal) {
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
            Action::Reply { client, line } => self.reply(client, &line),
            Action::Notify(n) => self.notify(n),
            Action::Exit(code) => self.exit = Some(code),
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
            Ok(()) => log::debug!(component = "master", sd_notify = text.as_str(); "told the service manager: {}", text.replace('\n', " ")),
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
        if self.signals.chld.swap(false, Ordering::SeqCst) {
            let ids: Vec<WorkerId> = self.children.keys().copied().collect();
            for id in ids {
                self.check_child(id);
            }
            self.check_probe(Instant::now());
        }
        if self.signals.hup.swap(false, Ordering::SeqCst) {
            match crate::log::reopen() {
                Ok(Some(p)) => log::info!(event = "log.reopen", path = p.display().to_string(); "log file reopened"),
                Ok(None) => log::info!(event = "log.reopen"; "SIGHUP: no log file to reopen"),
                Err(e) => log::error!(event = "log.reopen"; "{}", e),
            }
        }
        if self.signals.term.swap(false, Ordering::SeqCst) {
            self.queue.push_back(Event::Stop { signal: "SIGTERM" });
        }
        if self.signals.int.swap(false, Ordering::SeqCst) {
            self.queue.push_back(Event::Stop { signal: "SIGINT" });
        }
        if self.signals.usr2.swap(false, Ordering::SeqCst) {
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
        let p = &mut c.pipes;
        let mut reports = Vec::new();
        if let Some(f) = p.notify.as_mut() {
            if !read_lines(f, &mut p.notify_buf, drain, &mut reports) {
                p.notify = None;
            }
        }
        let mut lines = Vec::new();
        if let Some(f) = p.output.as_mut() {
            if !read_lines(f, &mut p.output_buf, drain, &mut lines) {
                p.output = None;
            }
        }
        for l in lines {
            crate::log::worker_line("worker", pid, &l);
            self.queue.push_back(Event::Output { id, line: l });
        }
        for r in reports {
            match Report::parse(&r) {
                Report::Ready => self.queue.push_back(Event::Ready { id }),
                Report::Error(text) => self.queue.push_back(Event::ReportedError { id, text }),
                Report::Status(s) => log::debug!(component = "worker", worker_pid = pid; "status: {}", s),
                other => log::info!(component = "worker", worker_pid = pid; "unknown report ignored: {:?}", other),
            }
        }
    }

    /// Reap a child if it has exited, after reading what it left in its pipes.
    fn check_child(&mut self, id: WorkerId) {
        let Some(c) = self.children.get(&id) else { return };
        match sys::try_wait(c.pid) {
            Ok(Some(status)) => {
                self.read_child(id, true);
                self.children.remove(&id);
                self.queue.push_back(Event::Exited { id, status });
            }
            Ok(None) => {}
            Err(e) => {
                // ECHILD: someone else reaped it; treat as gone.
                log::error!("waitpid {}: {}", c.pid, sys::strerror(&e));
                self.children.remove(&id);
                self.queue.push_back(Event::Exited { id, status: ExitStatus::Code(-1) });
            }
        }
    }

    fn check_probe(&mut self, now: Instant) {
        let Some(p) = &mut self.probe else { return };
        let done = if p.check_exit() {
            true
        } else if now >= p.deadline {
            p.outcome.timed_out = true;
            p.kill();
            true
        } else {
            false
        };
        if done {
            let p = self.probe.take().unwrap();
            let res = p.outcome.for_restart(p.timeout);
            self.queue.push_back(Event::ProbeDone(res));
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
            let _ = sys::kill(c.pid, libc::SIGTERM);
        }
        if let Some(c) = self.control.take() {
            c.close();
        }
        if let Some(p) = self.pidfile.take() {
            p.remove();
        }
        log::logger().flush();
    }
}

//! The loop's side of an upgrade of the master (ARCHITECTURE.md, Upgrading
//! the master): the old image gathers the hand-over state, has the new
//! binary check it beside the loop ([`UpgradeRun`]: the loop goes on
//! meanwhile), gathers it again at the exec and checks it again when its
//! shape changed, and execs; the new image carries on from it ([`resume`]).
//! The state format and its checks live in [`crate::master::handover`], the
//! check run and the exec in [`crate::master::upgrade`]. Nothing here
//! decides: the state machine lets an upgrade through (or not), and what
//! could not be done goes back to it as `UpgradeFailed`.

use super::*;
use crate::master::handover::{self, Handover, UpgradeRequest};
use crate::master::upgrade::CheckRun;
use crate::restart::Refused;

/// Carry on as the master described by `h` after an upgrade (the old image
/// exec'd this one): adopt the fds, the workers and the control clients,
/// log `master.upgrade`, and tell the state machine (`Resumed`), which
/// answers the client that asked and starts the roll-over.
pub fn resume(cfg: Config, h: Handover, signals: SignalPipe) -> Result<i32, String> {
    let now = Instant::now();
    if let Err(e) = sys::set_child_subreaper() {
        log::warn!("prctl PR_SET_CHILD_SUBREAPER: {}; orphans of workers go to init", sys::strerror(&e));
    }
    let pidfile = match &h.pidfile {
        Some(p) => Some(Pidfile::adopt(&p.path, p.fd)?),
        None => None,
    };
    let listeners = h.listeners.iter().map(|&fd| adopt(fd, "listener").map(TcpListener::from)).collect::<Result<Vec<_>, _>>()?;
    let (control, ids) = match &h.control {
        Some(c) => {
            let requester = h.requester.map(|r| r.fd);
            let (server, ids) = ControlServer::adopt(c, requester).map_err(|e| adopt_error("control socket", c.fd, e))?;
            (Some(server), ids)
        }
        None => (None, Vec::new()),
    };
    let mut children = BTreeMap::new();
    for w in &h.master.workers {
        let child = Child::adopt(w.pid, &w.fds, w.reports, w.main_pid).map_err(|e| adopt_error("worker pipes", w.fds.control, e))?;
        children.insert(w.id, child);
    }
    let workers_socket = match &h.workers_socket {
        Some(n) => Some(NotifySocket::adopt(adopt(n.fd, "workers' notify socket")?, n.path.clone())),
        None => None,
    };
    let sm = Master::resume(Arc::new(cfg), &h.master, now);
    log_upgraded(&h);
    if let Some(level) = h.loglevel.as_deref().and_then(crate::config::parse_level) {
        crate::log::set_level(level);
    }
    let started_wall = std::time::UNIX_EPOCH + Duration::from_millis(h.started_ms);
    let opts = Options { no_pidfd: h.no_pidfd };
    let (loglevel, exe) = (h.loglevel.clone(), Ok(h.exe.clone()));
    let counters = h.counters.clone();
    let mut lp =
        Loop::new(Parts { opts, sm, listeners, children, control, signals, started_wall, loglevel, pidfile, exe, workers_socket, counters });
    // Workers that exited during the exec are found now (their pidfds are
    // readable, or SIGCHLD is pending).
    let ids_now: Vec<WorkerId> = lp.children.keys().copied().collect();
    for id in ids_now {
        lp.check_child(id);
    }
    if let Some(r) = h.requester {
        let client = ids.iter().find(|(fd, _)| *fd == r.fd).map(|&(_, id)| id);
        if let Some(c) = client.filter(|_| r.progress && r.wait) {
            lp.streams.insert(c);
        }
        let restart = r.restart.then(|| lp.reload_config());
        lp.queue.push_back(Event::Resumed { client, wait: r.wait, restart });
    }
    let code = lp.run();
    lp.shutdown();
    Ok(code)
}

fn adopt_error(what: &str, fd: RawFd, e: std::io::Error) -> String {
    format!("adopt {} (fd {}): {}", what, fd, sys::strerror(&e))
}

fn adopt(fd: RawFd, what: &str) -> Result<std::os::fd::OwnedFd, String> {
    sys::adopt_fd(fd).map_err(|e| adopt_error(what, fd, e))
}

fn log_upgraded(h: &Handover) {
    let ms = sys::monotonic_usec().saturating_sub(h.requested_usec) / 1000;
    log::info!(event = "master.upgrade", from_version = h.from_version.as_str(), to_version = crate::VERSION,
        from_magic = h.from_magic, to_magic = crate::MAGIC, ms = ms, exe = h.exe.display().to_string(),
        workers = h.master.workers.len() as u64, lockout_cleared = h.master.lockout;
        "master upgraded in place from {} to {} in {} ms ({} workers adopted{})", h.from_version, crate::VERSION, ms,
        h.master.workers.len(), if h.master.lockout { "; the lockout is cleared" } else { "" });
}

/// How many times the new binary checks a state that changed while it
/// checked the one before, before the upgrade is refused.
const MAX_CHECKS: u32 = 3;

/// An upgrade the state machine let through, as far as the loop got.
pub(super) struct UpgradeRun {
    client: ClientId,
    wait: bool,
    restart: bool,
    /// CLOCK_MONOTONIC (µs) of the request (the hand-over's `requested_usec`).
    t0: u64,
    stage: Stage,
}

enum Stage {
    /// Begins once the queue is empty.
    Asked,
    /// The new binary checks `state`; `config`: the digest of the config
    /// file then; `checks`: the how-manieth check this is.
    Checking { check: Box<CheckRun>, state: Box<Handover>, config: String, checks: u32 },
    /// It accepted `state`: exec once the queue is empty, if the state then
    /// has the same shape (else check again).
    Checked { state: Box<Handover>, config: String, checks: u32 },
}

impl UpgradeRun {
    pub(super) fn new(client: ClientId, wait: bool, restart: bool) -> UpgradeRun {
        UpgradeRun { client, wait, restart, t0: sys::monotonic_usec(), stage: Stage::Asked }
    }

    /// The check child in flight.
    pub(super) fn check(&self) -> Option<&CheckRun> {
        match &self.stage {
            Stage::Checking { check, .. } => Some(&**check),
            _ => None,
        }
    }

    pub(super) fn check_mut(&mut self) -> Option<&mut CheckRun> {
        match &mut self.stage {
            Stage::Checking { check, .. } => Some(&mut **check),
            _ => None,
        }
    }

    /// Called off (the state machine cancelled it, the master stops).
    pub(super) fn cancel(mut self) {
        if let Some(c) = self.check_mut() {
            c.kill();
        }
    }
}

impl Loop {
    /// Move the upgrade on once the queue is empty (ARCHITECTURE.md,
    /// "Upgrading the master"): start the new binary's check, or exec the
    /// state it accepted. What cannot be done goes back to the state machine
    /// as `UpgradeFailed`; nothing has changed then.
    pub(super) fn advance_upgrade(&mut self) {
        let Some(up) = self.upgrade.take() else { return };
        match up.stage {
            Stage::Asked => self.start_check(up, 1),
            Stage::Checked { .. } => self.finish_upgrade(up),
            Stage::Checking { .. } => self.upgrade = Some(up),
        }
    }

    fn upgrade_failed(&mut self, reason: Reason, detail: String) {
        self.upgrade = None;
        self.queue.push_back(Event::UpgradeFailed(Refused::new(reason, detail)));
    }

    /// The digest of the config file as it is now (the check loads it).
    fn config_digest(&self) -> String {
        let path = &self.sm.config().path;
        std::fs::read(path).map_or_else(|e| format!("unreadable: {}", e), |b| handover::digest(&b))
    }

    /// Gather the state and start the new binary's check of it (check
    /// number `checks`), beside the loop.
    fn start_check(&mut self, mut up: UpgradeRun, checks: u32) {
        let state = match self.handover_state(up.client, up.wait, up.restart, up.t0) {
            Ok(h) => h,
            Err(e) => return self.upgrade_failed(Reason::UpgradeNotPossible, e),
        };
        let config = self.config_digest();
        let bytes = handover::render(&state);
        let file = match upgrade::write_state(&bytes) {
            Ok(f) => f,
            Err(e) => return self.upgrade_failed(Reason::UpgradeNotPossible, e),
        };
        let expected = upgrade::Expected::of(&state, &bytes);
        let check = match upgrade::CheckRun::start(&state.exe, &file, expected, self.opts.no_pidfd) {
            Ok(c) => c,
            Err(e) => return self.upgrade_failed(Reason::UpgradeCheckFailed, e),
        };
        log::info!(component = "master", check_pid = check.pid(), checks = checks;
            "checking the hand-over with {} {} (check {}, at most {:?})", state.exe.display(), upgrade::ARG_CHECK, checks, upgrade::CHECK_TIMEOUT);
        up.stage = Stage::Checking { check: Box::new(check), state: Box::new(state), config, checks };
        self.upgrade = Some(up);
    }

    /// The check child's pidfd is readable, SIGCHLD came or its deadline
    /// passed: its verdict, once it has one.
    pub(super) fn on_check(&mut self, now: Instant) {
        let Some(up) = &mut self.upgrade else { return };
        let Stage::Checking { check, .. } = &mut up.stage else { return };
        let Some(verdict) = check.poll_done(now) else { return };
        let answer = match verdict {
            Ok(a) => a,
            Err(e) => return self.upgrade_failed(Reason::UpgradeCheckFailed, e),
        };
        let Some(mut up) = self.upgrade.take() else { return };
        let Stage::Checking { state, config, checks, .. } = std::mem::replace(&mut up.stage, Stage::Asked) else { return };
        log::info!(event = "upgrade.check", exe = state.exe.display().to_string(), digest = answer.digest.as_str(),
            to_version = answer.version.as_str(), to_magic = answer.magic, checks = checks;
            "the new binary accepts the hand-over: zdrestart {} (magic {}) read the state (digest {})", answer.version, answer.magic, answer.digest);
        up.stage = Stage::Checked { state, config, checks };
        self.upgrade = Some(up);
    }

    /// The check passed and the queue is empty: the state as it is now is
    /// handed over if it has the shape of the one checked (what changed
    /// meanwhile without changing the shape, lines and bytes read, deadlines,
    /// control clients, is taken as it is now); else it is checked again, at
    /// most [`MAX_CHECKS`] times in all.
    fn finish_upgrade(&mut self, mut up: UpgradeRun) {
        let Stage::Checked { state: checked, config, checks } = std::mem::replace(&mut up.stage, Stage::Asked) else { return };
        let state = match self.handover_state(up.client, up.wait, up.restart, up.t0) {
            Ok(h) => h,
            Err(e) => return self.upgrade_failed(Reason::UpgradeNotPossible, e),
        };
        let mut changes = handover::shape_changes(&checked, &state);
        if self.config_digest() != config {
            changes.push("the config file");
        }
        if !changes.is_empty() {
            let what = changes.join(", ");
            if checks >= MAX_CHECKS {
                let detail = format!("{} changed during each of {} checks of the new binary; retry", what, checks);
                return self.upgrade_failed(Reason::UpgradeNotPossible, detail);
            }
            log::info!(event = "upgrade.check", changed = what.as_str(), checks = checks;
                "{} changed while the new binary checked the hand-over: checking it again", what);
            return self.start_check(up, checks + 1);
        }
        self.exec_upgrade(&state);
    }

    /// Exec the new image on `state`. Returns only if it failed, having
    /// told the state machine why (`UpgradeFailed`); nothing has changed.
    fn exec_upgrade(&mut self, state: &Handover) {
        let bytes = handover::render(state);
        // The new image re-reads these very bytes: they must parse (size,
        // structure), and name only fds open now (the check, which ran
        // beside the loop, did not look at them).
        if let Err(e) = handover::parse(&bytes, handover::HANDOVER_VERSION).and_then(|_| handover::check_fds(state, sys::fd_is_open)) {
            return self.upgrade_failed(Reason::UpgradeNotPossible, e);
        }
        let file = match upgrade::write_state(&bytes) {
            Ok(f) => f,
            Err(e) => return self.upgrade_failed(Reason::UpgradeNotPossible, e),
        };
        let keep: Vec<RawFd> = handover::fds(state).into_iter().map(|(fd, _)| fd).collect();
        log::info!(event = "upgrade.exec", exe = state.exe.display().to_string(), fds = keep.len() as u64;
            "re-executing {} in place ({} fds handed over)", state.exe.display(), keep.len());
        let err = upgrade::exec(&state.exe, file, &keep, &SIGNALS);
        self.upgrade_failed(Reason::ExecFailed, err);
    }
    /// Everything the new image needs; Err: what cannot be handed over.
    fn handover_state(&self, client: ClientId, wait: bool, restart: bool, t0: u64) -> Result<Handover, String> {
        let exe = self.exe.clone()?;
        let master = self.sm.snapshot(Instant::now(), |id| self.children.get(&id).map(|c| c.handover_fds()))?;
        let control = match &self.control {
            Some(c) => Some(c.handover(client)?),
            None => None,
        };
        let requester = self.control.as_ref().and_then(|c| c.client_fd(client)).map(|fd| UpgradeRequest { fd, wait, restart, progress: self.streams.contains(&client) });
        let ms = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        Ok(Handover {
            from_version: crate::VERSION.to_string(),
            from_magic: crate::MAGIC,
            requested_usec: t0,
            exe,
            config_path: self.sm.config().path.clone(),
            listen: self.sm.config().listen_display(),
            started_ms: ms(self.started_wall),
            no_pidfd: self.opts.no_pidfd,
            loglevel: self.loglevel.clone(),
            listeners: self.listeners.iter().map(|l| l.as_raw_fd()).collect(),
            pidfile: self.pidfile.as_ref().map(|p| handover::FdPath { fd: p.raw_fd(), path: p.path().to_path_buf() }),
            control,
            requester,
            workers_socket: self.workers_socket.as_ref().map(|n| handover::FdPath { fd: n.fd(), path: n.path().to_path_buf() }),
            master,
            counters: self.counters.clone(),
        })
    }
}

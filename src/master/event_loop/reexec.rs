//! The loop's side of an upgrade of the master (ARCHITECTURE.md, Upgrading
//! the master): the old image gathers the hand-over state and execs
//! ([`Loop::do_upgrade`]); the new image carries on from it ([`resume`]).
//! The state format and its checks live in [`crate::master::handover`], the
//! check run and the exec in [`crate::master::upgrade`]. Nothing here
//! decides: the state machine lets an upgrade through (or not), and what
//! could not be done goes back to it as `UpgradeFailed`.

use super::*;
use crate::master::handover::{self, Handover, UpgradeRequest};
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
        let child = Child::adopt(w.pid, &w.fds).map_err(|e| adopt_error("worker pipes", w.fds.control, e))?;
        children.insert(w.id, child);
    }
    let sm = Master::resume(Arc::new(cfg), &h.master, now);
    log_upgraded(&h);
    if let Some(level) = h.loglevel.as_deref().and_then(crate::config::parse_level) {
        crate::log::set_level(level);
    }
    let started_wall = std::time::UNIX_EPOCH + Duration::from_millis(h.started_ms);
    let opts = Options { no_pidfd: h.no_pidfd };
    let (loglevel, exe) = (h.loglevel.clone(), Ok(h.exe.clone()));
    let mut lp = Loop::new(Parts { opts, sm, listeners, children, control, signals, started_wall, loglevel, pidfile, exe });
    // Workers that exited during the exec are found now (their pidfds are
    // readable, or SIGCHLD is pending).
    let ids_now: Vec<WorkerId> = lp.children.keys().copied().collect();
    for id in ids_now {
        lp.check_child(id);
    }
    if let Some(r) = h.requester {
        let client = ids.iter().find(|(fd, _)| *fd == r.fd).map(|&(_, id)| id);
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

impl Loop {
    /// Carry out the `UPGRADE` the state machine let through (ARCHITECTURE.md,
    /// "Upgrading the master"): state into a memfd, check by the new binary,
    /// exec. Returns only when it could not, having told the state machine
    /// why (`UpgradeFailed`); nothing has changed.
    pub(super) fn do_upgrade(&mut self, client: ClientId, wait: bool, restart: bool) {
        let t0 = sys::monotonic_usec();
        let failed = |reason: Reason, detail: String| Event::UpgradeFailed(Refused::new(reason, detail));
        let state = match self.handover_state(client, wait, restart, t0) {
            Ok(h) => h,
            Err(e) => return self.queue.push_back(failed(Reason::UpgradeNotPossible, e)),
        };
        let exe = state.exe.clone();
        let file = match upgrade::write_state(&state) {
            Ok(f) => f,
            Err(e) => return self.queue.push_back(failed(Reason::UpgradeNotPossible, e)),
        };
        match upgrade::check(&exe, &file) {
            Ok(line) => log::info!(event = "upgrade.check", exe = exe.display().to_string(), answer = line.as_str();
                "the new binary accepts the hand-over: {}", line),
            Err(e) => return self.queue.push_back(failed(Reason::UpgradeCheckFailed, e)),
        }
        let keep: Vec<RawFd> = handover::fds(&state).into_iter().map(|(fd, _)| fd).collect();
        log::info!(event = "upgrade.exec", exe = exe.display().to_string(), fds = keep.len() as u64;
            "re-executing {} in place ({} fds handed over)", exe.display(), keep.len());
        let err = upgrade::exec(&exe, file, &keep, &SIGNALS);
        self.queue.push_back(failed(Reason::ExecFailed, err));
    }

    /// Everything the new image needs; Err: what cannot be handed over.
    fn handover_state(&self, client: ClientId, wait: bool, restart: bool, t0: u64) -> Result<Handover, String> {
        let exe = self.exe.clone()?;
        let master = self.sm.snapshot(Instant::now(), |id| self.children.get(&id).map(|c| c.handover_fds()))?;
        let control = match &self.control {
            Some(c) => Some(c.handover(client)?),
            None => None,
        };
        let requester = self.control.as_ref().and_then(|c| c.client_fd(client)).map(|fd| UpgradeRequest { fd, wait, restart });
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
            master,
        })
    }
}

//! The loop's side of an upgrade of the master (ARCHITECTURE.md, Upgrading
//! the master): the old image gathers the hand-over state and execs
//! ([`Loop::do_upgrade`]); the new image carries on from it ([`resume`]).
//! The state format and its checks live in [`crate::master::handover`], the
//! check run and the exec in [`crate::master::upgrade`]; nothing here
//! decides whether an upgrade may start (the state machine does).

use super::*;

/// Carry on as the master described by `h` after an upgrade (the old image
/// exec'd this one): adopt the fds, the workers and the control clients,
/// log `master.upgrade`, answer the client that asked, then (unless it said
/// NORESTART) roll the workers over through the normal restart.
pub fn resume(cfg: Config, h: Handover, signals: SignalPipe) -> Result<i32, String> {
    let now = Instant::now();
    if let Err(e) = sys::set_child_subreaper() {
        log::warn!("prctl PR_SET_CHILD_SUBREAPER: {}; orphans of workers go to init", sys::strerror(&e));
    }
    let adopt_err = |what: &str, fd: RawFd, e: std::io::Error| format!("adopt {} (fd {}): {}", what, fd, sys::strerror(&e));
    let pidfile = match &h.pidfile {
        Some(p) => Some(Pidfile::adopt(&p.path, p.fd)?),
        None => None,
    };
    let mut listeners = Vec::new();
    for &fd in &h.listeners {
        listeners.push(TcpListener::from(sys::adopt_fd(fd).map_err(|e| adopt_err("listener", fd, e))?));
    }
    let (control, ids) = match &h.control {
        Some(c) => {
            let (server, ids) = ControlServer::adopt(c, h.requester.map(|r| r.fd)).map_err(|e| adopt_err("control socket", c.fd, e))?;
            (Some(server), ids)
        }
        None => (None, Vec::new()),
    };
    let cfg = Arc::new(cfg);
    let sm = Master::resume(cfg.clone(), &h.master, now);
    let mut children = BTreeMap::new();
    for (i, w) in h.master.workers.iter().enumerate() {
        let child = Child::adopt(w.pid, &w.fds).map_err(|e| adopt_err("worker pipes", w.fds.control, e))?;
        children.insert(i as WorkerId + 1, child);
    }
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        log::warn!("{}; not notifying the service manager", e);
        None
    });
    let ms = sys::monotonic_usec().saturating_sub(h.requested_usec) / 1000;
    log::info!(event = "master.upgrade", from_version = h.from_version.as_str(), to_version = crate::VERSION,
        from_magic = h.from_magic, to_magic = crate::MAGIC, ms = ms, exe = h.exe.display().to_string(),
        workers = h.master.workers.len() as u64, lockout_cleared = h.master.lockout;
        "master upgraded in place from {} to {} in {} ms ({} workers adopted{})", h.from_version, crate::VERSION, ms,
        h.master.workers.len(), if h.master.lockout { "; the lockout is cleared" } else { "" });
    if let Some(level) = h.loglevel.as_deref().and_then(crate::config::parse_level) {
        crate::log::set_level(level);
    }
    let mut lp = Loop {
        opts: Options { no_pidfd: h.no_pidfd },
        sm,
        listeners,
        children,
        probe: None,
        control,
        signals,
        queue: VecDeque::new(),
        exit: None,
        started_wall: std::time::UNIX_EPOCH + Duration::from_millis(h.started_ms),
        loglevel: h.loglevel.clone(),
        pidfile,
        server_user: cfg.server_user.clone(),
        config_level: cfg.log_level,
        notifier,
        exe: Ok(h.exe.clone()),
        upgrade: None,
        notify: None,
    };
    // Workers that exited during the exec are found now (their pidfds are
    // readable, or SIGCHLD is pending).
    let ids_now: Vec<WorkerId> = lp.children.keys().copied().collect();
    for id in ids_now {
        lp.check_child(id);
    }
    if let Some(r) = h.requester {
        let client = ids.iter().find(|(fd, _)| *fd == r.fd).map(|&(_, id)| id);
        if let Some(client) = client {
            if r.restart && r.wait {
                let config = lp.reload_config();
                lp.queue.push_back(Event::Restart { config, by: Requester::Control { client, wait: true } });
            } else {
                lp.reply(client, &control::ack(&format!("upgraded {}", crate::VERSION)));
            }
        }
        if r.restart && !r.wait {
            let config = lp.reload_config();
            lp.queue.push_back(Event::Restart { config, by: Requester::Upgrade });
        }
    }
    let code = lp.run();
    lp.shutdown();
    Ok(code)
}

impl Loop {
    /// Carry out an `UPGRADE` (ARCHITECTURE.md, "Upgrading the master"):
    /// state into a memfd, check by the new binary, exec. Returns only when
    /// refused or failed, having answered the client; nothing has changed.
    pub(super) fn do_upgrade(&mut self, client: ClientId, wait: bool, restart: bool) {
        let t0 = sys::monotonic_usec();
        log::info!(event = "upgrade.start", restart = restart; "upgrade of the master requested (re-exec in place)");
        let refuse = |lp: &mut Loop, reason: &str, detail: &str| {
            log::warn!(event = "upgrade.refused", reason = reason, detail = detail; "upgrade of the master refused: {}: {}", reason, detail);
            let line = if detail.is_empty() { control::nack(reason) } else { control::nack(&format!("{}: {}", reason, detail)) };
            lp.reply(client, &line);
        };
        // A restart that began after the UPGRADE was queued (same batch).
        match self.sm.state() {
            crate::status::MasterState::Running | crate::status::MasterState::Lockout if self.probe.is_none() => {}
            crate::status::MasterState::Stopping => return refuse(self, Reason::Stopping.wire(), ""),
            _ => return refuse(self, Reason::InFlight.wire(), ""),
        }
        let state = match self.handover_state(client, wait, restart, t0) {
            Ok(h) => h,
            Err(e) => return refuse(self, Reason::UpgradeNotPossible.wire(), &e),
        };
        let exe = state.exe.clone();
        let file = match upgrade::write_state(&state) {
            Ok(f) => f,
            Err(e) => return refuse(self, Reason::UpgradeNotPossible.wire(), &e),
        };
        match upgrade::check(&exe, &file) {
            Ok(line) => log::info!(event = "upgrade.check", exe = exe.display().to_string(), answer = line.as_str();
                "the new binary accepts the hand-over: {}", line),
            Err(e) => return refuse(self, Reason::UpgradeCheckFailed.wire(), &e),
        }
        let keep: Vec<RawFd> = handover::fds(&state).into_iter().map(|(fd, _)| fd).collect();
        log::info!(event = "upgrade.exec", exe = exe.display().to_string(), fds = keep.len() as u64;
            "re-executing {} in place ({} fds handed over)", exe.display(), keep.len());
        let err = upgrade::exec(&exe, file, &keep, &SIGNALS);
        log::error!(event = "upgrade.refused", reason = Reason::ExecFailed.wire(), detail = err.as_str();
            "upgrade of the master failed: {}; carrying on as before", err);
        self.reply(client, &control::nack(&format!("{}: {}", Reason::ExecFailed.wire(), err)));
    }

    fn handover_state(&self, client: ClientId, wait: bool, restart: bool, t0: u64) -> Result<Handover, String> {
        let exe = self.exe.clone()?;
        // The sd_notify socket of the workers (and the main processes they
        // named) is not part of the hand-over: refuse rather than lose them.
        if self.children.values().any(|c| c.reports != crate::config::Notify::Zdrestart || c.main.is_some()) {
            return Err("workers report with sd_notify(3) (\"notify\": \"systemd\" or \"both\"), whose socket is not handed over".into());
        }
        let control = match &self.control {
            Some(c) => Some(c.handover(client)?),
            None => None,
        };
        let requester = self.control.as_ref().and_then(|c| c.client_fd(client)).map(|fd| UpgradeRequest { fd, wait, restart });
        let master = self.sm.snapshot(Instant::now(), |pid| {
            self.children.values().find(|c| c.pid == pid).map(|c| c.handover_fds())
        })?;
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

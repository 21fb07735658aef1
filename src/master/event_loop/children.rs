//! The loop's side of the workers: spawn one for an `Action::Spawn` (its
//! fds under the state machine's id), signal its process group, read its
//! pipes into events, reap it (and what it leaves behind) into `Exited`.
//! What a report or an exit means is the state machine's business.

use super::*;
use crate::master::orphans;
use crate::master::spawn_spec::{build_spec, Role, SpawnRequest};
use crate::protocol::Report;
use crate::sys::ExitStatus;

impl Loop {
    /// Start worker `id`; its pid comes back as `Spawned`, a failure as
    /// `SpawnFailed`.
    pub(super) fn spawn_worker(&mut self, id: WorkerId, generation: u32, index: u32, config: &Config) {
        let listeners: Vec<RawFd> = self.listeners.iter().map(|l| l.as_raw_fd()).collect();
        let socket = match config.notify.socket() {
            false => None,
            true => match self.workers_socket_path() {
                Ok(path) => Some(path),
                Err(error) => return self.queue.push_back(Event::SpawnFailed { id, error }),
            },
        };
        let role = Role::Worker { generation, index, listeners: &listeners, notify_socket: socket.as_deref() };
        let req = SpawnRequest { config, role, loglevel: self.loglevel.as_deref(), server_user: self.server_user.as_deref() };
        let spec = match build_spec(&req) {
            Ok(s) => s,
            Err(error) => return self.queue.push_back(Event::SpawnFailed { id, error }),
        };
        let sp = match sys::spawn(&spec) {
            Ok(sp) => sp,
            Err(e) => {
                let error = format!("spawn {}: {}", spec.path.to_string_lossy(), e);
                return self.queue.push_back(Event::SpawnFailed { id, error });
            }
        };
        let pidfd = if self.opts.no_pidfd { None } else { self.pidfd_of(sp.pid) };
        let pid = sp.pid;
        let mut child = Child::new(sp, pidfd);
        child.reports = config.notify;
        self.children.insert(id, child);
        self.queue.push_back(Event::Spawned { id, pid });
        // A child that died before we had its pidfd is found here.
        self.check_child(id);
    }

    /// A pidfd for a child just spawned; None: rely on SIGCHLD.
    fn pidfd_of(&self, pid: u32) -> Option<std::os::fd::OwnedFd> {
        match sys::pidfd_open(pid) {
            Ok(f) => Some(f),
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENOSYS) {
                    log::warn!("pidfd_open {}: {}; relying on SIGCHLD", pid, sys::strerror(&e));
                }
                None
            }
        }
    }

    /// A signal to worker `id`'s process group: whatever the worker started
    /// gets it too, its main process (`MAINPID=`, one of the group)
    /// included, also once the spawned process is gone (the group's id
    /// stays reserved while it has members). Only a child we have not
    /// reaped is in the table: its pid (and so its group's id) cannot have
    /// been reused.
    pub(super) fn signal_worker(&mut self, id: WorkerId, signal: i32) {
        let Some(c) = self.children.get(&id) else { return };
        let (pid, reaped) = (c.pid, c.spawned_status.is_some());
        let sent = sys::kill_group(pid, signal).or_else(|e| if reaped { Err(e) } else { sys::kill(pid, signal) });
        if let Err(e) = sent {
            log::warn!(worker_pid = pid; "kill {} {}: {}", sys::signal_name(signal), pid, sys::strerror(&e));
        }
    }

    /// Read a child's pipes once; lines become events.
    pub(super) fn read_child(&mut self, id: WorkerId, drain: bool) {
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
                Report::Watchdog => self.queue.push_back(Event::Heartbeat { id, trigger: false }),
                Report::WatchdogTrigger => self.queue.push_back(Event::Heartbeat { id, trigger: true }),
                other => log::info!(component = "worker", worker_pid = pid; "unknown report ignored: {:?}", other),
            }
        }
    }


    /// The pids whose process groups are the service's: the workers, the
    /// probe and the check of an upgrade.
    pub(super) fn leaders(&self) -> Vec<u32> {
        let check = self.upgrade.as_ref().and_then(|u| u.check()).map(|c| c.pid());
        self.children.values().map(|c| c.pid).chain(self.probe.as_ref().map(|p| p.child.pid)).chain(check).collect()
    }


    /// The workers' main processes (`MAINPID=`): adopted once the spawned
    /// process is gone, reaped by [`Self::check_child`] for their status.
    pub(super) fn mains(&self) -> Vec<u32> {
        self.children.values().filter_map(|c| c.main.as_ref().map(|m| m.pid)).collect()
    }


    /// Reap adopted children that exited, and end the ones a worker left
    /// behind (zdrestart-worker(7)); our own exited children are handed to
    /// [`Self::check_child`] / [`Self::check_probe`].
    pub(super) fn reap_adopted(&mut self) {
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
                let check = self.upgrade.as_ref().and_then(|u| u.check()).map(|c| c.pid());
                match id {
                    Some(id) => self.check_child(id),
                    None if check == Some(pid) => self.on_check(Instant::now()),
                    None => self.check_probe(Instant::now()),
                }
            }
        }
        orphans::end_strays(&self.leaders());
    }


    /// Reap a child if it has exited, after reading what it left in its
    /// pipes; then end what is left of its process group. A worker whose
    /// main process (`MAINPID=`) is another one lives as long as that one.
    pub(super) fn check_child(&mut self, id: WorkerId) {
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

    /// Reap the probe if it is done (or past its deadline): its verdict.
    pub(super) fn check_probe(&mut self, now: Instant) {
        let Some(p) = &mut self.probe else { return };
        if let Some(verdict) = p.poll_done(now) {
            self.probe = None;
            self.queue.push_back(Event::ProbeDone(verdict));
        }
    }
}

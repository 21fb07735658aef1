//! The loop's side of the workers' sd_notify(3) socket: bind it on first use,
//! turn datagrams from a worker's own processes into events. The socket and
//! the parsing live in [`crate::master::notify_socket`]; what a report means
//! is the state machine's business.

use super::*;
use crate::master::child::MainProcess;
use crate::master::notify_socket::{self, Delivery, Message};

impl Loop {
    /// `$NOTIFY_SOCKET` for workers, bound on first use: a file system
    /// socket in a private directory ([`NotifySocket::bind`]) in
    /// `$RUNTIME_DIRECTORY`, else the temporary directory; with
    /// `serverUser`, its group may enter and send.
    pub(super) fn workers_socket_path(&mut self) -> Result<String, String> {
        if self.workers_socket.is_none() {
            let user = match self.server_user.as_deref().map(sys::lookup_user) {
                Some(Ok(Some(ids))) => Some(ids),
                // The spawn itself says what is wrong with serverUser.
                _ => None,
            };
            let base = notify_socket::base_dir(std::env::var_os("RUNTIME_DIRECTORY").as_deref(), std::env::temp_dir());
            let n = NotifySocket::bind(&base, user.map(|(_, gid)| gid)).map_err(|e| format!("the workers' notify socket: {}", e))?;
            let group = user.map(|(_, gid)| gid);
            let blocked = user.and_then(|(uid, gid)| n.path().parent().and_then(|d| notify_socket::out_of_reach(d, uid, gid)));
            if let Some(dir) = blocked {
                log::warn!(component = "master", path = dir.display().to_string();
                    "{} does not let serverUser {} pass: its workers cannot reach their notify socket {} (set RUNTIME_DIRECTORY or TMPDIR to a directory they can reach)",
                    dir.display(), self.server_user.as_deref().unwrap_or(""), n.path().display());
            }
            let (dir_mode, sock_mode) = notify_socket::modes(group);
            let shown = n.path().display().to_string();
            log::info!(component = "master", notify_socket = shown.as_str();
                "workers' sd_notify socket is {} (mode {:o}, in a directory of mode {:o})", shown, sock_mode, dir_mode);
            self.workers_socket = Some(n);
        }
        Ok(self.workers_socket.as_ref().map(|n| n.path().display().to_string()).unwrap_or_default())
    }

    /// The worker a process belongs to, for sd_notify: the worker's spawned
    /// process, its main process, or a process of the process group the
    /// worker's spawned process leads. Only workers that use the socket.
    fn owner(children: &BTreeMap<WorkerId, Child>, pid: u32) -> Option<WorkerId> {
        let users = || children.iter().filter(|(_, c)| c.reports.socket());
        let direct = |(_, c): &(&WorkerId, &Child)| {
            (c.pid == pid && c.spawned_status.is_none()) || c.main.as_ref().is_some_and(|m| m.pid == pid)
        };
        if let Some((&id, _)) = users().find(direct) {
            return Some(id);
        }
        let group = sys::process_group_of(pid).ok()?;
        // A group is numbered by its leader's pid: it is this worker's while
        // the worker lives (the number is not reused while the group exists).
        users().find(|(_, c)| c.pid == group && (c.spawned_status.is_none() || c.main.is_some())).map(|(&id, _)| id)
    }

    /// Datagrams on the workers' notify socket become events.
    pub(super) fn on_workers_socket(&mut self, now: Instant) {
        let Some(n) = &mut self.workers_socket else { return };
        let children = &self.children;
        let deliveries = n.receive(|pid| Self::owner(children, pid));
        for d in deliveries {
            match d {
                Delivery::Dropped { why, sender } => {
                    if let Some(n) = &mut self.workers_socket {
                        n.log_drop(&why, sender, now);
                    }
                }
                Delivery::From { worker, sender, parsed } => {
                    let pid = self.children.get(&worker).map_or(0, |c| c.pid);
                    if !parsed.ignored.is_empty() {
                        log::debug!(component = "worker", worker_pid = pid;
                            "sd_notify: ignored {}", parsed.ignored.join(", "));
                    }
                    for m in parsed.messages {
                        self.on_workers_message(worker, sender, m, now);
                    }
                }
            }
        }
    }

    fn on_workers_message(&mut self, id: WorkerId, sender: u32, m: Message, now: Instant) {
        let ev = match m {
            Message::Ready => Event::Ready { id },
            Message::Status(text) => Event::Status { id, text },
            Message::Watchdog => Event::Heartbeat { id, trigger: false },
            Message::WatchdogTrigger => Event::Heartbeat { id, trigger: true },
            Message::Stopping => Event::NotifyFailure { id, text: "STOPPING=1".into() },
            Message::Errno(n) => {
                let e = std::io::Error::from_raw_os_error(n);
                Event::NotifyFailure { id, text: format!("ERRNO={} ({})", n, sys::strerror(&e)) }
            }
            Message::MainPid(main) => {
                // Only one of the worker's own processes may become its main one.
                if Self::owner(&self.children, main) != Some(id) {
                    let why = format!("MAINPID={} names no process of the worker", main);
                    if let Some(n) = &mut self.workers_socket {
                        n.log_drop(&why, Some(sender), now);
                    }
                    return;
                }
                if self.opts.no_pidfd {
                    // A process that is not our child cannot be watched
                    // without a pidfd: the spawned process stays the main one.
                    log::debug!(component = "worker", main_pid = main; "MAINPID={} ignored: no pidfds", main);
                    return;
                }
                let Some(c) = self.children.get_mut(&id) else { return };
                if main == c.pid {
                    c.main = None;
                } else {
                    match sys::pidfd_open(main) {
                        Ok(pidfd) => c.main = Some(MainProcess { pid: main, pidfd }),
                        Err(e) => {
                            log::warn!(worker_pid = c.pid; "MAINPID={}: pidfd_open: {}; ignored", main, sys::strerror(&e));
                            return;
                        }
                    }
                }
                Event::MainPid { id, pid: main }
            }
        };
        self.queue.push_back(ev);
    }
}

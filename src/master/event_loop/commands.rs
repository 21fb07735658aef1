//! What comes to the loop from outside: signals (through the signal pipe)
//! and control-socket commands. `LOGLEVEL`, `STATUS`, `VERSION` and `CMDS`
//! are answered here; a restart, a canary's promotion or rollback, or an
//! upgrade becomes an event for the state machine, whose answer comes back
//! as an action.

use super::*;
use super::super::state::Requester;
use crate::control::Command;

impl Loop {
    /// The signal pipe is readable: each signal taken becomes what it means
    /// (zdrestart(8), SIGNALS).
    pub(super) fn on_signals(&mut self) {
        self.signals.drain();
        if self.signals.take(libc::SIGCHLD) {
            let ids: Vec<WorkerId> = self.children.keys().copied().collect();
            for id in ids {
                self.check_child(id);
            }
            self.check_probe(Instant::now());
            self.on_check(Instant::now());
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
            self.queue.push_back(Event::Restart { config, by: Requester::Signal, canary: false });
        }
    }

    /// The config file as it is on disk now (a restart's new config).
    pub(super) fn reload_config(&self) -> Result<Config, String> {
        Config::load(&self.sm.config().path).map_err(|e| e.to_string())
    }


    /// A control socket fd is ready: every command completed is handled.
    pub(super) fn on_control(&mut self, fd: RawFd, revents: i16, now: Instant) {
        let Some(c) = &mut self.control else { return };
        let cmds = c.on_ready(fd, revents, now);
        for (client, cmd) in cmds {
            self.on_command(client, cmd);
        }
    }

    /// One command: answered at once, or (restart, upgrade) queued for the
    /// state machine, which answers it.
    pub(super) fn on_command(&mut self, client: ClientId, cmd: Command) {
        let answer = match cmd {
            Command::Cmds => control::cmds_answer(),
            Command::Version => control::ack(crate::VERSION),
            Command::Status => control::ack(&serde_json::to_string(&self.status_report(true)).unwrap_or_default()),
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
            Command::Restart { wait, canary, progress } => {
                self.watch(client, progress);
                let config = self.reload_config();
                self.queue.push_back(Event::Restart { config, by: Requester::Control { client, wait }, canary });
                return;
            }
            Command::Promote { wait, progress } => {
                self.watch(client, progress);
                self.queue.push_back(Event::Promote { client, wait });
                return;
            }
            Command::Rollback => {
                self.queue.push_back(Event::Rollback { client });
                return;
            }
            Command::Upgrade { wait, restart, progress } => {
                self.watch(client, progress);
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


    /// One answer line to a control client.
    pub(super) fn reply(&mut self, client: ClientId, line: &str) {
        if let Some(c) = &mut self.control {
            c.reply(client, line);
        }
    }

    /// A control line to every running worker.
    pub(super) fn send_all(&self, line: &str) {
        for c in self.children.values() {
            c.send(line);
        }
    }
}

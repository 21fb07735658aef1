//! The probe: the worker program run with `ZDRESTART_PROBE=1`, which
//! reports `MAGIC=` and `VERSION=` (or `ERROR=`) and exits. Run at start-up
//! and by `zdrestart --check` to completion ([`probe_blocking`]), and inside
//! the poll loop for a restart ([`ProbeRun`]).
//!
//! Owns the probe child and the reading of its reports into a
//! [`ProbeOutcome`]; the verdict for a restart is
//! [`ProbeOutcome::for_restart`], what admission does with it is
//! [`super::admission`]'s. Bounded by `probeTimeout`.

use super::admission::{ProbeFailure, ProbeInfo};
use super::child::Child;
use super::spawn_spec::{build_spec, Role, SpawnRequest};
use crate::config::Config;
use crate::protocol::Report;
use crate::sys::{self, ExitStatus};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// How many output lines of the probe are kept.
const KEEP_LINES: usize = 10;

/// What a probe of the worker program said.
#[derive(Debug, Clone, Default)]
pub struct ProbeOutcome {
    pub magic: Option<u64>,
    pub version: Option<String>,
    /// `SHARED=1` / `SHARED=0`, if the probe said.
    pub shared: Option<bool>,
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
            Some(m) => Ok(ProbeInfo { magic: m, version: self.version.clone().unwrap_or_default(), shared: self.shared }),
            None => fail("the probe reported no MAGIC=".into()),
        }
    }
}

/// A probe child in flight.
pub struct ProbeRun {
    pub child: Child,
    pub deadline: Instant,
    timeout: Duration,
    outcome: ProbeOutcome,
}

impl ProbeRun {
    pub fn start(cfg: &Config, no_pidfd: bool, loglevel: Option<&str>, user: Option<&str>) -> Result<ProbeRun, String> {
        let spec = build_spec(&SpawnRequest { config: cfg, role: Role::Probe, loglevel, server_user: user })?;
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

    /// Read what the probe wrote (once, or all of it when `drain`).
    pub fn absorb(&mut self, drain: bool) {
        let pid = self.child.pid;
        let lines = self.child.read(drain);
        for l in lines.reports {
            match Report::parse(&l) {
                Report::Magic(m) => self.outcome.magic = Some(m),
                Report::Version(v) => self.outcome.version = Some(v),
                Report::Shared(b) => self.outcome.shared = Some(b),
                Report::Error(e) => self.outcome.error = Some(e),
                Report::BadMagic(v) => self.outcome.error = Some(format!("MAGIC={} is not a number", v)),
                other => log::debug!(component = "probe", worker_pid = pid; "probe report {:?}", other),
            }
        }
        for l in lines.output {
            crate::log::worker_line("probe", pid, &l);
            if self.outcome.output.len() == KEEP_LINES {
                self.outcome.output.remove(0);
            }
            self.outcome.output.push(l);
        }
    }

    /// Reap if it exited (and end what is left of its process group); true
    /// when finished.
    fn check_exit(&mut self) -> bool {
        if let Ok(Some(st)) = sys::try_wait(self.child.pid) {
            self.outcome.status = Some(st);
            super::orphans::end_group(self.child.pid);
            self.absorb(true);
            return true;
        }
        false
    }

    /// SIGKILL to the probe's whole process group, and reap it.
    pub fn kill(&mut self) {
        let pid = self.child.pid;
        let _ = sys::kill_group(pid, libc::SIGKILL).or_else(|_| sys::kill(pid, libc::SIGKILL));
        if let Ok(st) = sys::wait(pid) {
            self.outcome.status = Some(st);
        }
        self.absorb(true);
    }

    /// Reap it if it exited, kill it if `now` is past its deadline; the
    /// verdict once it is finished.
    pub fn poll_done(&mut self, now: Instant) -> Option<Result<ProbeInfo, ProbeFailure>> {
        if !self.check_exit() {
            if now < self.deadline {
                return None;
            }
            self.outcome.timed_out = true;
            self.kill();
        }
        Some(self.outcome.for_restart(self.timeout))
    }
}

/// Run the probe to completion (start-up and `--check`), blocking. With
/// `wake` = (fd, f), `fd` (the master's signal pipe) is polled too and `f`
/// called when it is readable; when `f` says stop, the probe is killed and
/// the result is None.
pub fn probe_blocking(cfg: &Config, mut wake: Option<(RawFd, &mut dyn FnMut() -> bool)>) -> Option<ProbeOutcome> {
    let mut run = match ProbeRun::start(cfg, false, None, cfg.server_user.as_deref()) {
        Ok(r) => r,
        Err(e) => return Some(ProbeOutcome { spawn_error: Some(e), ..Default::default() }),
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
        let (pidfd, pipes) = run.child.poll_fds();
        let mut fds: Vec<libc::pollfd> = std::iter::once(pidfd)
            .chain(pipes)
            .chain(std::iter::once(wake.as_ref().map(|w| w.0)))
            .flatten()
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // Without a pidfd, poll in short steps for the exit.
        let step = if pidfd.is_none() { Duration::from_millis(20) } else { run.deadline - now };
        let _ = sys::poll(&mut fds, Some(step.min(run.deadline - now)));
        if let Some((fd, f)) = wake.as_mut() {
            if fds.iter().any(|p| p.fd == *fd && p.revents != 0) && f() {
                run.kill();
                return None;
            }
        }
        run.absorb(false);
    }
    Some(run.outcome)
}

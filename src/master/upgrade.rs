//! The in-place upgrade of the master (einhorn's `upgrade`, systemd's
//! `daemon-reexec`): same pid, never two masters.
//!
//! Owns the three steps around the hand-over state of [`super::handover`]:
//! [`check`] runs the binary that would run (the path the master was
//! started from, resolved at start) as a child in check mode on the very
//! state, with a timeout; [`exec`] clears close-on-exec on exactly the fds to
//! keep, blocks the master's signals (the mask and pending signals survive
//! execve, so none is lost or kills the new image before it installs its
//! handlers) and execs; on failure it puts everything back. [`check_main`]
//! and [`read_state`] are the new binary's side. It decides nothing: the
//! loop builds the state and answers the client; the state machine says
//! when an upgrade may start.

use super::handover::{self, Handover};
use crate::sys;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the new binary may take to check the state.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The option of the new image: `--handover FD`.
pub const ARG_HANDOVER: &str = "--handover";
/// The option of the check mode: `--handover-check FD`.
pub const ARG_CHECK: &str = "--handover-check";

/// The executable this master was started from, resolved at start (a
/// package upgrade replaces the file: /proc/self/exe would then name a
/// deleted file, while this path names the new one).
pub fn resolve_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("resolve the master's executable (/proc/self/exe): {}", e))
}

/// The state in an anonymous file (close-on-exec until [`exec`]).
pub fn write_state(h: &Handover) -> Result<File, String> {
    let fd = sys::memfd_create("zdrestart-handover").map_err(|e| format!("memfd_create: {}", sys::strerror(&e)))?;
    let mut f = File::from(fd);
    f.write_all(&handover::render(h)).map_err(|e| format!("write hand-over state: {}", e))?;
    Ok(f)
}

/// Run `exe --handover-check 0` with the state on its stdin; Ok: the line
/// it printed (its version). Err: why the upgrade is refused.
pub fn check(exe: &Path, state: &File) -> Result<String, String> {
    let stdin = state.try_clone().map_err(|e| format!("dup hand-over state: {}", e))?;
    let mut child = Command::new(exe)
        .arg(ARG_CHECK)
        .arg("0")
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {} {}: {}", exe.display(), ARG_CHECK, e))?;
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let pidfd = sys::pidfd_open(child.id()).ok();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(format!("wait for {} {}: {}", exe.display(), ARG_CHECK, e)),
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{} {} did not answer within {:?}", exe.display(), ARG_CHECK, CHECK_TIMEOUT));
        }
        match &pidfd {
            Some(p) => {
                let mut fds = [libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
                let _ = sys::poll(&mut fds, Some(deadline - now));
            }
            // Old kernels: a short wait, bounded by the deadline.
            None => std::thread::sleep(Duration::from_millis(5).min(deadline - now)),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = (&mut o).take(64 * 1024).read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = (&mut e).take(64 * 1024).read_to_string(&mut err);
    }
    let first = |s: &str| s.lines().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string());
    if status.success() {
        return first(&out).ok_or_else(|| format!("{} {} printed nothing", exe.display(), ARG_CHECK));
    }
    let why = first(&out).or_else(|| first(&err)).unwrap_or_default();
    Err(format!("{} {} ({}){}", exe.display(), ARG_CHECK, status, if why.is_empty() { String::new() } else { format!(": {}", why) }))
}

/// Exec `exe --handover FD` keeping `keep` (and the state) open. Returns
/// only on failure, with everything as before (flags, signal mask).
pub fn exec(exe: &Path, state: File, keep: &[RawFd], signals: &[i32]) -> String {
    let state_fd: OwnedFd = state.into();
    let mut all: Vec<RawFd> = keep.to_vec();
    all.push(state_fd.as_raw_fd());
    if let Err(e) = sys::mask_signals(signals, true) {
        return format!("block signals: {}", sys::strerror(&e));
    }
    let mut cleared = Vec::new();
    let mut err = None;
    for &fd in &all {
        match sys::set_cloexec(fd, false) {
            Ok(()) => cleared.push(fd),
            Err(e) => {
                err = Some(format!("clear FD_CLOEXEC on fd {}: {}", fd, sys::strerror(&e)));
                break;
            }
        }
    }
    if err.is_none() {
        log::logger().flush();
        let fd = state_fd.as_fd().as_raw_fd().to_string();
        let e = sys::execv(exe, &[exe.as_os_str(), OsStr::new(ARG_HANDOVER), OsStr::new(&fd)]);
        err = Some(format!("execve {}: {}", exe.display(), sys::strerror(&e)));
    }
    for fd in cleared {
        let _ = sys::set_cloexec(fd, true);
    }
    let _ = sys::mask_signals(signals, false);
    err.unwrap_or_default()
}

/// Read and parse the state from an inherited fd (taken over and closed).
pub fn read_state(fd: &str) -> Result<Handover, String> {
    let n: RawFd = fd.parse().map_err(|_| format!("hand-over fd \"{}\" is not a number", fd))?;
    let owned = sys::adopt_fd(n).map_err(|e| format!("hand-over fd {}: {}", n, sys::strerror(&e)))?;
    let mut f = File::from(owned);
    // The offset is shared with the old image's copy: read from the start
    // (a pipe, e.g. a test feeding the check mode, cannot seek: read it).
    match f.seek(SeekFrom::Start(0)) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESPIPE) => {}
        Err(e) => return Err(format!("seek hand-over state: {}", e)),
    }
    let mut bytes = Vec::new();
    (&mut f).take(handover::MAX_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(|e| format!("read hand-over state: {}", e))?;
    handover::parse(&bytes, handover::accepted_version())
}

/// `zdrestart --handover-check FD`: would this binary take the state over?
/// Everything the new image checks is checked here (format, version, fds
/// open in the master, config, listen address). Prints one line; exit 0 yes.
pub fn check_main(fd: &str) -> i32 {
    match check_state(fd) {
        Ok(()) => {
            println!("ok: zdrestart {} (magic {}, hand-over version {})", crate::VERSION, crate::MAGIC, handover::accepted_version());
            0
        }
        Err(e) => {
            println!("{}", e);
            1
        }
    }
}

fn check_state(fd: &str) -> Result<(), String> {
    let h = read_state(fd)?;
    let master = sys::parent_pid();
    handover::check_fds(&h, |fd| Path::new(&format!("/proc/{}/fd/{}", master, fd)).exists())?;
    let cfg = crate::config::Config::load(&h.config_path).map_err(|e| format!("bad config: {}", e))?;
    if cfg.listen_display() != h.listen {
        return Err(format!("listen address changed: {} in the config, the master listens on {}", cfg.listen_display(), h.listen));
    }
    Ok(())
}

//! The in-place upgrade of the master (einhorn's `upgrade`, systemd's
//! `daemon-reexec`): same pid, never two masters.
//!
//! Owns the three steps around the hand-over state of [`super::handover`]:
//! [`CheckRun`] runs the binary that would run (the path the master was
//! started from, resolved at start) as a child in check mode on the very
//! state, beside the loop, with a deadline, and [`verdict`] judges its
//! answer (the digest of the state it parsed: [`CheckAnswer`]); [`exec`]
//! clears close-on-exec on exactly the fds to
//! keep, blocks the master's signals (the mask and pending signals survive
//! execve, so none is lost or kills the new image before it installs its
//! handlers) and execs; on failure it puts everything back. [`check_main`]
//! and [`read_state`] are the new binary's side. It decides nothing: the
//! loop builds the state and answers the client; the state machine says
//! when an upgrade may start.

use super::handover::{self, Handover, HANDOVER_VERSION};
use crate::sys;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
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

/// The state's bytes ([`handover::render`]) in an anonymous file
/// (close-on-exec until [`exec`]).
pub fn write_state(bytes: &[u8]) -> Result<File, String> {
    let fd = sys::memfd_create("zdrestart-handover").map_err(|e| format!("memfd_create: {}", sys::strerror(&e)))?;
    let mut f = File::from(fd);
    f.write_all(bytes).map_err(|e| format!("write hand-over state: {}", e))?;
    Ok(f)
}

/// What the new binary's check answers when it accepts a state: one line
/// of JSON on its standard output. Readers ignore fields they do not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckAnswer {
    /// [`handover::digest`] of the bytes of the state it parsed.
    pub digest: String,
    /// The hand-over version it read the state as.
    pub handover_version: u32,
    /// What it will run: its zdrestart version and magic number.
    pub version: String,
    pub magic: u64,
    /// The workers it will adopt and the fds it found open in the master.
    pub workers: usize,
    pub fds: usize,
}

/// What the master expects of the check of one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub digest: String,
    pub workers: usize,
    pub fds: usize,
}

impl Expected {
    pub fn of(h: &Handover, bytes: &[u8]) -> Expected {
        Expected { digest: handover::digest(bytes), workers: h.master.workers.len(), fds: handover::fds(h).len() }
    }
}

/// The verdict on what the check printed and how it exited: its answer,
/// or why the upgrade is refused (`upgrade check failed: ...`).
pub fn verdict(exe: &Path, expected: &Expected, ok: bool, how: &str, out: &str, err: &str) -> Result<CheckAnswer, String> {
    let first = |s: &str| s.lines().find(|l| !l.trim().is_empty()).map(|l| l.trim().chars().take(300).collect::<String>());
    let who = format!("{} {}", exe.display(), ARG_CHECK);
    if !ok {
        let why = first(out).or_else(|| first(err)).map_or_else(String::new, |w| format!(": {}", w));
        return Err(format!("{} ({}){}", who, how, why));
    }
    let line = first(out).ok_or_else(|| format!("{} printed nothing", who))?;
    let answer: Option<CheckAnswer> = serde_json::from_str(&line).ok();
    match answer {
        Some(a) if a.digest == expected.digest && a.handover_version == HANDOVER_VERSION
            && a.workers == expected.workers && a.fds == expected.fds => Ok(a),
        _ => Err(format!(
            "{} answered {:?}, not the digest of this hand-over ({}, hand-over version {}, {} workers, {} fds): it did not show that it read the state",
            who, line, expected.digest, HANDOVER_VERSION, expected.workers, expected.fds
        )),
    }
}

/// Most of a check's output kept (the rest is read and dropped, so that a
/// chatty child never blocks on a full pipe).
const OUTPUT_KEPT: usize = 64 * 1024;

/// The new binary's check of a state (`<exe> --handover-check 0`, the state
/// on its stdin), run beside the master's loop: its pidfd and its output
/// pipes are fds of the loop's poll set, its timeout a deadline.
pub struct CheckRun {
    exe: PathBuf,
    child: std::process::Child,
    pidfd: Option<OwnedFd>,
    pipes: [Option<File>; 2],
    output: [Vec<u8>; 2],
    pub deadline: Instant,
    expected: Expected,
}

impl CheckRun {
    /// Start the check of `state` (its bytes gave `expected`); `no_pidfd`:
    /// its exit is found on SIGCHLD. It leads a process group of its own.
    pub fn start(exe: &Path, state: &File, expected: Expected, no_pidfd: bool) -> Result<CheckRun, String> {
        let stdin = state.try_clone().map_err(|e| format!("dup hand-over state: {}", e))?;
        let mut child = Command::new(exe)
            .arg(ARG_CHECK)
            .arg("0")
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("run {} {}: {}", exe.display(), ARG_CHECK, e))?;
        let pidfd = if no_pidfd { None } else { sys::pidfd_open(child.id()).ok() };
        let pipes = [child.stdout.take().map(OwnedFd::from), child.stderr.take().map(OwnedFd::from)].map(|p| {
            p.map(|fd| {
                let _ = sys::set_nonblocking(fd.as_fd(), true);
                File::from(fd)
            })
        });
        let deadline = Instant::now() + CHECK_TIMEOUT;
        Ok(CheckRun { exe: exe.to_path_buf(), child, pidfd, pipes, output: [Vec::new(), Vec::new()], deadline, expected })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The fds to poll for `POLLIN`: (pidfd, output pipes).
    pub fn poll_fds(&self) -> (Option<RawFd>, [Option<RawFd>; 2]) {
        (self.pidfd.as_ref().map(|f| f.as_raw_fd()), [0, 1].map(|i| self.pipes[i].as_ref().map(|f| f.as_raw_fd())))
    }

    /// Read what it wrote (without blocking); a pipe at EOF is closed.
    pub fn absorb(&mut self) {
        let mut chunk = [0u8; 4096];
        for i in 0..2 {
            while let Some(f) = self.pipes[i].as_mut() {
                match f.read(&mut chunk) {
                    Ok(0) => self.pipes[i] = None,
                    Ok(n) => {
                        let room = OUTPUT_KEPT.saturating_sub(self.output[i].len());
                        self.output[i].extend_from_slice(&chunk[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => self.pipes[i] = None,
                }
            }
        }
    }

    /// Reap it if it exited (its verdict), kill it if `now` is past its
    /// deadline (refused); None while it runs.
    pub fn poll_done(&mut self, now: Instant) -> Option<Result<CheckAnswer, String>> {
        let status = match self.child.try_wait() {
            Ok(Some(st)) => st,
            Ok(None) if now < self.deadline => return None,
            Ok(None) => {
                self.kill();
                return Some(Err(format!("{} {} did not answer within {:?}", self.exe.display(), ARG_CHECK, CHECK_TIMEOUT)));
            }
            Err(e) => return Some(Err(format!("wait for {} {}: {}", self.exe.display(), ARG_CHECK, e))),
        };
        // Whatever a process it left behind still writes is not waited for.
        self.absorb();
        super::orphans::end_group(self.pid());
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let (out, err) = (text(&self.output[0]), text(&self.output[1]));
        Some(verdict(&self.exe, &self.expected, status.success(), &status.to_string(), &out, &err))
    }

    /// SIGKILL to its process group, and reap it.
    pub fn kill(&mut self) {
        let pid = self.pid();
        let _ = sys::kill_group(pid, libc::SIGKILL).or_else(|_| sys::kill(pid, libc::SIGKILL));
        let _ = self.child.wait();
    }
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
    read_state_bytes(fd).map(|(h, _)| h)
}

/// The state and its bytes, from an inherited fd (taken over and closed).
fn read_state_bytes(fd: &str) -> Result<(Handover, Vec<u8>), String> {
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
    let h = handover::parse(&bytes, handover::accepted_version())?;
    Ok((h, bytes))
}

/// `zdrestart --handover-check FD`: would this binary take the state over?
/// What the new image checks is checked here (format, version, structure,
/// config, listen address), but that the fds are open: the check runs
/// beside the master's loop, which opens and closes fds meanwhile, and the
/// master checks the fds of the state it execs with, at the exec. Prints one
/// line: the [`CheckAnswer`] (JSON), exit 0; or why not, exit 1.
pub fn check_main(fd: &str) -> i32 {
    match check_state(fd) {
        Ok(answer) => {
            println!("{}", serde_json::to_string(&answer).unwrap_or_default());
            0
        }
        Err(e) => {
            println!("{}", e);
            1
        }
    }
}

fn check_state(fd: &str) -> Result<CheckAnswer, String> {
    let (h, bytes) = read_state_bytes(fd)?;
    let cfg = crate::config::Config::load(&h.config_path).map_err(|e| format!("bad config: {}", e))?;
    if cfg.listen_display() != h.listen {
        return Err(format!("listen address changed: {} in the config, the master listens on {}", cfg.listen_display(), h.listen));
    }
    Ok(CheckAnswer {
        digest: handover::digest(&bytes),
        handover_version: handover::accepted_version(),
        version: crate::VERSION.to_string(),
        magic: crate::MAGIC,
        workers: h.master.workers.len(),
        fds: handover::fds(&h).len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        Expected { digest: handover::digest(b"state"), workers: 2, fds: 9 }
    }

    fn answer() -> CheckAnswer {
        let e = expected();
        CheckAnswer { digest: e.digest, handover_version: HANDOVER_VERSION, version: "9.9.9".into(), magic: 7, workers: 2, fds: 9 }
    }

    fn judge(ok: bool, out: &str) -> Result<CheckAnswer, String> {
        verdict(Path::new("/usr/sbin/zdrestart"), &expected(), ok, "exit status 0", out, "")
    }

    #[test]
    fn only_the_digest_of_this_state_passes() {
        let good = serde_json::to_string(&answer()).unwrap();
        assert_eq!(judge(true, &format!("\n{}\nmore\n", good)).unwrap(), answer());
        // Unknown fields of a newer binary are fine.
        let newer = good.replacen('{', "{\"extra\":1,", 1);
        assert!(judge(true, &newer).is_ok());
        // What the check printed before it answered with a digest: refused, with what was seen.
        let old = "ok: zdrestart 0.1.0 (magic 1, hand-over version 1)";
        let e = judge(true, old).unwrap_err();
        assert!(e.contains(&format!("answered {:?}", old)) && e.contains(&expected().digest), "{}", e);
        for spoil in [
            |a: &mut CheckAnswer| a.digest = handover::digest(b"other"),
            |a: &mut CheckAnswer| a.handover_version += 1,
            |a: &mut CheckAnswer| a.workers = 1,
            |a: &mut CheckAnswer| a.fds = 10,
        ] {
            let mut a = answer();
            spoil(&mut a);
            assert!(judge(true, &serde_json::to_string(&a).unwrap()).is_err(), "{:?}", a);
        }
        assert!(judge(true, "").unwrap_err().contains("printed nothing"));
        let e = verdict(Path::new("/x"), &expected(), false, "exit status 1", "incompatible hand-over version 1", "").unwrap_err();
        assert_eq!(e, "/x --handover-check (exit status 1): incompatible hand-over version 1");
    }
}

//! fork and exec of a worker or probe, shaped like the Rust standard
//! library's unix `Command::spawn`: everything is prepared before fork, the
//! child runs one function (`Child::child_exec`) whose steps return
//! `Result<Infallible, Failure>` and use `?`, and a failure is reported to
//! the parent over a close-on-exec pipe as (stage, errno).
//!
//! Owns the child side between fork and exec, where only async-signal-safe
//! calls are allowed: no allocation, no locks, no logging. The fd layout
//! (listeners at 3.., then the report pipe, then the control pipe) comes from
//! [`crate::protocol`]; the environment is the caller's ([`SpawnSpec`]).

use super::{pipe, strerror, wait};
use crate::protocol;
use std::convert::Infallible;
use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the child closes fds with close_range(2) (else close() in a loop).
static CLOSE_RANGE: AtomicBool = AtomicBool::new(true);

/// Make every later spawn close fds with close() up to RLIMIT_NOFILE instead
/// of close_range(2), as on kernels before 5.9 (`ZDRESTART_NO_CLOSE_RANGE=1`,
/// for tests of that path).
pub fn disable_close_range() {
    CLOSE_RANGE.store(false, Ordering::Relaxed);
}

/// Everything a worker needs between fork and exec, built before fork.
pub struct SpawnSpec {
    /// Absolute path of the program.
    pub path: CString,
    pub argv: Vec<CString>,
    /// `KEY=VALUE` entries, without those of `pid_vars`.
    pub env: Vec<CString>,
    /// Variables whose value is the child's own pid, filled in by the child
    /// (`LISTEN_PID`, `WATCHDOG_PID`).
    pub pid_vars: Vec<&'static str>,
    /// Passed as fds 3, 4, ... in this order.
    pub listen_fds: Vec<RawFd>,
    /// Switch to this (uid, gid) before exec.
    pub user: Option<(u32, u32)>,
}

/// A started child: its pid, the read ends of its report and output pipes,
/// and the write end of its control pipe.
pub struct Spawned {
    pub pid: u32,
    pub notify: OwnedFd,
    pub output: OwnedFd,
    pub control: OwnedFd,
}

/// The step of the child that failed; its number is the first byte of the
/// report on the exec-error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    /// Moving the fds into place (fcntl, dup2).
    Dup2 = 1,
    Setgroups = 2,
    Setgid = 3,
    Setuid = 4,
    Execve = 5,
    /// prctl(PR_SET_PDEATHSIG).
    Prctl = 6,
    /// setpgid(0, 0): the child leads its own process group.
    Setpgid = 7,
    /// Closing every fd the child must not get (close_range, or close).
    CloseFds = 8,
}

impl Stage {
    const ALL: [Stage; 8] = [
        Stage::Dup2,
        Stage::Setgroups,
        Stage::Setgid,
        Stage::Setuid,
        Stage::Execve,
        Stage::Prctl,
        Stage::Setpgid,
        Stage::CloseFds,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Dup2 => "dup2",
            Stage::Setgroups => "setgroups",
            Stage::Setgid => "setgid",
            Stage::Setuid => "setuid",
            Stage::Execve => "execve",
            Stage::Prctl => "prctl",
            Stage::Setpgid => "setpgid",
            Stage::CloseFds => "close_range",
        }
    }

    fn from_byte(b: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u8 == b)
    }
}

/// A failed step of the child: the stage and errno.
type Failure = (Stage, i32);

/// Length of the report: the stage byte and errno in native byte order.
const REPORT_LEN: usize = 5;

/// The fds the child moves into place, with their targets.
struct Fds<'a> {
    /// The listeners, then the report pipe's write end, the output pipe's
    /// write end, /dev/null, the exec-error pipe's write end and the control
    /// pipe's read end (see [`Fds::NOTIFY`] ...).
    sources: &'a [RawFd],
    /// Where each source was moved above the target range (filled in by the child).
    moved: &'a mut [RawFd],
    nlisten: usize,
}

impl Fds<'_> {
    const NOTIFY: usize = 0;
    const OUTPUT: usize = 1;
    const DEVNULL: usize = 2;
    const ERROR: usize = 3;
    const CONTROL: usize = 4;
    const EXTRA: usize = 5;

    /// The moved copy of protocol fd `k` (one of the constants above).
    fn moved(&self, k: usize) -> RawFd {
        self.moved[self.nlisten + k]
    }
}

/// What the child needs, prepared before fork.
struct Child<'a> {
    spec: &'a SpawnSpec,
    fds: Fds<'a>,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// Where the digits of each `<pid var>=` go: the buffers that `envp`
    /// points into (one raw pointer for both, so that writing does not
    /// invalidate the pointer execve reads), each with room for 24 bytes.
    pid_digits: &'a [*mut u8],
    master_pid: libc::pid_t,
    /// Where a failure is reported: the exec-error pipe (moved with the rest).
    report_fd: RawFd,
    /// One past the highest fd number that can be open (RLIMIT_NOFILE, read
    /// before fork): where the close() fallback stops.
    fd_limit: RawFd,
    /// Try close_range(2) first ([`disable_close_range`]).
    close_range: bool,
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno; reading it is
    // async-signal-safe.
    unsafe { *libc::__errno_location() }
}

/// `r` unless it is negative: then the stage and errno.
fn at(stage: Stage, r: libc::c_int) -> Result<libc::c_int, Failure> {
    if r < 0 {
        Err((stage, errno()))
    } else {
        Ok(r)
    }
}

/// fork and exec a worker per the worker protocol: listeners at fds 3..,
/// report pipe at [`protocol::notify_fd`] and the read end of the control
/// pipe (lines from the master) at [`protocol::control_fd`]
/// (`ZDRESTART_NOTIFY_FD` and `ZDRESTART_CONTROL_FD` must say so), stdout and
/// stderr into one output pipe, stdin from /dev/null, signal dispositions
/// reset with SIGUSR2 ignored, every other fd closed, its own process
/// group, PDEATHSIG SIGKILL, optional user switch. An
/// exec failure is returned as an error naming the failed step, with the
/// child already reaped.
pub fn spawn(spec: &SpawnSpec) -> io::Result<Spawned> {
    let (err_r, err_w) = pipe()?;
    let (notify_r, notify_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (control_r, control_w) = pipe()?;
    let devnull = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;

    // argv/envp pointer arrays; each pid variable's entry is a buffer the
    // child fills in without allocating.
    let mut pid_vars: Vec<Vec<u8>> = spec.pid_vars.iter().map(|v| [v.as_bytes(), b"=", &[0u8; 24]].concat()).collect();
    let entries: Vec<*mut u8> = pid_vars.iter_mut().map(|b| b.as_mut_ptr()).collect();
    // SAFETY: each buffer is the name, '=' and 24 bytes: the digits start
    // within it.
    let pid_digits: Vec<*mut u8> = entries.iter().zip(&spec.pid_vars).map(|(&p, v)| unsafe { p.add(v.len() + 1) }).collect();
    let argv = pointers(&spec.argv, &[]);
    let envp = pointers(&spec.env, &entries);

    let n = spec.listen_fds.len();
    let sources = child_fds(&spec.listen_fds, [notify_w.as_fd(), out_w.as_fd(), devnull.as_fd(), err_w.as_fd(), control_r.as_fd()]);
    let mut moved: Vec<RawFd> = vec![-1; sources.len()];
    let mut child = Child {
        spec,
        fds: Fds { sources: &sources, moved: &mut moved, nlisten: n },
        argv: &argv,
        envp: &envp,
        pid_digits: &pid_digits,
        master_pid: std::process::id() as libc::pid_t,
        report_fd: err_w.as_raw_fd(),
        fd_limit: fd_limit(),
        close_range: CLOSE_RANGE.load(Ordering::Relaxed),
    };

    let old = block_signals();
    // SAFETY: the master is single-threaded, and the child below only makes
    // async-signal-safe calls on memory prepared before fork (no allocation,
    // no locks, no logging) and ends in execve or _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the child of fork; `child` holds only memory and fd
        // numbers prepared above.
        unsafe { child.run() }
    }
    let fork_err = if pid < 0 { Some(io::Error::last_os_error()) } else { None };
    restore_signals(&old);
    if let Some(e) = fork_err {
        return Err(io::Error::new(e.kind(), format!("fork: {}", strerror(&e))));
    }
    let pid = pid as u32;
    // The child does it too: whichever runs first, the group exists before
    // the master signals it or the child execs.
    let _ = super::own_process_group(pid);
    // Our copies of the child's ends must go, or EOF never comes.
    drop((err_w, notify_w, out_w, control_r, devnull));
    exec_report(pid, err_r, spec)?;
    Ok(Spawned { pid, notify: notify_r, output: out_r, control: control_w })
}

/// A NULL-terminated array of pointers to `strings` (and `last`), as
/// execve takes argv and envp.
fn pointers(strings: &[CString], last: &[*mut u8]) -> Vec<*const libc::c_char> {
    let last = last.iter().map(|&p| p as *const libc::c_char);
    strings.iter().map(|s| s.as_ptr()).chain(last).chain(std::iter::once(std::ptr::null())).collect()
}

/// The fds the child moves into place, in its order: the listeners, then
/// (in [`Fds`] order) the report pipe, the output pipe, /dev/null, the exec
/// report pipe, the control pipe.
fn child_fds(listeners: &[RawFd], extra: [BorrowedFd; Fds::EXTRA]) -> Vec<RawFd> {
    let mut sources: Vec<RawFd> = listeners.to_vec();
    sources.extend([0; Fds::EXTRA]);
    let n = listeners.len();
    let [notify, output, devnull, error, control] = extra;
    sources[n + Fds::NOTIFY] = notify.as_raw_fd();
    sources[n + Fds::OUTPUT] = output.as_raw_fd();
    sources[n + Fds::DEVNULL] = devnull.as_raw_fd();
    sources[n + Fds::ERROR] = error.as_raw_fd();
    sources[n + Fds::CONTROL] = control.as_raw_fd();
    sources
}

/// What the child reported before its exec (nothing: it exec'd); a
/// failure is an error naming the stage, the child reaped.
fn exec_report(pid: u32, err_r: OwnedFd, spec: &SpawnSpec) -> io::Result<()> {
    let Some((stage, errno)) = read_report(err_r)? else { return Ok(()) };
    let _ = wait(pid);
    let e = io::Error::from_raw_os_error(errno);
    let what = match stage {
        Some(Stage::Execve) => format!("execve {}", spec.path.to_string_lossy()),
        Some(s) => s.name().to_string(),
        None => "child".to_string(),
    };
    Err(io::Error::new(e.kind(), format!("{}: {}", what, strerror(&e))))
}

/// The soft RLIMIT_NOFILE, capped (an unlimited one must not make the
/// close() fallback loop for ever).
fn fd_limit() -> RawFd {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the local we pass.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if r != 0 {
        return 65_536;
    }
    lim.rlim_cur.min(1 << 20) as RawFd
}

/// Block every signal across fork so that no handler of ours runs in the
/// child before its dispositions are reset. Returns the mask to restore.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask write only
    // the sets we pass.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: restores a mask saved by block_signals.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
    }
}

/// The child's report: None when the pipe closed empty (exec succeeded),
/// else (stage, errno).
fn read_report(err_r: OwnedFd) -> io::Result<Option<(Option<Stage>, i32)>> {
    let mut report = [0u8; REPORT_LEN];
    let mut got = 0;
    let mut f = std::fs::File::from(err_r);
    while got < report.len() {
        match f.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if got == 0 {
        return Ok(None);
    }
    let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
    Ok(Some((Stage::from_byte(report[0]), errno)))
}

impl Child<'_> {
    /// The child side: exec, or report the failed stage and `_exit(127)`.
    ///
    /// # Safety
    /// Only in the child of fork, with every signal blocked.
    unsafe fn run(&mut self) -> ! {
        // SAFETY: the caller's contract.
        let Err((stage, errno)) = unsafe { self.child_exec() };
        let mut msg = [0u8; REPORT_LEN];
        msg[0] = stage as u8;
        msg[1..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: write and _exit are async-signal-safe; msg is a local array.
        unsafe {
            libc::write(self.report_fd, msg.as_ptr() as *const libc::c_void, REPORT_LEN);
            libc::_exit(127)
        }
    }

    /// Every step between fork and exec, in order; returns only on failure.
    ///
    /// # Safety
    /// As [`run`](Self::run): only async-signal-safe calls follow.
    unsafe fn child_exec(&mut self) -> Result<Infallible, Failure> {
        self.move_fds()?;
        self.close_other_fds()?;
        // Its own process group, so that the master's signals reach every
        // process the worker starts, and what is left of it once it is gone.
        // SAFETY: setpgid with integer arguments.
        at(Stage::Setpgid, unsafe { libc::setpgid(0, 0) })?;
        reset_signal_dispositions();
        // SIGKILL, not SIGTERM: a worker that ignores SIGTERM must not keep
        // serving once its master is gone.
        // SAFETY: prctl with integer arguments.
        at(Stage::Prctl, unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) })?;
        // The master may have died before PDEATHSIG was set.
        // SAFETY: getppid and _exit are async-signal-safe.
        unsafe {
            if libc::getppid() != self.master_pid {
                libc::_exit(1);
            }
        }
        if let Some((uid, gid)) = self.spec.user {
            switch_user(uid, gid)?;
        }
        self.write_pid_vars();
        // SAFETY: an all-zero sigset_t is the empty set; execve gets
        // NUL-terminated arrays of pointers to CStrings that outlive it.
        unsafe {
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(self.spec.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        }
        Err((Stage::Execve, errno()))
    }

    /// Listeners to 3.., the report and control pipes to their protocol fds,
    /// /dev/null to 0, the output pipe to 1 and 2.
    fn move_fds(&mut self) -> Result<(), Failure> {
        let fds = &mut self.fds;
        let n = fds.nlisten;
        let (notify_target, control_target) = (protocol::notify_fd(n), protocol::control_fd(n));
        // Move every fd we pass above the target range first, so that a
        // dup2 onto 3.. never clobbers a source still needed.
        let base = control_target + 1;
        for (i, &src) in fds.sources.iter().enumerate() {
            // SAFETY: fcntl on an fd number; failure is reported.
            fds.moved[i] = at(Stage::Dup2, unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, base) })?;
        }
        // The original exec-error fd may be a dup2 target below: report on the copy.
        self.report_fd = fds.moved(Fds::ERROR);
        let dup2 = |from: RawFd, to: RawFd| {
            // SAFETY: dup2 on fd numbers; failure is reported.
            at(Stage::Dup2, unsafe { libc::dup2(from, to) })
        };
        for (i, &m) in fds.moved[..n].iter().enumerate() {
            dup2(m, protocol::LISTEN_FDS_START + i as RawFd)?;
        }
        dup2(fds.moved(Fds::NOTIFY), notify_target)?;
        dup2(fds.moved(Fds::CONTROL), control_target)?;
        dup2(fds.moved(Fds::DEVNULL), 0)?;
        dup2(fds.moved(Fds::OUTPUT), 1)?;
        dup2(fds.moved(Fds::OUTPUT), 2)?;
        Ok(())
    }

    /// Close every fd above the protocol fds except the exec-error pipe
    /// (close-on-exec, it goes at exec): whatever the master inherited or
    /// opened without close-on-exec never reaches a worker. close_range(2)
    /// (Linux 5.9); before that, close() up to RLIMIT_NOFILE.
    fn close_other_fds(&mut self) -> Result<(), Failure> {
        let first = protocol::control_fd(self.fds.nlisten) + 1;
        let keep = self.report_fd;
        let ranges = [(first, keep - 1), (keep + 1, RawFd::MAX)];
        for (lo, hi) in ranges {
            if lo > hi {
                continue;
            }
            if self.close_range {
                // SAFETY: close_range takes integers and closes fds of this
                // (child) process only.
                let r = unsafe { libc::syscall(libc::SYS_close_range, lo as libc::c_uint, hi as libc::c_uint, 0 as libc::c_uint) };
                if r == 0 {
                    continue;
                }
                if !matches!(errno(), libc::ENOSYS | libc::EINVAL | libc::EPERM) {
                    return Err((Stage::CloseFds, errno()));
                }
            }
            for fd in lo..hi.min(self.fd_limit.saturating_sub(1)).saturating_add(1) {
                // SAFETY: close is async-signal-safe; EBADF for a closed fd is harmless.
                unsafe { libc::close(fd) };
            }
        }
        Ok(())
    }

    /// Decimal digits of our pid, written into the reserved slot of each
    /// pid variable's entry (no allocation).
    fn write_pid_vars(&mut self) {
        // SAFETY: getpid is async-signal-safe.
        let mut p = unsafe { libc::getpid() } as u64;
        let mut digits = [0u8; 20];
        let mut k = 0;
        loop {
            digits[k] = b'0' + (p % 10) as u8;
            k += 1;
            p /= 10;
            if p == 0 {
                break;
            }
        }
        for &slot in self.pid_digits {
            for j in 0..k {
                // SAFETY: k <= 20 < 24, the room reserved at each slot.
                unsafe { *slot.add(j) = digits[k - 1 - j] };
            }
            // SAFETY: as above.
            unsafe { *slot.add(k) = 0 };
        }
    }
}

/// Default dispositions for everything; SIGUSR2 ignored: a stray `killall
/// -USR2` must not kill workers.
fn reset_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: signal(2) with a constant disposition is async-signal-safe.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
}

/// setgroups, setgid, setuid, in that order (groups and gid while still root).
fn switch_user(uid: u32, gid: u32) -> Result<(), Failure> {
    let groups = [gid];
    // SAFETY: setgroups reads one gid from a local array; setgid/setuid take integers.
    unsafe {
        at(Stage::Setgroups, libc::setgroups(1, groups.as_ptr()))?;
        at(Stage::Setgid, libc::setgid(gid))?;
        at(Stage::Setuid, libc::setuid(uid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_byte(s as u8), Some(s));
        }
        assert_eq!(Stage::from_byte(0), None);
    }

    fn spec(path: &str, argv: &[&str]) -> SpawnSpec {
        SpawnSpec {
            path: CString::new(path).unwrap(),
            argv: argv.iter().map(|a| CString::new(*a).unwrap()).collect(),
            env: vec![CString::new("PATH=/usr/bin:/bin").unwrap()],
            pid_vars: vec!["LISTEN_PID", "WATCHDOG_PID"],
            listen_fds: Vec::new(),
            user: None,
        }
    }

    #[test]
    fn exec_failure_names_the_stage_and_reaps() {
        let e = spawn(&spec("/nonexistent/zd", &["zd"])).err().expect("exec must fail");
        assert_eq!(e.to_string(), "execve /nonexistent/zd: No such file or directory");
    }

    #[test]
    fn child_gets_its_pid_and_the_protocol_fds() {
        // Prints LISTEN_PID and WATCHDOG_PID, then writes to the report pipe
        // at fd 3 (no listeners).
        let script = "echo $LISTEN_PID $WATCHDOG_PID; echo READY=1 >&3; test -e /proc/self/fd/4 && echo control";
        let sp = spawn(&spec("/bin/sh", &["sh", "-c", script])).unwrap();
        let status = wait(sp.pid).unwrap();
        assert!(status.success(), "{}", status);
        let mut out = String::new();
        std::fs::File::from(sp.output).read_to_string(&mut out).unwrap();
        assert_eq!(out, format!("{} {}\ncontrol\n", sp.pid, sp.pid));
        let mut report = String::new();
        std::fs::File::from(sp.notify).read_to_string(&mut report).unwrap();
        assert_eq!(report, "READY=1\n");
    }
}

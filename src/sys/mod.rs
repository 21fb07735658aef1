//! All `unsafe` code of zdrestart, wrapped in small safe functions.
//!
//! Owns the raw system calls: fd adoption and flags, pipes, poll, pidfds,
//! waitpid, kill, fork/exec of workers, user lookup. Every `unsafe` block has a
//! `// SAFETY:` comment. It must not hold policy: callers decide what to do
//! with each result; nothing here logs.
#![allow(unsafe_code)]

mod procs;
pub use procs::*;

use std::io;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Take ownership of an inherited fd (e.g. a listener passed as fd 3), after
/// checking that it is open, and mark it close-on-exec. Call it at most once
/// per fd number: the returned `OwnedFd` closes it on drop.
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD/F_SETFD only read and set flags of an fd number; an
    // invalid number gives EBADF, which we report.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    // SAFETY: the fd is open (F_GETFD succeeded) and the caller promises that
    // nothing else in this process owns it, so the OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Set or clear O_NONBLOCK.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a borrowed (hence open) fd only change its flags.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let new = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, new) })?;
    Ok(())
}

/// A pipe whose both ends are close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array we pass; on success we are
    // their only owner.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// poll(2) once. EINTR is returned as `Ok(0)` so that the caller recomputes
/// its deadlines and polls again. `timeout` None waits forever.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms: libc::c_int = match timeout {
        None => -1,
        // Round up so that a deadline 0.4 ms away does not spin.
        Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: the pointer and length describe a valid, exclusively borrowed slice.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// pidfd_open(2): an fd that becomes readable when `pid` exits. ENOSYS on
/// kernels before 5.3, where callers fall back to SIGCHLD.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd (CLOEXEC
    // by default) or -1; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exit status {}", c),
            ExitStatus::Signal(s) => write!(f, "signal {} ({})", s, signal_name(s)),
        }
    }
}

/// The usual name of a signal number.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        _ => "signal",
    }
}

/// waitpid(pid, WNOHANG): `Some` once the child has exited (and is reaped).
pub fn try_wait(pid: u32) -> io::Result<Option<ExitStatus>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes the status into a local int.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        break;
    }
    Ok(Some(decode_status(status)))
}

/// waitpid(pid, 0): block until the child exits.
pub fn wait(pid: u32) -> io::Result<ExitStatus> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: as in try_wait.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        return Ok(decode_status(status));
    }
}

fn decode_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

/// kill(2).
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill takes plain integers; pid > 0 so it targets one process.
    cvt(unsafe { libc::kill(pid as libc::pid_t, sig) })?;
    Ok(())
}

/// Does a process with this pid exist (kill(pid, 0), EPERM counts as alive)?
pub fn process_alive(pid: u32) -> bool {
    match kill(pid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// Look up a user: (uid, primary gid), or None if there is no such user.
pub fn lookup_user(name: &str) -> io::Result<Option<(u32, u32)>> {
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value of this plain C struct.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live local storage of the stated size;
    // getpwnam_r fills pw (pointing into buf) and sets result.
    let r = unsafe {
        libc::getpwnam_r(cname.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut result)
    };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    if result.is_null() {
        return Ok(None);
    }
    Ok(Some((pw.pw_uid, pw.pw_gid)))
}

/// Everything a worker needs between fork and exec, built before fork.
pub struct SpawnSpec {
    /// Absolute path of the program.
    pub path: CString,
    pub argv: Vec<CString>,
    /// `KEY=VALUE` entries, without LISTEN_PID (filled in by the child).
    pub env: Vec<CString>,
    /// Add `LISTEN_PID=<child pid>` to the environment.
    pub listen_pid: bool,
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

/// The step of the child that failed, reported over the exec-error pipe.
const STAGES: [&str; 7] = ["", "dup2", "setgroups", "setgid", "setuid", "execve", "prctl"];

/// fork and exec a worker per the worker protocol: listeners at fds 3..,
/// report pipe at the next fd and the read end of the control pipe (lines
/// from the master) at the one after (`ZDRESTART_NOTIFY_FD` and
/// `ZDRESTART_CONTROL_FD` must say so; see [`notify_fd_number`] and
/// [`control_fd_number`]), stdout and stderr into one output pipe, stdin from
/// /dev/null, signal dispositions reset with SIGUSR2 ignored, PDEATHSIG
/// SIGTERM, optional user switch. An exec failure is returned as an error
/// naming the failed step, with the child already reaped.
pub fn spawn(spec: &SpawnSpec) -> io::Result<Spawned> {
    let (err_r, err_w) = pipe()?;
    let (notify_r, notify_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (control_r, control_w) = pipe()?;
    let devnull = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;

    // argv/envp pointer arrays; the LISTEN_PID entry is a buffer the child
    // fills in without allocating.
    let mut listen_pid_buf: Vec<u8> = b"LISTEN_PID=".to_vec();
    let listen_pid_at = listen_pid_buf.len();
    listen_pid_buf.extend_from_slice(&[0u8; 24]);
    let argv_ptrs: Vec<*const libc::c_char> =
        spec.argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let mut envp: Vec<*const libc::c_char> = spec.env.iter().map(|e| e.as_ptr()).collect();
    if spec.listen_pid {
        envp.push(listen_pid_buf.as_ptr() as *const libc::c_char);
    }
    envp.push(std::ptr::null());
    let buf_ptr = listen_pid_buf.as_mut_ptr();

    let nlisten = spec.listen_fds.len() as RawFd;
    let notify_target = 3 + nlisten;
    let control_target = notify_target + 1;
    let base = control_target + 1;
    let sources: Vec<RawFd> = spec
        .listen_fds
        .iter()
        .copied()
        .chain([
            notify_w.as_raw_fd(),
            out_w.as_raw_fd(),
            devnull.as_raw_fd(),
            err_w.as_raw_fd(),
            control_r.as_raw_fd(),
        ])
        .collect();
    let mut moved: Vec<RawFd> = vec![-1; sources.len()];
    let master_pid = std::process::id() as libc::pid_t;
    let err_fd = err_w.as_raw_fd();

    // Block every signal across fork so that no handler of ours runs in the
    // child before its dispositions are reset.
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask write only
    // the sets we pass.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }

    // SAFETY: the master is single-threaded, and the child below only makes
    // async-signal-safe calls on memory prepared before fork (no allocation,
    // no locks, no logging) and ends in execve or _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Child.
        // SAFETY: every call is async-signal-safe and touches only the
        // pre-built buffers and fd numbers captured above.
        unsafe {
            let fail = |stage: u8, fd: RawFd| -> ! {
                let errno = *libc::__errno_location();
                let mut msg = [0u8; 5];
                msg[0] = stage;
                msg[1..5].copy_from_slice(&errno.to_ne_bytes());
                libc::write(fd, msg.as_ptr() as *const libc::c_void, 5);
                libc::_exit(127)
            };
            // Move every fd we pass above the target range first, so that a
            // dup2 onto 3.. never clobbers a source still needed.
            for (i, &src) in sources.iter().enumerate() {
                let m = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, base);
                if m < 0 {
                    fail(1, err_fd);
                }
                moved[i] = m;
            }
            let n = nlisten as usize;
            let (m_notify, m_out, m_null, m_err, m_control) =
                (moved[n], moved[n + 1], moved[n + 2], moved[n + 3], moved[n + 4]);
            #[allow(clippy::needless_range_loop)] // the index is the target fd number
            for i in 0..n {
                if libc::dup2(moved[i], 3 + i as RawFd) < 0 {
                    fail(1, m_err);
                }
            }
            if libc::dup2(m_notify, notify_target) < 0
                || libc::dup2(m_control, control_target) < 0
                || libc::dup2(m_null, 0) < 0
                || libc::dup2(m_out, 1) < 0
                || libc::dup2(m_out, 2) < 0
            {
                fail(1, m_err);
            }
            // Default dispositions for everything; SIGUSR2 ignored: a stray
            // `killall -USR2` must not kill workers.
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            libc::signal(libc::SIGUSR2, libc::SIG_IGN);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) < 0 {
                fail(6, m_err);
            }
            // The master may have died before PDEATHSIG was set.
            if libc::getppid() != master_pid {
                libc::_exit(1);
            }
            if let Some((uid, gid)) = spec.user {
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) < 0 {
                    fail(2, m_err);
                }
                if libc::setgid(gid) < 0 {
                    fail(3, m_err);
                }
                if libc::setuid(uid) < 0 {
                    fail(4, m_err);
                }
            }
            if spec.listen_pid {
                // Decimal digits of our pid, written into the reserved slot.
                let mut p = libc::getpid() as u64;
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
                for j in 0..k {
                    *buf_ptr.add(listen_pid_at + j) = digits[k - 1 - j];
                }
                *buf_ptr.add(listen_pid_at + k) = 0;
            }
            let empty: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(spec.path.as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr());
            fail(5, m_err);
        }
    }
    let fork_err = if pid < 0 { Some(io::Error::last_os_error()) } else { None };
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    if let Some(e) = fork_err {
        return Err(io::Error::new(e.kind(), format!("fork: {}", strerror(&e))));
    }
    let pid = pid as u32;
    // Our copies of the child's ends must go, or EOF never comes.
    drop(err_w);
    drop(notify_w);
    drop(out_w);
    drop(control_r);
    drop(devnull);
    let mut report = [0u8; 5];
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
        return Ok(Spawned { pid, notify: notify_r, output: out_r, control: control_w });
    }
    let _ = wait(pid);
    let stage = STAGES.get(report[0] as usize).copied().unwrap_or("child");
    let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
    let e = io::Error::from_raw_os_error(errno);
    let what = if report[0] == 5 {
        format!("execve {}", spec.path.to_string_lossy())
    } else {
        stage.to_string()
    };
    Err(io::Error::new(e.kind(), format!("{}: {}", what, strerror(&e))))
}

/// The fd number at which a child with `nlisten` listeners finds its report pipe.
pub fn notify_fd_number(nlisten: usize) -> RawFd {
    3 + nlisten as RawFd
}

/// The fd number at which a child with `nlisten` listeners finds its control pipe.
pub fn control_fd_number(nlisten: usize) -> RawFd {
    notify_fd_number(nlisten) + 1
}

/// The text of an OS error without Rust's " (os error N)" suffix.
pub fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Make sure fds 0, 1 and 2 are open (on /dev/null if they were closed), so
/// that no socket or pipe created later lands on them and receives what is
/// meant for stdout or stderr.
pub fn ensure_std_fds() -> io::Result<()> {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries flags; EBADF means the fd is closed.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
            let raw = f.as_raw_fd();
            if raw != fd {
                // SAFETY: dup2 onto a closed fd number; `f` is dropped after.
                cvt(unsafe { libc::dup2(raw, fd) })?;
            } else {
                // It landed exactly on the hole: keep it open (and inheritable).
                std::mem::forget(f);
            }
        }
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds (sd_notify(3) `MONOTONIC_USEC=`).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the local we pass;
    // CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

//! Every `unsafe` call of the test harness, and of the test files that use
//! it, wrapped in small safe functions: signals, waitid without reaping,
//! peeking at a socket, fds, FIFOs, clocks, poll(2), and the pre-exec hook
//! that ties a process the harness starts to the test binary's life.
//!
//! The rest of the harness and every test file deny `unsafe_code`; this is
//! the one module allowed it (tests/common/lib.rs). Each block says why it
//! is sound in a `// SAFETY:` comment. It must not hold test logic.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus};

/// Send a signal to a pid (or, negative, a process group). True on success.
pub fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// CLOCK_MONOTONIC now, in microseconds (the clock of sd_notify's
/// `MONOTONIC_USEC=`).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the local it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC): {}", io::Error::last_os_error());
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`: the unit of the times in
/// /proc/<pid>/stat).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf(3) has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(n > 0, "sysconf(_SC_CLK_TCK): {}", io::Error::last_os_error());
    n as u64
}

/// The exit status of child `pid` if it has exited, leaving it a zombie
/// (waitid(2) with WNOWAIT): the pid stays reserved until it is reaped.
pub fn exited_not_reaped(pid: i32) -> Option<ExitStatus> {
    // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is a valid, exclusively borrowed siginfo_t; waitid only writes to it.
    let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
    // SAFETY: after a successful waitid, si_pid is set (0 when nothing exited yet).
    if rc != 0 || unsafe { info.si_pid() } == 0 {
        return None;
    }
    // SAFETY: for a CLD_* siginfo filled by waitid, si_status is valid.
    let status = unsafe { info.si_status() };
    // Back to the wait(2) status encoding that ExitStatus::from_raw takes.
    let raw = match info.si_code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => (status & 0x7f) | 0x80,
        _ => status & 0x7f,
    };
    Some(ExitStatus::from_raw(raw))
}

/// What a non-blocking one-byte `recv(MSG_PEEK)` finds on a socket: Ok(0)
/// at EOF, Ok(1) when a byte waits, the error otherwise (`WouldBlock` when
/// nothing waits). Consumes nothing.
pub fn peek_byte(fd: RawFd) -> io::Result<usize> {
    let mut b = [0u8; 1];
    // SAFETY: b is a valid buffer of 1 byte; recv(2) with MSG_PEEK only writes into it.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A copy of `fd` at a number >= `min` without FD_CLOEXEC: every process
/// this test process starts while it is open inherits it. Closed on drop.
pub fn inheritable_dup(fd: RawFd, min: RawFd) -> OwnedFd {
    // SAFETY: F_DUPFD creates a new fd (no FD_CLOEXEC) and touches no memory.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD, min) };
    assert!(new >= min, "fcntl F_DUPFD: {}", io::Error::last_os_error());
    // SAFETY: new was just created and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(new) }
}

/// mkfifo(3) with mode 0600; panics naming the path on failure.
pub fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path; mkfifo(3) has no other precondition.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}: {}", path.display(), io::Error::last_os_error());
}

/// poll(2) on `fds` for at most `timeout_ms` (-1: no limit). EINTR is
/// returned as an error like any other (the callers loop anyway).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: fds is a valid, exclusively borrowed array of pollfd of the given length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A TCP socket bound to 127.0.0.1:`port` (0: the kernel's choice) with
/// `SO_REUSEPORT` (and `SO_REUSEADDR`), listening only if `listen`. A bound
/// socket that never listens reserves the port: connections to it are
/// refused, and no other socket can bind it unless it also sets
/// `SO_REUSEPORT` (as the harness's own listeners on that port do).
pub fn reuseport_socket(port: u16, listen: bool) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory-safety preconditions; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEPORT, libc::SO_REUSEADDR] {
        // SAFETY: the option value is a valid c_int of the length given.
        let rc = unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&one as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as u32)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: addr is a valid sockaddr_in of the length given.
    let rc = unsafe {
        libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our own fd has no memory-safety preconditions.
    if listen && unsafe { libc::listen(fd, 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// The local port of a bound socket.
pub fn local_port(fd: &OwnedFd) -> io::Result<u16> {
    // SAFETY: an all-zero sockaddr_in is valid for getsockname to fill in.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: addr and len are valid, exclusively borrowed, of the sizes given.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u16::from_be(addr.sin_port))
}

/// Make `cmd`'s process die with the thread of this process that starts it
/// (`PR_SET_PDEATHSIG` = SIGKILL, kept across execve): when the test binary
/// is killed, even with SIGKILL, the kernel kills the process too. (The
/// signal comes when the *thread* that forked exits: libtest runs each test
/// on a thread of its own that outlives everything the test starts.)
pub fn die_with_this_thread(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe calls (prctl, getppid, raise, _exit) on values
    // copied before fork.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then no signal comes.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
                libc::_exit(127);
            }
            Ok(())
        });
    }
}

/// Make `cmd`'s child wait `d` between fork and exec, as a child does on a
/// loaded machine: meanwhile it holds a copy of every fd the test binary had
/// open at the fork (the harness's own test of "Text file busy").
pub fn linger_before_exec(cmd: &mut Command, d: std::time::Duration) {
    let ts = libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long };
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls nanosleep(2) (async-signal-safe) on a value copied before fork.
    unsafe {
        cmd.pre_exec(move || {
            let mut left = ts;
            while libc::nanosleep(&left, &mut left) != 0 {}
            Ok(())
        });
    }
}

/// A TCP connection to 127.0.0.1:`port` whose receive buffer is `rcvbuf`
/// bytes (set before `connect`, so that the window the server sees is
/// small), with the segment size of an Ethernet path (1460) instead of
/// loopback's 65483: the server's kernel then sizes its send buffer as it
/// would for a remote client (tens of kB), instead of taking a whole 1 MiB
/// answer off the server's hands.
pub fn connect_small_window(port: u16, rcvbuf: i32) -> io::Result<std::net::TcpStream> {
    // SAFETY: plain socket calls on a descriptor this function owns; every
    // pointer passed points at a live local of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = std::net::TcpStream::from_raw_fd(fd);
        let len = std::mem::size_of::<i32>() as libc::socklen_t;
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&rcvbuf as *const i32).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mss: i32 = 1460;
        if libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG, (&mss as *const i32).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let alen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::connect(fd, (&addr as *const libc::sockaddr_in).cast(), alen) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }
}


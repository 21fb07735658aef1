//! The system calls of the master's in-place upgrade (re-exec): an anonymous
//! file for the hand-over state, the close-on-exec flag of the fds kept
//! across the exec, the signal mask that carries signals over it, and
//! execv(3) itself. Policy (which fds, which signals) is the caller's.

use super::cvt;
use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// memfd_create(2): an anonymous file, close-on-exec (the caller clears the
/// flag on it just before exec if it hands it over).
pub fn memfd_create(name: &str) -> io::Result<OwnedFd> {
    let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid NUL-terminated name and flags; returns a new fd or -1.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: a new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Set (`on`) or clear FD_CLOEXEC on an fd number.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and set the flags of an fd number;
    // an invalid one gives EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, new) })?;
    Ok(())
}

/// Is `fd` an open fd of this process?
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any number only reads flags or fails with EBADF.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the local set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block (`block`) or unblock `signals` for the calling thread. The mask
/// survives execve(2), and signals that arrive meanwhile stay pending: that
/// is how none is lost, nor kills the process with its default action,
/// between the exec and the new image's handlers.
pub fn mask_signals(signals: &[i32], block: bool) -> io::Result<()> {
    let set = sigset(signals);
    let how = if block { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
    // SAFETY: a valid set; the old mask is not asked for (null).
    let r = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// execv(3): replace this process's image with `path`, `args` (argv[0]
/// included) and the current environment. Returns only on failure.
pub fn execv(path: &std::path::Path, args: &[&std::ffi::OsStr]) -> io::Error {
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        return io::Error::from_raw_os_error(libc::EINVAL);
    };
    let mut cargs = Vec::with_capacity(args.len());
    for a in args {
        match CString::new(a.as_bytes()) {
            Ok(c) => cargs.push(c),
            Err(_) => return io::Error::from_raw_os_error(libc::EINVAL),
        }
    }
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: path and argv are NUL-terminated strings owned by this frame,
    // argv is NULL-terminated; execv returns only on failure.
    unsafe { libc::execv(cpath.as_ptr(), argv.as_ptr()) };
    io::Error::last_os_error()
}

//! All `unsafe` code of zdrestart, wrapped in small safe functions.
//!
//! Owns the raw system calls: fd adoption and flags, pipes, poll, pidfds,
//! waitpid, kill, fork/exec of workers, user lookup. Every `unsafe` block has a
//! `// SAFETY:` comment. It must not hold policy: callers decide what to do
//! with each result; nothing here logs.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

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

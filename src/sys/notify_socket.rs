//! The receiving side of sd_notify(3) for the master's workers: an
//! `AF_UNIX` datagram socket bound at a path with `SO_PASSCRED`, the file
//! system group id to create it with (`setfsgid`), and
//! `recvmsg` that hands back each datagram with the kernel's credentials of
//! its sender (`SCM_CREDENTIALS`).
//!
//! Owns the raw calls only; who may report for which worker is decided by
//! `master::notify_socket`. File descriptors passed along with a datagram
//! (`SCM_RIGHTS`, e.g. `FDSTORE=1`) are closed here: the master never keeps
//! what a worker sends it.

use super::cvt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Bind a datagram socket at `path` (a file system socket: sd_notify(3)
/// clients that only take a path can reach it), with `SO_PASSCRED` on;
/// non-blocking and close-on-exec. The socket file gets the process's file
/// system ids (see [`with_fsgid`]) and a mode from the umask: the caller
/// binds it where nobody else can reach it yet and sets its mode after.
pub fn bind_notify_socket(path: &Path) -> io::Result<OwnedFd> {
    let sock = std::os::unix::net::UnixDatagram::bind(path)?;
    sock.set_nonblocking(true)?;
    let fd = OwnedFd::from(sock);
    let one: libc::c_int = 1;
    // SAFETY: the option value points at a local int of the stated size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Run `f` with the file system group id `gid` (setfsgid(2), needs
/// CAP_SETGID): what it creates belongs to that group, without CAP_CHOWN
/// (which the packaged unit does not have). The old id is restored after.
pub fn with_fsgid<T>(gid: Option<u32>, f: impl FnOnce() -> T) -> T {
    let Some(gid) = gid else { return f() };
    // SAFETY: setfsgid takes an integer and returns the previous fsgid.
    let old = unsafe { libc::setfsgid(gid) };
    let out = f();
    // SAFETY: as above.
    unsafe { libc::setfsgid(old as libc::gid_t) };
    out
}

/// The sender of a datagram as the kernel saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One datagram received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Bytes written into the buffer.
    pub len: usize,
    /// The datagram was longer than the buffer (the rest is lost).
    pub truncated: bool,
    /// `SCM_CREDENTIALS`, when the kernel attached them.
    pub creds: Option<Credentials>,
    /// File descriptors that came with it, all closed.
    pub fds_closed: usize,
}

/// Room for the credentials and a few passed fds; fds beyond it are
/// discarded by the kernel (`MSG_CTRUNC`), never installed.
const CMSG_SPACE: usize = 256;

/// Receive one datagram without blocking: None when there is none.
pub fn recv_datagram(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // u64 elements: cmsg headers need the alignment of size_t.
    let mut control = [0u64; CMSG_SPACE / 8];
    // SAFETY: an all-zero msghdr is a valid value of this C struct.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = loop {
        // SAFETY: msg points at the local iovec (describing `buf`) and the
        // local control buffer, both alive for the call. MSG_TRUNC makes the
        // kernel return the real length of a longer datagram; received fds
        // are close-on-exec from the start (MSG_CMSG_CLOEXEC).
        let r = unsafe {
            libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC)
        };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(e),
        }
    };
    let mut out = Datagram { len: n.min(buf.len()), truncated: n > buf.len(), creds: None, fds_closed: 0 };
    // SAFETY: msg was filled in by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR walk
    // the control buffer within msg_controllen and return null at its end.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is a non-null header inside the control buffer.
        let (level, kind, len) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len as usize) };
        // SAFETY: as above; CMSG_DATA points just past the header.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        // SAFETY: CMSG_LEN(0) is arithmetic on a constant.
        let payload = len.saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
        if level == libc::SOL_SOCKET && kind == libc::SCM_CREDENTIALS && payload >= std::mem::size_of::<libc::ucred>() {
            // SAFETY: the payload holds a ucred; read_unaligned copes with
            // the byte buffer's alignment.
            let c: libc::ucred = unsafe { std::ptr::read_unaligned(data as *const libc::ucred) };
            out.creds = Some(Credentials { pid: c.pid as u32, uid: c.uid, gid: c.gid });
        } else if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            let count = payload / std::mem::size_of::<libc::c_int>();
            for i in 0..count {
                // SAFETY: the payload holds `count` ints, each an fd the
                // kernel just installed for us and nobody else owns.
                let raw = unsafe { std::ptr::read_unaligned((data as *const libc::c_int).add(i)) };
                // SAFETY: as above: we are its only owner, and drop closes it.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                out.fds_closed += 1;
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Some(out))
}

/// getpgid(2): the process group of a live process.
pub fn process_group_of(pid: u32) -> io::Result<u32> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: getpgid takes a plain integer; pid > 0 names one process.
    Ok(cvt(unsafe { libc::getpgid(pid as libc::pid_t) })? as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn receives_with_credentials_and_flags_truncation() {
        let dir = std::env::temp_dir().join(format!("zdrestart-sys-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("notify");
        let sock = bind_notify_socket(&path).unwrap();
        let tx = UnixDatagram::unbound().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(recv_datagram(sock.as_fd(), &mut buf).unwrap(), None);
        tx.send_to(b"READY=1", &path).unwrap();
        let d = recv_datagram(sock.as_fd(), &mut buf).unwrap().unwrap();
        assert_eq!((&buf[..d.len], d.truncated), (&b"READY=1"[..], false));
        let c = d.creds.unwrap();
        assert_eq!(c.pid, std::process::id());
        tx.send_to(b"STATUS=0123456789", &path).unwrap();
        let d = recv_datagram(sock.as_fd(), &mut buf).unwrap().unwrap();
        assert!(d.truncated);
        assert_eq!(d.len, 8);
        assert_eq!(process_group_of(std::process::id()).unwrap() as i32, unsafe_getpgrp());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn unsafe_getpgrp() -> i32 {
        // SAFETY: getpgrp takes no argument and cannot fail.
        unsafe { libc::getpgrp() }
    }
}

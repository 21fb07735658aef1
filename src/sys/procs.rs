//! Process groups, the child subreaper, and reaping children the master did
//! not start itself (issue: no orphan may keep serving).
//!
//! Owns the raw calls: setpgid, kill of a process group, prctl
//! PR_SET_CHILD_SUBREAPER, waitid(P_ALL, WNOWAIT) to learn which child has
//! exited before reaping it, and the list of the master's children from
//! /proc. It decides nothing: the loop knows which pids are its workers.

use super::cvt;
use std::io;

/// prctl(PR_SET_CHILD_SUBREAPER, 1): descendants orphaned below this process
/// (a worker's helper whose parent exited, a double fork) are reparented to
/// it instead of init, so that it sees and reaps them.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// kill(-pgid, sig): `sig` to every process of process group `pgid`.
pub fn kill_group(pgid: u32, sig: i32) -> io::Result<()> {
    if pgid <= 1 || pgid > i32::MAX as u32 {
        // 0 would be our own group, 1 (-1) every process we may signal.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill takes plain integers; -pgid < -1 targets one process group.
    cvt(unsafe { libc::kill(-(pgid as libc::pid_t), sig) })?;
    Ok(())
}

/// setpgid(pid, pid): make `pid` (a child that has not exec'd yet, or has)
/// the leader of its own process group. Done by the parent as well as by the
/// child, so that the group exists whichever runs first. EACCES (the child
/// has already exec'd, and then set it itself) and ESRCH (already gone) are
/// not errors.
pub fn own_process_group(pid: u32) -> io::Result<()> {
    // SAFETY: setpgid takes plain integers.
    match cvt(unsafe { libc::setpgid(pid as libc::pid_t, pid as libc::pid_t) }) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::ESRCH)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A child that has exited and is not yet reaped (waitid with WNOWAIT: it
/// stays a zombie until [`super::try_wait`] reaps it), or None.
pub fn exited_child() -> io::Result<Option<u32>> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value of this C struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into the local siginfo_t we pass.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
        if r == -1 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(None),
                _ => return Err(e),
            }
        }
        // SAFETY: waitid succeeded, so si_pid is set (0 when no child has exited).
        let pid = unsafe { info.si_pid() };
        return Ok(if pid > 0 { Some(pid as u32) } else { None });
    }
}

/// The live children of this (single-threaded) process, from
/// /proc/self/task/<pid>/children: every process it started and every
/// orphan reparented to it as a subreaper.
pub fn children() -> io::Result<Vec<u32>> {
    let me = std::process::id();
    let text = std::fs::read_to_string(format!("/proc/self/task/{}/children", me))?;
    Ok(text.split_ascii_whitespace().filter_map(|p| p.parse().ok()).collect())
}

/// The process group of a live process, from /proc/<pid>/stat (field 5).
pub fn process_group(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{}/stat", pid)).ok()?;
    // After "pid (comm) ": "state ppid pgrp ..."; comm may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(2)?.parse().ok()
}

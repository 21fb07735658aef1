//! Processes the master did not start but must answer for: what is left of
//! a worker's process group once its main process is gone, and descendants
//! orphaned below the master, which as a child subreaper adopts them.
//!
//! Owns the policy for them (zdrestart-worker(7), "Processes of a worker"):
//! a process that is not a worker or probe the loop knows, and not in the
//! process group of one, is ended with SIGKILL; every child that exits is
//! reaped. It does not touch the loop's own children: the loop reaps those
//! (it needs their exit status), this module only names them.

use crate::sys;

/// After a worker's or probe's main process `pid` was reaped: SIGKILL to
/// whatever is left of its process group. Safe against pid reuse: a pid is
/// not reused while a process group of that id has a member.
pub fn end_group(pid: u32) {
    match sys::kill_group(pid, libc::SIGKILL) {
        Ok(()) => log::info!(worker_pid = pid; "killed what was left of the process group of {} (SIGKILL)", pid),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(e) => log::warn!(worker_pid = pid; "kill SIGKILL process group {}: {}", pid, sys::strerror(&e)),
    }
}

/// Reap every exited child that is not one of the loop's (`is_known`), and
/// return the known ones that have exited, for the loop to reap with their
/// status. Bounded: each round reaps one child or stops.
pub fn reap_adopted(is_known: impl Fn(u32) -> bool) -> Vec<u32> {
    let mut known = Vec::new();
    for _ in 0..4096 {
        let pid = match sys::exited_child() {
            Ok(Some(pid)) => pid,
            Ok(None) => break,
            Err(e) => {
                log::warn!("waitid: {}", sys::strerror(&e));
                break;
            }
        };
        if is_known(pid) {
            // The loop reaps it; until then waitid names it again: stop here.
            known.push(pid);
            break;
        }
        match sys::try_wait(pid) {
            Ok(Some(st)) => log::debug!(orphan_pid = pid; "reaped adopted process {} ({})", pid, st),
            Ok(None) => break,
            Err(e) => {
                log::warn!("waitpid {}: {}", pid, sys::strerror(&e));
                break;
            }
        }
    }
    known
}

/// SIGKILL every child of the master that is neither one of `leaders` (the
/// workers and probe the loop knows) nor in the process group of one: an
/// orphan a worker left behind (daemonized, or its parent gone).
pub fn end_strays(leaders: &[u32]) {
    let children = match sys::children() {
        Ok(c) => c,
        Err(e) => {
            log::debug!("list children: {}", sys::strerror(&e));
            return;
        }
    };
    for pid in children {
        if leaders.contains(&pid) {
            continue;
        }
        let group = sys::process_group(pid);
        if group.is_some_and(|g| leaders.contains(&g)) {
            continue;
        }
        // Our child (reparented to us): its pid cannot be reused before we reap it.
        match sys::kill(pid, libc::SIGKILL) {
            Ok(()) => log::info!(orphan_pid = pid, pgid = group.unwrap_or(0);
                "killed process {} left behind by a worker (adopted by the master, in no worker's process group)", pid),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => log::warn!(orphan_pid = pid; "kill SIGKILL {}: {}", pid, sys::strerror(&e)),
        }
    }
}

//! Harness helpers of the operations tests (tests/master_ops.rs and its
//! neighbours): process groups and fds from /proc, FIFOs, inheritable fds.
//!
//! Kept apart from the rest of the harness so that the operations tests add
//! code without editing the shared helpers.

use crate::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// The process group of a live process (from /proc), None once it is gone.
pub fn pgid_of(pid: i32) -> Option<i32> {
    proc_stat(pid).map(|s| s.pgid)
}

/// Every live (non-zombie) process of process group `pgid`, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| proc_stat(p).is_some_and(|s| s.pgid == pgid && s.state != 'Z'))
        .collect()
}

/// Every live process whose environment has `key=value` (processes of this
/// user that /proc lets us read): how a test finds the helpers its own fault
/// workers started, by a marker it put in their environment.
pub fn pids_with_env(key: &str, value: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| proc_stat(p).is_some_and(|s| s.state != 'Z'))
        .filter(|&p| proc_environ(p).iter().any(|(k, v)| k == key && v == value))
        .collect()
}

/// A FIFO at `path` (mode 0600).
pub fn mkfifo(path: &Path) {
    crate::sys::mkfifo(path);
}

/// Open the FIFO for writing once a reader has it open (ENXIO until then),
/// within `timeout`: the moment a probe of tests/fault/probe-fifo.sh waits
/// on it. Writing a line to the result lets that probe go on.
pub fn open_fifo_when_read(path: &Path, timeout: Duration) -> fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = None;
    let ok = wait_until(timeout, || {
        f = fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path).ok();
        f.is_some()
    });
    assert!(ok, "nobody opened the FIFO {} for reading within {:?}", path.display(), timeout);
    f.unwrap()
}

/// The fd numbers open in a process, sorted.
pub fn fd_numbers(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{}/fd", pid))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// What one fd of a process points to (readlink of /proc/PID/fd/N).
pub fn fd_target(pid: i32, fd: i32) -> String {
    fs::read_link(format!("/proc/{}/fd/{}", pid, fd)).map(|p| p.display().to_string()).unwrap_or_default()
}

/// A copy of `f`'s fd at a number >= 20 without FD_CLOEXEC, so that every
/// process this test process starts while it is open inherits it (the
/// situation of `(exec 9<secret; zdrestart -c cfg)`). Closed on drop.
pub fn inheritable_copy(f: &fs::File) -> std::os::fd::OwnedFd {
    use std::os::fd::AsRawFd;
    crate::sys::inheritable_dup(f.as_raw_fd(), 20)
}

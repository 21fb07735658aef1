//! Reading processes from /proc, and signalling the ones a test started.
//! Must not signal anything on its own.

use std::fs;

/// The few fields of /proc/<pid>/stat tests need.
#[derive(Debug, Clone)]
pub struct ProcStat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub starttime: u64,
}

/// /proc/<pid>/stat, or None when there is no such process.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = fs::read_to_string(format!("/proc/{}/stat", pid)).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let rest: Vec<&str> = s[close + 2..].split(' ').collect();
    // rest[0] = state (field 3), rest[1] = ppid, rest[2] = pgrp, rest[19] = starttime (field 22)
    Some(ProcStat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgid: rest.get(2)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

/// How long ago process `pid` started (from its start time in
/// /proc/<pid>/stat, in clock ticks since boot, and /proc/uptime: both
/// CLOCK_BOOTTIME). None when there is no such process.
pub fn age_of(pid: i32) -> Option<std::time::Duration> {
    let start = proc_stat(pid)?.starttime as f64 / crate::sys::clock_ticks_per_second() as f64;
    let up: f64 = fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_secs_f64((up - start).max(0.0)))
}

/// Wait (`timeout` at most) until every process of `pids` is older than
/// `age` (or gone); false on timeout. E.g. past the master's crash window
/// (1 s): a worker killed after it is respawned at once, without backoff.
pub fn wait_older_than(pids: &[i32], age: std::time::Duration, timeout: std::time::Duration) -> bool {
    // /proc's start time is in ticks (rounded down): allow one more.
    let age = age + std::time::Duration::from_millis(20);
    crate::wait::wait_until(timeout, || pids.iter().all(|&p| age_of(p).is_none_or(|a| a >= age)))
}

/// The resident set of a process in kB (`VmRSS` of /proc/<pid>/status);
/// panics when it cannot be read (the process is gone, or a zombie).
pub fn rss_kb(pid: i32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{}/status", pid)).unwrap_or_else(|e| panic!("read /proc/{}/status: {}", pid, e));
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {}", pid))
}

/// Whether pid names a process that is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// Every process of the machine (pids from /proc).
pub fn all_pids() -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                v.push(pid);
            }
        }
    }
    v
}

/// Direct children of pid (zombies included), from /proc/*/stat.
pub fn children_of(pid: i32) -> Vec<ProcStat> {
    all_pids().into_iter().filter_map(proc_stat).filter(|s| s.ppid == pid).collect()
}

/// Live (non-zombie) direct children of pid.
pub fn live_children(pid: i32) -> Vec<i32> {
    children_of(pid).into_iter().filter(|s| s.state != 'Z' && s.state != 'X').map(|s| s.pid).collect()
}

/// Zombie direct children of pid.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    children_of(pid).into_iter().filter(|s| s.state == 'Z').map(|s| s.pid).collect()
}

/// Every descendant of pid (children, grandchildren, ...).
pub fn descendants_of(pid: i32) -> Vec<i32> {
    let stats: Vec<ProcStat> = all_pids().into_iter().filter_map(proc_stat).collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for s in stats.iter().filter(|s| s.ppid == p) {
            if !out.contains(&s.pid) {
                out.push(s.pid);
                frontier.push(s.pid);
            }
        }
    }
    out
}

/// The threads of pid: (tid, name, context switches so far: voluntary plus
/// involuntary), from /proc/<pid>/task. A thread that does not run does not
/// switch: an unchanged count over a while means it never woke up.
pub fn thread_switches(pid: i32) -> Vec<(i32, String, u64)> {
    let mut v = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{}/task", pid)) else { return v };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let name = fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim().to_string();
        let status = fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        v.push((tid, name, n));
    }
    v.sort();
    v
}

/// The state letter of thread `tid` of `pid` (`R` running, `S` asleep, ...),
/// None when it is gone.
pub fn thread_state(pid: i32, tid: i32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{}/task/{}/stat", pid, tid)).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

/// Number of open fds of pid (entries of /proc/<pid>/fd).
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{}/fd", pid)).map(|d| d.count()).unwrap_or(0)
}

/// The targets of the open fds of pid, sorted (for leak diagnostics).
pub fn fd_targets(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(format!("/proc/{}/fd", pid))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let t = fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
                    format!("{}->{}", e.file_name().to_string_lossy(), t)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Environment of pid as (key, value) pairs; panics when it cannot be read
/// or is empty (a process gone, or caught between fork and exec): a test
/// asserting on it must not pass for want of data.
pub fn environ_of(pid: i32) -> Vec<(String, String)> {
    let path = format!("/proc/{}/environ", pid);
    let raw = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {}", path, e));
    let env = parse_environ(&raw);
    assert!(!env.is_empty(), "{} is empty (process exiting, or between fork and exec?)", path);
    env
}

/// Environment of pid as (key, value) pairs; empty when it cannot be read
/// (for filters that skip such processes; assertions use [`environ_of`]).
pub fn proc_environ(pid: i32) -> Vec<(String, String)> {
    parse_environ(&fs::read(format!("/proc/{}/environ", pid)).unwrap_or_default())
}

fn parse_environ(raw: &[u8]) -> Vec<(String, String)> {
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Send a signal to a pid (tests may signal anything they started).
pub fn kill(pid: i32, sig: i32) -> bool {
    crate::sys::kill(pid, sig)
}

/// Inodes of the sockets pid has open (from its /proc/<pid>/fd links).
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    fs::read_dir(format!("/proc/{}/fd", pid))
        .map(|d| {
            d.flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .filter_map(|t| {
                    let t = t.to_string_lossy().into_owned();
                    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether process `pid` holds the server end of the loopback connection
/// `client` and has read everything the client sent on it: the request is
/// in the worker's hands (positive proof, from /proc/net/tcp and
/// /proc/<pid>/fd, that a request is in flight in that process).
pub fn request_taken_by(pid: i32, client: &std::net::TcpStream) -> bool {
    requests_taken_by(pid, &[client]) == 1
}

/// [`request_taken_by`] for many connections at once (one read of the
/// tables): how many of `clients` are in `pid`'s hands.
pub fn requests_taken_by(pid: i32, clients: &[&std::net::TcpStream]) -> usize {
    which_requests_taken_by(pid, clients).into_iter().filter(|&t| t).count()
}

/// [`request_taken_by`] for each of `clients`, from one read of the tables
/// (reading /proc/net/tcp takes long on a machine with many sockets).
pub fn which_requests_taken_by(pid: i32, clients: &[&std::net::TcpStream]) -> Vec<bool> {
    // The server end: local = the client's peer, remote = the client's local.
    let key = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        std::net::SocketAddr::V6(_) => String::new(),
    };
    let wanted: Vec<Option<(String, String)>> =
        clients.iter().map(|c| Some((key(c.peer_addr().ok()?), key(c.local_addr().ok()?)))).collect();
    let mut taken = vec![false; clients.len()];
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else { return taken };
    let inodes = socket_inodes(pid);
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx_queue:rx_queue tr:when retrnsmt uid timeout inode
        if f.len() <= 9
            || !f[4].split(':').nth(1).is_some_and(|rx| u64::from_str_radix(rx, 16) == Ok(0))
            || !f[9].parse::<u64>().is_ok_and(|ino| inodes.contains(&ino))
        {
            continue;
        }
        for (i, w) in wanted.iter().enumerate() {
            if w.as_ref().is_some_and(|(l, r)| l == f[1] && r == f[2]) {
                taken[i] = true;
            }
        }
    }
    taken
}

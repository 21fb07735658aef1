//! Hostile client shapes for the built-in worker's memory bound, shared by
//! tests/worker_memory.rs (the bound holds) and bench/worker.rs (peak RSS
//! printed beside nginx): slow readers of a large answer, many clients of
//! large bodies. Every shape is bounded in count and time, loopback only.

use crate::http::{read_response, HTTP_TIMEOUT};
use std::io::{self, BufReader, Write};
use std::net::TcpStream;

pub use crate::sys::connect_small_window;

/// `n` clients with a `rcvbuf`-byte receive buffer that each send `GET path`
/// (keep-alive) and never read. Returns the connections (hold them: dropping
/// closes them). A connection that fails is left out (the caller counts).
pub fn slow_readers(port: u16, n: usize, path: &str, rcvbuf: i32) -> Vec<TcpStream> {
    let req = format!("GET {} HTTP/1.1\r\nHost: slow\r\n\r\n", path);
    (0..n)
        .filter_map(|_| {
            let mut s = connect_small_window(port, rcvbuf).ok()?;
            s.write_all(req.as_bytes()).ok()?;
            Some(s)
        })
        .collect()
}

/// The queues of the server ends that process `pid` holds of loopback
/// connections, by (server address, client address) as /proc/net/tcp
/// writes them: (bytes queued to send, bytes received and not read).
fn server_queues(pid: i32) -> std::collections::HashMap<(String, String), (u64, u64)> {
    let inodes: std::collections::HashSet<u64> = crate::procfs::socket_inodes(pid).into_iter().collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut out = std::collections::HashMap::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() <= 9 || !f[9].parse::<u64>().is_ok_and(|ino| inodes.contains(&ino)) {
            continue;
        }
        let Some((tx, rx)) = f[4].split_once(':') else { continue };
        if let (Ok(tx), Ok(rx)) = (u64::from_str_radix(tx, 16), u64::from_str_radix(rx, 16)) {
            out.insert((f[1].to_string(), f[2].to_string()), (tx, rx));
        }
    }
    out
}

/// The key of the server end of `client` in [`server_queues`].
fn server_end(client: &TcpStream) -> Option<(String, String)> {
    let key = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => Some(format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port())),
        std::net::SocketAddr::V6(_) => None,
    };
    Some((key(client.peer_addr().ok()?)?, key(client.local_addr().ok()?)?))
}

/// How many of `clients` the process `pid` has taken the request of (its
/// end has nothing left to read) and is still sending an answer to (bytes
/// queued in its socket): answers that the client does not read.
pub fn answers_stuck(pid: i32, clients: &[TcpStream]) -> usize {
    let q = server_queues(pid);
    clients
        .iter()
        .filter(|c| server_end(c).and_then(|k| q.get(&k)).is_some_and(|&(tx, rx)| tx > 0 && rx == 0))
        .count()
}

/// How many of `clients` have a request that process `pid` has not read yet
/// (its end of the connection has bytes received and not read).
pub fn requests_unread(pid: i32, clients: &[TcpStream]) -> usize {
    let q = server_queues(pid);
    clients.iter().filter(|c| server_end(c).and_then(|k| q.get(&k)).is_some_and(|&(_, rx)| rx > 0)).count()
}

/// Connections waiting in the accept queue of the listener on
/// 127.0.0.1:`port` (or 0.0.0.0:`port`): for a listening socket,
/// /proc/net/tcp gives the queue's length as its receive queue. `None`
/// when there is no such listener.
pub fn accept_backlog(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = [format!("0100007F:{:04X}", port), format!("00000000:{:04X}", port)];
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // State 0A is LISTEN.
        if f.len() <= 4 || f[3] != "0A" || !local.iter().any(|l| l == f[1]) {
            return None;
        }
        u64::from_str_radix(f[4].split_once(':')?.1, 16).ok()
    })
}

/// For `client`'s connection to process `pid`: (bytes the server's kernel
/// still has to send, bytes it received that the server has not read).
pub fn server_queue(pid: i32, client: &TcpStream) -> Option<(u64, u64)> {
    server_queues(pid).get(&server_end(client)?).copied()
}

/// A JSON object of exactly `size` bytes: `{"a":[0,0,...,0]}` (`array`: a
/// value tree of `size / 2` numbers when parsed) or `{"s":"xx...x"}`.
pub fn big_object(size: usize, array: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(size);
    if array {
        b.extend_from_slice(b"{\"a\":[0");
        while b.len() + 2 + 2 <= size {
            b.extend_from_slice(b",0");
        }
        b.extend_from_slice(b"]}");
        while b.len() < size {
            b.insert(1, b' ');
        }
    } else {
        b.extend_from_slice(b"{\"s\":\"");
        b.resize(size - 2, b'x');
        b.extend_from_slice(b"\"}");
    }
    assert_eq!(b.len(), size);
    b
}

/// What a flood of PUTs got.
#[derive(Debug, Default, Clone)]
pub struct Flood {
    /// Answers by status.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// Connections that failed (reset, closed before an answer, timed out).
    pub errors: Vec<String>,
}

/// `clients` keep-alive clients, each `PUT`ting `body` `rounds` times or
/// until `until` (a new connection after a close), to
/// `/objects/flood/<client>`, or with `fresh` to a new id each time (filling
/// the store).
pub fn put_flood(port: u16, clients: usize, rounds: usize, until: Option<std::time::Instant>, body: &[u8], fresh: bool) -> Flood {
    let body = std::sync::Arc::new(body.to_vec());
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut f = Flood::default();
                let mut conn: Option<BufReader<TcpStream>> = None;
                for round in 0..rounds {
                    let id = if fresh { format!("{}-{}", i, round) } else { i.to_string() };
                    let head = format!(
                        "PUT /objects/flood/{} HTTP/1.1\r\nHost: flood\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        id,
                        body.len()
                    );
                    if until.is_some_and(|t| std::time::Instant::now() >= t) {
                        break;
                    }
                    let r = (|| -> io::Result<crate::http::Response> {
                        if conn.is_none() {
                            let s = TcpStream::connect(("127.0.0.1", port))?;
                            s.set_read_timeout(Some(HTTP_TIMEOUT))?;
                            s.set_write_timeout(Some(HTTP_TIMEOUT))?;
                            conn = Some(BufReader::new(s));
                        }
                        let c = conn.as_mut().unwrap();
                        c.get_mut().write_all(head.as_bytes())?;
                        // The worker may answer 503 and close before it has the body.
                        let _ = c.get_mut().write_all(&body);
                        read_response(c, false)
                    })();
                    match r {
                        Ok(r) => {
                            *f.statuses.entry(r.status).or_default() += 1;
                            if r.closes() {
                                conn = None;
                            }
                        }
                        Err(e) => {
                            f.errors.push(e.to_string());
                            conn = None;
                        }
                    }
                }
                f
            })
        })
        .collect();
    let mut all = Flood::default();
    for h in handles {
        let f = h.join().unwrap();
        for (k, v) in f.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        all.errors.extend(f.errors);
    }
    all
}

/// Peak resident set of a process in kB (`VmHWM` of /proc/<pid>/status).
pub fn peak_rss_kb(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{}/status", pid)).unwrap_or_else(|e| panic!("read /proc/{}/status: {}", pid, e));
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM for pid {}", pid))
}

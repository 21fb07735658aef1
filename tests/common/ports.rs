//! Loopback TCP ports for the processes a test starts, and who listens on
//! one (from /proc).
//!
//! A port picked free, released, and bound later by another process can be
//! taken in between by anyone on the machine. So where a process can take
//! a bound socket, the harness hands it one ([`ReservedPort`], the built-in
//! worker's `LISTEN_FDS`, secantusd-py's inherited socket); where it binds
//! its own (the master), the harness starts it again on another port when
//! it finds the port taken (tests/common/master.rs). [`free_port`] is for
//! ports that are only written into a config and never bound.

use crate::sys;
use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Ports outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`,
/// read from /proc): the widest of the stretches below it (from 10000) and
/// above it. None when neither holds 1000 ports.
fn non_ephemeral_ports() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<u32>().ok());
    let (low, high) = (it.next()??, it.next()??);
    let below = (10000, low.max(10000)); // [start, end)
    let above = (high + 1, 65536);
    let (start, end) = if below.1 - below.0 >= above.1 - above.0 { below } else { above };
    (end.saturating_sub(start) >= 1000).then_some((start as u16, (end - 1) as u16))
}

/// A free TCP port on 127.0.0.1, chosen outside the kernel's ephemeral range
/// as configured on this machine (so that no outgoing connection takes it
/// meanwhile), checked by binding it, and never handed out twice by this
/// process. Where the ephemeral range leaves no room, the kernel's choice.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
    // A small xorshift seeded by pid and time: different test binaries (and
    // other people's runs on the same machine) start at different ports.
    let mut x: u64 = (std::process::id() as u64) << 32
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        ^ 0x9e37_79b9_7f4a_7c15;
    let range = non_ephemeral_ports();
    for _ in 0..range.map_or(0, |_| 2000) {
        let (start, last) = range.unwrap();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = start + (x % (u64::from(last - start) + 1)) as u16;
        if given.contains(&port) {
            continue;
        }
        if port_is_free(port) {
            given.insert(port);
            return port;
        }
    }
    // Fall back on the kernel's choice.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().unwrap().port();
    given.insert(port);
    port
}

/// Whether 127.0.0.1:port can be bound now (std sets SO_REUSEADDR, so sockets
/// in TIME_WAIT do not count as in use; a listener does).
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Whether something accepts TCP connections on 127.0.0.1:port.
pub fn port_accepts(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A loopback port reserved for the life of this value: a socket bound to
/// it (`SO_REUSEPORT`) that never listens. Connections to the port are
/// refused, and no other process can bind it, except through
/// [`ReservedPort::listener`] (a socket of the same `SO_REUSEPORT` group)
/// which the harness hands to the process that is to listen there. Closing
/// that listener (the process is gone) leaves the port refused and still
/// reserved.
pub struct ReservedPort {
    _fd: OwnedFd,
    port: u16,
}

impl ReservedPort {
    /// A port of the kernel's choice, reserved.
    pub fn new() -> ReservedPort {
        let fd = sys::reuseport_socket(0, false).unwrap_or_else(|e| panic!("reserve a loopback port: {}", e));
        let port = sys::local_port(&fd).unwrap_or_else(|e| panic!("getsockname of the reserved port: {}", e));
        ReservedPort { _fd: fd, port }
    }

    /// Reserve this port (e.g. one a process was already told about);
    /// panics when another process holds it.
    pub fn on(port: u16) -> ReservedPort {
        let fd = sys::reuseport_socket(port, false).unwrap_or_else(|e| panic!("reserve 127.0.0.1:{}: {}", port, e));
        ReservedPort { _fd: fd, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new listening socket on the reserved port, to hand to the process
    /// that serves there (e.g. at fd 3 with `LISTEN_FDS`).
    pub fn listener(&self) -> OwnedFd {
        sys::reuseport_socket(self.port, true).unwrap_or_else(|e| panic!("listen on reserved 127.0.0.1:{}: {}", self.port, e))
    }

    /// A new socket bound to the reserved port that does not listen yet,
    /// for a process that calls listen(2) itself once it is ready to serve
    /// (connections are refused until then).
    pub fn bound(&self) -> OwnedFd {
        sys::reuseport_socket(self.port, false).unwrap_or_else(|e| panic!("bind reserved 127.0.0.1:{}: {}", self.port, e))
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        ReservedPort::new()
    }
}

/// Inodes of the sockets that listen on TCP `port` (any local address,
/// IPv4 and IPv6), from /proc/net/tcp and /proc/net/tcp6.
pub fn listening_inodes(port: u16) -> Vec<u64> {
    let want = format!(":{:04X}", port);
    let mut v = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A" {
                if let Ok(ino) = f[9].parse() {
                    v.push(ino);
                }
            }
        }
    }
    v
}

/// Whether process `pid` holds a socket that listens on TCP `port`.
pub fn pid_listens_on(pid: i32, port: u16) -> bool {
    let mine = crate::procfs::socket_inodes(pid);
    listening_inodes(port).iter().any(|i| mine.contains(i))
}

/// Number of established TCP connections on local `port` whose socket
/// process `pid` holds (the server ends it accepted).
pub fn established_on(pid: i32, port: u16) -> usize {
    let mine = crate::procfs::socket_inodes(pid);
    let want = format!(":{:04X}", port);
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[1].ends_with(&want) && f[3] == "01" && f[9].parse::<u64>().is_ok_and(|i| mine.contains(&i)) {
                n += 1;
            }
        }
    }
    n
}

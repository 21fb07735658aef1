//! Loopback TCP ports for the processes a test starts. Must not hold a port
//! open after returning it.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
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

//! Loopback TCP ports for the processes a test starts. Must not hold a port
//! open after returning it.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A free TCP port on 127.0.0.1, chosen below the kernel's ephemeral range
/// (so that no outgoing connection of this machine takes it meanwhile), checked
/// by binding it, and never handed out twice by this process.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
    // A small xorshift seeded by pid and time: different test binaries (and
    // other people's runs on the same machine) start at different ports.
    let mut x: u64 = (std::process::id() as u64) << 32
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20000 + (x % 12000) as u16; // 20000..32000, below ip_local_port_range
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

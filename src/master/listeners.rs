//! The listening sockets, bound once by the master at start and inherited
//! by every worker (LISTEN_FDS). They never move without a normal restart.

use crate::config::Config;
use crate::sys;
use std::net::{TcpListener, ToSocketAddrs};

/// Bind every address `address:port` resolves to. Errors name the address.
pub fn bind_listeners(cfg: &Config) -> Result<Vec<TcpListener>, String> {
    let shown = cfg.listen_display();
    let addrs: Vec<_> = (cfg.address.as_str(), cfg.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {}: {}", shown, sys::strerror(&e)))?
        .collect();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for a in addrs {
        if seen.contains(&a) {
            continue;
        }
        seen.push(a);
        // std sets SO_REUSEADDR and CLOEXEC on listeners.
        let l = TcpListener::bind(a).map_err(|e| format!("bind {}: {}", a, sys::strerror(&e)))?;
        out.push(l);
    }
    if out.is_empty() {
        return Err(format!("resolve {}: no addresses", shown));
    }
    Ok(out)
}

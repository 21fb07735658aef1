//! The master's side of sd_notify(3): state changes told to the service
//! manager (systemd, `Type=notify`) over the datagram socket named by
//! `$NOTIFY_SOCKET`.
//!
//! Owns that socket: an unbound, non-blocking, close-on-exec `AF_UNIX`
//! datagram socket, and the address it sends to (a path, or an abstract name
//! when `$NOTIFY_SOCKET` starts with `@`, as sd_notify(3) says). Each
//! notification is one datagram of newline-separated `KEY=VALUE`
//! assignments. It decides nothing: the state machine says what to send
//! ([`crate::master::state::Announce`]). A full or absent receiver loses a
//! notification, never stalls the master. It does not pass `NOTIFY_SOCKET`
//! on: the master removes it from the workers' environment.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable of sd_notify(3).
pub const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connection-less sender to the service manager.
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// What `$NOTIFY_SOCKET` said, for messages.
    shown: String,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`: `Ok(None)` when it is unset or empty; an error
    /// names the variable and its value.
    pub fn from_env() -> Result<Option<Notifier>, String> {
        match std::env::var_os(ENV_NOTIFY_SOCKET) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => {
                use std::os::unix::ffi::OsStrExt;
                Notifier::new(v.as_bytes()).map(Some)
            }
        }
    }

    /// A sender to `target`: an absolute path, or `@name` for the abstract
    /// socket `name`.
    pub fn new(target: &[u8]) -> Result<Notifier, String> {
        let shown = String::from_utf8_lossy(target).into_owned();
        let err = |what: &str, e: io::Error| format!("{}={}: {}: {}", ENV_NOTIFY_SOCKET, shown, what, crate::sys::strerror(&e));
        let addr = match target.split_first() {
            Some((b'@', name)) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name).map_err(|e| err("abstract socket name", e))?
            }
            Some((b'/', _)) => {
                use std::os::unix::ffi::OsStrExt;
                SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(target)).map_err(|e| err("socket path", e))?
            }
            _ => {
                return Err(format!(
                    "{}={}: neither an absolute path nor an abstract socket name (@...)",
                    ENV_NOTIFY_SOCKET, shown
                ))
            }
        };
        let sock = UnixDatagram::unbound().map_err(|e| err("socket", e))?;
        sock.set_nonblocking(true).map_err(|e| err("set non-blocking", e))?;
        Ok(Notifier { sock, addr, shown })
    }

    /// Send one datagram of `\n`-separated assignments (e.g. `READY=1\nSTATUS=...`).
    pub fn send(&self, state: &str) -> Result<(), String> {
        self.sock
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(|_| ())
            .map_err(|e| format!("sd_notify to {}={}: {}", ENV_NOTIFY_SOCKET, self.shown, crate::sys::strerror(&e)))
    }
}

/// The datagram text of one notification: `head` (e.g. `READY=1`) and
/// `STATUS=<status>`, newline-separated; a newline in the status (which
/// would start a new assignment) becomes a space.
pub fn message(head: &str, status: &str) -> String {
    format!("{}\nSTATUS={}", head, status.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_messages() {
        assert!(Notifier::new(b"relative/path").is_err());
        assert!(Notifier::new(b"/run/systemd/notify").is_ok());
        assert!(Notifier::new(b"@abstract-name").is_ok());
        assert_eq!(message("READY=1", "a\nb"), "READY=1\nSTATUS=a b");
    }

    #[test]
    fn one_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("zdrestart-sdnotify-unit-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let n = Notifier::new(format!("@{}", name).as_bytes()).unwrap();
        n.send("READY=1\nSTATUS=ok").unwrap();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");
    }
}

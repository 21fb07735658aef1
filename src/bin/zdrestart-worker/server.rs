//! The serving process: accept loop, connection threads, signals, graceful exit.
//!
//! Concurrency model (why not a fixed pool of `threads` connection threads: a
//! keep-alive connection would pin a pool thread while idle, so 20 keep-alive
//! clients would starve each other with `threads` = 4):
//!
//! - The main thread waits in epoll (mio) on every listener and on the signal
//!   self-pipe, and accepts until `EAGAIN`. It never blocks in `accept(2)`, so
//!   it can stop accepting the moment SIGTERM arrives.
//! - Each accepted connection gets its own thread ([`MAX_CONNECTIONS`] at most;
//!   at the limit the main thread stops accepting and the connections wait in
//!   the shared backlog, where another worker may take them). An idle
//!   keep-alive connection costs a sleeping thread and is closed after
//!   [`http::IDLE_TIMEOUT`].
//! - Handling a request (driver call, JSON work) needs one of `threads` permits:
//!   at most `threads` requests run at once, whatever the number of
//!   connections. Reading, writing and the `/delay` sleep hold no permit, so a
//!   slow client or a slow diagnostic request never blocks other connections.
//!
//! The listeners are set non-blocking (`O_NONBLOCK` is a property of the open
//! file description, so every process sharing an inherited listener sees it;
//! like nginx, gunicorn or libuv, every worker must wait for readiness before
//! `accept` and treat `EAGAIN` as "someone else took it"). A listener is only
//! ever closed by this process, never `shutdown(2)`: that would stop it for
//! every process sharing it.
//!
//! Signals (signal-hook; the handlers only set flags and write a byte to the
//! self-pipe): SIGTERM and SIGINT start the graceful exit; SIGHUP is logged and
//! otherwise ignored (there is no log file to reopen: logs go to stdout).
//! SIGUSR2 is left as the master set it (ignored).

use crate::http;
use crate::notify::Notifier;
use crate::shared::{ConnGuard, Shared};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::io;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zdrestart::signals::SignalPipe;

/// Most connections served at once by one worker.
pub const MAX_CONNECTIONS: usize = 256;
/// Stack of a connection thread: parsing and JSON validation only (serde_json
/// limits nesting to 128), the database I/O runs on the driver's runtime.
const CONN_STACK: usize = 256 * 1024;
const SIGNAL_TOKEN: Token = Token(usize::MAX);

/// Signal flags and the self-pipe that wakes the accept loop.
pub struct Signals(SignalPipe);

impl Signals {
    /// Install the handlers. Call before reporting READY.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals(SignalPipe::install(&[SIGTERM, SIGINT, SIGHUP])?))
    }

    /// Did SIGTERM or SIGINT arrive?
    fn stopping(&self) -> bool {
        self.0.is_set(SIGTERM) || self.0.is_set(SIGINT)
    }

    fn check(&self) -> bool {
        if self.0.take(SIGHUP) {
            log::info!("SIGHUP received: ignored (worker logs go to the master)");
        }
        self.stopping()
    }
}

/// Serve until SIGTERM/SIGINT, then drain and return (the caller exits 0).
/// READY is reported once every listener is being watched.
pub fn run(listeners: Vec<TcpListener>, sh: Arc<Shared>, sig: Signals, notifier: &Notifier) -> io::Result<()> {
    let mut poll = Poll::new()?;
    for (i, l) in listeners.iter().enumerate() {
        l.set_nonblocking(true)?;
        poll.registry().register(&mut SourceFd(&l.as_raw_fd()), Token(i), Interest::READABLE)?;
    }
    let sig_fd = sig.0.as_raw_fd();
    poll.registry().register(&mut SourceFd(&sig_fd), SIGNAL_TOKEN, Interest::READABLE)?;

    notifier.send("READY", "1");
    log::info!(listeners = listeners.len() as u64, threads = sh.threads as u64; "Worker ready");

    // Edge-triggered readiness: a listener stays "pending" until accept says EAGAIN.
    let mut pending = vec![true; listeners.len()];
    let mut events = Events::with_capacity(64);
    'serve: loop {
        if sig.check() {
            break;
        }
        for (i, l) in listeners.iter().enumerate() {
            if pending[i] {
                pending[i] = false;
                if !accept_all(l, &sh, &sig) {
                    break 'serve;
                }
            }
        }
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == SIGNAL_TOKEN {
                sig.0.drain();
            } else if let Some(p) = pending.get_mut(ev.token().0) {
                *p = true;
            }
        }
    }

    // Graceful exit (zdrestart-worker(7), "Graceful exit"). Stop accepting first: close our copies of
    // the listeners (never shutdown(2)); pending connections stay in the
    // shared backlog for the other workers.
    for l in &listeners {
        let _ = poll.registry().deregister(&mut SourceFd(&l.as_raw_fd()));
    }
    drop(listeners);
    sh.begin_drain();
    notifier.send("STATUS", "stopping");
    log::info!(connections = sh.connections() as u64; "Stopping: no longer accepting, finishing requests in flight");
    let started = Instant::now();
    sh.wait_no_connections();
    log::info!(drain_ms = started.elapsed().as_millis() as u64; "Worker exiting");
    Ok(())
}

/// Accept until the listener says EAGAIN. Returns false when a stop signal
/// arrived while waiting for a free connection slot.
fn accept_all(l: &TcpListener, sh: &Arc<Shared>, sig: &Signals) -> bool {
    loop {
        // Wait for a slot; meanwhile new connections wait in the backlog.
        if !sh.wait_for_slot(MAX_CONNECTIONS, || sig.stopping()) {
            return false;
        }
        match l.accept() {
            Ok((stream, _peer)) => {
                // std accepts with accept4(SOCK_CLOEXEC): the connection is
                // blocking, whatever the listener's flags.
                let guard = ConnGuard::new(sh.clone());
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .stack_size(CONN_STACK)
                    .spawn(move || {
                        let g = guard;
                        http::serve(stream, g.shared());
                    });
                if let Err(e) = spawned {
                    // The closure (and the guard in it) is dropped: count restored,
                    // connection closed. Back off so that we do not spin.
                    log::error!(error = e.to_string().as_str(); "cannot start a connection thread");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
            Err(e) => {
                // EMFILE, ENOBUFS...: the connection stays queued; retry shortly
                // instead of spinning (edge-triggered: no new event would come).
                log::error!(error = e.to_string().as_str(); "accept failed: {}", e);
                std::thread::sleep(Duration::from_millis(100));
                if sig.stopping() {
                    return false;
                }
            }
        }
    }
}

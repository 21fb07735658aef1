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

use crate::api::Identity;
use crate::http;
use crate::notify::Notifier;
use crate::store::{Store, StoreError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most connections served at once by one worker.
pub const MAX_CONNECTIONS: usize = 256;
/// Stack of a connection thread: parsing and JSON validation only (serde_json
/// limits nesting to 128), the database I/O runs on the driver's runtime.
const CONN_STACK: usize = 256 * 1024;
const SIGNAL_TOKEN: Token = Token(usize::MAX);

/// A counting semaphore (std has none): the `threads` request permits.
pub struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

pub struct Permit<'a>(&'a Permits);

impl Permits {
    pub fn new(n: usize) -> Permits {
        Permits { free: Mutex::new(n.max(1)), cv: Condvar::new() }
    }

    pub fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

/// Number of live connection threads, with a wake-up when it drops.
#[derive(Default)]
struct Connections {
    count: Mutex<usize>,
    cv: Condvar,
}

/// Held by a connection thread; decrements the count even if the thread panics.
struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let c = &self.0.conns;
        *c.count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        c.cv.notify_all();
    }
}

/// What every connection thread shares.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub who: Identity,
    pub permits: Permits,
    /// Size of `permits` (config `threads`).
    pub threads: usize,
    /// Set once SIGTERM/SIGINT arrived: answers say `Connection: close`.
    pub draining: AtomicBool,
    drain_start: OnceLock<Instant>,
    conns: Connections,
}

impl Shared {
    pub fn new(store: Arc<dyn Store>, who: Identity, threads: usize) -> Shared {
        Shared {
            store,
            who,
            permits: Permits::new(threads),
            threads,
            draining: AtomicBool::new(false),
            drain_start: OnceLock::new(),
            conns: Connections::default(),
        }
    }

    /// When draining began, if it did.
    pub fn drain_started(&self) -> Option<Instant> {
        if self.draining.load(Ordering::SeqCst) {
            self.drain_start.get().copied()
        } else {
            None
        }
    }

    fn begin_drain(&self) {
        let _ = self.drain_start.set(Instant::now());
        self.draining.store(true, Ordering::SeqCst);
    }
}

/// Log a driver failure at `warn`, at most once a second (a database outage
/// under load would otherwise flood the master's log).
pub fn warn_store_error(e: &StoreError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if LAST.swap(now, Ordering::Relaxed) != now {
        log::warn!(error = e.to_string().as_str(); "database request failed: {}", e);
    } else {
        log::debug!(error = e.to_string().as_str(); "database request failed");
    }
}

/// Signal flags and the self-pipe that wakes the accept loop.
pub struct Signals {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    pipe: UnixStream,
}

impl Signals {
    /// Install the handlers. Call before reporting READY.
    pub fn install() -> io::Result<Signals> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let (rd, wr) = UnixStream::pair()?;
        rd.set_nonblocking(true)?;
        // The handler must never block on a full pipe.
        wr.set_nonblocking(true)?;
        let term = Arc::new(AtomicBool::new(false));
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(SIGTERM, term.clone())?;
        signal_hook::flag::register(SIGINT, term.clone())?;
        signal_hook::flag::register(SIGHUP, hup.clone())?;
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            signal_hook::low_level::pipe::register(sig, wr.try_clone()?)?;
        }
        Ok(Signals { term, hup, pipe: rd })
    }

    fn drain_pipe(&mut self) {
        let mut b = [0u8; 64];
        while matches!(self.pipe.read(&mut b), Ok(n) if n > 0) {}
    }

    fn check(&self) -> bool {
        if self.hup.swap(false, Ordering::SeqCst) {
            log::info!("SIGHUP received: ignored (worker logs go to the master)");
        }
        self.term.load(Ordering::SeqCst)
    }
}

/// Serve until SIGTERM/SIGINT, then drain and return (the caller exits 0).
/// READY is reported once every listener is being watched.
pub fn run(listeners: Vec<TcpListener>, sh: Arc<Shared>, mut sig: Signals, notifier: &Notifier) -> io::Result<()> {
    let mut poll = Poll::new()?;
    for (i, l) in listeners.iter().enumerate() {
        l.set_nonblocking(true)?;
        poll.registry().register(&mut SourceFd(&l.as_raw_fd()), Token(i), Interest::READABLE)?;
    }
    let sig_fd = sig.pipe.as_raw_fd();
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
                sig.drain_pipe();
            } else if let Some(p) = pending.get_mut(ev.token().0) {
                *p = true;
            }
        }
    }

    // Graceful exit (DESIGN.md 5.4). Stop accepting first: close our copies of
    // the listeners (never shutdown(2)); pending connections stay in the
    // shared backlog for the other workers.
    for l in &listeners {
        let _ = poll.registry().deregister(&mut SourceFd(&l.as_raw_fd()));
    }
    drop(listeners);
    sh.begin_drain();
    notifier.send("STATUS", "stopping");
    let open = *sh.conns.count.lock().unwrap_or_else(|e| e.into_inner());
    log::info!(connections = open as u64; "Stopping: no longer accepting, finishing requests in flight");
    let started = Instant::now();
    let mut count = sh.conns.count.lock().unwrap_or_else(|e| e.into_inner());
    while *count > 0 {
        count = sh.conns.cv.wait(count).unwrap_or_else(|e| e.into_inner());
    }
    drop(count);
    log::info!(drain_ms = started.elapsed().as_millis() as u64; "Worker exiting");
    Ok(())
}

/// Accept until the listener says EAGAIN. Returns false when a stop signal
/// arrived while waiting for a free connection slot.
fn accept_all(l: &TcpListener, sh: &Arc<Shared>, sig: &Signals) -> bool {
    loop {
        // Wait for a slot; meanwhile new connections wait in the backlog.
        {
            let mut count = sh.conns.count.lock().unwrap_or_else(|e| e.into_inner());
            while *count >= MAX_CONNECTIONS {
                if sig.term.load(Ordering::SeqCst) {
                    return false;
                }
                count = sh.conns.cv.wait_timeout(count, Duration::from_millis(100)).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
            }
        }
        match l.accept() {
            Ok((stream, _peer)) => {
                // std accepts with accept4(SOCK_CLOEXEC): the connection is
                // blocking, whatever the listener's flags.
                *sh.conns.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                let guard = ConnGuard(sh.clone());
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .stack_size(CONN_STACK)
                    .spawn(move || {
                        let g = guard;
                        http::serve(stream, &g.0);
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
                if sig.term.load(Ordering::SeqCst) {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_bound_concurrency() {
        let p = Arc::new(Permits::new(2));
        // Two permits can be held at once (taken here without waiting), and
        // then none is left: a third acquire waits.
        let (g1, g2) = (p.acquire(), p.acquire());
        assert_eq!(*p.free.lock().unwrap(), 0);
        drop((g1, g2));
        // Never more than two holders at once, however the threads are
        // scheduled (an upper bound: no timing assumed).
        let running = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (p, running, peak) = (p.clone(), running.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _g = p.acquire();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!((1..=2).contains(&peak.load(Ordering::SeqCst)), "peak {}", peak.load(Ordering::SeqCst));
        assert_eq!(*p.free.lock().unwrap(), 2);
    }
}

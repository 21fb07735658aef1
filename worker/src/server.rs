//! The serving process: one event loop (mio) that owns every connection, a
//! bounded pool for the requests that need the driver, signals, graceful exit.
//!
//! Why one loop and not a thread per connection: an idle keep-alive
//! connection must cost memory (a small [`Conn`], no buffer, no thread), not
//! service; 10,000 of them must not keep a normal client from an answer.
//!
//! - The loop thread waits in epoll (edge-triggered) on the listeners, the
//!   signal self-pipe, the pool's waker and every connection. It reads, parses
//!   (`http.rs`), answers what needs no driver at once (`/healthz`, errors,
//!   and small requests of the memory driver, which only takes a lock),
//!   serves `/delay` as a timer, and hands driver requests to the pool
//!   (`pool.rs`). It never blocks: every socket is non-blocking.
//! - Every wait has a deadline, total and not reset by progress: the idle
//!   timeout between requests, `params.headerTimeout` for a whole head,
//!   `params.headerTimeout` plus the body at `params.minBodyRate`, the same
//!   for writing an answer, `params.timeout` plus [`REQUEST_MARGIN`] for a
//!   driver request (then 503, whatever the pool does), [`LINGER`] after a
//!   close. Deadlines live in a heap; the poll timeout is the earliest, so an
//!   idle worker does not wake up.
//! - Over a limit the answer is immediate: `params.maxConnections` reached ->
//!   the new connection gets 503 and is closed; the pool's queue full or the
//!   buffered bodies over [`MAX_BUFFERED`] -> 503. Every 503 says `Retry-After`.
//!
//! The listeners are set non-blocking (`O_NONBLOCK` is a property of the open
//! file description, so every process sharing an inherited listener sees it;
//! like nginx, every worker waits for readiness before `accept` and treats
//! `EAGAIN` as "someone else took it"). A listener is only ever closed by this
//! process, never `shutdown(2)`: that would stop it for every process sharing it.
//!
//! With `WATCHDOG_USEC` (the master's `watchdogTimeout`) the loop itself
//! sends `WATCHDOG=1` every half of it ([`Watchdog`]), also while draining.
//!
//! Graceful exit (zdrestart-worker(7), "Graceful exit"): on SIGTERM or SIGINT
//! the listeners are closed at once; requests in flight finish; the next answer
//! on each connection says `Connection: close`; an idle connection stays open
//! until its own idle deadline (a pooled client may still use it, and gets its
//! answer), then is closed; the worker exits 0 when no connection is left.
//! SIGHUP is logged and otherwise ignored (logs go to stdout). SIGUSR2 is left
//! as the master set it (ignored).

mod conns;
mod requests;

use crate::api::{self, Response, Route};
use crate::http::{self, Chunked, ChunkError, Framing, Head, Persist};
use crate::notify::{Notifier, Watchdog};
use crate::pool::{Done, Job, Pool};
use crate::settings::Settings;
use crate::shared::Shared;
use crate::store::Health;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zdrestart::signals::SignalPipe;

const SIGNAL_TOKEN: Token = Token(usize::MAX);
const WAKER_TOKEN: Token = Token(usize::MAX - 1);
/// Tokens of connections start here (listeners use 0..n).
const CONN_BASE: usize = 1 << 20;
/// Bytes read at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Largest buffer kept for reuse (bigger ones, from large bodies, are freed).
const KEEP_BUFFER: usize = 64 * 1024;
/// Buffers kept for reuse: idle connections hold none.
const SPARE_BUFFERS: usize = 256;
/// Largest body of a memory-driver request answered on the loop itself.
const INLINE_BODY: usize = 16 * 1024;
/// A driver request answers 503 at `params.timeout` plus this, at the latest,
/// whether or not a pool thread has even started it.
pub const REQUEST_MARGIN: Duration = Duration::from_millis(500);
/// Time to write an answer, besides its size at `params.minBodyRate`.
const WRITE_GRACE: Duration = Duration::from_secs(10);
/// After a server-side close, how long we keep reading (and discarding) what
/// the client still sends, so that the kernel does not reset the connection
/// and destroy the answer before the client has read it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: usize = 4 * http::MAX_BODY as usize;
/// Request bodies and partial heads buffered at once, over all connections
/// (being received or waiting for the pool); beyond it a request gets 503 at once.
pub const MAX_BUFFERED: usize = 64 * 1024 * 1024;

/// Signal flags and the self-pipe that wakes the loop.
pub struct Signals(SignalPipe);

impl Signals {
    /// Install the handlers. Call before reporting READY.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals(SignalPipe::install(&[SIGTERM, SIGINT, SIGHUP])?))
    }

    /// Did SIGTERM or SIGINT arrive?
    fn stopping(&self) -> bool {
        if self.0.take(SIGHUP) {
            log::info!("SIGHUP received: ignored (worker logs go to the master)");
        }
        self.0.is_set(SIGTERM) || self.0.is_set(SIGINT)
    }
}

/// What a request needs to be answered and logged.
struct Req {
    method: String,
    target: String,
    head_only: bool,
    /// Close after this answer (the client asked, or the worker decided).
    close: bool,
    /// The client itself asked to close (`Connection: close`, HTTP/1.0).
    asked_close: bool,
    started: Instant,
}

impl Req {
    fn of(head: Head, now: Instant) -> Req {
        Req {
            head_only: head.method == "HEAD",
            close: head.close,
            asked_close: head.close,
            method: head.method,
            target: head.target,
            started: now,
        }
    }

    /// For an answer to something that is not a request (a malformed head).
    fn none(now: Instant) -> Req {
        Req { method: String::new(), target: String::new(), head_only: false, close: true, asked_close: false, started: now }
    }
    /// The method the API sees (`HEAD` is `GET` without the body).
    fn api_method(&self) -> &str {
        if self.head_only {
            "GET"
        } else {
            &self.method
        }
    }
}

struct BodyState {
    req: Req,
    framing: Framing,
    body: Vec<u8>,
    chunked: Chunked,
    /// When the head was complete: the body's deadline counts from here.
    from: Instant,
}

enum Wait {
    /// `/delay/{ms}`: answered when the deadline comes.
    Delay(u64),
    /// A pool job with this sequence number.
    Job(u64),
}

enum Phase {
    /// Between requests (or before the first): idle deadline.
    Idle,
    /// Part of a head received: the whole head is due by the deadline.
    Head,
    Body(Box<BodyState>),
    Busy(Box<(Req, Wait)>),
    /// The last answer is being written; then `Linger`, or (`false`: the
    /// client asked to close and sent nothing more) close at once.
    Closing(bool),
    /// Write side shut down, discarding what the client still sends.
    Linger(usize),
}

/// One client connection, owned by the loop.
struct Conn {
    sock: TcpStream,
    /// Its place in `Loop::conns` (and its token, plus [`CONN_BASE`]).
    slot: usize,
    id: u64,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    phase: Phase,
    /// Deadline of the phase.
    due: Option<Instant>,
    /// Deadline of the answer being written (while `wbuf` has bytes left).
    write_due: Option<Instant>,
    /// The earliest heap entry for this connection (entries for other
    /// instants are stale and skipped).
    scheduled: Option<Instant>,
    /// An edge said readable and we have not seen `EAGAIN` since.
    readable: bool,
    /// The client sent FIN.
    eof: bool,
    seq: u64,
    /// Bytes of [`MAX_BUFFERED`] this connection holds.
    charge: usize,
}

impl Conn {
    fn deadline(&self) -> Option<Instant> {
        match (self.due, self.write_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

enum Progress {
    /// Nothing more to do with the bytes we have.
    NeedBytes,
    /// State changed: go round again.
    Again,
}

struct Loop<'a> {
    sh: Arc<Shared>,
    set: &'a Settings,
    poll: Poll,
    pool: Arc<Pool>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    next_id: u64,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    spare: Vec<Vec<u8>>,
    buffered: usize,
    draining: bool,
    healthz: Option<(Health, Response)>,
    done: Vec<Done>,
    /// A descriptor kept free to accept-and-close one connection on EMFILE.
    reserve: Option<std::fs::File>,
    refused: u64,
    /// Where every read lands first (then only the bytes read are copied).
    scratch: Box<[u8; READ_CHUNK]>,
}

/// Serve until SIGTERM/SIGINT, then drain and return (the caller exits 0).
/// READY is reported once every listener is being watched.
pub fn run(listeners: Vec<TcpListener>, sh: Arc<Shared>, set: &Settings, sig: Signals, notifier: &Notifier) -> io::Result<()> {
    let poll = Poll::new()?;
    for (i, l) in listeners.iter().enumerate() {
        l.set_nonblocking(true)?;
        poll.registry().register(&mut SourceFd(&l.as_raw_fd()), Token(i), Interest::READABLE)?;
    }
    let sig_fd = sig.0.as_raw_fd();
    poll.registry().register(&mut SourceFd(&sig_fd), SIGNAL_TOKEN, Interest::READABLE)?;
    let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
    let pool = Pool::start(sh.clone(), set.max_queued, waker)?;
    let mut lp = Loop {
        sh: sh.clone(),
        set,
        poll,
        pool: pool.clone(),
        conns: Vec::new(),
        free: Vec::new(),
        live: 0,
        next_id: 0,
        timers: BinaryHeap::new(),
        spare: Vec::new(),
        buffered: 0,
        draining: false,
        healthz: None,
        done: Vec::new(),
        reserve: std::fs::File::open("/dev/null").ok(),
        refused: 0,
        scratch: Box::new([0; READ_CHUNK]),
    };

    notifier.send("READY", "1");
    log::info!(listeners = listeners.len() as u64, threads = sh.threads as u64,
        max_connections = set.max_connections as u64; "Worker ready");

    // As mio listeners: accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC, no fcntl per connection.
    let mut listeners: Vec<Option<mio::net::TcpListener>> =
        listeners.into_iter().map(|l| Some(mio::net::TcpListener::from_std(l))).collect();
    // Edge-triggered readiness: a listener stays "pending" until accept says EAGAIN.
    let mut pending = vec![true; listeners.len()];
    let mut events = Events::with_capacity(1024);
    let mut drain_started = None;
    // Heartbeats come from this loop: a loop that hangs or spins stops them.
    let mut watchdog = Watchdog::from_env(Instant::now());
    loop {
        if let Some(w) = &mut watchdog {
            w.beat(Instant::now(), notifier);
        }
        if !lp.draining && sig.stopping() {
            // Stop accepting first: close our copies of the listeners (never
            // shutdown(2)); pending connections stay in the shared backlog
            // for the other workers.
            for l in listeners.iter_mut() {
                if let Some(l) = l.take() {
                    let _ = lp.poll.registry().deregister(&mut SourceFd(&l.as_raw_fd()));
                }
            }
            lp.draining = true;
            drain_started = Some(Instant::now());
            notifier.send("STATUS", "stopping");
            log::info!(connections = lp.live as u64;
                "Stopping: no longer accepting, finishing requests in flight; idle connections close at their idle deadline");
        }
        if lp.draining && lp.live == 0 {
            break;
        }
        let mut retry_accept = false;
        for (i, l) in listeners.iter().enumerate() {
            if let (true, Some(l)) = (pending[i], l) {
                pending[i] = false;
                if !lp.accept_all(l, Token(i)) {
                    pending[i] = true;
                    retry_accept = true;
                }
            }
        }
        let now = Instant::now();
        let mut timeout = lp.timers.peek().map(|Reverse((t, _, _))| t.saturating_duration_since(now));
        if retry_accept {
            timeout = Some(timeout.map_or(Duration::from_millis(100), |t| t.min(Duration::from_millis(100))));
        }
        if let Some(w) = &watchdog {
            timeout = Some(timeout.map_or(w.wait(now), |t| t.min(w.wait(now))));
        }
        match lp.poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            match ev.token() {
                SIGNAL_TOKEN => sig.0.drain(),
                WAKER_TOKEN => lp.completions(),
                Token(t) if t >= CONN_BASE => lp.conn_event(t - CONN_BASE, ev.is_readable() || ev.is_read_closed() || ev.is_error()),
                Token(i) => {
                    if let Some(p) = pending.get_mut(i) {
                        *p = true;
                    }
                }
            }
        }
        lp.expire(Instant::now());
    }
    pool.close();
    log::info!(drain_ms = drain_started.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0); "Worker exiting");
    Ok(())
}

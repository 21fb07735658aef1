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
//!   the new connection gets 503 and is closed; the pool's queue full -> 503.
//!   Every 503 says `Retry-After`.
//! - One memory budget, `params.maxBuffered`, for every byte a connection
//!   holds: partial heads, bodies (a `Content-Length` is reserved when the
//!   head arrives), bodies handed to the pool, answers not yet written. An
//!   answer shares the driver's bytes ([`Body::Shared`]): a shared text is
//!   counted once however many connections are writing it (`Loop::shared`),
//!   so 2,000 slow readers of one object hold it once. A connection whose
//!   answer is not being read is not read further (step 1 of `drive`). A
//!   request that would take the total past the budget gets 503 and a close;
//!   an answer that would is replaced by that 503. Growth past the budget is
//!   at most one read or one answer head, of the one connection being driven.
//!
//! The listeners are set non-blocking (`O_NONBLOCK` is a property of the open
//! file description, so every process sharing an inherited listener sees it;
//! like nginx, every worker waits for readiness before `accept` and treats
//! `EAGAIN` as "someone else took it"). A listener is only ever closed by this
//! process, never `shutdown(2)`: that would stop it for every process sharing it.
//!
//! Graceful exit (zdrestart-worker(7), "Graceful exit"): on SIGTERM or SIGINT
//! the listeners are closed at once; requests in flight finish; the next answer
//! on each connection says `Connection: close`; an idle connection stays open
//! until its own idle deadline (a pooled client may still use it, and gets its
//! answer), then is closed; the worker exits 0 when no connection is left.
//! SIGHUP is logged and otherwise ignored (logs go to stdout). SIGUSR2 is left
//! as the master set it (ignored).

use crate::api::{self, Body, Response, Route};
use crate::chunked::{BodyDecoder, ChunkError, Chunked};
use crate::http::{self, Framing, Head, Persist};
use crate::notify::Notifier;
use crate::pool::{Done, Job, Pool};
use crate::settings::Settings;
use crate::shared::Shared;
use crate::store::Health;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, IoSlice, Read, Write};
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
/// Largest body of a memory-driver request answered on the loop itself.
const INLINE_BODY: usize = 16 * 1024;
/// Answer bodies up to this size are copied behind their head (one write);
/// larger ones are written from where they are (the driver's shared text,
/// or the request's own buffer).
const INLINE_ANSWER: usize = 16 * 1024;
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
    decoder: BodyDecoder,
    body: Vec<u8>,
    /// Bytes of the budget set aside for the body (its `Content-Length`).
    reserved: usize,
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
    /// Answer heads (and small bodies) not yet written, from `wpos` on.
    wbuf: Vec<u8>,
    wpos: usize,
    /// The body of the last answer in `wbuf`, written after it, from `bpos` on.
    wbody: Option<Body>,
    bpos: usize,
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
    /// The body this connection handed to the pool (held until the answer).
    pool_bytes: usize,
    /// Bytes of the budget (`Loop::buffered`) this connection is charged.
    charge: usize,
}

impl Conn {
    fn deadline(&self) -> Option<Instant> {
        match (self.due, self.write_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes this connection holds now (capacities, not lengths), except a
    /// shared answer body, which `Loop::shared` counts.
    fn held(&self) -> usize {
        let phase = match &self.phase {
            Phase::Body(b) => b.body.capacity().max(b.reserved),
            _ => 0,
        };
        let body = match &self.wbody {
            Some(Body::Owned(v)) => v.capacity(),
            _ => 0,
        };
        self.rbuf.capacity() + self.wbuf.capacity() + phase + body + self.pool_bytes
    }

    /// Bytes of answers not yet written.
    fn unwritten(&self) -> usize {
        self.wbuf.len() - self.wpos + self.wbody.as_ref().map_or(0, |b| b.len() - self.bpos)
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
    /// Bytes held by every connection plus the shared answer bodies being
    /// written: what `params.maxBuffered` bounds.
    buffered: usize,
    /// Shared answer bodies being written (by address): connections writing
    /// each, and its length, counted once in `buffered`.
    shared: HashMap<usize, (usize, usize)>,
    draining: bool,
    healthz: Option<(Health, Response)>,
    done: Vec<Done>,
    /// A descriptor kept free to accept-and-close one connection on EMFILE.
    reserve: Option<std::fs::File>,
    refused: u64,
    /// Requests and answers refused for the budget.
    busy: u64,
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
        buffered: 0,
        shared: HashMap::new(),
        draining: false,
        healthz: None,
        done: Vec::new(),
        reserve: std::fs::File::open("/dev/null").ok(),
        refused: 0,
        busy: 0,
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
    loop {
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

impl Loop<'_> {
    /// Accept until the listener says EAGAIN; false if it should be retried
    /// shortly (an error other than EAGAIN: edge-triggered, no new event would come).
    fn accept_all(&mut self, l: &mio::net::TcpListener, _tok: Token) -> bool {
        loop {
            match l.accept() {
                Ok((stream, _peer)) => {
                    if self.live >= self.set.max_connections {
                        self.refuse(stream);
                        continue;
                    }
                    if let Err(e) = self.add(stream) {
                        log::error!(error = e.to_string().as_str(); "cannot watch a new connection: {}", e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) && self.reserve.is_some() => {
                    // Out of descriptors: free the reserve, take the connection
                    // and refuse it, so the client hears at once instead of
                    // waiting in the backlog.
                    self.reserve = None;
                    if let Ok((stream, _)) = l.accept() {
                        self.refuse(stream);
                    }
                    self.reserve = std::fs::File::open("/dev/null").ok();
                    log::warn!("accept: {} (open connections: {}); a connection was refused", e, self.live);
                }
                Err(e) => {
                    log::error!(error = e.to_string().as_str(); "accept failed: {}", e);
                    return false;
                }
            }
        }
    }

    /// Over capacity: a 503 (best effort, the socket buffer is empty) and close.
    fn refuse(&mut self, stream: TcpStream) {
        self.refused += 1;
        if self.refused.is_power_of_two() {
            log::warn!(refused = self.refused, connections = self.live as u64;
                "connection limit reached (params.maxConnections = {}): new connections get 503", self.set.max_connections);
        }
        let mut out = Vec::new();
        let resp = Response::error(503, "too many connections");
        http::render_into(&mut out, &resp, self.sh.who.pid, Persist::Close, false);
        let mut s = &stream;
        // Read what the client already sent, so that closing does not reset
        // the connection under the answer.
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write(&out);
        let _ = stream.shutdown(Shutdown::Write);
    }

    fn add(&mut self, mut sock: TcpStream) -> io::Result<()> {
        // Small JSON answers: do not let Nagle hold them back.
        let _ = sock.set_nodelay(true);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        if let Err(e) = self.poll.registry().register(&mut sock, Token(CONN_BASE + slot), Interest::READABLE | Interest::WRITABLE) {
            self.free.push(slot);
            return Err(e);
        }
        self.next_id += 1;
        let now = Instant::now();
        let mut c = Conn {
            sock,
            slot,
            id: self.next_id,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            wbody: None,
            bpos: 0,
            phase: Phase::Idle,
            due: Some(now + self.set.idle_timeout),
            write_due: None,
            scheduled: None,
            readable: false,
            eof: false,
            seq: 0,
            pool_bytes: 0,
            charge: 0,
        };
        self.schedule(slot, &mut c);
        self.conns[slot] = Some(c);
        self.live += 1;
        Ok(())
    }

    fn schedule(&mut self, slot: usize, c: &mut Conn) {
        if let Some(d) = c.deadline() {
            if c.scheduled.is_none_or(|s| d < s) {
                self.timers.push(Reverse((d, slot, c.id)));
                c.scheduled = Some(d);
            }
        }
    }

    /// Put a connection back after work on it, or drop it.
    fn put_back(&mut self, slot: usize, mut c: Conn, keep: bool) {
        if keep {
            // An idle connection keeps no buffer.
            if c.rbuf.is_empty() {
                c.rbuf = Vec::new();
            }
            if c.wpos == c.wbuf.len() {
                (c.wbuf, c.wpos) = (Vec::new(), 0);
            }
            self.settle(&mut c);
            self.schedule(slot, &mut c);
            self.conns[slot] = Some(c);
        } else {
            // No deregister: closing the socket (its only descriptor) takes
            // it out of the epoll set, one syscall less per connection.
            self.buffered -= c.charge;
            if let Some(Body::Shared(s)) = c.wbody.take() {
                self.unshare(&s);
            }
            self.live -= 1;
            self.free.push(slot);
        }
    }

    /// Charge `c` for what it holds now.
    fn settle(&mut self, c: &mut Conn) {
        let held = c.held();
        self.buffered = self.buffered - c.charge + held;
        c.charge = held;
    }

    /// Whether `c` holding what it holds now, plus `extra` bytes, would take
    /// the worker past its budget (a connection that does not grow always may).
    fn over_budget(&self, c: &Conn, extra: usize) -> bool {
        let held = c.held() + extra;
        held > c.charge && self.buffered - c.charge + held > self.set.max_buffered
    }

    /// What queueing `body` behind an answer head would add to the budget.
    fn answer_cost(&self, body: &Body) -> usize {
        match body {
            Body::Owned(v) => v.capacity(),
            Body::Shared(s) if self.shared.contains_key(&shared_key(s)) => 0,
            Body::Shared(s) => s.len(),
        }
    }

    /// One more connection writes the shared text `s`.
    fn share(&mut self, s: &std::sync::Arc<str>) {
        let e = self.shared.entry(shared_key(s)).or_insert((0, s.len()));
        if e.0 == 0 {
            self.buffered += e.1;
        }
        e.0 += 1;
    }

    /// One connection less writes `s` (done, or gone).
    fn unshare(&mut self, s: &std::sync::Arc<str>) {
        let key = shared_key(s);
        if let Some(e) = self.shared.get_mut(&key) {
            e.0 -= 1;
            if e.0 == 0 {
                self.buffered -= e.1;
                self.shared.remove(&key);
            }
        }
    }

    fn conn_event(&mut self, slot: usize, readable: bool) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else { return };
        if readable {
            c.readable = true;
        }
        let keep = self.drive(&mut c);
        self.put_back(slot, c, keep);
    }

    /// Pool answers: each goes to its connection if it still waits for it.
    fn completions(&mut self) {
        let mut done = std::mem::take(&mut self.done);
        self.pool.take_done(&mut done);
        for d in done.drain(..) {
            let Some(slot_ref) = self.conns.get_mut(d.conn) else { continue };
            let matches = slot_ref.as_ref().is_some_and(|c| {
                c.id == d.conn_id && matches!(&c.phase, Phase::Busy(b) if matches!(b.1, Wait::Job(s) if s == d.seq))
            });
            if !matches {
                continue; // answered 503 at its deadline, or the client left
            }
            let mut c = slot_ref.take().unwrap();
            let Phase::Busy(b) = std::mem::replace(&mut c.phase, Phase::Idle) else { unreachable!() };
            self.respond(&mut c, &b.0, d.resp);
            let keep = self.drive(&mut c);
            self.put_back(d.conn, c, keep);
        }
        self.done = done;
    }

    /// Handle every deadline that has come.
    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((t, slot, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(mut c) = self.conns.get_mut(slot).and_then(|s| s.take_if(|c| c.id == id && c.scheduled == Some(t))) else {
                continue;
            };
            c.scheduled = None;
            let keep = match c.deadline() {
                Some(d) if d <= now => self.timed_out(&mut c, now),
                _ => true,
            };
            self.put_back(slot, c, keep);
        }
    }

    /// A deadline of `c` passed: false to drop it.
    fn timed_out(&mut self, c: &mut Conn, now: Instant) -> bool {
        if c.write_due.is_some_and(|d| d <= now) {
            return false; // the client does not read its answer
        }
        c.due = None;
        match std::mem::replace(&mut c.phase, Phase::Idle) {
            Phase::Idle | Phase::Linger(_) | Phase::Closing(_) => false,
            Phase::Head => {
                self.respond(c, &Req::none(now), Response::error(408, "request timeout: the request head did not arrive in time"));
                self.drive(c)
            }
            Phase::Body(b) => {
                let mut req = b.req;
                req.close = true;
                self.respond(c, &req, Response::error(408, "request timeout: the body did not arrive in time"));
                self.drive(c)
            }
            Phase::Busy(b) => {
                let resp = match b.1 {
                    Wait::Delay(ms) => api::delay_done(&self.sh.who, ms),
                    Wait::Job(_) => {
                        crate::store::warn_store_error(&crate::store::StoreError::Unavailable(format!(
                            "no answer within params.timeout ({} ms)",
                            self.set.request_timeout.as_millis()
                        )));
                        Response::error(503, "database unavailable: no answer in time")
                    }
                };
                self.respond(c, &b.0, resp);
                self.drive(c)
            }
        }
    }

    /// Queue an answer on `c` and release what the request held. An answer
    /// carrying driver text that would take the worker past its budget is
    /// replaced by 503 and a close; every other answer is queued (its body is
    /// small, or the request's own buffer, already counted).
    fn respond(&mut self, c: &mut Conn, req: &Req, mut resp: Response) {
        // The request's body, in the phase or in the pool, is no longer needed.
        c.phase = Phase::Idle;
        c.pool_bytes = 0;
        // Framing errors set `req.close` (the rest of the stream cannot be
        // trusted); an API error (400 bad JSON, 404, 507...) keeps the connection.
        let mut close = req.close || self.draining || c.eof;
        let inline = req.head_only || resp.body.len() <= INLINE_ANSWER;
        if matches!(resp.body, Body::Shared(_)) {
            let cost = if req.head_only { 0 } else if inline { resp.body.len() } else { self.answer_cost(&resp.body) };
            if cost > 0 && self.over_budget(c, cost + http::MAX_ANSWER_HEAD) {
                self.over_budget_log("answers");
                resp = Response::error(503, "busy: too many answers in memory");
                close = true;
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
        }
        c.wbuf.reserve_exact(http::MAX_ANSWER_HEAD + if inline && !req.head_only { resp.body.len() } else { 0 });
        let persist = if close { Persist::Close } else { Persist::KeepAlive(self.set.announced_idle()) };
        http::render_head(&mut c.wbuf, &resp, self.sh.who.pid, persist);
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                method = req.method.as_str(),
                path = req.target.as_str(),
                status = resp.status as u64,
                duration_ms = req.started.elapsed().as_millis() as u64;
                "request"
            );
        }
        if !req.head_only {
            if inline {
                c.wbuf.extend_from_slice(resp.body.as_bytes());
            } else {
                if let Body::Shared(s) = &resp.body {
                    self.share(s);
                }
                debug_assert!(c.wbody.is_none(), "one answer body at a time");
                c.wbody = Some(resp.body);
                c.bpos = 0;
            }
        }
        let now = Instant::now();
        if close {
            // Linger unless the client itself asked to close and nothing
            // of it is left unread (then a close cannot reset the answer).
            c.phase = Phase::Closing(!(req.asked_close && c.rbuf.is_empty() && !c.readable));
        }
        // The idle deadline starts once the answer is written (`write_out`):
        // until then the answer's own deadline applies, not the idle one.
        c.due = None;
        let size = c.unwritten() as u64;
        c.write_due = Some(now + WRITE_GRACE + Duration::from_secs(size / self.set.min_body_rate));
    }

    /// A request or answer refused for the budget: logged at warn now and then.
    fn over_budget_log(&mut self, what: &str) {
        self.busy += 1;
        if self.busy.is_power_of_two() {
            log::warn!(refused = self.busy, buffered = self.buffered as u64;
                "memory budget reached (params.maxBuffered = {}): {} get 503", self.set.max_buffered, what);
        }
    }

    /// Write what is pending on `c`: the answer heads, then the body of the
    /// last answer. `Ok(true)` when everything is written, `Ok(false)` when
    /// the socket is full, `Err` when the connection is dead.
    fn write_out(&mut self, c: &mut Conn) -> Result<bool, ()> {
        if c.unwritten() == 0 {
            return Ok(true);
        }
        while c.unwritten() > 0 {
            let head = &c.wbuf[c.wpos..];
            let r = match &c.wbody {
                Some(b) => c.sock.write_vectored(&[IoSlice::new(head), IoSlice::new(&b.as_bytes()[c.bpos..])]),
                None => c.sock.write(head),
            };
            match r {
                Ok(0) => return Err(()),
                Ok(n) => {
                    let from_head = n.min(head.len());
                    c.wpos += from_head;
                    c.bpos += n - from_head;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        c.wbuf.clear();
        c.wpos = 0;
        if let Some(Body::Shared(s)) = c.wbody.take() {
            self.unshare(&s);
        }
        c.bpos = 0;
        c.write_due = None;
        if matches!(c.phase, Phase::Idle) {
            c.due = Some(Instant::now() + self.set.idle_timeout);
        }
        Ok(true)
    }

    /// Make every step possible on `c` without waiting; false to drop it.
    fn drive(&mut self, c: &mut Conn) -> bool {
        loop {
            // 1. Write what is pending. Until it is written, nothing more
            // is read: a client that does not read its answers gets no more.
            match self.write_out(c) {
                Ok(true) => {}
                Ok(false) => return true,
                Err(()) => return false,
            }
            // 2. Then whatever the phase allows.
            match c.phase {
                Phase::Closing(false) => return false,
                Phase::Closing(true) => {
                    let _ = c.sock.shutdown(Shutdown::Write);
                    c.phase = Phase::Linger(0);
                    c.due = Some(Instant::now() + LINGER);
                    c.rbuf.clear();
                }
                Phase::Linger(total) => return linger(c, total),
                Phase::Busy(_) => return true,
                Phase::Idle | Phase::Head | Phase::Body(_) => {
                    match self.progress(c) {
                        Progress::Again => continue,
                        Progress::NeedBytes => {}
                    }
                    if c.eof {
                        // The client left mid-request, or between requests.
                        return false;
                    }
                    if !c.readable {
                        return true;
                    }
                    if !self.read_more(c) {
                        return false;
                    }
                }
            }
        }
    }

    /// One read from `c` into its buffer; false when the connection is dead.
    fn read_more(&mut self, c: &mut Conn) -> bool {
        match c.sock.read(&mut self.scratch[..]) {
            Ok(0) => {
                c.eof = true;
                c.readable = false;
            }
            Ok(n) => {
                // Only the bytes read are kept (an idle or slow client holds
                // no buffer of a fixed size).
                c.rbuf.extend_from_slice(&self.scratch[..n]);
                // A short read emptied the socket: the next bytes bring a new
                // edge (as nginx assumes with EPOLLET).
                if n < READ_CHUNK {
                    c.readable = false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
        true
    }

    /// Use the bytes in `c.rbuf` for the current phase.
    fn progress(&mut self, c: &mut Conn) -> Progress {
        let now = Instant::now();
        match &c.phase {
            Phase::Idle | Phase::Head => self.progress_head(c, now),
            Phase::Body(_) => self.progress_body(c, now),
            _ => Progress::NeedBytes,
        }
    }

    /// Between requests or in a head: parse what has come.
    fn progress_head(&mut self, c: &mut Conn, now: Instant) -> Progress {
        if c.rbuf.is_empty() {
            return Progress::NeedBytes;
        }
        match http::parse_head(&c.rbuf) {
            Ok(None) => {
                if matches!(c.phase, Phase::Idle) {
                    // The whole head is due from its first byte on.
                    c.phase = Phase::Head;
                    c.due = Some(now + self.set.header_timeout);
                }
                // A partial head is buffered memory too: thousands
                // of slow clients must not hold more than the budget.
                if self.over_budget(c, 0) {
                    self.over_budget_log("request heads");
                    self.respond(c, &Req::none(now), Response::error(503, "busy: too many request heads in memory"));
                    return Progress::Again;
                }
                self.settle(c);
                Progress::NeedBytes
            }
            Err(e) => {
                self.respond(c, &Req::none(now), e.response());
                Progress::Again
            }
            Ok(Some((head, n))) => {
                c.rbuf.drain(..n);
                self.start_request(c, head, n, now);
                Progress::Again
            }
        }
    }

    /// In a body: decode what has come; dispatch it once complete.
    fn progress_body(&mut self, c: &mut Conn, now: Instant) -> Progress {
        let Phase::Body(b) = &mut c.phase else { return Progress::NeedBytes };
        let before = b.body.len();
        match b.decoder.feed(&c.rbuf, &mut b.body, http::MAX_BODY) {
            Ok(used) => {
                c.rbuf.drain(..used);
            }
            Err(e) => {
                let mut req = std::mem::replace(&mut b.req, Req::none(now));
                req.close = true;
                let resp = match e {
                    ChunkError::TooLarge => Response::error(413, &format!("body larger than {} bytes", http::MAX_BODY)),
                    ChunkError::Malformed(m) => Response::error(400, &format!("malformed chunked body: {}", m)),
                    ChunkError::TrailersTooLarge => Response::error(
                        431,
                        &format!("trailer fields too large: head and trailers over {} bytes or {} field lines", http::MAX_HEAD, http::MAX_FIELDS),
                    ),
                };
                self.respond(c, &req, resp);
                return Progress::Again;
            }
        }
        if matches!(b.decoder, BodyDecoder::Chunked(_)) && b.body.len() > before {
            c.due = Some(b.from + self.set.header_timeout + rate_time(b.body.len() as u64, self.set.min_body_rate));
        }
        let complete = b.decoder.done();
        // A chunked body's size is known as it comes: so is its charge.
        if self.over_budget(c, 0) {
            self.over_budget_log("request bodies");
            let mut req = Req::none(now);
            if let Phase::Body(b) = &mut c.phase {
                req = std::mem::replace(&mut b.req, req);
            }
            req.close = true;
            self.respond(c, &req, Response::error(503, "busy: too many request bodies in memory"));
            return Progress::Again;
        }
        if !complete {
            return Progress::NeedBytes;
        }
        let Phase::Body(b) = std::mem::replace(&mut c.phase, Phase::Idle) else { unreachable!() };
        let BodyState { req, body, .. } = *b;
        self.dispatch(c, req, body, now);
        Progress::Again
    }

    /// A head arrived: check the framing, then read the body or dispatch.
    fn start_request(&mut self, c: &mut Conn, head: Head, head_len: usize, now: Instant) {
        let (framing, expect_continue, minor, fields) = (head.framing, head.expect_continue, head.minor, head.fields);
        let mut req = Req::of(head, now);
        let has_body = match framing {
            Framing::None if req.method == "PUT" => {
                req.close = true;
                return self.respond(c, &req, Response::error(411, "Content-Length or Transfer-Encoding: chunked required"));
            }
            Framing::None | Framing::Length(0) => false,
            Framing::Length(n) if n > http::MAX_BODY => {
                // Answer before reading: the client learns at once, and we do
                // not buffer what we would refuse anyway.
                req.close = true;
                return self.respond(c, &req, Response::error(413, &format!("body larger than {} bytes", http::MAX_BODY)));
            }
            Framing::Length(n) => {
                // Set aside as the head arrives: 64 clients announcing 1 MiB
                // each are counted before their bytes are.
                if self.over_budget(c, n as usize) {
                    self.over_budget_log("request bodies");
                    req.close = true;
                    return self.respond(c, &req, Response::error(503, "busy: too many request bodies in memory"));
                }
                true
            }
            Framing::Chunked => true,
        };
        if !has_body {
            return self.dispatch(c, req, Vec::new(), now);
        }
        let body_due = match framing {
            Framing::Length(n) => now + self.set.header_timeout + rate_time(n, self.set.min_body_rate),
            _ => now + self.set.header_timeout,
        };
        let body_pending = match framing {
            Framing::Length(n) => (c.rbuf.len() as u64) < n,
            _ => true,
        };
        if expect_continue && minor >= 1 && body_pending {
            c.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let (decoder, reserved) = match framing {
            Framing::Length(n) => (BodyDecoder::Length(n), n as usize),
            _ => (BodyDecoder::Chunked(Chunked::new(head_len, fields)), 0),
        };
        c.due = Some(body_due);
        c.phase = Phase::Body(Box::new(BodyState {
            req,
            decoder,
            body: Vec::with_capacity(reserved),
            reserved,
            from: now,
        }));
    }

    /// A whole request: answer it here, start a delay, or hand it to the pool.
    fn dispatch(&mut self, c: &mut Conn, req: Req, body: Vec<u8>, now: Instant) {
        let route = api::route(&req.target);
        let method = req.api_method();
        if let Some(ms) = api::delay_of(method, &route) {
            c.due = Some(now + Duration::from_millis(ms));
            c.phase = Phase::Busy(Box::new((req, Wait::Delay(ms))));
            return;
        }
        // The memory driver never waits for I/O: a small request is answered
        // here, without the hand-over to a pool thread and back; a large body
        // (JSON validation of up to 1 MiB) goes to the pool all the same.
        let inline = !self.sh.store.may_block() && body.len() <= INLINE_BODY;
        if !inline && api::needs_driver(method, &route) {
            c.seq += 1;
            let deadline = now + self.set.request_timeout + REQUEST_MARGIN;
            let held = body.capacity();
            let job = Job {
                conn: c.slot,
                conn_id: c.id,
                seq: c.seq,
                method: method.to_string(),
                target: req.target.clone(),
                body,
                deadline,
            };
            return match self.pool.submit(job) {
                Ok(()) => {
                    c.due = Some(deadline);
                    c.pool_bytes = held;
                    let seq = c.seq;
                    c.phase = Phase::Busy(Box::new((req, Wait::Job(seq))));
                }
                Err(_) => self.respond(c, &req, Response::error(503, "busy: too many requests waiting for the database")),
            };
        }
        let resp = if route == Route::Healthz && method == "GET" {
            let h = self.sh.store.health();
            match &self.healthz {
                Some((cached, r)) if *cached == h => r.clone(),
                _ => {
                    let r = api::healthz(&self.sh.who, h);
                    self.healthz = Some((h, r.clone()));
                    r
                }
            }
        } else {
            // A bug in a handler must cost one 500, not the loop.
            let run = || api::handle(self.sh.store.as_ref(), &self.sh.who, method, &route, body);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| Response::error(500, "internal error"))
        };
        self.respond(c, &req, resp);
    }
}

/// After a close: read and drop what the client still sends (so that the
/// kernel does not reset the connection under the answer), up to
/// [`LINGER_MAX_BYTES`]; false once the connection is to be dropped.
fn linger(c: &mut Conn, mut total: usize) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match c.sock.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                total += n;
                if total > LINGER_MAX_BYTES {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.phase = Phase::Linger(total);
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Where a shared text lives: its key in `Loop::shared` (an address stays
/// unique while a connection holds the text).
fn shared_key(s: &std::sync::Arc<str>) -> usize {
    std::sync::Arc::as_ptr(s) as *const u8 as usize
}

/// How long `bytes` take at `rate` bytes per second.
fn rate_time(bytes: u64, rate: u64) -> Duration {
    Duration::from_millis(bytes.saturating_mul(1000) / rate.max(1))
}

//! The control socket server: a non-blocking listener and its clients,
//! driven by the master's `poll(2)` loop.
//!
//! Owns the clients' buffers, the framing of lines, the bounds and the
//! eviction below, and the order of answers. It does not decide anything
//! about restarts: the master turns each [`Command`] into exactly one answer
//! line ([`ControlServer::reply`]). Creating and removing the socket file is
//! [`super::bind`]'s job; the wire format is [`super::wire`]'s.
//!
//! # Bounds (no client can block, crash or slow the master)
//!
//! Everything is non-blocking. Per wake-up a client costs at most one `read`
//! of [`READ_CHUNK`] bytes and the answers to the lines it completed; the
//! listener accepts at most [`MAX_ACCEPT_PER_CALL`] connections per wake-up.
//! - a line longer than [`Limits::max_line`] (4096 bytes) answers
//!   `NACK line too long` and the client is closed once that answer is sent;
//! - at most [`Limits::max_clients`] (64) clients are connected. When the
//!   table is full, a new connection evicts one client (see *Eviction* below)
//!   and is served; only when no client is evictable is it answered `NACK too
//!   many clients` (best effort, never waiting) and closed;
//! - answers waiting for a client that does not read are bounded by
//!   [`Limits::max_output`] (64 KiB): past it the client is dropped. The
//!   master also stops reading from a client while an answer to it is still
//!   unsent, so a client that never reads stalls only itself;
//! - a client with no activity (nothing read from it, nothing written to it)
//!   for [`Limits::idle_timeout`] (60 s) is closed, except while it waits
//!   for the answer to a command the master answers later (`RESTART`,
//!   `RESTART WAIT`, `UPGRADE`: [`Command::deferred`]).
//!
//! Answers come back in the order of the commands: while a client waits for
//! the answer to `RESTART WAIT`, its further lines are not read (they stay in
//! the socket) and are handled once that answer is sent.
//!
//! # Eviction (a full table never locks the operator out)
//!
//! Idle or hostile clients cannot keep `zdrestartctl` out until they time out.
//! When a connection arrives and [`Limits::max_clients`] clients are
//! connected, the server closes the *evictable* client that has been idle
//! longest (oldest last activity: a byte read from it or written to it; ties:
//! the oldest connection), logs that at debug level, and accepts the new one.
//!
//! A client is evictable when the master owes it nothing: it is not waiting
//! for a deferred answer (`RESTART WAIT`, `RESTART` while its probe runs,
//! `UPGRADE`) and every command handed out for it was answered
//! ([`ControlServer::reply`]). Whatever else its state, it is evictable: idle
//! after its answers, connected without sending anything, in the middle of a
//! line, or stalled with answers queued that it does not read (its unsent
//! answers are dropped with it). A client owed an answer, above all one
//! waiting for `RESTART WAIT`, is never evicted. Only when no client is
//! evictable is the new connection refused with `NACK too many clients`.
//!
//! An evicted client's socket is shut down at once (its peer sees EOF) and
//! its fd is closed at the next [`ControlServer::expire`], so that a fd
//! number of the current round of `poll(2)` results never names two clients.
//! A client that sends its command right after connecting is read within a
//! wake-up or two, before [`MAX_ACCEPT_PER_CALL`] (16) connections per wake-up
//! can push it to the head of the eviction order.

use super::bind;
use super::handover::{ClientState, ControlState};
use super::wire::{nack, parse_command, Command, LINE_END, NACK_LINE_TOO_LONG, NACK_TOO_MANY_CLIENTS};
use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Identifies one connected client for the life of the server (never reused);
/// the master's state machine names the clients it answers by it.
pub type ClientId = u64;

/// Longest command line accepted, in bytes, without its newline.
pub const MAX_LINE: usize = 4096;
/// Most clients connected at once.
pub const MAX_CLIENTS: usize = 64;
/// Most answer bytes queued for one client that does not read them.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// A client with no activity for this long is closed (unless waiting).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from one client per wake-up.
pub const READ_CHUNK: usize = 4096;
/// Connections accepted per wake-up of the listener.
pub const MAX_ACCEPT_PER_CALL: usize = 16;

/// Bounds of a [`ControlServer`]. `Default` gives the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_line: usize,
    /// Most clients connected at once. When full, a new connection evicts
    /// the evictable client idle longest (one the master owes no answer: not
    /// waiting for `RESTART WAIT`, no command unanswered; stalled clients that
    /// do not read their answers included); only if none is evictable is it
    /// answered `NACK too many clients` and closed. See the module doc.
    pub max_clients: usize,
    pub max_output: usize,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_line: MAX_LINE, max_clients: MAX_CLIENTS, max_output: MAX_OUTPUT, idle_timeout: IDLE_TIMEOUT }
    }
}

struct Client {
    stream: UnixStream,
    fd: RawFd,
    /// Bytes read and not yet parsed (at most `max_line + READ_CHUNK`).
    inbuf: Vec<u8>,
    /// Answer bytes not yet written, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    last_activity: Instant,
    /// A deferred command ([`Command::deferred`]) is owed its answer: no
    /// idle timeout, not evictable. Set when the command is handed out,
    /// cleared by the reply that answers it.
    waiting: bool,
    /// Commands handed to the master and not answered yet.
    owed: usize,
    /// The client shut its writing side (read returned 0).
    eof: bool,
    /// A line was too long: answer `NACK line too long` once `owed` is 0.
    too_long: bool,
    /// Read no more; close once `owed` is 0 and `out` is sent.
    closing: bool,
}

impl Client {
    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn has_line(&self) -> bool {
        self.inbuf.contains(&b'\n') || (self.eof && !self.inbuf.is_empty())
    }

    /// Queue one answer line; false if that overflows the output bound.
    fn queue(&mut self, line: &str, max_output: usize) -> bool {
        if self.pending() + line.len() + LINE_END.len() > max_output {
            return false;
        }
        if self.out_pos > 0 && self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        // An answer is one line: a newline or NUL inside would break framing.
        self.out.extend(line.bytes().map(|b| if b == b'\n' || b == b'\r' || b == 0 { b' ' } else { b }));
        self.out.extend_from_slice(LINE_END.as_bytes());
        true
    }

    /// Write what the socket takes now. Err: the client is gone.
    fn flush(&mut self, now: Instant) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match (&self.stream).write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => {
                    self.out_pos += n;
                    self.last_activity = now;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }

    /// May the server read more from this client now?
    fn may_read(&self) -> bool {
        !self.eof && !self.closing && self.owed == 0 && self.pending() == 0 && !self.has_line()
    }

    fn done(&self) -> bool {
        self.owed == 0 && self.pending() == 0 && (self.closing || (self.eof && self.inbuf.is_empty()))
    }

    /// May this client be closed to make room for a new one? Yes unless the
    /// master owes it an answer (module doc, *Eviction*).
    fn evictable(&self) -> bool {
        !self.waiting && self.owed == 0
    }
}

/// The control socket: a non-blocking listener and its clients, driven by the
/// master's poll loop ([`poll_fds`](Self::poll_fds), [`on_ready`](Self::on_ready),
/// [`next_deadline`](Self::next_deadline), [`expire`](Self::expire)).
///
/// The master must answer every command [`on_ready`](Self::on_ready) returns
/// with exactly one [`reply`](Self::reply) (at once, or later for `RESTART
/// WAIT`), in order.
///
/// Dropping it closes the fds but leaves the socket file: only
/// [`close`](Self::close) removes it, so that a failed start or a panic in a
/// test cannot remove a file it did not decide to remove; a file left behind
/// by a dead master is replaced by the next [`bind`](Self::bind).
pub struct ControlServer {
    path: PathBuf,
    listener: UnixListener,
    /// (device, inode) of the socket file we created, to remove only ours.
    ident: (u64, u64),
    limits: Limits,
    clients: BTreeMap<ClientId, Client>,
    next_id: ClientId,
    /// Evicted clients' sockets, shut down but not closed until the next
    /// [`expire`](Self::expire): their fd numbers must not be reused by a
    /// client accepted in the same round of poll results.
    evicted: Vec<UnixStream>,
}

impl ControlServer {
    /// Bind at `path` with [`Limits::default`].
    ///
    /// The socket is bound inside a fresh mode-0700 directory beside `path`,
    /// set to mode 0600, then hard-linked to `path` (which fails instead of
    /// replacing if a path appeared meanwhile), so it is never reachable by
    /// others with wider permissions, whatever the umask. If `path` exists:
    /// a socket a master accepts on → error `control socket PATH: in use by a
    /// running master`; a socket nobody listens on → removed and replaced;
    /// anything else → error. The parent directory must exist. The listener
    /// is non-blocking and close-on-exec.
    pub fn bind(path: &Path) -> io::Result<ControlServer> {
        Self::bind_with(path, Limits::default())
    }

    /// [`bind`](Self::bind) with other bounds (tests).
    pub fn bind_with(path: &Path, limits: Limits) -> io::Result<ControlServer> {
        let bind::Bound { path, listener, ident } = bind::bind(path)?;
        Ok(ControlServer { path, listener, ident, limits, clients: BTreeMap::new(), next_id: 1, evicted: Vec::new() })
    }

    /// Append the fds to poll with their events (`libc::POLLIN`/`POLLOUT`).
    /// A client may be listed with no events: poll still reports its hang-up.
    pub fn poll_fds(&self, out: &mut Vec<(RawFd, i16)>) {
        out.push((self.listener.as_raw_fd(), libc::POLLIN));
        for c in self.clients.values() {
            let mut ev: i16 = 0;
            if c.may_read() {
                ev |= libc::POLLIN;
            }
            // POLLOUT also wakes us (at once) to handle lines left in the
            // buffer after a RESTART WAIT was answered.
            if c.pending() > 0 || (c.owed == 0 && !c.closing && c.has_line()) {
                ev |= libc::POLLOUT;
            }
            out.push((c.fd, ev));
        }
    }

    /// Handle `revents` of one fd from [`poll_fds`](Self::poll_fds): accept,
    /// read, write, parse. Returns the complete commands, in order. Never
    /// blocks; bounded work per call. Unknown fds are ignored.
    pub fn on_ready(&mut self, fd: RawFd, revents: i16, now: Instant) -> Vec<(ClientId, Command)> {
        let mut cmds = Vec::new();
        if fd == self.listener.as_raw_fd() {
            if revents & libc::POLLIN != 0 {
                self.accept_some(now);
            }
            return cmds;
        }
        let Some(id) = self.clients.iter().find(|(_, c)| c.fd == fd).map(|(id, _)| *id) else {
            return cmds;
        };
        let limits = self.limits;
        let c = self.clients.get_mut(&id).expect("client");
        let mut drop_it = revents & libc::POLLNVAL != 0;
        if !drop_it && revents & libc::POLLOUT != 0 && c.flush(now).is_err() {
            drop_it = true;
        }
        if !drop_it {
            // Lines already buffered first (left after a RESTART WAIT), then
            // one read if nothing is buffered or owed.
            Self::parse_lines(id, c, &limits, &mut cmds);
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && c.may_read() {
                let mut buf = [0u8; READ_CHUNK];
                match (&c.stream).read(&mut buf) {
                    Ok(0) => c.eof = true,
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&buf[..n]);
                        c.last_activity = now;
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(_) => drop_it = true,
                }
                Self::parse_lines(id, c, &limits, &mut cmds);
            }
        }
        if c.too_long && c.owed == 0 && !c.closing {
            c.closing = true;
            if !c.queue(&nack(NACK_LINE_TOO_LONG), limits.max_output) {
                drop_it = true;
            }
        }
        if !drop_it && c.pending() > 0 && c.flush(now).is_err() {
            drop_it = true;
        }
        // POLLHUP: the peer closed completely; nothing more can reach it. Its
        // last commands are still returned (like `echo RESTART | nc -U`).
        if drop_it || revents & (libc::POLLHUP | libc::POLLERR) != 0 || c.done() {
            self.clients.remove(&id);
        }
        cmds
    }

    /// Extract complete lines into commands, stopping after a `RESTART WAIT`
    /// (answers stay in order) or at a line that is too long.
    fn parse_lines(id: ClientId, c: &mut Client, limits: &Limits, cmds: &mut Vec<(ClientId, Command)>) {
        while !c.too_long && !c.closing && c.owed_allows_more(cmds, id) {
            let (line_end, next) = match c.inbuf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, i + 1),
                None if c.eof && !c.inbuf.is_empty() => (c.inbuf.len(), c.inbuf.len()),
                None => break,
            };
            let mut line = &c.inbuf[..line_end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.len() > limits.max_line {
                c.too_long = true;
                c.inbuf.clear();
                break;
            }
            let cmd = parse_command(&String::from_utf8_lossy(line));
            c.inbuf.drain(..next);
            if let Some(cmd) = cmd {
                // Any RESTART (answered later, after its probe) and UPGRADE
                // (answered by the new image): the lines after it wait, so
                // that answers stay in order.
                let deferred = cmd.deferred();
                c.owed += 1;
                cmds.push((id, cmd));
                if deferred {
                    c.waiting = true;
                    break;
                }
            }
        }
        if !c.inbuf.contains(&b'\n') && c.inbuf.len() > limits.max_line {
            c.too_long = true;
            c.inbuf.clear();
        }
    }

    fn accept_some(&mut self, now: Instant) {
        for _ in 0..MAX_ACCEPT_PER_CALL {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.clients.len() >= self.limits.max_clients && !self.evict_one(now) {
                        // Nobody evictable (all are owed an answer). Best
                        // effort, never waits: the socket buffer is empty.
                        let _ = (&stream).write(format!("{}{}", nack(NACK_TOO_MANY_CLIENTS), LINE_END).as_bytes());
                        log::debug!(component = "control";
                            "control client refused: too many clients ({}), all owed an answer", self.clients.len());
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    let fd = stream.as_raw_fd();
                    self.clients.insert(
                        id,
                        Client {
                            stream,
                            fd,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            out_pos: 0,
                            last_activity: now,
                            waiting: false,
                            owed: 0,
                            eof: false,
                            too_long: false,
                            closing: false,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS...: the connection stays in the
                    // backlog; try again on the next wake-up.
                    log::warn!(component = "control"; "control socket accept: {}", e);
                    break;
                }
            }
        }
    }

    /// Make room for one client: shut down and forget the evictable client
    /// idle longest (module doc, *Eviction*). False if none is evictable.
    fn evict_one(&mut self, now: Instant) -> bool {
        // min_by_key keeps the first of equal keys: the oldest connection.
        let victim = self.clients.iter().filter(|(_, c)| c.evictable()).min_by_key(|(_, c)| c.last_activity);
        let Some(id) = victim.map(|(id, _)| *id) else {
            return false;
        };
        let c = self.clients.remove(&id).expect("client");
        log::debug!(component = "control";
            "control client evicted to admit a new one (too many clients, {}): idle for {} ms, {} answer bytes unsent",
            self.limits.max_clients, now.saturating_duration_since(c.last_activity).as_millis(), c.pending());
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        self.evicted.push(c.stream);
        true
    }

    /// Queue one answer line for `client` (`ACK`, `ACK data`, `NACK reason`;
    /// the line terminator is added, newlines inside are replaced by spaces)
    /// and write what the socket takes now. Unknown or closed client: ignored.
    /// A client whose unsent answers would pass the output bound is dropped.
    pub fn reply(&mut self, client: ClientId, line: &str) {
        let now = Instant::now();
        let limits = self.limits;
        let Some(c) = self.clients.get_mut(&client) else { return };
        c.owed = c.owed.saturating_sub(1);
        if c.owed == 0 && c.waiting {
            c.waiting = false;
            c.last_activity = now;
        }
        let mut ok = c.queue(line, limits.max_output);
        if !ok {
            log::warn!(component = "control"; "control client dropped: it does not read its answers ({} bytes pending)", c.pending());
        }
        if ok && c.too_long && c.owed == 0 && !c.closing {
            c.closing = true;
            ok = c.queue(&nack(NACK_LINE_TOO_LONG), limits.max_output);
        }
        if ok {
            ok = c.flush(now).is_ok();
        }
        if !ok || c.done() {
            self.clients.remove(&client);
        }
    }

    /// Queue a line for `client` that is not the answer to a command (a
    /// streamed step, `PROGRESS <json>`): what the client is owed does not
    /// change. Unknown or closed client: ignored. A client that does not
    /// read its steps is dropped past the output bound, like one that does
    /// not read its answers.
    pub fn stream(&mut self, client: ClientId, line: &str) {
        let now = Instant::now();
        let max_output = self.limits.max_output;
        let Some(c) = self.clients.get_mut(&client) else { return };
        let ok = c.queue(line, max_output) && c.flush(now).is_ok();
        if !ok {
            log::warn!(component = "control"; "control client dropped: it does not read its progress ({} bytes pending)", c.pending());
            self.clients.remove(&client);
        }
    }

    /// Earliest idle deadline of a client, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.values().filter(|c| !c.waiting).map(|c| c.last_activity + self.limits.idle_timeout).min()
    }

    /// Close the clients idle past their deadline (no byte read from or
    /// written to them for the idle timeout), except waiting ones, and the
    /// fds of clients evicted since the last call. Call it once per round of
    /// poll results, after handling them.
    pub fn expire(&mut self, now: Instant) {
        self.evicted.clear();
        let idle = self.limits.idle_timeout;
        let before = self.clients.len();
        self.clients.retain(|_, c| c.waiting || now < c.last_activity + idle);
        if self.clients.len() < before {
            log::debug!(component = "control"; "closed {} idle control client(s)", before - self.clients.len());
        }
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Answer bytes queued and not yet taken by clients (at most
    /// `max_output` per client).
    pub fn queued_bytes(&self) -> usize {
        self.clients.values().map(|c| c.pending()).sum()
    }

    /// Clients waiting for the answer to a deferred command (`RESTART WAIT`, ...).
    pub fn waiting_clients(&self) -> Vec<ClientId> {
        self.clients.iter().filter(|(_, c)| c.waiting).map(|(id, _)| *id).collect()
    }

    /// What an upgrade hands over: the listener's fd, the socket file's
    /// identity and each client (fd, unparsed input, unsent answers, EOF
    /// seen). Clients owed an answer are refused here (only the one that
    /// asked for the upgrade, `except`, may be), so that no answer is lost.
    pub fn handover(&self, except: ClientId) -> Result<ControlState, String> {
        let mut clients = Vec::new();
        for (&id, c) in &self.clients {
            if c.closing || c.too_long {
                continue; // about to close: it is not carried over
            }
            if id != except && (c.owed > 0 || c.waiting) {
                return Err("a control client is owed an answer".into());
            }
            clients.push(ClientState {
                fd: c.fd,
                inbuf: c.inbuf.clone(),
                out: c.out[c.out_pos..].to_vec(),
                eof: c.eof,
            });
        }
        Ok(ControlState {
            path: self.path.clone(),
            fd: self.listener.as_raw_fd(),
            ident: self.ident,
            clients,
        })
    }

    /// The fd of a client.
    pub fn client_fd(&self, client: ClientId) -> Option<RawFd> {
        self.clients.get(&client).map(|c| c.fd)
    }

    /// The control server of the new image after an upgrade, from the fds
    /// and bytes of [`handover`](Self::handover). Returns the server and the
    /// client id of each fd. `requester`: the client owed the upgrade's
    /// answer (one deferred command owed).
    pub fn adopt(
        st: &ControlState,
        requester: Option<RawFd>,
    ) -> io::Result<(ControlServer, Vec<(RawFd, ClientId)>)> {
        let listener = UnixListener::from(crate::sys::adopt_fd(st.fd)?);
        listener.set_nonblocking(true)?;
        let now = Instant::now();
        let mut server = ControlServer {
            path: st.path.clone(),
            listener,
            ident: st.ident,
            limits: Limits::default(),
            clients: BTreeMap::new(),
            next_id: 1,
            evicted: Vec::new(),
        };
        let mut ids = Vec::new();
        for cl in &st.clients {
            let stream = UnixStream::from(crate::sys::adopt_fd(cl.fd)?);
            stream.set_nonblocking(true)?;
            let id = server.next_id;
            server.next_id += 1;
            let owed = usize::from(requester == Some(cl.fd));
            let waiting = owed > 0;
            server.clients.insert(
                id,
                Client {
                    stream,
                    fd: cl.fd,
                    inbuf: cl.inbuf.clone(),
                    out: cl.out.clone(),
                    out_pos: 0,
                    last_activity: now,
                    waiting,
                    owed,
                    eof: cl.eof,
                    too_long: false,
                    closing: false,
                },
            );
            ids.push((cl.fd, id));
        }
        Ok((server, ids))
    }

    /// Close every client and remove the socket file, if it is still the one
    /// this server created (call at exit).
    pub fn close(self) {
        super::bind::remove_if_ours(&self.path, self.ident);
    }
}

impl Client {
    /// Stop handing out commands once a deferred one is owed (handed out in
    /// this batch or before), or one from an earlier batch is unanswered.
    fn owed_allows_more(&self, cmds: &[(ClientId, Command)], id: ClientId) -> bool {
        if self.owed == 0 {
            return true;
        }
        // Commands of this batch are answered after on_ready returns, in order.
        let in_batch = cmds.iter().filter(|(i, _)| *i == id).count();
        !self.waiting && self.owed <= in_batch
    }
}

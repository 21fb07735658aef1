//! The connection table of the serving loop ([`super`]): accepting (and
//! refusing over capacity), a connection's slot and its deadline in the
//! heap, buffers kept for reuse, the pool's completions, and the deadlines
//! that expire (idle, head, body, request, linger).

use super::*;

impl Loop<'_> {
    /// Accept until the listener says EAGAIN; false if it should be retried
    /// shortly (an error other than EAGAIN: edge-triggered, no new event would come).
    pub(super) fn accept_all(&mut self, l: &mio::net::TcpListener, _tok: Token) -> bool {
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
    pub(super) fn refuse(&mut self, stream: TcpStream) {
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

    pub(super) fn add(&mut self, mut sock: TcpStream) -> io::Result<()> {
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
            phase: Phase::Idle,
            due: Some(now + self.set.idle_timeout),
            write_due: None,
            scheduled: None,
            readable: false,
            eof: false,
            seq: 0,
            charge: 0,
        };
        self.schedule(slot, &mut c);
        self.conns[slot] = Some(c);
        self.live += 1;
        Ok(())
    }

    pub(super) fn schedule(&mut self, slot: usize, c: &mut Conn) {
        if let Some(d) = c.deadline() {
            if c.scheduled.is_none_or(|s| d < s) {
                self.timers.push(Reverse((d, slot, c.id)));
                c.scheduled = Some(d);
            }
        }
    }

    /// Put a connection back after work on it, or drop it.
    pub(super) fn put_back(&mut self, slot: usize, mut c: Conn, keep: bool) {
        if keep {
            self.recycle(&mut c);
            self.schedule(slot, &mut c);
            self.conns[slot] = Some(c);
        } else {
            // No deregister: closing the socket (its only descriptor) takes
            // it out of the epoll set, one syscall less per connection.
            self.buffered -= c.charge;
            self.live -= 1;
            self.free.push(slot);
            let Conn { rbuf, wbuf, .. } = c;
            self.give(rbuf);
            self.give(wbuf);
        }
    }

    /// An idle connection keeps no buffer.
    pub(super) fn recycle(&mut self, c: &mut Conn) {
        if c.rbuf.is_empty() && c.rbuf.capacity() > 0 {
            let b = std::mem::take(&mut c.rbuf);
            self.give(b);
        }
        if c.wpos == c.wbuf.len() && c.wbuf.capacity() > 0 {
            c.wpos = 0;
            let b = std::mem::take(&mut c.wbuf);
            self.give(b);
        }
    }

    pub(super) fn give(&mut self, mut b: Vec<u8>) {
        if b.capacity() > 0 && b.capacity() <= KEEP_BUFFER && self.spare.len() < SPARE_BUFFERS {
            b.clear();
            self.spare.push(b);
        }
    }

    pub(super) fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_else(|| Vec::with_capacity(READ_CHUNK))
    }

    pub(super) fn conn_event(&mut self, slot: usize, readable: bool) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else { return };
        if readable {
            c.readable = true;
        }
        let keep = self.drive(&mut c);
        self.put_back(slot, c, keep);
    }

    /// Pool answers: each goes to its connection if it still waits for it.
    pub(super) fn completions(&mut self) {
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
            self.respond(&mut c, &b.0, &d.resp);
            let keep = self.drive(&mut c);
            self.put_back(d.conn, c, keep);
        }
        self.done = done;
    }

    /// Handle every deadline that has come.
    pub(super) fn expire(&mut self, now: Instant) {
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
    pub(super) fn timed_out(&mut self, c: &mut Conn, now: Instant) -> bool {
        if c.write_due.is_some_and(|d| d <= now) {
            return false; // the client does not read its answer
        }
        c.due = None;
        match std::mem::replace(&mut c.phase, Phase::Idle) {
            Phase::Idle | Phase::Linger(_) | Phase::Closing(_) => false,
            Phase::Head => {
                self.respond(c, &Req::none(now), &Response::error(408, "request timeout: the request head did not arrive in time"));
                self.drive(c)
            }
            Phase::Body(b) => {
                let mut req = b.req;
                req.close = true;
                self.respond(c, &req, &Response::error(408, "request timeout: the body did not arrive in time"));
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
                self.respond(c, &b.0, &resp);
                self.drive(c)
            }
        }
    }
}

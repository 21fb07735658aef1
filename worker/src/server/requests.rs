//! One connection's HTTP exchange in the serving loop ([`super`]): reading
//! and parsing (`http.rs`), the request's body, handing it to the API or
//! the pool, and writing the answer.

use super::*;

impl Loop<'_> {
    /// Queue an answer on `c` and release what the request held.
    pub(super) fn respond(&mut self, c: &mut Conn, req: &Req, resp: &Response) {
        self.buffered -= c.charge;
        c.charge = 0;
        // Framing errors set `req.close` (the rest of the stream cannot be
        // trusted); an API error (400 bad JSON, 404, 507...) keeps the connection.
        let close = req.close || self.draining || c.eof;
        if c.wbuf.capacity() == 0 {
            c.wbuf = self.buffer();
        }
        let persist = if close { Persist::Close } else { Persist::KeepAlive(self.set.announced_idle()) };
        http::render_into(&mut c.wbuf, resp, self.sh.who.pid, persist, req.head_only);
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                method = req.method.as_str(),
                path = req.target.as_str(),
                status = resp.status as u64,
                duration_ms = req.started.elapsed().as_millis() as u64;
                "request"
            );
        }
        let now = Instant::now();
        if close {
            // Linger unless the client itself asked to close and nothing
            // of it is left unread (then a close cannot reset the answer).
            c.phase = Phase::Closing(!(req.asked_close && c.rbuf.is_empty() && !c.readable));
            c.due = None;
        } else {
            c.phase = Phase::Idle;
            c.due = Some(now + self.set.idle_timeout);
        }
        let size = (c.wbuf.len() - c.wpos) as u64;
        c.write_due = Some(now + WRITE_GRACE + Duration::from_secs(size / self.set.min_body_rate));
    }

    /// Make every step possible on `c` without waiting; false to drop it.
    pub(super) fn drive(&mut self, c: &mut Conn) -> bool {
        loop {
            // 1. Write what is pending.
            if c.wpos < c.wbuf.len() {
                loop {
                    match c.sock.write(&c.wbuf[c.wpos..]) {
                        Ok(0) => return false,
                        Ok(n) => {
                            c.wpos += n;
                            if c.wpos == c.wbuf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return false,
                    }
                }
                c.wbuf.clear();
                c.wpos = 0;
                c.write_due = None;
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
                Phase::Linger(total) => {
                    let mut chunk = [0u8; 4096];
                    let mut total = total;
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
                    match c.sock.read(&mut self.scratch[..]) {
                        Ok(0) => {
                            c.eof = true;
                            c.readable = false;
                        }
                        Ok(n) => {
                            if c.rbuf.capacity() == 0 {
                                c.rbuf = self.buffer();
                            }
                            c.rbuf.extend_from_slice(&self.scratch[..n]);
                            // A short read emptied the socket: the next bytes
                            // bring a new edge (as nginx assumes with EPOLLET).
                            if n < READ_CHUNK {
                                c.readable = false;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return false,
                    }
                }
            }
        }
    }

    /// Use the bytes in `c.rbuf` for the current phase.
    pub(super) fn progress(&mut self, c: &mut Conn) -> Progress {
        let now = Instant::now();
        match &mut c.phase {
            Phase::Idle | Phase::Head => {
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
                        // of slow clients must not hold more than MAX_BUFFERED.
                        if c.rbuf.len() > c.charge {
                            let more = c.rbuf.len() - c.charge;
                            if self.buffered + more > MAX_BUFFERED {
                                self.respond(c, &Req::none(now), &Response::error(503, "busy: too many request heads in memory"));
                                return Progress::Again;
                            }
                            self.buffered += more;
                            c.charge += more;
                        }
                        Progress::NeedBytes
                    }
                    Err(e) => {
                        self.respond(c, &Req::none(now), &e.response());
                        Progress::Again
                    }
                    Ok(Some((head, n))) => {
                        self.buffered -= c.charge;
                        c.charge = 0;
                        c.rbuf.drain(..n);
                        self.start_request(c, head, now);
                        Progress::Again
                    }
                }
            }
            Phase::Body(b) => {
                let complete = match b.framing {
                    Framing::Chunked => {
                        let before = b.body.len();
                        match b.chunked.feed(&c.rbuf, &mut b.body, http::MAX_BODY) {
                            Ok(used) => {
                                c.rbuf.drain(..used);
                            }
                            Err(e) => {
                                let mut req = std::mem::replace(&mut b.req, Req::none(now));
                                req.close = true;
                                let resp = match e {
                                    ChunkError::TooLarge => Response::error(413, &format!("body larger than {} bytes", http::MAX_BODY)),
                                    ChunkError::Malformed(m) => Response::error(400, &format!("malformed chunked body: {}", m)),
                                };
                                self.respond(c, &req, &resp);
                                return Progress::Again;
                            }
                        }
                        let grown = b.body.len() - before;
                        if grown > 0 {
                            // A chunked body's size is known as it comes: so is its charge.
                            if self.buffered + grown > MAX_BUFFERED {
                                let mut req = std::mem::replace(&mut b.req, Req::none(now));
                                req.close = true;
                                self.respond(c, &req, &Response::error(503, "busy: too many request bodies in memory"));
                                return Progress::Again;
                            }
                            self.buffered += grown;
                            c.charge += grown;
                            c.due = Some(b.from + self.set.header_timeout + rate_time(b.body.len() as u64, self.set.min_body_rate));
                        }
                        b.chunked.done()
                    }
                    Framing::Length(n) => {
                        let want = n as usize - b.body.len();
                        let take = want.min(c.rbuf.len());
                        if b.body.is_empty() && take == c.rbuf.len() && take == want {
                            // The whole body in the buffer: take the buffer itself.
                            b.body = std::mem::take(&mut c.rbuf);
                        } else {
                            b.body.extend_from_slice(&c.rbuf[..take]);
                            c.rbuf.drain(..take);
                        }
                        b.body.len() == n as usize
                    }
                    Framing::None => true,
                };
                if !complete {
                    return Progress::NeedBytes;
                }
                let Phase::Body(b) = std::mem::replace(&mut c.phase, Phase::Idle) else { unreachable!() };
                let BodyState { req, body, .. } = *b;
                self.dispatch(c, req, body, now);
                Progress::Again
            }
            _ => Progress::NeedBytes,
        }
    }

    /// A head arrived: check the framing, then read the body or dispatch.
    pub(super) fn start_request(&mut self, c: &mut Conn, head: Head, now: Instant) {
        let (framing, expect_continue, minor) = (head.framing, head.expect_continue, head.minor);
        let mut req = Req::of(head, now);
        let has_body = match framing {
            Framing::None if req.method == "PUT" => {
                req.close = true;
                return self.respond(c, &req, &Response::error(411, "Content-Length or Transfer-Encoding: chunked required"));
            }
            Framing::None | Framing::Length(0) => false,
            Framing::Length(n) if n > http::MAX_BODY => {
                // Answer before reading: the client learns at once, and we do
                // not buffer what we would refuse anyway.
                req.close = true;
                return self.respond(c, &req, &Response::error(413, &format!("body larger than {} bytes", http::MAX_BODY)));
            }
            Framing::Length(n) => {
                if self.buffered + n as usize > MAX_BUFFERED {
                    req.close = true;
                    return self.respond(c, &req, &Response::error(503, "busy: too many request bodies in memory"));
                }
                self.buffered += n as usize;
                c.charge += n as usize;
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
            if c.wbuf.capacity() == 0 {
                c.wbuf = self.buffer();
            }
            c.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        c.due = Some(body_due);
        c.phase = Phase::Body(Box::new(BodyState {
            req,
            framing,
            body: Vec::new(),
            chunked: Chunked::default(),
            from: now,
        }));
    }

    /// A whole request: answer it here, start a delay, or hand it to the pool.
    pub(super) fn dispatch(&mut self, c: &mut Conn, req: Req, body: Vec<u8>, now: Instant) {
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
                    let seq = c.seq;
                    c.phase = Phase::Busy(Box::new((req, Wait::Job(seq))));
                }
                Err(_) => self.respond(c, &req, &Response::error(503, "busy: too many requests waiting for the database")),
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
            let run = || api::handle(self.sh.store.as_ref(), &self.sh.who, method, &route, &body);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| Response::error(500, "internal error"))
        };
        self.respond(c, &req, &resp);
    }
}

/// How long `bytes` take at `rate` bytes per second.
fn rate_time(bytes: u64, rate: u64) -> Duration {
    Duration::from_millis(bytes.saturating_mul(1000) / rate.max(1))
}

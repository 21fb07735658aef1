//! One connection's HTTP exchange in the serving loop ([`super`]): reading
//! and parsing (`http.rs`), the request's body, handing it to the API or
//! the pool, and writing the answer (its head, then a shared or owned body).

use super::*;

impl Loop<'_> {
    /// Queue an answer on `c` and release what the request held. An answer
    /// carrying driver text that would take the worker past its budget is
    /// replaced by 503 and a close; every other answer is queued (its body is
    /// small, or the request's own buffer, already counted).
    pub(super) fn respond(&mut self, c: &mut Conn, req: &Req, mut resp: Response) {
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
    pub(super) fn over_budget_log(&mut self, what: &str) {
        self.busy += 1;
        if self.busy.is_power_of_two() {
            log::warn!(refused = self.busy, buffered = self.buffered as u64;
                "memory budget reached (params.maxBuffered = {}): {} get 503", self.set.max_buffered, what);
        }
    }

    /// Write what is pending on `c`: the answer heads, then the body of the
    /// last answer. `Ok(true)` when everything is written, `Ok(false)` when
    /// the socket is full, `Err` when the connection is dead.
    pub(super) fn write_out(&mut self, c: &mut Conn) -> Result<bool, ()> {
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
    pub(super) fn drive(&mut self, c: &mut Conn) -> bool {
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
    pub(super) fn read_more(&mut self, c: &mut Conn) -> bool {
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
    pub(super) fn progress(&mut self, c: &mut Conn) -> Progress {
        let now = Instant::now();
        match &c.phase {
            Phase::Idle | Phase::Head => self.progress_head(c, now),
            Phase::Body(_) => self.progress_body(c, now),
            _ => Progress::NeedBytes,
        }
    }

    /// Between requests or in a head: parse what has come.
    pub(super) fn progress_head(&mut self, c: &mut Conn, now: Instant) -> Progress {
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
    pub(super) fn progress_body(&mut self, c: &mut Conn, now: Instant) -> Progress {
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
    pub(super) fn start_request(&mut self, c: &mut Conn, head: Head, head_len: usize, now: Instant) {
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

/// How long `bytes` take at `rate` bytes per second.
fn rate_time(bytes: u64, rate: u64) -> Duration {
    Duration::from_millis(bytes.saturating_mul(1000) / rate.max(1))
}

//! HTTP/1.1 framing for one accepted connection: read requests, answer them,
//! keep the connection alive or close it.
//!
//! Owns request parsing (httparse), body framing and limits, keep-alive and the
//! per-connection side of graceful exit (zdrestart-worker(7)): once the worker is
//! draining, the next answer on a connection says `Connection: close`, and a
//! connection idle when draining began still gets its next request answered
//! if it arrives within the grace ([`DRAIN_GRACE`]). It must not decide what a
//! request means (`api.rs`) and never touches the listeners.
//!
//! Blocking I/O with a short receive timeout ([`READ_SLICE`]): a thread waiting
//! for the next request wakes a few times a second to see whether the worker
//! is draining or the connection has been idle too long.

use crate::api::{self, Response, Route};
use crate::shared::Shared;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Largest request body (PUT); larger gets 413 without being read.
pub const MAX_BODY: u64 = 1024 * 1024;
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in a request.
const MAX_HEADERS: usize = 64;
/// A keep-alive connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that sends part of a request and then nothing for this long is closed.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// While draining, how long an idle connection may still send one last request.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Receive timeout of each read: how often a waiting thread re-checks its deadlines.
const READ_SLICE: Duration = Duration::from_millis(250);
/// A client that does not read its answer for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a server-side close, how long we keep reading (and discarding) what
/// the client still sends, so that the kernel does not reset the connection
/// and destroy the answer before the client has read it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: usize = 4 * MAX_BODY as usize;

/// A parsed request head, owned (the buffer is reused for the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub content_length: Option<u64>,
    /// A `Transfer-Encoding` header was present (we do not decode chunked bodies).
    pub transfer_encoding: bool,
    /// The client asked for `Connection: close` (or HTTP/1.0 without keep-alive).
    pub close: bool,
    pub expect_continue: bool,
}

/// Why a request head cannot be served; each is answered and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    Malformed(String),
    TooLarge,
}

impl HeadError {
    fn response(&self) -> Response {
        match self {
            HeadError::Malformed(m) => Response::error(400, &format!("malformed request: {}", m)),
            HeadError::TooLarge => Response::error(431, "request header fields too large"),
        }
    }
}

/// Parse a request head at the start of `buf`: `Ok(None)` when more bytes are
/// needed, else the head and its length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD { Err(HeadError::TooLarge) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if n > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let minor = req.version.unwrap_or(1);
    let mut head = Head {
        method: req.method.unwrap_or("").to_string(),
        target: req.path.unwrap_or("").to_string(),
        minor,
        content_length: None,
        transfer_encoding: false,
        close: minor == 0,
        expect_continue: false,
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let v: u64 = match value.parse() {
                Ok(v) if value.bytes().all(|b| b.is_ascii_digit()) => v,
                _ => return Err(HeadError::Malformed("invalid Content-Length".into())),
            };
            // Differing lengths are a request-smuggling signature: refuse.
            if head.content_length.is_some_and(|old| old != v) {
                return Err(HeadError::Malformed("conflicting Content-Length".into()));
            }
            head.content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_encoding = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && minor == 0 {
                    head.close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue") {
            head.expect_continue = true;
        }
    }
    Ok(Some((head, n)))
}

/// Reason phrase of the statuses we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Serialize an answer. Every answer carries Content-Type, Content-Length
/// (also `0` on 204, as the API promises) and X-Worker-Pid.
pub fn render(resp: &Response, pid: u32, close: bool, head_only: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + resp.body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Worker-Pid: {}\r\nConnection: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len(),
        pid,
        if close { "close" } else { "keep-alive" }
    );
    if let Some(allow) = resp.allow {
        let _ = write!(out, "Allow: {}\r\n", allow);
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    out
}

/// How a wait for bytes ended without bytes.
enum Stop {
    /// The peer closed or reset, or we gave up on an idle connection.
    Gone,
    /// The peer stalled in the middle of a request.
    Stalled,
}

/// Which deadline applies while waiting for bytes.
#[derive(Clone, Copy)]
enum Waiting {
    /// Between requests: idle timeout, or the drain grace.
    Idle(Instant),
    /// Inside a request: stall timeout from the last progress.
    Request,
}

struct Conn<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    sh: &'a Shared,
}

impl Conn<'_> {
    /// Read more bytes into `buf`, waiting at most until the deadline of `w`.
    fn fill(&mut self, w: Waiting) -> Result<(), Stop> {
        let mut chunk = [0u8; 16 * 1024];
        let started = Instant::now();
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Stop::Gone),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    let now = Instant::now();
                    match w {
                        Waiting::Idle(since) => {
                            if now.duration_since(since) >= IDLE_TIMEOUT {
                                return Err(Stop::Gone);
                            }
                            // Draining: an idle connection may still send one
                            // last request during the grace, then it is closed.
                            if let Some(t) = self.sh.drain_started() {
                                if now.duration_since(t) >= DRAIN_GRACE {
                                    return Err(Stop::Gone);
                                }
                            }
                        }
                        Waiting::Request => {
                            if now.duration_since(started) >= STALL_TIMEOUT {
                                return Err(Stop::Stalled);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Stop::Gone),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Answer and close: stop writing, then discard what the client still
    /// sends for a moment (see [`LINGER`]).
    fn close_after(&mut self, resp: &Response, head_only: bool) {
        let bytes = render(resp, self.sh.who.pid, true, head_only);
        if self.send(&bytes) {
            self.linger();
        }
    }

    fn linger(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        let mut chunk = [0u8; 16 * 1024];
        let mut total = 0usize;
        while Instant::now() < deadline && total < LINGER_MAX_BYTES {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => total += n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
                Err(_) => return,
            }
        }
    }
}

/// Serve one connection until it closes. Runs on its own connection thread.
pub fn serve(stream: TcpStream, sh: &Shared) {
    // Small JSON answers: do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(READ_SLICE));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut c = Conn { stream, buf: Vec::with_capacity(4096), sh };
    let mut idle_since = Instant::now();
    loop {
        // 1. A complete head.
        let (head, head_len) = loop {
            match parse_head(&c.buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => return c.close_after(&e.response(), false),
            }
            let w = if c.buf.is_empty() { Waiting::Idle(idle_since) } else { Waiting::Request };
            match c.fill(w) {
                Ok(()) => {}
                Err(Stop::Gone) => return,
                Err(Stop::Stalled) => return c.close_after(&Response::error(408, "request timeout"), false),
            }
        };
        c.buf.drain(..head_len);
        let started = Instant::now();
        let head_only = head.method == "HEAD";

        // 2. The body: Content-Length only.
        if head.transfer_encoding {
            return c.close_after(&Response::error(411, "Content-Length required (chunked bodies are not supported)"), head_only);
        }
        let len = match head.content_length {
            Some(n) => n,
            None if head.method == "PUT" => {
                return c.close_after(&Response::error(411, "Content-Length required"), head_only)
            }
            None => 0,
        };
        if len > MAX_BODY {
            // Answer before reading: the client learns at once, and we do not
            // buffer what we would refuse anyway.
            log::debug!(method = head.method.as_str(), path = head.target.as_str(), status = 413u64; "request");
            return c.close_after(&Response::error(413, &format!("body larger than {} bytes", MAX_BODY)), head_only);
        }
        let len = len as usize;
        if head.expect_continue && len > c.buf.len() && !c.send(b"HTTP/1.1 100 Continue\r\n\r\n") {
            return;
        }
        while c.buf.len() < len {
            match c.fill(Waiting::Request) {
                Ok(()) => {}
                Err(Stop::Gone) => return,
                Err(Stop::Stalled) => return c.close_after(&Response::error(408, "request timeout"), head_only),
            }
        }
        let body: Vec<u8> = c.buf.drain(..len).collect();

        // 3. The answer.
        let method = if head_only { "GET" } else { head.method.as_str() };
        let route = api::route(&head.target);
        let run = || api::handle(sh.store.as_ref(), &sh.who, method, &route, &body);
        // A bug in a handler or driver must cost one 500, not the connection
        // (the default panic hook still prints it on stderr, for the log).
        let guarded = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                .unwrap_or_else(|_| Response::error(500, "internal error"))
        };
        let resp = if matches!(route, Route::Delay(_)) {
            // A diagnostic sleep models time in flight, not work: it does not
            // hold one of the `threads` request permits.
            guarded()
        } else {
            let _permit = sh.permits.acquire();
            guarded()
        };
        // Checked after handling: a request that was in flight when draining
        // began is still answered, and tells the client to go elsewhere next.
        let close = head.close || sh.draining.load(Ordering::SeqCst);
        log::debug!(
            method = head.method.as_str(),
            path = head.target.as_str(),
            status = resp.status as u64,
            duration_ms = started.elapsed().as_millis() as u64;
            "request"
        );
        let bytes = render(&resp, sh.who.pid, close, head_only);
        if !c.send(&bytes) {
            return;
        }
        if close {
            c.linger();
            return;
        }
        idle_since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Head {
        parse_head(s.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn parses_heads() {
        let raw = "PUT /objects/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{\"a\":1}";
        let (h, n) = parse_head(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(n, raw.len() - 7);
        assert_eq!((h.method.as_str(), h.target.as_str(), h.minor), ("PUT", "/objects/a/b", 1));
        assert_eq!(h.content_length, Some(12));
        assert!(!h.close);
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost:").unwrap().is_none());
        assert!(head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").close);
        assert!(head("GET / HTTP/1.0\r\n\r\n").close);
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
        assert!(head("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").transfer_encoding);
        assert!(head("PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert_eq!(head("PUT / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n").content_length, Some(5));
    }

    #[test]
    fn rejects_bad_heads() {
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(parse_head(b"\x01\x02 nonsense\r\n\r\n"), Err(HeadError::Malformed(_))));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD + 1));
        assert_eq!(parse_head(big.as_bytes()), Err(HeadError::TooLarge));
        let many: String = (0..100).map(|i| format!("H{}: v\r\n", i)).collect();
        assert_eq!(parse_head(format!("GET / HTTP/1.1\r\n{}\r\n", many).as_bytes()), Err(HeadError::TooLarge));
    }

    #[test]
    fn renders() {
        let mut r = Response::error(405, "method not allowed");
        r.allow = Some("GET");
        let s = String::from_utf8(render(&r, 42, true, false)).unwrap();
        assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(s.contains("\r\nX-Worker-Pid: 42\r\n"));
        assert!(s.contains("\r\nContent-Type: application/json\r\n"));
        assert!(s.contains("\r\nConnection: close\r\n"));
        assert!(s.contains("\r\nAllow: GET\r\n"));
        assert!(s.ends_with("\r\n\r\n{\"error\":\"method not allowed\"}"));
        let s = String::from_utf8(render(&Response::no_content(), 1, false, false)).unwrap();
        assert!(s.contains("Content-Length: 0\r\n") && s.ends_with("\r\n\r\n"));
        let s = String::from_utf8(render(&Response::text(200, "{}"), 1, false, true)).unwrap();
        assert!(s.contains("Content-Length: 2\r\n") && s.ends_with("\r\n\r\n"));
    }
}

//! HTTP/1.1 framing, without I/O: request heads (httparse), body framing
//! (`Content-Length` or `chunked`, RFC 9112 sections 6 and 7.1) and limits, and
//! the serialization of answers (`Connection`, `Keep-Alive: timeout=N`,
//! `Retry-After`).
//!
//! The event loop (`server.rs`) feeds it bytes and decides when; this module
//! must not touch sockets, clocks or the driver, and must not decide what a
//! request means (`api.rs`).

use crate::api::Response;
use std::io::Write;

/// Largest request body (PUT), after chunked decoding; larger gets 413.
pub const MAX_BODY: u64 = 1024 * 1024;
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in a request.
const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (size, extensions) or trailer section of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no `Content-Length`, no `Transfer-Encoding`).
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub framing: Framing,
    /// The client asked for `Connection: close` (or HTTP/1.0 without keep-alive).
    pub close: bool,
    pub expect_continue: bool,
}

/// Why a request head cannot be served; each is answered and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    Malformed(String),
    TooLarge,
    /// A transfer coding other than `chunked`.
    NotImplemented(String),
}

impl HeadError {
    pub fn response(&self) -> Response {
        match self {
            HeadError::Malformed(m) => Response::error(400, &format!("malformed request: {}", m)),
            HeadError::TooLarge => Response::error(431, "request header fields too large"),
            HeadError::NotImplemented(m) => Response::error(501, m),
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
    let mut close = minor == 0;
    let mut expect_continue = false;
    let mut length: Option<u64> = None;
    let mut codings: Option<String> = None;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let v: u64 = match value.parse() {
                Ok(v) if value.bytes().all(|b| b.is_ascii_digit()) => v,
                _ => return Err(HeadError::Malformed("invalid Content-Length".into())),
            };
            // Differing lengths are a request-smuggling signature: refuse.
            if length.is_some_and(|old| old != v) {
                return Err(HeadError::Malformed("conflicting Content-Length".into()));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let c = codings.get_or_insert_with(String::new);
            if !c.is_empty() {
                c.push(',');
            }
            c.push_str(value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && minor == 0 {
                    close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue") {
            expect_continue = true;
        }
    }
    let framing = match (codings, length) {
        (None, None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
        // Both: RFC 9112 section 6.3 lets a server reject it, and it is how
        // requests are smuggled past proxies that pick the other one.
        (Some(_), Some(_)) => return Err(HeadError::Malformed("both Transfer-Encoding and Content-Length".into())),
        (Some(_), None) if minor == 0 => return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request".into())),
        (Some(c), None) => {
            let list: Vec<&str> = c.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
            match list.as_slice() {
                [one] if one.eq_ignore_ascii_case("chunked") => Framing::Chunked,
                // chunked must be last, once (RFC 9112 section 6.3): otherwise
                // the length cannot be known.
                l if !l.last().is_some_and(|t| t.eq_ignore_ascii_case("chunked")) => {
                    return Err(HeadError::Malformed("Transfer-Encoding does not end with chunked".into()))
                }
                _ => return Err(HeadError::NotImplemented(format!("transfer coding not supported: {}", c))),
            }
        }
    };
    let head = Head {
        method: req.method.unwrap_or("").to_string(),
        target: req.path.unwrap_or("").to_string(),
        minor,
        framing,
        close,
        expect_continue,
    };
    Ok(Some((head, n)))
}

/// Where a chunked body stands (RFC 9112 section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line (with extensions).
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// Trailer fields after the last chunk, up to the empty line.
    Trailers,
    Done,
}

/// Why a chunked body is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    Malformed(&'static str),
    TooLarge,
}

/// An incremental decoder of a chunked body: `feed` consumes what it can of
/// the received bytes and appends the data to `body`.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: ChunkState,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked { state: ChunkState::Size }
    }
}

impl Chunked {
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consume from `input`; returns how many bytes were used. Stops at the end
    /// of the body (the rest belongs to the next request) or when `input` ends
    /// in the middle of a line.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>, max: u64) -> Result<usize, ChunkError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                ChunkState::Done => return Ok(used),
                ChunkState::Size | ChunkState::Trailers => {
                    let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > MAX_CHUNK_LINE {
                            return Err(ChunkError::Malformed("chunk line too long"));
                        }
                        return Ok(used);
                    };
                    if eol > MAX_CHUNK_LINE {
                        return Err(ChunkError::Malformed("chunk line too long"));
                    }
                    let line = &rest[..eol];
                    let line = line.strip_suffix(b"\r").ok_or(ChunkError::Malformed("chunk line without CRLF"))?;
                    used += eol + 1;
                    if self.state == ChunkState::Trailers {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    let size_part = line.split(|&b| b == b';').next().unwrap_or(b"");
                    let size_part = trim_ows(size_part);
                    if size_part.is_empty() || size_part.len() > 15 || !size_part.iter().all(u8::is_ascii_hexdigit) {
                        return Err(ChunkError::Malformed("invalid chunk size"));
                    }
                    let size = u64::from_str_radix(std::str::from_utf8(size_part).unwrap_or("x"), 16)
                        .map_err(|_| ChunkError::Malformed("invalid chunk size"))?;
                    if body.len() as u64 + size > max {
                        return Err(ChunkError::TooLarge);
                    }
                    self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(used);
                    }
                    let n = (left as usize).min(rest.len());
                    body.extend_from_slice(&rest[..n]);
                    used += n;
                    self.state = if n as u64 == left { ChunkState::DataEnd } else { ChunkState::Data(left - n as u64) };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|&b| b != b'\r') {
                            return Err(ChunkError::Malformed("chunk data not followed by CRLF"));
                        }
                        return Ok(used);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ChunkError::Malformed("chunk data not followed by CRLF"));
                    }
                    used += 2;
                    self.state = ChunkState::Size;
                }
            }
        }
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
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
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// How an answer ends the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// `Connection: close`: the worker closes after this answer.
    Close,
    /// `Connection: keep-alive`, with `Keep-Alive: timeout=N` when `Some(N)`.
    KeepAlive(Option<u64>),
}

/// The head of an answer (status line, headers, the empty line) into `out`.
/// Every answer carries Content-Type, Content-Length (also `0` on 204, as the
/// API promises) and X-Worker-Pid; a 503 also carries `Retry-After: 1`. For
/// `HEAD`, Content-Length is the length of the body a `GET` would have.
pub fn render_head(out: &mut Vec<u8>, resp: &Response, pid: u32, persist: Persist) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Worker-Pid: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len(),
        pid,
    );
    match persist {
        Persist::Close => out.extend_from_slice(b"Connection: close\r\n"),
        Persist::KeepAlive(None) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Persist::KeepAlive(Some(n)) => {
            let _ = write!(out, "Connection: keep-alive\r\nKeep-Alive: timeout={}\r\n", n);
        }
    }
    if let Some(allow) = resp.allow {
        let _ = write!(out, "Allow: {}\r\n", allow);
    }
    if resp.status == 503 {
        out.extend_from_slice(b"Retry-After: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Largest head [`render_head`] writes (for a buffer of the right size).
pub const MAX_ANSWER_HEAD: usize = 256;

/// Serialize a whole answer into `out` (head, then the body unless `head_only`).
pub fn render_into(out: &mut Vec<u8>, resp: &Response, pid: u32, persist: Persist, head_only: bool) {
    render_head(out, resp, pid, persist);
    if !head_only {
        out.extend_from_slice(resp.body.as_bytes());
    }
}

/// [`render_into`] a new buffer (tests).
#[cfg(test)]
pub fn render(resp: &Response, pid: u32, close: bool, head_only: bool) -> Vec<u8> {
    let mut out = Vec::new();
    render_into(&mut out, resp, pid, if close { Persist::Close } else { Persist::KeepAlive(None) }, head_only);
    out
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
        assert_eq!(h.framing, Framing::Length(12));
        assert!(!h.close);
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost:").unwrap().is_none());
        assert!(head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").close);
        assert!(head("GET / HTTP/1.0\r\n\r\n").close);
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
        assert_eq!(head("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").framing, Framing::Chunked);
        assert_eq!(head("PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").framing, Framing::Chunked);
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").framing, Framing::None);
        assert!(head("PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert_eq!(head("PUT / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n").framing, Framing::Length(5));
    }

    #[test]
    fn rejects_bad_heads() {
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(parse_head(b"\x01\x02 nonsense\r\n\r\n"), Err(HeadError::Malformed(_))));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD + 1));
        assert_eq!(parse_head(big.as_bytes()), Err(HeadError::TooLarge));
        let te = |v: &str| parse_head(format!("PUT / HTTP/1.1\r\nTransfer-Encoding: {}\r\n\r\n", v).as_bytes());
        assert!(matches!(te("gzip"), Err(HeadError::Malformed(_))));
        assert!(matches!(te("gzip, chunked"), Err(HeadError::NotImplemented(_))));
        assert!(matches!(te("chunked, chunked"), Err(HeadError::NotImplemented(_))));
        assert!(matches!(parse_head(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"), Err(HeadError::Malformed(_))));
        assert!(matches!(parse_head(b"PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), Err(HeadError::Malformed(_))));
        let many: String = (0..100).map(|i| format!("H{}: v\r\n", i)).collect();
        assert_eq!(parse_head(format!("GET / HTTP/1.1\r\n{}\r\n", many).as_bytes()), Err(HeadError::TooLarge));
    }

    fn dechunk(parts: &[&[u8]], max: u64) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = Chunked::default();
        let mut body = Vec::new();
        let mut buf = Vec::new();
        let mut used_total = 0;
        for p in parts {
            buf.extend_from_slice(p);
            let used = d.feed(&buf, &mut body, max)?;
            buf.drain(..used);
            used_total += used;
        }
        Ok((body, used_total, d.done()))
    }

    #[test]
    fn chunked_bodies() {
        let all = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nGET";
        let (body, used, done) = dechunk(&[all], 1000).unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert!(done);
        assert_eq!(used, all.len() - 3, "stops at the end of the body");
        // Byte by byte gives the same.
        let parts: Vec<&[u8]> = all[..all.len() - 3].chunks(1).collect();
        let (body2, _, done2) = dechunk(&parts, 1000).unwrap();
        assert_eq!((body2, done2), (body, true));
        assert_eq!(dechunk(&[b"5\r\nabc"], 1000).unwrap(), (b"abc".to_vec(), 6, false));
        assert_eq!(dechunk(&[b"400\r\n"], 1023), Err(ChunkError::TooLarge));
        assert!(matches!(dechunk(&[b"zz\r\n"], 10), Err(ChunkError::Malformed(_))));
        assert!(matches!(dechunk(&[b"\r\n"], 10), Err(ChunkError::Malformed(_))));
        assert!(matches!(dechunk(&[b"2\r\nabX\r\n"], 10), Err(ChunkError::Malformed(_))));
        assert!(matches!(dechunk(&[b"2\nab\r\n"], 10), Err(ChunkError::Malformed(_))));
        assert!(matches!(dechunk(&[b"fffffffffffffffff\r\n"], 10), Err(ChunkError::Malformed(_))));
        assert!(matches!(dechunk(&[&[b'1'; 5000][..]], 10), Err(ChunkError::Malformed(_))));
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
        let mut out = Vec::new();
        render_into(&mut out, &Response::error(503, "busy"), 1, Persist::KeepAlive(Some(4)), false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("\r\nConnection: keep-alive\r\nKeep-Alive: timeout=4\r\n"), "{}", s);
        assert!(s.contains("\r\nRetry-After: 1\r\n"), "{}", s);
        let s = String::from_utf8(render(&Response::text(200, "{}"), 1, false, true)).unwrap();
        assert!(s.contains("Content-Length: 2\r\n") && s.ends_with("\r\n\r\n"));
    }
}

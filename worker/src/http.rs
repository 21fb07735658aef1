//! HTTP/1.1 request heads and answers, without I/O: the request line and
//! header fields of a request (RFC 9112 sections 2 to 5), what they say of
//! its body (section 6), and the serialization of answers (`Connection`,
//! `Keep-Alive: timeout=N`, `Retry-After`). Bodies are `chunked.rs`; the
//! grammar's pieces are `syntax.rs`.
//!
//! Strict: a head is accepted only as the grammar of RFC 9112 and RFC 9110
//! writes it, and every rule that decides how long a message is (the ones
//! requests are smuggled through) is the RFC's, with its section beside it
//! here and beside its test. A head that breaks one is answered with the
//! status the RFC names (400 unless said otherwise) and the connection is
//! closed. The parser takes bytes as they come: a prefix of a head gets
//! either "more bytes" or the answer the whole head gets (property tests in
//! `framing_tests.rs`). The event loop (`server.rs`) feeds it bytes and decides
//! when; this module must not touch sockets, clocks or the driver, and must
//! not decide what a request means (`api.rs`).

use crate::api::Response;
use crate::syntax::{crlf, field_line, target_byte, tchar, transfer_codings, valid_host, valid_target, Stop};
use std::io::Write;

/// Largest request body (PUT), after chunked decoding; larger gets 413.
pub const MAX_BODY: u64 = 1024 * 1024;
/// Largest request head (request line and header fields, with its empty
/// line); a chunked body's trailer section counts against what is left.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most field lines in a request, header and trailer fields together.
pub const MAX_FIELDS: usize = 64;
/// Longest request-target: a longer one gets 414 (RFC 9112 section 3; the
/// section RECOMMENDS request lines of at least 8000 octets).
pub const MAX_TARGET: usize = 8 * 1024;
/// Longest method: a longer one is longer than any this server implements
/// (RFC 9112 section 3: 501).
const MAX_METHOD: usize = 16;

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
    /// 0 for HTTP/1.0, 1 for HTTP/1.1 (and any later 1.x).
    pub minor: u8,
    pub framing: Framing,
    /// The client asked for `Connection: close` (or HTTP/1.0 without keep-alive).
    pub close: bool,
    pub expect_continue: bool,
    /// Field lines in the head (trailers may add up to [`MAX_FIELDS`]).
    pub fields: usize,
}

/// Why a request head cannot be served; each is answered and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// 400: not the grammar, or a rule of RFC 9112 or RFC 9110 says so.
    Malformed(&'static str),
    /// 431: a head over [`MAX_HEAD`] bytes or [`MAX_FIELDS`] field lines.
    TooLarge,
    /// 414: a request-target over [`MAX_TARGET`] bytes.
    UriTooLong,
    /// 501: a transfer coding or method this server does not implement.
    NotImplemented(&'static str),
    /// 505: a major version other than 1.
    VersionNotSupported,
}

impl HeadError {
    pub fn response(&self) -> Response {
        match self {
            HeadError::Malformed(m) => Response::error(400, &format!("malformed request: {}", m)),
            HeadError::TooLarge => Response::error(
                431,
                &format!("request header fields too large: more than {} bytes or {} field lines", MAX_HEAD, MAX_FIELDS),
            ),
            HeadError::UriTooLong => Response::error(414, &format!("request target longer than {} bytes", MAX_TARGET)),
            HeadError::NotImplemented(m) => Response::error(501, m),
            HeadError::VersionNotSupported => Response::error(505, "HTTP version not supported: HTTP/1.0 and HTTP/1.1 only"),
        }
    }
}

/// Parse a request head at the start of `buf`: `Ok(None)` when more bytes are
/// needed, else the head and its length in bytes. Only the first
/// [`MAX_HEAD`] bytes are looked at: a head not complete within them is too large.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    match head(window) {
        Ok(h) => Ok(Some(h)),
        Err(Failure::Need) if window.len() == MAX_HEAD => Err(HeadError::TooLarge),
        Err(Failure::Need) => Ok(None),
        Err(Failure::Bad(e)) => Err(e),
    }
}

/// Why [`head`] stopped.
enum Failure {
    Need,
    Bad(HeadError),
}

impl From<Stop> for Failure {
    fn from(s: Stop) -> Failure {
        match s {
            Stop::Need => Failure::Need,
            Stop::Bad(m) => Failure::Bad(HeadError::Malformed(m)),
        }
    }
}

fn bad<T>(e: HeadError) -> Result<T, Failure> {
    Err(Failure::Bad(e))
}

/// The fields of a head that matter here (RFC 9110 names are case-insensitive).
#[derive(Default)]
struct Fields<'a> {
    count: usize,
    content_length: Vec<&'a [u8]>,
    transfer_encoding: Vec<&'a [u8]>,
    host: Vec<&'a [u8]>,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl<'a> Fields<'a> {
    fn add(&mut self, name: &[u8], value: &'a [u8]) {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("content-length") {
            self.content_length.push(value);
        } else if is("transfer-encoding") {
            self.transfer_encoding.push(value);
        } else if is("host") {
            self.host.push(value);
        } else if is("connection") {
            for option in value.split(|&b| b == b',').map(crate::syntax::trim_ows) {
                self.close |= option.eq_ignore_ascii_case(b"close");
                self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if is("expect") {
            // RFC 9110 section 10.1.1: the only expectation, case-insensitive.
            self.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
    }
}

/// A whole head, or why not (see [`parse_head`]).
fn head(w: &[u8]) -> Result<(Head, usize), Failure> {
    // RFC 9112 section 2.2: a server SHOULD ignore at least one empty line
    // (CRLF) before the request line.
    let mut pos = 0;
    while w[pos..].starts_with(b"\r\n") {
        pos += 2;
    }
    if &w[pos..] == b"\r" {
        return Err(Failure::Need);
    }
    let (method, target, minor, mut pos) = request_line(w, pos)?;
    let mut f = Fields::default();
    loop {
        if w[pos..].starts_with(b"\r\n") {
            pos += 2;
            break;
        }
        if w.len() - pos < 2 && w[pos..].iter().all(|&b| b == b'\r') {
            return Err(Failure::Need);
        }
        f.count += 1;
        if f.count > MAX_FIELDS {
            return bad(HeadError::TooLarge);
        }
        let (name, value, n) = field_line(&w[pos..])?;
        f.add(name, value);
        pos += n;
    }
    let framing = framing(&f, minor)?;
    if !valid_target(method, target) {
        return bad(HeadError::Malformed("request target is none of the forms of RFC 9112 section 3.2"));
    }
    let head = Head {
        // The grammar let only ASCII through.
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        minor,
        framing,
        close: f.close || (minor == 0 && !f.keep_alive),
        expect_continue: f.expect_continue,
        fields: f.count,
    };
    Ok((head, pos))
}

/// A request line's method, target, minor version, and where the fields begin.
type RequestLine<'a> = (&'a [u8], &'a [u8], u8, usize);

/// `method SP request-target SP HTTP-version CRLF` at `pos` (RFC 9112
/// section 3: exactly one SP between the parts).
fn request_line(w: &[u8], pos: usize) -> Result<RequestLine<'_>, Failure> {
    // method = token (RFC 9110 section 9.1)
    let mut i = pos;
    while i < w.len() && tchar(w[i]) {
        i += 1;
        if i - pos > MAX_METHOD {
            return bad(HeadError::NotImplemented("method longer than any this server implements"));
        }
    }
    match w.get(i) {
        None => return Err(Failure::Need),
        Some(b' ') if i > pos => {}
        Some(_) => return bad(HeadError::Malformed("request line: invalid method")),
    }
    let method = &w[pos..i];
    // request-target: no whitespace (section 3.2), only URI characters, and
    // every `%` followed by two hex digits (RFC 3986 section 2.1).
    let start = i + 1;
    let mut i = start;
    loop {
        if i - start > MAX_TARGET {
            return bad(HeadError::UriTooLong);
        }
        match w.get(i) {
            None => return Err(Failure::Need),
            Some(b' ') if i > start => break,
            Some(b'%') => match (w.get(i + 1), w.get(i + 2)) {
                (Some(a), Some(b)) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i += 3,
                (Some(a), None) if a.is_ascii_hexdigit() => return Err(Failure::Need),
                (None, _) => return Err(Failure::Need),
                _ => return bad(HeadError::Malformed("request target: '%' not followed by two hex digits")),
            },
            Some(&b) if target_byte(b) => i += 1,
            Some(_) => return bad(HeadError::Malformed("request target: a byte no URI has")),
        }
    }
    if i - start > MAX_TARGET {
        return bad(HeadError::UriTooLong);
    }
    let target = &w[start..i];
    let (minor, end) = version(w, i + 1)?;
    Ok((method, target, minor, end))
}

/// `HTTP-version CRLF` at `i` (RFC 9112 section 2.3: `HTTP-name "/" DIGIT
/// "." DIGIT`, HTTP-name case-sensitive). Another major version is 505 (RFC
/// 9110 section 15.6.6); a later 1.x is served as 1.1 (RFC 9110 section 2.5).
fn version(w: &[u8], i: usize) -> Result<(u8, usize), Failure> {
    const SHAPE: &[u8] = b"HTTP/d.d";
    for (k, &want) in SHAPE.iter().enumerate() {
        let Some(&b) = w.get(i + k) else { return Err(Failure::Need) };
        let ok = if want == b'd' { b.is_ascii_digit() } else { b == want };
        if !ok {
            return bad(HeadError::Malformed("request line: invalid HTTP version"));
        }
    }
    let end = crlf(w, i + SHAPE.len())?;
    if w[i + 5] != b'1' {
        return bad(HeadError::VersionNotSupported);
    }
    Ok((if w[i + 7] == b'0' { 0 } else { 1 }, end))
}

/// How the body is delimited, from the framing fields of a complete head
/// (RFC 9112 sections 3.2 and 6; RFC 9110 section 8.6).
fn framing(f: &Fields<'_>, minor: u8) -> Result<Framing, Failure> {
    // RFC 9112 section 3.2: 400 to an HTTP/1.1 request without Host, and to
    // any request with more than one Host field line or an invalid Host value.
    match f.host.as_slice() {
        [] if minor >= 1 => return bad(HeadError::Malformed("no Host header field")),
        [_, _, ..] => return bad(HeadError::Malformed("more than one Host header field")),
        [h] if !valid_host(h, false) => return bad(HeadError::Malformed("invalid Host header field")),
        _ => {}
    }
    if !f.transfer_encoding.is_empty() {
        // Section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        if minor == 0 {
            return bad(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        // Section 6.3 (3): a server MAY reject both; it is how requests are
        // smuggled past a proxy that reads the other one.
        if !f.content_length.is_empty() {
            return bad(HeadError::Malformed("both Transfer-Encoding and Content-Length"));
        }
        return chunked_only(&f.transfer_encoding);
    }
    match f.content_length.as_slice() {
        [] => Ok(Framing::None),
        // RFC 9110 section 8.6: Content-Length = 1*DIGIT. Section 6.3 (5) of
        // RFC 9112: an invalid one is an unrecoverable error (400); a list,
        // or the same value twice, MAY be rejected, and is.
        [v] if !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit) => {
            Ok(Framing::Length(std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)))
        }
        [_] => bad(HeadError::Malformed("invalid Content-Length")),
        _ => bad(HeadError::Malformed("more than one Content-Length header field")),
    }
}

/// The framing of a request with `Transfer-Encoding` field values `values`.
/// RFC 9112 section 6.3 (4): chunked not the final coding -> 400 (the length
/// cannot be known; MUST). Section 6.1: chunked applied more than once is
/// something a sender MUST NOT do -> 400; any other coding (or parameters on
/// chunked), understood by this server neither -> 501 (SHOULD).
fn chunked_only(values: &[&[u8]]) -> Result<Framing, Failure> {
    let mut codings = Vec::new();
    for v in values {
        if transfer_codings(v, &mut codings).is_none() {
            return bad(HeadError::Malformed("Transfer-Encoding is not a list of transfer codings (RFC 9110 section 10.1.4)"));
        }
    }
    match codings.last() {
        Some((name, _)) if name == b"chunked" => {}
        _ => return bad(HeadError::Malformed("Transfer-Encoding does not end with chunked")),
    }
    if codings.iter().filter(|(name, _)| name == b"chunked").count() > 1 {
        return bad(HeadError::Malformed("chunked applied more than once"));
    }
    match codings.as_slice() {
        [(_, false)] => Ok(Framing::Chunked),
        _ => bad(HeadError::NotImplemented("transfer coding not implemented: chunked alone is")),
    }
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
        assert_eq!((h.method.as_str(), h.target.as_str(), h.minor, h.fields), ("PUT", "/objects/a/b", 1, 2));
        assert_eq!(h.framing, Framing::Length(12));
        assert!(!h.close);
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost:").unwrap().is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r").unwrap().is_none());
        assert!(parse_head(b"").unwrap().is_none());
        assert!(parse_head(b"\r").unwrap().is_none());
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n").close);
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade, close\r\n\r\n").close);
        assert!(head("GET / HTTP/1.0\r\n\r\n").close);
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
        assert_eq!(head("PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").framing, Framing::Chunked);
        assert_eq!(head("GET / HTTP/1.1\r\nHost: x\r\n\r\n").framing, Framing::None);
        assert!(head("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
        assert_eq!(head("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").framing, Framing::Length(0));
        assert_eq!(head("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0000000000000000007\r\n\r\n").framing, Framing::Length(7));
        // RFC 9112 section 2.2: empty lines before the request line are ignored.
        let (_, n) = parse_head(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!(n, 31);
        // RFC 9110 section 2.5: HTTP/1.x beyond 1.1 is served as 1.1.
        assert_eq!(head("GET / HTTP/1.7\r\nHost: x\r\n\r\n").minor, 1);
    }

    fn err(s: &[u8]) -> HeadError {
        parse_head(s).unwrap_err()
    }

    #[test]
    fn rejects_bad_heads() {
        // RFC 9110 section 8.6, RFC 9112 section 6.3 (5)
        assert!(matches!(err(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), HeadError::Malformed(_)));
        assert!(matches!(err(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"), HeadError::Malformed(_)));
        assert!(matches!(err(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"), HeadError::Malformed(_)));
        assert!(matches!(err(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\xc2\xa0\r\n\r\n"), HeadError::Malformed(_)));
        assert!(matches!(err(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n"), HeadError::Malformed(_)));
        assert!(matches!(err(b"\x01\x02 nonsense\r\n\r\n"), HeadError::Malformed(_)));
        // Early: garbage is refused at its first byte, not when a head would end.
        assert!(matches!(err(b"\x00"), HeadError::Malformed(_)));
        assert!(matches!(err(b"GET /\x7f"), HeadError::Malformed(_)));
        assert!(matches!(err(b"GET / HTTP/1.1\r\nHost: x\r\nX: \x00"), HeadError::Malformed(_)));
        // RFC 9110 section 5.4 (431), RFC 9112 section 3 (414 and 501), RFC 9110 section 15.6.6 (505).
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD + 1));
        assert_eq!(err(big.as_bytes()), HeadError::TooLarge);
        let many: String = (0..MAX_FIELDS + 1).map(|i| format!("H{}: v\r\n", i)).collect();
        assert_eq!(err(format!("GET / HTTP/1.1\r\n{}\r\n", many).as_bytes()), HeadError::TooLarge);
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(MAX_TARGET));
        assert_eq!(err(long.as_bytes()), HeadError::UriTooLong);
        let just = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(MAX_TARGET - 1));
        assert!(parse_head(just.as_bytes()).unwrap().is_some());
        assert_eq!(err(format!("GET /{}", "a".repeat(MAX_TARGET + 1)).as_bytes()), HeadError::UriTooLong, "as soon as it is too long");
        assert!(matches!(err(b"ABCDEFGHIJKLMNOPQ"), HeadError::NotImplemented(_)));
        assert_eq!(err(b"GET / HTTP/3.0\r\nHost: x\r\n\r\n"), HeadError::VersionNotSupported);
        // RFC 9112 sections 6.1 and 6.3 (3), (4).
        let te = |v: &str| parse_head(format!("PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {}\r\n\r\n", v).as_bytes());
        assert!(matches!(te("gzip"), Err(HeadError::Malformed(_))));
        assert!(matches!(te("chunked, gzip"), Err(HeadError::Malformed(_))));
        assert!(matches!(te("gzip, chunked"), Err(HeadError::NotImplemented(_))));
        assert!(matches!(te("chunked;a=b"), Err(HeadError::NotImplemented(_))));
        assert!(matches!(te("chunked, chunked"), Err(HeadError::Malformed(_))));
        assert!(matches!(te(""), Err(HeadError::Malformed(_))));
        assert!(matches!(te("chunked\u{3000}"), Err(HeadError::Malformed(_))));
        assert_eq!(te(",chunked ,").unwrap().unwrap().0.framing, Framing::Chunked);
        assert!(matches!(err(b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"), HeadError::Malformed(_)));
        assert!(matches!(err(b"PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), HeadError::Malformed(_)));
        // RFC 9112 section 3.2: Host.
        assert_eq!(err(b"GET / HTTP/1.1\r\n\r\n"), HeadError::Malformed("no Host header field"));
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), HeadError::Malformed("more than one Host header field"));
        assert_eq!(err(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), HeadError::Malformed("invalid Host header field"));
        // RFC 9112 section 3: the request line.
        for line in [&b"GET  / HTTP/1.1\r\n"[..], b"GET / HTTP/1.1 \r\n", b" GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\n", b"GET\t/ HTTP/1.1\r\n", b"GET / HTTP/11\r\n"] {
            let mut h = line.to_vec();
            h.extend_from_slice(b"Host: x\r\n\r\n");
            assert!(matches!(err(&h), HeadError::Malformed(_)), "{:?}", String::from_utf8_lossy(line));
        }
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

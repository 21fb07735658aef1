//! Request bodies, without I/O: `Content-Length` and the chunked transfer
//! coding (RFC 9112 sections 6.3 and 7.1), decoded incrementally from the
//! bytes as they come.
//!
//! Strict like the heads (`syntax.rs`): chunk lines are `chunk-size [
//! chunk-ext ] CRLF` exactly, chunk extensions follow their grammar (section
//! 7.1.1; no bare CR, no NUL), trailer fields are field lines (section 7.1.2)
//! and count against what the head left of the header limits (`MAX_HEAD`
//! bytes, `MAX_FIELDS` lines). Memory: a body grows to at most its limit,
//! never to twice it. It must not touch sockets or decide statuses.

use crate::http::{MAX_FIELDS, MAX_HEAD};
use crate::syntax::{crlf, field_line, quoted_string, skip_ows, skip_token, Step, Stop};

/// Longest chunk-size line (size and extensions, with its CRLF): RFC 9112
/// section 7.1.1 asks a server to limit chunk extensions.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a body is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// Not the grammar of a chunked body (400).
    Malformed(&'static str),
    /// Over the body limit once decoded (413).
    TooLarge,
    /// The trailer section over what the head left of the header limits (431).
    TrailersTooLarge,
}

/// Where a chunked body stands (RFC 9112 section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
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

/// An incremental decoder of a chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// Bytes and field lines the trailer section may still have.
    trailer_room: usize,
    fields_room: usize,
}

impl Chunked {
    /// For a body after a head of `head_len` bytes and `fields` field lines.
    pub fn new(head_len: usize, fields: usize) -> Chunked {
        Chunked { state: State::Size, trailer_room: MAX_HEAD.saturating_sub(head_len), fields_room: MAX_FIELDS.saturating_sub(fields) }
    }

    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Consume from `input`; returns how many bytes were used. Stops at the end
    /// of the body (the rest belongs to the next request) or when `input` ends
    /// in the middle of a line.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>, max: u64) -> Result<usize, ChunkError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Done => return Ok(used),
                State::Size => {
                    let window = &rest[..rest.len().min(MAX_CHUNK_LINE)];
                    let (size, len) = match chunk_line(window) {
                        Ok(v) => v,
                        Err(Stop::Need) if window.len() == MAX_CHUNK_LINE => return Err(ChunkError::Malformed("chunk line too long")),
                        Err(Stop::Need) => return Ok(used),
                        Err(Stop::Bad(m)) => return Err(ChunkError::Malformed(m)),
                    };
                    if size > max.saturating_sub(body.len() as u64) {
                        return Err(ChunkError::TooLarge);
                    }
                    used += len;
                    self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(used);
                    }
                    let n = (left as usize).min(rest.len());
                    grow(body, n, max);
                    body.extend_from_slice(&rest[..n]);
                    used += n;
                    self.state = if n as u64 == left { State::DataEnd } else { State::Data(left - n as u64) };
                }
                State::DataEnd => match crlf(rest, 0) {
                    Ok(n) => {
                        used += n;
                        self.state = State::Size;
                    }
                    Err(Stop::Need) => return Ok(used),
                    Err(Stop::Bad(_)) => return Err(ChunkError::Malformed("chunk data not followed by CRLF")),
                },
                State::Trailers => match self.trailer(rest)? {
                    Some(n) => used += n,
                    None => return Ok(used),
                },
            }
        }
    }

    /// One line of the trailer section (RFC 9112 section 7.1.2: `*( field-line
    /// CRLF ) CRLF`): its length, or `None` until it is complete.
    fn trailer(&mut self, rest: &[u8]) -> Result<Option<usize>, ChunkError> {
        if rest.starts_with(b"\r\n") {
            self.state = State::Done;
            return Ok(Some(2));
        }
        if rest.is_empty() || rest == b"\r" {
            return Ok(None);
        }
        if self.fields_room == 0 {
            return Err(ChunkError::TrailersTooLarge);
        }
        let window = &rest[..rest.len().min(self.trailer_room)];
        match field_line(window) {
            Ok((_, _, n)) => {
                // Trailer fields are read and dropped (RFC 9110 section 6.5.1: no
                // trailer field is needed here).
                self.trailer_room -= n;
                self.fields_room -= 1;
                Ok(Some(n))
            }
            Err(Stop::Need) if window.len() == self.trailer_room => Err(ChunkError::TrailersTooLarge),
            Err(Stop::Need) => Ok(None),
            Err(Stop::Bad(m)) => Err(ChunkError::Malformed(m)),
        }
    }
}

/// `chunk-size [ chunk-ext ] CRLF` at the start of `v` (RFC 9112 section
/// 7.1: chunk-size = 1*HEXDIG; section 7.1.1: chunk-ext = *( BWS ";" BWS
/// chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ), chunk-ext-val = token /
/// quoted-string). Extensions are checked and ignored (section 7.1.1).
/// Returns the size and the line's length.
fn chunk_line(v: &[u8]) -> Step<(u64, usize)> {
    let mut size: u64 = 0;
    let mut i = 0;
    while let Some(d) = v.get(i).and_then(|b| (*b as char).to_digit(16)) {
        // Section 7.1: a recipient MUST anticipate large numerals and prevent overflows.
        size = size.checked_mul(16).and_then(|s| s.checked_add(d as u64)).ok_or(Stop::Bad("chunk size overflows"))?;
        i += 1;
    }
    if i == 0 {
        return Err(if v.is_empty() { Stop::Need } else { Stop::Bad("invalid chunk size") });
    }
    loop {
        let j = skip_ows(v, i);
        match v.get(j) {
            None => return Err(Stop::Need),
            Some(b';') => {}
            // BWS only before ";" or "=": whitespace before the CRLF is not the grammar.
            Some(_) if j > i => return Err(Stop::Bad("whitespace at the end of a chunk line")),
            Some(b'\r') | Some(b'\n') => return crlf(v, i).map(|n| (size, n)),
            Some(_) => return Err(Stop::Bad("invalid chunk size or extension")),
        }
        i = skip_ows(v, j + 1);
        let name_end = skip_token(v, i);
        if name_end == v.len() {
            return Err(Stop::Need);
        }
        if name_end == i {
            return Err(Stop::Bad("invalid chunk extension name"));
        }
        i = name_end;
        let j = skip_ows(v, i);
        match v.get(j) {
            None => return Err(Stop::Need),
            Some(b'=') => {}
            _ => continue,
        }
        i = skip_ows(v, j + 1);
        i = match v.get(i) {
            None => return Err(Stop::Need),
            Some(b'"') => quoted_string(v, i)?,
            Some(_) => match skip_token(v, i) {
                k if k == v.len() => return Err(Stop::Need),
                k if k > i => k,
                _ => return Err(Stop::Bad("invalid chunk extension value")),
            },
        };
    }
}

/// Make room for `n` more bytes in `body`, doubling its capacity but never
/// past `max` (a body of 1 MiB holds 1 MiB, not 2).
fn grow(body: &mut Vec<u8>, n: usize, max: u64) {
    let need = body.len() + n;
    if need > body.capacity() {
        let target = (body.capacity() * 2).min(max as usize).max(need);
        body.reserve_exact(target - body.len());
    }
}

/// How the rest of a request body is read (RFC 9112 section 6.3).
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    /// `Content-Length`: this many bytes left.
    Length(u64),
    Chunked(Chunked),
}

impl BodyDecoder {
    /// Consume from `input` what belongs to the body, appending its data to
    /// `body`; returns how many bytes were used.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>, max: u64) -> Result<usize, ChunkError> {
        match self {
            BodyDecoder::Length(left) => {
                let n = (*left).min(input.len() as u64) as usize;
                grow(body, n, max);
                body.extend_from_slice(&input[..n]);
                *left -= n as u64;
                Ok(n)
            }
            BodyDecoder::Chunked(c) => c.feed(input, body, max),
        }
    }

    pub fn done(&self) -> bool {
        match self {
            BodyDecoder::Length(left) => *left == 0,
            BodyDecoder::Chunked(c) => c.done(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dechunk(parts: &[&[u8]], max: u64) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = Chunked::new(100, 2);
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

    fn bad(input: &[u8]) -> ChunkError {
        dechunk(&[input], 1 << 20).unwrap_err()
    }

    #[test]
    fn chunked_bodies() {
        let all = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE ; a = \"q\\\"\"\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nGET";
        let (body, used, done) = dechunk(&[all], 1000).unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert!(done);
        assert_eq!(used, all.len() - 3, "stops at the end of the body");
        // Byte by byte gives the same.
        let parts: Vec<&[u8]> = all[..all.len() - 3].chunks(1).collect();
        let (body2, _, done2) = dechunk(&parts, 1000).unwrap();
        assert_eq!((body2, done2), (body, true));
        assert_eq!(dechunk(&[b"5\r\nabc"], 1000).unwrap(), (b"abc".to_vec(), 6, false));
        assert!(dechunk(&[b"000000000000000000005\r\nabcde\r\n0\r\n\r\n"], 10).unwrap().2, "leading zeros");
        assert_eq!(dechunk(&[b"400\r\n"], 1023), Err(ChunkError::TooLarge));
    }

    #[test]
    fn chunk_lines_are_the_grammar() {
        // RFC 9112 section 7.1: chunk-size = 1*HEXDIG, then CRLF
        assert!(matches!(bad(b"zz\r\n"), ChunkError::Malformed(_)));
        assert!(matches!(bad(b"\r\n"), ChunkError::Malformed(_)));
        assert!(matches!(bad(b" 5\r\nabcde\r\n"), ChunkError::Malformed(_)), "no whitespace before the size");
        assert!(matches!(bad(b"5 \r\nabcde\r\n"), ChunkError::Malformed(_)), "BWS only before ';' (section 7.1.1)");
        assert!(matches!(bad(b"2\nab\r\n"), ChunkError::Malformed(_)), "bare LF (section 2.2)");
        assert!(matches!(bad(b"2\rab\r\n"), ChunkError::Malformed("bare CR")), "bare CR (section 2.2)");
        assert!(matches!(bad(b"2\r\nabX\r\n"), ChunkError::Malformed(_)), "CRLF after the data");
        assert!(matches!(bad(b"fffffffffffffffff\r\n"), ChunkError::Malformed("chunk size overflows")), "section 7.1");
        assert!(matches!(bad(&[b'1'; 5000][..]), ChunkError::Malformed(_)));
        // Section 7.1.1: chunk extensions, and CR, LF, NUL only where the grammar allows them.
        for (line, why) in [
            (&b"5;\r\n"[..], "a name after ';'"),
            (b"5;a=\r\n", "a value after '='"),
            (b"5;a\rb\r\n", "bare CR in an extension"),
            (b"5;a=\x00\r\n", "NUL in an extension"),
            (b"5;a=\"x\x00\"\r\n", "NUL in a quoted extension value"),
            (b"5;a=\"x\rb\"\r\n", "CR in a quoted extension value"),
            (b"5;a=b c\r\n", "two values"),
            (b"5;a\xc2\xa0\r\n", "non-ASCII after a name"),
        ] {
            assert!(matches!(bad(line), ChunkError::Malformed(_)), "{}", why);
        }
        for ok in [&b"5 ;a\r\nabcde\r\n0\r\n\r\n"[..], b"5;a=b;c\r\nabcde\r\n0;x=\"y\"\r\n\r\n", b"5\t;\ta\t=\t\"\\\"\"\r\nabcde\r\n0\r\n\r\n"] {
            assert_eq!(dechunk(&[ok], 10).unwrap().0, b"abcde", "{:?}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn trailers_count_against_the_head_limits() {
        // RFC 9112 section 7.1.2: trailer fields are field lines.
        assert!(matches!(bad(b"0\r\nX : 1\r\n\r\n"), ChunkError::Malformed(_)));
        assert!(matches!(bad(b"0\r\n X: 1\r\n\r\n"), ChunkError::Malformed(_)));
        assert!(matches!(bad(b"0\r\nX: \x001\r\n\r\n"), ChunkError::Malformed(_)));
        // What the head left: MAX_HEAD - 100 bytes and MAX_FIELDS - 2 lines.
        let mut many = b"0\r\n".to_vec();
        for i in 0..MAX_FIELDS - 2 {
            many.extend_from_slice(format!("T{}: v\r\n", i).as_bytes());
        }
        assert!(dechunk(&[&many[..], b"\r\n"], 10).unwrap().2);
        many.extend_from_slice(b"One-More: v\r\n\r\n");
        assert_eq!(bad(&many), ChunkError::TrailersTooLarge);
        let long = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD - 100));
        assert_eq!(bad(long.as_bytes()), ChunkError::TrailersTooLarge);
        let fits = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD - 100 - 7));
        assert!(dechunk(&[fits.as_bytes()], 10).unwrap().2);
        // 200 MB of trailer lines are cut off at the limit, never buffered.
        let mut d = Chunked::new(100, 2);
        let mut body = Vec::new();
        assert_eq!(d.feed(b"0\r\n", &mut body, 10), Ok(3));
        let line = b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut r = Ok(0);
        for _ in 0..MAX_FIELDS {
            r = d.feed(line, &mut body, 10);
            if r.is_err() {
                break;
            }
        }
        assert_eq!(r, Err(ChunkError::TrailersTooLarge));
    }

    #[test]
    fn bodies_grow_to_their_limit_only() {
        let mut d = BodyDecoder::Chunked(Chunked::new(0, 0));
        let mut body = Vec::new();
        let mut input = Vec::new();
        for _ in 0..16 {
            input.extend_from_slice(b"10000\r\n");
            input.extend(vec![b'x'; 0x10000]);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"0\r\n\r\n");
        let mut buf = Vec::new();
        for piece in input.chunks(16 * 1024) {
            buf.extend_from_slice(piece);
            let used = d.feed(&buf, &mut body, 1 << 20).unwrap();
            buf.drain(..used);
        }
        assert!(d.done() && buf.is_empty());
        assert_eq!(body.len(), 1 << 20);
        assert_eq!(body.capacity(), 1 << 20, "never twice the limit");
        let mut d = BodyDecoder::Length(5);
        let mut body = Vec::new();
        assert_eq!(d.feed(b"abcdefg", &mut body, 10), Ok(5));
        assert!(d.done() && body == b"abcde");
    }
}

//! Tests of the request framing as a whole (`http.rs` heads, `chunked.rs`
//! bodies), fed the way the event loop feeds them: the framing corpus
//! (worker/tests/framing-corpus.txt, each case with its RFC rule), and
//! property tests (proptest): random requests, pipelined, split at random
//! into reads, parse exactly as they were built and as the same bytes in one
//! read; mutated and random bytes parse the same however they are split,
//! never panic, and never make the parser hold more than `MAX_HEAD` bytes
//! while it waits for more.

use crate::chunked::{BodyDecoder, ChunkError, Chunked};
use crate::http::{parse_head, Framing, Head, MAX_BODY, MAX_HEAD};
use proptest::prelude::*;

/// How a byte stream ends for the framing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Waiting for more bytes (this many received and not yet used).
    Need(usize),
    /// Refused with this status (the connection is then closed).
    Refused(u16),
}

/// What the framing makes of a stream: the requests it reads, and its end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decoded {
    requests: Vec<(Head, Vec<u8>)>,
    end: End,
}

fn chunk_status(e: &ChunkError) -> u16 {
    match e {
        ChunkError::Malformed(_) => 400,
        ChunkError::TooLarge => 413,
        ChunkError::TrailersTooLarge => 431,
    }
}

/// The framing of `reads`, one after the other, as the event loop does it
/// (server.rs `progress`): heads with `parse_head` on what is buffered, bodies
/// with a `BodyDecoder`. Checks on the way that what waits for more bytes is
/// never over `MAX_HEAD` and that no body grows past `MAX_BODY`.
fn decode(reads: &[&[u8]]) -> Decoded {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut body_of: Option<(Head, BodyDecoder, Vec<u8>)> = None;
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            if let Some((head, mut dec, mut body)) = body_of.take() {
                match dec.feed(&buf, &mut body, MAX_BODY) {
                    Err(e) => return Decoded { requests: out, end: End::Refused(chunk_status(&e)) },
                    Ok(used) => {
                        buf.drain(..used);
                    }
                }
                assert!(body.len() as u64 <= MAX_BODY && body.capacity() as u64 <= MAX_BODY.max(body.len() as u64));
                if dec.done() {
                    out.push((head, body));
                    continue;
                }
                body_of = Some((head, dec, body));
                break;
            }
            match parse_head(&buf) {
                Err(e) => return Decoded { requests: out, end: End::Refused(e.response().status) },
                Ok(None) => break,
                Ok(Some((head, n))) => {
                    buf.drain(..n);
                    let dec = match head.framing {
                        Framing::None => {
                            out.push((head, Vec::new()));
                            continue;
                        }
                        Framing::Length(len) if len > MAX_BODY => {
                            return Decoded { requests: out, end: End::Refused(413) };
                        }
                        Framing::Length(len) => BodyDecoder::Length(len),
                        Framing::Chunked => BodyDecoder::Chunked(Chunked::new(n, head.fields)),
                    };
                    body_of = Some((head, dec, Vec::new()));
                }
            }
        }
        assert!(buf.len() <= MAX_HEAD, "waiting for more with {} bytes buffered", buf.len());
    }
    Decoded { requests: out, end: End::Need(buf.len()) }
}

/// `bytes` split at the given points (taken modulo its length, sorted).
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    let mut at: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// The status the worker answers a whole request of the corpus with, as far
/// as the framing decides it: 200 when the framing accepts it.
fn status_of(request: &[u8]) -> u16 {
    match decode(&[request]) {
        Decoded { end: End::Refused(s), .. } => s,
        Decoded { requests, end: End::Need(0) } if requests.len() == 1 => 200,
        d => panic!("not one whole request: {:?}", d),
    }
}

#[test]
fn the_framing_corpus() {
    let corpus = zdrestart_testkit::framing_corpus();
    assert!(corpus.len() > 60);
    for case in &corpus {
        assert_eq!(status_of(&case.request), case.status, "{}", case.rule);
        // Byte by byte (long cases: 61 bytes at a time), and every prefix:
        // the same verdict, never a different error first.
        let reads: Vec<&[u8]> = case.request.chunks(if case.request.len() < 2000 { 1 } else { 61 }).collect();
        assert_eq!(decode(&reads), decode(&[&case.request]), "read by read: {}", case.rule);
        // (Every prefix of short cases; of long ones, every 97th and the last 200.)
        let n = case.request.len();
        for cut in (0..n).filter(|&c| n < 2000 || c % 97 == 0 || c + 200 > n) {
            match decode(&[&case.request[..cut]]).end {
                End::Need(_) => {}
                End::Refused(s) => assert_eq!(s, case.status, "prefix of {} bytes: {}", cut, case.rule),
            }
        }
    }
}

/// One request as a client builds it, and what the framing must read of it.
#[derive(Debug, Clone)]
struct Built {
    bytes: Vec<u8>,
    method: String,
    target: String,
    body: Vec<u8>,
}

fn token() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[A-Za-z0-9!#$&'*+.^_`|~-]{1,12}").unwrap()
}

/// A field value: VCHAR, SP, HTAB, obs-text, without surrounding whitespace.
fn field_value() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![0x21u8..=0x7e, Just(b' '), Just(b'\t'), 0x80u8..=0xff];
    proptest::collection::vec(byte, 0..20).prop_map(|mut v| {
        while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.remove(0);
        }
        while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.pop();
        }
        v
    })
}

fn target() -> impl Strategy<Value = String> {
    proptest::string::string_regex("/([A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-F]{2}){0,40}(\\?[A-Za-z0-9=&/?%-]{0,10})?")
        .unwrap()
        .prop_filter("no % without two hex digits", |t| {
            let b = t.as_bytes();
            b.iter().enumerate().all(|(i, &c)| c != b'%' || (b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()))
        })
}

/// How a body is sent: not at all, with Content-Length, or chunked in
/// pieces of these sizes (with an extension or not, then trailer fields).
#[derive(Debug, Clone)]
enum Send {
    Nothing,
    Length,
    Chunked(Vec<(usize, bool)>, Vec<(String, Vec<u8>)>),
}

fn request() -> impl Strategy<Value = Built> {
    // (CONNECT and OPTIONS take other target forms: RFC 9112 sections 3.2.3, 3.2.4.)
    let method = prop_oneof![Just("GET".to_string()), Just("PUT".to_string()), Just("DELETE".to_string()), token()]
        .prop_filter("origin-form methods", |m| m != "CONNECT" && m != "OPTIONS");
    let extra = proptest::collection::vec((token(), field_value()), 0..6);
    let body = proptest::collection::vec(any::<u8>(), 0..300);
    let send = prop_oneof![
        Just(Send::Nothing),
        Just(Send::Length),
        (proptest::collection::vec((1usize..80, any::<bool>()), 0..6), proptest::collection::vec((token(), field_value()), 0..3))
            .prop_map(|(c, t)| Send::Chunked(c, t)),
    ];
    (method, target(), any::<bool>(), extra, body, send).prop_map(|(method, target, old, extra, body, send)| {
        let mut b = format!("{} {} HTTP/1.{}\r\nHost: example.com:80\r\n", method, target, if old { 0 } else { 1 }).into_bytes();
        for (name, value) in &extra {
            let n = name.to_ascii_lowercase();
            if ["host", "content-length", "transfer-encoding", "connection", "expect"].contains(&n.as_str()) {
                continue;
            }
            b.extend_from_slice(format!("{}: ", name).as_bytes());
            b.extend_from_slice(value);
            b.extend_from_slice(b"\r\n");
        }
        let send = if old && matches!(send, Send::Chunked(..)) { Send::Length } else { send };
        let nothing = matches!(send, Send::Nothing);
        let body = match send {
            Send::Nothing => Vec::new(),
            Send::Length => {
                b.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                b.extend_from_slice(&body);
                body
            }
            Send::Chunked(pieces, trailers) => {
                b.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let mut at = 0;
                for (size, ext) in pieces {
                    let piece = &body[at.min(body.len())..(at + size).min(body.len())];
                    if piece.is_empty() {
                        break;
                    }
                    b.extend_from_slice(format!("{:x}{}\r\n", piece.len(), if ext { ";n=\"v\"" } else { "" }).as_bytes());
                    b.extend_from_slice(piece);
                    b.extend_from_slice(b"\r\n");
                    at += piece.len();
                }
                b.extend_from_slice(b"0\r\n");
                for (name, value) in trailers {
                    b.extend_from_slice(format!("{}: ", name).as_bytes());
                    b.extend_from_slice(&value);
                    b.extend_from_slice(b"\r\n");
                }
                b.extend_from_slice(b"\r\n");
                body[..at.min(body.len())].to_vec()
            }
        };
        if nothing {
            b.extend_from_slice(b"\r\n");
        }
        Built { bytes: b, method, target, body }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Random pipelined requests, split at random into reads: read exactly
    /// as built, and the same as in one read.
    #[test]
    fn requests_parse_the_same_however_they_are_split(
        reqs in proptest::collection::vec(request(), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let stream: Vec<u8> = reqs.iter().flat_map(|r| r.bytes.clone()).collect();
        let whole = decode(&[&stream]);
        prop_assert_eq!(&whole.end, &End::Need(0));
        prop_assert_eq!(whole.requests.len(), reqs.len());
        for ((head, body), built) in whole.requests.iter().zip(&reqs) {
            prop_assert_eq!(&head.method, &built.method);
            prop_assert_eq!(&head.target, &built.target);
            prop_assert_eq!(body, &built.body);
        }
        prop_assert_eq!(decode(&split(&stream, &cuts)), whole);
    }

    /// Valid requests with bytes changed, inserted or removed at random, and
    /// random bytes: whatever the framing makes of them, it makes the same of
    /// every split of them, without panicking or holding more than MAX_HEAD.
    #[test]
    fn any_bytes_parse_the_same_however_they_are_split(
        reqs in proptest::collection::vec(request(), 1..3),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream: Vec<u8> = reqs.iter().flat_map(|r| r.bytes.clone()).collect();
        for (at, byte, how) in edits {
            let at = at % (stream.len() + 1);
            match how {
                0 if at < stream.len() => stream[at] = byte,
                1 => stream.insert(at, byte),
                _ if at < stream.len() => { stream.remove(at); }
                _ => {}
            }
        }
        stream.extend_from_slice(&noise);
        let whole = decode(&[&stream]);
        prop_assert_eq!(decode(&split(&stream, &cuts)), whole.clone());
        let noise_only = decode(&split(&noise, &cuts));
        prop_assert_eq!(noise_only, decode(&[&noise]));
    }

    /// Huge streams of one repeated line never make the parser hold more
    /// than its limits: a long head, a long chunk line, endless trailers.
    #[test]
    fn endless_input_is_cut_off_at_the_limits(
        line in proptest::collection::vec(any::<u8>(), 1..40),
        kind in 0u8..3,
    ) {
        let prefix: &[u8] = match kind {
            0 => b"GET / HTTP/1.1\r\nHost: h\r\n",
            1 => b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1",
            _ => b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
        };
        // 64 KiB in reads of about 500 bytes.
        let mut reads: Vec<Vec<u8>> = vec![prefix.to_vec()];
        let read = line.repeat(500 / line.len() + 1);
        for _ in 0..(64 * 1024 / read.len()) {
            reads.push(read.clone());
        }
        let refs: Vec<&[u8]> = reads.iter().map(|r| r.as_slice()).collect();
        // decode itself asserts the bound at every read.
        let d = decode(&refs);
        if let End::Need(n) = d.end {
            prop_assert!(n <= MAX_HEAD);
        }
    }
}

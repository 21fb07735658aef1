//! The grammar of HTTP/1.1 messages, piece by piece (RFC 9110, RFC 9112, and
//! RFC 3986 for hosts and targets), without I/O: character classes, field
//! lines, lists of transfer codings, quoted strings, `Host` values and
//! request targets. Each rule names its section.
//!
//! Every function reads bytes as they come: `Err(Stop::Need)` means "the
//! bytes so far are a valid beginning, more are needed", which a caller
//! turns into "wait" or, at its size limit, into "too large". A grammar
//! violation is `Err(Stop::Bad(why))` as soon as its first byte is seen, so
//! a prefix of a message gets either `Need` or the same error as the whole.
//! It must not decide statuses (`http.rs` does) or hold state.

/// Why parsing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Valid so far: more bytes are needed.
    Need,
    /// Not the grammar (the words say which rule).
    Bad(&'static str),
}

pub type Step<T> = Result<T, Stop>;

/// tchar (RFC 9110 section 5.6.2).
pub fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// field-vchar = VCHAR / obs-text (RFC 9110 section 5.5).
fn field_vchar(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// unreserved (RFC 3986 section 2.3).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// sub-delims (RFC 3986 section 2.2).
fn sub_delim(b: u8) -> bool {
    b"!$&'()*+,;=".contains(&b)
}

/// OWS = *( SP / HTAB ) (RFC 9110 section 5.6.3): the only whitespace.
pub fn ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Index of the first byte at or after `i` that is not OWS.
pub fn skip_ows(v: &[u8], mut i: usize) -> usize {
    while i < v.len() && ows(v[i]) {
        i += 1;
    }
    i
}

/// Index after the token at `i` (`i` itself when there is none).
pub fn skip_token(v: &[u8], mut i: usize) -> usize {
    while i < v.len() && tchar(v[i]) {
        i += 1;
    }
    i
}

/// `v` without leading and trailing OWS (never other whitespace).
pub fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b, rest @ ..] = v {
        if !ows(*b) {
            break;
        }
        v = rest;
    }
    while let [rest @ .., b] = v {
        if !ows(*b) {
            break;
        }
        v = rest;
    }
    v
}

/// The end of a line at `i`: `Ok(i + 2)` for CRLF. A CR not followed by LF
/// (RFC 9112 section 2.2: a bare CR is invalid) or an LF alone (this server
/// does not take the section's leave to accept one) is refused.
pub fn crlf(v: &[u8], i: usize) -> Step<usize> {
    match (v.get(i), v.get(i + 1)) {
        (None, _) | (Some(b'\r'), None) => Err(Stop::Need),
        (Some(b'\r'), Some(b'\n')) => Ok(i + 2),
        (Some(b'\r'), Some(_)) => Err(Stop::Bad("bare CR")),
        (Some(b'\n'), _) => Err(Stop::Bad("line ended by LF without CR")),
        _ => Err(Stop::Bad("unexpected byte before the end of a line")),
    }
}

/// One field line at the start of `v` (RFC 9112 section 5.1, RFC 9110
/// section 5.5): `field-name ":" OWS field-value OWS CRLF`. Returns the
/// name, the value without the surrounding OWS, and the line's length with
/// its CRLF. Refused: whitespace before the colon (section 5.1: MUST reject),
/// a line starting with whitespace (obs-fold, section 5.2; or whitespace
/// after the start line, section 2.2), and in the value CR, LF, NUL or any
/// other control character but HTAB (RFC 9110 section 5.5).
pub fn field_line(v: &[u8]) -> Step<(&[u8], &[u8], usize)> {
    if v.first().is_some_and(|&b| ows(b)) {
        return Err(Stop::Bad("field line starting with whitespace (obsolete line folding)"));
    }
    let name_end = skip_token(v, 0);
    match v.get(name_end) {
        None => return Err(Stop::Need),
        Some(b':') if name_end > 0 => {}
        Some(&b) if ows(b) && name_end > 0 => return Err(Stop::Bad("whitespace between field name and colon")),
        Some(_) => return Err(Stop::Bad("invalid field name")),
    }
    let start = name_end + 1;
    let mut i = start;
    while i < v.len() && (field_vchar(v[i]) || ows(v[i])) {
        i += 1;
    }
    let end = match v.get(i) {
        None => return Err(Stop::Need),
        Some(b'\r') | Some(b'\n') => crlf(v, i)?,
        Some(0) => return Err(Stop::Bad("NUL in a field value")),
        Some(_) => return Err(Stop::Bad("control character in a field value")),
    };
    Ok((&v[..name_end], trim_ows(&v[start..i]), end))
}

/// Index after the quoted-string at `i` (`v[i]` is `"`): RFC 9110 section
/// 5.6.4, `DQUOTE *( qdtext / quoted-pair ) DQUOTE`.
pub fn quoted_string(v: &[u8], mut i: usize) -> Step<usize> {
    i += 1;
    loop {
        match v.get(i) {
            None => return Err(Stop::Need),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => match v.get(i + 1) {
                None => return Err(Stop::Need),
                Some(&b) if ows(b) || field_vchar(b) => i += 2,
                Some(_) => return Err(Stop::Bad("invalid quoted-pair")),
            },
            // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
            Some(&b) if ows(b) || field_vchar(b) => i += 1,
            Some(_) => return Err(Stop::Bad("control character in a quoted string")),
        }
    }
}

/// The elements of a complete `Transfer-Encoding` field value: `#transfer-coding`
/// (RFC 9110 section 5.6.1 lists, section 10.1.4: `token *( OWS ";" OWS
/// token BWS "=" BWS ( token / quoted-string ) )`), each as its name and
/// whether it has parameters. Empty elements are skipped, as section 5.6.1
/// requires of a recipient. `None` when it is not that grammar.
pub fn transfer_codings(v: &[u8], out: &mut Vec<(Vec<u8>, bool)>) -> Option<()> {
    let mut i = 0;
    loop {
        i = skip_ows(v, i);
        if i == v.len() {
            return Some(());
        }
        if v[i] == b',' {
            i += 1;
            continue;
        }
        let name_end = skip_token(v, i);
        if name_end == i {
            return None;
        }
        let name = v[i..name_end].to_ascii_lowercase();
        i = name_end;
        let mut params = false;
        loop {
            let j = skip_ows(v, i);
            if v.get(j) != Some(&b';') {
                i = j;
                break;
            }
            params = true;
            i = skip_ows(v, j + 1);
            let k = skip_token(v, i);
            if k == i {
                return None;
            }
            i = skip_ows(v, k);
            if v.get(i) != Some(&b'=') {
                return None;
            }
            i = skip_ows(v, i + 1);
            i = match v.get(i) {
                Some(b'"') => quoted_string(v, i).ok()?,
                _ if skip_token(v, i) > i => skip_token(v, i),
                _ => return None,
            };
        }
        out.push((name, params));
        match v.get(i) {
            None => return Some(()),
            Some(b',') => i += 1,
            Some(_) => return None,
        }
    }
}

/// A complete `Host` value: `uri-host [ ":" port ]` (RFC 9110 section 7.2;
/// RFC 3986 section 3.2.2 IP-literal / IPv4address / reg-name, section 3.2.3
/// port = *DIGIT). An empty host is valid (RFC 9112 section 3.2). With
/// `port_required`, the authority-form of a CONNECT target (RFC 9112
/// section 3.2.3: `uri-host ":" port`).
pub fn valid_host(v: &[u8], port_required: bool) -> bool {
    let rest = if v.first() == Some(&b'[') {
        let Some(close) = v.iter().position(|&b| b == b']') else { return false };
        if !ip_literal(&v[1..close]) {
            return false;
        }
        &v[close + 1..]
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        if !reg_name(&v[..end]) {
            return false;
        }
        &v[end..]
    };
    match rest {
        [] => !port_required,
        [b':', port @ ..] => port.iter().all(u8::is_ascii_digit) && !(port_required && port.is_empty()),
        _ => false,
    }
}

/// reg-name = *( unreserved / pct-encoded / sub-delims ) (RFC 3986 section
/// 3.2.2); an IPv4 address is one too.
fn reg_name(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'%' if v.len() > i + 2 && v[i + 1].is_ascii_hexdigit() && v[i + 2].is_ascii_hexdigit() => i += 3,
            b if unreserved(b) || sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    true
}

/// What is between `[` and `]`: IPv6address, or IPvFuture = "v" 1*HEXDIG
/// "." 1*( unreserved / sub-delims / ":" ) (RFC 3986 section 3.2.2).
fn ip_literal(v: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = v {
        let Some(dot) = rest.iter().position(|&b| b == b'.') else { return false };
        let (hex, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !hex.is_empty()
            && hex.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail.iter().all(|&b| unreserved(b) || sub_delim(b) || b == b':');
    }
    std::str::from_utf8(v).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

/// Whether `b` may appear in a request-target (RFC 9112 section 3.2, RFC
/// 3986 section 2: unreserved, reserved but `#`, and `%` of pct-encoded).
/// No whitespace, no control character, nothing above ASCII.
pub fn target_byte(b: u8) -> bool {
    unreserved(b) || sub_delim(b) || b":/?@[]%".contains(&b)
}

/// Whether a complete request-target is one of the four forms of RFC 9112
/// section 3.2 for `method`: authority-form only and always for CONNECT
/// (section 3.2.3), asterisk-form only for OPTIONS (section 3.2.4),
/// otherwise origin-form (`absolute-path [ "?" query ]`: no `[` or `]`) or
/// absolute-form (`scheme ":" ...`, section 3.2.2). Every `%` is followed by
/// two hex digits (checked as the target is read).
pub fn valid_target(method: &[u8], t: &[u8]) -> bool {
    if method == b"CONNECT" {
        return valid_host(t, true);
    }
    match t {
        b"*" => method == b"OPTIONS",
        [b'/', ..] => !t.iter().any(|&b| b == b'[' || b == b']'),
        [first, ..] if first.is_ascii_alphabetic() => {
            // scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) (RFC 3986 section 3.1)
            let end = t.iter().position(|&b| !(b.is_ascii_alphanumeric() || b"+-.".contains(&b))).unwrap_or(t.len());
            t.get(end) == Some(&b':')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lines() {
        // RFC 9112 section 5.1, RFC 9110 section 5.5
        assert_eq!(field_line(b"Host: a \t\r\nX"), Ok((&b"Host"[..], &b"a"[..], 11)));
        assert_eq!(field_line(b"X-Empty:\r\n"), Ok((&b"X-Empty"[..], &b""[..], 10)));
        assert_eq!(field_line(b"X: a\xc2\xa0\r\n"), Ok((&b"X"[..], &b"a\xc2\xa0"[..], 8)), "obs-text is kept, never trimmed");
        assert_eq!(field_line(b"X: a"), Err(Stop::Need));
        assert_eq!(field_line(b"X: a\r"), Err(Stop::Need));
        assert_eq!(field_line(b"X"), Err(Stop::Need));
        assert!(matches!(field_line(b"X : a\r\n"), Err(Stop::Bad(m)) if m.contains("colon")), "section 5.1");
        assert!(matches!(field_line(b" X: a\r\n"), Err(Stop::Bad(m)) if m.contains("folding")), "section 5.2");
        assert!(matches!(field_line(b"X: a\rb\r\n"), Err(Stop::Bad("bare CR"))), "RFC 9112 section 2.2");
        assert!(matches!(field_line(b"X: a\nb"), Err(Stop::Bad(m)) if m.contains("LF")), "RFC 9112 section 2.2");
        assert!(matches!(field_line(b"X: a\0b\r\n"), Err(Stop::Bad(m)) if m.contains("NUL")), "RFC 9110 section 5.5");
        assert!(matches!(field_line(b"X: a\x0bb\r\n"), Err(Stop::Bad(m)) if m.contains("control")), "RFC 9110 section 5.5");
        assert!(matches!(field_line(b"X: a\x7f\r\n"), Err(Stop::Bad(_))), "DEL is not VCHAR");
        assert!(matches!(field_line(b": a\r\n"), Err(Stop::Bad(_))));
        assert!(matches!(field_line(b"X(: a\r\n"), Err(Stop::Bad(_))), "a field name is a token");
    }

    fn codings(v: &str) -> Option<Vec<(String, bool)>> {
        let mut out = Vec::new();
        transfer_codings(v.as_bytes(), &mut out)?;
        Some(out.into_iter().map(|(n, p)| (String::from_utf8(n).unwrap(), p)).collect())
    }

    #[test]
    fn transfer_coding_lists() {
        // RFC 9110 sections 5.6.1 and 10.1.4
        let c = |n: &str, p: bool| (n.to_string(), p);
        assert_eq!(codings("chunked"), Some(vec![c("chunked", false)]));
        assert_eq!(codings("gzip ,\tChunked"), Some(vec![c("gzip", false), c("chunked", false)]));
        assert_eq!(codings(", chunked,,"), Some(vec![c("chunked", false)]), "empty elements are ignored (section 5.6.1)");
        assert_eq!(codings(""), Some(vec![]));
        assert_eq!(codings("x;a=1 ; b = \"q,\\\"\" , chunked"), Some(vec![c("x", true), c("chunked", false)]));
        for bad in ["chunked;", "chunked;a", "chunked;a=", "chunked x", "\u{a0}chunked", "chunked\u{a0}", "\u{85}chunked", "chu\"nked", "x;a=\"open"] {
            assert_eq!(codings(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn hosts() {
        // RFC 9110 section 7.2, RFC 3986 section 3.2.2
        for ok in ["", "a", "example.com:8080", "127.0.0.1", "[::1]:80", "[v1.x:y]", "a%41b", "h:", "xn--bcher-kva.example"] {
            assert!(valid_host(ok.as_bytes(), false), "{:?}", ok);
        }
        for bad in ["a b", "a/b", "[::1", "[zz]:1", "a:b", "a:1:2", "a%4", "é.example", "[::1]x", "a@b"] {
            assert!(!valid_host(bad.as_bytes(), false), "{:?}", bad);
        }
        assert!(valid_host(b"example.com:443", true));
        assert!(!valid_host(b"example.com", true) && !valid_host(b"example.com:", true));
    }

    #[test]
    fn targets() {
        // RFC 9112 section 3.2
        assert!(valid_target(b"GET", b"/objects/a/b?x=1&y=%20"));
        assert!(valid_target(b"GET", b"http://h:1/healthz"));
        assert!(valid_target(b"OPTIONS", b"*") && !valid_target(b"GET", b"*"));
        assert!(valid_target(b"CONNECT", b"h:443") && !valid_target(b"CONNECT", b"/x"));
        assert!(!valid_target(b"GET", b"/a[1]"));
        assert!(!valid_target(b"GET", b"objects"));
        assert!(!valid_target(b"GET", b"1http://h/"));
        assert!(b"/a?b=c:d@e!$&'()*+,;=%-._~".iter().all(|&b| target_byte(b)));
        assert!(b" \"#<>\\^`{|}\x7f\x00\r\n\t\x80\xff".iter().all(|&b| !target_byte(b)));
    }

    #[test]
    fn quoted_strings() {
        assert_eq!(quoted_string(b"\"a\\\"b\"x", 0), Ok(6));
        assert_eq!(quoted_string(b"\"ab", 0), Err(Stop::Need));
        assert_eq!(quoted_string(b"\"a\\", 0), Err(Stop::Need));
        assert!(matches!(quoted_string(b"\"a\rb\"", 0), Err(Stop::Bad(_))));
        assert!(matches!(quoted_string(b"\"a\\\0\"", 0), Err(Stop::Bad(_))));
    }

    #[test]
    fn line_ends() {
        assert_eq!(crlf(b"\r\n", 0), Ok(2));
        assert_eq!(crlf(b"\r", 0), Err(Stop::Need));
        assert_eq!(crlf(b"", 0), Err(Stop::Need));
        assert_eq!(crlf(b"\rx", 0), Err(Stop::Bad("bare CR")));
        assert!(matches!(crlf(b"\n", 0), Err(Stop::Bad(_))));
    }
}

//! The framing corpus (worker/tests/framing-corpus.txt): requests whose
//! framing one rule of RFC 9112 or RFC 9110 decides, with the status the
//! built-in worker answers. One loader for the parser's unit tests (the
//! worker crate) and the integration tests against a real worker.

use crate::paths::repo_root;

/// One case of the corpus.
#[derive(Debug, Clone)]
pub struct Case {
    /// The status the worker answers (200: accepted).
    pub status: u16,
    /// The rule, with its RFC section.
    pub rule: String,
    pub request: Vec<u8>,
}

/// Every case of worker/tests/framing-corpus.txt, in order.
pub fn framing_corpus() -> Vec<Case> {
    let path = repo_root().join("worker/tests/framing-corpus.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {}", path.display(), e));
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let (status, rule, request) = (f.next().unwrap(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            Case {
                status: status.parse().unwrap_or_else(|_| panic!("corpus line {:?}: no status", l)),
                rule: rule.to_string(),
                request: unescape(&expand(request)),
            }
        })
        .collect()
}

/// `{N*TEXT}` -> TEXT repeated N times (innermost first; TEXT's braces balance).
fn expand(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if b[i] == b'{' && digits > 0 && b.get(i + 1 + digits) == Some(&b'*') {
            let n: usize = s[i + 1..i + 1 + digits].parse().unwrap();
            let start = i + 2 + digits;
            let mut depth = 1;
            let mut j = start;
            while depth > 0 {
                match b.get(j) {
                    Some(b'{') => depth += 1,
                    Some(b'}') => depth -= 1,
                    Some(_) => {}
                    None => panic!("unbalanced repetition in {:?}", s),
                }
                j += 1;
            }
            out.push_str(&expand(&s[start..j - 1]).repeat(n));
            i = j;
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// `\r \n \t \\ \xNN` -> bytes.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap_or_else(|_| panic!("bad \\x in {:?}", s)));
                i += 2;
            }
            _ => panic!("bad escape in {:?}", s),
        }
        i += 2;
    }
    out
}

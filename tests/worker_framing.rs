//! The built-in worker's HTTP framing is as strict as RFC 9112 and RFC 9110
//! (zdrestart-worker(7), "HTTP"), tried against a real worker: every case of
//! the framing corpus (worker/tests/framing-corpus.txt: the request, the rule
//! with its RFC section, the status) gets its status, and after every error
//! the connection is closed; endless trailer fields are cut off at the header
//! limit; and real clients (curl, Python's http.client, requests and urllib,
//! wrk) are served.

mod common;

use common::*;
use serde_json::json;
use std::io::{BufReader, Write};
use std::process::Command;
use std::time::Duration;

/// Measured on the old worker: `Content-Length: 7` followed by U+00A0 or
/// U+3000, `chunked` followed by U+00A0 or preceded by U+0085, a second
/// `Transfer-Encoding` of garbage, no `Host` or two: all 200; bare CR and NUL
/// in chunk extensions accepted; a long target 431. Now every case of the
/// corpus gets the status its rule says, and an error closes the connection.
#[test]
fn every_case_of_the_framing_corpus() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({}));
    let mut wrong = Vec::new();
    let corpus = framing_corpus();
    for case in &corpus {
        let mut c = KeepAlive::one_connection(w.port);
        // The worker may answer and close before it has read everything.
        let _ = c.send_raw(&case.request);
        let r = match c.read() {
            Ok(r) => r,
            Err(e) => {
                wrong.push(format!("{}: no answer ({})", case.rule, e));
                continue;
            }
        };
        if r.status != case.status {
            wrong.push(format!("{}: {} instead of {} ({})", case.rule, r.status, case.status, r.text()));
        } else if r.status >= 400 && !(r.closes() && c.closed_within(Duration::from_secs(5))) {
            wrong.push(format!("{}: {} without closing the connection", case.rule, r.status));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases:\n{}", wrong.len(), corpus.len(), wrong.join("\n"));
    // Nothing of it left the worker unable to serve.
    assert_eq!(worker_request(w.port, "GET", "/healthz", None).status, 200);
}

/// Measured on the old worker: 200 MB of trailer lines were accepted (only
/// each line was limited). Now the trailer section counts against what the
/// head left of the 16 KiB limit: 431 and a close, while the client is still
/// sending (the old worker answered 408 once its body deadline passed).
#[test]
fn endless_trailer_fields_are_cut_off_at_the_header_limit() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({}));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"PUT /objects/t/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n").unwrap();
    let writer = s.try_clone().unwrap();
    // Up to 4 MB of trailer lines, until the worker stops reading.
    let feeder = std::thread::spawn(move || {
        let mut writer = writer;
        let line = [b"X-Pad: ".as_slice(), &[b'a'; 120], b"\r\n"].concat();
        let mut sent = 0;
        while sent < 4 << 20 && writer.write_all(&line).is_ok() {
            sent += line.len();
        }
        sent
    });
    let r = read_response(&mut BufReader::new(s), false).expect("an answer while trailer fields keep coming");
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(r.closes());
    // (What the client sends after the answer is read and dropped for a
    // moment, so that the close does not destroy the answer.)
    let sent = feeder.join().unwrap();
    eprintln!("431 while the client sent {} bytes of trailer fields", sent);
}

/// curl (Debian's) as clients use it: GET, PUT with Content-Length, a chunked
/// upload from stdin, a body large enough for `Expect: 100-continue`, HEAD.
#[test]
fn curl_is_served() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({}));
    let url = |p: &str| format!("http://127.0.0.1:{}{}", w.port, p);
    let curl = |args: &[&str], stdin: Option<&[u8]>| -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\\n%{http_code}"]).args(args);
        cmd.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("run curl (scripts/test installs it)");
        if let Some(b) = stdin {
            child.stdin.take().unwrap().write_all(b).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "curl {:?}: {}", args, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(curl(&[&url("/healthz")], None).ends_with("\n200"));
    let put = curl(&["-X", "PUT", "-H", "Content-Type: application/json", "--data-binary", "{\"a\":1}", &url("/objects/c/1")], None);
    assert_eq!(put, "{\"a\":1}\n200");
    let chunked = curl(
        &["-X", "PUT", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-", &url("/objects/c/2")],
        Some(b"{\"b\": 2}"),
    );
    assert_eq!(chunked, "{\"b\": 2}\n200");
    // Over 1 MB curl sends Expect: 100-continue and waits for it.
    let big = big_object(1024 * 1024, false);
    let path = dir.join("big.json");
    std::fs::write(&path, &big).unwrap();
    let up = curl(&["-T", &path.display().to_string(), "-H", "Expect: 100-continue", &url("/objects/c/3")], None);
    assert!(up.ends_with("\n200") && up.len() == big.len() + 4, "{}", &up[up.len().saturating_sub(40)..]);
    let head = curl(&["-I", &url("/objects/c/1")], None);
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("Content-Length: 7"), "{}", head);
}

/// Python's http.client (the standard library, under urllib and requests):
/// keep-alive GET and PUT, a chunked body from an iterator.
#[test]
fn python_http_client_is_served() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({}));
    let script = r#"
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=20)
c.request("PUT", "/objects/py/1", body=b'{"x": [1, 2]}', headers={"Content-Type": "application/json"})
r = c.getresponse(); body = r.read(); assert r.status == 200 and body == b'{"x": [1, 2]}', (r.status, body)
c.request("GET", "/objects/py/1")
r = c.getresponse(); assert r.status == 200 and json.loads(r.read()) == {"x": [1, 2]}
c.request("PUT", "/objects/py/2", body=iter([b'{"y"', b': "', b'z"}']), encode_chunked=True)
r = c.getresponse(); body = r.read(); assert r.status == 200 and body == b'{"y": "z"}', (r.status, body)
c.request("GET", "/healthz")
r = c.getresponse(); assert r.status == 200 and json.loads(r.read())["status"] == "ok"
print("ok")
"#;
    let out = Command::new(python3()).arg("-c").arg(script).arg(w.port.to_string()).output().expect("run python3");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// Python's `requests` (Debian's python3-requests, on urllib3) with a
/// session (keep-alive) and the standard library's urllib, as applications
/// use them: GET, PUT of JSON, a chunked PUT from a generator, a 404.
#[test]
fn python_requests_and_urllib_are_served() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({}));
    let script = r#"
import json, sys, urllib.request, urllib.error, requests
base = "http://127.0.0.1:%s" % sys.argv[1]
s = requests.Session()
r = s.put(base + "/objects/rq/1", json={"a": [1, 2], "b": "c"}, timeout=20)
assert r.status_code == 200 and r.json() == {"a": [1, 2], "b": "c"}, (r.status_code, r.text)
r = s.get(base + "/objects/rq/1", timeout=20)
assert r.status_code == 200 and r.json()["b"] == "c", (r.status_code, r.text)
r = s.put(base + "/objects/rq/2", data=(p for p in [b'{"x"', b': 1}']), timeout=20)
assert r.status_code == 200 and r.json() == {"x": 1}, (r.status_code, r.text)
r = s.get(base + "/objects/rq/none", timeout=20)
assert r.status_code == 404 and "error" in r.json(), (r.status_code, r.text)
req = urllib.request.Request(base + "/objects/ul/1", data=b'{"u": true}', method="PUT", headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=20) as resp:
    assert resp.status == 200 and json.loads(resp.read()) == {"u": True}
with urllib.request.urlopen(base + "/objects/rq/2", timeout=20) as resp:
    assert json.loads(resp.read()) == {"x": 1}
try:
    urllib.request.urlopen(base + "/objects/ul/none", timeout=20)
    raise AssertionError("no 404")
except urllib.error.HTTPError as e:
    assert e.code == 404
print("ok")
"#;
    let out = Command::new(DEBIAN_PYTHON).arg("-c").arg(script).arg(w.port.to_string()).output().expect("run Debian's python3");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// wrk (Debian's), the load generator of the benchmarks: keep-alive GETs of
/// /healthz and PUTs of a JSON object (a Lua script) from 8 connections,
/// every answer a 2xx, no socket error.
#[test]
fn wrk_is_served() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({}));
    let script = dir.join("put.lua");
    std::fs::write(&script, "wrk.method = \"PUT\"\nwrk.body = '{\"w\": [1, 2, 3]}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n").unwrap();
    for (path, lua) in [("/healthz", None), ("/objects/wrk/1", Some(&script))] {
        let mut cmd = Command::new("wrk");
        // A long timeout: the machine may be loaded; what counts is that every answer comes.
        cmd.args(["-t1", "-c8", "-d2s", "--timeout", "30s"]);
        if let Some(l) = lua {
            cmd.arg("-s").arg(l);
        }
        let out = cmd.arg(format!("http://127.0.0.1:{}{}", w.port, path)).output().expect("run wrk (scripts/test installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "wrk {}: {}{}", path, text, String::from_utf8_lossy(&out.stderr));
        let requests: u64 = text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok()))
            .unwrap_or_else(|| panic!("wrk {}: no request count in\n{}", path, text));
        assert!(requests > 0, "wrk {}: {}", path, text);
        assert!(!text.contains("Non-2xx") && !text.contains("Socket errors"), "wrk {}:\n{}", path, text);
    }
    assert_eq!(worker_request(w.port, "GET", "/objects/wrk/1", None).json(), json!({"w": [1, 2, 3]}));
}

/// Debian's Python, with Debian's python3-requests (scripts/test installs it).
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// The Python of the test venv (scripts/test makes it), else python3 on PATH.
fn python3() -> std::path::PathBuf {
    let venv = repo_root().join(".venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

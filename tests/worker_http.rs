//! The built-in worker run by hand (no master, no LISTEN_FDS) with the memory
//! driver: the HTTP API of zdrestart-worker(7) (The built-in worker), every
//! error answer, keep-alive, the probe mode and the graceful exit.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn crud_round_trip() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({"driver": "memory"}));
    let body = br#"{"$set": {"a.b": 1}, "x": [1, "two", null], "n": {"$where": "1"}}"#;
    let r = worker_request(w.port, "PUT", "/objects/note/a.b-c_9", Some(body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, body);
    assert_eq!(r.worker_pid(), Some(w.proc.pid()));
    let r = worker_request(w.port, "GET", "/objects/note/a.b-c_9", None);
    assert_eq!((r.status, r.body.as_slice()), (200, &body[..]));
    // PUT replaces.
    let r = worker_request(w.port, "PUT", "/objects/note/a.b-c_9", Some(br#"{"v":2}"#));
    assert_eq!(r.status, 200);
    assert_eq!(worker_request(w.port, "GET", "/objects/note/a.b-c_9", None).json(), json!({"v": 2}));
    // Same id, other type: another object.
    assert_eq!(worker_request(w.port, "GET", "/objects/other/a.b-c_9", None).status, 404);
    let r = worker_request(w.port, "DELETE", "/objects/note/a.b-c_9", None);
    assert_eq!((r.status, r.body.len()), (204, 0));
    let r = worker_request(w.port, "GET", "/objects/note/a.b-c_9", None);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    assert_eq!(worker_request(w.port, "DELETE", "/objects/note/a.b-c_9", None).status, 404);
    // Longest valid names.
    let long = format!("/objects/{}/{}", "t".repeat(128), "i".repeat(128));
    assert_eq!(worker_request(w.port, "PUT", &long, Some(b"{}")).status, 200);
}

#[test]
fn every_client_error() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({}));
    let p = w.port;
    let err = |r: &Response| r.json()["error"].as_str().unwrap_or_else(|| panic!("no error: {}", r.text())).to_string();

    // 400: bad JSON, a body that is not an object, bad names.
    for bad in [&b"{"[..], b"not json", b"", b"[1,2]", b"\"s\"", b"12", b"null", b"\xff\xfe"] {
        let r = worker_request(p, "PUT", "/objects/t/x", Some(bad));
        assert_eq!(r.status, 400, "body {:?}", bad);
        err(&r);
    }
    for path in [
        "/objects/t/$where",
        "/objects/$t/x",
        "/objects/t/a%2Fb",
        "/objects/t/",
        "/objects//x",
        "/objects/t/a:b",
        &format!("/objects/t/{}", "i".repeat(129)),
    ] {
        let r = worker_request(p, "GET", path, None);
        assert_eq!(r.status, 400, "{}", path);
        err(&r);
        assert_eq!(worker_request(p, "PUT", path, Some(b"{}")).status, 400, "{}", path);
    }
    assert_eq!(worker_request(p, "GET", "/delay/10001", None).status, 400);
    assert_eq!(worker_request(p, "GET", "/delay/abc", None).status, 400);

    // 404: unknown paths and objects.
    for path in ["/", "/nope", "/objects", "/objects/t", "/objects/t/x/y", "/healthz/x"] {
        let r = worker_request(p, "GET", path, None);
        assert_eq!(r.status, 404, "{}", path);
        err(&r);
    }

    // 405 with Allow.
    let r = worker_request(p, "POST", "/objects/t/x", Some(b"{}"));
    assert_eq!(r.status, 405);
    err(&r);
    let allow = r.header("allow").unwrap();
    for m in ["GET", "PUT", "DELETE"] {
        assert!(allow.contains(m), "{}", allow);
    }
    let r = worker_request(p, "DELETE", "/healthz", None);
    assert_eq!(r.status, 405);
    assert!(r.header("allow").unwrap().contains("GET"));

    // 411: PUT with neither Content-Length nor a chunked body.
    let mut c = KeepAlive::one_connection(p);
    c.send_raw(b"PUT /objects/t/x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let r = c.read().unwrap();
    r.check_worker_headers();
    assert_eq!(r.status, 411);
    err(&r);
    // Chunked bodies are read (tests/worker_traffic.rs has the details); a
    // malformed one, or another transfer coding, is a 4xx/501 and a close.
    let mut c = KeepAlive::one_connection(p);
    c.send_raw(b"PUT /objects/t/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n").unwrap();
    assert_eq!(c.read().unwrap().status, 200);
    for bad in [
        &b"PUT /objects/t/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"[..],
        b"PUT /objects/t/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
        b"PUT /objects/t/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}",
        b"PUT /objects/t/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n{}",
    ] {
        let mut c = KeepAlive::one_connection(p);
        c.send_raw(bad).unwrap();
        let r = c.read().unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
        assert!(r.closes());
        err(&r);
    }
    let mut c = KeepAlive::one_connection(p);
    c.send_raw(b"PUT /objects/t/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n").unwrap();
    assert_eq!(c.read().unwrap().status, 501);

    // 413 over 1 MiB, answered without reading the body.
    let mut c = KeepAlive::one_connection(p);
    let size = 1024 * 1024 + 1;
    c.send_raw(format!("PUT /objects/t/big HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", size).as_bytes()).unwrap();
    let r = c.read().unwrap();
    r.check_worker_headers();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    err(&r);
    // And with the body actually sent (a client that does not wait): still 413.
    let mut c = KeepAlive::one_connection(p);
    let mut big = format!("PUT /objects/t/big HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", 2 * size).into_bytes();
    big.extend(vec![b' '; 2 * size]);
    let _ = c.send_raw(&big); // may fail once the worker closes: fine
    assert_eq!(c.read().unwrap().status, 413);
    // Exactly 1 MiB is accepted.
    let mut obj = b"{\"k\":\"".to_vec();
    obj.extend(vec![b'a'; 1024 * 1024 - 8]);
    obj.extend_from_slice(b"\"}");
    assert_eq!(obj.len(), 1024 * 1024);
    assert_eq!(worker_request(p, "PUT", "/objects/t/big", Some(&obj)).status, 200);
    assert_eq!(worker_request(p, "GET", "/objects/t/big", None).body.len(), 1024 * 1024);

    // Garbage instead of HTTP: 400, never a crash.
    let mut c = KeepAlive::one_connection(p);
    c.send_raw(b"\x00\x01\x02 garbage\r\n\r\n").unwrap();
    assert_eq!(c.read().unwrap().status, 400);
    assert_eq!(worker_request(p, "GET", "/healthz", None).status, 200);
}

#[test]
fn healthz_and_keep_alive() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({}));
    let mut c = KeepAlive::one_connection(w.port);
    let a = c.request("GET", "/healthz", None).unwrap();
    a.check_worker_headers();
    let h = a.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["pid"], w.proc.pid());
    assert_eq!(h["generation"], 0);
    assert_eq!(h["version"], zdrestart::VERSION);
    assert_eq!(h["magic"], zdrestart::MAGIC);
    assert_eq!(h["driver"], "memory");
    assert_eq!(a.header("connection"), Some("keep-alive"));
    // Second and third request on the same connection, one pipelined behind the other.
    let b = c.request("PUT", "/objects/k/1", Some(b"{\"a\":1}")).unwrap();
    assert_eq!(b.status, 200);
    c.send("GET", "/objects/k/1", None).unwrap();
    c.send("GET", "/healthz", None).unwrap();
    assert_eq!(c.read().unwrap().json(), json!({"a": 1}));
    assert_eq!(c.read().unwrap().status, 200);
    // Connection: close is honoured.
    c.send_raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let r = c.read().unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(3)));
    // HEAD: headers only.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n"), "{}", text);
}

#[test]
fn generation_from_environment() {
    let dir = TestDir::for_test();
    let w = start_worker_with_env(&dir, "w", json!({}), &[("ZDRESTART_GENERATION", "7")]);
    assert_eq!(worker_request(w.port, "GET", "/healthz", None).json()["generation"], 7);
}

#[test]
fn many_keep_alive_clients_and_slow_requests() {
    let dir = TestDir::for_test();
    // One pool thread: slow requests and idle keep-alive connections must
    // still not block the other clients.
    let w = start_worker(&dir, "w", json!({"threads": 1}));
    let port = w.port;
    let pid = w.proc.pid();
    // A slow request in the worker's hands (proved from /proc, not assumed
    // after a sleep).
    let mut slow = KeepAlive::one_connection(port);
    slow.send("GET", "/delay/5000", None).unwrap();
    assert!(wait_until(Duration::from_secs(15), || request_taken_by(pid, slow.stream().unwrap())), "slow request not taken");
    // The slow request holds no request permit: a quick one is answered while
    // the slow one is still running (its answer has not come yet), not queued
    // behind it.
    assert_eq!(worker_request(port, "GET", "/healthz", None).status, 200);
    let mut probe = [0u8; 1];
    let s = slow.stream().unwrap();
    s.set_nonblocking(true).unwrap();
    let pending = matches!(s.peek(&mut probe), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    assert!(pending, "the quick request was answered only after the 5 s slow one: queued behind it");
    let clients: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = KeepAlive::one_connection(port);
                for j in 0..50 {
                    let path = format!("/objects/c{}/o{}", i, j);
                    let body = format!(r#"{{"i":{},"j":{}}}"#, i, j);
                    assert_eq!(c.request("PUT", &path, Some(body.as_bytes())).unwrap().status, 200);
                    assert_eq!(c.request("GET", &path, None).unwrap().body, body.as_bytes());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let r = slow.read().unwrap();
    assert_eq!((r.status, r.json()["slept_ms"].as_u64()), (200, Some(5000)));
}

#[test]
fn probe_mode_prints_magic_and_version() {
    let dir = TestDir::for_test();
    let cfg = dir.join("c.json");
    std::fs::write(&cfg, r#"{"port": 1, "driver": "memory"}"#).unwrap();
    let (st, out, err) = worker_probe(&cfg);
    assert!(st.success(), "{} {}", out, err);
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('{')).collect();
    assert!(lines.contains(&format!("MAGIC={}", zdrestart::MAGIC).as_str()), "{}", out);
    assert!(lines.contains(&format!("VERSION={}", zdrestart::VERSION).as_str()), "{}", out);
    assert!(!out.contains("ERROR="), "{}", out);

    // A config it cannot use: ERROR=config: naming the key, exit 1.
    std::fs::write(&cfg, r#"{"threads": "many"}"#).unwrap();
    let (st, out, _) = worker_probe(&cfg);
    assert_eq!(st.code(), Some(1));
    assert!(out.lines().any(|l| l.starts_with("ERROR=config: ") && l.contains("threads")), "{}", out);
    // The memory budget below its least (one largest body and its answer).
    std::fs::write(&cfg, r#"{"port": 1, "params": {"maxBuffered": 1048576}}"#).unwrap();
    let (st, out, _) = worker_probe(&cfg);
    assert_eq!(st.code(), Some(1));
    assert!(
        out.lines().any(|l| l == "ERROR=config: params.maxBuffered: expected an integer from 2097152 to 1099511627776, found 1048576"),
        "{}",
        out
    );
    std::fs::write(&cfg, "{not json").unwrap();
    let (st, out, _) = worker_probe(&cfg);
    assert_eq!(st.code(), Some(1));
    assert!(out.contains("ERROR=config: "), "{}", out);
}

#[test]
fn start_up_errors_exit_1() {
    let dir = TestDir::for_test();
    let cfg = dir.join("c.json");
    // Invalid config.
    std::fs::write(&cfg, r#"{"driver": "oracle"}"#).unwrap();
    let mut p = spawn_worker(&cfg, &dir.join("a.log"), &[]);
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).and_then(|s| s.code()), Some(1));
    assert!(p.output().contains("driver"), "{}", p.output());
    // Port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(&cfg, format!(r#"{{"port": {}}}"#, busy.local_addr().unwrap().port())).unwrap();
    let mut p = spawn_worker(&cfg, &dir.join("b.log"), &[]);
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).and_then(|s| s.code()), Some(1));
    assert!(p.output().contains("cannot listen"), "{}", p.output());
    // LISTEN_FDS that are not ours / not sockets.
    std::fs::write(&cfg, r#"{"port": 1}"#).unwrap();
    let mut p = spawn_worker(&cfg, &dir.join("c.log"), &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")]);
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).and_then(|s| s.code()), Some(1));
    assert!(p.output().contains("LISTEN_PID"), "{}", p.output());
    // Help and version.
    let run = |arg: &str| run_cmd(std::process::Command::new(worker_bin()).arg(arg), Duration::from_secs(30));
    let (_, out, _) = run("--version");
    assert!(out.contains(zdrestart::VERSION), "{}", out);
    let (st, out, _) = run("--help");
    assert!(st.success() && out.contains("ZDRESTART_PROBE"), "{}", out);
    let (st, _, _) = run("--bogus");
    assert_eq!(st.code(), Some(2));
}

#[test]
fn sigterm_finishes_requests_in_flight() {
    let dir = TestDir::for_test();
    let mut w = start_worker(&dir, "w", json!({}));
    let port = w.port;
    // An idle keep-alive connection, opened before SIGTERM.
    let mut idle = KeepAlive::one_connection(port);
    assert_eq!(idle.request("GET", "/healthz", None).unwrap().status, 200);
    // A request in flight: taken by the worker (from /proc) before SIGTERM.
    let mut inflight = KeepAlive::one_connection(port);
    inflight.send("GET", "/delay/3000", None).unwrap();
    let pid = w.proc.pid();
    assert!(wait_until(Duration::from_secs(15), || request_taken_by(pid, inflight.stream().unwrap())), "request not taken");
    assert!(kill(pid, libc::SIGTERM));
    // It stops accepting (it was the only holder of the port): connections
    // are refused once the listener is closed.
    assert!(
        wait_until(Duration::from_secs(15), || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()),
        "still accepting 15 s after SIGTERM"
    );
    // The idle connection may still send one request during the grace: answered, then closed.
    // (send + read, not request: the connection stays open to see it closed)
    idle.send("GET", "/objects/t/none", None).unwrap();
    let r = idle.read().unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(idle.closed_within(Duration::from_secs(3)));
    let r = inflight.read().unwrap();
    assert_eq!((r.status, r.json()["slept_ms"].as_u64()), (200, Some(3000)));
    assert_eq!(r.header("connection"), Some("close"), "answered while draining: the client is told to go elsewhere");
    let st = w.proc.wait_timeout(Duration::from_secs(30)).expect("worker did not exit within 30 s after SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", w.proc.output());
    // Every log line is a bunyan record.
    for line in w.proc.output().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {}", e, line));
        assert_eq!(v["v"], 0);
        assert!(v["level"].is_u64() && v["msg"].is_string() && v["time"].is_string(), "{}", line);
    }
}

#[test]
fn idle_connections_close_at_their_idle_deadline_when_stopping() {
    let dir = TestDir::for_test();
    let mut w = start_worker(&dir, "w", json!({"params": {"idleTimeout": 2}}));
    let mut idle = KeepAlive::one_connection(w.port);
    let r = idle.request("GET", "/healthz", None).unwrap();
    // Announced a second short of the real idle timeout.
    assert_eq!(r.header("keep-alive"), Some("timeout=1"));
    let last_use = Instant::now();
    assert!(kill(w.proc.pid(), libc::SIGINT));
    // A stopping worker keeps an idle connection as long as steady state would
    // have (a pooled client may still use it), then closes it and exits.
    assert!(idle.closed_within(Duration::from_secs(30)), "idle connection not closed within 30 s");
    let closed = last_use.elapsed();
    let st = w.proc.wait_timeout(Duration::from_secs(30)).expect("no exit within 30 s");
    assert_eq!(st.code(), Some(0));
    assert!(closed >= Duration::from_millis(1900), "closed {:?} after its last use, before its idle timeout", closed);
}

/// Run the worker as the master does: listener on fd 3 (`LISTEN_FDS=1`,
/// `LISTEN_PID` = its own pid), report pipe on fd 4. `sh` moves the fds into
/// place (stdin -> 3, stdout -> 4) and execs, keeping its pid for LISTEN_PID.
fn spawn_inherited(
    listener_fd: std::process::Stdio,
    cfg: &std::path::Path,
    log: &std::path::Path,
) -> (ChildGuard, std::process::ChildStdout) {
    let script = r#"exec 3<&0 4>&1 0</dev/null 1>>"$LOG" 2>&1; LISTEN_PID=$$ exec "$W" -c "$CFG""#;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .env("W", worker_bin())
        .env("CFG", cfg)
        .env("LOG", log)
        .env("LISTEN_FDS", "1")
        .env("ZDRESTART_NOTIFY_FD", "4")
        .env("ZDRESTART_GENERATION", "3")
        .env_remove("ZDRESTART_PROBE")
        .stdin(listener_fd)
        .stdout(std::process::Stdio::piped());
    let mut child = common::spawn::spawn(&mut cmd);
    let rd = child.stdout.take().unwrap();
    (ChildGuard::new(child, log), rd)
}

#[test]
fn inherited_listener_and_report_pipe() {
    let dir = TestDir::for_test();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = dir.join("c.json");
    // The config's own port is irrelevant with LISTEN_FDS.
    std::fs::write(&cfg, r#"{"port": 1}"#).unwrap();
    let fd = std::os::fd::OwnedFd::from(listener.try_clone().unwrap());
    let t = Instant::now();
    let (mut w, mut rd) = spawn_inherited(fd.into(), &cfg, &dir.join("w.log"));
    assert_eq!(read_line_unbuffered(&mut rd), "READY=1", "{}", w.output());
    eprintln!("start to READY: {:?}", t.elapsed());
    let h = worker_request(port, "GET", "/healthz", None).json();
    assert_eq!((h["pid"].as_u64(), h["generation"].as_u64()), (Some(w.pid() as u64), Some(3)));
    assert!(kill(w.pid(), libc::SIGTERM));
    assert_eq!(w.wait_timeout(Duration::from_secs(5)).and_then(|s| s.code()), Some(0), "{}", w.output());
    assert_eq!(read_line_unbuffered(&mut rd), "STATUS=stopping");
    // The listener was not shut down: connections still queue on it for the
    // next worker (here: the test itself).
    let mut c = KeepAlive::one_connection(port);
    c.send("GET", "/healthz", None).unwrap();
    listener.set_nonblocking(false).unwrap();
    let (s, _) = listener.accept().expect("listener still usable after the worker exited");
    drop(s);

    // A listener fd that is not a socket: ERROR= on the report pipe, exit 1.
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let (mut w, mut rd) = spawn_inherited(devnull.into(), &cfg, &dir.join("w2.log"));
    let line = read_line_unbuffered(&mut rd);
    assert!(line.starts_with("ERROR=listener fd 3"), "{}", line);
    assert_eq!(w.wait_timeout(Duration::from_secs(5)).and_then(|s| s.code()), Some(1));

    // A bad config: ERROR=config: on the report pipe.
    std::fs::write(&cfg, r#"{"workers": 0}"#).unwrap();
    let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut w, mut rd) = spawn_inherited(std::os::fd::OwnedFd::from(l2).into(), &cfg, &dir.join("w3.log"));
    let line = read_line_unbuffered(&mut rd);
    assert!(line.starts_with("ERROR=config: ") && line.contains("workers"), "{}", line);
    assert_eq!(w.wait_timeout(Duration::from_secs(5)).and_then(|s| s.code()), Some(1));
}

//! The deadlines and bounds of the built-in worker (README, "The built-in
//! worker"; zdrestart-worker(7)), each claim on a worker run by hand:
//! 408 for a head that misses `headerTimeout`; 408 for a body slower than
//! `minBodyRate` after `headerTimeout`; 503 at once over 64 MiB of buffered
//! request bodies; an idle keep-alive connection closed at its idle timeout
//! in steady state; memory-driver bodies over 16 KiB on the pool;
//! `/healthz` saying "unknown" before the first news, pinging in the
//! background only when its news is older than 2 s; an idle worker (here on
//! the MongoDB driver, its loop, pool and health thread) that never wakes up.
//!
//! A deadline is checked without racing a clock on a loaded machine: from
//! below by the client (the answer cannot come before it), from above by the
//! order of the worker's own answers against `/delay/{ms}` requests sent at
//! the same time (the same loop's timers), read from its debug log.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// The worker's debug records of the requests it answered, in the order it
/// answered them.
fn answered(w: &HandWorker) -> Vec<Value> {
    w.proc
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["msg"] == "request")
        .collect()
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// Read one answer and then EOF: the answer.
fn answer_then_close(s: &mut TcpStream) -> Response {
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let resp = read_response(&mut r, false).unwrap_or_else(|e| panic!("no answer: {}", e));
    let mut rest = Vec::new();
    let end = r.read_to_end(&mut rest);
    assert!(end.is_ok() || end.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{:?}", end);
    assert!(rest.is_empty(), "more after the answer: {:?}", String::from_utf8_lossy(&rest));
    resp
}

/// A request head that is not complete within `headerTimeout` (1 s here),
/// however its bytes trickle in, is answered 408 with a JSON error, and the
/// connection closed: not before the deadline (client's clock), and before
/// a `/delay/2000` asked after the head began (the worker's own order), so
/// the trickle did not move the deadline.
#[test]
fn a_head_that_misses_the_header_timeout_gets_408() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({"logLevel": "debug", "params": {"headerTimeout": 1}}));
    let mut s = connect(w.port);
    let t0 = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n").unwrap();
    let mut reference = KeepAlive::new(w.port);
    reference.send("GET", "/delay/2000", None).unwrap();
    // One more header byte every 100 ms: progress does not move the deadline.
    let trickler = {
        let s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..100 {
                if (&s).write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let r = answer_then_close(&mut s);
    let took = t0.elapsed();
    trickler.join().unwrap();
    assert_eq!(r.status, 408, "{:?}", r);
    assert!(r.closes(), "{:?}", r);
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("head")), "{}", r.text());
    assert!(took >= Duration::from_secs(1), "408 after {:?}, before headerTimeout", took);
    eprintln!("408 after {:?}", took);
    assert_eq!(reference.read().unwrap().status, 200);
    let order: Vec<String> = answered(&w).iter().map(|r| format!("{} {}", r["status"], r["path"].as_str().unwrap_or(""))).collect();
    let at_408 = order.iter().position(|o| o.starts_with("408")).expect("the 408's record");
    let at_delay = order.iter().position(|o| o == "200 /delay/2000").expect("the reference's record");
    assert!(at_408 < at_delay, "the 408 came after a 2 s delay asked after the head began: {:?}", order);
}

/// A body must arrive within `headerTimeout` plus its size at `minBodyRate`
/// from the end of the head, whatever trickles in meanwhile: with 0.5 s and
/// 1,000 bytes/s, a 1,500-byte body is due after 2 s and a 3,500-byte one
/// after 4 s. Each gets 408 at its own deadline: not before it (client's
/// clock), and in the worker's own order before a `/delay/3000` and a
/// `/delay/5000` asked right after both heads (the first body's 408 before
/// the first delay, the second's between them: each margin is 1 s of the
/// worker's own timers).
#[test]
fn a_body_slower_than_min_body_rate_gets_408_at_its_deadline() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({"logLevel": "debug", "params": {"headerTimeout": 0.5, "minBodyRate": 1000}}));
    let send_head = |path: &str, len: usize| {
        let mut s = connect(w.port);
        let t0 = Instant::now();
        s.write_all(format!("PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{{\"k\":\"", path, len).as_bytes()).unwrap();
        (s, t0)
    };
    let (mut a, ta0) = send_head("/objects/t/a", 1500);
    let (mut b, tb0) = send_head("/objects/t/b", 3500);
    let delays: Vec<KeepAlive> = [3000, 5000]
        .iter()
        .map(|ms| {
            let mut c = KeepAlive::new(w.port);
            c.send("GET", &format!("/delay/{}", ms), None).unwrap();
            c
        })
        .collect();
    // The first body trickles in, a byte every 100 ms: progress does not
    // move its deadline.
    let trickler = {
        let s = a.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..100 {
                if (&s).write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let ra = answer_then_close(&mut a);
    let ta = ta0.elapsed();
    let rb = answer_then_close(&mut b);
    let tb = tb0.elapsed();
    trickler.join().unwrap();
    eprintln!("408 after {:?} (1,500 bytes due at 2 s) and {:?} (3,500 bytes due at 4 s)", ta, tb);
    for (r, t, due) in [(&ra, ta, 2.0), (&rb, tb, 4.0)] {
        assert_eq!(r.status, 408, "{:?}", r);
        assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("body")), "{}", r.text());
        assert!(t >= Duration::from_secs_f64(due), "408 after {:?}, before the body's deadline of {} s", t, due);
    }
    for mut d in delays {
        assert_eq!(d.read().unwrap().status, 200);
    }
    let order: Vec<String> = answered(&w)
        .iter()
        .filter(|r| r["status"] == 408 || r["path"].as_str().unwrap_or("").starts_with("/delay/"))
        .map(|r| format!("{} {}", r["status"], r["path"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(order, ["408 /objects/t/a", "200 /delay/3000", "408 /objects/t/b", "200 /delay/5000"], "the worker's answers, in its order");
}

/// Over the memory budget (`params.maxBuffered`, 64 MiB by default) a
/// request gets 503 with `Retry-After: 1` at once, not a place in a queue. A
/// `Content-Length` is set aside in full when its head arrives: heads of
/// 1 MiB bodies are taken until their bodies would take the worker past
/// 64 MiB (the heads and buffers themselves count too, so 56 to 64 of them),
/// the next is refused at once; a GET is still answered; once one of them
/// goes, there is room again.
#[test]
fn over_64_mib_of_bodies_a_request_gets_503_at_once() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({"params": {"headerTimeout": 600}}));
    let pid = w.proc.pid();
    let head = |i: usize| format!("PUT /objects/big/{} HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n", i);
    // Whether the worker answered on `s` by now. /healthz is answered by the
    // worker's event loop: once it has answered, the loop has also handled
    // the head sent before it, and any answer to that head is in `s`'s
    // receive queue.
    let answered = |s: &TcpStream| {
        assert_eq!(worker_request(w.port, "GET", "/healthz", None).status, 200, "a request without a body is answered");
        s.set_nonblocking(true).unwrap();
        let got = !matches!(s.peek(&mut [0u8; 1]), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).unwrap();
        got
    };
    let mut held: Vec<TcpStream> = Vec::new();
    let refused = loop {
        assert!(held.len() <= 64, "{} heads of 1 MiB bodies taken: more than 64 MiB set aside", held.len());
        let mut s = connect(w.port);
        s.write_all(head(held.len()).as_bytes()).unwrap();
        assert!(wait_until(T, || requests_taken_by(pid, &[&s]) == 1), "the worker did not read head {}", held.len());
        if answered(&s) {
            break s;
        }
        held.push(s);
    };
    assert!(held.len() >= 56, "only {} heads of 1 MiB bodies taken before a 503: the budget is not 64 MiB", held.len());
    let r = read_response(&mut std::io::BufReader::new(refused), false).expect("the 503");
    assert_eq!(r.status, 503, "{:?}", r);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("bodies")), "{}", r.text());
    // None of those taken was answered: they wait for their bodies.
    for (i, s) in held.iter().enumerate() {
        assert!(!answered(s), "the body of head {} (within 64 MiB) was answered before it came", i);
    }
    // One of them leaves: its 1 MiB is released, a new one is taken.
    drop(held.pop());
    let mut s = connect(w.port);
    s.write_all(head(999).as_bytes()).unwrap();
    assert!(wait_until(T, || requests_taken_by(pid, &[&s]) == 1), "the worker did not read the head after room was made");
    assert!(!answered(&s), "no room after a 1 MiB body left");
    s.write_all(&{
        let mut b = b"{\"s\":\"".to_vec();
        b.resize(1048576 - 2, b'x');
        b.extend_from_slice(b"\"}");
        b
    })
    .unwrap();
    let r = read_response(&mut std::io::BufReader::new(s), false).expect("the answer to the 1 MiB body");
    assert_eq!(r.status, 200, "{:?}", r);
}

/// In steady state (not stopping), a keep-alive connection left idle is
/// closed by the worker at `params.idleTimeout` (1 s here) after its last
/// answer, not before; the worker goes on serving.
#[test]
fn an_idle_keep_alive_connection_is_closed_at_its_idle_timeout() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({"params": {"idleTimeout": 1}}));
    let mut c = KeepAlive::one_connection(w.port);
    let t0 = Instant::now();
    let r = c.get("/healthz").unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.closes());
    assert!(c.closed_within(T), "an idle connection was not closed within {:?}", T);
    let took = t0.elapsed();
    eprintln!("idle connection closed {:?} after its request", took);
    assert!(took >= Duration::from_secs(1), "closed after {:?}, before the 1 s idle timeout", took);
    assert!(w.proc.output().lines().all(|l| !l.contains("Stopping")), "the worker was not stopping");
    assert_eq!(worker_request(w.port, "GET", "/healthz", None).status, 200);
}

/// Context switches of the worker's own threads (not those of the MongoDB
/// driver's runtime, named "mongodb"), by thread.
fn own_thread_switches(pid: i32) -> Vec<(i32, String, u64)> {
    thread_switches(pid).into_iter().filter(|(_, name, _)| name != "mongodb").collect()
}

/// The memory driver answers small requests on the loop; a body over 16 KiB
/// (JSON to check) runs on the pool: a pool thread wakes for the PUT of
/// 16 KiB + 1 byte, none for one of exactly 16 KiB.
#[test]
fn memory_bodies_over_16_kib_run_on_the_pool() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({"threads": 2}));
    let pid = w.proc.pid();
    // The pool threads' switches once every one of them sleeps (a thread
    // that just finished a job switches out when it blocks again, which can
    // come after its answer reached the client).
    let pool = || -> u64 {
        let pool_threads = || thread_switches(pid).into_iter().filter(|(_, n, _)| n.starts_with("pool-")).collect::<Vec<_>>();
        assert!(
            wait_until(T, || pool_threads().iter().all(|(tid, _, _)| thread_state(pid, *tid) == Some('S'))),
            "pool threads not asleep: {:?}",
            pool_threads()
        );
        pool_threads().iter().map(|t| t.2).sum()
    };
    // A thread takes its name when it first runs: wait for both.
    assert!(
        wait_until(T, || thread_switches(pid).iter().filter(|(_, n, _)| n.starts_with("pool-")).count() == 2),
        "no 2 pool threads: {:?}",
        thread_switches(pid)
    );
    let body = |len: usize| -> Vec<u8> {
        let mut b = b"{\"k\":\"".to_vec();
        b.resize(len - 2, b'x');
        b.extend_from_slice(b"\"}");
        b
    };
    let mut c = KeepAlive::one_connection(w.port);
    for (len, on_pool) in [(16 * 1024, false), (16 * 1024 + 1, true), (1024, false), (100_000, true)] {
        let before = pool();
        let r = c.request("PUT", "/objects/t/x", Some(&body(len))).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let after = pool();
        assert_eq!(after > before, on_pool, "a body of {} bytes: pool threads switched {} -> {}", len, before, after);
    }
}

/// An idle worker does not wake up: no timer ticks in its loop, nothing
/// polls. The deadlines of the connections it just served (idle timeout and
/// linger, 1 s each here) pass first (3 s); then over 3 s without requests
/// (more than the 2 s after which `/healthz` would want a ping), none of its
/// own threads (the loop, the pool, the health thread) switches once.
fn assert_no_wake_up(w: &HandWorker) {
    let pid = w.proc.pid();
    std::thread::sleep(Duration::from_secs(3));
    let before = own_thread_switches(pid);
    std::thread::sleep(Duration::from_secs(3));
    let after = own_thread_switches(pid);
    assert_eq!(after, before, "threads of the idle worker woke up (tid, name, context switches)");
}

/// `/healthz` says "database": "unknown" until the worker has news of the
/// database (its start-up ping, here held by a stopped server), then what
/// the last request or ping said. It never waits for the database: when its
/// news is older than 2 s it asks the health thread for a ping in the
/// background and answers with what it knows; never sooner. Idle, the
/// worker's own threads (loop, pool, health) do not wake up.
#[test]
fn healthz_knows_nothing_until_news_and_pings_only_when_its_news_is_old() {
    let dir = TestDir::for_test();
    let mut db = Mongo::start();
    let db_pid = db.pid().unwrap();
    // A server that accepts and never answers: the start-up ping waits
    // (params.timeout 3 s).
    assert!(kill(-db_pid, libc::SIGSTOP));
    let w = start_worker(
        &dir,
        "w",
        json!({"driver": "mongodb", "params": {"uri": db.uri(), "dbname": "news", "timeout": 3, "idleTimeout": 1}}),
    );
    let health = || worker_request(w.port, "GET", "/healthz", None).json()["database"].as_str().unwrap_or("").to_string();
    assert_eq!(health(), "unknown", "before any news of the database");
    assert!(kill(-db_pid, libc::SIGCONT));
    assert!(wait_until(T, || health() == "ok"), "the start-up ping never reported the database");
    // Idle: nothing of the worker's own wakes up.
    assert_no_wake_up(&w);
    // Fresh news from a request, then the database goes away.
    let t1 = Instant::now();
    assert_eq!(worker_request(w.port, "GET", "/objects/t/none", None).status, 404);
    db.stop();
    // Only /healthz asks from now on: it reports "ok" (old news) until a
    // ping it asked for, once its news was 2 s old, fails.
    let mut seen_ok_after_stop = false;
    let mut unreachable_at = None;
    let end = Instant::now() + T;
    while Instant::now() < end {
        match health().as_str() {
            "ok" => seen_ok_after_stop = true,
            "unreachable" => {
                unreachable_at = Some(t1.elapsed());
                break;
            }
            other => panic!("/healthz says {:?}", other),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let at = unreachable_at.expect("/healthz never said the database is unreachable");
    eprintln!("unreachable reported {:?} after the last request's news", at);
    assert!(seen_ok_after_stop, "/healthz waited for the database instead of answering with its news");
    // The ping fails only once its server selection gives up, at
    // params.timeout (3 s) after it was asked (the driver waits that long
    // for a server that is down): "unreachable" before 2 s + 3 s means a
    // ping asked before the news was 2 s old.
    assert!(
        at >= Duration::from_secs(2 + 3),
        "unreachable {:?} after fresh news: a ping asked sooner than 2 s after it (the ping itself takes 3 s)",
        at
    );
}

//! The built-in worker under real traffic (zdrestart-worker(7)), tried as an
//! ordinary and as a hostile client would: pooled keep-alive clients across
//! restarts, thousands of idle connections, slow clients, a hung database, a memory
//! driver filled up, and HTTP/1.1 as clients speak it (chunked bodies,
//! `Expect: 100-continue`, pipelining, HEAD).
//!
//! Each test holds a bound generous enough for a loaded 2-core machine: the
//! behaviour it guards against is a client waiting until it gives up (tens of
//! seconds), not a slow answer. Figures (rates, latencies, memory) are printed
//! by `scripts/bench` (bench/worker.rs), never asserted here.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A bound for "answered at once" (vs. hanging until the client gives up).
const PROMPT: Duration = Duration::from_secs(5);

fn connect(port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// One keep-alive GET on `s`; the answer's status and headers.
fn get_on(s: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<Response> {
    s.get_mut().write_all(format!("GET {} HTTP/1.1\r\nHost: t\r\n\r\n", path).as_bytes())?;
    read_response(s, false)
}

/// Open `n` keep-alive connections and use each once: the ones that got an
/// answer within `timeout` (the others are counted in the error).
fn open_idle(port: u16, n: usize, timeout: Duration) -> Result<Vec<BufReader<TcpStream>>, String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = BufReader::new(connect(port, timeout).map_err(|e| format!("connection {}: connect: {}", i + 1, e))?);
        let r = get_on(&mut s, "/healthz").map_err(|e| format!("connection {}: {}", i + 1, e))?;
        if r.status != 200 {
            return Err(format!("connection {}: status {}", i + 1, r.status));
        }
        out.push(s);
    }
    Ok(out)
}

/// Slow clients: each sends the start of a request head, then one more byte
/// every `every` (a header that never ends), until the worker closes it or
/// `give_up` passes. The poller reads every 20 ms (so that an answer is read
/// long before a close could reset it) and, once stopped or done, makes a
/// last pass that waits (2 s at most per client) for what is left.
struct Trickle {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Trickled>,
}

/// What the slow clients saw.
#[derive(Debug)]
struct Trickled {
    clients: usize,
    /// Closed by the worker (EOF or reset).
    cut: usize,
    /// Of those, answered `408 Request Timeout` first (status line, then EOF).
    got_408: usize,
    /// When the last one was cut off, counted from the start.
    last: Duration,
    /// The first bytes of answers that were not a 408 (at most 10).
    other: Vec<String>,
}

fn trickle(port: u16, n: usize, every: Duration, give_up: Duration) -> Trickle {
    // A client that cannot even connect (a full backlog) is never cut off:
    // it counts against the test.
    let mut socks = Vec::new();
    for _ in 0..n {
        let Ok(s) = connect(port, Duration::from_secs(2)) else { continue };
        s.set_nonblocking(true).unwrap();
        let _ = (&s).write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ");
        socks.push(Some((s, Vec::new())));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let handle = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut out = Trickled { clients: n, cut: 0, got_408: 0, last: Duration::ZERO, other: Vec::new() };
        let closed = |got: &[u8], out: &mut Trickled| {
            out.cut += 1;
            out.last = t0.elapsed();
            if got.starts_with(b"HTTP/1.1 408 ") {
                out.got_408 += 1;
            } else if out.other.len() < 10 {
                out.other.push(String::from_utf8_lossy(&got[..got.len().min(60)]).into_owned());
            }
        };
        let mut next_byte = t0 + every;
        while t0.elapsed() < give_up && out.cut < n && !st.load(Ordering::SeqCst) {
            let write = Instant::now() >= next_byte;
            if write {
                next_byte += every;
            }
            for slot in socks.iter_mut() {
                let Some((s, got)) = slot else { continue };
                let gone = loop {
                    let mut b = [0u8; 512];
                    match (&*s).read(&mut b) {
                        Ok(0) => break true,
                        Ok(k) => got.extend_from_slice(&b[..k]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                        Err(_) => break true,
                    }
                };
                if gone {
                    closed(got, &mut out);
                    *slot = None;
                } else if write {
                    let _ = (&*s).write(b"a");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The last pass: whatever is still open gets 2 s to be closed.
        for (s, mut got) in socks.into_iter().flatten() {
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let gone = loop {
                let mut b = [0u8; 512];
                match (&s).read(&mut b) {
                    Ok(0) => break true,
                    Ok(k) => got.extend_from_slice(&b[..k]),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break false,
                    Err(_) => break true,
                }
            };
            if gone {
                closed(&got, &mut out);
            }
        }
        out
    });
    Trickle { stop, handle }
}

impl Trickle {
    /// Stop trickling now (after a last pass).
    fn finish(self) -> Trickled {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }

    /// Wait for the trickling thread to end by itself (all cut off, or give up).
    fn finish_when_done(self) -> Trickled {
        self.handle.join().unwrap()
    }
}

/// Measured on the old worker: "512 connections take the service down" (2,000 idle keep-alive
/// clients, 1,359 could not even connect): 2,000 idle keep-alive connections
/// on one worker are all answered, and a normal client beside them gets its
/// answers.
#[test]
fn two_thousand_idle_connections_deny_no_one() {
    let _g = exclusive();
    let dir = TestDir::for_test();
    // The idle connections must stay open for the whole test: opening 2000
    // of them one after the other takes longer than the default 5 s idle
    // timeout on a loaded machine, after which the worker rightly closes
    // the first ones. An hour is longer than any run of this test.
    let w = start_worker(&dir, "w", json!({"threads": 4, "params": {"idleTimeout": 3600}}));
    let pid = w.proc.pid();
    let (before, threads_before) = (rss_kb(pid), thread_switches(pid).len());
    let idle = open_idle(w.port, 2000, PROMPT).unwrap_or_else(|e| panic!("idle keep-alive clients: {}", e));
    let (after, threads_after) = (rss_kb(pid), thread_switches(pid).len());
    let per_connection = (after.saturating_sub(before) * 1024) as f64 / idle.len() as f64;
    eprintln!("worker RSS {} kB -> {} kB with {} idle connections: {:.0} bytes each", before, after, idle.len(), per_connection);
    // README: an idle keep-alive connection costs "a few hundred bytes of
    // memory and no thread".
    assert!(per_connection < 1024.0, "{:.0} bytes of RSS per idle connection", per_connection);
    assert_eq!(threads_after, threads_before, "a thread per connection?");
    let mut c = KeepAlive::with_timeout(w.port, PROMPT);
    for i in 0..50 {
        let r = c.get("/healthz").unwrap_or_else(|e| panic!("normal client, request {}: {}", i, e));
        assert_eq!(r.status, 200);
    }
    // A new connection too, and the idle ones are still usable.
    assert_eq!(http_with(w.port, "GET", "/healthz", None, &[], PROMPT).unwrap().status, 200);
    let mut idle = idle;
    for (i, s) in idle.iter_mut().enumerate().step_by(97) {
        assert_eq!(get_on(s, "/healthz").unwrap_or_else(|e| panic!("idle connection {}: {}", i, e)).status, 200);
    }
}

/// Over `params.maxConnections`, a new connection hears 503 with
/// `Retry-After` at once instead of waiting in the backlog.
#[test]
fn over_the_connection_limit_a_client_hears_503_at_once() {
    let dir = TestDir::for_test();
    // The 40 must still be open when the 41st comes (an idle timeout far
    // longer than any run of this test: opening them may take seconds on a
    // loaded machine).
    let w = start_worker(&dir, "w", json!({"params": {"maxConnections": 40, "idleTimeout": 3600}}));
    let idle = open_idle(w.port, 40, PROMPT).unwrap();
    let t = Instant::now();
    let r = http_with(w.port, "GET", "/healthz", None, &[], PROMPT).expect("an answer, not a timeout");
    assert_eq!(r.status, 503, "{:?}", r);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.closes());
    assert!(r.json()["error"].is_string());
    eprintln!("refused in {:?}", t.elapsed());
    // Room again once clients leave.
    drop(idle);
    assert!(wait_until(PROMPT, || http_with(w.port, "GET", "/healthz", None, &[], PROMPT).is_ok_and(|r| r.status == 200)));
}

/// Measured on the old worker: "512 slow clients ... nobody else gets an answer; the stall
/// timer restarts on every byte, so there is no total deadline": 600 slow
/// clients do not keep a normal client from its answers, and every one of
/// them is cut off by the total head deadline (here 3 s) although it keeps
/// sending a byte a second.
#[test]
fn slow_clients_deny_no_one_and_meet_a_total_head_deadline() {
    let _g = exclusive();
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({"threads": 4, "params": {"headerTimeout": 3}}));
    let slow = trickle(w.port, 600, Duration::from_secs(1), Duration::from_secs(20));
    let mut c = KeepAlive::with_timeout(w.port, PROMPT);
    for i in 0..20 {
        let r = c.get("/healthz").unwrap_or_else(|e| panic!("normal client beside slow ones, request {}: {}", i, e));
        assert_eq!(r.status, 200);
    }
    let t = slow.finish_when_done();
    eprintln!("{} of {} slow clients cut off ({} with 408), the last after {:?}", t.cut, t.clients, t.got_408, t.last);
    assert_eq!(t.cut, t.clients, "slow clients still connected after 20 s although headerTimeout is 3 s");
    assert_eq!(t.got_408, t.clients, "cut off without the 408 of a missed head deadline: {:?}", t.other);
}

/// Measured on the old worker: "20 slow clients also stretch a restart and a stop to the full
/// shutdownTimeout": a stop with slow and idle clients connected ends when
/// their own deadlines do; no worker has to be killed.
#[test]
fn slow_and_idle_clients_do_not_delay_a_stop() {
    let mut m = Master::for_test()
        .merge(json!({"shutdownTimeout": 12, "params": {"headerTimeout": 5, "idleTimeout": 5}}))
        .start();
    let workers = m.wait_worker_count(2, Duration::from_secs(30));
    let base: Vec<usize> = workers.iter().map(|&w| fd_count(w)).collect();
    let slow = trickle(m.port, 20, Duration::from_millis(500), Duration::from_secs(30));
    let idle = open_idle(m.port, 20, PROMPT).unwrap();
    // All 40 connections are in the workers' hands (accepted: an fd each in
    // a worker), not in the listen backlog, before the stop (their deadlines
    // are 5 s away).
    let mut held = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            held = workers.iter().zip(&base).map(|(&w, &b)| fd_count(w).saturating_sub(b)).collect();
            held.iter().sum::<usize>() >= 40
        }),
        "connections held by the workers: {:?}",
        held
    );
    eprintln!("connections held by each worker at the stop: {:?}", held);
    let t = Instant::now();
    m.signal(libc::SIGTERM);
    let st = m.wait_exit(Duration::from_secs(60));
    eprintln!("stop took {:?}", t.elapsed());
    assert_eq!(Master::exit_code(st), 0, "{}", m.diagnostics());
    assert!(m.events("worker.kill").is_empty(), "a worker had to be killed: {}", m.diagnostics());
    drop(idle);
    let t = slow.finish();
    assert_eq!(t.cut, t.clients, "{:?}", t);
    // A draining worker keeps the head deadline: each slow client got its 408.
    assert_eq!(t.got_408, t.clients, "{:?}", t);
}

/// The worker's debug records of the requests it answered (`msg`
/// "request": method, path, status, duration_ms), in the order it answered
/// them (one log, written by one loop).
fn answered(w: &HandWorker) -> Vec<serde_json::Value> {
    w.proc
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["msg"] == "request")
        .collect()
}

/// Measured on the old worker: "A hung database stalls everything": with the
/// database stopped (SIGSTOP), 64 concurrent requests all answer 503 (those
/// beyond the queue at once) and every one by `params.timeout` + 0.5 s:
/// the worker answers them all before a `/delay` of `params.timeout` + 0.6 s
/// asked after them (`params.timeout` is 3 s here), by the order of its own
/// answers (the same loop's timers, so no clock of a loaded machine is
/// raced). `/healthz` is answered while driver requests still wait (before
/// them, in the worker's order), and says the database is unreachable.
#[test]
fn a_hung_database_answers_on_time() {
    let _g = exclusive();
    let dir = TestDir::for_test();
    let db = Mongo::start();
    let w = start_worker(
        &dir,
        "w",
        json!({"driver": "mongodb", "threads": 4, "logLevel": "debug",
               "params": {"uri": db.uri(), "dbname": "hung", "timeout": 3, "maxQueued": 16}}),
    );
    let p = w.port;
    assert_eq!(worker_request(p, "PUT", "/objects/t/x", Some(b"{\"a\":1}")).status, 200);
    let db_pid = db.pid().unwrap();
    assert!(kill(-db_pid, libc::SIGSTOP));
    struct Cont(i32);
    impl Drop for Cont {
        fn drop(&mut self) {
            kill(-self.0, libc::SIGCONT);
        }
    }
    let _cont = Cont(db_pid);

    // 64 driver requests, each on a connection of its own: 4 on the threads,
    // 16 queued, the 44 others refused at once (503, queue full). Once the
    // worker has refused 44, it has read all 64 and 20 wait for the database.
    let t0 = Instant::now();
    let mut clients: Vec<KeepAlive> = (0..64)
        .map(|i| {
            let mut c = KeepAlive::with_timeout(p, Duration::from_secs(30));
            c.send("GET", &format!("/objects/t/{}", i), None).unwrap();
            c
        })
        .collect();
    let refused_at_once = |recs: &[serde_json::Value]| {
        recs.iter().filter(|r| r["status"] == 503 && r["duration_ms"].as_u64().is_some_and(|d| d < 500)).count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || refused_at_once(&answered(&w)) >= 44),
        "the worker did not refuse the 44 requests beyond its queue: {:?}",
        answered(&w)
    );
    let mut reference = KeepAlive::with_timeout(p, Duration::from_secs(30));
    reference.send("GET", "/delay/3600", None).unwrap();
    // /healthz never waits behind driver work: answered at once, and in the
    // worker's own order before any of the 20 that wait for the database.
    let t = Instant::now();
    let h = http_with(p, "GET", "/healthz", None, &[], Duration::from_secs(30)).unwrap();
    let healthz_took = t.elapsed();
    assert_eq!(h.status, 200);
    let mut statuses = std::collections::BTreeMap::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.read().unwrap_or_else(|e| panic!("request {}: no answer with the database hung: {}", i, e));
        assert_eq!(r.status, 503, "request {}: {}", i, r.text());
        assert_eq!(r.header("retry-after"), Some("1"), "503 without Retry-After");
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    let worst = t0.elapsed();
    assert_eq!(reference.read().unwrap().status, 200);
    eprintln!("64 requests with the database hung: {:?} within {:?}; /healthz in {:?}", statuses, worst, healthz_took);
    let recs = answered(&w);
    let healthz_at = recs.iter().position(|r| r["path"] == "/healthz" && r["status"] == 200).expect("the /healthz record");
    let waited: Vec<usize> = (0..recs.len()).filter(|&i| recs[i]["status"] == 503).skip(44).collect();
    assert_eq!(waited.len(), 20, "{:?}", recs);
    assert!(healthz_at < waited[0], "/healthz was answered after a driver request that waited: {:?}", recs);
    // Every 503 came before the reference's answer, in the worker's order.
    let at = recs.iter().position(|r| r["path"] == "/delay/3600").expect("the reference request's record");
    let late: Vec<&serde_json::Value> =
        recs[at..].iter().filter(|r| r["status"] == 503 && r["path"].as_str().unwrap_or("").starts_with("/objects/t/")).collect();
    assert!(late.is_empty(), "503s answered after params.timeout + 0.6 s: {:?}", late);
    assert_eq!(recs[..at].iter().filter(|r| r["status"] == 503).count(), 64);
    let slowest = recs[..at].iter().filter_map(|r| r["duration_ms"].as_u64()).max();
    eprintln!("slowest 503 by the worker's clock: {:?} ms", slowest);
    assert!(
        wait_until(Duration::from_secs(10), || worker_request(p, "GET", "/healthz", None).json()["database"] == "unreachable"),
        "/healthz does not say the database is unreachable"
    );
    drop(_cont);
    assert!(wait_until(Duration::from_secs(20), || worker_request(p, "GET", "/objects/t/x", None).status == 200));
    assert!(wait_until(Duration::from_secs(10), || worker_request(p, "GET", "/healthz", None).json()["database"] == "ok"));
}

/// Measured on the old worker: "The memory driver has no bound" (300 PUTs of 1 MiB took a
/// worker to 315 MB): with no key set, new objects are refused with 507 and
/// a JSON error before the worker holds 256 MiB; nothing acknowledged is lost.
#[test]
fn the_memory_driver_is_bounded() {
    let _g = exclusive();
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({"driver": "memory"}));
    let body = {
        let mut b = b"{\"k\":\"".to_vec();
        b.extend(vec![b'x'; 1024 * 1024 - 16]);
        b.extend_from_slice(b"\"}");
        b
    };
    let mut c = KeepAlive::new(w.port);
    let (mut stored, mut refused) = (Vec::new(), 0);
    for i in 0..300 {
        let r = c.request("PUT", &format!("/objects/big/{}", i), Some(&body)).unwrap();
        match r.status {
            200 => stored.push(i),
            507 => {
                assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("full")), "{}", r.text());
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            s => panic!("PUT {}: {} {}", i, s, r.text()),
        }
    }
    let rss = rss_kb(w.proc.pid());
    eprintln!("{} objects of 1 MiB stored, then 507; worker RSS {} kB", stored.len(), rss);
    assert!(refused > 0, "300 PUTs of 1 MiB all accepted");
    assert!(rss < 256 * 1024, "worker RSS {} kB", rss);
    for i in &stored {
        let r = c.request("GET", &format!("/objects/big/{}", i), None).unwrap();
        assert_eq!((r.status, r.body.len()), (200, body.len()), "object {} lost", i);
    }
    // Room again after a DELETE; a replacement that does not grow always fits.
    assert_eq!(c.request("PUT", &format!("/objects/big/{}", stored[0]), Some(&body)).unwrap().status, 200);
    assert_eq!(c.request("DELETE", &format!("/objects/big/{}", stored[1]), None).unwrap().status, 204);
    assert_eq!(c.request("PUT", "/objects/big/again", Some(&body)).unwrap().status, 200);

    // params.maxObjects.
    let w2 = start_worker(&dir, "w2", json!({"params": {"maxObjects": 3}}));
    for i in 0..3 {
        assert_eq!(worker_request(w2.port, "PUT", &format!("/objects/t/{}", i), Some(b"{}")).status, 200);
    }
    let r = worker_request(w2.port, "PUT", "/objects/t/3", Some(b"{}"));
    assert_eq!(r.status, 507);
    assert!(r.json()["error"].is_string());
    assert_eq!(worker_request(w2.port, "PUT", "/objects/t/0", Some(b"{\"v\":2}")).status, 200);
    assert_eq!(worker_request(w2.port, "GET", "/objects/t/3", None).status, 404);
    // A bad value is a config error naming the key.
    let cfg = dir.join("bad.json");
    std::fs::write(&cfg, r#"{"port": 1, "params": {"maxBytes": -1}}"#).unwrap();
    let (st, out, _) = worker_probe(&cfg);
    assert_eq!(st.code(), Some(1));
    assert!(out.lines().any(|l| l.starts_with("ERROR=config: params.maxBytes")), "{}", out);
}

/// Measured on the old worker: "Chunked request bodies get 411": chunked bodies (with the
/// same size limit), `Expect: 100-continue`, pipelining and HEAD.
#[test]
fn http_as_clients_speak_it() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({}));
    let p = w.port;
    // Chunked, in three chunks with an extension and a trailer, as `curl -T -` sends.
    let mut c = KeepAlive::one_connection(p);
    c.send_raw(b"PUT /objects/c/1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3;x=y\r\n 12\r\n1\r\n}\r\n0\r\nX-Trailer: 1\r\n\r\n").unwrap();
    let r = c.read().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "{\"a\": 12}"));
    assert!(!r.closes());
    // The connection goes on.
    c.send("GET", "/objects/c/1", None).unwrap();
    assert_eq!(c.read().unwrap().text(), "{\"a\": 12}");

    // Over 1 MiB once decoded: 413, connection closed.
    let mut c = KeepAlive::one_connection(p);
    let mut big = b"PUT /objects/c/big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..17 {
        big.extend_from_slice(b"10000\r\n");
        big.extend(vec![b' '; 0x10000]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"0\r\n\r\n");
    let _ = c.send_raw(&big);
    let r = c.read().unwrap();
    assert_eq!(r.status, 413);
    assert!(r.closes());

    // Expect: 100-continue: the interim answer comes before the body is sent.
    for framing in ["Content-Length: 7", "Transfer-Encoding: chunked"] {
        let mut s = BufReader::new(connect(p, PROMPT).unwrap());
        s.get_mut()
            .write_all(format!("PUT /objects/c/e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n{}\r\n\r\n", framing).as_bytes())
            .unwrap();
        let mut line = String::new();
        s.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 100 Continue\r\n", "{}", framing);
        s.read_line(&mut line).unwrap();
        let body: &[u8] = if framing.starts_with("Content") { b"{\"e\":1}" } else { b"7\r\n{\"e\":1}\r\n0\r\n\r\n" };
        s.get_mut().write_all(body).unwrap();
        let r = read_response(&mut s, false).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "{\"e\":1}"), "{}", framing);
    }

    // Pipelining: three requests in one write, a chunked PUT in the middle, answered in order.
    let mut c = KeepAlive::one_connection(p);
    c.send_raw(
        b"GET /objects/c/none HTTP/1.1\r\nHost: t\r\n\r\nPUT /objects/c/p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\nGET /objects/c/p HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    assert_eq!(c.read().unwrap().status, 404);
    assert_eq!(c.read().unwrap().status, 200);
    assert_eq!(c.read().unwrap().text(), "{}");

    // An API error (bad JSON, bad name, unknown path) keeps the connection.
    let mut c = KeepAlive::one_connection(p);
    assert_eq!(c.request("PUT", "/objects/c/x", Some(b"{")).unwrap().status, 400);
    assert_eq!(c.request("GET", "/objects/$c/x", None).unwrap().status, 400);
    assert_eq!(c.request("GET", "/nowhere", None).unwrap().status, 404);
    let r = c.request("GET", "/healthz", None).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(c.connects, 1);

    // HEAD: the headers of the GET, no body.
    let mut s = BufReader::new(connect(p, PROMPT).unwrap());
    s.get_mut().write_all(b"HEAD /objects/c/1 HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s, true).unwrap();
    assert_eq!((r.status, r.header("content-length")), (200, Some("9")));
    assert!(r.body.is_empty());
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.json()["status"], "ok");
    // Keep-alive answers announce the idle timeout.
    assert_eq!(r.header("keep-alive"), Some("timeout=4"));
}

/// Deep pipelines keep their order: 101, then 10,001 PUTs in one stream,
/// written by one thread while another reads the answers (each answer echoes
/// its own body, so a request answered out of turn shows). A worker that
/// stops reading while its answers are not read still serves a client that
/// reads them.
#[test]
fn deep_pipelines_are_answered_in_order() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({}));
    for n in [101usize, 10_001] {
        let mut stream = Vec::new();
        for i in 0..n {
            let body = format!("{{\"i\":{}}}", i);
            stream.extend_from_slice(
                format!("PUT /objects/pipe/{} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{}", i % 7, body.len(), body).as_bytes(),
            );
        }
        let s = connect(w.port, Duration::from_secs(60)).unwrap();
        let mut writer = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || writer.write_all(&stream));
        let mut r = BufReader::new(s);
        for i in 0..n {
            let a = read_response(&mut r, false).unwrap_or_else(|e| panic!("answer {} of {}: {}", i + 1, n, e));
            assert_eq!((a.status, a.json()), (200, json!({ "i": i })), "answer {} of {}", i + 1, n);
        }
        sender.join().unwrap().unwrap();
    }
}

/// Measured on the old worker: an answer still being written was cut off at
/// the idle timeout counted from when it was queued, however fast its client
/// read. A client reading a 1 MiB answer at about 100 kB/s (well above
/// `params.minBodyRate`) for longer than `params.idleTimeout` (1 s) gets all
/// of it, and the connection stays usable; the idle timeout counts from the
/// end of the answer.
#[test]
fn a_slow_reader_gets_a_large_answer_whole() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({"params": {"idleTimeout": 1}}));
    let obj = big_object(1024 * 1024, false);
    assert_eq!(worker_request(w.port, "PUT", "/objects/big/1", Some(&obj)).status, 200);
    let mut s = connect_small_window(w.port, 4096).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /objects/big/1 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut paced = Instant::now();
    while got.len() < obj.len() + 100 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        // About 250 kB/s: a read of up to 4 kB every 16 ms.
        paced += Duration::from_millis(16);
        std::thread::sleep(paced.saturating_duration_since(Instant::now()));
        if got.windows(4).position(|w| w == b"\r\n\r\n").is_some_and(|h| got.len() >= h + 4 + obj.len()) {
            break;
        }
    }
    let took = t.elapsed();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("an answer head") + 4;
    eprintln!("{} bytes of the answer in {:?}", got.len() - head_end, took);
    assert_eq!(got.len() - head_end, obj.len(), "the answer was cut off after {:?}", took);
    assert!(took > Duration::from_secs(2), "read in {:?}: not slower than the idle timeout, the test proves nothing", took);
    assert_eq!(&got[head_end..], &obj[..]);
}

/// Measured on the old worker: "Pooled keep-alive clients fail across restarts": clients that
/// pause 0.2 to 4 s between requests on one connection (less than the idle
/// timeout, like a connection pool) and never retry lose no request over
/// three restarts: a draining worker answers the next request on each
/// connection (with `Connection: close`) and closes an idle one no earlier
/// than its idle timeout.
#[test]
fn pooled_keep_alive_clients_lose_nothing_across_restarts() {
    let _g = exclusive();
    let mongo = Mongo::start();
    let m = Master::for_test()
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri(), "dbname": "pooled"},
                      "threads": 4, "shutdownTimeout": 20, "logLevel": "info"}))
        .start();
    let port = m.port;
    let stop = Arc::new(AtomicBool::new(false));
    const GAPS_MS: [u64; 8] = [200, 4000, 500, 3000, 1000, 1500, 2500, 3500];
    // Requests answered so far, per client.
    let progress: Arc<Vec<std::sync::atomic::AtomicUsize>> = Arc::new((0..16).map(|_| Default::default()).collect());
    let moved_on = |since: &[usize]| progress.iter().zip(since).filter(|(p, &s)| p.load(Ordering::SeqCst) > s).count();
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let stop = stop.clone();
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut c = KeepAlive::with_timeout(port, Duration::from_secs(15));
                let (mut ok, mut failed, mut closes) = (0u32, Vec::new(), 0u32);
                let mut k = i;
                while !stop.load(Ordering::SeqCst) {
                    let path = format!("/objects/pool{}/k{}", i, k);
                    match c.request("PUT", &path, Some(b"{\"v\":1}")) {
                        Ok(r) if r.status == 200 => {
                            ok += 1;
                            progress[i].fetch_add(1, Ordering::SeqCst);
                            if r.closes() {
                                closes += 1;
                            }
                        }
                        Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                        Err(e) => failed.push(format!("{} (reused connection: {})", e, c.connects > 0)),
                    }
                    std::thread::sleep(Duration::from_millis(GAPS_MS[k % GAPS_MS.len()]));
                    k += 1;
                }
                (ok, failed, closes)
            })
        })
        .collect();
    // Every client has its connection before the first restart; the new
    // generation answers before the next one.
    let zero = vec![0; 16];
    assert!(wait_until(Duration::from_secs(60), || moved_on(&zero) == 16), "a client made no request");
    for i in 0..3 {
        let mark = m.mark();
        m.signal(libc::SIGUSR2);
        let (_, done) = m.wait_event_after(mark, "restart.complete", Duration::from_secs(60));
        assert_eq!(done["generation"], i + 2);
        let now: Vec<usize> = progress.iter().map(|p| p.load(Ordering::SeqCst)).collect();
        assert!(wait_until(Duration::from_secs(60), || moved_on(&now) > 0), "no request answered after restart {}", i + 1);
    }
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failed, mut closes) = (0, Vec::new(), 0);
    for c in clients {
        let (o, f, cl) = c.join().unwrap();
        ok += o;
        failed.extend(f);
        closes += cl;
    }
    eprintln!("pooled clients: {} ok, {} failed, {} answers with Connection: close", ok, failed.len(), closes);
    assert!(failed.is_empty(), "{} failed requests: {:?}", failed.len(), &failed[..failed.len().min(10)]);
    assert!(closes > 0, "no client used a draining worker's connection: the test proves nothing");
    assert!(m.events("worker.kill").is_empty(), "{}", m.diagnostics());
}

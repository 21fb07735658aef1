//! The built-in worker's `mongodb` driver against a real server: secantusd-py
//! (pip package `secantusdb`) on a loopback port with in-memory storage, found
//! through `ZDRESTART_SECANTUSD` or `.venv/bin/secantusd-py`. These tests FAIL
//! when the server cannot be started: they are never skipped.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `params.timeout` of these tests (seconds).
const DB_TIMEOUT: u64 = 2;

fn mongo_cfg(db: &Mongo, dbname: &str) -> Value {
    json!({"driver": "mongodb", "threads": 8, "logLevel": "debug", "params": {"uri": db.uri(), "dbname": dbname, "timeout": DB_TIMEOUT}})
}

#[test]
fn round_trip_and_injection_safety() {
    let dir = TestDir::for_test();
    let db = Mongo::start();
    let w = start_worker(&dir, "w", mongo_cfg(&db, "rt"));
    let p = w.port;
    assert_eq!(worker_request(p, "GET", "/healthz", None).json()["driver"], "mongodb");

    let cases: Vec<(&str, &str, String)> = vec![
        ("note", "plain", r#"{"a":1}"#.to_string()),
        ("a.b", "c.d", r#"{"dotted":"type and id"}"#.to_string()),
        ("t", "...", r#"{"id":"dots only"}"#.to_string()),
        ("t", "_id", r#"{"_id":"x","$set":{"a.b":1},"$where":"sleep(10000)"}"#.to_string()),
        ("t", "nested", r#"{"$inc":{"n":1},"x":{"y.z":[{"$gt":0},null,true,1.5e10,"é\u0000"]}}"#.to_string()),
        ("t", "ws", "{ \"spaces\" :  [ 1 , 2 ] }".to_string()),
        ("t", "big", format!(r#"{{"k":"{}"}}"#, "x".repeat(900_000))),
    ];
    for (ty, id, body) in &cases {
        let path = format!("/objects/{}/{}", ty, id);
        let r = worker_request(p, "PUT", &path, Some(body.as_bytes()));
        assert_eq!(r.status, 200, "{} {}", path, r.text());
        assert_eq!(r.body, body.as_bytes(), "{}", path);
    }
    for (ty, id, body) in &cases {
        let r = worker_request(p, "GET", &format!("/objects/{}/{}", ty, id), None);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), *body, "exact round trip of {}/{}", ty, id);
    }
    // "a.b"/"c.d" is not "a"/"b.c.d" or anything else.
    assert_eq!(worker_request(p, "GET", "/objects/a/b.c.d", None).status, 404);
    assert_eq!(worker_request(p, "GET", "/objects/a.b/c", None).status, 404);
    // Operator-looking names are refused before reaching the database.
    assert_eq!(worker_request(p, "GET", "/objects/t/$where", None).status, 400);
    assert_eq!(worker_request(p, "PUT", "/objects/$set/x", Some(b"{}")).status, 400);
    // Replace, not merge.
    assert_eq!(worker_request(p, "PUT", "/objects/note/plain", Some(br#"{"b":2}"#)).status, 200);
    assert_eq!(worker_request(p, "GET", "/objects/note/plain", None).json(), json!({"b": 2}));
    // DELETE then GET: 204 then 404; DELETE again: 404.
    assert_eq!(worker_request(p, "DELETE", "/objects/a.b/c.d", None).status, 204);
    assert_eq!(worker_request(p, "GET", "/objects/a.b/c.d", None).status, 404);
    assert_eq!(worker_request(p, "DELETE", "/objects/a.b/c.d", None).status, 404);
    // Over 1 MiB: 413.
    let mut c = KeepAlive::one_connection(p);
    c.send_raw(b"PUT /objects/t/huge HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n").unwrap();
    assert_eq!(c.read().unwrap().status, 413);
}

#[test]
fn two_workers_share_the_database() {
    let dir = TestDir::for_test();
    let db = Mongo::start();
    let a = start_worker(&dir, "a", mongo_cfg(&db, "share"));
    let b = start_worker(&dir, "b", mongo_cfg(&db, "share"));
    for i in 0..20 {
        let body = format!(r#"{{"i":{}}}"#, i);
        let (w, r) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let put = worker_request(w.port, "PUT", &format!("/objects/s/{}", i), Some(body.as_bytes()));
        assert_eq!(put.status, 200);
        let got = worker_request(r.port, "GET", &format!("/objects/s/{}", i), None);
        assert_eq!((got.status, got.text()), (200, body));
        assert_ne!(put.worker_pid().unwrap(), got.worker_pid().unwrap(), "answered by two different workers");
    }
    assert_eq!(worker_request(a.port, "DELETE", "/objects/s/3", None).status, 204);
    assert_eq!(worker_request(b.port, "GET", "/objects/s/3", None).status, 404);
    // Another database name is another store.
    let other = start_worker(&dir, "o", mongo_cfg(&db, "other"));
    assert_eq!(worker_request(other.port, "GET", "/objects/s/4", None).status, 404);
}

#[test]
fn database_down_gives_503_and_recovers() {
    let dir = TestDir::for_test();
    let mut db = Mongo::start();
    let mut w = start_worker(&dir, "w", mongo_cfg(&db, "down"));
    let p = w.port;
    assert_eq!(worker_request(p, "PUT", "/objects/d/1", Some(b"{\"v\":1}")).status, 200);
    let cfg = w.config.clone();
    let (st, out, _) = worker_probe(&cfg);
    assert!(st.success(), "{}", out);

    db.stop();
    assert!(wait_until(Duration::from_secs(15), || !port_accepts(db.port)), "the stopped server still accepts");
    // What is checked is that a request waits for params.timeout, not for
    // the driver's 30 s default; the margin is for a loaded machine.
    let bound = Duration::from_secs(DB_TIMEOUT + 13);
    for (method, body) in [("GET", None), ("PUT", Some(&b"{\"v\":2}"[..])), ("DELETE", None)] {
        let t = Instant::now();
        let r = worker_request(p, method, "/objects/d/1", body);
        let took = t.elapsed();
        assert_eq!(r.status, 503, "{} {}", method, r.text());
        // The driver's own answer, or the loop's at params.timeout + 0.5 s
        // ("no answer in time") on a machine too loaded for the driver.
        assert!(r.json()["error"].as_str().is_some_and(|e| e.starts_with("database unavailable")), "{}", r.text());
        assert!(took <= bound, "{} took {:?}", method, took);
        eprintln!("{} answered 503 after {:?}", method, took);
    }
    // Concurrent requests while down all get their 503 in time too: every
    // one by params.timeout + 0.5 s, before a /delay of params.timeout +
    // 0.6 s asked after them, in the worker's own order.
    let pid = w.proc.pid();
    let t = Instant::now();
    let mut clients: Vec<KeepAlive> = (0..8)
        .map(|i| {
            let mut c = KeepAlive::with_timeout(p, Duration::from_secs(30));
            c.send("GET", &format!("/objects/d/{}", i), None).unwrap();
            c
        })
        .collect();
    // Each of the 8 is in the worker's hands before the reference is asked:
    // fully read by it (in /proc), or already answered (a byte, or the end,
    // waits on the client's side). A request answered while /proc was being
    // read (slow on a loaded machine) counts as read too: its answer cannot
    // come after a reference not yet sent. Nothing is waited for a fixed time.
    let mut read = [false; 8];
    assert!(
        wait_until(Duration::from_secs(30), || {
            let streams: Vec<&std::net::TcpStream> = clients.iter().map(|c| c.stream().unwrap()).collect();
            for (i, taken) in which_requests_taken_by(pid, &streams).into_iter().enumerate() {
                read[i] |= taken || common::sys::peek_byte(streams[i].as_raw_fd()).is_ok();
            }
            read.iter().all(|&r| r)
        }),
        "the 8 requests did not reach the worker: {:?}",
        read
    );
    let reference = std::thread::spawn(move || worker_request(p, "GET", &format!("/delay/{}", DB_TIMEOUT * 1000 + 600), None).status);
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.read().unwrap_or_else(|e| panic!("request {}: no answer with the database down: {}", i, e));
        assert_eq!(r.status, 503, "request {}: {}", i, r.text());
    }
    assert_eq!(reference.join().unwrap(), 200);
    let answered: Vec<serde_json::Value> = w
        .proc
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["msg"] == "request")
        .collect();
    let at = answered.iter().position(|r| r["path"].as_str().unwrap_or("").starts_with("/delay/")).expect("the reference's record");
    let late: Vec<&serde_json::Value> = answered[at..].iter().filter(|r| r["status"] == 503).collect();
    assert!(late.is_empty(), "503s after params.timeout + 0.6 s: {:?}", late);
    assert!(t.elapsed() <= bound, "{:?}", t.elapsed());
    // The worker is alive and answers what does not need the database.
    assert!(w.proc.alive());
    assert_eq!(worker_request(p, "GET", "/healthz", None).status, 200);
    // The probe reports the database down.
    let t = Instant::now();
    let (st, out, _) = worker_probe(&cfg);
    assert_eq!(st.code(), Some(1), "{}", out);
    assert!(out.lines().any(|l| l.starts_with("ERROR=database unreachable")), "{}", out);
    assert!(out.contains(&format!("MAGIC={}", zdrestart::MAGIC)));
    // Bounded by params.timeout (2 s), not the driver's 30 s default.
    assert!(t.elapsed() < Duration::from_secs(20), "probe took {:?}", t.elapsed());
    eprintln!("probe with the database down took {:?}", t.elapsed());

    // Restart on the same port: writes succeed again, without restarting the worker.
    db.restart();
    let t = Instant::now();
    loop {
        let r = worker_request(p, "PUT", "/objects/d/1", Some(b"{\"v\":3}"));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(t.elapsed() < Duration::from_secs(15), "no recovery after {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("recovered {:?} after the database came back", t.elapsed());
    assert_eq!(worker_request(p, "GET", "/objects/d/1", None).json(), json!({"v": 3}));
    assert!(w.proc.alive());
    let (st, out, _) = worker_probe(&cfg);
    assert!(st.success(), "{}", out);
}

#[test]
fn worker_starts_while_the_database_is_down() {
    let dir = TestDir::for_test();
    // The database's port, reserved and refusing connections until it runs.
    let mut db = Mongo::down();
    let cfg = json!({"driver": "mongodb", "params": {"uri": db.uri(), "timeout": 1}});
    let t = Instant::now();
    let w = start_worker(&dir, "w", cfg);
    // Serving (start_worker waited for it) while the database is down: the
    // bound only catches a start-up that waits for the driver's 30 s default.
    assert!(t.elapsed() < Duration::from_secs(20), "start-up waited for the database: {:?}", t.elapsed());
    eprintln!("serving {:?} after start with the database down", t.elapsed());
    assert_eq!(worker_request(w.port, "GET", "/healthz", None).status, 200);
    assert_eq!(worker_request(w.port, "PUT", "/objects/l/1", Some(b"{}")).status, 503);
    db.restart();
    let t = Instant::now();
    while worker_request(w.port, "PUT", "/objects/l/1", Some(b"{}")).status != 200 {
        assert!(t.elapsed() < Duration::from_secs(15), "no recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(w.proc.output().contains("Database unreachable at start"), "{}", w.proc.output());
}

#[test]
fn concurrent_writers_lose_nothing() {
    let dir = TestDir::for_test();
    let db = Mongo::start();
    let a = start_worker(&dir, "a", mongo_cfg(&db, "conc"));
    let b = start_worker(&dir, "b", mongo_cfg(&db, "conc"));
    let ports = Arc::new([a.port, b.port]);
    const THREADS: usize = 8;
    const TOTAL: usize = 2000;
    let t = Instant::now();
    let hs: Vec<_> = (0..THREADS)
        .map(|k| {
            let ports = ports.clone();
            std::thread::spawn(move || {
                // Each client keeps one connection to one of the two workers.
                let mut c = KeepAlive::one_connection(ports[k % 2]);
                for i in (k..TOTAL).step_by(THREADS) {
                    let body = format!(r#"{{"i":{},"k":{}}}"#, i, k);
                    let r = c.request("PUT", &format!("/objects/c/{}", i), Some(body.as_bytes())).unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let put_time = t.elapsed();
    let t = Instant::now();
    let mut c = [KeepAlive::one_connection(a.port), KeepAlive::one_connection(b.port)];
    for i in 0..TOTAL {
        let r = c[i % 2].request("GET", &format!("/objects/c/{}", i), None).unwrap();
        assert_eq!(r.status, 200, "object {} lost", i);
        assert_eq!(r.json()["i"], i);
    }
    eprintln!("{} PUTs by {} clients in {:?}; {} GETs by 1 client in {:?}", TOTAL, THREADS, put_time, TOTAL, t.elapsed());
}

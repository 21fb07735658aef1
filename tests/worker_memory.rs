//! The built-in worker's memory is bounded under hostile client shapes
//! (zdrestart-worker(7), "Memory"): what it holds for requests and answers in
//! flight stays within `params.maxBuffered`, whatever the clients do.
//!
//! Each shape runs one worker with a small budget (8 MiB) and asserts that its
//! peak RSS (`VmHWM`) stays under what it had before the shape, plus the
//! budget, plus what the store holds, plus a fixed allowance: never a timing.
//! One more test shows what happens at the budget's edge (503, `Retry-After`,
//! a close). Figures under the default budget, beside nginx, are printed by
//! `scripts/bench worker memory` (bench/worker.rs).

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::time::Duration;

const MIB: u64 = 1024;
/// `params.maxBuffered` of these tests, in kB.
const BUDGET_KB: u64 = 8 * MIB;
/// What a worker may hold besides its budget and its objects, in kB: the
/// allocator's slack, connection state, the pool threads' stacks in use.
const ALLOWANCE_KB: u64 = 24 * MIB;
const OBJECT: usize = 1024 * 1024;
/// Slow readers of one object.
const READERS: usize = 2000;

fn worker(dir: &TestDir, name: &str) -> HandWorker {
    start_worker(dir, name, json!({"threads": 4, "params": {"maxBuffered": BUDGET_KB * 1024}}))
}

/// Measured on the old worker: 2,000 clients with a 2 KB receive buffer that
/// ask for one 1 MiB object and never read took it from 80 MB to 1.1 GB (one
/// copy of the object per connection, outside any budget; this test against
/// it: a peak of several hundred MB). Here 2,000 such readers, then one
/// client pipelining 2,000 requests for it: once the worker has taken every
/// request, its peak is within the bound, every answer is still pending
/// (they share the stored bytes: none was refused or dropped), the
/// pipelining client's further requests are not read, and a normal client
/// still gets the object.
#[test]
fn slow_readers_of_a_large_object_share_it() {
    let _g = exclusive();
    let dir = TestDir::for_test();
    let w = worker(&dir, "w");
    let (pid, port) = (w.proc.pid(), w.port);
    let obj = big_object(OBJECT, false);
    assert_eq!(worker_request(port, "PUT", "/objects/big/1", Some(&obj)).status, 200);
    let before = rss_kb(pid);
    let bound = before + BUDGET_KB + ALLOWANCE_KB;
    let readers = slow_readers(port, READERS, "/objects/big/1", 2048);
    assert_eq!(readers.len(), READERS, "slow readers could not all connect");
    // Every request is in the worker's sockets or its accept queue once
    // `slow_readers` returns (loopback): the worker has taken them all when
    // the queue is empty and none of its sockets has a request unread.
    assert!(
        wait_until(Duration::from_secs(120), || accept_backlog(port) == Some(0) && requests_unread(pid, &readers) == 0),
        "the worker did not take every request: {:?} in its accept queue, {} unread\n{}",
        accept_backlog(port),
        requests_unread(pid, &readers),
        w.proc.output()
    );
    let peak = peak_rss_kb(pid);
    eprintln!("{} slow readers of a 1 MiB object: RSS {} kB before, peak {} kB, bound {} kB", READERS, before, peak, bound);
    assert!(peak <= bound, "peak RSS {} kB over the bound {} kB (before {} kB)", peak, bound, before);
    assert_eq!(answers_stuck(pid, &readers), readers.len(), "answers refused or dropped instead of shared\n{}", w.proc.output());
    // A client that pipelines 2,000 requests for it and reads nothing: its
    // first answer waits, and the worker reads no further (the rest of the
    // requests stay in its socket): it holds one answer, not 2,000.
    let mut greedy = connect_small_window(port, 2048).unwrap();
    greedy.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = greedy.write_all("GET /objects/big/1 HTTP/1.1\r\nHost: g\r\n\r\n".repeat(2000).as_bytes());
    assert!(
        wait_until(Duration::from_secs(60), || server_queue(pid, &greedy).is_some_and(|(tx, rx)| tx > 0 && rx > 0)),
        "the pipelining client's requests were all read: {:?}",
        server_queue(pid, &greedy)
    );
    // Beside them, the object is served whole to a client that reads.
    let r = worker_request(port, "GET", "/objects/big/1", None);
    assert_eq!((r.status, r.body.len()), (200, OBJECT));
    let peak = peak_rss_kb(pid);
    eprintln!("and with the pipelining client: peak {} kB", peak);
    assert!(peak <= bound, "peak RSS {} kB over the bound {} kB (before {} kB)", peak, bound, before);
}

/// 64 clients sending 1 MiB `PUT` bodies, 4 each: every answer is 200 or
/// 503 (the budget), the bodies in memory stay within the budget, and none
/// is built into a value tree. `array`: `{"a":[0,0,...]}` (measured on the
/// old worker: 420 MB peak), else one long string (222 MB).
fn flood(array: bool) {
    let _g = exclusive();
    let dir = TestDir::for_test();
    let w = worker(&dir, if array { "arrays" } else { "strings" });
    let (pid, port) = (w.proc.pid(), w.port);
    let before = rss_kb(pid);
    let body = big_object(OBJECT, array);
    let f = put_flood(port, 64, 4, None, &body, false);
    eprintln!("64 clients x 4 PUTs of 1 MiB ({}): {:?}, {} connection errors", if array { "arrays" } else { "strings" }, f.statuses, f.errors.len());
    assert!(f.statuses.keys().all(|s| *s == 200 || *s == 503), "{:?}", f.statuses);
    assert!(f.statuses.get(&200).is_some_and(|n| *n > 0), "no PUT stored: {:?}", f);
    assert!(f.errors.is_empty(), "{:?}", &f.errors[..f.errors.len().min(5)]);
    // Room again once the flood is over.
    assert_eq!(worker_request(port, "PUT", "/objects/flood/0", Some(&body)).status, 200);
    let peak = peak_rss_kb(pid);
    // Up to one object of 1 MiB per client is stored (the driver's own bound).
    let stored = f.statuses[&200].min(64) * (OBJECT as u64 / 1024 + 1);
    let bound = before + BUDGET_KB + stored + ALLOWANCE_KB;
    eprintln!("RSS {} kB before, peak {} kB, bound {} kB", before, peak, bound);
    assert!(peak <= bound, "peak RSS {} kB over the bound {} kB (before {} kB)", peak, bound, before);
}

#[test]
fn many_clients_of_large_array_bodies_stay_within_the_budget() {
    flood(true);
}

#[test]
fn many_clients_of_large_string_bodies_stay_within_the_budget() {
    flood(false);
}

/// At the budget's edge (`maxBuffered` 2 MiB, its least): a client that has
/// announced a 1 MiB body holds 1 MiB of it; a second 1 MiB `PUT` head gets
/// 503 with `Retry-After` at once, and so does a `GET` of a 1 MiB object
/// (its answer would take the total past the budget); each such 503 closes
/// the connection. Once the first body is in, both are served again.
#[test]
fn over_the_budget_a_request_or_an_answer_gets_503() {
    let dir = TestDir::for_test();
    let w = start_worker(&dir, "w", json!({"threads": 1, "params": {"maxBuffered": 2 * 1024 * 1024}}));
    let (pid, port) = (w.proc.pid(), w.port);
    let obj = big_object(OBJECT, false);
    assert_eq!(worker_request(port, "PUT", "/objects/big/1", Some(&obj)).status, 200);
    let head = |id: &str| format!("PUT /objects/big/{} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", id, OBJECT);
    // The first 1,000 bytes of a 1 MiB body: its Content-Length is set aside.
    let mut holder = KeepAlive::one_connection(port);
    holder.send_raw(head("2").as_bytes()).unwrap();
    holder.send_raw(&obj[..1000]).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || holder.stream().and_then(|s| server_queue(pid, s)).is_some_and(|(_, rx)| rx == 0)),
        "the worker did not read the head"
    );
    let refused = |c: &mut KeepAlive, what: &str| {
        let r = c.read().unwrap_or_else(|e| panic!("{}: no answer: {}", what, e));
        assert_eq!(r.status, 503, "{}: {} bytes", what, r.body.len());
        assert_eq!(r.header("retry-after"), Some("1"), "{}", what);
        assert!(r.closes() && c.closed_within(Duration::from_secs(10)), "{}: the connection stays open", what);
    };
    let mut second = KeepAlive::one_connection(port);
    second.send_raw(head("3").as_bytes()).unwrap();
    refused(&mut second, "a second 1 MiB body");
    let mut reader = KeepAlive::one_connection(port);
    reader.send_raw(b"GET /objects/big/1 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    refused(&mut reader, "a 1 MiB answer");
    // The rest of the first body: stored; then there is room again.
    holder.send_raw(&obj[1000..]).unwrap();
    assert_eq!(holder.read().unwrap().status, 200);
    let r = worker_request(port, "GET", "/objects/big/1", None);
    assert_eq!((r.status, r.body.len()), (200, OBJECT));
    assert_eq!(worker_request(port, "PUT", "/objects/big/3", Some(&obj)).status, 200);
}

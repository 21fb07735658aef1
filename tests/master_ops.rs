//! The master under real operations (issue 9): a worker's record that forges
//! the master's, the pidfile lock, signals from the first instant, process
//! groups and orphans, inherited fds. Real master, real workers on loopback.

mod common;

use common::ops::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Item 5: a worker's record can never pass for the master's

#[test]
fn a_worker_cannot_forge_a_master_record() {
    let m = Master::for_test().set("worker", fault_worker_json("forge-master.sh")).start();
    let workers = m.wait_worker_count(2, T);
    // Both workers wrote the forged line; the master logged each of them.
    let forged: Vec<Value> = m.wait_for("the two forged records", T, |recs| {
        let v: Vec<Value> = recs.iter().filter(|r| r["worker_event"] == "restart.complete").cloned().collect();
        (v.len() >= 2).then_some(v)
    });
    for r in &forged {
        assert_eq!(r["component"], "worker", "{}", r);
        assert_eq!(r["worker_component"], "master", "{}", r);
        assert!(r.get("event").is_none(), "the worker's event is not an event of the log: {}", r);
        assert_eq!(r["pid"].as_i64(), Some(m.pid() as i64), "{}", r);
        assert_ne!(r["hostname"], "forged", "{}", r);
        assert!(workers.contains(&worker_pid_of(r).unwrap()), "{}", r);
    }
    // Proven absent after them: no restart.complete record at all, and every
    // record that says component "master" is the master's own.
    let recs = m.log_records();
    assert!(recs.iter().all(|r| event_of(r) != "restart.complete"), "a forged event passed");
    for r in recs.iter().filter(|r| r["component"] == "master") {
        assert!(worker_pid_of(r).is_none() || r.get("event").is_some(), "{}", r);
        assert_ne!(r["msg"], "Zero-downtime restart complete", "{}", r);
    }
}

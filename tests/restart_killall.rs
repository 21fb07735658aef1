//! `killall -USR2 zdrestart` (the command of the original description) gives
//! exactly one restart and kills no worker. Alone in its test binary: it
//! signals every process named zdrestart on the machine, and cargo runs test
//! binaries one after another.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

#[test]
fn killall_usr2_gives_exactly_one_restart_and_kills_no_worker() {
    let _g = exclusive();
    let mongo = Mongo::start();
    let m = Master::for_test().merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}})).start();
    let old = m.worker_pids();
    let mark = m.mark();
    let st = Command::new("killall").args(["-USR2", "zdrestart"]).status().expect("killall (psmisc) must be installed");
    assert!(st.success(), "killall -USR2 zdrestart: {}", st);
    let (_, done) = m.wait_event_after(mark, "restart.complete", Duration::from_secs(60));
    assert_eq!(done["msg"], "Zero-downtime restart complete");
    std::thread::sleep(Duration::from_secs(2));
    let recs = m.log_records();
    let starts = recs[mark..].iter().filter(|r| event_of(r) == "restart.start").count();
    assert_eq!(starts, 1, "exactly one restart");
    // Every old worker exited by itself with status 0 (SIGUSR2 is ignored by
    // workers), none was killed, and nothing died unexpectedly.
    for r in &recs[mark..] {
        if event_of(r) == "worker.exit" {
            assert_eq!(r["level"], 30, "{}", r);
            assert_eq!(r["code"], 0, "{}", r);
        }
        assert_ne!(event_of(r), "worker.kill");
    }
    let exits: Vec<i32> = recs[mark..].iter().filter(|r| event_of(r) == "worker.exit").filter_map(worker_pid_of).collect();
    assert_eq!(exits.len(), old.len());
    assert!(pid_alive(m.pid()), "the master survives its own signal");
    assert_eq!(m.worker_pids().len(), 2);
    assert_eq!(m.healthz().status, 200);
}

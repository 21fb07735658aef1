//! `killall -USR2 zdrestart` (the command of the behaviour description, also
//! named in zdrestart(8)) gives exactly one restart and kills no worker.
//!
//! killall signals every process of that name it can see, so the test runs in
//! its own PID namespace (`unshare --pid --fork --mount-proc`: root, as here
//! and in CI): the test binary re-runs itself as pid 1 of a namespace whose
//! /proc shows only what the test starts there, and the signal can reach
//! nothing outside it. There it sends SIGUSR2 to the master *and* to every
//! worker (`killall -USR2 zdrestart zdrestart-worker`: a worker's name,
//! `zdrestart-worke` in /proc, is not `zdrestart`, so the master's name alone
//! would not reach them), so that "kills no worker" is about workers that did
//! get the signal.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

/// Set for the run of this binary inside the namespace.
const IN_NAMESPACE: &str = "ZDRESTART_TEST_PID_NAMESPACE";
const NAME: &str = "killall_usr2_gives_exactly_one_restart_and_kills_no_worker";

/// One test: run by cargo, it re-runs itself (this test only) inside a new
/// PID namespace, where it does the work.
#[test]
fn killall_usr2_gives_exactly_one_restart_and_kills_no_worker() {
    if std::env::var_os(IN_NAMESPACE).is_some() {
        return inside_the_namespace();
    }
    let exe = std::env::current_exe().unwrap();
    // On timeout run_cmd kills unshare, and with it the whole namespace
    // (--kill-child; tests/harness.rs shows it).
    let mut cmd = common::spawn::in_pid_namespace(&exe);
    cmd.args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(IN_NAMESPACE, "1");
    let (st, out, err) = run_cmd(&mut cmd, Duration::from_secs(300));
    assert!(st.success(), "the test in its PID namespace failed ({:?}):\n--- stdout:\n{}\n--- stderr:\n{}", st, out, err);
    assert!(
        out.contains(&format!("test {} ... ok", NAME)) && out.contains("1 passed"),
        "the test did not run in the namespace:\n{}\n{}",
        out,
        err
    );
    eprintln!("--- in the namespace:\n{}{}", out, err);
}

fn inside_the_namespace() {
    // pid 1 of a fresh namespace: /proc shows only our own processes.
    assert_eq!(std::process::id(), 1, "not in a new PID namespace");
    let mongo = Mongo::start();
    let m = Master::for_test().merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}})).start();
    let old = m.wait_worker_count(2, Duration::from_secs(30));
    for p in &old {
        assert_eq!(proc_stat(*p).unwrap().comm, "zdrestart-worke", "a worker's process name");
    }
    let mark = m.mark();
    let (st, out, err) = run_cmd(
        Command::new("killall").args(["-v", "-USR2", "zdrestart", "zdrestart-worker"]),
        Duration::from_secs(30),
    );
    assert!(st.success(), "killall -USR2 zdrestart zdrestart-worker: {:?}\n{}{}", st, out, err);
    // killall -v says whom it signalled: the master and the two workers,
    // nothing else.
    let signalled: BTreeSet<i32> = format!("{}{}", out, err)
        .lines()
        .filter_map(|l| l.split_once('(')?.1.split_once(')')?.0.parse().ok())
        .collect();
    let expected: BTreeSet<i32> = old.iter().copied().chain([m.pid()]).collect();
    assert_eq!(signalled, expected, "killall -v:\n{}{}", out, err);

    let (_, done) = m.wait_event_after(mark, "restart.complete", Duration::from_secs(60));
    assert_eq!(done["msg"], "Zero-downtime restart complete");
    // A later marker: SIGHUP's log.reopen comes after every signal sent
    // before it was handled, so a second restart would show before it.
    let reopen_mark = m.mark();
    m.signal(libc::SIGHUP);
    m.wait_event_after(reopen_mark, "log.reopen", Duration::from_secs(30));
    let recs = m.log_records();
    let starts = recs[mark..].iter().filter(|r| event_of(r) == "restart.start").count();
    assert_eq!(starts, 1, "exactly one restart");
    // Every old worker, signalled too, exited by itself with status 0 when
    // the rollout asked it to (SIGUSR2 is ignored by workers): none was
    // killed, nothing died unexpectedly.
    for r in &recs[mark..] {
        if event_of(r) == "worker.exit" {
            assert_eq!(r["level"], 30, "{}", r);
            assert_eq!(r["code"], 0, "{}", r);
        }
        assert_ne!(event_of(r), "worker.kill", "{}", r);
    }
    let mut exits: Vec<i32> = recs[mark..].iter().filter(|r| event_of(r) == "worker.exit").filter_map(worker_pid_of).collect();
    exits.sort();
    assert_eq!(exits, old, "the old workers, and only they, exited");
    assert!(pid_alive(m.pid()), "the master survives its own signal");
    assert_eq!(m.worker_pids().len(), 2);
    assert_eq!(m.healthz().status, 200);
}

//! The master under real operations (issue 9): a worker's record that forges
//! the master's, the pidfile lock, signals from the first instant, process
//! groups and orphans, inherited fds. Real master, real workers on loopback.

mod common;

#[allow(unused_imports)]
use common::ops::*;
use common::*;
use serde_json::Value;
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

// ---------------------------------------------------------------------------
// Item 4: the pidfile's liveness is a lock the master holds

/// `flock -n -s FILE true`: the shell's way (init script) to ask whether a
/// master holds the pidfile: exit 1 while one does, 0 otherwise.
fn flock_says_held(pidfile: &std::path::Path) -> bool {
    let (st, _, err) = run_cmd(std::process::Command::new("flock").args(["-n", "-s"]).arg(pidfile).arg("true"), T);
    match st.code() {
        Some(0) => false,
        Some(1) => true,
        other => panic!("flock: {:?}: {}", other, err),
    }
}

#[test]
fn a_stale_pidfile_naming_a_live_process_does_not_refuse_the_start() {
    // An unrelated live process whose pid a stale pidfile names (a reused pid).
    let dir = TestDir::for_test();
    let sleeper = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
    let sleeper = ChildGuard::new(sleeper, dir.join("none"));
    let b = Master::for_test();
    let pidfile = b.dir().join("zdrestart.pid");
    std::fs::write(&pidfile, format!("{}\n", sleeper.pid())).unwrap();
    assert!(!flock_says_held(&pidfile));

    let mut m = b.start();
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", m.pid()));
    assert!(flock_says_held(&pidfile), "the running master holds the lock on its pidfile");
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit(T).code(), Some(0));
    assert!(!pidfile.exists(), "pidfile removed at exit");
    assert!(pid_alive(sleeper.pid()), "the unrelated process was left alone");
}

#[test]
fn a_live_master_is_never_started_twice_and_a_dead_one_never_blocks() {
    let mut first = Master::for_test().start();
    let pidfile = first.pidfile.clone().unwrap();
    // A second master on the same pidfile (own port and log): refused at
    // once, before binding or probing, and the first master's file is intact.
    let second = Master::builder("second").set("pidfile", pidfile.display().to_string());
    let port2 = second.port();
    let (st, err, second) = second.run_to_exit(T);
    assert_eq!(st.code(), Some(1), "{}", err);
    assert!(
        err.contains(&format!("a master is already running as pid {}", first.pid())) && err.contains("lock"),
        "{}",
        err
    );
    assert!(second.log_records().iter().all(|r| !r["msg"].as_str().unwrap_or("").starts_with("listening on")));
    assert!(port_is_free(port2));
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", first.pid()));
    assert!(flock_says_held(&pidfile));
    assert_eq!(first.healthz().status, 200);

    // SIGKILL: the pidfile stays behind, naming a dead master; no lock.
    first.signal(libc::SIGKILL);
    first.wait_exit(T);
    first.kill_all();
    assert!(pidfile.exists());
    assert!(!flock_says_held(&pidfile));
    let third = Master::builder("third").set("pidfile", pidfile.display().to_string()).start();
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", third.pid()));
}

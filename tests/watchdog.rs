//! The watchdog: a ready worker sends heartbeats (`WATCHDOG=1` on its
//! report pipe, or with sd_notify(3)) at least every `watchdogTimeout`,
//! which the master gives it as `WATCHDOG_USEC` and `WATCHDOG_PID`
//! (sd_watchdog_enabled(3)'s convention). A worker that misses its deadline
//! is hung (`worker.hung`, counted in STATUS) and replaced new-before-old:
//! a replacement starts, and once it is ready the hung one gets SIGABRT,
//! then SIGKILL after its `shutdownTimeout`. A hung worker in the middle of
//! a restart aborts it. Shown with SIGSTOP (the built-in worker, whose
//! event loop sends the heartbeats), with an event loop that spins
//! (tests/fault/spin.py), and with systemd's own sd_notify client.
//!
//! The spinning loop is a fault worker's, not a diagnostic of the built-in
//! worker: a switch that makes a shipped worker spin would be a denial of
//! service waiting to be turned on, and what is under test is the master,
//! which sees the same missing heartbeats whoever spins. That the built-in
//! worker sends its heartbeats from its event loop is shown by SIGSTOP
//! (which stops that loop) and by its own unit test.
#![deny(unsafe_code)]

mod common;
mod load;

use common::*;
use load::{Load, Spec};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn sock(m: &Master) -> std::path::PathBuf {
    m.dir.join("ctl.sock")
}

fn with_socket(b: MasterBuilder) -> MasterBuilder {
    let s = b.dir().join("ctl.sock");
    b.set("controlSocket", s.display().to_string())
}

/// The record of `event` about worker `pid`, waited for.
fn event_about(m: &Master, event: &str, pid: i32) -> Value {
    m.wait_for(&format!("{} of worker {}", event, pid), T, |recs| {
        recs.iter().find(|r| event_of(r) == event && worker_pid_of(r) == Some(pid)).cloned()
    })
}

/// The built-in worker, stopped with SIGSTOP: its heartbeats stop, it is
/// found hung within `watchdogTimeout`, a replacement starts and once it
/// is ready the stopped one gets SIGABRT (which waits, it is stopped) and
/// then SIGKILL. Clients of the other worker never notice.
#[test]
fn a_stopped_worker_is_found_hung_and_replaced_new_before_old() {
    let _g = exclusive();
    let m = with_socket(Master::for_test()).merge(json!({"watchdogTimeout": 3, "shutdownTimeout": 2})).start();
    let pids = m.worker_pids();
    let env = proc_environ(pids[0]);
    let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(var("WATCHDOG_USEC").as_deref(), Some("3000000"));
    assert_eq!(var("WATCHDOG_PID"), Some(pids[0].to_string()), "its own pid");
    let victim = pids[0];
    assert!(kill(victim, libc::SIGSTOP));
    let stopped = std::time::Instant::now();
    // New connections only (requests that need no shared store: the
    // memory driver), a stopped process accepts none, the other worker
    // takes them from the shared listen queue.
    let load = Load::start(m.port, Spec { keepalive: 0, fresh: 0, slow: 4, slow_ms: 20 });
    let hung = event_about(&m, "worker.hung", victim);
    let found = stopped.elapsed();
    assert!(hung["silent_ms"].as_u64().unwrap() >= 3000, "{}", hung);
    let ready = m.wait_for("the replacement ready", T, |recs| {
        let at = recs.iter().position(|r| event_of(r) == "worker.hung")?;
        recs[at..].iter().find(|r| event_of(r) == "worker.ready").cloned()
    });
    let replaced = stopped.elapsed();
    let exit = event_about(&m, "worker.exit", victim);
    assert_eq!(exit["signal"], 9, "SIGABRT waits while it is stopped; SIGKILL ends it: {}", exit);
    load.wait_answered_by(&[worker_pid_of(&ready).unwrap()], T);
    let stats = load.finish();
    eprintln!(
        "SIGSTOP: hung after {:?}, replaced (replacement {} ready) after {:?}; {} requests, {} failed",
        found,
        worker_pid_of(&ready).unwrap(),
        replaced,
        stats.samples.len(),
        stats.failures.len()
    );
    assert!(stats.failures.is_empty(), "{:?}", &stats.failures[..stats.failures.len().min(10)]);
    let st = status(&sock(&m));
    assert_eq!((st["state"].as_str(), st["workers_hung"].as_u64()), (Some("running"), Some(1)), "{}", st);
    assert_eq!(m.worker_pids().len(), 2);
    assert!(!m.worker_pids().contains(&victim));
    assert_eq!(m.events("worker.spawn").len(), 3, "one replacement, no respawn of the hung one");
}

/// A worker whose event loop spins (it runs, but sends no heartbeat) is
/// found hung and ended with SIGABRT once its replacement is ready.
#[test]
fn a_spinning_event_loop_is_found_hung_and_ended_with_sigabrt() {
    let m = with_socket(Master::for_test())
        .merge(json!({"worker": [repo_root().join("tests/fault/spin.py").display().to_string(), worker_bin().display().to_string()],
            "watchdogTimeout": 3, "shutdownTimeout": 10}))
        .start();
    // Ask until one of the two workers answers /spin (the other may take it).
    let r = get(m.port, "/spin");
    let spinning = r.worker_pid().expect("X-Worker-Pid") as i32;
    let hung = event_about(&m, "worker.hung", spinning);
    let exit = event_about(&m, "worker.exit", spinning);
    // A stopped process would wait for SIGKILL: this one ran all along.
    assert_eq!(exit["signal"], 6, "SIGABRT ended it, long before SIGKILL: {}", exit);
    assert!(m.events("worker.kill").is_empty());
    let recs = m.log_records();
    let at = |e: &str, pid: Option<i32>| recs.iter().position(|r| event_of(r) == e && (pid.is_none() || worker_pid_of(r) == pid)).unwrap();
    let abrt = recs.iter().position(|r| r["msg"].as_str().is_some_and(|s| s.starts_with("sending SIGABRT")) && worker_pid_of(r) == Some(spinning)).unwrap();
    let replacement_ready = recs.iter().enumerate().skip(at("worker.hung", Some(spinning))).find(|(_, r)| event_of(r) == "worker.ready").unwrap().0;
    assert!(replacement_ready < abrt, "new before old: the replacement was ready before SIGABRT\n{}", hung);
    assert_eq!(status(&sock(&m))["workers_hung"], 1);
}

/// systemd's own sd_notify client (systemd-notify(1)) keeps a worker alive
/// with `WATCHDOG=1` on `$NOTIFY_SOCKET`; stopped, the worker is hung.
#[test]
fn systemd_notify_heartbeats_keep_a_worker_and_a_stopped_one_is_hung() {
    let m = with_socket(Master::for_test())
        .merge(json!({"worker": [repo_root().join("tests/fault/sd-watchdog.sh").display().to_string(), "10"],
            "notify": "systemd", "probe": false, "magic": 1, "sharedState": false, "workers": 1, "watchdogTimeout": 10, "shutdownTimeout": 1}))
        .spawn();
    // It serves nothing: ready is all there is to wait for.
    let pid = worker_pid_of(&m.wait_for_event("worker.ready", T)).unwrap();
    // A heartbeat every second against a 10 s timeout (each runs
    // systemd-notify: at a load average of 34, one every 1.5 s against a
    // 3 s timeout left gaps over 3 s). Twelve heartbeats, a second or more
    // apart: more than a timeout lived on heartbeats alone.
    m.wait_for("twelve heartbeats", T, |recs| {
        recs.iter().find(|r| r["msg"].as_str() == Some("sd-watchdog: heartbeat 12") && worker_pid_of(r) == Some(pid)).cloned()
    });
    assert!(m.events("worker.hung").is_empty(), "{:?}", m.events("worker.hung"));
    assert_eq!(status(&sock(&m))["workers"][0]["status"], "sd-watchdog: heartbeat every 1.000000 s");
    assert!(kill(pid, libc::SIGSTOP));
    event_about(&m, "worker.hung", pid);
    let exit = event_about(&m, "worker.exit", pid);
    assert_eq!(exit["signal"], 9, "{}", exit);
}

/// A hung worker in the middle of a restart aborts it: the master locks
/// out, the hung worker gets SIGABRT, the old workers serve on.
#[test]
fn a_hung_worker_in_the_middle_of_a_restart_aborts_it() {
    let mongo = Mongo::start();
    let mut m = with_socket(Master::for_test())
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "watchdogTimeout": 3, "shutdownTimeout": 2}))
        .start();
    let old = m.worker_pids();
    m.rewrite_config(|c| {
        c.insert("minReady".into(), json!(60));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, soak) = m.wait_event_after(mark, "worker.soak", T);
    let new = worker_pid_of(&soak).unwrap();
    assert!(kill(new, libc::SIGSTOP));
    let (_, abort) = m.wait_event_after(mark, "restart.abort", T);
    assert_eq!(abort["reason"], "worker hung", "{}", abort);
    assert!(abort["detail"].as_str().unwrap().starts_with(&format!("new worker {} (generation 2) sent no heartbeat", new)), "{}", abort);
    m.wait_event_after(mark, "master.lockout", T);
    event_about(&m, "worker.exit", new);
    let st = status(&sock(&m));
    assert_eq!((st["state"].as_str(), st["workers_hung"].as_u64()), (Some("lockout"), Some(1)));
    let serving: Vec<i32> = st["workers"].as_array().unwrap().iter().filter(|w| w["state"] == "ready").map(|w| w["pid"].as_i64().unwrap() as i32).collect();
    assert!(old.iter().all(|p| serving.contains(p)), "old {:?}, serving {:?}", old, serving);
    assert_eq!(m.healthz().status, 200);
}

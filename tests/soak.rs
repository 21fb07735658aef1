//! A rollout that stays safe after `READY=1`: a new worker soaks for
//! `minReady` before an old one goes, and one that exits or reports an
//! error within it aborts the restart as if it had died before `READY=1`
//! (lockout, the old workers serving, no failed request); `restart --wait`
//! answers only once every new worker has passed; `maxSurge` lets new
//! workers start while earlier ones soak; a restart is refused while the
//! serving generation is not ready. Real master, real workers, real load.
#![deny(unsafe_code)]

mod common;
mod load;

use common::*;
use load::{Load, Spec};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const SPEC: Spec = Spec { keepalive: 3, fresh: 2, slow: 2, slow_ms: 300 };

fn report(what: &str, s: &load::Stats) {
    eprintln!("{}: {} requests, {} failed, {} keep-alive retries", what, s.samples.len(), s.failures.len(), s.retries);
    for f in s.failures.iter().take(20) {
        eprintln!("  failed: {}", f);
    }
}

/// A master on MongoDB (zero-downtime restarts need it) with a control
/// socket, serving; `extra` merged into its config.
fn master(mongo: &Mongo, extra: Value) -> Master {
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock");
    b.merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "controlSocket": sock.display().to_string(),
        "shutdownTimeout": 10}))
        .merge(extra)
        .start()
}

fn sock(m: &Master) -> std::path::PathBuf {
    m.dir.join("ctl.sock")
}

/// Pids of the workers in STATUS with generation `g` and state `state`.
fn workers(m: &Master, g: u64, state: &str) -> Vec<i64> {
    let st = status(&sock(m));
    st["workers"].as_array().unwrap().iter().filter(|w| w["generation"] == g && w["state"] == state).map(|w| w["pid"].as_i64().unwrap()).collect()
}

/// The issue as reported: a new worker says READY=1 and exits a second
/// later. With the default `minReady` the restart is aborted, the old
/// workers keep serving, their clients see no failure. (Before the soak:
/// "zero-downtime restart complete" in 0.3 s, the old generation gone and
/// the new one crash-looping.)
#[test]
fn a_new_worker_that_exits_after_ready_aborts_the_restart() {
    let _g = exclusive();
    let mongo = Mongo::start();
    let mut m = master(&mongo, json!({"minReady": null}));
    let old = workers(&m, 1, "ready");
    assert_eq!(old.len(), 2);
    let load = Load::start(m.port, SPEC);
    load.wait_answered_by(&old.iter().map(|&p| p as i32).collect::<Vec<_>>(), T);
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("ready-then-exit.sh"));
    });
    let r = ctl(&sock(&m), &["restart", "--wait"]);
    assert_eq!(r.code, 3, "{:?}", r);
    assert!(r.err.contains("restart failed: aborted: new worker exited: new worker"), "{:?}", r);
    assert!(r.err.contains("after READY=1"), "{:?}", r);
    let abort = m.wait_for_event("restart.abort", T);
    assert_eq!(abort["reason"], "new worker exited", "{}", abort);
    assert!(abort["stderr"].as_str().unwrap().contains("ready-then-exit: exiting 1"), "{}", abort);
    m.wait_for_event("master.lockout", T);
    assert!(m.events("restart.complete").is_empty());
    assert!(!m.events("worker.soak").is_empty(), "the new worker was soaking when it died");
    // Clients go on being served by the old workers.
    load.wait_ok_after(load.ok_count(), 20, T, "after the lockout");
    let stats = load.finish();
    report("ready-then-exit under load", &stats);
    assert!(stats.failures.is_empty(), "{} failed requests", stats.failures.len());
    assert!(stats.samples.len() > 20, "too little load: {}", stats.samples.len());
    let st = status(&sock(&m));
    assert_eq!((st["state"].as_str(), st["lockout"].as_bool()), (Some("lockout"), Some(true)), "{}", st);
    assert_eq!(workers(&m, 1, "ready"), old, "the old workers, untouched");
    assert!(m.healthz().status == 200);
}

/// An error reported after `READY=1` but inside the soak (sd_notify
/// `ERRNO=`) aborts the restart; so does `STOPPING=1` (same path).
#[test]
fn an_error_after_ready_inside_the_soak_aborts_the_restart() {
    let mongo = Mongo::start();
    let mut m = master(&mongo, json!({"minReady": 10}));
    let magic = status(&sock(&m))["magic"].clone();
    m.rewrite_config(|c| {
        c.insert("worker".into(), json!([repo_root().join("tests/fault/sd-notify.py").display().to_string(), "ready-errno"]));
        c.insert("notify".into(), json!("systemd"));
        c.insert("probe".into(), json!(false));
        c.insert("sharedState".into(), json!(true));
        c.insert("magic".into(), magic);
    });
    let r = ctl(&sock(&m), &["restart", "--wait"]);
    assert_eq!(r.code, 3, "{:?}", r);
    assert!(r.err.contains("aborted: new worker reported an error"), "{:?}", r);
    assert!(r.err.contains("ERRNO=5"), "{:?}", r);
    assert_eq!(status(&sock(&m))["state"], "lockout");
    assert_eq!(workers(&m, 1, "ready").len(), 2);
}

/// `restart --wait` says complete only once every new worker passed its
/// soak; STATUS shows the soaking ones; an old worker is asked to exit only
/// after a new one passed.
#[test]
fn restart_wait_answers_once_every_new_worker_passed_its_soak() {
    let mongo = Mongo::start();
    let m = master(&mongo, json!({"minReady": 2}));
    let s = sock(&m);
    let waiter = std::thread::spawn(move || ctl(&s, &["restart", "--wait"]));
    let ok = wait_until(T, || !workers(&m, 2, "soaking").is_empty());
    assert!(ok, "no worker soaking\n{}", m.diagnostics());
    let r = waiter.join().unwrap();
    assert_eq!((r.code, r.out.as_str()), (0, "zero-downtime restart complete\n"), "{:?}", r);
    let recs = m.log_records();
    let at = |pred: &dyn Fn(&Value) -> bool| recs.iter().position(pred).unwrap_or(usize::MAX);
    let passed: Vec<usize> = recs.iter().enumerate().filter(|(_, r)| event_of(r) == "worker.passed").map(|(i, _)| i).collect();
    assert_eq!(passed.len(), 2, "both new workers passed");
    let complete = at(&|r| event_of(r) == "restart.complete");
    assert!(passed.iter().all(|&p| p < complete));
    let first_term = at(&|r| r["msg"].as_str().is_some_and(|s| s.starts_with("asking worker")) && r["generation"] == 1);
    assert!(passed[0] < first_term, "no old worker asked to exit before a new one passed");
    let done = m.events("restart.complete");
    assert!(done[0]["duration_ms"].as_u64().unwrap() >= 2000, "{}", done[0]);
}

/// `maxSurge` bounds the new workers starting at once, not the soaking
/// ones: with 4 workers, maxSurge 2 and a 4 s soak, new workers start while
/// the first ones soak, so the rollout does not take 4 soaks.
#[test]
fn max_surge_starts_new_workers_while_earlier_ones_soak() {
    let mongo = Mongo::start();
    let m = master(&mongo, json!({"workers": 4, "minReady": 4, "maxSurge": 2}));
    let r = ctl(&sock(&m), &["restart", "--wait"]);
    assert_eq!(r.code, 0, "{:?}", r);
    // Replay the log: new workers starting (spawned, not ready) at once, and
    // how many had started before the first passed.
    let (mut starting, mut most, mut before_first_pass, mut passed) = (0i32, 0, 0, 0);
    for r in m.log_records().iter().filter(|r| r["generation"] == 2) {
        match event_of(r) {
            "worker.spawn" => {
                starting += 1;
                most = most.max(starting);
                if passed == 0 {
                    before_first_pass += 1;
                }
            }
            "worker.ready" => starting -= 1,
            "worker.passed" => passed += 1,
            _ => {}
        }
    }
    eprintln!("maxSurge 2: at most {} starting at once, {} started before the first passed", most, before_first_pass);
    assert!(most <= 2, "{} new workers starting at once", most);
    assert!(before_first_pass >= 3, "only {} new workers started within the first soak", before_first_pass);
    assert_eq!(passed, 4);
    // Each old worker went only after a new one passed (one per pass).
    let recs = m.log_records();
    let (mut passes, mut terms) = (0, 0);
    for r in &recs {
        if event_of(r) == "worker.passed" {
            passes += 1;
        }
        if r["msg"].as_str().is_some_and(|s| s.starts_with("asking worker")) && r["generation"] == 1 {
            terms += 1;
            assert!(terms <= passes, "old worker {} asked to exit after only {} passes", terms, passes);
        }
    }
    assert_eq!(terms, 4);
}

/// While the serving generation is not ready, a restart is refused with
/// its own reason (STATUS says `not ready`, not `running`), through the
/// control socket and through `zdrestart --check` alike.
#[test]
fn a_restart_is_refused_while_the_generation_is_not_ready() {
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock");
    let m = b
        .merge(json!({"worker": fault_worker_json("never-ready.sh"), "readyTimeout": 120,
            "controlSocket": sock.display().to_string(), "driver": "mongodb"}))
        .spawn();
    assert!(wait_until(T, || sock.exists() && m.events("worker.spawn").len() == 2), "{}", m.diagnostics());
    let st = status(&sock);
    assert_eq!(st["state"], "not ready", "{}", st);
    // Exit status 4: not possible right now, retry later (a fleet's gate
    // retries it; a respawned worker is ready in a moment).
    let r = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(r.code, 4, "{:?}", r);
    assert!(r.err.starts_with("zdrestartctl: restart refused: not ready: not every worker of the current generation is ready"), "{:?}", r);
    let refused = m.wait_for_event("restart.refused", T);
    assert_eq!(refused["reason"], "not ready");
    let (code, out, _) = run_cmd(std::process::Command::new(master_bin()).args(["--check", "-c"]).arg(&m.config_path), T);
    assert_eq!(code.code(), Some(1), "{}", out);
    assert!(out.contains("verdict: a zero-downtime restart would be refused: not ready: not every worker"), "{}", out);
    assert!(out.contains("Wait until `zdrestartctl status` shows every worker ready"), "{}", out);
    let r = ctl(&sock, &["status"]);
    assert!(r.out.starts_with("not ready: ") && r.out.contains("Not ready:"), "{:?}", r);
    assert!(m.events("restart.start").is_empty());
}

fn sigkill(pid: i64) {
    let r = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(r.success(), "kill -KILL {}", pid);
}

/// Workers in STATUS: (pid, generation, state).
fn fleet(m: &Master) -> Vec<(i64, u64, String)> {
    let st = status(&sock(m));
    st["workers"].as_array().unwrap().iter().map(|w| (w["pid"].as_i64().unwrap(), w["generation"].as_u64().unwrap(), w["state"].as_str().unwrap().to_string())).collect()
}

/// The chaos soak's sequence: during a restart an old worker dies (not
/// respawned: the new generation replaces it); a new worker passes its soak,
/// so the last old worker is told to exit; then that new worker is
/// SIGKILLed. The restart is aborted and locks out, but with no old worker
/// to fall back on the other new worker is left serving, not stopped with
/// it; and `zdrestartctl upgrade --wait` afterwards brings the master back
/// to `workers` ready workers (before: the abort stopped every worker, the
/// master had none, and after an upgrade it stayed "not ready" with 0).
#[test]
fn a_new_worker_killed_after_the_last_old_one_went_leaves_the_new_generation_serving() {
    let mongo = Mongo::start();
    let b = Master::for_test();
    let exe = b.dir().join("bin/zdrestart");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    // A copy: an upgrade re-execs the file on disk.
    std::fs::copy(master_bin(), &exe).unwrap();
    let ctl_sock = b.dir().join("ctl.sock");
    let mut m = b
        .bin(&exe)
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "controlSocket": ctl_sock.display().to_string(),
            "shutdownTimeout": 10, "minReady": 2, "maxSurge": 1, "worker": [worker_bin().display().to_string()]}))
        .start();
    let old = workers(&m, 1, "ready");
    assert_eq!(old.len(), 2);
    let mut tickets = m.ticket_new_workers();
    let r = ctl(&sock(&m), &["restart"]);
    assert_eq!(r.code, 0, "{:?}", r);
    assert!(wait_until(T, || workers(&m, 2, "starting").len() == 1), "no new worker\n{}", m.diagnostics());
    // 1. An old worker dies; it is not respawned.
    sigkill(old[0]);
    assert!(wait_until(T, || fleet(&m).iter().all(|w| w.0 != old[0])), "{}", m.diagnostics());
    // 2. The first new worker passes its soak; the last old one goes.
    tickets.issue(1);
    let passed = m.wait_for_event("worker.passed", T);
    let first = passed["worker_pid"].as_i64().unwrap();
    assert!(wait_until(T, || fleet(&m).iter().all(|w| w.0 != old[1] || w.2 == "stopping")), "{}", m.diagnostics());
    let second: Vec<i64> = workers(&m, 2, "starting");
    assert_eq!(second.len(), 1, "{:?}", fleet(&m));
    // 3. That new worker is SIGKILLed: abort, lockout.
    sigkill(first);
    let abort = m.wait_for_event("restart.abort", T);
    assert_eq!(abort["reason"], "new worker exited", "{}", abort);
    m.wait_for_event("master.lockout", T);
    // The other new worker is not stopped: it gets ready and serves.
    tickets.issue(1);
    assert!(
        wait_until(T, || m.exited().is_some() || workers(&m, 2, "ready") == second),
        "the other new worker of generation 2 should serve on in the lockout: {:?}\n{}",
        m.exited(),
        m.diagnostics()
    );
    assert!(m.exited().is_none(), "the master exited: no worker left\n{}", m.diagnostics());
    assert!(wait_until(T, || fleet(&m).len() == 1), "{:?}", fleet(&m));
    let st = status(&sock(&m));
    assert_eq!((st["state"].as_str(), st["lockout"].as_bool()), (Some("lockout"), Some(true)), "{}", st);
    assert_eq!(m.healthz().status, 200);
    // 4. The upgrade ends the lockout and rolls over to two ready workers.
    tickets.issue(10);
    let r = ctl(&sock(&m), &["upgrade", "--wait"]);
    assert_eq!(r.code, 0, "{:?}\n{}", r, m.diagnostics());
    let ok = wait_until(T, || {
        let st = status(&sock(&m));
        st["state"] == "running" && fleet(&m).iter().filter(|w| w.2 == "ready").count() == 2 && fleet(&m).len() == 2
    });
    assert!(ok, "not back to 2 ready workers: {}\n{}", status(&sock(&m)), m.diagnostics());
    assert_eq!(status(&sock(&m))["lockout"], false);
    assert_eq!(m.healthz().status, 200);
}

//! Canary restarts (`zdrestartctl restart --canary`, `RESTART CANARY`): one
//! new worker starts beside the whole old fleet and the restart stops there,
//! both generations serving; `promote` carries the rollout on, `rollback`
//! stops the canary and leaves the fleet as it was, with no lockout. A
//! canary that dies is a failed restart. Under load, no request fails.
#![deny(unsafe_code)]

mod common;
mod load;

use common::*;
use load::{Load, Spec};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const SPEC: Spec = Spec { keepalive: 3, fresh: 3, slow: 2, slow_ms: 300 };

fn sock(m: &Master) -> PathBuf {
    m.dir.join("ctl.sock")
}

fn master(mongo: &Mongo, extra: Value) -> Master {
    let b = Master::for_test();
    let s = b.dir().join("ctl.sock");
    b.merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "controlSocket": s.display().to_string(),
        "threads": 8, "shutdownTimeout": 10, "minReady": 1}))
        .merge(extra)
        .start()
}

fn pids(st: &Value, pred: impl Fn(&Value) -> bool) -> Vec<i64> {
    st["workers"].as_array().unwrap().iter().filter(|w| pred(w)).map(|w| w["pid"].as_i64().unwrap()).collect()
}

fn report(what: &str, s: &load::Stats) {
    eprintln!("{}: {} requests, {} failed, {} keep-alive retries", what, s.samples.len(), s.failures.len(), s.retries);
    for f in s.failures.iter().take(20) {
        eprintln!("  failed: {}", f);
    }
}

/// Start a canary and wait for it to stand: (the old workers' pids, the
/// canary's pid). Checks what STATUS, `zdrestartctl status` and the
/// clients see meanwhile.
fn canary_stands(m: &Master) -> (Vec<i64>, i64) {
    let s = sock(m);
    let old = pids(&status(&s), |w| w["generation"] == 1);
    let r = ctl(&s, &["restart", "--canary", "--wait"]);
    assert_eq!((r.code, r.out.as_str()), (0, "canary stands beside the old fleet: `zdrestartctl promote` or `zdrestartctl rollback`\n"), "{:?}", r);
    let st = status(&s);
    assert_eq!((st["state"].as_str(), st["generation"].as_u64()), (Some("canary"), Some(1)), "{}", st);
    let canary = pids(&st, |w| w["canary"] == true);
    assert_eq!(canary.len(), 1, "{}", st);
    assert_eq!(pids(&st, |w| w["generation"] == 1 && w["state"] == "ready"), old, "the whole old fleet serves on");
    let shown = ctl(&s, &["status"]);
    assert!(shown.out.contains(&format!("    0 {:>8}    2  ready (canary)", canary[0])), "{:?}", shown);
    // Both generations serve: new connections reach the canary too.
    let ok = wait_until(T, || get(m.port, "/healthz").worker_pid() == Some(canary[0] as i32));
    assert!(ok, "the canary never answered");
    // Another restart is in flight meanwhile.
    let r = ctl(&s, &["restart"]);
    assert!(r.err.contains("restart refused: restart in flight"), "{:?}", r);
    (old, canary[0])
}

#[test]
fn a_promoted_canary_rolls_every_worker_over_under_load() {
    let _g = exclusive();
    let mongo = Mongo::start();
    let m = master(&mongo, json!({}));
    let s = sock(&m);
    let r = ctl(&s, &["promote"]);
    assert_eq!(r.code, 1, "{:?}", r);
    assert!(r.err.starts_with("zdrestartctl: promote refused: no canary: no canary restart in progress"), "{:?}", r);
    let load = Load::start(m.port, SPEC);
    load.wait_ok_after(0, 20, T, "before the canary");
    let (old, canary) = canary_stands(&m);
    // The load's own clients reach the canary before it is promoted.
    load.wait_answered_by(&[canary as i32], T);
    let r = ctl(&s, &["promote", "--wait"]);
    assert_eq!((r.code, r.out.as_str()), (0, "zero-downtime restart complete\n"), "{:?}", r);
    let new: Vec<i32> = pids(&status(&s), |_| true).iter().map(|&p| p as i32).collect();
    load.wait_answered_by(&new, T);
    let stats = load.finish();
    report("canary promoted under load", &stats);
    assert!(stats.failures.is_empty(), "{} failed requests", stats.failures.len());
    assert!(stats.pids.contains(&canary.to_string()), "the canary served the clients");
    let bad = load::verify_acked(m.port, &stats.acked);
    assert!(bad.is_empty(), "{:?}", &bad[..bad.len().min(10)]);
    let st = status(&s);
    assert_eq!((st["state"].as_str(), st["generation"].as_u64()), (Some("running"), Some(2)), "{}", st);
    let now = pids(&st, |_| true);
    assert_eq!(now.len(), 2);
    assert!(now.contains(&canary) && !now.iter().any(|p| old.contains(p)), "{}", st);
    assert!(pids(&st, |w| w["canary"] == true).is_empty());
    for e in ["canary.start", "canary.ready", "canary.promote", "restart.complete"] {
        assert_eq!(m.events(e).len(), 1, "{}", e);
    }
}

#[test]
fn a_rolled_back_canary_leaves_the_fleet_as_it_was_under_load() {
    let _g = exclusive();
    let mongo = Mongo::start();
    let m = master(&mongo, json!({}));
    let s = sock(&m);
    let load = Load::start(m.port, SPEC);
    load.wait_ok_after(0, 20, T, "before the canary");
    let (old, canary) = canary_stands(&m);
    let r = ctl(&s, &["rollback"]);
    assert_eq!((r.code, r.out.as_str()), (0, "canary rolled back: the old generation serves on\n"), "{:?}", r);
    let exit = m.wait_for("the canary's exit", T, |recs| {
        recs.iter().find(|r| event_of(r) == "worker.exit" && worker_pid_of(r) == Some(canary as i32)).cloned()
    });
    assert_eq!(exit["code"], 0, "a graceful exit: {}", exit);
    load.wait_ok_after(load.ok_count(), 20, T, "after the rollback");
    let stats = load.finish();
    report("canary rolled back under load", &stats);
    assert!(stats.failures.is_empty(), "{} failed requests", stats.failures.len());
    let st = status(&s);
    assert_eq!((st["state"].as_str(), st["generation"].as_u64(), st["lockout"].as_bool()), (Some("running"), Some(1), Some(false)), "{}", st);
    assert_eq!(pids(&st, |_| true), old, "exactly the old fleet");
    assert_eq!(st["last_restart"]["outcome"], "rolled back");
    let rb = m.events("canary.rollback");
    assert_eq!(rb[0]["by"], "control socket");
    // Nothing failed: no lockout, the next restart goes through.
    let r = ctl(&s, &["restart", "--wait"]);
    assert_eq!(r.code, 0, "{:?}", r);
    assert_eq!(status(&s)["generation"], 3, "the rolled-back canary's generation is not given again");
}

#[test]
fn a_canary_that_dies_is_a_failed_restart() {
    let mongo = Mongo::start();
    let mut m = master(&mongo, json!({"minReady": 5}));
    let s = sock(&m);
    let old = pids(&status(&s), |_| true);
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("ready-then-exit.sh"));
    });
    let r = ctl(&s, &["restart", "--canary", "--wait"]);
    assert_eq!(r.code, 3, "{:?}", r);
    assert!(r.err.contains("restart failed: aborted: new worker exited"), "{:?}", r);
    let st = status(&s);
    assert_eq!((st["state"].as_str(), st["lockout"].as_bool()), (Some("lockout"), Some(true)), "{}", st);
    assert_eq!(pids(&st, |w| w["state"] == "ready"), old, "the old fleet is whole");
    let r = ctl(&s, &["rollback"]);
    assert!(r.err.contains("rollback refused: no canary"), "{:?}", r);
}

#[test]
fn a_canary_timeout_rolls_the_canary_back() {
    let mongo = Mongo::start();
    let m = master(&mongo, json!({"canaryTimeout": 1, "minReady": 0}));
    let s = sock(&m);
    let old = pids(&status(&s), |_| true);
    let r = ctl(&s, &["restart", "--canary", "--wait"]);
    assert_eq!(r.code, 0, "{:?}", r);
    let rb = m.wait_for_event("canary.rollback", T);
    assert_eq!(rb["by"], "canaryTimeout", "{}", rb);
    assert!(wait_until(T, || pids(&status(&s), |_| true) == old), "{}", status(&s));
    assert_eq!(status(&s)["state"], "running");
}

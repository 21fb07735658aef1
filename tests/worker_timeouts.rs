//! Each worker lives by the timeouts of the config it was spawned with
//! (ARCHITECTURE.md, "The state machine"): a restart that changes
//! `shutdownTimeout` gives the old generation's workers the old one and the
//! new generation's workers the new one, whether they are stopped by the
//! rollout, by its abort or by a stop of the master. Real master, fault
//! workers that ignore SIGTERM (tests/fault/), and the delay between the
//! master's SIGTERM record and its `worker.kill` record of each worker.
//!
//! The timeouts are far apart (1 s and 10 s): a worker killed by the other
//! config's timeout is at least 10 s late or 9 s early, which no load on the
//! machine can produce or hide (a SIGKILL never comes before its deadline).
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
/// The old config's shutdownTimeout, and the new one's.
const OLD_MS: i64 = 1_000;
const NEW_MS: i64 = 10_000;
/// The SIGTERM record is written a moment after the instant its deadline is
/// counted from (the loop's clock reading of that wake-up): a kill may
/// follow that record by a little less than the timeout, by as long as the
/// master was kept off the CPU in between on a loaded machine. The ranges
/// stay 9 s apart.
const SLACK_MS: i64 = 500;

/// Killed by the old config's timeout (and not the new one's, which would
/// make it at least 9 s later).
fn old_timeout(ms: i64) -> bool {
    (OLD_MS - SLACK_MS..NEW_MS - SLACK_MS).contains(&ms)
}

/// Killed by the new config's timeout (and not the old one's).
fn new_timeout(ms: i64) -> bool {
    ms >= NEW_MS - SLACK_MS
}

/// A master whose workers ignore SIGTERM, with `shutdownTimeout` 1 s and no
/// probe (a restart needs a shared state, declared here: these workers store
/// nothing).
fn start() -> Master {
    let m = Master::for_test()
        .merge(json!({
            "probe": false,
            "magic": 1,
            "sharedState": true,
            "worker": fault_worker_json("ignore-term.sh"),
            "shutdownTimeout": OLD_MS / 1000,
        }))
        .spawn();
    m.wait_events_after(0, "worker.ready", 2, T);
    m
}

/// SIGUSR2 to a config whose workers are never ready (and ignore SIGTERM),
/// with `readyTimeout` `ready_s` and the new `shutdownTimeout`: the mark of
/// the log before.
fn restart_to_never_ready(m: &mut Master, ready_s: u64) -> usize {
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("never-ready-ignore-term.sh"));
        c.insert("readyTimeout".into(), json!(ready_s));
        c.insert("shutdownTimeout".into(), json!(NEW_MS / 1000));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    mark
}

/// Pids of the `worker.spawn` records of `generation`.
fn spawned(recs: &[Value], generation: u64) -> Vec<i32> {
    recs.iter()
        .filter(|r| event_of(r) == "worker.spawn" && r["generation"].as_u64() == Some(generation))
        .filter_map(worker_pid_of)
        .collect()
}

/// Milliseconds from the master's SIGTERM to worker `pid` to its SIGKILL
/// (`worker.kill`), once both are logged.
fn term_to_kill_ms(m: &Master, pid: i32) -> i64 {
    let what = format!("SIGTERM and worker.kill records of worker {}", pid);
    m.wait_for(&what, T, |recs| {
        let of = |r: &&Value| worker_pid_of(r) == Some(pid);
        let term = recs.iter().filter(of).find(|r| r["msg"].as_str().unwrap_or("").starts_with("asking worker"))?;
        let kill = recs.iter().filter(of).find(|r| event_of(r) == "worker.kill")?;
        Some(time_ms_of(kill) - time_ms_of(term))
    })
}

/// The rollout stops the old workers (they ignore SIGTERM): each is killed
/// after the old config's shutdownTimeout, not the new one's.
#[test]
fn old_workers_of_a_rollout_are_killed_after_their_own_shutdown_timeout() {
    let mut m = start();
    let old = spawned(&m.log_records(), 1);
    assert_eq!(old.len(), 2, "{}", m.diagnostics());
    m.rewrite_config(|c| {
        c.insert("shutdownTimeout".into(), json!(NEW_MS / 1000));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    m.wait_event_after(mark, "restart.complete", T);
    for pid in old {
        let ms = term_to_kill_ms(&m, pid);
        assert!(
            old_timeout(ms),
            "old worker {} was killed {} ms after its SIGTERM: its own shutdownTimeout is {} ms, the new config's {} ms\n{}",
            pid,
            ms,
            OLD_MS,
            NEW_MS,
            m.diagnostics()
        );
    }
}

/// A new worker that is not ready in time aborts the rollout and is stopped
/// (it ignores SIGTERM): killed after the new config's shutdownTimeout, the
/// one it was spawned with, not the old one.
#[test]
fn a_new_worker_stopped_by_an_abort_is_killed_after_the_new_shutdown_timeout() {
    let mut m = start();
    let mark = restart_to_never_ready(&mut m, 1);
    let (_, abort) = m.wait_event_after(mark, "restart.abort", T);
    assert_eq!(abort["reason"], "new worker not ready", "{}", abort);
    let new = spawned(&m.log_records(), 2);
    assert_eq!(new.len(), 1, "{}", m.diagnostics());
    let ms = term_to_kill_ms(&m, new[0]);
    assert!(
        new_timeout(ms),
        "the failed new worker {} was killed {} ms after its SIGTERM: it was spawned with shutdownTimeout {} ms (the old config's is {} ms)\n{}",
        new[0],
        ms,
        NEW_MS,
        OLD_MS,
        m.diagnostics()
    );
}

/// SIGTERM to the master in the middle of a rollout: every worker gets the
/// shutdownTimeout it was spawned with, the old ones the old config's, the
/// new one (held before it is ready) the new config's.
#[test]
fn a_stop_during_a_rollout_gives_each_worker_its_own_shutdown_timeout() {
    let mut m = start();
    let old = spawned(&m.log_records(), 1);
    let mark = restart_to_never_ready(&mut m, 3600);
    m.wait_event_after(mark, "restart.start", T);
    let new = m.wait_for("the new worker's worker.spawn", T, |recs| {
        let v = spawned(recs, 2);
        (!v.is_empty()).then_some(v)
    });
    // Once its SIGTERM is ignored (it says so on stderr, after its trap).
    m.wait_for("the new worker to ignore SIGTERM", T, |recs| {
        recs.iter()
            .find(|r| worker_pid_of(r) == Some(new[0]) && r["msg"].as_str().unwrap_or("").contains("ignoring SIGTERM"))
            .map(|_| ())
    });
    m.signal(libc::SIGTERM);
    let st = m.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{}", m.diagnostics());
    for pid in old {
        let ms = term_to_kill_ms(&m, pid);
        assert!(old_timeout(ms), "old worker {} killed {} ms after its SIGTERM\n{}", pid, ms, m.diagnostics());
    }
    let ms = term_to_kill_ms(&m, new[0]);
    assert!(new_timeout(ms), "new worker {} killed {} ms after its SIGTERM\n{}", new[0], ms, m.diagnostics());
}

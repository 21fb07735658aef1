//! Zero-downtime restarts (ARCHITECTURE.md, the restart; zdrestart(8)): every
//! refusal reason, every abort cause and the lockout after it, the rollout
//! itself, and SIGTERM in the middle of one. Real master, real workers, a real
//! MongoDB-compatible server, and the fault-injection workers of tests/fault/
//! (a restart is held in flight by the gates of tests/common/fault.rs, never
//! by a timeout raced against the test).
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// A master on MongoDB with 2 workers, serving.
fn mongo_master(mongo: &Mongo, extra: Value) -> Master {
    Master::for_test()
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri(), "timeout": 2}, "shutdownTimeout": 3}))
        .merge(extra)
        .start()
}

fn reason_of(rec: &Value) -> &str {
    rec.get("reason").and_then(Value::as_str).unwrap_or("")
}

/// Send SIGUSR2 and return the `restart.refused` record that follows.
fn refused(m: &Master) -> Value {
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, rec) = m.wait_event_after(mark, "restart.refused", T);
    assert_eq!(rec["level"], 40, "a refusal is one warn record: {}", rec);
    rec
}

/// Wait for the master's "zero-downtime restart requested" record after
/// `mark`: from then on the restart is in flight (the state machine enters
/// its probe in the same step that writes the record).
fn wait_restart_requested(m: &Master, mark: usize) {
    m.wait_for("the restart to be requested", T, |recs| {
        recs[mark..]
            .iter()
            .find(|r| r["component"] == "master" && r["msg"].as_str().unwrap_or("").starts_with("zero-downtime restart requested"))
            .map(|_| ())
    });
}

fn generation_of(m: &Master) -> u64 {
    get(m.port, "/healthz").json()["generation"].as_u64().unwrap()
}

#[test]
fn every_refusal_reason_changes_nothing() {
    let mongo = Mongo::start();
    let mut m = mongo_master(&mongo, json!({}));
    let before = m.worker_pids();
    assert_eq!(before.len(), 2);

    // bad config: not JSON. The old workers keep serving.
    m.write_config_raw("{ \"workers\": 2, ");
    let r = refused(&m);
    assert_eq!(reason_of(&r), "bad config");
    assert!(r["detail"].as_str().unwrap().contains("zdrestart.json"), "{}", r);
    assert_eq!(m.healthz().status, 200);
    // bad config: invalid value.
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(0));
    });
    let r = refused(&m);
    assert_eq!(reason_of(&r), "bad config");
    assert!(r["detail"].as_str().unwrap().contains("\"workers\""), "{}", r);

    // listen address changed.
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(2));
        c.insert("port".into(), json!(free_port()));
    });
    assert_eq!(reason_of(&refused(&m)), "listen address changed");
    let port = m.port;
    m.rewrite_config(|c| {
        c.insert("port".into(), json!(port));
    });

    // no workers.
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(1));
    });
    assert_eq!(reason_of(&refused(&m)), "no workers");

    // bad driver.
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(2));
        c.insert("driver".into(), json!("memory"));
    });
    assert_eq!(reason_of(&refused(&m)), "bad driver");

    // incompatibility: the new code reports another magic number.
    m.rewrite_config(|c| {
        c.insert("driver".into(), json!("mongodb"));
        c.insert("worker".into(), fault_worker_json("bad-magic.sh"));
    });
    let r = refused(&m);
    assert_eq!(reason_of(&r), "incompatibility");
    assert!(r["detail"].as_str().unwrap().contains("999999"), "{}", r);

    // probe failed: the probe reports an error.
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("probe-error.sh"));
    });
    assert_eq!(reason_of(&refused(&m)), "probe failed");

    // probe failed: the probe hangs past probeTimeout.
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("probe-hang.sh"));
        c.insert("probeTimeout".into(), json!(2));
    });
    let r = refused(&m);
    assert_eq!(reason_of(&r), "probe failed");
    assert!(r["detail"].as_str().unwrap().contains("probeTimeout"), "{}", r);

    // restart in flight: while the probe is held (no timeout to race: it
    // waits for the test), a second SIGUSR2 is refused at once; then the
    // probe fails with the verdict the test gives it.
    let gate = m.hold_probes();
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    wait_restart_requested(&m, mark);
    m.signal(libc::SIGUSR2);
    let (_, r) = m.wait_event_after(mark, "restart.refused", T);
    assert_eq!(reason_of(&r), "restart in flight", "{}", r);
    gate.release("held probe failed on purpose");
    let recs = m.wait_events_after(mark, "restart.refused", 2, T);
    assert_eq!(reason_of(&recs[1]), "probe failed", "{}", recs[1]);
    assert!(recs[1]["detail"].as_str().unwrap().contains("held probe failed on purpose"), "{}", recs[1]);

    // Nothing changed through all of it: same workers, same generation,
    // no restart started, no worker spawned.
    assert_eq!(m.worker_pids(), before);
    assert_eq!(generation_of(&m), 1);
    assert!(m.events("restart.start").is_empty());
    assert_eq!(m.events("worker.spawn").len(), 2);
    // No probe left behind.
    assert!(wait_until(Duration::from_secs(5), || m.children().len() == 2), "{:?}", m.children());
}

#[test]
fn restart_rolls_over_to_new_config_with_three_workers() {
    let mongo = Mongo::start();
    let mut m = mongo_master(&mongo, json!({}));
    let old = m.worker_pids();
    put_json(m.port, "/objects/note/before", &json!({"v": 1}));
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(3));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, done) = m.wait_event_after(mark, "restart.complete", T);
    assert_eq!(done["msg"], "Zero-downtime restart complete");
    assert_eq!(done["level"], 30);
    assert_eq!(done["generation"], 2);
    assert!(done["duration_ms"].as_u64().is_some());
    let new = m.wait_worker_count(3, T);
    assert!(new.iter().all(|p| !old.contains(p)), "old {:?} new {:?}", old, new);
    assert_eq!(generation_of(&m), 2);
    // The old data is there for the new generation (shared database).
    assert_eq!(get(m.port, "/objects/note/before").json()["v"], 1);

    // Surge order: every old worker was asked to exit only after a new one
    // was ready, and never more old ones than ready new ones.
    let recs = m.log_records();
    let mut ready_new = 0;
    let mut stopped_old = 0;
    for r in &recs[mark..] {
        if event_of(r) == "worker.ready" && r["generation"] == 2 {
            ready_new += 1;
        }
        if r["msg"].as_str().unwrap_or("").starts_with("asking worker") {
            stopped_old += 1;
            assert!(stopped_old <= ready_new, "an old worker was stopped before a new one was ready");
        }
    }
    assert_eq!((ready_new, stopped_old), (3, 2));
    // Exits of old workers are expected: info, not error.
    for r in m.events("worker.exit") {
        assert_eq!(r["level"], 30, "{}", r);
    }
}

#[test]
fn old_worker_ignoring_sigterm_is_killed_after_shutdown_timeout() {
    let mongo = Mongo::start();
    // Generation 1 ignores SIGTERM (and serves nothing: wait for READY only).
    let mut m = Master::for_test()
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "shutdownTimeout": 3,
                      "worker": fault_worker_json("ignore-term.sh")}))
        .spawn();
    m.wait_events_after(0, "worker.ready", 2, T);
    let old = m.worker_pids();
    m.rewrite_config(|c| {
        c.remove("worker");
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let kills = m.wait_events_after(mark, "worker.kill", 2, T);
    m.wait_event_after(mark, "restart.complete", T);
    let recs = m.log_records();
    for p in &old {
        let kill = kills.iter().find(|r| worker_pid_of(r) == Some(*p)).unwrap_or_else(|| panic!("no worker.kill of {}: {:?}", p, kills));
        // SIGKILL is not sent before shutdownTimeout (3 s) has passed since
        // SIGTERM, by the master's own record times. The allowance (0.5 s)
        // covers the gap between the master's tick and its record's time
        // stamp; a kill at the first tick would show ~0 ms.
        let asked = recs[mark..]
            .iter()
            .find(|r| worker_pid_of(r) == Some(*p) && r["msg"].as_str().unwrap_or("").starts_with("asking worker"))
            .unwrap_or_else(|| panic!("no SIGTERM record for {}", p));
        let waited = time_ms_of(kill) - time_ms_of(asked);
        assert!(waited >= 2500, "worker {} got SIGKILL {} ms after SIGTERM, before shutdownTimeout 3 s", p, waited);
        eprintln!("worker {}: SIGKILL {} ms after SIGTERM (shutdownTimeout 3 s)", p, waited);
    }
    assert_eq!(m.healthz().status, 200);
}

/// After an abort: lockout. Refuses restarts, respawns nothing, tells the
/// operator for each worker that dies, leaves serving workers alone, and
/// exits 1 releasing the port when the last worker is gone.
fn check_lockout(m: &mut Master, abort_reason: &str) {
    let abort = m.wait_for_event("restart.abort", T);
    assert_eq!(abort["level"], 50);
    assert_eq!(reason_of(&abort), abort_reason, "{}", abort);
    m.wait_for_event("master.lockout", T);
    // The old workers still serve.
    let old: Vec<i32> = m.events("worker.spawn").iter().filter(|r| r["generation"] == 1).filter_map(worker_pid_of).collect();
    assert!(wait_until(Duration::from_secs(10), || m.worker_pids() == old), "{:?} vs {:?}", m.worker_pids(), old);
    let h = m.healthz();
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["generation"], 1);

    // Further restarts are refused, even with a good config.
    m.rewrite_config(|c| {
        c.remove("worker");
    });
    let r = refused(m);
    assert_eq!(reason_of(&r), "aborted restart");

    // A dying worker is not respawned, and the operator is told: an error
    // record about that very worker, from the master.
    let spawns = m.events("worker.spawn").len();
    let mark = m.mark();
    kill(old[0], libc::SIGKILL);
    m.wait_for(&format!("error about worker {}", old[0]), T, |recs| {
        recs[mark..]
            .iter()
            .find(|r| {
                r["level"] == 50
                    && r["component"] == "master"
                    && worker_pid_of(r) == Some(old[0])
                    && r["msg"].as_str().unwrap_or("").contains("restart the master as soon as possible")
            })
            .map(|_| ())
    });
    // No respawn, proved after a later record of the master: the refusal
    // of a SIGUSR2 sent after the worker's exit was handled (a respawn would
    // be decided in the same step as that exit, or after a backoff: the
    // master's own respawn delay is a separate record, which must not be
    // there either).
    let r = refused(m);
    assert_eq!(reason_of(&r), "aborted restart");
    let recs = m.log_records();
    assert_eq!(m.events("worker.spawn").len(), spawns, "no respawn in lockout");
    assert!(
        !recs[mark..].iter().any(|r| r["msg"].as_str().unwrap_or("").contains("respawning")),
        "a respawn was scheduled in lockout\n{}",
        m.diagnostics()
    );
    assert_eq!(m.healthz().status, 200, "the last worker still serves");

    // The last one goes: fatal, exit 1, port released.
    let mark = m.mark();
    kill(old[1], libc::SIGKILL);
    let st = m.wait_exit(T);
    assert_eq!(Master::exit_code(st), 1);
    let fatal: Vec<Value> = m.log_records()[mark..].iter().filter(|r| r["level"] == 60).cloned().collect();
    assert_eq!(fatal.len(), 1, "one fatal record after the last worker's death: {:?}", fatal);
    assert!(fatal[0]["msg"].as_str().unwrap().contains("no workers left"), "{}", fatal[0]);
    assert!(wait_until(Duration::from_secs(5), || port_is_free(m.port)), "port still bound");
}

fn deploy_broken(m: &mut Master, script: &str, extra: Value) {
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json(script));
        for (k, v) in extra.as_object().unwrap() {
            c.insert(k.clone(), v.clone());
        }
    });
    m.signal(libc::SIGUSR2);
}

#[test]
fn abort_when_new_worker_dies_at_start() {
    let mongo = Mongo::start();
    let mut m = mongo_master(&mongo, json!({}));
    deploy_broken(&mut m, "die-at-start.sh", json!({}));
    let abort = m.wait_for_event("restart.abort", T);
    // The worker's last output lines travel with the abort record.
    assert!(abort["stderr"].as_str().unwrap_or("").contains("die-at-start"), "{}", abort);
    check_lockout(&mut m, "new worker exited");
}

#[test]
fn abort_when_new_worker_cannot_bind() {
    // A real bind failure: bind-itself.sh runs the real worker without the
    // inherited listeners, so it binds address:port itself, which the
    // master's listener holds: EADDRINUSE, reported as ERROR= by the worker.
    let mongo = Mongo::start();
    let mut m = mongo_master(&mongo, json!({}));
    deploy_broken(&mut m, "bind-itself.sh", json!({}));
    let abort = m.wait_for_event("restart.abort", T);
    let want = format!("cannot listen on 127.0.0.1:{}: Address already in use", m.port);
    assert!(abort["detail"].as_str().unwrap().contains(&want), "{}", abort);
    check_lockout(&mut m, "new worker reported an error");
}

#[test]
fn abort_when_new_worker_is_not_ready_in_time() {
    let mongo = Mongo::start();
    let mut m = mongo_master(&mongo, json!({}));
    deploy_broken(&mut m, "never-ready.sh", json!({"readyTimeout": 2}));
    let abort = m.wait_for_event("restart.abort", T);
    assert!(abort["detail"].as_str().unwrap().contains("readyTimeout"), "{}", abort);
    // The worker that never got ready is stopped.
    let bad = worker_pid_of(&abort).unwrap();
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(bad)), "not-ready worker {} still alive", bad);
    check_lockout(&mut m, "new worker not ready");
}

/// A master on MongoDB with 2 workers and a control socket, serving.
fn mongo_master_with_socket(mongo: &Mongo) -> (Master, PathBuf) {
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock");
    let m = b
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri(), "timeout": 2}, "shutdownTimeout": 3,
                      "controlSocket": sock.display().to_string()}))
        .start();
    (m, sock)
}

#[test]
fn a_restart_is_refused_while_a_rollout_is_in_flight() {
    let mongo = Mongo::start();
    let (mut m, sock) = mongo_master_with_socket(&mongo);
    // The new workers start and wait before reporting ready, until the gate
    // opens: the rollout stays in flight as long as the test needs.
    let gate = m.hold_new_workers();
    let mark = m.mark();
    assert_eq!(ask(&sock, "RESTART"), "ACK", "accepted: the probe passed, the rollout started");
    m.wait_event_after(mark, "restart.start", T);
    let st = status(&sock);
    assert_eq!((st["state"].as_str(), st["last_restart"]["outcome"].as_str()), (Some("restarting"), Some("in progress")), "{}", st);
    // Refused while rolling, by every path.
    assert_eq!(ask(&sock, "RESTART"), "NACK restart in flight");
    assert_eq!(ask(&sock, "RESTART WAIT"), "NACK restart in flight");
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(c.code, 4, "retry later: {:?}", c);
    assert!(c.err.starts_with("zdrestartctl: restart refused: restart in flight"), "{:?}", c);
    let m2 = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, r) = m.wait_event_after(m2, "restart.refused", T);
    assert_eq!(reason_of(&r), "restart in flight", "{}", r);
    let refusals: Vec<Value> = m.log_records()[mark..].iter().filter(|r| event_of(r) == "restart.refused").cloned().collect();
    assert_eq!(refusals.len(), 4, "{:?}", refusals);
    assert!(refusals.iter().all(|r| reason_of(r) == "restart in flight"), "{:?}", refusals);
    // Released, the rollout completes as if nothing happened.
    gate.open();
    let (_, done) = m.wait_event_after(mark, "restart.complete", T);
    assert_eq!(done["generation"], 2);
    assert_eq!(m.events("restart.start").len(), 1);
    m.wait_worker_count(2, T);
    assert_eq!(generation_of(&m), 2);
}

/// SIGTERM while a restart is in flight: a `RESTART WAIT` client gets
/// `NACK stopping`, every process goes, exit 0.
fn sigterm_stops_a_restart_in_flight(m: &mut Master, waiter: &mut ControlClient) {
    let all = m.children();
    assert!(!all.is_empty());
    m.signal(libc::SIGTERM);
    assert_eq!(waiter.line(), "NACK stopping");
    let st = m.wait_exit(T);
    assert_eq!(Master::exit_code(st), 0);
    m.wait_for_event("master.stop", T);
    for p in all {
        assert!(wait_until(Duration::from_secs(15), || !pid_alive(p)), "{} survived", p);
    }
    assert!(wait_until(Duration::from_secs(15), || port_is_free(m.port)), "port still bound");
    assert!(!m.pidfile.as_ref().unwrap().exists());
}

#[test]
fn sigterm_during_a_rollout_answers_nack_stopping_and_stops_everything() {
    let mongo = Mongo::start();
    let (mut m, sock) = mongo_master_with_socket(&mongo);
    let _gate = m.hold_new_workers();
    let mark = m.mark();
    let mut waiter = ControlClient::connect(&sock);
    waiter.send("RESTART WAIT\n");
    // Rolling: a new worker spawned, held before ready.
    m.wait_event_after(mark, "restart.start", T);
    m.wait_event_after(mark, "worker.spawn", T);
    sigterm_stops_a_restart_in_flight(&mut m, &mut waiter);
}

#[test]
fn sigterm_during_a_probe_answers_nack_stopping_and_stops_everything() {
    let mongo = Mongo::start();
    let (mut m, sock) = mongo_master_with_socket(&mongo);
    let _gate = m.hold_probes();
    let mark = m.mark();
    let mut waiter = ControlClient::connect(&sock);
    waiter.send("RESTART WAIT\n");
    wait_restart_requested(&m, mark);
    // The held probe runs (a third child of the master): it goes too.
    assert!(wait_until(T, || m.children().len() == 3), "no probe running: {:?}", m.children());
    sigterm_stops_a_restart_in_flight(&mut m, &mut waiter);
    assert!(m.events("restart.start").is_empty());
}

#[test]
fn default_shutdown_timeout_is_thirty_seconds() {
    // "if a worker process doesn't shut itself down within 30 seconds, it will be killed"
    let c = zdrestart::config::Config::parse(std::path::Path::new("/x.json"), "{}").unwrap();
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.workers, 2, "two or more workers is the default");
}

/// An idle keep-alive connection to one old worker, and when its last
/// request was sent.
type Fresh = (KeepAlive, Instant);

/// Keep each connection of `fresh` (by its worker's pid) fresh, a request
/// every 500 ms, until the master's log says it asked that worker to exit;
/// then leave it idle, and a thread waits (60 s at most) for the worker to
/// close it. No request crosses a SIGTERM: the master is held (stopped) while
/// the test reads its new log records and sends the requests of the workers
/// that have no SIGTERM record, and the master logs a SIGTERM before it sends
/// it. Each thread returns the pid, whether the worker closed the
/// connection, and how long after its last request.
fn keep_fresh_until_sigterm(m: &Master, mut fresh: BTreeMap<i32, Fresh>, within: Duration) -> Vec<JoinHandle<(i32, bool, Duration)>> {
    let mut tail = LogTail::new(m.logfile.as_ref().expect("a log file"));
    let mut closing = Vec::new();
    let end = Instant::now() + within;
    while !fresh.is_empty() {
        assert!(Instant::now() < end, "old workers {:?} not asked to exit within {:?}", fresh.keys(), within);
        let held = m.hold();
        for rec in tail.new_records() {
            let asked = |pid: &i32| rec["msg"].as_str().unwrap_or("").starts_with(&format!("asking worker {} to exit", pid));
            let Some(pid) = worker_pid_of(&rec).filter(asked) else { continue };
            if let Some((mut c, last)) = fresh.remove(&pid) {
                closing.push(std::thread::spawn(move || (pid, c.closed_within(Duration::from_secs(60)), last.elapsed())));
            }
        }
        for (pid, (c, last)) in fresh.iter_mut().filter(|(_, (_, last))| last.elapsed() >= Duration::from_millis(500)) {
            *last = Instant::now();
            match c.get("/healthz") {
                Ok(r) if r.worker_pid() == Some(*pid) && !r.closes() => {}
                other => panic!("the fresh connection to worker {} (no SIGTERM yet) failed: {:?}", pid, other.map(|r| (r.worker_pid(), r.closes()))),
            }
        }
        drop(held);
        // Pacing (the master runs in between), not a wait for a result.
        std::thread::sleep(Duration::from_millis(100));
    }
    closing
}

/// README, "What a restart costs": old workers drain in parallel while the
/// rollout goes on, so a restart takes the rollout plus at most one idle
/// timeout, not N of them. Each of 4 old workers holds a keep-alive
/// connection kept fresh until its SIGTERM (no refresh crosses it:
/// [`keep_fresh_until_sigterm`]), after which the worker keeps it until its
/// idle timeout (6 s): each old worker lives one idle timeout after its
/// SIGTERM. In parallel, the rollout waits for none of
/// them and the restart for about one; drained one after another, the
/// rollout (or the restart after it) would take about 4 idle timeouts.
/// The bounds leave half an idle timeout (and the rollout a whole one) for
/// a loaded machine, far from the 3 more idle timeouts of a serial drain.
#[test]
fn a_restart_takes_the_rollout_plus_one_idle_timeout_not_n() {
    let mongo = Mongo::start();
    let idle_timeout = Duration::from_secs(6);
    let m = mongo_master(&mongo, json!({"workers": 4, "shutdownTimeout": 60, "params": {"uri": mongo.uri(), "timeout": 2, "idleTimeout": 6}}));
    let workers = m.wait_worker_count(4, T);
    let mut idle = BTreeMap::new();
    for _ in 0..400 {
        if idle.len() == workers.len() {
            break;
        }
        let mut c = KeepAlive::one_connection(m.port);
        let sent = Instant::now();
        let r = c.get("/healthz").unwrap();
        idle.entry(r.worker_pid().unwrap()).or_insert((c, sent));
    }
    assert_eq!(idle.len(), 4, "no connection to every worker: {:?}", idle.keys());
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let closing = keep_fresh_until_sigterm(&m, idle, Duration::from_secs(120));
    let (_, done) = m.wait_event_after(mark, "restart.complete", Duration::from_secs(120));
    let recs = m.log_records();
    let start = recs[mark..].iter().find(|r| event_of(r) == "restart.start").expect("restart.start");
    let last_ready = recs[mark..]
        .iter()
        .filter(|r| event_of(r) == "worker.ready" && r["generation"] == 2)
        .map(time_ms_of)
        .max()
        .expect("new workers ready");
    let rollout = last_ready - time_ms_of(start);
    let total = time_ms_of(&done) - time_ms_of(start);
    eprintln!("restart of 4 workers with a fresh connection each: rollout {} ms, complete after {} ms", rollout, total);
    for c in closing {
        let (pid, closed, after) = c.join().unwrap();
        assert!(closed, "the idle connection to old worker {} was never closed", pid);
        assert!(after >= idle_timeout, "old worker {} closed its idle connection {:?} after its last request, before its idle timeout", pid, after);
    }
    let idle_ms = idle_timeout.as_millis() as i64;
    assert!(rollout < 2 * idle_ms, "the rollout ({} ms) waited for old workers' idle connections", rollout);
    assert!(total <= rollout + idle_ms + idle_ms / 2, "the restart took {} ms: more than the rollout ({} ms) plus one idle timeout", total, rollout);
}

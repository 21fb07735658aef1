//! What zdrestart(8) promises the operator, each proved with a real master:
//! the exit statuses of a failed start (an unopenable log file, a probe
//! without a magic number, a live pidfile) and of a usage error; SIGHUP when
//! the log file cannot be reopened; the whole respawn backoff of a worker
//! that keeps dying; and a completed restart's `logLevel`, with the warnings
//! for the keys that only a normal restart applies.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn msg_of(r: &Value) -> &str {
    r["msg"].as_str().unwrap_or("")
}

/// A failed start: exit 1, the error on stderr naming `names`, no worker,
/// no pidfile left.
fn assert_start_fails(b: MasterBuilder, names: &[&str]) -> Master {
    let (st, err, m) = b.run_to_exit(T);
    assert_eq!(Master::exit_code(st), 1, "stderr:\n{}", err);
    for n in names {
        assert!(err.contains(n), "stderr names {:?}:\n{}", n, err);
    }
    assert!(m.events("worker.spawn").is_empty(), "a worker was spawned\n{}", m.diagnostics());
    m
}

#[test]
fn unopenable_log_file_is_exit_1() {
    let b = Master::for_test();
    let log = b.dir().join("no-such-dir/zdrestart.log").display().to_string();
    let pidfile = b.dir().join("zdrestart.pid");
    // The port is held by this test meanwhile: the log file is the first
    // thing the master opens, so it fails on the log, never on the port.
    let holder = std::net::TcpListener::bind(("127.0.0.1", b.port())).unwrap();
    let m = assert_start_fails(b.set("logfile", log.as_str()), &[&log]);
    drop(holder);
    assert!(!m.stderr_text().contains("Address already in use"), "it bound before opening its log: {}", m.stderr_text());
    assert!(!pidfile.exists(), "pidfile left behind");
}

#[test]
fn probe_without_magic_number_is_exit_1() {
    // The probe leaves a helper in its process group (and its pid in a
    // file): a failed start leaves nothing behind, not even that.
    let mark = format!("no-magic-{}", std::process::id());
    let b = Master::for_test().set("worker", fault_worker_json("no-magic.sh")).env("FAULT_MARK", &mark);
    let helper_file = b.dir().join("no-magic-helper.pid");
    let m = assert_start_fails(b, &["MAGIC"]);
    assert!(!m.pidfile.as_ref().unwrap().exists(), "pidfile left behind");
    let helper: i32 = fs::read_to_string(&helper_file)
        .unwrap_or_else(|e| panic!("the probe did not run ({}: {})\n{}", helper_file.display(), e, m.diagnostics()))
        .trim()
        .parse()
        .unwrap();
    let left = || common::ops::pids_with_env("FAULT_MARK", &mark);
    assert!(wait_until(T, || left().is_empty()), "left behind by the failed start: {:?} (the probe's helper: {})", left(), helper);
    assert!(!pid_alive(helper) || proc_stat(helper).is_some_and(|s| s.comm != "sleep"), "the probe's helper {} survives", helper);
}

#[test]
fn live_pidfile_is_exit_1_and_left_alone() {
    let first = Master::for_test().start();
    let pidfile = first.pidfile.clone().unwrap();
    let second = assert_start_fails(
        Master::for_test().set("pidfile", pidfile.display().to_string()),
        &[&pidfile.display().to_string(), &format!("pid {}", first.pid())],
    );
    drop(second);
    assert_eq!(fs::read_to_string(&pidfile).unwrap().trim(), first.pid().to_string(), "the first master's pidfile");
    assert_eq!(first.healthz().status, 200);
}

#[test]
fn usage_errors_are_exit_2() {
    for args in [&["--bogus"][..], &["-c"][..], &["-c", "a.json", "extra"][..]] {
        let mut cmd = Command::new(master_bin());
        cmd.args(args);
        scrub_env(&mut cmd);
        let (st, out, err) = run_cmd(&mut cmd, T);
        assert_eq!(st.code(), Some(2), "zdrestart {:?}: stdout {:?} stderr {:?}", args, out, err);
        assert!(err.contains("zdrestart"), "the error names the program: {:?}", err);
    }
    let (st, out, _) = run_cmd(Command::new(master_bin()).arg("--help"), T);
    assert_eq!(st.code(), Some(0));
    assert!(out.contains("Usage: zdrestart"), "{}", out);
}

#[test]
fn sighup_keeps_the_old_log_file_when_the_new_one_cannot_be_opened() {
    let mut m = Master::for_test().start();
    let log = m.logfile.clone().unwrap();
    let rotated = log.with_extension("log.1");
    fs::rename(&log, &rotated).unwrap();
    // The log path is now a directory: opening it for appending fails
    // (EISDIR), for root too. The harness reads the file the master writes.
    fs::create_dir(&log).unwrap();
    m.logfile = Some(rotated.clone());
    let mark = m.mark();
    m.signal(libc::SIGHUP);
    let (_, err) = m.wait_event_after(mark, "log.reopen", T);
    assert_eq!(err["level"], 50, "an error record, in the old file: {}", err);
    assert!(msg_of(&err).contains(&log.display().to_string()), "names the file: {}", err);
    // The master goes on, and keeps writing to the old file.
    let w = m.wait_worker_count(2, T)[0];
    assert!(kill(w, libc::SIGKILL));
    m.wait_for("the worker's exit, in the old file", T, |recs| {
        recs[mark..].iter().find(|r| event_of(r) == "worker.exit" && worker_pid_of(r) == Some(w)).map(|_| ())
    });
    assert!(log.is_dir(), "the directory was left alone");
    assert_eq!(m.healthz().status, 200);
}

#[test]
fn respawn_backoff_doubles_from_half_a_second_to_thirty() {
    // One worker that dies at start, again and again (die-at-start.sh): each
    // death within the crash window schedules the next respawn after 0.5 s,
    // then 1, 2, 4, 8, 16 s, capped at 30 s (2^6 x 0.5 s = 32 s). The master
    // has no knob to speed this up: the test reads the delays the master
    // logs, and checks from the records' own times that no respawn came
    // before its delay.
    let m = Master::for_test()
        .merge(json!({"workers": 1, "worker": fault_worker_json("die-at-start.sh")}))
        .spawn();
    let expected = [500u64, 1000, 2000, 4000, 8000, 16000, 30000];
    let sched = |recs: &[Value]| -> Vec<Value> {
        recs.iter()
            .filter(|r| r["component"] == "master" && r["worker"] == 0 && r.get("delay_ms").is_some())
            .cloned()
            .collect()
    };
    let recs = m.wait_for("seven scheduled respawns", Duration::from_secs(120), |recs| {
        (sched(recs).len() >= expected.len()).then(|| recs.to_vec())
    });
    let delays: Vec<u64> = sched(&recs).iter().map(|r| r["delay_ms"].as_u64().unwrap()).collect();
    assert_eq!(&delays[..expected.len()], &expected[..], "respawn delays");
    for r in sched(&recs).iter().take(expected.len()) {
        assert_eq!(r["level"], 50, "a crash loop is an error: {}", r);
    }
    // Each scheduled respawn is followed (in the log's order) by a spawn of
    // worker 0, no sooner than its delay. The delay runs from the instant the
    // master handled the exit; the record that announces it is stamped when
    // it is written, a little later on a loaded machine (6 ms was seen), so
    // the records' times get 50 ms of slack: far less than any step of the
    // doubling, which is what this checks.
    let scheduled: Vec<usize> = (0..recs.len())
        .filter(|&i| recs[i]["component"] == "master" && recs[i]["worker"] == 0 && recs[i].get("delay_ms").is_some())
        .collect();
    for (n, &i) in scheduled.iter().take(expected.len() - 1).enumerate() {
        let next = recs[i..]
            .iter()
            .find(|r| event_of(r) == "worker.spawn" && r["worker"] == 0)
            .unwrap_or_else(|| panic!("no spawn after {}", recs[i]));
        let waited = (time_ms_of(next) - time_ms_of(&recs[i])) as u64;
        assert!(waited + 50 >= expected[n], "respawn {} after {} ms, scheduled for {} ms", n + 1, waited, expected[n]);
        eprintln!("respawn {}: scheduled in {} ms, spawned after {} ms", n + 1, expected[n], waited);
    }
}

#[test]
fn a_completed_restart_brings_its_log_level_and_warns_about_keys_it_cannot_apply() {
    let mongo = Mongo::start();
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock");
    let mut m = b
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "logLevel": "info",
                      "controlSocket": sock.display().to_string()}))
        .start();
    let old_log = m.logfile.clone().unwrap();
    let old_pidfile = m.pidfile.clone().unwrap();
    let (new_log, new_pidfile, new_sock) = (m.dir.join("new.log"), m.dir.join("new.pid"), m.dir.join("new.sock"));
    m.rewrite_config(|c| {
        c.insert("logLevel".into(), json!("debug"));
        c.insert("logfile".into(), json!(new_log.display().to_string()));
        c.insert("pidfile".into(), json!(new_pidfile.display().to_string()));
        c.insert("controlSocket".into(), json!(new_sock.display().to_string()));
        c.insert("serverUser".into(), json!("nobody"));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (start_at, _) = m.wait_event_after(mark, "restart.start", T);
    m.wait_event_after(mark, "restart.complete", T);
    let recs = m.log_records();
    // One warning per key that only a normal restart applies, naming it.
    for key in ["logfile", "pidfile", "controlSocket", "serverUser"] {
        let w = recs[mark..]
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no warning for {}\n{}", key, m.diagnostics()));
        assert_eq!(w["level"], 40, "{}", w);
        assert!(msg_of(w).contains("only after a normal restart"), "{}", w);
    }
    // ...and indeed none of them applied: same log file, pidfile, socket,
    // and the new workers still run as the master's user.
    assert!(!new_log.exists() && !new_pidfile.exists() && !new_sock.exists(), "a new path was used");
    assert_eq!(fs::read_to_string(&old_pidfile).unwrap().trim(), m.pid().to_string());
    assert_eq!(ask(&sock, "VERSION"), "ACK 0.1.0");
    for p in m.wait_worker_count(2, T) {
        let uid = fs::read_to_string(format!("/proc/{}/status", p))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .unwrap();
        assert_eq!(uid, euid().to_string(), "worker {} runs as another user", p);
    }
    assert_eq!(m.logfile.as_ref(), Some(&old_log));
    // The master logged at info during that restart (its probe's debug
    // record is not there)...
    assert!(
        !recs[mark..start_at].iter().any(|r| msg_of(r).starts_with("probe ") && msg_of(r).ends_with(" started")),
        "a debug record before the new logLevel applied"
    );
    // ...and follows logLevel debug once it completed: the next restart's
    // probe is logged at debug by the master itself.
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    m.wait_event_after(mark, "restart.complete", T);
    let recs = m.log_records();
    let probe = recs[mark..]
        .iter()
        .find(|r| r["component"] == "probe" && r["pid"].as_i64() == Some(m.pid() as i64) && msg_of(r).ends_with(" started"))
        .unwrap_or_else(|| panic!("no debug record of the master after the restart\n{}", m.diagnostics()));
    assert_eq!(probe["level"], 20, "{}", probe);
}

use common::sys::euid;

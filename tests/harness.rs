//! The test harness's own promises (tests/common, ARCHITECTURE.md "Tests"),
//! each shown with real processes:
//!
//! - nothing a test starts outlives its test binary, even when the binary
//!   is SIGKILLed in the middle of a test: masters, their workers, what the
//!   workers leave behind out of their process group, secantusd-py, a worker
//!   run by hand, a PID namespace;
//! - a PID namespace whose command times out dies whole;
//! - a program written by a test runs, however many other threads fork
//!   meanwhile (no "Text file busy");
//! - a master is "serving" once the workers of *its* start are ready, not
//!   those an earlier master left in the same log;
//! - a master whose port another process took before it could bind is
//!   started again on another port.
#![deny(unsafe_code)]

mod common;

use common::ops::pids_with_env;
use common::spawn::{in_pid_namespace, marked_processes};
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Set when this binary runs as the victim of the test below.
const VICTIM_DIR: &str = "ZDTEST_VICTIM_DIR";
const KILLED: &str = "a_killed_test_binary_leaves_no_process_behind";

/// Run by cargo, the test re-runs this binary (this test alone) as a
/// "victim" that starts one of everything, reports the pids, and waits;
/// then it SIGKILLs the victim and checks that every process it started
/// dies, including those no parent-death signal reaches (a wrapper worker's
/// server, helpers a worker daemonized: orphans once their master is gone),
/// and that their ports are free again.
#[test]
fn a_killed_test_binary_leaves_no_process_behind() {
    if let Some(dir) = std::env::var_os(VICTIM_DIR) {
        return victim(Path::new(&dir));
    }
    let dir = TestDir::for_test();
    let log = dir.join("victim.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", KILLED, "--nocapture", "--test-threads=1"])
        .env(VICTIM_DIR, dir.path())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    scrub_env(&mut cmd);
    let mut victim = ChildGuard::spawn(&mut cmd, &log);
    let report = dir.join("report.json");
    assert!(
        wait_until(Duration::from_secs(120), || report.exists() || !victim.alive()),
        "the victim did not report within 120 s:\n{}",
        victim.output()
    );
    assert!(report.exists(), "the victim ended before reporting:\n{}", victim.output());
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let marker = r["marker"].as_str().unwrap().to_string();
    let started: Vec<(String, i32)> =
        r["pids"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_i64().unwrap() as i32)).collect();
    let ports: Vec<u16> = r["ports"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u16).collect();
    // Not vacuous: all of it runs, and the victim's marker finds it.
    for (what, p) in &started {
        assert!(pid_alive(*p), "{} ({}) is not running before the kill", what, p);
    }
    let marked = marked_processes(&marker);
    for (what, p) in &started {
        assert!(marked.contains(p), "{} ({}) does not carry the run marker", what, p);
    }
    eprintln!("the victim started {} processes; killing it (pid {})", marked.len(), victim.pid());

    assert!(kill(victim.pid(), libc::SIGKILL));
    let st = victim.wait_timeout(T).expect("the victim did not die of SIGKILL");
    eprintln!("victim: {:?}", st);
    let survivors = || -> Vec<String> {
        let mut v: Vec<String> = started
            .iter()
            .filter(|(_, p)| pid_alive(*p))
            .map(|(what, p)| format!("{} {}", what, p))
            .collect();
        v.extend(marked_processes(&marker).into_iter().map(|p| format!("marked {} ({:?})", p, proc_stat(p).map(|s| s.comm))));
        v
    };
    assert!(wait_until(T, || survivors().is_empty()), "left running after the test binary was killed: {:?}", survivors());
    for port in ports {
        assert!(wait_until(T, || port_is_free(port)), "port {} still in use after the test binary was killed", port);
    }
    // The victim's temporary directories (it never got to remove them).
    let tag = format!("-{}-", victim.pid());
    for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("zdrestart-") && name.contains(&tag) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The victim: one of everything a test starts, then wait to be killed.
fn victim(dir: &Path) {
    let mongo = Mongo::start();
    let mut pids = serde_json::Map::new();
    let mut note = |what: &str, p: i32| {
        pids.insert(what.to_string(), json!(p));
    };
    note("secantusd-py", mongo.pid().unwrap());
    // Workers that daemonize a helper out of their process group: once the
    // master is gone, the helpers are orphans.
    let forking = Master::builder("victim-double-fork").set("worker", fault_worker_json("double-fork.sh")).start();
    let helpers = wait_descendants(&forking, |s| s.comm == "sleep", 2);
    // Workers that run their server as a child (a shell wrapper): the server
    // outlives the wrapper.
    let wrapping = Master::builder("victim-wrapper")
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}}))
        .set("worker", fault_worker_json("wrapper-no-exec.sh"))
        .start();
    let servers = wait_descendants(&wrapping, |s| s.comm == "zdrestart-worke", 2);
    for (name, m) in [("double-fork", &forking), ("wrapper", &wrapping)] {
        note(&format!("master {}", name), m.pid());
        for (i, w) in m.worker_pids().into_iter().enumerate() {
            note(&format!("worker {} of {}", i, name), w);
        }
    }
    for (i, h) in helpers.iter().enumerate() {
        note(&format!("daemonized helper {}", i), *h);
    }
    for (i, s) in servers.iter().enumerate() {
        note(&format!("wrapper's server {}", i), *s);
    }
    let hand_dir = TestDir::new("victim-hand");
    let hand = start_worker(&hand_dir, "w", json!({}));
    note("worker run by hand", hand.proc.pid());
    let ns_log = dir.join("namespace.log");
    let mut ns_cmd = in_pid_namespace("sleep");
    ns_cmd.arg("1000");
    let ns = ChildGuard::spawn(&mut ns_cmd, &ns_log);
    let inside = wait_until(T, || descendants_of(ns.pid()).iter().any(|&p| proc_stat(p).is_some_and(|s| s.comm == "sleep")));
    assert!(inside, "no sleep in the PID namespace: {}", ns.output());
    note("unshare", ns.pid());
    for p in descendants_of(ns.pid()) {
        note(&format!("in the PID namespace {}", p), p);
    }
    let report = json!({
        "marker": common::spawn::run_marker(),
        "pids": pids,
        "ports": [forking.port, wrapping.port, mongo.port, hand.port],
    });
    let tmp = dir.join("report.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&report).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.join("report.json")).unwrap();
    // Killed here; bounded all the same.
    std::thread::sleep(Duration::from_secs(600));
    panic!("the victim was not killed within 600 s");
}

/// Wait until `n` descendants of the master match `f`; their pids.
fn wait_descendants(m: &Master, f: impl Fn(&ProcStat) -> bool, n: usize) -> Vec<i32> {
    let mut found = Vec::new();
    let ok = wait_until(T, || {
        found = descendants_of(m.pid()).into_iter().filter(|&p| proc_stat(p).is_some_and(|s| s.state != 'Z' && f(&s))).collect();
        found.len() >= n
    });
    assert!(ok, "{} descendants of master {} expected, found {:?}\n{}", n, m.pid(), found, m.diagnostics());
    found
}

/// The killall test's namespace (tests/restart_killall.rs) when its command
/// is killed (as run_cmd does on a timeout, or the parent-death signal when
/// the test binary dies): every process of the namespace goes with unshare
/// (`--kill-child`), not only unshare.
#[test]
fn a_pid_namespace_dies_whole_with_its_unshare() {
    let dir = TestDir::for_test();
    let mark = format!("namespace-{}", std::process::id());
    let ready = dir.join("ready");
    let mut cmd = in_pid_namespace("sh");
    cmd.args(["-c", "sleep 1000 & sleep 1000 & touch \"$READY\"; wait"]).env("FAULT_MARK", &mark).env("READY", &ready);
    let mut unshare = ChildGuard::spawn(&mut cmd, dir.join("unshare.log"));
    assert!(wait_until(T, || ready.exists()), "the namespace's command never ran: {}", unshare.output());
    // unshare, sh (pid 1 of the namespace) and the two sleeps.
    let inside = pids_with_env("FAULT_MARK", &mark);
    assert_eq!(inside.len(), 4, "{:?}", inside.iter().map(|&p| proc_stat(p)).collect::<Vec<_>>());
    unshare.kill();
    assert!(
        wait_until(T, || pids_with_env("FAULT_MARK", &mark).is_empty()),
        "left running after unshare was killed: {:?}",
        pids_with_env("FAULT_MARK", &mark).iter().map(|&p| proc_stat(p)).collect::<Vec<_>>()
    );
}

/// A program a test writes and runs while other threads of the binary start
/// processes all the time: every exec works (execve fails with ETXTBSY while
/// any process, e.g. a child forked before its exec, holds the file open
/// for writing). The children linger 20 ms between fork and exec, as they
/// do on a loaded machine, so that a program the test binary itself had
/// open for writing at a fork would still be held open at its exec.
#[test]
fn programs_written_while_other_threads_fork_always_run() {
    let dir = TestDir::for_test();
    let stop = Arc::new(AtomicBool::new(false));
    let forks = Arc::new(AtomicUsize::new(0));
    let forkers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, forks) = (stop.clone(), forks.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut cmd = common::spawn::command("true");
                    common::sys::linger_before_exec(&mut cmd, Duration::from_millis(20));
                    let st = cmd.status().expect("run true");
                    assert!(st.success());
                    forks.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // 2 MB of comment: writing it takes long enough for forks to happen
    // meanwhile (as with the 20 MB master the upgrade tests copy).
    let padding = format!("# {}\n", "x".repeat(2 * 1024 * 1024));
    let runs = 80;
    for i in 0..runs {
        let prog = dir.join(format!("prog-{}", i % 3));
        install_script(&prog, &format!("#!/bin/sh\necho ran {}\nexit 0\n{}", i, padding));
        let (st, out, err) = run_cmd(&mut Command::new(&prog), T);
        assert!(st.success() && out == format!("ran {}\n", i), "run {} of {}: {:?} {:?} {}", i, prog.display(), st, out, err);
    }
    stop.store(true, Ordering::SeqCst);
    for f in forkers {
        f.join().unwrap();
    }
    let n = forks.load(Ordering::SeqCst);
    eprintln!("{} programs written and run while other threads started {} processes", runs, n);
    assert!(n > runs, "too few processes started beside the writes to mean anything: {}", n);
}

/// "Serving" (`MasterBuilder::start`, `Master::wait_serving`) counts the
/// workers ready after the latest `master.start` of the log, never those of
/// an earlier master that wrote to the same file.
#[test]
fn serving_means_the_workers_of_the_latest_start() {
    // The count itself, on records.
    let ev = |e: &str, pid: i64| json!({"event": e, "worker_pid": pid});
    let mut recs = vec![ev("master.start", 0), ev("worker.ready", 1), ev("worker.ready", 2), ev("master.stop", 0)];
    assert_eq!(ready_workers_since_start(&recs), 2);
    recs.push(ev("master.start", 0));
    assert_eq!(ready_workers_since_start(&recs), 0, "the earlier master's workers do not count");
    recs.push(ev("worker.ready", 3));
    recs.push(ev("worker.ready", 3));
    assert_eq!(ready_workers_since_start(&recs), 1, "one worker ready twice is one worker");
    recs.push(ev("worker.ready", 4));
    assert_eq!(ready_workers_since_start(&recs), 2);

    // With real masters: a second master on the first one's log file, its
    // worker 1 held before ready, its worker 0 ready and answering. Not
    // serving until worker 1 is ready too.
    let mut first = Master::for_test().start();
    let log = first.logfile.clone().unwrap();
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(T).code(), Some(0));
    let b = Master::builder("second");
    let gate = ReadyGate::new(b.dir().path());
    let m = b
        .set("logfile", log.display().to_string())
        .merge(json!({"worker": fault_worker_json("ready-held.sh"), "readyTimeout": 3600}))
        .spawn();
    gate.open_worker(0);
    assert!(wait_until(T, || ready_workers_since_start(&m.log_records()) == 1), "{}", m.diagnostics());
    assert_eq!(m.healthz().status, 200, "worker 0 answers");
    let early = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.wait_serving(Duration::from_secs(3))));
    assert!(early.is_err(), "serving with worker 1 not ready (the first master's records counted)");
    gate.open_worker(1);
    m.wait_serving(T);
    assert_eq!(ready_workers_since_start(&m.log_records()), 2);
}

/// A master whose port another process took between the harness's choice
/// and the master's bind is started again on another port, and serves.
#[test]
fn a_master_whose_port_was_taken_is_started_on_another() {
    let dir = TestDir::for_test();
    let b = Master::for_test();
    let taken = b.port();
    // Another process (not this test binary) listens on it.
    let cfg = dir.join("thief.json");
    std::fs::write(&cfg, json!({"address": "127.0.0.1", "port": taken}).to_string()).unwrap();
    let mut thief = spawn_worker(&cfg, &dir.join("thief.log"), &[]);
    assert!(wait_until(T, || pid_listens_on(thief.pid(), taken)), "the thief does not listen:\n{}", thief.output());
    let m = b.start();
    assert_ne!(m.port, taken);
    assert_eq!(m.healthz().status, 200);
    let first_try = std::fs::read_to_string(m.dir.join("master.stderr.bind-retry-1")).unwrap_or_default();
    assert!(first_try.contains(&format!("bind 127.0.0.1:{}: Address already in use", taken)), "first attempt: {}", first_try);
    assert_eq!(m.config["port"], json!(m.port));
    assert!(thief.alive());
    thief.kill();
}

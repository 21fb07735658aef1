//! The sqlite driver through real masters: the README's quick start on
//! examples/zdrestart.json (curl PUT then GET, always the same answer;
//! `zdrestartctl restart --wait` under curl traffic); nothing acknowledged is
//! lost under load across a zero-downtime restart, an upgrade of the master
//! (`zdrestartctl upgrade --wait`, the master started from a copy of the
//! binary that the test replaces), a SIGKILL of a worker and a SIGKILL of the
//! master followed by a new master on the same file; 20 of 20 PUT-then-GET
//! pairs agree across the two workers (the GET answered by the other one);
//! and a restart onto a file of another schema version is refused. The load
//! runs until the clients have been answered (by every new worker), never
//! for a fixed time.
#![deny(unsafe_code)]

mod common;
mod load;

use common::*;
use load::{verify_acked, Load, Spec};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const SPEC: Spec = Spec { keepalive: 4, fresh: 2, slow: 2, slow_ms: 300 };

fn sqlite(db: &Path) -> Value {
    json!({"driver": "sqlite", "params": {"path": db.display().to_string()}, "threads": 4, "shutdownTimeout": 10})
}

/// 20 PUT-then-GET pairs, each PUT on a keep-alive connection to one worker
/// and its GET on a connection to the other: every GET returns the PUT's body.
fn twenty_of_twenty_across_workers(port: u16, tag: &str) {
    // Connections until both workers have one (the kernel hands each new
    // connection to whichever worker accepts first).
    let mut by_pid: Vec<(i32, KeepAlive)> = Vec::new();
    let ok = wait_until(T, || {
        let mut c = KeepAlive::new(port);
        if let Ok(r) = c.get("/healthz") {
            let pid = r.worker_pid().unwrap();
            if !by_pid.iter().any(|(p, _)| *p == pid) {
                by_pid.push((pid, c));
            }
        }
        by_pid.len() == 2
    });
    assert!(ok, "never reached both workers: {:?}", by_pid.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    let mut agree = 0;
    for i in 0..20 {
        let (w, r) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        let body = format!(r#"{{"tag":"{}","i":{}}}"#, tag, i);
        let path = format!("/objects/pair/{}-{}", tag, i);
        let put = by_pid[w].1.request("PUT", &path, Some(body.as_bytes())).unwrap();
        let got = by_pid[r].1.get(&path).unwrap();
        assert_eq!(put.status, 200, "{}", put.text());
        assert_ne!(put.worker_pid(), got.worker_pid(), "the GET must be served by the other worker");
        if (got.status, got.text()) == (200, body) {
            agree += 1;
        }
    }
    assert_eq!(agree, 20, "PUT-then-GET pairs that agree across workers");
}

fn report(what: &str, s: &load::Stats) {
    let ok = s.samples.iter().filter(|x| x.ok).count();
    eprintln!(
        "{}: {} requests, {} ok, {} failed, {} acknowledged writes, {} keep-alive retries",
        what,
        s.samples.len(),
        ok,
        s.failures.len(),
        s.acked.len(),
        s.retries
    );
    for f in s.failures.iter().take(10) {
        eprintln!("  failed: {}", f);
    }
}

/// A new copy of the built master at `exe` (never opened for writing by
/// this test binary: no "Text file busy", tests/common/install.rs).
fn install_master(exe: &Path) {
    install_copy(&master_bin(), exe);
}

/// The live workers, once each has answered a client of `load`.
fn wait_every_worker_answered(m: &Master, load: &Load) {
    load.wait_answered_by(&m.wait_worker_count(2, T), T);
}

#[test]
fn nothing_acknowledged_is_lost_across_restart_upgrade_and_sigkills() {
    let _g = exclusive();
    let data = TestDir::for_test();
    let db = data.join("objects.db");
    let b = Master::for_test().merge(sqlite(&db));
    let exe = b.dir().join("bin/zdrestart");
    fs::create_dir_all(exe.parent().unwrap()).unwrap();
    install_master(&exe);
    let sock = b.dir().join("ctl.sock");
    let mut m = b
        .bin(&exe)
        .set("controlSocket", sock.display().to_string())
        .set("worker", json!([worker_bin().display().to_string()]))
        .start();
    let port = m.port;
    let mut all_acked = Vec::new();

    // A zero-downtime restart and an upgrade of the master: nothing fails.
    let load = Load::start(port, SPEC);
    wait_every_worker_answered(&m, &load);
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(c.code, 0, "{:?}", c);
    wait_every_worker_answered(&m, &load);
    install_master(&exe);
    let pid = m.pid();
    let c = ctl(&sock, &["upgrade", "--wait"]);
    assert_eq!(c.code, 0, "{:?}", c);
    assert_eq!(m.events("master.upgrade").len(), 1);
    assert_eq!(m.pid(), pid);
    wait_every_worker_answered(&m, &load);
    let s = load.finish();
    report("restart and upgrade under load", &s);
    assert!(s.failures.is_empty(), "{} failed requests", s.failures.len());
    // A retry is legitimate only when a worker goes (2 per generation, two
    // swaps) or an idle timeout passes: at most once per keep-alive client
    // for each.
    s.assert_retries_at_most((SPEC.keepalive * (2 * 2 + 1)) as u64, "2 old workers per swap, 2 swaps, an idle timeout");
    assert!(s.acked.len() > 50, "too few writes to mean anything: {}", s.acked.len());
    let lost = verify_acked(port, &s.acked);
    assert!(lost.is_empty(), "lost after restart and upgrade: {:?}", &lost[..lost.len().min(10)]);
    all_acked.extend(s.acked);
    twenty_of_twenty_across_workers(port, "after-upgrade");

    // SIGKILL of a worker under load: what was acknowledged stays.
    let load = Load::start(port, SPEC);
    wait_every_worker_answered(&m, &load);
    let victim = m.worker_pids()[0];
    assert!(kill(victim, libc::SIGKILL));
    let ok = wait_until(T, || {
        let w = m.worker_pids();
        w.len() == 2 && !w.contains(&victim)
    });
    assert!(ok, "worker {} not replaced\n{}", victim, m.diagnostics());
    wait_every_worker_answered(&m, &load);
    let s = load.finish();
    report("SIGKILL of a worker under load", &s);
    let lost = verify_acked(port, &s.acked);
    assert!(lost.is_empty(), "lost after a worker's SIGKILL: {:?}", &lost[..lost.len().min(10)]);
    all_acked.extend(s.acked);

    // SIGKILL of the master under load (its workers die with it), then a
    // new master on the same file and port.
    let load = Load::start(port, SPEC);
    wait_every_worker_answered(&m, &load);
    m.signal(libc::SIGKILL);
    m.wait_exit(T);
    let s = load.finish();
    report("SIGKILL of the master under load", &s);
    m.kill_all();
    assert!(wait_until(T, || port_is_free(port)), "port {} still taken", port);
    let m2 = Master::for_test().merge(sqlite(&db)).on_port(port).start();
    all_acked.extend(s.acked);
    let lost = verify_acked(m2.port, &all_acked);
    eprintln!("{} acknowledged writes read back through a new master", all_acked.len());
    assert!(lost.is_empty(), "lost after the master's SIGKILL: {:?}", &lost[..lost.len().min(10)]);
    twenty_of_twenty_across_workers(m2.port, "new-master");
}

/// The README's quick start, on examples/zdrestart.json itself (only the
/// port is changed, and a log file added so that the test can wait for it).
#[test]
fn quick_start_on_the_example_config() {
    let _g = exclusive();
    let mut example: Value =
        serde_json::from_str(&fs::read_to_string(repo_root().join("examples/zdrestart.json")).unwrap()).unwrap();
    assert_eq!(example["driver"], "sqlite");
    // The test's free port, never the example's 8080.
    example.as_object_mut().unwrap().remove("port");
    let b = Master::for_test().merge(example).set("logLevel", "debug");
    // Relative paths are relative to the master's directory: the repository
    // in the README, the test's directory here.
    fs::create_dir_all(b.dir().join("target")).unwrap();
    let m = b.start();
    let dir = m.dir.path().to_path_buf();
    let url = |p: &str| format!("http://127.0.0.1:{}{}", m.port, p);
    let curl = |args: &[&str]| {
        let (st, out, _) = run_cmd(Command::new("curl").args(["-s", "-S", "--max-time", "20"]).args(args), T);
        (st.success(), out)
    };
    for i in 0..20 {
        let body = format!(r#"{{"a":{}}}"#, i);
        let (ok, put) = curl(&["-X", "PUT", "-d", &body, &url(&format!("/objects/note/{}", i))]);
        assert!(ok && put == body, "PUT {}: {}", i, put);
        let (ok, got) = curl(&[&url(&format!("/objects/note/{}", i))]);
        assert!(ok && got == body, "GET {} after PUT {}: {}", i, body, got);
    }
    twenty_of_twenty_across_workers(m.port, "quick-start");
    // curl traffic during `zdrestartctl restart --wait`: no failure.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..3)
        .map(|k| {
            let (stop, done, failed, port) = (stop.clone(), done.clone(), failed.clone(), m.port);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let u = format!("http://127.0.0.1:{}/objects/traffic/c{}-{}", port, k, n);
                    let body = format!(r#"{{"n":{}}}"#, n);
                    // Tagged (dies with the test binary); curl's own
                    // --max-time bounds each.
                    let curl = |args: &[&str]| common::spawn::command("curl").args(args).output().expect("curl");
                    let put = curl(&["-s", "-f", "--max-time", "20", "-X", "PUT", "-d", &body, &u]);
                    let get = curl(&["-s", "-f", "--max-time", "20", &u]);
                    let ok = put.status.success() && get.status.success() && get.stdout == body.as_bytes();
                    done.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // The traffic runs before, during and after the restart: some pairs
    // done before it, some more after it.
    let pairs_done = |n: u64| assert!(wait_until(T, || done.load(Ordering::Relaxed) >= n), "curl traffic stalled");
    pairs_done(5);
    let (st, out, err) = run_cmd(Command::new(ctl_bin()).args(["-c", "zdrestart.json", "restart", "--wait"]).current_dir(&dir), T);
    pairs_done(done.load(Ordering::Relaxed) + 5);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (n, f) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("curl PUT+GET pairs during the restart: {}, failed {}; zdrestartctl: {:?} {} {}", n, f, st, out, err);
    assert!(st.success(), "zdrestartctl restart --wait: {:?} {} {}", st, out, err);
    assert!(n >= 10, "too little traffic: {}", n);
    assert_eq!(f, 0, "curl pairs failed during the restart");
    assert_eq!(m.events("restart.complete").len(), 1);
    assert!(dir.join("target/zdrestart.db").exists());
}

#[test]
fn restart_onto_another_schema_version_or_without_a_path_is_refused() {
    let _g = exclusive();
    let data = TestDir::for_test();
    let db = data.join("objects.db");
    let b = Master::for_test().merge(sqlite(&db));
    let sock = b.dir().join("ctl.sock");
    let mut m = b.set("controlSocket", sock.display().to_string()).start();
    assert_eq!(put_json(m.port, "/objects/v/1", &json!({"v": 1})).status, 200);
    // Another file, of schema version 2.
    let other = data.join("v2.db");
    let (st, out, err) = run_cmd(
        Command::new("python3")
            .args(["-c", "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.executescript('CREATE TABLE objects (x); PRAGMA application_id = 2053403251; PRAGMA user_version = 2;')\n"])
            .arg(&other),
        T,
    );
    assert!(st.success(), "{:?} {} {}", st, out, err);
    m.rewrite_config(|c| {
        c.insert("params".into(), json!({"path": other.display().to_string()}));
    });
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(c.code, 1, "{:?}", c);
    assert!(c.err.contains("probe failed"), "{:?}", c);
    assert!(c.err.contains(&format!("{} unusable: wrong schema: schema version 2, this worker reads and writes version 1", other.display())), "{:?}", c);
    // sqlite without params.path: bad config, naming the key.
    m.rewrite_config(|c| {
        c.insert("params".into(), json!({}));
    });
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(c.code, 1, "{:?}", c);
    assert!(c.err.contains("bad config") && c.err.contains("key \"params.path\""), "{:?}", c);
    // Back to memory: bad driver, and the advice names both shared stores.
    m.rewrite_config(|c| {
        c.insert("driver".into(), json!("memory"));
    });
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(c.code, 1, "{:?}", c);
    assert!(c.err.contains("restart refused: bad driver: driver is \"memory\""), "{:?}", c);
    assert!(c.err.contains("\"sqlite\"") && c.err.contains("\"mongodb\""), "{:?}", c);
    // Nothing changed: the first generation serves the first file.
    assert_eq!(get(m.port, "/objects/v/1").json(), json!({"v": 1}));
    assert!(m.events("restart.complete").is_empty());
}

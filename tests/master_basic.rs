//! The master with real processes: start, serve, stop, supervise, log, and
//! fail fast (zdrestart(8)). Each test starts its own master on its own port
//! (see tests/common/master.rs); everything it started is killed even when it
//! fails.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// The `signal` of a worker.exit record is 9 / "SIGKILL" / "KILL".
fn is_sigkill(rec: &Value) -> bool {
    match rec.get("signal") {
        Some(Value::Number(n)) => n.as_i64() == Some(9),
        Some(Value::String(s)) => s.to_ascii_uppercase().contains("KILL") || s == "9",
        _ => false,
    }
}

fn worker_exit_of(m: &Master, pid: i32, timeout: Duration) -> Value {
    m.wait_for(&format!("worker.exit of {}", pid), timeout, |recs| {
        recs.iter().find(|r| event_of(r) == "worker.exit" && worker_pid_of(r) == Some(pid)).cloned()
    })
}

/// Wait for a worker.ready of a pid not in `old`; returns that pid.
fn new_ready_worker(m: &Master, from: usize, old: &[i32], timeout: Duration) -> i32 {
    m.wait_for("a new worker to be ready", timeout, |recs| {
        recs.iter()
            .skip(from)
            .filter(|r| event_of(r) == "worker.ready")
            .filter_map(worker_pid_of)
            .find(|p| !old.contains(p))
    })
}

#[test]
fn start_serve_stop_with_sigterm() {
    let mut m = Master::for_test().start();
    let port = m.port;

    // master.start, one worker.spawn per worker with pid, generation and index.
    let start = m.wait_for_event("master.start", T);
    assert_eq!(start["level"], 30, "master.start is info: {}", start);
    let spawns = m.events("worker.spawn");
    assert_eq!(spawns.len(), 2, "two worker.spawn records: {:?}", spawns);
    let mut indexes = Vec::new();
    for s in &spawns {
        assert!(worker_pid_of(s).is_some(), "worker.spawn without worker_pid: {}", s);
        assert_eq!(s["generation"], 1, "first generation is 1: {}", s);
        indexes.push(s["worker"].as_u64().unwrap_or_else(|| panic!("worker.spawn without worker index: {}", s)));
    }
    indexes.sort();
    indexes.dedup();
    assert_eq!(indexes.len(), 2, "distinct worker indexes: {:?}", spawns);
    let workers = m.wait_worker_count(2, T);
    let logged: Vec<i32> = m.events("worker.ready").iter().filter_map(worker_pid_of).collect();
    for w in &workers {
        assert!(logged.contains(w), "worker {} of /proc has no worker.ready record ({:?})", w, logged);
    }

    // The pidfile holds the master's pid.
    let pidfile = m.pidfile.clone().unwrap();
    let text = fs::read_to_string(&pidfile).expect("pidfile written");
    assert_eq!(text.trim(), m.pid().to_string(), "pidfile content");

    // Serves through the master's port.
    let r = m.healthz();
    assert_eq!(r.status, 200, "healthz: {}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "ok", "{}", body);
    assert_eq!(body["generation"], 1, "{}", body);
    let wp = body["pid"].as_i64().expect("pid in healthz") as i32;
    assert!(workers.contains(&wp), "healthz pid {} is not a worker ({:?})", wp, workers);
    assert_eq!(r.worker_pid(), Some(wp), "X-Worker-Pid header matches the body");

    // SIGTERM: exit 0, pidfile gone, workers gone, port free.
    let mark = m.mark();
    m.signal(libc::SIGTERM);
    let st = m.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "exit status after SIGTERM: {:?}\n{}", st, m.diagnostics());
    assert!(!pidfile.exists(), "pidfile removed at exit");
    for w in &workers {
        assert!(wait_until(secs(5.0), || !pid_alive(*w)), "worker {} still alive after master stop", w);
    }
    assert!(wait_until(secs(5.0), || port_is_free(port)), "port {} still in use after stop", port);
    m.wait_event_after(mark, "master.stop", secs(1.0));
    let exits = m.log_records()[mark..].iter().filter(|r| event_of(r) == "worker.exit").count();
    assert_eq!(exits, 2, "a worker.exit per worker at stop\n{}", m.diagnostics());
}

#[test]
fn sigint_stops_gracefully() {
    let mut m = Master::for_test().set("workers", 1).start();
    m.signal(libc::SIGINT);
    let st = m.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "exit status after SIGINT: {:?}\n{}", st, m.diagnostics());
    assert!(!m.pidfile.as_ref().unwrap().exists(), "pidfile removed at exit");
    assert!(wait_until(secs(5.0), || port_is_free(m.port)), "port still in use");
}

#[test]
fn objects_and_errors_through_the_master() {
    // One worker: the memory driver keeps objects per process.
    let m = Master::for_test().set("workers", 1).start();
    let p = m.port;
    let check_err = |r: &Response, status: u16, what: &str| {
        assert_eq!(r.status, status, "{}: got {} {}", what, r.status, r.text());
        assert!(r.worker_pid().is_some(), "{}: no X-Worker-Pid", what);
        let j = r.json();
        assert!(j["error"].is_string(), "{}: body has no \"error\": {}", what, j);
    };

    // PUT / GET / DELETE
    let obj = json!({"name": "zdrestart", "n": 42, "nested": {"a": [1, 2, 3]}});
    let r = put_json(p, "/objects/thing/abc-1.x_Y", &obj);
    assert_eq!(r.status, 200, "PUT: {}", r.text());
    assert!(r.worker_pid().is_some(), "X-Worker-Pid on PUT");
    let r = get(p, "/objects/thing/abc-1.x_Y");
    assert_eq!(r.status, 200, "GET: {}", r.text());
    let got = r.json();
    for (k, v) in obj.as_object().unwrap() {
        assert_eq!(&got[k], v, "GET returns what was PUT: {}", got);
    }
    let r = delete(p, "/objects/thing/abc-1.x_Y");
    assert_eq!(r.status, 204, "DELETE: {}", r.text());
    assert!(r.worker_pid().is_some(), "X-Worker-Pid on DELETE");
    check_err(&get(p, "/objects/thing/abc-1.x_Y"), 404, "GET after DELETE");
    check_err(&delete(p, "/objects/thing/abc-1.x_Y"), 404, "DELETE of a missing object");
    check_err(&get(p, "/no/such/path"), 404, "unknown path");

    // 400: bad JSON, a body that is not an object, bad ids and types.
    let r = http(p, "PUT", "/objects/thing/x", Some(b"{not json")).unwrap();
    check_err(&r, 400, "bad JSON");
    let r = http(p, "PUT", "/objects/thing/x", Some(b"[1, 2]")).unwrap();
    check_err(&r, 400, "JSON that is not an object");
    let long = "a".repeat(129);
    for path in ["/objects/thing/bad$id", &format!("/objects/thing/{}", long), "/objects/bad$type/x"] {
        let r = http(p, "PUT", path, Some(b"{}")).unwrap();
        check_err(&r, 400, &format!("bad name in {}", &path[..path.len().min(40)]));
    }
    let ok128 = format!("/objects/thing/{}", "b".repeat(128));
    assert_eq!(put_json(p, &ok128, &json!({})).status, 200, "a 128-character id is valid");

    // 405
    let r = http(p, "POST", "/objects/thing/x", Some(b"{}")).unwrap();
    check_err(&r, 405, "POST on an object");

    // 411: PUT without Content-Length.
    let raw = b"PUT /objects/thing/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let r = http_raw(p, raw, HTTP_TIMEOUT, false).unwrap();
    check_err(&r, 411, "PUT without Content-Length");

    // 413: over 1 MiB.
    let mut big = b"{\"x\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1024 * 1024 + 16));
    big.extend_from_slice(b"\"}");
    let r = http(p, "PUT", "/objects/thing/big", Some(&big));
    match r {
        Ok(r) => check_err(&r, 413, "body over 1 MiB"),
        Err(e) => panic!("PUT over 1 MiB: no 413 answer: {}", e),
    }

    // The worker survived all of it.
    assert_eq!(m.healthz().status, 200);
    assert!(m.events("worker.exit").is_empty(), "no worker died:\n{}", m.diagnostics());
}

fn sigkill_worker_is_respawned(m: Master) {
    let old = m.wait_worker_count(2, T);
    let victim = old[0];
    let mark = m.mark();
    assert!(kill(victim, libc::SIGKILL));
    let exit = worker_exit_of(&m, victim, T);
    assert!(is_sigkill(&exit), "worker.exit names SIGKILL: {}", exit);
    let recs = m.log_records();
    assert!(
        recs[mark..].iter().any(|r| r["level"].as_u64() >= Some(50) && worker_pid_of(r) == Some(victim)),
        "an unexpected worker death is logged at error level\n{}",
        m.diagnostics()
    );
    let (_, spawn) = m.wait_event_after(mark, "worker.spawn", T);
    let newpid = worker_pid_of(&spawn).expect("worker_pid in worker.spawn");
    assert!(!old.contains(&newpid), "respawned worker has a new pid");
    let ready = new_ready_worker(&m, mark, &old, T);
    assert_eq!(ready, newpid);
    let now = m.wait_worker_count(2, T);
    assert!(now.contains(&old[1]) && now.contains(&newpid), "workers now {:?}", now);
    // Every answer comes from a live worker.
    for _ in 0..6 {
        let r = m.healthz();
        assert_eq!(r.status, 200);
        assert!(now.contains(&r.worker_pid().unwrap()), "answer from a worker of {:?}", now);
    }
}

#[test]
fn sigkilled_worker_is_respawned() {
    let m = Master::for_test().start();
    let pidfds = fd_targets(m.pid()).into_iter().filter(|t| t.ends_with("[pidfd]")).count();
    assert!(pidfds >= 2, "a pidfd per worker (Linux >= 5.3): {:?}", fd_targets(m.pid()));
    sigkill_worker_is_respawned(m);
}

#[test]
fn sigkilled_worker_is_respawned_without_pidfd() {
    let m = Master::for_test().env("ZDRESTART_NO_PIDFD", "1").start();
    let pidfds: Vec<String> = fd_targets(m.pid()).into_iter().filter(|t| t.ends_with("[pidfd]")).collect();
    assert!(pidfds.is_empty(), "ZDRESTART_NO_PIDFD=1 but the master holds pidfds: {:?}", pidfds);
    sigkill_worker_is_respawned(m);
}

#[test]
fn worker_ignoring_sigterm_is_killed_after_shutdown_timeout() {
    let mut m = Master::for_test()
        .set("worker", fault_worker_json("ignore-term.sh"))
        .set("shutdownTimeout", 2)
        .spawn();
    m.wait_events_after(0, "worker.ready", 2, T);
    let workers = m.wait_worker_count(2, T);
    let t0 = Instant::now();
    m.signal(libc::SIGTERM);
    let st = m.wait_exit(Duration::from_secs(2 + 8));
    let took = t0.elapsed();
    assert_eq!(st.code(), Some(0), "exit status: {:?}\n{}", st, m.diagnostics());
    assert!(took >= Duration::from_millis(1800), "stopped after {:?}, before shutdownTimeout", took);
    let kills = m.events("worker.kill");
    for w in &workers {
        assert!(
            kills.iter().any(|k| worker_pid_of(k) == Some(*w)),
            "worker.kill for {}: {:?}\n{}",
            w,
            kills,
            m.diagnostics()
        );
        assert!(wait_until(secs(3.0), || !pid_alive(*w)), "worker {} survived", w);
    }
    assert!(kills.iter().all(|k| k["level"] == 40), "worker.kill is a warning: {:?}", kills);
    assert!(!m.pidfile.as_ref().unwrap().exists(), "pidfile removed");
}

#[test]
fn worker_survives_sigusr2() {
    let m = Master::for_test().start();
    let before = m.wait_worker_count(2, T);
    // SIGUSR2, then SIGHUP as a later marker: a worker logs each SIGHUP, so
    // its record proves the worker was alive to handle a signal sent after
    // SIGUSR2 (a fatal SIGUSR2 would have killed it when it was sent).
    let mark = m.mark();
    for w in &before {
        assert!(kill(*w, libc::SIGUSR2));
        assert!(kill(*w, libc::SIGHUP));
    }
    for w in &before {
        m.wait_for(&format!("worker {} to log the SIGHUP sent after SIGUSR2", w), T, |recs| {
            recs[mark..]
                .iter()
                .find(|r| worker_pid_of(r) == Some(*w) && r["msg"].as_str().unwrap_or("").starts_with("SIGHUP received"))
                .map(|_| ())
        });
    }
    assert_eq!(m.worker_pids(), before, "workers unchanged after SIGUSR2");
    assert!(m.events("worker.exit").is_empty(), "no worker exited:\n{}", m.diagnostics());
    assert_eq!(m.healthz().status, 200);
}

#[test]
fn sighup_reopens_a_renamed_log_file() {
    let m = Master::for_test().start();
    let log = m.logfile.clone().unwrap();
    let rotated = log.with_extension("log.1");
    fs::rename(&log, &rotated).unwrap();
    m.signal(libc::SIGHUP);
    assert!(wait_until(secs(5.0), || log.exists()), "SIGHUP did not create a new log file\n{}", m.diagnostics());
    // log.reopen is recorded (in the new file or the old one).
    let found = wait_until(secs(5.0), || {
        parse_log(&log).iter().chain(parse_log(&rotated).iter()).any(|r| event_of(r) == "log.reopen")
    });
    assert!(found, "no log.reopen record\n{}", m.diagnostics());
    // Later records go to the new file only.
    let old_len = fs::metadata(&rotated).unwrap().len();
    let w = m.wait_worker_count(2, T)[0];
    assert!(kill(w, libc::SIGKILL));
    worker_exit_of(&m, w, T);
    assert_eq!(fs::metadata(&rotated).unwrap().len(), old_len, "the renamed file got new records");
    parse_log(&rotated); // still valid bunyan throughout
}

#[test]
fn sigkill_of_master_ends_workers_and_frees_port() {
    let mut m = Master::for_test().start();
    let workers = m.wait_worker_count(2, T);
    m.signal(libc::SIGKILL);
    m.wait_exit(secs(5.0));
    for w in &workers {
        assert!(wait_until(secs(5.0), || !pid_alive(*w)), "worker {} outlived its master", w);
    }
    assert!(wait_until(secs(5.0), || port_is_free(m.port)), "port {} still bound after master died", m.port);
    assert!(!port_accepts(m.port), "something still accepts on the port");
}

fn assert_fails_fast(b: MasterBuilder, key_words: &[&str]) -> Master {
    let t0 = Instant::now();
    let (st, stderr, m) = b.run_to_exit(secs(10.0));
    assert_eq!(st.code(), Some(1), "exit status {:?}; stderr:\n{}", st, stderr);
    assert!(t0.elapsed() < secs(5.0), "took {:?} to fail", t0.elapsed());
    let all = format!("{}\n{}\n{}", stderr, m.stdout_text(), m.log_text());
    for w in key_words {
        assert!(all.contains(w), "the error names {:?}; stderr:\n{}\nlog:\n{}", w, stderr, m.log_text());
    }
    assert!(m.events("worker.spawn").is_empty(), "no worker spawned");
    assert!(!m.pidfile.as_ref().map(|p| p.exists()).unwrap_or(false), "no pidfile left");
    m
}

#[test]
fn invalid_config_fails_fast() {
    let m = assert_fails_fast(Master::for_test().set("workers", 0), &["workers"]);
    assert!(!m.stderr_text().trim().is_empty(), "config error on stderr");
    assert_fails_fast(Master::for_test().set("port", "eighty"), &["port", "eighty"]);
    assert_fails_fast(Master::for_test().set("logLevel", "loud"), &["logLevel", "loud"]);
    assert_fails_fast(Master::for_test().set("shutdownTimeout", -1), &["shutdownTimeout"]);
    let m = assert_fails_fast(Master::for_test().raw_config("{\"workers\": 2,,}"), &["JSON"]);
    assert!(m.stderr_text().contains("zdrestart.json"), "names the file:\n{}", m.stderr_text());
    assert_fails_fast(Master::for_test().args(&["-c", "/nonexistent/zdrestart.json"]), &["/nonexistent/zdrestart.json"]);
}

#[test]
fn port_in_use_fails_fast() {
    let b = Master::for_test();
    let port = b.port();
    let _holder = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let m = assert_fails_fast(b, &["Address already in use"]);
    let all = format!("{}\n{}", m.stderr_text(), m.log_text());
    assert!(
        all.contains(&format!("bind 127.0.0.1:{}: Address already in use", port)),
        "message names the address: {}",
        all
    );
}

#[test]
fn every_log_line_is_bunyan() {
    let mut m = Master::for_test().set("logLevel", "trace").start();
    let _ = m.healthz();
    let w = m.wait_worker_count(2, T)[0];
    let mark = m.mark();
    kill(w, libc::SIGKILL);
    new_ready_worker(&m, mark, &[w], T);
    m.signal(libc::SIGHUP);
    m.wait_event_after(mark, "log.reopen", T);
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit(secs(10.0)).code(), Some(0));

    // The harness parser checked v, level, name, hostname, pid, time, msg and
    // component on every line; check the lifecycle fields too.
    let recs = m.log_records();
    let lines = m.log_text().lines().count();
    assert_eq!(recs.len(), lines);
    for ev in ["master.start", "worker.spawn", "worker.ready", "worker.exit", "log.reopen", "master.stop"] {
        assert!(recs.iter().any(|r| event_of(r) == ev), "no {} record", ev);
    }
    for r in &recs {
        match event_of(r) {
            "worker.spawn" => {
                assert!(worker_pid_of(r).is_some() && r["generation"].is_u64() && r["worker"].is_u64(), "{}", r)
            }
            "worker.ready" | "worker.kill" => assert!(worker_pid_of(r).is_some(), "{}", r),
            "worker.exit" => {
                assert!(worker_pid_of(r).is_some(), "{}", r);
                assert!(r.get("code").is_some() || r.get("signal").is_some(), "exit code or signal: {}", r);
            }
            _ => {}
        }
        let c = r["component"].as_str().unwrap();
        assert!(["master", "worker", "control", "probe"].contains(&c), "component {:?}: {}", c, r);
        if c == "master" {
            assert_eq!(r["pid"].as_i64(), Some(m.pid() as i64), "master records carry the master's pid: {}", r);
        }
    }

    // The real bunyan CLI renders every line (missing CLI: the test fails).
    let bunyan = bunyan_cli();
    let log = m.logfile.clone().unwrap();
    let mut cmd = std::process::Command::new(&bunyan);
    cmd.args(["--strict", "-o", "json-0"]).arg(&log);
    let (st, out, err) = run_cmd(&mut cmd, secs(30.0));
    assert!(st.success(), "bunyan --strict failed: {:?}\n{}", st, err);
    assert_eq!(out.lines().count(), lines, "bunyan --strict kept every line as a record; stderr: {}", err);
    let mut cmd = std::process::Command::new(&bunyan);
    cmd.args(["-o", "long", "--color"]).arg(&log);
    let (st, out, err) = run_cmd(&mut cmd, secs(30.0));
    assert!(st.success(), "bunyan failed: {:?}\n{}", st, err);
    assert!(out.contains("zdrestart/"), "bunyan rendered records:\n{}", out);
}

#[test]
fn fifty_worker_crashes_leak_no_fd_and_no_zombie() {
    let m = Master::for_test().set("shutdownTimeout", 2).start();
    let mut workers = m.wait_worker_count(2, T);
    // Stable state: let the workers get older than the crash-loop window.
    std::thread::sleep(Duration::from_millis(1200));
    let fds_before = m.fd_count();
    let targets_before = fd_targets(m.pid());
    for round in 0..25 {
        let mark = m.mark();
        for w in &workers {
            assert!(kill(*w, libc::SIGKILL), "round {}: kill {}", round, w);
        }
        // Both respawned and ready.
        let ready = m.wait_for(&format!("round {}: two new workers ready", round), T, |recs| {
            let v: Vec<i32> = recs[mark.min(recs.len())..]
                .iter()
                .filter(|r| event_of(r) == "worker.ready")
                .filter_map(worker_pid_of)
                .filter(|p| !workers.contains(p))
                .collect();
            if v.len() >= 2 {
                Some(v)
            } else {
                None
            }
        });
        workers = m.wait_worker_count(2, T);
        assert_eq!(
            {
                let mut r = ready.clone();
                r.sort();
                r
            },
            workers,
            "round {}",
            round
        );
        // Past the crash-loop window before the next kill: no backoff.
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(m.events("worker.exit").len(), 50, "50 worker.exit records");
    let mut last = (0, Vec::new());
    let same = wait_until(secs(3.0), || {
        last = (m.fd_count(), m.zombies());
        last.0 == fds_before && last.1.is_empty()
    });
    assert!(
        same,
        "after 50 crashes: {} fds (before {}), zombies {:?}\nbefore: {:?}\nafter: {:?}",
        last.0,
        fds_before,
        last.1,
        targets_before,
        fd_targets(m.pid())
    );
    assert_eq!(m.healthz().status, 200);
}

fn delayed_request_survives(signal_master: bool) {
    let mut m = Master::for_test().set("workers", 1).start();
    let worker = m.wait_worker_count(1, T)[0];
    // The request is in flight: the worker holds the connection and has read
    // the request (from /proc), before any signal is sent.
    let mut c = KeepAlive::one_connection(m.port);
    let t0 = Instant::now();
    c.send("GET", "/delay/1500", None).unwrap();
    let in_flight = wait_until(T, || request_taken_by(worker, c.stream().unwrap()));
    assert!(in_flight, "worker {} never took the request\n{}", worker, m.diagnostics());
    let mark = m.mark();
    if signal_master {
        m.signal(libc::SIGTERM);
    } else {
        assert!(kill(worker, libc::SIGTERM));
    }
    let r = c.read().unwrap_or_else(|e| panic!("in-flight request lost: {}\n{}", e, m.diagnostics()));
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "in-flight request: {} {}", r.status, r.text());
    assert_eq!(r.worker_pid(), Some(worker));
    assert_eq!(r.json()["slept_ms"], 1500, "the request ran its whole delay");
    assert!(took >= Duration::from_millis(1500), "answered after {:?}, before its delay", took);
    let exit = worker_exit_of(&m, worker, T);
    assert_eq!(exit["code"], 0, "the worker exited 0 after finishing: {}", exit);
    if signal_master {
        assert_eq!(m.wait_exit(secs(10.0)).code(), Some(0));
    } else {
        // The master respawns it and the service answers.
        new_ready_worker(&m, mark, &[worker], T);
        assert_eq!(m.healthz().status, 200);
    }
}

#[test]
fn in_flight_request_finishes_when_master_stops() {
    delayed_request_survives(true);
}

#[test]
fn in_flight_request_finishes_when_worker_gets_sigterm() {
    delayed_request_survives(false);
}

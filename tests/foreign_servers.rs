//! Servers nobody here wrote, from Debian packages, run unchanged as
//! workers: gunicorn (python3-gunicorn 20.1) and uWSGI (uwsgi-core 2.0 with
//! its python3 plugin). Both take their listener from `LISTEN_FDS` and say
//! `READY=1` with sd_notify(3) on `$NOTIFY_SOCKET`; neither answers the
//! probe, so the config says `"notify": "systemd"`, `"probe": false` and
//! declares `"magic"`. Each is rolled over under load with no failed
//! request; a gunicorn whose application cannot be loaded fails, at start-up
//! with `--preload`, or after `READY=1` without it (the README's recipe as
//! published, caught by the default soak, `minReady`): either way the
//! restart is aborted, the master locks out and the old generation keeps
//! serving with no failed request. The master is upgraded in place under
//! load with gunicorn workers (their sd_notify socket and main processes
//! handed over), and an upgrade ends a lockout of gunicorn workers. `bash scripts/test` installs the servers; a test fails (never
//! skips) when one is missing. The application they serve is
//! tests/servers/hello.py. Figures are printed, never asserted on.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const RESTARTS: usize = 5;

/// A server program from PATH; panics with the install advice when missing.
fn server(name: &str, package: &str) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file());
    match found {
        Some(p) => p.display().to_string(),
        None => panic!("{} not found in PATH: run `bash scripts/test` (it installs the Debian package {})", name, package),
    }
}

fn app_dir() -> PathBuf {
    repo_root().join("tests/servers")
}

fn gunicorn(app: &str, extra: &[&str]) -> Value {
    let mut argv = vec![server("gunicorn", "gunicorn"), "--workers".into(), "2".into(), "--graceful-timeout".into(), "20".into()];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.extend(["--chdir".into(), app_dir().display().to_string(), app.into()]);
    json!(argv)
}

/// uWSGI with a graceful SIGTERM for its master and its workers (the
/// master signals the whole process group; uWSGI 2.0 takes SIGTERM as a
/// brutal reload).
fn uwsgi() -> Value {
    json!([
        server("uwsgi", "uwsgi-core"), "--master", "--processes", "2", "--plugin", "python3",
        "--protocol", "http", "--wsgi-file", app_dir().join("hello.py").display().to_string(),
        "--hook-master-start", "unix_signal:15 gracefully_kill_them_all", "--hook-accepting", "unix_signal:15 gracefully_kill", "--disable-logging",
    ])
}

/// A master running `worker` as a systemd-style server, serving.
fn start(worker: Value) -> Master {
    start_with(Master::for_test(), worker)
}

/// The same with a control socket (for upgrades of the master): the master
/// and the socket's path.
fn start_with_control(worker: Value) -> (Master, PathBuf) {
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock");
    let m = start_with(b.set("controlSocket", sock.display().to_string()), worker);
    (m, sock)
}

fn start_with(b: MasterBuilder, worker: Value) -> Master {
    let m = b
        .merge(json!({
            "notify": "systemd", "probe": false, "magic": 1, "version": "hello-1",
            "sharedState": true, "worker": worker, "readyTimeout": 30, "shutdownTimeout": 30,
        }))
        .spawn();
    m.wait_events_after(0, "worker.ready", 2, T);
    assert!(wait_until(T, || get_ok(m.port, "/").is_ok()), "no answer on port {}\n{}", m.port, m.diagnostics());
    m
}

/// One request on a new connection: Ok(worker pid) for a complete 200.
fn get_ok(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {}", e))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET {} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path).as_bytes())
        .map_err(|e| format!("write: {}", e))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("read: {}", e))?;
    if !line.starts_with("HTTP/1.1 200") && !line.starts_with("HTTP/1.0 200") {
        return Err(format!("status line {:?}", line));
    }
    let (mut len, mut pid) = (None, String::new());
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| format!("read headers: {}", e))?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse::<usize>().ok(),
                "x-worker-pid" => pid = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len.ok_or("no Content-Length")?];
    r.read_exact(&mut body).map_err(|e| format!("read body: {}", e))?;
    Ok(pid)
}

#[derive(Default)]
struct Stats {
    ok: u64,
    failures: Vec<String>,
    latencies: Vec<Duration>,
    pids: std::collections::BTreeSet<String>,
}

/// Clients on new connections: quick requests, and slow ones (300 ms) so
/// that requests are in flight at every swap.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<Mutex<Stats>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let threads = (0..5)
            .map(|i| {
                let (stop, stats) = (stop.clone(), stats.clone());
                let path = if i < 2 { "/delay/300" } else { "/" };
                std::thread::spawn(move || {
                    // Bounded: at most 10 minutes, whatever happens.
                    let end = Instant::now() + Duration::from_secs(600);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        let t = Instant::now();
                        let r = get_ok(port, path);
                        let mut s = stats.lock().unwrap();
                        match r {
                            Ok(pid) => {
                                s.ok += 1;
                                s.latencies.push(t.elapsed());
                                s.pids.insert(pid);
                            }
                            Err(e) => s.failures.push(e),
                        }
                        drop(s);
                        // Paced: the machine is shared; the swaps, not the rate, are under test.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Load { stop, threads, stats }
    }

    /// Requests answered so far.
    fn ok(&self) -> u64 {
        self.stats.lock().unwrap().ok
    }

    /// Wait until `n` more requests than `since` were answered (60 s at most).
    fn wait_ok_after(&self, since: u64, n: u64) {
        assert!(wait_until(T, || self.ok() >= since + n), "only {} requests answered in {:?}", self.ok() - since, T);
    }

    /// Wait until `n` distinct server processes have answered (60 s at most).
    fn wait_processes(&self, n: usize) {
        let seen = || self.stats.lock().unwrap().pids.len();
        assert!(wait_until(T, || seen() >= n), "answers from {} server processes in {:?}, {} expected", seen(), T, n);
    }

    fn finish(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.stats.lock().unwrap())
    }
}

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Server processes that answer per generation: 2 servers of 2 processes.
const PROCESSES: usize = 4;

/// Roll `m` over `RESTARTS` times under load; 0 failed requests. Prints
/// the figures. Each generation's processes have all answered before the
/// next swap: a server says READY=1 before its own workers are all up (seen
/// with uWSGI, whose master then waited for a worker still starting when
/// SIGTERM came, past shutdownTimeout).
fn roll_over_under_load(name: &str, m: &Master) {
    let load = Load::start(m.port);
    load.wait_processes(PROCESSES);
    let mut durations = Vec::new();
    for i in 0..RESTARTS {
        let mark = m.mark();
        m.signal(libc::SIGUSR2);
        let (_, done) = m.wait_event_after(mark, "restart.complete", T);
        assert_eq!(done["generation"], i + 2);
        durations.push(done["duration_ms"].as_u64().unwrap());
        load.wait_processes(PROCESSES * (i + 2));
    }
    let mut s = load.finish();
    let quick = s.latencies.clone();
    eprintln!(
        "{}: {} restarts under load, rollover {:?} ms; {} requests ok, {} failed; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} server processes answered",
        name,
        RESTARTS,
        durations,
        s.ok,
        s.failures.len(),
        percentile(&mut quick.clone(), 0.5),
        percentile(&mut s.latencies, 0.99),
        percentile(&mut quick.clone(), 1.0),
        s.pids.len()
    );
    for f in s.failures.iter().take(10) {
        eprintln!("  failed: {}", f);
    }
    assert!(s.failures.is_empty(), "{} failed requests: {:?}", s.failures.len(), &s.failures[..s.failures.len().min(10)]);
    assert!(s.ok > 50, "too little load to mean anything: {}", s.ok);
    assert!(m.events("restart.abort").is_empty());
    assert!(m.events("worker.kill").is_empty(), "every old server exited by itself after SIGTERM");
}

#[test]
fn gunicorn_rolls_over_under_load_with_no_failed_request() {
    let _g = exclusive();
    let m = start(gunicorn("hello:app", &[]));
    roll_over_under_load("gunicorn", &m);
}

#[test]
fn uwsgi_rolls_over_under_load_with_no_failed_request() {
    let _g = exclusive();
    let m = start(uwsgi());
    roll_over_under_load("uwsgi", &m);
}

#[test]
fn a_server_that_fails_at_start_aborts_the_restart_and_locks_out() {
    let _g = exclusive();
    let mut m = start(gunicorn("hello:app", &[]));
    let load = Load::start(m.port);
    load.wait_processes(PROCESSES);
    let old = m.events("worker.ready").iter().map(|r| worker_pid_of(r).unwrap()).collect::<Vec<_>>();
    // The deploy names an application that does not exist: gunicorn
    // (--preload) exits before READY=1.
    m.rewrite_config(|c| {
        c.insert("worker".into(), gunicorn("no_such_module:app", &["--preload"]));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, abort) = m.wait_event_after(mark, "restart.abort", T);
    assert_eq!(abort["reason"], "new worker exited", "{}", abort);
    assert!(abort["stderr"].as_str().unwrap().contains("No module named 'no_such_module'"), "{}", abort);
    m.wait_event_after(mark, "master.lockout", T);
    // Locked out: the next restart is refused, the old servers keep serving.
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, r) = m.wait_event_after(mark, "restart.refused", T);
    assert_eq!(r["reason"], "aborted restart");
    // The old servers go on answering after the abort.
    load.wait_ok_after(load.ok(), 20);
    let s = load.finish();
    eprintln!("broken gunicorn deploy: {} requests ok, {} failed", s.ok, s.failures.len());
    assert!(s.failures.is_empty(), "{:?}", &s.failures[..s.failures.len().min(10)]);
    assert!(old.iter().all(|&p| pid_alive(p)), "the old servers still run");
    assert!(get_ok(m.port, "/").is_ok());
}

/// UPGRADE WAIT three times under load with gunicorn workers: every upgrade
/// hands their notify socket over and rolls them over (their READY=1
/// counted by the new image), no request fails; a restart after the
/// upgrades completes too.
#[test]
fn gunicorn_workers_are_upgraded_under_load_with_no_failed_request() {
    let _g = exclusive();
    let (m, sock) = start_with_control(gunicorn("hello:app", &[]));
    let pid = m.pid();
    let load = Load::start(m.port);
    load.wait_processes(PROCESSES);
    let mut took = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        let a = ask(&sock, "UPGRADE WAIT");
        took.push(t.elapsed().as_millis() as u64);
        assert_eq!(a, "ACK complete", "upgrade {}\n{}", i, m.diagnostics());
        // Each upgrade rolls the servers over: all of the new ones answer
        // before the next swap (see roll_over_under_load).
        load.wait_processes(PROCESSES * (i + 2));
    }
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, done) = m.wait_event_after(mark, "restart.complete", T);
    assert_eq!(done["generation"], 5);
    let s = load.finish();
    eprintln!("gunicorn: 3 upgrades (each with its roll-over) in {:?} ms, then a restart; {} requests ok, {} failed", took, s.ok, s.failures.len());
    assert!(s.failures.is_empty(), "{} failed requests: {:?}", s.failures.len(), &s.failures[..s.failures.len().min(10)]);
    assert!(s.ok > 50, "too little load to mean anything: {}", s.ok);
    assert_eq!(m.events("master.upgrade").len(), 3);
    assert_eq!(m.pid(), pid);
    assert!(m.events("restart.abort").is_empty() && m.events("worker.kill").is_empty());
}

/// A broken deploy of gunicorn workers locks the master out; once it is
/// fixed, an upgrade ends the lockout without a failed request.
#[test]
fn an_upgrade_ends_a_lockout_of_gunicorn_workers() {
    let _g = exclusive();
    let (mut m, sock) = start_with_control(gunicorn("hello:app", &[]));
    let load = Load::start(m.port);
    m.rewrite_config(|c| {
        c.insert("worker".into(), gunicorn("no_such_module:app", &["--preload"]));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    m.wait_event_after(mark, "master.lockout", T);
    assert_eq!(status(&sock)["state"], "lockout");
    m.rewrite_config(|c| {
        c.insert("worker".into(), gunicorn("hello:app", &[]));
    });
    let a = ask(&sock, "UPGRADE WAIT");
    assert_eq!(a, "ACK complete", "{}", m.diagnostics());
    let up = m.wait_for_event("master.upgrade", T);
    assert_eq!(up["lockout_cleared"], true);
    let st = status(&sock);
    assert_eq!((&st["state"], &st["lockout"]), (&json!("running"), &json!(false)), "{}", st);
    load.wait_ok_after(load.ok(), 20);
    let s = load.finish();
    eprintln!("gunicorn lockout ended by an upgrade: {} requests ok, {} failed", s.ok, s.failures.len());
    assert!(s.failures.is_empty(), "{:?}", &s.failures[..s.failures.len().min(10)]);
}

/// The README's gunicorn recipe as published (no `--preload`) and a deploy
/// whose application cannot be imported: gunicorn says `READY=1` before its
/// workers import the application, then its arbiter exits (status 3,
/// "Worker failed to boot"). Without the soak this stopped the old
/// generation and took the service down; with it the restart is aborted,
/// the old servers keep serving, no request fails. `minReady` is 60 s, not
/// the default 5 s: how long after `READY=1` the arbiter exits is
/// gunicorn's own time (0.5 to 1 s on an idle machine, 13 s seen at a load
/// average of 32, when the default's soak had passed and an old server was
/// stopped for the broken deploy); what is tested is that the soak catches
/// an exit inside it, not how fast gunicorn fails.
#[test]
fn the_readme_gunicorn_recipe_without_preload_and_a_broken_app_aborts_the_restart() {
    let _g = exclusive();
    let recipe = |app: &str| json!([server("gunicorn", "gunicorn"), "--workers", "2", "--chdir", app_dir().display().to_string(), app]);
    let mut m = start(recipe("hello:app"));
    let load = Load::start(m.port);
    let old = m.events("worker.ready").iter().map(|r| worker_pid_of(r).unwrap()).collect::<Vec<_>>();
    load.wait_processes(PROCESSES);
    m.rewrite_config(|c| {
        c.insert("worker".into(), recipe("no_such_module:app"));
        // Longer than gunicorn takes to fail on a loaded machine (above).
        c.insert("minReady".into(), json!(60));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (at, abort) = m.wait_event_after(mark, "restart.abort", T);
    // No old server was stopped for a new one that had not passed its soak.
    let recs = m.log_records();
    let drained: Vec<&Value> = recs[mark..at].iter().filter(|r| r["generation"] == 1 && r["msg"].as_str().is_some_and(|s| s.starts_with("asking worker"))).collect();
    assert!(drained.is_empty(), "old servers stopped for a deploy that then failed: {:?}", drained);
    assert_eq!(abort["reason"], "new worker exited", "{}", abort);
    assert!(abort["detail"].as_str().unwrap().contains("after READY=1"), "it said READY=1 first: {}", abort);
    assert!(abort["stderr"].as_str().unwrap().contains("Worker failed to boot"), "{}", abort);
    let (_, soak) = m.wait_event_after(mark, "worker.soak", T);
    assert_eq!(soak["min_ready_ms"], 60000, "{}", soak);
    eprintln!("gunicorn's arbiter exited {} ms after READY=1 (the soak's start)", soak_to_exit_ms(&m.log_records(), mark));
    m.wait_event_after(mark, "master.lockout", T);
    load.wait_ok_after(load.ok(), 20);
    let s = load.finish();
    eprintln!("broken gunicorn deploy without --preload: {} requests ok, {} failed", s.ok, s.failures.len());
    assert!(s.failures.is_empty(), "{:?}", &s.failures[..s.failures.len().min(10)]);
    assert!(s.ok > 20, "too little load to mean anything: {}", s.ok);
    assert!(old.iter().all(|&p| pid_alive(p)), "the old servers still run");
    assert!(m.events("restart.complete").is_empty());
    assert!(get_ok(m.port, "/").is_ok());
}

/// Milliseconds from the first `worker.soak` after record `from` to the
/// `restart.abort` (the new arbiter's exit), by the records' times.
fn soak_to_exit_ms(recs: &[Value], from: usize) -> i64 {
    let ms = |r: &Value| -> Option<i64> {
        let t = r["time"].as_str()?; // 2026-01-01T00:00:00.000Z
        let (h, m, s) = (t.get(11..13)?.parse::<i64>().ok()?, t.get(14..16)?.parse::<i64>().ok()?, t.get(17..23)?.parse::<f64>().ok()?);
        Some((h * 3600 + m * 60) * 1000 + (s * 1000.0) as i64)
    };
    let at = |e: &str| recs[from..].iter().find(|r| event_of(r) == e).and_then(ms).unwrap_or(0);
    at("restart.abort") - at("worker.soak")
}

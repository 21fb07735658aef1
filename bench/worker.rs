//! Benchmark (not a test): the built-in worker under real traffic, with
//! nginx (Debian's `nginx-light`, one worker process, `return 200` of the
//! same `/healthz` body) as the yardstick, in the same run and pinned the
//! same way: the server on CPU 0, the load generator (`wrk`, or this
//! process) on CPU 1. Prints, for both and as a ratio: keep-alive GET/s and
//! PUT/s, new connections/s, RSS with 10,000 idle connections, p99 of a normal
//! client beside 10,000 idle and beside 5,000 slow clients; the peak RSS of
//! one worker (default config) under each hostile shape (`memory`): 2,000
//! slow readers of a 1 MiB object, beside nginx's for 2,000 slow readers of
//! a 1 MiB static file, and 64 clients of 1 MiB PUT bodies for 20 s (arrays,
//! then strings); then failed requests of pooled keep-alive clients (idle
//! gaps 0.2 to 4 s, no retry) over 20 restarts of a master with 2 workers on
//! secantusd-py, and in steady state for as long.
//!
//! Both keep idle connections 120 s here (so that all 10,000 are open at
//! once when RSS is read). Run: `scripts/bench worker` (installs wrk and
//! nginx-light when missing).
//! Every load is bounded in time and count and uses loopback only. Nothing is
//! asserted: the figures depend on the machine and on its load.
#![deny(unsafe_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVER_CPU: &str = "0";
const LOAD_CPU: &str = "1";
const WRK_SECS: u32 = 4;
/// Rate runs alternate between the servers this many times each; the best
/// run counts (the machine is shared: the best run is the least disturbed).
const ROUNDS: usize = 3;
const IDLE: usize = 10_000;
const SLOW: usize = 5_000;
const RESTARTS: usize = 20;
/// The large object (and static file) of the memory shapes.
const BIG: usize = 1024 * 1024;
/// Slow readers of it.
const SLOW_READERS: usize = 2_000;
/// Clients of large PUT bodies, and for how long.
const FLOODERS: usize = 64;
const FLOOD_SECS: u64 = 20;
/// The defaults of `params.maxBuffered` and `params.maxBytes`, in kB.
const BUDGET_KB: u64 = 64 * 1024;
const MAX_BYTES_KB: u64 = 128 * 1024;
/// The bound README states: code and threads (10 MB) + maxBuffered + what
/// the store holds + 1 KiB per connection, in kB.
fn stated_bound_kb(stored_kb: u64, connections: u64) -> u64 {
    10 * 1024 + BUDGET_KB + stored_kb + connections
}

/// Pin this process (and the threads it starts from now on) to the load CPU.
fn pin_self() {
    let _ = Command::new("taskset").args(["-p", "-c", LOAD_CPU, &std::process::id().to_string()]).output();
}


/// A server under test: its serving pid (nginx: the worker process) and port.
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
    serving_pid: i32,
    _dir: Option<TestDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_worker_pinned(dir: &TestDir) -> Server {
    start_worker_config(dir, json!({"threads": 1, "params": {"idleTimeout": 120}}))
}

/// The worker (memory driver, on the server CPU) with these config keys.
fn start_worker_config(dir: &TestDir, extra: serde_json::Value) -> Server {
    let port = free_port();
    let cfg = dir.join("worker.json");
    let mut c = json!({"address": "127.0.0.1", "port": port, "driver": "memory", "logLevel": "warn"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    std::fs::write(&cfg, c.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("worker.log")).unwrap();
    let child = Command::new("taskset")
        .args(["-c", SERVER_CPU])
        .arg(worker_bin())
        .arg("-c")
        .arg(&cfg)
        .env_remove("LISTEN_FDS")
        .env_remove("ZDRESTART_NOTIFY_FD")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("taskset zdrestart-worker");
    assert!(wait_until(Duration::from_secs(15), || port_accepts(port)), "worker did not start");
    let pid = child.id() as i32;
    Server { name: "zdrestart-worker", child, port, serving_pid: pid, _dir: None }
}

fn start_nginx(healthz_body: &str) -> Option<Server> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists())?;
    let dir = TestDir::new("bench-nginx");
    let port = free_port();
    let p = |s: &str| dir.join(s).display().to_string();
    for d in ["body", "proxy", "fastcgi", "uwsgi", "scgi", "www"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    // The static file of the slow-reader shape (`memory`).
    std::fs::write(dir.join("www/big.json"), big_object(BIG, false)).unwrap();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {err} warn;\nworker_rlimit_nofile 20000;\n\
         events {{ worker_connections 19000; }}\n\
         http {{\n  access_log off;\n  keepalive_timeout 120s;\n  keepalive_requests 100000000;\n\
           client_body_temp_path {b};\n  proxy_temp_path {pr};\n  fastcgi_temp_path {f};\n  uwsgi_temp_path {u};\n  scgi_temp_path {s};\n\
           sendfile on;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location = /big.json {{\n      root {www};\n      default_type application/json;\n    }}\n\
             location / {{\n      default_type application/json;\n      return 200 '{body}';\n    }}\n  }}\n}}\n",
        pid = p("nginx.pid"),
        err = p("error.log"),
        b = p("body"),
        pr = p("proxy"),
        f = p("fastcgi"),
        u = p("uwsgi"),
        s = p("scgi"),
        port = port,
        body = healthz_body.replace('\'', "\\'"),
        www = p("www"),
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("taskset")
        .args(["-c", SERVER_CPU])
        .arg(&nginx)
        .args(["-p", &p(""), "-c", &p("nginx.conf"), "-e", &p("error.log")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .ok()?;
    let master = child.id() as i32;
    if !wait_until(Duration::from_secs(10), || port_accepts(port)) {
        eprintln!("nginx did not start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
        return None;
    }
    let mut worker = master;
    wait_until(Duration::from_secs(5), || {
        if let Some(c) = children_of(master).first() {
            worker = c.pid;
            true
        } else {
            false
        }
    });
    Some(Server { name: "nginx", child, port, serving_pid: worker, _dir: Some(dir) })
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid)).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// One `wrk` run against `s`: (requests per second, server CPU µs per request).
/// CPU time per request barely depends on what else the machine runs, unlike
/// the rate: it is the fairer comparison on a shared machine.
fn wrk_cpu(s: &Server, path: &str, extra: &[&str], script: Option<&Path>) -> (f64, f64) {
    let t0 = cpu_ticks(s.serving_pid);
    let (rate, n) = wrk_n(s.port, path, 50, extra, script);
    let ticks = cpu_ticks(s.serving_pid).saturating_sub(t0);
    // USER_HZ is 100 on Linux.
    (rate, if n > 0 { ticks as f64 * 10_000.0 / n as f64 } else { f64::NAN })
}

/// `wrk` pinned to the load CPU: requests per second.
#[allow(dead_code)]
fn wrk(port: u16, path: &str, conns: u32, extra: &[&str], script: Option<&Path>) -> f64 {
    wrk_n(port, path, conns, extra, script).0
}

/// `wrk` pinned to the load CPU: requests per second and requests done.
fn wrk_n(port: u16, path: &str, conns: u32, extra: &[&str], script: Option<&Path>) -> (f64, u64) {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", LOAD_CPU, "wrk", "-t1", &format!("-c{}", conns), &format!("-d{}s", WRK_SECS)]);
    cmd.args(extra);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(format!("http://127.0.0.1:{}{}", port, path));
    let out = cmd.output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let done = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Non-2xx") || l.contains("Socket errors")).collect();
    if !errors.is_empty() {
        eprintln!("    wrk {}: {}", path, errors.join("; "));
    }
    (rate, done)
}

/// Latencies of `n` sequential keep-alive GETs of one normal client (ms, sorted).
fn normal_client(port: u16, n: usize) -> Vec<f64> {
    let mut c = KeepAlive::with_timeout(port, Duration::from_secs(10));
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        match c.get("/healthz") {
            Ok(r) if r.status == 200 => lat.push(t.elapsed().as_secs_f64() * 1000.0),
            _ => lat.push(f64::INFINITY),
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    lat
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Open `n` idle keep-alive connections, each used once; how many succeeded.
fn open_idle(port: u16, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
            out.push(s);
        }
    }
    out
}

/// `n` slow clients: a partial head, then a byte a second, until `stop`.
fn slow_clients(port: u16, n: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_nonblocking(true);
            let _ = (&s).write_all(b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Slow: ");
            socks.push(s);
        }
    }
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            for s in &socks {
                let _ = (&*s).write(b"a");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}

#[derive(Default)]
struct Figures {
    get: f64,
    put: f64,
    fresh: f64,
    /// Server CPU µs per request (lowest of the runs).
    get_us: f64,
    put_us: f64,
    fresh_us: f64,
    idle_kb: f64,
    idle_accepted: usize,
    p99_idle: f64,
    p99_slow: f64,
    p99_alone: f64,
}

/// Rates, alternating between the servers (best of `ROUNDS` each).
fn rates(servers: &[&Server], figs: &mut [Figures], put_script: &Path) {
    let best = |(rate, us): (f64, f64), r: &mut f64, u: &mut f64| {
        *r = r.max(rate);
        *u = if *u == 0.0 { us } else { u.min(us) };
    };
    for _ in 0..ROUNDS {
        for (s, f) in servers.iter().zip(figs.iter_mut()) {
            best(wrk_cpu(s, "/healthz", &[], None), &mut f.get, &mut f.get_us);
        }
        for (s, f) in servers.iter().zip(figs.iter_mut()) {
            best(wrk_cpu(s, "/objects/bench/1", &[], Some(put_script)), &mut f.put, &mut f.put_us);
        }
        for (s, f) in servers.iter().zip(figs.iter_mut()) {
            best(wrk_cpu(s, "/healthz", &["-H", "Connection: close"], None), &mut f.fresh, &mut f.fresh_us);
        }
    }
}

/// p99 of a normal client: the best of `ROUNDS` runs of 2,000 requests (on
/// a shared machine the tail of one run is mostly other people's work).
fn p99(port: u16) -> f64 {
    (0..ROUNDS).map(|_| pct(&normal_client(port, 2000), 0.99)).fold(f64::INFINITY, f64::min)
}

/// Memory of idle connections and latency of a normal client beside idle and slow ones.
fn crowd(s: &Server, f: &mut Figures) {
    f.p99_alone = p99(s.port);
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_kb(s.serving_pid);
    let idle = open_idle(s.port, IDLE);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kb(s.serving_pid);
    f.idle_accepted = idle.len();
    f.idle_kb = (after.saturating_sub(before)) as f64 / idle.len().max(1) as f64;
    f.p99_idle = p99(s.port);
    drop(idle);
    std::thread::sleep(Duration::from_secs(1));
    let stop = Arc::new(AtomicBool::new(false));
    let slow = slow_clients(s.port, SLOW, stop.clone());
    f.p99_slow = p99(s.port);
    stop.store(true, Ordering::SeqCst);
    let _ = slow.join();
    std::thread::sleep(Duration::from_secs(1));
}

fn print_figures(s: &Server, f: &Figures) {
    println!(
        "  {:<16} server CPU per request: keep-alive GET {:.1} us, PUT {:.1} us, new connection {:.1} us",
        s.name, f.get_us, f.put_us, f.fresh_us
    );
    println!(
        "  {:<16} keep-alive GET {:>7.0}/s  PUT {:>7.0}/s  new connections {:>6.0}/s | {} of {} idle connections, {:.2} KB each | p99 of a normal client: alone {:.2} ms, beside {} idle {:.2} ms, beside {} slow {:.2} ms",
        s.name, f.get, f.put, f.fresh, f.idle_accepted, IDLE, f.idle_kb, f.p99_alone, IDLE, f.p99_idle, SLOW, f.p99_slow
    );
}

/// Pooled keep-alive clients (40, gaps 0.2 to 4 s, no retry): first in
/// steady state, then over `RESTARTS` restarts for as long again; the
/// failures of both (a restart should cost nothing steady state does not).
fn pooled_restarts() {
    let mongo = Mongo::start();
    let m = Master::builder("bench-pooled")
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri(), "dbname": "benchpool"}, "workers": 2,
                      "threads": 4, "logLevel": "info", "shutdownTimeout": 20}))
        .start();
    let clients = |port: u16, stop: Arc<AtomicBool>| -> Vec<std::thread::JoinHandle<(u64, Vec<String>)>> {
        const GAPS_MS: [u64; 8] = [200, 4000, 500, 3000, 1000, 1500, 2500, 3500];
        (0..40)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut c = KeepAlive::with_timeout(port, Duration::from_secs(15));
                    let (mut ok, mut failed) = (0u64, Vec::new());
                    let mut k = i;
                    while !stop.load(Ordering::SeqCst) {
                        match c.request("PUT", &format!("/objects/p{}/k{}", i, k % 50), Some(b"{\"v\":1}")) {
                            Ok(r) if r.status == 200 => ok += 1,
                            Ok(r) => failed.push(format!("{}", r.status)),
                            Err(e) => failed.push(e.to_string()),
                        }
                        std::thread::sleep(Duration::from_millis(GAPS_MS[k % GAPS_MS.len()]));
                        k += 1;
                    }
                    (ok, failed)
                })
            })
            .collect()
    };
    let join = |hs: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>| {
        let (mut ok, mut failed) = (0, Vec::new());
        for h in hs {
            let (o, f) = h.join().unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    };

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let hs = clients(m.port, stop.clone());
    let mut durations = Vec::new();
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..RESTARTS {
        let mark = m.mark();
        m.signal(libc::SIGUSR2);
        let (_, done) = m.wait_event_after(mark, "restart.complete", Duration::from_secs(120));
        durations.push(done["duration_ms"].as_u64().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::SeqCst);
    let (ok_r, failed_r) = join(hs);
    let span = t0.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let hs = clients(m.port, stop.clone());
    std::thread::sleep(span);
    stop.store(true, Ordering::SeqCst);
    let (ok_s, failed_s) = join(hs);

    durations.sort();
    println!(
        "  pooled keep-alive clients (40, gaps 0.2-4 s, no retry) on 2 workers: over {} restarts {} requests, {} failed; steady state for as long ({:.0} s) {} requests, {} failed; restart {} ms median, {} ms max",
        RESTARTS,
        ok_r + failed_r.len() as u64,
        failed_r.len(),
        span.as_secs_f64(),
        ok_s + failed_s.len() as u64,
        failed_s.len(),
        durations[durations.len() / 2],
        durations.last().unwrap()
    );
    for f in failed_r.iter().take(5) {
        println!("    failed during restarts: {}", f);
    }
    for f in failed_s.iter().take(5) {
        println!("    failed in steady state: {}", f);
    }
}

/// RSS in MB from kB.
fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Slow readers of one 1 MiB answer on `s` (`path`): (RSS before, peak RSS,
/// answers stuck) in kB. Each has a 2 KB window and an Ethernet segment
/// size (so that the kernel takes tens of kB of each answer, as for a remote
/// client, not all of it) and never reads.
fn slow_reader_peak(s: &Server, path: &str) -> (u64, u64, usize) {
    let before = rss_kb(s.serving_pid);
    let readers = slow_readers(s.port, SLOW_READERS, path, 2048);
    wait_until(Duration::from_secs(120), || answers_stuck(s.serving_pid, &readers) == readers.len());
    let stuck = answers_stuck(s.serving_pid, &readers);
    let peak = peak_rss_kb(s.serving_pid);
    drop(readers);
    (before, peak, stuck)
}

/// Peak RSS of one worker under each hostile shape, beside nginx's for the
/// shape it can be driven with (slow readers of a 1 MiB static file).
fn memory(nginx_body: &str) {
    println!(
        "  memory (default config: maxBuffered 64 MiB, maxBytes 128 MiB, threads 4; a fresh worker per shape; peak = VmHWM):"
    );
    let dir = TestDir::new("bench-memory");
    let w = start_worker_config(&dir, json!({}));
    assert_eq!(http(w.port, "PUT", "/objects/big/1", Some(&big_object(BIG, false))).map(|r| r.status).ok(), Some(200));
    let (before, peak, stuck) = slow_reader_peak(&w, "/objects/big/1");
    print!(
        "    {} slow readers (2 KB window) of one 1 MiB object: zdrestart-worker {:.1} MB -> peak {:.1} MB (stated bound {:.1} MB; {} answers pending)",
        SLOW_READERS,
        mb(before),
        mb(peak),
        mb(stated_bound_kb(BIG as u64 / 1024, SLOW_READERS as u64)),
        stuck
    );
    drop(w);
    match start_nginx(nginx_body) {
        Some(n) => {
            let (before, peak, stuck) = slow_reader_peak(&n, "/big.json");
            println!(" | nginx (sendfile on) of a 1 MiB file {:.1} MB -> peak {:.1} MB ({} pending)", mb(before), mb(peak), stuck);
        }
        None => println!(" | nginx not found"),
    }
    // (arrays, one id per client), (strings, one id per client), (strings, a new id each time).
    for (array, fresh) in [(true, false), (false, false), (false, true)] {
        let dir = TestDir::new("bench-memory");
        let w = start_worker_config(&dir, json!({}));
        let before = rss_kb(w.serving_pid);
        let until = Instant::now() + Duration::from_secs(FLOOD_SECS);
        let t0 = cpu_ticks(w.serving_pid);
        let f = put_flood(w.port, FLOODERS, usize::MAX, Some(until), &big_object(BIG, array), fresh);
        let answers: u64 = f.statuses.values().sum();
        let cpu_us = cpu_ticks(w.serving_pid).saturating_sub(t0) * 10_000 / answers.max(1);
        let peak = peak_rss_kb(w.serving_pid);
        // The stated bound: what it had, plus maxBuffered, plus what the store holds.
        let ok = f.statuses.get(&200).copied().unwrap_or(0);
        let objects = if fresh { ok } else { ok.min(FLOODERS as u64) };
        let stored_kb = (objects * (BIG as u64 + 128) / 1024).min(MAX_BYTES_KB);
        println!(
            "    {} clients of 1 MiB PUT bodies ({}, {}) for {} s: zdrestart-worker {:.1} MB -> peak {:.1} MB (stated bound {:.1} MB, {:.1} MB stored); answers {:?}, {} connection errors; server CPU {} us per answer",
            FLOODERS,
            if array { "{\"a\":[0,0,...]}" } else { "{\"s\":\"xx...\"}" },
            if fresh { "a new id each time" } else { "one id per client" },
            FLOOD_SECS,
            mb(before),
            mb(peak),
            mb(stated_bound_kb(stored_kb, FLOODERS as u64)),
            mb(stored_kb),
            f.statuses,
            f.errors.len(),
            cpu_us
        );
    }
}

fn main() {
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |w: &str| only.is_empty() || only.iter().any(|o| o == w);
    pin_self();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "zdrestart-worker benchmark: server on CPU {}, load generator (wrk -t1 -c50, best of {} runs of {} s alternating with nginx; this process) on CPU {}; load average before: {}",
        SERVER_CPU,
        ROUNDS,
        WRK_SECS,
        LOAD_CPU,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    if want("http") {
        let dir = TestDir::new("bench-worker");
        let script = dir.join("put.lua");
        std::fs::write(&script, "wrk.method = \"PUT\"\nwrk.body = '{\"a\":1,\"b\":\"bench\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n")
            .unwrap();
        let w = start_worker_pinned(&dir);
        let body = get(w.port, "/healthz").text();
        let n = start_nginx(&body);
        let mut servers = vec![&w];
        if let Some(n) = &n {
            servers.push(n);
        } else {
            println!("  nginx not found (apt-get install nginx-light): no yardstick");
        }
        let mut figs: Vec<Figures> = servers.iter().map(|_| Figures::default()).collect();
        rates(&servers, &mut figs, &script);
        for (s, f) in servers.iter().zip(figs.iter_mut()) {
            crowd(s, f);
        }
        for (s, f) in servers.iter().zip(figs.iter()) {
            print_figures(s, f);
        }
        if let [fw, fnx] = figs.as_slice() {
            let r = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
            println!(
                "  ratio worker/nginx: requests per CPU second: keep-alive GET {:.2}x, PUT {:.2}x, new connections {:.2}x",
                r(fnx.get_us, fw.get_us),
                r(fnx.put_us, fw.put_us),
                r(fnx.fresh_us, fw.fresh_us)
            );
            println!(
                "  ratio worker/nginx: rate keep-alive GET {:.2}x, PUT {:.2}x, new connections {:.2}x, memory per idle connection {:.2}x, p99 beside idle {:.2}x, beside slow {:.2}x",
                r(fw.get, fnx.get),
                r(fw.put, fnx.put),
                r(fw.fresh, fnx.fresh),
                r(fw.idle_kb, fnx.idle_kb),
                r(fw.p99_idle, fnx.p99_idle),
                r(fw.p99_slow, fnx.p99_slow)
            );
        }
    }
    if want("memory") {
        let _ = Command::new("taskset").args(["-p", "-c", "0-1", &std::process::id().to_string()]).output();
        memory("{}");
    }
    if want("restarts") {
        // Failures, not speed: the master, workers and database get both CPUs.
        let _ = Command::new("taskset").args(["-p", "-c", "0-1", &std::process::id().to_string()]).output();
        pooled_restarts();
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
}

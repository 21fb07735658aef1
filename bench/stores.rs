//! Benchmark (not a test): the three drivers of the built-in worker in one
//! run, each behind a master with 2 workers (`threads` 4) on this machine:
//! `memory`, `sqlite` (default `synchronous` "normal", and "full"), and
//! `mongodb` on secantusd-py (a Python server on the same 2 cores: its limit,
//! not ours). For each: keep-alive GET and PUT rates and their p99 (`wrk -t2
//! -c32 --latency`, best of 3 runs of 4 s; PUTs of random keys of a small
//! JSON object; the drivers take turns, so that each meets the same moments
//! of a shared machine), then 3 zero-downtime restarts under load (8 keep-alive, 4
//! new-connection and 2 slow clients writing and reading back; not for
//! `memory`, whose restarts are refused): requests, failed requests, and
//! acknowledged writes missing afterwards.
//!
//! Run: `scripts/bench stores` (installs wrk when missing; secantusd-py from
//! the venv that scripts/test makes). Nothing is asserted: the figures depend
//! on the machine and on its load, which is printed.
#![deny(unsafe_code)]

use serde_json::json;
use std::path::Path;
use std::time::Duration;
use zdrestart_testkit::load::{self, Load, Spec};
use zdrestart_testkit::*;

const RUNS: usize = 3;
const SECS: u32 = 4;
const RESTARTS: usize = 3;
const SPEC: Spec = Spec { keepalive: 8, fresh: 4, slow: 2, slow_ms: 300 };

/// One wrk run: (requests per second, p99 in ms, non-2xx or socket errors).
fn wrk(port: u16, path: &str, script: Option<&Path>) -> (f64, f64, String) {
    // Tagged like every process of the harness: it dies with the benchmark.
    let mut cmd = spawn::command("wrk");
    cmd.args(["-t2", "-c32", &format!("-d{}s", SECS), "--latency"]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(format!("http://127.0.0.1:{}{}", port, path));
    let out = cmd.output().expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rate = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let p99 = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(ms)
        .unwrap_or(f64::NAN);
    let errors = text.lines().filter(|l| l.contains("Non-2xx") || l.contains("Socket errors")).collect::<Vec<_>>().join("; ");
    (rate, p99, errors)
}

/// utime + stime of a process (all its threads), in clock ticks (USER_HZ 100).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid)).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// One wrk run, and the CPU time its workers spent per request (µs): the
/// steadier figure on a shared machine, where rates swing with its load.
fn wrk_cpu(m: &Master, path: &str, script: Option<&Path>) -> (f64, f64, String, f64) {
    let pids = m.worker_pids();
    let t0: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let (rate, p99, errors) = wrk(m.port, path, script);
    let ticks = pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>().saturating_sub(t0);
    let n = rate * SECS as f64;
    (rate, p99, errors, if n > 0.0 { ticks as f64 * 10_000.0 / n } else { f64::NAN })
}

/// wrk's "812.00us", "5.12ms", "1.01s" in ms.
fn ms(v: &str) -> f64 {
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map(|x| x * factor).unwrap_or(f64::NAN)
}

struct Row {
    name: String,
    /// (requests per second, p99 ms, wrk's errors, workers' CPU µs per request)
    get: (f64, f64, String, f64),
    put: (f64, f64, String, f64),
    restarts: Option<(usize, usize, usize)>,
}

/// A master with 2 workers on `driver`, its control socket, the object GETs read.
fn start(name: &str, driver: serde_json::Value) -> (Master, std::path::PathBuf) {
    let b = Master::builder(&format!("bench-stores-{}", name.replace(' ', "-")));
    let sock = b.dir().join("ctl.sock");
    let m = b
        .merge(driver)
        .merge(json!({"workers": 2, "threads": 4, "logLevel": "info", "shutdownTimeout": 10, "readyTimeout": 30,
                      "controlSocket": sock.display().to_string()}))
        .start();
    // On new connections, so that both workers have it even with memory.
    for _ in 0..20 {
        assert_eq!(put_json(m.port, "/objects/bench/k", &json!({"a": 1, "b": "bench"})).status, 200);
    }
    (m, sock)
}

/// RESTARTS zero-downtime restarts under load: (requests, failed, acknowledged writes lost).
fn restarts(name: &str, m: &Master, sock: &Path) -> (usize, usize, usize) {
    let l = Load::start(m.port, SPEC);
    // Every generation takes traffic before the next swap (and the first
    // before the first one).
    let t = Duration::from_secs(60);
    l.wait_answered_by(&m.wait_worker_count(2, t), t);
    for _ in 0..RESTARTS {
        let c = ctl(sock, &["restart", "--wait"]);
        if c.code != 0 {
            println!("  {}: restart failed: {:?}", name, c);
        }
        l.wait_answered_by(&m.wait_worker_count(2, t), t);
    }
    let s = l.finish();
    let lost = load::verify_acked(m.port, &s.acked).len();
    for f in s.failures.iter().take(3) {
        println!("  {}: failed during restarts: {}", name, f);
    }
    (s.samples.len(), s.failures.len(), lost)
}

/// Every driver's GET, then every driver's PUT, RUNS times over, so that
/// each meets the same moments of a shared machine; the best run of each.
fn rates(masters: &[(&str, Master, std::path::PathBuf, bool)], put_script: &Path) -> Vec<Row> {
    let mut rows: Vec<Row> = masters
        .iter()
        .map(|(n, ..)| Row {
            name: n.to_string(),
            get: (0.0, f64::NAN, String::new(), f64::NAN),
            put: (0.0, f64::NAN, String::new(), f64::NAN),
            restarts: None,
        })
        .collect();
    for _ in 0..RUNS {
        for (row, (_, m, ..)) in rows.iter_mut().zip(masters) {
            let r = wrk_cpu(m, "/objects/bench/k", None);
            if r.0 > row.get.0 {
                row.get = r;
            }
        }
        for (row, (_, m, ..)) in rows.iter_mut().zip(masters) {
            let r = wrk_cpu(m, "/", Some(put_script));
            if r.0 > row.put.0 {
                row.put = r;
            }
        }
    }
    for (row, (name, m, sock, restart)) in rows.iter_mut().zip(masters) {
        if *restart {
            row.restarts = Some(restarts(name, m, sock));
        }
    }
    rows
}

fn main() {
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    };
    println!(
        "driver benchmark: master + 2 workers (threads 4) and wrk -t2 -c32 on the same {} CPUs, best of {} runs of {} s; load average before: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        RUNS,
        SECS,
        loadavg()
    );
    let dir = TestDir::new("bench-stores");
    let script = dir.join("put.lua");
    std::fs::write(
        &script,
        "wrk.method = \"PUT\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
         request = function()\n  return wrk.format(nil, \"/objects/bench/p\" .. math.random(1, 100000), nil, '{\"a\":1,\"b\":\"bench\"}')\nend\n",
    )
    .unwrap();
    let db = |n: &str| dir.join(n).display().to_string();
    let mongo = Mongo::start();
    let with = |(name, driver, restart): (&'static str, serde_json::Value, bool)| {
        let (m, sock) = start(name, driver);
        (name, m, sock, restart)
    };
    let masters = vec![
        with(("memory", json!({"driver": "memory"}), false)),
        with(("sqlite", json!({"driver": "sqlite", "params": {"path": db("normal.db")}}), true)),
        with(("sqlite synchronous full", json!({"driver": "sqlite", "params": {"path": db("full.db"), "synchronous": "full"}}), false)),
        with(("mongodb (secantusd-py)", json!({"driver": "mongodb", "params": {"uri": mongo.uri()}}), true)),
    ];
    let rows = rates(&masters, &script);
    let mem_get = rows[0].get.0;
    let mem_get_us = rows[0].get.3;
    let head = ["driver", "GET/s", "GET p99", "CPU/GET", "PUT/s", "PUT p99", "CPU/PUT", "GET/memory", "(per CPU s)"];
    println!(
        "  {:<24} {:>8} {:>9} {:>9} {:>8} {:>9} {:>9} {:>11} {:>11}  3 restarts under load: requests, failed, acknowledged writes lost",
        head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7], head[8]
    );
    for r in &rows {
        let restarts = match r.restarts {
            Some((n, f, l)) => format!("{}, {}, {}", n, f, l),
            None => "-".into(),
        };
        println!(
            "  {:<24} {:>8.0} {:>7.2}ms {:>7.1}us {:>8.0} {:>7.2}ms {:>7.1}us {:>10.2}x {:>10.2}x  {}",
            r.name,
            r.get.0,
            r.get.1,
            r.get.3,
            r.put.0,
            r.put.1,
            r.put.3,
            r.get.0 / mem_get.max(f64::MIN_POSITIVE),
            mem_get_us / r.get.3,
            restarts
        );
        for e in [&r.get.2, &r.put.2] {
            if !e.is_empty() {
                println!("    {}: wrk: {}", r.name, e);
            }
        }
    }
    println!("load average after: {}", loadavg());
}

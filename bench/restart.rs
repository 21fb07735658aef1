//! Benchmark (not a test): the service on MongoDB (secantusd-py) with N = 2, 4
//! and 8 workers under load, restarted several times; prints requests, failed
//! requests, throughput during restarts as a share of steady throughput,
//! p50/p99 latency steady and during restarts, restart duration per worker,
//! and the master's RSS and CPU time.
//!
//! Run: `cargo bench --bench restart` (after `scripts/test` set up the venv),
//! or `scripts/bench`. Figures depend on the machine; nothing is asserted.
#![deny(unsafe_code)]

use zdrestart_testkit::load::{self, Load, Sample, Spec};
use zdrestart_testkit::*;
use serde_json::json;
use std::time::{Duration, Instant};

const RESTARTS: usize = 3;

fn proc_field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{}/status", pid))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l[key.len()..].trim().to_string())
        .unwrap_or_default()
}

/// utime + stime of a process, in ms.
fn cpu_ms(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid)).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 10 // USER_HZ is 100 on Linux
}

fn run(mongo: &Mongo, workers: u32) {
    let m = Master::builder(&format!("bench-{}", workers))
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "workers": workers, "threads": 8,
                      "logLevel": "info", "shutdownTimeout": 10, "readyTimeout": 30}))
        .start();
    let spec = Spec { keepalive: 8, fresh: 4, slow: 4, slow_ms: 300 };
    let load = Load::start(m.port, spec);
    std::thread::sleep(Duration::from_secs(5));
    let mut windows = Vec::new();
    let mut durations = Vec::new();
    for _ in 0..RESTARTS {
        let mark = m.mark();
        let t0 = Instant::now();
        m.signal(libc::SIGUSR2);
        let (_, done) = m.wait_event_after(mark, "restart.complete", Duration::from_secs(120));
        windows.push((t0, Instant::now()));
        durations.push(done["duration_ms"].as_u64().unwrap_or(0));
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(1));
    let end = Instant::now();
    let stats = load.finish();
    let in_restart = |s: &Sample| windows.iter().any(|(a, b)| s.at >= *a && s.at <= *b);
    let fast: Vec<&Sample> = stats.samples.iter().filter(|s| !s.slow).collect();
    let steady: Vec<&Sample> = fast.iter().copied().filter(|s| !in_restart(s)).collect();
    let during: Vec<&Sample> = fast.iter().copied().filter(|s| in_restart(s)).collect();
    let restart_time: f64 = windows.iter().map(|(a, b)| (*b - *a).as_secs_f64()).sum();
    let total_time = (end - load_start(&stats)).as_secs_f64();
    let steady_rate = steady.len() as f64 / (total_time - restart_time).max(0.001);
    let during_rate = during.len() as f64 / restart_time.max(0.001);
    let mean_ms = durations.iter().sum::<u64>() as f64 / durations.len() as f64;
    println!(
        "N={:<2} requests {:>7} failed {:>3} retries {:>3} | steady {:>7.0} req/s, during restarts {:>7.0} req/s ({:>5.1}%) | \
         p50/p99 ms steady {:>6.1}/{:>6.1}, restarting {:>6.1}/{:>6.1} | restart {:>6.0} ms = {:>5.0} ms/worker | \
         master RSS {} CPU {} ms",
        workers,
        stats.samples.len(),
        stats.failures.len(),
        stats.retries,
        steady_rate,
        during_rate,
        100.0 * during_rate / steady_rate.max(0.001),
        load::percentile_ms(&steady, 0.5),
        load::percentile_ms(&steady, 0.99),
        load::percentile_ms(&during, 0.5),
        load::percentile_ms(&during, 0.99),
        mean_ms,
        mean_ms / workers as f64,
        proc_field(m.pid(), "VmRSS:"),
        cpu_ms(m.pid()),
    );
    for f in stats.failures.iter().take(5) {
        println!("    failed: {}", f);
    }
}

fn load_start(stats: &load::Stats) -> Instant {
    stats.samples.first().map(|s| s.at).unwrap_or_else(Instant::now)
}

fn main() {
    // `cargo bench` passes --bench; any other argument selects worker counts.
    let counts: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() { vec![2, 4, 8] } else { counts };
    let mongo = Mongo::start();
    println!(
        "zdrestart restart benchmark: MongoDB = secantusd-py, {} restarts per run, load = 8 keep-alive + 4 new-connection \
         clients (PUT/GET) + 4 clients of 300 ms requests; latencies exclude the 300 ms requests",
        RESTARTS
    );
    for n in counts {
        run(&mongo, n);
    }
}

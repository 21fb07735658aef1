//! Benchmark (not a test): the service on MongoDB (secantusd-py) with N = 2, 4
//! and 8 workers under load, restarted several times without a soak
//! (`minReady` 0: the rollout's own cost); prints requests, failed
//! requests, throughput during restarts as a share of steady throughput,
//! p50/p99 latency steady and during restarts, restart duration per worker,
//! and the master's RSS and CPU time.
//!
//! `soak` (`scripts/bench soak`): what the soak costs. N = 2 and 8 workers,
//! `maxSurge` 1 and 4, `minReady` 0 and the default, under light load:
//! restart duration, the rollout (restart.start to the last new worker
//! passed), a new worker's start to `READY=1`, and the estimate
//! ceil(N / maxSurge) x start-to-ready + minReady it should follow.
//!
//! Run: `cargo bench --bench restart [-- soak]` (after `scripts/test` set up
//! the venv), or `scripts/bench [soak]`. Figures depend on the machine;
//! nothing is asserted.
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
                      "logLevel": "info", "shutdownTimeout": 10, "readyTimeout": 30, "minReady": 0}))
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

/// Milliseconds between two records (their `time`).
fn ms_between(a: &serde_json::Value, b: &serde_json::Value) -> i64 {
    time_ms_of(b) - time_ms_of(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One soak configuration: `RESTARTS` restarts of N workers under light
/// load (new connections only, so that old workers drain at once).
fn soak_run(mongo: &Mongo, workers: u32, max_surge: u32, min_ready: Option<f64>) {
    let m = Master::builder(&format!("bench-soak-{}-{}-{}", workers, max_surge, min_ready.map_or(-1.0, |x| x)))
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "workers": workers, "threads": 4,
                      "logLevel": "info", "shutdownTimeout": 10, "readyTimeout": 30, "maxSurge": max_surge,
                      "minReady": min_ready}))
        .start();
    let load = Load::start(m.port, Spec { keepalive: 0, fresh: 2, slow: 1, slow_ms: 100 });
    std::thread::sleep(Duration::from_secs(1));
    let (mut restart, mut rollout, mut start) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RESTARTS {
        let mark = m.mark();
        m.signal(libc::SIGUSR2);
        let (_, done) = m.wait_event_after(mark, "restart.complete", Duration::from_secs(300));
        let recs = m.log_records();
        let recs = &recs[mark..];
        let began = recs.iter().find(|r| event_of(r) == "restart.start").unwrap();
        let generation = &began["generation"];
        let ours = |e: &str| -> Vec<&serde_json::Value> {
            recs.iter().filter(|r| event_of(r) == e && &r["generation"] == generation).collect()
        };
        // Without a soak a worker passes at READY=1.
        let passes = ours(if min_ready == Some(0.0) { "worker.ready" } else { "worker.passed" });
        restart.push(done["duration_ms"].as_f64().unwrap_or(0.0));
        rollout.push(ms_between(began, passes[passes.len() - 1]) as f64);
        start.extend(ours("worker.ready").iter().filter_map(|r| r["ms"].as_f64()));
        std::thread::sleep(Duration::from_secs(1));
    }
    let stats = load.finish();
    let soak = min_ready.unwrap_or(zdrestart::config::DEFAULT_MIN_READY.as_secs_f64()) * 1000.0;
    let s = median(start);
    let estimate = workers.div_ceil(max_surge) as f64 * s + soak;
    println!(
        "N={:<2} maxSurge {} minReady {:>4.1} s | restart {:>6.0} ms, rollout {:>6.0} ms (estimate {:>6.0} = {} x {:.0} + {:.0}) | \
         requests {:>5} failed {}",
        workers,
        max_surge,
        soak / 1000.0,
        median(restart),
        median(rollout),
        estimate,
        workers.div_ceil(max_surge),
        s,
        soak,
        stats.samples.len(),
        stats.failures.len(),
    );
}

fn main() {
    // `cargo bench` passes --bench; `soak` runs the soak's figures; any
    // other argument selects worker counts.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "soak") {
        let mongo = Mongo::start();
        println!(
            "zdrestart soak benchmark: MongoDB = secantusd-py, {} restarts per line (medians), load = 2 new-connection \
             clients + 1 of 100 ms requests; rollout = restart.start to the last new worker passed",
            RESTARTS
        );
        for workers in [2, 8] {
            for max_surge in [1, 4] {
                for min_ready in [Some(0.0), None] {
                    soak_run(&mongo, workers, max_surge, min_ready);
                }
            }
        }
        return;
    }
    let counts: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
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

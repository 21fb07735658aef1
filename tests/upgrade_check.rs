//! The new binary's check of an upgrade of the master (ARCHITECTURE.md,
//! "Upgrading the master"): it runs beside the master's loop, which goes on
//! serving control clients, replacing workers and passing their output on
//! while it waits (STATUS says `upgrading`); a check that hangs is refused
//! at its deadline; the state handed over is the one at exec time, checked
//! again when what the check judged changed meanwhile; an executable that
//! does not prove it read the state (the digest of its bytes) is refused;
//! and no line a worker writes is lost or cut at the exec. Each test starts
//! its master from a copy of the built `zdrestart` and replaces it (or puts
//! a script in its place) as a package upgrade would.
#![deny(unsafe_code)]

mod common;
mod programs;

use common::*;
use programs::{install_program, install_slow_master};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// A master started from `<dir>/bin/zdrestart` (a copy of the built one),
/// with a control socket; not waited for.
fn spawn(b: MasterBuilder) -> (Master, PathBuf, PathBuf) {
    let exe = b.dir().join("bin/zdrestart");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    install_copy(&master_bin(), &exe);
    let sock = b.dir().join("ctl.sock");
    let m = b.bin(&exe).set("controlSocket", sock.display().to_string()).spawn();
    (m, exe, sock)
}

fn start(b: MasterBuilder) -> (Master, PathBuf, PathBuf) {
    let (m, exe, sock) = spawn(b.set("worker", json!([worker_bin().display().to_string()])));
    m.wait_serving(T);
    (m, exe, sock)
}

fn pids(st: &Value) -> Vec<i64> {
    let mut v: Vec<i64> = st["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_i64().unwrap()).collect();
    v.sort();
    v
}

fn ready(st: &Value) -> usize {
    st["workers"].as_array().unwrap().iter().filter(|w| w["state"] == "ready").count()
}

/// Requests on fresh connections in a thread, each (when it ended, ok).
struct Requests {
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Requests {
    fn start(port: u16) -> Requests {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (s, d) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                let ok = http(port, "GET", "/healthz", None).is_ok_and(|r| r.status == 200);
                d.lock().unwrap().push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Requests { stop, done, thread: Some(thread) }
    }

    /// Requests answered 200 between `from` and `to`.
    fn ok_between(&self, from: Instant, to: Instant) -> usize {
        self.done.lock().unwrap().iter().filter(|(t, ok)| *ok && *t >= from && *t <= to).count()
    }

    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let d = self.done.lock().unwrap();
        (d.iter().filter(|(_, ok)| *ok).count(), d.iter().filter(|(_, ok)| !*ok).count())
    }
}

/// The index of the first record of `event` (panics if none).
fn index_of(recs: &[Value], what: impl Fn(&Value) -> bool) -> Option<usize> {
    recs.iter().position(what)
}

/// A check that takes 8 s: meanwhile STATUS answers `upgrading`, a worker
/// SIGKILLed is reaped and replaced, requests are answered; the replaced
/// worker changed the state checked, so it is checked again, and the state
/// handed over is the one at exec time (the replacement adopted).
#[test]
fn the_master_serves_while_a_slow_check_runs_and_checks_the_state_again() {
    let _g = exclusive();
    let (m, exe, sock) = start(Master::for_test());
    let pid = m.pid();
    install_slow_master(&exe, &master_bin(), "sleep 8");
    let before = pids(&status(&sock));
    let requests = Requests::start(m.port);
    let mut up = ControlClient::connect(&sock);
    up.stream().set_read_timeout(Some(T)).unwrap();
    up.send("UPGRADE NORESTART\n");
    let asked = Instant::now();
    let mut st = Value::Null;
    let upgrading = wait_until(T, || {
        st = status(&sock);
        st["state"] != "running"
    });
    assert!(upgrading && st["state"] == "upgrading", "STATUS during the check: {}\n{}", st, m.diagnostics());
    assert_eq!(st["lockout"], false);
    // A worker dies: reaped and replaced while the check runs.
    let killed = before[0] as i32;
    assert!(kill(killed, libc::SIGKILL));
    let t_kill = Instant::now();
    let replaced = wait_until(T, || {
        st = status(&sock);
        st["state"] != "upgrading" || (ready(&st) == 2 && !pids(&st).contains(&(killed as i64)))
    });
    assert!(replaced && st["state"] == "upgrading", "not replaced while the check ran: {}\n{}", st, m.diagnostics());
    let t_replaced = Instant::now();
    let after_kill = pids(&st);
    let served = requests.ok_between(t_kill, t_replaced);
    // The new binary checked a state with the dead worker: checked again.
    let a = up.line();
    let took = asked.elapsed();
    assert_eq!(a, format!("ACK upgraded {}", env!("CARGO_PKG_VERSION")), "{}", m.diagnostics());
    let recs = m.log_records();
    let check_starts: Vec<&Value> =
        recs.iter().filter(|r| r["msg"].as_str().is_some_and(|s| s.starts_with("checking the hand-over with"))).collect();
    let checks: Vec<&Value> = recs.iter().filter(|r| r["event"] == "upgrade.check").collect();
    assert_eq!(check_starts.len(), 2, "{:?}", check_starts);
    assert_eq!(checks.len(), 3, "accepted, the workers changed, accepted: {:?}", checks);
    assert_eq!(checks[1]["changed"], "the workers", "{}", checks[1]);
    assert!(checks[0]["digest"].as_str().unwrap().starts_with("fnv1a64:"), "{}", checks[0]);
    assert_ne!(checks[0]["digest"], checks[2]["digest"]);
    // The replacement was spawned, ready, before the first check ended.
    let first_check = index_of(&recs, |r| r["event"] == "upgrade.check").unwrap();
    let exit = index_of(&recs, |r| r["event"] == "worker.exit" && worker_pid_of(r) == Some(killed)).expect("worker.exit");
    let new = *after_kill.iter().find(|p| !before.contains(p)).unwrap() as i32;
    let new_ready = index_of(&recs, |r| r["event"] == "worker.ready" && worker_pid_of(r) == Some(new)).expect("worker.ready");
    assert!(exit < first_check && new_ready < first_check, "exit {} ready {} check {}", exit, new_ready, first_check);
    // The new image adopted the workers of exec time.
    let up_rec = m.wait_for_event("master.upgrade", T);
    assert_eq!(up_rec["pid"], pid);
    assert_eq!(pids(&status(&sock)), after_kill);
    let (ok, failed) = requests.finish();
    eprintln!(
        "slow check: UPGRADE answered in {:.1} s (2 checks of 8 s); {} requests answered between the SIGKILL and the replacement ({:.1} s); {} ok, {} failed in all",
        took.as_secs_f64(),
        served,
        (t_replaced - t_kill).as_secs_f64(),
        ok,
        failed
    );
    assert!(served > 0, "no request answered while the check ran");
    assert_eq!(m.pid(), pid);
    assert!(m.zombies().is_empty(), "{:?}", m.zombies());
}

/// A check that never answers (README: "with a 10 s timeout"): refused at
/// its deadline, not before, the loop alive throughout, nothing changed,
/// the check child gone.
#[test]
fn a_check_that_hangs_is_refused_at_its_deadline_and_the_loop_goes_on() {
    let _g = exclusive();
    let (m, exe, sock) = start(Master::for_test());
    let pid = m.pid();
    let workers = pids(&status(&sock));
    install_slow_master(&exe, &master_bin(), "exec sleep 600");
    let mut up = ControlClient::connect(&sock);
    up.stream().set_read_timeout(Some(T)).unwrap();
    up.send("UPGRADE\n");
    let asked = Instant::now();
    // STATUS and requests are answered all along, until the refusal.
    let mut answers = 0;
    let mut states = Vec::new();
    assert!(wait_until(T, || status(&sock)["state"] == "upgrading"), "{}", m.diagnostics());
    let refused = wait_until(T, || {
        let st = status(&sock);
        states.push(st["state"].as_str().unwrap_or("").to_string());
        assert_eq!(m.healthz().status, 200);
        answers += 1;
        st["state"] == "running"
    });
    assert!(refused, "{}", m.diagnostics());
    let a = up.line();
    let took = asked.elapsed();
    eprintln!("hung check: refused after {:.1} s; {} STATUS and health answers meanwhile", took.as_secs_f64(), answers);
    assert!(a.starts_with("NACK upgrade check failed: "), "{}", a);
    assert!(a.ends_with("--handover-check did not answer within 10s"), "{}", a);
    assert!(states.iter().filter(|s| *s == "upgrading").count() >= 5, "{:?}", states);
    assert!(took >= Duration::from_secs(10), "refused before the deadline: {:?}", took);
    let check = m.log_records().into_iter().find_map(|r| r["check_pid"].as_i64()).expect("check_pid logged") as i32;
    assert!(wait_until(T, || !pid_alive(check)), "the check {} still runs", check);
    assert_eq!(m.pid(), pid);
    assert_eq!(pids(&status(&sock)), workers);
    assert!(m.events("upgrade.exec").is_empty());
    assert!(m.events("master.upgrade").is_empty());
    assert_eq!(m.events("upgrade.refused").len(), 1);
    assert!(m.zombies().is_empty(), "{:?}", m.zombies());
}

/// An executable that prints what the check printed before it proved
/// anything, and exits 0, is refused: the master is not exec'd, it serves.
#[test]
fn an_executable_that_only_prints_what_the_check_expects_is_refused() {
    let _g = exclusive();
    let (m, exe, sock) = start(Master::for_test());
    let pid = m.pid();
    let workers = pids(&status(&sock));
    let line = format!("ok: zdrestart {} (magic 1, hand-over version 1)", env!("CARGO_PKG_VERSION"));
    install_program(&exe, format!("#!/bin/sh\necho '{}'\nexit 0\n", line).as_bytes());
    let a = ask(&sock, "UPGRADE");
    assert!(a.starts_with("NACK upgrade check failed: "), "{}\n{}", a, m.diagnostics());
    assert!(a.contains(&format!("answered {:?}, not the digest of this hand-over (fnv1a64:", line)), "{}", a);
    assert_eq!(m.pid(), pid);
    assert!(pid_alive(pid));
    assert_eq!(pids(&status(&sock)), workers);
    assert_eq!(m.healthz().status, 200);
    assert!(m.events("upgrade.exec").is_empty() && m.events("master.upgrade").is_empty());
    let refused = m.wait_for_event("upgrade.refused", T);
    assert_eq!(refused["reason"], "upgrade check failed");
    // The real binary proves it read the state and is let in.
    install_copy(&master_bin(), &exe);
    assert_eq!(ask(&sock, "UPGRADE NORESTART"), format!("ACK upgraded {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(m.pid(), pid);
}

/// Every line of the numbered-lines worker as the master logged it: the
/// numbers of the whole lines, the lines that are not whole, and the count
/// the worker said it wrote.
fn numbered_lines(log: &Path, worker: i32) -> (Vec<u64>, Vec<String>, Option<u64>) {
    let f = std::fs::File::open(log).unwrap();
    let (mut numbers, mut bad, mut done) = (Vec::new(), Vec::new(), None);
    let filler = |n: usize| "x".repeat(n);
    for line in BufReader::new(f).lines() {
        let line = line.unwrap();
        let Ok(r) = serde_json::from_str::<Value>(&line) else { continue };
        if worker_pid_of(&r) != Some(worker) || r["component"] != "worker" {
            continue;
        }
        let msg = r["msg"].as_str().unwrap_or("");
        if let Some(n) = msg.strip_prefix("numbered-lines: done ") {
            done = n.parse().ok();
            continue;
        }
        let whole = msg.len() == 179
            && msg.starts_with("line ")
            && msg[5..14].bytes().all(|b| b.is_ascii_digit())
            && msg[14..] == format!(" {}", filler(164));
        match whole {
            true => numbers.push(msg[5..14].parse().unwrap()),
            false => bad.push(msg.chars().take(80).collect()),
        }
    }
    (numbers, bad, done)
}

/// A worker writing 180-byte lines without pause, 20 upgrades: every line
/// is logged once and whole (the hand-over carries what the master read of
/// a line and had not logged yet).
#[test]
fn no_worker_line_is_lost_or_cut_across_twenty_upgrades() {
    let _g = exclusive();
    let b = Master::for_test().merge(json!({
        "workers": 1, "probe": false, "magic": 9, "sharedState": false, "logLevel": "info",
        "worker": [repo_root().join("tests/fault/numbered-lines.py").display().to_string()],
    }));
    let (mut m, _exe, sock) = spawn(b);
    m.check_log_on_drop = false;
    let ready = m.wait_for_event("worker.ready", T);
    let worker = worker_pid_of(&ready).unwrap();
    let t0 = Instant::now();
    for i in 0..20 {
        let a = ask(&sock, "UPGRADE NORESTART");
        assert_eq!(a, format!("ACK upgraded {}", env!("CARGO_PKG_VERSION")), "upgrade {}\n{}", i, m.diagnostics());
    }
    let took = t0.elapsed();
    m.signal(libc::SIGTERM);
    let st = m.wait_exit(T);
    assert_eq!(Master::exit_code(st), 0, "{}", m.diagnostics());
    let (numbers, bad, done) = numbered_lines(m.logfile.as_ref().unwrap(), worker);
    let done = done.expect("the worker's last line (numbered-lines: done N)");
    let mut sorted = numbers.clone();
    sorted.sort();
    sorted.dedup();
    let missing = (0..done).filter(|n| sorted.binary_search(n).is_err()).count();
    eprintln!(
        "20 upgrades in {:.1} s: {} lines written, {} logged whole, {} missing, {} duplicated, {} cut",
        took.as_secs_f64(),
        done,
        numbers.len(),
        missing,
        numbers.len() - sorted.len(),
        bad.len()
    );
    assert!(bad.is_empty(), "{} cut lines, e.g. {:?}", bad.len(), &bad[..bad.len().min(5)]);
    assert_eq!(missing, 0, "lines lost");
    assert_eq!(numbers.len(), done as usize, "every line exactly once");
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "lines in order");
    assert_eq!(m.events("master.upgrade").len(), 20);
}

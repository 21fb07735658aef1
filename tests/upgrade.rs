//! The in-place upgrade of the master (ARCHITECTURE.md, "Upgrading the
//! master"; zdrestart(8)): `UPGRADE` re-execs the
//! master's executable on disk with the same pid, keeping the listeners, the
//! workers and the control clients, then rolls the workers over. Each test
//! starts its master from a copy of the built `zdrestart` in its own
//! directory and replaces that copy (a new file renamed over it, as dpkg
//! does) to stand for a package upgrade.

mod common;
mod load;

use common::*;
use load::{Load, Spec};
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const SPEC: Spec = Spec { keepalive: 4, fresh: 2, slow: 3, slow_ms: 300 };

/// Put `text` at `exe` as a new file (never writing into the running one).
fn install_bytes(exe: &Path, bytes: &[u8]) {
    let tmp = exe.with_extension("new");
    fs::write(&tmp, bytes).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, exe).unwrap();
}

fn install_master(exe: &Path) {
    install_bytes(exe, &fs::read(master_bin()).unwrap());
}

/// A master started from `<dir>/bin/zdrestart` (a copy), with a control socket.
fn start(b: MasterBuilder) -> (Master, PathBuf, PathBuf) {
    let exe = b.dir().join("bin/zdrestart");
    fs::create_dir_all(exe.parent().unwrap()).unwrap();
    install_master(&exe);
    let sock = b.dir().join("ctl.sock");
    let m = b
        .bin(&exe)
        .set("controlSocket", sock.display().to_string())
        .set("worker", json!([worker_bin().display().to_string()]))
        .start();
    (m, exe, sock)
}

fn ask(sock: &Path, line: &str) -> String {
    ask_raw(sock, line).trim_end().to_string()
}

fn status(sock: &Path) -> Value {
    let a = ask(sock, "STATUS");
    serde_json::from_str(a.strip_prefix("ACK ").unwrap_or_else(|| panic!("STATUS: {}", a))).unwrap()
}

fn status_pids(sock: &Path) -> Vec<i64> {
    let mut v: Vec<i64> = status(sock)["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_i64().unwrap()).collect();
    v.sort();
    v
}

/// The master's fd count once it equals `want` (a control client the test
/// just closed is gone only once the master has seen the hang-up), or the
/// last count seen after a deadline.
fn settled_fds(m: &Master, want: usize) -> usize {
    let mut n = m.fd_count();
    wait_until(Duration::from_secs(10), || {
        n = m.fd_count();
        n == want
    });
    n
}


fn mongo_master(mongo: &Mongo) -> (Master, PathBuf, PathBuf) {
    start(Master::for_test().merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "threads": 8, "shutdownTimeout": 10})))
}

fn report(what: &str, s: &load::Stats) {
    let ok = s.samples.iter().filter(|x| x.ok).count();
    eprintln!("{}: {} requests, {} ok, {} failed, {} keep-alive retries, {} worker pids answered",
        what, s.samples.len(), ok, s.failures.len(), s.retries, s.pids.len());
    for f in s.failures.iter().take(20) {
        eprintln!("  failed: {}", f);
    }
}

#[test]
fn twenty_upgrades_under_load_fail_no_request_and_leak_nothing() {
    let _g = exclusive();
    let mongo = Mongo::start();
    let (m, exe, sock) = mongo_master(&mongo);
    let pid = m.pid();
    let fds_at_start = m.fd_count();
    let load = Load::start(m.port, SPEC);
    std::thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    let mut fds = Vec::new();
    let mut rss = Vec::new();
    for i in 0..20 {
        // A new file each time, as a package upgrade leaves it.
        install_master(&exe);
        let before = status_pids(&sock);
        let mark = m.mark();
        let t0 = Instant::now();
        let a = ask(&sock, "UPGRADE");
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(a, format!("ACK upgraded {}", env!("CARGO_PKG_VERSION")), "upgrade {}\n{}", i, m.diagnostics());
        let (_, up) = m.wait_event_after(mark, "master.upgrade", T);
        assert_eq!(up["pid"], pid);
        m.wait_event_after(mark, "restart.complete", T);
        let after = status_pids(&sock);
        assert!(after.iter().all(|p| !before.contains(p)), "upgrade {}: workers not all new: {:?} -> {:?}", i, before, after);
        assert_eq!(m.pid(), pid);
        assert!(pid_alive(pid));
        assert!(m.zombies().is_empty(), "zombies after upgrade {}: {:?}", i, m.zombies());
        fds.push(settled_fds(&m, fds_at_start));
        rss.push(rss_kb(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let stats = load.finish();
    report("20 upgrades under load", &stats);
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!("UPGRADE -> ACK from the new master (ms): median {:.1}, min {:.1}, max {:.1}", sorted[10], sorted[0], sorted[19]);
    eprintln!("master fds after each upgrade: {:?}", fds);
    eprintln!("master RSS (kB) after each upgrade: {:?}", rss);
    assert!(stats.failures.is_empty(), "{} failed requests", stats.failures.len());
    assert!(stats.samples.len() > 100);
    // Same fds after the 2nd and the 20th upgrade: nothing accumulates.
    // After every upgrade the master has the fds it started with: nothing leaks.
    assert!(fds.iter().all(|&n| n == fds_at_start), "fd count changes: {} -> {:?}", fds_at_start, fds);
    // A fresh image each time: RSS does not creep (bounded by the first ones).
    let first = *rss[..5].iter().max().unwrap();
    assert!(rss[19] <= first + 1024, "RSS grows: {:?}", rss);
    assert_eq!(status(&sock)["state"], "running");
}

#[test]
fn upgrade_refused_when_the_new_binary_fails_its_check() {
    let _g = exclusive();
    let (m, exe, sock) = start(Master::for_test());
    let pid = m.pid();
    let workers = status_pids(&sock);
    // A binary that cannot even check: refused, nothing changes.
    install_bytes(&exe, b"#!/bin/sh\necho 'broken build' >&2\nexit 1\n");
    let a = ask(&sock, "UPGRADE");
    assert!(a.starts_with("NACK upgrade check failed: "), "{}", a);
    assert!(a.contains("broken build"), "{}", a);
    // A binary of another hand-over version (the override exists in debug builds only).
    install_bytes(&exe, format!("#!/bin/sh\nZDRESTART_HANDOVER_VERSION_OVERRIDE=99 exec {} \"$@\"\n", master_bin().display()).as_bytes());
    let a = ask(&sock, "UPGRADE WAIT");
    assert!(a.starts_with("NACK upgrade check failed: "), "{}", a);
    assert!(a.contains("incompatible hand-over version 1 (this zdrestart reads version 99)"), "{}", a);
    // zdrestartctl says it and exits 1.
    let out = std::process::Command::new(ctl_bin()).args(["-s", sock.to_str().unwrap(), "upgrade"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upgrade refused: upgrade check failed"), "{:?}", out);
    assert_eq!(m.pid(), pid);
    assert_eq!(status_pids(&sock), workers);
    assert_eq!(m.healthz().status, 200);
    assert!(m.events("master.upgrade").is_empty());
    assert_eq!(m.events("upgrade.refused").len(), 3);
    // A good binary again: accepted (no roll-over: memory driver, NORESTART).
    install_master(&exe);
    let mark = m.mark();
    assert_eq!(ask(&sock, "UPGRADE NORESTART"), format!("ACK upgraded {}", env!("CARGO_PKG_VERSION")));
    let (_, up) = m.wait_event_after(mark, "master.upgrade", T);
    assert_eq!(up["from_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(up["to_magic"], up["from_magic"]);
    assert!(up["ms"].is_u64());
    assert_eq!(status_pids(&sock), workers, "NORESTART keeps the workers");
    assert_eq!(m.pid(), pid);
    assert_eq!(m.healthz().status, 200);
    assert!(m.zombies().is_empty());
}

#[test]
fn upgrade_during_a_restart_is_refused_and_the_restart_wait_client_gets_its_answer() {
    let _g = exclusive();
    let mongo = Mongo::start();
    let (mut m, _exe, sock) = mongo_master(&mongo);
    // One client: RESTART then UPGRADE in one write: the restart is taken
    // up first, so the upgrade is refused, deterministically.
    let mut c = ControlClient::connect(&sock);
    c.send("RESTART\nUPGRADE\n");
    assert_eq!(c.line_raw(), "ACK\n");
    assert_eq!(c.line_raw(), "NACK restart in flight\n");
    m.wait_for_event("restart.complete", T);
    // A RESTART WAIT client waiting while an upgrade is asked for: the new
    // workers are held before they report ready, so the restart is still in
    // flight when the UPGRADE comes, however fast the machine.
    let gate = m.hold_new_workers();
    let mut w = ControlClient::connect(&sock);
    w.send("RESTART WAIT\n");
    assert!(wait_until(T, || status(&sock)["state"] == "restarting"));
    let a = ask(&sock, "UPGRADE");
    assert_eq!(a, "NACK restart in flight");
    gate.open();
    assert_eq!(w.line_raw(), "ACK complete\n");
    // And then the upgrade goes through, its WAIT client answered by the new image
    // once the roll-over it starts is complete.
    let pid = m.pid();
    let mut u = ControlClient::connect(&sock);
    u.send("UPGRADE WAIT\n");
    assert_eq!(u.line_raw(), "ACK complete\n");
    assert_eq!(m.events("master.upgrade").len(), 1);
    assert_eq!(m.pid(), pid);
    assert_eq!(status(&sock)["generation"], 4);
    // The same connection still works (it was handed over).
    assert!(u.cmd_raw("VERSION").starts_with("ACK "));
}

#[test]
fn upgrade_amid_sigusr2_storms_and_control_floods() {
    let _g = exclusive();
    let mongo = Mongo::start();
    let (m, _exe, sock) = mongo_master(&mongo);
    let pid = m.pid();
    let load = Load::start(m.port, SPEC);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                kill(pid, libc::SIGUSR2);
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };
    let floods: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut c = ControlClient::connect(&sock);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    // Each answer must come, from the old image or the new one.
                    let a = c.cmd_raw("STATUS");
                    assert!(a.starts_with("ACK {"), "{}", a);
                    let b = ask_raw(&sock, "VERSION");
                    assert!(b.starts_with("ACK "), "{}", b);
                    n += 2;
                }
                n
            })
        })
        .collect();
    let mut upgrades = 0;
    let mut refused = 0;
    let deadline = Instant::now() + T;
    while upgrades < 3 && Instant::now() < deadline {
        let a = ask(&sock, "UPGRADE");
        if a.starts_with("ACK upgraded") {
            upgrades += 1;
        } else {
            assert_eq!(a, "NACK restart in flight");
            refused += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let signals = storm.join().unwrap();
    let answers: usize = floods.into_iter().map(|f| f.join().unwrap()).sum();
    eprintln!("{} upgrades, {} refused (restart in flight), {} SIGUSR2, {} control answers", upgrades, refused, signals, answers);
    assert_eq!(upgrades, 3, "{}", m.diagnostics());
    assert!(wait_until(T, || status(&sock)["state"] == "running"));
    let stats = load.finish();
    report("upgrades amid storms", &stats);
    assert!(stats.failures.is_empty());
    assert_eq!(m.pid(), pid);
    assert!(pid_alive(pid));
    assert_eq!(m.events("master.upgrade").len(), 3);
    assert!(m.zombies().is_empty());
}

#[test]
fn upgrade_ends_a_lockout_without_a_failed_request() {
    let _g = exclusive();
    let mongo = Mongo::start();
    let (mut m, _exe, sock) = mongo_master(&mongo);
    let pid = m.pid();
    let load = Load::start(m.port, SPEC);
    // A broken deploy: the restart aborts, the master locks out.
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("die-at-start.sh"));
    });
    m.signal(libc::SIGUSR2);
    let lockout = m.wait_for_event("master.lockout", T);
    assert!(lockout["msg"].as_str().unwrap().contains("zdrestartctl upgrade --wait"), "{}", lockout);
    assert_eq!(status(&sock)["state"], "lockout");
    assert_eq!(ask(&sock, "RESTART"), "NACK aborted restart");
    let serving = status_pids(&sock);
    // The operator fixes the code and upgrades: a fresh state, every worker new.
    m.rewrite_config(|c| {
        c.insert("worker".into(), json!([worker_bin().display().to_string()]));
    });
    let out = std::process::Command::new(ctl_bin()).args(["-s", sock.to_str().unwrap(), "upgrade", "--wait"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}\n{}", out, m.diagnostics());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "master upgraded; zero-downtime restart complete\n");
    let up = m.wait_for_event("master.upgrade", T);
    assert_eq!(up["lockout_cleared"], true);
    let st = status(&sock);
    assert_eq!(st["state"], "running");
    assert_eq!(st["lockout"], false);
    assert_eq!(st["last_restart"]["outcome"], "complete");
    let now = status_pids(&sock);
    assert!(now.iter().all(|p| !serving.contains(p)), "{:?} -> {:?}", serving, now);
    assert_eq!(now.len(), 2);
    let stats = load.finish();
    report("lockout recovery", &stats);
    assert!(stats.failures.is_empty());
    assert_eq!(m.pid(), pid);
}

#[test]
fn exec_failure_is_answered_and_the_master_carries_on() {
    let _g = exclusive();
    let (m, exe, sock) = start(Master::for_test());
    let pid = m.pid();
    let fds = m.fd_count();
    let workers = status_pids(&sock);
    // Passes its check, then removes itself: the exec that follows fails (ENOENT).
    install_bytes(&exe, format!("#!/bin/sh\nrm -f \"$0\"\nexec {} \"$@\"\n", master_bin().display()).as_bytes());
    let a = ask(&sock, "UPGRADE");
    assert!(a.starts_with("NACK exec failed: execve "), "{}", a);
    assert!(a.contains("No such file or directory"), "{}", a);
    // Everything as before: same master, same workers, same fds (close-on-exec again), serving.
    assert_eq!(m.pid(), pid);
    assert_eq!(status_pids(&sock), workers);
    assert_eq!(settled_fds(&m, fds), fds);
    assert_eq!(m.healthz().status, 200);
    assert!(ask(&sock, "VERSION").starts_with("ACK "));
    // Signals still work after the mask was restored: SIGHUP reopens the log.
    let mark = m.mark();
    m.signal(libc::SIGHUP);
    m.wait_event_after(mark, "log.reopen", T);
    install_master(&exe);
    assert!(ask(&sock, "UPGRADE NORESTART").starts_with("ACK upgraded "));
    assert_eq!(m.pid(), pid);
}

#[test]
fn the_check_mode_refuses_a_corrupt_state() {
    let run = |input: &[u8]| {
        use std::io::Write;
        let mut c = std::process::Command::new(master_bin())
            .args(["--handover-check", "0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input).unwrap();
        let out = c.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    for (input, want) in [
        (&b""[..], "truncated"),
        (b"garbage\n", "not a zdrestart hand-over"),
        (b"zdrestart-handover 99\n{}\n", "incompatible hand-over version 99"),
        (b"zdrestart-handover 1\n{\"from_version\":\n", "hand-over state"),
    ] {
        let (code, out) = run(input);
        assert_eq!(code, Some(1), "{:?}: {}", String::from_utf8_lossy(input), out);
        assert!(out.contains(want), "{:?}: {}", String::from_utf8_lossy(input), out);
    }
}

/// An upgrade without a roll-over (`--no-restart`) out of a lockout that
/// kept the old fleet: the resumed master serves generation 2 (the aborted
/// restart's number) with workers of generation 1. One of them that dies
/// is replaced, as the serving generation, so the fleet stays at `workers`
/// (before: not respawned, not of the serving generation, and the fleet
/// shrank to nothing).
#[test]
fn a_worker_of_the_older_generation_that_dies_after_an_upgrade_is_replaced() {
    let mongo = Mongo::start();
    let (mut m, _exe, sock) = mongo_master(&mongo);
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("die-at-start.sh"));
    });
    m.signal(libc::SIGUSR2);
    m.wait_for_event("master.lockout", T);
    m.rewrite_config(|c| {
        c.insert("worker".into(), json!([worker_bin().display().to_string()]));
    });
    let out = std::process::Command::new(ctl_bin()).args(["-s", sock.to_str().unwrap(), "upgrade", "--wait", "--no-restart"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{:?}\n{}", out, m.diagnostics());
    let before = status_pids(&sock);
    assert_eq!(before.len(), 2);
    let mark = m.mark();
    let r = std::process::Command::new("kill").args(["-KILL", &before[0].to_string()]).status().unwrap();
    assert!(r.success());
    let (_, spawn) = m.wait_event_after(mark, "worker.spawn", T);
    assert_eq!(spawn["generation"], 2, "{}", spawn);
    let ok = wait_until(T, || {
        let st = status(&sock);
        st["state"] == "running" && st["workers"].as_array().unwrap().iter().filter(|w| w["state"] == "ready").count() == 2
    });
    assert!(ok, "not back to 2 ready workers: {}\n{}", status(&sock), m.diagnostics());
    assert!(!status_pids(&sock).contains(&before[0]));
}

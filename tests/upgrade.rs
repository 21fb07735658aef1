//! The in-place upgrade of the master (ARCHITECTURE.md, "Upgrading the
//! master"; zdrestart(8), "Upgrading the master"): `UPGRADE` re-execs the
//! master's executable on disk with the same pid, keeping the listeners, the
//! workers and the control clients, then rolls the workers over. Each test
//! starts its master from a copy of the built `zdrestart` in its own
//! directory and replaces that copy (a new file renamed over it, as dpkg
//! does) to stand for a package upgrade. Programs are written with the
//! harness's `install_copy`/`install_script`, never opened for writing by
//! this test binary, so no child forked meanwhile can make their exec fail
//! with "Text file busy".
#![deny(unsafe_code)]

mod common;
mod load;

use common::*;
use load::{Load, Spec};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);
const SPEC: Spec = Spec { keepalive: 4, fresh: 2, slow: 3, slow_ms: 300 };
/// `params.timeout` under load: what is tested is that no request fails
/// because of a restart, not how fast the Python test database answers on a
/// loaded 2-core machine (seen stalling past the default 3 s).
const DB_TIMEOUT: u64 = 10;

fn install_master(exe: &Path) {
    install_copy(&master_bin(), exe);
}

/// The magic number a master reports (STATUS).
fn magic_of(sock: &Path) -> u64 {
    status(sock)["magic"].as_u64().unwrap_or_else(|| panic!("STATUS without a numeric magic: {}", status(sock)))
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
    start(Master::for_test().merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri(), "timeout": DB_TIMEOUT}, "threads": 8, "shutdownTimeout": 10})))
}

/// A broken deploy: the worker becomes the fault worker `script` (and the
/// config gets the keys of `extra`), SIGUSR2, the restart aborts and the
/// master locks out. Its `master.lockout` record.
fn lock_out(m: &mut Master, script: &str, extra: Value) -> Value {
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json(script));
        c.extend(extra.as_object().cloned().unwrap_or_default());
    });
    m.signal(libc::SIGUSR2);
    m.wait_for_event("master.lockout", T)
}

/// The operator's fix: the real worker again (and the keys of `extra`).
fn fix_worker(m: &mut Master, extra: Value) {
    m.rewrite_config(|c| {
        c.insert("worker".into(), json!([worker_bin().display().to_string()]));
        c.extend(extra.as_object().cloned().unwrap_or_default());
    });
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
    load.wait_ok_after(0, 50, T, "before the first upgrade");
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
        // The new generation takes traffic before the next upgrade.
        load.wait_answered_by(&after.iter().map(|&p| p as i32).collect::<Vec<_>>(), T);
    }
    let stats = load.finish();
    report("20 upgrades under load", &stats);
    // A retry is legitimate only when a worker goes: at most once per
    // keep-alive client per old worker per upgrade, plus once per client for
    // an idle timeout.
    stats.assert_retries_at_most((SPEC.keepalive * 2 * 20 + SPEC.keepalive) as u64, "2 old workers per upgrade, 20 upgrades");
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
    install_script(&exe, "#!/bin/sh\necho 'broken build' >&2\nexit 1\n");
    let a = ask(&sock, "UPGRADE");
    assert!(a.starts_with("NACK upgrade check failed: "), "{}", a);
    assert!(a.contains("broken build"), "{}", a);
    // A binary of another hand-over version (the override exists in debug builds only).
    install_script(&exe, &format!("#!/bin/sh\nZDRESTART_HANDOVER_VERSION_OVERRIDE=99 exec {} \"$@\"\n", master_bin().display()));
    let a = ask(&sock, "UPGRADE WAIT");
    assert!(a.starts_with("NACK upgrade check failed: "), "{}", a);
    assert!(a.contains("incompatible hand-over version 1 (this zdrestart reads version 99)"), "{}", a);
    // zdrestartctl says it and exits 1.
    let c = ctl(&sock, &["upgrade"]);
    assert_eq!(c.code, 1, "{:?}", c);
    assert!(c.err.contains("upgrade refused: upgrade check failed"), "{:?}", c);
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
    assert_eq!(up["to_version"], env!("CARGO_PKG_VERSION"));
    // Old and new magic numbers, both there and both the master's (a record
    // without either field must not pass for "the same magic").
    let magic = magic_of(&sock);
    assert_eq!((up["from_magic"].as_u64(), up["to_magic"].as_u64()), (Some(magic), Some(magic)), "{}", up);
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
    // Never two masters: every STATUS, from the old image or the new one,
    // is the one master's (its pid): a fork-and-exec upgrade would have a
    // second master answer with its own pid.
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
                    let st: Value = serde_json::from_str(a.trim_end().strip_prefix("ACK ").unwrap()).unwrap();
                    assert_eq!(st["pid"].as_i64(), Some(pid as i64), "a STATUS from another master: {}", a);
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
    // However many restarts the storm caused, each stopped 2 old workers.
    let rolls = m.events("restart.complete").len() + m.events("restart.abort").len();
    eprintln!("{} roll-overs during the storm", rolls);
    stats.assert_retries_at_most((SPEC.keepalive * 2 * rolls + SPEC.keepalive) as u64, "2 old workers per roll-over");
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
    let lockout = lock_out(&mut m, "die-at-start.sh", json!({}));
    assert!(lockout["msg"].as_str().unwrap().contains("zdrestartctl upgrade --wait"), "{}", lockout);
    assert_eq!(status(&sock)["state"], "lockout");
    assert_eq!(ask(&sock, "RESTART"), "NACK aborted restart");
    let serving = status_pids(&sock);
    // The operator fixes the code and upgrades: a fresh state, every worker new.
    fix_worker(&mut m, json!({}));
    let out = ctl(&sock, &["upgrade", "--wait"]);
    assert_eq!(out.code, 0, "{:?}\n{}", out, m.diagnostics());
    assert_eq!(out.out, "master upgraded; zero-downtime restart complete\n");
    assert!(out.steps.iter().any(|s| s.contains("complete: ")), "the roll-over's steps: {:?}", out.steps);
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
    // Workers went once (the roll-over after the upgrade; the aborted
    // restart stopped no old worker), plus one idle timeout per client.
    stats.assert_retries_at_most((SPEC.keepalive * 2 + SPEC.keepalive) as u64, "one roll-over of 2 workers");
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
    install_script(&exe, &format!("#!/bin/sh\nrm -f \"$0\"\nexec {} \"$@\"\n", master_bin().display()));
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
        let mut c = common::spawn::spawn(
            std::process::Command::new(master_bin())
                .args(["--handover-check", "0"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped()),
        );
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

/// README: an upgrade is refused (`upgrade check failed`) for a bad config
/// and for a changed listen address: the new binary loads the config and
/// compares the address before anything is exec'd. Nothing changes.
#[test]
fn upgrade_refused_for_a_bad_config_or_a_changed_listen_address() {
    let _g = exclusive();
    let (mut m, exe, sock) = start(Master::for_test());
    let pid = m.pid();
    let workers = status_pids(&sock);
    // A good new build: only the config is wrong.
    install_master(&exe);
    m.write_config_raw("{ \"workers\": 2, ");
    let a = ask(&sock, "UPGRADE");
    assert!(a.starts_with("NACK upgrade check failed: "), "{}", a);
    assert!(a.contains("bad config") && a.contains(&m.config_path.display().to_string()), "names the file: {}", a);
    let port = m.port;
    m.rewrite_config(|c| {
        c.insert("port".into(), json!(free_port()));
    });
    let a = ask(&sock, "UPGRADE WAIT");
    assert!(a.starts_with("NACK upgrade check failed: "), "{}", a);
    assert!(a.contains("listen address changed") && a.contains(&format!("127.0.0.1:{}", port)), "{}", a);
    assert_eq!(m.pid(), pid);
    assert_eq!(status_pids(&sock), workers);
    assert_eq!(m.healthz().status, 200);
    assert!(m.events("master.upgrade").is_empty());
    assert_eq!(m.events("upgrade.refused").len(), 2);
    // Fixed: accepted.
    m.rewrite_config(|c| {
        c.insert("port".into(), json!(port));
    });
    assert!(ask(&sock, "UPGRADE NORESTART").starts_with("ACK upgraded "));
    assert_eq!(m.pid(), pid);
}

/// README: the master runs "the executable it was started from (resolved at
/// start, logged as `exe`)". Started through a symlink, it logs the file the
/// link resolved to; when the link is then pointed at a broken build and the
/// file is replaced by a new one (as a package upgrade does), the upgrade
/// runs that file, not what the link names now, nor the deleted old inode.
#[test]
fn the_executable_is_resolved_at_start_logged_and_run_by_the_upgrade() {
    let _g = exclusive();
    let b = Master::for_test();
    let bin = b.dir().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let real = bin.join("zdrestart-1");
    install_master(&real);
    let link = bin.join("zdrestart");
    std::os::unix::fs::symlink("zdrestart-1", &link).unwrap();
    let sock = b.dir().join("ctl.sock");
    let m = b
        .bin(&link)
        .set("controlSocket", sock.display().to_string())
        .set("worker", json!([worker_bin().display().to_string()]))
        .start();
    let pid = m.pid();
    let logged = m.wait_for("the master's exe record", T, |recs| {
        recs.iter().find(|r| r["component"] == "master" && r.get("exe").is_some()).cloned()
    });
    assert_eq!(logged["exe"], real.display().to_string(), "the resolved file, not the link: {}", logged);
    assert!(logged["msg"].as_str().unwrap_or("").contains(&real.display().to_string()), "{}", logged);
    // The link now names a broken build; the resolved file is a new inode.
    install_script(&bin.join("zdrestart-2"), "#!/bin/sh\necho 'the link was followed at upgrade time' >&2\nexit 1\n");
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("zdrestart-2", &link).unwrap();
    install_master(&real);
    let mark = m.mark();
    let a = ask(&sock, "UPGRADE NORESTART");
    assert_eq!(a, format!("ACK upgraded {}", env!("CARGO_PKG_VERSION")), "{}", m.diagnostics());
    let (_, up) = m.wait_event_after(mark, "master.upgrade", T);
    assert_eq!(up["exe"], real.display().to_string(), "{}", up);
    assert_eq!(m.pid(), pid);
    // The master now runs the new file (not a deleted inode).
    let now = fs::read_link(format!("/proc/{}/exe", pid)).unwrap();
    assert_eq!(now, real, "the master runs {}", now.display());
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
    lock_out(&mut m, "die-at-start.sh", json!({}));
    fix_worker(&mut m, json!({}));
    let out = ctl(&sock, &["upgrade", "--wait", "--no-restart"]);
    assert_eq!(out.code, 0, "{:?}\n{}", out, m.diagnostics());
    let before = status_pids(&sock);
    assert_eq!(before.len(), 2);
    let mark = m.mark();
    assert!(common::sys::kill(before[0] as i32, libc::SIGKILL), "kill -KILL {}", before[0]);
    let (_, spawn) = m.wait_event_after(mark, "worker.spawn", T);
    assert_eq!(spawn["generation"], 2, "{}", spawn);
    let ok = wait_until(T, || {
        let st = status(&sock);
        st["state"] == "running" && st["workers"].as_array().unwrap().iter().filter(|w| w["state"] == "ready").count() == 2
    });
    assert!(ok, "not back to 2 ready workers: {}\n{}", status(&sock), m.diagnostics());
    assert!(!status_pids(&sock).contains(&before[0]));
}

/// The chaos soak's case: a restart aborts (its first new worker exits a
/// second after READY=1) while another new worker, stopped by the abort,
/// drains for its shutdownTimeout (it ignores SIGTERM), and `upgrade
/// --wait` ends the lockout meanwhile. The resumed master serves with the
/// old workers: the roll-over is taken up (before: refused as `not ready`,
/// the draining worker counted as one of the serving generation) and
/// completes, and the draining worker's exit is not answered with a
/// respawn (before: a third worker, of the aborted generation's number).
#[test]
fn an_upgrade_while_a_new_worker_of_the_aborted_restart_drains_rolls_over() {
    let mongo = Mongo::start();
    let (mut m, _exe, sock) = mongo_master(&mongo);
    lock_out(&mut m, "first-dies-others-linger.sh", json!({"minReady": 3}));
    let st = status(&sock);
    let draining: Vec<i64> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["generation"] == 2 && w["state"] == "stopping")
        .map(|w| w["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(draining.len(), 1, "a new worker drains after the abort: {}", st);
    fix_worker(&mut m, json!({"minReady": 0}));
    let mark = m.mark();
    let out = ctl(&sock, &["upgrade", "--wait"]);
    assert_eq!(out.code, 0, "{:?}\n{}", out, m.diagnostics());
    assert_eq!(out.out, "master upgraded; zero-downtime restart complete\n");
    // The draining worker ends (SIGKILL at its shutdownTimeout at the latest).
    let gone = m.wait_for("the draining worker's exit", Duration::from_secs(30), |recs| {
        recs.iter().skip(mark).find(|r| event_of(r) == "worker.exit" && r["worker_pid"] == draining[0]).cloned()
    });
    assert!(gone["msg"].as_str().unwrap().contains("exited as asked"), "{}", gone);
    let after = m.log_records();
    let respawns: Vec<&Value> = after[mark..]
        .iter()
        .filter(|r| r["msg"].as_str().is_some_and(|s| s.contains("respawning") || s.contains("short of worker")))
        .collect();
    assert!(respawns.is_empty(), "nothing is respawned: {:?}", respawns);
    let st = status(&sock);
    assert_eq!(st["state"], "running", "{}", st);
    let workers = st["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{}", st);
    assert!(workers.iter().all(|w| w["state"] == "ready" && w["generation"] == 3), "{}", st);
}

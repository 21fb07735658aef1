//! Workers that report with systemd's readiness protocol, sd_notify(3), on
//! the `$NOTIFY_SOCKET` the master offers (`"notify": "systemd"`), and
//! workers without a probe (`"probe": false`, `"magic"`, `"version"`): what
//! counts, who may report for a worker, what is dropped, what aborts.
//! The worker is tests/fault/sd-notify.py (a mode per case).
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// argv of the sd_notify fault worker in `mode`.
fn sd_worker(mode: &str) -> Value {
    json!([repo_root().join("tests/fault/sd-notify.py").display().to_string(), mode])
}

/// A master whose workers are the sd_notify fault worker in `mode`, with a
/// control socket; not waited for.
fn master(mode: &str, extra: Value) -> (Master, PathBuf) {
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock");
    let m = b
        .merge(json!({
            "notify": "systemd", "probe": false, "magic": 5, "version": "sd-1",
            "sharedState": true, "worker": sd_worker(mode),
            "controlSocket": sock.display().to_string(),
        }))
        .merge(extra)
        .spawn();
    (m, sock)
}

/// STATUS of the master, as JSON.
fn status(sock: &Path) -> Value {
    // The master binds its control socket after start-up: wait for it.
    let mut conn = None;
    wait_until(T, || {
        conn = UnixStream::connect(sock).ok();
        conn.is_some()
    });
    let s = conn.unwrap_or_else(|| panic!("connect {}: nobody answers", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (&s).write_all(b"STATUS\n").unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    serde_json::from_str(line.trim_end().strip_prefix("ACK ").expect("ACK")).unwrap()
}

/// Wait until STATUS shows a worker whose `status` is `text`: that worker.
fn wait_worker_status(m: &Master, sock: &Path, text: &str) -> Value {
    let mut found = None;
    let ok = wait_until(T, || {
        found = status(sock)["workers"].as_array().unwrap().iter().find(|w| w["status"] == text).cloned();
        found.is_some()
    });
    assert!(ok, "no worker with status {:?}: {}\n{}", text, status(sock), m.diagnostics());
    found.unwrap()
}

/// Debug records of dropped notify datagrams.
fn drops(m: &Master) -> Vec<Value> {
    m.log_records()
        .into_iter()
        .filter(|r| r["msg"].as_str().is_some_and(|s| s.starts_with("notify datagram dropped")))
        .collect()
}

/// `$NOTIFY_SOCKET` as a socket address (from a worker's environment).
fn notify_addr(pid: i32) -> SocketAddr {
    let env = proc_environ(pid);
    let name = env.iter().find(|(k, _)| k == "NOTIFY_SOCKET").map(|(_, v)| v.clone()).expect("NOTIFY_SOCKET");
    assert!(name.starts_with('@'), "an abstract socket: {}", name);
    SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap()
}

#[test]
fn ready_and_status_on_notify_socket_make_a_worker_ready() {
    let (m, sock) = master("ready", json!({}));
    m.wait_events_after(0, "worker.ready", 2, T);
    let st = status(&sock);
    let workers = st["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert_eq!(w["state"], "ready");
        assert_eq!(w["status"], format!("serving as pid {}", w["pid"]));
        let env = proc_environ(w["pid"].as_i64().unwrap() as i32);
        let has = |k: &str| env.iter().any(|(e, _)| e == k);
        // "systemd": the report pipe is not offered.
        assert!(has("NOTIFY_SOCKET") && !has("ZDRESTART_NOTIFY_FD"), "{:?}", env);
        assert!(has("LISTEN_FDS") && has("LISTEN_PID"));
    }
    assert_eq!((st["magic"].as_u64(), st["version"].as_str()), (Some(5), Some("sd-1")), "declared, no probe");
    assert!(m.log_records().iter().all(|r| r["component"] != "probe" || r["msg"].as_str().unwrap().starts_with("probe off")));
}

#[test]
fn the_masters_own_notify_socket_is_not_passed_on() {
    // A master run by systemd has NOTIFY_SOCKET set: a worker gets the
    // master's socket, never the service manager's.
    let b = Master::for_test().env("NOTIFY_SOCKET", "/nonexistent/systemd-notify");
    let sock = b.dir().join("ctl.sock");
    let m = b
        .merge(json!({"notify": "systemd", "probe": false, "magic": 5, "sharedState": true, "worker": sd_worker("ready"),
            "controlSocket": sock.display().to_string()}))
        .spawn();
    m.wait_events_after(0, "worker.ready", 2, T);
    for w in status(&sock)["workers"].as_array().unwrap() {
        let env = proc_environ(w["pid"].as_i64().unwrap() as i32);
        let v: Vec<_> = env.iter().filter(|(k, _)| k == "NOTIFY_SOCKET").collect();
        assert_eq!(v.len(), 1);
        assert!(v[0].1.starts_with('@'), "{:?}", v);
    }
}

#[test]
fn nobody_else_can_report_for_a_worker() {
    let (m, sock) = master("stranger", json!({"workers": 1, "readyTimeout": 60}));
    // The worker's own STATUS= is the positive marker: its child (another
    // process group) sent READY=1 before it.
    let w = wait_worker_status(&m, &sock, "marker:stranger");
    let pid = w["pid"].as_i64().unwrap() as i32;
    // And this test process, no worker's, sends READY=1 too.
    UnixDatagram::unbound().unwrap().send_to_addr(b"READY=1\nSTATUS=forged", &notify_addr(pid)).unwrap();
    let me = std::process::id().to_string();
    m.wait_for("the test's datagram dropped", T, |_| drops(&m).iter().find(|r| r["sender_pid"] == me.as_str()).cloned());
    let d = drops(&m);
    assert!(d.iter().all(|r| r["level"] == 20), "logged at debug: {:?}", d);
    let child = d.iter().find(|r| r["sender_pid"] != me.as_str()).expect("the child's datagram dropped");
    assert!(child["msg"].as_str().unwrap().contains("no worker's process"), "{}", child);
    assert_ne!(child["sender_pid"], pid.to_string());
    let w = &status(&sock)["workers"][0];
    assert_eq!((&w["state"], &w["status"]), (&json!("starting"), &json!("marker:stranger")), "{}", w);
    assert!(m.events("worker.ready").is_empty());
}

#[test]
fn a_process_of_the_workers_process_group_may_report_for_it() {
    let (m, sock) = master("group", json!({"workers": 1}));
    let ready = m.wait_for_event("worker.ready", T);
    let w = wait_worker_status(&m, &sock, "ready from the group");
    assert_eq!(w["state"], "ready");
    assert_eq!(worker_pid_of(&ready), w["pid"].as_i64().map(|p| p as i32));
    assert!(drops(&m).is_empty(), "{:?}", drops(&m));
}

#[test]
fn bad_datagrams_never_hurt_the_master() {
    let b = Master::for_test();
    let go = b.dir().join("go");
    let b = b.env("SD_NOTIFY_TEST_GO", &go.display().to_string());
    let sock = b.dir().join("ctl.sock");
    let m = b
        .merge(json!({"notify": "systemd", "probe": false, "magic": 5, "sharedState": true, "workers": 1, "readyTimeout": 60,
            "worker": sd_worker("junk"), "controlSocket": sock.display().to_string()}))
        .spawn();
    // Each bad datagram held READY=1; the marker came after all of them.
    let w = wait_worker_status(&m, &sock, "marker:junk");
    assert_eq!(w["state"], "starting", "no bad datagram made it ready");
    let d: Vec<String> = drops(&m).iter().map(|r| r["msg"].as_str().unwrap().to_string()).collect();
    for why in ["longer than 4096 bytes", "not UTF-8", "carried 2 file descriptors (closed)"] {
        assert!(d.iter().any(|s| s.ends_with(why)), "no drop for {:?}: {:?}", why, d);
    }
    let ignored = m.log_records().into_iter().find(|r| r["msg"].as_str().is_some_and(|s| s.starts_with("sd_notify: ignored")));
    assert_eq!(ignored.expect("unknown keys logged")["msg"], "sd_notify: ignored FOO, WATCHDOG, X_NOT_KNOWN");
    // The pipe that came with a datagram is not open in the master.
    let passed = m.wait_for("the passed pipe's inode", T, |recs| {
        recs.iter().find_map(|r| r["msg"].as_str()?.strip_prefix("sd-notify.py: passing ").map(str::to_string))
    });
    let fds = fd_targets(m.pid());
    assert!(!fds.iter().any(|t| t.ends_with(&format!("->{}", passed))), "{} kept: {:?}", passed, fds);
    // A flood from a stranger: dropped, logged at most 10 times in 10 s.
    let w = status(&sock)["workers"][0]["pid"].as_i64().unwrap() as i32;
    let tx = UnixDatagram::unbound().unwrap();
    for _ in 0..200 {
        tx.send_to_addr(b"READY=1", &notify_addr(w)).unwrap();
    }
    // The worker's READY=1 comes after the flood in the socket's queue.
    std::fs::write(&go, "").unwrap();
    m.wait_for_event("worker.ready", T);
    assert_eq!(status(&sock)["workers"][0]["state"], "ready");
    let me = std::process::id().to_string();
    let logged = drops(&m).iter().filter(|r| r["sender_pid"] == me.as_str()).count();
    // One window of 10 s, or two if the flood straddled a window's end.
    let windows = 1 + m.log_records().iter().filter(|r| r["msg"].as_str().is_some_and(|s| s.contains("more notify datagrams dropped"))).count();
    assert!(logged >= 1 && logged <= 10 * windows, "{} drop records of 200 datagrams", logged);
}

#[test]
fn errno_before_ready_aborts_the_restart_and_locks_out() {
    let (mut m, sock) = master("ready", json!({}));
    m.wait_events_after(0, "worker.ready", 2, T);
    let old: Vec<Value> = status(&sock)["workers"].as_array().unwrap().iter().map(|w| w["pid"].clone()).collect();
    m.rewrite_config(|c| {
        c.insert("worker".into(), sd_worker("errno"));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, abort) = m.wait_event_after(mark, "restart.abort", T);
    assert_eq!(abort["reason"], "new worker reported an error", "{}", abort);
    assert!(abort["detail"].as_str().unwrap().contains("ERRNO=98 (Address already in use)"), "{}", abort);
    m.wait_event_after(mark, "master.lockout", T);
    let st = status(&sock);
    assert_eq!(st["state"], "lockout");
    let now: Vec<Value> = st["workers"].as_array().unwrap().iter().filter(|w| w["generation"] == 1).map(|w| w["pid"].clone()).collect();
    assert_eq!(now, old, "the serving workers are left alone");
}

#[test]
fn stopping_before_ready_aborts_the_restart() {
    let (mut m, _sock) = master("ready", json!({}));
    m.wait_events_after(0, "worker.ready", 2, T);
    m.rewrite_config(|c| {
        c.insert("worker".into(), sd_worker("stopping"));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, abort) = m.wait_event_after(mark, "restart.abort", T);
    assert!(abort["detail"].as_str().unwrap().contains("STOPPING=1"), "{}", abort);
}

#[test]
fn a_changed_declared_magic_number_is_an_incompatibility() {
    let (mut m, sock) = master("ready", json!({}));
    m.wait_events_after(0, "worker.ready", 2, T);
    m.rewrite_config(|c| {
        c.insert("magic".into(), json!(6));
        c.insert("version".into(), json!("sd-2"));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, r) = m.wait_event_after(mark, "restart.refused", T);
    assert_eq!(r["reason"], "incompatibility", "{}", r);
    assert!(r["detail"].as_str().unwrap().contains("magic number 6 (version sd-2)"), "{}", r);
    // --check says the same, and runs no probe (the worker has none).
    let (st, out, _) = run_cmd(std::process::Command::new(master_bin()).args(["--check", "-c"]).arg(&m.config_path), T);
    assert_eq!(st.code(), Some(1), "{}", out);
    assert!(out.contains("probe: off; the config declares magic 6, version sd-2"), "{}", out);
    assert!(out.contains("refused: incompatibility"), "{}", out);
    // The same magic number with a new version rolls over.
    m.rewrite_config(|c| {
        c.insert("magic".into(), json!(5));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    m.wait_event_after(mark, "restart.complete", T);
    assert_eq!(status(&sock)["version"], "sd-2");
}

#[test]
fn mainpid_names_the_process_the_master_watches_and_signals() {
    let (mut m, sock) = master("mainpid", json!({}));
    m.wait_events_after(0, "worker.ready", 2, T);
    let mut workers = Vec::new();
    let ok = wait_until(T, || {
        workers = status(&sock)["workers"].as_array().unwrap().clone();
        workers.iter().all(|w| w["main_pid"].is_u64())
    });
    assert!(ok, "{:?}", workers);
    let mains: Vec<i32> = workers.iter().map(|w| w["main_pid"].as_i64().unwrap() as i32).collect();
    // The spawned processes exited; the workers live on in their main processes.
    for w in &workers {
        let spawned = w["pid"].as_i64().unwrap() as i32;
        assert!(wait_until(T, || !pid_alive(spawned)), "spawned process {} still alive", spawned);
    }
    assert!(mains.iter().all(|&p| pid_alive(p)));
    assert!(m.events("worker.exit").is_empty(), "no worker exited: {:?}", m.events("worker.exit"));
    assert_eq!(status(&sock)["state"], "running");
    // A graceful stop signals the main processes, which exit: the master too.
    m.signal(libc::SIGTERM);
    let st = m.wait_exit(T);
    assert_eq!(Master::exit_code(st), 0, "{}", m.diagnostics());
    assert!(mains.iter().all(|&p| wait_until(T, || !pid_alive(p))));
    assert_eq!(m.events("worker.exit").len(), 2);
    assert!(m.events("worker.kill").is_empty(), "SIGTERM reached the main processes");
}

#[test]
fn notify_both_offers_the_pipe_and_the_socket() {
    let m = Master::for_test().set("notify", "both").start();
    for pid in m.worker_pids() {
        let env = proc_environ(pid);
        assert!(env.iter().any(|(k, v)| k == "NOTIFY_SOCKET" && v.starts_with('@')), "{:?}", env);
        assert!(env.iter().any(|(k, _)| k == "ZDRESTART_NOTIFY_FD"));
    }
}

#[test]
fn check_without_a_master_does_not_compare_a_declared_magic_number() {
    let dir = TestDir::for_test();
    let cfg = dir.join("z.json");
    let text = json!({"workers": 2, "notify": "systemd", "probe": false, "magic": 99,
        "version": "v9", "sharedState": true, "worker": sd_worker("ready")});
    std::fs::write(&cfg, text.to_string()).unwrap();
    let (st, out, err) = run_cmd(std::process::Command::new(master_bin()).args(["--check", "-c"]).arg(&cfg), T);
    assert_eq!(st.code(), Some(0), "{}{}", out, err);
    assert!(out.contains("probe: off; the config declares magic 99, version v9, sharedState true"), "{}", out);
    assert!(out.contains("the declared magic 99 is not compared"), "{}", out);
    assert!(out.contains("would be accepted"), "{}", out);
}

#[test]
fn an_upgrade_is_refused_while_workers_report_with_sd_notify() {
    // The workers' notify socket and the main processes they name are not
    // part of the master's hand-over (zdrestart(8), Upgrading the master):
    // the upgrade is refused before anything changes.
    let (m, sock) = master("ready", json!({}));
    m.wait_events_after(0, "worker.ready", 2, T);
    let before: Vec<i64> = status(&sock)["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_i64().unwrap()).collect();
    let answer = common::ask(&sock, "UPGRADE");
    assert!(answer.starts_with("NACK upgrade not possible: workers report with sd_notify(3)"), "{}", answer);
    // Nothing changed: the same master answers, with the same workers.
    let after: Vec<i64> = status(&sock)["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_i64().unwrap()).collect();
    assert_eq!(before, after);
    assert!(m.log_records().iter().all(|r| r["event"] != "master.upgrade" && r["event"] != "upgrade.exec"));
}

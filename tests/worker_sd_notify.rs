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
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
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

/// `$NOTIFY_SOCKET` of a worker (from its environment): a file system path.
fn notify_addr(pid: i32) -> PathBuf {
    let env = proc_environ(pid);
    let name = env.iter().find(|(k, _)| k == "NOTIFY_SOCKET").map(|(_, v)| v.clone()).expect("NOTIFY_SOCKET");
    assert!(name.starts_with('/'), "a file system socket: {}", name);
    PathBuf::from(name)
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
        assert!(v[0].1.starts_with('/') && v[0].1.ends_with("/notify"), "{:?}", v);
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
    UnixDatagram::unbound().unwrap().send_to(b"READY=1\nSTATUS=forged", notify_addr(pid)).unwrap();
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
    assert_eq!(ignored.expect("unknown keys logged")["msg"], "sd_notify: ignored FOO, X_NOT_KNOWN");
    // WATCHDOG=1 is known (a heartbeat), and counts for nothing before READY=1.
    assert!(m.log_records().iter().any(|r| r["msg"] == "heartbeat ignored (no watchdog running for it)"));
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
        tx.send_to(b"READY=1", notify_addr(w)).unwrap();
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
        assert!(env.iter().any(|(k, v)| k == "NOTIFY_SOCKET" && v.starts_with('/')), "{:?}", env);
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

/// The workers' pids, their main processes and their last STATUS=.
fn table(sock: &Path) -> Vec<(Value, Value, Value)> {
    let st = status(sock);
    st["workers"].as_array().unwrap().iter().map(|w| (w["pid"].clone(), w["main_pid"].clone(), w["status"].clone())).collect()
}

/// Was: "an upgrade is refused while workers report with sd_notify". The
/// workers' notify socket and the main processes they named are part of the
/// hand-over now: the new image keeps the socket (same path), watches and
/// signals the same main processes, and counts the reports of the new
/// workers of the roll-over on that socket.
#[test]
fn an_upgrade_keeps_the_notify_socket_and_the_main_processes() {
    let (m, sock) = master("mainpid", json!({}));
    m.wait_events_after(0, "worker.ready", 2, T);
    let mut before = Vec::new();
    assert!(wait_until(T, || {
        before = table(&sock);
        before.iter().all(|(_, main, _)| main.is_u64())
    }));
    let mains: Vec<i32> = before.iter().map(|(_, m, _)| m.as_i64().unwrap() as i32).collect();
    let path = notify_addr(mains[0]);
    assert_eq!(common::ask(&sock, "UPGRADE NORESTART"), format!("ACK upgraded {}", env!("CARGO_PKG_VERSION")), "{}", m.diagnostics());
    assert_eq!(table(&sock), before, "same workers, main processes and statuses");
    assert_eq!(m.events("worker.exit").len(), 0);
    assert!(path.exists(), "the socket is kept: {}", path.display());
    // The roll-over: new workers report MAINPID= and READY=1 on the same socket.
    let mark = m.mark();
    assert_eq!(common::ask(&sock, "UPGRADE WAIT"), "ACK complete", "{}", m.diagnostics());
    let ready = m.wait_events_after(mark, "worker.ready", 2, T);
    let st = status(&sock);
    assert_eq!(st["generation"], 2);
    for w in st["workers"].as_array().unwrap() {
        assert!(w["main_pid"].is_u64() && !mains.contains(&(w["main_pid"].as_i64().unwrap() as i32)), "{}", w);
        assert_eq!(notify_addr(w["main_pid"].as_i64().unwrap() as i32), path);
    }
    assert_eq!(ready.len(), 2);
    // The old main processes were stopped through the new image (SIGTERM to their groups).
    assert!(mains.iter().all(|&p| wait_until(T, || !pid_alive(p))));
    assert!(m.events("worker.kill").is_empty());
}

/// An aborted restart of sd_notify workers (ERRNO= before READY=1) locks
/// the master out; an upgrade ends the lockout and rolls the workers over.
#[test]
fn an_upgrade_ends_a_lockout_of_sd_notify_workers() {
    let (mut m, sock) = master("ready", json!({}));
    m.wait_events_after(0, "worker.ready", 2, T);
    m.rewrite_config(|c| {
        c.insert("worker".into(), sd_worker("errno"));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    m.wait_event_after(mark, "master.lockout", T);
    assert_eq!(status(&sock)["state"], "lockout");
    m.rewrite_config(|c| {
        c.insert("worker".into(), sd_worker("ready"));
    });
    let c = ctl(&sock, &["upgrade", "--wait"]);
    assert_eq!((c.code, c.out.as_str()), (0, "master upgraded; zero-downtime restart complete\n"), "{:?}\n{}", c, m.diagnostics());
    let up = m.wait_for_event("master.upgrade", T);
    assert_eq!(up["lockout_cleared"], true);
    let st = status(&sock);
    assert_eq!((&st["state"], &st["lockout"], &st["generation"]), (&json!("running"), &json!(false), &json!(3)), "{}", st);
    assert!(st["workers"].as_array().unwrap().iter().all(|w| w["state"] == "ready" && w["generation"] == 3));
}

/// The workers' socket is a file in a directory of its own in
/// `$RUNTIME_DIRECTORY`: with `serverUser`, the directory is the master's,
/// of serverUser's group, mode 0710, the socket mode 0660; another user
/// cannot send to it; both are gone after the master stops.
#[test]
fn the_notify_socket_is_private_to_the_workers_user_and_removed_at_stop() {
    // A short path: a socket's path has at most 107 bytes (sun_path).
    let run_dir = TestDir::new("rt");
    let run = run_dir.path().to_path_buf();
    let b = Master::for_test().env("RUNTIME_DIRECTORY", &run.display().to_string());
    let sock = b.dir().join("ctl.sock");
    let mut m = b
        .merge(json!({"notify": "systemd", "probe": false, "magic": 5, "sharedState": true, "worker": sd_worker("ready"), "serverUser": "nobody",
            "controlSocket": sock.display().to_string()}))
        .spawn();
    m.wait_events_after(0, "worker.ready", 2, T);
    let w = status(&sock)["workers"][0]["pid"].as_i64().unwrap() as i32;
    let path = notify_addr(w);
    let dir = path.parent().unwrap().to_path_buf();
    assert_eq!(dir.parent(), Some(run.as_path()), "{}", path.display());
    assert!(dir.file_name().unwrap().to_str().unwrap().starts_with("zdrestart-notify."), "{}", dir.display());
    let nobody_gid = 65534;
    let (d, f) = (std::fs::symlink_metadata(&dir).unwrap(), std::fs::symlink_metadata(&path).unwrap());
    assert_eq!((d.uid(), d.gid(), d.mode() & 0o7777), (0, nobody_gid, 0o710), "directory {}", dir.display());
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (0, nobody_gid, 0o660), "socket {}", path.display());
    // Another user cannot even reach it.
    let send = "import socket, sys\ntry:\n    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', sys.argv[1])\nexcept PermissionError:\n    print('denied')\n";
    let (st, out, err) = run_cmd(
        std::process::Command::new("setpriv").args(["--reuid=12345", "--regid=12345", "--clear-groups", "/usr/bin/python3", "-c", send]).arg(&path),
        T,
    );
    assert_eq!((st.code(), out.trim()), (Some(0), "denied"), "{}", err);
    m.signal(libc::SIGTERM);
    assert_eq!(Master::exit_code(m.wait_exit(T)), 0);
    assert!(!path.exists() && !dir.exists(), "{} left behind", dir.display());
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
}

/// The python3 of the test venv (scripts/test installs the PyPI sd-notify
/// client into it).
fn venv_python() -> String {
    secantusd_bin().parent().unwrap().join("python").display().to_string()
}

/// sd_notify clients that take `$NOTIFY_SOCKET` only as a path (they pass
/// it to connect(2) or sendto(2) as it is): the Ruby library of Debian's
/// ruby-sd-notify and the PyPI package sd-notify. Their workers report
/// ready with their STATUS=, and are rolled over by an upgrade (the new
/// image keeps the socket at its path).
#[test]
fn clients_that_take_only_a_path_report_and_survive_an_upgrade() {
    let servers = repo_root().join("tests/servers");
    let ruby = json!(["ruby", servers.join("ruby-sd-notify.rb").display().to_string()]);
    let python = json!([venv_python(), servers.join("py-sd-notify.py").display().to_string()]);
    for (name, worker) in [("ruby sd_notify", ruby), ("python sd_notify", python)] {
        let b = Master::for_test();
        let sock = b.dir().join("ctl.sock");
        let m = b
            .merge(json!({"notify": "systemd", "probe": false, "magic": 5, "sharedState": true, "worker": worker,
                "controlSocket": sock.display().to_string()}))
            .spawn();
        m.wait_events_after(0, "worker.ready", 2, T);
        for w in status(&sock)["workers"].as_array().unwrap() {
            assert_eq!(w["status"], format!("{} {}", name, w["pid"]), "{}", w);
        }
        assert_eq!(common::ask(&sock, "UPGRADE WAIT"), "ACK complete", "{}: {}", name, m.diagnostics());
        let st = status(&sock);
        assert_eq!(st["generation"], 2);
        assert!(st["workers"].as_array().unwrap().iter().all(|w| w["state"] == "ready" && w["generation"] == 2), "{}", st);
    }
}

//! zdrestartctl's exit statuses against real masters (zdrestartctl(8), EXIT
//! STATUS): each one a fleet tool branches on, produced by the situation it
//! names, with what the master did checked beside it. 0 complete, 1 refused
//! (nothing changed), 2 usage, 3 aborted (lockout), 4 not possible right
//! now (a restart in flight, the master starting), 5 timed out, 6 no master
//! (none runs, or it stops under the client). And `status --json` has what a
//! rollout decides on: version, master_version, magic, generation, lockout.
//!
//! The masters use the sqlite driver (a store every worker shares, so that
//! restarts are admitted) in the test's own directory. Restarts are held in
//! flight by the gates of tests/common/fault.rs, never by a raced timeout.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A serving master on the sqlite store with a control socket.
fn master(extra: Value) -> (Master, PathBuf) {
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock");
    let db = b.dir().join("objects.db");
    let m = b
        .merge(json!({"driver": "sqlite", "params": {"path": db.display().to_string()}, "shutdownTimeout": 5}))
        .set("controlSocket", sock.display().to_string())
        .merge(extra)
        .start();
    (m, sock)
}

fn sorted_pids(st: &Value) -> Vec<i64> {
    let mut v: Vec<i64> = st["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_i64().unwrap()).collect();
    v.sort();
    v
}

/// `zdrestartctl status --json` (exit 0) as JSON.
fn status_json(sock: &Path) -> Value {
    let c = ctl(sock, &["status", "--json"]);
    assert_eq!(c.code, 0, "{:?}", c);
    serde_json::from_str(c.out.trim()).unwrap_or_else(|e| panic!("status --json: {}: {:?}", e, c))
}

/// zdrestartctl started in the background (for a wait the test interrupts).
fn ctl_spawn(args: &[&str]) -> Child {
    let mut cmd = common::spawn::command(ctl_bin());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    scrub_env(&mut cmd);
    cmd.spawn().expect("zdrestartctl")
}

fn ctl_finish(child: Child) -> Ctl {
    let o = child.wait_with_output().unwrap();
    let (steps, out) = split_steps(&String::from_utf8_lossy(&o.stdout));
    Ctl { code: o.status.code().expect("zdrestartctl killed by a signal"), out, err: String::from_utf8_lossy(&o.stderr).into_owned(), steps }
}

#[test]
fn exit_0_complete_and_1_refused_with_nothing_changed_and_status_json() {
    let (mut m, sock) = master(json!({}));
    let st = status_json(&sock);
    for k in ["state", "generation", "lockout", "magic", "version", "master_version", "pid", "workers"] {
        assert!(st.get(k).is_some(), "status --json has {}: {}", k, st);
    }
    assert_eq!((st["state"].as_str(), st["generation"].as_u64(), st["lockout"].as_bool()), (Some("running"), Some(1), Some(false)));
    assert_eq!(st["master_version"], "0.1.0", "{}", st);
    assert_eq!(st["version"], "0.1.0", "the built-in worker's version: {}", st);
    let before = sorted_pids(&st);

    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!((c.code, c.out.as_str()), (0, "zero-downtime restart complete\n"), "{:?}", c);
    let st = status_json(&sock);
    assert_eq!((st["generation"].as_u64(), st["lockout"].as_bool()), (Some(2), Some(false)), "{}", st);
    let gen2 = sorted_pids(&st);
    assert!(gen2.iter().all(|p| !before.contains(p)), "every worker new: {:?} -> {:?}", before, gen2);

    // Refusals: exit 1, the reason on stderr, no worker touched.
    let mark = m.mark();
    m.rewrite_config(|c| {
        c.insert("port".into(), json!(free_port()));
    });
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(c.code, 1, "{:?}", c);
    assert!(c.err.starts_with("zdrestartctl: restart refused: listen address changed"), "{:?}", c);
    let port = m.port;
    m.rewrite_config(|c| {
        c.insert("port".into(), json!(port));
        c.insert("workers".into(), json!(1));
    });
    let c = ctl(&sock, &["restart"]);
    assert_eq!(c.code, 1, "{:?}", c);
    assert!(c.err.starts_with("zdrestartctl: restart refused: no workers"), "{:?}", c);
    let st = status_json(&sock);
    assert_eq!((st["generation"].as_u64(), sorted_pids(&st)), (Some(2), gen2), "nothing changed: {}", st);
    assert!(m.log_records()[mark..].iter().all(|r| event_of(r) != "worker.spawn"), "{}", m.diagnostics());
}

#[test]
fn exit_3_aborted_leaves_the_old_workers_serving_in_lockout() {
    let (mut m, sock) = master(json!({}));
    let before = sorted_pids(&status_json(&sock));
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("die-at-start.sh"));
    });
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(c.code, 3, "{:?}", c);
    assert!(c.err.starts_with("zdrestartctl: restart failed: aborted: new worker exited"), "{:?}", c);
    let st = status_json(&sock);
    assert_eq!((st["state"].as_str(), st["lockout"].as_bool()), (Some("lockout"), Some(true)), "{}", st);
    assert_eq!(sorted_pids(&st), before, "the old workers serve on: {}", st);
    assert_eq!(m.healthz().status, 200);

    // Every later restart: refused as "aborted restart", the same class.
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(c.code, 3, "{:?}", c);
    assert!(c.err.starts_with("zdrestartctl: restart refused: aborted restart"), "{:?}", c);

    // The way out: upgrade --wait (a fresh state), with a worker that starts.
    m.rewrite_config(|c| {
        c.remove("worker");
    });
    let c = ctl(&sock, &["upgrade", "--wait"]);
    assert_eq!(c.code, 0, "{:?}", c);
    assert_eq!(status_json(&sock)["lockout"], false);
}

#[test]
fn exit_4_while_a_restart_is_in_flight_or_the_master_starts() {
    let (mut m, sock) = master(json!({}));
    let gate = ProbeGate::new(m.config_path.parent().unwrap());
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("probe-held.sh"));
    });
    let mut first = ControlClient::connect(&sock);
    first.send("RESTART WAIT\n");
    assert!(wait_until(T, || status_json(&sock)["state"] == "restarting"), "the restart is probing");
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(c.code, 4, "{:?}", c);
    assert!(c.err.starts_with("zdrestartctl: restart refused: restart in flight"), "{:?}", c);
    gate.release("pass");
    assert_eq!(first.line(), "ACK complete");
    drop(m);

    // A master whose start-up probe is held: the pidfile is locked, the
    // control socket not open yet. With its config, zdrestartctl says
    // "starting" (4); with the socket alone it cannot know (6).
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock");
    let gate = ProbeGate::new(b.dir().path());
    let m = b
        .set("controlSocket", sock.display().to_string())
        .set("worker", fault_worker_json("probe-held.sh"))
        .spawn();
    let pidfile = m.pidfile.clone().unwrap();
    assert!(wait_until(T, || std::fs::read_to_string(&pidfile).is_ok_and(|s| s.trim() == m.pid().to_string())), "pidfile");
    let cfg = m.config_path.display().to_string();
    let c = ctl_raw(&["-c", &cfg, "restart", "--wait"]);
    assert_eq!(c.code, 4, "{:?}", c);
    assert!(c.err.contains("a master runs (pid ") && c.err.contains("the master is starting"), "{:?}", c);
    assert_eq!(ctl(&sock, &["status"]).code, 6);
    gate.release("pass");
    m.wait_serving(T);
    assert_eq!(ctl_raw(&["-c", &cfg, "status", "--json"]).code, 0);
}

#[test]
fn exit_5_on_timeout_while_the_restart_goes_on() {
    let (mut m, sock) = master(json!({}));
    let gate = ReadyGate::new(m.config_path.parent().unwrap());
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("ready-held.sh"));
    });
    let c = ctl(&sock, &["--timeout", "0.5", "restart", "--wait"]);
    assert_eq!(c.code, 5, "{:?}", c);
    assert!(c.err.contains("no answer within 0.5 s; the restart may still be in progress"), "{:?}", c);
    assert_eq!(status_json(&sock)["state"], "restarting");
    gate.open();
    m.wait_for_event("restart.complete", T);
    assert_eq!(status_json(&sock)["generation"], 2);
}

#[test]
fn exit_6_without_a_master_and_when_it_stops_under_the_wait() {
    let (mut m, sock) = master(json!({}));
    let _gate = ReadyGate::new(m.config_path.parent().unwrap());
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("ready-held.sh"));
    });
    let sock_s = sock.display().to_string();
    let waiting = ctl_spawn(&["-s", &sock_s, "restart", "--wait"]);
    m.wait_for_event("restart.start", T);
    m.signal(libc::SIGTERM);
    let c = ctl_finish(waiting);
    assert_eq!(c.code, 6, "{:?}", c);
    assert!(c.err.starts_with("zdrestartctl: restart refused: stopping"), "{:?}", c);
    assert_eq!(Master::exit_code(m.wait_exit(T)), 0);

    // Gone: no socket, and no master holds the pidfile.
    let cfg = m.config_path.display().to_string();
    let c = ctl_raw(&["-c", &cfg, "restart", "--wait"]);
    assert_eq!(c.code, 6, "{:?}", c);
    assert!(c.err.contains("No such file") && c.err.contains("the master is not running"), "{:?}", c);
    assert_eq!(ctl(&sock, &["status", "--json"]).code, 6);
    // Usage stays 2.
    assert_eq!(ctl(&sock, &["restart", "--now"]).code, 2);
}

#[test]
fn help_and_man_page_list_the_same_exit_statuses() {
    let c = ctl_raw(&["--help"]);
    assert_eq!(c.code, 0);
    let man = std::fs::read_to_string(repo_root().join("man/zdrestartctl.8")).unwrap();
    let section = &man[man.find(".Sh EXIT STATUS").unwrap()..man.find(".Sh EXAMPLES").unwrap()];
    for (n, word) in [(0, "complete"), (1, "refused"), (2, "usage"), (3, "aborted"), (4, "not possible right now"), (5, "timed out"), (6, "no master")] {
        assert!(c.out.contains(&format!("\n  {}  {}", n, word)), "--help: {} {}:\n{}", n, word, c.out);
        assert!(section.contains(&format!(".It {}\n", n)), "man page: .It {}", n);
    }
}

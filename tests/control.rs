//! The control socket and `zdrestartctl` end to end (zdrestartctl(8), its
//! Protocol section; ARCHITECTURE.md): a real master, real workers, a real MongoDB-compatible
//! server where a restart must be accepted, and the fault workers of
//! tests/fault/.
//!
//! Every command and every NACK reason goes through the socket twice: as raw
//! lines on a `UnixStream` (the pump.io-compatible protocol, byte for byte) and
//! through `zdrestartctl` (its exit status, by the class of the answer:
//! tests/ctl_exit_codes.rs has each one, and what it prints). Then: STATUS fields against /proc, LOGLEVEL, the
//! socket file's life (mode 0600, other users, stale file, live socket,
//! removal at exit), and hostile clients during a restart.
//!
//! Layout: helpers (masters; the client itself is tests/common/control.rs),
//! then one section per theme. A restart is held in flight by the gates of
//! tests/common/fault.rs, never by a timeout raced against the test.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Helpers: STATUS and zdrestartctl (the client itself: tests/common/control.rs)

fn sorted_pids(st: &Value) -> Vec<i32> {
    let mut v: Vec<i32> =
        st["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_i64().unwrap() as i32).collect();
    v.sort();
    v
}

/// Assert a NACK through zdrestartctl: its exit status (zdrestartctl(8): 1
/// refused, 3 aborted or in lockout, 4 retry later, 6 stopping), nothing on
/// stdout, the reason and some advice on stderr.
fn assert_ctl_nack(c: &Ctl, verb: &str, reason: &str) {
    let code = match reason.split(':').next().unwrap() {
        "aborted" | "aborted restart" => 3,
        "restart in flight" | "too many clients" => 4,
        "stopping" => 6,
        _ => 1,
    };
    assert_eq!(c.code, code, "NACK {:?} must exit {}: {:?}", reason, code, c);
    assert!(c.out.is_empty(), "a NACK prints nothing on stdout: {:?}", c);
    let head = format!("zdrestartctl: {}: {}", verb, reason);
    assert!(c.err.starts_with(&head), "stderr must start with {:?}: {:?}", head, c);
    // operator_message: "<reason>: <describe>.\n<advice>" -> at least 2 lines.
    assert!(c.err.trim_end().lines().count() >= 2, "reason and advice on stderr: {:?}", c);
}

// ---------------------------------------------------------------------------
// Helpers: masters

/// A builder with `controlSocket` at `<test dir>/ctl.sock`; returns it and the path.
fn builder_with_socket() -> (MasterBuilder, PathBuf) {
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock");
    let b = b.set("controlSocket", sock.display().to_string());
    (b, sock)
}

/// A memory-driver master with a control socket, serving.
fn mem_master(extra: Value) -> (Master, PathBuf) {
    let (b, sock) = builder_with_socket();
    (b.merge(extra).start(), sock)
}

/// A MongoDB master with 2 workers and a control socket, serving.
fn mongo_master(mongo: &Mongo, extra: Value) -> (Master, PathBuf) {
    let (b, sock) = builder_with_socket();
    let m = b
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri(), "timeout": 2}, "shutdownTimeout": 3}))
        .merge(extra)
        .start();
    (m, sock)
}

fn set_worker(m: &mut Master, script: Option<&str>, extra: Value) {
    m.rewrite_config(|c| {
        match script {
            Some(s) => c.insert("worker".into(), fault_worker_json(s)),
            None => c.remove("worker"),
        };
        for (k, v) in extra.as_object().unwrap() {
            c.insert(k.clone(), v.clone());
        }
    });
}

fn refused_records_after(m: &Master, mark: usize) -> Vec<Value> {
    m.log_records()[mark..].iter().filter(|r| event_of(r) == "restart.refused").cloned().collect()
}

// ---------------------------------------------------------------------------
// Commands other than RESTART

#[test]
fn informational_commands_raw_and_through_zdrestartctl() {
    let (m, sock) = mem_master(json!({"logLevel": "info"}));

    // Raw, byte for byte (pump.io answers).
    let mut c = ControlClient::connect(&sock);
    c.send("CMDS\n");
    assert_eq!(c.line_raw(), "ACK CMDS VERSION LOGLEVEL STATUS RESTART UPGRADE PROMOTE ROLLBACK\n");
    c.send("VERSION\n");
    assert_eq!(c.line_raw(), "ACK 0.1.0\n");
    assert_eq!(c.cmd("LOGLEVEL loud"), "NACK invalid");
    assert_eq!(c.cmd("LOGLEVEL"), "NACK invalid");
    assert_eq!(c.cmd("HELLO"), "NACK unknown");
    assert_eq!(c.cmd("STATUS please"), "NACK unknown argument");
    // Case-insensitive, \r\n accepted, blank lines ignored (no answer), and
    // pipelined commands answered in order.
    c.send("\n   \r\nversion\r\ncmds\nNOPE\n");
    assert_eq!(c.line(), "ACK 0.1.0");
    assert_eq!(c.line(), "ACK CMDS VERSION LOGLEVEL STATUS RESTART UPGRADE PROMOTE ROLLBACK");
    assert_eq!(c.line(), "NACK unknown");
    // `echo CMD | nc -U`: a last line without newline before EOF is a command.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"VERSION").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(all, "ACK 0.1.0\n");

    // STATUS: every field, workers against /proc.
    let st = status(&sock);
    assert_eq!(st["state"], "running", "{}", st);
    assert_eq!(st["generation"], 1);
    assert_eq!(st["lockout"], false);
    assert!(st["magic"].as_u64().is_some(), "{}", st);
    assert_eq!(st["version"], "0.1.0");
    assert_eq!(st["pid"].as_i64(), Some(m.pid() as i64));
    assert!(st["started"].as_str().is_some_and(|s| s.ends_with('Z') && s.len() == 24), "{}", st);
    assert!(st["last_restart"].is_null(), "no restart yet: {}", st);
    let real = m.worker_pids();
    assert_eq!(real.len(), 2);
    assert_eq!(sorted_pids(&st), real, "STATUS pids vs /proc: {}", st);
    let mut idx: Vec<u64> = st["workers"].as_array().unwrap().iter().map(|w| w["index"].as_u64().unwrap()).collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1]);
    for w in st["workers"].as_array().unwrap() {
        assert_eq!(w["generation"], 1, "{}", w);
        assert_eq!(w["state"], "ready", "{}", w);
        assert!(w["started"].as_str().is_some_and(|s| s.ends_with('Z')), "{}", w);
    }
    // The master's magic is what the probe reported at start.
    let start = m.wait_for_event("master.start", T);
    assert_eq!(st["magic"], start["magic"]);

    // zdrestartctl.
    let v = ctl(&sock, &["version"]);
    assert_eq!((v.code, v.out.as_str()), (0, "0.1.0\n"), "{:?}", v);
    let v = ctl(&sock, &["cmds"]);
    assert_eq!((v.code, v.out.as_str()), (0, "CMDS VERSION LOGLEVEL STATUS RESTART UPGRADE PROMOTE ROLLBACK\n"), "{:?}", v);
    let v = ctl(&sock, &["status", "--json"]);
    assert_eq!(v.code, 0, "{:?}", v);
    let j: Value = serde_json::from_str(v.out.trim_end()).unwrap_or_else(|e| panic!("{}: {:?}", e, v));
    assert_eq!(sorted_pids(&j), real);
    assert_eq!(v.out.lines().count(), 1, "status --json prints the one-line JSON: {:?}", v);
    let v = ctl(&sock, &["status"]);
    assert_eq!(v.code, 0, "{:?}", v);
    assert!(v.out.starts_with("running: generation 1, "), "{:?}", v);
    assert!(!v.out.contains("Lockout"), "{:?}", v);
    assert!(v.out.contains("; last restart: none\n"), "{:?}", v);
    assert!(v.out.contains(&format!("pid {}", m.pid())), "{:?}", v);
    for p in &real {
        assert!(v.out.contains(&format!(" {} ", p)), "worker {} in {:?}", p, v);
    }
    // Usage errors are exit 2, checked by the client before connecting.
    for bad in [&["loglevel", "loud"][..], &["frob"][..], &["restart", "now"][..], &["status", "--yaml"][..]] {
        let v = ctl(&sock, bad);
        assert_eq!(v.code, 2, "{:?}: {:?}", bad, v);
        assert!(v.err.contains("zdrestartctl:"), "{:?}", v);
    }
    // Nothing of this touched the workers.
    assert_eq!(m.worker_pids(), real);
    assert_eq!(m.events("worker.spawn").len(), 2);
}

/// Hold `MAX_CLIENTS` (64) answered connections and open one more: the master
/// evicts the held one idle longest (the first), logs that at debug level,
/// and answers the new one. Returns the 63 held connections left.
fn fill_clients(sock: &Path) -> Vec<ControlClient> {
    let mut held = Vec::new();
    while held.len() < 64 {
        let mut c = ControlClient::connect(sock);
        assert_eq!(c.cmd("VERSION"), "ACK 0.1.0", "with {} clients held", held.len());
        held.push(c);
    }
    let mut extra = ControlClient::connect(sock);
    assert_eq!(extra.cmd("VERSION"), "ACK 0.1.0", "a 65th client is served");
    assert!(held[0].closed_within(Duration::from_secs(5)), "the longest idle client is evicted");
    held.remove(0);
    // The eviction happens before the new client is served: once it has
    // its answer, a second eviction would show now.
    assert!(!held[0].closed_now(), "only one client is evicted");
    held
}

#[test]
fn loglevel_changes_the_master_and_new_workers() {
    // logLevel info: no debug record in the log until LOGLEVEL debug.
    let (m, sock) = mem_master(json!({"logLevel": "info"}));
    let debug_after = |m: &Master, mark: usize| -> Vec<Value> {
        m.log_records()[mark..].iter().filter(|r| r["level"] == 20).cloned().collect()
    };

    // At info, an evicted client (a debug record) leaves no trace. The
    // master writes that record before it shuts the evicted client down, so
    // once fill_clients has seen the eviction, the record would be there.
    let mark = m.mark();
    drop(fill_clients(&sock));
    assert!(debug_after(&m, mark).is_empty(), "{:?}", debug_after(&m, mark));

    // LOGLEVEL debug (raw): the master logs at debug now. (Its own record,
    // from the control component: the workers write one of their own.)
    let mark = m.mark();
    assert_eq!(ask(&sock, "LOGLEVEL debug"), "ACK");
    m.wait_for("the master's log level set record", T, |recs| {
        recs[mark..]
            .iter()
            .find(|r| r["component"] == "control" && r["msg"].as_str().unwrap_or("").starts_with("log level set to debug"))
            .map(|_| ())
    });
    let mark = m.mark();
    drop(fill_clients(&sock));
    m.wait_for("a debug record from the master", T, |recs| {
        recs[mark..]
            .iter()
            .find(|r| r["level"] == 20 && r["msg"].as_str().unwrap_or("").starts_with("control client evicted"))
            .map(|_| ())
    });

    // New workers get ZDRESTART_LOGLEVEL=debug: kill one, its replacement
    // carries it (old ones do not), and its debug records reach the log.
    let old = m.worker_pids();
    for p in &old {
        let env = environ_of(*p);
        assert!(env.iter().any(|(k, _)| k == "ZDRESTART_NOTIFY_FD"), "environ of worker {}: {:?}", p, env);
        assert!(!env.iter().any(|(k, _)| k == "ZDRESTART_LOGLEVEL"), "old worker {}: {:?}", p, env);
    }
    // Past the master's crash window (1 s): the respawn is immediate.
    assert!(wait_older_than(&old, Duration::from_secs(1), T));
    let mark = m.mark();
    kill(old[0], libc::SIGKILL);
    m.wait_events_after(mark, "worker.ready", 1, T);
    let now = m.wait_worker_count(2, T);
    let newp = *now.iter().find(|p| !old.contains(p)).expect("a new worker");
    let env = environ_of(newp);
    assert!(env.iter().any(|(k, v)| k == "ZDRESTART_LOGLEVEL" && v == "debug"), "env of {}: {:?}", newp, env);
    // Requests until the new worker served one and logged it at debug.
    let mark = m.mark();
    m.wait_for("a debug record of the new worker", T, |recs| {
        let _ = get(m.port, "/healthz");
        recs[mark..].iter().find(|r| r["level"] == 20 && worker_pid_of(r) == Some(newp)).map(|_| ())
    });

    // Running workers follow too, through their control pipe: the old worker
    // started before LOGLEVEL now logs its requests at debug, and says so.
    let still_old = old[1];
    let mark = m.mark();
    m.wait_for("a debug record of a worker started before LOGLEVEL", T, |recs| {
        let _ = get(m.port, "/healthz");
        recs[mark..].iter().find(|r| r["level"] == 20 && worker_pid_of(r) == Some(still_old)).map(|_| ())
    });
    assert!(
        m.log_records().iter().any(|r| worker_pid_of(r) == Some(still_old)
            && r["msg"].as_str().unwrap_or("").starts_with("log level set to debug by the master")),
        "worker {} did not report the new level",
        still_old
    );

    // zdrestartctl loglevel restore: back to info for the master and every worker.
    let mark = m.mark();
    let v = ctl(&sock, &["loglevel", "restore"]);
    assert_eq!((v.code, v.out.as_str()), (0, "log level restored to logLevel of the config\n"), "{:?}", v);
    m.wait_for("the master's log level restored record", T, |recs| {
        recs[mark..]
            .iter()
            .find(|r| r["component"] == "control" && r["msg"].as_str().unwrap_or("").starts_with("log level restored to info"))
            .map(|_| ())
    });
    let mark = m.mark();
    drop(fill_clients(&sock));
    // A request to a worker, whose record (debug, if the worker still logged
    // at debug) is written before its answer; then SIGHUP to that worker,
    // whose info record comes after it on the same pipe: once the master has
    // logged that one, it has handled the request's record too. The master
    // filters worker records by its own level: nothing at debug at all.
    let answered_by = get(m.port, "/healthz").worker_pid().expect("X-Worker-Pid");
    assert!(kill(answered_by, libc::SIGHUP));
    m.wait_for("the SIGHUP record of the worker that answered", T, |recs| {
        recs[mark..]
            .iter()
            .find(|r| worker_pid_of(r) == Some(answered_by) && r["msg"].as_str().unwrap_or("").starts_with("SIGHUP received"))
            .map(|_| ())
    });
    assert!(debug_after(&m, mark).is_empty(), "{:?}", debug_after(&m, mark));
    let before = m.worker_pids();
    assert!(wait_older_than(&before, Duration::from_secs(1), T));
    let mark = m.mark();
    kill(newp, libc::SIGKILL);
    m.wait_events_after(mark, "worker.ready", 1, T);
    let after = m.wait_worker_count(2, T);
    let newer = *after.iter().find(|p| !before.contains(p)).expect("a new worker");
    let env = environ_of(newer);
    assert!(!env.iter().any(|(k, _)| k == "ZDRESTART_LOGLEVEL"), "after restore: {:?}", env);

    // zdrestartctl loglevel LEVEL (case-insensitive on the client side).
    let v = ctl(&sock, &["loglevel", "WARN"]);
    assert_eq!((v.code, v.out.as_str()), (0, "log level set to warn\n"), "{:?}", v);
    assert_eq!(ask(&sock, "LOGLEVEL fatal"), "ACK");
    assert_eq!(ask(&sock, "loglevel Restore"), "ACK");
}

// ---------------------------------------------------------------------------
// RESTART refusals

/// `RESTART` and `RESTART WAIT` raw, then `restart` and `restart --wait`
/// through zdrestartctl: each refused with `reason`. Returns the raw answer.
fn assert_refused_everywhere(m: &Master, sock: &Path, reason: &str) -> String {
    let mark = m.mark();
    let a = ask(sock, "RESTART");
    assert!(
        a == format!("NACK {}", reason) || a.starts_with(&format!("NACK {}: ", reason)),
        "RESTART: expected NACK {}, got {:?}",
        reason,
        a
    );
    // pump.socket(7) text, exactly, for its five reasons (details are logged).
    let pump = ["no workers", "bad driver", "aborted restart", "restart in flight", "incompatibility"];
    if pump.contains(&reason) {
        assert_eq!(a, format!("NACK {}", reason));
    }
    let w = ask(sock, "RESTART WAIT");
    assert!(w.starts_with(&format!("NACK {}", reason)), "RESTART WAIT: {:?}", w);
    for args in [&["restart"][..], &["restart", "--wait"][..]] {
        let c = ctl(sock, args);
        assert_ctl_nack(&c, "restart refused", reason);
    }
    // One warn record per refusal, with the stable reason.
    let recs = refused_records_after(m, mark);
    assert_eq!(recs.len(), 4, "{:?}", recs);
    for r in &recs {
        assert_eq!(r["reason"], reason, "{}", r);
        assert_eq!(r["level"], 40, "{}", r);
    }
    // RESTART WAIT (ours) carries the detail.
    w
}

#[test]
fn refusals_without_probe_on_a_memory_master() {
    let (mut m, sock) = mem_master(json!({}));
    let before = m.worker_pids();

    // bad driver: memory.
    let a = assert_refused_everywhere(&m, &sock, "bad driver");
    assert!(a.contains("memory"), "{:?}", a);
    let c = ctl(&sock, &["restart"]);
    assert!(c.err.contains("\"driver\": \"mongodb\""), "advice names the driver to use: {:?}", c);
    let st = status(&sock);
    assert_eq!(st["last_restart"]["outcome"], "refused", "{}", st);
    assert!(st["last_restart"]["reason"].as_str().unwrap().starts_with("bad driver"), "{}", st);
    assert_eq!(st["generation"], 1);
    assert_eq!(st["state"], "running");

    // no workers (checked before the driver).
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(1));
    });
    assert_refused_everywhere(&m, &sock, "no workers");

    // listen address changed.
    let port = m.port;
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(2));
        c.insert("port".into(), json!(free_port()));
    });
    assert_refused_everywhere(&m, &sock, "listen address changed");
    let c = ctl(&sock, &["restart"]);
    assert!(c.err.contains("normal restart"), "{:?}", c);
    m.rewrite_config(|c| {
        c.insert("port".into(), json!(port));
    });

    // bad config: not JSON; its detail names the file.
    m.write_config_raw("{ \"workers\": 2, ");
    let a = assert_refused_everywhere(&m, &sock, "bad config");
    assert!(a.contains("zdrestart.json"), "{:?}", a);
    let c = ctl(&sock, &["restart"]);
    assert!(c.err.contains("zdrestart --check"), "advice of bad config: {:?}", c);
    let st = status(&sock);
    assert_eq!(st["last_restart"]["outcome"], "refused");
    assert!(st["last_restart"]["reason"].as_str().unwrap().starts_with("bad config"), "{}", st);
    let v = ctl(&sock, &["status"]);
    assert!(v.out.contains("; last restart: refused: bad config"), "{:?}", v);

    // Nothing changed through all of it.
    assert_eq!(m.worker_pids(), before);
    assert!(m.events("restart.start").is_empty());
    assert_eq!(m.events("worker.spawn").len(), 2);
    assert_eq!(status(&sock)["generation"], 1);
}

#[test]
fn refusals_after_probe_and_restart_in_flight() {
    let mongo = Mongo::start();
    let (mut m, sock) = mongo_master(&mongo, json!({}));
    let before = m.worker_pids();

    // incompatibility: the probe of the new code reports magic 999999.
    set_worker(&mut m, Some("bad-magic.sh"), json!({}));
    let a = assert_refused_everywhere(&m, &sock, "incompatibility");
    assert!(a.contains("999999"), "{:?}", a);

    // probe failed: the probe reports an error.
    set_worker(&mut m, Some("probe-error.sh"), json!({}));
    let a = assert_refused_everywhere(&m, &sock, "probe failed");
    assert!(a.contains("simulated by probe-error.sh"), "the probe's error is the detail: {:?}", a);

    // restart in flight: the probe is held until the test gives its verdict
    // (probe-held.sh; no timeout to race). Meanwhile a RESTART (raw) and a
    // `zdrestartctl restart` are refused at once; the first client, waiting,
    // gets `probe failed` with the verdict as detail.
    let gate = m.hold_probes();
    let mark = m.mark();
    let mut first = ControlClient::connect(&sock);
    first.send("RESTART WAIT\n");
    m.wait_for("the restart to be requested", T, |recs| {
        recs[mark..]
            .iter()
            .find(|r| r["component"] == "master" && r["msg"].as_str().unwrap_or("").starts_with("zero-downtime restart requested"))
            .map(|_| ())
    });
    let st = status(&sock);
    assert_eq!(st["state"], "restarting", "{}", st);
    assert_eq!(ask(&sock, "RESTART"), "NACK restart in flight");
    assert_eq!(ask(&sock, "RESTART WAIT"), "NACK restart in flight");
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_ctl_nack(&c, "restart refused", "restart in flight");
    assert!(c.err.contains("Wait for it to end"), "{:?}", c);
    // A refusal in flight does not overwrite the last restart's record.
    assert_eq!(status(&sock)["last_restart"]["outcome"], "refused");
    assert!(status(&sock)["last_restart"]["reason"].as_str().unwrap().starts_with("probe failed"));
    assert!(!first.closed_now(), "the waiting client is still connected and unanswered");
    gate.release("database unreachable: told so by the test");
    let a = first.line();
    assert_eq!(a, "NACK probe failed: ERROR=database unreachable: told so by the test");
    let recs = refused_records_after(&m, mark);
    let reasons: Vec<&str> = recs.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, vec!["restart in flight", "restart in flight", "restart in flight", "probe failed"]);

    // Through all of it: same workers, generation 1, no probe left.
    assert_eq!(m.worker_pids(), before);
    let st = status(&sock);
    assert_eq!((st["generation"].as_u64(), st["state"].as_str()), (Some(1), Some("running")), "{}", st);
    assert!(m.events("restart.start").is_empty());
    assert!(wait_until(Duration::from_secs(5), || m.children().len() == 2), "{:?}", m.children());
}

// ---------------------------------------------------------------------------
// Accepted restarts

#[test]
fn restart_wait_returns_after_complete_and_old_workers_gone() {
    let mongo = Mongo::start();
    let (mut m, sock) = mongo_master(&mongo, json!({}));
    let old = m.worker_pids();
    assert_eq!(sorted_pids(&status(&sock)), old);

    // zdrestartctl restart --wait, with 3 workers in the new config.
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(3));
    });
    let mark = m.mark();
    let c = ctl(&sock, &["restart", "--wait"]);
    // Right after it returns: no old worker left (not even a zombie: /proc
    // has no entry once the master reaped it) and restart.complete is logged.
    let still: Vec<i32> = old.iter().copied().filter(|p| proc_stat(*p).is_some_and(|s| s.ppid == m.pid())).collect();
    let done: Vec<Value> = m.log_records()[mark..].iter().filter(|r| event_of(r) == "restart.complete").cloned().collect();
    assert_eq!((c.code, c.out.as_str()), (0, "zero-downtime restart complete\n"), "{:?}", c);
    assert!(c.err.is_empty(), "{:?}", c);
    assert!(still.is_empty(), "old workers still there when --wait returned: {:?}", still);
    assert_eq!(done.len(), 1, "restart.complete must be logged before --wait returns");
    assert_eq!(done[0]["generation"], 2);

    let st = status(&sock);
    assert_eq!(st["generation"], 2, "{}", st);
    assert_eq!(st["state"], "running");
    assert_eq!(st["lockout"], false);
    let lr = &st["last_restart"];
    assert_eq!(lr["outcome"], "complete", "{}", st);
    assert_eq!(lr["generation"], 2);
    assert!(lr["reason"].is_null(), "{}", st);
    assert_eq!(lr["duration_ms"], done[0]["duration_ms"], "{}", st);
    let new = m.wait_worker_count(3, T);
    assert_eq!(sorted_pids(&st), new, "{}", st);
    assert!(new.iter().all(|p| !old.contains(p)));
    for w in st["workers"].as_array().unwrap() {
        assert_eq!((w["generation"].as_u64(), w["state"].as_str()), (Some(2), Some("ready")), "{}", w);
    }
    let v = ctl(&sock, &["status"]);
    assert!(v.out.starts_with("running: generation 2, ") && v.out.contains("; last restart: complete (generation 2) in "), "{:?}", v);

    // Raw RESTART WAIT: `ACK complete`, the same guarantees. A command
    // pipelined behind it is answered after it, in order.
    let old = new;
    let mark = m.mark();
    let mut c = ControlClient::connect(&sock);
    c.send("RESTART WAIT\nVERSION\n");
    let a = c.line();
    let still: Vec<i32> = old.iter().copied().filter(|p| proc_stat(*p).is_some_and(|s| s.ppid == m.pid())).collect();
    let complete = m.log_records()[mark..].iter().any(|r| event_of(r) == "restart.complete");
    assert_eq!(a, "ACK complete");
    assert_eq!(c.line(), "ACK 0.1.0");
    assert!(still.is_empty(), "{:?}", still);
    assert!(complete);
    assert_eq!(status(&sock)["generation"], 3);

    // Raw RESTART: `ACK` once accepted (the probe passed and the rollout
    // started), before the restart completes: the new workers (ready-held.sh)
    // report ready only when the test opens their gate.
    let gate = m.hold_new_workers();
    let mark = m.mark();
    let a = ask(&sock, "RESTART");
    assert_eq!(a, "ACK");
    let recs = m.log_records();
    assert!(recs[mark..].iter().any(|r| event_of(r) == "restart.start"), "ACK comes after restart.start");
    let st = status(&sock);
    assert_eq!((st["state"].as_str(), st["last_restart"]["outcome"].as_str()), (Some("restarting"), Some("in progress")), "{}", st);
    gate.open();
    m.wait_event_after(mark, "restart.complete", T);
    set_worker(&mut m, None, json!({}));
    // zdrestartctl restart (no wait): exit 0 once accepted.
    let mark = m.mark();
    let c = ctl(&sock, &["restart"]);
    assert_eq!(c.code, 0, "{:?}", c);
    assert!(c.out.starts_with("zero-downtime restart started"), "{:?}", c);
    m.wait_event_after(mark, "restart.complete", T);
    assert_eq!(status(&sock)["generation"], 5);
    assert_eq!(m.healthz().json()["generation"], 5);

    // A RESTART WAIT client that goes away: the restart still completes and
    // the master is unharmed.
    let mark = m.mark();
    {
        let mut c = ControlClient::connect(&sock);
        c.send("RESTART WAIT\n");
    }
    m.wait_event_after(mark, "restart.complete", T);
    assert_eq!(status(&sock)["generation"], 6);
    assert_eq!(m.healthz().status, 200);
}

#[test]
fn aborted_restart_gives_exit_3_and_lockout() {
    let mongo = Mongo::start();
    let (mut m, sock) = mongo_master(&mongo, json!({}));
    let old = m.worker_pids();

    // The new worker dies at start: the rollout is aborted.
    set_worker(&mut m, Some("die-at-start.sh"), json!({}));
    let c = ctl(&sock, &["restart", "--wait"]);
    assert_ctl_nack(&c, "restart failed", "aborted: new worker exited");
    assert!(c.err.contains("restart the master as soon as possible"), "{:?}", c);
    let abort = m.wait_for_event("restart.abort", T);
    assert_eq!(abort["reason"], "new worker exited");

    let st = status(&sock);
    assert_eq!(st["lockout"], true, "{}", st);
    assert_eq!(st["state"], "lockout");
    assert_eq!(st["generation"], 2, "the aborted generation was started: {}", st);
    let lr = &st["last_restart"];
    assert_eq!(lr["outcome"], "aborted", "{}", st);
    assert!(lr["reason"].as_str().unwrap().starts_with("new worker exited"), "{}", st);
    assert!(lr["duration_ms"].as_u64().is_some(), "{}", st);
    // The old workers still serve and are what STATUS lists.
    assert_eq!(m.worker_pids(), old);
    assert_eq!(sorted_pids(&st), old);
    assert_eq!(m.healthz().status, 200);
    let v = ctl(&sock, &["status"]);
    assert_eq!(v.code, 0, "{:?}", v);
    assert!(v.out.starts_with("lockout: ") && v.out.contains("restart the master as soon as possible"), "{:?}", v);
    assert!(v.out.contains("; last restart: aborted (generation 2) in "), "{:?}", v);

    // Every later restart is refused: `aborted restart`, even with a good config.
    set_worker(&mut m, None, json!({}));
    assert_refused_everywhere(&m, &sock, "aborted restart");
    assert!(ctl(&sock, &["restart"]).err.contains("normal restart"));
    // Refusals in lockout do not hide the abort that caused it.
    assert_eq!(status(&sock)["last_restart"]["outcome"], "aborted");
    assert_eq!(status(&sock)["lockout"], true);
    assert_eq!(m.worker_pids(), old);
}

#[test]
fn raw_restart_wait_reports_an_abort() {
    // Raw protocol form of an abort: `NACK aborted: <why>: <detail>`, here a
    // new worker that is never ready within readyTimeout.
    let mongo = Mongo::start();
    let (mut m, sock) = mongo_master(&mongo, json!({}));
    set_worker(&mut m, Some("never-ready.sh"), json!({"readyTimeout": 2}));
    let a = ask(&sock, "RESTART WAIT");
    assert!(a.starts_with("NACK aborted: new worker not ready: "), "{:?}", a);
    assert!(a.contains("readyTimeout"), "{:?}", a);
    assert_eq!(status(&sock)["lockout"], true);
    let a = ask(&sock, "RESTART");
    assert!(a.starts_with("NACK aborted restart"), "{:?}", a);
}

// ---------------------------------------------------------------------------
// The socket file

#[test]
fn socket_is_mode_0600_and_refuses_other_users() {
    let (m, sock) = mem_master(json!({}));
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket(), "{:?}", meta.file_type());
    assert_eq!(meta.mode() & 0o7777, 0o600, "mode {:o}", meta.mode() & 0o7777);
    assert_eq!(meta.uid(), common::sys::euid());
    // No temporary directory of the bind left beside it.
    let leftovers: Vec<String> = std::fs::read_dir(m.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".zdctl"))
        .collect();
    assert!(leftovers.is_empty(), "{:?}", leftovers);

    // Make sure only the socket's own mode protects it: the directories on
    // the way are searchable by everyone.
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ctlb = ctl_bin();
    let ctl_s = ctlb.display().to_string();
    let sock_s = sock.display().to_string();
    // Positive control: nobody can run zdrestartctl and reach the directory
    // (a missing socket there is ENOENT, not EACCES).
    let missing = m.dir.join("nothing.sock").display().to_string();
    let as_nobody = |sock: &str| {
        let (st, out, err) = run_cmd(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", ctl_s.as_str(), "-s", sock, "version"]),
            T,
        );
        let (steps, out) = split_steps(&out);
        Ctl { code: st.code().unwrap_or(-1), out, err, steps }
    };
    let c = as_nobody(&missing);
    assert_eq!(c.code, 6, "no master there: {:?}", c);
    assert!(c.err.contains("No such file"), "nobody reaches the directory: {:?}", c);
    let c = as_nobody(&sock_s);
    assert_eq!(c.code, 2, "{:?}", c);
    assert!(c.err.contains("Permission denied"), "{:?}", c);
    assert!(c.err.contains("0600"), "the hint names the mode: {:?}", c);
    // Root (the owner) still gets in.
    assert_eq!(ask(&sock, "VERSION"), "ACK 0.1.0");
}

#[test]
fn live_socket_is_never_stolen_and_stale_one_is_replaced() {
    let (mut first, sock) = mem_master(json!({}));
    let first_ino = std::fs::metadata(&sock).unwrap().ino();

    // A second master (own port, pidfile, log) on the same controlSocket: exit 1.
    let (st, err, second) = Master::for_test()
        .set("controlSocket", sock.display().to_string())
        .run_to_exit(T);
    assert_eq!(Master::exit_code(st), 1, "stderr: {}", err);
    assert!(err.contains(&sock.display().to_string()) && err.contains("in use by a running master"), "{}", err);

    assert!(
        second.log_records().iter().any(|r| r["level"] == 60 && r["msg"].as_str().unwrap_or("").contains("in use by a running master")),
        "a fatal record in the second master's log\n{}",
        second.diagnostics()
    );
    // It started no worker (read from its log: it has exited, so /proc has
    // nothing to show).
    assert!(second.events("worker.spawn").is_empty(), "{}", second.diagnostics());
    assert!(!second.pidfile.as_ref().unwrap().exists(), "the second master removes its pidfile");
    drop(second);
    // The first is untouched: same socket file, still answering.
    assert_eq!(std::fs::metadata(&sock).unwrap().ino(), first_ino);
    assert_eq!(ask(&sock, "VERSION"), "ACK 0.1.0");
    assert_eq!(ctl(&sock, &["version"]).code, 0);
    assert_eq!(first.healthz().status, 200);

    // SIGKILL the first: its socket file stays behind, nobody listens on it.
    let wpids = first.worker_pids();
    first.signal(libc::SIGKILL);
    first.wait_exit(T);
    assert!(wait_until(Duration::from_secs(10), || wpids.iter().all(|p| !pid_alive(*p))), "workers outlive a killed master");
    assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_socket(), "stale socket file");
    let c = ctl(&sock, &["version"]);
    assert_eq!(c.code, 6, "a stale socket is no master: {:?}", c);
    assert!(c.err.contains("Connection refused"), "{:?}", c);

    // A new master on the same path starts fine and replaces it: it says it
    // removed the stale file (naming it), and the socket at the path is its
    // own (its pid answers). Not the inode number: the kernel reuses those,
    // so a new file may get the number of the one removed.
    let third = Master::for_test().set("controlSocket", sock.display().to_string()).start();
    let removed = format!("removed stale control socket {} (no master listens on it)", sock.display());
    assert!(
        third.log_records().iter().any(|r| r["msg"] == removed.as_str()),
        "the third master says it removed the stale file\n{}",
        third.diagnostics()
    );
    assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
    assert_eq!(status(&sock)["pid"].as_i64(), Some(third.pid() as i64));
    assert_eq!(ctl(&sock, &["version"]).code, 0, "zdrestartctl reaches the new master");
    drop(third);
    drop(first);
    // The refusal of the second master is said once, clearly (checked last so
    // that the rest runs): not "control socket P: control socket P: ...".
    assert_eq!(err.matches("control socket").count(), 1, "the message repeats itself: {}", err);
}

#[test]
fn socket_removed_at_graceful_exit_then_missing_socket_is_exit_6() {
    let (mut m, sock) = mem_master(json!({}));
    assert_eq!(ask(&sock, "VERSION"), "ACK 0.1.0");
    // A connected client does not keep the master from exiting.
    let _idle = ControlClient::connect(&sock);
    m.signal(libc::SIGTERM);
    let st = m.wait_exit(T);
    assert_eq!(Master::exit_code(st), 0);
    assert!(!sock.exists(), "socket file left after a graceful exit");

    let c = ctl(&sock, &["restart", "--wait"]);
    assert_eq!(c.code, 6, "{:?}", c);
    assert!(c.out.is_empty(), "{:?}", c);
    assert!(c.err.contains(&sock.display().to_string()) && c.err.contains("No such file"), "{:?}", c);
    assert!(c.err.contains("is the master running"), "{:?}", c);
    let c = ctl(&sock, &["status"]);
    assert_eq!(c.code, 6, "{:?}", c);
}

// ---------------------------------------------------------------------------
// Client limits and hostile clients

#[test]
fn a_full_table_never_locks_out_zdrestartctl_nor_evicts_a_waiting_client() {
    // 64 connected clients (MAX_CLIENTS), idle or hostile, never keep the
    // operator out: when the table is full, a new connection evicts the
    // client idle longest that the master owes nothing, and is served at
    // once. A client waiting for the answer to RESTART WAIT is never evicted.
    // (`NACK too many clients` only when every client is owed an answer:
    // tests/control_unit.rs.)
    let mongo = Mongo::start();
    let (mut m, sock) = mongo_master(&mongo, json!({}));
    // A restart that stays in flight until the test releases its probe.
    let gate = m.hold_probes();
    let mark = m.mark();
    let mut waiter = ControlClient::connect(&sock);
    waiter.send("RESTART WAIT\n");
    m.wait_for("the restart to be requested", T, |recs| {
        recs[mark..]
            .iter()
            .find(|r| r["component"] == "master" && r["msg"].as_str().unwrap_or("").starts_with("zero-downtime restart requested"))
            .map(|_| ())
    });
    // 150 hostile clients: connected, silent. The master keeps the 63 newest
    // (+ the waiter) and evicts the others, oldest first.
    let mut idle: Vec<ControlClient> = (0..150).map(|_| ControlClient::connect(&sock)).collect();
    // zdrestartctl gets through every time, and so does a raw client, well
    // before an idle client's 60 s timeout could make room (`-t 20`: no
    // answer within 20 s is exit 2).
    let t0 = Instant::now();
    for _ in 0..20 {
        let c = ctl(&sock, &["-t", "20", "status"]);
        assert_eq!(c.code, 0, "{:?}", c);
        assert!(c.out.starts_with("restarting: "), "{:?}", c);
    }
    eprintln!("20 x zdrestartctl status with a full table: {:?}", t0.elapsed());
    assert_eq!(ask(&sock, "VERSION"), "ACK 0.1.0");
    let c = ctl(&sock, &["-t", "20", "restart"]);
    assert_ctl_nack(&c, "restart refused", "restart in flight");
    // The idle clients were evicted oldest first; the newest are still there.
    // Every eviction happens when a later client is accepted, before that
    // client is served: after the answers above, they show without waiting.
    assert!(idle[0].closed_now(), "the oldest idle client was not evicted");
    for c in idle.iter_mut().rev().take(30) {
        assert!(!c.closed_now(), "a recent idle client was evicted");
    }
    // The waiter was never evicted: it gets the outcome of its restart.
    assert!(!waiter.closed_now(), "the waiting client was evicted");
    gate.release("released by the test");
    let a = waiter.line();
    assert_eq!(a, "NACK probe failed: ERROR=released by the test", "RESTART WAIT answered {:?}", a);

    // Without a restart in flight: 64 answered idle clients, then zdrestartctl
    // 20 times in a row: exit 0 each time (each evicts one of them).
    drop(idle);
    let held = fill_clients(&sock);
    let t0 = Instant::now();
    for _ in 0..20 {
        let c = ctl(&sock, &["-t", "20", "version"]);
        assert_eq!((c.code, c.out.as_str()), (0, "0.1.0\n"), "{:?}", c);
    }
    eprintln!("20 x zdrestartctl version with a full table: {:?}", t0.elapsed());
    drop(held);
}

/// A client that sends 1 MiB without a newline. The master answers `NACK line
/// too long` after 4096 bytes and closes the connection: the client's writes
/// fail because the peer closed (EPIPE, or ECONNRESET when the master closed
/// with bytes of it unread), long before 1 MiB. (The NACK itself may be lost:
/// the kernel resets a Unix connection closed with unread data.) Returns
/// (bytes sent, the write error).
fn spawn_long_line_client(sock: &Path) -> std::thread::JoinHandle<(usize, Option<ErrorKind>)> {
    let s = UnixStream::connect(sock).unwrap();
    std::thread::spawn(move || {
        s.set_write_timeout(Some(T)).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        let mut write_err = None;
        while sent < 1024 * 1024 {
            match (&s).write(&chunk) {
                Ok(n) => sent += n,
                Err(e) => {
                    write_err = Some(e.kind());
                    break;
                }
            }
        }
        (sent, write_err)
    })
}

/// The one outcome of `spawn_long_line_client`: cut off by the master.
fn assert_cut_off(verdict: (usize, Option<ErrorKind>)) {
    let (sent, err) = verdict;
    assert!(
        sent < 1024 * 1024 && matches!(err, Some(ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)),
        "a 1 MiB line must be cut off by the master closing the connection: sent {} bytes, write error {:?}",
        sent,
        err
    );
}

/// A client that sends `VERSION` 10,000 times, one line per write, and never
/// reads. Each answer is 10 bytes, so the answers to one read (4096 bytes)
/// stay far below the 64 KiB output bound: the master is never pushed to
/// drop it. Once the socket holds as many answers as it takes, the master
/// stops reading from it, and the client's own writes stall: it stalls only
/// itself. Its writes time out after 2 s without progress. Returns the
/// connection (held open by the test), the lines sent and the write error.
fn spawn_version_flooder(sock: &Path) -> std::thread::JoinHandle<(UnixStream, usize, Option<ErrorKind>)> {
    let s = UnixStream::connect(sock).unwrap();
    std::thread::spawn(move || {
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut sent = 0;
        let mut err = None;
        for _ in 0..10_000 {
            match (&s).write_all(b"VERSION\n") {
                Ok(()) => sent += 1,
                Err(e) => {
                    err = Some(e.kind());
                    break;
                }
            }
        }
        (s, sent, err)
    })
}

/// The one outcome of `spawn_version_flooder`: stalled (writes time out),
/// neither served to the end nor dropped.
fn assert_stalled(sent: usize, err: Option<ErrorKind>) {
    assert!(
        sent < 10_000 && matches!(err, Some(ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the VERSION flooder must stall (writes time out): sent {} err {:?}",
        sent,
        err
    );
}

/// A client that sends 10,000 `STATUS` lines in one write and never reads.
/// The master reads 4096 bytes (585 lines) at a time; each answer is the
/// whole STATUS JSON, so the answers to one read are far more than the
/// socket takes plus the 64 KiB output bound: the master drops it, with a
/// warn record. Waits for that record after `mark`, then returns what the
/// client could still read: complete answers, then EOF or a reset.
fn status_flood_dropped(m: &Master, sock: &Path, mark: usize) -> (usize, Option<ErrorKind>) {
    let s = UnixStream::connect(sock).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    (&s).write_all(&b"STATUS\n".repeat(10_000)).expect("10,000 lines fit in the socket");
    m.wait_for("the master to drop the STATUS flooder", T, |recs| {
        recs[mark..]
            .iter()
            .find(|r| {
                r["component"] == "control"
                    && r["level"] == 40
                    && r["msg"].as_str().unwrap_or("").starts_with("control client dropped: it does not read its answers")
            })
            .map(|_| ())
    });
    let mut got = Vec::new();
    let end = match (&s).read_to_end(&mut got) {
        Ok(_) => None,
        Err(e) => Some(e.kind()),
    };
    assert!(matches!(end, None | Some(ErrorKind::ConnectionReset)), "after the drop: {:?}", end);
    let text = String::from_utf8_lossy(&got);
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert!(!lines.is_empty(), "answers before the drop");
    for l in &lines[..lines.len() - 1] {
        assert!(l.starts_with("ACK {"), "a STATUS answer: {:?}", l);
    }
    assert!(lines.len() < 10_000, "the flooder was answered in full: not dropped");
    (lines.len(), end)
}

/// CPU time (user + system, clock ticks) of a process.
fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{}/stat", pid)).unwrap();
    let rest: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split(' ').collect();
    // rest[11] = utime (field 14), rest[12] = stime (field 15)
    rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
}

fn warn_drops_after(m: &Master, mark: usize) -> usize {
    m.log_records()[mark..]
        .iter()
        .filter(|r| r["component"] == "control" && r["msg"].as_str().unwrap_or("").starts_with("control client dropped"))
        .count()
}

#[test]
fn hostile_clients_do_not_stop_a_restart_or_the_service() {
    let mongo = Mongo::start();
    let (mut m, sock) = mongo_master(&mongo, json!({}));
    let port = m.port;

    // The service is polled over HTTP during the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let poller = {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match http_with(port, "GET", "/healthz", None, &[], Duration::from_secs(15)) {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failures.lock().unwrap().push(format!("status {}", r.status)),
                    Err(e) => failures.lock().unwrap().push(format!("error {}", e)),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // 1. A client sending 1 MiB without newline: cut off after 4096 bytes.
    // A client flooding STATUS in one write: dropped (its answers would pass
    // the 64 KiB bound). A client flooding VERSION without reading: answered
    // until its socket is full, then not read any more; it keeps its slot.
    // None of them blocks the master.
    let mark = m.mark();
    let long = spawn_long_line_client(&sock);
    let flood = spawn_version_flooder(&sock);
    assert_cut_off(long.join().unwrap());
    let (answered, end) = status_flood_dropped(&m, &sock, mark);
    eprintln!("STATUS flooder: {} answers read before the drop, then {:?}", answered, end);
    let (flood_sock, sent, err) = flood.join().unwrap();
    assert_stalled(sent, err);
    eprintln!("VERSION flooder stalled after {} lines", sent);
    assert_eq!(warn_drops_after(&m, mark), 1, "only the STATUS flooder is dropped");
    assert_eq!(ask(&sock, "VERSION"), "ACK 0.1.0");
    assert_eq!(m.healthz().status, 200);
    // The master is not busy with them (no busy loop on a full socket).
    let t0 = cpu_ticks(m.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(m.pid()) - t0;
    assert!(used < 30, "the master used {} ticks of CPU in 1 s with a stalled client", used);

    // 2. 100 idle clients. The master holds 64 (MAX_CLIENTS) clients: when
    // full, each new one evicts the client idle longest that it owes nothing:
    // first the stalled flooder (answers unsent, none owed), then the oldest
    // idle ones: #63 evicts the flooder, #64..#99 evict #0..#35. Every
    // eviction happens when a later client is accepted: once #35 is closed,
    // all 100 were accepted and the rest is final.
    let mut idle: Vec<ControlClient> = (0..100).map(|_| ControlClient::connect(&sock)).collect();
    assert!(
        wait_until(T, || idle[35].closed_now()),
        "the 36th idle client was never evicted\n{}",
        m.diagnostics()
    );
    let evicted: Vec<usize> = (0..100).filter(|&i| idle[i].closed_now()).collect();
    assert_eq!(evicted, (0..36).collect::<Vec<_>>(), "the 36 oldest are evicted, the 64 newest kept");
    let mut accepted: Vec<ControlClient> = idle.drain(36..).collect();
    // The flooder was evicted: it reads its answers, then EOF (or a reset: it
    // left unread commands).
    flood_sock.set_read_timeout(Some(T)).unwrap();
    let mut rest = Vec::new();
    match (&flood_sock).read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "the stalled flooder: {:?}", e),
    }
    assert!(String::from_utf8_lossy(&rest).lines().all(|l| l == "ACK 0.1.0"), "the flooder's answers");
    // With every slot taken by idle clients, a fresh client is served, and
    // so is zdrestartctl (each evicts the oldest idle one), well before an
    // idle client's 60 s timeout would make room (`-t 20`); the master keeps
    // serving HTTP.
    let t0 = Instant::now();
    assert_eq!(ask(&sock, "VERSION"), "ACK 0.1.0");
    let v = ctl(&sock, &["-t", "20", "version"]);
    assert_eq!((v.code, v.out.as_str()), (0, "0.1.0\n"), "{:?}", v);
    eprintln!("a client and zdrestartctl served with a full table in {:?}", t0.elapsed());
    assert_eq!(m.healthz().status, 200);

    // 3. A restart with 64 idle clients, a new 1 MiB client and a new STATUS
    // flooder, and new idle clients connecting every 2 ms while it runs (each
    // evicting an older one, never the zdrestartctl that waits for the
    // restart): completes, exit 0. The new workers (ready-held.sh) are held
    // until more than a table's worth of clients (100) connected during it.
    let gate = m.hold_new_workers();
    let mut new_old = m.worker_pids();
    new_old.sort();
    let connecting = Arc::new(AtomicBool::new(true));
    let connected = Arc::new(AtomicUsize::new(0));
    let connector = {
        let (sock, connecting, connected) = (sock.clone(), connecting.clone(), connected.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while connecting.load(Ordering::SeqCst) && held.len() < 1000 {
                held.push(ControlClient::connect(&sock));
                connected.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
            held
        })
    };
    let mark = m.mark();
    let waiter = {
        let sock = sock.clone();
        std::thread::spawn(move || ctl(&sock, &["restart", "--wait"]))
    };
    m.wait_event_after(mark, "restart.start", T);
    let long2 = spawn_long_line_client(&sock);
    let before = connected.load(Ordering::SeqCst);
    assert_cut_off(long2.join().unwrap());
    status_flood_dropped(&m, &sock, mark);
    assert!(
        wait_until(T, || connected.load(Ordering::SeqCst) >= before + 100),
        "the connector stalled: {} connections",
        connected.load(Ordering::SeqCst)
    );
    assert!(!waiter.is_finished(), "restart --wait returned while the new workers were held");
    let during = connected.load(Ordering::SeqCst) - before;
    gate.open();
    let c = waiter.join().unwrap();
    connecting.store(false, Ordering::SeqCst);
    let still: Vec<i32> = new_old.iter().copied().filter(|p| proc_stat(*p).is_some_and(|s| s.ppid == m.pid())).collect();
    assert_eq!((c.code, c.out.as_str()), (0, "zero-downtime restart complete\n"), "{:?}", c);
    assert!(still.is_empty(), "{:?}", still);
    assert!(m.log_records()[mark..].iter().any(|r| event_of(r) == "restart.complete"));
    eprintln!("{} clients connected while restart --wait waited", during);
    accepted.extend(connector.join().unwrap());
    accepted.reverse(); // newest first

    // The newest idle clients are still connected (idle timeout is 60 s,
    // and nothing connected after them until the STATUS below).
    for s in accepted.iter_mut().take(5) {
        assert!(!s.closed_now(), "a recent idle client was closed early");
    }
    assert_eq!(status(&sock)["generation"], 2);

    stop.store(true, Ordering::SeqCst);
    poller.join().unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "HTTP failed during the test: {:?}", failures);
    assert!(ok.load(Ordering::SeqCst) >= 1, "no health check ran");
    eprintln!("{} health checks answered during the test", ok.load(Ordering::SeqCst));
    drop((flood_sock, accepted));
}

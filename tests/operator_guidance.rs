//! What an operator reads, with real processes: `zdrestartctl` finds the
//! master the way it was started (`$ZDRESTART_CONFIG`, a relative
//! `controlSocket`) and says exactly what to pass when it cannot; `zdrestart
//! -t` and `--check` warn about configurations that cannot work, print each
//! error once and name only records that exist; a real server's error lines
//! and tracebacks (gunicorn, uWSGI) are logged at their level, so that
//! `bunyan -l warn` shows them; a worker asked to exit is not said to exit
//! "unexpectedly".

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// `zdrestartctl ARGS` in `cwd` with only the given variables of ours.
fn ctl_in(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Ctl {
    let mut cmd = Command::new(ctl_bin());
    cmd.args(args).current_dir(cwd);
    scrub_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (st, out, err) = run_cmd(&mut cmd, T);
    let (steps, out) = split_steps(&out);
    Ctl { code: st.code().expect("zdrestartctl killed by a signal"), out, err, steps }
}

/// `zdrestart ARGS` (for `-t` and `--check`): exit code, stdout + stderr.
fn zdrestart(args: &[&str], config: &Path) -> (i32, String) {
    let mut cmd = Command::new(master_bin());
    cmd.args(args).arg("-c").arg(config);
    scrub_env(&mut cmd);
    let (st, out, err) = run_cmd(&mut cmd, T);
    (st.code().expect("zdrestart killed by a signal"), format!("{}{}", out, err))
}

fn write(dir: &TestDir, name: &str, v: Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

/// A master started as an operator starts one from a checkout: no `-c`,
/// `ZDRESTART_CONFIG` set to a relative path, a relative `controlSocket`.
/// zdrestartctl with the same variable in the same directory finds it
/// without -c or -s; from another directory it says why not and what to pass.
#[test]
fn zdrestartctl_finds_the_master_started_with_zdrestart_config() {
    let b = Master::for_test().set("controlSocket", "ctl.sock").args(&[]).env("ZDRESTART_CONFIG", "zdrestart.json");
    let m = b.start();
    let dir = m.dir.path().to_path_buf();
    let env = [("ZDRESTART_CONFIG", "zdrestart.json")];
    let c = ctl_in(&dir, &env, &["status"]);
    assert_eq!(c.code, 0, "{:?}", c);
    assert!(c.out.starts_with("running: generation 1,"), "{:?}", c);

    // Another directory: the relative socket is not there; the message says
    // so and what to pass.
    let elsewhere = TestDir::new(&format!("{}-elsewhere", test_name()));
    let abs_cfg = dir.join("zdrestart.json").display().to_string();
    let c = ctl_in(elsewhere.path(), &[("ZDRESTART_CONFIG", &abs_cfg)], &["status"]);
    assert_eq!(c.code, 6, "{:?}", c);
    assert!(c.err.contains("is relative (\"ctl.sock\")"), "{:?}", c);
    assert!(c.err.contains("pass the absolute path with -s"), "{:?}", c);
    let sock = dir.join("ctl.sock").display().to_string();
    assert_eq!(ctl_in(elsewhere.path(), &[], &["-s", &sock, "status"]).code, 0);
}

/// When no master answers where zdrestartctl looked, it says where it
/// looked, why there, and exactly what to pass.
#[test]
fn zdrestartctl_says_what_to_pass_when_it_finds_no_master() {
    let dir = TestDir::for_test();
    // A config without controlSocket (the master has no control socket).
    let cfg = write(&dir, "no-socket.json", json!({"port": free_port()}));
    let c = ctl_in(dir.path(), &[("ZDRESTART_CONFIG", cfg.to_str().unwrap())], &["status"]);
    assert_eq!(c.code, 2, "{:?}", c);
    assert!(c.err.contains(&format!("{} sets no controlSocket", cfg.display())), "{:?}", c);
    assert!(c.err.contains("Add \"controlSocket\" to it and restart the master"), "{:?}", c);
    assert!(c.err.contains("zdrestartctl -c FILE COMMAND") && c.err.contains("export ZDRESTART_CONFIG=FILE"), "{:?}", c);

    // A controlSocket nobody listens on (absolute): is the master running?
    let sock = dir.join("none.sock");
    let cfg = write(&dir, "socket.json", json!({"controlSocket": sock.display().to_string()}));
    let c = ctl_in(dir.path(), &[], &["-c", cfg.to_str().unwrap(), "status"]);
    assert_eq!(c.code, 6, "{:?}", c);
    assert!(c.err.contains(&format!("connect {}: No such file or directory", sock.display())), "{:?}", c);
    assert!(c.err.contains(&format!("Is the master started with {} running?", cfg.display())), "{:?}", c);

    // $ZDRESTART_CONFIG names a file that is not there: an error naming it.
    let c = ctl_in(dir.path(), &[("ZDRESTART_CONFIG", "/nonexistent/zdrestart.json")], &["status"]);
    assert_eq!(c.code, 2, "{:?}", c);
    assert!(c.err.contains("cannot read config /nonexistent/zdrestart.json ($ZDRESTART_CONFIG)"), "{:?}", c);

    // -s that nobody listens on.
    let c = ctl_in(dir.path(), &[], &["-s", sock.to_str().unwrap(), "status"]);
    assert_eq!(c.code, 6, "{:?}", c);
    assert!(c.err.contains("No master listens on the socket given with -s"), "{:?}", c);
}

/// A server that speaks only sd_notify(3) (`"notify": "systemd"`) with the
/// probe left on: `-t` warns (naming the key, once), `--check` says why
/// its probe failed (once), and the master's start-up error says it too.
#[test]
fn a_sd_notify_worker_with_the_probe_on_is_warned_about() {
    let dir = TestDir::for_test();
    let db = dir.join("db.sqlite").display().to_string();
    let worker = json!(["/bin/sh", "-c", "exec sleep 600"]);
    let cfg = write(
        &dir,
        "c.json",
        json!({"port": free_port(), "worker": worker, "notify": "systemd", "probeTimeout": 1,
               "driver": "sqlite", "params": {"path": db}}),
    );
    let hint = "\"notify\" is \"systemd\" and \"probe\" is on";
    let (code, text) = zdrestart(&["-t"], &cfg);
    assert_eq!(code, 0, "{}", text);
    assert_eq!(text.matches(hint).count(), 1, "{}", text);
    assert!(text.contains("key \"probe\"") && text.contains("set \"probe\": false with \"magic\""), "{}", text);
    assert!(text.contains("is valid"), "{}", text);

    let (code, text) = zdrestart(&["--check"], &cfg);
    assert_eq!(code, 1, "{}", text);
    assert_eq!(text.matches(hint).count(), 1, "{}", text);
    assert_eq!(text.matches("no answer within probeTimeout").count(), 1, "{}", text);

    let (st, err, _m) = Master::for_test().merge(json!({"worker": worker, "notify": "systemd", "probeTimeout": 1})).run_to_exit(T);
    assert_eq!(st.code(), Some(1), "{}", err);
    assert!(err.contains("probe of the worker program failed: no answer within probeTimeout"), "{}", err);
    assert!(err.contains(hint), "{}", err);

    // Declared instead of probed: nothing to warn about.
    let ok = write(
        &dir,
        "ok.json",
        json!({"port": free_port(), "worker": worker, "notify": "systemd", "probe": false, "magic": 1,
               "sharedState": true}),
    );
    let (code, text) = zdrestart(&["-t"], &ok);
    assert_eq!((code, text.contains("warning")), (0, false), "{}", text);
}

/// Other configurations that cannot work: a worker program or a directory
/// that does not exist, and the settings that refuse every restart.
#[test]
fn config_test_warns_about_missing_programs_directories_and_refused_restarts() {
    let dir = TestDir::for_test();
    let cfg = write(
        &dir,
        "c.json",
        json!({"port": free_port(), "worker": ["no-such-server-zdr"], "workers": 1,
               "controlSocket": "/nonexistent/run/z.sock", "probe": false, "magic": 1, "sharedState": true}),
    );
    let (code, text) = zdrestart(&["-t"], &cfg);
    assert_eq!(code, 0, "{}", text);
    for want in [
        "key \"worker\": worker program \"no-such-server-zdr\" not found in PATH: no worker can start",
        "key \"controlSocket\": directory /nonexistent/run does not exist",
        "key \"workers\": every zero-downtime restart will be refused (no workers)",
    ] {
        assert_eq!(text.matches(want).count(), 1, "{}\n{}", want, text);
    }
    // The built-in worker on the memory driver: restarts refused (-t), and
    // --check says it once, in its verdict.
    let mem = write(&dir, "mem.json", json!({"port": free_port()}));
    let (code, text) = zdrestart(&["-t"], &mem);
    assert_eq!(code, 0, "{}", text);
    assert!(text.contains("key \"driver\": every zero-downtime restart will be refused (bad driver)"), "{}", text);
    let (code, text) = zdrestart(&["--check"], &mem);
    assert_eq!(code, 1, "{}", text);
    assert_eq!(text.matches("(bad driver)").count() + text.matches("refused: bad driver").count(), 1, "{}", text);
}

/// `--check` with no master running and the database down: the error is
/// printed once, and the advice names no log record (there is no master
/// whose log would have one).
#[test]
fn check_prints_each_error_once_and_names_only_records_that_exist() {
    let dir = TestDir::for_test();
    let uri = format!("mongodb://127.0.0.1:{}/?directConnection=true", free_port());
    let cfg = write(&dir, "c.json", json!({"port": free_port(), "driver": "mongodb", "params": {"uri": uri, "timeout": 1}}));
    let (code, text) = zdrestart(&["--check"], &cfg);
    assert_eq!(code, 1, "{}", text);
    assert!(text.contains("refused: probe failed"), "{}", text);
    assert_eq!(text.matches("database unreachable").count(), 1, "{}", text);
    assert!(!text.contains("restart.refused"), "{}", text);
}

/// Where the real servers are (scripts/test installs them).
fn server(name: &str) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{} not found in PATH: run `bash scripts/test` (it installs it)", name)).display().to_string()
}

fn app_dir() -> String {
    repo_root().join("tests/servers").display().to_string()
}

/// The records of the workers' lines that contain `text`, as (level, msg).
fn lines_with(m: &Master, text: &str) -> Vec<(u64, String)> {
    m.log_records()
        .iter()
        .filter(|r| r["component"] == "worker" && r["msg"].as_str().is_some_and(|s| s.contains(text)))
        .map(|r| (r["level"].as_u64().unwrap(), r["msg"].as_str().unwrap().to_string()))
        .collect()
}

/// `bunyan -l warn` over the master's log, as an operator reads it.
fn bunyan_warn(m: &Master) -> String {
    let mut cmd = Command::new(bunyan_cli());
    cmd.args(["--strict", "-l", "warn", "-o", "short"]).arg(m.logfile.as_ref().unwrap());
    let (st, out, err) = run_cmd(&mut cmd, T);
    assert!(st.success(), "bunyan: {}", err);
    out
}

/// A real server's lines that state a level are logged at it: gunicorn's
/// `[ERROR]` record and the traceback under it, Python logging's
/// `WARNING:name:` and `ERROR:name:`, while `[INFO]` stays info.
#[test]
fn gunicorn_errors_and_tracebacks_are_logged_at_their_level() {
    let worker = json!([server("gunicorn"), "--workers", "1", "--chdir", app_dir(), "levels:app"]);
    let m = Master::for_test()
        .merge(json!({"notify": "systemd", "probe": false, "magic": 1, "sharedState": true, "worker": worker, "workers": 2}))
        .spawn();
    m.wait_events_after(0, "worker.ready", 2, T);
    let r = http(m.port, "GET", "/boom", None).expect("GET /boom");
    assert_eq!(r.status, 500);
    let l = m.wait_for("the traceback's last line", T, |_| lines_with(&m, "ZeroDivisionError").first().cloned());
    assert_eq!(l.0, 50, "{:?}", l);
    for (text, level) in [
        ("[ERROR] Error handling request /boom", 50),
        ("Traceback (most recent call last):", 50),
        ("File \"", 50),
        ("WARNING:levels:levels app: a warning at import", 40),
        ("ERROR:levels:levels app: an error at import", 50),
        ("[INFO] Booting worker", 30),
    ] {
        let found = lines_with(&m, text);
        assert!(!found.is_empty() && found.iter().all(|(l, _)| *l == level), "{}: {:?}\n{}", text, found, m.diagnostics());
    }
    let shown = bunyan_warn(&m);
    assert!(shown.contains("Error handling request /boom") && shown.contains("ZeroDivisionError: division by zero"), "{}", shown);
    assert!(shown.contains("WARNING:levels:") && !shown.contains("Booting worker"), "{}", shown);
}

/// uWSGI's `*** WARNING: ... ***` lines (it warns when run as root, as the
/// tests are) and an application's traceback.
#[test]
fn uwsgi_warnings_and_tracebacks_are_logged_at_their_level() {
    assert_eq!(euid(), 0, "this test needs root (uWSGI warns about running as root)");
    let worker = json!([
        server("uwsgi"), "--master", "--processes", "1", "--plugin", "python3", "--protocol", "http",
        "--chdir", app_dir(), "--wsgi-file", format!("{}/levels.py", app_dir()),
        "--hook-master-start", "unix_signal:15 gracefully_kill_them_all", "--hook-accepting", "unix_signal:15 gracefully_kill",
    ]);
    let m = Master::for_test()
        .merge(json!({"notify": "systemd", "probe": false, "magic": 1, "sharedState": true, "worker": worker}))
        .spawn();
    m.wait_events_after(0, "worker.ready", 2, T);
    let _ = http(m.port, "GET", "/boom", None);
    let l = m.wait_for("the traceback's last line", T, |_| lines_with(&m, "ZeroDivisionError").first().cloned());
    assert_eq!(l.0, 50, "{:?}", l);
    for (text, level) in [
        ("*** WARNING: you are running uWSGI as root", 40),
        ("Traceback (most recent call last):", 50),
        ("*** Starting uWSGI", 30),
    ] {
        let found = lines_with(&m, text);
        assert!(!found.is_empty() && found.iter().all(|(l, _)| *l == level), "{}: {:?}\n{}", text, found, m.diagnostics());
    }
}

/// The effective uid, from /proc (no unsafe outside src/sys).
fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A new worker that is not ready in time is asked to exit after the abort;
/// its exit (status 0 on SIGTERM) is logged as asked for, at info, not as
/// "exited unexpectedly" at error.
#[test]
fn a_worker_asked_to_exit_in_lockout_did_not_exit_unexpectedly() {
    let b = Master::for_test();
    let db = b.dir().join("db.sqlite").display().to_string();
    let mut m = b.merge(json!({"driver": "sqlite", "params": {"path": db}})).start();
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("never-ready.sh"));
        c.insert("readyTimeout".into(), json!(1));
    });
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    let (_, abort) = m.wait_event_after(mark, "restart.abort", T);
    let asked = m.wait_for("asking the new worker to exit", T, |recs| {
        recs.iter().find(|r| r["msg"].as_str().is_some_and(|s| s.starts_with("asking worker"))).cloned()
    });
    let pid = asked["worker_pid"].as_u64().unwrap();
    let exit = m.wait_for("its worker.exit", T, |recs| {
        recs.iter().find(|r| event_of(r) == "worker.exit" && r["worker_pid"].as_u64() == Some(pid)).cloned()
    });
    let msg = exit["msg"].as_str().unwrap();
    assert!(!msg.contains("unexpectedly"), "{}\n{}", msg, abort);
    // never-ready.sh ends by SIGTERM itself (exec sleep); a server that
    // exits 0 on it reads the same: "exited as asked (exit status 0)".
    assert!(msg.starts_with(&format!("worker {} exited as asked (", pid)), "{}", msg);
    assert_eq!(exit["level"], 30, "{}", exit);
}

//! `zdrestart --check`: validate the config, run the probe, and say whether a
//! zero-downtime restart would be accepted (exit 0) or refused (exit 1, with
//! the reason and the advice that zdrestartctl gives).
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::json;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

fn check(config: &std::path::Path) -> (i32, String) {
    let mut cmd = Command::new(master_bin());
    cmd.args(["--check", "-c"]).arg(config);
    scrub_env(&mut cmd);
    let (st, out, err) = run_cmd(&mut cmd, Duration::from_secs(60));
    let code = st.code().unwrap_or_else(|| panic!("zdrestart --check killed by signal {:?}:\n{}{}", st.signal(), out, err));
    (code, format!("{}{}", out, err))
}

/// A MongoDB URI on a loopback port where nothing listens (never the
/// default 127.0.0.1:27017, where this machine may run a real server): a
/// port reserved for the test (connections refused), kept while it runs.
fn nowhere_uri() -> String {
    static NOWHERE: std::sync::OnceLock<ReservedPort> = std::sync::OnceLock::new();
    format!("mongodb://127.0.0.1:{}/?directConnection=true", NOWHERE.get_or_init(ReservedPort::new).port())
}

fn write(dir: &TestDir, v: serde_json::Value) -> std::path::PathBuf {
    let p = dir.join("c.json");
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

#[test]
fn check_verdicts() {
    let dir = TestDir::for_test();
    // Memory driver: refused, with the reason and the shared advice.
    let (code, text) = check(&write(&dir, json!({"port": free_port()})));
    assert_eq!(code, 1, "{}", text);
    assert!(text.contains("probe: magic"), "{}", text);
    assert!(text.contains("refused: bad driver"), "{}", text);
    assert!(text.contains(zdrestart::control::advice("bad driver")), "{}", text);
    // One worker: no workers.
    let (code, text) = check(&write(&dir, json!({"workers": 1, "driver": "mongodb", "params": {"uri": nowhere_uri()}})));
    assert_eq!(code, 1);
    assert!(text.contains("refused: no workers"), "{}", text);
    // Invalid config: exit 1 naming the key.
    let (code, text) = check(&write(&dir, json!({"workers": "two"})));
    assert_eq!(code, 1);
    assert!(text.contains("key \"workers\""), "{}", text);
    // MongoDB down: the probe fails.
    let (code, text) = check(&write(
        &dir,
        json!({"driver": "mongodb", "params": {"uri": nowhere_uri(), "timeout": 1}}),
    ));
    assert_eq!(code, 1, "{}", text);
    assert!(text.contains("refused: probe failed"), "{}", text);
    assert!(text.contains("database unreachable"), "{}", text);
    // Incompatible code.
    let (code, text) =
        check(&write(&dir, json!({"driver": "mongodb", "params": {"uri": nowhere_uri()}, "worker": fault_worker("bad-magic.sh")})));
    assert_eq!(code, 1, "{}", text);
    assert!(text.contains("refused: incompatibility"), "{}", text);
}

#[test]
fn check_accepts_and_consults_the_running_master() {
    let mongo = Mongo::start();
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock").display().to_string();
    let m = b.merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "controlSocket": sock})).start();
    let (code, text) = check(&m.config_path);
    assert_eq!(code, 0, "{}", text);
    assert!(text.contains("would be accepted"), "{}", text);
    assert!(text.contains(&format!("running master: pid {}", m.pid())), "{}", text);
    // A changed port is what the running master would refuse.
    let mut other: serde_json::Value = serde_json::from_slice(&std::fs::read(&m.config_path).unwrap()).unwrap();
    other["port"] = json!(free_port());
    let changed = m.dir.join("changed.json");
    std::fs::write(&changed, other.to_string()).unwrap();
    let (code, text) = check(&changed);
    assert_eq!(code, 1, "{}", text);
    assert!(text.contains("refused: listen address changed"), "{}", text);
    // --check changed nothing in the running master: a STATUS asked after it
    // exited (so handled after anything it sent) shows no restart requested.
    let st = status(std::path::Path::new(&sock));
    assert!(st["last_restart"].is_null(), "{}", st);
    assert_eq!((st["generation"].as_u64(), st["state"].as_str()), (Some(1), Some("running")), "{}", st);
    assert!(m.events("restart.start").is_empty());
    assert!(!m.log_records().iter().any(|r| r["msg"].as_str().unwrap_or("").starts_with("zero-downtime restart requested")));
}

#[test]
fn check_is_not_killed_by_the_masters_restart_and_reopen_signals() {
    // `killall -USR2 zdrestart` (or -HUP) aimed at the masters also reaches a
    // `zdrestart --check` that runs at that moment: it must not die of it.
    let dir = TestDir::for_test();
    let gate = ProbeGate::new(dir.path());
    let cfg = write(&dir, json!({"port": free_port(), "worker": fault_worker("probe-held.sh")}));
    let log = dir.join("check.out");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(master_bin());
    cmd.args(["--check", "-c"]).arg(&cfg).stdout(out.try_clone().unwrap()).stderr(out);
    scrub_env(&mut cmd);
    let mut c = ChildGuard::spawn(&mut cmd, &log);
    // Its probe runs (a child of --check): --check is past its start.
    assert!(wait_until(Duration::from_secs(30), || !descendants_of(c.pid()).is_empty()), "no probe started");
    assert!(kill(c.pid(), libc::SIGUSR2));
    assert!(kill(c.pid(), libc::SIGHUP));
    // The probe's verdict comes after both signals were delivered (a signal
    // sent with kill(2) to a running process is pending at once).
    gate.release("pass");
    let st = c.wait_timeout(Duration::from_secs(60)).expect("--check did not finish");
    assert_eq!(st.signal(), None, "--check killed by a signal: {}", c.output());
    // The memory driver: the probe answered, then the restart is refused.
    assert_eq!(st.code(), Some(1), "{}", c.output());
    assert!(c.output().contains("refused: bad driver"), "{}", c.output());
}

/// The shared state is the probe's word (SHARED=1 for sqlite and mongodb,
/// SHARED=0 for memory), or the config's `sharedState` without a probe.
#[test]
fn check_reports_whether_the_state_is_shared() {
    let dir = TestDir::for_test();
    let db = dir.join("objects.db").display().to_string();
    let (code, text) = check(&write(&dir, json!({"port": free_port(), "driver": "sqlite", "params": {"path": db}})));
    assert_eq!(code, 0, "{}", text);
    assert!(text.contains("state shared by every worker: yes (SHARED=1)"), "{}", text);
    assert!(text.contains("would be accepted"), "{}", text);
    let (code, text) = check(&write(&dir, json!({"port": free_port()})));
    assert_eq!(code, 1, "{}", text);
    assert!(text.contains("state shared by every worker: no (SHARED=0)"), "{}", text);
    assert!(text.contains("refused: bad driver: driver is \"memory\", zero-downtime restarts need a store every worker shares"), "{}", text);
    // A worker of its own whose probe says nothing of it (no program
    // written: a shell command line, so no exec races a write).
    let probe = "printf 'MAGIC=%s\\nVERSION=q\\n' \"$1\" >&\"$ZDRESTART_NOTIFY_FD\"";
    let worker = json!(["/bin/sh", "-c", probe, "sh", zdrestart::MAGIC.to_string()]);
    let (code, text) = check(&write(&dir, json!({"port": free_port(), "worker": worker})));
    assert_eq!(code, 1, "{}", text);
    assert!(text.contains("not said (no SHARED= line)") && text.contains("did not report SHARED=1 or SHARED=0"), "{}", text);
    // Without a probe: sharedState is required, and its word is taken.
    let (code, text) = check(&write(&dir, json!({"port": free_port(), "probe": false, "magic": 1})));
    assert_eq!(code, 1, "{}", text);
    assert!(text.contains("key \"sharedState\": required when \"probe\" is false"), "{}", text);
    let (code, text) = check(&write(&dir, json!({"port": free_port(), "probe": false, "magic": 1, "sharedState": false})));
    assert_eq!(code, 1, "{}", text);
    assert!(text.contains("refused: bad driver: \"sharedState\" is false"), "{}", text);
}

//! pump.socket(7) compatibility (zdrestartctl(8)): every answer pump.io's
//! control-socket man page defines, byte for byte, from a real master.
//!
//! pump.socket(7) (pump-io/pump.io, doc/pump.socket.7) defines: `ACK` alone
//! or `ACK <data>`, `NACK <reason>`, each ended by one newline; `NACK unknown`
//! for any unrecognised command; blank lines ignored; CMDS and VERSION never
//! NACK; LOGLEVEL's only NACK reason is `invalid`; RESTART answers `ACK` when
//! queued or NACK with `no workers`, `bad driver`, `aborted restart`,
//! `restart in flight` or `incompatibility`. The details zdrestart knows go to
//! its log, never onto those lines.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn master_with_socket(extra: Value) -> (Master, std::path::PathBuf) {
    let b = Master::for_test();
    let sock = b.dir().join("ctl.sock");
    let m = b.set("controlSocket", sock.display().to_string()).merge(extra).start();
    (m, sock)
}

#[test]
fn every_answer_without_a_restart_is_pump_io_text() {
    let (mut m, sock) = master_with_socket(json!({"logLevel": "info"}));
    let mut c = ControlClient::connect(&sock);

    // CMDS and VERSION: ACK with data; they never NACK, arguments or not.
    for line in ["CMDS", "cmds", "CMDS extra words"] {
        assert_eq!(c.cmd_raw(line), "ACK CMDS VERSION LOGLEVEL STATUS RESTART UPGRADE PROMOTE ROLLBACK\n", "{}", line);
    }
    for line in ["VERSION", "Version", "VERSION extra"] {
        assert_eq!(c.cmd_raw(line), format!("ACK {}\n", env!("CARGO_PKG_VERSION")), "{}", line);
    }

    // LOGLEVEL: `ACK` directly followed by a newline; its only NACK is `invalid`.
    assert_eq!(c.cmd_raw("LOGLEVEL debug"), "ACK\n");
    assert_eq!(c.cmd_raw("LOGLEVEL restore"), "ACK\n");
    let mark = m.mark();
    for line in ["LOGLEVEL loud", "LOGLEVEL", "LOGLEVEL info debug", "loglevel   "] {
        assert_eq!(c.cmd_raw(line), "NACK invalid\n", "{}", line);
    }
    // The detail is in the log, one record per refused command.
    let recs = m.wait_for("4 refused LOGLEVEL records", T, |recs| {
        let v: Vec<Value> = recs[mark..]
            .iter()
            .filter(|r| r["component"] == "control" && r["nack"] == "invalid")
            .cloned()
            .collect();
        (v.len() >= 4).then_some(v)
    });
    let msgs: Vec<&str> = recs.iter().map(|r| r["msg"].as_str().unwrap()).collect();
    assert!(msgs[0].contains("unknown level \"loud\""), "{:?}", msgs);
    assert!(msgs[1].contains("missing level"), "{:?}", msgs);
    assert!(msgs[2].contains("info debug"), "{:?}", msgs);

    // Unknown commands: `NACK unknown`; blank lines: no answer at all.
    assert_eq!(c.cmd_raw("EASTER"), "NACK unknown\n");
    c.send("\n \r\nHELLO there\n\nVERSION\n");
    assert_eq!(c.line_raw(), "NACK unknown\n");
    assert_eq!(c.line_raw(), format!("ACK {}\n", env!("CARGO_PKG_VERSION")));

    // RESTART on the memory driver: exactly `NACK bad driver`, the detail logged.
    let mark = m.mark();
    assert_eq!(ask_raw(&sock, "RESTART"), "NACK bad driver\n");
    let r = m.wait_event_after(mark, "restart.refused", T).1;
    assert_eq!(r["reason"], "bad driver");
    assert!(r["detail"].as_str().unwrap().contains("memory"), "{}", r);

    // Too few workers in the new config: exactly `NACK no workers`.
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(1));
    });
    let mark = m.mark();
    assert_eq!(ask_raw(&sock, "RESTART"), "NACK no workers\n");
    let r = m.wait_event_after(mark, "restart.refused", T).1;
    assert_eq!(r["reason"], "no workers");
    assert!(r["detail"].as_str().unwrap().contains("workers is 1"), "{}", r);
}

#[test]
fn every_restart_answer_is_pump_io_text() {
    let mongo = Mongo::start();
    let (mut m, sock) = master_with_socket(json!({
        "driver": "mongodb", "params": {"uri": mongo.uri(), "timeout": 2}, "shutdownTimeout": 3
    }));

    // Accepted: `ACK` directly followed by a newline (queued, not complete).
    let mark = m.mark();
    assert_eq!(ask_raw(&sock, "RESTART"), "ACK\n");
    m.wait_event_after(mark, "restart.complete", T);

    // incompatibility: the new code reports another magic number.
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("bad-magic.sh"));
    });
    let mark = m.mark();
    assert_eq!(ask_raw(&sock, "RESTART"), "NACK incompatibility\n");
    let r = m.wait_event_after(mark, "restart.refused", T).1;
    assert!(r["detail"].as_str().unwrap().contains("999999"), "the detail is logged: {}", r);

    // restart in flight: while the probe is held (until the test gives its
    // verdict: no timeout to race), a second RESTART.
    let gate = m.hold_probes();
    let mark = m.mark();
    let mut first = ControlClient::connect(&sock);
    first.send("RESTART\n");
    m.wait_for("the probe of the restart", T, |recs| {
        recs[mark..]
            .iter()
            .find(|r| r["msg"].as_str().unwrap_or("").starts_with("zero-downtime restart requested"))
            .map(|_| ())
    });
    assert_eq!(ask_raw(&sock, "RESTART"), "NACK restart in flight\n");
    gate.release("held by the test");
    // (`probe failed` is zdrestart's own reason: pump.socket(7) allows others.)
    assert!(first.line_raw().starts_with("NACK probe failed: ERROR=held by the test"));

    // aborted restart: a new worker dies at start, the restart aborts; every
    // later RESTART is exactly `NACK aborted restart`.
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("die-at-start.sh"));
        c.remove("probeTimeout");
    });
    let mark = m.mark();
    let mut w = ControlClient::connect(&sock);
    assert!(w.cmd_raw("RESTART WAIT").starts_with("NACK aborted: "));
    m.wait_event_after(mark, "restart.abort", T);
    m.rewrite_config(|c| {
        c.remove("worker");
    });
    let mark = m.mark();
    assert_eq!(ask_raw(&sock, "RESTART"), "NACK aborted restart\n");
    // That RESTART's own record: the one refusal after the mark.
    let refused = m.wait_for("the refusal's record", T, |recs| {
        let v: Vec<Value> = recs[mark..].iter().filter(|r| event_of(r) == "restart.refused").cloned().collect();
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(refused.len(), 1, "{:?}", refused);
    assert_eq!(refused[0]["reason"], "aborted restart");
}

//! A restart as it happens: `zdrestartctl restart --wait` (and `upgrade
//! --wait`) shows each step (the probe's pass, each new worker started and
//! ready with its start-to-ready time, each old worker asked to exit and
//! gone, the refusal or abort with its reason and advice, complete with the
//! total) as one plain line per step, one JSON object per step with
//! `--json`, or one progress line updated in place on a terminal (run under
//! script(1)'s pseudo-terminal). The control protocol streams them
//! (`RESTART WAIT PROGRESS`) while pump.socket(7)'s commands keep their exact
//! answers. `zdrestartctl status` reads as a summary line and a table. Real
//! master, real workers (sqlite: shared state), real sockets.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn sock(m: &Master) -> PathBuf {
    m.dir.join("ctl.sock")
}

fn master(extra: Value) -> Master {
    let b = Master::for_test();
    let s = b.dir().join("ctl.sock");
    let db = b.dir().join("objects.db");
    b.merge(json!({"driver": "sqlite", "params": {"path": db.display().to_string()}, "controlSocket": s.display().to_string(),
        "threads": 2, "shutdownTimeout": 10, "minReady": 0}))
        .merge(extra)
        .start()
}

/// Pids of the workers of generation `g` in STATUS.
fn pids(m: &Master, g: u64) -> Vec<i64> {
    let st = status(&sock(m));
    st["workers"].as_array().unwrap().iter().filter(|w| w["generation"] == g).map(|w| w["pid"].as_i64().unwrap()).collect()
}

/// The index of the first line at or after `from` that contains `what`.
fn find(lines: &[&str], from: usize, what: &str) -> usize {
    lines[from..].iter().position(|l| l.contains(what)).map(|i| i + from).unwrap_or_else(|| panic!("no line with {:?} after line {} in:\n{}", what, from, lines.join("\n")))
}

#[test]
fn restart_wait_shows_each_step_as_it_happens() {
    let m = master(json!({}));
    let old = pids(&m, 1);
    assert_eq!(old.len(), 2);
    let r = ctl(&sock(&m), &["restart", "--wait"]);
    assert_eq!(r.code, 0, "{:?}", r);
    let new = pids(&m, 2);
    let lines: Vec<&str> = r.steps.iter().map(|s| s.as_str()).collect();
    // Every step line is stamped with the time since the command started;
    // then the outcome, as without steps.
    assert_eq!(r.out, "zero-downtime restart complete\n", "{:?}", r);
    let probe = find(&lines, 0, "probe passed (magic ");
    assert!(lines[probe].contains("rolling 2 workers to generation 2"), "{:?}", r);
    for (i, pid) in new.iter().enumerate() {
        let started = find(&lines, probe, &format!("worker {} started (generation 2, index {})", pid, i));
        let ready = find(&lines, started, &format!("worker {} ready in ", pid));
        assert!(lines[ready].contains(" ms (generation 2: ") && lines[ready].contains(" of 2 ready, "), "{}", lines[ready]);
    }
    for pid in &old {
        let asked = find(&lines, probe, &format!("worker {} (generation 1) asked to exit: draining", pid));
        find(&lines, asked, &format!("worker {} (generation 1) stopped and drained (exit status 0)", pid));
    }
    find(&lines, probe, "complete: 2 workers of generation 2 in ");
    // The same facts as the log's records, in the log's order.
    let ready_logged: Vec<i64> = m.events("worker.ready").iter().filter(|e| e["generation"] == 2).map(|e| e["worker_pid"].as_i64().unwrap()).collect();
    let mut ready_shown: Vec<(usize, i64)> = new.iter().map(|p| (find(&lines, 0, &format!("worker {} ready in ", p)), *p)).collect();
    ready_shown.sort();
    assert_eq!(ready_shown.into_iter().map(|(_, p)| p).collect::<Vec<_>>(), ready_logged);

    // --json: one object per step as the master sent it, then the answer.
    let r = ctl(&sock(&m), &["restart", "--wait", "--json"]);
    assert_eq!(r.code, 0, "{:?}", r);
    let steps: Vec<Value> = r.out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {:?}", e, l))).collect();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names[0], "restart.start", "{:?}", names);
    for (step, n) in [("worker.spawn", 2), ("worker.ready", 2), ("worker.stop", 2), ("worker.exit", 2), ("restart.complete", 1)] {
        assert_eq!(names.iter().filter(|s| **s == step).count(), n, "{} in {:?}", step, names);
    }
    let ready = steps.iter().find(|s| s["step"] == "worker.ready").unwrap();
    assert!(ready["ready_ms"].is_u64() && ready["generation"] == 3 && ready["rollout"]["of"] == 2, "{}", ready);
    let complete = &steps[steps.len() - 2];
    assert_eq!((complete["step"].as_str(), complete["generation"].as_u64()), (Some("restart.complete"), Some(3)), "{:?}", names);
    assert!(complete["duration_ms"].is_u64(), "{}", complete);
    let answer = steps.last().unwrap();
    assert_eq!((answer["step"].as_str(), answer["ok"].as_bool(), answer["answer"].as_str()), (Some("answer"), Some(true), Some("complete")), "{}", answer);

    // pump.socket(7)'s commands answer exactly as before: one line, no steps.
    let mut c = ControlClient::connect(&sock(&m));
    assert_eq!(c.cmd("RESTART WAIT"), "ACK complete");
    assert_eq!(c.cmd("VERSION"), format!("ACK {}", env!("CARGO_PKG_VERSION")), "nothing but the answer came before");
    let mut c = ControlClient::connect(&sock(&m));
    assert_eq!(c.cmd("RESTART"), "ACK");
    m.wait_for(
        "the fifth generation to complete",
        T,
        |recs| recs.iter().any(|r| r["event"] == "restart.complete" && r["generation"] == 5).then_some(()),
    );
    assert_eq!(c.cmd("CMDS"), "ACK CMDS VERSION LOGLEVEL STATUS RESTART UPGRADE PROMOTE ROLLBACK");
    // PROGRESS goes with WAIT only (zdrestart's own word).
    assert_eq!(c.cmd("RESTART PROGRESS"), "NACK unknown argument");
}

#[test]
fn status_is_a_summary_line_and_a_table() {
    let m = master(json!({}));
    let r = ctl(&sock(&m), &["status"]);
    assert_eq!(r.code, 0, "{:?}", r);
    let st = status(&sock(&m));
    let lines: Vec<&str> = r.out.lines().collect();
    let head = format!("running: generation 1, version {}, magic {}, up ", st["version"].as_str().unwrap(), st["magic"]);
    assert!(lines[0].starts_with(&head) && lines[0].ends_with("; last restart: none"), "{:?}", r);
    assert!(lines[1].starts_with(&format!("master pid {}, RSS ", m.pid())) && lines[1].contains(" MiB, listening on 127.0.0.1:"), "{:?}", r);
    assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["INDEX", "PID", "GEN", "STATE", "UPTIME", "RSS", "STATUS"], "{:?}", r);
    for (i, w) in st["workers"].as_array().unwrap().iter().enumerate() {
        let cols: Vec<&str> = lines[3 + i].split_whitespace().collect();
        assert_eq!(&cols[..4], [i.to_string(), w["pid"].to_string(), "1".into(), "ready".into()], "{:?}", r);
        assert!(cols[4].ends_with('s') && cols[6] == "MiB", "uptime, RSS: {:?}", r);
        // The worker's own STATUS= text, as the master holds it.
        assert!(w["rss_bytes"].as_u64().unwrap() > 1 << 20, "{}", w);
        let own = w["status"].as_str().map_or("-".to_string(), |s| s.split_whitespace().collect::<Vec<_>>().join(" "));
        assert_eq!(cols[7..].join(" "), own, "{:?}", r);
    }
    // --json keeps the JSON and adds the new fields.
    let j = ctl(&sock(&m), &["status", "--json"]);
    let v: Value = serde_json::from_str(j.out.trim()).unwrap();
    assert!(v["state"] == "running" && v["rss_bytes"].as_u64().unwrap() > 0 && v["started_unix_ms"].as_u64().unwrap() > 0, "{}", v);
    assert_eq!(v["counters"]["restarts"], json!({}), "{}", v);
}

/// The refusal, with its reason and advice: the bad config names its key.
#[test]
fn a_refused_restart_shows_its_reason_and_advice() {
    let mut m = master(json!({}));
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!("three"));
    });
    let r = ctl(&sock(&m), &["restart", "--wait"]);
    assert_eq!(r.code, 1, "{:?}", r);
    assert!(r.steps.len() == 1 && r.steps[0].contains(" s] refused: bad config: ") && r.steps[0].contains("\"workers\""), "{:?}", r);
    assert!(r.out.is_empty(), "{:?}", r);
    assert!(r.err.starts_with("zdrestartctl: restart refused: bad config: "), "{:?}", r);
    let r = ctl(&sock(&m), &["restart", "--wait", "--json"]);
    assert_eq!(r.code, 1, "{:?}", r);
    let steps: Vec<Value> = r.out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(steps.len(), 2, "{:?}", r);
    assert_eq!((steps[0]["step"].as_str(), steps[0]["reason"].as_str()), (Some("restart.refused"), Some("bad config")), "{:?}", r);
    assert_eq!(steps[1]["ok"], false, "{:?}", r);
    assert!(steps[1]["reason"].as_str().unwrap().starts_with("bad config"), "{:?}", r);
    assert!(steps[1]["advice"].as_str().unwrap().len() > 10, "{:?}", r);
}

/// A new worker that dies at start aborts the restart: the abort's reason,
/// the lockout's advice, exit 1.
#[test]
fn an_aborted_restart_shows_the_abort_and_the_lockout() {
    let mut m = master(json!({}));
    let old = pids(&m, 1);
    m.rewrite_config(|c| {
        c.insert("worker".into(), fault_worker_json("die-at-start.sh"));
    });
    let r = ctl(&sock(&m), &["restart", "--wait"]);
    assert_eq!(r.code, 3, "{:?}", r);
    let lines: Vec<&str> = r.steps.iter().map(|s| s.as_str()).collect();
    let probe = find(&lines, 0, "probe passed");
    let started = find(&lines, probe, "started (generation 2, index 0)");
    find(&lines, started, "(generation 2) exited unexpectedly (exit status 1)");
    let abort = find(&lines, started, "aborted after ");
    assert!(lines[abort].contains("new worker exited"), "{:?}", r);
    assert!(r.err.starts_with("zdrestartctl: restart failed: aborted: ") && r.err.contains("restart the master as soon as possible"), "{:?}", r);
    assert_eq!(pids(&m, 1), old, "the old workers serve on");
    // In lockout a restart is refused at once, and says why.
    let r = ctl(&sock(&m), &["restart", "--wait"]);
    assert_eq!(r.code, 3, "{:?}", r);
    assert!(r.steps.iter().any(|s| s.contains("refused: aborted restart")), "{:?}", r);
}

/// `upgrade --wait`: the new image of the master streams the roll-over.
#[test]
fn upgrade_wait_shows_the_roll_over_of_the_new_master() {
    let m = master(json!({}));
    let r = ctl(&sock(&m), &["upgrade", "--wait"]);
    assert_eq!(r.code, 0, "{:?}", r);
    let lines: Vec<&str> = r.steps.iter().map(|s| s.as_str()).collect();
    let up = find(&lines, 0, "master upgraded: zdrestart ");
    let probe = find(&lines, up, "probe passed");
    find(&lines, probe, "complete: 2 workers of generation 2 in ");
    assert_eq!(r.out, "master upgraded; zero-downtime restart complete\n", "{:?}", r);
    // The counters went over to the new image.
    let st = status(&sock(&m));
    assert_eq!((st["counters"]["upgrades"]["done"].as_u64(), st["counters"]["restarts"]["complete"].as_u64()), (Some(1), Some(1)), "{}", st);
}

/// On a terminal (script(1)'s pseudo-terminal): one line, redrawn in place.
#[test]
fn on_a_terminal_one_progress_line_is_updated_in_place() {
    let m = master(json!({}));
    let cmd = format!("{} -s {} restart --wait", ctl_bin().display(), sock(&m).display());
    let mut c = Command::new("script");
    c.args(["-qefc", &cmd, "/dev/null"]);
    scrub_env(&mut c);
    c.env("COLUMNS", "200");
    let (st, out, err) = run_cmd(&mut c, T);
    assert!(st.success(), "{:?} {} {}", st, out, err);
    let redraws: Vec<&str> = out.split("\r\x1b[K").skip(1).collect();
    assert!(redraws.len() >= 8, "a redraw per step: {:?}", out);
    assert!(redraws.iter().any(|l| l.starts_with("restart: generation 2: 1 of 2 ready, ")), "{:?}", out);
    assert!(!redraws[..redraws.len() - 1].iter().any(|l| l.contains('\n')), "steps never scroll: {:?}", out);
    assert!(redraws.last().unwrap().trim_end() == "zero-downtime restart complete", "{:?}", out);
}

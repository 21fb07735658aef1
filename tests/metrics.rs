//! The master's metrics in the Prometheus text format, checked with the
//! real tools: `zdrestartctl metrics` through `promtool check metrics`
//! (Debian's prometheus package), and `metricsFile` read by a real
//! `prometheus-node-exporter` (textfile collector) the test starts on a
//! free port and scrapes over HTTP with curl. Counters follow restarts that
//! complete, are refused and abort; the file is written atomically on state
//! changes only, and a metricsFile that cannot be written is a warning, not
//! a failure. Real master, real workers (sqlite: shared state).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn sock(m: &Master) -> PathBuf {
    m.dir.join("ctl.sock")
}

fn master(metrics_file: &Path, extra: Value) -> Master {
    let b = Master::for_test();
    let s = b.dir().join("ctl.sock");
    let db = b.dir().join("objects.db");
    b.merge(json!({"driver": "sqlite", "params": {"path": db.display().to_string()}, "controlSocket": s.display().to_string(),
        "threads": 2, "shutdownTimeout": 10, "minReady": 0, "metricsFile": metrics_file.display().to_string()}))
        .merge(extra)
        .start()
}

/// `zdrestartctl metrics`, checked by `promtool check metrics`.
fn metrics(m: &Master) -> String {
    let r = ctl(&sock(m), &["metrics"]);
    assert_eq!(r.code, 0, "{:?}", r);
    promtool_check(&r.out);
    r.out
}

fn promtool_check(text: &str) {
    let mut p = common::spawn::command("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test installs it)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}\n--- text:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        text
    );
}

/// The value of the one sample `name` (with its labels, as written).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).map(|v| v.parse().unwrap()))
}

/// A node exporter with only its textfile collector, on `dir`.
struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    fn start(dir: &Path) -> NodeExporter {
        let port = free_port();
        let child = common::spawn::command("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{}", port))
            .args(["--collector.disable-defaults", "--collector.textfile"])
            .arg(format!("--collector.textfile.directory={}", dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter (Debian package; scripts/test installs it)");
        let n = NodeExporter { child, port };
        assert!(wait_until(T, || port_accepts(port)), "node exporter never listened on {}", port);
        n
    }

    /// GET /metrics with curl.
    fn scrape(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let (st, out, err) = run_cmd(Command::new("curl").args(["-sS", "--fail", &url]), T);
        assert!(st.success(), "curl {}: {}", url, err);
        out
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_follow_restarts_and_node_exporter_serves_the_file() {
    let dir = TestDir::new("textfile");
    let file = dir.join("zdrestart.prom");
    let mut m = master(&file, json!({}));
    let st = status(&sock(&m));
    let text = metrics(&m);
    let info = format!("zdrestart_build_info{{magic=\"{}\",version=\"{}\",worker_version=\"{}\"}}", st["magic"],
        env!("CARGO_PKG_VERSION"), st["version"].as_str().unwrap());
    assert_eq!(sample(&text, &info), Some(1.0), "{}", text);
    assert_eq!(sample(&text, "zdrestart_workers{generation=\"1\",state=\"ready\"}"), Some(2.0), "{}", text);
    assert_eq!(sample(&text, "zdrestart_restarts_total{outcome=\"complete\"}"), Some(0.0), "{}", text);
    assert_eq!(sample(&text, "zdrestart_lockout"), Some(0.0), "{}", text);
    // The file holds the same text (written when the last fact came).
    assert!(wait_until(T, || std::fs::read_to_string(&file).ok().as_deref() == Some(metrics(&m).as_str())), "{:?}", std::fs::read_to_string(&file));
    let node = NodeExporter::start(&dir.join(""));
    let scraped = node.scrape();
    assert_eq!(sample(&scraped, "node_textfile_scrape_error"), Some(0.0), "{}", scraped);
    assert!(scraped.contains(&format!("{} 1", info)), "{}", scraped);

    // A restart that completes.
    assert_eq!(ctl(&sock(&m), &["restart", "--wait"]).code, 0);
    let after = |name: &str, v: f64| wait_until(T, || sample(&node.scrape(), name) == Some(v));
    assert!(after("zdrestart_restarts_total{outcome=\"complete\"}", 1.0), "{}", node.scrape());
    let text = metrics(&m);
    assert_eq!(sample(&text, "zdrestart_generation"), Some(2.0), "{}", text);
    assert_eq!(sample(&text, "zdrestart_worker_exits_total{cause=\"stopped\"}"), Some(2.0), "{}", text);
    assert_eq!(sample(&text, "zdrestart_workers{generation=\"2\",state=\"ready\"}"), Some(2.0), "{}", text);
    let took = sample(&text, "zdrestart_last_restart_duration_seconds").expect("duration");
    let end = sample(&text, "zdrestart_last_restart_end_time_seconds").expect("end time");
    let start = sample(&text, "zdrestart_start_time_seconds").unwrap();
    assert!(took > 0.0 && took < 60.0 && end > start, "{}", text);

    // A refused one.
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(0));
    });
    assert_eq!(ctl(&sock(&m), &["restart"]).code, 1);
    assert!(after("zdrestart_restarts_total{outcome=\"refused\"}", 1.0), "{}", node.scrape());

    // An aborted one: lockout, the new worker's exit counted as unexpected.
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(2));
        c.insert("worker".into(), fault_worker_json("die-at-start.sh"));
    });
    assert_eq!(ctl(&sock(&m), &["restart", "--wait"]).code, 3);
    assert!(after("zdrestart_lockout", 1.0), "{}", node.scrape());
    let text = metrics(&m);
    assert_eq!(sample(&text, "zdrestart_restarts_total{outcome=\"aborted\"}"), Some(1.0), "{}", text);
    assert_eq!(sample(&text, "zdrestart_worker_exits_total{cause=\"unexpected\"}"), Some(1.0), "{}", text);
    assert_eq!(sample(&text, "zdrestart_state{state=\"lockout\"}"), Some(1.0), "{}", text);
    assert_eq!(sample(&node.scrape(), "node_textfile_scrape_error"), Some(0.0));

    // Nothing is written while nothing happens: STATUS and metrics read,
    // they do not write.
    let ino = std::fs::metadata(&file).unwrap().ino();
    for _ in 0..3 {
        metrics(&m);
        ctl(&sock(&m), &["status"]);
    }
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), ino, "the file was replaced without a state change");
    assert!(!dir.join("zdrestart.prom.tmp").exists());
}

/// A metricsFile in a directory that is not there: a warning that names
/// the path and the operation; the master serves on, and writes the file
/// once it can (the next state change).
#[test]
fn a_metrics_file_that_cannot_be_written_is_a_warning() {
    let dir = TestDir::new("textfile");
    let sub = dir.join("not-yet");
    let file = sub.join("zdrestart.prom");
    let m = master(&file, json!({}));
    let warn = m.wait_for("the metricsFile warning", T, |recs| {
        recs.iter().find(|r| r["level"] == 40 && r["msg"].as_str().is_some_and(|s| s.starts_with("metricsFile: "))).cloned()
    });
    let msg = warn["msg"].as_str().unwrap();
    assert!(msg.contains(&format!("open {}.tmp: No such file or directory", file.display())), "{}", warn);
    assert_eq!(get(m.port, "/healthz").status, 200);
    std::fs::create_dir(&sub).unwrap();
    assert_eq!(ctl(&sock(&m), &["restart", "--wait"]).code, 0);
    assert!(wait_until(T, || std::fs::read_to_string(&file).is_ok_and(|t| t.contains("zdrestart_restarts_total{outcome=\"complete\"} 1"))));
    m.wait_for("written again", T, |recs| recs.iter().any(|r| r["msg"].as_str().is_some_and(|s| s.contains("written again"))).then_some(()));
    promtool_check(&std::fs::read_to_string(&file).unwrap());
}

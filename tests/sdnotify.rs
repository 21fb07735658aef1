//! The master as a systemd service of `Type=notify` (zdrestart(8)): the
//! sd_notify(3) datagrams it sends on `$NOTIFY_SOCKET`, received on a real
//! `AF_UNIX` datagram socket that the test binds (a path, and an abstract
//! name), in their exact sequence for start, restart, refusal, abort and stop.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::json;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// The receiving end: what systemd would read.
struct Receiver {
    sock: UnixDatagram,
}

impl Receiver {
    fn bind(path: &std::path::Path) -> Receiver {
        let sock = UnixDatagram::bind(path).unwrap_or_else(|e| panic!("bind {}: {}", path.display(), e));
        sock.set_read_timeout(Some(T)).unwrap();
        Receiver { sock }
    }

    /// The next datagram, as its list of assignments.
    fn next(&self) -> Vec<String> {
        let mut buf = vec![0u8; 4096];
        let n = self.sock.recv(&mut buf).unwrap_or_else(|e| panic!("no sd_notify datagram within {:?}: {}", T, e));
        let text = std::str::from_utf8(&buf[..n]).expect("UTF-8 datagram").to_string();
        assert!(!text.ends_with('\n') && !text.contains("\n\n"), "{:?}", text);
        text.split('\n').map(str::to_string).collect()
    }

    /// A datagram already waiting, without waiting for one.
    fn pending(&self) -> Option<Vec<String>> {
        self.sock.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 4096];
        let r = self.sock.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).split('\n').map(str::to_string).collect());
        self.sock.set_nonblocking(false).unwrap();
        r
    }

    /// Nothing arrives within `wait`.
    fn nothing_within(&self, wait: Duration) -> Option<Vec<String>> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 4096];
        let r = self.sock.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).split('\n').map(str::to_string).collect());
        self.sock.set_read_timeout(Some(T)).unwrap();
        r
    }
}

fn monotonic_usec_now() -> u64 {
    // /proc/uptime is CLOCK_BOOTTIME: CLOCK_MONOTONIC comes from the harness.
    common::sys::monotonic_usec()
}

/// `RELOADING=1`, `MONOTONIC_USEC=<CLOCK_MONOTONIC in µs, between before and
/// now>`, `STATUS=...` starting with `status`.
fn assert_reloading(msg: &[String], before: u64, status: &str) {
    assert_eq!(msg.len(), 3, "{:?}", msg);
    assert_eq!(msg[0], "RELOADING=1");
    let usec: u64 = msg[1].strip_prefix("MONOTONIC_USEC=").unwrap_or_else(|| panic!("{:?}", msg)).parse().unwrap();
    assert!(usec >= before && usec <= monotonic_usec_now(), "MONOTONIC_USEC {} not CLOCK_MONOTONIC now: {:?}", usec, msg);
    assert_eq!(msg[2], status, "{:?}", msg);
}

#[test]
fn start_restart_refusal_abort_and_stop_in_sequence() {
    let mongo = Mongo::start();
    let b = Master::for_test();
    let path = b.dir().join("notify.sock");
    let rx = Receiver::bind(&path);
    // The first generation's workers wait, reporting nothing, until the gate opens.
    let gate = ReadyGate::new(b.dir().path());
    let mut m = b
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri(), "timeout": 2}, "shutdownTimeout": 3,
                      "worker": fault_worker_json("ready-held.sh"), "readyTimeout": 3600}))
        .env("NOTIFY_SOCKET", &path.display().to_string())
        .spawn();

    // Start: READY=1 once the first generation is ready, never before. Both
    // workers are spawned and held; after a later marker (the master handled
    // a SIGHUP sent after the spawns) nothing has been sent.
    m.wait_events_after(0, "worker.spawn", 2, T);
    let mark = m.mark();
    m.signal(libc::SIGHUP);
    m.wait_event_after(mark, "log.reopen", T);
    assert_eq!(rx.pending(), None, "the master told the service manager before its workers were ready");
    gate.open();
    assert_eq!(rx.next(), ["READY=1", "STATUS=running: generation 1, 2 of 2 workers ready"]);
    // In the master's own order (one log, written in the order it acted):
    // the READY=1 it sent comes after both workers' ready records.
    let recs = m.wait_for("the master's record of READY=1", T, |recs| {
        recs.iter().any(|r| r["msg"].as_str().unwrap_or("").starts_with("told the service manager: READY=1")).then(|| recs.to_vec())
    });
    let told = recs.iter().position(|r| r["msg"].as_str().unwrap_or("").starts_with("told the service manager: READY=1")).unwrap();
    let ready: Vec<usize> = (0..recs.len()).filter(|&i| event_of(&recs[i]) == "worker.ready").collect();
    assert_eq!(ready.len(), 2, "{}", m.diagnostics());
    assert!(ready.iter().all(|&i| i < told), "READY=1 before both workers were ready\n{}", m.diagnostics());
    // The workers do not get the master's NOTIFY_SOCKET.
    for w in m.wait_worker_count(2, T) {
        assert!(proc_environ(w).iter().all(|(k, _)| k != "NOTIFY_SOCKET"), "worker {} has NOTIFY_SOCKET", w);
    }

    // A zero-downtime restart: RELOADING=1 when it starts, READY=1 at the end.
    let before = monotonic_usec_now();
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    assert_reloading(&rx.next(), before, "STATUS=running: generation 1, 2 of 2 workers ready; zero-downtime restart requested (SIGUSR2)");
    assert_eq!(rx.next(), ["READY=1", "STATUS=running: generation 2, 2 of 2 workers ready; zero-downtime restart complete"]);
    m.wait_event_after(mark, "restart.complete", T);

    // Refused (no workers): RELOADING=1, then READY=1 saying so.
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(1));
    });
    let before = monotonic_usec_now();
    m.signal(libc::SIGUSR2);
    assert_reloading(&rx.next(), before, "STATUS=running: generation 2, 2 of 2 workers ready; zero-downtime restart requested (SIGUSR2)");
    assert_eq!(rx.next(), ["READY=1", "STATUS=running: generation 2, 2 of 2 workers ready; zero-downtime restart refused: no workers"]);

    // Aborted (the new worker dies at start): READY=1 with the lockout.
    m.rewrite_config(|c| {
        c.insert("workers".into(), json!(2));
        c.insert("worker".into(), fault_worker_json("die-at-start.sh"));
    });
    let before = monotonic_usec_now();
    m.signal(libc::SIGUSR2);
    assert_reloading(&rx.next(), before, "STATUS=running: generation 2, 2 of 2 workers ready; zero-downtime restart requested (SIGUSR2)");
    assert_eq!(
        rx.next(),
        [
            "READY=1",
            "STATUS=LOCKOUT: generation 3, 2 of 2 workers ready; zero-downtime restart to generation 3 aborted: new worker exited; restarts refused, restart the master as soon as possible (zdrestartctl upgrade --wait, or a normal restart)"
        ]
    );
    // In lockout a restart is refused without being taken up: nothing is
    // sent for it (proved by the next datagram being the stop's).
    let mark = m.mark();
    m.signal(libc::SIGUSR2);
    m.wait_event_after(mark, "restart.refused", T);

    // Graceful stop: STOPPING=1, and nothing after it (the master is gone).
    m.signal(libc::SIGTERM);
    assert_eq!(rx.next(), ["STOPPING=1", "STATUS=stopping (SIGTERM): 2 workers"]);
    assert_eq!(m.wait_exit(T).code(), Some(0));
    assert_eq!(rx.nothing_within(Duration::from_millis(100)), None);
}

#[test]
fn abstract_socket_name_and_no_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("zdrestart-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    let rx = Receiver { sock };
    let mut m = Master::for_test().env("NOTIFY_SOCKET", &format!("@{}", name)).start();
    assert_eq!(rx.next(), ["READY=1", "STATUS=running: generation 1, 2 of 2 workers ready"]);
    m.signal(libc::SIGINT);
    assert_eq!(rx.next(), ["STOPPING=1", "STATUS=stopping (SIGINT): 2 workers"]);
    assert_eq!(m.wait_exit(T).code(), Some(0));

    // NOTIFY_SOCKET naming no socket: a warning, never a failure.
    let b = Master::for_test();
    let missing = b.dir().join("nobody-listens.sock");
    let mut m = b.env("NOTIFY_SOCKET", &missing.display().to_string()).start();
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit(T).code(), Some(0));
    assert!(m.log_records().iter().any(|r| r["level"] == 40 && r["msg"].as_str().unwrap().contains("sd_notify")));
}

//! The built-in worker's `sqlite` driver, run by hand on a real file: what
//! one worker writes the other reads, and every way the file can fail
//! answers 503 with a JSON error naming the file and the cause, says so in
//! `/healthz` and the probe, loses nothing acknowledged, and recovers by
//! itself once the cause is gone. The causes are made for real: a write
//! lock held by Python's sqlite3 module (the system's libsqlite3), a
//! read-only bind mount and a small tmpfs in a private mount namespace
//! (`unshare -m`, changed later with `nsenter`), a missing directory, a file
//! of garbage, a file of another schema version or program.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `params.timeout` of these tests (seconds).
const DB_TIMEOUT: u64 = 1;
/// Catches a hang, not a slow machine: the bound that matters (timeout +
/// 0.5 s) is shown by the answer's cause, which only the driver gives
/// (the event loop's own answer at its deadline names none).
const HANG: Duration = Duration::from_secs(DB_TIMEOUT + 15);

fn sqlite_cfg(path: &Path) -> Value {
    json!({"driver": "sqlite", "threads": 4, "params": {"path": path.display().to_string(), "timeout": DB_TIMEOUT}})
}

/// A 503 of the driver: the file and the cause, and how long it took.
fn assert_unusable(port: u16, method: &str, path: &str, body: Option<&[u8]>, file: &Path, cause: &str) -> Value {
    let t = Instant::now();
    let r = worker_request(port, method, path, body);
    let took = t.elapsed();
    assert_eq!(r.status, 503, "{} {}: {}", method, path, r.text());
    let v = r.json();
    assert_eq!(v["error"], "database unavailable", "{}", v);
    assert_eq!(v["file"], file.display().to_string(), "{}", v);
    assert_eq!(v["cause"], cause, "{}", v);
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{}", v);
    assert!(r.header("retry-after").is_some(), "{:?}", r);
    assert!(took < HANG, "{} took {:?}", method, took);
    eprintln!("{} {} -> 503 {} after {:?}", method, path, cause, took);
    v
}

fn healthz_database(port: u16) -> Value {
    worker_request(port, "GET", "/healthz", None).json()
}

/// Wait until `/healthz` says `database` is `want` (it learns from requests,
/// and checks by itself when its news is older than 2 s).
fn wait_health(port: u16, want: &str) {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(20), || {
        last = healthz_database(port);
        last["database"] == want
    });
    assert!(ok, "/healthz never said database {:?}: {}", want, last);
}

/// Retry a PUT until it is 200 (recovery), at most 20 s.
fn wait_put_ok(port: u16, path: &str, body: &[u8]) {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(20), || {
        let r = worker_request(port, "PUT", path, Some(body));
        last = r.text();
        r.status == 200
    });
    assert!(ok, "PUT {} never succeeded again: {}", path, last);
}

/// The worker run in a mount namespace of its own where `setup` (shell,
/// `$D` = `dir`) has run first; `nsenter` into it later with [`in_ns`]. Its
/// listener is a socket on a port reserved for it, passed at fd 3 with
/// `LISTEN_FDS` (unshare without `--fork` execs the shell, which execs the
/// worker: one pid, `LISTEN_PID`).
fn worker_in_namespace(dir: &TestDir, name: &str, cfg: Value, mounted: &Path, setup: &str) -> (ChildGuard, u16, ReservedPort) {
    let reserved = ReservedPort::new();
    let port = reserved.port();
    let mut c = serde_json::Map::new();
    c.insert("address".into(), json!("127.0.0.1"));
    c.insert("port".into(), json!(port));
    for (k, v) in cfg.as_object().unwrap() {
        c.insert(k.clone(), v.clone());
    }
    let config = dir.join(format!("{}.json", name));
    std::fs::write(&config, serde_json::to_vec(&Value::Object(c)).unwrap()).unwrap();
    let log = dir.join(format!("{}.log", name));
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "set -e; exec 3<&0 0</dev/null; D=\"$2\"; {}; LISTEN_FDS=1 LISTEN_PID=$$ exec \"$0\" -c \"$1\"",
            setup
        ))
        .arg(worker_bin())
        .arg(&config)
        .arg(mounted)
        .stdin(Stdio::from(reserved.listener()))
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    scrub_env(&mut cmd);
    let mut g = ChildGuard::spawn(&mut cmd, log);
    let serving = wait_until(Duration::from_secs(30), || {
        g.alive() && matches!(http(port, "GET", "/healthz", None), Ok(r) if r.status == 200)
    });
    if !serving {
        panic!("worker {} does not answer on port {} (alive: {}):\n{}", name, port, g.alive(), g.output());
    }
    (g, port, reserved)
}

/// Run a shell command in the mount namespace of `pid`.
fn in_ns(pid: i32, script: &str) {
    let (st, out, err) = run_cmd(Command::new("nsenter").args(["-t", &pid.to_string(), "-m", "sh", "-c", script]), HANG);
    assert!(st.success(), "nsenter -t {} -m sh -c {:?}: {}: {}{}", pid, script, st, out, err);
}

/// Run a Python 3 script with the arguments `args` (60 s at most); panics
/// with its output when it fails.
fn python(script: &str, args: &[&std::ffi::OsStr]) {
    let (st, out, err) = run_cmd(Command::new("python3").arg("-c").arg(script).args(args), Duration::from_secs(60));
    assert!(st.success(), "python3 -c {:?}: {}: {}{}", script, st, out, err);
}

/// Write `n` objects of about `size` bytes; stops at the first refusal.
/// Returns the acknowledged ones (id, body) and the first refusal.
fn fill(port: u16, prefix: &str, n: usize, size: usize) -> (Vec<(String, String)>, Option<Value>) {
    let mut acked = Vec::new();
    for i in 0..n {
        let id = format!("{}{}", prefix, i);
        let body = format!(r#"{{"i":{},"pad":"{}"}}"#, i, "x".repeat(size));
        let r = worker_request(port, "PUT", &format!("/objects/f/{}", id), Some(body.as_bytes()));
        if r.status != 200 {
            assert_eq!(r.status, 503, "{}", r.text());
            return (acked, Some(r.json()));
        }
        acked.push((id, body));
    }
    (acked, None)
}

fn assert_all_there(port: u16, acked: &[(String, String)]) {
    for (id, body) in acked {
        let r = worker_request(port, "GET", &format!("/objects/f/{}", id), None);
        assert_eq!((r.status, r.text()), (200, body.clone()), "acknowledged object {} lost or changed", id);
    }
}

#[test]
fn two_workers_share_one_file_and_objects_round_trip() {
    let dir = TestDir::for_test();
    let db = dir.join("objects.db");
    let a = start_worker(&dir, "a", sqlite_cfg(&db));
    let b = start_worker(&dir, "b", sqlite_cfg(&db));
    let h = healthz_database(a.port);
    assert_eq!((h["driver"].as_str(), h["file"].as_str()), (Some("sqlite"), Some(db.display().to_string().as_str())));
    let cases = [
        ("a.b", "c.d", r#"{"dotted":"type and id"}"#.to_string()),
        ("t", "_id", r#"{"_id":"x","$set":{"a.b":1},"sql":"'); DROP TABLE objects; --"}"#.to_string()),
        ("t", "ws", "{ \"spaces\" :  [ 1 , 2 ] , \"u\": \"é\\u0000\" }".to_string()),
        ("t", "big", format!(r#"{{"k":"{}"}}"#, "x".repeat(900_000))),
    ];
    for (ty, id, body) in &cases {
        let r = worker_request(a.port, "PUT", &format!("/objects/{}/{}", ty, id), Some(body.as_bytes()));
        assert_eq!((r.status, r.text()), (200, body.clone()));
        let r = worker_request(b.port, "GET", &format!("/objects/{}/{}", ty, id), None);
        assert_eq!((r.status, r.text()), (200, body.clone()), "exact round trip through the other worker");
    }
    assert_eq!(worker_request(b.port, "GET", "/objects/a/b.c.d", None).status, 404);
    for i in 0..20 {
        let body = format!(r#"{{"i":{}}}"#, i);
        let (w, r) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let put = worker_request(w.port, "PUT", &format!("/objects/s/{}", i), Some(body.as_bytes()));
        let got = worker_request(r.port, "GET", &format!("/objects/s/{}", i), None);
        assert_eq!((put.status, got.status, got.text()), (200, 200, body));
        assert_ne!(put.worker_pid(), got.worker_pid());
    }
    assert_eq!(worker_request(a.port, "DELETE", "/objects/s/3", None).status, 204);
    assert_eq!(worker_request(b.port, "GET", "/objects/s/3", None).status, 404);
    assert_eq!(worker_request(b.port, "DELETE", "/objects/s/3", None).status, 404);
    // The probe opens, checks and writes the same file.
    let (st, out, _) = worker_probe(&a.config);
    assert!(st.success(), "{}", out);
    assert!(out.lines().any(|l| l == "SHARED=1"), "{}", out);
}

/// Two workers (as a master starts them) on one listener and one new file,
/// with requests already waiting: both workers' threads and health threads
/// open the file at the same moment, and each switches it to WAL and looks
/// for its schema while another creates it. SQLite answers one of two such
/// switches SQLITE_BUSY at once, without waiting, and a look at the file in
/// three reads could straddle the creation: neither may reach a client,
/// whose requests must all succeed. 100 rounds, each on a new file (before
/// the worker waited for the switch and read the three at once, 2 to 59 of
/// the 1,600 requests answered 503 `locked` in each of 6 runs).
#[test]
fn two_workers_that_start_together_on_a_new_file_answer_every_request() {
    use std::io::Read;
    use std::net::TcpStream;
    let dir = TestDir::for_test();
    let mut failed = Vec::new();
    for round in 0..100 {
        let reserved = ReservedPort::new();
        let port = reserved.port();
        let config = worker_config(&dir, &format!("w{}", round), port, sqlite_cfg(&dir.join(format!("new{}.db", round))));
        let listener = reserved.listener();
        let second = listener.try_clone().unwrap();
        // The requests wait in the listener's queue before either worker runs.
        let clients: Vec<(usize, TcpStream)> = (0..16)
            .map(|i| {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let body = format!(r#"{{"i":{}}}"#, i);
                write!(c, "PUT /objects/n/{} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}", i, body.len(), body)
                    .unwrap();
                c.set_read_timeout(Some(HANG)).unwrap();
                (i, c)
            })
            .collect();
        let a = spawn_worker_on(listener, &config, &dir.join(format!("a{}.log", round)), &[]);
        let b = spawn_worker_on(second, &config, &dir.join(format!("b{}.log", round)), &[]);
        let mut acked = Vec::new();
        for (i, mut c) in clients {
            let mut answer = String::new();
            let _ = c.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200 ") {
                acked.push(i);
            } else {
                failed.push(format!("round {}, PUT {}: {}", round, i, answer.lines().last().unwrap_or("(nothing)")));
            }
        }
        for i in acked {
            let r = worker_request(port, "GET", &format!("/objects/n/{}", i), None);
            assert_eq!((r.status, r.text()), (200, format!(r#"{{"i":{}}}"#, i)), "round {}", round);
        }
        drop((a, b));
    }
    assert!(failed.is_empty(), "{} of 1600 requests failed:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn locked_database_answers_503_and_recovers() {
    let dir = TestDir::for_test();
    let db = dir.join("objects.db");
    let w = start_worker(&dir, "w", sqlite_cfg(&db));
    let p = w.port;
    assert_eq!(worker_request(p, "PUT", "/objects/l/1", Some(b"{\"v\":1}")).status, 200);
    // Another process takes the write lock (BEGIN IMMEDIATE) and holds it
    // until its stdin closes.
    let mut holder = common::spawn::spawn(
        Command::new("python3")
            .args(["-c", "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\nsys.stdin.read()\nc.execute('ROLLBACK')\n"])
            .arg(&db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let v = assert_unusable(p, "PUT", "/objects/l/1", Some(b"{\"v\":2}"), &db, "locked");
    assert!(v["detail"].as_str().unwrap().contains("lock"), "{}", v);
    assert_unusable(p, "DELETE", "/objects/l/1", None, &db, "locked");
    // Readers are not blocked by a writer (WAL): the acknowledged value.
    assert_eq!(worker_request(p, "GET", "/objects/l/1", None).json(), json!({"v": 1}));
    wait_health(p, "locked");
    let (st, out, _) = worker_probe(&w.config);
    assert_eq!(st.code(), Some(1), "{}", out);
    assert!(out.lines().any(|l| l.starts_with("ERROR=database ") && l.contains(&db.display().to_string()) && l.contains("locked")), "{}", out);
    // Concurrent writers all get their answer in time.
    let t = Instant::now();
    let hs: Vec<_> = (0..8)
        .map(|i| std::thread::spawn(move || worker_request(p, "PUT", &format!("/objects/l/c{}", i), Some(b"{}")).json()))
        .collect();
    for h in hs {
        let v = h.join().unwrap();
        assert_eq!(v["error"], "database unavailable", "{}", v);
    }
    assert!(t.elapsed() < HANG, "{:?}", t.elapsed());
    drop(holder.stdin.take());
    holder.wait().unwrap();
    wait_put_ok(p, "/objects/l/1", b"{\"v\":3}");
    assert_eq!(worker_request(p, "GET", "/objects/l/1", None).json(), json!({"v": 3}));
    wait_health(p, "ok");
}

#[test]
fn read_only_database_answers_503_and_recovers() {
    let dir = TestDir::for_test();
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("objects.db");
    // Written first, then served from a read-only bind mount of its directory.
    let w = start_worker(&dir, "first", sqlite_cfg(&db));
    assert_eq!(worker_request(w.port, "PUT", "/objects/f/kept", Some(b"{\"k\":1}")).status, 200);
    drop(w);
    let (mut g, p, _reserved) = worker_in_namespace(&dir, "ro", sqlite_cfg(&db), &data, "mount --bind \"$D\" \"$D\"; mount -o remount,bind,ro \"$D\"");
    assert_unusable(p, "PUT", "/objects/f/new", Some(b"{}"), &db, "read-only");
    wait_health(p, "read-only");
    in_ns(g.pid(), &format!("mount -o remount,bind,rw '{}'", data.display()));
    wait_put_ok(p, "/objects/f/new", b"{\"n\":1}");
    assert_eq!(worker_request(p, "GET", "/objects/f/kept", None).json(), json!({"k": 1}));
    wait_health(p, "ok");
    assert!(g.alive());
}

#[test]
fn full_file_system_answers_503_loses_nothing_and_recovers() {
    let dir = TestDir::for_test();
    let data = dir.join("small");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("objects.db");
    let (mut g, p, _reserved) = worker_in_namespace(&dir, "full", sqlite_cfg(&db), &data, "mount -t tmpfs -o size=1m tmpfs \"$D\"");
    let (acked, refusal) = fill(p, "o", 200, 30_000);
    let v = refusal.expect("a 1 MiB file system never filled up");
    assert_eq!((v["cause"].as_str(), v["file"].as_str()), (Some("full"), Some(db.display().to_string().as_str())), "{}", v);
    assert!(!acked.is_empty());
    eprintln!("{} objects acknowledged before the file system was full", acked.len());
    assert_unusable(p, "PUT", "/objects/f/more", Some(format!(r#"{{"pad":"{}"}}"#, "y".repeat(30_000)).as_bytes()), &db, "full");
    wait_health(p, "full");
    // Nothing acknowledged is lost or half-written; the refused one is not there.
    assert_all_there(p, &acked);
    assert_eq!(worker_request(p, "GET", "/objects/f/more", None).status, 404);
    in_ns(g.pid(), &format!("mount -o remount,size=64m '{}'", data.display()));
    wait_put_ok(p, "/objects/f/more", b"{\"m\":1}");
    assert_all_there(p, &acked);
    assert!(g.alive());
}

#[test]
fn missing_directory_answers_503_and_recovers() {
    let dir = TestDir::for_test();
    let db = dir.join("not-yet/objects.db");
    let w = start_worker(&dir, "w", sqlite_cfg(&db));
    let v = assert_unusable(w.port, "PUT", "/objects/m/1", Some(b"{}"), &db, "missing");
    assert!(v["detail"].as_str().unwrap().contains("not-yet"), "{}", v);
    assert_unusable(w.port, "GET", "/objects/m/1", None, &db, "missing");
    wait_health(w.port, "missing");
    let (st, out, _) = worker_probe(&w.config);
    assert_eq!(st.code(), Some(1), "{}", out);
    assert!(out.lines().any(|l| l.starts_with("ERROR=") && l.contains(&db.display().to_string()) && l.contains("missing")), "{}", out);
    assert!(w.proc.output().contains("Database unusable at start"), "{}", w.proc.output());
    std::fs::create_dir(dir.join("not-yet")).unwrap();
    wait_put_ok(w.port, "/objects/m/1", b"{\"m\":1}");
    assert_eq!(worker_request(w.port, "GET", "/objects/m/1", None).json(), json!({"m": 1}));
}

#[test]
fn corrupt_file_answers_503_and_the_probe_refuses_it() {
    let dir = TestDir::for_test();
    let db = dir.join("objects.db");
    let mut f = std::fs::File::create(&db).unwrap();
    f.write_all(&[0x5a; 16384]).unwrap();
    drop(f);
    let w = start_worker(&dir, "w", sqlite_cfg(&db));
    let v = assert_unusable(w.port, "GET", "/objects/c/1", None, &db, "corrupt");
    assert!(v["detail"].as_str().unwrap().contains("not a database"), "{}", v);
    assert_unusable(w.port, "PUT", "/objects/c/1", Some(b"{}"), &db, "corrupt");
    wait_health(w.port, "corrupt");
    let (st, out, _) = worker_probe(&w.config);
    assert_eq!(st.code(), Some(1), "{}", out);
    assert!(out.lines().any(|l| l.starts_with("ERROR=") && l.contains(&db.display().to_string()) && l.contains("corrupt")), "{}", out);
    // The garbage is left as it was: nothing overwrote it.
    assert_eq!(std::fs::read(&db).unwrap(), vec![0x5a; 16384]);
}

/// A file of another schema version, or of another program: refused by the
/// probe and by the worker, naming the file and both versions.
#[test]
fn another_schema_version_or_program_is_refused() {
    let dir = TestDir::for_test();
    let db = dir.join("objects.db");
    let w = start_worker(&dir, "w", sqlite_cfg(&db));
    assert_eq!(worker_request(w.port, "PUT", "/objects/v/1", Some(b"{}")).status, 200);
    drop(w);
    let set = |sql: &str| {
        python("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.executescript(sys.argv[2])\nc.commit()\n", &[db.as_os_str(), sql.as_ref()]);
    };
    set("PRAGMA user_version = 2;");
    let w = start_worker(&dir, "w2", sqlite_cfg(&db));
    let v = assert_unusable(w.port, "GET", "/objects/v/1", None, &db, "wrong schema");
    assert_eq!(v["detail"], "schema version 2, this worker reads and writes version 1", "{}", v);
    let (st, out, _) = worker_probe(&w.config);
    assert_eq!(st.code(), Some(1), "{}", out);
    let want = format!(
        "ERROR=database {} unusable: wrong schema: schema version 2, this worker reads and writes version 1",
        db.display()
    );
    assert!(out.lines().any(|l| l == want), "{}", out);
    set("PRAGMA user_version = 1; PRAGMA application_id = 42;");
    let v = assert_unusable(w.port, "PUT", "/objects/v/1", Some(b"{}"), &db, "wrong schema");
    assert!(v["detail"].as_str().unwrap().starts_with("not a zdrestart database (application_id 0x2a"), "{}", v);
    // A file of another program with tables of its own is not taken over.
    let other: PathBuf = dir.join("other.db");
    python("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute('CREATE TABLE mine (x)')\nc.commit()\n", &[other.as_os_str()]);
    let w3 = start_worker(&dir, "w3", sqlite_cfg(&other));
    // The first request meets the worker's own first look at the file (its
    // health thread switches it to WAL at the same moment): it waits for it,
    // and answers what the file is, never `locked`.
    assert_unusable(w3.port, "PUT", "/objects/v/1", Some(b"{}"), &other, "wrong schema");
}

//! Shared harness of the integration tests (`mod common;` in each tests/*.rs).
//!
//! Every process a test starts through this harness dies when the owning value
//! is dropped, also when the test panics: a `Master` runs in its own process
//! group and its drop SIGKILLs that group plus every descendant still alive; a
//! `Mongo` or a `ChildGuard` is SIGKILLed on drop. Temporary directories are
//! unique per test and removed on success, kept (path printed) on failure or
//! with `ZDRESTART_KEEP_TMP=1`.
//!
//! Main pieces:
//! - [`TestDir`]: a unique temp dir; [`free_port`]: a free loopback port.
//! - [`Mongo`]: a `secantusd-py` MongoDB-compatible server on a free port.
//! - [`Master`] / [`MasterBuilder`]: a real `zdrestart` master with a config
//!   written from defaults + overrides, log parsing and event waits, signals,
//!   worker pids from /proc, exit waits, config rewrites.
//! - [`http`], [`get`], [`KeepAlive`]: a tiny HTTP/1.1 client with timeouts
//!   (`KeepAlive::send`/`read`/`closed_within` for pipelining and checking
//!   that the server closes a connection).
//! - The built-in worker run by hand, without a master: [`start_worker`],
//!   [`spawn_worker`], [`worker_request`], [`worker_probe`]; [`ChildGuard`]
//!   kills any directly spawned process on drop.
//! - [`wait_until`], /proc helpers ([`proc_stat`], [`fd_count`], ...),
//!   [`fault_worker`] (argv of a fault-injection worker under tests/fault/).
#![allow(dead_code)]

use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Paths and binaries

/// Root of the repository (the crate's manifest dir).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The master binary built by cargo for this test run.
pub fn master_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zdrestart"))
}

/// The built-in worker binary built by cargo for this test run.
pub fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zdrestart-worker"))
}

/// The control client binary built by cargo for this test run.
pub fn ctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zdrestartctl"))
}

/// argv (for the config key `worker`) of a fault-injection worker of
/// tests/fault/: `[tests/fault/<script>, <built-in worker>]`. The scripts pass
/// the modes they do not break (usually the probe) on to the built-in worker.
pub fn fault_worker(script: &str) -> Vec<String> {
    let p = repo_root().join("tests/fault").join(script);
    assert!(p.exists(), "no fault worker {}", p.display());
    vec![p.display().to_string(), worker_bin().display().to_string()]
}

/// `fault_worker` as a JSON array, ready for `MasterBuilder::set("worker", ..)`.
pub fn fault_worker_json(script: &str) -> Value {
    json!(fault_worker(script))
}

/// Name of the running test (libtest names its threads after the tests), or
/// "test" when it runs on the main thread (`--test-threads=1`).
pub fn test_name() -> String {
    let t = std::thread::current();
    match t.name() {
        Some(n) if n != "main" => n.rsplit("::").next().unwrap_or(n).to_string(),
        _ => "test".to_string(),
    }
}

/// A process-wide lock for tests of one test binary that must not overlap
/// (e.g. those that signal every `zdrestart` with killall). Poison-tolerant.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Temporary directories

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique directory under the system temp dir: `zdrestart-<name>-<pid>-<n>`.
/// Removed on drop unless the thread is panicking (a failed test) or
/// `ZDRESTART_KEEP_TMP` is set; then its path is printed.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .take(60)
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("zdrestart-{}-{}-{}", clean, std::process::id(), n));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {}", path.display(), e));
        TestDir { path }
    }

    /// A TestDir named after the running test.
    pub fn for_test() -> TestDir {
        TestDir::new(&test_name())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("ZDRESTART_KEEP_TMP").is_some() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Ports

/// A free TCP port on 127.0.0.1, chosen below the kernel's ephemeral range
/// (so that no outgoing connection of this machine takes it meanwhile), checked
/// by binding it, and never handed out twice by this process.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
    // A small xorshift seeded by pid and time: different test binaries (and
    // other people's runs on the same machine) start at different ports.
    let mut x: u64 = (std::process::id() as u64) << 32
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20000 + (x % 12000) as u16; // 20000..32000, below ip_local_port_range
        if given.contains(&port) {
            continue;
        }
        if port_is_free(port) {
            given.insert(port);
            return port;
        }
    }
    // Fall back on the kernel's choice.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().unwrap().port();
    given.insert(port);
    port
}

/// Whether 127.0.0.1:port can be bound now (std sets SO_REUSEADDR, so sockets
/// in TIME_WAIT do not count as in use; a listener does).
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Whether something accepts TCP connections on 127.0.0.1:port.
pub fn port_accepts(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

// ---------------------------------------------------------------------------
// Waiting

/// Poll `f` every 20 ms until it returns true; false if `timeout` passed first.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Seconds as a Duration (shorthand for tests).
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// ---------------------------------------------------------------------------
// /proc helpers

/// The few fields of /proc/<pid>/stat tests need.
#[derive(Debug, Clone)]
pub struct ProcStat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub starttime: u64,
}

/// /proc/<pid>/stat, or None when there is no such process.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = fs::read_to_string(format!("/proc/{}/stat", pid)).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let rest: Vec<&str> = s[close + 2..].split(' ').collect();
    // rest[0] = state (field 3), rest[1] = ppid, rest[2] = pgrp, rest[19] = starttime (field 22)
    Some(ProcStat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgid: rest.get(2)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

/// Whether pid names a process that is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// Every process of the machine (pids from /proc).
pub fn all_pids() -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                v.push(pid);
            }
        }
    }
    v
}

/// Direct children of pid (zombies included), from /proc/*/stat.
pub fn children_of(pid: i32) -> Vec<ProcStat> {
    all_pids().into_iter().filter_map(proc_stat).filter(|s| s.ppid == pid).collect()
}

/// Live (non-zombie) direct children of pid.
pub fn live_children(pid: i32) -> Vec<i32> {
    children_of(pid).into_iter().filter(|s| s.state != 'Z' && s.state != 'X').map(|s| s.pid).collect()
}

/// Zombie direct children of pid.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    children_of(pid).into_iter().filter(|s| s.state == 'Z').map(|s| s.pid).collect()
}

/// Every descendant of pid (children, grandchildren, ...).
pub fn descendants_of(pid: i32) -> Vec<i32> {
    let stats: Vec<ProcStat> = all_pids().into_iter().filter_map(proc_stat).collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for s in stats.iter().filter(|s| s.ppid == p) {
            if !out.contains(&s.pid) {
                out.push(s.pid);
                frontier.push(s.pid);
            }
        }
    }
    out
}

/// Number of open fds of pid (entries of /proc/<pid>/fd).
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{}/fd", pid)).map(|d| d.count()).unwrap_or(0)
}

/// The targets of the open fds of pid, sorted (for leak diagnostics).
pub fn fd_targets(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(format!("/proc/{}/fd", pid))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let t = fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
                    format!("{}->{}", e.file_name().to_string_lossy(), t)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Environment of pid as (key, value) pairs.
pub fn proc_environ(pid: i32) -> Vec<(String, String)> {
    let raw = fs::read(format!("/proc/{}/environ", pid)).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Send a signal to a pid (tests may signal anything they started).
pub fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

// ---------------------------------------------------------------------------
// Bunyan records

/// Check one parsed log record against the bunyan format of DESIGN.md section
/// 7; Err names what is wrong.
pub fn check_bunyan(rec: &Value) -> Result<(), String> {
    let o = rec.as_object().ok_or("not a JSON object")?;
    match o.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(0) => {}
        other => return Err(format!("\"v\" must be 0, found {:?}", other)),
    }
    match o.get("level").and_then(Value::as_u64) {
        Some(10 | 20 | 30 | 40 | 50 | 60) => {}
        _ => return Err(format!("\"level\" must be one of 10..60, found {:?}", o.get("level"))),
    }
    if o.get("name").and_then(Value::as_str) != Some("zdrestart") {
        return Err(format!("\"name\" must be \"zdrestart\", found {:?}", o.get("name")));
    }
    match o.get("hostname").and_then(Value::as_str) {
        Some(h) if !h.is_empty() => {}
        _ => return Err(format!("\"hostname\" must be a non-empty string, found {:?}", o.get("hostname"))),
    }
    match o.get("pid").and_then(Value::as_u64) {
        Some(p) if p > 0 => {}
        _ => return Err(format!("\"pid\" must be a positive integer, found {:?}", o.get("pid"))),
    }
    match o.get("time").and_then(Value::as_str) {
        Some(t) if is_iso8601_ms(t) => {}
        _ => return Err(format!("\"time\" must be ISO 8601 UTC with ms, found {:?}", o.get("time"))),
    }
    if !o.get("msg").map(Value::is_string).unwrap_or(false) {
        return Err(format!("\"msg\" must be a string, found {:?}", o.get("msg")));
    }
    match o.get("component").and_then(Value::as_str) {
        Some(c) if !c.is_empty() => {}
        _ => return Err(format!("\"component\" must be a non-empty string, found {:?}", o.get("component"))),
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`
fn is_iso8601_ms(t: &str) -> bool {
    let b = t.as_bytes();
    if b.len() != 24 {
        return false;
    }
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    digits.iter().all(|&i| b[i].is_ascii_digit())
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
}

/// Parse a bunyan log file: one record per complete line (a trailing line not
/// yet terminated by '\n' is ignored). Panics on a line that is not a valid
/// record, naming the file, the line number and the problem.
pub fn parse_log(path: &Path) -> Vec<Value> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read log {}: {}", path.display(), e),
    };
    let mut out = Vec::new();
    let complete = match data.iter().rposition(|b| *b == b'\n') {
        Some(i) => &data[..=i],
        None => return out,
    };
    for (i, line) in complete.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            if i + 1 < complete.split(|b| *b == b'\n').count() {
                panic!("{}:{}: empty line in bunyan log", path.display(), i + 1);
            }
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let rec: Value = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("{}:{}: not JSON ({}): {}", path.display(), i + 1, e, text));
        if let Err(e) = check_bunyan(&rec) {
            panic!("{}:{}: not a valid bunyan record: {}: {}", path.display(), i + 1, e, text);
        }
        out.push(rec);
    }
    out
}

/// The `event` field of a record, or "".
pub fn event_of(rec: &Value) -> &str {
    rec.get("event").and_then(Value::as_str).unwrap_or("")
}

/// `worker_pid` of a record, if any.
pub fn worker_pid_of(rec: &Value) -> Option<i32> {
    rec.get("worker_pid").and_then(Value::as_i64).map(|p| p as i32)
}

// ---------------------------------------------------------------------------
// MongoDB-compatible server (secantusd-py)

/// Path of `secantusd-py`: $ZDRESTART_SECANTUSD, else <repo>/.venv/bin/secantusd-py.
/// Panics with advice when neither exists (the MongoDB tests must fail, not skip).
pub fn secantusd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ZDRESTART_SECANTUSD") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "ZDRESTART_SECANTUSD={} does not exist: run scripts/test, which installs secantusdb",
            p.display()
        );
        return p;
    }
    let p = repo_root().join(".venv/bin/secantusd-py");
    assert!(
        p.exists(),
        "no MongoDB-compatible test server: neither $ZDRESTART_SECANTUSD nor {} exists; \
         run scripts/test (it creates the venv with `pip install secantusdb`)",
        p.display()
    );
    p
}

/// A `secantusd-py` server on a free loopback port with in-memory storage.
/// Killed (SIGKILL) on drop.
pub struct Mongo {
    pub port: u16,
    child: Option<Child>,
    dir: TestDir,
    starts: u32,
}

impl Mongo {
    /// Start a server and wait until it accepts TCP connections (20 s at most;
    /// panics with its output otherwise).
    pub fn start() -> Mongo {
        Mongo::start_on(free_port())
    }

    /// `start` on a given port (e.g. one a worker was already pointed at).
    pub fn start_on(port: u16) -> Mongo {
        let dir = TestDir::new(&format!("{}-mongo", test_name()));
        let mut m = Mongo { port, child: None, dir, starts: 0 };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let bin = secantusd_bin();
        self.starts += 1;
        let logpath = self.dir.join(format!("secantusd.{}.log", self.starts));
        let log = fs::File::create(&logpath).expect("create secantusd log");
        let tmp = self.dir.join("tmp");
        let _ = fs::create_dir_all(&tmp);
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--storage-path", ":memory:"])
            .current_dir(self.dir.path())
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {}", bin.display(), e));
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if port_accepts(self.port) {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "secantusd-py exited ({}) before accepting on port {}; output:\n{}",
                    st,
                    self.port,
                    fs::read_to_string(&logpath).unwrap_or_default()
                );
            }
            if Instant::now() >= end {
                self.stop();
                panic!(
                    "secantusd-py did not accept TCP on 127.0.0.1:{} within 20 s; output:\n{}",
                    self.port,
                    fs::read_to_string(&logpath).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true`
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Pid of the server, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Kill the server (SIGKILL to its process group) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(-(c.id() as i32), libc::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port (data is gone: in-memory storage).
    pub fn restart(&mut self) {
        self.stop();
        // The port may take a moment to be bindable again.
        wait_until(Duration::from_secs(10), || port_is_free(self.port));
        self.spawn();
    }
}

impl Drop for Mongo {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// The master

/// The config a test master gets unless overridden: a free port, log file and
/// pidfile in the test dir, 2 workers, memory driver, short timeouts.
pub fn default_config(dir: &TestDir, port: u16) -> Map<String, Value> {
    let v = json!({
        "workers": 2,
        "address": "127.0.0.1",
        "port": port,
        "driver": "memory",
        "logfile": dir.join("zdrestart.log").display().to_string(),
        "logLevel": "debug",
        "pidfile": dir.join("zdrestart.pid").display().to_string(),
        "shutdownTimeout": 5,
        "readyTimeout": 10,
        "probeTimeout": 10,
        "threads": 4,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// Builds the config and environment of a test master. `set(key, Null)`
/// removes a key from the defaults.
pub struct MasterBuilder {
    dir: TestDir,
    port: u16,
    config: Map<String, Value>,
    raw_config: Option<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    args: Option<Vec<String>>,
    bin: Option<PathBuf>,
}

impl MasterBuilder {
    pub fn new(name: &str) -> MasterBuilder {
        let dir = TestDir::new(name);
        let port = free_port();
        let config = default_config(&dir, port);
        MasterBuilder { dir, port, config, raw_config: None, env: Vec::new(), env_remove: Vec::new(), args: None, bin: None }
    }

    /// Set (or with `Value::Null`, remove) a config key.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let value = value.into();
        if value.is_null() {
            self.config.remove(key);
        } else {
            self.config.insert(key.to_string(), value);
        }
        self
    }

    /// Merge every key of a JSON object into the config (Null removes).
    pub fn merge(mut self, obj: Value) -> Self {
        for (k, v) in obj.as_object().expect("merge takes a JSON object") {
            self = self.set(k, v.clone());
        }
        self
    }

    /// Use this exact text as the config file (e.g. invalid JSON).
    pub fn raw_config(mut self, text: &str) -> Self {
        self.raw_config = Some(text.to_string());
        self
    }

    /// An environment variable for the master.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn env_remove(mut self, k: &str) -> Self {
        self.env_remove.push(k.to_string());
        self
    }

    /// Replace the default arguments (`-c <config>`). `{config}` in an
    /// argument is replaced by the config path.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Start the master from this executable instead of cargo's (upgrade
    /// tests: a copy that the test replaces, as a package upgrade does).
    pub fn bin(mut self, path: &Path) -> Self {
        self.bin = Some(path.to_path_buf());
        self
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    pub fn config(&self) -> &Map<String, Value> {
        &self.config
    }

    /// Write the config and start the master (does not wait for anything).
    pub fn spawn(self) -> Master {
        let config_path = self.dir.join("zdrestart.json");
        match &self.raw_config {
            Some(t) => fs::write(&config_path, t).unwrap(),
            None => fs::write(&config_path, serde_json::to_vec_pretty(&Value::Object(self.config.clone())).unwrap())
                .unwrap(),
        }
        let logfile = self.config.get("logfile").and_then(Value::as_str).map(PathBuf::from);
        let pidfile = self.config.get("pidfile").and_then(Value::as_str).map(PathBuf::from);
        let stdout = self.dir.join("master.stdout");
        let stderr = self.dir.join("master.stderr");
        let args: Vec<String> = match &self.args {
            Some(a) => a.iter().map(|s| s.replace("{config}", &config_path.display().to_string())).collect(),
            None => vec!["-c".into(), config_path.display().to_string()],
        };
        let mut cmd = Command::new(self.bin.clone().unwrap_or_else(master_bin));
        cmd.args(&args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .process_group(0);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {}", master_bin().display(), e));
        let pid = child.id() as i32;
        Master {
            dir: self.dir,
            port: self.port,
            config_path,
            config: Value::Object(self.config),
            logfile,
            pidfile,
            stdout,
            stderr,
            child: Some(child),
            pid,
            status: None,
            started,
            seen_workers: Mutex::new(HashSet::new()),
            check_log_on_drop: true,
        }
    }

    /// Start the master and wait until `workers` workers reported ready and the
    /// port answers `GET /healthz` with 200.
    pub fn start(self) -> Master {
        let m = self.spawn();
        m.wait_serving(Duration::from_secs(30));
        m
    }

    /// Start the master and wait for it to exit (it is expected to fail fast):
    /// its status and stderr.
    pub fn run_to_exit(self, timeout: Duration) -> (ExitStatus, String, Master) {
        let mut m = self.spawn();
        let st = m.wait_exit(timeout);
        let err = m.stderr_text();
        (st, err, m)
    }
}

/// A running `zdrestart` master in its own process group.
pub struct Master {
    pub dir: TestDir,
    pub port: u16,
    pub config_path: PathBuf,
    /// The config as last written by the harness.
    pub config: Value,
    pub logfile: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    child: Option<Child>,
    pid: i32,
    status: Option<ExitStatus>,
    pub started: Instant,
    seen_workers: Mutex<HashSet<i32>>,
    /// Validate every log record (bunyan + component) when dropped after a
    /// successful test. On by default.
    pub check_log_on_drop: bool,
}

impl Master {
    pub fn builder(name: &str) -> MasterBuilder {
        MasterBuilder::new(name)
    }

    /// A builder named after the running test.
    pub fn for_test() -> MasterBuilder {
        MasterBuilder::new(&test_name())
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Number of workers in the config last written.
    pub fn workers(&self) -> usize {
        self.config.get("workers").and_then(Value::as_u64).unwrap_or(2) as usize
    }

    /// Send a signal to the master.
    pub fn signal(&self, sig: i32) {
        assert!(kill(self.pid, sig), "kill({}, {}): {}", self.pid, sig, io::Error::last_os_error());
    }

    /// Whether the master has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.status = Some(st);
                }
            }
        }
        self.status
    }

    /// Wait for the master to exit; panics (with the log tail) on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                return st;
            }
            if Instant::now() >= end {
                panic!(
                    "master {} did not exit within {:?}\n{}",
                    self.pid,
                    timeout,
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Exit code of an exited master (panics if it was killed by a signal).
    pub fn exit_code(st: ExitStatus) -> i32 {
        match st.code() {
            Some(c) => c,
            None => panic!("master was killed by signal {:?}", st.signal()),
        }
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The log file's raw text.
    pub fn log_text(&self) -> String {
        self.logfile.as_ref().map(|p| fs::read_to_string(p).unwrap_or_default()).unwrap_or_default()
    }

    /// Every record of the log file (panics on an invalid line).
    pub fn log_records(&self) -> Vec<Value> {
        match &self.logfile {
            Some(p) => {
                let recs = parse_log(p);
                let mut seen = self.seen_workers.lock().unwrap_or_else(|e| e.into_inner());
                for r in &recs {
                    if event_of(r) == "worker.spawn" {
                        if let Some(p) = worker_pid_of(r) {
                            seen.insert(p);
                        }
                    }
                }
                recs
            }
            None => Vec::new(),
        }
    }

    /// Number of records now: a mark to wait for events after.
    pub fn mark(&self) -> usize {
        self.log_records().len()
    }

    /// The last `n` lines of the log, stderr and stdout: what a failing test prints.
    pub fn diagnostics(&self) -> String {
        let tail = |s: String, n: usize| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "--- last 40 log lines ({}):\n{}\n--- master stderr:\n{}\n--- master stdout:\n{}\n--- test dir: {}",
            self.logfile.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            tail(self.log_text(), 40),
            tail(self.stderr_text(), 40),
            tail(self.stdout_text(), 20),
            self.dir.path().display()
        )
    }

    /// Wait until `f(records)` returns Some; panics with `what` and the log
    /// tail on timeout. Polls every 50 ms.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut(&[Value]) -> Option<T>) -> T {
        let end = Instant::now() + timeout;
        loop {
            let recs = self.log_records();
            if let Some(t) = f(&recs) {
                return t;
            }
            if Instant::now() >= end {
                panic!("timed out after {:?} waiting for {}\n{}", timeout, what, self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first record with `event` at index >= `from`: (index, record).
    pub fn wait_event_after(&self, from: usize, event: &str, timeout: Duration) -> (usize, Value) {
        self.wait_for(&format!("event {:?} after record {}", event, from), timeout, |recs| {
            recs.iter().enumerate().skip(from).find(|(_, r)| event_of(r) == event).map(|(i, r)| (i, r.clone()))
        })
    }

    /// The first record with `event` anywhere in the log.
    pub fn wait_for_event(&self, event: &str, timeout: Duration) -> Value {
        self.wait_event_after(0, event, timeout).1
    }

    /// Wait until `n` records with `event` exist at index >= `from`.
    pub fn wait_events_after(&self, from: usize, event: &str, n: usize, timeout: Duration) -> Vec<Value> {
        self.wait_for(&format!("{} events {:?} after record {}", n, event, from), timeout, |recs| {
            let v: Vec<Value> = recs.iter().skip(from).filter(|r| event_of(r) == event).cloned().collect();
            if v.len() >= n {
                Some(v)
            } else {
                None
            }
        })
    }

    /// Every record with `event` (now).
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.log_records().into_iter().filter(|r| event_of(r) == event).collect()
    }

    /// Wait until the configured number of workers reported ready (after the
    /// latest master.start) and `GET /healthz` through the port answers 200.
    pub fn wait_serving(&self, timeout: Duration) {
        let n = self.workers();
        let end = Instant::now() + timeout;
        self.wait_for(&format!("{} worker.ready events", n), timeout, |recs| {
            let ready = recs.iter().filter(|r| event_of(r) == "worker.ready").count();
            if ready >= n {
                Some(())
            } else {
                None
            }
        });
        let ok = wait_until(end.saturating_duration_since(Instant::now()).max(Duration::from_secs(2)), || {
            matches!(http(self.port, "GET", "/healthz", None), Ok(r) if r.status == 200)
        });
        assert!(ok, "GET /healthz on port {} never answered 200\n{}", self.port, self.diagnostics());
    }

    /// Live children of the master (its workers, and a probe while one runs),
    /// from /proc.
    pub fn children(&self) -> Vec<i32> {
        live_children(self.pid)
    }

    /// Live worker pids: children of the master whose environment carries
    /// ZDRESTART_NOTIFY_FD and not ZDRESTART_PROBE (a probe is not a worker).
    pub fn worker_pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = live_children(self.pid)
            .into_iter()
            .filter(|&p| {
                let env = proc_environ(p);
                // An empty environ means the child is mid-exec or gone; keep it
                // out rather than guess.
                env.iter().any(|(k, _)| k == "ZDRESTART_NOTIFY_FD") && !env.iter().any(|(k, _)| k == "ZDRESTART_PROBE")
            })
            .collect();
        v.sort();
        {
            let mut seen = self.seen_workers.lock().unwrap_or_else(|e| e.into_inner());
            seen.extend(v.iter().copied());
        }
        v
    }

    /// Wait until exactly `n` live workers exist; returns their pids.
    pub fn wait_worker_count(&self, n: usize, timeout: Duration) -> Vec<i32> {
        let mut last = Vec::new();
        if wait_until(timeout, || {
            last = self.worker_pids();
            last.len() == n
        }) {
            return last;
        }
        panic!("expected {} workers, have {:?}\n{}", n, last, self.diagnostics());
    }

    /// Zombie children of the master now.
    pub fn zombies(&self) -> Vec<i32> {
        zombie_children(self.pid)
    }

    /// Open fds of the master now.
    pub fn fd_count(&self) -> usize {
        fd_count(self.pid)
    }

    /// Rewrite the config file on disk (atomically: write + rename); `f` edits
    /// the JSON. The running master notices only on SIGUSR2 / restart.
    pub fn rewrite_config(&mut self, f: impl FnOnce(&mut Map<String, Value>)) {
        let mut cfg = self.config.as_object().cloned().unwrap_or_default();
        f(&mut cfg);
        self.config = Value::Object(cfg);
        let text = serde_json::to_vec_pretty(&self.config).unwrap();
        self.write_config_raw(std::str::from_utf8(&text).unwrap());
    }

    /// Replace the config file with this exact text (atomically).
    pub fn write_config_raw(&self, text: &str) {
        let tmp = self.config_path.with_extension("json.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// GET /healthz through the master's port.
    pub fn healthz(&self) -> Response {
        get(self.port, "/healthz")
    }

    /// Kill the master and everything it started (SIGKILL), reap it. Idempotent.
    pub fn kill_all(&mut self) {
        let mut pids: HashSet<i32> = descendants_of(self.pid).into_iter().collect();
        {
            let seen = self.seen_workers.lock().unwrap_or_else(|e| e.into_inner());
            // Workers seen earlier that were reparented (e.g. the master was
            // SIGKILLed): only those still in the master's process group or
            // still children of it, so that a reused pid is never hit.
            for &p in seen.iter() {
                if let Some(s) = proc_stat(p) {
                    if s.pgid == self.pid || s.ppid == self.pid {
                        pids.insert(p);
                    }
                }
            }
        }
        if self.status.is_none() || !pids.is_empty() {
            kill(-self.pid, libc::SIGKILL);
        }
        for p in pids {
            kill(p, libc::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            if self.status.is_none() {
                let _ = c.kill();
                if let Ok(st) = c.wait() {
                    self.status = Some(st);
                }
            }
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        // Learn the workers from the log before killing, so that reparented
        // ones are found too.
        if !std::thread::panicking() {
            if self.check_log_on_drop {
                // Parsing validates every record; a bad one fails the test,
                // after everything is killed.
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.log_records()));
                self.kill_all();
                if let Err(e) = res {
                    std::panic::resume_unwind(e);
                }
                return;
            }
        } else {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.log_records()));
            eprintln!("{}", self.diagnostics());
        }
        self.kill_all();
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let n = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({}): {:?}", e, self.text()))
    }

    /// X-Worker-Pid as a number.
    pub fn worker_pid(&self) -> Option<i32> {
        self.header("x-worker-pid").and_then(|v| v.trim().parse().ok())
    }

    /// Whether the server announced it closes the connection.
    pub fn closes(&self) -> bool {
        self.header("connection").map(|v| v.eq_ignore_ascii_case("close")).unwrap_or(false)
    }

    /// Assert the headers every answer of the built-in worker carries: a
    /// numeric X-Worker-Pid, `Content-Type: application/json` and a
    /// Content-Length equal to the body's length.
    pub fn check_worker_headers(&self) {
        assert!(self.header("x-worker-pid").is_some_and(|p| p.parse::<u32>().is_ok()), "{:?}", self);
        assert_eq!(self.header("content-type"), Some("application/json"), "{:?}", self);
        assert_eq!(self.header("content-length").map(|l| l.parse::<usize>().unwrap()), Some(self.body.len()));
    }
}

/// Default I/O timeout of the client.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

fn connect(port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn build_request(method: &str, path: &str, body: Option<&[u8]>, close: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n", method, path);
    if close {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in extra {
        req.push_str(&format!("{}: {}\r\n", k, v));
    }
    if let Some(b) = body {
        if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut v = req.into_bytes();
    if let Some(b) = body {
        v.extend_from_slice(b);
    }
    v
}

/// Read one response from `r`. `head` tells that the request was HEAD (no body).
pub fn read_response(r: &mut impl BufRead, head: bool) -> io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a response"));
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {:?}", line)));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {:?}", line)))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in headers"));
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad header {:?}", h)))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head || status == 204 || status == 304 || (100..200).contains(&status) {
        // no body
    } else if get("transfer-encoding").map(|v| v.to_ascii_lowercase().contains("chunked")).unwrap_or(false) {
        loop {
            let mut sz = String::new();
            r.read_line(&mut sz)?;
            let n = usize::from_str_radix(sz.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {:?}", sz)))?;
            if n == 0 {
                // trailers
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(cl) = get("content-length") {
        let n: usize =
            cl.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad content-length {:?}", cl)))?;
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response { status, headers, body })
}

/// One request on a new connection with `Connection: close`.
pub fn http(port: u16, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<Response> {
    http_with(port, method, path, body, &[], HTTP_TIMEOUT)
}

/// `http` with extra headers and a timeout.
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<Response> {
    let req = build_request(method, path, body, true, headers);
    http_raw(port, &req, timeout, method == "HEAD")
}

/// Send raw request bytes on a new connection and read one response (for
/// malformed requests: no Content-Length, bad framing, ...).
pub fn http_raw(port: u16, request: &[u8], timeout: Duration, head: bool) -> io::Result<Response> {
    let mut s = connect(port, timeout)?;
    s.write_all(request)?;
    let mut r = BufReader::new(s);
    read_response(&mut r, head)
}

/// GET that panics on I/O errors.
pub fn get(port: u16, path: &str) -> Response {
    http(port, "GET", path, None).unwrap_or_else(|e| panic!("GET {} on port {}: {}", path, port, e))
}

/// PUT of a JSON value that panics on I/O errors.
pub fn put_json(port: u16, path: &str, v: &Value) -> Response {
    let b = serde_json::to_vec(v).unwrap();
    http(port, "PUT", path, Some(&b)).unwrap_or_else(|e| panic!("PUT {} on port {}: {}", path, port, e))
}

/// DELETE that panics on I/O errors.
pub fn delete(port: u16, path: &str) -> Response {
    http(port, "DELETE", path, None).unwrap_or_else(|e| panic!("DELETE {} on port {}: {}", path, port, e))
}

/// A keep-alive HTTP/1.1 connection. After a response with `Connection: close`
/// (or an error) it is closed; `request` then reconnects only if `reconnect`.
pub struct KeepAlive {
    port: u16,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
    /// Reconnect transparently before a request when the connection is closed.
    pub reconnect: bool,
    /// Number of TCP connections opened so far.
    pub connects: usize,
}

impl KeepAlive {
    pub fn new(port: u16) -> KeepAlive {
        KeepAlive { port, timeout: HTTP_TIMEOUT, conn: None, reconnect: true, connects: 0 }
    }

    pub fn with_timeout(port: u16, timeout: Duration) -> KeepAlive {
        KeepAlive { timeout, ..KeepAlive::new(port) }
    }

    /// A client that never reconnects: once its one connection is closed,
    /// further requests fail (for tests that a connection stays open).
    pub fn one_connection(port: u16) -> KeepAlive {
        KeepAlive { reconnect: false, ..KeepAlive::new(port) }
    }

    /// Whether a connection is open now.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    fn ensure(&mut self) -> io::Result<()> {
        if self.conn.is_none() {
            if self.connects > 0 && !self.reconnect {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "keep-alive connection was closed"));
            }
            self.conn = Some(BufReader::new(connect(self.port, self.timeout)?));
            self.connects += 1;
        }
        Ok(())
    }

    /// One request on the connection (opened if needed).
    pub fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<Response> {
        self.request_with(method, path, body, &[])
    }

    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> io::Result<Response> {
        self.ensure()?;
        let req = build_request(method, path, body, false, headers);
        let res = (|| {
            let c = self.conn.as_mut().unwrap();
            c.get_mut().write_all(&req)?;
            read_response(c, method == "HEAD")
        })();
        match &res {
            Ok(r) if !r.closes() => {}
            _ => self.conn = None,
        }
        res
    }

    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request("GET", path, None)
    }

    /// Send one request without reading its answer (pipelining; read it with
    /// `read`). Opens the connection if needed.
    pub fn send(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<()> {
        let req = build_request(method, path, body, false, &[]);
        self.send_raw(&req)
    }

    /// Send raw bytes (a request of the test's own making, maybe malformed).
    /// Opens the connection if needed; a write error does not close it (an
    /// answer the server sent before closing can still be `read`).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.ensure()?;
        self.conn.as_mut().unwrap().get_mut().write_all(bytes)
    }

    /// Read one answer (to a GET/PUT/... request sent by `send`/`send_raw`).
    /// Unlike `request`, it keeps the connection after `Connection: close`,
    /// so that `closed_within` can check the server really closes it.
    pub fn read(&mut self) -> io::Result<Response> {
        match self.conn.as_mut() {
            Some(c) => read_response(c, false),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "no open connection")),
        }
    }

    /// Whether the server closes the open connection (EOF or reset, with no
    /// further byte) within `timeout`. False when data arrives or the timeout
    /// passes. Panics when no connection is open.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        use std::io::Read;
        let c = self.conn.as_mut().expect("closed_within: no open connection");
        if !c.buffer().is_empty() {
            return false;
        }
        let _ = c.get_ref().set_read_timeout(Some(timeout));
        let mut b = [0u8; 1];
        let closed = match c.get_mut().read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        };
        if closed {
            self.conn = None;
        } else {
            let _ = c.get_ref().set_read_timeout(Some(self.timeout));
        }
        closed
    }

    pub fn close(&mut self) {
        self.conn = None;
    }
}

// ---------------------------------------------------------------------------
// Processes started directly, and the built-in worker run by hand

/// A child process started by a test itself (not through `Master`/`Mongo`),
/// its stdout/stderr in `log`. SIGKILLed and reaped on drop.
pub struct ChildGuard {
    child: Option<Child>,
    pid: i32,
    pub log: PathBuf,
}

impl ChildGuard {
    pub fn new(child: Child, log: impl Into<PathBuf>) -> ChildGuard {
        let pid = child.id() as i32;
        ChildGuard { child: Some(child), pid, log: log.into() }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Wait for the exit at most `timeout` (reaps it); None if it still runs
    /// (or was killed by `kill`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it has not exited yet.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL and reap it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What it wrote to `log` so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Environment a master gives its workers; removed when a test runs the
/// built-in worker by hand.
const WORKER_ENV: [&str; 7] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "ZDRESTART_NOTIFY_FD",
    "ZDRESTART_PROBE",
    "ZDRESTART_CONFIG",
    "ZDRESTART_LOGLEVEL",
];

/// Start `zdrestart-worker -c config` by hand (no master, no LISTEN_FDS),
/// stdout and stderr into `log`, with extra environment. Does not wait.
pub fn spawn_worker(config: &Path, log: &Path, env: &[(&str, &str)]) -> ChildGuard {
    let out = fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {}", log.display(), e));
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(worker_bin());
    cmd.arg("-c").arg(config).stdin(Stdio::null()).stdout(out).stderr(err);
    for k in WORKER_ENV {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard::new(cmd.spawn().expect("spawn zdrestart-worker"), log)
}

/// A built-in worker run by hand by `start_worker`.
pub struct HandWorker {
    pub proc: ChildGuard,
    pub port: u16,
    /// Its config file.
    pub config: PathBuf,
}

/// Run the built-in worker by hand on a free port: config `<dir>/<name>.json`
/// = `{"address": "127.0.0.1", "port": <port>}` plus the keys of `extra` (a
/// JSON object), output in `<dir>/<name>.log`. Waits (15 s at most) until it
/// accepts connections; panics with its output otherwise.
pub fn start_worker(dir: &TestDir, name: &str, extra: Value) -> HandWorker {
    let port = free_port();
    let mut cfg = Map::new();
    cfg.insert("address".into(), json!("127.0.0.1"));
    cfg.insert("port".into(), json!(port));
    for (k, v) in extra.as_object().expect("start_worker: extra must be a JSON object") {
        cfg.insert(k.clone(), v.clone());
    }
    let config = dir.join(format!("{}.json", name));
    fs::write(&config, serde_json::to_vec_pretty(&Value::Object(cfg)).unwrap()).unwrap();
    let mut proc = spawn_worker(&config, &dir.join(format!("{}.log", name)), &[]);
    if !wait_until(Duration::from_secs(15), || port_accepts(port)) {
        let alive = proc.alive();
        panic!("worker {} not listening on {} (alive: {}):\n{}", name, port, alive, proc.output());
    }
    HandWorker { proc, port, config }
}

/// One request to a worker (directly, not through a master) on a new
/// connection; panics on I/O errors and checks `Response::check_worker_headers`.
pub fn worker_request(port: u16, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    let r = http(port, method, path, body).unwrap_or_else(|e| panic!("{} {} on port {}: {}", method, path, port, e));
    r.check_worker_headers();
    r
}

/// Run the built-in worker's probe by hand (`ZDRESTART_PROBE=1`, no report
/// pipe, 60 s at most): exit status, stdout, stderr.
pub fn worker_probe(config: &Path) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(worker_bin());
    cmd.arg("-c").arg(config);
    for k in WORKER_ENV {
        cmd.env_remove(k);
    }
    cmd.env("ZDRESTART_PROBE", "1");
    run_cmd(&mut cmd, Duration::from_secs(60))
}

/// Read one line (without its '\n') byte by byte, so that nothing after it is
/// consumed (e.g. a worker's report pipe). Stops at EOF too.
pub fn read_line_unbuffered(r: &mut impl io::Read) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while r.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

// ---------------------------------------------------------------------------
// Misc

/// Run a command to completion with a timeout (killed after it): status,
/// stdout, stderr. For zdrestartctl, zdrestart --check, bunyan, ...
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String, String) {
    let dir = TestDir::new(&format!("{}-cmd", test_name()));
    let out = dir.join("stdout");
    let err = dir.join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {}", cmd, e));
    let end = Instant::now() + timeout;
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} did not finish within {:?}; stdout:\n{}\nstderr:\n{}",
                cmd,
                timeout,
                fs::read_to_string(&out).unwrap_or_default(),
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (st, fs::read_to_string(&out).unwrap_or_default(), fs::read_to_string(&err).unwrap_or_default())
}

/// The `bunyan` CLI to check logs with: $ZDRESTART_BUNYAN, else
/// <repo>/.npm/node_modules/.bin/bunyan if it exists, else None.
/// When ZDRESTART_BUNYAN is set, it must exist (panics otherwise).
pub fn bunyan_cli() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ZDRESTART_BUNYAN") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "ZDRESTART_BUNYAN={} does not exist", p.display());
        return Some(p);
    }
    let p = repo_root().join(".npm/node_modules/.bin/bunyan");
    if p.exists() {
        Some(p)
    } else {
        None
    }
}
pub mod ops;

//! Helpers for the standalone `zdrestart-worker` tests (tests/worker_http.rs,
//! tests/worker_mongodb.rs): temp dirs, free ports, a worker run by hand, a
//! secantusd test database, and a tiny HTTP/1.1 client.
//!
//! Every process started here is killed by a Drop guard, even when a test
//! panics. Nothing here is shared with the master's harness (tests/common).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const WORKER: &str = env!("CARGO_BIN_EXE_zdrestart-worker");

/// A unique directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "zdw-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Send a signal with kill(1) (no unsafe in tests).
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill").arg(format!("-{}", sig)).arg(pid.to_string()).status().unwrap();
    assert!(st.success(), "kill -{} {} failed", sig, pid);
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Wait for exit at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        let c = self.child.as_mut()?;
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

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start `zdrestart-worker -c config` by hand (no LISTEN_FDS), stdout and
/// stderr into `log`, with extra environment.
pub fn spawn_worker(config: &Path, log: &Path, env: &[(&str, &str)]) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(WORKER);
    cmd.arg("-c").arg(config).stdin(Stdio::null()).stdout(out).stderr(err);
    for k in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "ZDRESTART_NOTIFY_FD", "ZDRESTART_PROBE", "ZDRESTART_CONFIG", "ZDRESTART_LOGLEVEL"] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc { child: Some(cmd.spawn().expect("spawn zdrestart-worker")), log: log.to_path_buf() }
}

/// A worker run by hand on a fresh port with `config` (JSON text without
/// `port`/`address`: added here), ready to serve.
pub struct Worker {
    pub proc: Proc,
    pub port: u16,
}

pub fn start_worker(dir: &TempDir, name: &str, extra: &str) -> Worker {
    let port = free_port();
    let cfg = dir.path(&format!("{}.json", name));
    let extra = extra.trim();
    let sep = if extra.is_empty() { "" } else { "," };
    std::fs::write(&cfg, format!(r#"{{"address": "127.0.0.1", "port": {}{} {}}}"#, port, sep, extra)).unwrap();
    let mut proc = spawn_worker(&cfg, &dir.path(&format!("{}.log", name)), &[]);
    if !wait_port(port, Duration::from_secs(15)) {
        let alive = proc.alive();
        panic!("worker {} not listening on {} (alive: {}):\n{}", name, port, alive, proc.output());
    }
    Worker { proc, port }
}

/// A parsed answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({}): {:?}", e, String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Every answer of the worker carries these.
    pub fn check_common(&self) {
        assert!(self.header("x-worker-pid").is_some_and(|p| p.parse::<u32>().is_ok()), "{:?}", self);
        assert_eq!(self.header("content-type"), Some("application/json"), "{:?}", self);
        assert_eq!(self.header("content-length").map(|l| l.parse::<usize>().unwrap()), Some(self.body.len()));
    }

    pub fn pid(&self) -> u32 {
        self.header("x-worker-pid").unwrap().parse().unwrap()
    }
}

/// One HTTP/1.1 connection (keep-alive).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { stream, buf: Vec::new() }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<()> {
        let mut req = format!("{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n", method, path);
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        self.stream.write_all(&bytes)
    }

    /// Read one answer (Content-Length framing, as the worker always sends).
    pub fn read(&mut self) -> std::io::Result<Resp> {
        let mut chunk = [0u8; 65536];
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before an answer"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = HashMap::new();
        for l in lines.filter(|l| !l.is_empty()) {
            let (k, v) = l.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let len: usize = headers.get("content-length").map(|v| v.parse().unwrap()).unwrap_or(0);
        while self.buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed inside a body"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok(Resp { status, headers, body })
    }

    pub fn req(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
        self.send(method, path, body).unwrap();
        self.read().unwrap()
    }

    /// True when the server closed the connection (EOF) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// One request on a fresh connection.
pub fn request(port: u16, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
    let mut c = Conn::open(port);
    let r = c.req(method, path, body);
    r.check_common();
    r
}

/// The test database: `secantusd-py` on a loopback port, in memory.
pub struct Db {
    pub proc: Proc,
    pub port: u16,
    dir: PathBuf,
}

pub fn secantusd_path() -> PathBuf {
    match std::env::var_os("ZDRESTART_SECANTUSD") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/secantusd-py")),
    }
}

impl Db {
    /// Start on a fresh port. Panics (the test FAILS, it is not skipped) when
    /// the server cannot be started: see README for the venv it needs.
    pub fn start(dir: &TempDir) -> Db {
        Db::start_on(dir, free_port())
    }

    pub fn start_on(dir: &TempDir, port: u16) -> Db {
        let bin = secantusd_path();
        assert!(
            bin.exists(),
            "secantusd-py not found at {} (set ZDRESTART_SECANTUSD, or: python3 -m venv .venv && .venv/bin/pip install secantusdb)",
            bin.display()
        );
        let log = dir.path(&format!("secantusd-{}.log", port));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--storage-path", ":memory:"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {}", bin.display(), e));
        let mut proc = Proc { child: Some(child), log };
        if !wait_port(port, Duration::from_secs(30)) {
            panic!("secantusd-py did not listen on {} (alive: {}):\n{}", port, proc.alive(), proc.output());
        }
        Db { proc, port, dir: dir.0.clone() }
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Kill the server (SIGKILL) and wait until the port refuses connections.
    pub fn kill(&mut self) {
        self.proc.kill();
        let end = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Run a probe (`ZDRESTART_PROBE=1`, no report pipe): exit status and stdout.
pub fn probe(config: &Path) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(WORKER);
    cmd.arg("-c").arg(config).env("ZDRESTART_PROBE", "1").stdin(Stdio::null());
    for k in ["LISTEN_FDS", "LISTEN_PID", "ZDRESTART_NOTIFY_FD", "ZDRESTART_LOGLEVEL"] {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

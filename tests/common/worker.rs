//! Processes a test starts itself (not through a master), above all the
//! built-in worker run by hand, without a master.

use crate::cmd::{run_cmd, scrub_env};
use crate::dirs::TestDir;
use crate::http::{http, http_with, Response};
use crate::paths::worker_bin;
use crate::ports::ReservedPort;
use crate::spawn::spawn;
use crate::wait::wait_until;
use serde_json::{json, Map, Value};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

    /// Start `cmd` (tagged: it dies with the test binary, see
    /// [`crate::spawn`]) and guard it; its output should go to `log`.
    pub fn spawn(cmd: &mut Command, log: impl Into<PathBuf>) -> ChildGuard {
        ChildGuard::new(spawn(cmd), log)
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

/// Start `zdrestart-worker -c config` by hand (no master, no LISTEN_FDS: it
/// binds address:port of its config itself), stdout and stderr into `log`,
/// with extra environment. Does not wait.
pub fn spawn_worker(config: &Path, log: &Path, env: &[(&str, &str)]) -> ChildGuard {
    let out = fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {}", log.display(), e));
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(worker_bin());
    cmd.arg("-c").arg(config).stdin(Stdio::null()).stdout(out).stderr(err);
    scrub_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard::new(spawn(&mut cmd), log)
}

/// Start `zdrestart-worker -c config` by hand on `listener` (a listening
/// socket the test bound), passed as a service manager would: fd 3 with
/// `LISTEN_FDS=1` and `LISTEN_PID` its own pid (sh moves stdin to fd 3 and
/// execs the worker, keeping its pid). Output into `log`. Does not wait.
pub fn spawn_worker_on(listener: OwnedFd, config: &Path, log: &Path, env: &[(&str, &str)]) -> ChildGuard {
    let out = fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {}", log.display(), e));
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec 3<&0 0</dev/null; LISTEN_FDS=1 LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(worker_bin())
        .arg("-c")
        .arg(config)
        .stdin(Stdio::from(listener))
        .stdout(out)
        .stderr(err);
    scrub_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard::new(spawn(&mut cmd), log)
}

/// A built-in worker run by hand by `start_worker`.
pub struct HandWorker {
    pub proc: ChildGuard,
    pub port: u16,
    /// Its config file.
    pub config: PathBuf,
    /// The port, reserved for the worker's life (see [`ReservedPort`]).
    _reserved: ReservedPort,
}

/// Run the built-in worker by hand on a port reserved for it: config
/// `<dir>/<name>.json` = `{"address": "127.0.0.1", "port": <port>}` plus the
/// keys of `extra` (a JSON object), output in `<dir>/<name>.log`. The worker
/// gets its listener bound already (`LISTEN_FDS`), so no other process can
/// take the port first. Waits (15 s at most) until it answers `GET /healthz`;
/// panics with its output otherwise.
pub fn start_worker(dir: &TestDir, name: &str, extra: Value) -> HandWorker {
    start_worker_with_env(dir, name, extra, &[])
}

/// Write `<dir>/<name>.json` for a worker run by hand: `{"address":
/// "127.0.0.1", "port": <port>}` plus the keys of `extra` (a JSON object).
pub fn worker_config(dir: &TestDir, name: &str, port: u16, extra: Value) -> PathBuf {
    let mut cfg = Map::new();
    cfg.insert("address".into(), json!("127.0.0.1"));
    cfg.insert("port".into(), json!(port));
    for (k, v) in extra.as_object().expect("worker_config: extra must be a JSON object") {
        cfg.insert(k.clone(), v.clone());
    }
    let config = dir.join(format!("{}.json", name));
    fs::write(&config, serde_json::to_vec_pretty(&Value::Object(cfg)).unwrap()).unwrap();
    config
}

/// [`start_worker`] with extra environment for the worker.
pub fn start_worker_with_env(dir: &TestDir, name: &str, extra: Value, env: &[(&str, &str)]) -> HandWorker {
    let reserved = ReservedPort::new();
    let port = reserved.port();
    let config = worker_config(dir, name, port, extra);
    let mut proc = spawn_worker_on(reserved.listener(), &config, &dir.join(format!("{}.log", name)), env);
    let serving = wait_until(Duration::from_secs(15), || {
        proc.alive() && matches!(http_with(port, "GET", "/healthz", None, &[], Duration::from_secs(2)), Ok(r) if r.status == 200)
    });
    if !serving {
        let alive = proc.alive();
        panic!("worker {} does not answer on port {} (alive: {}):\n{}", name, port, alive, proc.output());
    }
    HandWorker { proc, port, config, _reserved: reserved }
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
    scrub_env(&mut cmd);
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

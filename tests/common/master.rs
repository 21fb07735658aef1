//! A real `zdrestart` master for a test: its config, its process group, its
//! log, waits on its records, and the guarantee that everything it started
//! dies with the value (and with the test binary: tests/common/spawn.rs).
//!
//! Its port: the master binds its listeners itself (it takes no inherited
//! socket), so the port [`free_port`] picked may be taken by another process
//! before the master binds it. [`MasterBuilder::spawn`] therefore waits until
//! the master either listens on its port or has exited; a master that exited
//! with `bind 127.0.0.1:<port>: Address already in use` while no socket of
//! the test itself holds that port is started again on another port (its
//! first attempt's log and output kept beside, `*.bind-retry-N`).

use crate::bunyan::{event_of, parse_log, worker_pid_of};
use crate::cmd::scrub_env;
use crate::dirs::TestDir;
use crate::http::{get, http, Response};
use crate::paths::{master_bin, test_name};
use crate::ports::{free_port, pid_listens_on};
use crate::procfs::{descendants_of, fd_count, kill, live_children, proc_environ, proc_stat, zombie_children};
use crate::wait::wait_until;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many times a master whose port was taken is started on another one.
const BIND_RETRIES: u32 = 5;

/// The config a test master gets unless overridden: a free port, log file and
/// pidfile in the test dir, 2 workers, memory driver, short timeouts, and no
/// soak (`minReady` 0: a test about the soak sets it, or removes the key for
/// the default).
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
        "minReady": 0,
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

    /// Listen on `port` instead of the free one chosen (e.g. a new master
    /// where one was killed).
    pub fn on_port(mut self, port: u16) -> Self {
        self.port = port;
        self.set("port", port)
    }

    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    pub fn config(&self) -> &Map<String, Value> {
        &self.config
    }

    /// Write the config and start the master. When the config is the
    /// harness's own (no `raw_config`, no `args`, the port it picked), waits
    /// until the master listens on its port or has exited, and starts it
    /// again on another port if that one was taken meanwhile (module doc);
    /// otherwise does not wait for anything.
    pub fn spawn(self) -> Master {
        let config_path = self.dir.join("zdrestart.json");
        match &self.raw_config {
            Some(t) => fs::write(&config_path, t).unwrap(),
            None => fs::write(&config_path, serde_json::to_vec_pretty(&Value::Object(self.config.clone())).unwrap())
                .unwrap(),
        }
        let rebind = self.raw_config.is_none()
            && self.args.is_none()
            && self.config.get("port").and_then(Value::as_u64) == Some(u64::from(self.port))
            && self.config.get("address").and_then(Value::as_str) == Some("127.0.0.1");
        let logfile = self.config.get("logfile").and_then(Value::as_str).map(PathBuf::from);
        let pidfile = self.config.get("pidfile").and_then(Value::as_str).map(PathBuf::from);
        let stdout = self.dir.join("master.stdout");
        let stderr = self.dir.join("master.stderr");
        let args: Vec<String> = match &self.args {
            Some(a) => a.iter().map(|s| s.replace("{config}", &config_path.display().to_string())).collect(),
            None => vec!["-c".into(), config_path.display().to_string()],
        };
        let launch = Launch {
            bin: self.bin.clone().unwrap_or_else(master_bin),
            args,
            cwd: self.dir.path().to_path_buf(),
            env: self.env.clone(),
            env_remove: self.env_remove.clone(),
        };
        let started = Instant::now();
        let child = launch.start(&stdout, &stderr);
        let pid = child.id() as i32;
        let mut m = Master {
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
            launch,
        };
        if rebind {
            m.settle_bind();
        }
        m
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

/// How the harness starts a master's process (again, after a taken port).
struct Launch {
    bin: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
}

impl Launch {
    fn start(&self, stdout: &Path, stderr: &Path) -> Child {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(fs::File::create(stdout).unwrap_or_else(|e| panic!("create {}: {}", stdout.display(), e)))
            .stderr(fs::File::create(stderr).unwrap_or_else(|e| panic!("create {}: {}", stderr.display(), e)))
            .process_group(0);
        scrub_env(&mut cmd);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        crate::spawn::tag(&mut cmd);
        cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {}", self.bin.display(), e))
    }
}

/// Number of distinct workers that reported ready (`worker.ready`) after the
/// latest `master.start` of a log (a log file may hold the records of an
/// earlier master too).
pub fn ready_workers_since_start(recs: &[Value]) -> usize {
    let from = recs.iter().rposition(|r| event_of(r) == "master.start").map_or(recs.len(), |i| i + 1);
    let pids: HashSet<i32> = recs[from..].iter().filter(|r| event_of(r) == "worker.ready").filter_map(worker_pid_of).collect();
    pids.len()
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
    launch: Launch,
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

    /// Stop the master (SIGSTOP) until the returned guard is dropped
    /// (SIGCONT): once this returns it is stopped (state `T`), so it decides
    /// and signals nothing, and its log holds every record it wrote before.
    /// Its workers go on serving. Panics if it is not stopped within 30 s.
    pub fn hold(&self) -> Held {
        self.signal(libc::SIGSTOP);
        let held = Held { pid: self.pid };
        let stopped = wait_until(Duration::from_secs(30), || proc_stat(self.pid).map(|s| s.state) == Some('T'));
        assert!(stopped, "the master ({}) not stopped 30 s after SIGSTOP: {:?}", self.pid, proc_stat(self.pid));
        held
    }

    /// Wait (30 s at most) until the master listens on its port or has
    /// exited; if it exited because another process took the port, start it
    /// again on a new one (module doc).
    fn settle_bind(&mut self) {
        for attempt in 1..=BIND_RETRIES + 1 {
            let end = Instant::now() + Duration::from_secs(30);
            let listening = format!("listening on 127.0.0.1:{}", self.port);
            for round in 0u64.. {
                // Its log says so right after the bind (cheap to read); now
                // and then /proc too (slow on a busy machine, but it does not
                // depend on the log level).
                let logged = self.logfile.is_some()
                    && self.log_records().iter().any(|r| r["component"] == "master" && r["msg"] == listening.as_str());
                if logged || (round % 50 == 49 && pid_listens_on(self.pid, self.port)) {
                    return;
                }
                if self.exited().is_some() {
                    break;
                }
                if Instant::now() >= end {
                    return; // the test's own waits report what is wrong
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let taken = format!("bind 127.0.0.1:{}: Address already in use", self.port);
            let ours = pid_listens_on(std::process::id() as i32, self.port);
            if !self.stderr_text().contains(&taken) || ours || attempt > BIND_RETRIES {
                return;
            }
            eprintln!("port {} was taken before the master bound it: starting it again on another port", self.port);
            self.relaunch_on_a_new_port(attempt);
        }
    }

    fn relaunch_on_a_new_port(&mut self, attempt: u32) {
        self.kill_all();
        let aside = |p: &Path| {
            let mut name = p.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".bind-retry-{}", attempt));
            let _ = fs::rename(p, p.with_file_name(name));
        };
        for p in self.logfile.iter().chain([&self.stdout, &self.stderr]) {
            aside(p);
        }
        self.port = free_port();
        self.config["port"] = json!(self.port);
        let text = serde_json::to_vec_pretty(&self.config).unwrap();
        fs::write(&self.config_path, text).unwrap_or_else(|e| panic!("write {}: {}", self.config_path.display(), e));
        self.status = None;
        self.started = Instant::now();
        let child = self.launch.start(&self.stdout, &self.stderr);
        self.pid = child.id() as i32;
        self.child = Some(child);
    }

    /// Whether the master has exited. It is not reaped here: its pid (and so
    /// its process group id) stays taken by the zombie until the drop has
    /// killed what is left of the group, so that no other process can get
    /// that pid meanwhile and be signalled in its place.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() && self.child.is_some() {
            self.status = exited_not_reaped(self.pid);
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
        self.wait_for(&format!("{} workers ready after the latest master.start", n), timeout, |recs| {
            (ready_workers_since_start(recs) >= n).then_some(())
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

    /// Kill the master and everything it started (SIGKILL), then reap it.
    /// Idempotent. Until it is reaped here its pid cannot be reused (see
    /// `exited`), so the group and the descendants found are its own.
    pub fn kill_all(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let mut pids: HashSet<i32> = descendants_of(self.pid).into_iter().collect();
        {
            let seen = self.seen_workers.lock().unwrap_or_else(|e| e.into_inner());
            // Workers seen earlier that were reparented (e.g. the master was
            // SIGKILLed): only those still in the master's process group,
            // whose id no new process can take while the master is unreaped.
            for &p in seen.iter() {
                if proc_stat(p).is_some_and(|s| s.pgid == self.pid || s.ppid == self.pid) {
                    pids.insert(p);
                }
            }
        }
        kill(-self.pid, libc::SIGKILL);
        for p in pids {
            kill(p, libc::SIGKILL);
        }
        let _ = child.kill();
        if let Ok(st) = child.wait() {
            self.status.get_or_insert(st);
        }
    }
}

use crate::sys::exited_not_reaped;

/// A master held by [`Master::hold`]: SIGCONT when dropped (on a failure too).
pub struct Held {
    pid: i32,
}

impl Drop for Held {
    fn drop(&mut self) {
        kill(self.pid, libc::SIGCONT);
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

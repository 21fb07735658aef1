//! The MongoDB-compatible test server (`secantusd-py`): on a loopback port
//! the harness reserves for it, killed on drop. The MongoDB tests fail,
//! never skip, without it.
//!
//! The port is never free between its choice and the server's bind: the
//! harness holds a [`ReservedPort`] for the value's whole life and hands the
//! server a socket bound to it (tests/common/secantusd-on-fd.py). While the
//! server is stopped the port stays reserved and refuses connections, so
//! [`Mongo::restart`] serves again on the same port with no window in which
//! another process could take it.

use crate::dirs::TestDir;
use crate::paths::{repo_root, test_name};
use crate::ports::{port_accepts, ReservedPort};
use crate::procfs::kill;
use crate::spawn::spawn;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// The Python interpreter of secantusd-py's venv (its `#!` line), which runs
/// the launcher tests/common/secantusd-on-fd.py.
fn secantusd_python() -> PathBuf {
    let bin = secantusd_bin();
    let f = fs::File::open(&bin).unwrap_or_else(|e| panic!("open {}: {}", bin.display(), e));
    let mut first = String::new();
    BufReader::new(f).read_line(&mut first).unwrap_or_else(|e| panic!("read {}: {}", bin.display(), e));
    let python = first.strip_prefix("#!").map(|s| s.trim()).filter(|s| !s.is_empty() && !s.contains(' '));
    let python = python.unwrap_or_else(|| panic!("{}: no `#!<python>` line (got {:?})", bin.display(), first));
    PathBuf::from(python)
}

/// A `secantusd-py` server on a reserved loopback port with in-memory
/// storage. Killed (SIGKILL) on drop.
pub struct Mongo {
    pub port: u16,
    reserved: ReservedPort,
    child: Option<Child>,
    dir: TestDir,
    starts: u32,
}

impl Mongo {
    /// Start a server and wait until it accepts TCP connections (60 s at most:
    /// its Python start-up takes seconds on a loaded machine; panics with its
    /// output otherwise).
    pub fn start() -> Mongo {
        let mut m = Mongo::down();
        m.spawn();
        m
    }

    /// A server that is down: its port reserved (connections refused),
    /// nothing running until [`Mongo::restart`].
    pub fn down() -> Mongo {
        Mongo::on(ReservedPort::new())
    }

    /// `start` on a given port (e.g. one a worker was already pointed at);
    /// panics when another process holds it.
    pub fn start_on(port: u16) -> Mongo {
        let mut m = Mongo::on(ReservedPort::on(port));
        m.spawn();
        m
    }

    fn on(reserved: ReservedPort) -> Mongo {
        let dir = TestDir::new(&format!("{}-mongo", test_name()));
        Mongo { port: reserved.port(), reserved, child: None, dir, starts: 0 }
    }

    fn spawn(&mut self) {
        let python = secantusd_python();
        let launcher = repo_root().join("tests/common/secantusd-on-fd.py");
        self.starts += 1;
        let logpath = self.dir.join(format!("secantusd.{}.log", self.starts));
        let log = fs::File::create(&logpath).expect("create secantusd log");
        let tmp = self.dir.join("tmp");
        let _ = fs::create_dir_all(&tmp);
        let mut cmd = Command::new(&python);
        cmd.arg(&launcher)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--storage-path", ":memory:"])
            .current_dir(self.dir.path())
            .env("TMPDIR", &tmp)
            .stdin(Stdio::from(self.reserved.bound()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        self.child = Some(spawn(&mut cmd));
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            // The port is reserved: whoever accepts on it is this server.
            if port_accepts(self.port) {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // Reaped: its pid is no longer ours to signal on drop.
                self.child = None;
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
                    "secantusd-py did not accept TCP on 127.0.0.1:{} within 60 s; output:\n{}",
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

    /// Kill the server (SIGKILL to its process group) and reap it. The port
    /// stays reserved: connections to it are refused.
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
        self.spawn();
    }
}

impl Drop for Mongo {
    fn drop(&mut self) {
        self.stop();
    }
}

//! The MongoDB-compatible test server (`secantusd-py`): started on a free
//! port, killed on drop. The MongoDB tests fail, never skip, without it.

use crate::dirs::TestDir;
use crate::paths::{repo_root, test_name};
use crate::ports::{free_port, port_accepts, port_is_free};
use crate::procfs::kill;
use crate::wait::wait_until;
use std::fs;
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
        assert!(
            wait_until(Duration::from_secs(10), || port_is_free(self.port)),
            "port {} of the stopped secantusd-py still in use after 10 s",
            self.port
        );
        self.spawn();
    }
}

impl Drop for Mongo {
    fn drop(&mut self) {
        self.stop();
    }
}

//! The gates of the fault workers that wait for the test (tests/fault/):
//! [`ProbeGate`] holds the probe of `probe-held.sh` until the test gives the
//! verdict; [`ReadyGate`] holds the workers of `ready-held.sh` before they
//! report ready. A gate lives in the directory of the master's config file,
//! which the scripts find through `ZDRESTART_CONFIG`. With them a test keeps a
//! restart in flight exactly as long as it needs, with no timeout to race.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File name of the FIFO of `probe-held.sh`, in the config's directory.
pub const PROBE_GATE: &str = "probe-gate.fifo";
/// File name whose existence releases `ready-held.sh`, in the config's directory.
pub const READY_GATE: &str = "ready-gate";

/// The FIFO a `probe-held.sh` probe blocks on. The probe opens it for reading
/// and reads one line: `pass` runs the real probe, anything else is reported
/// as the probe's `ERROR=`.
pub struct ProbeGate {
    path: PathBuf,
}

impl ProbeGate {
    /// Create the FIFO in `dir` (the directory of the master's config file).
    pub fn new(dir: &Path) -> ProbeGate {
        let path = dir.join(PROBE_GATE);
        let _ = std::fs::remove_file(&path);
        crate::sys::mkfifo(&path);
        ProbeGate { path }
    }

    /// Wait (30 s at most) until a held probe has the FIFO open, then give it
    /// `verdict` (`pass`, or the error text the probe reports). Opening the
    /// write side succeeds only once a reader is there: that is the proof that
    /// the probe runs and waits.
    pub fn release(&self, verdict: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        let mut f = loop {
            match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&self.path) {
                Ok(f) => break f,
                // ENXIO: no reader yet.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("no probe waiting on {} within 30 s: {}", self.path.display(), e),
            }
        };
        match f.write_all(format!("{}\n", verdict).as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => panic!("the held probe went away before its verdict"),
            Err(e) => panic!("write {}: {}", self.path.display(), e),
        }
    }
}

/// The gate of `ready-held.sh` workers: while closed they start and wait,
/// reporting nothing; once open, every waiting (and every later) worker goes
/// on as the real worker and reports ready.
pub struct ReadyGate {
    path: PathBuf,
}

impl ReadyGate {
    /// A closed gate in `dir` (the directory of the master's config file).
    pub fn new(dir: &Path) -> ReadyGate {
        let g = ReadyGate { path: dir.join(READY_GATE) };
        g.close();
        g
    }

    pub fn open(&self) {
        std::fs::write(&self.path, b"open\n").unwrap_or_else(|e| panic!("create {}: {}", self.path.display(), e));
    }

    /// Let only the worker of this index (`ZDRESTART_WORKER`) go on.
    pub fn open_worker(&self, index: u32) {
        let p = self.worker_path(index);
        std::fs::write(&p, b"open\n").unwrap_or_else(|e| panic!("create {}: {}", p.display(), e));
    }

    fn worker_path(&self, index: u32) -> PathBuf {
        let mut name = self.path.file_name().unwrap().to_os_string();
        name.push(format!(".{}", index));
        self.path.with_file_name(name)
    }

    /// Close the gate (and every per-worker gate of indexes below 1024).
    pub fn close(&self) {
        let paths = std::iter::once(self.path.clone()).chain((0..1024).map(|i| self.worker_path(i)));
        for p in paths {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => panic!("remove {}: {}", p.display(), e),
            }
        }
    }
}

/// The tickets of `ready-ticket.sh` workers: each lets one waiting (or
/// later) worker go on as the real worker and report ready; the others wait.
pub struct ReadyTickets {
    dir: PathBuf,
    issued: u32,
}

impl ReadyTickets {
    /// No ticket yet, in `dir` (the directory of the master's config file).
    pub fn new(dir: &Path) -> ReadyTickets {
        let dir = dir.join("ready-tickets");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {}", dir.display(), e));
        ReadyTickets { dir, issued: 0 }
    }

    /// Let `n` more workers through.
    pub fn issue(&mut self, n: u32) {
        for _ in 0..n {
            self.issued += 1;
            // Written aside, then renamed in: a worker never takes a ticket
            // half made.
            let tmp = self.dir.join(format!("new.{}", self.issued));
            std::fs::write(&tmp, b"go\n").unwrap_or_else(|e| panic!("create {}: {}", tmp.display(), e));
            let t = self.dir.join(format!("ticket.{}", self.issued));
            std::fs::rename(&tmp, &t).unwrap_or_else(|e| panic!("rename to {}: {}", t.display(), e));
        }
    }
}

impl crate::master::Master {
    /// Hold the probe of the next restart until the test gives its verdict:
    /// the config's worker becomes `probe-held.sh` (with `probeTimeout` one
    /// hour, so that only the test ends the probe). Returns the gate.
    pub fn hold_probes(&mut self) -> ProbeGate {
        let gate = ProbeGate::new(self.dir.path());
        self.rewrite_config(|c| {
            c.insert("worker".into(), crate::paths::fault_worker_json("probe-held.sh"));
            c.insert("probeTimeout".into(), serde_json::json!(3600));
        });
        gate
    }

    /// Hold the new workers of the next restart before they report ready,
    /// until the test opens the gate: the config's worker becomes
    /// `ready-held.sh` (with `readyTimeout` one hour). Returns the closed gate.
    pub fn hold_new_workers(&mut self) -> ReadyGate {
        let gate = ReadyGate::new(self.dir.path());
        self.rewrite_config(|c| {
            c.insert("worker".into(), crate::paths::fault_worker_json("ready-held.sh"));
            c.insert("readyTimeout".into(), serde_json::json!(3600));
        });
        gate
    }

    /// Let the new workers of the next restart report ready one ticket at a
    /// time: the config's worker becomes `ready-ticket.sh` (with
    /// `readyTimeout` one hour). Returns the tickets, none issued.
    pub fn ticket_new_workers(&mut self) -> ReadyTickets {
        let tickets = ReadyTickets::new(self.dir.path());
        self.rewrite_config(|c| {
            c.insert("worker".into(), crate::paths::fault_worker_json("ready-ticket.sh"));
            c.insert("readyTimeout".into(), serde_json::json!(3600));
        });
        tickets
    }
}

//! The one client of the control socket that the tests use: raw protocol
//! lines on a `UnixStream` (pump.io-compatible, byte for byte), and
//! `zdrestartctl` run as a process. Must not interpret answers beyond
//! framing: the tests assert on them.

use crate::cmd::{run_cmd, scrub_env};
use crate::paths::ctl_bin;
use serde_json::Value;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Read and write timeout of the control clients: long enough for a loaded
/// machine, short enough that a master that never answers fails the test.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to the control socket with the client timeouts set.
pub fn control_connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {}", sock.display(), e));
    s.set_read_timeout(Some(CONTROL_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(CONTROL_TIMEOUT)).unwrap();
    s
}

/// One raw client of the control socket: lines out, lines in.
pub struct ControlClient {
    r: BufReader<UnixStream>,
}

impl ControlClient {
    pub fn connect(sock: &Path) -> ControlClient {
        ControlClient { r: BufReader::new(control_connect(sock)) }
    }

    /// Send bytes as they are; panics on an error.
    pub fn send(&mut self, bytes: &str) {
        self.try_send(bytes).unwrap_or_else(|e| panic!("send {:?}: {}", bytes, e));
    }

    /// Send bytes; an error is returned (a refused client may be closed
    /// already, and its answer is still readable).
    pub fn try_send(&mut self, bytes: &str) -> io::Result<()> {
        self.r.get_mut().write_all(bytes.as_bytes())
    }

    /// One answer line, exactly as sent (with its `\n`); panics at EOF, on a
    /// timeout, or when the line does not end with `\n` alone.
    pub fn line_raw(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap_or_else(|e| panic!("read answer: {}", e));
        assert!(l.ends_with('\n'), "answer not terminated by a newline (EOF?): {:?}", l);
        assert!(!l.ends_with("\r\n"), "pump.io answers end with \\n only: {:?}", l);
        l
    }

    /// One answer line without its `\n`.
    pub fn line(&mut self) -> String {
        let l = self.line_raw();
        l[..l.len() - 1].to_string()
    }

    /// Send one command and read its answer.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{}\n", line));
        self.line()
    }

    /// Send one command and read its answer exactly as sent, `\n` included.
    pub fn cmd_raw(&mut self, line: &str) -> String {
        self.send(&format!("{}\n", line));
        self.line_raw()
    }

    /// Whether the master closed this connection (EOF or reset) within
    /// `wait`, with no answer before it (an answer panics).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.r.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut l = String::new();
        let r = match self.r.read_line(&mut l) {
            Ok(0) => true,
            Ok(_) => panic!("unexpected answer {:?}", l),
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        };
        self.r.get_ref().set_read_timeout(Some(CONTROL_TIMEOUT)).unwrap();
        r
    }

    /// Whether the master has closed this connection already (EOF or reset
    /// waiting in the socket), without waiting: for "not closed" after a
    /// later answer proved that the master did what would have closed it.
    /// Panics when an answer is waiting.
    pub fn closed_now(&mut self) -> bool {
        if !self.r.buffer().is_empty() {
            panic!("unexpected answer {:?}", String::from_utf8_lossy(self.r.buffer()));
        }
        match crate::sys::peek_byte(self.r.get_ref().as_raw_fd()) {
            Ok(0) => true,
            Ok(_) => panic!("unexpected answer waiting on the control connection"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    }

    /// The socket (e.g. to check without waiting whether it was closed).
    pub fn stream(&self) -> &UnixStream {
        self.r.get_ref()
    }
}

/// One command on a fresh connection: its answer without the `\n`. The
/// command is sent best effort (a refused client may be closed before it
/// is sent; the answer waiting in the socket is still read).
pub fn ask(sock: &Path, line: &str) -> String {
    let mut c = ControlClient::connect(sock);
    let _ = c.try_send(&format!("{}\n", line));
    c.line()
}

/// One command on a fresh connection: its answer exactly as sent, `\n`
/// included (for the byte-exact pump.socket(7) checks).
pub fn ask_raw(sock: &Path, line: &str) -> String {
    ControlClient::connect(sock).cmd_raw(line)
}

/// STATUS as JSON (asserts the `ACK ` prefix).
pub fn status(sock: &Path) -> Value {
    let a = ask(sock, "STATUS");
    let j = a.strip_prefix("ACK ").unwrap_or_else(|| panic!("STATUS answered {:?}", a));
    serde_json::from_str(j).unwrap_or_else(|e| panic!("STATUS JSON: {}: {}", e, j))
}

/// What `zdrestartctl` did: exit code and output. The steps that `--wait`
/// prints before its outcome when stdout is not a terminal (`[  0.115 s]
/// ...` lines) are in `steps`; `out` is the rest of stdout (the outcome).
pub struct Ctl {
    pub code: i32,
    pub out: String,
    pub err: String,
    pub steps: Vec<String>,
}

/// A step line of `zdrestartctl ... --wait` (zdrestartctl(8)).
pub fn is_step_line(l: &str) -> bool {
    l.starts_with('[') && l.split_once(" s] ").is_some_and(|(t, _)| t[1..].trim().parse::<f64>().is_ok())
}

/// Split stdout into its step lines and the rest.
pub fn split_steps(stdout: &str) -> (Vec<String>, String) {
    let (steps, rest): (Vec<&str>, Vec<&str>) = stdout.split_inclusive('\n').partition(|l| is_step_line(l));
    (steps.iter().map(|l| l.trim_end_matches('\n').to_string()).collect(), rest.concat())
}

impl Ctl {
    /// (exit code, stdout, stderr), for comparing all three at once.
    pub fn parts(self) -> (i32, String, String) {
        (self.code, self.out, self.err)
    }
}

impl std::fmt::Debug for Ctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: String = self.steps.iter().map(|s| format!("{}\n", s)).collect();
        write!(f, "exit {}\n--- steps:\n{}--- stdout:\n{}--- stderr:\n{}", self.code, steps, self.out, self.err)
    }
}

/// Run `zdrestartctl -s SOCK ARGS...` (no default config is read with -s).
pub fn ctl(sock: &Path, args: &[&str]) -> Ctl {
    let mut all: Vec<String> = vec!["-s".into(), sock.display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    ctl_raw(&all.iter().map(|s| s.as_str()).collect::<Vec<_>>())
}

/// Run `zdrestartctl ARGS...` (60 s at most) without `ZDRESTART_CONFIG`
/// (or any other of the programs' variables) from the caller's environment.
pub fn ctl_raw(args: &[&str]) -> Ctl {
    let mut cmd = Command::new(ctl_bin());
    cmd.args(args);
    scrub_env(&mut cmd);
    let (st, out, err) = run_cmd(&mut cmd, Duration::from_secs(60));
    let (steps, out) = split_steps(&out);
    Ctl { code: st.code().unwrap_or_else(|| panic!("zdrestartctl killed by a signal: {:?}", st)), out, err, steps }
}

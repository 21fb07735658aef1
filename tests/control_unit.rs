//! Socket-level tests of `zdrestart::control::ControlServer` alone: a small
//! poll loop in a thread stands in for the master and answers commands.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use zdrestart::control::{self, Command, ControlServer, Limits};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "zdctl-test-{}-{}-{}",
            name,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("ctl.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
struct Stats {
    clients: AtomicUsize,
    max_queued: AtomicUsize,
    restarts: AtomicUsize,
    loops: AtomicUsize,
    /// Answers to RESTART and to RESTART WAIT (defaults: ACK, ACK complete).
    answers: std::sync::Mutex<Option<(String, String)>>,
}

impl Stats {
    fn answers(&self) -> (String, String) {
        self.answers.lock().unwrap().clone().unwrap_or_else(|| ("ACK".into(), "ACK complete".into()))
    }
}

/// The stand-in master: answers CMDS, VERSION, STATUS (a 4 KiB line), RESTART,
/// RESTART WAIT (after `wait_delay`), LOGLEVEL, unknown and bad commands.
struct Harness {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    handle: Option<JoinHandle<ControlServer>>,
}

const STATUS_PAD: usize = 4000;

impl Harness {
    fn start(path: &Path, limits: Limits, wait_delay: Duration) -> Harness {
        let server = ControlServer::bind_with(path, limits).expect("bind");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let handle = thread::spawn(move || run(server, stop2, stats2, wait_delay));
        Harness { path: path.to_path_buf(), stop, stats, handle: Some(handle) }
    }

    fn finish(mut self) -> ControlServer {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().expect("server thread panicked")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(mut server: ControlServer, stop: Arc<AtomicBool>, stats: Arc<Stats>, wait_delay: Duration) -> ControlServer {
    let mut waits: Vec<(control::ClientId, Instant)> = Vec::new();
    let mut fds = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        fds.clear();
        server.poll_fds(&mut fds);
        let mut pfds: Vec<libc::pollfd> =
            fds.iter().map(|&(fd, ev)| libc::pollfd { fd, events: ev, revents: 0 }).collect();
        // SAFETY: pfds is a valid, exclusively borrowed array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 10) };
        assert!(n >= 0 || std::io::Error::last_os_error().kind() == ErrorKind::Interrupted);
        let now = Instant::now();
        for p in &pfds {
            if p.revents == 0 {
                continue;
            }
            for (client, cmd) in server.on_ready(p.fd, p.revents, now) {
                match cmd {
                    Command::Cmds => server.reply(client, &control::cmds_answer()),
                    Command::Version => server.reply(client, "ACK test-version"),
                    Command::Status => server.reply(client, &format!("ACK {{\"pad\":\"{}\"}}", "x".repeat(STATUS_PAD))),
                    Command::Restart { wait: false } => {
                        stats.restarts.fetch_add(1, Ordering::SeqCst);
                        server.reply(client, &stats.answers().0)
                    }
                    Command::Restart { wait: true } => {
                        stats.restarts.fetch_add(1, Ordering::SeqCst);
                        server.set_waiting(client, true);
                        waits.push((client, now + wait_delay));
                    }
                    Command::LogLevel(_) | Command::LogLevelRestore => server.reply(client, "ACK"),
                    Command::Unknown(_) => server.reply(client, &control::nack(control::NACK_UNKNOWN)),
                    Command::Bad(r) => server.reply(client, &control::nack(&r)),
                }
            }
        }
        let now = Instant::now();
        waits.retain(|&(client, at)| {
            if now >= at {
                server.reply(client, &stats.answers().1);
                false
            } else {
                true
            }
        });
        server.expire(now);
        stats.clients.store(server.client_count(), Ordering::SeqCst);
        stats.max_queued.fetch_max(server.queued_bytes(), Ordering::SeqCst);
        stats.loops.fetch_add(1, Ordering::SeqCst);
    }
    server
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One answer line, with its terminator.
fn read_line(r: &mut BufReader<UnixStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).expect("read answer");
    l
}

fn ask(path: &Path, cmd: &str) -> String {
    let s = connect(path);
    // A refused client may be closed already: the answer is still readable.
    let _ = (&s).write_all(cmd.as_bytes());
    let mut r = BufReader::new(s);
    read_line(&mut r)
}

/// Wait until `f` holds (or fail after `secs`).
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for: {}", what);
}

/// Reads until EOF (true) or an error/timeout (false).
fn reaches_eof(r: &mut impl Read) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn default_harness(dir: &TempDir) -> Harness {
    Harness::start(&dir.sock(), Limits::default(), Duration::from_millis(300))
}

#[test]
fn socket_is_mode_0600_and_removed_by_close() {
    let dir = TempDir::new("mode");
    let server = ControlServer::bind(&dir.sock()).unwrap();
    let m = std::fs::symlink_metadata(dir.sock()).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o7777, 0o600, "mode {:o}", m.mode());
    // Nothing else left in the directory (the private bind directory is gone).
    let names: Vec<_> = std::fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ctl.sock")]);
    assert!(UnixStream::connect(dir.sock()).is_ok());
    server.close();
    assert!(std::fs::symlink_metadata(dir.sock()).is_err(), "close removes the socket file");
}

#[test]
fn drop_keeps_the_file_and_close_leaves_a_foreign_file_alone() {
    let dir = TempDir::new("drop");
    let server = ControlServer::bind(&dir.sock()).unwrap();
    drop(server);
    assert!(std::fs::symlink_metadata(dir.sock()).is_ok(), "drop does not remove the file");
    // The file is now stale: a new bind replaces it; if someone replaced
    // ours meanwhile, close must not remove theirs.
    let server = ControlServer::bind(&dir.sock()).unwrap();
    std::fs::remove_file(dir.sock()).unwrap();
    std::fs::write(dir.sock(), b"not ours").unwrap();
    server.close();
    assert_eq!(std::fs::read(dir.sock()).unwrap(), b"not ours");
}

#[test]
fn stale_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let l = UnixListener::bind(dir.sock()).unwrap();
    drop(l); // the file stays, nobody listens: a dead master's socket
    assert!(UnixStream::connect(dir.sock()).is_err());
    let h = default_harness(&dir);
    assert_eq!(ask(&h.path, "VERSION\n"), "ACK test-version\n");
    let m = std::fs::symlink_metadata(dir.sock()).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
}

#[test]
fn live_socket_is_never_stolen() {
    let dir = TempDir::new("live");
    let h = default_harness(&dir);
    let ino = std::fs::symlink_metadata(dir.sock()).unwrap().ino();
    let err = ControlServer::bind(&dir.sock()).err().expect("second bind must fail");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    let msg = err.to_string();
    assert!(msg.contains("in use by a running master") && msg.contains("ctl.sock"), "{}", msg);
    assert_eq!(std::fs::symlink_metadata(dir.sock()).unwrap().ino(), ino);
    assert_eq!(ask(&h.path, "VERSION\n"), "ACK test-version\n", "the first server still answers");
}

#[test]
fn not_a_socket_is_refused_and_left_alone() {
    let dir = TempDir::new("notsock");
    std::fs::write(dir.sock(), b"data").unwrap();
    let err = ControlServer::bind(&dir.sock()).err().expect("must fail");
    assert!(err.to_string().contains("not a socket"), "{}", err);
    assert_eq!(std::fs::read(dir.sock()).unwrap(), b"data");
    // A missing directory is an error naming the path.
    let err = ControlServer::bind(&dir.0.join("nope/ctl.sock")).err().expect("must fail");
    assert!(err.to_string().contains("nope"), "{}", err);
}

#[test]
fn pump_io_compatible_answers() {
    let dir = TempDir::new("proto");
    let h = default_harness(&dir);
    assert_eq!(ask(&h.path, "CMDS\n"), "ACK CMDS VERSION LOGLEVEL STATUS RESTART\n");
    assert_eq!(ask(&h.path, "version\r\n"), "ACK test-version\n");
    assert_eq!(ask(&h.path, "FROB\n"), "NACK unknown\n");
    assert_eq!(ask(&h.path, "LOGLEVEL loud\n"), "NACK invalid loglevel\n");
    assert_eq!(ask(&h.path, "RESTART\n"), "ACK\n");

    // Pipelining, blank lines, mixed case: answers in order, one per command.
    {
        let s = connect(&h.path);
        (&s).write_all(b"\n  \nCmds\nloglevel debug\nLOGLEVEL restore\nbogus arg\nVERSION\n").unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(read_line(&mut r), "ACK CMDS VERSION LOGLEVEL STATUS RESTART\n");
        assert_eq!(read_line(&mut r), "ACK\n");
        assert_eq!(read_line(&mut r), "ACK\n");
        assert_eq!(read_line(&mut r), "NACK unknown\n");
        assert_eq!(read_line(&mut r), "ACK test-version\n");
    }

    // `printf VERSION | nc -U sock`: no final newline, then EOF: answered,
    // then the server closes.
    let s = connect(&h.path);
    (&s).write_all(b"VERSION").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_line(&mut r), "ACK test-version\n");
    assert!(reaches_eof(&mut r));
    drop(r);

    // Fire and forget: the command is carried out even if the client is gone.
    let before = h.stats.restarts.load(Ordering::SeqCst);
    {
        let s = connect(&h.path);
        (&s).write_all(b"RESTART\n").unwrap();
    }
    eventually(5, "RESTART from a closed client", || h.stats.restarts.load(Ordering::SeqCst) > before);
    eventually(5, "no clients left", || h.stats.clients.load(Ordering::SeqCst) == 0);
}

#[test]
fn restart_wait_answers_in_order_and_does_not_time_out() {
    let dir = TempDir::new("wait");
    let limits = Limits { idle_timeout: Duration::from_millis(200), ..Limits::default() };
    let h = Harness::start(&dir.sock(), limits, Duration::from_millis(800));
    let s = connect(&h.path);
    let t0 = Instant::now();
    (&s).write_all(b"RESTART WAIT\nVERSION\n").unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_line(&mut r), "ACK complete\n");
    assert!(t0.elapsed() >= Duration::from_millis(700), "answered when the restart ended");
    assert_eq!(read_line(&mut r), "ACK test-version\n", "the next command is answered after it");
    // Now idle: closed after the idle timeout.
    assert!(reaches_eof(&mut r));
    eventually(5, "no clients left", || h.stats.clients.load(Ordering::SeqCst) == 0);
}

#[test]
fn idle_clients_time_out() {
    let dir = TempDir::new("idle");
    let limits = Limits { idle_timeout: Duration::from_millis(300), ..Limits::default() };
    let h = Harness::start(&dir.sock(), limits, Duration::from_millis(10));
    let s = connect(&h.path);
    let t0 = Instant::now();
    let mut r = BufReader::new(s);
    assert!(reaches_eof(&mut r));
    assert!(t0.elapsed() >= Duration::from_millis(250));
    eventually(5, "no clients left", || h.stats.clients.load(Ordering::SeqCst) == 0);
}

#[test]
fn line_too_long_is_refused_and_never_blocks() {
    let dir = TempDir::new("long");
    let h = default_harness(&dir);
    let s = connect(&h.path);
    let writer = {
        let s = s.try_clone().unwrap();
        thread::spawn(move || {
            // 1 MiB without a newline: the server stops reading and closes.
            let chunk = vec![b'A'; 64 * 1024];
            for _ in 0..16 {
                if (&s).write_all(&chunk).is_err() {
                    return;
                }
            }
        })
    };
    let mut r = BufReader::new(s);
    assert_eq!(read_line(&mut r), "NACK line too long\n");
    assert!(reaches_eof(&mut r));
    writer.join().unwrap();
    // Meanwhile and after, other clients are served.
    assert_eq!(ask(&h.path, "VERSION\n"), "ACK test-version\n");

    // Commands before a too-long line are answered first, in order.
    let s = connect(&h.path);
    let mut msg = b"VERSION\n".to_vec();
    msg.extend(vec![b'B'; control::MAX_LINE + 10]);
    msg.push(b'\n');
    msg.extend_from_slice(b"VERSION\n");
    let w = {
        let s = s.try_clone().unwrap();
        thread::spawn(move || {
            let _ = (&s).write_all(&msg);
        })
    };
    let mut r = BufReader::new(s);
    assert_eq!(read_line(&mut r), "ACK test-version\n");
    assert_eq!(read_line(&mut r), "NACK line too long\n");
    assert!(reaches_eof(&mut r));
    w.join().unwrap();
    // A line of exactly MAX_LINE bytes is fine.
    let mut line = "VERSION".to_string();
    line.push_str(&" ".repeat(control::MAX_LINE - line.len()));
    line.push('\n');
    assert_eq!(ask(&h.path, &line), "ACK test-version\n");
}

#[test]
fn too_many_clients() {
    let dir = TempDir::new("many");
    let limits = Limits { max_clients: 4, ..Limits::default() };
    let h = Harness::start(&dir.sock(), limits, Duration::from_millis(10));
    let mut kept = Vec::new();
    for _ in 0..4 {
        let s = connect(&h.path);
        (&s).write_all(b"VERSION\n").unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(read_line(&mut r), "ACK test-version\n");
        kept.push(r);
    }
    let s = connect(&h.path);
    let mut r = BufReader::new(s);
    assert_eq!(read_line(&mut r), "NACK too many clients\n");
    assert!(reaches_eof(&mut r));
    assert_eq!(h.stats.clients.load(Ordering::SeqCst), 4);
    // One leaves: room again.
    drop(kept.pop());
    eventually(5, "a slot frees", || h.stats.clients.load(Ordering::SeqCst) == 3);
    assert_eq!(ask(&h.path, "VERSION\n"), "ACK test-version\n");
}

#[test]
fn hundreds_of_idle_clients_do_not_block_the_master() {
    let dir = TempDir::new("flood");
    let h = default_harness(&dir);
    let idle: Vec<UnixStream> = (0..150).map(|_| connect(&h.path)).collect();
    eventually(5, "64 clients kept", || h.stats.clients.load(Ordering::SeqCst) == control::MAX_CLIENTS);
    // The 64 idle ones fill the table: a new client is refused at once, not hung.
    let t0 = Instant::now();
    let reply = ask(&h.path, "VERSION\n");
    assert!(reply == "NACK too many clients\n", "{:?}", reply);
    assert!(t0.elapsed() < Duration::from_secs(2));
    drop(idle);
    eventually(5, "all gone", || h.stats.clients.load(Ordering::SeqCst) == 0);
    assert_eq!(ask(&h.path, "VERSION\n"), "ACK test-version\n");
}

#[test]
fn a_client_that_never_reads_stays_bounded() {
    let dir = TempDir::new("noread");
    let h = default_harness(&dir);
    let hog = connect(&h.path);
    hog.set_nonblocking(true).unwrap();
    // Flood STATUS (4 KiB answers each) for a while, never reading.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut sent = 0usize;
    let mut last_check = Instant::now();
    let req = b"STATUS\n".repeat(512);
    while Instant::now() < deadline {
        match (&hog).write(&req) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(_) => break, // dropped by the server: fine
        }
        if last_check.elapsed() > Duration::from_millis(300) {
            // The master still answers others promptly.
            let t0 = Instant::now();
            assert_eq!(ask(&h.path, "VERSION\n"), "ACK test-version\n");
            assert!(t0.elapsed() < Duration::from_secs(1));
            last_check = Instant::now();
        }
    }
    assert!(sent > 0);
    let max_q = h.stats.max_queued.load(Ordering::SeqCst);
    assert!(max_q <= control::MAX_OUTPUT, "queued {} bytes", max_q);
    let server = h.finish();
    assert!(server.queued_bytes() <= control::MAX_OUTPUT);
    server.close();
}

// ---- zdrestartctl against the stand-in master ----------------------------

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zdrestartctl"))
        .args(args)
        .env_remove("ZDRESTART_CONFIG")
        .output()
        .expect("run zdrestartctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn zdrestartctl_exit_codes_and_messages() {
    let dir = TempDir::new("ctl");
    let h = Harness::start(&dir.sock(), Limits::default(), Duration::from_millis(300));
    let sock = dir.sock().to_string_lossy().into_owned();
    let s = sock.as_str();

    assert_eq!(ctl(&["-s", s, "version"]), (0, "test-version\n".into(), String::new()));
    assert_eq!(ctl(&["-s", s, "cmds"]).1, "CMDS VERSION LOGLEVEL STATUS RESTART\n");
    assert_eq!(ctl(&["-s", s, "loglevel", "debug"]).0, 0);

    let (code, out, err) = ctl(&["-s", s, "restart", "--wait"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "zero-downtime restart complete\n", ""));
    assert_eq!(ctl(&["-s", s, "restart"]).0, 0);

    *h.stats.answers.lock().unwrap() =
        Some(("NACK bad driver".into(), "NACK aborted: new worker 1234 exited with status 1".into()));
    let (code, out, err) = ctl(&["-s", s, "restart"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.starts_with("zdrestartctl: restart refused: bad driver: "), "{}", err);
    assert!(err.contains("mongodb"), "{}", err);
    let (code, _, err) = ctl(&["-s", s, "restart", "--wait"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("zdrestartctl: restart failed: aborted: new worker 1234 exited with status 1"), "{}", err);
    assert!(err.contains("restart the master as soon as possible"), "{}", err);

    // STATUS: --json prints the data as is; the stand-in's JSON is not the
    // master's shape, but renders with placeholders.
    let (code, out, _) = ctl(&["-s", s, "status", "--json"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("{\"pad\":\"xxx") && out.ends_with("\"}\n"));
    let (code, out, _) = ctl(&["-s", s, "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("state:         -") && out.contains("workers:       0"), "{}", out);

    // Timeout: no answer within -t seconds is exit 2 and says so.
    *h.stats.answers.lock().unwrap() = None;
    let (code, _, err) = ctl(&["-s", s, "-t", "0.1", "restart", "--wait"]);
    assert_eq!(code, 2);
    assert!(err.contains("no answer within 0.1 s") && err.contains("zdrestartctl status"), "{}", err);

    // The socket named by controlSocket in the config given with -c.
    let cfg = dir.0.join("z.json");
    std::fs::write(&cfg, format!("{{\"controlSocket\": \"{}\"}}", s)).unwrap();
    assert_eq!(ctl(&["-c", cfg.to_str().unwrap(), "version"]).0, 0);
    // An explicit config that does not exist is an error.
    let (code, _, err) = ctl(&["-c", dir.0.join("missing.json").to_str().unwrap(), "version"]);
    assert_eq!(code, 2);
    assert!(err.contains("missing.json"), "{}", err);

    // Connection and usage errors: exit 2, naming the socket and the cause.
    let missing = dir.0.join("none.sock");
    let (code, _, err) = ctl(&["-s", missing.to_str().unwrap(), "status"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        format!(
            "zdrestartctl: connect {}: No such file or directory (is the master running with controlSocket set?)\n",
            missing.display()
        )
    );
    assert_eq!(ctl(&["-s", s, "frobnicate"]).0, 2);
    assert_eq!(ctl(&["-s", s, "loglevel", "loud"]).0, 2);
    let (code, out, _) = ctl(&["--help"]);
    assert!(code == 0 && out.contains("restart [--wait]"));
}

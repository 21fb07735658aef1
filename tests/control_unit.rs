//! Socket-level tests of `zdrestart::control::ControlServer` alone: a small
//! poll loop in a thread stands in for the master and answers commands.
#![deny(unsafe_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

mod common;

use common::{ask, control_connect, ctl_raw, TestDir};
use zdrestart::control::{self, Command, ControlServer, Limits};

#[derive(Default)]
struct Stats {
    clients: AtomicUsize,
    max_queued: AtomicUsize,
    restarts: AtomicUsize,
    loops: AtomicUsize,
    /// Answers to RESTART and to RESTART WAIT (defaults: ACK, ACK complete).
    answers: std::sync::Mutex<Option<(String, String)>>,
    /// Answer every waiting RESTART WAIT now, whatever its delay (a test
    /// that holds the restarts with a long delay ends them with this).
    release: AtomicBool,
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
        if let Err(e) = common::sys::poll(&mut pfds, 10) {
            assert_eq!(e.kind(), ErrorKind::Interrupted, "poll: {}", e);
        }
        let now = Instant::now();
        for p in &pfds {
            if p.revents == 0 {
                continue;
            }
            for (client, cmd) in server.on_ready(p.fd, p.revents, now) {
                // The queue peaks right after an answer is queued (a client
                // that overflows it is dropped inside the next reply).
                stats.max_queued.fetch_max(server.queued_bytes(), Ordering::SeqCst);
                match cmd {
                    Command::Cmds => server.reply(client, &control::cmds_answer()),
                    Command::Version => server.reply(client, "ACK test-version"),
                    Command::Status => server.reply(client, &format!("ACK {{\"pad\":\"{}\"}}", "x".repeat(STATUS_PAD))),
                    Command::Restart { wait: false, .. } => {
                        stats.restarts.fetch_add(1, Ordering::SeqCst);
                        server.reply(client, &stats.answers().0)
                    }
                    Command::Restart { wait: true, .. } => {
                        stats.restarts.fetch_add(1, Ordering::SeqCst);
                        waits.push((client, now + wait_delay));
                    }
                    Command::LogLevel(_) | Command::LogLevelRestore => server.reply(client, "ACK"),
                    Command::Unknown(_) => server.reply(client, &control::nack(control::NACK_UNKNOWN)),
                    Command::Bad { nack, .. } => server.reply(client, &control::nack(nack)),
                    Command::Upgrade { .. } => server.reply(client, "NACK upgrade not possible: test server"),
                    Command::Promote { .. } | Command::Rollback => server.reply(client, "NACK no canary: test server"),
                }
                stats.max_queued.fetch_max(server.queued_bytes(), Ordering::SeqCst);
            }
        }
        let now = Instant::now();
        waits.retain(|&(client, at)| {
            if now >= at || stats.release.load(Ordering::SeqCst) {
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

/// One answer line, with its terminator.
fn read_line(r: &mut BufReader<UnixStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).expect("read answer");
    l
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

/// Wait until the monotonic clock has moved on from now. The stand-in
/// master runs in this process on the same clock and stamps a client's
/// activity (a command read, an answer written) before the client can see
/// its answer; so after this, the next activity of any client is stamped
/// strictly later than every activity before. No fixed time is waited.
fn clock_moves_on() {
    let t = Instant::now();
    while Instant::now() <= t {
        std::hint::spin_loop();
    }
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

fn default_harness(dir: &TestDir) -> Harness {
    Harness::start(&dir.join("ctl.sock"), Limits::default(), Duration::from_millis(300))
}

#[test]
fn socket_is_mode_0600_and_removed_by_close() {
    let dir = TestDir::new("mode");
    let server = ControlServer::bind(&dir.join("ctl.sock")).unwrap();
    let m = std::fs::symlink_metadata(dir.join("ctl.sock")).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o7777, 0o600, "mode {:o}", m.mode());
    // Nothing else left in the directory (the private bind directory is gone).
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ctl.sock")]);
    assert!(UnixStream::connect(dir.join("ctl.sock")).is_ok());
    server.close();
    assert!(std::fs::symlink_metadata(dir.join("ctl.sock")).is_err(), "close removes the socket file");
}

#[test]
fn drop_keeps_the_file_and_close_leaves_a_foreign_file_alone() {
    let dir = TestDir::new("drop");
    let server = ControlServer::bind(&dir.join("ctl.sock")).unwrap();
    drop(server);
    assert!(std::fs::symlink_metadata(dir.join("ctl.sock")).is_ok(), "drop does not remove the file");
    // The file is now stale: a new bind replaces it; if someone replaced
    // ours meanwhile, close must not remove theirs.
    let server = ControlServer::bind(&dir.join("ctl.sock")).unwrap();
    std::fs::remove_file(dir.join("ctl.sock")).unwrap();
    std::fs::write(dir.join("ctl.sock"), b"not ours").unwrap();
    server.close();
    assert_eq!(std::fs::read(dir.join("ctl.sock")).unwrap(), b"not ours");
}

#[test]
fn stale_socket_is_replaced() {
    let dir = TestDir::new("stale");
    let l = UnixListener::bind(dir.join("ctl.sock")).unwrap();
    drop(l); // the file stays, nobody listens: a dead master's socket
    assert!(UnixStream::connect(dir.join("ctl.sock")).is_err());
    let h = default_harness(&dir);
    assert_eq!(ask(&h.path, "VERSION"), "ACK test-version");
    let m = std::fs::symlink_metadata(dir.join("ctl.sock")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
}

#[test]
fn live_socket_is_never_stolen() {
    let dir = TestDir::new("live");
    let h = default_harness(&dir);
    let ino = std::fs::symlink_metadata(dir.join("ctl.sock")).unwrap().ino();
    let err = ControlServer::bind(&dir.join("ctl.sock")).err().expect("second bind must fail");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    let msg = err.to_string();
    assert!(msg.contains("in use by a running master") && msg.contains("ctl.sock"), "{}", msg);
    assert_eq!(std::fs::symlink_metadata(dir.join("ctl.sock")).unwrap().ino(), ino);
    assert_eq!(ask(&h.path, "VERSION"), "ACK test-version", "the first server still answers");
}

#[test]
fn not_a_socket_is_refused_and_left_alone() {
    let dir = TestDir::new("notsock");
    std::fs::write(dir.join("ctl.sock"), b"data").unwrap();
    let err = ControlServer::bind(&dir.join("ctl.sock")).err().expect("must fail");
    assert!(err.to_string().contains("not a socket"), "{}", err);
    assert_eq!(std::fs::read(dir.join("ctl.sock")).unwrap(), b"data");
    // A missing directory is an error naming the path.
    let err = ControlServer::bind(&dir.join("nope/ctl.sock")).err().expect("must fail");
    assert!(err.to_string().contains("nope"), "{}", err);
}

#[test]
fn pump_io_compatible_answers() {
    let dir = TestDir::new("proto");
    let h = default_harness(&dir);
    assert_eq!(ask(&h.path, "CMDS"), "ACK CMDS VERSION LOGLEVEL STATUS RESTART UPGRADE PROMOTE ROLLBACK");
    assert_eq!(ask(&h.path, "version\r"), "ACK test-version");
    assert_eq!(ask(&h.path, "FROB"), "NACK unknown");
    assert_eq!(ask(&h.path, "LOGLEVEL loud"), "NACK invalid");
    assert_eq!(ask(&h.path, "RESTART"), "ACK");

    // Pipelining, blank lines, mixed case: answers in order, one per command.
    {
        let s = control_connect(&h.path);
        (&s).write_all(b"\n  \nCmds\nloglevel debug\nLOGLEVEL restore\nbogus arg\nVERSION\n").unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(read_line(&mut r), "ACK CMDS VERSION LOGLEVEL STATUS RESTART UPGRADE PROMOTE ROLLBACK\n");
        assert_eq!(read_line(&mut r), "ACK\n");
        assert_eq!(read_line(&mut r), "ACK\n");
        assert_eq!(read_line(&mut r), "NACK unknown\n");
        assert_eq!(read_line(&mut r), "ACK test-version\n");
    }

    // `printf VERSION | nc -U sock`: no final newline, then EOF: answered,
    // then the server closes.
    let s = control_connect(&h.path);
    (&s).write_all(b"VERSION").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_line(&mut r), "ACK test-version\n");
    assert!(reaches_eof(&mut r));
    drop(r);

    // Fire and forget: the command is carried out even if the client is gone.
    let before = h.stats.restarts.load(Ordering::SeqCst);
    {
        let s = control_connect(&h.path);
        (&s).write_all(b"RESTART\n").unwrap();
    }
    eventually(30, "RESTART from a closed client", || h.stats.restarts.load(Ordering::SeqCst) > before);
    eventually(30, "no clients left", || h.stats.clients.load(Ordering::SeqCst) == 0);
}

#[test]
fn restart_wait_answers_in_order_and_does_not_time_out() {
    let dir = TestDir::new("wait");
    let limits = Limits { idle_timeout: Duration::from_millis(200), ..Limits::default() };
    let h = Harness::start(&dir.join("ctl.sock"), limits, Duration::from_millis(800));
    let s = control_connect(&h.path);
    let t0 = Instant::now();
    (&s).write_all(b"RESTART WAIT\nVERSION\n").unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_line(&mut r), "ACK complete\n");
    assert!(t0.elapsed() >= Duration::from_millis(700), "answered when the restart ended");
    assert_eq!(read_line(&mut r), "ACK test-version\n", "the next command is answered after it");
    // Now idle: closed after the idle timeout.
    assert!(reaches_eof(&mut r));
    eventually(30, "no clients left", || h.stats.clients.load(Ordering::SeqCst) == 0);
}

#[test]
fn idle_clients_time_out() {
    let dir = TestDir::new("idle");
    let limits = Limits { idle_timeout: Duration::from_millis(300), ..Limits::default() };
    let h = Harness::start(&dir.join("ctl.sock"), limits, Duration::from_millis(10));
    let s = control_connect(&h.path);
    let t0 = Instant::now();
    let mut r = BufReader::new(s);
    assert!(reaches_eof(&mut r));
    assert!(t0.elapsed() >= Duration::from_millis(250));
    eventually(30, "no clients left", || h.stats.clients.load(Ordering::SeqCst) == 0);
}

#[test]
fn line_too_long_is_refused_and_never_blocks() {
    let dir = TestDir::new("long");
    let h = default_harness(&dir);
    let s = control_connect(&h.path);
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
    assert_eq!(ask(&h.path, "VERSION"), "ACK test-version");

    // Commands before a too-long line are answered first, in order.
    let s = control_connect(&h.path);
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
    assert_eq!(ask(&h.path, &line), "ACK test-version");
}

#[test]
fn a_full_table_evicts_the_longest_idle_client() {
    let dir = TestDir::new("many");
    let limits = Limits { max_clients: 4, ..Limits::default() };
    let h = Harness::start(&dir.join("ctl.sock"), limits, Duration::from_millis(10));
    let mut kept = Vec::new();
    for _ in 0..4 {
        let s = control_connect(&h.path);
        (&s).write_all(b"VERSION\n").unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(read_line(&mut r), "ACK test-version\n");
        kept.push(r);
        clock_moves_on(); // distinct last activities
    }
    // The second one is active again: the first is now idle longest.
    (kept[1].get_ref()).write_all(b"VERSION\n").unwrap();
    assert_eq!(read_line(&mut kept[1]), "ACK test-version\n");
    // A fifth client is served (not left waiting for an idle timeout: the
    // harness's is 60 s, the read timeout 30 s); the first is evicted (EOF).
    clock_moves_on();
    let s = control_connect(&h.path);
    (&s).write_all(b"VERSION\n").unwrap();
    let mut fifth = BufReader::new(s);
    assert_eq!(read_line(&mut fifth), "ACK test-version\n");
    assert!(reaches_eof(&mut kept[0]), "the longest idle client is evicted");
    let evicted = kept.remove(0);
    kept.push(fifth);
    // The others are still connected and served, in this order.
    for r in kept.iter_mut() {
        clock_moves_on();
        r.get_ref().write_all(b"VERSION\n").unwrap();
        assert_eq!(read_line(r), "ACK test-version\n");
    }
    // Next in line: the first of them, once the second is active again.
    clock_moves_on();
    (kept[0].get_ref()).write_all(b"VERSION\n").unwrap();
    assert_eq!(read_line(&mut kept[0]), "ACK test-version\n");
    let s = control_connect(&h.path);
    (&s).write_all(b"VERSION\n").unwrap();
    let mut fresh = BufReader::new(s);
    assert_eq!(read_line(&mut fresh), "ACK test-version\n");
    assert!(reaches_eof(&mut kept[1]), "the longest idle client is evicted");
    for (i, r) in kept.iter().enumerate() {
        assert_eq!(closed_now(r.get_ref()), Some(i == 1), "client {}", i);
    }
    eventually(30, "4 clients", || h.stats.clients.load(Ordering::SeqCst) == 4);
    drop((evicted, fresh));
}

#[test]
fn restart_wait_clients_are_never_evicted_and_a_full_table_of_them_nacks() {
    let dir = TestDir::new("fullwait");
    let limits = Limits { max_clients: 4, idle_timeout: Duration::from_secs(60), ..Limits::default() };
    // The restarts are held until the test releases them (no delay to race).
    let h = Harness::start(&dir.join("ctl.sock"), limits, Duration::from_secs(3600));
    // Four clients wait for RESTART WAIT (a deferred answer): nothing evictable.
    let mut waiting: Vec<BufReader<UnixStream>> = (0..4)
        .map(|_| {
            let s = control_connect(&h.path);
            (&s).write_all(b"RESTART WAIT\n").unwrap();
            BufReader::new(s)
        })
        .collect();
    eventually(30, "4 waiting clients", || h.stats.restarts.load(Ordering::SeqCst) == 4);
    for _ in 0..3 {
        let reply = ask(&h.path, "VERSION");
        assert_eq!(reply, "NACK too many clients");
    }
    // zdrestartctl reports it like any NACK (reason and advice; exit 4:
    // retry later), whether the master's answer and close come before or
    // after its send.
    let sock = dir.join("ctl.sock").to_string_lossy().into_owned();
    for _ in 0..5 {
        let (code, out, err) = ctl_raw(&["-s", &sock, "status"]).parts();
        assert_eq!((code, out.as_str()), (4, ""), "{}", err);
        assert!(err.starts_with("zdrestartctl: status: too many clients: "), "{}", err);
        assert!(err.contains("Retry in a moment"), "{}", err);
    }
    h.stats.release.store(true, Ordering::SeqCst);
    // None of the waiting clients was evicted: each gets its answer.
    for r in waiting.iter_mut() {
        assert_eq!(read_line(r), "ACK complete\n");
    }
    // Answered, they are evictable like any idle client: room again, one
    // of them goes.
    assert_eq!(ask(&h.path, "VERSION"), "ACK test-version");
    eventually(30, "one evicted", || waiting.iter().filter(|r| closed_now(r.get_ref()) == Some(true)).count() == 1);
}

/// Poll `server` for `dur`, handling every fd; returns the commands (not
/// answered: the caller decides).
fn pump(server: &mut ControlServer, dur: Duration) -> Vec<(control::ClientId, Command)> {
    let end = Instant::now() + dur;
    let mut cmds = Vec::new();
    let mut fds = Vec::new();
    while Instant::now() < end {
        fds.clear();
        server.poll_fds(&mut fds);
        let mut pfds: Vec<libc::pollfd> =
            fds.iter().map(|&(fd, ev)| libc::pollfd { fd, events: ev, revents: 0 }).collect();
        if let Err(e) = common::sys::poll(&mut pfds, 10) {
            assert_eq!(e.kind(), ErrorKind::Interrupted, "poll: {}", e);
        }
        let now = Instant::now();
        for p in &pfds {
            if p.revents != 0 {
                cmds.extend(server.on_ready(p.fd, p.revents, now));
            }
        }
        server.expire(now);
    }
    cmds
}

/// Without waiting: Some(true) if the server closed `s` (EOF or reset),
/// Some(false) if it is open and silent, None if there is data.
fn closed_now(s: &UnixStream) -> Option<bool> {
    s.set_nonblocking(true).unwrap();
    let r = match (&*s).read(&mut [0u8; 16]) {
        Ok(0) => Some(true),
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::WouldBlock => Some(false),
        Err(_) => Some(true),
    };
    s.set_nonblocking(false).unwrap();
    r
}

/// Whether the server closed `s` (EOF or reset), looking without waiting long.
fn closed(s: &UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 1024];
    let r = loop {
        match (&*s).read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    r
}

#[test]
fn eviction_spares_clients_owed_an_answer_and_takes_stalled_ones() {
    let dir = TestDir::new("evict");
    let limits = Limits { max_clients: 3, ..Limits::default() };
    let mut server = ControlServer::bind_with(&dir.join("ctl.sock"), limits).unwrap();
    let step = Duration::from_millis(60);

    // a: a command the master has not answered yet (owed, not waiting).
    let a = control_connect(&dir.join("ctl.sock"));
    (&a).write_all(b"VERSION\n").unwrap();
    let cmds = pump(&mut server, step);
    assert_eq!(cmds.len(), 1);
    let a_id = cmds[0].0;
    // b: RESTART WAIT, marked waiting by the server (a deferred answer).
    let b = control_connect(&dir.join("ctl.sock"));
    (&b).write_all(b"RESTART WAIT\n").unwrap();
    let cmds = pump(&mut server, step);
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].1, Command::Restart { wait: true, canary: false, progress: false });
    let b_id = cmds[0].0;
    // c: connected, never sent anything; the only evictable one.
    let c = control_connect(&dir.join("ctl.sock"));
    pump(&mut server, step);
    assert_eq!(server.client_count(), 3);

    // d evicts c, the only client owed nothing, though a and b are older.
    let d = control_connect(&dir.join("ctl.sock"));
    pump(&mut server, step);
    assert!(closed(&c), "the idle client is evicted");
    assert_eq!(server.client_count(), 3);
    // d sends a command left unanswered: now nobody is evictable.
    (&d).write_all(b"STATUS\n").unwrap();
    let cmds = pump(&mut server, step);
    assert_eq!(cmds.len(), 1);
    let d_id = cmds[0].0;
    let e = control_connect(&dir.join("ctl.sock"));
    pump(&mut server, step);
    let mut r = BufReader::new(e);
    assert_eq!(read_line(&mut r), "NACK too many clients\n");
    assert!(reaches_eof(&mut r));
    assert_eq!(server.client_count(), 3);
    assert_eq!(server.waiting_clients(), vec![b_id]);

    // a is answered (it has not read it yet): evictable, and now idle
    // longest. d is answered more than its socket takes and does not read:
    // stalled with answers queued, evictable too.
    server.reply(a_id, "ACK first");
    let chunk = format!("ACK {}", "y".repeat(16 * 1024));
    for _ in 0..200 {
        if server.queued_bytes() > 0 {
            break;
        }
        server.reply(d_id, &chunk);
    }
    assert!(server.queued_bytes() > 0, "d's socket never filled");
    assert_eq!(server.client_count(), 3);
    let f = control_connect(&dir.join("ctl.sock"));
    pump(&mut server, step);
    let mut ra = BufReader::new(a);
    assert_eq!(read_line(&mut ra), "ACK first\n");
    assert!(reaches_eof(&mut ra), "the answered, idle-longest client is evicted");
    assert_eq!(server.client_count(), 3);
    // d, stalled with answers it never read, is next: not b.
    assert!(server.queued_bytes() > 0);
    let g = control_connect(&dir.join("ctl.sock"));
    pump(&mut server, step);
    assert!(closed(&d), "the stalled client is evicted");
    assert_eq!(server.client_count(), 3);
    assert_eq!(server.waiting_clients(), vec![b_id]);
    assert_eq!(server.queued_bytes(), 0);
    // b, still waiting, is never evicted: f and g go first, then NACK.
    let h1 = control_connect(&dir.join("ctl.sock"));
    pump(&mut server, step);
    let h2 = control_connect(&dir.join("ctl.sock"));
    pump(&mut server, step);
    assert!(closed(&f) && closed(&g));
    let h3 = control_connect(&dir.join("ctl.sock"));
    pump(&mut server, step);
    assert!(closed(&h1), "h1 is evicted by h3");
    assert_eq!(server.client_count(), 3);
    assert_eq!(server.waiting_clients(), vec![b_id]);
    // The restart ends: b gets its answer.
    server.reply(b_id, "ACK complete");
    let mut rb = BufReader::new(b);
    assert_eq!(read_line(&mut rb), "ACK complete\n");
    drop((h2, h3));
    server.close();
}

#[test]
fn hundreds_of_idle_clients_do_not_lock_out_a_new_client() {
    let dir = TestDir::new("flood");
    let h = default_harness(&dir);
    let idle: Vec<UnixStream> = (0..150).map(|_| control_connect(&h.path)).collect();
    // The first 86 are evicted, oldest first, by the 64 that came after.
    eventually(30, "86 evicted", || idle.iter().take(86).all(|s| closed_now(s) == Some(true)));
    eventually(30, "64 clients kept", || h.stats.clients.load(Ordering::SeqCst) == control::MAX_CLIENTS);
    for (i, s) in idle.iter().enumerate().skip(86) {
        assert_eq!(closed_now(s), Some(false), "recent client {} was closed", i);
    }
    // The 64 idle ones fill the table: a new client is served, and so is
    // zdrestartctl, without waiting for an idle timeout (the harness's is
    // 60 s; zdrestartctl gives up after `-t 20`).
    let t0 = Instant::now();
    assert_eq!(ask(&h.path, "VERSION"), "ACK test-version");
    let sock = dir.join("ctl.sock").to_string_lossy().into_owned();
    assert_eq!(ctl_raw(&["-s", &sock, "-t", "20", "restart", "--wait"]).code, 0);
    eprintln!("served with a full table in {:?}", t0.elapsed());
    drop(idle);
    eventually(30, "all gone", || h.stats.clients.load(Ordering::SeqCst) == 0);
    assert_eq!(ask(&h.path, "VERSION"), "ACK test-version");
}

/// A client that floods STATUS (4 KiB answers) and never reads: the server
/// answers until the socket is full, queues answers up to its output bound
/// (`MAX_OUTPUT`), and drops the client when one more would pass it: the
/// queue reached the bound (not dropped early, for another reason) and never
/// passed it (not kept beyond it). Other clients are served throughout.
#[test]
fn a_client_that_never_reads_stays_bounded() {
    let dir = TestDir::new("noread");
    let h = default_harness(&dir);
    let hog = control_connect(&h.path);
    hog.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0usize;
    let req = b"STATUS\n".repeat(512);
    let write_error = loop {
        let queued = h.stats.max_queued.load(Ordering::SeqCst);
        assert!(queued <= control::MAX_OUTPUT, "{} answer bytes queued, over the bound of {}", queued, control::MAX_OUTPUT);
        assert!(Instant::now() < deadline, "the hog was not dropped within 30 s (it sent {} bytes)", sent);
        match (&hog).write(&req) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(e) => break e,
        }
        // The master still answers others meanwhile.
        assert_eq!(ask(&h.path, "VERSION"), "ACK test-version");
    };
    eprintln!("the hog's writes failed after {} bytes: {}", sent, write_error);
    // Dropped by the server: what it could still read is complete answers,
    // then EOF (or a reset: it left commands unread).
    hog.set_nonblocking(false).unwrap();
    hog.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let end = (&hog).read_to_end(&mut got);
    assert!(
        end.is_ok() || end.as_ref().is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "the hog was not closed by the server: {:?}",
        end
    );
    let answers = String::from_utf8_lossy(&got).matches("ACK {\"pad\"").count();
    let max_q = h.stats.max_queued.load(Ordering::SeqCst);
    let answer = format!("ACK {{\"pad\":\"{}\"}}\n", "x".repeat(STATUS_PAD)).len();
    eprintln!("{} answers reached the hog; the most queued at once: {} bytes (bound {})", answers, max_q, control::MAX_OUTPUT);
    assert!(answers > 0, "no answer before the drop");
    assert!(max_q <= control::MAX_OUTPUT, "queued {} bytes, over the bound", max_q);
    assert!(max_q + answer > control::MAX_OUTPUT, "dropped with {} bytes queued: before the bound ({})", max_q, control::MAX_OUTPUT);
    assert_eq!(ask(&h.path, "VERSION"), "ACK test-version");
    eventually(30, "every slot free again (the hog's too)", || h.stats.clients.load(Ordering::SeqCst) == 0);
    let server = h.finish();
    assert_eq!(server.queued_bytes(), 0);
    server.close();
}

// ---- zdrestartctl against the stand-in master ----------------------------

#[test]
fn zdrestartctl_exit_codes_and_messages() {
    let dir = TestDir::new("ctl");
    let h = Harness::start(&dir.join("ctl.sock"), Limits::default(), Duration::from_millis(300));
    let sock = dir.join("ctl.sock").to_string_lossy().into_owned();
    let s = sock.as_str();

    assert_eq!(ctl_raw(&["-s", s, "version"]).parts(), (0, "test-version\n".into(), String::new()));
    assert_eq!(ctl_raw(&["-s", s, "cmds"]).out, "CMDS VERSION LOGLEVEL STATUS RESTART UPGRADE PROMOTE ROLLBACK\n");
    assert_eq!(ctl_raw(&["-s", s, "loglevel", "debug"]).code, 0);

    let (code, out, err) = ctl_raw(&["-s", s, "restart", "--wait"]).parts();
    assert_eq!((code, out.as_str(), err.as_str()), (0, "zero-downtime restart complete\n", ""));
    assert_eq!(ctl_raw(&["-s", s, "restart"]).code, 0);

    *h.stats.answers.lock().unwrap() =
        Some(("NACK bad driver".into(), "NACK aborted: new worker 1234 exited with status 1".into()));
    let (code, out, err) = ctl_raw(&["-s", s, "restart"]).parts();
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.starts_with("zdrestartctl: restart refused: bad driver: "), "{}", err);
    assert!(err.contains("mongodb"), "{}", err);
    let (code, _, err) = ctl_raw(&["-s", s, "restart", "--wait"]).parts();
    assert_eq!(code, 3, "aborted: {}", err);
    assert!(err.starts_with("zdrestartctl: restart failed: aborted: new worker 1234 exited with status 1"), "{}", err);
    assert!(err.contains("restart the master as soon as possible"), "{}", err);

    // STATUS: --json prints the data as is; the stand-in's JSON is not the
    // master's shape, but renders with placeholders.
    let (code, out, _) = ctl_raw(&["-s", s, "status", "--json"]).parts();
    assert_eq!(code, 0);
    assert!(out.starts_with("{\"pad\":\"xxx") && out.ends_with("\"}\n"));
    let (code, out, _) = ctl_raw(&["-s", s, "status"]).parts();
    assert_eq!(code, 0);
    assert!(out.starts_with("-: generation 0") && out.contains(", 0 workers (0 configured)"), "{}", out);

    // Timeout: no answer within -t seconds is exit 5 and says so.
    *h.stats.answers.lock().unwrap() = None;
    let (code, _, err) = ctl_raw(&["-s", s, "-t", "0.1", "restart", "--wait"]).parts();
    assert_eq!(code, 5);
    assert!(err.contains("no answer within 0.1 s") && err.contains("zdrestartctl status"), "{}", err);

    // The socket named by controlSocket in the config given with -c.
    let cfg = dir.join("z.json");
    std::fs::write(&cfg, format!("{{\"controlSocket\": \"{}\"}}", s)).unwrap();
    assert_eq!(ctl_raw(&["-c", cfg.to_str().unwrap(), "version"]).code, 0);
    // An explicit config that does not exist is an error.
    let (code, _, err) = ctl_raw(&["-c", dir.join("missing.json").to_str().unwrap(), "version"]).parts();
    assert_eq!(code, 2);
    assert!(err.contains("missing.json"), "{}", err);

    // No master on the socket: exit 6, naming the socket and the cause.
    let missing = dir.join("none.sock");
    let (code, _, err) = ctl_raw(&["-s", missing.to_str().unwrap(), "status"]).parts();
    assert_eq!(code, 6);
    assert_eq!(
        err,
        format!(
            "zdrestartctl: connect {}: No such file or directory\nzdrestartctl: No master listens on the socket given with -s: \
             is the master running, and is this its controlSocket?\n",
            missing.display()
        )
    );
    assert_eq!(ctl_raw(&["-s", s, "frobnicate"]).code, 2);
    assert_eq!(ctl_raw(&["-s", s, "loglevel", "loud"]).code, 2);
    let (code, out, _) = ctl_raw(&["--help"]).parts();
    assert!(code == 0 && out.contains("restart [--wait [--json]]"));
}

#[test]
fn zdrestartctl_reads_an_answer_sent_before_the_master_closed() {
    // A stand-in that answers `NACK too many clients` and closes at once,
    // never reading: whether zdrestartctl's send comes before the close (the
    // close then resets the connection) or after it (the send fails with
    // EPIPE), the NACK waiting in the socket is what it reports: exit 1.
    let dir = TestDir::new("nackclose");
    let listener = UnixListener::bind(dir.join("ctl.sock")).unwrap();
    let runs = 20;
    let server = thread::spawn(move || {
        for (i, s) in listener.incoming().take(runs).enumerate() {
            let s = s.unwrap();
            if i % 2 == 1 {
                // Give the client time to send first, half of the time.
                thread::sleep(Duration::from_millis(50));
            }
            (&s).write_all(b"NACK too many clients\n").unwrap();
        }
    });
    let sock = dir.join("ctl.sock").to_string_lossy().into_owned();
    for _ in 0..runs {
        let (code, out, err) = ctl_raw(&["-s", &sock, "restart", "--wait"]).parts();
        assert_eq!((code, out.as_str()), (4, ""), "{}", err);
        assert!(err.starts_with("zdrestartctl: restart refused: too many clients: "), "{}", err);
    }
    server.join().unwrap();

    // Closed without an answer: exit 6 (the master went away), naming the socket.
    let listener = UnixListener::bind(dir.join("mute.sock")).unwrap();
    let server = thread::spawn(move || drop(listener.accept().unwrap()));
    let (code, _, err) = ctl_raw(&["-s", dir.join("mute.sock").to_str().unwrap(), "status"]).parts();
    assert_eq!(code, 6, "{}", err);
    assert!(err.contains("mute.sock"), "{}", err);
    server.join().unwrap();
}

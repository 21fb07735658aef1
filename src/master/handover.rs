//! The hand-over state of an in-place upgrade (re-exec of the master): its
//! format, its parser and its validation.
//!
//! Owns the bytes the old image writes into an anonymous file (memfd) and
//! the new image reads back: a header line `zdrestart-handover <version>`
//! then one JSON object ([`Handover`]). [`parse`] refuses anything it cannot
//! take as a whole (truncated, another hand-over version, garbage, fds that
//! cannot be ours, pids that cannot be workers): the old master runs the new
//! binary on these very bytes in check mode (`--handover-check`) before it
//! execs, so every refusal must happen here, never after the exec. Also
//! what the check answers about a state ([`digest`]) and what its verdict
//! depends on ([`shape`]). It must not touch fds or processes: [`check_fds`]
//! takes the test of an fd as a function (the master asks itself at the
//! exec, and so does the new image).

pub use crate::control::{ClientState, ControlState};
use super::state::WorkerId;
use crate::config::Notify;
use crate::sys::ExitStatus;
use crate::status::{LastRestart, WorkerState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// The version of the hand-over format this binary writes and reads. Bump
/// it whenever [`Handover`] changes in a way an older or newer reader would
/// misread; a binary refuses any other version in its check, so an upgrade
/// across formats is refused before the exec (and a normal restart is then
/// the way).
pub const HANDOVER_VERSION: u32 = 1;

/// The header's first word.
pub const HEADER: &str = "zdrestart-handover";

/// Upper bound of the state's size (a sanity bound against garbage).
pub const MAX_BYTES: usize = 16 << 20;

/// Everything the new image needs to carry on as the same master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// zdrestart version and magic number of the image that wrote it.
    pub from_version: String,
    pub from_magic: u64,
    /// CLOCK_MONOTONIC (µs) when the upgrade was requested: the new image
    /// logs how long the hand-over took.
    pub requested_usec: u64,
    /// The executable the master was started from, resolved at start.
    pub exe: PathBuf,
    pub config_path: PathBuf,
    /// `address:port` the listeners are bound to.
    pub listen: String,
    /// Unix time (ms) the master started (STATUS `started`).
    pub started_ms: u64,
    pub no_pidfd: bool,
    /// LOGLEVEL override from the control socket.
    pub loglevel: Option<String>,
    pub listeners: Vec<i32>,
    pub pidfile: Option<FdPath>,
    pub control: Option<ControlState>,
    /// The control client that asked for the upgrade (its fd), if any.
    pub requester: Option<UpgradeRequest>,
    /// The workers' sd_notify socket, once one was bound (its fd and path;
    /// its directory is the path's).
    #[serde(default)]
    pub workers_socket: Option<FdPath>,
    pub master: MasterSnapshot,
    /// The master's counters (`zdrestartctl metrics`): they go on counting
    /// across an upgrade.
    #[serde(default)]
    pub counters: crate::metrics::Counters,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdPath {
    pub fd: i32,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// The client's fd (one of `control.clients`).
    pub fd: i32,
    /// Answer when the roll-over after the upgrade ends.
    pub wait: bool,
    /// Roll the workers over after the upgrade (not `--no-restart`).
    pub restart: bool,
    /// `UPGRADE WAIT PROGRESS`: the new image streams the roll-over's steps.
    #[serde(default)]
    pub progress: bool,
}

/// The state machine's part ([`super::state::Master::snapshot`]).
///
/// Fields added since the first hand-over format are optional (serde
/// defaults), so that a state written by an older image of the same
/// hand-over version is read in full; an older image refuses a newer state
/// in its check (unknown fields), before any exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterSnapshot {
    pub generation: u32,
    /// Magic number and version of the worker code recorded by the probe.
    pub magic: u64,
    pub version: String,
    pub notified_ready: bool,
    /// The master was in lockout (it is not after the upgrade: logged only).
    pub lockout: bool,
    pub workers: Vec<WorkerSnapshot>,
    /// The next worker id the old image would have handed out (0: not
    /// recorded; [`parse`] fills it in).
    #[serde(default)]
    pub next_worker_id: u64,
    pub pending: Vec<PendingSnapshot>,
    pub last_restart: Option<LastRestart>,
    /// Unix time (ms) of `last_restart.started`.
    pub last_restart_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSnapshot {
    /// The state machine's id of the worker, kept across the upgrade (0:
    /// not recorded; [`parse`] gives it a fresh one).
    #[serde(default)]
    pub id: WorkerId,
    pub pid: u32,
    pub generation: u32,
    pub index: u32,
    pub state: WorkerState,
    pub started_ms: u64,
    /// How long ago it was spawned (ms).
    pub age_ms: u64,
    pub ready_left_ms: Option<u64>,
    pub kill_left_ms: Option<u64>,
    pub asked_to_stop: bool,
    pub killed: bool,
    /// The timeouts it was spawned with (None: not recorded, the new
    /// image's config gives them).
    #[serde(default)]
    pub ready_timeout_ms: Option<u64>,
    #[serde(default)]
    pub shutdown_timeout_ms: Option<u64>,
    /// The `watchdogTimeout` it was started with (its `WATCHDOG_USEC`);
    /// absent: no watchdog (left out when None, so that an image without
    /// the field still reads a state without a watchdog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog_timeout_ms: Option<u64>,
    pub last_lines: Vec<String>,
    /// Where its reports count (`notify` of its config; older states:
    /// the report pipe).
    #[serde(default)]
    pub reports: Notify,
    /// Its last `STATUS=`.
    #[serde(default)]
    pub status: Option<String>,
    /// Its main process, when it named another one with `MAINPID=`.
    #[serde(default)]
    pub main_pid: Option<u32>,
    pub fds: WorkerFds,
}

/// The loop's part of one worker: its fds, and what it read of the
/// worker's pipes and has not passed on yet (fields after `control` are
/// optional: older states have none).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFds {
    pub pidfd: Option<i32>,
    pub notify: Option<i32>,
    pub output: Option<i32>,
    pub control: i32,
    /// The pidfd of its main process (`MAINPID=`).
    #[serde(default)]
    pub main_pidfd: Option<i32>,
    /// How its spawned process ended, when it was reaped while its main
    /// process goes on.
    #[serde(default)]
    pub spawned_status: Option<ExitStatus>,
    /// The unterminated rest of the report pipe and of the output pipe:
    /// read, not yet a line (carried so that no line is lost or cut).
    #[serde(default)]
    pub report_rest: PipeRest,
    #[serde(default)]
    pub output_rest: PipeRest,
}

/// What a line reader holds between reads (`protocol::LineBuffer`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipeRest {
    /// Bytes of a line not terminated yet.
    pub bytes: Vec<u8>,
    /// The rest of an over-long line is being dropped.
    pub skipping: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingSnapshot {
    pub due_in_ms: u64,
    pub generation: u32,
    pub index: u32,
}

/// The bytes of the state file.
pub fn render(h: &Handover) -> Vec<u8> {
    let mut out = format!("{} {}\n", HEADER, HANDOVER_VERSION).into_bytes();
    out.extend(serde_json::to_vec(h).expect("the hand-over state serializes"));
    out.push(b'\n');
    out
}

/// The hand-over version a reader accepts: [`HANDOVER_VERSION`], or in debug
/// builds (tests) `ZDRESTART_HANDOVER_VERSION_OVERRIDE`, which makes a test
/// binary behave as a binary of another hand-over version.
pub fn accepted_version() -> u32 {
    #[cfg(debug_assertions)]
    if let Some(v) = std::env::var("ZDRESTART_HANDOVER_VERSION_OVERRIDE").ok().and_then(|v| v.parse().ok()) {
        return v;
    }
    HANDOVER_VERSION
}

/// Parse and validate the state file's bytes for a reader of hand-over
/// version `accept`. Errors say what is wrong, for the upgrade's NACK.
pub fn parse(bytes: &[u8], accept: u32) -> Result<Handover, String> {
    if bytes.len() > MAX_BYTES {
        return Err(format!("hand-over state too large ({} bytes)", bytes.len()));
    }
    let nl = bytes.iter().position(|&b| b == b'\n').ok_or("hand-over state truncated: no header line")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "hand-over state: header is not text")?;
    let version = match header.split(' ').collect::<Vec<_>>().as_slice() {
        [h, v] if *h == HEADER => v.parse::<u32>().map_err(|_| format!("hand-over state: bad version \"{}\"", v))?,
        _ => return Err(format!("hand-over state: not a zdrestart hand-over (header \"{}\")", header.chars().take(40).collect::<String>())),
    };
    if version != accept {
        return Err(format!("incompatible hand-over version {} (this zdrestart reads version {})", version, accept));
    }
    let body = &bytes[nl + 1..];
    if body.last() != Some(&b'\n') {
        return Err("hand-over state truncated: no final newline".into());
    }
    let mut h: Handover = serde_json::from_slice(body).map_err(|e| format!("hand-over state: {}", e))?;
    number_workers(&mut h.master);
    validate(&h)?;
    Ok(h)
}

/// Workers of a state that did not record their ids get fresh ones, above
/// every id recorded; `next_worker_id` is at least above them all.
fn number_workers(m: &mut MasterSnapshot) {
    let mut next = m.workers.iter().map(|w| w.id.0 + 1).max().unwrap_or(1).max(m.next_worker_id).max(1);
    for w in m.workers.iter_mut().filter(|w| w.id.0 == 0) {
        w.id = WorkerId(next);
        next += 1;
    }
    m.next_worker_id = next;
}

/// Every fd the state names, with what it is.
pub fn fds(h: &Handover) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = h.listeners.iter().map(|&fd| (fd, "listener".to_string())).collect();
    if let Some(p) = &h.pidfile {
        v.push((p.fd, "pidfile".into()));
    }
    if let Some(c) = &h.control {
        v.push((c.fd, "control socket".into()));
        v.extend(c.clients.iter().map(|cl| (cl.fd, "control client".to_string())));
    }
    if let Some(n) = &h.workers_socket {
        v.push((n.fd, "workers' notify socket".into()));
    }
    for w in &h.master.workers {
        let what = |k: &str| format!("worker {} {}", w.pid, k);
        v.extend(w.fds.pidfd.map(|fd| (fd, what("pidfd"))));
        v.extend(w.fds.notify.map(|fd| (fd, what("report pipe"))));
        v.extend(w.fds.output.map(|fd| (fd, what("output pipe"))));
        v.push((w.fds.control, what("control pipe")));
        v.extend(w.fds.main_pidfd.map(|fd| (fd, what("main process pidfd"))));
    }
    v
}

/// The digest of a hand-over state's bytes, as the new binary's check
/// answers it (FNV-1a, 64 bits): proof that it read and parsed these very
/// bytes, not a word it prints whatever it is given. Not a defence against
/// an attacker: whoever can replace the master's executable needs none.
pub fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{:016x}", h)
}

/// What the new binary's verdict depends on: the state without what is
/// taken as it is at exec time (time left on deadlines, output lines and
/// bytes read, statuses, the control clients and the bytes in flight to
/// them, the respawns pending, the last restart). Two states of the same
/// shape are accepted or refused alike: the master execs a state whose
/// shape is that of the state the new binary checked, else it checks again.
/// Control clients are connections that come and go while a check runs;
/// the check of one is that its fd is open, which the master makes sure of
/// itself at the exec (clearing FD_CLOEXEC fails on a closed fd: `exec
/// failed`, nothing changed).
pub fn shape(h: &Handover) -> Handover {
    let mut s = h.clone();
    s.loglevel = None;
    s.requester = None;
    s.counters = Default::default();
    if let Some(c) = &mut s.control {
        c.clients.clear();
    }
    let m = &mut s.master;
    m.notified_ready = false;
    m.pending.clear();
    m.last_restart = None;
    m.last_restart_ms = None;
    for w in &mut m.workers {
        w.state = WorkerState::Starting;
        (w.age_ms, w.ready_left_ms, w.kill_left_ms, w.asked_to_stop, w.killed) = (0, None, None, false, false);
        (w.last_lines, w.status) = (Vec::new(), None);
        (w.fds.report_rest, w.fds.output_rest) = (PipeRest::default(), PipeRest::default());
    }
    s
}

/// Which parts of two states' shapes differ (for the log), empty if none.
pub fn shape_changes(a: &Handover, b: &Handover) -> Vec<&'static str> {
    let (a, b) = (shape(a), shape(b));
    let workers = |h: &Handover| h.master.workers.iter().map(|w| (w.id, w.pid)).collect::<Vec<_>>();
    let mut out = Vec::new();
    if workers(&a) != workers(&b) {
        out.push("the workers");
    } else if a.master.workers != b.master.workers {
        out.push("a worker's fds or main process");
    }
    if a.workers_socket != b.workers_socket {
        out.push("the workers' notify socket");
    }
    if a != b && out.is_empty() {
        out.push("the master's state");
    }
    out
}

/// The structure: fds above stdio and distinct, pids of distinct workers,
/// the requester among the clients, a listener at least.
fn validate(h: &Handover) -> Result<(), String> {
    if h.listeners.is_empty() {
        return Err("hand-over state: no listener".into());
    }
    let mut seen = BTreeSet::new();
    for (fd, what) in fds(h) {
        if fd < 3 {
            return Err(format!("hand-over state: {} has fd {} (stdio or invalid)", what, fd));
        }
        if !seen.insert(fd) {
            return Err(format!("hand-over state: fd {} ({}) listed twice", fd, what));
        }
    }
    let mut pids = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for w in &h.master.workers {
        if !ids.insert(w.id) {
            return Err(format!("hand-over state: worker id {} listed twice", w.id.0));
        }
        if w.pid <= 1 || w.pid > 1 << 22 {
            return Err(format!("hand-over state: bad worker pid {}", w.pid));
        }
        if !pids.insert(w.pid) {
            return Err(format!("hand-over state: worker pid {} listed twice", w.pid));
        }
        if w.generation == 0 || w.generation > h.master.generation {
            return Err(format!("hand-over state: worker {} of generation {} (master at {})", w.pid, w.generation, h.master.generation));
        }
        if w.state == WorkerState::Unknown {
            return Err(format!("hand-over state: worker {} in an unknown state", w.pid));
        }
    }
    if let Some(r) = &h.requester {
        let known = h.control.as_ref().is_some_and(|c| c.clients.iter().any(|cl| cl.fd == r.fd));
        if !known {
            return Err(format!("hand-over state: the requesting client's fd {} is not a control client", r.fd));
        }
    }
    if h.config_path.as_os_str().is_empty() || h.exe.as_os_str().is_empty() {
        return Err("hand-over state: empty config or executable path".into());
    }
    Ok(())
}

/// Check that every fd the state names is open, with `is_open`.
pub fn check_fds(h: &Handover, is_open: impl Fn(i32) -> bool) -> Result<(), String> {
    for (fd, what) in fds(h) {
        if !is_open(fd) {
            return Err(format!("hand-over state: {} fd {} is not open", what, fd));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handover {
        Handover {
            from_version: "0.1.0".into(),
            from_magic: 1,
            requested_usec: 5,
            exe: "/usr/sbin/zdrestart".into(),
            config_path: "/etc/zdrestart.json".into(),
            listen: "127.0.0.1:8080".into(),
            started_ms: 1,
            no_pidfd: false,
            loglevel: None,
            listeners: vec![3],
            pidfile: Some(FdPath { fd: 4, path: "/run/zdrestart.pid".into() }),
            control: Some(ControlState {
                path: "/run/zdrestart.sock".into(),
                fd: 5,
                ident: (1, 2),
                clients: vec![ClientState { fd: 6, inbuf: vec![], out: vec![], eof: false }],
            }),
            requester: Some(UpgradeRequest { fd: 6, wait: true, restart: true, progress: true }),
            counters: Default::default(),
            workers_socket: None,
            master: MasterSnapshot {
                generation: 2,
                magic: 1,
                version: "0.1.0".into(),
                notified_ready: true,
                lockout: false,
                next_worker_id: 8,
                workers: vec![WorkerSnapshot {
                    id: WorkerId(7),
                    pid: 100,
                    generation: 2,
                    index: 0,
                    state: WorkerState::Ready,
                    started_ms: 1,
                    age_ms: 10,
                    ready_left_ms: None,
                    kill_left_ms: None,
                    asked_to_stop: false,
                    killed: false,
                    ready_timeout_ms: Some(30_000),
                    shutdown_timeout_ms: Some(5_000),
                    watchdog_timeout_ms: Some(30_000),
                    last_lines: vec!["x".into()],
                    reports: Notify::Zdrestart,
                    status: None,
                    main_pid: None,
                    fds: WorkerFds { pidfd: Some(7), notify: Some(8), output: Some(9), control: 10, ..Default::default() },
                }],
                pending: vec![],
                last_restart: None,
                last_restart_ms: None,
            },
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(parse(&render(&h), HANDOVER_VERSION).unwrap(), h);
    }

    /// A state written before workers carried their ids and timeouts (the
    /// same hand-over version) is read: fresh ids, above the next one.
    #[test]
    fn a_state_without_worker_ids_or_timeouts_is_read() {
        let mut h = sample();
        h.master.workers.push(WorkerSnapshot { pid: 101, fds: WorkerFds { pidfd: None, notify: None, output: None, control: 11, ..Default::default() }, ..h.master.workers[0].clone() });
        let text = String::from_utf8(render(&h)).unwrap();
        let old = text.replace("\"id\":7,", "").replace("\"next_worker_id\":8,", "").replace("\"ready_timeout_ms\":30000,", "").replace("\"shutdown_timeout_ms\":5000,", "").replace("\"watchdog_timeout_ms\":30000,", "");
        assert!(!old.contains("\"id\"") && !old.contains("timeout_ms"), "{}", old);
        let got = parse(old.as_bytes(), HANDOVER_VERSION).unwrap();
        let ids: Vec<u64> = got.master.workers.iter().map(|w| w.id.0).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(got.master.next_worker_id, 3);
        assert_eq!(got.master.workers[0].shutdown_timeout_ms, None);
        // Recorded ids are kept; a missing one comes after them.
        let mixed = text.replacen("\"id\":7,", "", 1);
        let got = parse(mixed.as_bytes(), HANDOVER_VERSION).unwrap();
        assert_eq!(got.master.workers.iter().map(|w| w.id.0).collect::<Vec<_>>(), vec![8, 7]);
    }

    /// What this version adds (sd_notify workers, their socket and main
    /// processes, the unread rests of the pipes) is read back whole; a state
    /// of the previous release, without any of it, is read too.
    #[test]
    fn sd_notify_workers_and_unread_rests_round_trip() {
        let mut h = sample();
        h.workers_socket = Some(FdPath { fd: 12, path: "/run/zdrestart/zdrestart-notify.0badcafe/notify".into() });
        let w = &mut h.master.workers[0];
        (w.reports, w.status, w.main_pid) = (Notify::Systemd, Some("serving".into()), Some(4242));
        w.fds.main_pidfd = Some(11);
        w.fds.spawned_status = Some(ExitStatus::Code(0));
        w.fds.output_rest = PipeRest { bytes: b"line 0000042 \xe2\x82".to_vec(), skipping: false };
        w.fds.report_rest = PipeRest { bytes: b"REA".to_vec(), skipping: true };
        assert_eq!(parse(&render(&h), HANDOVER_VERSION).unwrap(), h);
        assert!(fds(&h).contains(&(11, "worker 100 main process pidfd".to_string())));
        assert!(fds(&h).contains(&(12, "workers' notify socket".to_string())));
        let text = String::from_utf8(render(&sample())).unwrap();
        let mut old = text.clone();
        for key in ["\"workers_socket\":null,", "\"reports\":\"zdrestart\",", "\"status\":null,", "\"main_pid\":null,",
            ",\"main_pidfd\":null", ",\"spawned_status\":null", ",\"report_rest\":{\"bytes\":[],\"skipping\":false}",
            ",\"output_rest\":{\"bytes\":[],\"skipping\":false}"] {
            assert!(old.contains(key), "{} not in {}", key, old);
            old = old.replace(key, "");
        }
        assert_eq!(parse(old.as_bytes(), HANDOVER_VERSION).unwrap(), sample());
    }

    /// The shape leaves out what changes while a check runs and keeps what
    /// the check judged.
    #[test]
    fn the_shape_keeps_what_the_check_judged() {
        let h = sample();
        let mut later = h.clone();
        let w = &mut later.master.workers[0];
        (w.age_ms, w.state, w.last_lines) = (99, WorkerState::Stopping, vec!["y".into()]);
        w.fds.output_rest.bytes = b"abc".to_vec();
        later.control.as_mut().unwrap().clients.push(ClientState { fd: 20, inbuf: vec![], out: b"ACK\n".to_vec(), eof: false });
        later.loglevel = Some("warn".into());
        assert_eq!(shape(&h), shape(&later));
        assert!(shape_changes(&h, &later).is_empty());
        let mut respawned = h.clone();
        respawned.master.workers[0].pid = 101;
        assert_eq!(shape_changes(&h, &respawned), vec!["the workers"]);
        let mut main = h.clone();
        main.master.workers[0].fds.main_pidfd = Some(30);
        assert_eq!(shape_changes(&h, &main), vec!["a worker's fds or main process"]);
        let mut moved = h.clone();
        moved.listeners = vec![40];
        assert_eq!(shape_changes(&h, &moved), vec!["the master's state"]);
    }

    #[test]
    fn the_digest_is_fnv1a_64() {
        assert_eq!(digest(b""), "fnv1a64:cbf29ce484222325");
        assert_eq!(digest(b"a"), "fnv1a64:af63dc4c8601ec8c");
        assert_ne!(digest(&render(&sample())), digest(&render(&UpgradeRequest::tweak(sample()))));
    }

    impl UpgradeRequest {
        fn tweak(mut h: Handover) -> Handover {
            h.requested_usec += 1;
            h
        }
    }

    #[test]
    fn truncated_at_every_length_is_refused() {
        let bytes = render(&sample());
        for n in 0..bytes.len() {
            assert!(parse(&bytes[..n], HANDOVER_VERSION).is_err(), "accepted {} of {} bytes", n, bytes.len());
        }
    }

    #[test]
    fn wrong_version_is_refused_with_both_numbers() {
        let bytes = render(&sample());
        let e = parse(&bytes, HANDOVER_VERSION + 1).unwrap_err();
        assert!(e.contains(&format!("incompatible hand-over version {}", HANDOVER_VERSION)), "{}", e);
        let mut other = format!("{} 99\n", HEADER).into_bytes();
        other.extend_from_slice(&bytes[bytes.iter().position(|&b| b == b'\n').unwrap() + 1..]);
        assert!(parse(&other, HANDOVER_VERSION).unwrap_err().contains("incompatible hand-over version 99"));
    }

    #[test]
    fn garbage_is_refused() {
        for g in [&b""[..], b"\n", b"hello\n{}\n", b"zdrestart-handover x\n{}\n", b"zdrestart-handover 1\nnot json\n",
            b"zdrestart-handover 1\n{}\n", b"zdrestart-handover 1 2\n{}\n", b"\xff\xfe\n{}\n"] {
            assert!(parse(g, HANDOVER_VERSION).is_err(), "accepted {:?}", String::from_utf8_lossy(g));
        }
        // An unknown field: a newer writer with the same version number is a bug, refused.
        let s = String::from_utf8(render(&sample())).unwrap().replacen("\"no_pidfd\"", "\"surprise\":1,\"no_pidfd\"", 1);
        assert!(parse(s.as_bytes(), HANDOVER_VERSION).unwrap_err().contains("surprise"));
    }

    #[test]
    fn bad_fds_and_pids_are_refused() {
        type Spoil = fn(&mut Handover);
        let cases: Vec<(Spoil, &str)> = vec![
            (|h| h.listeners = vec![], "no listener"),
            (|h| h.listeners = vec![1], "fd 1"),
            (|h| h.listeners = vec![-1], "fd -1"),
            (|h| h.listeners = vec![3, 4], "listed twice"),
            (|h| h.master.workers[0].fds.control = 5, "listed twice"),
            (|h| h.master.workers[0].pid = 0, "bad worker pid"),
            (|h| h.master.workers[0].generation = 3, "generation 3"),
            (|h| h.requester = Some(UpgradeRequest { fd: 42, wait: false, restart: true, progress: false }), "not a control client"),
            (|h| h.master.workers.push(h.master.workers[0].clone()), "twice"),
            (
                |h| {
                    let fds = WorkerFds { pidfd: None, notify: None, output: None, control: 11, ..Default::default() };
                    h.master.workers.push(WorkerSnapshot { pid: 101, fds, ..h.master.workers[0].clone() })
                },
                "worker id 7 listed twice",
            ),
        ];
        for (spoil, want) in cases {
            let mut h = sample();
            spoil(&mut h);
            let e = parse(&render(&h), HANDOVER_VERSION).unwrap_err();
            assert!(e.contains(want), "{} (wanted {})", e, want);
        }
    }

    #[test]
    fn closed_fds_are_refused() {
        let h = sample();
        assert!(check_fds(&h, |_| true).is_ok());
        let e = check_fds(&h, |fd| fd != 8).unwrap_err();
        assert!(e.contains("worker 100 report pipe fd 8 is not open"), "{}", e);
    }
}

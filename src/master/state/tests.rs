//! Unit tests of the state machine: every cell of its table that matters,
//! driven without processes (pids are made up, time is moved by hand).

use super::*;
use crate::master::admission::{self, Running};
use crate::master::handover::WorkerFds;
use crate::sys::ExitStatus;
use std::path::Path;

fn cfg(json: &str) -> Config {
    Config::parse(Path::new("/t/c.json"), json).unwrap()
}

fn mongo(workers: u32) -> Config {
    cfg(&format!(r#"{{"driver":"mongodb","workers":{},"readyTimeout":5,"shutdownTimeout":3,"minReady":0}}"#, workers))
}

struct H {
    m: Master,
    now: Instant,
    t0: Instant,
    next_pid: u32,
}

impl H {
    fn new(c: Config) -> H {
        let m = Master::new(Arc::new(c), ProbeInfo { magic: 7, version: "v".into(), shared: Some(true) });
        let now = Instant::now();
        H { m, now, t0: now, next_pid: 100 }
    }
    /// Feed an event; Spawn actions get pids at once (like the loop).
    fn ev(&mut self, e: Event) -> Vec<Action> {
        let mut acts = self.m.handle(e, self.now, self.wall());
        let mut i = 0;
        while i < acts.len() {
            if let Action::Spawn { id, .. } = acts[i] {
                self.next_pid += 1;
                let more = self.m.handle(Event::Spawned { id, pid: self.next_pid }, self.now, self.wall());
                acts.extend(more);
            }
            i += 1;
        }
        acts
    }
    /// Wall time moves with `now` from a fixed origin.
    fn wall(&self) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + self.now.duration_since(self.t0)
    }
    fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.ev(Event::Tick)
    }
    fn id_of(&self, pid: u32) -> WorkerId {
        self.m.workers().find(|w| w.pid == Some(pid)).unwrap().id
    }
    fn ready_all(&mut self) -> Vec<Action> {
        let ids: Vec<_> = self.m.workers().filter(|w| w.state() == WorkerState::Starting).map(|w| w.id).collect();
        ids.into_iter().flat_map(|id| self.ev(Event::Ready { id })).collect()
    }
    fn restart(&mut self, c: Config, wait: bool) -> Vec<Action> {
        self.ev(Event::Restart { config: Ok(c), by: Requester::Control { client: 1, wait }, canary: false })
    }
    fn probe_ok(&mut self) -> Vec<Action> {
        self.ev(Event::ProbeDone(Ok(ProbeInfo { magic: 7, version: "v2".into(), shared: Some(true) })))
    }
}

fn spawns(a: &[Action]) -> usize {
    a.iter().filter(|a| matches!(a, Action::Spawn { .. })).count()
}

impl H {
    /// Pids of the workers sent `sig` by these actions.
    fn signaled(&self, a: &[Action], sig: i32) -> Vec<u32> {
        a.iter()
            .filter_map(|a| match a {
                Action::Signal { id, signal } if *signal == sig => self.m.workers.get(*id).and_then(|w| w.pid),
                _ => None,
            })
            .collect()
    }
    fn terms(&self, a: &[Action]) -> Vec<u32> {
        self.signaled(a, libc::SIGTERM)
    }
    fn kills(&self, a: &[Action]) -> Vec<u32> {
        self.signaled(a, libc::SIGKILL)
    }
}
/// The answers as the control socket renders them.
fn replies(a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|a| match a {
            Action::Reply { answer, .. } => Some(crate::control::render(answer)),
            _ => None,
        })
        .collect()
}
fn exit_code(a: &[Action]) -> Option<i32> {
    a.iter().find_map(|a| match a {
        Action::Exit(c) => Some(*c),
        _ => None,
    })
}

fn running(c: Config) -> H {
    let mut h = H::new(c);
    let a = h.ev(Event::Start);
    assert_eq!(spawns(&a), h.m.config().workers as usize);
    h.ready_all();
    h
}

#[test]
fn start_spawns_and_respawns_with_backoff() {
    let mut h = running(mongo(2));
    assert_eq!(h.m.generation(), 1);
    // Lived more than a second: immediate respawn.
    h.now += Duration::from_secs(5);
    let id = h.id_of(101);
    let a = h.ev(Event::Exited { id, status: ExitStatus::Signal(9) });
    assert_eq!(spawns(&a), 1);
    // Dies at once: backoff, no immediate spawn.
    let id = h.id_of(103);
    let a = h.ev(Event::Exited { id, status: ExitStatus::Code(1) });
    assert_eq!(spawns(&a), 0);
    assert!(h.m.next_deadline().unwrap() > h.now);
    let a = h.advance(Duration::from_millis(600));
    assert_eq!(spawns(&a), 1);
}

#[test]
fn refusals_in_order() {
    let mut h = running(cfg(r#"{"workers":1}"#));
    // bad config comes before everything that needs the new config.
    let a = h.ev(Event::Restart { config: Err("x: bad".into()), by: Requester::Control { client: 1, wait: false }, canary: false });
    assert_eq!(replies(&a), vec!["NACK bad config: x: bad"]);
    let a = h.restart(cfg(r#"{"port":9,"workers":1}"#), false);
    assert!(replies(&a)[0].starts_with("NACK listen address changed"));
    let a = h.restart(cfg(r#"{"workers":1,"driver":"mongodb"}"#), false);
    assert!(replies(&a)[0].starts_with("NACK no workers"));
    // Checks pass: the probe runs, and a second request is in flight.
    let a = h.restart(mongo(2), false);
    assert!(a.iter().any(|a| matches!(a, Action::Probe { .. })));
    let a = h.restart(mongo(2), false);
    assert_eq!(replies(&a), vec!["NACK restart in flight"]);
    let a = h.ev(Event::ProbeDone(Ok(ProbeInfo { magic: 8, version: "v".into(), shared: Some(true) })));
    assert!(replies(&a)[0].starts_with("NACK incompatibility"));
    h.restart(mongo(2), false);
    let a = h.ev(Event::ProbeDone(Err(ProbeFailure { magic: Some(7), error: "ERROR=database unreachable".into() })));
    assert!(replies(&a)[0].starts_with("NACK probe failed"));
    // Another magic number is an incompatibility even when the probe also failed.
    h.restart(mongo(2), false);
    let a = h.ev(Event::ProbeDone(Err(ProbeFailure { magic: Some(9), error: "ERROR=x".into() })));
    assert!(replies(&a)[0].starts_with("NACK incompatibility"));
    // Last: the probe says the workers' state is not shared (memory driver).
    h.restart(cfg(r#"{"workers":2}"#), false);
    let a = h.ev(Event::ProbeDone(Ok(ProbeInfo { magic: 7, version: "v".into(), shared: Some(false) })));
    assert!(replies(&a)[0].starts_with("NACK bad driver"));
    // Nothing was touched by any refusal.
    assert_eq!(h.m.generation(), 1);
    assert_eq!(h.m.workers().count(), 1);
    assert!(!(h.m.state() == MasterState::Restarting));
}

/// The refusal the state machine answered to a control client.
fn refusal(a: &[Action]) -> Refused {
    a.iter()
        .find_map(|a| match a {
            Action::Reply { answer: RestartAnswer::Refused(r), .. } => Some(r.clone()),
            _ => None,
        })
        .expect("a refusal")
}

/// Every refusal reason, through the state machine and through the path
/// of `zdrestart --check` (`admission::admit` against the master's STATUS):
/// the same reason with the same detail.
#[test]
fn every_refusal_is_the_same_through_both_paths() {
    let probe_ok = || Ok(ProbeInfo { magic: 7, version: "v2".into(), shared: Some(true) });
    let mut seen = Vec::new();
    let mut case = |h: &mut H, new: Result<Config, String>, probe: Result<ProbeInfo, ProbeFailure>| {
        // The --check path first: it must not change the master.
        let running = Running { state: h.m.state(), listen: h.m.config().listen_display(), magic: 7 };
        let checked = admission::admit(&running, new.as_ref().map_err(String::clone), probe.clone()).unwrap_err();
        // RESTART WAIT: its answer carries the detail (RESTART's is
        // pump.socket(7)'s bare text for pump.io's reasons).
        let mut a = h.ev(Event::Restart { config: new, by: Requester::Control { client: 1, wait: true }, canary: false });
        if a.iter().any(|a| matches!(a, Action::Probe { .. })) {
            a = h.ev(Event::ProbeDone(probe));
        }
        assert_eq!(refusal(&a), checked);
        seen.push(checked.reason);
    };
    // In flight: a restart is being probed.
    let mut h = running(mongo(2));
    h.restart(mongo(2), false);
    case(&mut h, Ok(mongo(2)), probe_ok());
    // Aborted restart: lockout after a new worker exited.
    let mut h = running(mongo(2));
    h.restart(mongo(2), false);
    h.probe_ok();
    let new = h.m.workers().find(|w| w.generation == 2).unwrap().id;
    h.ev(Event::Exited { id: new, status: ExitStatus::Code(1) });
    case(&mut h, Ok(mongo(2)), probe_ok());
    // The checks on the new config and on the probe.
    let mut h = running(mongo(2));
    case(&mut h, Err("key \"workers\": bad".into()), probe_ok());
    case(&mut h, Ok(cfg(r#"{"driver":"mongodb","workers":2,"port":9}"#)), probe_ok());
    case(&mut h, Ok(mongo(1)), probe_ok());
    case(&mut h, Ok(cfg(r#"{"workers":2}"#)), Ok(ProbeInfo { magic: 7, version: "v2".into(), shared: Some(false) }));
    case(&mut h, Ok(mongo(2)), Ok(ProbeInfo { magic: 8, version: "v9".into(), shared: Some(true) }));
    case(&mut h, Ok(mongo(2)), Err(ProbeFailure { magic: Some(9), error: "ERROR=x".into() }));
    case(&mut h, Ok(mongo(2)), Err(ProbeFailure { magic: Some(7), error: "ERROR=database unreachable".into() }));
    // Not ready: a worker of the serving generation waits for its respawn.
    let mut h = running(mongo(2));
    h.ev(Event::Exited { id: h.id_of(101), status: ExitStatus::Code(1) });
    assert_eq!(h.m.state(), MasterState::NotReady);
    case(&mut h, Ok(mongo(2)), probe_ok());
    // Stopping.
    let mut h = running(mongo(2));
    h.ev(Event::Stop { signal: "SIGTERM" });
    case(&mut h, Ok(mongo(2)), probe_ok());
    for &r in Reason::REFUSALS.iter().chain(&[Reason::Stopping]) {
        assert!(seen.contains(&r), "{:?} not walked", r);
    }
}

#[test]
fn surge_rollout_one_at_a_time() {
    let mut h = running(mongo(2));
    h.restart(mongo(2), true);
    let a = h.probe_ok();
    assert_eq!(spawns(&a), 1, "one new worker first");
    assert!(h.terms(&a).is_empty(), "no old worker touched before a new one is ready");
    assert_eq!(h.m.generation(), 2);
    let a = h.ready_all();
    assert_eq!(h.terms(&a), vec![101], "one old worker goes per ready new worker");
    assert_eq!(spawns(&a), 1);
    let a = h.ready_all();
    assert_eq!(h.terms(&a), vec![102]);
    assert_eq!(spawns(&a), 0);
    let a = h.ev(Event::Exited { id: h.id_of(101), status: ExitStatus::Code(0) });
    assert!(replies(&a).is_empty());
    let a = h.ev(Event::Exited { id: h.id_of(102), status: ExitStatus::Code(0) });
    assert_eq!(replies(&a), vec!["ACK complete"]);
    assert!(!(h.m.state() == MasterState::Restarting));
    assert!(h.m.workers().all(|w| w.generation == 2));
}

/// `"probe": false`: no probe runs; the declared magic number is
/// compared as a probe's answer would be, on both paths.
#[test]
fn declared_magic_stands_for_the_probe() {
    let declared = |magic: u64| {
        cfg(&format!(r#"{{"driver":"mongodb","workers":2,"probe":false,"magic":{},"version":"d{}","sharedState":true}}"#, magic, magic))
    };
    let mut h = running(mongo(2));
    // RESTART WAIT: its refusal carries the detail.
    let a = h.restart(declared(8), true);
    assert!(!a.iter().any(|a| matches!(a, Action::Probe { .. })), "no probe runs");
    let r = refusal(&a);
    assert_eq!(r.reason, Reason::Incompatibility);
    assert!(r.detail.contains("magic number 8 (version d8)"), "{}", r.detail);
    let running = Running { state: h.m.state(), listen: h.m.config().listen_display(), magic: 7 };
    let new = declared(8);
    let info = admission::declared(&new).unwrap();
    assert_eq!(admission::admit(&running, Ok::<_, String>(&new), Ok(info)).unwrap_err(), r);
    let a = h.restart(declared(7), false);
    assert!(!a.iter().any(|a| matches!(a, Action::Probe { .. })));
    assert_eq!(replies(&a), vec!["ACK"]);
    assert_eq!(spawns(&a), 1, "the rollout starts at once");
    assert_eq!(h.m.generation(), 2);
}

/// sd_notify `ERRNO=`/`STOPPING=1`: a failure before `READY=1` (abort
/// in a rollout), only logged after it; `MAINPID=` and the main process are shown in STATUS.
#[test]
fn notify_failure_main_pid_and_status() {
    let mut h = running(mongo(2));
    let id = h.id_of(101);
    let a = h.ev(Event::NotifyFailure { id, text: "STOPPING=1".into() });
    assert!(a.is_empty(), "a ready worker that says STOPPING=1 is left alone: {:?}", a);
    h.ev(Event::MainPid { id, pid: 500 });
    h.ev(Event::Status { id, text: "serving".into() });
    let st = h.m.status(1, SystemTime::now());
    let w = st.workers.iter().find(|w| w.pid == Some(101)).unwrap();
    assert_eq!((w.status.as_deref(), w.main_pid), (Some("serving"), Some(500)));
    h.restart(mongo(2), false);
    h.probe_ok();
    let new = h.m.workers().find(|w| w.generation == 2).unwrap().id;
    let a = h.ev(Event::NotifyFailure { id: new, text: "ERRNO=98 (Address in use)".into() });
    assert_eq!(h.m.state(), MasterState::Lockout);
    assert_eq!(h.terms(&a).len(), 1, "the failed new worker is stopped");
    // Stopping now: SIGTERM goes to the worker (its process group, where
    // its main process is), not to a pid of its choosing.
    let a = h.ev(Event::Stop { signal: "SIGTERM" });
    assert!(h.terms(&a).contains(&101) && !h.terms(&a).contains(&500), "{:?}", a);
}

#[test]
fn ack_without_wait_comes_after_probe() {
    let mut h = running(mongo(2));
    let a = h.restart(mongo(2), false);
    assert!(replies(&a).is_empty());
    let a = h.probe_ok();
    assert_eq!(replies(&a), vec!["ACK"]);
}

#[test]
fn worker_count_change_and_old_killed_after_timeout() {
    let mut h = running(mongo(2));
    h.restart(mongo(3), false);
    h.probe_ok();
    let mut total_new = 1;
    for _ in 0..3 {
        let a = h.ready_all();
        total_new += spawns(&a);
    }
    assert_eq!(total_new, 3);
    assert_eq!(h.m.workers().filter(|w| w.generation == 2).count(), 3);
    // Old workers ignore SIGTERM: SIGKILL after shutdownTimeout (3 s).
    let a = h.advance(Duration::from_millis(3100));
    assert_eq!(h.kills(&a).len(), 2);
    for pid in [101, 102] {
        h.ev(Event::Exited { id: h.id_of(pid), status: ExitStatus::Signal(9) });
    }
    assert!(!(h.m.state() == MasterState::Restarting));
    assert_eq!(h.m.config().workers, 3);
}

#[test]
fn abort_on_exit_locks_out_and_exits_when_last_worker_goes() {
    let mut h = running(mongo(2));
    h.restart(mongo(2), true);
    h.probe_ok();
    let new = h.m.workers().find(|w| w.generation == 2).unwrap().id;
    h.ev(Event::Output { id: new, line: "invalid JSON in config".into() });
    let a = h.ev(Event::Exited { id: new, status: ExitStatus::Code(1) });
    assert!(replies(&a)[0].starts_with("NACK aborted: new worker exited"));
    assert!((h.m.state() == MasterState::Lockout));
    assert!(h.terms(&a).is_empty(), "serving workers are left alone");
    let a = h.restart(mongo(2), false);
    assert!(replies(&a)[0].starts_with("NACK aborted restart"));
    h.now += Duration::from_secs(10);
    let a = h.ev(Event::Exited { id: h.id_of(101), status: ExitStatus::Signal(9) });
    assert_eq!(spawns(&a), 0, "no respawn in lockout");
    assert_eq!(exit_code(&a), None);
    let a = h.ev(Event::Exited { id: h.id_of(102), status: ExitStatus::Signal(9) });
    assert_eq!(exit_code(&a), Some(1));
}

#[test]
fn abort_on_error_report_and_on_ready_timeout() {
    let mut h = running(mongo(2));
    h.restart(mongo(2), false);
    h.probe_ok();
    let new = h.m.workers().find(|w| w.generation == 2).unwrap();
    let (id, pid) = (new.id, new.pid.unwrap());
    let a = h.ev(Event::ReportedError { id, text: "bind: in use".into() });
    assert!((h.m.state() == MasterState::Lockout));
    assert_eq!(h.terms(&a), vec![pid], "the failed new worker is stopped");

    let mut h = running(mongo(2));
    h.restart(mongo(2), false);
    h.probe_ok();
    let a = h.advance(Duration::from_secs(6));
    assert!((h.m.state() == MasterState::Lockout));
    assert_eq!(h.terms(&a).len(), 1);
    assert_eq!(h.m.workers().filter(|w| w.generation == 1 && w.state() == WorkerState::Ready).count(), 2);
}

#[test]
fn old_worker_dying_mid_rollout_is_not_respawned() {
    let mut h = running(mongo(2));
    h.restart(mongo(2), false);
    h.probe_ok();
    h.now += Duration::from_secs(2);
    let a = h.ev(Event::Exited { id: h.id_of(102), status: ExitStatus::Signal(9) });
    assert_eq!(spawns(&a), 0);
    h.ready_all(); // new0 ready: old 101 asked to stop, new1 spawned
    h.ready_all();
    h.ev(Event::Exited { id: h.id_of(101), status: ExitStatus::Code(0) });
    assert!(!(h.m.state() == MasterState::Restarting));
    assert_eq!(h.m.workers().count(), 2);
}

#[test]
fn stop_terms_then_kills_then_exits_zero() {
    let mut h = running(mongo(2));
    let a = h.ev(Event::Stop { signal: "SIGTERM" });
    assert_eq!(h.terms(&a).len(), 2);
    let a = h.advance(Duration::from_secs(4));
    assert_eq!(h.kills(&a).len(), 2);
    h.ev(Event::Exited { id: h.id_of(101), status: ExitStatus::Signal(9) });
    let a = h.ev(Event::Exited { id: h.id_of(102), status: ExitStatus::Signal(9) });
    assert_eq!(exit_code(&a), Some(0));
}

#[test]
fn stop_during_probe_cancels_it() {
    let mut h = running(mongo(2));
    h.restart(mongo(2), true);
    let a = h.ev(Event::Stop { signal: "SIGINT" });
    assert!(a.contains(&Action::CancelProbe));
    assert_eq!(replies(&a), vec!["NACK stopping"]);
}

/// The sd_notify(3) notifications of these actions, as (kind, STATUS text).
fn notified(a: &[Action]) -> Vec<(&'static str, String)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Announce(Announce::Ready(s)) => Some(("READY", s.clone())),
            Action::Announce(Announce::Reloading(s)) => Some(("RELOADING", s.clone())),
            Action::Announce(Announce::Stopping(s)) => Some(("STOPPING", s.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn service_manager_hears_ready_reloading_and_stopping() {
    let mut h = H::new(mongo(2));
    let a = h.ev(Event::Start);
    assert!(notified(&a).is_empty(), "not ready before the workers");
    let ids: Vec<_> = h.m.workers().map(|w| w.id).collect();
    assert!(notified(&h.ev(Event::Ready { id: ids[0] })).is_empty());
    let a = h.ev(Event::Ready { id: ids[1] });
    assert_eq!(notified(&a), vec![("READY", "running: generation 1, 2 of 2 workers ready".to_string())]);
    // Refused after being taken up: RELOADING then READY.
    let a = h.restart(mongo(1), false);
    let n = notified(&a);
    assert_eq!(n.iter().map(|x| x.0).collect::<Vec<_>>(), vec!["RELOADING", "READY"]);
    assert!(n[1].1.ends_with("zero-downtime restart refused: no workers"), "{:?}", n);
    // Taken up, then in flight: the second request sends nothing.
    assert_eq!(notified(&h.restart(mongo(2), false)).len(), 1);
    assert!(notified(&h.restart(mongo(2), false)).is_empty());
    h.probe_ok();
    let mut done = Vec::new();
    for _ in 0..2 {
        let a = h.ready_all();
        done.extend(notified(&a));
        let old: Vec<u32> = h.m.workers().filter(|w| w.asked_to_stop()).filter_map(|w| w.pid).collect();
        for pid in old {
            let id = h.id_of(pid);
            done.extend(notified(&h.ev(Event::Exited { id, status: ExitStatus::Code(0) })));
        }
    }
    assert_eq!(done, vec![("READY", "running: generation 2, 2 of 2 workers ready; zero-downtime restart complete".to_string())]);
    let a = h.ev(Event::Stop { signal: "SIGTERM" });
    assert_eq!(notified(&a), vec![("STOPPING", "stopping (SIGTERM): 2 workers".to_string())]);
}

#[test]
fn idle_master_has_no_deadline() {
    let h = running(cfg(r#"{"driver":"mongodb","workers":2,"watchdogTimeout":0}"#));
    assert_eq!(h.m.next_deadline(), None);
    // With a watchdog (the built-in worker's default) the one deadline is
    // the earliest heartbeat due, and each heartbeat moves it.
    let mut h = running(mongo(2));
    assert_eq!(h.m.next_deadline(), Some(h.now + Duration::from_secs(30)));
    h.now += Duration::from_secs(10);
    for id in h.m.workers.ids() {
        h.ev(Event::Heartbeat { id, trigger: false });
    }
    assert_eq!(h.m.next_deadline(), Some(h.now + Duration::from_secs(30)));
}

#[test]
fn upgrade_is_let_through_in_running_and_lockout_only() {
    let up = |h: &mut H| h.ev(Event::Upgrade { client: 9, wait: false, restart: true });
    let mut h = H::new(mongo(2));
    h.ev(Event::Start);
    h.ready_all();
    assert_eq!(up(&mut h), vec![Action::Upgrade { client: 9, wait: false, restart: true }]);
    // Probing, then rolling: refused, the restart goes on.
    h.restart(mongo(2), false);
    let nack = vec!["NACK restart in flight".to_string()];
    assert_eq!(replies(&up(&mut h)), nack);
    h.probe_ok();
    assert_eq!(replies(&up(&mut h)), nack);
    // Lockout (a new worker dies): let through, the one way out without downtime.
    let new = h.m.workers().find(|w| w.generation == 2).unwrap().id;
    h.ev(Event::Exited { id: new, status: ExitStatus::Code(1) });
    assert_eq!(h.m.state(), MasterState::Lockout);
    assert_eq!(up(&mut h), vec![Action::Upgrade { client: 9, wait: false, restart: true }]);
    h.ev(Event::Stop { signal: "SIGTERM" });
    assert_eq!(replies(&up(&mut h)), vec!["NACK stopping"]);
}

#[test]
fn snapshot_and_resume_keep_the_workers_and_clear_the_lockout() {
    let mut h = H::new(mongo(2));
    h.ev(Event::Start);
    h.ready_all();
    h.restart(mongo(2), false);
    h.probe_ok();
    let new = h.m.workers().find(|w| w.generation == 2).unwrap().id;
    h.ev(Event::Exited { id: new, status: ExitStatus::Code(1) });
    assert_eq!(h.m.state(), MasterState::Lockout);
    let fds = |id: WorkerId| Some(WorkerFds { pidfd: None, notify: Some(id.0 as i32), output: None, control: id.0 as i32 + 1000, ..Default::default() });
    let snap = h.m.snapshot(h.now, fds).unwrap();
    assert!(snap.lockout);
    let r = Master::resume(h.m.config.clone(), &snap, h.now);
    assert_eq!(r.state(), MasterState::Running);
    assert_eq!(r.generation(), 2);
    let pids = |m: &Master| m.workers().map(|w| (w.pid, w.generation, w.index, w.state())).collect::<Vec<_>>();
    assert_eq!(pids(&r), pids(&h.m));
    let st = r.status(1, SystemTime::UNIX_EPOCH);
    assert_eq!(st.last_restart.unwrap().outcome, Outcome::Aborted);
    // A worker without a pid yet cannot be handed over.
    let mut h2 = H::new(mongo(2));
    h2.m.handle(Event::Start, h2.now, h2.wall());
    assert!(h2.m.snapshot(h2.now, fds).is_err());
}

/// Workers that report with sd_notify(3) are handed over like any other:
/// where their reports count, their last STATUS= and their main process.
#[test]
fn sd_notify_workers_are_handed_over() {
    let mut h = H::new(cfg(r#"{"driver":"mongodb","workers":2,"notify":"systemd"}"#));
    h.ev(Event::Start);
    h.ready_all();
    let id = h.m.workers().next().unwrap().id;
    h.ev(Event::Status { id, text: "serving".into() });
    h.ev(Event::MainPid { id, pid: 4242 });
    let fds = |id: WorkerId| Some(WorkerFds { control: id.0 as i32 + 100, main_pidfd: Some(id.0 as i32 + 200), ..Default::default() });
    let snap = h.m.snapshot(h.now, fds).expect("sd_notify workers can be handed over");
    let r = Master::resume(h.m.config.clone(), &snap, h.now);
    let table = |m: &Master| m.workers().map(|w| (w.id, w.reports, w.status.clone(), w.main_pid)).collect::<Vec<_>>();
    assert_eq!(table(&r), table(&h.m));
    assert_eq!(table(&r)[0], (id, crate::config::Notify::Systemd, Some("serving".to_string()), Some(4242)));
}

/// Each worker is killed after the `shutdownTimeout` of the config it was
/// spawned with: old workers drained by a rollout after the old one, a new
/// worker stopped by an abort or by a stop after the new one.
#[test]
fn each_worker_lives_by_the_timeouts_it_was_spawned_with() {
    let long = || cfg(r#"{"driver":"mongodb","workers":2,"readyTimeout":5,"shutdownTimeout":9,"minReady":0}"#);
    // The rollout drains the old workers: 3 s (theirs), not 9 s.
    let mut h = running(mongo(2));
    h.restart(long(), false);
    h.probe_ok();
    h.ready_all();
    h.ready_all();
    let old: Vec<u32> = h.m.workers().filter(|w| w.generation == 1).filter_map(|w| w.pid).collect();
    assert_eq!(old.len(), 2);
    assert!(h.m.workers().filter(|w| w.generation == 1).all(|w| w.asked_to_stop()));
    let a = h.advance(Duration::from_millis(3100));
    assert_eq!(h.kills(&a), old, "the old workers' own shutdownTimeout");
    // A new worker not ready in time aborts the rollout and is stopped: 9 s
    // (its own), not 3 s.
    let mut h = running(mongo(2));
    h.restart(long(), false);
    h.probe_ok();
    let a = h.advance(Duration::from_secs(6));
    assert_eq!(h.m.state(), MasterState::Lockout);
    let failed = h.terms(&a);
    assert_eq!(failed.len(), 1);
    let a = h.advance(Duration::from_secs(4));
    assert!(h.kills(&a).is_empty(), "killed after the old config's 3 s");
    let a = h.advance(Duration::from_secs(6));
    assert_eq!(h.kills(&a), failed);
    // A stop in the middle of a rollout: each its own.
    let mut h = running(mongo(2));
    h.restart(long(), false);
    h.probe_ok();
    let new: Vec<u32> = h.m.workers().filter(|w| w.generation == 2).filter_map(|w| w.pid).collect();
    h.ev(Event::Stop { signal: "SIGTERM" });
    let a = h.advance(Duration::from_millis(3100));
    assert_eq!(h.kills(&a), vec![101, 102]);
    let a = h.advance(Duration::from_secs(6));
    assert_eq!(h.kills(&a), new);
}

/// The ids of the worker table survive an upgrade: the new image's table
/// is the old one's, with the timeouts each worker was spawned with.
#[test]
fn resume_keeps_the_ids_and_the_timeouts() {
    let mut h = running(mongo(2));
    h.restart(cfg(r#"{"driver":"mongodb","workers":2,"readyTimeout":7,"shutdownTimeout":11,"minReady":0}"#), false);
    h.probe_ok();
    h.ready_all();
    let fds = |id: WorkerId| Some(WorkerFds { pidfd: None, notify: None, output: None, control: id.0 as i32 + 100, ..Default::default() });
    let snap = h.m.snapshot(h.now, fds).unwrap();
    let r = Master::resume(h.m.config.clone(), &snap, h.now);
    let table = |m: &Master| m.workers().map(|w| (w.id, w.pid, w.generation, w.timeouts, w.state())).collect::<Vec<_>>();
    assert_eq!(table(&r), table(&h.m));
    assert!(r.workers().any(|w| w.timeouts.shutdown == Duration::from_secs(11)));
    assert!(r.workers().any(|w| w.timeouts.shutdown == Duration::from_secs(3)));
    assert_eq!(r.workers.next_id(), h.m.workers.next_id(), "no id is handed out twice");
}

/// Upgrading: handled as before the upgrade, until an event moves the
/// master on, which refuses the upgrade; a failure of the loop goes back.
#[test]
fn an_upgrade_in_flight_yields_to_a_restart_and_to_a_stop() {
    let up = |h: &mut H| h.ev(Event::Upgrade { client: 9, wait: false, restart: true });
    let mut h = running(mongo(2));
    up(&mut h);
    assert_eq!(h.m.phase(), Phase::Upgrading);
    assert_eq!(h.m.state(), MasterState::Upgrading);
    assert!(!h.m.status(1, SystemTime::UNIX_EPOCH).lockout);
    assert_eq!(replies(&up(&mut h)), vec!["NACK upgrade not possible: another upgrade is in progress"]);
    // The loop could not: back to Running, the client answered.
    let a = h.ev(Event::UpgradeFailed(Refused::new(Reason::UpgradeCheckFailed, "broken")));
    assert_eq!(replies(&a), vec!["NACK upgrade check failed: broken"]);
    assert_eq!(h.m.phase(), Phase::Running);
    // A restart taken up in the same batch wins: the upgrade is off.
    up(&mut h);
    let a = h.restart(mongo(2), false);
    assert!(a.contains(&Action::CancelUpgrade));
    assert!(a.iter().any(|a| matches!(a, Action::Probe { .. })));
    assert_eq!(replies(&a), vec!["NACK restart in flight"]);
    assert_eq!(h.m.phase(), Phase::Probing);
    // From lockout a restart is refused and the upgrade goes on.
    let new = h.probe_ok().iter().find_map(|a| match a {
        Action::Spawn { id, .. } => Some(*id),
        _ => None,
    });
    h.ev(Event::Exited { id: new.unwrap(), status: ExitStatus::Code(1) });
    assert_eq!(h.m.phase(), Phase::Lockout);
    up(&mut h);
    let a = h.restart(mongo(2), false);
    assert_eq!(replies(&a), vec!["NACK aborted restart"]);
    assert!(!a.contains(&Action::CancelUpgrade));
    assert_eq!((h.m.phase(), h.m.state()), (Phase::Upgrading, MasterState::Upgrading));
    assert!(h.m.status(1, SystemTime::UNIX_EPOCH).lockout, "upgrading from a lockout");
    // A stop wins too.
    let a = h.ev(Event::Stop { signal: "SIGTERM" });
    assert!(a.contains(&Action::CancelUpgrade));
    assert!(replies(&a).contains(&"NACK stopping".to_string()));
    assert_eq!(h.m.phase(), Phase::Stopping);
}

/// The new image answers the client that asked for the upgrade and rolls
/// the workers over as any restart.
#[test]
fn a_resumed_master_answers_and_rolls_over() {
    let resumed = |client: Option<ClientId>, wait: bool, restart: bool| {
        let mut h = running(mongo(2));
        let a = h.ev(Event::Resumed { client, wait, restart: restart.then(|| Ok(mongo(2))) });
        (replies(&a), a.iter().any(|a| matches!(a, Action::Probe { .. })), h)
    };
    assert_eq!(resumed(Some(3), false, false).0, vec![format!("ACK upgraded {}", crate::VERSION)]);
    let (r, probed, _) = resumed(Some(3), false, true);
    assert_eq!((r, probed), (vec![format!("ACK upgraded {}", crate::VERSION)], true));
    // UPGRADE WAIT: the client is answered when the roll-over ends.
    let (r, probed, mut h) = resumed(Some(3), true, true);
    assert!(r.is_empty() && probed);
    h.probe_ok();
    h.ready_all();
    let a = h.ready_all();
    let mut done = Vec::new();
    for pid in h.terms(&a).into_iter().chain([101]) {
        let id = h.m.workers().find(|w| w.pid == Some(pid)).map(|w| w.id);
        if let Some(id) = id {
            done.extend(replies(&h.ev(Event::Exited { id, status: ExitStatus::Code(0) })));
        }
    }
    assert_eq!(done, vec!["ACK complete"]);
}

mod safety;
mod fallback;

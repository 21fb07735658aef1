//! Unit tests of what keeps a rollout safe after `READY=1`: the soak
//! (`minReady`) and `maxSurge`, the watchdog and hung workers, canary
//! restarts, and the refusal while the serving generation is not ready.

use super::*;

/// A config with neither soak nor watchdog, plus `extra` keys (later keys
/// win).
fn with(extra: &str) -> Config {
    cfg(&format!(r#"{{"driver":"mongodb","workers":2,"readyTimeout":5,"shutdownTimeout":3,"minReady":0,"watchdogTimeout":0{}}}"#, extra))
}

/// The typed facts of workers' health and canaries in these actions.
fn facts(a: &[Action]) -> Vec<Progress> {
    a.iter()
        .filter_map(|a| match a {
            Action::Progress(p) if p.logged_here() => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn events(a: &[Action]) -> Vec<&'static str> {
    a.iter()
        .filter_map(|a| match a {
            Action::Progress(p) if p.logged_here() => Some(p.event()),
            _ => None,
        })
        .collect()
}

impl H {
    fn life(&self, pid: u32) -> Life {
        self.m.workers().find(|w| w.pid == Some(pid)).unwrap().life
    }
    fn pids_of(&self, generation: u32) -> Vec<u32> {
        self.m.workers().filter(|w| w.generation == generation).filter_map(|w| w.pid).collect()
    }
    fn ready_pid(&mut self, pid: u32) -> Vec<Action> {
        let id = self.id_of(pid);
        self.ev(Event::Ready { id })
    }
    fn exit_pid(&mut self, pid: u32, code: i32) -> Vec<Action> {
        let id = self.id_of(pid);
        self.ev(Event::Exited { id, status: ExitStatus::Code(code) })
    }
    /// A restart taken up and its probe passed.
    fn roll(&mut self, c: Config, wait: bool) -> Vec<Action> {
        let mut a = self.restart(c, wait);
        a.extend(self.probe_ok());
        a
    }
    fn canary(&mut self, c: Config, wait: bool) -> Vec<Action> {
        let mut a = self.ev(Event::Restart { config: Ok(c), by: Requester::Control { client: 1, wait }, canary: true });
        a.extend(self.probe_ok());
        a
    }
    fn starting(&self) -> usize {
        self.m.workers().filter(|w| matches!(w.life, Life::Starting { .. })).count()
    }
}

#[test]
fn a_new_worker_soaks_before_an_old_one_goes() {
    let mut h = running(with(""));
    h.roll(with(r#","minReady":2"#), true);
    assert_eq!(h.pids_of(2), vec![103]);
    let a = h.ready_pid(103);
    assert!(matches!(h.life(103), Life::Soaking { .. }), "{:?}", h.life(103));
    assert!(h.terms(&a).is_empty(), "no old worker goes while the new one soaks");
    assert_eq!(events(&a), vec!["worker.soak"]);
    assert_eq!(spawns(&a), 1, "a soaking worker makes room for the next (maxSurge 1)");
    assert_eq!(h.m.status(1, SystemTime::now()).workers.iter().filter(|w| w.state == WorkerState::Soaking).count(), 1);
    h.now += Duration::from_millis(500);
    h.ready_pid(104);
    // 103's soak ends first: one old worker goes; then 104's.
    let a = h.advance(Duration::from_millis(1600));
    assert_eq!((events(&a), h.terms(&a)), (vec!["worker.passed"], vec![101]));
    let a = h.advance(Duration::from_millis(500));
    assert_eq!((events(&a), h.terms(&a)), (vec!["worker.passed"], vec![102]));
    assert!(replies(&h.exit_pid(101, 0)).is_empty());
    assert_eq!(replies(&h.exit_pid(102, 0)), vec!["ACK complete"]);
    assert_eq!(h.m.state(), MasterState::Running);
}

#[test]
fn an_exit_inside_the_soak_aborts_and_leaves_the_old_fleet_whole() {
    let mut h = running(with(""));
    h.roll(with(r#","minReady":5"#), true);
    h.ready_pid(103);
    h.now += Duration::from_secs(1);
    let a = h.exit_pid(103, 3);
    let r = replies(&a);
    assert!(r[0].starts_with("NACK aborted: new worker exited: new worker 103 exited (exit status 3) after READY=1"), "{:?}", r);
    assert_eq!(h.m.state(), MasterState::Lockout);
    // The other new worker (starting) goes; the old ones were never touched.
    assert_eq!(h.terms(&a), vec![104]);
    assert!(h.pids_of(1).iter().all(|&p| h.life(p) == Life::Ready));
    assert!(!h.terms(&a).contains(&101) && !h.terms(&a).contains(&102));
}

#[test]
fn an_error_inside_the_soak_aborts_one_after_it_is_only_logged() {
    for (text, soak) in [("STOPPING=1", true), ("ERRNO=5 (Input/output error)", true), ("STOPPING=1", false)] {
        let mut h = running(with(""));
        h.roll(with(if soak { r#","minReady":5"# } else { "" }), false);
        h.ready_pid(103);
        let id = h.id_of(103);
        let a = h.ev(Event::NotifyFailure { id, text: text.into() });
        if soak {
            assert_eq!(h.m.state(), MasterState::Lockout, "{}", text);
            assert_eq!(h.terms(&a), vec![103, 104]);
        } else {
            assert_eq!(h.m.state(), MasterState::Restarting, "passed: only logged");
            assert!(h.terms(&a).is_empty());
        }
    }
}

/// `maxSurge` bounds the new workers starting, not those soaking: with 4
/// workers and maxSurge 2, every new worker starts before the first soak
/// is over, and an old worker goes only for a new one that passed.
#[test]
fn max_surge_bounds_the_starting_workers_and_soaks_overlap() {
    let four = |extra: &str| with(&format!(r#","workers":4{}"#, extra));
    let mut h = running(four(""));
    let a = h.restart(four(r#","minReady":3,"maxSurge":2"#), true);
    assert_eq!(spawns(&a), 0);
    let a = h.probe_ok();
    assert_eq!(spawns(&a), 2);
    let mut most_alive = 0;
    for step in 0..4 {
        h.now += Duration::from_millis(100);
        let new_starting: Vec<u32> = h.pids_of(2).into_iter().filter(|&p| matches!(h.life(p), Life::Starting { .. })).collect();
        let a = h.ready_pid(new_starting[0]);
        assert!(h.terms(&a).is_empty(), "step {}: nothing passed yet", step);
        assert!(h.starting() <= 2, "step {}: {} starting", step, h.starting());
        most_alive = most_alive.max(h.m.workers().count());
    }
    assert_eq!(h.pids_of(2).len(), 4, "all four started within one soak");
    assert_eq!(most_alive, 4 + 4, "N old + N soaking (maxSurge bounds the starting ones)");
    // The soaks end one after the other: one old worker each, oldest first.
    let mut terms = Vec::new();
    for _ in 0..4 {
        let a = h.advance(Duration::from_millis(100));
        terms.extend(h.terms(&a));
    }
    let a = h.advance(Duration::from_secs(3));
    terms.extend(h.terms(&a));
    assert_eq!(terms, vec![101, 102, 103, 104]);
    for pid in [101, 102, 103, 104] {
        h.exit_pid(pid, 0);
    }
    assert_eq!(h.m.state(), MasterState::Running);
}

#[test]
fn a_hung_worker_is_replaced_new_before_old() {
    let mut h = running(with(r#","watchdogTimeout":2"#));
    let (hung, other) = (h.id_of(101), h.id_of(102));
    h.now += Duration::from_secs(1);
    h.ev(Event::Heartbeat { id: other, trigger: false });
    let a = h.advance(Duration::from_millis(999));
    assert!(a.is_empty(), "{:?}", a);
    // 101 sent nothing for 2 s: hung, a replacement starts, no signal yet.
    let a = h.advance(Duration::from_millis(1));
    let f = facts(&a);
    assert!(matches!(f[0], Progress::Hung { id, then: HungThen::Replaced, .. } if id == hung), "{:?}", f);
    assert_eq!(spawns(&a), 1);
    assert!(h.signaled(&a, libc::SIGABRT).is_empty() && h.terms(&a).is_empty() && h.kills(&a).is_empty());
    assert_eq!(h.life(101), Life::Hung);
    let st = h.m.status(1, SystemTime::now());
    assert_eq!((st.state, st.workers_hung), (MasterState::NotReady, 1));
    assert_eq!(replies(&h.restart(with(""), false)), vec!["NACK not ready: not every worker of the current generation is ready"]);
    // The replacement is ready: SIGABRT to the hung one, SIGKILL after its
    // shutdownTimeout; its exit is not answered with a respawn.
    let a = h.ready_pid(103);
    assert_eq!(h.signaled(&a, libc::SIGABRT), vec![101]);
    let mut kills = Vec::new();
    for _ in 0..4 {
        for id in [other, h.id_of(103)] {
            h.ev(Event::Heartbeat { id, trigger: false });
        }
        let a = h.advance(Duration::from_millis(800));
        kills.extend(h.kills(&a));
    }
    assert_eq!(kills, vec![101]);
    let a = h.ev(Event::Exited { id: hung, status: ExitStatus::Signal(9) });
    assert_eq!(spawns(&a), 0);
    assert_eq!(h.m.state(), MasterState::Running);
    assert_eq!(h.pids_of(1).len(), 2);
}

#[test]
fn heartbeats_keep_a_worker_alive_and_trigger_hangs_it_at_once() {
    let mut h = running(with(r#","watchdogTimeout":2"#));
    for _ in 0..10 {
        h.now += Duration::from_millis(1500);
        for id in h.m.workers.ids() {
            h.ev(Event::Heartbeat { id, trigger: false });
        }
        assert!(facts(&h.advance(Duration::ZERO)).is_empty());
    }
    let id = h.id_of(102);
    h.ev(Event::Heartbeat { id, trigger: true });
    assert_eq!(h.m.next_deadline(), Some(h.now));
    let a = h.advance(Duration::ZERO);
    assert_eq!(events(&a), vec!["worker.hung"]);
    // A worker without a watchdog ignores heartbeats.
    let mut h = running(with(r#","watchdogTimeout":0"#));
    let id = h.id_of(101);
    h.ev(Event::Heartbeat { id, trigger: true });
    assert_eq!(h.m.next_deadline(), None);
}

#[test]
fn a_hung_worker_aborts_a_restart_and_is_killed_in_lockout() {
    // An old worker hangs in the middle of a restart.
    let mut h = running(with(r#","watchdogTimeout":2"#));
    h.roll(with(r#","watchdogTimeout":2,"minReady":5"#), true);
    h.ready_pid(103);
    let a = h.advance(Duration::from_millis(2100));
    let r = replies(&a);
    assert!(r[0].starts_with("NACK aborted: worker hung: old worker 101 (generation 1) sent no heartbeat"), "{:?}", r);
    assert_eq!(h.m.state(), MasterState::Lockout);
    assert!(h.signaled(&a, libc::SIGABRT).contains(&101));
    // A new one, soaking: the same.
    let mut h = running(with(r#","watchdogTimeout":0"#));
    h.roll(with(r#","watchdogTimeout":2,"minReady":5"#), false);
    h.ready_pid(103);
    let a = h.advance(Duration::from_millis(2100));
    assert!(matches!(facts(&a)[0], Progress::Hung { then: HungThen::AbortsRestart, .. }));
    assert_eq!(h.signaled(&a, libc::SIGABRT), vec![103]);
    assert_eq!(h.terms(&a), vec![104], "the starting new worker goes too");
    // In lockout nothing replaces a hung worker: SIGABRT at once.
    let mut h = running(with(r#","watchdogTimeout":30"#));
    h.roll(with(""), false);
    h.exit_pid(103, 1);
    let a = h.advance(Duration::from_secs(31));
    assert!(matches!(facts(&a)[..], [Progress::Hung { then: HungThen::Killed, .. }, Progress::Hung { then: HungThen::Killed, .. }]));
    assert_eq!(spawns(&a), 0);
    assert_eq!(h.signaled(&a, libc::SIGABRT), vec![101, 102]);
}

#[test]
fn a_canary_stands_beside_the_old_fleet_then_is_promoted() {
    let mut h = running(with(""));
    let a = h.canary(with(r#","minReady":2"#), true);
    assert_eq!(spawns(&a), 1);
    assert_eq!(events(&a), vec!["canary.start"]);
    assert_eq!((h.m.state(), h.m.generation()), (MasterState::Canary, 1), "the old generation still serves");
    let a = h.ready_pid(103);
    assert!(h.terms(&a).is_empty() && spawns(&a) == 0, "a canary holds");
    let a = h.advance(Duration::from_secs(2));
    assert_eq!(events(&a), vec!["worker.passed", "canary.ready"]);
    assert_eq!(replies(&a), vec!["ACK canary"]);
    let st = h.m.status(1, SystemTime::now());
    let canaries: Vec<_> = st.workers.iter().filter(|w| w.canary).map(|w| w.pid).collect();
    assert_eq!((st.state, canaries), (MasterState::Canary, vec![Some(103)]));
    // Both generations serve as long as nobody decides; restarts and
    // upgrades are refused meanwhile.
    assert_eq!(replies(&h.restart(with(""), false)), vec!["NACK restart in flight"]);
    assert_eq!(replies(&h.ev(Event::Upgrade { client: 9, wait: false, restart: true })), vec!["NACK restart in flight"]);
    let a = h.advance(Duration::from_secs(3600));
    assert!(a.is_empty());
    let a = h.ev(Event::Promote { client: 2, wait: true });
    assert_eq!(events(&a), vec!["canary.promote"]);
    assert!(replies(&a).is_empty(), "PROMOTE WAIT: answered when the rollout ends");
    assert_eq!((h.terms(&a), spawns(&a)), (vec![101], 1));
    assert_eq!((h.m.state(), h.m.generation()), (MasterState::Restarting, 2));
    h.ready_pid(104);
    let a = h.advance(Duration::from_secs(2));
    assert_eq!(h.terms(&a), vec![102]);
    h.exit_pid(101, 0);
    assert_eq!(replies(&h.exit_pid(102, 0)), vec!["ACK complete"]);
    assert!(!h.m.status(1, SystemTime::now()).workers.iter().any(|w| w.canary));
}

#[test]
fn a_rolled_back_canary_leaves_the_fleet_as_it_was() {
    let mut h = running(with(""));
    h.canary(with(""), false);
    h.ready_pid(103);
    let a = h.ev(Event::Rollback { client: 2 });
    assert_eq!((replies(&a), h.terms(&a), events(&a)), (vec!["ACK".to_string()], vec![103], vec!["canary.rollback"]));
    assert_eq!(h.m.phase(), Phase::Running);
    h.exit_pid(103, 0);
    let st = h.m.status(1, SystemTime::now());
    assert_eq!((st.state, st.lockout, st.generation), (MasterState::Running, false, 1));
    assert_eq!(st.last_restart.unwrap().outcome, Outcome::RolledBack);
    assert_eq!(h.pids_of(1), vec![101, 102]);
    assert!(h.pids_of(1).iter().all(|&p| h.life(p) == Life::Ready));
    // No lockout; the next restart has a generation of its own.
    h.roll(with(""), false);
    assert_eq!(h.m.generation(), 3);
}

#[test]
fn a_canary_that_dies_is_a_failed_restart() {
    let mut h = running(with(""));
    h.canary(with(r#","minReady":5"#), true);
    h.ready_pid(103);
    let a = h.exit_pid(103, 1);
    assert!(replies(&a)[0].starts_with("NACK aborted: new worker exited"), "{:?}", replies(&a));
    assert_eq!(h.m.state(), MasterState::Lockout);
    assert_eq!(h.pids_of(1), vec![101, 102]);
    assert!(h.terms(&a).is_empty());
    assert_eq!(replies(&h.ev(Event::Promote { client: 2, wait: false })), vec!["NACK no canary: no canary restart in progress"]);
}

#[test]
fn promote_waits_for_the_canary_to_stand_and_rollback_does_not() {
    let mut h = running(with(""));
    assert_eq!(replies(&h.ev(Event::Rollback { client: 2 })), vec!["NACK no canary: no canary restart in progress"]);
    h.canary(with(r#","minReady":5"#), true);
    let a = h.ev(Event::Promote { client: 2, wait: false });
    assert_eq!(replies(&a), vec!["NACK no canary: the canary has not passed its soak yet (see zdrestartctl status)"]);
    h.ready_pid(103);
    let a = h.ev(Event::Rollback { client: 2 });
    // The canary's RESTART CANARY WAIT client hears it never stood.
    assert_eq!(replies(&a), vec!["NACK rolled back: before the canary stood (control socket)", "ACK"]);
    assert_eq!(h.terms(&a), vec![103]);
}

#[test]
fn canary_timeout_does_the_canary_action() {
    for (action, phase) in [("rollback", Phase::Running), ("promote", Phase::Rolling)] {
        let mut h = running(with(""));
        h.canary(with(&format!(r#","canaryTimeout":60,"canaryAction":"{}""#, action)), false);
        h.ready_pid(103);
        assert_eq!(h.m.next_deadline(), Some(h.now + Duration::from_secs(60)));
        assert!(h.advance(Duration::from_secs(59)).is_empty());
        let a = h.advance(Duration::from_secs(1));
        assert_eq!(events(&a), vec![if action == "promote" { "canary.promote" } else { "canary.rollback" }]);
        assert!(facts(&a).iter().any(|f| matches!(f,
            Progress::CanaryPromoted { by: CanaryBy::Timeout, .. } | Progress::CanaryRolledBack { by: CanaryBy::Timeout, .. })));
        assert_eq!(h.m.phase(), phase, "{}", action);
    }
}

#[test]
fn while_a_canary_stands_an_old_worker_that_dies_is_respawned_and_a_stop_stops_all() {
    let mut h = running(with(""));
    h.canary(with(""), true);
    h.now += Duration::from_secs(5);
    let a = h.exit_pid(101, 1);
    assert_eq!(spawns(&a), 1, "the old fleet stays whole");
    assert_eq!(h.pids_of(1).len(), 2);
    let a = h.ev(Event::Stop { signal: "SIGTERM" });
    assert_eq!(replies(&a), vec!["NACK stopping"]);
    assert_eq!(h.terms(&a).len(), 3, "the canary and both old workers");
    assert_eq!(replies(&h.ev(Event::Promote { client: 2, wait: false })), vec!["NACK stopping"]);
}

#[test]
fn a_generation_that_is_not_ready_refuses_a_restart() {
    let mut h = H::new(with(""));
    h.ev(Event::Start);
    assert_eq!(h.m.state(), MasterState::NotReady);
    let a = h.restart(with(""), true);
    assert_eq!(replies(&a), vec!["NACK not ready: not every worker of the current generation is ready"]);
    assert!(notified(&a).is_empty(), "refused before it was taken up");
    h.ready_all();
    assert_eq!(h.m.state(), MasterState::Running);
}

/// Every step of a restart is a fact for the loop (streamed, counted), in
/// the order it happens, with where the rollout stands.
#[test]
fn every_step_of_a_restart_is_a_fact() {
    let all = |a: &[Action]| -> Vec<&'static str> {
        a.iter().filter_map(|a| if let Action::Progress(p) = a { Some(p.event()) } else { None }).collect()
    };
    let mut h = running(with(""));
    let a = h.roll(with(""), true);
    assert_eq!(all(&a), vec!["restart.start", "worker.spawn"], "{:?}", a);
    let v = h.m.rollout_view().unwrap();
    assert_eq!((v.generation, v.ready, v.of, v.old), (2, 0, 2, 2));
    let a = h.ready_pid(103);
    assert_eq!(all(&a), vec!["worker.ready", "worker.stop", "worker.spawn"], "{:?}", a);
    let a = h.exit_pid(101, 0);
    assert!(matches!(&facts_all(&a)[..], [Progress::WorkerExited { cause: ExitCause::Stopped, pid: 101, .. }]), "{:?}", a);
    assert_eq!(h.m.rollout_view().map(|v| (v.ready, v.old)), Some((1, 1)));
    h.ready_pid(104);
    let a = h.exit_pid(102, 0);
    assert_eq!(all(&a), vec!["worker.exit", "restart.complete"], "{:?}", a);
    assert!(h.m.rollout_view().is_none());
    // A refusal is a fact too.
    let a = h.ev(Event::Restart { config: Err("bad".into()), by: Requester::Signal, canary: false });
    assert_eq!(all(&a), vec!["restart.refused"], "{:?}", a);
}

fn facts_all(a: &[Action]) -> Vec<Progress> {
    a.iter().filter_map(|a| if let Action::Progress(p) = a { Some(p.clone()) } else { None }).collect()
}

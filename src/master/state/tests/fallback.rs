//! Unit tests of what an abort falls back on: the old workers while one
//! still serves; the new generation once every old one was replaced, told
//! to exit or died. And the fleet a resumed master keeps at `workers`
//! after an upgrade out of a lockout.

use super::*;

/// Two workers soaking 5 s, one new worker starting at a time.
fn soaked() -> Config {
    cfg(r#"{"driver":"mongodb","workers":2,"readyTimeout":30,"shutdownTimeout":3,"minReady":5,"maxSurge":1,"watchdogTimeout":0}"#)
}

fn id(h: &H, pid: u32) -> WorkerId {
    h.id_of(pid)
}

fn live(h: &H) -> Vec<u32> {
    h.m.workers().filter(|w| !w.asked_to_stop()).filter_map(|w| w.pid).collect()
}

fn fds(id: WorkerId) -> Option<WorkerFds> {
    Some(WorkerFds { control: id.0 as i32 + 1000, ..Default::default() })
}

/// The master of the new image after an upgrade of `h` (its new workers'
/// pids from 201).
fn resumed(h: &H) -> H {
    let snap = h.m.snapshot(h.now, fds).unwrap();
    H { m: Master::resume(h.m.config.clone(), &snap, h.now), now: h.now, t0: h.t0, next_pid: 200 }
}

/// `upgrade --wait` (a roll-over) on the resumed master `r`: taken up, no
/// answer yet; its probe passes and it rolls.
fn roll_over_taken_up(r: &mut H) {
    let a = r.ev(Event::Resumed { client: Some(1), wait: true, restart: Some(Ok(soaked())) });
    assert!(replies(&a).is_empty(), "{:?}", replies(&a));
    assert_eq!(r.m.phase(), Phase::Probing);
    r.probe_ok();
    assert_eq!(r.m.phase(), Phase::Rolling);
}

/// Old 101 and 102; new 103 passes its soak, 104 starts; old 101 dies
/// during the rollout (`old_dies`: not respawned) or serves on.
fn one_passed(old_dies: bool) -> H {
    let mut h = running(soaked());
    h.restart(soaked(), true);
    h.probe_ok();
    if old_dies {
        let a = h.ev(Event::Exited { id: id(&h, 101), status: ExitStatus::Signal(9) });
        assert_eq!(spawns(&a), 0, "the new generation replaces it");
    }
    let a = h.ev(Event::Ready { id: id(&h, 103) });
    assert_eq!(spawns(&a), 1, "104 starts while 103 soaks");
    let a = h.advance(Duration::from_secs(5));
    let drained = if old_dies { vec![102] } else { vec![101] };
    assert_eq!(h.terms(&a), drained, "103 passed: the oldest old worker serving goes");
    h
}

/// Steps 1-3 of the chaos soak: the last old worker was told to exit, then
/// the new worker that passed is SIGKILLed. The abort locks out, but the
/// other new worker is all that serves: it is not stopped.
#[test]
fn with_no_old_worker_left_an_abort_keeps_the_new_generation_serving() {
    let mut h = one_passed(true);
    let a = h.ev(Event::Exited { id: id(&h, 103), status: ExitStatus::Signal(9) });
    assert_eq!(h.m.state(), MasterState::Lockout);
    assert_eq!(replies(&a).len(), 1);
    assert!(replies(&a)[0].starts_with("NACK aborted"), "{:?}", replies(&a));
    assert!(h.terms(&a).is_empty(), "104 serves on: {:?}", h.terms(&a));
    assert_eq!(live(&h), vec![104]);
    // It becomes ready in the lockout and serves; the old one drains away.
    h.ev(Event::Ready { id: id(&h, 104) });
    let a = h.ev(Event::Exited { id: id(&h, 102), status: ExitStatus::Code(0) });
    assert_eq!((spawns(&a), exit_code(&a)), (0, None));
    assert_eq!(h.m.workers().map(|w| (w.pid, w.life)).collect::<Vec<_>>(), vec![(Some(104), Life::Ready)]);
}

/// With an old worker still serving, the abort falls back on it as before:
/// the new worker that has not passed is stopped.
#[test]
fn with_an_old_worker_serving_an_abort_stops_the_unproven_new_ones() {
    let mut h = one_passed(false);
    let a = h.ev(Event::Exited { id: id(&h, 103), status: ExitStatus::Signal(9) });
    assert_eq!(h.m.state(), MasterState::Lockout);
    assert_eq!(h.terms(&a), vec![104]);
    assert_eq!(live(&h), vec![102]);
}

/// An old worker hung while it is the last old one serving: the abort
/// cannot fall back on it, so the new ones are kept.
#[test]
fn a_hung_last_old_worker_is_no_fallback() {
    let c = || cfg(r#"{"driver":"mongodb","workers":2,"readyTimeout":30,"shutdownTimeout":3,"minReady":5,"maxSurge":1,"watchdogTimeout":4}"#);
    let mut h = running(c());
    for pid in [101, 102] {
        h.ev(Event::Heartbeat { id: id(&h, pid), trigger: false });
    }
    h.restart(c(), false);
    h.probe_ok();
    h.ev(Event::Exited { id: id(&h, 101), status: ExitStatus::Signal(9) });
    h.ev(Event::Ready { id: id(&h, 103) });
    h.now += Duration::from_secs(3);
    h.ev(Event::Heartbeat { id: id(&h, 103), trigger: false });
    // 102 sends no heartbeat: hung at 4 s, before 103's soak ends.
    let a = h.advance(Duration::from_millis(1500));
    assert_eq!(h.m.state(), MasterState::Lockout);
    assert_eq!(h.signaled(&a, libc::SIGABRT), vec![102]);
    assert!(h.terms(&a).is_empty(), "the new workers serve on: {:?}", h.terms(&a));
    assert_eq!(live(&h), vec![103, 104]);
}

/// The lockout of steps 1-3 as the old code left it (the last old worker
/// draining, nothing else), upgraded: the resumed master respawns the
/// fleet at once, as the serving generation, and the old worker's exit is
/// not answered with one more.
#[test]
fn a_master_resumed_from_a_lockout_makes_its_fleet_whole() {
    let mut h = one_passed(true);
    h.ev(Event::Exited { id: id(&h, 103), status: ExitStatus::Signal(9) });
    h.ev(Event::Exited { id: id(&h, 104), status: ExitStatus::Signal(9) });
    assert_eq!(h.m.state(), MasterState::Lockout);
    let mut r = resumed(&h);
    assert_eq!(r.m.next_deadline(), Some(r.now), "the respawns are due now");
    let a = r.ev(Event::Resumed { client: Some(1), wait: false, restart: None });
    assert!(replies(&a)[0].starts_with("ACK upgraded"), "{:?}", replies(&a));
    let a = r.advance(Duration::ZERO);
    assert_eq!(spawns(&a), 2);
    assert_eq!(r.m.workers().filter(|w| w.generation == 2).filter_map(|w| w.pid).collect::<Vec<_>>(), vec![201, 202]);
    r.ready_all();
    let a = r.ev(Event::Exited { id: id(&r, 102), status: ExitStatus::Code(0) });
    assert_eq!(spawns(&a), 0, "the drained old worker is not replaced: the fleet is whole");
    assert_eq!(r.m.state(), MasterState::Running);
    // A crash of the serving generation is respawned as before.
    r.now += Duration::from_secs(5);
    let a = r.ev(Event::Exited { id: id(&r, 201), status: ExitStatus::Signal(9) });
    assert_eq!(spawns(&a), 1);
}

/// `upgrade --wait` (a roll-over) from that lockout: the roll-over is taken
/// up although the fleet is short, and makes it whole.
#[test]
fn a_short_fleet_is_rolled_over_not_refused() {
    let mut h = one_passed(true);
    h.ev(Event::Exited { id: id(&h, 103), status: ExitStatus::Signal(9) });
    h.ev(Event::Exited { id: id(&h, 104), status: ExitStatus::Signal(9) });
    let mut r = resumed(&h);
    roll_over_taken_up(&mut r);
    r.ev(Event::Exited { id: id(&r, 102), status: ExitStatus::Code(0) });
    for _ in 0..2 {
        r.ready_all();
        r.advance(Duration::from_secs(5));
    }
    assert_eq!(r.m.state(), MasterState::Running);
    assert_eq!(r.m.workers().filter(|w| w.life == Life::Ready).count(), 2);
}

/// Upgraded out of a lockout that kept the old fleet (the new worker died
/// at once): an old worker that dies later is replaced, by one of the
/// serving generation; before, none was (it was not of that generation).
#[test]
fn a_resumed_master_replaces_a_dead_worker_of_the_older_generation() {
    let mut h = running(soaked());
    h.restart(soaked(), false);
    h.probe_ok();
    h.ev(Event::Exited { id: id(&h, 103), status: ExitStatus::Code(1) });
    assert_eq!(h.m.state(), MasterState::Lockout);
    let mut r = resumed(&h);
    assert_eq!(r.m.next_deadline(), None, "a whole fleet: nothing to respawn");
    r.now += Duration::from_secs(5);
    let a = r.ev(Event::Exited { id: id(&r, 101), status: ExitStatus::Signal(9) });
    assert_eq!(spawns(&a), 1);
    assert_eq!(r.m.workers().map(|w| (w.pid, w.generation)).collect::<Vec<_>>(), vec![(Some(102), 1), (Some(201), 2)]);
}

/// Old 101 and 102 serve; new 103 is ready and soaking, 104 starts; 103 is
/// SIGKILLed: the abort falls back on the old workers and stops 104, which
/// is still draining when `upgrade --wait` ends the lockout (the chaos
/// soak's case).
fn aborted_with_a_new_worker_draining() -> H {
    let mut h = running(soaked());
    h.restart(soaked(), false);
    h.probe_ok();
    let a = h.ev(Event::Ready { id: id(&h, 103) });
    assert_eq!(spawns(&a), 1, "104 starts while 103 soaks");
    let a = h.ev(Event::Exited { id: id(&h, 103), status: ExitStatus::Signal(9) });
    assert_eq!(h.m.state(), MasterState::Lockout);
    assert_eq!(h.terms(&a), vec![104]);
    assert_eq!(live(&h), vec![101, 102]);
    h
}

/// The resumed master serves with the old workers: the aborted
/// generation's worker still draining is on its way out for good. It does
/// not make the master "not ready", and its exit is not answered with a
/// respawn (before: a third worker, of the aborted generation's number).
#[test]
fn a_new_worker_draining_after_an_abort_is_gone_for_good_in_the_resumed_master() {
    let h = aborted_with_a_new_worker_draining();
    let mut r = resumed(&h);
    assert_eq!(r.m.next_deadline().filter(|&d| d <= r.now), None, "a whole fleet: nothing to respawn");
    r.ev(Event::Resumed { client: Some(1), wait: false, restart: None });
    assert_eq!(r.m.state(), MasterState::Running);
    r.now += Duration::from_secs(2);
    let a = r.ev(Event::Exited { id: id(&r, 104), status: ExitStatus::Code(0) });
    assert_eq!(spawns(&a), 0, "104 was asked to exit for good");
    assert_eq!(live(&r), vec![101, 102]);
    assert_eq!(r.advance(Duration::from_secs(1)).len(), 0, "and no respawn is due later");
}

/// `upgrade --wait` from that lockout: the roll-over is taken up, not
/// refused as `not ready`, and completes with the fleet at `workers`.
#[test]
fn the_roll_over_after_an_abort_with_a_new_worker_draining_is_taken_up() {
    let h = aborted_with_a_new_worker_draining();
    let mut r = resumed(&h);
    roll_over_taken_up(&mut r);
    r.ev(Event::Exited { id: id(&r, 104), status: ExitStatus::Code(0) });
    for _ in 0..2 {
        r.ready_all();
        r.advance(Duration::from_secs(5));
    }
    for pid in [101, 102] {
        r.ev(Event::Exited { id: id(&r, pid), status: ExitStatus::Code(0) });
    }
    assert_eq!(r.m.state(), MasterState::Running);
    assert_eq!(r.m.workers().filter(|w| w.life == Life::Ready).count(), 2);
    assert_eq!(r.m.workers().count(), 2);
}

//! The master under real operations (zdrestart(8), zdrestart-worker(7)): a worker's record that forges
//! the master's, the pidfile lock, signals from the first instant, process
//! groups and orphans, inherited fds. Real master, real workers on loopback.
#![deny(unsafe_code)]

mod common;

#[allow(unused_imports)]
use common::ops::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Item 5: a worker's record can never pass for the master's

#[test]
fn a_worker_cannot_forge_a_master_record() {
    let m = Master::for_test().set("worker", fault_worker_json("forge-master.sh")).start();
    let workers = m.wait_worker_count(2, T);
    // Both workers wrote the forged line; the master logged each of them.
    let forged: Vec<Value> = m.wait_for("the two forged records", T, |recs| {
        let v: Vec<Value> = recs.iter().filter(|r| r["worker_event"] == "restart.complete").cloned().collect();
        (v.len() >= 2).then_some(v)
    });
    for r in &forged {
        assert_eq!(r["component"], "worker", "{}", r);
        assert_eq!(r["worker_component"], "master", "{}", r);
        assert!(r.get("event").is_none(), "the worker's event is not an event of the log: {}", r);
        assert_eq!(r["pid"].as_i64(), Some(m.pid() as i64), "{}", r);
        assert_ne!(r["hostname"], "forged", "{}", r);
        assert!(workers.contains(&worker_pid_of(r).unwrap()), "{}", r);
    }
    // Proven absent after them: no restart.complete record at all, and every
    // record that says component "master" is the master's own.
    let recs = m.log_records();
    assert!(recs.iter().all(|r| event_of(r) != "restart.complete"), "a forged event passed");
    for r in recs.iter().filter(|r| r["component"] == "master") {
        assert!(worker_pid_of(r).is_none() || r.get("event").is_some(), "{}", r);
        assert_ne!(r["msg"], "Zero-downtime restart complete", "{}", r);
    }
}

// ---------------------------------------------------------------------------
// Item 4: the pidfile's liveness is a lock the master holds

/// `flock -n -s FILE true`: the shell's way (init script) to ask whether a
/// master holds the pidfile: exit 1 while one does, 0 otherwise.
fn flock_says_held(pidfile: &std::path::Path) -> bool {
    let (st, _, err) = run_cmd(std::process::Command::new("flock").args(["-n", "-s"]).arg(pidfile).arg("true"), T);
    match st.code() {
        Some(0) => false,
        Some(1) => true,
        other => panic!("flock: {:?}: {}", other, err),
    }
}

#[test]
fn a_stale_pidfile_naming_a_live_process_does_not_refuse_the_start() {
    // An unrelated live process whose pid a stale pidfile names (a reused pid).
    let dir = TestDir::for_test();
    let sleeper = ChildGuard::spawn(std::process::Command::new("sleep").arg("1000"), dir.join("none"));
    let b = Master::for_test();
    let pidfile = b.dir().join("zdrestart.pid");
    std::fs::write(&pidfile, format!("{}\n", sleeper.pid())).unwrap();
    assert!(!flock_says_held(&pidfile));

    let mut m = b.start();
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", m.pid()));
    assert!(flock_says_held(&pidfile), "the running master holds the lock on its pidfile");
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit(T).code(), Some(0));
    assert!(!pidfile.exists(), "pidfile removed at exit");
    assert!(pid_alive(sleeper.pid()), "the unrelated process was left alone");
}

#[test]
fn a_live_master_is_never_started_twice_and_a_dead_one_never_blocks() {
    let mut first = Master::for_test().start();
    let pidfile = first.pidfile.clone().unwrap();
    // A second master on the same pidfile (own port and log): refused at
    // once, before binding or probing, and the first master's file is intact.
    // Its port is held by this test meanwhile: a master that bound before
    // checking the pidfile would fail with "Address already in use" instead.
    let second = Master::builder("second").set("pidfile", pidfile.display().to_string());
    let port2 = second.port();
    let holder = std::net::TcpListener::bind(("127.0.0.1", port2)).unwrap();
    let (st, err, second) = second.run_to_exit(T);
    drop(holder);
    assert_eq!(st.code(), Some(1), "{}", err);
    assert!(
        err.contains(&format!("a master is already running as pid {}", first.pid())) && err.contains("lock"),
        "{}",
        err
    );
    assert!(!err.contains("Address already in use"), "it tried to bind first: {}", err);
    assert!(second.log_records().iter().all(|r| !r["msg"].as_str().unwrap_or("").starts_with("listening on")));
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", first.pid()));
    assert!(flock_says_held(&pidfile));
    assert_eq!(first.healthz().status, 200);

    // SIGKILL: the pidfile stays behind, naming a dead master; no lock.
    first.signal(libc::SIGKILL);
    first.wait_exit(T);
    first.kill_all();
    assert!(pidfile.exists());
    assert!(!flock_says_held(&pidfile));
    let third = Master::builder("third").set("pidfile", pidfile.display().to_string()).start();
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), format!("{}\n", third.pid()));
}

// ---------------------------------------------------------------------------
// Item 1: signals are handled from the master's first instant

/// A master whose start-up probe waits on a FIFO (tests/fault/probe-fifo.sh),
/// with a control socket; returns it once the probe waits, and the FIFO's
/// write end (write a line to let the probe go on).
fn master_held_in_start(b: MasterBuilder) -> (Master, std::fs::File) {
    let fifo = b.dir().join("probe.fifo");
    mkfifo(&fifo);
    let sock = b.dir().join("ctl.sock");
    let m = b
        .set("worker", fault_worker_json("probe-fifo.sh"))
        .set("controlSocket", sock.display().to_string())
        .env("PROBE_FIFO", &fifo.display().to_string())
        .spawn();
    let w = open_fifo_when_read(&fifo, T);
    (m, w)
}

fn let_probe_go(mut w: std::fs::File) {
    use std::io::Write;
    w.write_all(b"go\n").unwrap();
}

#[test]
fn sigusr2_and_sighup_while_starting_are_handled() {
    let (m, w) = master_held_in_start(Master::for_test());
    // The master is in its start-up probe: nothing spawned yet.
    assert!(m.events("master.start").is_empty());
    m.signal(libc::SIGUSR2);
    let refused = m.wait_for_event("restart.refused", T);
    assert_eq!(refused["reason"], "starting", "{}", refused);
    assert_eq!(refused["level"], 40);
    m.signal(libc::SIGHUP);
    m.wait_for_event("log.reopen", T);
    let_probe_go(w);
    m.wait_serving(T);
    // Exactly one refusal, proved after a later marker (master.start, the
    // workers ready), and no restart was started.
    let recs = m.log_records();
    assert_eq!(recs.iter().filter(|r| event_of(r) == "restart.refused").count(), 1);
    assert!(recs.iter().all(|r| event_of(r) != "restart.start"));
    assert_eq!(m.events("master.start").len(), 1);
    assert_eq!(m.healthz().status, 200);
}

#[test]
fn sigterm_and_sigint_while_starting_stop_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mark = format!("start-stop-{}-{}", sig, std::process::id());
        let (mut m, _w) = master_held_in_start(Master::for_test().env("FAULT_MARK", &mark));
        let pidfile = m.pidfile.clone().unwrap();
        assert!(pidfile.exists());
        let probe: Vec<i32> = pids_with_env("FAULT_MARK", &mark).into_iter().filter(|&p| p != m.pid()).collect();
        assert_eq!(probe.len(), 1, "the probe runs: {:?}", probe);
        m.signal(sig);
        let st = m.wait_exit(T);
        assert_eq!(st.code(), Some(0), "signal {}: {:?}\n{}", sig, st, m.diagnostics());
        assert!(!pidfile.exists(), "pidfile removed");
        assert!(!m.dir.join("ctl.sock").exists(), "no control socket left");
        assert!(wait_until(T, || pids_with_env("FAULT_MARK", &mark).is_empty()), "the probe was ended");
        assert!(m.events("worker.spawn").is_empty());
        assert!(wait_until(T, || port_is_free(m.port)), "the port is held after the stop");
        let stop = m.wait_for_event("master.stop", T);
        assert!(stop["msg"].as_str().unwrap().contains("starting"), "{}", stop);
    }
}

/// A master whose config file is a FIFO: it waits in the open(2) of its
/// config until the test writes it. Returns it once it waits there (the FIFO
/// has a reader), with the FIFO's write end and the config text to write.
/// The path then names a regular file with the same text (renamed over the
/// FIFO, which the master holds open already): what its probe and workers
/// read later.
fn master_before_its_config(b: MasterBuilder) -> (Master, std::fs::File, String) {
    let fifo = b.dir().join("config.fifo");
    mkfifo(&fifo);
    let text = serde_json::to_string(&Value::Object(b.config().clone())).unwrap();
    let m = b.args(&["-c", fifo.to_str().unwrap()]).spawn();
    let w = open_fifo_when_read(&fifo, T);
    let file = fifo.with_extension("json");
    std::fs::write(&file, &text).unwrap();
    std::fs::rename(&file, &fifo).unwrap();
    (m, w, text)
}

/// zdrestart(8): the master handles its signals "from its first instant,
/// before reading its config". SIGUSR2 and SIGHUP (whose default action is
/// death) sent while it waits for its config file do not kill it: once the
/// config comes it starts, refuses that restart (`starting`) and reopens
/// its log.
#[test]
fn sigusr2_and_sighup_before_the_config_is_read_are_handled() {
    let (m, mut w, text) = master_before_its_config(Master::for_test());
    m.signal(libc::SIGUSR2);
    m.signal(libc::SIGHUP);
    {
        use std::io::Write;
        w.write_all(text.as_bytes()).unwrap();
    }
    drop(w);
    m.wait_serving(T);
    let recs = m.log_records();
    let refused: Vec<&Value> = recs.iter().filter(|r| event_of(r) == "restart.refused").collect();
    assert_eq!(refused.len(), 1, "{}", m.diagnostics());
    assert_eq!(refused[0]["reason"], "starting", "{}", refused[0]);
    assert_eq!(recs.iter().filter(|r| event_of(r) == "log.reopen").count(), 1, "{}", m.diagnostics());
    let start = recs.iter().position(|r| event_of(r) == "master.start").unwrap();
    let refusal = recs.iter().position(|r| event_of(r) == "restart.refused").unwrap();
    assert!(refusal < start, "the signal was handled before the start: {}", m.diagnostics());
    assert!(m.events("restart.start").is_empty());
    assert_eq!(m.healthz().status, 200);
}

/// SIGTERM or SIGINT sent while the master waits for its config file: once
/// it has read it, it stops at once with status 0 (not killed by the
/// signal), starting nothing.
#[test]
fn sigterm_and_sigint_before_the_config_is_read_stop_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let (mut m, mut w, text) = master_before_its_config(Master::for_test());
        m.signal(sig);
        {
            use std::io::Write;
            w.write_all(text.as_bytes()).unwrap();
        }
        drop(w);
        let st = m.wait_exit(T);
        assert_eq!(st.code(), Some(0), "signal {}: {:?}\n{}", sig, st, m.diagnostics());
        let stop = m.wait_for_event("master.stop", T);
        assert!(stop["msg"].as_str().unwrap().contains("while starting"), "{}", stop);
        assert!(m.events("worker.spawn").is_empty());
        assert!(m.log_records().iter().all(|r| !r["msg"].as_str().unwrap_or("").starts_with("listening on")), "it bound its port");
        assert!(!m.pidfile.as_ref().unwrap().exists(), "pidfile left behind");
    }
}

// ---------------------------------------------------------------------------
// Item 2: process groups, a subreaper, no orphan left serving

/// The pids a `group-term.sh` worker wrote to `file` beside the config, once
/// there are `n`.
fn helper_pids(dir: &std::path::Path, file: &str, n: usize) -> Vec<i32> {
    let path = dir.join(file);
    let mut pids = Vec::new();
    assert!(
        wait_until(T, || {
            pids = std::fs::read_to_string(&path).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect();
            pids.len() >= n
        }),
        "{} of {} expected: {:?}",
        file,
        n,
        pids
    );
    pids
}

/// A process of the process group `group` that ignores SIGTERM and that the
/// master did not start: the test's own child, put in the group. The
/// master's subreaper never adopts it (its parent, the test, lives on), so
/// only the master's SIGKILL to what is left of the group can end it.
fn outsider_in_group(dir: &std::path::Path, group: i32, name: &str) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "trap '' TERM; exec sleep 1000"]).process_group(group);
    let g = ChildGuard::spawn(&mut cmd, dir.join(name));
    // SIGTERM is ignored once the shell has exec'd sleep (after its trap).
    assert!(wait_until(T, || proc_stat(g.pid()).is_some_and(|s| s.comm == "sleep")), "the outsider did not start");
    g
}

/// The outsider was ended by SIGKILL (it ignores SIGTERM).
fn assert_killed(outsider: &mut ChildGuard, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    let st = outsider.wait_timeout(T).unwrap_or_else(|| panic!("{} is still running", what));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{}: {:?}", what, st);
}

/// zdrestart(8): what is left of a worker's process group once its main
/// process is gone is killed (SIGKILL a worker: its helper that ignores
/// SIGTERM, and holds the listener it inherited, goes too, while the master
/// runs on); a graceful stop sends SIGTERM to every worker's *process group*
/// (a helper that ends on SIGTERM gets it and ends by itself), and nothing of
/// the groups outlives it. The worker's own helpers, orphaned, come back to
/// the master (a subreaper), which would end them as strays anyway; so each
/// group also holds a process the master never adopts (the test's child):
/// only the kill of what is left of the group ends it. Either half alone
/// fails this test.
#[test]
fn a_stop_signals_each_workers_group_and_kills_what_is_left() {
    let b = Master::for_test().set("worker", fault_worker_json("group-term.sh")).set("shutdownTimeout", 5);
    let dir = b.dir().path().to_path_buf();
    let mut m = b.spawn();
    m.wait_events_after(0, "worker.ready", 2, T);
    let workers = m.wait_worker_count(2, T);
    let graceful = helper_pids(&dir, "graceful-helpers", 2);
    let stubborn = helper_pids(&dir, "stubborn-helpers", 2);
    let group_of = |p: i32| pgid_of(p).unwrap_or_else(|| panic!("helper {} is gone", p));
    for &p in graceful.iter().chain(&stubborn) {
        assert!(workers.contains(&group_of(p)), "helper {} is not in a worker's process group", p);
    }
    // A worker's main process dies: the rest of its group is killed at once.
    let victim = workers[0];
    let (victim_graceful, victim_stubborn): (Vec<i32>, Vec<i32>) = (
        graceful.iter().copied().filter(|&p| group_of(p) == victim).collect(),
        stubborn.iter().copied().filter(|&p| group_of(p) == victim).collect(),
    );
    assert_eq!((victim_graceful.len(), victim_stubborn.len()), (1, 1));
    let mut outsider = outsider_in_group(&dir, victim, "outsider-1.log");
    let mark = m.mark();
    assert!(kill(victim, libc::SIGKILL));
    assert!(
        wait_until(T, || victim_graceful.iter().chain(&victim_stubborn).all(|&p| !pid_alive(p))),
        "left alive after their worker's main process died: {:?}",
        victim_graceful.iter().chain(&victim_stubborn).filter(|&&p| pid_alive(p)).collect::<Vec<_>>()
    );
    assert_killed(&mut outsider, "the test's process in the group of the SIGKILLed worker");
    assert!(pid_alive(m.pid()), "the master runs on");
    m.wait_event_after(mark, "worker.ready", T);
    let workers = m.wait_worker_count(2, T);
    assert!(!workers.contains(&victim));
    let graceful: Vec<i32> = helper_pids(&dir, "graceful-helpers", 3).into_iter().filter(|&p| pid_alive(p)).collect();
    let stubborn: Vec<i32> = helper_pids(&dir, "stubborn-helpers", 3).into_iter().filter(|&p| pid_alive(p)).collect();
    assert_eq!((graceful.len(), stubborn.len()), (2, 2), "helpers of the 2 live workers");
    // A graceful stop: SIGTERM reaches each group, the graceful helpers get
    // it (and none had it before).
    assert!(!dir.join("term-received").exists(), "SIGTERM before the stop");
    let mut outsiders: Vec<ChildGuard> =
        workers.iter().enumerate().map(|(i, &w)| outsider_in_group(&dir, w, &format!("outsider-stop-{}.log", i))).collect();
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit(T).code(), Some(0), "{}", m.diagnostics());
    let mut got = helper_pids(&dir, "term-received", 2);
    got.sort();
    let mut want = graceful.clone();
    want.sort();
    assert_eq!(got, want, "helpers that got SIGTERM");
    // What was left (SIGTERM ignored) was killed, not left serving.
    assert!(wait_until(T, || stubborn.iter().all(|&p| !pid_alive(p))), "helpers left alive: {:?}", stubborn);
    for o in outsiders.iter_mut() {
        assert_killed(o, "the test's process in a worker's group at the stop");
    }
    assert!(workers.iter().all(|&w| !pid_alive(w)));
    assert!(wait_until(T, || port_is_free(m.port)), "the port is held after the stop");
}

#[test]
fn a_wrapper_worker_leaves_no_old_server_after_a_restart_nor_after_a_stop() {
    let mongo = Mongo::start();
    let mark = format!("wrapper-{}", std::process::id());
    let mut m = Master::for_test()
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri(), "timeout": 2}, "shutdownTimeout": 3}))
        .set("worker", fault_worker_json("wrapper-no-exec.sh"))
        .env("FAULT_MARK", &mark)
        .start();
    let wrappers = m.wait_worker_count(2, T);
    // Each worker is its own process group, its server in it.
    let mut servers = Vec::new();
    for &w in &wrappers {
        assert_eq!(pgid_of(w), Some(w), "worker {} leads its own process group", w);
        let kids = live_children(w);
        assert_eq!(kids.len(), 1, "the wrapper's server: {:?}", kids);
        assert_eq!(pgid_of(kids[0]), Some(w));
        servers.extend(kids);
    }

    let mark_log = m.mark();
    m.signal(libc::SIGUSR2);
    m.wait_event_after(mark_log, "restart.complete", T);
    // No process of the old generation is left, and only the new one answers.
    assert!(wait_until(T, || servers.iter().all(|&p| !pid_alive(p))), "old servers alive: {:?}", servers);
    for _ in 0..20 {
        let r = m.healthz();
        assert_eq!((r.status, r.json()["generation"].as_u64()), (200, Some(2)), "{}", r.text());
    }

    stop_leaves_nothing(&mut m, &mark);
}

/// SIGTERM: exit 0, no process marked `FAULT_MARK=mark` left (all the
/// service started), and the port comes free: nothing holds it. Waited for,
/// not read once: a process being killed loses its environment (what
/// `pids_with_env` reads) before its fds in the kernel's exit path, so its
/// listener may still be open for a moment after it leaves that list.
fn stop_leaves_nothing(m: &mut Master, mark: &str) {
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit(T).code(), Some(0));
    assert!(wait_until(T, || pids_with_env("FAULT_MARK", mark).is_empty()), "left: {:?}", pids_with_env("FAULT_MARK", mark));
    assert!(wait_until(T, || port_is_free(m.port)), "the port is held after the stop: {:?}", listening_inodes(m.port));
}

#[test]
fn double_forked_helpers_come_back_to_the_master_and_are_ended() {
    let mark = format!("double-fork-{}", std::process::id());
    let mut m = Master::for_test()
        .set("worker", fault_worker_json("double-fork.sh"))
        .set("shutdownTimeout", 3)
        .env("FAULT_MARK", &mark)
        .spawn();
    m.wait_events_after(0, "worker.ready", 2, T);
    // Workers from the log (the adopted helpers carry a worker's environment,
    // so /proc alone cannot tell them apart).
    let workers: Vec<i32> = m.events("worker.spawn").iter().filter_map(worker_pid_of).collect();
    let helpers = |m: &Master| -> Vec<i32> {
        pids_with_env("FAULT_MARK", &mark).into_iter().filter(|p| !workers.contains(p) && *p != m.pid()).collect()
    };
    // The daemonized helpers (their own session, holding the listener) are
    // orphans: the master, a child subreaper, adopted them.
    let mut adopted = Vec::new();
    assert!(
        wait_until(T, || {
            adopted = helpers(&m);
            adopted.len() == 2 && adopted.iter().all(|&h| proc_stat(h).map(|s| s.ppid) == Some(m.pid()))
        }),
        "helpers not adopted by the master: {:?}",
        adopted.iter().map(|&h| proc_stat(h)).collect::<Vec<_>>()
    );
    let started: Vec<(i32, u64)> = adopted.iter().map(|&h| (h, proc_stat(h).unwrap().starttime)).collect();
    // A child of the master exits: it ends the strays (in no worker's
    // process group) and reaps them: they leave /proc, not even a zombie.
    let mark_log = m.mark();
    kill(workers[0], libc::SIGKILL);
    m.wait_event_after(mark_log, "worker.exit", T);
    assert!(
        wait_until(T, || started.iter().all(|&(h, t)| proc_stat(h).is_none_or(|s| s.starttime != t))),
        "helpers still there: {:?}",
        started.iter().map(|&(h, _)| proc_stat(h)).collect::<Vec<_>>()
    );
    assert!(m.zombies().is_empty(), "zombies: {:?}", m.zombies());
    // The stop leaves nothing: no process of the service, the port free.
    m.wait_events_after(mark_log, "worker.ready", 1, T);
    stop_leaves_nothing(&mut m, &mark);
}

#[test]
fn sigkill_of_the_master_ends_workers_that_ignore_sigterm() {
    let mut m = Master::for_test().set("worker", fault_worker_json("ignore-term-forever.sh")).set("shutdownTimeout", 1).spawn();
    let workers = m.wait_worker_count(2, T);
    m.wait_events_after(0, "worker.ready", 2, T);
    m.signal(libc::SIGKILL);
    m.wait_exit(T);
    assert!(wait_until(T, || workers.iter().all(|&w| !pid_alive(w))), "workers left serving: {:?}", workers);
    assert!(wait_until(T, || port_is_free(m.port)), "the port is held after the master's SIGKILL");
}

// ---------------------------------------------------------------------------
// Item 3: a worker receives exactly 0-2, its listeners and the protocol fds

#[test]
fn an_inherited_fd_never_reaches_a_worker() {
    inherited_fd_case(Master::for_test());
}

#[test]
fn an_inherited_fd_never_reaches_a_worker_without_close_range() {
    // The fallback of kernels before 5.9: close() up to RLIMIT_NOFILE.
    inherited_fd_case(Master::for_test().env("ZDRESTART_NO_CLOSE_RANGE", "1"));
}

fn inherited_fd_case(b: MasterBuilder) {
    let b = b.set("worker", fault_worker_json("ignore-term-forever.sh")).set("shutdownTimeout", 1);
    let secret = b.dir().join("secret");
    std::fs::write(&secret, "not for workers\n").unwrap();
    let f = std::fs::File::open(&secret).unwrap();
    // The master starts with this fd open (not close-on-exec), as from
    // `(exec 9<secret; zdrestart -c cfg)`.
    let copy = inheritable_copy(&f);
    let m = b.spawn();
    drop(copy);
    drop(f);
    let workers = m.wait_worker_count(2, T);
    m.wait_events_after(0, "worker.ready", 2, T);
    assert!(fd_targets(m.pid()).iter().any(|t| t.contains("secret")), "the master did inherit it: {:?}", fd_targets(m.pid()));
    for w in workers {
        // The worker is `sleep` once the script exec'd it (after its
        // READY=1): then its fds are exactly what the master passed. (The
        // kernel renames a process before it closes its close-on-exec fds:
        // wait for both.)
        let exact = vec![0, 1, 2, 3, 4, 5];
        wait_until(T, || proc_stat(w).is_some_and(|s| s.comm == "sleep") && fd_numbers(w) == exact);
        let fds = fd_numbers(w);
        let shown: Vec<String> = fds.iter().map(|&fd| format!("{} -> {}", fd, fd_target(w, fd))).collect();
        assert_eq!(fds, exact, "{:?}", shown);
        assert!(fd_target(w, 3).starts_with("socket:"), "{:?}", shown);
        assert!(shown.iter().all(|s| !s.contains("secret")), "{:?}", shown);
    }
}

#[test]
fn zdrestartctl_tells_from_the_pidfile_lock_whether_a_master_runs() {
    // A master with a pidfile and no control socket: zdrestartctl cannot
    // connect, and says from the pidfile's lock that a master runs.
    let b = Master::for_test();
    let ctl_sock = b.dir().join("nobody.sock");
    let mut m = b.start();
    m.rewrite_config(|c| {
        c.insert("controlSocket".into(), json!(ctl_sock.display().to_string()));
    });
    let cfg = m.config_path.display().to_string();
    let ctl = |args: &[&str]| run_cmd(std::process::Command::new(ctl_bin()).args(args), T);
    let (st, _, err) = ctl(&["-c", &cfg, "status"]);
    // 4: retry later (it may be starting: zdrestartctl(8), EXIT STATUS).
    assert_eq!(st.code(), Some(4), "{}", err);
    assert!(err.contains(&format!("a master runs (pid {}", m.pid())), "{}", err);
    assert!(err.contains("or it runs without this controlSocket"), "{}", err);
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit(T).code(), Some(0));
    let (st, _, err) = ctl(&["-c", &cfg, "status"]);
    assert_eq!(st.code(), Some(6), "no master: {}", err);
    assert!(err.contains("no master holds its lock: the master is not running"), "{}", err);
}

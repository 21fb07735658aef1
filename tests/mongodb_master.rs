//! The MongoDB driver through the master: what one worker writes, the
//! other reads; 8 concurrent clients writing 2,000 objects lose none.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// One keep-alive connection through the master's port to each worker
/// (a connection stays with the worker that accepted it): worker pid ->
/// its connection. Panics when the kernel never hands a worker one of 50.
fn one_connection_per_worker(port: u16, workers: &BTreeSet<i32>) -> BTreeMap<i32, KeepAlive> {
    let mut conns = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(30);
    while conns.len() < workers.len() {
        assert!(Instant::now() < end, "no connection reached every worker of {:?}: {:?}", workers, conns.keys());
        let mut c = KeepAlive::one_connection(port);
        let r = c.get("/healthz").unwrap_or_else(|e| panic!("GET /healthz: {}", e));
        let pid = r.worker_pid().expect("X-Worker-Pid");
        assert!(workers.contains(&pid), "answered by {}, not a worker of {:?}", pid, workers);
        conns.entry(pid).or_insert(c);
    }
    conns
}

#[test]
fn eight_clients_two_thousand_objects_shared_by_all_workers() {
    let mongo = Mongo::start();
    let m = Master::for_test()
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "workers": 2}))
        .start();
    let port = m.port;
    let workers: BTreeSet<i32> = m.wait_worker_count(2, Duration::from_secs(30)).into_iter().collect();
    // Each object remembers the worker that stored it.
    let writers: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut written = Vec::new();
                for i in 0..250 {
                    let r = put_json(port, &format!("/objects/doc/c{}-{}", t, i), &json!({"t": t, "i": i}));
                    assert_eq!(r.status, 200, "{}", r.text());
                    written.push((t, i, r.worker_pid().expect("X-Worker-Pid")));
                }
                written
            })
        })
        .collect();
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.join().expect("a writer failed"));
    }
    let writer_pids: BTreeSet<i32> = written.iter().map(|w| w.2).collect();
    assert_eq!(writer_pids, workers, "both workers took writes");
    // Every object is read back through the *other* worker: what one
    // worker stored, the other serves (a store of its own would answer 404).
    let mut conns = one_connection_per_worker(port, &workers);
    let mut cross: BTreeMap<(i32, i32), usize> = BTreeMap::new();
    for (t, i, by) in &written {
        let other = *workers.iter().find(|&&p| p != *by).unwrap();
        let r = conns.get_mut(&other).unwrap().get(&format!("/objects/doc/c{}-{}", t, i)).unwrap();
        assert_eq!(r.worker_pid(), Some(other), "the connection moved to another worker");
        assert_eq!(r.status, 200, "object c{}-{} written through worker {} is not there for worker {}: {}", t, i, by, other, r.text());
        assert_eq!(r.json(), json!({"t": t, "i": i}));
        *cross.entry((*by, other)).or_default() += 1;
    }
    eprintln!("objects read through the other worker (writer, reader): {:?}", cross);
    assert_eq!(cross.values().sum::<usize>(), 2000);
    assert_eq!(cross.len(), 2, "reads crossed in both directions: {:?}", cross);
}

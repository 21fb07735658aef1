//! The MongoDB driver through the master: what one worker writes,
//! the others read; 8 concurrent clients writing 2,000 objects lose none.
#![deny(unsafe_code)]

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeSet;

#[test]
fn eight_clients_two_thousand_objects_shared_by_all_workers() {
    let mongo = Mongo::start();
    let m = Master::for_test()
        .merge(json!({"driver": "mongodb", "params": {"uri": mongo.uri()}, "workers": 2}))
        .start();
    let port = m.port;
    let writers: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut pids = BTreeSet::new();
                for i in 0..250 {
                    let r = put_json(port, &format!("/objects/doc/c{}-{}", t, i), &json!({"t": t, "i": i}));
                    assert_eq!(r.status, 200, "{}", r.text());
                    pids.extend(r.worker_pid());
                }
                pids
            })
        })
        .collect();
    let mut writer_pids = BTreeSet::new();
    for w in writers {
        writer_pids.extend(w.join().expect("a writer failed"));
    }
    // Read everything back on new connections: the kernel spreads them over
    // both workers, so objects written by one are read through the other.
    let mut reader_pids = BTreeSet::new();
    let mut cross = 0;
    for t in 0..8 {
        for i in 0..250 {
            let r = get(port, &format!("/objects/doc/c{}-{}", t, i));
            assert_eq!(r.status, 200, "object c{}-{} lost", t, i);
            assert_eq!(r.json(), json!({"t": t, "i": i}));
            reader_pids.extend(r.worker_pid());
            cross += 1;
        }
    }
    assert_eq!(cross, 2000);
    let workers: BTreeSet<i32> = m.worker_pids().into_iter().collect();
    assert_eq!(workers.len(), 2);
    assert_eq!(writer_pids, workers, "both workers took writes");
    assert_eq!(reader_pids, workers, "both workers answered reads");
}

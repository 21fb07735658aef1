//! The bounded pool of `threads` threads that run the requests needing the
//! driver, and the way their answers get back to the event loop.
//!
//! Owns the job queue (at most `params.maxQueued` jobs waiting: a full queue
//! is refused at once, and the loop answers 503) and the completions (a list
//! plus a `mio::Waker` that wakes the loop). It must not touch connections:
//! the loop owns them, answers a job whose deadline passed by itself, and drops
//! a late completion. A thread skips a job whose deadline has already passed.

use crate::api::{self, Response};
use crate::shared::Shared;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Stack of a pool thread: parsing and JSON validation only (serde_json
/// limits nesting to 128), the database I/O runs on the driver's runtime.
const STACK: usize = 256 * 1024;

/// One request for a pool thread.
pub struct Job {
    /// Which connection and which request on it (the loop matches both).
    pub conn: usize,
    pub conn_id: u64,
    pub seq: u64,
    /// `GET` for `HEAD`.
    pub method: String,
    pub target: String,
    pub body: Vec<u8>,
    /// The loop answers 503 at this instant if the job is not done.
    pub deadline: Instant,
}

/// A finished job.
pub struct Done {
    pub conn: usize,
    pub conn_id: u64,
    pub seq: u64,
    pub resp: Response,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    closed: bool,
}

pub struct Pool {
    queue: Mutex<Queue>,
    cv: Condvar,
    max_queued: usize,
    done: Mutex<Vec<Done>>,
    waker: mio::Waker,
}

impl Pool {
    /// Start `sh.threads` threads; `waker` wakes the loop when answers are ready.
    pub fn start(sh: Arc<Shared>, max_queued: usize, waker: mio::Waker) -> std::io::Result<Arc<Pool>> {
        let pool = Arc::new(Pool {
            queue: Mutex::new(Queue { jobs: VecDeque::new(), idle: 0, closed: false }),
            cv: Condvar::new(),
            max_queued,
            done: Mutex::new(Vec::new()),
            waker,
        });
        for i in 0..sh.threads {
            let (p, sh) = (pool.clone(), sh.clone());
            std::thread::Builder::new()
                .name(format!("pool-{}", i))
                .stack_size(STACK)
                .spawn(move || p.work(&sh))?;
        }
        Ok(pool)
    }

    /// Queue a job; gives it back when every thread is busy and
    /// `max_queued` jobs are already waiting for one.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.jobs.len() >= q.idle + self.max_queued {
            return Err(job);
        }
        q.jobs.push_back(job);
        drop(q);
        self.cv.notify_one();
        Ok(())
    }

    /// Take the finished jobs.
    pub fn take_done(&self, into: &mut Vec<Done>) {
        into.append(&mut self.done.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Let the threads end once the queue is empty.
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.cv.notify_all();
    }

    fn work(&self, sh: &Shared) {
        loop {
            let job = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(j) = q.jobs.pop_front() {
                        break j;
                    }
                    if q.closed {
                        return;
                    }
                    q.idle += 1;
                    q = self.cv.wait(q).unwrap_or_else(|e| e.into_inner());
                    q.idle -= 1;
                }
            };
            // Already answered 503 by the loop: do not spend the driver on it.
            if Instant::now() >= job.deadline {
                continue;
            }
            crate::store::set_request_deadline(Some(job.deadline));
            let route = api::route(&job.target);
            let run = || api::handle(sh.store.as_ref(), &sh.who, &job.method, &route, &job.body);
            // A bug in a handler or driver must cost one 500, not the worker
            // (the default panic hook still prints it on stderr, for the log).
            let resp = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                .unwrap_or_else(|_| Response::error(500, "internal error"));
            let first = {
                let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
                d.push(Done { conn: job.conn, conn_id: job.conn_id, seq: job.seq, resp });
                d.len() == 1
            };
            // One wake-up per batch: the loop takes them all.
            if first {
                let _ = self.waker.wake();
            }
        }
    }
}

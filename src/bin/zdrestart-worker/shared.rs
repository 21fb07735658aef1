//! What every connection thread of the worker shares: the driver, the
//! identity, the request permits, the draining flag and the count of live
//! connections.
//!
//! Sits between the serving loop (`server.rs`) and the connection threads
//! (`http.rs`), so that the worker's modules import in one direction: main ->
//! server -> http -> shared -> api -> store. It must not do I/O.

use crate::api::Identity;
use crate::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A counting semaphore (std has none): the `threads` request permits.
pub struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

pub struct Permit<'a>(&'a Permits);

impl Permits {
    pub fn new(n: usize) -> Permits {
        Permits { free: Mutex::new(n.max(1)), cv: Condvar::new() }
    }

    pub fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

/// Number of live connection threads, with a wake-up when it drops.
#[derive(Default)]
struct Connections {
    count: Mutex<usize>,
    cv: Condvar,
}

/// Held by a connection thread: counted from [`ConnGuard::new`] until it is
/// dropped, even if the thread panics.
pub struct ConnGuard(Arc<Shared>);

impl ConnGuard {
    pub fn new(sh: Arc<Shared>) -> ConnGuard {
        *sh.conns.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        ConnGuard(sh)
    }

    pub fn shared(&self) -> &Shared {
        &self.0
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let c = &self.0.conns;
        *c.count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        c.cv.notify_all();
    }
}

/// What every connection thread shares.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub who: Identity,
    pub permits: Permits,
    /// Size of `permits` (config `threads`).
    pub threads: usize,
    /// Set once SIGTERM/SIGINT arrived: answers say `Connection: close`.
    pub draining: AtomicBool,
    drain_start: OnceLock<Instant>,
    conns: Connections,
}

impl Shared {
    pub fn new(store: Arc<dyn Store>, who: Identity, threads: usize) -> Shared {
        Shared {
            store,
            who,
            permits: Permits::new(threads),
            threads,
            draining: AtomicBool::new(false),
            drain_start: OnceLock::new(),
            conns: Connections::default(),
        }
    }

    /// When draining began, if it did.
    pub fn drain_started(&self) -> Option<Instant> {
        if self.draining.load(Ordering::SeqCst) {
            self.drain_start.get().copied()
        } else {
            None
        }
    }

    /// Number of live connection threads.
    pub fn connections(&self) -> usize {
        *self.conns.count.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Block until every connection thread is gone.
    pub fn wait_no_connections(&self) {
        let mut count = self.conns.count.lock().unwrap_or_else(|e| e.into_inner());
        while *count > 0 {
            count = self.conns.cv.wait(count).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Block until fewer than `max` connections are live (true), or until
    /// `stop()` says to give up (false; checked every 100 ms).
    pub fn wait_for_slot(&self, max: usize, stop: impl Fn() -> bool) -> bool {
        let mut count = self.conns.count.lock().unwrap_or_else(|e| e.into_inner());
        while *count >= max {
            if stop() {
                return false;
            }
            count = self
                .conns
                .cv
                .wait_timeout(count, Duration::from_millis(100))
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    pub fn begin_drain(&self) {
        let _ = self.drain_start.set(Instant::now());
        self.draining.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn permits_bound_concurrency() {
        let p = Arc::new(Permits::new(2));
        // Two permits can be held at once (taken here without waiting), and
        // then none is left: a third acquire waits.
        let (g1, g2) = (p.acquire(), p.acquire());
        assert_eq!(*p.free.lock().unwrap(), 0);
        drop((g1, g2));
        // Never more than two holders at once, however the threads are
        // scheduled (an upper bound: no timing assumed).
        let running = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let (p, running, peak) = (p.clone(), running.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _g = p.acquire();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!((1..=2).contains(&peak.load(Ordering::SeqCst)), "peak {}", peak.load(Ordering::SeqCst));
        assert_eq!(*p.free.lock().unwrap(), 2);
    }
}

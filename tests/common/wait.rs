//! Waiting for a condition with a deadline (the only way tests wait).

use std::time::{Duration, Instant};

/// Poll `f` every 20 ms until it returns true; false if `timeout` passed first.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Seconds as a Duration (shorthand for tests).
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

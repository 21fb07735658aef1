//! Signals as flags plus one self-pipe that wakes a poll loop; shared by the
//! master's loop and the built-in worker's accept loop.
//!
//! Owns the handler registration (signal-hook: a handler only sets a flag and
//! writes a byte to a non-blocking pipe, both async-signal-safe). It must not
//! decide what a signal means: the loops read the flags after a wake-up.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Handlers for a set of signals: one flag each and a shared wake-up pipe.
pub struct SignalPipe {
    read: UnixStream,
    flags: Vec<(i32, Arc<AtomicBool>)>,
}

impl SignalPipe {
    /// Install handlers for `signals`. Each signal gets its own flag.
    pub fn install(signals: &[i32]) -> io::Result<SignalPipe> {
        let (r, w) = UnixStream::pair()?;
        r.set_nonblocking(true)?;
        // The handler must never block on a full pipe.
        w.set_nonblocking(true)?;
        let mut flags = Vec::new();
        for &sig in signals {
            let flag = Arc::new(AtomicBool::new(false));
            // The flag first, then the wake-up byte: the loop sees both.
            signal_hook::flag::register(sig, flag.clone())?;
            signal_hook::low_level::pipe::register(sig, w.try_clone()?)?;
            flags.push((sig, flag));
        }
        Ok(SignalPipe { read: r, flags })
    }

    fn flag(&self, sig: i32) -> Option<&AtomicBool> {
        self.flags.iter().find(|(s, _)| *s == sig).map(|(_, f)| &**f)
    }

    /// Has `sig` arrived since the last [`take`](Self::take)? Clears it.
    pub fn take(&self, sig: i32) -> bool {
        self.flag(sig).is_some_and(|f| f.swap(false, Ordering::SeqCst))
    }

    /// Has `sig` arrived (ever, unless taken)? Does not clear it.
    pub fn is_set(&self, sig: i32) -> bool {
        self.flag(sig).is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Empty the wake-up pipe (call after poll reports it readable).
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.read).read(&mut buf), Ok(n) if n > 0) {}
    }
}

impl AsRawFd for SignalPipe {
    /// The read end of the wake-up pipe, to poll for `POLLIN`.
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// Make `signals` harmless to a short-lived command (`zdrestart --check`,
/// `-t`): each is caught and forgotten, so that an operator's
/// `killall -USR2 zdrestart` aimed at the masters does not kill it. Ctrl-C
/// (SIGINT) and SIGTERM keep their default action.
pub fn shrug_off(signals: &[i32]) -> io::Result<()> {
    for &sig in signals {
        signal_hook::flag::register(sig, Arc::new(AtomicBool::new(false)))?;
    }
    Ok(())
}

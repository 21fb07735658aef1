//! sd_notify(3) on the worker side: the `$NOTIFY_SOCKET` the master offers
//! to workers whose config says `"notify": "systemd"` or `"both"`
//! (zdrestart-worker(7), "systemd's readiness protocol").
//!
//! Owns the socket (one for all workers, `SO_PASSCRED`) and its private
//! directory ([`NotifySocket::bind`]: where it lives, its owner and modes,
//! its removal at stop), the parsing of datagrams into [`Message`]s and
//! the rate-limited debug log of what is dropped. Who a datagram is from is
//! the kernel's word (`SCM_CREDENTIALS`), never the datagram's: the caller
//! maps the sender's pid to a worker, and a datagram nobody owns is dropped.
//! It must not decide what a message means for a restart: the loop turns
//! messages into events for the state machine. Bounded: datagrams of at
//! most [`MAX_DATAGRAM`] bytes, at most [`PER_WAKEUP`] per wake-up.

use crate::sys;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest datagram accepted (systemd's own limit for a notification
/// without fds is a page); a longer one is dropped whole.
pub const MAX_DATAGRAM: usize = 4096;
/// Datagrams read per wake-up at most: a flood cannot starve the loop.
pub const PER_WAKEUP: usize = 64;
/// Drops logged per window at most; the rest are counted.
const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// One assignment of a datagram that the master acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `READY=1`.
    Ready,
    /// `STATUS=<text>`.
    Status(String),
    /// `STOPPING=1`.
    Stopping,
    /// `WATCHDOG=1`: a heartbeat.
    Watchdog,
    /// `WATCHDOG=trigger`: the sender says it is hung.
    WatchdogTrigger,
    /// `ERRNO=<n>`.
    Errno(i32),
    /// `MAINPID=<pid>`.
    MainPid(u32),
}

/// A datagram taken apart: what counts, and what was ignored (for the log).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub messages: Vec<Message>,
    /// Assignments not understood (unknown key, bad value), as `KEY`.
    pub ignored: Vec<String>,
}

/// Parse one datagram: newline-separated `KEY=VALUE` assignments
/// (sd_notify(3)). A datagram that is not UTF-8 is refused whole: its
/// meaning cannot be trusted.
pub fn parse(data: &[u8]) -> Result<Parsed, &'static str> {
    let text = std::str::from_utf8(data).map_err(|_| "not UTF-8")?;
    let mut out = Parsed::default();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let m = match (key, value) {
            ("READY", "1") => Some(Message::Ready),
            ("STATUS", v) => Some(Message::Status(v.to_string())),
            ("STOPPING", "1") => Some(Message::Stopping),
            ("WATCHDOG", "1") => Some(Message::Watchdog),
            ("WATCHDOG", "trigger") => Some(Message::WatchdogTrigger),
            ("ERRNO", v) => v.parse::<i32>().ok().filter(|n| *n >= 0).map(Message::Errno),
            ("MAINPID", v) => v.parse::<u32>().ok().filter(|p| *p > 0 && *p <= i32::MAX as u32).map(Message::MainPid),
            _ => None,
        };
        match m {
            Some(m) => out.messages.push(m),
            // Only the key: a value may be long or private.
            None => out.ignored.push(key.chars().take(64).collect()),
        }
    }
    Ok(out)
}

/// What became of one datagram.
#[derive(Debug)]
pub enum Delivery<W> {
    /// From worker `W` (sent by process `sender`).
    From { worker: W, sender: u32, parsed: Parsed },
    /// Dropped: why, and the sender's pid when known.
    Dropped { why: String, sender: Option<u32> },
}

/// Counts drops and says when one may be logged.
#[derive(Debug)]
struct RateLimit {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RateLimit {
    /// May this drop be logged at `now`? Also the number suppressed in the
    /// window that just ended, to say once.
    fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut ended = 0;
        if self.window_start.is_none_or(|s| now.duration_since(s) >= LOG_WINDOW) {
            ended = std::mem::take(&mut self.suppressed);
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < LOG_BURST {
            self.logged += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }
}

/// The socket workers report on.
pub struct NotifySocket {
    fd: OwnedFd,
    /// `$NOTIFY_SOCKET` as given to workers: the socket's absolute path.
    path: PathBuf,
    buf: Vec<u8>,
    limit: RateLimit,
}

/// The name of the socket in its directory.
const SOCKET_NAME: &str = "notify";

/// Where the directory of the socket is made: the first directory of
/// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`: the packaged unit's
/// /run/zdrestart, which the init script sets too), else the system's
/// temporary directory (`$TMPDIR`, else /tmp): a master started by hand
/// without any runtime directory, as in the quick start.
pub fn base_dir(runtime_directory: Option<&std::ffi::OsStr>, temp: PathBuf) -> PathBuf {
    let first = runtime_directory.and_then(|v| std::env::split_paths(v).next()).filter(|p| p.is_absolute());
    first.unwrap_or(temp)
}

/// A name nobody can guess ahead (against a directory planted in /tmp;
/// mkdir refusing an existing one is what makes creation safe).
fn random_suffix(attempt: u32) -> String {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), attempt, std::time::SystemTime::now()));
    format!("{:08x}", h as u32)
}

/// The modes of the directory and the socket: only the master's user, and
/// with `serverUser` its group (the workers' only group: they run with it
/// and no supplementary one), may enter the directory and send.
pub fn modes(group: Option<u32>) -> (u32, u32) {
    match group {
        Some(_) => (0o710, 0o660),
        None => (0o700, 0o600),
    }
}

impl NotifySocket {
    /// Make a private directory `zdrestart-notify.XXXXXXXX` in `base` and
    /// bind the socket `notify` in it. Race-free: the directory is created
    /// mode 0700 (mkdir fails rather than take an existing one) and gets its
    /// group (`group`: serverUser's, through the file system gid, no chown)
    /// and its final mode only once the socket in it has its own; until then
    /// nobody but the master can reach either.
    pub fn bind(base: &Path, group: Option<u32>) -> Result<NotifySocket, String> {
        let dir = sys::with_fsgid(group, || make_dir(base))?;
        let path = dir.join(SOCKET_NAME);
        let made = sys::with_fsgid(group, || sys::bind_notify_socket(&path))
            .map_err(|e| format!("bind {}: {}", path.display(), sys::strerror(&e)))
            .and_then(|fd| set_modes(&dir, &path, group).map(|()| fd));
        match made {
            Ok(fd) => Ok(NotifySocket::adopt(fd, path)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// The socket of an older image after an upgrade (its fd and path).
    pub fn adopt(fd: OwnedFd, path: PathBuf) -> NotifySocket {
        NotifySocket {
            fd,
            path,
            // One byte more than the limit: a datagram that fills it is too long.
            buf: vec![0; MAX_DATAGRAM + 1],
            limit: RateLimit { window_start: None, logged: 0, suppressed: 0 },
        }
    }

    /// The value of `$NOTIFY_SOCKET` for workers.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Remove the socket and its directory (at stop; not at an upgrade:
    /// the new image takes them over).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            if let Err(e) = std::fs::remove_dir(dir) {
                log::warn!("remove {}: {}", dir.display(), e);
            }
        }
    }

    /// Read what is waiting (at most [`PER_WAKEUP`] datagrams). `owner`
    /// maps a sender's pid (the kernel's credentials) to its worker.
    pub fn receive<W>(&mut self, mut owner: impl FnMut(u32) -> Option<W>) -> Vec<Delivery<W>> {
        let mut out = Vec::new();
        for _ in 0..PER_WAKEUP {
            let d = match sys::recv_datagram(self.fd.as_fd(), &mut self.buf) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => {
                    out.push(Delivery::Dropped { why: format!("recvmsg: {}", sys::strerror(&e)), sender: None });
                    break;
                }
            };
            let sender = d.creds.map(|c| c.pid).filter(|&p| p > 0);
            let why = if d.fds_closed > 0 {
                // FDSTORE= and the like: nothing to keep for a worker.
                Some(format!("it carried {} file descriptors (closed)", d.fds_closed))
            } else if d.truncated || d.len > MAX_DATAGRAM {
                Some(format!("longer than {} bytes", MAX_DATAGRAM))
            } else {
                None
            };
            let delivery = match (why, sender) {
                (Some(why), _) => Delivery::Dropped { why, sender },
                (None, None) => Delivery::Dropped { why: "no sender credentials".into(), sender },
                (None, Some(pid)) => match owner(pid) {
                    None => Delivery::Dropped { why: "the sender is no worker's process".into(), sender },
                    Some(worker) => match parse(&self.buf[..d.len]) {
                        Ok(parsed) => Delivery::From { worker, sender: pid, parsed },
                        Err(why) => Delivery::Dropped { why: why.into(), sender },
                    },
                },
            };
            out.push(delivery);
        }
        out
    }

    /// Log a drop at debug, at most 10 per 10 s (`LOG_BURST`, `LOG_WINDOW`).
    pub fn log_drop(&mut self, why: &str, sender: Option<u32>, now: Instant) {
        let (log_it, ended) = self.limit.admit(now);
        if ended > 0 {
            log::debug!(component = "master", dropped = ended;
                "{} more notify datagrams dropped in the last {:?} (not logged)", ended, LOG_WINDOW);
        }
        if log_it {
            let pid = sender.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            log::debug!(component = "master", sender_pid = pid.as_str();
                "notify datagram dropped (sender pid {}): {}", pid, why);
        }
    }
}

/// The first directory above the socket's own that a process of user
/// `uid`, group `gid` cannot pass (no search permission for it by mode; ACLs
/// are not read): it could not reach the socket. None: every one lets it.
pub fn out_of_reach(dir: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    dir.ancestors().skip(1).find_map(|a| {
        let m = std::fs::metadata(a).ok()?;
        let mode = m.mode();
        let passes = if m.uid() == uid {
            mode & 0o100 != 0
        } else if m.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        (!passes).then(|| a.to_path_buf())
    })
}

/// A new directory `zdrestart-notify.XXXXXXXX` in `base`, mode 0700.
fn make_dir(base: &Path) -> Result<PathBuf, String> {
    let mut last = None;
    for attempt in 0..16 {
        let dir = base.join(format!("zdrestart-notify.{}", random_suffix(attempt)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(dir),
            Err(e) => return Err(format!("create {}: {}", dir.display(), e)),
        }
    }
    Err(format!("create a directory in {}: 16 names taken (the last {})", base.display(), last.unwrap_or_default().display()))
}

/// The final modes (socket first, then the directory that lets others in),
/// and a check that the directory has the group the workers need.
fn set_modes(dir: &Path, path: &Path, group: Option<u32>) -> Result<(), String> {
    let (dir_mode, sock_mode) = modes(group);
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod {:o} {}: {}", mode, p.display(), e))
    };
    chmod(path, sock_mode)?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("stat {}: {}", dir.display(), e))?;
    if let Some(gid) = group.filter(|&g| g != meta.gid()) {
        return Err(format!("{} has group {}, not serverUser's group {} (setfsgid needs CAP_SETGID: is the master root?)", dir.display(), meta.gid(), gid));
    }
    chmod(dir, dir_mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sd_notify_assignments() {
        let p = parse(b"READY=1\nSTATUS=Gunicorn arbiter booted").unwrap();
        assert_eq!(p.messages, vec![Message::Ready, Message::Status("Gunicorn arbiter booted".into())]);
        let p = parse(b"STOPPING=1\nERRNO=98\nMAINPID=4242\n").unwrap();
        assert_eq!(p.messages, vec![Message::Stopping, Message::Errno(98), Message::MainPid(4242)]);
        // Unknown keys and bad values are ignored, the rest still counts.
        let p = parse(b"WATCHDOG=1\nREADY=0\nERRNO=x\nMAINPID=0\nnoequals\nWATCHDOG=0\nREADY=1\nWATCHDOG=trigger").unwrap();
        assert_eq!(p.messages, vec![Message::Watchdog, Message::Ready, Message::WatchdogTrigger]);
        assert_eq!(p.ignored, vec!["READY", "ERRNO", "MAINPID", "noequals", "WATCHDOG"]);
        assert_eq!(parse(b"STATUS=\xff\nREADY=1"), Err("not UTF-8"));
        assert_eq!(parse(b"").unwrap(), Parsed::default());
    }

    #[test]
    fn the_socket_lives_in_the_runtime_directory_or_the_temporary_one() {
        let tmp = PathBuf::from("/tmp");
        assert_eq!(base_dir(Some("/run/zdrestart".as_ref()), tmp.clone()), PathBuf::from("/run/zdrestart"));
        assert_eq!(base_dir(Some("/run/a:/run/b".as_ref()), tmp.clone()), PathBuf::from("/run/a"));
        assert_eq!(base_dir(Some("relative".as_ref()), tmp.clone()), tmp);
        assert_eq!(base_dir(Some("".as_ref()), tmp.clone()), tmp);
        assert_eq!(base_dir(None, tmp.clone()), tmp);
    }

    #[test]
    fn a_private_directory_is_made_and_removed() {
        let base = std::env::temp_dir().join(format!("zdrestart-notify-unit-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let s = NotifySocket::bind(&base, None).unwrap();
        let dir = s.path().parent().unwrap().to_path_buf();
        assert_eq!(dir.parent(), Some(base.as_path()));
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!((mode(&dir), mode(s.path())), (0o700, 0o600));
        s.remove();
        assert!(!dir.exists());
        std::fs::remove_dir(&base).unwrap();
    }

    #[test]
    fn a_directory_out_of_reach_is_named() {
        let base = std::env::temp_dir().join(format!("zdrestart-notify-reach-{}", std::process::id()));
        let inner = base.join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let chmod = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        chmod(&base.join("a"), 0o755);
        assert_eq!(out_of_reach(&inner.join("sock-dir"), 12345, 12345), None);
        chmod(&base.join("a"), 0o700);
        assert_eq!(out_of_reach(&inner.join("sock-dir"), 12345, 12345), Some(base.join("a")));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn drops_are_logged_in_bursts() {
        let mut r = RateLimit { window_start: None, logged: 0, suppressed: 0 };
        let t = Instant::now();
        let logged = (0..25).filter(|_| r.admit(t).0).count();
        assert_eq!(logged, LOG_BURST as usize);
        let (ok, ended) = r.admit(t + LOG_WINDOW);
        assert!(ok);
        assert_eq!(ended, 15);
    }
}

//! The master's pidfile, whose liveness is an `flock(2)` lock, not a pid.
//!
//! Owns the pidfile: the master opens it, takes an exclusive `flock` on it
//! and keeps that fd (close-on-exec) open for its whole life, so that the
//! lock is held exactly as long as the master lives; the kernel drops it when
//! the master dies, however it dies. A pid alone cannot say that: pids are
//! reused, and a stale pidfile may name an unrelated live process. So:
//! - a pidfile that another process holds locked refuses the start (a live
//!   master is never started twice);
//! - a pidfile nobody holds locked is stale whatever pid it names, and is
//!   taken over (a dead master never blocks a start);
//! - anyone can ask the same question ([`holder`]; from a shell
//!   `flock -n -s PIDFILE true` fails while a master holds it). Such a test
//!   holds a shared lock for an instant: a master that starts then retries
//!   for a second before it concludes that another master runs.
//!
//! The file is written in place (never replaced by a rename: the lock belongs
//! to the inode) and removed at exit while still locked. A master that opened
//! the old inode just before it was removed finds after locking that the path
//! names another file (or none), and opens it again.
//!
//! It must not decide what to do about a refusal: callers log and exit.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A pidfile held (locked and written) by this process until [`Pidfile::remove`]
/// or the process's end.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    file: File,
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// How long a lock held by someone else may be a mere liveness test (a
/// shared lock taken for an instant by [`holder`] or `flock -n -s`) rather
/// than a running master.
const PROBED_FOR: Duration = Duration::from_secs(1);

/// The exclusive lock, retried for [`PROBED_FOR`] while someone else holds
/// it: a running master holds it for ever, a liveness test for an instant.
fn lock_exclusive(file: &File) -> Result<(), TryLockError> {
    let until = Instant::now() + PROBED_FOR;
    loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            other => return other,
        }
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

impl Pidfile {
    /// Lock and write the pidfile. Errors name the file and say which master
    /// holds it.
    pub fn acquire(path: &Path) -> Result<Pidfile, String> {
        let pid = std::process::id();
        // Bounded: each retry means another master removed the file we
        // opened, which cannot go on for long.
        for _ in 0..10 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| format!("open pidfile {}: {}", path.display(), crate::sys::strerror(&e)))?;
            match lock_exclusive(&file) {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(match read_pid(&mut file) {
                        Some(p) => format!(
                            "pidfile {}: a master is already running as pid {} (it holds the lock on the pidfile)",
                            path.display(),
                            p
                        ),
                        None => format!("pidfile {}: locked by a running master", path.display()),
                    });
                }
                Err(TryLockError::Error(e)) => {
                    return Err(format!("lock pidfile {}: {}", path.display(), crate::sys::strerror(&e)))
                }
            }
            if !same_file(&file, path) {
                // Removed (or replaced) by the master that held it before us.
                continue;
            }
            let write = |f: &mut File| -> io::Result<()> {
                f.set_len(0)?;
                f.seek(SeekFrom::Start(0))?;
                f.write_all(format!("{}\n", pid).as_bytes())
            };
            write(&mut file).map_err(|e| format!("write pidfile {}: {}", path.display(), crate::sys::strerror(&e)))?;
            return Ok(Pidfile { path: path.to_path_buf(), file });
        }
        Err(format!("pidfile {}: removed and recreated again and again while locking it", path.display()))
    }

    /// The locked file's fd, kept open across an upgrade's exec: the lock
    /// (flock(2)) belongs to the open file, which the new image adopts.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// The pidfile of the old image after an upgrade (same pid: the content
    /// stays right; the lock came with the fd).
    pub fn adopt(path: &Path, fd: std::os::fd::RawFd) -> Result<Pidfile, String> {
        let fd = crate::sys::adopt_fd(fd).map_err(|e| format!("adopt pidfile {} (fd {}): {}", path.display(), fd, crate::sys::strerror(&e)))?;
        Ok(Pidfile { path: path.to_path_buf(), file: File::from(fd) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the file (if the path still names it), then release the lock.
    pub fn remove(self) {
        if same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
        drop(self.file);
    }
}

/// The pid of the master that holds `path` locked now; `Ok(None)` when no
/// process holds it (no file, or a stale one). Never creates the file.
pub fn holder(path: &Path) -> io::Result<Option<u32>> {
    let mut file = match OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => Ok(Some(read_pid(&mut file).unwrap_or(0))),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_pidfile_refuses_and_a_stale_one_is_taken() {
        let dir = std::env::temp_dir().join(format!("zdrestart-pidfile-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("m.pid");
        // Stale: names pid 1, nobody holds it.
        std::fs::write(&p, "1\n").unwrap();
        assert_eq!(holder(&p).unwrap(), None);
        let held = Pidfile::acquire(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{}\n", std::process::id()));
        assert_eq!(holder(&p).unwrap(), Some(std::process::id()));
        // flock locks belong to the open file description: a second open in
        // this same process is refused like another master would be.
        let e = Pidfile::acquire(&p).unwrap_err();
        assert!(e.contains("already running as pid"), "{}", e);
        held.remove();
        assert!(!p.exists());
        assert_eq!(holder(&p).unwrap(), None);

        // A liveness test's shared lock, held while a master starts, does not
        // make it refuse: it retries until the test lets go.
        std::fs::write(&p, "1\n").unwrap();
        let probe = File::open(&p).unwrap();
        probe.lock_shared().unwrap();
        let path = p.clone();
        let starting = std::thread::spawn(move || Pidfile::acquire(&path));
        std::thread::sleep(Duration::from_millis(100));
        drop(probe);
        let held = starting.join().unwrap().expect("acquired once the test let go");
        held.remove();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

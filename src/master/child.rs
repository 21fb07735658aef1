//! A child of the master, worker or probe: its pid, its pidfd and its pipes
//! (report lines, output lines, control lines), read without blocking.
//!
//! Owns the fds of one child and the splitting of its pipes into lines (one
//! reader for workers and probes alike). It must not interpret the lines:
//! the loop turns worker reports into events, the probe runner into a verdict.

use crate::config::Notify;
use crate::master::handover::{PipeRest, WorkerFds};
use crate::protocol::{self, LineBuffer};
use crate::sys;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// How much is read from one pipe per wake-up (bounded work per fd).
const READ_CHUNK: usize = 8192;

/// One pipe, read line by line; `None` once it reached EOF or failed.
struct LinePipe {
    file: Option<File>,
    buf: LineBuffer,
}

impl LinePipe {
    fn new(fd: OwnedFd) -> LinePipe {
        // Non-blocking: a child that writes half a line must not stall us.
        let _ = sys::set_nonblocking(fd.as_fd(), true);
        LinePipe { file: Some(File::from(fd)), buf: LineBuffer::default() }
    }

    /// Read once (or until EAGAIN when `drain`); complete lines go to
    /// `lines`. At EOF or on error the unterminated rest is a line too and
    /// the pipe is closed.
    fn read(&mut self, drain: bool, lines: &mut Vec<String>) {
        let Some(file) = self.file.as_mut() else { return };
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match file.read(&mut chunk) {
                Ok(0) => {
                    lines.extend(self.buf.finish());
                    break;
                }
                Ok(n) => {
                    lines.extend(self.buf.push(&chunk[..n], protocol::MAX_REPORT_LINE));
                    if !drain {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.file = None;
    }

    fn fd(&self) -> Option<RawFd> {
        self.file.as_ref().map(|f| f.as_raw_fd())
    }

    /// What it read and holds (an upgrade hands it over).
    fn rest(&self) -> PipeRest {
        let (bytes, skipping) = self.buf.rest();
        PipeRest { bytes: bytes.to_vec(), skipping }
    }

    /// A pipe of an older image, with what that image held of it.
    fn adopt(fd: Option<RawFd>, rest: &PipeRest) -> io::Result<LinePipe> {
        let mut pipe = match fd {
            Some(fd) => LinePipe::new(sys::adopt_fd(fd)?),
            None => LinePipe { file: None, buf: LineBuffer::default() },
        };
        pipe.buf = LineBuffer::resume(&rest.bytes, rest.skipping);
        Ok(pipe)
    }
}

/// What one read of a child's pipes gave.
#[derive(Debug, Default)]
pub struct Lines {
    /// Report lines (`READY=1`, `ERROR=...`, `MAGIC=...`), from the report pipe.
    pub reports: Vec<String>,
    /// Its stdout and stderr.
    pub output: Vec<String>,
}

/// A worker's main process named by sd_notify `MAINPID=` (another process
/// than the one spawned): the one signalled and watched.
pub struct MainProcess {
    pub pid: u32,
    /// Readable when it exits (it is not our child: no SIGCHLD for it).
    pub pidfd: OwnedFd,
}

/// A running child of the master.
pub struct Child {
    pub pid: u32,
    /// Readable when the child exits; None: rely on SIGCHLD.
    pub pidfd: Option<OwnedFd>,
    /// The report pipe (`ZDRESTART_NOTIFY_FD`), read end.
    report_pipe: LinePipe,
    output: LinePipe,
    /// Write end of the child's control pipe (non-blocking).
    control: File,
    /// Where its reports count (the config's `notify` when it was spawned).
    pub reports: Notify,
    /// Its main process, when it named another one with `MAINPID=`.
    pub main: Option<MainProcess>,
    /// How the spawned process ended, once reaped while its main process
    /// goes on.
    pub spawned_status: Option<crate::sys::ExitStatus>,
}

impl Child {
    pub fn new(sp: sys::Spawned, pidfd: Option<OwnedFd>) -> Child {
        // Non-blocking: a worker that does not read its control pipe only
        // misses lines, it never stalls the master.
        let _ = sys::set_nonblocking(sp.control.as_fd(), true);
        Child {
            pid: sp.pid,
            pidfd,
            report_pipe: LinePipe::new(sp.notify),
            output: LinePipe::new(sp.output),
            control: File::from(sp.control),
            reports: Notify::Zdrestart,
            main: None,
            spawned_status: None,
        }
    }

    /// Has the process behind `pidfd` exited (the pidfd is readable)?
    pub fn pidfd_exited(pidfd: &OwnedFd) -> bool {
        let mut fds = [libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        matches!(sys::poll(&mut fds, Some(std::time::Duration::ZERO)), Ok(n) if n > 0)
    }

    /// What an upgrade hands over of this child (`master::handover`): its
    /// fds, and what was read of its pipes and is not a line yet.
    pub fn handover_fds(&self) -> WorkerFds {
        WorkerFds {
            pidfd: self.pidfd.as_ref().map(|f| f.as_raw_fd()),
            notify: self.report_pipe.fd(),
            output: self.output.fd(),
            control: self.control.as_raw_fd(),
            main_pidfd: self.main_pidfd(),
            spawned_status: self.spawned_status,
            report_rest: self.report_pipe.rest(),
            output_rest: self.output.rest(),
        }
    }

    /// A worker of the old image after an upgrade, from its fds (each
    /// checked open and made close-on-exec again), where its reports count
    /// and its main process (`main_pid` with its pidfd).
    pub fn adopt(pid: u32, fds: &WorkerFds, reports: Notify, main_pid: Option<u32>) -> io::Result<Child> {
        let control = sys::adopt_fd(fds.control)?;
        let _ = sys::set_nonblocking(control.as_fd(), true);
        let main = match (main_pid, fds.main_pidfd) {
            (Some(pid), Some(fd)) => Some(MainProcess { pid, pidfd: sys::adopt_fd(fd)? }),
            _ => None,
        };
        Ok(Child {
            pid,
            pidfd: fds.pidfd.map(sys::adopt_fd).transpose()?,
            report_pipe: LinePipe::adopt(fds.notify, &fds.report_rest)?,
            output: LinePipe::adopt(fds.output, &fds.output_rest)?,
            control: File::from(control),
            reports,
            main,
            spawned_status: fds.spawned_status,
        })
    }

    /// Send one control line; a full or closed pipe drops it.
    pub fn send(&self, line: &str) {
        let _ = (&self.control).write(line.as_bytes());
    }

    /// The fds to poll for `POLLIN`: (pidfd, pipes).
    pub fn poll_fds(&self) -> (Option<RawFd>, [Option<RawFd>; 2]) {
        (self.pidfd.as_ref().map(|f| f.as_raw_fd()), [self.report_pipe.fd(), self.output.fd()])
    }

    /// The main process's pidfd, when it named one with `MAINPID=`.
    pub fn main_pidfd(&self) -> Option<RawFd> {
        self.main.as_ref().map(|m| m.pidfd.as_raw_fd())
    }

    /// Read both pipes once (or until EAGAIN when `drain`, e.g. after exit).
    pub fn read(&mut self, drain: bool) -> Lines {
        let mut lines = Lines::default();
        self.report_pipe.read(drain, &mut lines.reports);
        self.output.read(drain, &mut lines.output);
        lines
    }
}

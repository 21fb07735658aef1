//! The shared harness of the integration tests (tests/*.rs) and of the
//! benchmark (bench/restart.rs): crate `zdrestart-testkit`, a dev-dependency
//! of zdrestart. Each test file says `mod common; use common::*;`
//! (tests/common/mod.rs re-exports this crate).
//!
//! Why a crate and not a module compiled into each test binary: each test
//! binary uses a different part of the harness, and a module would need
//! `#[allow(dead_code)]` to keep the rest quiet, hiding harness code that no
//! test uses any more. The public items of a library are never "unused", so
//! no lint is silenced, and the harness is compiled once instead of once per
//! test binary.
//!
//! Every process a test starts through this harness dies when the owning value
//! is dropped, also when the test panics: a `Master` runs in its own process
//! group and its drop SIGKILLs that group plus every descendant still alive; a
//! `Mongo` or a `ChildGuard` is SIGKILLed on drop. And every process dies with
//! the test binary, even when the binary is SIGKILLed: each is started through
//! [`spawn`] (a parent-death signal, and a run marker in its environment that
//! a reaper process uses to kill what is left once the binary is gone).
//! Temporary directories are
//! unique per test and removed on success, kept (path printed) on failure or
//! with `ZDRESTART_KEEP_TMP=1`. The harness never signals a process it did
//! not start, and never reads the environment of the caller into a process it
//! starts where that could change what the test checks (`ZDRESTART_*`,
//! `LISTEN_*`, `NOTIFY_SOCKET` are removed).
//!
//! Modules, by subject:
//! - [`paths`]: the repository, the binaries, the fault workers of
//!   tests/fault/, the running test's name;
//! - [`spawn`]: how every process is started (marker, parent-death signal,
//!   the reaper); [`install`]: writing a program a test runs, without
//!   "Text file busy";
//! - [`sys`]: the harness's only `unsafe` (signals, waitid, fds, sockets,
//!   poll, clocks, the pre-exec hook), wrapped in safe functions;
//! - [`dirs`]: [`TestDir`]; [`ports`]: [`ReservedPort`], [`free_port`], who
//!   listens on a port; [`wait`]: [`wait_until`];
//! - [`procfs`]: processes from /proc, signals;
//! - [`bunyan`]: the log format check, log parsing (whole, or the new
//!   records only: `LogTail`), the bunyan CLI;
//! - [`mongo`]: [`Mongo`], a `secantusd-py` server;
//! - [`master`]: [`Master`] / [`MasterBuilder`], a real `zdrestart` master;
//! - [`http`]: an HTTP/1.1 client ([`http()`], [`get`], [`KeepAlive`]);
//! - [`worker`]: the built-in worker run by hand ([`start_worker`], ...),
//!   [`ChildGuard`];
//! - [`control`]: the one control-socket client of the tests (raw lines and
//!   `zdrestartctl`);
//! - [`fault`]: the gates of the fault workers the test releases (a held
//!   probe, held readiness);
//! - [`ops`]: process groups and fds of processes, FIFOs, inheritable fds
//!   (the operations tests: reached as `common::ops`);
//! - [`corpus`]: the framing corpus of the worker's HTTP parser;
//! - [`hostile`]: hostile client shapes for the worker's memory bound (slow
//!   readers, floods of large bodies), peak RSS;
//! - [`cmd`]: [`run_cmd`]; [`load`]: the load generator (not re-exported at
//!   the top: `load::Response` is not `http::Response`).

#![deny(unsafe_code)]

pub mod bunyan;
pub mod cmd;
pub mod control;
pub mod corpus;
pub mod dirs;
pub mod fault;
pub mod hostile;
pub mod http;
pub mod install;
pub mod load;
pub mod master;
pub mod mongo;
pub mod ops;
pub mod paths;
pub mod ports;
pub mod procfs;
pub mod spawn;
#[allow(unsafe_code)]
pub mod sys;
pub mod wait;
pub mod worker;

pub use bunyan::*;
pub use cmd::*;
pub use control::*;
pub use corpus::*;
pub use dirs::*;
pub use fault::*;
pub use hostile::*;
pub use http::*;
pub use install::*;
pub use master::*;
pub use mongo::*;
pub use paths::*;
pub use ports::*;
pub use procfs::*;
pub use wait::*;
pub use worker::*;

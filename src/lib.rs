//! zdrestart: a zero-downtime restart master and its built-in worker.
//!
//! The library holds what the three executables share. The MongoDB driver is
//! deliberately not here: only the built-in worker (`worker/`, a crate of its
//! own) uses it, so the master and `zdrestartctl` never link it (checked by a
//! test on symbols, and visible in `cargo tree -p zdrestart`).
#![deny(unsafe_code)]

pub mod config;
pub mod control;
pub mod line_level;
pub mod log;
pub mod metrics;
pub mod master;
pub mod protocol;
pub mod restart;
pub mod sdnotify;
pub mod signals;
pub mod status;
pub mod sys;

/// Version of this code, reported by the probe (`VERSION=`) and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The compatibility magic number (ARCHITECTURE.md, "The worker protocol";
/// zdrestart-worker(7)). The master records the one
/// the probe reports at start; a restart to code reporting another is refused
/// (`incompatibility`).
///
/// Bump it (and say why in the changelog) whenever a zero-downtime restart from
/// the previous version would cause problems:
/// - the logic of the master process itself changes (state machine, protocol
///   it expects from workers, control socket semantics);
/// - cross-process logic changes, so that a new worker serving beside old
///   workers would misbehave (different answers, different locking);
/// - the database layout changes (collection names, document shape, indexes).
pub const MAGIC: u64 = 1;

//! The worker's command line, run as a process. Also makes `cargo test` build
//! the worker's binary, which the master's integration tests (tests/ at the
//! repository root) start as their workers.
#![deny(unsafe_code)]

use std::process::Command;

#[test]
fn version_and_usage() {
    let bin = env!("CARGO_BIN_EXE_zdrestart-worker");
    let out = Command::new(bin).arg("--version").output().expect("run zdrestart-worker --version");
    assert!(out.status.success(), "--version: {:?}", out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("zdrestart-worker {}", zdrestart::VERSION));
    let out = Command::new(bin).arg("--no-such-option").output().expect("run zdrestart-worker");
    assert_eq!(out.status.code(), Some(2), "an unknown option is a usage error: {:?}", out);
}

//! The master and zdrestartctl never link the MongoDB driver or an async
//! runtime (ARCHITECTURE.md, the processes): checked on the symbols of the binaries
//! cargo built for this test run, with the worker as the positive control.
#![deny(unsafe_code)]

use std::path::Path;

fn has_symbol_prefix(bin: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(bin).unwrap_or_else(|e| panic!("read {}: {}", bin.display(), e));
    // std's (optimized) substring search: a byte-by-byte loop of this debug
    // build takes seconds on a 130 MB binary. The needle is ASCII, which the
    // lossy conversion never touches.
    String::from_utf8_lossy(&bytes).contains(needle)
}

// Rust's legacy mangling: `_ZN7mongodb...`, `_ZN5tokio...`.
const MONGODB: &str = "_ZN7mongodb";
const TOKIO: &str = "_ZN5tokio";

#[test]
fn worker_links_mongodb() {
    let w = zdrestart_testkit::paths::worker_bin();
    assert!(has_symbol_prefix(&w, MONGODB), "the symbol check finds nothing even in the worker: it would prove nothing");
}

#[test]
fn master_and_ctl_do_not_link_mongodb_or_tokio() {
    for bin in [env!("CARGO_BIN_EXE_zdrestart"), env!("CARGO_BIN_EXE_zdrestartctl")] {
        let p = Path::new(bin);
        assert!(!has_symbol_prefix(p, MONGODB), "{} links the mongodb crate", bin);
        assert!(!has_symbol_prefix(p, TOKIO), "{} links tokio", bin);
    }
}

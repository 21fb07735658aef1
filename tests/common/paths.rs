//! Where things are: the repository, the binaries cargo built for this run, the
//! fault-injection workers of tests/fault/, and the running test's name.
//! Must not start processes.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Root of the repository (this crate lives in <repo>/tests/common).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().and_then(Path::parent).expect("tests/common has a grandparent").to_path_buf()
}

/// A binary of the zdrestart package built by cargo for this run. The test
/// (or bench) executable is `<target>/<profile>/deps/<name>-<hash>`; cargo
/// builds the package's binaries beside `deps/` before it runs integration
/// tests and benches (what `CARGO_BIN_EXE_<name>` points at, which only the
/// zdrestart package's own test crates see).
fn package_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("the test executable's directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(p.exists(), "{} not built beside {} (run the tests with cargo)", p.display(), exe.display());
    p
}

/// The master binary built by cargo for this test run.
pub fn master_bin() -> PathBuf {
    package_bin("zdrestart")
}

/// The built-in worker binary built by cargo for this test run.
pub fn worker_bin() -> PathBuf {
    package_bin("zdrestart-worker")
}

/// The control client binary built by cargo for this test run.
pub fn ctl_bin() -> PathBuf {
    package_bin("zdrestartctl")
}

/// argv (for the config key `worker`) of a fault-injection worker of
/// tests/fault/: `[tests/fault/<script>, <built-in worker>]`. The scripts pass
/// the modes they do not break (usually the probe) on to the built-in worker.
pub fn fault_worker(script: &str) -> Vec<String> {
    let p = repo_root().join("tests/fault").join(script);
    assert!(p.exists(), "no fault worker {}", p.display());
    vec![p.display().to_string(), worker_bin().display().to_string()]
}

/// `fault_worker` as a JSON array, ready for `MasterBuilder::set("worker", ..)`.
pub fn fault_worker_json(script: &str) -> Value {
    json!(fault_worker(script))
}

/// Name of the running test (libtest names its threads after the tests), or
/// "test" when it runs on the main thread (`--test-threads=1`).
pub fn test_name() -> String {
    let t = std::thread::current();
    match t.name() {
        Some(n) if n != "main" => n.rsplit("::").next().unwrap_or(n).to_string(),
        _ => "test".to_string(),
    }
}

/// A process-wide lock for tests of one test binary that must not overlap
/// (e.g. those that signal every `zdrestart` with killall). Poison-tolerant.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

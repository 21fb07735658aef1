//! Programs a test writes and then runs (a new `zdrestart` that stands for
//! a package upgrade, or one that only pretends to be one), as `programs`
//! in a test file (`mod programs;`). Every such program is written through
//! [`install_program`], the one place to fix how a test writes an
//! executable while other tests of the same binary fork (a child that
//! inherits a writable fd to the file makes its exec fail with ETXTBSY).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Put `bytes` at `path` as a new executable file: written beside it and
/// renamed over it, never written into a file that may be running.
pub fn install_program(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {}", tmp.display(), e));
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename {} to {}: {}", tmp.display(), path.display(), e));
}

/// A new `zdrestart` at `path` whose check of the hand-over
/// (`--handover-check`) first runs the shell commands `before_check`, then
/// the real check of `real`; every other mode is `real` itself.
pub fn install_slow_master(path: &Path, real: &Path, before_check: &str) {
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --handover-check ]; then\n{}\nfi\nexec {} \"$@\"\n",
        before_check,
        real.display()
    );
    install_program(path, script.as_bytes());
}

//! Programs a test writes and then runs (a new `zdrestart` that stands for
//! a package upgrade, or one that only pretends to be one), as `programs`
//! in a test file (`mod programs;`). Every such program is written through
//! [`install_program`], which goes through the harness's
//! `zdrestart_testkit::install`: the test binary never opens a program for
//! writing (a child forked by another thread inherits every fd until its
//! exec, and a writable fd to the program makes the program's exec fail
//! with ETXTBSY); `cp` writes it and it is renamed into place.

use std::path::Path;

/// Put `bytes` at `path` as a new executable file (mode 0755): copied
/// beside it by `cp` and renamed over it, never written into a file that
/// may be running, never held open for writing by the test binary.
pub fn install_program(path: &Path, bytes: &[u8]) {
    zdrestart_testkit::install::install_bytes(path, bytes);
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

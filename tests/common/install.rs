//! Writing a program that a test then runs, without "Text file busy".
//!
//! execve(2) fails with ETXTBSY while any process holds the file open for
//! writing. A test binary forks all the time (every test thread starts
//! processes), and a child holds a copy of every fd of the binary from fork
//! until its exec, close-on-exec or not. So a program the test binary wrote
//! itself could be held open for writing by a child forked by another thread
//! at that moment, and its exec fail. Here the binary never opens a program
//! for writing at all: the bytes go to a data file (never executed), `cp`
//! (a process that does not fork) writes them to a temporary name in the
//! destination's directory, the test binary sets the mode by path and
//! renames it into place (a new inode, as dpkg does: a running copy is never
//! written into). Once `cp` has exited, no process holds the new file open
//! for writing. Must not start anything but `cp`.

use crate::cmd::run_cmd;
use crate::spawn::command;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn temp_beside(dest: &Path, suffix: &str) -> PathBuf {
    let name = dest.file_name().unwrap_or_else(|| panic!("install: {} has no file name", dest.display()));
    dest.with_file_name(format!(".{}.{}", name.to_string_lossy(), suffix))
}

/// Install a copy of the program `from` as `dest` (mode 0755), replacing
/// `dest` atomically if it exists. Panics naming the file that failed.
pub fn install_copy(from: &Path, dest: &Path) {
    let tmp = temp_beside(dest, "new");
    let _ = fs::remove_file(&tmp);
    let mut cp = command("cp");
    cp.arg("--").arg(from).arg(&tmp);
    let (st, _, err) = run_cmd(&mut cp, Duration::from_secs(120));
    assert!(st.success(), "install {}: cp {} {}: {:?}: {}", dest.display(), from.display(), tmp.display(), st, err);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("install {}: chmod 0755 {}: {}", dest.display(), tmp.display(), e));
    fs::rename(&tmp, dest).unwrap_or_else(|e| panic!("install {}: rename {} -> {}: {}", dest.display(), tmp.display(), dest.display(), e));
}

/// Install a program made of `text` (a script) as `dest` (mode 0755),
/// replacing `dest` atomically if it exists. Panics naming the file.
pub fn install_script(dest: &Path, text: &str) {
    install_bytes(dest, text.as_bytes());
}

/// Install a program made of `bytes` as `dest` (mode 0755), replacing
/// `dest` atomically if it exists. Panics naming the file.
pub fn install_bytes(dest: &Path, bytes: &[u8]) {
    // Data only: this file is never executed, so a child holding it open
    // for writing is harmless.
    let src = temp_beside(dest, "src");
    fs::write(&src, bytes).unwrap_or_else(|e| panic!("install {}: write {}: {}", dest.display(), src.display(), e));
    install_copy(&src, dest);
    let _ = fs::remove_file(&src);
}

//! The pidfile: written at start (refused when it names a live process),
//! removed at exit only if it is still ours.

use crate::sys;
use std::path::Path;

/// Write the pidfile, refusing when it names a live process.
pub fn write_pidfile(path: &Path) -> Result<(), String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(pid) = text.trim().parse::<u32>() {
            if pid != std::process::id() && sys::process_alive(pid) {
                return Err(format!("pidfile {}: a master is already running as pid {}", path.display(), pid));
            }
        }
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("write pidfile {}: {}", path.display(), sys::strerror(&e))
        })
}

pub fn remove_pidfile(path: &Path) {
    // Only our own: a second master refused at start must not remove it.
    if let Ok(text) = std::fs::read_to_string(path) {
        if text.trim() == std::process::id().to_string() {
            let _ = std::fs::remove_file(path);
        }
    }
}

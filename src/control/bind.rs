//! The race-safe creation and removal of the control socket file.
//!
//! Owns the file system side of the control socket: a stale socket (nobody
//! accepts on it) is replaced, a live one is never stolen, anything else is
//! left alone, the socket is never reachable with wider permissions than
//! 0600, and only the file this process created is removed. It must not read
//! or write the socket's clients (that is [`super::server`]).

use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A bound control socket: its absolute path, the non-blocking listener and
/// the (device, inode) of the file, to remove only ours.
pub struct Bound {
    pub path: PathBuf,
    pub listener: UnixListener,
    pub ident: (u64, u64),
}

fn err_at(path: &Path, kind: ErrorKind, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(kind, format!("control socket {}: {}", path.display(), what))
}

/// Decide what to do with an existing path: Ok if it is free (absent, or a
/// stale socket that was removed), Err if it is in use or not a socket.
fn clear_stale(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err_at(path, e.kind(), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(err_at(path, ErrorKind::AlreadyExists, "exists and is not a socket (not removed)"));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(err_at(path, ErrorKind::AddrInUse, "in use by a running master")),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(err_at(path, e.kind(), format_args!("cannot remove stale socket: {}", e))),
            }
            log::info!(component = "control"; "removed stale control socket {} (no master listens on it)", path.display());
            Ok(())
        }
        Err(e) => Err(err_at(path, e.kind(), format_args!("cannot tell whether a master uses it: {}", e))),
    }
}

/// A private directory beside the socket, removed with its content on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0.join("s"));
        let _ = fs::remove_dir(&self.0);
    }
}

/// The socket is bound inside a fresh mode-0700 directory beside `path`,
/// set to mode 0600, then hard-linked to `path` (which fails instead of
/// replacing if a path appeared meanwhile), so it is never reachable by
/// others with wider permissions, whatever the umask. If `path` exists:
/// a socket a master accepts on → error `control socket PATH: in use by a
/// running master`; a socket nobody listens on → removed and replaced;
/// anything else → error. The parent directory must exist. The listener
/// is non-blocking and close-on-exec.
pub fn bind(path: &Path) -> io::Result<Bound> {
    let path = crate::config::absolute(path);
    let parent = path.parent().ok_or_else(|| err_at(&path, ErrorKind::InvalidInput, "not a file path"))?;
    if path.file_name().is_none() {
        return Err(err_at(&path, ErrorKind::InvalidInput, "not a file path"));
    }
    clear_stale(&path)?;
    let tmp = private_dir(&path, parent)?;
    let tmp_sock = tmp.0.join("s");
    let listener =
        UnixListener::bind(&tmp_sock).map_err(|e| err_at(&path, e.kind(), format_args!("bind: {}", e)))?;
    fs::set_permissions(&tmp_sock, fs::Permissions::from_mode(0o600))
        .map_err(|e| err_at(&path, e.kind(), format_args!("chmod: {}", e)))?;
    listener.set_nonblocking(true).map_err(|e| err_at(&path, e.kind(), e))?;
    link_into_place(&tmp_sock, &path)?;
    drop(tmp);
    let meta = fs::symlink_metadata(&path).map_err(|e| err_at(&path, e.kind(), e))?;
    Ok(Bound { path, listener, ident: (meta.dev(), meta.ino()) })
}

/// A fresh mode-0700 directory beside `path`.
fn private_dir(path: &Path, parent: &Path) -> io::Result<TempDir> {
    for n in 0..100u32 {
        let dir = parent.join(format!(".zdctl.{}.{}", std::process::id(), n));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(TempDir(dir)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err_at(path, e.kind(), format_args!("cannot create {}: {}", dir.display(), e))),
        }
    }
    Err(err_at(path, ErrorKind::AlreadyExists, "cannot create a temporary directory"))
}

/// Hard-link the bound socket to `path`; if something appeared there since
/// [`clear_stale`], look again once.
fn link_into_place(tmp_sock: &Path, path: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::hard_link(tmp_sock, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && tries == 0 => {
                tries += 1;
                clear_stale(path)?;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(err_at(path, ErrorKind::AddrInUse, "in use by a running master"))
            }
            Err(e) => {
                // No hard links on this file system: rename (replaces a
                // path that appeared in the last microseconds; acceptable).
                return fs::rename(tmp_sock, path)
                    .map_err(|e2| err_at(path, e2.kind(), format_args!("link: {}; rename: {}", e, e2)));
            }
        }
    }
}

/// Remove the socket file at `path` if it is still the one we created.
pub fn remove_if_ours(path: &Path, ident: (u64, u64)) {
    if let Ok(m) = fs::symlink_metadata(path) {
        if (m.dev(), m.ino()) == ident {
            let _ = fs::remove_file(path);
        }
    }
}

//! Temporary directories, one per test (or per helper process), removed on
//! success and kept on failure.

use crate::paths::test_name;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique directory under the system temp dir: `zdrestart-<name>-<pid>-<n>`.
/// Removed on drop unless the thread is panicking (a failed test) or
/// `ZDRESTART_KEEP_TMP` is set; then its path is printed.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .take(60)
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("zdrestart-{}-{}-{}", clean, std::process::id(), n));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {}", path.display(), e));
        TestDir { path }
    }

    /// A TestDir named after the running test.
    pub fn for_test() -> TestDir {
        TestDir::new(&test_name())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("ZDRESTART_KEEP_TMP").is_some() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

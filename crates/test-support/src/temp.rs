//! A directory of a test's own, gone when the test ends, whether it passed or not.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An empty directory under the system's temporary directory, named after the test and unique
/// to this process and this directory; removed with everything in it when dropped, so that a
/// test that fails (a panic unwinds through its locals) leaves nothing behind either.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new directory, its name starting with `rampart-{name}-`.
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rampart-{name}-{}-{n}", std::process::id()));
        // One left by an earlier process of the same id, killed before it could clean up.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("the temporary directory is writable");
        TempDir(path)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

//! Helpers shared by the CLI test binaries (each includes this with `mod common;`): a scratch
//! folder that removes itself. Not here: anything a single test file needs alone.

use std::path::{Path, PathBuf};

/// A scratch directory under the system's temp dir, removed when dropped (also when the test
/// fails), so repeated test runs leave nothing behind.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty `flowseg-<prefix>-<name>-<pid>` under the temp dir.
pub fn scratch(prefix: &str, name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("flowseg-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("the temp dir is writable");
    Scratch(d)
}

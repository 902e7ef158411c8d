//! Writing files so that a crash, a full disk or a power cut leaves either the old file or the
//! new one under its name, never a torn one: [`write_atomic`] writes a temporary file in the
//! same folder (`tempfile`), flushes it to disk, renames it over the target and flushes the
//! folder. Checkpoints, a run's files, the results ledger's table and `flowseg data split` all
//! write through it.
//!
//! Not here: appending lines (metrics.jsonl, the ledger append and fsync in place), caches
//! that may be lost (the CUBIN cache renames without the fsyncs).

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An atomic write that failed: what it was doing, on which path, and the OS error. Nothing
/// is left behind: the temporary file is removed, the target is untouched.
#[derive(Debug)]
pub struct WriteError {
    /// What failed (`create a temporary file in`, `write`, `rename to …`).
    pub op: String,
    /// The path it failed on.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.op,
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> Self {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

/// Replaces `path` with `bytes` atomically and durably (see the module header).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    // `Path::parent` of a bare file name is `""`, which no syscall accepts as a folder.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fail = |op: &str, p: &Path, source| WriteError {
        op: op.to_owned(),
        path: p.to_path_buf(),
        source,
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.as_deref().unwrap_or("file")))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| fail("create a temporary file in", dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.flush())
        .map_err(|e| fail("write", tmp.path(), e))?;
    // The data must be on disk before the rename makes it visible under the final name;
    // otherwise a power cut can leave the name pointing at an empty or partial file.
    tmp.as_file()
        .sync_all()
        .map_err(|e| fail("fsync", tmp.path(), e))?;
    // A failed persist drops (deletes) the temporary file.
    tmp.persist(path).map_err(|e| WriteError {
        op: format!("rename a temporary file to {}:", path.display()),
        path: e.file.path().to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir).map_err(|e| fail("fsync the folder", dir, e))
}

/// Makes the rename durable: on unix the directory entry lives in the directory's own data.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Elsewhere a directory cannot be opened as a file; the rename is still atomic.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::write_atomic;
    use std::fs;

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["a.json"]);
    }

    #[test]
    fn a_failed_rename_keeps_the_target_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A folder under the final name: every step succeeds but the rename.
        let path = dir.path().join("ckpt");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), b"x").unwrap();
        let e = write_atomic(&path, b"new").unwrap_err();
        assert!(e.to_string().contains("rename a temporary file to"), "{e}");
        assert!(path.join("keep").exists());
        assert_eq!(names(dir.path()), ["ckpt"]);
    }

    #[test]
    fn a_missing_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("a.json");
        let e = write_atomic(&path, b"x").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}

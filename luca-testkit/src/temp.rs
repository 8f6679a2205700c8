//! Temporary database files.

use std::path::{Path, PathBuf};

/// A unique SQLite file path in its own temporary directory.
///
/// The file is not created until something opens it. On drop the directory goes away with
/// the database and its `-wal`/`-shm` files, unless the thread is panicking: then it is
/// kept and its path printed to stderr, so a failed test leaves its evidence behind.
///
/// ```
/// let db = luca_testkit::TempDb::new();
/// let conn = luca_core::rusqlite::Connection::open(db.path())?;
/// conn.execute_batch("CREATE TABLE t (x)")?;
/// # Ok::<(), luca_core::rusqlite::Error>(())
/// ```
#[derive(Debug)]
pub struct TempDb {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TempDb {
    /// A fresh database path named `test.db`.
    ///
    /// # Panics
    /// When the system temporary directory cannot be written (use [`TempDb::try_new`] to
    /// handle that).
    pub fn new() -> TempDb {
        TempDb::named("test.db")
    }

    /// A fresh database path with the given file name.
    ///
    /// # Panics
    /// As [`TempDb::new`].
    pub fn named(file_name: &str) -> TempDb {
        match TempDb::try_named(file_name) {
            Ok(db) => db,
            Err(e) => panic!("TempDb: cannot create a temporary directory: {e}"),
        }
    }

    /// [`TempDb::new`] that reports failure instead of panicking.
    ///
    /// # Errors
    /// When the temporary directory cannot be created.
    pub fn try_new() -> std::io::Result<TempDb> {
        TempDb::try_named("test.db")
    }

    /// [`TempDb::named`] that reports failure instead of panicking.
    ///
    /// # Errors
    /// When the temporary directory cannot be created.
    pub fn try_named(file_name: &str) -> std::io::Result<TempDb> {
        let dir = tempfile::Builder::new().prefix("luca-test-").tempdir()?;
        let path = dir.path().join(file_name);
        Ok(TempDb {
            dir: Some(dir),
            path,
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the files after drop and returns the path.
    pub fn keep(mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.path.clone()
    }
}

impl Default for TempDb {
    fn default() -> Self {
        TempDb::new()
    }
}

impl AsRef<Path> for TempDb {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let _ = dir.keep();
            eprintln!(
                "TempDb: test panicked; database kept at {}",
                self.path.display()
            );
        }
    }
}

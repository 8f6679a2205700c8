//! Temporary database files.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, SystemTime};

use luca_core::{Db, DbBuilder};

/// Kept directories older than this are removed by the sweep at the first [`TempDb`] of a
/// process.
const SWEEP_AGE: Duration = Duration::from_secs(24 * 60 * 60);

static SWEEP: Once = Once::new();

/// A unique SQLite file path in its own temporary directory, named after the test.
///
/// Every directory lives under one luca-specific directory, [`TempDb::root`]
/// (`$TMPDIR/luca-testkit`, or `$LUCA_TESTKIT_DIR/luca-testkit` when that variable is set,
/// e.g. to a directory a CI job uploads as an artifact), and is named after the test
/// (the current thread's name, which the test harness sets to the test's path, or the
/// name given to [`TempDb::for_test`]) plus a random part: `tests_x-y.AbC123/test.db`.
///
/// The file is not created until something opens it. On drop the directory goes away with
/// the database and its `-wal`/`-shm` files, unless the thread is panicking: then it is
/// kept and its path printed to stderr, so a failed test leaves its evidence behind.
/// Directories kept that way are removed by a later run: the first `TempDb` of each
/// process sweeps the root of directories untouched for 24 hours ([`TempDb::sweep`]).
///
/// ```
/// let db = luca_testkit::TempDb::new();
/// let conn = luca_core::rusqlite::Connection::open(db.path())?;
/// conn.execute_batch("CREATE TABLE t (x)")?;
/// # Ok::<(), luca_core::rusqlite::Error>(())
/// ```
///
/// With a [`Db`] (the builder's settings are at hand):
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> luca_core::Result<()> {
/// let tmp = luca_testkit::TempDb::new();
/// let db = tmp.db_with(|b| b.max_readers(4)).await?;
/// db.write(|c| Ok(c.execute_batch("CREATE TABLE t (x)")?)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TempDb {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

/// What [`TempDb::sweep`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Directories removed.
    pub removed: usize,
    /// Directories left (younger than the age, or that could not be removed).
    pub kept: usize,
}

/// A file-name-safe form of a test name: `a::b::c` becomes `a-b-c`, anything but ASCII
/// letters, digits, `-` and `_` becomes `_`, at most 64 characters (the end kept, where
/// the test's own name is).
fn sanitize(name: &str) -> String {
    let s: String = name
        .replace("::", "-")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches(|c| c == '-' || c == '_');
    let chars: Vec<char> = s.chars().collect();
    let start = chars.len().saturating_sub(64);
    let s: String = chars[start..].iter().collect();
    if s.is_empty() { "test".to_owned() } else { s }
}

/// The newest modification time of `dir` and its direct entries.
fn last_touched(dir: &Path) -> Option<SystemTime> {
    let mut newest = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(t);
            }
        }
    }
    Some(newest)
}

impl TempDb {
    /// A fresh database path named `test.db`, in a directory named after the current
    /// thread (the test harness names it after the test).
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

    /// A fresh `test.db` in a directory named after `test` (e.g.
    /// `concat!(module_path!(), "::my_test")`), for code whose thread is not named after
    /// the test.
    ///
    /// # Panics
    /// As [`TempDb::new`].
    pub fn for_test(test: &str) -> TempDb {
        match TempDb::create(test, "test.db") {
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
        let thread = std::thread::current();
        let test = match thread.name() {
            Some("main") | None => "test",
            Some(name) => name,
        };
        TempDb::create(test, file_name)
    }

    fn create(test: &str, file_name: &str) -> std::io::Result<TempDb> {
        let root = TempDb::root();
        std::fs::create_dir_all(&root)?;
        SWEEP.call_once(|| {
            let _ = TempDb::sweep(SWEEP_AGE);
        });
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}.", sanitize(test)))
            .tempdir_in(&root)?;
        let path = dir.path().join(file_name);
        Ok(TempDb {
            dir: Some(dir),
            path,
        })
    }

    /// The directory every `TempDb` directory is made in: `luca-testkit` under
    /// `$LUCA_TESTKIT_DIR` when set, else under the system temporary directory.
    pub fn root() -> PathBuf {
        let base = std::env::var_os("LUCA_TESTKIT_DIR")
            .filter(|v| !v.is_empty())
            .map_or_else(std::env::temp_dir, PathBuf::from);
        base.join("luca-testkit")
    }

    /// Removes the directories under [`TempDb::root`] that nothing touched for `older_than`
    /// (no file in them modified since): those kept by failed tests of earlier runs. Runs
    /// by itself with 24 hours at the first `TempDb` of each process; call it to clean up
    /// sooner. Directories of running tests are younger than any sensible age.
    ///
    /// # Errors
    /// When the root exists but cannot be listed.
    pub fn sweep(older_than: Duration) -> std::io::Result<Sweep> {
        let root = TempDb::root();
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Sweep::default()),
            Err(e) => return Err(e),
        };
        let now = SystemTime::now();
        let mut sweep = Sweep::default();
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let old = last_touched(&path)
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= older_than);
            if old && std::fs::remove_dir_all(&path).is_ok() {
                sweep.removed += 1;
            } else {
                sweep.kept += 1;
            }
        }
        Ok(sweep)
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory the file (and its `-wal`/`-shm` files) is in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(&self.path)
    }

    /// Keeps the files after drop and returns the path.
    pub fn keep(mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.path.clone()
    }

    /// A [`DbBuilder`] for this file, to set options before `build()`.
    pub fn builder(&self) -> DbBuilder {
        Db::builder(&self.path)
    }

    /// Opens a [`Db`] on this file with the defaults.
    ///
    /// # Errors
    /// As [`DbBuilder::build`].
    pub async fn db(&self) -> luca_core::Result<Db> {
        self.builder().build().await
    }

    /// Opens a [`Db`] on this file with the builder `configure` returns, e.g.
    /// `tmp.db_with(|b| b.max_readers(4).group_commit(false)).await`.
    ///
    /// # Errors
    /// As [`DbBuilder::build`].
    pub async fn db_with(
        &self,
        configure: impl FnOnce(DbBuilder) -> DbBuilder,
    ) -> luca_core::Result<Db> {
        configure(self.builder()).build().await
    }

    /// [`TempDb::db`] for threaded code.
    ///
    /// # Errors
    /// As [`DbBuilder::build_blocking`].
    pub fn db_blocking(&self) -> luca_core::Result<Db> {
        self.builder().build_blocking()
    }

    /// [`TempDb::db_with`] for threaded code.
    ///
    /// # Errors
    /// As [`DbBuilder::build_blocking`].
    pub fn db_blocking_with(
        &self,
        configure: impl FnOnce(DbBuilder) -> DbBuilder,
    ) -> luca_core::Result<Db> {
        configure(self.builder()).build_blocking()
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

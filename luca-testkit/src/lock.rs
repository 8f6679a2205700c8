//! Holding the write lock, and provoking busy errors on demand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use luca_core::pragmas::{self, Pragmas};
use luca_core::rusqlite::{self, Connection, TransactionBehavior};
use luca_core::{Error, Result};

/// Another connection that holds the database's write lock (`BEGIN IMMEDIATE`) until it
/// is dropped or [`released`](WriteLock::release).
///
/// While it is held, every other connection's write waits in SQLite's busy handler and,
/// once its `busy_timeout` passes, fails with `SQLITE_BUSY`.
///
/// ```
/// # let db = luca_testkit::TempDb::new();
/// let lock = luca_testkit::WriteLock::hold(db.path())?;
/// let err = luca_testkit::force_busy(db.path())?; // another writer fails at once
/// assert_eq!(err.sqlite_error_code(), Some(luca_core::rusqlite::ErrorCode::DatabaseBusy));
/// lock.release()?;
/// # Ok::<(), luca_core::Error>(())
/// ```
#[derive(Debug)]
pub struct WriteLock {
    conn: Option<Connection>,
    path: PathBuf,
}

impl WriteLock {
    /// Opens a connection to `path` (WAL mode) and takes the write lock.
    ///
    /// # Errors
    /// When the file cannot be opened or another connection holds the lock for longer
    /// than 5 s.
    pub fn hold(path: impl AsRef<Path>) -> Result<WriteLock> {
        let path = path.as_ref();
        let conn = pragmas::open(
            path,
            &Pragmas::new().with_busy_timeout(Duration::from_secs(5)),
        )?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(WriteLock {
            conn: Some(conn),
            path: path.to_path_buf(),
        })
    }

    /// The database this lock is held on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock now (rolls the empty transaction back).
    ///
    /// # Errors
    /// When the rollback fails.
    pub fn release(mut self) -> Result<()> {
        self.end()
    }

    /// Releases the lock from a background thread after `after`; returns at once.
    pub fn release_after(self, after: Duration) -> std::thread::JoinHandle<Result<()>> {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            self.release()
        })
    }

    fn end(&mut self) -> Result<()> {
        match self.conn.take() {
            Some(conn) => conn.execute_batch("ROLLBACK").map_err(Error::from),
            None => Ok(()),
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

fn open_plain(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    pragmas::open(path, &Pragmas::new().with_busy_timeout(busy_timeout))
}

/// Returns the `SQLITE_BUSY` (5) error a writer gets while another connection holds the
/// write lock (hold one with [`WriteLock::hold`] first).
///
/// # Errors
/// When the file cannot be opened, or when the write unexpectedly succeeds (no lock is
/// held): then the error says so.
pub fn force_busy(path: impl AsRef<Path>) -> Result<rusqlite::Error> {
    let conn = open_plain(path.as_ref(), Duration::ZERO)?;
    match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
        Err(e) => Ok(e),
        Ok(()) => Err(Error::Sqlite(rusqlite::Error::InvalidQuery)),
    }
}

/// A second connection that commits a small write on demand, to make another
/// connection's read snapshot stale.
///
/// It writes to its own table, `luca_testkit_bump`, so it never touches test data.
#[derive(Debug)]
pub struct SnapshotBreaker {
    conn: Connection,
}

impl SnapshotBreaker {
    /// Opens the committing connection and creates its table.
    ///
    /// # Errors
    /// When the file cannot be opened or written.
    pub fn new(path: impl AsRef<Path>) -> Result<SnapshotBreaker> {
        let conn = open_plain(path.as_ref(), Duration::from_secs(5))?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS luca_testkit_bump (n INTEGER NOT NULL)")?;
        Ok(SnapshotBreaker { conn })
    }

    /// Commits one row: every read snapshot opened before this call is now stale, and a
    /// write from such a transaction fails with `SQLITE_BUSY_SNAPSHOT` (517).
    ///
    /// # Errors
    /// When the write fails.
    pub fn commit(&self) -> Result<()> {
        self.conn
            .execute("INSERT INTO luca_testkit_bump (n) VALUES (1)", [])?;
        Ok(())
    }
}

/// Returns a real `SQLITE_BUSY_SNAPSHOT` (517) error, produced deterministically: a reader
/// opens a snapshot, another connection commits, and the reader's write fails.
///
/// # Errors
/// When the file cannot be opened, or when the write unexpectedly succeeds.
pub fn force_busy_snapshot(path: impl AsRef<Path>) -> Result<rusqlite::Error> {
    let path = path.as_ref();
    let breaker = SnapshotBreaker::new(path)?;
    let mut reader = open_plain(path, Duration::from_secs(5))?;
    let tx = reader.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let _: i64 = tx.query_row("SELECT count(*) FROM luca_testkit_bump", [], |r| r.get(0))?;
    breaker.commit()?;
    let outcome = tx.execute("INSERT INTO luca_testkit_bump (n) VALUES (2)", []);
    drop(tx);
    match outcome {
        Err(e) => Ok(e),
        Ok(_) => Err(Error::Sqlite(rusqlite::Error::InvalidQuery)),
    }
}

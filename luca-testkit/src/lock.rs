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

thread_local! {
    /// Busy-handler calls made on this thread by [`force_busy_upgrade`]'s reader.
    static HANDLER_CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A busy handler that counts its calls and otherwise waits like `busy_timeout` of about
/// 5 s (1 ms per call).
fn counting_busy_handler(attempts: i32) -> bool {
    HANDLER_CALLS.with(|c| c.set(c.get().saturating_add(1)));
    std::thread::sleep(Duration::from_millis(1));
    attempts < 5_000
}

/// What [`force_busy_upgrade`] saw.
#[derive(Debug)]
pub struct UpgradeBusy {
    /// The error of the write: `SQLITE_BUSY` (5).
    pub error: rusqlite::Error,
    /// How often SQLite called the reader's busy handler (which would have waited up to
    /// about 5 s): 0, as SQLite skips it for this upgrade.
    pub busy_handler_calls: u32,
    /// How long the failing write took.
    pub waited: Duration,
}

/// Returns the `SQLITE_BUSY` (5) a `DEFERRED` transaction gets when it has read and then
/// tries to write while another connection holds the write lock, produced
/// deterministically: SQLite fails the upgrade at once, **without calling the busy
/// handler**, because waiting could deadlock. This is the trap of every pool that begins
/// transactions `DEFERRED`: `busy_timeout` does not help, only rolling back and re-running
/// the whole transaction does (or beginning it `IMMEDIATE`).
///
/// The reader's busy handler counts its calls ([`UpgradeBusy::busy_handler_calls`]); the
/// lock holder is a [`WriteLock`], released before this returns. The reader reads the
/// table `luca_testkit_bump` (created if missing) and rolls back.
///
/// When someone commits between the read and the write instead (no lock held), the code is
/// `SQLITE_BUSY_SNAPSHOT` (517): see [`force_busy_snapshot`].
///
/// ```
/// # let db = luca_testkit::TempDb::new();
/// let seen = luca_testkit::force_busy_upgrade(db.path())?;
/// assert_eq!(seen.error.sqlite_error().map(|e| e.extended_code), Some(5));
/// assert_eq!(seen.busy_handler_calls, 0);
/// # Ok::<(), luca_core::Error>(())
/// ```
///
/// # Errors
/// When the file cannot be opened, or when the write unexpectedly succeeds (then the error
/// says so, as for [`force_busy`]).
pub fn force_busy_upgrade(path: impl AsRef<Path>) -> Result<UpgradeBusy> {
    let path = path.as_ref();
    drop(SnapshotBreaker::new(path)?);
    let mut reader = open_plain(path, Duration::from_secs(5))?;
    reader.busy_handler(Some(counting_busy_handler))?;
    let tx = reader.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let _: i64 = tx.query_row("SELECT count(*) FROM luca_testkit_bump", [], |r| r.get(0))?;
    let lock = WriteLock::hold(path)?;
    HANDLER_CALLS.with(|c| c.set(0));
    let started = std::time::Instant::now();
    let outcome = tx.execute("INSERT INTO luca_testkit_bump (n) VALUES (3)", []);
    let waited = started.elapsed();
    let busy_handler_calls = HANDLER_CALLS.with(std::cell::Cell::get);
    drop(tx);
    lock.release()?;
    match outcome {
        Err(error) => Ok(UpgradeBusy {
            error,
            busy_handler_calls,
            waited,
        }),
        Ok(_) => Err(Error::Sqlite(rusqlite::Error::InvalidQuery)),
    }
}

/// A connection that holds one read transaction open, pinning its WAL snapshot, until it
/// is dropped or [released](LongReader::release).
///
/// While it is held, no checkpoint can copy pages written after its snapshot back into the
/// database, and the WAL cannot restart from the beginning: every commit makes the `-wal`
/// file longer (the "reader that never ends" of a long report query or a leaked
/// transaction). [`wal_bytes`] measures the file.
///
/// ```
/// # let db = luca_testkit::TempDb::new();
/// use luca_core::rusqlite::Connection;
///
/// let writer = Connection::open(db.path())?;
/// writer.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x BLOB)")?;
/// let reader = luca_testkit::LongReader::start(db.path())?;
/// for _ in 0..100 {
///     writer.execute("INSERT INTO t VALUES (zeroblob(4000))", [])?;
/// }
/// // The checkpoint cannot pass the reader's snapshot.
/// let (log, done): (i64, i64) =
///     writer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?)))?;
/// assert!(done < log);
/// assert!(luca_testkit::wal_bytes(db.path()) > 100 * 4000);
/// reader.release()?;
/// # Ok::<(), luca_core::Error>(())
/// ```
#[derive(Debug)]
pub struct LongReader {
    conn: Option<Connection>,
    path: PathBuf,
}

impl LongReader {
    /// Opens a connection to `path` (WAL mode), begins a transaction and reads, so its
    /// snapshot is taken now.
    ///
    /// # Errors
    /// When the file cannot be opened or read.
    pub fn start(path: impl AsRef<Path>) -> Result<LongReader> {
        let path = path.as_ref();
        let conn = open_plain(path, Duration::from_secs(5))?;
        conn.execute_batch("BEGIN DEFERRED")?;
        let pinned: rusqlite::Result<i64> =
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0));
        if let Err(e) = pinned {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        Ok(LongReader {
            conn: Some(conn),
            path: path.to_path_buf(),
        })
    }

    /// The database this reader is on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reader's connection, inside its transaction: queries see the snapshot taken at
    /// [`start`](LongReader::start).
    ///
    /// # Errors
    /// Never in practice (the connection is only taken by `release`); an error rather than
    /// a panic all the same.
    pub fn connection(&self) -> Result<&Connection> {
        self.conn
            .as_ref()
            .ok_or(Error::Sqlite(rusqlite::Error::InvalidQuery))
    }

    /// Ends the read transaction now.
    ///
    /// # Errors
    /// When the rollback fails.
    pub fn release(mut self) -> Result<()> {
        self.end()
    }

    fn end(&mut self) -> Result<()> {
        match self.conn.take() {
            Some(conn) => conn.execute_batch("ROLLBACK").map_err(Error::from),
            None => Ok(()),
        }
    }
}

impl Drop for LongReader {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// The size in bytes of the database's `-wal` file (0 when there is none).
pub fn wal_bytes(path: impl AsRef<Path>) -> u64 {
    let mut wal = path.as_ref().as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal)).map_or(0, |m| m.len())
}

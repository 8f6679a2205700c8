//! The fixtures themselves: `TempDb` lifetimes, `WriteLock`, and the busy provokers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use luca_core::Error;
use luca_core::pragmas::{self, Pragmas};
use luca_core::retry::{BusyCode, Retryable};
use luca_core::rusqlite::{self, Connection, ErrorCode};
use luca_testkit::{SnapshotBreaker, TempDb, WriteLock, force_busy, force_busy_snapshot};

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn open_wal(path: &Path, busy_timeout: Duration) -> Connection {
    pragmas::open(path, &Pragmas::new().with_busy_timeout(busy_timeout)).unwrap()
}

fn extended(e: &rusqlite::Error) -> Option<i32> {
    e.sqlite_error().map(|e| e.extended_code)
}

// --- TempDb --------------------------------------------------------------------------------

#[test]
fn temp_db_paths_are_unique() {
    let dbs: Vec<TempDb> = (0..50).map(|_| TempDb::new()).collect();
    let paths: HashSet<&Path> = dbs.iter().map(TempDb::path).collect();
    assert_eq!(paths.len(), 50);
    let dirs: HashSet<&Path> = dbs.iter().map(|d| d.path().parent().unwrap()).collect();
    assert_eq!(dirs.len(), 50, "each in a directory of its own");
    for db in &dbs {
        assert_eq!(db.path().file_name().unwrap(), "test.db");
        assert!(db.path().is_absolute());
        assert!(db.path().parent().unwrap().is_dir());
        assert!(!db.path().exists(), "not created until opened");
        assert_eq!(AsRef::<Path>::as_ref(db), db.path());
    }
    let named = TempDb::named("jobs.sqlite");
    assert_eq!(named.path().file_name().unwrap(), "jobs.sqlite");
    assert!(!paths.contains(named.path()));
}

#[test]
fn temp_db_paths_are_unique_across_threads() {
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..10)
                        .map(|_| TempDb::new().keep())
                        .collect::<Vec<PathBuf>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let unique: HashSet<&PathBuf> = paths.iter().collect();
    assert_eq!(unique.len(), 80);
    for p in &paths {
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }
}

#[test]
fn temp_db_removes_the_directory_with_wal_and_shm_on_drop() {
    let db = TempDb::new();
    let path = db.path().to_path_buf();
    let dir = path.parent().unwrap().to_path_buf();
    // Keep a connection open past the drop so the -wal and -shm files still exist then.
    let conn = open_wal(&path, Duration::from_secs(5));
    conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();
    let wal = with_suffix(&path, "-wal");
    let shm = with_suffix(&path, "-shm");
    assert!(path.is_file());
    assert!(wal.is_file(), "{} exists", wal.display());
    assert!(shm.is_file(), "{} exists", shm.display());

    drop(db);
    assert!(!path.exists());
    assert!(!wal.exists());
    assert!(!shm.exists());
    assert!(!dir.exists(), "{} removed", dir.display());
    drop(conn);
    assert!(!dir.exists());
}

#[test]
fn temp_db_removes_an_unused_directory_too() {
    let db = TempDb::try_new().unwrap();
    let dir = db.path().parent().unwrap().to_path_buf();
    assert!(dir.is_dir());
    drop(db);
    assert!(!dir.exists());
}

#[test]
fn temp_db_is_kept_when_the_test_panics() {
    let (tx, rx) = mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let db = TempDb::new();
        let conn = open_wal(db.path(), Duration::from_secs(5));
        conn.execute_batch("CREATE TABLE evidence (x INTEGER); INSERT INTO evidence VALUES (7);")
            .unwrap();
        drop(conn);
        tx.send(db.path().to_path_buf()).unwrap();
        panic!("deliberate failure inside a test using TempDb");
    })
    .join();
    let payload = outcome.expect_err("the thread panicked");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"deliberate failure inside a test using TempDb")
    );
    let path = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let dir = path.parent().unwrap().to_path_buf();
    let kept = path.is_file();
    // Read the evidence before cleaning up, then clean up before asserting.
    let evidence: Option<i64> = kept.then(|| {
        Connection::open(&path)
            .unwrap()
            .query_row("SELECT x FROM evidence", [], |r| r.get(0))
            .unwrap()
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(kept, "{} kept after the panic", path.display());
    assert_eq!(evidence, Some(7));
    assert!(!dir.exists());
}

#[test]
fn temp_db_keep_returns_a_path_that_survives() {
    let db = TempDb::new();
    Connection::open(db.path())
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let path = db.keep();
    let kept = path.is_file();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    assert!(kept);
}

// --- WriteLock -----------------------------------------------------------------------------

fn begin_immediate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
}

#[test]
fn write_lock_blocks_other_writers_until_released() {
    let db = TempDb::new();
    let other = open_wal(db.path(), Duration::ZERO);
    let lock = WriteLock::hold(db.path()).unwrap();
    assert_eq!(lock.path(), db.path());

    let started = Instant::now();
    let err = begin_immediate(&other).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "busy_timeout 0 fails at once"
    );
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
    assert_eq!(extended(&err), Some(5));
    assert_eq!(err.busy_code(), Some(BusyCode::Busy));
    assert!(other.is_autocommit(), "no transaction was started");

    // Readers are not blocked in WAL mode.
    let n: i64 = other
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);

    lock.release().unwrap();
    begin_immediate(&other).unwrap();
    other
        .execute_batch("CREATE TABLE t (x INTEGER); COMMIT;")
        .unwrap();
}

#[test]
fn write_lock_is_released_on_drop() {
    let db = TempDb::new();
    let other = open_wal(db.path(), Duration::ZERO);
    {
        let _lock = WriteLock::hold(db.path()).unwrap();
        assert_eq!(extended(&begin_immediate(&other).unwrap_err()), Some(5));
    }
    begin_immediate(&other).unwrap();
    other.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn write_lock_release_after_lets_a_waiting_writer_through() {
    let db = TempDb::new();
    let lock = WriteLock::hold(db.path()).unwrap();
    let started = Instant::now();
    let releaser = lock.release_after(Duration::from_millis(100));
    // SQLite's own busy handler waits for the release.
    let waiter = open_wal(db.path(), Duration::from_secs(10));
    begin_immediate(&waiter).unwrap();
    let waited = started.elapsed();
    waiter.execute_batch("ROLLBACK").unwrap();
    releaser.join().unwrap().unwrap();
    assert!(waited >= Duration::from_millis(90), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}

#[test]
fn a_second_write_lock_waits_for_the_first() {
    let db = TempDb::new();
    let first = WriteLock::hold(db.path()).unwrap();
    let releaser = first.release_after(Duration::from_millis(50));
    let second = WriteLock::hold(db.path()).unwrap();
    releaser.join().unwrap().unwrap();
    let other = open_wal(db.path(), Duration::ZERO);
    assert_eq!(extended(&begin_immediate(&other).unwrap_err()), Some(5));
    second.release().unwrap();
    begin_immediate(&other).unwrap();
    other.execute_batch("ROLLBACK").unwrap();
}

/// A path whose directory does not exist: SQLite cannot open it.
fn unopenable(db: &TempDb) -> PathBuf {
    db.path().parent().unwrap().join("missing").join("x.db")
}

/// The error for a file SQLite could not open: `Error::Open` naming `path`, with
/// `SQLITE_CANTOPEN`.
fn assert_cannot_open(err: &Error, path: &Path) {
    match err {
        Error::Open { path: p, source } => {
            assert_eq!(p, path);
            assert_eq!(
                source.sqlite_error_code(),
                Some(ErrorCode::CannotOpen),
                "{err}"
            );
        }
        other => panic!("expected Error::Open for {}, got {other:?}", path.display()),
    }
    assert!(err.to_string().contains("missing"), "names the file: {err}");
}

#[test]
fn force_busy_needs_a_held_lock() {
    let db = TempDb::new();
    let lock = WriteLock::hold(db.path()).unwrap();
    for _ in 0..5 {
        let err = force_busy(db.path()).unwrap();
        assert_eq!(extended(&err), Some(5));
        assert_eq!(err.busy_code(), Some(BusyCode::Busy));
    }
    lock.release().unwrap();
    // Without a lock the write succeeds, and force_busy says so with its own error: not a
    // busy error, not an open error.
    let err = force_busy(db.path()).unwrap_err();
    assert!(
        matches!(err, Error::Sqlite(rusqlite::Error::InvalidQuery)),
        "the write succeeded, reported as InvalidQuery: {err:?}"
    );
    assert_eq!(err.busy_code(), None);
    // The file that does not open is told apart from the write that succeeded.
    let bad = unopenable(&db);
    assert_cannot_open(&force_busy(&bad).unwrap_err(), &bad);
}

#[test]
fn write_lock_on_an_unopenable_path_is_an_error() {
    let db = TempDb::new();
    let bad = unopenable(&db);
    let err = WriteLock::hold(&bad).unwrap_err();
    assert_cannot_open(&err, &bad);
}

// --- BUSY_SNAPSHOT -------------------------------------------------------------------------

#[test]
fn force_busy_snapshot_is_deterministic() {
    let db = TempDb::new();
    for i in 0..20 {
        let err = force_busy_snapshot(db.path()).unwrap();
        assert_eq!(extended(&err), Some(517), "run {i}: {err}");
        assert_eq!(err.busy_code(), Some(BusyCode::BusySnapshot), "run {i}");
    }
    // Fresh databases too.
    for i in 0..20 {
        let db = TempDb::new();
        let err = force_busy_snapshot(db.path()).unwrap();
        assert_eq!(extended(&err), Some(517), "fresh db {i}: {err}");
    }
    // Each provocation leaves the database usable: the breaker's commits are there, the
    // failed writes are not.
    let conn = open_wal(db.path(), Duration::from_secs(5));
    let (ones, twos): (i64, i64) = conn
        .query_row(
            "SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n = 2)
             FROM luca_testkit_bump",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((ones, twos), (20, 0));
}

#[test]
fn snapshot_breaker_makes_an_open_snapshot_stale() {
    let db = TempDb::new();
    let breaker = SnapshotBreaker::new(db.path()).unwrap();
    let mut reader = open_wal(db.path(), Duration::from_secs(5));
    reader
        .execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
        .unwrap();

    let tx = reader
        .transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)
        .unwrap();
    let _: i64 = tx
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    breaker.commit().unwrap();
    let err = tx.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
    assert_eq!(extended(&err), Some(517));
    drop(tx);

    // Re-run from the start, on a fresh snapshot: it succeeds.
    let tx = reader
        .transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)
        .unwrap();
    let _: i64 = tx
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
    tx.commit().unwrap();
}

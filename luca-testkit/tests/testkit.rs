//! The fixtures themselves: `TempDb` lifetimes, `WriteLock`, and the busy provokers.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use luca_core::Error;
use luca_core::pragmas::{self, Pragmas};
use luca_core::retry::{BusyCode, Retryable};
use luca_core::rusqlite::{self, Connection, ErrorCode};
use luca_testkit::{
    LongReader, SnapshotBreaker, TempDb, WriteLock, force_busy, force_busy_snapshot,
    force_busy_upgrade, wal_bytes,
};

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

// --- TempDb names, root, sweep, Db openers --------------------------------------------------

#[test]
fn temp_db_is_named_after_the_test_under_the_luca_root() {
    let db = TempDb::new();
    let dir = db.dir().to_path_buf();
    assert_eq!(db.path().parent(), Some(dir.as_path()));
    assert_eq!(dir.parent(), Some(TempDb::root().as_path()));
    assert_eq!(TempDb::root().file_name().unwrap(), "luca-testkit");
    let name = dir.file_name().unwrap().to_str().unwrap();
    // libtest names the thread `temp_db_is_named_after_the_test_under_the_luca_root`.
    assert!(
        name.starts_with("temp_db_is_named_after_the_test_under_the_luca_root."),
        "{name}"
    );

    let explicit = TempDb::for_test("my_crate::jobs::tests::claims never double-book");
    let name = explicit.dir().file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("my_crate-jobs-tests-claims_never_double-book."),
        "{name}"
    );
    assert_eq!(explicit.path().file_name().unwrap(), "test.db");

    // A thread without a name, or a very long name.
    let unnamed = std::thread::Builder::new()
        .spawn(|| TempDb::new().keep())
        .unwrap()
        .join()
        .unwrap();
    let long = TempDb::for_test(&"x".repeat(500));
    let long_name = long.dir().file_name().unwrap().to_str().unwrap().to_owned();
    let kept_name = unnamed
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    std::fs::remove_dir_all(unnamed.parent().unwrap()).unwrap();
    assert!(kept_name.starts_with("test."), "{kept_name}");
    assert!(long_name.len() < 80, "{long_name}");
    let odd = TempDb::for_test("::/..\\ é");
    let odd_name = odd.dir().file_name().unwrap().to_str().unwrap();
    assert!(odd_name.starts_with("test."), "{odd_name}");
    assert_eq!(odd.dir().parent(), Some(TempDb::root().as_path()));
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::open(path).unwrap().set_modified(t).unwrap();
}

#[test]
fn sweep_removes_only_directories_untouched_for_the_age() {
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let now = SystemTime::now();
    // A directory a failed test kept two days ago, and one kept an hour ago.
    let old = TempDb::for_test("sweep_old").keep();
    let recent = TempDb::for_test("sweep_recent").keep();
    let touched_today = TempDb::for_test("sweep_touched").keep();
    for p in [&old, &recent, &touched_today] {
        std::fs::write(p, b"evidence").unwrap();
    }
    set_mtime(&old, now - hours(48));
    set_mtime(old.parent().unwrap(), now - hours(48));
    set_mtime(&recent, now - hours(1));
    set_mtime(recent.parent().unwrap(), now - hours(1));
    // An old directory whose file was written recently is in use.
    set_mtime(touched_today.parent().unwrap(), now - hours(48));
    // A stray file in the root is never touched.
    let stray = TempDb::root().join(format!("stray-file-{}", std::process::id()));
    std::fs::write(&stray, b"x").unwrap();
    set_mtime(&stray, now - hours(48));

    let sweep = TempDb::sweep(hours(24)).unwrap();
    let (old_gone, recent_kept, touched_kept) = (
        !old.parent().unwrap().exists(),
        recent.is_file(),
        touched_today.is_file(),
    );
    let stray_kept = stray.is_file();
    for p in [&recent, &touched_today] {
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
    let _ = std::fs::remove_dir_all(old.parent().unwrap());
    let _ = std::fs::remove_file(&stray);
    assert!(old_gone, "{} removed", old.display());
    assert!(recent_kept && touched_kept);
    assert!(stray_kept, "files in the root are not swept");
    assert!(sweep.removed >= 1, "{sweep:?}");
    assert!(sweep.kept >= 2, "{sweep:?}");
}

#[test]
fn temp_db_opens_a_db_with_or_without_builder_settings() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = TempDb::new();
        let db = tmp.db().await.unwrap();
        assert_eq!(db.path(), tmp.path());
        db.write(|c| Ok(c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1)")?))
            .await
            .unwrap();
        db.close().await.unwrap();

        // The builder's setting takes effect: too many readers is refused with a typed error.
        let err = tmp.db_with(|b| b.max_readers(100_000)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidSetting {
                    setting: "max_readers",
                    ..
                }
            ),
            "{err:?}"
        );
        let db = tmp
            .db_with(|b| b.max_readers(2).group_commit(false))
            .await
            .unwrap();
        let n: i64 = db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 1);
        db.close().await.unwrap();
    });
    let tmp = TempDb::new();
    let db = tmp.db_blocking().unwrap();
    db.write_blocking(|c| Ok(c.execute_batch("CREATE TABLE t (x)")?))
        .unwrap();
    db.close_blocking().unwrap();
    let err = tmp
        .db_blocking_with(|b| b.max_readers(100_000))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSetting { .. }), "{err:?}");
    let db = tmp.db_blocking_with(|b| b.max_readers(1)).unwrap();
    assert_eq!(db.stats().writes_ok, 0);
    db.close_blocking().unwrap();
    assert_eq!(tmp.builder().build_blocking().unwrap().path(), tmp.path());
}

// --- DEFERRED upgrade, long reader ----------------------------------------------------------

#[test]
fn force_busy_upgrade_fails_at_once_without_the_busy_handler() {
    let db = TempDb::new();
    for i in 0..20 {
        let seen = force_busy_upgrade(db.path()).unwrap();
        assert_eq!(extended(&seen.error), Some(5), "run {i}: {}", seen.error);
        assert_eq!(seen.error.busy_code(), Some(BusyCode::Busy));
        assert_eq!(seen.busy_handler_calls, 0, "run {i}");
        // Its busy handler would have waited about 5 s.
        assert!(seen.waited < Duration::from_secs(4), "{:?}", seen.waited);
    }
    // Nothing was held or written: an IMMEDIATE writer gets in at once, the table is empty.
    let conn = open_wal(db.path(), Duration::ZERO);
    begin_immediate(&conn).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM luca_testkit_bump", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch("ROLLBACK").unwrap();
    assert_eq!(n, 0);
    let bad = unopenable(&db);
    assert_cannot_open(&force_busy_upgrade(&bad).unwrap_err(), &bad);
}

#[test]
fn the_busy_handler_does_run_for_a_plain_immediate_writer() {
    // The contrast to the upgrade: a writer that has not read yet waits in the handler.
    let db = TempDb::new();
    let lock = WriteLock::hold(db.path()).unwrap();
    let (tx, rx) = mpsc::channel();
    let path = db.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        let conn = open_wal(&path, Duration::from_secs(20));
        tx.send(()).unwrap();
        begin_immediate(&conn).map(|()| conn.execute_batch("ROLLBACK"))
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    lock.release().unwrap();
    waiter.join().unwrap().unwrap().unwrap();
}

fn write_pages(conn: &Connection, rows: usize) {
    for _ in 0..rows {
        conn.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
            .unwrap();
    }
}

/// (wal frames, frames checkpointed) of a PASSIVE checkpoint.
fn passive_checkpoint(conn: &Connection) -> (i64, i64) {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
    .unwrap()
}

#[test]
fn long_reader_pins_its_snapshot_and_the_wal() {
    let db = TempDb::new();
    let writer = open_wal(db.path(), Duration::from_secs(5));
    writer
        .execute_batch("PRAGMA wal_autocheckpoint=100; CREATE TABLE t (x BLOB); INSERT INTO t VALUES (zeroblob(10));")
        .unwrap();
    let reader = LongReader::start(db.path()).unwrap();
    assert_eq!(reader.path(), db.path());
    write_pages(&writer, 400);
    let pinned = wal_bytes(db.path());
    // The reader still sees the one row of its snapshot.
    let seen: i64 = reader
        .connection()
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seen, 1);
    let (log, done) = passive_checkpoint(&writer);
    assert!(
        done < log,
        "checkpoint stopped at the reader: {done} of {log}"
    );
    assert!(pinned > 400 * 4000, "the WAL holds every page: {pinned}");

    reader.release().unwrap();
    let (log, done) = passive_checkpoint(&writer);
    assert_eq!(done, log, "with the reader gone the checkpoint completes");

    // The same writes without a reader: autocheckpoints let the WAL restart, so it stays
    // far smaller.
    let free = TempDb::new();
    let w2 = open_wal(free.path(), Duration::from_secs(5));
    w2.execute_batch("PRAGMA wal_autocheckpoint=100; CREATE TABLE t (x BLOB);")
        .unwrap();
    write_pages(&w2, 400);
    let unpinned = wal_bytes(free.path());
    assert!(unpinned * 2 < pinned, "{unpinned} vs {pinned}");
    assert_eq!(wal_bytes(free.dir().join("none.db")), 0);
}

#[test]
fn long_reader_is_released_on_drop_and_reports_open_errors() {
    let db = TempDb::new();
    let writer = open_wal(db.path(), Duration::from_secs(5));
    writer.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
    {
        let _reader = LongReader::start(db.path()).unwrap();
        write_pages(&writer, 10);
        let (log, done) = passive_checkpoint(&writer);
        assert!(done < log);
    }
    let (log, done) = passive_checkpoint(&writer);
    assert_eq!(done, log);
    let bad = unopenable(&db);
    assert_cannot_open(&LongReader::start(&bad).unwrap_err(), &bad);
}

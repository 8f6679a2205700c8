//! Parity with the Python original's concurrency suite (WAL mode, connection reuse,
//! 10 threads × 20 writes, retry on lock), plus the PRAGMAs and open errors of
//! `luca_core::local`.
//!
//! Thread-local connections are per thread, and tests in this binary run in parallel on
//! threads the harness may reuse, so every test that looks at the connection cache runs
//! its part in a thread of its own.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use luca_core::db_retry;
use luca_core::local::{cleanup_connections, open_connections, with_connection};
use luca_core::pragmas::{self, Pragmas};
use luca_core::retry::{BusyCode, RetryEvent};
use luca_core::rusqlite::Connection;
use luca_testkit::{TempDb, WriteLock};

/// Runs `f` on a fresh thread (empty connection cache) and returns its result.
fn on_fresh_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the thread did not panic"))
}

fn journal_mode(conn: &Connection) -> luca_core::Result<String> {
    Ok(conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?)
}

fn wal_file(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

// --- 1. WAL mode ---------------------------------------------------------------------------

#[test]
fn wal_mode_is_enabled() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        let mode = with_connection(db.path(), journal_mode).unwrap();
        assert_eq!(mode, "wal");
        with_connection(db.path(), |c| {
            c.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")?;
            Ok(())
        })
        .unwrap();
        assert!(
            wal_file(db.path()).exists(),
            "a write in WAL mode goes to the -wal file"
        );
        cleanup_connections();
    });
    // WAL is persistent: a plain connection opened afterwards sees it too.
    let plain = Connection::open(db.path()).unwrap();
    assert_eq!(journal_mode(&plain).unwrap(), "wal");
}

// --- 2. connection reuse ---------------------------------------------------------------------

/// Creates a TEMP table on this thread's connection: it exists only on that connection.
fn mark(path: &Path, value: i64) -> luca_core::Result<()> {
    with_connection(path, |c| {
        c.execute_batch("CREATE TEMP TABLE IF NOT EXISTS marker (v INTEGER)")?;
        c.execute("INSERT INTO marker VALUES (?1)", [value])?;
        Ok(())
    })
}

/// The marker this thread's connection holds, or `None` on a connection without it.
fn read_mark(path: &Path) -> luca_core::Result<Option<i64>> {
    with_connection(path, |c| {
        let has: bool = c.query_row(
            "SELECT count(*) > 0 FROM sqlite_temp_master WHERE name = 'marker'",
            [],
            |r| r.get(0),
        )?;
        if !has {
            return Ok(None);
        }
        Ok(Some(c.query_row("SELECT v FROM marker", [], |r| r.get(0))?))
    })
}

fn conn_addr(path: &Path) -> usize {
    with_connection(path, |c| Ok(std::ptr::from_ref(c) as usize)).unwrap()
}

#[test]
fn same_thread_and_path_reuse_one_connection() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        assert_eq!(open_connections(), 0);
        mark(db.path(), 42).unwrap();
        assert_eq!(open_connections(), 1);
        let first = conn_addr(db.path());
        for _ in 0..10 {
            assert_eq!(read_mark(db.path()).unwrap(), Some(42));
            assert_eq!(conn_addr(db.path()), first);
        }
        assert_eq!(open_connections(), 1, "still one connection");

        // Nested calls get the same connection too.
        let nested = with_connection(db.path(), |outer| {
            let outer_addr = std::ptr::from_ref(outer) as usize;
            with_connection(db.path(), |inner| {
                Ok(outer_addr == std::ptr::from_ref(inner) as usize)
            })
        })
        .unwrap();
        assert!(nested);
        assert_eq!(cleanup_connections(), 1);
    });
}

#[test]
fn two_spellings_of_one_path_share_a_connection() {
    let db = TempDb::new();
    let dir = db.path().parent().unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let roundabout = dir
        .join("sub")
        .join("..")
        .join(db.path().file_name().unwrap());
    on_fresh_thread(|| {
        let direct = conn_addr(db.path());
        assert_eq!(conn_addr(&roundabout), direct);
        assert_eq!(open_connections(), 1);
        assert_eq!(cleanup_connections(), 1);
    });
}

#[test]
fn another_thread_gets_another_connection() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        mark(db.path(), 1).unwrap();
        // A second thread, while the first still holds its connection.
        let other = on_fresh_thread(|| {
            let seen = read_mark(db.path()).unwrap();
            let n = open_connections();
            mark(db.path(), 2).unwrap();
            let own = read_mark(db.path()).unwrap();
            cleanup_connections();
            (seen, n, own)
        });
        assert_eq!(other, (None, 1, Some(2)), "the marker is per connection");
        assert_eq!(
            read_mark(db.path()).unwrap(),
            Some(1),
            "this thread's connection is untouched"
        );
        assert_eq!(open_connections(), 1);
        cleanup_connections();
    });
}

#[test]
fn cleanup_returns_the_count_and_a_later_call_reopens() {
    let a = TempDb::new();
    let b = TempDb::named("other.db");
    on_fresh_thread(|| {
        assert_eq!(cleanup_connections(), 0, "nothing open yet");
        mark(a.path(), 1).unwrap();
        mark(b.path(), 2).unwrap();
        assert_eq!(open_connections(), 2, "one per path");
        assert_eq!(read_mark(a.path()).unwrap(), Some(1));
        assert_eq!(read_mark(b.path()).unwrap(), Some(2));

        assert_eq!(cleanup_connections(), 2);
        assert_eq!(open_connections(), 0);
        assert_eq!(cleanup_connections(), 0, "a second cleanup finds nothing");

        // Reopened: a new connection, without the TEMP marker, with the same PRAGMAs.
        assert_eq!(read_mark(a.path()).unwrap(), None);
        assert_eq!(open_connections(), 1);
        assert_eq!(with_connection(a.path(), journal_mode).unwrap(), "wal");
        mark(a.path(), 3).unwrap();
        assert_eq!(read_mark(a.path()).unwrap(), Some(3));
        assert_eq!(cleanup_connections(), 1);
    });
}

#[test]
fn cleanup_inside_a_call_keeps_the_connection_alive_until_it_returns() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        mark(db.path(), 5).unwrap();
        let v = with_connection(db.path(), |c| {
            assert_eq!(cleanup_connections(), 1);
            // The connection in hand still works.
            Ok(c.query_row("SELECT v FROM marker", [], |r| r.get::<_, i64>(0))?)
        })
        .unwrap();
        assert_eq!(v, 5);
        assert_eq!(open_connections(), 0);
        assert_eq!(read_mark(db.path()).unwrap(), None, "reopened afresh");
        cleanup_connections();
    });
}

// --- 3. concurrent writes: 10 threads × 20 writes ---------------------------------------------

#[db_retry(max_retries = 10, delay_ms = 5, max_delay_ms = 200)]
fn write_row(path: &Path, thread: i64, seq: i64) -> luca_core::Result<()> {
    with_connection(path, |c| {
        c.execute(
            "INSERT INTO writes (thread, seq) VALUES (?1, ?2)",
            [thread, seq],
        )?;
        Ok(())
    })
}

#[db_retry(max_retries = 10, delay_ms = 5, max_delay_ms = 200)]
fn write_two_in_a_transaction(path: &Path, thread: i64, seq: i64) -> luca_core::Result<()> {
    with_connection(path, |c| {
        c.execute_batch("BEGIN IMMEDIATE")?;
        let out = c
            .execute(
                "INSERT INTO writes (thread, seq) VALUES (?1, ?2)",
                [thread, seq],
            )
            .and_then(|_| c.execute("UPDATE totals SET n = n + 1 WHERE thread = ?1", [thread]))
            .and_then(|_| c.execute_batch("COMMIT"));
        if out.is_err() {
            let _ = c.execute_batch("ROLLBACK");
        }
        Ok(out?)
    })
}

const THREADS: i64 = 10;
const WRITES: i64 = 20;

fn setup_writes(db: &TempDb) {
    let conn = pragmas::open(db.path(), &Pragmas::new()).unwrap();
    conn.execute_batch(
        "CREATE TABLE writes (
             id INTEGER PRIMARY KEY,
             thread INTEGER NOT NULL,
             seq INTEGER NOT NULL,
             UNIQUE (thread, seq)
         );
         CREATE TABLE totals (thread INTEGER PRIMARY KEY, n INTEGER NOT NULL);",
    )
    .unwrap();
    for t in 0..THREADS {
        conn.execute("INSERT INTO totals VALUES (?1, 0)", [t])
            .unwrap();
    }
}

fn run_writers(db: &TempDb, write: fn(&Path, i64, i64) -> luca_core::Result<()>) {
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let path = db.path().to_path_buf();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut errors = Vec::new();
                for seq in 0..WRITES {
                    if let Err(e) = write(&path, t, seq) {
                        errors.push(format!("thread {t} write {seq}: {e}"));
                    }
                }
                let open = open_connections();
                cleanup_connections();
                (errors, open)
            })
        })
        .collect();
    for h in handles {
        let (errors, open) = h.join().expect("writer did not panic");
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(
            open, 1,
            "each writer reused one connection for all its writes"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "200 writes took {:?}",
        started.elapsed()
    );
}

fn verify_writes(db: &TempDb) {
    let conn = pragmas::open(db.path(), &Pragmas::new()).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM writes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, THREADS * WRITES);
    let mut stmt = conn.prepare("SELECT thread, seq FROM writes").unwrap();
    let rows: HashSet<(i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let want: HashSet<(i64, i64)> = (0..THREADS)
        .flat_map(|t| (0..WRITES).map(move |s| (t, s)))
        .collect();
    assert_eq!(rows, want, "every write landed exactly once");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

#[test]
fn ten_threads_twenty_writes_each() {
    let db = TempDb::new();
    setup_writes(&db);
    run_writers(&db, write_row);
    verify_writes(&db);
}

#[test]
fn ten_threads_twenty_transactions_each() {
    let db = TempDb::new();
    setup_writes(&db);
    run_writers(&db, write_two_in_a_transaction);
    verify_writes(&db);
    let conn = pragmas::open(db.path(), &Pragmas::new()).unwrap();
    let mut stmt = conn
        .prepare("SELECT n FROM totals ORDER BY thread")
        .unwrap();
    let totals: Vec<i64> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(totals, vec![WRITES; THREADS as usize]);
}

// --- 4. retry on lock ------------------------------------------------------------------------

static LOCK_RETRIES: AtomicU32 = AtomicU32::new(0);

/// The write lock `write_under_lock` meets, released by its retry hook: the first attempt
/// always fails busy and the second always finds the lock free.
static HELD_LOCK: std::sync::Mutex<Option<WriteLock>> = std::sync::Mutex::new(None);

fn count_retry(event: &RetryEvent) {
    assert_eq!(event.code, BusyCode::Busy, "{event:?}");
    assert!(event.function.ends_with("::write_under_lock"), "{event:?}");
    LOCK_RETRIES.fetch_add(1, Ordering::SeqCst);
    if let Some(lock) = HELD_LOCK.lock().unwrap().take() {
        lock.release().unwrap();
    }
}

#[db_retry(max_retries = 50, delay_ms = 10, max_delay_ms = 40, on_retry = count_retry)]
fn write_under_lock(conn: &Connection, attempts: &AtomicU32) -> luca_core::Result<()> {
    attempts.fetch_add(1, Ordering::SeqCst);
    conn.execute("INSERT INTO t (x) VALUES (1)", [])?;
    Ok(())
}

#[test]
fn retry_on_lock() {
    let db = TempDb::new();
    let conn = pragmas::open(
        db.path(),
        &Pragmas::new().with_busy_timeout(Duration::from_millis(10)),
    )
    .unwrap();
    conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();

    *HELD_LOCK.lock().unwrap() = Some(WriteLock::hold(db.path()).unwrap());
    let attempts = AtomicU32::new(0);
    write_under_lock(&conn, &attempts).unwrap();

    assert!(HELD_LOCK.lock().unwrap().is_none(), "the retry hook ran");
    assert_eq!(
        LOCK_RETRIES.load(Ordering::SeqCst),
        1,
        "the held lock forced one retry"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

// --- PRAGMAs ---------------------------------------------------------------------------------

#[test]
fn with_connection_applies_the_pragmas() {
    let db = TempDb::new();
    on_fresh_thread(|| {
        let (busy_timeout, mode, synchronous, foreign_keys, query_only) =
            with_connection(db.path(), |c| {
                let get = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0));
                Ok((
                    get("PRAGMA busy_timeout")?,
                    journal_mode(c)?,
                    get("PRAGMA synchronous")?,
                    get("PRAGMA foreign_keys")?,
                    get("PRAGMA query_only")?,
                ))
            })
            .unwrap();
        assert_eq!(busy_timeout, 30_000);
        assert_eq!(mode, "wal");
        assert_eq!(synchronous, 1, "NORMAL");
        assert_eq!(foreign_keys, 1);
        assert_eq!(query_only, 0);

        // foreign_keys=ON is enforced, not just reported.
        let err = with_connection(db.path(), |c| {
            c.execute_batch(
                "CREATE TABLE parent (id INTEGER PRIMARY KEY);
                 CREATE TABLE child (p INTEGER NOT NULL REFERENCES parent(id));",
            )?;
            c.execute("INSERT INTO child VALUES (99)", [])?;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.extended_code(), Some(787), "{err}"); // CONSTRAINT_FOREIGNKEY
        cleanup_connections();
    });
}

// --- open errors ------------------------------------------------------------------------------

fn assert_names_path(err: &luca_core::Error, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "the message names {}: {msg}",
        path.display()
    );
}

#[test]
fn opening_a_directory_is_a_typed_error() {
    let db = TempDb::new();
    let dir = db.path().parent().unwrap().join("a-directory");
    std::fs::create_dir(&dir).unwrap();
    on_fresh_thread(|| {
        let mut ran = false;
        let err = with_connection(&dir, |_| {
            ran = true;
            Ok(())
        })
        .unwrap_err();
        assert!(!ran, "the closure never runs");
        assert!(
            matches!(&err, luca_core::Error::InvalidPath { path, .. } if *path == dir),
            "{err:?}"
        );
        assert_names_path(&err, &dir);
        assert_eq!(open_connections(), 0, "nothing cached");
    });
}

#[test]
fn opening_in_a_missing_directory_is_a_typed_error() {
    let db = TempDb::new();
    let path = db
        .path()
        .parent()
        .unwrap()
        .join("missing")
        .join("deeper")
        .join("app.db");
    on_fresh_thread(|| {
        let err = with_connection(&path, |_| Ok(())).unwrap_err();
        assert!(
            matches!(&err, luca_core::Error::Open { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert_eq!(err.extended_code(), Some(14), "SQLITE_CANTOPEN: {err}");
        assert_eq!(
            luca_core::retry::Retryable::busy_code(&err),
            None,
            "not retryable"
        );
        assert_names_path(&err, &path);
        assert_eq!(open_connections(), 0);
        assert!(!path.exists());
    });
}

#[test]
fn opening_a_non_sqlite_file_is_a_typed_error() {
    let db = TempDb::named("garbage.db");
    let mut bytes = b"this is not a database, just some text and noise\n".repeat(40);
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(db.path(), &bytes).unwrap();
    on_fresh_thread(|| {
        for _ in 0..2 {
            let err = with_connection(db.path(), |_| Ok(())).unwrap_err();
            assert!(matches!(&err, luca_core::Error::Open { .. }), "{err:?}");
            assert_eq!(err.extended_code(), Some(26), "SQLITE_NOTADB: {err}");
            assert_names_path(&err, db.path());
            assert_eq!(open_connections(), 0, "a failed open is not cached");
        }
    });
    assert_eq!(
        std::fs::read(db.path()).unwrap(),
        bytes,
        "the file is left as it was"
    );
}

#[test]
fn an_empty_path_is_a_typed_error() {
    on_fresh_thread(|| {
        let err = with_connection("", |_| Ok(())).unwrap_err();
        assert!(
            matches!(err, luca_core::Error::InvalidPath { .. }),
            "{err:?}"
        );
        assert_eq!(open_connections(), 0);
    });
}

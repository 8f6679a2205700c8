//! The four checks of the original Python project's concurrency suite, as the job has
//! always run them:
//!
//! 1. WAL mode is on for luca's connections;
//! 2. a thread reuses its connection (`luca_core::local`);
//! 3. 10 threads × 20 writes through `#[db_retry]` functions, every one of the 200 rows
//!    verified afterwards;
//! 4. a write that meets a held write lock is retried and succeeds once the lock goes (the
//!    lock is released by the retry hook, on the busy event itself, so the check does not
//!    depend on timing).

use std::path::Path;
use std::sync::{Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use luca_core::db_retry;
use luca_core::local::{cleanup_connections, open_connections, with_connection};
use luca_core::pragmas::{self, Pragmas};
use luca_core::retry::RetryEvent;
use luca_core::rusqlite::{Connection, TransactionBehavior};
use luca_testkit::WriteLock;

pub(crate) const THREADS: usize = 10;
pub(crate) const WRITES_PER_THREAD: usize = 20;

/// A check's one-line verdict: what it saw, or why it failed.
pub(crate) type CheckResult = Result<String, String>;
pub(crate) type Check = fn(&Path) -> CheckResult;

/// The checks in order: name, a line printed before it runs (if any), the check.
pub(crate) const CHECKS: [(&str, Option<&str>, Check); 4] = [
    ("WAL mode", None, check_wal),
    ("connection reuse", None, check_reuse),
    (
        "concurrent writes",
        Some("running 10 threads, 20 writes each..."),
        check_concurrent_writes,
    ),
    ("retry on lock", None, check_retry_on_lock),
];

pub(crate) fn check_wal(path: &Path) -> CheckResult {
    let mode: String = with_connection(path, |c| {
        Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?)
    })
    .map_err(|e| e.to_string())?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(format!("journal mode: {mode}"))
    } else {
        Err(format!("journal mode is {mode}, expected wal"))
    }
}

pub(crate) fn check_reuse(path: &Path) -> CheckResult {
    // A TEMP table lives only in the connection that created it: seeing it again proves
    // the second call got the same connection.
    let seen = (|| -> luca_core::Result<bool> {
        with_connection(path, |c| {
            Ok(c.execute_batch("CREATE TEMP TABLE IF NOT EXISTS reuse_marker (x)")?)
        })?;
        with_connection(path, |c| {
            Ok(c.query_row(
                "SELECT count(*) FROM temp.sqlite_master WHERE name = 'reuse_marker'",
                [],
                |r| r.get::<_, i64>(0),
            )? == 1)
        })
    })()
    .map_err(|e| e.to_string())?;
    let open = open_connections();
    if seen && open == 1 {
        Ok("connection reused (1 open connection on this thread)".to_owned())
    } else {
        Err(format!("marker seen: {seen}, open connections: {open}"))
    }
}

/// One write: a whole `BEGIN IMMEDIATE … COMMIT` transaction, retried as a whole. An early
/// `?` leaves nothing open: `with_connection` rolls back what its closure did not commit.
#[db_retry(max_retries = 10, delay_ms = 5)]
fn insert_row(path: &std::path::Path, thread: usize, seq: usize) -> luca_core::Result<()> {
    with_connection(path, |conn| {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        conn.execute(
            "INSERT INTO writes (thread, seq) VALUES (?1, ?2)",
            [thread as i64, seq as i64],
        )?;
        conn.execute_batch("COMMIT")?;
        Ok(())
    })
}

pub(crate) fn check_concurrent_writes(path: &Path) -> CheckResult {
    with_connection(path, |c| {
        Ok(c.execute_batch(
            "CREATE TABLE IF NOT EXISTS writes (
                 thread INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (thread, seq))",
        )?)
    })
    .map_err(|e| e.to_string())?;
    let barrier = Barrier::new(THREADS);
    let start = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let mut errors = Vec::new();
                    for i in 0..WRITES_PER_THREAD {
                        if let Err(e) = insert_row(path, t, i) {
                            errors.push(format!("thread {t} write {i}: {e}"));
                        }
                    }
                    cleanup_connections();
                    errors
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["a writer panicked".to_owned()])
            })
            .collect()
    });
    let elapsed = start.elapsed();
    if !failures.is_empty() {
        return Err(format!(
            "{} writes failed; first: {}",
            failures.len(),
            failures[0]
        ));
    }
    let (rows, distinct): (i64, i64) = with_connection(path, |c| {
        Ok(c.query_row(
            "SELECT count(*), count(DISTINCT thread * 1000 + seq) FROM writes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    })
    .map_err(|e| e.to_string())?;
    let expected = (THREADS * WRITES_PER_THREAD) as i64;
    if rows == expected && distinct == expected {
        Ok(format!(
            "all {expected} rows written and verified in {:.1} ms",
            elapsed.as_secs_f64() * 1e3
        ))
    } else {
        Err(format!(
            "expected {expected} distinct rows, found {rows} ({distinct} distinct)"
        ))
    }
}

/// The write lock check 4 holds; the retry hook releases it.
static HELD_LOCK: Mutex<Option<WriteLock>> = Mutex::new(None);

/// Called by `#[db_retry]` before it sleeps for a retry: the write has met the lock, so
/// let it go now and the next attempt gets through.
fn release_held_lock(_event: &RetryEvent) {
    let lock = HELD_LOCK
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(lock) = lock {
        // Dropping a `WriteLock` rolls back its empty transaction as well; `release`
        // reports a failure, which the next attempt would then meet as a busy error.
        let _ = lock.release();
    }
}

/// A write on a connection whose own busy handler gives up at once, so a held lock
/// surfaces as SQLITE_BUSY and `#[db_retry]` has to retry it.
#[db_retry(max_retries = 8, delay_ms = 5, jitter = "none", on_retry = release_held_lock)]
fn write_past_lock(conn: &mut Connection) -> luca_core::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("INSERT INTO writes (thread, seq) VALUES (-1, -1)", [])?;
    tx.commit()?;
    Ok(())
}

pub(crate) fn check_retry_on_lock(path: &Path) -> CheckResult {
    let mut conn = pragmas::open(path, &Pragmas::new().with_busy_timeout(Duration::ZERO))
        .map_err(|e| e.to_string())?;
    let lock = WriteLock::hold(path).map_err(|e| e.to_string())?;
    *HELD_LOCK.lock().unwrap_or_else(PoisonError::into_inner) = Some(lock);
    let before = luca_core::metrics().snapshot();
    let outcome = write_past_lock(&mut conn);
    let delta = luca_core::metrics().snapshot().since(&before);
    let still_held = HELD_LOCK
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .is_some();
    outcome.map_err(|e| format!("write failed after {} retries: {e}", delta.retries()))?;
    if still_held || delta.retries() == 0 {
        return Err("the write succeeded without meeting the lock".to_owned());
    }
    if delta.calls_recovered != 1 {
        return Err(format!(
            "expected one call to recover after retrying, metrics say {}",
            delta.calls_recovered
        ));
    }
    Ok(format!(
        "met the lock, retried {} time(s), then the write succeeded",
        delta.retries()
    ))
}

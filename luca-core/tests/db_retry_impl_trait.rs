//! `#[db_retry]` on functions returning `Result<impl Trait, E>` where `E` is not
//! `Retryable` but reaches the `rusqlite::Error` through its `source()` chain.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use luca_core::db_retry;
use luca_core::retry::RetryEvent;
use luca_core::rusqlite;
use luca_testkit::{TempDb, WriteLock};

#[derive(Debug)]
struct Wrapped(rusqlite::Error);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wrapped")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<rusqlite::Error> for Wrapped {
    fn from(e: rusqlite::Error) -> Self {
        Wrapped(e)
    }
}

/// Held while a test's first attempt runs; the retry hook releases it.
static HELD: Mutex<Option<WriteLock>> = Mutex::new(None);
static HELD_ASYNC: Mutex<Option<WriteLock>> = Mutex::new(None);

fn release(slot: &Mutex<Option<WriteLock>>) {
    if let Some(lock) = slot.lock().unwrap().take() {
        lock.release().unwrap();
    }
}

fn release_sync(_: &RetryEvent) {
    release(&HELD);
}

fn release_async(_: &RetryEvent) {
    release(&HELD_ASYNC);
}

fn open(db: &TempDb) -> rusqlite::Connection {
    let conn = luca_core::pragmas::open(
        db.path(),
        &luca_core::pragmas::Pragmas::new().with_busy_timeout(Duration::ZERO),
    )
    .unwrap();
    conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")
        .unwrap();
    conn
}

/// The `?` conversion gives the body's error type only through the signature.
#[db_retry(max_retries = 3, delay_ms = 1, on_retry = release_sync)]
fn rows_via_question_mark(
    conn: &rusqlite::Connection,
    calls: &AtomicU32,
) -> Result<impl Iterator<Item = i64>, Wrapped> {
    calls.fetch_add(1, Ordering::SeqCst);
    conn.execute("INSERT INTO t (v) VALUES (3)", [])?;
    let n: i64 = conn.query_row("SELECT sum(v) FROM t", [], |r| r.get(0))?;
    Ok(0..n)
}

#[db_retry(max_retries = 3, delay_ms = 1, on_retry = release_async)]
async fn rows_via_question_mark_async(
    conn: &rusqlite::Connection,
    calls: &AtomicU32,
) -> Result<impl Iterator<Item = i64> + use<>, Wrapped> {
    calls.fetch_add(1, Ordering::SeqCst);
    conn.execute("INSERT INTO t (v) VALUES (2)", [])?;
    let n: i64 = conn.query_row("SELECT sum(v) FROM t", [], |r| r.get(0))?;
    Ok(0..n)
}

#[test]
fn impl_trait_result_with_question_mark_retries_a_real_busy() {
    let db = TempDb::new();
    let conn = open(&db);
    *HELD.lock().unwrap() = Some(WriteLock::hold(db.path()).unwrap());
    let calls = AtomicU32::new(0);
    let rows = rows_via_question_mark(&conn, &calls).expect("retried past the lock");
    assert_eq!(rows.count(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn async_impl_trait_result_with_question_mark_retries_a_real_busy() {
    let db = TempDb::new();
    let conn = open(&db);
    *HELD_ASYNC.lock().unwrap() = Some(WriteLock::hold(db.path()).unwrap());
    let calls = AtomicU32::new(0);
    let rows = rows_via_question_mark_async(&conn, &calls)
        .await
        .expect("retried past the lock");
    assert_eq!(rows.count(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn busy() -> Wrapped {
    Wrapped(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(5),
        None,
    ))
}

#[db_retry(max_retries = 3, delay_ms = 1)]
fn evens(calls: &AtomicU32, fail: u32) -> Result<impl Iterator<Item = u32>, Wrapped> {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    if n <= fail {
        return Err(busy());
    }
    Ok((0..n).map(|i| i * 2))
}

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn evens_async(
    calls: &AtomicU32,
    fail: u32,
) -> Result<impl Iterator<Item = u32> + use<>, Wrapped> {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    if n <= fail {
        return Err(busy());
    }
    Ok((0..n).map(|i| i * 2))
}

#[test]
fn sync_impl_trait_result_is_retried() {
    let calls = AtomicU32::new(0);
    let out: Vec<u32> = evens(&calls, 2).unwrap().collect();
    assert_eq!(out, [0, 2, 4]);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let calls = AtomicU32::new(0);
    assert!(evens(&calls, 10).is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 4, "1 attempt + 3 retries");
}

#[tokio::test]
async fn async_impl_trait_result_is_retried() {
    let calls = AtomicU32::new(0);
    let out: Vec<u32> = evens_async(&calls, 1).await.unwrap().collect();
    assert_eq!(out, [0, 2]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

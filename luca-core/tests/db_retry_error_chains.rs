//! `#[db_retry]` classifies the error shapes applications really write: thiserror's
//! `#[error(transparent)]` enums, and those boxed or wrapped in `anyhow`. Each is retried
//! through a real `SQLITE_BUSY` from a held write lock, released by the retry hook.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use luca_core::db_retry;
use luca_core::retry::{BusyCode, RetryEvent, Retryable, classify};
use luca_core::rusqlite::{self, Connection};
use luca_testkit::{TempDb, WriteLock};

/// The most common application error shape: `transparent` forwards `Display` and
/// `source()` to the `rusqlite::Error`, so its `source()` is the inner `ffi::Error`.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
    #[error("no row {0}")]
    Missing(i64),
}

mod common;
use common::open;

/// Takes the lock out of `slot` and releases it: called from `on_retry`, so the lock is
/// held for the first attempt and gone for the second, whatever the timing.
fn release(slot: &Mutex<Option<WriteLock>>) {
    if let Some(lock) = slot.lock().unwrap().take() {
        lock.release().unwrap();
    }
}

/// A real `SQLITE_BUSY` from SQLite: a writer meeting a held write lock.
fn real_busy() -> rusqlite::Error {
    let db = TempDb::new();
    drop(open(&db));
    let _lock = WriteLock::hold(db.path()).unwrap();
    luca_testkit::force_busy(db.path()).unwrap()
}

fn hold(db: &TempDb, slot: &Mutex<Option<WriteLock>>) {
    *slot.lock().unwrap() = Some(WriteLock::hold(db.path()).unwrap());
}

#[test]
fn transparent_chain_ends_in_the_ffi_error_and_is_classified() {
    let busy = real_busy();
    let app = AppError::from(busy);
    let source = std::error::Error::source(&app).expect("transparent forwards source()");
    assert!(
        source.downcast_ref::<rusqlite::ffi::Error>().is_some(),
        "the chain skips the rusqlite::Error: {source:?}"
    );
    assert_eq!(classify(&app), Some(BusyCode::Busy));
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(AppError::from(real_busy()));
    assert_eq!(boxed.busy_code(), Some(BusyCode::Busy));
    let boxed: Box<dyn std::error::Error> = Box::new(AppError::from(real_busy()));
    assert_eq!(boxed.busy_code(), Some(BusyCode::Busy));
    assert_eq!(classify(&AppError::Missing(1)), None);
    let constraint = AppError::from(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(2067),
        None,
    ));
    assert_eq!(classify(&constraint), None);
}

// --- the enum itself ----------------------------------------------------------------------

static LOCK_ENUM: Mutex<Option<WriteLock>> = Mutex::new(None);
static RETRIES_ENUM: AtomicU32 = AtomicU32::new(0);

fn release_enum(event: &RetryEvent) {
    assert_eq!(event.code, BusyCode::Busy, "{event:?}");
    RETRIES_ENUM.fetch_add(1, Ordering::SeqCst);
    release(&LOCK_ENUM);
}

#[db_retry(max_retries = 3, delay_ms = 1, on_retry = release_enum)]
fn insert_app(conn: &Connection, attempts: &AtomicU32) -> Result<i64, AppError> {
    attempts.fetch_add(1, Ordering::SeqCst);
    conn.execute("INSERT INTO t (v) VALUES (1)", [])?;
    Ok(conn.last_insert_rowid())
}

#[test]
fn thiserror_transparent_enum_is_retried() {
    let db = TempDb::new();
    let conn = open(&db);
    hold(&db, &LOCK_ENUM);
    let attempts = AtomicU32::new(0);
    let rowid = insert_app(&conn, &attempts).expect("retried past the busy lock");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(RETRIES_ENUM.load(Ordering::SeqCst), 1);
    assert_eq!(rowid, 1);
}

// --- boxed ------------------------------------------------------------------------------------

static LOCK_BOXED: Mutex<Option<WriteLock>> = Mutex::new(None);

fn release_boxed(_: &RetryEvent) {
    release(&LOCK_BOXED);
}

fn insert_once(conn: &Connection) -> Result<i64, AppError> {
    conn.execute("INSERT INTO t (v) VALUES (2)", [])?;
    Ok(conn.last_insert_rowid())
}

#[db_retry(max_retries = 3, delay_ms = 1, on_retry = release_boxed)]
fn insert_boxed(
    conn: &Connection,
    attempts: &AtomicU32,
) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    attempts.fetch_add(1, Ordering::SeqCst);
    Ok(insert_once(conn)?)
}

#[test]
fn boxed_transparent_enum_is_retried() {
    let db = TempDb::new();
    let conn = open(&db);
    hold(&db, &LOCK_BOXED);
    let attempts = AtomicU32::new(0);
    insert_boxed(&conn, &attempts).expect("retried past the busy lock");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

// --- anyhow -----------------------------------------------------------------------------------

#[cfg(feature = "anyhow")]
mod through_anyhow {
    use super::*;
    use anyhow::Context as _;

    static LOCK_ANYHOW: Mutex<Option<WriteLock>> = Mutex::new(None);

    fn release_anyhow(_: &RetryEvent) {
        release(&LOCK_ANYHOW);
    }

    #[db_retry(max_retries = 3, delay_ms = 1, on_retry = release_anyhow)]
    fn insert_anyhow(conn: &Connection, attempts: &AtomicU32) -> anyhow::Result<i64> {
        attempts.fetch_add(1, Ordering::SeqCst);
        insert_once(conn).context("inserting a row")
    }

    #[test]
    fn anyhow_around_a_transparent_enum_is_retried() {
        let err = anyhow::Error::from(AppError::from(real_busy())).context("outer");
        assert_eq!(err.busy_code(), Some(BusyCode::Busy));

        let db = TempDb::new();
        let conn = open(&db);
        hold(&db, &LOCK_ANYHOW);
        let attempts = AtomicU32::new(0);
        insert_anyhow(&conn, &attempts).expect("retried past the busy lock");
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }
}

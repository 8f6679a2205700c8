//! `#[db_retry]` on sync functions of every shape, against real SQLite files.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use luca_core::db_retry;
use luca_core::retry::{BusyCode, Retryable};
use luca_core::rusqlite::{self, Connection, TransactionBehavior};
use luca_testkit::{SnapshotBreaker, TempDb, WriteLock};

fn busy() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None)
}

mod common;
use common::open;

// --- free functions -------------------------------------------------------------------

#[db_retry(max_retries = 3, delay_ms = 1, jitter = "none")]
fn fails_n_times(calls: &AtomicU32, failures: u32) -> rusqlite::Result<u32> {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    if n <= failures {
        return Err(busy());
    }
    Ok(n)
}

#[test]
fn busy_is_retried_until_success() {
    let calls = AtomicU32::new(0);
    assert_eq!(fails_n_times(&calls, 2).unwrap(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn exhausted_retries_return_the_original_error() {
    let calls = AtomicU32::new(0);
    let err = fails_n_times(&calls, 100).unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "1 attempt + max_retries = 3"
    );
    assert_eq!(err.busy_code(), Some(BusyCode::Busy));
    assert_eq!(err.sqlite_error().unwrap().extended_code, 5);
}

#[db_retry(delay_ms = 1)]
fn insert(conn: &Connection, id: i64, calls: &AtomicU32) -> rusqlite::Result<usize> {
    calls.fetch_add(1, Ordering::SeqCst);
    conn.execute("INSERT INTO t (id, v) VALUES (?1, 0)", [id])
}

#[test]
fn constraint_violation_is_not_retried() {
    let db = TempDb::new();
    let conn = open(&db);
    let calls = AtomicU32::new(0);
    insert(&conn, 1, &calls).unwrap();
    let err = insert(&conn, 1, &calls).unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one attempt each");
    assert_eq!(err.sqlite_error().unwrap().extended_code, 1555); // CONSTRAINT_PRIMARYKEY
}

#[db_retry(delay_ms = 1)]
fn no_such_table(conn: &Connection, calls: &AtomicU32) -> luca_core::Result<i64> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(conn.query_row("SELECT v FROM missing", [], |r| r.get(0))?)
}

#[test]
fn no_such_table_is_not_retried() {
    let db = TempDb::new();
    let conn = open(&db);
    let calls = AtomicU32::new(0);
    let err = no_such_table(&conn, &calls).unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(err.to_string().contains("no such table"), "{err}");
}

/// The write lock `write_through_lock` meets; its retry hook releases it, so the first
/// attempt always fails busy and the second always finds the lock free.
static HELD_LOCK: std::sync::Mutex<Option<WriteLock>> = std::sync::Mutex::new(None);

fn release_held_lock(event: &luca_core::retry::RetryEvent) {
    assert_eq!(event.code, BusyCode::Busy, "{event:?}");
    if let Some(lock) = HELD_LOCK.lock().unwrap().take() {
        lock.release().unwrap();
    }
}

#[db_retry(max_retries = 50, delay_ms = 5, max_delay_ms = 20, on_retry = release_held_lock)]
fn write_through_lock(conn: &Connection, calls: &AtomicU32) -> rusqlite::Result<()> {
    calls.fetch_add(1, Ordering::SeqCst);
    conn.execute("INSERT INTO t (v) VALUES (1)", [])?;
    Ok(())
}

#[test]
fn write_lock_is_retried_and_succeeds_once_released() {
    let db = TempDb::new();
    let conn = open(&db);
    *HELD_LOCK.lock().unwrap() = Some(WriteLock::hold(db.path()).unwrap());
    let calls = AtomicU32::new(0);
    write_through_lock(&conn, &calls).unwrap();
    assert!(HELD_LOCK.lock().unwrap().is_none(), "the retry hook ran");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the held lock failed the first attempt; the second found it released"
    );
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[db_retry(max_retries = 1000, delay_ms = 20, jitter = "none", deadline_ms = 290)]
fn always_busy(calls: &AtomicU32) -> rusqlite::Result<()> {
    calls.fetch_add(1, Ordering::SeqCst);
    Err(busy())
}

#[test]
fn deadline_stops_early() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let err = always_busy(&calls).unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(err.busy_code(), Some(BusyCode::Busy));
    // Retry n may start only if (time so far) + 20·2^n ms stays within 290 ms. The third
    // retry (80 ms) is allowed as long as the first two sleeps (20 + 40 ms) overran by less
    // than 150 ms in all; the fourth (160 ms) never is, since the three sleeps before it
    // took at least 140 ms and 140 + 160 > 290. So: 4 attempts, then the deadline.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(elapsed >= Duration::from_millis(140), "{elapsed:?}");
}

/// A read-then-write transaction: the stale snapshot can only be cured by re-running the
/// whole function, which `#[db_retry]` does.
static SNAPSHOT_CODES: std::sync::Mutex<Vec<BusyCode>> = std::sync::Mutex::new(Vec::new());

fn record_snapshot_code(event: &luca_core::retry::RetryEvent) {
    SNAPSHOT_CODES.lock().unwrap().push(event.code);
}

#[db_retry(max_retries = 3, delay_ms = 1, on_retry = record_snapshot_code)]
fn read_then_write(
    conn: &mut Connection,
    breaker: &SnapshotBreaker,
    attempts: &AtomicU32,
) -> rusqlite::Result<i64> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let v: i64 = tx.query_row("SELECT v FROM t WHERE id = 1", [], |r| r.get(0))?;
    if attempt == 1 {
        // Another connection commits after our snapshot was taken.
        breaker.commit().expect("breaker commit");
    }
    tx.execute("UPDATE t SET v = ?1 WHERE id = 1", [v + 1])?;
    tx.commit()?;
    Ok(v + 1)
}

#[test]
fn busy_snapshot_is_cured_by_rerunning_the_whole_function() {
    let db = TempDb::new();
    let mut conn = open(&db);
    conn.execute("INSERT INTO t (id, v) VALUES (1, 41)", [])
        .unwrap();
    let breaker = SnapshotBreaker::new(db.path()).unwrap();
    let attempts = AtomicU32::new(0);
    assert_eq!(read_then_write(&mut conn, &breaker, &attempts).unwrap(), 42);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(*SNAPSHOT_CODES.lock().unwrap(), [BusyCode::BusySnapshot]);
    assert!(
        conn.is_autocommit(),
        "the failed transaction was rolled back"
    );
}

// --- error types ------------------------------------------------------------------------

#[derive(Debug)]
struct AppError(rusqlite::Error);

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "app failed")
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[db_retry(max_retries = 2, delay_ms = 1)]
fn app_call(calls: &AtomicU32) -> Result<(), AppError> {
    calls.fetch_add(1, Ordering::SeqCst);
    Err(AppError(busy()))
}

#[test]
fn error_wrapping_rusqlite_in_source_is_classified() {
    let calls = AtomicU32::new(0);
    let err = app_call(&calls).unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(err.0.sqlite_error().unwrap().extended_code, 5);
}

/// An error type with its own `Retryable` impl wins over the `source()` walk.
#[derive(Debug)]
enum Custom {
    Locked,
    Other,
}

impl Retryable for Custom {
    fn busy_code(&self) -> Option<BusyCode> {
        match self {
            Custom::Locked => Some(BusyCode::Locked),
            Custom::Other => None,
        }
    }
}

#[db_retry(max_retries = 2, delay_ms = 1)]
fn custom(calls: &AtomicU32, kind: fn() -> Custom) -> Result<(), Custom> {
    calls.fetch_add(1, Ordering::SeqCst);
    Err(kind())
}

#[test]
fn own_retryable_impl_is_used() {
    let calls = AtomicU32::new(0);
    assert!(matches!(
        custom(&calls, || Custom::Locked),
        Err(Custom::Locked)
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let calls = AtomicU32::new(0);
    assert!(matches!(
        custom(&calls, || Custom::Other),
        Err(Custom::Other)
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[db_retry(max_retries = 1, delay_ms = 1)]
fn boxed(calls: &AtomicU32) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    calls.fetch_add(1, Ordering::SeqCst);
    Err(Box::new(busy()))
}

#[test]
fn boxed_errors_are_classified() {
    let calls = AtomicU32::new(0);
    assert!(boxed(&calls).is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// --- shapes: methods, generics, impl Trait, early return, `?` --------------------------

struct Repo {
    conn: Connection,
    writes: u32,
}

impl Repo {
    #[db_retry(delay_ms = 1)]
    fn count(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
    }

    #[db_retry(delay_ms = 1)]
    fn add(&mut self, v: i64) -> luca_core::Result<i64> {
        self.writes += 1;
        if v < 0 {
            return Err(luca_core::Error::Sqlite(rusqlite::Error::InvalidQuery));
        }
        self.conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
        Ok(self.conn.last_insert_rowid())
    }

    #[db_retry(delay_ms = 1)]
    fn add_all<I: IntoIterator<Item = i64> + Clone>(
        &mut self,
        values: I,
    ) -> luca_core::Result<usize> {
        let mut n = 0;
        for v in values.clone() {
            self.add(v)?;
            n += 1;
        }
        Ok(n)
    }

    #[db_retry(delay_ms = 1)]
    fn sum_where(&self, keep: impl Fn(i64) -> bool) -> rusqlite::Result<i64> {
        let mut stmt = self.conn.prepare("SELECT v FROM t")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        let mut sum = 0;
        for v in rows {
            let v = v?;
            if keep(v) {
                sum += v;
            }
        }
        Ok(sum)
    }
}

trait Store {
    fn conn(&self) -> &Connection;

    /// A trait method with a default body.
    #[db_retry(delay_ms = 1)]
    fn max_v(&self) -> rusqlite::Result<Option<i64>> {
        self.conn()
            .query_row("SELECT max(v) FROM t", [], |r| r.get(0))
    }

    fn label(&self) -> luca_core::Result<String>;
}

impl Store for Repo {
    fn conn(&self) -> &Connection {
        &self.conn
    }

    #[db_retry(delay_ms = 1)]
    fn label(&self) -> luca_core::Result<String> {
        Ok(format!("repo with {} rows", self.count()?))
    }
}

#[db_retry(delay_ms = 1)]
fn generic_read<T: rusqlite::types::FromSql, P: AsRef<str>>(
    conn: &Connection,
    sql: P,
) -> rusqlite::Result<T> {
    conn.query_row(sql.as_ref(), [], |r| r.get(0))
}

#[db_retry(delay_ms = 1)]
fn borrowed_out<'c>(conn: &'c Connection) -> rusqlite::Result<rusqlite::Statement<'c>> {
    conn.prepare("SELECT v FROM t")
}

#[test]
fn every_shape_compiles_and_works() {
    let db = TempDb::new();
    let mut repo = Repo {
        conn: open(&db),
        writes: 0,
    };
    assert_eq!(repo.count().unwrap(), 0);
    assert_eq!(repo.add(5).unwrap(), 1);
    assert!(repo.add(-1).is_err(), "early return");
    assert_eq!(repo.add_all(vec![1, 2, 3]).unwrap(), 3);
    assert_eq!(repo.writes, 5);
    assert_eq!(repo.sum_where(|v| v > 1).unwrap(), 10);
    assert_eq!(repo.max_v().unwrap(), Some(5));
    assert_eq!(repo.label().unwrap(), "repo with 4 rows");
    let n: i64 = generic_read(&repo.conn, "SELECT count(*) FROM t").unwrap();
    assert_eq!(n, 4);
    let mut stmt = borrowed_out(&repo.conn).unwrap();
    assert_eq!(
        stmt.query_map([], |r| r.get::<_, i64>(0)).unwrap().count(),
        4
    );
}

// --- hooks and metrics --------------------------------------------------------------------

static HOOK_CALLS: AtomicU32 = AtomicU32::new(0);

fn on_retry(event: &luca_core::retry::RetryEvent) {
    assert_eq!(event.code, BusyCode::BusySnapshot);
    assert!(event.function.ends_with("::hooked"), "{}", event.function);
    assert_eq!(
        event.delay,
        Duration::from_millis(2) * 2u32.pow(event.attempt - 1)
    );
    HOOK_CALLS.fetch_add(1, Ordering::SeqCst);
}

#[db_retry(max_retries = 2, delay_ms = 2, jitter = "none", on_retry = on_retry)]
fn hooked() -> rusqlite::Result<()> {
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(517),
        None,
    ))
}

#[test]
fn on_retry_hook_sees_every_retry() {
    assert!(hooked().is_err());
    assert_eq!(HOOK_CALLS.load(Ordering::SeqCst), 2);
}

mod renamed {
    pub(crate) use luca_core as luca;
}

#[db_retry(crate = "renamed::luca", max_retries = 1, delay_ms = 1)]
fn through_renamed_crate(calls: &AtomicU32) -> rusqlite::Result<()> {
    calls.fetch_add(1, Ordering::SeqCst);
    Err(busy())
}

#[test]
fn crate_path_override_works() {
    let calls = AtomicU32::new(0);
    assert!(through_renamed_crate(&calls).is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

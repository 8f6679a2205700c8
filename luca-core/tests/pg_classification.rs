//! `#[db_retry]` and `retry_async` on PostgreSQL: a real server (`TempPostgres`), real
//! conflicts. A `40001` from two conflicting SERIALIZABLE transactions is retried whether
//! the function returns `tokio_postgres::Error` itself, a thiserror `transparent` wrapper,
//! a hand-written `source()` chain, `anyhow::Error`, `Box<dyn Error>` or `luca_core::Error`;
//! a `40P01` deadlock is retried; a unique violation is returned at once, unchanged;
//! `55P03` only when the policy opts in.

#![cfg(feature = "postgres")]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use luca_core::db_retry;
use luca_core::postgres::tokio_postgres::{self, Client, NoTls, error::SqlState};
use luca_core::retry::{BusyCode, RetryEvent, RetryPolicy, Retryable, classify, retry_async};
use luca_testkit::TempPostgres;

async fn connect(pg: &TempPostgres) -> Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// A one-row counter table of its own for each test.
async fn counter(client: &Client, table: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (id INT PRIMARY KEY, n BIGINT NOT NULL);
             INSERT INTO {table} VALUES (1, 0);"
        ))
        .await
        .unwrap();
}

/// One read-modify-write of the counter in a SERIALIZABLE transaction. On the first
/// attempt, `interferer` commits its own update of the row after this transaction took
/// its snapshot, so this transaction's update fails with `40001` (could not serialize
/// access due to concurrent update): a real conflict, every time.
async fn rmw(
    client: &mut Client,
    interferer: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> Result<i64, tokio_postgres::Error> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::Serializable)
        .start()
        .await?;
    let n: i64 = tx
        .query_one(&format!("SELECT n FROM {table} WHERE id = 1"), &[])
        .await?
        .get(0);
    if attempt == 1 {
        interferer
            .execute(&format!("UPDATE {table} SET n = n + 100 WHERE id = 1"), &[])
            .await?;
    }
    tx.execute(
        &format!("UPDATE {table} SET n = $1 WHERE id = 1"),
        &[&(n + 1)],
    )
    .await?;
    tx.commit().await?;
    Ok(n + 1)
}

static CODES: Mutex<Vec<BusyCode>> = Mutex::new(Vec::new());

fn record(event: &RetryEvent) {
    CODES.lock().unwrap().push(event.code);
}

/// The codes recorded by `record` (only `hooked` uses it).
fn take_codes() -> Vec<BusyCode> {
    std::mem::take(&mut *CODES.lock().unwrap())
}

// --- the error shapes -------------------------------------------------------------------

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn direct(
    client: &mut Client,
    interferer: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> Result<i64, tokio_postgres::Error> {
    rmw(client, interferer, table, attempts).await
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    #[error("no row {0}")]
    #[allow(dead_code)]
    Missing(i64),
}

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn transparent(
    client: &mut Client,
    interferer: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> Result<i64, AppError> {
    Ok(rmw(client, interferer, table, attempts).await?)
}

/// A hand-written wrapper whose `source()` is the `tokio_postgres::Error`, inside another.
#[derive(Debug)]
struct Layer(&'static str, Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Layer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.1)
    }
}

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn chained(
    client: &mut Client,
    interferer: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> Result<i64, Layer> {
    rmw(client, interferer, table, attempts)
        .await
        .map_err(|e| Layer("job", Box::new(Layer("step", Box::new(e)))))
}

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn with_anyhow(
    client: &mut Client,
    interferer: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> anyhow::Result<i64> {
    use anyhow::Context;
    rmw(client, interferer, table, attempts)
        .await
        .context("bumping the counter")
}

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn boxed(
    client: &mut Client,
    interferer: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    Ok(rmw(client, interferer, table, attempts).await?)
}

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn luca_error(
    client: &mut Client,
    interferer: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> luca_core::Result<i64> {
    Ok(rmw(client, interferer, table, attempts).await?)
}

#[db_retry(max_retries = 3, delay_ms = 1, on_retry = record)]
async fn hooked(
    client: &mut Client,
    interferer: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> luca_core::Result<i64> {
    Ok(rmw(client, interferer, table, attempts).await?)
}

/// Runs one shape: the first attempt meets a real `40001` and is retried; the second
/// reads the interferer's +100 and commits 101.
macro_rules! shape_test {
    ($test:ident, $f:ident) => {
        #[tokio::test]
        async fn $test() {
            let Some(pg) = TempPostgres::shared_or_skip(stringify!($test)) else {
                return;
            };
            let table = stringify!($test);
            let mut client = connect(pg).await;
            let interferer = connect(pg).await;
            counter(&client, table).await;
            let attempts = AtomicU32::new(0);
            let n = $f(&mut client, &interferer, table, &attempts)
                .await
                .unwrap();
            assert_eq!(n, 101, "the retry read the interferer's commit");
            assert_eq!(attempts.load(Ordering::SeqCst), 2, "one 40001, one retry");
            let stored: i64 = client
                .query_one(&format!("SELECT n FROM {table} WHERE id = 1"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(stored, 101);
        }
    };
}

shape_test!(tokio_postgres_error_is_retried, direct);
shape_test!(thiserror_transparent_wrapper_is_retried, transparent);
shape_test!(source_chain_is_retried, chained);
shape_test!(anyhow_error_is_retried, with_anyhow);
shape_test!(boxed_error_is_retried, boxed);
shape_test!(luca_error_is_retried, luca_error);

#[tokio::test]
async fn the_conflict_is_a_real_40001_classified_in_every_shape() {
    let Some(pg) = TempPostgres::shared_or_skip("classified_in_every_shape") else {
        return;
    };
    let table = "classified_shapes";
    let mut client = connect(pg).await;
    let interferer = connect(pg).await;
    counter(&client, table).await;
    // Without retries: the first attempt's error as it comes from the driver.
    let err = rmw(&mut client, &interferer, table, &AtomicU32::new(0))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err}"
    );
    assert_eq!(err.busy_code(), Some(BusyCode::SerializationFailure));
    assert_eq!(classify(&err), Some(BusyCode::SerializationFailure));
    // thiserror's `transparent` forwards `source()` to the inner `DbError`.
    let app = AppError::from(err);
    assert_eq!(classify(&app), Some(BusyCode::SerializationFailure));
    let AppError::Pg(err) = app else {
        unreachable!()
    };
    let layered = Layer("outer", Box::new(Layer("inner", Box::new(err))));
    assert_eq!(classify(&layered), Some(BusyCode::SerializationFailure));
    let any = anyhow::Error::new(layered).context("more context");
    assert_eq!(any.busy_code(), Some(BusyCode::SerializationFailure));
    let luca: luca_core::Error = client.batch_execute("SELECT 1/0").await.unwrap_err().into();
    assert_eq!(luca.busy_code(), None, "division_by_zero is not retried");
    assert!(luca.postgres().is_some());
}

#[tokio::test]
async fn the_retry_hook_sees_serialization_failure() {
    let Some(pg) = TempPostgres::shared_or_skip("retry_hook") else {
        return;
    };
    let table = "retry_hook_codes";
    let mut client = connect(pg).await;
    let interferer = connect(pg).await;
    counter(&client, table).await;
    take_codes();
    let attempts = AtomicU32::new(0);
    assert_eq!(
        hooked(&mut client, &interferer, table, &attempts)
            .await
            .unwrap(),
        101
    );
    assert_eq!(take_codes(), [BusyCode::SerializationFailure]);
}

// --- what is not retried ------------------------------------------------------------------

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn insert_dup(
    client: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> Result<u64, tokio_postgres::Error> {
    attempts.fetch_add(1, Ordering::SeqCst);
    client
        .execute(&format!("INSERT INTO {table} VALUES (1, 0)"), &[])
        .await
}

#[tokio::test]
async fn a_unique_violation_returns_at_once_unchanged() {
    let Some(pg) = TempPostgres::shared_or_skip("unique_violation") else {
        return;
    };
    let table = "unique_violation";
    let client = connect(pg).await;
    counter(&client, table).await;
    let attempts = AtomicU32::new(0);
    let err = insert_dup(&client, table, &attempts).await.unwrap_err();
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err}");
    assert_eq!(err.busy_code(), None);
}

// --- 40P01 ----------------------------------------------------------------------------------

/// Locks row `first`, waits at `barrier` (first attempt only) until the other task holds
/// its first row too, then locks row `second`: the two tasks wait for each other, and the
/// server aborts one with `40P01` (the one whose `deadlock_timeout` passes first checks
/// for the cycle and aborts itself; the two timeouts differ so that only one does).
#[db_retry(max_retries = 10, delay_ms = 5)]
async fn lock_two(
    client: &mut Client,
    table: &str,
    (first, second): (i32, i32),
    deadlock_timeout_ms: u32,
    barrier: &tokio::sync::Barrier,
    attempts: &AtomicU32,
) -> Result<(), tokio_postgres::Error> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL deadlock_timeout = '{deadlock_timeout_ms}ms'"
    ))
    .await?;
    tx.execute(
        &format!("UPDATE {table} SET n = n + 1 WHERE id = $1"),
        &[&first],
    )
    .await?;
    if attempt == 1 {
        barrier.wait().await;
    }
    tx.execute(
        &format!("UPDATE {table} SET n = n + 1 WHERE id = $1"),
        &[&second],
    )
    .await?;
    tx.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_is_retried() {
    let Some(pg) = TempPostgres::shared_or_skip("deadlock") else {
        return;
    };
    let table = "deadlock_pair";
    let setup = connect(pg).await;
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (id INT PRIMARY KEY, n BIGINT NOT NULL);
             INSERT INTO {table} VALUES (1, 0), (2, 0);"
        ))
        .await
        .unwrap();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let before = luca_core::metrics().snapshot();
    let mut tasks = Vec::new();
    for (rows, timeout_ms) in [((1, 2), 20), ((2, 1), 2000)] {
        let mut client = connect(pg).await;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let attempts = AtomicU32::new(0);
            lock_two(&mut client, table, rows, timeout_ms, &barrier, &attempts)
                .await
                .map(|()| attempts.load(Ordering::SeqCst))
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().unwrap();
    }
    let delta = luca_core::metrics().snapshot().since(&before);
    // Usually 3 (one abort); a retry can meet the other transaction again, which is
    // what the retries are for.
    assert!(
        total >= 3,
        "one of the two was aborted and retried: {delta}"
    );
    assert!(
        delta.retries_for(BusyCode::DeadlockDetected) >= 1,
        "{delta}"
    );
    let sum: i64 = setup
        .query_one(&format!("SELECT sum(n)::BIGINT FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 4, "both transactions committed exactly once");
}

// --- 55P03: opt-in ----------------------------------------------------------------------------

#[tokio::test]
async fn lock_not_available_is_retried_only_when_the_policy_opts_in() {
    let Some(pg) = TempPostgres::shared_or_skip("lock_not_available") else {
        return;
    };
    let table = "nowait_lock";
    let client = connect(pg).await;
    let holder = connect(pg).await;
    counter(&client, table).await;
    let policy = RetryPolicy::new()
        .with_max_retries(3)
        .with_delay(Duration::from_millis(1));
    let hold = format!("BEGIN; SELECT 1 FROM {table} WHERE id = 1 FOR UPDATE");
    let nowait = format!("SELECT n FROM {table} WHERE id = 1 FOR UPDATE NOWAIT");

    // Not opted in: returned at once.
    holder.batch_execute(&hold).await.unwrap();
    let attempts = AtomicU32::new(0);
    let err = retry_async(&policy, || async {
        attempts.fetch_add(1, Ordering::SeqCst);
        client.query_one(&nowait, &[]).await
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::LOCK_NOT_AVAILABLE), "{err}");
    assert_eq!(err.busy_code(), Some(BusyCode::LockNotAvailable));
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "not opted in");

    // Opted in: the first attempt fails while the lock is held; it is released before the
    // retry, which gets the row.
    let attempts = AtomicU32::new(0);
    let row = retry_async(&policy.with_lock_not_available(true), || async {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let r = client.query_one(&nowait, &[]).await;
        if attempt == 1 {
            assert!(r.is_err(), "the lock is held during the first attempt");
            holder.batch_execute("COMMIT").await.unwrap();
        }
        r
    })
    .await
    .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "opted in: retried once");
}

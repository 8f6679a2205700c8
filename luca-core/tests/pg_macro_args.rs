//! `#[db_retry(lock_not_available = true)]` on a real server (`TempPostgres`): a
//! `SELECT … FOR UPDATE NOWAIT` on a row another session holds fails with a real `55P03`
//! (lock_not_available). With the argument the function runs again once the lock is
//! released; without it (or with `= false`) the error is returned at once, after one attempt.

#![cfg(feature = "postgres")]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use luca_core::db_retry;
use luca_core::postgres::tokio_postgres::{self, Client, NoTls, error::SqlState};
use luca_core::retry::{BusyCode, RetryEvent, Retryable};
use luca_testkit::TempPostgres;

async fn connect(pg: &TempPostgres) -> Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// A one-row table of its own for each test, and `holder` holding that row's lock in an
/// open transaction.
async fn locked_row(client: &Client, holder: &Client, table: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (id INT PRIMARY KEY, n BIGINT NOT NULL);
             INSERT INTO {table} VALUES (1, 7);"
        ))
        .await
        .unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM {table} WHERE id = 1 FOR UPDATE"
        ))
        .await
        .unwrap();
}

/// One attempt: lock the row without waiting. When the first attempt fails (the lock is
/// held), the holder commits, so a second attempt, if any, gets the row.
async fn grab(
    client: &Client,
    holder: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> Result<i64, tokio_postgres::Error> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    let r = client
        .query_one(
            &format!("SELECT n FROM {table} WHERE id = 1 FOR UPDATE NOWAIT"),
            &[],
        )
        .await;
    if attempt == 1 {
        assert!(r.is_err(), "the lock is held during the first attempt");
        holder.batch_execute("COMMIT").await.unwrap();
    }
    Ok(r?.get(0))
}

static CODES: Mutex<Vec<BusyCode>> = Mutex::new(Vec::new());

fn record(event: &RetryEvent) {
    CODES.lock().unwrap().push(event.code);
}

#[db_retry(max_retries = 3, delay_ms = 1, lock_not_available = true, on_retry = record)]
async fn opted_in(
    client: &Client,
    holder: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> Result<i64, tokio_postgres::Error> {
    grab(client, holder, table, attempts).await
}

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn not_opted_in(
    client: &Client,
    holder: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> Result<i64, tokio_postgres::Error> {
    grab(client, holder, table, attempts).await
}

#[db_retry(max_retries = 3, delay_ms = 1, lock_not_available = false)]
async fn opted_out(
    client: &Client,
    holder: &Client,
    table: &str,
    attempts: &AtomicU32,
) -> Result<i64, tokio_postgres::Error> {
    grab(client, holder, table, attempts).await
}

#[tokio::test]
async fn the_argument_retries_lock_not_available() {
    let Some(pg) = TempPostgres::shared_or_skip("the_argument_retries_lock_not_available") else {
        return;
    };
    let table = "macro_nowait_opted_in";
    let client = connect(pg).await;
    let holder = connect(pg).await;
    locked_row(&client, &holder, table).await;
    let attempts = AtomicU32::new(0);
    let n = opted_in(&client, &holder, table, &attempts).await.unwrap();
    assert_eq!(n, 7, "the retry got the row");
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "one 55P03, one retry");
    assert_eq!(
        std::mem::take(&mut *CODES.lock().unwrap()),
        vec![BusyCode::LockNotAvailable],
        "the hook saw the 55P03"
    );
}

/// Without the argument, and with `= false`, a real 55P03 is returned at once.
#[tokio::test]
async fn without_the_argument_lock_not_available_returns_at_once() {
    let Some(pg) = TempPostgres::shared_or_skip("without_the_argument_returns_at_once") else {
        return;
    };
    for table in ["macro_nowait_absent", "macro_nowait_false"] {
        let client = connect(pg).await;
        let holder = connect(pg).await;
        locked_row(&client, &holder, table).await;
        let attempts = AtomicU32::new(0);
        let result = if table == "macro_nowait_absent" {
            not_opted_in(&client, &holder, table, &attempts).await
        } else {
            opted_out(&client, &holder, table, &attempts).await
        };
        let err = result.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&SqlState::LOCK_NOT_AVAILABLE),
            "{table}: {err}"
        );
        assert_eq!(err.busy_code(), Some(BusyCode::LockNotAvailable));
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "{table}: not retried");
    }
}

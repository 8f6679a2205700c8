//! `luca_core::deadpool`: a deadpool-sqlite pool whose connections get luca's settings.
#![cfg(feature = "deadpool-sqlite")]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use luca_core::deadpool::{self, Pool, PoolError};
use luca_core::pragmas::Synchronous;
use luca_core::retry::RetryEvent;
use luca_core::rusqlite::{self, TransactionBehavior};
use luca_core::{Error, db_retry};
use luca_testkit::{TempDb, WriteLock};

/// What the pool's connection says about its own settings.
#[derive(Debug, PartialEq)]
struct Settings {
    journal_mode: String,
    synchronous: i64,
    foreign_keys: i64,
    busy_timeout: i64,
    wal_autocheckpoint: i64,
}

async fn settings(pool: &Pool) -> Settings {
    let conn = pool.get().await.expect("a connection");
    conn.interact(|c| {
        let get = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        Settings {
            journal_mode: c
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap(),
            synchronous: get("PRAGMA synchronous"),
            foreign_keys: get("PRAGMA foreign_keys"),
            busy_timeout: get("PRAGMA busy_timeout"),
            wal_autocheckpoint: get("PRAGMA wal_autocheckpoint"),
        }
    })
    .await
    .expect("interact")
}

#[tokio::test]
async fn every_connection_gets_lucas_settings() {
    let tmp = TempDb::new();
    let pool = deadpool::pool(tmp.path()).unwrap();
    // Hold one connection so the second is a new one: both are configured.
    let held = pool.get().await.unwrap();
    let expected = Settings {
        journal_mode: "wal".into(),
        synchronous: 1,
        foreign_keys: 1,
        busy_timeout: 30_000,
        wal_autocheckpoint: 1000,
    };
    assert_eq!(settings(&pool).await, expected);
    drop(held);
    assert_eq!(pool.status().size, 2, "two connections were created");
    assert_eq!(settings(&pool).await, expected);
}

#[tokio::test]
async fn builder_settings_reach_the_connection() {
    let tmp = TempDb::new();
    let pool = deadpool::builder(tmp.path())
        .size(2)
        .busy_timeout(Duration::from_millis(1234))
        .synchronous(Synchronous::Full)
        .foreign_keys(false)
        .wal_autocheckpoint(0)
        .build()
        .unwrap();
    assert_eq!(pool.status().max_size, 2);
    assert_eq!(
        settings(&pool).await,
        Settings {
            journal_mode: "wal".into(),
            synchronous: 2,
            foreign_keys: 0,
            busy_timeout: 1234,
            wal_autocheckpoint: 0,
        }
    );
}

#[test]
fn bad_settings_are_typed_errors_at_build() {
    let tmp = TempDb::new();
    let err = |b: deadpool::PoolBuilder| b.build().expect_err("refused");
    for size in [0, deadpool::PoolBuilder::MAX_SIZE + 1] {
        match err(deadpool::builder(tmp.path()).size(size)) {
            Error::InvalidSetting { setting, reason } => {
                assert_eq!(setting, "size");
                assert!(reason.contains(&size.to_string()), "{reason}");
            }
            other => panic!("size {size}: {other:?}"),
        }
    }
    match err(deadpool::builder(tmp.path()).busy_timeout(Duration::MAX)) {
        Error::InvalidSetting { setting, .. } => assert_eq!(setting, "busy_timeout"),
        other => panic!("{other:?}"),
    }
    match err(deadpool::builder("")) {
        Error::InvalidPath { reason, .. } => assert_eq!(reason, "the path is empty"),
        other => panic!("{other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    match err(deadpool::builder(dir.path())) {
        Error::InvalidPath { reason, .. } => assert_eq!(reason, "it is a directory"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_on_checkout() {
    let tmp = TempDb::new();
    std::fs::write(
        tmp.path(),
        b"this is not a SQLite database, it is a text file",
    )
    .unwrap();
    let pool = deadpool::pool(tmp.path()).unwrap();
    match pool.get().await {
        Err(PoolError::PostCreateHook(e)) => {
            let text = e.to_string();
            assert!(text.contains("not a database"), "{text}");
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a connection to a text file was handed out"),
    }
    assert_eq!(pool.status().size, 0, "the refused connection is not kept");
}

#[tokio::test]
async fn a_transaction_left_open_is_rolled_back_before_the_next_user_gets_the_connection() {
    let tmp = TempDb::new();
    let pool = deadpool::builder(tmp.path()).size(1).build().unwrap();
    let conn = pool.get().await.unwrap();
    conn.interact(|c| {
        c.execute_batch("CREATE TABLE t (v); BEGIN IMMEDIATE; INSERT INTO t VALUES ('left open');")
    })
    .await
    .unwrap()
    .unwrap();
    drop(conn);
    // The same (only) connection: the next user's write must commit on its own.
    let conn = pool.get().await.unwrap();
    let autocommit = conn.interact(|c| c.is_autocommit()).await.unwrap();
    assert!(
        autocommit,
        "the leftover transaction was rolled back on checkout"
    );
    conn.interact(|c| c.execute("INSERT INTO t VALUES ('mine')", []))
        .await
        .unwrap()
        .unwrap();
    drop(conn);
    assert_eq!(
        pool.status().size,
        1,
        "the connection was kept, not replaced"
    );
    // Seen from another connection: only the second write is in the file.
    let other = luca_core::rusqlite::Connection::open(tmp.path()).unwrap();
    let rows: Vec<String> = other
        .prepare("SELECT v FROM t")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, ["mine"]);
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("the closure panicked: {0}")]
    Interact(String),
}

static LOCK: Mutex<Option<WriteLock>> = Mutex::new(None);
static RETRIES: AtomicU32 = AtomicU32::new(0);

/// Releases the held write lock before the first backoff: the next attempt finds it free.
fn release_lock(_: &RetryEvent) {
    RETRIES.fetch_add(1, Ordering::SeqCst);
    if let Some(lock) = LOCK.lock().unwrap().take() {
        lock.release().unwrap();
    }
}

#[db_retry(max_retries = 3, delay_ms = 5, jitter = "none", on_retry = release_lock)]
async fn record_job(pool: &Pool, url: &str, attempts: &AtomicU32) -> Result<i64, JobError> {
    attempts.fetch_add(1, Ordering::SeqCst);
    let conn = pool.get().await?;
    let url = url.to_owned();
    conn.interact(move |c| -> rusqlite::Result<i64> {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO jobs (url) VALUES (?1)", [&url])?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    })
    .await
    .map_err(|e| JobError::Interact(e.to_string()))?
    .map_err(JobError::from)
}

#[tokio::test]
async fn db_retry_retries_a_pool_write_past_a_held_write_lock() {
    let tmp = TempDb::new();
    let pool = deadpool::builder(tmp.path())
        .busy_timeout(Duration::ZERO)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    conn.interact(|c| c.execute_batch("CREATE TABLE jobs (id INTEGER PRIMARY KEY, url TEXT)"))
        .await
        .unwrap()
        .unwrap();
    drop(conn);
    *LOCK.lock().unwrap() = Some(WriteLock::hold(tmp.path()).unwrap());
    let attempts = AtomicU32::new(0);
    let id = record_job(&pool, "https://a.example/", &attempts)
        .await
        .expect("retried past the lock");
    assert_eq!(id, 1);
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "one busy attempt, one that committed"
    );
    assert_eq!(RETRIES.load(Ordering::SeqCst), 1);
    let rows: i64 = pool
        .get()
        .await
        .unwrap()
        .interact(|c| c.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows, 1, "exactly one row: the busy attempt wrote nothing");
}

#[tokio::test]
async fn wait_timeouts_of_zero_and_duration_max_behave() {
    let tmp = TempDb::new();
    let zero = deadpool::builder(tmp.path())
        .size(1)
        .wait_timeout(Some(Duration::ZERO))
        .build()
        .unwrap();
    let held = zero.get().await.unwrap();
    match zero.get().await {
        Err(PoolError::Timeout(_)) => {}
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a second connection from a pool of one"),
    }
    drop(held);
    drop(zero.get().await.expect("free again"));

    let max = deadpool::builder(tmp.path())
        .size(1)
        .wait_timeout(Some(Duration::MAX))
        .build()
        .unwrap();
    let held = max.get().await.unwrap();
    let waiter = {
        let max = max.clone();
        tokio::spawn(async move { max.get().await.map(|_| ()) })
    };
    tokio::task::yield_now().await;
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter got the connection once it was free")
        .unwrap()
        .expect("no overflow from Duration::MAX");
}

#[tokio::test]
async fn a_panicking_closure_does_not_break_the_pool() {
    let tmp = TempDb::new();
    let pool = deadpool::builder(tmp.path()).size(1).build().unwrap();
    let conn = pool.get().await.unwrap();
    conn.interact(|c| c.execute_batch("CREATE TABLE t (v)"))
        .await
        .unwrap()
        .unwrap();
    let panicked = conn
        .interact(|c| {
            c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
                .unwrap();
            panic!("user code panics inside its transaction")
        })
        .await;
    assert!(panicked.is_err(), "the panic is reported, not propagated");
    drop(conn);
    // The poisoned connection is refused on checkout and replaced; its open transaction
    // is gone with it (closing a connection rolls back).
    let conn = tokio::time::timeout(Duration::from_secs(10), pool.get())
        .await
        .expect("no hang")
        .expect("a fresh connection");
    let rows: i64 = conn
        .interact(|c| {
            c.execute("INSERT INTO t VALUES (2)", [])?;
            c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows, 1, "only the write after the panic is in the file");
}

//! `PgDb` against a real server (`TempPostgres`): whole transactions retried on real
//! `40001`s (from a statement and from `COMMIT`), a `COMMIT` whose answer never came is
//! `CommitOutcomeUnknown` and never retried (a loopback proxy cuts the connection at the
//! `COMMIT`, before or after the server ran it), and hostile closures: one that commits or
//! rolls back itself, one that panics, one whose future is dropped mid-transaction, and
//! settings at `0` and `Duration::MAX`.

#![cfg(feature = "postgres")]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use luca_core::Error;
use luca_core::postgres::tokio_postgres::{self, Client, NoTls, error::SqlState};
use luca_core::postgres::{PgDb, PgDbStats};
use luca_core::retry::{BusyCode, RetryPolicy, Retryable};
use luca_testkit::TempPostgres;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// A fresh database of the shared server for each test: tests do not see each other's
/// tables, and a test's `PgDb` stats are its own.
async fn fresh(what: &str) -> Option<(&'static TempPostgres, String, Client)> {
    let pg = TempPostgres::shared_or_skip(what)?;
    let url = pg.create_database().await.unwrap();
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE counter (id INT PRIMARY KEY, n BIGINT NOT NULL);
             INSERT INTO counter VALUES (1, 0);
             CREATE TABLE items (id BIGINT PRIMARY KEY);",
        )
        .await
        .unwrap();
    Some((pg, url, client))
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy::new()
        .with_max_retries(5)
        .with_delay(Duration::from_millis(1))
}

async fn count_items(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0)
}

fn busy(stats: &PgDbStats, code: BusyCode) -> u64 {
    stats.busy_by_code[code.index()]
}

#[tokio::test]
async fn write_commits_read_sees_it_and_read_is_read_only() {
    let Some((_pg, url, _client)) = fresh("write_commits").await else {
        return;
    };
    let db = PgDb::connect(&url).await.unwrap();
    let n = db
        .write(async |tx| {
            tx.execute("UPDATE counter SET n = n + 5 WHERE id = 1", &[])
                .await?;
            Ok(tx
                .query_one("SELECT n FROM counter WHERE id = 1", &[])
                .await?
                .get::<_, i64>(0))
        })
        .await
        .unwrap();
    assert_eq!(n, 5);
    let attempts = AtomicU32::new(0);
    let err = db
        .read(async |tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            tx.execute("UPDATE counter SET n = 0", &[]).await?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.postgres().and_then(|e| e.code()),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "not retried");
    let (n, isolation) = db
        .read(async |tx| {
            let r = tx
                .query_one(
                    "SELECT n, current_setting('transaction_isolation') FROM counter",
                    &[],
                )
                .await?;
            Ok((r.get::<_, i64>(0), r.get::<_, String>(1)))
        })
        .await
        .unwrap();
    assert_eq!((n, isolation.as_str()), (5, "repeatable read"));
    let isolation: String = db
        .write(async |tx| {
            Ok(tx
                .query_one("SELECT current_setting('transaction_isolation')", &[])
                .await?
                .get(0))
        })
        .await
        .unwrap();
    assert_eq!(isolation, "serializable", "writes default to SERIALIZABLE");
    let stats = db.stats();
    assert_eq!(
        (stats.writes_ok, stats.reads, stats.retries),
        (2, 1, 0),
        "{stats}"
    );
}

#[tokio::test]
async fn a_conflict_in_a_statement_reruns_the_whole_closure() {
    let Some((_pg, url, client)) = fresh("conflict_in_statement").await else {
        return;
    };
    let db = PgDb::builder(&url)
        .retry_policy(fast_policy())
        .build()
        .await
        .unwrap();
    let attempts = AtomicU32::new(0);
    let n = db
        .write(async |tx| {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            let n: i64 = tx
                .query_one("SELECT n FROM counter WHERE id = 1", &[])
                .await?
                .get(0);
            if attempt == 1 {
                // Another client commits an update of the row after this snapshot.
                client
                    .execute("UPDATE counter SET n = n + 100 WHERE id = 1", &[])
                    .await?;
            }
            tx.execute("UPDATE counter SET n = $1 WHERE id = 1", &[&(n + 1)])
                .await?;
            Ok(n + 1)
        })
        .await
        .unwrap();
    assert_eq!(n, 101, "the rerun read the other commit");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let stats = db.stats();
    assert_eq!(stats.retries, 1, "{stats}");
    assert_eq!(busy(&stats, BusyCode::SerializationFailure), 1, "{stats}");
    let stored: i64 = client
        .query_one("SELECT n FROM counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 101);
}

/// Write skew: two on-call doctors, each transaction checks that another is on call and
/// takes itself off. Serially one of them must stay; under SERIALIZABLE the second
/// `COMMIT` (or its update) fails with `40001`, and the rerun sees the first commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_at_commit_is_retried_and_write_skew_cannot_happen() {
    let Some((_pg, url, client)) = fresh("write_skew").await else {
        return;
    };
    client
        .batch_execute(
            "CREATE TABLE doctors (id INT PRIMARY KEY, on_call BOOL NOT NULL);
             INSERT INTO doctors VALUES (1, true), (2, true);",
        )
        .await
        .unwrap();
    let db = PgDb::builder(&url)
        .retry_policy(fast_policy())
        .build()
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for me in [1, 2] {
        let (db, barrier) = (db.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let attempts = Arc::new(AtomicU32::new(0));
            let counted = Arc::clone(&attempts);
            // `async move`, owning what it captures: a spawned future must be `Send`.
            let went_off = db
                .write(async move |tx| {
                    let attempts = &counted;
                    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                    let on_call: i64 = tx
                        .query_one("SELECT count(*) FROM doctors WHERE on_call", &[])
                        .await?
                        .get(0);
                    if attempt == 1 {
                        // Both have read before either writes.
                        barrier.wait().await;
                    }
                    if on_call < 2 {
                        return Ok(false);
                    }
                    tx.execute("UPDATE doctors SET on_call = false WHERE id = $1", &[&me])
                        .await?;
                    if attempt == 1 {
                        barrier.wait().await;
                    }
                    Ok(true)
                })
                .await;
            (went_off, attempts.load(Ordering::SeqCst))
        }));
    }
    let mut off = 0;
    let mut attempts = 0;
    for t in tasks {
        let (went_off, n) = t.await.unwrap();
        off += u32::from(went_off.unwrap());
        attempts += n;
    }
    assert_eq!(off, 1, "exactly one doctor went off call");
    assert_eq!(attempts, 3, "the loser ran again, once");
    let on_call: i64 = client
        .query_one("SELECT count(*) FROM doctors WHERE on_call", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_call, 1);
    let stats = db.stats();
    assert_eq!(busy(&stats, BusyCode::SerializationFailure), 1, "{stats}");
    assert_eq!((stats.writes_ok, stats.writes_failed), (2, 0), "{stats}");
}

#[tokio::test]
async fn other_errors_return_at_once_and_roll_back() {
    let Some((_pg, url, client)) = fresh("other_errors").await else {
        return;
    };
    let db = PgDb::builder(&url)
        .retry_policy(fast_policy())
        .build()
        .await
        .unwrap();
    let attempts = AtomicU32::new(0);
    let err = db
        .write(async |tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            tx.execute("INSERT INTO items VALUES (1)", &[]).await?;
            tx.execute("INSERT INTO items VALUES (1)", &[]).await?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(
        err.postgres().and_then(|e| e.code()),
        Some(&SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(err.busy_code(), None);
    assert_eq!(
        count_items(&client).await,
        0,
        "the first insert was rolled back"
    );
    assert_eq!(db.stats().writes_failed, 1);
}

// --- COMMIT in flight ------------------------------------------------------------------------

/// Where the proxy cuts the connection.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// The `COMMIT` message never reaches the server.
    BeforeCommit,
    /// The server runs the `COMMIT`; its answer never reaches the client.
    AfterCommit,
}

/// A loopback TCP proxy to the server's Unix socket that cuts every connection at the
/// first `COMMIT` query it carries. Returns the URL to connect through.
async fn cutting_proxy(pg: &TempPostgres, database: &str, cut: Cut) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket: PathBuf = pg.socket_dir().join(".s.PGSQL.5432");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::UnixStream::connect(&socket).await.unwrap();
            tokio::spawn(pipe(client, server, cut));
        }
    });
    format!("postgresql://postgres@127.0.0.1:{port}/{database}")
}

async fn pipe(mut client: tokio::net::TcpStream, mut server: tokio::net::UnixStream, cut: Cut) {
    let (mut from_client, mut from_server) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        tokio::select! {
            n = client.read(&mut from_client) => {
                let Ok(n @ 1..) = n else { return };
                let chunk = &from_client[..n];
                let commit = chunk.windows(7).any(|w| w == b"COMMIT\0");
                if commit && cut == Cut::BeforeCommit {
                    return; // both sockets close: the server never sees the COMMIT
                }
                if server.write_all(chunk).await.is_err() {
                    return;
                }
                if commit {
                    // Wait for the server's answer (sent once the commit is done), and
                    // drop it with the connection.
                    let _ = server.read(&mut from_server).await;
                    return;
                }
            }
            n = server.read(&mut from_server) => {
                let Ok(n @ 1..) = n else { return };
                if client.write_all(&from_server[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn commit_cut(cut: Cut) -> (Error, u32, PgDbStats, i64) {
    let pg = TempPostgres::shared().unwrap();
    let url = pg.create_database().await.unwrap();
    let direct = connect(&url).await;
    direct
        .batch_execute("CREATE TABLE items (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let database = url.rsplit('/').next().unwrap().to_owned();
    let db = PgDb::builder(cutting_proxy(pg, &database, cut).await)
        .retry_policy(fast_policy())
        .build()
        .await
        .unwrap();
    let attempts = AtomicU32::new(0);
    let err = db
        .write(async |tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            tx.execute("INSERT INTO items VALUES (7)", &[]).await?;
            Ok(())
        })
        .await
        .unwrap_err();
    (
        err,
        attempts.load(Ordering::SeqCst),
        db.stats(),
        count_items(&direct).await,
    )
}

#[tokio::test]
async fn a_commit_that_never_reached_the_server_is_outcome_unknown_not_retried() {
    if TempPostgres::shared_or_skip("commit_before").is_none() {
        return;
    }
    let (err, attempts, stats, rows) = commit_cut(Cut::BeforeCommit).await;
    assert!(matches!(err, Error::CommitOutcomeUnknown { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("may or may not have been committed"),
        "{err}"
    );
    assert_eq!(err.busy_code(), None);
    assert_eq!(attempts, 1, "never retried");
    assert_eq!(rows, 0, "(here it was not committed)");
    assert_eq!(stats.commit_outcome_unknown, 1, "{stats}");
}

#[tokio::test]
async fn a_commit_whose_answer_was_lost_is_outcome_unknown_not_retried() {
    if TempPostgres::shared_or_skip("commit_after").is_none() {
        return;
    }
    let (err, attempts, stats, rows) = commit_cut(Cut::AfterCommit).await;
    assert!(matches!(err, Error::CommitOutcomeUnknown { .. }), "{err:?}");
    assert_eq!(attempts, 1, "never retried: a rerun would insert twice");
    assert_eq!(rows, 1, "(here it was committed)");
    assert_eq!(stats.commit_outcome_unknown, 1, "{stats}");
}

// --- hostile closures ------------------------------------------------------------------------

#[tokio::test]
async fn a_closure_that_commits_or_rolls_back_itself_is_refused_and_not_retried() {
    let Some((_pg, url, client)) = fresh("closure_commits").await else {
        return;
    };
    let db = PgDb::builder(&url)
        .retry_policy(fast_policy())
        .build()
        .await
        .unwrap();
    for end in ["COMMIT", "ROLLBACK", "COMMIT; BEGIN"] {
        let attempts = AtomicU32::new(0);
        let err = db
            .write(async |tx| {
                attempts.fetch_add(1, Ordering::SeqCst);
                tx.batch_execute(&format!("INSERT INTO items VALUES (1); {end}"))
                    .await?;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::PgTransactionEnded { .. }),
            "{end}: {err:?}"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "{end}");
        client.batch_execute("DELETE FROM items").await.unwrap();
    }
    assert_eq!(db.stats().transactions_ended, 3);
    // The pool is fine afterwards.
    db.write(async |tx| Ok(tx.execute("INSERT INTO items VALUES (2)", &[]).await?))
        .await
        .unwrap();
    assert_eq!(count_items(&client).await, 1);
}

#[tokio::test]
async fn a_panicking_closure_rolls_back_and_leaves_the_pool_usable() {
    let Some((_pg, url, client)) = fresh("closure_panics").await else {
        return;
    };
    let db = PgDb::builder(&url)
        .max_connections(1)
        .build()
        .await
        .unwrap();
    let err = db
        .write(async |tx| {
            tx.execute("INSERT INTO items VALUES (1)", &[]).await?;
            if tx.client().is_closed() {
                return Ok(());
            }
            panic!("closure gave up");
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Panicked { message } if message == "closure gave up"),
        "{err:?}"
    );
    assert_eq!(count_items(&client).await, 0, "rolled back");
    assert_eq!(db.stats().panics, 1);
    db.write(async |tx| Ok(tx.execute("INSERT INTO items VALUES (2)", &[]).await?))
        .await
        .unwrap();
    assert_eq!(count_items(&client).await, 1);
}

#[tokio::test]
async fn a_write_dropped_mid_transaction_rolls_back_before_the_connection_is_reused() {
    let Some((_pg, url, client)) = fresh("dropped_future").await else {
        return;
    };
    // One connection: the next write must get the same one.
    let db = PgDb::builder(&url)
        .max_connections(1)
        .build()
        .await
        .unwrap();
    let (inserted_tx, inserted_rx) = tokio::sync::oneshot::channel::<()>();
    let (_never_tx, never_rx) = tokio::sync::oneshot::channel::<()>();
    let slot = std::sync::Mutex::new(Some((inserted_tx, never_rx)));
    let task = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(async move |tx| {
                let (inserted, never) = slot.lock().unwrap().take().unwrap();
                tx.execute("INSERT INTO items VALUES (1)", &[]).await?;
                inserted.send(()).unwrap();
                let _ = never.await; // parked until the future is dropped
                Ok(())
            })
            .await
        })
    };
    inserted_rx.await.unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // On the same connection: a transaction left open would show its own insert here.
    let rows: i64 = db
        .write(async |tx| {
            Ok(tx
                .query_one("SELECT count(*) FROM items", &[])
                .await?
                .get(0))
        })
        .await
        .unwrap();
    assert_eq!(rows, 0, "the dropped write's insert was rolled back");
    assert_eq!(count_items(&client).await, 0);
    let stats = db.stats();
    assert_eq!((stats.connections, stats.writes_ok), (1, 1), "{stats}");
}

// --- settings -------------------------------------------------------------------------------

#[tokio::test]
async fn settings_at_zero_and_max_give_errors_not_panics() {
    let Some((_pg, url, client)) = fresh("settings").await else {
        return;
    };
    let err = PgDb::builder(&url)
        .max_connections(0)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidSetting {
                setting: "max_connections",
                ..
            }
        ),
        "{err:?}"
    );
    let err = PgDb::connect("postgresql://[not a url").await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidSetting { setting: "url", .. }),
        "{err:?}"
    );

    // A zero wait for a connection while the only one is busy: a pool timeout at once.
    let db = PgDb::builder(&url)
        .max_connections(1)
        .pool_wait_timeout(Some(Duration::ZERO))
        .build()
        .await
        .unwrap();
    let err = db
        .write(async |_tx| {
            Ok(db
                .read(async |tx| Ok(tx.execute("SELECT 1", &[]).await?))
                .await)
        })
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::PgPool(_)), "{err:?}");

    // Duration::MAX everywhere: no overflow.
    let db = PgDb::builder(&url)
        .pool_wait_timeout(Some(Duration::MAX))
        .retry_policy(
            RetryPolicy::new()
                .with_delay(Duration::MAX)
                .with_max_delay(Duration::MAX)
                .with_deadline(Some(Duration::MAX)),
        )
        .build()
        .await
        .unwrap();
    db.write(async |tx| Ok(tx.execute("INSERT INTO items VALUES (1)", &[]).await?))
        .await
        .unwrap();

    // A retry delay of Duration::MAX under a deadline: the 40001 is returned, not slept on.
    let db = PgDb::builder(&url)
        .retry_policy(
            RetryPolicy::new()
                .with_delay(Duration::MAX)
                .with_deadline(Some(Duration::from_secs(1))),
        )
        .build()
        .await
        .unwrap();
    let attempts = AtomicU32::new(0);
    let err = db
        .write(async |tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            let n: i64 = tx.query_one("SELECT n FROM counter", &[]).await?.get(0);
            client.execute("UPDATE counter SET n = n + 1", &[]).await?;
            tx.execute("UPDATE counter SET n = $1", &[&(n + 10)])
                .await?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.busy_code(),
        Some(BusyCode::SerializationFailure),
        "{err}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    // No retries at all: the 40001 is returned after one attempt.
    let db = PgDb::builder(&url)
        .retry_policy(RetryPolicy::new().with_max_retries(0))
        .build()
        .await
        .unwrap();
    let attempts = AtomicU32::new(0);
    let err = db
        .write(async |tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            let n: i64 = tx.query_one("SELECT n FROM counter", &[]).await?.get(0);
            client.execute("UPDATE counter SET n = n + 1", &[]).await?;
            tx.execute("UPDATE counter SET n = $1", &[&(n + 10)])
                .await?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.busy_code(),
        Some(BusyCode::SerializationFailure),
        "{err}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

//! A downstream crate puts `#[db_retry]` on its own functions over tokio-postgres and sees a
//! real `40001` retried: once on a function returning `tokio_postgres::Error`, once on one
//! returning its own error type that wraps it.

use std::sync::atomic::{AtomicU32, Ordering};

use luca_core::db_retry;
use luca_core::postgres::tokio_postgres::{self, Client, IsolationLevel, NoTls};
use luca_testkit::TempPostgres;

/// One read-modify-write at SERIALIZABLE; on the first attempt another connection updates
/// the row after this transaction read it, so the update fails with `40001`.
async fn bump(
    client: &mut Client,
    other: &Client,
    attempts: &AtomicU32,
) -> Result<i64, tokio_postgres::Error> {
    let first = attempts.fetch_add(1, Ordering::SeqCst) == 0;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .start()
        .await?;
    let n: i64 = tx
        .query_one("SELECT n FROM hits WHERE id = 1", &[])
        .await?
        .get(0);
    if first {
        other
            .execute("UPDATE hits SET n = n + 100 WHERE id = 1", &[])
            .await?;
    }
    tx.execute("UPDATE hits SET n = $1 WHERE id = 1", &[&(n + 1)])
        .await?;
    tx.commit().await?;
    Ok(n + 1)
}

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn bump_plain(
    client: &mut Client,
    other: &Client,
    attempts: &AtomicU32,
) -> Result<i64, tokio_postgres::Error> {
    bump(client, other, attempts).await
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

#[db_retry(max_retries = 3, delay_ms = 1)]
async fn bump_app(
    client: &mut Client,
    other: &Client,
    attempts: &AtomicU32,
) -> Result<i64, AppError> {
    Ok(bump(client, other, attempts).await?)
}

async fn connect(pg: &TempPostgres) -> Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn a_real_40001_is_retried_in_a_downstream_crate() {
    let Some(pg) = TempPostgres::shared_or_skip("the downstream #[db_retry] PostgreSQL test")
    else {
        return;
    };
    let mut client = connect(pg).await;
    let other = connect(pg).await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS hits; CREATE TABLE hits (id INT PRIMARY KEY, n BIGINT NOT NULL);
             INSERT INTO hits VALUES (1, 0);",
        )
        .await
        .unwrap();
    let attempts = AtomicU32::new(0);
    assert_eq!(
        bump_plain(&mut client, &other, &attempts).await.unwrap(),
        101
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "one 40001, one retry");
    let attempts = AtomicU32::new(0);
    assert_eq!(bump_app(&mut client, &other, &attempts).await.unwrap(), 202);
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "one 40001, one retry");
}

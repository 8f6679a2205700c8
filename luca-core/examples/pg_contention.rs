//! Proof under contention on PostgreSQL: a counter read-modify-write and a ledger transfer,
//! at 1, 16 and 64 concurrent writers, every transaction SERIALIZABLE, three ways:
//!
//! - `plain`: tokio-postgres with no retry. The share of operations that fail with
//!   `40001` / `40P01` is the baseline: what an application without retries loses.
//! - `db_retry`: the same function under `#[db_retry]`, one connection per writer.
//! - `PgDb`: `PgDb::write` with a pool of one connection per writer.
//!
//! Each row checks, against the database: nothing escaped (no serialization failure or
//! deadlock reached the caller), nothing lost (the counter equals the increments reported
//! committed; the transfer log holds exactly the transfers reported committed, and every
//! balance equals what the log says), and the ledger's sum is conserved.
//!
//! ```text
//! cargo run --release -p luca-core --features postgres --example pg_contention [-- OPS_PER_WRITER [URL]]
//! ```
//!
//! Without a URL it starts a throwaway server with `luca_testkit::TempPostgres`.

#![allow(dead_code)] // also compiled into the `pg_contention` test, which has no `main`

use std::time::{Duration, Instant};

use luca_core::db_retry;
use luca_core::postgres::PgDb;
use luca_core::postgres::tokio_postgres::{self, Client, IsolationLevel, NoTls};
use luca_core::retry::{RetryPolicy, Retryable};

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Workload {
    /// `SELECT n` then `UPDATE n = n + 1` on one hot row.
    Counter,
    /// Move a random amount between two of 8 accounts (if the balance allows), and log it.
    Ledger,
}

/// How each operation is run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Mode {
    /// tokio-postgres, no retry.
    Plain,
    /// `#[db_retry]` on the operation.
    DbRetry,
    /// `PgDb::write`.
    PgDb,
}

const ACCOUNTS: i32 = 8;
const INITIAL_BALANCE: i64 = 1_000;

/// One row of the table.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) workload: Workload,
    pub(crate) mode: Mode,
    pub(crate) writers: usize,
    pub(crate) attempted: u64,
    pub(crate) committed: u64,
    /// Operations whose caller got a serialization failure or deadlock.
    pub(crate) escaped: u64,
    /// Operations whose caller got any other error.
    pub(crate) other_errors: u64,
    /// Committed operations missing from the database, or present without being reported.
    pub(crate) lost: i64,
    pub(crate) sum_conserved: bool,
    pub(crate) retries: u64,
    pub(crate) wall: Duration,
}

impl Row {
    /// The row's claims: the luca rows must show no escape, no loss, a conserved sum.
    pub(crate) fn sound(&self) -> bool {
        self.lost == 0 && self.sum_conserved && self.other_errors == 0
    }
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

async fn setup(url: &str) {
    connect(url)
        .await
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS counter, accounts, transfers;
             CREATE TABLE counter (id INT PRIMARY KEY, n BIGINT NOT NULL);
             INSERT INTO counter VALUES (1, 0);
             CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL);
             INSERT INTO accounts SELECT g, {INITIAL_BALANCE} FROM generate_series(0, {last}) g;
             CREATE TABLE transfers (id BIGSERIAL PRIMARY KEY, src INT NOT NULL,
                                     dst INT NOT NULL, amount BIGINT NOT NULL);",
            last = ACCOUNTS - 1
        ))
        .await
        .expect("setup");
}

// --- the operations, as an application writes them ----------------------------------------------

/// One counter increment in a SERIALIZABLE transaction.
async fn counter_once(client: &mut Client) -> Result<bool, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .start()
        .await?;
    let n: i64 = tx
        .query_one("SELECT n FROM counter WHERE id = 1", &[])
        .await?
        .get(0);
    tx.execute("UPDATE counter SET n = $1 WHERE id = 1", &[&(n + 1)])
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// One transfer in a SERIALIZABLE transaction; `Ok(false)` when the balance is short.
async fn transfer_once(
    client: &mut Client,
    (src, dst, amount): (i32, i32, i64),
) -> Result<bool, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .start()
        .await?;
    let balance: i64 = tx
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&src])
        .await?
        .get(0);
    if balance < amount {
        tx.commit().await?;
        return Ok(false);
    }
    tx.execute(
        "UPDATE accounts SET balance = balance - $2 WHERE id = $1",
        &[&src, &amount],
    )
    .await?;
    tx.execute(
        "UPDATE accounts SET balance = balance + $2 WHERE id = $1",
        &[&dst, &amount],
    )
    .await?;
    tx.execute(
        "INSERT INTO transfers (src, dst, amount) VALUES ($1, $2, $3)",
        &[&src, &dst, &amount],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

// With 64 writers on one row most attempts lose; the schedule backs off (full jitter, up
// to 100 ms) until each gets through.
#[db_retry(
    max_retries = 1000,
    delay_ms = 1,
    max_delay_ms = 100,
    deadline_ms = 120000
)]
async fn counter_retried(client: &mut Client) -> Result<bool, tokio_postgres::Error> {
    counter_once(client).await
}

#[db_retry(
    max_retries = 1000,
    delay_ms = 1,
    max_delay_ms = 100,
    deadline_ms = 120000
)]
async fn transfer_retried(
    client: &mut Client,
    op: (i32, i32, i64),
) -> Result<bool, tokio_postgres::Error> {
    transfer_once(client, op).await
}

/// The same policy for `PgDb`.
const POLICY: RetryPolicy = RetryPolicy::new()
    .with_max_retries(1000)
    .with_delay(Duration::from_millis(1))
    .with_max_delay(Duration::from_millis(100))
    .with_deadline(Some(Duration::from_secs(120)));

async fn pg_counter(db: &PgDb) -> luca_core::Result<bool> {
    db.write(async move |tx| {
        let n: i64 = tx
            .query_one("SELECT n FROM counter WHERE id = 1", &[])
            .await?
            .get(0);
        tx.execute("UPDATE counter SET n = $1 WHERE id = 1", &[&(n + 1)])
            .await?;
        Ok(true)
    })
    .await
}

async fn pg_transfer(db: &PgDb, (src, dst, amount): (i32, i32, i64)) -> luca_core::Result<bool> {
    db.write(async move |tx| {
        let balance: i64 = tx
            .query_one("SELECT balance FROM accounts WHERE id = $1", &[&src])
            .await?
            .get(0);
        if balance < amount {
            return Ok(false);
        }
        tx.execute(
            "UPDATE accounts SET balance = balance - $2 WHERE id = $1",
            &[&src, &amount],
        )
        .await?;
        tx.execute(
            "UPDATE accounts SET balance = balance + $2 WHERE id = $1",
            &[&dst, &amount],
        )
        .await?;
        tx.execute(
            "INSERT INTO transfers (src, dst, amount) VALUES ($1, $2, $3)",
            &[&src, &dst, &amount],
        )
        .await?;
        Ok(true)
    })
    .await
}

// --- one run ----------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    attempted: u64,
    committed: u64,
    escaped: u64,
    other: u64,
}

impl Tally {
    fn add<E: Retryable + std::fmt::Display>(&mut self, r: Result<bool, E>) {
        self.attempted += 1;
        match r {
            Ok(true) => self.committed += 1,
            Ok(false) => {}
            Err(e) if e.busy_code().is_some() => self.escaped += 1,
            Err(e) => {
                eprintln!("unexpected error: {e}");
                self.other += 1;
            }
        }
    }
}

fn ledger_op(rng: &mut fastrand::Rng) -> (i32, i32, i64) {
    let src = rng.i32(0..ACCOUNTS);
    let dst = (src + rng.i32(1..ACCOUNTS)) % ACCOUNTS;
    (src, dst, rng.i64(1..=300))
}

/// Runs `ops` operations on each of `writers` concurrent writers and checks the database.
pub(crate) async fn run(
    url: &str,
    workload: Workload,
    mode: Mode,
    writers: usize,
    ops: usize,
) -> Row {
    setup(url).await;
    let before = luca_core::metrics().snapshot();
    let db = match mode {
        Mode::PgDb => Some(
            PgDb::builder(url)
                .max_connections(writers)
                .retry_policy(POLICY)
                .build()
                .await
                .expect("PgDb"),
        ),
        _ => None,
    };
    let mut clients = Vec::new();
    if db.is_none() {
        for _ in 0..writers {
            clients.push(connect(url).await);
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = clients.pop();
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(w as u64);
            let mut tally = Tally::default();
            for _ in 0..ops {
                match (mode, workload) {
                    (Mode::PgDb, Workload::Counter) => {
                        tally.add(pg_counter(db.as_ref().unwrap()).await)
                    }
                    (Mode::PgDb, Workload::Ledger) => {
                        tally.add(pg_transfer(db.as_ref().unwrap(), ledger_op(&mut rng)).await)
                    }
                    (Mode::Plain, Workload::Counter) => {
                        tally.add(counter_once(client.as_mut().unwrap()).await)
                    }
                    (Mode::Plain, Workload::Ledger) => {
                        let op = ledger_op(&mut rng);
                        tally.add(transfer_once(client.as_mut().unwrap(), op).await)
                    }
                    (Mode::DbRetry, Workload::Counter) => {
                        tally.add(counter_retried(client.as_mut().unwrap()).await)
                    }
                    (Mode::DbRetry, Workload::Ledger) => {
                        let op = ledger_op(&mut rng);
                        tally.add(transfer_retried(client.as_mut().unwrap(), op).await)
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await.expect("writer task");
        total.attempted += t.attempted;
        total.committed += t.committed;
        total.escaped += t.escaped;
        total.other += t.other;
    }
    let wall = started.elapsed();
    let retries = match &db {
        Some(db) => db.stats().retries,
        None => luca_core::metrics().snapshot().since(&before).retries(),
    };

    let check = connect(url).await;
    let (lost, sum_conserved) = match workload {
        Workload::Counter => {
            let n: i64 = check
                .query_one("SELECT n FROM counter WHERE id = 1", &[])
                .await
                .unwrap()
                .get(0);
            (total.committed as i64 - n, true)
        }
        Workload::Ledger => {
            let row = check
                .query_one(
                    "SELECT (SELECT sum(balance)::BIGINT FROM accounts),
                            (SELECT count(*) FROM transfers),
                            (SELECT count(*) FROM accounts a WHERE a.balance <> $1::BIGINT
                               - COALESCE((SELECT sum(amount) FROM transfers WHERE src = a.id), 0)::BIGINT
                               + COALESCE((SELECT sum(amount) FROM transfers WHERE dst = a.id), 0)::BIGINT),
                            (SELECT count(*) FROM accounts WHERE balance < 0)",
                    &[&INITIAL_BALANCE],
                )
                .await
                .unwrap();
            let (sum, logged, inconsistent, negative): (i64, i64, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let conserved =
                sum == i64::from(ACCOUNTS) * INITIAL_BALANCE && inconsistent == 0 && negative == 0;
            (total.committed as i64 - logged, conserved)
        }
    };
    Row {
        workload,
        mode,
        writers,
        attempted: total.attempted,
        committed: total.committed,
        escaped: total.escaped,
        other_errors: total.other,
        lost,
        sum_conserved,
        retries,
        wall,
    }
}

/// The whole table: both workloads, three modes, 1/16/64 writers.
pub(crate) async fn run_all(url: &str, ops: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for workload in [Workload::Counter, Workload::Ledger] {
        for writers in [1, 16, 64] {
            for mode in [Mode::Plain, Mode::DbRetry, Mode::PgDb] {
                rows.push(run(url, workload, mode, writers, ops).await);
            }
        }
    }
    rows
}

/// The table as Markdown.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | mode | writers | ops | committed | escaped (share) | other errors | lost | sum conserved | retries | wall ms | commits/s |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n",
    );
    for r in rows {
        let share = if r.attempted == 0 {
            0.0
        } else {
            100.0 * r.escaped as f64 / r.attempted as f64
        };
        out.push_str(&format!(
            "| {:?} | {} | {} | {} | {} | {} ({share:.1} %) | {} | {} | {} | {} | {:.0} | {:.0} |\n",
            r.workload,
            match r.mode {
                Mode::Plain => "plain tokio-postgres",
                Mode::DbRetry => "`#[db_retry]`",
                Mode::PgDb => "`PgDb::write`",
            },
            r.writers,
            r.attempted,
            r.committed,
            r.escaped,
            r.other_errors,
            r.lost,
            if r.sum_conserved { "yes" } else { "**no**" },
            r.retries,
            r.wall.as_secs_f64() * 1e3,
            r.committed as f64 / r.wall.as_secs_f64().max(1e-9),
        ));
    }
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let ops: usize = args
        .next()
        .map_or(50, |a| a.parse().expect("OPS_PER_WRITER"));
    let url = args.next();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let server;
        let (url, version) = match url {
            Some(url) => (url, String::new()),
            None => {
                server = luca_testkit::TempPostgres::start().expect("TempPostgres");
                (server.url(), server.version().to_owned())
            }
        };
        let client = connect(&url).await;
        let server_version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .unwrap()
            .get(0);
        println!(
            "PostgreSQL {server_version} {version}; {ops} operations per writer; SERIALIZABLE\n"
        );
        let rows = run_all(&url, ops).await;
        println!("{}", table(&rows));
        let luca_ok = rows
            .iter()
            .filter(|r| r.mode != Mode::Plain)
            .all(|r| r.escaped == 0 && r.sound());
        let plain_ok = rows
            .iter()
            .filter(|r| r.mode == Mode::Plain)
            .all(Row::sound);
        println!(
            "luca rows: {}; plain rows lost nothing they reported committed: {}",
            if luca_ok {
                "0 escaped, 0 lost, sums conserved"
            } else {
                "FAILED"
            },
            plain_ok
        );
        if !(luca_ok && plain_ok) {
            std::process::exit(1);
        }
    });
}

//! The sqlx `SqlitePool` baseline of luca's `Db` write-path benchmark.
//!
//! sqlx cannot be built in luca's workspace (both link a `libsqlite3-sys`, in versions no
//! single resolve accepts), so this is its own package and process. It runs one cell and
//! prints one `row` line in the format of `bench/src/harness.rs`, which `luca-bench`
//! reads and merges into its table:
//!
//! ```text
//! sqlx-baseline --workload insert|rmw --writers N --ops M --time-limit SECS
//! ```
//!
//! The pool is configured the usual way: WAL, `synchronous=NORMAL`, busy_timeout (30 s,
//! as luca's), sqlx's default pool size; each operation runs in `pool.begin()`, which is
//! a DEFERRED transaction.

#[allow(dead_code)]
#[path = "../../src/harness.rs"]
mod harness;

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row as _, SqlitePool};

use harness::{Row, Workload};

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    workload: Workload,
    writers: usize,
    ops: u64,
    time_limit: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        workload: Workload::Insert,
        writers: 1,
        ops: 20_000,
        time_limit: Duration::from_secs(20),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--workload" => {
                args.workload =
                    Workload::parse(&value).ok_or_else(|| format!("unknown workload {value}"))?;
            }
            "--writers" => {
                args.writers = value
                    .parse()
                    .map_err(|e: std::num::ParseIntError| bad(e.to_string()))?
            }
            "--ops" => {
                args.ops = value
                    .parse()
                    .map_err(|e: std::num::ParseIntError| bad(e.to_string()))?
            }
            "--time-limit" => {
                args.time_limit = Duration::from_secs_f64(
                    value
                        .parse()
                        .map_err(|e: std::num::ParseFloatError| bad(e.to_string()))?,
                );
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn kind(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code().and_then(|c| i32::from_str(&c).ok()) {
            Some(code) => harness::sqlite_code_name(code),
            None => format!("database: {}", db.message()),
        },
        sqlx::Error::PoolTimedOut => "pool timed out".to_owned(),
        sqlx::Error::PoolClosed => "pool closed".to_owned(),
        other => format!("sqlx: {other}"),
    }
}

async fn insert(pool: &SqlitePool, w: u32, seq: u32) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(harness::INSERT)
        .bind(i64::from(w))
        .bind(i64::from(seq))
        .bind(harness::PAYLOAD)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

async fn rmw(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n: i64 = sqlx::query(harness::READ_COUNTER)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    sqlx::query(harness::WRITE_COUNTER)
        .bind(n + 1)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

async fn run(args: Args) -> Result<Row, sqlx::Error> {
    let dir = tempfile::Builder::new()
        .prefix("luca-bench-sqlx-")
        .tempdir()
        .map_err(sqlx::Error::Io)?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("bench.db"))
        .create_if_missing(true)
        .busy_timeout(BUSY_TIMEOUT)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let pool_options = SqlitePoolOptions::new();
    let max_connections = pool_options.get_max_connections();
    let pool = pool_options.connect_with(options).await?;
    sqlx::raw_sql(harness::SCHEMA).execute(&pool).await?;
    // Open every pooled connection before the clock starts, as the other systems do.
    let mut warm = Vec::new();
    for _ in 0..max_connections {
        warm.push(pool.acquire().await?);
    }
    drop(warm);

    let workload = args.workload;
    let op_pool = pool.clone();
    let drive = harness::drive(args.writers, args.ops, args.time_limit, move |w, seq| {
        let pool = op_pool.clone();
        async move {
            let r = match workload {
                Workload::Insert => insert(&pool, w, seq).await,
                Workload::Rmw => rmw(&pool).await,
            };
            r.map_err(|e| kind(&e))
        }
    })
    .await;

    let check = match workload {
        Workload::Insert => {
            let present: Vec<(i64, i64)> = sqlx::query_as("SELECT writer, seq FROM items")
                .fetch_all(&pool)
                .await?;
            harness::check_insert(&drive.acked, &present)
        }
        Workload::Rmw => {
            let n: i64 = sqlx::query("SELECT n FROM counter WHERE id = 1")
                .fetch_one(&pool)
                .await?
                .try_get(0)?;
            harness::check_rmw(drive.acked.len() as u64, n)
        }
    };
    pool.close().await;
    let mut row = Row::new("sqlx SqlitePool", workload, args.writers, drive, check);
    row.note = format!(
        "pool of {max_connections} (default), each operation in pool.begin(), which is DEFERRED"
    );
    Ok(row)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sqlx-baseline: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(row) => {
            println!("{}", row.to_line());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sqlx-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

//! The tinystore 0.5 peer (issue 13): the closest crate to luca's `Db` that also funnels
//! every write of a file through one writer, on the same rusqlite / libsqlite3-sys build.
//!
//! Its write path, as its source has it (`src/sqlite/group.rs`, `src/sql/database.rs`):
//! `Database::exec` queues the statement at the file's writer; the first caller to find
//! no leader becomes the leader, waits for company for at most a quarter of the last
//! commit's duration (never more than 2 ms), then runs up to 1024 queued writes (8 MiB)
//! in one `BEGIN IMMEDIATE` transaction, each in a savepoint, commits, and hands the
//! lead to the next caller still waiting. In the async API (`tinystore::aio`) the write
//! is queued in the future's first poll and the commit is led on the store's own thread
//! pool, never on the executor's thread. A write that depends on what it read goes
//! through `Database::tx`, a transaction that holds the writer alone, run on the pool in
//! the database's line (one at a time, not grouped). Its files commit at
//! `Durability::Full` (WAL, `synchronous=FULL`) unless told otherwise; `Durability::Os`
//! is `synchronous=NORMAL`.
//!
//! This module drives it that way: tokio tasks awaiting `aio::sql::Database::exec`
//! (insert) and `aio::sql::Database::tx` (rmw, `SELECT` then `UPDATE` in the
//! transaction), with the schema and statements of every other row, a fresh store per
//! cell, and the same check of the file afterwards.

use std::time::Duration;

use luca_core::pragmas::Synchronous;
use luca_testkit::TempDb;
use tinystore::aio::Store;
use tinystore::aio::sql::Database;
use tinystore::{Durability, Options};

use crate::harness::{self, Row, Workload};
use crate::{BoxError, check_file};

/// The system names of the table.
pub(crate) const TINYSTORE: &str = "tinystore 0.5";
pub(crate) const TINYSTORE_FULL: &str = "tinystore 0.5 [FULL]";

/// The database's name in the store: the file is `<store>/sql/bench.db`.
const NAME: &str = "bench";

fn kind(e: &tinystore::Error) -> String {
    format!("tinystore {:?}", e.kind())
}

async fn op(db: &Database, workload: Workload, w: u32, seq: u32) -> tinystore::Result<()> {
    match workload {
        Workload::Insert => {
            db.exec(tinystore::sql!(harness::INSERT, w, seq, harness::PAYLOAD))
                .await?;
        }
        Workload::Rmw => {
            db.tx(|tx| -> tinystore::Result<()> {
                let n: i64 = tx.scalar(harness::READ_COUNTER)?;
                tx.exec(tinystore::sql!(harness::WRITE_COUNTER, n + 1))?;
                Ok(())
            })
            .await?;
        }
    }
    Ok(())
}

/// One cell: a fresh store, its database made with the benchmark's schema through
/// tinystore itself, `writers` tokio tasks writing, then the file checked once the
/// store has closed. At `Synchronous::Full` the store keeps its shipped default
/// (`Durability::Full`); otherwise the database is opened with `Durability::Os`
/// (`synchronous=NORMAL`).
pub(crate) async fn run(
    workload: Workload,
    writers: usize,
    ops: u64,
    limit: Duration,
    sync: Synchronous,
) -> Result<Row, BoxError> {
    let tmp = TempDb::try_named("unused.db")?;
    let dir = tmp.dir().join("store");
    let full = sync == Synchronous::Full;
    let store = Store::open(&dir, Options::default())?;
    let builder = store.database(NAME);
    let builder = if full {
        builder
    } else {
        builder.durability(Durability::Os)
    };
    let db = builder.open()?;
    for statement in harness::SCHEMA.split(';').map(str::trim) {
        if !statement.is_empty() {
            db.exec(statement).await?;
        }
    }

    let op_db = db.clone();
    let d = harness::drive(writers, ops, limit, move |w, seq| {
        let db = op_db.clone();
        async move { op(&db, workload, w, seq).await.map_err(|e| kind(&e)) }
    })
    .await;
    // The setting really was its writer's (SQLite's numbers: 1 NORMAL, 2 FULL): a
    // transaction runs on the writer, and its guard lets a pragma that only reads run.
    let level: i64 = db.tx(|tx| tx.scalar::<i64>("pragma synchronous")).await?;
    let want = if full { 2 } else { 1 };
    if level != want {
        return Err(format!("tinystore's writer runs at synchronous={level}, not {want}").into());
    }
    drop(db);
    store.close().await?;
    drop(store);
    let file = dir.join("sql").join(format!("{NAME}.db"));
    if !file.is_file() {
        return Err(format!("tinystore left no file at {}", file.display()).into());
    }
    let check = check_file(&file, workload, &d)?;
    let system = if full { TINYSTORE_FULL } else { TINYSTORE };
    let mut row = Row::new(system, workload, writers, d, check);
    let durability = if full {
        "its shipped default Durability::Full (synchronous=FULL)"
    } else {
        "Durability::Os (synchronous=NORMAL)"
    };
    row.note = format!(
        "insert: aio Database::exec (grouped: a savepoint each in a shared commit); rmw: aio \
         Database::tx (SELECT then UPDATE, holding the writer alone, in the database's line); \
         {durability}"
    );
    Ok(row)
}

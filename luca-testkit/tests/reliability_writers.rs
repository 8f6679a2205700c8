//! Reliability suite, writers row: luca's `Db` and `#[db_retry]` functions over
//! `luca_core::local` connections, at 1, 16, 64 and 256 concurrent writers, on the insert
//! ledger and the counter read-modify-write: no error may escape and no acknowledged write
//! may be lost.
//!
//! Sized for 2 cores: few operations per writer (the total per row stays near 1000), each
//! row bounded by the harness's time limit. Print the figures with
//! `cargo test -p luca-testkit --test reliability_writers -- --nocapture`.

use std::path::Path;
use std::time::Duration;

use luca_core::db_retry;
use luca_core::local::with_connection;
use luca_testkit::{Contention, ContentionReport, Counter, InsertLedger, TempDb, Workload};

const WRITERS: [usize; 4] = [1, 16, 64, 256];

/// Operations per writer: about 1000 per row, at least 4 per writer.
fn ops_for(writers: usize) -> usize {
    (1024 / writers).clamp(4, 200)
}

const LIMIT: Duration = Duration::from_secs(20);

fn print_table(title: &str, rows: &[ContentionReport]) {
    let mut out = format!("\n{title}\n{}\n", ContentionReport::table_header());
    for r in rows {
        out.push_str(&r.table_row());
        out.push('\n');
    }
    println!("{out}");
}

/// Every row through one `Db` per row, each writer a tokio task.
fn db_rows<W: Workload>(workload: W) -> Vec<ContentionReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    WRITERS
        .iter()
        .map(|&writers| {
            rt.block_on(async {
                let tmp = TempDb::new();
                let db = tmp.db().await.unwrap();
                workload.setup_db(&db).await.unwrap();
                let handle = db.clone();
                let w = workload.clone();
                let mut report = Contention::new(writers)
                    .ops(ops_for(writers))
                    .time_limit(LIMIT)
                    .label(format!("Db {} × {writers}", workload.name()))
                    .check_workload(workload.clone(), tmp.path())
                    .run_async(move |op| {
                        let (db, w) = (handle.clone(), w.clone());
                        async move { w.write(&db, op.id).await }
                    })
                    .await;
                report.add_retries(db.stats().retries);
                db.close().await.unwrap();
                report.assert_clean();
                report
            })
        })
        .collect()
}

/// One attempt of operation `id` on this thread's connection, in its own
/// `BEGIN IMMEDIATE … COMMIT`; busy errors retry the whole call.
#[db_retry(max_retries = 8, delay_ms = 5, max_delay_ms = 200)]
fn apply_local<W: Workload>(workload: &W, path: &Path, id: u64) -> luca_core::Result<()> {
    with_connection(path, |c| Ok(workload.apply_immediate(c, id)?))
}

/// Every row through `#[db_retry]` functions, each writer a thread with its own
/// thread-local connection.
fn db_retry_rows<W: Workload>(workload: W) -> Vec<ContentionReport> {
    WRITERS
        .iter()
        .map(|&writers| {
            let tmp = TempDb::new();
            workload.setup_path(tmp.path()).unwrap();
            let path = tmp.path().to_path_buf();
            let report = Contention::new(writers)
                .ops(ops_for(writers))
                .time_limit(LIMIT)
                .label(format!("#[db_retry] {} × {writers}", workload.name()))
                .check_workload(workload.clone(), tmp.path())
                .run(|op| apply_local(&workload, &path, op.id));
            report.assert_clean();
            report
        })
        .collect()
}

#[test]
fn db_insert_at_1_16_64_256_writers() {
    print_table("luca Db, insert ledger", &db_rows(InsertLedger));
}

#[test]
fn db_rmw_at_1_16_64_256_writers() {
    print_table("luca Db, counter read-modify-write", &db_rows(Counter));
}

#[test]
fn db_retry_insert_at_1_16_64_256_writers() {
    print_table(
        "#[db_retry] over luca_core::local, insert ledger",
        &db_retry_rows(InsertLedger),
    );
}

#[test]
fn db_retry_rmw_at_1_16_64_256_writers() {
    print_table(
        "#[db_retry] over luca_core::local, counter read-modify-write",
        &db_retry_rows(Counter),
    );
}

//! The contention proof of `examples/pg_contention.rs`, small enough for every test run: a
//! counter read-modify-write and a ledger transfer at 1, 16 and 64 concurrent writers on
//! SERIALIZABLE. The `#[db_retry]` and `PgDb` rows must show 0 escaped, 0 lost and the
//! ledger's sum conserved; the plain rows (no retry) must lose nothing they reported
//! committed. How many plain operations fail is printed, not asserted: it depends on
//! timing.

#![cfg(feature = "postgres")]

#[path = "../examples/pg_contention.rs"]
mod contention;

use contention::{Mode, run_all, table};
use luca_testkit::TempPostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_rows_escape_nothing_lose_nothing_and_conserve_the_sum() {
    let Some(pg) = TempPostgres::shared_or_skip("pg_contention") else {
        return;
    };
    let url = pg.create_database().await.unwrap();
    let rows = run_all(&url, 1).await;
    println!("{}", table(&rows));
    for r in &rows {
        assert!(r.sound(), "{r:?}\n{}", table(&rows));
        assert_eq!(r.attempted, r.writers as u64, "{r:?}");
        if r.mode != Mode::Plain {
            assert_eq!(r.escaped, 0, "{r:?}\n{}", table(&rows));
            assert_eq!(r.other_errors, 0, "{r:?}");
        }
    }
}

//! At `synchronous=FULL` a group waits for the writers of the group before it, so that
//! concurrent writers share one sync instead of taking turns in half-size groups; the
//! wait is bounded and a lone writer never waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use luca_core::pragmas::Synchronous;
use luca_core::{Db, DbStats};
use luca_testkit::TempDb;

const WRITERS: usize = 16;
const EACH: usize = 60;

/// A `Db` at `sync` with `schema` created.
async fn open(tmp: &TempDb, sync: Synchronous, schema: &'static str) -> Db {
    let db = Db::builder(tmp.path())
        .synchronous(sync)
        .build()
        .await
        .unwrap();
    db.write(move |c| Ok(c.execute_batch(schema)?))
        .await
        .unwrap();
    db
}

/// `WRITERS` tasks, each writing `EACH` rows one after another; the stats afterwards.
async fn writers_at(sync: Synchronous) -> DbStats {
    let tmp = TempDb::new();
    let db = open(&tmp, sync, "CREATE TABLE t (w INTEGER, i INTEGER)").await;
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, start) = (db.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                for i in 0..EACH {
                    db.write(move |c| {
                        c.execute("INSERT INTO t VALUES (?1, ?2)", (w as i64, i as i64))?;
                        Ok(())
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rows: i64 = db
        .read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(
        rows as usize,
        WRITERS * EACH,
        "every acknowledged write is in the file"
    );
    let stats = db.stats();
    db.close().await.unwrap();
    stats
}

/// Writes per commit over the run (the `CREATE TABLE` left out).
fn per_commit(s: &DbStats) -> f64 {
    (s.writes_ok - 1) as f64 / (s.commits - 1).max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_full_concurrent_writers_share_one_sync() {
    // Timing decides how many writers are back within the wait: up to three runs on
    // fresh files; without the wait, 16 writers settle into two groups of about 8.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let s = writers_at(Synchronous::Full).await;
        seen.push(per_commit(&s));
        println!(
            "FULL, {WRITERS} writers: {} commits, {:.1} writes per commit, groups p50 {} max {}",
            s.commits,
            per_commit(&s),
            s.group_sizes.p50,
            s.group_sizes.max
        );
        if per_commit(&s) >= 12.0 {
            return;
        }
    }
    panic!("writes per commit at FULL: {seen:?}, never 12 or more of {WRITERS}");
}

/// After a group, a write whose group-mates went away waits at most the bound (2 ms, or
/// a quarter of the last transaction), not for writers that never come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_company_is_bounded() {
    let tmp = TempDb::new();
    let db = open(&tmp, Synchronous::Full, "CREATE TABLE t (v INTEGER)").await;
    for round in 0..20 {
        // A group of 8 …
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let group: Vec<_> = (0..8)
            .map(|i| {
                let (db, start) = (db.clone(), Arc::clone(&start));
                tokio::spawn(async move {
                    start.wait().await;
                    db.write(move |c| Ok(c.execute("INSERT INTO t VALUES (?1)", [i])?))
                        .await
                        .unwrap();
                })
            })
            .collect();
        for t in group {
            t.await.unwrap();
        }
        // … then one of them alone: nobody else comes back.
        let t0 = Instant::now();
        db.write(move |c| Ok(c.execute("INSERT INTO t VALUES (?1)", [round])?))
            .await
            .unwrap();
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "a lone write after a group took {took:?}"
        );
    }
    let s = db.stats();
    assert_eq!(s.writes_ok, 1 + 20 * 9);
    db.close().await.unwrap();
}

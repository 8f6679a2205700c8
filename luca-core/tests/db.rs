//! `Db`: PRAGMAs, the fair write path, group-commit atomicity, hygiene (dirty
//! connections, panics, cancellation), close, the stats, and bad input. Real files, real
//! tasks and threads; two writer processes are in `db_processes.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use luca_core::rusqlite::{self, Connection};
use luca_core::{Db, Error};
use luca_testkit::TempDb;

const T: Duration = Duration::from_secs(30);

async fn with_table(db: &TempDb) -> Db {
    let h = Db::open(db.path()).await.unwrap();
    create_tables(&h).await;
    h
}

/// Creates the tables `t` and `counter` (one write).
async fn create_tables(h: &Db) {
    h.write(|c| {
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT OR IGNORE INTO counter VALUES (1, 0);",
        )?;
        Ok(())
    })
    .await
    .unwrap();
}

fn count(path: &std::path::Path) -> i64 {
    let c = Connection::open(path).unwrap();
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// The keys of `t` in the order they were inserted.
fn keys(path: &std::path::Path) -> Vec<String> {
    let c = Connection::open(path).unwrap();
    let mut stmt = c.prepare("SELECT k FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Queues a write that inserts `key` into `t`, on a task of its own.
fn insert(db: &Db, key: String) -> tokio::task::JoinHandle<luca_core::Result<()>> {
    let db = db.clone();
    tokio::spawn(async move {
        db.write(move |c| {
            c.execute("INSERT INTO t (k, v) VALUES (?1, 1)", [&key])?;
            Ok(())
        })
        .await
    })
}

/// Queues `n` inserts (keys `w00`, `w01`, …) one at a time: each is in the queue before
/// the next is started, so the queue holds them in this order.
async fn queue_one_by_one(
    db: &Db,
    n: usize,
) -> Vec<tokio::task::JoinHandle<luca_core::Result<()>>> {
    let before = db.stats().queue_depth;
    let mut writes = Vec::with_capacity(n);
    for i in 0..n {
        writes.push(insert(db, format!("w{i:02}")));
        wait_for_queue(db, before + i + 1).await;
    }
    writes
}

/// Polls `fut` once: far enough for a write or close to be queued. It must still be
/// pending.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) {
    std::future::poll_fn(|cx| {
        assert!(fut.as_mut().poll(cx).is_pending(), "finished at once");
        Poll::Ready(())
    })
    .await;
}

/// Receives from a std channel without blocking the async worker (bounded by 30 s).
async fn recv<M: Send + 'static>(rx: std::sync::mpsc::Receiver<M>, what: &'static str) -> M {
    tokio::task::spawn_blocking(move || rx.recv_timeout(T))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Holds the writer thread inside a write until the returned sender fires, so that the
/// writes queued meanwhile form one group. Returns once the writer runs the holding write.
async fn hold_writer(db: &Db) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let wait = std::sync::Mutex::new(wait);
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let db = db.clone();
    let task = tokio::spawn(async move {
        db.write(move |_| {
            let _ = started_tx.send(());
            let _ = wait.lock().unwrap().recv_timeout(T);
            Ok(())
        })
        .await
        .unwrap();
    });
    recv(started_rx, "the writer picked up the holding write").await;
    (release, task)
}

/// Polls `cond` until it holds; fails after the suite's 30 s bound.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {T:?}: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits (bounded) until `n` writes are queued behind a held writer, then checks it.
async fn wait_for_queue(db: &Db, n: usize) {
    wait_until("writes reached the queue", || db.stats().queue_depth >= n).await;
    assert_eq!(
        db.stats().queue_depth,
        n,
        "more writes queued than expected"
    );
}

/// A retry policy that outlasts any lock a test holds: it gives up only after the
/// suite's 30 s bound.
fn patient() -> luca_core::retry::RetryPolicy {
    luca_core::retry::RetryPolicy::new()
        .with_max_retries(u32::MAX)
        .with_delay(Duration::from_millis(1))
        .with_max_delay(Duration::from_millis(5))
        .with_deadline(Some(T))
}

#[tokio::test]
async fn pragmas_read_back_on_writer_and_readers() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .busy_timeout(Duration::from_millis(1234))
        .build()
        .await
        .unwrap();
    let read_pragmas = |c: &Connection| -> luca_core::Result<(i64, String, i64, i64, i64)> {
        Ok((
            c.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?,
            c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
            c.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
            c.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?,
            c.query_row("PRAGMA query_only", [], |r| r.get(0))?,
        ))
    };
    let w = db.write(move |c| read_pragmas(c)).await.unwrap();
    assert_eq!(w, (1234, "wal".to_owned(), 1, 1, 0), "writer");
    let r = db.read(move |c| read_pragmas(c)).await.unwrap();
    assert_eq!(r, (1234, "wal".to_owned(), 1, 1, 1), "reader is query_only");
    assert_eq!(db.path(), tmp.path());
    let refused = db
        .read(|c| Ok(c.execute("CREATE TABLE nope (x)", [])?))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if e.extended_code == rusqlite::ffi::SQLITE_READONLY),
        "a reader's write fails with SQLITE_READONLY: {refused:?}"
    );
    let created: i64 = db
        .write(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'nope'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(created, 0, "the reader's write left nothing behind");
    db.close().await.unwrap();
}

#[tokio::test]
async fn builder_settings_reach_the_connections() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .synchronous(luca_core::pragmas::Synchronous::Full)
        .wal_autocheckpoint(0)
        .build()
        .await
        .unwrap();
    let (sync, ckpt): (i64, i64) = db
        .write(|c| {
            Ok((
                c.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
                c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?,
            ))
        })
        .await
        .unwrap();
    assert_eq!((sync, ckpt), (2, 0));
    let reader_sync: i64 = db
        .read(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(reader_sync, 2);
    db.close().await.unwrap();
}

/// Writes `n` transactions of at least 2 pages each (a row of 6000 bytes spills into an
/// overflow page of its own, and its leaf page changes too).
async fn fill_wal(db: &Db, n: usize) {
    db.write(|c| Ok(c.execute_batch("CREATE TABLE IF NOT EXISTS blobs (b BLOB)")?))
        .await
        .unwrap();
    for _ in 0..n {
        db.write(|c| Ok(c.execute("INSERT INTO blobs VALUES (zeroblob(6000))", [])?))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn checkpoints_run_in_the_background_past_the_threshold() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .wal_autocheckpoint(50)
        .build()
        .await
        .unwrap();
    fill_wal(&db, 200).await;
    wait_until("a background checkpoint ran", || db.stats().checkpoints > 0).await;
    db.close().await.unwrap();
}

/// Sustained writing from many tasks: the WAL stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_writing_keeps_the_wal_bounded() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .wal_autocheckpoint(50)
        .build()
        .await
        .unwrap();
    db.write(|c| Ok(c.execute_batch("CREATE TABLE blobs (b BLOB)")?))
        .await
        .unwrap();
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                for _ in 0..150 {
                    db.write(|c| Ok(c.execute("INSERT INTO blobs VALUES (zeroblob(6000))", [])?))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let wal_len = std::fs::metadata(format!("{}-wal", tmp.path().display()))
        .unwrap()
        .len();
    let stats = db.stats();
    // 2400 writes of 2 pages each would leave 4800 frames (about 20 MB) in a WAL that
    // never starts over; bounded, it stays a small multiple of the 50-page threshold.
    assert!(
        wal_len < 1200 * 4200,
        "WAL grew to {wal_len} bytes\n{stats}"
    );
    assert!(stats.checkpoints + stats.inline_checkpoints > 0, "{stats}");
    db.close().await.unwrap();
}

/// SQLite's WAL file: a 32-byte header, then one 24-byte header and one page per frame.
fn wal_frames(db: &std::path::Path, page_size: u64) -> u64 {
    let len = std::fs::metadata(format!("{}-wal", db.display()))
        .unwrap()
        .len();
    len.saturating_sub(32) / (24 + page_size)
}

#[tokio::test]
async fn zero_turns_every_automatic_checkpoint_off() {
    let tmp = TempDb::new();
    let off = Db::builder(tmp.path())
        .wal_autocheckpoint(0)
        .build()
        .await
        .unwrap();
    let page_size: u32 = off
        .read(|c| Ok(c.query_row("PRAGMA page_size", [], |r| r.get(0))?))
        .await
        .unwrap();
    // At least 1400 frames: well past the 1000 pages at which SQLite's own
    // auto-checkpoint would copy the WAL back and let it start over, so a WAL that holds
    // every frame shows that SQLite's checkpoint is off too, not only the background one.
    const WRITES: u64 = 700;
    fill_wal(&off, WRITES as usize).await;
    let frames = wal_frames(tmp.path(), u64::from(page_size));
    let stats = off.stats();
    assert!(
        frames >= 2 * WRITES,
        "the WAL holds {frames} frames, not every frame of {WRITES} writes\n{stats}"
    );
    assert_eq!(stats.checkpoints + stats.inline_checkpoints, 0, "{stats}");
    off.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_write_without_escaped_or_lost_writes() {
    let tmp = TempDb::new();
    // No busy_timeout: if two connections of this process ever fought over the write
    // lock, the loser would get SQLITE_BUSY at once and the stats would count it.
    let db = Db::builder(tmp.path())
        .busy_timeout(Duration::ZERO)
        .build()
        .await
        .unwrap();
    create_tables(&db).await;
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    db.write(move |c| {
                        c.execute(
                            "INSERT INTO t (k, v) VALUES (?1, ?2)",
                            (format!("{t}-{i}"), i),
                        )?;
                        Ok(())
                    })
                    .await?;
                    // Read-modify-write in one transaction: no lost increment.
                    db.write(|c| {
                        let n: i64 =
                            c.query_row("SELECT n FROM counter WHERE id = 1", [], |r| r.get(0))?;
                        c.execute("UPDATE counter SET n = ?1 WHERE id = 1", [n + 1])?;
                        Ok(())
                    })
                    .await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = db.stats();
    db.close().await.unwrap();
    assert_eq!(count(tmp.path()), 64 * 50);
    let c = Connection::open(tmp.path()).unwrap();
    let n: i64 = c
        .query_row("SELECT n FROM counter", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 64 * 50, "every increment kept");
    assert_eq!(stats.writes_ok, 1 + 2 * 64 * 50);
    assert_eq!(stats.writes_failed, 0);
    assert_eq!(
        stats.busy_total(),
        0,
        "no busy error inside one process\n{stats}"
    );
    assert_eq!(stats.retries, 0, "{stats}");
    assert_eq!(stats.write_latency_ns.count, stats.writes_ok);
}

/// Queues ten writes behind a held writer (write 3 fails on a unique key after its own
/// insert) and returns how many times each closure ran and which writes failed.
async fn group_with_a_failure(db: &Db, round: u32) -> (Vec<u32>, Vec<usize>) {
    let runs: Arc<Vec<AtomicU32>> = Arc::new((0..10).map(|_| AtomicU32::new(0)).collect());
    let (release, holder) = hold_writer(db).await;
    // Queued one at a time, so the group runs them in this order.
    let before = db.stats().queue_depth;
    let mut writes = Vec::new();
    for i in 0..10usize {
        let (db2, runs) = (db.clone(), Arc::clone(&runs));
        writes.push(tokio::spawn(async move {
            db2.write(move |c| {
                runs[i].fetch_add(1, Ordering::SeqCst);
                c.execute(
                    "INSERT INTO t (k, v) VALUES (?1, 1)",
                    [format!("r{round}-{i}")],
                )?;
                if i == 3 {
                    c.execute("INSERT INTO t (k, v) VALUES ('taken', 3)", [])?;
                }
                Ok(())
            })
            .await
        }));
        wait_for_queue(db, before + i + 1).await;
    }
    release.send(()).unwrap();
    holder.await.unwrap();
    let mut failed = Vec::new();
    for (i, w) in writes.into_iter().enumerate() {
        if w.await.unwrap().is_err() {
            failed.push(i);
        }
    }
    let runs = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    (runs, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failure_groups_keep_savepoints_so_others_are_not_run_again() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    db.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES ('taken', 0)", [])?))
        .await
        .unwrap();
    // First group, without savepoints: write 3's failure makes the writes that ran
    // before it in the group run again.
    let (runs, failed) = group_with_a_failure(&db, 1).await;
    assert_eq!(failed, [3]);
    assert_eq!(
        runs,
        [2, 2, 2, 1, 1, 1, 1, 1, 1, 1],
        "the three writes before the failure ran again, the others once"
    );
    // Next group: savepoints, so the failure is undone alone and nobody runs twice.
    let (runs, failed) = group_with_a_failure(&db, 2).await;
    assert_eq!(failed, [3]);
    assert_eq!(runs, [1; 10], "with savepoints every closure runs once");
    db.close().await.unwrap();
    let c = Connection::open(tmp.path()).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM t WHERE k LIKE 'r%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 18, "nine rows per group, none of the failed writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_in_a_group_rolls_back_alone() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    // The key write 3 collides with exists before any of the ten is queued, so the
    // collision does not depend on the order in which the tasks reach the queue.
    db.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES ('taken', 0)", [])?))
        .await
        .unwrap();
    let (release, holder) = hold_writer(&db).await;
    let writes: Vec<_> = (0..10)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(move |c| {
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 1)", [format!("row{i}")])?;
                    c.execute("INSERT INTO t (k, v) VALUES (?1, 2)", [format!("row{i}b")])?;
                    if i == 3 {
                        // Fails after its own two inserts: both must vanish.
                        c.execute("INSERT INTO t (k, v) VALUES ('taken', 3)", [])?;
                    }
                    Ok(i)
                })
                .await
            })
        })
        .collect();
    wait_for_queue(&db, 10).await;
    release.send(()).unwrap();
    holder.await.unwrap();
    let mut failed = Vec::new();
    for (i, w) in writes.into_iter().enumerate() {
        match w.await.unwrap() {
            Ok(v) => assert_eq!(v, i),
            Err(e) => {
                assert_eq!(
                    e.extended_code(),
                    Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE),
                    "{e}"
                );
                failed.push(i);
            }
        }
    }
    assert_eq!(failed, [3]);
    let stats = db.stats();
    // The group ran without savepoints (no closure had failed yet): write 3's failure
    // rolled it back, and the nine others ran again and committed as one group.
    assert_eq!(
        stats.group_sizes.max, 9,
        "the nine other writes committed as one group"
    );
    db.close().await.unwrap();
    let c = Connection::open(tmp.path()).unwrap();
    let k3: i64 = c
        .query_row("SELECT count(*) FROM t WHERE k LIKE 'row3%'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(k3, 0, "the failed write left nothing behind");
    assert_eq!(count(tmp.path()), 1 + 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_commit_tells_nobody_success_wrongly() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    db.write(|c| {
        c.execute_batch(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (id INTEGER PRIMARY KEY,
                 parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
             INSERT INTO parent VALUES (1);",
        )?;
        Ok(())
    })
    .await
    .unwrap();
    let (release, holder) = hold_writer(&db).await;
    let writes: Vec<_> = (0..8i64)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                // Write 5 points at a missing parent: its savepoint releases fine, and only
                // the shared COMMIT finds the deferred foreign-key violation.
                let parent = if i == 5 { 99 } else { 1 };
                let r = db
                    .write(move |c| {
                        c.execute(
                            "INSERT INTO child (id, parent) VALUES (?1, ?2)",
                            [i, parent],
                        )?;
                        Ok(())
                    })
                    .await;
                (i, r)
            })
        })
        .collect();
    wait_for_queue(&db, 8).await;
    release.send(()).unwrap();
    holder.await.unwrap();
    let mut acked = Vec::new();
    for w in writes {
        let (i, r) = w.await.unwrap();
        match r {
            Ok(()) => acked.push(i),
            Err(e) => {
                assert_eq!(i, 5, "only the culprit fails: {e}");
                assert!(e.to_string().contains("FOREIGN KEY"), "{e}");
            }
        }
    }
    assert_eq!(acked, [0, 1, 2, 3, 4, 6, 7]);
    assert_eq!(db.stats().commit_fallbacks, 1);
    db.close().await.unwrap();
    let c = Connection::open(tmp.path()).unwrap();
    let mut stmt = c.prepare("SELECT id FROM child ORDER BY id").unwrap();
    let present: Vec<i64> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(present, acked, "acknowledged exactly when committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_lets_a_lone_write_wait_for_company() {
    let tmp = TempDb::new();
    // The wait is far longer than the test: the group closes when it is full (the second
    // write arrives), never because a window ran out.
    let db = Db::builder(tmp.path())
        .max_batch(2)
        .max_wait(T)
        .build()
        .await
        .unwrap();
    let first = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(|c| Ok(c.execute_batch("CREATE TABLE a (x)")?))
                .await
        })
    };
    wait_for_queue(&db, 1).await;
    db.write(|c| Ok(c.execute_batch("CREATE TABLE b (x)")?))
        .await
        .unwrap();
    first.await.unwrap().unwrap();
    let stats = db.stats();
    assert_eq!((stats.commits, stats.group_sizes.max), (1, 2), "{stats}");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_write_does_not_poison_the_others() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    let (release, holder) = hold_writer(&db).await;
    let good = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES ('good', 1)", [])?))
                .await
        })
    };
    let bad = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(|c| -> luca_core::Result<()> {
                c.execute("INSERT INTO t (k, v) VALUES ('bad', 1)", [])?;
                panic!("boom in a write")
            })
            .await
        })
    };
    wait_for_queue(&db, 2).await;
    release.send(()).unwrap();
    holder.await.unwrap();
    assert_eq!(good.await.unwrap().unwrap(), 1);
    match bad.await.unwrap() {
        Err(Error::Panicked { message }) => assert!(message.contains("boom"), "{message}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    // The write path still works.
    db.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES ('after', 1)", [])?))
        .await
        .unwrap();
    assert_eq!(db.stats().panics, 1);
    db.close().await.unwrap();
    let c = Connection::open(tmp.path()).unwrap();
    let ks: Vec<String> = c
        .prepare("SELECT k FROM t ORDER BY k")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ks, ["after", "good"]);
}

#[tokio::test]
async fn a_reader_left_in_a_transaction_is_rolled_back_before_reuse() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .max_readers(1)
        .build()
        .await
        .unwrap();
    // Fault injection: the closure opens a transaction and never ends it.
    db.read(|c| {
        c.execute_batch("BEGIN")?;
        let _: i64 = c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        Ok(())
    })
    .await
    .unwrap();
    let clean = db.read(|c| Ok(c.is_autocommit())).await.unwrap();
    assert!(clean, "the single reader came back in autocommit mode");
    assert_eq!(db.stats().dirty_rollbacks, 1);
    // A reader snapshot left open would hide this write from later reads.
    db.write(|c| Ok(c.execute_batch("CREATE TABLE seen (x)")?))
        .await
        .unwrap();
    let n: i64 = db
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'seen'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_panicking_read_discards_its_connection_only() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .max_readers(1)
        .build()
        .await
        .unwrap();
    let err = db
        .read(|_| -> luca_core::Result<()> { panic!("boom in a read") })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Panicked { .. }), "{err:?}");
    let one: i64 = db
        .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(one, 1, "the pool replaced the poisoned connection");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_before_its_first_poll_is_never_queued() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    let ran = Arc::new(AtomicU32::new(0));
    let ran2 = Arc::clone(&ran);
    let write = db.write(move |c| {
        ran2.fetch_add(1, Ordering::SeqCst);
        c.execute("INSERT INTO t (k, v) VALUES ('dropped', 0)", [])?;
        Ok(())
    });
    drop(write);
    assert_eq!(db.stats().queue_depth, 0, "nothing was queued");
    // Writes run in queue order: anything queued before this one has run once it is
    // answered.
    db.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES ('after', 0)", [])?))
        .await
        .unwrap();
    db.close().await.unwrap();
    assert_eq!(keys(tmp.path()), ["after"]);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the closure never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_while_queued_still_commits_as_a_whole() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    let (release, holder) = hold_writer(&db).await;
    let ran = Arc::new(AtomicU32::new(0));
    let ran2 = Arc::clone(&ran);
    let mut write = Box::pin(db.write(move |c| {
        ran2.fetch_add(1, Ordering::SeqCst);
        for i in 0..100 {
            c.execute("INSERT INTO t (k, v) VALUES (?1, 0)", [format!("c{i}")])?;
        }
        Ok(())
    }));
    // The first poll queues the write; then its caller gives up.
    poll_once(write.as_mut()).await;
    wait_for_queue(&db, 1).await;
    drop(write);
    release.send(()).unwrap();
    holder.await.unwrap();
    db.close().await.unwrap();
    assert_eq!(
        count(tmp.path()),
        100,
        "a queued write still runs once its caller is gone"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_while_its_closure_runs_still_commits() {
    let tmp = TempDb::new();
    // On the writer thread: an inline write's closure runs inside the first poll, so
    // its future cannot be dropped meanwhile (next test).
    let db = Db::builder(tmp.path())
        .inline_limit(Duration::ZERO)
        .build()
        .await
        .unwrap();
    create_tables(&db).await;
    let ran = Arc::new(AtomicU32::new(0));
    let ran2 = Arc::clone(&ran);
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let mut write = Box::pin(db.write(move |c| {
        ran2.fetch_add(1, Ordering::SeqCst);
        c.execute("INSERT INTO t (k, v) VALUES ('dropped', 0)", [])?;
        let _ = started_tx.send(());
        let _ = go_rx.lock().unwrap().recv_timeout(T);
        Ok(())
    }));
    poll_once(write.as_mut()).await;
    recv(started, "the closure started").await;
    // The caller gives up while its closure is running on the writer thread.
    drop(write);
    go.send(()).unwrap();
    db.close().await.unwrap();
    assert_eq!(keys(tmp.path()), ["dropped"]);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_write_is_done_within_its_first_poll() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .inline_limit(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    create_tables(&db).await;
    let mut write = Box::pin(db.write(|c| {
        c.execute("INSERT INTO t (k, v) VALUES ('inline', 0)", [])?;
        Ok(std::thread::current().id())
    }));
    let here = std::thread::current().id();
    // Polled once, then dropped: the answer is lost, the write is in the file (it was
    // committed on this thread before the poll returned).
    let ran_on = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    match ran_on {
        Poll::Ready(Ok(id)) => assert_eq!(id, here, "ran on the polling thread"),
        other => panic!("an idle path did not run the write inline: {other:?}"),
    }
    drop(write);
    assert_eq!(db.stats().inline_writes, 2);
    db.close().await.unwrap();
    assert_eq!(keys(tmp.path()), ["inline"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_commit_as_one_group() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    let (release, holder) = hold_writer(&db).await;
    let writes = queue_one_by_one(&db, 20).await;
    let before = db.stats();
    release.send(()).unwrap();
    holder.await.unwrap();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    let stats = db.stats();
    assert_eq!(
        stats.commits - before.commits,
        2,
        "the held write, then one group of twenty\n{stats}"
    );
    assert_eq!(stats.group_sizes.max, 20, "{stats}");
    assert_eq!(stats.max_queue_depth, 20, "{stats}");
    db.close().await.unwrap();
    assert_eq!(count(tmp.path()), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_group_commit_each_write_is_its_own_transaction() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .group_commit(false)
        .build()
        .await
        .unwrap();
    create_tables(&db).await;
    let (release, holder) = hold_writer(&db).await;
    let writes = queue_one_by_one(&db, 5).await;
    let before = db.stats();
    release.send(()).unwrap();
    holder.await.unwrap();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    let stats = db.stats();
    assert_eq!(
        stats.commits - before.commits,
        1 + 5,
        "the held write, then each queued write alone\n{stats}"
    );
    assert_eq!(stats.group_sizes.max, 1, "{stats}");
    db.close().await.unwrap();
    assert_eq!(count(tmp.path()), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_caps_every_group() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path()).max_batch(3).build().await.unwrap();
    create_tables(&db).await;
    let (release, holder) = hold_writer(&db).await;
    let writes = queue_one_by_one(&db, 10).await;
    let before = db.stats();
    release.send(()).unwrap();
    holder.await.unwrap();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    let stats = db.stats();
    assert_eq!(
        stats.commits - before.commits,
        1 + 4,
        "the held write, then groups of 3, 3, 3 and 1\n{stats}"
    );
    assert_eq!(stats.group_sizes.max, 3, "{stats}");
    db.close().await.unwrap();
    assert_eq!(count(tmp.path()), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_in_the_order_they_were_queued() {
    let tmp = TempDb::new();
    // Small groups, so the order holds inside a group and from one group to the next.
    let db = Db::builder(tmp.path()).max_batch(7).build().await.unwrap();
    create_tables(&db).await;
    let (release, holder) = hold_writer(&db).await;
    let writes = queue_one_by_one(&db, 20).await;
    release.send(()).unwrap();
    holder.await.unwrap();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    db.close().await.unwrap();
    let want: Vec<String> = (0..20).map(|i| format!("w{i:02}")).collect();
    assert_eq!(keys(tmp.path()), want, "rows in the file in queue order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_finishes_the_writes_already_queued() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    let (release, holder) = hold_writer(&db).await;
    let writes = queue_one_by_one(&db, 10).await;
    let mut close = Box::pin(db.close());
    // The close request is now queued behind the ten writes.
    poll_once(close.as_mut()).await;
    release.send(()).unwrap();
    holder.await.unwrap();
    close.await.unwrap();
    for w in writes {
        w.await
            .unwrap()
            .expect("a write queued before close is committed and answered");
    }
    assert_eq!(count(tmp.path()), 10);
    assert!(matches!(
        db.write(|_| Ok(())).await,
        Err(Error::Closed { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_racing_close_are_answered_as_the_file_says() {
    let (mut acked, mut refused) = (0, 0);
    for _round in 0..20 {
        let tmp = TempDb::new();
        let db = with_table(&tmp).await;
        let writes: Vec<_> = (0..16).map(|i| (i, insert(&db, format!("r{i}")))).collect();
        let closer = {
            let db = db.clone();
            tokio::spawn(async move { db.close().await })
        };
        let mut answers = Vec::new();
        for (i, w) in writes {
            answers.push((i, w.await.unwrap()));
        }
        closer.await.unwrap().unwrap();
        drop(db);
        let in_file = keys(tmp.path());
        for (i, answer) in answers {
            let present = in_file.contains(&format!("r{i}"));
            match answer {
                Ok(()) => {
                    assert!(present, "write {i} was answered Ok but is not in the file");
                    acked += 1;
                }
                Err(Error::Closed { path }) => {
                    assert!(!present, "write {i} was answered Closed but is in the file");
                    assert_eq!(path, tmp.path());
                    refused += 1;
                }
                Err(e) => panic!("write {i}: unexpected error {e:?}"),
            }
        }
    }
    eprintln!("{acked} writes committed, {refused} refused as closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_when_the_last_handle_drops_still_commit() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    let ran = Arc::new(AtomicU32::new(0));
    let (release, holder) = hold_writer(&db).await;
    // A caller waiting for its answer holds a handle (its future borrows one), so the
    // last handle can only go while the writes still queued have lost their callers.
    for i in 0..10 {
        let ran = Arc::clone(&ran);
        let mut write = Box::pin(db.write(move |c| {
            ran.fetch_add(1, Ordering::SeqCst);
            c.execute("INSERT INTO t (k, v) VALUES (?1, 0)", [format!("p{i}")])?;
            Ok(())
        }));
        poll_once(write.as_mut()).await;
    }
    wait_for_queue(&db, 10).await;
    drop(db);
    // The holding task owns the last handle; it drops it once its write is answered.
    release.send(()).unwrap();
    holder.await.unwrap();
    let wal = std::path::PathBuf::from(format!("{}-wal", tmp.path().display()));
    // The writer thread finishes the queue on its own; the WAL file goes away once its
    // last connection closed.
    wait_until("the ten queued writes are in the file", || {
        count(tmp.path()) == 10
    })
    .await;
    wait_until("the handle's connections closed", || !wal.exists()).await;
    assert_eq!(ran.load(Ordering::SeqCst), 10, "each closure ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_finds_no_free_reader_in_time_gets_a_pool_error() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .max_readers(1)
        .pool_wait_timeout(Some(Duration::from_millis(50)))
        .build()
        .await
        .unwrap();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let db = db.clone();
        tokio::spawn(async move {
            db.read(move |_| {
                let _ = started_tx.send(());
                let _ = release_rx.recv_timeout(T);
                Ok(())
            })
            .await
        })
    };
    recv(started, "the first read holds the only reader").await;
    let err = tokio::time::timeout(T, db.read(|_| Ok(())))
        .await
        .expect("the wait for a reader ends at the pool's wait timeout")
        .unwrap_err();
    assert!(
        matches!(&err, Error::Pool { path, .. } if path == tmp.path()),
        "{err:?}"
    );
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    db.read(|_| Ok(())).await.expect("the reader is free again");
    assert_eq!(
        db.stats().reads,
        2,
        "a read that got no connection did not run"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_wait_counts_the_time_spent_behind_a_held_writer() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    let (release, holder) = hold_writer(&db).await;
    let write = insert(&db, "late".into());
    wait_for_queue(&db, 1).await;
    let queued = Instant::now();
    // Not a window: whatever the scheduling, the write has waited at least `waited`.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waited = u64::try_from(queued.elapsed().as_nanos()).unwrap();
    release.send(()).unwrap();
    holder.await.unwrap();
    write.await.unwrap().unwrap();
    let stats = db.stats();
    // Three writes so far (the tables, the held one, this one): p99 is the largest.
    assert_eq!(stats.lock_wait_ns.count, 3, "{stats}");
    assert!(
        stats.lock_wait_ns.max >= waited,
        "{stats}\nwaited {waited} ns"
    );
    assert!(
        stats.lock_wait_ns.p99 >= waited,
        "{stats}\nwaited {waited} ns"
    );
    assert!(
        stats.write_latency_ns.max >= waited,
        "{stats}\nwaited {waited} ns"
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn stats_count_rows_and_reads_and_print_them() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    db.write(|c| Ok(c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")?))
        .await
        .unwrap();
    db.write(|c| Ok(c.execute_batch("INSERT INTO t (v) VALUES (1), (2), (3)")?))
        .await
        .unwrap();
    db.write(|c| Ok(c.execute("UPDATE t SET v = v + 10 WHERE v < 3", [])?))
        .await
        .unwrap();
    // Rolled back on its own: its row is not counted.
    db.write(|c| -> luca_core::Result<()> {
        c.execute("INSERT INTO t (v) VALUES (4)", [])?;
        Ok(c.execute_batch("INSERT INTO t (id, v) VALUES (1, 0)")?)
    })
    .await
    .unwrap_err();
    for _ in 0..4 {
        db.read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))?))
            .await
            .unwrap();
    }
    let stats = db.stats();
    assert_eq!(stats.rows_changed, 3 + 2, "{stats}");
    assert_eq!(stats.reads, 4, "{stats}");
    assert_eq!(
        (stats.commits, stats.writes_ok, stats.writes_failed),
        (3, 3, 1)
    );
    let text = stats.to_string();
    for row in [
        "commits 3 |",
        "writes ok 3 failed 1",
        "rows 5 |",
        "reads 4 |",
        "busy 0 retries 0",
        &*format!("queue 0 (max {}, waited for room 0)", stats.max_queue_depth),
        "sqlite rollbacks 0 | refused 0 | reopens 0",
        "checkpoints 0 (+0 by the writer, 0 file syncs)",
    ] {
        assert!(text.contains(row), "`{row}` missing from\n{text}");
    }
    let table_row = |name: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("| {name} ")))
            .unwrap_or_else(|| panic!("no `{name}` row in\n{text}"));
        line.split('|')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    };
    assert_eq!(
        table_row("distribution"),
        ["distribution", "count", "p50", "p90", "p99", "p99.9", "max"]
    );
    assert_eq!(
        table_row("group size"),
        ["group size", "3", "1", "1", "1", "1", "1"]
    );
    assert_eq!(table_row("lock wait ms")[1], "4", "{text}");
    let write_ms = table_row("write ms");
    assert_eq!(write_ms[1], "4", "{text}");
    // Milliseconds with three decimals.
    let max_ms = format!("{:.3}", stats.write_latency_ns.max as f64 / 1e6);
    assert_eq!(write_ms[6], max_ms, "{text}");
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_closure_that_runs_commit_is_refused_and_commits_nothing() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    let err = db
        .write(|c| {
            c.execute("INSERT INTO t (k, v) VALUES ('x', 1)", [])?;
            c.execute_batch("COMMIT")?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Refused { statement, .. } if statement == "COMMIT"),
        "{err:?}"
    );
    assert_eq!(
        count(tmp.path()),
        0,
        "nothing of the refused closure committed"
    );
    // The write path goes on.
    db.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES ('y', 1)", [])?))
        .await
        .unwrap();
    assert_eq!(count(tmp.path()), 1);
    db.close().await.unwrap();
}

#[tokio::test]
async fn closed_handles_refuse_work() {
    let tmp = TempDb::new();
    let db = with_table(&tmp).await;
    let other = db.clone();
    db.close().await.unwrap();
    assert!(matches!(
        other.write(|_| Ok(())).await,
        Err(Error::Closed { .. })
    ));
    assert!(matches!(
        other.read(|_| Ok(())).await,
        Err(Error::Closed { .. })
    ));
    assert!(matches!(other.close().await, Err(Error::Closed { .. })));
}

#[test]
fn blocking_api_from_plain_threads() {
    let tmp = TempDb::new();
    let db = Db::open_blocking(tmp.path()).unwrap();
    db.write_blocking(|c| {
        Ok(c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v INTEGER)")?)
    })
    .unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let db = db.clone();
            s.spawn(move || {
                for i in 0..25 {
                    db.write_blocking(move |c| {
                        Ok(c.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (format!("{t}"), i))?)
                    })
                    .unwrap();
                }
            });
        }
    });
    let n: i64 = db
        .read_blocking(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(n, 200);
    db.close_blocking().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_processes_lock_is_waited_out_with_the_retry_policy() {
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .busy_timeout(Duration::ZERO)
        .retry_policy(patient())
        .build()
        .await
        .unwrap();
    db.write(
        |c| Ok(c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v INTEGER)")?),
    )
    .await
    .unwrap();
    // Another connection (standing in for another process) holds the write lock.
    let lock = luca_testkit::WriteLock::hold(tmp.path()).unwrap();
    let write = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES ('x', 1)", [])?))
                .await
        })
    };
    // Released once the writer has met it, not after a guessed time.
    wait_until("the writer met the lock", || db.stats().busy_total() > 0).await;
    lock.release().unwrap();
    write.await.unwrap().unwrap();
    let stats = db.stats();
    assert!(stats.retries >= 1, "{stats}");
    assert!(
        stats.busy_by_code[luca_core::retry::BusyCode::Busy.index()] >= 1,
        "{stats}"
    );
    assert_eq!(stats.writes_failed, 0);
    db.close().await.unwrap();
    assert_eq!(count(tmp.path()), 1);
}

/// A file with the table `t`, created without a `Db` (whose first write would wait for
/// company under a long `max_wait`).
fn plain_table(path: &std::path::Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v INTEGER NOT NULL);",
    )
    .unwrap();
}

/// A handle whose groups hold exactly `n` writes: `max_wait` outlasts the test, so a
/// group closes when its `n`-th write arrives.
fn groups_of(path: &std::path::Path, n: usize) -> luca_core::DbBuilder {
    Db::builder(path)
        .busy_timeout(Duration::ZERO)
        .max_batch(n)
        .max_wait(T)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_out_of_busy_retries_answers_every_caller_busy() {
    let tmp = TempDb::new();
    plain_table(tmp.path());
    let db = groups_of(tmp.path(), 4)
        .retry_policy(
            luca_core::retry::RetryPolicy::new()
                .with_max_retries(2)
                .with_delay(Duration::from_millis(1)),
        )
        .build()
        .await
        .unwrap();
    // Another connection (standing in for another process) holds the write lock
    // throughout.
    let lock = luca_testkit::WriteLock::hold(tmp.path()).unwrap();
    let writes: Vec<_> = (0..4).map(|i| insert(&db, format!("b{i}"))).collect();
    for w in writes {
        let err = w.await.unwrap().unwrap_err();
        assert_eq!(
            err.extended_code(),
            Some(rusqlite::ffi::SQLITE_BUSY),
            "every caller of the group gets the busy code: {err:?}"
        );
    }
    let stats = db.stats();
    let busy = stats.busy_by_code[luca_core::retry::BusyCode::Busy.index()];
    assert_eq!(
        (busy, stats.retries),
        (3, 2),
        "one group: the first attempt and two retries\n{stats}"
    );
    assert_eq!((stats.writes_failed, stats.commits), (4, 0), "{stats}");
    lock.release().unwrap();
    db.close().await.unwrap();
    assert_eq!(count(tmp.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_meets_another_processes_lock_commits_once_it_is_released() {
    let tmp = TempDb::new();
    plain_table(tmp.path());
    let db = groups_of(tmp.path(), 4)
        .retry_policy(patient())
        .build()
        .await
        .unwrap();
    let lock = luca_testkit::WriteLock::hold(tmp.path()).unwrap();
    let writes: Vec<_> = (0..4).map(|i| insert(&db, format!("b{i}"))).collect();
    wait_until("the group met the lock", || db.stats().busy_total() > 0).await;
    lock.release().unwrap();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    let stats = db.stats();
    assert_eq!(
        (
            stats.commits,
            stats.group_sizes.count,
            stats.group_sizes.max
        ),
        (1, 1, 4),
        "the four writes committed together once the lock was released\n{stats}"
    );
    assert!(stats.retries >= 1, "{stats}");
    assert_eq!(stats.writes_failed, 0, "{stats}");
    db.close().await.unwrap();
    assert_eq!(count(tmp.path()), 4);
}

// --- bad input ---------------------------------------------------------------------------

fn assert_names(err: &Error, path: &std::path::Path) {
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "`{err}` does not name {}",
        path.display()
    );
}

#[tokio::test]
async fn opening_a_directory_is_a_typed_error() {
    let tmp = TempDb::new();
    let dir = tmp.path().parent().unwrap();
    let err = Db::open(dir).await.unwrap_err();
    assert!(matches!(err, Error::InvalidPath { .. }), "{err:?}");
    assert_names(&err, dir);
}

#[tokio::test]
async fn opening_in_a_missing_directory_is_a_typed_error() {
    let tmp = TempDb::new();
    let path = tmp.path().parent().unwrap().join("missing").join("x.db");
    let err = Db::open(&path).await.unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert_eq!(err.extended_code(), Some(rusqlite::ffi::SQLITE_CANTOPEN));
    assert_names(&err, &path);
}

#[tokio::test]
async fn opening_a_non_sqlite_file_is_a_typed_error() {
    let tmp = TempDb::new();
    std::fs::write(
        tmp.path(),
        b"this is a text file, not a database; ".repeat(200),
    )
    .unwrap();
    let err = Db::open(tmp.path()).await.unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert_eq!(err.extended_code(), Some(rusqlite::ffi::SQLITE_NOTADB));
    assert_names(&err, tmp.path());
}

#[tokio::test]
async fn opening_a_corrupt_file_is_a_typed_error() {
    let tmp = TempDb::new();
    {
        let c = Connection::open(tmp.path()).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=DELETE; CREATE TABLE a (x); CREATE TABLE b (y); INSERT INTO a VALUES (1);",
        )
        .unwrap();
    }
    // Keep the 100-byte header, smash the schema page behind it.
    let mut bytes = std::fs::read(tmp.path()).unwrap();
    for b in &mut bytes[100..4096] {
        *b = 0xA5;
    }
    std::fs::write(tmp.path(), &bytes).unwrap();
    let err = Db::open(tmp.path()).await.unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert_eq!(
        err.extended_code().map(|c| c & 0xff),
        Some(rusqlite::ffi::SQLITE_CORRUPT)
    );
    assert_names(&err, tmp.path());
}

#[tokio::test]
async fn opening_a_file_sqlite_can_only_read_is_a_typed_error() {
    let tmp = TempDb::new();
    {
        let c = Connection::open(tmp.path()).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE a (x);")
            .unwrap();
    }
    // SQLite opens a file read-only when asked to (`mode=ro`) or when the process may
    // not write it (file modes, which do not stop root). The URI form holds for every
    // user, root included; it needs SQLite's URI filenames, which rusqlite enables by
    // default (SQLITE_OPEN_URI).
    let uri = std::path::PathBuf::from(format!("file:{}?mode=ro", tmp.path().display()));
    let err = Db::open(&uri).await.unwrap_err();
    assert!(
        matches!(&err, Error::ReadOnly { path } if *path == uri),
        "opening `{}` needs SQLite URI filenames (SQLITE_OPEN_URI) and must fail with \
         Error::ReadOnly naming that path: {err:?}",
        uri.display()
    );
    assert_names(&err, &uri);
    // The file was not changed: it still holds its one table and no `Db` ever wrote it.
    let c = Connection::open(tmp.path()).unwrap();
    let tables: i64 = c
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1);
}

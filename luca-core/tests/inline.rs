//! Inline writes: a write that finds the write path idle, with no other write under way,
//! runs on its caller's thread. Where it runs is observed through the thread's name
//! inside the closure (the writer thread is `luca-db-writer`). Real files, tasks, threads
//! and a second connection that holds the write lock like another process would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use luca_core::rusqlite::Connection;
use luca_core::{Db, DbBuilder};
use luca_testkit::TempDb;

const WRITER: &str = "luca-db-writer";

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_owned()
}

async fn setup(b: DbBuilder) -> Db {
    let db = b.build().await.unwrap();
    db.write(|c| {
        Ok(c.execute_batch(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, who TEXT NOT NULL)",
        )?)
    })
    .await
    .unwrap();
    db
}

/// Writes one row and returns the name of the thread its closure ran on.
async fn where_it_ran(db: &Db, who: &'static str) -> String {
    db.write(move |c| {
        c.execute("INSERT INTO t (who) VALUES (?1)", [who])?;
        Ok(thread_name())
    })
    .await
    .unwrap()
}

fn rows(path: &std::path::Path) -> Vec<String> {
    let c = Connection::open(path).unwrap();
    let mut st = c.prepare("SELECT who FROM t ORDER BY id").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_write_runs_on_its_callers_thread_and_zero_limit_turns_that_off() {
    let tmp = TempDb::new();
    // (The default limit would send the write after a slow first one to the writer
    // thread on a slow machine; that rule has its own test.)
    let db = setup(Db::builder(tmp.path()).inline_limit(Duration::from_secs(10))).await;
    let ran = where_it_ran(&db, "inline").await;
    assert_ne!(
        ran, WRITER,
        "a lone write on an idle path should run inline"
    );
    let stats = db.stats();
    assert_eq!((stats.commits, stats.writes_ok), (2, 2));
    db.close().await.unwrap();

    let tmp2 = TempDb::named("off.db");
    let db = setup(Db::builder(tmp2.path()).inline_limit(Duration::ZERO)).await;
    assert_eq!(where_it_ran(&db, "thread").await, WRITER);
    db.close().await.unwrap();
    assert_eq!(rows(tmp.path()), ["inline"]);
    assert_eq!(rows(tmp2.path()), ["thread"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_writes_move_to_the_writer_thread_and_short_ones_come_back() {
    let tmp = TempDb::new();
    let db = setup(Db::builder(tmp.path()).inline_limit(Duration::from_millis(5))).await;
    // Each of these writes takes at least 40 ms, eight times the limit: after one of them
    // the moving average is past the limit and writes go to the writer thread.
    let mut first_on_thread = None;
    for i in 0..40 {
        let ran = db
            .write(|c| {
                std::thread::sleep(Duration::from_millis(40));
                c.execute("INSERT INTO t (who) VALUES ('slow')", [])?;
                Ok(thread_name())
            })
            .await
            .unwrap();
        if ran == WRITER {
            first_on_thread = Some(i);
            break;
        }
    }
    first_on_thread.expect("slow writes never left the caller's thread");
    // `write_blocking` runs inline whenever the path is idle, whatever the average (once
    // the writer thread is back waiting for work after that slow write).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let blocking_db = db.clone();
    let ran = tokio::task::spawn_blocking(move || {
        blocking_db.write_blocking(|c| {
            c.execute("INSERT INTO t (who) VALUES ('blocking')", [])?;
            Ok(thread_name())
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_ne!(ran, WRITER);
    // Short writes on the writer thread bring the average back under the limit.
    let mut back_inline = false;
    for _ in 0..200 {
        if where_it_ran(&db, "short").await != WRITER {
            back_inline = true;
            break;
        }
        // A moment for the writer thread to be back waiting for work: a write called
        // while it still finishes the last one is queued, whatever the average.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        back_inline,
        "short writes never came back to the caller's thread"
    );
    let stats = db.stats();
    db.close().await.unwrap();
    assert_eq!(rows(tmp.path()).len() as u64, stats.writes_ok - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_processes_lock_sends_the_write_to_the_writer_thread_without_blocking_the_caller() {
    let tmp = TempDb::new();
    let busy_timeout = Duration::from_secs(20);
    // A limit no write here comes near, so the write does try to run inline.
    let db = setup(
        Db::builder(tmp.path())
            .busy_timeout(busy_timeout)
            .inline_limit(Duration::from_secs(10)),
    )
    .await;
    // Another connection holds the write lock, as another process would.
    let other = Connection::open(tmp.path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut write = std::pin::pin!(db.write(|c| {
        c.execute("INSERT INTO t (who) VALUES ('waited')", [])?;
        Ok(thread_name())
    }));
    // The first poll must not wait out the busy timeout on this (async worker) thread.
    let started = Instant::now();
    let first = futures_poll_once(write.as_mut()).await;
    let took = started.elapsed();
    assert!(
        first.is_none(),
        "the write cannot have committed under the lock"
    );
    assert!(
        took < busy_timeout / 4,
        "the first poll blocked its thread for {took:?}"
    );
    other.execute_batch("COMMIT").unwrap();
    let ran = tokio::time::timeout(Duration::from_secs(30), write)
        .await
        .expect("the write never finished")
        .unwrap();
    assert_eq!(ran, WRITER);
    db.close().await.unwrap();
    assert_eq!(rows(tmp.path()), ["waited"]);
}

/// Polls `f` once: `Some` when it finished.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn a_task_writing_in_a_loop_lets_other_tasks_of_its_runtime_run() {
    let tmp = TempDb::new();
    // A limit no write here comes near: every write runs inline, none awaits the writer.
    let db = setup(Db::builder(tmp.path()).inline_limit(Duration::from_secs(10))).await;
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let other = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    let mut seen_at = None;
    for i in 0..2_000 {
        assert_ne!(where_it_ran(&db, "loop").await, WRITER);
        if ran.load(Ordering::SeqCst) {
            seen_at = Some(i);
            break;
        }
    }
    // Within a turn of 16 inline operations (not tokio's budget of 128).
    let seen_at = seen_at.expect("2000 inline writes in a loop never let the other task run");
    assert!(
        seen_at < 16,
        "the other task ran only after {} inline writes",
        seen_at + 1
    );
    other.await.unwrap();
    db.close().await.unwrap();
}

#[test]
fn write_blocking_in_a_loop_on_an_async_worker_completes() {
    // The wrong context on purpose: the blocking API inside a task, more times than a
    // turn of inline operations. It stalls its worker while it runs, but must finish.
    let tmp = TempDb::new();
    let path = tmp.path().to_path_buf();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(async move {
            let db = setup(Db::builder(&path).inline_limit(Duration::from_secs(10))).await;
            let mut inline = 0;
            for i in 0..40 {
                let ran = db.write_blocking(move |c| {
                    c.execute("INSERT INTO t (who) VALUES (?1)", [format!("b{i}")])?;
                    Ok(thread_name())
                })?;
                inline += usize::from(ran != WRITER);
            }
            db.close().await?;
            Ok::<_, luca_core::Error>(inline)
        });
        let _ = done_tx.send(outcome);
    });
    let inline = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("40 write_blocking calls on an async worker did not finish within 60 s")
        .unwrap();
    // More than a turn of them ran inline (a write that found the writer thread still
    // busy with the one before runs there instead).
    assert!(
        inline > 16,
        "only {inline} of 40 blocking writes ran inline"
    );
    assert_eq!(rows(tmp.path()).len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_behind_a_running_write_are_not_overtaken_by_inline_ones() {
    let tmp = TempDb::new();
    let db = setup(Db::builder(tmp.path())).await;
    // A write holds the path (it runs inline on a worker of its own task).
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let (wait, entered_tx) = (
        std::sync::Mutex::new(wait),
        std::sync::Mutex::new(Some(entered_tx)),
    );
    let holder = {
        let db = db.clone();
        tokio::spawn(async move {
            db.write(move |c| {
                if let Some(tx) = entered_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                let _ = wait.lock().unwrap().recv_timeout(Duration::from_secs(30));
                c.execute("INSERT INTO t (who) VALUES ('holder')", [])?;
                Ok(())
            })
            .await
        })
    };
    entered_rx.await.unwrap();
    // Five writes queue behind it, one after another.
    let mut queued = Vec::new();
    for (i, who) in ["q1", "q2", "q3", "q4", "q5"].into_iter().enumerate() {
        let db2 = db.clone();
        queued.push(tokio::spawn(async move { where_it_ran(&db2, who).await }));
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.stats().queue_depth < i + 1 {
            assert!(Instant::now() < deadline, "write {who} never queued");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    release.send(()).unwrap();
    // A write called right after the release: it may not overtake the queued ones.
    let late = where_it_ran(&db, "late").await;
    holder.await.unwrap().unwrap();
    for q in queued {
        assert_eq!(
            q.await.unwrap(),
            WRITER,
            "queued writes run on the writer thread"
        );
    }
    let _ = late;
    db.close().await.unwrap();
    assert_eq!(
        rows(tmp.path()),
        ["holder", "q1", "q2", "q3", "q4", "q5", "late"]
    );
}

/// A write on a thread of its own that holds the path until the sender is used (or
/// dropped); returns once its closure runs.
fn hold_the_path(
    db: &Db,
) -> (
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<luca_core::Result<()>>,
) {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let db = db.clone();
    let holder = std::thread::spawn(move || {
        db.write_blocking(move |c| {
            let _ = entered_tx.send(());
            let _ = wait.recv_timeout(Duration::from_secs(30));
            c.execute("INSERT INTO t (who) VALUES ('holder')", [])?;
            Ok(())
        })
    });
    entered_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    (release, holder)
}

/// Polls `f` once; it must be pending (a queued write).
async fn poll_once_pending<F: std::future::Future>(f: std::pin::Pin<&mut F>) {
    let mut f = Some(f);
    std::future::poll_fn(|cx| {
        let f = f.take().expect("polled once");
        assert!(f.poll(cx).is_pending(), "the write ran past a held path");
        std::task::Poll::Ready(())
    })
    .await;
}

/// Waits until `n` writes were answered, then until the writer thread has long stopped
/// waiting for its group to come back: the path is idle.
async fn until_answered(db: &Db, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.stats().writes_ok < n {
        assert!(
            Instant::now() < deadline,
            "the queued write was never answered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_goes_to_the_writer_thread_while_an_answered_one_is_not_yet_taken() {
    let tmp = TempDb::new();
    let db = setup(Db::builder(tmp.path()).inline_limit(Duration::from_secs(10))).await;
    let (release, holder) = hold_the_path(&db);
    // Write `a` is queued behind it (polled once), then answered, but its task does not
    // take the answer yet: as a task does whose worker is busy with other tasks.
    let mut a = std::pin::pin!(where_it_ran(&db, "a"));
    poll_once_pending(a.as_mut()).await;
    assert_eq!(db.stats().queue_depth, 1);
    release.send(()).unwrap();
    holder.join().unwrap().unwrap();
    until_answered(&db, 3).await;
    let inline_before = db.stats().inline_writes;
    assert_eq!(
        where_it_ran(&db, "b").await,
        WRITER,
        "with `a`'s answer not yet taken, `b` must not run alone on its caller's thread"
    );
    assert_eq!(db.stats().inline_writes, inline_before);
    assert_eq!(a.await, WRITER);
    // `a` taken, and the writer thread done with `b`: the next lone write runs inline
    // again.
    until_answered(&db, 4).await;
    assert_ne!(where_it_ran(&db, "c").await, WRITER);
    assert_eq!(db.stats().inline_writes, inline_before + 1);
    db.close().await.unwrap();
    assert_eq!(rows(tmp.path()), ["holder", "a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_does_not_keep_later_ones_off_their_callers_thread() {
    let tmp = TempDb::new();
    let db = setup(Db::builder(tmp.path()).inline_limit(Duration::from_secs(10))).await;
    // Never polled: never under way.
    drop(where_it_ran(&db, "never"));
    let (release, holder) = hold_the_path(&db);
    // Queued, then dropped: it still commits (a queued write is not cancelled), and it
    // stops counting as under way when dropped.
    let mut queued = Box::pin(where_it_ran(&db, "dropped"));
    poll_once_pending(queued.as_mut()).await;
    drop(queued);
    release.send(()).unwrap();
    holder.join().unwrap().unwrap();
    until_answered(&db, 3).await;
    assert_ne!(
        where_it_ran(&db, "lone").await,
        WRITER,
        "a lone write after a dropped one should run inline"
    );
    db.close().await.unwrap();
    assert_eq!(rows(tmp.path()), ["holder", "dropped", "lone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_mix_inline_and_queued_writes_and_every_answer_matches_the_file() {
    let tmp = TempDb::new();
    let db = setup(Db::builder(tmp.path())).await;
    let inline = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..16u32 {
        let (db, inline) = (db.clone(), Arc::clone(&inline));
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200u32 {
                // Every tenth write fails on purpose: it must leave nothing behind.
                let fail = i % 10 == 9;
                let r = db
                    .write(move |c| {
                        c.execute("INSERT INTO t (who) VALUES (?1)", [format!("{w}-{i}")])?;
                        if fail {
                            return Err(luca_core::Error::TransactionEnded);
                        }
                        Ok(thread_name())
                    })
                    .await;
                match r {
                    Ok(name) => {
                        if name != WRITER {
                            inline.fetch_add(1, Ordering::Relaxed);
                        }
                        acked.push(format!("{w}-{i}"));
                    }
                    Err(luca_core::Error::TransactionEnded) => assert!(fail),
                    Err(e) => panic!("write {w}-{i}: {e}"),
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    db.close().await.unwrap();
    let mut in_file = rows(tmp.path());
    in_file.sort();
    acked.sort();
    assert_eq!(acked.len(), 16 * 180);
    assert_eq!(
        in_file, acked,
        "the file holds exactly the acknowledged writes"
    );
    // Not asserted: how many ran inline (it depends on the schedule); reported.
    println!(
        "{} of {} acknowledged writes ran inline",
        inline.load(Ordering::Relaxed),
        acked.len()
    );
}

// ---------------------------------------------------------------------------------------
// Reads

/// Reads the row count and the id of the thread the closure ran on.
async fn read_where(db: &Db) -> (i64, std::thread::ThreadId) {
    db.read(|c| {
        let n = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
        Ok((n, std::thread::current().id()))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_read_runs_on_its_callers_thread_and_zero_limit_sends_it_to_the_blocking_pool() {
    let here = std::thread::current().id();
    let tmp = TempDb::new();
    let db = setup(Db::builder(tmp.path()).inline_limit(Duration::from_secs(10))).await;
    where_it_ran(&db, "row").await;
    assert_eq!(read_where(&db).await, (1, here));
    db.close().await.unwrap();

    let tmp = TempDb::named("off.db");
    let db = setup(Db::builder(tmp.path()).inline_limit(Duration::ZERO)).await;
    let (n, ran_on) = read_where(&db).await;
    assert_eq!(n, 0);
    assert_ne!(
        ran_on, here,
        "with inline off, reads run on the blocking pool"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reads_move_to_the_blocking_pool_and_short_ones_come_back() {
    let here = std::thread::current().id();
    let tmp = TempDb::new();
    let db = setup(Db::builder(tmp.path()).inline_limit(Duration::from_millis(5))).await;
    let mut moved = false;
    for _ in 0..40 {
        let ran_on = db
            .read(|_| {
                std::thread::sleep(Duration::from_millis(40));
                Ok(std::thread::current().id())
            })
            .await
            .unwrap();
        if ran_on != here {
            moved = true;
            break;
        }
    }
    assert!(moved, "slow reads never left the caller's thread");
    let mut back = false;
    for _ in 0..200 {
        if read_where(&db).await.1 == here {
            back = true;
            break;
        }
    }
    assert!(back, "short reads never came back to the caller's thread");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_inline_read_is_an_error_and_its_connection_is_not_reused() {
    let here = std::thread::current().id();
    let tmp = TempDb::new();
    let db = setup(
        Db::builder(tmp.path())
            .inline_limit(Duration::from_secs(10))
            .max_readers(1),
    )
    .await;
    // The only reader connection leaves a transaction open, then panics.
    let err = db
        .read(|c| -> luca_core::Result<()> {
            c.execute_batch("BEGIN; SELECT count(*) FROM t;")?;
            panic!("boom in a read");
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, luca_core::Error::Panicked { message } if message.contains("boom in a read")),
        "{err:?}"
    );
    // The next read gets a fresh connection, outside any transaction, and sees new writes.
    where_it_ran(&db, "after").await;
    let (n, autocommit, ran_on) = db
        .read(|c| {
            let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
            Ok((n, c.is_autocommit(), std::thread::current().id()))
        })
        .await
        .unwrap();
    assert_eq!((n, autocommit, ran_on), (1, true, here));
    assert_eq!(db.stats().panics, 1);
    db.close().await.unwrap();
}

#[test]
fn read_blocking_from_many_threads_in_loops_completes() {
    // Threaded code on a handle opened outside any runtime: more readers than the
    // handle's runtime has workers, each past a turn of inline reads; the turns' yields
    // must not leave a blocking caller waiting.
    let tmp = TempDb::new();
    let db = Db::builder(tmp.path())
        .inline_limit(Duration::from_secs(10))
        .build_blocking()
        .unwrap();
    db.write_blocking(|c| {
        Ok(c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")?)
    })
    .unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for _ in 0..6 {
        let (db, done_tx) = (db.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut total = 0;
            for _ in 0..100 {
                total += db
                    .read_blocking(|c| {
                        Ok(c.query_row("SELECT count(*) + 1 FROM t", [], |r| r.get::<_, i64>(0))?)
                    })
                    .unwrap();
            }
            let _ = done_tx.send(total);
        });
    }
    for _ in 0..6 {
        let total = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("100 read_blocking calls on each of 6 threads did not finish within 60 s");
        assert_eq!(total, 100);
    }
    assert_eq!(db.stats().reads, 600);
}

#[tokio::test(flavor = "current_thread")]
async fn more_readers_than_workers_take_turns_read_by_read() {
    let tmp = TempDb::new();
    let db = setup(Db::builder(tmp.path()).inline_limit(Duration::from_secs(10))).await;
    // Two reader connections open (their first checkouts wait for them).
    let _ = tokio::join!(read_where(&db), read_where(&db));
    // Two tasks reading in a loop on the one worker of this runtime.
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let readers: Vec<_> = (0..2u8)
        .map(|id| {
            let (db, log) = (db.clone(), Arc::clone(&log));
            tokio::spawn(async move {
                for _ in 0..200 {
                    read_where(&db).await;
                    log.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 400);
    // Once both are under way (the start and the end aside), they alternate read by
    // read, not in turns of 16 inline reads.
    let middle = &log[20..380];
    let longest = middle
        .chunk_by(|a, b| a == b)
        .map(<[u8]>::len)
        .max()
        .unwrap();
    assert!(
        longest <= 2,
        "a reader ran {longest} reads in a row while the other waited for the worker"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_task_reading_in_a_loop_lets_other_tasks_of_its_runtime_run() {
    let tmp = TempDb::new();
    let db = setup(Db::builder(tmp.path()).inline_limit(Duration::from_secs(10))).await;
    let here = std::thread::current().id();
    // The pool's connection open (its first checkout waits for it).
    assert_eq!(read_where(&db).await.1, here);
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let other = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    let mut seen_at = None;
    for i in 0..2_000 {
        assert_eq!(read_where(&db).await.1, here);
        if ran.load(Ordering::SeqCst) {
            seen_at = Some(i);
            break;
        }
    }
    // Within a turn of 16 inline operations (not tokio's budget of 128).
    let seen_at = seen_at.expect("2000 inline reads in a loop never let the other task run");
    assert!(
        seen_at < 16,
        "the other task ran only after {} inline reads",
        seen_at + 1
    );
    other.await.unwrap();
    db.close().await.unwrap();
}

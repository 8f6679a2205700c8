//! `RetryQueue`: due order, deduplication, the bound, concurrency, persistence in a `Db`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use luca_core::Db;
use luca_core::rusqlite::{Connection, OpenFlags};
use luca_http::retry_queue::{DEFAULT_TABLE, RetryQueue, RetryQueueError, Scheduled};
use luca_testkit::{TempDb, WriteLock};
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
/// The suite's bound for any one test.
const TEST_BOUND: Duration = Duration::from_secs(25);

fn urls(entries: &[(String, Instant)]) -> Vec<&str> {
    entries.iter().map(|(u, _)| u.as_str()).collect()
}

/// The rows of a queue table, read with a connection of our own, in due order.
fn file_rows(path: &Path, table: &str) -> Vec<(String, i64)> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT url, due_unix_ms FROM \"{table}\" ORDER BY due_unix_ms, seq"
        ))
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn file_urls(path: &Path, table: &str) -> Vec<String> {
    file_rows(path, table).into_iter().map(|(u, _)| u).collect()
}

#[test]
fn queue_is_clone_send_sync() {
    fn assert_bounds<T: Clone + Send + Sync + 'static>() {}
    assert_bounds::<RetryQueue>();
    let q = RetryQueue::new(4);
    let clone = q.clone();
    block_on(clone.schedule("u", Instant::now())).unwrap();
    assert_eq!(q.len(), 1, "clones share one queue");
}

/// Runs a future that completes at its first poll (an in-memory queue call).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

#[tokio::test(start_paused = true)]
async fn due_hands_out_urls_in_due_order_on_paused_time() {
    let q = RetryQueue::new(100);
    let t0 = Instant::now();
    // Scheduled out of order; `c` and `c2` share a due time.
    q.schedule("d", t0 + 40 * SECOND).await.unwrap();
    q.schedule("b", t0 + 20 * SECOND).await.unwrap();
    q.schedule("c", t0 + 30 * SECOND).await.unwrap();
    q.schedule("a", t0 + 10 * SECOND).await.unwrap();
    q.schedule("c2", t0 + 30 * SECOND).await.unwrap();
    assert_eq!(q.len(), 5);
    assert_eq!(q.next_due(), Some(t0 + 10 * SECOND));
    assert_eq!(urls(&q.entries()), ["a", "b", "c", "c2", "d"]);

    assert!(q.due(Instant::now()).await.unwrap().is_empty());
    tokio::time::advance(25 * SECOND).await;
    assert_eq!(q.due(Instant::now()).await.unwrap(), ["a", "b"]);
    assert_eq!(q.next_due(), Some(t0 + 30 * SECOND));
    tokio::time::advance(10 * SECOND).await;
    // A limit takes the earliest ones and leaves the rest.
    assert_eq!(q.due_up_to(Instant::now(), 1).await.unwrap(), ["c"]);
    assert_eq!(q.due(Instant::now()).await.unwrap(), ["c2"]);
    tokio::time::advance(5 * SECOND).await;
    assert_eq!(q.due(Instant::now()).await.unwrap(), ["d"]);
    assert!(q.is_empty());
    assert_eq!(q.next_due(), None);
}

#[tokio::test(start_paused = true)]
async fn wait_due_sleeps_until_the_earliest_entry_and_wakes_for_an_earlier_one() {
    let q = RetryQueue::new(10);
    let t0 = Instant::now();
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            q.wait_due().await;
            (Instant::now(), q.due(Instant::now()).await.unwrap())
        })
    };
    // Let the waiter start on an empty queue.
    tokio::task::yield_now().await;
    q.schedule("late", t0 + 100 * SECOND).await.unwrap();
    tokio::task::yield_now().await;
    q.schedule("early", t0 + 10 * SECOND).await.unwrap();
    let (woke, got) = tokio::time::timeout(TEST_BOUND * 10, waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        woke,
        t0 + 10 * SECOND,
        "woke at the earlier entry's due time"
    );
    assert_eq!(got, ["early"]);
    assert_eq!(urls(&q.entries()), ["late"]);
}

#[tokio::test(start_paused = true)]
async fn scheduling_a_queued_url_keeps_one_entry_with_the_earlier_due_time() {
    let q = RetryQueue::new(10);
    let t0 = Instant::now();
    assert_eq!(
        q.schedule("u", t0 + 60 * SECOND).await.unwrap(),
        Scheduled::Added
    );
    assert_eq!(
        q.schedule(String::from("u"), t0 + 30 * SECOND)
            .await
            .unwrap(),
        Scheduled::Advanced {
            previous: t0 + 60 * SECOND
        }
    );
    assert_eq!(
        q.schedule("u", t0 + 90 * SECOND).await.unwrap(),
        Scheduled::Unchanged {
            due: t0 + 30 * SECOND
        }
    );
    assert_eq!(q.len(), 1);
    assert_eq!(q.due_time("u"), Some(t0 + 30 * SECOND));
    tokio::time::advance(30 * SECOND).await;
    assert_eq!(q.due(Instant::now()).await.unwrap(), ["u"]);
    tokio::time::advance(HOUR).await;
    assert!(
        q.due(Instant::now()).await.unwrap().is_empty(),
        "one entry only"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_new_urls_and_keeps_what_it_holds() {
    let q = RetryQueue::new(3);
    let t0 = Instant::now();
    for (i, u) in ["a", "b", "c"].iter().enumerate() {
        q.schedule(*u, t0 + (i as u32 + 1) * SECOND).await.unwrap();
    }
    match q.schedule("d", t0).await {
        Err(RetryQueueError::Full { url, max_len }) => {
            assert_eq!(url, "d");
            assert_eq!(max_len, 3);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    // A queued URL can still be moved when full.
    assert!(matches!(
        q.schedule("c", t0).await.unwrap(),
        Scheduled::Advanced { .. }
    ));
    assert_eq!(urls(&q.entries()), ["c", "a", "b"]);
    assert_eq!(q.len(), 3);
    assert_eq!(q.due(t0).await.unwrap(), ["c"]);
    assert_eq!(q.schedule("d", t0).await.unwrap(), Scheduled::Added);
    assert_eq!(q.len(), 3);

    let zero = RetryQueue::new(0);
    assert!(matches!(
        zero.schedule("x", t0).await,
        Err(RetryQueueError::Full { max_len: 0, .. })
    ));
}

/// Many producers and consumers at once: every URL is delivered exactly once.
async fn deliver_each_once(q: RetryQueue, producers: usize, per_producer: usize) {
    let total = producers * per_producer;
    let delivered = Arc::new(AtomicUsize::new(0));
    let run = async {
        let mut tasks = Vec::new();
        for p in 0..producers {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_producer {
                    let url = format!("https://h{p}.test/{i}");
                    // Due now or already past: the consumers may take it at once.
                    q.schedule(url, Instant::now()).await.unwrap();
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                Vec::new()
            }));
        }
        for _ in 0..4 {
            let q = q.clone();
            let delivered = Arc::clone(&delivered);
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                // Bounded: at most this many rounds (each takes at least one URL unless
                // the queue is momentarily empty, when it waits for one).
                for _ in 0..(total * 4) {
                    if delivered.load(Ordering::SeqCst) >= total {
                        break;
                    }
                    let wait = tokio::time::timeout(Duration::from_millis(200), q.wait_due());
                    let _ = wait.await;
                    let batch = q.due_up_to(Instant::now(), 32).await.unwrap();
                    delivered.fetch_add(batch.len(), Ordering::SeqCst);
                    got.extend(batch);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    };
    let all = tokio::time::timeout(TEST_BOUND, run)
        .await
        .expect("consumers did not receive every URL in time");
    assert_eq!(all.len(), total, "delivered count");
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), total, "a URL was delivered twice");
    assert!(q.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_schedule_and_drain_delivers_every_url_exactly_once() {
    deliver_each_once(RetryQueue::new(100_000), 8, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_concurrent_schedule_and_drain_delivers_every_url_exactly_once() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 100_000).await.unwrap();
    deliver_each_once(q, 4, 100).await;
    assert!(file_rows(tmp.path(), DEFAULT_TABLE).is_empty());
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_file_matches_memory_after_concurrent_reschedules_and_drains() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 100_000).await.unwrap();
    let base = Instant::now();
    let run = async {
        let mut tasks = Vec::new();
        // Four producers schedule the same 40 URLs, some already due, some not, so
        // schedules, moves and drains of one URL race each other.
        for p in 0..4u64 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..3u64 {
                    for i in 0..40u64 {
                        let due = if (i + p + round) % 3 == 0 {
                            base
                        } else {
                            base + HOUR + Duration::from_millis((i * 7 + p * 13 + round) % 50)
                        };
                        q.schedule(format!("u{i}"), due).await.unwrap();
                    }
                }
            }));
        }
        for _ in 0..2 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..60 {
                    q.due_up_to(Instant::now(), 3).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(TEST_BOUND, run).await.unwrap();
    let memory: HashSet<String> = q.entries().into_iter().map(|(u, _)| u).collect();
    let file: HashSet<String> = file_urls(tmp.path(), DEFAULT_TABLE).into_iter().collect();
    assert_eq!(memory, file, "the file holds exactly what the queue holds");
    // And the due order after a reopen is the one in memory.
    let before = urls(&q.entries())
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    db.close().await.unwrap();
    let db = Db::open(tmp.path()).await.unwrap();
    let reopened = RetryQueue::persistent(&db, 100_000).await.unwrap();
    let after = reopened
        .entries()
        .into_iter()
        .map(|(u, _)| u)
        .collect::<Vec<_>>();
    assert_eq!(after, before);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_queue_survives_a_reopen_of_the_db_with_its_due_order() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 10).await.unwrap();
    assert_eq!(q.table(), Some(DEFAULT_TABLE));
    let t0 = Instant::now();
    q.schedule("https://x.test/c", t0 + 3 * HOUR).await.unwrap();
    q.schedule("https://x.test/a", t0 + HOUR).await.unwrap();
    q.schedule("https://x.test/b", t0 + 2 * HOUR).await.unwrap();
    q.schedule("https://x.test/old", t0).await.unwrap();
    // Moved earlier: the file must hold the new time.
    q.schedule("https://x.test/c", t0 + 150 * 60 * SECOND)
        .await
        .unwrap();
    // Taken: the file must no longer hold it.
    assert_eq!(q.due(t0).await.unwrap(), ["https://x.test/old"]);
    db.close().await.unwrap();
    drop(q);

    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 10).await.unwrap();
    let now = Instant::now();
    let entries = q.entries();
    assert_eq!(
        urls(&entries),
        ["https://x.test/a", "https://x.test/b", "https://x.test/c"]
    );
    // Due times map back through the wall clock: an hour ahead is still about an hour
    // ahead (less the real time the test took), never later.
    for ((_, due), minutes) in entries.iter().zip([60, 120, 150]) {
        let expected = Duration::from_secs(minutes * 60);
        let left = due.saturating_duration_since(now);
        assert!(left <= expected, "{left:?} > {expected:?}");
        assert!(
            left + 60 * SECOND > expected,
            "{left:?} far below {expected:?}"
        );
    }
    // Draining after the reopen is written through too.
    assert_eq!(
        q.due(now + 90 * 60 * SECOND).await.unwrap(),
        ["https://x.test/a"]
    );
    db.close().await.unwrap();
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 10).await.unwrap();
    assert_eq!(urls(&q.entries()), ["https://x.test/b", "https://x.test/c"]);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_schedule_is_in_the_file_without_a_close() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 1000).await.unwrap();
    let t0 = Instant::now();
    let mut acked = Vec::new();
    for i in 0..200u32 {
        let url = format!("https://crash.test/{i}");
        // Descending due times: the file order is the reverse of the scheduling order.
        q.schedule(url.clone(), t0 + HOUR - i * SECOND)
            .await
            .unwrap();
        acked.push(url);
        // Right after each acknowledgement, the row is in the file for any other
        // connection to read: nothing waits for a close or a later flush.
        if i % 50 == 0 {
            assert!(file_urls(tmp.path(), DEFAULT_TABLE).contains(acked.last().unwrap()));
        }
    }
    acked.reverse();
    // As if the process died: no close, no destructor of the queue or the Db runs.
    std::mem::forget(q);
    std::mem::forget(db);

    assert_eq!(file_urls(tmp.path(), DEFAULT_TABLE), acked);
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 1000).await.unwrap();
    assert_eq!(
        q.entries().into_iter().map(|(u, _)| u).collect::<Vec<_>>(),
        acked
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_table_names_are_typed_errors() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    let long = "q".repeat(65);
    for name in [
        "",
        "1queue",
        "retry-queue",
        "q; DROP TABLE t",
        "q\"",
        "naïve",
        "sqlite_master",
        "SQLITE_queue",
        long.as_str(),
    ] {
        match RetryQueue::persistent_in(&db, name, 10).await {
            Err(RetryQueueError::InvalidTableName { name: got, reason }) => {
                assert_eq!(got, name);
                assert!(!reason.is_empty());
            }
            other => panic!("{name:?}: expected InvalidTableName, got {other:?}"),
        }
    }
    // Nothing was created for them.
    let tables: Vec<String> = db
        .read(|c| {
            let mut s = c.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")?;
            let names = s
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(names)
        })
        .await
        .unwrap();
    assert!(tables.is_empty(), "{tables:?}");

    // A good name works and keeps its queue apart from the default table's.
    let custom = RetryQueue::persistent_in(&db, "_crawl_2", 10)
        .await
        .unwrap();
    let default = RetryQueue::persistent(&db, 10).await.unwrap();
    custom.schedule("only-here", Instant::now()).await.unwrap();
    assert_eq!(file_urls(tmp.path(), "_crawl_2"), ["only-here"]);
    assert!(file_urls(tmp.path(), DEFAULT_TABLE).is_empty());
    assert!(default.is_empty());
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_another_shape_is_an_error_not_a_panic() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    db.write(|c| {
        c.execute_batch("CREATE TABLE other (x INTEGER)")?;
        Ok(())
    })
    .await
    .unwrap();
    let err = RetryQueue::persistent_in(&db, "other", 10)
        .await
        .unwrap_err();
    assert!(matches!(err, RetryQueueError::Db(_)), "{err:?}");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_changes_nothing() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 10).await.unwrap();
    let t0 = Instant::now();
    q.schedule("kept", t0).await.unwrap();
    db.close().await.unwrap();
    let err = q.schedule("new", t0).await.unwrap_err();
    assert!(
        matches!(err, RetryQueueError::Db(luca_core::Error::Closed { .. })),
        "{err:?}"
    );
    assert!(matches!(
        q.due(t0).await,
        Err(RetryQueueError::Db(luca_core::Error::Closed { .. }))
    ));
    assert_eq!(urls(&q.entries()), ["kept"], "memory unchanged");
    assert_eq!(file_urls(tmp.path(), DEFAULT_TABLE), ["kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_calls_leave_queue_and_file_as_they_were() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 10).await.unwrap();
    let t0 = Instant::now();
    q.schedule("queued", t0).await.unwrap();

    // Another connection holds the write lock, so a write cannot finish yet; a zero
    // timeout polls the call once (its write is queued on the Db, which commits it once
    // the lock is free) and then drops it.
    let lock = WriteLock::hold(tmp.path()).unwrap();
    let dropped = tokio::time::timeout(Duration::ZERO, q.schedule("abandoned", t0)).await;
    lock.release().unwrap();
    assert!(
        dropped.is_err(),
        "the call should still have been in flight"
    );
    // The next call waits for the background restore (changes are written in order), so
    // after it the file must match the memory again.
    assert!(q.due(t0 - SECOND).await.unwrap().is_empty());
    // The Db's write path is FIFO: after this write, every write queued before it has
    // committed (the abandoned one and the restore).
    db.write(|_| Ok(())).await.unwrap();
    assert_eq!(urls(&q.entries()), ["queued"]);
    assert_eq!(file_urls(tmp.path(), DEFAULT_TABLE), ["queued"]);

    let lock = WriteLock::hold(tmp.path()).unwrap();
    let dropped = tokio::time::timeout(Duration::ZERO, q.due(t0)).await;
    lock.release().unwrap();
    assert!(
        dropped.is_err(),
        "the call should still have been in flight"
    );
    assert_eq!(
        q.schedule("queued", t0).await.unwrap(),
        Scheduled::Unchanged { due: t0 }
    );
    db.write(|_| Ok(())).await.unwrap();
    assert_eq!(urls(&q.entries()), ["queued"], "nothing was handed out");
    assert_eq!(file_urls(tmp.path(), DEFAULT_TABLE), ["queued"]);

    assert_eq!(q.due(t0).await.unwrap(), ["queued"]);
    assert!(file_rows(tmp.path(), DEFAULT_TABLE).is_empty());
    db.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn debug_never_blocks_and_names_the_bound() {
    let q = RetryQueue::new(7);
    q.schedule("u", Instant::now()).await.unwrap();
    let text = format!("{q:?}");
    assert!(
        text.contains("max_len: 7") && text.contains("len: 1"),
        "{text}"
    );
}

const CRASH_CHILD_ENV: &str = "LUCA_RETRY_QUEUE_CRASH_CHILD";
const CRASH_TEST: &str = "acknowledged_schedules_survive_a_sigkill";

/// The child half of the crash test: schedules URLs and prints each one once `schedule`
/// acknowledged it, until it is killed (bounded in count and time all the same).
fn crash_child(path: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = Db::open(path).await.unwrap();
        let q = RetryQueue::persistent(&db, 1_000_000).await.unwrap();
        let t0 = Instant::now();
        let started = std::time::Instant::now();
        for i in 0..100_000u32 {
            if started.elapsed() > TEST_BOUND {
                break;
            }
            let url = format!("https://kill.test/{i}");
            q.schedule(url.clone(), t0 + HOUR + Duration::from_millis(u64::from(i)))
                .await
                .unwrap();
            println!("ACK {url}");
        }
    });
}

/// A real crash: a child process schedules retries and is killed with SIGKILL mid-stream;
/// every URL it was told `Ok` for is in the file afterwards, in due order.
#[test]
fn acknowledged_schedules_survive_a_sigkill() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};

    if let Ok(path) = std::env::var(CRASH_CHILD_ENV) {
        crash_child(&path);
        return;
    }
    let tmp = TempDb::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    // Bounded by the child's own bounds: its output ends when it stops or is killed.
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // The test harness may print its own text on the same line before the first one.
        if let Some(at) = line.find("ACK ") {
            acked.push(line[at + 4..].to_owned());
            if acked.len() == 300 {
                child.kill().unwrap(); // SIGKILL: no destructor, no close, no flush
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(acked.len(), 300, "the child stopped early: {status:?}");
    assert!(!status.success(), "the child was killed, not finished");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = Db::open(tmp.path()).await.unwrap();
        let q = RetryQueue::persistent(&db, 1_000_000).await.unwrap();
        let loaded: Vec<String> = q.entries().into_iter().map(|(u, _)| u).collect();
        // Every acknowledged URL survived, in the order it was scheduled (its due order);
        // a write that committed just before the kill but was never acknowledged may
        // follow them.
        assert!(
            loaded.len() >= acked.len(),
            "{} < {}",
            loaded.len(),
            acked.len()
        );
        let lost: Vec<&String> = acked.iter().filter(|u| !loaded.contains(u)).collect();
        assert!(
            lost.is_empty(),
            "acknowledged but not in the file: {lost:?}"
        );
        assert!(
            loaded[..acked.len()] == acked[..],
            "due order changed: {loaded:?}"
        );
        db.close().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_takes_a_url_out_in_memory_and_in_the_file() {
    let memory = RetryQueue::new(10);
    let t0 = Instant::now();
    memory.schedule("a", t0).await.unwrap();
    memory.schedule("b", t0).await.unwrap();
    assert!(memory.remove("a").await.unwrap());
    assert!(!memory.remove("a").await.unwrap());
    assert_eq!(memory.due(t0).await.unwrap(), ["b"]);

    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 10).await.unwrap();
    q.schedule("a", t0).await.unwrap();
    q.schedule("b", t0 + SECOND).await.unwrap();
    assert!(q.remove("a").await.unwrap());
    assert!(!q.remove("never-queued").await.unwrap());
    assert_eq!(file_urls(tmp.path(), DEFAULT_TABLE), ["b"]);
    db.close().await.unwrap();
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 10).await.unwrap();
    assert_eq!(urls(&q.entries()), ["b"]);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_is_not_a_retry_entry_is_a_typed_error() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 10).await.unwrap();
    q.schedule("fine", Instant::now()).await.unwrap();
    db.write(|c| {
        c.execute(
            "INSERT INTO luca_retry_queue (url, due_unix_ms, seq) VALUES ('bad', 0, -1)",
            [],
        )?;
        Ok(())
    })
    .await
    .unwrap();
    match RetryQueue::persistent(&db, 10).await {
        Err(RetryQueueError::BadRow { table, reason }) => {
            assert_eq!(table, DEFAULT_TABLE);
            assert!(reason.contains("`bad`"), "{reason}");
        }
        other => panic!("expected BadRow, got {other:?}"),
    }
    db.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn attempt_numbers_keep_the_larger_and_survive_moves() {
    let q = RetryQueue::new(10);
    let t0 = Instant::now();
    assert_eq!(
        q.schedule_attempt("u", t0 + 10 * SECOND, 2).await.unwrap(),
        Scheduled::Added
    );
    assert_eq!(q.attempt("u"), Some(2));
    // Later due time, smaller number: nothing changes.
    assert_eq!(
        q.schedule_attempt("u", t0 + 20 * SECOND, 1).await.unwrap(),
        Scheduled::Unchanged {
            due: t0 + 10 * SECOND
        }
    );
    assert_eq!(q.attempt("u"), Some(2));
    // Earlier due time, smaller number: moved, the number kept.
    assert!(matches!(
        q.schedule_attempt("u", t0 + 5 * SECOND, 1).await.unwrap(),
        Scheduled::Advanced { .. }
    ));
    assert_eq!(q.attempt("u"), Some(2));
    // Plain `schedule` keeps the number.
    q.schedule("u", t0 + SECOND).await.unwrap();
    assert_eq!(q.attempt("u"), Some(2));
    // Later due time, larger number: the due time kept, the number raised.
    assert_eq!(
        q.schedule_attempt("u", t0 + 30 * SECOND, 4).await.unwrap(),
        Scheduled::Unchanged { due: t0 + SECOND }
    );
    assert_eq!(q.attempt("u"), Some(4));
    q.schedule("plain", t0 + 2 * SECOND).await.unwrap();
    q.schedule_attempt("third", t0, 1).await.unwrap();
    assert_eq!(q.attempt("plain"), Some(0));
    assert_eq!(q.attempt("missing"), None);
    // Only numbered entries, in due order.
    assert_eq!(q.attempts(), [("third".to_owned(), 1), ("u".to_owned(), 4)]);
    // Taken out: the number goes with the entry.
    assert_eq!(q.due(t0 + SECOND).await.unwrap(), ["third", "u"]);
    assert_eq!(q.attempt("u"), None);
}

/// The rows of a queue table with their attempt numbers, in due order.
fn file_attempts(path: &Path, table: &str) -> Vec<(String, i64)> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT url, attempt FROM \"{table}\" ORDER BY due_unix_ms, seq"
        ))
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_the_schema_before_attempts_opens_and_gains_the_column() {
    let tmp = TempDb::new();
    // A file as the queue wrote it before attempt numbers existed: url, due, seq only.
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    {
        let conn = Connection::open(tmp.path()).unwrap();
        conn.execute_batch(
            "CREATE TABLE luca_retry_queue (\
             url TEXT PRIMARY KEY NOT NULL, \
             due_unix_ms INTEGER NOT NULL, \
             seq INTEGER NOT NULL)",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO luca_retry_queue (url, due_unix_ms, seq) VALUES \
             ('https://old.test/a', ?1, 0), ('https://old.test/b', ?2, 1)",
            [now_ms + 3_600_000, now_ms + 7_200_000],
        )
        .unwrap();
    }

    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 10).await.unwrap();
    assert_eq!(
        urls(&q.entries()),
        ["https://old.test/a", "https://old.test/b"]
    );
    assert_eq!(q.attempt("https://old.test/a"), Some(0));
    assert!(q.attempts().is_empty());
    // The old rows read as attempt 0 from the file too.
    assert_eq!(
        file_attempts(tmp.path(), DEFAULT_TABLE),
        [
            ("https://old.test/a".to_owned(), 0),
            ("https://old.test/b".to_owned(), 0)
        ]
    );
    let t0 = Instant::now();
    q.schedule_attempt("https://old.test/c", t0 + 3 * HOUR, 3)
        .await
        .unwrap();
    // Kept due time, raised number: written.
    q.schedule_attempt("https://old.test/a", t0 + 5 * HOUR, 2)
        .await
        .unwrap();
    db.close().await.unwrap();
    drop(q);

    // Reopened (the column is there now: nothing to migrate): the numbers are back.
    let db = Db::open(tmp.path()).await.unwrap();
    let q = RetryQueue::persistent(&db, 10).await.unwrap();
    assert_eq!(
        q.attempts(),
        [
            ("https://old.test/a".to_owned(), 2),
            ("https://old.test/c".to_owned(), 3)
        ]
    );
    assert_eq!(q.attempt("https://old.test/b"), Some(0));
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_attempt_is_a_bad_row() {
    let tmp = TempDb::new();
    let db = Db::open(tmp.path()).await.unwrap();
    RetryQueue::persistent(&db, 10).await.unwrap();
    db.write(|c| {
        c.execute(
            "INSERT INTO luca_retry_queue (url, due_unix_ms, seq, attempt) \
             VALUES ('neg', 0, 0, -1)",
            [],
        )?;
        Ok(())
    })
    .await
    .unwrap();
    match RetryQueue::persistent(&db, 10).await {
        Err(RetryQueueError::BadRow { reason, .. }) => {
            assert!(reason.contains("`attempt` of `neg`"), "{reason}");
        }
        other => panic!("expected BadRow, got {other:?}"),
    }
    db.close().await.unwrap();
}

//! `#[db_retry] async fn` and `retry_async` under an executor that is not tokio's: the
//! backoff sleeps on a runtime-neutral timer instead of panicking for want of a reactor.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use luca_core::db_retry;
use luca_core::retry::{BusyCode, RetryEvent, RetryPolicy, retry_async};
use luca_core::rusqlite::{self, Connection};
use luca_testkit::{TempDb, WriteLock};

mod common;
use common::open;

/// Runs `f` on its own thread and waits at most 30 s for it, so a sleep that is never
/// woken fails the test instead of hanging it.
fn within_30s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("finished within 30 s (a panic on that thread also ends up here)")
}

static LOCK: Mutex<Option<WriteLock>> = Mutex::new(None);
static RETRIES: AtomicU32 = AtomicU32::new(0);

/// Releases the held lock before the first backoff sleep: the second attempt finds it
/// free, whatever the timing.
fn release_lock(event: &RetryEvent) {
    assert_eq!(event.code, BusyCode::Busy, "{event:?}");
    RETRIES.fetch_add(1, Ordering::SeqCst);
    if let Some(lock) = LOCK.lock().unwrap().take() {
        lock.release().unwrap();
    }
}

#[db_retry(max_retries = 3, delay_ms = 30, jitter = "none", on_retry = release_lock)]
async fn insert(conn: &Connection, attempts: &AtomicU32) -> rusqlite::Result<i64> {
    attempts.fetch_add(1, Ordering::SeqCst);
    conn.execute("INSERT INTO t (v) VALUES (1)", [])?;
    Ok(conn.last_insert_rowid())
}

#[test]
fn db_retry_async_fn_retries_a_real_busy_under_futures_block_on() {
    let (attempts, rowid, slept) = within_30s(|| {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "no tokio runtime here"
        );
        let db = TempDb::new();
        let conn = open(&db);
        *LOCK.lock().unwrap() = Some(WriteLock::hold(db.path()).unwrap());
        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let rowid = futures_executor::block_on(insert(&conn, &attempts));
        (
            attempts.into_inner(),
            rowid.map_err(|e| e.to_string()),
            started.elapsed(),
        )
    });
    assert_eq!(rowid, Ok(1), "retried past the busy lock");
    assert_eq!(attempts, 2);
    assert_eq!(RETRIES.load(Ordering::SeqCst), 1);
    // The one backoff (30 ms, no jitter) was really waited, not skipped.
    assert!(slept >= Duration::from_millis(30), "{slept:?}");
}

#[test]
fn retry_async_sleeps_without_tokio() {
    let (calls, out, slept) = within_30s(|| {
        let policy = RetryPolicy::new()
            .with_max_retries(2)
            .with_delay(Duration::from_millis(20))
            .with_jitter(luca_core::retry::Jitter::None);
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let out: rusqlite::Result<u32> = futures_executor::block_on(retry_async(&policy, || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n < 3 {
                    Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(5),
                        None,
                    ))
                } else {
                    Ok(n)
                }
            }
        }));
        (
            calls.into_inner(),
            out.map_err(|e| e.to_string()),
            started.elapsed(),
        )
    });
    assert_eq!(out, Ok(3));
    assert_eq!(calls, 3);
    // 20 ms + 40 ms of backoff.
    assert!(slept >= Duration::from_millis(60), "{slept:?}");
}

#[test]
fn many_sleeps_at_once_each_wake_their_own_task() {
    // Eight threads, each with its own executor, sleep on the one timer thread with
    // different delays; every one is woken.
    let handles: Vec<_> = (0..8u32)
        .map(|i| {
            std::thread::spawn(move || {
                let policy = RetryPolicy::new()
                    .with_max_retries(1)
                    .with_delay(Duration::from_millis(u64::from(8 - i) * 5))
                    .with_jitter(luca_core::retry::Jitter::None);
                let calls = AtomicU32::new(0);
                let out: rusqlite::Result<u32> =
                    futures_executor::block_on(retry_async(&policy, || {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if n == 0 {
                                Err(rusqlite::Error::SqliteFailure(
                                    rusqlite::ffi::Error::new(6),
                                    None,
                                ))
                            } else {
                                Ok(i)
                            }
                        }
                    }));
                out.unwrap()
            })
        })
        .collect();
    let out = within_30s(move || {
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(out, (0..8).collect::<Vec<_>>());
}

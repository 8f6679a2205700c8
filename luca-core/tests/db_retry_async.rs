//! `#[db_retry]` on `async fn`s of every shape, and `retry_async` with closures: real
//! SQLite files for the busy cases, tokio's paused clock for the exact schedule.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use luca_core::db_retry;
use luca_core::pragmas::{self, Pragmas};
use luca_core::retry::{BusyCode, Jitter, RetryEvent, RetryPolicy, Retryable, retry_async};
use luca_core::rusqlite::{self, Connection};
use luca_testkit::{TempDb, WriteLock};
use tokio::time::Instant;

fn busy() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None)
}

/// A connection whose own busy handler gives up after 10 ms, so a held write lock turns
/// into `SQLITE_BUSY` quickly and the retry loop, not SQLite, does the waiting.
fn open_short(db: &TempDb) -> Connection {
    let conn = pragmas::open(
        db.path(),
        &Pragmas::new().with_busy_timeout(Duration::from_millis(10)),
    )
    .unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        .unwrap();
    conn
}

/// Gaps between consecutive instants.
fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

// --- free functions ----------------------------------------------------------------------

#[db_retry(max_retries = 3, delay_ms = 1, jitter = "none")]
async fn fails_n_times(calls: &AtomicU32, failures: u32) -> rusqlite::Result<u32> {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::task::yield_now().await;
    if n <= failures {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(773),
            Some(format!("attempt {n}")),
        ));
    }
    Ok(n)
}

#[tokio::test]
async fn busy_is_retried_until_success() {
    let calls = AtomicU32::new(0);
    assert_eq!(fails_n_times(&calls, 2).await.unwrap(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn exhausted_retries_return_the_original_error() {
    let calls = AtomicU32::new(0);
    let err = fails_n_times(&calls, 100).await.unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "1 attempt + max_retries = 3"
    );
    assert_eq!(err.busy_code(), Some(BusyCode::BusyTimeout));
    assert_eq!(err.sqlite_error().unwrap().extended_code, 773);
    assert!(
        err.to_string().contains("attempt 4"),
        "the last attempt's error, unchanged: {err}"
    );
}

#[db_retry(delay_ms = 1)]
async fn insert(conn: &Connection, id: i64, calls: &AtomicU32) -> rusqlite::Result<usize> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::task::yield_now().await;
    conn.execute("INSERT INTO t (id, v) VALUES (?1, 0)", [id])
}

#[tokio::test]
async fn constraint_violation_is_returned_after_one_attempt() {
    let db = TempDb::new();
    let conn = open_short(&db);
    let calls = AtomicU32::new(0);
    insert(&conn, 1, &calls).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let err = insert(&conn, 1, &calls).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "exactly one attempt");
    assert_eq!(err.sqlite_error().unwrap().extended_code, 1555); // CONSTRAINT_PRIMARYKEY
    assert_eq!(err.busy_code(), None);
}

// --- a real write lock ------------------------------------------------------------------

static LOCK_RETRIES: AtomicU32 = AtomicU32::new(0);

/// The write lock `write_through_lock` meets, released by its retry hook: the first
/// attempt always fails busy and the second always finds the lock free.
static HELD_LOCK: Mutex<Option<WriteLock>> = Mutex::new(None);

fn count_lock_retry(event: &RetryEvent) {
    assert_eq!(event.code, BusyCode::Busy, "{event:?}");
    LOCK_RETRIES.fetch_add(1, Ordering::SeqCst);
    if let Some(lock) = HELD_LOCK.lock().unwrap().take() {
        lock.release().unwrap();
    }
}

/// Shared, `Send` access to one connection: the future can run on any worker.
#[db_retry(max_retries = 100, delay_ms = 5, max_delay_ms = 20, on_retry = count_lock_retry)]
async fn write_through_lock(
    conn: Arc<Mutex<Connection>>,
    v: i64,
    attempts: Arc<AtomicU32>,
) -> luca_core::Result<i64> {
    attempts.fetch_add(1, Ordering::SeqCst);
    tokio::task::yield_now().await;
    let conn = conn.lock().unwrap();
    conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
    Ok(conn.last_insert_rowid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_lock_is_retried_and_succeeds_once_released() {
    let db = TempDb::new();
    let conn = Arc::new(Mutex::new(open_short(&db)));
    *HELD_LOCK.lock().unwrap() = Some(WriteLock::hold(db.path()).unwrap());
    let attempts = Arc::new(AtomicU32::new(0));
    let task = tokio::spawn(write_through_lock(
        Arc::clone(&conn),
        7,
        Arc::clone(&attempts),
    ));
    let rowid = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the write finished within 20 s")
        .expect("the task did not panic")
        .expect("the write succeeded once the lock was released");
    assert!(HELD_LOCK.lock().unwrap().is_none(), "the retry hook ran");
    let attempts = attempts.load(Ordering::SeqCst);
    assert_eq!(attempts, 2, "the held lock failed the first attempt only");
    assert_eq!(LOCK_RETRIES.load(Ordering::SeqCst), 1);
    let conn = conn.lock().unwrap();
    let v: i64 = conn
        .query_row("SELECT v FROM t WHERE id = ?1", [rowid], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 7);
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "exactly one row, however many attempts");
}

#[db_retry(max_retries = 2, delay_ms = 1, jitter = "none")]
async fn write_while_locked_forever(
    conn: &Connection,
    attempts: &AtomicU32,
) -> luca_core::Result<()> {
    attempts.fetch_add(1, Ordering::SeqCst);
    conn.execute("INSERT INTO t (v) VALUES (1)", [])?;
    Ok(())
}

#[tokio::test]
async fn held_lock_exhausts_retries_with_the_busy_code() {
    let db = TempDb::new();
    let conn = open_short(&db);
    let _lock = WriteLock::hold(db.path()).unwrap();
    let attempts = AtomicU32::new(0);
    let err = write_while_locked_forever(&conn, &attempts)
        .await
        .unwrap_err();
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(err.extended_code(), Some(5), "{err}");
    assert_eq!(err.busy_code(), Some(BusyCode::Busy));
}

// --- shapes: methods, trait default body, generics, impl Trait, early return, `?` ------

struct Repo {
    conn: Connection,
    /// Attempts still to fail with SQLITE_BUSY before the body runs for real.
    busy_budget: AtomicU32,
    attempts: AtomicU32,
    writes: u32,
}

impl Repo {
    fn new(conn: Connection) -> Repo {
        Repo {
            conn,
            busy_budget: AtomicU32::new(0),
            attempts: AtomicU32::new(0),
            writes: 0,
        }
    }

    /// Fails with SQLITE_BUSY while the budget lasts.
    fn inject(&self) -> rusqlite::Result<()> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let left = self.busy_budget.load(Ordering::SeqCst);
        if left > 0 {
            self.busy_budget.store(left - 1, Ordering::SeqCst);
            return Err(busy());
        }
        Ok(())
    }

    fn fail_next(&self, n: u32) {
        self.busy_budget.store(n, Ordering::SeqCst);
        self.attempts.store(0, Ordering::SeqCst);
    }

    #[db_retry(max_retries = 5, delay_ms = 1)]
    async fn count(&self) -> rusqlite::Result<i64> {
        self.inject()?;
        tokio::task::yield_now().await;
        self.conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
    }

    #[db_retry(max_retries = 5, delay_ms = 1)]
    async fn add(&mut self, v: i64) -> luca_core::Result<i64> {
        self.writes += 1;
        self.inject()?;
        if v < 0 {
            return Err(luca_core::Error::Sqlite(rusqlite::Error::InvalidQuery));
        }
        tokio::task::yield_now().await;
        self.conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
        Ok(self.conn.last_insert_rowid())
    }

    #[db_retry(max_retries = 5, delay_ms = 1)]
    async fn add_all<I: IntoIterator<Item = i64> + Clone>(
        &mut self,
        values: I,
    ) -> luca_core::Result<usize> {
        let mut n = 0;
        for v in values.clone() {
            self.add(v).await?;
            n += 1;
        }
        Ok(n)
    }

    #[db_retry(max_retries = 5, delay_ms = 1)]
    async fn sum_where(&self, keep: impl Fn(i64) -> bool) -> rusqlite::Result<i64> {
        self.inject()?;
        tokio::task::yield_now().await;
        let mut stmt = self.conn.prepare("SELECT v FROM t")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        let mut sum = 0;
        for v in rows {
            let v = v?;
            if keep(v) {
                sum += v;
            }
        }
        Ok(sum)
    }
}

trait Store {
    fn repo(&self) -> &Repo;

    /// A native `async fn` in a trait, with a default body.
    #[db_retry(max_retries = 5, delay_ms = 1)]
    async fn max_v(&self) -> rusqlite::Result<Option<i64>> {
        let repo = self.repo();
        repo.inject()?;
        tokio::task::yield_now().await;
        repo.conn
            .query_row("SELECT max(v) FROM t", [], |r| r.get(0))
    }

    async fn label(&self) -> luca_core::Result<String>;
}

impl Store for Repo {
    fn repo(&self) -> &Repo {
        self
    }

    #[db_retry(max_retries = 5, delay_ms = 1)]
    async fn label(&self) -> luca_core::Result<String> {
        Ok(format!("repo with {} rows", self.count().await?))
    }
}

#[db_retry(max_retries = 5, delay_ms = 1)]
async fn generic_read<T: rusqlite::types::FromSql, P: AsRef<str>>(
    conn: &Connection,
    sql: P,
    failures: &AtomicU32,
) -> rusqlite::Result<T> {
    if failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Err(busy());
    }
    tokio::task::yield_now().await;
    conn.query_row(sql.as_ref(), [], |r| r.get(0))
}

#[tokio::test]
async fn every_shape_compiles_and_retries() {
    let db = TempDb::new();
    let mut repo = Repo::new(open_short(&db));

    repo.fail_next(2);
    assert_eq!(repo.count().await.unwrap(), 0);
    assert_eq!(repo.attempts.load(Ordering::SeqCst), 3, "&self: 2 busy + 1");

    repo.fail_next(3);
    assert_eq!(repo.add(5).await.unwrap(), 1);
    assert_eq!(
        repo.attempts.load(Ordering::SeqCst),
        4,
        "&mut self: 3 busy + 1"
    );
    assert_eq!(repo.writes, 4, "every attempt ran the whole body");

    repo.fail_next(0);
    let err = repo.add(-1).await.unwrap_err();
    assert!(
        matches!(err, luca_core::Error::Sqlite(rusqlite::Error::InvalidQuery)),
        "early return, not retried: {err}"
    );
    assert_eq!(repo.attempts.load(Ordering::SeqCst), 1);

    // `?` of a busy error from a nested call: the inner `add` retries first.
    repo.fail_next(1);
    assert_eq!(repo.add_all(vec![1, 2, 3]).await.unwrap(), 3);
    assert_eq!(repo.attempts.load(Ordering::SeqCst), 4);

    repo.fail_next(1);
    assert_eq!(repo.sum_where(|v| v > 1).await.unwrap(), 10);
    assert_eq!(
        repo.attempts.load(Ordering::SeqCst),
        2,
        "impl Trait argument"
    );

    repo.fail_next(4);
    assert_eq!(repo.max_v().await.unwrap(), Some(5));
    assert_eq!(
        repo.attempts.load(Ordering::SeqCst),
        5,
        "trait default body"
    );

    repo.fail_next(1);
    assert_eq!(repo.label().await.unwrap(), "repo with 4 rows");
    assert_eq!(repo.attempts.load(Ordering::SeqCst), 2);

    let failures = AtomicU32::new(2);
    let n: i64 = generic_read(&repo.conn, "SELECT count(*) FROM t", &failures)
        .await
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let s: String = generic_read(&repo.conn, String::from("SELECT 'x'"), &failures)
        .await
        .unwrap();
    assert_eq!(s, "x");
}

#[tokio::test]
async fn trait_default_body_gives_up_after_max_retries() {
    let db = TempDb::new();
    let repo = Repo::new(open_short(&db));
    repo.fail_next(100);
    let err = repo.max_v().await.unwrap_err();
    assert_eq!(err.busy_code(), Some(BusyCode::Busy));
    assert_eq!(repo.attempts.load(Ordering::SeqCst), 6, "1 + max_retries 5");
}

// --- Send futures -----------------------------------------------------------------------

#[db_retry(max_retries = 4, delay_ms = 1)]
async fn send_fn(calls: Arc<AtomicU32>, name: String, failures: u32) -> luca_core::Result<String> {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(1)).await;
    if n <= failures {
        return Err(busy().into());
    }
    Ok(format!("{name} after {n}"))
}

fn assert_send<T: Send + 'static>(t: T) -> T {
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_is_send_and_runs_on_spawned_tasks() {
    let mut handles = Vec::new();
    for i in 0..8u32 {
        let calls = Arc::new(AtomicU32::new(0));
        let fut = assert_send(send_fn(Arc::clone(&calls), format!("job{i}"), i % 4));
        handles.push((i, calls, tokio::spawn(fut)));
    }
    for (i, calls, handle) in handles {
        let out = tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("finished within 20 s")
            .unwrap()
            .unwrap();
        let attempts = i % 4 + 1;
        assert_eq!(out, format!("job{i} after {attempts}"));
        assert_eq!(calls.load(Ordering::SeqCst), attempts);
    }
}

// --- the exact schedule, on tokio's paused clock ---------------------------------------

static SCHEDULE_HOOK_DELAYS: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

fn record_schedule_delay(event: &RetryEvent) {
    SCHEDULE_HOOK_DELAYS.lock().unwrap().push(event.delay);
}

#[db_retry(
    max_retries = 12,
    delay_ms = 1000,
    max_delay_ms = 30000,
    jitter = "none",
    on_retry = record_schedule_delay
)]
async fn always_busy_timed(times: &Mutex<Vec<Instant>>) -> rusqlite::Result<()> {
    times.lock().unwrap().push(Instant::now());
    Err(busy())
}

#[tokio::test(start_paused = true)]
async fn paused_clock_shows_the_exact_schedule() {
    let real = std::time::Instant::now();
    let virtual_start = Instant::now();
    let times = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);

    // A second task keeps running while the retry loop sleeps: the sleeps are tokio's,
    // never a blocked thread.
    let ticker = async {
        let mut ticks = 0u32;
        for _ in 0..10_000 {
            if done.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            ticks += 1;
        }
        ticks
    };
    let call = async {
        let out = always_busy_timed(&times).await;
        done.store(true, Ordering::SeqCst);
        out
    };
    let (out, ticks) = tokio::join!(call, ticker);

    let err = out.unwrap_err();
    assert_eq!(err.busy_code(), Some(BusyCode::Busy));
    let times = times.into_inner().unwrap();
    assert_eq!(times.len(), 13, "1 attempt + 12 retries");
    assert_eq!(times[0], virtual_start, "the first attempt starts at once");
    let secs = |s: u64| Duration::from_secs(s);
    let want = [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30].map(secs);
    assert_eq!(gaps(&times), want);
    assert_eq!(*SCHEDULE_HOOK_DELAYS.lock().unwrap(), want);

    let virtual_total = times[12] - times[0];
    assert_eq!(virtual_total, secs(241));
    assert!(
        real.elapsed() < secs(20),
        "241 s of virtual backoff took {:?} of real time",
        real.elapsed()
    );
    assert!(
        ticks >= 480,
        "the other task ran during the backoff: {ticks} ticks"
    );
}

#[db_retry(
    max_retries = 1000,
    delay_ms = 1000,
    max_delay_ms = 4000,
    jitter = "none",
    deadline_ms = 20000
)]
async fn busy_until_deadline(times: &Mutex<Vec<Instant>>) -> rusqlite::Result<()> {
    times.lock().unwrap().push(Instant::now());
    Err(busy())
}

#[tokio::test(start_paused = true)]
async fn paused_clock_deadline_stops_before_passing_it() {
    let real = std::time::Instant::now();
    let start = Instant::now();
    let times = Mutex::new(Vec::new());
    let err = busy_until_deadline(&times).await.unwrap_err();
    assert_eq!(err.busy_code(), Some(BusyCode::Busy));
    let times = times.into_inner().unwrap();
    // 1 + 2 + 4 + 4 + 4 + 4 = 19 s fit in 20 s; one more 4 s delay would end at 23 s.
    let secs = |s: u64| Duration::from_secs(s);
    assert_eq!(gaps(&times), [1, 2, 4, 4, 4, 4].map(secs));
    assert_eq!(
        start.elapsed(),
        secs(19),
        "gave up at once, without sleeping"
    );
    assert!(real.elapsed() < secs(10), "{:?}", real.elapsed());
}

/// Each attempt itself takes 250 ms of (virtual) time: the deadline counts it too.
#[db_retry(
    max_retries = 1000,
    delay_ms = 100,
    jitter = "none",
    deadline_ms = 1000
)]
async fn slow_busy(times: &Mutex<Vec<Instant>>) -> rusqlite::Result<()> {
    times.lock().unwrap().push(Instant::now());
    tokio::time::sleep(Duration::from_millis(250)).await;
    Err(busy())
}

#[tokio::test(start_paused = true)]
async fn paused_clock_deadline_includes_attempt_time() {
    let start = Instant::now();
    let times = Mutex::new(Vec::new());
    slow_busy(&times).await.unwrap_err();
    let times = times.into_inner().unwrap();
    // t=0 attempt, ends 250; +100 → 350 attempt, ends 600; +200 → 800 attempt, ends
    // 1050: 1050 + 400 passes 1000, give up.
    let at: Vec<u128> = times.iter().map(|t| (*t - start).as_millis()).collect();
    assert_eq!(at, [0, 350, 800]);
    assert_eq!(start.elapsed(), Duration::from_millis(1050));
}

// --- retry_async with closures ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_async_has_the_same_schedule() {
    let real = std::time::Instant::now();
    let policy = RetryPolicy::new()
        .with_max_retries(10)
        .with_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(20))
        .with_jitter(Jitter::None);
    let times = Mutex::new(Vec::new());
    let t = &times;
    let out: rusqlite::Result<()> = retry_async(&policy, move || async move {
        t.lock().unwrap().push(Instant::now());
        Err(busy())
    })
    .await;
    assert_eq!(out.unwrap_err().busy_code(), Some(BusyCode::Busy));
    let times = times.into_inner().unwrap();
    assert_eq!(times.len(), 11);
    let ms = |m: u64| Duration::from_millis(m);
    let want = [
        500, 1_000, 2_000, 4_000, 8_000, 16_000, 20_000, 20_000, 20_000, 20_000,
    ]
    .map(ms);
    assert_eq!(gaps(&times), want);
    for (n, gap) in (0u32..).zip(gaps(&times)) {
        assert_eq!(gap, policy.backoff(n), "retry {n}");
    }
    assert_eq!(times[10] - times[0], ms(111_500));
    assert!(
        real.elapsed() < Duration::from_secs(20),
        "{:?}",
        real.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn retry_async_deadline_on_the_paused_clock() {
    let policy = RetryPolicy::new()
        .with_max_retries(1000)
        .with_delay(Duration::from_millis(100))
        .with_jitter(Jitter::None)
        .with_deadline(Some(Duration::from_millis(1_000)));
    let start = Instant::now();
    let calls = AtomicU32::new(0);
    let c = &calls;
    let out: rusqlite::Result<()> = retry_async(&policy, move || async move {
        c.fetch_add(1, Ordering::SeqCst);
        Err(busy())
    })
    .await;
    assert!(out.is_err());
    // 100 + 200 + 400 = 700 ms; the next 800 ms would pass the deadline.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(start.elapsed(), Duration::from_millis(700));
}

#[tokio::test]
async fn retry_async_retries_busy_and_returns_other_errors_at_once() {
    let policy = RetryPolicy::new()
        .with_max_retries(5)
        .with_delay(Duration::from_millis(1));
    let calls = AtomicU32::new(0);
    let c = &calls;
    let out: luca_core::Result<u32> = retry_async(&policy, move || async move {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::task::yield_now().await;
        if n < 3 {
            Err(luca_core::Error::from(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(517),
                None,
            )))
        } else {
            Ok(n)
        }
    })
    .await;
    assert_eq!(out.unwrap(), 3);

    let calls = AtomicU32::new(0);
    let c = &calls;
    let out: rusqlite::Result<()> = retry_async(&policy, move || async move {
        c.fetch_add(1, Ordering::SeqCst);
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(19),
            None,
        ))
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(out.unwrap_err().sqlite_error().unwrap().extended_code, 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_async_against_a_real_write_lock() {
    let db = TempDb::new();
    let conn = Arc::new(Mutex::new(open_short(&db)));
    // Released by the attempt that observes the busy error, so exactly one retry follows.
    let lock = Arc::new(Mutex::new(Some(WriteLock::hold(db.path()).unwrap())));
    let policy = RetryPolicy::new()
        .with_max_retries(100)
        .with_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(20));
    let attempts = Arc::new(AtomicU32::new(0));
    let task = {
        let attempts = Arc::clone(&attempts);
        let conn = Arc::clone(&conn);
        let lock = Arc::clone(&lock);
        tokio::spawn(async move {
            retry_async(&policy, || {
                let attempts = Arc::clone(&attempts);
                let conn = Arc::clone(&conn);
                let lock = Arc::clone(&lock);
                async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let conn = conn.lock().unwrap();
                    let out = conn.execute("INSERT INTO t (v) VALUES (3)", []);
                    if out.as_ref().err().and_then(Retryable::busy_code) == Some(BusyCode::Busy)
                        && let Some(lock) = lock.lock().unwrap().take()
                    {
                        lock.release().unwrap();
                    }
                    out
                }
            })
            .await
        })
    };
    let n = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("finished within 20 s")
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    assert!(
        lock.lock().unwrap().is_none(),
        "an attempt met the held lock"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let count: i64 = conn
        .lock()
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1);
}

// --- `Send` futures ------------------------------------------------------------------------

/// By-value parameters that are `Send` but not `Sync`: without the attribute the future is
/// `Send`, and with it too, so `tokio::spawn` takes it.
#[db_retry(max_retries = 3, delay_ms = 1)]
async fn sum_received(
    rx: std::sync::mpsc::Receiver<i64>,
    tries: std::cell::Cell<u32>,
) -> rusqlite::Result<(i64, u32)> {
    tries.set(tries.get() + 1);
    tokio::task::yield_now().await;
    if tries.get() == 1 {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(5),
            None,
        ));
    }
    Ok((rx.try_iter().sum(), tries.get()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_but_not_sync_arguments_keep_the_future_send() {
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(40).unwrap();
    tx.send(2).unwrap();
    let task = tokio::spawn(sum_received(rx, std::cell::Cell::new(0)));
    let out = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("finished within 20 s")
        .unwrap()
        .unwrap();
    assert_eq!(out, (42, 2), "the sum, after one busy retry");
}

//! The process-wide retry counters: every field of `MetricsSnapshot`, `since`, `Display`,
//! and the `slept` / `location` of the `RetryEvent` an `on_retry` hook receives.
//!
//! The counters are global to the process, so this file is a test binary of its own and
//! its tests take turns (`serial()`); each measures its own work as a `since` delta. The
//! busy errors are real: another connection holds the write lock (`WriteLock`) and the
//! retried write uses a connection whose busy handler gives up at once. Locks are released
//! on events (an attempt number, the retry hook), never after a sleep.

use std::panic::Location;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use luca_core::db_retry;
use luca_core::metrics::MetricsSnapshot;
use luca_core::pragmas::{self, Pragmas};
use luca_core::retry::{BusyCode, Jitter, RetryEvent, RetryPolicy, retry_sync};
use luca_core::rusqlite::{self, Connection, ffi};
use luca_testkit::{TempDb, WriteLock, force_busy_snapshot};

/// One test at a time: the counters are shared by the whole binary.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn snapshot() -> MetricsSnapshot {
    luca_core::metrics().snapshot()
}

/// A connection whose own busy handler gives up at once, so a held lock surfaces as
/// `SQLITE_BUSY` on the first try.
fn impatient(path: &Path) -> Connection {
    let conn = pragmas::open(path, &Pragmas::new().with_busy_timeout(Duration::ZERO)).unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        .unwrap();
    conn
}

fn insert(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1); COMMIT;")
}

fn rows(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// 1 ms, doubling, no jitter: the delays are exactly 1, 2, 4, … ms.
fn exact_policy(max_retries: u32) -> RetryPolicy {
    RetryPolicy::new()
        .with_max_retries(max_retries)
        .with_delay(Duration::from_millis(1))
        .with_jitter(Jitter::None)
}

fn code_of(e: &rusqlite::Error) -> Option<i32> {
    e.sqlite_error().map(|e| e.extended_code)
}

#[test]
fn a_call_that_recovers_counts_every_counter() {
    let _serial = serial();
    let db = TempDb::new();
    let conn = impatient(db.path());
    let mut lock = Some(WriteLock::hold(db.path()).unwrap());
    let mut attempt = 0;

    let before = snapshot();
    retry_sync(&exact_policy(5), || {
        attempt += 1;
        if attempt == 3 {
            // Two attempts have met the lock; let the third through.
            lock.take().unwrap().release().unwrap();
        }
        insert(&conn)
    })
    .unwrap();
    let d = snapshot().since(&before);

    assert_eq!(attempt, 3);
    assert_eq!(rows(&conn), 1);
    assert_eq!(d.busy_for(BusyCode::Busy), 2, "{d:?}");
    assert_eq!(d.retries_for(BusyCode::Busy), 2, "{d:?}");
    for code in BusyCode::ALL {
        if code != BusyCode::Busy {
            assert_eq!(
                (d.busy_for(code), d.retries_for(code)),
                (0, 0),
                "{code} {d:?}"
            );
        }
    }
    assert_eq!(d.busy_by_code, [2, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d.retries_by_code, [2, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d.retries(), 2);
    assert_eq!(d.calls_retried, 1);
    assert_eq!(d.calls_recovered, 1);
    assert_eq!(d.calls_gave_up, 0);
    assert_eq!(d.attempts, 3, "first attempt included");
    assert_eq!(d.slept, Duration::from_millis(1 + 2));
    assert_eq!(
        d.to_string(),
        "retries 2 | calls retried 1 recovered 1 gave up 0 | attempts 3 | slept 3.0 ms\n  \
         SQLITE_BUSY                busy        2 retried        2\n"
    );
}

#[test]
fn a_call_that_runs_out_of_retries_gives_up() {
    let _serial = serial();
    let db = TempDb::new();
    let conn = impatient(db.path());
    let lock = WriteLock::hold(db.path()).unwrap();

    let before = snapshot();
    let err = retry_sync(&exact_policy(2), || insert(&conn)).unwrap_err();
    let d = snapshot().since(&before);
    lock.release().unwrap();

    assert_eq!(code_of(&err), Some(ffi::SQLITE_BUSY), "{err}");
    assert_eq!(d.busy_for(BusyCode::Busy), 3, "every attempt met the lock");
    assert_eq!(d.retries_for(BusyCode::Busy), 2);
    assert_eq!(d.calls_retried, 1);
    assert_eq!(d.calls_recovered, 0);
    assert_eq!(d.calls_gave_up, 1);
    assert_eq!(d.attempts, 3);
    assert_eq!(d.slept, Duration::from_millis(1 + 2));
    assert_eq!(rows(&conn), 0);
}

#[test]
fn a_deadline_that_stops_the_first_retry_counts_busy_and_gave_up_only() {
    let _serial = serial();
    let db = TempDb::new();
    let conn = impatient(db.path());
    let lock = WriteLock::hold(db.path()).unwrap();
    // The first delay (1 s) would already pass the deadline (1 ms): no retry at all.
    let policy = RetryPolicy::new()
        .with_delay(Duration::from_secs(1))
        .with_jitter(Jitter::None)
        .with_deadline(Some(Duration::from_millis(1)));

    let before = snapshot();
    let err = retry_sync(&policy, || insert(&conn)).unwrap_err();
    let d = snapshot().since(&before);
    lock.release().unwrap();

    assert_eq!(code_of(&err), Some(ffi::SQLITE_BUSY));
    let mut expected = MetricsSnapshot::default();
    expected.busy_by_code[BusyCode::Busy.index()] = 1;
    expected.calls_gave_up = 1;
    assert_eq!(d, expected, "attempts count only calls that retried");
    assert_eq!(
        d.to_string(),
        "retries 0 | calls retried 0 recovered 0 gave up 1 | attempts 0 | slept 0.0 ms\n  \
         SQLITE_BUSY                busy        1 retried        0\n"
    );
}

#[test]
fn success_and_other_errors_touch_no_counter() {
    let _serial = serial();
    let db = TempDb::new();
    let conn = impatient(db.path());
    conn.execute_batch("CREATE TABLE u (id INTEGER PRIMARY KEY); INSERT INTO u VALUES (1);")
        .unwrap();

    let before = snapshot();
    retry_sync(&exact_policy(5), || insert(&conn)).unwrap();
    let err = retry_sync(&exact_policy(5), || {
        conn.execute("INSERT INTO u VALUES (1)", []).map(drop)
    })
    .unwrap_err();
    let d = snapshot().since(&before);

    assert_eq!(
        code_of(&err),
        Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY),
        "returned at once: {err}"
    );
    assert_eq!(d, MetricsSnapshot::default(), "{d:?}");
    assert_eq!(
        d.to_string(),
        "retries 0 | calls retried 0 recovered 0 gave up 0 | attempts 0 | slept 0.0 ms\n"
    );
}

#[test]
fn each_code_is_counted_under_its_own_index() {
    let _serial = serial();
    let db = TempDb::new();
    let conn = impatient(db.path());

    // SQLITE_BUSY_SNAPSHOT (517), produced by SQLite: the first attempt returns it.
    let mut attempt = 0;
    let before = snapshot();
    retry_sync(&exact_policy(5), || {
        attempt += 1;
        if attempt == 1 {
            return Err(force_busy_snapshot(db.path()).unwrap());
        }
        insert(&conn)
    })
    .unwrap();
    let snap = snapshot().since(&before);
    assert_eq!(snap.busy_for(BusyCode::BusySnapshot), 1, "{snap:?}");
    assert_eq!(snap.retries_for(BusyCode::BusySnapshot), 1);
    assert_eq!(snap.busy_by_code, [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(snap.retries(), 1);

    // SQLITE_LOCKED (6), produced by SQLite: dropping a table while a statement of the
    // same connection is still reading it. The reading statement ends with the first
    // attempt, so the second gets through.
    conn.execute_batch("CREATE TABLE v (x INTEGER); INSERT INTO v VALUES (1), (2);")
        .unwrap();
    let mut reading = conn.prepare("SELECT x FROM v").unwrap();
    let mut attempt = 0;
    let before = snapshot();
    retry_sync(&exact_policy(5), || {
        attempt += 1;
        if attempt == 1 {
            let mut rows = reading.query([])?;
            rows.next()?; // one row read: the statement is still running
            return conn.execute_batch("DROP TABLE v");
        }
        conn.execute_batch("DROP TABLE v")
    })
    .unwrap();
    let locked = snapshot().since(&before);
    assert_eq!(attempt, 2);
    assert_eq!(locked.busy_for(BusyCode::Locked), 1, "{locked:?}");
    assert_eq!(locked.retries_for(BusyCode::Locked), 1);
    assert_eq!(locked.busy_by_code, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    assert_eq!(
        locked.to_string(),
        "retries 1 | calls retried 1 recovered 1 gave up 0 | attempts 2 | slept 1.0 ms\n  \
         SQLITE_LOCKED              busy        1 retried        1\n"
    );
}

#[test]
fn since_subtracts_every_field_and_never_underflows() {
    let mut earlier = MetricsSnapshot::default();
    let mut later = MetricsSnapshot::default();
    for (i, code) in BusyCode::ALL.into_iter().enumerate() {
        let i = i as u64;
        earlier.busy_by_code[code.index()] = i;
        later.busy_by_code[code.index()] = 10 * i + 1;
        earlier.retries_by_code[code.index()] = i;
        later.retries_by_code[code.index()] = 5 * i + 2;
    }
    earlier.calls_retried = 1;
    later.calls_retried = 4;
    earlier.calls_recovered = 2;
    later.calls_recovered = 7;
    earlier.calls_gave_up = 3;
    later.calls_gave_up = 11;
    earlier.attempts = 4;
    later.attempts = 20;
    earlier.slept = Duration::from_millis(5);
    later.slept = Duration::from_millis(1505);

    let d = later.since(&earlier);
    assert_eq!(d.busy_by_code, [1, 10, 19, 28, 37, 46, 55, 64, 73, 82]);
    assert_eq!(d.retries_by_code, [2, 6, 10, 14, 18, 22, 26, 30, 34, 38]);
    assert_eq!(d.retries(), 200);
    assert_eq!(d.retries_for(BusyCode::SerializationFailure), 30);
    assert_eq!(d.busy_for(BusyCode::LockNotAvailable), 82);
    assert_eq!(d.retries_for(BusyCode::LockedVtab), 26);
    assert_eq!(d.busy_for(BusyCode::BusyRecovery), 10);
    assert_eq!(d.calls_retried, 3);
    assert_eq!(d.calls_recovered, 5);
    assert_eq!(d.calls_gave_up, 8);
    assert_eq!(d.attempts, 16);
    assert_eq!(d.slept, Duration::from_millis(1500));

    // Backwards (an earlier snapshot taken as the later one): zero, not a wrap.
    assert_eq!(earlier.since(&later), MetricsSnapshot::default());
    assert_eq!(later.since(&later), MetricsSnapshot::default());

    // Display lists the codes that saw anything, in `BusyCode::ALL` order, with SQLite's
    // names and PostgreSQL's names and SQLSTATEs; a code with retries but no busy count is
    // listed too.
    let mut only = MetricsSnapshot::default();
    only.retries_by_code[BusyCode::LockedVtab.index()] = 3;
    only.busy_by_code[BusyCode::BusyRecovery.index()] = 12345678;
    only.retries_by_code[BusyCode::SerializationFailure.index()] = 4;
    only.busy_by_code[BusyCode::SerializationFailure.index()] = 5;
    only.slept = Duration::from_micros(2_500);
    assert_eq!(
        only.to_string(),
        "retries 7 | calls retried 0 recovered 0 gave up 0 | attempts 0 | slept 2.5 ms\n  \
         SQLITE_BUSY_RECOVERY       busy 12345678 retried        0\n  \
         SQLITE_LOCKED_VTAB         busy        0 retried        3\n  \
         serialization_failure (40001) busy        5 retried        4\n"
    );
    assert_eq!(
        d.to_string().lines().count(),
        1 + BusyCode::ALL.len(),
        "{d}"
    );
}

// --- RetryEvent: slept and location ----------------------------------------------------------

/// What the hook saw, per retry: (attempt, code, delay, slept, function, location).
type Seen = (
    u32,
    BusyCode,
    Duration,
    Duration,
    &'static str,
    &'static Location<'static>,
);

static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
static HELD: Mutex<Option<WriteLock>> = Mutex::new(None);

/// Records the event; on the second retry, releases the held lock so the next attempt
/// gets through.
fn record_and_release_on_second(event: &RetryEvent) {
    SEEN.lock().unwrap_or_else(PoisonError::into_inner).push((
        event.attempt,
        event.code,
        event.delay,
        event.slept,
        event.function,
        event.location,
    ));
    if event.attempt == 2 {
        let lock = HELD.lock().unwrap_or_else(PoisonError::into_inner).take();
        lock.expect("the lock is held until the second retry")
            .release()
            .unwrap();
    }
}

/// The line of the `#[db_retry]` attribute below: under the attribute, an event's
/// `location` is where the retried function is written.
const RETRIED_AT: u32 = line!() + 1;
#[db_retry(max_retries = 5, delay_ms = 2, jitter = "none", on_retry = record_and_release_on_second)]
fn write_past_lock(conn: &Connection) -> luca_core::Result<()> {
    insert(conn)?;
    Ok(())
}

#[test]
fn retry_events_carry_slept_so_far_and_the_functions_location() {
    let _serial = serial();
    SEEN.lock().unwrap_or_else(PoisonError::into_inner).clear();
    let db = TempDb::new();
    let conn = impatient(db.path());
    *HELD.lock().unwrap_or_else(PoisonError::into_inner) =
        Some(WriteLock::hold(db.path()).unwrap());

    let before = snapshot();
    let outcome = write_past_lock(&conn);
    let d = snapshot().since(&before);
    outcome.unwrap();
    assert_eq!(rows(&conn), 1);

    let seen = std::mem::take(&mut *SEEN.lock().unwrap_or_else(PoisonError::into_inner));
    assert_eq!(seen.len(), 2, "{seen:?}");
    let ms = Duration::from_millis;
    // (attempt, code, delay, slept): slept is the time slept before this retry.
    let summary: Vec<_> = seen.iter().map(|s| (s.0, s.1, s.2, s.3)).collect();
    assert_eq!(
        summary,
        [
            (1, BusyCode::Busy, ms(2), ms(0)),
            (2, BusyCode::Busy, ms(4), ms(2)),
        ]
    );
    for (.., function, location) in &seen {
        assert_eq!(*function, concat!(module_path!(), "::write_past_lock"));
        assert_eq!(
            location.file(),
            file!(),
            "where the retried function is written"
        );
        assert_eq!(location.line(), RETRIED_AT, "the `#[db_retry]` line");
    }
    // The metrics agree with the events.
    assert_eq!(d.retries(), 2);
    assert_eq!(d.attempts, 3);
    assert_eq!(d.calls_recovered, 1);
    assert_eq!(d.slept, ms(2 + 4));
}

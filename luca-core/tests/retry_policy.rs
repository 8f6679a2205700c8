//! `RetryPolicy` schedule and jitter bounds, `BusyCode` classification, `retry_sync` with
//! closures, and `classify` through every error shape the design names.

use std::collections::HashSet;
use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use luca_core::retry::{BusyCode, Engine, Jitter, RetryPolicy, Retryable, classify, retry_sync};
use luca_core::rusqlite;

const KINDS: [Jitter; 4] = [
    Jitter::None,
    Jitter::Full,
    Jitter::Equal,
    Jitter::Decorrelated,
];

fn sqlite_err(code: i32) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
}

fn ns(d: Duration) -> u128 {
    d.as_nanos()
}

/// A small deterministic generator, so a failing case can be reproduced from its seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let i = usize::try_from(self.next() % items.len() as u64).unwrap();
        items[i]
    }
}

/// Base delays: sub-millisecond up to the 30 s cap. Caps: below, at and above the base,
/// up to one hour. Every pair reaches its cap within 32 doublings (1 µs · 2^32 > 1 h), the
/// range real policies live in.
const DELAYS: [Duration; 8] = [
    Duration::from_micros(1),
    Duration::from_micros(3),
    Duration::from_micros(750),
    Duration::from_millis(1),
    Duration::from_millis(7),
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(30),
];
const MAX_DELAYS: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_micros(1),
    Duration::from_millis(1),
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_secs(2),
    Duration::from_secs(30),
    Duration::from_secs(3600),
];
const PREVIOUS: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_micros(3),
    Duration::from_millis(2),
    Duration::from_millis(150),
    Duration::from_secs(5),
    Duration::from_secs(90),
    Duration::from_secs(7200),
];

/// The documented formula, computed independently in `u128` nanoseconds:
/// `b = min(max(max_delay, delay), delay · 2^n)`.
fn expected_backoff(delay: Duration, max_delay: Duration, n: u32) -> u128 {
    let cap = ns(max_delay).max(ns(delay));
    if n >= 64 {
        return if ns(delay) == 0 { 0 } else { cap };
    }
    ns(delay).saturating_mul(1u128 << n).min(cap)
}

/// The documented range for each jitter kind, in nanoseconds.
fn expected_bounds(
    jitter: Jitter,
    delay: Duration,
    max_delay: Duration,
    n: u32,
    previous: Duration,
) -> (u128, u128) {
    let b = expected_backoff(delay, max_delay, n);
    let cap = ns(max_delay).max(ns(delay));
    match jitter {
        Jitter::None => (b, b),
        Jitter::Full => (0, b),
        Jitter::Equal => (b / 2, b),
        Jitter::Decorrelated => {
            // The previous delay is never below the base delay in a real schedule; a
            // smaller one counts as the base delay.
            let prev = ns(previous).max(ns(delay));
            (ns(delay), prev.saturating_mul(3).min(cap))
        }
        other => panic!("unknown jitter kind {other:?}"),
    }
}

#[test]
fn every_draw_lies_within_the_documented_bounds() {
    for (k, jitter) in KINDS.into_iter().enumerate() {
        let mut rng = SplitMix(0x5EED_0000 + k as u64);
        for draw in 0..10_000u32 {
            let delay = rng.pick(&DELAYS);
            let max_delay = rng.pick(&MAX_DELAYS);
            let previous = rng.pick(&PREVIOUS);
            let n = draw % 41;
            let policy = RetryPolicy::new()
                .with_delay(delay)
                .with_max_delay(max_delay)
                .with_jitter(jitter);
            let case = format!(
                "jitter {jitter}, delay {delay:?}, max_delay {max_delay:?}, n {n}, previous {previous:?}"
            );

            assert_eq!(
                ns(policy.backoff(n)),
                expected_backoff(delay, max_delay, n),
                "backoff: {case}"
            );
            let (low, high) = policy.delay_bounds(n, previous);
            let (want_low, want_high) = expected_bounds(jitter, delay, max_delay, n, previous);
            assert_eq!(
                (ns(low), ns(high)),
                (want_low, want_high),
                "delay_bounds: {case}"
            );
            assert!(low <= high, "empty range: {case}");
            assert!(high <= policy.max_delay(), "above the cap: {case}");

            let d = policy.delay_for(n, previous);
            assert!(
                low <= d && d <= high,
                "{d:?} outside [{low:?}, {high:?}]: {case}"
            );
            if jitter == Jitter::None {
                assert_eq!(d, policy.backoff(n), "no jitter must be exact: {case}");
            }
        }
    }
}

#[test]
fn random_kinds_do_not_repeat_one_value() {
    let policy = RetryPolicy::new()
        .with_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_secs(10));
    for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
        let policy = policy.with_jitter(jitter);
        for n in [0, 3, 9] {
            let previous = Duration::from_millis(40);
            let draws: HashSet<Duration> =
                (0..1_000).map(|_| policy.delay_for(n, previous)).collect();
            assert!(
                draws.len() > 900,
                "{jitter}, n {n}: only {} distinct delays in 1000 draws",
                draws.len()
            );
        }
    }
    let exact = policy.with_jitter(Jitter::None);
    let draws: HashSet<Duration> = (0..1_000)
        .map(|_| exact.delay_for(4, exact.delay()))
        .collect();
    assert_eq!(draws.len(), 1);
    assert_eq!(draws.into_iter().next(), Some(Duration::from_millis(160)));
}

#[test]
fn full_and_equal_draws_are_centred() {
    // Uniform draws over [lo, hi]: the mean of 10 000 lies within a few percent of the
    // middle (ten standard deviations is 3 % of the range).
    let policy = RetryPolicy::new()
        .with_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(60));
    for jitter in [Jitter::Full, Jitter::Equal] {
        let policy = policy.with_jitter(jitter);
        let (lo, hi) = policy.delay_bounds(3, policy.delay());
        let sum: f64 = (0..10_000)
            .map(|_| policy.delay_for(3, policy.delay()).as_secs_f64())
            .sum();
        let mean = sum / 10_000.0;
        let mid = (lo.as_secs_f64() + hi.as_secs_f64()) / 2.0;
        let width = hi.as_secs_f64() - lo.as_secs_f64();
        assert!(
            (mean - mid).abs() < 0.03 * width,
            "{jitter}: mean {mean} s, expected about {mid} s"
        );
    }
}

#[test]
fn decorrelated_ignores_the_retry_index() {
    let policy = RetryPolicy::new()
        .with_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter(Jitter::Decorrelated);
    let previous = Duration::from_millis(20);
    for n in 0..40 {
        assert_eq!(
            policy.delay_bounds(n, previous),
            (Duration::from_millis(5), Duration::from_millis(60))
        );
    }
}

#[test]
fn schedule_without_jitter_doubles_up_to_the_cap() {
    let policy = RetryPolicy::new()
        .with_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(1_000))
        .with_jitter(Jitter::None);
    let schedule: Vec<u128> = (0..8).map(|n| policy.backoff(n).as_millis()).collect();
    assert_eq!(schedule, [100, 200, 400, 800, 1_000, 1_000, 1_000, 1_000]);

    // A cap below the base delay acts as the base delay.
    let low_cap = policy.with_max_delay(Duration::from_millis(10));
    assert_eq!(low_cap.max_delay(), Duration::from_millis(100));
    assert_eq!(low_cap.backoff(5), Duration::from_millis(100));
}

#[test]
fn backoff_saturates_without_panicking() {
    let huge = RetryPolicy::new()
        .with_delay(Duration::MAX)
        .with_max_delay(Duration::MAX);
    let big = RetryPolicy::new()
        .with_delay(Duration::from_secs(u64::MAX / 4))
        .with_max_delay(Duration::MAX);
    let zero = RetryPolicy::new()
        .with_delay(Duration::ZERO)
        .with_max_delay(Duration::ZERO);
    let capped = RetryPolicy::new()
        .with_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30));
    for n in [
        0,
        1,
        31,
        32,
        33,
        63,
        64,
        65,
        127,
        128,
        1_000,
        u32::MAX - 1,
        u32::MAX,
    ] {
        assert_eq!(huge.backoff(n), Duration::MAX, "n {n}");
        if n >= 3 {
            assert_eq!(big.backoff(n), Duration::MAX, "n {n}");
        }
        assert_eq!(zero.backoff(n), Duration::ZERO, "n {n}");
        if n >= 9 {
            assert_eq!(capped.backoff(n), Duration::from_secs(30), "n {n}");
        }
        for jitter in KINDS {
            for policy in [huge, big, zero, capped] {
                let policy = policy.with_jitter(jitter);
                let (lo, hi) = policy.delay_bounds(n, Duration::MAX);
                assert!(lo <= hi, "{jitter} n {n}: {lo:?} > {hi:?}");
                // Must not panic, whatever it draws, and must stay within its bounds.
                for previous in [Duration::MAX, Duration::ZERO] {
                    let (lo, hi) = policy.delay_bounds(n, previous);
                    let d = policy.delay_for(n, previous);
                    assert!(
                        lo <= d && d <= hi,
                        "{jitter} n {n} previous {previous:?}: {d:?} outside [{lo:?}, {hi:?}]"
                    );
                }
            }
        }
    }
}

#[test]
fn policy_accessors_and_defaults() {
    let p = RetryPolicy::default();
    assert_eq!(p, RetryPolicy::new());
    assert_eq!(p.max_retries(), 5);
    assert_eq!(p.delay(), Duration::from_millis(100));
    assert_eq!(p.max_delay(), Duration::from_secs(30));
    assert_eq!(p.jitter(), Jitter::Full);
    assert_eq!(p.deadline(), None);
    let p = p
        .with_max_retries(0)
        .with_deadline(Some(Duration::from_secs(1)));
    assert_eq!(p.max_retries(), 0);
    assert_eq!(p.deadline(), Some(Duration::from_secs(1)));
    for jitter in KINDS {
        assert_eq!(Jitter::from_name(jitter.name()), Some(jitter));
        assert_eq!(jitter.to_string(), jitter.name());
    }
    assert_eq!(Jitter::from_name("Full"), None);
    assert_eq!(Jitter::from_name(""), None);
}

// --- BusyCode --------------------------------------------------------------------------

#[test]
fn from_extended_maps_all_seven_codes() {
    let table = [
        (5, BusyCode::Busy, "SQLITE_BUSY"),
        (261, BusyCode::BusyRecovery, "SQLITE_BUSY_RECOVERY"),
        (517, BusyCode::BusySnapshot, "SQLITE_BUSY_SNAPSHOT"),
        (773, BusyCode::BusyTimeout, "SQLITE_BUSY_TIMEOUT"),
        (6, BusyCode::Locked, "SQLITE_LOCKED"),
        (
            262,
            BusyCode::LockedSharedCache,
            "SQLITE_LOCKED_SHAREDCACHE",
        ),
        (518, BusyCode::LockedVtab, "SQLITE_LOCKED_VTAB"),
    ];
    assert_eq!(
        BusyCode::ALL.len(),
        table.len() + 3,
        "7 SQLite codes, 3 PostgreSQL"
    );
    for (i, (code, busy, name)) in table.into_iter().enumerate() {
        assert_eq!(BusyCode::from_extended(code), Some(busy), "{code}");
        assert_eq!(busy.extended_code(), Some(code));
        assert_eq!(busy.sqlstate(), None);
        assert_eq!(busy.engine(), Engine::Sqlite);
        assert_eq!(busy.name(), name);
        assert_eq!(busy.to_string(), name);
        assert_eq!(busy.index(), i);
        assert_eq!(BusyCode::ALL[i], busy);
        // The same code inside a real rusqlite error.
        assert_eq!(sqlite_err(code).busy_code(), Some(busy));
    }
}

#[test]
fn from_sqlstate_maps_the_three_postgres_codes_and_nothing_else() {
    let table = [
        (
            "40001",
            BusyCode::SerializationFailure,
            "serialization_failure",
        ),
        ("40P01", BusyCode::DeadlockDetected, "deadlock_detected"),
        ("55P03", BusyCode::LockNotAvailable, "lock_not_available"),
    ];
    for (i, (state, busy, name)) in table.into_iter().enumerate() {
        assert_eq!(BusyCode::from_sqlstate(state), Some(busy), "{state}");
        assert_eq!(busy.sqlstate(), Some(state));
        assert_eq!(busy.extended_code(), None);
        assert_eq!(busy.engine(), Engine::Postgres);
        assert_eq!(busy.name(), name);
        assert_eq!(busy.to_string(), format!("{name} ({state})"));
        assert_eq!(busy.index(), 7 + i);
        assert_eq!(BusyCode::ALL[7 + i], busy);
    }
    // unique_violation, foreign_key_violation, syntax_error, query_canceled,
    // admin_shutdown, connection_failure, transaction_rollback (the class, not a code
    // luca retries), in_failed_sql_transaction, lowercase and partial forms.
    for state in [
        "23505", "23503", "42601", "57014", "57P01", "08006", "40000", "25P02", "40p01", "4000",
        "400011", "", "5",
    ] {
        assert_eq!(BusyCode::from_sqlstate(state), None, "{state:?}");
    }
}

#[test]
fn lock_not_available_is_retried_only_when_the_policy_opts_in() {
    let policy = RetryPolicy::new().with_delay(Duration::ZERO);
    assert!(!policy.lock_not_available());
    assert!(!policy.retries(BusyCode::LockNotAvailable));
    for code in BusyCode::ALL {
        if code != BusyCode::LockNotAvailable {
            assert!(policy.retries(code), "{code}");
        }
    }
    let opted = policy.with_lock_not_available(true);
    assert!(opted.retries(BusyCode::LockNotAvailable));
    assert!(
        !opted
            .with_lock_not_available(false)
            .retries(BusyCode::LockNotAvailable)
    );

    // Through `retry_sync`, with an error that classifies as 55P03.
    #[derive(Debug)]
    struct NoWait;
    impl Retryable for NoWait {
        fn busy_code(&self) -> Option<BusyCode> {
            Some(BusyCode::LockNotAvailable)
        }
    }
    let mut calls = 0;
    let r: Result<(), NoWait> = retry_sync(&policy, || {
        calls += 1;
        Err(NoWait)
    });
    assert!(r.is_err());
    assert_eq!(calls, 1, "not opted in: returned at once");
    let mut calls = 0;
    let r: Result<(), NoWait> = retry_sync(&opted.with_max_retries(3), || {
        calls += 1;
        Err(NoWait)
    });
    assert!(r.is_err());
    assert_eq!(calls, 4, "opted in: retried until the retries ran out");
}

#[test]
fn unknown_extended_codes_fall_back_to_their_primary_code() {
    // Extended codes SQLite might add later: primary 5 → Busy, primary 6 → Locked.
    for code in [5 | (4 << 8), 5 | (9 << 8), 5 | (200 << 8), 5 | (1 << 20)] {
        assert_eq!(
            BusyCode::from_extended(code),
            Some(BusyCode::Busy),
            "{code}"
        );
    }
    for code in [6 | (3 << 8), 6 | (7 << 8), 6 | (255 << 8), 6 | (1 << 20)] {
        assert_eq!(
            BusyCode::from_extended(code),
            Some(BusyCode::Locked),
            "{code}"
        );
    }
}

#[test]
fn non_busy_codes_are_never_retried() {
    // CONSTRAINT, CONSTRAINT_PRIMARYKEY, CONSTRAINT_UNIQUE, IOERR, CORRUPT, FULL, READONLY,
    // MISUSE, plus OK/ERROR/CANTOPEN/NOTADB and the IOERR_* family.
    let codes = [
        19, 1555, 2067, 10, 11, 13, 8, 21, 0, 1, 14, 26, 266, 522, 778, 3338,
    ];
    for code in codes {
        assert_eq!(BusyCode::from_extended(code), None, "{code}");
        assert_eq!(sqlite_err(code).busy_code(), None, "{code}");
    }
    // rusqlite errors that are not SQLite failures.
    assert_eq!(rusqlite::Error::InvalidQuery.busy_code(), None);
    assert_eq!(rusqlite::Error::QueryReturnedNoRows.busy_code(), None);
}

// --- retry_sync ------------------------------------------------------------------------

fn fast_policy(max_retries: u32) -> RetryPolicy {
    RetryPolicy::new()
        .with_max_retries(max_retries)
        .with_delay(Duration::from_micros(100))
        .with_max_delay(Duration::from_millis(1))
        .with_jitter(Jitter::Full)
}

#[test]
fn retry_sync_retries_busy_until_success() {
    let calls = AtomicU32::new(0);
    let out: Result<u32, rusqlite::Error> = retry_sync(&fast_policy(5), || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= 3 { Err(sqlite_err(517)) } else { Ok(n) }
    });
    assert_eq!(out.unwrap(), 4);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[test]
fn retry_sync_returns_a_non_busy_error_at_once() {
    let calls = AtomicU32::new(0);
    let out: Result<(), rusqlite::Error> = retry_sync(&fast_policy(5), || {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(2067),
            Some("UNIQUE constraint failed: t.id".into()),
        ))
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let err = out.unwrap_err();
    assert_eq!(err.sqlite_error().unwrap().extended_code, 2067);
    assert!(err.to_string().contains("UNIQUE"), "{err}");
}

#[test]
fn retry_sync_exhaustion_returns_the_last_error_unchanged() {
    let calls = AtomicU32::new(0);
    let out: Result<(), rusqlite::Error> = retry_sync(&fast_policy(3), || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(773),
            Some(format!("attempt {n}")),
        ))
    });
    assert_eq!(calls.load(Ordering::SeqCst), 4, "1 attempt + 3 retries");
    let err = out.unwrap_err();
    assert_eq!(err.sqlite_error().unwrap().extended_code, 773);
    assert_eq!(err.busy_code(), Some(BusyCode::BusyTimeout));
    assert!(err.to_string().contains("attempt 4"), "{err}");
}

#[test]
fn retry_sync_with_zero_retries_makes_one_attempt() {
    let calls = AtomicU32::new(0);
    let out: Result<(), luca_core::Error> = retry_sync(&fast_policy(0), || {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(sqlite_err(5).into())
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(out.unwrap_err().extended_code(), Some(5));
}

// --- classify --------------------------------------------------------------------------

#[derive(Debug)]
struct Layer {
    name: &'static str,
    inner: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Layer {
    fn wrap(name: &'static str, inner: impl StdError + Send + Sync + 'static) -> Layer {
        Layer {
            name,
            inner: Some(Box::new(inner)),
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl StdError for Layer {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[test]
fn classify_walks_the_source_chain() {
    assert_eq!(classify(&sqlite_err(517)), Some(BusyCode::BusySnapshot));
    let deep = Layer::wrap("a", Layer::wrap("b", Layer::wrap("c", sqlite_err(262))));
    assert_eq!(classify(&deep), Some(BusyCode::LockedSharedCache));
    let not_busy = Layer::wrap("a", Layer::wrap("b", sqlite_err(1555)));
    assert_eq!(classify(&not_busy), None);
    let no_sqlite = Layer::wrap(
        "a",
        Layer {
            name: "b",
            inner: None,
        },
    );
    assert_eq!(classify(&no_sqlite), None);
    // The first SQLite error met decides, even if a busy one lies deeper.
    let shadowed = Layer::wrap(
        "a",
        luca_core::Error::Open {
            path: "x.db".into(),
            source: sqlite_err(26),
        },
    );
    assert_eq!(classify(&shadowed), None);
    // io::Error is looked through to what it wraps.
    let io = std::io::Error::other(Layer::wrap("a", sqlite_err(5)));
    assert_eq!(classify(&io), Some(BusyCode::Busy));
    assert_eq!(
        classify(&Layer::wrap("outer", std::io::Error::other(sqlite_err(6)))),
        Some(BusyCode::Locked)
    );
}

#[test]
fn classify_stops_on_a_very_long_chain() {
    // 200 layers deep: the busy error is out of reach (the walk is bounded), and the call
    // returns instead of looping or overflowing the stack.
    let mut e = Layer::wrap("leaf", sqlite_err(5));
    for _ in 0..200 {
        e = Layer::wrap("layer", e);
    }
    assert_eq!(classify(&e), None);
    let mut shallow = Layer::wrap("leaf", sqlite_err(5));
    for _ in 0..10 {
        shallow = Layer::wrap("layer", shallow);
    }
    assert_eq!(classify(&shallow), Some(BusyCode::Busy));
}

#[test]
fn classify_through_luca_error() {
    let e = luca_core::Error::from(sqlite_err(517));
    assert_eq!(e.busy_code(), Some(BusyCode::BusySnapshot));
    assert_eq!(classify(&e), Some(BusyCode::BusySnapshot));
    assert_eq!(e.extended_code(), Some(517));

    let open = luca_core::Error::Open {
        path: "busy.db".into(),
        source: sqlite_err(5),
    };
    assert_eq!(open.busy_code(), Some(BusyCode::Busy));
    assert_eq!(
        classify(&Layer::wrap("job", open)),
        Some(BusyCode::Busy),
        "luca_core::Error deep in a chain"
    );

    let not_wal = luca_core::Error::NotWal {
        path: "x.db".into(),
        mode: "delete".into(),
    };
    assert_eq!(not_wal.busy_code(), None);
    assert_eq!(classify(&not_wal), None);
    let constraint = luca_core::Error::from(sqlite_err(1555));
    assert_eq!(constraint.busy_code(), None);
}

#[test]
fn classify_through_boxed_errors() {
    let boxed: Box<dyn StdError + Send + Sync> = Box::new(sqlite_err(518));
    assert_eq!(boxed.busy_code(), Some(BusyCode::LockedVtab));
    let boxed: Box<dyn StdError + Send + Sync> =
        Box::new(Layer::wrap("a", luca_core::Error::from(sqlite_err(261))));
    assert_eq!(boxed.busy_code(), Some(BusyCode::BusyRecovery));
    let boxed: Box<dyn StdError + Send + Sync> = "plain message".into();
    assert_eq!(boxed.busy_code(), None);
    let local: Box<dyn StdError> = Box::new(sqlite_err(6));
    assert_eq!(local.busy_code(), Some(BusyCode::Locked));

    // retry_sync accepts the boxed error type directly.
    let calls = AtomicU32::new(0);
    let out: Result<u32, Box<dyn StdError + Send + Sync>> = retry_sync(&fast_policy(3), || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 1 {
            Err(Layer::wrap("a", sqlite_err(5)).into())
        } else {
            Ok(n)
        }
    });
    assert_eq!(out.unwrap(), 2);
}

#[cfg(feature = "anyhow")]
#[test]
fn classify_through_anyhow() {
    use anyhow::Context as _;

    let e = anyhow::Error::from(sqlite_err(517));
    assert_eq!(e.busy_code(), Some(BusyCode::BusySnapshot));

    let with_context: anyhow::Error = Err::<(), _>(sqlite_err(5))
        .context("while inserting a page")
        .unwrap_err();
    assert_eq!(with_context.busy_code(), Some(BusyCode::Busy));

    let layered = anyhow::Error::new(Layer::wrap("a", luca_core::Error::from(sqlite_err(6))))
        .context("outer")
        .context("outermost");
    assert_eq!(layered.busy_code(), Some(BusyCode::Locked));

    assert_eq!(anyhow::anyhow!("no sqlite here").busy_code(), None);
    assert_eq!(anyhow::Error::from(sqlite_err(2067)).busy_code(), None);

    let calls = AtomicU32::new(0);
    let out: anyhow::Result<()> = retry_sync(&fast_policy(2), || {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(sqlite_err(5)).context("always busy")
    });
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(out.unwrap_err().to_string(), "always busy");
}

#[test]
fn backoff_keeps_doubling_past_32_retries() {
    let policy = RetryPolicy::new()
        .with_delay(Duration::from_nanos(1))
        .with_max_delay(Duration::from_secs(30));
    assert_eq!(policy.backoff(34), Duration::from_nanos(1 << 34));
    assert_eq!(policy.backoff(39), Duration::from_secs(30));
}

#[test]
fn draws_stay_in_bounds_beyond_the_u64_nanosecond_range() {
    let policy = RetryPolicy::new()
        .with_delay(Duration::from_secs(30))
        .with_max_delay(Duration::MAX);
    for jitter in KINDS {
        let policy = policy.with_jitter(jitter);
        for n in 31..45 {
            let (lo, hi) = policy.delay_bounds(n, Duration::from_secs(30));
            for _ in 0..100 {
                let d = policy.delay_for(n, Duration::from_secs(30));
                assert!(
                    lo <= d && d <= hi,
                    "{jitter} n {n}: {d:?} not in {lo:?}..={hi:?}"
                );
            }
        }
    }
}

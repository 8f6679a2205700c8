//! Busy-aware retries: which database errors are worth retrying, and the backoff schedule.
//!
//! SQLite answers a write that meets another writer with `SQLITE_BUSY` (or one of its
//! extended codes), and a shared-cache or virtual-table conflict with `SQLITE_LOCKED`.
//! PostgreSQL (with the `postgres` feature) answers a transaction that lost a race with
//! SQLSTATE `40001` (serialization_failure) or `40P01` (deadlock_detected). Those, and
//! only those, are retried ([`BusyCode`] lists them side by side; `55P03`
//! lock_not_available only when the policy opts in with
//! [`RetryPolicy::with_lock_not_available`]): the whole attempt (the whole function under
//! [`#[db_retry]`](crate::db_retry), the whole closure under [`retry_sync`] /
//! [`retry_async`]) runs again after a backoff. A `SQLITE_BUSY_SNAPSHOT` or a `40001` can
//! only be cured that way: the transaction that read a stale snapshot must be rolled back
//! and run again from its start, including the logic that chose its statements.
//!
//! The delay before retry `n` (counting from 0) is `min(max_delay, delay · 2^n)` with the
//! [`Jitter`] applied. [`#[db_retry]`](crate::db_retry), [`retry_sync`] and
//! [`retry_async`] share one implementation of this schedule.
//!
//! ```
//! use std::time::Duration;
//! use luca_core::retry::{retry_sync, Jitter, RetryPolicy};
//!
//! let policy = RetryPolicy::new()
//!     .with_max_retries(3)
//!     .with_delay(Duration::from_millis(10))
//!     .with_jitter(Jitter::Equal);
//! let conn = rusqlite::Connection::open_in_memory()?;
//! let n: i64 = retry_sync(&policy, || conn.query_row("SELECT 40 + 2", [], |r| r.get(0)))?;
//! assert_eq!(n, 42);
//! # Ok::<(), rusqlite::Error>(())
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::time::{Duration, Instant};

use crate::metrics;

/// Which database engine a [`BusyCode`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Engine {
    /// SQLite: the code is an extended result code.
    Sqlite,
    /// PostgreSQL, and the engines that speak its protocol (CockroachDB, YugabyteDB): the
    /// code is a SQLSTATE.
    Postgres,
}

/// Which retryable condition an error carries: a SQLite busy/locked result code or a
/// PostgreSQL SQLSTATE, side by side.
///
/// These are the only conditions luca retries. Every other SQLite result code
/// (constraint, I/O, corrupt, misuse, full, read-only, …) and every other SQLSTATE
/// (unique violation, syntax error, a lost connection, …) is returned to the caller at
/// once. [`BusyCode::LockNotAvailable`] is retried only by a policy that opts in with
/// [`RetryPolicy::with_lock_not_available`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BusyCode {
    /// `SQLITE_BUSY` (5): another connection holds a conflicting lock.
    Busy,
    /// `SQLITE_BUSY_RECOVERY` (261): another connection is recovering the WAL.
    BusyRecovery,
    /// `SQLITE_BUSY_SNAPSHOT` (517): the transaction's read snapshot is stale; only
    /// rolling back and re-running the whole transaction cures it.
    BusySnapshot,
    /// `SQLITE_BUSY_TIMEOUT` (773): a blocking WAL lock wait timed out.
    BusyTimeout,
    /// `SQLITE_LOCKED` (6): a conflict inside the same connection or shared cache.
    Locked,
    /// `SQLITE_LOCKED_SHAREDCACHE` (262): a shared-cache table lock conflict.
    LockedSharedCache,
    /// `SQLITE_LOCKED_VTAB` (518): a virtual table is locked.
    LockedVtab,
    /// PostgreSQL `40001` serialization_failure: a SERIALIZABLE (or REPEATABLE READ)
    /// transaction conflicted with a concurrent one; only re-running the whole transaction
    /// cures it.
    SerializationFailure,
    /// PostgreSQL `40P01` deadlock_detected: the server aborted this transaction to break a
    /// lock cycle.
    DeadlockDetected,
    /// PostgreSQL `55P03` lock_not_available: a `NOWAIT` or `lock_timeout` lock request
    /// failed. Retried only when the policy opts in
    /// ([`RetryPolicy::with_lock_not_available`]): a `NOWAIT` is often written to fail fast.
    LockNotAvailable,
}

impl BusyCode {
    /// How many codes there are: the length of per-code tables.
    pub const COUNT: usize = 10;

    /// Every code, in the order of [`BusyCode::index`]: SQLite's first, then PostgreSQL's.
    pub const ALL: [BusyCode; BusyCode::COUNT] = [
        BusyCode::Busy,
        BusyCode::BusyRecovery,
        BusyCode::BusySnapshot,
        BusyCode::BusyTimeout,
        BusyCode::Locked,
        BusyCode::LockedSharedCache,
        BusyCode::LockedVtab,
        BusyCode::SerializationFailure,
        BusyCode::DeadlockDetected,
        BusyCode::LockNotAvailable,
    ];

    /// Classifies an extended (or primary) SQLite result code.
    ///
    /// The seven extended codes above map to themselves; any other code whose primary
    /// code (`code & 0xff`) is `SQLITE_BUSY` or `SQLITE_LOCKED` maps to [`BusyCode::Busy`]
    /// or [`BusyCode::Locked`]; everything else is `None`.
    ///
    /// ```
    /// use luca_core::retry::BusyCode;
    /// assert_eq!(BusyCode::from_extended(517), Some(BusyCode::BusySnapshot));
    /// assert_eq!(BusyCode::from_extended(2067), None); // SQLITE_CONSTRAINT_UNIQUE
    /// ```
    pub const fn from_extended(code: i32) -> Option<BusyCode> {
        Some(match code {
            5 => BusyCode::Busy,
            261 => BusyCode::BusyRecovery,
            517 => BusyCode::BusySnapshot,
            773 => BusyCode::BusyTimeout,
            6 => BusyCode::Locked,
            262 => BusyCode::LockedSharedCache,
            518 => BusyCode::LockedVtab,
            _ => match code & 0xff {
                5 => BusyCode::Busy,
                6 => BusyCode::Locked,
                _ => return None,
            },
        })
    }

    /// Classifies a PostgreSQL SQLSTATE: `40001`, `40P01` and `55P03` map to their codes,
    /// everything else is `None`.
    ///
    /// ```
    /// use luca_core::retry::BusyCode;
    /// assert_eq!(BusyCode::from_sqlstate("40001"), Some(BusyCode::SerializationFailure));
    /// assert_eq!(BusyCode::from_sqlstate("23505"), None); // unique_violation
    /// ```
    pub fn from_sqlstate(sqlstate: &str) -> Option<BusyCode> {
        Some(match sqlstate {
            "40001" => BusyCode::SerializationFailure,
            "40P01" => BusyCode::DeadlockDetected,
            "55P03" => BusyCode::LockNotAvailable,
            _ => return None,
        })
    }

    /// The engine the code belongs to.
    pub const fn engine(self) -> Engine {
        match self {
            BusyCode::Busy
            | BusyCode::BusyRecovery
            | BusyCode::BusySnapshot
            | BusyCode::BusyTimeout
            | BusyCode::Locked
            | BusyCode::LockedSharedCache
            | BusyCode::LockedVtab => Engine::Sqlite,
            BusyCode::SerializationFailure
            | BusyCode::DeadlockDetected
            | BusyCode::LockNotAvailable => Engine::Postgres,
        }
    }

    /// SQLite's extended result code, e.g. `Some(517)` for [`BusyCode::BusySnapshot`];
    /// `None` for a PostgreSQL code.
    pub const fn extended_code(self) -> Option<i32> {
        Some(match self {
            BusyCode::Busy => 5,
            BusyCode::BusyRecovery => 261,
            BusyCode::BusySnapshot => 517,
            BusyCode::BusyTimeout => 773,
            BusyCode::Locked => 6,
            BusyCode::LockedSharedCache => 262,
            BusyCode::LockedVtab => 518,
            BusyCode::SerializationFailure
            | BusyCode::DeadlockDetected
            | BusyCode::LockNotAvailable => return None,
        })
    }

    /// PostgreSQL's SQLSTATE, e.g. `Some("40001")` for
    /// [`BusyCode::SerializationFailure`]; `None` for a SQLite code.
    pub const fn sqlstate(self) -> Option<&'static str> {
        match self {
            BusyCode::SerializationFailure => Some("40001"),
            BusyCode::DeadlockDetected => Some("40P01"),
            BusyCode::LockNotAvailable => Some("55P03"),
            _ => None,
        }
    }

    /// The engine's symbolic name: SQLite's (`"SQLITE_BUSY_SNAPSHOT"`) or PostgreSQL's
    /// condition name (`"serialization_failure"`).
    pub const fn name(self) -> &'static str {
        match self {
            BusyCode::Busy => "SQLITE_BUSY",
            BusyCode::BusyRecovery => "SQLITE_BUSY_RECOVERY",
            BusyCode::BusySnapshot => "SQLITE_BUSY_SNAPSHOT",
            BusyCode::BusyTimeout => "SQLITE_BUSY_TIMEOUT",
            BusyCode::Locked => "SQLITE_LOCKED",
            BusyCode::LockedSharedCache => "SQLITE_LOCKED_SHAREDCACHE",
            BusyCode::LockedVtab => "SQLITE_LOCKED_VTAB",
            BusyCode::SerializationFailure => "serialization_failure",
            BusyCode::DeadlockDetected => "deadlock_detected",
            BusyCode::LockNotAvailable => "lock_not_available",
        }
    }

    /// Position in [`BusyCode::ALL`], for per-code tables.
    pub const fn index(self) -> usize {
        match self {
            BusyCode::Busy => 0,
            BusyCode::BusyRecovery => 1,
            BusyCode::BusySnapshot => 2,
            BusyCode::BusyTimeout => 3,
            BusyCode::Locked => 4,
            BusyCode::LockedSharedCache => 5,
            BusyCode::LockedVtab => 6,
            BusyCode::SerializationFailure => 7,
            BusyCode::DeadlockDetected => 8,
            BusyCode::LockNotAvailable => 9,
        }
    }
}

impl fmt::Display for BusyCode {
    /// The name; a PostgreSQL code adds its SQLSTATE: `serialization_failure (40001)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sqlstate() {
            Some(state) => write!(f, "{} ({state})", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

/// An error that can tell whether it carries a retryable condition (a SQLite busy/locked
/// code, a PostgreSQL serialization failure or deadlock).
///
/// Implemented for [`rusqlite::Error`], [`crate::Error`], `Box<dyn Error + Send + Sync>`
/// and `Box<dyn Error>` (both searched along their `source()` chain), for
/// `anyhow::Error` with the `anyhow` feature, and for `tokio_postgres::Error` with the
/// `postgres` feature. Implement it for your own error type when its `source()` chain does
/// not reach the database's error; when it does, [`#[db_retry]`](crate::db_retry) finds it
/// without an impl.
///
/// ```
/// use luca_core::retry::{BusyCode, Retryable};
///
/// enum AppError { Db(rusqlite::Error), Http(u16) }
///
/// impl Retryable for AppError {
///     fn busy_code(&self) -> Option<BusyCode> {
///         match self {
///             AppError::Db(e) => e.busy_code(),
///             AppError::Http(_) => None,
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be checked for retryable database errors",
    label = "`{Self}` is neither `Retryable` nor an `Error + 'static` whose `source()` chain can hold a `rusqlite::Error` or `tokio_postgres::Error`",
    note = "implement `luca_core::retry::Retryable` for `{Self}`, or implement `std::error::Error` for it and return the database's error from `source()`"
)]
pub trait Retryable {
    /// The retryable condition this error carries, or `None` if it must not be retried.
    fn busy_code(&self) -> Option<BusyCode>;
}

#[cfg(feature = "postgres")]
impl Retryable for tokio_postgres::Error {
    fn busy_code(&self) -> Option<BusyCode> {
        BusyCode::from_sqlstate(self.code()?.code())
    }
}

impl Retryable for rusqlite::Error {
    fn busy_code(&self) -> Option<BusyCode> {
        match self {
            rusqlite::Error::SqliteFailure(e, _) => BusyCode::from_extended(e.extended_code),
            _ => None,
        }
    }
}

impl Retryable for Box<dyn StdError + Send + Sync + 'static> {
    fn busy_code(&self) -> Option<BusyCode> {
        classify(&**self)
    }
}

impl Retryable for Box<dyn StdError + 'static> {
    fn busy_code(&self) -> Option<BusyCode> {
        classify(&**self)
    }
}

#[cfg(feature = "anyhow")]
impl Retryable for anyhow::Error {
    fn busy_code(&self) -> Option<BusyCode> {
        classify(self.as_ref())
    }
}

/// How deep [`classify`] follows a `source()` chain before it stops looking.
const MAX_SOURCE_DEPTH: usize = 64;

/// Finds a retryable condition anywhere in an error's `source()` chain.
///
/// Looks at the error itself and then at each `source()` in turn (at most 64 levels),
/// and answers for the first [`rusqlite::Error`], [`rusqlite::ffi::Error`],
/// [`crate::Error`] or (with the `postgres` feature) `tokio_postgres::Error` or
/// `tokio_postgres::error::DbError` it meets. The `ffi::Error` and the `DbError` are what
/// a chain holds when a wrapper forwards `source()` past the driver's error (thiserror's
/// `#[error(transparent)]` does: its `source()` is the driver error's own, the inner
/// `ffi::Error` or `DbError`). A [`std::io::Error`] is looked through to the error it
/// wraps (its own `source()` skips it).
///
/// ```
/// use luca_core::retry::{classify, BusyCode};
///
/// #[derive(Debug)]
/// struct JobFailed(rusqlite::Error);
/// impl std::fmt::Display for JobFailed {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("job failed")
///     }
/// }
/// impl std::error::Error for JobFailed {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
///
/// let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(517), None);
/// assert_eq!(classify(&JobFailed(busy)), Some(BusyCode::BusySnapshot));
/// let io = std::io::Error::other(JobFailed(rusqlite::Error::InvalidQuery));
/// assert_eq!(classify(&io), None);
/// ```
pub fn classify(error: &(dyn StdError + 'static)) -> Option<BusyCode> {
    let mut current = Some(error);
    for _ in 0..MAX_SOURCE_DEPTH {
        let e = current?;
        if let Some(e) = e.downcast_ref::<rusqlite::Error>() {
            return e.busy_code();
        }
        if let Some(e) = e.downcast_ref::<rusqlite::ffi::Error>() {
            return BusyCode::from_extended(e.extended_code);
        }
        if let Some(e) = e.downcast_ref::<crate::Error>() {
            return e.busy_code();
        }
        #[cfg(feature = "postgres")]
        {
            if let Some(e) = e.downcast_ref::<tokio_postgres::Error>() {
                return e.busy_code();
            }
            if let Some(e) = e.downcast_ref::<tokio_postgres::error::DbError>() {
                return BusyCode::from_sqlstate(e.code().code());
            }
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

/// How the delay before a retry is randomised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly `min(max_delay, delay · 2^n)`: every waiter retries in lockstep.
    None,
    /// Uniform in `[0, min(max_delay, delay · 2^n)]` (the default): spreads waiters best.
    #[default]
    Full,
    /// Half fixed, half random: uniform in `[b/2, b]` where `b = min(max_delay, delay · 2^n)`.
    Equal,
    /// Uniform in `[delay, min(max_delay, 3 · previous delay)]`, independent of `n`.
    Decorrelated,
}

impl Jitter {
    /// Parses the names the attribute accepts: `none`, `full`, `equal`, `decorrelated`.
    pub fn from_name(name: &str) -> Option<Jitter> {
        Some(match name {
            "none" => Jitter::None,
            "full" => Jitter::Full,
            "equal" => Jitter::Equal,
            "decorrelated" => Jitter::Decorrelated,
            _ => return None,
        })
    }

    /// The name [`Jitter::from_name`] accepts.
    pub const fn name(self) -> &'static str {
        match self {
            Jitter::None => "none",
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::Decorrelated => "decorrelated",
        }
    }
}

impl fmt::Display for Jitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How often and how long to retry a busy database.
///
/// Built with `const fn`s so a policy can live in a `static` or `const`:
///
/// ```
/// use std::time::Duration;
/// use luca_core::retry::{Jitter, RetryPolicy};
///
/// const POLICY: RetryPolicy = RetryPolicy::new()
///     .with_max_retries(8)
///     .with_delay(Duration::from_millis(5))
///     .with_max_delay(Duration::from_millis(200))
///     .with_jitter(Jitter::Decorrelated)
///     .with_deadline(Some(Duration::from_secs(2)));
/// assert_eq!(POLICY.backoff(0), Duration::from_millis(5));
/// assert_eq!(POLICY.backoff(10), Duration::from_millis(200));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    max_retries: u32,
    delay: Duration,
    max_delay: Duration,
    jitter: Jitter,
    deadline: Option<Duration>,
    lock_not_available: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// Default number of retries after the first attempt: 5.
    pub const DEFAULT_MAX_RETRIES: u32 = 5;
    /// Default base delay: 100 ms.
    pub const DEFAULT_DELAY: Duration = Duration::from_millis(100);
    /// Default cap on one delay: 30 s (never below the base delay).
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);

    /// The defaults: 5 retries, 100 ms base delay, 30 s cap, full jitter, no deadline,
    /// PostgreSQL's `55P03` lock_not_available not retried.
    pub const fn new() -> Self {
        RetryPolicy {
            max_retries: Self::DEFAULT_MAX_RETRIES,
            delay: Self::DEFAULT_DELAY,
            max_delay: Self::DEFAULT_MAX_DELAY,
            jitter: Jitter::Full,
            deadline: None,
            lock_not_available: false,
        }
    }

    /// Whether PostgreSQL's `55P03` lock_not_available ([`BusyCode::LockNotAvailable`]: a
    /// `NOWAIT` or `lock_timeout` lock request failed) is retried like a serialization
    /// failure. Off by default, so such an error is returned at once.
    pub const fn with_lock_not_available(mut self, retry: bool) -> Self {
        self.lock_not_available = retry;
        self
    }

    /// Whether [`BusyCode::LockNotAvailable`] is retried.
    pub const fn lock_not_available(&self) -> bool {
        self.lock_not_available
    }

    /// Whether this policy retries `code`: every code but
    /// [`BusyCode::LockNotAvailable`], which only with
    /// [`RetryPolicy::with_lock_not_available`].
    pub const fn retries(&self, code: BusyCode) -> bool {
        !matches!(code, BusyCode::LockNotAvailable) || self.lock_not_available
    }

    /// Retries after the first attempt (0 = never retry).
    pub const fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Base delay, doubled for each further retry.
    pub const fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Cap on any one delay. A cap below the base delay acts as the base delay.
    pub const fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// How delays are randomised.
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Give up once a retry would start later than this after the first attempt started.
    ///
    /// With a deadline, each call reads the clock once when it starts; without one, a call
    /// that succeeds at once never reads the clock.
    pub const fn with_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Retries after the first attempt.
    pub const fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Base delay.
    pub const fn delay(&self) -> Duration {
        self.delay
    }

    /// Effective cap on one delay: the configured cap, never below the base delay.
    pub fn max_delay(&self) -> Duration {
        self.max_delay.max(self.delay)
    }

    /// Jitter kind.
    pub const fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// Deadline, if any.
    pub const fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// The delay before retry `retry` (0-based) without jitter: `min(max_delay, delay · 2^retry)`.
    ///
    /// Computed without overflow for every `retry`: once the doubling passes the cap, the
    /// cap is returned.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self.max_delay();
        let base = self.delay.as_nanos();
        if base == 0 {
            return Duration::ZERO;
        }
        if retry >= 128 || base.leading_zeros() < retry {
            return cap;
        }
        let scaled = base << retry;
        if scaled >= cap.as_nanos() {
            cap
        } else {
            from_nanos(scaled)
        }
    }

    /// The closed range a jittered delay before retry `retry` is drawn from, given the
    /// previous delay (used only by [`Jitter::Decorrelated`]; pass the base delay before
    /// the first retry).
    pub fn delay_bounds(&self, retry: u32, previous: Duration) -> (Duration, Duration) {
        let b = self.backoff(retry);
        match self.jitter {
            Jitter::None => (b, b),
            Jitter::Full => (Duration::ZERO, b),
            Jitter::Equal => (b / 2, b),
            Jitter::Decorrelated => {
                let cap = self.max_delay();
                let high = previous.max(self.delay).saturating_mul(3).min(cap);
                (self.delay.min(cap), high)
            }
        }
    }

    /// Draws the delay before retry `retry` (0-based). See [`RetryPolicy::delay_bounds`].
    pub fn delay_for(&self, retry: u32, previous: Duration) -> Duration {
        let (low, high) = self.delay_bounds(retry, previous);
        if low >= high {
            return low;
        }
        from_nanos(fastrand::u128(low.as_nanos()..=high.as_nanos()))
    }
}

/// A `Duration` from nanoseconds; callers pass values no larger than some `Duration`'s.
fn from_nanos(ns: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(ns / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits in u32.
    Duration::new(secs, (ns % NANOS_PER_SEC) as u32)
}

/// What happens before each retry: passed to an `on_retry` hook and logged as a `tracing`
/// event (target `luca_core::retry`).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RetryEvent {
    /// The function (`module::path::name` under `#[db_retry]`, `"retry_sync"` or
    /// `"retry_async"` for closures).
    pub function: &'static str,
    /// Where the retrying call is written.
    pub location: &'static Location<'static>,
    /// The attempt that just failed (1 = the first attempt).
    pub attempt: u32,
    /// The busy/locked condition it failed with.
    pub code: BusyCode,
    /// How long the caller now sleeps before the next attempt.
    pub delay: Duration,
    /// Time slept in earlier retries of this call.
    pub slept: Duration,
}

/// A retry hook, as taken by `on_retry = path` in `#[db_retry]`.
pub type RetryHook = fn(&RetryEvent);

/// One call's progress through a [`RetryPolicy`]. Shared by the macro expansion,
/// [`retry_sync`] and [`retry_async`].
///
/// The success path only creates this value and calls [`Schedule::finish`], which does
/// nothing when no retry happened: no allocation, clock read or random draw.
#[doc(hidden)]
#[derive(Debug)]
pub struct Schedule<'p> {
    /// A copy: a schedule that borrows nothing can live in a future next to an async
    /// closure's (higher-ranked) future and still be proven `Send`.
    policy: RetryPolicy,
    _policy: std::marker::PhantomData<&'p RetryPolicy>,
    function: &'static str,
    location: &'static Location<'static>,
    hook: Option<RetryHook>,
    retries: u32,
    previous: Duration,
    slept: Duration,
    started: Option<Instant>,
    /// The call's `tracing` span, made at its first retry (calls that never retry make
    /// none); the retry and give-up events are recorded in it.
    span: Option<tracing::Span>,
    gave_up: bool,
}

impl Schedule<'static> {
    /// A schedule for one call that owns its policy (for futures that must borrow
    /// nothing across an await).
    #[inline]
    pub const fn owned(
        policy: RetryPolicy,
        function: &'static str,
        location: &'static Location<'static>,
        hook: Option<RetryHook>,
    ) -> Self {
        Schedule::begin(policy, function, location, hook)
    }
}

impl<'p> Schedule<'p> {
    /// A schedule for one call.
    #[inline]
    pub const fn new(
        policy: &'p RetryPolicy,
        function: &'static str,
        location: &'static Location<'static>,
        hook: Option<RetryHook>,
    ) -> Self {
        Schedule::begin(*policy, function, location, hook)
    }

    const fn begin(
        policy: RetryPolicy,
        function: &'static str,
        location: &'static Location<'static>,
        hook: Option<RetryHook>,
    ) -> Self {
        Schedule {
            policy,
            _policy: std::marker::PhantomData,
            function,
            location,
            hook,
            retries: 0,
            previous: policy.delay,
            slept: Duration::ZERO,
            started: None,
            span: None,
            gave_up: false,
        }
    }

    /// Uses `started` (read before the first attempt) as the start of the call.
    #[inline]
    pub const fn started_at(mut self, started: Option<Instant>) -> Self {
        self.started = started;
        self
    }

    /// Marks the start of the first attempt; reads the clock only when a deadline is set.
    #[inline]
    pub fn start(&mut self, now: impl FnOnce() -> Instant) {
        if self.policy.deadline.is_some() {
            self.started = Some(now());
        }
    }

    /// Retries so far.
    #[inline]
    pub const fn retries(&self) -> u32 {
        self.retries
    }

    /// After an attempt failed with `code`: the delay to sleep before the next attempt, or
    /// `None` when the error must be returned (not busy, a code the policy does not retry,
    /// retries exhausted, or the deadline would pass). A code the policy does not retry is
    /// treated as any other error: returned at once, not counted.
    #[inline]
    pub fn on_error(
        &mut self,
        code: Option<BusyCode>,
        now: impl FnOnce() -> Instant,
    ) -> Option<Duration> {
        let code = code?;
        if !self.policy.retries(code) {
            return None;
        }
        self.on_busy(code, now)
    }

    #[cold]
    #[inline(never)]
    fn on_busy(&mut self, code: BusyCode, now: impl FnOnce() -> Instant) -> Option<Duration> {
        let m = metrics::metrics();
        m.record_busy(code);
        let attempt = self.retries + 1;
        if self.retries >= self.policy.max_retries {
            self.give_up(code, attempt, "retries exhausted");
            return None;
        }
        let delay = self.policy.delay_for(self.retries, self.previous);
        if let Some(deadline) = self.policy.deadline {
            let now = now();
            let started = *self.started.get_or_insert(now);
            if now.saturating_duration_since(started) + delay > deadline {
                self.give_up(code, attempt, "deadline reached");
                return None;
            }
        }
        if self.retries == 0 {
            m.record_call_retried();
        }
        self.retries += 1;
        self.previous = delay;
        let event = RetryEvent {
            function: self.function,
            location: self.location,
            attempt,
            code,
            delay,
            slept: self.slept,
        };
        self.slept += delay;
        m.record_retry(code, delay);
        let function = self.function;
        self.span
            .get_or_insert_with(
                || tracing::debug_span!(target: "luca_core::retry", "db_retry", function),
            )
            .in_scope(|| {
                tracing::debug!(
                    target: "luca_core::retry",
                    function,
                    attempt,
                    code = code.name(),
                    delay_ms = delay.as_secs_f64() * 1e3,
                    "database busy; retrying"
                );
            });
        if let Some(hook) = self.hook {
            hook(&event);
        }
        Some(delay)
    }

    fn give_up(&mut self, code: BusyCode, attempt: u32, why: &'static str) {
        self.gave_up = true;
        metrics::metrics().record_gave_up();
        let warn = || {
            tracing::warn!(
                target: "luca_core::retry",
                function = self.function,
                attempt,
                code = code.name(),
                slept_ms = self.slept.as_secs_f64() * 1e3,
                "database busy; giving up: {why}"
            );
        };
        match &self.span {
            Some(span) => span.in_scope(warn),
            None => warn(),
        }
    }

    /// The call is over (success, or an error that is returned). Records the outcome of
    /// calls that retried; does nothing otherwise.
    #[inline]
    pub fn finish(&self, ok: bool) {
        if self.retries != 0 {
            self.record_finish(ok);
        }
    }

    #[cold]
    #[inline(never)]
    fn record_finish(&self, ok: bool) {
        metrics::metrics().record_finish(self.retries + 1, ok, self.gave_up);
    }
}

/// Runs `attempt` until it succeeds, fails with an error that is not busy/locked, or the
/// policy gives up; sleeps with `std::thread::sleep` between attempts.
///
/// The error of the last attempt is returned unchanged.
#[track_caller]
pub fn retry_sync<T, E, F>(policy: &RetryPolicy, mut attempt: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Result<T, E>,
{
    let mut schedule = Schedule::new(policy, "retry_sync", Location::caller(), None);
    schedule.start(Instant::now);
    loop {
        let result = attempt();
        if let Err(e) = &result
            && let Some(delay) = schedule.on_error(e.busy_code(), Instant::now)
        {
            std::thread::sleep(delay);
            continue;
        }
        schedule.finish(result.is_ok());
        return result;
    }
}

/// Async [`retry_sync`]: runs the future `attempt` returns until it succeeds, fails with
/// an error that is not busy/locked, or the policy gives up.
///
/// Works under any executor. Inside a tokio runtime it sleeps on tokio's timer (so it
/// never blocks a worker thread, and paused-time tests see the schedule exactly); the
/// runtime must then have its timer enabled (`enable_time` or `enable_all`), as for any
/// `tokio::time::sleep`. Under any other executor (`futures::executor::block_on`, smol,
/// …) it sleeps on a runtime-neutral timer: one background thread, started at the first
/// such sleep, wakes the task when its delay is over.
#[track_caller]
pub fn retry_async<T, E, F, Fut>(
    policy: &RetryPolicy,
    mut attempt: F,
) -> impl Future<Output = Result<T, E>>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let location = Location::caller();
    async move {
        let mut schedule = Schedule::new(policy, "retry_async", location, None);
        schedule.start(crate::__private::now_async);
        loop {
            let result = attempt().await;
            if let Err(e) = &result
                && let Some(delay) = schedule.on_error(e.busy_code(), crate::__private::now_async)
            {
                sleep(delay).await;
                continue;
            }
            schedule.finish(result.is_ok());
            return result;
        }
    }
}

/// The backoff sleep of async retries: tokio's timer when the caller runs inside a tokio
/// runtime, the runtime-neutral [`timer`] otherwise.
pub(crate) async fn sleep(delay: Duration) {
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::time::sleep(delay).await;
    } else {
        timer::Sleep::new(delay).await;
    }
}

/// A timer that needs no async runtime: one background thread keeps the pending
/// deadlines in a heap and wakes each sleeping task when its deadline passes.
mod timer {
    use std::cmp::Ordering;
    use std::collections::BinaryHeap;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    /// One sleep's state, shared between the future and the timer thread.
    #[derive(Default)]
    struct Slot {
        done: bool,
        waker: Option<Waker>,
    }

    struct Entry {
        at: Instant,
        seq: u64,
        slot: Arc<Mutex<Slot>>,
    }

    impl PartialEq for Entry {
        fn eq(&self, other: &Self) -> bool {
            (self.at, self.seq) == (other.at, other.seq)
        }
    }

    impl Eq for Entry {}

    impl PartialOrd for Entry {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }

    impl Ord for Entry {
        /// Reversed, so the `BinaryHeap` (a max-heap) yields the earliest deadline first.
        fn cmp(&self, other: &Self) -> Ordering {
            (other.at, other.seq).cmp(&(self.at, self.seq))
        }
    }

    #[derive(Default)]
    struct Queue {
        heap: BinaryHeap<Entry>,
        next_seq: u64,
    }

    struct Timer {
        queue: Mutex<Queue>,
        changed: Condvar,
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The timer thread, started on first use; `None` if the thread could not be spawned.
    fn timer() -> Option<&'static Timer> {
        static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
        *TIMER.get_or_init(|| {
            let timer: &'static Timer = Box::leak(Box::new(Timer {
                queue: Mutex::new(Queue::default()),
                changed: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("luca-retry-timer".into())
                .spawn(move || run(timer))
                .ok()
                .map(|_| timer)
        })
    }

    fn run(timer: &Timer) {
        let mut queue = lock(&timer.queue);
        loop {
            let now = Instant::now();
            while queue.heap.peek().is_some_and(|e| e.at <= now) {
                if let Some(entry) = queue.heap.pop() {
                    let waker = {
                        let mut slot = lock(&entry.slot);
                        slot.done = true;
                        slot.waker.take()
                    };
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
            }
            queue = match queue.heap.peek().map(|e| e.at) {
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    timer
                        .changed
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => timer
                    .changed
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// Completes once `delay` has passed since its first poll.
    pub(super) struct Sleep {
        delay: Duration,
        slot: Option<Arc<Mutex<Slot>>>,
    }

    impl Sleep {
        pub(super) fn new(delay: Duration) -> Sleep {
            Sleep { delay, slot: None }
        }
    }

    impl Future for Sleep {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if let Some(slot) = &self.slot {
                let mut slot = lock(slot);
                if slot.done {
                    return Poll::Ready(());
                }
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            if self.delay.is_zero() {
                return Poll::Ready(());
            }
            let Some(at) = Instant::now().checked_add(self.delay) else {
                // Further away than the clock can count: it never ends.
                return Poll::Pending;
            };
            let Some(timer) = timer() else {
                // No thread could be started to wake us: block for the delay instead,
                // which is late for the executor but still correct.
                std::thread::sleep(self.delay);
                return Poll::Ready(());
            };
            let slot = Arc::new(Mutex::new(Slot {
                done: false,
                waker: Some(cx.waker().clone()),
            }));
            {
                let mut queue = lock(&timer.queue);
                let seq = queue.next_seq;
                queue.next_seq = seq.wrapping_add(1);
                queue.heap.push(Entry {
                    at,
                    seq,
                    slot: Arc::clone(&slot),
                });
            }
            timer.changed.notify_one();
            self.slot = Some(slot);
            Poll::Pending
        }
    }
}

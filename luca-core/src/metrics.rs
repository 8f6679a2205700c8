//! Process-wide retry counters.
//!
//! Counted per [`BusyCode`]: SQLite's busy/locked codes and PostgreSQL's SQLSTATEs side
//! by side. Every retry made by [`#[db_retry]`](crate::db_retry), [`retry_sync`](crate::retry::retry_sync)
//! and [`retry_async`](crate::retry::retry_async) is counted here. Counters are relaxed
//! atomics, touched only when a call meets a busy error: the success path never writes them.
//!
//! Measure one piece of work as the difference of two snapshots. Here a closure meets
//! `SQLITE_BUSY` twice (as a write does while another connection holds the write lock)
//! and then succeeds:
//!
//! ```
//! use std::time::Duration;
//! use luca_core::retry::{retry_sync, BusyCode, Jitter, RetryPolicy};
//! use luca_core::rusqlite::{ffi, Error};
//!
//! let policy = RetryPolicy::new()
//!     .with_delay(Duration::from_millis(1))
//!     .with_jitter(Jitter::None); // delays of exactly 1 ms, then 2 ms
//! let before = luca_core::metrics().snapshot();
//!
//! let mut attempts = 0;
//! let n: i64 = retry_sync(&policy, || {
//!     attempts += 1;
//!     if attempts < 3 {
//!         return Err(Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_BUSY), None));
//!     }
//!     Ok(42)
//! })?;
//!
//! let delta = luca_core::metrics().snapshot().since(&before);
//! assert_eq!(n, 42);
//! assert_eq!(delta.busy_for(BusyCode::Busy), 2);
//! assert_eq!(delta.retries(), 2);
//! assert_eq!((delta.calls_retried, delta.calls_recovered, delta.calls_gave_up), (1, 1, 0));
//! assert_eq!(delta.attempts, 3);
//! assert_eq!(delta.slept, Duration::from_millis(3));
//! assert!(delta.to_string().starts_with("retries 2 | calls retried 1 recovered 1"));
//! println!("{delta}");
//! # Ok::<(), Error>(())
//! ```
//!
//! The counters belong to the whole process: a delta also counts retries other threads
//! made meanwhile.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::retry::BusyCode;

/// Live retry counters; read them with [`Metrics::snapshot`].
#[derive(Debug)]
pub struct Metrics {
    busy_by_code: [AtomicU64; BusyCode::COUNT],
    retries_by_code: [AtomicU64; BusyCode::COUNT],
    calls_retried: AtomicU64,
    calls_recovered: AtomicU64,
    calls_gave_up: AtomicU64,
    attempts: AtomicU64,
    slept_ns: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

static GLOBAL: Metrics = Metrics {
    busy_by_code: [ZERO; BusyCode::COUNT],
    retries_by_code: [ZERO; BusyCode::COUNT],
    calls_retried: ZERO,
    calls_recovered: ZERO,
    calls_gave_up: ZERO,
    attempts: ZERO,
    slept_ns: ZERO,
};

/// The process-wide retry counters.
pub fn metrics() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    pub(crate) fn record_busy(&self, code: BusyCode) {
        self.busy_by_code[code.index()].fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        ::metrics::counter!("luca_retry_attempts_total", "code" => code.name()).increment(1);
    }

    pub(crate) fn record_call_retried(&self) {
        self.calls_retried.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_retry(&self, code: BusyCode, delay: Duration) {
        self.retries_by_code[code.index()].fetch_add(1, Relaxed);
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.slept_ns.fetch_add(ns, Relaxed);
        #[cfg(feature = "metrics")]
        ::metrics::histogram!("luca_retry_backoff_seconds").record(delay);
    }

    pub(crate) fn record_gave_up(&self) {
        self.calls_gave_up.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        ::metrics::counter!("luca_retry_calls_total", "outcome" => "gave_up").increment(1);
    }

    /// A call that retried is over; `gave_up` calls were counted by `record_gave_up`.
    pub(crate) fn record_finish(&self, attempts: u32, ok: bool, gave_up: bool) {
        self.attempts.fetch_add(u64::from(attempts), Relaxed);
        if ok {
            self.calls_recovered.fetch_add(1, Relaxed);
        }
        #[cfg(feature = "metrics")]
        if ok {
            ::metrics::counter!("luca_retry_calls_total", "outcome" => "recovered").increment(1);
        } else if !gave_up {
            ::metrics::counter!("luca_retry_calls_total", "outcome" => "failed").increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = gave_up;
    }

    /// A copy of every counter. Counters are read one by one, so a snapshot taken while
    /// retries are under way may be off by the retries in flight.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &[AtomicU64; BusyCode::COUNT]| std::array::from_fn(|i| a[i].load(Relaxed));
        MetricsSnapshot {
            busy_by_code: load(&self.busy_by_code),
            retries_by_code: load(&self.retries_by_code),
            calls_retried: self.calls_retried.load(Relaxed),
            calls_recovered: self.calls_recovered.load(Relaxed),
            calls_gave_up: self.calls_gave_up.load(Relaxed),
            attempts: self.attempts.load(Relaxed),
            slept: Duration::from_nanos(self.slept_ns.load(Relaxed)),
        }
    }
}

/// Counter values at one moment. Subtract an earlier snapshot with
/// [`MetricsSnapshot::since`] to measure one piece of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Attempts that ended in a retryable error (retried or not), by code; index with
    /// [`BusyCode::index`]. Serialized as a map from the code's name to its count.
    #[cfg_attr(feature = "serde", serde(serialize_with = "by_code"))]
    pub busy_by_code: [u64; BusyCode::COUNT],
    /// Retries made, by the code that caused them; index with [`BusyCode::index`].
    /// Serialized as a map from the code's name to its count.
    #[cfg_attr(feature = "serde", serde(serialize_with = "by_code"))]
    pub retries_by_code: [u64; BusyCode::COUNT],
    /// Calls that retried at least once.
    pub calls_retried: u64,
    /// Calls that retried and then succeeded.
    pub calls_recovered: u64,
    /// Calls that returned a busy/locked error because retries ran out or the deadline
    /// would pass.
    pub calls_gave_up: u64,
    /// Attempts made by calls that retried at least once (first attempt included).
    pub attempts: u64,
    /// Total backoff time slept. Serialized as `slept_seconds`, a float.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "slept_seconds", serialize_with = "seconds")
    )]
    pub slept: Duration,
}

/// Per-code counts as `{"SQLITE_BUSY": n, "40001": m, …}`: a reader of the JSON needs no
/// index table.
#[cfg(feature = "serde")]
pub(crate) fn by_code<S: serde::Serializer>(
    counts: &[u64; BusyCode::COUNT],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(BusyCode::ALL.iter().map(|c| (c.name(), counts[c.index()])))
}

#[cfg(feature = "serde")]
fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl MetricsSnapshot {
    /// Total retries, every code.
    pub fn retries(&self) -> u64 {
        self.retries_by_code.iter().sum()
    }

    /// Retries caused by `code`.
    pub fn retries_for(&self, code: BusyCode) -> u64 {
        self.retries_by_code[code.index()]
    }

    /// Busy/locked errors met with `code`.
    pub fn busy_for(&self, code: BusyCode) -> u64 {
        self.busy_by_code[code.index()]
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &MetricsSnapshot) -> MetricsSnapshot {
        let sub = |a: &[u64; BusyCode::COUNT], b: &[u64; BusyCode::COUNT]| {
            std::array::from_fn(|i| a[i].saturating_sub(b[i]))
        };
        MetricsSnapshot {
            busy_by_code: sub(&self.busy_by_code, &earlier.busy_by_code),
            retries_by_code: sub(&self.retries_by_code, &earlier.retries_by_code),
            calls_retried: self.calls_retried.saturating_sub(earlier.calls_retried),
            calls_recovered: self.calls_recovered.saturating_sub(earlier.calls_recovered),
            calls_gave_up: self.calls_gave_up.saturating_sub(earlier.calls_gave_up),
            attempts: self.attempts.saturating_sub(earlier.attempts),
            slept: self.slept.saturating_sub(earlier.slept),
        }
    }
}

impl fmt::Display for MetricsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "retries {} | calls retried {} recovered {} gave up {} | attempts {} | slept {:.1} ms",
            self.retries(),
            self.calls_retried,
            self.calls_recovered,
            self.calls_gave_up,
            self.attempts,
            self.slept.as_secs_f64() * 1e3
        )?;
        for code in BusyCode::ALL {
            let (busy, retried) = (self.busy_for(code), self.retries_for(code));
            if busy != 0 || retried != 0 {
                writeln!(
                    f,
                    "  {:<26} busy {busy:>8} retried {retried:>8}",
                    code.to_string()
                )?;
            }
        }
        Ok(())
    }
}

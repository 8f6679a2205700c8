//! Counters and latency histograms of one [`Db`](crate::Db).

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::retry::BusyCode;

/// Sub-buckets per power of two: 8 gives a worst-case error of 12.5 %.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUB;

/// A lock-free log-linear histogram of nanosecond durations.
pub(crate) struct Histogram {
    counts: Box<[AtomicU64]>,
    max_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_ns: AtomicU64::new(0),
        }
    }

    fn index(ns: u64) -> usize {
        if ns < SUB as u64 {
            return ns as usize;
        }
        let octave = 63 - ns.leading_zeros(); // >= SUB_BITS
        let sub = (ns >> (octave - SUB_BITS)) as usize & (SUB - 1);
        ((octave - SUB_BITS + 1) as usize) * SUB + sub
    }

    /// The largest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let octave = (i / SUB) as u32 + SUB_BITS - 1;
        let sub = (i % SUB) as u64;
        let low = (1u64 << octave) | (sub << (octave - SUB_BITS));
        low.saturating_add((1u64 << (octave - SUB_BITS)) - 1)
    }

    pub(crate) fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(ns)].fetch_add(1, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
    }

    pub(crate) fn record_n(&self, value: u64) {
        self.counts[Self::index(value)].fetch_add(1, Relaxed);
        self.max_ns.fetch_max(value, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Percentiles {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let max = self.max_ns.load(Relaxed);
        let at = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Self::upper(i).min(max);
                }
            }
            max
        };
        Percentiles {
            count: total,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max,
        }
    }
}

/// Percentiles of a recorded distribution (durations in nanoseconds, or plain counts for
/// group sizes). Values are bucket upper bounds: within 12.5 % of the exact value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

/// How a write ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    Panicked,
}

/// Live counters of one `Db`.
pub(crate) struct StatsInner {
    pub(crate) commits: AtomicU64,
    pub(crate) writes_ok: AtomicU64,
    pub(crate) writes_failed: AtomicU64,
    pub(crate) rows_changed: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) busy_by_code: [AtomicU64; BusyCode::COUNT],
    pub(crate) retries: AtomicU64,
    pub(crate) queue_depth: AtomicUsize,
    pub(crate) max_queue_depth: AtomicUsize,
    pub(crate) dirty_rollbacks: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) commit_fallbacks: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) inline_checkpoints: AtomicU64,
    pub(crate) file_syncs: AtomicU64,
    pub(crate) inline_writes: AtomicU64,
    pub(crate) sqlite_rollbacks: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) reopens: AtomicU64,
    pub(crate) queue_full_waits: AtomicU64,
    pub(crate) lock_wait: Histogram,
    pub(crate) write_latency: Histogram,
    pub(crate) group_sizes: Histogram,
    /// The `metrics` handles, registered once when the `Db` opens.
    #[cfg(feature = "metrics")]
    exported: Exported,
}

/// `metrics` handles of one `Db`, registered with the recorder installed when it opens:
/// each update is then an atomic operation on the recorder's side, with no key lookup.
#[cfg(feature = "metrics")]
struct Exported {
    commits: metrics::Counter,
    writes_ok: metrics::Counter,
    writes_error: metrics::Counter,
    writes_panic: metrics::Counter,
    queue_depth: metrics::Gauge,
    write_latency: metrics::Histogram,
    lock_wait: metrics::Histogram,
    group_size: metrics::Histogram,
    busy: [metrics::Counter; BusyCode::COUNT],
    checkpoints_background: metrics::Counter,
    checkpoints_writer: metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Exported {
    fn register() -> Exported {
        Exported {
            commits: metrics::counter!("luca_db_commits_total"),
            writes_ok: metrics::counter!("luca_db_writes_total", "outcome" => "ok"),
            writes_error: metrics::counter!("luca_db_writes_total", "outcome" => "error"),
            writes_panic: metrics::counter!("luca_db_writes_total", "outcome" => "panic"),
            queue_depth: metrics::gauge!("luca_db_queue_depth"),
            write_latency: metrics::histogram!("luca_db_write_latency_seconds"),
            lock_wait: metrics::histogram!("luca_db_lock_wait_seconds"),
            group_size: metrics::histogram!("luca_db_group_size"),
            busy: BusyCode::ALL
                .map(|c| metrics::counter!("luca_db_busy_total", "code" => c.name())),
            checkpoints_background: metrics::counter!("luca_db_checkpoints_total", "where" => "background"),
            checkpoints_writer: metrics::counter!("luca_db_checkpoints_total", "where" => "writer"),
        }
    }
}

impl StatsInner {
    pub(crate) fn new() -> StatsInner {
        let z = || AtomicU64::new(0);
        StatsInner {
            commits: z(),
            writes_ok: z(),
            writes_failed: z(),
            rows_changed: z(),
            reads: z(),
            busy_by_code: std::array::from_fn(|_| z()),
            retries: z(),
            queue_depth: AtomicUsize::new(0),
            max_queue_depth: AtomicUsize::new(0),
            dirty_rollbacks: z(),
            panics: z(),
            commit_fallbacks: z(),
            checkpoints: z(),
            inline_checkpoints: z(),
            file_syncs: z(),
            inline_writes: z(),
            sqlite_rollbacks: z(),
            refused: z(),
            reopens: z(),
            queue_full_waits: z(),
            lock_wait: Histogram::new(),
            write_latency: Histogram::new(),
            group_sizes: Histogram::new(),
            #[cfg(feature = "metrics")]
            exported: Exported::register(),
        }
    }

    pub(crate) fn enqueued(&self) {
        let depth = self.queue_depth.fetch_add(1, Relaxed) + 1;
        self.max_queue_depth.fetch_max(depth, Relaxed);
        #[cfg(feature = "metrics")]
        self.exported.queue_depth.increment(1.0);
    }

    pub(crate) fn dequeued(&self, n: usize) {
        self.queue_depth.fetch_sub(n, Relaxed);
        #[cfg(feature = "metrics")]
        self.exported.queue_depth.decrement(n as f64);
    }

    pub(crate) fn busy(&self, code: BusyCode) {
        self.busy_by_code[code.index()].fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.exported.busy[code.index()].increment(1);
    }

    /// A transaction of `writes` writes committed, changing `changes` rows.
    pub(crate) fn committed(&self, writes: usize, changes: u64) {
        self.commits.fetch_add(1, Relaxed);
        self.group_sizes.record_n(writes as u64);
        self.rows_changed.fetch_add(changes, Relaxed);
        #[cfg(feature = "metrics")]
        {
            self.exported.commits.increment(1);
            self.exported.group_size.record(writes as f64);
        }
    }

    /// A write waited `d` from its call to the start of its transaction.
    pub(crate) fn waited(&self, d: Duration) {
        self.lock_wait.record(d);
        #[cfg(feature = "metrics")]
        self.exported.lock_wait.record(d);
    }

    /// A write was answered, `ok` or not, `latency` after its call.
    pub(crate) fn answered(&self, outcome: Outcome, latency: Duration) {
        let counter = match outcome {
            Outcome::Ok => &self.writes_ok,
            Outcome::Panicked => {
                self.panics.fetch_add(1, Relaxed);
                &self.writes_failed
            }
            Outcome::Failed => &self.writes_failed,
        };
        counter.fetch_add(1, Relaxed);
        self.write_latency.record(latency);
        #[cfg(feature = "metrics")]
        {
            match outcome {
                Outcome::Ok => &self.exported.writes_ok,
                Outcome::Failed => &self.exported.writes_error,
                Outcome::Panicked => &self.exported.writes_panic,
            }
            .increment(1);
            self.exported.write_latency.record(latency);
        }
    }

    /// A WAL checkpoint ran, in the background or (`inline`) on the writer.
    pub(crate) fn checkpointed(&self, inline: bool) {
        if inline {
            self.inline_checkpoints.fetch_add(1, Relaxed);
        } else {
            self.checkpoints.fetch_add(1, Relaxed);
        }
        #[cfg(feature = "metrics")]
        if inline {
            &self.exported.checkpoints_writer
        } else {
            &self.exported.checkpoints_background
        }
        .increment(1);
    }

    /// The background checkpointer synced the database file after a pass.
    pub(crate) fn file_synced(&self) {
        self.file_syncs.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> DbStats {
        DbStats {
            commits: self.commits.load(Relaxed),
            writes_ok: self.writes_ok.load(Relaxed),
            writes_failed: self.writes_failed.load(Relaxed),
            rows_changed: self.rows_changed.load(Relaxed),
            reads: self.reads.load(Relaxed),
            busy_by_code: std::array::from_fn(|i| self.busy_by_code[i].load(Relaxed)),
            retries: self.retries.load(Relaxed),
            queue_depth: self.queue_depth.load(Relaxed),
            max_queue_depth: self.max_queue_depth.load(Relaxed),
            dirty_rollbacks: self.dirty_rollbacks.load(Relaxed),
            panics: self.panics.load(Relaxed),
            commit_fallbacks: self.commit_fallbacks.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            inline_checkpoints: self.inline_checkpoints.load(Relaxed),
            file_syncs: self.file_syncs.load(Relaxed),
            inline_writes: self.inline_writes.load(Relaxed),
            sqlite_rollbacks: self.sqlite_rollbacks.load(Relaxed),
            refused: self.refused.load(Relaxed),
            reopens: self.reopens.load(Relaxed),
            queue_full_waits: self.queue_full_waits.load(Relaxed),
            lock_wait_ns: self.lock_wait.snapshot(),
            write_latency_ns: self.write_latency.snapshot(),
            group_sizes: self.group_sizes.snapshot(),
        }
    }
}

/// What a [`Db`](crate::Db) has done so far; from [`Db::stats`](crate::Db::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DbStats {
    /// Write transactions committed (a group commit counts once).
    pub commits: u64,
    /// Writes acknowledged as committed.
    pub writes_ok: u64,
    /// Writes answered with an error (their changes rolled back).
    pub writes_failed: u64,
    /// Rows inserted, updated or deleted by committed writes.
    pub rows_changed: u64,
    /// Reads run.
    pub reads: u64,
    /// Busy/locked errors the writer met (from other processes), by code; index with
    /// [`BusyCode::index`]. Serialized as a map from the code's name to its count.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::metrics::by_code"))]
    pub busy_by_code: [u64; BusyCode::COUNT],
    /// Transactions the writer retried after a busy error.
    pub retries: u64,
    /// Writes queued right now.
    pub queue_depth: usize,
    /// Largest queue seen.
    pub max_queue_depth: usize,
    /// Connections handed back inside an open transaction and rolled back.
    pub dirty_rollbacks: u64,
    /// Closures that panicked.
    pub panics: u64,
    /// Group commits whose `COMMIT` failed and whose writes were re-run one by one.
    pub commit_fallbacks: u64,
    /// Background WAL checkpoints run (off the commit path).
    pub checkpoints: u64,
    /// Checkpoints the writer ran itself, between two runs of writes, because sustained
    /// writing kept the WAL past four times the threshold.
    pub inline_checkpoints: u64,
    /// Syncs of the database file after background checkpoints (SQLite syncs it itself
    /// only when a checkpoint reaches the WAL's end; these keep the writer's reset short).
    pub file_syncs: u64,
    /// Writes that ran on their caller's thread because the write path was idle (see
    /// [`DbBuilder::inline_limit`](crate::DbBuilder::inline_limit)); the others ran on
    /// the writer thread.
    pub inline_writes: u64,
    /// Transactions SQLite rolled back by itself while a write closure ran (a trigger's
    /// `RAISE(ROLLBACK)`, `OR ROLLBACK`, a full disk …); the other writes of the group ran
    /// again without the culprit.
    pub sqlite_rollbacks: u64,
    /// Statements refused inside write closures (transaction control, managed PRAGMAs).
    pub refused: u64,
    /// Times the write connection was closed and opened again because it could not leave
    /// a transaction.
    pub reopens: u64,
    /// Writes that found the queue full and waited for room.
    pub queue_full_waits: u64,
    /// Time from a write's call to the start of its transaction (queue plus file lock),
    /// in nanoseconds.
    pub lock_wait_ns: Percentiles,
    /// Time from a write's call to its acknowledged commit, in nanoseconds.
    pub write_latency_ns: Percentiles,
    /// Writes per committed transaction.
    pub group_sizes: Percentiles,
}

impl DbStats {
    /// Busy/locked errors of every code.
    pub fn busy_total(&self) -> u64 {
        self.busy_by_code.iter().sum()
    }
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

impl fmt::Display for DbStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "commits {} | writes ok {} failed {} (inline {}) | rows {} | reads {} | busy {} retries {} | queue {} (max {}, waited for room {}) | dirty rollbacks {} | panics {} | commit fallbacks {} | sqlite rollbacks {} | refused {} | reopens {} | checkpoints {} (+{} by the writer, {} file syncs)",
            self.commits,
            self.writes_ok,
            self.writes_failed,
            self.inline_writes,
            self.rows_changed,
            self.reads,
            self.busy_total(),
            self.retries,
            self.queue_depth,
            self.max_queue_depth,
            self.queue_full_waits,
            self.dirty_rollbacks,
            self.panics,
            self.commit_fallbacks,
            self.sqlite_rollbacks,
            self.refused,
            self.reopens,
            self.checkpoints,
            self.inline_checkpoints,
            self.file_syncs
        )?;
        writeln!(
            f,
            "| {:<16} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} |",
            "distribution", "count", "p50", "p90", "p99", "p99.9", "max"
        )?;
        for (name, p, time) in [
            ("lock wait ms", &self.lock_wait_ns, true),
            ("write ms", &self.write_latency_ns, true),
            ("group size", &self.group_sizes, false),
        ] {
            let v = |x: u64| if time { ms(x) } else { x.to_string() };
            writeln!(
                f,
                "| {:<16} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} |",
                name,
                p.count,
                v(p.p50),
                v(p.p90),
                v(p.p99),
                v(p.p999),
                v(p.max)
            )?;
        }
        for code in BusyCode::ALL {
            let n = self.busy_by_code[code.index()];
            if n != 0 {
                writeln!(f, "  {:<26} {n}", code.name())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_values_within_an_eighth() {
        for ns in (0..5_000u64).chain([1 << 20, (1 << 20) + 12345, u64::MAX / 3, u64::MAX]) {
            let i = Histogram::index(ns);
            let upper = Histogram::upper(i);
            assert!(upper >= ns, "{ns}: upper {upper}");
            assert!(upper - ns <= ns / 8 + 1, "{ns}: upper {upper}");
            if i > 0 {
                assert!(
                    Histogram::upper(i - 1) < ns,
                    "{ns} belongs to an earlier bucket"
                );
            }
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = Histogram::new();
        for v in 1..=1000u64 {
            h.record_n(v * 1000);
        }
        let p = h.snapshot();
        assert_eq!(p.count, 1000);
        assert_eq!(p.max, 1_000_000);
        for (got, want) in [(p.p50, 500_000u64), (p.p90, 900_000), (p.p99, 990_000)] {
            assert!(got >= want && got <= want + want / 8, "{got} vs {want}");
        }
    }
}

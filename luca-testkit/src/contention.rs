//! Contention runs ([`Contention`]) and what they did ([`ContentionReport`]).

use std::any::Any;
use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use luca_core::rusqlite;

use crate::workloads::{Lost, Workload};

/// How many error messages (and lost-write descriptions) a report keeps as samples.
pub const MAX_SAMPLES: usize = 8;

/// The outcome of a contention run: what succeeded, what failed and with which SQLite
/// code, what was lost, how many retries it took, and how long the operations took.
///
/// Reports of several runs, threads or processes add up with [`merge`](Self::merge): the
/// counters and latency samples are summed, the wall time is the longest (the runs are
/// taken to have run side by side).
///
/// ```
/// use std::time::Duration;
/// use luca_testkit::ContentionReport;
///
/// let mut a = ContentionReport::new("insert");
/// a.record_ok(Duration::from_micros(40));
/// a.record_ok(Duration::from_micros(60));
/// let mut b = ContentionReport::new("insert");
/// b.record_escaped(Some(5), "database is locked");
/// a.merge(&b);
/// assert_eq!((a.ok, a.escaped(), a.escaped_by_code[&5]), (2, 1, 1));
/// assert_eq!(a.max_latency(), Duration::from_micros(60));
/// a.assert_no_lost();
/// assert!(std::panic::catch_unwind(|| a.assert_no_escaped()).is_err());
/// println!("{a}");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContentionReport {
    /// What ran (a workload name), shown in the table.
    pub label: String,
    /// Runs merged into this report (1 for a fresh one).
    pub runs: u64,
    /// Workers (threads, tasks or processes' workers) that took part.
    pub workers: u64,
    /// Operations planned (workers × operations per worker).
    pub planned: u64,
    /// Operations started (fewer than planned when the time limit stopped the run).
    pub attempted: u64,
    /// Operations that returned `Ok` (acknowledged).
    pub ok: u64,
    /// Operations that returned an error carrying a SQLite extended result code, by code.
    pub escaped_by_code: BTreeMap<i32, u64>,
    /// Operations that returned an error without a SQLite code, or panicked.
    pub escaped_other: u64,
    /// The first few error messages, each prefixed with its code (at most
    /// [`MAX_SAMPLES`]).
    pub error_samples: Vec<String>,
    /// Acknowledged writes missing from the database (or applied twice), as the lost-write
    /// check counted them.
    pub lost: u64,
    /// What the lost-write check said about the first few (at most [`MAX_SAMPLES`]).
    pub lost_samples: Vec<String>,
    /// Retries made by the operations (luca's retry counters and/or the operations' own
    /// count).
    pub retries: u64,
    /// Latency of each acknowledged operation, in nanoseconds, in no particular order.
    pub latencies_ns: Vec<u64>,
    /// Wall time of the run, from the barrier's release to the last operation's end.
    pub elapsed: Duration,
    /// The run hit its time limit before every planned operation was started.
    pub timed_out: bool,
    /// The seed the run's random choices came from, to reproduce it.
    pub seed: Option<u64>,
    /// The database file the run used.
    pub db_path: Option<PathBuf>,
}

/// Latency percentiles of the acknowledged operations (nearest rank; zero when none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latencies {
    /// Operations measured.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest.
    pub max: Duration,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nearest-rank percentile `q` (0..=1) of sorted values; 0 when empty.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn push_sample(samples: &mut Vec<String>, s: String) {
    if samples.len() < MAX_SAMPLES {
        samples.push(s);
    }
}

/// SQLite's extended result code carried by `error` or by an error in its `source()`
/// chain: a `luca_core::Error`, a `rusqlite::Error` or a `rusqlite::ffi::Error`.
///
/// ```
/// use luca_core::rusqlite::{ffi, Error};
/// let busy = Error::SqliteFailure(ffi::Error::new(517), None);
/// assert_eq!(luca_testkit::extended_code(&busy), Some(517));
/// let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(busy);
/// assert_eq!(luca_testkit::extended_code(&*boxed), Some(517));
/// assert_eq!(luca_testkit::extended_code(&std::fmt::Error), None);
/// ```
pub fn extended_code(error: &(dyn StdError + 'static)) -> Option<i32> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<luca_core::Error>()
            && let Some(code) = e.extended_code()
        {
            return Some(code);
        }
        if let Some(e) = e.downcast_ref::<rusqlite::Error>()
            && let Some(e) = e.sqlite_error()
        {
            return Some(e.extended_code);
        }
        if let Some(e) = e.downcast_ref::<rusqlite::ffi::Error>() {
            return Some(e.extended_code);
        }
        next = e.source();
    }
    None
}

/// The name of a SQLite (extended) result code, e.g. `SQLITE_BUSY_SNAPSHOT` for 517;
/// `"SQLITE_?"` for a code this table does not know.
pub fn sqlite_code_name(code: i32) -> &'static str {
    match code {
        1 => "SQLITE_ERROR",
        2 => "SQLITE_INTERNAL",
        3 => "SQLITE_PERM",
        4 => "SQLITE_ABORT",
        5 => "SQLITE_BUSY",
        6 => "SQLITE_LOCKED",
        7 => "SQLITE_NOMEM",
        8 => "SQLITE_READONLY",
        9 => "SQLITE_INTERRUPT",
        10 => "SQLITE_IOERR",
        11 => "SQLITE_CORRUPT",
        13 => "SQLITE_FULL",
        14 => "SQLITE_CANTOPEN",
        15 => "SQLITE_PROTOCOL",
        17 => "SQLITE_SCHEMA",
        18 => "SQLITE_TOOBIG",
        19 => "SQLITE_CONSTRAINT",
        20 => "SQLITE_MISMATCH",
        21 => "SQLITE_MISUSE",
        23 => "SQLITE_AUTH",
        25 => "SQLITE_RANGE",
        26 => "SQLITE_NOTADB",
        261 => "SQLITE_BUSY_RECOVERY",
        262 => "SQLITE_LOCKED_SHAREDCACHE",
        264 => "SQLITE_READONLY_RECOVERY",
        266 => "SQLITE_IOERR_READ",
        267 => "SQLITE_CORRUPT_VTAB",
        517 => "SQLITE_BUSY_SNAPSHOT",
        518 => "SQLITE_LOCKED_VTAB",
        520 => "SQLITE_READONLY_CANTLOCK",
        773 => "SQLITE_BUSY_TIMEOUT",
        776 => "SQLITE_READONLY_ROLLBACK",
        778 => "SQLITE_IOERR_WRITE",
        1032 => "SQLITE_READONLY_DBMOVED",
        1555 => "SQLITE_CONSTRAINT_PRIMARYKEY",
        1811 => "SQLITE_CONSTRAINT_TRIGGER",
        2067 => "SQLITE_CONSTRAINT_UNIQUE",
        _ => match code & 0xff {
            5 => "SQLITE_BUSY_?",
            6 => "SQLITE_LOCKED_?",
            10 => "SQLITE_IOERR_?",
            19 => "SQLITE_CONSTRAINT_?",
            _ => "SQLITE_?",
        },
    }
}

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

impl ContentionReport {
    /// An empty report of one run.
    pub fn new(label: impl Into<String>) -> ContentionReport {
        ContentionReport {
            label: label.into(),
            runs: 1,
            ..ContentionReport::default()
        }
    }

    /// Records an acknowledged operation that took `latency`.
    pub fn record_ok(&mut self, latency: Duration) {
        self.ok += 1;
        self.latencies_ns.push(nanos(latency));
    }

    /// Records an operation that failed with `error`, classified by [`extended_code`].
    pub fn record_error(&mut self, error: &(dyn StdError + 'static)) {
        self.record_escaped(extended_code(error), &error.to_string());
    }

    /// Records an operation that failed with SQLite extended code `code` (`None`: an error
    /// that did not come from SQLite, or a panic) and message `message`.
    pub fn record_escaped(&mut self, code: Option<i32>, message: &str) {
        let prefix = match code {
            Some(c) => {
                *self.escaped_by_code.entry(c).or_insert(0) += 1;
                format!("{c} {}", sqlite_code_name(c))
            }
            None => {
                self.escaped_other += 1;
                "no SQLite code".to_owned()
            }
        };
        push_sample(&mut self.error_samples, format!("{prefix}: {message}"));
    }

    /// Records `n` lost writes, with a description of them (kept as a sample).
    pub fn record_lost(&mut self, n: u64, description: impl Into<String>) {
        if n == 0 {
            return;
        }
        self.lost += n;
        push_sample(&mut self.lost_samples, description.into());
    }

    /// Adds `n` retries.
    pub fn add_retries(&mut self, n: u64) {
        self.retries += n;
    }

    /// Operations that failed (escaped to the caller), every code.
    pub fn escaped(&self) -> u64 {
        self.escaped_by_code.values().sum::<u64>() + self.escaped_other
    }

    /// Operations escaped with a given SQLite extended code.
    pub fn escaped_with(&self, code: i32) -> u64 {
        self.escaped_by_code.get(&code).copied().unwrap_or(0)
    }

    /// Adds `other` to this report: counters, codes, samples and latencies summed; the
    /// wall time is the longer of the two; `timed_out` if either timed out. The label,
    /// seed and path of `self` are kept (taken from `other` where `self` has none).
    pub fn merge(&mut self, other: &ContentionReport) {
        if self.label.is_empty() {
            self.label.clone_from(&other.label);
        }
        self.runs += other.runs;
        self.workers += other.workers;
        self.planned += other.planned;
        self.attempted += other.attempted;
        self.ok += other.ok;
        for (code, n) in &other.escaped_by_code {
            *self.escaped_by_code.entry(*code).or_insert(0) += n;
        }
        self.escaped_other += other.escaped_other;
        for s in &other.error_samples {
            push_sample(&mut self.error_samples, s.clone());
        }
        self.lost += other.lost;
        for s in &other.lost_samples {
            push_sample(&mut self.lost_samples, s.clone());
        }
        self.retries += other.retries;
        self.latencies_ns.extend_from_slice(&other.latencies_ns);
        self.elapsed = self.elapsed.max(other.elapsed);
        self.timed_out |= other.timed_out;
        if self.seed.is_none() {
            self.seed = other.seed;
        }
        if self.db_path.is_none() {
            self.db_path.clone_from(&other.db_path);
        }
    }

    /// One report of several, merged in order (an empty report labelled `""` for none).
    pub fn merged<'a>(reports: impl IntoIterator<Item = &'a ContentionReport>) -> Self {
        let mut all = ContentionReport::default();
        for r in reports {
            all.merge(r);
        }
        all
    }

    /// Latency percentiles of the acknowledged operations.
    pub fn latencies(&self) -> Latencies {
        let mut sorted = self.latencies_ns.clone();
        sorted.sort_unstable();
        let d = |q| Duration::from_nanos(percentile(&sorted, q));
        Latencies {
            count: sorted.len() as u64,
            p50: d(0.50),
            p99: d(0.99),
            p999: d(0.999),
            max: Duration::from_nanos(sorted.last().copied().unwrap_or(0)),
        }
    }

    /// Latency percentile `q` (0..=1, nearest rank).
    pub fn percentile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies_ns.clone();
        sorted.sort_unstable();
        Duration::from_nanos(percentile(&sorted, q))
    }

    /// Median latency.
    pub fn p50(&self) -> Duration {
        self.percentile(0.50)
    }

    /// 99th percentile latency.
    pub fn p99(&self) -> Duration {
        self.percentile(0.99)
    }

    /// 99.9th percentile latency.
    pub fn p999(&self) -> Duration {
        self.percentile(0.999)
    }

    /// Slowest acknowledged operation.
    pub fn max_latency(&self) -> Duration {
        Duration::from_nanos(self.latencies_ns.iter().copied().max().unwrap_or(0))
    }

    /// Acknowledged operations per second of wall time (0 when no time was measured).
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Panics, printing the seed, the database path and the table, when any write was
    /// lost.
    #[track_caller]
    pub fn assert_no_lost(&self) {
        if self.lost > 0 {
            panic!("{} lost write(s)\n{self}", self.lost);
        }
    }

    /// Panics, printing the seed, the database path and the table, when any operation
    /// returned an error (or panicked).
    #[track_caller]
    pub fn assert_no_escaped(&self) {
        if self.escaped() > 0 {
            panic!(
                "{} operation(s) escaped with an error\n{self}",
                self.escaped()
            );
        }
    }

    /// Panics, printing the seed, the database path and the table, when the time limit
    /// stopped the run before every planned operation started.
    #[track_caller]
    pub fn assert_all_ran(&self) {
        if self.timed_out || self.attempted < self.planned {
            panic!(
                "only {} of {} operations ran before the time limit\n{self}",
                self.attempted, self.planned
            );
        }
    }

    /// [`assert_no_escaped`](Self::assert_no_escaped), [`assert_no_lost`](Self::assert_no_lost)
    /// and [`assert_all_ran`](Self::assert_all_ran) together.
    #[track_caller]
    pub fn assert_clean(&self) {
        self.assert_no_escaped();
        self.assert_no_lost();
        self.assert_all_ran();
    }

    /// The header of the table [`table_row`](Self::table_row) fills (two lines).
    pub fn table_header() -> String {
        format!(
            "| {:<24} | {:>7} | {:>7} | {:>7} | {:>7} | {:>5} | {:>7} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} | {:>8} |\n|{}|",
            "workload",
            "workers",
            "ops",
            "ok",
            "escaped",
            "lost",
            "retries",
            "ops/s",
            "p50",
            "p99",
            "p99.9",
            "max",
            "wall",
            ["-"; 13].map(|_| "---").join("|")
        )
    }

    /// This report as one line of the table under [`table_header`](Self::table_header).
    pub fn table_row(&self) -> String {
        let l = self.latencies();
        let ops = if self.timed_out {
            format!("{}/{}", self.attempted, self.planned)
        } else {
            self.attempted.to_string()
        };
        format!(
            "| {:<24} | {:>7} | {:>7} | {:>7} | {:>7} | {:>5} | {:>7} | {:>9.0} | {:>9} | {:>9} | {:>9} | {:>9} | {:>8} |",
            self.label,
            self.workers,
            ops,
            self.ok,
            self.escaped(),
            self.lost,
            self.retries,
            self.throughput(),
            fmt_duration(l.p50),
            fmt_duration(l.p99),
            fmt_duration(l.p999),
            fmt_duration(l.max),
            fmt_duration(self.elapsed),
        )
    }
}

impl fmt::Display for ContentionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seed = self
            .seed
            .map_or_else(|| "none".to_owned(), |s| format!("{s:#x}"));
        let path = self
            .db_path
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string());
        writeln!(
            f,
            "contention `{}`: seed {seed} (LUCA_TESTKIT_SEED={seed} reruns it), database {path}, runs {}{}",
            self.label,
            self.runs,
            if self.timed_out {
                ", stopped by its time limit"
            } else {
                ""
            }
        )?;
        writeln!(f, "{}", ContentionReport::table_header())?;
        writeln!(f, "{}", self.table_row())?;
        if self.escaped() > 0 {
            let mut codes: Vec<String> = self
                .escaped_by_code
                .iter()
                .map(|(c, n)| format!("{c} {} × {n}", sqlite_code_name(*c)))
                .collect();
            if self.escaped_other > 0 {
                codes.push(format!("no SQLite code × {}", self.escaped_other));
            }
            writeln!(f, "escaped by code: {}", codes.join(", "))?;
            for s in &self.error_samples {
                writeln!(f, "  error: {s}")?;
            }
        }
        for s in &self.lost_samples {
            writeln!(f, "  lost: {s}")?;
        }
        Ok(())
    }
}

// --- Contention ---------------------------------------------------------------------------

/// A boxed error, as operations and checks may return any error type.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The ids of the operations that were acknowledged (returned `Ok`), sorted and unique.
///
/// A lost-write check compares them with what is in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acked {
    ids: Vec<u64>,
}

impl Acked {
    /// The set of `ids` (sorted, duplicates dropped).
    pub fn from_ids(ids: impl IntoIterator<Item = u64>) -> Acked {
        let mut ids: Vec<u64> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        Acked { ids }
    }

    /// Adds the ids of `other` (for example another process's).
    pub fn merge(&mut self, other: &Acked) {
        self.ids.extend_from_slice(&other.ids);
        self.ids.sort_unstable();
        self.ids.dedup();
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// None at all.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` was acknowledged.
    pub fn contains(&self, id: u64) -> bool {
        self.ids.binary_search(&id).is_ok()
    }

    /// The ids, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ids.iter().copied()
    }

    /// The ids, ascending.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }
}

/// One operation of a [`Contention`] run, as the operation closure sees it.
#[derive(Clone, Debug)]
pub struct Op {
    /// The worker (thread or task) running it, `0..workers`.
    pub worker: usize,
    /// Its place in the worker's sequence, `0..ops`.
    pub index: usize,
    /// Unique in the run: `id_base + worker × ops + index`. Workloads key their rows by it.
    pub id: u64,
    /// A seed for this operation's random choices, derived from the run's seed and `id`
    /// (so a rerun with the same seed makes the same choices), e.g.
    /// `fastrand::Rng::with_seed(op.seed)`.
    pub seed: u64,
    retries: Arc<AtomicU64>,
}

impl Op {
    /// Counts `n` retries the operation made by itself (retries made through luca's
    /// `#[db_retry]`, `retry_sync` or `retry_async` are counted already).
    pub fn add_retries(&self, n: u64) {
        self.retries.fetch_add(n, Ordering::Relaxed);
    }
}

/// SplitMix64: spreads one seed over many well-mixed values.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed from `LUCA_TESTKIT_SEED` (decimal or `0x` hex), or a random one.
fn default_seed() -> u64 {
    if let Ok(s) = std::env::var("LUCA_TESTKIT_SEED") {
        let s = s.trim();
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        };
        if let Some(seed) = parsed {
            return seed;
        }
        eprintln!("LUCA_TESTKIT_SEED={s:?} is not a number; using a random seed");
    }
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

type Check<'c> = Box<dyn FnOnce(&Acked) -> Result<Lost, BoxError> + Send + 'c>;

/// N workers × M operations against one database, released together by a barrier.
///
/// Each worker (a thread with [`run`](Contention::run), a tokio task with
/// [`run_async`](Contention::run_async)) runs the operation closure `ops` times; the run
/// is bounded by the operation count and by a wall-time limit (default 20 s): a worker
/// starts no operation after the limit. Every operation is timed; its `Ok` or error (by
/// SQLite extended code) goes into a [`ContentionReport`], a panic counts as an escaped
/// error. Then the lost-write check, if one was given, is run with the [`Acked`] ids.
///
/// Retries are counted from luca's process-wide retry counters (`#[db_retry]`,
/// `retry_sync`, `retry_async`; other threads' retries in the meantime count too) plus what
/// operations report with [`Op::add_retries`]. A [`Db`](luca_core::Db)'s own retries
/// (against other processes) are in its [`stats`](luca_core::Db::stats): add them with
/// [`ContentionReport::add_retries`].
///
/// The report's assertions print the seed, the database path and the table when they
/// fail; set `LUCA_TESTKIT_SEED` to rerun with the same seed.
///
/// ```
/// use luca_testkit::{Contention, Counter, TempDb, Workload};
///
/// let tmp = TempDb::new();
/// Counter.setup_path(tmp.path())?;
/// let path = tmp.path().to_path_buf();
/// let report = Contention::new(4)
///     .ops(25)
///     .label("rmw, BEGIN IMMEDIATE")
///     .check_workload(Counter, tmp.path())
///     .run(|op| {
///         luca_core::local::with_connection(&path, |c| Ok(Counter.apply_immediate(c, op.id)?))
///     });
/// println!("{report}");
/// report.assert_clean();
/// assert_eq!(report.ok, 100);
/// # luca_core::local::cleanup_connections();
/// # Ok::<(), luca_core::Error>(())
/// ```
#[must_use = "a contention run does nothing until `.run()` or `.run_async()`"]
pub struct Contention<'c> {
    workers: usize,
    ops: usize,
    time_limit: Duration,
    seed: Option<u64>,
    label: String,
    db_path: Option<PathBuf>,
    id_base: u64,
    check: Option<Check<'c>>,
}

impl fmt::Debug for Contention<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contention")
            .field("workers", &self.workers)
            .field("ops", &self.ops)
            .field("time_limit", &self.time_limit)
            .field("seed", &self.seed)
            .field("label", &self.label)
            .field("db_path", &self.db_path)
            .field("id_base", &self.id_base)
            .field("check", &self.check.is_some())
            .finish()
    }
}

/// What one worker did.
struct WorkerLog {
    report: ContentionReport,
    acked: Vec<u64>,
}

impl WorkerLog {
    fn new(ops: usize) -> WorkerLog {
        let mut report = ContentionReport::new("");
        report.workers = 1;
        report.planned = ops as u64;
        WorkerLog {
            report,
            acked: Vec::with_capacity(ops),
        }
    }

    fn record<E: Into<BoxError>>(&mut self, id: u64, outcome: Result<(), E>, took: Duration) {
        match outcome {
            Ok(()) => {
                self.report.record_ok(took);
                self.acked.push(id);
            }
            Err(e) => {
                let e: BoxError = e.into();
                self.report.record_error(&*e);
            }
        }
    }

    fn record_panic(&mut self, payload: &(dyn Any + Send)) {
        self.report
            .record_escaped(None, &format!("panicked: {}", panic_text(payload)));
    }
}

/// What every worker needs to know.
#[derive(Clone, Copy)]
struct Plan {
    ops: usize,
    time_limit: Duration,
    id_base: u64,
    seed: u64,
}

impl Plan {
    fn op(&self, worker: usize, index: usize, retries: &Arc<AtomicU64>) -> Op {
        let id = self
            .id_base
            .wrapping_add((worker as u64).wrapping_mul(self.ops as u64))
            .wrapping_add(index as u64);
        Op {
            worker,
            index,
            id,
            seed: mix(self.seed ^ mix(id)),
            retries: Arc::clone(retries),
        }
    }
}

/// A future whose panics are caught and returned.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.get_mut().0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

impl<'c> Contention<'c> {
    /// The default wall-time limit.
    pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(20);

    /// `workers` workers (at least 1), 100 operations each, a 20 s limit.
    pub fn new(workers: usize) -> Contention<'c> {
        Contention {
            workers: workers.max(1),
            ops: 100,
            time_limit: Contention::DEFAULT_TIME_LIMIT,
            seed: None,
            label: "contention".to_owned(),
            db_path: None,
            id_base: 0,
            check: None,
        }
    }

    /// Operations per worker.
    pub fn ops(mut self, ops: usize) -> Self {
        self.ops = ops;
        self
    }

    /// No operation starts after this much wall time from the barrier's release.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// The run's seed (default: `LUCA_TESTKIT_SEED`, or random). Each [`Op::seed`] is
    /// derived from it.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The name shown in the report.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// The database file, shown in the report (set by [`check_workload`](Self::check_workload)
    /// too).
    pub fn db_path(mut self, path: impl AsRef<Path>) -> Self {
        self.db_path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Offsets every [`Op::id`], so several runs (or processes) on one file use distinct
    /// ids.
    pub fn id_base(mut self, base: u64) -> Self {
        self.id_base = base;
        self
    }

    /// The lost-write check, run once after every worker finished, with the ids of the
    /// acknowledged operations. It runs on the calling thread (inside `run_async`, on the
    /// calling task: open a plain connection there, not a blocking `Db` call). A check
    /// that fails counts as one lost write whose description is the error, since nothing
    /// was proved.
    pub fn check<E>(mut self, check: impl FnOnce(&Acked) -> Result<Lost, E> + Send + 'c) -> Self
    where
        E: Into<BoxError>,
    {
        self.check = Some(Box::new(move |acked| check(acked).map_err(Into::into)));
        self
    }

    /// The lost-write check of a [`Workload`] on a fresh connection to `path` (also the
    /// report's database path and, unless set, its label).
    pub fn check_workload<W: Workload>(mut self, workload: W, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        if self.label == "contention" {
            self.label = workload.name().to_owned();
        }
        self.db_path = Some(path.clone());
        self.check(move |acked| workload.check_path(&path, acked))
    }

    fn start(&mut self) -> (u64, luca_core::metrics::MetricsSnapshot) {
        let seed = *self.seed.get_or_insert_with(default_seed);
        (seed, luca_core::metrics().snapshot())
    }

    fn plan(&self, seed: u64) -> Plan {
        Plan {
            ops: self.ops,
            time_limit: self.time_limit,
            id_base: self.id_base,
            seed,
        }
    }

    fn finish(
        self,
        seed: u64,
        before: luca_core::metrics::MetricsSnapshot,
        retries: &AtomicU64,
        elapsed: Duration,
        logs: Vec<WorkerLog>,
    ) -> (ContentionReport, Acked) {
        let mut report = ContentionReport::new(self.label);
        report.runs = 0;
        let mut acked = Vec::new();
        for log in logs {
            report.merge(&log.report);
            acked.extend(log.acked);
        }
        report.runs = 1;
        report.workers = self.workers as u64;
        report.planned = (self.workers as u64).saturating_mul(self.ops as u64);
        report.seed = Some(seed);
        report.db_path = self.db_path;
        report.elapsed = elapsed;
        report.timed_out = report.timed_out || report.attempted < report.planned;
        let from_metrics = luca_core::metrics().snapshot().since(&before).retries();
        report.add_retries(from_metrics + retries.load(Ordering::Relaxed));
        let acked = Acked::from_ids(acked);
        if let Some(check) = self.check {
            match catch_unwind(AssertUnwindSafe(|| check(&acked))) {
                Ok(Ok(lost)) => report.record_lost(lost.count, lost.description),
                Ok(Err(e)) => report.record_lost(1, format!("the lost-write check failed: {e}")),
                Err(p) => report.record_lost(
                    1,
                    format!("the lost-write check panicked: {}", panic_text(&*p)),
                ),
            }
        }
        (report, acked)
    }

    /// Runs the operations on `workers` threads and returns the report.
    ///
    /// `op` may borrow from the caller (the threads are scoped). A thread that cannot be
    /// started counts as one escaped error and its operations do not run.
    pub fn run<F, E>(self, op: F) -> ContentionReport
    where
        F: Fn(&Op) -> Result<(), E> + Sync,
        E: Into<BoxError>,
    {
        self.run_with_acked(op).0
    }

    /// [`run`](Self::run), also returning the acknowledged ids.
    pub fn run_with_acked<F, E>(mut self, op: F) -> (ContentionReport, Acked)
    where
        F: Fn(&Op) -> Result<(), E> + Sync,
        E: Into<BoxError>,
    {
        let (seed, before) = self.start();
        let retries = Arc::new(AtomicU64::new(0));
        let workers = self.workers;
        let barrier = std::sync::Barrier::new(workers + 1);
        let plan = self.plan(seed);
        let (elapsed, logs) = std::thread::scope(|s| {
            let this = &plan;
            let (barrier, op, retries) = (&barrier, &op, &retries);
            let mut handles = Vec::with_capacity(workers);
            let mut failed = Vec::new();
            for worker in 0..workers {
                let spawned = std::thread::Builder::new()
                    .name(format!("contention-{worker}"))
                    .spawn_scoped(s, move || {
                        let mut log = WorkerLog::new(this.ops);
                        barrier.wait();
                        let deadline = Instant::now() + this.time_limit;
                        for index in 0..this.ops {
                            if Instant::now() >= deadline {
                                log.report.timed_out = true;
                                break;
                            }
                            let o = this.op(worker, index, retries);
                            log.report.attempted += 1;
                            let started = Instant::now();
                            match catch_unwind(AssertUnwindSafe(|| op(&o))) {
                                Ok(outcome) => log.record(o.id, outcome, started.elapsed()),
                                Err(p) => log.record_panic(&*p),
                            }
                        }
                        log
                    });
                match spawned {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        let mut log = WorkerLog::new(this.ops);
                        log.report.record_escaped(
                            None,
                            &format!("worker thread {worker} could not start: {e}"),
                        );
                        failed.push(log);
                        // Stand in at the barrier for the thread that is missing.
                        let _ = std::thread::Builder::new()
                            .spawn_scoped(s, move || barrier.wait())
                            .map_err(|_| ());
                    }
                }
            }
            barrier.wait();
            let started = Instant::now();
            let mut logs: Vec<WorkerLog> = handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(log) => log,
                    Err(p) => {
                        let mut log = WorkerLog::new(this.ops);
                        log.record_panic(&*p);
                        log
                    }
                })
                .collect();
            logs.extend(failed);
            (started.elapsed(), logs)
        });
        self.finish(seed, before, &retries, elapsed, logs)
    }

    /// Runs the operations as `workers` tokio tasks on the current runtime (which needs
    /// its timer: `#[tokio::test]` has one) and returns the report.
    ///
    /// An operation still running at the time limit is abandoned and counted as an
    /// escaped error. Called outside a tokio runtime, nothing runs and the report holds
    /// one escaped error saying so.
    pub async fn run_async<F, Fut, E>(self, op: F) -> ContentionReport
    where
        F: Fn(Op) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.run_async_with_acked(op).await.0
    }

    /// [`run_async`](Self::run_async), also returning the acknowledged ids.
    pub async fn run_async_with_acked<F, Fut, E>(mut self, op: F) -> (ContentionReport, Acked)
    where
        F: Fn(Op) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let (seed, before) = self.start();
        let retries = Arc::new(AtomicU64::new(0));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let mut log = WorkerLog::new(0);
            log.report.record_escaped(
                None,
                "`Contention::run_async` needs a tokio runtime; call it inside one or use `run`",
            );
            return self.finish(seed, before, &retries, Duration::ZERO, vec![log]);
        };
        let workers = self.workers;
        let barrier = Arc::new(tokio::sync::Barrier::new(workers + 1));
        let op = Arc::new(op);
        let plan = self.plan(seed);
        let (ops, time_limit) = (plan.ops, plan.time_limit);
        let mut handles = Vec::with_capacity(workers);
        for worker in 0..workers {
            let barrier = Arc::clone(&barrier);
            let op = Arc::clone(&op);
            let plan: Vec<Op> = (0..ops)
                .map(|index| plan.op(worker, index, &retries))
                .collect();
            handles.push(runtime.spawn(async move {
                let mut log = WorkerLog::new(ops);
                barrier.wait().await;
                let deadline = tokio::time::Instant::now() + time_limit;
                for o in plan {
                    if tokio::time::Instant::now() >= deadline {
                        log.report.timed_out = true;
                        break;
                    }
                    log.report.attempted += 1;
                    let id = o.id;
                    let started = Instant::now();
                    let fut = CatchUnwind(Box::pin(async { op(o).await }));
                    match tokio::time::timeout_at(deadline, fut).await {
                        Ok(Ok(outcome)) => log.record(id, outcome, started.elapsed()),
                        Ok(Err(p)) => log.record_panic(&*p),
                        Err(_) => {
                            log.report.timed_out = true;
                            log.report.record_escaped(
                                None,
                                &format!(
                                    "operation {id} did not finish before the time limit ({time_limit:?})"
                                ),
                            );
                            break;
                        }
                    }
                }
                log
            }));
        }
        barrier.wait().await;
        let started = Instant::now();
        let mut logs = Vec::with_capacity(workers);
        for h in handles {
            logs.push(match h.await {
                Ok(log) => log,
                Err(e) => {
                    let mut log = WorkerLog::new(ops);
                    log.report
                        .record_escaped(None, &format!("worker task failed: {e}"));
                    log
                }
            });
        }
        let elapsed = started.elapsed();
        self.finish(seed, before, &retries, elapsed, logs)
    }
}

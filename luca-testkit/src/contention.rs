//! What a contention run did: [`ContentionReport`].

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use luca_core::rusqlite;

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

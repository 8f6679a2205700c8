//! The original scraper's learning engine: which extraction patterns work on which kind of
//! site, learned from many concurrent tasks, with no update lost.
//!
//! Each of `--tasks` tasks records `--records` outcomes: "pattern P was tried on a site of
//! kind K and succeeded (or failed)". Recording is a read-modify-write, as in the
//! original: read the `(kind, pattern)` row's counts, add one in the program, write the
//! row back (an upsert, which also stores the new success rate). On naive per-thread
//! connections that loses updates under concurrency (two tasks read the same counts, both
//! write count + 1) or fails with `database is locked`; through a `luca_core::Db` every
//! write runs on one writer, in order, so each read sees the previous write.
//!
//! At the end it prints the learned ranking (success rate per pattern, and the best
//! pattern per kind of site) and proves that no update was lost: each row's counts moved
//! by exactly the outcomes the tasks had acknowledged, and their sum equals the number of
//! acknowledged records. It exits non-zero otherwise, or if any record failed.
//!
//! The workload only sees the [`PatternStore`] trait, so the same run goes to PostgreSQL
//! with `--postgres URL`: the same read-modify-write, in a SERIALIZABLE transaction of a
//! `luca_core::postgres::PgDb`, which runs the whole transaction again when PostgreSQL
//! refuses it (`40001` serialization_failure, `40P01` deadlock_detected). Many processes
//! can run against one database at once; each checks what it added.
//!
//! ```text
//! cargo run --release --example learning_engine
//! cargo run --release --example learning_engine -- --tasks 256 --records 1000 --db learn.db
//! cargo run --release --example learning_engine -- --postgres postgresql://user@localhost/learn
//! ```

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use luca_core::Db;
use luca_core::postgres::PgDb;
use luca_core::retry::{BusyCode, RetryPolicy};
use luca_core::rusqlite::{OptionalExtension, params};
use luca_testkit::TempDb;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The kinds of site the patterns are tried on.
const KINDS: [&str; 3] = ["shop", "blog", "directory"];

/// The extraction patterns, with how often each really works on each kind of site (the
/// rates the engine should learn back).
const PATTERNS: [(&str, [f64; 3]); 8] = [
    ("json_ld_contact", [0.93, 0.55, 0.71]),
    ("mailto_link", [0.62, 0.88, 0.52]),
    ("tel_link", [0.74, 0.21, 0.86]),
    ("schema_org_org", [0.69, 0.38, 0.64]),
    ("footer_regex", [0.47, 0.52, 0.41]),
    ("contact_page_form", [0.35, 0.44, 0.18]),
    ("obfuscated_at_dot", [0.12, 0.29, 0.09]),
    ("image_alt_text", [0.05, 0.08, 0.03]),
];

const USAGE: &str = "\
usage: learning_engine [--tasks N] [--records N] [--db PATH | --postgres URL]

  --tasks N         concurrent tasks (1 to 4096, default 64)
  --records N       outcomes each task records (1 to 1000000, default 250)
  --db PATH         the SQLite file (default: a temporary file, removed at exit); an
                    existing file keeps its counts, and the run checks what it added
  --postgres URL    a PostgreSQL database instead (`postgresql://user@host/db`, or
                    `host=/run/postgresql dbname=learn`); its table keeps its counts too";

/// Where the engine keeps its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Database {
    /// A SQLite file, through a `Db`.
    Sqlite(PathBuf),
    /// A PostgreSQL database (its URL), through a `PgDb`.
    Postgres(String),
}

/// The command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// Concurrent tasks.
    pub(crate) tasks: usize,
    /// Outcomes each task records.
    pub(crate) records: usize,
    /// The database; `None`: a temporary SQLite file.
    pub(crate) db: Option<Database>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tasks: 64,
            records: 250,
            db: None,
        }
    }
}

/// Reads the flags (without the program name); `Err` holds the message to print.
pub(crate) fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Config, String> {
    let mut cfg = Config::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        if arg == "-h" || arg == "--help" {
            return Err(USAGE.to_owned());
        }
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("`{name}` needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--tasks" => cfg.tasks = number(&arg, value(&arg)?, 1, 4096)?,
            "--records" => cfg.records = number(&arg, value(&arg)?, 1, 1_000_000)?,
            "--db" | "--postgres" => {
                let v = value(&arg)?;
                if cfg.db.is_some() {
                    return Err(format!(
                        "give one database: `--db PATH` or `--postgres URL`, once\n\n{USAGE}"
                    ));
                }
                cfg.db = Some(if arg == "--db" {
                    Database::Sqlite(PathBuf::from(v))
                } else {
                    Database::Postgres(v.to_string_lossy().into_owned())
                });
            }
            _ => return Err(format!("unknown argument `{arg}`\n\n{USAGE}")),
        }
    }
    Ok(cfg)
}

fn number(name: &str, v: OsString, min: usize, max: usize) -> Result<usize, String> {
    let s = v.to_string_lossy();
    match s.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{name}` takes a number from {min} to {max}, not `{s}`\n\n{USAGE}"
        )),
    }
}

#[tokio::main]
pub(crate) async fn main() -> ExitCode {
    let cfg = match parse_args(std::env::args_os().skip(1)) {
        Ok(cfg) => cfg,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(&cfg).await {
        Ok(report) => {
            print!("{}", report.text);
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("learning_engine: {}", with_sources(&*e));
            ExitCode::FAILURE
        }
    }
}

/// An error with its `source()` chain (a driver's "db error" says little without the
/// server's message under it).
fn with_sources(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let s = source.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        next = source.source();
    }
    text
}

/// The counts of one `(kind, pattern)` row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) successes: u64,
    pub(crate) failures: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.successes += other.successes;
        self.failures += other.failures;
    }
    fn total(self) -> u64 {
        self.successes + self.failures
    }
    fn rate(self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            self.successes as f64 / self.total() as f64
        }
    }
}

/// Every row's counts, by `(kind, pattern)`.
pub(crate) type Table = BTreeMap<(String, String), Counts>;

/// Where the engine keeps what it learned, its table created. The workload
/// ([`run_workload`]) and the report ([`run_on`]) see only this trait: a store for another
/// database implements these methods ([`PgStore`] makes `record` the same
/// read-modify-write in a SERIALIZABLE transaction that is run again on a conflict).
pub(crate) trait PatternStore: Clone + Send + Sync + 'static {
    /// Records one outcome; `Ok` means it is committed.
    fn record(
        &self,
        kind: &'static str,
        pattern: &'static str,
        success: bool,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
    /// Every row's counts.
    fn counts(&self) -> impl Future<Output = Result<Table, BoxError>> + Send;
    /// What the store is, for the report.
    fn describe(&self) -> String;
    /// A line on what the store did (commits, latencies …), for the report.
    fn summary(&self) -> String;
}

/// The store on SQLite through a [`Db`].
#[derive(Clone)]
pub(crate) struct SqliteStore {
    db: Db,
    /// The commits and writes made by [`SqliteStore::open`], left out of the summary.
    setup: (u64, u64),
}

impl SqliteStore {
    /// Opens (or creates) the file and the table.
    pub(crate) async fn open(path: &std::path::Path) -> Result<SqliteStore, BoxError> {
        let mut store = SqliteStore {
            db: Db::open(path).await?,
            setup: (0, 0),
        };
        store.prepare().await?;
        let s = store.db.stats();
        store.setup = (s.commits, s.writes_ok);
        Ok(store)
    }

    async fn prepare(&self) -> Result<(), BoxError> {
        self.db
            .write(|conn| {
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS pattern_stats (
                        kind TEXT NOT NULL,
                        pattern TEXT NOT NULL,
                        success_count INTEGER NOT NULL,
                        failure_count INTEGER NOT NULL,
                        success_rate REAL NOT NULL,
                        updated_unix INTEGER NOT NULL,
                        PRIMARY KEY (kind, pattern))",
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Finishes the queued writes and closes the file.
    pub(crate) async fn close(&self) -> Result<(), BoxError> {
        Ok(self.db.close().await?)
    }
}

impl PatternStore for SqliteStore {
    async fn record(
        &self,
        kind: &'static str,
        pattern: &'static str,
        success: bool,
    ) -> Result<(), BoxError> {
        self.db
            .write(move |conn| {
                // Read the row ...
                let now: Option<(i64, i64)> = conn
                    .query_row(
                        "SELECT success_count, failure_count FROM pattern_stats
                         WHERE kind = ?1 AND pattern = ?2",
                        [kind, pattern],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                // ... modify it here ...
                let (mut ok, mut failed) = now.unwrap_or((0, 0));
                if success {
                    ok += 1;
                } else {
                    failed += 1;
                }
                let rate = ok as f64 / (ok + failed) as f64;
                // ... and write it back.
                conn.execute(
                    "INSERT INTO pattern_stats
                         (kind, pattern, success_count, failure_count, success_rate, updated_unix)
                     VALUES (?1, ?2, ?3, ?4, ?5, unixepoch())
                     ON CONFLICT (kind, pattern) DO UPDATE SET
                         success_count = excluded.success_count,
                         failure_count = excluded.failure_count,
                         success_rate = excluded.success_rate,
                         updated_unix = excluded.updated_unix",
                    params![kind, pattern, ok, failed, rate],
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn counts(&self) -> Result<Table, BoxError> {
        let rows = self
            .db
            .read(|conn| {
                let mut stmt = conn.prepare(
                    "SELECT kind, pattern, success_count, failure_count FROM pattern_stats",
                )?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((
                            (r.get(0)?, r.get(1)?),
                            Counts {
                                successes: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                                failures: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                            },
                        ))
                    })?
                    .collect::<Result<Table, _>>()?;
                Ok(rows)
            })
            .await?;
        Ok(rows)
    }

    fn describe(&self) -> String {
        format!("SQLite {} through luca_core::Db", self.db.path().display())
    }

    fn summary(&self) -> String {
        let s = self.db.stats();
        format!(
            "Db: {} writes acknowledged in {} commits (group size p50 {}, max {}), write latency p99 {:.1} ms, {} busy errors",
            s.writes_ok.saturating_sub(self.setup.1),
            s.commits.saturating_sub(self.setup.0),
            s.group_sizes.p50,
            s.group_sizes.max,
            s.write_latency_ns.p99 as f64 / 1e6,
            s.busy_total()
        )
    }
}

/// The store on PostgreSQL through a [`PgDb`]: `record` is the same read-modify-write as
/// [`SqliteStore`]'s, in a SERIALIZABLE transaction that `PgDb::write` runs again when
/// PostgreSQL refuses it. Only the SQL dialect changed (`$1` placeholders, the clock).
#[derive(Clone)]
pub(crate) struct PgStore {
    db: PgDb,
    /// The server's version and the database's name, for the report.
    what: String,
    /// The writes committed by [`PgStore::open`], left out of the summary.
    setup: u64,
}

impl PgStore {
    /// The retry policy of the store's writes: every task's transaction touches one of only
    /// 24 rows, so under many tasks conflicts are the rule; 100 retries from 2 ms (capped at
    /// 200 ms) outlast them.
    pub(crate) const RETRY_POLICY: RetryPolicy = RetryPolicy::new()
        .with_max_retries(100)
        .with_delay(Duration::from_millis(2))
        .with_max_delay(Duration::from_millis(200));

    /// Connects to `url` and creates the table if it is missing.
    pub(crate) async fn open(url: &str) -> Result<PgStore, BoxError> {
        let db = PgDb::builder(url)
            .retry_policy(Self::RETRY_POLICY)
            .build()
            .await?;
        db.write(async |tx| {
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS pattern_stats (
                    kind TEXT NOT NULL,
                    pattern TEXT NOT NULL,
                    success_count BIGINT NOT NULL,
                    failure_count BIGINT NOT NULL,
                    success_rate DOUBLE PRECISION NOT NULL,
                    updated_unix BIGINT NOT NULL,
                    PRIMARY KEY (kind, pattern))",
            )
            .await?;
            Ok(())
        })
        .await?;
        let (version, database): (String, String) = db
            .read(async |tx| {
                let row = tx
                    .query_one(
                        "SELECT current_setting('server_version'), current_database()",
                        &[],
                    )
                    .await?;
                Ok((row.get(0), row.get(1)))
            })
            .await?;
        let setup = db.stats().writes_ok;
        Ok(PgStore {
            db,
            what: format!("PostgreSQL {version}, database {database}"),
            setup,
        })
    }
}

impl PatternStore for PgStore {
    async fn record(
        &self,
        kind: &'static str,
        pattern: &'static str,
        success: bool,
    ) -> Result<(), BoxError> {
        // Owned copies: rustc cannot yet prove this future `Send` when the async closure
        // captures references, even `'static` ones.
        let (kind, pattern) = (kind.to_owned(), pattern.to_owned());
        self.db
            .write(async move |tx| {
                // Read the row ...
                let now = tx
                    .query_opt(
                        "SELECT success_count, failure_count FROM pattern_stats
                         WHERE kind = $1 AND pattern = $2",
                        &[&kind, &pattern],
                    )
                    .await?
                    .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
                // ... modify it here ...
                let (mut ok, mut failed) = now.unwrap_or((0, 0));
                if success {
                    ok += 1;
                } else {
                    failed += 1;
                }
                let rate = ok as f64 / (ok + failed) as f64;
                // ... and write it back.
                tx.execute(
                    "INSERT INTO pattern_stats
                         (kind, pattern, success_count, failure_count, success_rate, updated_unix)
                     VALUES ($1, $2, $3, $4, $5, extract(epoch FROM now())::bigint)
                     ON CONFLICT (kind, pattern) DO UPDATE SET
                         success_count = excluded.success_count,
                         failure_count = excluded.failure_count,
                         success_rate = excluded.success_rate,
                         updated_unix = excluded.updated_unix",
                    &[&kind, &pattern, &ok, &failed, &rate],
                )
                .await?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn counts(&self) -> Result<Table, BoxError> {
        let rows = self
            .db
            .read(async |tx| {
                let rows = tx
                    .query(
                        "SELECT kind, pattern, success_count, failure_count FROM pattern_stats",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        (
                            (r.get(0), r.get(1)),
                            Counts {
                                successes: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                                failures: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
                            },
                        )
                    })
                    .collect::<Table>())
            })
            .await?;
        Ok(rows)
    }

    fn describe(&self) -> String {
        format!(
            "{}, through luca_core::postgres::PgDb (SERIALIZABLE writes)",
            self.what
        )
    }

    fn summary(&self) -> String {
        let s = self.db.stats();
        let busy = |code: BusyCode| s.busy_by_code[code.index()];
        format!(
            "PgDb: {} writes committed, {} transactions run again ({} serialization failures, {} deadlocks), {} failed, {} commit outcome unknown",
            s.writes_ok.saturating_sub(self.setup),
            s.retries,
            busy(BusyCode::SerializationFailure),
            busy(BusyCode::DeadlockDetected),
            s.writes_failed,
            s.commit_outcome_unknown
        )
    }
}

/// A small, seeded random source (xorshift64*), so a task's choices are reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// What the workload did.
#[derive(Debug, Default)]
pub(crate) struct Workload {
    /// The outcomes whose `record` returned `Ok`, by row.
    pub(crate) acknowledged: Table,
    /// Records that returned an error.
    pub(crate) errors: u64,
    /// The first error's text.
    pub(crate) first_error: Option<String>,
    /// How long the workload took.
    pub(crate) elapsed: Duration,
}

/// Runs `tasks` concurrent tasks, each recording `records` outcomes into `store`.
pub(crate) async fn run_workload<S: PatternStore>(
    store: &S,
    tasks: usize,
    records: usize,
) -> Result<Workload, BoxError> {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let store = store.clone();
        set.spawn(async move {
            let mut rng = Rng::new(task as u64 + 1);
            let mut mine = Workload::default();
            for _ in 0..records {
                let k = rng.below(KINDS.len());
                let (pattern, rates) = PATTERNS[rng.below(PATTERNS.len())];
                let success = rng.chance(rates[k]);
                match store.record(KINDS[k], pattern, success).await {
                    Ok(()) => {
                        let row = mine
                            .acknowledged
                            .entry((KINDS[k].to_owned(), pattern.to_owned()))
                            .or_default();
                        if success {
                            row.successes += 1;
                        } else {
                            row.failures += 1;
                        }
                    }
                    Err(e) => {
                        mine.errors += 1;
                        mine.first_error.get_or_insert_with(|| with_sources(&*e));
                    }
                }
            }
            mine
        });
    }
    let mut all = Workload::default();
    while let Some(done) = set.join_next().await {
        let mine = done?;
        for (row, c) in mine.acknowledged {
            all.acknowledged.entry(row).or_default().add(c);
        }
        all.errors += mine.errors;
        if all.first_error.is_none() {
            all.first_error = mine.first_error;
        }
    }
    all.elapsed = started.elapsed();
    Ok(all)
}

/// What a run found, and its printed report.
#[derive(Debug)]
pub(crate) struct Report {
    /// The whole report as printed.
    pub(crate) text: String,
    /// Updates acknowledged but missing from the table (negative: counted twice).
    pub(crate) lost: i64,
    /// Rows whose counts moved by other than what was acknowledged for them.
    pub(crate) rows_wrong: usize,
    /// Records that failed.
    pub(crate) errors: u64,
}

impl Report {
    pub(crate) fn passed(&self) -> bool {
        self.lost == 0 && self.rows_wrong == 0 && self.errors == 0
    }
}

/// Runs the workload on the store the command line names, then reports.
pub(crate) async fn run(cfg: &Config) -> Result<Report, BoxError> {
    let temp;
    let path = match &cfg.db {
        Some(Database::Postgres(url)) => {
            let store = PgStore::open(url).await?;
            return run_on(&store, cfg).await;
        }
        Some(Database::Sqlite(p)) => p.clone(),
        None => {
            temp = TempDb::try_named("learning.db")?;
            temp.path().to_path_buf()
        }
    };
    let store = SqliteStore::open(&path).await?;
    let report = run_on(&store, cfg).await;
    store.close().await?;
    report
}

/// The run on any store: counts before, the workload, counts after, the report.
pub(crate) async fn run_on<S: PatternStore>(store: &S, cfg: &Config) -> Result<Report, BoxError> {
    let before = store.counts().await?;
    let work = run_workload(store, cfg.tasks, cfg.records).await?;
    let after = store.counts().await?;

    let mut t = String::new();
    let total = cfg.tasks * cfg.records;
    let _ = writeln!(
        t,
        "learning engine: {} tasks x {} records = {total} pattern outcomes",
        cfg.tasks, cfg.records
    );
    let _ = writeln!(t, "store: {}", store.describe());
    let acked: u64 = work.acknowledged.values().map(|c| c.total()).sum();
    let _ = writeln!(
        t,
        "recorded {acked} in {:.2} s ({:.0} records/s), {} errors{}",
        work.elapsed.as_secs_f64(),
        acked as f64 / work.elapsed.as_secs_f64().max(1e-9),
        work.errors,
        work.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    let _ = writeln!(t, "{}\n", store.summary());

    // The ranking: each pattern over all kinds of site, from the table as it is now.
    let mut per_pattern: BTreeMap<&str, Counts> = BTreeMap::new();
    for ((_, pattern), c) in &after {
        per_pattern.entry(pattern.as_str()).or_default().add(*c);
    }
    let mut ranking: Vec<(&str, Counts)> = per_pattern.into_iter().collect();
    ranking.sort_by(|a, b| b.1.rate().total_cmp(&a.1.rate()).then(a.0.cmp(b.0)));
    let _ = writeln!(t, "learned ranking (all kinds of site):");
    let _ = writeln!(
        t,
        "{:>4}  {:<18} {:>10} {:>10} {:>9} {:>7}",
        "rank", "pattern", "successes", "failures", "attempts", "rate"
    );
    for (i, (pattern, c)) in ranking.iter().enumerate() {
        let _ = writeln!(
            t,
            "{:>4}  {:<18} {:>10} {:>10} {:>9} {:>6.1}%",
            i + 1,
            pattern,
            c.successes,
            c.failures,
            c.total(),
            100.0 * c.rate()
        );
    }
    let best: Vec<String> = KINDS
        .iter()
        .filter_map(|kind| {
            after
                .iter()
                .filter(|((k, _), c)| k == kind && c.total() > 0)
                .max_by(|a, b| a.1.rate().total_cmp(&b.1.rate()))
                .map(|((_, p), c)| format!("{kind} -> {p} ({:.0}%)", 100.0 * c.rate()))
        })
        .collect();
    let _ = writeln!(t, "best pattern per kind of site: {}\n", best.join(", "));

    // The proof: every row moved by exactly what was acknowledged for it.
    let mut rows_wrong = 0;
    let mut lost: i64 = 0;
    let mut rows: Vec<&(String, String)> = after.keys().chain(work.acknowledged.keys()).collect();
    rows.sort();
    rows.dedup();
    for row in rows {
        let was = before.get(row).copied().unwrap_or_default();
        let now = after.get(row).copied().unwrap_or_default();
        let moved = Counts {
            successes: now.successes.saturating_sub(was.successes),
            failures: now.failures.saturating_sub(was.failures),
        };
        let acked_row = work.acknowledged.get(row).copied().unwrap_or_default();
        if moved != acked_row {
            rows_wrong += 1;
            let _ = writeln!(
                t,
                "row {}/{}: acknowledged {}+{}, the table moved by {}+{}",
                row.0,
                row.1,
                acked_row.successes,
                acked_row.failures,
                moved.successes,
                moved.failures
            );
        }
        lost += acked_row.total() as i64 - moved.total() as i64;
    }
    let sum = |t: &Table| t.values().map(|c| c.total() as i64).sum::<i64>();
    let counted = sum(&after) - sum(&before);
    let _ = writeln!(
        t,
        "lost updates: {lost} (acknowledged {acked} records; the table's counts grew by {counted}; {rows_wrong} of {} rows off)",
        after.len()
    );
    let report = Report {
        text: String::new(),
        lost,
        rows_wrong,
        errors: work.errors,
    };
    let _ = writeln!(
        t,
        "{}",
        if report.passed() {
            "ok: no update lost, no record failed"
        } else {
            "FAILED: the counts do not add up, or records failed"
        }
    );
    Ok(Report { text: t, ..report })
}

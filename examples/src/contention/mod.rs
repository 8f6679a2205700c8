//! The main job (`cargo run --release --example contention`): the example's `main` is
//! [`main`] here, so that the tests can run the same job in-process.
//!
//! 1. The four checks of the original Python project's concurrency suite (WAL mode,
//!    connection reuse, 10 × 20 concurrent writes, a retry that gets past a held lock).
//! 2. A comparison, at several writer counts, of six ways to write to one SQLite file
//!    from many threads, for an insert and a read-modify-write workload:
//!    - **naive**: a connection per thread with SQLite's defaults (rollback journal, no
//!      busy timeout, autocommit statements);
//!    - **original**: the Python original's design (WAL, thread-local connections, 5
//!      retries from 100 ms around DEFERRED transactions);
//!    - **original, read outside txn**: the same as Python's `sqlite3` module ran it,
//!      opening the transaction implicitly at the first write, so a read-modify-write
//!      reads outside it;
//!    - **`#[db_retry]` + local**: luca's retry macro over `luca_core::local` connections,
//!      `BEGIN IMMEDIATE`;
//!    - **`Db`, group commit off** and **`Db`** with its defaults.
//!
//!    Each run starts from fresh tables, times every call, counts the errors that reach
//!    the caller by SQLite code, and then checks the file: a write acknowledged `Ok` but
//!    absent, or a counter whose value differs from its acknowledged increments, is a
//!    lost write. The serial ceiling (one connection, one thread, the same operations)
//!    is measured in the same run.
//!
//! The job fails (exit status 1) when a check fails or a luca row (the last three)
//! escapes an error or loses a write; the first three rows are there to show both.

mod checks;
mod cli;
mod plot;
mod report;
mod systems;

use std::ffi::OsString;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use luca_core::local::cleanup_connections;
use luca_core::rusqlite::Connection;
use luca_testkit::TempDb;

pub use self::cli::{Options, UsageError};
use self::report::{CheckRow, Report, Row, Settings, WorkloadReport};
use self::systems::{RunSpec, System, Workload};

/// Passes of the serial ceiling per workload; the fastest counts.
const CEILING_PASSES: usize = 3;

/// Tables this job creates; `--db` accepts a file that holds no others.
const OWN_TABLES: [&str; 3] = ["writes", "ledger", "counters"];

/// The example's `main`: runs the job on the process's arguments, stdout and stderr, with
/// a progress bar when stderr is a terminal.
pub fn main() -> ExitCode {
    let progress = std::io::stderr().is_terminal();
    let code = run(
        std::env::args_os(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
        progress,
    );
    ExitCode::from(code)
}

/// Runs the job on `args` (the first is the program name) and returns its exit status:
/// 0 when every check passed and no luca row escaped an error or lost a write, 1 when one
/// did or the job could not run, 2 for a bad command line (the usage goes to `err`).
///
/// The report goes to `out`; with `--json` the JSON goes to `out` and the report to `err`.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write, progress: bool) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let options = match Options::parse_from(args) {
        Ok(options) => options,
        Err(e) if e.is_help() => {
            let _ = write!(out, "{e}");
            return 0;
        }
        Err(e) => {
            let _ = write!(err, "{e}");
            return 2;
        }
    };
    match run_job(&options, out, err, progress) {
        Ok(report) if report.passed => 0,
        Ok(_) => 1,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            1
        }
    }
}

/// Why the job could not run at all.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobError {
    /// The temporary database or the output could not be written.
    Io(std::io::Error),
    /// SQLite refused something the job needs (opening, preparing tables, verifying).
    Database(luca_core::Error),
    /// `--db` names a file with tables of its own.
    ForeignDatabase {
        /// The `--db` path.
        path: PathBuf,
        /// Its tables that are not the job's.
        tables: Vec<String>,
    },
    /// `--plot` could not be written.
    Plot(String),
    /// `--json` could not be written.
    Json(serde_json::Error),
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Io(e) => write!(f, "i/o: {e}"),
            JobError::Database(e) => write!(f, "database: {e}"),
            JobError::ForeignDatabase { path, tables } => write!(
                f,
                "`--db {}` holds tables of its own ({}); the job drops and refills its \
                 tables, so give it a new file",
                path.display(),
                tables.join(", ")
            ),
            JobError::Plot(e) => write!(f, "cannot write the plot: {e}"),
            JobError::Json(e) => write!(f, "cannot write the JSON: {e}"),
        }
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JobError::Io(e) => Some(e),
            JobError::Database(e) => Some(e),
            JobError::Json(e) => Some(e),
            JobError::ForeignDatabase { .. } | JobError::Plot(_) => None,
        }
    }
}

impl From<std::io::Error> for JobError {
    fn from(e: std::io::Error) -> Self {
        JobError::Io(e)
    }
}

impl From<luca_core::Error> for JobError {
    fn from(e: luca_core::Error) -> Self {
        JobError::Database(e)
    }
}

impl From<luca_core::rusqlite::Error> for JobError {
    fn from(e: luca_core::rusqlite::Error) -> Self {
        JobError::Database(e.into())
    }
}

/// Checks that `path` is new or holds only this job's tables, then drops those.
fn claim_db(path: &Path) -> Result<(), JobError> {
    let conn = Connection::open(path)?;
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let foreign: Vec<String> = tables
        .into_iter()
        .filter(|t| !OWN_TABLES.contains(&t.as_str()))
        .collect();
    if !foreign.is_empty() {
        return Err(JobError::ForeignDatabase {
            path: path.to_path_buf(),
            tables: foreign,
        });
    }
    for t in OWN_TABLES {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {t}"))?;
    }
    Ok(())
}

/// Runs the checks and the comparison, prints the report, writes `--json` and `--plot`.
///
/// # Errors
/// [`JobError`] when the job could not run; a failed check or a failing luca row is not
/// an error but `passed: false` in the report.
fn run_job(
    options: &Options,
    out: &mut dyn Write,
    err: &mut dyn Write,
    progress: bool,
) -> Result<Report, JobError> {
    let temp;
    let path: &Path = match &options.db {
        Some(path) => path,
        None => {
            temp = TempDb::try_named("contention.db")?;
            temp.path()
        }
    };
    claim_db(path)?;
    let human: &mut dyn Write = if options.json { err } else { out };

    writeln!(
        human,
        "============================================================"
    )?;
    writeln!(human, "luca contention checks")?;
    writeln!(human, "database: {}", path.display())?;
    writeln!(
        human,
        "============================================================"
    )?;
    let mut checks = Vec::new();
    for (name, note, check) in checks::CHECKS {
        writeln!(human, "\n{name}")?;
        if let Some(note) = note {
            writeln!(human, "  {note}")?;
        }
        let (passed, detail) = match check(path) {
            Ok(detail) => {
                writeln!(human, "  ✓ {detail}")?;
                (true, detail)
            }
            Err(why) => {
                writeln!(human, "  ✗ FAILED: {why}")?;
                (false, why)
            }
        };
        checks.push(CheckRow {
            name,
            passed,
            detail,
        });
    }
    cleanup_connections();
    let passed_checks = checks.iter().filter(|c| c.passed).count();
    writeln!(
        human,
        "\nTotal: {passed_checks}/{} checks passed",
        checks.len()
    )?;
    writeln!(human, "retry metrics: {}", luca_core::metrics().snapshot())?;

    let writers: Vec<usize> = options.writers.iter().map(|&w| w as usize).collect();
    writeln!(
        human,
        "\n============================================================\n\
         Why luca: {} systems × writers {} × 2 workloads, {} operations per run\n\
         (each run bounded to {:.1} s; * = stopped by that bound)\n\
         ============================================================",
        System::ALL.len(),
        writers
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        options.ops,
        options.duration.as_secs_f64()
    )?;
    human.flush()?;

    let total_runs = Workload::ALL.len() * (1 + System::ALL.len() * writers.len());
    let bar = ProgressBar::with_draw_target(
        Some(total_runs as u64),
        if progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed:>4} [{bar:32}] {pos}/{len} runs  {wide_msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }

    let mut workloads = Vec::new();
    for workload in Workload::ALL {
        let spec = |writers| RunSpec {
            path,
            workload,
            writers,
            ops: options.ops,
            bound: options.duration,
        };
        bar.set_message(format!("{}: serial ceiling", workload.key()));
        // The fastest of a few passes: the first also pays for growing the file.
        let mut ceiling_run = systems::run_ceiling(&spec(1))?;
        for _ in 1..CEILING_PASSES {
            let again = systems::run_ceiling(&spec(1))?;
            if again.ok as f64 / again.elapsed.as_secs_f64().max(1e-9)
                > ceiling_run.ok as f64 / ceiling_run.elapsed.as_secs_f64().max(1e-9)
            {
                ceiling_run = again;
            }
        }
        let ceiling = Row::new(
            "serial_ceiling".to_owned(),
            "serial ceiling",
            false,
            1,
            &ceiling_run,
            None,
        );
        bar.inc(1);
        let mut rows = Vec::new();
        for &n in &writers {
            for system in System::ALL {
                bar.set_message(format!(
                    "{}: {}, {n} writer{}",
                    workload.key(),
                    system.label(),
                    if n == 1 { "" } else { "s" }
                ));
                let outcome = systems::run(system, &spec(n))?;
                rows.push(Row::for_system(system, n, &outcome, ceiling.ops_per_sec));
                bar.inc(1);
            }
        }
        workloads.push(WorkloadReport {
            workload: workload.key(),
            title: workload.title(),
            ceiling,
            rows,
        });
    }
    bar.finish_and_clear();

    let mut failures: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("check `{}` failed: {}", c.name, c.detail))
        .collect();
    for (w, workload) in workloads.iter().zip(Workload::ALL) {
        failures.extend(w.rows.iter().filter_map(|r| r.failure(workload)));
    }
    let report = Report {
        settings: Settings {
            writers: options.writers.clone(),
            ops: options.ops,
            duration_secs: options.duration.as_secs_f64(),
            db: path.display().to_string(),
        },
        checks,
        histogram_bounds_us: report::BUCKETS_US.to_vec(),
        workloads,
        passed: failures.is_empty(),
        failures,
    };

    for w in &report.workloads {
        write!(human, "{}", report::table(w, options.ops))?;
    }
    for w in &report.workloads {
        write!(human, "{}", report::histograms(w))?;
    }
    writeln!(
        human,
        "\nlost = acknowledged Ok but not in the file (insert: missing rows; \
         read-modify-write: increments missing from the counters)"
    )?;
    if let Some(plot) = &options.plot {
        plot::write_svg(plot, &report).map_err(JobError::Plot)?;
        writeln!(human, "plot written to {}", plot.display())?;
    }
    if report.passed {
        writeln!(
            human,
            "\n✓ luca rows: no error escaped, no write lost; all {} checks passed",
            report.checks.len()
        )?;
    } else {
        writeln!(human, "\n✗ FAILED:")?;
        for f in &report.failures {
            writeln!(human, "  - {f}")?;
        }
    }
    human.flush()?;
    if options.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(JobError::Json)?;
        writeln!(out)?;
        out.flush()?;
    }
    Ok(report)
}

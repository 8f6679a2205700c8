//! The flags of the main job, and what goes wrong with them.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};

/// The most writer threads one run may start.
pub(crate) const MAX_WRITERS: u32 = 512;

/// The longest `--duration` accepted: one hour.
pub(crate) const MAX_DURATION_SECS: f64 = 3600.0;

/// `cargo run --release --example contention -- [OPTIONS]`
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "contention",
    about = "luca's main job: the original's four concurrency checks, then naive SQLite, the \
             original design, #[db_retry] and Db compared under many writers",
    after_help = "Exit status: 0 when the checks pass and no luca row escaped an error or lost \
                  a write; 1 otherwise; 2 for bad flags."
)]
pub struct Options {
    /// Writer counts to compare, comma-separated (each 1..=512; run in increasing order).
    #[arg(
        long,
        value_name = "N,N,…",
        value_delimiter = ',',
        default_value = "1,16,64",
        value_parser = clap::value_parser!(u32).range(1..=MAX_WRITERS as i64)
    )]
    pub writers: Vec<u32>,

    /// Operations per run, shared out among the run's writers.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..=10_000_000)
    )]
    pub ops: u64,

    /// Bound on each run's wall time in seconds: writers start no new operation after it
    /// (operations under way finish, so a run can overshoot by its slowest call).
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    pub duration: Duration,

    /// The database file (default: a fresh temporary file). It must be new, or hold only
    /// this job's tables.
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// Print the results as one JSON document on stdout (the human report goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Write a chart of throughput and p99 latency against writer count to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

impl Options {
    /// Parses `args` (the first item is the program name).
    ///
    /// # Errors
    /// [`UsageError`] for an unknown flag or a bad value, and for `--help` (whose text is
    /// the error's message and whose [`UsageError::exit_code`] is 0).
    pub fn parse_from<I, T>(args: I) -> Result<Options, UsageError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut options = Options::try_parse_from(args).map_err(|error| UsageError {
            usage: Options::command().render_usage().to_string(),
            error,
        })?;
        options.writers.sort_unstable();
        options.writers.dedup();
        Ok(options)
    }
}

/// `--duration`: a positive, finite number of seconds, at most an hour.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= MAX_DURATION_SECS) {
        return Err(format!(
            "`{s}` is out of range; give seconds in (0, {MAX_DURATION_SECS}]"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A bad command line (or `--help`): clap's message, with the usage line.
#[derive(Debug)]
pub struct UsageError {
    error: clap::Error,
    usage: String,
}

impl UsageError {
    /// 0 for `--help`/`--version`, 2 for a bad command line.
    pub fn exit_code(&self) -> i32 {
        self.error.exit_code()
    }

    /// Whether this is a request for help rather than a mistake.
    pub fn is_help(&self) -> bool {
        self.exit_code() == 0
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = self.error.render().to_string();
        if self.is_help() || message.contains("Usage:") {
            return write!(f, "{message}");
        }
        // Value errors name the flag but not the usage: add it.
        writeln!(f, "{}\n", message.trim_end())?;
        writeln!(f, "{}", self.usage.trim_end())
    }
}

impl std::error::Error for UsageError {}

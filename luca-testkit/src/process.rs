//! Multi-process harness: the test binary re-runs itself as K child writer processes
//! against one database file, collects their reports, and fails if any child failed or
//! lost a write.
//!
//! # The pattern
//!
//! One binary is both parent and child. The parent starts `K` copies of
//! [`std::env::current_exe`] with the environment variable [`ROLE_ENV`] set to the
//! child's role (and a few more, read back as [`ChildEnv`]); the first thing the test does
//! is call [`child_main`], which in a child runs the child's work and ends the process,
//! and in the parent returns at once.
//!
//! - In a normal (libtest) test, the child is started with `--exact <test name>
//!   --nocapture`, so the test harness of the child runs only the test that started it,
//!   and that test's first line, [`child_main`], takes over. The test name is the name of
//!   the thread libtest runs the test on, or [`Processes::test_name`].
//! - In a `harness = false` test binary, call [`child_main`] first thing in `main`; the
//!   arguments are there too, and can be ignored.
//!
//! A child writes its [`ChildReport`] to a file the parent names (one `key value` line
//! per field, see [`ChildReport::to_lines`]), never to stdout, so nothing the child or
//! its test harness prints can be mistaken for it.
//!
//! ```no_run
//! use luca_testkit::process::{child_main, ChildReport, Processes};
//!
//! #[test]
//! fn four_writers_share_one_file() {
//!     child_main(|child| {
//!         let conn = luca_core::rusqlite::Connection::open(child.db()).unwrap();
//!         let mut report = ChildReport::default();
//!         for i in 0..100 {
//!             let key = format!("{}-{i}", child.index());
//!             match conn.execute("INSERT INTO t (k) VALUES (?1)", [key]) {
//!                 Ok(_) => report.ok += 1,
//!                 Err(e) => report.escaped(&e),
//!             }
//!         }
//!         report
//!     });
//!     let db = luca_testkit::TempDb::new();
//!     let conn = luca_core::rusqlite::Connection::open(db.path()).unwrap();
//!     conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (k TEXT)").unwrap();
//!     let report = Processes::new(4)
//!         .db(db.path())
//!         .verify(|conn, reports| {
//!             let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
//!             let acked: u64 = reports.iter().map(|r| r.ok).sum();
//!             Ok(acked.saturating_sub(rows as u64))
//!         })
//!         .run()
//!         .unwrap_or_else(|e| panic!("{e}"));
//!     println!("{report}");
//! }
//! ```
//!
//! Every wait is bounded: children still running at the deadline
//! ([`Processes::timeout`], 30 s by default) are killed and the run fails, naming them.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use luca_core::rusqlite::{self, Connection, OpenFlags};

/// Selects the child role: set (to the role's name) in every child the harnesses start.
pub const ROLE_ENV: &str = "LUCA_TESTKIT_CHILD";
const INDEX_ENV: &str = "LUCA_TESTKIT_CHILD_INDEX";
const COUNT_ENV: &str = "LUCA_TESTKIT_CHILD_COUNT";
const DB_ENV: &str = "LUCA_TESTKIT_CHILD_DB";
const SEED_ENV: &str = "LUCA_TESTKIT_CHILD_SEED";
const ARG_ENV: &str = "LUCA_TESTKIT_CHILD_ARG";
const REPORT_ENV: &str = "LUCA_TESTKIT_CHILD_REPORT";
pub(crate) const ACKS_ENV: &str = "LUCA_TESTKIT_CHILD_ACKS";

/// The default bound on a whole run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a failed child's stderr an error shows (its last bytes).
const STDERR_TAIL: usize = 4096;

/// What a child process knows about itself, from the environment its parent set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildEnv {
    role: String,
    index: usize,
    count: usize,
    db: PathBuf,
    seed: u64,
    arg: String,
    report: Option<PathBuf>,
    pub(crate) acks: Option<PathBuf>,
}

impl ChildEnv {
    /// This process's child environment, or `None` in a process no harness started.
    pub fn current() -> Option<ChildEnv> {
        let role = std::env::var(ROLE_ENV).ok()?;
        let var = |name| std::env::var(name).unwrap_or_default();
        let path = |name| std::env::var_os(name).map(PathBuf::from);
        Some(ChildEnv {
            role,
            index: var(INDEX_ENV).parse().unwrap_or(0),
            count: var(COUNT_ENV).parse().unwrap_or(1),
            db: path(DB_ENV).unwrap_or_default(),
            seed: var(SEED_ENV).parse().unwrap_or(0),
            arg: var(ARG_ENV),
            report: path(REPORT_ENV),
            acks: path(ACKS_ENV),
        })
    }

    /// The role the parent gave (see [`Processes::role`]; `"writer"` by default).
    pub fn role(&self) -> &str {
        &self.role
    }

    /// This child's number, `0..count` (for the crash harness: the cycle).
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many children the parent started at once.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The database file every child works on.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// A seed for this child (the parent's seed mixed with the index).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A free-form argument from the parent (see [`Processes::arg`]).
    pub fn arg(&self) -> &str {
        &self.arg
    }
}

/// One child's figures, sent to the parent as `key value` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildReport {
    /// Operations that succeeded.
    pub ok: u64,
    /// Errors that reached the caller, by SQLite extended code (`-1`: not an SQLite error).
    pub escaped: BTreeMap<i32, u64>,
    /// Writes the child was told had committed and found missing.
    pub lost: u64,
    /// Retries made on the way (as the child counted them).
    pub retries: u64,
    /// Latency of each operation, in microseconds: p50, p99, p99.9, max.
    pub latency_us: [u64; 4],
    /// Wall time of the child's work, in microseconds.
    pub elapsed_us: u64,
}

impl ChildReport {
    /// Counts one escaped error under its SQLite extended code (`-1` when it has none).
    pub fn escaped(&mut self, e: &rusqlite::Error) {
        let code = e.sqlite_error().map_or(-1, |e| e.extended_code);
        *self.escaped.entry(code).or_default() += 1;
    }

    /// Every escaped error, whatever its code.
    pub fn escaped_total(&self) -> u64 {
        self.escaped.values().sum()
    }

    /// Sets the latency figures from the operations' latencies (in any order).
    pub fn latencies(&mut self, samples: &mut [Duration]) {
        samples.sort_unstable();
        let at = |q: f64| -> u64 {
            if samples.is_empty() {
                return 0;
            }
            // Nearest rank: the smallest sample with at least q of them at or below it.
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            u64::try_from(samples[rank - 1].as_micros()).unwrap_or(u64::MAX)
        };
        self.latency_us = [at(0.50), at(0.99), at(0.999), at(1.0)];
    }

    /// The report as the lines a child sends.
    pub fn to_lines(&self) -> String {
        let mut s = format!(
            "ok {}\nlost {}\nretries {}\nelapsed_us {}\nlatency_us {} {} {} {}\n",
            self.ok,
            self.lost,
            self.retries,
            self.elapsed_us,
            self.latency_us[0],
            self.latency_us[1],
            self.latency_us[2],
            self.latency_us[3],
        );
        for (code, n) in &self.escaped {
            s.push_str(&format!("escaped {code} {n}\n"));
        }
        s.push_str("end\n");
        s
    }

    /// Reads [`ChildReport::to_lines`] back. A report without its final `end` line (a
    /// child that died while writing it) is refused.
    ///
    /// # Errors
    /// A line that is not part of the format, or no `end` line; the message names it.
    pub fn parse(text: &str) -> Result<ChildReport, String> {
        let mut r = ChildReport::default();
        let mut ended = false;
        for line in text.lines() {
            let mut words = line.split_ascii_whitespace();
            let key = words.next().unwrap_or_default();
            let nums: Result<Vec<i64>, _> = words.map(str::parse::<i64>).collect();
            let bad = || format!("unreadable report line {line:?}");
            let nums = nums.map_err(|_| bad())?;
            let u = |i: usize| -> Result<u64, String> {
                nums.get(i)
                    .and_then(|n| u64::try_from(*n).ok())
                    .ok_or_else(bad)
            };
            match (key, nums.len()) {
                ("ok", 1) => r.ok = u(0)?,
                ("lost", 1) => r.lost = u(0)?,
                ("retries", 1) => r.retries = u(0)?,
                ("elapsed_us", 1) => r.elapsed_us = u(0)?,
                ("latency_us", 4) => r.latency_us = [u(0)?, u(1)?, u(2)?, u(3)?],
                ("escaped", 2) => {
                    let code = i32::try_from(nums[0]).map_err(|_| bad())?;
                    *r.escaped.entry(code).or_default() += u(1)?;
                }
                ("end", 0) => ended = true,
                _ => return Err(bad()),
            }
        }
        if ended {
            Ok(r)
        } else {
            Err("the report has no `end` line: the child stopped while writing it".into())
        }
    }
}

/// Runs the child's side and ends the process, when this process is a child; returns at
/// once in the parent.
///
/// In a child of [`Processes`], `work` runs and its [`ChildReport`] is written to the
/// file the parent named; the process then exits with status 0. A panic in `work` ends
/// the child with a failure status (and its message on stderr), which the parent reports.
pub fn child_main<F>(work: F)
where
    F: FnOnce(&ChildEnv) -> ChildReport,
{
    let Some(env) = ChildEnv::current() else {
        return;
    };
    let report = work(&env);
    let code = match &env.report {
        Some(path) => match std::fs::write(path, report.to_lines()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("luca-testkit child: cannot write the report to {path:?}: {e}");
                2
            }
        },
        None => {
            eprintln!("luca-testkit child: no report file named ({REPORT_ENV} is unset)");
            2
        }
    };
    exit(code);
}

/// Ends a child process, its output flushed first (`exit` runs no destructors).
pub(crate) fn exit(code: i32) -> ! {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    std::process::exit(code)
}

/// The name of the running libtest test (libtest names the test's thread after it).
pub(crate) fn current_test_name() -> Option<String> {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map(str::to_owned)
}

/// What a child is started with.
pub(crate) struct Spawn<'a> {
    pub(crate) test: Option<&'a str>,
    pub(crate) role: &'a str,
    pub(crate) index: usize,
    pub(crate) count: usize,
    pub(crate) db: &'a Path,
    pub(crate) seed: u64,
    pub(crate) arg: &'a str,
    pub(crate) report: Option<&'a Path>,
    pub(crate) acks: Option<&'a Path>,
}

/// A running child: its process and the collectors of its output.
pub(crate) struct Running {
    pub(crate) child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Spawn<'_> {
    /// Starts this binary again as the child.
    pub(crate) fn start(&self) -> io::Result<Running> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        if let Some(test) = self.test {
            cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"]);
        }
        cmd.env(ROLE_ENV, self.role)
            .env(INDEX_ENV, self.index.to_string())
            .env(COUNT_ENV, self.count.to_string())
            .env(DB_ENV, self.db)
            .env(SEED_ENV, self.seed.to_string())
            .env(ARG_ENV, self.arg)
            .env_remove(REPORT_ENV)
            .env_remove(ACKS_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = self.report {
            cmd.env(REPORT_ENV, p);
        }
        if let Some(p) = self.acks {
            cmd.env(ACKS_ENV, p);
        }
        let mut child = cmd.spawn()?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            // Drained so a chatty child never blocks on a full pipe; not kept.
            readers.push(std::thread::spawn(move || drain(out, None)));
        }
        if let Some(err) = child.stderr.take() {
            let keep = Arc::clone(&stderr);
            readers.push(std::thread::spawn(move || drain(err, Some(&keep))));
        }
        Ok(Running {
            child,
            stderr,
            readers,
        })
    }
}

/// Reads a pipe to its end, keeping the last [`STDERR_TAIL`] bytes in `keep`.
fn drain(mut from: impl Read, keep: Option<&Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(keep) = keep {
                    let mut k = keep
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    k.extend_from_slice(&buf[..n]);
                    if k.len() > 2 * STDERR_TAIL {
                        let cut = k.len() - STDERR_TAIL;
                        k.drain(..cut);
                    }
                }
            }
        }
    }
}

impl Running {
    /// Waits for the child to end, until `deadline`; past it, kills the child and returns
    /// `None`.
    pub(crate) fn wait_until(&mut self, deadline: Instant) -> io::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                self.kill()?;
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills the child (SIGKILL on unix) and reaps it.
    pub(crate) fn kill(&mut self) -> io::Result<ExitStatus> {
        // Fails only when the child has already been reaped; `wait` tells the status.
        let _ = self.child.kill();
        self.child.wait()
    }

    /// The last bytes the child wrote to stderr, once its pipes have closed.
    pub(crate) fn stderr_tail(&mut self) -> String {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let k = self
            .stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let from = k.len().saturating_sub(STDERR_TAIL);
        String::from_utf8_lossy(&k[from..]).into_owned()
    }
}

/// Opens the database for a check after the children are gone.
pub(crate) fn open_for_check(db: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// A seed from `LUCA_TESTKIT_SEED` when set, else a fresh random one.
pub(crate) fn seed_from_env() -> u64 {
    std::env::var("LUCA_TESTKIT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

type Verify<'a> = Box<dyn FnOnce(&Connection, &[ChildReport]) -> rusqlite::Result<u64> + 'a>;

/// Starts K child processes of this binary on one database file and collects their
/// reports. See the [module documentation](self).
#[must_use = "nothing runs until `.run()` is called"]
pub struct Processes<'a> {
    count: usize,
    role: String,
    db: PathBuf,
    test: Option<String>,
    timeout: Duration,
    seed: u64,
    arg: String,
    verify: Option<Verify<'a>>,
}

impl fmt::Debug for Processes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processes")
            .field("count", &self.count)
            .field("role", &self.role)
            .field("db", &self.db)
            .field("test", &self.test)
            .field("timeout", &self.timeout)
            .field("seed", &self.seed)
            .field("arg", &self.arg)
            .field("verify", &self.verify.is_some())
            .finish()
    }
}

impl<'a> Processes<'a> {
    /// `count` children (at least 1), role `"writer"`, a 30 s bound, the seed from
    /// `LUCA_TESTKIT_SEED` or a random one, the test name from the running libtest test.
    pub fn new(count: usize) -> Processes<'a> {
        Processes {
            count: count.max(1),
            role: "writer".into(),
            db: PathBuf::new(),
            test: current_test_name(),
            timeout: DEFAULT_TIMEOUT,
            seed: seed_from_env(),
            arg: String::new(),
            verify: None,
        }
    }

    /// The database file the children share ([`ChildEnv::db`]).
    pub fn db(mut self, path: impl AsRef<Path>) -> Self {
        self.db = path.as_ref().to_path_buf();
        self
    }

    /// The children's role ([`ChildEnv::role`]).
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = role.into();
        self
    }

    /// A free-form argument for the children ([`ChildEnv::arg`]).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.arg = arg.into();
        self
    }

    /// The seed; each child gets it mixed with its index ([`ChildEnv::seed`]).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The libtest test the children run (`--exact <name>`). Defaults to the test
    /// running now; `None` starts the binary without arguments (a `harness = false`
    /// binary needs none).
    pub fn test_name(mut self, name: Option<&str>) -> Self {
        self.test = name.map(str::to_owned);
        self
    }

    /// The bound on the whole run (default 30 s): children still running then are
    /// killed and the run fails.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// A check run in the parent once every child has ended: it gets a connection to the
    /// database and the children's reports and returns how many acknowledged writes are
    /// missing from the file (more than 0 fails the run).
    pub fn verify<F>(mut self, check: F) -> Self
    where
        F: FnOnce(&Connection, &[ChildReport]) -> rusqlite::Result<u64> + 'a,
    {
        self.verify = Some(Box::new(check));
        self
    }

    /// Starts the children at once, waits for all of them (bounded), reads their
    /// reports, runs the check.
    ///
    /// # Errors
    /// [`ProcessError`] when a child cannot start, ends with a failure status, runs past
    /// the bound, sends no readable report, or reports lost writes; or when the check
    /// fails or finds writes missing. Its message names the child, its exit status and
    /// the tail of its stderr.
    pub fn run(self) -> Result<ProcessesReport, ProcessError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let dir = tempfile::Builder::new()
            .prefix("luca-testkit-reports-")
            .tempdir()
            .map_err(|e| self.error(None, format!("cannot make a report directory: {e}")))?;
        let files: Vec<PathBuf> = (0..self.count)
            .map(|i| dir.path().join(format!("child-{i}.report")))
            .collect();
        let mut running = Vec::with_capacity(self.count);
        for (i, file) in files.iter().enumerate() {
            let spawn = Spawn {
                test: self.test.as_deref(),
                role: &self.role,
                index: i,
                count: self.count,
                db: &self.db,
                seed: mix(self.seed, i as u64),
                arg: &self.arg,
                report: Some(file),
                acks: None,
            };
            match spawn.start() {
                Ok(r) => running.push(r),
                Err(e) => {
                    for r in &mut running {
                        let _ = r.kill();
                    }
                    return Err(self.error(Some(i), format!("cannot start: {e}")));
                }
            }
        }
        let mut failures = Vec::new();
        let mut children = Vec::with_capacity(self.count);
        for (i, r) in running.iter_mut().enumerate() {
            let status = r.wait_until(deadline);
            let tail = r.stderr_tail();
            let why = match status {
                Err(e) => Some(format!("cannot wait for it: {e}")),
                Ok(None) => Some(format!("still running after {:?}: killed", self.timeout)),
                Ok(Some(s)) if !s.success() => Some(format!("ended with {s}")),
                Ok(Some(_)) => match std::fs::read_to_string(&files[i])
                    .map_err(|e| format!("sent no report: {e}"))
                    .and_then(|t| ChildReport::parse(&t))
                {
                    Ok(report) => {
                        let lost = report.lost;
                        children.push(report);
                        (lost > 0).then(|| format!("reported {lost} lost writes"))
                    }
                    Err(e) => Some(e),
                },
            };
            if let Some(why) = why {
                failures.push(ChildFailure {
                    index: i,
                    why,
                    stderr_tail: tail,
                });
            }
        }
        if !failures.is_empty() {
            return Err(ProcessError {
                role: self.role.clone(),
                db: self.db.clone(),
                seed: self.seed,
                failures,
                lost_in_file: None,
            });
        }
        let mut lost_in_file = None;
        if let Some(verify) = self.verify {
            let checked = open_for_check(&self.db).and_then(|c| verify(&c, &children));
            match checked {
                Ok(0) => lost_in_file = Some(0),
                Ok(n) => {
                    return Err(ProcessError {
                        role: self.role,
                        db: self.db,
                        seed: self.seed,
                        failures: Vec::new(),
                        lost_in_file: Some(n),
                    });
                }
                Err(e) => {
                    return Err(ProcessError {
                        role: self.role.clone(),
                        db: self.db.clone(),
                        seed: self.seed,
                        failures: vec![ChildFailure {
                            index: usize::MAX,
                            why: format!("the check after the run failed: {e}"),
                            stderr_tail: String::new(),
                        }],
                        lost_in_file: None,
                    });
                }
            }
        }
        Ok(ProcessesReport {
            role: self.role,
            seed: self.seed,
            children,
            lost_in_file,
            elapsed: started.elapsed(),
        })
    }

    fn error(&self, index: Option<usize>, why: String) -> ProcessError {
        ProcessError {
            role: self.role.clone(),
            db: self.db.clone(),
            seed: self.seed,
            failures: vec![ChildFailure {
                index: index.unwrap_or(usize::MAX),
                why,
                stderr_tail: String::new(),
            }],
            lost_in_file: None,
        }
    }
}

/// A child's seed: the parent's, mixed with its index (splitmix64).
pub(crate) fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The reports of one [`Processes::run`], and their totals.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProcessesReport {
    /// The children's role.
    pub role: String,
    /// The run's seed.
    pub seed: u64,
    /// Each child's report, by index.
    pub children: Vec<ChildReport>,
    /// What the parent's check found missing (`None`: no check was given).
    pub lost_in_file: Option<u64>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl ProcessesReport {
    /// Operations that succeeded, over all children.
    pub fn ok(&self) -> u64 {
        self.children.iter().map(|c| c.ok).sum()
    }

    /// Escaped errors by code, over all children.
    pub fn escaped(&self) -> BTreeMap<i32, u64> {
        let mut all = BTreeMap::new();
        for c in &self.children {
            for (code, n) in &c.escaped {
                *all.entry(*code).or_default() += n;
            }
        }
        all
    }

    /// Lost writes: the children's own plus the parent's check.
    pub fn lost(&self) -> u64 {
        self.children.iter().map(|c| c.lost).sum::<u64>() + self.lost_in_file.unwrap_or(0)
    }

    /// Retries, over all children.
    pub fn retries(&self) -> u64 {
        self.children.iter().map(|c| c.retries).sum()
    }

    /// The worst child's latency figures (p50, p99, p99.9, max, in microseconds).
    pub fn worst_latency_us(&self) -> [u64; 4] {
        let mut w = [0; 4];
        for c in &self.children {
            for (w, v) in w.iter_mut().zip(c.latency_us) {
                *w = (*w).max(v);
            }
        }
        w
    }

    /// Operations per second over the whole run (children's start-up included).
    pub fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Panics, printing the report, when any error escaped.
    pub fn assert_no_escaped(&self) {
        assert!(
            self.escaped().is_empty(),
            "errors escaped to the callers:\n{self}"
        );
    }

    /// Panics, printing the report, when any write was lost.
    pub fn assert_no_lost(&self) {
        assert_eq!(self.lost(), 0, "writes were lost:\n{self}");
    }
}

impl fmt::Display for ProcessesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escaped: Vec<String> = self
            .escaped()
            .iter()
            .map(|(c, n)| format!("{c}:{n}"))
            .collect();
        let [p50, p99, p999, max] = self.worst_latency_us();
        writeln!(
            f,
            "{} processes ({}), seed {}: ok {}, escaped {} [{}], lost {}, retries {}, {:.0} ops/s over {:.2?}",
            self.children.len(),
            self.role,
            self.seed,
            self.ok(),
            self.escaped().values().sum::<u64>(),
            escaped.join(" "),
            self.lost(),
            self.retries(),
            self.throughput(),
            self.elapsed,
        )?;
        writeln!(
            f,
            "  worst child latency: p50 {p50} us, p99 {p99} us, p99.9 {p999} us, max {max} us"
        )?;
        for (i, c) in self.children.iter().enumerate() {
            writeln!(
                f,
                "  child {i}: ok {}, escaped {}, lost {}, retries {}, p99 {} us, {:.2?}",
                c.ok,
                c.escaped_total(),
                c.lost,
                c.retries,
                c.latency_us[1],
                Duration::from_micros(c.elapsed_us),
            )?;
        }
        Ok(())
    }
}

/// One child that failed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChildFailure {
    /// The child's index (`usize::MAX`: the run itself, not one child).
    pub index: usize,
    /// What went wrong: its exit status, the bound it passed, an unreadable report.
    pub why: String,
    /// The last bytes it wrote to stderr.
    pub stderr_tail: String,
}

/// Why a [`Processes::run`] failed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProcessError {
    /// The children's role.
    pub role: String,
    /// The database file (kept by a [`TempDb`](crate::TempDb) when the test panics).
    pub db: PathBuf,
    /// The run's seed (`LUCA_TESTKIT_SEED=<seed>` repeats it).
    pub seed: u64,
    /// The children that failed.
    pub failures: Vec<ChildFailure>,
    /// Acknowledged writes the parent's check found missing.
    pub lost_in_file: Option<u64>,
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "multi-process run ({}) failed on {} (seed {}; LUCA_TESTKIT_SEED={} repeats it)",
            self.role,
            self.db.display(),
            self.seed,
            self.seed
        )?;
        if let Some(n) = self.lost_in_file {
            write!(f, "\n  {n} acknowledged writes are missing from the file")?;
        }
        for c in &self.failures {
            if c.index == usize::MAX {
                write!(f, "\n  {}", c.why)?;
            } else {
                write!(f, "\n  child {}: {}", c.index, c.why)?;
            }
            if !c.stderr_tail.trim().is_empty() {
                write!(f, "\n    stderr (last lines):")?;
                for line in c
                    .stderr_tail
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .iter()
                    .rev()
                {
                    write!(f, "\n    | {line}")?;
                }
            }
        }
        Ok(())
    }
}

impl std::error::Error for ProcessError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_truncated_ones_are_refused() {
        let mut r = ChildReport {
            ok: 7,
            lost: 1,
            retries: 3,
            elapsed_us: 99,
            ..ChildReport::default()
        };
        r.escaped.insert(5, 2);
        r.escaped.insert(-1, 1);
        r.latencies(&mut [Duration::from_micros(30), Duration::from_micros(10)]);
        assert_eq!(r.latency_us, [10, 30, 30, 30]);
        let text = r.to_lines();
        assert_eq!(ChildReport::parse(&text), Ok(r));
        let cut = &text[..text.len() - "end\n".len()];
        assert!(
            ChildReport::parse(cut)
                .unwrap_err()
                .contains("no `end` line")
        );
        assert!(ChildReport::parse("ok x\nend\n").is_err());
        assert!(ChildReport::parse("ok 1 2\nend\n").is_err());
    }

    #[test]
    fn seeds_differ_per_child() {
        assert_ne!(mix(1, 0), mix(1, 1));
        assert_ne!(mix(1, 0), mix(2, 0));
        assert_eq!(mix(1, 0), mix(1, 0));
    }
}

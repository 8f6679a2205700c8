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
//! A child returns a [`ContentionReport`]; [`child_main`] writes it to a file the parent
//! names (one `key value` line per field, see [`encode_report`]), never to stdout, so
//! nothing the child or its test harness prints can be mistaken for it. The parent merges
//! the children's reports into one (counters and latency samples summed) and can check
//! the file itself once every child has ended ([`Processes::verify`]).
//!
//! ```no_run
//! use std::time::Instant;
//! use luca_testkit::ContentionReport;
//! use luca_testkit::process::{child_main, Processes};
//!
//! #[test]
//! fn four_writers_share_one_file() {
//!     child_main(|child| {
//!         let db = luca_core::Db::open_blocking(child.db()).unwrap();
//!         let mut report = ContentionReport::new("insert");
//!         for i in 0..100 {
//!             let key = format!("{}-{i}", child.index());
//!             let started = Instant::now();
//!             match db.write_blocking(move |c| Ok(c.execute("INSERT INTO t (k) VALUES (?1)", [&key])?)) {
//!                 Ok(_) => report.record_ok(started.elapsed()),
//!                 Err(e) => report.record_error(&e),
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
//!     report.total.assert_clean();
//! }
//! ```
//!
//! Every wait is bounded: children still running at the deadline
//! ([`Processes::timeout`], 30 s by default) are killed and the run fails, naming them.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use luca_core::rusqlite::{self, Connection, OpenFlags};

use crate::ContentionReport;

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

/// How much of a failed child's stderr an error shows: its first bytes (where a panic
/// message is, before any backtrace) and its last bytes.
const STDERR_HEAD: usize = 2048;
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

/// The first line of an encoded report (with the format's version).
const REPORT_MAGIC: &str = "luca-testkit-report 1";

/// Escapes a text field onto one line.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn unesc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A [`ContentionReport`] as the `key value` lines a child sends its parent: one field a
/// line (texts escaped onto one line, latencies in lines of up to 1000 numbers), between
/// a `luca-testkit-report 1` line and an `end` line. [`decode_report`] reads it back
/// exactly.
pub fn encode_report(r: &ContentionReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "{REPORT_MAGIC}");
    let _ = writeln!(s, "label {}", esc(&r.label));
    for (key, n) in [
        ("runs", r.runs),
        ("workers", r.workers),
        ("planned", r.planned),
        ("attempted", r.attempted),
        ("ok", r.ok),
        ("escaped_other", r.escaped_other),
        ("lost", r.lost),
        ("retries", r.retries),
        ("timed_out", u64::from(r.timed_out)),
    ] {
        let _ = writeln!(s, "{key} {n}");
    }
    let _ = writeln!(s, "elapsed_ns {}", r.elapsed.as_nanos());
    for (code, n) in &r.escaped_by_code {
        let _ = writeln!(s, "escaped_by_code {code} {n}");
    }
    for e in &r.error_samples {
        let _ = writeln!(s, "error_sample {}", esc(e));
    }
    for e in &r.lost_samples {
        let _ = writeln!(s, "lost_sample {}", esc(e));
    }
    for chunk in r.latencies_ns.chunks(1000) {
        s.push_str("latencies_ns");
        for n in chunk {
            let _ = write!(s, " {n}");
        }
        s.push('\n');
    }
    if let Some(seed) = r.seed {
        let _ = writeln!(s, "seed {seed}");
    }
    if let Some(p) = &r.db_path {
        let _ = writeln!(s, "db_path {}", esc(&p.to_string_lossy()));
    }
    s.push_str("end\n");
    s
}

/// Reads [`encode_report`]'s lines back. A report without its final `end` line (a child
/// that died while writing it) is refused.
///
/// # Errors
/// A missing first line, a line that is not part of the format, or no `end` line; the
/// message names it.
pub fn decode_report(text: &str) -> Result<ContentionReport, String> {
    let mut lines = text.lines();
    if lines.next() != Some(REPORT_MAGIC) {
        return Err(format!(
            "not a report: the first line is not {REPORT_MAGIC:?}"
        ));
    }
    let mut r = ContentionReport::default();
    let mut ended = false;
    for line in lines {
        if ended {
            return Err(format!("a line after `end`: {line:?}"));
        }
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        let bad = || format!("unreadable report line {line:?}");
        let num = |t: &str| t.parse::<u64>().map_err(|_| bad());
        match key {
            "label" => r.label = unesc(rest),
            "runs" => r.runs = num(rest)?,
            "workers" => r.workers = num(rest)?,
            "planned" => r.planned = num(rest)?,
            "attempted" => r.attempted = num(rest)?,
            "ok" => r.ok = num(rest)?,
            "escaped_other" => r.escaped_other = num(rest)?,
            "lost" => r.lost = num(rest)?,
            "retries" => r.retries = num(rest)?,
            "timed_out" => r.timed_out = num(rest)? != 0,
            "elapsed_ns" => r.elapsed = Duration::from_nanos(num(rest)?),
            "escaped_by_code" => {
                let (code, n) = rest.split_once(' ').ok_or_else(bad)?;
                let code = code.parse::<i32>().map_err(|_| bad())?;
                *r.escaped_by_code.entry(code).or_default() += num(n)?;
            }
            "error_sample" => r.error_samples.push(unesc(rest)),
            "lost_sample" => r.lost_samples.push(unesc(rest)),
            "latencies_ns" => {
                for n in rest.split_ascii_whitespace() {
                    r.latencies_ns.push(num(n)?);
                }
            }
            "seed" => r.seed = Some(num(rest)?),
            "db_path" => r.db_path = Some(PathBuf::from(unesc(rest))),
            "end" if rest.is_empty() => ended = true,
            _ => return Err(bad()),
        }
    }
    if ended {
        Ok(r)
    } else {
        Err("the report has no `end` line: the child stopped while writing it".into())
    }
}

/// Runs the child's side and ends the process, when this process is a child of
/// [`Processes`]; returns at once in any other process (the parent, or a child of the
/// [crash harness](crate::crash), so a binary can call both entry points one after the
/// other).
///
/// In a child of [`Processes`], `work` runs and its [`ContentionReport`] is written to the
/// file the parent named; the process then exits with status 0. A panic in `work` ends
/// the child with a failure status (and its message on stderr), which the parent reports.
pub fn child_main<F>(work: F)
where
    F: FnOnce(&ChildEnv) -> ContentionReport,
{
    // A crash child (which has an acknowledgement file, not a report file) is left to
    // `crash::child_main`, so one binary can call both.
    let Some((env, path)) = ChildEnv::current().and_then(|env| {
        let path = env.report.clone()?;
        Some((env, path))
    }) else {
        return;
    };
    let report = work(&env);
    let code = match std::fs::write(&path, encode_report(&report)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("luca-testkit child: cannot write the report to {path:?}: {e}");
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
    stderr: Arc<Mutex<Captured>>,
    readers: Vec<JoinHandle<()>>,
}

/// The start and the end of a stream, and how long it was.
#[derive(Default)]
struct Captured {
    head: Vec<u8>,
    tail: Vec<u8>,
    total: usize,
}

impl Captured {
    fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len();
        let room = STDERR_HEAD - self.head.len();
        let (h, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(h);
        bytes = rest;
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 2 * STDERR_TAIL {
            let cut = self.tail.len() - STDERR_TAIL;
            self.tail.drain(..cut);
        }
    }

    fn text(&self) -> String {
        let from = self.tail.len().saturating_sub(STDERR_TAIL);
        let tail = &self.tail[from..];
        let skipped = self.total - self.head.len() - tail.len();
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if skipped > 0 {
            s.push_str(&format!("\n[... {skipped} bytes ...]\n"));
        }
        s.push_str(&String::from_utf8_lossy(tail));
        s
    }
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
        let stderr = Arc::new(Mutex::new(Captured::default()));
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

/// Reads a pipe to its end, keeping its start and end in `keep`.
fn drain(mut from: impl Read, keep: Option<&Mutex<Captured>>) {
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(keep) = keep {
                    keep.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(&buf[..n]);
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

    /// The first and last bytes the child wrote to stderr, once its pipes have closed.
    pub(crate) fn stderr_tail(&mut self) -> String {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .text()
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

/// A seed from `LUCA_TESTKIT_SEED` (decimal, or hexadecimal after `0x`) when set, else a
/// fresh random one.
pub(crate) fn seed_from_env() -> u64 {
    std::env::var("LUCA_TESTKIT_SEED")
        .ok()
        .and_then(|s| parse_seed(&s))
        .unwrap_or_else(|| fastrand::u64(..))
}

fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

type Verify<'a> = Box<dyn FnOnce(&Connection, &[ContentionReport]) -> rusqlite::Result<u64> + 'a>;

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
        F: FnOnce(&Connection, &[ContentionReport]) -> rusqlite::Result<u64> + 'a,
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
                    .map_err(|e| {
                        format!(
                            "sent no report ({e}); did it run `child_main` first thing in the \
                             test {:?} (see `Processes::test_name`)?",
                            self.test.as_deref().unwrap_or("main")
                        )
                    })
                    .and_then(|t| decode_report(&t))
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
                        role: self.role,
                        db: self.db,
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
        let mut total = ContentionReport::new(format!("{} x {}", self.count, self.role));
        total.runs = 0;
        total.seed = Some(self.seed);
        total.db_path = Some(self.db.clone());
        for c in &children {
            total.merge(c);
        }
        total.elapsed = started.elapsed();
        Ok(ProcessesReport {
            total,
            children,
            lost_in_file,
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

/// The reports of one [`Processes::run`] that held: every child ended well, none lost a
/// write, and the parent's check (if any) found nothing missing.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProcessesReport {
    /// The children's reports merged (counters and latency samples summed), labelled
    /// `"<K> x <role>"`, with the run's seed, the database, and the whole run's wall time
    /// (children's start-up included) as `elapsed`.
    pub total: ContentionReport,
    /// Each child's report, by index.
    pub children: Vec<ContentionReport>,
    /// What the parent's check found missing (`None`: no check was given).
    pub lost_in_file: Option<u64>,
}

impl fmt::Display for ProcessesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.total)?;
        if let Some(n) = self.lost_in_file {
            writeln!(
                f,
                "parent's check of the file: {n} acknowledged writes missing"
            )?;
        }
        writeln!(f, "per process:")?;
        writeln!(f, "{}", ContentionReport::table_header())?;
        for (i, c) in self.children.iter().enumerate() {
            let mut c = c.clone();
            c.label = format!("child {i}: {}", c.label);
            writeln!(f, "{}", c.table_row())?;
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
    /// What it wrote to stderr: the first 2 KiB and the last 4 KiB.
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
                write!(f, "\n    stderr:")?;
                for line in c.stderr_tail.lines() {
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
        let mut r = ContentionReport::new("rmw\nwith a \\ line");
        r.workers = 8;
        r.planned = 10;
        r.attempted = 9;
        r.timed_out = true;
        r.record_ok(Duration::from_micros(30));
        r.record_ok(Duration::from_micros(10));
        r.record_escaped(Some(5), "database is locked");
        r.record_escaped(None, "a panic\r\nover lines");
        r.record_lost(3, "k1, k2, k3");
        r.add_retries(4);
        r.latencies_ns.extend(0..2500);
        r.elapsed = Duration::from_millis(1234);
        r.seed = Some(u64::MAX);
        r.db_path = Some(PathBuf::from("/tmp/a b/test.db"));
        let text = encode_report(&r);
        assert_eq!(decode_report(&text), Ok(r.clone()));
        let empty = ContentionReport::default();
        assert_eq!(decode_report(&encode_report(&empty)), Ok(empty));
        let cut = &text[..text.len() - "end\n".len()];
        assert!(decode_report(cut).unwrap_err().contains("no `end` line"));
        assert!(
            decode_report("ok 1\nend\n")
                .unwrap_err()
                .contains("not a report")
        );
        let bad = format!("{REPORT_MAGIC}\nok x\nend\n");
        assert!(decode_report(&bad).unwrap_err().contains("ok x"));
        let after = format!("{text}ok 1\n");
        assert!(decode_report(&after).is_err());
    }

    #[test]
    fn stderr_keeps_its_start_and_end() {
        let mut c = Captured::default();
        c.push(b"panicked: why\n");
        assert_eq!(c.text(), "panicked: why\n");
        for _ in 0..1000 {
            c.push(&[b'x'; 100]);
        }
        c.push(b"\nlast line");
        let t = c.text();
        assert!(t.starts_with("panicked: why\n"), "{t}");
        assert!(t.ends_with("x\nlast line"), "{t}");
        let skipped = 100_000 + 10 + 14 - STDERR_HEAD - STDERR_TAIL;
        assert!(t.contains(&format!("[... {skipped} bytes ...]")), "{t}");
    }

    #[test]
    fn seeds_read_as_decimal_or_hex() {
        assert_eq!(parse_seed(" 42 "), Some(42));
        assert_eq!(parse_seed("0x2a"), Some(42));
        assert_eq!(parse_seed("0XFFFFFFFFFFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_seed("x"), None);
    }

    #[test]
    fn seeds_differ_per_child() {
        assert_ne!(mix(1, 0), mix(1, 1));
        assert_ne!(mix(1, 0), mix(2, 0));
        assert_eq!(mix(1, 0), mix(1, 0));
    }
}

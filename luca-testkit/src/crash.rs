//! Crash harness (unix only): start a child writer, `SIGKILL` it at a random moment
//! mid-stream, check the file, repeat.
//!
//! After each kill the parent opens the database (SQLite recovers the WAL as any later
//! opener would) and requires that:
//! - `PRAGMA integrity_check` answers `ok`;
//! - every write the child reported as committed, in this cycle and every earlier one,
//!   is in the file (your check says so, e.g. [`missing_keys`]).
//!
//! # The acknowledgement side channel
//!
//! The child reports each write only after the database acknowledged it (after
//! `Db::write` returned `Ok`), by appending one line to a file of its own with
//! [`Acks::ack`]: one `write()` system call on a file opened with `O_APPEND`. A `SIGKILL`
//! cannot lose data a `write()` has already handed to the kernel (it sits in the page
//! cache and reaches the file whatever happens to the process), so every line written
//! before the kill is there for the parent to read, and a line cut short (the kill landed
//! in the middle of the call, which regular files do not do in practice) is ignored, as
//! not acknowledged. The side channel is not `fsync`ed: it covers process crashes, not
//! power loss or an operating-system crash — as does SQLite's own `synchronous=NORMAL`,
//! which this harness therefore tests correctly.
//!
//! # The kill moment
//!
//! Each cycle the parent draws, from a seeded generator, how many acknowledgements to
//! wait for (a number in [`Crash::kill_after_acks`]), watches the child's file grow, and
//! kills the child as soon as that many lines are there. The child is, by then, in the
//! middle of its next writes (commits in flight, group commits forming), so each kill
//! lands somewhere different in its stream. The seed is printed at the start and in every
//! failure; `LUCA_TESTKIT_SEED=<seed>` repeats a run's choices (the moment inside a
//! commit still varies with scheduling).
//!
//! The child side follows the [process harness's pattern](crate::process): the binary
//! re-runs itself with [`ROLE_ENV`](crate::process::ROLE_ENV) set, and the test's first
//! line, [`child_main`], takes over in the child.
//!
//! ```no_run
//! use luca_testkit::crash::{self, Crash};
//!
//! #[test]
//! fn writes_survive_sigkill() {
//!     crash::child_main(|child, acks| -> luca_core::Result<()> {
//!         let db = luca_core::Db::open_blocking(child.db())?;
//!         for i in 0..100_000 {
//!             let key = format!("{}-{i}", child.index());
//!             let k = key.clone();
//!             db.write_blocking(move |c| Ok(c.execute("INSERT INTO t (k) VALUES (?1)", [&k])?))?;
//!             acks.ack(&key)?; // only after the commit was acknowledged
//!         }
//!         Ok(())
//!     });
//!     let db = luca_testkit::TempDb::new();
//!     let conn = luca_core::rusqlite::Connection::open(db.path()).unwrap();
//!     conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (k TEXT PRIMARY KEY)").unwrap();
//!     let report = Crash::new(db.path())
//!         .cycles(5)
//!         .kill_after_acks(10..=500)
//!         .run(|conn, acked| crash::missing_keys(conn, "t", "k", acked))
//!         .unwrap_or_else(|e| panic!("{e}"));
//!     println!("{report}");
//! }
//! ```

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use luca_core::rusqlite::{self, Connection};

use crate::process::{
    self, ACKS_ENV, ChildEnv, DEFAULT_TIMEOUT, Running, Spawn, current_test_name, mix,
    open_for_check, seed_from_env,
};

/// The child's append-only acknowledgement file. Cheap to clone; share it between the
/// child's writer tasks.
#[derive(Clone, Debug)]
pub struct Acks {
    file: Arc<File>,
}

impl Acks {
    /// Opens (creating, for appending) the file the parent named, in a child of
    /// [`Crash`].
    ///
    /// # Errors
    /// When this process is no crash child, or the file cannot be opened.
    pub fn from_env() -> io::Result<Acks> {
        let path = ChildEnv::current()
            .and_then(|c| c.acks)
            .ok_or_else(|| io::Error::other(format!("{ACKS_ENV} is unset: not a crash child")))?;
        Acks::open(&path)
    }

    /// Opens (creating, for appending) an acknowledgement file.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> io::Result<Acks> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Acks {
            file: Arc::new(file),
        })
    }

    /// Records that the write named `key` was acknowledged as committed: one line, one
    /// `write()`. Call it only after the commit was acknowledged.
    ///
    /// # Errors
    /// A key holding a line break or empty ([`io::ErrorKind::InvalidInput`]), or a failed
    /// write.
    pub fn ack(&self, key: &str) -> io::Result<()> {
        if key.is_empty() || key.contains(['\n', '\r']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an acknowledgement key is one non-empty line; got {key:?}"),
            ));
        }
        let mut line = String::with_capacity(key.len() + 1);
        line.push_str(key);
        line.push('\n');
        // One buffer, one `write()` on an `O_APPEND` file: lines from several threads
        // never interleave.
        (&*self.file).write_all(line.as_bytes())
    }
}

/// Reads an acknowledgement file: its complete lines (a line without its line break was
/// cut short and is not an acknowledgement).
///
/// # Errors
/// When the file cannot be read (a missing file holds no acknowledgements: `Ok(vec![])`).
pub fn read_acks(path: &Path) -> io::Result<Vec<String>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let complete = text
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(&text[..0], |end| &text[..=end]);
    Ok(String::from_utf8_lossy(complete)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Runs the child's side and ends the process, when this process is a crash child;
/// returns at once in any other process (the parent, or a child of
/// [`Processes`](crate::process::Processes)).
///
/// `work` gets the child's environment (its [`index`](ChildEnv::index) is the cycle) and
/// its [`Acks`]; it should write until it is killed (bounded all the same: stop after a
/// generous count or time). Returning at all (`Ok` or `Err`) ends the child before the
/// kill, which the parent reports as a failure with the error printed here.
pub fn child_main<F, E>(work: F)
where
    F: FnOnce(&ChildEnv, &Acks) -> Result<(), E>,
    E: fmt::Display,
{
    let Some(env) = ChildEnv::current().filter(|env| env.acks.is_some()) else {
        return;
    };
    let acks = match Acks::from_env() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("luca-testkit crash child: cannot open the acknowledgement file: {e}");
            process::exit(2);
        }
    };
    match work(&env, &acks) {
        Ok(()) => process::exit(0),
        Err(e) => {
            eprintln!("luca-testkit crash child {}: {e}", env.index());
            process::exit(1)
        }
    }
}

/// Looks up each acknowledged key in `table.column`; returns the keys that are missing.
/// `table` and `column` are SQL identifiers (quoted here).
///
/// # Errors
/// SQLite's, e.g. a table that does not exist.
pub fn missing_keys(
    conn: &Connection,
    table: &str,
    column: &str,
    acked: &[String],
) -> rusqlite::Result<Vec<String>> {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let sql = format!(
        "SELECT 1 FROM {} WHERE {} = ?1 LIMIT 1",
        quote(table),
        quote(column)
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut missing = Vec::new();
    for key in acked {
        if !stmt.exists([key])? {
            missing.push(key.clone());
        }
    }
    Ok(missing)
}

type Check<'a> = dyn FnMut(&Connection, &[String]) -> rusqlite::Result<Vec<String>> + 'a;

/// The crash harness: cycles of start a child, kill it mid-stream, check. See the
/// [module documentation](self).
#[derive(Clone, Debug)]
#[must_use = "nothing runs until `.run()` is called"]
pub struct Crash {
    db: PathBuf,
    cycles: usize,
    seed: u64,
    role: String,
    arg: String,
    test: Option<String>,
    kill_after: RangeInclusive<u64>,
    timeout: Duration,
}

impl Crash {
    /// Kills a child writer on `db` 20 times, each after 1 to 1000 acknowledgements;
    /// role `"crash-writer"`, a 30 s bound on the whole run, the seed from
    /// `LUCA_TESTKIT_SEED` or a random one, the test name from the running libtest test.
    pub fn new(db: impl AsRef<Path>) -> Crash {
        Crash {
            db: db.as_ref().to_path_buf(),
            cycles: 20,
            seed: seed_from_env(),
            role: "crash-writer".into(),
            arg: String::new(),
            test: current_test_name(),
            kill_after: 1..=1000,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How many start-kill-check cycles (at least 1).
    pub fn cycles(mut self, n: usize) -> Self {
        self.cycles = n.max(1);
        self
    }

    /// The seed of the kill moments (and of each child, see [`ChildEnv::seed`]).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The child's role ([`ChildEnv::role`]).
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = role.into();
        self
    }

    /// A free-form argument for the child ([`ChildEnv::arg`]).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.arg = arg.into();
        self
    }

    /// Each cycle kills the child once it has acknowledged a number of writes drawn from
    /// this range (an empty range is read as its start alone; at least 1).
    pub fn kill_after_acks(mut self, range: RangeInclusive<u64>) -> Self {
        let lo = (*range.start()).max(1);
        self.kill_after = lo..=(*range.end()).max(lo);
        self
    }

    /// The libtest test the child runs (`--exact <name>`); see
    /// [`Processes::test_name`](crate::process::Processes::test_name).
    pub fn test_name(mut self, name: Option<&str>) -> Self {
        self.test = name.map(str::to_owned);
        self
    }

    /// The bound on the whole run (default 30 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Runs the cycles. After each kill, `check` gets a connection to the database and
    /// every key acknowledged so far (all cycles) and returns those missing from the file.
    ///
    /// # Errors
    /// [`CrashError`] at the first cycle whose child could not start, ended by itself,
    /// did not reach its kill point in time, or after whose kill the file failed
    /// `integrity_check` or lacked an acknowledged write. It names the seed, the cycle
    /// and the database.
    pub fn run<F>(self, mut check: F) -> Result<CrashReport, CrashError>
    where
        F: FnMut(&Connection, &[String]) -> rusqlite::Result<Vec<String>>,
    {
        println!(
            "crash harness: {} cycles on {}, seed {} (LUCA_TESTKIT_SEED={} repeats it)",
            self.cycles,
            self.db.display(),
            self.seed,
            self.seed
        );
        let started = Instant::now();
        let deadline = started + self.timeout;
        let dir = tempfile::Builder::new()
            .prefix("luca-testkit-acks-")
            .tempdir()
            .map_err(|e| self.fail(0, Failure::Io(format!("cannot make a directory: {e}"))))?;
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let mut acked: Vec<String> = Vec::new();
        let mut cycles = Vec::with_capacity(self.cycles);
        for cycle in 0..self.cycles {
            let target = rng.u64(self.kill_after.clone());
            let file = dir.path().join(format!("cycle-{cycle}.acks"));
            let result = self.cycle(cycle, target, &file, deadline, &mut acked, &mut check);
            match result {
                Ok(c) => cycles.push(c),
                Err(mut e) => {
                    // The ack files show what was acknowledged; keep them with the error.
                    e.acks_dir = Some(dir.keep());
                    return Err(e);
                }
            }
        }
        Ok(CrashReport {
            seed: self.seed,
            cycles,
            elapsed: started.elapsed(),
        })
    }

    fn cycle(
        &self,
        cycle: usize,
        target: u64,
        file: &Path,
        deadline: Instant,
        acked: &mut Vec<String>,
        check: &mut Check<'_>,
    ) -> Result<CycleReport, CrashError> {
        let cycle_started = Instant::now();
        let spawn = Spawn {
            test: self.test.as_deref(),
            role: &self.role,
            index: cycle,
            count: self.cycles,
            db: &self.db,
            seed: mix(self.seed, cycle as u64),
            arg: &self.arg,
            report: None,
            acks: Some(file),
        };
        let mut child = spawn
            .start()
            .map_err(|e| self.fail(cycle, Failure::Io(format!("cannot start the child: {e}"))))?;
        let reached = watch(&mut child, file, target, deadline);
        let status = child.kill();
        let tail = child.stderr_tail();
        match reached {
            Ok(Watched::Reached) => {}
            Ok(Watched::Ended(status)) => {
                return Err(self.fail(
                    cycle,
                    Failure::EndedByItself {
                        status: status.to_string(),
                        target,
                        stderr_tail: tail,
                    },
                ));
            }
            Ok(Watched::TimedOut(seen)) => {
                return Err(self.fail(
                    cycle,
                    Failure::TimedOut {
                        seen,
                        target,
                        stderr_tail: tail,
                    },
                ));
            }
            Err(e) => return Err(self.fail(cycle, Failure::Io(format!("watching the child: {e}")))),
        }
        let killed_by = status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
        let this = read_acks(file).map_err(|e| self.fail(cycle, Failure::Io(e.to_string())))?;
        let acked_at_kill = this.len() as u64;
        acked.extend(this);
        let conn = open_for_check(&self.db)
            .map_err(|e| self.fail(cycle, Failure::Check(format!("cannot open: {e}"))))?;
        let integrity = integrity_check(&conn)
            .map_err(|e| self.fail(cycle, Failure::Check(format!("integrity_check: {e}"))))?;
        if integrity != ["ok"] {
            return Err(self.fail(cycle, Failure::Integrity(integrity)));
        }
        let missing =
            check(&conn, acked).map_err(|e| self.fail(cycle, Failure::Check(e.to_string())))?;
        drop(conn);
        if !missing.is_empty() {
            return Err(self.fail(
                cycle,
                Failure::Missing {
                    acked: acked.len(),
                    missing,
                },
            ));
        }
        Ok(CycleReport {
            target,
            acked_at_kill,
            acked_total: acked.len() as u64,
            killed_by,
            elapsed: cycle_started.elapsed(),
        })
    }

    fn fail(&self, cycle: usize, failure: Failure) -> CrashError {
        CrashError {
            seed: self.seed,
            cycle,
            db: self.db.clone(),
            acks_dir: None,
            failure,
        }
    }
}

enum Watched {
    Reached,
    Ended(std::process::ExitStatus),
    TimedOut(u64),
}

/// Watches the acknowledgement file until it holds `target` complete lines, the child
/// ends, or the deadline passes.
fn watch(child: &mut Running, file: &Path, target: u64, deadline: Instant) -> io::Result<Watched> {
    let mut lines = 0u64;
    let mut offset = 0u64;
    let mut buf = Vec::new();
    loop {
        if let Ok(mut f) = File::open(file) {
            f.seek(SeekFrom::Start(offset))?;
            buf.clear();
            f.read_to_end(&mut buf)?;
            offset += buf.len() as u64;
            lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        }
        if lines >= target {
            return Ok(Watched::Reached);
        }
        if let Some(status) = child.child.try_wait()? {
            return Ok(Watched::Ended(status));
        }
        if Instant::now() >= deadline {
            return Ok(Watched::TimedOut(lines));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// `PRAGMA integrity_check`'s rows (`["ok"]` for a sound file).
pub fn integrity_check(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// One cycle of a [`Crash`] run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CycleReport {
    /// The drawn number of acknowledgements to kill after.
    pub target: u64,
    /// Acknowledgements the child had written when it was killed (at least `target`).
    pub acked_at_kill: u64,
    /// Acknowledged writes checked after this kill (this cycle and every earlier one).
    pub acked_total: u64,
    /// How the child ended (`signal: 9 (SIGKILL)`).
    pub killed_by: String,
    /// Wall time of the cycle: start, writes, kill, checks.
    pub elapsed: Duration,
}

/// What a [`Crash`] run did: every cycle held.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CrashReport {
    /// The run's seed.
    pub seed: u64,
    /// Each cycle.
    pub cycles: Vec<CycleReport>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl CrashReport {
    /// Acknowledged writes checked after the last kill.
    pub fn acked_total(&self) -> u64 {
        self.cycles.last().map_or(0, |c| c.acked_total)
    }
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kills: Vec<String> = self
            .cycles
            .iter()
            .map(|c| c.acked_at_kill.to_string())
            .collect();
        writeln!(
            f,
            "{} SIGKILL cycles, seed {}: integrity ok and all {} acknowledged writes present after every kill ({:.2?})",
            self.cycles.len(),
            self.seed,
            self.acked_total(),
            self.elapsed
        )?;
        write!(f, "  acknowledged at each kill: {}", kills.join(" "))
    }
}

/// What went wrong in a cycle.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Failure {
    /// The child ended before it was killed.
    EndedByItself {
        /// Its exit status.
        status: String,
        /// The acknowledgements it was to be killed after.
        target: u64,
        /// What it wrote to stderr: the first 2 KiB and the last 4 KiB.
        stderr_tail: String,
    },
    /// The child did not reach its kill point before the run's bound.
    TimedOut {
        /// Acknowledgements seen.
        seen: u64,
        /// Acknowledgements waited for.
        target: u64,
        /// What it wrote to stderr: the first 2 KiB and the last 4 KiB.
        stderr_tail: String,
    },
    /// `PRAGMA integrity_check` did not answer `ok`.
    Integrity(Vec<String>),
    /// Acknowledged writes missing from the file.
    Missing {
        /// Acknowledged writes checked.
        acked: usize,
        /// Those missing.
        missing: Vec<String>,
    },
    /// The check could not run.
    Check(String),
    /// A file or process operation failed.
    Io(String),
}

/// Why a [`Crash`] run failed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CrashError {
    /// The run's seed.
    pub seed: u64,
    /// The cycle that failed (from 0).
    pub cycle: usize,
    /// The database (kept by a [`TempDb`](crate::TempDb) when the test panics).
    pub db: PathBuf,
    /// Where the cycles' acknowledgement files were kept (one `cycle-<n>.acks` each).
    pub acks_dir: Option<PathBuf>,
    /// What went wrong.
    pub failure: Failure,
}

impl fmt::Display for CrashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crash harness failed at cycle {} on {} (seed {}; LUCA_TESTKIT_SEED={} repeats it): ",
            self.cycle,
            self.db.display(),
            self.seed,
            self.seed
        )?;
        let tail = |f: &mut fmt::Formatter<'_>, t: &str| -> fmt::Result {
            for line in t.lines() {
                write!(f, "\n    | {line}")?;
            }
            Ok(())
        };
        match &self.failure {
            Failure::EndedByItself {
                status,
                target,
                stderr_tail,
            } => {
                write!(
                    f,
                    "the child ended by itself ({status}) before its {target}th acknowledgement; it must write until killed"
                )?;
                tail(f, stderr_tail)
            }
            Failure::TimedOut {
                seen,
                target,
                stderr_tail,
            } => {
                write!(
                    f,
                    "the child acknowledged {seen} of {target} writes before the run's time bound: killed"
                )?;
                tail(f, stderr_tail)
            }
            Failure::Integrity(rows) => {
                write!(
                    f,
                    "PRAGMA integrity_check after the kill: {}",
                    rows.join("; ")
                )
            }
            Failure::Missing { acked, missing } => {
                let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
                write!(
                    f,
                    "{} of {acked} acknowledged writes are missing from the file after the kill (first: {})",
                    missing.len(),
                    shown.join(", ")
                )
            }
            Failure::Check(e) => write!(f, "the check could not run: {e}"),
            Failure::Io(e) => write!(f, "{e}"),
        }?;
        if let Some(dir) = &self.acks_dir {
            write!(f, "\n  acknowledgement files kept in {}", dir.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for CrashError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_whole_lines_and_a_cut_line_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.acks");
        assert!(read_acks(&path).unwrap().is_empty());
        let acks = Acks::open(&path).unwrap();
        acks.ack("a-1").unwrap();
        acks.clone().ack("a-2").unwrap();
        assert_eq!(
            acks.ack("x\ny").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(acks.ack("").is_err());
        (&*acks.file).write_all(b"a-3").unwrap();
        assert_eq!(read_acks(&path).unwrap(), ["a-1", "a-2"]);
    }

    #[test]
    fn integrity_check_reports_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO t SELECT 'key' || i, hex(randomblob(40)) FROM n;",
        )
        .unwrap();
        assert_eq!(integrity_check(&conn).unwrap(), ["ok"]);
        drop(conn);
        // Scribble over the middle of the file (pages of the table and its index).
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 3000] {
            *b = 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        let conn = Connection::open(&path).unwrap();
        match integrity_check(&conn) {
            Ok(rows) => assert_ne!(rows, ["ok"]),
            Err(e) => assert!(e.to_string().contains("malformed"), "{e}"),
        }
    }

    #[test]
    fn missing_keys_names_the_absent_ones() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE \"my t\" (k TEXT); INSERT INTO \"my t\" VALUES ('a'), ('c');",
        )
        .unwrap();
        let acked: Vec<String> = ["a", "b", "c", "d"].map(String::from).into();
        assert_eq!(
            missing_keys(&conn, "my t", "k", &acked).unwrap(),
            ["b", "d"]
        );
        assert!(missing_keys(&conn, "nope", "k", &acked).is_err());
    }
}

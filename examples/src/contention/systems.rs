//! The five ways to write to SQLite from many threads that the job compares, and one run of
//! one of them: N writer threads behind a start barrier, each call timed, each error kept
//! by its SQLite code, and the file checked afterwards for lost writes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use luca_core::db_retry;
use luca_core::local::with_connection;
use luca_core::pragmas::{self, Pragmas};
use luca_core::retry::BusyCode;
use luca_core::rusqlite::{self, Connection};
use luca_core::{Db, Error};
use serde::Serialize;

/// How many counters the read-modify-write workload spreads its increments over: few, so
/// that writers meet on the same rows.
pub(crate) const COUNTERS: i64 = 4;

/// What one operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Workload {
    /// One new ledger row `(writer, seq)` per operation.
    Insert,
    /// Read a counter, write it back plus one.
    ReadModifyWrite,
}

impl Workload {
    pub(crate) const ALL: [Workload; 2] = [Workload::Insert, Workload::ReadModifyWrite];

    pub(crate) fn title(self) -> &'static str {
        match self {
            Workload::Insert => "insert (one new row per operation)",
            Workload::ReadModifyWrite => "read-modify-write (read a counter, write it back + 1)",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Workload::Insert => "insert",
            Workload::ReadModifyWrite => "read_modify_write",
        }
    }
}

/// A way of writing from many threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum System {
    /// A connection per thread with SQLite's defaults: rollback journal, no busy timeout,
    /// autocommit statements.
    Naive,
    /// The Python original: WAL, a thread-local connection, a retry decorator (5 retries
    /// from 100 ms, doubling) around DEFERRED transactions.
    Original,
    /// The same, with the transaction where Python's `sqlite3` module opened it: implicitly,
    /// before the first `UPDATE`/`INSERT`, so a read-modify-write reads outside it (for
    /// inserts it is the same as [`System::Original`]).
    OriginalReadOutsideTxn,
    /// `#[db_retry]` functions over `luca_core::local` connections, `BEGIN IMMEDIATE`.
    DbRetryLocal,
    /// `Db` with group commit off: one fair write path, one transaction per write.
    DbNoGroupCommit,
    /// `Db` with its defaults (adaptive group commit).
    Db,
}

impl System {
    pub(crate) const ALL: [System; 6] = [
        System::Naive,
        System::Original,
        System::OriginalReadOutsideTxn,
        System::DbRetryLocal,
        System::DbNoGroupCommit,
        System::Db,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            System::Naive => "naive (defaults)",
            System::Original => "original (WAL+retry)",
            System::OriginalReadOutsideTxn => "original, read outside txn",
            System::DbRetryLocal => "#[db_retry] + local",
            System::DbNoGroupCommit => "Db, group commit off",
            System::Db => "Db (defaults)",
        }
    }

    /// Rows of luca itself: the job fails when one of these escapes an error or loses a
    /// write.
    pub(crate) fn is_luca(self) -> bool {
        matches!(
            self,
            System::DbRetryLocal | System::DbNoGroupCommit | System::Db
        )
    }
}

/// One measured run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunSpec<'a> {
    pub(crate) path: &'a Path,
    pub(crate) workload: Workload,
    pub(crate) writers: usize,
    /// Operations in all, shared out among the writers.
    pub(crate) ops: u64,
    /// No writer starts an operation after this much time.
    pub(crate) bound: Duration,
}

/// What one run did.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunOutcome {
    /// Calls that returned `Ok`.
    pub(crate) ok: u64,
    /// Calls that returned an error, by SQLite's symbolic code.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Writes acknowledged `Ok` but not in the file (or increments missing from a counter).
    pub(crate) lost: u64,
    /// Writes that returned an error yet are in the file.
    pub(crate) phantom: u64,
    /// From the start barrier to the last writer's end.
    pub(crate) elapsed: Duration,
    /// Every call's latency, sorted.
    pub(crate) latencies: Vec<Duration>,
    /// Whether the time bound stopped writers before all operations ran.
    pub(crate) bounded: bool,
}

impl RunOutcome {
    pub(crate) fn escaped(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// What one writer thread saw.
#[derive(Default)]
struct WriterLog {
    ok: u64,
    acked: Vec<i64>,
    increments: [u64; COUNTERS as usize],
    errors: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
    stopped_early: bool,
}

/// An error a call gave back, reduced to its SQLite code.
struct Escaped(String);

impl From<rusqlite::Error> for Escaped {
    fn from(e: rusqlite::Error) -> Self {
        Escaped(code_name(e.sqlite_error().map(|f| f.extended_code)))
    }
}

impl From<Error> for Escaped {
    fn from(e: Error) -> Self {
        Escaped(match e.extended_code() {
            Some(code) => code_name(Some(code)),
            None => format!("other: {e}"),
        })
    }
}

/// `SQLITE_BUSY_SNAPSHOT` for 517, and so on.
pub(crate) fn code_name(code: Option<i32>) -> String {
    match code {
        Some(code) => match BusyCode::from_extended(code) {
            Some(busy) if busy.extended_code() == Some(code) => busy.name().to_owned(),
            _ => format!("SQLite code {code}"),
        },
        None => "not from SQLite".to_owned(),
    }
}

const PAYLOAD: &str = "https://example.org/page -> 200 OK";

fn counter_of(writer: i64, seq: i64) -> i64 {
    (writer + seq) % COUNTERS
}

/// The operation itself, the same SQL for every system.
fn apply(conn: &Connection, workload: Workload, writer: i64, seq: i64) -> rusqlite::Result<()> {
    match workload {
        Workload::Insert => {
            conn.prepare_cached("INSERT INTO ledger (writer, seq, payload) VALUES (?1, ?2, ?3)")?
                .execute((writer, seq, PAYLOAD))?;
        }
        Workload::ReadModifyWrite => {
            let id = counter_of(writer, seq);
            let value: i64 = conn
                .prepare_cached("SELECT value FROM counters WHERE id = ?1")?
                .query_row([id], |r| r.get(0))?;
            conn.prepare_cached("UPDATE counters SET value = ?1 WHERE id = ?2")?
                .execute((value + 1, id))?;
        }
    }
    Ok(())
}

/// Fresh tables, and the journal mode the system runs with (SQLite's default rollback
/// journal for the naive system, WAL for the rest). No other connection is open here.
pub(crate) fn prepare(path: &Path, system: Option<System>) -> luca_core::Result<()> {
    let conn = Connection::open(path)?;
    let mode = if system == Some(System::Naive) {
        "DELETE"
    } else {
        "WAL"
    };
    let _: String = conn.query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0))?;
    conn.execute_batch(
        "DROP TABLE IF EXISTS ledger;
         DROP TABLE IF EXISTS counters;
         CREATE TABLE ledger (
             writer INTEGER NOT NULL, seq INTEGER NOT NULL, payload TEXT NOT NULL,
             PRIMARY KEY (writer, seq));
         CREATE TABLE counters (id INTEGER PRIMARY KEY, value INTEGER NOT NULL);",
    )?;
    for id in 0..COUNTERS {
        conn.execute("INSERT INTO counters (id, value) VALUES (?1, 0)", [id])?;
    }
    Ok(())
}

/// The serial ceiling: one connection (WAL, `synchronous=NORMAL`), one thread, one
/// operation per `BEGIN IMMEDIATE … COMMIT`, nobody to wait for.
pub(crate) fn run_ceiling(spec: &RunSpec<'_>) -> luca_core::Result<RunOutcome> {
    prepare(spec.path, None)?;
    let conn = pragmas::open(spec.path, &Pragmas::new())?;
    let mut log = WriterLog::default();
    let start = Instant::now();
    for seq in 0..spec.ops as i64 {
        if start.elapsed() >= spec.bound {
            log.stopped_early = true;
            break;
        }
        let t = Instant::now();
        let result = (|| -> rusqlite::Result<()> {
            conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            apply(&conn, spec.workload, 0, seq)?;
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        })();
        log.record(
            spec.workload,
            0,
            seq,
            t.elapsed(),
            result.map_err(Escaped::from),
        );
    }
    let elapsed = start.elapsed();
    drop(conn);
    finish(spec, vec![log], elapsed)
}

/// One run of `system`: `spec.writers` threads, a start barrier, then the check of the file.
pub(crate) fn run(system: System, spec: &RunSpec<'_>) -> luca_core::Result<RunOutcome> {
    prepare(spec.path, Some(system))?;
    let db = match system {
        System::Db => Some(Db::open_blocking(spec.path)?),
        System::DbNoGroupCommit => Some(
            Db::builder(spec.path)
                .group_commit(false)
                .build_blocking()?,
        ),
        _ => None,
    };
    let writers = spec.writers.max(1);
    let per_writer = spec.ops.div_ceil(writers as u64);
    let barrier = Barrier::new(writers + 1);
    let (logs, elapsed) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let barrier = &barrier;
                let db = db.clone();
                let remaining = spec.ops.saturating_sub(per_writer * w as u64);
                let mine = per_writer.min(remaining);
                s.spawn(move || writer(system, spec, db, w as i64, mine, barrier))
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let logs: Vec<WriterLog> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        (logs, start.elapsed())
    });
    if let Some(db) = db {
        db.close_blocking()?;
    }
    finish(spec, logs, elapsed)
}

/// One writer thread: opens what its system opens per thread, waits at the barrier, then
/// runs its share of operations until done or out of time.
fn writer(
    system: System,
    spec: &RunSpec<'_>,
    db: Option<Db>,
    w: i64,
    ops: u64,
    barrier: &Barrier,
) -> WriterLog {
    let mut log = WriterLog::default();
    // Connections are opened before the start, so the run times writes, not opens.
    let naive = match system {
        System::Naive => Connection::open(spec.path)
            .and_then(|c| c.busy_timeout(Duration::ZERO).map(|()| c))
            .map_err(|e| Escaped::from(e).0),
        _ => Err(String::new()),
    };
    let opened = match system {
        System::Naive => naive.as_ref().map(|_| ()).map_err(Clone::clone),
        System::Original | System::OriginalReadOutsideTxn => {
            original::with_conn(spec.path, |_| Ok(())).map_err(|e| Escaped::from(e).0)
        }
        System::DbRetryLocal => {
            with_connection(spec.path, |_| Ok(())).map_err(|e| Escaped::from(e).0)
        }
        System::DbNoGroupCommit | System::Db => Ok(()),
    };
    barrier.wait();
    if let Err(code) = opened {
        *log.errors.entry(format!("open: {code}")).or_default() += ops;
        return log;
    }
    let start = Instant::now();
    for seq in 0..ops as i64 {
        if start.elapsed() >= spec.bound {
            log.stopped_early = true;
            break;
        }
        let workload = spec.workload;
        let t = Instant::now();
        let result: Result<(), Escaped> = match (system, &naive, &db) {
            (System::Naive, Ok(conn), _) => apply(conn, workload, w, seq).map_err(Escaped::from),
            (System::Original, ..) => {
                original::op(spec.path, workload, w, seq, true).map_err(Escaped::from)
            }
            (System::OriginalReadOutsideTxn, ..) => {
                original::op(spec.path, workload, w, seq, false).map_err(Escaped::from)
            }
            (System::DbRetryLocal, ..) => {
                local_op(spec.path, workload, w, seq).map_err(Escaped::from)
            }
            (_, _, Some(db)) => db
                .write_blocking(move |conn| Ok(apply(conn, workload, w, seq)?))
                .map_err(Escaped::from),
            _ => Err(Escaped("not opened".to_owned())),
        };
        log.record(workload, w, seq, t.elapsed(), result);
    }
    if matches!(system, System::Original | System::OriginalReadOutsideTxn) {
        original::close();
    }
    if system == System::DbRetryLocal {
        luca_core::local::cleanup_connections();
    }
    log
}

impl WriterLog {
    fn record(
        &mut self,
        workload: Workload,
        writer: i64,
        seq: i64,
        latency: Duration,
        result: Result<(), Escaped>,
    ) {
        self.latencies.push(latency);
        match result {
            Ok(()) => {
                self.ok += 1;
                match workload {
                    Workload::Insert => self.acked.push(seq),
                    Workload::ReadModifyWrite => {
                        self.increments[counter_of(writer, seq) as usize] += 1;
                    }
                }
            }
            Err(Escaped(code)) => *self.errors.entry(code).or_default() += 1,
        }
    }
}

/// Merges the writers' logs and checks the file: every acknowledged row present, every
/// counter equal to its acknowledged increments.
fn finish(
    spec: &RunSpec<'_>,
    logs: Vec<WriterLog>,
    elapsed: Duration,
) -> luca_core::Result<RunOutcome> {
    let conn = Connection::open(spec.path)?;
    let mut out = RunOutcome {
        elapsed,
        ..RunOutcome::default()
    };
    let mut increments = [0u64; COUNTERS as usize];
    let mut acked: HashSet<(i64, i64)> = HashSet::new();
    for (w, log) in logs.into_iter().enumerate() {
        out.ok += log.ok;
        out.bounded |= log.stopped_early;
        for (code, n) in log.errors {
            *out.errors.entry(code).or_default() += n;
        }
        out.latencies.extend(log.latencies);
        acked.extend(log.acked.into_iter().map(|seq| (w as i64, seq)));
        for (total, n) in increments.iter_mut().zip(log.increments) {
            *total += n;
        }
    }
    out.latencies.sort_unstable();
    match spec.workload {
        Workload::Insert => {
            let mut stmt = conn.prepare("SELECT writer, seq FROM ledger")?;
            let in_file: HashSet<(i64, i64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            out.lost = acked.difference(&in_file).count() as u64;
            out.phantom = in_file.difference(&acked).count() as u64;
        }
        Workload::ReadModifyWrite => {
            let mut stmt = conn.prepare("SELECT id, value FROM counters ORDER BY id")?;
            let values: Vec<(i64, i64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (id, value) in values {
                let expected = increments.get(id as usize).copied().unwrap_or(0) as i64;
                out.lost += (expected - value).max(0) as u64;
                out.phantom += (value - expected).max(0) as u64;
            }
        }
    }
    Ok(out)
}

/// `#[db_retry]` (5 retries from 100 ms, full jitter) over this thread's `local`
/// connection; the whole `BEGIN IMMEDIATE … COMMIT` is one attempt.
#[db_retry]
fn local_op(path: &Path, workload: Workload, writer: i64, seq: i64) -> luca_core::Result<()> {
    with_connection(path, |conn| {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        apply(conn, workload, writer, seq)?;
        conn.execute_batch("COMMIT")?;
        Ok(())
    })
}

/// The Python original's design, written out: a thread-local connection (WAL,
/// `synchronous=NORMAL`, busy_timeout 30 s), a retry decorator that retries "database is
/// locked" 5 times from 100 ms, doubling, and DEFERRED transactions. The read of a
/// read-modify-write takes a snapshot; the write must then upgrade it, and SQLite answers
/// a contended upgrade at once with SQLITE_BUSY or SQLITE_BUSY_SNAPSHOT (the busy handler
/// is skipped, as waiting could deadlock), so five retries can run out.
mod original {
    use super::*;

    const RETRIES: u32 = 5;
    const FIRST_DELAY: Duration = Duration::from_millis(100);

    thread_local! {
        static CONN: RefCell<Option<(PathBuf, Connection)>> = const { RefCell::new(None) };
    }

    /// This thread's connection to `path`, opened on first use.
    pub(super) fn with_conn<T>(
        path: &Path,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        CONN.with_borrow_mut(|slot| {
            if slot.as_ref().is_none_or(|(p, _)| p != path) {
                let conn = Connection::open(path)?;
                conn.busy_timeout(Duration::from_secs(30))?;
                let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                *slot = Some((path.to_path_buf(), conn));
            }
            match slot {
                Some((_, conn)) => f(conn),
                None => Err(rusqlite::Error::InvalidPath(path.to_path_buf())),
            }
        })
    }

    pub(super) fn close() {
        CONN.with_borrow_mut(|slot| *slot = None);
    }

    fn is_locked(e: &rusqlite::Error) -> bool {
        e.sqlite_error()
            .is_some_and(|f| matches!(f.extended_code & 0xff, 5 | 6))
    }

    /// One operation: the retry decorator around one DEFERRED transaction. With
    /// `read_in_txn` false, a read-modify-write reads before the transaction opens, as
    /// Python's `sqlite3` module ran it (it begins implicitly before the first write).
    pub(super) fn op(
        path: &Path,
        workload: Workload,
        writer: i64,
        seq: i64,
        read_in_txn: bool,
    ) -> rusqlite::Result<()> {
        let mut delay = FIRST_DELAY;
        let mut retries = 0;
        loop {
            let result = with_conn(path, |conn| {
                let txn = |body: &dyn Fn() -> rusqlite::Result<()>| {
                    conn.execute_batch("BEGIN DEFERRED")?;
                    let result = body().and_then(|()| conn.execute_batch("COMMIT"));
                    if result.is_err() && !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    result
                };
                match workload {
                    Workload::ReadModifyWrite if !read_in_txn => {
                        let id = counter_of(writer, seq);
                        let value: i64 = conn
                            .prepare_cached("SELECT value FROM counters WHERE id = ?1")?
                            .query_row([id], |r| r.get(0))?;
                        txn(&|| {
                            conn.prepare_cached("UPDATE counters SET value = ?1 WHERE id = ?2")?
                                .execute((value + 1, id))
                                .map(drop)
                        })
                    }
                    _ => txn(&|| apply(conn, workload, writer, seq)),
                }
            });
            match result {
                Err(e) if is_locked(&e) && retries < RETRIES => {
                    std::thread::sleep(delay);
                    delay *= 2;
                    retries += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use luca_testkit::TempDb;

    fn spec(path: &Path, workload: Workload) -> RunSpec<'_> {
        RunSpec {
            path,
            workload,
            writers: 1,
            ops: 3,
            bound: Duration::from_secs(5),
        }
    }

    fn log_of(workload: Workload, results: &[(i64, bool)]) -> WriterLog {
        let mut log = WriterLog::default();
        for &(seq, ok) in results {
            let result = if ok {
                Ok(())
            } else {
                Err(Escaped(code_name(Some(5))))
            };
            log.record(workload, 0, seq, Duration::from_micros(10), result);
        }
        log
    }

    #[test]
    fn the_ledger_check_counts_acknowledged_rows_missing_from_the_file() {
        let db = TempDb::new();
        prepare(db.path(), Some(System::Db)).unwrap();
        let conn = Connection::open(db.path()).unwrap();
        // Rows 0 and 2 are in the file; 0 and 1 were acknowledged, 2 was answered BUSY.
        for seq in [0, 2] {
            apply(&conn, Workload::Insert, 0, seq).unwrap();
        }
        drop(conn);
        let log = log_of(Workload::Insert, &[(0, true), (1, true), (2, false)]);
        let out = finish(
            &spec(db.path(), Workload::Insert),
            vec![log],
            Duration::from_millis(1),
        )
        .unwrap();
        assert_eq!((out.ok, out.lost, out.phantom), (2, 1, 1));
        assert_eq!(out.errors.get("SQLITE_BUSY"), Some(&1));
        assert_eq!(out.latencies.len(), 3);
    }

    #[test]
    fn the_counter_check_counts_increments_missing_from_the_counters() {
        let db = TempDb::new();
        prepare(db.path(), Some(System::Db)).unwrap();
        let conn = Connection::open(db.path()).unwrap();
        // Three acknowledged increments of counter 0 (seq 0, 4, 8), of which only one
        // reached the file: the classic lost update of two read-then-write callers.
        apply(&conn, Workload::ReadModifyWrite, 0, 0).unwrap();
        drop(conn);
        let log = log_of(
            Workload::ReadModifyWrite,
            &[(0, true), (4, true), (8, true)],
        );
        let out = finish(
            &spec(db.path(), Workload::ReadModifyWrite),
            vec![log],
            Duration::from_millis(1),
        )
        .unwrap();
        assert_eq!((out.ok, out.lost, out.phantom), (3, 2, 0));
    }

    #[test]
    fn every_system_runs_both_workloads_and_luca_rows_lose_nothing() {
        let db = TempDb::new();
        for workload in Workload::ALL {
            for system in System::ALL {
                let spec = RunSpec {
                    writers: 3,
                    ops: 30,
                    ..spec(db.path(), workload)
                };
                let out = run(system, &spec).unwrap();
                assert_eq!(
                    out.latencies.len() as u64,
                    out.ok + out.escaped(),
                    "{system:?}"
                );
                if system.is_luca() {
                    assert_eq!(
                        (out.ok, out.lost, out.phantom),
                        (30, 0, 0),
                        "{system:?} {workload:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn codes_have_sqlite_names() {
        assert_eq!(code_name(Some(517)), "SQLITE_BUSY_SNAPSHOT");
        assert_eq!(code_name(Some(5)), "SQLITE_BUSY");
        assert_eq!(code_name(Some(2067)), "SQLite code 2067");
        assert_eq!(code_name(None), "not from SQLite");
    }
}

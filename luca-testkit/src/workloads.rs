//! Ready-made workloads, each with its setup, its operation and its lost-write check.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use luca_core::Db;
use luca_core::rusqlite::{self, Connection, OptionalExtension, params};

use crate::contention::Acked;

/// What a lost-write check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Acknowledged writes missing from the file (or, for counters, applied twice).
    pub count: u64,
    /// What is wrong, for the report (empty when nothing is).
    pub description: String,
}

impl Lost {
    /// Nothing lost.
    pub fn none() -> Lost {
        Lost::default()
    }

    /// `count` lost writes, described.
    pub fn new(count: u64, description: impl Into<String>) -> Lost {
        Lost {
            count,
            description: description.into(),
        }
    }
}

fn begin(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.execute_batch(sql)
}

/// Runs `f` inside `BEGIN <behavior> … COMMIT` on a plain connection, rolling back when
/// `f` or the `COMMIT` fails (so the connection never stays inside a transaction).
fn in_transaction(
    conn: &Connection,
    begin_sql: &str,
    f: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    begin(conn, begin_sql)?;
    let outcome = f(conn).and_then(|()| conn.execute_batch("COMMIT"));
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}

/// A workload: a schema, one operation identified by a unique `id`, and a check that
/// every acknowledged operation is in the file.
///
/// [`apply`](Workload::apply) runs inside a transaction someone else opened: a
/// [`Db::write`] closure, or the `BEGIN … COMMIT` of
/// [`apply_immediate`](Workload::apply_immediate). `id`s must be unique across every
/// worker (and process) writing to one file; the check is told which were acknowledged.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> luca_core::Result<()> {
/// use luca_testkit::{Acked, Counter, TempDb, Workload};
///
/// let tmp = TempDb::new();
/// let db = tmp.db().await?;
/// Counter.setup_db(&db).await?;
/// for id in 0..10 {
///     Counter.write(&db, id).await?;
/// }
/// let lost = Counter.check_db(&db, &Acked::from_ids(0..10)).await?;
/// assert_eq!(lost.count, 0);
/// # Ok(())
/// # }
/// ```
pub trait Workload: Clone + Send + Sync + 'static {
    /// A short name for reports.
    fn name(&self) -> &'static str;

    /// Creates the workload's tables (idempotent).
    ///
    /// # Errors
    /// SQLite's.
    fn setup(&self, conn: &Connection) -> rusqlite::Result<()>;

    /// Operation `id`, inside the caller's transaction.
    ///
    /// # Errors
    /// SQLite's.
    fn apply(&self, conn: &Connection, id: u64) -> rusqlite::Result<()>;

    /// Counts the acknowledged operations whose effect is not in the file.
    ///
    /// # Errors
    /// SQLite's.
    fn check(&self, conn: &Connection, acked: &Acked) -> rusqlite::Result<Lost>;

    /// Operation `id` in its own `BEGIN IMMEDIATE … COMMIT` on a plain connection (rolled
    /// back on error): the correct way to run a read-modify-write without `Db`.
    ///
    /// # Errors
    /// SQLite's; the transaction is rolled back.
    fn apply_immediate(&self, conn: &Connection, id: u64) -> rusqlite::Result<()> {
        in_transaction(conn, "BEGIN IMMEDIATE", |c| self.apply(c, id))
    }

    /// Operation `id` in a `BEGIN DEFERRED … COMMIT` (rolled back on error): the trap.
    /// Its read takes a snapshot, so the write that follows fails at once with
    /// `SQLITE_BUSY` or `SQLITE_BUSY_SNAPSHOT`, without waiting in the busy handler,
    /// whenever another connection writes meanwhile.
    ///
    /// # Errors
    /// SQLite's; the transaction is rolled back.
    fn apply_deferred(&self, conn: &Connection, id: u64) -> rusqlite::Result<()> {
        in_transaction(conn, "BEGIN DEFERRED", |c| self.apply(c, id))
    }

    /// [`setup`](Workload::setup) through a `Db`'s write path.
    ///
    /// # Errors
    /// As [`Db::write`].
    fn setup_db(&self, db: &Db) -> impl Future<Output = luca_core::Result<()>> + Send {
        let this = self.clone();
        let db = db.clone();
        async move { db.write(move |c| Ok(this.setup(c)?)).await }
    }

    /// Operation `id` through [`Db::write`].
    ///
    /// # Errors
    /// As [`Db::write`].
    fn write(&self, db: &Db, id: u64) -> impl Future<Output = luca_core::Result<()>> + Send {
        let this = self.clone();
        let db = db.clone();
        async move { db.write(move |c| Ok(this.apply(c, id)?)).await }
    }

    /// Operation `id` through [`Db::write_blocking`].
    ///
    /// # Errors
    /// As [`Db::write`].
    fn write_blocking(&self, db: &Db, id: u64) -> luca_core::Result<()> {
        let this = self.clone();
        db.write_blocking(move |c| Ok(this.apply(c, id)?))
    }

    /// [`check`](Workload::check) on one of the `Db`'s readers (it sees every committed
    /// write).
    ///
    /// # Errors
    /// As [`Db::read`].
    fn check_db(
        &self,
        db: &Db,
        acked: &Acked,
    ) -> impl Future<Output = luca_core::Result<Lost>> + Send {
        let this = self.clone();
        let db = db.clone();
        let acked = acked.clone();
        async move { db.read(move |c| Ok(this.check(c, &acked)?)).await }
    }

    /// [`check`](Workload::check) on a fresh connection to `path` (opened for this check
    /// and closed after it).
    ///
    /// # Errors
    /// When the file cannot be opened; SQLite's.
    fn check_path(&self, path: &Path, acked: &Acked) -> luca_core::Result<Lost> {
        let conn = luca_core::pragmas::open(
            path,
            &luca_core::pragmas::Pragmas::new().with_busy_timeout(Duration::from_secs(10)),
        )?;
        Ok(self.check(&conn, acked)?)
    }

    /// [`setup`](Workload::setup) on a fresh connection to `path`.
    ///
    /// # Errors
    /// When the file cannot be opened; SQLite's.
    fn setup_path(&self, path: &Path) -> luca_core::Result<()> {
        let conn = luca_core::pragmas::open(
            path,
            &luca_core::pragmas::Pragmas::new().with_busy_timeout(Duration::from_secs(10)),
        )?;
        Ok(self.setup(&conn)?)
    }
}

fn to_i64(id: u64) -> rusqlite::Result<i64> {
    i64::try_from(id).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, i64::MAX))
}

fn list(ids: impl Iterator<Item = u64>) -> String {
    let mut shown: Vec<String> = ids.take(10).map(|i| i.to_string()).collect();
    if shown.len() == 10 {
        shown.push("…".to_owned());
    }
    shown.join(", ")
}

/// Insert ledger: operation `id` inserts row `id` into `luca_ledger (id INTEGER PRIMARY
/// KEY, at INTEGER)`. Lost: an acknowledged `id` without its row.
#[derive(Clone, Copy, Debug, Default)]
pub struct InsertLedger;

impl Workload for InsertLedger {
    fn name(&self) -> &'static str {
        "insert"
    }

    fn setup(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS luca_ledger (id INTEGER PRIMARY KEY, at INTEGER NOT NULL)",
        )
    }

    fn apply(&self, conn: &Connection, id: u64) -> rusqlite::Result<()> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        conn.prepare_cached("INSERT INTO luca_ledger (id, at) VALUES (?1, ?2)")?
            .execute(params![to_i64(id)?, at])?;
        Ok(())
    }

    fn check(&self, conn: &Connection, acked: &Acked) -> rusqlite::Result<Lost> {
        let mut stmt = conn.prepare("SELECT id FROM luca_ledger")?;
        let present = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<HashSet<i64>>>()?;
        let missing: Vec<u64> = acked
            .iter()
            .filter(|id| i64::try_from(*id).map_or(true, |i| !present.contains(&i)))
            .collect();
        if missing.is_empty() {
            return Ok(Lost::none());
        }
        Ok(Lost::new(
            missing.len() as u64,
            format!(
                "{} acknowledged insert(s) missing from luca_ledger: ids {}",
                missing.len(),
                list(missing.iter().copied())
            ),
        ))
    }
}

/// Counter read-modify-write: operation reads `n` from `luca_counter` row 1 and writes
/// `n + 1` back (two statements, the pattern that loses updates when the read and the
/// write are not in one write transaction). Lost: the counter differs from the number of
/// acknowledged increments.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counter;

impl Counter {
    /// The counter's value now.
    ///
    /// # Errors
    /// SQLite's.
    pub fn value(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("SELECT n FROM luca_counter WHERE id = 1", [], |r| r.get(0))
    }

    /// The lost-update bug, for showing that a check catches it: the read runs in its own
    /// (autocommit) statement, the write in another, so a concurrent increment between
    /// them is overwritten. Never use this pattern outside a test.
    ///
    /// # Errors
    /// SQLite's.
    pub fn apply_racy(&self, conn: &Connection, _id: u64) -> rusqlite::Result<()> {
        let n = Counter::value(conn)?;
        conn.execute("UPDATE luca_counter SET n = ?1 WHERE id = 1", [n + 1])?;
        Ok(())
    }
}

impl Workload for Counter {
    fn name(&self) -> &'static str {
        "rmw"
    }

    fn setup(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS luca_counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT OR IGNORE INTO luca_counter (id, n) VALUES (1, 0);",
        )
    }

    fn apply(&self, conn: &Connection, _id: u64) -> rusqlite::Result<()> {
        let n: i64 = conn
            .prepare_cached("SELECT n FROM luca_counter WHERE id = 1")?
            .query_row([], |r| r.get(0))?;
        conn.prepare_cached("UPDATE luca_counter SET n = ?1 WHERE id = 1")?
            .execute([n + 1])?;
        Ok(())
    }

    fn check(&self, conn: &Connection, acked: &Acked) -> rusqlite::Result<Lost> {
        let n = Counter::value(conn)?;
        let expected = acked.len() as i64;
        if n == expected {
            return Ok(Lost::none());
        }
        Ok(Lost::new(
            n.abs_diff(expected),
            format!("counter is {n}, {expected} increment(s) were acknowledged"),
        ))
    }
}

/// The learning-engine pattern: operation `id` records an outcome for pattern
/// `p{id % patterns}`, a success unless `id % 3 == 0`. It reads the pattern's row, inserts
/// it with counts `(1, 0)` or `(0, 1)` when missing, or else writes back `success + 1`
/// (or `failure + 1`). Lost: a pattern whose counts differ from what the acknowledged
/// operations add up to.
#[derive(Clone, Copy, Debug)]
pub struct Learning {
    /// Distinct patterns the operations spread over (at least 1).
    pub patterns: u64,
}

impl Default for Learning {
    fn default() -> Self {
        Learning { patterns: 8 }
    }
}

impl Learning {
    /// The pattern and outcome (success?) of operation `id`.
    pub fn outcome(&self, id: u64) -> (String, bool) {
        (
            format!("p{}", id % self.patterns.max(1)),
            !id.is_multiple_of(3),
        )
    }
}

impl Workload for Learning {
    fn name(&self) -> &'static str {
        "learning"
    }

    fn setup(&self, conn: &Connection) -> rusqlite::Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS luca_patterns (
                 pattern TEXT PRIMARY KEY,
                 success INTEGER NOT NULL,
                 failure INTEGER NOT NULL
             )",
        )
    }

    fn apply(&self, conn: &Connection, id: u64) -> rusqlite::Result<()> {
        let (pattern, success) = self.outcome(id);
        let row: Option<(i64, i64)> = conn
            .prepare_cached("SELECT success, failure FROM luca_patterns WHERE pattern = ?1")?
            .query_row([&pattern], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (s, f) = row.unwrap_or((0, 0));
        let (s, f) = if success { (s + 1, f) } else { (s, f + 1) };
        conn.prepare_cached(
            "INSERT INTO luca_patterns (pattern, success, failure) VALUES (?1, ?2, ?3)
             ON CONFLICT (pattern) DO UPDATE SET success = excluded.success,
                                                 failure = excluded.failure",
        )?
        .execute(params![pattern, s, f])?;
        Ok(())
    }

    fn check(&self, conn: &Connection, acked: &Acked) -> rusqlite::Result<Lost> {
        let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for id in acked.iter() {
            let (pattern, success) = self.outcome(id);
            let e = expected.entry(pattern).or_insert((0, 0));
            if success {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        let mut stmt = conn.prepare("SELECT pattern, success, failure FROM luca_patterns")?;
        let actual = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))?
            .collect::<rusqlite::Result<BTreeMap<String, (i64, i64)>>>()?;
        let mut lost = 0;
        let mut wrong = Vec::new();
        let names: HashSet<&String> = expected.keys().chain(actual.keys()).collect();
        let mut names: Vec<&String> = names.into_iter().collect();
        names.sort();
        for name in names {
            let e = expected.get(name).copied().unwrap_or((0, 0));
            let a = actual.get(name).copied().unwrap_or((0, 0));
            if e != a {
                lost += e.0.abs_diff(a.0) + e.1.abs_diff(a.1);
                wrong.push(format!(
                    "{name}: success/failure {}/{} expected {}/{}",
                    a.0, a.1, e.0, e.1
                ));
            }
        }
        if lost == 0 {
            return Ok(Lost::none());
        }
        Ok(Lost::new(lost, wrong.join("; ")))
    }
}

//! The read section and the mixed workload of the `Db` benchmark (issue 13).
//!
//! - Reads: `Db::read` at R concurrent readers (tokio tasks), alone and with
//!   [`READ_WRITERS`] writers running, against deadpool-sqlite (its default pool, and one
//!   connection per task) and one serial connection (one thread, no async: the read
//!   ceiling). Two reads: a point lookup by primary key (a random key) and a 100-row range
//!   scan (summing a column), on a file pre-filled with [`FILL`] rows. Every answer is
//!   checked (the lookup finds its row with its value, the scan sees exactly its 100 rows
//!   and their sum), so a broken read counts as an error, not as a speed-up.
//! - Reads never wait on writes: a direct check, not a timing. While a luca write closure
//!   is held open (inside `db.write`, the write lock taken, an uncommitted change made),
//!   1000 reads through `Db::read` must finish within a bound and see the last committed
//!   state.
//! - Mixed: [`MIXED_TASKS`] tasks, each operation a point lookup (90 %) or an insert
//!   (10 %), with the lost-write check of the insert workload for the inserts.
//!
//! The writes of both sections insert `(writer, seq)` rows beside the pre-filled ones
//! (whose `writer` is -1), so the reads' answers never change while writers run.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_sqlite::{Hook, HookError, Pool, Runtime};
use luca_core::Db;
use luca_core::rusqlite::{self, Connection, OptionalExtension, TransactionBehavior, params};
use luca_testkit::TempDb;

use super::{
    Args, BoxError, DEADPOOL, DEADPOOL_PER_WRITER, LUCA, SERIAL, configure, deadpool_pool_error,
    fmt_errors, fmt_ns, luca_kind, luca_write, median, open_plain, plain_op, rusqlite_kind,
};
use crate::harness::{self, Check, Drive, Row, Workload};

/// Rows in the pre-filled table; their ids are `1..=FILL`.
pub(crate) const FILL: i64 = 100_000;
/// Rows per range scan.
const SCAN_ROWS: i64 = 100;
/// Writers running beside the readers in the "with writers" cells.
pub(crate) const READ_WRITERS: usize = 16;
/// Tasks of the mixed workload.
pub(crate) const MIXED_TASKS: usize = 64;
/// Reads of the "reads never wait on writes" check.
const NO_WAIT_READS: usize = 1000;
/// The bound on those reads while the write is held: generous, they take milliseconds.
const NO_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

const POINT: &str = "SELECT seq, length(payload) FROM items WHERE id = ?1";
const SCAN: &str = "SELECT id, seq FROM items WHERE id >= ?1 AND id < ?2 ORDER BY id";

/// The parts of `--reads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Point lookups by primary key.
    Point,
    /// 100-row range scans.
    Scan,
    /// The "reads never wait on writes" check.
    NoWait,
    /// The mixed workload.
    Mixed,
}

impl Part {
    pub(crate) const ALL: [Part; 4] = [Part::Point, Part::Scan, Part::NoWait, Part::Mixed];

    fn name(self) -> &'static str {
        match self {
            Part::Point => "point",
            Part::Scan => "scan",
            Part::NoWait => "no-wait",
            Part::Mixed => "mixed",
        }
    }

    /// A `--reads` value: a comma-separated list of parts, `all` or `none`.
    pub(crate) fn parse_list(value: &str) -> Option<Vec<Part>> {
        match value.trim() {
            "all" => return Some(Part::ALL.to_vec()),
            "none" => return Some(Vec::new()),
            _ => {}
        }
        value
            .split(',')
            .map(|p| Part::ALL.into_iter().find(|part| part.name() == p.trim()))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Files, keys and the reads themselves

/// The pre-filled file every cell copies: the schema of the write workloads and [`FILL`]
/// rows (`id` = `seq`, `writer` = -1), written in one transaction and checkpointed, so the
/// main file alone holds everything once the connection closed.
fn template() -> Result<TempDb, BoxError> {
    let tmp = TempDb::try_named("reads-template.db")?;
    let mut conn = open_plain(tmp.path())?;
    conn.execute_batch(harness::SCHEMA)?;
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare("INSERT INTO items (id, writer, seq, payload) VALUES (?1, -1, ?1, ?2)")?;
        for id in 1..=FILL {
            insert.execute(params![id, harness::PAYLOAD])?;
        }
    }
    tx.commit()?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    let wal = tmp.path().with_extension("db-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Err(format!("{} still holds frames after the checkpoint", wal.display()).into());
    }
    Ok(tmp)
}

/// A fresh copy of the template for one cell.
fn copy_of(template: &Path) -> Result<TempDb, BoxError> {
    let tmp = TempDb::try_named("bench.db")?;
    std::fs::copy(template, tmp.path())?;
    Ok(tmp)
}

/// splitmix64: the benchmark's deterministic "random" numbers.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash(w: u32, seq: u32, salt: u64) -> u64 {
    mix(((u64::from(w) << 32) | u64::from(seq)) ^ salt)
}

/// The key task `w` reads in its operation `seq`: a row id for a lookup, the first id of
/// a scan.
fn key(kind: Part, w: u32, seq: u32) -> i64 {
    let h = hash(w, seq, 0x5EED) as i64 & i64::MAX;
    match kind {
        Part::Scan => h % (FILL - SCAN_ROWS + 1) + 1,
        _ => h % FILL + 1,
    }
}

/// Whether operation `seq` of mixed task `w` is a write (one in ten).
fn is_write(w: u32, seq: u32) -> bool {
    hash(w, seq, 0xC0FFEE).is_multiple_of(10)
}

/// One read on a plain connection. The outer error is SQLite's; the inner one a wrong
/// answer.
fn read_op(c: &Connection, kind: Part, key: i64) -> rusqlite::Result<Result<(), String>> {
    if kind == Part::Scan {
        let mut stmt = c.prepare_cached(SCAN)?;
        let mut rows = stmt.query([key, key + SCAN_ROWS])?;
        let (mut count, mut sum) = (0i64, 0i64);
        while let Some(row) = rows.next()? {
            let (id, seq): (i64, i64) = (row.get(0)?, row.get(1)?);
            if id != key + count {
                return Ok(Err("wrong answer: scan row out of order".into()));
            }
            count += 1;
            sum += seq;
        }
        // seq = id in the pre-filled rows: key + (key + 1) + … + (key + 99).
        let want = SCAN_ROWS * key + SCAN_ROWS * (SCAN_ROWS - 1) / 2;
        return Ok(if count != SCAN_ROWS {
            Err("wrong answer: scan row count".into())
        } else if sum != want {
            Err("wrong answer: scan sum".into())
        } else {
            Ok(())
        });
    }
    let found: Option<(i64, i64)> = c
        .prepare_cached(POINT)?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match found {
        None => Err("wrong answer: lookup found no row".into()),
        Some((seq, len)) if seq != key || len != harness::PAYLOAD.len() as i64 => {
            Err("wrong answer: lookup found another row".into())
        }
        Some(_) => Ok(()),
    })
}

fn flatten_plain(r: rusqlite::Result<Result<(), String>>) -> Result<(), String> {
    r.map_err(|e| rusqlite_kind(&e))?
}

async fn luca_read(db: &Db, kind: Part, key: i64) -> Result<(), String> {
    db.read(move |c| Ok(read_op(c, kind, key)?))
        .await
        .map_err(|e| luca_kind(&e))?
}

async fn deadpool_read(pool: &Pool, kind: Part, key: i64) -> Result<(), String> {
    let conn = pool.get().await.map_err(|e| deadpool_pool_error(&e))?;
    let r = conn
        .interact(move |c| read_op(c, kind, key))
        .await
        .map_err(|e| format!("interact: {e}"))?;
    flatten_plain(r)
}

async fn deadpool_insert(pool: &Pool, w: u32, seq: u32) -> Result<(), String> {
    let conn = pool.get().await.map_err(|e| deadpool_pool_error(&e))?;
    conn.interact(move |c| plain_op(c, TransactionBehavior::Immediate, Workload::Insert, w, seq))
        .await
        .map_err(|e| format!("interact: {e}"))?
        .map_err(|e| rusqlite_kind(&e))
}

/// deadpool-sqlite with the usual `post_create` hook (`configure`), of `size` connections
/// (`None`: its default), every connection opened before the clock starts.
async fn deadpool_pool(path: &Path, size: Option<usize>) -> Result<Pool, BoxError> {
    let mut builder = deadpool_sqlite::Config::new(path).builder(Runtime::Tokio1)?;
    if let Some(n) = size {
        builder = builder.max_size(n);
    }
    let pool = builder
        .post_create(Hook::async_fn(|conn, _| {
            Box::pin(async move {
                conn.interact(|c| configure(c))
                    .await
                    .map_err(|e| HookError::message(e.to_string()))?
                    .map_err(HookError::Backend)
            })
        }))
        .build()?;
    let mut warm = Vec::with_capacity(pool.status().max_size);
    for _ in 0..pool.status().max_size {
        warm.push(pool.get().await?);
    }
    drop(warm);
    Ok(pool)
}

/// Opens `Db` and warms its reader pool (connections, statement caches) with unrecorded
/// reads from many tasks at once.
async fn luca_db(path: &Path, kind: Part) -> Result<Db, BoxError> {
    let db = Db::open(path).await?;
    let mut warm = Vec::new();
    for w in 0..16u32 {
        let db = db.clone();
        warm.push(tokio::spawn(async move {
            // Not checked here: the measured reads count wrong answers.
            for seq in 0..8 {
                let _ = luca_read(&db, kind, key(kind, u32::MAX - w, seq)).await;
            }
        }));
    }
    for t in warm {
        t.await?;
    }
    Ok(db)
}

/// What the file holds of the writes: `(writer, seq)` of every row not pre-filled.
fn written(path: &Path) -> rusqlite::Result<Vec<(i64, i64)>> {
    let conn = open_plain(path)?;
    let mut stmt = conn.prepare("SELECT writer, seq FROM items WHERE writer >= 0")?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// A row of this section: `Row::new` with the section's own workload name.
fn row(system: &str, name: &str, n: usize, d: Drive, check: Check) -> Row {
    let mut row = Row::new(system, Workload::Insert, n, d, check);
    name.clone_into(&mut row.workload);
    row
}

// ---------------------------------------------------------------------------------------
// Writers running beside the readers

/// Insert writers running until stopped (or their cap or deadline).
struct Writers {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<WriterShare>>,
    n: usize,
    t0: Instant,
}

#[derive(Default)]
struct WriterShare {
    attempted: u64,
    acked: Vec<(u32, u32)>,
    latencies: Vec<u64>,
    errors: BTreeMap<String, u64>,
    /// It reached its cap before it was stopped.
    ran_out: bool,
}

impl Writers {
    fn spawn<F, Fut>(n: usize, cap: u32, deadline: Instant, op: F) -> Writers
    where
        F: Fn(u32, u32) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let op = Arc::new(op);
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let tasks = (0..n as u32)
            .map(|w| {
                let (op, stop, done) = (Arc::clone(&op), Arc::clone(&stop), Arc::clone(&done));
                tokio::spawn(async move {
                    let mut mine = WriterShare {
                        ran_out: true,
                        ..WriterShare::default()
                    };
                    for seq in 0..cap {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            mine.ran_out = false;
                            break;
                        }
                        let t0 = Instant::now();
                        let r = op(w, seq).await;
                        mine.attempted += 1;
                        match r {
                            Ok(()) => {
                                mine.acked.push((w, seq));
                                mine.latencies
                                    .push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(0));
                            }
                            Err(kind) => *mine.errors.entry(kind).or_default() += 1,
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    mine
                })
            })
            .collect();
        Writers {
            stop,
            done,
            tasks,
            n,
            t0: Instant::now(),
        }
    }

    /// Waits (at most 10 s) until the writers have written about once each, so the
    /// readers start beside running writers.
    async fn started(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.done.load(Ordering::Relaxed) < self.n as u64 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops them; what they did, and whether one ran out of writes before the stop.
    async fn finish(self) -> (Drive, bool) {
        self.stop.store(true, Ordering::Relaxed);
        let mut d = Drive::default();
        let mut ran_out = false;
        for task in self.tasks {
            match task.await {
                Ok(mine) => {
                    d.attempted += mine.attempted;
                    d.acked.extend(mine.acked);
                    d.latencies.extend(mine.latencies);
                    for (k, n) in mine.errors {
                        *d.errors.entry(k).or_default() += n;
                    }
                    ran_out |= mine.ran_out;
                }
                Err(e) => *d.errors.entry(format!("writer task: {e}")).or_default() += 1,
            }
        }
        d.wall = self.t0.elapsed();
        d.planned = d.attempted;
        (d, ran_out)
    }
}

// ---------------------------------------------------------------------------------------
// The cells

/// One pass of one cell: the readers' (or all tasks') row, and the writers' row (with
/// writers; the mixed workload's writes).
struct Sample {
    row: Row,
    writes: Option<Row>,
}

/// The serial read ceiling: one connection, one thread, no async.
fn serial_reads(
    template: &Path,
    kind: Part,
    ops: u64,
    limit: Duration,
) -> Result<Sample, BoxError> {
    let tmp = copy_of(template)?;
    let conn = open_plain(tmp.path())?;
    for seq in 0..64 {
        let _ = read_op(&conn, kind, key(kind, u32::MAX, seq))?;
    }
    let mut d = Drive {
        planned: ops,
        latencies: Vec::with_capacity(ops as usize),
        acked: Vec::with_capacity(ops as usize),
        ..Drive::default()
    };
    let t0 = Instant::now();
    for seq in 0..ops as u32 {
        if t0.elapsed() >= limit {
            d.stopped = true;
            break;
        }
        let started = Instant::now();
        let r = flatten_plain(read_op(&conn, kind, key(kind, 0, seq)));
        d.record((0, seq), started, r);
    }
    d.wall = t0.elapsed();
    let mut row = row(SERIAL, kind.name(), 1, d, Check::default());
    row.note = "one rusqlite connection on the calling thread, no async".into();
    Ok(Sample { row, writes: None })
}

/// One read cell of luca or deadpool-sqlite (`pool`: `None` luca, `Some(None)` deadpool's
/// default size, `Some(Some(n))` n connections).
async fn read_cell(
    template: &Path,
    system: &'static str,
    kind: Part,
    readers: usize,
    with_writers: bool,
    ops: u64,
    limit: Duration,
) -> Result<Sample, BoxError> {
    let tmp = copy_of(template)?;
    let writers = if with_writers { READ_WRITERS } else { 0 };
    // Each writer may write twice the cell's reads: enough to outlast the readers (the
    // table says when one ran out), bounded all the same.
    let cap = u32::try_from(ops.saturating_mul(2)).unwrap_or(u32::MAX);
    let deadline = Instant::now() + limit + Duration::from_secs(1);
    let (d, wrote, note) = if system == LUCA {
        let db = luca_db(tmp.path(), kind).await?;
        let w_db = db.clone();
        let bg = (writers > 0).then(|| {
            Writers::spawn(writers, cap, deadline, move |w, seq| {
                let db = w_db.clone();
                async move {
                    luca_write(&db, Workload::Insert, w, seq)
                        .await
                        .map_err(|e| luca_kind(&e))
                }
            })
        });
        if let Some(bg) = &bg {
            bg.started().await;
        }
        let r_db = db.clone();
        let d = harness::drive(readers, ops, limit, move |w, seq| {
            let db = r_db.clone();
            async move { luca_read(&db, kind, key(kind, w, seq)).await }
        })
        .await;
        let wrote = match bg {
            Some(bg) => Some(bg.finish().await),
            None => None,
        };
        db.close().await?;
        let note = "Db::open defaults (reader pool: 2 × CPUs, at least 4); writers: Db::write";
        (d, wrote, note.to_owned())
    } else {
        let size = (system == DEADPOOL_PER_WRITER).then_some(readers + writers);
        let pool = deadpool_pool(tmp.path(), size).await?;
        let max_size = pool.status().max_size;
        let w_pool = pool.clone();
        let bg = (writers > 0).then(|| {
            Writers::spawn(writers, cap, deadline, move |w, seq| {
                let pool = w_pool.clone();
                async move { deadpool_insert(&pool, w, seq).await }
            })
        });
        if let Some(bg) = &bg {
            bg.started().await;
        }
        let r_pool = pool.clone();
        let d = harness::drive(readers, ops, limit, move |w, seq| {
            let pool = r_pool.clone();
            async move { deadpool_read(&pool, kind, key(kind, w, seq)).await }
        })
        .await;
        let wrote = match bg {
            Some(bg) => Some(bg.finish().await),
            None => None,
        };
        pool.close();
        let size = if size.is_some() {
            "N (readers + writers)".to_owned()
        } else {
            format!("{max_size} (default: 2 × CPUs)")
        };
        let note = format!(
            "pool of {size}, post_create hook, reads in interact; writers: BEGIN IMMEDIATE in interact, same pool"
        );
        (d, wrote, note)
    };
    let mut row = row(system, kind.name(), readers, d, Check::default());
    row.note = note;
    let writes = match wrote {
        Some((wd, ran_out)) => {
            let check = harness::check_insert(&wd.acked, &written(tmp.path())?);
            let mut w = row_from_writes(system, writers, wd, check);
            if ran_out {
                w.note = "a writer ran out of writes before the readers finished".into();
            }
            Some(w)
        }
        None => None,
    };
    Ok(Sample { row, writes })
}

fn row_from_writes(system: &str, writers: usize, d: Drive, check: Check) -> Row {
    row(system, "insert", writers, d, check)
}

/// The mixed workload's operation on a plain connection.
fn mixed_plain(c: &mut Connection, w: u32, seq: u32) -> Result<(), String> {
    if is_write(w, seq) {
        plain_op(c, TransactionBehavior::Immediate, Workload::Insert, w, seq)
            .map_err(|e| rusqlite_kind(&e))
    } else {
        flatten_plain(read_op(c, Part::Point, key(Part::Point, w, seq)))
    }
}

/// Splits a mixed drive into all operations and the writes alone.
fn split_writes(d: Drive) -> (Drive, Drive) {
    let mut writes = Drive {
        wall: d.wall,
        ..Drive::default()
    };
    for (id, ns) in d.acked.iter().zip(&d.latencies) {
        if is_write(id.0, id.1) {
            writes.acked.push(*id);
            writes.latencies.push(*ns);
        }
    }
    writes.attempted = writes.acked.len() as u64;
    writes.planned = writes.attempted;
    (d, writes)
}

/// One mixed cell: [`MIXED_TASKS`] tasks (one for the serial ceiling).
async fn mixed_cell(
    template: &Path,
    system: &'static str,
    ops: u64,
    limit: Duration,
) -> Result<Sample, BoxError> {
    let tmp = copy_of(template)?;
    let (d, tasks, note) = if system == SERIAL {
        let mut conn = open_plain(tmp.path())?;
        let mut d = Drive {
            planned: ops,
            ..Drive::default()
        };
        let t0 = Instant::now();
        for seq in 0..ops as u32 {
            if t0.elapsed() >= limit {
                d.stopped = true;
                break;
            }
            let started = Instant::now();
            let r = mixed_plain(&mut conn, 0, seq);
            d.record((0, seq), started, r);
        }
        d.wall = t0.elapsed();
        let note = "one connection on the calling thread; writes in BEGIN IMMEDIATE";
        (d, 1, note.to_owned())
    } else if system == LUCA {
        let db = luca_db(tmp.path(), Part::Point).await?;
        let op_db = db.clone();
        let d = harness::drive(MIXED_TASKS, ops, limit, move |w, seq| {
            let db = op_db.clone();
            async move {
                if is_write(w, seq) {
                    luca_write(&db, Workload::Insert, w, seq)
                        .await
                        .map_err(|e| luca_kind(&e))
                } else {
                    luca_read(&db, Part::Point, key(Part::Point, w, seq)).await
                }
            }
        })
        .await;
        db.close().await?;
        (d, MIXED_TASKS, "Db::open defaults".to_owned())
    } else {
        let size = (system == DEADPOOL_PER_WRITER).then_some(MIXED_TASKS);
        let pool = deadpool_pool(tmp.path(), size).await?;
        let max_size = pool.status().max_size;
        let op_pool = pool.clone();
        let d = harness::drive(MIXED_TASKS, ops, limit, move |w, seq| {
            let pool = op_pool.clone();
            async move {
                let conn = pool.get().await.map_err(|e| deadpool_pool_error(&e))?;
                conn.interact(move |c| mixed_plain(c, w, seq))
                    .await
                    .map_err(|e| format!("interact: {e}"))?
            }
        })
        .await;
        pool.close();
        let note = format!("pool of {max_size}; writes in BEGIN IMMEDIATE, all in interact");
        (d, MIXED_TASKS, note)
    };
    let (all, writes) = split_writes(d);
    let check = harness::check_insert(&writes.acked, &written(tmp.path())?);
    let mut row = row(system, "mixed", tasks, all, check);
    row.note = note;
    let writes = row_from_writes(system, tasks, writes, check);
    Ok(Sample {
        row,
        writes: Some(writes),
    })
}

// ---------------------------------------------------------------------------------------
// Reads never wait on writes

/// The outcome of the "reads never wait on writes" check.
#[derive(Default)]
pub(crate) struct NoWait {
    /// Reads finished (of [`NO_WAIT_READS`]) while the write was held.
    finished: usize,
    /// All of them within [`NO_WAIT_TIMEOUT`].
    in_time: bool,
    /// Reads that saw something other than the last committed state.
    stale: usize,
    errors: BTreeMap<String, u64>,
    /// The write was still held when the last read finished.
    held: bool,
    /// After the release, a read saw the held write's change (so it was real).
    then_seen: bool,
    elapsed: Duration,
    p99_ns: u64,
}

impl NoWait {
    fn pass(&self) -> bool {
        self.finished == NO_WAIT_READS
            && self.in_time
            && self.stale == 0
            && self.errors.is_empty()
            && self.held
            && self.then_seen
    }
}

async fn no_wait(template: &Path) -> Result<NoWait, BoxError> {
    let tmp = copy_of(template)?;
    let db = luca_db(tmp.path(), Part::Point).await?;
    // The last committed state the reads must see.
    db.write(|c| {
        c.execute("UPDATE counter SET n = 1 WHERE id = 1", [])?;
        Ok(())
    })
    .await?;
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let gate_db = db.clone();
    let gate = tokio::spawn(async move {
        gate_db
            .write(move |c| {
                c.execute("UPDATE counter SET n = 2 WHERE id = 1", [])?;
                let _ = entered_tx.send(());
                // Bounded: released by the check, or by its end (the sender dropped).
                let _ = release_rx.recv_timeout(Duration::from_secs(60));
                Ok(())
            })
            .await
    });
    let entered =
        tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(30)))
            .await?;
    if entered.is_err() {
        drop(release_tx);
        let _ = gate.await;
        return Err("the held write closure never ran".into());
    }
    let t0 = Instant::now();
    let per_task = NO_WAIT_READS / 16;
    let mut tasks = Vec::new();
    for w in 0..16u32 {
        let db = db.clone();
        let share = per_task + usize::from((w as usize) < NO_WAIT_READS % 16);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(share);
            for seq in 0..share as u32 {
                let k = key(Part::Point, w, seq);
                let started = Instant::now();
                let r = db
                    .read(move |c| {
                        let n: i64 = c
                            .prepare_cached(harness::READ_COUNTER)?
                            .query_row([], |r| r.get(0))?;
                        Ok((n, read_op(c, Part::Point, k)?))
                    })
                    .await;
                let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                out.push((r.map_err(|e| luca_kind(&e)), ns));
            }
            out
        }));
    }
    let joined = tokio::time::timeout(NO_WAIT_TIMEOUT, async {
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await);
        }
        all
    })
    .await;
    let mut out = NoWait {
        elapsed: t0.elapsed(),
        held: !gate.is_finished(),
        ..NoWait::default()
    };
    let _ = release_tx.send(());
    let mut latencies = Vec::new();
    match joined {
        Ok(all) => {
            out.in_time = true;
            for task in all {
                match task {
                    Ok(reads) => {
                        for (r, ns) in reads {
                            out.finished += 1;
                            latencies.push(ns);
                            match r {
                                Ok((1, Ok(()))) => {}
                                Ok((_, Ok(()))) => out.stale += 1,
                                Ok((_, Err(kind))) | Err(kind) => {
                                    *out.errors.entry(kind).or_default() += 1;
                                }
                            }
                        }
                    }
                    Err(e) => *out.errors.entry(format!("task: {e}")).or_default() += 1,
                }
            }
        }
        Err(_) => out.in_time = false,
    }
    latencies.sort_unstable();
    out.p99_ns = harness::percentile(&latencies, 0.99);
    gate.await??;
    let n: i64 = db
        .read(|c| Ok(c.query_row(harness::READ_COUNTER, [], |r| r.get(0))?))
        .await?;
    out.then_seen = n == 2;
    db.close().await?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Where the time of one `Db::read` goes (a diagnostic, reported, not a target)

/// p50 and mean in ns of one operation, one task, nothing else running.
#[derive(Clone, Copy, Default)]
struct Cost {
    p50: u64,
    mean: u64,
}

impl Cost {
    fn of(mut ns: Vec<u64>) -> Cost {
        ns.sort_unstable();
        let mean = ns.iter().sum::<u64>() / ns.len().max(1) as u64;
        Cost {
            p50: harness::percentile(&ns, 0.5),
            mean,
        }
    }
}

/// One reader, one operation at a time: a point lookup on a plain connection on this
/// thread, the same inside `tokio::task::block_in_place` from a task (no hop to another
/// thread), a bare `tokio::task::spawn_blocking` hop, `Db::read` with an empty closure,
/// and `Db::read` with the point lookup.
struct HopProbe {
    serial: Cost,
    in_place: Cost,
    spawn_blocking: Cost,
    read_empty: Cost,
    read_point: Cost,
}

fn timed(ns: &mut Vec<u64>, t0: Instant) {
    ns.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
}

async fn hop_probe(template: &Path, n: u32) -> Result<HopProbe, BoxError> {
    let tmp = copy_of(template)?;
    let conn = open_plain(tmp.path())?;
    let mut ns = Vec::with_capacity(n as usize);
    for seq in 0..n {
        let t0 = Instant::now();
        flatten_plain(read_op(&conn, Part::Point, key(Part::Point, 0, seq)))?;
        timed(&mut ns, t0);
    }
    let serial = Cost::of(std::mem::take(&mut ns));
    for seq in 0..n {
        let t0 = Instant::now();
        tokio::task::block_in_place(|| {
            flatten_plain(read_op(&conn, Part::Point, key(Part::Point, 1, seq)))
        })?;
        timed(&mut ns, t0);
        // A task boundary, as between the reads of a real task.
        tokio::task::yield_now().await;
    }
    drop(conn);
    let in_place = Cost::of(std::mem::take(&mut ns));
    for _ in 0..n {
        let t0 = Instant::now();
        tokio::task::spawn_blocking(|| ()).await?;
        timed(&mut ns, t0);
    }
    let spawn_blocking = Cost::of(std::mem::take(&mut ns));
    let db = luca_db(tmp.path(), Part::Point).await?;
    for _ in 0..n {
        let t0 = Instant::now();
        db.read(|_| Ok(())).await?;
        timed(&mut ns, t0);
    }
    let read_empty = Cost::of(std::mem::take(&mut ns));
    for seq in 0..n {
        let t0 = Instant::now();
        luca_read(&db, Part::Point, key(Part::Point, 0, seq)).await?;
        timed(&mut ns, t0);
    }
    let read_point = Cost::of(ns);
    db.close().await?;
    Ok(HopProbe {
        serial,
        in_place,
        spawn_blocking,
        read_empty,
        read_point,
    })
}

// ---------------------------------------------------------------------------------------
// The section: passes, tables, targets

/// One cell over all passes.
struct Cell {
    system: &'static str,
    part: Part,
    /// Readers (tasks of the mixed workload; 1 for the serial ceiling).
    n: usize,
    with_writers: bool,
    passes: Vec<Sample>,
}

impl Cell {
    fn rows(&self) -> impl Iterator<Item = &Row> {
        self.passes.iter().map(|s| &s.row)
    }
    fn writes(&self) -> impl Iterator<Item = &Row> {
        self.passes.iter().filter_map(|s| s.writes.as_ref())
    }
    fn ops_per_sec(&self) -> f64 {
        median(self.rows().map(Row::ops_per_sec).collect())
    }
    fn p(&self, f: fn(&Row) -> u64) -> u64 {
        median(self.rows().map(f).collect())
    }
    fn max(&self) -> u64 {
        self.rows().map(|r| r.max_ns).max().unwrap_or(0)
    }
    fn errors<'a>(rows: impl Iterator<Item = &'a Row>) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for r in rows {
            for (k, n) in &r.errors {
                *all.entry(k.clone()).or_default() += n;
            }
        }
        all
    }
}

/// What the section measured, for the targets.
pub(crate) struct Report {
    cells: Vec<Cell>,
    no_wait: Option<Result<NoWait, String>>,
    hop: Option<Result<HopProbe, String>>,
    parts: Vec<Part>,
    readers: Vec<usize>,
}

fn progress(s: &Sample, with_writers: bool, t: Duration) {
    let r = &s.row;
    let mut line = format!(
        "  {:<6} n={:<3} {:<26} {:>9.0} ops/s  p99 {:>9}  errors {:>5}",
        r.workload,
        r.writers,
        r.system,
        r.ops_per_sec(),
        fmt_ns(r.p99_ns),
        r.escaped(),
    );
    if let Some(w) = &s.writes {
        line += &format!(
            "  {} {:.0} writes/s, lost {}",
            if with_writers { "with writers:" } else { "" },
            w.ops_per_sec(),
            w.lost
        );
    }
    line += &format!("  ({:.1} s)", t.as_secs_f64());
    eprintln!("{line}");
}

fn failed(system: &str, name: &str, n: usize, ops: u64, why: &str) -> Sample {
    eprintln!("  {system} {name} n={n}: FAILED: {why}");
    let mut row = Row {
        system: system.to_owned(),
        workload: name.to_owned(),
        writers: n as u64,
        planned: ops,
        stopped: true,
        ..Row::default()
    };
    row.errors.insert(format!("cell failed: {why}"), 1);
    Sample { row, writes: None }
}

/// Runs the read section and the mixed workload (`args.reads`) over `args.passes`
/// passes, for the serial ceiling and those of `systems` that have a read row (luca
/// `Db::open`, deadpool-sqlite default and pool = N); prints their tables.
pub(crate) fn run(rt: &tokio::runtime::Runtime, args: &Args, systems: &[&'static str]) -> Report {
    let parts = args.reads.clone();
    let mut report = Report {
        cells: Vec::new(),
        no_wait: None,
        hop: None,
        parts: parts.clone(),
        readers: args.readers.clone(),
    };
    if parts.is_empty() {
        return report;
    }
    let systems: Vec<&'static str> = [LUCA, DEADPOOL, DEADPOOL_PER_WRITER]
        .into_iter()
        .filter(|s| systems.contains(s))
        .collect();
    eprintln!("\nreads: filling the template file ({FILL} rows)…");
    let template = match template() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("reads: cannot fill the template file: {e}");
            println!("\n## Reads: NOT RUN (cannot fill the template file: {e})");
            return report;
        }
    };
    let path = template.path();
    let (ops, limit) = (args.ops, args.time_limit);
    let mut record =
        |system: &'static str, part: Part, n: usize, with_writers: bool, s| match report
            .cells
            .iter_mut()
            .find(|c| {
                c.system == system && c.part == part && c.n == n && c.with_writers == with_writers
            }) {
            Some(c) => c.passes.push(s),
            None => report.cells.push(Cell {
                system,
                part,
                n,
                with_writers,
                passes: vec![s],
            }),
        };
    for pass in 1..=args.passes {
        for &part in &parts {
            match part {
                Part::Point | Part::Scan => {
                    eprintln!(
                        "\nreads pass {pass}/{}: {} ({ops} reads per cell)",
                        args.passes,
                        part.name()
                    );
                    let t = Instant::now();
                    let s = serial_reads(path, part, ops, limit)
                        .unwrap_or_else(|e| failed(SERIAL, part.name(), 1, ops, &e.to_string()));
                    progress(&s, false, t.elapsed());
                    record(SERIAL, part, 1, false, s);
                    for &n in &args.readers {
                        for with_writers in [false, true] {
                            for &system in &systems {
                                let t = Instant::now();
                                let s = rt
                                    .block_on(read_cell(
                                        path,
                                        system,
                                        part,
                                        n,
                                        with_writers,
                                        ops,
                                        limit,
                                    ))
                                    .unwrap_or_else(|e| {
                                        failed(system, part.name(), n, ops, &e.to_string())
                                    });
                                progress(&s, with_writers, t.elapsed());
                                record(system, part, n, with_writers, s);
                            }
                        }
                    }
                }
                Part::Mixed => {
                    eprintln!(
                        "\nreads pass {pass}/{}: mixed, {MIXED_TASKS} tasks ({ops} operations per cell)",
                        args.passes
                    );
                    for system in std::iter::once(SERIAL).chain(systems.iter().copied()) {
                        let t = Instant::now();
                        let n = if system == SERIAL { 1 } else { MIXED_TASKS };
                        let s = rt
                            .block_on(mixed_cell(path, system, ops, limit))
                            .unwrap_or_else(|e| failed(system, "mixed", n, ops, &e.to_string()));
                        progress(&s, false, t.elapsed());
                        record(system, part, n, false, s);
                    }
                }
                // Once, after the passes.
                Part::NoWait => {}
            }
        }
    }
    if parts.contains(&Part::NoWait) && systems.contains(&LUCA) {
        eprintln!("\nreads: reads never wait on writes (luca Db)…");
        let r = rt.block_on(no_wait(path)).map_err(|e| e.to_string());
        report.no_wait = Some(r);
    }
    if parts.contains(&Part::Point) && systems.contains(&LUCA) {
        eprintln!("reads: where the time of one Db::read goes…");
        let n = u32::try_from(args.ops.clamp(100, 20_000)).unwrap_or(20_000);
        // On a worker of the runtime, as the reads of a task run.
        let owned = path.to_path_buf();
        let probe = rt.block_on(async move {
            tokio::spawn(async move { hop_probe(&owned, n).await.map_err(|e| e.to_string()) })
                .await
                .map_err(|e| e.to_string())?
        });
        report.hop = Some(probe);
    }
    print_tables(&report, args);
    if let Some(path) = &args.tsv
        && let Err(e) = append_tsv(path, &report)
    {
        eprintln!("cannot append the read rows to {}: {e}", path.display());
    }
    report
}

fn print_tables(report: &Report, args: &Args) {
    let ceiling = |part: Part| {
        report
            .cells
            .iter()
            .find(|c| c.system == SERIAL && c.part == part)
            .map(Cell::ops_per_sec)
    };
    let reads: Vec<&Cell> = report
        .cells
        .iter()
        .filter(|c| c.part != Part::Mixed)
        .collect();
    if !reads.is_empty() {
        println!(
            "\n## Reads: {} reads per cell and pass, {} passes, a file of {FILL} rows",
            args.ops, args.passes
        );
        println!(
            "point = a lookup by primary key (random key), scan = 100 rows by primary-key range, summing\n\
             a column; every answer checked (a wrong one is an error). × C = over the serial read ceiling\n\
             of the same read; medians of the passes as in the write table; with writers: {READ_WRITERS} insert\n\
             writers run beside the readers, their ops/s and errors / lost in the last columns.\n"
        );
        println!(
            "| read | readers | system | writers | ops/s | × C | p50 | p99 | p99.9 | max | reads / planned | errors | writers' ops/s | writers' errors / lost |"
        );
        println!("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|");
        for c in reads {
            let ops = c.ops_per_sec();
            let ratio = ceiling(c.part)
                .filter(|&x| x > 0.0)
                .map_or("—".into(), |x| format!("{:.2}", ops / x));
            let n = if c.system == SERIAL {
                "1 (serial)".to_owned()
            } else {
                c.n.to_string()
            };
            let (w_ops, w_err) = if c.with_writers {
                let w: Vec<&Row> = c.writes().collect();
                let lost: u64 = w.iter().map(|r| r.lost + r.unacked).sum();
                let mut e = format!("{} / {lost}", fmt_errors(&Cell::errors(w.iter().copied())));
                if w.iter().any(|r| !r.note.is_empty()) {
                    e += " (a writer ran out of writes early)";
                }
                let ops = if w.is_empty() {
                    "—".to_owned()
                } else {
                    format!("{:.0}", median(w.iter().map(|r| r.ops_per_sec()).collect()))
                };
                (ops, e)
            } else {
                ("—".into(), "—".into())
            };
            println!(
                "| {} | {n} | {} | {} | {ops:.0} | {ratio} | {} | {} | {} | {} | {} / {} | {} | {w_ops} | {w_err} |",
                c.part.name(),
                c.system,
                if c.with_writers {
                    READ_WRITERS.to_string()
                } else {
                    "0".into()
                },
                fmt_ns(c.p(|r| r.p50_ns)),
                fmt_ns(c.p(|r| r.p99_ns)),
                fmt_ns(c.p(|r| r.p999_ns)),
                fmt_ns(c.max()),
                c.rows().map(|r| r.acked).sum::<u64>(),
                c.rows().map(|r| r.planned).sum::<u64>(),
                fmt_errors(&Cell::errors(c.rows())),
            );
        }
    }
    let mixed: Vec<&Cell> = report
        .cells
        .iter()
        .filter(|c| c.part == Part::Mixed)
        .collect();
    if !mixed.is_empty() {
        println!(
            "\n## Mixed (scraper-like): {MIXED_TASKS} tasks, 90 % point lookups / 10 % inserts, {} operations per cell and pass",
            args.ops
        );
        println!(
            "ops/s and latencies over all operations; writes/s and write p99 over the inserts alone;\n\
             lost = acknowledged inserts missing from the file (+ committed but told failure).\n"
        );
        println!(
            "| tasks | system | ops/s | × C | p50 | p99 | p99.9 | max | ops / planned | writes/s | write p99 | errors | lost |"
        );
        println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
        for c in mixed {
            let ops = c.ops_per_sec();
            let ratio = ceiling(Part::Mixed)
                .filter(|&x| x > 0.0)
                .map_or("—".into(), |x| format!("{:.2}", ops / x));
            let w: Vec<&Row> = c.writes().collect();
            let w_ops = if w.is_empty() {
                0.0
            } else {
                median(w.iter().map(|r| r.ops_per_sec()).collect())
            };
            let w_p99 = if w.is_empty() {
                0
            } else {
                median(w.iter().map(|r| r.p99_ns).collect())
            };
            let lost: u64 = c.rows().map(|r| r.lost).sum();
            let unacked: u64 = c.rows().map(|r| r.unacked).sum();
            let mut lost = lost.to_string();
            if unacked > 0 {
                lost += &format!(" (+{unacked} committed but told failure)");
            }
            println!(
                "| {} | {} | {ops:.0} | {ratio} | {} | {} | {} | {} | {} / {} | {w_ops:.0} | {} | {} | {lost} |",
                if c.system == SERIAL {
                    "1 (serial)".to_owned()
                } else {
                    c.n.to_string()
                },
                c.system,
                fmt_ns(c.p(|r| r.p50_ns)),
                fmt_ns(c.p(|r| r.p99_ns)),
                fmt_ns(c.p(|r| r.p999_ns)),
                fmt_ns(c.max()),
                c.rows().map(|r| r.acked).sum::<u64>(),
                c.rows().map(|r| r.planned).sum::<u64>(),
                fmt_ns(w_p99),
                fmt_errors(&Cell::errors(c.rows())),
            );
        }
    }
    let mut seen = Vec::new();
    let notes: Vec<String> = report
        .cells
        .iter()
        .flat_map(|c| c.rows())
        .filter(|r| !r.note.is_empty())
        .filter_map(|r| {
            let key = format!("{} {}", r.system, r.workload == "mixed");
            (!seen.contains(&key)).then(|| {
                seen.push(key);
                format!("  {} ({}): {}", r.system, r.workload, r.note)
            })
        })
        .collect();
    if !notes.is_empty() {
        println!("\nsetups (reads, mixed):");
        for n in notes {
            println!("{n}");
        }
    }
    match &report.hop {
        None => {}
        Some(Err(e)) => println!("\nDb::read cost probe FAILED: {e}"),
        Some(Ok(h)) => {
            let c = |c: Cost| format!("p50 {}, mean {}", fmt_ns(c.p50), fmt_ns(c.mean));
            println!(
                "\none read at a time, one task (p50, mean): point lookup on a plain connection: {};\n\
                 the same from a task in block_in_place (no hop): {};\n\
                 bare tokio spawn_blocking hop: {}; Db::read(|_| Ok(())): {};\n\
                 Db::read with the point lookup: {}",
                c(h.serial),
                c(h.in_place),
                c(h.spawn_blocking),
                c(h.read_empty),
                c(h.read_point),
            );
        }
    }
    match &report.no_wait {
        None => {}
        Some(Err(e)) => println!("\nreads never wait on writes: the check FAILED to run: {e}"),
        Some(Ok(w)) => println!(
            "\nreads never wait on writes: with a luca write closure held open (write lock taken, an\n\
             uncommitted change made), {} of {NO_WAIT_READS} reads through Db::read finished in {:.1} ms \
             (bound {} s{}), p99 {}; {} saw other than the last committed state; errors {}; the write was \
             {}held throughout; after its release a read {} its change",
            w.finished,
            w.elapsed.as_secs_f64() * 1e3,
            NO_WAIT_TIMEOUT.as_secs(),
            if w.in_time { "" } else { ", EXCEEDED" },
            fmt_ns(w.p99_ns),
            w.stale,
            fmt_errors(&w.errors),
            if w.held { "" } else { "NOT " },
            if w.then_seen { "saw" } else { "did NOT see" },
        ),
    }
}

/// Appends every pass of every read and mixed cell to the `--tsv` file, as `row` lines:
/// `workload` is `point`, `scan` or `mixed`, `writers` the readers (tasks); a cell with
/// writers beside its readers says so in `system`, and its writers get a line of their
/// own (`workload` `insert`, system `… (writers beside … readers)`).
fn append_tsv(path: &Path, report: &Report) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = String::new();
    for c in &report.cells {
        for s in &c.passes {
            let mut r = s.row.clone();
            if c.with_writers {
                r.system += &format!(" + {READ_WRITERS} writers");
            }
            out += &(r.to_line() + "\n");
            if let (true, Some(w)) = (c.with_writers, &s.writes) {
                let mut w = w.clone();
                w.system += &format!(" (writers beside {} {} readers)", c.n, c.part.name());
                out += &(w.to_line() + "\n");
            }
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(out.as_bytes())
}

/// Prints one target line: PASS / MISS, or SKIP when its cells were not run.
fn target(verdicts: &mut Vec<bool>, name: &str, holds: Option<(bool, String)>) {
    match holds {
        Some((ok, detail)) => {
            verdicts.push(ok);
            println!("{:<4}  {name}: {detail}", if ok { "PASS" } else { "MISS" });
        }
        None => println!("SKIP  {name}: its cells were not run"),
    }
}

/// The read targets of issue 13, and the read p99 alone vs with writers (reported).
pub(crate) fn targets(report: &Report, verdicts: &mut Vec<bool>) {
    if report.parts.is_empty() {
        return;
    }
    println!("\nread targets (16 readers, point lookups; ratios within this run):");
    let find = |system: &str, part: Part, n: usize, with_writers: bool| {
        report.cells.iter().find(|c| {
            c.system == system && c.part == part && c.n == n && c.with_writers == with_writers
        })
    };
    let luca16 = find(LUCA, Part::Point, 16, false);
    let dp16 = find(DEADPOOL, Part::Point, 16, false);
    target(
        verdicts,
        "luca Db::read point lookups at 16 readers ≥ 1.5 × deadpool-sqlite (default pool)",
        luca16.zip(dp16).map(|(l, d)| {
            let x = l.ops_per_sec() / d.ops_per_sec().max(1e-9);
            let clean = Cell::errors(l.rows()).is_empty();
            let mut detail = format!(
                "{x:.2} × ({:.0} vs {:.0} reads/s)",
                l.ops_per_sec(),
                d.ops_per_sec()
            );
            if !clean {
                detail += "; but luca's reads had errors";
            }
            (x >= 1.5 && clean, detail)
        }),
    );
    let ran = report.parts.contains(&Part::NoWait);
    target(
        verdicts,
        "reads never wait on writes (Db::read while a write closure is held open)",
        report.no_wait.as_ref().filter(|_| ran).map(|r| match r {
            Ok(w) => (
                w.pass(),
                format!(
                    "{} / {NO_WAIT_READS} reads in {:.1} ms, {} stale, held throughout: {}",
                    w.finished,
                    w.elapsed.as_secs_f64() * 1e3,
                    w.stale,
                    w.held
                ),
            ),
            Err(e) => (false, format!("the check failed: {e}")),
        }),
    );
    for part in [Part::Point, Part::Scan] {
        for &n in &report.readers {
            if let (Some(a), Some(w)) = (find(LUCA, part, n, false), find(LUCA, part, n, true)) {
                println!(
                    "info  {LUCA} {} read p99 at {n} readers: {} alone, {} with {READ_WRITERS} writers",
                    part.name(),
                    fmt_ns(a.p(|r| r.p99_ns)),
                    fmt_ns(w.p(|r| r.p99_ns)),
                );
            }
        }
    }
}

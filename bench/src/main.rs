//! The `Db` write-path benchmark (issues 3 and 13): one program, one run, one table.
//!
//! Two workloads, `insert` (one row per transaction) and `rmw` (`SELECT` a counter,
//! `UPDATE` it to the value read + 1, in one transaction), at N concurrent async writers
//! (tokio tasks), each cell on a fresh database file, against:
//!
//! - luca `Db` as `Db::open` configures it (group commit on);
//! - luca `Db` with `.group_commit(false)`;
//! - tinystore 0.5, the closest peer (leader-based group commit, savepoints), through its
//!   async API on the same SQLite build (see `tinystore.rs`);
//! - deadpool-sqlite 0.14 with the usual `post_create` hook (busy_timeout, WAL,
//!   `synchronous=NORMAL`), every write in `BEGIN IMMEDIATE` via `interact`: once with
//!   its default pool size (2 × CPUs), once with one connection per writer (pool = N);
//! - sqlx `SqlitePool` (WAL, NORMAL, busy_timeout; `begin()`, which is DEFERRED), run as
//!   the separate `sqlx-baseline` process (sqlx cannot be built in this workspace);
//! - the serial ceiling C: one connection, one thread, the same number of single-row
//!   transactions.
//!
//! `--synchronous` adds rows at `synchronous=FULL` (marked ` [FULL]`): their own serial
//! ceiling C at FULL (their ratios are against it), luca `Db` built with
//! `.synchronous(Synchronous::Full)`, tinystore at its shipped default (FULL) and
//! deadpool-sqlite with `synchronous=FULL` in its hook; by default at 1, 16 and 64 writers
//! (`--full-writers`).
//!
//! The whole matrix runs `--passes` times (default 3); a cell reports the median of its
//! passes. Every cell is bounded by count and by time. Afterwards the file is checked: an
//! acknowledged insert whose row is missing, or an acknowledged increment missing from
//! the counter, is a lost write. It also measures peak memory with 10 000 writes queued,
//! and prints PASS/MISS/SKIP for the write targets of issue 13 (exit status 1 on a miss;
//! SKIP: the cells a target needs were not run in this run).
//!
//! Then the read section and the mixed workload of issue 13 (`reads.rs`, `--reads`):
//! `Db::read` at `--readers` concurrent readers, alone and with 16 writers running,
//! against deadpool-sqlite (default pool and pool = N) and one serial connection, for
//! point lookups and 100-row range scans on a pre-filled file; a direct check that reads
//! never wait on a held write; and a mixed workload of 64 tasks (90 % reads, 10 %
//! inserts, with the lost-write check). Its targets print PASS/MISS (SKIP when their
//! cells were not run) beside the others.
//!
//! ```text
//! bash bench/run.sh                       # builds both programs in release, runs this
//! cargo run --release -p luca-bench -- --help
//! ```

mod harness;
mod reads;
mod recorder;
mod tinystore;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use deadpool_sqlite::{Hook, HookError, PoolError, Runtime};
use luca_core::pragmas::Synchronous;
use luca_core::rusqlite::{self, Connection, TransactionBehavior, params};
use luca_core::{Db, DbStats, Error};
use luca_testkit::TempDb;

use crate::tinystore::{TINYSTORE, TINYSTORE_FULL};
use harness::{Check, Drive, Row, Workload};

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
const SERIAL: &str = "serial ceiling C";
const LUCA: &str = "luca Db (Db::open)";
const LUCA_OFF: &str = "luca Db, group commit off";
const LUCA_METRICS: &str = "luca Db + metrics (Prometheus)";
const DEADPOOL: &str = "deadpool-sqlite";
const DEADPOOL_PER_WRITER: &str = "deadpool-sqlite, pool = N";
const SQLX: &str = "sqlx SqlitePool";
/// The mark of the rows at `synchronous=FULL`; every other row runs at NORMAL.
const FULL_TAG: &str = " [FULL]";
const SERIAL_FULL: &str = "serial ceiling C [FULL]";
const LUCA_FULL: &str = "luca Db [FULL]";
const DEADPOOL_FULL: &str = "deadpool-sqlite [FULL]";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const HELP: &str = "\
luca-bench: the Db write-path benchmark

usage: luca-bench [--ops N] [--passes P] [--time-limit SECS] [--writers 1,16,64,256]
                  [--workloads insert,rmw] [--queued N] [--sqlx-bin PATH | --no-sqlx]
                  [--systems luca,luca-off,luca-metrics,tinystore,deadpool,deadpool-n,sqlx]
                  [--synchronous normal,full] [--full-writers 1,16,64] [--tsv PATH]
                  [--luca-wal-autocheckpoint PAGES] [--reads point,scan,no-wait,mixed]
                  [--readers 1,16,64]

  --ops         operations per cell and pass (default 20000)
  --passes      passes over the whole matrix (default 3); a cell reports the median of
                its passes (max: the largest; counts: the sums)
  --time-limit  seconds after which a cell starts no new operation (default 20)
  --writers     concurrent writers per cell (default 1,16,64,256)
  --workloads   which workloads (default insert,rmw)
  --queued      writes queued for the peak-memory probe (default 10000)
  --sqlx-bin    the sqlx-baseline program (default: bench/sqlx-baseline/target/release/
                sqlx-baseline; bench/run.sh builds it)
  --no-sqlx     leave the sqlx rows out
  --systems     which systems besides the serial ceiling (default: all)
  --synchronous which settings (default normal,full). At full, rows marked [FULL]: the
                serial ceiling C at FULL (the [FULL] rows' ratios are against it), luca Db
                built with .synchronous(Synchronous::Full), tinystore (its default FULL) and
                deadpool-sqlite (default pool, synchronous=FULL in its hook); the other
                systems run at normal only
  --full-writers
                the writer counts of the [FULL] rows: those of --writers that are also in
                this list (default 1,16,64, to keep the default run short: FULL cells at
                256 writers are not run unless asked for)
  --tsv         also write every row, machine-readable (one `row` line each), to PATH
  --luca-wal-autocheckpoint
                a diagnostic, not the default configuration: build the luca systems
                (group commit on and off, NORMAL and FULL; not the metrics row) with
                .wal_autocheckpoint(PAGES) (0 = no automatic checkpoints)
  --reads       which parts of the read section run after the write matrix (default: all;
                `none` for none): point lookups, range scans, the reads-never-wait-on-
                writes check, the mixed workload; --ops, --passes, --time-limit apply,
                --systems picks among luca, deadpool and deadpool-n
  --readers     concurrent readers per read cell (default 1,16,64)";

struct Args {
    ops: u64,
    passes: usize,
    time_limit: Duration,
    writers: Vec<usize>,
    workloads: Vec<Workload>,
    queued: usize,
    sqlx_bin: Option<PathBuf>,
    tsv: Option<PathBuf>,
    /// `None`: every system; otherwise their short names.
    systems: Option<Vec<&'static str>>,
    /// The settings the matrix runs at: `Normal` (every system), `Full` (the `[FULL]` rows).
    synchronous: Vec<Synchronous>,
    /// Writer counts of the `[FULL]` rows (those also in `writers`).
    full_writers: Vec<usize>,
    /// A diagnostic: `wal_autocheckpoint` for the luca systems (not the metrics row)
    /// instead of the default.
    luca_autocheckpoint: Option<u32>,
    /// The parts of the read section (issue 13).
    reads: Vec<reads::Part>,
    readers: Vec<usize>,
}

/// The systems by their short names for `--systems`.
const SYSTEMS: [(&str, &str); 7] = [
    ("luca", LUCA),
    ("luca-off", LUCA_OFF),
    ("luca-metrics", LUCA_METRICS),
    ("tinystore", TINYSTORE),
    ("deadpool", DEADPOOL),
    ("deadpool-n", DEADPOOL_PER_WRITER),
    ("sqlx", SQLX),
];

/// The systems with rows at `synchronous=FULL`, by the same short names.
const FULL_SYSTEMS: [(&str, &str); 3] = [
    ("luca", LUCA_FULL),
    ("tinystore", TINYSTORE_FULL),
    ("deadpool", DEADPOOL_FULL),
];

/// Whether a row ran at `synchronous=FULL`.
fn is_full(system: &str) -> bool {
    system.ends_with(FULL_TAG)
}

fn sync_of(system: &str) -> Synchronous {
    if is_full(system) {
        Synchronous::Full
    } else {
        Synchronous::Normal
    }
}

fn is_serial(system: &str) -> bool {
    system == SERIAL || system == SERIAL_FULL
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ops: 20_000,
        passes: 3,
        time_limit: Duration::from_secs(20),
        writers: vec![1, 16, 64, 256],
        workloads: vec![Workload::Insert, Workload::Rmw],
        queued: 10_000,
        sqlx_bin: Some(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("sqlx-baseline/target/release/sqlx-baseline"),
        ),
        tsv: None,
        systems: None,
        synchronous: vec![Synchronous::Normal, Synchronous::Full],
        full_writers: vec![1, 16, 64],
        luca_autocheckpoint: None,
        reads: reads::Part::ALL.to_vec(),
        readers: vec![1, 16, 64],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-sqlx" {
            args.sqlx_bin = None;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n\n{HELP}"))?;
        let bad = || format!("bad value for {flag}: {value}\n\n{HELP}");
        match flag.as_str() {
            "--ops" => args.ops = value.parse().map_err(|_| bad())?,
            "--passes" => args.passes = value.parse::<usize>().map_err(|_| bad())?.max(1),
            "--time-limit" => {
                args.time_limit = Duration::from_secs_f64(value.parse().map_err(|_| bad())?);
            }
            "--writers" => {
                args.writers = value
                    .split(',')
                    .map(|n| n.trim().parse().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?;
            }
            "--full-writers" => {
                args.full_writers = value
                    .split(',')
                    .map(|n| n.trim().parse().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?;
            }
            "--synchronous" => {
                args.synchronous = value
                    .split(',')
                    .map(|s| match s.trim() {
                        "normal" => Ok(Synchronous::Normal),
                        "full" => Ok(Synchronous::Full),
                        _ => Err(bad()),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--workloads" => {
                args.workloads = value
                    .split(',')
                    .map(|w| Workload::parse(w.trim()).ok_or_else(bad))
                    .collect::<Result<_, _>>()?;
            }
            "--queued" => args.queued = value.parse().map_err(|_| bad())?,
            "--reads" => args.reads = reads::Part::parse_list(&value).ok_or_else(bad)?,
            "--readers" => {
                args.readers = value
                    .split(',')
                    .map(|n| n.trim().parse().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?;
            }
            "--sqlx-bin" => args.sqlx_bin = Some(PathBuf::from(value)),
            "--tsv" => args.tsv = Some(PathBuf::from(value)),
            "--luca-wal-autocheckpoint" => {
                args.luca_autocheckpoint = Some(value.parse().map_err(|_| bad())?);
            }
            "--systems" => {
                let names = value
                    .split(',')
                    .map(|n| {
                        SYSTEMS
                            .iter()
                            .find(|(short, _)| *short == n.trim())
                            .map(|(short, _)| *short)
                            .ok_or_else(bad)
                    })
                    .collect::<Result<_, _>>()?;
                args.systems = Some(names);
            }
            _ => return Err(format!("unknown flag {flag}\n\n{HELP}")),
        }
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------
// Files and checks

/// A connection with the settings every baseline uses: busy_timeout first, then WAL (read
/// back), then `synchronous=NORMAL`.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    configure_at(conn, Synchronous::Normal)
}

/// [`configure`] at the given `synchronous` setting.
fn configure_at(conn: &Connection, sync: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, not wal"
        )));
    }
    conn.pragma_update(None, "synchronous", sync.as_str())
}

fn open_plain(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    Ok(conn)
}

/// A fresh file with the schema of both workloads.
fn fresh_file() -> Result<TempDb, BoxError> {
    let tmp = TempDb::try_named("bench.db")?;
    open_plain(tmp.path())?.execute_batch(harness::SCHEMA)?;
    Ok(tmp)
}

/// Reads back what the file holds and compares it with what was acknowledged.
fn check_file(path: &Path, workload: Workload, d: &Drive) -> rusqlite::Result<Check> {
    let conn = open_plain(path)?;
    match workload {
        Workload::Insert => {
            let mut stmt = conn.prepare("SELECT writer, seq FROM items")?;
            let present = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(i64, i64)>>>()?;
            Ok(harness::check_insert(&d.acked, &present))
        }
        Workload::Rmw => {
            let n: i64 = conn.query_row(harness::READ_COUNTER, [], |r| r.get(0))?;
            Ok(harness::check_rmw(d.acked.len() as u64, n))
        }
    }
}

fn rusqlite_kind(e: &rusqlite::Error) -> String {
    match e.sqlite_error() {
        Some(f) => harness::sqlite_code_name(f.extended_code),
        None => format!("rusqlite: {e}"),
    }
}

fn luca_kind(e: &Error) -> String {
    if let Some(code) = e.extended_code() {
        return harness::sqlite_code_name(code);
    }
    match e {
        Error::Closed { .. } => "Closed".to_owned(),
        Error::Panicked { .. } => "Panicked".to_owned(),
        Error::Pool { .. } => "Pool".to_owned(),
        Error::TransactionEnded => "TransactionEnded".to_owned(),
        other => format!("luca: {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// The systems

/// One transaction of the workload on a plain connection (serial ceiling and deadpool).
fn plain_op(
    conn: &mut Connection,
    behavior: TransactionBehavior,
    workload: Workload,
    w: u32,
    seq: u32,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(behavior)?;
    match workload {
        Workload::Insert => {
            tx.prepare_cached(harness::INSERT)?
                .execute(params![w, seq, harness::PAYLOAD])?;
        }
        Workload::Rmw => {
            let n: i64 = tx
                .prepare_cached(harness::READ_COUNTER)?
                .query_row([], |r| r.get(0))?;
            tx.prepare_cached(harness::WRITE_COUNTER)?
                .execute([n + 1])?;
        }
    }
    tx.commit()
}

/// The serial ceiling C: one connection, one thread, one transaction per operation, at
/// `sync` (its own ceiling per setting).
fn serial(
    workload: Workload,
    ops: u64,
    limit: Duration,
    sync: Synchronous,
) -> Result<Row, BoxError> {
    let tmp = fresh_file()?;
    let mut conn = open_plain(tmp.path())?;
    configure_at(&conn, sync)?;
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
        let r = plain_op(&mut conn, TransactionBehavior::Deferred, workload, 0, seq);
        d.record((0, seq), started, r.map_err(|e| rusqlite_kind(&e)));
    }
    d.wall = t0.elapsed();
    drop(conn);
    let check = check_file(tmp.path(), workload, &d)?;
    let full = sync == Synchronous::Full;
    let mut row = Row::new(
        if full { SERIAL_FULL } else { SERIAL },
        workload,
        1,
        d,
        check,
    );
    row.note = "one rusqlite connection on the calling thread, no async".into();
    if full {
        row.note += "; synchronous=FULL";
    }
    Ok(row)
}

async fn luca_write(db: &Db, workload: Workload, w: u32, seq: u32) -> luca_core::Result<()> {
    match workload {
        Workload::Insert => {
            db.write(move |c| {
                c.prepare_cached(harness::INSERT)?
                    .execute(params![w, seq, harness::PAYLOAD])?;
                Ok(())
            })
            .await
        }
        Workload::Rmw => {
            db.write(|c| {
                let n: i64 = c
                    .prepare_cached(harness::READ_COUNTER)?
                    .query_row([], |r| r.get(0))?;
                c.prepare_cached(harness::WRITE_COUNTER)?.execute([n + 1])?;
                Ok(())
            })
            .await
        }
    }
}

async fn luca(
    workload: Workload,
    writers: usize,
    ops: u64,
    limit: Duration,
    group_commit: bool,
    autocheckpoint: Option<u32>,
    sync: Synchronous,
) -> Result<(Row, DbStats), BoxError> {
    let tmp = fresh_file()?;
    let full = sync == Synchronous::Full;
    let db = if group_commit && autocheckpoint.is_none() && !full {
        Db::open(tmp.path()).await?
    } else {
        let mut builder = Db::builder(tmp.path()).group_commit(group_commit);
        if full {
            builder = builder.synchronous(Synchronous::Full);
        }
        if let Some(pages) = autocheckpoint {
            builder = builder.wal_autocheckpoint(pages);
        }
        builder.build().await?
    };
    let op_db = db.clone();
    let d = harness::drive(writers, ops, limit, move |w, seq| {
        let db = op_db.clone();
        async move {
            luca_write(&db, workload, w, seq)
                .await
                .map_err(|e| luca_kind(&e))
        }
    })
    .await;
    let stats = db.stats();
    // The setting really was the writer's (SQLite's numbers: 1 NORMAL, 2 FULL); asked
    // after the figures above were taken.
    let level: i64 = db
        .write(|c| Ok(c.pragma_query_value(None, "synchronous", |r| r.get(0))?))
        .await?;
    let want = if full { 2 } else { 1 };
    if level != want {
        return Err(format!(
            "luca's writer runs at synchronous={level}, not {want} ({})",
            sync.as_str()
        )
        .into());
    }
    db.close().await?;
    let check = check_file(tmp.path(), workload, &d)?;
    let system = match (group_commit, full) {
        (_, true) => LUCA_FULL,
        (true, false) => LUCA,
        (false, false) => LUCA_OFF,
    };
    let mut row = Row::new(system, workload, writers, d, check);
    row.note = match (group_commit, full) {
        (_, true) => {
            "Db::builder(path).synchronous(Synchronous::Full), otherwise the defaults (group commit on)"
                .into()
        }
        (true, false) => "defaults: group commit on (max batch 256, no wait)".into(),
        (false, false) => "group_commit(false): one transaction per write".into(),
    };
    if let Some(pages) = autocheckpoint {
        row.note +=
            &format!("; NOT the default: wal_autocheckpoint({pages}) (--luca-wal-autocheckpoint)");
    }
    Ok((row, stats))
}

/// The Prometheus recorder of the metrics row, installed at the first such cell.
static RECORDER: std::sync::OnceLock<Result<recorder::Switch, String>> = std::sync::OnceLock::new();

/// `Db::open` as in the luca row, with luca-core's `metrics` feature reporting to a real
/// Prometheus recorder for the length of the cell.
fn luca_with_metrics(
    rt: &tokio::runtime::Runtime,
    workload: Workload,
    writers: usize,
    ops: u64,
    limit: Duration,
) -> Result<Row, BoxError> {
    let switch = RECORDER.get_or_init(recorder::install).clone()?;
    switch.set(true);
    let result = rt.block_on(luca(
        workload,
        writers,
        ops,
        limit,
        true,
        None,
        Synchronous::Normal,
    ));
    switch.set(false);
    let (mut row, stats) = result?;
    // The figures really reached the recorder.
    let text = switch.render();
    if !text.contains("luca_db_commits_total") || stats.commits == 0 {
        return Err(format!("the Prometheus recorder saw no luca_db figures:\n{text}").into());
    }
    row.system = LUCA_METRICS.to_owned();
    row.note = "Db::open; every write reported to a metrics-exporter-prometheus recorder (the other rows: the facade with no recorder on)".into();
    Ok(row)
}

fn deadpool_pool_error(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => rusqlite_kind(e),
        PoolError::Timeout(t) => format!("pool timeout ({t:?})"),
        PoolError::Closed => "pool closed".into(),
        other => format!("pool: {other}"),
    }
}

/// deadpool-sqlite with its default pool size (`per_writer` false) or one connection per
/// writer, at `sync`.
async fn deadpool(
    workload: Workload,
    writers: usize,
    ops: u64,
    limit: Duration,
    per_writer: bool,
    sync: Synchronous,
) -> Result<Row, BoxError> {
    let tmp = fresh_file()?;
    let mut builder = deadpool_sqlite::Config::new(tmp.path()).builder(Runtime::Tokio1)?;
    if per_writer {
        builder = builder.max_size(writers);
    }
    let pool = builder
        .post_create(Hook::async_fn(move |conn, _| {
            Box::pin(async move {
                conn.interact(move |c| configure_at(c, sync))
                    .await
                    .map_err(|e| HookError::message(e.to_string()))?
                    .map_err(HookError::Backend)
            })
        }))
        .build()?;
    let max_size = pool.status().max_size;
    // Open every pooled connection before the clock starts.
    let mut warm = Vec::with_capacity(max_size);
    for _ in 0..max_size {
        warm.push(pool.get().await?);
    }
    drop(warm);

    let op_pool = pool.clone();
    let d = harness::drive(writers, ops, limit, move |w, seq| {
        let pool = op_pool.clone();
        async move {
            let conn = pool.get().await.map_err(|e| deadpool_pool_error(&e))?;
            conn.interact(move |c| plain_op(c, TransactionBehavior::Immediate, workload, w, seq))
                .await
                .map_err(|e| format!("interact: {e}"))?
                .map_err(|e| rusqlite_kind(&e))
        }
    })
    .await;
    pool.close();
    let check = check_file(tmp.path(), workload, &d)?;
    let full = sync == Synchronous::Full;
    let (system, size) = match (per_writer, full) {
        (true, _) => (DEADPOOL_PER_WRITER, "N".to_owned()),
        (false, false) => (DEADPOOL, format!("{max_size} (default: 2 × CPUs)")),
        (false, true) => (DEADPOOL_FULL, format!("{max_size} (default: 2 × CPUs)")),
    };
    let mut row = Row::new(system, workload, writers, d, check);
    row.note = format!("pool of {size}, post_create hook, BEGIN IMMEDIATE in interact");
    if full {
        row.note += "; synchronous=FULL in the hook";
    }
    Ok(row)
}

/// Runs one cell of the sqlx baseline in its own process and reads its row.
fn sqlx(
    bin: &Path,
    workload: Workload,
    writers: usize,
    ops: u64,
    limit: Duration,
) -> Result<Row, BoxError> {
    let out = std::process::Command::new(bin)
        .args(["--workload", workload.name()])
        .args(["--writers", &writers.to_string()])
        .args(["--ops", &ops.to_string()])
        .args(["--time-limit", &limit.as_secs_f64().to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} exited with {}: {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    stdout
        .lines()
        .find_map(Row::from_line)
        .ok_or_else(|| format!("{} printed no row: {stdout}", bin.display()).into())
}

// ---------------------------------------------------------------------------------------
// Peak memory with writes queued

/// `VmHWM` (peak resident set) or `VmRSS` of this process, in KiB.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// The 1-minute load average: how busy the shared machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

struct MemoryProbe {
    queued: usize,
    hwm_start_kib: u64,
    hwm_queued_kib: u64,
    rss_queued_kib: u64,
    hwm_end_kib: u64,
    committed: usize,
    rows: i64,
    max_queue_depth: usize,
}

/// Holds the writer inside a write, queues `queued` more writes (one spawned task each),
/// reads the peak resident set, then lets them all commit.
async fn memory_probe(queued: usize) -> Result<MemoryProbe, BoxError> {
    let hwm_start_kib = proc_status_kib("VmHWM").unwrap_or(0);
    let tmp = fresh_file()?;
    // Room for every probe write (plus the gate) in the bounded queue.
    let db = Db::builder(tmp.path())
        .max_queue(queued + 1)
        .build()
        .await?;
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let gate_db = db.clone();
    let gate = tokio::spawn(async move {
        gate_db
            .write(move |_| {
                let _ = entered_tx.send(());
                let _ = release_rx.recv();
                Ok(())
            })
            .await
    });
    tokio::task::spawn_blocking(move || entered_rx.recv()).await??;
    let mut tasks = Vec::with_capacity(queued);
    for i in 0..queued as u32 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            luca_write(&db, Workload::Insert, 0, i).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.stats().queue_depth < queued && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let max_queue_depth = db.stats().queue_depth;
    let hwm_queued_kib = proc_status_kib("VmHWM").unwrap_or(0);
    let rss_queued_kib = proc_status_kib("VmRSS").unwrap_or(0);
    release_tx.send(())?;
    gate.await??;
    let mut committed = 0;
    for t in tasks {
        if t.await?.is_ok() {
            committed += 1;
        }
    }
    db.close().await?;
    let hwm_end_kib = proc_status_kib("VmHWM").unwrap_or(0);
    let rows = open_plain(tmp.path())?.query_row("SELECT count(*) FROM items", [], |r| r.get(0))?;
    Ok(MemoryProbe {
        queued,
        hwm_start_kib,
        hwm_queued_kib,
        rss_queued_kib,
        hwm_end_kib,
        committed,
        rows,
        max_queue_depth,
    })
}

// ---------------------------------------------------------------------------------------
// Cells, passes and output

/// One cell of the table: a system at one workload and N, over all passes.
struct Cell {
    system: &'static str,
    workload: Workload,
    writers: usize,
    passes: Vec<Row>,
}

/// The lower median (the middle value of an odd count).
fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[(v.len() - 1) / 2]
}

impl Cell {
    fn ops_per_sec(&self) -> f64 {
        median(self.passes.iter().map(Row::ops_per_sec).collect())
    }
    fn p50(&self) -> u64 {
        median(self.passes.iter().map(|r| r.p50_ns).collect())
    }
    fn p99(&self) -> u64 {
        median(self.passes.iter().map(|r| r.p99_ns).collect())
    }
    fn p999(&self) -> u64 {
        median(self.passes.iter().map(|r| r.p999_ns).collect())
    }
    fn max(&self) -> u64 {
        self.passes.iter().map(|r| r.max_ns).max().unwrap_or(0)
    }
    fn sum(&self, f: impl Fn(&Row) -> u64) -> u64 {
        self.passes.iter().map(f).sum()
    }
    fn errors(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for r in &self.passes {
            for (k, n) in &r.errors {
                *all.entry(k.clone()).or_default() += n;
            }
        }
        all
    }
    fn stopped(&self) -> usize {
        self.passes.iter().filter(|r| r.stopped).count()
    }
    /// Complete, nothing escaped, nothing lost, nothing committed behind a caller's back.
    fn clean(&self) -> bool {
        self.passes
            .iter()
            .all(|r| r.escaped() == 0 && r.lost == 0 && r.unacked == 0 && !r.stopped)
    }
}

fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e6 {
        format!("{:.0} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn fmt_errors(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "0".into();
    }
    let total: u64 = errors.values().sum();
    let kinds = errors
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{total}: {kinds}")
}

/// `ceiling(workload, full)`: the serial ceiling C of the workload at NORMAL or at FULL.
fn print_table(cells: &[Cell], ceiling: impl Fn(Workload, bool) -> Option<f64>) {
    println!(
        "| workload | N | system | ops/s | × C | p50 | p99 | p99.9 | max | acked / ops | escaped errors | lost |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for cell in cells {
        let ops = cell.ops_per_sec();
        let ratio = match ceiling(cell.workload, is_full(cell.system)) {
            Some(c) if c > 0.0 => format!("{:.2}", ops / c),
            _ => "—".into(),
        };
        let n = if is_serial(cell.system) {
            "1 (serial)".to_owned()
        } else {
            cell.writers.to_string()
        };
        let mut acked = format!("{} / {}", cell.sum(|r| r.acked), cell.sum(|r| r.planned));
        if cell.stopped() > 0 {
            acked += &format!(
                " (time limit in {} of {} passes)",
                cell.stopped(),
                cell.passes.len()
            );
        }
        let unacked = cell.sum(|r| r.unacked);
        let mut lost = cell.sum(|r| r.lost).to_string();
        if unacked > 0 {
            lost += &format!(" (+{unacked} committed but told failure)");
        }
        println!(
            "| {} | {n} | {} | {ops:.0} | {ratio} | {} | {} | {} | {} | {acked} | {} | {lost} |",
            cell.workload.name(),
            cell.system,
            fmt_ns(cell.p50()),
            fmt_ns(cell.p99()),
            fmt_ns(cell.p999()),
            fmt_ns(cell.max()),
            fmt_errors(&cell.errors()),
        );
    }
}

/// Prints one target line; `None` (SKIP) when the cells it needs were not run.
fn target(verdicts: &mut Vec<bool>, name: &str, holds: Option<(bool, String)>) {
    match holds {
        Some((ok, detail)) => {
            verdicts.push(ok);
            println!("{:<4}  {name}: {detail}", if ok { "PASS" } else { "MISS" });
        }
        None => println!("SKIP  {name}: its cells were not run in this run"),
    }
}

fn failed_row(system: &str, workload: Workload, writers: usize, ops: u64, why: &str) -> Row {
    eprintln!("  {system} {} N={writers}: FAILED: {why}", workload.name());
    let mut row = Row {
        system: system.to_owned(),
        workload: workload.name().to_owned(),
        writers: writers as u64,
        planned: ops,
        stopped: true,
        ..Row::default()
    };
    row.errors.insert(format!("cell failed: {why}"), 1);
    row
}

fn progress(r: &Row, elapsed: Duration) {
    eprintln!(
        "  {:<6} N={:<3} {:<26} {:>9.0} ops/s  p99.9 {:>9}  escaped {:>6}  lost {}  ({:.1} s{})",
        r.workload,
        r.writers,
        r.system,
        r.ops_per_sec(),
        fmt_ns(r.p999_ns),
        r.escaped(),
        r.lost,
        elapsed.as_secs_f64(),
        if r.stopped {
            ", stopped by the time limit"
        } else {
            ""
        },
    );
}

/// Runs one pass of one cell.
fn run_cell(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    sqlx_bin: Option<&Path>,
    system: &'static str,
    workload: Workload,
    n: usize,
    luca_stats: &mut Vec<LucaStats>,
) -> Row {
    let (ops, limit) = (args.ops, args.time_limit);
    let sync = sync_of(system);
    let t = Instant::now();
    let result = match system {
        SERIAL | SERIAL_FULL => serial(workload, ops, limit, sync),
        LUCA | LUCA_OFF | LUCA_FULL => rt
            .block_on(luca(
                workload,
                n,
                ops,
                limit,
                system != LUCA_OFF,
                args.luca_autocheckpoint,
                sync,
            ))
            .map(|(row, stats)| {
                if system != LUCA_OFF {
                    luca_stats.push(LucaStats {
                        system,
                        workload,
                        writers: n,
                        stats,
                    });
                }
                row
            }),
        LUCA_METRICS => luca_with_metrics(rt, workload, n, ops, limit),
        TINYSTORE | TINYSTORE_FULL => {
            rt.block_on(crate::tinystore::run(workload, n, ops, limit, sync))
        }
        DEADPOOL | DEADPOOL_PER_WRITER | DEADPOOL_FULL => rt.block_on(deadpool(
            workload,
            n,
            ops,
            limit,
            system == DEADPOOL_PER_WRITER,
            sync,
        )),
        _ => match sqlx_bin {
            Some(bin) => sqlx(bin, workload, n, ops, limit),
            None => Err("no sqlx-baseline program".into()),
        },
    };
    let row = result.unwrap_or_else(|e| failed_row(system, workload, n, ops, &e.to_string()));
    progress(&row, t.elapsed());
    row
}

/// What `db.stats()` said after one pass of a luca cell with group commit on.
struct LucaStats {
    system: &'static str,
    workload: Workload,
    writers: usize,
    stats: DbStats,
}

/// Checkpoints (background + the writer's own) per 20 000 acknowledged writes, over the
/// passes of one luca cell; `None` when it has none.
fn checkpoints_per_20k(runs: &[&DbStats]) -> Option<f64> {
    let writes: u64 = runs.iter().map(|s| s.writes_ok).sum();
    let checkpoints: u64 = runs
        .iter()
        .map(|s| s.checkpoints + s.inline_checkpoints)
        .sum();
    (writes > 0).then(|| checkpoints as f64 * 20_000.0 / writes as f64)
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let run_start = Instant::now();
    let load_start = load_average();

    // First, while the process is still small: peak memory with writes queued.
    eprintln!("peak memory with {} writes queued…", args.queued);
    let memory = rt.block_on(memory_probe(args.queued));

    let sqlx_bin = args.sqlx_bin.as_deref().filter(|p| {
        let found = p.is_file();
        if !found {
            eprintln!(
                "sqlx-baseline not found at {} (bench/run.sh builds it): no sqlx rows",
                p.display()
            );
        }
        found
    });
    let chosen = |short: &str| args.systems.as_ref().is_none_or(|s| s.contains(&short));
    let systems: Vec<&'static str> = SYSTEMS
        .iter()
        .filter(|(short, _)| chosen(short))
        .map(|(_, name)| *name)
        .filter(|name| *name != SQLX || sqlx_bin.is_some())
        .collect();
    let full_systems: Vec<&'static str> = FULL_SYSTEMS
        .iter()
        .filter(|(short, _)| chosen(short))
        .map(|(_, name)| *name)
        .collect();
    let full_writers: Vec<usize> = args
        .writers
        .iter()
        .copied()
        .filter(|n| args.full_writers.contains(n))
        .collect();

    // Warm-up, not recorded: page cache, CPU frequency, allocator.
    let _ = serial(
        Workload::Insert,
        args.ops.min(5_000),
        args.time_limit,
        Synchronous::Normal,
    );

    let mut cells: Vec<Cell> = Vec::new();
    let mut record =
        |system: &'static str, workload: Workload, writers: usize, row: Row| match cells
            .iter_mut()
            .find(|c| c.system == system && c.workload == workload && c.writers == writers)
        {
            Some(cell) => cell.passes.push(row),
            None => cells.push(Cell {
                system,
                workload,
                writers,
                passes: vec![row],
            }),
        };
    let mut luca_stats = Vec::new();
    for pass in 1..=args.passes {
        for &workload in &args.workloads {
            for &sync in &args.synchronous {
                let full = sync == Synchronous::Full;
                let (serial_name, systems, writers) = if full {
                    (SERIAL_FULL, &full_systems, &full_writers)
                } else {
                    (SERIAL, &systems, &args.writers)
                };
                eprintln!(
                    "\npass {pass}/{}: {} at synchronous={} ({} operations per cell)",
                    args.passes,
                    workload.name(),
                    sync.as_str(),
                    args.ops
                );
                let row = run_cell(
                    &rt,
                    &args,
                    sqlx_bin,
                    serial_name,
                    workload,
                    1,
                    &mut luca_stats,
                );
                record(serial_name, workload, 1, row);
                for &n in writers {
                    for &system in systems {
                        let row =
                            run_cell(&rt, &args, sqlx_bin, system, workload, n, &mut luca_stats);
                        record(system, workload, n, row);
                    }
                }
            }
        }
    }

    let find = |system: &str, workload: Workload, writers: usize| {
        cells.iter().find(|c| {
            c.system == system
                && c.workload == workload
                && (is_serial(system) || c.writers == writers)
        })
    };
    let ceiling = |w: Workload, full: bool| {
        find(if full { SERIAL_FULL } else { SERIAL }, w, 1).map(Cell::ops_per_sec)
    };

    println!(
        "\n## Db write path: {} operations per cell and pass, {} passes",
        args.ops, args.passes
    );
    println!(
        "ops/s = acknowledged operations / wall time; × C = over the serial ceiling of the same workload\n\
         and setting (rows marked [FULL] ran at synchronous=FULL, against C at FULL; the others at NORMAL);\n\
         latency = call to acknowledged commit (acknowledged operations only);\n\
         ops/s, p50, p99, p99.9 = median of the passes; max = largest of the passes;\n\
         acked / ops, escaped errors (returned to the caller, by kind), lost (acknowledged but not\n\
         in the file) = sums over the passes.\n"
    );
    print_table(&cells, ceiling);
    if let Some(path) = &args.tsv {
        let lines: String = cells
            .iter()
            .flat_map(|c| &c.passes)
            .map(|r| r.to_line() + "\n")
            .collect();
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }

    println!("\nsetups:");
    let mut seen = Vec::new();
    for r in cells.iter().flat_map(|c| &c.passes) {
        if !r.note.is_empty() && !seen.contains(&r.system) {
            seen.push(r.system.clone());
            println!("  {}: {}", r.system, r.note);
        }
    }
    println!(
        "  every system: WAL, busy_timeout {} s (tinystore: its own 5 s), a fresh file per cell and pass;\n  \
         synchronous=NORMAL, except the rows marked [FULL] (synchronous=FULL)",
        BUSY_TIMEOUT.as_secs()
    );
    if cells
        .iter()
        .any(|c| c.system == TINYSTORE || c.system == TINYSTORE_FULL)
    {
        println!(
            "  tinystore: the same rusqlite / libsqlite3-sys build as every other row; SQLite has started\n  \
             before its first store opens, so it keeps SQLite's own mutexes (it installs spinning ones\n  \
             only in a process where it starts SQLite first)"
        );
    }
    if sqlx_bin.is_none() {
        println!(
            "  {SQLX}: NOT RUN in this run (no sqlx-baseline program; bench/run.sh builds it)"
        );
    }

    if !luca_stats.is_empty() {
        println!("\nluca Db, group commit as db.stats() saw it (sums and maxima over the passes):");
        println!(
            "| system | workload | N | commits | writes / commit | inline writes | largest group | max queue depth | checkpoints (background + writer) per pass | checkpoints per 20 000 writes |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &workload in &args.workloads {
            for system in [LUCA, LUCA_FULL] {
                for &n in &args.writers {
                    let runs: Vec<&DbStats> = luca_stats
                        .iter()
                        .filter(|s| s.system == system && s.workload == workload && s.writers == n)
                        .map(|s| &s.stats)
                        .collect();
                    if runs.is_empty() {
                        continue;
                    }
                    let commits: u64 = runs.iter().map(|s| s.commits).sum();
                    let writes: u64 = runs.iter().map(|s| s.writes_ok).sum();
                    let passes = runs.len() as f64;
                    let background: u64 = runs.iter().map(|s| s.checkpoints).sum();
                    let inline: u64 = runs.iter().map(|s| s.inline_checkpoints).sum();
                    println!(
                        "| {system} | {} | {n} | {commits} | {:.1} | {} | {} | {} | {:.0} + {:.0} | {:.0} |",
                        workload.name(),
                        writes as f64 / commits.max(1) as f64,
                        runs.iter().map(|s| s.inline_writes).sum::<u64>(),
                        runs.iter().map(|s| s.group_sizes.max).max().unwrap_or(0),
                        runs.iter().map(|s| s.max_queue_depth).max().unwrap_or(0),
                        background as f64 / passes,
                        inline as f64 / passes,
                        checkpoints_per_20k(&runs).unwrap_or(0.0),
                    );
                }
            }
        }
    }

    let read_report = reads::run(&rt, &args, &systems);

    println!();
    let memory = match memory {
        Ok(m) => {
            println!(
                "peak memory, {} writes queued behind a held writer (queue depth seen {}):\n  \
                 VmHWM {:.1} MiB at start, {:.1} MiB with all queued (VmRSS {:.1} MiB), \
                 {:.1} MiB after they committed; {} acknowledged, {} rows in the file",
                m.queued,
                m.max_queue_depth,
                m.hwm_start_kib as f64 / 1024.0,
                m.hwm_queued_kib as f64 / 1024.0,
                m.rss_queued_kib as f64 / 1024.0,
                m.hwm_end_kib as f64 / 1024.0,
                m.committed,
                m.rows,
            );
            Some(m)
        }
        Err(e) => {
            println!("peak memory probe FAILED: {e}");
            None
        }
    };

    println!(
        "\ntargets (issue 13; ratios within this run, × C against the ceiling of the same setting):"
    );
    if let Some(pages) = args.luca_autocheckpoint {
        println!(
            "(diagnostic run: luca built with wal_autocheckpoint({pages}), not as Db::open configures it)"
        );
    }
    let mut verdicts = Vec::new();
    // `system` at `n` writers over C of its setting, against a floor.
    let times_c = |system: &str, w: Workload, n: usize, floor: f64| {
        let c = ceiling(w, is_full(system))?;
        let cell = find(system, w, n)?;
        let x = cell.ops_per_sec() / c;
        let detail = format!("{x:.2} × C ({:.0} vs {c:.0} ops/s)", cell.ops_per_sec());
        Some((x >= floor, detail))
    };
    for (w, n, floor) in [
        (Workload::Insert, 1, 0.85),
        (Workload::Rmw, 1, 0.85),
        (Workload::Insert, 64, 5.0),
        (Workload::Insert, 256, 7.0),
    ] {
        target(
            &mut verdicts,
            &format!("N = {n} {}: {LUCA} ≥ {floor} × C", w.name()),
            times_c(LUCA, w, n, floor),
        );
    }
    target(
        &mut verdicts,
        &format!("N = 64 insert: {LUCA_OFF} ≥ 0.9 × C"),
        times_c(LUCA_OFF, Workload::Insert, 64, 0.9),
    );
    let on = find(LUCA, Workload::Insert, 64);
    let off = find(LUCA_OFF, Workload::Insert, 64);
    let dp = find(DEADPOOL, Workload::Insert, 64);
    let dp_n = find(DEADPOOL_PER_WRITER, Workload::Insert, 64);
    let lower = |base: &Cell, l: &Cell| base.p999() as f64 / l.p999().max(1) as f64;
    target(
        &mut verdicts,
        "N = 64 insert: luca Db p99.9 ≥ 10× lower than deadpool-sqlite's (default pool)",
        on.zip(dp).map(|(l, d)| {
            let x = lower(d, l);
            let mut detail = format!(
                "{x:.1}× lower ({} vs {})",
                fmt_ns(l.p999()),
                fmt_ns(d.p999())
            );
            if let Some(o) = off {
                detail += &format!("; group commit off: {:.1}×", lower(d, o));
            }
            if let Some(dn) = dp_n {
                detail += &format!(
                    "; against pool = N ({}): {:.1}×",
                    fmt_ns(dn.p999()),
                    lower(dn, l)
                );
            }
            (x >= 10.0, detail)
        }),
    );
    for w in [Workload::Insert, Workload::Rmw] {
        target(
            &mut verdicts,
            &format!(
                "FULL, N = 1 {}: {LUCA_FULL} × C ≥ {TINYSTORE_FULL} × C",
                w.name()
            ),
            ceiling(w, true)
                .zip(find(LUCA_FULL, w, 1).zip(find(TINYSTORE_FULL, w, 1)))
                .map(|(c, (l, t))| {
                    let (lx, tx) = (l.ops_per_sec() / c, t.ops_per_sec() / c);
                    let detail = format!(
                        "luca {lx:.2} × C vs tinystore {tx:.2} × C (C at FULL {c:.0} ops/s)"
                    );
                    (lx >= tx, detail)
                }),
        );
    }
    let full_64 = |w: Workload| {
        find(LUCA_FULL, w, 64)
            .zip(find(TINYSTORE_FULL, w, 64))
            .map(|(l, t)| {
                let x = l.ops_per_sec() / t.ops_per_sec().max(f64::MIN_POSITIVE);
                let detail = format!(
                    "{x:.2}× ({:.0} vs {:.0} ops/s)",
                    l.ops_per_sec(),
                    t.ops_per_sec()
                );
                (x >= 1.3, detail)
            })
    };
    target(
        &mut verdicts,
        &format!("FULL, N = 64 insert: {LUCA_FULL} ≥ 1.3 × {TINYSTORE_FULL}'s ops/s"),
        full_64(Workload::Insert),
    );
    if let Some((_, detail)) = full_64(Workload::Rmw) {
        println!("info  FULL, N = 64 rmw: {LUCA_FULL} / {TINYSTORE_FULL}: {detail}");
    }
    for system in [LUCA, LUCA_FULL] {
        // Per workload whose N = 1 cell ran: its checkpoints per 20 000 writes, `None`
        // when the cell failed and left no figures.
        let per_workload: Vec<(Workload, Option<f64>)> = args
            .workloads
            .iter()
            .filter(|&&w| find(system, w, 1).is_some())
            .map(|&w| {
                let runs: Vec<&DbStats> = luca_stats
                    .iter()
                    .filter(|s| s.system == system && s.workload == w && s.writers == 1)
                    .map(|s| &s.stats)
                    .collect();
                (w, checkpoints_per_20k(&runs))
            })
            .collect();
        let setting = if is_full(system) { "FULL" } else { "NORMAL" };
        target(
            &mut verdicts,
            &format!("{setting}, N = 1: luca Db checkpoints per 20 000 lone writes ≤ 50"),
            (!per_workload.is_empty()).then(|| {
                let holds = per_workload
                    .iter()
                    .all(|(_, k)| k.is_some_and(|k| k <= 50.0));
                let detail = per_workload
                    .iter()
                    .map(|(w, k)| match k {
                        Some(k) => format!("{} {k:.0}", w.name()),
                        None => format!("{} no figures (the cell failed)", w.name()),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                (
                    holds,
                    detail + " (background + writer's own, from db.stats())",
                )
            }),
        );
    }
    let luca_cells: Vec<&Cell> = cells
        .iter()
        .filter(|c| [LUCA, LUCA_OFF, LUCA_METRICS, LUCA_FULL].contains(&c.system))
        .collect();
    target(
        &mut verdicts,
        "0 escaped and 0 lost in every luca row (insert and rmw, NORMAL and FULL)",
        (!luca_cells.is_empty()).then(|| {
            let bad: Vec<String> = luca_cells
                .iter()
                .filter(|c| !c.clean())
                .map(|c| format!("{} {} N={}", c.system, c.workload.name(), c.writers))
                .collect();
            let detail = if bad.is_empty() {
                let ops: u64 = luca_cells.iter().map(|c| c.sum(|r| r.acked)).sum();
                format!(
                    "{} rows, {ops} operations, all acknowledged and in the file",
                    luca_cells.len()
                )
            } else {
                format!("failing: {}", bad.join("; "))
            };
            (bad.is_empty(), detail)
        }),
    );
    target(
        &mut verdicts,
        &format!("peak memory with {} writes queued < 64 MiB", args.queued),
        memory.map(|m| {
            let peak = m.hwm_queued_kib.max(m.hwm_end_kib) as f64 / 1024.0;
            let complete = m.committed == m.queued && m.rows == m.queued as i64;
            let mut detail = format!("VmHWM {peak:.1} MiB");
            if !complete {
                detail += &format!(", but only {} of {} writes committed", m.rows, m.queued);
            }
            (peak < 64.0 && complete, detail)
        }),
    );
    // The price of luca-core's `metrics` feature with a Prometheus recorder: reported,
    // not a target.
    let metric_rows: Vec<String> = args
        .workloads
        .iter()
        .flat_map(|&w| args.writers.iter().map(move |&n| (w, n)))
        .filter_map(|(w, n)| {
            let on = find(LUCA_METRICS, w, n)?.ops_per_sec();
            let off = find(LUCA, w, n)?.ops_per_sec();
            Some(format!("{} N={n}: {:.2}×", w.name(), on / off))
        })
        .collect();
    if !metric_rows.is_empty() {
        println!(
            "info  {LUCA_METRICS} throughput / {LUCA}: {}",
            metric_rows.join(", ")
        );
    }
    reads::targets(&read_report, &mut verdicts);
    println!(
        "\ntotal time: {:.0} s; load average (1 min) {} at the start, {} at the end",
        run_start.elapsed().as_secs_f64(),
        load_start,
        load_average()
    );
    if verdicts.iter().all(|&ok| ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

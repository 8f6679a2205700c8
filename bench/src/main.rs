//! The `Db` write-path benchmark (issue 3): one program, one run, one table.
//!
//! Two workloads, `insert` (one row per transaction) and `rmw` (`SELECT` a counter,
//! `UPDATE` it to the value read + 1, in one transaction), at N concurrent async writers
//! (tokio tasks), each cell on a fresh database file, against:
//!
//! - luca `Db` as `Db::open` configures it (group commit on);
//! - luca `Db` with `.group_commit(false)`;
//! - deadpool-sqlite 0.14 with the usual `post_create` hook (busy_timeout, WAL,
//!   `synchronous=NORMAL`), every write in `BEGIN IMMEDIATE` via `interact`: once with
//!   its default pool size (2 × CPUs), once with one connection per writer (pool = N);
//! - sqlx `SqlitePool` (WAL, NORMAL, busy_timeout; `begin()`, which is DEFERRED), run as
//!   the separate `sqlx-baseline` process (sqlx cannot be built in this workspace);
//! - the serial ceiling C: one connection, one thread, the same number of single-row
//!   transactions.
//!
//! The whole matrix runs `--passes` times (default 3); a cell reports the median of its
//! passes. Every cell is bounded by count and by time. Afterwards the file is checked: an
//! acknowledged insert whose row is missing, or an acknowledged increment missing from
//! the counter, is a lost write. It also measures peak memory with 10 000 writes queued,
//! and prints PASS/MISS for the targets of issue 3 (exit status 1 on a miss).
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use deadpool_sqlite::{Hook, HookError, PoolError, Runtime};
use luca_core::rusqlite::{self, Connection, TransactionBehavior, params};
use luca_core::{Db, DbStats, Error};
use luca_testkit::TempDb;

use harness::{Check, Drive, Row, Workload};

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
const SERIAL: &str = "serial ceiling C";
const LUCA: &str = "luca Db (Db::open)";
const LUCA_OFF: &str = "luca Db, group commit off";
const LUCA_METRICS: &str = "luca Db + metrics (Prometheus)";
const DEADPOOL: &str = "deadpool-sqlite";
const DEADPOOL_PER_WRITER: &str = "deadpool-sqlite, pool = N";
const SQLX: &str = "sqlx SqlitePool";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const HELP: &str = "\
luca-bench: the Db write-path benchmark

usage: luca-bench [--ops N] [--passes P] [--time-limit SECS] [--writers 1,16,64,256]
                  [--workloads insert,rmw] [--queued N] [--sqlx-bin PATH | --no-sqlx]
                  [--systems luca,luca-off,luca-metrics,deadpool,deadpool-n,sqlx] [--tsv PATH]
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
  --tsv         also write every row, machine-readable (one `row` line each), to PATH
  --luca-wal-autocheckpoint
                a diagnostic, not the default configuration: build both luca systems
                with .wal_autocheckpoint(PAGES) (0 = no automatic checkpoints)
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
    /// `None`: every system.
    systems: Option<Vec<&'static str>>,
    /// A diagnostic: `wal_autocheckpoint` for both luca systems instead of the default.
    luca_autocheckpoint: Option<u32>,
    /// The parts of the read section (issue 13).
    reads: Vec<reads::Part>,
    readers: Vec<usize>,
}

/// The systems by their short names for `--systems`.
const SYSTEMS: [(&str, &str); 6] = [
    ("luca", LUCA),
    ("luca-off", LUCA_OFF),
    ("luca-metrics", LUCA_METRICS),
    ("deadpool", DEADPOOL),
    ("deadpool-n", DEADPOOL_PER_WRITER),
    ("sqlx", SQLX),
];

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
                            .map(|(_, name)| *name)
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
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, not wal"
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
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

/// The serial ceiling C: one connection, one thread, one transaction per operation.
fn serial(workload: Workload, ops: u64, limit: Duration) -> Result<Row, BoxError> {
    let tmp = fresh_file()?;
    let mut conn = open_plain(tmp.path())?;
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
    let mut row = Row::new(SERIAL, workload, 1, d, check);
    row.note = "one rusqlite connection on the calling thread, no async".into();
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
) -> Result<(Row, DbStats), BoxError> {
    let tmp = fresh_file()?;
    let db = match (group_commit, autocheckpoint) {
        (true, None) => Db::open(tmp.path()).await?,
        (on, None) => Db::builder(tmp.path()).group_commit(on).build().await?,
        (on, Some(pages)) => {
            Db::builder(tmp.path())
                .group_commit(on)
                .wal_autocheckpoint(pages)
                .build()
                .await?
        }
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
    db.close().await?;
    let check = check_file(tmp.path(), workload, &d)?;
    let system = if group_commit { LUCA } else { LUCA_OFF };
    let mut row = Row::new(system, workload, writers, d, check);
    row.note = if group_commit {
        "defaults: group commit on (max batch 256, no wait)".into()
    } else {
        "group_commit(false): one transaction per write".into()
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
    let result = rt.block_on(luca(workload, writers, ops, limit, true, None));
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
/// writer.
async fn deadpool(
    workload: Workload,
    writers: usize,
    ops: u64,
    limit: Duration,
    per_writer: bool,
) -> Result<Row, BoxError> {
    let tmp = fresh_file()?;
    let mut builder = deadpool_sqlite::Config::new(tmp.path()).builder(Runtime::Tokio1)?;
    if per_writer {
        builder = builder.max_size(writers);
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
    let (system, size) = if per_writer {
        (DEADPOOL_PER_WRITER, "N".to_owned())
    } else {
        (DEADPOOL, format!("{max_size} (default: 2 × CPUs)"))
    };
    let mut row = Row::new(system, workload, writers, d, check);
    row.note = format!("pool of {size}, post_create hook, BEGIN IMMEDIATE in interact");
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

fn print_table(cells: &[Cell], ceiling: impl Fn(Workload) -> Option<f64>) {
    println!(
        "| workload | N | system | ops/s | × C | p50 | p99 | p99.9 | max | acked / ops | escaped errors | lost |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for cell in cells {
        let ops = cell.ops_per_sec();
        let ratio = match ceiling(cell.workload) {
            Some(c) if c > 0.0 => format!("{:.2}", ops / c),
            _ => "—".into(),
        };
        let n = if cell.system == SERIAL {
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

/// Prints one target line; `None` when the run has no data for it.
fn target(verdicts: &mut Vec<bool>, name: &str, holds: Option<(bool, String)>) {
    match holds {
        Some((ok, detail)) => {
            verdicts.push(ok);
            println!("{:<4}  {name}: {detail}", if ok { "PASS" } else { "MISS" });
        }
        None => println!("n/a   {name}: not measured in this run"),
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
    luca_stats: &mut Vec<(Workload, usize, DbStats)>,
) -> Row {
    let (ops, limit) = (args.ops, args.time_limit);
    let t = Instant::now();
    let result = match system {
        SERIAL => serial(workload, ops, limit),
        LUCA | LUCA_OFF => rt
            .block_on(luca(
                workload,
                n,
                ops,
                limit,
                system == LUCA,
                args.luca_autocheckpoint,
            ))
            .map(|(row, stats)| {
                if system == LUCA {
                    luca_stats.push((workload, n, stats));
                }
                row
            }),
        LUCA_METRICS => luca_with_metrics(rt, workload, n, ops, limit),
        DEADPOOL | DEADPOOL_PER_WRITER => rt.block_on(deadpool(
            workload,
            n,
            ops,
            limit,
            system == DEADPOOL_PER_WRITER,
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
    let systems: Vec<&'static str> = SYSTEMS
        .iter()
        .map(|(_, name)| *name)
        .filter(|name| args.systems.as_ref().is_none_or(|s| s.contains(name)))
        .filter(|name| *name != SQLX || sqlx_bin.is_some())
        .collect();

    // Warm-up, not recorded: page cache, CPU frequency, allocator.
    let _ = serial(Workload::Insert, args.ops.min(5_000), args.time_limit);

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
            eprintln!(
                "\npass {pass}/{}: {} ({} operations per cell)",
                args.passes,
                workload.name(),
                args.ops
            );
            let row = run_cell(&rt, &args, sqlx_bin, SERIAL, workload, 1, &mut luca_stats);
            record(SERIAL, workload, 1, row);
            for &n in &args.writers {
                for &system in &systems {
                    let row = run_cell(&rt, &args, sqlx_bin, system, workload, n, &mut luca_stats);
                    record(system, workload, n, row);
                }
            }
        }
    }

    let find = |system: &str, workload: Workload, writers: usize| {
        cells.iter().find(|c| {
            c.system == system
                && c.workload == workload
                && (system == SERIAL || c.writers == writers)
        })
    };
    let ceiling = |w: Workload| find(SERIAL, w, 1).map(Cell::ops_per_sec);

    println!(
        "\n## Db write path: {} operations per cell and pass, {} passes",
        args.ops, args.passes
    );
    println!(
        "ops/s = acknowledged operations / wall time; × C = over the serial ceiling of the same workload;\n\
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
        "  every system: WAL, synchronous=NORMAL, busy_timeout {} s, a fresh file per cell and pass",
        BUSY_TIMEOUT.as_secs()
    );
    if sqlx_bin.is_none() {
        println!(
            "  {SQLX}: NOT RUN in this run (no sqlx-baseline program; bench/run.sh builds it)"
        );
    }

    if !luca_stats.is_empty() {
        println!("\n{LUCA}, group commit as db.stats() saw it (sums and maxima over the passes):");
        println!(
            "| workload | N | commits | writes / commit | largest group | max queue depth | checkpoints (background + writer) per pass |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for &workload in &args.workloads {
            for &n in &args.writers {
                let runs: Vec<&DbStats> = luca_stats
                    .iter()
                    .filter(|(w, m, _)| *w == workload && *m == n)
                    .map(|(_, _, s)| s)
                    .collect();
                let commits: u64 = runs.iter().map(|s| s.commits).sum();
                let writes: u64 = runs.iter().map(|s| s.writes_ok).sum();
                let passes = runs.len().max(1) as f64;
                let background: u64 = runs.iter().map(|s| s.checkpoints).sum();
                let inline: u64 = runs.iter().map(|s| s.inline_checkpoints).sum();
                println!(
                    "| {} | {n} | {commits} | {:.1} | {} | {} | {:.0} + {:.0} |",
                    workload.name(),
                    writes as f64 / commits.max(1) as f64,
                    runs.iter().map(|s| s.group_sizes.max).max().unwrap_or(0),
                    runs.iter().map(|s| s.max_queue_depth).max().unwrap_or(0),
                    background as f64 / passes,
                    inline as f64 / passes,
                );
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

    println!("\ntargets (N = 64, insert; ratios within this run):");
    if let Some(pages) = args.luca_autocheckpoint {
        println!(
            "(diagnostic run: luca built with wal_autocheckpoint({pages}), not as Db::open configures it)"
        );
    }
    let mut verdicts = Vec::new();
    let c = ceiling(Workload::Insert);
    let on = find(LUCA, Workload::Insert, 64);
    let off = find(LUCA_OFF, Workload::Insert, 64);
    let dp = find(DEADPOOL, Workload::Insert, 64);
    let dp_n = find(DEADPOOL_PER_WRITER, Workload::Insert, 64);
    target(
        &mut verdicts,
        "luca Db (group commit on) ≥ 2 × C",
        c.zip(on).map(|(c, cell)| {
            let x = cell.ops_per_sec() / c;
            let detail = format!("{x:.2} × C ({:.0} vs {c:.0} ops/s)", cell.ops_per_sec());
            (x >= 2.0, detail)
        }),
    );
    target(
        &mut verdicts,
        "luca Db, group commit off ≥ 0.9 × C",
        c.zip(off).map(|(c, cell)| {
            let x = cell.ops_per_sec() / c;
            let detail = format!("{x:.2} × C ({:.0} vs {c:.0} ops/s)", cell.ops_per_sec());
            (x >= 0.9, detail)
        }),
    );
    let lower = |base: &Cell, l: &Cell| base.p999() as f64 / l.p999().max(1) as f64;
    target(
        &mut verdicts,
        "luca Db p99.9 ≥ 10× lower than deadpool-sqlite's (default pool)",
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
    let luca_cells: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.system == LUCA || c.system == LUCA_OFF || c.system == LUCA_METRICS)
        .collect();
    target(
        &mut verdicts,
        "0 escaped and 0 lost in every luca row (insert and rmw)",
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

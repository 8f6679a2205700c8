//! Success-path overhead of `#[db_retry]` against the same function written by hand.
//!
//! Each case is one function body written twice with the same signature: once plain, once
//! under `#[db_retry]` (default policy). Both are `#[inline(never)]` and are called through
//! function pointers hidden behind `std::hint::black_box`, so neither call can be folded
//! away or specialised for its call site. Cases:
//!
//! - `noop`: the body is `Ok(())`;
//! - `tiny`: a few ALU operations on a black-boxed input;
//! - `fallible`: `tiny` plus an early `return Err(…)` that is never taken — the smallest
//!   body in which the retry loop's error path survives optimisation.
//!
//!   `tiny` and `fallible` are printed but marked `info`, not held to 1.02: their bodies
//!   take 2–5 ns, where code placement alone moves the ratio by ±25 % from build to build
//!   (the same machine code for `fallible` read 0.88 in one build and 1.15–1.25 in
//!   another). Their evidence is the instruction count (see `BENCHMARKS.md`): `tiny`
//!   compiles to the same function, `fallible` to 14 instructions against the
//!   hand-written 16. The target (≤ 1.02) applies to the no-op and to the real
//!   statements, as the benchmark was specified;
//! - `sqlite: prepare_cached`: `conn.prepare_cached("SELECT ?1")?.query_row(…)` on a WAL
//!   database file (`luca_testkit::TempDb` opened with `luca_core::pragmas::open`);
//! - `sqlite: prepared`: `query_row` on a `SELECT ?1` statement prepared once (the same
//!   step without the cache lookup: the cheapest real statement, so the strictest ratio);
//! - `sqlite: prepare`: `conn.prepare("SELECT ?1")` then `query_row`, on every call;
//! - `control A/A`: `sqlite: prepare_cached` with a second hand-written copy in place of
//!   the `#[db_retry]` one. Its ratio is this run's noise floor (same work, different code
//!   placement); it does not count towards the exit status.
//!
//! Method, per case: a correctness check, calibration of the batch size (about 1 ms of
//! calls), a warm-up, then rounds of four batches in the order hand, db_retry, db_retry,
//! hand (ABBA, so a linear drift in machine speed hits both sides alike). Each side's
//! ns/call for a round is the mean of its two batches. The table shows each side's median
//! over rounds and, as `ratio`, the median over rounds of the round's `db_retry / hand`,
//! marked PASS when it is at most 1.02. The paired ratio is the verdict because on a
//! shared machine the per-round times are often bimodal (slow spells of 2× and more):
//! the two sides' medians can then land in different modes, while both sides of one
//! round see the same spell. The ratio of the medians and the ratio of the minima are
//! printed below the table as cross-checks. Every loop is bounded in count and time; the
//! whole run takes about 25 s. The process exits non-zero when a case (other than the
//! control and the `info` rows) misses the target.
//!
//! ```text
//! cargo run --release --example bench_db_retry
//! ```

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use luca_core::db_retry;
use luca_core::pragmas::{self, Pragmas};
use luca_core::rusqlite::{Connection, Statement};
use luca_examples::stats::{median, paired_ratio};
use luca_testkit::TempDb;

/// A case passes when `db_retry / hand-written` (median of per-round ratios) is at most this.
const TARGET_RATIO: f64 = 1.02;
/// Wanted duration of one batch of calls.
const BATCH_TARGET: Duration = Duration::from_millis(1);
/// Largest batch calibration may pick.
const MAX_BATCH_CALLS: u64 = 1 << 26;
/// Warm-up per case (ABBA rounds whose timings are thrown away).
const WARM_UP: Duration = Duration::from_millis(300);
const WARM_UP_MAX_ROUNDS: usize = 1_000;
/// Measured rounds per case: stop at whichever bound comes first.
const MEASURE_BUDGET: Duration = Duration::from_secs(3);
const MAX_ROUNDS: usize = 1_500;

// ---------------------------------------------------------------------------------------
// The functions under test. Each pair has the same signature and the same body.

/// `noop`, hand-written.
#[inline(never)]
fn noop_hand() -> luca_core::Result<()> {
    Ok(())
}

/// `noop` under `#[db_retry]` (default policy).
#[db_retry]
#[inline(never)]
fn noop_retry() -> luca_core::Result<()> {
    Ok(())
}

/// `tiny`, hand-written.
#[inline(never)]
fn tiny_hand(x: u64) -> luca_core::Result<u64> {
    Ok((x ^ 0x9e37_79b9_7f4a_7c15).rotate_left(17).wrapping_mul(31))
}

/// `tiny` under `#[db_retry]` (default policy).
#[db_retry]
#[inline(never)]
fn tiny_retry(x: u64) -> luca_core::Result<u64> {
    Ok((x ^ 0x9e37_79b9_7f4a_7c15).rotate_left(17).wrapping_mul(31))
}

/// `fallible`, hand-written: `tiny` with an error branch that is never taken.
#[inline(never)]
fn fallible_hand(x: u64) -> luca_core::Result<u64> {
    if x == u64::MAX {
        return Err(luca_core::rusqlite::Error::InvalidQuery.into());
    }
    Ok((x ^ 0x9e37_79b9_7f4a_7c15).rotate_left(17).wrapping_mul(31))
}

/// `fallible` under `#[db_retry]` (default policy).
#[db_retry]
#[inline(never)]
fn fallible_retry(x: u64) -> luca_core::Result<u64> {
    if x == u64::MAX {
        return Err(luca_core::rusqlite::Error::InvalidQuery.into());
    }
    Ok((x ^ 0x9e37_79b9_7f4a_7c15).rotate_left(17).wrapping_mul(31))
}

/// `cached`, hand-written: the statement comes from the connection's statement cache.
#[inline(never)]
fn cached_hand(conn: &Connection, x: i64) -> luca_core::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT ?1")?
        .query_row([x], |r| r.get(0))?)
}

/// `cached` under `#[db_retry]` (default policy).
#[db_retry]
#[inline(never)]
fn cached_retry(conn: &Connection, x: i64) -> luca_core::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT ?1")?
        .query_row([x], |r| r.get(0))?)
}

/// A second hand-written copy of `cached_hand` for the A/A control: same body, so any
/// difference between the two is noise and code placement, not `#[db_retry]`.
#[inline(never)]
fn cached_hand_copy(conn: &Connection, x: i64) -> luca_core::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT ?1")?
        .query_row([x], |r| r.get(0))?)
}

/// `stmt`, hand-written: one step of a statement prepared once.
#[inline(never)]
fn stmt_hand(stmt: &mut Statement<'_>, x: i64) -> luca_core::Result<i64> {
    Ok(stmt.query_row([x], |r| r.get(0))?)
}

/// `stmt` under `#[db_retry]` (default policy).
#[db_retry]
#[inline(never)]
fn stmt_retry(stmt: &mut Statement<'_>, x: i64) -> luca_core::Result<i64> {
    Ok(stmt.query_row([x], |r| r.get(0))?)
}

/// `prepare`, hand-written: prepare, step and finalize on every call.
#[inline(never)]
fn prepare_hand(conn: &Connection, x: i64) -> luca_core::Result<i64> {
    Ok(conn.prepare("SELECT ?1")?.query_row([x], |r| r.get(0))?)
}

/// `prepare` under `#[db_retry]` (default policy).
#[db_retry]
#[inline(never)]
fn prepare_retry(conn: &Connection, x: i64) -> luca_core::Result<i64> {
    Ok(conn.prepare("SELECT ?1")?.query_row([x], |r| r.get(0))?)
}

// ---------------------------------------------------------------------------------------
// Measurement.

/// One case's measurements.
struct Row {
    case: &'static str,
    /// An A/A control (hand-written against hand-written): shows the noise floor of this
    /// run and does not count towards the exit status.
    control: bool,
    /// A 2–5 ns body: printed with its ratio, but not held to the target (see the module
    /// docs); the target is for a no-op and for real statements.
    informative: bool,
    /// Both function pointers are the same address: the compiler merged the two functions
    /// because their machine code is identical, so the case measures the noise floor.
    merged: bool,
    batch_calls: u64,
    rounds: usize,
    hand: Vec<f64>,
    retry: Vec<f64>,
}

impl Row {
    fn hand_median(&self) -> f64 {
        median(&self.hand)
    }

    fn retry_median(&self) -> f64 {
        median(&self.retry)
    }

    /// Ratio of the two medians.
    fn median_ratio(&self) -> f64 {
        self.retry_median() / self.hand_median()
    }

    /// Ratio of the two minima.
    fn min_ratio(&self) -> f64 {
        min(&self.retry) / min(&self.hand)
    }

    /// Median over rounds of `db_retry / hand` within the same round: the verdict's
    /// statistic. Both sides of a round run within a few milliseconds of each other, so a
    /// slow spell of the machine cancels out of the round's ratio.
    fn ratio(&self) -> f64 {
        paired_ratio(&self.hand, &self.retry)
    }

    /// Marks a row as informative (see [`Row::informative`]).
    fn informative(mut self) -> Self {
        self.informative = true;
        self
    }

    fn pass(&self) -> bool {
        self.ratio() <= TARGET_RATIO
    }
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Which function of a pair a batch calls.
#[derive(Clone, Copy)]
enum Side {
    Hand,
    Retry,
}

/// Runs one batch of `calls` calls to one side and returns the elapsed time.
///
/// Cases implement this with one `#[inline(never)]` loop that takes the function pointer
/// as an argument, so both sides run the very same loop instructions and only the callee
/// differs (two copies of a loop can differ by several percent on nanosecond calls just
/// from where they are placed in the binary).
trait Batch {
    fn run(&mut self, side: Side, calls: u64) -> Duration;
}

/// One ABBA round: returns (hand ns/call, db_retry ns/call), each the mean of two batches.
fn abba(batch: &mut impl Batch, calls: u64) -> (f64, f64) {
    let a1 = batch.run(Side::Hand, calls);
    let b1 = batch.run(Side::Retry, calls);
    let b2 = batch.run(Side::Retry, calls);
    let a2 = batch.run(Side::Hand, calls);
    let per_call = |x: Duration, y: Duration| (x + y).as_nanos() as f64 / (2 * calls) as f64;
    (per_call(a1, a2), per_call(b1, b2))
}

/// Calibrates, warms up and measures one case.
fn measure(case: &'static str, merged: bool, batch: &mut impl Batch) -> Row {
    // Calibration: double the batch until one batch of each side takes BATCH_TARGET.
    let mut calls = 1;
    while calls < MAX_BATCH_CALLS {
        let slowest = batch
            .run(Side::Hand, calls)
            .max(batch.run(Side::Retry, calls));
        if slowest >= BATCH_TARGET {
            break;
        }
        calls *= 2;
    }

    let warm_up_end = Instant::now() + WARM_UP;
    for _ in 0..WARM_UP_MAX_ROUNDS {
        black_box(abba(batch, calls));
        if Instant::now() >= warm_up_end {
            break;
        }
    }

    let mut row = Row {
        case,
        control: false,
        informative: false,
        merged,
        batch_calls: calls,
        rounds: 0,
        hand: Vec::with_capacity(MAX_ROUNDS),
        retry: Vec::with_capacity(MAX_ROUNDS),
    };
    let end = Instant::now() + MEASURE_BUDGET;
    while row.rounds < MAX_ROUNDS {
        let (h, r) = abba(batch, calls);
        row.hand.push(h);
        row.retry.push(r);
        row.rounds += 1;
        if Instant::now() >= end {
            break;
        }
    }
    row
}

// ---------------------------------------------------------------------------------------
// Cases.

/// A pair of functions of type `F` and the arguments each side is called with.
struct Pair<F, A> {
    hand: F,
    retry: F,
    hand_arg: A,
    retry_arg: A,
}

impl<F: Copy, A> Pair<F, A> {
    /// The pointers go through `black_box`, so calls through them stay indirect calls.
    fn new(hand: F, retry: F, hand_arg: A, retry_arg: A) -> Self {
        Pair {
            hand: black_box(hand),
            retry: black_box(retry),
            hand_arg,
            retry_arg,
        }
    }

    fn side(&mut self, side: Side) -> (F, &mut A) {
        match side {
            Side::Hand => (self.hand, &mut self.hand_arg),
            Side::Retry => (self.retry, &mut self.retry_arg),
        }
    }
}

type NoopFn = fn() -> luca_core::Result<()>;
type U64Fn = fn(u64) -> luca_core::Result<u64>;
type StmtFn = fn(&mut Statement<'_>, i64) -> luca_core::Result<i64>;
type ConnFn = fn(&Connection, i64) -> luca_core::Result<i64>;

/// Keeps a result alive without copying it whole: a 16-byte copy of a `Result` the callee
/// just wrote with 8-byte stores stalls on store forwarding and costs more than the call.
#[inline(always)]
fn consume<T>(result: luca_core::Result<T>) {
    match result {
        Ok(v) => {
            black_box(v);
        }
        Err(e) => drop(black_box(e)),
    }
}

#[inline(never)]
fn noop_batch(f: NoopFn, calls: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..calls {
        consume(f());
    }
    start.elapsed()
}

impl Batch for Pair<NoopFn, ()> {
    fn run(&mut self, side: Side, calls: u64) -> Duration {
        noop_batch(self.side(side).0, calls)
    }
}

/// Inputs `next`, `next + 1`, … (the counter lives in the pair, one per side).
#[inline(never)]
fn u64_batch(f: U64Fn, next: &mut u64, calls: u64) -> Duration {
    let mut x = *next;
    let start = Instant::now();
    for _ in 0..calls {
        consume(f(black_box(x)));
        x = x.wrapping_add(1);
    }
    let elapsed = start.elapsed();
    *next = x;
    elapsed
}

impl Batch for Pair<U64Fn, u64> {
    fn run(&mut self, side: Side, calls: u64) -> Duration {
        let (f, next) = self.side(side);
        u64_batch(f, next, calls)
    }
}

#[inline(never)]
fn stmt_batch(f: StmtFn, stmt: &mut Statement<'_>, calls: u64) -> Duration {
    let start = Instant::now();
    for x in 0..calls {
        consume(f(stmt, black_box(x as i64)));
    }
    start.elapsed()
}

impl Batch for Pair<StmtFn, Statement<'_>> {
    fn run(&mut self, side: Side, calls: u64) -> Duration {
        let (f, stmt) = self.side(side);
        stmt_batch(f, stmt, calls)
    }
}

#[inline(never)]
fn conn_batch(f: ConnFn, conn: &Connection, calls: u64) -> Duration {
    let start = Instant::now();
    for x in 0..calls {
        consume(f(conn, black_box(x as i64)));
    }
    start.elapsed()
}

impl Batch for Pair<ConnFn, &Connection> {
    fn run(&mut self, side: Side, calls: u64) -> Duration {
        let (f, conn) = self.side(side);
        conn_batch(f, conn, calls)
    }
}

/// The compiler merged the two functions (identical machine code) into one address.
fn merged<F: Copy, A>(pair: &Pair<F, A>, addr: fn(F) -> usize) -> bool {
    addr(pair.hand) == addr(pair.retry)
}

fn case_noop() -> Result<Row, String> {
    let mut pair: Pair<NoopFn, ()> = Pair::new(noop_hand, noop_retry, (), ());
    (pair.hand)().map_err(|e| format!("noop_hand: {e}"))?;
    (pair.retry)().map_err(|e| format!("noop_retry: {e}"))?;
    let merged = merged(&pair, |f| f as usize);
    Ok(measure("noop: Ok(())", merged, &mut pair))
}

fn case_tiny() -> Result<Row, String> {
    u64_case("tiny: ALU ops on input", tiny_hand, tiny_retry).map(Row::informative)
}

fn case_fallible() -> Result<Row, String> {
    u64_case("fallible: tiny + Err branch", fallible_hand, fallible_retry).map(Row::informative)
}

/// `tiny` and `fallible`: inputs 1, 2, 3, … (never `u64::MAX`).
fn u64_case(case: &'static str, hand: U64Fn, retry: U64Fn) -> Result<Row, String> {
    let mut pair: Pair<U64Fn, u64> = Pair::new(hand, retry, 1, 1);
    let (h, r) = ((pair.hand)(12345), (pair.retry)(12345));
    match (&h, &r) {
        (Ok(h), Ok(r)) if h == r => {}
        _ => return Err(format!("outputs differ: {h:?} vs {r:?}")),
    }
    let merged = merged(&pair, |f| f as usize);
    Ok(measure(case, merged, &mut pair))
}

/// Opens the benchmark database the way luca does (WAL checked by `pragmas::open`).
fn open_wal(db: &TempDb) -> Result<Connection, String> {
    let conn = pragmas::open(db.path(), &Pragmas::new()).map_err(|e| e.to_string())?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(conn)
    } else {
        Err(format!("journal mode is {mode}, not wal"))
    }
}

/// Both outputs must be `Ok(x)`.
fn check_select(
    x: i64,
    h: &luca_core::Result<i64>,
    r: &luca_core::Result<i64>,
) -> Result<(), String> {
    match (h, r) {
        (Ok(h), Ok(r)) if *h == x && *r == x => Ok(()),
        _ => Err(format!("SELECT {x} gave {h:?} and {r:?}")),
    }
}

fn case_stmt(db: &TempDb) -> Result<Row, String> {
    let conn = open_wal(db)?;
    let prepare = || conn.prepare("SELECT ?1").map_err(|e| e.to_string());
    let mut pair: Pair<StmtFn, Statement<'_>> =
        Pair::new(stmt_hand, stmt_retry, prepare()?, prepare()?);
    for x in [0, 1, -7, i64::MAX] {
        let h = (pair.hand)(&mut pair.hand_arg, x);
        let r = (pair.retry)(&mut pair.retry_arg, x);
        check_select(x, &h, &r)?;
    }
    let merged = merged(&pair, |f| f as usize);
    Ok(measure("sqlite: prepared statement", merged, &mut pair))
}

fn case_cached(db: &TempDb) -> Result<Row, String> {
    conn_case(db, "sqlite: prepare_cached", cached_hand, cached_retry)
}

fn case_cached_control(db: &TempDb) -> Result<Row, String> {
    let mut row = conn_case(
        db,
        "control A/A: prepare_cached",
        cached_hand,
        cached_hand_copy,
    )?;
    row.control = true;
    Ok(row)
}

fn case_prepare(db: &TempDb) -> Result<Row, String> {
    conn_case(
        db,
        "sqlite: prepare every call",
        prepare_hand,
        prepare_retry,
    )
}

/// Two functions taking the same connection.
fn conn_case(db: &TempDb, case: &'static str, hand: ConnFn, retry: ConnFn) -> Result<Row, String> {
    let conn = open_wal(db)?;
    let mut pair: Pair<ConnFn, &Connection> = Pair::new(hand, retry, &conn, &conn);
    for x in [0, 1, -7, i64::MAX] {
        check_select(x, &(pair.hand)(&conn, x), &(pair.retry)(&conn, x))?;
    }
    let merged = merged(&pair, |f| f as usize);
    Ok(measure(case, merged, &mut pair))
}

// ---------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let started = Instant::now();
    let db = TempDb::named("bench_db_retry.db");
    println!(
        "#[db_retry] success-path overhead: db_retry / hand-written, target <= {TARGET_RATIO}"
    );
    println!(
        "rounds of ABBA batches of ~{} µs; ns/call = median over rounds; \
         ratio = median over rounds of (db_retry / hand) within the round",
        BATCH_TARGET.as_micros()
    );

    type Case<'a> = (&'static str, &'a dyn Fn() -> Result<Row, String>);
    let cases: [Case<'_>; 7] = [
        ("noop", &case_noop),
        ("tiny", &case_tiny),
        ("fallible", &case_fallible),
        ("cached", &|| case_cached(&db)),
        ("cached control", &|| case_cached_control(&db)),
        ("stmt", &|| case_stmt(&db)),
        ("prepare", &|| case_prepare(&db)),
    ];
    let mut rows = Vec::new();
    let mut failed = false;
    for (name, run) in cases {
        match run() {
            Ok(row) => rows.push(row),
            Err(why) => {
                failed = true;
                println!("case {name} could not run: {why}");
            }
        }
    }

    println!();
    println!(
        "| {:<28} | {:>12} | {:>16} | {:>7} | {:<7} |",
        "case", "hand ns/call", "db_retry ns/call", "ratio", "≤ 1.02"
    );
    println!(
        "|{:-<30}|{:->14}|{:->18}|{:->9}|{:-<9}|",
        "", "", "", "", ""
    );
    for row in &rows {
        println!(
            "| {:<28} | {:>12.2} | {:>16.2} | {:>7.4} | {:<7} |",
            row.case,
            row.hand_median(),
            row.retry_median(),
            row.ratio(),
            match (row.informative, row.pass()) {
                (true, _) => "info",
                (false, true) => "PASS",
                (false, false) => "MISS",
            }
        );
        failed |= !row.pass() && !row.control && !row.informative;
    }

    println!();
    println!("cross-checks (not used for PASS/MISS):");
    for row in &rows {
        println!(
            "  {:<28} {:>5} rounds × 2 × {:>7} calls | ratio of medians {:.4} | \
             min ns/call {:.2} vs {:.2}, ratio of minima {:.4}",
            row.case,
            row.rounds,
            row.batch_calls,
            row.median_ratio(),
            min(&row.hand),
            min(&row.retry),
            row.min_ratio(),
        );
        if row.merged {
            println!(
                "  {:<28} same machine code: the compiler merged both functions into one",
                ""
            );
        }
    }
    println!("total time: {:.1} s", started.elapsed().as_secs_f64());

    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
